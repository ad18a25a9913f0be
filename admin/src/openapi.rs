//! The admin API described in OpenAPI 3.1, served at `/openapi.json`.
//!
//! The document is generated from the handlers' own `#[utoipa::path]` annotations and the
//! request and response types they (de)serialise, so a changed field changes the document.
//! `admin/tests/openapi.rs` checks both directions against a running server: every route
//! the server answers is described, and every described route answers.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use warp::http::{header, HeaderValue};
use warp::reply::Response;

use crate::api;
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate-admin",
        description = "Signs people and API keys in, issues tokens, manages keys, and feeds snapshots to the keygate Envoy filter. \
Errors always answer `{\"success\": false, \"error\": \"<words>\", \"code\": \"<code>\"}`."
    ),
    paths(
        api::health::healthz,
        api::health::metrics,
        openapi,
        api::tokens::jwks,
        api::businesses::create_business,
        api::users::create_user,
        api::auth::signin,
        api::auth::refresh,
        api::auth::logout,
        api::auth::login,
        api::keys::create_key,
        api::keys::list_keys,
        api::keys::deactivate_key,
        api::keys::activate_key,
        api::keys::rotate_key,
        api::keys::key_usage,
        api::feed::usage,
        api::rate_counts::rate_counts,
        api::tokens::rotate_signing_key,
        api::sessions::revoke_session,
        api::feed::snapshot,
        api::sessions::me,
        api::sessions::list_sessions,
        api::keys::update_key,
        api::import::import_keys,
        api::issuers::create_issuer,
        api::issuers::list_issuers,
        api::issuers::remove_issuer,
        api::credits::get_credits,
        api::credits::set_credits,
        api::credits::add_credits,
        api::credits::credit_spend,
        api::policy::business_limits,
        api::policy::update_business_limits,
        api::audit::list_audit,
        crate::ui::redirect,
        crate::ui::page,
        crate::ui::asset,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerSchemes, &ErrorResponses),
    tags(
        (name = "health", description = "Liveness, metrics and this document"),
        (name = "auth", description = "Member sign-in, API-key login, refresh, logout, sessions"),
        (name = "businesses", description = "Tenants and their members (operator)"),
        (name = "keys", description = "API keys: create, list, rotate, (de)activate, usage"),
        (name = "tokens", description = "Token signing keys"),
        (name = "audit", description = "The audit log: who changed what through admin"),
        (name = "issuers", description = "Trusted identity providers: a business's own access tokens, verified with pinned keys"),
        (name = "feed", description = "What the Envoy filters pull and report (proxy token)"),
        (name = "dashboard", description = "The key dashboard's page and files (its API calls are the ones above)"),
    )
)]
pub struct ApiDoc;

/// The three kinds of bearer the admin API accepts.
struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let schemes = [
            ("operator", "The operator token (`--operator-token` / KEYGATE_OPERATOR_TOKEN)."),
            ("member", "A member's access token from `/auth/signin` or `/auth/refresh`; the operator token also works."),
            ("proxy", "The token the filters use (`--proxy-token` / KEYGATE_PROXY_TOKEN)."),
        ];
        for (name, description) in schemes {
            let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// The error answer every API operation may give, described once: each operation outside
/// the dashboard's files gets it as its `default` response.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let response = ResponseBuilder::new()
            .description("An error: `code` says which (see the README's error table)")
            .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                if operation.tags.iter().flatten().any(|tag| tag == "dashboard") {
                    continue;
                }
                operation.responses.responses.insert("default".to_owned(), response.clone().into());
            }
        }
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as JSON bytes, built once.
pub fn document_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_vec(document()).unwrap_or_else(|_| b"{}".to_vec()))
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", summary = "This document: the admin API in OpenAPI 3.1",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object)
    )
)]
pub fn openapi() -> Response {
    let mut response = Response::new(document_json().to_vec().into());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::route_table::TABLE;

    /// `{key_id}`-style parameter names as the table's `{id}`.
    fn normalised(template: &str) -> String {
        template.split('/').map(|s| if s.starts_with('{') { "{id}" } else { s }).collect::<Vec<_>>().join("/")
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_slice(document_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    }

    #[test]
    fn the_document_describes_exactly_the_route_table() {
        let doc: serde_json::Value = serde_json::from_slice(document_json()).unwrap();
        let mut described = BTreeSet::new();
        for (template, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                described.insert((method.to_uppercase(), normalised(template)));
            }
        }
        let routed: BTreeSet<(String, String)> =
            TABLE.iter().map(|row| (row.method.as_str().to_owned(), row.template.to_owned())).collect();
        assert_eq!(routed.len(), TABLE.len(), "a (method, template) pair twice in the table");
        let undescribed: Vec<_> = routed.difference(&described).collect();
        let unrouted: Vec<_> = described.difference(&routed).collect();
        assert!(undescribed.is_empty(), "in the route table but not in the document: {undescribed:?}");
        assert!(unrouted.is_empty(), "in the document but not in the route table: {unrouted:?}");
    }
}
