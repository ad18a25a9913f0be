//! Bulk import of existing API keys (from another gateway): `POST /v1/import/keys`
//! (operator).
//!
//! A request carries a batch of at most [`BATCH_MAX`] records; each is checked, and the
//! good ones are stored in one store transaction made durable before the answer, with one
//! result per record: `imported`, `skipped` (the same key is already stored for the same
//! business, kind and mode: a re-run) or `rejected` with a reason. A raw key is hashed here
//! and never stored, logged or echoed; reasons name fields, never values.

use keygate_core::key::{self, KeyFormatError, PresentedKey};
use keygate_core::{KeyHash, KeyKind, Mode, UnixTime};
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{clean_name, durable_write, parse_expiry, BadExpiry};
use crate::error::{json_response, AdminError};
use crate::random;
use crate::state::AppState;
use crate::store::{now, Actor, Audit, ImportOutcome, Key};
use std::net::IpAddr;

/// Records per request, at most.
pub const BATCH_MAX: usize = 1000;
/// Body cap of `POST /v1/import/keys` (a full batch of the longest records fits).
pub const BATCH_BODY_LIMIT: u64 = 1024 * 1024;
/// The stored `prefix` of a key imported by hash or in another gateway's format: there is
/// no keygate prefix to show, and showing part of a foreign key would leak some of it.
pub const IMPORTED_PREFIX: &str = "imported";
/// The fields a record may have.
pub const FIELDS: [&str; 7] = ["business", "kind", "mode", "name", "expires_at", "key", "key_sha256"];

/// One record as read from a file: every field text, absent when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The raw key: hashed on import, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Hex of the SHA-256 of the raw key's bytes (what [`KeyHash::of_raw`] computes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

impl ImportRecord {
    /// Sets the field named `field` (one of [`FIELDS`]) to `value`, absent when empty;
    /// false for any other name.
    pub fn set(&mut self, field: &str, value: String) -> bool {
        let slot = match field {
            "business" => &mut self.business,
            "kind" => &mut self.kind,
            "mode" => &mut self.mode,
            "name" => &mut self.name,
            "expires_at" => &mut self.expires_at,
            "key" => &mut self.key,
            "key_sha256" => &mut self.key_sha256,
            _ => return false,
        };
        *slot = Some(value).filter(|v| !v.is_empty());
        true
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBatch {
    /// At most 1000 records.
    #[schema(max_items = 1000)]
    #[serde(deserialize_with = "objects")]
    pub keys: Vec<ImportRecord>,
}

/// Records as JSON objects only: serde alone would also build one from an array of its
/// fields in order (found by schemathesis).
fn objects<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ImportRecord>, D::Error> {
    let raw: Vec<serde_json::Map<String, serde_json::Value>> = Deserialize::deserialize(d)?;
    raw.into_iter().map(|o| serde_json::from_value(serde_json::Value::Object(o)).map_err(serde::de::Error::custom)).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecordResult {
    Imported { key_id: String },
    Skipped { key_id: String },
    Rejected { reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResult {
    pub imported: usize,
    pub skipped: usize,
    pub rejected: usize,
    /// One per record, in the request's order.
    pub results: Vec<RecordResult>,
}

fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, String> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| format!("{field} is missing"))
}

/// The key a record describes, or why it cannot be imported. Never quotes a key.
pub fn check_record(record: &ImportRecord, now: UnixTime) -> Result<Key, String> {
    let business = required(&record.business, "business")?;
    if business.len() > 64 || !business.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err("business must be a business id (biz_…)".to_owned());
    }
    let kind = match required(&record.kind, "kind")? {
        "sk" => KeyKind::Sk,
        "pk" => KeyKind::Pk,
        _ => return Err("kind must be sk or pk".to_owned()),
    };
    let mode = match required(&record.mode, "mode")? {
        "live" => Mode::Live,
        "test" => Mode::Test,
        _ => return Err("mode must be live or test".to_owned()),
    };
    let name =
        record.name.as_deref().filter(|n| !n.trim().is_empty()).map(|n| clean_name(n, "name")).transpose().map_err(|e| e.to_string())?;
    let expires_at = match record.expires_at.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(text) => Some(parse_expiry(text, now).map_err(|bad| match bad {
            BadExpiry::NotRfc3339 => "expires_at must be an RFC 3339 date-time (e.g. 2030-01-01T00:00:00Z)".to_owned(),
            BadExpiry::NotInFuture => "expires_at is in the past".to_owned(),
        })?),
    };
    let (hash, prefix) = match (record.key.as_deref(), record.key_sha256.as_deref()) {
        (Some(_), Some(_)) => return Err("give key or key_sha256, not both".to_owned()),
        (None, None) => return Err("key or key_sha256 is missing".to_owned()),
        (None, Some(hex)) => (KeyHash::from_hex(hex.trim()).ok_or("key_sha256 must be 64 hex digits")?, IMPORTED_PREFIX.to_owned()),
        (Some(raw), None) => match key::classify(raw) {
            Ok(PresentedKey::Checked(api_key)) => {
                if (api_key.kind(), api_key.mode()) != (kind, mode) {
                    return Err(format!(
                        "the key's prefix is {}_{}_ but the record says kind {} and mode {}",
                        api_key.kind().as_str(),
                        api_key.mode().as_str(),
                        kind.as_str(),
                        mode.as_str()
                    ));
                }
                (api_key.hash(), api_key.display_prefix().to_owned())
            }
            Ok(PresentedKey::Legacy(hash)) => (hash, IMPORTED_PREFIX.to_owned()),
            Err(KeyFormatError::Checksum) => {
                return Err("the key has keygate's format but a wrong checksum, so no proxy would accept it".to_owned())
            }
            Err(_) => {
                return Err(format!(
                    "key must be {} to {} printable ASCII characters without spaces",
                    key::LEGACY_MIN_LEN,
                    key::LEGACY_MAX_LEN
                ))
            }
        },
    };
    // The id is drawn only for the records that pass.
    Ok(Key { name, expires_at, ..Key::new(String::new(), business.to_owned(), kind, mode, hash, prefix, now) })
}

/// `POST /v1/import/keys` (operator).
#[utoipa::path(post, path = "/v1/import/keys", tag = "keys", summary = "Import existing keys (raw or SHA-256) from another gateway; idempotent",
    security(("operator" = [])), request_body(content = ImportBatch, description = "Up to 1000 records, at most 1 MiB"),
    responses(
        (status = 200, description = "One result per record, in order; stored on disk before this answer", body = BatchResult)
    )
)]
pub async fn import_keys(state: AppState, client: IpAddr, batch: ImportBatch) -> Result<Response, AdminError> {
    if batch.keys.len() > BATCH_MAX {
        return Err(AdminError::InvalidRequest(format!("at most {BATCH_MAX} keys per request")));
    }
    let now = now();
    let mut results: Vec<Option<RecordResult>> = Vec::with_capacity(batch.keys.len());
    let mut keys = Vec::new();
    let mut slots = Vec::new();
    for record in &batch.keys {
        match check_record(record, now) {
            Ok(mut key) => {
                key.id = random::id("key_")?;
                slots.push(results.len());
                results.push(None);
                keys.push(key);
            }
            Err(reason) => results.push(Some(RecordResult::Rejected { reason })),
        }
    }
    if !keys.is_empty() {
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        // One entry for the batch: its businesses (the first 50) and how many keys it held.
        let mut audit = Audit::new(Actor::operator(client), "import.keys", "import", &random::id("imp_")?).detail("keys", keys.len());
        for key in &keys {
            if audit.businesses.len() >= 50 {
                break;
            }
            audit = audit.business(&key.business);
        }
        let outcomes = durable_write(&state.store().audited(audit), move |s| s.import_keys(&keys)).await?;
        for ((slot, id), outcome) in slots.into_iter().zip(ids).zip(outcomes) {
            results[slot] = Some(match outcome {
                ImportOutcome::Imported => RecordResult::Imported { key_id: id },
                ImportOutcome::Skipped { key_id } => RecordResult::Skipped { key_id },
                ImportOutcome::Refused(reason) => RecordResult::Rejected { reason: reason.to_owned() },
            });
        }
    }
    let results: Vec<RecordResult> =
        results.into_iter().map(|r| r.unwrap_or(RecordResult::Rejected { reason: "not processed".to_owned() })).collect();
    let mut out = BatchResult { results, ..BatchResult::default() };
    for r in &out.results {
        match r {
            RecordResult::Imported { .. } => out.imported += 1,
            RecordResult::Skipped { .. } => out.skipped += 1,
            RecordResult::Rejected { .. } => out.rejected += 1,
        }
    }
    tracing::info!(imported = out.imported, skipped = out.skipped, rejected = out.rejected, "api keys imported");
    Ok(json_response(StatusCode::OK, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_without_quoting_keys() {
        let now = 1_800_000_000;
        let good = ImportRecord {
            business: Some("biz_1".into()),
            kind: Some("sk".into()),
            mode: Some("live".into()),
            key: Some("vendor_secret_0123456789".into()),
            ..ImportRecord::default()
        };
        let key = check_record(&good, now).unwrap();
        assert_eq!(key.hash, KeyHash::of_raw("vendor_secret_0123456789"));
        assert_eq!(key.prefix, IMPORTED_PREFIX);
        let hashed = ImportRecord { key: None, key_sha256: Some(KeyHash::of_raw("x").to_hex().to_uppercase()), ..good.clone() };
        assert_eq!(check_record(&hashed, now).unwrap().hash, KeyHash::of_raw("x"));
        let cases = [
            (ImportRecord { kind: Some("rk".into()), ..good.clone() }, "kind must be sk or pk"),
            (ImportRecord { mode: None, ..good.clone() }, "mode is missing"),
            (ImportRecord { expires_at: Some("tomorrow".into()), ..good.clone() }, "expires_at must be an RFC 3339"),
            (ImportRecord { expires_at: Some("2020-01-01T00:00:00Z".into()), ..good.clone() }, "expires_at is in the past"),
            (ImportRecord { key_sha256: Some("abc".into()), ..good.clone() }, "not both"),
            (ImportRecord { key: None, ..good.clone() }, "key or key_sha256 is missing"),
            (ImportRecord { key: None, key_sha256: Some("zz".repeat(32)), ..good.clone() }, "64 hex digits"),
            (ImportRecord { key: Some("has space 12345".into()), ..good.clone() }, "printable ASCII"),
        ];
        for (record, want) in cases {
            let reason = check_record(&record, now).unwrap_err();
            assert!(reason.contains(want), "{reason}");
            assert!(!reason.contains("0123456789"), "{reason}");
        }
    }
}
