//! `cvm-testguest`: a bare-metal guest packaged as a bzImage that attests to the
//! verifier over vsock, receives its disk key, opens a LUKS2 volume and prints the
//! message stored in it.
//!
//! # Boot path and memory
//!
//! | GPA | what |
//! |---|---|
//! | 0x100000 | payload (this code and data), 32-bit stub; 64-bit entry at 0x100200 |
//! | after it | .bss (zeroed at ring 3) with the 256 KiB stack, then the page tables (24 KiB) |
//! | 16 MiB – 20 MiB, in a TD or an SNP guest (unused otherwise) | the shared DMA pool ([`dma`]): converted to shared with `TDVMCALL<MapGPA>` (SNP: PVALIDATE rescind + Page State Change), mapped at linear 4 GiB through `GPA \| shared bit` (SNP: C-bit clear); every virtio ring and buffer and the GetQuote buffer |
//! | 20 MiB – end of that e820 RAM range (≤ 3 GiB) | heap: everything else (and the DMA memory without a TD or an SNP guest) |
//!
//! [`boot`] holds the CPL0 prologue: page tables, GDT, SSE, IOPL 3, `iretq` to
//! [`cvm_testguest_main`] at ring 3, where everything else runs natively.
//!
//! # Command line
//!
//! - `cvm.kbs_resource=repo/type/tag` (required): the disk key's resource path;
//! - `cvm.verifier_key=KEY` (required): the pinned verifier, base64url of its 65-byte
//!   uncompressed SEC1 P-256 point (`cvm-verifier identity`); the guest accepts only a
//!   token and a release signed by it (`guest_agent::pin`), and refuses to attest
//!   without it. The command line is measured, so the pin is part of the measurement;
//! - `cvm.kbs_port=N` (default 50000): the host vsock port of the attestation relay;
//! - `cvm.kbs_workload=NAME` (optional): `extra-params.workload` for the verifier;
//! - `cvm.net_test=GUEST_IP,HOST_IP,PORT` (optional): instead of attesting, run the
//!   network self-test over the first virtio-net device ([`virtio::net_test`]: ARP,
//!   a UDP hello to the host, an echo of the host's answer), then print
//!   `cvm-testguest: disk message: (net test) host sent: <text>` and power off;
//! - `cvm.tee_trap=port` (required to attest): TDCALL, and the SNP guest's
//!   SEV_STATUS read, PVALIDATE and VMGEXIT, through the emulator traps (`out 0xE0`…`0xE4`,
//!   [`trap_tdx`], [`snp`]) instead of the literal instructions, which this CPL3 code
//!   cannot execute: needed under both `--tee emulated-tdx` and `--tee emulated-snp`.
//!   Without it the guest finds no TEE ([`tee::NO_TEE`]). The guest cannot attest on
//!   hardware (where CPL3 has no such trap).
//!
//! # Disk format
//!
//! The first virtio-blk disk is a LUKS2 volume (as `luks::create` or `cryptsetup
//! luksFormat --type luks2` writes it; PBKDF2 or Argon2id keyslots within
//! `luks::Limits`) whose key (key file bytes) is the released resource. The first
//! decrypted bytes of the data segment hold the message: UTF-8 text ending at the first
//! NUL (at most 4095 bytes; printable characters only are printed).
//!
//! # Output
//!
//! Success: `cvm-testguest: disk message: <text>`, then ACPI S5 (the VMM exits 0). Any
//! failure: `cvm-testguest: error: <reason>`, then pvpanic (the VMM exits non-zero).
//! The key is never printed.
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod bootparams;
mod console;
mod dma;
mod heap;
mod pio;
mod rng;
mod snp;
mod tee;
mod trap_tdx;
mod virtio;

use alloc::format;
use alloc::string::String;
use guest_agent::evidence::EvidenceProvider;
use guest_agent::jwe::Curve;
use guest_agent::{KbsClient, KbsConfig, ResourcePath, VerifierKey};

#[global_allocator]
static HEAP: heap::Bump = heap::Bump::new();

const HEAP_START: u64 = 16 << 20;
const HEAP_MAX_END: u64 = 0xC000_0000;
/// Bytes of plaintext read for the message.
const MESSAGE_MAX: usize = 4096;

struct Params {
    resource: ResourcePath,
    verifier_key: VerifierKey,
    port: u32,
    workload: Option<String>,
}

fn parse_cmdline(cmdline: &str) -> Result<Params, String> {
    let mut resource = None;
    let mut port = 50000u32;
    let mut workload = None;
    for word in cmdline.split_ascii_whitespace() {
        if let Some(v) = word.strip_prefix("cvm.kbs_resource=") {
            resource = Some(ResourcePath::parse(v).map_err(|e| format!("cvm.kbs_resource: {e}"))?);
        } else if let Some(v) = word.strip_prefix("cvm.kbs_port=") {
            port = v
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| String::from("cvm.kbs_port is not a port number"))?;
        } else if let Some(v) = word.strip_prefix("cvm.kbs_workload=") {
            workload = Some(String::from(v));
        }
    }
    let verifier_key = VerifierKey::from_cmdline(cmdline)
        .map_err(|e| format!("cvm.verifier_key: {e}"))?
        .ok_or("no pinned verifier (no cvm.verifier_key= on the command line): refusing")?;
    Ok(Params {
        resource: resource.ok_or("the command line has no cvm.kbs_resource=repo/type/tag")?,
        verifier_key,
        port,
        workload,
    })
}

/// Writes `e` and its sources on one line.
fn chain(e: &dyn core::error::Error) -> String {
    let mut s = format!("{e}");
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

fn run(boot_params: usize) -> Result<String, String> {
    let (ram_start, ram_end) = bootparams::ram_range_containing(boot_params, HEAP_START)
        .ok_or("no usable RAM at 16 MiB in the e820 map (give the guest at least 64 MiB)")?;
    let end = ram_end.min(HEAP_MAX_END);
    // The first `dma::POOL_SIZE` bytes of the heap range are kept out of the heap: in a
    // TD or an SNP guest they become the shared DMA pool (SNP is known only once the
    // command line, which needs the heap, has been read).
    let td = trap_tdx::is_td();
    let heap_start = HEAP_START + dma::POOL_SIZE;
    if end < heap_start + (32 << 20) || ram_start > HEAP_START {
        return Err("less than 32 MiB of heap RAM above 16 MiB".into());
    }
    HEAP.init(heap_start as usize, end as usize);

    let cmdline = bootparams::cmdline(boot_params);
    if td {
        // Devices cannot reach private memory: convert the pool to shared and map it
        // through the shared-bit alias (see `dma`).
        let shared = trap_tdx::share(
            trap_tdx::Trap::from_cmdline(&cmdline),
            HEAP_START,
            dma::POOL_SIZE,
        )
        .map_err(|e| format!("cannot share the DMA pool: {e}"))?;
        dma::init_shared_pool(HEAP_START, dma::POOL_SIZE, shared)
            .map_err(|e| format!("cannot map the DMA pool: {e}"))?;
    } else if snp::active(&cmdline) {
        // The same under SEV-SNP: rescind and convert the pool, map it with the C-bit
        // clear (attribute 0).
        snp::share(HEAP_START, dma::POOL_SIZE)
            .map_err(|e| format!("cannot share the DMA pool: {e}"))?;
        dma::init_shared_pool(HEAP_START, dma::POOL_SIZE, 0)
            .map_err(|e| format!("cannot map the DMA pool: {e}"))?;
    }
    if let Some(spec) = virtio::net_test::requested(&cmdline) {
        let got = virtio::net_test::run(spec)?;
        return Ok(format!("(net test) host sent: {got}"));
    }
    let params = parse_cmdline(&cmdline)?;
    let mut entropy = rng::Rdrand::new().map_err(|e| format!("{e}"))?;
    // SEV-SNP through the real guest-request path, TDX through TDG.MR.REPORT and
    // TDVMCALL<GetQuote>, each through the trap the measured command line selects;
    // without either there is nothing to attest with (`tee::NO_TEE`). The TD check
    // (CPUID leaf 0x21) comes first: the SNP probe reads SEV_STATUS through the port
    // trap, an `out` a TD must not execute (on TDX hardware it is a #VE; the emulated
    // TD's VMM has no device there).
    let mut snp_guest = if td {
        None
    } else {
        snp::SnpGuest::detect(&cmdline)?
    };
    let mut other;
    let (provider, path): (&mut dyn EvidenceProvider, &str) = match snp_guest.as_mut() {
        Some(s) => (s, "SNP guest request"),
        None => {
            other = tee::Provider::detect(trap_tdx::Trap::from_cmdline(&cmdline))
                .map_err(|e| format!("{e}"))?;
            (&mut other, "TDG.MR.REPORT + GetQuote")
        }
    };
    println!(
        "cvm-testguest: emulated {} TEE ({path}); attesting for {} via vsock port {}",
        provider.tee().as_str(),
        params.resource.as_str(),
        params.port
    );

    let vsock_dev = virtio::find(virtio::DEVICE_VSOCK, 0).ok_or("no virtio-vsock device")?;
    let vsock = virtio::vsock::Vsock::new(vsock_dev, params.port)
        .map_err(|e| format!("virtio-vsock: {e}"))?;
    let mut client = KbsClient::new(
        vsock,
        KbsConfig {
            workload: params.workload,
            verifier_key: Some(params.verifier_key),
            ..Default::default()
        },
    );
    let key = client
        .fetch(provider, &mut entropy, Curve::P256, &params.resource)
        .map_err(|e| format!("key release failed: {}", chain(&e)))?;
    println!(
        "cvm-testguest: key released ({} bytes); opening the disk",
        key.expose().len()
    );

    let blk_dev = virtio::find(virtio::DEVICE_BLOCK, 0).ok_or("no virtio-blk disk")?;
    let mut disk = virtio::blk::Blk::new(blk_dev).map_err(|e| format!("virtio-blk: {e}"))?;
    let message = read_message(&mut disk, key.expose())?;
    drop(key);
    Ok(message)
}

/// Unlocks the LUKS2 volume with `key` and returns its message (see the crate docs).
fn read_message(disk: &mut virtio::blk::Blk, key: &[u8]) -> Result<String, String> {
    let header =
        luks::Header::read_from(disk).map_err(|e| format!("not a LUKS2 volume: {}", chain(&e)))?;
    let limits = luks::Limits {
        max_argon2_memory_kib: 256 << 10,
        ..Default::default()
    };
    let volume = header
        .unlock_with_limits(key, disk, &limits)
        .map_err(|e| format!("cannot unlock the volume: {}", chain(&e)))?;
    let mut buf = zeroize::Zeroizing::new([0u8; MESSAGE_MAX]);
    volume
        .read_plaintext(disk, 0, buf.as_mut())
        .map_err(|e| format!("cannot read the volume: {}", chain(&e)))?;
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or("the message has no NUL terminator in its first 4 KiB")?;
    let text = core::str::from_utf8(&buf[..end]).map_err(|_| "the message is not UTF-8")?;
    Ok(text.chars().filter(|c| !c.is_control()).collect::<String>())
}

/// The ring-3 entry (from `boot`), with the `boot_params` address.
#[no_mangle]
pub extern "C" fn cvm_testguest_main(boot_params: u64) -> ! {
    match run(boot_params as usize) {
        Ok(message) => {
            println!("cvm-testguest: disk message: {message}");
            console::power_off()
        }
        Err(reason) => {
            println!("cvm-testguest: error: {reason}");
            console::fail()
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("cvm-testguest: error: panic: {}", info.message());
    console::fail()
}

/// Never called (panic = abort everywhere), but the precompiled `core`/`alloc` refer to it.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    console::fail()
}

/// Never called either: the precompiled `core`/`alloc` carry landing pads naming it.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
