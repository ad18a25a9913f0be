//! Credits: each Envoy counts what it spent of a key in one shared-data entry
//! (`keygate.<ns>.cr.<key id>`, compare-and-swap per request), and every
//! `sync_interval_ms` each worker VM reports its Envoy's absolute spending of the keys it
//! charged to admin (`POST /v1/credit-spend`), which stores it durably and answers with
//! what the other proxies spent; that goes back into the same entries. No request waits on
//! the exchange. See `keygate_core::credits` for the counting rules.

use std::time::Duration;

use keygate_core::credits::{self, CreditCheck, CreditCount, SpendReport, Spent, MAX_REPORT_KEYS};
use keygate_core::decide::{quota_exhausted, Denial};
use keygate_core::FilterConfig;

use crate::host;
use crate::limit;
use crate::shared::{self, Exchange};
use crate::vm::VmState;

const CAS_ATTEMPTS: usize = 16;
const MAX_EXCHANGE_MS: u64 = 2_000;
/// How long after its last spend on this VM a key is still reported (its others' spending
/// kept fresh here).
const REPORT_FOR_MS: u64 = 60_000;
/// The interval when fleet counting of rate limits is off: spending is still made durable.
const DEFAULT_INTERVAL_MS: u64 = 1_000;

/// While the credit exchange has failed for `fleet_timeout_ms`: the proxies to share
/// what is left among.
fn cut_off(config: &FilterConfig, vm: &VmState, now_ms: u64) -> Option<u64> {
    let view = vm.credit_view.get();
    let failing = view.failing_since_ms != 0 && now_ms.saturating_sub(view.synced_at_ms) >= config.policy.rate_limits.fleet_timeout_ms;
    failing.then(|| vm.fleet.get().proxies.max(view.proxies).max(1))
}

/// Spends `check.cost` of the key's credits, if it has that many left. `Ok(true)`: spent
/// (to be refunded if a later check refuses the request).
pub fn charge(config: &FilterConfig, vm: &VmState, check: &CreditCheck, now_ms: u64) -> Result<bool, Denial> {
    let key = credits::count_key(&config.sync.shared_prefix, &check.key_id);
    let share = cut_off(config, vm, now_ms);
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = host::shared_get(&key);
        let count = bytes.as_deref().map(CreditCount::decode).unwrap_or_default();
        let spent = count.spend(check, share).map_err(|_| quota_exhausted(check))?;
        if host::shared_set(&key, &spent.encode(), cas) {
            vm.note_credits(&check.key_id, now_ms);
            return Ok(true);
        }
    }
    // Under a storm of concurrent spends of one key the request is refused rather than
    // let through uncounted: credits are money.
    log::debug!("credit count under contention; request refused");
    Err(quota_exhausted(check))
}

/// Gives back what [`charge`] spent.
pub fn refund(config: &FilterConfig, check: &CreditCheck) {
    let key = credits::count_key(&config.sync.shared_prefix, &check.key_id);
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = host::shared_get(&key);
        let count = bytes.as_deref().map(CreditCount::decode).unwrap_or_default();
        if host::shared_set(&key, &count.refund(check).encode(), cas) {
            return;
        }
    }
}

#[derive(Debug, Default)]
pub struct CreditSync {
    /// The exchange in flight: its call token and what it reported, in order.
    call: Option<(u32, Vec<Spent>)>,
    next_at_ms: u64,
}

impl CreditSync {
    pub fn owns(&self, token: u32) -> bool {
        self.call.as_ref().is_some_and(|(t, _)| *t == token)
    }

    pub fn tick(&mut self, config: &FilterConfig, vm: &VmState, now_ms: u64) {
        if self.call.is_some() || (now_ms < self.next_at_ms && !vm.new_credits.get()) {
            return;
        }
        vm.new_credits.set(false);
        let interval = match config.policy.rate_limits.sync_interval_ms {
            0 => DEFAULT_INTERVAL_MS,
            ms => ms,
        };
        self.next_at_ms = now_ms.saturating_add(interval - interval / 10);
        let ns = config.sync.shared_prefix.as_str();
        let mut keys = Vec::new();
        vm.active_credits.borrow_mut().retain(|key_id, last_spent| {
            if now_ms.saturating_sub(*last_spent) > REPORT_FOR_MS {
                return false;
            }
            let (bytes, _) = host::shared_get(&credits::count_key(ns, key_id));
            let count = bytes.as_deref().map(CreditCount::decode).unwrap_or_default();
            if keys.len() < MAX_REPORT_KEYS {
                keys.push(Spent { key_id: key_id.clone(), epoch: count.epoch, period: count.period, spent: count.own });
            }
            true
        });
        if keys.is_empty() {
            return;
        }
        let report = SpendReport { proxy: limit::proxy_id(ns), keys };
        let Ok(body) = serde_json::to_vec(&report) else { return };
        let sync = &config.sync;
        let timeout = Duration::from_millis(sync.admin_timeout_ms.min(MAX_EXCHANGE_MS));
        match host::dispatch(&sync.admin_cluster, &sync.admin_authority, "POST", credits::PATH, &sync.proxy_token, Some(&body), timeout) {
            Some(token) => self.call = Some((token, report.keys)),
            None => self.failed(config, vm, None, now_ms),
        }
    }

    pub fn on_answer(&mut self, config: &FilterConfig, vm: &VmState, status: Option<u16>, body: &[u8]) {
        let Some((_, reported)) = self.call.take() else { return };
        let now_ms = host::now_millis();
        let answer = status.filter(|s| (200..300).contains(s)).and_then(|_| credits::parse_answer(body, reported.len()));
        let Some(answer) = answer else {
            self.failed(config, vm, status, now_ms);
            return;
        };
        let ns = config.sync.shared_prefix.as_str();
        for (spent, others) in reported.iter().zip(answer.others) {
            let key = credits::count_key(ns, &spent.key_id);
            for _ in 0..CAS_ATTEMPTS {
                let (bytes, cas) = host::shared_get(&key);
                let count = bytes.as_deref().map(CreditCount::decode).unwrap_or_default();
                let merged = count.merged(spent, others);
                if merged == count || host::shared_set(&key, &merged.encode(), cas) {
                    break;
                }
            }
        }
        let (before, after) = shared::record_view(ns, Exchange::Credits, |view| view.after(Some(view.proxies.max(1)), now_ms));
        vm.credit_view.set(after);
        if before.failing_since_ms != 0 {
            log::info!("credit spending reaches admin again");
        }
    }

    fn failed(&mut self, config: &FilterConfig, vm: &VmState, status: Option<u16>, now_ms: u64) {
        let (before, after) = shared::record_view(&config.sync.shared_prefix, Exchange::Credits, |view| view.after(None, now_ms));
        vm.credit_view.set(after);
        if before.failing_since_ms == 0 {
            let why = status.map_or("no answer".to_owned(), |s| format!("status {s}"));
            log::warn!("credit spending cannot reach admin ({why}); once cut off, each Envoy spends only its share of what is left");
        }
    }
}
