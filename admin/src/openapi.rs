//! The admin API described in OpenAPI 3.1, served at `/openapi.json`.
//!
//! The document is generated from the handlers' own `#[utoipa::path]` annotations and the
//! request and response types they (de)serialise, so a changed field changes the document.
//! `admin/tests/openapi.rs` checks both directions against a running server: every route
//! the server answers is described, and every described route answers.

use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

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
        api::health::openapi,
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
        api::tokens::rotate_signing_key,
        api::sessions::revoke_session,
        api::feed::snapshot,
        api::sessions::me,
        api::sessions::list_sessions,
        api::keys::update_key,
        api::import::import_keys,
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

/// `sk` (secret, server side) or `pk` (publishable, safe methods only).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = KeyKind)]
pub enum KeyKindSchema {
    Sk,
    Pk,
}

/// `live` or `test`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Mode)]
pub enum ModeSchema {
    Live,
    Test,
}

/// The shape of `keygate_core::usage::UsageReport` (core has no OpenAPI dependency; a
/// test below keeps the two in step).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UsageReport)]
pub struct UsageReportSchema {
    usage: Vec<KeyUsageSchema>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KeyUsage)]
pub struct KeyUsageSchema {
    key_id: String,
    /// Requests since the filter's last report.
    count: u64,
    /// Unix seconds.
    last_used_at: u64,
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The methods the document gives for the route that `path` falls under, e.g. `"GET, POST"`
/// (for the `Allow` header of a 405); `None` when no route matches.
pub fn allowed_methods(path: &str) -> Option<String> {
    let item =
        document().paths.paths.iter().find_map(|(template, item)| crate::metrics::template_matches(template, path).then_some(item))?;
    let methods: Vec<&str> = [
        ("GET", item.get.is_some()),
        ("POST", item.post.is_some()),
        ("PUT", item.put.is_some()),
        ("PATCH", item.patch.is_some()),
        ("DELETE", item.delete.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// The document as JSON bytes, built once.
pub fn document_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_vec(document()).unwrap_or_else(|_| b"{}".to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_report_schema_matches_core() {
        let report = keygate_core::usage::UsageReport {
            usage: vec![keygate_core::usage::KeyUsage { key_id: "key_x".to_owned(), count: 3, last_used_at: 7 }],
        };
        let mirror = UsageReportSchema { usage: vec![KeyUsageSchema { key_id: "key_x".to_owned(), count: 3, last_used_at: 7 }] };
        assert_eq!(serde_json::to_value(&report).unwrap(), serde_json::to_value(&mirror).unwrap());
    }

    #[test]
    fn kind_and_mode_schemas_match_core() {
        use keygate_core::{KeyKind, Mode};
        assert_eq!(serde_json::to_value(KeyKind::Sk).unwrap(), serde_json::to_value(KeyKindSchema::Sk).unwrap());
        assert_eq!(serde_json::to_value(KeyKind::Pk).unwrap(), serde_json::to_value(KeyKindSchema::Pk).unwrap());
        assert_eq!(serde_json::to_value(Mode::Live).unwrap(), serde_json::to_value(ModeSchema::Live).unwrap());
        assert_eq!(serde_json::to_value(Mode::Test).unwrap(), serde_json::to_value(ModeSchema::Test).unwrap());
    }

    #[test]
    fn allow_lists_come_from_the_document() {
        assert_eq!(allowed_methods("/healthz").as_deref(), Some("GET"));
        assert_eq!(allowed_methods("/v1/businesses/biz_1/keys").as_deref(), Some("GET, POST"));
        assert_eq!(allowed_methods("/v1/keys/key_1/rotate").as_deref(), Some("POST"));
        assert_eq!(allowed_methods("/v1/nothing"), None);
        assert_eq!(allowed_methods("/v1/keys/key_1").as_deref(), Some("PATCH"));
        assert_eq!(allowed_methods("/v1/keys/key_1/fly"), None);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_path() {
        let doc: serde_json::Value = serde_json::from_slice(document_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
        let paths = doc["paths"].as_object().unwrap();
        let concrete = |t: &str| t.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/");
        let labels: Vec<&str> = paths.keys().map(|t| crate::metrics::route_label(&concrete(t))).collect();
        for template in crate::metrics::ROUTES {
            assert!(labels.contains(template), "{template} is not described");
        }
        assert!(!labels.contains(&crate::metrics::UNMATCHED), "a described path has no metrics label: {labels:?}");
    }
}
