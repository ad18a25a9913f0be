//! Credits: a key's uses left. `GET`/`PUT /v1/keys/{id}/credits` read and set (or clear)
//! the balance, `POST /v1/keys/{id}/credits/add` adds to it (operator, or a member of the
//! key's business); `POST /v1/credit-spend` (proxy token) is where the filters report
//! what they spent and hear what the others did (see `store::credits`).

use keygate_core::credits::{Interval, Refill, Spent, MAX_CREDITS, MAX_REPORT_KEYS};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use std::net::IpAddr;

use super::audit::actor;
use super::managed::managed_key;
use super::{blocking, durable_write, ok_json};
use crate::error::AdminError;
use crate::rfc3339;
use crate::state::AppState;
use crate::store::credits::CreditsState;
use crate::store::Audit;
use crate::store::{now, Key};

/// Body cap of a spend report.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
const MAX_PROXY_CHARS: usize = 64;
const MAX_KEY_ID_BYTES: usize = 200;

/// `day` or `month` (UTC).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = RefillInterval)]
pub enum IntervalSchema {
    Day,
    Month,
}

/// At the start of every UTC day or month the balance becomes `amount`.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefillBody {
    #[schema(value_type = IntervalSchema)]
    interval: Interval,
    #[schema(minimum = 1, maximum = 1000000000000_u64)]
    amount: u64,
}

/// A balance to set: `remaining` uses, optionally refilled.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCredits {
    /// Uses left, 0 to 10^12; `null` (on `PUT`) clears the credits: the key is unlimited.
    #[schema(maximum = 1000000000000_u64)]
    remaining: Option<u64>,
    #[serde(default)]
    refill: Option<RefillBody>,
}

impl NewCredits {
    /// `Some((balance, refill))` to set, `None` to clear.
    pub(crate) fn checked(self) -> Result<Option<(u64, Option<Refill>)>, AdminError> {
        let refill = match self.refill {
            Some(RefillBody { interval, amount }) if (1..=MAX_CREDITS).contains(&amount) => Some(Refill { interval, amount }),
            Some(_) => return Err(AdminError::InvalidRequest(format!("refill.amount must be 1 to {MAX_CREDITS}"))),
            None => None,
        };
        match self.remaining {
            Some(n) if n > MAX_CREDITS => Err(AdminError::InvalidRequest(format!("remaining must be 0 to {MAX_CREDITS}"))),
            Some(n) => Ok(Some((n, refill))),
            None if refill.is_some() => Err(AdminError::InvalidRequest("a refill needs remaining".to_owned())),
            None => Ok(None),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCredits {
    /// Credits to add, 1 to 10^12.
    #[schema(minimum = 1, maximum = 1000000000000_u64)]
    amount: u64,
}

/// A key's credits as admin knows them.
#[derive(Serialize, ToSchema)]
pub struct CreditsView {
    key_id: String,
    /// `false`: the key has no credits and is unlimited (the other fields are null).
    limited: bool,
    /// Uses left now: `balance` less what the proxies reported spending.
    remaining: Option<u64>,
    /// The allowance of the current period (set, refilled, plus what was added).
    balance: Option<u64>,
    /// What the proxies reported spending of `balance`.
    spent: Option<u64>,
    refill: Option<RefillBody>,
    /// When the next refill is due.
    #[schema(format = DateTime)]
    next_refill_at: Option<String>,
    /// When a proxy's spending report last reached admin (null: none since the balance was set).
    #[schema(format = DateTime)]
    reconciled_at: Option<String>,
    /// Changes each time the balance is set.
    epoch: Option<u64>,
}

impl CreditsView {
    pub(crate) fn of(key: &Key, state: Option<&CreditsState>) -> CreditsView {
        CreditsView {
            key_id: key.id.clone(),
            limited: state.is_some(),
            remaining: state.map(CreditsState::remaining),
            balance: state.map(|s| s.allowance),
            spent: state.map(|s| s.spent),
            refill: state.and_then(|s| s.entry.refill).map(|r| RefillBody { interval: r.interval, amount: r.amount }),
            next_refill_at: state.and_then(|s| s.next_refill).map(rfc3339::format),
            reconciled_at: state.and_then(|s| s.reconciled_at).map(rfc3339::format),
            epoch: state.map(|s| s.entry.epoch),
        }
    }
}

async fn view(state: &AppState, key_id: String) -> Result<Response, AdminError> {
    let found = blocking(state.store(), move |s| s.credits(&key_id, now())).await?;
    let (key, credits) = found.ok_or(AdminError::KeyNotFound)?;
    ok_json(StatusCode::OK, &CreditsView::of(&key, credits.as_ref()))
}

#[utoipa::path(get, path = "/v1/keys/{id}/credits", tag = "keys", summary = "A key's credits: remaining, balance, spent, refill, last reconciled", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The credits", body = CreditsView))
)]
pub async fn get_credits(state: AppState, caller: crate::auth::Caller, key_id: String) -> Result<Response, AdminError> {
    managed_key(&state, &caller, &key_id)?;
    view(&state, key_id).await
}

#[utoipa::path(put, path = "/v1/keys/{id}/credits", tag = "keys", summary = "Set a key's balance (a new epoch: earlier spending no longer counts), or clear it with remaining null", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")), request_body = NewCredits,
    responses((status = 200, description = "The credits", body = CreditsView))
)]
pub async fn set_credits(
    state: AppState,
    caller: crate::auth::Caller,
    client: IpAddr,
    key_id: String,
    body: NewCredits,
) -> Result<Response, AdminError> {
    let key = managed_key(&state, &caller, &key_id)?;
    let credits = body.checked()?;
    let action = if credits.is_some() { "credits.set" } else { "credits.clear" };
    let mut audit = Audit::new(actor(&caller, client), action, "key", &key_id).business(&key.business);
    if let Some((balance, refill)) = &credits {
        audit = audit.detail("remaining", *balance);
        if let Some(r) = refill {
            audit = audit.detail("refill", format!("{}:{}", r.interval.as_str(), r.amount));
        }
    }
    let id = key_id.clone();
    let key = durable_write(&state.store().audited(audit), move |s| s.set_credits(&id, credits)).await?;
    tracing::info!(key = %key.id, limited = key.credits.is_some(), "api key credits set");
    view(&state, key_id).await
}

#[utoipa::path(post, path = "/v1/keys/{id}/credits/add", tag = "keys", summary = "Add to a key's balance (spending so far still counts)", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")), request_body = AddCredits,
    responses((status = 200, description = "The credits", body = CreditsView))
)]
pub async fn add_credits(
    state: AppState,
    caller: crate::auth::Caller,
    client: IpAddr,
    key_id: String,
    body: AddCredits,
) -> Result<Response, AdminError> {
    let key = managed_key(&state, &caller, &key_id)?;
    if !(1..=MAX_CREDITS).contains(&body.amount) {
        return Err(AdminError::InvalidRequest(format!("amount must be 1 to {MAX_CREDITS}")));
    }
    if key.credits.is_none() {
        return Err(AdminError::InvalidRequest("the key has no credits (it is unlimited): set a balance first".to_owned()));
    }
    let audit = Audit::new(actor(&caller, client), "credits.add", "key", &key_id).business(&key.business).detail("amount", body.amount);
    let id = key_id.clone();
    let key = durable_write(&state.store().audited(audit), move |s| s.add_credits(&id, body.amount)).await?;
    if key.credits.is_none() {
        return Err(AdminError::InvalidRequest("the key has no credits (it is unlimited): set a balance first".to_owned()));
    }
    tracing::info!(key = %key.id, amount = body.amount, "api key credits added");
    view(&state, key_id).await
}

/// One key's absolute spending by the reporting proxy.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpentItem {
    key_id: String,
    epoch: u64,
    /// The refill period (days or months since 1970; 0 without a refill).
    period: u64,
    /// What this proxy spent in (epoch, period), absolute.
    spent: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendReport {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    proxy: String,
    #[schema(max_items = 5000)]
    keys: Vec<SpentItem>,
}

#[derive(Serialize, ToSchema)]
pub struct SpendAnswer {
    /// `others[i]`: what every other proxy spent of `keys[i]` in its epoch and period.
    others: Vec<u64>,
}

fn checked_report(report: SpendReport) -> Result<(String, Vec<Spent>), AdminError> {
    let invalid = AdminError::InvalidRequest;
    let proxy_ok = (1..=MAX_PROXY_CHARS).contains(&report.proxy.len())
        && report.proxy.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !proxy_ok {
        return Err(invalid(format!("proxy must be 1 to {MAX_PROXY_CHARS} characters of A-Z a-z 0-9 _ -")));
    }
    if report.keys.len() > MAX_REPORT_KEYS {
        return Err(invalid(format!("at most {MAX_REPORT_KEYS} keys per report")));
    }
    let mut items = Vec::with_capacity(report.keys.len());
    for (i, k) in report.keys.into_iter().enumerate() {
        if k.key_id.is_empty() || k.key_id.len() > MAX_KEY_ID_BYTES || k.key_id.chars().any(char::is_control) {
            return Err(invalid(format!("keys[{i}].key_id must be 1 to {MAX_KEY_ID_BYTES} bytes without control characters")));
        }
        if k.spent > MAX_CREDITS.saturating_mul(2) {
            return Err(invalid(format!("keys[{i}].spent is too large")));
        }
        items.push(Spent { key_id: k.key_id, epoch: k.epoch, period: k.period, spent: k.spent });
    }
    Ok((report.proxy, items))
}

#[utoipa::path(post, path = "/v1/credit-spend", tag = "feed", summary = "Filters report credits spent (stored durably) and hear what the other proxies spent", security(("proxy" = [])),
    request_body(content = SpendReport, description = "At most 5000 keys and 1 MiB per report"),
    responses((status = 200, description = "What the other proxies spent of each reported key, in order", body = SpendAnswer))
)]
pub async fn credit_spend(state: AppState, report: SpendReport) -> Result<Response, AdminError> {
    let (proxy, items) = checked_report(report)?;
    let others = durable_write(state.store(), move |s| s.record_credit_spend(&proxy, &items)).await?;
    ok_json(StatusCode::OK, &SpendAnswer { others })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn new(value: serde_json::Value) -> Result<Option<(u64, Option<Refill>)>, AdminError> {
        serde_json::from_value::<NewCredits>(value).unwrap().checked()
    }

    #[test]
    fn balances_and_refills_are_checked() {
        assert_eq!(new(serde_json::json!({"remaining": 5})).unwrap(), Some((5, None)));
        let refilled = new(serde_json::json!({"remaining": 5, "refill": {"interval": "month", "amount": 100}})).unwrap();
        assert_eq!(refilled, Some((5, Some(Refill { interval: Interval::Month, amount: 100 }))));
        assert_eq!(new(serde_json::json!({"remaining": null})).unwrap(), None);
        assert!(new(serde_json::json!({"remaining": MAX_CREDITS + 1})).is_err());
        assert!(new(serde_json::json!({"remaining": 1, "refill": {"interval": "day", "amount": 0}})).is_err());
        assert!(new(serde_json::json!({"remaining": null, "refill": {"interval": "day", "amount": 3}})).is_err());
        assert!(
            serde_json::from_value::<NewCredits>(serde_json::json!({"remaining": 1, "refill": {"interval": "week", "amount": 3}})).is_err()
        );
    }

    #[test]
    fn spend_reports_are_checked_by_field() {
        let report = |v: serde_json::Value| checked_report(serde_json::from_value(v).unwrap());
        assert!(report(serde_json::json!({"proxy": "ab12", "keys": [{"key_id": "key_a", "epoch": 1, "period": 0, "spent": 3}]})).is_ok());
        assert!(report(serde_json::json!({"proxy": "", "keys": []})).is_err());
        assert!(report(serde_json::json!({"proxy": "a", "keys": [{"key_id": "", "epoch": 1, "period": 0, "spent": 3}]})).is_err());
    }
}
