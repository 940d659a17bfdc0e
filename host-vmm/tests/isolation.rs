//! The jail and the per-VM control group, on this host's real kernel (needs root).
//!
//! `harness = false`: the jail must be entered by a single-threaded process, so this
//! test is a plain `main` that re-runs itself as the process to be jailed and checks,
//! from inside, what the jail promises: PID 1 of a new PID namespace, the jail
//! directory as `/` with nothing of the host reachable, the unprivileged IDs, no
//! capabilities, and no network.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use host_vmm::isolation::cgroup::{self, CpuList, Limits, VmCgroup};
use host_vmm::isolation::jail::{self, JailConfig};

const NOBODY: u32 = 65534;

fn main() {
    if let Ok(dir) = std::env::var("CVM_TEST_JAIL_CHILD") {
        let port: u16 = std::env::var("CVM_TEST_JAIL_PORT")
            .unwrap()
            .parse()
            .unwrap();
        jailed_child(Path::new(&dir), port);
        return;
    }
    if !test_kit::require_root() {
        return;
    }
    let mut passed = 0;
    jail_confines_the_process();
    passed += 1;
    jail_refuses_the_host_root();
    passed += 1;
    cgroup_limits_are_applied();
    passed += 1;
    println!("test result: ok. {passed} passed; 0 failed");
}

fn jail_confines_the_process() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("marker"), b"inside").unwrap();
    // A host service the jailed process must not reach.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = Command::new(std::env::current_exe().unwrap())
        .env("CVM_TEST_JAIL_CHILD", dir.path())
        .env("CVM_TEST_JAIL_PORT", port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "jailed child failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    for want in [
        "pid=1",
        "uid=65534",
        "gid=65534",
        "caps=0/0",
        "root=[marker]",
        "host-etc=absent",
        "marker=inside",
        "network=unreachable",
        "write-root=denied",
    ] {
        assert!(
            stdout.lines().any(|l| l == want),
            "missing `{want}` in:\n{stdout}\n{stderr}"
        );
    }
    println!("test jail_confines_the_process ... ok");
}

/// Runs inside the jail; prints one fact per line.
fn jailed_child(dir: &Path, port: u16) {
    // SAFETY: this process (the re-run test binary, a plain `main`) has one thread.
    let entered = unsafe {
        jail::enter(
            &JailConfig {
                root: dir.to_owned(),
                uid: NOBODY,
                gid: NOBODY,
            },
            true,
            || {},
        )
    };
    match entered {
        Ok(jail::Entered::Jailed) => {}
        Ok(jail::Entered::Parent(status)) => std::process::exit(status),
        Err(e) => panic!("enter: {e}"),
    }
    // SAFETY: getpid/getuid/getgid have no preconditions.
    let (pid, uid, gid) = unsafe { (libc::getpid(), libc::getuid(), libc::getgid()) };
    println!("pid={pid}");
    println!("uid={uid}");
    println!("gid={gid}");
    let (eff, prm) = jail::current_caps().unwrap();
    println!("caps={eff}/{prm}");
    let mut names: Vec<String> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!("root=[{}]", names.join(","));
    println!(
        "host-etc={}",
        if Path::new("/etc/passwd").exists() {
            "present"
        } else {
            "absent"
        }
    );
    let mut s = String::new();
    std::fs::File::open("/marker")
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    println!("marker={s}");
    let net = std::net::TcpStream::connect(("127.0.0.1", port));
    println!(
        "network={}",
        if net.is_ok() {
            "reachable"
        } else {
            "unreachable"
        }
    );
    let w = std::fs::write("/new-file", b"x");
    println!(
        "write-root={}",
        if w.is_ok() { "allowed" } else { "denied" }
    );
}

fn jail_refuses_the_host_root() {
    let e = jail::check_root(Path::new("/")).unwrap_err();
    assert!(e.to_string().contains("host's root"), "{e}");
    println!("test jail_refuses_the_host_root ... ok");
}

fn cgroup_limits_are_applied() {
    let limits = Limits {
        cpu_quota_percent: Some(50),
        memory_limit: Some(256 << 20),
        cpus: Some("0".parse::<CpuList>().unwrap()),
    };
    limits
        .validate(128 << 20, &cgroup::online_cpus().unwrap())
        .unwrap();
    let layout = match cgroup::detect(&limits.controllers()) {
        Ok(l) => l,
        Err(e) => {
            test_kit::skip(format_args!("cgroup_limits_are_applied: {e}"));
            return;
        }
    };
    let name = format!("test-{}", std::process::id());
    let cg = VmCgroup::create(&layout, &name, None, &limits).unwrap();
    let dirs: Vec<_> = cg.dirs().map(Path::to_owned).collect();
    assert!(!dirs.is_empty());
    let read = |file: &str| -> Option<String> {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|s| s.trim().to_owned())
    };
    match layout {
        cgroup::Layout::V2 { .. } => {
            assert_eq!(read("cpu.max").unwrap(), "50000 100000");
            assert_eq!(read("memory.max").unwrap(), (256u64 << 20).to_string());
            assert_eq!(read("cpuset.cpus").unwrap(), "0");
        }
        cgroup::Layout::V1(_) => {
            assert_eq!(read("cpu.cfs_quota_us").unwrap(), "50000");
            assert_eq!(read("cpu.cfs_period_us").unwrap(), "100000");
            assert_eq!(
                read("memory.limit_in_bytes").unwrap(),
                (256u64 << 20).to_string()
            );
            assert_eq!(read("cpuset.cpus").unwrap(), "0");
        }
    }
    // A process attached to the group is confined to CPU 0.
    let mut child = Command::new("sleep").arg("5").spawn().unwrap();
    cg.attach(child.id()).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let allowed = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(allowed, "0");
    let member = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    assert!(member.contains(&format!("cvm-{name}")), "{member}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(cg);
    for d in &dirs {
        assert!(!d.exists(), "{} was not removed", d.display());
    }
    println!("test cgroup_limits_are_applied ... ok");
}
