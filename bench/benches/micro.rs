//! Micro-benchmarks of hot paths: framing and postcard encode/decode of a chat message, and the
//! mailbox store's operations on a temporary redb file (each write is a durable commit, so the
//! store figures are bounded by this disk's fsync; see BENCHMARKS.md).
//!
//! `cargo bench -p bench --bench micro` (add `-- --quick` for a short run).

use common::{
    framing,
    seal::{verify_receipt, Content, Recipient, Sealer},
    wire::{ChatMessage, Mail, MessageId, PeerFrame},
    Name,
};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use directory::store::{Quota, RedbStore, Removal, Store};
use std::time::Duration;

fn message(i: u64, to: &Name) -> ChatMessage {
    ChatMessage {
        id: MessageId(rand_id(i)),
        from: Name::new("alice").unwrap_or_else(|_| std::process::abort()),
        to: to.clone(),
        sent_at_ms: 1_732_222_222_000 + i,
        body: "x".repeat(100),
    }
}

fn rand_id(i: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_le_bytes());
    id[8..].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    id
}

fn bob() -> Name {
    Name::new("bob").unwrap_or_else(|_| std::process::abort())
}

fn codec(c: &mut Criterion) {
    let frame = PeerFrame::Chat(message(1, &bob()));
    let bytes = framing::encode(&frame).unwrap_or_default();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("framing_encode_chat_100B", |b| {
        b.iter(|| framing::encode(black_box(&frame)))
    });
    g.bench_function("framing_decode_chat_100B", |b| {
        b.iter(|| framing::decode::<PeerFrame>(black_box(&bytes[4..])))
    });
    g.bench_function("postcard_to_allocvec_chat_100B", |b| {
        b.iter(|| postcard::to_allocvec(black_box(&frame)))
    });
    g.bench_function("postcard_from_bytes_chat_100B", |b| {
        b.iter(|| postcard::from_bytes::<PeerFrame>(black_box(&bytes[4..])))
    });
    let ack = PeerFrame::Ack(MessageId([3; 16]));
    g.bench_function("framing_encode_ack", |b| {
        b.iter(|| framing::encode(black_box(&ack)))
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|_| std::process::abort());
    g.bench_function("read_frame_chat_100B_from_slice", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut r: &[u8] = black_box(&bytes);
                framing::read_frame::<PeerFrame, _>(&mut r).await
            })
        })
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let dir = tempfile::Builder::new()
        .prefix("bench-micro")
        .tempdir()
        .unwrap_or_else(|_| std::process::abort());
    let store =
        RedbStore::open(&dir.path().join("m.redb")).unwrap_or_else(|_| std::process::abort());
    let quota = Quota::unlimited();
    let to = bob();
    let mut next = 0u64;
    let mut batch = |n: usize| -> Vec<Mail> {
        (0..n)
            .map(|_| {
                next += 1;
                Mail::Chat(message(next, &to))
            })
            .collect()
    };
    // What the mailbox holds since issue 15: the same messages, sealed (a 100-byte body).
    let sealer = Sealer::from_seed([1; 32], [1; 32]).unwrap_or_else(|_| std::process::abort());
    let recipient = Recipient::check(&sealer.key_id(), &sealer.published())
        .unwrap_or_else(|_| std::process::abort());
    let mut next_letter = 1u64 << 40;
    let mut letters = |n: usize| -> Vec<Mail> {
        (0..n)
            .map(|_| {
                next_letter += 1;
                let content = Content::Chat(message(next_letter, &to));
                let letter = sealer
                    .seal_to(&recipient, content)
                    .unwrap_or_else(|_| std::process::abort());
                Mail::Letter(letter)
            })
            .collect()
    };
    let mut g = c.benchmark_group("store");
    // Durable commits cost milliseconds here: fewer samples, same statistics.
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for n in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("deposit_batch_{n}"), |b| {
            b.iter_batched(
                || batch(n),
                |msgs| store.deposit_batch(&msgs, quota),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("deposit_batch_letters_{n}"), |b| {
            b.iter_batched(
                || letters(n),
                |msgs| store.deposit_batch(&msgs, quota),
                BatchSize::PerIteration,
            )
        });
    }
    // Enough held for reads and removals below.
    let _ = store.deposit_batch(&batch(4096), quota);
    g.throughput(Throughput::Elements(64));
    g.bench_function("pending_64", |b| b.iter(|| store.pending(&to, None, 64)));
    g.throughput(Throughput::Elements(1));
    g.bench_function("name_lookup_read_txn", |b| b.iter(|| store.name(&to)));
    g.bench_function("queued_from_read_txn", |b| {
        b.iter(|| store.queued_from(&to, &to))
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("remove_batch_64", |b| {
        b.iter_batched(
            || {
                let held = store.pending(&to, None, 64).unwrap_or_default();
                if held.len() < 64 {
                    let _ = store.deposit_batch(&batch(4096), quota);
                }
                store
                    .pending(&to, None, 64)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| Removal {
                        recipient: to.clone(),
                        seq: s.seq,
                        proof: None,
                    })
                    .collect::<Vec<_>>()
            },
            |entries| store.remove_batch(&entries, quota),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// End-to-end sealing (issue 15): what a mailbox letter costs its sender (seal) and its
/// recipient (open, then prove the receipt), and a receipt's check at the sender.
fn seal(c: &mut Criterion) {
    let key = |n: u8| Sealer::from_seed([n; 32], [n; 32]).unwrap_or_else(|_| std::process::abort());
    let (alice, bob_keys) = (key(1), key(2));
    let content = Content::Chat(message(1, &bob()));
    let letter = alice
        .seal(&bob_keys.key_id(), &bob_keys.published(), content.clone())
        .unwrap_or_else(|_| std::process::abort());
    let proof = bob_keys.prove_receipt(&alice.key_id(), letter.id);
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal_chat_100B", |b| {
        b.iter(|| {
            alice.seal(
                &bob_keys.key_id(),
                &bob_keys.published(),
                black_box(content.clone()),
            )
        })
    });
    // As a conversation seals: the recipient's published key checked once, not per letter.
    let recipient = Recipient::check(&bob_keys.key_id(), &bob_keys.published())
        .unwrap_or_else(|_| std::process::abort());
    g.bench_function("seal_to_checked_chat_100B", |b| {
        b.iter(|| alice.seal_to(&recipient, black_box(content.clone())))
    });
    g.bench_function("open_chat_100B", |b| {
        b.iter(|| bob_keys.open(black_box(&letter)))
    });
    g.bench_function("prove_receipt", |b| {
        b.iter(|| bob_keys.prove_receipt(&alice.key_id(), black_box(letter.id)))
    });
    g.bench_function("verify_receipt", |b| {
        let signer = bob_keys.published().identity;
        b.iter(|| verify_receipt(&signer, &alice.key_id(), &letter.id, black_box(&proof)))
    });
    g.finish();
}

criterion_group!(benches, codec, store, seal);
criterion_main!(benches);
