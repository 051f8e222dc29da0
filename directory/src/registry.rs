//! Who is online right now: name → live connection and addresses. In memory only; the durable
//! name → key binding is in [`crate::store`].
//!
//! Online means registered on a live connection. Liveness is QUIC's: a peer sends keep-alives
//! (its heartbeats) and proposes an idle timeout of three of them, so a peer that stops
//! heartbeating has its connection closed by QUIC after three missed heartbeats, and a peer that
//! leaves closes it at once. Either way its session ends and removes it here. The directory
//! spends nothing per heartbeat beyond acknowledging a packet: no stream, no task, no timer.

use common::wire::{DirectoryEvent, Reach};
use common::{KeyId, Name};
use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt::Debug,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, Notify};

/// A peer's connection as the registry sees it: where its packets come from, and how to end
/// it. The QUIC connection is one (see `session`); the registry needs nothing else of QUIC.
pub trait Link: Send + Sync + Debug + 'static {
    /// The same for the connection's whole life, and unique among live connections.
    fn id(&self) -> usize;
    /// Where the peer's packets come from now (it changes if the peer's NAT rebinds).
    fn remote_address(&self) -> SocketAddr;
    /// Ends the connection with an application error `code` and a short `reason`.
    fn close(&self, code: u32, reason: &[u8]);
}

/// Events queued for one peer's event stream at most; a full queue means the peer is not
/// reading them.
const EVENT_QUEUE: usize = 64;

/// How long the registry keeps when a peer left ([`Registry::left_at`]). Another node's
/// replica applies the last-seen write of the node a peer left a few milliseconds after that
/// node's word that it left arrives; this covers a replica seconds behind.
const LEFT_KEEP: Duration = Duration::from_secs(60);

/// An event queued for a peer, boxed: a tokio channel allocates its slots 32 at a time when it
/// is made, so a queue of unboxed events (about 250 bytes each) held 8 KiB for every online
/// peer, most of which never gets an event. Boxed, a slot is one pointer.
pub type QueuedEvent = Box<DirectoryEvent>;

/// One online peer.
#[derive(Debug, Clone)]
pub struct Online {
    /// The connection it registered on.
    pub link: Arc<dyn Link>,
    /// Its key, as proven in the handshake.
    pub key: KeyId,
    /// The addresses it says it listens on.
    pub listen_addrs: Vec<SocketAddr>,
    /// Wakes its mailbox task when a message is deposited for it.
    pub wake: Arc<Notify>,
    /// Other events for its event stream (introductions).
    pub events: mpsc::Sender<QueuedEvent>,
    /// Who may see its addresses and be introduced to it; its connection updates it.
    pub reach: Arc<RwLock<Reach>>,
}

/// The receiving ends of an [`Online`] entry: what its mailbox task listens to.
#[derive(Debug)]
pub struct Feed {
    /// The peer it is for.
    pub name: Name,
    /// Notified when mail is deposited for the peer.
    pub wake: Arc<Notify>,
    /// Events to forward on its event stream.
    pub events: mpsc::Receiver<QueuedEvent>,
    /// Its identity key, as it published it: what the proofs in its acks are checked against
    /// by the senders that get them.
    pub signer: [u8; 32],
}

impl Online {
    /// True when `key` may see its addresses and be introduced to it: its own key, or one it
    /// lets reach it.
    pub fn reaches(&self, key: &KeyId) -> bool {
        *key == self.key
            || self
                .reach
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .allows(key)
    }

    /// The entry for peer `name` online on `link`, and the feed its mailbox task reads.
    pub fn new(
        name: Name,
        link: Arc<dyn Link>,
        key: KeyId,
        listen_addrs: Vec<SocketAddr>,
        reach: Arc<RwLock<Reach>>,
        signer: [u8; 32],
    ) -> (Self, Feed) {
        let wake = Arc::new(Notify::new());
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let online = Self {
            link,
            key,
            listen_addrs,
            wake: wake.clone(),
            events,
            reach,
        };
        (
            online,
            Feed {
                name,
                wake,
                events: events_rx,
                signer,
            },
        )
    }
}

/// The set of online peers.
///
/// A `std::sync::Mutex`, not Tokio's: no `.await` ever happens while it is held, and every
/// critical section is a map operation.
#[derive(Debug, Default)]
pub struct Registry {
    online: Mutex<HashMap<Name, Online>>,
    /// Peers that let anyone reach them ([`Reach::Anyone`]) when they went offline: their exact
    /// last-seen time stays public. Of the others, nobody is known to be a contact once they
    /// are offline (their contact lists are not kept), so everyone gets the day. In a cluster
    /// the node a peer left tells the others ([`Registry::elsewhere`]). One name per open
    /// peer, bounded by the names the store holds.
    open_offline: Mutex<HashSet<Name>>,
    /// When peers left lately, here or on another node ([`Registry::left_at`]).
    left: Mutex<Left>,
}

/// When peers left, each kept for [`LEFT_KEEP`] after it was noted here.
#[derive(Debug, Default)]
struct Left {
    /// Each peer's last-seen time, and when it was noted.
    at: HashMap<Name, (u64, Instant)>,
    /// The notes in the order they were made, to expire them.
    order: VecDeque<(Instant, Name)>,
}

impl Left {
    fn note(&mut self, name: &Name, at_ms: u64) {
        let now = Instant::now();
        while let Some((noted, _)) = self.order.front() {
            if now.duration_since(*noted) < LEFT_KEEP {
                break;
            }
            if let Some((noted, name)) = self.order.pop_front() {
                // A later note of the same peer keeps its entry.
                if self.at.get(&name).is_some_and(|(_, last)| *last == noted) {
                    self.at.remove(&name);
                }
            }
        }
        let at_ms = self.at.get(name).map_or(at_ms, |(ms, _)| at_ms.max(*ms));
        self.at.insert(name.clone(), (at_ms, now));
        self.order.push_back((now, name.clone()));
    }

    fn get(&self, name: &Name) -> Option<u64> {
        let (ms, noted) = self.at.get(name)?;
        (noted.elapsed() < LEFT_KEEP).then_some(*ms)
    }
}

impl Registry {
    fn map(&self) -> MutexGuard<'_, HashMap<Name, Online>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.online.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `name` as online on `entry.link`, returning the entry it replaces, if any.
    pub fn insert(&self, name: Name, entry: Online) -> Option<Online> {
        self.open_offline().remove(&name);
        self.map().insert(name, entry)
    }

    /// Removes `name` if it is still registered on the connection with `link_id` (see
    /// [`Link::id`]), so a replaced connection that closes late cannot remove its successor.
    /// `at_ms` is its last-seen time, as stored.
    pub fn remove_if(&self, name: &Name, link_id: usize, at_ms: u64) -> bool {
        let mut map = self.map();
        if map.get(name).is_some_and(|o| o.link.id() == link_id) {
            self.left().note(name, at_ms);
            if let Some(left) = map.remove(name) {
                let open = matches!(
                    *left.reach.read().unwrap_or_else(|e| e.into_inner()),
                    Reach::Anyone
                );
                if open {
                    self.open_offline().insert(name.clone());
                }
            }
            return true;
        }
        false
    }

    /// Whether `name`, offline, let anyone reach it when it left.
    pub fn was_open(&self, name: &Name) -> bool {
        self.open_offline().contains(name)
    }

    /// When `name` left, if it left lately: at most its last-seen time as the node it left
    /// stored it, which this node's replica of the store may not hold yet.
    pub fn left_at(&self, name: &Name) -> Option<u64> {
        self.left().get(name)
    }

    /// Records that `name` came online on another node of the cluster, or left it at `at_ms`
    /// (`open`: letting anyone reach it), so that [`Registry::was_open`] and
    /// [`Registry::left_at`] answer here as they would there.
    pub fn elsewhere(&self, name: &Name, online: bool, open: bool, at_ms: u64) {
        if !online {
            self.left().note(name, at_ms);
        }
        let mut offline = self.open_offline();
        if !online && open {
            offline.insert(name.clone());
        } else {
            offline.remove(name);
        }
    }

    fn open_offline(&self) -> MutexGuard<'_, HashSet<Name>> {
        self.open_offline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn left(&self) -> MutexGuard<'_, Left> {
        self.left.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The online entry for `name`.
    pub fn get(&self, name: &Name) -> Option<Online> {
        self.map().get(name).cloned()
    }

    /// Calls `f` with each peer online (under the registry's lock: keep it short).
    pub fn each(&self, mut f: impl FnMut(&Online)) {
        self.map().values().for_each(&mut f);
    }

    /// How many peers are online.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when nobody is online.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
