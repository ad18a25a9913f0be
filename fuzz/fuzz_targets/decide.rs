//! `core::decide` on an arbitrary request against an arbitrary snapshot and policy.
//!
//! The snapshot is built from arbitrary key entries (whose raw keys the request can
//! present), a real Ed25519 signing key (tokens with arbitrary claims are really signed,
//! then optionally mangled) and arbitrary revocations. Beyond "never panics", it checks:
//! - the cached decision (`decide_cached`, twice with one cache) equals `decide`;
//! - an allowed credentialled request really presented an active, unexpired key of the
//!   snapshot whose kind and mode match, the business it claims, and a token where the route
//!   needs one; the key header is always stripped;
//! - a denial's body is the stable JSON shape and never echoes a presented secret.
//!
//! Speed (the goal was 10 M executions; a profile showed key derivation and signing
//! taking most of each input): the two Ed25519 key pairs are derived once per process, and a
//! token is signed with the derived key directly (byte for byte what `SigningKeyPair::sign`
//! makes, which re-derives the key from PKCS#8 on every call; checked at start-up). What
//! `decide` does is untouched: it parses and verifies every token, every time. No state may
//! outlive an input (a memo of signed tokens was tried: it never hit, and libFuzzer runs
//! every input that keeps allocations a second time to look for leaks, counting both runs).
#![no_main]

use arbitrary::Arbitrary;
use keygate_core::cidr::Cidr;
use keygate_core::config::Route;
use keygate_core::ratelimit::{Limit, LimitPolicy, Window};
use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{KeyEntry, RevokedSession, SnapshotWire};
use keygate_core::token::{AccessClaims, TokenExpectations};
use keygate_core::{
    decide, decide_cached, decide_or_hold, ApiKey, Decision, KeyKind, Mode, Outcome, Policy, RequestView, Requirement, Snapshot, Synced,
    TokenCache,
};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const NOW: u64 = 1_800_000_000;

const SEEDS: [[u8; 32]; 2] = [[7u8; 32], [9u8; 32]];

/// The snapshot's signing key (derived once: an Ed25519 key derivation is a base-point
/// multiplication, which was most of an input's time).
static SIGNER: LazyLock<SigningKeyPair> = LazyLock::new(|| SigningKeyPair::from_seed("kid-fuzz", SEEDS[0]));

/// The JWS header both keys sign under (a foreign key claims the snapshot's `kid`), and the
/// two keys; built from `SigningKeyPair::sign`'s own output and checked against it.
static DIRECT: LazyLock<(String, [ed25519_dalek::SigningKey; 2])> = LazyLock::new(|| {
    let keys = SEEDS.map(|seed| ed25519_dalek::SigningKey::from_bytes(&seed));
    let sample = AccessClaims {
        iss: "keygate".into(),
        aud: "keygate-api".into(),
        sub: "usr_1".into(),
        sid: "ses_1".into(),
        businesses: vec!["biz_1".into()],
        mode: None,
        scope: "a b".into(),
        iat: NOW,
        exp: NOW + 60,
        nbf: None,
        jti: "jti".into(),
    };
    let reference = SIGNER.sign(&sample).expect("sign");
    let header = reference.split('.').next().expect("a JWS").to_owned();
    let direct = (header, keys);
    for (i, seed) in SEEDS.iter().enumerate() {
        let pair = SigningKeyPair::from_seed("kid-fuzz", *seed);
        assert_eq!(sign_direct(&direct, i, &sample), pair.sign(&sample).expect("sign"), "direct signing differs from SigningKeyPair::sign");
    }
    direct
});

fn sign_direct((header, keys): &(String, [ed25519_dalek::SigningKey; 2]), key: usize, claims: &AccessClaims) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use ed25519_dalek::Signer;
    let payload = serde_json::to_vec(claims).expect("claims serialise");
    let message = format!("{header}.{}", B64.encode(payload));
    let signature = keys[key].sign(message.as_bytes());
    format!("{message}.{}", B64.encode(signature.to_bytes()))
}

/// The token `SigningKeyPair::sign` makes for these claims with the snapshot's key (or the
/// foreign one).
fn signed(foreign: bool, claims: &AccessClaims) -> String {
    sign_direct(&DIRECT, usize::from(foreign), claims)
}

#[derive(Arbitrary, Debug)]
struct ArbKey {
    kind_sk: bool,
    live: bool,
    random: [u8; 48],
    business: u8,
    scopes: Vec<String>,
    expires_in: Option<i16>,
    active: bool,
    /// Store it under its own kind/mode, or lie in the snapshot.
    flip_kind: bool,
    flip_mode: bool,
    /// An address allowlist: (address bytes, prefix length), read as IPv4 or IPv6 ranges.
    allowed: Vec<([u8; 16], u8, bool)>,
    own_limit: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
struct ArbRoute {
    prefix: String,
    methods: Vec<u8>,
    require: u8,
    key_in_bearer: bool,
    scopes: Vec<String>,
    mode: Option<bool>,
    shadow: bool,
}

#[derive(Arbitrary, Debug)]
enum Value {
    /// The raw text of key `n` of the snapshot (if any).
    Key(u8, Tweak),
    /// A really signed token with these claims, possibly mangled.
    Token(ArbClaims, Tweak, bool),
    Business(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Tweak {
    None,
    Prefix(String),
    Suffix(String),
    Flip(u16),
    Truncate(u16),
}

#[derive(Arbitrary, Debug)]
struct ArbClaims {
    iss_ok: bool,
    aud_ok: bool,
    sub: String,
    sid: u8,
    businesses: Vec<u8>,
    mode: Option<bool>,
    scope: String,
    iat: i16,
    exp: i16,
    nbf: Option<i16>,
    foreign_kid: bool,
}

#[derive(Arbitrary, Debug)]
struct Header {
    name: u8,
    raw_name: String,
    bearer: bool,
    value: Value,
}

#[derive(Arbitrary, Debug)]
struct Input {
    keys: Vec<ArbKey>,
    revoked: Vec<u8>,
    publish_signing_key: bool,
    routes: Vec<ArbRoute>,
    leeway: u8,
    method: u8,
    raw_method: String,
    path: String,
    headers: Vec<Header>,
    client_ip: Option<String>,
    synced: bool,
    stale_by: u16,
}

const METHODS: [&str; 6] = ["GET", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH"];
const NAMES: [&str; 6] = ["authorization", "SECRET_KEY", "businessId", "Authorization", "x-keygate-business", "secret_key"];

fn business(n: u8) -> String {
    format!("biz_{}", n % 4)
}

fn offset(base: u64, by: i16) -> u64 {
    base.saturating_add_signed(i64::from(by))
}

fn tweak(text: String, t: &Tweak) -> String {
    match t {
        Tweak::None => text,
        Tweak::Prefix(p) => format!("{p}{text}"),
        Tweak::Suffix(s) => format!("{text}{s}"),
        Tweak::Flip(at) => {
            let mut bytes = text.into_bytes();
            if !bytes.is_empty() {
                let i = usize::from(*at) % bytes.len();
                bytes[i] ^= 1;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Tweak::Truncate(at) => {
            let cut = usize::from(*at) % (text.len() + 1);
            text.get(..cut).unwrap_or(&text).to_owned()
        }
    }
}

/// A range from fuzz bytes: the address with its host bits cleared, as admin would store it.
fn arb_range(bytes: &[u8; 16], len: u8, v4: bool) -> Option<Cidr> {
    let (ip, len): (std::net::IpAddr, u8) = if v4 {
        (std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(), len % 33)
    } else {
        (std::net::Ipv6Addr::from(*bytes).into(), len % 129)
    };
    let text = format!("{ip}/{len}");
    // Host bits set are refused, as admin refuses them; clear them by parsing the hint.
    Cidr::parse(&text).ok().or_else(|| {
        let err = Cidr::parse(&text).err()?;
        let hint = err.split("did you mean \"").nth(1)?.split('"').next()?.to_owned();
        Cidr::parse(&hint).ok()
    })
}

fuzz_target!(|input: Input| {
    let expect = TokenExpectations { issuer: "keygate".into(), audience: "keygate-api".into(), leeway: u64::from(input.leeway % 60) };

    // The snapshot.
    let mut raws = Vec::new();
    let mut entries = Vec::new();
    for (i, k) in input.keys.iter().take(8).enumerate() {
        let kind_of = |sk: bool| if sk { KeyKind::Sk } else { KeyKind::Pk };
        let mode_of = |live: bool| if live { Mode::Live } else { Mode::Test };
        let (kind, mode) = (kind_of(k.kind_sk), mode_of(k.live));
        let Some(key) = ApiKey::generate(kind, mode, k.random.iter().copied().chain(0..=255u8)) else { continue };
        // With `flip_kind` or `flip_mode` the stored record claims another kind or mode than the key has.
        let (other_kind, other_mode) = (kind_of(k.kind_sk != k.flip_kind), mode_of(k.live != k.flip_mode));
        entries.push(KeyEntry {
            hash: key.hash(),
            id: format!("key_{i}"),
            business: business(k.business),
            kind: other_kind,
            mode: other_mode,
            scopes: k.scopes.iter().take(4).cloned().collect(),
            expires_at: k.expires_in.map(|d| offset(NOW, d)),
            active: k.active,
            credits: None,
            allowed_ips: k.allowed.iter().take(4).filter_map(|(bytes, len, v4)| arb_range(bytes, *len, *v4)).collect(),
            rate_limits: k.own_limit.map(|(n, w)| vec![Limit { count: u32::from(n).max(1), window: Window::ALL[usize::from(w) % 4] }]),
        });
        raws.push(key.expose().to_owned());
    }
    let wire = SnapshotWire {
        version: 1,
        since: None,
        keys: entries.clone(),
        signing_keys: if input.publish_signing_key { vec![SIGNER.public_entry()] } else { Vec::new() },
        revoked_sessions: input
            .revoked
            .iter()
            .take(4)
            .map(|s| RevokedSession { sid: format!("ses_{}", s % 4), until: NOW + 3600 })
            .collect(),
        ..SnapshotWire::default()
    };
    let Ok(snapshot) = Snapshot::from_full(wire) else { return };

    // The policy.
    let routes: Vec<Route> = input
        .routes
        .iter()
        .take(4)
        .map(|r| Route {
            prefix: format!("/{}", r.prefix),
            methods: r.methods.iter().take(3).map(|m| METHODS[usize::from(*m) % METHODS.len()].to_owned()).collect(),
            require: match r.require % 3 {
                0 => Requirement::All,
                1 => Requirement::Key,
                _ => Requirement::None,
            },
            key_in_bearer: r.key_in_bearer,
            scopes: r.scopes.iter().take(3).cloned().collect(),
            mode: r.mode.map(|live| if live { Mode::Live } else { Mode::Test }),
            shadow: r.shadow,
            rate_limit_per_hour: None,
            rate_limits: None,
            cost: 1,
        })
        .collect();
    let default_route = Route {
        prefix: "/".into(),
        methods: vec![],
        require: Requirement::All,
        key_in_bearer: false,
        scopes: vec![],
        mode: None,
        shadow: false,
        rate_limit_per_hour: None,
        rate_limits: None,
        cost: 1,
    };
    let policy = Policy {
        token: expect.clone(),
        max_staleness_secs: 600,
        rate_limits: LimitPolicy::default(),
        routes,
        default_route,
        token_cache_entries: 16,
    };

    // The request.
    let mut secrets: Vec<String> = Vec::new();
    let headers: Vec<(String, String)> = input
        .headers
        .iter()
        .take(8)
        .map(|h| {
            let name = if h.name < 200 { NAMES[usize::from(h.name) % NAMES.len()].to_owned() } else { h.raw_name.clone() };
            let value = match &h.value {
                Value::Key(n, t) if !raws.is_empty() => {
                    let raw = raws[usize::from(*n) % raws.len()].clone();
                    secrets.push(raw.clone());
                    tweak(raw, t)
                }
                Value::Key(..) => String::new(),
                Value::Token(c, t, keep_kid) => {
                    let claims = AccessClaims {
                        iss: if c.iss_ok { "keygate".into() } else { "evil".into() },
                        aud: if c.aud_ok { "keygate-api".into() } else { "other".into() },
                        sub: c.sub.clone(),
                        sid: format!("ses_{}", c.sid % 4),
                        businesses: c.businesses.iter().take(3).map(|b| business(*b)).collect(),
                        mode: c.mode.map(|live| if live { Mode::Live } else { Mode::Test }),
                        scope: c.scope.clone(),
                        iat: offset(NOW, c.iat),
                        exp: offset(NOW, c.exp),
                        nbf: c.nbf.map(|n| offset(NOW, n)),
                        jti: "jti".into(),
                    };
                    let token = signed(c.foreign_kid, &claims);
                    let token = if *keep_kid { token } else { tweak(token, &Tweak::Flip(3)) };
                    secrets.push(token.clone());
                    tweak(token, t)
                }
                Value::Business(b) => business(*b),
                Value::Raw(s) => s.clone(),
            };
            let value = if h.bearer { format!("Bearer {value}") } else { value };
            (name, value)
        })
        .collect();
    let method = if input.method < 250 { METHODS[usize::from(input.method) % METHODS.len()] } else { input.raw_method.as_str() };
    let request = RequestView { method, path: &input.path, headers: &headers, client_ip: input.client_ip.as_deref() };
    let synced = input.synced.then(|| Synced::local(&snapshot, NOW - u64::from(input.stale_by)));

    let plain = decide(&policy, &request, synced, NOW);
    let mut cache = TokenCache::new(4);
    let first = decide_cached(&policy, &request, synced, NOW, &mut cache);
    let second = decide_cached(&policy, &request, synced, NOW, &mut cache);
    assert_eq!(plain, first, "decide_cached differs from decide");
    assert_eq!(plain, second, "a cache hit differs from decide");

    let route = policy.route_for(method, &input.path);
    // Holding changes only when a refusal comes: held, a request is refused (if ever) with
    // the very denial it gets without holding, and whatever is not refused is the same.
    match decide_or_hold(&policy, route, &request, synced, NOW, &mut TokenCache::new(4), true) {
        Outcome::Decided(held) => assert_eq!(held, plain, "holding changed a decision"),
        Outcome::Pending(pending) => {
            assert_eq!(Decision::Deny(pending.denial), plain, "a pending request's refusal differs from decide's");
            assert!(!route.shadow && route.require != Requirement::None, "a shadow or public route held a request");
        }
    }
    match &plain {
        Decision::Deny(denial) => {
            let text = denial.body();
            let body: serde_json::Value = serde_json::from_str(&text).expect("denial body is JSON");
            assert_eq!(body["success"], false);
            assert_eq!(body["code"], denial.code.as_str());
            for secret in secrets.iter().filter(|s| s.len() >= 8) {
                assert!(!text.contains(secret.as_str()), "denial body echoes a secret");
            }
        }
        Decision::Allow(allowed) => {
            assert!(allowed.remove_headers.iter().any(|h| h == "secret_key"), "SECRET_KEY not stripped");
            if route.shadow || route.require == Requirement::None {
                return;
            }
            // A credentialled allow: some presented value is an active, unexpired key of the
            // snapshot whose stored kind and mode match the raw key's.
            let presented: Vec<&str> = headers
                .iter()
                .map(|(_, v)| v.as_str())
                .flat_map(|v| [v, v.trim(), v.trim().trim_start_matches("Bearer ").trim()])
                .collect();
            let key_id = allowed.key_id.as_deref().expect("allowed with a key id");
            let entry = entries.iter().find(|e| e.id == key_id).expect("the allowed key is in the snapshot");
            let ok_key = presented
                .iter()
                .filter_map(|v| keygate_core::key::classify(v).ok())
                .any(|k| k.hash() == entry.hash && k.claims().is_none_or(|(kind, mode)| kind == entry.kind && mode == entry.mode));
            assert!(ok_key, "allowed without presenting the key it names");
            assert!(entry.active && entry.expires_at.is_none_or(|at| at > NOW), "allowed an inactive or expired key");
            if entry.kind == KeyKind::Pk {
                assert!(matches!(method, "GET" | "HEAD" | "OPTIONS"), "pk key on an unsafe method");
            }
            if let Some(m) = route.mode {
                assert_eq!(m, entry.mode, "mode rule ignored");
            }
            if !entry.allowed_ips.is_empty() {
                assert!(
                    keygate_core::cidr::allows(&entry.allowed_ips, input.client_ip.as_deref()),
                    "allowed from outside the key's allowlist"
                );
            }
            if let Some(own) = &entry.rate_limits {
                let counted: Vec<Limit> =
                    allowed.rate_limits.iter().filter(|c| c.bucket == format!("key:{key_id}")).map(|c| c.limit).collect();
                assert_eq!(&counted, own, "the key's own limits are not what it is counted against");
            }
            let business_header = allowed.add_headers.iter().find(|(n, _)| *n == "x-keygate-business").map(|(_, v)| v.as_str());
            assert_eq!(business_header, Some(entry.business.as_str()));
            if route.require == Requirement::All {
                assert!(allowed.add_headers.iter().any(|(n, _)| *n == "x-keygate-subject"), "all-three route allowed without a token");
                assert!(input.publish_signing_key, "a token verified without a published signing key");
            }
        }
    }
});
