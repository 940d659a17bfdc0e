//! Every route of the router is documented in openapi.yaml, and every documented
//! operation is routed.

use std::collections::BTreeSet;

#[test]
fn openapi_matches_router() {
    let text = include_str!("../openapi.yaml");
    let mut documented = BTreeSet::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            current = Some(format!("/{p}"));
        } else if let (Some(path), Some(m)) = (
            &current,
            line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')),
        ) {
            if ["get", "put", "post", "delete", "patch"].contains(&m) {
                documented.insert(format!("{} {path}", m.to_uppercase()));
            }
        }
    }
    let routed: BTreeSet<String> = verifier::service::routes()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(routed.len() > 20);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.yaml: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}
