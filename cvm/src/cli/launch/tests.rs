//! Unit tests of `cvm launch`'s argument handling, checks and exit statuses.

use super::checks::*;
use super::*;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn args(argv: &[&str]) -> Spec {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("launch").chain(argv.iter().copied()))
        .unwrap()
        .args
        .resolve()
        .unwrap()
}

#[test]
fn the_tee_flag_keeps_its_names() {
    for (name, kind) in [
        ("snp", TeeKind::Snp),
        ("tdx", TeeKind::Tdx),
        ("emulated-snp", TeeKind::EmulatedSnp),
        ("emulated-tdx", TeeKind::EmulatedTdx),
        ("none", TeeKind::None),
    ] {
        let a = args(&["--tee", name]);
        assert_eq!(a.tee.kind(), kind);
        assert_eq!(kind.to_string(), name, "Display and the flag agree");
    }
}

#[test]
fn the_seccomp_flag_keeps_its_names_and_maps_to_the_library_mode() {
    assert_eq!(args(&["--tee", "none"]).seccomp, SeccompArg::On);
    for (name, mode) in [("on", SeccompMode::On), ("off", SeccompMode::Off)] {
        let a = args(&["--tee", "none", "--seccomp", name]);
        assert_eq!(SeccompMode::from(a.seccomp), mode, "{name}");
    }
}

#[test]
fn memory_sizes_use_the_shared_parser() {
    let a = args(&["--tee", "none", "--memory", "1GiB", "--memory-limit", "2 G"]);
    assert_eq!(a.memory, 1 << 30);
    assert_eq!(a.memory_limit, Some(2 << 30));
    assert_eq!(args(&["--tee", "none"]).memory, 512 << 20, "the default");
}

#[test]
fn usage_and_bad_input_exit_2_refusals_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("id-block");
    std::fs::write(&short, [0u8; 95]).unwrap();
    let auth = dir.path().join("id-auth");
    std::fs::write(&auth, [0u8; 4096]).unwrap();
    let missing = dir.path().join("absent");
    let m = missing.to_str().unwrap();
    // Flag checks: nothing is opened yet.
    for (argv, what) in [
        (vec!["--tee", "emulated-snp"], "needs --emulated-platform"),
        (vec!["--tee", "emulated-tdx"], "needs --emulated-platform"),
        (
            vec!["--tee", "none", "--tdx-qgs", "/q"],
            "--tdx-qgs is for --tee tdx",
        ),
        (
            vec!["--tee", "tdx", "--snp-certs", "/c"],
            "--snp-certs is for --tee snp",
        ),
        (
            vec![
                "--tee",
                "none",
                "--jail",
                "/j",
                "--uid",
                "1",
                "--gid",
                "1",
                "--verifier",
                "http://127.0.0.1:1",
            ],
            "--jail-netns host",
        ),
    ] {
        let e = check_flags(&args(&argv)).unwrap_err();
        assert!(e.to_string().contains(what), "{argv:?}: {e}");
        assert_eq!(e.exit_code(), 2, "{argv:?}");
    }
    // Unreadable or invalid input.
    let e = load_inputs(&args(&["--tee", "none", "--firmware", m])).unwrap_err();
    assert!(matches!(e, LaunchError::Firmware(..)), "{e:?}");
    assert_eq!(e.exit_code(), 2);
    let fw = dir.path().join("fw");
    std::fs::write(&fw, measured_boot::testing::emulated_guest_image(&[0xf4])).unwrap();
    let f = fw.to_str().unwrap();
    let e = load_inputs(&args(&["--tee", "none", "--firmware", f, "--kernel", m])).unwrap_err();
    assert!(matches!(e, LaunchError::Boot(_)), "{e:?}");
    assert_eq!(e.exit_code(), 2);
    // A blob that is not a firmware image is refused for every TEE.
    let blob = dir.path().join("blob");
    std::fs::write(&blob, [0xF4u8; 4096]).unwrap();
    for tee in ["none", "snp", "tdx", "emulated-snp", "emulated-tdx"] {
        let a = args(&[
            "--tee",
            tee,
            "--firmware",
            blob.to_str().unwrap(),
            "--emulated-platform",
            m,
        ]);
        let e = load_inputs(&a).unwrap_err();
        assert!(matches!(e, LaunchError::NotFirmware(..)), "{tee}: {e:?}");
        assert_eq!(e.exit_code(), 2);
    }
    let a = args(&[
        "--tee",
        "snp",
        "--id-block",
        short.to_str().unwrap(),
        "--id-auth",
        auth.to_str().unwrap(),
    ]);
    let e = id_block(&a).unwrap_err();
    assert!(
        matches!(
            e,
            LaunchError::WrongSize {
                got: 95,
                want: 96,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.exit_code(), 2);
    // An emulated platform that is missing is bad input.
    let a = args(&[
        "--tee",
        "emulated-snp",
        "--firmware",
        f,
        "--emulated-platform",
        m,
    ]);
    let e = build_backend(&a, &load_inputs(&a).unwrap()).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e:?}");
    // The source chain survives.
    let e = LaunchError::EmbeddedFirmware(guest_images::FirmwareError::NotEmbedded);
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(e.exit_code(), 2);
    // Refusals.
    let e = LaunchError::Unavailable(tee::Unavailable {
        tee: TeeKind::Snp,
        reasons: vec!["no".into()],
    });
    assert_eq!(e.exit_code(), 1);
    if std::path::Path::new("/dev/kvm").exists() && !std::path::Path::new("/dev/sev").exists() {
        let e = launch(&args(&["--tee", "snp", "--firmware", f])).unwrap_err();
        assert!(matches!(e, LaunchError::Unavailable(_)), "{e:?}");
        assert_eq!(e.exit_code(), 1);
    }
}

#[test]
fn an_emulated_platform_that_cannot_be_opened_is_bad_input() {
    let embedded = guest_images::embedded();
    test_kit::require!(embedded.is_ok(), "this build has no built-in firmware");
    let fw = embedded.expect("checked above");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fw");
    std::fs::write(&p, fw).unwrap();
    let absent = dir.path().join("absent");
    for tee in ["emulated-snp", "emulated-tdx"] {
        let a = args(&[
            "--tee",
            tee,
            "--firmware",
            p.to_str().unwrap(),
            "--emulated-platform",
            absent.to_str().unwrap(),
        ]);
        let e = build_backend(&a, &load_inputs(&a).unwrap()).unwrap_err();
        assert!(
            matches!(e, LaunchError::Emulated(EmulatedLaunchError::Platform(..))),
            "{e:?}"
        );
        assert_eq!(e.exit_code(), 2, "{tee}");
    }
    // The factory builds the backend --tee names.
    let a = args(&["--tee", "none", "--firmware", p.to_str().unwrap()]);
    let b = build_backend(&a, &load_inputs(&a).unwrap()).unwrap();
    assert_eq!(b.kind(), TeeKind::None);
}

#[test]
fn reset_vectors_of_real_firmware_jump_and_random_bytes_do_not() {
    // Debian OVMF_CODE.fd and the project firmware: mov eax, cr0; test al, 1; jz; jmp.
    let ovmf = hex::decode("0f20c0a8017405e928ffffffe909ff90").unwrap();
    assert!(reset_vector_jumps(&ovmf));
    // SeaBIOS-style far jump, and nop; nop; jmp.
    assert!(reset_vector_jumps(&hex::decode("ea5be000f0").unwrap()));
    assert!(reset_vector_jumps(&[0x90, 0x90, 0xe9, 0x00, 0x00]));
    assert!(!reset_vector_jumps(&[0xf4; 16]));
    assert!(!reset_vector_jumps(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]));
    assert!(!reset_vector_jumps(&[0x0f, 0x20, 0xc0, 0xf4]));
}

#[test]
fn id_block_files_must_have_their_exact_size() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("id");
    std::fs::write(&p, [7u8; 95]).unwrap();
    let e = read_exact_size::<96>(&p).unwrap_err().to_string();
    assert!(e.contains("95 bytes; it must be exactly 96"), "{e}");
    std::fs::write(&p, [7u8; 96]).unwrap();
    assert_eq!(*read_exact_size::<96>(&p).unwrap(), [7u8; 96]);
    assert!(read_exact_size::<96>(&dir.path().join("absent")).is_err());
}

#[test]
fn sizes_and_serial_specs() {
    assert_eq!(parse_size("512M"), Ok(512 << 20));
    assert_eq!(parse_size("2g"), Ok(2 << 30));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("12Q").is_err());
    assert!(parse_size("99999999999T").is_err());
    assert_eq!(
        parse_serial("file:/tmp/x"),
        Ok(SerialOutput::File("/tmp/x".into()))
    );
    assert!(parse_serial("file:").is_err());
    assert!(parse_serial("tcp").is_err());
    assert_eq!(
        parse_disk("/d.img,readonly"),
        Ok(DiskConfig {
            path: "/d.img".into(),
            read_only: true
        })
    );
    assert_eq!(
        parse_disk("/d.img"),
        Ok(DiskConfig {
            path: "/d.img".into(),
            read_only: false
        })
    );
    assert!(parse_disk("/d.img,rw2").is_err());
}

fn try_args(argv: &[&str]) -> Result<Spec, LaunchError> {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("launch").chain(argv.iter().copied()))
        .unwrap()
        .args
        .resolve()
}

/// Attack (red-team M4): an interface without a policy used to run unfiltered with a
/// warning; default deny refuses the launch (a usage error, exit 2) naming the fix.
#[test]
fn an_interface_without_a_policy_is_refused_unless_opted_out() {
    let e = try_args(&["--tee", "none", "--net", "tap=cvmx0"])
        .expect_err("--net without [network_policy] must be refused");
    assert!(matches!(e, LaunchError::Usage(_)), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("[network_policy]") && m.contains("--net-unfiltered"),
        "{m}"
    );
    // The same through a description's [[net]].
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vm.toml");
    std::fs::write(
        &f,
        "version = 1\ntee = \"none\"\n[[net]]\ntap = \"cvmx0\"\n",
    )
    .unwrap();
    let e = try_args(&["--config", f.to_str().unwrap()]).expect_err("refused");
    assert!(e.to_string().contains("--net-unfiltered"), "{e}");
    // Explicit opt-ins: the flag, or `unfiltered = true` alone in the section.
    let a = args(&["--tee", "none", "--net", "tap=cvmx0", "--net-unfiltered"]);
    assert!(a.net_unfiltered && a.net_policy.is_none());
    std::fs::write(
        &f,
        "version = 1\ntee = \"none\"\n[[net]]\ntap = \"cvmx0\"\n[network_policy]\nunfiltered = true\n",
    )
    .unwrap();
    let a = args(&["--config", f.to_str().unwrap()]);
    assert!(a.net_unfiltered && a.net_policy.is_none());
    // `unfiltered` does not combine with a policy.
    std::fs::write(
        &f,
        "version = 1\ntee = \"none\"\n[[net]]\ntap = \"cvmx0\"\nmac = \"02:00:00:00:00:01\"\n\
         [network_policy]\nunfiltered = true\nname = \"a\"\n\
         [[network_policy.interfaces]]\ntap = \"cvmx0\"\nmac = \"02:00:00:00:00:01\"\n\
         addresses = [\"10.0.0.2\"]\n",
    )
    .unwrap();
    let e = try_args(&["--config", f.to_str().unwrap()]).expect_err("refused");
    assert!(e.to_string().contains("unfiltered"), "{e}");
    // No interface: nothing to filter, nothing required.
    assert!(!args(&["--tee", "none"]).net_unfiltered);
}
