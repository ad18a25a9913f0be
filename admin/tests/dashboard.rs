//! The endpoints the dashboard needs, over real HTTP: `GET /v1/me`,
//! `GET /v1/sessions`, `PATCH /v1/keys/{id}` (expiry, through the changelog), and the
//! page itself under `/ui/` with its security headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_error, sid_of, Server, OPERATOR, PROXY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_names_the_member_and_their_businesses_only() {
    let server = Server::fresh().await;
    let acme = server.business("Acme").await;
    let globex = server.business("Globex").await;
    let _other = server.business("Initech").await;
    let token = server.member("ann@example.com", PASSWORD, &[&acme, &globex]).await;

    let (status, me) = server.get("/v1/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email"], json!("ann@example.com"));
    assert!(me["user"]["id"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(me["session_id"], json!(sid_of(&token)));
    let names: Vec<&str> = me["businesses"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Acme", "Globex"]);
    assert!(me.get("password_phc").is_none() && !me.to_string().contains("argon2"), "{me}");

    let (status, body) = server.get("/v1/me", None).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = server.get("/v1/me", Some(PROXY)).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = server.get("/v1/me", Some(OPERATOR)).await;
    assert_error(status, &body, 400, "invalid_request");
    // An API-key login token speaks for a key, not a person.
    let key = server.key(&acme).await;
    let (_, login) = server.login(key["key"].as_str().unwrap(), None).await;
    let (status, body) = server.get("/v1/me", Some(login["access_token"].as_str().unwrap())).await;
    assert_error(status, &body, 403, "forbidden");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lists_the_callers_live_sessions_and_revoke_removes_one() {
    let server = Server::fresh().await;
    let acme = server.business("Acme").await;
    let first = server.member("ann@example.com", PASSWORD, &[&acme]).await;
    let (_, again) = server.signin("ann@example.com", PASSWORD).await;
    let second = again["accessToken"].as_str().unwrap().to_owned();
    let bob = server.member("bob@example.com", PASSWORD, &[&acme]).await;

    let (status, listed) = server.get("/v1/sessions", Some(&first)).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let sessions = listed["sessions"].as_array().unwrap();
    let ids: Vec<&str> = sessions.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [sid_of(&first), sid_of(&second)], "Ann's two sessions, oldest first; not Bob's");
    assert_eq!(sessions.iter().map(|s| s["current"].as_bool().unwrap()).collect::<Vec<_>>(), [true, false]);
    for s in sessions {
        for field in ["created_at", "access_expires_at", "refresh_expires_at"] {
            assert!(keygate_admin::rfc3339::parse(s[field].as_str().unwrap()).is_some(), "{field}: {s}");
        }
        assert!(!s.to_string().contains("rt_") && s.get("refresh_sha256").is_none(), "no refresh material: {s}");
    }

    // Bob may not revoke Ann's session; Ann revokes her second one.
    let path = format!("/v1/sessions/{}", sid_of(&second));
    let (status, body) = server.send(Method::DELETE, &path, Some(&bob), None).await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = server.send(Method::DELETE, &path, Some(&first), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, listed) = server.get("/v1/sessions", Some(&first)).await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");
    let (status, body) = server.get("/v1/sessions", Some(&second)).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = server.get("/v1/sessions", Some(OPERATOR)).await;
    assert_error(status, &body, 400, "invalid_request");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_key_sets_and_clears_the_expiry_through_the_changelog() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let acme = server.business("Acme").await;
    let globex = server.business("Globex").await;
    let ann = server.member("ann@example.com", PASSWORD, &[&acme]).await;
    let outsider = server.member("eve@example.com", PASSWORD, &[&globex]).await;
    let (status, key) = server.key_as(&ann, &acme, json!({"kind": "sk", "mode": "live"})).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let id = key["id"].as_str().unwrap().to_owned();
    let hash = keygate_core::ApiKey::parse(key["key"].as_str().unwrap()).unwrap().hash().to_hex();
    let path = format!("/v1/keys/{id}");
    let (_, head) = server.snapshot("").await;
    let version = head["version"].as_u64().unwrap();

    let later = keygate_admin::store::now() + 3600;
    let later_text = keygate_admin::rfc3339::format(later);
    let (status, updated) = server.send(Method::PATCH, &path, Some(&ann), Some(json!({"expires_at": later_text}))).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["expires_at"], json!(later_text));
    assert!(updated.get("key").is_none(), "no raw key in the answer");
    // The filters learn it from the feed.
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    let entry = delta["keys"].as_array().unwrap().iter().find(|k| k["hash"] == json!(hash)).expect("the key in the delta");
    assert_eq!(entry["expires_at"], json!(later));
    let version = delta["version"].as_u64().unwrap();

    // The same value again changes nothing; null clears it.
    let (status, _) = server.send(Method::PATCH, &path, Some(&ann), Some(json!({"expires_at": later_text}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    assert!(delta["keys"].as_array().unwrap().is_empty(), "{delta}");
    let (status, cleared) = server.send(Method::PATCH, &path, Some(OPERATOR), Some(json!({"expires_at": null}))).await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["expires_at"], Value::Null);
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    let entry = delta["keys"].as_array().unwrap().iter().find(|k| k["hash"] == json!(hash)).expect("the key in the delta");
    assert_eq!(entry["expires_at"], Value::Null);
    let (_, listed) = server.get(&format!("/v1/businesses/{acme}/keys"), Some(&ann)).await;
    assert_eq!(listed["keys"][0]["expires_at"], Value::Null);

    // Refusals, each in words.
    let past = keygate_admin::rfc3339::format(keygate_admin::store::now() - 60);
    let (status, body) = server.send(Method::PATCH, &path, Some(&ann), Some(json!({"expires_at": past}))).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"], json!("expires_at must be in the future"));
    let (status, body) = server.send(Method::PATCH, &path, Some(&ann), Some(json!({"expires_at": "tomorrow"}))).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = server.send(Method::PATCH, &path, Some(&ann), Some(json!({}))).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = server.send(Method::PATCH, &path, Some(&ann), Some(json!({"active": false}))).await;
    assert_error(status, &body, 400, "invalid_json");
    let (status, body) = server.send(Method::PATCH, &path, Some(&outsider), Some(json!({"expires_at": later_text}))).await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = server.send(Method::PATCH, &path, None, Some(json!({"expires_at": later_text}))).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) =
        server.send(Method::PATCH, "/v1/keys/key_0000000000000000", Some(&ann), Some(json!({"expires_at": later_text}))).await;
    assert_error(status, &body, 404, "key_not_found");

    // Durable: the expiry survives a restart.
    let (status, _) = server.send(Method::PATCH, &path, Some(&ann), Some(json!({"expires_at": later_text}))).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
    let server = Server::start(dir.path()).await;
    let (_, listed) = server.get(&format!("/v1/businesses/{acme}/keys"), Some(OPERATOR)).await;
    assert_eq!(listed["keys"][0]["expires_at"], json!(later_text));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_embedded_with_security_headers() {
    let server = Server::fresh().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: &str| client.get(format!("{}{path}", server.base)).send();

    let page = get("/ui/").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["content-security-policy"], keygate_admin::ui::CONTENT_SECURITY_POLICY);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let csp = keygate_admin::ui::CONTENT_SECURITY_POLICY;
    for directive in
        ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "form-action 'none'", "base-uri 'none'"]
    {
        assert!(csp.contains(directive), "{directive}");
    }
    assert!(!csp.contains("unsafe"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="app.js"></script>"#));

    for (path, content_type) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/api.js", "text/javascript; charset=utf-8"),
        ("/ui/chart.js", "text/javascript; charset=utf-8"),
        ("/ui/dom.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert!(r.headers().contains_key("content-security-policy"), "{path}");
    }
    // No code of the page writes HTML from strings, stores tokens or logs.
    for file in ["app.js", "api.js", "chart.js", "dom.js", "policy.js"] {
        let text = get(&format!("/ui/{file}")).await.unwrap().text().await.unwrap();
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "localStorage.",
            "sessionStorage.",
            "document.cookie",
            "console.log(",
            "console.info(",
            "console.debug(",
            "console.warn(",
            "console.error(",
            "eval(",
            "new Function(",
        ] {
            assert!(!text.contains(banned), "{file} uses {banned}");
        }
    }

    let bare = get("/ui").await.unwrap();
    assert_eq!(bare.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(bare.headers()["location"], "/ui/");
    for missing in ["/ui/nope.js", "/ui/app.js/x", "/ui/APP.JS", "/ui/index.html/"] {
        let r = get(missing).await.unwrap();
        assert!(r.status() == StatusCode::NOT_FOUND, "{missing}: {}", r.status());
    }
    let r = client.post(format!("{}/ui/", server.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
}
