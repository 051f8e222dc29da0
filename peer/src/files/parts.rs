//! Files through the directory's mailbox, both ways. Sending: a file of at most the sender's
//! mailbox limit, when no direct link can be made, is deposited in [`FilePart`]s of
//! [`FILE_PART_LEN`] bytes, in order ([`deposit`]). Receiving: each part pushed from the
//! mailbox is appended to the same partial file a direct transfer uses, durably, before it is
//! acknowledged; the last one checks the hash and stores the file ([`Receiver::take_part`]).

use super::{
    downloads::{
        limit_partials, lock_partial, partial_path, requests_bytes, room_for, safe_name, store,
        REQUESTS_DIR, REQUESTS_MAX_BYTES,
    },
    hash_file, hash_rest, FileSent, FileUpdate, Receiver,
};
use crate::{
    contacts::Verdict,
    directory_client::DirectoryClient,
    failure::Failure,
    inbox::{ReceivedFile, Via},
    letters::Letters,
};
use anyhow::{bail, Context, Result};
use common::{
    defaults::FILE_PART_LEN,
    seal::Content,
    wire::{DirectoryRequest, FileHeader, FileOffer, FilePart, MessageId, PeerInfo},
};
use std::{
    fs,
    io::{Seek, SeekFrom, Write},
    path::Path,
    time::Duration,
};
use tokio::io::AsyncReadExt;
use tracing::warn;

/// Largest file a peer takes through the mailbox: the directory's default quota per recipient.
/// Senders keep to their own, smaller limit; this bounds what a sender that does not can make
/// us write.
pub const MAX_MAILBOX_FILE: u64 = common::defaults::MAILBOX_QUOTA_BYTES;

/// Where the parts of a file go: the recipient's mailbox, each part sealed to it.
pub struct Mailbox<'a> {
    /// Takes the parts.
    pub directory: &'a DirectoryClient,
    /// Seals them.
    pub letters: &'a Letters,
    /// What the directory said of the recipient: its keys.
    pub recipient: &'a PeerInfo,
}

/// Deposits the file at `path`, which `header` describes, in parts into the recipient's
/// mailbox, in order, each sealed to the recipient. Each part stands alone, so the hash goes in
/// every part: the (small) file is hashed first. `report` hears how many bytes the mailbox
/// has, at most every 100 ms.
pub async fn deposit(
    mailbox: Mailbox<'_>,
    header: &FileHeader,
    path: &Path,
    report: &impl Fn(FileUpdate),
) -> Result<FileSent, Failure> {
    let (hash, size) = hash_file(path).await?;
    if size != header.size {
        return Err(Failure::Other(format!(
            "{} changed size while it was being sent",
            path.display()
        )));
    }
    let offer = FileOffer {
        id: header.id,
        from: header.from.clone(),
        to: header.to.clone(),
        name: header.name.clone(),
        size,
        hash,
        sent_at_ms: header.sent_at_ms,
    };
    let (directory, to) = (mailbox.directory, &offer.to);
    let mut parts = Parts::open(offer.clone(), path).await?;
    let mut last_report = tokio::time::Instant::now();
    while let Some(part) = parts.next().await? {
        let done = part.offset + part.data.len() as u64;
        let letter = mailbox
            .letters
            .seal(mailbox.recipient, Content::FilePart(part))?;
        let request = DirectoryRequest::DepositLetter { letter };
        if let Err(e) = directory.deposit(&request).await {
            return Err(e.failure(to, directory.addr()));
        }
        if done == offer.size || last_report.elapsed() >= Duration::from_millis(100) {
            last_report = tokio::time::Instant::now();
            report(FileUpdate::Progress {
                done,
                total: offer.size,
            });
        }
    }
    Ok(FileSent {
        to: to.clone(),
        size: offer.size,
        hash: offer.hash,
        resumed_from: 0,
        path: None,
    })
}

/// A file read as mailbox parts, in order, each at most [`FILE_PART_LEN`] bytes (one empty part
/// for an empty file). Part ids are derived from the offer's id and the offset, so depositing a
/// part again is a no-op.
struct Parts {
    file: tokio::fs::File,
    offer: FileOffer,
    offset: u64,
    finished: bool,
}

impl Parts {
    /// Opens the file at `path`, which `offer` describes.
    async fn open(offer: FileOffer, path: &Path) -> Result<Self> {
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
    async fn next(&mut self) -> Result<Option<FilePart>> {
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

impl Receiver {
    /// Takes one part of a file from the mailbox, and returns once it may be acknowledged: it
    /// is on disk (and, for the last part, the file is checked, stored and reported), or it
    /// cannot be used and is dropped, with a notice for the user. A part that cannot be used is
    /// never left in the mailbox: the directory would push it again and again, and the mail
    /// behind it would wait forever. True when this part completed the file, whose hash
    /// matched: only then does its sender get a proof of delivery.
    pub async fn take_part(&self, part: FilePart) -> bool {
        let (from, name) = (part.offer.from.clone(), part.offer.name.clone());
        let request = match self.inbox.verdict(&from) {
            Verdict::Blocked => return false, // taken, and dropped unseen
            Verdict::Stranger => true,
            Verdict::Contact => false,
        };
        match self.write(part, request).await {
            Ok(whole) => whole,
            Err(e) => {
                warn!(cause = %format!("{e:#}"), "dropped a file part from the mailbox");
                let name = crate::text::for_terminal(&name, false);
                let notice = format!(
                    "a part of the file {name:?} from {from} could not be used and was dropped: {e:#}"
                );
                self.inbox.notice(notice).await;
                false
            }
        }
    }

    async fn write(&self, part: FilePart, request: bool) -> Result<bool> {
        if part.offer.to != *self.inbox.me() || part.data.len() > FILE_PART_LEN {
            bail!("a file part not for us, or too large");
        }
        let downloads = self.downloads.clone();
        Ok(
            match tokio::task::spawn_blocking(move || write_part(&downloads, &part, request))
                .await??
            {
                PartOutcome::Kept => false,
                PartOutcome::Complete(file) => {
                    self.inbox.file(file).await;
                    true
                }
                PartOutcome::Discarded(reason) => {
                    warn!("{reason}");
                    self.inbox.notice(reason).await;
                    false
                }
            },
        )
    }
}

/// What became of a part of a file from the mailbox.
#[derive(Debug)]
enum PartOutcome {
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
/// file as a direct transfer does ([`Receiver::direct`]). Blocking.
///
/// A stranger's file (`request`) is stored in the sender's folder under [`REQUESTS_DIR`], within
/// [`REQUESTS_MAX_BYTES`] for all strangers together.
fn write_part(downloads: &Path, part: &FilePart, request: bool) -> Result<PartOutcome> {
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
    let path = partial_path(downloads, Via::Mailbox, &offer.from, &offer.hash);
    if part.offset == 0 {
        // The first part: whether the whole file may be taken at all.
        if request && requests_bytes(downloads).saturating_add(offer.size) > REQUESTS_MAX_BYTES {
            return Ok(PartOutcome::Discarded(format!(
                "{:?} from {} (not in your contacts) would go over the {REQUESTS_MAX_BYTES} \
                 bytes kept for files from strangers; dropped",
                offer.name, offer.from
            )));
        }
        if !room_for(downloads, offer.size) {
            return Ok(PartOutcome::Discarded(format!(
                "{:?} from {} does not fit on the disk; dropped",
                offer.name, offer.from
            )));
        }
        limit_partials(downloads, Via::Mailbox, &offer.from, &path);
    }
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
    let folder = match request {
        true => downloads.join(REQUESTS_DIR).join(offer.from.as_str()),
        false => downloads.to_path_buf(),
    };
    fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let stored = store(&path, &folder, &safe_name(&offer.name))?;
    Ok(PartOutcome::Complete(ReceivedFile {
        from: offer.from.clone(),
        path: stored,
        size: offer.size,
        hash: offer.hash,
        sent_at_ms: offer.sent_at_ms,
        resumed_from: 0,
        via: Via::Mailbox,
        request,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::downloads::PARTIAL_DIR;
    use common::Name;

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
            write_part(dir.path(), &parts[0], false)?,
            PartOutcome::Kept
        ));
        // A part delivered again (the ack was lost) changes nothing.
        assert!(matches!(
            write_part(dir.path(), &parts[0], false)?,
            PartOutcome::Kept
        ));
        assert!(matches!(
            write_part(dir.path(), &parts[1], false)?,
            PartOutcome::Kept
        ));
        let PartOutcome::Complete(file) = write_part(dir.path(), &parts[2], false)? else {
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
        write_part(dir.path(), &parts[0], false)?;
        assert!(matches!(
            write_part(dir.path(), &parts[2], false)?,
            PartOutcome::Discarded(_)
        ));
        // Wrong content for the offered hash.
        let mut forged = parts_of(&content, content.len() as u64, 9000);
        forged[0].data[0] = 8;
        assert!(matches!(
            write_part(dir.path(), &forged[0], false)?,
            PartOutcome::Discarded(_)
        ));
        // Over the size taken from the mailbox: said at the first part, quiet after.
        let huge = parts_of(&content, MAX_MAILBOX_FILE + 1, 4096);
        assert!(matches!(
            write_part(dir.path(), &huge[0], false)?,
            PartOutcome::Discarded(_)
        ));
        assert!(matches!(
            write_part(dir.path(), &huge[1], false)?,
            PartOutcome::Kept
        ));
        assert_eq!(fs::read_dir(dir.path())?.count(), 1, "only .partial");
        Ok(())
    }

    #[test]
    fn a_strangers_file_waits_apart_within_a_budget_until_accepted() -> Result<()> {
        use crate::files::downloads::{accept_requests, drop_requests};
        let dir = tempfile::tempdir()?;
        let content = vec![5u8; 3000];
        let parts = parts_of(&content, content.len() as u64, 4096);
        let PartOutcome::Complete(file) = write_part(dir.path(), &parts[0], true)? else {
            bail!("a stranger's small file was not kept");
        };
        assert!(file.request);
        assert_eq!(
            file.path,
            dir.path().join(REQUESTS_DIR).join("c1").join("notes.txt")
        );
        assert!(
            !dir.path().join("notes.txt").exists(),
            "not in downloads yet"
        );
        // Over the budget for all strangers: dropped at the first part.
        let big = parts_of(&content, REQUESTS_MAX_BYTES, 4096);
        assert!(matches!(
            write_part(dir.path(), &big[0], true)?,
            PartOutcome::Discarded(_)
        ));
        let c1 = Name::new("c1")?;
        let moved = accept_requests(dir.path(), &c1)?;
        assert_eq!(moved, [dir.path().join("notes.txt")]);
        assert_eq!(fs::read(&moved[0])?, content);
        assert!(!dir.path().join(REQUESTS_DIR).join("c1").exists());
        // Blocking deletes what waits.
        write_part(dir.path(), &parts[0], true)?;
        assert_eq!(drop_requests(dir.path(), &c1), 1);
        assert_eq!(
            accept_requests(dir.path(), &c1)?,
            Vec::<std::path::PathBuf>::new()
        );
        Ok(())
    }
}
