//! End-to-end sealing of mail: what the directory holds for two peers, it can neither read nor
//! forge nor alter unnoticed.
//!
//! # Construction
//!
//! Each peer has two keys: its identity key (Ed25519, the one TLS proves and [`KeyId`] names)
//! and an encryption key (X25519) made beside it. It publishes the encryption key signed by the
//! identity key ([`PublishedKey`]); the directory hands that out with lookups, and a sender
//! checks the signature against the identity key it has pinned for the name, so a directory
//! cannot slip in an encryption key of its own.
//!
//! A letter is sign-then-encrypt:
//!
//! 1. The sender signs, with its identity key, the content (a chat message or a file part, with
//!    its own `from`, `to`, id and time) together with the recipient's [`KeyId`], so a letter
//!    cannot be re-addressed to someone else and still verify.
//! 2. It seals the content, its identity public key and the signature with HPKE (RFC 9180)
//!    base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305, to the
//!    recipient's encryption key. The routing metadata the directory needs ([`Letter`]'s id,
//!    from, to, time and kind) goes in the clear as the AEAD's associated data: the directory
//!    reads it but cannot change it without the recipient noticing.
//!
//! The recipient opens the letter, checks the signature, checks that the content agrees with
//! the routing metadata, and hands back the signer's [`KeyId`]; the caller compares that with
//! the key it has pinned for the sender's name.
//!
//! # Why this construction
//!
//! HPKE is the IETF's standard for sealing to a public key (MLS and TLS's Encrypted Client
//! Hello use it), and the `hpke` crate implements it with the RustCrypto primitives and is
//! checked against the RFC's test vectors. Base mode makes a fresh ephemeral key for every
//! letter: once sent, a letter cannot be opened with anything the sender keeps (sender-side
//! forward secrecy). HPKE's own authenticated mode would bind an X25519 sender key: a second
//! identity key to publish and pin beside the Ed25519 one that TLS proves and that names a
//! peer everywhere. Signing with that one key instead keeps a single identity, so the sender
//! signs with Ed25519 (`ring`, the same library TLS uses here). Signing inside the seal keeps the signature, and so
//! who wrote to whom beyond the routing metadata, from the directory.
//!
//! What it does not give: the recipient's encryption key is long-term, so whoever steals it can
//! open every letter to that peer that they also copied from the directory (no recipient-side
//! forward secrecy), and a letter's replay is stopped by the recipient's dedup by id, not by
//! the cryptography. A ratchet (the Double Ratchet, or MLS for rooms) would close the first gap;
//! see the README.

use crate::{
    identity::{write_private, Identity},
    wire::{ChatMessage, FilePart, Letter, LetterKind, MessageId, RoomMessage},
    KeyId,
};
use anyhow::Context;
use hpke::{
    aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, Kem as _,
    OpModeR, OpModeS, Serializable,
};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;
use std::{fmt, fs, path::Path};

type Kem = X25519HkdfSha256;

/// The file beside the identity key that keeps the encryption key's secret half.
const SEAL_KEY_FILE: &str = "seal.key";

/// What an identity signs to publish an encryption key.
const KEY_CONTEXT: &[u8] = b"p2pchat published key v1\0";
/// What a sender signs, before the recipient's key id and the content.
const LETTER_CONTEXT: &[u8] = b"p2pchat letter v1\0";
/// What a recipient signs to prove it took a letter, before the sender's key id and the id.
const RECEIPT_CONTEXT: &[u8] = b"p2pchat receipt v1\0";
/// HPKE's `info`: binds every letter to this protocol and version.
const HPKE_INFO: &[u8] = b"p2pchat letter v1";

/// Bytes a letter's sealed part adds to its content's encoding: the signer's key (32), the
/// signature (64), the AEAD tag (16), and the variant tag of the content.
pub const SEAL_OVERHEAD: usize = 32 + 64 + 16 + 1;

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "BigArray")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..4]))
    }
}

/// A peer's encryption key, signed by its identity key: what the directory hands out so that
/// others can seal letters to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    /// The identity's Ed25519 public key; its [`KeyId::of_ed25519`] is the identity's key id.
    pub identity: [u8; 32],
    /// The X25519 public key letters are sealed to.
    pub encryption: [u8; 32],
    /// The identity's signature of the encryption key.
    pub signature: Signature,
}

impl PublishedKey {
    /// Checks that the key was published by the identity `owner`: the identity key is the one
    /// `owner` names, and it signed the encryption key.
    pub fn verify(&self, owner: &KeyId) -> Result<(), SealError> {
        if KeyId::of_ed25519(&self.identity) != *owner {
            return Err(SealError::KeyNotOwned);
        }
        UnparsedPublicKey::new(&ED25519, &self.identity)
            .verify(&key_signed_bytes(&self.encryption), &self.signature.0)
            .map_err(|_| SealError::KeyNotOwned)
    }
}

/// What a letter carries inside its seal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A chat message.
    Chat(ChatMessage),
    /// A part of a file.
    FilePart(FilePart),
    /// A message to a room: the copy for this letter's recipient.
    RoomChat(RoomMessage),
}

impl Content {
    /// The routing metadata a letter with this content shows the directory.
    fn header(&self) -> Header<'_> {
        match self {
            Content::Chat(m) | Content::RoomChat(RoomMessage { message: m, .. }) => Header {
                id: m.id,
                from: &m.from,
                to: &m.to,
                sent_at_ms: m.sent_at_ms,
                kind: LetterKind::Chat,
            },
            Content::FilePart(p) => Header {
                id: p.id,
                from: &p.offer.from,
                to: &p.offer.to,
                sent_at_ms: p.offer.sent_at_ms,
                kind: LetterKind::FilePart {
                    file: p.offer.id,
                    last: p.is_last(),
                },
            },
        }
    }
}

/// A letter's clear part, as the AEAD binds it.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct Header<'a> {
    id: crate::wire::MessageId,
    from: &'a crate::Name,
    to: &'a crate::Name,
    sent_at_ms: u64,
    kind: LetterKind,
}

impl<'a> Header<'a> {
    fn of(letter: &'a Letter) -> Self {
        Header {
            id: letter.id,
            from: &letter.from,
            to: &letter.to,
            sent_at_ms: letter.sent_at_ms,
            kind: letter.kind,
        }
    }

    fn aad(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// The plaintext under a letter's seal.
#[derive(Serialize, Deserialize)]
struct Signed {
    signer: [u8; 32],
    signature: Signature,
    content: Content,
}

/// A letter opened and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// What it carried.
    pub content: Content,
    /// Who signed it: compare with the key pinned for the sender's name.
    pub signer: KeyId,
}

/// Why a key or a letter was refused. None of these says which check of the cipher failed
/// beyond what the user needs: the letter was altered, forged, or not for us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A published key is not signed by the identity it claims.
    #[error("the encryption key is not signed by the peer's identity key")]
    KeyNotOwned,
    /// The seal does not open with our key: the letter was altered, or sealed to someone else.
    #[error("the letter was altered or is not sealed to us")]
    Unopenable,
    /// It opened, but its signature does not verify: forged, or re-addressed.
    #[error("the letter's signature does not verify")]
    BadSignature,
    /// The content under the seal disagrees with the letter's routing metadata.
    #[error("the letter's content disagrees with its address")]
    Mismatch,
    /// The letter could not be made (an encoding or a cipher failure).
    #[error("the letter could not be sealed")]
    Sealing,
}

/// A recipient whose published encryption key was checked (signed by its identity key, and a
/// valid X25519 key): check once, when the directory hands the key out, and seal to it as
/// often as needed. (Checking the signature is about a third of the cost of a seal.)
#[derive(Clone)]
pub struct Recipient {
    id: KeyId,
    key: <Kem as hpke::Kem>::PublicKey,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipient").field("id", &self.id).finish()
    }
}

impl Recipient {
    /// Checks that `key` was published by the identity `id`.
    pub fn check(id: &KeyId, key: &PublishedKey) -> Result<Self, SealError> {
        key.verify(id)?;
        let key = <Kem as hpke::Kem>::PublicKey::from_bytes(&key.encryption)
            .map_err(|_| SealError::KeyNotOwned)?;
        Ok(Self { id: *id, key })
    }

    /// The recipient's identity.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

/// A peer's keys for sealing and opening letters.
pub struct Sealer {
    signing: Ed25519KeyPair,
    key_id: KeyId,
    secret: <Kem as hpke::Kem>::PrivateKey,
    published: PublishedKey,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// The sealer of `identity`, with the encryption key whose secret half is `secret`.
    pub fn new(identity: &Identity, secret: [u8; 32]) -> anyhow::Result<Self> {
        let signing =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(identity.key.secret_pkcs8_der())
                .map_err(|e| anyhow::anyhow!("the identity key is not an Ed25519 key: {e}"))?;
        let sealer = Self::with_keys(signing, secret)?;
        anyhow::ensure!(
            sealer.key_id == identity.key_id,
            "the identity key does not match its certificate"
        );
        Ok(sealer)
    }

    /// A sealer whose identity key comes from a 32-byte Ed25519 seed (RFC 8032): the same
    /// seeds give the same keys, for tests and reproducible measurements. It has no
    /// certificate, so it cannot make connections.
    pub fn from_seed(identity_seed: [u8; 32], secret: [u8; 32]) -> anyhow::Result<Self> {
        let signing = Ed25519KeyPair::from_seed_unchecked(&identity_seed)
            .map_err(|e| anyhow::anyhow!("bad seed: {e}"))?;
        Self::with_keys(signing, secret)
    }

    fn with_keys(signing: Ed25519KeyPair, secret: [u8; 32]) -> anyhow::Result<Self> {
        let identity_public: [u8; 32] = signing
            .public_key()
            .as_ref()
            .try_into()
            .context("an Ed25519 public key is 32 bytes")?;
        let secret = <Kem as hpke::Kem>::PrivateKey::from_bytes(&secret)
            .map_err(|e| anyhow::anyhow!("bad encryption key: {e}"))?;
        let encryption: [u8; 32] = Kem::sk_to_pk(&secret).to_bytes().into();
        let signature = signing_bytes(&signing, &key_signed_bytes(&encryption));
        Ok(Self {
            signing,
            key_id: KeyId::of_ed25519(&identity_public),
            secret,
            published: PublishedKey {
                identity: identity_public,
                encryption,
                signature,
            },
        })
    }

    /// The identity's key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Loads the encryption key kept beside `identity` in `dir`, or makes one and keeps it there,
    /// readable by its owner only.
    pub fn load_or_generate(dir: &Path, identity: &Identity) -> anyhow::Result<Self> {
        let path = dir.join(SEAL_KEY_FILE);
        let secret = match fs::read(&path) {
            Ok(bytes) => bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not an encryption key", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (secret, _) = Kem::gen_keypair(&mut rand::rng());
                let secret: [u8; 32] = secret.to_bytes().into();
                write_private(&path, &secret)?;
                secret
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Self::new(identity, secret)
    }

    /// Signs the next op of a room's membership log as `actor`, the name of this identity
    /// ([`crate::room`]): the op `(version, prev)` (its place, and the hash of the op before),
    /// made at `at_ms`.
    pub fn sign_op(
        &self,
        room: crate::room::RoomName,
        place: (u64, [u8; 32]),
        actor: crate::Name,
        at_ms: u64,
        action: crate::room::Action,
    ) -> crate::room::Op {
        crate::room::Op::sign(&self.signing, room, place, actor, at_ms, action)
    }

    /// What to publish: the encryption key, signed.
    pub fn published(&self) -> PublishedKey {
        self.published
    }

    /// Seals `content` to the recipient whose identity is `to` and who published `key`; the
    /// published key is checked first.
    pub fn seal(
        &self,
        to: &KeyId,
        key: &PublishedKey,
        content: Content,
    ) -> Result<Letter, SealError> {
        self.seal_to(&Recipient::check(to, key)?, content)
    }

    /// Seals `content` to a recipient whose published key was checked already.
    pub fn seal_to(&self, recipient: &Recipient, content: Content) -> Result<Letter, SealError> {
        let (to, recipient) = (&recipient.id, &recipient.key);
        let content_bytes = postcard::to_allocvec(&content).map_err(|_| SealError::Sealing)?;
        let signature = signing_bytes(&self.signing, &letter_signed_bytes(to, &content_bytes));
        let header = content.header();
        let aad = header.aad();
        let (id, from, to_name, sent_at_ms, kind) = (
            header.id,
            header.from.clone(),
            header.to.clone(),
            header.sent_at_ms,
            header.kind,
        );
        let signed = Signed {
            signer: self.published.identity,
            signature,
            content,
        };
        let plaintext = postcard::to_allocvec(&signed).map_err(|_| SealError::Sealing)?;
        let (encapped, sealed) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            recipient,
            HPKE_INFO,
            &plaintext,
            &aad,
            &mut rand::rng(),
        )
        .map_err(|_| SealError::Sealing)?;
        Ok(Letter {
            id,
            from,
            to: to_name,
            sent_at_ms,
            kind,
            encapped: encapped.to_bytes().into(),
            sealed,
        })
    }

    /// Our proof that we took the letter that `sender` signed and whose receipt tells `told`
    /// ([`Letter::receipt`]): the sender checks it with [`verify_receipt`], so a directory
    /// cannot claim delivery of mail it dropped.
    pub fn prove_receipt(&self, sender: &KeyId, told: MessageId) -> Signature {
        signing_bytes(&self.signing, &receipt_signed_bytes(sender, &told))
    }

    /// Opens a letter sealed to us and checks it: the seal, the signature, and that the content
    /// agrees with the routing metadata. The caller checks the signer against its pins.
    pub fn open(&self, letter: &Letter) -> Result<Opened, SealError> {
        let header = Header::of(letter);
        let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&letter.encapped)
            .map_err(|_| SealError::Unopenable)?;
        let plaintext = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.secret,
            &encapped,
            HPKE_INFO,
            &letter.sealed,
            &header.aad(),
        )
        .map_err(|_| SealError::Unopenable)?;
        // Only the holder of our encryption key's public half made these bytes, which anyone
        // may: they are checked like any other input.
        let signed: Signed = match postcard::take_from_bytes(&plaintext) {
            Ok((signed, [])) => signed,
            _ => return Err(SealError::BadSignature),
        };
        let content_bytes =
            postcard::to_allocvec(&signed.content).map_err(|_| SealError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, &signed.signer)
            .verify(
                &letter_signed_bytes(&self.key_id, &content_bytes),
                &signed.signature.0,
            )
            .map_err(|_| SealError::BadSignature)?;
        if signed.content.header() != header {
            return Err(SealError::Mismatch);
        }
        Ok(Opened {
            signer: KeyId::of_ed25519(&signed.signer),
            content: signed.content,
        })
    }
}

/// True when `signature` is the proof, by the identity key `signer`, that it took the letter
/// of `sender` whose receipt tells `told`.
pub fn verify_receipt(
    signer: &[u8; 32],
    sender: &KeyId,
    told: &MessageId,
    signature: &Signature,
) -> bool {
    UnparsedPublicKey::new(&ED25519, signer)
        .verify(&receipt_signed_bytes(sender, told), &signature.0)
        .is_ok()
}

fn receipt_signed_bytes(sender: &KeyId, told: &MessageId) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RECEIPT_CONTEXT.len() + 32 + 16);
    bytes.extend_from_slice(RECEIPT_CONTEXT);
    bytes.extend_from_slice(&sender.0);
    bytes.extend_from_slice(&told.0);
    bytes
}

/// The bytes an identity signs to publish `encryption`.
fn key_signed_bytes(encryption: &[u8; 32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(KEY_CONTEXT.len() + 32);
    bytes.extend_from_slice(KEY_CONTEXT);
    bytes.extend_from_slice(encryption);
    bytes
}

/// The bytes a sender signs for a letter to `to`.
fn letter_signed_bytes(to: &KeyId, content: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(LETTER_CONTEXT.len() + 32 + content.len());
    bytes.extend_from_slice(LETTER_CONTEXT);
    bytes.extend_from_slice(&to.0);
    bytes.extend_from_slice(content);
    bytes
}

fn signing_bytes(key: &Ed25519KeyPair, message: &[u8]) -> Signature {
    let mut signature = [0u8; 64];
    signature.copy_from_slice(key.sign(message).as_ref());
    Signature(signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{wire::FileOffer, Name};

    fn sealer() -> (Identity, Sealer) {
        let identity = Identity::generate("x").expect("identity");
        let (secret, _) = Kem::gen_keypair(&mut rand::rng());
        let sealer = Sealer::new(&identity, secret.to_bytes().into()).expect("sealer");
        (identity, sealer)
    }

    fn chat(body: &str) -> Content {
        Content::Chat(ChatMessage {
            id: MessageId([3; 16]),
            from: Name::new("c1").expect("name"),
            to: Name::new("c2").expect("name"),
            sent_at_ms: 42,
            body: body.into(),
        })
    }

    #[test]
    fn raw_key_and_certificate_give_the_same_key_id() {
        let (identity, sealer) = sealer();
        assert_eq!(
            KeyId::of_ed25519(&sealer.published().identity),
            identity.key_id
        );
    }

    #[test]
    fn a_letter_opens_for_its_recipient_only_and_names_its_signer() {
        let ((c1, s1), (c2, s2), (_, s3)) = (sealer(), sealer(), sealer());
        let letter = s1
            .seal(&c2.key_id, &s2.published(), chat("secret marker"))
            .expect("seal");
        assert!(!letter.sealed.windows(6).any(|w| w == b"secret"));
        let opened = s2.open(&letter).expect("open");
        assert_eq!(
            (opened.content, opened.signer),
            (chat("secret marker"), c1.key_id)
        );
        assert_eq!(s3.open(&letter), Err(SealError::Unopenable));
    }

    #[test]
    fn any_altered_byte_or_field_is_refused() {
        let ((_, s1), (c2, s2)) = (sealer(), sealer());
        let letter = s1
            .seal(&c2.key_id, &s2.published(), chat("hi"))
            .expect("seal");
        for i in 0..letter.sealed.len() {
            let mut bad = letter.clone();
            bad.sealed[i] ^= 1;
            assert_eq!(s2.open(&bad), Err(SealError::Unopenable), "byte {i}");
        }
        let mut bad = letter.clone();
        bad.encapped[0] ^= 1;
        assert!(s2.open(&bad).is_err());
        let mut bad = letter.clone();
        bad.sent_at_ms += 1;
        assert_eq!(s2.open(&bad), Err(SealError::Unopenable));
        let mut bad = letter;
        bad.from = Name::new("c3").expect("name");
        assert_eq!(s2.open(&bad), Err(SealError::Unopenable));
    }

    /// A letter sealed by whoever knows the recipient's public encryption key, but signed for
    /// another recipient, or claiming a content the header does not show, is refused.
    #[test]
    fn a_re_addressed_or_mismatched_letter_is_refused() {
        let ((_, s1), (c2, s2), (c3, s3)) = (sealer(), sealer(), sealer());
        // Signed for c3, then sealed to c2 by someone holding the signed plaintext.
        let content = chat("hi");
        let bytes = postcard::to_allocvec(&content).expect("encode");
        let signed = Signed {
            signer: s1.published().identity,
            signature: signing_bytes(&s1.signing, &letter_signed_bytes(&c3.key_id, &bytes)),
            content: content.clone(),
        };
        let header = content.header();
        let reseal = |signed: &Signed, header: &Header<'_>| {
            let pk =
                <Kem as hpke::Kem>::PublicKey::from_bytes(&s2.published().encryption).expect("pk");
            let (encapped, sealed) =
                hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
                    &OpModeS::Base,
                    &pk,
                    HPKE_INFO,
                    &postcard::to_allocvec(signed).expect("encode"),
                    &header.aad(),
                    &mut rand::rng(),
                )
                .expect("seal");
            Letter {
                id: header.id,
                from: header.from.clone(),
                to: header.to.clone(),
                sent_at_ms: header.sent_at_ms,
                kind: header.kind,
                encapped: encapped.to_bytes().into(),
                sealed,
            }
        };
        assert_eq!(
            s2.open(&reseal(&signed, &header)),
            Err(SealError::BadSignature)
        );
        let _ = s3;
        // Properly signed for c2, but under a header that names another id.
        let signed = Signed {
            signature: signing_bytes(&s1.signing, &letter_signed_bytes(&c2.key_id, &bytes)),
            ..signed
        };
        let mut other = content.header();
        other.id = MessageId([9; 16]);
        assert_eq!(s2.open(&reseal(&signed, &other)), Err(SealError::Mismatch));
        assert!(s2.open(&reseal(&signed, &header)).is_ok());
    }

    #[test]
    fn a_receipt_proof_verifies_for_its_sender_and_id_only() {
        let ((c1, _), (_, s2)) = (sealer(), sealer());
        let id = MessageId([4; 16]);
        let proof = s2.prove_receipt(&c1.key_id, id);
        let signer = s2.published().identity;
        assert!(verify_receipt(&signer, &c1.key_id, &id, &proof));
        assert!(!verify_receipt(
            &signer,
            &c1.key_id,
            &MessageId([5; 16]),
            &proof
        ));
        assert!(!verify_receipt(&signer, &KeyId([0; 32]), &id, &proof));
        assert!(!verify_receipt(&[9; 32], &c1.key_id, &id, &proof));
    }

    #[test]
    fn a_published_key_verifies_for_its_owner_only() {
        let ((c1, s1), (c2, s2)) = (sealer(), sealer());
        s1.published().verify(&c1.key_id).expect("own key");
        assert_eq!(
            s1.published().verify(&c2.key_id),
            Err(SealError::KeyNotOwned)
        );
        let mut swapped = s1.published();
        swapped.encryption = s2.published().encryption;
        assert_eq!(swapped.verify(&c1.key_id), Err(SealError::KeyNotOwned));
        assert_eq!(
            s2.seal(&c1.key_id, &swapped, chat("x")),
            Err(SealError::KeyNotOwned)
        );
    }

    #[test]
    fn a_file_part_shows_its_file_and_whether_it_is_last() {
        let ((_, s1), (c2, s2)) = (sealer(), sealer());
        let part = FilePart {
            id: MessageId([5; 16]),
            offer: FileOffer {
                id: MessageId([6; 16]),
                from: Name::new("c1").expect("name"),
                to: Name::new("c2").expect("name"),
                name: "notes.txt".into(),
                size: 4,
                hash: [0; 32],
                sent_at_ms: 7,
            },
            offset: 0,
            data: b"data".to_vec(),
        };
        let letter = s1
            .seal(&c2.key_id, &s2.published(), Content::FilePart(part.clone()))
            .expect("seal");
        assert_eq!(
            letter.kind,
            LetterKind::FilePart {
                file: MessageId([6; 16]),
                last: true
            }
        );
        assert_eq!(
            s2.open(&letter).expect("open").content,
            Content::FilePart(part)
        );
    }

    #[test]
    fn the_encryption_key_survives_a_reload() {
        let dir = std::env::temp_dir().join(format!("seal-test-{}", rand::random::<u64>()));
        let identity = Identity::load_or_generate(&dir, "c1").expect("identity");
        let a = Sealer::load_or_generate(&dir, &identity).expect("generate");
        let b = Sealer::load_or_generate(&dir, &identity).expect("load");
        assert_eq!(a.published(), b.published());
        let _ = fs::remove_dir_all(dir);
    }
}
