//! One function per subcommand, each written against a [`Session`], so it works the same on
//! this process's own node and on a running peer reached through the control socket.

use crate::{
    chat,
    cli::{Cli, Command},
    console::{print_line, Console},
    session::{Session, Update},
};
use anyhow::{anyhow, Result};
use common::Name;
use std::io::IsTerminal;

/// Runs the command in `cli` on `session`, then closes it.
pub async fn run(cli: &Cli, session: Session) -> Result<()> {
    let console = Console {
        json: cli.json,
        colour: !cli.json && std::io::stdout().is_terminal(),
    };
    match &cli.command {
        Command::Send { to, text } => send(session, console, to.clone(), text.join(" ")).await,
        Command::Whois { name } => whois(session, console, name.clone()).await,
        Command::Listen => listen(session, console).await,
        Command::Inbox => inbox(session, console).await,
        Command::Chat { with } => chat::run(session, console, with.clone()).await,
    }
}

async fn send(mut session: Session, console: Console, to: Name, body: String) -> Result<()> {
    session.submit(to, body);
    let result = loop {
        match session.next().await {
            Some(Update::Sent(Ok(sent))) => break Ok(sent),
            Some(Update::Sent(Err(e))) => break Err(anyhow!(e)),
            Some(_) => {}
            None => break Err(anyhow!("the peer stopped before the message was sent")),
        }
    };
    session.close().await;
    print_line(&console.sent(&result?))?;
    Ok(())
}

async fn whois(mut session: Session, console: Console, name: Name) -> Result<()> {
    session.whois(name);
    let result = loop {
        match session.next().await {
            Some(Update::Whois(result)) => break result.map_err(|e| anyhow!(e)),
            Some(_) => {}
            None => break Err(anyhow!("the peer stopped before the answer came")),
        }
    };
    session.close().await;
    let (info, path) = result?;
    print_line(&console.whois(&info, path))?;
    Ok(())
}

async fn listen(mut session: Session, console: Console) -> Result<()> {
    let shutdown = shutdown_signal()?;
    if let Some(line) = console.online(&session.name, &session.key) {
        print_line(&line)?;
    } else {
        eprintln!(
            "online as {}; waiting for messages (Ctrl-C to leave)",
            session.name
        );
    }
    session.attach();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            update = session.next() => match update {
                Some(Update::Message(received)) => {
                    print_line(&console.message(&received.message, received.via))?;
                    received.shown();
                }
                Some(Update::Notice(text)) => eprintln!("{text}"),
                Some(_) => {}
                None => break Err(anyhow!("the running peer stopped")),
            },
            _ = &mut shutdown => break Ok(()),
        }
    };
    session.close().await;
    result
}

async fn inbox(mut session: Session, console: Console) -> Result<()> {
    if session.is_remote() {
        eprintln!(
            "{} is running in another process, which receives its messages as they come; \
             the mailbox is empty while it runs",
            session.name
        );
        return Ok(());
    }
    let result = loop {
        match session.next().await {
            Some(Update::Message(received)) => {
                print_line(&console.message(&received.message, received.via))?;
                received.shown();
            }
            Some(Update::MailboxIdle) => break Ok(()),
            Some(_) => {}
            None => break Err(anyhow!("the connection ended before the mailbox was read")),
        }
    };
    session.close().await;
    result
}

/// Listens for Ctrl-C and SIGTERM from now on, and returns a future that resolves on the first.
/// Called before anything announces that the peer is up, so a signal sent the moment the
/// announcement appears ends the peer cleanly instead of killing it.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    })
}
