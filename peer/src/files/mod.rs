//! File transfer, all of it: sending a file to a peer (directly, else through its mailbox, else
//! waiting for it), receiving one (on a direct stream, or in parts from the mailbox), and the
//! downloads folder where it collects until it is whole.
//!
//! ```text
//! sender                                   receiver
//!  | -- bi: FileStream{name,size,key} -----> |  checks the sender like a chat message
//!  | <- FileAccept{offset} ----------------- |  offset = bytes kept from an earlier attempt
//!  | -- raw bytes offset..size ------------> |  appended to DOWNLOADS/.partial/FROM-KEY.part
//!  | -- BLAKE3 of the whole file, finish --> |  hashed while sending, not before
//!  | <- FileDone{ok} ----------------------- |  hash checked, file moved to a safe new name
//! ```
//!
//! Memory stays constant whatever the size: bytes go from disk to the stream and from the
//! stream to disk a few fixed-size chunks at a time. The sender hashes the file as it reads
//! it for sending, so the first byte leaves at once and the file is read once, not twice. The
//! partial file is named after the sender and a resume key the sender derives from the file's
//! path, size and modification time, so sending the same file again resumes where the last
//! attempt stopped; should the file have changed anyway, the hash check fails and the partial
//! is discarded. The receiver never trusts the offered name: it keeps only a plain file name
//! of safe characters and never overwrites an existing file.
//!
//! When no direct link can be made, a file of at most the sender's mailbox limit goes through
//! the directory's mailbox instead, in [`FilePart`](common::wire::FilePart)s of
//! [`FILE_PART_LEN`](common::defaults::FILE_PART_LEN) bytes deposited in order; the receiver
//! appends each to the same partial file and checks the hash after the last. A larger file
//! waits for the recipient ([`Sender::send`]).
//!
//! # Layout
//!
//! * here: the shared types, [`Sender`] (which way a file goes), [`Receiver`] (where arriving
//!   files go), and hashing a file;
//! * [`send`]: the direct sender: one file on a stream of its own;
//! * [`receive`]: the direct receiver, which also takes over from an older transfer of the same
//!   file;
//! * [`parts`]: files through the mailbox, both ways: depositing parts, taking them in;
//! * [`downloads`]: the downloads folder: partial files, pruning them, safe names, storing.

use crate::{directory_client::DirectoryClient, failure::Failure, inbox::Inbox, links::DirectPath};
use anyhow::{anyhow, bail, Context, Result};
use common::{
    wire::{FileHeader, MessageId, PeerInfo},
    Name,
};
use std::{
    collections::HashMap,
    fs::File,
    future::Future,
    io::Read,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::Notify;
use tracing::debug;

pub mod downloads;
pub mod parts;
pub mod receive;
pub mod send;

/// Bytes moved per read or write.
const CHUNK: usize = 256 * 1024;

/// Chunks between the disk and the stream, per file and side: read ahead of the stream when
/// sending, taken off the stream ahead of the disk when receiving (8 MiB). A deeper queue
/// absorbs a flush or a scheduling hiccup on either side: 32 against 8 moved a 256 MiB file
/// about a tenth faster here.
const IN_FLIGHT_CHUNKS: usize = 32;

/// Longest pause between two attempts to send a file that waits for its recipient.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The outcome of sending a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSent {
    /// The recipient.
    pub to: Name,
    /// Its size.
    pub size: u64,
    /// Its BLAKE3 hash.
    pub hash: [u8; 32],
    /// Bytes the recipient already had from an earlier attempt.
    pub resumed_from: u64,
    /// The direct path it went over; `None` when it went into the recipient's mailbox.
    pub path: Option<DirectPath>,
}

/// What [`Sender::send`] tells its caller along the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileUpdate {
    /// The recipient (or its mailbox) has `done` bytes of `total`.
    Progress {
        /// Bytes the recipient has.
        done: u64,
        /// The file's size.
        total: u64,
    },
    /// Why the file does not leave yet; for the user.
    Waiting(String),
}

/// What sending a file needs of the running peer.
pub struct Sender<'a, Dial> {
    /// Our name.
    pub me: &'a Name,
    /// Looks the recipient up, and takes the parts of a file for its mailbox.
    pub directory: &'a DirectoryClient,
    /// Seals the parts of a file for the mailbox.
    pub letters: &'a crate::letters::Letters,
    /// Makes a direct link to the peer the directory found online, within the direct timeout;
    /// `None` when no direct path came up.
    pub dial: Dial,
    /// Largest file sent through the mailbox when there is no direct link.
    pub mailbox_file_max: u64,
}

impl<Dial, Dialed> Sender<'_, Dial>
where
    Dial: Fn(PeerInfo) -> Dialed,
    Dialed: Future<Output = Option<(quinn::Connection, DirectPath)>>,
{
    /// Sends the file at `path` to `to`. Over a direct link when one can be made; otherwise a
    /// file of at most the mailbox limit goes into `to`'s mailbox, and a larger one waits until
    /// `to` is back (and a transfer cut short resumes), for as long as this runs. `report`
    /// hears how many bytes the recipient has (at most every 100 ms), and why it waits.
    pub async fn send(
        &self,
        to: &Name,
        path: &Path,
        report: impl Fn(FileUpdate) + Send + Sync + 'static,
    ) -> Result<FileSent, Failure> {
        let (size, resume_key) = send::describe(path).await?;
        let header = FileHeader {
            id: MessageId::random(),
            from: self.me.clone(),
            to: to.clone(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into()),
            size,
            resume_key,
            sent_at_ms: common::now_ms(),
        };
        let report = Arc::new(report);
        let mut backoff = Duration::from_secs(1);
        let mut told = false;
        loop {
            let info = self
                .directory
                .lookup(to)
                .await
                .map_err(|e| e.failure(to, self.directory.addr()))?;
            let stranger = info.online && info.observed_addr.is_none();
            let recipient = info.clone();
            let why = if stranger {
                "not accepting direct links from you (you are not in its contacts)"
            } else if info.online {
                let sent = match (self.dial)(info).await {
                    Some((conn, link)) => send::send(&conn, link, &header, path, &report).await,
                    None => Err(send::SendError::Interrupted(anyhow!("no direct link"))),
                };
                match sent {
                    Ok(sent) => return Ok(sent),
                    Err(send::SendError::Final(e)) => return Err(e.into()),
                    Err(send::SendError::Interrupted(e)) => {
                        debug!(cause = %format!("{e:#}"), "direct file transfer failed");
                        "unreachable"
                    }
                }
            } else {
                "offline"
            };
            if size <= self.mailbox_file_max {
                let mailbox = parts::Mailbox {
                    directory: self.directory,
                    letters: self.letters,
                    recipient: &recipient,
                };
                return parts::deposit(mailbox, &header, path, &*report).await;
            }
            if !told {
                told = true;
                report(FileUpdate::Waiting(format!(
                    "{to} is {why}, and {:?} ({}) is over the {} limit for the mailbox: it goes \
                     directly once {to} can be reached, as long as this runs",
                    header.name,
                    indicatif::HumanBytes(size),
                    indicatif::HumanBytes(self.mailbox_file_max)
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// Where arriving files go: the downloads folder, the files arriving into it directly now,
/// and the inbox that hears of each file stored; cheap to clone. Direct transfers come
/// through [`Receiver::direct`], parts from the mailbox through [`Receiver::take_part`].
#[derive(Clone)]
pub struct Receiver {
    downloads: PathBuf,
    inbox: Inbox,
    /// Files arriving directly now, by partial file: a newer transfer of the same file from
    /// the same sender (after the sender restarted) takes over from the stalled older one.
    arriving: Arc<Mutex<HashMap<PathBuf, Arc<Notify>>>>,
    /// Direct transfers arriving at once, at most [`TRANSFERS`].
    transfers: Arc<tokio::sync::Semaphore>,
}

/// Files that arrive directly at once; more wait for one to end.
pub const TRANSFERS: usize = 8;

impl Receiver {
    /// Files arrive into `downloads`, and `inbox` hears of each.
    pub fn new(downloads: PathBuf, inbox: Inbox) -> Self {
        Self {
            downloads,
            inbox,
            arriving: Arc::default(),
            transfers: Arc::new(tokio::sync::Semaphore::new(TRANSFERS)),
        }
    }

    /// Files arriving directly now, by partial file.
    fn arriving(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<Notify>>> {
        self.arriving.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// BLAKE3 hash and size of the file at `path`, read once in fixed-size chunks.
pub async fn hash_file(path: &Path) -> Result<([u8; 32], u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file =
            File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        if !file.metadata()?.is_file() {
            bail!("{} is not a file", path.display());
        }
        let (hasher, size) =
            hash_rest(&mut file).with_context(|| format!("reading {}", path.display()))?;
        Ok((*hasher.finalize().as_bytes(), size))
    })
    .await?
}

/// Hashes what is left of `file` to read, in fixed-size chunks; returns the hash so far and
/// how many bytes it covers.
fn hash_rest(file: &mut File) -> std::io::Result<(blake3::Hasher, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}
