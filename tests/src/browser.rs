//! [`Browser`]: Debian's headless `chromium`, driven through `chromedriver` (W3C WebDriver), for
//! the tests of `peer web`; and [`http`], a plain HTTP/1.1 request for tests that need no
//! browser.
//!
//! WebDriver is JSON over HTTP, and the tests need a handful of its commands (open a page, find
//! an element, type, run a script, take a screenshot), so they are spoken here directly over a
//! `TcpStream` rather than through an async client library: the scenarios stay synchronous like
//! every other one, and no HTTP stack is compiled for them.

use crate::util::{poll_until, tail};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long one WebDriver command may take (a page load included).
const COMMAND: Duration = Duration::from_secs(60);

/// The answer to an HTTP request.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to `addr` (`Connection: close`): `target` is the path and query,
/// `headers` are sent as given (a `Host` of `addr` is added unless one is given).
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(COMMAND))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?} from {addr}"))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    // chromedriver keeps the connection open whatever the request says: read what the
    // headers announce, not to the end.
    let length = (headers.iter())
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = (headers.iter()).any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = match length {
        Some(n) => {
            let mut body = vec![0; n];
            reader.read_exact(&mut body)?;
            body
        }
        None if chunked => read_chunked(&mut reader)?,
        None => {
            let mut raw = Vec::new();
            reader.read_to_end(&mut raw)?;
            raw
        }
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// The body of a chunked response, read up to its last chunk.
fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let start = out.len();
        out.resize(start + size, 0);
        reader.read_exact(&mut out[start..])?;
        let mut end = [0u8; 2];
        reader.read_exact(&mut end)?;
        ensure!(&end == b"\r\n", "chunk without its line end");
    }
}

/// Whether the browser tests can run here. Missing `chromium` or `chromedriver` skips them
/// with a loud line, except in CI (`CI=true`), where `.ci/run` installs both and a missing
/// one is a failure.
pub fn browser_available() -> Result<bool> {
    let missing: Vec<&str> = ["chromium", "chromedriver"]
        .into_iter()
        .filter(|p| which(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(true);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!(
            "{} not installed, and CI=true: .ci/run installs them (apt: chromium chromium-driver)",
            missing.join(" and ")
        );
    }
    eprintln!(
        "SKIPPED: the browser tests need {} (apt-get install chromium chromium-driver); \
         with CI=true this is a failure",
        missing.join(" and ")
    );
    Ok(false)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A headless chromium with one WebDriver session; both end when it is dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    log: PathBuf,
}

impl Browser {
    /// Starts `chromedriver` on a free port and a headless chromium of `width`×`height`, its
    /// profile and logs under `dir`.
    pub fn start(dir: &Path, width: u32, height: u32) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join("chromedriver.log");
        let mut driver = Command::new("chromedriver")
            .args(["--port=0", &format!("--log-path={}", log.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn chromedriver")?;
        let stdout = driver.stdout.take().context("chromedriver stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => port,
            Err(_) => {
                let _ = driver.kill();
                let _ = driver.wait();
                bail!("chromedriver did not say its port within 20 s");
            }
        };
        let mut browser = Self {
            driver,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            log,
        };
        let profile = dir.join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium").unwrap_or_else(|| "chromium".into()),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                    "--no-first-run", "--no-default-browser-check",
                ],
            },
        }}});
        let answer = browser.call("POST", "/session", Some(caps))?;
        browser.session = answer["sessionId"]
            .as_str()
            .context("no session id")?
            .to_string();
        Ok(browser)
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json; charset=utf-8")];
        let response = http(self.addr, method, path, &headers, body.as_bytes())
            .with_context(|| format!("WebDriver {method} {path}"))?;
        let value: Value = serde_json::from_slice(&response.body)
            .with_context(|| format!("WebDriver {method} {path}: not JSON"))?;
        if response.status != 200 {
            bail!(
                "WebDriver {method} {path}: {} {}; chromedriver log:\n{}",
                response.status,
                value["value"],
                tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 15)
            );
        }
        Ok(value["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session_call("POST", "/url", Some(json!({"url": url})))
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; what it returns.
    pub fn run(&self, script: &str, args: Value) -> Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The element matching the CSS `selector`.
    pub fn find(&self, selector: &str) -> Result<String> {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": selector})),
        )?;
        // The element reference's key is fixed by the W3C spec.
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no element id for {selector}: {found}"))
    }

    /// Types `text` into the element matching `selector` (WebDriver key codes allowed, e.g.
    /// `\u{E007}` for Enter).
    pub fn type_into(&self, selector: &str, text: &str) -> Result<()> {
        let element = self.find(selector)?;
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .map(drop)
    }

    /// Clicks the element matching `selector`.
    pub fn click(&self, selector: &str) -> Result<()> {
        let element = self.find(selector)?;
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .map(drop)
    }

    /// Polls `script` (a function body) until it returns something other than `null` or
    /// `false`; returns that.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        poll_until(what, timeout, Duration::from_millis(50), || {
            let v = self.run(script, json!([]))?;
            Ok((!v.is_null() && v != Value::Bool(false)).then_some(v))
        })
    }

    /// Resizes the window.
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        let rect = json!({"width": width, "height": height});
        self.session_call("POST", "/window/rect", Some(rect))
            .map(drop)
    }

    /// A PNG of the window, saved at `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let encoded = self.session_call("GET", "/screenshot", None)?;
        let encoded = encoded.as_str().context("screenshot is not a string")?;
        let png = base64_decode(encoded)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("bad base64 character {c}"),
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for quad in clean.chunks(4) {
        let data: Vec<u8> = quad.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in data.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..data.len().saturating_sub(1)]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("aGVsbG8=").expect("valid"), b"hello");
        assert_eq!(base64_decode("aGk=").expect("valid"), b"hi");
        assert_eq!(base64_decode("YWJj").expect("valid"), b"abc");
        assert!(base64_decode("a$==").is_err());
    }

    #[test]
    fn chunks_join() {
        let mut raw: &[u8] = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(read_chunked(&mut raw).expect("valid"), b"abcde");
    }
}
