//! The direct receiver: a file on a stream a peer opened, its sender already checked. It is
//! appended to its partial file, hashed and flushed on threads of their own, checked and
//! stored; a newer transfer of the same file takes over from an older one.

use super::{
    downloads::{limit_partials, open_partial, partial_path, room_for, safe_name, store, Busy},
    Receiver, CHUNK, IN_FLIGHT_CHUNKS,
};
use crate::inbox::{Arriving, ReceivedFile, Via};
use anyhow::{anyhow, bail, Context, Result};
use common::{
    framing,
    wire::{codes, FileHeader, FileRefusal, PeerFrame},
};
use std::{
    fs::{self, File},
    io::{Seek, SeekFrom, Write},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

/// How often a file arriving reports how far it is.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// Largest file a peer accepts.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// While a file arrives, what has been written is flushed to disk each time this many more
/// bytes are written, on a thread of its own: the fsync that must come before `FileDone` then
/// has little left to write, instead of the whole file (a tenth of a second per 256 MiB here).
const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

/// A file stream on which nothing arrives for this long is given up (its partial file is kept
/// for resuming): a sender that stalls must not hold one of the [`super::TRANSFERS`] for ever
/// on a link it keeps alive.
pub const FILE_IDLE: Duration = Duration::from_secs(30);

impl Receiver {
    /// Receives the file `header` describes on `send`/`recv`, the file stream, its header
    /// already read and its sender already checked, and tells the inbox once it is stored. A
    /// transfer of the same file still arriving (the sender restarted) gives way to this one.
    pub async fn direct(
        &self,
        header: FileHeader,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<()> {
        let partial = partial_path(
            &self.downloads,
            Via::Direct,
            &header.from,
            &header.resume_key,
        );
        // At most TRANSFERS files arrive at once; the next waits for one to end (its sender
        // waits for the answer to its offer), bounded by the link's streams.
        let _permit = self.transfers.acquire().await?;
        let mine = Arc::new(Notify::new());
        let older = self.arriving().insert(partial.clone(), mine.clone());
        if let Some(older) = older {
            older.notify_one();
        }
        let (inbox, from, name) = (
            self.inbox.clone(),
            header.from.clone(),
            safe_name(&header.name),
        );
        let total = header.size;
        let report = move |done, stopped| {
            inbox.arriving(Arriving {
                from: from.clone(),
                name: name.clone(),
                done,
                total,
                stopped,
            })
        };
        let result = tokio::select! {
            result = receive(&self.downloads, header, send, recv, |done| report(done, false)) => result,
            _ = mine.notified() => Err(anyhow!("a newer transfer of the same file took over")),
        };
        {
            let mut arriving = self.arriving();
            if arriving
                .get(&partial)
                .is_some_and(|n| Arc::ptr_eq(n, &mine))
            {
                arriving.remove(&partial);
            }
        }
        match result {
            Ok(file) => self.inbox.file(file).await,
            Err(e) => {
                // The views showing its progress drop it.
                report(0, true);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Receives the file `header` describes into `downloads`; `send`/`recv` are the file stream,
/// its header already read and its sender already checked.
async fn receive(
    downloads: &Path,
    header: FileHeader,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    report: impl Fn(u64),
) -> Result<ReceivedFile> {
    if header.size > MAX_FILE_SIZE {
        framing::write_frame(send, &PeerFrame::FileRefused(FileRefusal::TooLarge)).await?;
        bail!(
            "refused a file of {} bytes from {}",
            header.size,
            header.from
        );
    }
    let partial_path = partial_path(downloads, Via::Direct, &header.from, &header.resume_key);
    {
        let (downloads, from, keep) = (
            downloads.to_path_buf(),
            header.from.clone(),
            partial_path.clone(),
        );
        let dropped = tokio::task::spawn_blocking(move || {
            limit_partials(&downloads, Via::Direct, &from, &keep)
        })
        .await?;
        if dropped > 0 {
            debug!(from = %header.from, dropped, "deleted the sender's oldest partial files");
        }
    }
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
    if !room_for(downloads, header.size - offset) {
        framing::write_frame(send, &PeerFrame::FileRefused(FileRefusal::CannotStore)).await?;
        bail!(
            "refused a file of {} from {}: the disk would be left with less than {}",
            indicatif::HumanBytes(header.size),
            header.from,
            indicatif::HumanBytes(super::downloads::MIN_FREE_DISK)
        );
    }
    framing::write_frame(send, &PeerFrame::FileAccept { offset }).await?;
    // Hashing and writing run on a thread of their own, fed chunk by chunk, so that they
    // overlap with taking the next bytes off the network instead of alternating with it.
    let (chunks, taken) = mpsc::channel::<Vec<u8>>(IN_FLIGHT_CHUNKS);
    // The writer hands each written chunk back to be filled again: a new one would be zeroed
    // and faulted in page by page, a cost as large as the copy into it. At most
    // IN_FLIGHT_CHUNKS + 2 exist: those queued, the one being written and the one being filled.
    let (spare, mut spares) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::task::spawn_blocking(move || write_chunks(file, hasher, taken, spare));
    let mut have = offset;
    report(have);
    let mut reported = Instant::now();
    let read = async {
        while have < header.size {
            // Whole chunks: BLAKE3 hashes a large update on several lanes at once.
            let want = CHUNK.min((header.size - have) as usize);
            let mut chunk = spares.try_recv().unwrap_or_default();
            // Only a new chunk, or the one after a short last read, is filled with zeros here.
            chunk.resize(want, 0);
            let mut filled = 0;
            while filled < want {
                let read = tokio::time::timeout(FILE_IDLE, recv.read(&mut chunk[filled..]))
                    .await
                    .map_err(|_| {
                        let _ = recv.stop(codes::TIMED_OUT.into());
                        anyhow!("nothing arrived on the file stream for {FILE_IDLE:?}")
                    })?;
                match read.context("the file stream failed")? {
                    Some(n) => filled += n,
                    None => break,
                }
            }
            chunk.truncate(filled);
            have += filled as u64;
            if have == header.size || reported.elapsed() >= REPORT_EVERY {
                report(have);
                reported = Instant::now();
            }
            if filled == 0 || chunks.send(chunk).await.is_err() {
                // The stream ended early, or the writer failed (its error is the one reported).
                return Ok(None);
            }
        }
        let mut hash = [0u8; 32];
        tokio::time::timeout(FILE_IDLE, recv.read_exact(&mut hash))
            .await
            .map_err(|_| anyhow!("the file's hash did not come within {FILE_IDLE:?}"))?
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
        via: Via::Direct,
        request: false,
    })
}

/// Appends every chunk from `taken` to `file` and to `hasher`, hands it back through `spare`,
/// then syncs the file. Meanwhile
/// a second thread flushes what is written every [`FLUSH_EVERY`] bytes and lets the page cache
/// drop each newly flushed stretch ([`drop_cached`]); the whole file goes after the last sync.
/// Blocking.
fn write_chunks(
    mut file: File,
    mut hasher: blake3::Hasher,
    mut taken: mpsc::Receiver<Vec<u8>>,
    spare: mpsc::UnboundedSender<Vec<u8>>,
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
                let _ = spare.send(chunk);
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
