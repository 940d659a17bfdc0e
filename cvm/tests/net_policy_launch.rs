//! `cvm launch` of a VM with a virtio-net interface (`[[net]]`) and a `[network_policy]`,
//! under the real /dev/kvm, in a fresh network namespace (the test thread unshares one;
//! `cvm`, `nft` and `ip` inherit it, so the host's network is untouched): the policy is
//! installed before the guest runs, what the host sends the guest against the policy is
//! dropped, counted and visible on `/v1/metrics` and in the log, a second VM of the same
//! name is refused, SIGTERM removes the table, a SIGKILLed `cvm` leaves a stale table that
//! the next start replaces and `cvm net gc` removes, and a policy that nftables refuses
//! refuses the launch. (Frames from the guest side are in the unit tests of
//! `cvm/src/net_policy/netns_tests.rs` and the nested tier's 50-net-policy.)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../src/net_policy/netns_support.rs"]
mod netns_support;
use netns_support::in_netns;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

/// Spins forever (`jmp $`).
const SPIN: &[u8] = &[0xeb, 0xfe];

/// Reports a guest panic to the pvpanic port (real mode: `mov dx, 0x505; mov al, 1;
/// out dx, al`), then halts.
const PANIC: &[u8] = &[0xba, 0x05, 0x05, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd];

fn requirements() -> bool {
    test_kit::require_kvm()
        && test_kit::require_root()
        && test_kit::require_tool("nft")
        && test_kit::require_tool("ip")
        && test_kit::require_file("/dev/net/tun")
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn cvm_tables() -> Vec<String> {
    run("nft", &["list", "tables", "netdev"])
        .lines()
        .filter_map(|l| l.strip_prefix("table netdev "))
        .filter(|t| t.starts_with("cvm_"))
        .map(str::to_owned)
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `child` to exit, at most `limit`; kills it past that.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("cvm did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn call(sock: &Path, path: &str) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: cvm\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn description(dir: &Path, tap: &str, file: &str) -> std::path::PathBuf {
    description_with(dir, tap, file, SPIN)
}

fn description_with(dir: &Path, tap: &str, file: &str, code: &[u8]) -> std::path::PathBuf {
    let fw = dir.join("spin.fd");
    std::fs::write(&fw, measured_boot::testing::emulated_guest_image(code)).unwrap();
    let p = dir.join(file);
    std::fs::write(
        &p,
        format!(
            r#"version = 1
tee = "none"
firmware = "spin.fd"
memory = "32M"
[devices]
serial = "none"
api_socket = "{file}.sock"
[[net]]
tap = "{tap}"
mac = "02:00:00:00:00:0e"
ip = "10.0.3.2/24"
[network_policy]
name = "e2e"
[[network_policy.interfaces]]
tap = "{tap}"
mac = "02:00:00:00:00:0e"
addresses = ["10.0.3.2", "fd00:3::2"]
egress = [{{ cidr = "10.0.3.1", proto = "udp", ports = [53] }}]
"#
        ),
    )
    .unwrap();
    p
}

/// A `cvm` that is killed if the test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn launch(config: &Path, state: &Path, log: &Path) -> Running {
    Running(
        Command::new(CVM)
            .args(["launch", "--config"])
            .arg(config)
            .env("CVM_NET_STATE_DIR", state)
            .env("CVM_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_launched_vm_gets_its_policy_counts_denials_and_loses_the_policy_when_it_stops() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("net");
        let log = dir.path().join("cvm.log");
        run("ip", &["tuntap", "add", "cvmte", "mode", "tap"]);
        run("ip", &["link", "set", "cvmte", "up"]);
        let config = description(dir.path(), "cvmte", "vm.toml");
        let sock = dir.path().join("vm.toml.sock");

        // 1. Installed before the guest runs; denials counted and shown.
        let mut cvm = launch(&config, &state, &log);
        wait_until("the policy's table", Duration::from_secs(20), || {
            cvm_tables().len() == 1
        });
        let table = cvm_tables().remove(0);
        assert!(table.starts_with("cvm_e2e_cvmte_"), "{table}");
        let list = run(
            CVM,
            &["net", "list", "--state-dir", state.to_str().unwrap()],
        );
        assert!(
            list.contains("e2e\trunning")
                && list.contains(&table)
                && list.contains("10.0.3.2,fe80::ff:fe00:e,fd00:3::2"),
            "{list}"
        );
        // The host sends to the guest: a port no rule allows, and an address that is not
        // the guest's (both dropped and counted); a datagram from the allowed peer's port
        // 53 is a reply and passes.
        run("ip", &["addr", "add", "10.0.3.1/24", "dev", "cvmte"]);
        run(
            "ip",
            &[
                "neigh",
                "replace",
                "10.0.3.2",
                "lladdr",
                "02:00:00:00:00:0e",
                "dev",
                "cvmte",
            ],
        );
        run(
            "ip",
            &[
                "neigh",
                "replace",
                "10.0.3.5",
                "lladdr",
                "02:00:00:00:00:0e",
                "dev",
                "cvmte",
            ],
        );
        let other = std::net::UdpSocket::bind(("10.0.3.1", 5000)).unwrap();
        other.send_to(b"x", ("10.0.3.2", 22)).unwrap();
        other.send_to(b"x", ("10.0.3.5", 40000)).unwrap();
        let peer = std::net::UdpSocket::bind(("10.0.3.1", 53)).unwrap();
        peer.send_to(b"x", ("10.0.3.2", 40000)).unwrap();
        // IPv6 on the host's side of this tap only; a datagram to a port no rule allows
        // is dropped and counted as IPv6.
        netns_support::enable_ipv6("cvmte");
        run(
            "ip",
            &["-6", "addr", "add", "fd00:3::1/64", "dev", "cvmte", "nodad"],
        );
        run(
            "ip",
            &[
                "-6",
                "neigh",
                "replace",
                "fd00:3::2",
                "lladdr",
                "02:00:00:00:00:0e",
                "dev",
                "cvmte",
            ],
        );
        let other6 = std::net::UdpSocket::bind(("fd00:3::1", 5000)).unwrap();
        other6.send_to(b"x", ("fd00:3::2", 22)).unwrap();
        wait_until("the API socket", Duration::from_secs(20), || sock.exists());
        let mut metrics = String::new();
        wait_until("the counts on /v1/metrics", Duration::from_secs(20), || {
            metrics = call(&sock, "/v1/metrics");
            metrics.contains("\"ingress_denied\":2")
                && metrics.contains("\"ingress_denied_ipv6\":1")
        });
        assert!(
            metrics.contains("\"spoofed_ipv6\":0") && metrics.contains("\"egress_denied_ipv6\":0"),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("\"table\":\"{table}\""))
                && metrics.contains("\"spoofed\":0"),
            "{metrics}"
        );
        // A second VM of the same name is refused while this one runs, and leaves the
        // running VM's table alone.
        run("ip", &["tuntap", "add", "cvmtf", "mode", "tap"]);
        let second = description(dir.path(), "cvmtf", "second.toml");
        let out = Command::new(CVM)
            .args(["launch", "--config"])
            .arg(&second)
            .env("CVM_NET_STATE_DIR", &state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("already running"), "{err}");
        assert_eq!(cvm_tables(), vec![table.clone()]);
        // 2. SIGTERM: forwarded to the VM; the policy is removed.
        // SAFETY: kill with integers; `cvm` is our child.
        unsafe { libc::kill(cvm.0.id() as i32, libc::SIGTERM) };
        let status = wait_exit(&mut cvm.0, Duration::from_secs(20));
        assert!(!status.success(), "{status}");
        assert!(cvm_tables().is_empty(), "{:?}", cvm_tables());
        assert!(!state.join("e2e.json").exists());
        let text = std::fs::read_to_string(&log).unwrap();
        for event in [
            "net-policy-installed",
            "net-policy-denied",
            "net-policy-signal",
            "net-policy-removed",
        ] {
            assert!(text.contains(event), "no {event} in\n{text}");
        }

        // 3. SIGKILL: the VM dies with cvm, the (still denying) table stays, `cvm net
        // gc` removes it; and a new start would have replaced it.
        let mut cvm = launch(&config, &state, &log);
        wait_until("the policy's table", Duration::from_secs(20), || {
            cvm_tables().len() == 1
        });
        cvm.0.kill().unwrap();
        cvm.0.wait().unwrap();
        // The VM's process dies with it (PR_SET_PDEATHSIG), releasing the tap.
        wait_until(
            "the killed VM to release its tap",
            Duration::from_secs(20),
            || run("ip", &["-o", "link", "show", "cvmte"]).contains("NO-CARRIER"),
        );
        assert_eq!(
            cvm_tables(),
            vec![table.clone()],
            "a killed cvm leaves its table"
        );
        let mut cvm = launch(&config, &state, &log);
        wait_until("the replaced table", Duration::from_secs(20), || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("net-policy-stale")
        });
        assert_eq!(cvm_tables(), vec![table.clone()]);
        cvm.0.kill().unwrap();
        cvm.0.wait().unwrap();
        let gc = run(CVM, &["net", "gc", "--state-dir", state.to_str().unwrap()]);
        assert!(gc.contains(&table), "{gc}");
        assert!(cvm_tables().is_empty());
        assert!(!state.join("e2e.json").exists());

        // 4. Fail closed: if nftables refuses the policy, the VM does not start.
        let out = Command::new(CVM)
            .args(["launch", "--config"])
            .arg(&config)
            .env("CVM_NET_STATE_DIR", &state)
            .env("CVM_NFT", "/bin/false")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("cannot install the network policy"), "{err}");
        assert!(cvm_tables().is_empty());
        assert!(!state.join("e2e.json").exists());
    });
}

#[test]
fn a_guest_that_crashes_loses_its_policy_too() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("net");
        let log = dir.path().join("cvm.log");
        run("ip", &["tuntap", "add", "cvmtp", "mode", "tap"]);
        let config = description_with(dir.path(), "cvmtp", "vm.toml", PANIC);
        let mut cvm = launch(&config, &state, &log);
        let status = wait_exit(&mut cvm.0, Duration::from_secs(30));
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(1), "{text}");
        assert!(
            text.contains("pvpanic") && text.contains("net-policy-installed"),
            "{text}"
        );
        assert!(text.contains("net-policy-removed"), "{text}");
        assert!(cvm_tables().is_empty(), "{:?}", cvm_tables());
        assert!(!state.join("e2e.json").exists());
    });
}
