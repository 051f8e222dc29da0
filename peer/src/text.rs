//! Text from the network made safe to show. Control characters (C0, DEL and C1) could rewrite
//! the user's terminal; bidirectional controls could reorder what is shown so that it reads
//! differently from what was sent ("Trojan Source", CVE-2021-42574); invisible characters could
//! make two different texts or names look the same. On a terminal they are shown as U+FFFD; in
//! JSON Lines they are written as `\uXXXX` escapes, so a program reading the JSON still gets
//! the exact text, and a person watching the stream sees nothing move.
//!
//! Zero-width joiner and non-joiner (U+200D, U+200C) are kept: emoji sequences and several
//! scripts need them, and they cannot reorder text.

/// Characters never shown as they are: controls other than tab and line feed, bidirectional
/// controls, and invisible characters that are not joiners.
pub fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n')
        || matches!(
            c,
            '\u{061C}'              // Arabic letter mark
            | '\u{200B}'            // zero-width space
            | '\u{200E}'..='\u{200F}' // left-to-right and right-to-left marks
            | '\u{2028}'..='\u{2029}' // line and paragraph separators
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner and invisible operators
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{FEFF}'            // byte order mark, zero-width no-break space
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotations
        )
}

/// `text` for a terminal: unsafe characters become U+FFFD; with `lines`, line feeds stay (a
/// caller that breaks rows itself), else they become U+FFFD too; tabs stay.
pub fn for_terminal(text: &str, lines: bool) -> String {
    text.chars()
        .map(|c| {
            if is_unsafe(c) || (c == '\n' && !lines) {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// A line of JSON with every unsafe character that serde_json leaves raw (C1 controls,
/// bidirectional and invisible characters; it escapes C0 itself) written as a `\uXXXX`
/// escape. Such characters can only stand inside JSON strings, where the escape means the
/// same character, so the JSON decodes to the same value.
pub fn escape_json(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if is_unsafe(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_bidi_and_invisible_characters_are_shown_as_replacement() {
        let text = "a\x1b[2Jb\u{202E}cba\u{2066}d\u{200B}e\u{FEFF}f\u{85}g\th";
        assert_eq!(
            for_terminal(text, false),
            "a\u{FFFD}[2Jb\u{FFFD}cba\u{FFFD}d\u{FFFD}e\u{FFFD}f\u{FFFD}g\th"
        );
        assert_eq!(for_terminal("one\ntwo", true), "one\ntwo");
        assert_eq!(for_terminal("one\ntwo", false), "one\u{FFFD}two");
        // Joiners stay: a family emoji is one sequence joined by U+200D.
        let family = "👩\u{200D}👩\u{200D}👧";
        assert_eq!(for_terminal(family, false), family);
    }

    #[test]
    fn json_escapes_mean_the_same_text() -> Result<(), serde_json::Error> {
        let body = "x\u{85}y\u{202E}z\u{1F600}";
        let line = serde_json::to_string(&serde_json::json!({ "body": body }))?;
        assert!(line.contains('\u{85}'), "serde_json leaves C1 raw");
        let escaped = escape_json(&line);
        assert!(!escaped.chars().any(is_unsafe), "{escaped}");
        assert!(escaped.contains("\\u0085") && escaped.contains("\\u202e"));
        let back: serde_json::Value = serde_json::from_str(&escaped)?;
        assert_eq!(back["body"], body);
        Ok(())
    }
}
