//! rustls configurations for QUIC where trust is a key fingerprint, not a certificate authority.
//!
//! Both sides always present a certificate (mutual TLS) and prove they hold its private key in
//! the handshake. The verifiers here check only that proof and, where the caller knows whom it
//! expects, that the key's [`KeyId`] is the expected one. Who owns which name is then the
//! directory's business: see `directory::session` and `peer::inbox`.

use crate::{defaults, Identity, KeyId};
use anyhow::{Context, Result};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
};
use std::sync::{Arc, RwLock};

/// A server key pinned on first use, checked inside the handshake: before it is set any key
/// that proves itself is accepted (the caller pins it then, with [`Pin::set`]); once set, only
/// it. A server with another key fails the handshake before it sees our certificate.
#[derive(Clone, Debug, Default)]
pub struct Pin(Arc<RwLock<Option<KeyId>>>);

impl Pin {
    /// A pin holding `key`, if known.
    pub fn new(key: Option<KeyId>) -> Self {
        Self(Arc::new(RwLock::new(key)))
    }

    /// The pinned key, if any.
    pub fn get(&self) -> Option<KeyId> {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins `key` for the next handshakes.
    pub fn set(&self, key: KeyId) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }
}

/// Which server key a client accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this key.
    Key(KeyId),
    /// Any key that proves itself; the caller checks the key after the handshake (trust on
    /// first use).
    AnyKey,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The transport settings both programs use on a connection speaking `alpn`. Its limits are
/// sized to the protocol, not quinn's defaults, so that what a remote can make us hold is
/// bounded by us: the reason for each number is at its constant in [`defaults`].
pub fn transport_config(alpn: &[u8], keep_alive: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // We only use bidirectional streams; refusing the other kind removes a whole class of input.
    t.max_concurrent_uni_streams(0u8.into());
    t.max_concurrent_bidi_streams(defaults::MAX_STREAMS.into());
    // Nothing reads datagrams: refuse them rather than buffer them (1.25 MB by default).
    t.datagram_receive_buffer_size(None);
    let (stream, connection, send) = if alpn == defaults::ALPN_PEER {
        (
            defaults::PEER_STREAM_WINDOW,
            defaults::PEER_CONNECTION_WINDOW,
            defaults::PEER_SEND_WINDOW,
        )
    } else {
        (
            defaults::DIRECTORY_STREAM_WINDOW,
            defaults::DIRECTORY_CONNECTION_WINDOW,
            defaults::DIRECTORY_SEND_WINDOW,
        )
    };
    t.stream_receive_window(stream.into());
    t.receive_window(connection.into());
    t.send_window(send);
    t.max_idle_timeout(defaults::IDLE_TIMEOUT.try_into().ok());
    if keep_alive {
        t.keep_alive_interval(Some(defaults::IDLE_TIMEOUT / 3));
    }
    t
}

/// A QUIC server configuration that requires a client certificate and speaks `alpn`.
pub fn server_config(identity: &Identity, alpn: &[u8]) -> Result<quinn::ServerConfig> {
    let provider = provider();
    let verifier = Arc::new(AnyClientKey {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.private_key())
        .context("loading our certificate")?;
    // Ours first: rustls picks the first of the server's list the client offers.
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.alpn_protocols
        .extend(defaults::ALPN_OUTDATED.iter().map(|old| old.to_vec()));
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport_config(alpn, false);
    if alpn == defaults::ALPN_DIRECTORY {
        // Presence is the connection's liveness: each peer proposes an idle timeout of three of
        // its heartbeats (QUIC keep-alives), and the smaller of the two proposals applies. This
        // ceiling only stops a peer from holding a dead entry for longer than the slowest
        // heartbeat allowed.
        transport.max_idle_timeout(
            (defaults::HEARTBEAT_MAX * defaults::MISSED_HEARTBEATS)
                .try_into()
                .ok(),
        );
    }
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A QUIC client configuration that presents `identity`, speaks `alpn` and accepts the server
/// key `expect` allows.
pub fn client_config(
    identity: &Identity,
    alpn: &[u8],
    expect: Expect,
) -> Result<quinn::ClientConfig> {
    let pin = match expect {
        Expect::Key(key) => Pin::new(Some(key)),
        Expect::AnyKey => Pin::default(),
    };
    pinned_client_config(identity, alpn, pin)
}

/// [`client_config`] accepting the server key `pin` holds at each handshake, or any key while
/// it holds none.
pub fn pinned_client_config(
    identity: &Identity,
    alpn: &[u8],
    pin: Pin,
) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(ExpectedServerKey {
        pin,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.private_key())
        .context("loading our certificate")?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC TLS")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        alpn,
        alpn == defaults::ALPN_PEER,
    )));
    Ok(config)
}

/// The key a connected remote proved it holds.
pub fn remote_key(conn: &quinn::Connection) -> Option<KeyId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    KeyId::of_cert(certs.first()?).ok()
}

#[derive(Debug)]
struct ExpectedServerKey {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = KeyId::of_cert(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        match self.pin.get() {
            Some(expected) if expected != key => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct AnyClientKey {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        KeyId::of_cert(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
