//! `cvm host-check`: what this host can run, like `virt-host-validate`.
//!
//! Exit status 0 when the requested `--tee` (default `none`) can run here, 1 otherwise.

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use host_vmm::tee::{self, KvmCapabilities, TeeKind};

/// `cvm host-check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TEE whose prerequisites decide the exit status.
    #[arg(long, value_enum, default_value = "none")]
    pub tee: super::launch::TeeArg,
    /// `text` or `json`.
    #[arg(long, visible_alias = "output-format", value_enum, default_value_t)]
    pub output: cli_support::Output,
    /// Same as `--output json` (kept for compatibility).
    #[arg(long, hide = true)]
    pub json: bool,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Runs every check; the bool says whether `tee` can run.
pub fn report(tee: TeeKind) -> (Vec<Check>, bool) {
    let mut out = Vec::new();
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            out.push(check("kvm", false, format!("cannot open /dev/kvm: {e}")));
            return (out, false);
        }
    };
    let caps = KvmCapabilities::query(&kvm);
    out.push(check(
        "kvm",
        caps.api_version == 12,
        format!("/dev/kvm API version {}", caps.api_version),
    ));
    let types: Vec<String> = (0..32)
        .filter(|t| caps.supports_vm_type(*t))
        .map(|t| t.to_string())
        .collect();
    out.push(check(
        "vm-types",
        true,
        format!(
            "KVM_CAP_VM_TYPES {:#b} (types {})",
            caps.vm_types,
            types.join(", ")
        ),
    ));
    out.push(check(
        "guest-memfd",
        caps.guest_memfd,
        if caps.guest_memfd {
            "present"
        } else {
            "missing"
        },
    ));
    out.push(check(
        "memory-attributes",
        caps.memory_attributes & 8 != 0,
        format!("KVM_CAP_MEMORY_ATTRIBUTES {:#x}", caps.memory_attributes),
    ));
    let mut selected_ok = true;
    for t in [
        TeeKind::None,
        TeeKind::EmulatedSnp,
        TeeKind::EmulatedTdx,
        TeeKind::Snp,
        TeeKind::Tdx,
    ] {
        let r = tee::check(t, &caps);
        let detail = match &r {
            Ok(()) if t == TeeKind::None => {
                "available (unencrypted development guests)".to_string()
            }
            Ok(()) if matches!(t, TeeKind::EmulatedSnp | TeeKind::EmulatedTdx) => {
                "available (test equipment: not encrypted, evidence is insecure-emulated)"
                    .to_string()
            }
            Ok(()) => "host prerequisites present".to_string(),
            Err(e) => e.reasons.join("; "),
        };
        if t == tee {
            selected_ok = r.is_ok();
        }
        out.push(check(&format!("tee-{t}"), r.is_ok(), detail));
    }
    let sev = Path::new("/dev/sev").exists();
    out.push(check(
        "dev-sev",
        sev,
        if sev {
            "/dev/sev present"
        } else {
            "/dev/sev absent (no SEV firmware on this host)"
        },
    ));
    let cg = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    let cg_ok = cg
        .as_deref()
        .is_some_and(|c| c.contains("cpu") && c.contains("memory"));
    out.push(check(
        "cgroup-v2",
        cg_ok,
        cg.map_or("not mounted at /sys/fs/cgroup".into(), |c| {
            format!("controllers: {}", c.trim())
        }),
    ));
    let seccomp = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").ok();
    out.push(check(
        "seccomp",
        seccomp.is_some(),
        seccomp.map_or("seccomp filters unavailable".into(), |a| {
            format!("actions: {}", a.trim())
        }),
    ));
    (out, selected_ok)
}

/// Runs `cvm host-check`.
pub fn run(a: Args) -> ExitCode {
    let (checks, ok) = report(a.tee.kind());
    if a.json || a.output.is_json() {
        let v = serde_json::json!({ "tee": a.tee.kind(), "can_run": ok, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for c in &checks {
            println!(
                "{:<18} {:<4} {}",
                c.name,
                if c.ok { "PASS" } else { "FAIL" },
                c.detail
            );
        }
        println!(
            "{} guests {} run on this host",
            a.tee.kind(),
            if ok { "can" } else { "cannot" }
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
