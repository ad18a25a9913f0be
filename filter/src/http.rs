//! One context per request: gather the request, `decide`, charge the rate limit, act. A
//! request pending for a key or signing key the snapshot lacks is paused and held (see
//! `held`), and decided again by the root's tick with the same [`evaluate`] and [`settle`].

use keygate_core::decide::after_rate_limit;
use keygate_core::hold::Admission;
use keygate_core::{decide_or_hold, wants_address, Decision, FilterConfig, Outcome, Pending, RequestView, Requirement, Synced};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

use crate::credits;
use crate::host;
use crate::limit;
use crate::shared::{self, SharedKeys, SharedRevocations};
use crate::vm::VmState;

pub struct RequestContext {
    /// The host's id of this request's context, by which a held request is resumed.
    id: u32,
    config: Rc<FilterConfig>,
    vm: Rc<VmState>,
}

impl RequestContext {
    pub fn new(id: u32, config: Rc<FilterConfig>, vm: Rc<VmState>) -> RequestContext {
        RequestContext { id, config, vm }
    }

    /// Holds a pending request unless it timed out lately or too many are held.
    fn hold(&self, pending: &Pending, version: Option<u64>) -> bool {
        let (admission, waiting) = {
            let mut holding = self.vm.holding.borrow_mut();
            (holding.admit(self.id, &pending.awaited, host::now_millis(), version), holding.len())
        };
        self.vm.metrics.admission(admission);
        if admission != Admission::Held {
            return false;
        }
        self.vm.metrics.waiting(waiting);
        self.vm.hold_ticks();
        true
    }
}

impl Context for RequestContext {}

impl Drop for RequestContext {
    /// A stream that ends while held (the client went away) leaves the held set at once.
    fn drop(&mut self) {
        if let Ok(mut headers) = self.vm.response_headers.try_borrow_mut() {
            headers.remove(&self.id);
        }
        let Ok(mut holding) = self.vm.holding.try_borrow_mut() else { return };
        if holding.forget(self.id) {
            let waiting = holding.len();
            drop(holding);
            self.vm.metrics.waiting(waiting);
        }
    }
}

fn pseudo<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

/// A request decided on what the host gives for the current (or effective) context.
pub struct Evaluated {
    pub outcome: Outcome,
    /// RateLimit headers for the answer, whichever it is.
    pub rate_headers: Vec<(&'static str, String)>,
    /// The snapshot version it was decided on.
    pub version: Option<u64>,
    pub now: u64,
}

/// Reads the request, decides it (with `hold`, a request whose key or `kid` the snapshot
/// lacks may come out pending) and charges an allowed one to its rate limit.
pub fn evaluate(config: &FilterConfig, vm: &VmState, hold: bool) -> Evaluated {
    let headers = host::request_headers();
    let (method, path) = (pseudo(&headers, ":method"), pseudo(&headers, ":path"));
    let route = config.policy.route_for(method, path);
    // Public routes count per client address; a key route needs it only for a key with
    // an allowlist (`wants_address` below): skip the property lookup otherwise.
    let mut client_ip = (route.require == Requirement::None).then(host::client_ip).flatten();
    // One clock read: seconds for the decision, milliseconds for the rate-limit windows.
    let now_ms = host::now_ms();
    let now = now_ms.map(|ms| ms / 1000);
    let ns = config.sync.shared_prefix.as_str();
    let seen = shared::read_seen(ns);
    let (keys, revoked) = (SharedKeys::new(ns), SharedRevocations::new(ns));
    let outcome = {
        let mut view = vm.view.borrow_mut();
        if let Some(seen) = seen {
            view.refresh(ns, seen);
        }
        let synced = match (&view.snapshot, seen, now) {
            (Some(snapshot), Some(seen), Some(_)) => {
                Some(Synced { snapshot, keys: &keys, revoked: &revoked, confirmed_at: seen.confirmed_at })
            }
            _ => None,
        };
        let mut tokens = vm.tokens.borrow_mut();
        let mut decide = |client_ip: Option<&str>| {
            let request = RequestView { method, path, headers: &headers, client_ip };
            let outcome = decide_or_hold(&config.policy, route, &request, synced, now.unwrap_or(0), &mut tokens, hold);
            (wants_address(&request, &outcome), outcome)
        };
        match decide(client_ip.as_deref()) {
            (true, _) => {
                client_ip = host::client_ip();
                decide(client_ip.as_deref()).1
            }
            (false, outcome) => outcome,
        }
    };
    let request = RequestView { method, path, headers: &headers, client_ip: client_ip.as_deref() };
    let now = now.unwrap_or(0);
    let mut rate_headers = Vec::new();
    let outcome = match outcome {
        Outcome::Decided(Decision::Allow(allowed)) if !allowed.rate_limits.is_empty() || allowed.credits.is_some() => {
            let now_ms = now_ms.unwrap_or(0);
            // Credits first, so that a key with none left is not counted against its rate
            // limit; a request the rate limit then refuses gets its credits back.
            let spent = match &allowed.credits {
                Some(check) => credits::charge(config, vm, check, now_ms),
                None => Ok(false),
            };
            match spent {
                Err(denial) => Outcome::Decided(after_rate_limit(route, allowed, Err(denial))),
                Ok(_) if allowed.rate_limits.is_empty() => Outcome::Decided(Decision::Allow(allowed)),
                Ok(spent) => {
                    let limits = &config.policy.rate_limits;
                    let charged = limit::charge(ns, limits, &allowed.rate_limits, vm.fleet.get(), now_ms);
                    vm.note_counters(charged.started);
                    rate_headers = charged.headers;
                    if let (true, Err(_), false, Some(check)) = (spent, &charged.result, route.shadow, &allowed.credits) {
                        credits::refund(config, check);
                    }
                    Outcome::Decided(after_rate_limit(route, allowed, charged.result))
                }
            }
        }
        other => other,
    };
    if let Outcome::Decided(Decision::Allow(allowed)) = &outcome {
        if let Some(denial) = &allowed.shadow_denial {
            log::info!(
                "shadow rule would deny {} {} ({})",
                request.method,
                request.path.split('?').next().unwrap_or(""),
                denial.code.as_str()
            );
        }
    }
    Evaluated { outcome, rate_headers, version: seen.map(|s| s.version), now }
}

/// Acts on a final decision for the current (or effective) context `id`: the identity
/// headers of an allowed request (and its RateLimit headers kept for the answer), or the
/// refusal as a local reply. Whether it was allowed.
pub fn settle(vm: &VmState, id: u32, decision: Decision, now: u64, rate_headers: Vec<(&'static str, String)>) -> bool {
    vm.metrics.decision(&decision);
    match decision {
        Decision::Allow(allowed) => {
            if let Some(key_id) = &allowed.key_id {
                vm.usage.borrow_mut().record(key_id, now);
            }
            allowed.remove_headers.iter().for_each(|name| host::remove_request_header(name));
            allowed.add_headers.iter().for_each(|(name, value)| host::set_request_header(name, value));
            if !rate_headers.is_empty() {
                vm.response_headers.borrow_mut().insert(id, rate_headers);
            }
            true
        }
        Decision::Deny(denial) => {
            let mut headers = denial.headers();
            headers.extend(rate_headers);
            host::send_local_reply(denial.status(), &headers, &denial.body());
            false
        }
    }
}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let hold = self.vm.holding.borrow().enabled();
        let evaluated = evaluate(&self.config, &self.vm, hold);
        let decision = match evaluated.outcome {
            Outcome::Decided(decision) => decision,
            Outcome::Pending(pending) => {
                if self.hold(&pending, evaluated.version) {
                    return Action::Pause;
                }
                Decision::Deny(pending.denial)
            }
        };
        if settle(&self.vm, self.id, decision, evaluated.now, evaluated.rate_headers) {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.vm.response_headers.borrow_mut().remove(&self.id);
        headers.into_iter().flatten().for_each(|(name, value)| host::set_response_header(name, &value));
        Action::Continue
    }
}
