//! The warp filters: path, then method, then authentication, then the body, then the
//! handler. Every rejection ends in [`crate::error::recover`]; every request is logged
//! with its method, a path template (ids and unknown segments masked, so nothing a
//! client typed into a path reaches the log) and its status.

use std::pin::pin;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::api;
use crate::auth::{self, Caller};
use crate::error::{recover, AdminError};
use crate::state::AppState;

/// Largest request body accepted, bytes.
pub const BODY_LIMIT: u64 = 64 * 1024;

fn reject(result: Result<Response, AdminError>) -> Result<Response, Rejection> {
    result.map_err(warp::reject::custom)
}

fn with_state(state: AppState) -> BoxedFilter<(AppState,)> {
    warp::any().map(move || state.clone()).boxed()
}

fn authorization() -> BoxedFilter<(Option<String>,)> {
    warp::header::optional::<String>("authorization").boxed()
}

fn operator(state: AppState) -> BoxedFilter<(AppState,)> {
    with_state(state)
        .and(authorization())
        .and_then(|state: AppState, header: Option<String>| async move {
            auth::require_operator(&state, header.as_deref()).map(|()| state).map_err(warp::reject::custom)
        })
        .boxed()
}

fn proxy(state: AppState) -> BoxedFilter<(AppState,)> {
    with_state(state)
        .and(authorization())
        .and_then(|state: AppState, header: Option<String>| async move {
            auth::require_proxy(&state, header.as_deref()).map(|()| state).map_err(warp::reject::custom)
        })
        .boxed()
}

fn caller(state: AppState) -> BoxedFilter<(AppState, Caller)> {
    with_state(state)
        .and(authorization())
        .and_then(|state: AppState, header: Option<String>| async move {
            auth::caller(&state, header.as_deref()).map(|caller| (state, caller)).map_err(warp::reject::custom)
        })
        .untuple_one()
        .boxed()
}

/// The client address for throttling (sign-ins and API-key logins): the socket peer, or
/// with `trust_forwarded_for` the last `X-Forwarded-For` entry (the one the nearest proxy
/// appended).
fn client_ip(state: AppState) -> BoxedFilter<(std::net::IpAddr,)> {
    warp::addr::remote()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .map(move |peer: Option<std::net::SocketAddr>, forwarded: Option<String>| {
            let peer = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.ip());
            if !state.config().trust_forwarded_for {
                return peer;
            }
            forwarded
                .as_deref()
                .and_then(|f| f.rsplit(',').next())
                .and_then(|last| last.trim().parse::<std::net::IpAddr>().ok())
                .unwrap_or(peer)
        })
        .boxed()
}

/// A JSON body that may be absent or empty (then `T::default()`).
fn optional_json<T: DeserializeOwned + Default + Send + 'static>() -> BoxedFilter<(T,)> {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(|length: Option<u64>, body| async move {
            if length == Some(0) {
                return Ok(T::default());
            }
            read_json_or_default::<T, _, _>(length, body).await.map_err(warp::reject::custom)
        })
        .boxed()
}

/// serde_json's messages for a wrong type or value quote the offending input, which may
/// be a password: keep only their shape and position.
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!(" at line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Eof => "the body is empty or ends early".to_owned(),
        Category::Syntax => format!("malformed JSON{at}"),
        Category::Io => "the body could not be read".to_owned(),
        Category::Data => {
            let message = e.to_string();
            let head = message.split(" at line ").next().unwrap_or_default();
            let names_only = ["unknown field", "missing field", "duplicate field", "unknown variant"];
            if names_only.iter().any(|p| head.starts_with(p)) {
                let head: String = head.chars().take(200).collect();
                format!("{head}{at}")
            } else {
                let kind = head.split(':').next().unwrap_or("invalid value");
                let expected = head.rsplit_once(", expected ").map(|(_, e)| format!(", expected {e}")).unwrap_or_default();
                format!("{kind}{expected}{at}")
            }
        }
    }
}

async fn read_json_or_default<T, S, B>(length: Option<u64>, body: S) -> Result<T, AdminError>
where
    T: DeserializeOwned + Default,
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let bytes = read_body(length, body, BODY_LIMIT).await?;
    // No body, an empty one, or JSON `null`: all mean "nothing given".
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    parse_object(&bytes)
}

async fn read_json<T, S, B>(length: Option<u64>, body: S, limit: u64) -> Result<T, AdminError>
where
    T: DeserializeOwned,
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let bytes = read_body(length, body, limit).await?;
    parse_object(&bytes)
}

/// Every request body is a JSON object. serde would also build a struct from an array of
/// its fields in order (`["Acme"]`), which no client means and the API document forbids.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    match bytes.trim_ascii_start().first() {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| AdminError::InvalidJson(describe_json_error(&e))),
        Some(_) => Err(AdminError::InvalidJson("the body must be a JSON object".to_owned())),
        None => Err(AdminError::InvalidJson("the body is empty".to_owned())),
    }
}

async fn read_body<S, B>(length: Option<u64>, body: S, limit: u64) -> Result<Vec<u8>, AdminError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if length.is_some_and(|n| n > limit) {
        return Err(AdminError::PayloadTooLarge { limit });
    }
    // Chunked bodies carry no length: count as they arrive.
    let mut body = pin!(body);
    let mut bytes = Vec::with_capacity(length.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| AdminError::InvalidRequest("the request body could not be read".to_owned()))?;
        if (bytes.len() as u64).saturating_add(chunk.remaining() as u64) > limit {
            return Err(AdminError::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

/// A JSON body of at most [`BODY_LIMIT`] bytes, by `Content-Length` and by count.
fn json<T: DeserializeOwned + Send + 'static>() -> BoxedFilter<(T,)> {
    json_up_to(BODY_LIMIT)
}

/// A JSON body of at most `limit` bytes (the bulk import's and usage reports' larger caps).
fn json_up_to<T: DeserializeOwned + Send + 'static>(limit: u64) -> BoxedFilter<(T,)> {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(
            move |length: Option<u64>, body| async move { read_json::<T, _, _>(length, body, limit).await.map_err(warp::reject::custom) },
        )
        .boxed()
}

fn snapshot_query() -> BoxedFilter<(api::feed::SnapshotQuery,)> {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move { api::feed::parse_snapshot_query(&raw).map_err(warp::reject::custom) })
        .boxed()
}

/// A loggable rendering of a request path: known words kept, ids reduced to their
/// prefix, anything else masked.
pub fn path_template(path: &str) -> String {
    const WORDS: &[&str] = &[
        "healthz",
        "openapi.json",
        ".well-known",
        "jwks.json",
        "v1",
        "auth",
        "signin",
        "login",
        "refresh",
        "logout",
        "businesses",
        "users",
        "keys",
        "snapshot",
        "sessions",
        "deactivate",
        "activate",
        "rotate",
        "usage",
        "metrics",
        "openapi.json",
        "signing-keys",
        "me",
        "ui",
        "import",
    ];
    const ID_PREFIXES: &[&str] = &["biz_", "usr_", "key_", "ses_"];
    let mut out = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()).take(8) {
        out.push('/');
        if WORDS.contains(&segment) {
            out.push_str(segment);
        } else if let Some(prefix) = ID_PREFIXES.iter().find(|p| segment.starts_with(**p)) {
            out.push_str(prefix);
            out.push_str("{id}");
        } else {
            out.push_str("{…}");
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Every route, with errors turned into JSON and requests logged.
pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static {
    let s = state;

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and_then(|st| async move { reject(api::health::healthz(st).await) });

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and_then(|st| async move { reject(api::health::metrics(st).await) });

    let openapi = warp::path!("openapi.json").and(warp::get()).and_then(|| async move { reject(api::health::openapi().await) });

    let jwks = warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and_then(|st| async move { reject(api::tokens::jwks(st).await) });

    let create_business = warp::path!("v1" / "businesses")
        .and(warp::post())
        .and(operator(s.clone()))
        .and(json())
        .and_then(|st, body| async move { reject(api::businesses::create_business(st, body).await) });

    let create_user = warp::path!("v1" / "users")
        .and(warp::post())
        .and(operator(s.clone()))
        .and(json())
        .and_then(|st, body| async move { reject(api::users::create_user(st, body).await) });

    let signin = warp::path!("auth" / "signin")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(client_ip(s.clone()))
        .and(json())
        .and_then(|st, ip, body| async move { reject(api::auth::signin(st, ip, body).await) });

    let refresh = warp::path!("auth" / "refresh")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(json())
        .and_then(|st, body| async move { reject(api::auth::refresh(st, body).await) });

    let logout = warp::path!("auth" / "logout")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(authorization())
        .and_then(|st, header| async move { reject(api::auth::logout(st, header).await) });

    let rotate = warp::path!("v1" / "keys" / String / "rotate")
        .and(warp::post())
        .and(caller(s.clone()))
        .and(optional_json())
        .and_then(|key, st, caller, body| async move { reject(api::keys::rotate_key(st, caller, key, body).await) });

    let key_usage = warp::path!("v1" / "keys" / String / "usage")
        .and(warp::get())
        .and(caller(s.clone()))
        .and_then(|key, st, caller| async move { reject(api::keys::key_usage(st, caller, key).await) });

    // Sized to what a filter sends: the same constant its reports are split to fit.
    let usage = warp::path!("v1" / "usage")
        .and(warp::post())
        .and(proxy(s.clone()))
        .and(json_up_to(keygate_core::usage::MAX_REPORT_BYTES as u64))
        .and_then(|st, body| async move { reject(api::feed::usage(st, body).await) });

    let rotate_signing = warp::path!("v1" / "signing-keys" / "rotate")
        .and(warp::post())
        .and(operator(s.clone()))
        .and_then(|st| async move { reject(api::tokens::rotate_signing_key(st).await) });

    let login = warp::path!("auth" / "login")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(client_ip(s.clone()))
        .and(json())
        .and_then(|st, ip, body| async move { reject(api::auth::login(st, ip, body).await) });

    let create_key = warp::path!("v1" / "businesses" / String / "keys")
        .and(warp::post())
        .and(caller(s.clone()))
        .and(json())
        .and_then(|business, st, caller, body| async move { reject(api::keys::create_key(st, caller, business, body).await) });

    let list_keys = warp::path!("v1" / "businesses" / String / "keys")
        .and(warp::get())
        .and(caller(s.clone()))
        .and_then(|business, st, caller| async move { reject(api::keys::list_keys(st, caller, business).await) });

    let deactivate = warp::path!("v1" / "keys" / String / "deactivate")
        .and(warp::post())
        .and(caller(s.clone()))
        .and_then(|key, st, caller| async move { reject(api::keys::deactivate_key(st, caller, key).await) });

    let activate = warp::path!("v1" / "keys" / String / "activate")
        .and(warp::post())
        .and(caller(s.clone()))
        .and_then(|key, st, caller| async move { reject(api::keys::activate_key(st, caller, key).await) });

    let revoke = warp::path!("v1" / "sessions" / String)
        .and(warp::delete())
        .and(caller(s.clone()))
        .and_then(|sid, st, caller| async move { reject(api::sessions::revoke_session(st, caller, sid).await) });

    let me = warp::path!("v1" / "me")
        .and(warp::get())
        .and(caller(s.clone()))
        .and_then(|st, caller| async move { reject(api::sessions::me(st, caller).await) });

    let list_sessions = warp::path!("v1" / "sessions")
        .and(warp::get())
        .and(caller(s.clone()))
        .and_then(|st, caller| async move { reject(api::sessions::list_sessions(st, caller).await) });

    let update_key = warp::path!("v1" / "keys" / String)
        .and(warp::patch())
        .and(caller(s.clone()))
        .and(json())
        .and_then(|key, st, caller, body| async move { reject(api::keys::update_key(st, caller, key, body).await) });

    // The dashboard: `/ui` redirects to `/ui/`, whose files are embedded (see `ui`).
    let ui = warp::path("ui").and(warp::get()).and(warp::path::full()).and(warp::path::tail()).map(
        |full: warp::path::FullPath, tail: warp::path::Tail| match (full.as_str(), tail.as_str()) {
            ("/ui", _) => crate::ui::redirect(),
            (_, "") => crate::ui::page(),
            (_, name) => crate::ui::asset(name),
        },
    );
    let import_keys = warp::path!("v1" / "import" / "keys")
        .and(warp::post())
        .and(operator(s.clone()))
        .and(json_up_to(api::import::BATCH_BODY_LIMIT))
        .and_then(|st, body| async move { reject(api::import::import_keys(st, body).await) });

    let snapshot = warp::path!("v1" / "snapshot")
        .and(warp::get())
        .and(proxy(s.clone()))
        .and(snapshot_query())
        .and_then(|st, query| async move { reject(api::feed::snapshot(st, query).await) });

    let observed = s.clone();
    let log = warp::log::custom(move |info| {
        observed.metrics().observe(info.method(), info.path(), info.status().as_u16(), info.elapsed());
        tracing::info!(
            target: "keygate_admin::http",
            method = %info.method(),
            path = %path_template(info.path()),
            status = info.status().as_u16(),
            elapsed_ms = u64::try_from(info.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request"
        );
    });

    let routes = healthz
        .boxed()
        .or(metrics.boxed())
        .unify()
        .or(jwks.boxed())
        .unify()
        .or(openapi.boxed())
        .unify()
        .or(create_business.boxed())
        .unify()
        .or(create_user.boxed())
        .unify()
        .or(signin.boxed())
        .unify()
        .or(login.boxed())
        .unify()
        .or(create_key.boxed())
        .unify()
        .or(list_keys.boxed())
        .unify()
        .or(deactivate.boxed())
        .unify()
        .or(activate.boxed())
        .unify()
        .or(revoke.boxed())
        .unify()
        // Boxed midway: one chain of this many `or`s overflows the trait solver's recursion
        // limit in release builds.
        .boxed()
        .or(snapshot.boxed())
        .unify()
        .or(refresh.boxed())
        .unify()
        .or(logout.boxed())
        .unify()
        .or(rotate.boxed())
        .unify()
        .or(key_usage.boxed())
        .unify()
        .or(usage.boxed())
        .unify()
        .or(rotate_signing.boxed())
        .unify()
        .boxed()
        .or(me.boxed())
        .unify()
        .or(list_sessions.boxed())
        .unify()
        .or(update_key.boxed())
        .unify()
        .or(ui.boxed())
        .unify()
        .or(import_keys.boxed())
        .unify()
        .recover(recover)
        .unify();

    // The id is recorded into the request span that `warp::trace` opened around all of
    // this, so every line logged while answering (the request line too) carries it.
    request_id()
        .and(warp::path::full())
        .and(routes)
        .map(|id: String, path: warp::path::FullPath, mut response: Response| {
            if let Ok(value) = warp::http::HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            // RFC 9110: a 405 lists what the resource does allow (from the API document).
            if response.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED {
                if let Some(allow) = crate::openapi::allowed_methods(path.as_str()).and_then(|a| warp::http::HeaderValue::from_str(&a).ok())
                {
                    response.headers_mut().insert(warp::http::header::ALLOW, allow);
                }
            }
            response
        })
        .with(log)
        .with(warp::trace(|_| tracing::info_span!("request", request_id = tracing::field::Empty)))
}

const REQUEST_ID: &str = "x-request-id";

/// The client's `x-request-id` when sane (see [`crate::metrics::sane_request_id`]), else a
/// fresh one; recorded in the current (request) span.
fn request_id() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static {
    warp::header::headers_cloned().map(|headers: warp::http::HeaderMap| {
        let id = headers
            .get(REQUEST_ID)
            .and_then(|v| crate::metrics::sane_request_id(v.as_bytes()))
            .unwrap_or_else(crate::metrics::new_request_id);
        tracing::Span::current().record("request_id", id.as_str());
        id
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_hide_what_clients_typed() {
        assert_eq!(path_template("/v1/businesses/biz_abc/keys"), "/v1/businesses/biz_{id}/keys");
        assert_eq!(path_template("/sk_live_secret"), "/{…}");
        assert_eq!(path_template("/"), "/");
        assert_eq!(path_template("/.well-known/jwks.json"), "/.well-known/jwks.json");
    }

    #[test]
    fn json_errors_do_not_echo_values() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            password: u64,
        }
        let e = serde_json::from_str::<T>(r#"{"password": "hunter2"}"#).err();
        let text = e.as_ref().map(describe_json_error).unwrap_or_default();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.starts_with("invalid type"), "{text}");
        let e = serde_json::from_str::<T>(r#"{"pass": 1}"#).err();
        let text = e.as_ref().map(describe_json_error).unwrap_or_default();
        assert!(text.starts_with("unknown field `pass`"), "{text}");
    }
}
