//! Letters held back: mail from the mailbox signed by another key than the one remembered for
//! its sender. It is not shown (the key change is said instead), and not lost either: it waits
//! in `HOME/held/SENDER/` until the user trusts the new key (`peer trust SENDER`), and is
//! shown then. Bounded per sender and in all, so a directory or a new key cannot fill the disk
//! through it; past the bounds, such letters are refused as before.

use anyhow::{Context, Result};
use common::{wire::Letter, Name};
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio::sync::{Mutex, MutexGuard};

/// Most letters held for one sender.
pub const PER_SENDER: usize = 200;
/// Most bytes held in all.
pub const TOTAL_BYTES: u64 = 32 << 20;
/// The folder, in the home.
const FOLDER: &str = "held";

/// The held letters of one home.
#[derive(Clone, Debug)]
pub struct Held {
    dir: PathBuf,
    /// Held while a letter is held or the held letters are opened: a letter checked under
    /// the old key must not be put away just after the new key's letters were opened.
    busy: Arc<Mutex<()>>,
}

impl Held {
    /// The held letters kept under `home`.
    pub fn new(home: &Path) -> Self {
        Self {
            dir: home.join(FOLDER),
            busy: Arc::default(),
        }
    }

    /// Excludes every other holder of the guard until it is dropped.
    pub async fn guard(&self) -> MutexGuard<'_, ()> {
        self.busy.lock().await
    }

    /// Keeps `letter` until its sender's new key is trusted; false when the bounds leave no
    /// room for it (it is then refused, as any letter that cannot be checked).
    pub fn hold(&self, letter: &Letter) -> Result<bool> {
        let folder = self.dir.join(letter.from.as_str());
        fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        let bytes = postcard::to_allocvec(letter)?;
        let held_here = fs::read_dir(&folder)?.count();
        if held_here >= PER_SENDER || self.bytes()? + bytes.len() as u64 > TOTAL_BYTES {
            return Ok(false);
        }
        let path = folder.join(format!("{}.letter", letter.id));
        common::identity::write_atomically(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    }

    /// Every letter held from `from`, oldest first by its sender's clock, with its file:
    /// remove that with [`Held::done`] once the letter is in the user's hands. A file that
    /// does not decode is deleted.
    pub fn of(&self, from: &Name) -> Result<Vec<(PathBuf, Letter)>> {
        let folder = self.dir.join(from.as_str());
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", folder.display())),
        };
        let mut letters = Vec::new();
        for entry in entries {
            let path = entry?.path();
            // Only whole files: one being written is a temporary file beside them.
            if path.extension().is_none_or(|e| e != "letter") {
                continue;
            }
            let letter = fs::read(&path)
                .ok()
                .and_then(|bytes| postcard::from_bytes::<Letter>(&bytes).ok())
                .filter(|l| l.from == *from);
            match letter {
                Some(letter) => letters.push((path, letter)),
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        letters.sort_by_key(|(_, l)| l.sent_at_ms);
        Ok(letters)
    }

    /// Forgets a held letter: it was shown, or refused for good.
    pub fn done(&self, path: &Path) {
        let _ = fs::remove_file(path);
        if let Some(folder) = path.parent() {
            // Only once it is empty.
            let _ = fs::remove_dir(folder);
        }
    }

    /// Bytes held in all.
    fn bytes(&self) -> Result<u64> {
        let mut total = 0;
        let Ok(senders) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        for sender in senders {
            for letter in fs::read_dir(sender?.path())? {
                total += letter?.metadata()?.len();
            }
        }
        Ok(total)
    }
}
