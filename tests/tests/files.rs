//! File transfer: a large file arrives intact, an interrupted transfer resumes, a hostile name
//! cannot escape the downloads folder or overwrite anything, a forged hash stores nothing.

use anyhow::{bail, ensure, Context, Result};
use common::{
    defaults::ALPN_PEER,
    framing,
    tls::Expect,
    wire::{FileHeader, MessageId, PeerFrame},
    KeyId, Name,
};
use std::{
    fs,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tests::{
    is_type, poll_until,
    raw::{runtime, Raw, RAW_WAIT},
    Json, Net, SHORT,
};

/// Long enough for a gigabyte through debug builds on a busy 2-core machine.
const TRANSFER: Duration = Duration::from_secs(600);

/// Writes `mib` MiB of pseudo-random bytes (xorshift, so every MiB differs) to `path`.
fn make_file(path: &Path, mib: usize) -> Result<()> {
    let mut file = std::io::BufWriter::new(fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all(&block)?;
    }
    file.flush()?;
    Ok(())
}

/// BLAKE3 of a file, hex, by the reference implementation (the `blake3` crate), not by the
/// code under test.
fn b3sum(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(fs::File::open(path)?)
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn downloads(net: &Net, name: &str) -> Result<PathBuf> {
    Ok(net.home(name)?.join("downloads"))
}

/// `peer --name c1 --json send-file c2 PATH`, which must succeed within `timeout`.
fn send_file(net: &Net, path: &Path, timeout: Duration) -> Result<tests::CmdOutput> {
    net.peer("c1")
        .json()
        .args(["send-file", "c2"])
        .args([path])
        .run(timeout)?
        .success()
}

/// The one `file` line a listener printed.
fn file_line(lines: &[Json]) -> Result<Json> {
    let files: Vec<&Json> = lines.iter().filter(|v| is_type(v, "file")).collect();
    match files.as_slice() {
        [one] => Ok((*one).clone()),
        other => bail!("expected one file line, got {other:?}"),
    }
}

/// A gigabyte crosses a direct link, streamed, and arrives with the sender's hash.
#[test]
fn a_gigabyte_arrives_intact() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let path = net.root().join("big.bin");
    make_file(&path, 1024)?;
    let expected = b3sum(&path)?;
    let started = Instant::now();
    let out = send_file(&net, &path, TRANSFER)?;
    let elapsed = started.elapsed();
    let sent = out.one_of_type("file_sent")?;
    ensure!(
        sent["blake3"] == expected.as_str(),
        "sender's hash {sent} vs b3sum {expected}"
    );
    ensure!(sent["size"] == 1u64 << 30, "size in {sent}");
    eprintln!(
        "1 GiB sent in {elapsed:?} ({:.0} MiB/s)",
        1024.0 / elapsed.as_secs_f64()
    );
    let got = c2.wait_json("the file line", Duration::from_secs(30), |v| {
        is_type(v, "file")
    })?;
    ensure!(
        got["from"] == "c1" && got["blake3"] == expected.as_str(),
        "c2 printed {got}"
    );
    let stored = PathBuf::from(got["path"].as_str().context("no path")?);
    ensure!(
        stored.starts_with(downloads(&net, "c2")?),
        "stored outside downloads: {got}"
    );
    ensure!(
        b3sum(&stored)? == expected,
        "the stored file's hash differs"
    );
    // The receiving side reported how far it was: from the start to all of it, never back,
    // before the file line.
    let lines = c2.json_lines();
    let file_at = (lines.iter().position(|v| is_type(v, "file"))).context("no file line")?;
    let done: Vec<u64> = (lines[..file_at].iter())
        .filter(|v| is_type(v, "file_progress") && v["from"] == "c1" && v["name"] == "big.bin")
        .map(|v| v["done"].as_u64().unwrap_or(u64::MAX))
        .collect();
    ensure!(
        done.first() == Some(&0) && done.last() == Some(&(1 << 30)),
        "progress went {done:?}"
    );
    ensure!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {done:?}"
    );
    fs::remove_file(&path)?;
    fs::remove_file(&stored)?;
    c2.terminate()?;
    net.assert_no_panics()
}

/// The sender dies in the middle; sending the same file again continues from what the
/// receiver kept, and the result is whole.
#[test]
fn an_interrupted_transfer_resumes() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let path = net.root().join("resume.bin");
    make_file(&path, 256)?;
    let expected = b3sum(&path)?;
    let partial_dir = downloads(&net, "c2")?.join(".partial");

    let mut first = net
        .peer("c1")
        .json()
        .args(["send-file", "c2"])
        .args([&path])
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let kept = loop {
        let size: u64 = fs::read_dir(&partial_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if size >= 16 << 20 {
            break size;
        }
        ensure!(
            first.is_running(),
            "the first send ended before 16 MiB arrived"
        );
        ensure!(
            Instant::now() < deadline,
            "only {size} bytes arrived in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling a file's size, with a deadline
    };
    first.kill9()?;
    eprintln!("sender killed with {kept} bytes at the receiver");

    let out = send_file(&net, &path, TRANSFER)?;
    let sent = out.one_of_type("file_sent")?;
    let resumed = sent["resumed_from"].as_u64().unwrap_or(0);
    ensure!(
        resumed >= 16 << 20,
        "the second send did not resume: {sent}"
    );
    let got = c2.wait_json("the file line", Duration::from_secs(30), |v| {
        is_type(v, "file")
    })?;
    ensure!(got["blake3"] == expected.as_str(), "c2 printed {got}");
    ensure!(
        got["resumed_from"] == resumed,
        "receiver and sender disagree: {got} vs {sent}"
    );
    let stored = PathBuf::from(got["path"].as_str().context("no path")?);
    ensure!(
        b3sum(&stored)? == expected,
        "the resumed file's hash differs"
    );
    c2.terminate()?;
    ensure!(
        file_line(&c2.json_lines()).is_ok(),
        "c2 printed the file more than once"
    );
    net.assert_no_panics()
}

/// A sender that offers `../../x` gets a plain name inside the downloads folder, and a second
/// file of the same name gets a new name instead of overwriting the first. A file whose bytes
/// do not match the hash that follows them is refused and not stored.
#[test]
fn hostile_file_names_stay_inside_downloads() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let info = net.whois("c1", "c2")?;
    let addr: SocketAddr = info["observed_addr"]
        .as_str()
        .context("no address")?
        .parse()?;
    let key: KeyId = info["key"].as_str().unwrap_or_default().parse()?;
    let dir = net.dir().addr();
    let downloads = downloads(&net, "c2")?;
    runtime()?.block_on(async {
        let raw = Raw::new("mallory")?;
        // Registered for as long as the offers run: c2 checks mallory's name at the directory.
        let _registered = raw.registered(dir, "mallory").await?;
        let direct = raw.dial(addr, ALPN_PEER, Expect::Key(key)).await?;
        for content in [&b"first"[..], &b"second"[..]] {
            let hash = *blake3::hash(content).as_bytes();
            ensure!(
                offer(&direct, "../../../evil.sh", content, hash).await?,
                "refused"
            );
        }
        let forged = *blake3::hash(b"something else").as_bytes();
        ensure!(
            !offer(&direct, "forged.txt", b"third", forged).await?,
            "a file with a forged hash was accepted"
        );
        Ok::<_, anyhow::Error>(())
    })?;
    let lines = c2.wait_json_n("two file lines", 2, Duration::from_secs(10), |v| {
        is_type(v, "file")
    })?;
    let paths: Vec<PathBuf> = lines
        .iter()
        .filter_map(|v| v["path"].as_str())
        .map(PathBuf::from)
        .collect();
    ensure!(
        paths == [downloads.join("evil.sh"), downloads.join("evil (1).sh")],
        "stored as {paths:?}"
    );
    ensure!(
        fs::read(&paths[0])? == b"first" && fs::read(&paths[1])? == b"second",
        "contents"
    );
    ensure!(
        !net.root().join("evil.sh").exists(),
        "a file escaped the downloads folder"
    );
    ensure!(
        !downloads.join("forged.txt").exists(),
        "the file with a forged hash was stored"
    );
    c2.terminate()?;
    net.assert_no_panics()
}

/// Offers `content` as `name` on a new stream, followed by `hash`, and returns the receiver's
/// verdict on the hash.
async fn offer(
    conn: &quinn::Connection,
    name: &str,
    content: &[u8],
    hash: [u8; 32],
) -> Result<bool> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let header = FileHeader {
        id: MessageId::random(),
        from: Name::new("mallory")?,
        to: Name::new("c2")?,
        name: name.into(),
        size: content.len() as u64,
        resume_key: rand::random(),
        sent_at_ms: 1,
    };
    framing::write_frame(&mut send, &PeerFrame::FileStream(header)).await?;
    match tokio::time::timeout(RAW_WAIT, framing::read_frame::<PeerFrame, _>(&mut recv)).await?? {
        Some(PeerFrame::FileAccept { offset: 0 }) => {}
        other => bail!("offer answered {other:?}"),
    }
    send.write_all(content).await?;
    send.write_all(&hash).await?;
    send.finish()?;
    match tokio::time::timeout(RAW_WAIT, framing::read_frame::<PeerFrame, _>(&mut recv)).await?? {
        Some(PeerFrame::FileDone { ok }) => Ok(ok),
        other => bail!("after the bytes: {other:?}"),
    }
}

/// `make_file`, then `extra` more bytes, so the size is not a whole number of mailbox parts.
fn make_odd_file(path: &Path, mib: usize, extra: usize) -> Result<u64> {
    make_file(path, mib)?;
    let mut file = fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(&vec![0x5a; extra])?;
    Ok(((mib as u64) << 20) + extra as u64)
}

/// The recipient is offline: a small file goes into its mailbox (through the sender's running
/// peer, over the control socket) and arrives whole, once, when the recipient comes back.
#[test]
fn a_small_file_waits_in_the_mailbox() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let mut c1 = net.listen("c1")?;
    let path = net.root().join("notes.bin");
    let size = make_odd_file(&path, 3, 1000)?;
    let expected = b3sum(&path)?;
    let out = send_file(&net, &path, TRANSFER)?;
    let sent = out.one_of_type("file_sent")?;
    ensure!(
        sent["status"] == "queued" && sent["size"] == size && sent["blake3"] == expected.as_str(),
        "c2 is offline, yet: {sent}"
    );

    let mut c2 = net.listen("c2")?;
    let got = c2.wait_json("the file line", Duration::from_secs(60), |v| {
        is_type(v, "file")
    })?;
    ensure!(
        got["from"] == "c1" && got["via"] == "mailbox" && got["blake3"] == expected.as_str(),
        "c2 printed {got}"
    );
    let stored = PathBuf::from(got["path"].as_str().context("no path")?);
    ensure!(
        stored.parent() == Some(downloads(&net, "c2")?.as_path()),
        "stored elsewhere: {got}"
    );
    ensure!(b3sum(&stored)? == expected, "the stored file differs");
    let partial = downloads(&net, "c2")?.join(".partial");
    let left = fs::read_dir(&partial)?.count();
    ensure!(left == 0, "{left} partial file(s) left behind");
    c2.terminate()?;
    ensure!(
        file_line(&c2.json_lines()).is_ok(),
        "c2 printed the file more than once"
    );
    c1.terminate()?;
    net.assert_no_panics()
}

/// `inbox` takes a file waiting in the mailbox and prints it like `listen` does.
#[test]
fn inbox_takes_a_file_from_the_mailbox() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let path = net.root().join("small.txt");
    fs::write(&path, "a short note\n")?;
    let expected = b3sum(&path)?;
    let out = send_file(&net, &path, SHORT)?;
    ensure!(
        out.one_of_type("file_sent")?["status"] == "queued",
        "c2 is offline"
    );
    let out = net
        .peer("c2")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    let got = file_line(&out.json())?;
    ensure!(
        got["via"] == "mailbox" && got["blake3"] == expected.as_str(),
        "inbox printed {got}"
    );
    let stored = PathBuf::from(got["path"].as_str().context("no path")?);
    ensure!(
        fs::read_to_string(stored)? == "a short note\n",
        "content differs"
    );
    net.assert_no_panics()
}

/// A file over the sender's mailbox limit, to an offline recipient: the sender says so, keeps
/// running, and sends it directly once the recipient is back.
#[test]
fn a_large_file_waits_for_its_recipient() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let path = net.root().join("large.bin");
    let size = make_odd_file(&path, 2, 7)?;
    let expected = b3sum(&path)?;
    let mut c1 = net
        .peer("c1")
        .json()
        .global(["--mailbox-file-max", "1048576"])
        .args(["send-file", "c2"])
        .args([&path])
        .spawn()?;
    poll_until(
        "c1 to say it waits for c2",
        SHORT,
        Duration::from_millis(100),
        || {
            Ok(c1
                .stderr_tail()
                .contains("as long as this runs")
                .then_some(()))
        },
    )?;
    ensure!(c1.is_running(), "the sender gave up");

    let mut c2 = net.listen("c2")?;
    let got = c2.wait_json("the file line", TRANSFER, |v| is_type(v, "file"))?;
    ensure!(
        got["via"] == "direct" && got["blake3"] == expected.as_str() && got["size"] == size,
        "c2 printed {got}"
    );
    let sent = c1.wait_json("the file_sent line", SHORT, |v| is_type(v, "file_sent"))?;
    ensure!(
        sent["status"] == "delivered" && sent["path"].is_string(),
        "c1 printed {sent}"
    );
    c1.wait_exit(SHORT)?;
    c2.terminate()?;
    net.assert_no_panics()
}
