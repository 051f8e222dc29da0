//! The input line: a small editor for one message. Cursor movement, deletion, kill commands,
//! recall of earlier lines (Up/Down), and pasted text, which keeps its newlines: a paste of
//! several lines becomes one message with several lines. Pure state, no terminal here.

use unicode_width::UnicodeWidthChar;

/// Most lines kept for Up/Down.
const RECALL: usize = 200;

/// The text being typed, and what was typed before.
#[derive(Debug, Default)]
pub(crate) struct Editor {
    text: Vec<char>,
    cursor: usize,
    past: Vec<String>,
    /// Position while browsing `past` with Up/Down; `None` when editing a fresh line.
    browsing: Option<usize>,
    /// The fresh line, kept while browsing.
    draft: Vec<char>,
}

impl Editor {
    /// The text.
    pub(crate) fn text(&self) -> String {
        self.text.iter().collect()
    }

    /// The length of what is typed, in bytes as a message counts them (UTF-8).
    pub(crate) fn bytes(&self) -> usize {
        self.text.iter().map(|c| c.len_utf8()).sum()
    }

    /// Puts `text` back in the box, the cursor at its end: a line that could not be sent.
    pub(crate) fn put_back(&mut self, text: &str) {
        self.set(text.chars().collect());
    }

    /// True when the cursor is after the last character.
    pub(crate) fn at_end(&self) -> bool {
        self.cursor == self.text.len()
    }

    /// True when nothing is typed.
    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Cursor position in characters.
    #[cfg(test)]
    pub(crate) fn cursor(&self) -> usize {
        self.cursor
    }

    /// Inserts one character at the cursor.
    pub(crate) fn insert(&mut self, c: char) {
        self.text.insert(self.cursor, c);
        self.cursor += 1;
    }

    /// Inserts pasted text at the cursor; line ends become `\n`, other control characters
    /// (but tabs, which become a space) are dropped.
    pub(crate) fn paste(&mut self, text: &str) {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        for c in text.chars() {
            match c {
                '\n' => self.insert('\n'),
                '\t' => self.insert(' '),
                c if c.is_control() => {}
                c => self.insert(c),
            }
        }
    }

    /// Deletes the character before the cursor.
    pub(crate) fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.text.remove(self.cursor);
        }
    }

    /// Deletes the character under the cursor.
    pub(crate) fn delete(&mut self) {
        if self.cursor < self.text.len() {
            self.text.remove(self.cursor);
        }
    }

    /// One character left.
    pub(crate) fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    /// One character right.
    pub(crate) fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.len());
    }

    /// One word left.
    pub(crate) fn word_left(&mut self) {
        while self.cursor > 0 && self.text[self.cursor - 1].is_whitespace() {
            self.cursor -= 1;
        }
        while self.cursor > 0 && !self.text[self.cursor - 1].is_whitespace() {
            self.cursor -= 1;
        }
    }

    /// One word right.
    pub(crate) fn word_right(&mut self) {
        let n = self.text.len();
        while self.cursor < n && self.text[self.cursor].is_whitespace() {
            self.cursor += 1;
        }
        while self.cursor < n && !self.text[self.cursor].is_whitespace() {
            self.cursor += 1;
        }
    }

    /// To the start.
    pub(crate) fn home(&mut self) {
        self.cursor = 0;
    }

    /// To the end.
    pub(crate) fn end(&mut self) {
        self.cursor = self.text.len();
    }

    /// Deletes from the start to the cursor (Ctrl-U).
    pub(crate) fn kill_before(&mut self) {
        self.text.drain(..self.cursor);
        self.cursor = 0;
    }

    /// Deletes from the cursor to the end (Ctrl-K).
    pub(crate) fn kill_after(&mut self) {
        self.text.truncate(self.cursor);
    }

    /// Deletes the word before the cursor (Ctrl-W).
    pub(crate) fn kill_word(&mut self) {
        let end = self.cursor;
        self.word_left();
        self.text.drain(self.cursor..end);
    }

    /// Takes the text for sending, remembers it for Up, and clears the line.
    pub(crate) fn take(&mut self) -> String {
        let text = self.text();
        if !text.trim().is_empty() && self.past.last() != Some(&text) {
            self.past.push(text.clone());
            if self.past.len() > RECALL {
                self.past.remove(0);
            }
        }
        self.set(Vec::new());
        self.browsing = None;
        text
    }

    /// Replaces the text, cursor at the end.
    pub(crate) fn set(&mut self, text: Vec<char>) {
        self.text = text;
        self.cursor = self.text.len();
    }

    /// Replaces the word before the cursor with `word` (completion).
    pub(crate) fn complete_word(&mut self, word: &str) {
        let end = self.cursor;
        let mut start = end;
        while start > 0 && !self.text[start - 1].is_whitespace() {
            start -= 1;
        }
        self.text.splice(start..end, word.chars());
        self.cursor = start + word.chars().count();
    }

    /// The word before the cursor, and whether it is the first word of the line.
    pub(crate) fn word_before_cursor(&self) -> (String, bool) {
        let mut start = self.cursor;
        while start > 0 && !self.text[start - 1].is_whitespace() {
            start -= 1;
        }
        let first = self.text[..start].iter().all(|c| c.is_whitespace());
        (self.text[start..self.cursor].iter().collect(), first)
    }

    /// The line typed before (Up).
    pub(crate) fn older(&mut self) {
        let at = match self.browsing {
            None if self.past.is_empty() => return,
            None => {
                self.draft = self.text.clone();
                self.past.len() - 1
            }
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.browsing = Some(at);
        self.set(self.past[at].chars().collect());
    }

    /// The line typed after (Down); past the newest, the line being typed before Up.
    pub(crate) fn newer(&mut self) {
        let Some(at) = self.browsing else {
            return;
        };
        if at + 1 < self.past.len() {
            self.browsing = Some(at + 1);
            self.set(self.past[at + 1].chars().collect());
        } else {
            self.browsing = None;
            let draft = std::mem::take(&mut self.draft);
            self.set(draft);
        }
    }

    /// What to draw in a box `width` columns wide: the visible part of the text (newlines
    /// shown as `↵`) and the cursor's column in it. Scrolls sideways to keep the cursor in
    /// view.
    pub(crate) fn view(&self, width: usize) -> (String, usize) {
        let width = width.max(2);
        let shown: Vec<char> = self
            .text
            .iter()
            .map(|&c| if c == '\n' { '↵' } else { c })
            .collect();
        let w = |c: &char| c.width().unwrap_or(0);
        // Start as far left as possible while the cursor still fits.
        let mut start = 0;
        let mut before: usize = shown[..self.cursor].iter().map(w).sum();
        while before >= width && start < self.cursor {
            before -= w(&shown[start]);
            start += 1;
        }
        let mut out = String::new();
        let mut used = 0;
        for c in &shown[start..] {
            if used + w(c) > width {
                break;
            }
            used += w(c);
            out.push(*c);
        }
        (out, before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Editor {
        let mut e = Editor::default();
        s.chars().for_each(|c| e.insert(c));
        e
    }

    #[test]
    fn editing_moves_and_deletes() {
        let mut e = typed("helo world");
        e.home();
        e.right();
        e.right();
        e.right();
        e.insert('l');
        assert_eq!(e.text(), "hello world");
        e.end();
        e.backspace();
        assert_eq!(e.text(), "hello worl");
        e.home();
        e.delete();
        assert_eq!(e.text(), "ello worl");
        e.end();
        e.kill_word();
        assert_eq!(e.text(), "ello ");
        e.left();
        e.kill_before();
        assert_eq!((e.text().as_str(), e.cursor()), (" ", 0));
        e.kill_after();
        assert!(e.is_empty());
    }

    #[test]
    fn up_and_down_recall_lines_and_keep_the_draft() {
        let mut e = typed("first");
        e.take();
        "second".chars().for_each(|c| e.insert(c));
        e.take();
        "dra".chars().for_each(|c| e.insert(c));
        e.older();
        assert_eq!(e.text(), "second");
        e.older();
        assert_eq!(e.text(), "first");
        e.older();
        assert_eq!(e.text(), "first");
        e.newer();
        assert_eq!(e.text(), "second");
        e.newer();
        assert_eq!(e.text(), "dra");
    }

    #[test]
    fn a_paste_keeps_its_lines_in_one_message() {
        let mut e = typed("> ");
        e.paste("one\r\ntwo\rthree\tfour\x1b");
        assert_eq!(e.text(), "> one\ntwo\nthree four");
        assert_eq!(e.view(40).0, "> one↵two↵three four");
    }

    #[test]
    fn the_view_scrolls_to_keep_the_cursor_visible() {
        let e = typed("abcdefghij");
        let (text, col) = e.view(5);
        assert_eq!((text.as_str(), col), ("ghij", 4));
        let mut e = e;
        e.home();
        assert_eq!(e.view(5), ("abcde".to_string(), 0));
    }

    #[test]
    fn completion_replaces_the_word_before_the_cursor() {
        let mut e = typed("/to c");
        assert_eq!(e.word_before_cursor(), ("c".to_string(), false));
        e.complete_word("c2 ");
        assert_eq!(e.text(), "/to c2 ");
        let e = typed("/w");
        assert_eq!(e.word_before_cursor(), ("/w".to_string(), true));
    }
}
