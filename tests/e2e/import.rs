//! Keys imported from another gateway pass through Envoy. A raw key in another
//! vendor's format (no keygate checksum) and a key imported only by its SHA-256 are found
//! by the filter's hash fallback, with the kind and mode of the import; near misses and a
//! keygate-shaped typo are refused.

use keygate_e2e::{Stack, StackOptions, OPERATOR_TOKEN};
use serde_json::json;

use crate::path::assert_denied;
use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    vec![Suite { name: "import", options: StackOptions::default, cases: CASES }]
}

const CASES: &[Case] = &[("imported_legacy_and_hashed_keys_pass_through_envoy", imported_keys_through_envoy)];

fn alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    keygate_e2e::random_bytes(n).iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect()
}

fn sha256_hex(text: &str) -> String {
    keygate_core::KeyHash::of_raw(text).to_hex()
}

fn imported_keys_through_envoy(stack: &Stack) {
    let tenant = stack.tenant();
    let business = tenant.business_id.as_str();
    // Another vendor's secret key: keygate's prefix, but 24 characters and no checksum.
    let vendor = format!("sk_live_{}", alnum(24));
    // A key known to the old gateway only by its SHA-256; imported as a publishable test key.
    let hashed = format!("acme-{}", alnum(30));
    let body = json!({"keys": [
        {"business": business, "kind": "sk", "mode": "live", "name": "from vendor", "key": vendor},
        {"business": business, "kind": "pk", "mode": "test", "key_sha256": sha256_hex(&hashed)},
    ]});
    let (status, result) = stack.admin(reqwest::Method::POST, "/v1/import/keys", Some(OPERATOR_TOKEN), Some(body));
    assert_eq!(status, 200, "{result}");
    assert_eq!((result["imported"].clone(), result["rejected"].clone()), (json!(2), json!(0)), "{result}");

    // Both reach the filter through the normal feed and pass.
    stack.wait_for_key(&vendor);
    stack.wait_for_key(&hashed);
    let (status, echoed) = stack.through_envoy("POST", "/key/orders", &[("secret_key", vendor.as_bytes())]);
    assert_eq!(status, 200, "{echoed}");
    let bearer = format!("Bearer {vendor}");
    assert_eq!(
        stack.through_envoy("GET", "/key/orders", &[("authorization", bearer.as_bytes())]).0,
        200,
        "a vendor key in the bearer position"
    );
    // The upstream sees the key's identity and never the key.
    let text = echoed.to_string();
    assert!(!text.contains(&vendor), "the upstream saw the raw key: {text}");
    assert_eq!(echoed["headers"]["x-keygate-business"], json!(business), "{text}");
    assert!(echoed["headers"].get("secret_key").is_none(), "{text}");
    // The hashed import keeps the kind and mode it was imported with: read-only.
    assert_eq!(stack.through_envoy("GET", "/key/orders", &[("secret_key", hashed.as_bytes())]).0, 200);
    assert_denied(&stack.through_envoy("POST", "/key/orders", &[("secret_key", hashed.as_bytes())]), 403, "insufficient_permission");

    // Wrong ones do not pass: a changed character, an extension, and a keygate-shaped typo.
    let mut near = vendor.clone().into_bytes();
    let last = near.len() - 1;
    near[last] = if near[last] == b'x' { b'y' } else { b'x' };
    let longer = format!("{hashed}0");
    let mut typo = tenant.sk.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    for wrong in [near.as_slice(), longer.as_bytes(), typo.as_slice()] {
        assert_denied(&stack.through_envoy("GET", "/key/orders", &[("secret_key", wrong)]), 401, "invalid_api_key");
    }

    // Deactivating an imported key works like any other.
    let listed = stack.admin(reqwest::Method::GET, &format!("/v1/businesses/{business}/keys"), Some(OPERATOR_TOKEN), None).1;
    let id =
        listed["keys"].as_array().unwrap().iter().find(|k| k["name"] == json!("from vendor")).unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(stack.operator_post(&format!("/v1/keys/{id}/deactivate"), json!({})).0, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.through_envoy("GET", "/key/orders", &[("secret_key", vendor.as_bytes())]).0 != 401 {
        assert!(std::time::Instant::now() < deadline, "the deactivated imported key still passes after 10 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
