//! The page's view of the running peer: one task that drives the [`Session`], keeps what every
//! open page must agree on (the conversations, their unread counts and presence, our messages
//! still being sent, the files received), and turns each [`Update`] into one JSON event for
//! every page at once. Pages ask for things with [`Command`]s; the hub answers on the same
//! broadcast, so two tabs always show the same thing.
//!
//! Our messages: a page asks to send, the hub hands the body to the session and announces it
//! at once as `sending` with a number of its own (`cid`); the outcome, which the session gives
//! in submission order for each recipient, settles the oldest `cid` of that conversation.

use super::page::{entry_json, state_detail, via_str, PageRequest};
use crate::{
    console::Console,
    contacts::Standing,
    echo::{Echo, Stage},
    history::{room_state, state_of, HistoryEntry, HistoryState},
    line::{parse, Input, HELP},
    rooms::RoomCommand,
    service::Update,
    session::Session,
    target::Target,
};
use common::{now_ms, wire::PeerInfo, Name};
use serde_json::{json, Value};
use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{broadcast, mpsc, oneshot};

/// How often the presence of the peers in the list is asked, as the terminal client does.
const PRESENCE_EVERY: Duration = Duration::from_secs(3);
/// Most conversations from the history put in the list at start.
const HISTORY_PEERS: usize = 30;
/// Most messages a page may ask for at once when it scrolls up.
pub const HISTORY_MAX: usize = 2_000;
/// Most peers whose presence is asked at each tick.
const PRESENCE_WATCHED: usize = 50;
/// Most conversations in the list: a page cannot make the hub's state grow without end.
pub const MAX_CONVERSATIONS: usize = 1_000;

/// What the server asks of the hub.
#[derive(Debug)]
pub enum Command {
    /// A page's request.
    Page(PageRequest),
    /// A page connected: the state it starts from.
    Hello(oneshot::Sender<String>),
    /// Send an uploaded file (the hub deletes it when it is sent or has failed).
    SendFile {
        /// The recipient.
        to: Name,
        /// The uploaded copy.
        path: PathBuf,
    },
}

/// A file that arrived, which the page offers as a download.
#[derive(Debug, Clone)]
pub struct Download {
    /// Where it is stored.
    pub path: PathBuf,
    /// The name to save it as.
    pub name: String,
}

/// The files received since start, by the number in their download link.
pub type Downloads = Arc<Mutex<Vec<Download>>>;

/// Why [`Hub::drive`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The user stopped `peer web`, or the server is gone.
    Shutdown,
    /// The running peer this session was attached to stopped.
    PeerGone,
}

/// What the directory says of a peer, as last asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Presence {
    Unknown,
    Online,
    Offline(Option<u64>),
}

struct Conversation {
    target: Target,
    unread: usize,
    presence: Presence,
    /// When something was last said in it (ms since the epoch), for the list's order.
    last_ms: u64,
}

/// The hub's state; it outlives sessions, so the pages keep theirs when the peer restarts.
pub struct Hub {
    events: broadcast::Sender<Arc<str>>,
    downloads: Downloads,
    me: Option<(Name, String)>,
    attached: bool,
    conversations: Vec<Conversation>,
    /// Our messages without an outcome, by conversation: (cid, body), oldest first.
    pending: HashMap<Target, VecDeque<(u64, String)>>,
    /// Our messages sent from other views without an outcome: echo number → (conversation,
    /// cid).
    echoed: HashMap<u64, (Target, u64)>,
    /// The rooms of our messages to rooms without an outcome, in submission order: a failure
    /// does not always name its room.
    room_order: VecDeque<Target>,
    next_cid: u64,
    /// Files being sent, oldest first: the recipient, and the folder of the uploaded copy
    /// (removed once sent; `None` for a file `/file` named on this machine).
    files: VecDeque<(Name, Option<PathBuf>)>,
    /// Room commands typed in the page whose answers are still to show.
    room_asked: usize,
    /// The files received since start, as the page shows them; the history holds only
    /// messages, and a page that loads a conversation again gets these with them.
    received: Vec<(Target, Value)>,
    directory: Value,
}

impl Hub {
    /// A hub that tells the pages through `events`, and lists received files in `downloads`.
    pub fn new(events: broadcast::Sender<Arc<str>>, downloads: Downloads) -> Self {
        Self {
            events,
            downloads,
            me: None,
            attached: false,
            conversations: Vec::new(),
            pending: HashMap::new(),
            echoed: HashMap::new(),
            room_order: VecDeque::new(),
            next_cid: 1,
            files: VecDeque::new(),
            room_asked: 0,
            received: Vec::new(),
            directory: json!({"state": "connecting", "text": "starting the peer…"}),
        }
    }

    fn emit(&self, event: Value) {
        // No page open is fine: the next one starts from `hello`.
        let _ = self.events.send(event.to_string().into());
    }

    /// Tells every page something that is not about one message.
    pub fn notice(&self, with: Option<&Target>, text: &str, alarm: bool) {
        self.emit(json!({
            "type": "notice",
            "with": with.map(Target::to_string),
            "text": text,
            "alarm": alarm,
            "at_ms": now_ms(),
        }));
    }

    /// Where the peer stands, for a page that just connected.
    fn hello(&self) -> String {
        let (me, key) = match &self.me {
            Some((name, key)) => (Some(name.to_string()), Some(key.clone())),
            None => (None, None),
        };
        json!({
            "type": "hello",
            "me": me,
            "key": key,
            "attached": self.attached,
            "directory": self.directory,
            "conversations": self.conversations.iter().map(conversation_json).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// The conversation with `target`, added to the list (and announced) if new.
    fn open(&mut self, target: &Target) -> usize {
        if let Some(i) = self.conversations.iter().position(|c| c.target == *target) {
            return i;
        }
        self.conversations.push(Conversation {
            target: target.clone(),
            unread: 0,
            presence: Presence::Unknown,
            last_ms: 0,
        });
        let i = self.conversations.len() - 1;
        self.emit(json!({"type": "conversation", "conversation": conversation_json(&self.conversations[i])}));
        i
    }

    /// Runs `session` until it ends or `shutdown` fires, answering `commands` meanwhile.
    pub async fn drive(
        &mut self,
        session: &mut Session,
        commands: &mut mpsc::Receiver<Command>,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> End {
        self.me = Some((session.name.clone(), session.key.short()));
        self.attached = session.is_remote();
        // Outcomes of an earlier session's sends will not come: its pages learn from the
        // history what became of them.
        self.pending.clear();
        self.echoed.clear();
        self.room_order.clear();
        self.room_asked = 0;
        for (to, upload) in std::mem::take(&mut self.files) {
            if let Some(dir) = upload {
                let _ = std::fs::remove_dir_all(dir);
            }
            let text = "file not sent: the running peer stopped; send it again";
            self.emit(
                json!({"type": "file_sent", "with": to.to_string(), "ok": false, "text": text}),
            );
        }
        for name in session
            .history_peers()
            .await
            .into_iter()
            .take(HISTORY_PEERS)
        {
            self.open(&Target::Peer(name));
        }
        session.attach();
        session.watch_directory();
        session.room(RoomCommand::List);
        let hello = self.hello();
        let _ = self.events.send(hello.into());
        let mut presence = tokio::time::interval(PRESENCE_EVERY);
        loop {
            tokio::select! {
                update = session.next() => match update {
                    Some(update) => self.update(update),
                    None => return End::PeerGone,
                },
                command = commands.recv() => match command {
                    Some(command) => self.command(session, command).await,
                    None => return End::Shutdown,
                },
                _ = presence.tick() => {
                    // While the directory is away, asking would only pile up requests.
                    if self.directory["state"] == "connected" {
                        for name in self.watched() {
                            session.whois(name);
                        }
                    }
                }
                _ = shutdown.as_mut() => return End::Shutdown,
            }
        }
    }

    /// The peers whose presence is asked: those of the latest conversations, so that a long
    /// list does not become a stream of lookups at the directory.
    fn watched(&self) -> Vec<Name> {
        let mut peers: Vec<(u64, &Name)> = (self.conversations.iter())
            .filter_map(|c| c.target.peer().map(|name| (c.last_ms, name)))
            .collect();
        peers.sort_by_key(|&(at, _)| std::cmp::Reverse(at));
        peers.truncate(PRESENCE_WATCHED);
        peers.into_iter().map(|(_, name)| name.clone()).collect()
    }

    async fn command(&mut self, session: &Session, command: Command) {
        match command {
            Command::Hello(reply) => {
                let _ = reply.send(self.hello());
            }
            Command::SendFile { to, path } => {
                self.open(&Target::Peer(to.clone()));
                let upload = path.parent().map(Path::to_path_buf);
                self.files.push_back((to.clone(), upload));
                session.send_file(to, path);
            }
            Command::Page(request) => self.page(session, request).await,
        }
    }

    async fn page(&mut self, session: &Session, request: PageRequest) {
        let with = match &request {
            PageRequest::Send { to: with, .. }
            | PageRequest::Open { with }
            | PageRequest::History { with, .. }
            | PageRequest::Read { with } => with.parse::<Target>(),
        };
        let target = match with {
            Ok(target) => target,
            Err(e) => return self.notice(None, &e, true),
        };
        let known = self.conversations.iter().any(|c| c.target == target);
        if !known && self.conversations.len() >= MAX_CONVERSATIONS {
            let text = format!("at most {MAX_CONVERSATIONS} conversations can be open");
            return self.notice(None, &text, true);
        }
        match request {
            PageRequest::Send { body, .. } => self.typed(session, target, body).await,
            PageRequest::Open { .. } => {
                self.open(&target);
                if let Target::Peer(name) = target {
                    session.whois(name);
                }
            }
            PageRequest::History { limit, .. } => {
                let limit = limit.clamp(1, HISTORY_MAX);
                let entries = match session.history(&target, limit).await {
                    Ok(Some(entries)) => entries,
                    Ok(None) => {
                        let text = "no local history: another process has it open";
                        return self.notice(Some(&target), text, true);
                    }
                    Err(e) => {
                        let text = format!("cannot read the history: {e:#}");
                        return self.notice(Some(&target), &text, true);
                    }
                };
                let complete = entries.len() < limit;
                let messages = self.with_cids(&target, entries);
                let files: Vec<&Value> = (self.received.iter())
                    .filter(|(t, _)| *t == target)
                    .map(|(_, file)| file)
                    .collect();
                self.emit(json!({
                    "type": "history",
                    "with": target.to_string(),
                    "messages": messages,
                    "files": files,
                    "complete": complete,
                }));
            }
            PageRequest::Read { .. } => {
                let i = self.open(&target);
                self.conversations[i].unread = 0;
                self.emit(json!({"type": "unread", "with": target.to_string(), "unread": 0}));
            }
        }
    }

    /// What the page's composer sent: a message, or one of the terminal client's commands
    /// (`/accept`, `/join #room`, …; `//text` for a message that starts with `/`).
    async fn typed(&mut self, session: &Session, target: Target, body: String) {
        let Some(input) = parse(&body) else { return };
        match input {
            Input::Text(text) => self.send(session, target, text),
            Input::To(to) => {
                self.open(&to);
                if let Target::Peer(name) = &to {
                    session.whois(name.clone());
                }
                self.emit(json!({"type": "show", "with": to.to_string()}));
            }
            Input::File(path) => match target {
                Target::Peer(name) => {
                    self.files.push_back((name.clone(), None));
                    session.send_file(name, path);
                }
                Target::Room(_) => {
                    self.notice(Some(&target), "files cannot be sent to a room yet", true)
                }
            },
            Input::Contact(name, accept) => {
                let standing = if accept {
                    Standing::Accepted
                } else {
                    Standing::Blocked
                };
                session.set_contact(name, standing);
            }
            Input::Who => {
                let lines: Vec<String> = (self.conversations.iter())
                    .filter(|c| c.target.peer().is_some())
                    .map(|c| format!("{}: {}", c.target, presence_str(&c.presence)))
                    .collect();
                let text = match lines.is_empty() {
                    true => "no one in the list".to_string(),
                    false => lines.join(", "),
                };
                self.notice(Some(&target), &text, false);
            }
            Input::Room(line) => match line.command(target.room()) {
                Ok(command) => {
                    if let RoomCommand::Join { room } = &command {
                        let room = Target::Room(room.clone());
                        self.open(&room);
                        self.emit(json!({"type": "show", "with": room.to_string()}));
                    }
                    self.room_asked += 1;
                    session.room(command);
                }
                Err(e) => self.notice(Some(&target), &e, true),
            },
            Input::Search(text) => match session.history(&target, usize::MAX).await {
                Ok(Some(entries)) => {
                    for line in crate::console::search_lines(&text, &entries) {
                        self.notice(Some(&target), &line, false);
                    }
                }
                Ok(None) => self.notice(Some(&target), "no local history to search", true),
                Err(e) => {
                    let text = format!("cannot read the history: {e:#}");
                    self.notice(Some(&target), &text, true);
                }
            },
            Input::Close => {
                let text =
                    "the list keeps every conversation here; /close is the terminal client's";
                self.notice(Some(&target), text, false);
            }
            Input::Help => self.notice(Some(&target), HELP, false),
            Input::Quit => {
                let text = "close the tab to leave; peer web runs until it is stopped";
                self.notice(Some(&target), text, false);
            }
            Input::Bad(e) => self.notice(Some(&target), &e, true),
        }
    }

    /// Shows one of our messages as `sending`, under a new `cid`, which it returns.
    fn sending(&mut self, target: &Target, body: &str, at_ms: u64) -> u64 {
        let i = self.open(target);
        let cid = self.next_cid;
        self.next_cid += 1;
        self.conversations[i].last_ms = at_ms;
        let from = self.me.as_ref().map(|(n, _)| n.to_string());
        self.emit(json!({
            "type": "message",
            "with": target.to_string(),
            "message": {"id": null, "cid": cid, "from": from, "at_ms": at_ms, "body": body, "state": "sending"},
        }));
        cid
    }

    fn send(&mut self, session: &Session, target: Target, body: String) {
        let cid = self.sending(&target, &body, now_ms());
        let queue = self.pending.entry(target.clone()).or_default();
        queue.push_back((cid, body.clone()));
        match target {
            Target::Peer(name) => session.submit(name, body),
            Target::Room(room) => {
                self.room_order.push_back(Target::Room(room.clone()));
                session.submit_room(room, body);
            }
        }
    }

    /// The history's entries as the page shows them. Our messages still being sent are in the
    /// history as `sending` without an id: each gets the `cid` the pages know it by, so that
    /// its outcome finds it.
    fn with_cids(&self, target: &Target, entries: Vec<HistoryEntry>) -> Vec<Value> {
        let mut pending: VecDeque<&(u64, String)> =
            self.pending.get(target).into_iter().flatten().collect();
        let mut out: Vec<Value> = entries
            .iter()
            .rev()
            .map(|e| {
                let mut cid = None;
                if e.state == HistoryState::Sending && e.id.is_none() {
                    if let Some(at) = pending.iter().rposition(|(_, body)| *body == e.body) {
                        cid = pending.remove(at).map(|(c, _)| *c);
                    }
                }
                entry_json(e, cid)
            })
            .collect();
        out.reverse();
        out
    }

    /// Settles the oldest message without an outcome in `target`'s conversation.
    fn settle(&mut self, target: &Target, id: Option<String>, state: &HistoryState) {
        let cid = self
            .pending
            .get_mut(target)
            .and_then(VecDeque::pop_front)
            .map(|(cid, _)| cid);
        if let Some(cid) = cid {
            self.settle_cid(target, cid, id, state);
        }
    }

    /// One of our messages sent from another view: shown, then settled, as the pages' own.
    fn echo(&mut self, echo: Echo) {
        match echo.stage {
            Stage::Submitted { body, at_ms } => {
                let cid = self.sending(&echo.to, &body, at_ms);
                self.echoed.insert(echo.number, (echo.to, cid));
            }
            Stage::Settled { id, state } => {
                if let Some((target, cid)) = self.echoed.remove(&echo.number) {
                    self.settle_cid(&target, cid, id.map(|id| id.to_string()), &state);
                }
            }
        }
    }

    fn settle_cid(&mut self, target: &Target, cid: u64, id: Option<String>, state: &HistoryState) {
        let i = self.open(target);
        let event = json!({
            "type": "state",
            "with": self.conversations[i].target.to_string(),
            "cid": cid,
            "id": id,
            "state": state.as_str(),
            "detail": state_detail(state),
        });
        self.emit(event);
    }

    fn update(&mut self, update: Update) {
        match update {
            Update::Message(received) => {
                let target = match &received.room {
                    Some(room) => Target::Room(room.clone()),
                    None => Target::Peer(received.message.from.clone()),
                };
                let i = self.open(&target);
                let conv = &mut self.conversations[i];
                conv.unread += 1;
                conv.last_ms = now_ms();
                let unread = conv.unread;
                let m = &received.message;
                self.emit(json!({
                    "type": "message",
                    "with": target.to_string(),
                    "unread": unread,
                    "request": received.request,
                    "message": {
                        "id": m.id.to_string(),
                        "from": m.from.to_string(),
                        "at_ms": m.sent_at_ms,
                        "body": m.body,
                        "state": "received",
                        "detail": via_str(received.via),
                    },
                }));
                // Sent to every open page: shown, so it may be recorded and acknowledged.
                received.shown();
            }
            Update::Echo(echo) => self.echo(echo),
            Update::FileArriving(a) => self.emit(json!({
                "type": "file_arriving",
                "with": a.from.to_string(),
                "name": a.name,
                "done": a.done,
                "total": a.total,
                "stopped": a.stopped,
            })),
            Update::Sent(Ok(sent)) => {
                let target = Target::Peer(sent.to.clone());
                self.settle(&target, Some(sent.id.to_string()), &state_of(&sent));
            }
            Update::Sent(Err(failed)) => {
                let target = Target::Peer(failed.to.clone());
                let reason = with_hint(&failed.failure);
                self.settle(&target, None, &HistoryState::Failed { reason });
            }
            Update::RoomSent(Ok(sent)) => {
                let target = Target::Room(sent.room.clone());
                if let Some(at) = self.room_order.iter().position(|t| *t == target) {
                    self.room_order.remove(at);
                }
                self.settle(&target, Some(sent.id.to_string()), &room_state(&sent));
                if !sent.failed.is_empty() {
                    let text = PLAIN.room_sent(&sent);
                    self.notice(Some(&target), &text, true);
                }
            }
            Update::RoomSent(Err(failure)) => {
                if let Some(target) = self.room_order.pop_front() {
                    let reason = with_hint(&failure);
                    self.settle(&target, None, &HistoryState::Failed { reason });
                } else {
                    self.notice(None, &with_hint(&failure), true);
                }
            }
            Update::Receipt {
                from,
                delivered,
                at_ms,
            } => {
                let ids: Vec<String> = delivered.iter().map(ToString::to_string).collect();
                self.emit(json!({
                    "type": "receipt",
                    "with": from.to_string(),
                    "ids": ids,
                    "at_ms": at_ms,
                }));
            }
            Update::Whois(Ok((info, _))) => self.presence(&info),
            Update::Whois(Err(e)) => tracing::debug!("presence: {e}"),
            Update::File(file) => {
                let target = Target::Peer(file.from.clone());
                let name = (file.path.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "file".to_string());
                let number = match self.downloads.lock() {
                    Ok(mut list) => {
                        list.push(Download {
                            path: file.path.clone(),
                            name: name.clone(),
                        });
                        list.len() - 1
                    }
                    Err(_) => return,
                };
                let i = self.open(&target);
                let conv = &mut self.conversations[i];
                conv.unread += 1;
                conv.last_ms = now_ms();
                let unread = conv.unread;
                let shown = json!({
                    "from": file.from.to_string(),
                    "name": name,
                    "size": file.size,
                    "at_ms": file.sent_at_ms,
                    "url": format!("/files/{number}"),
                    "request": file.request,
                });
                self.received.push((target.clone(), shown.clone()));
                self.emit(json!({
                    "type": "file",
                    "with": target.to_string(),
                    "unread": unread,
                    "file": shown,
                }));
            }
            Update::FileProgress { done, total } => {
                if let Some((to, _)) = self.files.front() {
                    self.emit(json!({
                        "type": "file_progress",
                        "with": to.to_string(),
                        "done": done,
                        "total": total,
                    }));
                }
            }
            Update::FileSent(result) => {
                let Some((to, upload)) = self.files.pop_front() else {
                    return;
                };
                // The uploaded copy was only for sending; its folder holds nothing else.
                if let Some(dir) = upload {
                    let _ = std::fs::remove_dir_all(dir);
                }
                let (ok, text) = match result {
                    Ok(sent) => (
                        true,
                        match sent.path {
                            Some(path) => format!(
                                "file delivered to {to} ({}, direct{})",
                                indicatif::HumanBytes(sent.size),
                                path.words().map(|w| format!(", {w}")).unwrap_or_default()
                            ),
                            None => format!(
                                "file queued in {to}'s mailbox ({})",
                                indicatif::HumanBytes(sent.size)
                            ),
                        },
                    ),
                    Err(failure) => (false, format!("file not sent: {}", with_hint(&failure))),
                };
                self.emit(
                    json!({"type": "file_sent", "with": to.to_string(), "ok": ok, "text": text}),
                );
            }
            Update::Notice(text) => self.notice(None, &text, false),
            Update::Contact(Ok(c)) => {
                let text = format!("{} is {} now", c.name, c.standing.as_str());
                self.notice(None, &text, false)
            }
            Update::Trusted(Ok((name, key))) => {
                let text = format!("{name} is trusted with key {}", key.short());
                self.notice(None, &text, false)
            }
            Update::Contact(Err(e)) | Update::Trusted(Err(e)) | Update::Rooms(Err(e)) => {
                self.notice(None, &with_hint(&e), true)
            }
            Update::Room(notice) => {
                let target = Target::Room(notice.room.clone());
                self.open(&target);
                self.notice(Some(&target), &PLAIN.room_notice(&notice), false);
            }
            Update::Rooms(Ok(views)) => {
                // The answer to a command typed in the page is shown; the list asked at
                // start only fills the conversations.
                let typed = self.room_asked > 0;
                self.room_asked = self.room_asked.saturating_sub(1);
                for view in views {
                    let target = Target::Room(view.room.clone());
                    self.open(&target);
                    if typed {
                        self.notice(Some(&target), &PLAIN.room(&view), false);
                    }
                }
            }
            Update::Directory { addr, status } => {
                use crate::directory_client::Status;
                let (state, text) = match &status {
                    Status::Connecting => (
                        "connecting",
                        format!("connecting to the directory at {addr}…"),
                    ),
                    Status::Connected => {
                        ("connected", format!("connected to the directory at {addr}"))
                    }
                    Status::Unreachable(why) => (
                        "unreachable",
                        format!("directory unreachable, retrying… ({})", with_hint(why)),
                    ),
                    Status::Refused(why) => (
                        "refused",
                        format!("the directory refused us: {}", with_hint(why)),
                    ),
                };
                self.directory = json!({"state": state, "text": text});
                if status != Status::Connected {
                    for c in &mut self.conversations {
                        c.presence = Presence::Unknown;
                    }
                }
                self.emit(json!({"type": "directory", "directory": self.directory}));
            }
            Update::MailboxIdle => {}
        }
    }

    fn presence(&mut self, info: &PeerInfo) {
        let target = Target::Peer(info.name.clone());
        let Some(conv) = self.conversations.iter_mut().find(|c| c.target == target) else {
            return;
        };
        let now = if info.online {
            Presence::Online
        } else {
            Presence::Offline(info.last_seen_ms)
        };
        if conv.presence != now {
            conv.presence = now;
            let event = json!({"type": "presence", "conversation": conversation_json(conv)});
            self.emit(event);
        }
    }
}

/// Plain lines, for notices: the page styles them itself.
const PLAIN: Console = Console {
    json: false,
    colour: false,
};

fn with_hint(failure: &crate::failure::Failure) -> String {
    match failure.hint() {
        Some(hint) => format!("{failure} ({hint})"),
        None => failure.to_string(),
    }
}

fn presence_str(presence: &Presence) -> &'static str {
    match presence {
        Presence::Unknown => "unknown",
        Presence::Online => "online",
        Presence::Offline(_) => "offline",
    }
}

fn conversation_json(c: &Conversation) -> Value {
    let last_seen = match c.presence {
        Presence::Offline(at) => at,
        _ => None,
    };
    let presence = presence_str(&c.presence);
    json!({
        "with": c.target.to_string(),
        "room": matches!(c.target, Target::Room(_)),
        "unread": c.unread,
        "presence": presence,
        "last_seen_ms": last_seen,
        "last_ms": c.last_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> (Hub, broadcast::Receiver<Arc<str>>) {
        let (events, rx) = broadcast::channel(64);
        (Hub::new(events, Downloads::default()), rx)
    }

    fn bob() -> Target {
        Target::Peer(Name::new("bob").expect("name"))
    }

    fn entry(body: &str, state: HistoryState) -> HistoryEntry {
        HistoryEntry {
            id: None,
            from: Name::new("alice").expect("name"),
            to: Name::new("bob").expect("name"),
            sent_at_ms: 1,
            body: body.to_string(),
            state,
            room: None,
        }
    }

    fn events(rx: &mut broadcast::Receiver<Arc<str>>) -> Vec<Value> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect()
    }

    #[test]
    fn messages_being_sent_keep_their_cids_in_the_history() {
        let (mut hub, _rx) = hub();
        let pending = [(1, "same"), (2, "same"), (3, "other")];
        hub.pending
            .entry(bob())
            .or_default()
            .extend(pending.map(|(cid, body)| (cid, body.to_string())));
        let entries = vec![
            entry("same", HistoryState::Delivered { path: None }),
            entry("same", HistoryState::Sending),
            entry("same", HistoryState::Sending),
            entry("other", HistoryState::Sending),
        ];
        let shown = hub.with_cids(&bob(), entries);
        let cids: Vec<&Value> = shown.iter().map(|m| &m["cid"]).collect();
        assert_eq!(cids, [&json!(null), &json!(1), &json!(2), &json!(3)]);
        assert_eq!(shown[0]["state"], "delivered");
    }

    #[test]
    fn an_outcome_settles_the_oldest_message_of_its_conversation() {
        let (mut hub, mut rx) = hub();
        let queue = hub.pending.entry(bob()).or_default();
        queue.extend([(7, "a".to_string()), (8, "b".to_string())]);
        hub.settle(&bob(), Some("ab".repeat(16)), &HistoryState::Queued);
        let failed = HistoryState::Failed {
            reason: "no".to_string(),
        };
        hub.settle(&bob(), None, &failed);
        // Nothing left to settle: no event.
        hub.settle(&bob(), None, &HistoryState::Queued);
        let states: Vec<(Value, Value, Value)> = events(&mut rx)
            .into_iter()
            .filter(|e| e["type"] == "state")
            .map(|e| (e["cid"].clone(), e["state"].clone(), e["detail"].clone()))
            .collect();
        assert_eq!(
            states,
            [
                (json!(7), json!("queued"), json!(null)),
                (json!(8), json!("failed"), json!("no")),
            ]
        );
    }

    #[test]
    fn presence_is_asked_for_the_latest_conversations_only() {
        let (mut hub, _rx) = hub();
        for i in 0..(PRESENCE_WATCHED + 10) {
            let at = hub.open(&Target::Peer(Name::new(format!("p{i}")).expect("name")));
            hub.conversations[at].last_ms = i as u64;
        }
        hub.open(&"#room".parse().expect("room"));
        let watched = hub.watched();
        assert_eq!(watched.len(), PRESENCE_WATCHED);
        assert_eq!(watched[0].to_string(), format!("p{}", PRESENCE_WATCHED + 9));
    }
}
