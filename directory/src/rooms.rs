//! Rooms at the directory: each room's signed membership log ([`common::room`]), checked as a
//! member checks it before it is stored, kept in the store, handed out a page at a time, and
//! pushed to the room's online members as it grows.
//!
//! The directory checks ops only to keep junk out of its store and its members' event streams;
//! members check every op themselves, so a directory that skipped the checks, or forged an op,
//! would be caught by them (see [`common::room`]). It never sees what is said in a room: room
//! messages go peer to peer, or through the mailbox sealed like any other letter.

use crate::{registry::Registry, store::Store};
use common::{
    defaults::{MAX_ROOM_OPS, ROOM_LOG_PAGE},
    room::{Action, Kind, Op, RoomError, RoomName, Roster},
    wire::{DirectoryEvent, ErrorCode},
    KeyId, Name,
};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};
use tokio::sync::Mutex;
use tracing::{debug, warn};

/// The rooms' rosters, replayed from their logs when first asked for. One lock for all: ops
/// are rare (joins, leaves, invites), and an append must check and store in one step so two
/// ops cannot take the same place.
#[derive(Default)]
pub struct Rooms {
    rosters: Mutex<HashMap<RoomName, Known>>,
    /// The rooms each name is a member of, of those in `rosters`: whom to tell when it comes
    /// online or goes offline.
    member_of: std::sync::Mutex<HashMap<Name, HashSet<RoomName>>>,
}

/// A room as the directory keeps it in memory.
#[derive(Clone)]
struct Known {
    roster: Roster,
    /// Who left or was removed, and the version of that op: a former member of a private
    /// room may read its log up to there, to learn it is out (it may have been away when it
    /// happened), and no further.
    removed: HashMap<Name, u64>,
}

impl Known {
    fn new(roster: Roster) -> Self {
        Self {
            roster,
            removed: HashMap::new(),
        }
    }

    /// Notes who `op` removes, or brings back.
    fn note(&mut self, op: &Op) {
        match &op.action {
            Action::Leave => {
                self.removed.insert(op.actor.clone(), op.version);
            }
            Action::Kick { name } => {
                self.removed.insert(name.clone(), op.version);
            }
            Action::Join => {
                self.removed.remove(&op.actor);
            }
            Action::Invite { name, .. } => {
                self.removed.remove(name);
            }
            Action::Create { .. } => {}
        }
    }
}

/// What the rooms use of the directory: its store, and who is online (to push ops to).
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    /// The durable logs.
    pub store: &'a Arc<dyn Store>,
    /// Who is online.
    pub registry: &'a Registry,
}

/// Who asks: the registered name and the key it proved.
#[derive(Clone, Copy, Debug)]
pub struct Asker<'a> {
    /// The name.
    pub name: &'a Name,
    /// The key.
    pub key: KeyId,
}

impl Rooms {
    /// Checks `op` from `asker` against its room's log, stores it, and pushes it to the room's
    /// online members (and to whom it removes).
    pub async fn append(
        &self,
        shared: Parts<'_>,
        asker: Asker<'_>,
        op: Op,
    ) -> Result<(), ErrorCode> {
        if op.actor != *asker.name || op.actor_id() != asker.key {
            return Err(ErrorCode::NotSender);
        }
        let mut rosters = self.rosters.lock().await;
        let known = self.roster(shared, &mut rosters, &op.room).await?;
        let (next, told) = match (known, &op.action) {
            (Some(_), Action::Create { .. }) => return Err(ErrorCode::RoomTaken),
            (None, Action::Create { .. }) => {
                op.room.name().check_new().map_err(|_| ErrorCode::BadName)?;
                let roster = Roster::create(&op).map_err(refused)?;
                (Known::new(roster), Vec::new())
            }
            (None, _) => return Err(ErrorCode::UnknownRoom),
            (Some(known), action) => {
                // A full log still lets members leave and admins remove them (at most once
                // each, so the log stays bounded): a member can always be taken out.
                let leaving = matches!(action, Action::Leave | Action::Kick { .. });
                if known.roster.version + 1 >= MAX_ROOM_OPS && !leaving {
                    return Err(ErrorCode::RoomFull);
                }
                let mut next = known.clone();
                next.roster.apply(&op).map_err(refused)?;
                (next, removed_by(&op))
            }
        };
        let store = shared.store.clone();
        let stored = op.clone();
        let appended = tokio::task::spawn_blocking(move || store.append_room_op(&stored)).await;
        match appended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The op may have been stored after all (a cluster's write that timed out), or
                // another node's took its place: read the room again when next asked.
                rosters.remove(&op.room);
                warn!(cause = %e, room = %op.room, "storing a room op failed");
                return Err(ErrorCode::Internal);
            }
            Err(e) => {
                warn!(cause = %e, "the room op's store task failed");
                return Err(ErrorCode::Internal);
            }
        }
        debug!(room = %op.room, version = op.version, "room op stored");
        self.took(shared, &mut rosters, next, &told, op);
        Ok(())
    }

    /// Notes `op`, which `known` took in, and pushes it to the members online here (and to
    /// `told`, whom it removes).
    fn took(
        &self,
        shared: Parts<'_>,
        rosters: &mut HashMap<RoomName, Known>,
        mut known: Known,
        told: &[Name],
        op: Op,
    ) {
        known.note(&op);
        self.index(&op.room, &known.roster, told);
        for name in known.roster.members.keys().chain(told) {
            if let Some(online) = shared.registry.get(name) {
                // A full queue means the member is not reading its events; it reads the log.
                let _ = online
                    .events
                    .try_send(Box::new(DirectoryEvent::RoomOp(op.clone())));
            }
        }
        rosters.insert(op.room.clone(), known);
    }

    /// Forgets every room read so far: each is read again from the store when next asked for
    /// (a node of a cluster that missed ops made elsewhere).
    pub async fn forget(&self) {
        self.rosters.lock().await.clear();
    }

    /// Takes in `op`, stored by another node of the cluster (which checked it), and pushes it
    /// to the members online here. A room this node has not read, or has read only up to an
    /// older version, is read again from the store when next asked for.
    pub async fn applied(&self, shared: Parts<'_>, op: Op) {
        let mut rosters = self.rosters.lock().await;
        let mut next = match rosters.get(&op.room) {
            Some(known) => known.clone(),
            None if matches!(op.action, Action::Create { .. }) => match Roster::create(&op) {
                Ok(roster) => {
                    let known = Known::new(roster);
                    self.took(shared, &mut rosters, known, &[], op);
                    return;
                }
                Err(_) => return,
            },
            None => return,
        };
        if next.roster.apply(&op).is_err() {
            rosters.remove(&op.room);
            return;
        }
        self.took(shared, &mut rosters, next, &removed_by(&op), op);
    }

    /// Tells the online members of the rooms `name` is in that it came online or went
    /// offline (of the rooms this directory has read since it started: every member reads its
    /// rooms' logs when it connects).
    pub async fn presence(&self, shared: Parts<'_>, name: &Name, online: bool) {
        let rooms: Vec<RoomName> = {
            let member_of = self.member_of.lock().unwrap_or_else(|e| e.into_inner());
            member_of.get(name).into_iter().flatten().cloned().collect()
        };
        if rooms.is_empty() {
            return;
        }
        let rosters = self.rosters.lock().await;
        for room in rooms {
            let Some(known) = rosters.get(&room) else {
                continue;
            };
            for member in known.roster.members.keys().filter(|m| *m != name) {
                if let Some(peer) = shared.registry.get(member) {
                    let event = DirectoryEvent::RoomPresence {
                        room: room.clone(),
                        name: name.clone(),
                        online,
                    };
                    // Presence is a courtesy: a member whose queue is full misses it.
                    let _ = peer.events.try_send(Box::new(event));
                }
            }
        }
    }

    /// The roster of `room`, from the cache or replayed from the store; `None` if it has no log.
    async fn roster<'a>(
        &self,
        shared: Parts<'_>,
        rosters: &'a mut HashMap<RoomName, Known>,
        room: &RoomName,
    ) -> Result<Option<&'a Known>, ErrorCode> {
        if !rosters.contains_key(room) {
            let (store, name) = (shared.store.clone(), room.clone());
            let read = move || store.room_ops(&name, None, MAX_ROOM_OPS as usize);
            let ops = match tokio::task::spawn_blocking(read).await {
                Ok(Ok(ops)) => ops,
                _ => return Err(ErrorCode::Internal),
            };
            if ops.is_empty() {
                return Ok(None);
            }
            let roster = Roster::replay(&ops).map_err(|e| {
                warn!(cause = %e, %room, "a room's stored log does not replay");
                ErrorCode::Internal
            })?;
            let mut known = Known::new(roster);
            ops.iter().for_each(|op| known.note(op));
            self.index(room, &known.roster, &[]);
            rosters.insert(room.clone(), known);
        }
        Ok(rosters.get(room))
    }

    /// Notes who is in `room` now, and that `gone` are not.
    fn index(&self, room: &RoomName, roster: &Roster, gone: &[Name]) {
        let mut member_of = self.member_of.lock().unwrap_or_else(|e| e.into_inner());
        for name in gone {
            if let Some(rooms) = member_of.get_mut(name) {
                rooms.remove(room);
                if rooms.is_empty() {
                    member_of.remove(name);
                }
            }
        }
        for name in roster.members.keys() {
            member_of
                .entry(name.clone())
                .or_default()
                .insert(room.clone());
        }
    }

    /// The ops of `room` after `after`, a page at a time. A private room's log is only for its
    /// members, and for former members up to the op that removed them; to anyone else the
    /// room does not exist.
    pub async fn log(
        &self,
        shared: Parts<'_>,
        asker: Asker<'_>,
        room: &RoomName,
        after: Option<u64>,
    ) -> Result<Vec<Op>, ErrorCode> {
        let until = {
            let mut rosters = self.rosters.lock().await;
            let known =
                (self.roster(shared, &mut rosters, room).await?).ok_or(ErrorCode::UnknownRoom)?;
            match known.removed.get(asker.name) {
                _ if known.roster.kind == Kind::Public => None,
                _ if known.roster.has(asker.name, &asker.key) => None,
                Some(version) => Some(*version),
                None => return Err(ErrorCode::UnknownRoom),
            }
        };
        let (store, room) = (shared.store.clone(), room.clone());
        let read = move || store.room_ops(&room, after, ROOM_LOG_PAGE);
        match tokio::task::spawn_blocking(read).await {
            Ok(Ok(mut ops)) => {
                ops.retain(|op| until.is_none_or(|until| op.version <= until));
                Ok(ops)
            }
            _ => Err(ErrorCode::Internal),
        }
    }
}

/// Who `op` takes out of its room: they hear of it too.
fn removed_by(op: &Op) -> Vec<Name> {
    match &op.action {
        Action::Leave => vec![op.actor.clone()],
        Action::Kick { name } => vec![name.clone()],
        _ => Vec::new(),
    }
}

fn refused(e: RoomError) -> ErrorCode {
    match e {
        RoomError::Full => ErrorCode::RoomFull,
        _ => ErrorCode::RoomRefused,
    }
}
