//! `cvm image initramfs`: the archive's files, symlinks and `/init`, the dm_crypt module
//! closure against the installed kernel's modules.dep (and the same closure from
//! `.modinfo` for a tree without modules.dep), cryptsetup's libraries and loader (checked
//! against `ldd`, and by running it in a chroot of the extracted archive when root), the
//! printed measurements against `cvm measure`, reproducibility and the refusals.
//!
//! Needs `cpio` (Debian `cpio`), busybox-static, cryptsetup-bin, an installed
//! `linux-image-cloud-amd64` (`scripts/setup`) and `target/debug/cvm-agent` (`cargo build
//! --workspace`, or `cargo build -p guest-agent --bin cvm-agent`). Without the kernel's
//! modules the tests are skipped loudly, unless `CI` is set, where they fail. No network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

fn cvm(args: &[&str]) -> Output {
    Command::new(CVM).args(args).output().expect("run cvm")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `target/debug/cvm-agent`, beside the `cvm` under test.
fn agent() -> PathBuf {
    let a = Path::new(CVM).with_file_name("cvm-agent");
    assert!(
        a.is_file(),
        "{} is missing: build it first with `cargo build -p guest-agent --bin cvm-agent` \
         (or `cargo build --workspace`)",
        a.display()
    );
    a
}

/// The installed kernel release with modules (`linux-image-cloud-amd64`), or a loud skip.
fn kernel_release() -> Option<String> {
    let found = std::fs::read_dir("/lib/modules").ok().and_then(|rd| {
        let mut v: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().join("modules.dep").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v.pop()
    });
    test_kit::require(
        found.is_some(),
        "no /lib/modules/*/modules.dep (apt-get install -y linux-image-cloud-amd64, or scripts/setup)",
    );
    found
}

/// `cpio -itv`: path → `ls -l`-style line (paths without a leading `./`).
fn list(archive: &Path) -> BTreeMap<String, String> {
    let f = std::fs::File::open(archive).unwrap();
    let o = Command::new("cpio")
        .args(["-itv", "--quiet"])
        .stdin(f)
        .output()
        .expect("run cpio (apt-get install cpio)");
    assert!(o.status.success(), "cpio -itv: {}", text(&o));
    let mut m = BTreeMap::new();
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        // "mode links owner group size month day year name [-> target]"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name_at = if line.starts_with('c') { 9 } else { 8 };
        let name = fields[name_at].trim_start_matches("./").to_owned();
        m.insert(name, line.to_owned());
    }
    m
}

/// The file's bytes inside the archive (`cpio -i --to-stdout`).
fn extract_one(archive: &Path, name: &str) -> Vec<u8> {
    let f = std::fs::File::open(archive).unwrap();
    let o = Command::new("cpio")
        .args(["-i", "--quiet", "--to-stdout", name])
        .stdin(f)
        .output()
        .expect("run cpio");
    assert!(o.status.success(), "cpio -i {name}: {}", text(&o));
    o.stdout
}

/// The dependency closure of `module` per modules.dep (paths relative to the tree).
fn closure(dep: &BTreeMap<String, Vec<String>>, module: &str) -> Vec<String> {
    let key = dep
        .keys()
        .find(|k| {
            let f = k.rsplit('/').next().unwrap();
            f.split(".ko").next().unwrap().replace('-', "_") == module
        })
        .unwrap_or_else(|| panic!("{module} not in modules.dep"))
        .clone();
    let mut out = vec![key.clone()];
    let mut i = 0;
    while i < out.len() {
        for d in &dep[&out[i]] {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        i += 1;
    }
    out
}

fn modules_dep(release: &str) -> BTreeMap<String, Vec<String>> {
    std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_owned(),
                d.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

fn build(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, Output) {
    let out = dir.join(name);
    let agent = agent();
    let mut args = vec!["image", "initramfs", "--out", p(&out), "--agent", p(&agent)];
    args.extend_from_slice(extra);
    let o = cvm(&args);
    (out, o)
}

#[test]
fn contents_modules_libraries_and_init() {
    let Some(rel) = kernel_release() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (img, o) = build(
        dir.path(),
        "initrd.img",
        &[
            "--kernel-version",
            &rel,
            "--resource",
            "default/luks-key/root",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("cvm measure snp --vcpus"), "{stdout}");
    assert!(stdout.contains("cvm measure tdx --kernel"), "{stdout}");
    assert!(stdout.contains("cvm measure --config FILE"), "{stdout}");
    let files = list(&img);

    // Programs, applets, device node, directories.
    for f in ["init", "bin/cvm-agent", "bin/busybox", "sbin/cryptsetup"] {
        assert!(files[f].starts_with("-rwxr-xr-x"), "{f}: {}", files[f]);
    }
    for app in [
        "sh",
        "mount",
        "insmod",
        "switch_root",
        "poweroff",
        "usleep",
        "mkdir",
    ] {
        let l = &files[&format!("bin/{app}")];
        assert!(
            l.starts_with('l') && l.ends_with("-> busybox"),
            "{app}: {l}"
        );
    }
    assert!(files["dev/console"].starts_with("crw-------"));
    assert!(files["dev/console"].contains("5,   1") || files["dev/console"].contains("5, 1"));
    for d in ["proc", "sys", "dev", "run/cryptsetup", "newroot"] {
        assert!(files[d].starts_with('d'), "{d}");
    }
    // Busybox is the one from the host, byte for byte.
    assert_eq!(
        extract_one(&img, "bin/busybox"),
        std::fs::read("/bin/busybox").unwrap()
    );

    // cryptsetup's libraries (as ldd resolves them) and the dynamic loader.
    let ldd = Command::new("ldd")
        .arg("/usr/sbin/cryptsetup")
        .output()
        .unwrap();
    let ldd = String::from_utf8(ldd.stdout).unwrap();
    let mut libs = 0;
    for line in ldd.lines() {
        let line = line.trim();
        if line.starts_with("linux-vdso") {
            continue;
        }
        if let Some((soname, _)) = line.split_once(" => ") {
            assert!(
                files.keys().any(|k| k.ends_with(&format!("/{soname}"))),
                "{soname} (ldd) missing from the archive"
            );
            libs += 1;
        } else if line.starts_with('/') {
            let loader = line.split_whitespace().next().unwrap();
            let in_archive = loader.trim_start_matches('/');
            assert!(files.contains_key(in_archive), "loader {loader} missing");
        }
    }
    assert!(libs >= 5, "ldd found only {libs} libraries:\n{ldd}");
    assert!(files.keys().any(|k| k.ends_with("/libcryptsetup.so.12")));

    // Modules: the dm_crypt, vsock and virtio_mmio closures are all there, and /init
    // loads every dependency before the module that needs it.
    let dep = modules_dep(&rel);
    let init = String::from_utf8(extract_one(&img, "init")).unwrap();
    let line_of = |m: &str| {
        let needle = format!("load '/lib/modules/{rel}/{m}' ");
        init.find(&needle)
            .unwrap_or_else(|| panic!("/init does not load {m}:\n{init}"))
    };
    for top in [
        "dm_crypt",
        "dm_mod",
        "xts",
        "virtio_mmio",
        "virtio_blk",
        "vmw_vsock_virtio_transport",
        "vmw_vsock_virtio_transport_common",
        "vsock",
    ] {
        let c = closure(&dep, top);
        for m in &c {
            assert!(
                files.contains_key(&format!("lib/modules/{rel}/{m}")),
                "{m} (needed by {top}) missing"
            );
        }
        for d in &dep[&c[0]] {
            assert!(line_of(d) < line_of(&c[0]), "{d} must load before {}", c[0]);
        }
    }
    assert!(
        closure(&dep, "dm_crypt")
            .iter()
            .any(|m| m.ends_with("dm-mod.ko")),
        "modules.dep: dm_crypt depends on dm_mod"
    );

    // /init: mounts, the relay, the resource, switch_root, power off on failure, no shell.
    for needle in [
        "#!/bin/sh",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "cvm-agent '--kbs' 'vsock:2:50000' '--resource' 'default/luks-key/root' '--device' '/dev/vda' '--mount' '/newroot' || fatal",
        "exec switch_root /newroot '/sbin/init'",
        "poweroff -f",
        "echo o >/proc/sysrq-trigger",
    ] {
        assert!(init.contains(needle), "/init lacks {needle:?}:\n{init}");
    }
    assert!(!init.contains("exec sh") && !init.contains("/bin/sh -i") && !init.contains("setsid"));
    // Every command that can fail before switch_root is followed by a fatal path.
    assert!(init.lines().filter(|l| l.contains("|| fatal")).count() >= 4);

    // The archive is reproducible.
    let (again, o) = build(
        dir.path(),
        "again.img",
        &[
            "--kernel-version",
            &rel,
            "--resource",
            "default/luks-key/root",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(&img).unwrap() == std::fs::read(&again).unwrap());

    // Run the extracted programs where they will run: in the archive's root.
    // The chroot checks need root.
    test_kit::require!(root);
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let o = Command::new("cpio")
        .args(["-id", "--quiet"])
        .current_dir(&root)
        .stdin(std::fs::File::open(&img).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "cpio -id: {}", text(&o));
    for cmd in [
        vec!["/sbin/cryptsetup", "--version"],
        vec!["/bin/sh", "-n", "/init"],
        vec!["/bin/cvm-agent", "--version"],
    ] {
        let o = Command::new("chroot")
            .arg(&root)
            .args(&cmd)
            .output()
            .unwrap();
        assert!(o.status.success(), "chroot {cmd:?}: {}", text(&o));
    }
}

/// A tree without modules.dep (like `dpkg-deb -x` of the kernel package) gives the same
/// modules, from each module's `.modinfo` `depends=`.
#[test]
fn modules_from_a_tree_without_modules_dep() {
    let Some(rel) = kernel_release() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("deb/lib/modules").join(&rel);
    std::fs::create_dir_all(&tree).unwrap();
    std::os::unix::fs::symlink(format!("/lib/modules/{rel}/kernel"), tree.join("kernel")).unwrap();
    std::fs::copy(
        format!("/lib/modules/{rel}/modules.builtin"),
        tree.join("modules.builtin"),
    )
    .unwrap();
    let (a, o) = build(dir.path(), "a.img", &["--kernel-version", &rel]);
    assert!(o.status.success(), "{}", text(&o));
    let deb = dir.path().join("deb");
    let (b, o) = build(dir.path(), "b.img", &["--modules-from", p(&deb)]);
    assert!(o.status.success(), "{}", text(&o));
    let mods = |img: &Path| -> Vec<String> {
        list(img)
            .into_keys()
            .filter(|k| k.ends_with(".ko"))
            .collect()
    };
    assert_eq!(mods(&a), mods(&b));
    assert_eq!(
        extract_one(&a, "init"),
        extract_one(&b, "init"),
        "same modules in the same order"
    );
}

/// A syntactically valid pin (87 base64url characters; `cvm-agent` checks the point).
const PIN: &str =
    "BPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPINPI";

#[test]
fn verifier_ca_and_measurements() {
    let Some(rel) = kernel_release() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    // A stand-in kernel: the measurement only hashes it.
    let kernel = dir.path().join("bzImage");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    let cmdline = "console=ttyS0 cvm.kbs_resource=default/luks-key/root";
    let fw = dir.path().join("fw.fd");
    let have_fw = cvm(&["firmware", "--out", p(&fw)]).status.success();
    let mut args = vec![
        "--kernel-version",
        &rel,
        "--verifier",
        "https://verifier.example:8443",
        "--verifier-ca",
        p(&ca),
        "--verifier-key",
        PIN,
    ];
    if have_fw {
        args.extend(["--kernel", p(&kernel), "--cmdline", cmdline]);
    } else {
        test_kit::skip("the measurement checks: this cvm has no embedded firmware");
    }
    let (img, o) = build(dir.path(), "initrd.img", &args);
    assert!(o.status.success(), "{}", text(&o));
    let files = list(&img);
    assert!(files.contains_key("etc/cvm/verifier-ca.pem"));
    assert_eq!(
        extract_one(&img, "etc/cvm/verifier-ca.pem"),
        std::fs::read(&ca).unwrap()
    );
    let init = String::from_utf8(extract_one(&img, "init")).unwrap();
    assert!(
        init.contains(
            "cvm-agent '--kbs' 'https://verifier.example:8443' '--kbs-ca' '/etc/cvm/verifier-ca.pem' '--verifier-key' 'BPINPINPIN"
        ),
        "{init}"
    );
    // The pin is baked into /init, so no warning about a missing pin.
    assert!(!text(&o).contains("no --verifier-key"), "{}", text(&o));
    if have_fw {
        let stdout = String::from_utf8(o.stdout).unwrap();
        let snp = cvm(&[
            "measure",
            "snp",
            "--ovmf",
            p(&fw),
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-v4",
            "--kernel",
            p(&kernel),
            "--initrd",
            p(&img),
            "--append",
            cmdline,
        ]);
        assert!(snp.status.success(), "{}", text(&snp));
        let digest = String::from_utf8(snp.stdout).unwrap();
        assert!(
            stdout.contains(&format!(
                "snp measurement (1 vCPU, EPYC-v4): {}",
                digest.trim()
            )),
            "{stdout}\nvs cvm measure snp: {digest}"
        );
        let tdx = cvm(&[
            "measure",
            "tdx",
            "--firmware",
            p(&fw),
            "--kernel",
            p(&kernel),
            "--initrd",
            p(&img),
            "--append",
            cmdline,
            "--output-format",
            "json",
        ]);
        assert!(tdx.status.success(), "{}", text(&tdx));
        let j: serde_json::Value = serde_json::from_slice(&tdx.stdout).unwrap();
        assert!(stdout.contains(&format!("tdx mrtd: {}", j["mrtd"].as_str().unwrap())));
        for i in 0..4 {
            let r = j["rtmrs"][i].as_str().unwrap();
            assert!(stdout.contains(&format!("tdx rtmr{i}: {r}")), "{stdout}");
        }
    }
}

#[test]
fn refusals() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let o = cvm(&[
        "image",
        "initramfs",
        "--out",
        p(&out),
        "--agent",
        "/nonexistent/cvm-agent",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no cvm-agent at /nonexistent/cvm-agent") && err.contains("cargo build"),
        "{err}"
    );
    let agent = agent();
    // Right length, but a quote that would break /init's quoting.
    let bad_pin = format!("'{}", &PIN[1..]);
    for (args, msg) in [
        (
            vec!["--verifier", "https://v.example:8443"],
            "needs --ca-cert",
        ),
        (vec!["--verifier", "http://v.example:80"], "http://IP:PORT"),
        (vec!["--verifier", "ftp://x"], "use https://HOST:PORT"),
        (vec!["--resource", "just-a-name"], "repo/type/tag"),
        (vec!["--verifier-key", "short"], "87-character base64url"),
        (vec!["--verifier-key", &bad_pin], "87-character base64url"),
        (vec!["--device", "vda"], "a /dev path"),
        (
            vec!["--modules-from", "/nonexistent"],
            "no kernel module tree",
        ),
    ] {
        let mut a = vec!["image", "initramfs", "--out", p(&out), "--agent", p(&agent)];
        a.extend(args.iter());
        let o = cvm(&a);
        assert!(!o.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    assert!(!out.exists());
}

/// `/init` on failure: a clear message, then power off — never a shell. Run in a user,
/// PID and mount namespace (`unshare -r -p -f -m`): there `poweroff -f` ends only the
/// namespace (its init dies of SIGINT, the kernel's power-off signal for a PID
/// namespace), and the mounts and `insmod` fail for lack of real privileges, which is
/// the failure this checks. Skipped loudly where user namespaces are unavailable.
#[test]
fn failure_prints_a_message_and_powers_off() {
    let Some(rel) = kernel_release() else {
        return;
    };
    let userns = Command::new("unshare")
        .args(["-r", "-p", "-f", "-m", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    test_kit::require!(
        userns,
        "user namespaces are unavailable (`unshare -r -p -f -m`)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (img, o) = build(dir.path(), "initrd.img", &["--kernel-version", &rel]);
    assert!(o.status.success(), "{}", text(&o));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // Without device nodes: `cpio -id` would need real root for dev/console, and the
    // namespace must not write to the host's console.
    let o = Command::new("cpio")
        .args(["-id", "--quiet", "--nonmatching", "dev/console"])
        .current_dir(&root)
        .stdin(std::fs::File::open(&img).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "cpio -id: {}", text(&o));
    let o = Command::new("timeout")
        .arg("60")
        .args([
            "unshare",
            "-r",
            "-p",
            "-f",
            "-m",
            "--propagation",
            "private",
            "chroot",
        ])
        .arg(&root)
        .arg("/init")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("cvm-init: FATAL: ") && out.contains("cvm-init: powering off"),
        "{}",
        text(&o)
    );
    // SIGINT (or 128 + SIGINT, as a shell reports it): the namespace was powered off
    // (not timed out, not left in a shell).
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        o.status.signal() == Some(2) || o.status.code() == Some(130),
        "{}",
        text(&o)
    );
    assert!(!root.join("newroot/bin").exists());
}
