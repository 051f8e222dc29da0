//! The behaviour every [`Store`] backend must show, written against the trait: a backend passes
//! when [`all`] returns `Ok` for stores it opens. Also the helpers that tests of the store's
//! users share.

use super::{Bind, NameRecord, Quota, Store, StoreError, Stored};
use common::{
    wire::{ChatMessage, Mail, MessageId},
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
    let cases: [(&str, Case<S>); 8] = [
        ("bind_new_existing_taken", bind_new_existing_taken),
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

/// [`chat`] as mail.
pub(crate) fn msg(from: &str, to: &str, body: &str) -> Mail {
    Mail::Chat(chat(from, to, body))
}

/// The body of a chat message, or a placeholder for other mail.
pub(crate) fn body(mail: &Mail) -> &str {
    match mail {
        Mail::Chat(m) => &m.body,
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
    assert_eq!(store.bind(&name("c1"), &a)?, Bind::New);
    assert_eq!(store.bind(&name("c1"), &a)?, Bind::Existing);
    assert_eq!(store.bind(&name("c1"), &b), Err(StoreError::NameTaken));
    assert_eq!(store.bind(&name("c2"), &b)?, Bind::New);
    assert_eq!(store.name(&name("nobody"))?, None);
    store.set_last_seen(&name("c1"), 42)?;
    store.set_last_seen(&name("nobody"), 42)?;
    let record = NameRecord {
        key: a,
        last_seen_ms: Some(42),
    };
    assert_eq!(store.name(&name("c1"))?, Some(record));
    assert_eq!(store.name(&name("nobody"))?, None);
    Ok(())
}

fn reopen_keeps_bindings_and_mailbox_order<S: Store>(open: Open<'_, S>) -> TestResult {
    let first_seqs: Vec<u64> = {
        let store = open("store")?;
        store.bind(&name("c1"), &KeyId([1; 32]))?;
        let batch = [msg("c1", "c2", "a"), msg("c1", "c2", "b")];
        store.deposit_batch(&batch, Quota::default())?;
        store.deposit_batch(&[msg("c3", "c2", "c")], Quota::default())?;
        let pending = store.pending(&name("c2"), None, 10)?;
        pending.iter().map(|s| s.seq).collect()
    };
    let store = open("store")?;
    assert_eq!(store.bind(&name("c1"), &KeyId([1; 32]))?, Bind::Existing);
    assert_eq!(store.usage(&name("c2"))?, (3, 3));
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
    assert_eq!(store.usage(&name("c2"))?, (1, 5));
    assert_eq!(store.pending(&name("c2"), None, 10)?.len(), 1);
    // The same id to another recipient is another message.
    let other = ChatMessage {
        to: name("c3"),
        ..m
    };
    store.deposit_batch(&[Mail::Chat(other)], Quota::default())?;
    assert_eq!(store.usage(&name("c3"))?, (1, 5));
    Ok(())
}

fn quota_by_count_and_bytes<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let by_count = Quota {
        max_messages: 2,
        max_bytes: 1000,
    };
    let batch = [
        msg("c1", "c2", "1"),
        msg("c1", "c2", "2"),
        msg("c1", "c2", "3"),
        msg("c1", "c3", "4"),
    ];
    let results = store.deposit_batch(&batch, by_count)?;
    assert_eq!(
        results,
        [Ok(()), Ok(()), Err(StoreError::MailboxFull), Ok(())]
    );
    assert_eq!(bodies(&store.pending(&name("c2"), None, 10)?), ["1", "2"]);

    let by_bytes = Quota {
        max_messages: 100,
        max_bytes: 10,
    };
    let batch = [
        msg("c1", "c4", "12345678"),
        msg("c1", "c4", "abc"),
        msg("c1", "c4", "ab"),
    ];
    let results = store.deposit_batch(&batch, by_bytes)?;
    assert_eq!(results, [Ok(()), Err(StoreError::MailboxFull), Ok(())]);
    assert_eq!(store.usage(&name("c4"))?, (2, 10));
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
        &[(name("c2"), seqs[1]), (name("c2"), 999), (name("c9"), 1)],
        Quota::default(),
    )?;
    assert_eq!(woken, [Some(name("c1")), None, None]);
    assert_eq!(bodies(&store.pending(&name("c2"), None, 10)?), ["a", "ccc"]);
    assert_eq!(store.usage(&name("c2"))?, (2, 4));
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
    store.remove_batch(&all, Quota::default())?;
    assert!(store.pending(&name("c2"), None, 10)?.is_empty());
    assert_eq!(store.usage(&name("c2"))?, (0, 0));
    // c1 holds one receipt per batch that removed its messages.
    assert_eq!(store.pending(&name("c1"), None, 10)?.len(), 2);
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
    store.bind(&name("c2"), &KeyId([5; 32]))?;
    let (record, queued) = store
        .lookup(&name("c2"), &name("c1"))?
        .ok_or("no binding")?;
    assert_eq!((record.key, queued), (KeyId([5; 32]), 2));
    assert_eq!(store.lookup(&name("nobody"), &name("c1"))?, None);
    let first = store.pending(&name("c2"), None, 1)?;
    store.remove_batch(&[(name("c2"), first[0].seq)], Quota::default())?;
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
            Mail::Receipt(r) => Some((r.from.to_string(), r.delivered.clone())),
            _ => None,
        })
        .collect()
}

fn part(from: &str, to: &str, offset: u64, data: &[u8], size: u64) -> (Mail, MessageId) {
    let offer = common::wire::FileOffer {
        id: MessageId([9; 16]),
        from: name(from),
        to: name(to),
        name: "f".into(),
        size,
        hash: [0; 32],
        sent_at_ms: 1,
    };
    let part = common::wire::FilePart {
        id: MessageId::random(),
        offer,
        offset,
        data: data.to_vec(),
    };
    (Mail::FilePart(part), MessageId([9; 16]))
}

fn removing_delivered_mail_leaves_receipts_for_its_senders<S: Store>(
    open: Open<'_, S>,
) -> TestResult {
    let store = open("store")?;
    let (a, b, c) = (
        chat("c1", "c2", "a"),
        chat("c3", "c2", "b"),
        chat("c1", "c2", "c"),
    );
    let (first, file_id) = part("c1", "c2", 0, b"12", 4);
    let (last, _) = part("c1", "c2", 2, b"34", 4);
    let mail = [
        Mail::Chat(a.clone()),
        Mail::Chat(b.clone()),
        Mail::Chat(c.clone()),
        first,
        last,
    ];
    store.deposit_batch(&mail, Quota::default())?;
    assert_eq!(store.usage(&name("c2"))?, (5, 7));
    let all: Vec<(Name, u64)> = store
        .pending(&name("c2"), None, 10)?
        .iter()
        .map(|s| (name("c2"), s.seq))
        .collect();
    let woken = store.remove_batch(&all, Quota::default())?;
    let (c1, c3) = (Some(name("c1")), Some(name("c3")));
    assert_eq!(woken, [c1.clone(), c3, c1.clone(), None, c1]);
    // One receipt per sender; only a file's last part earns one, under the file's id.
    let held = store.pending(&name("c1"), None, 10)?;
    assert_eq!(receipts(&held), [("c2".into(), vec![a.id, c.id, file_id])]);
    assert_eq!(
        receipts(&store.pending(&name("c3"), None, 10)?),
        [("c2".into(), vec![b.id])]
    );
    // Taking a receipt earns none in turn.
    let woken = store.remove_batch(&[(name("c1"), held[0].seq)], Quota::default())?;
    assert_eq!(woken, [None]);
    assert!(store.pending(&name("c2"), None, 10)?.is_empty());
    Ok(())
}

fn a_receipt_that_does_not_fit_is_dropped<S: Store>(open: Open<'_, S>) -> TestResult {
    let store = open("store")?;
    let quota = Quota {
        max_messages: 1,
        max_bytes: 1000,
    };
    store.deposit_batch(&[msg("c2", "c1", "fills c1's mailbox")], quota)?;
    store.deposit_batch(&[msg("c1", "c2", "hi")], quota)?;
    let held = store.pending(&name("c2"), None, 10)?;
    let woken = store.remove_batch(&[(name("c2"), held[0].seq)], quota)?;
    assert_eq!(woken, [None]);
    assert!(store.pending(&name("c2"), None, 10)?.is_empty());
    assert_eq!(store.usage(&name("c1"))?, (1, 18));
    Ok(())
}
