//! Attacks on the directory's disk and on the introduction budget, by hand-made QUIC clients
//! from another loopback host (127.0.0.2) than the real peers (127.0.0.1): empty file parts
//! with long names, one sender filling a mailbox, one key taking many names, one host binding
//! names fast, and introductions from several connections at once. Each test checks that real
//! peers keep working while the attack's effect lasts.

use anyhow::{ensure, Result};
use common::{
    defaults::{
        ALPN_DIRECTORY, INTRODUCTIONS_PER_TARGET_PER_MINUTE, MAILBOX_SENDER_QUOTA_MESSAGES,
        MAX_FILE_NAME_LEN, NAMES_PER_KEY, NAME_BINDS_PER_IP_PER_HOUR,
    },
    seal::Content,
    tls::Expect,
    wire::{
        ChatMessage, DirectoryRequest, DirectoryResponse, FileOffer, FilePart, MessageId, PeerInfo,
    },
    Name,
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};
use tests::{
    check_messages,
    raw::{request, runtime, Raw},
    DirOpts, Net,
};
use tokio::task::JoinSet;

/// The attacker's host. Real peers are on 127.0.0.1.
const MALLORY: [u8; 4] = [127, 0, 0, 2];

/// Longest any attack in this file may run.
const ATTACK: Duration = Duration::from_secs(20);

/// Requests an attacker keeps in flight on one connection.
const IN_FLIGHT: usize = 16;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid test name")
}

fn mallory() -> IpAddr {
    IpAddr::from(MALLORY)
}

/// Bytes of every file under `dir`.
fn size_of(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            size_of(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// What the directory answered to a run of requests: each answer's kind, counted.
#[derive(Debug, Default)]
struct Answers(BTreeMap<String, usize>);

impl Answers {
    fn count(&mut self, answer: &DirectoryResponse) {
        let kind = match answer {
            DirectoryResponse::Error(code) => format!("{code:?}"),
            other => format!("{other:?}")
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        *self.0.entry(kind).or_default() += 1;
    }

    fn get(&self, kind: &str) -> usize {
        self.0.get(kind).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.0.values().sum()
    }
}

/// Sends each of `requests` on `conn`, [`IN_FLIGHT`] at a time, until `stop` says so of an
/// answer or [`ATTACK`] has passed; counts the answers.
async fn flood(
    conn: &quinn::Connection,
    requests: impl IntoIterator<Item = DirectoryRequest>,
    stop: impl Fn(&DirectoryResponse) -> bool,
) -> Result<Answers> {
    let deadline = Instant::now() + ATTACK;
    let mut answers = Answers::default();
    let mut requests = requests.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < IN_FLIGHT && Instant::now() < deadline {
            let Some(req) = requests.next() else { break };
            let conn = conn.clone();
            tasks.spawn(async move { request(&conn, &req).await });
        }
        let Some(answer) = tasks.join_next().await else {
            break;
        };
        let answer = answer??;
        answers.count(&answer);
        if stop(&answer) {
            // Let what is in flight finish, and count it.
            while let Some(answer) = tasks.join_next().await {
                answers.count(&answer??);
            }
            break;
        }
    }
    Ok(answers)
}

/// An empty part of a file named `file_name` (0 bytes long), from `from` to `to`, sealed by
/// `raw` to `to`.
fn empty_part(raw: &Raw, to: &PeerInfo, from: &str, file_name: &str) -> Result<DirectoryRequest> {
    raw.deposit(
        to,
        Content::FilePart(FilePart {
            id: MessageId::random(),
            offer: FileOffer {
                id: MessageId::random(),
                from: name(from),
                to: to.name.clone(),
                name: file_name.into(),
                size: 0,
                hash: [0; 32],
                sent_at_ms: 1,
            },
            offset: 0,
            data: Vec::new(),
        }),
    )
}

/// A message from `from` to `to`, sealed by `raw` to `to`.
fn chat(raw: &Raw, to: &PeerInfo, from: &str, body: &str) -> Result<DirectoryRequest> {
    raw.deposit(
        to,
        Content::Chat(ChatMessage {
            id: MessageId::random(),
            from: name(from),
            to: to.name.clone(),
            sent_at_ms: 1,
            body: body.into(),
        }),
    )
}

/// Two real peers register (their names bind if new), one sends to the other while it is
/// offline, and it takes its mail: names and the mailbox work.
fn mailbox_works(net: &Net, from: &str, to: &str, body: &str) -> Result<()> {
    net.register(to)?;
    let sent = net.send(from, to, body)?;
    ensure!(sent["status"] == "queued", "{from} -> {to}: {sent}");
    let got = net.register(to)?;
    check_messages(&got, from, to, &[body.to_string()], Some("mailbox"))
}

/// Empty file parts with long file names counted 0 bytes against the byte quota: 1000 of them
/// with 60 KB names grew the database by about 100 MB under a 1000-byte quota. Now a (sealed)
/// part larger than one with the longest name is refused, and each counts every byte it stores:
/// the data folder grows by less than 1 MiB, and real peers' mail still flows.
#[test]
fn empty_parts_with_long_names_count_against_the_quota() -> Result<()> {
    let net = Net::with(DirOpts {
        quota_bytes: Some(1000),
        ..DirOpts::default()
    })?;
    net.register("c2")?;
    let data = net.dir().data().to_path_buf();
    let before = size_of(&data)?;
    let dir = net.dir().addr();
    let (huge, longest) = runtime()?.block_on(async {
        let raw = Raw::at("mallory", mallory())?;
        let conn = raw.registered(dir, "mallory").await?;
        let victim = Raw::at("victim", mallory())?;
        victim.registered(dir, "victim").await?;
        let to = raw.lookup(&conn, "victim").await?;
        let part =
            |len: usize| empty_part(&raw, &to, "mallory", &"n".repeat(len)).expect("a sealed part");
        let parts = (0..1000).map(|_| part(60_000));
        let huge = flood(&conn, parts, |_| false).await?;
        let parts = (0..1000).map(|_| part(250));
        let longest = flood(&conn, parts, |_| false).await?;
        Ok::<_, anyhow::Error>((huge, longest))
    })?;
    let after = size_of(&data)?;
    eprintln!(
        "data folder {before} -> {after} bytes; 60 KB names: {huge:?}; 250-byte names: {longest:?}"
    );
    ensure!(
        huge.total() > 0 && huge.get("TooLarge") == huge.total(),
        "a letter larger than a part with a {MAX_FILE_NAME_LEN}-byte name must be refused: {huge:?}"
    );
    ensure!(
        longest.get("Stored") <= 1000 / 250 && longest.get("MailboxFull") > 0,
        "empty parts must count their names against a 1000-byte quota: {longest:?}"
    );
    ensure!(
        after < before + 1024 * 1024,
        "the data folder grew from {before} to {after} bytes under a 1000-byte quota"
    );
    mailbox_works(&net, "c1", "c2", "still delivered")?;
    net.assert_no_panics()
}

/// One sender could fill a recipient's whole mailbox (10,000 messages), and then nobody else
/// could leave it anything. Now one sender gets its share (1,000 messages) and is refused with
/// its own code; another sender still gets through.
#[test]
fn one_sender_cannot_fill_a_mailbox() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let dir = net.dir().addr();
    let answers = runtime()?.block_on(async {
        let raw = Raw::at("mallory", mallory())?;
        let conn = raw.registered(dir, "mallory").await?;
        let to = raw.lookup(&conn, "c2").await?;
        // Sealed before the flood starts, so the attack window is all sending.
        let share = MAILBOX_SENDER_QUOTA_MESSAGES as usize;
        let flood_of = (0..share + 100)
            .map(|i| chat(&raw, &to, "mallory", &i.to_string()))
            .collect::<Result<Vec<_>>>()?;
        flood(&conn, flood_of, |a| {
            matches!(a, DirectoryResponse::Error(_))
        })
        .await
    })?;
    eprintln!("mallory's flood of c2's mailbox: {answers:?}");
    ensure!(
        answers.get("Stored") as u64 <= MAILBOX_SENDER_QUOTA_MESSAGES,
        "one sender stored more than its share: {answers:?}"
    );
    ensure!(
        answers.get("SenderQuotaFull") > 0,
        "the flood was not stopped by the sender's share: {answers:?}"
    );
    let sent = net.send("c1", "c2", "room for me")?;
    ensure!(
        sent["status"] == "queued",
        "another sender is locked out: {sent}"
    );
    let got = net.register("c2")?;
    ensure!(
        got.iter()
            .any(|m| m["from"] == "c1" && m["body"] == "room for me"),
        "c2 did not get c1's message among {} delivered",
        got.len()
    );
    net.assert_no_panics()
}

/// Registers `who` with the key of `raw` on a connection of its own; the directory's answer.
async fn try_register(raw: &Raw, dir: SocketAddr, who: &str) -> Result<DirectoryResponse> {
    let conn = raw.dial(dir, ALPN_DIRECTORY, Expect::AnyKey).await?;
    let answer = request(&conn, &raw.registration(who)?).await;
    conn.close(0u32.into(), b"done");
    answer
}

/// One key bound 300 names in 1.4 s. Now a key holds at most a few; its names still work, and
/// real peers still register.
#[test]
fn a_key_holds_a_few_names() -> Result<()> {
    let net = Net::new()?;
    let dir = net.dir().addr();
    let (answers, again) = runtime()?.block_on(async {
        let raw = Raw::at("squatter", mallory())?;
        let mut answers = Answers::default();
        for i in 0..10 {
            answers.count(&try_register(&raw, dir, &format!("squat{i}")).await?);
        }
        let again = try_register(&raw, dir, "squat0").await?;
        Ok::<_, anyhow::Error>((answers, again))
    })?;
    eprintln!("one key asking for 10 names: {answers:?}");
    ensure!(
        answers.get("Registered") == NAMES_PER_KEY as usize
            && answers.get("TooManyNames") == 10 - NAMES_PER_KEY as usize,
        "one key must hold {NAMES_PER_KEY} names: {answers:?}"
    );
    ensure!(
        matches!(again, DirectoryResponse::Registered { .. }),
        "a name the key holds must still register: {again:?}"
    );
    mailbox_works(&net, "c1", "c2", "names still bind")?;
    net.assert_no_panics()
}

/// True if `err` is a connection the directory refused before its handshake (its own limit
/// on new connections per host, not the one tested here).
fn refused(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<quinn::ConnectionError>(),
        Some(quinn::ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

/// Many keys on one host bound names as fast as they could connect. Now a host binds at most
/// [`NAME_BINDS_PER_IP_PER_HOUR`] new names an hour; peers on another host still register new
/// names.
#[test]
fn new_names_from_one_host_are_rate_limited() -> Result<()> {
    let net = Net::new()?;
    let dir = net.dir().addr();
    let wanted = NAME_BINDS_PER_IP_PER_HOUR as usize + 20;
    let answers = runtime()?.block_on(async {
        let deadline = Instant::now() + ATTACK;
        let mut answers = Answers::default();
        let mut next = 0;
        // Each name from a new key, so only the host is common to them.
        let mut attempts = 0;
        while next < wanted && Instant::now() < deadline && attempts < 20 * wanted {
            attempts += 1;
            let raw = Raw::at("sybil", mallory())?;
            match try_register(&raw, dir, &format!("sybil{next}")).await {
                Ok(answer) => {
                    answers.count(&answer);
                    next += 1;
                }
                Err(e) if refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        ensure!(
            next == wanted,
            "only {next} of {wanted} sybils got an answer"
        );
        Ok(answers)
    })?;
    eprintln!("{wanted} new names from one host: {answers:?}");
    ensure!(
        answers.get("Registered") <= NAME_BINDS_PER_IP_PER_HOUR as usize + 1
            && answers.get("RateLimited") > 0,
        "one host must bind about {NAME_BINDS_PER_IP_PER_HOUR} names an hour: {answers:?}"
    );
    mailbox_works(&net, "c1", "newcomer", "new names still bind")?;
    net.assert_no_panics()
}

/// The introduction limit was per connection: 5 connections got 100 introductions in a
/// second, each making the victim dial addresses the attacker chose. Now the target's budget
/// holds whoever asks and on however many connections, and the victim still gets messages.
#[test]
fn the_introduction_budget_holds_across_connections() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let dir = net.dir().addr();
    let answers = runtime()?.block_on(async {
        let mut answers = Answers::default();
        let mut conns = Vec::new();
        for i in 0..5 {
            let raw = Raw::at("mallory", mallory())?;
            let conn = raw.dial(dir, ALPN_DIRECTORY, Expect::AnyKey).await?;
            raw.register(&conn, &format!("mal{i}")).await?;
            conns.push((raw, conn));
        }
        let mut tasks = JoinSet::new();
        for (_, conn) in &conns {
            let conn = conn.clone();
            tasks.spawn(async move {
                let asks = (0..30).map(|_| DirectoryRequest::Introduce { name: name("c2") });
                flood(&conn, asks, |_| false).await
            });
        }
        while let Some(one) = tasks.join_next().await {
            for (kind, n) in one??.0 {
                *answers.0.entry(kind).or_default() += n;
            }
        }
        Ok::<_, anyhow::Error>(answers)
    })?;
    eprintln!("150 introductions to c2 from 5 connections: {answers:?}");
    // One more may have been earned while the attack ran.
    let budget = INTRODUCTIONS_PER_TARGET_PER_MINUTE as usize + 1;
    ensure!(
        answers.get("Introduced") <= budget && answers.get("RateLimited") > 0,
        "c2 was introduced more than its budget of {budget}: {answers:?}"
    );
    c2.ensure_running()?;
    let sent = net.send("c1", "c2", "still reachable")?;
    ensure!(
        sent["status"] == "delivered",
        "c1 -> c2 after the attack: {sent}"
    );
    let w = net.whois("c3", "c2")?;
    ensure!(w["online"] == true, "c2 after the attack: {w}");
    c2.terminate()?;
    net.assert_no_panics()
}
