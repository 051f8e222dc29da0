//! The conversation with one recipient as a state machine with no I/O, in the manner of
//! quinn-proto's `Connection`: the driver feeds it what happened ([`Conversation::handle`],
//! [`Conversation::handle_timeout`]) with the time, and asks it what to do next
//! ([`Conversation::poll_action`]) and when to wake it ([`Conversation::poll_timeout`]). Every
//! delivery rule of the outbox lives here, so each is a plain test in simulated time.
//!
//! The rules:
//! * Messages leave in submission order, whichever path each takes.
//! * The direct path first: the live link, else a lookup and a dial, all within one direct
//!   timeout. Up to [`SEND_WINDOW`] messages are written ahead of their acks; each must be
//!   acknowledged within the direct timeout of being written (until the link's first ack, within
//!   the timeout of the dial).
//! * When the recipient is offline, no link comes up, or an ack is late, the unacknowledged
//!   messages and everything after them go to the mailbox, oldest first, one deposit at a time,
//!   with their original ids: one that did arrive directly is dropped by the recipient as a
//!   duplicate.
//! * Once a message went to the mailbox, the mailbox is used until the directory reports none
//!   of ours waiting there (`queued_from_you == 0`), so a direct message never overtakes a
//!   queued one.
//! * After a dial that found no path, messages go straight to the mailbox for
//!   [`NO_DIRECT_BACKOFF`]: each attempt would cost a full direct timeout.
//! * Halfway to an ack's deadline on a link that has carried acks, ask the directory for an
//!   introduction once: the peer's NAT may have dropped its mapping, and its dialing us back
//!   reopens it.
//! * When the directory cannot be reached (down, restarting: [`Failure::is_outage`]), a
//!   conversation that waits out outages (a running peer's) keeps its messages, in order, and
//!   tries again every [`OUTAGE_RETRY`]: the live link first, then the directory. It never
//!   fails a message for that. One that does not wait (a short command's) fails them, as it
//!   fails them for any other reason.
//! * Every message is settled exactly once: delivered (with its path), queued, or failed.

use crate::{failure::Failure, links::DirectPath, outbox::Status};
use common::{
    defaults::SEND_WINDOW,
    room::RoomName,
    wire::{ChatMessage, MessageId, PeerInfo},
};
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// A message to send: to its recipient alone, or as the recipient's copy of a room message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    /// The message, `to` this conversation's recipient.
    pub message: ChatMessage,
    /// The room it was said in, if any, and the version of the room's log it was sent by.
    pub room: Option<(RoomName, u64)>,
}

impl Post {
    /// Its id: the same in every member's copy of a room message.
    pub fn id(&self) -> MessageId {
        self.message.id
    }
}

/// After a direct attempt to a peer found no path, how long its messages go straight to the
/// mailbox.
pub const NO_DIRECT_BACKOFF: Duration = Duration::from_secs(10);

/// While the directory cannot be reached, how long a conversation that waits out outages waits
/// between two attempts. (Each lookup or deposit has waited for the connection already.)
pub const OUTAGE_RETRY: Duration = Duration::from_secs(1);

/// What happened, for [`Conversation::handle`].
#[derive(Debug)]
pub enum Input {
    /// The user sent a message.
    Submit(Post),
    /// The answer to [`Action::OpenLive`]: a chat stream on the live link, or none.
    LiveOpened(Option<DirectPath>),
    /// The answer to [`Action::Lookup`].
    LookedUp(Result<PeerInfo, Failure>),
    /// The answer to [`Action::Dial`]: a chat stream on a new link, or why not.
    Dialed(Result<DirectPath, DialFailed>),
    /// The recipient acknowledged this message on the chat stream.
    Acked(MessageId),
    /// The chat stream failed (a write, the stream, an ack out of order).
    LinkFailed,
    /// The answer to [`Action::Deposit`].
    Deposited(MessageId, Result<(), Failure>),
}

/// Why a dial gave no chat stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailed {
    /// No handshake completed by the deadline: no path (starts [`NO_DIRECT_BACKOFF`]).
    NoPath,
    /// A link came up but a chat stream could not be opened on it.
    NoStream,
}

/// What the driver should do, from [`Conversation::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a chat stream on the live link to the recipient, if there is one, by `deadline`;
    /// answer with [`Input::LiveOpened`].
    OpenLive {
        /// When to give up.
        deadline: Instant,
    },
    /// Ask the directory about the recipient; answer with [`Input::LookedUp`].
    Lookup,
    /// Make a link to the peer `info` describes and open a chat stream on it, by `deadline`;
    /// answer with [`Input::Dialed`].
    Dial {
        /// What the directory said of the recipient.
        info: Box<PeerInfo>,
        /// When to give up.
        deadline: Instant,
    },
    /// Write this message on the chat stream (by `deadline`, else [`Input::LinkFailed`]).
    Write {
        /// The message.
        message: Post,
        /// When to give up.
        deadline: Instant,
    },
    /// Drop the chat stream: its unacknowledged messages are going to the mailbox.
    CloseLink,
    /// Deposit this message in the mailbox; answer with [`Input::Deposited`].
    Deposit(Post),
    /// Ask the directory to introduce us to the recipient again; nothing to answer.
    Introduce,
    /// This message's outcome, for whoever sent it.
    Settle(MessageId, Result<(Status, Option<DirectPath>), Failure>),
}

/// A chat stream with the messages written on it and not yet acknowledged.
#[derive(Debug)]
struct Link {
    in_flight: VecDeque<(Post, Instant)>,
    /// Until the first ack, every message shares the deadline of the dial.
    first_deadline: Option<Instant>,
    path: DirectPath,
    /// An introduction was asked for since the last ack.
    nudged: bool,
}

#[derive(Debug)]
enum State {
    /// Nothing under way (or nothing to send).
    Idle,
    /// Looking for a direct path, by `deadline`: waiting for the answer to `waiting`.
    Routing { waiting: Step, deadline: Instant },
    /// A chat stream is open.
    Direct(Link),
    /// Depositing the queue, one message at a time; `Some` while a deposit is under way.
    Mailbox(Option<Post>),
    /// The directory cannot be reached: nothing until then, when routing starts again.
    Outage { until: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Live,
    Lookup,
    Dial,
}

/// The conversation with one recipient; see the module docs.
#[derive(Debug)]
pub struct Conversation {
    timeout: Duration,
    /// Wait out directory outages instead of failing the messages.
    patient: bool,
    queue: VecDeque<Post>,
    state: State,
    /// Some of our messages may still wait in the recipient's mailbox.
    mailbox_pending: bool,
    /// After a dial that found no path, no new one before this.
    no_direct_until: Option<Instant>,
    actions: VecDeque<Action>,
}

impl Conversation {
    /// A conversation whose direct attempts and acks are bounded by `direct_timeout`, and
    /// which fails its messages when the directory cannot be reached.
    pub fn new(direct_timeout: Duration) -> Self {
        Self {
            timeout: direct_timeout,
            patient: false,
            queue: VecDeque::new(),
            state: State::Idle,
            mailbox_pending: false,
            no_direct_until: None,
            actions: VecDeque::new(),
        }
    }

    /// The same conversation, but one that waits out directory outages: its messages wait for
    /// the directory or a direct link, however long that takes.
    pub fn waiting_out_outages(mut self) -> Self {
        self.patient = true;
        self
    }

    /// Takes what happened at `now`. An answer that no longer fits (a late ack on a link
    /// already given up) is ignored.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match (input, &mut self.state) {
            (Input::Submit(message), _) => self.queue.push_back(message),
            (Input::LiveOpened(opened), State::Routing { waiting, deadline })
                if *waiting == Step::Live =>
            {
                match opened {
                    Some(path) => self.state = State::Direct(Link::new(path, *deadline)),
                    None => {
                        *waiting = Step::Lookup;
                        self.actions.push_back(Action::Lookup);
                    }
                }
            }
            (Input::LookedUp(found), State::Routing { waiting, deadline })
                if *waiting == Step::Lookup =>
            {
                let deadline = *deadline;
                match found {
                    Err(failure) if self.patient && failure.is_outage() => {
                        self.state = State::Outage {
                            until: now + OUTAGE_RETRY,
                        };
                    }
                    Err(failure) => {
                        for message in self.queue.drain(..) {
                            self.actions
                                .push_back(Action::Settle(message.id(), Err(failure.clone())));
                        }
                        self.state = State::Idle;
                    }
                    Ok(info) if info.queued_from_you > 0 => self.state = State::Mailbox(None),
                    Ok(info) => {
                        self.mailbox_pending = false;
                        let backing_off = self.no_direct_until.is_some_and(|t| now < t);
                        if !info.online || backing_off {
                            self.state = State::Mailbox(None);
                        } else {
                            self.state = State::Routing {
                                waiting: Step::Dial,
                                deadline,
                            };
                            self.actions.push_back(Action::Dial {
                                info: Box::new(info),
                                deadline,
                            });
                        }
                    }
                }
            }
            (Input::Dialed(dialed), State::Routing { waiting, deadline })
                if *waiting == Step::Dial =>
            {
                self.state = match dialed {
                    Ok(path) => {
                        self.no_direct_until = None;
                        State::Direct(Link::new(path, *deadline))
                    }
                    Err(DialFailed::NoPath) => {
                        self.no_direct_until = Some(now + NO_DIRECT_BACKOFF);
                        State::Mailbox(None)
                    }
                    Err(DialFailed::NoStream) => State::Mailbox(None),
                };
            }
            (Input::Acked(id), State::Direct(link)) => {
                match link.in_flight.front() {
                    Some((message, _)) if message.id() == id => {
                        link.in_flight.pop_front();
                        link.first_deadline = None;
                        link.nudged = false;
                        let path = Some(link.path);
                        self.actions
                            .push_back(Action::Settle(id, Ok((Status::Delivered, path))));
                    }
                    // Acks come in the order messages were written; any other is a broken
                    // stream.
                    _ => self.fall_back(),
                }
            }
            (Input::LinkFailed, State::Direct(_)) => self.fall_back(),
            (Input::Deposited(id, result), State::Mailbox(under_way))
                if under_way.as_ref().is_some_and(|m| m.id() == id) =>
            {
                let Some(message) = under_way.take() else {
                    return;
                };
                if let Err(failure) = &result {
                    if self.patient && failure.is_outage() {
                        // Back in front of the queue, and all of it waits.
                        self.queue.push_front(message);
                        self.state = State::Outage {
                            until: now + OUTAGE_RETRY,
                        };
                        self.advance(now);
                        return;
                    }
                }
                if result.is_ok() {
                    self.mailbox_pending = true;
                }
                let outcome = result.map(|()| (Status::Queued, None));
                self.actions.push_back(Action::Settle(id, outcome));
            }
            (_, _) => {}
        }
        self.advance(now);
    }

    /// Takes the passing of time: a late ack gives the link up; halfway there, a nudge; the
    /// end of a wait for the directory starts routing again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Outage { until } = self.state {
            if now >= until {
                self.state = State::Idle;
                self.advance(now);
            }
            return;
        }
        let State::Direct(link) = &mut self.state else {
            return;
        };
        let Some(&(_, deadline)) = link.in_flight.front() else {
            return;
        };
        if now >= deadline {
            self.fall_back();
        } else if link
            .nudge_at(deadline, self.timeout)
            .is_some_and(|t| now >= t)
        {
            link.nudged = true;
            self.actions.push_back(Action::Introduce);
        }
        self.advance(now);
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Conversation::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let State::Outage { until } = self.state {
            return Some(until);
        }
        let State::Direct(link) = &self.state else {
            return None;
        };
        let &(_, deadline) = link.in_flight.front()?;
        Some(match link.nudge_at(deadline, self.timeout) {
            Some(nudge) => nudge.min(deadline),
            None => deadline,
        })
    }

    /// True when nothing is queued, unacknowledged, under way or left to do: every message
    /// submitted has been settled.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.actions.is_empty()
            && match &self.state {
                State::Idle => true,
                State::Direct(link) => link.in_flight.is_empty(),
                State::Routing { .. } | State::Mailbox(_) | State::Outage { .. } => false,
            }
    }

    /// Starts whatever the state allows: a route for queued messages, writes up to the
    /// window, or the next deposit.
    fn advance(&mut self, now: Instant) {
        match &mut self.state {
            State::Idle if !self.queue.is_empty() => {
                let deadline = now + self.timeout;
                // The live link is only worth trying when none of ours may wait in the
                // mailbox; otherwise the directory must be asked first.
                let (waiting, action) = if self.mailbox_pending {
                    (Step::Lookup, Action::Lookup)
                } else {
                    (Step::Live, Action::OpenLive { deadline })
                };
                self.state = State::Routing { waiting, deadline };
                self.actions.push_back(action);
            }
            State::Direct(link) => {
                while link.in_flight.len() < SEND_WINDOW {
                    let Some(message) = self.queue.pop_front() else {
                        break;
                    };
                    let deadline = link.first_deadline.unwrap_or(now + self.timeout);
                    link.in_flight.push_back((message.clone(), deadline));
                    self.actions.push_back(Action::Write { message, deadline });
                }
            }
            State::Mailbox(under_way @ None) => match self.queue.pop_front() {
                Some(message) => {
                    *under_way = Some(message.clone());
                    self.actions.push_back(Action::Deposit(message));
                }
                None => self.state = State::Idle,
            },
            State::Idle
            | State::Routing { .. }
            | State::Mailbox(Some(_))
            | State::Outage { .. } => {}
        }
    }

    /// Gives the link up: its unacknowledged messages go back in front of the queue, and
    /// everything goes to the mailbox.
    fn fall_back(&mut self) {
        if let State::Direct(link) = std::mem::replace(&mut self.state, State::Mailbox(None)) {
            for (message, _) in link.in_flight.into_iter().rev() {
                self.queue.push_front(message);
            }
            self.actions.push_back(Action::CloseLink);
        }
    }
}

impl Link {
    fn new(path: DirectPath, deadline: Instant) -> Self {
        Self {
            in_flight: VecDeque::new(),
            first_deadline: Some(deadline),
            path,
            nudged: false,
        }
    }

    /// When to ask for an introduction while waiting for the ack due at `deadline`: halfway,
    /// once per ack, and only on a link that has carried acks (a new link's first ack waits
    /// on the dial, which introduces by itself).
    fn nudge_at(&self, deadline: Instant, timeout: Duration) -> Option<Instant> {
        (!self.nudged && self.first_deadline.is_none()).then(|| deadline - timeout / 2)
    }
}

#[cfg(test)]
mod tests;
