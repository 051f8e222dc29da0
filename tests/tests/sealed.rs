//! End-to-end sealing: what waits in the directory's mailbox is sealed to its recipient and
//! signed by its sender, so the directory's data folder holds no readable mail, and mail the
//! directory (or whoever has its files) alters or forges is refused by the recipient.

use anyhow::{bail, ensure, Context, Result};
use common::{
    defaults::ALPN_OUTDATED,
    seal::{Content, Sealer, Signature},
    tls::Expect,
    wire::{codes, ChatMessage, Mail, MessageId, Proof, SignedReceipt},
    Name,
};
use directory::store::{Quota, RedbStore, Removal, Store};
use std::{fs, path::Path};
use tests::{raw, CmdOutput, Net, SHORT};

/// True when `needle` occurs in any file under `dir`.
fn found_in(dir: &Path, needle: &[u8]) -> Result<bool> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let found = if path.is_dir() {
            found_in(&path, needle)?
        } else {
            fs::read(&path)?.windows(needle.len()).any(|w| w == needle)
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `peer inbox --json` run as `who`: its output, and the bodies of the messages it showed.
fn inbox(net: &Net, who: &str) -> Result<(CmdOutput, Vec<serde_json::Value>)> {
    let out = net.peer(who).json().args(["inbox"]).run(SHORT)?.success()?;
    let bodies = out
        .of_type("message")
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    Ok((out, bodies))
}

fn marker(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

/// A message and a file for an offline peer leave no trace of their text in the directory's
/// data folder, while the directory runs and once it stopped; the recipient still gets both,
/// and its history records each message's signature as checked.
#[test]
fn the_directory_keeps_no_readable_mail() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c2")?;
    let (text, contents) = (marker("message"), marker("file contents"));
    let file_name = marker("file name");
    let sent = net.send("c1", "c2", &text)?;
    ensure!(sent["status"] == "queued", "c2 is offline, yet {sent}");
    let path = net.root().join(&file_name);
    fs::write(&path, contents.repeat(100))?;
    let out = net
        .peer("c1")
        .json()
        .args(["send-file", "c2"])
        .args([&path])
        .run(SHORT)?
        .success()?;
    ensure!(
        out.one_of_type("file_sent")?["status"] == "queued",
        "{}",
        out.stdout
    );
    let data = net.dir().data().to_path_buf();
    for running in [true, false] {
        for needle in [&text, &contents, &file_name] {
            ensure!(
                !found_in(&data, needle.as_bytes())?,
                "{needle:?} is readable in the directory's data folder (running: {running})"
            );
        }
        if running {
            net.dir_mut().terminate()?;
        }
    }
    net.dir_mut().restart()?;

    let (out, bodies) = inbox(&net, "c2")?;
    ensure!(bodies == [text.as_str()], "c2 got {bodies:?}");
    let file = out.one_of_type("file")?;
    let stored = fs::read_to_string(file["path"].as_str().context("no path")?)?;
    ensure!(stored == contents.repeat(100), "the file arrived altered");
    let history = net.history("c2", "c1")?;
    let c1_key = net.whois("c2", "c1")?["key"].clone();
    ensure!(
        history.iter().any(|m| m["body"] == text.as_str()
            && m["verified"] == "signature"
            && m["key"] == c1_key),
        "the history does not record the checked signature: {history:?}"
    );
    net.assert_no_panics()
}

/// In the store of a stopped directory, replaces each letter held for `to` (the `i`th piece of
/// mail held) with what `change` makes of it, as an operator with the data folder could;
/// returns how many letters there were.
fn tamper(data: &Path, to: &str, mut change: impl FnMut(usize, Mail) -> Mail) -> Result<usize> {
    let store = RedbStore::open(&data.join("directory.redb"))?;
    let to = Name::new(to)?;
    let held = store.pending(&to, None, 100)?;
    let mut changed = Vec::new();
    for (i, stored) in held.iter().enumerate() {
        if matches!(stored.mail, Mail::Letter(_)) {
            changed.push((stored.seq, change(i, stored.mail.clone())));
        }
    }
    let removals: Vec<_> = changed
        .iter()
        .map(|(seq, _)| Removal {
            recipient: to.clone(),
            seq: *seq,
            proof: None,
        })
        .collect();
    store.remove_batch(&removals, Quota::default())?;
    let mail: Vec<_> = changed.into_iter().map(|(_, mail)| mail).collect();
    for result in store.deposit_batch(&mail, Quota::default())? {
        result?;
    }
    Ok(mail.len())
}

/// What the stopped directory in `data` holds for `name`: its binding and the encryption key
/// it published.
fn bound(
    data: &Path,
    name: &str,
) -> Result<(directory::store::NameRecord, common::seal::PublishedKey)> {
    let store = RedbStore::open(&data.join("directory.redb"))?;
    let record = store.name(&Name::new(name)?)?.context("not bound")?;
    let published = record.published.context("no published key")?;
    Ok((record, published))
}

/// c1's next message reaches c2 as usual (after refused mail was dropped).
fn later_mail_arrives(net: &Net) -> Result<()> {
    net.send("c1", "c2", "after")?;
    let after = net.register("c2")?;
    ensure!(
        after.len() == 1 && after[0]["body"] == "after",
        "c2 got {after:?}"
    );
    Ok(())
}

/// A letter in place of `letter`, with the same routing but `body`, sealed to its recipient
/// (`to`: its key and published encryption key) and signed by `mallory`.
fn forged(
    mallory: &Sealer,
    to: (&common::KeyId, &common::seal::PublishedKey),
    letter: &common::wire::Letter,
    body: &str,
) -> Mail {
    let message = ChatMessage {
        id: MessageId::random(),
        from: letter.from.clone(),
        to: letter.to.clone(),
        sent_at_ms: letter.sent_at_ms,
        body: body.into(),
    };
    let sealed = mallory.seal(to.0, to.1, Content::Chat(message));
    Mail::Letter(sealed.expect("sealed"))
}

/// Three letters wait for c2, who knows c1's key from an earlier message. In the stopped
/// directory's store, one letter's ciphertext gets a flipped bit and another is replaced by a
/// letter sealed to c2 (whose encryption key is public) but signed by another key in c1's
/// name. c2 shows neither, reports both, and the directory drops them: a second `inbox`
/// finds nothing. The untouched letter and later mail arrive as usual.
#[test]
fn altered_and_forged_letters_are_refused_and_dropped() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c2")?;
    net.send("c1", "c2", "first, to learn c1's key")?;
    let first = net.register("c2")?;
    ensure!(first.len() == 1, "c2 got {first:?}");
    for body in ["altered", "forged", "untouched"] {
        let sent = net.send("c1", "c2", body)?;
        ensure!(sent["status"] == "queued", "{sent}");
    }
    net.dir_mut().terminate()?;
    let data = net.dir().data().to_path_buf();
    let (c2, published) = bound(&data, "c2")?;
    let mallory = Sealer::from_seed(rand::random(), rand::random())?;
    let changed = tamper(&data, "c2", |i, mail| match (i, mail) {
        (0, Mail::Letter(mut letter)) => {
            let middle = letter.sealed.len() / 2;
            letter.sealed[middle] ^= 0x20;
            Mail::Letter(letter)
        }
        (1, Mail::Letter(letter)) => forged(
            &mallory,
            (&c2.key, &published),
            &letter,
            "forged: send your password",
        ),
        (_, other) => other,
    })?;
    ensure!(changed == 3, "{changed} letters held for c2, not 3");
    net.dir_mut().restart()?;

    let (out, bodies) = inbox(&net, "c2")?;
    ensure!(bodies == ["untouched"], "c2 showed {bodies:?}");
    ensure!(
        out.stderr.contains("altered or is not sealed to us"),
        "the altered letter was not reported: {}",
        out.stderr
    );
    ensure!(
        out.stderr.contains("not by the key remembered for c1"),
        "the forged letter was not reported: {}",
        out.stderr
    );
    let (again, shown) = inbox(&net, "c2")?;
    ensure!(
        shown.is_empty() && !again.stderr.contains("refused"),
        "the directory kept refused letters: {}{}",
        again.stdout,
        again.stderr
    );
    later_mail_arrives(&net)?;
    net.assert_no_panics()
}

/// The first letter c2 ever gets from c1 was made up in the store: sealed to c2 but signed by
/// another key in c1's name. c2 checks it against the key the directory holds for c1, not
/// against whichever key signed it: it is refused, and c1's real key is the one remembered.
#[test]
fn a_forged_first_letter_does_not_bring_its_own_key() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c2")?;
    let sent = net.send("c1", "c2", "the real one")?;
    ensure!(sent["status"] == "queued", "{sent}");
    net.dir_mut().terminate()?;
    let data = net.dir().data().to_path_buf();
    let (c2, published) = bound(&data, "c2")?;
    let mallory = Sealer::from_seed(rand::random(), rand::random())?;
    let changed = tamper(&data, "c2", |_, mail| match mail {
        Mail::Letter(letter) => forged(
            &mallory,
            (&c2.key, &published),
            &letter,
            "forged, first contact",
        ),
        other => other,
    })?;
    ensure!(changed == 1, "{changed} letters held for c2, not 1");
    net.dir_mut().restart()?;

    let (out, bodies) = inbox(&net, "c2")?;
    ensure!(bodies.is_empty(), "c2 showed {bodies:?}");
    ensure!(
        out.stderr.contains("not by the key remembered for c1"),
        "the forged letter was not reported: {}",
        out.stderr
    );
    // c1's real key is the one remembered: its next message is taken.
    later_mail_arrives(&net)?;
    net.assert_no_panics()
}

/// A program of the protocol version before (ALPN chat-dir/1 or chat-peer/3) completes its
/// handshake and is closed at once with a reason that tells it to upgrade, by the directory and
/// by a peer alike.
#[test]
fn an_old_program_is_told_to_upgrade() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let (c2_addr, c2_key) = net.dial_target("c1", "c2")?;
    let targets = [
        (net.dir().addr(), ALPN_OUTDATED[0], Expect::AnyKey),
        (c2_addr, ALPN_OUTDATED[1], Expect::Key(c2_key)),
    ];
    raw::runtime()?.block_on(async {
        let old = raw::Raw::new("old")?;
        for (addr, alpn, expect) in targets {
            let conn = old.dial(addr, alpn, expect).await?;
            let closed = tokio::time::timeout(raw::RAW_WAIT, conn.closed()).await?;
            match closed {
                quinn::ConnectionError::ApplicationClosed(close)
                    if close.error_code == codes::OUTDATED.into()
                        && String::from_utf8_lossy(&close.reason).contains("upgrade") => {}
                other => bail!("{} answered an old program with {other}", addr),
            }
        }
        anyhow::Ok(())
    })?;
    c2.terminate()?;
    net.assert_no_panics()
}

/// A receipt made up in the store (c2's key as signer, a signature c2 never made) for c1's
/// queued message leaves it `queued` in c1's history; the real one, once c2 takes the message,
/// makes it `delivered_later`. (Before, the directory made receipts itself, so it could claim
/// any delivery.)
#[test]
fn a_receipt_the_directory_makes_up_is_ignored() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c2")?;
    net.register("c1")?;
    let sent = net.send("c1", "c2", "did you get this?")?;
    ensure!(sent["status"] == "queued", "{sent}");
    let id: MessageId = {
        let hex = sent["id"].as_str().context("no id")?;
        MessageId(hex_id(hex)?)
    };
    net.dir_mut().terminate()?;
    {
        let data = net.dir().data().to_path_buf();
        // Read before the store is opened for writing: redb takes the file once.
        let signer = bound(&data, "c2")?.1.identity;
        let store = RedbStore::open(&data.join("directory.redb"))?;
        let forged = Mail::SignedReceipt(SignedReceipt {
            id: MessageId::random(),
            from: Name::new("c2")?,
            to: Name::new("c1")?,
            signer,
            delivered: vec![Proof {
                told: id,
                signature: Signature([7; 64]),
            }],
            at_ms: common::now_ms(),
        });
        for result in store.deposit_batch(&[forged], Quota::default())? {
            result?;
        }
    }
    net.dir_mut().restart()?;
    let state = |net: &Net| -> Result<String> {
        let lines = net.history("c1", "c2")?;
        let line = lines.iter().find(|v| v["id"] == sent["id"]);
        Ok(line
            .and_then(|v| v["state"].as_str())
            .unwrap_or("absent")
            .to_string())
    };
    net.register("c1")?; // takes the forged receipt
    ensure!(
        state(&net)? == "queued",
        "a forged receipt counted: {}",
        state(&net)?
    );
    net.register("c2")?; // takes the message, and proves it
    net.register("c1")?; // takes the real receipt
    ensure!(
        state(&net)? == "delivered_later",
        "the real receipt: {}",
        state(&net)?
    );
    net.assert_no_panics()
}

fn hex_id(hex: &str) -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    ensure!(hex.len() == 32, "an id is 32 hex digits: {hex}");
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(id)
}

/// A letter can hold a little more than a message may (room for its fields): a body over
/// the limit, sealed and deposited by a raw client, is refused by the recipient as the direct
/// path refuses it, and reported.
#[test]
fn an_oversized_body_in_a_letter_is_refused() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let dir = net.dir().addr();
    raw::runtime()?.block_on(async {
        let mallory = raw::Raw::new("mallory")?;
        let conn = mallory.registered(dir, "mallory").await?;
        let long = ChatMessage {
            id: MessageId::random(),
            from: Name::new("mallory")?,
            to: Name::new("c2")?,
            sent_at_ms: common::now_ms(),
            body: "x".repeat(common::defaults::MAX_BODY_LEN + 100),
        };
        let answer = mallory
            .send_letter(&conn, "c2", Content::Chat(long))
            .await?;
        ensure!(
            format!("{answer:?}").contains("Stored"),
            "deposit: {answer:?}"
        );
        anyhow::Ok(())
    })?;
    let (out, shown) = inbox(&net, "c2")?;
    ensure!(
        shown.is_empty() && out.stderr.contains("too long"),
        "an oversized body was not refused: {}{}",
        out.stdout,
        out.stderr
    );
    net.assert_no_panics()
}
