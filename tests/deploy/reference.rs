//! README's configuration reference lists every plugin field (with its default) and every
//! `keygate-admin serve` flag and env var (with its default), and nothing else.

use keygate_core::FilterConfig;
use keygate_e2e::artifact;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::read;

/// The README section from `## {title}` to the next `## `.
fn readme_section(title: &str) -> String {
    let readme = read("README.md");
    let start = readme.find(&format!("\n## {title}\n")).unwrap_or_else(|| panic!("README has no `## {title}` section"));
    let rest = &readme[start + 4..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// Rows of the markdown table right after the line that contains `marker`, as cells.
fn table_after(section: &str, marker: &str) -> Vec<Vec<String>> {
    let start = section.find(marker).unwrap_or_else(|| panic!("README: no {marker:?}"));
    section[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
        .collect()
}

/// The `backticked` words of a cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Field names of `struct NAME { ... }` in a Rust source file.
fn struct_fields(src: &str, name: &str) -> BTreeSet<String> {
    let start = src.find(&format!("struct {name} {{")).unwrap_or_else(|| panic!("no struct {name}"));
    let body = &src[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches("pub(super) ").trim_start_matches("pub ").split_once(':').map(|(f, _)| f.trim().to_owned()))
        .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
        .collect()
}

/// Whether `FilterConfig::parse` knows `field` (at the top, in a route, or in rate_limits):
/// serde refuses unknown fields, so only "unknown field" means it does not.
fn parse_knows(field: &str, place: &str) -> bool {
    let probe = match place {
        "top" => json!({ "admin_cluster": "a", field: null }),
        "route" => json!({ "admin_cluster": "a", "routes": [{ "prefix": "/", field: null }] }),
        "hold_unknown" => json!({ "admin_cluster": "a", "hold_unknown": { field: null } }),
        _ => json!({ "admin_cluster": "a", "rate_limits": { field: null } }),
    };
    match FilterConfig::parse(probe.to_string().as_bytes(), Some("t")) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("unknown field"),
    }
}

/// A list of limits as the README writes it: `["1000/h"]`.
fn limits(list: &[keygate_core::ratelimit::Limit]) -> String {
    format!("[{}]", list.iter().map(|l| format!("\"{l}\"")).collect::<Vec<_>>().join(", "))
}

#[test]
fn readme_lists_every_plugin_field_with_its_default() {
    let section = readme_section("Configuration reference");
    let src = read("core/src/config/fields.rs");
    // Top-level fields.
    let rows = table_after(&section, "### Filter plugin JSON");
    let mut documented = BTreeMap::new();
    for row in &rows {
        for f in ticked(&row[0]) {
            assert!(parse_knows(&f, "top"), "README documents plugin field {f}, which FilterConfig::parse refuses");
            documented.insert(f, row[1].clone());
        }
    }
    let fields = struct_fields(&src, "RawConfig");
    assert!(fields.len() >= 10, "{fields:?}");
    assert_eq!(documented.keys().cloned().collect::<BTreeSet<_>>(), fields, "README plugin fields vs core/src/config/fields.rs RawConfig");
    // Defaults: what parsing a minimal config gives.
    let cfg = FilterConfig::parse(br#"{"admin_cluster": "a"}"#, Some("t")).unwrap();
    let defaults: Vec<(&str, String)> = vec![
        ("admin_authority", cfg.sync.admin_authority.clone()),
        ("issuer", cfg.policy.token.issuer.clone()),
        ("audience", cfg.policy.token.audience.clone()),
        ("leeway_secs", cfg.policy.token.leeway.to_string()),
        ("max_staleness_secs", cfg.policy.max_staleness_secs.to_string()),
        ("poll_interval_ms", cfg.sync.poll_interval_ms.to_string()),
        ("long_poll_secs", cfg.sync.long_poll_secs.to_string()),
        ("admin_timeout_ms", cfg.sync.admin_timeout_ms.to_string()),
        ("usage_flush_secs", cfg.sync.usage_flush_secs.to_string()),
        ("token_cache_entries", cfg.policy.token_cache_entries.to_string()),
        ("rate_limits", format!("\"sk\": {}", limits(&cfg.policy.rate_limits.sk))),
        ("rate_limits", format!("\"pk\": {}", limits(&cfg.policy.rate_limits.pk))),
        ("rate_limits", format!("\"business\": {}", limits(&cfg.policy.rate_limits.business))),
        ("rate_limits", format!("\"public_per_ip\": {}", limits(&cfg.policy.rate_limits.public_per_ip))),
        ("rate_limits", format!("\"sync_interval_ms\": {}", cfg.policy.rate_limits.sync_interval_ms)),
        ("rate_limits", format!("\"fleet_timeout_ms\": {}", cfg.policy.rate_limits.fleet_timeout_ms)),
        ("rate_limits", format!("\"headers\": {}", cfg.policy.rate_limits.headers)),
        ("hold_unknown", format!("\"timeout_ms\": {}", cfg.hold.timeout_ms)),
        ("hold_unknown", format!("\"max_held\": {}", cfg.hold.max_held)),
        ("hold_unknown", format!("\"negative_ttl_secs\": {}", cfg.hold.negative_ttl_secs)),
        ("hold_unknown", format!("\"negative_entries\": {}", cfg.hold.negative_entries)),
    ];
    for (field, value) in defaults {
        let cell = documented.get(field).unwrap_or_else(|| panic!("README: no row for {field}"));
        let matches = if field == "rate_limits" || field == "hold_unknown" { cell.contains(&value) } else { ticked(cell).contains(&value) };
        assert!(matches, "README default of {field} is {cell:?}; the code says {value}");
    }
    assert!(documented["admin_cluster"].contains("required"));
    // The hold_unknown fields' defaults, row by row.
    let hold_defaults = [
        ("timeout_ms", cfg.hold.timeout_ms.to_string()),
        ("max_held", cfg.hold.max_held.to_string()),
        ("negative_ttl_secs", cfg.hold.negative_ttl_secs.to_string()),
        ("negative_entries", cfg.hold.negative_entries.to_string()),
    ];
    let hold_rows = table_after(&section, "### hold_unknown fields");
    for (field, value) in hold_defaults {
        let row = hold_rows
            .iter()
            .find(|r| ticked(&r[0]).contains(&field.to_owned()))
            .unwrap_or_else(|| panic!("README: no hold_unknown row for {field}"));
        assert!(ticked(&row[1]).contains(&value), "README default of hold_unknown.{field} is {:?}; the code says {value}", row[1]);
    }
    // Route fields, rate_limits fields and hold_unknown fields.
    for (marker, place, strukt) in [
        ("### Route fields", "route", "Route"),
        ("### rate_limits fields", "rate_limits", "RateLimits"),
        ("### hold_unknown fields", "hold_unknown", "HoldUnknown"),
    ] {
        let rows = table_after(&section, marker);
        let mut names = BTreeSet::new();
        for row in &rows {
            for f in ticked(&row[0]) {
                assert!(parse_knows(&f, place), "README documents {place} field {f}, which FilterConfig::parse refuses");
                names.insert(f);
            }
        }
        assert_eq!(names, struct_fields(&src, strukt), "README {marker} vs core/src/config/fields.rs {strukt}");
    }
}

pub struct ServeOption {
    pub flag: String,
    pub env: Option<String>,
    pub default: Option<String>,
}

/// `keygate-admin serve --help`, parsed (run with no KEYGATE_* in the environment, so clap
/// shows no values).
pub fn serve_options() -> Vec<ServeOption> {
    let bin = artifact("KEYGATE_ADMIN_BIN", "target/debug/keygate-admin");
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--help"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEYGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut options: Vec<ServeOption> = Vec::new();
    let mut block = String::new();
    let flush = |block: &mut String, options: &mut Vec<ServeOption>| {
        if let Some(flag) = block.split_whitespace().find(|w| w.starts_with("--")) {
            let flag = flag.trim_end_matches(',').to_owned();
            let bracket =
                |tag: &str| block.split(&format!("[{tag}: ")).nth(1).map(|r| r[..r.find(']').unwrap()].trim_end_matches('=').to_owned());
            if flag != "--help" && flag != "--version" {
                options.push(ServeOption { env: bracket("env"), default: bracket("default"), flag });
            }
        }
        block.clear();
    };
    for line in help.lines() {
        if line.trim_start().starts_with('-') && line.starts_with("  ") && !line.starts_with("          ") {
            flush(&mut block, &mut options);
        }
        block.push_str(line);
        block.push('\n');
    }
    flush(&mut block, &mut options);
    assert!(options.len() >= 4, "could not parse `keygate-admin serve --help`:\n{help}");
    options
}

#[test]
fn readme_lists_every_admin_serve_option_with_its_default() {
    let section = readme_section("Configuration reference");
    let rows = table_after(&section, "### keygate-admin serve");
    let options = serve_options();
    let mut seen_flags = BTreeSet::new();
    for row in &rows {
        let flags = ticked(&row[0]);
        let flag = flags.first().unwrap_or_else(|| panic!("README admin row without a flag: {row:?}"));
        let opt = options
            .iter()
            .find(|o| &o.flag == flag)
            .unwrap_or_else(|| panic!("README documents {flag}, which `keygate-admin serve` does not take"));
        let env = ticked(&row[1]);
        assert_eq!(env.first(), opt.env.as_ref(), "README: env var of {flag}");
        if let Some(default) = &opt.default {
            assert!(ticked(&row[2]).contains(default), "README default of {flag} is {:?}; --help says {default}", row[2]);
        }
        seen_flags.insert(flag.clone());
    }
    let all: BTreeSet<String> = options.iter().map(|o| o.flag.clone()).collect();
    assert_eq!(seen_flags, all, "README `keygate-admin serve` table vs --help");
}
