//! `cvm launch` device tests under the real /dev/kvm: pvpanic, the boot-data descriptor
//! of `--kernel`, no paravirtual mailbox under the emulated TEEs (port 0xE00 is an
//! unknown port), virtio-vsock to a Unix socket, and the attestation relay to a TCP
//! server.
//!
//! The guests are tiny: hand-encoded real-mode code, or GNU `as` assembly that enters
//! 32-bit protected mode (to reach the virtio-mmio window at 0xD0000000) and drives the
//! vsock device as a minimal driver would. This host's KVM interprets that code (see
//! ../shared/PLATFORM.md); it is a few thousand instructions.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use measured_boot::firmware::{SEV_HASH_TABLE_RV_GUID, SEV_METADATA_GUID};
use measured_boot::snp::hashes::SevHashes;
use measured_boot::testing::{asev, emulated_guest_image, ImageBuilder};

mod common;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

/// A firmware: `code` at 0xFFFFF000, reached from the reset vector.
fn image(code: &[u8]) -> Vec<u8> {
    // A firmware image as `cvm launch` requires one (footer GUID table, a jump at the
    // reset vector): 64 KiB in the OVMF layout, `code` at 0xFFFFF000.
    measured_boot::testing::emulated_guest_image(code)
}

/// A 64 KiB firmware with SEV metadata placing SNP_KERNEL_HASHES at 0xC000 (as the boot
/// protocol's memory map does) and the hashes table at 0xC000, `code` at 0xFFFFF000.
fn sev_image(code: &[u8]) -> Vec<u8> {
    const SIZE: usize = 0x10000;
    assert!(code.len() <= 0xc00, "code would overlap the footer table");
    let mut b = ImageBuilder::default();
    b.blobs.push((0xF000, code.to_vec()));
    b.blobs.push((
        0x100,
        asev(&[
            (0xA000, 0x1000, 2),
            (0xB000, 0x1000, 3),
            (0xC000, 0x1000, 0x10),
        ]),
    ));
    b.entries.push((
        SEV_METADATA_GUID,
        ((SIZE - 0x100) as u32).to_le_bytes().to_vec(),
    ));
    b.entries.push((
        SEV_HASH_TABLE_RV_GUID,
        [0xC000u32.to_le_bytes(), 0x400u32.to_le_bytes()].concat(),
    ));
    let mut img = b.build(SIZE);
    img[0xFFF0..0xFFF3].copy_from_slice(&[0xe9, 0x0d, 0xf0]);
    img
}

/// Assembles 16/32-bit code (GNU as, Intel syntax) placed at 0xFFFFF000.
fn assemble(dir: &Path, src: &str) -> Vec<u8> {
    let s = dir.join("guest.s");
    let o = dir.join("guest.o");
    let bin = dir.join("guest.bin");
    std::fs::write(&s, src).unwrap();
    let st = Command::new("as")
        .args(["--32", "-o"])
        .arg(&o)
        .arg(&s)
        .status()
        .expect("GNU as (binutils) is needed to build the test guests");
    assert!(st.success(), "as failed");
    let st = Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&o)
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(bin).unwrap()
}

/// Enters flat 32-bit protected mode from the reset state, then runs `body`; helper
/// routines: `putc` (al), `print` (esi, ecx), `poweroff`.
fn pm_program(body: &str, data: &str) -> String {
    format!(
        r#"
.intel_syntax noprefix
.equ ROM, 0xFFFFF000
.text
.code16
start:
    cli
    .byte 0x2e, 0x66, 0x0f, 0x01, 0x16
    .word gdtr - start + 0xF000
    mov eax, cr0
    or al, 1
    mov cr0, eax
    .byte 0x66, 0xea
    .long pm32 - start + ROM
    .word 0x08
.code32
pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7000
{body}
poweroff:
    mov dx, 0x604
    mov ax, 0x3400
    out dx, ax
    hlt
putc:
    push edx
    mov dx, 0x3f8
    out dx, al
    pop edx
    ret
print:
    test ecx, ecx
    jz print_done
print_loop:
    mov al, byte ptr [esi]
    call putc
    inc esi
    dec ecx
    jnz print_loop
print_done:
    ret
.p2align 3
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
gdtr:
    .word 23
    .long gdt - start + ROM
{data}
"#
    )
}

/// A minimal virtio-vsock driver on the device at 0xD0000000: sets up RX (4 buffers)
/// and TX, sends REQUEST to host `port`, waits for the answer, sends `payload` as one
/// RW packet, then prints every RW payload it receives (and `'0' + op` for control
/// packets) until SHUTDOWN or RST, and powers off.
fn vsock_guest(port: u32, payload: &str) -> String {
    let body = r#"
.equ MMIO, 0xD0000000
.equ RXD, 0x10000
.equ RXA, 0x10100
.equ RXU, 0x10200
.equ TXD, 0x11000
.equ TXA, 0x11100
.equ TXU, 0x11200
.equ RXB, 0x20000
.equ TXB, 0x30000
.equ VARS, 0x12000
    mov dword ptr [MMIO+0x70], 0
    mov dword ptr [MMIO+0x70], 3
    mov dword ptr [MMIO+0x24], 1
    mov dword ptr [MMIO+0x20], 1
    mov dword ptr [MMIO+0x24], 0
    mov dword ptr [MMIO+0x20], 0
    mov dword ptr [MMIO+0x70], 11
    mov dword ptr [MMIO+0x30], 0
    mov dword ptr [MMIO+0x38], 8
    mov dword ptr [MMIO+0x80], RXD
    mov dword ptr [MMIO+0x84], 0
    mov dword ptr [MMIO+0x90], RXA
    mov dword ptr [MMIO+0x94], 0
    mov dword ptr [MMIO+0xa0], RXU
    mov dword ptr [MMIO+0xa4], 0
    mov dword ptr [MMIO+0x44], 1
    mov dword ptr [MMIO+0x30], 1
    mov dword ptr [MMIO+0x38], 8
    mov dword ptr [MMIO+0x80], TXD
    mov dword ptr [MMIO+0x84], 0
    mov dword ptr [MMIO+0x90], TXA
    mov dword ptr [MMIO+0x94], 0
    mov dword ptr [MMIO+0xa0], TXU
    mov dword ptr [MMIO+0xa4], 0
    mov dword ptr [MMIO+0x44], 1
    mov dword ptr [MMIO+0x70], 15
    xor ecx, ecx
rxfill:
    mov eax, ecx
    shl eax, 12
    add eax, RXB
    mov ebx, ecx
    shl ebx, 4
    mov dword ptr [RXD+ebx], eax
    mov dword ptr [RXD+ebx+4], 0
    mov dword ptr [RXD+ebx+8], 0x1000
    mov dword ptr [RXD+ebx+12], 2
    mov word ptr [RXA+4+ecx*2], cx
    inc ecx
    cmp ecx, 4
    jne rxfill
    mov word ptr [RXA+2], 4
    mov dword ptr [MMIO+0x50], 0
    mov esi, req_pkt - start + ROM
    mov ecx, 44
    call send
    call recv
    cmp eax, 2
    jne poweroff
    mov esi, rw_pkt - start + ROM
    mov ecx, rw_end - rw_pkt
    call send
mainloop:
    call recv
    cmp eax, 3
    je poweroff
    cmp eax, 4
    je poweroff
    jmp mainloop
send:
    mov ebx, dword ptr [VARS]
    mov edi, ebx
    and edi, 7
    shl edi, 12
    add edi, TXB
    push edi
    push ecx
    rep movsb
    pop ecx
    pop eax
    mov edx, ebx
    and edx, 7
    shl edx, 4
    mov dword ptr [TXD+edx], eax
    mov dword ptr [TXD+edx+4], 0
    mov dword ptr [TXD+edx+8], ecx
    mov dword ptr [TXD+edx+12], 0
    mov edx, ebx
    and edx, 7
    mov word ptr [TXA+4+edx*2], dx
    inc ebx
    mov word ptr [TXA+2], bx
    mov dword ptr [VARS], ebx
    mov dword ptr [MMIO+0x50], 1
    ret
recv:
    mov ebx, dword ptr [VARS+4]
recv_wait:
    movzx eax, word ptr [RXU+2]
    cmp ax, bx
    je recv_wait
    mov edx, ebx
    and edx, 7
    mov eax, dword ptr [RXU+4+edx*8]
    push eax
    shl eax, 12
    add eax, RXB
    mov esi, eax
    movzx eax, word ptr [esi+30]
    push eax
    cmp eax, 5
    jne recv_ctrl
    mov ecx, dword ptr [esi+24]
    add esi, 44
    call print
    jmp recv_done
recv_ctrl:
    add al, 0x30
    call putc
recv_done:
    inc ebx
    mov dword ptr [VARS+4], ebx
    pop edi
    pop eax
    movzx ecx, word ptr [RXA+2]
    mov edx, ecx
    and edx, 7
    mov word ptr [RXA+4+edx*2], ax
    inc ecx
    mov word ptr [RXA+2], cx
    mov dword ptr [MMIO+0x50], 0
    mov eax, edi
    ret
"#;
    let data = format!(
        r#"
req_pkt:
    .quad 3
    .quad 2
    .long 1000
    .long {port}
    .long 0
    .word 1
    .word 1
    .long 0
    .long 0x10000
    .long 0
rw_pkt:
    .quad 3
    .quad 2
    .long 1000
    .long {port}
    .long rw_end - rw_data
    .word 1
    .word 5
    .long 0
    .long 0x10000
    .long 0
rw_data:
    .ascii "{payload}"
rw_end:
"#
    );
    pm_program(body, &data)
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    test_kit::run_with_deadline(
        Command::new(CVM).args(args).envs(envs.iter().copied()),
        Duration::from_secs(120),
    )
}

fn launch(dir: &Path, fw: &[u8], extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let path = dir.join("fw.fd");
    std::fs::write(&path, fw).unwrap();
    let mut args = vec![
        "launch",
        "--tee",
        "none",
        "--memory",
        "64M",
        "--firmware",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args, envs)
}

#[test]
fn pvpanic_reports_its_features_and_a_panic_exits_nonzero() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    // in al, 0x505 -> serial; out 0x505, 1; hlt
    let code = [
        0xba, 0x05, 0x05, 0xec, // mov dx,0x505; in al,dx
        0xba, 0xf8, 0x03, 0xee, // mov dx,0x3f8; out dx,al
        0xba, 0x05, 0x05, 0xb0, 0x01, 0xee, // mov dx,0x505; mov al,1; out dx,al
        0xf4,
    ];
    let o = launch(dir.path(), &image(&code), &[], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error: guest panicked"), "{err}");
    assert_eq!(o.stdout, vec![3], "PANICKED | CRASH_LOADED are supported");
}

/// Prints the descriptor (0x80 bytes), the hashes table (176 bytes at 0xC000), the
/// first 16 bytes of the staged kernel and the staged command line.
fn descriptor_guest() -> String {
    pm_program(
        r#"
    mov esi, 0x8000
    mov ecx, 0x80
    call print
    mov esi, 0xC000
    mov ecx, 176
    call print
    mov esi, dword ptr [0x8010]
    mov ecx, 16
    call print
    mov esi, dword ptr [0x8030]
    mov ecx, dword ptr [0x8038]
    call print
    jmp poweroff
"#,
        "",
    )
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn kernel_initrd_and_cmdline_are_staged_where_the_descriptor_says() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let fw = sev_image(&assemble(dir.path(), &descriptor_guest()));
    let kernel: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let initrd = vec![0x5au8; 3000];
    let (k, i) = (dir.path().join("bzImage"), dir.path().join("initrd"));
    std::fs::write(&k, &kernel).unwrap();
    std::fs::write(&i, &initrd).unwrap();
    let cmdline = "console=ttyS0 cvm.test=1";
    let args = [
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--vcpus",
        "2",
    ];
    let o = launch(dir.path(), &fw, &args, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let out = o.stdout;
    assert_eq!(out.len(), 0x80 + 176 + 16 + cmdline.len() + 1, "{err}");
    let d = &out[..0x80];
    assert_eq!(&d[..8], b"CVMBOOT1");
    assert_eq!(u32::from_le_bytes(d[8..12].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(d[12..16].try_into().unwrap()), 0x80);
    let (kgpa, kl) = (u64_at(d, 0x10), u64_at(d, 0x18));
    let (igpa, il) = (u64_at(d, 0x20), u64_at(d, 0x28));
    let (cgpa, cl) = (u64_at(d, 0x30), u64_at(d, 0x38));
    let (sgpa, sl) = (u64_at(d, 0x60), u64_at(d, 0x68));
    assert_eq!((kl, il, cl), (10_000, 3000, cmdline.len() as u64 + 1));
    assert_eq!(u64_at(d, 0x40), 64 << 20, "RAM below 4 GiB");
    assert_eq!(u64_at(d, 0x48), 0, "RAM above 4 GiB");
    assert_eq!(u64_at(d, 0x50), 0xE0000, "RSDP");
    assert_eq!(u32::from_le_bytes(d[0x58..0x5c].try_into().unwrap()), 2);
    assert_eq!(sgpa + sl, 64 << 20, "staging ends at the top of low RAM");
    assert_eq!(sgpa % 4096, 0);
    for (gpa, len) in [(kgpa, kl), (igpa, il), (cgpa, cl)] {
        assert!(gpa >= sgpa && gpa + len <= sgpa + sl);
        assert_eq!(gpa % 4096, 0);
    }
    assert!(kgpa < igpa && igpa < cgpa);
    // The hashes table the firmware checks describes exactly these bytes.
    let table = &out[0x80..0x80 + 176];
    assert_eq!(
        SevHashes::parse(table).unwrap(),
        SevHashes::compute(&kernel, Some(&initrd), Some(cmdline))
    );
    assert_eq!(&out[0x80 + 176..0x80 + 192], &kernel[..16]);
    assert_eq!(&out[0x80 + 192..], format!("{cmdline}\0").as_bytes());
    assert!(err.contains("kernel 10000 bytes sha256"), "{err}");
}

#[test]
fn tampering_is_test_equipment_and_changes_only_the_staged_bytes() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let fw = sev_image(&assemble(dir.path(), &descriptor_guest()));
    let k = dir.path().join("bzImage");
    std::fs::write(&k, vec![1u8; 4096]).unwrap();
    let args = [
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0",
        "--tamper-staged",
        "cmdline",
    ];
    let o = launch(dir.path(), &fw, &args, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("CVM_ALLOW_TAMPER_FOR_TESTS"), "{err}");
    assert!(o.stdout.is_empty(), "no guest ran");

    let o = launch(
        dir.path(),
        &fw,
        &args,
        &[("CVM_ALLOW_TAMPER_FOR_TESTS", "1")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let out = o.stdout;
    let table = SevHashes::parse(&out[0x80..0x80 + 176]).unwrap();
    assert_eq!(
        table,
        SevHashes::compute(&[1u8; 4096], None, Some("console=ttyS0")),
        "the measured hashes describe the original"
    );
    assert_eq!(
        &out[0x80 + 192..],
        b"bonsole=ttyS0\0",
        "the staged copy differs"
    );
}

#[test]
fn a_kernel_needs_a_firmware_that_can_check_it() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("bzImage");
    std::fs::write(&k, [1u8; 100]).unwrap();
    let o = launch(
        dir.path(),
        &image(&[0xf4]),
        &["--kernel", k.to_str().unwrap()],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot build the kernel hashes table"),
        "{err}"
    );
}

#[test]
fn vsock_stream_to_a_unix_socket_server() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let fw = image(&assemble(
        dir.path(),
        &vsock_guest(1234, "ping from guest\\n"),
    ));
    let uds = dir.path().join("vsock.sock");
    let server = UnixListener::bind(dir.path().join("vsock.sock_1234")).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = [0u8; 16];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"pong from host\n").unwrap();
        b
    });
    let o = launch(
        dir.path(),
        &fw,
        &["--vsock-uds", uds.to_str().unwrap()],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(&t.join().unwrap(), b"ping from guest\n");
    // RESPONSE, the host's bytes, then SHUTDOWN once the server closed.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "2pong from host\n4");
    assert!(err.contains("kind=\"virtio-vsock\""), "{err}");
}

#[test]
fn relay_forwards_a_guest_http_request_to_the_verifier_and_back() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let fw = image(&assemble(
        dir.path(),
        &vsock_guest(
            50000,
            "GET /kbs/v0/x HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n",
        ),
    ));
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 256];
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut b).unwrap();
            assert!(n > 0);
            req.extend_from_slice(&b[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .unwrap();
        req
    });
    let o = launch(dir.path(), &fw, &["--verifier", &url], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&t.join().unwrap()),
        "GET /kbs/v0/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        "the verifier got the guest's request unchanged"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "2HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello4"
    );
    assert!(err.contains("attestation relay connection opened"), "{err}");
    assert!(
        err.contains("attestation relayed")
            && err.contains("to_verifier_bytes=45")
            && err.contains("from_verifier_bytes=62"),
        "{err}"
    );
    assert!(
        !err.contains("kbs/v0/x"),
        "the relay never logs payload: {err}"
    );
}

#[test]
fn relay_refuses_plain_http_to_a_remote_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let o = launch(
        dir.path(),
        &image(&[0xf4]),
        &["--verifier", "http://192.0.2.1:8080"],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("only allowed to a loopback address"), "{err}");
    let o = launch(
        dir.path(),
        &image(&[0xf4]),
        &["--verifier", "https://127.0.0.1:8443"],
        &[],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs --ca-cert"));
}

/// The emulated TEEs attach no paravirtual mailbox: evidence takes the hardware's paths
/// (SNP guest request, TDG.MR.REPORT + GetQuote), so port 0xE00 is what any unknown
/// port is (`host_vmm::devices`: reads all ones, writes ignored). A guest that drives the
/// former mailbox (window, INFO command) reads 0xFFFFFFFF as its status and magic, and
/// nothing is written into its memory. Before the mailbox was removed it read status 0,
/// magic "CVME" and the INFO response (kind 1 or 2) at 0x1100.
#[test]
fn the_emulated_tees_have_no_device_at_the_old_mailbox_port() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let plat = common::emulated_platform();
    let fw = dir.path().join("fw.fd");
    for (tee, image) in [
        // 32-bit code: the vCPU starts as a TD vCPU does.
        (
            "emulated-tdx",
            common::td_guest_image(&common::old_mailbox_probe(true)),
        ),
        (
            "emulated-snp",
            emulated_guest_image(&common::old_mailbox_probe(false)),
        ),
    ] {
        std::fs::write(&fw, image).unwrap();
        let o = run(
            &[
                "launch",
                "--tee",
                tee,
                "--emulated-platform",
                &plat,
                "--firmware",
                fw.to_str().unwrap(),
            ],
            &[],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{tee}: {err}");
        assert_eq!(
            o.stdout,
            [[0xff; 4], [0xff; 4], [0; 4]].concat(),
            "{tee}: status, magic (all ones: unknown port), memory at 0x1100 (untouched)"
        );
    }
}

/// A test CA and a P-256 server certificate for 127.0.0.1 it signed (openssl CLI):
/// (CA PEM, server certificate PEM, server key PEM).
fn test_pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |n: &str| dir.join(n);
    let openssl = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("the openssl CLI makes the test certificates");
        assert!(st.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-subj", "/CN=cvm test CA", "-days", "1"],
        ]
        .concat()
        .iter()
        .copied()
        .chain(["-keyout", "ca.key", "-out", "ca.pem"])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1"]]
            .concat()
            .iter()
            .copied()
            .chain(["-keyout", "key.pem", "-out", "req.pem"])
            .collect::<Vec<_>>(),
    );
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.pem",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[test]
fn relay_speaks_tls_to_an_https_verifier_trusting_only_the_given_ca() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", server.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (s, _) = server.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        let mut req = Vec::new();
        let mut b = [0u8; 256];
        while !req.ends_with(b"\r\n\r\n") {
            let n = tls.read(&mut b).unwrap();
            assert!(n > 0);
            req.extend_from_slice(&b[..n]);
        }
        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls")
            .unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
        req
    });
    let fw = image(&assemble(
        dir.path(),
        &vsock_guest(50000, "GET /kbs/v0/auth HTTP/1.1\\r\\n\\r\\n"),
    ));
    let o = launch(
        dir.path(),
        &fw,
        &["--verifier", &url, "--verifier-ca", ca.to_str().unwrap()],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let req = t.join();
    assert!(req.is_ok(), "{err}\n{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        String::from_utf8_lossy(&req.unwrap()),
        "GET /kbs/v0/auth HTTP/1.1\r\n\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "2HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls4"
    );
}

#[test]
fn relay_resets_the_guest_when_the_verifier_certificate_is_not_from_the_given_ca() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (_, cert, key) = test_pki(dir.path());
    let (other_ca, _, _) = test_pki(other.path());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", server.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (s, _) = server.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        let mut b = [0u8; 256];
        tls.read(&mut b).is_err()
    });
    let fw = image(&assemble(
        dir.path(),
        &vsock_guest(50000, "GET / HTTP/1.1\\r\\n\\r\\n"),
    ));
    let o = launch(
        dir.path(),
        &fw,
        &[
            "--verifier",
            &url,
            "--verifier-ca",
            other_ca.to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(t.join().unwrap(), "the handshake failed on the server too");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "23",
        "RESPONSE, then RST: {err}"
    );
}

/// A minimal virtio-blk driver on the device at 0xD0000000: writes one sector (sector
/// 1: a marker, then 'Z's) and, as soon as the device has completed it, pulses reset
/// through the i8042 — the VMM tears down right after the write. Prints 'W' after a
/// good status, or 'E' and powers off.
fn disk_write_guest() -> String {
    let body = r#"
.equ MMIO, 0xD0000000
.equ QD, 0x10000
.equ QA, 0x10100
.equ QU, 0x10200
.equ HDR, 0x11000
.equ DATA, 0x12000
.equ BSTAT, 0x13000
    mov dword ptr [MMIO+0x70], 0
    mov dword ptr [MMIO+0x70], 3
    mov dword ptr [MMIO+0x24], 1
    mov dword ptr [MMIO+0x20], 1
    mov dword ptr [MMIO+0x24], 0
    mov dword ptr [MMIO+0x20], 0
    mov dword ptr [MMIO+0x70], 11
    mov dword ptr [MMIO+0x30], 0
    mov dword ptr [MMIO+0x38], 8
    mov dword ptr [MMIO+0x80], QD
    mov dword ptr [MMIO+0x84], 0
    mov dword ptr [MMIO+0x90], QA
    mov dword ptr [MMIO+0x94], 0
    mov dword ptr [MMIO+0xa0], QU
    mov dword ptr [MMIO+0xa4], 0
    mov dword ptr [MMIO+0x44], 1
    mov dword ptr [MMIO+0x70], 15
    mov edi, DATA
    mov ecx, 512
    mov al, 0x5a
    rep stosb
    mov esi, marker - start + ROM
    mov edi, DATA
    mov ecx, marker_end - marker
    rep movsb
    mov dword ptr [HDR], 1
    mov dword ptr [HDR+4], 0
    mov dword ptr [HDR+8], 1
    mov dword ptr [HDR+12], 0
    mov byte ptr [BSTAT], 0xff
    mov dword ptr [QD], HDR
    mov dword ptr [QD+4], 0
    mov dword ptr [QD+8], 16
    mov word ptr [QD+12], 1
    mov word ptr [QD+14], 1
    mov dword ptr [QD+16], DATA
    mov dword ptr [QD+20], 0
    mov dword ptr [QD+24], 512
    mov word ptr [QD+28], 1
    mov word ptr [QD+30], 2
    mov dword ptr [QD+32], BSTAT
    mov dword ptr [QD+36], 0
    mov dword ptr [QD+40], 1
    mov word ptr [QD+44], 2
    mov word ptr [QD+46], 0
    mov word ptr [QA], 0
    mov word ptr [QA+4], 0
    mov word ptr [QA+2], 1
    mov dword ptr [MMIO+0x50], 0
blk_wait:
    cmp word ptr [QU+2], 1
    jne blk_wait
    cmp byte ptr [BSTAT], 0
    jne blk_fail
    mov al, 0x57
    call putc
    mov al, 0xfe
    out 0x64, al
    hlt
blk_fail:
    mov al, 0x45
    call putc
    jmp poweroff
"#;
    let data = r#"
marker:
    .ascii "CVM-DISK-WRITE-BEFORE-RESET"
marker_end:
"#;
    pm_program(body, data)
}

/// A guest's disk write is on the image file when `cvm` has exited, even when the
/// guest stops (reset) right after the device completed it.
#[test]
fn a_disk_write_is_on_the_file_after_the_guest_resets() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let fw = image(&assemble(dir.path(), &disk_write_guest()));
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let o = launch(dir.path(), &fw, &["--disk", disk.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("guest requested a reset"), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "W", "{err}");
    let img = std::fs::read(&disk).unwrap();
    let marker = b"CVM-DISK-WRITE-BEFORE-RESET";
    assert_eq!(&img[512..512 + marker.len()], marker);
    assert!(img[512 + marker.len()..1024].iter().all(|&b| b == b'Z'));
    assert!(img[..512].iter().all(|&b| b == 0));
    assert!(img[1024..].iter().all(|&b| b == 0));
}

/// The relay to a verifier nobody listens on: the guest's connection is reset at once
/// (its first packet is RST, not RESPONSE followed by an empty stream) and the host logs
/// the OS error at WARN with the address (issue 16).
#[test]
fn relay_to_an_unreachable_verifier_resets_the_guest_and_warns() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let fw = image(&assemble(
        dir.path(),
        &vsock_guest(
            50000,
            "GET /kbs/v0/x HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n",
        ),
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let o = launch(dir.path(), &fw, &["--verifier", &url], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    // The guest prints the op of each packet it receives: 3 = RST.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "3", "{err}");
    assert!(
        err.lines().any(|l| l.contains("WARN")
            && l.contains("cannot connect to the verifier")
            && l.contains(&format!("address=127.0.0.1:{port}"))
            && l.to_lowercase().contains("refused")),
        "{err}"
    );
}
