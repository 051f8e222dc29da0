//! File transfer over a direct stream of its own.
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
//! the directory's mailbox instead, in [`FilePart`]s of [`FILE_PART_LEN`] bytes deposited in
//! order ([`Parts`]); the receiver appends each to the same partial file ([`write_part`]) and
//! checks the hash after the last. A larger file waits for the recipient (see
//! [`crate::node::Node::send_file`]).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use common::{
    defaults::FILE_PART_LEN,
    framing,
    wire::{FileHeader, FileOffer, FilePart, FileRefusal, MessageId, PeerFrame},
    Name,
};
use std::{
    fs::{self, File},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};
use tokio::{
    io::AsyncReadExt,
    sync::{mpsc, watch},
};

/// Largest file a peer accepts.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Largest file a peer takes through the mailbox: the directory's default quota per recipient.
/// Senders keep to their own, smaller limit; this bounds what a sender that does not can make
/// us write.
pub const MAX_MAILBOX_FILE: u64 = common::defaults::MAILBOX_QUOTA_BYTES;

/// Partial files untouched for this long are deleted when the peer starts: their transfers are
/// not coming back, and they hold disk space.
pub const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Bytes moved per read or write.
const CHUNK: usize = 256 * 1024;

/// Chunks between the disk and the stream, per file and side: read ahead of the stream when
/// sending, taken off the stream ahead of the disk when receiving (8 MiB). A deeper queue
/// absorbs a flush or a scheduling hiccup on either side: 32 against 8 moved a 256 MiB file
/// about a tenth faster here.
const IN_FLIGHT_CHUNKS: usize = 32;

/// While a file arrives, what has been written is flushed to disk each time this many more
/// bytes are written, on a thread of its own: the fsync that must come before `FileDone` then
/// has little left to write, instead of the whole file (a tenth of a second per 256 MiB here).
const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

/// Folder, inside the downloads folder, for files still arriving.
const PARTIAL_DIR: &str = ".partial";

/// A file that arrived whole and checked.
#[derive(Debug, Clone)]
pub struct ReceivedFile {
    /// The sender.
    pub from: Name,
    /// Where it is stored.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its BLAKE3 hash.
    pub hash: [u8; 32],
    /// Sender's clock at the offer.
    pub sent_at_ms: u64,
    /// Bytes kept from an earlier, interrupted attempt.
    pub resumed_from: u64,
    /// How it came: directly, or through the mailbox in parts.
    pub via: crate::inbox::Via,
}

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
    pub path: Option<crate::links::DirectPath>,
}

/// Why [`send`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The transfer cannot succeed as it is: the recipient refused the file or found its hash
    /// wrong, or the file could not be read here. Trying again changes nothing.
    #[error("{0:#}")]
    Final(anyhow::Error),
    /// The link failed; the recipient keeps what it has, and a new attempt resumes there.
    #[error("{0:#}")]
    Interrupted(anyhow::Error),
}

/// Size and resume key ([`resume_key`]) of the file at `path`, which must be a regular file.
pub async fn describe(path: &Path) -> Result<(u64, [u8; 32])> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let meta =
            fs::metadata(&path).with_context(|| format!("cannot open {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a file", path.display());
        }
        Ok((meta.len(), resume_key(&path, &meta)))
    })
    .await?
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

/// Sends the file at `path`, described by `header`, on a new stream of `conn`. `progress`
/// counts the bytes the recipient has, including those it kept from an earlier attempt.
/// Returns how many bytes the recipient had kept, and the file's BLAKE3 hash.
pub async fn send(
    conn: &quinn::Connection,
    header: FileHeader,
    path: &Path,
    progress: &watch::Sender<u64>,
) -> Result<(u64, [u8; 32]), SendError> {
    use SendError::{Final, Interrupted};
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Interrupted(anyhow!("opening a file stream: {e}")))?;
    framing::write_frame(&mut send, &PeerFrame::FileStream(header.clone()))
        .await
        .map_err(|e| Interrupted(e.into()))?;
    let answer = framing::read_frame::<PeerFrame, _>(&mut recv).await;
    let offset = match answer.map_err(|e| Interrupted(e.into()))? {
        Some(PeerFrame::FileAccept { offset }) if offset <= header.size => offset,
        Some(PeerFrame::FileRefused(why)) => {
            return Err(Final(anyhow!("{} refused the file: {why}", header.to)))
        }
        other => {
            return Err(Final(anyhow!(
                "unexpected answer to a file offer: {other:?}"
            )))
        }
    };
    progress.send_replace(offset);
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))
        .map_err(Final)?;
    let (mut chunks, hashed) = read_ahead(file.into_std().await, offset, header.size);
    let mut done = offset;
    while let Some(chunk) = chunks.recv().await {
        done += chunk.len() as u64;
        // The chunk is handed to quinn as it is: no copy into the stream's buffer.
        send.write_chunk(chunk)
            .await
            .map_err(|e| Interrupted(anyhow!("the file stream failed: {e}")))?;
        progress.send_replace(done);
    }
    let hash = hashed
        .await
        .map_err(|e| Final(e.into()))?
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Final)?;
    send.write_all(&hash)
        .await
        .map_err(|e| Interrupted(anyhow!("the file stream failed: {e}")))?;
    send.finish().map_err(|e| Interrupted(e.into()))?;
    let answer = framing::read_frame::<PeerFrame, _>(&mut recv).await;
    match answer.map_err(|e| Interrupted(e.into()))? {
        Some(PeerFrame::FileDone { ok: true }) => Ok((offset, hash)),
        Some(PeerFrame::FileDone { ok: false }) => Err(Final(anyhow!(
            "{} received the file but its hash did not match (did the file change while it \
             was being sent?); send it again",
            header.to
        ))),
        None => Err(Interrupted(anyhow!(
            "the file stream ended before the recipient confirmed"
        ))),
        other => Err(Final(anyhow!(
            "unexpected answer after the file: {other:?}"
        ))),
    }
}

/// What names a file on the sender's side for resuming (see [`FileHeader::resume_key`]): its
/// canonical path, size and modification time, hashed.
pub fn resume_key(path: &Path, meta: &fs::Metadata) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("p2pchat 2026-11 file resume key");
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let path = path.as_os_str().as_encoded_bytes();
    hasher.update(&(path.len() as u64).to_le_bytes());
    hasher.update(path);
    hasher.update(&meta.len().to_le_bytes());
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    hasher.update(&modified.as_nanos().to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// Reads the first `size` bytes of `file` in [`CHUNK`]s on a thread of its own, hashing all
/// of them, and sends those from `offset` on through the channel, a few chunks ahead of the
/// stream, so that reading and hashing overlap sending. The task's result is the hash, or an
/// error if the file could not be read or is shorter than `size`; the channel then ends early.
fn read_ahead(
    file: File,
    offset: u64,
    size: u64,
) -> (
    mpsc::Receiver<Bytes>,
    tokio::task::JoinHandle<std::io::Result<[u8; 32]>>,
) {
    let (chunks, read) = mpsc::channel(IN_FLIGHT_CHUNKS);
    let hashed = tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let mut file = file.take(size);
        let mut at = 0u64;
        loop {
            // The kept prefix is only hashed, in chunks that end where sending starts.
            let want = if at < offset {
                (offset - at).min(CHUNK as u64)
            } else {
                CHUNK as u64
            };
            let mut chunk = Vec::with_capacity(want as usize);
            if (&mut file).take(want).read_to_end(&mut chunk)? == 0 {
                break;
            }
            hasher.update(&chunk);
            let start = at;
            at += chunk.len() as u64;
            if start >= offset && chunks.blocking_send(Bytes::from(chunk)).is_err() {
                break; // the stream failed; its error is the one reported
            }
        }
        if at < size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            ));
        }
        Ok(*hasher.finalize().as_bytes())
    });
    (read, hashed)
}

/// A file read as mailbox parts, in order, each at most [`FILE_PART_LEN`] bytes (one empty part
/// for an empty file). Part ids are derived from the offer's id and the offset, so depositing a
/// part again is a no-op.
pub struct Parts {
    file: tokio::fs::File,
    offer: FileOffer,
    offset: u64,
    finished: bool,
}

impl Parts {
    /// Opens the file at `path`, which `offer` describes.
    pub async fn open(offer: FileOffer, path: &Path) -> Result<Self> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            file,
            offer,
            offset: 0,
            finished: false,
        })
    }

    /// The next part; `None` after the last.
    pub async fn next(&mut self) -> Result<Option<FilePart>> {
        if self.finished {
            return Ok(None);
        }
        let want = FILE_PART_LEN.min((self.offer.size - self.offset) as usize);
        let mut data = vec![0u8; want];
        self.file
            .read_exact(&mut data)
            .await
            .context("reading the file")?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.offer.id.0);
        hasher.update(&self.offset.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        let part = FilePart {
            id: MessageId(id),
            offer: self.offer.clone(),
            offset: self.offset,
            data,
        };
        self.offset += want as u64;
        self.finished = self.offset >= self.offer.size;
        Ok(Some(part))
    }
}

/// Receives the file `header` describes into `downloads`; `send`/`recv` are the file stream,
/// its header already read and its sender already checked.
pub async fn receive(
    downloads: &Path,
    header: FileHeader,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<ReceivedFile> {
    if header.size > MAX_FILE_SIZE {
        framing::write_frame(send, &PeerFrame::FileRefused(FileRefusal::TooLarge)).await?;
        bail!(
            "refused a file of {} bytes from {}",
            header.size,
            header.from
        );
    }
    let partial_path = partial_path(downloads, &header.from, &header.resume_key);
    // An older transfer of this file that is being taken over may hold the lock a moment.
    let mut opened = Err(anyhow!("not tried"));
    for _ in 0..40 {
        let path = partial_path.clone();
        opened = tokio::task::spawn_blocking(move || open_partial(&path)).await?;
        match &opened {
            Err(e) if e.downcast_ref::<Busy>().is_some() => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            _ => break,
        }
    }
    let (file, mut hasher, mut offset) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            framing::write_frame(send, &PeerFrame::FileRefused(FileRefusal::CannotStore)).await?;
            return Err(e);
        }
    };
    // A longer partial is not this file's prefix; start over.
    if offset > header.size {
        file.set_len(0)?;
        hasher = blake3::Hasher::new();
        offset = 0;
    }
    framing::write_frame(send, &PeerFrame::FileAccept { offset }).await?;
    // Hashing and writing run on a thread of their own, fed chunk by chunk, so that they
    // overlap with taking the next bytes off the network instead of alternating with it.
    let (chunks, taken) = mpsc::channel::<Vec<u8>>(IN_FLIGHT_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || write_chunks(file, hasher, taken));
    let mut have = offset;
    let read = async {
        while have < header.size {
            // Whole chunks: BLAKE3 hashes a large update on several lanes at once.
            let want = CHUNK.min((header.size - have) as usize);
            let mut chunk = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                match recv
                    .read(&mut chunk[filled..])
                    .await
                    .context("the file stream failed")?
                {
                    Some(n) => filled += n,
                    None => break,
                }
            }
            chunk.truncate(filled);
            have += filled as u64;
            if filled == 0 || chunks.send(chunk).await.is_err() {
                // The stream ended early, or the writer failed (its error is the one reported).
                return Ok(None);
            }
        }
        let mut hash = [0u8; 32];
        recv.read_exact(&mut hash)
            .await
            .context("the file stream ended before the file's hash")?;
        // The end of the stream must follow; anything more breaks the protocol.
        recv.read_to_end(0)
            .await
            .with_context(|| format!("{} sent more than the file and its hash", header.from))?;
        Ok::<_, anyhow::Error>(Some(hash))
    };
    let read = read.await;
    drop(chunks);
    let hasher = writer.await?.context("writing the file")?;
    let Some(hash) = read? else {
        bail!(
            "the file stream ended after {have} of {} bytes; kept for resuming",
            header.size
        );
    };
    if *hasher.finalize().as_bytes() != hash {
        let _ = fs::remove_file(&partial_path);
        framing::write_frame(send, &PeerFrame::FileDone { ok: false }).await?;
        bail!(
            "a file from {} did not match its hash; discarded",
            header.from
        );
    }
    let path = tokio::task::spawn_blocking({
        let (downloads, name) = (downloads.to_path_buf(), safe_name(&header.name));
        move || store(&partial_path, &downloads, &name)
    })
    .await??;
    framing::write_frame(send, &PeerFrame::FileDone { ok: true }).await?;
    let _ = send.finish();
    Ok(ReceivedFile {
        from: header.from,
        path,
        size: header.size,
        hash,
        sent_at_ms: header.sent_at_ms,
        resumed_from: offset,
        via: crate::inbox::Via::Direct,
    })
}

/// Appends every chunk from `taken` to `file` and to `hasher`, then syncs the file. Meanwhile
/// a second thread flushes what is written every [`FLUSH_EVERY`] bytes and lets the page cache
/// drop each newly flushed stretch ([`drop_cached`]); the whole file goes after the last sync.
/// Blocking.
fn write_chunks(
    mut file: File,
    mut hasher: blake3::Hasher,
    mut taken: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<blake3::Hasher> {
    let mut written = file.seek(SeekFrom::End(0))?;
    let flushing = file.try_clone()?;
    std::thread::scope(|scope| {
        // One flush at a time, up to the length sent; a request while one runs is dropped,
        // the next covers it.
        let (flush, flushes) = std::sync::mpsc::sync_channel::<u64>(1);
        let flusher = scope.spawn(move || -> std::io::Result<()> {
            let mut dropped = 0;
            while let Ok(upto) = flushes.recv() {
                flushing.sync_data()?;
                drop_cached(&flushing, dropped, upto);
                dropped = upto;
            }
            Ok(())
        });
        let mut unflushed = 0;
        let wrote = (|| {
            while let Some(chunk) = taken.blocking_recv() {
                hasher.update(&chunk);
                file.write_all(&chunk)?;
                written += chunk.len() as u64;
                unflushed += chunk.len() as u64;
                if unflushed >= FLUSH_EVERY {
                    let _ = flush.try_send(written);
                    unflushed = 0;
                }
            }
            Ok(())
        })();
        drop(flush);
        // A write-back error is reported to one fsync only, possibly the flusher's: both count.
        let flushed = flusher
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the flushing thread panicked")));
        wrote.and(flushed)?;
        file.sync_all()?;
        drop_cached(&file, 0, written);
        Ok(hasher)
    })
}

/// Tells the kernel that bytes `from..to` of `file`, already flushed, will not be read again
/// soon, so that their pages leave the page cache now. A large file arriving then does not push
/// what the user works with out of memory, and the pages it frees are the ones its next writes
/// reuse. Advice only: where it is not supported, nothing happens.
fn drop_cached(file: &File, from: u64, to: u64) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let _ = (file, from, to);
}

/// What became of a part of a file from the mailbox.
#[derive(Debug)]
pub enum PartOutcome {
    /// Written (or already held); more parts follow.
    Kept,
    /// The last part: the file is whole, checked and stored.
    Complete(ReceivedFile),
    /// The file cannot be completed (a part is missing, or the hash does not match) and was
    /// dropped; the reason is for the user.
    Discarded(String),
}

/// Writes one part of a file from the mailbox into the partial file its offer names (the same
/// one a direct transfer of that file uses), durably, so that it may be acknowledged. Parts
/// come in order; one already held is skipped. The last part checks the hash and stores the
/// file as [`receive`] does. Blocking.
pub fn write_part(downloads: &Path, part: &FilePart) -> Result<PartOutcome> {
    let offer = &part.offer;
    if !part.fits_offer() {
        return Ok(PartOutcome::Discarded(format!(
            "a part of {:?} from {} lies outside the file; dropped",
            offer.name, offer.from
        )));
    }
    if offer.size > MAX_MAILBOX_FILE {
        // Said once, at the first part; the others are dropped quietly.
        return Ok(if part.offset == 0 {
            PartOutcome::Discarded(format!(
                "{:?} from {} came through the mailbox but is over the {MAX_MAILBOX_FILE} byte \
                 limit for files from the mailbox; dropped",
                offer.name, offer.from
            ))
        } else {
            PartOutcome::Kept
        });
    }
    let end = part.offset + part.data.len() as u64;
    let path = partial_path(downloads, &offer.from, &offer.hash);
    let mut file = lock_partial(&path)?;
    let len = file.metadata()?.len();
    if part.offset > len {
        // An earlier part is missing: the file cannot be completed from here on.
        return Ok(if part.is_last() {
            let _ = fs::remove_file(&path);
            PartOutcome::Discarded(format!(
                "{:?} from {} came through the mailbox incomplete; dropped",
                offer.name, offer.from
            ))
        } else {
            PartOutcome::Kept
        });
    }
    if end > len {
        file.set_len(part.offset)?;
        file.seek(SeekFrom::Start(part.offset))?;
        file.write_all(&part.data)?;
        file.sync_data()?;
    }
    if !part.is_last() {
        return Ok(PartOutcome::Kept);
    }
    file.seek(SeekFrom::Start(0))?;
    let (hasher, _) = hash_rest(&mut file)?;
    drop(file);
    if *hasher.finalize().as_bytes() != offer.hash {
        let _ = fs::remove_file(&path);
        return Ok(PartOutcome::Discarded(format!(
            "{:?} from {} did not match its hash; discarded",
            offer.name, offer.from
        )));
    }
    let stored = store(&path, downloads, &safe_name(&offer.name))?;
    Ok(PartOutcome::Complete(ReceivedFile {
        from: offer.from.clone(),
        path: stored,
        size: offer.size,
        hash: offer.hash,
        sent_at_ms: offer.sent_at_ms,
        resumed_from: 0,
        via: crate::inbox::Via::Mailbox,
    }))
}

/// Deletes the partial files in `downloads` untouched for [`PARTIAL_MAX_AGE`]; returns how
/// many. Blocking.
pub fn prune_partials(downloads: &Path) -> usize {
    let Ok(dir) = fs::read_dir(downloads.join(PARTIAL_DIR)) else {
        return 0;
    };
    let stale = |entry: &fs::DirEntry| {
        entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > PARTIAL_MAX_AGE)
    };
    dir.flatten()
        .filter(|e| stale(e) && fs::remove_file(e.path()).is_ok())
        .count()
}

/// Where the bytes of a file from `from` collect until the file is whole: `key` is a direct
/// transfer's resume key, or a mailbox file's hash.
pub fn partial_path(downloads: &Path, from: &Name, key: &[u8; 32]) -> PathBuf {
    downloads
        .join(PARTIAL_DIR)
        .join(format!("{from}-{}.part", hex::encode(key)))
}

/// The partial file is locked by another transfer.
#[derive(Debug, thiserror::Error)]
#[error("the same file is already arriving")]
struct Busy;

/// Opens (or creates) a partial file, locked against a second transfer of the same file, and
/// hashes what it already holds.
fn open_partial(path: &Path) -> Result<(File, blake3::Hasher, u64)> {
    let mut file = lock_partial(path)?;
    let (hasher, len) = hash_rest(&mut file)?;
    Ok((file, hasher, len))
}

/// Opens (or creates) a partial file, with its folder, and locks it; [`Busy`] if another
/// transfer holds it.
fn lock_partial(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.try_lock().map_err(|_| Busy)?;
    Ok(file)
}

/// Moves the finished partial file into `downloads` under `name`, or `name (1)`, `name (2)`…
/// if taken. The name is claimed with `create_new` first, so nothing is ever overwritten, even
/// by a file that appears meanwhile.
fn store(partial: &Path, downloads: &Path, name: &str) -> Result<PathBuf> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0..10_000u32 {
        let candidate = match n {
            0 => downloads.join(name),
            n => downloads.join(format!("{stem} ({n}){ext}")),
        };
        match File::options()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(_) => {
                fs::rename(partial, &candidate)
                    .with_context(|| format!("storing {}", candidate.display()))?;
                if let Ok(dir) = File::open(downloads) {
                    let _ = dir.sync_all();
                }
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", candidate.display())),
        }
    }
    bail!("no free name for {name} in {}", downloads.display())
}

/// A file name that is safe to create in the downloads folder: the last path component only,
/// without control characters, separators or characters other systems reserve, not hidden,
/// at most 200 bytes, never empty.
pub fn safe_name(offered: &str) -> String {
    let last = offered.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_control() || "<>:\"|?*".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut name = String::new();
    for c in trimmed.chars() {
        if name.len() + c.len_utf8() > 200 {
            break;
        }
        name.push(c);
    }
    if name.is_empty() {
        "file".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_plain_file_names() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_name("/abs/path/x.txt"), "x.txt");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("dir/"), "file");
        assert_eq!(safe_name("a\u{1b}[2Jb\n.txt"), "a_[2Jb_.txt");
        assert_eq!(safe_name("con:x?.txt"), "con_x_.txt");
        assert!(safe_name(&"é".repeat(300)).len() <= 200);
    }

    /// What [`read_ahead`] sends of a file of `len` bytes when the receiver kept `offset`,
    /// and the hash it reports.
    fn read_ahead_of(len: usize, offset: u64, size: u64) -> (Vec<u8>, std::io::Result<[u8; 32]>) {
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        fs::write(&path, &content).expect("write");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (sent, hash) = runtime.block_on(async {
            let (mut chunks, hashed) = read_ahead(File::open(&path).expect("open"), offset, size);
            let mut sent = Vec::new();
            while let Some(chunk) = chunks.recv().await {
                sent.extend_from_slice(&chunk);
            }
            (sent, hashed.await.expect("join"))
        });
        (sent, hash)
    }

    #[test]
    fn read_ahead_hashes_the_kept_prefix_and_sends_the_rest() {
        let len = 2 * CHUNK + 12_345;
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        for offset in [0, 1, CHUNK as u64 + 17, len as u64] {
            let (sent, hash) = read_ahead_of(len, offset, len as u64);
            assert_eq!(sent, content[offset as usize..], "offset {offset}");
            assert_eq!(hash.expect("hash"), *blake3::hash(&content).as_bytes());
        }
        // A file that grew since it was described: only the described size counts.
        let (sent, hash) = read_ahead_of(len, 0, 1000);
        assert_eq!(sent, content[..1000]);
        assert_eq!(
            hash.expect("hash"),
            *blake3::hash(&content[..1000]).as_bytes()
        );
        // One that shrank is an error, not a short file with a matching hash.
        let (_, hash) = read_ahead_of(len, 0, len as u64 + 1);
        assert_eq!(
            hash.expect_err("shrank").kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }

    fn parts_of(content: &[u8], size: u64, part_len: usize) -> Vec<FilePart> {
        let offer = FileOffer {
            id: MessageId([3; 16]),
            from: Name::new("c1").expect("name"),
            to: Name::new("c2").expect("name"),
            name: "../notes.txt".into(),
            size,
            hash: *blake3::hash(content).as_bytes(),
            sent_at_ms: 1,
        };
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let end = (offset + part_len).min(content.len());
            out.push(FilePart {
                id: MessageId::random(),
                offer: offer.clone(),
                offset: offset as u64,
                data: content[offset..end].to_vec(),
            });
            offset = end;
            if offset >= content.len() {
                return out;
            }
        }
    }

    #[test]
    fn mailbox_parts_make_the_file_once_whole() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let parts = parts_of(&content, content.len() as u64, 4096);
        assert_eq!(parts.len(), 3);
        assert!(matches!(
            write_part(dir.path(), &parts[0])?,
            PartOutcome::Kept
        ));
        // A part delivered again (the ack was lost) changes nothing.
        assert!(matches!(
            write_part(dir.path(), &parts[0])?,
            PartOutcome::Kept
        ));
        assert!(matches!(
            write_part(dir.path(), &parts[1])?,
            PartOutcome::Kept
        ));
        let PartOutcome::Complete(file) = write_part(dir.path(), &parts[2])? else {
            bail!("the last part did not complete the file");
        };
        assert_eq!(file.via, crate::inbox::Via::Mailbox);
        assert_eq!(file.path, dir.path().join("notes.txt"));
        assert_eq!(fs::read(&file.path)?, content);
        assert_eq!(fs::read_dir(dir.path().join(PARTIAL_DIR))?.count(), 0);
        Ok(())
    }

    #[test]
    fn bad_mailbox_parts_are_dropped_and_said_once() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let content = vec![7u8; 9000];
        // A part missing: the last one cannot complete the file.
        let parts = parts_of(&content, content.len() as u64, 4096);
        write_part(dir.path(), &parts[0])?;
        assert!(matches!(
            write_part(dir.path(), &parts[2])?,
            PartOutcome::Discarded(_)
        ));
        // Wrong content for the offered hash.
        let mut forged = parts_of(&content, content.len() as u64, 9000);
        forged[0].data[0] = 8;
        assert!(matches!(
            write_part(dir.path(), &forged[0])?,
            PartOutcome::Discarded(_)
        ));
        // Over the size taken from the mailbox: said at the first part, quiet after.
        let huge = parts_of(&content, MAX_MAILBOX_FILE + 1, 4096);
        assert!(matches!(
            write_part(dir.path(), &huge[0])?,
            PartOutcome::Discarded(_)
        ));
        assert!(matches!(
            write_part(dir.path(), &huge[1])?,
            PartOutcome::Kept
        ));
        assert_eq!(fs::read_dir(dir.path())?.count(), 1, "only .partial");
        Ok(())
    }

    #[test]
    fn week_old_partials_are_pruned() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let partials = dir.path().join(PARTIAL_DIR);
        fs::create_dir_all(&partials)?;
        fs::write(partials.join("fresh.part"), "x")?;
        let old = File::create(partials.join("old.part"))?;
        old.set_modified(std::time::SystemTime::now() - PARTIAL_MAX_AGE * 2)?;
        drop(old);
        assert_eq!(prune_partials(dir.path()), 1);
        assert!(partials.join("fresh.part").exists() && !partials.join("old.part").exists());
        Ok(())
    }

    #[test]
    fn stored_files_never_overwrite() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("files-test-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir)?;
        for i in 0..3 {
            let partial = dir.join(format!("p{i}"));
            fs::write(&partial, format!("content {i}"))?;
            store(&partial, &dir, "report.pdf")?;
        }
        assert_eq!(fs::read_to_string(dir.join("report.pdf"))?, "content 0");
        assert_eq!(fs::read_to_string(dir.join("report (1).pdf"))?, "content 1");
        assert_eq!(fs::read_to_string(dir.join("report (2).pdf"))?, "content 2");
        let _ = fs::remove_dir_all(dir);
        Ok(())
    }
}
