//! Peer names: the only strings a directory binds to keys.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 32;

/// A validated peer name: 1 to 32 characters of `a-z 0-9 . _ -`, starting with a letter or
/// digit. Decoding a frame with any other name fails, so no handler ever sees one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// Why a string is not a [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string is empty.
    #[error("a name cannot be empty")]
    Empty,
    /// The string is longer than [`MAX_NAME_LEN`].
    #[error("a name has at most {MAX_NAME_LEN} characters")]
    TooLong,
    /// The string holds a character outside `a-z 0-9 . _ -`.
    #[error("a name may only hold a-z, 0-9, '.', '_' and '-'")]
    BadCharacter,
    /// The string starts with `.`, `_` or `-`.
    #[error("a name starts with a letter or a digit")]
    BadStart,
}

impl Name {
    /// Checks `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(NameError::BadCharacter);
        }
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(NameError::BadStart);
        }
        Ok(Self(s))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        for s in ["c1", "alice", "a.b_c-d", "0", &"x".repeat(32)] {
            assert!(Name::new(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("x".repeat(33)), Err(NameError::TooLong));
        assert_eq!(Name::new("Alice"), Err(NameError::BadCharacter));
        assert_eq!(Name::new("a b"), Err(NameError::BadCharacter));
        assert_eq!(Name::new("../x"), Err(NameError::BadCharacter));
        assert_eq!(Name::new(".x"), Err(NameError::BadStart));
        assert_eq!(Name::new("é"), Err(NameError::BadCharacter));
        assert_eq!(Name::new("-x"), Err(NameError::BadStart));
    }

    #[test]
    fn invalid_names_do_not_decode() {
        let bytes = postcard::to_allocvec("Bad Name").expect("encode");
        assert!(postcard::from_bytes::<Name>(&bytes).is_err());
        let bytes = postcard::to_allocvec("good").expect("encode");
        assert_eq!(
            postcard::from_bytes::<Name>(&bytes).ok(),
            Name::new("good").ok()
        );
    }
}
