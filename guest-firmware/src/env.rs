//! Which environment the firmware runs in, detected in the documented order: TDX
//! (CPUID leaf 0x21: a real TD, or `--tee emulated-tdx`, whose VMM plays the TDX module
//! for the same TDCALLs), SEV-SNP (CPUID 0x8000001F and SEV_STATUS, the C-bit from the
//! PSP-checked CPUID page; also `--tee emulated-snp`, whose VMM plays the PSP),
//! otherwise plain. The emulated TEEs are detected as the real ones: the firmware runs
//! the same code as on hardware. No project-specific mailbox is probed.
//!
//! The SNP check happens in the 32-bit stage (it must know the C-bit before it builds
//! the page tables, and CPUID raises #VC there, which only that stage handles), and a TD
//! is recognised first by entering in 32-bit mode; `detect` combines those flags with
//! the checks that are safe in long mode. The result is the same order: a TD is never
//! an SNP guest.

use crate::arch;

/// Entry flag: entered at the reset vector in 32-bit protected mode (a TD).
pub const FLAG_ENTRY32: u32 = 1;
/// Entry flag: SEV-SNP active (CPUID 0x8000001F EAX[1] and SEV_STATUS[2]).
pub const FLAG_SNP: u32 = 2;

/// The execution environment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Env {
    /// No TEE.
    Plain,
    /// Real SEV-SNP, with the C-bit at this position.
    Snp {
        /// C-bit position (CPUID 0x8000001F EBX[5:0]).
        cbit: u8,
    },
    /// TDX (CPUID leaf 0x21): a real TD, or the emulated TDX of `cvm launch --tee
    /// emulated-tdx`, where the VMM answers the same TDCALLs.
    Tdx,
}

impl Env {
    /// Name for the console.
    pub fn name(self) -> &'static str {
        match self {
            Env::Plain => "plain (no TEE)",
            Env::Snp { .. } => "SEV-SNP",
            Env::Tdx => "TDX",
        }
    }

    /// Whether measured boot uses RTMRs (TDX) rather than the SNP hashes table.
    pub fn is_tdx(self) -> bool {
        matches!(self, Env::Tdx)
    }
}

fn is_td() -> bool {
    let (max, ..) = arch::cpuid(0, 0);
    if max < 0x21 {
        return false;
    }
    let (_, b, c, d) = arch::cpuid(0x21, 0);
    // "IntelTDX    " in EBX, EDX, ECX.
    b == u32::from_le_bytes(*b"Inte")
        && d == u32::from_le_bytes(*b"lTDX")
        && c == u32::from_le_bytes(*b"    ")
}

/// Detects the environment from the 32-bit stage's `flags` and the long-mode checks.
pub fn detect(flags: u32) -> Env {
    if flags & FLAG_SNP != 0 {
        return Env::Snp {
            cbit: (flags >> 8) as u8,
        };
    }
    if is_td() {
        return Env::Tdx;
    }
    if flags & FLAG_ENTRY32 != 0 {
        // Only a TD starts in 32-bit mode; CPUID says otherwise. Treat it as plain: no
        // confidentiality is claimed, and the hashes are still checked.
        return Env::Plain;
    }
    Env::Plain
}
