//! The root context: one per VM. Parses the plugin configuration once; holds or waits for
//! the leader lease; as leader, keeps the shared key buckets current from admin's feed;
//! posts this VM's batched usage; and hands the shared state to each request context.
//!
//! Sync (leader only): a 100 ms tick starts a feed request when none is in flight and the
//! back-off has passed. A successful answer (a page, a change, or a long-poll that timed out
//! unchanged) starts the next request at once; a failure waits `poll_interval_ms`.
//!
//! While requests are held (`held`), the tick runs every 2 ms to release them; the work
//! above still runs every 100 ms.

use keygate_core::feed::Leader;
use keygate_core::ratelimit::fleet;
use keygate_core::sync::{Health, SyncOutcome};
use keygate_core::usage::{self, KeyUsage};
use keygate_core::{FilterConfig, TokenCache};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

use crate::credits::CreditSync;
use crate::fleet::CountSync;
use crate::held;
use crate::host;
use crate::http::RequestContext;
use crate::metrics::Metrics;
use crate::shared::{self, Exchange, View};
use crate::vm::{VmState, HOLD_TICK, TICK};

const USAGE_PATH: &str = "/v1/usage";

pub struct KeygateRoot {
    /// The host's id of this root context.
    id: u32,
    config: Option<Rc<FilterConfig>>,
    vm: Rc<VmState>,
    /// This VM's identity in the leader lease.
    me: u64,
    leader: Option<Leader>,
    feed_call: Option<u32>,
    next_poll_at_ms: u64,
    /// Usage posts in flight: call token and the items it carries.
    usage_calls: Vec<(u32, Vec<KeyUsage>)>,
    next_usage_at_ms: u64,
    /// The last usage post failed: wait for the interval, never flush early.
    usage_failing: bool,
    /// When the lease, feed and usage work is next due (the tick may run faster).
    next_work_at_ms: u64,
    /// The exchange of rate-limit counts with admin.
    counts: CountSync,
    /// The exchange of credit spending with admin.
    credits: CreditSync,
}

fn vm_identity() -> u64 {
    // RandomState is seeded from WASI's random_get: distinct per VM.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(host::now_millis());
    hasher.finish() | 1
}

impl KeygateRoot {
    pub fn new(id: u32) -> KeygateRoot {
        let vm = VmState { metrics: Metrics::define(), ..VmState::default() };
        KeygateRoot {
            id,
            config: None,
            vm: Rc::new(vm),
            me: vm_identity(),
            leader: None,
            feed_call: None,
            next_poll_at_ms: 0,
            usage_calls: Vec::new(),
            next_usage_at_ms: 0,
            usage_failing: false,
            next_work_at_ms: 0,
            counts: CountSync::default(),
            credits: CreditSync::default(),
        }
    }

    fn poll(&mut self, config: &FilterConfig) {
        let Some(leader) = &self.leader else { return };
        let sync = &config.sync;
        let path = leader.next_path(sync.long_poll_secs);
        let timeout = Duration::from_millis(sync.admin_timeout_ms) + Duration::from_secs(sync.long_poll_secs);
        self.feed_call = host::dispatch(&sync.admin_cluster, &sync.admin_authority, "GET", &path, &sync.proxy_token, None, timeout);
        if self.feed_call.is_none() {
            self.on_feed(None, &[]);
        }
    }

    fn on_feed(&mut self, status: Option<u16>, body: &[u8]) {
        let Some(config) = self.config.clone() else { return };
        let Some(leader) = &mut self.leader else { return };
        let now = host::now().unwrap_or(0);
        let ns = config.sync.shared_prefix.as_str();
        // The fence: renew our term right before writing; a VM that lost it applies nothing.
        let now_ms = host::now_millis();
        let step = leader.on_response(status, body, now, shared::current_lease(ns, self.me, now_ms), now_ms);
        if step.deposed {
            log::info!("this VM lost the snapshot sync to another; its pending feed answer is dropped");
            self.leader = None;
            return;
        }
        let written = shared::apply(ns, step.ops, step.write_until_ms).and_then(|added| {
            leader.adjust_keys(added);
            // After the key count is adjusted, the leader's meta is what the shared data holds.
            shared::publish(ns, step.meta.as_ref().and(leader.meta()), step.seen, step.write_until_ms)
        });
        if written.is_err() {
            // Stopped before the term could end; whoever leads next continues from the
            // published meta (re-applying changes is harmless).
            log::warn!("the snapshot sync's lease term ran out while writing; resuming from the published state");
            self.leader = None;
            return;
        }
        if let Some(meta) = leader.meta() {
            self.vm.metrics.snapshot(meta.version, meta.keys);
        }
        if let Some(outcome) = &step.outcome {
            self.vm.metrics.sync(outcome);
            log_sync(outcome, step.health);
        }
        let backoff = self.config.as_ref().map_or(1000, |c| c.sync.poll_interval_ms);
        self.next_poll_at_ms = match step.outcome {
            Some(SyncOutcome::Failed(_)) => host::now_millis().saturating_add(backoff),
            _ => 0,
        };
    }

    /// Posts the usage batched since the last flush, split into bodies admin accepts, all
    /// at once; a body that could not be sent goes back into the batch for the next flush.
    fn flush_usage(&mut self, config: &FilterConfig) {
        let report = self.vm.usage.borrow_mut().drain();
        let (bodies, unsendable) = usage::split_report(report.usage, usage::MAX_REPORT_BYTES);
        if !unsendable.is_empty() {
            self.drop_usage(unsendable.len(), "a key id too long for any report");
        }
        let sync = &config.sync;
        let timeout = Duration::from_millis(sync.admin_timeout_ms);
        for part in bodies {
            match host::dispatch(
                &sync.admin_cluster,
                &sync.admin_authority,
                "POST",
                USAGE_PATH,
                &sync.proxy_token,
                Some(&part.body),
                timeout,
            ) {
                Some(token) => self.usage_calls.push((token, part.items)),
                None => {
                    self.usage_failing = true;
                    self.vm.usage.borrow_mut().restore(part.items);
                }
            }
        }
    }

    /// Gives up on usage admin will never take (one log line and a metric), rather than
    /// sending it again at every flush.
    fn drop_usage(&self, keys: usize, why: &str) {
        self.vm.metrics.usage_dropped(keys);
        log::warn!("dropped the usage of {keys} keys: {why}");
    }

    /// Keeps or takes the lease; on taking it, continues from what the shared data holds.
    fn lead(&mut self, ns: &str, now_ms: u64) {
        let leading = shared::hold_lease(ns, self.me, now_ms, false);
        match (leading, self.leader.is_some()) {
            (Some(lease), false) => {
                log::info!("this VM now syncs the snapshot for all workers");
                let page_keys = self.config.as_ref().map_or(keygate_core::feed::PAGE_KEYS, |c| c.sync.snapshot_page_keys);
                self.leader = Some(Leader::adopt(shared::read_meta(ns), page_keys, lease));
                self.feed_call = None;
                self.next_poll_at_ms = 0;
            }
            (None, true) => {
                log::info!("another VM took over the snapshot sync");
                self.leader = None;
                self.feed_call = None;
            }
            _ => {}
        }
    }
}

fn log_sync(outcome: &SyncOutcome, health: Option<Health>) {
    match (outcome, health) {
        (SyncOutcome::Applied { version, full, keys }, _) => {
            log::info!("snapshot v{version} applied ({}, {keys} keys)", if *full { "full" } else { "delta" })
        }
        (SyncOutcome::Resync, _) => log::info!("admin no longer has our changes; taking a full snapshot"),
        (SyncOutcome::Failed(reason), Some(Health::Failing)) => {
            log::warn!("snapshot sync failing ({reason}); the last good snapshot, if any, is enforced until max_staleness_secs")
        }
        (_, Some(Health::Healthy)) => log::info!("snapshot sync recovered"),
        _ => {}
    }
}

impl Context for KeygateRoot {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        if self.counts.owns(token_id) {
            if let Some(config) = self.config.clone() {
                let body = host::call_response_body(body_size.min(fleet::MAX_ANSWER_BYTES));
                self.counts.on_answer(&config, &self.vm, host::call_response_status(), &body);
            }
            return;
        }
        if self.credits.owns(token_id) {
            if let Some(config) = self.config.clone() {
                let body = host::call_response_body(body_size.min(keygate_core::credits::MAX_ANSWER_BYTES));
                self.credits.on_answer(&config, &self.vm, host::call_response_status(), &body);
            }
            return;
        }
        if let Some(i) = self.usage_calls.iter().position(|(t, _)| *t == token_id) {
            let (_, items) = self.usage_calls.swap_remove(i);
            let status = host::call_response_status();
            self.usage_failing = !status.is_some_and(|s| (200..300).contains(&s));
            match status {
                Some(200..=299) => {}
                // A refused report is refused again: only an unreachable or failing admin
                // (no answer, 408, 429, 5xx) is worth another try.
                Some(status @ 400..=499) if !matches!(status, 408 | 429) => {
                    self.drop_usage(items.len(), &format!("admin answered {status}"))
                }
                _ => self.vm.usage.borrow_mut().restore(items),
            }
            return;
        }
        if self.feed_call != Some(token_id) {
            return;
        }
        self.feed_call = None;
        if body_size > keygate_core::sync::MAX_SNAPSHOT_BYTES {
            if let Some(leader) = &mut self.leader {
                let step = leader.on_oversized();
                self.vm.metrics.sync(step.outcome.as_ref().unwrap_or(&SyncOutcome::Resync));
                log::warn!("a feed answer of {body_size} bytes is too large to read; taking a paged full snapshot");
            }
        } else {
            self.on_feed(host::call_response_status(), &host::call_response_body(body_size));
        }
        if let (Some(config), 0) = (self.config.clone(), self.next_poll_at_ms) {
            self.poll(&config);
        }
    }
}

impl RootContext for KeygateRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let env_token = std::env::var("KEYGATE_PROXY_TOKEN").ok();
        match FilterConfig::parse(&host::plugin_configuration(), env_token.as_deref()) {
            Ok(config) => {
                log::info!("configured: {} route rules, admin cluster {:?}", config.policy.routes.len(), config.sync.admin_cluster);
                *self.vm.tokens.borrow_mut() = TokenCache::new(config.policy.token_cache_entries);
                // Requests held already keep their deadlines; new ones follow the new settings.
                self.vm.holding.borrow_mut().configure(config.hold.clone());
                if self.config.as_ref().is_some_and(|old| old.sync.shared_prefix != config.sync.shared_prefix) {
                    // Another admin, another namespace: what this VM led is not there.
                    self.leader = None;
                    self.feed_call = None;
                    self.next_poll_at_ms = 0;
                    *self.vm.view.borrow_mut() = View::default();
                }
                let sync_ms = config.policy.rate_limits.sync_interval_ms;
                self.vm.base_tick_ms.set(if sync_ms > 0 { sync_ms.min(as_ms(TICK)) } else { 0 });
                self.config = Some(Rc::new(config));
                host::set_tick_period(if self.vm.holding.borrow().fast_tick { HOLD_TICK } else { self.vm.base_tick() });
                true
            }
            Err(e) => {
                log::error!("refusing the plugin configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(config) = self.config.clone() else { return };
        let now_ms = host::now_millis();
        if now_ms >= self.next_work_at_ms {
            // A little early is on time: the fast tick lands anywhere within its period.
            self.next_work_at_ms = now_ms.saturating_add(as_ms(TICK)).saturating_sub(as_ms(HOLD_TICK));
            self.work(&config, now_ms);
        }
        self.counts.tick(&config, &self.vm, self.vm.base_tick(), now_ms);
        self.credits.tick(&config, &self.vm, now_ms);
        held::release(&config, &self.vm, self.id, now_ms);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(RequestContext::new(context_id, config, Rc::clone(&self.vm))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn as_ms(period: Duration) -> u64 {
    u64::try_from(period.as_millis()).unwrap_or(u64::MAX)
}

impl KeygateRoot {
    /// The tick's own work: the lease, the feed, the usage flush.
    fn work(&mut self, config: &FilterConfig, now_ms: u64) {
        let ns = config.sync.shared_prefix.as_str();
        self.lead(ns, now_ms);
        // Another worker's exchanges tell this one whether admin answers the Envoy (and how
        // many proxies it counts): a worker cut off without traffic of its own still shares.
        self.vm.fleet.set(shared::read_view(ns, Exchange::Counts));
        self.vm.credit_view.set(shared::read_view(ns, Exchange::Credits));
        if let Some(seen) = shared::read_seen(ns) {
            self.vm.metrics.snapshot_age((now_ms / 1000).saturating_sub(seen.confirmed_at));
        }
        if self.leader.is_some() && self.feed_call.is_none() && now_ms >= self.next_poll_at_ms {
            self.poll(config);
        }
        // Half a full batch is sent without waiting for the interval, so a burst of new
        // keys is counted rather than turned away by a full batch (unless admin is failing).
        let filling = !self.usage_failing && self.vm.usage.borrow().len() >= usage::MAX_BATCH_KEYS / 2;
        if self.usage_calls.is_empty() && (now_ms >= self.next_usage_at_ms || filling) {
            self.next_usage_at_ms = now_ms.saturating_add(config.sync.usage_flush_secs.saturating_mul(1000));
            if !self.vm.usage.borrow().is_empty() {
                self.flush_usage(config);
            }
        }
    }
}
