//! keygate's proxy-wasm filter: a thin shell from Envoy's host calls to `keygate-core`.
//!
//! - [`root`]: the root context: parses the plugin configuration once, keeps this VM's
//!   replica of admin's snapshot current (long-poll on a tick), defines the metrics.
//! - [`http`]: one context per request: gathers the request, calls `core::decide`, and
//!   maps the decision to header edits or a local JSON reply.
//! - [`held`]: requests held for a key or signing key not yet in the snapshot, released
//!   or refused from the root's tick.
//! - [`limit`] and [`fleet`]: rate limits counted in Envoy's shared data, and the
//!   exchange of those counts with admin that makes them fleet-wide.
//! - [`credits`]: a key's credits spent in Envoy's shared data, and the exchange of that
//!   spending with admin that makes it fleet-wide and durable.
//! - [`vm`]: what one VM's contexts share (the snapshot view, token cache, usage, held
//!   requests, metrics).
//! - [`host`]: the host calls, wrapped so that a host error is a value, never a panic.
//!
//! `proxy_wasm::set_log_level` also installs the SDK's panic hook, which logs any panic
//! at critical before the VM dies (Envoy's `failure_policy` then decides what happens).

pub mod credits;
pub mod fleet;
pub mod held;
pub mod host;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod root;
pub mod shared;
pub mod vm;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::KeygateRoot::new(context_id)) });
}}
