//! The warp filters, built from [`TABLE`]: for each row its path (a word per literal
//! segment, a `String` per `{id}`, then the end), its method, then what its handler needs
//! (caller, body), then the handler. Every rejection ends in [`crate::error::recover`];
//! every request is logged with its method, a path template (ids and unknown segments
//! masked, so nothing a client typed into a path reaches the log) and its status.
//!
//! The path comes before the method, so warp answers 405 when some row's path fits but
//! none of their methods, and 404 when no path fits.

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::body::{json, json_up_to, optional_json, shaped_json_up_to};
use super::caller::{authorization, caller, client_ip, operator, proxy, with_state};
use crate::api;
use crate::error::{recover, AdminError};
use crate::route_table::{self, Endpoint, Method, Route, TABLE};
use crate::state::AppState;

/// A row's whole filter: it answers, or rejects.
type Answer = BoxedFilter<(Response,)>;

fn reject(result: Result<Response, AdminError>) -> Result<Response, Rejection> {
    result.map_err(warp::reject::custom)
}

/// The path filter of a template's words (the part of a template before or after its `{id}`).
fn words(part: &'static str) -> BoxedFilter<()> {
    part.split('/').filter(|w| !w.is_empty()).fold(warp::any().boxed(), |filter, word| filter.and(warp::path(word)).boxed())
}

/// The whole path of a template without `{id}`.
fn path(template: &'static str) -> BoxedFilter<()> {
    words(template).and(warp::path::end()).boxed()
}

/// The whole path of a template with one `{id}`, extracting that segment.
fn path_with_id(template: &'static str) -> BoxedFilter<(String,)> {
    let (before, after) = template.split_once("{id}").unwrap_or((template, ""));
    words(before).and(warp::path::param::<String>()).and(words(after)).and(warp::path::end()).boxed()
}

fn method(method: Method) -> BoxedFilter<()> {
    match method {
        Method::Get => warp::get().boxed(),
        Method::Post => warp::post().boxed(),
        Method::Put => warp::put().boxed(),
        Method::Patch => warp::patch().boxed(),
        Method::Delete => warp::delete().boxed(),
    }
}

fn snapshot_query() -> BoxedFilter<(api::feed::SnapshotQuery,)> {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move { api::feed::parse_snapshot_query(&raw).map_err(warp::reject::custom) })
        .boxed()
}

/// The dashboard: `/ui` redirects to `/ui/`, whose files are embedded (see `ui`). One
/// filter serves the three dashboard rows: below `/ui/`, any path names a file (or a 404
/// page), which the words-and-`{id}` paths cannot say.
fn dashboard(get: BoxedFilter<()>) -> Answer {
    warp::path("ui")
        .and(get)
        .and(warp::path::full())
        .and(warp::path::tail())
        .map(|full: warp::path::FullPath, tail: warp::path::Tail| match (full.as_str(), tail.as_str()) {
            ("/ui", _) => crate::ui::redirect(),
            (_, "") => crate::ui::page(),
            (_, name) => crate::ui::asset(name),
        })
        .boxed()
}

/// A row's filter: path, method, then its endpoint's handler. `None` for the dashboard's
/// page and file rows, which [`dashboard`] (built for the redirect row) serves.
fn answer(row: &Route, s: &AppState) -> Option<Answer> {
    let t = row.template;
    let m = method(row.method);
    let s = s.clone();
    let filter = match row.endpoint {
        Endpoint::Healthz => path(t).and(m).and(with_state(s)).and_then(|st| async move { reject(api::health::healthz(st).await) }).boxed(),
        Endpoint::Metrics => path(t).and(m).and(with_state(s)).and_then(|st| async move { reject(api::health::metrics(st).await) }).boxed(),
        Endpoint::OpenApi => path(t).and(m).map(crate::openapi::openapi).boxed(),
        Endpoint::Jwks => path(t).and(m).and(with_state(s)).and_then(|st| async move { reject(api::tokens::jwks(st).await) }).boxed(),
        Endpoint::CreateBusiness => path(t)
            .and(m)
            .and(operator(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|st, ip, body| async move { reject(api::businesses::create_business(st, ip, body).await) })
            .boxed(),
        Endpoint::CreateUser => path(t)
            .and(m)
            .and(operator(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|st, ip, body| async move { reject(api::users::create_user(st, ip, body).await) })
            .boxed(),
        Endpoint::SignIn => path(t)
            .and(m)
            .and(with_state(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|st, ip, body| async move { reject(api::auth::signin(st, ip, body).await) })
            .boxed(),
        Endpoint::Login => path(t)
            .and(m)
            .and(with_state(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|st, ip, body| async move { reject(api::auth::login(st, ip, body).await) })
            .boxed(),
        Endpoint::Refresh => path(t)
            .and(m)
            .and(with_state(s))
            .and(json())
            .and_then(|st, body| async move { reject(api::auth::refresh(st, body).await) })
            .boxed(),
        Endpoint::Logout => path(t)
            .and(m)
            .and(with_state(s))
            .and(authorization())
            .and_then(|st, header| async move { reject(api::auth::logout(st, header).await) })
            .boxed(),
        Endpoint::CreateKey => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|business, st, caller, ip, body| async move { reject(api::keys::create_key(st, caller, ip, business, body).await) })
            .boxed(),
        Endpoint::CreateIssuer => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(
                |business, st, caller, ip, body| async move { reject(api::issuers::create_issuer(st, caller, ip, business, body).await) },
            )
            .boxed(),
        Endpoint::ListIssuers => path_with_id(t)
            .and(m)
            .and(caller(s))
            .and_then(|business, st, caller| async move { reject(api::issuers::list_issuers(st, caller, business).await) })
            .boxed(),
        Endpoint::RemoveIssuer => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and_then(|id, st, caller, ip| async move { reject(api::issuers::remove_issuer(st, caller, ip, id).await) })
            .boxed(),
        Endpoint::ListKeys => path_with_id(t)
            .and(m)
            .and(caller(s))
            .and_then(|business, st, caller| async move { reject(api::keys::list_keys(st, caller, business).await) })
            .boxed(),
        Endpoint::DeactivateKey => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and_then(|key, st, caller, ip| async move { reject(api::keys::deactivate_key(st, caller, ip, key).await) })
            .boxed(),
        Endpoint::ActivateKey => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and_then(|key, st, caller, ip| async move { reject(api::keys::activate_key(st, caller, ip, key).await) })
            .boxed(),
        Endpoint::RotateKey => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and(optional_json())
            .and_then(|key, st, caller, ip, body| async move { reject(api::keys::rotate_key(st, caller, ip, key, body).await) })
            .boxed(),
        Endpoint::KeyUsage => path_with_id(t)
            .and(m)
            .and(caller(s))
            .and_then(|key, st, caller| async move { reject(api::keys::key_usage(st, caller, key).await) })
            .boxed(),
        Endpoint::UpdateKey => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|key, st, caller, ip, body| async move { reject(api::keys::update_key(st, caller, ip, key, body).await) })
            .boxed(),
        Endpoint::BusinessLimits => path_with_id(t)
            .and(m)
            .and(caller(s))
            .and_then(|business, st, caller| async move { reject(api::policy::business_limits(st, caller, business).await) })
            .boxed(),
        Endpoint::UpdateBusinessLimits => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|business, st, caller, ip, body| async move {
                reject(api::policy::update_business_limits(st, caller, ip, business, body).await)
            })
            .boxed(),
        Endpoint::RevokeSession => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and_then(|sid, st, caller, ip| async move { reject(api::sessions::revoke_session(st, caller, ip, sid).await) })
            .boxed(),
        Endpoint::Me => {
            path(t).and(m).and(caller(s)).and_then(|st, caller| async move { reject(api::sessions::me(st, caller).await) }).boxed()
        }
        Endpoint::ListSessions => path(t)
            .and(m)
            .and(caller(s))
            .and_then(|st, caller| async move { reject(api::sessions::list_sessions(st, caller).await) })
            .boxed(),
        Endpoint::Snapshot => path(t)
            .and(m)
            .and(proxy(s))
            .and(snapshot_query())
            .and_then(|st, query| async move { reject(api::feed::snapshot(st, query).await) })
            .boxed(),
        // Sized to what a filter sends: the same constant its reports are split to fit.
        Endpoint::ReportUsage => path(t)
            .and(m)
            .and(proxy(s))
            .and(json_up_to(keygate_core::usage::MAX_REPORT_BYTES as u64))
            .and_then(|st, body| async move { reject(api::feed::usage(st, body).await) })
            .boxed(),
        Endpoint::ExchangeRateCounts => path(t)
            .and(m)
            .and(proxy(s))
            .and(shaped_json_up_to(api::rate_counts::MAX_BODY_BYTES))
            .and_then(|st, body| async move { reject(api::rate_counts::rate_counts(st, body).await) })
            .boxed(),
        Endpoint::RotateSigningKey => path(t)
            .and(m)
            .and(operator(s.clone()))
            .and(client_ip(s))
            .and_then(|st, ip| async move { reject(api::tokens::rotate_signing_key(st, ip).await) })
            .boxed(),
        Endpoint::ImportKeys => path(t)
            .and(m)
            .and(operator(s.clone()))
            .and(client_ip(s))
            .and(json_up_to(api::import::BATCH_BODY_LIMIT))
            .and_then(|st, ip, body| async move { reject(api::import::import_keys(st, ip, body).await) })
            .boxed(),
        Endpoint::ListAudit => path(t)
            .and(m)
            .and(caller(s))
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and_then(|st, caller, raw| async move { reject(api::audit::list_audit(st, caller, raw).await) })
            .boxed(),
        Endpoint::GetCredits => path_with_id(t)
            .and(m)
            .and(caller(s))
            .and_then(|key, st, caller| async move { reject(api::credits::get_credits(st, caller, key).await) })
            .boxed(),
        Endpoint::SetCredits => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|key, st, caller, ip, body| async move { reject(api::credits::set_credits(st, caller, ip, key, body).await) })
            .boxed(),
        Endpoint::AddCredits => path_with_id(t)
            .and(m)
            .and(caller(s.clone()))
            .and(client_ip(s))
            .and(json())
            .and_then(|key, st, caller, ip, body| async move { reject(api::credits::add_credits(st, caller, ip, key, body).await) })
            .boxed(),
        Endpoint::ReportCreditSpend => path(t)
            .and(m)
            .and(proxy(s))
            .and(json_up_to(api::credits::MAX_BODY_BYTES))
            .and_then(|st, body| async move { reject(api::credits::credit_spend(st, body).await) })
            .boxed(),
        Endpoint::DashboardRedirect => dashboard(m),
        Endpoint::DashboardPage | Endpoint::DashboardFile => return None,
    };
    Some(filter)
}

/// Every route, with errors turned into JSON and requests logged.
pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static {
    // Each step boxed: one unboxed chain of this many `or`s overflows the trait solver's
    // recursion limit.
    let routes = TABLE
        .iter()
        .filter_map(|row| answer(row, &state))
        .reduce(|routes, next| routes.or(next).unify().boxed())
        .unwrap_or_else(|| warp::any().and_then(|| async { Err::<Response, _>(warp::reject::not_found()) }).boxed())
        .recover(recover)
        .unify();

    let observed = state.clone();
    let log = warp::log::custom(move |info| {
        observed.metrics().observe(info.method(), info.path(), info.status().as_u16(), info.elapsed());
        tracing::info!(
            target: "keygate_admin::http",
            method = %info.method(),
            path = %route_table::path_template(info.path()),
            status = info.status().as_u16(),
            elapsed_ms = u64::try_from(info.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request"
        );
    });

    // The id is recorded into the request span that `warp::trace` opened around all of
    // this, so every line logged while answering (the request line too) carries it.
    request_id()
        .and(warp::path::full())
        .and(routes)
        .map(|id: String, path: warp::path::FullPath, mut response: Response| {
            if let Ok(value) = warp::http::HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            // RFC 9110: a 405 lists what the resource does allow.
            if response.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED {
                if let Some(allow) = route_table::allowed_methods(path.as_str()).and_then(|a| warp::http::HeaderValue::from_str(&a).ok()) {
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

    /// A path that `template` fits: each `{id}` becomes a dashboard file name (any id
    /// will do for the API's rows, and the dashboard's answers 404 for unknown files).
    fn concrete(template: &str) -> String {
        template.replace("{id}", "app.js")
    }

    /// Each row reaches a handler at its own method (its path filter has the template's
    /// shape), and another method on that path is a 405 listing the table's methods.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_row_is_routed_at_its_method() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = AppState::open(crate::Config::new(dir.path())).unwrap();
        let filter = routes(state);
        for row in TABLE {
            let path = concrete(row.template);
            let response = warp::test::request().method(row.method.as_str()).path(&path).reply(&filter).await;
            let code = serde_json::from_slice::<serde_json::Value>(response.body()).ok().map(|v| v["code"].clone());
            let unrouted = response.status() == 405 || (response.status() == 404 && code == Some(serde_json::json!("not_found")));
            assert!(!unrouted, "{} {path} → {}", row.method.as_str(), response.status());

            // A method the table does not give this path.
            let allowed = route_table::allowed_methods(&path).unwrap_or_default();
            let other = ["PUT", "DELETE", "PATCH"].into_iter().find(|m| !allowed.split(", ").any(|a| a == *m)).unwrap();
            let response = warp::test::request().method(other).path(&path).reply(&filter).await;
            assert_eq!(response.status(), 405, "{other} {path}");
            let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(allow, route_table::allowed_methods(&path), "{other} {path}");
        }
        let response = warp::test::request().path("/v1/nothing").reply(&filter).await;
        assert_eq!(response.status(), 404);
    }
}
