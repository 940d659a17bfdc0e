//! TDX evidence the way a TD guest gets it (Intel TDX module ABI 1.5, GHCI 1.5): a
//! TDREPORT from TDG.MR.REPORT over the verifier's REPORT_DATA, converted into a quote
//! with `TDG.VP.VMCALL<GetQuote>` in a shared buffer (the format Linux's tdx-guest driver
//! uses: version 1, status, in_len, out_len, then the data). The VMM answers GetQuote
//! through its quote service (QGS, or the emulated platform's quoting enclave).
//!
//! # The trap
//!
//! The protocol is one code path; only the final instruction differs, chosen once from
//! the **measured** command line (never from hypervisor-controlled CPUID):
//! - `cvm.tee_trap=port`: the emulator trap `out 0xE0, al` with every other register
//!   exactly as for TDCALL (this guest runs at CPL3, where the literal TDCALL cannot run,
//!   and a standard KVM would raise #UD for it); the emulated TDX module of
//!   `cvm launch --tee emulated-tdx` performs it;
//! - otherwise the literal `tdcall` (66 0f 01 cc), as on TDX hardware.
//!
//! TDX itself is detected by CPUID leaf 0x21 ("IntelTDX    "), as TD guests do.
//!
//! The quote goes to the verifier without collateral, as from a real TD: the verifier
//! fetches the platform's collateral from its PCS.

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::string::ToString;
use alloc::vec::Vec;
use core::arch::asm;
use guest_agent::evidence::EvidenceError;

/// How TDCALL reaches the TDX module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// The literal instruction (TDX hardware).
    Insn,
    /// `out 0xE0, al` (the emulator trap).
    Port,
}

impl Trap {
    /// From the command line: `cvm.tee_trap=port` selects the emulator trap.
    pub fn from_cmdline(cmdline: &str) -> Self {
        if cmdline
            .split_ascii_whitespace()
            .any(|w| w == "cvm.tee_trap=port")
        {
            Trap::Port
        } else {
            Trap::Insn
        }
    }
}

/// The registers of TDCALL (RBX, RSI, RDI, RBP are never exposed here: every VMCALL
/// bitmap is 0xFC00, so the module preserves them).
#[derive(Debug, Default, Clone, Copy)]
pub struct Regs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// TDCALL through `trap`; every register a leaf may write is an output.
///
/// # Safety
/// Only in a TD (or under the emulated TDX module); memory operands named by the leaf
/// must be valid guest memory this code owns.
pub unsafe fn tdcall(trap: Trap, mut r: Regs) -> Regs {
    match trap {
        // SAFETY: upheld by the caller.
        Trap::Insn => unsafe {
            asm!(".byte 0x66, 0x0f, 0x01, 0xcc",
                 inout("rax") r.rax, inout("rcx") r.rcx, inout("rdx") r.rdx, inout("r8") r.r8,
                 inout("r9") r.r9, inout("r10") r.r10, inout("r11") r.r11, inout("r12") r.r12,
                 inout("r13") r.r13, inout("r14") r.r14, inout("r15") r.r15, options(nostack))
        },
        // SAFETY: upheld by the caller; IOPL 3 allows the `out` at ring 3, and the VMM
        // writes the results into the registers (and guest memory) before we continue.
        Trap::Port => unsafe {
            asm!("out 0xe0, al",
                 inout("rax") r.rax, inout("rcx") r.rcx, inout("rdx") r.rdx, inout("r8") r.r8,
                 inout("r9") r.r9, inout("r10") r.r10, inout("r11") r.r11, inout("r12") r.r12,
                 inout("r13") r.r13, inout("r14") r.r14, inout("r15") r.r15, options(nostack))
        },
    }
    r
}

/// Whether CPUID leaf 0x21 says "IntelTDX    ".
pub fn is_td() -> bool {
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max < 0x21 {
        return false;
    }
    let l = core::arch::x86_64::__cpuid_count(0x21, 0);
    l.ebx == u32::from_le_bytes(*b"Inte")
        && l.edx == u32::from_le_bytes(*b"lTDX")
        && l.ecx == u32::from_le_bytes(*b"    ")
}

const TDVMCALL_MAP_GPA: u64 = 0x10001;
const TDVMCALL_GET_QUOTE: u64 = 0x10002;
const TDVMCALL_STATUS_RETRY: u64 = 1;
const QUOTE_IN_FLIGHT: u64 = u64::MAX;
/// GetQuote buffer: 32 KiB (a quote with its PCK chain is about 5 KiB).
const QUOTE_BUFFER: usize = 32 << 10;
/// Polls of the GetQuote status before giving up (each a `pause`).
const QUOTE_POLLS: u64 = 4_000_000_000;

fn unavailable(what: &str) -> EvidenceError {
    EvidenceError::Unavailable(what.to_string())
}

fn zeroed(size: usize, align: usize) -> Result<*mut u8, EvidenceError> {
    let layout = Layout::from_size_align(size, align).map_err(|_| unavailable("layout"))?;
    // SAFETY: a non-zero-size layout.
    let p = unsafe { alloc_zeroed(layout) };
    if p.is_null() {
        return Err(unavailable("out of memory for the TDX buffers"));
    }
    Ok(p)
}

fn vmcall(trap: Trap, sub: u64, r12: u64, r13: u64) -> Regs {
    // SAFETY: a TDVMCALL exposing R10-R15 only; its operands are checked by the caller.
    unsafe {
        tdcall(
            trap,
            Regs {
                rax: 0,
                rcx: 0xFC00,
                r10: 0,
                r11: sub,
                r12,
                r13,
                ..Regs::default()
            },
        )
    }
}

/// MapGPA `[gpa, gpa + size)` (shared when `gpa` carries the shared bit), following
/// TDVMCALL_STATUS_RETRY with R11 = where to continue.
fn map_gpa(trap: Trap, gpa: u64, size: u64) -> Result<(), EvidenceError> {
    let end = gpa + size;
    let mut at = gpa;
    loop {
        let r = vmcall(trap, TDVMCALL_MAP_GPA, at, end - at);
        match (r.rax, r.r10) {
            (0, 0) => return Ok(()),
            (0, TDVMCALL_STATUS_RETRY) if r.r11 > at && r.r11 < end => at = r.r11,
            _ => {
                return Err(EvidenceError::Unavailable(alloc::format!(
                    "MapGPA of {gpa:#x}+{size:#x} failed (status {:#x})",
                    r.r10
                )))
            }
        }
    }
}

/// The TD's shared bit, from GPAW in TDG.VP.INFO.
pub fn shared_bit(trap: Trap) -> Result<u64, EvidenceError> {
    // SAFETY: no memory operands.
    let info = unsafe {
        tdcall(
            trap,
            Regs {
                rax: 1,
                ..Regs::default()
            },
        )
    };
    let gpaw = info.rcx & 0x3F;
    if info.rax != 0 || !(32..=52).contains(&gpaw) {
        return Err(unavailable("TDG.VP.INFO failed"));
    }
    Ok(1u64 << (gpaw - 1))
}

/// Converts the private pages `[gpa, gpa + size)` to shared (`TDVMCALL<MapGPA>` with the
/// shared bit, following RETRY); returns the shared bit. The bytes are lost (the VMM
/// scrubs converted pages), and the TD must reach them through the shared alias from
/// now on.
pub fn share(trap: Trap, gpa: u64, size: u64) -> Result<u64, EvidenceError> {
    let shared = shared_bit(trap)?;
    if gpa & shared != 0 {
        return Err(unavailable(
            "the range to share already carries the shared bit",
        ));
    }
    map_gpa(trap, gpa | shared, size)?;
    Ok(shared)
}

/// A TD quote over `report_data`: (quote bytes). The GetQuote buffer comes from the
/// shared DMA pool ([`crate::dma`], set up by `main` in a TD).
pub fn quote(trap: Trap, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
    let shared = shared_bit(trap)?;
    if crate::dma::pool_attr() != Some(shared) {
        return Err(unavailable(
            "no shared DMA pool for the GetQuote buffer (MapGPA at start-up failed?)",
        ));
    }

    // TDG.MR.REPORT: REPORTDATA 64-byte aligned, TDREPORT_STRUCT 1024-byte aligned; the
    // test guest's memory is identity-mapped, so addresses are GPAs.
    let data = zeroed(64, 64)?;
    let report = zeroed(1024, 1024)?;
    // SAFETY: `data` is our 64-byte allocation.
    unsafe { core::ptr::copy_nonoverlapping(report_data.as_ptr(), data, 64) };
    // SAFETY: both operands are our private allocations of the right size/alignment.
    let r = unsafe {
        tdcall(
            trap,
            Regs {
                rax: 4,
                rcx: report as u64,
                rdx: data as u64,
                r8: 0,
                ..Regs::default()
            },
        )
    };
    if r.rax != 0 {
        return Err(EvidenceError::Unavailable(alloc::format!(
            "TDG.MR.REPORT failed with status {:#x}",
            r.rax
        )));
    }

    // GetQuote in a shared buffer: header (version 1, status, in_len, out_len) and the
    // TDREPORT. The buffer is accessed through the pool's alias mapping; GetQuote names
    // its GPA with the shared bit (GHCI), which KVM strips before the VMM sees it.
    let dma = crate::dma::alloc(QUOTE_BUFFER)
        .map_err(|_| unavailable("out of shared memory for the GetQuote buffer"))?;
    let buf = dma.buf.as_mut_ptr();
    // SAFETY: `buf` is our QUOTE_BUFFER-byte allocation; `report` holds 1024 bytes.
    unsafe {
        (buf as *mut u64).write_volatile(1);
        (buf.add(16) as *mut u32).write_volatile(1024);
        core::ptr::copy_nonoverlapping(report, buf.add(24), 1024);
    }
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    let r = vmcall(
        trap,
        TDVMCALL_GET_QUOTE,
        dma.gpa | shared,
        QUOTE_BUFFER as u64,
    );
    if r.rax != 0 || r.r10 != 0 {
        return Err(EvidenceError::Unavailable(alloc::format!(
            "GetQuote was refused (status {:#x})",
            r.r10
        )));
    }
    let mut status = QUOTE_IN_FLIGHT;
    for _ in 0..QUOTE_POLLS {
        // SAFETY: the status word of our buffer; the VMM writes it last.
        status = unsafe { (buf.add(8) as *const u64).read_volatile() };
        if status != QUOTE_IN_FLIGHT {
            break;
        }
        core::hint::spin_loop();
    }
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    if status != 0 {
        return Err(EvidenceError::Unavailable(alloc::format!(
            "GetQuote failed with status {status:#x}"
        )));
    }
    // SAFETY: out_len at +20 of our buffer.
    let len = unsafe { (buf.add(20) as *const u32).read_volatile() } as usize;
    if len == 0 || len > QUOTE_BUFFER - 24 {
        return Err(EvidenceError::Malformed(
            "the GetQuote length overflows the buffer",
        ));
    }
    let mut out = Vec::with_capacity(len);
    // SAFETY: `len` bytes from +24 lie inside the buffer.
    unsafe {
        core::ptr::copy_nonoverlapping(buf.add(24), out.as_mut_ptr(), len);
        out.set_len(len);
    }
    Ok(out)
}
