//! The key dashboard (Settings → API Keys): a static page of HTML, CSS and JavaScript
//! modules under `admin/ui/`, embedded in the binary and served at `/ui/`. It talks to
//! the same JSON API as everyone else, with the member's access token held in the page's
//! memory only (no cookie, no web storage: nothing a forged cross-site request could
//! carry). Every answer here carries a strict Content-Security-Policy: scripts and styles
//! from this origin only, no inline code, no eval, no framing, no forms posting away.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// (file name under `/ui/`, content type, bytes). `""` is the page itself.
const FILES: &[(&str, &str, &[u8])] = &[
    ("", "text/html; charset=utf-8", include_bytes!("../ui/index.html")),
    ("index.html", "text/html; charset=utf-8", include_bytes!("../ui/index.html")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("../ui/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_bytes!("../ui/api.js")),
    ("chart.js", "text/javascript; charset=utf-8", include_bytes!("../ui/chart.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_bytes!("../ui/dom.js")),
    ("issuers.js", "text/javascript; charset=utf-8", include_bytes!("../ui/issuers.js")),
    ("policy.js", "text/javascript; charset=utf-8", include_bytes!("../ui/policy.js")),
    ("credits.js", "text/javascript; charset=utf-8", include_bytes!("../ui/credits.js")),
    ("audit.js", "text/javascript; charset=utf-8", include_bytes!("../ui/audit.js")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../ui/favicon.svg")),
];

/// The security headers every `/ui` answer carries.
fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// The page itself.
#[utoipa::path(get, path = "/ui/", tag = "dashboard", summary = "The key dashboard (Settings → API Keys)",
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub fn page() -> Response {
    file("")
}

/// One of the page's files.
#[utoipa::path(get, path = "/ui/{file}", tag = "dashboard", summary = "The dashboard's scripts, styles and icon",
    params(("file" = String, Path, description = "e.g. app.js")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/html"), (String = "text/css"), (String = "text/javascript"), (String = "image/svg+xml")
        )),
        (status = 404, description = "No such file", body = String, content_type = "text/plain")
    )
)]
pub fn asset(name: &str) -> Response {
    file(name)
}

/// A file of the page by its name under `/ui/` (`""` for the page); a plain-text 404 for
/// anything else.
fn file(name: &str) -> Response {
    let mut response = match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => {
            let mut r = Response::new(bytes.to_vec().into());
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        None => {
            let mut r = Response::new("not found\n".into());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        }
    };
    harden(&mut response);
    response
}

/// `/ui` → `/ui/`, so the page's relative URLs resolve under `/ui/`.
#[utoipa::path(get, path = "/ui", tag = "dashboard", summary = "Redirects to /ui/",
    responses((status = 301, description = "To /ui/", headers(("location" = String, description = "/ui/"))))
)]
pub fn redirect() -> Response {
    let mut response = Response::new("".into());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/ui/"));
    harden(&mut response);
    response
}
