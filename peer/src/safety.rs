//! Safety numbers: what two people compare, read aloud or side by side, to know that each holds
//! the other's real key and no directory sits between them (`peer verify NAME`).
//!
//! The construction is Signal's numeric fingerprint, on our identities: for each side, SHA-512
//! iterated [`ITERATIONS`] times over a version, the side's key fingerprint ([`KeyId`]) and its
//! name; the first 30 bytes of the result, as six 5-byte numbers modulo 100 000, give 30
//! digits. The safety number is both sides' digits, the lower first, so that both compute the
//! same 60 digits. The iterations make a key whose number collides with a given one costly to
//! search for.

use common::{KeyId, Name};
use ring::digest::{Context, SHA512};

/// Hash iterations per side, as Signal uses.
pub const ITERATIONS: usize = 5200;
/// The version of the construction, hashed in first.
const VERSION: [u8; 2] = [0, 1];

/// The 60 digits two peers compare: the same on both sides.
pub fn safety_number(a: (&Name, &KeyId), b: (&Name, &KeyId)) -> String {
    let (x, y) = (side(a.0, a.1), side(b.0, b.1));
    if x <= y {
        x + &y
    } else {
        y + &x
    }
}

/// The digits in groups of five, for reading aloud.
pub fn groups(digits: &str) -> Vec<&str> {
    digits
        .as_bytes()
        .chunks(5)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect()
}

/// One side's 30 digits.
fn side(name: &Name, key: &KeyId) -> String {
    let mut hash = {
        let mut first = Context::new(&SHA512);
        first.update(&VERSION);
        first.update(&key.0);
        first.update(name.as_str().as_bytes());
        first.finish()
    };
    for _ in 1..ITERATIONS {
        let mut next = Context::new(&SHA512);
        next.update(hash.as_ref());
        next.update(&key.0);
        hash = next.finish();
    }
    hash.as_ref()[..30]
        .chunks(5)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    #[test]
    fn both_sides_compute_the_same_sixty_digits() {
        let (alice, bob) = (name("alice"), name("bob"));
        let (ka, kb) = (KeyId([1; 32]), KeyId([2; 32]));
        let mine = safety_number((&alice, &ka), (&bob, &kb));
        let theirs = safety_number((&bob, &kb), (&alice, &ka));
        assert_eq!(mine, theirs);
        assert_eq!(mine.len(), 60);
        assert!(mine.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(groups(&mine).len(), 12);
    }

    #[test]
    fn another_key_or_name_gives_another_number() {
        let (alice, bob) = (name("alice"), name("bob"));
        let (ka, kb) = (KeyId([1; 32]), KeyId([2; 32]));
        let real = safety_number((&alice, &ka), (&bob, &kb));
        let swapped_key = safety_number((&alice, &ka), (&bob, &KeyId([3; 32])));
        let other_name = safety_number((&alice, &ka), (&name("bob2"), &kb));
        assert_ne!(real, swapped_key);
        assert_ne!(real, other_name);
    }

    #[test]
    fn the_digits_are_pinned() {
        // A change to the construction changes every number users compare: it needs a new
        // VERSION, and both sides updated.
        let n = safety_number(
            (&name("alice"), &KeyId([1; 32])),
            (&name("bob"), &KeyId([2; 32])),
        );
        assert_eq!(n, PINNED, "the construction changed");
    }

    // Computed independently too (Python's hashlib, the same steps).
    const PINNED: &str = "190792886681909414257149810750579710751039276752270474487359";
}
