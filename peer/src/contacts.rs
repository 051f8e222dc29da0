//! Who the user lets reach them: contacts, accepted or blocked, in `HOME/contacts.json`.
//!
//! A contact is a name with the key it had when accepted. The directory is told the accepted
//! keys ([`Reach`]): only they get our addresses, our exact presence and introductions, so a
//! stranger never learns where we are. What a stranger sends comes through the mailbox and is
//! shown as a message request until the user accepts (`peer accept NAME`) or blocks
//! (`peer block NAME`) its sender; sending to someone accepts them. A blocked sender's messages
//! are acknowledged and dropped unseen. An open peer (`--open`) lets anyone reach it and shows
//! no requests; blocked names stay blocked.
//!
//! The file is small JSON, rewritten whole (a temporary file renamed over it) on each change,
//! by the one process that runs the peer: short commands go through it.

use crate::home::Home;
use anyhow::{Context, Result};
use common::{now_ms, wire::Reach, KeyId, Name};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// The file in the peer's home.
pub const FILE: &str = "contacts.json";

/// Where a contact stands with the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    /// May reach us directly; its messages are ordinary messages.
    Accepted,
    /// Its messages and files are dropped unseen.
    Blocked,
}

impl Standing {
    /// The word used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Accepted => "accepted",
            Standing::Blocked => "blocked",
        }
    }
}

/// One contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Its name.
    pub name: Name,
    /// The key the name had when the user decided (hex in the file).
    #[serde(with = "hex_key")]
    pub key: KeyId,
    /// Accepted or blocked.
    pub standing: Standing,
    /// When the user decided, ms since the epoch.
    pub since_ms: u64,
}

/// How a sender stands with us, for what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A contact (or anyone, for an open peer): shown as usual.
    Contact,
    /// Nobody the user decided on: shown as a message request.
    Stranger,
    /// Dropped unseen.
    Blocked,
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    contacts: Vec<Contact>,
}

/// The contacts of one peer; cheap to clone, shared by every part of the node.
#[derive(Clone)]
pub struct Contacts {
    inner: Arc<Inner>,
}

struct Inner {
    path: Option<PathBuf>,
    open: bool,
    map: Mutex<BTreeMap<Name, Contact>>,
    reach: watch::Sender<Reach>,
}

impl Contacts {
    /// The contacts kept in `home`; `open` lets anyone reach us.
    pub fn load(home: &Home, open: bool) -> Result<Self> {
        let path = home.path().join(FILE);
        let saved = read(&path)?;
        Ok(Self::with(Some(path), open, saved.contacts))
    }

    /// Contacts kept in memory only (tests).
    pub fn in_memory(open: bool) -> Self {
        Self::with(None, open, Vec::new())
    }

    fn with(path: Option<PathBuf>, open: bool, contacts: Vec<Contact>) -> Self {
        let map: BTreeMap<Name, Contact> =
            contacts.into_iter().map(|c| (c.name.clone(), c)).collect();
        let (reach, _) = watch::channel(reach_of(open, &map));
        Self {
            inner: Arc::new(Inner {
                path,
                open,
                map: Mutex::new(map),
                reach,
            }),
        }
    }

    /// What the directory must be told, now and on every change.
    pub fn reach(&self) -> watch::Receiver<Reach> {
        self.inner.reach.subscribe()
    }

    /// How `name` stands with us.
    pub fn verdict(&self, name: &Name) -> Verdict {
        match self.map().get(name).map(|c| c.standing) {
            Some(Standing::Blocked) => Verdict::Blocked,
            Some(Standing::Accepted) => Verdict::Contact,
            None if self.inner.open => Verdict::Contact,
            None => Verdict::Stranger,
        }
    }

    /// The contact named `name`, if the user decided on it.
    pub fn get(&self, name: &Name) -> Option<Contact> {
        self.map().get(name).cloned()
    }

    /// Every contact, by name.
    pub fn list(&self) -> Vec<Contact> {
        self.map().values().cloned().collect()
    }

    /// Records the user's decision on `name` (key `key`) and saves it.
    pub fn set(&self, name: &Name, key: KeyId, standing: Standing) -> Result<Contact> {
        let contact = Contact {
            name: name.clone(),
            key,
            standing,
            since_ms: now_ms(),
        };
        self.change(|map| {
            map.insert(name.clone(), contact.clone());
        })?;
        Ok(contact)
    }

    /// Accepts `name` (key `key`) because the user is writing to it, unless the user decided
    /// on it already (a blocked name stays blocked until accepted explicitly), or its key
    /// changed: that is the user's call (`peer accept NAME`).
    pub fn accept_on_send(&self, name: &Name, key: KeyId) -> Result<()> {
        if self.map().contains_key(name) {
            return Ok(());
        }
        self.set(name, key, Standing::Accepted).map(drop)
    }

    /// Forgets `name`: it is a stranger again. Returns whether it was a contact.
    pub fn forget(&self, name: &Name) -> Result<bool> {
        let mut was = false;
        self.change(|map| was = map.remove(name).is_some())?;
        Ok(was)
    }

    fn change(&self, edit: impl FnOnce(&mut BTreeMap<Name, Contact>)) -> Result<()> {
        let mut map = self.map();
        let mut next = map.clone();
        edit(&mut next);
        if let Some(path) = &self.inner.path {
            write(path, &next)?;
        }
        *map = next;
        self.inner
            .reach
            .send_replace(reach_of(self.inner.open, &map));
        Ok(())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Name, Contact>> {
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn reach_of(open: bool, map: &BTreeMap<Name, Contact>) -> Reach {
    if open {
        return Reach::Anyone;
    }
    let mut keys: Vec<KeyId> = map
        .values()
        .filter(|c| c.standing == Standing::Accepted)
        .map(|c| c.key)
        .collect();
    keys.sort();
    keys.dedup();
    // The directory takes at most MAX_CONTACTS; the most recent decisions win.
    if keys.len() > common::defaults::MAX_CONTACTS {
        let mut recent: Vec<&Contact> = map
            .values()
            .filter(|c| c.standing == Standing::Accepted)
            .collect();
        recent.sort_by_key(|c| std::cmp::Reverse(c.since_ms));
        keys = recent
            .into_iter()
            .map(|c| c.key)
            .take(common::defaults::MAX_CONTACTS)
            .collect();
    }
    Reach::Contacts(keys)
}

/// Reads the contacts file; a missing file is no contacts.
pub fn read_file(home: &Home) -> Result<Vec<Contact>> {
    Ok(read(&home.path().join(FILE))?.contacts)
}

fn read(path: &Path) -> Result<Saved> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a contacts file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write(path: &Path, map: &BTreeMap<Name, Contact>) -> Result<()> {
    let saved = Saved {
        contacts: map.values().cloned().collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&saved)?;
    bytes.push(b'\n');
    let tmp = path.with_extension("json.new");
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(&bytes)?;
        file.sync_all()
    });
    written.with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// A key as its 64 hex digits, so the file reads like `whois` output.
mod hex_key {
    use common::KeyId;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(key: &KeyId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    #[test]
    fn strangers_contacts_and_blocked() {
        let contacts = Contacts::in_memory(false);
        assert_eq!(contacts.verdict(&name("bob")), Verdict::Stranger);
        contacts
            .accept_on_send(&name("bob"), KeyId([2; 32]))
            .expect("set");
        contacts
            .set(&name("eve"), KeyId([5; 32]), Standing::Blocked)
            .expect("set");
        assert_eq!(contacts.verdict(&name("bob")), Verdict::Contact);
        assert_eq!(contacts.verdict(&name("eve")), Verdict::Blocked);
        assert_eq!(
            *contacts.reach().borrow(),
            Reach::Contacts(vec![KeyId([2; 32])]),
            "only accepted keys reach us"
        );
        // Writing to a blocked name does not unblock it.
        contacts
            .accept_on_send(&name("eve"), KeyId([5; 32]))
            .expect("set");
        assert_eq!(contacts.verdict(&name("eve")), Verdict::Blocked);
        assert!(contacts.forget(&name("bob")).expect("forget"));
        assert_eq!(*contacts.reach().borrow(), Reach::Contacts(vec![]));
    }

    #[test]
    fn an_open_peer_is_reached_by_anyone_but_still_blocks() {
        let contacts = Contacts::in_memory(true);
        assert_eq!(contacts.verdict(&name("bob")), Verdict::Contact);
        assert_eq!(*contacts.reach().borrow(), Reach::Anyone);
        contacts
            .set(&name("eve"), KeyId([5; 32]), Standing::Blocked)
            .expect("set");
        assert_eq!(contacts.verdict(&name("eve")), Verdict::Blocked);
    }

    #[test]
    fn decisions_survive_a_reload_and_the_file_is_json() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let home = Home::new(Some(dir.path().to_path_buf()), &name("me"))?;
        let contacts = Contacts::load(&home, false)?;
        contacts.set(&name("bob"), KeyId([2; 32]), Standing::Accepted)?;
        contacts.set(&name("eve"), KeyId([5; 32]), Standing::Blocked)?;
        let again = Contacts::load(&home, false)?;
        assert_eq!(again.list(), contacts.list());
        let text = std::fs::read_to_string(home.path().join(FILE))?;
        assert!(text.contains("\"blocked\""), "{text}");
        std::fs::write(home.path().join(FILE), b"{ not json")?;
        assert!(Contacts::load(&home, false).is_err());
        Ok(())
    }
}
