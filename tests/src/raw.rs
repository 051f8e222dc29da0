//! A hand-made QUIC client that speaks the wire protocol directly, for scenarios that need to
//! say what the real `peer` never would: malformed frames, someone else's name, hostile file
//! names.

use anyhow::{anyhow, bail, Result};
use common::{
    defaults::ALPN_DIRECTORY,
    framing,
    seal::{Content, PublishedKey, Sealer},
    tls::{self, Expect},
    wire::{DirectoryRequest, DirectoryResponse, Letter, PeerInfo},
    Identity, Name,
};
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// How long one raw exchange may take.
pub const RAW_WAIT: Duration = Duration::from_secs(10);

/// A single-threaded runtime for a raw exchange inside a plain `#[test]`.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A client with its own key and one QUIC endpoint on loopback.
pub struct Raw {
    identity: Identity,
    sealer: Sealer,
    endpoint: quinn::Endpoint,
}

impl Raw {
    /// A new key and endpoint. Call inside a runtime.
    pub fn new(subject: &str) -> Result<Self> {
        Self::at(subject, [127, 0, 0, 1].into())
    }

    /// A new key and an endpoint bound to `ip`: any address of 127.0.0.0/8 reaches a server
    /// on 127.0.0.1, so an attack can come from another host than the real peers'.
    pub fn at(subject: &str, ip: IpAddr) -> Result<Self> {
        let identity = Identity::generate(subject)?;
        let sealer = Sealer::new(&identity, rand::random())?;
        let endpoint = quinn::Endpoint::client(SocketAddr::new(ip, 0))?;
        Ok(Self {
            identity,
            sealer,
            endpoint,
        })
    }

    /// Dials `addr` speaking `alpn`, accepting the server key `expect` allows.
    pub async fn dial(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
        expect: Expect,
    ) -> Result<quinn::Connection> {
        self.connect(self.config(alpn, expect)?, addr).await
    }

    /// The configuration [`Raw::dial`] uses: the programs' own. An attacker may change its
    /// transport settings (its windows, its stream counts) before [`Raw::connect`].
    pub fn config(&self, alpn: &[u8], expect: Expect) -> Result<quinn::ClientConfig> {
        tls::client_config(&self.identity, alpn, expect)
    }

    /// Dials `addr` with `config`.
    pub async fn connect(
        &self,
        config: quinn::ClientConfig,
        addr: SocketAddr,
    ) -> Result<quinn::Connection> {
        let connecting = self.endpoint.connect_with(config, addr, "test")?;
        Ok(tokio::time::timeout(RAW_WAIT, connecting).await??)
    }

    /// Dials the directory at `dir` and registers as `who` there (see [`Raw::register`]).
    pub async fn registered(&self, dir: SocketAddr, who: &str) -> Result<quinn::Connection> {
        let conn = self.dial(dir, ALPN_DIRECTORY, Expect::AnyKey).await?;
        self.register(&conn, who).await?;
        Ok(conn)
    }

    /// The encryption key this client publishes, signed by its key, as a registration carries.
    pub fn published(&self) -> Result<PublishedKey> {
        Ok(self.sealer.published())
    }

    /// What the directory says of `who`, asked on `conn`.
    pub async fn lookup(&self, conn: &quinn::Connection, who: &str) -> Result<PeerInfo> {
        let req = DirectoryRequest::Lookup {
            name: Name::new(who)?,
        };
        match request(conn, &req).await? {
            DirectoryResponse::Peer(info) => Ok(info),
            other => bail!("lookup of {who} answered {other:?}"),
        }
    }

    /// `content` sealed by this client to the peer `to` describes, whatever `content` says.
    pub fn seal(&self, to: &PeerInfo, content: Content) -> Result<Letter> {
        let published = to
            .published
            .ok_or_else(|| anyhow!("{} published no key", to.name))?;
        Ok(self.sealer.seal(&to.key, &published, content)?)
    }

    /// Looks `to` up on `conn`, seals `content` to it and deposits it there; the directory's
    /// answer.
    pub async fn send_letter(
        &self,
        conn: &quinn::Connection,
        to: &str,
        content: Content,
    ) -> Result<DirectoryResponse> {
        let to = self.lookup(conn, to).await?;
        request(conn, &self.deposit(&to, content)?).await
    }

    /// The deposit of `content`, sealed to the peer `to` describes.
    pub fn deposit(&self, to: &PeerInfo, content: Content) -> Result<DirectoryRequest> {
        Ok(DirectoryRequest::DepositLetter {
            letter: self.seal(to, content)?,
        })
    }

    /// The registration of `who` by this client, without going online.
    pub fn registration(&self, who: &str) -> Result<DirectoryRequest> {
        Ok(DirectoryRequest::Register {
            name: Name::new(who)?,
            listen_addrs: vec![],
            heartbeat_ms: 10_000,
            online: false,
            published: self.published()?,
        })
    }

    /// Registers `who` on a directory connection of this client's, without going online.
    pub async fn register(&self, conn: &quinn::Connection, who: &str) -> Result<()> {
        match request(conn, &self.registration(who)?).await? {
            DirectoryResponse::Registered { .. } => Ok(()),
            other => bail!("registration answered {other:?}"),
        }
    }
}

/// One request on its own stream, one response.
pub async fn request(
    conn: &quinn::Connection,
    req: &DirectoryRequest,
) -> Result<DirectoryResponse> {
    let (mut send, mut recv) = conn.open_bi().await?;
    framing::write_frame(&mut send, req).await?;
    send.finish()?;
    tokio::time::timeout(RAW_WAIT, framing::read_frame(&mut recv))
        .await??
        .ok_or_else(|| anyhow!("no response"))
}
