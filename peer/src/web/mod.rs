//! `peer web`: the chat as a page in the browser, served on loopback by the peer itself.
//!
//! It runs the peer like `listen` does, or attaches to the `listen` or `chat` already running
//! for the name, through a [`Session`] like every command; the page shows what the terminal
//! client shows, from the same history.
//!
//! # Layout
//!
//! * `guard`: the token, and the `Host` and `Origin` checks every request passes.
//! * `server`: the routes (axum): the page, the WebSocket, uploads, downloads; the limits.
//! * `hub`: the one task that drives the session and tells every page what happened.
//! * `page`: what the page and the server say over the WebSocket (JSON).
//! * `assets/`: the page (HTML, CSS, plain JavaScript), compiled into the binary.
//!
//! # Safety
//!
//! The page can do anything the user can with their name, so it is the user's alone: bound to
//! loopback unless `--allow-remote` says otherwise; every request carries the token printed at
//! start (then kept in a cookie); `Host` must name this server (against DNS rebinding) and
//! `Origin`, when sent, this page (against other pages driving the WebSocket). The page puts
//! every text from the network in the document as text, never as HTML, and the server's
//! Content-Security-Policy allows no script but its own.
//!
//! # When the peer goes
//!
//! The server stays up while sessions come and go: when the running peer it attached to
//! stops, `peer web` opens a session again (attaching to a new one, or running the peer
//! itself), and the pages carry on. The token is kept in the home, so that a page left open
//! reconnects after `peer web` itself restarts on the same address.

pub mod guard;
pub mod hub;
pub mod page;
pub mod server;

use crate::{home::Home, session::Session, signals::shutdown_signal};
use anyhow::{bail, Context, Result};
use guard::{token_path, Guard, Token};
use hub::{End, Hub};
use std::{future::Future, io::Write, net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::{broadcast, mpsc, Semaphore};

/// Requests from the pages waiting for the hub.
const COMMAND_QUEUE: usize = 64;
/// Events a page may fall behind by before it is closed (it reconnects and starts afresh).
const EVENT_QUEUE: usize = 1024;
/// How long to wait before opening a session again after the peer went away.
const REOPEN_AFTER: Duration = Duration::from_millis(500);

/// How `peer web` serves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The TCP address to serve on.
    pub bind: SocketAddr,
    /// Serve on an address other machines can reach.
    pub allow_remote: bool,
    /// Open the page in the user's browser.
    pub open_browser: bool,
}

/// Serves the page until Ctrl-C or SIGTERM. `open` gives a session (and whatever must live as
/// long as it): at start, and again whenever the running peer it attached to stops.
pub async fn run<F, Fut, G>(home: &Home, options: Options, mut open: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(Session, G)>>,
{
    let remote = !options.bind.ip().is_loopback();
    if remote && !options.allow_remote {
        bail!(
            "--bind {} is not a loopback address: add --allow-remote to serve the page to \
             other machines",
            options.bind
        );
    }
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .with_context(|| format!("cannot serve on {}", options.bind))?;
    let addr = listener.local_addr()?;
    if remote {
        eprintln!(
            "peer: warning: serving on {addr}, which other machines can reach: anyone with the \
             token can use your name; the connection is not encrypted"
        );
    }
    let token = Token::kept(&token_path(home.path()))
        .with_context(|| format!("cannot keep the page's token in {}", home.path().display()))?;
    let mut shutdown = std::pin::pin!(shutdown_signal()?);

    let (mut session, mut keep) = open().await?;
    // An address of every interface is not one to open: the page is on loopback too.
    let shown = match addr.ip() {
        ip if !ip.is_unspecified() => addr,
        std::net::IpAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
    };
    let url = format!("http://{shown}/?token={}", token.as_str());
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{url}")?;
    stdout.flush()?;
    if options.open_browser {
        open_browser(home, &url);
    }

    let (commands, mut requests) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(EVENT_QUEUE);
    let downloads = hub::Downloads::default();
    // One folder per port: another `peer web` for the same home (attached to this one's
    // peer) has its own. What an earlier run on this port left was sent, or never will be.
    let uploads = home
        .path()
        .join("web-uploads")
        .join(addr.port().to_string());
    let _ = std::fs::remove_dir_all(&uploads);
    let shared = server::Shared {
        guard: Guard::new(token, addr, remote),
        commands,
        events: events.clone(),
        downloads: downloads.clone(),
        uploads,
        sockets: Arc::new(Semaphore::new(server::MAX_SOCKETS)),
        uploading: Arc::new(Semaphore::new(server::MAX_UPLOADS)),
    };
    let app = server::router(shared);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut hub = Hub::new(events, downloads);
    let result = loop {
        let end = hub.drive(&mut session, &mut requests, &mut shutdown).await;
        session.close().await;
        drop(keep);
        if end == End::Shutdown {
            break Ok(());
        }
        hub.notice(None, "the running peer stopped; starting again", true);
        let reopened = loop {
            tokio::select! {
                _ = tokio::time::sleep(REOPEN_AFTER) => {}
                _ = shutdown.as_mut() => break None,
            }
            match open().await {
                Ok(opened) => break Some(opened),
                Err(e) => hub.notice(None, &format!("cannot start the peer: {e:#}"), true),
            }
        };
        match reopened {
            Some((s, k)) => (session, keep) = (s, k),
            None => break Ok(()),
        }
    };
    server.abort();
    result
}

/// Opens the page in the user's browser. The address goes through a file of the user's own
/// (a redirect), not the command line, where other users of the machine could read the token.
fn open_browser(home: &Home, url: &str) {
    let page = home.path().join("web-open.html");
    let html = format!(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url={url}\">\
         <a href=\"{url}\">open the chat</a>\n"
    );
    let opened = std::fs::write(&page, html).and_then(|()| {
        std::process::Command::new("xdg-open")
            .arg(&page)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(drop)
    });
    if let Err(e) = opened {
        eprintln!("peer: warning: cannot open a browser ({e}); open the address above");
    }
}
