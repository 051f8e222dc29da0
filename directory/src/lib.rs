//! The directory: a rendezvous server that binds names to keys, knows who is online and where,
//! and keeps a durable mailbox for peers that cannot be reached directly.
//!
//! # Layout
//!
//! * [`server`]: the accept loop: connection cap, one task per connection, shutdown.
//! * [`session`]: one peer's connection: its requests in, responses out.
//! * [`registry`]: who is online now, on which connection, at which addresses; why a live QUIC
//!   connection is what online means.
//! * [`mailbox`]: pushes held messages to an online recipient and deletes them once acknowledged.
//! * [`store`]: the durable state (name bindings, mailbox) in redb, behind a small trait.
//!
//! # Path of a mailbox message
//!
//! `session` receives `Deposit`, checks the sender and size, and hands the message to the
//! [`store::Writer`], which commits it together with whatever else is waiting (group commit).
//! Only then does the sender get `Stored`. If the recipient is online, `session` wakes its
//! `mailbox` task, which writes `Deliver` on the recipient's event stream; on the recipient's
//! `Delivered` ack, the message is removed.

pub mod mailbox;
pub mod registry;
pub mod server;
pub mod service;
pub mod session;
pub mod state;
pub mod store;
pub mod window;

pub use server::run;
pub use state::Config;
