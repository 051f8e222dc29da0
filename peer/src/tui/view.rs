//! Drawing the [`App`]: the side list of conversations with presence and unread counts, the
//! message pane (timestamps, a stable colour per sender, the state of our messages), and the
//! input line. Messages are wrapped here, by display width, so scrolling counts real rows.

use super::app::{presence_text, App, Entry, Presence};
use crate::console::{self, clock};
use crate::target::Target;
use crate::{history::HistoryState, inbox::Via};
use common::defaults::MAX_BODY_LEN;
use common::Name;
use ratatui::{
    layout::{Constraint, Layout, Position, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Wrap},
    Frame,
};
use unicode_width::UnicodeWidthChar;

/// Width of the side list, borders included.
const SIDE: u16 = 26;

/// Draws everything and places the cursor in the input line.
pub(crate) fn draw(frame: &mut Frame, app: &mut App) {
    let [side, main] =
        Layout::horizontal([Constraint::Length(SIDE), Constraint::Min(20)]).areas(frame.area());
    let status = app
        .status_line(std::time::Instant::now())
        .map(|(text, alarm)| (format!(" {text}"), alarm));
    // As many rows as the line needs, up to three.
    let status_rows = status.as_ref().map_or(0, |(text, _)| {
        let width = usize::from(main.width.max(1));
        let used: usize = text.chars().filter_map(|c| c.width()).sum();
        used.div_ceil(width).clamp(1, 3) as u16
    });
    let [messages, status_area, input] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(status_rows),
        Constraint::Length(3),
    ])
    .areas(main);
    draw_side(frame, app, side);
    draw_messages(frame, app, messages);
    if let Some((text, alarm)) = status {
        let style = match alarm {
            true => Style::default().fg(Color::Yellow),
            false => Style::default().fg(Color::DarkGray),
        };
        let line = Paragraph::new(Line::styled(text, style)).wrap(Wrap { trim: false });
        frame.render_widget(line, status_area);
    }
    draw_input(frame, app, input);
}

/// One colour per name, stable across runs: the line mode's ([`console::name_colour`]), never
/// red, which this client keeps for what failed.
pub(crate) fn colour(name: &Name) -> Color {
    const COLOURS: [Color; console::NAME_COLOURS] = [
        Color::Green,
        Color::Yellow,
        Color::Blue,
        Color::Magenta,
        Color::Cyan,
    ];
    COLOURS[console::name_colour(name)]
}

fn draw_side(frame: &mut Frame, app: &App, area: Rect) {
    let dim = Style::default().fg(Color::DarkGray);
    let mut lines = Vec::new();
    for (i, c) in app.conversations.iter().enumerate() {
        let (dot, dot_style) = match c.presence {
            Presence::Online => ("●", Style::default().fg(Color::Green)),
            Presence::Offline(_) => ("○", dim),
            Presence::Unknown => ("·", dim),
            Presence::NoSuchName => ("✗", Style::default().fg(Color::Red)),
        };
        let mut name_style = Style::default().fg(match &c.target {
            Target::Peer(name) => colour(name),
            Target::Room(room) => colour(room.name()),
        });
        if i == app.current {
            name_style = name_style.add_modifier(Modifier::REVERSED | Modifier::BOLD);
        }
        let mut line = vec![
            Span::styled(dot, dot_style),
            Span::raw(" "),
            Span::styled(c.target.to_string(), name_style),
        ];
        if c.unread > 0 {
            line.push(Span::styled(
                format!(" ({})", c.unread),
                Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
            ));
        }
        lines.push(Line::from(line));
        let under = match &c.target {
            Target::Peer(_) => presence_text(&c.presence),
            Target::Room(_) => format!("room, {} members", c.members.len()),
        };
        lines.push(Line::from(Span::styled(format!("  {under}"), dim)));
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {} ", app.me));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_messages(frame: &mut Frame, app: &mut App, area: Rect) {
    let waiting = !app.directory_up();
    let conv = &app.conversations[app.current];
    let name = conv.target.to_string();
    let presence = match &conv.target {
        Target::Peer(_) => presence_text(&conv.presence),
        Target::Room(_) => format!("{} members", conv.members.len()),
    };
    let inner_width = area.width.saturating_sub(2) as usize;
    let height = area.height.saturating_sub(2) as usize;
    let mut rows = Vec::new();
    for (i, entry) in conv.entries.iter().enumerate() {
        if conv.marker == Some(i) {
            rows.push(new_line(inner_width));
        }
        rows.extend(entry_rows(entry, &app.me, inner_width, waiting));
    }
    let max_scroll = rows.len().saturating_sub(height);
    app.scroll = app.scroll.min(max_scroll);
    app.page = height.max(1);
    let end = rows.len() - app.scroll;
    let start = end.saturating_sub(height);
    let title = if app.scroll > 0 {
        format!(" {name} · {presence} · ↓ {} more (PageDown) ", app.scroll)
    } else {
        format!(" {name} · {presence} · /help ")
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let shown: Vec<Line> = rows.drain(start..end).collect();
    frame.render_widget(Paragraph::new(shown).block(block), area);
}

/// The line drawn where the messages that came while the user was elsewhere begin.
fn new_line(width: usize) -> Line<'static> {
    const LABEL: &str = " new ";
    let side = width.saturating_sub(LABEL.len()) / 2;
    let text = format!("{}{LABEL}{}", "─".repeat(side), "─".repeat(side));
    Line::styled(text, Style::default().fg(Color::Yellow))
}

fn draw_input(frame: &mut Frame, app: &App, area: Rect) {
    let width = area.width.saturating_sub(2) as usize;
    let (text, column) = app.input.view(width.saturating_sub(1));
    let bytes = app.input.bytes();
    let title = if app.quitting {
        format!(" leaving: waiting for {} message(s) ", app.outstanding())
    } else if bytes > MAX_BODY_LEN * 3 / 4 {
        // Near the limit, how near; past it, in red: Enter would refuse it.
        let size = indicatif::HumanBytes(bytes as u64);
        let limit = indicatif::HumanBytes(MAX_BODY_LEN as u64);
        format!(" to {} · {size} of {limit} ", app.shown().target)
    } else {
        format!(" to {} ", app.shown().target)
    };
    let mut block = Block::default().borders(Borders::ALL).title(title);
    if bytes > MAX_BODY_LEN {
        block = block.border_style(Style::default().fg(Color::Red));
    }
    frame.render_widget(Paragraph::new(text).block(block), area);
    let x = area.x + 1 + u16::try_from(column).unwrap_or(0);
    frame.set_cursor_position(Position::new(
        x.min(area.right().saturating_sub(2)),
        area.y + 1,
    ));
}

/// The rows of one entry, wrapped to `width` columns; continuation rows are indented.
/// `waiting`: the directory cannot be reached, so our messages still being sent wait for it
/// (or for a direct link).
fn entry_rows(entry: &Entry, me: &Name, width: usize, waiting: bool) -> Vec<Line<'static>> {
    let dim = Style::default().fg(Color::DarkGray);
    let mut spans: Vec<(String, Style)> = Vec::new();
    match entry {
        Entry::Message {
            from,
            at_ms,
            body,
            state,
            ..
        } => {
            spans.push((format!("{} ", clock(*at_ms)), dim));
            let mut name_style = Style::default()
                .fg(colour(from))
                .add_modifier(Modifier::BOLD);
            if from == me {
                name_style = name_style.add_modifier(Modifier::DIM);
            }
            spans.push((format!("{from}: "), name_style));
            spans.push((clean(body), Style::default()));
            let label = match state {
                HistoryState::Sending if waiting => Some((
                    "… waiting for the directory".to_string(),
                    Style::default().fg(Color::Yellow),
                )),
                state => state_label(state),
            };
            if let Some((text, style)) = label {
                spans.push((format!("  {text}"), style));
            }
        }
        Entry::Notice { at_ms, text, alarm } => {
            spans.push((format!("{} ", clock(*at_ms)), dim));
            let style = if *alarm {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
                    .fg(Color::DarkGray)
                    .add_modifier(Modifier::ITALIC)
            };
            spans.push((format!("-- {} --", clean(text)), style));
        }
    }
    wrap(&spans, width, 9)
}

/// How one of our messages stands, or `None` for theirs (mailbox ones say so).
fn state_label(state: &HistoryState) -> Option<(String, Style)> {
    let style = |c: Color| Style::default().fg(c);
    Some(match state {
        HistoryState::Received { via: Via::Mailbox }
        | HistoryState::Verified {
            via: Via::Mailbox, ..
        } => ("(via mailbox)".into(), style(Color::DarkGray)),
        HistoryState::Received { via: Via::Direct }
        | HistoryState::Verified {
            via: Via::Direct, ..
        } => return None,
        HistoryState::Sending => ("… sending".into(), style(Color::Yellow)),
        HistoryState::Delivered { path } => match path.and_then(|p| p.words()) {
            Some(words) => (format!("✓ delivered ({words})"), style(Color::Green)),
            None => ("✓ delivered".into(), style(Color::Green)),
        },
        HistoryState::Queued => ("✉ queued (mailbox)".into(), style(Color::Cyan)),
        HistoryState::DeliveredLater { .. } => ("✓ delivered later".into(), style(Color::Green)),
        HistoryState::Failed { reason } => (format!("✗ failed: {reason}"), style(Color::Red)),
    })
}

/// Text from the network, made safe to draw (see [`crate::text`]); tabs as a space; line
/// breaks stay (they break the row).
fn clean(text: &str) -> String {
    crate::text::for_terminal(text, true).replace('\t', " ")
}

/// Lays styled text out in rows of at most `width` columns, breaking at `\n` and where a row
/// is full; every row after the first starts with `indent` spaces.
fn wrap(spans: &[(String, Style)], width: usize, indent: usize) -> Vec<Line<'static>> {
    let width = width.max(indent + 4);
    let mut rows: Vec<Line<'static>> = Vec::new();
    let mut row: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    let mut piece = String::new();
    let new_row = |rows: &mut Vec<Line<'static>>, row: &mut Vec<Span<'static>>| {
        rows.push(Line::from(std::mem::take(row)));
        row.push(Span::raw(" ".repeat(indent)));
    };
    for (text, style) in spans {
        for c in text.chars() {
            let w = c.width().unwrap_or(0);
            if c == '\n' || used + w > width {
                row.push(Span::styled(std::mem::take(&mut piece), *style));
                new_row(&mut rows, &mut row);
                used = indent;
                if c == '\n' || c == ' ' {
                    continue;
                }
            }
            piece.push(c);
            used += w;
        }
        row.push(Span::styled(std::mem::take(&mut piece), *style));
    }
    rows.push(Line::from(row));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red is for what failed: no name is drawn in it, the user's own included.
    #[test]
    fn no_name_is_drawn_in_red() {
        let names = ["alice", "bob", "carol", "c1", "c2", "c3"].map(String::from);
        let more = (0..1000).map(|i| format!("peer{i}"));
        for name in names.into_iter().chain(more) {
            let name = Name::new(name).expect("a valid name");
            assert_ne!(colour(&name), Color::Red, "{name}");
        }
    }

    fn text(line: &Line) -> String {
        line.spans.iter().map(|s| s.content.as_ref()).collect()
    }

    #[test]
    fn long_and_multi_line_bodies_wrap_with_an_indent() {
        let spans = vec![
            ("12:00:00 ".to_string(), Style::default()),
            ("c2: ".to_string(), Style::default()),
            ("one two three\nfour".to_string(), Style::default()),
        ];
        let rows: Vec<String> = wrap(&spans, 20, 9).iter().map(text).collect();
        assert_eq!(
            rows,
            ["12:00:00 c2: one two", "         three", "         four"]
        );
    }

    #[test]
    fn control_characters_never_reach_the_screen() {
        assert_eq!(clean("a\x1b[2Jb\tc\nd"), "a\u{fffd}[2Jb c\nd");
    }
}
