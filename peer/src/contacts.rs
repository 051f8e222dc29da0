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
//! The first key seen for any name (a contact's or not) is remembered too ([`Contacts::check_key`]):
//! the directory vouches for name → key, and a later, different key for the name is refused
//! loudly on every path until the user trusts it (`peer trust NAME`), as SSH does with a host
//! key. So a directory that swaps a key is noticed by everyone who talked to the name before.
//!
//! The file is small JSON, rewritten whole (a temporary file renamed over it) on each change,
//! by the one process that runs the peer: short commands go through it.

use crate::{failure::Failure, home::Home};
use anyhow::{Context, Result};
use common::{
    now_ms,
    wire::{PeerInfo, Reach},
    KeyId, Name,
};
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

/// The first key seen for a name, or the one the user trusted since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// The name.
    pub name: Name,
    /// Its key (hex in the file).
    #[serde(with = "hex_key")]
    pub key: KeyId,
    /// When it was first seen or trusted, ms since the epoch.
    pub since_ms: u64,
}

/// How a key presented for a name compares with the one remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// The one remembered, or the first seen (now remembered).
    Known,
    /// Another key than the one remembered.
    Changed {
        /// The key remembered for the name.
        pinned: KeyId,
    },
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    contacts: Vec<Contact>,
    #[serde(default)]
    known: Vec<Known>,
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
    known: Mutex<BTreeMap<Name, Known>>,
    /// The keys of the members of the rooms we are in: they may reach us too, as contacts
    /// may (see [`Contacts::set_room_keys`]).
    room_keys: Mutex<Vec<KeyId>>,
    reach: watch::Sender<Reach>,
}

impl Contacts {
    /// The contacts kept in `home`; `open` lets anyone reach us.
    pub fn load(home: &Home, open: bool) -> Result<Self> {
        let path = home.path().join(FILE);
        let saved = read(&path)?;
        Ok(Self::with(Some(path), open, saved))
    }

    /// Contacts kept in memory only (tests).
    pub fn in_memory(open: bool) -> Self {
        Self::with(None, open, Saved::default())
    }

    fn with(path: Option<PathBuf>, open: bool, saved: Saved) -> Self {
        let map: BTreeMap<Name, Contact> = saved
            .contacts
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let mut known: BTreeMap<Name, Known> = saved
            .known
            .into_iter()
            .map(|k| (k.name.clone(), k))
            .collect();
        // A contact's key is known, also in a file from before keys were remembered.
        for c in map.values() {
            known.entry(c.name.clone()).or_insert_with(|| Known {
                name: c.name.clone(),
                key: c.key,
                since_ms: c.since_ms,
            });
        }
        let (reach, _) = watch::channel(reach_of(open, &map, &[]));
        Self {
            inner: Arc::new(Inner {
                path,
                open,
                map: Mutex::new(map),
                known: Mutex::new(known),
                room_keys: Mutex::default(),
                reach,
            }),
        }
    }

    /// Lets the members of our rooms (`keys`) reach us directly and be introduced to us, as
    /// contacts may, so a room's messages go peer to peer; they do not become contacts (their
    /// files and 1:1 messages are still requests). Replaces the keys given before.
    pub fn set_room_keys(&self, mut keys: Vec<KeyId>) {
        keys.sort();
        keys.dedup();
        // The contacts' lock first, then the room keys', as in `change_with`.
        let map = self.map();
        let mut room_keys = self
            .inner
            .room_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *room_keys == keys {
            return;
        }
        *room_keys = keys;
        let reach = reach_of(self.inner.open, &map, &room_keys);
        self.inner.reach.send_replace(reach);
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

    /// Compares `key`, presented for `name` (by the directory, or in a handshake the directory
    /// vouched for), with the key remembered for it; the first key seen is remembered.
    pub fn check_key(&self, name: &Name, key: KeyId) -> Result<KeyCheck> {
        let pinned = self.known().get(name).map(|k| k.key);
        match pinned {
            Some(pinned) if pinned != key => Ok(KeyCheck::Changed { pinned }),
            Some(_) => Ok(KeyCheck::Known),
            None => self.trust(name, key).map(|()| KeyCheck::Known),
        }
    }

    /// The key remembered for `name`, if any; remembers nothing.
    pub fn pinned(&self, name: &Name) -> Option<KeyId> {
        self.known().get(name).map(|k| k.key)
    }

    /// [`Contacts::check_key`] for what the directory says of a name, as the user is told: a
    /// changed key is a [`Failure::KeyChanged`].
    pub fn vouch(&self, info: &PeerInfo) -> Result<(), Failure> {
        self.vouch_key(&info.name, info.key)
    }

    /// [`Contacts::vouch`] for `key`, given for `name` by anyone (the directory, a room's
    /// signed log).
    pub fn vouch_key(&self, name: &Name, key: KeyId) -> Result<(), Failure> {
        match self.check_key(name, key) {
            Ok(KeyCheck::Known) => Ok(()),
            Ok(KeyCheck::Changed { pinned }) => Err(Failure::KeyChanged {
                name: name.clone(),
                pinned,
                presented: key,
            }),
            Err(e) => Err(Failure::other(e)),
        }
    }

    /// Remembers `key` as `name`'s from now on (the first seen, or the user checked it:
    /// `peer trust`), for a contact too.
    pub fn trust(&self, name: &Name, key: KeyId) -> Result<()> {
        let mut known = self.known().clone();
        let entry = Known {
            name: name.clone(),
            key,
            since_ms: now_ms(),
        };
        known.insert(name.clone(), entry);
        self.change_with(&known, |map| {
            if let Some(contact) = map.get_mut(name) {
                contact.key = key;
            }
        })?;
        *self.known() = known;
        Ok(())
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
        let known = self.known().clone();
        self.change_with(&known, edit)
    }

    /// Edits the contacts and saves them with `known`.
    fn change_with(
        &self,
        known: &BTreeMap<Name, Known>,
        edit: impl FnOnce(&mut BTreeMap<Name, Contact>),
    ) -> Result<()> {
        let mut map = self.map();
        let mut next = map.clone();
        edit(&mut next);
        if let Some(path) = &self.inner.path {
            write(path, &next, known)?;
        }
        *map = next;
        let room_keys = self
            .inner
            .room_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.inner
            .reach
            .send_replace(reach_of(self.inner.open, &map, &room_keys));
        Ok(())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Name, Contact>> {
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<Name, Known>> {
        self.inner.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn reach_of(open: bool, map: &BTreeMap<Name, Contact>, room_keys: &[KeyId]) -> Reach {
    if open {
        return Reach::Anyone;
    }
    // The directory takes at most MAX_CONTACTS keys; the most recent decisions win.
    let mut accepted: Vec<&Contact> = map
        .values()
        .filter(|c| c.standing == Standing::Accepted)
        .collect();
    accepted.sort_by_key(|c| std::cmp::Reverse(c.since_ms));
    let mut seen = std::collections::HashSet::new();
    // Contacts first, then the members of our rooms.
    let mut keys: Vec<KeyId> = accepted
        .into_iter()
        .map(|c| c.key)
        .chain(room_keys.iter().copied())
        .filter(|key| seen.insert(*key))
        .take(common::defaults::MAX_CONTACTS)
        .collect();
    keys.sort();
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

fn write(path: &Path, map: &BTreeMap<Name, Contact>, known: &BTreeMap<Name, Known>) -> Result<()> {
    let saved = Saved {
        contacts: map.values().cloned().collect(),
        known: known.values().cloned().collect(),
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
    fn the_first_key_is_remembered_and_a_change_is_caught_until_trusted() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let home = Home::new(Some(dir.path().to_path_buf()), &name("me"))?;
        let contacts = Contacts::load(&home, false)?;
        let (bob, k1, k2) = (name("bob"), KeyId([1; 32]), KeyId([2; 32]));
        assert_eq!(contacts.check_key(&bob, k1)?, KeyCheck::Known, "first seen");
        assert_eq!(contacts.check_key(&bob, k1)?, KeyCheck::Known);
        assert_eq!(
            contacts.check_key(&bob, k2)?,
            KeyCheck::Changed { pinned: k1 }
        );
        // Remembered across a restart, and for contacts too.
        contacts.set(&bob, k1, Standing::Accepted)?;
        let again = Contacts::load(&home, false)?;
        assert_eq!(again.check_key(&bob, k2)?, KeyCheck::Changed { pinned: k1 });
        again.trust(&bob, k2)?;
        assert_eq!(again.check_key(&bob, k2)?, KeyCheck::Known);
        assert_eq!(
            again.get(&bob).map(|c| c.key),
            Some(k2),
            "the contact follows"
        );
        assert_eq!(*again.reach().borrow(), Reach::Contacts(vec![k2]));
        Ok(())
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
