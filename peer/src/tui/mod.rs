//! The full-screen terminal client of `peer chat NAME` (ratatui + crossterm), used when stdin
//! and stdout are terminals and `--json` is off.
//!
//! # Layout
//!
//! * `input`: the input line's editor (pure state).
//! * `app`: conversations, unread counts, presence, the state of each message we sent, and
//!   what each command does (pure state).
//! * `view`: drawing the state.
//! * `terminal`: taking the terminal and giving it back on every way out.
//! * `alert`: the bell, the unread total in the window title, desktop notifications.
//! * `paths`: Tab completion: the path after `/file` from what is on disk, and the common
//!   start of several candidates.
//!
//! # The loop
//!
//! One task waits on three sources: terminal events (keys, paste, resize) from a reading
//! thread, the [`Session`]'s updates, and a presence tick. An incoming message is drawn before
//! [`crate::session::Received::shown`] is called, which records it in the local history and
//! lets it be acknowledged. Every few seconds the client asks the directory about each peer in
//! the side list ([`Session::whois`]); a change becomes a notice in that conversation.
//!
//! The client opens before the directory answers. One status line says how the directory
//! connection stands when there is something to say: connecting, unreachable and retrying (then
//! presence is unknown, and messages being sent wait for it), or back.
//!
//! Leaving (`/quit`, Ctrl-C, Ctrl-D on an empty line) waits up to [`QUIT_WAIT`] for messages
//! still being sent, so none is dropped on the way out; a second Ctrl-C leaves at once. SIGTERM,
//! SIGINT and SIGHUP leave at once. Log lines go to `HOME/peer.log` while the screen is ours,
//! since stderr would scribble over it.

mod alert;
mod app;
mod input;
mod paths;
mod terminal;
mod view;

use crate::{service::Update, session::Session, signals::shutdown_signal, target::Target};
pub use alert::{Alerts, Bell};
use anyhow::Result;
use app::{Action, App};
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::{
    io::Write,
    time::{Duration, Instant},
};
use terminal::Screen;

/// How often the presence of the peers in the side list is asked.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(3);
/// How long leaving waits for messages still being sent.
pub const QUIT_WAIT: Duration = Duration::from_secs(15);
/// Earlier messages shown per conversation at start.
const HISTORY_SHOWN: usize = 200;
/// Most conversations from the history put in the side list at start.
const HISTORY_PEERS: usize = 30;

/// Runs the client, talking to `with` (a peer or a room) first, alerting as `alerts` says.
pub async fn run(mut session: Session, with: Target, alerts: Alerts) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let shutdown = shutdown_signal()?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut app = App::new(session.name.clone(), with.clone());
    load_history(&session, &mut app, &with).await;
    if let Target::Room(room) = &with {
        session.room(crate::rooms::RoomCommand::Members { room: room.clone() });
    }
    session.attach();
    session.watch_directory();

    let log_path = session.log_file();
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
    {
        Ok(file) => crate::logsink::divert(Some(Box::new(LogFile(file)))),
        Err(e) => {
            app.notice(format!("cannot open {}: {e}", log_path.display()), true);
            crate::logsink::divert(Some(Box::new(std::io::sink())));
        }
    }
    let result = async {
        let (mut screen, mut events) = Screen::enter()?;
        let mut alerter = alert::Alerter::new(alerts);
        let mut presence = tokio::time::interval(PRESENCE_EVERY);
        let mut leave_by: Option<Instant> = None;
        tokio::pin!(shutdown);
        loop {
            if let Some(deadline) = leave_by {
                if app.outstanding() == 0 || Instant::now() >= deadline {
                    break;
                }
            }
            screen.terminal.draw(|f| view::draw(f, &mut app))?;
            let title = alert::title(app.me.as_str(), &app.shown().target.to_string(), app.unread());
            alerter.title(screen.terminal.backend_mut(), title)?;
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    match on_event(&mut app, event) {
                        Action::None => {}
                        Action::Send(to, body) => {
                            app.submitted(&to, body.clone());
                            match to {
                                Target::Peer(name) => session.submit(name, body),
                                Target::Room(room) => session.submit_room(room, body),
                            }
                        }
                        Action::Room(command) => session.room(command),
                        Action::Who(names) => names.into_iter().for_each(|n| session.whois(n)),
                        Action::Check(name) if app.directory_up() => session.whois(name),
                        Action::Check(_) => {}
                        Action::Search(target, text) => {
                            match session.history(&target, usize::MAX).await {
                                Ok(Some(entries)) => app.found(&target, &text, &entries),
                                Ok(None) => app.notice("no local history to search", true),
                                Err(e) => app.notice(format!("cannot read the history: {e:#}"), true),
                            }
                        }
                        Action::SendFile(to, path) => session.send_file(to, path),
                        Action::Contact(name, standing) => session.set_contact(name, standing),
                        Action::Quit if leave_by.is_some() => break,
                        Action::Quit => {
                            app.quitting = true;
                            leave_by = Some(Instant::now() + QUIT_WAIT);
                        }
                    }
                }
                update = session.next() => match update {
                    Some(Update::Message(received)) => {
                        let m = &received.message;
                        let unseen = app.incoming(m, received.room.as_ref(), received.via);
                        screen.terminal.draw(|f| view::draw(f, &mut app))?;
                        alerter.message(screen.terminal.backend_mut(), m.from.as_str(), &m.body, unseen);
                        received.shown();
                    }
                    Some(Update::Sent(result)) => app.outcome(result.as_ref()),
                    Some(Update::Echo(echo)) => app.echo(echo),
                    Some(Update::FileArriving(progress)) => app.file_arriving(progress),
                    Some(Update::Whois(Ok((info, _)))) => app.presence(&info),
                    Some(Update::Whois(Err(e))) => app.presence_failed(&e),
                    Some(Update::Notice(text)) => app.notice(text, false),
                    Some(Update::FileProgress { .. }) => {}
                    Some(Update::FileSent(result)) => {
                        app.file_outcome(result.as_ref())
                    }
                    Some(Update::Receipt { from, delivered, at_ms }) => {
                        app.receipt(&from, &delivered, at_ms)
                    }
                    Some(Update::File(file)) => {
                        app.file_arrived(&file.from);
                        app.notice(
                        format!(
                            "{} sent a file: {} ({}{})",
                            file.from,
                            file.path.display(),
                            indicatif::HumanBytes(file.size),
                            if file.via == crate::inbox::Via::Mailbox { ", via the mailbox" } else { "" },
                        ),
                        false,
                    )
                    }
                    Some(Update::Contact(Ok(c))) => {
                        app.notice(format!("{} is {} now", c.name, c.standing.as_str()), false)
                    }
                    Some(Update::Contact(Err(e))) => app.notice(e.to_string(), true),
                    Some(Update::Trusted(Ok((name, key)))) => {
                        app.notice(format!("{name} is trusted with key {}", key.short()), false)
                    }
                    Some(Update::Trusted(Err(e))) => app.notice(e.to_string(), true),
                    Some(Update::Room(notice)) => {
                        let line = PLAIN.room_notice(&notice);
                        app.room_notice(&notice, line);
                    }
                    Some(Update::RoomSent(result)) => app.room_outcome(result.as_ref()),
                    Some(Update::Rooms(Ok(views))) => app.rooms(&views, |v| PLAIN.room(v)),
                    Some(Update::Rooms(Err(e))) => app.notice(e.to_string(), true),
                    Some(Update::MailboxIdle) => {}
                    Some(Update::Directory { addr, status }) => {
                        app.directory(addr, status, Instant::now());
                        if app.directory_up() {
                            presence.reset_immediately();
                        }
                    }
                    None => {
                        app.notice("the running peer stopped", true);
                        break;
                    }
                },
                _ = presence.tick() => {
                    // While the directory is away presence is unknown, and asking would only
                    // pile up requests waiting for it.
                    if app.directory_up() {
                        for name in app.names() {
                            session.whois(name);
                        }
                    }
                }
                _ = &mut shutdown => break,
                _ = hangup.recv() => break,
            }
        }
        drop(screen);
        anyhow::Ok(())
    }
    .await;
    crate::logsink::divert(None);
    terminal::restore();
    session.close().await;
    result
}

/// Plain lines (no colour codes: the client colours by itself), for notices.
const PLAIN: crate::console::Console = crate::console::Console {
    json: false,
    colour: false,
};

/// Puts the conversations of the history in the side list, with their earlier messages.
async fn load_history(session: &Session, app: &mut App, with: &Target) {
    let mut targets = vec![with.clone()];
    for name in session
        .history_peers()
        .await
        .into_iter()
        .take(HISTORY_PEERS)
    {
        let target = Target::Peer(name);
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    for target in targets {
        match session.history(&target, HISTORY_SHOWN).await {
            Ok(Some(entries)) => app.load_history(&target, entries),
            Ok(None) => {
                app.notice("no local history: another process has it open", true);
                return;
            }
            Err(e) => {
                app.notice(format!("cannot read the history: {e:#}"), true);
                return;
            }
        }
    }
}

/// What a terminal event does.
fn on_event(app: &mut App, event: Event) -> Action {
    match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => on_key(app, key),
        Event::Paste(text) => {
            app.input.paste(&text);
            Action::None
        }
        _ => Action::None,
    }
}

fn on_key(app: &mut App, key: KeyEvent) -> Action {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    let input = &mut app.input;
    match key.code {
        KeyCode::Char('c') if ctrl => return Action::Quit,
        KeyCode::Char('d') if ctrl && input.is_empty() => return Action::Quit,
        KeyCode::Char('d') if ctrl => input.delete(),
        KeyCode::Char('a') if ctrl => input.home(),
        KeyCode::Char('e') if ctrl => input.end(),
        KeyCode::Char('b') if ctrl => input.left(),
        KeyCode::Char('f') if ctrl => input.right(),
        KeyCode::Char('u') if ctrl => input.kill_before(),
        KeyCode::Char('k') if ctrl => input.kill_after(),
        KeyCode::Char('w') if ctrl => input.kill_word(),
        KeyCode::Char('n') if ctrl => app.cycle(true),
        KeyCode::Char('p') if ctrl => app.cycle(false),
        KeyCode::Char('l') if ctrl => {}
        KeyCode::Char(_) if ctrl => {}
        KeyCode::Char(c) => input.insert(c),
        KeyCode::Enter if alt => input.insert('\n'),
        KeyCode::Enter => return app.enter(),
        KeyCode::Backspace => input.backspace(),
        KeyCode::Delete => input.delete(),
        KeyCode::Left if ctrl || alt => input.word_left(),
        KeyCode::Right if ctrl || alt => input.word_right(),
        KeyCode::Left => input.left(),
        KeyCode::Right => input.right(),
        // With nothing typed, Home and End move through the conversation, not the line.
        KeyCode::Home if input.is_empty() => app.scroll_top(),
        KeyCode::End if input.is_empty() => app.scroll_bottom(),
        KeyCode::Home => input.home(),
        KeyCode::End => input.end(),
        KeyCode::Up => input.older(),
        KeyCode::Down => input.newer(),
        KeyCode::PageUp => app.page_up(),
        KeyCode::PageDown => app.page_down(),
        KeyCode::Tab => app.complete(),
        _ => {}
    }
    Action::None
}

/// Log output while the screen is ours: to a file, without colour codes.
struct LogFile(std::fs::File);

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = strip_ansi(&String::from_utf8_lossy(buf));
        self.0.write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Removes `ESC [ ... letter` sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_their_colours() {
        assert_eq!(strip_ansi("\x1b[33m WARN\x1b[0m peer: x"), " WARN peer: x");
    }
}
