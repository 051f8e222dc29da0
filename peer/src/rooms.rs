//! The rooms we know: each room's signed membership log ([`common::room`]), checked op by op
//! as it comes from the directory and kept in `HOME/rooms/`, so that a directory cannot add
//! or remove a member unnoticed, nor take a room back to an older version we saw.
//!
//! Who is in a room decides both directions of a room message: we send our copies to the
//! members of our checked roster and to no one else, and we show a room message only from a
//! sender that roster has with the key that proved it sent it. The roster follows the log:
//! a running peer gets each new op pushed by the directory ([`Rooms::pushed`]), and anything
//! else (a short command, a push that skipped ahead, a sender we do not know as a member yet)
//! asks for the ops after the last one we checked ([`Rooms::sync`]).

use crate::{
    contacts::Contacts,
    directory_client::{DirectoryClient, DirectoryError},
    failure::Failure,
    inbox::{Inbox, RoomEvent, RoomNotice},
    letters::Letters,
};
use common::{
    admit::{self, Buckets},
    defaults::{MAX_ROOM_OPS, ROOM_LOG_PAGE, ROOM_POSTS_TAKEN_BURST, ROOM_POSTS_TAKEN_PER_SECOND},
    identity::write_atomically,
    room::{Action, Change, Kind, Op, RoomError, RoomName, Roster},
    wire::{DirectoryRequest, DirectoryResponse, ErrorCode},
    KeyId, Name,
};
use std::{collections::HashMap, path::PathBuf, sync::Arc};
use tokio::sync::Mutex;
use tracing::{debug, warn};

/// How often one sender's room messages may send us asking the directory for a room's log
/// (a message from someone our roster does not have, or sent by a newer log than ours), a
/// minute and in a burst; and how often all senders' may. Past that, a message is judged by
/// the roster we have: whoever sends room messages cannot make us spend the directory's
/// patience (our lookups share its rate limit) or hold the rooms up.
const ASKS_PER_SENDER: (u32, u32) = (6, 3);
/// See [`ASKS_PER_SENDER`].
const ASKS_IN_ALL: (u32, u32) = (120, 20);
/// Most ops a room's log may have: the directory refuses joins and invitations past
/// [`MAX_ROOM_OPS`], and each member can leave or be removed once after that.
const MAX_LOG: u64 = MAX_ROOM_OPS + common::room::MAX_MEMBERS as u64;
/// Most senders we remember telling the user about (posting too fast), each once.
const CUT_MAX: usize = 1024;

/// The folder in the peer's home that holds the logs, one file per room.
pub const DIR: &str = "rooms";

/// A room's log as we checked it, and the roster it replays to.
struct Chain {
    ops: Vec<Op>,
    roster: Roster,
}

/// The rooms we know; cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    me: Name,
    dir: PathBuf,
    directory: DirectoryClient,
    letters: Letters,
    contacts: Contacts,
    /// Where each change is shown once it is checked and kept: each op's notice once, in
    /// the order of the room's log, before any message that needed the op to be shown.
    inbox: Inbox,
    /// What room messages may make us ask the directory (see [`ASKS_PER_SENDER`]).
    asks: Buckets<Name>,
    asks_in_all: Buckets<()>,
    /// What each sender may post in each room, as we take it ([`ROOM_POSTS_TAKEN_PER_SECOND`]).
    taken: Buckets<(RoomName, Name)>,
    /// Senders we told the user we cut, so each is told once.
    cut: std::sync::Mutex<std::collections::HashSet<(RoomName, Name)>>,
    /// One lock for all rooms, held across a sync: ops are rare, and a sync must not race
    /// another that appends the same ops.
    chains: Mutex<HashMap<RoomName, Chain>>,
}

impl Rooms {
    /// The rooms kept in `home/rooms/`: each log is replayed and checked again; one that does
    /// not check is left out (and logged), and will be fetched whole when next needed.
    pub fn load(
        home: &std::path::Path,
        me: Name,
        directory: DirectoryClient,
        letters: Letters,
        contacts: Contacts,
        inbox: Inbox,
    ) -> anyhow::Result<Self> {
        let dir = home.join(DIR);
        std::fs::create_dir_all(&dir)?;
        let mut chains = HashMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "ops") {
                continue;
            }
            let replayed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    postcard::from_bytes::<Vec<Op>>(&bytes).map_err(|e| e.to_string())
                })
                .and_then(|ops| {
                    let roster = Roster::replay(&ops).map_err(|e| e.to_string())?;
                    Ok(Chain { ops, roster })
                });
            match replayed {
                Ok(chain) => {
                    chains.insert(chain.roster.room.clone(), chain);
                }
                Err(e) => warn!(path = %path.display(), cause = %e, "a room's log was left out"),
            }
        }
        contacts.set_room_keys(member_keys(&me, &chains));
        Ok(Self {
            inner: Arc::new(Inner {
                me,
                dir,
                directory,
                letters,
                contacts,
                inbox,
                asks: Buckets::new(admit::per_minute(ASKS_PER_SENDER.0, ASKS_PER_SENDER.1)),
                asks_in_all: Buckets::new(admit::per_minute(ASKS_IN_ALL.0, ASKS_IN_ALL.1)),
                taken: Buckets::new(admit::per_second(
                    ROOM_POSTS_TAKEN_PER_SECOND,
                    ROOM_POSTS_TAKEN_BURST,
                )),
                cut: Default::default(),
                chains: Mutex::new(chains),
            }),
        })
    }

    /// The roster of `room` as we last checked it, without asking the directory.
    pub async fn roster(&self, room: &RoomName) -> Option<Roster> {
        let chains = self.inner.chains.lock().await;
        chains.get(room).map(|c| c.roster.clone())
    }

    /// The rooms we are a member of, as we last checked them.
    pub async fn ours(&self) -> Vec<Roster> {
        let chains = self.inner.chains.lock().await;
        chains
            .values()
            .filter(|c| c.roster.members.contains_key(&self.inner.me))
            .map(|c| c.roster.clone())
            .collect()
    }

    /// Brings `room` up to date with the directory's log: every op after the last one we
    /// checked is checked, kept, and told as a notice. Returns the roster.
    pub async fn sync(&self, room: &RoomName) -> Result<Roster, Failure> {
        let mut chains = self.inner.chains.lock().await;
        self.sync_locked(&mut chains, room, true).await?;
        let roster = chains.get(room).map(|c| c.roster.clone());
        roster.ok_or(Failure::UnknownRoom { room: room.clone() })
    }

    /// The sync behind [`Rooms::sync`]. A room we did not know and are not a member of is
    /// kept (in memory only) when `foreign` (the user asked about it, or is joining it), and
    /// otherwise forgotten: a message naming a room must not make us hold its log.
    async fn sync_locked(
        &self,
        chains: &mut HashMap<RoomName, Chain>,
        room: &RoomName,
        foreign: bool,
    ) -> Result<(), Failure> {
        let mut notices = Vec::new();
        let fetched = self
            .fetch(chains.get(room).map(|c| c.roster.version), room)
            .await?;
        let mut fetched = fetched.into_iter();
        let known = chains.contains_key(room);
        let mut chain = match chains.remove(room) {
            Some(chain) => chain,
            None => {
                let Some(first) = fetched.next() else {
                    return Ok(());
                };
                self.check_pins(&first)?;
                let roster = Roster::create(&first).map_err(|e| refused(room, e))?;
                notices.push(notice(&first, Change::Created(first.actor.clone())));
                Chain {
                    ops: vec![first],
                    roster,
                }
            }
        };
        let mut broken = None;
        for op in fetched {
            match self.check(&mut chain.roster, &op) {
                Ok(change) => {
                    notices.push(notice(&op, change));
                    chain.ops.push(op);
                }
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        let ours = chain.roster.members.contains_key(&self.inner.me);
        if !known && !ours && !foreign {
            return broken.map_or(Ok(()), Err);
        }
        let kept = self.keep(&chain);
        chains.insert(room.clone(), chain);
        self.open_to_members(chains);
        kept?;
        if known || ours {
            self.tell(notices).await;
        }
        // What checked is kept; the rest is refused, loudly: the directory's log does not
        // follow the one we saw.
        broken.map_or(Ok(()), Err)
    }

    /// The ops of `room` after version `after` (all of them for `None`), page by page. The
    /// directory must give them in order with no gap, and no more than a log may hold.
    async fn fetch(&self, after: Option<u64>, room: &RoomName) -> Result<Vec<Op>, Failure> {
        let mut fetched: Vec<Op> = Vec::new();
        let mut next = after.map_or(0, |v| v + 1);
        loop {
            let after = next.checked_sub(1);
            let request = DirectoryRequest::RoomLog {
                room: room.clone(),
                after,
            };
            let page = match self.inner.directory.request(&request).await {
                Ok(DirectoryResponse::RoomOps(ops)) => ops,
                Ok(other) => return Err(Failure::other(format!("unexpected answer {other:?}"))),
                Err(e) => return Err(self.failure(room, e)),
            };
            let full = page.len() >= ROOM_LOG_PAGE;
            for op in page {
                if op.version != next || op.room != *room || next >= MAX_LOG {
                    return Err(refused(room, RoomError::OutOfOrder));
                }
                next += 1;
                fetched.push(op);
            }
            if !full {
                return Ok(fetched);
            }
        }
    }

    /// Lets the members of the rooms we are in reach us directly (see
    /// [`Contacts::set_room_keys`]).
    fn open_to_members(&self, chains: &HashMap<RoomName, Chain>) {
        let keys = member_keys(&self.inner.me, chains);
        self.inner.contacts.set_room_keys(keys);
    }

    async fn tell(&self, notices: Vec<RoomNotice>) {
        for notice in notices {
            self.inner.inbox.room(notice).await;
        }
    }

    /// Checks `op` against `roster` and our pins, and applies it.
    fn check(&self, roster: &mut Roster, op: &Op) -> Result<Change, Failure> {
        self.check_pins(op)?;
        roster.apply(op).map_err(|e| refused(&op.room, e))
    }

    /// An op signed in a name whose key we remember must be signed by that key, and an
    /// invitation must name that key: else the log was made up by someone who has neither
    /// (the directory, say, making a room of its own in our contacts' names).
    fn check_pins(&self, op: &Op) -> Result<(), Failure> {
        let contacts = &self.inner.contacts;
        let mut claims = vec![(&op.actor, op.actor_id())];
        if let Action::Invite { name, key } = &op.action {
            claims.push((name, *key));
        }
        for (name, key) in claims {
            match contacts.pinned(name) {
                Some(pinned) if pinned != key => {
                    return Err(Failure::RoomRefused {
                        room: op.room.clone(),
                        why: format!(
                            "its log gives {name} the key {key}, not the one remembered for \
                             {name} ({pinned}); it was refused"
                        ),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes a change to `room` as us: signs the op that follows the log as we have it, and
    /// has the directory append it. If someone else's op took that place first, we catch up
    /// and try again (a few times).
    pub async fn act(&self, room: &RoomName, action: Action) -> Result<Roster, Failure> {
        let mut chains = self.inner.chains.lock().await;
        let creating = matches!(action, Action::Create { .. });
        let me = &self.inner.me;
        for _ in 0..4 {
            if !creating {
                self.sync_locked(&mut chains, room, true).await?;
            }
            if let Some(roster) = chains.get(room).map(|c| &c.roster) {
                let member = roster.members.contains_key(me);
                match &action {
                    Action::Join if member => return Ok(roster.clone()),
                    Action::Join if roster.kind == Kind::Private => {
                        return Err(Failure::RoomRefused {
                            room: room.clone(),
                            why: "it is private: an admin must invite you".into(),
                        })
                    }
                    Action::Invite { .. } | Action::Kick { .. } | Action::Leave if !member => {
                        return Err(Failure::NotAMember { room: room.clone() })
                    }
                    _ => {}
                }
            }
            let place = match (chains.get(room), creating) {
                (Some(chain), false) => (chain.roster.version + 1, chain.roster.head),
                (None, true) => (0, [0; 32]),
                (Some(_), true) => return Err(Failure::RoomTaken { room: room.clone() }),
                (None, false) => return Err(Failure::UnknownRoom { room: room.clone() }),
            };
            let op = self.inner.letters.sign_op(
                room.clone(),
                place,
                self.inner.me.clone(),
                action.clone(),
            );
            // Check it as members will before the directory does: a refusal here says why.
            let (roster, change) = match chains.get(room) {
                Some(chain) => {
                    let mut next = chain.roster.clone();
                    let change = self.check(&mut next, &op)?;
                    (next, change)
                }
                None => {
                    let roster = Roster::create(&op).map_err(|e| refused(room, e))?;
                    (roster, Change::Created(op.actor.clone()))
                }
            };
            let request = DirectoryRequest::RoomOp { op: op.clone() };
            match self.inner.directory.request(&request).await {
                Ok(_) => {
                    let told = notice(&op, change);
                    let chain = match chains.remove(room) {
                        Some(mut chain) => {
                            chain.ops.push(op);
                            chain.roster = roster.clone();
                            chain
                        }
                        None => Chain {
                            ops: vec![op],
                            roster: roster.clone(),
                        },
                    };
                    let kept = self.keep(&chain);
                    chains.insert(room.clone(), chain);
                    self.open_to_members(&chains);
                    kept?;
                    self.tell(vec![told]).await;
                    return Ok(roster);
                }
                // Another op took the place: catch up and try again.
                Err(DirectoryError::Refused(ErrorCode::RoomRefused)) if !creating => continue,
                Err(e) => return Err(self.failure(room, e)),
            }
        }
        Err(Failure::RoomRefused {
            room: room.clone(),
            why: "the room changed too often under us; try again".into(),
        })
    }

    /// Takes an op the directory pushed: the next one of a room we know is checked and kept;
    /// one further ahead (we missed some), or an invitation into a room we do not know yet,
    /// has us fetch the log.
    pub async fn pushed(&self, op: Op) {
        let room = op.room.clone();
        let mut chains = self.inner.chains.lock().await;
        let next = match chains.get(&room) {
            Some(chain) if op.version <= chain.roster.version => return,
            Some(chain) => op.version == chain.roster.version + 1,
            None => false,
        };
        if next {
            if let Some(chain) = chains.get_mut(&room) {
                let mut roster = chain.roster.clone();
                match self.check(&mut roster, &op) {
                    Ok(change) => {
                        let notice = notice(&op, change);
                        chain.roster = roster;
                        chain.ops.push(op);
                        if let Err(e) = self.keep(chain) {
                            warn!(%room, "{e}");
                        }
                        self.open_to_members(&chains);
                        return self.tell(vec![notice]).await;
                    }
                    Err(e) => {
                        return warn!(%room, "the directory pushed an op that does not check: {e}");
                    }
                }
            }
        }
        if let Err(e) = self.sync_locked(&mut chains, &room, false).await {
            warn!(%room, "{e}");
        }
    }

    /// Shows that `name` came online or went offline in `room`, if it is a member there and
    /// so are we (the directory tells presence; it cannot add a member by it).
    pub async fn presence(&self, room: &RoomName, name: &Name, online: bool) {
        let shared = {
            let chains = self.inner.chains.lock().await;
            chains.get(room).is_some_and(|c| {
                c.roster.members.contains_key(name) && c.roster.members.contains_key(&self.inner.me)
            })
        };
        if shared {
            let event = match online {
                true => RoomEvent::Online(name.clone()),
                false => RoomEvent::Offline(name.clone()),
            };
            let notice = RoomNotice {
                room: room.clone(),
                event,
                at_ms: common::now_ms(),
            };
            self.tell(vec![notice]).await;
        }
    }

    /// Whether `name`, proven to hold `key`, may post in `room`, in a message it sent by the
    /// room's log at `version`: it is a member by our roster, and so are we (what is said
    /// after we left is not for us). When our roster is behind the sender's, or does not have
    /// the sender (it may have joined since, or invited us while we were away), we catch up
    /// first, within what room messages may make us ask the directory ([`ASKS_PER_SENDER`]).
    pub async fn admits(&self, room: &RoomName, name: &Name, key: &KeyId, version: u64) -> bool {
        if !self.within_rate(room, name).await {
            return false;
        }
        let mut chains = self.inner.chains.lock().await;
        let me = &self.inner.me;
        let judged = |chains: &HashMap<RoomName, Chain>| {
            chains.get(room).map(|c| {
                let member = c.roster.has(name, key) && c.roster.members.contains_key(me);
                (member, c.roster.version >= version)
            })
        };
        let (member, current) = judged(&chains).unwrap_or((false, false));
        if current || !self.inner.asks.check(name) || !self.inner.asks_in_all.check(&()) {
            return member;
        }
        if let Err(e) = self.sync_locked(&mut chains, room, false).await {
            debug!(%room, "{e}");
        }
        judged(&chains).is_some_and(|(member, _)| member)
    }

    /// Whether `name` posts within what a member may post in `room`; past that, what it
    /// posts is dropped, and the user told once.
    async fn within_rate(&self, room: &RoomName, name: &Name) -> bool {
        let key = (room.clone(), name.clone());
        if self.inner.taken.check(&key) {
            return true;
        }
        let first = {
            let mut cut = self.inner.cut.lock().unwrap_or_else(|e| e.into_inner());
            if cut.len() >= CUT_MAX {
                cut.clear();
            }
            cut.insert(key)
        };
        if first {
            let text = format!(
                "{name} posts faster in {room} than a member may \
                 ({ROOM_POSTS_TAKEN_PER_SECOND} messages a second): what is over is dropped"
            );
            self.inner.inbox.notice(text).await;
        }
        false
    }

    /// Writes a room's log to its file: one we are in, or were in (to remember we are out).
    fn keep(&self, chain: &Chain) -> Result<(), Failure> {
        let path = self
            .inner
            .dir
            .join(format!("{}.ops", chain.roster.room.name()));
        if !chain.roster.members.contains_key(&self.inner.me) && !path.exists() {
            return Ok(());
        }
        let bytes = postcard::to_allocvec(&chain.ops).map_err(Failure::other)?;
        write_atomically(&path, &bytes).map_err(Failure::other)
    }

    fn failure(&self, room: &RoomName, e: DirectoryError) -> Failure {
        match e {
            DirectoryError::Refused(ErrorCode::UnknownRoom) => {
                Failure::UnknownRoom { room: room.clone() }
            }
            DirectoryError::Refused(ErrorCode::RoomTaken) => {
                Failure::RoomTaken { room: room.clone() }
            }
            DirectoryError::Refused(ErrorCode::RoomFull) => {
                Failure::RoomFull { room: room.clone() }
            }
            DirectoryError::Refused(ErrorCode::RoomRefused) => Failure::RoomRefused {
                room: room.clone(),
                why: "the directory refused the change".into(),
            },
            e => e.failure(&self.inner.me, self.inner.directory.addr()),
        }
    }
}

/// The keys of the other members of the rooms `me` is in.
fn member_keys(me: &Name, chains: &HashMap<RoomName, Chain>) -> Vec<KeyId> {
    (chains.values())
        .filter(|c| c.roster.members.contains_key(me))
        .flat_map(|c| c.roster.members.iter())
        .filter(|(name, _)| *name != me)
        .map(|(_, member)| member.key)
        .collect()
}

fn notice(op: &Op, change: Change) -> RoomNotice {
    RoomNotice {
        room: op.room.clone(),
        event: RoomEvent::Changed(change),
        at_ms: op.at_ms,
    }
}

fn refused(room: &RoomName, e: RoomError) -> Failure {
    match e {
        RoomError::Full => Failure::RoomFull { room: room.clone() },
        e => Failure::RoomRefused {
            room: room.clone(),
            why: e.to_string(),
        },
    }
}

/// A `peer room …` command.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RoomCommand {
    /// Make a room, with us as its admin.
    Create {
        /// The room.
        room: RoomName,
        /// Anyone may join; else only whom an admin invites.
        public: bool,
    },
    /// Add these peers to the room (an admin).
    Invite {
        /// The room.
        room: RoomName,
        /// Whom.
        names: Vec<Name>,
    },
    /// Join a public room (in a private one, an invitation made us a member already).
    Join {
        /// The room.
        room: RoomName,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: RoomName,
    },
    /// Remove a member (an admin).
    Kick {
        /// The room.
        room: RoomName,
        /// Whom.
        name: Name,
    },
    /// Who is in the room, and who of them is online.
    Members {
        /// The room.
        room: RoomName,
    },
    /// The rooms we are in.
    List,
}

/// A room as a command shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomView {
    /// The room.
    pub room: RoomName,
    /// Public or private.
    pub kind: common::room::Kind,
    /// Its members, by name.
    pub members: Vec<MemberView>,
}

/// One member of a room, as a command shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberView {
    /// The name.
    pub name: Name,
    /// Admin or member.
    pub role: common::room::Role,
    /// Online now, when the directory was asked (`peer room members`).
    pub online: Option<bool>,
}

impl RoomView {
    /// The room `roster` describes, with no presence.
    pub fn of(roster: &Roster) -> Self {
        Self {
            room: roster.room.clone(),
            kind: roster.kind,
            members: (roster.members.iter())
                .map(|(name, member)| MemberView {
                    name: name.clone(),
                    role: member.role,
                    online: None,
                })
                .collect(),
        }
    }
}

/// The outcome of a message to a room: how many members have it, and how many will get it
/// from the mailbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomSent {
    /// The message's id, the same in every member's copy.
    pub id: common::wire::MessageId,
    /// The room.
    pub room: RoomName,
    /// Members that acknowledged it directly.
    pub delivered: u32,
    /// Members whose mailbox holds it.
    pub queued: u32,
    /// Members it could not be sent to, and why.
    pub failed: Vec<(Name, Failure)>,
}

impl RoomSent {
    /// The other members it was for.
    pub fn members(&self) -> u32 {
        self.delivered + self.queued + self.failed.len() as u32
    }
}
