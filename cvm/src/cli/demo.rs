//! `cvm demo`: the whole system on one machine, with no configuration.
//!
//! It starts a verifier on loopback (embedded SQLite, HTTPS with a generated
//! certificate), bootstraps its admin and trusts a freshly created **emulated** platform
//! (loudly labelled: emulated evidence proves nothing about real hardware), whose
//! collateral it fetches over the AMD KDS / Intel PCS paths from the platform's own
//! collateral server (`cvm emulated collateral-server`, on loopback), as it would from
//! AMD and Intel for hardware; writes the
//! project firmware and the bare-metal test guest; creates a LUKS2 disk holding a known
//! message with a random key; reads the verifier's identity (`cvm-verifier identity`,
//! from its database) and puts it on the guest's command line as
//! `cvm.verifier_key=`, so the guest trusts only this verifier and the pin is part of
//! the measurement; writes one VM description file per TEE (docs/vm-description.md);
//! registers the workload (the measurement `cvm measure --config` computes from that
//! file — for TDX all four RTMRs, so RTMR2 pins the command line — the disk
//! key as its resource); then launches the guest under
//! `--tee emulated-snp` and `--tee emulated-tdx`. Each guest checks its kernel hashes
//! (SNP) or extends its RTMRs (TDX), attests through the VMM's relay, receives the disk
//! key as a JWE only it can open, decrypts the disk and prints the message; the VMM
//! exits 0. Finally it prints the collateral the verifier fetched (for TDX the guest sends
//! only its quote: the TCB info and QE identity come from the collateral server) and the
//! verifier's audit records of the two releases.
//!
//! Every step is the operator's own command (`cvm-verifier admin …`, `cvm measure …`,
//! `cvm launch --config …`) run as a child process, so the demo exercises exactly what an
//! operator runs; the commands are printed as they run.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The message the demo writes into the encrypted disk.
pub const DEMO_MESSAGE: &str = "hello from an attested confidential guest";
/// The resource path of the disk key.
pub const DISK_RESOURCE: &str = "default/disk/demo";

/// `cvm demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for everything the demo writes (default: a new `cvm-demo-<time>`
    /// directory under the current directory). Must be empty or not exist.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The `cvm-verifier` binary (default: next to `cvm`, then `$PATH`).
    #[arg(long, value_name = "PATH")]
    pub verifier_bin: Option<PathBuf>,
    /// Run only these TEEs (repeatable; default both).
    #[arg(long = "tee", value_parser = ["emulated-snp", "emulated-tdx"])]
    pub tees: Vec<String>,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A command exited non-zero.
    #[error("`{cmd}` failed ({status}){detail}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its stderr tail.
        detail: String,
    },
    /// Something else.
    #[error("{0}")]
    Other(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |e| DemoError::Io(what, e)
}

/// Kills the verifier when the demo ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Demo {
    dir: PathBuf,
    cvm: PathBuf,
    verifier: PathBuf,
    step: usize,
    steps: usize,
    started: Instant,
}

impl Demo {
    fn step(&mut self, what: &str) {
        self.step += 1;
        println!(
            "\n==> [{}/{}] {what}  (+{:.1}s)",
            self.step,
            self.steps,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `program args`, echoing the command; returns stdout.
    /// Runs `cvm-verifier <subcommand> --database DB --master-key-file KEY --output json`
    /// on the verifier's own database and parses what it prints.
    fn verifier_json(
        &self,
        subcommand: &[&str],
        db: &str,
        master: &Path,
        what: &str,
    ) -> Result<Value, DemoError> {
        let mut args: Vec<std::ffi::OsString> = subcommand.iter().map(|a| os(a)).collect();
        args.extend([
            os("--database"),
            os(db),
            os("--master-key-file"),
            master.as_os_str().into(),
            os("--output"),
            os("json"),
        ]);
        let out = self.run(&self.verifier, args, &[])?;
        serde_json::from_str(out.trim())
            .map_err(|e| DemoError::Other(format!("cannot read the {what} output: {e}")))
    }

    fn run<I, S>(&self, program: &Path, args: I, envs: &[(&str, &str)]) -> Result<String, DemoError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown = show(program, &args);
        println!("    $ {shown}");
        let out = Command::new(program)
            .args(&args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!("cannot run {}", program.display())))?;
        if !out.status.success() {
            return Err(DemoError::Command {
                cmd: shown,
                status: out.status.to_string(),
                detail: tail(&out.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn show(program: &Path, args: &[std::ffi::OsString]) -> String {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut s = name;
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(12);
    if lines.is_empty() {
        String::new()
    } else {
        format!(":\n{}", lines[start..].join("\n"))
    }
}

/// Finds `cvm-verifier`: next to this executable, then on `$PATH`.
fn find_verifier(explicit: Option<PathBuf>) -> Result<PathBuf, DemoError> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join("cvm-verifier");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("cvm-verifier");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(DemoError::Other(
        "cannot find cvm-verifier next to cvm or on $PATH (build it with `cargo build --release -p verifier`, or pass --verifier-bin)".into(),
    ))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot create {}", path.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("cannot write {}", path.display())))
}

/// Runs the demo.
pub fn run(a: Args) -> ExitCode {
    match demo(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!();
            super::fail(&e, cli_support::EXIT_FAILURE)
        }
    }
}

fn demo(a: Args) -> Result<(), DemoError> {
    let dir = match a.dir {
        Some(d) => d,
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from(format!("cvm-demo-{secs}"))
        }
    };
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map_err(io(format!("cannot read {}", dir.display())))?
            .next()
            .is_some()
    {
        return Err(DemoError::Other(format!(
            "{} is not empty; give a new or empty --dir",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(io(format!("cannot resolve {}", dir.display())))?;
    let tees: Vec<String> = if a.tees.is_empty() {
        vec!["emulated-snp".into(), "emulated-tdx".into()]
    } else {
        a.tees
    };
    let cvm = std::env::current_exe().map_err(io("cannot find the cvm executable"))?;
    let verifier = find_verifier(a.verifier_bin)?;
    let mut d = Demo {
        dir,
        cvm,
        verifier,
        step: 0,
        steps: 11 + tees.len(),
        started: Instant::now(),
    };
    println!("cvm demo: everything goes to {}", d.dir.display());
    println!(
        "!! INSECURE-EMULATED: this demo's TEEs are software emulations. Their evidence is \
         signed by keys on this host and proves nothing about real hardware."
    );

    d.step("Creating the emulated SEV-SNP and TDX platforms (RSA-4096 keys: a few seconds)");
    let platform = d.path("platform");
    d.run(
        &d.cvm,
        [
            os("emulated"),
            os("init"),
            os("--dir"),
            platform.as_os_str().into(),
        ],
        &[],
    )?;

    d.step("Writing the project firmware and the bare-metal test guest");
    let firmware = d.path("firmware.fd");
    d.run(
        &d.cvm,
        [os("firmware"), os("--out"), firmware.as_os_str().into()],
        &[],
    )?;
    let kernel = d.path("testguest.bzImage");
    let guest = guest_images::testguest_image();
    if guest.is_empty() {
        return Err(DemoError::Other(
            "this cvm was built without the test guest (guest-agent/testguest)".into(),
        ));
    }
    std::fs::write(&kernel, guest).map_err(io(format!("cannot write {}", kernel.display())))?;
    println!(
        "    firmware {} ({} bytes)",
        firmware.display(),
        std::fs::metadata(&firmware).map(|m| m.len()).unwrap_or(0)
    );
    println!(
        "    test guest {} ({} bytes)",
        kernel.display(),
        guest.len()
    );

    d.step("Creating a LUKS2 disk with a random key and a known message");
    let disk = d.path("disk.img");
    let key = d.path("disk.key");
    d.run(
        &d.cvm,
        [
            os("image"),
            os("disk"),
            os("--size"),
            os("4M"),
            os("--out"),
            disk.as_os_str().into(),
            os("--key-out"),
            key.as_os_str().into(),
            os("--message"),
            os(DEMO_MESSAGE),
        ],
        &[],
    )?;

    d.step("Starting cvm-verifier on loopback (SQLite, HTTPS with a generated certificate)");
    let tls = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .map_err(|e| DemoError::Other(format!("cannot generate the TLS certificate: {e}")))?;
    let cert = d.path("verifier-cert.pem");
    let tls_key = d.path("verifier-key.pem");
    std::fs::write(&cert, tls.cert.pem()).map_err(io("cannot write the certificate"))?;
    write_private(&tls_key, tls.key_pair.serialize_pem().as_bytes())?;
    let master = d.path("master.key");
    d.run(
        &d.verifier,
        [os("admin"), os("gen-master-key"), master.as_os_str().into()],
        &[],
    )?;
    let database = d.path("verifier.db");
    let db = database.to_string_lossy().into_owned();
    let boot = d.verifier_json(&["admin", "bootstrap"], &db, &master, "bootstrap")?;
    let token = boot["token"]
        .as_str()
        .ok_or_else(|| DemoError::Other("bootstrap printed no token".into()))?
        .to_owned();
    let totp = boot["totp_secret"]
        .as_str()
        .ok_or_else(|| DemoError::Other("bootstrap printed no TOTP secret".into()))?;
    let token_file = d.path("admin.token");
    write_private(&token_file, token.as_bytes())?;
    let totp_file = d.path("admin.totp");
    write_private(&totp_file, totp.as_bytes())?;
    // The emulated platform's collateral, served over the KDS / PCS paths: the verifier
    // fetches it as it would from AMD and Intel (the guests send no TDX collateral).
    let collateral_args = [
        os("emulated"),
        os("collateral-server"),
        os("--dir"),
        platform.as_os_str().into(),
        os("--listen"),
        os("127.0.0.1:0"),
    ];
    println!("    $ {} &", show(&d.cvm, &collateral_args));
    let collateral_log = std::fs::File::create(d.path("collateral-server.log"))
        .map_err(io("cannot create collateral-server.log"))?;
    let mut collateral_child = Command::new(&d.cvm)
        .args(collateral_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(collateral_log)
        .spawn()
        .map_err(io("cannot start the collateral server"))?;
    let collateral_stdout = collateral_child.stdout.take();
    let collateral_guard = ChildGuard(collateral_child);
    let collateral_url = wait_for_url(collateral_stdout, "cvm emulated collateral-server")?;
    println!("    emulated KDS/PCS at {collateral_url} (INSECURE: emulated collateral)");
    let log =
        std::fs::File::create(d.path("verifier.log")).map_err(io("cannot create verifier.log"))?;
    let args = [
        os("serve"),
        os("--listen"),
        os("127.0.0.1:0"),
        os("--database"),
        os(&db),
        os("--master-key-file"),
        master.as_os_str().into(),
        os("--tls-cert"),
        cert.as_os_str().into(),
        os("--tls-key"),
        tls_key.as_os_str().into(),
        os("--emulated-trust"),
        platform.as_os_str().into(),
        os("--amd-kds-url"),
        os(&collateral_url),
        os("--intel-pcs-url"),
        os(&collateral_url),
    ];
    println!("    $ {} &", show(&d.verifier, &args));
    let mut child = Command::new(&d.verifier)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(io("cannot start cvm-verifier"))?;
    let stdout = child.stdout.take();
    let guard = ChildGuard(child);
    let url = wait_for_url(stdout, "cvm-verifier")?;
    println!(
        "    verifier at {url} (log: {})",
        d.path("verifier.log").display()
    );
    let admin_env = [("CVM_VERIFIER_URL", url.as_str())];
    let admin = |d: &Demo, args: &[std::ffi::OsString]| -> Result<String, DemoError> {
        let mut all = vec![
            os("admin"),
            os("--token-file"),
            token_file.as_os_str().into(),
            os("--totp-secret-file"),
            totp_file.as_os_str().into(),
            os("--ca-cert"),
            cert.as_os_str().into(),
        ];
        all.extend_from_slice(args);
        d.run(&d.verifier, all, &admin_env)
    };

    d.step("Storing the disk key as a resource (the verifier seals it under its master key)");
    admin(
        &d,
        &[
            os("resource"),
            os("put"),
            os(DISK_RESOURCE),
            os("--value-file"),
            key.as_os_str().into(),
        ],
    )?;

    d.step("Reading the verifier's identity (the key the guest pins) from its database");
    let identity = d.verifier_json(&["identity"], &db, &master, "identity")?;
    let pin = identity["cmdline"]
        .as_str()
        .filter(|p| p.starts_with("cvm.verifier_key="))
        .ok_or_else(|| DemoError::Other("`cvm-verifier identity` printed no key".into()))?;
    println!("    the guest will trust only this verifier: {pin}");
    // The pin is on the measured command line, so it is part of the measurement
    // registered below: a host that changes it changes the measurement.
    // `cvm.tee_trap=port`: the test guest runs its TEE code at CPL3, where a TD's
    // TDCALL goes through the emulator trap (also measured).
    let cmdline = format!("console=ttyS0 cvm.kbs_resource={DISK_RESOURCE} {pin} cvm.tee_trap=port");
    d.step("Writing one VM description per TEE (what `cvm measure` and `cvm launch` both read)");
    let mut descriptions = Vec::new();
    for tee in &tees {
        let path = d.path(&format!("vm-{}.toml", tee.trim_start_matches("emulated-")));
        let text = description(
            tee, &platform, &firmware, &kernel, &cmdline, &disk, &url, &cert,
        );
        std::fs::write(&path, &text).map_err(io(format!("cannot write {}", path.display())))?;
        println!("    {}:", path.display());
        for line in text.lines() {
            println!("      {line}");
        }
        descriptions.push((tee, path));
    }
    d.step("Computing reference values with `cvm measure --config` and registering the workloads");
    for (tee, path) in &descriptions {
        register(&d, tee, path, &admin)?;
    }

    for (tee, path) in &descriptions {
        d.step(&format!(
            "Launching the guest with --tee {tee}: kernel hashes, attestation through the VMM relay, disk unlock"
        ));
        launch(&d, tee, path)?;
    }

    d.step("The collateral the verifier fetched from the emulated platform's KDS/PCS");
    let status = d.run(
        &d.verifier,
        [
            os("collateral"),
            os("status"),
            os("--database"),
            os(&db),
            os("--output"),
            os("json"),
        ],
        &[],
    )?;
    let status: Value = serde_json::from_str(status.trim())
        .map_err(|e| DemoError::Other(format!("`collateral status` printed no JSON: {e}")))?;
    let fetched: Vec<&Value> = status["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| {
                    i["url"]
                        .as_str()
                        .is_some_and(|u| u.starts_with(collateral_url.as_str()))
                })
                .collect()
        })
        .unwrap_or_default();
    for i in &fetched {
        println!(
            "    {} <- {}",
            i["key"].as_str().unwrap_or("?"),
            i["url"].as_str().unwrap_or("?")
        );
    }
    // The TDX guest sent its quote alone: its TCB info can only have come from here.
    if tees.iter().any(|t| t == "emulated-tdx")
        && !fetched.iter().any(|i| {
            i["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("intel/tdx/tcb/"))
        })
    {
        return Err(DemoError::Other(format!(
            "the verifier holds no TDX TCB info fetched from {collateral_url}"
        )));
    }

    d.step("The verifier's audit records of the releases");
    let audit = d.run(
        &d.verifier,
        [os("audit"), os("export"), os("--database"), os(&db)],
        &[],
    )?;
    let mut releases = 0;
    for line in audit.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["kind"] == "key-release" && v["outcome"] == "released" {
            releases += 1;
            println!("    {line}");
        }
    }
    if releases < tees.len() {
        return Err(DemoError::Other(format!(
            "expected {} release records in the audit log, found {releases}",
            tees.len()
        )));
    }
    d.run(
        &d.verifier,
        [
            os("audit"),
            os("verify"),
            os("--database"),
            os(&db),
            os("--master-key-file"),
            master.as_os_str().into(),
        ],
        &[],
    )?;
    drop(guard);
    drop(collateral_guard);

    d.step("Done");
    println!(
        "    Both guests unlocked their disks only after the verifier checked their evidence.\n    \
         Written to {}:\n      platform/ (emulated trust anchors), firmware.fd, testguest.bzImage, disk.img,\n      vm-snp.toml and vm-tdx.toml (the VM descriptions),\n      \
         disk.key (0600; delete it in real use), verifier.db, verifier.log,\n      collateral-server.log, master.key, admin.*",
        d.dir.display()
    );
    Ok(())
}

fn os(s: &str) -> std::ffi::OsString {
    s.into()
}

/// Reads the URL of a server's "listening on URL" line (`what` names the server).
fn wait_for_url(
    stdout: Option<std::process::ChildStdout>,
    what: &str,
) -> Result<String, DemoError> {
    let stdout = stdout.ok_or_else(|| DemoError::Other(format!("no {what} stdout")))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        while let Some(Ok(line)) = lines.next() {
            if !sent {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let url = url.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(url.to_owned());
                    sent = true;
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| DemoError::Other(format!("{what} did not start within 60 s (see its log)")))
}

type Admin<'a> = dyn Fn(&Demo, &[std::ffi::OsString]) -> Result<String, DemoError> + 'a;

/// The VM description of one demo guest (docs/vm-description.md).
#[allow(clippy::too_many_arguments)]
fn description(
    tee: &str,
    platform: &Path,
    firmware: &Path,
    kernel: &Path,
    cmdline: &str,
    disk: &Path,
    url: &str,
    ca: &Path,
) -> String {
    let q = |s: &str| toml_string(s);
    // Paths beside the description are written relative to it (as the schema resolves
    // them), so the file stays valid if the directory moves.
    let dir = platform.parent().unwrap_or(Path::new("/"));
    let p = |p: &Path| toml_string(&p.strip_prefix(dir).unwrap_or(p).display().to_string());
    format!(
        "version = 1\n\
         tee = {tee}\n\
         firmware = {firmware}\n\
         memory = \"512M\"\n\
         vcpus = 1\n\
         emulated_platform = {platform}\n\
         \n\
         [boot]\n\
         kernel = {kernel}\n\
         cmdline = {cmdline}\n\
         \n\
         [devices]\n\
         serial = \"stdout\"\n\
         disks = [{{ path = {disk} }}]\n\
         \n\
         [attestation]\n\
         url = {url}\n\
         ca_cert = {ca}\n",
        tee = q(tee),
        firmware = p(firmware),
        platform = p(platform),
        kernel = p(kernel),
        cmdline = q(cmdline),
        disk = p(disk),
        url = q(url),
        ca = p(ca),
    )
}

/// A TOML basic string (quoted, escaped).
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn register(d: &Demo, tee: &str, description: &Path, admin: &Admin<'_>) -> Result<(), DemoError> {
    let name = format!("demo-{}", tee.trim_start_matches("emulated-"));
    let policy_path = d.path(&format!("{name}-policy.json"));
    let out = d.run(
        &d.cvm,
        [
            os("measure"),
            os("--config"),
            description.as_os_str().into(),
            os("--output"),
            os("json"),
        ],
        &[],
    )?;
    let v: Value = serde_json::from_str(out.trim())
        .map_err(|e| DemoError::Other(format!("cannot read `cvm measure --config` JSON: {e}")))?;
    let policy = if tee == "emulated-snp" {
        let m = v["measurement"].as_str().unwrap_or_default().to_owned();
        println!("    SEV-SNP launch measurement: {m}");
        json!({"allow_emulated": true, "measurements": [m]})
    } else {
        let mrtd = v["mrtd"].as_str().unwrap_or_default().to_owned();
        let mut rtmrs = Vec::new();
        for i in 0..4 {
            if let Some(r) = v["rtmrs"][i].as_str() {
                rtmrs.push(json!({"index": i, "value": r}));
            }
        }
        println!("    TDX MRTD: {mrtd}");
        for r in &rtmrs {
            println!(
                "    TDX RTMR{}: {}",
                r["index"],
                r["value"].as_str().unwrap_or_default()
            );
        }
        json!({"allow_emulated": true, "measurements": [mrtd], "tdx": {"rtmrs": rtmrs}})
    };
    std::fs::write(
        &policy_path,
        serde_json::to_vec_pretty(&policy).unwrap_or_default(),
    )
    .map_err(io(format!("cannot write {}", policy_path.display())))?;
    admin(
        d,
        &[
            os("workload"),
            os("put"),
            os(&name),
            os("--tee"),
            os(tee.trim_start_matches("emulated-")),
            os("--policy-file"),
            policy_path.as_os_str().into(),
            os("--resource"),
            os(DISK_RESOURCE),
        ],
    )?;
    Ok(())
}

fn launch(d: &Demo, tee: &str, description: &Path) -> Result<(), DemoError> {
    let args: Vec<std::ffi::OsString> =
        vec![os("launch"), os("--config"), description.as_os_str().into()];
    println!("    $ {}", show(&d.cvm, &args));
    let t = Instant::now();
    let mut child = Command::new(&d.cvm)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("cannot run cvm launch"))?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                println!("    vmm   | {line}");
                lines.push(line);
            }
        }
        lines
    });
    let mut message = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("    guest | {line}");
            if let Some(m) = line.split("disk message: ").nth(1) {
                message = Some(m.trim().to_owned());
            }
        }
    }
    let status = child.wait().map_err(io("cvm launch"))?;
    let vmm_lines = err_thread.join().unwrap_or_default();
    if !status.success() {
        return Err(DemoError::Command {
            cmd: format!("cvm launch --tee {tee}"),
            status: status.to_string(),
            detail: format!(":\n{}", vmm_lines.join("\n")),
        });
    }
    match message {
        Some(m) if m == DEMO_MESSAGE => {
            println!(
                "    {tee}: the guest decrypted its disk and read \"{m}\" ({:.1}s)",
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        other => Err(DemoError::Other(format!(
            "{tee}: the guest exited cleanly but did not print the disk message (got {other:?})"
        ))),
    }
}
