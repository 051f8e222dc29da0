//! Who may use the page: the request must carry the token (in the query, on the first load,
//! or in the cookie set then), name this server in `Host`, and come from this server's own
//! page when it says where it comes from (`Origin`).
//!
//! Why each check: the token keeps out other local users and any page that does not know it;
//! `Host` defeats DNS rebinding (a hostile name that resolves to 127.0.0.1 reaches this port
//! with its own name in `Host`); `Origin` stops another page in the same browser from opening
//! the WebSocket, which browsers let any page do. All three are plain functions of the
//! request's headers, tested below without a server.

use axum::http::{header, HeaderMap, Uri};
use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// The token's length in bytes (64 hex digits).
pub const TOKEN_LEN: usize = 32;

/// The secret in the page's address.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A new random token.
    pub fn random() -> Self {
        let bytes: [u8; TOKEN_LEN] = rand::random();
        Self(hex::encode(bytes))
    }

    /// The token kept in `path`, or a new one written there. Keeping it lets a page still open
    /// reconnect after `peer web` restarts on the same address; the file is the user's alone
    /// (the program's umask), like the key beside it.
    pub fn kept(path: &Path) -> io::Result<Self> {
        if let Ok(text) = fs::read_to_string(path) {
            let text = text.trim();
            if text.len() == TOKEN_LEN * 2 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Self(text.to_ascii_lowercase()));
            }
        }
        let token = Self::random();
        fs::write(path, &token.0)?;
        Ok(token)
    }

    /// The token as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is the token, in time that does not depend on where they differ:
    /// BLAKE3 hashes compare in constant time, and hashing hides the lengths.
    pub fn matches(&self, given: &str) -> bool {
        blake3::hash(given.as_bytes()) == blake3::hash(self.0.as_bytes())
    }
}

/// The file the token is kept in.
pub fn token_path(home: &Path) -> PathBuf {
    home.join("web-token")
}

/// Why a request is refused (all answered 403, with no detail for the caller).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No token, or the wrong one.
    #[error("no valid token")]
    Token,
    /// `Host` names another server.
    #[error("foreign Host")]
    Host,
    /// `Origin` is another page's.
    #[error("foreign Origin")]
    Origin,
}

/// What a request must match.
#[derive(Clone)]
pub struct Guard {
    token: Token,
    /// The bound address.
    addr: SocketAddr,
    /// Bound to a non-loopback address on purpose: any `Host` with the right port will do,
    /// since the user's own names for the machine cannot be known here.
    remote: bool,
}

impl Guard {
    /// The guard of a server bound to `addr`.
    pub fn new(token: Token, addr: SocketAddr, remote: bool) -> Self {
        Self {
            token,
            addr,
            remote,
        }
    }

    /// The name of the cookie that carries the token. It names the port since browsers share
    /// cookies between the ports of one host: two users' pages on one machine stay apart.
    pub fn cookie_name(&self) -> String {
        format!("peer_web_{}", self.addr.port())
    }

    /// The `Set-Cookie` value for an authenticated page load.
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie_name(),
            self.token.as_str()
        )
    }

    /// Checks a request; `Ok(true)` when its token came in the query (the first load, which
    /// then sets the cookie).
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<bool, Refused> {
        let host = header_str(headers, header::HOST).ok_or(Refused::Host)?;
        if !self.host_allowed(host) {
            return Err(Refused::Host);
        }
        if let Some(origin) = header_str(headers, header::ORIGIN) {
            if origin != format!("http://{host}") {
                return Err(Refused::Origin);
            }
        }
        if query_token(uri).is_some_and(|t| self.token.matches(t)) {
            return Ok(true);
        }
        let cookie = cookie_value(headers, &self.cookie_name());
        match cookie {
            Some(t) if self.token.matches(t) => Ok(false),
            _ => Err(Refused::Token),
        }
    }

    /// Whether `host` (a `Host` header) names this server: its address, or `localhost`, with
    /// its port.
    fn host_allowed(&self, host: &str) -> bool {
        let port = self.addr.port().to_string();
        let Some((name, given_port)) = host.rsplit_once(':') else {
            return false;
        };
        if given_port != port {
            return false;
        }
        if self.remote {
            return true;
        }
        let bound = match self.addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        name == bound || name.eq_ignore_ascii_case("localhost")
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `token` parameter of the query, if any.
fn query_token(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// The value of cookie `name`, if the request carries it.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard() -> Guard {
        Guard::new(
            Token("ab".repeat(32)),
            "127.0.0.1:8080".parse().expect("addr"),
            false,
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        map
    }

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn the_token_comes_in_the_query_or_the_cookie() {
        let g = guard();
        let token = "ab".repeat(32);
        let host = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(g.check(&uri(&format!("/?token={token}")), &host), Ok(true));
        assert_eq!(g.check(&uri("/"), &host), Err(Refused::Token));
        assert_eq!(g.check(&uri("/?token=abab"), &host), Err(Refused::Token));
        let cookie = format!("x=1; peer_web_8080={token}");
        let with_cookie = headers(&[("host", "localhost:8080"), ("cookie", &cookie)]);
        assert_eq!(g.check(&uri("/ws"), &with_cookie), Ok(false));
        // Another port's cookie is another server's.
        let other = format!("peer_web_8081={token}");
        let other = headers(&[("host", "localhost:8080"), ("cookie", &other)]);
        assert_eq!(g.check(&uri("/ws"), &other), Err(Refused::Token));
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused() {
        let g = guard();
        let q = uri(&format!("/?token={}", "ab".repeat(32)));
        for host in [
            "evil.example:8080",
            "127.0.0.1:8081",
            "127.0.0.1",
            "[::1]:8080",
        ] {
            assert_eq!(g.check(&q, &headers(&[("host", host)])), Err(Refused::Host));
        }
        assert_eq!(g.check(&q, &HeaderMap::new()), Err(Refused::Host));
        let foreign = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(g.check(&q, &foreign), Err(Refused::Origin));
        let null = headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]);
        assert_eq!(g.check(&q, &null), Err(Refused::Origin));
        let own = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(g.check(&q, &own), Ok(true));
    }

    #[test]
    fn a_remote_bind_takes_any_host_on_its_port() {
        let g = Guard::new(
            Token("ab".repeat(32)),
            "0.0.0.0:8080".parse().expect("addr"),
            true,
        );
        let q = uri(&format!("/?token={}", "ab".repeat(32)));
        assert_eq!(g.check(&q, &headers(&[("host", "box.lan:8080")])), Ok(true));
        assert_eq!(
            g.check(&q, &headers(&[("host", "box.lan:80")])),
            Err(Refused::Host)
        );
    }

    #[test]
    fn a_kept_token_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = token_path(dir.path());
        let first = Token::kept(&path).expect("new");
        let again = Token::kept(&path).expect("kept");
        assert_eq!(first.as_str(), again.as_str());
        assert_eq!(first.as_str().len(), 64);
        fs::write(&path, "junk").expect("write");
        assert_ne!(
            Token::kept(&path).expect("replaced").as_str(),
            first.as_str()
        );
    }
}
