//! `peer chat NAME`: the conversation.
//!
//! With stdin and stdout on a terminal (and no `--json`), it is the full-screen client of
//! [`crate::tui`]. Otherwise it is line mode for scripts: each input line is one message, each
//! received message one output line, and at end of input it waits until every message is
//! delivered or queued.

use crate::tui::Alerts;
use crate::{
    console::{print_line, Console},
    contacts::Standing,
    line::{parse, Input, HELP},
    rooms::RoomCommand,
    service::Update,
    session::Session,
    signals::shutdown_signal,
    target::Target,
};
use anyhow::{anyhow, bail, Result};
use common::Name;
use std::io::IsTerminal;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs the conversation with `with`: a peer, or a room.
pub async fn run(session: Session, console: Console, with: Target, alerts: Alerts) -> Result<()> {
    if full_screen(console.json) {
        crate::tui::run(session, with, alerts).await
    } else {
        lines(session, console, with).await
    }
}

/// Whether `peer chat` is the full-screen client: stdin and stdout on a terminal, no `--json`.
pub fn full_screen(json: bool) -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal() && !json
}

/// Tracks which peers the conversation has touched, for `/who`. (A room's members are
/// `peer room members`'s.)
#[derive(Default)]
struct Known(Vec<Name>);

impl Known {
    fn add(&mut self, name: &Name) {
        if !self.0.contains(name) {
            self.0.push(name.clone());
        }
    }
}

async fn lines(mut session: Session, console: Console, mut with: Target) -> Result<()> {
    let shutdown = shutdown_signal()?;
    if let Some(line) = console.online(&session.name, &session.key) {
        print_line(&line)?;
    }
    session.attach();
    let mut known = Known::default();
    if let Target::Peer(name) = &with {
        known.add(name);
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let (mut outstanding, mut failed, mut eof) = (0usize, 0usize, false);
    tokio::pin!(shutdown);
    let result = loop {
        if eof && outstanding == 0 {
            break Ok(());
        }
        tokio::select! {
            line = stdin.next_line(), if !eof => match line {
                Ok(Some(line)) => match parse(&line) {
                    Some(Input::Text(text)) => {
                        match &with {
                            Target::Peer(name) => session.submit(name.clone(), text),
                            Target::Room(room) => session.submit_room(room.clone(), text),
                        }
                        outstanding += 1;
                    }
                    Some(Input::To(target)) => {
                        if let Target::Peer(name) = &target {
                            known.add(name);
                        }
                        with = target;
                    }
                    Some(Input::File(path)) => match &with {
                        Target::Peer(name) => {
                            session.send_file(name.clone(), path);
                            outstanding += 1;
                        }
                        Target::Room(room) => eprintln!("peer: files cannot be sent to a room ({room}) yet"),
                    },
                    Some(Input::Contact(name, accept)) => session.set_contact(
                        name,
                        if accept { Standing::Accepted } else { Standing::Blocked },
                    ),
                    Some(Input::Who) => known.0.iter().for_each(|n| session.whois(n.clone())),
                    Some(Input::Room(line)) => match line.command(with.room()) {
                        Ok(command) => {
                            if let RoomCommand::Join { room } = &command {
                                with = Target::Room(room.clone());
                            }
                            session.room(command);
                        }
                        Err(e) => eprintln!("{e}"),
                    },
                    Some(Input::Search(text)) => match session.history(&with, usize::MAX).await {
                        Ok(Some(entries)) => {
                            for entry in crate::history::matching(&entries, &text) {
                                print_line(&console.history(entry))?;
                            }
                        }
                        Ok(None) => eprintln!("no local history to search"),
                        Err(e) => eprintln!("cannot read the history: {e:#}"),
                    },
                    Some(Input::Close) => eprintln!("line mode has one conversation; /to NAME switches"),
                    Some(Input::Help) => eprintln!("{HELP}"),
                    Some(Input::Quit) => eof = true,
                    Some(Input::Bad(e)) => eprintln!("{e}"),
                    None => {}
                },
                Ok(None) => eof = true,
                Err(e) => break Err(anyhow!("reading input: {e}")),
            },
            update = session.next() => match update {
                Some(Update::Message(received)) => {
                    known.add(&received.message.from);
                    print_line(&console.received(&received))?;
                    received.shown();
                }
                Some(Update::File(file)) => print_line(&console.file(&file))?,
                Some(Update::FileProgress { .. }) => {}
                Some(Update::FileArriving(progress)) => {
                    if console.json {
                        print_line(&console.arriving(&progress))?;
                    }
                }
                Some(Update::FileSent(result)) => {
                    outstanding = outstanding.saturating_sub(1);
                    match result {
                        Ok(sent) => print_line(&console.file_sent(&sent))?,
                        Err(e) => {
                            failed += 1;
                            eprintln!("peer: {e}");
                        }
                    }
                }
                Some(Update::Receipt { from, delivered, .. }) => {
                    if !console.json {
                        eprintln!("{from} picked up {} queued item(s)", delivered.len());
                    }
                }
                Some(Update::Sent(result)) => {
                    outstanding = outstanding.saturating_sub(1);
                    match result {
                        Ok(sent) if console.json => print_line(&console.sent(&sent))?,
                        Ok(sent) if sent.status == crate::outbox::Status::Queued => {
                            eprintln!("{} is away: queued in the mailbox", sent.to)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            failed += 1;
                            eprintln!("peer: {e}");
                        }
                    }
                }
                Some(Update::Whois(Ok((info, path)))) => {
                    print_line(&console.whois(&info, path, &session.name))?
                }
                Some(Update::Whois(Err(e))) => eprintln!("peer: {e}"),
                Some(Update::Notice(text)) => eprintln!("{text}"),
                Some(Update::Contact(Ok(contact))) => print_line(&console.contact(&contact))?,
                Some(Update::Contact(Err(e))) => eprintln!("peer: {e}"),
                Some(Update::Trusted(Ok((name, key)))) => print_line(&console.trusted(&name, &key))?,
                Some(Update::Trusted(Err(e))) => eprintln!("peer: {e}"),
                Some(Update::RoomSent(result)) => {
                    outstanding = outstanding.saturating_sub(1);
                    match result {
                        Ok(sent) if console.json => print_line(&console.room_sent(&sent))?,
                        Ok(sent) if sent.failed.is_empty() => {}
                        Ok(sent) => {
                            failed += 1;
                            eprintln!("peer: {}", console.room_sent(&sent));
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("peer: {e}");
                        }
                    }
                }
                Some(Update::Room(notice)) => print_line(&console.room_notice(&notice))?,
                Some(Update::Rooms(Ok(rooms))) => {
                    for room in rooms {
                        print_line(&console.room(&room))?;
                    }
                }
                Some(Update::Rooms(Err(e))) => eprintln!("peer: {e}"),
                Some(Update::Echo(echo)) => {
                    if let Some(line) = console.echo(&session.name, &echo) {
                        print_line(&line)?;
                    }
                }
                Some(Update::MailboxIdle | Update::Directory { .. }) => {}
                None => break Err(anyhow!("the running peer stopped")),
            },
            _ = &mut shutdown => break Ok(()),
        }
    };
    session.close().await;
    result?;
    if failed > 0 {
        bail!("{failed} message(s) could not be sent");
    }
    Ok(())
}
