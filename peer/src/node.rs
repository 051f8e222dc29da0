//! A running peer: its endpoint, its directory connection, its inbox and outbox.

use crate::{
    directory_client::{self, DirectoryClient},
    endpoint,
    files::{self, FileSent},
    home::Home,
    inbox::{self, Event, Inbox},
    links::Links,
    outbox::{self, Outbox, Sent},
    punch::{Dialer, Introduction},
};
use anyhow::Result;
use common::{
    control::Path,
    wire::{FileOffer, PeerInfo},
    KeyId, Name,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tracing::Instrument;

/// How to run a peer.
#[derive(Debug, Clone)]
pub struct Options {
    /// Our name.
    pub name: Name,
    /// The directory, HOST:PORT.
    pub directory: String,
    /// The home folder.
    pub home: Home,
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Fingerprint to pin the directory to.
    pub pin: Option<KeyId>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Bound on a direct dial plus delivery.
    pub direct_timeout: Duration,
    /// Stay online and receive (long-running commands).
    pub online: bool,
}

/// A running peer.
pub struct Node {
    /// Our name.
    pub name: Name,
    /// Our key's fingerprint.
    pub key: KeyId,
    endpoint: quinn::Endpoint,
    directory: DirectoryClient,
    outbox: Outbox,
    inbox: Inbox,
    links: Arc<Links>,
    dialer: Arc<Dialer>,
}

impl Node {
    /// Brings the peer up: binds the endpoint, connects and registers with the directory, and
    /// starts accepting direct connections. Incoming messages arrive on the returned receiver.
    pub async fn start(options: Options) -> Result<(Self, mpsc::Receiver<Event>)> {
        let identity = Arc::new(options.home.identity(&options.name)?);
        let key = identity.key_id;
        let endpoint = endpoint::bind(&identity, options.bind)?;
        let (inbox, events) = Inbox::new(options.name.clone(), options.home.downloads());
        let settings = directory_client::Settings {
            addr: options.directory.clone(),
            pin: options.pin,
            name: options.name.clone(),
            heartbeat: options.heartbeat,
            online: options.online,
        };
        let (intro_tx, mut intros) = mpsc::unbounded_channel::<Introduction>();
        let directory = DirectoryClient::connect(
            endpoint.clone(),
            &identity,
            options.home.clone(),
            settings,
            inbox.clone(),
            intro_tx,
        )
        .await?;
        let links = Arc::new(Links::default());
        tokio::spawn(
            inbox::serve(
                endpoint.clone(),
                inbox.clone(),
                directory.clone(),
                links.clone(),
            )
            .in_current_span(),
        );
        let dialer = Arc::new(Dialer {
            identity,
            endpoint: endpoint.clone(),
            directory: directory.clone(),
            inbox: inbox.clone(),
            links: links.clone(),
            direct_timeout: options.direct_timeout,
            answered: Default::default(),
        });
        let answering = dialer.clone();
        tokio::spawn(
            async move {
                while let Some(intro) = intros.recv().await {
                    tokio::spawn(answering.clone().answer(intro).in_current_span());
                }
            }
            .in_current_span(),
        );
        let outbox = Outbox::new(outbox::Shared {
            me: options.name.clone(),
            dialer: dialer.clone(),
        });
        let node = Self {
            name: options.name,
            key,
            endpoint,
            directory,
            outbox,
            inbox,
            links,
            dialer,
        };
        Ok((node, events))
    }

    /// Sends one message; returns once it is delivered or durably queued.
    pub async fn send(&self, to: Name, body: String) -> Result<Sent> {
        self.outbox.send(to, body).await
    }

    /// Queues one message behind those submitted before it; see [`Outbox::submit`].
    pub fn submit(
        &self,
        to: Name,
        body: String,
    ) -> Result<impl std::future::Future<Output = Result<Sent>> + Send + 'static> {
        self.outbox.submit(to, body)
    }

    /// What the directory knows about `name`, and the direct link we have to it, if any.
    pub async fn whois(&self, name: &Name) -> Result<(PeerInfo, Option<Path>)> {
        let path = self.links.get(name).map(|(_, path)| path);
        let info = self
            .directory
            .lookup(name)
            .await
            .map_err(|e| match e.downcast_ref() {
                Some(directory_client::DirectoryError(common::wire::ErrorCode::UnknownPeer)) => {
                    anyhow::anyhow!("no peer is named {name}")
                }
                _ => e,
            })?;
        Ok((info, path))
    }

    /// Sends the file at `path` to `to` over a direct link. `report(done, total)` hears how
    /// many bytes the recipient has, at most every 100 ms. Files need a direct link: with none,
    /// this fails and says so.
    pub async fn send_file(
        &self,
        to: &Name,
        path: &std::path::Path,
        report: impl Fn(u64, u64) + Send + 'static,
    ) -> Result<FileSent> {
        let (sha256, size) = files::hash_file(path).await?;
        let (info, _) = self.whois(to).await?;
        if !info.online {
            anyhow::bail!(
                "{to} is offline; files go over a direct link only, so try when {to} is online"
            );
        }
        let deadline = tokio::time::Instant::now() + self.dialer.direct_timeout;
        let Some((conn, link)) = self.dialer.connect(&info, deadline).await else {
            anyhow::bail!("no direct link to {to} could be made; files go over a direct link only");
        };
        let offer = FileOffer {
            id: common::wire::MessageId::random(),
            from: self.name.clone(),
            to: to.clone(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into()),
            size,
            sha256,
            sent_at_ms: common::now_ms(),
        };
        let (to, size) = (offer.to.clone(), offer.size);
        let (progress, mut watch) = tokio::sync::watch::channel(0u64);
        let relay = tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                report(*watch.borrow_and_update(), size);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let result = files::send(&conn, offer, path, &progress).await;
        relay.abort();
        let resumed_from = result?;
        Ok(FileSent {
            to,
            size,
            sha256,
            resumed_from,
            path: link,
        })
    }

    /// The inbox, for attaching more listeners.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Our address as the directory sees it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.directory.observed_addr()
    }

    /// Leaves cleanly: the directory marks us offline at once, and peers see the close.
    pub async fn shutdown(&self) {
        self.directory.close().await;
        self.endpoint.close(common::wire::codes::OK.into(), b"bye");
        // Long enough for the close frames to leave; the draining period is not worth waiting.
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}
