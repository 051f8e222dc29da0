//! One function per subcommand, each written against a [`Session`], so it works the same on
//! this process's own node and on a running peer reached through the control socket.

use crate::{
    chat,
    cli::{Cli, Command},
    console::{self, print_line, Console},
    contacts::Standing,
    control::ControlClient,
    history::{self, History, HistoryError},
    home::Home,
    inbox::Arriving,
    rooms::RoomCommand,
    service::Update,
    session::Session,
    signals::shutdown_signal,
    target::Target,
};
use anyhow::{anyhow, bail, Result};
use common::{room::RoomName, Name};
use std::{io::IsTerminal, time::Duration};

/// Runs the command in `cli` on `session`, then closes it.
pub async fn run(cli: &Cli, session: Session) -> Result<()> {
    let console = console(cli);
    match &cli.command {
        Command::Send {
            to: Target::Peer(to),
            text,
        } => send(session, console, to.clone(), text.join(" ")).await,
        Command::Send {
            to: Target::Room(room),
            text,
        } => send_room(session, console, room.clone(), text.join(" ")).await,
        Command::Room { action } => room(session, console, action.command()).await,
        Command::Whois { name } => whois(session, console, name.clone()).await,
        Command::Verify { name } => verify(session, console, name.clone()).await,
        Command::Trust { name, key } => trust(session, console, name.clone(), *key).await,
        Command::SendFile { to, path } => send_file(session, console, to.clone(), path).await,
        Command::Listen => listen(session, console).await,
        Command::Inbox => inbox(session, console).await,
        Command::Chat { with, bell, notify } => {
            let alerts = crate::tui::Alerts {
                bell: *bell,
                notify: *notify,
            };
            chat::run(session, console, with.clone(), alerts).await
        }
        Command::Accept { name } => {
            contact(session, console, name.clone(), Standing::Accepted).await
        }
        Command::Block { name } => contact(session, console, name.clone(), Standing::Blocked).await,
        Command::History { .. } | Command::Contacts | Command::Web { .. } => {
            session.close().await;
            bail!("this command runs without a session")
        }
    }
}

fn console(cli: &Cli) -> Console {
    Console {
        json: cli.json,
        colour: !cli.json && std::io::stdout().is_terminal(),
    }
}

/// `peer web`: serves the page, on the sessions `open` gives (see [`crate::web::run`]).
pub async fn web<F, Fut, G>(cli: &Cli, home: &Home, open: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(Session, G)>>,
{
    let Command::Web {
        listen,
        allow_remote,
        open_browser,
    } = &cli.command
    else {
        bail!("not the web command");
    };
    let options = crate::web::Options {
        bind: *listen,
        allow_remote: *allow_remote,
        open_browser: *open_browser,
    };
    crate::web::run(home, options, open).await
}

/// `peer history NAME`: asks the running peer, which holds the database, or reads the file.
/// With `grep`, only the messages that contain it (any case), the last `limit` of those.
pub async fn history(
    cli: &Cli,
    home: &Home,
    with: &Target,
    limit: Option<usize>,
    grep: Option<&str>,
) -> Result<()> {
    let shown = limit.unwrap_or(usize::MAX);
    let limit = if grep.is_some() { usize::MAX } else { shown };
    let entries = match ControlClient::connect(home).await {
        Some(mut client) => {
            client.hello().await?;
            client
                .history(with, limit)
                .await?
                .ok_or_else(|| anyhow!("the running peer keeps no history (see its stderr)"))?
        }
        None => {
            let path = history::path(home.path());
            let (with, shown) = (with.clone(), path.display().to_string());
            tokio::task::spawn_blocking(move || {
                let history = History::open_waiting(&path, Duration::from_secs(5))?;
                history.conversation(&with, limit)
            })
            .await?
            .map_err(|e| match e {
                HistoryError::Locked => anyhow!("another process has {shown} open"),
                e => anyhow!(e),
            })?
        }
    };
    let console = console(cli);
    let matching = history::matching(&entries, grep.unwrap_or_default());
    for entry in &matching[matching.len().saturating_sub(shown)..] {
        print_line(&console.history(entry))?;
    }
    Ok(())
}

async fn send(mut session: Session, console: Console, to: Name, body: String) -> Result<()> {
    session.submit(to, body);
    let result = answer(&mut session, "the message was sent", |u| match u {
        Update::Sent(sent) => Some(sent.map_err(|e| anyhow!(e.failure))),
        _ => None,
    })
    .await;
    session.close().await;
    print_line(&console.sent(&result?))?;
    Ok(())
}

async fn send_room(
    mut session: Session,
    console: Console,
    room: RoomName,
    body: String,
) -> Result<()> {
    session.submit_room(room, body);
    let result = answer(&mut session, "the message was sent", |u| match u {
        Update::RoomSent(sent) => Some(sent.map_err(anyhow::Error::from)),
        _ => None,
    })
    .await;
    session.close().await;
    let sent = result?;
    print_line(&console.room_sent(&sent))?;
    match sent.failed.len() {
        0 => Ok(()),
        n => bail!("it could not be sent to {n} member(s) of {}", sent.room),
    }
}

/// `peer room …`: prints the room as it stands after the command (each room, for `list`).
async fn room(mut session: Session, console: Console, command: RoomCommand) -> Result<()> {
    session.room(command);
    let result = answer(&mut session, "the room command was done", |u| match u {
        Update::Rooms(rooms) => Some(rooms.map_err(anyhow::Error::from)),
        _ => None,
    })
    .await;
    session.close().await;
    for room in result? {
        print_line(&console.room(&room))?;
    }
    Ok(())
}

async fn send_file(
    mut session: Session,
    console: Console,
    to: Name,
    path: &std::path::Path,
) -> Result<()> {
    let interrupted = shutdown_signal()?;
    tokio::pin!(interrupted);
    session.send_file(to, path.to_path_buf());
    let bar = progress_bar(console);
    let (mut done, mut total) = (0, 0);
    let result = loop {
        let update = tokio::select! {
            update = session.next() => update,
            () = &mut interrupted => {
                // What was sent stays on the receiver's side: the same command resumes there.
                break Err(anyhow!(
                    "interrupted at {} of {}; run the same command to resume",
                    indicatif::HumanBytes(done),
                    indicatif::HumanBytes(total)
                ));
            }
        };
        match update {
            Some(Update::FileProgress {
                done: now,
                total: of,
            }) => {
                (done, total) = (now, of);
                bar.set_length(total);
                bar.set_position(done);
            }
            Some(Update::FileSent(result)) => break result.map_err(anyhow::Error::from),
            Some(Update::Notice(text)) => bar.suspend(|| eprintln!("{text}")),
            Some(_) => {}
            None => break Err(anyhow!("the peer stopped before the file was sent")),
        }
    };
    bar.finish_and_clear();
    session.close().await;
    print_line(&console.file_sent(&result?))?;
    Ok(())
}

/// Files arriving while `listen` runs: a JSON line for each report, or, for a person at a
/// terminal, one progress bar per file on stderr, which other lines are printed around.
struct Arrivals {
    console: Console,
    bars: indicatif::MultiProgress,
    shown: Vec<(Name, String, indicatif::ProgressBar)>,
}

/// Most files with a bar at once (more arrive at once only from several senders).
const ARRIVALS_SHOWN: usize = 8;

impl Arrivals {
    fn new(console: Console) -> Self {
        let bars = indicatif::MultiProgress::new();
        if console.json || !std::io::stderr().is_terminal() {
            bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Self {
            console,
            bars,
            shown: Vec::new(),
        }
    }

    /// Prints `line` on stdout without tearing a bar.
    fn print(&self, line: &str) -> std::io::Result<()> {
        self.bars.suspend(|| print_line(line))
    }

    fn show(&mut self, a: &Arriving) -> std::io::Result<()> {
        if self.console.json {
            return print_line(&self.console.arriving(a));
        }
        let at = (self.shown.iter()).position(|(from, name, _)| *from == a.from && *name == a.name);
        if a.stopped {
            if let Some(i) = at {
                self.shown.remove(i).2.finish_and_clear();
            }
            return Ok(());
        }
        let bar = match at {
            Some(i) => &self.shown[i].2,
            None if self.shown.len() >= ARRIVALS_SHOWN => return Ok(()),
            None => {
                let bar = self.bars.add(progress_bar(self.console));
                bar.set_length(a.total);
                bar.set_message(format!("{} from {}", console::sanitize(&a.name), a.from));
                self.shown.push((a.from.clone(), a.name.clone(), bar));
                &self.shown[self.shown.len() - 1].2
            }
        };
        bar.set_position(a.done);
        Ok(())
    }

    /// A file from `from` is stored: its bar goes (and any other of `from`'s that stalled).
    fn done(&mut self, from: &Name) {
        self.shown.retain(|(sender, _, bar)| {
            let keep = sender != from;
            if !keep {
                bar.finish_and_clear();
            }
            keep
        });
    }
}

/// A progress bar on stderr with rate and time left, for a person at a terminal only.
fn progress_bar(console: Console) -> indicatif::ProgressBar {
    if console.json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} left {msg}",
    );
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

async fn contact(
    mut session: Session,
    console: Console,
    name: Name,
    standing: Standing,
) -> Result<()> {
    session.set_contact(name, standing);
    let result = answer(&mut session, "the contact was recorded", |u| match u {
        Update::Contact(result) => Some(result.map_err(anyhow::Error::from)),
        _ => None,
    })
    .await;
    session.close().await;
    print_line(&console.contact(&result?))?;
    Ok(())
}

/// `peer contacts`: the contacts file, read directly (it is small and rewritten whole).
pub fn contacts(cli: &Cli, home: &Home) -> Result<()> {
    let console = console(cli);
    for contact in crate::contacts::read_file(home)? {
        print_line(&console.contact(&contact))?;
    }
    Ok(())
}

/// `peer trust NAME [--key KEY]`.
async fn trust(
    mut session: Session,
    console: Console,
    name: Name,
    key: Option<common::KeyId>,
) -> Result<()> {
    session.trust(name, key);
    // The letters the new key signed, held until now, are opened first: shown here.
    let result = loop {
        match session.next().await {
            Some(Update::Trusted(result)) => break result.map_err(anyhow::Error::from),
            Some(Update::Message(received)) => {
                print_line(&console.received(&received))?;
                received.shown();
            }
            Some(Update::Notice(text)) => eprintln!("{text}"),
            Some(_) => {}
            None => break Err(anyhow!("the peer stopped before the key was trusted")),
        }
    };
    session.close().await;
    let (name, key) = result?;
    print_line(&console.trusted(&name, &key))?;
    Ok(())
}

/// `peer verify NAME`: the key the directory holds for NAME now (the one direct links to NAME
/// accept), with ours, as a safety number.
async fn verify(mut session: Session, console: Console, name: Name) -> Result<()> {
    session.whois(name.clone());
    let result = whois_answer(&mut session).await;
    let (me, my_key) = (session.name.clone(), session.key);
    session.close().await;
    let (info, _) = result?;
    let digits = crate::safety::safety_number((&me, &my_key), (&name, &info.key));
    print_line(&console.safety_number(&name, &info.key, &digits))?;
    Ok(())
}

/// The answer to a `whois` asked on `session`.
async fn whois_answer(
    session: &mut Session,
) -> Result<(common::wire::PeerInfo, Option<crate::links::DirectPath>)> {
    answer(session, "the answer came", |u| match u {
        Update::Whois(result) => Some(result.map_err(anyhow::Error::from)),
        _ => None,
    })
    .await
}

/// The first update `pick` takes, the others passed over: the outcome of a request a short
/// command made. `what` says what did not happen if the peer stops first.
async fn answer<T>(
    session: &mut Session,
    what: &str,
    pick: impl Fn(Update) -> Option<Result<T>>,
) -> Result<T> {
    while let Some(update) = session.next().await {
        if let Update::Notice(text) = &update {
            eprintln!("{text}");
        }
        if let Some(result) = pick(update) {
            return result;
        }
    }
    Err(anyhow!("the peer stopped before {what}"))
}

async fn whois(mut session: Session, console: Console, name: Name) -> Result<()> {
    session.whois(name);
    let result = whois_answer(&mut session).await;
    let me = session.name.clone();
    session.close().await;
    let (info, path) = result?;
    print_line(&console.whois(&info, path, &me))?;
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
    let mut arriving = Arrivals::new(console);
    let result = loop {
        tokio::select! {
            update = session.next() => match update {
                Some(Update::Message(received)) => {
                    arriving.print(&console.received(&received))?;
                    received.shown();
                }
                Some(Update::Notice(text)) => arriving.bars.suspend(|| eprintln!("{text}")),
                Some(Update::File(file)) => {
                    arriving.done(&file.from);
                    arriving.print(&console.file(&file))?
                }
                Some(Update::FileArriving(progress)) => arriving.show(&progress)?,
                Some(Update::Room(notice)) => arriving.print(&console.room_notice(&notice))?,
                Some(Update::Echo(echo)) => {
                    if let Some(line) = console.echo(&session.name, &echo) {
                        arriving.print(&line)?;
                    }
                }
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
                print_line(&console.received(&received))?;
                received.shown();
            }
            Some(Update::File(file)) => print_line(&console.file(&file))?,
            Some(Update::Notice(text)) => eprintln!("{text}"),
            Some(Update::Room(notice)) => print_line(&console.room_notice(&notice))?,
            Some(Update::MailboxIdle) => break Ok(()),
            Some(_) => {}
            None => break Err(anyhow!("the connection ended before the mailbox was read")),
        }
    };
    session.close().await;
    result
}
