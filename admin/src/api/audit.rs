//! The audit log: `GET /v1/audit`, and how a handler names the change it makes.
//!
//! To audit a write: build an [`Audit`] with [`actor`] (or [`Actor::operator`] /
//! [`Actor::proxy`]) and the client address, and call the store through
//! `state.store().audited(audit)`; the entry is stored in the write's own transaction.

use std::net::IpAddr;

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{blocking, is_id, ok_json};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::rfc3339;
use crate::state::AppState;
use crate::store::{Actor, ActorKind, AuditQuery, AuditRecord, AuditViewer, AUDIT_MAX_PAGE};

/// Who the caller is, for an audit entry.
pub fn actor(caller: &Caller, address: IpAddr) -> Actor {
    match caller {
        Caller::Operator => Actor::operator(address),
        Caller::Member { user_id, .. } => Actor::member(user_id, address),
    }
}

/// `GET /v1/audit`'s query (all optional), for the API document: the handler reads the
/// raw query string ([`parse_audit_query`]) to answer a bad value with a clear 400.
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Entries at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Entries at or before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// `key`, `business`, `user`, `session`, `signing_key`, `import`.
    object_type: Option<String>,
    object_id: Option<String>,
    /// One business's entries (a member: one of theirs).
    business: Option<String>,
    /// One action, e.g. `key.rotate`.
    action: Option<String>,
    /// Entries per page, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// `next_cursor` of the previous page: older entries.
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditActorView {
    /// `operator`, `member`, `proxy`, `key` or `anonymous`.
    kind: String,
    /// The member's user id, or the key id of a key session.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// The client address admin saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditObjectView {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEntryView {
    /// The entry's number (entries are numbered in the order they were made).
    id: u64,
    #[schema(format = DateTime)]
    at: String,
    /// Unix seconds.
    at_unix: u64,
    actor: AuditActorView,
    /// `key.create`, `key.rotate`, `key.update`, `business.create`, …
    action: String,
    object: AuditObjectView,
    /// The businesses the object belongs to.
    businesses: Vec<String>,
    /// Plain settings of the change (never a secret).
    #[schema(value_type = Object)]
    details: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    entries: Vec<AuditEntryView>,
    /// Pass as `cursor` for older entries; `null` when there are none. A page may hold
    /// fewer than `limit` entries (each page reads at most 10000) and still have one.
    next_cursor: Option<String>,
}

fn kind_name(kind: ActorKind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

impl AuditEntryView {
    fn of(r: AuditRecord) -> AuditEntryView {
        AuditEntryView {
            id: r.id,
            at: rfc3339::format(r.at),
            at_unix: r.at,
            actor: AuditActorView { kind: kind_name(r.actor.kind), id: r.actor.id, address: r.actor.address },
            action: r.action,
            object: AuditObjectView { kind: r.object.kind, id: r.object.id },
            businesses: r.businesses,
            details: r.details.into_iter().collect(),
        }
    }
}

/// `%XX` decoded (a `+` stays a `+`: RFC 3339 offsets use it); `None` when malformed.
fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query string of `GET /v1/audit`, checked.
pub fn parse_audit_query(raw: &str, viewer: AuditViewer) -> Result<AuditQuery, AdminError> {
    let bad = |m: &str| AdminError::InvalidQuery(m.to_owned());
    let mut q = AuditQuery::new(viewer);
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value).ok_or_else(|| bad("the query string could not be parsed"))?;
        if value.is_empty() || value.len() > 200 || value.chars().any(char::is_control) {
            return Err(AdminError::InvalidQuery(format!("{name} must be 1 to 200 characters")));
        }
        let time =
            |v: &str, n: &str| rfc3339::parse(v).ok_or_else(|| AdminError::InvalidQuery(format!("{n} must be an RFC 3339 date-time")));
        match name {
            "since" => q.since = Some(time(&value, "since")?),
            "until" => q.until = Some(time(&value, "until")?),
            "object_type" => q.object_type = Some(value),
            "object_id" => q.object_id = Some(value),
            "business" => q.business = Some(value),
            "action" => q.action = Some(value),
            "limit" => {
                let limit = value.parse::<usize>().ok().filter(|n| (1..=AUDIT_MAX_PAGE).contains(n));
                q.limit = limit.ok_or_else(|| AdminError::InvalidQuery(format!("limit must be 1 to {AUDIT_MAX_PAGE}")))?;
            }
            "cursor" => {
                q.before = Some(
                    value.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| bad("cursor must be a next_cursor from a previous page"))?,
                );
            }
            other => return Err(AdminError::InvalidQuery(format!("unknown query parameter {other}"))),
        }
    }
    if let (Some(since), Some(until)) = (q.since, q.until) {
        if since > until {
            return Err(bad("since must not be after until"));
        }
    }
    Ok(q)
}

/// The audit log, newest first: the operator sees every entry; a member the entries of
/// their businesses and those they made.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", summary = "The audit log: who changed what, when, from where", security(("member" = []), ("operator" = [])), params(AuditParams),
    responses(
        (status = 200, description = "A page of entries, newest first", body = AuditList)
    )
)]
pub async fn list_audit(state: AppState, caller: Caller, raw: String) -> Result<Response, AdminError> {
    let viewer = match &caller {
        Caller::Operator => AuditViewer::All,
        Caller::Member { user_id, businesses, .. } => AuditViewer::Member { user_id: user_id.clone(), businesses: businesses.clone() },
    };
    let query = parse_audit_query(&raw, viewer)?;
    if let Some(business) = &query.business {
        if !caller.may_manage(business) {
            return Err(AdminError::Forbidden);
        }
        if !is_id(business, "biz_") || state.store().business(business)?.is_none() {
            return Err(AdminError::BusinessNotFound);
        }
    }
    let page = blocking(state.store(), move |s| s.audit_entries(&query)).await?;
    let entries = page.entries.into_iter().map(AuditEntryView::of).collect();
    ok_json(StatusCode::OK, &AuditList { entries, next_cursor: page.next.map(|n| n.to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked() {
        let q = parse_audit_query(
            "since=2026-01-01T00:00:00Z&until=2026-01-02T00:00:00%2B00:00&limit=5&cursor=9&object_type=key",
            AuditViewer::All,
        )
        .unwrap();
        assert_eq!((q.since.is_some(), q.until.is_some(), q.limit, q.before), (true, true, 5, Some(9)));
        assert_eq!(q.object_type.as_deref(), Some("key"));
        for bad in [
            "since=yesterday",
            "limit=0",
            "limit=501",
            "cursor=x",
            "cursor=0",
            "color=red",
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "object_id=%zz",
        ] {
            assert!(matches!(parse_audit_query(bad, AuditViewer::All), Err(AdminError::InvalidQuery(_))), "{bad}");
        }
    }
}
