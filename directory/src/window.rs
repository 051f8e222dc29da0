//! The mailbox delivery window as a state machine without I/O: which held mail to send to an
//! online recipient, when to read more from the store, when to remove what it acknowledged, and
//! when to tell it the mailbox is idle.
//!
//! The guarantees it keeps:
//!
//! * Mail goes out oldest first, at most [`DELIVERY_WINDOW`] unacknowledged at a time.
//! * The store is read again once half the window is free, not after every ack: one read per
//!   batch.
//! * An entry is removed only after the recipient acknowledged it; an ack for anything not
//!   in flight is a protocol violation.
//! * `MailboxIdle` is sent only when every removal has committed and nothing more is held, so
//!   a recipient that saw it will never be handed those messages again. It is sent once until
//!   more mail goes out; a wake after it reads the store again.
//! * When the recipient leaves, the removals of what it acknowledged still complete.
//!
//! Its shape is quinn-proto's `Connection`: the driver (`mailbox`) feeds it what happened with
//! [`Window::handle`] and carries out what [`Window::poll_action`] asks, until
//! [`Window::is_drained`]. It keeps no timers, so unlike quinn-proto's it needs no `now` and
//! has no `poll_timeout`.

use crate::store::Stored;
use common::{
    defaults::DELIVERY_WINDOW,
    seal::Signature,
    wire::{DirectoryEvent, MessageId},
    Name,
};
use std::collections::{BTreeSet, VecDeque};

/// What happened, for [`Window::handle`].
#[derive(Debug)]
pub enum Input {
    /// The store's answer to [`Action::Read`]: held entries after the cursor, oldest first.
    Read {
        /// The entries read.
        batch: Vec<Stored>,
        /// The read stopped at a limit (of entries or bytes), not at the end of what is held.
        more: bool,
    },
    /// The recipient acknowledged the mail with this id, with its signed proof of taking it
    /// when it gave one.
    Acked(MessageId, Option<Signature>),
    /// The removal of entry `seq` committed. `receipt_for` is the sender whose mailbox got a
    /// receipt for it, if any.
    Removed {
        /// The entry removed.
        seq: u64,
        /// The sender to wake, if a receipt was stored.
        receipt_for: Option<Name>,
    },
    /// Mail may have been deposited for the recipient.
    Wake,
    /// An event from elsewhere (an introduction) for the recipient's event stream.
    Event(DirectoryEvent),
    /// The recipient's acks ended: it is leaving.
    Leaving,
}

/// What to do, from [`Window::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read at most `limit` held entries with a seq above `after` (all if `None`), oldest
    /// first, and hand them back as [`Input::Read`]. The reader may stop sooner (at a number
    /// of bytes) and say so.
    Read {
        /// The highest seq already sent.
        after: Option<u64>,
        /// Most entries to read.
        limit: usize,
    },
    /// Write this event on the recipient's event stream.
    Write(DirectoryEvent),
    /// Remove held entry `seq` (with the receipt its `proof` earns), then report
    /// [`Input::Removed`].
    Remove {
        /// The entry.
        seq: u64,
        /// The recipient's proof that it took it, for its sender's receipt.
        proof: Option<Signature>,
    },
    /// Wake this sender's own delivery: a receipt waits for it.
    WakeSender(Name),
}

/// The recipient broke the protocol; its connection should be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// It acknowledged mail that is not in flight: never sent, or acknowledged already.
    #[error("ack for message {0} that was not sent")]
    UnknownAck(MessageId),
}

/// The delivery state of one online recipient's mailbox.
#[derive(Debug)]
pub struct Window {
    /// Sent and not yet acknowledged, oldest first: (id, seq).
    in_flight: VecDeque<(MessageId, u64)>,
    /// Acknowledged entries whose removal has not committed yet.
    removing: BTreeSet<u64>,
    /// The highest seq sent; the next read starts after it.
    cursor: Option<u64>,
    /// The store may hold entries after `cursor`: at start, after a wake, after a full batch.
    maybe_more: bool,
    /// A read was asked for and not answered yet.
    reading: bool,
    /// A wake came while a read was out: the read may have missed what woke us.
    woken_while_reading: bool,
    /// `MailboxIdle` went out and no mail since.
    idle_sent: bool,
    /// The recipient is leaving: nothing more is sent.
    leaving: bool,
    /// Actions decided and not yet polled.
    actions: VecDeque<Action>,
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

impl Window {
    /// A window for a recipient that just came online: the store may hold mail for it.
    pub fn new() -> Self {
        Self {
            in_flight: VecDeque::new(),
            removing: BTreeSet::new(),
            cursor: None,
            maybe_more: true,
            reading: false,
            woken_while_reading: false,
            idle_sent: false,
            leaving: false,
            actions: VecDeque::new(),
        }
    }

    /// Takes in what happened. Fails only when the recipient broke the protocol.
    pub fn handle(&mut self, input: Input) -> Result<(), Violation> {
        match input {
            Input::Read { batch, more } => self.read(batch, more),
            Input::Acked(id, proof) => {
                let pos = self.in_flight.iter().position(|(m, _)| *m == id);
                let Some((_, seq)) = pos.and_then(|pos| self.in_flight.remove(pos)) else {
                    return Err(Violation::UnknownAck(id));
                };
                self.removing.insert(seq);
                self.actions.push_back(Action::Remove { seq, proof });
            }
            Input::Removed { seq, receipt_for } => {
                self.removing.remove(&seq);
                if let Some(sender) = receipt_for {
                    self.actions.push_back(Action::WakeSender(sender));
                }
            }
            Input::Wake if self.reading => self.woken_while_reading = true,
            Input::Wake => self.maybe_more = true,
            Input::Event(_) if self.leaving => {}
            Input::Event(event) => self.actions.push_back(Action::Write(event)),
            Input::Leaving => {
                self.leaving = true;
                // Nothing written now could be acknowledged.
                self.actions.retain(|a| !matches!(a, Action::Write(_)));
            }
        }
        Ok(())
    }

    fn read(&mut self, batch: Vec<Stored>, more: bool) {
        self.reading = false;
        self.maybe_more = more || std::mem::take(&mut self.woken_while_reading);
        if self.leaving {
            return;
        }
        for stored in batch {
            self.in_flight.push_back((stored.mail.id(), stored.seq));
            self.cursor = Some(stored.seq);
            self.idle_sent = false;
            self.actions
                .push_back(Action::Write(stored.mail.into_event()));
        }
    }

    /// The next thing to do, in order; `None` until more input comes.
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if self.leaving || self.reading {
            return None;
        }
        // Refill once half the window is free, not after every ack: one read per batch.
        if self.maybe_more && self.in_flight.len() <= DELIVERY_WINDOW / 2 {
            let limit = DELIVERY_WINDOW - self.in_flight.len();
            self.reading = true;
            return Some(Action::Read {
                after: self.cursor,
                limit,
            });
        }
        if !self.maybe_more
            && self.in_flight.is_empty()
            && self.removing.is_empty()
            && !self.idle_sent
        {
            self.idle_sent = true;
            return Some(Action::Write(DirectoryEvent::MailboxIdle));
        }
        None
    }

    /// True once the recipient has left and everything it acknowledged is removed: the
    /// window has nothing more to do.
    pub fn is_drained(&self) -> bool {
        self.leaving && self.removing.is_empty() && self.actions.is_empty()
    }

    /// True once the recipient is leaving: only removals are still awaited.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::{body, msg, name};
    use common::wire::Mail;
    use std::collections::BTreeMap;

    const W: usize = DELIVERY_WINDOW;

    /// A window driven against an in-memory mailbox, in the manner of quinn-proto's test
    /// `Pair`: reads are answered at once (unless held), writes are recorded, removals wait
    /// until the test commits them.
    struct Sim {
        window: Window,
        /// The recipient's held mail, by seq.
        held: BTreeMap<u64, Mail>,
        next_seq: u64,
        /// Every event written, in order.
        written: Vec<DirectoryEvent>,
        /// Reads asked for so far.
        reads: usize,
        /// A read asked for and not answered yet (only while `hold_reads`).
        held_read: Option<(Option<u64>, usize)>,
        hold_reads: bool,
        /// Removals asked for and not committed yet.
        removing: Vec<u64>,
        /// Senders woken.
        woken: Vec<Name>,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                window: Window::new(),
                held: BTreeMap::new(),
                next_seq: 1,
                written: Vec::new(),
                reads: 0,
                held_read: None,
                hold_reads: false,
                removing: Vec::new(),
                woken: Vec::new(),
            }
        }

        /// Stores `n` chat messages for the recipient, bodies counting on from what is held.
        fn deposit(&mut self, n: usize) {
            for _ in 0..n {
                let body = self.next_seq.to_string();
                self.held.insert(self.next_seq, msg("s", "r", &body));
                self.next_seq += 1;
            }
        }

        /// Carries out every action the window asks for.
        fn run(&mut self) {
            while let Some(action) = self.window.poll_action() {
                match action {
                    Action::Read { after, limit } => {
                        self.reads += 1;
                        if self.hold_reads {
                            self.held_read = Some((after, limit));
                        } else {
                            self.answer_read(after, limit);
                        }
                    }
                    Action::Write(event) => self.written.push(event),
                    Action::Remove { seq, .. } => self.removing.push(seq),
                    Action::WakeSender(sender) => self.woken.push(sender),
                }
            }
        }

        fn answer_read(&mut self, after: Option<u64>, limit: usize) {
            let from = after.map_or(0, |a| a + 1);
            let batch: Vec<Stored> = self
                .held
                .range(from..)
                .take(limit)
                .map(|(seq, mail)| Stored {
                    seq: *seq,
                    mail: mail.clone(),
                })
                .collect();
            let more = batch.len() >= limit;
            self.input(Input::Read { batch, more });
        }

        fn input(&mut self, input: Input) {
            assert_eq!(self.window.handle(input), Ok(()));
            self.run();
        }

        /// The bodies of the messages written, in order.
        fn delivered(&self) -> Vec<String> {
            self.written
                .iter()
                .filter_map(|e| match e {
                    DirectoryEvent::Deliver(m) => Some(m.body.clone()),
                    DirectoryEvent::DeliverLetter(l) => {
                        Some(String::from_utf8_lossy(&l.sealed).into_owned())
                    }
                    _ => None,
                })
                .collect()
        }

        fn idles(&self) -> usize {
            let idle = DirectoryEvent::MailboxIdle;
            self.written.iter().filter(|e| **e == idle).count()
        }

        /// The id of the held message with this body.
        fn id_of(&self, body_text: &str) -> MessageId {
            let found = self.held.values().find(|m| body(m) == body_text);
            found.map_or(MessageId([0; 16]), Mail::id)
        }

        fn ack(&mut self, body_text: &str) {
            let id = self.id_of(body_text);
            self.input(Input::Acked(id, None));
        }

        /// Acknowledges everything delivered and not acknowledged yet.
        fn ack_all(&mut self, acked: &mut usize) {
            let delivered = self.delivered();
            for b in &delivered[*acked..] {
                self.ack(b);
            }
            *acked = delivered.len();
        }

        /// Commits the oldest removal asked for; `receipt_for` as the store would report.
        fn commit(&mut self, receipt_for: Option<Name>) {
            let seq = self.removing.remove(0);
            self.held.remove(&seq);
            self.input(Input::Removed { seq, receipt_for });
        }

        fn commit_all(&mut self) {
            while !self.removing.is_empty() {
                self.commit(None);
            }
        }

        fn unacknowledged(&self, acked: usize) -> usize {
            self.delivered().len() - acked
        }
    }

    fn bodies(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
        range.map(|i| i.to_string()).collect()
    }

    #[test]
    fn mail_goes_out_oldest_first_across_refills() {
        let mut sim = Sim::new();
        sim.deposit(3 * W + 7);
        sim.run();
        let mut acked = 0;
        while sim.delivered().len() < 3 * W + 7 {
            sim.ack_all(&mut acked);
            sim.commit_all();
        }
        assert_eq!(sim.delivered(), bodies(1..=3 * W + 7));
    }

    #[test]
    fn at_most_a_window_is_unacknowledged() {
        let mut sim = Sim::new();
        sim.deposit(3 * W);
        sim.run();
        assert_eq!(sim.unacknowledged(0), W);
        // More mail and wakes do not widen the window.
        sim.deposit(10);
        sim.input(Input::Wake);
        assert_eq!(sim.unacknowledged(0), W);
        // Acks one at a time never let more than a window out.
        let mut acked = 0;
        while acked < sim.delivered().len() {
            let next = sim.delivered()[acked].clone();
            sim.ack(&next);
            acked += 1;
            assert!(sim.unacknowledged(acked) <= W);
        }
        assert_eq!(acked, 3 * W + 10);
    }

    #[test]
    fn the_store_is_read_again_once_half_the_window_is_free() {
        let mut sim = Sim::new();
        sim.deposit(2 * W);
        sim.run();
        assert_eq!((sim.reads, sim.delivered().len()), (1, W));
        for b in bodies(1..=W / 2 - 1) {
            sim.ack(&b);
        }
        assert_eq!((sim.reads, sim.delivered().len()), (1, W));
        sim.ack(&(W / 2).to_string());
        // One read fills the free half in one batch.
        assert_eq!(sim.reads, 2);
        assert_eq!(sim.delivered(), bodies(1..=W + W / 2));
    }

    #[test]
    fn an_entry_is_removed_only_after_its_ack() {
        let mut sim = Sim::new();
        sim.deposit(3);
        sim.run();
        assert!(sim.removing.is_empty());
        sim.ack("2");
        assert_eq!(sim.removing, [2]);
        sim.ack("1");
        assert_eq!(sim.removing, [2, 1]);
    }

    #[test]
    fn an_ack_for_mail_not_in_flight_is_a_violation() {
        let mut sim = Sim::new();
        sim.deposit(1);
        sim.run();
        let never_sent = MessageId([7; 16]);
        let refused = sim.window.handle(Input::Acked(never_sent, None));
        assert_eq!(refused, Err(Violation::UnknownAck(never_sent)));
        let id = sim.id_of("1");
        assert_eq!(sim.window.handle(Input::Acked(id, None)), Ok(()));
        // Twice is once too many.
        assert_eq!(
            sim.window.handle(Input::Acked(id, None)),
            Err(Violation::UnknownAck(id))
        );
    }

    #[test]
    fn idle_only_once_every_removal_committed_and_nothing_is_held() {
        let mut sim = Sim::new();
        sim.deposit(2);
        sim.run();
        assert_eq!(sim.idles(), 0);
        sim.ack("1");
        sim.ack("2");
        assert_eq!(sim.idles(), 0);
        sim.commit(None);
        assert_eq!(sim.idles(), 0);
        sim.commit(None);
        assert_eq!(sim.idles(), 1);
        assert_eq!(sim.written.last(), Some(&DirectoryEvent::MailboxIdle));
        // An empty mailbox is idle at once.
        let mut empty = Sim::new();
        empty.run();
        assert_eq!(empty.written, [DirectoryEvent::MailboxIdle]);
    }

    #[test]
    fn a_wake_after_idle_reads_the_store_again() {
        let mut sim = Sim::new();
        sim.run();
        assert_eq!((sim.reads, sim.idles()), (1, 1));
        // A wake with nothing new reads, and says idle no second time.
        sim.input(Input::Wake);
        assert_eq!((sim.reads, sim.idles()), (2, 1));
        sim.deposit(1);
        sim.input(Input::Wake);
        assert_eq!(sim.reads, 3);
        assert_eq!(sim.delivered(), ["1"]);
        sim.ack("1");
        sim.commit(None);
        assert_eq!(sim.idles(), 2);
    }

    /// A read that stopped at its byte limit, short of its entries, is followed by another.
    #[test]
    fn a_read_cut_short_by_bytes_reads_again() {
        let mut sim = Sim::new();
        sim.deposit(3);
        sim.hold_reads = true;
        sim.run();
        assert!(sim.held_read.take().is_some());
        let first = sim.held.iter().next().map(|(seq, mail)| Stored {
            seq: *seq,
            mail: mail.clone(),
        });
        sim.hold_reads = false;
        sim.input(Input::Read {
            batch: first.into_iter().collect(),
            more: true,
        });
        assert_eq!(sim.reads, 2);
        assert_eq!(sim.delivered(), ["1", "2", "3"]);
    }

    #[test]
    fn a_wake_during_a_read_is_not_lost() {
        let mut sim = Sim::new();
        sim.hold_reads = true;
        sim.run();
        assert!(sim.held_read.take().is_some());
        // Mail arrives after the read looked, and its wake before the read's answer.
        sim.deposit(1);
        sim.input(Input::Wake);
        sim.hold_reads = false;
        sim.input(Input::Read {
            batch: Vec::new(),
            more: false,
        });
        assert_eq!(sim.reads, 2);
        assert_eq!(sim.delivered(), ["1"]);
        assert_eq!(sim.idles(), 0);
    }

    #[test]
    fn events_are_forwarded_even_with_a_full_window() {
        let mut sim = Sim::new();
        sim.deposit(W + 1);
        sim.run();
        let introduction = DirectoryEvent::Introduction {
            name: name("a"),
            key: common::KeyId([1; 32]),
            addrs: Vec::new(),
        };
        sim.input(Input::Event(introduction.clone()));
        assert_eq!(sim.written.last(), Some(&introduction));
    }

    #[test]
    fn a_committed_removal_wakes_the_sender_of_its_receipt() {
        let mut sim = Sim::new();
        sim.deposit(1);
        sim.run();
        sim.ack("1");
        sim.commit(Some(name("s")));
        assert_eq!(sim.woken, [name("s")]);
    }

    #[test]
    fn a_leaving_recipient_still_gets_its_acked_mail_removed() {
        let mut sim = Sim::new();
        sim.deposit(3);
        sim.run();
        sim.ack("1");
        sim.ack("2");
        sim.input(Input::Leaving);
        assert!(!sim.window.is_drained());
        // Nothing more goes out to it.
        let written = sim.written.len();
        sim.deposit(1);
        sim.input(Input::Wake);
        sim.input(Input::Event(DirectoryEvent::MailboxIdle));
        assert_eq!(sim.written.len(), written);
        // The removals it asked for complete; the unacknowledged one stays held.
        sim.commit(Some(name("s")));
        assert!(!sim.window.is_drained());
        sim.commit(None);
        assert!(sim.window.is_drained());
        assert_eq!(sim.woken, [name("s")]);
        assert!(sim.held.contains_key(&3));
    }
}
