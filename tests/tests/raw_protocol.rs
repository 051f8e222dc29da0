//! Hostile input at the protocol level: a hand-made QUIC client that speaks the wire protocol
//! wrongly on purpose. Each case checks that the bad stream or connection is closed with the
//! right error code, and that everyone else is still served.

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{
    defaults::{ALPN_DIRECTORY, ALPN_PEER, INTRODUCTIONS_PER_KEY_PER_MINUTE},
    framing,
    seal::Content,
    tls::Expect,
    wire::{
        codes, ChatMessage, DirectoryRequest, DirectoryResponse, ErrorCode, MessageId, PeerFrame,
    },
    Name,
};
use std::time::Duration;
use tests::{
    raw::{request, runtime, Raw, RAW_WAIT},
    Json, Net, SHORT,
};

const WAIT: Duration = RAW_WAIT;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid test name")
}

/// Writes raw bytes on a fresh stream and returns the error code the server closed it with.
async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> Result<Option<u32>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 1024];
        loop {
            match recv.read(&mut chunk).await {
                Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(None) => return Ok(None),
                Err(quinn::ReadError::Reset(code)) => return Ok(Some(code.into_inner() as u32)),
                Err(e) => return Err(anyhow!(e)),
            }
        }
    })
    .await
    .context("the server neither answered nor reset the stream")?;
    read
}

fn message(from: &str, to: &str, body: &str) -> ChatMessage {
    ChatMessage {
        id: MessageId::random(),
        from: name(from),
        to: name(to),
        sent_at_ms: 1,
        body: body.into(),
    }
}

/// Oversized, malformed and trailing-byte frames each cost only their own stream; the same
/// connection and other peers keep being served.
#[test]
fn bad_frames_close_only_their_stream() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let dir = net.dir().addr();
    runtime()?.block_on(async {
        let raw = Raw::new("mallory")?;
        let conn = raw.registered(dir, "mallory").await?;

        // A length prefix far over the cap: refused before anything is allocated.
        let code = send_raw(&conn, &u32::MAX.to_be_bytes()).await?;
        ensure!(
            code == Some(codes::TOO_LARGE),
            "oversized frame: stream closed with {code:?}"
        );

        // A valid length with bytes that decode to nothing.
        let code = send_raw(&conn, &[0, 0, 0, 3, 0xff, 0xff, 0xff]).await?;
        ensure!(
            code == Some(codes::PROTOCOL),
            "malformed frame: stream closed with {code:?}"
        );

        // A valid request followed by trailing bytes inside the same frame.
        let mut frame = framing::encode(&DirectoryRequest::Heartbeat)?;
        frame.push(7);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let code = send_raw(&conn, &frame).await?;
        ensure!(
            code == Some(codes::PROTOCOL),
            "trailing bytes: stream closed with {code:?}"
        );

        // The connection itself still works.
        match request(&conn, &DirectoryRequest::Lookup { name: name("c2") }).await? {
            DirectoryResponse::Peer(info) => ensure!(info.name == name("c2"), "{info:?}"),
            other => bail!("lookup after bad frames answered {other:?}"),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // And so does everybody else.
    let w = net.whois("c3", "c2")?;
    ensure!(w["name"] == "c2", "whois after hostile input: {w}");
    net.assert_no_panics()
}

/// Several requests written at once on one stream are answered in order on that stream; a bad
/// frame after them closes that stream only.
#[test]
fn pipelined_requests_are_answered_in_order() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let dir = net.dir().addr();
    runtime()?.block_on(async {
        let raw = Raw::new("mallory")?;
        let conn = raw.registered(dir, "mallory").await?;
        let (mut send, recv) = conn.open_bi().await?;
        let mut batch = Vec::new();
        for who in ["c2", "nobody", "c2"] {
            batch.extend(framing::encode(&DirectoryRequest::Lookup {
                name: name(who),
            })?);
        }
        send.write_all(&batch).await?;
        let mut answers = framing::FrameReader::new(recv);
        let mut got = Vec::new();
        for _ in 0..3 {
            match answers.next::<DirectoryResponse>(WAIT).await? {
                Some(DirectoryResponse::Peer(info)) => got.push(info.name.to_string()),
                Some(DirectoryResponse::Error(code)) => got.push(format!("{code:?}")),
                other => bail!("pipelined lookup answered {other:?}"),
            }
        }
        ensure!(
            got == ["c2", "UnknownPeer", "c2"],
            "answers out of order or wrong: {got:?}"
        );
        // The stream stays open for more; a malformed frame then resets it.
        send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await?;
        let end = tokio::time::timeout(WAIT, answers.next::<DirectoryResponse>(WAIT)).await?;
        match end {
            Err(framing::FrameError::Io(e)) => ensure!(
                e.to_string().contains(&codes::PROTOCOL.to_string()),
                "stream ended with {e}"
            ),
            other => bail!("after a malformed frame the stream gave {other:?}"),
        }
        match request(&conn, &DirectoryRequest::Lookup { name: name("c2") }).await? {
            DirectoryResponse::Peer(info) => ensure!(info.name == name("c2"), "{info:?}"),
            other => bail!("lookup after the reset answered {other:?}"),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    net.assert_no_panics()
}

/// Requests before registration, and a second registration, are refused with a code.
#[test]
fn requests_out_of_order_are_refused() -> Result<()> {
    let net = Net::new()?;
    let dir = net.dir().addr();
    runtime()?.block_on(async {
        let raw = Raw::new("mallory")?;
        let conn = raw.dial(dir, ALPN_DIRECTORY, Expect::AnyKey).await?;
        let answer = request(&conn, &DirectoryRequest::Lookup { name: name("x") }).await?;
        ensure!(
            answer == DirectoryResponse::Error(ErrorCode::NotRegistered),
            "lookup before register answered {answer:?}"
        );
        raw.register(&conn, "mallory").await?;
        let again = DirectoryRequest::Register {
            name: name("other"),
            listen_addrs: vec![],
            heartbeat_ms: 1,
            online: true,
            published: raw.published()?,
        };
        let answer = request(&conn, &again).await?;
        ensure!(
            answer == DirectoryResponse::Error(ErrorCode::AlreadyRegistered),
            "second register answered {answer:?}"
        );
        Ok(())
    })?;
    net.assert_no_panics()
}

/// Nobody can deposit a message in someone else's name, nor talk to a peer directly while
/// claiming another peer's name: the receiver checks the key against the directory and closes
/// the connection, and shows nothing.
#[test]
fn nobody_speaks_for_another_name() -> Result<()> {
    let net = Net::new()?;
    net.register("c1")?;
    let mut c2 = net.listen("c2")?;
    let (c2_addr, c2_key) = net.dial_target("c1", "c2")?;
    let dir = net.dir().addr();
    runtime()?.block_on(async {
        let raw = Raw::new("mallory")?;
        let conn = raw.registered(dir, "mallory").await?;

        // The mailbox: a deposit whose sender is not the depositor.
        let spoofed = Content::Chat(message("c1", "c2", "from c1, honest"));
        let answer = raw.send_letter(&conn, "c2", spoofed).await?;
        ensure!(
            answer == DirectoryResponse::Error(ErrorCode::NotSender),
            "spoofed deposit answered {answer:?}"
        );

        // The direct path: mallory's key, claiming to be c1.
        let direct = raw.dial(c2_addr, ALPN_PEER, Expect::Key(c2_key)).await?;
        let (mut send, mut recv) = direct.open_bi().await?;
        framing::write_frame(
            &mut send,
            &PeerFrame::Chat(message("c1", "c2", "it is me, c1")),
        )
        .await?;
        let ack =
            tokio::time::timeout(WAIT, framing::read_frame::<PeerFrame, _>(&mut recv)).await?;
        ensure!(
            !matches!(ack, Ok(Some(PeerFrame::Ack(_)))),
            "c2 acknowledged an impostor"
        );
        let closed = tokio::time::timeout(WAIT, direct.closed()).await?;
        match closed {
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code.into_inner() == u64::from(codes::UNAUTHORIZED) => {}
            other => bail!("impostor connection ended with {other:?}, not UNAUTHORIZED"),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // A real message afterwards arrives, and nothing before it was shown.
    let sent = net.send("c1", "c2", "the real c1")?;
    ensure!(sent["status"] == "delivered", "{sent}");
    let got = c2.wait_json("the real message", SHORT, |v: &Json| v["type"] == "message")?;
    ensure!(got["body"] == "the real c1", "c2 showed {got} first");
    c2.terminate()?;
    net.assert_no_panics()
}

/// Introductions make another peer send packets to addresses the asker chose, so a key may ask
/// for only so many: one more than a minute's worth at once is refused (tests/abuse_disk.rs
/// shows the same across connections, keys and hosts).
#[test]
fn introductions_are_rate_limited() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let dir = net.dir().addr();
    runtime()?.block_on(async {
        let raw = Raw::new("mallory")?;
        let conn = raw.registered(dir, "mallory").await?;
        let introduce = DirectoryRequest::Introduce { name: name("c2") };
        for i in 0..INTRODUCTIONS_PER_KEY_PER_MINUTE {
            let answer = request(&conn, &introduce).await?;
            ensure!(
                answer == DirectoryResponse::Introduced,
                "introduction {i}: {answer:?}"
            );
        }
        let answer = request(&conn, &introduce).await?;
        ensure!(
            answer == DirectoryResponse::Error(ErrorCode::RateLimited),
            "introduction {} answered {answer:?}",
            INTRODUCTIONS_PER_KEY_PER_MINUTE + 1
        );
        Ok::<_, anyhow::Error>(())
    })?;
    c2.ensure_running()?;
    c2.terminate()?;
    net.assert_no_panics()
}

/// Deposits pipelined before a bad frame are stored and delivered although the bad frame ends
/// their stream: the directory settles them (and wakes their online recipient) before it
/// refuses the stream.
#[test]
fn deposits_before_a_bad_frame_are_still_delivered() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let dir = net.dir().addr();
    runtime()?.block_on(async {
        let raw = Raw::new("mallory")?;
        let conn = raw.registered(dir, "mallory").await?;
        let to = raw.lookup(&conn, "c2").await?;
        let mut batch = Vec::new();
        for i in 0..3 {
            let letter = raw.seal(
                &to,
                Content::Chat(message("mallory", "c2", &format!("before {i}"))),
            )?;
            batch.extend(framing::encode(&DirectoryRequest::DepositLetter {
                letter,
            })?);
        }
        batch.extend([0, 0, 0, 3, 0xff, 0xff, 0xff]);
        let code = send_raw(&conn, &batch).await?;
        ensure!(
            code == Some(codes::PROTOCOL),
            "the stream with a bad frame closed with {code:?}"
        );
        Ok::<_, anyhow::Error>(())
    })?;
    let got = c2.wait_json_n("the three letters", 3, SHORT, |v| {
        tests::is_message_from(v, "mallory")
    })?;
    let bodies: Vec<&str> = got.iter().filter_map(|m| m["body"].as_str()).collect();
    ensure!(
        bodies == ["before 0", "before 1", "before 2"],
        "c2 got {bodies:?}"
    );
    c2.terminate()?;
    net.assert_no_panics()
}
