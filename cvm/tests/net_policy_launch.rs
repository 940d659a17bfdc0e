//! `cvm launch` with a `[network_policy]`, under the real /dev/kvm, in a fresh network
//! namespace (the test thread unshares one; `cvm`, `nft` and `ip` inherit it, so the
//! host's network is untouched): the policy is installed before the guest runs, denied
//! frames are counted and visible on `/v1/metrics` and in the log, SIGTERM removes the
//! table, a SIGKILLed `cvm` leaves a stale table that `cvm net gc` removes and the next
//! start replaces, and a policy that cannot be installed refuses the launch.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

/// Spins forever (`jmp $`).
const SPIN: &[u8] = &[0xeb, 0xfe];

fn requirements() -> bool {
    test_kit::require_kvm()
        && test_kit::require_root()
        && test_kit::require_tool("nft")
        && test_kit::require_tool("ip")
        && test_kit::require_file("/dev/net/tun")
}

fn in_netns(f: impl FnOnce() + Send + 'static) {
    let r = std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread to a new namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        f();
    })
    .join();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
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

/// The guest side of an existing (persistent) tap.
fn attach(name: &str) -> OwnedFd {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq, which `ifr` is.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x400454ca, ifr.as_mut_ptr()) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    f.into()
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: writes `frame.len()` bytes from a valid buffer to our descriptor.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(n, frame.len() as isize);
}

/// A minimal Ethernet + IPv4 frame (protocol 17, no payload checks needed: the
/// policy drops it at the tap before any stack parses it).
fn frame(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 8, 0, 0]);
    f
}

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0e];

fn description(dir: &Path, tap: &str) -> std::path::PathBuf {
    let fw = dir.join("spin.fd");
    std::fs::write(&fw, measured_boot::testing::emulated_guest_image(SPIN)).unwrap();
    let p = dir.join("vm.toml");
    std::fs::write(
        &p,
        format!(
            r#"version = 1
tee = "none"
firmware = "spin.fd"
memory = "32M"
[devices]
serial = "none"
api_socket = "api.sock"
[network_policy]
name = "e2e"
[[network_policy.interfaces]]
tap = "{tap}"
mac = "02:00:00:00:00:0e"
addresses = ["10.0.3.2"]
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
        let config = description(dir.path(), "cvmte");
        let sock = dir.path().join("api.sock");

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
            list.contains("e2e\trunning") && list.contains(&table),
            "{list}"
        );
        let tap = attach("cvmte");
        send(&tap, &frame(MAC, [10, 0, 3, 99], [10, 0, 3, 1], 53)); // spoofed source
        send(&tap, &frame(MAC, [10, 0, 3, 2], [10, 0, 3, 1], 22)); // a port not allowed
        send(&tap, &frame(MAC, [10, 0, 3, 2], [10, 0, 3, 1], 53)); // allowed
        wait_until("the API socket", Duration::from_secs(20), || sock.exists());
        let mut metrics = String::new();
        wait_until("the counts on /v1/metrics", Duration::from_secs(20), || {
            metrics = call(&sock, "/v1/metrics");
            metrics.contains("\"spoofed\":1") && metrics.contains("\"egress_denied\":1")
        });
        assert!(
            metrics.contains(&format!("\"table\":\"{table}\""))
                && metrics.contains("\"ingress_denied\":0"),
            "{metrics}"
        );
        // A second VM of the same name is refused while this one runs, and leaves the
        // running VM's table alone.
        let out = Command::new(CVM)
            .args(["launch", "--config"])
            .arg(&config)
            .arg("--api-socket")
            .arg(dir.path().join("other.sock"))
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
        drop(tap);

        // 4. Fail closed: without its tap the VM does not start.
        run("ip", &["link", "del", "cvmte"]);
        let out = Command::new(CVM)
            .args(["launch", "--config"])
            .arg(&config)
            .env("CVM_NET_STATE_DIR", &state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("tap `cvmte` does not exist"), "{err}");
        assert!(cvm_tables().is_empty());
    });
}
