//! `directory --metrics ADDR`: Prometheus text at /metrics, with what the directory did.

use anyhow::{bail, ensure, Context, Result};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};
use tests::{DirOpts, Net, SHORT};

/// The metrics address the directory logged when it started.
fn metrics_addr(net: &Net) -> Result<SocketAddr> {
    let deadline = Instant::now() + SHORT;
    loop {
        let stderr = net.dir().stderr_tail();
        if let Some(at) = stderr
            .lines()
            .find(|l| l.contains("serving metrics"))
            .and_then(|l| l.split("at=").nth(1))
        {
            return at.trim().parse().context("the metrics address");
        }
        if Instant::now() >= deadline {
            bail!("the directory did not say where it serves metrics:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One GET /metrics; the body.
fn scrape(at: SocketAddr) -> Result<String> {
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
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Peers online, requests by kind and outcome (refusals by code), latency histograms and the
/// mailbox's depth, as a direct message, a queued one and a refused lookup leave them.
#[test]
fn the_directory_serves_what_it_did_as_prometheus_text() -> Result<()> {
    let net = Net::with(DirOpts {
        args: vec!["--metrics".into(), "127.0.0.1:0".into()],
        ..DirOpts::default()
    })?;
    let at = metrics_addr(&net)?;
    net.register("c3")?;
    let mut c2 = net.listen("c2")?;
    net.send("c1", "c2", "direct")?;
    let queued = net.send("c1", "c3", "for the mailbox")?;
    ensure!(queued["status"] == "queued", "{queued}");
    net.peer("c1")
        .args(["whois", "nobody"])
        .run(SHORT)?
        .failure(&["nobody"])?;

    let text = scrape(at)?;
    let want = [
        ("directory_online_peers", 1.0),
        ("directory_mailbox_entries", 1.0),
        (
            "directory_requests_total{kind=\"deposit_letter\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "directory_requests_total{kind=\"lookup\",outcome=\"UnknownPeer\"}",
            1.0,
        ),
    ];
    for (series, value) in want {
        ensure!(
            sample(&text, series) == Some(value),
            "{series} is not {value}:\n{text}"
        );
    }
    ensure!(
        sample(
            &text,
            "directory_requests_total{kind=\"lookup\",outcome=\"ok\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "lookups:\n{text}"
    );
    ensure!(
        sample(&text, "directory_request_seconds_count{kind=\"lookup\"}").is_some_and(|n| n >= 3.0)
            && text.contains("directory_request_seconds_bucket{le=\""),
        "no lookup latency histogram:\n{text}"
    );
    ensure!(
        sample(&text, "directory_mailbox_bytes").is_some_and(|b| b > 100.0),
        "mailbox bytes:\n{text}"
    );
    // The deposit's and the registrations' commits were timed.
    for op in ["deposit", "names"] {
        let series = format!("directory_store_seconds_count{{op=\"{op}\"}}");
        ensure!(
            sample(&text, &series).is_some_and(|n| n >= 1.0),
            "no {series}:\n{text}"
        );
    }
    c2.terminate()?;
    net.assert_no_panics()
}
