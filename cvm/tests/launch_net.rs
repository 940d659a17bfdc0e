//! virtio-net end to end: the bare-metal test guest (`cvm.net_test=`) on a tap in a
//! fresh network namespace resolves the host by ARP, sends a UDP datagram the host
//! receives on the tap's address, answers the host's ARP request and echoes the
//! datagram the host sends. Runs with the seccomp filters on, under `--tee none` and
//! the emulated TEEs (whose rings and buffers sit in the guest's shared DMA pool under
//! TDX). Needs root (network namespaces, /dev/net/tun), `ip` and KVM; skips visibly
//! otherwise (and fails under CI).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");
const GUEST_IP: &str = "10.77.0.2";
const HOST_IP: &str = "10.77.0.1";
const PORT: u16 = 7777;
const GUEST_MAC: &str = "02:cf:00:00:00:02";

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("cvm-net-{}-{tag}", std::process::id());
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(o.status.success(), "ip netns add: {o:?}");
        Self(name)
    }

    fn ip(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ip_ok(&self, args: &[&str]) {
        let o = self.ip(args);
        assert!(o.status.success(), "ip {args:?}: {o:?}");
    }

    /// A UDP socket bound to `addr` inside the namespace (made on a thread that
    /// entered it; the socket stays in the namespace).
    fn udp(&self, addr: SocketAddr) -> UdpSocket {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a namespace file we opened; it changes only this
            // thread's network namespace, and the thread ends after binding.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            UdpSocket::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .output();
    }
}

fn requirements() -> bool {
    test_kit::require_kvm()
        && test_kit::require_root()
        && test_kit::require_tool("ip")
        && test_kit::require_file("/dev/net/tun")
        && test_kit::require(
            guest_images::testguest_image().len() > 1,
            "this cvm was built without the test guest",
        )
}

/// Boots the test guest under `tee` on a persistent tap `cvmt0` (and a second,
/// cvm-created `cvmc1`), plays the host's side, and returns cvm's output and the
/// serial log.
fn exchange(tee: &str, extra: &[&str], cmdline_extra: &str, jailed: bool) -> (Output, String) {
    let ns = Netns::new(tee);
    ns.ip_ok(&["tuntap", "add", "cvmt0", "mode", "tap"]);
    ns.ip_ok(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "cvmt0"]);
    ns.ip_ok(&["link", "set", "cvmt0", "up"]);
    let sock = ns.udp(format!("{HOST_IP}:{PORT}").parse().unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(180)))
        .unwrap();
    let host = std::thread::spawn(move || -> Result<String, String> {
        let mut buf = [0u8; 2048];
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no hello: {e}"))?;
        let hello = String::from_utf8_lossy(&buf[..n]).into_owned();
        if hello != "cvm-testguest hello" || from.to_string() != format!("{GUEST_IP}:{PORT}") {
            return Err(format!("unexpected hello {hello:?} from {from}"));
        }
        // The kernel resolves the guest's MAC by ARP before this leaves.
        sock.send_to(b"nonce-4242", from)
            .map_err(|e| e.to_string())?;
        let (n, _) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no echo: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("testguest.bzImage");
    std::fs::write(&kernel, guest_images::testguest_image()).unwrap();
    // Jailed: an unprivileged VMM in an empty network namespace, its serial log inside
    // the jail; the taps were opened before it entered.
    let jail = dir.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    chown(&jail, 65534, 65534);
    let (serial, serial_arg) = if jailed {
        (jail.join("serial.log"), "file:/serial.log".to_string())
    } else {
        let p = dir.path().join("serial.log");
        let a = format!("file:{}", p.display());
        (p, a)
    };
    let jail_args = [
        "--jail",
        jail.to_str().unwrap(),
        "--uid",
        "65534",
        "--gid",
        "65534",
    ];
    let cmdline = format!("console=ttyS0 cvm.net_test={GUEST_IP},{HOST_IP},{PORT}{cmdline_extra}");
    let net = format!("tap=cvmt0,mac={GUEST_MAC},ip={GUEST_IP}/24");
    let mut args = vec![
        "netns",
        "exec",
        &ns.0,
        CVM,
        "launch",
        "--tee",
        tee,
        "--memory",
        "256M",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--serial",
        &serial_arg,
        "--net",
        &net,
        "--net",
        "create=cvmc1,tx-bps=100M",
        // No [network_policy] here: this test checks the device, not the filter.
        "--net-unfiltered",
    ];
    args.extend_from_slice(extra);
    if jailed {
        args.extend_from_slice(&jail_args);
    }
    let out = test_kit::run_with_deadline(
        Command::new("ip").args(&args).env("RUST_LOG", "info"),
        Duration::from_secs(300),
    );
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let echo = host.join().unwrap();
    assert_eq!(
        echo.as_deref(),
        Ok("echo: nonce-4242"),
        "the host's side of the exchange\nserial:\n{log}\nstderr:\n{stderr}"
    );
    // The tap cvm created is gone with the VMM; the persistent one stays.
    assert!(
        !ns.ip(&["link", "show", "cvmc1"]).status.success(),
        "cvmc1 outlived the VMM"
    );
    assert!(ns.ip(&["link", "show", "cvmt0"]).status.success());
    (out, log)
}

fn chown(p: &Path, uid: u32, gid: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0);
}

fn check(out: &Output, log: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cvm failed\nserial:\n{log}\nstderr:\n{stderr}"
    );
    assert!(
        log.contains("virtio-net 02:cf:00:00:00:02"),
        "the guest read the MAC from the device: {log}"
    );
    assert!(log.contains("(net test) host sent: nonce-4242"), "{log}");
    assert!(
        stderr.contains("virtio-net"),
        "the device was logged: {stderr}"
    );
    assert!(
        stderr.contains("cvmc1") && stderr.contains("owned=true"),
        "{stderr}"
    );
    // The counters logged at stop: the guest sent ARP, hello, echo (and ARP replies).
    let stats = stderr
        .lines()
        .find(|l| l.contains("net-stats") && l.contains("cvmt0"))
        .unwrap_or_else(|| panic!("no counters for cvmt0: {stderr}"));
    assert!(stats.contains("tx_malformed=0"), "{stats}");
    assert!(
        !stats.contains("tx_frames=0 ") && !stats.contains("rx_frames=0 "),
        "{stats}"
    );
}

#[test]
fn the_test_guest_exchanges_frames_with_the_host_over_a_tap() {
    if !requirements() {
        return;
    }
    let (out, log) = exchange("none", &[], "", false);
    check(&out, &log);
}

#[test]
fn a_jailed_seccomp_confined_vmm_keeps_its_network() {
    if !requirements() {
        return;
    }
    let (out, log) = exchange("none", &[], "", true);
    check(&out, &log);
    assert!(String::from_utf8_lossy(&out.stderr).contains("entering the jail"));
}

#[test]
fn the_exchange_works_under_emulated_snp() {
    if !requirements() {
        return;
    }
    let platform = common::emulated_platform();
    let (out, log) = exchange(
        "emulated-snp",
        &["--emulated-platform", &platform],
        " cvm.tee_trap=port",
        false,
    );
    check(&out, &log);
}

#[test]
fn the_exchange_works_under_emulated_tdx_through_the_shared_pool() {
    if !requirements() {
        return;
    }
    let platform = common::emulated_platform();
    let (out, log) = exchange(
        "emulated-tdx",
        &["--emulated-platform", &platform],
        " cvm.tee_trap=port",
        false,
    );
    check(&out, &log);
}

#[test]
fn a_missing_tap_and_a_taken_name_are_usage_errors() {
    if !requirements() {
        return;
    }
    let ns = Netns::new("refuse");
    ns.ip_ok(&["tuntap", "add", "cvmtun0", "mode", "tun"]);
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("k");
    std::fs::write(&kernel, guest_images::testguest_image()).unwrap();
    for (net, want) in [
        ("tap=cvmnotap0", "does not exist"),
        ("tap=cvmtun0", "not a persistent tap"),
        ("tap=lo", "not a persistent tap"),
        ("create=lo", "already exists"),
        ("create=cvmtun0", "already exists"),
    ] {
        let out = test_kit::run_with_deadline(
            Command::new("ip").args([
                "netns",
                "exec",
                &ns.0,
                CVM,
                "launch",
                "--tee",
                "none",
                "--kernel",
                kernel.to_str().unwrap(),
                "--net",
                net,
                "--net-unfiltered",
            ]),
            Duration::from_secs(60),
        );
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{net}: {e}");
        assert!(e.contains(want), "{net}: {e}");
    }
}
