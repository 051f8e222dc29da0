//! What a typed line means, in the terminal client and in `chat`'s line mode alike: a message,
//! or a `/command`.

use common::Name;
use std::path::PathBuf;

/// The commands, in one line, for line mode.
pub(crate) const HELP: &str =
    "commands: /to NAME or /to #ROOM (talk to NAME, or in ROOM), /who (presence of known peers), \
                    /file PATH (send a file), /accept NAME, /block NAME (contacts), /help, /quit";

/// A line of input: a message or a command.
pub(crate) enum Input {
    Text(String),
    To(crate::target::Target),
    File(PathBuf),
    /// Accept (true) or block (false) a name.
    Contact(Name, bool),
    Who,
    Help,
    Quit,
    Bad(String),
}

/// What a typed line means; `None` for a blank one.
pub(crate) fn parse(line: &str) -> Option<Input> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return None;
    }
    if !trimmed.starts_with('/') || trimmed.starts_with("//") {
        let text = trimmed
            .strip_prefix('/')
            .filter(|_| trimmed.starts_with("//"))
            .unwrap_or(line);
        return Some(Input::Text(text.to_string()));
    }
    let mut words = trimmed.split_whitespace();
    Some(match (words.next(), words.next()) {
        (Some("/to"), Some(target)) => match target.parse() {
            Ok(target) => Input::To(target),
            Err(e) => Input::Bad(e),
        },
        (Some("/file"), Some(_)) => Input::File(file_path(
            trimmed.strip_prefix("/file").unwrap_or_default().trim(),
        )),
        (Some(command @ ("/accept" | "/block")), Some(name)) => match Name::new(name) {
            Ok(name) => Input::Contact(name, command == "/accept"),
            Err(e) => Input::Bad(format!("invalid name {name:?}: {e}")),
        },
        (Some("/who"), None) => Input::Who,
        (Some("/help"), _) => Input::Help,
        (Some("/quit"), _) => Input::Quit,
        _ => Input::Bad(format!("unknown command {trimmed:?}; {HELP}")),
    })
}

/// The path typed after `/file` (the rest of the line, so spaces are allowed; `~/` is the home
/// folder), made absolute: a running peer may be the one that opens it.
fn file_path(typed: &str) -> PathBuf {
    let path = match (typed.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(typed),
    };
    std::path::absolute(&path).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_and_block_take_a_valid_name() {
        let c1 = Name::new("c1").expect("name");
        assert!(matches!(parse("/accept c1"), Some(Input::Contact(n, true)) if n == c1));
        assert!(matches!(parse("/block c1"), Some(Input::Contact(n, false)) if n == c1));
        assert!(matches!(parse("/accept Not A Name!"), Some(Input::Bad(_))));
        assert!(matches!(parse("/block"), Some(Input::Bad(_))));
        assert!(matches!(parse("//accept c1"), Some(Input::Text(t)) if t == "/accept c1"));
    }
}
