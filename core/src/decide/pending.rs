//! Refusals that may only be early. A well-formed key the snapshot does not hold, or a
//! token whose `kid` is not published, may have been issued a moment ago by admin and not
//! have reached this proxy yet: with holding on, such a request is [`Outcome::Pending`]
//! rather than refused, and the filter decides it again when the snapshot moves.

use sha2::{Digest, Sha256};

use super::denial::Denial;
use super::Decision;
use crate::key::KeyHash;

/// What a pending request waits for the snapshot to bring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaited {
    /// A key in keygate's format, checksum valid, that the snapshot does not hold.
    Key(KeyHash),
    /// The `kid` of an access token whose signing key is not published.
    SigningKey(String),
}

impl Awaited {
    /// 16 bytes that name it in the filter's negative cache: fixed size, however long
    /// the `kid` a client made up, and never the key hash itself.
    pub fn digest(&self) -> [u8; 16] {
        let mut hasher = Sha256::new();
        match self {
            Awaited::Key(hash) => {
                hasher.update(b"key\0");
                hasher.update(hash.0);
            }
            Awaited::SigningKey(kid) => {
                hasher.update(b"kid\0");
                hasher.update(kid.as_bytes());
            }
        }
        let full: [u8; 32] = hasher.finalize().into();
        let mut short = [0u8; 16];
        short.copy_from_slice(&full[..16]);
        short
    }
}

/// A request that would be refused with `denial` unless the snapshot brings `awaited`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub awaited: Awaited,
    /// The refusal it gets if what it waits for never comes.
    pub denial: Denial,
}

/// What [`super::decide_or_hold`] makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Decided(Decision),
    Pending(Pending),
}

/// A refusal inside the decision, with what could still cure it.
#[derive(Debug)]
pub(super) struct Refusal {
    pub denial: Denial,
    pub awaited: Option<Awaited>,
}

impl Refusal {
    pub fn unknown(denial: Denial, awaited: Awaited) -> Refusal {
        Refusal { denial, awaited: Some(awaited) }
    }

    /// The same refusal, final whatever the snapshot brings.
    pub fn now(self) -> Refusal {
        Refusal { awaited: None, ..self }
    }
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Refusal {
        Refusal { denial, awaited: None }
    }
}
