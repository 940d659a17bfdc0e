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

//!
//! # The emulator traps (chosen once, by [`select_traps`])
//!
//! Under `--tee emulated-*` the VMM answers PVALIDATE, TDCALL and VMGEXIT. Where the
//! host KVM exits to the VMM on the literal instructions (this project's PVM machine)
//! the firmware executes them; on a standard KVM they raise #UD inside the guest, so
//! the firmware uses the emulator trap instead (`out 0xE1/0xE0/0xE2, al`, the same
//! registers in and out; host-vmm `tee::emu_snp` "Traps"). Protocol code is the same
//! either way; only `arch::pvalidate`, `arch::tdcall` and `arch::vmgexit` look at the
//! choice.
//!
//! **Security rule**: on real hardware the host must never be able to move the firmware
//! to a port trap, because a port "PVALIDATE" or "TDCALL" would let the host answer
//! for the PSP / TDX module (fake a validation or an accept). So the signal is one the
//! hardware fixes:
//!
//! - **SNP**: SEV_STATUS (MSR 0xC001_0131) bits 63 (emulated platform) *and* 62
//!   (instructions trap). SEV_STATUS is a read-only MSR the hardware reports for the
//!   running guest (AMD APM vol. 2, §15.34.10): in an SEV-ES/SNP guest a RDMSR of it is
//!   not intercepted and raises no #VC (the 32-bit stage reads it before any #VC
//!   handling; Linux reads it the same way in `sev_enable` / `sme_enable`, and KVM's
//!   `sev_smoke_test` reads it in an SEV-ES guest without a GHCB), so the hypervisor
//!   cannot write it. It can still influence it: bit n+2 mirrors bit n of the VMSA
//!   SEV_FEATURES the host chooses at launch, and AMD keeps assigning new bits. So the
//!   port traps are used only when SEV_STATUS is EXACTLY the emulated PSP's value
//!   (SEV|ES|SNP|bit 63, plus bit 62 for the PVALIDATE trap: [`snp_traps`]); any other
//!   value with a bit 24-63 set (unknown to this firmware; Linux's
//!   `MSR_AMD64_SNP_RESERVED_MASK`) terminates the guest, as Linux's
//!   `snp_check_features` does. Bits 62-63 are reserved on every SNP processor today.
//! - **TDX**: CPUID (0x21, 0) EAX = [`TDX_EMULATOR_INSN_TRAP_EAX`] ("Trap"). Leaf 0x21
//!   is virtualized by the TDX module itself and the host cannot configure it (it is
//!   not among the CPUID_CONFIG leaves TDH.SYS.INFO / KVM's KVM_TDX_CAPABILITIES offer;
//!   Intel's `td_cpuid.c` answers it from the module's own table): sub-leaf 0 reports
//!   EAX = 0 (the maximum sub-leaf) and "IntelTDX    ". Only sub-leaf 0 is read, which
//!   never raises #VE (other sub-leaves may, and the firmware has no #VE handler). The
//!   emulated TDX of this project is the only "module" that reports this EAX. It also
//!   starts its vCPUs with EFER.LME clear then (host-vmm `tee::emu_tdx::td_entry`: a
//!   QEMU TCG bug in the nested tier), and the 32-bit stage (`reset.rs`) sets LME after
//!   CR4.PAE when it sees the same EAX.
//!
//! Neither signal is measured, so the launch digest and RTMRs are the same with either
//! trap. Independently of the signal, a port trap on hardware cannot succeed: on TDX an
//! `out` always raises #VE (no handler in long mode: the TD stops); on SNP an
//! intercepted `out` raises #VC (no handler: the guest stops) and a non-intercepted
//! one changes no register. The PVALIDATE trap sets CF (`stc`) before the `out`: an
//! unanswered trap keeps RAX = the address, which is 0 for page 0, but CF stays set and
//! the check (RAX 0 *and* CF clear) fails; a GHCB MSR response code does not match
//! either. The firmware then terminates.

use crate::arch;
use crate::snp;

/// CPUID (0x21, 0) EAX of the emulated TDX module when TDCALL must use the emulator
/// trap ("Trap"). A real TDX module reports 0 (module docs).
pub const TDX_EMULATOR_INSN_TRAP_EAX: u32 = 0x7061_7254;

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

/// The vendor signature of CPUID (0x21, 0) on every TDX module: "IntelTDX    " in EBX,
/// EDX, ECX. Linux (`tdx_early_init`) recognises a TD by exactly these bytes.
pub const TDX_SIGNATURE: [u8; 12] = *b"IntelTDX    ";

/// The signature the emulated TDX of this project shows instead when the measured
/// command line asks for the plain handoff (`cvm.emulated_handoff=plain`): the firmware
/// runs its TDX code as under [`TDX_SIGNATURE`], and a stock kernel, which compares the
/// leaf with "IntelTDX    ", does not see a TD (its TDCALLs would raise #UD on a
/// standard KVM). A real TDX module answers leaf 0x21 itself and the host cannot
/// configure it (module docs), so no host can show this value to a real TD.
pub const TDX_SIGNATURE_EMULATED_PLAIN: [u8; 12] = *b"cvmPlainTDX ";

/// What CPUID (0x21, 0) says about TDX.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TdSignature {
    /// Not a TD.
    None,
    /// "IntelTDX    ": a TD (real, or emulated without the plain handoff).
    Tdx,
    /// [`TDX_SIGNATURE_EMULATED_PLAIN`]: the emulated TD whose VMM prepared the plain
    /// handoff.
    EmulatedPlain,
}

/// Classifies the (0x21, 0) registers EBX, EDX, ECX (the signature's order).
pub fn td_signature(ebx: u32, edx: u32, ecx: u32) -> TdSignature {
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&edx.to_le_bytes());
    sig[8..].copy_from_slice(&ecx.to_le_bytes());
    if sig == TDX_SIGNATURE {
        TdSignature::Tdx
    } else if sig == TDX_SIGNATURE_EMULATED_PLAIN {
        TdSignature::EmulatedPlain
    } else {
        TdSignature::None
    }
}

/// This vCPU's TD signature (CPUID (0x21, 0), only when the maximum basic leaf reaches
/// it; sub-leaf 0 never raises #VE).
pub fn this_td_signature() -> TdSignature {
    let (max, ..) = arch::cpuid(0, 0);
    if max < 0x21 {
        return TdSignature::None;
    }
    let (_, b, c, d) = arch::cpuid(0x21, 0);
    td_signature(b, d, c)
}

fn is_td() -> bool {
    this_td_signature() != TdSignature::None
}

/// Whether the firmware hands a TD's kernel over as a plain guest: only when the
/// emulated platform prepared it ([`TdSignature::EmulatedPlain`]) *and* the measured
/// command line asks (`want`). `Err` when the platform shows the plain signature but
/// the measured command line does not ask: the VMM would end the private-memory
/// contract for a kernel that did not request it (a host's choice the RTMRs would not
/// show), so the firmware refuses. The word under "IntelTDX    " (a real TD, or the
/// CC-aware emulated TD) changes nothing: a real TDX module cannot end the contract.
pub fn tdx_plain_handoff(sig: TdSignature, want: bool) -> Result<bool, &'static str> {
    match (sig, want) {
        (TdSignature::EmulatedPlain, true) => Ok(true),
        (TdSignature::EmulatedPlain, false) => Err(
            "the emulated TDX platform prepared a plain handoff the measured command line does not ask for",
        ),
        _ => Ok(false),
    }
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

/// SEV_STATUS bits 0-2: SEV, SEV-ES and SEV-SNP enabled.
const SEV_STATUS_SEV_ES_SNP: u64 = 0b111;
/// The SEV_STATUS bits no version of this firmware knows: 24-63 (Linux
/// `MSR_AMD64_SNP_RESERVED_MASK`; AMD keeps assigning bits below, and a new one may
/// change what the guest must do, so the firmware refuses to run with any of them set,
/// as Linux's `snp_check_features` does).
pub const SEV_STATUS_UNKNOWN: u64 = !((1 << 24) - 1);
/// SEV_STATUS of the emulated PSP when PVALIDATE uses the literal instruction.
pub const SEV_STATUS_EMULATED: u64 = SEV_STATUS_SEV_ES_SNP | snp::SEV_STATUS_EMULATOR_TRAP;
/// SEV_STATUS of the emulated PSP when PVALIDATE uses the emulator trap as well.
pub const SEV_STATUS_EMULATED_INSN_TRAP: u64 =
    SEV_STATUS_EMULATED | snp::SEV_STATUS_EMULATOR_INSN_TRAP;

/// The traps an SNP guest uses, from SEV_STATUS: `Some((vmgexit_port, insn_port))`, or
/// `None` when SEV_STATUS has a bit set this firmware does not know (the caller
/// terminates). The port traps are chosen only when SEV_STATUS is EXACTLY one of the
/// emulated PSP's two values: SEV_STATUS bit n+2 mirrors the host-chosen VMSA
/// SEV_FEATURES bit n, so a bit test alone could be satisfied by a future feature bit
/// a host turns on.
pub fn snp_traps(sev_status: u64) -> Option<(bool, bool)> {
    match sev_status {
        SEV_STATUS_EMULATED_INSN_TRAP => Some((true, true)),
        SEV_STATUS_EMULATED => Some((true, false)),
        s if s & SEV_STATUS_UNKNOWN != 0 => None,
        _ => Some((false, false)),
    }
}

/// Whether CPUID (0x21, 0) EAX asks for the TDCALL emulator trap.
pub fn tdx_insn_port_trap(eax: u32) -> bool {
    eax == TDX_EMULATOR_INSN_TRAP_EAX
}

/// The ONE place the firmware chooses its traps (module docs), before any TEE
/// instruction runs: VMGEXIT and PVALIDATE from SEV_STATUS (SNP), TDCALL from CPUID
/// (0x21, 0) EAX (TDX); literal instructions everywhere else.
pub fn select_traps(env: Env) {
    let (vmgexit, insn) = match env {
        Env::Snp { .. } => match snp_traps(arch::rdmsr(snp::SEV_STATUS)) {
            Some(traps) => traps,
            None => {
                // The literal VMGEXIT (VARS byte 0 is 0 on a real processor's entry).
                arch::set_vmgexit_port_trap(false);
                snp::terminate(snp::TERM_SNP_UNSUPPORTED)
            }
        },
        Env::Tdx => {
            let (a, ..) = arch::cpuid(0x21, 0);
            (false, tdx_insn_port_trap(a))
        }
        Env::Plain => (false, false),
    };
    arch::set_vmgexit_port_trap(vmgexit);
    arch::set_insn_port_trap(insn);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The security rule, SNP: only the emulated PSP's exact SEV_STATUS values select
    /// a port trap. Any other bit (a feature bit the host set in SEV_FEATURES, a future
    /// AMD bit, bit 62 alone) does not; bits 24-63 outside those values terminate.
    #[test]
    fn only_the_exact_emulated_psp_value_selects_a_port_trap() {
        assert_eq!(snp_traps(0b111 | 3 << 62), Some((true, true)));
        assert_eq!(snp_traps(0b111 | 1 << 63), Some((true, false)));
        for bit in 3..64u32 {
            let extra = 1u64 << bit;
            for emulated in [SEV_STATUS_EMULATED, SEV_STATUS_EMULATED_INSN_TRAP] {
                let status = emulated | extra;
                if status == SEV_STATUS_EMULATED || status == SEV_STATUS_EMULATED_INSN_TRAP {
                    continue;
                }
                let got = snp_traps(status);
                assert!(
                    !matches!(got, Some((true, _)) | Some((_, true))),
                    "{status:#x} selected a port trap"
                );
            }
        }
        // Defined features (bits 0-23): the literal instructions.
        for defined in [0b111u64, 0x00FF_FFFF, 0x0107] {
            assert_eq!(snp_traps(defined), Some((false, false)), "{defined:#x}");
        }
        // Unknown bits: refused (the firmware terminates), as Linux does.
        for unknown in [
            1u64 << 24,
            1 << 40,
            1 << 62,
            0b111 | 1 << 62,
            0x00FF_FFFF | 3 << 62,
        ] {
            assert_eq!(snp_traps(unknown), None, "{unknown:#x}");
        }
    }

    /// The plain TDX handoff needs both the emulated platform's signature and the
    /// measured word; the platform's signature alone is refused (a host choice the
    /// RTMRs would not show), and the word alone (a real TD) changes nothing.
    #[test]
    fn the_tdx_plain_handoff_needs_the_emulated_signature_and_the_measured_word() {
        let w = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let sig = |s: &[u8; 12]| td_signature(w(&s[..4]), w(&s[4..8]), w(&s[8..]));
        assert_eq!(sig(b"IntelTDX    "), TdSignature::Tdx);
        assert_eq!(
            sig(&TDX_SIGNATURE_EMULATED_PLAIN),
            TdSignature::EmulatedPlain
        );
        for other in [
            b"IntelTDX   \0",
            b"cvmPlainTDX\0",
            b"AuthenticAMD",
            b"KVMKVMKVM\0\0\0",
        ] {
            assert_eq!(sig(other), TdSignature::None, "{other:?}");
        }
        assert_eq!(
            tdx_plain_handoff(TdSignature::EmulatedPlain, true),
            Ok(true)
        );
        assert!(tdx_plain_handoff(TdSignature::EmulatedPlain, false).is_err());
        assert_eq!(tdx_plain_handoff(TdSignature::Tdx, true), Ok(false));
        assert_eq!(tdx_plain_handoff(TdSignature::Tdx, false), Ok(false));
        assert_eq!(tdx_plain_handoff(TdSignature::None, true), Ok(false));
        // Linux compares the leaf with "IntelTDX    " byte for byte: the plain signature
        // differs from it.
        assert_ne!(TDX_SIGNATURE_EMULATED_PLAIN, TDX_SIGNATURE);
    }

    /// The security rule, TDX: what a TDX module returns in (0x21, 0) EAX (0, the
    /// maximum sub-leaf; a later module with sub-leaves reports a small count) never
    /// selects the port trap.
    #[test]
    fn only_the_emulator_value_selects_the_tdcall_port_trap() {
        for module in [0u32, 1, 2, 0xFF] {
            assert!(!tdx_insn_port_trap(module), "{module:#x}");
        }
        assert_eq!(TDX_EMULATOR_INSN_TRAP_EAX, u32::from_le_bytes(*b"Trap"));
        assert!(tdx_insn_port_trap(u32::from_le_bytes(*b"Trap")));
    }
}
