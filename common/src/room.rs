//! Rooms: their names, and the signed log of who is in them.
//!
//! A room's membership is a chain of [`Op`]s, each signed by the peer that made it and linked
//! to the one before by its hash, starting with the creator's [`Action::Create`]. Every member
//! replays the chain into a [`Roster`] and checks each step: the signature, the link, the
//! version, and that the signer was allowed to do it (an admin invites and kicks; anyone joins
//! a public room; a member leaves). The directory stores the chain and hands it out, but cannot
//! add, remove or reorder members unnoticed: it has no member's key, and dropping an op from
//! the middle breaks the links. It can only hold back the newest ops, which a member notices
//! as soon as it sees a later one, and never goes back to an older version than one it saw.

use crate::{seal::Signature, KeyId, Name};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt, str::FromStr};

/// Most members a room has: the 257th is refused with [`RoomError::Full`].
pub const MAX_MEMBERS: usize = 256;

/// What a member signs for an op, before the op's encoding without its signature.
const OP_CONTEXT: &[u8] = b"p2pchat room op v1\0";

/// A room's name: `#` and then the characters of a peer [`Name`]. On the wire it is the name
/// without the `#`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoomName(Name);

impl RoomName {
    /// The room called `#name`.
    pub fn new(name: Name) -> Self {
        Self(name)
    }

    /// The name after the `#`.
    pub fn name(&self) -> &Name {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomName(#{})", self.0)
    }
}

impl FromStr for RoomName {
    type Err = RoomError;
    fn from_str(s: &str) -> Result<Self, RoomError> {
        let rest = s.strip_prefix('#').ok_or(RoomError::NotARoom)?;
        Name::new(rest).map(Self).map_err(|_| RoomError::NotARoom)
    }
}

/// Who may join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Anyone.
    Public,
    /// Those an admin invited.
    Private,
}

/// What a member may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Invite and kick; the creator is the first.
    Admin,
    /// Post and read.
    Member,
}

/// One change of a room's membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// The room begins; its creator is its first member and admin.
    Create {
        /// Public or private.
        kind: Kind,
    },
    /// The signer joins: anyone for a public room, the invited for a private one.
    Join,
    /// An admin adds `name` (with its key) to the room.
    Invite {
        /// Who.
        name: Name,
        /// Its key, as the admin knows it.
        key: KeyId,
    },
    /// The signer leaves.
    Leave,
    /// An admin removes `name`.
    Kick {
        /// Who.
        name: Name,
    },
}

/// A signed change of membership: the `version`th of its room, after the op whose hash is
/// `prev`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The room.
    pub room: RoomName,
    /// 0 for `Create`, then one more per op.
    pub version: u64,
    /// [`Op::hash`] of the op before; zeros for `Create`.
    pub prev: [u8; 32],
    /// Who made it.
    pub actor: Name,
    /// The actor's Ed25519 identity key; its [`KeyId::of_ed25519`] is the actor's key id.
    pub actor_key: [u8; 32],
    /// When, by the actor's clock (ms since the epoch).
    pub at_ms: u64,
    /// What changed.
    pub action: Action,
    /// The actor's signature of everything above.
    pub signature: Signature,
}

/// The part of an op that is signed and hashed into the next op's `prev`.
#[derive(Serialize)]
struct Unsigned<'a> {
    room: &'a RoomName,
    version: u64,
    prev: &'a [u8; 32],
    actor: &'a Name,
    actor_key: &'a [u8; 32],
    at_ms: u64,
    action: &'a Action,
}

impl Op {
    fn unsigned(&self) -> Unsigned<'_> {
        Unsigned {
            room: &self.room,
            version: self.version,
            prev: &self.prev,
            actor: &self.actor,
            actor_key: &self.actor_key,
            at_ms: self.at_ms,
            action: &self.action,
        }
    }

    fn signed_bytes(unsigned: &Unsigned<'_>) -> Vec<u8> {
        let mut bytes = OP_CONTEXT.to_vec();
        bytes.extend(postcard::to_allocvec(unsigned).unwrap_or_default());
        bytes
    }

    /// Makes and signs an op with `key`, the identity key of `actor`.
    pub fn sign(
        key: &Ed25519KeyPair,
        room: RoomName,
        (version, prev): (u64, [u8; 32]),
        actor: Name,
        at_ms: u64,
        action: Action,
    ) -> Self {
        use ring::signature::KeyPair as _;
        let mut actor_key = [0u8; 32];
        actor_key.copy_from_slice(key.public_key().as_ref());
        let unsigned = Unsigned {
            room: &room,
            version,
            prev: &prev,
            actor: &actor,
            actor_key: &actor_key,
            at_ms,
            action: &action,
        };
        let mut signature = [0u8; 64];
        signature.copy_from_slice(key.sign(&Self::signed_bytes(&unsigned)).as_ref());
        Op {
            room,
            version,
            prev,
            actor,
            actor_key,
            at_ms,
            action,
            signature: Signature(signature),
        }
    }

    /// SHA-256 of the signed op: what the next op names as `prev`.
    pub fn hash(&self) -> [u8; 32] {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        hash
    }

    /// The actor's key id.
    pub fn actor_id(&self) -> KeyId {
        KeyId::of_ed25519(&self.actor_key)
    }

    fn signature_holds(&self) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.actor_key)
            .verify(&Self::signed_bytes(&self.unsigned()), &self.signature.0)
            .is_ok()
    }
}

/// One member of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its key.
    pub key: KeyId,
    /// What it may do.
    pub role: Role,
}

/// A room's membership, as replayed and checked from its ops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// The room.
    pub room: RoomName,
    /// Public or private.
    pub kind: Kind,
    /// The version of the last op applied.
    pub version: u64,
    /// Its hash.
    pub head: [u8; 32],
    /// Who is in it.
    pub members: BTreeMap<Name, Member>,
}

/// What an op did, for the notice members see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// `name` created the room.
    Created(Name),
    /// `name` joined.
    Joined(Name),
    /// `by` invited `name`.
    Invited {
        /// The new member.
        name: Name,
        /// The admin.
        by: Name,
    },
    /// `name` left.
    Left(Name),
    /// `by` kicked `name`.
    Kicked {
        /// The former member.
        name: Name,
        /// The admin.
        by: Name,
    },
}

/// Why an op or a room name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// Not `#` and a valid name.
    #[error("a room's name is '#' and a name: letters, digits, and single '.', '_' or '-'")]
    NotARoom,
    /// The signature does not verify.
    #[error("the op's signature does not verify")]
    BadSignature,
    /// The version or the link to the op before is wrong: an op is missing, or was reordered.
    #[error("the op does not follow the last one")]
    OutOfOrder,
    /// The op names another room.
    #[error("the op is for another room")]
    WrongRoom,
    /// The actor's key is not the one the room knows for its name, or it may not do this.
    #[error("the op's signer may not do this")]
    NotAllowed,
    /// The room has [`MAX_MEMBERS`] members.
    #[error("the room is full (at most {MAX_MEMBERS} members)")]
    Full,
    /// The first op must create the room, and only the first.
    #[error("a room begins with its creation, once")]
    NotACreation,
}

impl Roster {
    /// The roster a room's first op makes.
    pub fn create(op: &Op) -> Result<Self, RoomError> {
        let Action::Create { kind } = op.action else {
            return Err(RoomError::NotACreation);
        };
        if op.version != 0 || op.prev != [0; 32] {
            return Err(RoomError::OutOfOrder);
        }
        if !op.signature_holds() {
            return Err(RoomError::BadSignature);
        }
        let creator = Member {
            key: op.actor_id(),
            role: Role::Admin,
        };
        Ok(Self {
            room: op.room.clone(),
            kind,
            version: 0,
            head: op.hash(),
            members: BTreeMap::from([(op.actor.clone(), creator)]),
        })
    }

    /// Replays a whole chain of ops, from the room's creation.
    pub fn replay<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Result<Self, RoomError> {
        let mut ops = ops.into_iter();
        let first = ops.next().ok_or(RoomError::NotACreation)?;
        let mut roster = Self::create(first)?;
        for op in ops {
            roster.apply(op)?;
        }
        Ok(roster)
    }

    /// Checks the next op and applies it.
    pub fn apply(&mut self, op: &Op) -> Result<Change, RoomError> {
        if op.room != self.room {
            return Err(RoomError::WrongRoom);
        }
        if op.version != self.version + 1 || op.prev != self.head {
            return Err(RoomError::OutOfOrder);
        }
        if !op.signature_holds() {
            return Err(RoomError::BadSignature);
        }
        let actor = op.actor_id();
        let acting = self.members.get(&op.actor).filter(|m| m.key == actor);
        let change = match &op.action {
            Action::Create { .. } => return Err(RoomError::NotACreation),
            Action::Join => {
                if self.kind == Kind::Private || self.members.contains_key(&op.actor) {
                    return Err(RoomError::NotAllowed);
                }
                self.admit(&op.actor, actor)?;
                Change::Joined(op.actor.clone())
            }
            Action::Invite { name, key } => {
                if acting.map(|m| m.role) != Some(Role::Admin) || self.members.contains_key(name) {
                    return Err(RoomError::NotAllowed);
                }
                self.admit(name, *key)?;
                Change::Invited {
                    name: name.clone(),
                    by: op.actor.clone(),
                }
            }
            Action::Leave => {
                if acting.is_none() {
                    return Err(RoomError::NotAllowed);
                }
                self.members.remove(&op.actor);
                Change::Left(op.actor.clone())
            }
            Action::Kick { name } => {
                if acting.map(|m| m.role) != Some(Role::Admin) || !self.members.contains_key(name) {
                    return Err(RoomError::NotAllowed);
                }
                self.members.remove(name);
                Change::Kicked {
                    name: name.clone(),
                    by: op.actor.clone(),
                }
            }
        };
        self.version = op.version;
        self.head = op.hash();
        Ok(change)
    }

    fn admit(&mut self, name: &Name, key: KeyId) -> Result<(), RoomError> {
        if self.members.len() >= MAX_MEMBERS {
            return Err(RoomError::Full);
        }
        let role = Role::Member;
        self.members.insert(name.clone(), Member { key, role });
        Ok(())
    }

    /// True when `name`, with `key`, is a member.
    pub fn has(&self, name: &Name, key: &KeyId) -> bool {
        self.members.get(name).is_some_and(|m| m.key == *key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[n; 32]).expect("a test key")
    }

    fn id(n: u8) -> KeyId {
        use ring::signature::KeyPair as _;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(key(n).public_key().as_ref());
        KeyId::of_ed25519(&raw)
    }

    fn name(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    fn room() -> RoomName {
        "#ops".parse().expect("room")
    }

    /// Signs the next op of `roster` by test key `n` acting as `who`.
    fn next(roster: &Roster, n: u8, who: &str, action: Action) -> Op {
        let at = (roster.version + 1, roster.head);
        Op::sign(&key(n), room(), at, name(who), 1, action)
    }

    fn created(kind: Kind) -> (Roster, Vec<Op>) {
        let op = Op::sign(
            &key(1),
            room(),
            (0, [0; 32]),
            name("alice"),
            1,
            Action::Create { kind },
        );
        (Roster::create(&op).expect("created"), vec![op])
    }

    #[test]
    fn room_names_need_their_hash() {
        assert_eq!(
            "#ops".parse::<RoomName>().map(|r| r.to_string()),
            Ok("#ops".into())
        );
        assert_eq!("ops".parse::<RoomName>(), Err(RoomError::NotARoom));
        assert_eq!("#Ops".parse::<RoomName>(), Err(RoomError::NotARoom));
    }

    #[test]
    fn a_private_room_admits_whom_an_admin_invites_and_no_one_else() {
        let (mut r, _) = created(Kind::Private);
        let bob = Action::Invite {
            name: name("bob"),
            key: id(2),
        };
        assert_eq!(
            r.apply(&next(&r, 2, "bob", Action::Join)),
            Err(RoomError::NotAllowed)
        );
        let by_bob = next(&r, 2, "bob", bob.clone());
        assert_eq!(r.apply(&by_bob), Err(RoomError::NotAllowed));
        let invite = next(&r, 1, "alice", bob);
        assert!(matches!(r.apply(&invite), Ok(Change::Invited { .. })));
        assert!(r.has(&name("bob"), &id(2)));
        // Bob may not kick alice; alice may kick bob; bob may not then leave.
        let kick = Action::Kick {
            name: name("alice"),
        };
        assert_eq!(
            r.apply(&next(&r, 2, "bob", kick)),
            Err(RoomError::NotAllowed)
        );
        let kick = Action::Kick { name: name("bob") };
        assert!(r.apply(&next(&r, 1, "alice", kick)).is_ok());
        assert_eq!(
            r.apply(&next(&r, 2, "bob", Action::Leave)),
            Err(RoomError::NotAllowed)
        );
    }

    #[test]
    fn a_public_room_admits_anyone_who_joins_up_to_the_limit() {
        let (mut r, _) = created(Kind::Public);
        let join = |r: &Roster, n: u16| {
            let mut seed = [7u8; 32];
            seed[..2].copy_from_slice(&n.to_le_bytes());
            let key = Ed25519KeyPair::from_seed_unchecked(&seed).expect("a test key");
            let at = (r.version + 1, r.head);
            Op::sign(&key, room(), at, name(&format!("p{n}")), 1, Action::Join)
        };
        // Alice and 255 others: 256 members.
        for n in 1..MAX_MEMBERS as u16 {
            let op = join(&r, n);
            assert!(r.apply(&op).is_ok(), "member {n}");
        }
        assert_eq!(r.members.len(), MAX_MEMBERS);
        assert_eq!(r.apply(&join(&r, 999)), Err(RoomError::Full));
        // Joining twice is refused.
        assert_eq!(r.apply(&join(&r, 1)), Err(RoomError::NotAllowed));
    }

    /// What a directory could do to the chain it stores: drop, reorder, replay, alter or forge
    /// ops. Every one is refused.
    #[test]
    fn a_chain_the_directory_changed_does_not_replay() {
        let (mut r, mut ops) = created(Kind::Private);
        for (n, who) in [(2, "bob"), (3, "carol")] {
            let op = next(
                &r,
                1,
                "alice",
                Action::Invite {
                    name: name(who),
                    key: id(n),
                },
            );
            r.apply(&op).expect("invite");
            ops.push(op);
        }
        assert_eq!(Roster::replay(&ops), Ok(r.clone()));
        let without_bob: Vec<_> = [&ops[0], &ops[2]].into_iter().collect();
        assert_eq!(Roster::replay(without_bob), Err(RoomError::OutOfOrder));
        let swapped = [&ops[0], &ops[2], &ops[1]];
        assert_eq!(Roster::replay(swapped), Err(RoomError::OutOfOrder));
        let mut altered = ops.clone();
        altered[2].action = Action::Invite {
            name: name("mallory"),
            key: id(9),
        };
        assert_eq!(Roster::replay(&altered), Err(RoomError::BadSignature));
        // Signed by a key of the directory's own, in alice's name.
        let forged = Op::sign(
            &key(9),
            room(),
            (r.version + 1, r.head),
            name("alice"),
            1,
            Action::Invite {
                name: name("mallory"),
                key: id(9),
            },
        );
        assert_eq!(r.clone().apply(&forged), Err(RoomError::NotAllowed));
        assert_eq!(r.apply(&ops[1]), Err(RoomError::OutOfOrder));
    }
}
