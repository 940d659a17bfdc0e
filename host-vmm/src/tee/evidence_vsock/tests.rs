//! The evidence service against the real emulated platforms, driven over a socket pair
//! as the vsock muxer drives it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attestation::snp::emulated::{EmulatedSnpPlatform, FinishParams};

use super::*;
use crate::tee::emulated::{status as proto, EmulatedTee, KIND_EMULATED_SNP, KIND_EMULATED_TDX};

/// One request on `s`: (status, body).
fn call(s: &mut UnixStream, cmd: u32, payload: &[u8]) -> (u32, Vec<u8>) {
    let mut req = cmd.to_le_bytes().to_vec();
    req.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    req.extend_from_slice(payload);
    s.write_all(&req).unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).unwrap();
    let st = u32::from_le_bytes(head[..4].try_into().unwrap());
    let len = u32::from_le_bytes(head[4..].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (st, body)
}

fn snp_tee() -> (Arc<Mutex<EmulatedTee>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let platform = Arc::new(EmulatedSnpPlatform::create(dir.path()).unwrap());
    let guest = platform
        .launch_start_from(0x30000, [5; 48])
        .and_then(|l| l.finish(FinishParams::default()))
        .unwrap();
    let guest = EmulatedTee::share(guest, &platform).unwrap();
    (
        Arc::new(Mutex::new(EmulatedTee::Snp { platform, guest })),
        dir,
    )
}

fn tdx_tee() -> (Arc<Mutex<EmulatedTee>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    attestation::tdx::emulated::EmulatedTdxPlatform::create(dir.path()).unwrap();
    let fw = measured_boot::testing::emulated_guest_image(&[0xf4]);
    let (tee, _, _, _) = EmulatedTee::launch_tdx(dir.path(), fw, Default::default(), None).unwrap();
    (Arc::new(Mutex::new(tee)), dir)
}

/// The service thread over `source`, and a guest connection to it.
fn connected(source: Arc<dyn EvidenceSource>) -> (EvidenceService, UnixStream) {
    let svc = EvidenceService::start(source, SeccompMode::Off).unwrap();
    let s = svc.connect().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    (svc, s)
}

#[test]
fn snp_report_and_certificates_come_from_this_launch_s_psp() {
    let (tee, _dir) = snp_tee();
    let (_svc, mut s) = connected(tee.clone());
    let (st, info) = call(&mut s, command::INFO, &[]);
    assert_eq!(st, 0);
    assert_eq!(info[..4], KIND_EMULATED_SNP.to_le_bytes());
    let (st, report) = call(&mut s, command::SNP_REPORT, &[0x5A; 64]);
    assert_eq!(st, 0);
    attestation::snp::report::AttestationReport::parse(&report).unwrap();
    assert_eq!(report[0x50..0x90], [0x5A; 64], "REPORT_DATA is the guest's");
    assert_eq!(report[0x90..0xC0], [5; 48], "MEASUREMENT is this launch's");
    assert_eq!(
        u32::from_le_bytes(report[0x30..0x34].try_into().unwrap()),
        0,
        "VMPL 0"
    );
    let (st, certs) = call(&mut s, command::SNP_CERTS, &[]);
    assert_eq!(st, 0);
    let expected = match &*tee.lock().unwrap() {
        EmulatedTee::Snp { platform, .. } => platform.cert_table().to_bytes().unwrap(),
        EmulatedTee::Tdx { .. } => unreachable!(),
    };
    assert_eq!(
        certs, expected,
        "the auxblob: this platform's certificate table"
    );
    // A TDX command on an SNP platform: UNSUPPORTED, no quote.
    assert_eq!(
        call(&mut s, command::TDX_QUOTE, &[0; 64]),
        (proto::UNSUPPORTED, vec![])
    );
}

#[test]
fn tdx_quote_carries_the_guest_s_report_data_and_the_extended_rtmrs() {
    let (tee, _dir) = tdx_tee();
    // What the firmware's TDG.MR.RTMR.EXTEND would have done.
    if let EmulatedTee::Tdx { td, .. } = &mut *tee.lock().unwrap() {
        td.extend_rtmr(1, &[0xAB; 48]).unwrap();
    }
    let (_svc, mut s) = connected(tee);
    let (st, info) = call(&mut s, command::INFO, &[]);
    assert_eq!((st, &info[..4]), (0, &KIND_EMULATED_TDX.to_le_bytes()[..]));
    let (st, quote) = call(&mut s, command::TDX_QUOTE, &[0x42; 64]);
    assert_eq!(st, 0);
    let q = attestation::tdx::quote::Quote::parse(&quote).unwrap();
    assert_eq!(q.body.report_data, [0x42; 64]);
    let mut rtmr1 = [0u8; 48];
    measured_boot::tdx::rtmr_extend(&mut rtmr1, &[0xAB; 48]);
    assert_eq!(q.body.rtmr[1], rtmr1);
    let (st, collateral) = call(&mut s, command::TDX_COLLATERAL, &[]);
    assert_eq!(st, 0);
    assert!(serde_json::from_slice::<serde_json::Value>(&collateral).is_ok());
    assert_eq!(
        call(&mut s, command::SNP_REPORT, &[0; 64]),
        (proto::UNSUPPORTED, vec![])
    );
}

/// A source that counts what it executes.
#[derive(Debug, Default)]
struct Counting(Mutex<u32>);

impl EvidenceSource for Counting {
    fn execute(&self, _cmd: u32, _request: &[u8]) -> Result<Vec<u8>, u32> {
        *self.0.lock().unwrap() += 1;
        Ok(vec![1, 2, 3])
    }
}

#[test]
fn an_oversized_request_is_refused_and_closes_the_connection() {
    let source = Arc::new(Counting::default());
    let (_svc, mut s) = connected(source.clone());
    let mut req = command::SNP_REPORT.to_le_bytes().to_vec();
    req.extend_from_slice(&(1u32 << 20).to_le_bytes());
    s.write_all(&req).unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[..4], status::BAD_REQUEST.to_le_bytes());
    assert_eq!(head[4..], [0; 4]);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the refusal");
    assert_eq!(*source.0.lock().unwrap(), 0, "nothing executed");
    // A short REPORT_DATA is refused too (never padded into a report).
    let (_svc, mut s) = connected(source.clone());
    assert_eq!(
        call(&mut s, command::SNP_REPORT, &[1; 10]),
        (status::BAD_REQUEST, vec![])
    );
    assert_eq!(*source.0.lock().unwrap(), 0);
}

#[test]
fn evidence_is_rate_limited_and_connections_are_bounded() {
    let source = Arc::new(Counting::default());
    let mut rate = RateLimit::new(3, 1);
    let t0 = Instant::now();
    assert!(rate.take(t0) && rate.take(t0) && rate.take(t0));
    assert!(!rate.take(t0), "burst spent");
    assert!(
        rate.take(t0 + Duration::from_millis(1100)),
        "refilled at the rate"
    );

    // Over a connection: RATE_BURST reports, then BUSY, without executing.
    let mut rate = RateLimit::new(2, 0);
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let client = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..MAX_REQUESTS_PER_CONNECTION + 2 {
            let mut req = command::SNP_REPORT.to_le_bytes().to_vec();
            req.extend_from_slice(&64u32.to_le_bytes());
            req.extend_from_slice(&[0; 64]);
            if a.write_all(&req).is_err() {
                break;
            }
            let mut head = [0u8; 8];
            if a.read_exact(&mut head).is_err() {
                break;
            }
            let len = u32::from_le_bytes(head[4..].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len];
            a.read_exact(&mut body).unwrap();
            got.push(u32::from_le_bytes(head[..4].try_into().unwrap()));
        }
        got
    });
    let served = serve_connection(&mut b, source.as_ref(), &mut rate);
    drop(b);
    let got = client.join().unwrap();
    assert_eq!(
        served.requests, MAX_REQUESTS_PER_CONNECTION,
        "then the connection ends"
    );
    assert_eq!(got.len(), MAX_REQUESTS_PER_CONNECTION as usize);
    assert_eq!(&got[..3], &[0, 0, status::BUSY]);
    assert_eq!(*source.0.lock().unwrap(), 2, "only the burst was executed");

    // At most MAX_QUEUED connections wait; more are refused at once.
    let (tx, _rx) = std::sync::mpsc::sync_channel(MAX_QUEUED);
    let svc = EvidenceService { tx };
    let keep: Vec<_> = (0..MAX_QUEUED).map(|_| svc.connect()).collect();
    assert!(keep.iter().all(|c| c.is_ok()));
    let e = svc.connect().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn only_the_emulated_backends_offer_evidence() {
    use crate::tee::TeeBackend;
    assert!(
        crate::tee::none::NoTee::default()
            .evidence_source()
            .is_none(),
        "--tee none offers no evidence service"
    );
}

/// ATTACK (F3): a client that sends one byte just inside every per-read timeout must
/// not hold the single service thread for long (with a per-recv timeout alone, up to
/// 8 × 72 bytes × 5 s ≈ 48 min): the connection has one deadline in all.
#[test]
fn a_dribbling_client_is_closed_at_the_connection_deadline() {
    #[derive(Debug)]
    struct Info;
    impl EvidenceSource for Info {
        fn execute(&self, _cmd: u32, _request: &[u8]) -> Result<Vec<u8>, u32> {
            Ok(vec![1, 0, 0, 0, 1, 0, 0, 0])
        }
    }
    let deadline = Duration::from_secs(2);
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut guest, service_end) = UnixStream::pair().unwrap();
    tx.send(service_end).unwrap();
    drop(tx);
    let server = std::thread::spawn(move || serve_for(rx, &Info, deadline));
    let start = Instant::now();
    // A valid SNP_REPORT header, then REPORT_DATA one byte every 500 ms (well inside
    // IO_TIMEOUT), at most 20 bytes (10 s).
    guest
        .write_all(&[command::SNP_REPORT.to_le_bytes(), 64u32.to_le_bytes()].concat())
        .unwrap();
    let mut closed_after = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        if guest.write_all(&[0]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the service still read the dribble after 10 s");
    assert!(
        closed_after < deadline + Duration::from_secs(2),
        "closed after {closed_after:?}, deadline {deadline:?}"
    );
    server.join().unwrap();
}

/// The service thread's seccomp filter ([`ThreadKind::Evidence`]) lets it answer every
/// command over both emulated TEEs: run with the filter installed (in a child process,
/// because a forbidden syscall kills the whole process with SIGSYS), and the answers
/// arrive and the child exits normally.
#[test]
fn the_service_answers_every_command_under_its_seccomp_filter() {
    const CHILD: &str = "CVM_EVIDENCE_SECCOMP_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let (snp, _d1) = snp_tee();
        let svc = EvidenceService::start(snp, SeccompMode::On).unwrap();
        let mut s = svc.connect().unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(call(&mut s, command::INFO, &[]).0, 0);
        let (st, report) = call(&mut s, command::SNP_REPORT, &[0x5A; 64]);
        assert_eq!((st, &report[0x50..0x90]), (0, &[0x5A; 64][..]));
        let (st, certs) = call(&mut s, command::SNP_CERTS, &[]);
        assert!(st == 0 && !certs.is_empty());
        let (tdx, _d2) = tdx_tee();
        let svc = EvidenceService::start(tdx, SeccompMode::On).unwrap();
        let mut s = svc.connect().unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(call(&mut s, command::INFO, &[]).0, 0);
        let (st, quote) = call(&mut s, command::TDX_QUOTE, &[0x42; 64]);
        assert_eq!(st, 0);
        let q = attestation::tdx::quote::Quote::parse(&quote).unwrap();
        assert_eq!(q.body.report_data, [0x42; 64]);
        let (st, collateral) = call(&mut s, command::TDX_COLLATERAL, &[]);
        assert!(st == 0 && !collateral.is_empty());
        // An oversized request: BAD_REQUEST, then the service closes (shutdown).
        let mut big = command::INFO.to_le_bytes().to_vec();
        big.extend_from_slice(&65u32.to_le_bytes());
        s.write_all(&big).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest[..4], status::BAD_REQUEST.to_le_bytes());
        // The thread survived the close: a new connection is still answered.
        let mut s = svc.connect().unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(call(&mut s, command::INFO, &[]).0, 0);
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "tee::evidence_vsock::tests::the_service_answers_every_command_under_its_seccomp_filter",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("running 1 test"),
        "the child ran the test: {out:?}"
    );
}

/// The service is requested only by the whole word `cvm.tsm=vsock`, as `cvm-agent`
/// reads it; anything the agent would refuse refuses the launch.
#[test]
fn requested_only_by_the_whole_word_cvm_tsm_vsock() {
    for yes in [
        "console=ttyS0 cvm.tsm=vsock",
        "cvm.tsm=vsock quiet cvm.tsm=vsock",
        "\tcvm.tsm=vsock\n",
    ] {
        assert!(requested(yes).unwrap(), "{yes:?}");
    }
    for no in [
        "",
        "console=ttyS0 cvm.tee_trap=port",
        "xcvm.tsm=vsock",
        "cvm.tsmx=vsock",
        "cvm.tsm_=vsock",
        "foo=cvm.tsm=vsock",
    ] {
        assert!(!requested(no).unwrap(), "{no:?}");
    }
    for bad in [
        "cvm.tsm=vsock cvm.tsm=configfs",
        "cvm.tsm=configfs cvm.tsm=vsock",
        "cvm.tsm=VSOCK",
        "cvm.tsm=",
        "cvm.tsm",
        "cvm.tsm=vsock cvm.tsm",
    ] {
        let e = requested(bad).unwrap_err();
        assert!(e.to_string().contains("only cvm.tsm=vsock"), "{bad:?}: {e}");
    }
}
