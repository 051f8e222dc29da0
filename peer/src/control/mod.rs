//! The control socket: a Unix socket in the home folder through which other `peer` commands for
//! the same name use the running `listen` or `chat` process instead of bringing up a second
//! endpoint. The running process stays the one online presence and sees every message.
//!
//! Ownership of the socket goes with an exclusive lock on `HOME/peer.lock`, held for the life
//! of the running process, so two processes never both think they serve the name.
//!
//! * [`protocol`]: the requests and answers.
//! * [`server`]: the running peer's side, on top of the [`crate::service::Service`].
//! * [`client`]: a short command's side.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::ControlClient;
pub use server::serve;

use crate::home::Home;
use anyhow::{Context, Result};
use std::{fs::File, path::PathBuf};

/// Held while this process serves the control socket; removes the socket when dropped.
#[derive(Debug)]
pub struct ControlGuard {
    pub(crate) _lock: File,
    pub(crate) path: PathBuf,
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the home's lock. `None` when another process holds it.
pub fn lock(home: &Home) -> Result<Option<File>> {
    let path = home.path().join("peer.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("locking the home folder"),
    }
}
