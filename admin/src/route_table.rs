//! The route table: every operation the server answers, by method and path template. The
//! router builds its filters from it; the metrics' route labels, the log's path templates
//! and a 405's `Allow` list are read from it; a test holds the OpenAPI document to it.
//!
//! A template is a path of literal words and `{id}` segments (any one segment).

/// One operation of the API (the router picks its handler by an exhaustive match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Metrics,
    Jwks,
    OpenApi,
    CreateBusiness,
    CreateUser,
    SignIn,
    Login,
    CreateKey,
    ListKeys,
    DeactivateKey,
    ActivateKey,
    RevokeSession,
    Snapshot,
    Refresh,
    Logout,
    RotateKey,
    KeyUsage,
    ReportUsage,
    ExchangeRateCounts,
    RotateSigningKey,
    Me,
    ListSessions,
    UpdateKey,
    DashboardRedirect,
    DashboardPage,
    DashboardFile,
    ImportKeys,
    CreateIssuer,
    ListIssuers,
    RemoveIssuer,
    GetCredits,
    SetCredits,
    AddCredits,
    ReportCreditSpend,
    BusinessLimits,
    UpdateBusinessLimits,
    ListAudit,
}

/// The methods the API uses, in the order an `Allow` header lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub endpoint: Endpoint,
    pub method: Method,
    pub template: &'static str,
}

const fn route(endpoint: Endpoint, method: Method, template: &'static str) -> Route {
    Route { endpoint, method, template }
}

use Endpoint as E;
use Method::{Delete, Get, Patch, Post, Put};

/// Every route, in the order the router tries them. Where two templates fit one path
/// (`/ui` and `/ui/`), the first is that path's metrics label.
pub const TABLE: &[Route] = &[
    route(E::Healthz, Get, "/healthz"),
    route(E::Metrics, Get, "/metrics"),
    route(E::Jwks, Get, "/.well-known/jwks.json"),
    route(E::OpenApi, Get, "/openapi.json"),
    route(E::CreateBusiness, Post, "/v1/businesses"),
    route(E::CreateUser, Post, "/v1/users"),
    route(E::SignIn, Post, "/auth/signin"),
    route(E::Login, Post, "/auth/login"),
    route(E::CreateKey, Post, "/v1/businesses/{id}/keys"),
    route(E::ListKeys, Get, "/v1/businesses/{id}/keys"),
    route(E::DeactivateKey, Post, "/v1/keys/{id}/deactivate"),
    route(E::ActivateKey, Post, "/v1/keys/{id}/activate"),
    route(E::RevokeSession, Delete, "/v1/sessions/{id}"),
    route(E::Snapshot, Get, "/v1/snapshot"),
    route(E::Refresh, Post, "/auth/refresh"),
    route(E::Logout, Post, "/auth/logout"),
    route(E::RotateKey, Post, "/v1/keys/{id}/rotate"),
    route(E::KeyUsage, Get, "/v1/keys/{id}/usage"),
    route(E::ReportUsage, Post, "/v1/usage"),
    route(E::ExchangeRateCounts, Post, "/v1/rate-counts"),
    route(E::RotateSigningKey, Post, "/v1/signing-keys/rotate"),
    route(E::Me, Get, "/v1/me"),
    route(E::ListSessions, Get, "/v1/sessions"),
    route(E::UpdateKey, Patch, "/v1/keys/{id}"),
    route(E::DashboardRedirect, Get, "/ui"),
    route(E::DashboardPage, Get, "/ui/"),
    route(E::DashboardFile, Get, "/ui/{id}"),
    route(E::ImportKeys, Post, "/v1/import/keys"),
    route(E::CreateIssuer, Post, "/v1/businesses/{id}/issuers"),
    route(E::ListIssuers, Get, "/v1/businesses/{id}/issuers"),
    route(E::RemoveIssuer, Delete, "/v1/issuers/{id}"),
    route(E::GetCredits, Get, "/v1/keys/{id}/credits"),
    route(E::SetCredits, Put, "/v1/keys/{id}/credits"),
    route(E::AddCredits, Post, "/v1/keys/{id}/credits/add"),
    route(E::ReportCreditSpend, Post, "/v1/credit-spend"),
    route(E::BusinessLimits, Get, "/v1/businesses/{id}/limits"),
    route(E::UpdateBusinessLimits, Patch, "/v1/businesses/{id}/limits"),
    route(E::ListAudit, Get, "/v1/audit"),
];

/// The distinct route labels: each template once, `/ui/` folded into `/ui` (a trailing
/// slash makes no other route), in table order.
pub const LABELS: &[&str] = &LABEL_ARRAY;

const LABEL_ARRAY: [&str; label_count(TABLE)] = labels(TABLE);

/// Equal as routes: the same bytes once one trailing `/` is dropped from each.
const fn same_route(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let a_len = if a.len() > 1 && a[a.len() - 1] == b'/' { a.len() - 1 } else { a.len() };
    let b_len = if b.len() > 1 && b[b.len() - 1] == b'/' { b.len() - 1 } else { b.len() };
    if a_len != b_len {
        return false;
    }
    let mut i = 0;
    while i < a_len {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Does an earlier row than `row` have the same route?
const fn seen_before(table: &[Route], row: usize) -> bool {
    let mut i = 0;
    while i < row {
        if same_route(table[i].template, table[row].template) {
            return true;
        }
        i += 1;
    }
    false
}

const fn label_count(table: &[Route]) -> usize {
    let (mut row, mut n) = (0, 0);
    while row < table.len() {
        if !seen_before(table, row) {
            n += 1;
        }
        row += 1;
    }
    n
}

const fn labels<const N: usize>(table: &[Route]) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut row, mut n) = (0, 0);
    while row < table.len() {
        if !seen_before(table, row) {
            out[n] = table[row].template;
            n += 1;
        }
        row += 1;
    }
    out
}

/// Does `path` fall under `template`? A `{…}` segment of the template stands for any one
/// segment; empty segments (doubled or trailing slashes) are ignored on both sides.
pub fn template_matches(template: &str, path: &str) -> bool {
    let mut wanted = template.split('/').filter(|s| !s.is_empty());
    let mut given = path.split('/').filter(|s| !s.is_empty());
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') || w == g => {}
            _ => return false,
        }
    }
}

/// The route label of `path`: the template of the first row that the path's
/// [`path_template`] falls under (so it is one of [`LABELS`]), or `None`.
pub fn route_label(path: &str) -> Option<&'static str> {
    let template = path_template(path);
    TABLE.iter().find(|row| template_matches(row.template, &template)).map(|row| row.template)
}

/// Is `segment` a literal word of some template? (The words are gathered once: every
/// request's log line and metrics label ask.)
fn is_route_word(segment: &str) -> bool {
    static WORDS: std::sync::OnceLock<std::collections::BTreeSet<&'static str>> = std::sync::OnceLock::new();
    WORDS
        .get_or_init(|| TABLE.iter().flat_map(|row| row.template.split('/')).filter(|w| !w.is_empty() && !w.starts_with('{')).collect())
        .contains(segment)
}

/// A loggable rendering of a request path: the table's words kept, ids reduced to their
/// prefix, anything else masked.
pub fn path_template(path: &str) -> String {
    const ID_PREFIXES: &[&str] = &["biz_", "usr_", "key_", "ses_", "iss_"];
    let mut out = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()).take(8) {
        out.push('/');
        if is_route_word(segment) {
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

/// The methods of the rows whose template `path` falls under, e.g. `"GET, POST"` (for the
/// `Allow` header of a 405); `None` when no row matches.
pub fn allowed_methods(path: &str) -> Option<String> {
    let mut methods: Vec<Method> = TABLE.iter().filter(|row| template_matches(row.template, path)).map(|row| row.method).collect();
    methods.sort_unstable();
    methods.dedup();
    (!methods.is_empty()).then(|| methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "))
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
        assert_eq!(path_template("/v1/keys/key_abc/rotate/x/y/z/w/v/u"), "/v1/keys/key_{id}/rotate/{…}/{…}/{…}/{…}");
    }

    #[test]
    fn route_words_are_the_tables_literal_segments() {
        let words = [
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
            "signing-keys",
            "me",
            "ui",
            "import",
            "rate-counts",
            "issuers",
            "credits",
            "add",
            "credit-spend",
            "limits",
            "audit",
        ];
        for word in words {
            assert!(is_route_word(word), "{word}");
        }
        for not_a_word in ["{id}", "", "id", "key_x", "V1"] {
            assert!(!is_route_word(not_a_word), "{not_a_word}");
        }
        let literal = TABLE.iter().flat_map(|r| r.template.split('/')).filter(|w| !w.is_empty() && !w.starts_with('{'));
        assert!(literal.clone().all(|w| words.contains(&w)), "{:?}", literal.collect::<Vec<_>>());
    }

    #[test]
    fn the_first_fitting_row_names_the_route() {
        // `/ui/` fits both `/ui` and `/ui/`: the earlier row is its label.
        assert_eq!(route_label("/ui/"), Some("/ui"));
        assert_eq!(route_label("/ui"), Some("/ui"));
        assert_eq!(route_label("/ui/app.js"), Some("/ui/{id}"));
        assert_eq!(route_label("/ui/a/b"), None);
    }

    #[test]
    fn labels_are_the_distinct_templates() {
        assert_eq!(LABELS.len(), 33, "{LABELS:?}");
        for (i, label) in LABELS.iter().enumerate() {
            assert!(TABLE.iter().any(|row| row.template == *label), "{label}");
            assert!(!LABELS[..i].contains(label), "{label} twice");
        }
        assert!(LABELS.contains(&"/ui") && !LABELS.contains(&"/ui/"));
        for row in TABLE {
            assert!(LABELS.iter().any(|label| same_route(label, row.template)), "{}", row.template);
            assert!(row.template.starts_with('/'), "{}", row.template);
        }
    }

    #[test]
    fn each_endpoint_has_one_row() {
        for (i, row) in TABLE.iter().enumerate() {
            assert!(TABLE[..i].iter().all(|earlier| earlier.endpoint != row.endpoint), "{:?} twice", row.endpoint);
            let twin = TABLE[..i].iter().any(|earlier| earlier.method == row.method && earlier.template == row.template);
            assert!(!twin, "{} {} twice", row.method.as_str(), row.template);
        }
    }

    #[test]
    fn allow_lists_come_from_the_table() {
        assert_eq!(allowed_methods("/healthz").as_deref(), Some("GET"));
        assert_eq!(allowed_methods("/v1/businesses/biz_1/keys").as_deref(), Some("GET, POST"));
        assert_eq!(allowed_methods("/v1/keys/key_1/rotate").as_deref(), Some("POST"));
        assert_eq!(allowed_methods("/v1/nothing"), None);
        assert_eq!(allowed_methods("/v1/keys/key_1").as_deref(), Some("PATCH"));
        assert_eq!(allowed_methods("/v1/keys/key_1/fly"), None);
        assert_eq!(allowed_methods("/v1/sessions/ses_1").as_deref(), Some("DELETE"));
        assert_eq!(allowed_methods("/v1/keys/key_1/credits").as_deref(), Some("GET, PUT"));
        assert_eq!(allowed_methods("/ui/").as_deref(), Some("GET"));
        assert_eq!(allowed_methods("/ui/a/b"), None);
    }
}
