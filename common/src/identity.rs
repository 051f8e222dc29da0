//! Long-term identities: an Ed25519 key and a self-signed certificate made with rcgen, kept in
//! a folder, and [`KeyId`], the fingerprint that names a key everywhere else.
//!
//! Nobody trusts the certificate's contents. It only carries the public key into the TLS
//! handshake, where the holder proves it owns the private half; the verifiers in [`crate::tls`]
//! then compare the key's fingerprint with the one they expect.

use anyhow::{Context, Result};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::{fmt, fs, io::Write, path::Path, str::FromStr};

const KEY_FILE: &str = "key.der";
const CERT_FILE: &str = "cert.der";

/// SHA-256 of a certificate's SubjectPublicKeyInfo: the identity of a key, whatever
/// certificate carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The fingerprint of the key in a DER certificate.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Self, webpki::Error> {
        let cert = webpki::EndEntityCert::try_from(cert)?;
        let spki = cert.subject_public_key_info();
        let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        Ok(Self(id))
    }

    /// The fingerprint of a raw Ed25519 public key: the same as [`KeyId::of_cert`] gives for
    /// a certificate carrying it, since the SubjectPublicKeyInfo of an Ed25519 key is a fixed
    /// prefix (RFC 8410) and the 32 key bytes.
    pub fn of_ed25519(public: &[u8; 32]) -> Self {
        const SPKI_PREFIX: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&SPKI_PREFIX);
        ctx.update(public);
        let mut id = [0u8; 32];
        id.copy_from_slice(ctx.finish().as_ref());
        Self(id)
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.short())
    }
}

impl FromStr for KeyId {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().trim_start_matches("sha256:");
        let bytes = hex::decode(s).context("a fingerprint is 64 hex digits")?;
        let id: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("a fingerprint is 64 hex digits"))?;
        Ok(Self(id))
    }
}

/// A key pair and the self-signed certificate that carries its public half.
pub struct Identity {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The private key, PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The fingerprint of the public key.
    pub key_id: KeyId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Makes a new key and certificate. `subject` goes into the certificate for humans only.
    pub fn generate(subject: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).context("generating a key")?;
        Self::certified(&key, PrivatePkcs8KeyDer::from(key.serialize_der()), subject)
    }

    /// `key` (whose PKCS#8 form is `pkcs8`) with a fresh self-signed certificate.
    fn certified(
        key: &rcgen::KeyPair,
        pkcs8: PrivatePkcs8KeyDer<'static>,
        subject: &str,
    ) -> Result<Self> {
        let params = rcgen::CertificateParams::new(vec![subject.to_string()])
            .context("certificate parameters")?;
        let cert = params.self_signed(key).context("signing the certificate")?;
        let cert = cert.der().clone();
        let key_id = KeyId::of_cert(&cert).context("reading back our own certificate")?;
        Ok(Self {
            cert,
            key: pkcs8,
            key_id,
        })
    }

    /// The identity of the private key in `path` (PKCS#8 DER, as `key.der` in a data folder
    /// keeps it), with a fresh certificate: several directory nodes that load the same file
    /// present the same key, so peers pin one fingerprint for all.
    pub fn from_key_file(path: &Path, subject: &str) -> Result<Self> {
        let der = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 key: {e}", path.display()))?;
        Self::certified(&key, pkcs8, subject)
    }

    /// Whether an identity is stored in `dir` (what [`Identity::load_or_generate`] loads).
    pub fn is_stored(dir: &Path) -> bool {
        dir.join(KEY_FILE).exists() && dir.join(CERT_FILE).exists()
    }

    /// Loads the identity kept in `dir`, or makes one and keeps it there. The private key file
    /// is readable by its owner only.
    pub fn load_or_generate(dir: &Path, subject: &str) -> Result<Self> {
        let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
        if Self::is_stored(dir) {
            let key =
                fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
            let cert =
                fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
            let cert = CertificateDer::from(cert);
            let key_id = KeyId::of_cert(&cert).map_err(|e| {
                anyhow::anyhow!("{} is not a certificate: {e}", cert_path.display())
            })?;
            return Ok(Self {
                cert,
                key: PrivatePkcs8KeyDer::from(key),
                key_id,
            });
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let identity = Self::generate(subject)?;
        write_private(&key_path, identity.key.secret_pkcs8_der())?;
        write_atomically(&cert_path, identity.cert.as_ref())?;
        Ok(identity)
    }

    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`, so a
/// crash leaves either the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with_mode(path, bytes, 0o644)
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with_mode(path, bytes, 0o600)
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory entry is.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_a_reload() {
        let dir = std::env::temp_dir().join(format!("identity-test-{}", rand::random::<u64>()));
        let a = Identity::load_or_generate(&dir, "c1").expect("generate");
        let b = Identity::load_or_generate(&dir, "c1").expect("load");
        assert_eq!(a.key_id, b.key_id);
        assert_ne!(a.key_id, Identity::generate("c1").expect("generate").key_id);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_key_file_gives_the_same_identity_with_a_new_certificate() {
        let dir = std::env::temp_dir().join(format!("identity-test-{}", rand::random::<u64>()));
        let first = Identity::load_or_generate(&dir, "node-a").expect("identity");
        let shared = Identity::from_key_file(&dir.join(KEY_FILE), "node-b").expect("load");
        assert_eq!(shared.key_id, first.key_id);
        assert_ne!(shared.cert, first.cert);
        let junk = dir.join("junk.der");
        fs::write(&junk, b"not a key").expect("write");
        assert!(Identity::from_key_file(&junk, "node-c").is_err());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn key_id_parses_its_own_display() {
        let id = Identity::generate("x").expect("generate").key_id;
        assert_eq!(id.to_string().parse::<KeyId>().expect("parse"), id);
        assert!("abc".parse::<KeyId>().is_err());
    }
}
