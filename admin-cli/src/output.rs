//! What the client subcommands print: the server's JSON answer as is (`--json`), or a
//! readable form of it.
/// A JSON value as one cell of readable output: `-` for null or an empty list, a list of
/// plain values joined with commas, strings without quotes.
fn scalar(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.iter().map(scalar).collect::<Vec<_>>().join(", ")
            }
        }
        other => other.to_string(),
    }
}

/// `field: value` lines, in the server's order.
fn print_fields(value: &serde_json::Value) {
    match value.as_object() {
        Some(fields) => {
            let width = fields.keys().map(String::len).max().unwrap_or(0);
            for (name, v) in fields {
                println!("{name:<width$}  {}", scalar(v));
            }
        }
        None => println!("{}", scalar(value)),
    }
}

/// `list-keys`: a table, one key a row.
fn print_keys(value: &serde_json::Value) {
    let keys = value.get("keys").and_then(|k| k.as_array()).cloned().unwrap_or_default();
    if keys.is_empty() {
        println!("no keys");
        return;
    }
    println!("{:<20}  {:<12}  {:<4}  {:<4}  {:<8}  {:<20}  {:<20}  NAME", "ID", "PREFIX", "KIND", "MODE", "STATE", "LAST USED", "EXPIRES");
    for k in keys {
        let state = if k["active"] == serde_json::Value::Bool(true) { "active" } else { "inactive" };
        println!(
            "{:<20}  {:<12}  {:<4}  {:<4}  {:<8}  {:<20}  {:<20}  {}",
            scalar(&k["id"]),
            scalar(&k["prefix"]),
            scalar(&k["kind"]),
            scalar(&k["mode"]),
            state,
            scalar(&k["last_used_at"]),
            scalar(&k["expires_at"]),
            scalar(&k["name"])
        );
    }
}

/// `key-usage`: the totals, then one line an hour.
fn print_usage(value: &serde_json::Value) {
    println!("key           {}", scalar(&value["key_id"]));
    println!("last used     {}", scalar(&value["last_used_at"]));
    println!("total (week)  {}", scalar(&value["total"]));
    for hour in value["hours"].as_array().cloned().unwrap_or_default() {
        println!("  {}  {}", scalar(&hour["hour"]), scalar(&hour["count"]));
    }
}

/// `audit`: a table, one entry a row, newest first.
fn print_audit(value: &serde_json::Value) {
    let entries = value.get("entries").and_then(|e| e.as_array()).cloned().unwrap_or_default();
    if entries.is_empty() {
        println!("no entries");
        return;
    }
    println!("{:<20}  {:<30}  {:<15}  {:<18}  {:<32}  BUSINESS", "AT", "ACTOR", "ADDRESS", "ACTION", "OBJECT");
    for e in entries {
        let actor = match e["actor"]["id"].as_str() {
            Some(id) => format!("{} {id}", scalar(&e["actor"]["kind"])),
            None => scalar(&e["actor"]["kind"]),
        };
        println!(
            "{:<20}  {:<30}  {:<15}  {:<18}  {:<32}  {}",
            scalar(&e["at"]),
            actor,
            scalar(&e["actor"]["address"]),
            scalar(&e["action"]),
            format!("{} {}", scalar(&e["object"]["type"]), scalar(&e["object"]["id"])),
            scalar(&e["businesses"])
        );
    }
}

/// An issuer's pinned keys as `kid (kty alg)` texts.
fn issuer_kids(issuer: &serde_json::Value) -> Vec<String> {
    let keys = issuer.get("keys").and_then(|k| k.as_array()).cloned().unwrap_or_default();
    keys.iter()
        .map(|k| match k.get("alg").and_then(|a| a.as_str()) {
            Some(alg) => format!("{} ({} {alg})", scalar(&k["kid"]), scalar(&k["kty"])),
            None => format!("{} ({})", scalar(&k["kid"]), scalar(&k["kty"])),
        })
        .collect()
}

/// `add-issuer`: `field  value` lines, the pinned keys by kid.
fn print_issuer(value: &serde_json::Value) {
    let mut shown = value.clone();
    if let Some(fields) = shown.as_object_mut() {
        fields.insert("keys".to_owned(), serde_json::json!(issuer_kids(value)));
    }
    print_fields(&shown);
}

/// `list-issuers`: one issuer a block.
fn print_issuers(value: &serde_json::Value) {
    let issuers = value.get("issuers").and_then(|k| k.as_array()).cloned().unwrap_or_default();
    if issuers.is_empty() {
        println!("no trusted issuers");
        return;
    }
    println!("{:<47}  {:<9}  {:<40}  {:<20}  KEYS", "ID", "SOURCE", "ISSUER", "REFRESHED");
    for i in issuers {
        println!(
            "{:<47}  {:<9}  {:<40}  {:<20}  {}",
            scalar(&i["id"]),
            scalar(&i["source"]),
            scalar(&i["issuer"]),
            scalar(&i["refreshed_at"]),
            issuer_kids(&i).join(", ")
        );
        println!(
            "    audiences {}; algorithms {}; businesses claim {}",
            scalar(&i["audiences"]),
            scalar(&i["algorithms"]),
            scalar(&i["businesses_claim"])
        );
        if !i["refresh_error"].is_null() {
            println!("    last refresh failed: {}", scalar(&i["refresh_error"]));
        }
    }
}

/// How an answer reads: `field  value` lines, a table of keys, hourly usage, audit entries, or issuers.
pub enum Shape {
    Fields,
    Keys,
    Usage,
    Audit,
    Issuer,
    Issuers,
}

/// Prints `value` as is (`json`, for scripts) or readably in `shape`; `note` goes to stderr
/// after a readable answer.
pub fn show(json: bool, value: &serde_json::Value, shape: Shape, note: Option<&str>) {
    if json {
        println!("{value}");
        return;
    }
    match shape {
        Shape::Fields => print_fields(value),
        Shape::Keys => print_keys(value),
        Shape::Usage => print_usage(value),
        Shape::Audit => print_audit(value),
        Shape::Issuer => print_issuer(value),
        Shape::Issuers => print_issuers(value),
    }
    if let Some(note) = note {
        eprintln!("{note}");
    }
}
