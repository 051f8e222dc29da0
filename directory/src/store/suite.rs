//! The behaviour every [`Store`] backend must show, written against the trait: a backend passes
//! when [`all`] returns `Ok` for stores it opens. Also the helpers that tests of the store's
//! users share.

use super::{Bind, Binding, NameRecord, Naming, Quota, Removal, Store, StoreError, Stored, Taken};
use common::{
    seal::{PublishedKey, Signature},
    wire::{ChatMessage, FileOffer, FilePart, Letter, LetterKind, Mail, MessageId},
    KeyId, Name,
};

/// What a case returns; `?` on any error fails it.
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Opens the store named by the argument: a name not used before gives an empty store, and the
/// same name gives the same storage again (once the earlier handle is dropped).
pub(crate) type Open<'a, S> = &'a dyn Fn(&str) -> Result<S, StoreError>;

/// One case of the suite.
type Case<S> = for<'a> fn(Open<'a, S>) -> TestResult;

/// Runs every case against stores from `open`, each case in stores of its own. A failing case
/// is named in the error, or in the captured output if it panics.
pub(crate) fn all<S: Store>(open: impl Fn(&str) -> Result<S, StoreError>) -> TestResult {
    let cases: [(&str, Case<S>); 19] = [
        ("bind_new_existing_taken", bind_new_existing_taken),
        (
            "a_key_left_without_names_loses_its_published_key",
            a_key_left_without_names_loses_its_published_key,
        ),
        (
            "a_published_key_is_kept_per_key_and_survives_reopening",
            a_published_key_is_kept_per_key_and_survives_reopening,
        ),
        (
            "reopen_keeps_bindings_and_mailbox_order",
            reopen_keeps_bindings_and_mailbox_order,
        ),
        ("deposit_is_idempotent", deposit_is_idempotent),
        ("quota_by_count_and_bytes", quota_by_count_and_bytes),
        ("remove_then_pending", remove_then_pending),
        ("queued_from_counts", queued_from_counts),
        (
            "removing_delivered_mail_leaves_receipts_for_its_senders",
            removing_delivered_mail_leaves_receipts_for_its_senders,
        ),
        (
            "a_receipt_that_does_not_fit_is_dropped",
            a_receipt_that_does_not_fit_is_dropped,
        ),
        (
            "empty_file_parts_count_their_names",
            empty_file_parts_count_their_names,
        ),
        (
            "one_sender_fills_only_its_share",
            one_sender_fills_only_its_share,
        ),
        (
            "the_total_cap_holds_for_every_mailbox",
            the_total_cap_holds_for_every_mailbox,
        ),
        (
            "a_nearly_full_disk_refuses_deposits",
            a_nearly_full_disk_refuses_deposits,
        ),
        ("a_key_holds_a_few_names", a_key_holds_a_few_names),
        (
            "an_expired_name_may_be_taken_and_loses_its_mail",
            an_expired_name_may_be_taken_and_loses_its_mail,
        ),
        (
            "registrations_and_last_seen_keep_a_name",
            registrations_and_last_seen_keep_a_name,
        ),
        (
            "a_lookalike_of_another_keys_name_is_refused",
            a_lookalike_of_another_keys_name_is_refused,
        ),
        ("names_are_updated_together", names_are_updated_together),
    ];
    for (case, run) in cases {
        println!("store suite: {case}");
        run(&|store: &str| open(&format!("{case}.{store}")))
            .map_err(|e| format!("store suite, {case}: {e}"))?;
    }
    Ok(())
}

/// A name for tests.
pub(crate) fn name(s: &str) -> Name {
    Name::new(s).expect("valid test name")
}

/// The bytes `mail` counts against quotas, all entries together.
pub(crate) fn size(mail: &[Mail]) -> u64 {
    mail.iter().map(Mail::size).sum()
}

/// Binds `who` to the key `[key; 32]` at time `at_ms`, with the default limits.
pub(crate) fn bind_at<S: Store>(
    store: &S,
    who: &str,
    key: u8,
    at_ms: u64,
) -> Result<Bind, StoreError> {
    store.bind(&name(who), &KeyId([key; 32]), at_ms, Naming::default())
}

/// A chat message with a fresh id.
pub(crate) fn chat(from: &str, to: &str, body: &str) -> ChatMessage {
    ChatMessage {
        id: MessageId::random(),
        from: name(from),
        to: name(to),
        sent_at_ms: 1,
        body: body.into(),
    }
}

/// A letter from `from` to `to` whose sealed part is `body` itself: the store never opens
/// letters, so it need not be sealed for these tests.
pub(crate) fn msg(from: &str, to: &str, body: &str) -> Mail {
    Mail::Letter(Letter {
        id: MessageId::random(),
        from: name(from),
        to: name(to),
        sent_at_ms: 1,
        kind: LetterKind::Chat,
        encapped: [0; 32],
        sealed: body.as_bytes().to_vec(),
    })
}

/// Removals of these entries, each with a proof of taking it (which the store does not check).
pub(crate) fn taken(entries: &[(Name, u64)]) -> Vec<Removal> {
    let proof = Taken {
        signer: [1; 32],
        signature: Signature([2; 64]),
    };
    entries
        .iter()
        .map(|(recipient, seq)| Removal {
            recipient: recipient.clone(),
            seq: *seq,
            proof: Some(proof),
        })
        .collect()
}

/// The body of a chat message, or a placeholder for other mail.
pub(crate) fn body(mail: &Mail) -> &str {
    match mail {
        Mail::Chat(m) => &m.body,
        Mail::Letter(l) => std::str::from_utf8(&l.sealed).unwrap_or("(not text)"),
        _ => "(not a chat message)",
    }
}

/// The bodies of held mail, in order.
pub(crate) fn bodies(stored: &[Stored]) -> Vec<&str> {
    stored.iter().map(|s| body(&s.mail)).collect()
}

fn bind_new_existing_taken<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let (a, b) = (KeyId([1; 32]), KeyId([2; 32]));
    assert_eq!(bind_at(&store, "c1", 1, 10)?, Bind::New);
    assert_eq!(bind_at(&store, "c1", 1, 20)?, Bind::Existing);
    assert_eq!(bind_at(&store, "c1", 2, 30), Err(StoreError::NameTaken));
    assert_eq!(bind_at(&store, "c2", 2, 30)?, Bind::New);
    assert_eq!(store.name(&name("nobody"))?, None);
    store.set_last_seen(&name("c1"), 42)?;
    store.set_last_seen(&name("nobody"), 42)?;
    let record = NameRecord {
        key: a,
        last_seen_ms: Some(42),
        active_ms: 42,
        published: None,
    };
    assert_eq!(store.name(&name("c1"))?, Some(record));
    assert_eq!(store.name(&name("c2"))?.map(|r| r.key), Some(b));
    assert_eq!(store.name(&name("nobody"))?, None);
    Ok(())
}

fn reopen_keeps_bindings_and_mailbox_order<S: Store>(open: Open<'_, S>) -> TestResult {
    let first_seqs: Vec<u64> = {
        let store = open("store")?;
        bind_at(&store, "c1", 1, 1)?;
        let batch = [msg("c1", "c2", "a"), msg("c1", "c2", "b")];
        store.deposit_batch(&batch, Quota::default())?;
        store.deposit_batch(&[msg("c3", "c2", "c")], Quota::default())?;
        let pending = store.pending(&name("c2"), None, 10)?;
        pending.iter().map(|s| s.seq).collect()
    };
    let store = open("store")?;
    assert_eq!(bind_at(&store, "c1", 1, 2)?, Bind::Existing);
    let held: Vec<Mail> = store
        .pending(&name("c2"), None, 10)?
        .into_iter()
        .map(|s| s.mail)
        .collect();
    assert_eq!(store.usage(&name("c2"))?, (3, size(&held)));
    assert_eq!(store.held_bytes()?, size(&held));
    store.deposit_batch(&[msg("c1", "c2", "d")], Quota::default())?;
    let pending = store.pending(&name("c2"), None, 10)?;
    assert_eq!(bodies(&pending), ["a", "b", "c", "d"]);
    assert_eq!(
        pending[..3].iter().map(|s| s.seq).collect::<Vec<_>>(),
        first_seqs
    );
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    let rest = store.pending(&name("c2"), Some(pending[1].seq), 1)?;
    assert_eq!(bodies(&rest), ["c"]);
    Ok(())
}

fn deposit_is_idempotent<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let m = chat("c1", "c2", "hello");
    let results = store.deposit_batch(
        &[Mail::Chat(m.clone()), Mail::Chat(m.clone())],
        Quota::default(),
    )?;
    assert_eq!(results, [Ok(()), Ok(())]);
    assert_eq!(
        store.deposit_batch(&[Mail::Chat(m.clone())], Quota::default())?,
        [Ok(())]
    );
    let one = Mail::Chat(m.clone()).size();
    assert_eq!(store.usage(&name("c2"))?, (1, one));
    assert_eq!(store.pending(&name("c2"), None, 10)?.len(), 1);
    // The same id to another recipient is another message.
    let other = ChatMessage {
        to: name("c3"),
        ..m
    };
    store.deposit_batch(&[Mail::Chat(other)], Quota::default())?;
    assert_eq!(store.usage(&name("c3"))?, (1, one));
    assert_eq!(store.held_bytes()?, 2 * one);
    assert_eq!(store.held_entries()?, 2);
    Ok(())
}

fn quota_by_count_and_bytes<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let by_count = Quota {
        max_messages: 2,
        ..Quota::default()
    };
    let batch = [
        msg("c1", "c2", "1"),
        msg("c1", "c2", "2"),
        msg("c1", "c2", "3"),
        msg("c1", "c4", "4"),
    ];
    let results = store.deposit_batch(&batch, by_count)?;
    assert_eq!(
        results,
        [Ok(()), Ok(()), Err(StoreError::MailboxFull), Ok(())]
    );
    assert_eq!(bodies(&store.pending(&name("c2"), None, 10)?), ["1", "2"]);

    // Bytes as stored: the envelope counts, not only the body.
    let batch = [
        msg("c1", "c3", "12345678"),
        msg("c1", "c3", "abc"),
        msg("c1", "c3", "ab"),
    ];
    let by_bytes = Quota {
        max_bytes: batch[0].size() + batch[2].size(),
        ..Quota::default()
    };
    let results = store.deposit_batch(&batch, by_bytes)?;
    assert_eq!(results, [Ok(()), Err(StoreError::MailboxFull), Ok(())]);
    assert_eq!(store.usage(&name("c3"))?, (2, by_bytes.max_bytes));
    Ok(())
}

fn remove_then_pending<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let batch = [
        msg("c1", "c2", "a"),
        msg("c1", "c2", "bb"),
        msg("c1", "c2", "ccc"),
    ];
    store.deposit_batch(&batch, Quota::default())?;
    let seqs: Vec<u64> = store
        .pending(&name("c2"), None, 10)?
        .iter()
        .map(|s| s.seq)
        .collect();
    let woken = store.remove_batch(
        &taken(&[(name("c2"), seqs[1]), (name("c2"), 999), (name("c9"), 1)]),
        Quota::default(),
    )?;
    assert_eq!(woken, [Some(name("c1")), None, None]);
    assert_eq!(bodies(&store.pending(&name("c2"), None, 10)?), ["a", "ccc"]);
    let left = [batch[0].clone(), batch[2].clone()];
    assert_eq!(store.usage(&name("c2"))?, (2, size(&left)));
    assert_eq!(
        store.sender_usage(&name("c2"), &name("c1"))?,
        (2, size(&left))
    );
    // A removed id may be deposited again (the recipient dedupes by id).
    store.deposit_batch(&batch[1..2], Quota::default())?;
    assert_eq!(
        bodies(&store.pending(&name("c2"), None, 10)?),
        ["a", "ccc", "bb"]
    );
    let all: Vec<(Name, u64)> = store
        .pending(&name("c2"), None, 10)?
        .into_iter()
        .map(|s| (name("c2"), s.seq))
        .collect();
    store.remove_batch(&taken(&all), Quota::default())?;
    assert!(store.pending(&name("c2"), None, 10)?.is_empty());
    assert_eq!(store.usage(&name("c2"))?, (0, 0));
    assert_eq!(store.sender_usage(&name("c2"), &name("c1"))?, (0, 0));
    // c1 holds one receipt per batch that removed its messages, and nothing else is held.
    let receipts: Vec<Mail> = store
        .pending(&name("c1"), None, 10)?
        .into_iter()
        .map(|s| s.mail)
        .collect();
    assert_eq!(receipts.len(), 2);
    assert_eq!(store.held_bytes()?, size(&receipts));
    Ok(())
}

fn queued_from_counts<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let batch = [
        msg("c1", "c2", "a"),
        msg("c3", "c2", "b"),
        msg("c1", "c2", "c"),
        msg("c1", "c3", "d"),
    ];
    store.deposit_batch(&batch, Quota::default())?;
    assert_eq!(store.queued_from(&name("c2"), &name("c1"))?, 2);
    assert_eq!(store.queued_from(&name("c2"), &name("c3"))?, 1);
    assert_eq!(store.queued_from(&name("c3"), &name("c1"))?, 1);
    assert_eq!(store.queued_from(&name("c1"), &name("c2"))?, 0);
    bind_at(&store, "c2", 5, 1)?;
    let (record, queued) = store
        .lookup(&name("c2"), &name("c1"))?
        .ok_or("no binding")?;
    assert_eq!((record.key, queued), (KeyId([5; 32]), 2));
    assert_eq!(store.lookup(&name("nobody"), &name("c1"))?, None);
    let first = store.pending(&name("c2"), None, 1)?;
    store.remove_batch(&taken(&[(name("c2"), first[0].seq)]), Quota::default())?;
    assert_eq!(store.queued_from(&name("c2"), &name("c1"))?, 1);
    // The receipt waiting for c1 does not hold c2's own messages to c1 back.
    assert_eq!(store.pending(&name("c1"), None, 10)?.len(), 1);
    assert_eq!(store.queued_from(&name("c1"), &name("c2"))?, 0);
    Ok(())
}

fn receipts(stored: &[Stored]) -> Vec<(String, Vec<MessageId>)> {
    stored
        .iter()
        .filter_map(|s| match &s.mail {
            Mail::SignedReceipt(r) => Some((
                r.from.to_string(),
                r.delivered.iter().map(|p| p.told).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn part(from: &str, to: &str, offset: u64, data: &[u8], size: u64) -> (Mail, MessageId) {
    let offer = FileOffer {
        id: MessageId([9; 16]),
        from: name(from),
        to: name(to),
        name: "f".into(),
        size,
        hash: [0; 32],
        sent_at_ms: 1,
    };
    let part = FilePart {
        id: MessageId::random(),
        offer,
        offset,
        data: data.to_vec(),
    };
    let letter = Letter {
        id: part.id,
        from: part.offer.from.clone(),
        to: part.offer.to.clone(),
        sent_at_ms: 1,
        kind: LetterKind::FilePart {
            file: part.offer.id,
            last: part.is_last(),
        },
        encapped: [0; 32],
        sealed: part.data.clone(),
    };
    (Mail::Letter(letter), MessageId([9; 16]))
}

fn removing_delivered_mail_leaves_receipts_for_its_senders<S: Store>(
    open: Open<'_, S>,
) -> TestResult {
    let store = open("store")?;
    let (a, b, c) = (
        msg("c1", "c2", "a"),
        msg("c3", "c2", "b"),
        msg("c1", "c2", "c"),
    );
    let (first, file_id) = part("c1", "c2", 0, b"12", 4);
    let (last, _) = part("c1", "c2", 2, b"34", 4);
    let mail = [a.clone(), b.clone(), c.clone(), first, last];
    store.deposit_batch(&mail, Quota::default())?;
    assert_eq!(store.usage(&name("c2"))?, (5, size(&mail)));
    let all: Vec<(Name, u64)> = store
        .pending(&name("c2"), None, 10)?
        .iter()
        .map(|s| (name("c2"), s.seq))
        .collect();
    let woken = store.remove_batch(&taken(&all), Quota::default())?;
    let (c1, c3) = (Some(name("c1")), Some(name("c3")));
    assert_eq!(woken, [c1.clone(), c3, c1.clone(), None, c1]);
    // One receipt per sender; only a file's last part earns one, under the file's id.
    let held = store.pending(&name("c1"), None, 10)?;
    assert_eq!(
        receipts(&held),
        [("c2".into(), vec![a.id(), c.id(), file_id])]
    );
    assert_eq!(
        receipts(&store.pending(&name("c3"), None, 10)?),
        [("c2".into(), vec![b.id()])]
    );
    // Taking a receipt earns none in turn.
    let woken = store.remove_batch(&taken(&[(name("c1"), held[0].seq)]), Quota::default())?;
    assert_eq!(woken, [None]);
    assert!(store.pending(&name("c2"), None, 10)?.is_empty());
    Ok(())
}

fn a_receipt_that_does_not_fit_is_dropped<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let quota = Quota {
        max_messages: 1,
        ..Quota::default()
    };
    let full = msg("c2", "c1", "fills c1's mailbox");
    store.deposit_batch(std::slice::from_ref(&full), quota)?;
    store.deposit_batch(&[msg("c1", "c2", "hi")], quota)?;
    let held = store.pending(&name("c2"), None, 10)?;
    let woken = store.remove_batch(&taken(&[(name("c2"), held[0].seq)]), quota)?;
    assert_eq!(woken, [None]);
    assert!(store.pending(&name("c2"), None, 10)?.is_empty());
    assert_eq!(store.usage(&name("c1"))?, (1, full.size()));
    Ok(())
}

/// A part of an empty file named `file_name`: no data, every other field filled.
pub(crate) fn empty_part(from: &str, to: &str, file_name: &str) -> FilePart {
    FilePart {
        id: MessageId::random(),
        offer: FileOffer {
            id: MessageId::random(),
            from: name(from),
            to: name(to),
            name: file_name.into(),
            size: 0,
            hash: [0; 32],
            sent_at_ms: 1,
        },
        offset: 0,
        data: Vec::new(),
    }
}

fn empty_file_parts_count_their_names<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let one = Mail::FilePart(empty_part("c1", "c2", &"n".repeat(250)));
    let quota = Quota {
        max_bytes: 3 * one.size(),
        ..Quota::default()
    };
    let parts: Vec<Mail> = (0..10)
        .map(|_| Mail::FilePart(empty_part("c1", "c2", &"n".repeat(250))))
        .collect();
    let results = store.deposit_batch(&parts, quota)?;
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(stored, 3, "{results:?}");
    assert!(results[3..]
        .iter()
        .all(|r| *r == Err(StoreError::MailboxFull)));
    assert_eq!(store.usage(&name("c2"))?, (3, quota.max_bytes));
    assert!(quota.max_bytes > 750, "the names count");
    Ok(())
}

fn one_sender_fills_only_its_share<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let quota = Quota {
        max_messages: 10,
        sender_messages: 4,
        ..Quota::default()
    };
    let flood: Vec<Mail> = (0..6)
        .map(|i| msg("mallory", "c2", &i.to_string()))
        .collect();
    let results = store.deposit_batch(&flood, quota)?;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    assert_eq!(results[4], Err(StoreError::SenderQuotaFull));
    // Everyone else still gets through, and mallory still reaches others.
    let others = [
        msg("c1", "c2", "hi"),
        msg("c3", "c2", "hi"),
        msg("mallory", "c4", "x"),
    ];
    assert_eq!(
        store.deposit_batch(&others, quota)?,
        [Ok(()), Ok(()), Ok(())]
    );
    assert_eq!(store.queued_from(&name("c2"), &name("mallory"))?, 4);

    // The same by bytes.
    let big = msg("mallory", "c5", &"x".repeat(100));
    let by_bytes = Quota {
        sender_bytes: 2 * big.size(),
        ..Quota::default()
    };
    let flood: Vec<Mail> = (0..3)
        .map(|_| msg("mallory", "c5", &"x".repeat(100)))
        .collect();
    let results = store.deposit_batch(&flood, by_bytes)?;
    assert_eq!(results[2], Err(StoreError::SenderQuotaFull));
    assert_eq!(
        store.sender_usage(&name("c5"), &name("mallory"))?,
        (2, 2 * big.size())
    );
    assert_eq!(
        store.deposit_batch(&[msg("c1", "c5", "hi")], by_bytes)?,
        [Ok(())]
    );
    // Taking mail frees the sender's share.
    let first = store.pending(&name("c5"), None, 1)?;
    store.remove_batch(&taken(&[(name("c5"), first[0].seq)]), by_bytes)?;
    let again = msg("mallory", "c5", &"x".repeat(100));
    assert_eq!(store.deposit_batch(&[again], by_bytes)?, [Ok(())]);
    Ok(())
}

fn the_total_cap_holds_for_every_mailbox<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let batch: Vec<Mail> = (0..4)
        .map(|i| msg("c1", &format!("r{i}"), "hello"))
        .collect();
    let quota = Quota {
        total_bytes: size(&batch[..3]),
        ..Quota::default()
    };
    let results = store.deposit_batch(&batch, quota)?;
    assert_eq!(
        results,
        [Ok(()), Ok(()), Ok(()), Err(StoreError::StoreFull)]
    );
    assert_eq!(store.held_bytes()?, quota.total_bytes);
    // Taking mail makes room, receipts included.
    let held = store.pending(&name("r0"), None, 1)?;
    store.remove_batch(&taken(&[(name("r0"), held[0].seq)]), quota)?;
    assert!(store.held_bytes()? < quota.total_bytes);
    Ok(())
}

fn a_nearly_full_disk_refuses_deposits<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let quota = Quota {
        min_free_disk: u64::MAX,
        ..Quota::default()
    };
    let results = store.deposit_batch(&[msg("c1", "c2", "a"), msg("c3", "c2", "b")], quota)?;
    assert_eq!(
        results,
        [Err(StoreError::StoreFull), Err(StoreError::StoreFull)]
    );
    assert_eq!(store.usage(&name("c2"))?, (0, 0));
    // Names still bind: they are small, and a peer must be able to register.
    assert_eq!(bind_at(&store, "c1", 1, 1)?, Bind::New);
    Ok(())
}

fn a_key_holds_a_few_names<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let naming = Naming {
        names_per_key: 3,
        ..Naming::default()
    };
    let key = KeyId([1; 32]);
    for who in ["n1", "n2", "n3"] {
        assert_eq!(store.bind(&name(who), &key, 1, naming)?, Bind::New);
    }
    assert_eq!(
        store.bind(&name("n4"), &key, 1, naming),
        Err(StoreError::TooManyNames)
    );
    // The names it holds still register; another key is not limited by this one.
    assert_eq!(store.bind(&name("n2"), &key, 2, naming)?, Bind::Existing);
    assert_eq!(
        store.bind(&name("n4"), &KeyId([2; 32]), 2, naming)?,
        Bind::New
    );
    assert_eq!(
        store.name(&name("n4"))?.map(|r| r.key),
        Some(KeyId([2; 32]))
    );
    Ok(())
}

fn an_expired_name_may_be_taken_and_loses_its_mail<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let naming = Naming {
        expiry_ms: 1000,
        ..Naming::default()
    };
    let (old, new) = (KeyId([1; 32]), KeyId([2; 32]));
    store.bind(&name("c1"), &old, 5000, naming)?;
    store.deposit_batch(&[msg("c2", "c1", "for the old owner")], Quota::default())?;
    // Just before its expiry it is still taken; at it, it is free.
    assert_eq!(
        store.bind(&name("c1"), &new, 5999, naming),
        Err(StoreError::NameTaken)
    );
    assert_eq!(store.bind(&name("c1"), &new, 6000, naming)?, Bind::New);
    let record = store.name(&name("c1"))?.ok_or("not bound")?;
    assert_eq!(
        (record.key, record.last_seen_ms, record.active_ms),
        (new, None, 6000)
    );
    // The old owner's mail is not the new owner's, and the old key's name is gone.
    assert!(store.pending(&name("c1"), None, 10)?.is_empty());
    assert_eq!(store.usage(&name("c1"))?, (0, 0));
    assert_eq!(store.sender_usage(&name("c1"), &name("c2"))?, (0, 0));
    assert_eq!(store.held_bytes()?, 0);
    assert_eq!(
        store.bind(&name("c1"), &old, 6001, naming),
        Err(StoreError::NameTaken)
    );
    // It no longer counts against the old key's names either.
    let few = Naming {
        names_per_key: 1,
        ..naming
    };
    assert_eq!(store.bind(&name("c9"), &old, 6001, few)?, Bind::New);
    Ok(())
}

fn registrations_and_last_seen_keep_a_name<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let naming = Naming {
        expiry_ms: 1000,
        ..Naming::default()
    };
    let (owner, other) = (KeyId([1; 32]), KeyId([2; 32]));
    store.bind(&name("c1"), &owner, 0, naming)?;
    // A registration (short command or online) at 900 keeps it until 1900.
    store.bind(&name("c1"), &owner, 900, naming)?;
    assert_eq!(
        store.bind(&name("c1"), &other, 1500, naming),
        Err(StoreError::NameTaken)
    );
    // So does going offline at 1800: last seen online counts as active.
    store.update_names(&[], &[(name("c1"), 1800)], naming)?;
    assert_eq!(
        store.bind(&name("c1"), &other, 2700, naming),
        Err(StoreError::NameTaken)
    );
    // An older time never moves it back.
    store.bind(&name("c1"), &owner, 100, naming)?;
    assert_eq!(store.name(&name("c1"))?.map(|r| r.active_ms), Some(1800));
    assert_eq!(store.bind(&name("c1"), &other, 2800, naming)?, Bind::New);
    Ok(())
}

fn a_lookalike_of_another_keys_name_is_refused<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let naming = Naming {
        expiry_ms: 1000,
        ..Naming::default()
    };
    let (alice, mallory) = (KeyId([1; 32]), KeyId([2; 32]));
    store.bind(&name("alice"), &alice, 0, naming)?;
    for fake in ["a1ice", "al-ice", "a.lice", "al_ice"] {
        let refused = store.bind(&name(fake), &mallory, 10, naming);
        assert_eq!(refused, Err(StoreError::Lookalike), "{fake}");
        assert_eq!(store.name(&name(fake))?, None);
    }
    assert_eq!(
        store.bind(&name("alicia"), &mallory, 10, naming)?,
        Bind::New
    );
    // A key may hold lookalikes of its own names.
    assert_eq!(
        store.bind(&name("ali-ce"), &alice, 10, naming),
        Ok(Bind::New)
    );
    // Once every name of that skeleton has expired, it is free: the old names are released.
    assert_eq!(
        store.bind(&name("a1ice"), &mallory, 1010, naming)?,
        Bind::New
    );
    assert_eq!(store.name(&name("alice"))?, None);
    assert_eq!(store.name(&name("ali-ce"))?, None);
    Ok(())
}

/// A key's published encryption key is kept for all its names, replaced by the next, kept
/// across a reopen, and never stored for a binding that was refused.
fn a_published_key_is_kept_per_key_and_survives_reopening<S: Store>(
    open: Open<'_, S>,
) -> TestResult {
    let binding = |who: &str, key: u8, with: Option<PublishedKey>| Binding {
        name: name(who),
        key: KeyId([key; 32]),
        at_ms: 7,
        published: with,
    };
    {
        let store = open("store")?;
        let bindings = [
            binding("c1", 1, Some(published(10))),
            binding("c1", 2, Some(published(20))),
            binding("c2", 1, None),
        ];
        store.update_names(&bindings, &[], Naming::default())?;
        assert_eq!(published_of(&store, "c1")?, Some(published(10)));
        assert_eq!(published_of(&store, "c2")?, Some(published(10)));
        store.update_names(
            &[binding("c2", 1, Some(published(30)))],
            &[],
            Naming::default(),
        )?;
    }
    let store = open("store")?;
    assert_eq!(published_of(&store, "c1")?, Some(published(30)));
    assert_eq!(
        store
            .lookup(&name("c1"), &name("c2"))?
            .and_then(|(r, _)| r.published),
        Some(published(30))
    );
    Ok(())
}

/// A published encryption key made of `n` (not a real one: the store does not check it).
fn published(n: u8) -> PublishedKey {
    PublishedKey {
        identity: [n; 32],
        encryption: [n + 1; 32],
        signature: Signature([n + 2; 64]),
    }
}

/// The published key of the key that holds `who`, as a lookup gives it.
fn published_of<S: Store>(store: &S, who: &str) -> Result<Option<PublishedKey>, StoreError> {
    Ok(store.name(&name(who))?.and_then(|r| r.published))
}

/// A key whose last name expired and was taken by another key cannot be looked up any more:
/// its published key goes (the table does not grow with every key that ever registered). A
/// key that keeps another name keeps its published key.
fn a_key_left_without_names_loses_its_published_key<S: Store>(open: Open<'_, S>) -> TestResult {
    let naming = Naming {
        expiry_ms: 1000,
        ..Naming::default()
    };
    let binding = |who: &str, key: u8, at_ms: u64, with: Option<PublishedKey>| Binding {
        name: name(who),
        key: KeyId([key; 32]),
        at_ms,
        published: with,
    };
    let store = open("store")?;
    let first = [
        binding("c1", 1, 5000, Some(published(10))),
        binding("c2", 2, 5000, Some(published(20))),
        binding("c3", 2, 5000, None),
    ];
    store.update_names(&first, &[], naming)?;
    // Both names expire and are taken by key 3: key 1 has no name left, key 2 still has c3.
    let taken = [
        binding("c1", 3, 6000, Some(published(30))),
        binding("c2", 3, 6000, Some(published(30))),
    ];
    let results = store.update_names(&taken, &[], naming)?;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // A new name for each old key, without publishing again: what is still kept shows.
    let again = [binding("c8", 1, 6001, None), binding("c9", 2, 6001, None)];
    store.update_names(&again, &[], naming)?;
    assert_eq!(published_of(&store, "c8")?, None);
    assert_eq!(published_of(&store, "c9")?, Some(published(20)));
    assert_eq!(published_of(&store, "c1")?, Some(published(30)));
    Ok(())
}

fn names_are_updated_together<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let binding = |who: &str, key: u8| Binding {
        name: name(who),
        key: KeyId([key; 32]),
        at_ms: 7,
        published: None,
    };
    let bindings = [
        binding("c1", 1),
        binding("c1", 2),
        binding("c2", 2),
        binding("c1", 1),
    ];
    let seen = [(name("c2"), 9), (name("nobody"), 9)];
    let results = store.update_names(&bindings, &seen, Naming::default())?;
    assert_eq!(
        results,
        [
            Ok(Bind::New),
            Err(StoreError::NameTaken),
            Ok(Bind::New),
            Ok(Bind::Existing)
        ]
    );
    assert_eq!(
        store.name(&name("c2"))?.and_then(|r| r.last_seen_ms),
        Some(9)
    );
    assert_eq!(store.name(&name("nobody"))?, None);
    Ok(())
}
