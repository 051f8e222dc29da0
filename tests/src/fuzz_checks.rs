//! What each fuzz target checks, shared by the `cargo fuzz` targets in `fuzz/` (nightly) and
//! by `tests/tests/fuzz_corpus.rs`, which replays the kept corpus on stable, so CI runs the
//! same checks without nightly.
//!
//! Every check takes arbitrary bytes, decodes them the way the code under test does (exactly
//! one value per frame for what comes off a stream, `postcard::from_bytes` for what a store
//! reads back from redb), and panics when a property breaks:
//!
//! - decoding never panics;
//! - a decoded value encodes again, no longer than the bytes it came from, and that encoding
//!   decodes to an equal value (so what a directory or a peer forwards or stores can be read
//!   back, and fits wherever the original fitted);
//! - a decoded [`Name`] keeps the name rules, and [`Name::new`] accepts exactly the strings
//!   that keep them;
//! - [`FrameReader`] and [`framing::read_frame`] read the same frames out of the same stream,
//!   whatever the sizes of the reads it arrives in.
//!
//! [`TARGETS`] lists them by the name of their fuzz target and corpus folder.

use common::{
    defaults::MAX_FRAME_LEN,
    framing::{self, FrameReader},
    name::MAX_NAME_LEN,
    seal::Sealer,
    wire::{
        ChatMessage, DirectoryEvent, DirectoryRequest, DirectoryResponse, EventAck, FilePart,
        Letter, Mail, PeerFrame,
    },
    Name,
};
use peer_lib::{
    control::protocol::{ControlRequest, ControlResponse},
    history::HistoryEntry,
};
use serde::{de::DeserializeOwned, Serialize};
use std::{
    fmt::Debug,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, ReadBuf};

/// A check over arbitrary bytes; it panics when a property breaks.
pub type Check = fn(&[u8]);

/// Every fuzz target: its name (of `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME/`) and
/// its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("frames", frames),
    ("directory_request", directory_request),
    ("directory_response", directory_response),
    ("directory_event", directory_event),
    ("event_ack", event_ack),
    ("peer_frame", peer_frame),
    ("control_request", control_request),
    ("control_response", control_response),
    ("stored_mail", stored_mail),
    ("history_entry", history_entry),
    ("name", name),
];

/// A stream of frames of one message type, read with [`FrameReader`] in reads of a size the
/// input chooses and with [`framing::read_frame`]: both must give the same frames and end the
/// same way. The first byte picks the type, the second the size of each read (0: all at once).
pub fn frames(data: &[u8]) {
    let [kind, chunk, stream @ ..] = data else {
        return;
    };
    let chunk = match *chunk {
        0 => usize::MAX,
        n => usize::from(n),
    };
    match kind % 7 {
        0 => frames_of::<DirectoryRequest>(stream, chunk),
        1 => frames_of::<DirectoryResponse>(stream, chunk),
        2 => frames_of::<DirectoryEvent>(stream, chunk),
        3 => frames_of::<EventAck>(stream, chunk),
        4 => frames_of::<PeerFrame>(stream, chunk),
        5 => frames_of::<ControlRequest>(stream, chunk),
        _ => frames_of::<ControlResponse>(stream, chunk),
    }
}

/// A request as the directory reads it off a stream. What it stores of a deposit, and the
/// event it makes of that, can be read back.
pub fn directory_request(data: &[u8]) {
    match exact::<DirectoryRequest>(data) {
        Some(DirectoryRequest::Deposit { message }) => mail(Mail::Chat(message)),
        Some(DirectoryRequest::DepositFilePart { part }) => mail(Mail::FilePart(part)),
        Some(DirectoryRequest::DepositLetter { letter }) => {
            let _ = (Letter::max_sealed_len(letter.kind), letter.receipt());
            mail(Mail::Letter(letter))
        }
        _ => {}
    }
}

/// The key hostile letters are opened with in these checks.
fn opener() -> &'static Sealer {
    static OPENER: std::sync::OnceLock<Sealer> = std::sync::OnceLock::new();
    OPENER.get_or_init(|| Sealer::from_seed([1; 32], [2; 32]).expect("a fixed key"))
}

/// A response as a peer reads it off a stream.
pub fn directory_response(data: &[u8]) {
    exact::<DirectoryResponse>(data);
}

/// An event as a peer reads it off its event stream.
pub fn directory_event(data: &[u8]) {
    match exact::<DirectoryEvent>(data) {
        Some(DirectoryEvent::DeliverFilePart(part)) => file_part(&part),
        // Refused, never a panic: nothing here was sealed to the opener.
        Some(DirectoryEvent::DeliverLetter(letter)) => {
            assert!(opener().open(&letter).is_err(), "a forged letter opened");
        }
        _ => {}
    }
}

/// An ack as the directory reads it off an event stream.
pub fn event_ack(data: &[u8]) {
    exact::<EventAck>(data);
}

/// A frame as a peer reads it off a direct stream.
pub fn peer_frame(data: &[u8]) {
    exact::<PeerFrame>(data);
}

/// A request as the running peer reads it off its control socket.
pub fn control_request(data: &[u8]) {
    exact::<ControlRequest>(data);
}

/// An answer as a short command reads it off the control socket.
pub fn control_response(data: &[u8]) {
    exact::<ControlResponse>(data);
}

/// A mailbox entry as the directory's store reads it back from redb, and an entry of the
/// version 1 table, a bare [`ChatMessage`], as the upgrade reads it.
pub fn stored_mail(data: &[u8]) {
    if let Some(stored) = stored::<Mail>(data) {
        mail(stored);
    }
    if let Some(old) = stored::<ChatMessage>(data) {
        mail(Mail::Chat(old));
    }
}

/// A history entry as the peer's history reads it back from redb.
pub fn history_entry(data: &[u8]) {
    if let Some(entry) = stored::<HistoryEntry>(data) {
        let _ = (entry.state.as_str(), entry.state.is_ours());
    }
}

/// [`Name::new`] accepts exactly the strings that keep the name rules and keeps them as given;
/// a name decoded from postcard keeps the rules.
pub fn name(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let made = Name::new(s);
        assert_eq!(
            made.is_ok(),
            keeps_name_rules(s),
            "Name::new({s:?}) = {made:?}"
        );
        if let Ok(name) = made {
            assert_eq!(name.as_str(), s);
            assert_eq!(name.to_string(), s);
            assert_eq!(s.parse::<Name>(), Ok(name));
        }
    }
    if let Some(name) = stored::<Name>(data) {
        assert!(keeps_name_rules(name.as_str()), "decoded {name:?}");
    }
}

/// The rules of [`Name::new`], written out again: 1 to [`MAX_NAME_LEN`] bytes of
/// `a-z 0-9 . _ -`, the first a letter or a digit. Every name ever bound keeps them, so they
/// may only ever be relaxed, never tightened (stricter rules for new names belong elsewhere).
fn keeps_name_rules(s: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes().all(allowed)
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// What the directory does with mail: stores it, reads it back, counts it, and sends it on as
/// an event.
fn mail(mail: Mail) {
    let _ = (mail.id(), mail.from(), mail.to(), mail.size());
    if let Mail::FilePart(part) = &mail {
        file_part(part);
    }
    let bytes = postcard::to_allocvec(&mail).expect("mail encodes");
    let back: Mail = postcard::from_bytes(&bytes).expect("stored mail decodes");
    assert_eq!(back, mail);
    round_trip(&mail.into_event(), bytes.len());
}

/// What both sides ask of a file part.
fn file_part(part: &FilePart) {
    let _ = (part.fits_offer(), part.is_last());
}

/// One value from exactly `data`, as from a frame's body; it round-trips.
fn exact<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value = framing::decode::<T>(data).ok()?;
    round_trip(&value, data.len());
    Some(value)
}

/// One value from the start of `data`, as a store reads a record (`postcard::from_bytes`
/// ignores what follows the value); it round-trips.
fn stored<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let (value, rest) = postcard::take_from_bytes::<T>(data).ok()?;
    round_trip(&value, data.len() - rest.len());
    Some(value)
}

/// `value`, decoded from `len` bytes, encodes in at most `len` bytes (postcard's encoding is
/// the shortest), and that decodes to an equal value.
fn round_trip<T>(value: &T, len: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = postcard::to_allocvec(value).expect("a decoded value encodes");
    assert!(
        bytes.len() <= len,
        "{value:?} took {len} bytes and encodes in {}",
        bytes.len()
    );
    let back = framing::decode::<T>(&bytes).expect("an encoded value decodes");
    assert_eq!(&back, value);
    if bytes.len() <= MAX_FRAME_LEN {
        framing::encode(value).expect("a value that fitted fits in a frame");
    }
}

/// How the frames of a stream were read: the frames, then the end (`None`) or the error.
type Reading<T> = (Vec<T>, Option<String>);

fn frames_of<T>(stream: &[u8], chunk: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    // Reads from a slice never wait, so the deadline never passes; it is only required.
    const WITHIN: Duration = Duration::from_secs(60);
    let (by_reader, by_read_frame) = runtime().block_on(async {
        let mut reader = FrameReader::new(Chunks {
            rest: stream,
            chunk,
        });
        let mut by_reader: Reading<T> = (Vec::new(), None);
        loop {
            match reader.next::<T>(WITHIN).await {
                Ok(Some(frame)) => by_reader.0.push(frame),
                Ok(None) => break,
                Err(e) => {
                    by_reader.1 = Some(e.to_string());
                    break;
                }
            }
        }
        let mut rest = stream;
        let mut by_read_frame: Reading<T> = (Vec::new(), None);
        loop {
            match framing::read_frame::<T, _>(&mut rest).await {
                Ok(Some(frame)) => by_read_frame.0.push(frame),
                Ok(None) => break,
                Err(e) => {
                    by_read_frame.1 = Some(e.to_string());
                    break;
                }
            }
        }
        (by_reader, by_read_frame)
    });
    assert_eq!(by_reader, by_read_frame, "reads of {chunk} bytes");
    for frame in &by_reader.0 {
        round_trip(frame, MAX_FRAME_LEN);
    }
}

/// One runtime for every input: [`FrameReader::next`] needs a timer.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

/// A stream that gives at most `chunk` bytes per read, as a network splits what it carries.
struct Chunks<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.rest.len()).min(buf.remaining());
        let (now, later) = self.rest.split_at(n);
        buf.put_slice(now);
        self.rest = later;
        Poll::Ready(Ok(()))
    }
}
