//! The repository's envoy.yaml, rewritten for a test stack: each rewrite must hit exactly once,
//! so a drifting envoy.yaml breaks the tests instead of silently testing something else.

pub(crate) fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "envoy.yaml should contain {from:?} exactly once");
    text.replacen(from, to, 1)
}

/// Replaces the plugin JSON (the block under `value: |`) with `json`.
pub(crate) fn replace_plugin_json(yaml: &str, json: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines.iter().position(|l| l.trim_end().ends_with("value: |")).expect("envoy.yaml has a `value: |` plugin configuration");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let block_indent = indent(lines[start + 1]);
    let end = (start + 1..lines.len()).find(|&i| !lines[i].trim().is_empty() && indent(lines[i]) < block_indent).unwrap_or(lines.len());
    let pad = " ".repeat(block_indent);
    let mut out: Vec<String> = lines[..=start].iter().map(|s| s.to_string()).collect();
    out.extend(json.lines().map(|l| format!("{pad}{l}")));
    out.extend(lines[end..].iter().map(|s| s.to_string()));
    out.join("\n")
}

/// A copy of the `ingress` listener (at `from_port`) on `port`, whose filter (same `vm_id`)
/// names the cluster `keygate_admin_b`; and that cluster, at `admin_port`.
pub(crate) fn add_second_listener(yaml: &str, from_port: u16, port: u16, admin_port: &str) -> String {
    let start = yaml.find("  - name: ingress\n").expect("envoy.yaml has an ingress listener");
    let end = yaml.find("\n  clusters:\n").expect("envoy.yaml has clusters after the listeners");
    let copy = replace_once(&yaml[start..end], "  - name: ingress\n", "  - name: ingress_b\n");
    let copy = replace_once(&copy, &format!("port_value: {from_port} "), &format!("port_value: {port} "));
    let copy = replace_once(&copy, "\"admin_cluster\": \"keygate_admin\"", "\"admin_cluster\": \"keygate_admin_b\"");
    let cluster = format!(
        "\n  - name: keygate_admin_b\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: keygate_admin_b\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }} }}\n"
    );
    format!("{}{}{}{}", &yaml[..end], copy, yaml[end..].trim_end_matches('\n'), cluster)
}

/// Lists a second admin replica (at `port`) in the `keygate_admin` cluster, after the one
/// at `first_port`: one cluster, two endpoints, Envoy's health checks pick between them.
pub(crate) fn add_admin_endpoint(yaml: &str, first_port: &str, port: &str) -> String {
    let endpoint =
        |port: &str| format!("        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n");
    replace_once(yaml, &endpoint(first_port), &format!("{}{}", endpoint(first_port), endpoint(port)))
}

/// The reference rules (`/public/` open, `/key/` by key, everything else all three
/// credentials) as plugin JSON, with `extra` fields (each `\n  "name": value,`) and
/// `routes` (each `\n    {...},`) ahead of the two reference routes.
pub fn plugin_json(extra: &str, routes: &str) -> String {
    format!(
        r#"{{
  "admin_cluster": "keygate_admin",
  "max_staleness_secs": 600,{extra}
  "routes": [{routes}
    {{"prefix": "/public/", "require": "none"}},
    {{"prefix": "/key/", "require": "key", "key_in_bearer": true}}
  ]
}}"#
    )
}
