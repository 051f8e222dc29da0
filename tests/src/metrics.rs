//! Reading a directory's Prometheus metrics (`directory --metrics 127.0.0.1:0`): where it
//! serves them, one scrape, one sample.

use crate::{Directory, SHORT};
use anyhow::{bail, ensure, Context, Result};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// The metrics address `dir` logged when it started (its whole stderr is read: on a busy node
/// the line may be out of the tail).
pub fn metrics_addr(dir: &Directory) -> Result<SocketAddr> {
    let deadline = Instant::now() + SHORT;
    loop {
        let stderr = dir.stderr();
        if let Some(at) = stderr
            .lines()
            .rev()
            .find(|l| l.contains("serving metrics"))
            .and_then(|l| l.split("at=").nth(1))
        {
            return at.trim().parse().context("the metrics address");
        }
        if Instant::now() >= deadline {
            bail!(
                "the directory did not say where it serves metrics:\n{}",
                dir.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One GET /metrics; the body.
pub fn scrape(at: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&at, SHORT)?;
    stream.set_read_timeout(Some(SHORT))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.to_string())
}

/// The value of the sample whose line starts with `series` (name and labels).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
