//! `cvm net` and the `[network_policy]` of a VM description, through the binary: the
//! ruleset a launch installs is printed, bad policies are usage errors naming the key
//! (before anything is installed), and a registry others can write is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

fn cvm(args: &[&str], state: &Path) -> Output {
    Command::new(CVM)
        .args(args)
        .env("CVM_NET_STATE_DIR", state)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const POLICY: &str = r#"version = 1
tee = "none"
[network_policy]
name = "web"
[[network_policy.interfaces]]
tap = "cvm-web0"
mac = "52:54:00:00:00:0a"
addresses = ["10.0.0.2"]
egress = [{ vm = "db", proto = "tcp", ports = [5432] }]
"#;

#[test]
fn net_show_prints_the_default_deny_ruleset_of_a_description() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vm.toml");
    std::fs::write(&f, POLICY).unwrap();
    let o = cvm(
        &["net", "show", "--config", f.to_str().unwrap()],
        &dir.path().join("absent"),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    for want in [
        "table netdev cvm_web_cvm_web0_",
        "type filter hook ingress device \"cvm-web0\" priority -500; policy drop;",
        "type filter hook egress device \"cvm-web0\" priority -500; policy drop;",
        "ether saddr != 52:54:00:00:00:0a counter name \"spoofed\" drop",
        // `db` is not running: its set is empty, so the rule allows nothing.
        "set vm_db { type ipv4_addr; flags interval; }",
        "ip daddr @vm_db tcp dport { 5432 } accept",
    ] {
        assert!(out.contains(want), "no `{want}` in\n{out}");
    }
    assert!(
        !dir.path().join("absent").exists(),
        "show creates no registry"
    );
}

#[test]
fn bad_policies_are_usage_errors_naming_the_key_for_show_and_launch() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("net");
    let f = dir.path().join("vm.toml");
    for (bad, key) in [
        ("ports = [5432]", "ports = [0]"),
        ("ports = [5432]", "ports = [\"90-80\"]"),
        ("proto = \"tcp\"", "proto = \"gre\""),
        (
            "addresses = [\"10.0.0.2\"]",
            "addresses = [\"10.0.0.0/24\"]",
        ),
    ]
    .iter()
    .map(|(from, to)| (POLICY.replace(from, to), *to))
    {
        std::fs::write(&f, &bad).unwrap();
        for args in [
            vec!["net", "show", "--config", f.to_str().unwrap()],
            vec!["launch", "--config", f.to_str().unwrap()],
        ] {
            let o = cvm(&args, &state);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{key} {args:?}: {}", text(&o));
            assert!(err.contains("network_policy.interfaces[0]"), "{key}: {err}");
        }
    }
    // An unknown key.
    std::fs::write(&f, POLICY.replace("egress =", "egres =")).unwrap();
    let o = cvm(&["net", "show", "--config", f.to_str().unwrap()], &state);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("egres"));
    // No policy at all.
    std::fs::write(&f, "version = 1\n").unwrap();
    let o = cvm(&["net", "show", "--config", f.to_str().unwrap()], &state);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!state.exists(), "nothing was registered");
}

#[test]
fn a_registry_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("net");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    for cmd in ["list", "gc"] {
        let o = cvm(&["net", cmd], &state);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("is not private"),
            "{cmd}: {}",
            text(&o)
        );
    }
}
