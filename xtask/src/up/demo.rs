//! The demo's business, user and keys: seeded once and kept in `.keygate/demo.json`,
//! checked through Envoy, and shown in the banner.

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use super::{env_or, random_hex, rel, write_private, Stack, Tokens, ECHO_ADDR, ENVOY_ADDR, ENVOY_ADMIN_ADDR, HTTP_TIMEOUT, TICK};
use crate::http::{self, Response};
use crate::json::{quote, Json};
use crate::{step, sys, Paths};

pub(super) struct Demo {
    business_id: String,
    pub(super) email: String,
    pub(super) password: String,
    sk: String,
    pk: String,
}

impl Demo {
    fn to_json(&self) -> String {
        format!(
            "{{\n  \"businessId\": {},\n  \"email\": {},\n  \"password\": {},\n  \"secretKey\": {},\n  \"publishableKey\": {}\n}}\n",
            quote(&self.business_id),
            quote(&self.email),
            quote(&self.password),
            quote(&self.sk),
            quote(&self.pk)
        )
    }

    fn from_json(text: &str) -> Option<Demo> {
        let v = Json::parse(text).ok()?;
        Some(Demo {
            business_id: v.str("businessId")?.to_string(),
            email: v.str("email")?.to_string(),
            password: v.str("password")?.to_string(),
            sk: v.str("secretKey")?.to_string(),
            pk: v.str("publishableKey")?.to_string(),
        })
    }
}

pub(super) enum SignIn {
    Ok { access: String, expires_in: f64, businesses: Vec<String> },
    Rejected(Response),
}

pub(super) fn sign_in(admin: &str, email: &str, password: &str) -> Result<SignIn, String> {
    let body = format!("{{\"email\":{},\"password\":{}}}", quote(email), quote(password));
    let r = http::request("POST", admin, "/auth/signin", &[], Some(&body), HTTP_TIMEOUT)?;
    if r.status != 200 {
        return Ok(SignIn::Rejected(r));
    }
    let v = Json::parse(&r.body).map_err(|e| format!("/auth/signin answer: {e}: {}", r.body))?;
    let access = v.str("accessToken").ok_or_else(|| format!("/auth/signin: no accessToken in {}", r.body))?;
    Ok(SignIn::Ok {
        access: access.to_string(),
        expires_in: v.num("expiresIn").unwrap_or(0.0),
        businesses: v.arr("businesses").iter().filter_map(|b| b.str("id")).map(str::to_string).collect(),
    })
}

pub(super) fn show(r: &Response) -> String {
    format!("HTTP {} {}", r.status, r.body.trim())
}

/// The demo kept in .keygate/demo.json if its user still signs in to its business, else a
/// fresh business, user and sk/pk keys (written there).
pub(super) fn seed(p: &Paths, admin: &str, operator: &str) -> Result<Demo, String> {
    let file = p.state.join("demo.json");
    if let Some(d) = fs::read_to_string(&file).ok().and_then(|t| Demo::from_json(&t)) {
        match sign_in(admin, &d.email, &d.password)? {
            SignIn::Ok { businesses, .. } if businesses.contains(&d.business_id) => {
                step(&format!("demo: reusing {} ({})", rel(p, &file), d.business_id));
                return Ok(d);
            }
            SignIn::Ok { .. } => step("demo: the stored user is no longer in the stored business; seeding afresh"),
            SignIn::Rejected(r) => step(&format!("demo: the stored user no longer signs in (HTTP {}); seeding afresh", r.status)),
        }
    }
    step("demo: creating a business, a user and sk/pk live keys");
    let auth = format!("Bearer {operator}");
    let op = [("Authorization", auth.as_str())];
    let post = |path: &str, body: String| http::request("POST", admin, path, &op, Some(&body), HTTP_TIMEOUT);
    let expect_201 = |what: &str, r: Response| -> Result<Json, String> {
        if r.status == 401 || r.status == 403 {
            return Err(format!(
                "{what}: {} (the operator token was refused: if {} holds data made with another \
                 token, set KEYGATE_OPERATOR_TOKEN to that token or delete that directory)",
                show(&r),
                env_or("KEYGATE_DATA", "./data")
            ));
        }
        if r.status != 201 && r.status != 200 {
            return Err(format!("{what}: {}", show(&r)));
        }
        Json::parse(&r.body).map_err(|e| format!("{what}: {e}: {}", r.body))
    };

    let biz = expect_201("POST /v1/businesses", post("/v1/businesses", "{\"name\":\"Demo business\"}".into())?)?;
    let business_id = biz.str("id").ok_or("POST /v1/businesses: no id in the answer")?.to_string();

    let password = format!("demo-{}", random_hex(8)?);
    let mut email = String::new();
    for attempt in 0..5 {
        let candidate = if attempt == 0 { "demo@example.com".to_string() } else { format!("demo-{}@example.com", random_hex(3)?) };
        let body =
            format!("{{\"email\":{},\"password\":{},\"businesses\":[{}]}}", quote(&candidate), quote(&password), quote(&business_id));
        let r = post("/v1/users", body)?;
        if r.status == 409 {
            continue; // email_taken: a user from an earlier seed; make another
        }
        expect_201("POST /v1/users", r)?;
        email = candidate;
        break;
    }
    if email.is_empty() {
        return Err("POST /v1/users: every demo email tried is taken".into());
    }

    let key = |kind: &str| -> Result<String, String> {
        let body = format!("{{\"kind\":\"{kind}\",\"mode\":\"live\",\"name\":\"demo {kind}\"}}");
        let path = format!("/v1/businesses/{business_id}/keys");
        let v = expect_201(&format!("POST {path} ({kind})"), post(&path, body)?)?;
        v.str("key").map(str::to_string).ok_or_else(|| format!("POST {path}: no key in the answer"))
    };
    let demo = Demo { sk: key("sk")?, pk: key("pk")?, business_id, email, password };
    fs::create_dir_all(&p.state).map_err(|e| format!("create {}: {e}", p.state.display()))?;
    write_private(&file, &demo.to_json())?;
    step(&format!("demo: kept in {}", rel(p, &file)));
    Ok(demo)
}

/// The two curl lines the banner prints, tried first: all three headers → 200 from echo
/// (new keys reach the filter with its next snapshot, so allow a few seconds), none → 401.
pub(super) fn check_through_envoy(stack: &mut Stack, d: &Demo, access: &str) -> Result<(), String> {
    let bearer = format!("Bearer {access}");
    let all = [("Authorization", bearer.as_str()), ("SECRET_KEY", d.sk.as_str()), ("businessId", d.business_id.as_str())];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last;
    loop {
        if sys::caught().is_some() {
            return Err("interrupted".into());
        }
        if let Some(dead) = stack.dead() {
            return Err(dead);
        }
        match http::request("GET", ENVOY_ADDR, "/orders", &all, None, HTTP_TIMEOUT) {
            Ok(r) if r.status == 200 => {
                step("check: GET /orders through Envoy with all three headers → 200 from the echo upstream");
                break;
            }
            Ok(r) => last = show(&r),
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            println!("warning: GET /orders with all three headers still answers {last}");
            break;
        }
        std::thread::sleep(TICK);
    }
    let without_key = [all[0], all[2]];
    match http::request("GET", ENVOY_ADDR, "/orders", &without_key, None, HTTP_TIMEOUT) {
        Ok(r) if r.status == 401 => step("check: the same without SECRET_KEY → 401"),
        Ok(r) => println!("warning: GET /orders without SECRET_KEY answers {}", show(&r)),
        Err(e) => println!("warning: GET /orders without SECRET_KEY: {e}"),
    }
    Ok(())
}

pub(super) fn print_banner(p: &Paths, admin: &str, t: &Tokens, d: &Demo, access: &str, expires_in: f64) {
    let signin_body = format!("{{\"email\":{},\"password\":{}}}", quote(&d.email), quote(&d.password));
    println!(
        "
keygate demo is up. Ctrl-C stops everything. Logs: {logs}/{{admin,envoy,echo}}.log

  Envoy (keygate filter)  http://{ENVOY_ADDR}   → echo upstream http://{ECHO_ADDR}
  Envoy admin             http://{ENVOY_ADMIN_ADDR}
  keygate-admin           http://{admin}   operator token: {op}
  dashboard               http://{admin}/ui/   (sign in as the user below: Settings → API Keys)
  business id             {biz}
  user                    {email}   password: {pw}
  secret key (sk)         {sk}
  publishable key (pk)    {pk}
  access token            {access}
                          (valid {mins} min; a fresh one: curl -s -X POST http://{admin}/auth/signin -H 'Content-Type: application/json' -d '{signin_body}')

All three headers → 200, the echo upstream shows what keygate forwarded:
  curl -i http://{ENVOY_ADDR}/orders -H \"Authorization: Bearer {access}\" -H \"SECRET_KEY: {sk}\" -H \"businessId: {biz}\"

Without SECRET_KEY → 401 {{\"success\":false,…,\"code\":\"missing_credentials\"}}:
  curl -i http://{ENVOY_ADDR}/orders -H \"Authorization: Bearer {access}\" -H \"businessId: {biz}\"
",
        logs = rel(p, &p.state.join("logs")),
        op = t.operator,
        biz = d.business_id,
        email = d.email,
        pw = d.password,
        sk = d.sk,
        pk = d.pk,
        mins = (expires_in / 60.0).round(),
    );
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_state_round_trips() {
        let d = Demo {
            business_id: "biz_1".into(),
            email: "demo@example.com".into(),
            password: "p\"w".into(),
            sk: "sk_live_x".into(),
            pk: "pk_live_y".into(),
        };
        let back = Demo::from_json(&d.to_json());
        assert!(back.is_some_and(|b| b.business_id == "biz_1" && b.password == "p\"w" && b.pk == "pk_live_y"));
        assert!(Demo::from_json("{\"businessId\":\"x\"}").is_none());
    }
}
