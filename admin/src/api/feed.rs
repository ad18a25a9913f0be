//! What the Envoy filters pull (the snapshot feed) and report (usage).

use std::time::Duration;

use keygate_core::snapshot::History;
use keygate_core::KeyHash;
use serde::Serialize;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{blocking, ok_json, raw_json, MAX_WAIT_SECS};
use crate::error::AdminError;
use crate::state::AppState;
use crate::store::{now, StoreError};

// ----- usage from filters -----

/// Items applied per store transaction.
const USAGE_CHUNK: usize = 256;

#[derive(Serialize, ToSchema)]
pub struct UsageAccepted {
    accepted: usize,
    /// Items for keys that no longer exist.
    ignored: usize,
}

/// The shape of `keygate_core::usage::UsageReport` (core has no OpenAPI dependency; a
/// test below keeps the two in step).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UsageReport)]
pub struct UsageReportSchema {
    usage: Vec<KeyUsageSchema>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KeyUsage)]
pub struct KeyUsageSchema {
    key_id: String,
    /// Requests since the filter's last report.
    count: u64,
    /// Unix seconds.
    last_used_at: u64,
}

#[utoipa::path(post, path = "/v1/usage", tag = "feed", summary = "Filters report per-key request counts", security(("proxy" = [])), request_body(content = UsageReportSchema, description = "At most 10 000 keys and 1 MiB per report"),
    responses(
        (status = 200, description = "Recorded", body = UsageAccepted)
    )
)]
pub async fn usage(state: AppState, report: keygate_core::usage::UsageReport) -> Result<Response, AdminError> {
    if report.usage.len() > keygate_core::usage::MAX_BATCH_KEYS {
        return Err(AdminError::InvalidRequest(format!("at most {} keys per report", keygate_core::usage::MAX_BATCH_KEYS)));
    }
    if report.usage.iter().any(|u| i64::try_from(u.count).is_err() || i64::try_from(u.last_used_at).is_err()) {
        return Err(AdminError::InvalidRequest("count and last_used_at must be at most 9223372036854775807".to_owned()));
    }
    let (mut accepted, mut ignored) = (0usize, 0usize);
    let mut last = None;
    for chunk in report.usage.chunks(USAGE_CHUNK) {
        let items = chunk.to_vec();
        let ((a, i), ticket) = blocking(state.store(), move |s| s.record_usage(&items)).await?;
        accepted += a;
        ignored += i;
        last = Some(ticket);
    }
    if let Some(ticket) = last {
        state.store().wait_durable(ticket).await?;
    }
    tracing::debug!(accepted, ignored, "usage recorded");
    ok_json(StatusCode::OK, &UsageAccepted { accepted, ignored })
}

// ----- the snapshot feed -----

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotQuery {
    pub since: Option<u64>,
    pub wait: u64,
    /// Paged full snapshot: at most this many keys per page, sorted by hash.
    pub limit: Option<usize>,
    /// The `next_after` of the previous page.
    pub after: Option<KeyHash>,
    /// With since: the client's history at `since` (the `history` it was last sent).
    pub history: Option<History>,
    /// With limit: page the revoked sessions (sorted by digest) instead of the keys.
    pub revoked: bool,
}

/// Largest page a client may ask for.
pub const MAX_PAGE_KEYS: u64 = 100_000;

/// Parses the feed's query: `since`, `wait`, `limit`, `after`, `history` and `revoked`, each
/// optional and at most once, in the combinations [`snapshot`] serves; anything else is refused.
pub fn parse_snapshot_query(raw: &str) -> Result<SnapshotQuery, AdminError> {
    let mut query = SnapshotQuery::default();
    let mut wait = None;
    let number = |name: &str, value: &str| -> Result<u64, AdminError> {
        if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AdminError::InvalidQuery(format!("{name} must be a non-negative integer")));
        }
        // JSON and the API document (int64) stop at i64::MAX; no version gets near it.
        value
            .parse::<u64>()
            .ok()
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| AdminError::InvalidQuery(format!("{name} is out of range")))
    };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "since" if query.since.is_none() => query.since = Some(number("since", value)?),
            "wait" if wait.is_none() => wait = Some(number("wait", value)?),
            "limit" if query.limit.is_none() => {
                let limit = number("limit", value)?;
                if limit == 0 || limit > MAX_PAGE_KEYS {
                    return Err(AdminError::InvalidQuery(format!("limit must be 1 to {MAX_PAGE_KEYS}")));
                }
                query.limit = usize::try_from(limit).ok();
            }
            "after" if query.after.is_none() => {
                query.after = Some(
                    KeyHash::from_hex(value)
                        .ok_or_else(|| AdminError::InvalidQuery("after must be a key hash (64 hex digits)".to_owned()))?,
                );
            }
            "history" if query.history.is_none() => {
                query.history =
                    Some(History::from_hex(value).ok_or_else(|| AdminError::InvalidQuery("history must be 64 hex digits".to_owned()))?);
            }
            "revoked" if !query.revoked => {
                if value != "1" {
                    return Err(AdminError::InvalidQuery("revoked must be 1".to_owned()));
                }
                query.revoked = true;
            }
            "since" | "wait" | "limit" | "after" | "history" | "revoked" => {
                return Err(AdminError::InvalidQuery(format!("{name} given twice")))
            }
            _ => return Err(AdminError::InvalidQuery("only since, wait, limit, after, history and revoked are understood".to_owned())),
        }
    }
    if query.history.is_some() && query.since.is_none() {
        return Err(AdminError::InvalidQuery("history needs since".to_owned()));
    }
    if query.revoked && query.limit.is_none() {
        return Err(AdminError::InvalidQuery("revoked needs limit".to_owned()));
    }
    if query.since.is_some() && (query.limit.is_some() || query.after.is_some()) {
        return Err(AdminError::InvalidQuery("limit and after page a full snapshot; they do not go with since".to_owned()));
    }
    if query.after.is_some() && query.limit.is_none() {
        return Err(AdminError::InvalidQuery("after needs limit".to_owned()));
    }
    if let Some(wait) = wait {
        if wait > MAX_WAIT_SECS {
            return Err(AdminError::InvalidQuery(format!("wait must be 0 to {MAX_WAIT_SECS} seconds")));
        }
        if query.since.is_none() && wait > 0 {
            return Err(AdminError::InvalidQuery("wait needs since".to_owned()));
        }
        query.wait = wait;
    }
    Ok(query)
}

/// Full snapshot, delta since V, or a long-poll for the next durable change after V.
/// Only durable versions are ever served.
#[utoipa::path(get, path = "/v1/snapshot", tag = "feed", summary = "The filters' feed: a full snapshot, one page of it, a delta, or a long-poll for the next change", security(("proxy" = [])), params(
        ("since" = Option<u64>, Query, description = "Delta since this version"),
        ("wait" = Option<u64>, Query, description = "With since: hold up to this many seconds (0 to 60) for a change"),
        ("limit" = Option<u64>, Query, description = "Page a full snapshot: at most this many keys (1 to 100000)"),
        ("after" = Option<String>, Query, description = "With limit: the next_after of the previous page (64 hex digits)"),
        ("revoked" = Option<u64>, Query, description = "With limit: 1 pages the revoked sessions (sorted by the SHA-256 of the session id) instead of the keys; the last key page says `revocation_pages: true` when there are any"),
        ("history" = Option<String>, Query, description = "With since: the history the client was sent with version since (64 hex digits); another history → 410"),
    ),
    responses(
        (status = 200, description = "A snapshot page or a delta (the README's feed section describes the wire format)", body = Object)
    )
)]
pub async fn snapshot(state: AppState, query: SnapshotQuery) -> Result<Response, AdminError> {
    let now = now();
    let store = state.store();
    if let (None, Some(limit)) = (query.since, query.limit) {
        let (after, revoked) = (query.after, query.revoked);
        let (durable_needed, bytes) = blocking(store, move |s| {
            let (wire, head) = s.snapshot_page(now, after, limit, revoked)?;
            Ok((head, serde_json::to_vec(&wire).map_err(StoreError::Encode)?))
        })
        .await?;
        // Everything the page shows must be on disk before anyone sees it.
        store.wait_version(durable_needed).await?;
        return Ok(raw_json(bytes));
    }
    let Some(since) = query.since else {
        let (version, bytes) = blocking(store, move |s| {
            let wire = s.full_snapshot(now)?;
            Ok((wire.version, serde_json::to_vec(&wire).map_err(StoreError::Encode)?))
        })
        .await?;
        // The head read under the writer lock may still be in flight to disk.
        store.wait_version(version).await?;
        return Ok(raw_json(bytes));
    };
    let mut durable = store.durable();
    let current = durable.borrow().version;
    if since > current {
        return Err(AdminError::SnapshotGone);
    }
    if let Some(history) = query.history {
        // Another history's version `since` (this store was restored from a backup and
        // has moved on): the client must start over with a full snapshot.
        let check = || blocking(store, move |s| s.check_history(since, &history));
        state.feed_reads().histories.get((since, history), check).await?;
    }
    // A replica that cannot hear the others' commits cannot tell a proxy it is up to date.
    let mut following = store.following();
    if !*following.borrow() {
        return Err(AdminError::StoreUnavailable(StoreError::Unavailable("not hearing other replicas' commits".into())));
    }
    if since == current && query.wait > 0 {
        // Counted while held; dropped too if the client goes away mid-wait.
        let _held = state.metrics().hold_longpoll();
        let mut stopping = state.shutting_down();
        tokio::select! {
            _ = durable.wait_for(|d| d.version > since) => {}
            _ = tokio::time::sleep(Duration::from_secs(query.wait)) => {}
            _ = stopping.wait_for(|stop| *stop) => {}
            _ = following.wait_for(|following| !*following) => {
                return Err(AdminError::StoreUnavailable(StoreError::Unavailable("not hearing other replicas' commits".into())));
            }
        }
    }
    let upto = store.durable_version();
    // The polls one change wakes all ask for the same delta: one read serves them.
    let read = || async move {
        let bytes = blocking(store, move |s| {
            let wire = s.delta(since, upto, now)?;
            serde_json::to_vec(&wire).map_err(StoreError::Encode)
        })
        .await?;
        Ok(bytes::Bytes::from(bytes))
    };
    Ok(raw_json(state.feed_reads().deltas.get((since, upto), read).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_report_schema_matches_core() {
        let report = keygate_core::usage::UsageReport {
            usage: vec![keygate_core::usage::KeyUsage { key_id: "key_x".to_owned(), count: 3, last_used_at: 7 }],
        };
        let mirror = UsageReportSchema { usage: vec![KeyUsageSchema { key_id: "key_x".to_owned(), count: 3, last_used_at: 7 }] };
        assert_eq!(serde_json::to_value(&report).unwrap(), serde_json::to_value(&mirror).unwrap());
    }

    #[test]
    fn snapshot_queries() {
        assert_eq!(parse_snapshot_query("").ok(), Some(SnapshotQuery::default()));
        assert_eq!(
            parse_snapshot_query("since=5&wait=30").ok(),
            Some(SnapshotQuery { since: Some(5), wait: 30, ..SnapshotQuery::default() })
        );
        assert_eq!(parse_snapshot_query("limit=10").ok(), Some(SnapshotQuery { limit: Some(10), ..SnapshotQuery::default() }));
        let history = "ab".repeat(32);
        assert_eq!(
            parse_snapshot_query(&format!("since=3&history={history}")).ok().and_then(|q| q.history).map(|h| h.to_hex()),
            Some(history.clone())
        );
        assert!(parse_snapshot_query(&format!("history={history}")).is_err());
        assert!(parse_snapshot_query("since=3&history=zz").is_err());
        assert_eq!(parse_snapshot_query("limit=5&revoked=1").ok().map(|q| q.revoked), Some(true));
        for bad in ["revoked=1", "limit=5&revoked=2", "limit=5&revoked=1&revoked=1"] {
            assert!(parse_snapshot_query(bad).is_err(), "{bad}");
        }
        let after = "ab".repeat(32);
        assert_eq!(
            parse_snapshot_query(&format!("after={after}&limit=2")).ok().and_then(|q| q.after).map(|h| h.to_hex()),
            Some(after.clone())
        );
        for bad in ["limit=0", "limit=100001", "after=zz&limit=1", &format!("after={after}"), "since=1&limit=5", "limit=1&limit=2"] {
            assert!(parse_snapshot_query(bad).is_err(), "{bad}");
        }
        for bad in [
            "since=-1",
            "since=x",
            "wait=61&since=1",
            "wait=5",
            "since=1&since=2",
            "foo=1",
            "since=99999999999999999999999",
            "since=9223372036854775808",
        ] {
            assert!(parse_snapshot_query(bad).is_err(), "{bad}");
        }
    }
}
