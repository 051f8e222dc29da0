//! The direct sender: one file on a stream of its own over a direct link, read ahead of the
//! stream and hashed on a thread of its own, from the offset the recipient kept.

use super::{FileSent, FileUpdate, CHUNK, IN_FLIGHT_CHUNKS};
use crate::links::DirectPath;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use common::{
    framing,
    wire::{FileHeader, FileRefusal, PeerFrame},
};
use futures::future::Either;
use std::{
    fs::{self, File},
    io::Read,
    path::Path,
    sync::Arc,
    time::Duration,
};
use tokio::sync::{mpsc, watch};

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

/// One attempt to send the file at `path`, described by `header`, over `conn`, the direct
/// link made by way of `link`. `report` hears how many bytes the recipient has (including
/// those it kept from an earlier attempt), at most every 100 ms.
pub async fn send(
    conn: &quinn::Connection,
    link: DirectPath,
    header: &FileHeader,
    path: &Path,
    report: &Arc<impl Fn(FileUpdate) + Send + Sync + 'static>,
) -> Result<FileSent, SendError> {
    let size = header.size;
    let (progress, mut watch) = watch::channel(0u64);
    // The reports run beside the transfer in this task, so they end with it however it ends.
    let relay = std::pin::pin!(async move {
        while watch.changed().await.is_ok() {
            let done = *watch.borrow_and_update();
            report(FileUpdate::Progress { done, total: size });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let transfer = std::pin::pin!(transfer(conn, header.clone(), path, &progress));
    let result = match futures::future::select(transfer, relay).await {
        Either::Left((result, _)) => result,
        Either::Right(((), transfer)) => transfer.await,
    };
    let (resumed_from, hash) = result?;
    Ok(FileSent {
        to: header.to.clone(),
        size,
        hash,
        resumed_from,
        path: Some(link),
    })
}

/// Sends the file at `path`, described by `header`, on a new stream of `conn`. `progress`
/// counts the bytes the recipient has, including those it kept from an earlier attempt.
/// Returns how many bytes the recipient had kept, and the file's BLAKE3 hash.
async fn transfer(
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
        Some(PeerFrame::FileRefused(FileRefusal::NotAccepted)) => {
            return Err(Interrupted(anyhow!(
                "{} has not accepted us as a contact yet",
                header.to
            )))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
