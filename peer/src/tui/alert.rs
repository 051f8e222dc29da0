//! What the client tells the terminal beyond the screen, so a message in a conversation that is
//! not shown is not missed: the bell, the unread total in the window title (OSC 2), and, when
//! asked for, a desktop notification (OSC 9 and OSC 777, which terminals that know neither
//! ignore).

use crate::text;
use clap::ValueEnum;
use std::io::{self, Write};

/// Most characters of a message's text put in a desktop notification.
const NOTIFY_CHARS: usize = 120;

/// When the client rings the terminal bell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bell {
    /// For a message in a conversation that is not shown.
    Other,
    /// For every message received.
    All,
    /// Never.
    Off,
}

/// How the client alerts the user, as chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alerts {
    /// When to ring.
    pub bell: Bell,
    /// Whether to ask for desktop notifications.
    pub notify: bool,
}

/// The alerts of one run: what was last put in the title, so it is written only on change.
pub(crate) struct Alerter {
    alerts: Alerts,
    title: Option<String>,
}

impl Alerter {
    pub(crate) fn new(alerts: Alerts) -> Self {
        Self {
            alerts,
            title: None,
        }
    }

    /// Alerts for a message from `from` with `body`; `unseen` when its conversation is not
    /// shown.
    pub(crate) fn message(&self, out: &mut impl Write, from: &str, body: &str, unseen: bool) {
        let ring = match self.alerts.bell {
            Bell::Other => unseen,
            Bell::All => true,
            Bell::Off => false,
        };
        let mut bytes = String::new();
        if ring {
            bytes.push('\x07');
        }
        if self.alerts.notify && unseen {
            bytes.push_str(&notification(from, body));
        }
        if !bytes.is_empty() {
            let _ = out.write_all(bytes.as_bytes()).and_then(|()| out.flush());
        }
    }

    /// Puts `title` in the window title if it is not there already.
    pub(crate) fn title(&mut self, out: &mut impl Write, title: String) -> io::Result<()> {
        if self.title.as_ref() == Some(&title) {
            return Ok(());
        }
        out.write_all(format!("\x1b]2;{}\x07", one_line(&title)).as_bytes())?;
        out.flush()?;
        self.title = Some(title);
        Ok(())
    }
}

/// The window title: our name and the conversation shown, the unread total in front.
pub(crate) fn title(me: &str, shown: &str, unread: usize) -> String {
    match unread {
        0 => format!("{me} · {shown}"),
        n => format!("({n}) {me} · {shown}"),
    }
}

/// A desktop notification, in both forms terminals know: OSC 777 (title and body) and OSC 9
/// (body only).
fn notification(from: &str, body: &str) -> String {
    let (from, body) = (one_line(from), one_line(body));
    let body: String = body.chars().take(NOTIFY_CHARS).collect();
    format!("\x1b]777;notify;{from};{body}\x07\x1b]9;{from}: {body}\x07")
}

/// Text safe inside an OSC string: made safe as every line from the network is (no controls,
/// so no BEL or ESC to end the string early), on one line.
fn one_line(s: &str) -> String {
    text::for_terminal(s, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(alerts: Alerts, unseen: bool, body: &str) -> String {
        let mut out = Vec::new();
        Alerter::new(alerts).message(&mut out, "c2", body, unseen);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn the_bell_rings_as_chosen() {
        let other = Alerts {
            bell: Bell::Other,
            notify: false,
        };
        assert_eq!(written(other, true, "hi"), "\x07");
        assert_eq!(written(other, false, "hi"), "");
        let all = Alerts {
            bell: Bell::All,
            ..other
        };
        assert_eq!(written(all, false, "hi"), "\x07");
        let off = Alerts {
            bell: Bell::Off,
            ..other
        };
        assert_eq!(written(off, true, "hi"), "");
    }

    #[test]
    fn a_notification_cannot_end_its_string_early_or_run_long() {
        let alerts = Alerts {
            bell: Bell::Off,
            notify: true,
        };
        let hostile = format!("a\x07b\x1b]2;pwned\x07{}", "x".repeat(500));
        let out = written(alerts, true, &hostile);
        // The two sequences' own terminators and introducers, nothing from the text.
        assert_eq!(out.matches('\x07').count(), 2, "{out:?}");
        assert_eq!(out.matches('\x1b').count(), 2, "{out:?}");
        assert!(out.len() < 2 * NOTIFY_CHARS * 4 + 64, "{} bytes", out.len());
        assert_eq!(written(alerts, false, "seen"), "", "only for unseen ones");
    }

    #[test]
    fn the_title_is_written_on_change_only() {
        let mut alerter = Alerter::new(Alerts {
            bell: Bell::Off,
            notify: false,
        });
        let mut out = Vec::new();
        alerter
            .title(&mut out, title("c1", "c2", 0))
            .expect("write");
        alerter
            .title(&mut out, title("c1", "c2", 0))
            .expect("write");
        alerter
            .title(&mut out, title("c1", "c2", 3))
            .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "\x1b]2;c1 · c2\x07\x1b]2;(3) c1 · c2\x07"
        );
    }
}
