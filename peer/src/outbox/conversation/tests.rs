//! Each delivery rule of the outbox as a test of the pure conversation, in simulated time:
//! the clock is an `Instant` the test moves, and every answer is the test's to give.

use super::*;
use common::{KeyId, Name};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;

const TIMEOUT: Duration = Duration::from_secs(3);

fn name(s: &str) -> Name {
    Name::new(s).expect("test name")
}

fn message(n: u32) -> Post {
    let message = ChatMessage {
        id: id(n),
        from: name("c1"),
        to: name("c2"),
        sent_at_ms: 0,
        body: format!("m{n}"),
    };
    Post {
        message,
        room: None,
    }
}

fn id(n: u32) -> MessageId {
    let mut id = [0; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    MessageId(id)
}

fn number(id: MessageId) -> u32 {
    u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]])
}

fn info(online: bool, queued_from_you: u32) -> PeerInfo {
    PeerInfo {
        name: name("c2"),
        key: KeyId([7; 32]),
        online,
        last_seen_ms: None,
        observed_addr: Some("198.18.0.2:4000".parse().expect("addr")),
        listen_addrs: Vec::new(),
        queued_from_you,
        published: None,
    }
}

/// A conversation and a clock.
struct Sim {
    c: Conversation,
    now: Instant,
}

impl Sim {
    fn new() -> Self {
        Self {
            c: Conversation::new(TIMEOUT),
            now: Instant::now(),
        }
    }

    /// A conversation that waits out directory outages (a running peer's).
    fn patient() -> Self {
        Self {
            c: Conversation::new(TIMEOUT).waiting_out_outages(),
            now: Instant::now(),
        }
    }

    fn submit(&mut self, ns: impl IntoIterator<Item = u32>) -> Vec<Action> {
        for n in ns {
            self.c.handle(Input::Submit(message(n)), self.now);
        }
        self.actions()
    }

    fn input(&mut self, input: Input) -> Vec<Action> {
        self.c.handle(input, self.now);
        self.actions()
    }

    /// Moves the clock to `at` and lets the conversation see it.
    fn at(&mut self, at: Instant) -> Vec<Action> {
        self.now = at;
        self.c.handle_timeout(at);
        self.actions()
    }

    fn later(&mut self, by: Duration) -> Vec<Action> {
        self.at(self.now + by)
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.c.poll_action()).collect()
    }

    /// Opens a direct link for what was submitted: the live link answers.
    fn direct(&mut self, ns: impl IntoIterator<Item = u32>) -> Vec<Action> {
        let actions = self.submit(ns);
        assert!(
            matches!(actions[..], [Action::OpenLive { .. }]),
            "{actions:?}"
        );
        self.input(Input::LiveOpened(Some(DirectPath::Public)))
    }
}

fn writes(actions: &[Action]) -> Vec<MessageId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Write { message, .. } => Some(message.id()),
            _ => None,
        })
        .collect()
}

fn delivered(n: u32) -> Action {
    Action::Settle(id(n), Ok((Status::Delivered, Some(DirectPath::Public))))
}

fn queued(n: u32) -> Action {
    Action::Settle(id(n), Ok((Status::Queued, None)))
}

#[test]
fn direct_messages_are_written_in_order_and_settled_by_their_acks() {
    let mut sim = Sim::new();
    let actions = sim.direct([1, 2]);
    assert_eq!(writes(&actions), [id(1), id(2)]);
    assert_eq!(sim.input(Input::Acked(id(1))), [delivered(1)]);
    assert!(!sim.c.is_idle());
    assert_eq!(sim.input(Input::Acked(id(2))), [delivered(2)]);
    assert!(sim.c.is_idle());
    // The link stays: the next message is written at once, with no lookup.
    assert_eq!(writes(&sim.submit([3])), [id(3)]);
}

#[test]
fn at_most_a_window_is_written_ahead_of_the_acks() {
    let mut sim = Sim::new();
    let n = SEND_WINDOW as u32;
    let actions = sim.direct(1..=n + 2);
    assert_eq!(writes(&actions).len(), SEND_WINDOW);
    let actions = sim.input(Input::Acked(id(1)));
    assert_eq!(actions[0], delivered(1));
    assert_eq!(writes(&actions), [id(n + 1)]);
}

#[test]
fn a_late_ack_sends_the_unacknowledged_and_later_messages_to_the_mailbox_once_each() {
    let mut sim = Sim::new();
    sim.direct([1, 2]);
    sim.input(Input::Acked(id(1)));
    sim.submit([3]);
    // No ack for 2: at its deadline the link is given up and 2, then 3, are deposited with
    // their own ids, one deposit at a time.
    let actions = sim.later(TIMEOUT);
    assert_eq!(actions, [Action::CloseLink, Action::Deposit(message(2))]);
    assert_eq!(
        sim.input(Input::Deposited(id(2), Ok(()))),
        [queued(2), Action::Deposit(message(3))]
    );
    // The ack for 2 arrives after all: it settles nothing a second time.
    assert_eq!(sim.input(Input::Acked(id(2))), []);
    assert_eq!(sim.input(Input::Deposited(id(3), Ok(()))), [queued(3)]);
    assert!(sim.c.is_idle());
}

#[test]
fn the_first_ack_on_a_new_link_shares_the_deadline_of_the_dial() {
    let mut sim = Sim::new();
    let start = sim.now;
    sim.submit([1]);
    sim.now += Duration::from_secs(2);
    let actions = sim.input(Input::LiveOpened(Some(DirectPath::Public)));
    assert_eq!(
        actions,
        [Action::Write {
            message: message(1),
            deadline: start + TIMEOUT
        }]
    );
    assert_eq!(sim.c.poll_timeout(), Some(start + TIMEOUT));
    assert_eq!(
        sim.at(start + TIMEOUT),
        [Action::CloseLink, Action::Deposit(message(1))]
    );
}

#[test]
fn no_direct_message_overtakes_one_waiting_in_the_mailbox() {
    let mut sim = Sim::new();
    // Offline: 1 goes to the mailbox.
    assert_eq!(
        sim.submit([1]),
        [Action::OpenLive {
            deadline: sim.now + TIMEOUT
        }]
    );
    assert_eq!(sim.input(Input::LiveOpened(None)), [Action::Lookup]);
    assert_eq!(
        sim.input(Input::LookedUp(Ok(info(false, 0)))),
        [Action::Deposit(message(1))]
    );
    sim.input(Input::Deposited(id(1), Ok(())));
    // The recipient is back but has not taken 1 yet: 2 must not go past it. With ours in the
    // mailbox, the live link is not even tried; the directory is asked first.
    assert_eq!(sim.submit([2]), [Action::Lookup]);
    assert_eq!(
        sim.input(Input::LookedUp(Ok(info(true, 1)))),
        [Action::Deposit(message(2))]
    );
    sim.input(Input::Deposited(id(2), Ok(())));
    // Once the directory reports none of ours waiting, the direct path is back.
    assert_eq!(sim.submit([3]), [Action::Lookup]);
    let actions = sim.input(Input::LookedUp(Ok(info(true, 0))));
    assert!(matches!(actions[..], [Action::Dial { .. }]), "{actions:?}");
    assert_eq!(
        writes(&sim.input(Input::Dialed(Ok(DirectPath::Punched)))),
        [id(3)]
    );
    assert_eq!(
        sim.input(Input::Acked(id(3))),
        [Action::Settle(
            id(3),
            Ok((Status::Delivered, Some(DirectPath::Punched)))
        )]
    );
}

#[test]
fn a_dial_that_found_no_path_sends_the_next_messages_to_the_mailbox_for_a_while() {
    let mut sim = Sim::new();
    sim.submit([1]);
    sim.input(Input::LiveOpened(None));
    sim.input(Input::LookedUp(Ok(info(true, 0))));
    assert_eq!(
        sim.input(Input::Dialed(Err(DialFailed::NoPath))),
        [Action::Deposit(message(1))]
    );
    // Say the deposit failed (the mailbox is full): nothing of ours waits there.
    let full = Failure::MailboxFull { name: name("c2") };
    assert_eq!(
        sim.input(Input::Deposited(id(1), Err(full.clone()))),
        [Action::Settle(id(1), Err(full))]
    );
    // Within the backoff the lookup says online, and still no dial.
    sim.now += NO_DIRECT_BACKOFF / 2;
    assert!(matches!(sim.submit([2])[..], [Action::OpenLive { .. }]));
    sim.input(Input::LiveOpened(None));
    assert_eq!(
        sim.input(Input::LookedUp(Ok(info(true, 0)))),
        [Action::Deposit(message(2))]
    );
    sim.input(Input::Deposited(id(2), Ok(())));
    // After it, a dial again.
    sim.now += NO_DIRECT_BACKOFF;
    sim.submit([3]);
    assert!(matches!(
        sim.input(Input::LookedUp(Ok(info(true, 0))))[..],
        [Action::Dial { .. }]
    ));
}

#[test]
fn a_failed_lookup_fails_every_queued_message_with_its_reason() {
    let mut sim = Sim::new();
    sim.submit([1, 2]);
    sim.input(Input::LiveOpened(None));
    sim.submit([3]);
    let unknown = Failure::UnknownPeer { name: name("c2") };
    assert_eq!(
        sim.input(Input::LookedUp(Err(unknown.clone()))),
        [1, 2, 3].map(|n| Action::Settle(id(n), Err(unknown.clone())))
    );
    assert!(sim.c.is_idle());
}

#[test]
fn halfway_to_a_late_ack_on_a_working_link_an_introduction_is_asked_for_once() {
    let mut sim = Sim::new();
    sim.direct([1]);
    sim.input(Input::Acked(id(1)));
    sim.submit([2]);
    let written = sim.now;
    assert_eq!(sim.c.poll_timeout(), Some(written + TIMEOUT / 2));
    assert_eq!(sim.at(written + TIMEOUT / 2), [Action::Introduce]);
    assert_eq!(sim.c.poll_timeout(), Some(written + TIMEOUT));
    assert_eq!(sim.later(Duration::from_millis(100)), []);
    // The introduction reopened the path: the ack comes, and the next one may nudge again.
    assert_eq!(sim.input(Input::Acked(id(2))), [delivered(2)]);
    sim.submit([3]);
    assert_eq!(sim.c.poll_timeout(), Some(sim.now + TIMEOUT / 2));
}

#[test]
fn a_new_link_waiting_for_its_first_ack_asks_for_no_introduction() {
    let mut sim = Sim::new();
    sim.direct([1]);
    assert_eq!(sim.later(TIMEOUT / 2), []);
    assert_eq!(
        sim.later(TIMEOUT / 2),
        [Action::CloseLink, Action::Deposit(message(1))]
    );
}

#[test]
fn an_ack_out_of_order_or_a_broken_stream_falls_back_to_the_mailbox() {
    let mut sim = Sim::new();
    sim.direct([1, 2]);
    assert_eq!(
        sim.input(Input::Acked(id(2))),
        [Action::CloseLink, Action::Deposit(message(1))]
    );
    let mut sim = Sim::new();
    sim.direct([1, 2]);
    assert_eq!(
        sim.input(Input::LinkFailed),
        [Action::CloseLink, Action::Deposit(message(1))]
    );
}

fn outage() -> Failure {
    Failure::DirectoryUnreachable {
        addr: "127.0.0.1:9000".into(),
    }
}

#[test]
fn a_running_peer_keeps_its_messages_through_a_directory_outage_and_sends_them_after() {
    let mut sim = Sim::patient();
    sim.submit([1, 2]);
    assert_eq!(sim.input(Input::LiveOpened(None)), [Action::Lookup]);
    // The lookup waited for the directory and gave up: nothing is settled, nothing fails.
    assert_eq!(sim.input(Input::LookedUp(Err(outage()))), []);
    assert!(!sim.c.is_idle());
    assert_eq!(sim.c.poll_timeout(), Some(sim.now + OUTAGE_RETRY));
    // A message sent meanwhile waits behind them.
    assert_eq!(sim.submit([3]), []);
    // Then routing starts again, the live link first: the recipient may be reachable directly.
    let actions = sim.later(OUTAGE_RETRY);
    assert!(
        matches!(actions[..], [Action::OpenLive { .. }]),
        "{actions:?}"
    );
    assert_eq!(sim.input(Input::LiveOpened(None)), [Action::Lookup]);
    // The directory is back: all three are deposited, in order, once each.
    assert_eq!(
        sim.input(Input::LookedUp(Ok(info(false, 0)))),
        [Action::Deposit(message(1))]
    );
    // The directory goes away again under the second deposit: 2 goes back in front.
    assert_eq!(
        sim.input(Input::Deposited(id(1), Ok(()))),
        [queued(1), Action::Deposit(message(2))]
    );
    assert_eq!(sim.input(Input::Deposited(id(2), Err(outage()))), []);
    // With one of ours in the mailbox, the directory is asked first, not the live link.
    assert_eq!(sim.later(OUTAGE_RETRY), [Action::Lookup]);
    assert_eq!(
        sim.input(Input::LookedUp(Ok(info(true, 1)))),
        [Action::Deposit(message(2))]
    );
    assert_eq!(
        sim.input(Input::Deposited(id(2), Ok(()))),
        [queued(2), Action::Deposit(message(3))]
    );
    assert_eq!(sim.input(Input::Deposited(id(3), Ok(()))), [queued(3)]);
    assert!(sim.c.is_idle());
}

#[test]
fn a_live_link_carries_messages_while_the_directory_is_away() {
    let mut sim = Sim::patient();
    sim.submit([1]);
    sim.input(Input::LiveOpened(None));
    sim.input(Input::LookedUp(Err(outage())));
    // The recipient dialed us meanwhile: the retry finds the live link.
    sim.later(OUTAGE_RETRY);
    let actions = sim.input(Input::LiveOpened(Some(DirectPath::Public)));
    assert_eq!(writes(&actions), [id(1)]);
    assert_eq!(sim.input(Input::Acked(id(1))), [delivered(1)]);
}

#[test]
fn a_running_peer_still_fails_what_the_directory_refuses() {
    let mut sim = Sim::patient();
    sim.submit([1]);
    sim.input(Input::LiveOpened(None));
    let unknown = Failure::UnknownPeer { name: name("c2") };
    assert_eq!(
        sim.input(Input::LookedUp(Err(unknown.clone()))),
        [Action::Settle(id(1), Err(unknown))]
    );
    sim.submit([2]);
    sim.input(Input::LiveOpened(None));
    sim.input(Input::LookedUp(Ok(info(false, 0))));
    let full = Failure::MailboxFull { name: name("c2") };
    assert_eq!(
        sim.input(Input::Deposited(id(2), Err(full.clone()))),
        [Action::Settle(id(2), Err(full))]
    );
}

#[test]
fn a_short_command_fails_its_messages_when_the_directory_stays_away() {
    let mut sim = Sim::new();
    sim.submit([1, 2]);
    sim.input(Input::LiveOpened(None));
    assert_eq!(
        sim.input(Input::LookedUp(Err(outage()))),
        [1, 2].map(|n| Action::Settle(id(n), Err(outage())))
    );
    assert!(sim.c.is_idle());
}

/// Whatever happens, in any order, every message is settled exactly once, and the ones that
/// share a path are settled in submission order. A conversation that waits out outages never
/// fails a message for one.
#[test]
fn every_message_is_settled_exactly_once_whatever_happens() {
    for seed in 0..400 {
        let patient = seed % 2 == 1;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = if patient { Sim::patient() } else { Sim::new() };
        let mut settled: HashMap<MessageId, usize> = HashMap::new();
        let mut order = Vec::new();
        let mut next = 0u32;
        // What the driver owes the conversation.
        let mut owed: Vec<Input> = Vec::new();
        let mut written: Vec<MessageId> = Vec::new();
        for _ in 0..400 {
            let actions = match rng.random_range(0..10) {
                0..=2 if next < 60 => {
                    next += 1;
                    sim.submit([next])
                }
                3 => sim.later(Duration::from_millis(rng.random_range(0..4000))),
                4 if !written.is_empty() => {
                    let i = if rng.random_bool(0.9) {
                        0
                    } else {
                        written.len() - 1
                    };
                    let acked = written.remove(i);
                    sim.input(Input::Acked(acked))
                }
                5 if rng.random_bool(0.1) => sim.input(Input::LinkFailed),
                _ if !owed.is_empty() => {
                    let i = rng.random_range(0..owed.len());
                    let input = owed.remove(i);
                    sim.input(input)
                }
                _ => Vec::new(),
            };
            for action in actions {
                match action {
                    Action::OpenLive { .. } => owed.push(Input::LiveOpened(
                        rng.random_bool(0.5).then_some(DirectPath::Public),
                    )),
                    Action::Lookup => owed.push(Input::LookedUp(match rng.random_range(0..5) {
                        0 => Err(Failure::DirectoryUnreachable { addr: "d".into() }),
                        n => Ok(info(n > 1, (n == 4) as u32)),
                    })),
                    Action::Dial { .. } => owed.push(Input::Dialed(match rng.random_range(0..3) {
                        0 => Err(DialFailed::NoPath),
                        1 => Err(DialFailed::NoStream),
                        _ => Ok(DirectPath::Lan),
                    })),
                    Action::Write { message, .. } => written.push(message.id()),
                    Action::CloseLink => written.clear(),
                    Action::Deposit(message) => {
                        let stored = match rng.random_range(0..4) {
                            0 => Err(outage()),
                            _ => Ok(()),
                        };
                        owed.push(Input::Deposited(message.id(), stored));
                    }
                    Action::Introduce => {}
                    Action::Settle(id, outcome) => {
                        assert!(
                            !(patient && outcome.is_err_and(|f| f.is_outage())),
                            "seed {seed}: failed for an outage"
                        );
                        *settled.entry(id).or_default() += 1;
                        order.push(number(id));
                    }
                }
            }
        }
        // Let everything owed arrive, acks first, then time pass, until nothing is left.
        for _ in 0..10_000 {
            if sim.c.is_idle() {
                break;
            }
            let actions = if !written.is_empty() {
                let acked = written.remove(0);
                sim.input(Input::Acked(acked))
            } else if !owed.is_empty() {
                let input = owed.remove(0);
                sim.input(input)
            } else {
                sim.later(TIMEOUT)
            };
            for action in actions {
                match action {
                    Action::OpenLive { .. } => owed.push(Input::LiveOpened(None)),
                    Action::Lookup => owed.push(Input::LookedUp(Ok(info(false, 0)))),
                    Action::Dial { .. } => owed.push(Input::Dialed(Err(DialFailed::NoStream))),
                    Action::Write { message, .. } => written.push(message.id()),
                    Action::CloseLink => written.clear(),
                    Action::Deposit(message) => owed.push(Input::Deposited(message.id(), Ok(()))),
                    Action::Introduce => {}
                    Action::Settle(id, _) => {
                        *settled.entry(id).or_default() += 1;
                        order.push(number(id));
                    }
                }
            }
        }
        assert!(sim.c.is_idle(), "seed {seed}: never idle");
        assert_eq!(
            settled.len(),
            next as usize,
            "seed {seed}: some never settled"
        );
        assert!(
            settled.values().all(|&n| n == 1),
            "seed {seed}: settled twice"
        );
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "seed {seed}: settled out of order");
    }
}
