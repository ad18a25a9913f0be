//! keygate-core: the contract shared by the proxy-wasm filter and keygate-admin.
//!
//! Pure Rust with no I/O, building for `wasm32-wasip1` and native alike:
//! - [`key`]: the API key format (prefix, randomness, checksum) and its SHA-256 hash;
//! - [`token`]: access-token claims and their verification (EdDSA only);
//! - [`oidc`]: tokens from a business's own identity provider (trusted issuers);
//! - [`snapshot`]: the wire format the filter pulls from admin, full and delta, and the
//!   indexed in-memory form the decision reads;
//! - [`config`]: the filter's plugin configuration, parsed and validated once;
//! - [`decide()`]: the whole per-request decision as a function of (request, snapshot, clock);
//! - [`hold`]: the requests the filter holds for a key or signing key not yet in its
//!   snapshot, and the negative cache that bounds what made-up ones cost.

pub mod base62;
pub mod cidr;
pub mod config;
pub mod credits;
pub mod decide;
pub mod feed;
pub mod hold;
pub mod key;
pub mod keystore;
pub mod lease;
pub mod oidc;
pub mod pair;
pub mod ratelimit;
pub mod revoked;
pub mod signing;
pub mod snapshot;
pub mod sync;
pub mod token;
pub mod usage;

pub use config::{FilterConfig, Policy, Requirement, Route};
pub use decide::{
    decide, decide_cached, decide_on_route, decide_or_hold, wants_address, Allowed, Awaited, Decision, Denial, DenyCode, Outcome, Pending,
    RequestView, Synced, TokenCache,
};
pub use key::{ApiKey, KeyHash, KeyKind, Mode};
pub use snapshot::{Snapshot, SnapshotWire};
pub use token::{AccessClaims, ACCESS_TOKEN_TYP};

/// Seconds since the Unix epoch. Every time in the contract is one of these.
pub type UnixTime = u64;

/// Identity headers keygate adds for the upstream; any client-sent header with this
/// prefix is removed so an upstream can trust them.
pub const IDENTITY_HEADER_PREFIX: &str = "x-keygate-";
