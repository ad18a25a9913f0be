//! One context per request: gather the request, `decide`, charge the rate limit, act.

use keygate_core::decide::after_rate_limit;
use keygate_core::{decide_on_route, Decision, FilterConfig, RequestView, Requirement, Synced};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

use crate::host;
use crate::limit;
use crate::shared::{self, SharedKeys, SharedRevocations};
use crate::vm::VmState;

pub struct RequestContext {
    config: Rc<FilterConfig>,
    vm: Rc<VmState>,
}

impl RequestContext {
    pub fn new(config: Rc<FilterConfig>, vm: Rc<VmState>) -> RequestContext {
        RequestContext { config, vm }
    }
}

impl Context for RequestContext {}

fn pseudo<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = host::request_headers();
        let (method, path) = (pseudo(&headers, ":method"), pseudo(&headers, ":path"));
        let route = self.config.policy.route_for(method, path);
        // Only public routes are limited per client address: skip the property lookup otherwise.
        let client_ip = (route.require == Requirement::None).then(host::client_ip).flatten();
        let now = host::now();
        let request = RequestView { method, path, headers: &headers, client_ip: client_ip.as_deref() };
        let ns = self.config.sync.shared_prefix.as_str();
        let seen = shared::read_seen(ns);
        let decision = {
            let mut view = self.vm.view.borrow_mut();
            if let Some(seen) = seen {
                view.refresh(ns, seen);
            }
            let synced = match (&view.snapshot, seen, now) {
                (Some(snapshot), Some(seen), Some(_)) => {
                    Some(Synced { snapshot, keys: &SharedKeys(ns), revoked: &SharedRevocations(ns), confirmed_at: seen.confirmed_at })
                }
                _ => None,
            };
            decide_on_route(&self.config.policy, route, &request, synced, now.unwrap_or(0), &mut self.vm.tokens.borrow_mut())
        };
        let decision = match decision {
            Decision::Allow(allowed) => match allowed
                .rate_limit
                .as_ref()
                .map(|t| limit::charge(ns, t, now.unwrap_or(0), self.config.policy.rate_limits.counter_slots))
            {
                Some(charged) => after_rate_limit(route, allowed, charged),
                None => Decision::Allow(allowed),
            },
            deny => deny,
        };
        self.vm.metrics.decision(&decision);
        match decision {
            Decision::Allow(allowed) => {
                if let Some(denial) = &allowed.shadow_denial {
                    log::info!(
                        "shadow rule would deny {} {} ({})",
                        request.method,
                        request.path.split('?').next().unwrap_or(""),
                        denial.code.as_str()
                    );
                }
                if let Some(key_id) = &allowed.key_id {
                    self.vm.usage.borrow_mut().record(key_id, now.unwrap_or(0));
                }
                allowed.remove_headers.iter().for_each(|name| host::remove_request_header(name));
                allowed.add_headers.iter().for_each(|(name, value)| host::set_request_header(name, value));
                Action::Continue
            }
            Decision::Deny(denial) => {
                host::send_local_reply(denial.status(), &denial.headers(), &denial.body());
                Action::Pause
            }
        }
    }
}
