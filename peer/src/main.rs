//! The `peer` binary: parses the command line, finds or starts the peer for the name, and runs
//! the command. Every failure ends as one line on stderr and a non-zero exit.

use anyhow::{bail, Result};
use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
use peer::{
    cli::{Cli, Command},
    commands, control,
    control::ControlClient,
    failure::Failure,
    history::{self, History, HistoryError},
    home::Home,
    logsink,
    node::{Node, Options},
    service::Service,
    session::Session,
};
use std::{process::ExitCode, sync::Arc, time::Duration};

fn main() -> ExitCode {
    // Everything this program creates (keys, history, downloads, the control socket) is the
    // user's alone, whatever the umask it inherited.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Whether the user chose the directory (a flag or CHAT_DIRECTORY), or it is the default.
    let directory_given = match matches.value_source("directory") {
        Some(ValueSource::CommandLine) => Some(format!("--directory {}", cli.directory)),
        Some(ValueSource::EnvVariable) => Some(format!("CHAT_DIRECTORY={}", cli.directory)),
        _ => None,
    };
    // Colour only for a person at a terminal: not in files, pipes or `docker logs`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_writer(|| logsink::Sink)
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("peer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, directory_given));
    // Stdin readers may still block a thread; don't wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`peer history bob | head -1`): nothing to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<Failure>().and_then(Failure::hint) {
                Some(hint) => eprintln!("peer: {e:#} ({hint})"),
                None => eprintln!("peer: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, directory_given: Option<String>) -> Result<()> {
    let home = Home::new(cli.home.clone(), &cli.name)?;
    if let Command::History { with, limit, grep } = &cli.command {
        return commands::history(&cli, &home, with, *limit, grep.as_deref()).await;
    }
    if let Command::Contacts = &cli.command {
        return commands::contacts(&cli, &home);
    }
    if let Command::Web { .. } = &cli.command {
        // The page outlives the running peer it attaches to: a session again each time.
        let (cli, home) = (&cli, &home);
        let open = move || async move {
            anyhow::Ok(match open_session(cli, home).await? {
                Opened::Remote(session) => (session, None),
                Opened::Local(session, guard) => (session, guard),
            })
        };
        return commands::web(cli, home, open).await;
    }
    let session = match open_session(&cli, &home).await? {
        Opened::Remote(session) => {
            if let Some(given) = directory_given {
                say_if_directory_ignored(&cli, &home, &given).await;
            }
            session
        }
        Opened::Local(session, guard) => {
            let result = commands::run(&cli, session).await;
            drop(guard);
            return result;
        }
    };
    commands::run(&cli, session).await
}

enum Opened {
    Remote(Session),
    Local(Session, Option<control::ControlGuard>),
}

/// Uses the peer already running for this home, or brings one up here.
async fn open_session(cli: &Cli, home: &Home) -> Result<Opened> {
    if let Some(session) = remote(cli, home).await? {
        return Ok(Opened::Remote(session));
    }
    let long_running = matches!(
        cli.command,
        Command::Chat { .. } | Command::Listen | Command::Web { .. }
    );
    let lock = if long_running {
        match control::lock(home)? {
            Some(lock) => Some(lock),
            None => {
                // Another process holds the home and is still starting: wait for its socket.
                for _ in 0..50 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(session) = remote(cli, home).await? {
                        return Ok(Opened::Remote(session));
                    }
                }
                bail!(
                    "another peer process holds {} but does not answer",
                    home.path().display()
                );
            }
        }
    } else {
        None
    };
    let options = Options {
        name: cli.name.clone(),
        directory: cli.directory.clone(),
        home: home.clone(),
        bind: cli.bind,
        pin: cli.pin,
        heartbeat: Duration::from_secs_f64(cli.heartbeat),
        direct_timeout: Duration::from_secs_f64(cli.direct_timeout),
        mailbox_file_max: cli.mailbox_file_max,
        open: cli.open,
        online: matches!(
            cli.command,
            Command::Chat { .. } | Command::Listen | Command::Inbox | Command::Web { .. }
        ),
        directory_wait: Duration::from_secs_f64(cli.directory_wait),
        // The terminal client opens at once and shows the connection being made.
        // So does the page.
        connect_later: (matches!(cli.command, Command::Chat { .. })
            && peer::chat::full_screen(cli.json))
            || matches!(cli.command, Command::Web { .. }),
    };
    // (`trust` keeps one: the letters a new key signed, held until now, are shown by it.)
    let history = if matches!(
        cli.command,
        Command::Whois { .. }
            | Command::Accept { .. }
            | Command::Block { .. }
            | Command::Verify { .. }
    ) {
        None
    } else {
        open_history(home).await
    };
    let (node, events) = Node::start(options).await?;
    let service = Service::new(Arc::new(node), history);
    let guard = match lock {
        Some(lock) => Some(control::serve(home, lock, service.clone())?),
        None => None,
    };
    Ok(Opened::Local(Session::local(service, events), guard))
}

/// How long a command waits for another process to release the history before going on
/// without it.
const HISTORY_WAIT: Duration = Duration::from_secs(2);

/// The history of this process's own node; `None`, with a warning, when it cannot be had.
async fn open_history(home: &Home) -> Option<History> {
    let path = history::path(home.path());
    let opened =
        tokio::task::spawn_blocking(move || History::open_waiting(&path, HISTORY_WAIT)).await;
    match opened {
        Ok(Ok(history)) => Some(history),
        Ok(Err(HistoryError::Locked)) => {
            eprintln!(
                "peer: warning: another process has {} open; going on without the local history",
                history::path(home.path()).display()
            );
            None
        }
        Ok(Err(e)) => {
            eprintln!("peer: warning: going on without the local history: {e}");
            None
        }
        Err(e) => {
            eprintln!("peer: warning: going on without the local history: {e}");
            None
        }
    }
}

/// A command that goes through the running peer uses that peer's directory: if the user chose
/// another one, says that it was ignored.
async fn say_if_directory_ignored(cli: &Cli, home: &Home, given: &str) {
    let asked = async {
        let mut client = ControlClient::connect(home).await?;
        client.hello().await.ok()?;
        client.directory().await.ok()
    };
    // A running peer of an older version does not know the question: say nothing then.
    let Ok(Some((running, _))) = tokio::time::timeout(Duration::from_secs(1), asked).await else {
        return;
    };
    if running != cli.directory {
        eprintln!(
            "peer: note: {} is already running with the directory at {running}, and this \
             command goes through it: {given} was ignored",
            cli.name
        );
    }
}

async fn remote(cli: &Cli, home: &Home) -> Result<Option<Session>> {
    let Some(client) = ControlClient::connect(home).await else {
        return Ok(None);
    };
    let session = Session::remote(client, home.clone()).await?;
    if session.name != cli.name {
        bail!(
            "the peer running with home {} is {}, not {}",
            home.path().display(),
            session.name,
            cli.name
        );
    }
    tracing::debug!("using the peer already running for {}", cli.name);
    Ok(Some(session))
}

/// Whether `e` is stdout's reader having gone away.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_recognised_under_context() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let wrapped = anyhow::Error::from(pipe).context("printing the history");
        assert!(is_broken_pipe(&wrapped));
        assert!(!is_broken_pipe(&anyhow::anyhow!("something else")));
    }
}
