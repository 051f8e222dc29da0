//! Whom a message is for, and whose conversation a history is: a peer (`c2`) or a room
//! (`#ops`). On the command line, in the history's keys and in the terminal client, a room is
//! told apart by its leading `#`, which no peer name has.

use common::{room::RoomName, Name};
use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// A peer or a room.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// One peer.
    Peer(Name),
    /// A room.
    Room(RoomName),
}

impl Target {
    /// The peer, if it is one.
    pub fn peer(&self) -> Option<&Name> {
        match self {
            Target::Peer(name) => Some(name),
            Target::Room(_) => None,
        }
    }

    /// The room, if it is one.
    pub fn room(&self) -> Option<&RoomName> {
        match self {
            Target::Room(room) => Some(room),
            Target::Peer(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Peer(name) => name.fmt(f),
            Target::Room(room) => room.fmt(f),
        }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('#') {
            s.parse()
                .map(Target::Room)
                .map_err(|e| format!("invalid room {s:?}: {e}"))
        } else {
            Name::new(s)
                .map(Target::Peer)
                .map_err(|e| format!("invalid name {s:?}: {e}"))
        }
    }
}

impl From<Name> for Target {
    fn from(name: Name) -> Self {
        Target::Peer(name)
    }
}

impl From<RoomName> for Target {
    fn from(room: RoomName) -> Self {
        Target::Room(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_makes_a_room_and_its_text_comes_back() {
        for text in ["c2", "#ops"] {
            let target: Target = text.parse().expect("a target");
            assert_eq!(target.to_string(), text);
            assert_eq!(target.room().is_some(), text.starts_with('#'));
        }
        assert!("#".parse::<Target>().is_err());
        assert!("##ops".parse::<Target>().is_err());
        assert!("o#ps".parse::<Target>().is_err());
    }
}
