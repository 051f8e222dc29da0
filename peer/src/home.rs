//! The peer's home folder: its identity, the directory keys it has pinned, and the control
//! socket of a running peer.
//!
//! ```text
//! HOME/key.der, HOME/cert.der   the peer's key pair (see common::identity)
//! HOME/known_directories        "HOST:PORT FINGERPRINT" lines, like SSH's known_hosts
//! HOME/control.sock             present while `listen` or `chat` runs
//! HOME/downloads/               files received (HOME/downloads/.partial/: still arriving)
//! ```

use anyhow::{bail, Context, Result};
use common::{identity::write_atomically, Identity, KeyId, Name};
use std::{
    fs,
    path::{Path, PathBuf},
};

const KNOWN_DIRECTORIES: &str = "known_directories";
const CONTROL_SOCKET: &str = "control.sock";

/// A peer's home folder.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The folder given, or a folder for `name` under the platform data folder.
    pub fn new(dir: Option<PathBuf>, name: &Name) -> Result<Self> {
        let dir = match dir {
            Some(dir) => dir,
            None => directories::ProjectDirs::from("", "", "p2pchat")
                .map(|d| d.data_dir().join("peers").join(name.as_str()))
                .context("no home folder to keep the key in; pass --home")?,
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The key, the history, the downloads and the control socket are the user's alone:
        // the folder is closed to everyone else, also when an older version made it open.
        // A folder we cannot change (owned by someone else, on purpose) is the owner's call.
        for folder in [dir.clone(), dir.join("downloads")] {
            if folder.is_dir() {
                if let Err(e) = private(&folder) {
                    tracing::warn!("{e:#}");
                }
            }
        }
        Ok(Self { dir })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the peer's identity is made already (before its first run, it is not).
    pub fn has_identity(&self) -> bool {
        Identity::is_stored(&self.dir)
    }

    /// Loads the peer's identity, making it on first run.
    pub fn identity(&self, name: &Name) -> Result<Identity> {
        Identity::load_or_generate(&self.dir, name.as_str())
            .with_context(|| format!("loading the key in {}", self.dir.display()))
    }

    /// The keys that seal and open mail, kept beside the identity's.
    pub fn sealer(&self, identity: &Identity) -> Result<common::seal::Sealer> {
        common::seal::Sealer::load_or_generate(&self.dir, identity)
            .with_context(|| format!("loading the encryption key in {}", self.dir.display()))
    }

    /// Where files from other peers are stored.
    pub fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    /// Where a running peer listens for other commands.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }

    /// The file of pinned directory keys.
    pub fn known_directories(&self) -> PathBuf {
        self.known_path()
    }

    fn known_path(&self) -> PathBuf {
        self.dir.join(KNOWN_DIRECTORIES)
    }

    /// The key pinned for the directory at `addr`, if any.
    pub fn pinned(&self, addr: &str) -> Result<Option<KeyId>> {
        let text = match fs::read_to_string(self.known_path()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading the pinned directory keys"),
        };
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            if let (Some(a), Some(key)) = (fields.next(), fields.next()) {
                if a == addr {
                    return key.parse().map(Some).with_context(|| {
                        format!(
                            "bad fingerprint for {addr} in {}",
                            self.known_path().display()
                        )
                    });
                }
            }
        }
        Ok(None)
    }

    /// Checks the key the directory at `addr` presented: pins it on first use (or pins
    /// `explicit`), and refuses a key that differs from the pinned one. True when it was
    /// pinned just now.
    pub fn check_directory(
        &self,
        addr: &str,
        presented: KeyId,
        explicit: Option<KeyId>,
    ) -> Result<bool> {
        if let Some(expected) = explicit {
            if presented != expected {
                bail!(
                    "the directory at {addr} presented key fingerprint {presented}, not the \
                     fingerprint {expected} given with --pin"
                );
            }
        }
        match self.pinned(addr)? {
            Some(pinned) if pinned == presented => Ok(false),
            Some(pinned) if explicit.is_none() => bail!(
                "the directory at {addr} presented key fingerprint {presented}, but {pinned} is \
                 pinned in {}; if the directory's key really changed, remove that line or pass \
                 --pin",
                self.known_path().display()
            ),
            _ => self.pin(addr, presented).map(|()| true),
        }
    }

    fn pin(&self, addr: &str, key: KeyId) -> Result<()> {
        let old = fs::read_to_string(self.known_path()).unwrap_or_default();
        let mut text: String = old
            .lines()
            .filter(|l| l.split_whitespace().next() != Some(addr))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("{addr} {key}\n"));
        write_atomically(&self.known_path(), text.as_bytes())
            .context("pinning the directory key")?;
        tracing::info!(%addr, fingerprint = %key, "pinned the directory's key");
        Ok(())
    }
}

/// Makes `dir` readable, writable and searchable by its owner only (0700), if it is not yet.
pub fn private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_on_first_use_and_refuses_a_change() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("home-test-{}", rand::random::<u64>()));
        let home = Home::new(Some(dir.clone()), &Name::new("c1")?)?;
        let (a, b) = (KeyId([1; 32]), KeyId([2; 32]));
        assert!(
            home.check_directory("d:9000", a, None)?,
            "pinned on first use"
        );
        assert!(!home.check_directory("d:9000", a, None)?, "pinned already");
        let err = home
            .check_directory("d:9000", b, None)
            .expect_err("changed key");
        assert!(err.to_string().contains("pinned"), "{err}");
        home.check_directory("other:9000", b, None)?;
        assert!(home.check_directory("d:9000", a, Some(b)).is_err());
        home.check_directory("d:9000", b, Some(b))?;
        assert_eq!(home.pinned("d:9000")?, Some(b));
        assert_eq!(home.pinned("other:9000")?, Some(b));
        let _ = fs::remove_dir_all(dir);
        Ok(())
    }
}
