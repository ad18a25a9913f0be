//! Which route a request gets: the first configured route that matches its method and
//! path, where a lenient rule matches only its exact, clean spelling and a stricter rule
//! any spelling that may reach the same resource.

use super::{Policy, Requirement, Route};

/// A path segment as servers that take `;` parameters off segments (Tomcat, Spring, Jetty)
/// read it: `..;x=1` is `..` to them.
fn segment_name(segment: &str) -> &str {
    segment.split(';').next().unwrap_or(segment)
}

/// True when a path has no dot segments or encoded separators. Relaxed rules (key-only,
/// public, shadow) only match clean paths, so `/public/../admin` or `/public/..;/admin` can
/// never borrow `/public/`'s rule.
fn is_clean_path(path: &str) -> bool {
    let lower_has_encoded = |needle: &str| path.as_bytes().windows(3).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
    !path.split('/').map(segment_name).any(|seg| seg == "." || seg == "..")
        && !lower_has_encoded("%2e")
        && !lower_has_encoded("%2f")
        && !lower_has_encoded("%5c")
        && !path.contains('\\')
}

/// The path as the most forgiving upstream would serve it: ASCII lower case, `\` and
/// encoded `/` `\` as separators, `;` parameters cut from each segment, `%2e` as `.`, dot
/// segments resolved, empty segments merged. Stricter rules match this spelling too.
fn loose_path(path: &str) -> String {
    let lower = path.to_ascii_lowercase().replace("%2f", "/").replace("%5c", "/").replace('\\', "/");
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in lower.split('/') {
        let name = segment_name(raw).replace("%2e", ".");
        trailing_slash = true;
        match name.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                segments.push(name);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(lower.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

impl Route {
    /// A rule that asks for less than the default one (or, in shadow mode, refuses nothing).
    /// It applies only to its exact spelling; any other spelling gets a stricter rule.
    fn is_lenient(&self) -> bool {
        self.require != Requirement::All || self.shadow
    }

    /// Exact match: the path starts with the prefix as written and the method is listed.
    fn matches_exactly(&self, method: &str, path: &str) -> bool {
        path.starts_with(&self.prefix) && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }

    /// Any spelling that may reach the same resource: the prefix compared in ASCII lower
    /// case against [`loose_path`], `/x/` also covering `/x`, the method in any case, and
    /// HEAD wherever GET is listed (servers answer HEAD with their GET handler).
    fn matches_loosely(&self, method: &str, loose: &str) -> bool {
        // `loose` is lower case already; the prefix is compared without allocating.
        let starts = |p: &str| loose.len() >= p.len() && loose.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes());
        let bare = self.prefix.strip_suffix('/').filter(|p| !p.is_empty());
        let path_matches = starts(&self.prefix) || bare.is_some_and(|b| loose.len() == b.len() && starts(b));
        let method_matches = self.methods.is_empty()
            || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method) || (m == "GET" && method.eq_ignore_ascii_case("HEAD")));
        path_matches && method_matches
    }
}

impl Policy {
    /// The route for a request: the first configured route that matches, else the default
    /// (all three credentials). The query string is ignored. A lenient rule matches only its
    /// exact spelling on a clean path; a stricter rule matches any spelling of its path, so
    /// no spelling gets weaker checks than the rule meant for that path.
    pub fn route_for(&self, method: &str, path: &str) -> &Route {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let clean = is_clean_path(path);
        let mut loose: Option<String> = None;
        self.routes
            .iter()
            .find(|r| {
                if r.is_lenient() {
                    clean && r.matches_exactly(method, path)
                } else {
                    r.matches_exactly(method, path) || r.matches_loosely(method, loose.get_or_insert_with(|| loose_path(path)))
                }
            })
            .unwrap_or(&self.default_route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{parse, DEMO};

    #[test]
    fn routes_match_by_prefix_and_method_first_match_wins() {
        let cfg = parse(DEMO).unwrap();
        let p = &cfg.policy;
        assert_eq!(p.route_for("GET", "/public/articles?q=1").require, Requirement::None);
        assert_eq!(p.route_for("POST", "/key/x").require, Requirement::Key);
        assert_eq!(p.route_for("GET", "/reports/1").scopes, vec!["reports:read".to_string()]);
        assert!(p.route_for("POST", "/reports/1").scopes.is_empty()); // method does not match
        assert_eq!(p.route_for("GET", "/orders").require, Requirement::All);
        assert_eq!(p.route_for("GET", "/publicity").require, Requirement::All);
    }

    #[test]
    fn dot_segments_and_encoded_separators_never_match_a_relaxed_route() {
        let cfg = parse(DEMO).unwrap();
        let p = &cfg.policy;
        for path in ["/public/../orders", "/public/./x/..", "/public/%2e%2e/orders", "/public/%2F..", "/key/..\\orders", "/public/%2E%2E/x"]
        {
            assert_eq!(p.route_for("GET", path).require, Requirement::All, "{path}");
        }
        assert_eq!(p.route_for("GET", "/public/a.b/c..d").require, Requirement::None);
    }

    #[test]
    fn a_segment_is_its_part_before_a_semicolon_for_the_dot_segment_check() {
        let cfg = parse(DEMO).unwrap();
        let p = &cfg.policy;
        for path in [
            "/public/..;/orders",
            "/public/..;x=1/orders",
            "/public/.;/x",
            "/key/..;jsessionid=1/orders",
            "/public/%2e%2e;/orders",
            "/public/x/..;",
        ] {
            assert_eq!(p.route_for("GET", path).require, Requirement::All, "{path}");
        }
        // Matrix parameters inside a relaxed path keep its rule.
        assert_eq!(p.route_for("GET", "/public/a;v=1").require, Requirement::None);
        // To such servers this is /reports/1: it gets /reports/'s rule, not the default.
        assert_eq!(p.route_for("GET", "/public/..;/reports/1").scopes, vec!["reports:read".to_string()]);
    }

    #[test]
    fn other_spellings_of_a_stricter_rule_path_get_that_rule() {
        let cfg = parse(DEMO).unwrap();
        let p = &cfg.policy;
        let reports = vec!["reports:read".to_string()];
        for (method, path) in [
            ("GET", "/Reports/1"),
            ("GET", "/REPORTS/x"),
            ("GET", "/reports"),
            ("GET", "/Reports"),
            ("GET", "/reports?x=1"),
            ("GET", "/reports;a=b/1"),
            ("GET", "/reports;a=b"),
            ("HEAD", "/reports/1"),
            ("get", "/reports/1"),
            ("GET", "/x/..;/reports/1"),
            ("GET", "/x/%2E%2E/Reports/1"),
            ("GET", "/x/..\\reports\\1"),
        ] {
            assert_eq!(p.route_for(method, path).scopes, reports, "{method} {path}");
        }
        // Not the rule's path, or not its method: the default rule.
        for (method, path) in [("GET", "/reportsx"), ("GET", "/report"), ("POST", "/Reports/1"), ("POST", "/reports")] {
            assert!(p.route_for(method, path).scopes.is_empty(), "{method} {path}");
        }
        // A relaxed rule keeps its exact spelling: any other spelling gets the default rule,
        // which asks for more, never less.
        for path in ["/Public/x", "/PUBLIC/x", "/public", "/public;x/y", "/Key/x", "/key"] {
            assert_eq!(p.route_for("GET", path).require, Requirement::All, "{path}");
        }
        assert_eq!(p.route_for("HEAD", "/public/x").require, Requirement::None);
        // A shadow rule never refuses, so it is lenient too.
        let shadow = parse(r#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "/beta/", "shadow": true}]}"#).unwrap();
        assert!(shadow.policy.route_for("GET", "/beta/x").shadow);
        assert!(!shadow.policy.route_for("GET", "/Beta/x").shadow);
        assert!(!shadow.policy.route_for("GET", "/beta").shadow);
    }
}
