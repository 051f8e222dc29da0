//! What the nodes of a cluster tell each other at once, over core NATS. Durable state (names,
//! mailboxes, room logs) goes through the store's log instead ([`crate::store::jetstream`]);
//! this is about who is online where, which lives only in each node's [`Registry`].
//!
//! # Subjects
//!
//! * `directory.peer.<name in hex>`: the node holding the peer's connection subscribes while
//!   the peer is online there, and answers what other nodes [`Ask`] about it: a lookup (its
//!   key and, if the asker may see them, its addresses) and an introduction (passed to the
//!   peer as if the asker were connected here). No answer means the peer is online nowhere.
//!   When a peer comes online, its node first tells the others to close any older connection
//!   of it they still hold ([`Ask::Evict`]): a peer is online on one node at a time.
//! * `directory.presence`: a peer came online or went offline; every node tells the members
//!   of that peer's rooms connected to it.
//!
//! Names are hex in subjects: `.` separates a subject's tokens. The messages are
//! directory-to-directory only, so their types live here rather than in `common`; they are
//! postcard, and a node drops what does not decode.

use crate::{
    rates::Allowances,
    registry::{Link, Online, Registry},
    rooms::{Parts, Rooms},
    store::jetstream::Applied,
};
use common::{
    now_ms,
    wire::{codes, DirectoryEvent, ErrorCode},
    KeyId, Name,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a node waits for another to answer about a peer online there. On a LAN, answers
/// take a millisecond; a node that does not answer in this time is treated as gone.
const ASK_TIMEOUT: Duration = Duration::from_millis(1500);

const PRESENCE: &str = "directory.presence";

/// Why a node closes a peer's connection once the peer is online on another node.
const MOVED: &[u8] = b"online on another node";

/// A question about a peer, to the node where it is online.
#[derive(Debug, Serialize, Deserialize)]
enum Ask {
    /// What may the key `asker` know of it?
    Lookup { asker: KeyId },
    /// Pass it `event` (an introduction) from `asker`, if it lets `asker` reach it.
    Introduce {
        asker: KeyId,
        event: Box<DirectoryEvent>,
    },
    /// It came online on node `node`: close its connection here, if any.
    Evict { node: String },
}

/// What a node answers about a peer online there.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Online(Remote),
    Introduced,
    Refused(ErrorCode),
    /// It has just left this node, last seen at `at_ms` (`open`: letting anyone reach it); the
    /// node answers so until it has told the cluster ([`Cluster::presence`]).
    Left {
        open: bool,
        at_ms: u64,
    },
}

/// Where a lookup found a peer in the rest of the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Online on another node, as the asker may see it.
    Online(Remote),
    /// It has just left another node, last seen at `at_ms` (`open`: letting anyone reach it).
    Left { open: bool, at_ms: u64 },
    /// Online on no other node.
    Nowhere,
}

/// A peer online on some node, as a given asker may see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Remote {
    /// Its key, as proven in its handshake.
    pub key: KeyId,
    /// Where its packets come from and where it listens, if the asker may see them.
    pub addrs: Option<(SocketAddr, Vec<SocketAddr>)>,
}

impl Remote {
    /// `online` as the key `asker` may see it.
    pub fn of(online: &Online, asker: &KeyId) -> Self {
        Self {
            key: online.key,
            addrs: online
                .reaches(asker)
                .then(|| (online.link.remote_address(), online.listen_addrs.clone())),
        }
    }
}

/// A peer came online or went offline, somewhere in the cluster.
#[derive(Debug, Serialize, Deserialize)]
struct Presence {
    node: String,
    name: Name,
    online: bool,
    /// Going offline, whether it let anyone reach it: its exact last-seen time stays public
    /// on every node, as on the node it left ([`Registry::was_open`]).
    open: bool,
    /// Going offline, its last-seen time, which other nodes' replicas of the store may not
    /// hold yet when this arrives ([`Registry::left_at`]).
    at_ms: u64,
}

/// What makes a node part of a cluster: its link to the others, and the changes its store
/// applies ([`crate::store::JetStreamStore::changes`]).
#[derive(Debug)]
pub struct Membership {
    /// The link to the other nodes.
    pub cluster: Cluster,
    /// The changes its store applies.
    pub changes: broadcast::Receiver<Applied>,
}

/// This node's link to the other nodes.
#[derive(Clone, Debug)]
pub struct Cluster {
    client: async_nats::Client,
    node: String,
}

fn subject(name: &Name) -> String {
    format!("directory.peer.{}", hex::encode(name.as_str()))
}

impl Cluster {
    /// Connects to the NATS servers `servers` (`nats://host:port` each) as node `node`. The
    /// nodes tell each other apart by an id of this run (`node` and a random part): a node
    /// started on a copy of another's data folder is still another node.
    pub async fn connect(servers: &[String], node: &str) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("directory node {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(servers)
            .await?;
        Ok(Self {
            client,
            node: format!("{node}-{:016x}", rand::random::<u64>()),
        })
    }

    async fn ask(&self, name: &Name, ask: &Ask) -> Option<Answer> {
        let payload = postcard::to_allocvec(ask).ok()?;
        let request = self.client.request(subject(name), payload.into());
        match tokio::time::timeout(ASK_TIMEOUT, request).await {
            Ok(Ok(reply)) => postcard::from_bytes(&reply.payload).ok(),
            // "No responders": online on no node.
            Ok(Err(e)) => {
                debug!(%name, cause = %e, "no node answers for this peer");
                None
            }
            Err(_) => {
                warn!(%name, "the node holding this peer did not answer in time");
                None
            }
        }
    }

    /// `name` as `asker` may see it, if it is online on another node.
    pub async fn lookup(&self, name: &Name, asker: KeyId) -> Found {
        match self.ask(name, &Ask::Lookup { asker }).await {
            Some(Answer::Online(remote)) => Found::Online(remote),
            Some(Answer::Left { open, at_ms }) => Found::Left { open, at_ms },
            _ => Found::Nowhere,
        }
    }

    /// Passes `event` to `name` on the node where it is online, if it lets `asker` reach it.
    pub async fn introduce(
        &self,
        name: &Name,
        asker: KeyId,
        event: DirectoryEvent,
    ) -> Result<(), ErrorCode> {
        let event = Box::new(event);
        match self.ask(name, &Ask::Introduce { asker, event }).await {
            Some(Answer::Introduced) => Ok(()),
            Some(Answer::Refused(code)) => Err(code),
            _ => Err(ErrorCode::Offline),
        }
    }

    /// Tells every node that `name` came online here or went offline at `at_ms` (`open`:
    /// letting anyone reach it when it left).
    pub async fn presence(&self, name: &Name, online: bool, open: bool, at_ms: u64) {
        let presence = Presence {
            node: self.node.clone(),
            name: name.clone(),
            online,
            open,
            at_ms,
        };
        let Ok(payload) = postcard::to_allocvec(&presence) else {
            return;
        };
        if let Err(e) = self.client.publish(PRESENCE, payload.into()).await {
            warn!(cause = %e, "cannot tell the cluster about a peer's presence");
        }
    }

    /// Answers for `name` while it is online here on `link`, and after it left until `told`
    /// is cancelled (the session has told the cluster; other nodes then know what this one
    /// does): lookups and introductions from other nodes. Closes `link` if the peer comes
    /// online on another node, and sets `moved` first: the session then says nothing of the
    /// peer going offline, which it has not. Returns when `told` is cancelled, or at once when
    /// the peer moved.
    pub async fn serve_peer(
        &self,
        name: Name,
        link: quinn::Connection,
        shared: (&Registry, &Allowances),
        moved: &AtomicBool,
        told: &CancellationToken,
    ) {
        let (registry, allowances) = shared;
        let mut asks = match self.client.subscribe(subject(&name)).await {
            Ok(asks) => asks,
            Err(e) => {
                warn!(cause = %e, "cannot answer for this peer in the cluster");
                return;
            }
        };
        // Subscribed (and flushed, so the servers know) before evicting: of two nodes where
        // the peer registers at once, each then hears the other's eviction.
        let _ = self.client.flush().await;
        let evict = Ask::Evict {
            node: self.node.clone(),
        };
        if let Ok(payload) = postcard::to_allocvec(&evict) {
            let _ = self.client.publish(subject(&name), payload.into()).await;
        }
        loop {
            let message = tokio::select! {
                message = asks.next() => match message {
                    Some(message) => message,
                    None => return,
                },
                () = told.cancelled() => return,
            };
            let Ok(ask) = postcard::from_bytes::<Ask>(&message.payload) else {
                continue;
            };
            let entry = registry.get(&name);
            // A newer connection of the peer here answers for it: this one stays silent.
            if entry
                .as_ref()
                .is_some_and(|o| o.link.id() != link.stable_id())
            {
                continue;
            }
            let online = entry;
            let answer = match (ask, online) {
                (Ask::Evict { node }, _) if node == self.node => continue,
                (Ask::Evict { .. }, _) => {
                    debug!(%name, "online on another node now; closing here");
                    moved.store(true, Ordering::Relaxed);
                    Link::close(&link, codes::REPLACED, MOVED);
                    return;
                }
                (Ask::Lookup { .. }, None) => Answer::Left {
                    open: registry.was_open(&name),
                    at_ms: registry.left_at(&name).unwrap_or_else(now_ms),
                },
                (Ask::Introduce { .. }, None) => Answer::Refused(ErrorCode::Offline),
                (Ask::Lookup { asker }, Some(online)) => {
                    Answer::Online(Remote::of(&online, &asker))
                }
                (Ask::Introduce { asker, event }, Some(online)) => {
                    Answer::from(introduce_here(&name, &online, allowances, asker, *event))
                }
            };
            let (Some(reply), Ok(payload)) = (message.reply, postcard::to_allocvec(&answer)) else {
                continue;
            };
            let _ = self.client.publish(reply, payload.into()).await;
        }
    }

    /// Follows what happens elsewhere in the cluster for the peers connected here: wakes the
    /// mailbox of each one that got mail, pushes room ops and room members' presence to them.
    /// Returns when the store stops sending changes.
    pub async fn follow(
        &self,
        mut changes: broadcast::Receiver<Applied>,
        registry: &Registry,
        rooms: &Rooms,
        store: &Arc<dyn crate::store::Store>,
    ) {
        let mut presence = match self.client.subscribe(PRESENCE).await {
            Ok(presence) => Some(presence),
            Err(e) => {
                warn!(cause = %e, "cannot follow presence in the cluster");
                None
            }
        };
        loop {
            let parts = Parts { store, registry };
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(Applied::Mail(name)) => {
                        if let Some(online) = registry.get(&name) {
                            online.wake.notify_one();
                        }
                    }
                    Ok(Applied::RoomOp { mine: true, .. }) => {}
                    Ok(Applied::RoomOp { op, mine: false }) => rooms.applied(parts, *op).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "fell behind the store's changes; waking every mailbox");
                        registry.each(|online| online.wake.notify_one());
                        // Room ops were missed too: read the rooms again from the store.
                        rooms.forget().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                message = next(&mut presence) => {
                    let Some(message) = message else {
                        presence = None;
                        continue;
                    };
                    match postcard::from_bytes::<Presence>(&message.payload) {
                        // A peer online here is not offline, whatever a node it left says.
                        Ok(p) if p.node != self.node
                            && (p.online || registry.get(&p.name).is_none()) => {
                            registry.elsewhere(&p.name, p.online, p.open, p.at_ms);
                            rooms.presence(parts, &p.name, p.online).await;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

async fn next(subscriber: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match subscriber {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl From<Result<(), ErrorCode>> for Answer {
    fn from(result: Result<(), ErrorCode>) -> Self {
        match result {
            Ok(()) => Answer::Introduced,
            Err(code) => Answer::Refused(code),
        }
    }
}

/// Passes an introduction from `asker` to `name`, online here as `target`, within the target's
/// rate: what `service` does for an asker connected here, less the asker's own rates, which
/// its node checked.
pub fn introduce_here(
    name: &Name,
    target: &Online,
    allowances: &Allowances,
    asker: KeyId,
    event: DirectoryEvent,
) -> Result<(), ErrorCode> {
    if !target.reaches(&asker) {
        debug!(to = %name, "introduction refused: not a contact of the target");
        return Err(ErrorCode::NotAccepted);
    }
    if let Err(limited) = allowances.introduce_to(name) {
        debug!(?limited, to = %name, "introduction refused: rate limit");
        return Err(ErrorCode::RateLimited);
    }
    // A full queue means the target is not reading its events; the caller falls back.
    target
        .events
        .try_send(Box::new(event))
        .map_err(|_| ErrorCode::Offline)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// postcard as hex, for pinned bytes.
    fn bytes(value: &impl Serialize) -> String {
        hex::encode(postcard::to_allocvec(value).expect("encode"))
    }

    /// The nodes of a cluster are upgraded one at a time, so nodes of two versions talk for a
    /// while: what they tell each other keeps its bytes, and a new variant goes at the end of
    /// its enum (an older node drops what it cannot decode, as if nobody answered).
    #[test]
    fn what_nodes_tell_each_other_keeps_its_bytes() {
        let key = KeyId([7; 32]);
        let keys = "0707070707070707070707070707070707070707070707070707070707070707";
        let addr: SocketAddr = "198.18.0.1:9000".parse().expect("addr");
        let cases = [
            (bytes(&Ask::Lookup { asker: key }), format!("00{keys}")),
            (
                bytes(&Ask::Introduce {
                    asker: key,
                    event: Box::new(DirectoryEvent::Introduction {
                        name: Name::new("c1").expect("name"),
                        key,
                        addrs: vec![addr],
                    }),
                }),
                format!("01{keys} 02 026331 {keys} 01 00 c6120001 a846").replace(' ', ""),
            ),
            (
                bytes(&Ask::Evict { node: "n1".into() }),
                "02026e31".to_string(),
            ),
            (
                bytes(&Answer::Online(Remote {
                    key,
                    addrs: Some((addr, vec![addr])),
                })),
                format!("00{keys}01 00 c6120001 a846 01 00 c6120001 a846").replace(' ', ""),
            ),
            (
                bytes(&Answer::Online(Remote { key, addrs: None })),
                format!("00{keys}00"),
            ),
            (bytes(&Answer::Introduced), "01".to_string()),
            (
                bytes(&Answer::Refused(ErrorCode::RateLimited)),
                "0209".to_string(),
            ),
            (
                bytes(&Answer::Left {
                    open: true,
                    at_ms: 5_000_000_000,
                }),
                "030180e497d012".to_string(),
            ),
            (
                bytes(&Presence {
                    node: "n1".into(),
                    name: Name::new("c1").expect("name"),
                    online: false,
                    open: true,
                    at_ms: 5_000_000_000,
                }),
                "026e3102633100 0180e497d012".replace(' ', ""),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
