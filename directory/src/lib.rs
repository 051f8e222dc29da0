//! The directory: a rendezvous server that binds names to keys, knows who is online and where,
//! and keeps a durable mailbox for peers that cannot be reached directly.
//!
//! # Layout
//!
//! Each module uses only modules listed after it:
//!
//! * [`server`]: the accept loop: connection cap, one task per connection, shutdown; every task
//!   the directory runs hangs off its `JoinSet`; and the metrics page, if asked for.
//! * [`admission`]: which incoming connections are served, from their first packet: the
//!   global cap, a stateless Retry under load, connections and new connections per host.
//! * [`session`]: one peer's QUIC connection: request frames in, response frames out, one task
//!   per request stream, and the mailbox task once the peer is online.
//! * [`mailbox`]: the driver of an online peer's event stream: does the I/O its [`window`] asks
//!   for, and forwards introductions.
//! * [`window`]: the delivery window as a state machine without I/O: what to send, when to read
//!   more, what to remove, when the mailbox is idle.
//! * [`service`]: the answer to each request, knowing nothing of QUIC: register, lookup,
//!   deposit, introduce.
//! * [`state`]: what every connection shares: store, writer, registry, settings, counters,
//!   allowances, the cluster.
//! * [`cluster`]: what the nodes of a cluster tell each other at once over NATS: who is online
//!   where (lookups and introductions across nodes), presence, and changes applied from the
//!   store's log that concern the peers connected here.
//! * [`metrics`]: the counters and histograms, for logs and Prometheus (served by `server`).
//! * [`rates`]: token buckets: introductions per key, host and target; new names per host.
//! * [`rooms`]: each room's signed membership log: checked as members check it, stored,
//!   handed out a page at a time, pushed to the room's online members.
//! * [`registry`]: who is online now, on which connection, at which addresses; why a live QUIC
//!   connection is what online means.
//! * [`store`]: the durable state (name bindings, mailbox) behind a trait: the redb backend, the
//!   group-commit writer, the upgrade of older files.
//!
//! # Path of a mailbox message
//!
//! 1. `session` reads a `Deposit` frame from one of the sender's request streams and passes the
//!    request to `service`.
//! 2. `service` checks that the sender registered, is the message's sender and kept to the size
//!    limit, and that the recipient's name is bound. It hands the message to the
//!    [`store::Writer`], which commits it together with whatever else is waiting (group
//!    commit); only then does the sender get `Stored`. If the recipient is online, `service`
//!    wakes its mailbox task through the `registry`.
//! 3. The recipient's `mailbox` task (its session started it when `Register` brought it online)
//!    asks its `window` what to do: read the store after the last message sent, then write
//!    `Deliver` on the recipient's event stream, at most a window ahead of its acks.
//! 4. On the recipient's `Delivered` ack, the window asks for the message's removal; the writer
//!    commits it with a receipt for the sender, whose own mailbox task is woken to deliver it.
//!    Once every removal has committed and nothing more is held, the window sends
//!    `MailboxIdle`.

pub mod admission;
pub mod cluster;
pub mod mailbox;
pub mod metrics;
pub mod rates;
pub mod registry;
pub mod rooms;
pub mod server;
pub mod service;
pub mod session;
pub mod state;
pub mod store;
pub mod window;

pub use admission::Limits;
pub use server::run;
pub use state::Config;
