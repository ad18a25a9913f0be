//! What one VM's contexts share: the root context fills it, each request context reads it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use keygate_core::hold::Holding;
use keygate_core::ratelimit::fleet::{FleetView, MAX_COUNTERS};
use keygate_core::usage::UsageBatch;
use keygate_core::TokenCache;

use crate::host;
use crate::metrics::Metrics;
use crate::shared::View;

/// The root's tick: the leader lease, the feed and usage flushes.
pub const TICK: Duration = Duration::from_millis(100);
/// The root's tick while requests are held: a new key reaches shared data a few ms after
/// admin's answer, and a held request should follow it as closely.
pub const HOLD_TICK: Duration = Duration::from_millis(2);

/// Keys this VM spent credits of, by key id, with when it last spent (ms).
pub type ActiveCredits = HashMap<String, u64>;

/// What the request contexts of one VM share with its root context.
#[derive(Debug, Default)]
pub struct VmState {
    pub view: RefCell<View>,
    pub tokens: RefCell<TokenCache>,
    pub usage: RefCell<UsageBatch>,
    /// Requests held for a key or signing key not yet in the snapshot.
    pub holding: RefCell<Holding>,
    pub metrics: Metrics,
    /// Counters this VM started a sub-window of: the ones it reports to the fleet.
    pub active_counters: RefCell<HashSet<String>>,
    /// The root's tick when nothing is held, in ms (0: [`TICK`]): shorter than `TICK` when
    /// `sync_interval_ms` is, so that the count exchange keeps its interval.
    pub base_tick_ms: Cell<u64>,
    /// A counter joined `active_counters` since the last exchange: exchange at the next
    /// tick instead of waiting for the interval (this Envoy knows none of the others'
    /// counts of it yet).
    pub new_counters: Cell<bool>,
    /// How this VM's exchange of counts with admin stands.
    pub fleet: Cell<FleetView>,
    /// Keys this VM spent credits of (and when it last did): the ones it reports.
    pub active_credits: RefCell<ActiveCredits>,
    /// A key joined `active_credits` since the last exchange: exchange at the next tick.
    pub new_credits: Cell<bool>,
    /// How this VM's exchange of credit spending with admin stands.
    pub credit_view: Cell<FleetView>,
    /// RateLimit headers for the answers of allowed requests, by request context id.
    pub response_headers: RefCell<HashMap<u32, Vec<(&'static str, String)>>>,
}

impl VmState {
    /// The root's tick when nothing is held.
    pub fn base_tick(&self) -> Duration {
        match self.base_tick_ms.get() {
            0 => TICK,
            ms => Duration::from_millis(ms),
        }
    }

    /// Notes counters for the fleet sync; past [`MAX_COUNTERS`] a counter is counted in
    /// this Envoy alone (a flood of client addresses cannot grow the report).
    pub fn note_counters(&self, started: Vec<String>) {
        if started.is_empty() {
            return;
        }
        let mut active = self.active_counters.borrow_mut();
        for name in started {
            if active.len() < MAX_COUNTERS && active.insert(name) {
                self.new_counters.set(true);
            }
        }
    }

    /// Notes a key this VM spent credits of, for the exchange with admin (a key new to the
    /// VM is exchanged at the next tick; past the report's bound, counted here alone).
    pub fn note_credits(&self, key_id: &str, now_ms: u64) {
        let mut active = self.active_credits.borrow_mut();
        let room = active.len() < keygate_core::credits::MAX_REPORT_KEYS;
        match active.get_mut(key_id) {
            Some(at) => *at = now_ms,
            None if room => {
                active.insert(key_id.to_owned(), now_ms);
                self.new_credits.set(true);
            }
            None => {}
        }
    }

    /// Ticks fast while anything is held (set once: setting the period restarts the timer,
    /// so setting it on every held request would put the tick off under a flood).
    pub fn hold_ticks(&self) {
        let mut holding = self.holding.borrow_mut();
        if !holding.fast_tick {
            holding.fast_tick = true;
            drop(holding);
            host::set_tick_period(HOLD_TICK);
        }
    }

    /// Back to the ordinary tick once nothing is held.
    pub fn calm_ticks(&self) {
        let mut holding = self.holding.borrow_mut();
        if holding.fast_tick && holding.is_empty() {
            holding.fast_tick = false;
            drop(holding);
            host::set_tick_period(self.base_tick());
        }
    }
}
