//! What the user sees. Chat goes to stdout, as plain lines or JSON Lines (`--json`); logs and
//! errors go to stderr.

use crate::{
    echo::{Echo, Stage},
    history::{HistoryEntry, HistoryState},
    inbox::{Arriving, RoomEvent, RoomNotice, Via},
    links::DirectPath,
    outbox::{Sent, Status},
    rooms::{RoomSent, RoomView},
    text,
};
use common::{
    room::{Change, Kind, Role, RoomName},
    wire::{ChatMessage, PeerInfo},
    KeyId, Name,
};
use indicatif::HumanBytes;
use serde_json::json;
use std::io::Write;

/// Formats output for plain text or JSON.
#[derive(Debug, Clone, Copy)]
pub struct Console {
    /// JSON Lines instead of text.
    pub json: bool,
    /// Colour sender names (a terminal).
    pub colour: bool,
}

impl Console {
    /// The line for an incoming message; `request` when it is from a stranger (a message
    /// request, see [`crate::contacts`]).
    pub fn message(
        &self,
        m: &ChatMessage,
        room: Option<&RoomName>,
        via: Via,
        request: bool,
    ) -> String {
        let skewed = clock_skewed(m.sent_at_ms, via, common::now_ms());
        if self.json {
            let mut v = json!({
                "type": "message",
                "room": room.map(RoomName::to_string),
                "id": m.id.to_string(),
                "from": m.from.as_str(),
                "to": m.to.as_str(),
                "sent_at_ms": m.sent_at_ms,
                "body": m.body,
                "via": via.as_str(),
            });
            if request {
                v["request"] = json!(true);
            }
            if skewed {
                v["clock_skewed"] = json!(true);
            }
            return v.to_string();
        }
        let from = self.name(&m.from);
        let note = match (request, via) {
            (true, _) => " (message request)",
            (false, Via::Mailbox) => " (while you were away)",
            (false, Via::Direct) => "",
        };
        let skew = if skewed {
            " (its time is far from this clock's)"
        } else {
            ""
        };
        let room = room.map(|r| format!("{r} ")).unwrap_or_default();
        format!(
            "[{}] {room}{from}: {}{note}{skew}",
            clock(m.sent_at_ms),
            body_lines(&m.body)
        )
    }

    /// The line for a message as it arrived.
    pub fn received(&self, r: &crate::service::Received) -> String {
        self.message(&r.message, r.room.as_ref(), r.via, r.request)
    }

    /// The line for a message to a room that left: how many members have it.
    pub fn room_sent(&self, s: &RoomSent) -> String {
        let members = s.members();
        if self.json {
            let failed: Vec<_> = (s.failed.iter())
                .map(|(name, why)| json!({"name": name.as_str(), "reason": why.to_string()}))
                .collect();
            return json!({
                "type": "sent",
                "id": s.id.to_string(),
                "room": s.room.to_string(),
                "status": if s.queued == 0 && s.failed.is_empty() { "delivered" } else { "queued" },
                "delivered": s.delivered,
                "queued": s.queued,
                "failed": failed,
            })
            .to_string();
        }
        let mut line = format!(
            "delivered to {} of {members} in {}, {} queued",
            s.delivered, s.room, s.queued
        );
        for (name, why) in &s.failed {
            line.push_str(&format!("; not sent to {name}: {why}"));
        }
        line
    }

    /// The line for a change of a room: its membership, or a member's presence.
    pub fn room_notice(&self, n: &RoomNotice) -> String {
        // The JSON event, who, by whom, and what a person reads.
        let (event, name, by, what) = match &n.event {
            RoomEvent::Changed(Change::Created(name)) => {
                ("created", name, None, "created the room".to_string())
            }
            RoomEvent::Changed(Change::Joined(name)) => ("joined", name, None, "joined".into()),
            RoomEvent::Changed(Change::Invited { name, by }) => {
                let what = format!("was invited by {}", self.name(by));
                ("invited", name, Some(by), what)
            }
            RoomEvent::Changed(Change::Left(name)) => ("left", name, None, "left".into()),
            RoomEvent::Changed(Change::Kicked { name, by }) => {
                let what = format!("was removed by {}", self.name(by));
                ("kicked", name, Some(by), what)
            }
            RoomEvent::Online(name) => ("online", name, None, "is online".into()),
            RoomEvent::Offline(name) => ("offline", name, None, "went offline".into()),
        };
        if self.json {
            return json!({
                "type": "room_event",
                "room": n.room.to_string(),
                "event": event,
                "name": name.as_str(),
                "by": by.map(Name::as_str),
                "at_ms": n.at_ms,
            })
            .to_string();
        }
        format!(
            "[{}] {}: {} {what}",
            clock(n.at_ms),
            n.room,
            self.name(name)
        )
    }

    /// The line for a room: its kind and members (with presence when it is known).
    pub fn room(&self, r: &RoomView) -> String {
        let role = |role: Role| match role {
            Role::Admin => "admin",
            Role::Member => "member",
        };
        let kind = match r.kind {
            Kind::Public => "public",
            Kind::Private => "private",
        };
        if self.json {
            let members: Vec<_> = (r.members.iter())
                .map(|m| json!({"name": m.name.as_str(), "role": role(m.role), "online": m.online}))
                .collect();
            return json!({
                "type": "room",
                "room": r.room.to_string(),
                "kind": kind,
                "members": members,
            })
            .to_string();
        }
        let members: Vec<String> = (r.members.iter())
            .map(|m| {
                let mut notes = Vec::new();
                if m.role == Role::Admin {
                    notes.push("admin");
                }
                match m.online {
                    Some(true) => notes.push("online"),
                    Some(false) => notes.push("offline"),
                    None => {}
                }
                match notes.is_empty() {
                    true => self.name(&m.name),
                    false => format!("{} ({})", self.name(&m.name), notes.join(", ")),
                }
            })
            .collect();
        format!(
            "{} ({kind}, {} members): {}",
            r.room,
            r.members.len(),
            members.join(", ")
        )
    }

    /// The line for a key the user trusted.
    pub fn trusted(&self, name: &Name, key: &KeyId) -> String {
        if self.json {
            return json!({"type": "trusted", "name": name.as_str(), "key": key.to_string()})
                .to_string();
        }
        format!("{} is trusted with key {key}", self.name(name))
    }

    /// The lines for a safety number with `name`, whose key is `key`.
    pub fn safety_number(&self, name: &Name, key: &KeyId, digits: &str) -> String {
        let groups = crate::safety::groups(digits);
        if self.json {
            return json!({
                "type": "safety_number",
                "name": name.as_str(),
                "key": key.to_string(),
                "digits": digits,
                "groups": groups,
            })
            .to_string();
        }
        let (first, second) = groups.split_at(groups.len() / 2);
        format!(
            "safety number with {} (key {}); {} sees the same digits with `peer verify` when \
             neither key was swapped:\n  {}\n  {}",
            self.name(name),
            key.short(),
            self.name(name),
            first.join(" "),
            second.join(" ")
        )
    }

    /// The line for a contact the user accepted or blocked.
    pub fn contact(&self, c: &crate::contacts::Contact) -> String {
        if self.json {
            return json!({
                "type": "contact",
                "name": c.name.as_str(),
                "key": c.key.to_string(),
                "standing": c.standing.as_str(),
                "since_ms": c.since_ms,
            })
            .to_string();
        }
        format!(
            "{} {} (key {})",
            self.name(&c.name),
            c.standing.as_str(),
            c.key.short()
        )
    }

    /// The line for a file that arrived.
    pub fn file(&self, f: &crate::inbox::ReceivedFile) -> String {
        if self.json {
            return json!({
                "type": "file",
                "from": f.from.as_str(),
                "path": f.path.display().to_string(),
                "size": f.size,
                "blake3": hex::encode(f.hash),
                "sent_at_ms": f.sent_at_ms,
                "resumed_from": f.resumed_from,
                "via": f.via.as_str(),
                "request": f.request,
            })
            .to_string();
        }
        format!(
            "[{}] {} sent a file: {} ({})",
            clock(f.sent_at_ms),
            self.name(&f.from),
            sanitize(&f.path.display().to_string()),
            HumanBytes(f.size)
        )
    }

    /// The line for a file that reached its recipient.
    pub fn file_sent(&self, f: &crate::files::FileSent) -> String {
        if self.json {
            let mut v = json!({
                "type": "file_sent",
                "to": f.to.as_str(),
                "size": f.size,
                "blake3": hex::encode(f.hash),
                "resumed_from": f.resumed_from,
                "status": if f.path.is_some() { "delivered" } else { "queued" },
            });
            if let Some(path) = f.path {
                v["path"] = json!(path.as_str());
            }
            return v.to_string();
        }
        let Some(path) = f.path else {
            return format!(
                "queued {} for {} in the mailbox; blake3 {}",
                HumanBytes(f.size),
                f.to,
                hex::encode(f.hash)
            );
        };
        let resumed = match f.resumed_from {
            0 => String::new(),
            n => format!(", resumed after {}", HumanBytes(n)),
        };
        let words = path.words().map(|w| format!(", {w}")).unwrap_or_default();
        format!(
            "sent {} to {} (direct{words}{resumed}); blake3 {}",
            HumanBytes(f.size),
            f.to,
            hex::encode(f.hash)
        )
    }

    /// The line for a send outcome.
    pub fn sent(&self, s: &Sent) -> String {
        if self.json {
            return json!({
                "type": "sent",
                "id": s.id.to_string(),
                "to": s.to.as_str(),
                "status": s.status.as_str(),
                "path": s.path.map(DirectPath::as_str),
            })
            .to_string();
        }
        match s.status {
            Status::Delivered => match s.path.and_then(DirectPath::words) {
                Some(words) => format!("delivered to {} (direct, {words})", s.to),
                None => format!("delivered to {} (direct)", s.to),
            },
            Status::Queued => {
                format!("queued for {} in the directory's mailbox", s.to)
            }
        }
    }

    /// The lines for a lookup; `path` is the direct link this peer has to it, if any.
    pub fn whois(&self, p: &PeerInfo, path: Option<DirectPath>, me: &Name) -> String {
        if self.json {
            return json!({
                "type": "whois",
                "name": p.name.as_str(),
                "online": p.online,
                "last_seen_ms": p.last_seen_ms,
                "observed_addr": p.observed_addr.map(|a| a.to_string()),
                "listen_addrs": p.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "key": p.key.to_string(),
                "path": path.map(DirectPath::as_str),
                "queued_from_you": p.queued_from_you,
            })
            .to_string();
        }
        let seen = match (p.online, p.last_seen_ms) {
            (true, _) if p.name == *me => "online (you)".to_string(),
            (true, _) => "online".to_string(),
            // Asked by a short command, with no `listen` or `chat` running: connected for the
            // command, not online for messages.
            (false, _) if p.name == *me => {
                "you, not online: what is sent to you waits in the mailbox until you run \
                 `listen` or `chat`"
                    .to_string()
            }
            (false, Some(ms)) => format!("offline, last seen {}", ago(ms)),
            (false, None) => "offline, never seen".to_string(),
        };
        let mut out = format!("{}: {seen}\n  key {}", p.name, p.key);
        if let Some(path) = path {
            out.push_str(&format!("\n  direct link: {}", path.as_str()));
        }
        if let Some(addr) = p.observed_addr {
            out.push_str(&format!("\n  observed at {addr}"));
        }
        if !p.listen_addrs.is_empty() {
            let addrs: Vec<String> = p.listen_addrs.iter().map(|a| a.to_string()).collect();
            out.push_str(&format!("\n  listens on {}", addrs.join(", ")));
        }
        out
    }

    /// The line for one message of the local history.
    pub fn history(&self, e: &HistoryEntry) -> String {
        let direction = if e.state.is_ours() { "out" } else { "in" };
        if self.json {
            let mut v = json!({
                "type": "message",
                "id": e.id.map(|id| id.to_string()),
                "from": e.from.as_str(),
                "to": e.to.as_str(),
                "sent_at_ms": e.sent_at_ms,
                "body": e.body,
                "direction": direction,
                "state": e.state.as_str(),
            });
            if let Some(room) = &e.room {
                v["room"] = json!(room.to_string());
            }
            match &e.state {
                HistoryState::Received { via } => {
                    v["via"] = json!(via.as_str());
                    v["verified"] = json!(null);
                }
                HistoryState::Verified { via, key } => {
                    v["via"] = json!(via.as_str());
                    v["verified"] = json!(match via {
                        Via::Direct => "handshake",
                        Via::Mailbox => "signature",
                    });
                    v["key"] = json!(key.to_string());
                }
                HistoryState::Delivered { path } => v["path"] = json!(path.map(DirectPath::as_str)),
                HistoryState::Failed { reason } => v["reason"] = json!(reason),
                HistoryState::DeliveredLater { at_ms } => v["delivered_at_ms"] = json!(at_ms),
                HistoryState::Sending | HistoryState::Queued => {}
            }
            return v.to_string();
        }
        let note = match &e.state {
            HistoryState::Verified { .. } => String::new(),
            // Kept from before senders were checked end to end.
            HistoryState::Received { .. } => "  (unverified)".into(),
            state => format!("  ({})", state_text(state)),
        };
        format!(
            "[{}] {}: {}{note}",
            clock(e.sent_at_ms),
            self.name(&e.from),
            body_lines(&e.body)
        )
    }

    /// The line for one of our messages sent from another view (see [`crate::echo`]): when
    /// it was submitted, and, in JSON or when it failed, its outcome.
    pub fn echo(&self, me: &Name, e: &Echo) -> Option<String> {
        if self.json {
            let mut v = json!({"type": "echo", "to": e.to.to_string(), "number": e.number});
            match &e.stage {
                Stage::Submitted { body, at_ms } => {
                    v["body"] = json!(body);
                    v["sent_at_ms"] = json!(at_ms);
                    v["state"] = json!("sending");
                }
                Stage::Settled { id, state } => {
                    v["id"] = json!(id.map(|id| id.to_string()));
                    v["state"] = json!(state.as_str());
                }
            }
            return Some(v.to_string());
        }
        match &e.stage {
            Stage::Submitted { body, at_ms } => Some(format!(
                "[{}] {} → {}: {}",
                clock(*at_ms),
                self.name(me),
                e.to,
                body_lines(body)
            )),
            Stage::Settled {
                state: state @ HistoryState::Failed { .. },
                ..
            } => Some(format!("to {}: {}", e.to, state_text(state))),
            Stage::Settled { .. } => None,
        }
    }

    /// The line for how far a file arriving is.
    pub fn arriving(&self, a: &Arriving) -> String {
        if self.json {
            return json!({
                "type": "file_progress",
                "from": a.from.as_str(),
                "name": a.name,
                "done": a.done,
                "total": a.total,
                "stopped": a.stopped,
            })
            .to_string();
        }
        if a.stopped {
            return format!(
                "receiving {} from {} stopped; what came is kept for resuming",
                sanitize(&a.name),
                a.from
            );
        }
        let percent = (a.done * 100).checked_div(a.total).unwrap_or(100);
        format!(
            "receiving {} from {}: {percent}% ({} of {})",
            sanitize(&a.name),
            a.from,
            HumanBytes(a.done),
            HumanBytes(a.total)
        )
    }

    /// The line announcing we are online.
    pub fn online(&self, name: &Name, key: &KeyId) -> Option<String> {
        self.json.then(|| {
            json!({"type": "online", "name": name.as_str(), "key": key.to_string()}).to_string()
        })
    }

    /// A sender's name, coloured on a terminal: one stable colour per name.
    pub fn name(&self, name: &Name) -> String {
        if !self.colour {
            return name.to_string();
        }
        // ANSI green, yellow, blue, magenta, cyan: never red, which reads as an error.
        const COLOURS: [u8; NAME_COLOURS] = [32, 33, 34, 35, 36];
        let c = COLOURS[name_colour(name)];
        format!("\x1b[1;{c}m{name}\x1b[0m")
    }
}

/// How many colours names are drawn in, in the line mode and the terminal client alike.
pub const NAME_COLOURS: usize = 5;

/// The colour of `name`, of [`NAME_COLOURS`]: stable across runs, and the same in the line mode
/// and the terminal client.
pub fn name_colour(name: &Name) -> usize {
    let hash = name
        .as_str()
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    hash as usize % NAME_COLOURS
}

/// Most matches `/search` lists, in the terminal client and the page.
pub const SEARCH_SHOWN: usize = 20;

/// The answer to `/search text` as notice lines: how many of `entries` hold `text` (any case),
/// then the last [`SEARCH_SHOWN`] of them, each with its time and sender.
pub fn search_lines(text: &str, entries: &[HistoryEntry]) -> Vec<String> {
    let hits = crate::history::matching(entries, text);
    let shown = hits.len().min(SEARCH_SHOWN);
    let more = match hits.len() > shown {
        true => format!(" (the last {shown})"),
        false => String::new(),
    };
    let header = format!("{} message(s) with {text:?}{more}", hits.len());
    let lines = (hits[hits.len() - shown..].iter())
        .map(|e| format!("{} {}: {}", clock(e.sent_at_ms), e.from, e.body));
    std::iter::once(header).chain(lines).collect()
}

/// Writes one line to stdout and flushes it, so a message is on its way to the user before it
/// is acknowledged. Any character from the network that could move the terminal or reorder
/// text, and that is still in the line, is written escaped (see [`text::escape_json`]: in a
/// JSON line that is the same text; plain lines have had them replaced already). Fails only if
/// stdout is gone.
pub fn print_line(line: &str) -> std::io::Result<()> {
    let line = text::escape_json(line);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Text from the network for one terminal line: controls, bidirectional and invisible
/// characters shown as U+FFFD (see [`text`]).
pub fn sanitize(body: &str) -> String {
    text::for_terminal(body, false)
}

/// A message's text for plain output: made safe like [`sanitize`], but its line breaks kept,
/// each following line indented under the first (a hanging indent), so a multi-line message
/// reads as one.
pub fn body_lines(body: &str) -> String {
    text::for_terminal(body, true).replace('\n', "\n    ")
}

/// A short description of where a message stands, for people.
pub fn state_text(state: &HistoryState) -> String {
    match state {
        HistoryState::Received { via: Via::Mailbox }
        | HistoryState::Verified {
            via: Via::Mailbox, ..
        } => "received via the mailbox".into(),
        HistoryState::Received { via: Via::Direct }
        | HistoryState::Verified {
            via: Via::Direct, ..
        } => "received".into(),
        HistoryState::Sending => "sending".into(),
        HistoryState::Delivered { path } => match path.and_then(|p| p.words()) {
            Some(words) => format!("delivered, direct, {words}"),
            None => "delivered, direct".into(),
        },
        HistoryState::Queued => "queued in the mailbox".into(),
        HistoryState::Failed { reason } => format!("failed: {reason}"),
        HistoryState::DeliveredLater { at_ms } => {
            format!("delivered later, from the mailbox, {}", ago(*at_ms))
        }
    }
}

/// `HH:MM:SS` of a timestamp in ms since the epoch, in the local time zone (`TZ`, else
/// `/etc/localtime`, else UTC), with `YYYY-MM-DD` in front when it is not today.
pub fn clock(ms: u64) -> String {
    clock_at(ms, chrono::Local::now().date_naive(), &chrono::Local)
}

/// [`clock`] in the time zone `tz`, on the day `today` there: the time of day, with the date
/// in front when it is another day.
fn clock_at<Tz: chrono::TimeZone>(ms: u64, today: chrono::NaiveDate, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let Some(at) = i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
    else {
        return "--:--:--".into();
    };
    let local = at.with_timezone(tz);
    if local.date_naive() == today {
        local.format("%H:%M:%S").to_string()
    } else {
        local.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

/// How long ago a timestamp in ms since the epoch was: `5s ago`, `3m ago`, ...
pub fn ago(ms: u64) -> String {
    let secs = common::now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// How far a sender's clock may be from ours before its message is flagged: a message from
/// the future, or one that came directly (so it was just sent) stamped long ago.
const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Whether a message stamped `sent_at_ms` that came by `via` has a time far from `now_ms`.
/// Mail may have waited for days, so only a future time counts for it.
fn clock_skewed(sent_at_ms: u64, via: Via, now_ms: u64) -> bool {
    sent_at_ms > now_ms.saturating_add(CLOCK_SKEW_MS)
        || (via == Via::Direct && sent_at_ms.saturating_add(CLOCK_SKEW_MS) < now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red reads as an error: no name is printed in it, and each name keeps its colour.
    #[test]
    fn names_are_never_red_and_keep_their_colour() {
        let console = Console {
            json: false,
            colour: true,
        };
        for i in 0..1000 {
            let name = Name::new(format!("peer{i}")).expect("a valid name");
            let drawn = console.name(&name);
            assert!(!drawn.starts_with("\x1b[1;31m"), "{name} in red");
            assert_eq!(drawn, console.name(&name));
        }
    }

    #[test]
    fn clock_is_local_and_dated_when_not_today() {
        let tz = chrono::FixedOffset::east_opt(2 * 3600).expect("offset");
        // 2024-11-21 23:30:05 UTC is 01:30:05 on the 22nd two hours east.
        let ms = 1_732_231_805_000;
        let day = |d| chrono::NaiveDate::from_ymd_opt(2024, 11, d).expect("date");
        assert_eq!(clock_at(ms, day(22), &tz), "01:30:05");
        assert_eq!(clock_at(ms, day(23), &tz), "2024-11-22 01:30:05");
        assert_eq!(clock_at(ms, day(21), &chrono::Utc), "23:30:05");
        assert_eq!(clock_at(u64::MAX, day(21), &chrono::Utc), "--:--:--");
    }

    #[test]
    fn a_time_from_the_future_or_a_direct_message_from_the_past_is_flagged() {
        let now = 1_800_000_000_000;
        let minute = 60_000;
        assert!(!clock_skewed(now - minute, Via::Direct, now));
        assert!(!clock_skewed(now + minute, Via::Mailbox, now));
        assert!(clock_skewed(now + 10 * minute, Via::Mailbox, now));
        assert!(clock_skewed(now - 10 * minute, Via::Direct, now));
        assert!(
            !clock_skewed(now - 10_000 * minute, Via::Mailbox, now),
            "mail waits"
        );
        assert!(clock_skewed(u64::MAX, Via::Direct, now));
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        assert_eq!(
            sanitize("hi\x1b[2J\r\nthere\tok"),
            "hi\u{fffd}[2J\u{fffd}\u{fffd}there\tok"
        );
    }
}
