//! Attacks on a peer, each by a hand-made client or another local user, and what the peer does
//! about them: a file part it cannot use does not stop its mailbox, its files are closed to
//! other users, text from the network cannot move the terminal or reorder what is shown, and
//! a file stream that stalls does not hold a transfer for ever.

use anyhow::{ensure, Context, Result};
use common::{
    defaults::ALPN_PEER,
    framing,
    seal::Content,
    tls::Expect,
    wire::{codes, FileHeader, FileOffer, FilePart, MessageId, PeerFrame},
    Name,
};
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};
use tests::{bins, check_messages, raw, Net, SHORT};

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

fn part(
    from: &str,
    to: &str,
    name: &str,
    offset: u64,
    data: Vec<u8>,
    size: u64,
) -> Result<FilePart> {
    Ok(FilePart {
        id: MessageId::random(),
        offer: FileOffer {
            id: MessageId::random(),
            from: Name::new(from)?,
            to: Name::new(to)?,
            name: name.to_string(),
            size,
            hash: *blake3::hash(&data).as_bytes(),
            sent_at_ms: 0,
        },
        offset,
        data,
    })
}

/// A file part the victim cannot use sits in its mailbox before a real message. Here it
/// cannot be written: the folder for partial files is taken by a plain file (as root, a
/// permission would not stop the write). The peer drops the part with a notice and
/// acknowledges it, so the message behind it arrives; before, the event stream stopped at the
/// part and nothing after it ever came, introductions included.
#[test]
fn a_poison_file_part_does_not_stop_the_mailbox() -> Result<()> {
    let net = Net::new()?;
    net.register("victim")?;
    let downloads = net.home("victim")?.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    std::fs::write(downloads.join(".partial"), b"in the way")?;
    let dir = net.dir().addr();
    let rt = raw::runtime()?;
    rt.block_on(async {
        let mallory = raw::Raw::new("mallory")?;
        let conn = mallory.registered(dir, "mallory").await?;
        let data = b"cannot be written".to_vec();
        let poison = part(
            "mallory",
            "victim",
            "poison.txt",
            0,
            data.clone(),
            data.len() as u64,
        )?;
        let answer = mallory
            .send_letter(&conn, "victim", Content::FilePart(poison))
            .await?;
        ensure!(
            format!("{answer:?}").contains("Stored"),
            "deposit: {answer:?}"
        );
        anyhow::Ok(())
    })?;
    let sent = net.send("alice", "victim", "behind the poison")?;
    ensure!(sent["status"] == "queued", "victim is offline, yet {sent}");
    let out = net
        .peer("victim")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    check_messages(
        &out.of_type("message"),
        "alice",
        "victim",
        &["behind the poison".into()],
        Some("mailbox"),
    )?;
    ensure!(
        out.stderr.contains("poison.txt") && out.stderr.contains("dropped"),
        "no notice of the dropped part: {}",
        out.stderr
    );
    net.assert_no_panics()
}

/// A file from the mailbox whose name is only dots and spaces (`. ..` was made `..`, then
/// stored as the hidden `. (1).`) is stored under a plain, visible name in the downloads
/// folder.
#[test]
fn a_file_named_with_dots_is_stored_inside_downloads() -> Result<()> {
    let net = Net::new()?;
    net.register("victim")?;
    let dir = net.dir().addr();
    let rt = raw::runtime()?;
    rt.block_on(async {
        let mallory = raw::Raw::new("mallory")?;
        let conn = mallory.registered(dir, "mallory").await?;
        let data = b"dots".to_vec();
        let whole = part(
            "mallory",
            "victim",
            ". ..",
            0,
            data.clone(),
            data.len() as u64,
        )?;
        let answer = mallory
            .send_letter(&conn, "victim", Content::FilePart(whole))
            .await?;
        ensure!(
            format!("{answer:?}").contains("Stored"),
            "deposit: {answer:?}"
        );
        anyhow::Ok(())
    })?;
    let out = net
        .peer("victim")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    let file = out.one_of_type("file")?;
    let stored = Path::new(file["path"].as_str().unwrap_or_default());
    let downloads = net.home("victim")?.join("downloads");
    ensure!(
        stored.parent() == Some(downloads.as_path())
            && stored
                .file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.')),
        "stored as {stored:?}, not as a plain, visible name in {downloads:?}"
    );
    ensure!(std::fs::read(stored)? == b"dots", "the stored file differs");
    net.assert_no_panics()
}

/// The home folder is closed to other users (0700), also one an older version left open; the
/// control socket is too; and should the folder be opened again by hand, another user who
/// reaches the socket is still refused: it cannot send as the user or make the peer read the
/// user's files.
#[test]
fn the_home_and_the_control_socket_are_the_users_alone() -> Result<()> {
    let net = Net::new()?;
    let home = net.home("c1")?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755))?;
    std::fs::create_dir_all(home.join("downloads"))?;
    std::fs::set_permissions(
        home.join("downloads"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    net.register("c2")?;
    let mut c1 = net.peer("c1").json().args(["listen"]).spawn()?;
    c1.wait_online()?;
    ensure!(mode(&home)? == 0o700, "home is {:o}", mode(&home)?);
    ensure!(
        mode(&home.join("downloads"))? == 0o700,
        "downloads is {:o}",
        mode(&home.join("downloads"))?
    );
    let socket = home.join("control.sock");
    ensure!(
        mode(&socket)? & 0o077 == 0,
        "the control socket is {:o}",
        mode(&socket)?
    );
    if !nobody_can_run() {
        eprintln!("SKIPPED the other-user part: setpriv is not installed or we are not root");
        c1.terminate()?;
        return net.assert_no_panics();
    }
    // Open everything on the way to the socket, as a careless umask or chmod would.
    for (path, m) in [
        (net.root().to_path_buf(), 0o711),
        (home.clone(), 0o711),
        (socket, 0o777),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m))?;
    }
    let bins = bins()?;
    let whois = |as_nobody: bool| -> Result<std::process::Output> {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            c.arg(&bins.peer);
            c
        } else {
            Command::new(&bins.peer)
        };
        cmd.arg("--home")
            .arg(&home)
            .args(["--name", "c1", "--json", "--directory"])
            .arg(net.dir().addr().to_string())
            .args(["whois", "c2"]);
        Ok(cmd.output()?)
    };
    // Our own user goes through the running peer...
    let ours = whois(false)?;
    ensure!(
        ours.status.success() && String::from_utf8_lossy(&ours.stdout).contains("\"whois\""),
        "our own whois failed: {}",
        String::from_utf8_lossy(&ours.stderr)
    );
    // ...another user does not.
    let theirs = whois(true)?;
    ensure!(
        !theirs.status.success() && !String::from_utf8_lossy(&theirs.stdout).contains("\"whois\""),
        "another user used the running peer: {}",
        String::from_utf8_lossy(&theirs.stdout)
    );
    c1.terminate()?;
    net.assert_no_panics()
}

fn nobody_can_run() -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A body with a right-to-left override, a zero-width space, a BOM and a C1 control: on a
/// terminal each shows as U+FFFD; in JSON each is an escape, so a program still reads the
/// exact text and a person watching the stream sees nothing reordered.
#[test]
fn text_cannot_reorder_or_hide_what_is_shown() -> Result<()> {
    let net = Net::new()?;
    let body = "pay to \u{202E}evil\u{202C} \u{200B}x\u{FEFF}y\u{85}z";
    net.register("c2")?;
    net.send("c1", "c2", body)?;
    let plain = net.peer("c2").args(["inbox"]).run(SHORT)?.success()?;
    let shown = plain.stdout.clone();
    ensure!(
        !shown.chars().any(|c| matches!(
            c,
            '\u{202E}' | '\u{202C}' | '\u{200B}' | '\u{FEFF}' | '\u{85}'
        )),
        "the terminal got them raw: {shown:?}"
    );
    ensure!(
        shown.contains("pay to \u{FFFD}evil\u{FFFD}"),
        "shown as {shown:?}"
    );
    net.send("c1", "c2", body)?;
    let json = net
        .peer("c2")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    ensure!(
        !json
            .stdout
            .chars()
            .any(|c| matches!(c, '\u{202E}' | '\u{200B}' | '\u{FEFF}' | '\u{85}')),
        "the JSON stream carries them raw: {:?}",
        json.stdout
    );
    let message = json.one_of_type("message")?;
    ensure!(message["body"] == body, "the JSON text changed: {message}");
    net.assert_no_panics()
}

/// A sender that offers a file, sends a few bytes and then nothing, on a link it keeps alive,
/// has its file stream stopped with `TIMED_OUT` once nothing has arrived for 30 s (before, the
/// stream waited for ever, holding one of the peer's transfers).
#[test]
fn a_stalled_file_stream_is_given_up() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let (addr, key) = net.dial_target("obs", "c2")?;
    let dir = net.dir().addr();
    let rt = raw::runtime()?;
    let stopped = rt.block_on(async {
        let mallory = raw::Raw::new("mallory")?;
        let _registered = mallory.registered(dir, "mallory").await?;
        let conn = mallory.dial(addr, ALPN_PEER, Expect::Key(key)).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let header = FileHeader {
            id: MessageId::random(),
            from: Name::new("mallory")?,
            to: Name::new("c2")?,
            name: "stall.bin".into(),
            size: 1 << 20,
            resume_key: [3; 32],
            sent_at_ms: tests::now_ms(),
        };
        framing::write_frame(&mut send, &PeerFrame::FileStream(header)).await?;
        let answer: Option<PeerFrame> = framing::read_frame(&mut recv).await?;
        ensure!(
            matches!(answer, Some(PeerFrame::FileAccept { offset: 0 })),
            "the offer was not accepted: {answer:?}"
        );
        send.write_all(b"only a few bytes").await?;
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(60), send.stopped())
            .await
            .context("the stalled stream was still open after 60 s")??;
        anyhow::Ok(stopped)
    })?;
    ensure!(
        stopped == Some(codes::TIMED_OUT.into()),
        "stopped with {stopped:?}, not TIMED_OUT"
    );
    c2.ensure_running()?;
    c2.terminate()?;
    net.assert_no_panics()
}
