//! `directory --metrics ADDR`: Prometheus text at /metrics, with what the directory did.

use anyhow::{bail, ensure, Result};
use tests::{
    metrics::{metrics_addr, sample, scrape},
    DirOpts, Net, SHORT,
};

/// Peers online, requests by kind and outcome (refusals by code), latency histograms and the
/// mailbox's depth, as a direct message, a queued one and a refused lookup leave them.
#[test]
fn the_directory_serves_what_it_did_as_prometheus_text() -> Result<()> {
    let net = Net::with(DirOpts {
        args: vec!["--metrics".into(), "127.0.0.1:0".into()],
        ..DirOpts::default()
    })?;
    let at = metrics_addr(net.dir())?;
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
    ensure!(
        !text.contains("directory_log_"),
        "one node has no cluster's log to report on:\n{text}"
    );
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

/// Deposits pipelined on one stream share the store's commits, are answered in order, and are
/// stored in order; a request after them (a deposit to an unknown name, a lookup) waits for
/// them and sees them: the lookup counts every letter before it.
#[test]
fn pipelined_deposits_share_commits_and_keep_their_order() -> Result<()> {
    use common::{
        framing,
        seal::Content,
        wire::{ChatMessage, DirectoryRequest, DirectoryResponse, ErrorCode, MessageId},
        Name,
    };
    const EACH: usize = 10;
    let net = Net::with(DirOpts {
        args: vec!["--metrics".into(), "127.0.0.1:0".into()],
        ..DirOpts::default()
    })?;
    let at = metrics_addr(net.dir())?;
    net.register("c2")?;
    let commits = |text: &str| sample(text, "directory_store_seconds_count{op=\"deposit\"}");
    let before = commits(&scrape(at)?).unwrap_or(0.0);
    let dir = net.dir().addr();
    tests::raw::runtime()?.block_on(async {
        let raw = tests::raw::Raw::new("mallory")?;
        let conn = raw.registered(dir, "mallory").await?;
        let c2 = raw.lookup(&conn, "c2").await?;
        let letter = |to: &str, body: String| -> Result<Vec<u8>> {
            let message = ChatMessage {
                id: MessageId::random(),
                from: Name::new("mallory")?,
                to: Name::new(to)?,
                sent_at_ms: 1,
                body,
            };
            let letter = raw.seal(&c2, Content::Chat(message))?;
            Ok(framing::encode(&DirectoryRequest::DepositLetter {
                letter,
            })?)
        };
        let mut batch = Vec::new();
        for i in 0..EACH {
            batch.extend(letter("c2", format!("p{i}"))?);
        }
        batch.extend(letter("nobody", "lost".into())?);
        for i in EACH..2 * EACH {
            batch.extend(letter("c2", format!("p{i}"))?);
        }
        batch.extend(framing::encode(&DirectoryRequest::Lookup {
            name: Name::new("c2")?,
        })?);
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(&batch).await?;
        send.finish()?;
        let mut answers = framing::FrameReader::new(recv);
        let mut got = Vec::new();
        while let Some(answer) = answers
            .next::<DirectoryResponse>(tests::raw::RAW_WAIT)
            .await?
        {
            got.push(answer);
        }
        let stored = |range: std::ops::Range<usize>| {
            got.get(range)
                .is_some_and(|a| a.iter().all(|r| *r == DirectoryResponse::Stored))
        };
        ensure!(
            got.len() == 2 * EACH + 2
                && stored(0..EACH)
                && got[EACH] == DirectoryResponse::Error(ErrorCode::UnknownPeer)
                && stored(EACH + 1..2 * EACH + 1),
            "answers: {got:?}"
        );
        match got.last() {
            Some(DirectoryResponse::Peer(info)) => ensure!(
                info.queued_from_you == 2 * EACH as u32,
                "the lookup after the deposits counted {} of them",
                info.queued_from_you
            ),
            other => bail!("the lookup answered {other:?}"),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let after = commits(&scrape(at)?).unwrap_or(0.0);
    // One commit per deposit, were each awaited before the next was read; at least two, as
    // the refused deposit in the middle waits for those before it.
    ensure!(
        (2.0..(2 * EACH) as f64).contains(&(after - before)),
        "{} commits for {} pipelined deposits",
        after - before,
        2 * EACH
    );
    let bodies: Vec<String> = net
        .register("c2")?
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default().to_string())
        .collect();
    let sent: Vec<String> = (0..2 * EACH).map(|i| format!("p{i}")).collect();
    ensure!(bodies == sent, "c2 got {bodies:?}");
    net.assert_no_panics()
}
