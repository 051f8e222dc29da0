//! Mail through the directory, sealed end to end: what we deposit is sealed to the recipient's
//! published encryption key and signed by our identity key ([`common::seal`]); what the
//! directory pushes is opened, its signature checked, and its signer compared with the key we
//! remember for the sender's name, before anything of it is shown or stored. Taking a letter,
//! we sign a proof for its sender's receipt; a receipt for our letters counts only the proofs
//! that the recipient's remembered key signed.
//!
//! The direct path needs none of this: two peers talk over a QUIC connection whose TLS 1.3
//! handshake proved both identity keys, checked against the pins in [`Contacts`], and the
//! directory is not on it.

use crate::{
    contacts::{Contacts, KeyCheck},
    failure::Failure,
};
use common::KeyId;
use common::{
    seal::{verify_receipt, Content, PublishedKey, Recipient, SealError, Sealer, Signature},
    wire::{Letter, PeerInfo, Receipt, SignedReceipt},
    Name,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Seals what we deposit and opens what the directory pushes; cheap to clone.
#[derive(Clone)]
pub struct Letters {
    sealer: Arc<Sealer>,
    contacts: Contacts,
    /// Published keys checked already, by identity and encryption key: a conversation seals
    /// every letter to the same one.
    checked: Arc<Mutex<Checked>>,
}

/// Checked recipients by identity and encryption key.
type Checked = HashMap<(KeyId, [u8; 32]), Recipient>;

/// Most checked published keys kept; past that, the cache starts afresh.
const CHECKED_MAX: usize = 4096;

/// Why a letter from the mailbox was refused: it is not shown, and the directory drops it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Altered, forged, or not for us.
    #[error("a letter from {from} was refused: {cause}")]
    Broken {
        /// Who it says it is from.
        from: Name,
        /// What failed.
        cause: SealError,
    },
    /// Signed by another key than the one remembered for the sender.
    #[error("a letter from {from} was refused: it is signed by {signer}, not by the key remembered for {from} ({pinned}); `peer trust {from}` accepts the new key")]
    KeyChanged {
        /// Who it says it is from.
        from: Name,
        /// The key remembered for the name.
        pinned: common::KeyId,
        /// The key that signed it.
        signer: common::KeyId,
    },
    /// Our record of keys could not be read or written.
    #[error("a letter from {from} could not be checked: {cause}")]
    Unchecked {
        /// Who it says it is from.
        from: Name,
        /// What failed.
        cause: String,
    },
}

impl Letters {
    /// Letters sealed and opened with `sealer`, senders checked against `contacts`.
    pub fn new(sealer: Sealer, contacts: Contacts) -> Self {
        Self {
            sealer: Arc::new(sealer),
            contacts,
            checked: Arc::default(),
        }
    }

    /// `key`, checked once for `id`.
    fn recipient(&self, id: &KeyId, key: &PublishedKey) -> Result<Recipient, SealError> {
        let cache_key = (*id, key.encryption);
        let lock = || self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(recipient) = lock().get(&cache_key) {
            return Ok(recipient.clone());
        }
        let recipient = Recipient::check(id, key)?;
        let mut checked = lock();
        if checked.len() >= CHECKED_MAX {
            checked.clear();
        }
        checked.insert(cache_key, recipient.clone());
        Ok(recipient)
    }

    /// What we publish for others to seal to.
    pub fn published(&self) -> common::seal::PublishedKey {
        self.sealer.published()
    }

    /// Seals `content` to the peer the directory described as `info`, whose key must be the one
    /// remembered for its name.
    pub fn seal(&self, info: &PeerInfo, content: Content) -> Result<Letter, Failure> {
        self.contacts.vouch(info)?;
        let unsealable = |why: &str| Failure::Unsealable {
            name: info.name.clone(),
            why: why.into(),
        };
        let published = info
            .published
            .as_ref()
            .ok_or_else(|| unsealable("it has published no encryption key"))?;
        self.recipient(&info.key, published)
            .and_then(|recipient| self.sealer.seal_to(&recipient, content))
            .map_err(|e| match e {
                SealError::KeyNotOwned => {
                    unsealable("the directory gave an encryption key its identity key did not sign")
                }
                other => unsealable(&other.to_string()),
            })
    }

    /// Signs the op of a room's log at `place` (its version, the hash of the op before) as
    /// `actor`, our name (see [`common::room`]).
    pub fn sign_op(
        &self,
        room: common::room::RoomName,
        place: (u64, [u8; 32]),
        actor: Name,
        action: common::room::Action,
    ) -> common::room::Op {
        let at = common::now_ms();
        self.sealer.sign_op(room, place, actor, at, action)
    }

    /// Our proof, for the sender `signer` of a letter we took, that we took what its receipt
    /// tells ([`Letter::receipt`]).
    pub fn prove(&self, signer: &common::KeyId, told: common::wire::MessageId) -> Signature {
        self.sealer.prove_receipt(signer, told)
    }

    /// The deliveries of a receipt whose proofs were signed by the key remembered for the peer
    /// that took our mail; the others are left out (and logged). A receipt whose signer is not
    /// that key tells nothing, and neither does one from a name with no key remembered: we
    /// looked up everyone we sent mail to, so a receipt never brings a name's first key (else
    /// a directory could name a peer we never wrote to, sign with its own key, and claim
    /// deliveries).
    pub fn check_receipt(&self, receipt: SignedReceipt) -> Result<Receipt, Refusal> {
        let from = receipt.from.clone();
        let signer = common::KeyId::of_ed25519(&receipt.signer);
        match self.contacts.pinned(&from) {
            Some(pinned) if pinned == signer => {}
            Some(pinned) => {
                return Err(Refusal::KeyChanged {
                    from,
                    pinned,
                    signer,
                })
            }
            None => {
                return Err(Refusal::Unchecked {
                    from,
                    cause: "no key is remembered for it, so its receipt proves nothing".into(),
                })
            }
        }
        let me = self.sealer.key_id();
        let (proven, forged): (Vec<_>, Vec<_>) = receipt
            .delivered
            .iter()
            .partition(|p| verify_receipt(&receipt.signer, &me, &p.told, &p.signature));
        if !forged.is_empty() {
            tracing::warn!(
                from = %from,
                forged = forged.len(),
                "receipt proofs that do not verify were ignored"
            );
        }
        Ok(Receipt {
            id: receipt.id,
            from,
            to: receipt.to,
            delivered: proven.into_iter().map(|p| p.told).collect(),
            at_ms: receipt.at_ms,
        })
    }

    /// The key remembered for `name`, if any.
    pub fn pinned(&self, name: &Name) -> Option<common::KeyId> {
        self.contacts.pinned(name)
    }

    /// Opens a letter from the mailbox and checks who signed it: the key remembered for the
    /// name must have signed it. (The caller remembers the directory's key for a name first
    /// seen in a letter, see [`crate::node`].)
    pub fn open(&self, letter: &Letter) -> Result<(Content, common::KeyId), Refusal> {
        let from = letter.from.clone();
        let opened = self.sealer.open(letter).map_err(|cause| Refusal::Broken {
            from: from.clone(),
            cause,
        })?;
        match self.contacts.check_key(&from, opened.signer) {
            Ok(KeyCheck::Known) => Ok((opened.content, opened.signer)),
            Ok(KeyCheck::Changed { pinned }) => Err(Refusal::KeyChanged {
                from,
                pinned,
                signer: opened.signer,
            }),
            Err(e) => Err(Refusal::Unchecked {
                from,
                cause: format!("{e:#}"),
            }),
        }
    }
}
