//! The downloads folder: partial files (where a file's bytes collect until it is whole, locked
//! against a second transfer, deleted when stale), safe names for what arrives, and storing a
//! finished file without ever overwriting one.

use super::hash_rest;
use crate::inbox::Via;
use anyhow::{bail, Context, Result};
use common::Name;
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

/// Partial files untouched for this long are deleted when the peer starts: their transfers are
/// not coming back, and they hold disk space.
pub const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Folder, inside the downloads folder, for files still arriving.
pub(super) const PARTIAL_DIR: &str = ".partial";

/// Partial files one sender may have in the downloads folder for each way (direct, mailbox):
/// starting another deletes its oldest. The sender names a direct transfer's partial file (its
/// resume key), so without a budget it could leave any number of them for a week.
pub const PARTIALS_PER_SENDER: usize = 4;

/// Folder, inside the downloads folder, where files from strangers wait (one folder per
/// sender) until the user accepts the sender, which moves them into the downloads folder
/// ([`accept_requests`]), or blocks it, which deletes them ([`drop_requests`]).
pub const REQUESTS_DIR: &str = ".requests";

/// Bytes of files from strangers held in [`REQUESTS_DIR`] in all; a file that would go over
/// is dropped, with a notice.
pub const REQUESTS_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes held in [`REQUESTS_DIR`] now. Blocking.
pub(super) fn requests_bytes(downloads: &Path) -> u64 {
    let Ok(senders) = fs::read_dir(downloads.join(REQUESTS_DIR)) else {
        return 0;
    };
    senders
        .flatten()
        .filter_map(|s| fs::read_dir(s.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Moves the files `from` sent while a stranger into `downloads` (never overwriting); returns
/// where they are now. Blocking.
pub fn accept_requests(downloads: &Path, from: &Name) -> Result<Vec<PathBuf>> {
    let dir = downloads.join(REQUESTS_DIR).join(from.as_str());
    let Ok(files) = fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut moved = Vec::new();
    for file in files.flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        moved.push(store(&file.path(), downloads, &name)?);
    }
    let _ = fs::remove_dir(&dir);
    Ok(moved)
}

/// Deletes the files `from` sent while a stranger; returns how many. Blocking.
pub fn drop_requests(downloads: &Path, from: &Name) -> usize {
    let dir = downloads.join(REQUESTS_DIR).join(from.as_str());
    let count = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    let _ = fs::remove_dir_all(&dir);
    count
}

/// Free space the downloads folder keeps: a file that would leave less is refused.
pub const MIN_FREE_DISK: u64 = common::defaults::MIN_FREE_DISK;

/// Whether `bytes` more fit in the folder `dir` and leave [`MIN_FREE_DISK`] free. A folder
/// whose free space cannot be read counts as having room: the write itself fails then.
pub fn room_for(dir: &Path, bytes: u64) -> bool {
    let probe = if dir.exists() {
        dir
    } else {
        dir.parent().unwrap_or(dir)
    };
    match rustix::fs::statvfs(probe) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            free >= bytes.saturating_add(MIN_FREE_DISK)
        }
        Err(_) => true,
    }
}

/// Makes room for one more partial file of `from` arriving by `via`, next to `keep`: deletes
/// its oldest ones until fewer than [`PARTIALS_PER_SENDER`] others are left. Returns how many
/// were deleted. Blocking.
pub(super) fn limit_partials(downloads: &Path, via: Via, from: &Name, keep: &Path) -> usize {
    let prefix = format!("{}-{from}-", via.as_str());
    let Ok(dir) = fs::read_dir(downloads.join(PARTIAL_DIR)) else {
        return 0;
    };
    let mut theirs: Vec<(std::time::SystemTime, PathBuf)> = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix) && e.path() != keep)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    theirs.sort();
    let over = (theirs.len() + 1).saturating_sub(PARTIALS_PER_SENDER);
    theirs
        .into_iter()
        .take(over)
        .filter(|(_, path)| fs::remove_file(path).is_ok())
        .count()
}

/// Deletes the partial files in `downloads` untouched for [`PARTIAL_MAX_AGE`], on a thread of
/// its own, and logs how many there were.
pub async fn prune(downloads: PathBuf) {
    let pruned = tokio::task::spawn_blocking(move || prune_partials(&downloads))
        .await
        .unwrap_or(0);
    if pruned > 0 {
        tracing::info!(pruned, "deleted partial files untouched for a week");
    }
}

/// Deletes the partial files in `downloads` untouched for [`PARTIAL_MAX_AGE`]; returns how
/// many. Blocking.
fn prune_partials(downloads: &Path) -> usize {
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
/// transfer's resume key, or a mailbox file's hash. The two ways have names of their own: the
/// sender chooses a direct transfer's resume key, and must not be able to make it name a
/// mailbox file's partial file (or the other way round).
pub fn partial_path(downloads: &Path, via: Via, from: &Name, key: &[u8; 32]) -> PathBuf {
    downloads
        .join(PARTIAL_DIR)
        .join(format!("{}-{from}-{}.part", via.as_str(), hex::encode(key)))
}

/// The partial file is locked by another transfer.
#[derive(Debug, thiserror::Error)]
#[error("the same file is already arriving")]
pub(super) struct Busy;

/// Opens (or creates) a partial file, locked against a second transfer of the same file, and
/// hashes what it already holds.
pub(super) fn open_partial(path: &Path) -> Result<(File, blake3::Hasher, u64)> {
    let mut file = lock_partial(path)?;
    let (hasher, len) = hash_rest(&mut file)?;
    Ok((file, hasher, len))
}

/// Opens (or creates) a partial file, with its folder, and locks it; [`Busy`] if another
/// transfer holds it.
pub(super) fn lock_partial(path: &Path) -> Result<File> {
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
pub(super) fn store(partial: &Path, downloads: &Path, name: &str) -> Result<PathBuf> {
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
            if crate::text::is_unsafe(c) || c == '\n' || c == '\t' || "<>:\"|?*".contains(c) {
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
    // Only dots and spaces left (`.`, `..`, `. .`): no name at all, and `..` would climb.
    let is_one_plain_component = matches!(
        Path::new(&name).components().collect::<Vec<_>>()[..],
        [std::path::Component::Normal(_)]
    );
    if name.chars().all(|c| c == '.' || c.is_whitespace()) || !is_one_plain_component {
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
        // Names made of dots and spaces would be `.` or `..` once trimmed.
        for dots in [". .", ". ..", ".. .", " . . ", "...", ". . ."] {
            assert_eq!(safe_name(dots), "file", "{dots:?}");
        }
        // A right-to-left override would make "invoice\u{202E}fdp.exe" read "invoiceexe.pdf".
        assert_eq!(safe_name("invoice\u{202E}fdp.exe"), "invoice_fdp.exe");
        assert_eq!(safe_name("a\u{200B}b\u{FEFF}.txt"), "a_b_.txt");
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
    fn a_sender_keeps_a_few_partials_and_its_oldest_go_first() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let partials = dir.path().join(PARTIAL_DIR);
        fs::create_dir_all(&partials)?;
        let mallory = Name::new("mallory")?;
        let alice = Name::new("alice")?;
        let now = std::time::SystemTime::now();
        let mut paths = Vec::new();
        for i in 0..6u8 {
            let path = partial_path(dir.path(), Via::Direct, &mallory, &[i; 32]);
            let f = File::create(&path)?;
            f.set_modified(now - std::time::Duration::from_secs(600 - u64::from(i)))?;
            paths.push(path);
        }
        let alices = partial_path(dir.path(), Via::Direct, &alice, &[9; 32]);
        fs::write(&alices, "x")?;
        let mailbox = partial_path(dir.path(), Via::Mailbox, &mallory, &[9; 32]);
        fs::write(&mailbox, "x")?;
        let next = partial_path(dir.path(), Via::Direct, &mallory, &[7; 32]);
        assert_eq!(limit_partials(dir.path(), Via::Direct, &mallory, &next), 3);
        let left: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
        assert_eq!(
            left,
            [false, false, false, true, true, true],
            "the oldest go"
        );
        assert!(alices.exists() && mailbox.exists(), "others' are kept");
        // Resuming one it has does not count it twice.
        assert_eq!(
            limit_partials(dir.path(), Via::Direct, &mallory, &paths[5]),
            0
        );
        Ok(())
    }

    #[test]
    fn a_file_larger_than_the_free_disk_has_no_room() -> Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(room_for(dir.path(), 1));
        assert!(!room_for(dir.path(), u64::MAX / 2));
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
