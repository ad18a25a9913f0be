//! Token header checks (`token::checked_kid`) and verification (`token::verify`) on
//! arbitrary text, with a real admin's public key (seeds are real tokens it issued). A
//! token that verifies must have passed every claim check at the fuzz clock.
#![no_main]

use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{SigningKeyEntry, SnapshotWire};
use keygate_core::token::{self, TokenExpectations};
use keygate_core::Snapshot;
use libfuzzer_sys::fuzz_target;

/// The public key of the admin that issued the seed tokens (GET /.well-known/jwks.json).
const SEED_KID: &str = include_str!("../seeds/token_kid.txt");
const SEED_X: &str = include_str!("../seeds/token_x.txt");
/// Inside the seed tokens' lifetime.
const NOW: u64 = include!("../seeds/token_now.txt");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let own = SigningKeyPair::from_seed("kid-fuzz", [7u8; 32]);
    let wire = SnapshotWire {
        version: 1,
        signing_keys: vec![
            SigningKeyEntry { kid: SEED_KID.trim().to_owned(), alg: "EdDSA".into(), x: SEED_X.trim().to_owned() },
            own.public_entry(),
        ],
        ..SnapshotWire::default()
    };
    let snapshot = Snapshot::from_full(wire).expect("the seed public key is valid");
    let expect = TokenExpectations { issuer: "keygate".into(), audience: "keygate-api".into(), leeway: 30 };

    let kid = token::checked_kid(text);
    for kid_guess in [SEED_KID.trim(), "kid-fuzz"] {
        let Some(key) = snapshot.signing_key(kid_guess) else { continue };
        if let Ok(claims) = token::verify(text, key, &expect, NOW) {
            assert_eq!(claims.iss, "keygate");
            assert_eq!(claims.aud, "keygate-api");
            assert!(NOW < claims.exp.saturating_add(30), "expired token verified");
            assert!(claims.nbf.unwrap_or(claims.iat) <= NOW + 30, "future token verified");
            assert!(text.len() <= token::MAX_TOKEN_LEN || kid.is_err());
        }
    }
    if let Ok(kid) = kid {
        assert!(text.len() <= token::MAX_TOKEN_LEN);
        let _ = snapshot.signing_key(&kid);
    }
});
