//! The client's state, without a terminal: conversations with their messages, unread counts
//! and presence, the input line, scrolling, and what each key or update does to them. The
//! loop in [`super`] feeds it; [`super::view`] draws it.

use super::input::Editor;
use crate::{
    contacts::Standing,
    directory_client::Status,
    echo::{Echo, Stage},
    failure::Failure,
    files::FileSent,
    history::{HistoryEntry, HistoryState},
    inbox::{Arriving, RoomEvent, RoomNotice, Via},
    outbox::{SendFailed, Sent},
    rooms::{RoomCommand, RoomSent, RoomView},
    target::Target,
};
use common::defaults::MAX_BODY_LEN;
use common::{
    now_ms,
    room::{Change, RoomName},
    wire::{ChatMessage, MessageId, PeerInfo},
    Name,
};
use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

/// Most files arriving shown in the status line.
const ARRIVING_SHOWN: usize = 4;

/// How long "reconnected" stays in the status line.
const RECONNECTED_SHOWN: Duration = Duration::from_secs(5);

/// The commands, for `/help` and Tab.
pub(crate) const COMMANDS: [&str; 14] = [
    "/to", "/who", "/file", "/search", "/close", "/accept", "/block", "/join", "/leave", "/invite",
    "/kick", "/members", "/help", "/quit",
];

/// The help text, one line per entry.
pub(crate) const HELP: [&str; 15] = [
    "/to NAME    talk to NAME (opens the conversation);  /to #ROOM  talk in a room you are in",
    "/join #ROOM  join a public room;  /leave  leave the room shown;  /members  who is in it",
    "/invite NAME...  /kick NAME   add or remove members of the room shown (its admins)",
    "/who        presence of every peer in the list",
    "/file PATH  send a file (direct; small ones go to the mailbox if NAME is away)",
    "/search TEXT  the messages of this conversation with TEXT;  /close  drop it from the list",
    "/accept NAME  a contact: may reach you directly; its messages are no longer requests",
    "/block NAME   drop what NAME sends, unseen",
    "/help       this help;  /quit (or Ctrl-C, or Ctrl-D on an empty line) leaves",
    "Enter sends; a paste of several lines is one message (Alt-Enter adds a line break)",
    "Up/Down recall what you typed; PageUp/PageDown scroll (Home/End with nothing typed: \
     oldest/latest); Tab completes names and commands",
    "A message holds up to 32 KiB (the box shows the size near it); send more with /file",
    "● online, ○ offline, · not known (not asked yet, or the directory cannot be reached)",
    "Ctrl-N/Ctrl-P: next/previous conversation",
    "//text sends a message that starts with /",
];

/// What someone's presence is, as last polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Not asked yet, or the directory cannot be reached.
    Unknown,
    /// Online now.
    Online,
    /// Offline, last seen then (ms since the epoch), if ever.
    Offline(Option<u64>),
    /// The directory knows no one by this name.
    NoSuchName,
}

/// One line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A message, ours (`state` other than `Received`) or theirs.
    Message {
        /// Its id, once known (ours get theirs with the outcome).
        id: Option<MessageId>,
        /// Sender.
        from: Name,
        /// Sender's clock.
        at_ms: u64,
        /// Text.
        body: String,
        /// Where it stands.
        state: HistoryState,
    },
    /// Something the client says: presence changes, command answers, errors.
    Notice {
        /// When.
        at_ms: u64,
        /// What.
        text: String,
        /// An error or warning.
        alarm: bool,
    },
}

/// One conversation: with a peer, or in a room.
#[derive(Debug)]
pub(crate) struct Conversation {
    /// The other side.
    pub(crate) target: Target,
    /// A room's members, as last heard (for Tab).
    pub(crate) members: Vec<Name>,
    /// Its lines, oldest first.
    pub(crate) entries: Vec<Entry>,
    /// Messages received while another conversation was shown.
    pub(crate) unread: usize,
    /// As last polled.
    pub(crate) presence: Presence,
    /// Our messages without an outcome, oldest first (indices into `entries`); outcomes for
    /// one recipient come in submission order.
    pending: VecDeque<usize>,
    /// Our messages sent from other views, without an outcome: echo number → index.
    echoed: HashMap<u64, usize>,
    /// Where the messages that arrived while another conversation was shown begin (an
    /// index into `entries`).
    first_unread: Option<usize>,
    /// Where the "new" line is drawn while the conversation is shown: `first_unread` as it
    /// was when the user came to it.
    pub(crate) marker: Option<usize>,
}

impl Conversation {
    fn new(target: Target) -> Self {
        Self {
            target,
            members: Vec::new(),
            entries: Vec::new(),
            unread: 0,
            presence: Presence::Unknown,
            pending: VecDeque::new(),
            echoed: HashMap::new(),
            first_unread: None,
            marker: None,
        }
    }
}

/// What the loop should do after a key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing more.
    None,
    /// Send this text to that peer or room.
    Send(Target, String),
    /// Ask for the presence of these peers and show the answers.
    Who(Vec<Name>),
    /// Ask for the presence of this peer, if the directory is up (a name it does not know is
    /// said so).
    Check(Name),
    /// Find the messages of that conversation, in the local history, with this text.
    Search(Target, String),
    /// Send this file to that peer.
    SendFile(Name, PathBuf),
    /// Accept or block that peer.
    Contact(Name, Standing),
    /// A room command.
    Room(RoomCommand),
    /// Leave.
    Quit,
}

/// The whole client state.
#[derive(Debug)]
pub(crate) struct App {
    /// Our name.
    pub(crate) me: Name,
    /// The conversations, in the side list's order.
    pub(crate) conversations: Vec<Conversation>,
    /// The one shown.
    pub(crate) current: usize,
    /// The input line.
    pub(crate) input: Editor,
    /// Lines scrolled up from the bottom of the message pane.
    pub(crate) scroll: usize,
    /// Height of the message pane at the last draw, for PageUp/PageDown.
    pub(crate) page: usize,
    /// `/who` answers still to show.
    who_pending: usize,
    /// Set once the user asked to leave; the loop waits for outstanding sends.
    pub(crate) quitting: bool,
    /// The directory's address and where the connection stands, once reported.
    directory: Option<(String, Status)>,
    /// When the connection came back after being lost.
    reconnected_at: Option<Instant>,
    /// Files arriving, as last reported (at most [`ARRIVING_SHOWN`]).
    arriving: Vec<Arriving>,
}

impl App {
    /// A client for `me`, showing the conversation with `with`.
    pub(crate) fn new(me: Name, with: Target) -> Self {
        Self {
            me,
            conversations: vec![Conversation::new(with)],
            current: 0,
            input: Editor::default(),
            scroll: 0,
            page: 10,
            who_pending: 0,
            quitting: false,
            directory: None,
            reconnected_at: None,
            arriving: Vec::new(),
        }
    }

    /// Where the directory connection stands now. While it is not up, presence is unknown,
    /// and nothing is said of peers coming or going.
    pub(crate) fn directory(&mut self, addr: String, status: Status, now: Instant) {
        let was_lost = matches!(&self.directory, Some((_, Status::Unreachable(_))));
        self.reconnected_at = (was_lost && status == Status::Connected).then_some(now);
        if status != Status::Connected {
            for conv in &mut self.conversations {
                conv.presence = Presence::Unknown;
            }
        }
        self.directory = Some((addr, status));
    }

    /// Whether the directory can be asked things now.
    pub(crate) fn directory_up(&self) -> bool {
        matches!(&self.directory, Some((_, Status::Connected)) | None)
    }

    /// How far a file arriving is; one all in leaves the status line.
    pub(crate) fn file_arriving(&mut self, progress: Arriving) {
        let same = |a: &Arriving| a.from == progress.from && a.name == progress.name;
        self.arriving.retain(|a| !same(a));
        if progress.done < progress.total
            && !progress.stopped
            && self.arriving.len() < ARRIVING_SHOWN
        {
            self.arriving.push(progress);
        }
    }

    /// A file from `from` is stored: it (and any of `from`'s that stalled) leaves the status
    /// line.
    pub(crate) fn file_arrived(&mut self, from: &Name) {
        self.arriving.retain(|a| a.from != *from);
    }

    /// The status line: how the directory connection stands, when there is something to say
    /// (connecting, lost, refused, just back), else the files arriving; `true` with it for an
    /// alarm.
    pub(crate) fn status_line(&self, now: Instant) -> Option<(String, bool)> {
        self.directory_line(now).or_else(|| {
            let lines: Vec<String> = (self.arriving.iter())
                .map(|a| super::PLAIN.arriving(a))
                .collect();
            (!lines.is_empty()).then(|| (lines.join("; "), false))
        })
    }

    fn directory_line(&self, now: Instant) -> Option<(String, bool)> {
        let (addr, status) = self.directory.as_ref()?;
        Some(match status {
            Status::Connecting => (format!("connecting to the directory at {addr}…"), false),
            Status::Connected => {
                let since = self.reconnected_at?;
                if now.duration_since(since) >= RECONNECTED_SHOWN {
                    return None;
                }
                (format!("reconnected to the directory at {addr}"), false)
            }
            Status::Unreachable(why) => {
                let mut text = format!("directory unreachable, retrying… ({why})");
                if let Some(hint) = why.hint() {
                    text.push_str(&format!("; {hint}"));
                }
                (text, true)
            }
            Status::Refused(why) => (with_hint("the directory refused us", why), true),
        })
    }

    /// The conversation shown.
    pub(crate) fn shown(&self) -> &Conversation {
        &self.conversations[self.current]
    }

    /// The index of the conversation with `target`, opened at the end of the list if new.
    pub(crate) fn open(&mut self, target: &Target) -> usize {
        if let Some(i) = self.conversations.iter().position(|c| c.target == *target) {
            return i;
        }
        self.conversations.push(Conversation::new(target.clone()));
        self.conversations.len() - 1
    }

    /// The room shown, if the conversation shown is a room.
    pub(crate) fn shown_room(&self) -> Option<&RoomName> {
        self.shown().target.room()
    }

    /// Shows conversation `i`.
    pub(crate) fn switch_to(&mut self, i: usize) {
        if i < self.conversations.len() {
            self.conversations[self.current].marker = None;
            self.current = i;
            let conv = &mut self.conversations[i];
            conv.unread = 0;
            conv.marker = conv.first_unread.take();
            self.scroll = 0;
        }
    }

    /// Drops the conversation shown from the list and shows the one after it (the one before,
    /// for the last). Its history stays; a message in it opens it again.
    pub(crate) fn close(&mut self) {
        if self.conversations.len() == 1 {
            let text = "this is the only conversation: /to NAME opens another; /quit leaves";
            return self.notice(text, true);
        }
        if !self.shown().pending.is_empty() {
            let text = "messages are still being sent here: close it once they are";
            return self.notice(text, true);
        }
        self.conversations.remove(self.current);
        self.current = self.current.min(self.conversations.len() - 1);
        self.switch_to(self.current);
    }

    /// The answer to `/search text` in `target`'s conversation: how many messages of its
    /// history hold it, and the last of them, as notices.
    pub(crate) fn found(&mut self, target: &Target, text: &str, entries: &[HistoryEntry]) {
        let i = self.open(target);
        for line in crate::console::search_lines(text, entries) {
            self.notice_in(i, line, false);
        }
    }

    /// Messages received while their conversation was not shown, in every conversation.
    pub(crate) fn unread(&self) -> usize {
        self.conversations.iter().map(|c| c.unread).sum()
    }

    /// Puts earlier messages (from the local history) before what the conversation holds.
    pub(crate) fn load_history(&mut self, with: &Target, entries: Vec<HistoryEntry>) {
        let i = self.open(with);
        let conv = &mut self.conversations[i];
        let mut earlier: Vec<Entry> = entries
            .into_iter()
            .map(|e| Entry::Message {
                id: e.id,
                from: e.from,
                at_ms: e.sent_at_ms,
                body: e.body,
                state: e.state,
            })
            .collect();
        let shift = earlier.len();
        earlier.append(&mut conv.entries);
        conv.entries = earlier;
        conv.pending.iter_mut().for_each(|p| *p += shift);
        conv.echoed.values_mut().for_each(|p| *p += shift);
        for at in [&mut conv.first_unread, &mut conv.marker]
            .into_iter()
            .flatten()
        {
            *at += shift;
        }
    }

    /// Adds a notice to the conversation shown.
    pub(crate) fn notice(&mut self, text: impl Into<String>, alarm: bool) {
        let i = self.current;
        self.notice_in(i, text, alarm);
    }

    fn notice_in(&mut self, i: usize, text: impl Into<String>, alarm: bool) {
        self.conversations[i].entries.push(Entry::Notice {
            at_ms: now_ms(),
            text: text.into(),
            alarm,
        });
    }

    /// A message came in, to us or in `room`; true when it is in a conversation not shown
    /// (unread, and worth an alert).
    pub(crate) fn incoming(&mut self, m: &ChatMessage, room: Option<&RoomName>, via: Via) -> bool {
        let target = match room {
            Some(room) => Target::Room(room.clone()),
            None => Target::Peer(m.from.clone()),
        };
        let i = self.open(&target);
        let conv = &mut self.conversations[i];
        let unread = i != self.current;
        if unread {
            conv.unread += 1;
            conv.first_unread.get_or_insert(conv.entries.len());
        }
        conv.entries.push(Entry::Message {
            id: Some(m.id),
            from: m.from.clone(),
            at_ms: m.sent_at_ms,
            body: m.body.clone(),
            state: HistoryState::Received { via },
        });
        unread
    }

    /// We sent `body` to `to`; its outcome comes with [`App::outcome`].
    pub(crate) fn submitted(&mut self, to: &Target, body: String) {
        let i = self.open(to);
        let me = self.me.clone();
        let conv = &mut self.conversations[i];
        conv.pending.push_back(conv.entries.len());
        conv.entries.push(Entry::Message {
            id: None,
            from: me,
            at_ms: now_ms(),
            body,
            state: HistoryState::Sending,
        });
    }

    /// One of our messages, sent from another view: shown as that view shows it.
    pub(crate) fn echo(&mut self, echo: Echo) {
        let i = match &echo.stage {
            Stage::Submitted { .. } => self.open(&echo.to),
            // Not for a conversation closed since.
            Stage::Settled { .. } => {
                match self.conversations.iter().position(|c| c.target == echo.to) {
                    Some(i) => i,
                    None => return,
                }
            }
        };
        let me = self.me.clone();
        let conv = &mut self.conversations[i];
        match echo.stage {
            Stage::Submitted { body, at_ms } => {
                conv.echoed.insert(echo.number, conv.entries.len());
                conv.entries.push(Entry::Message {
                    id: None,
                    from: me,
                    at_ms,
                    body,
                    state: HistoryState::Sending,
                });
            }
            Stage::Settled { id, state } => {
                let Some(at) = conv.echoed.remove(&echo.number) else {
                    return;
                };
                if let Some(Entry::Message {
                    state: s, id: i, ..
                }) = conv.entries.get_mut(at)
                {
                    if !matches!(s, HistoryState::DeliveredLater { .. }) {
                        *s = state;
                    }
                    *i = id;
                }
            }
        }
    }

    /// How many of our messages have no outcome yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.conversations.iter().map(|c| c.pending.len()).sum()
    }

    /// The outcome of the oldest pending message to its recipient.
    pub(crate) fn outcome(&mut self, result: Result<&Sent, &SendFailed>) {
        let (to, state, sent_id) = match result {
            Ok(sent) => (&sent.to, crate::history::state_of(sent), Some(sent.id)),
            Err(failed) => (
                &failed.to,
                HistoryState::Failed {
                    reason: failed.failure.to_string(),
                },
                None,
            ),
        };
        let i = self.open(&Target::Peer(to.clone()));
        if let Err(SendFailed { failure, .. }) = result {
            if let Some(hint) = failure.hint() {
                self.notice_in(i, format!("{failure}: {hint}"), true);
            }
        }
        let conv = &mut self.conversations[i];
        if let Some(at) = conv.pending.pop_front() {
            if let Some(Entry::Message { state: s, id, .. }) = conv.entries.get_mut(at) {
                // A receipt may have come first, when the outcome was slow to arrive.
                if !matches!(s, HistoryState::DeliveredLater { .. }) {
                    *s = state;
                }
                *id = sent_id;
            }
        } else if let HistoryState::Failed { reason } = state {
            self.notice_in(i, format!("not sent: {reason}"), true);
        }
    }

    /// `from` took these queued messages of ours from its mailbox.
    pub(crate) fn receipt(&mut self, from: &Name, delivered: &[MessageId], at_ms: u64) {
        let from = Target::Peer(from.clone());
        let Some(conv) = self.conversations.iter_mut().find(|c| c.target == from) else {
            return;
        };
        for entry in conv.entries.iter_mut().rev() {
            if let Entry::Message {
                id: Some(id),
                state,
                ..
            } = entry
            {
                if delivered.contains(id)
                    && matches!(state, HistoryState::Queued | HistoryState::Sending)
                {
                    *state = HistoryState::DeliveredLater { at_ms };
                }
            }
        }
    }

    /// The outcome of a `/file`.
    pub(crate) fn file_outcome(&mut self, result: Result<&FileSent, &Failure>) {
        match result {
            Ok(f) => {
                let i = self.open(&Target::Peer(f.to.clone()));
                let text = match f.path {
                    Some(path) => format!(
                        "✓ file delivered to {} ({}, direct{})",
                        f.to,
                        indicatif::HumanBytes(f.size),
                        path.words().map(|w| format!(", {w}")).unwrap_or_default()
                    ),
                    None => format!(
                        "✉ file queued in {}'s mailbox ({})",
                        f.to,
                        indicatif::HumanBytes(f.size)
                    ),
                };
                self.notice_in(i, text, false);
            }
            Err(failure) => self.notice(with_hint("✗ file not sent", failure), true),
        }
    }

    /// The peers of the conversations, for polling presence.
    pub(crate) fn names(&self) -> Vec<Name> {
        (self.conversations.iter())
            .filter_map(|c| c.target.peer().cloned())
            .collect()
    }

    /// The outcome of the oldest pending message in a room (the room named by the failure,
    /// or else the first room with one pending).
    pub(crate) fn room_outcome(&mut self, result: Result<&RoomSent, &Failure>) {
        let room = match result {
            Ok(sent) => Some(sent.room.clone()),
            Err(Failure::NotAMember { room } | Failure::PostingTooFast { room, .. }) => {
                Some(room.clone())
            }
            Err(_) => None,
        };
        let i = match room {
            Some(room) => self.open(&Target::Room(room)),
            None => match (self.conversations.iter())
                .position(|c| c.target.room().is_some() && !c.pending.is_empty())
            {
                Some(i) => i,
                None => {
                    let text = result.err().map_or(String::new(), |f| f.to_string());
                    return self.notice(text, true);
                }
            },
        };
        let (state, note) = match result {
            Ok(sent) => {
                let members = sent.members();
                let state = crate::history::room_state(sent);
                let note = (sent.queued > 0 || !sent.failed.is_empty()).then(|| {
                    let mut text = format!(
                        "delivered to {} of {members}, {} queued",
                        sent.delivered, sent.queued
                    );
                    for (name, why) in &sent.failed {
                        text.push_str(&format!("; not to {name}: {why}"));
                    }
                    (text, !sent.failed.is_empty())
                });
                (state, note)
            }
            Err(failure) => (
                HistoryState::Failed {
                    reason: failure.to_string(),
                },
                failure
                    .hint()
                    .map(|hint| (format!("{failure}: {hint}"), true)),
            ),
        };
        let conv = &mut self.conversations[i];
        if let Some(at) = conv.pending.pop_front() {
            if let Some(Entry::Message { state: s, id, .. }) = conv.entries.get_mut(at) {
                *s = state;
                *id = result.ok().map(|sent| sent.id);
            }
        }
        if let Some((text, alarm)) = note {
            self.notice_in(i, text, alarm);
        }
    }

    /// A room's membership or a member's presence changed: a notice in the room.
    pub(crate) fn room_notice(&mut self, n: &RoomNotice, line: String) {
        let i = self.open(&Target::Room(n.room.clone()));
        let members = &mut self.conversations[i].members;
        match &n.event {
            RoomEvent::Changed(Change::Created(name) | Change::Joined(name))
            | RoomEvent::Changed(Change::Invited { name, .. }) => {
                if !members.contains(name) {
                    members.push(name.clone());
                }
            }
            RoomEvent::Changed(Change::Left(name) | Change::Kicked { name, .. }) => {
                members.retain(|m| m != name)
            }
            RoomEvent::Online(_) | RoomEvent::Offline(_) => {}
        }
        self.notice_in(i, line, false);
    }

    /// The answer to a room command: each room's members, for Tab, and a line about it.
    pub(crate) fn rooms(&mut self, views: &[RoomView], line: impl Fn(&RoomView) -> String) {
        for view in views {
            let i = self.open(&Target::Room(view.room.clone()));
            self.conversations[i].members = view.members.iter().map(|m| m.name.clone()).collect();
            let text = line(view);
            self.notice_in(i, text, false);
        }
    }

    /// A presence answer: updates the list, says so in the conversation when it changed, and
    /// shows it if `/who` asked.
    pub(crate) fn presence(&mut self, info: &PeerInfo) {
        let now = if info.online {
            Presence::Online
        } else {
            Presence::Offline(info.last_seen_ms)
        };
        let target = Target::Peer(info.name.clone());
        let Some(i) = self.conversations.iter().position(|c| c.target == target) else {
            return;
        };
        let before = std::mem::replace(&mut self.conversations[i].presence, now.clone());
        let name = &info.name;
        match (&before, &now) {
            (Presence::Offline(_), Presence::Online) => {
                self.notice_in(i, format!("{name} is online"), false)
            }
            (Presence::Online, Presence::Offline(_)) => {
                self.notice_in(i, format!("{name} left"), false)
            }
            _ => {}
        }
        if self.who_pending > 0 {
            self.who_pending -= 1;
            let text = format!("{name}: {}", presence_text(&now));
            self.notice(text, false);
        }
    }

    /// A failed presence answer: shown if `/who` asked. A name the directory does not know
    /// is said in its conversation the first time, and shown in the side list.
    pub(crate) fn presence_failed(&mut self, failure: &Failure) {
        if let Failure::UnknownPeer { name } = failure {
            let target = Target::Peer(name.clone());
            if let Some(i) = self.conversations.iter().position(|c| c.target == target) {
                let before =
                    std::mem::replace(&mut self.conversations[i].presence, Presence::NoSuchName);
                if before != Presence::NoSuchName {
                    let hint = failure.hint().unwrap_or_default();
                    self.notice_in(i, format!("{failure}: {hint}"), true);
                }
            }
        }
        if self.who_pending > 0 {
            self.who_pending -= 1;
            self.notice(with_hint("no answer", failure), true);
        }
    }

    /// Enter: a message for the peer shown, or a command.
    pub(crate) fn enter(&mut self) -> Action {
        let line = self.input.take();
        let trimmed = line.trim();
        let mut words = trimmed.split_whitespace();
        match words.next() {
            None => Action::None,
            Some("/help") => {
                for line in HELP {
                    self.notice(line, false);
                }
                Action::None
            }
            _ => match crate::line::parse(&line) {
                None => Action::None,
                Some(crate::line::Input::Text(text)) => {
                    // A pasted block often ends with a line break that means nothing.
                    let text = text.trim_matches('\n').to_string();
                    if text.len() > MAX_BODY_LEN {
                        // Refused here, before it is sent and fails: it stays in the box.
                        self.input.put_back(&line);
                        let notice = format!(
                            "this message is {}, over the {} a message may hold: shorten it, \
                             or send it as a file with /file PATH",
                            indicatif::HumanBytes(text.len() as u64),
                            indicatif::HumanBytes(MAX_BODY_LEN as u64)
                        );
                        self.notice(notice, true);
                        return Action::None;
                    }
                    let to = self.shown().target.clone();
                    self.scroll = 0;
                    Action::Send(to, text)
                }
                Some(crate::line::Input::To(target)) => {
                    let i = self.open(&target);
                    self.switch_to(i);
                    match target {
                        // Its members, for Tab, and whether we are in it.
                        Target::Room(room) => Action::Room(RoomCommand::Members { room }),
                        // Whether the name exists, at once rather than at the next poll.
                        Target::Peer(name) => Action::Check(name),
                    }
                }
                Some(crate::line::Input::File(path)) => match self.shown().target.clone() {
                    Target::Peer(to) => {
                        self.notice(format!("sending {} to {to}…", path.display()), false);
                        Action::SendFile(to, path)
                    }
                    Target::Room(room) => {
                        self.notice(format!("files cannot be sent to a room ({room}) yet"), true);
                        Action::None
                    }
                },
                Some(crate::line::Input::Room(line)) => match line.command(self.shown_room()) {
                    Ok(command) => {
                        if let RoomCommand::Join { room } = &command {
                            let i = self.open(&Target::Room(room.clone()));
                            self.switch_to(i);
                        }
                        Action::Room(command)
                    }
                    Err(e) => {
                        self.notice(e, true);
                        Action::None
                    }
                },
                Some(crate::line::Input::Search(text)) => {
                    Action::Search(self.shown().target.clone(), text)
                }
                Some(crate::line::Input::Close) => {
                    self.close();
                    Action::None
                }
                Some(crate::line::Input::Who) => {
                    let names = self.names();
                    self.who_pending += names.len();
                    Action::Who(names)
                }
                Some(crate::line::Input::Contact(name, accept)) => {
                    let standing = match accept {
                        true => Standing::Accepted,
                        false => Standing::Blocked,
                    };
                    Action::Contact(name, standing)
                }
                Some(crate::line::Input::Help) => Action::None,
                Some(crate::line::Input::Quit) => Action::Quit,
                Some(crate::line::Input::Bad(why)) => {
                    let word = trimmed.split_whitespace().next().unwrap_or(trimmed);
                    let text = match COMMANDS.contains(&word) {
                        // A known command with something wrong in it: say what.
                        true if !why.starts_with("unknown command") => format!("{why}; see /help"),
                        true => format!("usage: see /help ({trimmed:?})"),
                        false => format!("unknown command {word:?}; /help lists them"),
                    };
                    self.notice(text, true);
                    Action::None
                }
            },
        }
    }

    /// Tab: completes the command (first word) or name before the cursor; several candidates
    /// complete their common prefix and are listed.
    pub(crate) fn complete(&mut self) {
        // After /file: the path, from what is on disk.
        let text = self.input.text();
        if let Some(typed) = text.strip_prefix("/file ") {
            if self.input.at_end() {
                let typed = typed.trim_start();
                match super::paths::complete(typed) {
                    super::paths::Completion::Path(path) => {
                        self.input.put_back(&format!("/file {path}"))
                    }
                    super::paths::Completion::Names(names) => self.notice(names.join("  "), false),
                    super::paths::Completion::Nothing => {}
                }
                return;
            }
        }
        let (word, first) = self.input.word_before_cursor();
        let candidates: Vec<String> = if first && word.starts_with('/') {
            COMMANDS.iter().map(|c| c.to_string()).collect()
        } else {
            // Conversations (peers and rooms), and the members of the room shown.
            let mut words: Vec<String> = (self.conversations.iter())
                .map(|c| c.target.to_string())
                .chain(self.shown().members.iter().map(|m| m.to_string()))
                .filter(|w| *w != self.me.as_str())
                .collect();
            words.sort();
            words.dedup();
            words
        };
        let matching: Vec<&String> = candidates.iter().filter(|c| c.starts_with(&word)).collect();
        match matching.as_slice() {
            [] => {}
            [one] => self.input.complete_word(&format!("{one} ")),
            many => {
                let prefix = super::paths::common_prefix(many);
                if prefix.len() > word.len() {
                    self.input.complete_word(&prefix);
                } else {
                    let list: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                    self.notice(list.join("  "), false);
                }
            }
        }
    }

    /// PageUp.
    pub(crate) fn page_up(&mut self) {
        self.scroll += self.page.saturating_sub(1).max(1);
    }

    /// PageDown.
    pub(crate) fn page_down(&mut self) {
        self.scroll = self
            .scroll
            .saturating_sub(self.page.saturating_sub(1).max(1));
    }

    /// Home with nothing typed: the oldest line of the conversation (the view clamps it).
    pub(crate) fn scroll_top(&mut self) {
        self.scroll = usize::MAX;
    }

    /// End with nothing typed: back to the latest line.
    pub(crate) fn scroll_bottom(&mut self) {
        self.scroll = 0;
    }

    /// Ctrl-N / Ctrl-P: the next or previous conversation.
    pub(crate) fn cycle(&mut self, forward: bool) {
        let n = self.conversations.len();
        let i = if forward {
            (self.current + 1) % n
        } else {
            (self.current + n - 1) % n
        };
        self.switch_to(i);
    }
}

/// "online", "offline, last seen 5m ago", ...
pub(crate) fn presence_text(p: &Presence) -> String {
    match p {
        Presence::Unknown => "unknown".into(),
        Presence::Online => "online".into(),
        Presence::Offline(Some(ms)) => format!("last seen {}", crate::console::ago(*ms)),
        Presence::Offline(None) => "offline".into(),
        Presence::NoSuchName => "no such name".into(),
    }
}

/// `what: failure`, and what to do about it when there is something to say.
fn with_hint(what: &str, failure: &Failure) -> String {
    match failure.hint() {
        Some(hint) => format!("{what}: {failure} ({hint})"),
        None => format!("{what}: {failure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Status;
    use common::KeyId;

    fn name(s: &str) -> Name {
        Name::new(s).expect("valid test name")
    }

    fn peer(s: &str) -> Target {
        Target::Peer(name(s))
    }

    fn app() -> App {
        App::new(name("c1"), peer("c2"))
    }

    fn typed(app: &mut App, s: &str) {
        s.chars().for_each(|c| app.input.insert(c));
    }

    fn info(n: &str, online: bool) -> PeerInfo {
        PeerInfo {
            name: name(n),
            key: KeyId([0; 32]),
            online,
            last_seen_ms: Some(now_ms()),
            observed_addr: None,
            listen_addrs: Vec::new(),
            queued_from_you: 0,
            published: None,
        }
    }

    fn states(app: &App, i: usize) -> Vec<HistoryState> {
        app.conversations[i]
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Message { state, .. } => Some(state.clone()),
                Entry::Notice { .. } => None,
            })
            .collect()
    }

    #[test]
    fn outcomes_settle_messages_per_recipient_in_order() {
        let mut app = app();
        typed(&mut app, "hello");
        assert_eq!(app.enter(), Action::Send(peer("c2"), "hello".into()));
        app.submitted(&peer("c2"), "hello".into());
        app.submitted(&peer("c2"), "again".into());
        app.submitted(&peer("c3"), "elsewhere".into());
        assert_eq!(app.outstanding(), 3);
        let failed = SendFailed {
            to: name("c3"),
            failure: Failure::Other("no route".into()),
        };
        app.outcome(Err(&failed));
        let sent = |status| Sent {
            id: MessageId::random(),
            to: name("c2"),
            status,
            path: None,
        };
        app.outcome(Ok(&sent(Status::Delivered)));
        assert_eq!(
            states(&app, 0),
            [
                HistoryState::Delivered { path: None },
                HistoryState::Sending
            ]
        );
        app.outcome(Ok(&sent(Status::Queued)));
        assert_eq!(states(&app, 0)[1], HistoryState::Queued);
        assert!(matches!(states(&app, 1)[0], HistoryState::Failed { .. }));
        assert_eq!(app.outstanding(), 0);
    }

    #[test]
    fn unread_counts_and_switching() {
        let mut app = app();
        let m = ChatMessage {
            id: MessageId::random(),
            from: name("c3"),
            to: name("c1"),
            sent_at_ms: now_ms(),
            body: "psst".into(),
        };
        app.incoming(&m, None, Via::Direct);
        app.incoming(&m, None, Via::Mailbox);
        assert_eq!(app.conversations[1].unread, 2);
        typed(&mut app, "/to c3");
        assert_eq!(
            app.enter(),
            Action::Check(name("c3")),
            "the name is looked up at once"
        );
        assert_eq!((app.current, app.conversations[1].unread), (1, 0));
        assert_eq!(
            app.conversations[1].marker,
            Some(0),
            "the new line above both"
        );
        app.cycle(true);
        assert_eq!(app.current, 0);
        assert_eq!(app.conversations[1].marker, None, "gone once left");
        // /close drops the conversation shown, and shows the next one.
        typed(&mut app, "/close");
        assert_eq!(app.enter(), Action::None);
        assert_eq!(app.conversations.len(), 1);
        assert_eq!(app.shown().target, peer("c3"));
    }

    #[test]
    fn the_status_line_follows_the_directory_and_presence_is_unknown_while_it_is_away() {
        let mut app = app();
        let t0 = Instant::now();
        let addr = "127.0.0.1:9000".to_string();
        app.directory(
            addr.clone(),
            crate::directory_client::Status::Connecting,
            t0,
        );
        let (line, alarm) = app.status_line(t0).expect("a status line");
        assert!(line.starts_with("connecting to the directory at 127.0.0.1:9000"));
        assert!(!alarm);
        app.directory(addr.clone(), crate::directory_client::Status::Connected, t0);
        assert_eq!(
            app.status_line(t0),
            None,
            "nothing to say on a first connection"
        );
        app.presence(&info("c2", true));
        let notices = app.conversations[0].entries.len();

        let lost = Failure::NoDirectory { addr: addr.clone() };
        app.directory(
            addr.clone(),
            crate::directory_client::Status::Unreachable(lost),
            t0,
        );
        assert!(!app.directory_up());
        assert_eq!(app.conversations[0].presence, Presence::Unknown);
        let (line, alarm) = app.status_line(t0).expect("a status line");
        assert!(
            line.starts_with("directory unreachable, retrying…"),
            "{line}"
        );
        assert!(line.contains("directory --bind"), "{line}");
        assert!(alarm);

        app.directory(addr.clone(), crate::directory_client::Status::Connected, t0);
        assert!(app.directory_up());
        let (line, _) = app.status_line(t0).expect("a status line");
        assert_eq!(line, "reconnected to the directory at 127.0.0.1:9000");
        assert_eq!(app.status_line(t0 + RECONNECTED_SHOWN), None);
        // Presence comes back with the next answer, and neither the loss nor the return of
        // the directory reads as c2 leaving or coming.
        app.presence(&info("c2", true));
        assert_eq!(app.conversations[0].entries.len(), notices);
    }

    #[test]
    fn presence_changes_become_notices() {
        let mut app = app();
        app.presence(&info("c2", false));
        assert!(
            app.conversations[0].entries.is_empty(),
            "first answer is no change"
        );
        app.presence(&info("c2", true));
        app.presence(&info("c2", true));
        app.presence(&info("c2", false));
        let notices: Vec<&str> = app.conversations[0]
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Notice { text, .. } => Some(text.as_str()),
                Entry::Message { .. } => None,
            })
            .collect();
        assert_eq!(notices, ["c2 is online", "c2 left"]);
    }

    #[test]
    fn tab_completes_commands_and_names() {
        let mut app = app();
        app.open(&peer("carol"));
        typed(&mut app, "/t");
        app.complete();
        assert_eq!(app.input.text(), "/to ");
        typed(&mut app, "ca");
        app.complete();
        assert_eq!(app.input.text(), "/to carol ");
        app.input.take();
        typed(&mut app, "c");
        app.complete();
        assert_eq!(
            app.input.text(),
            "c",
            "c2 and carol: no common prefix longer than c"
        );
        assert!(matches!(
            app.conversations[0].entries.last(),
            Some(Entry::Notice { text, .. }) if text == "c2  carol"
        ));
    }

    /// A room is a conversation of its own: `/to #ops` opens it and asks for its members,
    /// its messages and notices land in it, Tab completes its members, room commands apply to
    /// it, and a message's outcome says how many members have it.
    #[test]
    fn a_room_is_a_conversation_with_members() {
        let mut app = app();
        let ops: RoomName = "#ops".parse().expect("room");
        typed(&mut app, "/leave");
        assert_eq!(app.enter(), Action::None, "not in a room yet");
        typed(&mut app, "/to #ops");
        assert_eq!(
            app.enter(),
            Action::Room(RoomCommand::Members { room: ops.clone() })
        );
        assert_eq!(app.shown().target, Target::Room(ops.clone()));
        let joined = RoomNotice {
            room: ops.clone(),
            event: RoomEvent::Changed(Change::Joined(name("dave"))),
            at_ms: now_ms(),
        };
        app.room_notice(&joined, "dave joined".into());
        typed(&mut app, "da");
        app.complete();
        assert_eq!(app.input.text(), "dave ");
        app.input.take();
        typed(&mut app, "/invite erin frank");
        assert_eq!(
            app.enter(),
            Action::Room(RoomCommand::Invite {
                room: ops.clone(),
                names: vec![name("erin"), name("frank")],
            })
        );
        // Back in c2's conversation, a message in the room counts as unread there.
        app.switch_to(0);
        let m = ChatMessage {
            id: MessageId::random(),
            from: name("dave"),
            to: name("c1"),
            sent_at_ms: now_ms(),
            body: "hi all".into(),
        };
        app.incoming(&m, Some(&ops), Via::Direct);
        let room = app.open(&Target::Room(ops.clone()));
        assert_eq!(app.conversations[room].unread, 1);
        assert!(states(&app, 0).is_empty(), "it went to c2");
        app.switch_to(room);
        typed(&mut app, "deploying");
        assert_eq!(
            app.enter(),
            Action::Send(Target::Room(ops.clone()), "deploying".into())
        );
        app.submitted(&Target::Room(ops.clone()), "deploying".into());
        let sent = RoomSent {
            id: MessageId::random(),
            room: ops,
            delivered: 1,
            queued: 1,
            failed: Vec::new(),
        };
        app.room_outcome(Ok(&sent));
        assert_eq!(states(&app, room).last(), Some(&HistoryState::Queued));
        assert!(matches!(
            app.conversations[room].entries.last(),
            Some(Entry::Notice { text, .. }) if text == "delivered to 1 of 2, 1 queued"
        ));
    }

    #[test]
    fn receipts_mark_queued_messages_delivered_later() {
        let mut app = app();
        app.submitted(&peer("c2"), "one".into());
        app.submitted(&peer("c2"), "two".into());
        let queued = Sent {
            id: MessageId::random(),
            to: name("c2"),
            status: Status::Queued,
            path: None,
        };
        let other = Sent {
            id: MessageId::random(),
            ..queued.clone()
        };
        app.outcome(Ok(&queued));
        app.outcome(Ok(&other));
        app.receipt(&name("c3"), &[queued.id], 7);
        assert_eq!(
            states(&app, 0),
            [HistoryState::Queued, HistoryState::Queued]
        );
        app.receipt(&name("c2"), &[queued.id], 7);
        assert_eq!(
            states(&app, 0),
            [
                HistoryState::DeliveredLater { at_ms: 7 },
                HistoryState::Queued
            ]
        );
    }

    #[test]
    fn file_and_unknown_commands_explain_themselves() {
        let mut app = app();
        typed(&mut app, "/file /tmp/a b.txt");
        assert_eq!(
            app.enter(),
            Action::SendFile(name("c2"), PathBuf::from("/tmp/a b.txt"))
        );
        typed(&mut app, "/nope");
        assert_eq!(app.enter(), Action::None);
        typed(&mut app, "//slash");
        assert_eq!(app.enter(), Action::Send(peer("c2"), "/slash".into()));
        typed(&mut app, "/quit");
        assert_eq!(app.enter(), Action::Quit);
        let n = app.conversations[0].entries.len();
        assert_eq!(n, 2, "the /file notice and the unknown command's");
    }

    #[test]
    fn an_echo_shows_as_ours_and_settles_in_place_after_history_loads() {
        let mut app = app();
        let submitted = |number, body: &str| Echo {
            origin: 7,
            number,
            to: peer("c3"),
            stage: Stage::Submitted {
                body: body.into(),
                at_ms: 1,
            },
        };
        app.echo(submitted(1, "from another window"));
        app.echo(submitted(2, "and another"));
        // Earlier messages loaded from the history go before both.
        let earlier = HistoryEntry {
            id: None,
            from: name("c3"),
            to: name("c1"),
            room: None,
            sent_at_ms: 0,
            body: "earlier".into(),
            state: HistoryState::Received { via: Via::Direct },
        };
        app.load_history(&peer("c3"), vec![earlier]);
        let id = MessageId::random();
        app.echo(Echo {
            origin: 7,
            number: 1,
            to: peer("c3"),
            stage: Stage::Settled {
                id: Some(id),
                state: HistoryState::Queued,
            },
        });
        // An outcome of a message never seen (announced before this view listened) changes
        // nothing.
        app.echo(Echo {
            origin: 7,
            number: 99,
            to: peer("c3"),
            stage: Stage::Settled {
                id: None,
                state: HistoryState::Queued,
            },
        });
        let i = app.open(&peer("c3"));
        let conv = &app.conversations[i];
        let states: Vec<_> = (conv.entries.iter())
            .map(|e| match e {
                Entry::Message {
                    body, state, id, ..
                } => (body.as_str(), state.clone(), *id),
                Entry::Notice { .. } => panic!("no notice expected"),
            })
            .collect();
        assert_eq!(
            states,
            vec![
                ("earlier", HistoryState::Received { via: Via::Direct }, None),
                ("from another window", HistoryState::Queued, Some(id)),
                ("and another", HistoryState::Sending, None),
            ]
        );
        assert_eq!(
            app.outstanding(),
            0,
            "an echo is not this view's to wait for"
        );
    }

    #[test]
    fn files_arriving_show_in_the_status_line_until_stored() {
        let mut app = app();
        let arriving = |done| Arriving {
            from: name("c2"),
            name: "big.iso".into(),
            done,
            total: 4 << 30,
            stopped: false,
        };
        let now = Instant::now();
        app.file_arriving(arriving(1 << 30));
        let (line, alarm) = app.status_line(now).expect("a status line");
        assert_eq!(
            line,
            "receiving big.iso from c2: 25% (1.00 GiB of 4.00 GiB)"
        );
        assert!(!alarm);
        app.file_arriving(arriving(2 << 30));
        let (line, _) = app.status_line(now).expect("a status line");
        assert!(line.contains("50%") && !line.contains("25%"), "{line}");
        app.file_arrived(&name("c2"));
        assert_eq!(app.status_line(now), None);
        app.file_arriving(arriving(4 << 30));
        assert_eq!(app.status_line(now), None, "all in: nothing to show");
        app.file_arriving(arriving(1 << 30));
        app.file_arriving(Arriving {
            stopped: true,
            ..arriving(0)
        });
        assert_eq!(app.status_line(now), None, "stopped: nothing to show");
    }
}
