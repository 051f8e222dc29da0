//! The directory's answer to each request, knowing nothing of QUIC: given who asks (a
//! [`Caller`]: its key, its connection as an opaque [`Link`], what it registered) and what it
//! asks, the response or the [`ErrorCode`] to send back, with the request's effects on the
//! registry and the store.
//!
//! Every request but `Register` needs a registered caller. `Register` binds the name to the
//! caller's key on first use and, for a peer that stays online, enters it in the registry; the
//! connection then starts delivering its mail ([`Reply::online`]).

use crate::{
    cluster::{self, Found, Remote},
    registry::{Feed, Link, Online},
    rooms::{Asker, Parts as RoomParts},
    state::Shared,
    store::{writer::Queued, Binding, StoreError, ACTIVE_STEP_MS},
};
use common::{
    defaults::MAX_CONTACTS,
    now_ms,
    seal::PublishedKey,
    wire::{
        codes, DirectoryEvent, DirectoryRequest, DirectoryResponse, ErrorCode, Letter, Mail,
        PeerInfo, Reach,
    },
    KeyId, Name,
};
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock, RwLock},
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

/// Most listen addresses kept for one peer; the rest are ignored.
const LISTEN_ADDRS: usize = 16;
/// How often, at most, the hole punching counters are logged.
const PUNCH_LOG_EVERY: Duration = Duration::from_secs(60);
/// What a stranger learns of a peer's last-seen time: the day (UTC) only.
const STRANGER_LAST_SEEN_STEP_MS: u64 = 24 * 60 * 60 * 1000;

/// Who sends requests on one connection, and what it has registered so far. Requests on the
/// connection's streams are served concurrently, so its state is set through `&self`.
#[derive(Debug)]
pub struct Caller {
    key: KeyId,
    link: Arc<dyn Link>,
    /// Set once by `Register`.
    name: OnceLock<Name>,
    /// The addresses the peer said it listens on, set by `Register`.
    listen_addrs: OnceLock<Vec<SocketAddr>>,
    /// Who may reach it, set by `SetReach`, shared with its registry entry: nobody until then.
    reach: Arc<RwLock<Reach>>,
}

impl Caller {
    /// A caller that proved `key` in the handshake of `link`, not registered yet.
    pub fn new(key: KeyId, link: Arc<dyn Link>) -> Self {
        Self {
            key,
            link,
            name: OnceLock::new(),
            listen_addrs: OnceLock::new(),
            reach: Arc::new(RwLock::new(Reach::Contacts(Vec::new()))),
        }
    }

    /// The name it registered, if it has.
    pub fn name(&self) -> Option<&Name> {
        self.name.get()
    }

    fn registered(&self) -> Result<&Name, ErrorCode> {
        self.name.get().ok_or(ErrorCode::NotRegistered)
    }
}

/// A request's outcome for the connection that sent it.
#[derive(Debug)]
pub struct Reply {
    /// What to send back.
    pub response: DirectoryResponse,
    /// Set when a `Register` brought the caller online: what the connection's mailbox task
    /// delivers from.
    pub online: Option<Feed>,
}

impl From<DirectoryResponse> for Reply {
    fn from(response: DirectoryResponse) -> Self {
        Self {
            response,
            online: None,
        }
    }
}

/// Serves one request from `caller`.
pub async fn handle(
    shared: &Shared,
    caller: &Caller,
    request: DirectoryRequest,
) -> Result<Reply, ErrorCode> {
    let response = match request {
        DirectoryRequest::Register {
            name,
            listen_addrs,
            heartbeat_ms,
            online,
            published,
        } => {
            let hello = Hello {
                name,
                listen_addrs,
                heartbeat_ms,
                online,
                published,
            };
            return register(shared, caller, hello).await;
        }
        DirectoryRequest::Heartbeat => {
            // Liveness is the connection's (see `registry`); an explicit heartbeat is still
            // answered, for clients that send one.
            caller.registered()?;
            DirectoryResponse::Alive
        }
        DirectoryRequest::Lookup { name } => {
            let me = caller.registered()?;
            if let Err(limited) = shared.allowances.lookup_by(caller.key) {
                debug!(?limited, "lookup refused: rate limit");
                return Err(ErrorCode::RateLimited);
            }
            DirectoryResponse::Peer(lookup(shared, caller.key, me, name).await?)
        }
        DirectoryRequest::SetReach { reach } => {
            caller.registered()?;
            if matches!(&reach, Reach::Contacts(keys) if keys.len() > MAX_CONTACTS) {
                return Err(ErrorCode::TooLarge);
            }
            *caller.reach.write().unwrap_or_else(|e| e.into_inner()) = reach;
            DirectoryResponse::Noted
        }
        DirectoryRequest::Deposit { .. } | DirectoryRequest::DepositFilePart { .. } => {
            caller.registered()?;
            return Err(ErrorCode::Unsealed);
        }
        DirectoryRequest::RoomOp { op } => {
            let asker = room_asker(shared, caller)?;
            shared.rooms.append(rooms_parts(shared), asker, op).await?;
            DirectoryResponse::Noted
        }
        DirectoryRequest::RoomLog { room, after } => {
            let asker = room_asker(shared, caller)?;
            let ops = shared.rooms.log(rooms_parts(shared), asker, &room, after);
            DirectoryResponse::RoomOps(ops.await?)
        }
        // The session queues pipelined deposits itself, so that they share a commit.
        DirectoryRequest::DepositLetter { letter } => {
            queue_deposit(shared, caller, letter)
                .await?
                .stored(shared)
                .await?
        }
        DirectoryRequest::Introduce { name } => {
            introduce(shared, caller, &name).await?;
            DirectoryResponse::Introduced
        }
        DirectoryRequest::PunchOutcome {
            name,
            success,
            millis,
        } => {
            let me = caller.registered()?;
            debug!(from = %me, to = %name, success, millis, "hole punching outcome");
            punch_outcome(shared, success, Instant::now());
            DirectoryResponse::Noted
        }
    };
    Ok(response.into())
}

/// What the rooms use of the directory's state.
pub fn rooms_parts(shared: &Shared) -> RoomParts<'_> {
    RoomParts {
        store: &shared.store,
        registry: &shared.registry,
    }
}

/// The caller of a room request, within the rate its key has for lookups: both read the
/// store for whoever asks.
fn room_asker<'a>(shared: &Shared, caller: &'a Caller) -> Result<Asker<'a>, ErrorCode> {
    let name = caller.registered()?;
    if let Err(limited) = shared.allowances.lookup_by(caller.key) {
        debug!(?limited, "room request refused: rate limit");
        return Err(ErrorCode::RateLimited);
    }
    Ok(Asker {
        name,
        key: caller.key,
    })
}

/// What a [`DirectoryRequest::Register`] says.
struct Hello {
    name: Name,
    listen_addrs: Vec<SocketAddr>,
    heartbeat_ms: u32,
    online: bool,
    published: PublishedKey,
}

async fn register(shared: &Shared, caller: &Caller, hello: Hello) -> Result<Reply, ErrorCode> {
    let Hello {
        name,
        listen_addrs,
        heartbeat_ms,
        online,
        published,
    } = hello;
    if caller.name.get().is_some() {
        return Err(ErrorCode::AlreadyRegistered);
    }
    // Others seal to this key: it must be the caller's own, or a directory that kept it would
    // hand out a key a third party chose. One signature check per registration.
    if published.verify(&caller.key).is_err() {
        return Err(ErrorCode::BadPublishedKey);
    }
    bind(shared, caller, &name, published, now_ms()).await?;
    if caller.name.set(name.clone()).is_err() {
        return Err(ErrorCode::AlreadyRegistered);
    }
    let listen_addrs: Vec<SocketAddr> = listen_addrs.into_iter().take(LISTEN_ADDRS).collect();
    let _ = caller.listen_addrs.set(listen_addrs.clone());
    tracing::Span::current().record("name", name.as_str());
    let registered = DirectoryResponse::Registered {
        observed_addr: caller.link.remote_address(),
    };
    if !online {
        debug!(key = %caller.key.short(), "registered for a short command");
        return Ok(registered.into());
    }
    let (entry, feed) = Online::new(
        name.clone(),
        caller.link.clone(),
        caller.key,
        listen_addrs,
        caller.reach.clone(),
        published.identity,
    );
    if let Some(old) = shared.registry.insert(name.clone(), entry) {
        if old.link.id() != caller.link.id() {
            info!("replacing an older connection for the same name");
            old.link
                .close(codes::REPLACED, b"replaced by a newer connection");
        }
    }
    info!(key = %caller.key.short(), heartbeat_ms, "online");
    let rooms = rooms_parts(shared);
    shared.rooms.presence(rooms, &name, true).await;
    if let Some(cluster) = &shared.cluster {
        cluster.presence(&name, true, false, now_ms()).await;
    }
    Ok(Reply {
        response: registered,
        online: Some(feed),
    })
}

/// Binds `name` to the caller's key, or checks that it is bound to it. A name the key already
/// holds is only read, unless its active time is a day old (see [`ACTIVE_STEP_MS`]); a new
/// binding must keep to the rules for new names and to the caller's host's rate. Writes go
/// through the writer: one fsync for every registration in a group commit. Last seen is not
/// written here: while online it comes from the registry, and it is stored when the peer
/// leaves.
async fn bind(
    shared: &Shared,
    caller: &Caller,
    name: &Name,
    published: PublishedKey,
    now: u64,
) -> Result<(), ErrorCode> {
    let known = shared.store.name(name).map_err(|e| {
        warn!(cause = %e, "reading a binding failed");
        ErrorCode::Internal
    })?;
    match known {
        Some(r)
            if r.key == caller.key
                && r.published == Some(published)
                && now.saturating_sub(r.active_ms) < ACTIVE_STEP_MS =>
        {
            return Ok(())
        }
        Some(r) if r.key == caller.key => {}
        // Free, taken or expired: the store decides, but a new name must be asked for
        // properly, and at the host's rate.
        _ => {
            name.check_new().map_err(|_| ErrorCode::BadName)?;
            if shared
                .allowances
                .bind_from(caller.link.remote_address().ip())
                .is_err()
            {
                debug!(%name, "refused: new names from this host are rate limited");
                return Err(ErrorCode::RateLimited);
            }
        }
    }
    let binding = Binding {
        name: name.clone(),
        key: caller.key,
        at_ms: now,
        published: Some(published),
    };
    let refused = match shared.writer.bind(binding).await {
        Ok(_) => return Ok(()),
        Err(StoreError::NameTaken) => ErrorCode::NameTaken,
        Err(StoreError::Lookalike) => ErrorCode::NameLookalike,
        Err(StoreError::TooManyNames) => ErrorCode::TooManyNames,
        Err(e) => {
            warn!(cause = %e, "storing a binding failed");
            return Err(ErrorCode::Internal);
        }
    };
    debug!(%name, key = %caller.key.short(), ?refused, "refused a name");
    Err(refused)
}

/// Counts a hole punching outcome; logs the counters at most every [`PUNCH_LOG_EVERY`].
fn punch_outcome(shared: &Shared, success: bool, now: Instant) {
    let m = &shared.metrics;
    let (punched, failed) = m.punched(success);
    let mut logged = m.punch_logged.lock().unwrap_or_else(|e| e.into_inner());
    if logged.is_some_and(|at| now.duration_since(at) < PUNCH_LOG_EVERY) {
        return;
    }
    *logged = Some(now);
    info!(
        introductions = m.introductions.get(),
        punched, failed, "hole punching so far"
    );
}

/// Sends `name` the caller's addresses on its event stream, so it dials the caller while the
/// caller dials it. Each introduction makes the target send packets to addresses the caller
/// chose, so they are rate limited per key, per host and per target (see [`crate::rates`]);
/// refused attempts count against the caller too. A target online on another node of the
/// cluster gets it through that node, which checks the target's rate.
async fn introduce(shared: &Shared, caller: &Caller, name: &Name) -> Result<(), ErrorCode> {
    let me = caller.registered()?;
    let from = caller.link.remote_address().ip();
    if let Err(limited) = shared.allowances.introduce_from(caller.key, from) {
        debug!(?limited, "introduction refused: rate limit");
        return Err(ErrorCode::RateLimited);
    }
    let mut addrs = vec![caller.link.remote_address()];
    addrs.extend(caller.listen_addrs.get().into_iter().flatten().copied());
    let event = DirectoryEvent::Introduction {
        name: me.clone(),
        key: caller.key,
        addrs,
    };
    match (shared.registry.get(name), &shared.cluster) {
        (Some(target), _) => {
            cluster::introduce_here(name, &target, &shared.allowances, caller.key, event)?
        }
        (None, Some(cluster)) => cluster.introduce(name, caller.key, event).await?,
        (None, None) => return Err(ErrorCode::Offline),
    }
    let n = shared.metrics.introductions.inc() + 1;
    debug!(to = %name, introductions = n, "introduced");
    Ok(())
}

/// Before answering that a name is not bound, on a node of a cluster: waits until this
/// node's replica has caught up with every write acknowledged before now, so that a name
/// bound through another node a moment ago is found. `Ok(false)` on one node, which has
/// nothing to catch up with; [`ErrorCode::Internal`] (try again) when the replica could not
/// catch up in time, rather than a false "unknown".
async fn caught_up(shared: &Shared) -> Result<bool, ErrorCode> {
    if shared.cluster.is_none() {
        return Ok(false);
    }
    match shared.store.catch_up().await {
        Ok(()) => Ok(true),
        Err(e) => {
            debug!(cause = %e, "not caught up with the cluster's log");
            Err(ErrorCode::Internal)
        }
    }
}

/// What `asker` (key `key`, name `me`) may know of `name`: everything if `name` lets it reach
/// it, else (a stranger, or `name` offline) its key, whether it is online and its last-seen
/// day, without addresses. Offline, nobody is known to be its contact (contact lists are kept
/// only while online), so everyone gets the day, unless it let anyone reach it. A peer online
/// on another node of the cluster is asked of that node.
async fn lookup(shared: &Shared, key: KeyId, me: &Name, name: Name) -> Result<PeerInfo, ErrorCode> {
    // Reads are served inline: a redb read transaction on a hot page costs microseconds, less
    // than the hop to a blocking thread, which profiling showed dominating lookups.
    let mut found = shared
        .store
        .lookup(&name, me)
        .map_err(|_| ErrorCode::Internal)?;
    if found.is_none() && caught_up(shared).await? {
        found = (shared.store.lookup(&name, me)).map_err(|_| ErrorCode::Internal)?;
    }
    let (record, queued) = found.ok_or(ErrorCode::UnknownPeer)?;
    let online = match (shared.registry.get(&name), &shared.cluster) {
        (Some(o), _) => Some(Remote::of(&o, &key)),
        (None, Some(cluster)) => match cluster.lookup(&name, key).await {
            Found::Online(remote) => Some(remote),
            Found::Left { open, at_ms } => {
                // Its node is about to tell every node so; this lookup need not wait for it.
                shared.registry.elsewhere(&name, false, open, at_ms);
                None
            }
            Found::Nowhere => None,
        },
        (None, None) => None,
    };
    let day = |ms: u64| ms - ms % STRANGER_LAST_SEEN_STEP_MS;
    Ok(match online {
        Some(Remote { key, addrs: None }) => PeerInfo {
            name,
            key,
            online: true,
            last_seen_ms: Some(day(now_ms())),
            observed_addr: None,
            listen_addrs: Vec::new(),
            queued_from_you: queued,
            published: record.published,
        },
        Some(Remote {
            key,
            addrs: Some((observed, listen_addrs)),
        }) => PeerInfo {
            name,
            key,
            online: true,
            // Its connection is alive now: QUIC closes it three missed heartbeats after the
            // last one.
            last_seen_ms: Some(now_ms()),
            observed_addr: Some(observed),
            listen_addrs,
            queued_from_you: queued,
            published: record.published,
        },
        None => {
            // A peer that has just left another node may be newer there than in this replica.
            let last_seen_ms = record.last_seen_ms.max(shared.registry.left_at(&name));
            PeerInfo {
                last_seen_ms: match shared.registry.was_open(&name) {
                    true => last_seen_ms,
                    false => last_seen_ms.map(day),
                },
                name,
                key: record.key,
                online: false,
                observed_addr: None,
                listen_addrs: Vec::new(),
                queued_from_you: queued,
                published: record.published,
            }
        }
    })
}

/// A deposit that passed its checks and waits in the store writer's queue for its commit.
#[derive(Debug)]
pub struct QueuedDeposit {
    queued: Queued,
    to: Name,
}

impl QueuedDeposit {
    /// The answer, once the deposit is committed (or refused by a quota); wakes the
    /// recipient's mailbox if it is online here.
    pub async fn stored(self, shared: &Shared) -> Result<DirectoryResponse, ErrorCode> {
        match self.queued.committed().await {
            Ok(()) => {}
            Err(e) => return Err(refused(e)),
        }
        if let Some(online) = shared.registry.get(&self.to) {
            online.wake.notify_one();
        }
        Ok(DirectoryResponse::Stored)
    }
}

/// Checks a [`DirectoryRequest::DepositLetter`] and queues it for the next group commit,
/// without waiting for that: a client's pipelined deposits share one commit, and are stored in
/// the order they were queued. [`QueuedDeposit::stored`] gives the answer.
pub async fn queue_deposit(
    shared: &Shared,
    caller: &Caller,
    letter: Letter,
) -> Result<QueuedDeposit, ErrorCode> {
    let me = caller.registered()?;
    let mail = checked(shared, me, Mail::Letter(letter)).await?;
    let to = mail.to().clone();
    match shared.writer.queue_deposit(mail).await {
        Ok(queued) => Ok(QueuedDeposit { queued, to }),
        Err(e) => Err(refused(e)),
    }
}

/// What the client is told of a deposit the store refused.
fn refused(e: StoreError) -> ErrorCode {
    match e {
        StoreError::MailboxFull => ErrorCode::MailboxFull,
        StoreError::SenderQuotaFull => ErrorCode::SenderQuotaFull,
        StoreError::StoreFull => ErrorCode::StoreFull,
        e => {
            warn!(cause = %e, "storing a message failed");
            ErrorCode::Internal
        }
    }
}

/// `mail` if `me` may deposit it: from `me`, within its size, to a name that exists.
async fn checked(shared: &Shared, me: &Name, mail: Mail) -> Result<Mail, ErrorCode> {
    if mail.from() != me {
        return Err(ErrorCode::NotSender);
    }
    // Every field the mailbox keeps has a cap (names have theirs by type).
    let fits = match &mail {
        Mail::Letter(l) => l.sealed.len() <= Letter::max_sealed_len(l.kind),
        // Unsealed mail is refused before this; receipts are the directory's own.
        Mail::Chat(_) | Mail::FilePart(_) => return Err(ErrorCode::Unsealed),
        Mail::Receipt(_) | Mail::SignedReceipt(_) => return Err(ErrorCode::NotSender),
    };
    if !fits {
        return Err(ErrorCode::TooLarge);
    }
    let to = mail.to().clone();
    let bound = |shared: &Shared| shared.store.is_bound(&to).map_err(|_| ErrorCode::Internal);
    let known = bound(shared)? || (caught_up(shared).await? && bound(shared)?);
    if !known {
        return Err(ErrorCode::UnknownPeer);
    }
    Ok(mail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        rates::Rates,
        state::Config,
        store::{
            suite::{chat, empty_part, name, TestResult},
            Naming, Quota, RedbStore,
        },
    };
    use common::{
        defaults::{INTRODUCTIONS_PER_TARGET_PER_MINUTE, MAX_FILE_NAME_LEN},
        seal::Content,
        wire::{ChatMessage, LetterKind},
    };
    use std::sync::Mutex;

    /// A connection that is only an id and an address, and remembers being closed.
    #[derive(Debug)]
    struct FakeLink {
        id: usize,
        addr: SocketAddr,
        closed: Mutex<Option<u32>>,
    }

    impl Link for FakeLink {
        fn id(&self) -> usize {
            self.id
        }

        fn remote_address(&self) -> SocketAddr {
            self.addr
        }

        fn close(&self, code: u32, _reason: &[u8]) {
            *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
        }
    }

    impl FakeLink {
        fn closed(&self) -> Option<u32> {
            *self.closed.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// A directory with `quota` on a fresh store, in the folder returned with it.
    fn directory(quota: Quota) -> Result<(tempfile::TempDir, Shared), Box<dyn std::error::Error>> {
        directory_with(Config { quota, ..config() })
    }

    /// The default settings.
    fn config() -> Config {
        Config {
            quota: Quota::default(),
            max_connections: 10,
            naming: Naming::default(),
            rates: Rates::default(),
        }
    }

    /// A directory with `config` on a fresh store, in the folder returned with it.
    fn directory_with(
        config: Config,
    ) -> Result<(tempfile::TempDir, Shared), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RedbStore::open(&dir.path().join("directory.redb"))?;
        Ok((dir, Shared::new(Arc::new(store), config)))
    }

    /// A caller with key `[key; 32]` on a connection numbered `n`, from 10.0.0.n:4000.
    fn caller_with_key(n: u8, key: u8) -> (Caller, Arc<FakeLink>) {
        caller_from(n, key, [10, 0, 0, n])
    }

    /// A caller with key `[key; 32]` on a connection numbered `n`, from `ip`, port 4000.
    fn caller_from(n: u8, key: u8, ip: [u8; 4]) -> (Caller, Arc<FakeLink>) {
        let link = Arc::new(FakeLink {
            id: n.into(),
            addr: SocketAddr::from((ip, 4000)),
            closed: Mutex::default(),
        });
        (Caller::new(test_key(key), link.clone()), link)
    }

    /// The sealer of test key `n`: the same `n` gives the same keys.
    fn sealer(n: u8) -> common::seal::Sealer {
        common::seal::Sealer::from_seed([n; 32], [n; 32]).expect("a test key")
    }

    /// The key id of test key `n`.
    fn test_key(n: u8) -> KeyId {
        sealer(n).key_id()
    }

    /// `request`, with a registration's published key made by `caller`'s (test) key.
    fn signed_by(caller: &Caller, mut request: DirectoryRequest) -> DirectoryRequest {
        static KEYS: OnceLock<std::collections::HashMap<KeyId, PublishedKey>> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            (0..=u8::MAX)
                .map(|n| {
                    let s = sealer(n);
                    (s.key_id(), s.published())
                })
                .collect()
        });
        if let (DirectoryRequest::Register { published, .. }, Some(key)) =
            (&mut request, keys.get(&caller.key))
        {
            *published = *key;
        }
        request
    }

    /// A caller with key `[n; 32]` on a connection numbered `n`.
    fn caller(n: u8) -> (Caller, Arc<FakeLink>) {
        caller_with_key(n, n)
    }

    fn register(who: &str, online: bool) -> DirectoryRequest {
        DirectoryRequest::Register {
            name: name(who),
            listen_addrs: vec![SocketAddr::from(([192, 168, 1, 2], 5000))],
            heartbeat_ms: 10_000,
            online,
            // Replaced with the caller's own by `signed_by`.
            published: sealer(0).published(),
        }
    }

    /// Serves `request` and returns the response or the error code.
    async fn ask(
        shared: &Shared,
        caller: &Caller,
        request: DirectoryRequest,
    ) -> Result<DirectoryResponse, ErrorCode> {
        handle(shared, caller, signed_by(caller, request))
            .await
            .map(|r| r.response)
    }

    fn set_reach(reach: Reach) -> DirectoryRequest {
        DirectoryRequest::SetReach { reach }
    }

    /// Registers `caller` as `who`, online, and returns its feed.
    async fn online(shared: &Shared, caller: &Caller, who: &str) -> Result<Feed, ErrorCode> {
        let reply = handle(shared, caller, signed_by(caller, register(who, true))).await?;
        reply.online.ok_or(ErrorCode::Internal)
    }

    /// A directory on a fresh store, with alice (caller 1) and bob (caller 2) online.
    struct AliceAndBob {
        shared: Shared,
        alice: Caller,
        /// What bob's mailbox task would read.
        bob: Feed,
        _dir: tempfile::TempDir,
    }

    impl AliceAndBob {
        async fn new(quota: Quota) -> Result<Self, Box<dyn std::error::Error>> {
            let (dir, shared) = directory(quota)?;
            let (alice, _) = caller(1);
            let (bob, _) = caller(2);
            online(&shared, &alice, "alice").await?;
            let bob_feed = online(&shared, &bob, "bob").await?;
            // Bob lets alice reach him; everyone else is a stranger to him.
            ask(&shared, &bob, set_reach(Reach::Contacts(vec![alice.key]))).await?;
            let bob = bob_feed;
            Ok(Self {
                shared,
                alice,
                bob,
                _dir: dir,
            })
        }

        /// Serves `request` from alice.
        async fn alice_asks(
            &self,
            request: DirectoryRequest,
        ) -> Result<DirectoryResponse, ErrorCode> {
            ask(&self.shared, &self.alice, request).await
        }

        /// Registers a third peer, `who`, as caller `n`.
        async fn join(&self, who: &str, n: u8, online: bool) -> Result<Caller, ErrorCode> {
            let (other, _) = caller(n);
            ask(&self.shared, &other, register(who, online)).await?;
            Ok(other)
        }
    }

    /// A letter sealed by test key 0 to itself: the directory reads only its routing metadata.
    fn letter(content: Content) -> Letter {
        let sealer = sealer(0);
        sealer
            .seal(&sealer.key_id(), &sealer.published(), content)
            .expect("sealed")
    }

    fn deposit(message: ChatMessage) -> DirectoryRequest {
        DirectoryRequest::DepositLetter {
            letter: letter(Content::Chat(message)),
        }
    }

    /// A deposit of a chat letter whose sealed part is `len` bytes long.
    fn deposit_of_len(len: usize) -> DirectoryRequest {
        let mut letter = letter(Content::Chat(chat("alice", "bob", "hi")));
        letter.sealed.resize(len, 0);
        DirectoryRequest::DepositLetter { letter }
    }

    fn lookup(who: &str) -> DirectoryRequest {
        DirectoryRequest::Lookup { name: name(who) }
    }

    fn peer(response: Result<DirectoryResponse, ErrorCode>) -> Result<PeerInfo, String> {
        match response {
            Ok(DirectoryResponse::Peer(info)) => Ok(info),
            other => Err(format!("expected a peer, got {other:?}")),
        }
    }

    #[tokio::test]
    async fn register_binds_the_name_to_the_callers_key() -> TestResult {
        let (_dir, shared) = directory(Quota::default())?;
        let (alice, _) = caller(1);
        let reply = handle(&shared, &alice, signed_by(&alice, register("alice", false))).await?;
        let observed_addr = SocketAddr::from(([10, 0, 0, 1], 4000));
        assert_eq!(
            reply.response,
            DirectoryResponse::Registered { observed_addr }
        );
        // A short command is not online and has no mailbox to deliver.
        assert!(reply.online.is_none());
        assert!(shared.registry.get(&name("alice")).is_none());
        assert_eq!(alice.name(), Some(&name("alice")));
        let record = shared.store.name(&name("alice"))?.ok_or("not bound")?;
        assert_eq!(record.key, test_key(1));
        // Once per connection.
        let again = ask(&shared, &alice, register("alice", true)).await;
        assert_eq!(again, Err(ErrorCode::AlreadyRegistered));
        Ok(())
    }

    #[tokio::test]
    async fn a_name_bound_to_another_key_is_refused() -> TestResult {
        let (_dir, shared) = directory(Quota::default())?;
        let (alice, _) = caller(1);
        let (mallory, _) = caller(2);
        online(&shared, &alice, "alice").await?;
        let taken = ask(&shared, &mallory, register("alice", true)).await;
        assert_eq!(taken, Err(ErrorCode::NameTaken));
        assert_eq!(mallory.name(), None);
        let entry = shared.registry.get(&name("alice")).ok_or("not online")?;
        assert_eq!(entry.key, test_key(1));
        Ok(())
    }

    #[tokio::test]
    async fn a_newer_connection_replaces_the_older_one() -> TestResult {
        let (_dir, shared) = directory(Quota::default())?;
        let (first, first_link) = caller(1);
        let (second, _) = caller_with_key(7, 1);
        online(&shared, &first, "alice").await?;
        online(&shared, &second, "alice").await?;
        assert_eq!(first_link.closed(), Some(codes::REPLACED));
        let entry = shared.registry.get(&name("alice")).ok_or("not online")?;
        assert_eq!(entry.link.id(), 7);
        // The older connection closing late leaves its successor online.
        assert!(!shared.registry.remove_if(&name("alice"), 1, now_ms()));
        Ok(())
    }

    #[tokio::test]
    async fn every_other_request_needs_register_first() -> TestResult {
        let (_dir, shared) = directory(Quota::default())?;
        let (alice, _) = caller(1);
        let requests = [
            DirectoryRequest::Heartbeat,
            lookup("bob"),
            deposit(chat("alice", "bob", "hi")),
            introduce("bob"),
            DirectoryRequest::PunchOutcome {
                name: name("bob"),
                success: true,
                millis: 5,
            },
        ];
        for request in requests {
            let refused = ask(&shared, &alice, request).await;
            assert_eq!(refused, Err(ErrorCode::NotRegistered));
        }
        Ok(())
    }

    #[tokio::test]
    async fn lookup_answers_online_offline_and_unknown() -> TestResult {
        let d = AliceAndBob::new(Quota::default()).await?;
        d.join("carol", 3, false).await?;
        d.alice_asks(deposit(chat("alice", "carol", "hi"))).await?;

        let unknown = d.alice_asks(lookup("nobody")).await;
        assert_eq!(unknown, Err(ErrorCode::UnknownPeer));

        let bob = peer(d.alice_asks(lookup("bob")).await)?;
        assert!(bob.online);
        assert_eq!(bob.key, test_key(2));
        let observed = SocketAddr::from(([10, 0, 0, 2], 4000));
        assert_eq!(bob.observed_addr, Some(observed));
        let listening = SocketAddr::from(([192, 168, 1, 2], 5000));
        assert_eq!(bob.listen_addrs, [listening]);

        // Offline, nobody knows whom carol lets reach her: her last-seen time is the day's.
        let day = 20_000 * STRANGER_LAST_SEEN_STEP_MS;
        d.shared.store.set_last_seen(&name("carol"), day + 42)?;
        let carol = peer(d.alice_asks(lookup("carol")).await)?;
        assert!(!carol.online);
        assert_eq!(carol.last_seen_ms, Some(day));
        assert_eq!(carol.observed_addr, None);
        assert_eq!(carol.queued_from_you, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_stranger_sees_no_address_and_is_not_introduced() -> TestResult {
        let mut d = AliceAndBob::new(Quota::default()).await?;
        let mallory = d.join("mallory", 9, false).await?;
        let bob = peer(ask(&d.shared, &mallory, lookup("bob")).await)?;
        assert_eq!(bob.key, test_key(2), "the key is public");
        assert!(bob.online);
        assert_eq!(bob.observed_addr, None);
        assert!(bob.listen_addrs.is_empty());
        let seen = bob.last_seen_ms.unwrap_or(1);
        assert_eq!(seen % STRANGER_LAST_SEEN_STEP_MS, 0, "to the day");
        let refused = ask(&d.shared, &mallory, introduce("bob")).await;
        assert_eq!(refused, Err(ErrorCode::NotAccepted));
        assert!(d.bob.events.try_recv().is_err(), "bob heard nothing");
        // A contact's lookup is whole.
        let seen_by_alice = peer(d.alice_asks(lookup("bob")).await)?;
        assert!(seen_by_alice.observed_addr.is_some());
        Ok(())
    }

    #[tokio::test]
    async fn reach_is_replaced_capped_and_can_be_anyone() -> TestResult {
        let d = AliceAndBob::new(Quota::default()).await?;
        let (bob, _) = caller(2);
        let _feed = online(&d.shared, &bob, "bob").await?;
        let too_many = Reach::Contacts((0..=MAX_CONTACTS).map(|_| test_key(7)).collect());
        let refused = ask(&d.shared, &bob, set_reach(too_many)).await;
        assert_eq!(refused, Err(ErrorCode::TooLarge));
        // Nobody (not even alice) reaches this connection of bob's until it says so.
        let hidden = peer(d.alice_asks(lookup("bob")).await)?;
        assert_eq!(hidden.observed_addr, None);
        ask(&d.shared, &bob, set_reach(Reach::Anyone)).await?;
        let mallory = d.join("mallory", 9, false).await?;
        let open = peer(ask(&d.shared, &mallory, lookup("bob")).await)?;
        assert!(open.observed_addr.is_some());
        ask(&d.shared, &bob, set_reach(Reach::Contacts(vec![]))).await?;
        let closed = peer(ask(&d.shared, &mallory, lookup("bob")).await)?;
        assert_eq!(closed.observed_addr, None);
        Ok(())
    }

    #[tokio::test]
    async fn an_open_peer_keeps_its_exact_last_seen_time_once_offline() -> TestResult {
        let d = AliceAndBob::new(Quota::default()).await?;
        let (carol, link) = caller(3);
        let _feed = online(&d.shared, &carol, "carol").await?;
        ask(&d.shared, &carol, set_reach(Reach::Anyone)).await?;
        let day = 20_000 * STRANGER_LAST_SEEN_STEP_MS;
        assert!(d
            .shared
            .registry
            .remove_if(&name("carol"), link.id(), day + 42));
        d.shared.store.set_last_seen(&name("carol"), day + 42)?;
        let carol = peer(d.alice_asks(lookup("carol")).await)?;
        assert_eq!(carol.last_seen_ms, Some(day + 42));
        Ok(())
    }

    #[tokio::test]
    async fn a_peer_that_left_another_node_is_seen_before_this_replica_knows() -> TestResult {
        let d = AliceAndBob::new(Quota::default()).await?;
        let (carol, link) = caller(3);
        let _feed = online(&d.shared, &carol, "carol").await?;
        let day = 20_000 * STRANGER_LAST_SEEN_STEP_MS;
        assert!(d
            .shared
            .registry
            .remove_if(&name("carol"), link.id(), day + 42));
        d.shared.store.set_last_seen(&name("carol"), day + 42)?;
        // Carol came back on another node and left it a day later; this replica has not
        // applied that node's last-seen write yet, but the node said when she left.
        let left = day + STRANGER_LAST_SEEN_STEP_MS + 7;
        d.shared
            .registry
            .elsewhere(&name("carol"), false, true, left);
        let carol = peer(d.alice_asks(lookup("carol")).await)?;
        assert_eq!(carol.last_seen_ms, Some(left));
        Ok(())
    }

    /// The encryption key a peer publishes must be signed by its own key; the one it published
    /// last is what lookups hand out, online or not.
    #[tokio::test]
    async fn lookups_hand_out_the_published_key_only_its_owner_signed() -> TestResult {
        let d = AliceAndBob::new(Quota::default()).await?;
        let (mallory, _) = caller(9);
        let forged = DirectoryRequest::Register {
            name: name("mallory"),
            listen_addrs: Vec::new(),
            heartbeat_ms: 10_000,
            online: false,
            published: sealer(1).published(),
        };
        let refused = handle(&d.shared, &mallory, forged)
            .await
            .map(|r| r.response);
        assert_eq!(refused, Err(ErrorCode::BadPublishedKey));
        let bob = peer(d.alice_asks(lookup("bob")).await)?;
        assert_eq!(bob.published, Some(sealer(2).published()));
        // Bob comes back with another encryption key: lookups give the new one.
        let again = common::seal::Sealer::from_seed([2; 32], [99; 32])?;
        let (bob2, _) = caller(2);
        let register = DirectoryRequest::Register {
            name: name("bob"),
            listen_addrs: Vec::new(),
            heartbeat_ms: 10_000,
            online: false,
            published: again.published(),
        };
        handle(&d.shared, &bob2, register).await?;
        let bob = peer(d.alice_asks(lookup("bob")).await)?;
        assert_eq!(bob.published, Some(again.published()));
        Ok(())
    }

    /// A private room at the directory: its creator's log; a stranger can neither read it nor
    /// join; an invitation is stored and pushed to the new member, who can then read the log;
    /// an op out of date, one in someone else's name, and a second creation are refused.
    #[tokio::test]
    async fn a_room_log_takes_only_ops_members_would_accept() -> TestResult {
        use common::room::{Action, Kind, Op, RoomName};
        let mut d = AliceAndBob::new(Quota::default()).await?;
        let carol = d.join("carol", 3, true).await?;
        let room: RoomName = "#ops".parse()?;
        let key = |n: u8| ring::signature::Ed25519KeyPair::from_seed_unchecked(&[n; 32]);
        let op = |n: u8,
                  who: &str,
                  at: (u64, [u8; 32]),
                  action: Action|
         -> Result<Op, Box<dyn std::error::Error>> {
            let key = key(n).map_err(|e| e.to_string())?;
            Ok(Op::sign(&key, room.clone(), at, name(who), 1, action))
        };
        let create = op(
            1,
            "alice",
            (0, [0; 32]),
            Action::Create {
                kind: Kind::Private,
            },
        )?;
        let roomop = |op: &Op| DirectoryRequest::RoomOp { op: op.clone() };
        let log = DirectoryRequest::RoomLog {
            room: room.clone(),
            after: None,
        };
        assert_eq!(
            d.alice_asks(roomop(&create)).await,
            Ok(DirectoryResponse::Noted)
        );
        assert_eq!(
            d.alice_asks(roomop(&create)).await,
            Err(ErrorCode::RoomTaken)
        );
        let hidden = ask(&d.shared, &carol, log.clone()).await;
        assert_eq!(hidden, Err(ErrorCode::UnknownRoom));
        let at = (1, create.hash());
        let join = op(3, "carol", at, Action::Join)?;
        let refused = ask(&d.shared, &carol, roomop(&join)).await;
        assert_eq!(refused, Err(ErrorCode::RoomRefused));
        let in_alices_name = op(3, "alice", at, Action::Leave)?;
        let forged = ask(&d.shared, &carol, roomop(&in_alices_name)).await;
        assert_eq!(forged, Err(ErrorCode::NotSender));
        let invite = Action::Invite {
            name: name("bob"),
            key: test_key(2),
        };
        let invite = op(1, "alice", at, invite)?;
        assert_eq!(
            d.alice_asks(roomop(&invite)).await,
            Ok(DirectoryResponse::Noted)
        );
        assert_eq!(
            *d.bob.events.try_recv()?,
            DirectoryEvent::RoomOp(invite.clone())
        );
        let stale = op(1, "alice", at, Action::Kick { name: name("bob") })?;
        assert_eq!(
            d.alice_asks(roomop(&stale)).await,
            Err(ErrorCode::RoomRefused)
        );
        let (bob, _) = caller(2);
        ask(&d.shared, &bob, register("bob", false)).await?;
        let ops = ask(&d.shared, &bob, log).await;
        assert_eq!(ops, Ok(DirectoryResponse::RoomOps(vec![create, invite])));
        Ok(())
    }

    #[tokio::test]
    async fn lookups_are_limited_per_key() -> TestResult {
        let rates = Rates {
            lookups_per_key: 5,
            ..Rates::default()
        };
        let (_dir, shared) = directory_with(Config { rates, ..config() })?;
        let (mallory, _) = caller(9);
        ask(&shared, &mallory, register("mallory", false)).await?;
        for i in 0..5 {
            let answer = ask(&shared, &mallory, lookup(&format!("guess{i}"))).await;
            assert_eq!(answer, Err(ErrorCode::UnknownPeer), "{i}");
        }
        let limited = ask(&shared, &mallory, lookup("mallory")).await;
        assert_eq!(limited, Err(ErrorCode::RateLimited));
        let (other, _) = caller(8);
        ask(&shared, &other, register("other", false)).await?;
        let answer = ask(&shared, &other, lookup("mallory")).await;
        assert!(answer.is_ok(), "another key has its own: {answer:?}");
        Ok(())
    }

    #[tokio::test]
    async fn deposit_checks_sender_size_and_recipient_then_wakes_it() -> TestResult {
        let d = AliceAndBob::new(Quota::default()).await?;
        let forged = d.alice_asks(deposit(chat("bob", "alice", "hi"))).await;
        assert_eq!(forged, Err(ErrorCode::NotSender));
        let largest = Letter::max_sealed_len(LetterKind::Chat);
        let too_large = d.alice_asks(deposit_of_len(largest + 1)).await;
        assert_eq!(too_large, Err(ErrorCode::TooLarge));
        let unsealed = DirectoryRequest::Deposit {
            message: chat("alice", "bob", "hi"),
        };
        assert_eq!(d.alice_asks(unsealed).await, Err(ErrorCode::Unsealed));
        let unknown = d.alice_asks(deposit(chat("alice", "nobody", "hi"))).await;
        assert_eq!(unknown, Err(ErrorCode::UnknownPeer));
        assert_eq!(d.shared.store.usage(&name("bob"))?, (0, 0));

        let stored = d.alice_asks(deposit_of_len(largest)).await;
        assert_eq!(stored, Ok(DirectoryResponse::Stored));
        assert_eq!(d.shared.store.usage(&name("bob"))?.0, 1);
        // Bob's mailbox task is woken to deliver it.
        tokio::time::timeout(Duration::from_secs(5), d.bob.wake.notified()).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_full_mailbox_refuses_deposits() -> TestResult {
        let quota = Quota {
            max_messages: 1,
            ..Quota::default()
        };
        let d = AliceAndBob::new(quota).await?;
        let first = d.alice_asks(deposit(chat("alice", "bob", "1"))).await;
        assert_eq!(first, Ok(DirectoryResponse::Stored));
        let second = d.alice_asks(deposit(chat("alice", "bob", "2"))).await;
        assert_eq!(second, Err(ErrorCode::MailboxFull));
        Ok(())
    }

    fn introduce(who: &str) -> DirectoryRequest {
        DirectoryRequest::Introduce { name: name(who) }
    }

    #[tokio::test]
    async fn an_introduction_reaches_an_online_peer_with_the_callers_addresses() -> TestResult {
        let mut d = AliceAndBob::new(Quota::default()).await?;
        d.join("carol", 3, false).await?;
        let offline = d.alice_asks(introduce("carol")).await;
        assert_eq!(offline, Err(ErrorCode::Offline));
        let sent = d.alice_asks(introduce("bob")).await;
        assert_eq!(sent, Ok(DirectoryResponse::Introduced));
        let expected = DirectoryEvent::Introduction {
            name: name("alice"),
            key: test_key(1),
            addrs: vec![
                SocketAddr::from(([10, 0, 0, 1], 4000)),
                SocketAddr::from(([192, 168, 1, 2], 5000)),
            ],
        };
        assert_eq!(*d.bob.events.try_recv()?, expected);
        assert_eq!(d.shared.metrics.introductions.get(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn introductions_are_limited_per_key_host_and_target_across_connections() -> TestResult {
        let rates = Rates {
            introductions_per_key: 3,
            introductions_per_ip: 5,
            introductions_per_target: 8,
            ..Rates::default()
        };
        let (_dir, shared) = directory_with(Config { rates, ..config() })?;
        let (bob, _) = caller(2);
        // Bob's events are read from this feed: it must live for bob to be online.
        let _bob = online(&shared, &bob, "bob").await?;
        ask(&shared, &bob, set_reach(Reach::Anyone)).await?;
        // Mallory's key on three connections from one host: the key's budget is shared.
        let mut sent = 0;
        for n in 10..13 {
            let (mallory, _) = caller_from(n, 9, [10, 0, 9, 9]);
            ask(&shared, &mallory, register("mallory", false)).await?;
            for _ in 0..3 {
                if ask(&shared, &mallory, introduce("bob")).await.is_ok() {
                    sent += 1;
                }
            }
        }
        assert_eq!(sent, 3, "the key's budget");
        // A new key from the same host: what is left of the host's budget (3 of 5 spent).
        let (sybil, _) = caller_from(20, 20, [10, 0, 9, 9]);
        ask(&shared, &sybil, register("sybil", false)).await?;
        let answers = [
            ask(&shared, &sybil, introduce("bob")).await,
            ask(&shared, &sybil, introduce("bob")).await,
            ask(&shared, &sybil, introduce("bob")).await,
        ];
        let introduced = Ok(DirectoryResponse::Introduced);
        let expected = [introduced.clone(), introduced, Err(ErrorCode::RateLimited)];
        assert_eq!(answers, expected);
        // Other hosts: bob's budget of 8 runs out, whoever asks.
        let mut more = 0;
        for n in 30..40 {
            let (other, _) = caller_from(n, n, [10, 0, 1, n]);
            ask(&shared, &other, register(&format!("o{n}"), false)).await?;
            if ask(&shared, &other, introduce("bob")).await.is_ok() {
                more += 1;
            }
        }
        assert_eq!(sent + 2 + more, 8, "bob's budget");
        // Someone else can still be introduced to.
        let (carol, _) = caller(3);
        let _carol = online(&shared, &carol, "carol").await?;
        ask(&shared, &carol, set_reach(Reach::Anyone)).await?;
        let (dave, _) = caller(4);
        ask(&shared, &dave, register("dave", false)).await?;
        assert_eq!(
            ask(&shared, &dave, introduce("carol")).await,
            Ok(DirectoryResponse::Introduced)
        );
        Ok(())
    }

    #[test]
    fn the_default_target_budget_is_a_minute_of_introductions() {
        assert_eq!(
            Rates::default().introductions_per_target,
            INTRODUCTIONS_PER_TARGET_PER_MINUTE
        );
    }

    #[tokio::test]
    async fn a_new_name_keeps_to_the_rules_and_does_not_look_like_another() -> TestResult {
        let (_dir, shared) = directory(Quota::default())?;
        let (alice, _) = caller(1);
        online(&shared, &alice, "alice").await?;
        for bad in ["mallory-", "mal..lory", "mal-_lory"] {
            let (mallory, _) = caller(2);
            let refused = ask(&shared, &mallory, register(bad, true)).await;
            assert_eq!(refused, Err(ErrorCode::BadName), "{bad}");
        }
        for fake in ["a1ice", "ali-ce", "al.ice"] {
            let (mallory, _) = caller(2);
            let refused = ask(&shared, &mallory, register(fake, true)).await;
            assert_eq!(refused, Err(ErrorCode::NameLookalike), "{fake}");
            assert!(shared.store.name(&name(fake))?.is_none());
        }
        let (mallory, _) = caller(2);
        online(&shared, &mallory, "mallory").await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_key_holds_a_few_names() -> TestResult {
        let naming = Naming {
            names_per_key: 2,
            ..Naming::default()
        };
        let (_dir, shared) = directory_with(Config { naming, ..config() })?;
        for who in ["n1", "n2"] {
            let (c, _) = caller(1);
            ask(&shared, &c, register(who, false)).await?;
        }
        let (c, _) = caller(1);
        let third = ask(&shared, &c, register("n3", false)).await;
        assert_eq!(third, Err(ErrorCode::TooManyNames));
        // Its names still work.
        let (c, _) = caller(1);
        ask(&shared, &c, register("n1", true)).await?;
        Ok(())
    }

    #[tokio::test]
    async fn new_names_are_rate_limited_per_host_but_known_names_are_not() -> TestResult {
        let rates = Rates {
            name_binds_per_ip: 3,
            ..Rates::default()
        };
        let (_dir, shared) = directory_with(Config { rates, ..config() })?;
        for k in 0..3 {
            let (c, _) = caller_from(k, k, [10, 0, 0, 1]);
            ask(&shared, &c, register(&format!("n{k}"), false)).await?;
        }
        let (c, _) = caller_from(9, 9, [10, 0, 0, 1]);
        let limited = ask(&shared, &c, register("n9", false)).await;
        assert_eq!(limited, Err(ErrorCode::RateLimited));
        // A name already held registers from that host as often as it likes.
        for _ in 0..10 {
            let (c, _) = caller_from(0, 0, [10, 0, 0, 1]);
            ask(&shared, &c, register("n0", false)).await?;
        }
        // Another host has its own budget.
        let (c, _) = caller_from(9, 9, [10, 0, 0, 2]);
        ask(&shared, &c, register("n9", false)).await?;
        Ok(())
    }

    #[tokio::test]
    async fn leaving_and_registering_are_written_by_the_writer() -> TestResult {
        let (_dir, shared) = directory(Quota::default())?;
        let (alice, _) = caller(1);
        online(&shared, &alice, "alice").await?;
        let record = shared.store.name(&name("alice"))?.ok_or("not bound")?;
        assert!(record.active_ms > 0);
        shared.writer.set_last_seen(name("alice"), 42).await?;
        let record = shared.store.name(&name("alice"))?.ok_or("not bound")?;
        assert_eq!(record.last_seen_ms, Some(42));
        Ok(())
    }

    fn file_part(from: &str, to: &str, file_name: &str) -> DirectoryRequest {
        DirectoryRequest::DepositLetter {
            letter: letter(Content::FilePart(empty_part(from, to, file_name))),
        }
    }

    #[tokio::test]
    async fn deposits_are_refused_by_field_caps_sender_share_and_store_size() -> TestResult {
        let quota = Quota {
            sender_messages: 2,
            ..Quota::default()
        };
        let d = AliceAndBob::new(quota).await?;
        let unsealed = DirectoryRequest::DepositFilePart {
            part: empty_part("alice", "bob", "n"),
        };
        assert_eq!(d.alice_asks(unsealed).await, Err(ErrorCode::Unsealed));
        let longest = "n".repeat(MAX_FILE_NAME_LEN);
        let stored = d.alice_asks(file_part("alice", "bob", &longest)).await;
        assert_eq!(stored, Ok(DirectoryResponse::Stored));
        // An empty part counts what it stores, the file name first.
        assert!(d.shared.store.usage(&name("bob"))?.1 > MAX_FILE_NAME_LEN as u64);
        d.alice_asks(deposit(chat("alice", "bob", "2"))).await?;
        let third = d.alice_asks(deposit(chat("alice", "bob", "3"))).await;
        assert_eq!(third, Err(ErrorCode::SenderQuotaFull));
        let carol = d.join("carol", 3, false).await?;
        let other = ask(&d.shared, &carol, deposit(chat("carol", "bob", "hi"))).await;
        assert_eq!(other, Ok(DirectoryResponse::Stored));

        let full = Quota {
            total_bytes: 1,
            ..Quota::default()
        };
        let d = AliceAndBob::new(full).await?;
        let refused = d.alice_asks(deposit(chat("alice", "bob", "hi"))).await;
        assert_eq!(refused, Err(ErrorCode::StoreFull));
        let no_disk = Quota {
            min_free_disk: u64::MAX,
            ..Quota::default()
        };
        let d = AliceAndBob::new(no_disk).await?;
        let refused = d.alice_asks(deposit(chat("alice", "bob", "hi"))).await;
        assert_eq!(refused, Err(ErrorCode::StoreFull));
        Ok(())
    }

    #[tokio::test]
    async fn punch_outcomes_are_counted_and_logged_at_most_once_a_minute() -> TestResult {
        let (_dir, shared) = directory(Quota::default())?;
        let start = Instant::now();
        punch_outcome(&shared, true, start);
        punch_outcome(&shared, false, start + Duration::from_secs(59));
        let logged = *shared
            .metrics
            .punch_logged
            .lock()
            .map_err(|e| e.to_string())?;
        assert_eq!(logged, Some(start));
        punch_outcome(&shared, true, start + PUNCH_LOG_EVERY);
        let logged = *shared
            .metrics
            .punch_logged
            .lock()
            .map_err(|e| e.to_string())?;
        assert_eq!(logged, Some(start + PUNCH_LOG_EVERY));
        assert_eq!(shared.metrics.punched(true), (3, 1), "two before this one");
        Ok(())
    }
}
