//! The HTTP side of `peer web` (axum): the page and its assets, the WebSocket that carries the
//! hub's events to the page and the page's requests to the hub, file uploads to send, and the
//! received files to download. Every route is behind the [`Guard`]; every input is bounded
//! (WebSocket message size, number of WebSockets, upload size, uploads at once).

use super::{
    guard::Guard,
    hub::{Command, Downloads},
    page::PageRequest,
};
use crate::files::downloads::safe_name;
use axum::{
    body::Body,
    extract::{
        ws::{Message, WebSocket, WebSocketUpgrade},
        Path, Request, State,
    },
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use common::Name;
use futures::StreamExt;
use std::{path::PathBuf, sync::Arc};
use tokio::{
    io::AsyncWriteExt,
    sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore},
};

/// Largest message a page may send on the WebSocket: a body at its limit, JSON-escaped, fits.
pub const MAX_WS_MESSAGE: usize = 256 * 1024;
/// Most pages open at once.
pub const MAX_SOCKETS: usize = 16;
/// Largest file the page may upload to send.
pub const MAX_UPLOAD: u64 = 512 * 1024 * 1024;
/// Most uploads at once.
pub const MAX_UPLOADS: usize = 4;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// Only this server's own scripts, styles and WebSocket; no frames. Even if some text were
/// ever rendered as HTML by mistake, an injected script could not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the handlers share.
#[derive(Clone)]
pub struct Shared {
    /// Who may use the page.
    pub guard: Guard,
    /// Requests to the hub.
    pub commands: mpsc::Sender<Command>,
    /// The hub's events.
    pub events: broadcast::Sender<Arc<str>>,
    /// Received files.
    pub downloads: Downloads,
    /// Where uploads are kept until sent.
    pub uploads: PathBuf,
    /// One permit per open WebSocket.
    pub sockets: Arc<Semaphore>,
    /// One permit per upload under way.
    pub uploading: Arc<Semaphore>,
}

/// The routes, all behind the guard.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/app.css",
            get(|| asset(APP_CSS, "text/css; charset=utf-8")),
        )
        .route("/icon.svg", get(|| asset(ICON_SVG, "image/svg+xml")))
        .route("/ws", get(socket))
        .route("/upload", post(upload))
        .route("/files/{number}", get(download))
        .layer(middleware::from_fn_with_state(shared.clone(), guarded))
        .with_state(shared)
}

/// Refuses what the guard refuses (403, no detail); sets the cookie on the first load and
/// sends it on to the address without the token, so that it does not stay in the address bar
/// or the browser's history.
async fn guarded(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let first = match shared.guard.check(request.uri(), request.headers()) {
        Ok(first) => first,
        Err(refused) => {
            tracing::debug!(
                "web: refused {} {}: {refused}",
                request.method(),
                request.uri()
            );
            return (StatusCode::FORBIDDEN, "forbidden\n").into_response();
        }
    };
    let mut response = if first && request.uri().path() == "/" {
        (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    if first {
        if let Ok(cookie) = HeaderValue::from_str(&shared.guard.set_cookie()) {
            headers.insert(header::SET_COOKIE, cookie);
        }
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8").await
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn socket(State(shared): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(permit) = shared.sockets.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many pages open\n").into_response();
    };
    upgrade
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |ws| serve_socket(ws, shared, permit))
}

/// One page: the state to start from, then every event, while its requests go to the hub. A
/// page that falls behind the events is closed: it reconnects and starts afresh from `hello`.
async fn serve_socket(mut ws: WebSocket, shared: Shared, _permit: OwnedSemaphorePermit) {
    // Subscribed before asking for the state, so that no event falls between them.
    let mut events = shared.events.subscribe();
    let (reply, hello) = oneshot::channel();
    if shared.commands.send(Command::Hello(reply)).await.is_err() {
        return;
    }
    let Ok(hello) = hello.await else { return };
    if ws.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(text) => {
                    if ws.send(Message::Text(text.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = ws.send(Message::Close(None)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            message = ws.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<PageRequest>(text.as_str()) {
                        Ok(request) => {
                            if shared.commands.send(Command::Page(request)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::debug!("web: bad request from the page: {e}"),
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `POST /upload?to=NAME&name=FILE` with the file as the body: kept under the home until it
/// is sent, then handed to the hub. Answers once the file is stored; the sending's progress
/// and outcome come over the WebSocket.
async fn upload(State(shared): State<Shared>, request: Request) -> Response {
    let refuse = |code: StatusCode, text: &str| (code, format!("{text}\n")).into_response();
    let query = request.uri().query().unwrap_or_default().to_string();
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
            .and_then(percent_decode)
    };
    let Some(to) = param("to").and_then(|to| Name::new(&to).ok()) else {
        return refuse(StatusCode::BAD_REQUEST, "no valid recipient");
    };
    let name = safe_name(&param("name").unwrap_or_default());
    let name = if name.is_empty() {
        "file".to_string()
    } else {
        name
    };
    let length = (request.headers().get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|n| n > MAX_UPLOAD) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "file too large");
    }
    let Ok(_permit) = shared.uploading.clone().try_acquire_owned() else {
        return refuse(StatusCode::TOO_MANY_REQUESTS, "too many uploads at once");
    };
    let dir = shared.uploads.join(hex::encode(rand::random::<[u8; 8]>()));
    let path = dir.join(&name);
    let stored = async {
        tokio::fs::create_dir_all(&dir).await?;
        let mut file = tokio::fs::File::create(&path).await?;
        let mut body = request.into_body().into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            total += chunk.len() as u64;
            if total > MAX_UPLOAD {
                return Ok(false);
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        std::io::Result::Ok(true)
    }
    .await;
    match stored {
        Ok(true) => {}
        Ok(false) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "file too large");
        }
        Err(e) => {
            tracing::warn!("web: upload to {}: {e}", dir.display());
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "the upload failed");
        }
    }
    if shared
        .commands
        .send(Command::SendFile { to, path })
        .await
        .is_err()
    {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the peer is stopping");
    }
    (StatusCode::ACCEPTED, "sending\n").into_response()
}

/// `GET /files/N`: the Nth file received since start, as an attachment.
async fn download(State(shared): State<Shared>, Path(number): Path<usize>) -> Response {
    let found = shared
        .downloads
        .lock()
        .ok()
        .and_then(|list| list.get(number).cloned());
    let Some(found) = found else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let file = match tokio::fs::File::open(&found.path).await {
        Ok(file) => file,
        Err(_) => return (StatusCode::NOT_FOUND, "the file is gone\n").into_response(),
    };
    // Only plain characters in the header; the browser falls back on them.
    let plain: String = (found.name.chars())
        .map(|c| match c {
            ' ' | '.' | '-' | '_' => c,
            c if c.is_ascii_alphanumeric() => c,
            _ => '_',
        })
        .collect();
    let disposition = format!("attachment; filename=\"{plain}\"");
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// Decodes `%XX` escapes and `+` (a space) of a query parameter; `None` for bad escapes or
/// text that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_decode() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(
            percent_decode("%E2%9C%93.txt").as_deref(),
            Some("\u{2713}.txt")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
