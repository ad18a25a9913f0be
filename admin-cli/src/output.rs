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

/// How an answer reads: `field  value` lines, a table of keys, hourly usage, or audit entries.
pub enum Shape {
    Fields,
    Keys,
    Usage,
    Audit,
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
    }
    if let Some(note) = note {
        eprintln!("{note}");
    }
}
