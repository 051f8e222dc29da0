//! Peer names: the only strings a directory binds to keys.
//!
//! Two sets of rules. Every [`Name`] keeps to the first ([`Name::new`]): it is what decodes, so
//! names bound under it keep working. A name bound for the first time must also keep to the
//! second ([`Name::check_new`]) and must not look like a name already bound
//! ([`Name::skeleton`]), so `a1ice`, `alice.` and `al--ice` cannot pass for `alice`.

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
    /// The string ends with a separator or holds two in a row; see [`Name::check_new`].
    #[error("a name cannot end with '.', '_' or '-', nor hold two of them in a row")]
    BadSeparator,
}

fn is_separator(b: u8) -> bool {
    b"._-".contains(&b)
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

    /// The rule a name must also keep to when it is bound for the first time: it ends with a
    /// letter or a digit, and its separators (`.`, `_`, `-`) stand alone. Not part of
    /// [`Name::new`], so that names bound before the rule still decode.
    pub fn check_new(&self) -> Result<(), NameError> {
        let bytes = self.0.as_bytes();
        let doubled = bytes
            .windows(2)
            .any(|w| is_separator(w[0]) && is_separator(w[1]));
        if doubled || bytes.last().copied().is_some_and(is_separator) {
            return Err(NameError::BadSeparator);
        }
        Ok(())
    }

    /// What the name looks like at a glance: separators dropped, and each character or pair
    /// that reads like another replaced by it (`0`→`o`, `1`→`l`, `rn`→`m`, `vv`→`w`). Two
    /// different names with the same skeleton are lookalikes, so the directory binds only the
    /// first.
    pub fn skeleton(&self) -> String {
        let letters: String = self
            .0
            .bytes()
            .filter(|b| !is_separator(*b))
            .map(|b| match b {
                b'0' => 'o',
                b'1' => 'l',
                b => char::from(b),
            })
            .collect();
        letters.replace("rn", "m").replace("vv", "w")
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
    fn a_new_name_ends_with_a_letter_or_digit_and_has_single_separators() {
        for s in ["alice", "a.b_c-d", "r2-d2", "x"] {
            assert_eq!(name(s).check_new(), Ok(()), "{s}");
        }
        for s in ["alice.", "alice-", "alice_", "al..ice", "al-_ice", "a--b"] {
            assert_eq!(name(s).check_new(), Err(NameError::BadSeparator), "{s}");
        }
        // Still names: bound before the rule, they keep decoding.
        assert!(
            postcard::from_bytes::<Name>(&postcard::to_allocvec("alice-").expect("encode")).is_ok()
        );
    }

    #[test]
    fn lookalikes_share_a_skeleton() {
        let alice = name("alice").skeleton();
        for s in ["a1ice", "al-ice", "a.lice", "al_ice"] {
            assert_eq!(name(s).skeleton(), alice, "{s}");
        }
        assert_eq!(name("b0b").skeleton(), name("bob").skeleton());
        assert_eq!(name("rnary").skeleton(), name("mary").skeleton());
        assert_eq!(name("vvill").skeleton(), name("will").skeleton());
        for s in ["alicia", "bob", "allce"] {
            assert_ne!(name(s).skeleton(), alice, "{s}");
        }
    }

    fn name(s: &str) -> Name {
        Name::new(s).expect("valid name")
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
