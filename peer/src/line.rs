//! What a typed line means, in the terminal client and in `chat`'s line mode alike: a message,
//! or a `/command`.

use crate::rooms::RoomCommand;
use common::{room::RoomName, Name};
use std::path::PathBuf;

/// The commands, in one line, for line mode.
pub(crate) const HELP: &str =
    "commands: /to NAME or /to #ROOM (talk to NAME, or in ROOM), /who (presence of known peers), \
                    /file PATH (send a file), /search TEXT (in this conversation's history), \
                    /close (drop the conversation from the list), /accept NAME, /block NAME (contacts), \
                    /join #ROOM, /leave, /invite NAME..., /kick NAME, /members (rooms), /help, /quit";

/// A line of input: a message or a command.
pub(crate) enum Input {
    Text(String),
    To(crate::target::Target),
    File(PathBuf),
    /// Accept (true) or block (false) a name.
    Contact(Name, bool),
    Who,
    /// Find the messages of the conversation shown that contain this text (any case).
    Search(String),
    /// Drop the conversation shown from the list (its history stays).
    Close,
    /// A room command; those without a room are for the room shown.
    Room(RoomLine),
    Help,
    Quit,
    Bad(String),
}

/// A room command as typed.
pub(crate) enum RoomLine {
    Join(RoomName),
    Leave(Option<RoomName>),
    Invite(Vec<Name>),
    Kick(Name),
    Members(Option<RoomName>),
}

impl RoomLine {
    /// The command, for the room named or, failing that, `shown` (the conversation shown, if
    /// it is a room).
    pub(crate) fn command(self, shown: Option<&RoomName>) -> Result<RoomCommand, String> {
        let room = |named: Option<RoomName>| {
            named
                .or_else(|| shown.cloned())
                .ok_or_else(|| "not in a room: /to #ROOM first, or name the room".to_string())
        };
        Ok(match self {
            RoomLine::Join(room) => RoomCommand::Join { room },
            RoomLine::Leave(named) => RoomCommand::Leave { room: room(named)? },
            RoomLine::Invite(names) => RoomCommand::Invite {
                room: room(None)?,
                names,
            },
            RoomLine::Kick(name) => RoomCommand::Kick {
                room: room(None)?,
                name,
            },
            RoomLine::Members(named) => RoomCommand::Members { room: room(named)? },
        })
    }
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
        (Some("/search"), Some(_)) => Input::Search(
            trimmed
                .strip_prefix("/search")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        (Some("/close"), None) => Input::Close,
        (Some("/join"), Some(room)) => match room.parse() {
            Ok(room) => Input::Room(RoomLine::Join(room)),
            Err(e) => Input::Bad(format!("invalid room {room:?}: {e}")),
        },
        (Some(command @ ("/leave" | "/members")), room) => {
            let room = match room.map(str::parse).transpose() {
                Ok(room) => room,
                Err(e) => return Some(Input::Bad(format!("invalid room: {e}"))),
            };
            Input::Room(match command {
                "/leave" => RoomLine::Leave(room),
                _ => RoomLine::Members(room),
            })
        }
        (Some("/invite"), Some(first)) => {
            let names: Result<Vec<Name>, _> = std::iter::once(first)
                .chain(words)
                .map(|n| Name::new(n).map_err(|e| format!("invalid name {n:?}: {e}")))
                .collect();
            match names {
                Ok(names) => Input::Room(RoomLine::Invite(names)),
                Err(e) => Input::Bad(e),
            }
        }
        (Some("/kick"), Some(name)) => match Name::new(name) {
            Ok(name) => Input::Room(RoomLine::Kick(name)),
            Err(e) => Input::Bad(format!("invalid name {name:?}: {e}")),
        },
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

    #[test]
    fn search_takes_the_rest_of_the_line() {
        assert!(matches!(parse("/search  two words "), Some(Input::Search(t)) if t == "two words"));
        assert!(matches!(parse("/search"), Some(Input::Bad(_))));
        assert!(matches!(parse("/close"), Some(Input::Close)));
        assert!(matches!(parse("/close c2"), Some(Input::Bad(_))));
    }
}
