//! Host calls the filter makes, each turned into a plain value. The SDK's convenience
//! methods `unwrap` host results, and its `get_http_request_headers` panics on a header
//! value that is not UTF-8 (Envoy lets such bytes through): a client could kill the VM
//! with one header. Everything here goes through the fallible `hostcalls` instead.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::time::{Duration, UNIX_EPOCH};

/// Request headers (pseudo-headers included). Values that are not UTF-8 are decoded
/// lossily: they can then never equal a valid key or token.
pub fn request_headers() -> Vec<(String, String)> {
    match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
        Ok(pairs) => pairs.into_iter().map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned())).collect(),
        Err(status) => {
            log::error!("reading request headers failed: {status:?}");
            Vec::new()
        }
    }
}

/// Seconds since the epoch; `None` when the host has no clock (the request is then
/// treated as having no snapshot, so it fails closed).
pub fn now() -> Option<u64> {
    hostcalls::get_current_time().ok()?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

pub fn now_millis() -> u64 {
    now_ms().unwrap_or(0)
}

/// Milliseconds since the epoch; `None` when the host has no clock.
pub fn now_ms() -> Option<u64> {
    let since = hostcalls::get_current_time().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// The downstream address as Envoy gives it (`source.address`: `ip:port`, `[v6]:port`);
/// core's `ratelimit::client_id` parses it (with `use_remote_address`, the real peer).
pub fn client_ip() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["source", "address"]).ok()??;
    String::from_utf8(bytes).ok()
}

pub fn remove_request_header(name: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None) {
        log::warn!("removing a request header failed: {status:?}");
    }
}

pub fn set_request_header(name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)) {
        log::warn!("setting a request header failed: {status:?}");
    }
}

pub fn set_response_header(name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)) {
        log::warn!("setting a response header failed: {status:?}");
    }
}

pub fn send_local_reply(status: u16, headers: &[(&str, String)], body: &str) {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Err(e) = hostcalls::send_http_response(u32::from(status), headers, Some(body.as_bytes())) {
        log::error!("sending the local reply failed: {e:?}");
    }
}

pub fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default()
}

/// Calls admin through its Envoy cluster; the answer arrives in the root context's
/// `on_http_call_response` with the returned token.
pub fn dispatch(
    cluster: &str,
    authority: &str,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Option<u32> {
    let authorization = format!("Bearer {bearer}");
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", authority),
        ("authorization", authorization.as_str()),
        ("accept", "application/json"),
    ];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    match hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!("cannot call admin cluster {cluster:?}: {status:?}");
            None
        }
    }
}

/// The `:status` of an `dispatch_http_call` response; `None` when there was none.
pub fn call_response_status() -> Option<u16> {
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok()??.parse().ok()
}

pub fn call_response_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size).ok().flatten().unwrap_or_default()
}

/// A shared-data value (shared by every worker VM of this `vm_id`) and its CAS token.
pub fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Stores `value` if the entry is still at `cas`; `false` when another worker won the race
/// (or the host refused).
pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(key, Some(value), cas).is_ok()
}

// The SDK's wrappers of these three panic on a status they do not expect: called here
// directly, a host refusal is a value.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
}

const STATUS_OK: u32 = 0;
const STREAM_HTTP_REQUEST: u32 = 0;

/// Makes the following host calls act on the context `context_id` (a held request, from
/// the root's tick); `false` when the host no longer knows it (the stream has ended).
pub fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: a proxy-wasm ABI import taking and returning plain integers.
    unsafe { proxy_set_effective_context(context_id) == STATUS_OK }
}

/// Lets the paused request of the effective context go on to the upstream.
pub fn resume_request() {
    // SAFETY: a proxy-wasm ABI import taking and returning plain integers.
    let status = unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) };
    if status != STATUS_OK {
        log::warn!("resuming a held request failed: status {status}");
    }
}

/// The root context's tick period (from any context of the VM, the host sets the root's).
pub fn set_tick_period(period: std::time::Duration) {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: a proxy-wasm ABI import taking and returning plain integers.
    let status = unsafe { proxy_set_tick_period_milliseconds(ms) };
    if status != STATUS_OK {
        log::warn!("setting the tick period failed: status {status}");
    }
}
