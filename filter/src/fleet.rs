//! The exchange of rate-limit counts with admin, from each worker VM's root tick: every
//! `sync_interval_ms` (and at the next tick when a counter is new to the VM) the VM posts
//! its Envoy's counts (read from the shared slots) of the counters it has admitted requests
//! of, and writes the other proxies' counts it gets back into the same slots. Any VM of an Envoy may report a counter (they report the same
//! shared counts under the same proxy id, and admin keeps the larger), so no VM waits on
//! another. See `keygate_core::ratelimit::fleet` for the wire format.

use keygate_core::ratelimit::fleet::{self, CountReport, HEARTBEAT_MS, MAX_COUNTERS};
use keygate_core::ratelimit::{self, Slot};
use keygate_core::FilterConfig;
use std::time::Duration;

use crate::host;
use crate::limit;
use crate::shared::{self, Exchange};
use crate::vm::VmState;

/// How long an exchange may take, at most: a slow answer is as useless as none.
const MAX_EXCHANGE_MS: u64 = 2_000;
/// CAS attempts when writing the others' counts into a busy slot.
const MERGE_ATTEMPTS: usize = 8;

#[derive(Debug, Default)]
pub struct CountSync {
    /// The exchange in flight: its call token and the counters it reported, in order.
    call: Option<(u32, Vec<String>)>,
    next_at_ms: u64,
    last_sent_ms: u64,
    /// When a report last carried counts: heartbeats only follow those for a while, so an
    /// Envoy with no limited traffic sends nothing.
    last_counted_ms: u64,
}

/// How long after its last counts a VM keeps sending heartbeats (admin counts a proxy
/// among the fleet for a minute after its last report).
const HEARTBEAT_FOR_MS: u64 = 60_000;

/// Where a counter's own slot is in this Envoy's table: its key, contents and CAS token.
fn own_slot(ns: &str, seed: &[u8], counter: &str, slots: u32) -> Option<(String, Slot, Option<u32>)> {
    let placement = ratelimit::place(ns, seed, counter, slots);
    let (probed, cases) = limit::probe(&placement);
    let i = probed.iter().position(|s| s.fingerprint == placement.fingerprint)?;
    Some((placement.keys.get(i)?.clone(), *probed.get(i)?, cases.get(i).copied().flatten()))
}

impl CountSync {
    pub fn owns(&self, token: u32) -> bool {
        self.call.as_ref().is_some_and(|(t, _)| *t == token)
    }

    /// Starts an exchange when one is due. `tick` is the root's tick when nothing is held: exchanges fall on it.
    pub fn tick(&mut self, config: &FilterConfig, vm: &VmState, tick: Duration, now_ms: u64) {
        let policy = &config.policy.rate_limits;
        if policy.sync_interval_ms == 0 || self.call.is_some() || (now_ms < self.next_at_ms && !vm.new_counters.get()) {
            return;
        }
        vm.new_counters.set(false);
        // A tenth of a tick early is on time: a tick landing a hair before the interval is
        // up would otherwise put the exchange off by a whole tick.
        let slack = u64::try_from(tick.as_millis()).unwrap_or(0).min(policy.sync_interval_ms) / 10;
        self.next_at_ms = now_ms.saturating_add(policy.sync_interval_ms - slack);
        let ns = config.sync.shared_prefix.as_str();
        let seed = limit::seed(ns);
        let mut counters = Vec::new();
        let mut names = Vec::new();
        vm.active_counters.borrow_mut().retain(|name| {
            let Some((bucket, _)) = fleet::parse_counter(name) else { return false };
            // A counter this Envoy counts nothing of any more needs no report.
            let Some((_, slot, _)) = own_slot(ns, &seed, name, policy.counter_slots) else { return false };
            let slot = slot.advanced(now_ms);
            if slot.own() == 0 || counters.len() >= MAX_COUNTERS {
                return slot.own() > 0;
            }
            counters.push(fleet::entry(bucket, &slot));
            names.push(name.clone());
            true
        });
        if counters.is_empty() {
            let quiet = now_ms.saturating_sub(self.last_counted_ms) > HEARTBEAT_FOR_MS;
            if quiet || now_ms.saturating_sub(self.last_sent_ms) < HEARTBEAT_MS {
                return;
            }
        } else {
            self.last_counted_ms = now_ms;
        }
        self.last_sent_ms = now_ms;
        let report = CountReport { proxy: fleet::proxy_id(&seed), counters };
        let Ok(body) = serde_json::to_vec(&report) else { return };
        let sync = &config.sync;
        let timeout = Duration::from_millis(sync.admin_timeout_ms.min(MAX_EXCHANGE_MS));
        match host::dispatch(&sync.admin_cluster, &sync.admin_authority, "POST", fleet::PATH, &sync.proxy_token, Some(&body), timeout) {
            Some(token) => self.call = Some((token, names)),
            None => self.settle(config, vm, None, now_ms),
        }
    }

    /// Takes admin's answer (`None`: no answer, or not a 2xx) into the slots.
    pub fn on_answer(&mut self, config: &FilterConfig, vm: &VmState, status: Option<u16>, body: &[u8]) {
        let Some((_, names)) = self.call.take() else { return };
        let now_ms = host::now_millis();
        let policy = &config.policy.rate_limits;
        let answer = status.filter(|s| (200..300).contains(s)).and_then(|_| fleet::parse_answer(body, names.len()));
        let Some(answer) = answer else {
            self.settle(config, vm, status, now_ms);
            return;
        };
        let ns = config.sync.shared_prefix.as_str();
        let seed = limit::seed(ns);
        for (name, others) in names.iter().zip(&answer.others) {
            for _ in 0..MERGE_ATTEMPTS {
                let Some((key, slot, cas)) = own_slot(ns, &seed, name, policy.counter_slots) else { break };
                let Some(merged) = fleet::merge(slot, others, now_ms) else { break };
                if host::shared_set(&key, &merged.encode(), cas) {
                    break;
                }
            }
        }
        vm.metrics.limit_exchange(true);
        let (before, after) = shared::record_view(ns, Exchange::Counts, |view| view.after(Some(answer.proxies), now_ms));
        vm.fleet.set(after);
        if before.failing_since_ms != 0 {
            log::info!("rate-limit counts reach admin again ({} proxies)", answer.proxies);
        }
    }

    /// A failed exchange: noted (once logged) so that, past `fleet_timeout_ms`, this VM
    /// admits only its share of each limit.
    fn settle(&mut self, config: &FilterConfig, vm: &VmState, status: Option<u16>, now_ms: u64) {
        let policy = &config.policy.rate_limits;
        vm.metrics.limit_exchange(false);
        let (before, after) = shared::record_view(&config.sync.shared_prefix, Exchange::Counts, |view| view.after(None, now_ms));
        vm.fleet.set(after);
        if before.failing_since_ms == 0 {
            let why = status.map_or("no answer".to_owned(), |s| format!("status {s}"));
            log::warn!(
                "rate-limit counts cannot reach admin ({why}); after {} ms each Envoy admits only its share of a limit",
                policy.fleet_timeout_ms
            );
        }
    }
}
