//! Which trap an emulated TEE's guest uses for PVALIDATE and TDCALL
//! (`cvm launch --tee-trap auto|instruction|port`).
//!
//! - **instruction**: the literal instruction; the host KVM exits to the VMM on it
//!   (KVM_EXIT_INTERNAL_ERROR with the bytes) and the emulated PSP / TDX module answers.
//!   Only possible where KVM exits on it (this project's PVM machine); the most
//!   faithful mode: the guest runs exactly the hardware's instructions.
//! - **port**: the emulator trap `out 0xE1, al` (PVALIDATE) / `out 0xE0, al` (TDCALL)
//!   with the same registers; works on every KVM, and is the only mode on a standard
//!   KVM, where the literal instructions raise #UD inside the guest.
//! - **auto** (default): decided ONCE per process by a probe VM
//!   ([`crate::vstate::insn_probe`]): instruction where the host exits, port where it
//!   raises #UD, port (with a warning) if the probe cannot decide.
//!
//! The guest learns the choice from a signal real hardware fixes, so a host can never
//! move a real guest to the port trap (guest-firmware `env` docs): SEV_STATUS exactly
//! SEV|ES|SNP|bit 62|bit 63 for SNP (the firmware refuses any other value with a bit
//! 24-63 set, as Linux does), CPUID (0x21, 0) EAX =
//! [`TDX_INSN_TRAP_EAX`] for TDX. Neither is measured: the launch digest and the
//! RTMRs do not depend on the trap. VMGEXIT always uses its emulator trap under
//! emulation (`rep vmmcall` does not exit on either kind of KVM), and the bare-metal
//! test guest, which runs its TEE code at CPL3, always uses the port traps (selected by
//! its measured command line `cvm.tee_trap=port`).

use std::sync::OnceLock;

use crate::vstate::insn_probe::{self, InsnBehaviour};

/// CPUID (0x21, 0) EAX ("Trap"; the maximum sub-leaf, 0 on every TDX module) when the
/// emulated TD must use the TDCALL port trap; guest-firmware
/// `env::TDX_EMULATOR_INSN_TRAP_EAX`. With it the TD's vCPUs also start with EFER.LME
/// clear and the firmware sets it ([`crate::tee::emu_tdx::td_entry`]).
pub const TDX_INSN_TRAP_EAX: u32 = u32::from_le_bytes(*b"Trap");

/// The requested trap (`--tee-trap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TeeTrap {
    /// Probe the host once ([`host_insn_trap`]).
    #[default]
    Auto,
    /// The literal instruction.
    Instruction,
    /// The emulator trap.
    Port,
}

/// The trap in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsnTrap {
    /// The literal PVALIDATE / TDCALL.
    Instruction,
    /// `out 0xE1, al` / `out 0xE0, al`.
    Port,
}

impl InsnTrap {
    /// The name `--tee-trap` uses.
    pub fn name(self) -> &'static str {
        match self {
            InsnTrap::Instruction => "instruction",
            InsnTrap::Port => "port",
        }
    }
}

impl TeeTrap {
    /// The trap to use: the override, or the host's ([`host_insn_trap`]).
    pub fn resolve(self) -> InsnTrap {
        match self {
            TeeTrap::Auto => host_insn_trap(),
            TeeTrap::Instruction => InsnTrap::Instruction,
            TeeTrap::Port => InsnTrap::Port,
        }
    }
}

/// The trap this host needs, probed once per process (module docs).
pub fn host_insn_trap() -> InsnTrap {
    static HOST: OnceLock<InsnTrap> = OnceLock::new();
    *HOST.get_or_init(|| {
        let found = kvm_ioctls::Kvm::new()
            .map_err(|e| e.to_string())
            .and_then(|kvm| insn_probe::probe(&kvm).map_err(|e| error_chain(&e)));
        match found {
            Ok(InsnBehaviour::Exits) => {
                tracing::debug!("this KVM exits on PVALIDATE/TDCALL: emulated TEEs use the literal instructions");
                InsnTrap::Instruction
            }
            Ok(InsnBehaviour::RaisesUd) => {
                tracing::debug!("this KVM raises #UD for PVALIDATE/TDCALL: emulated TEEs use the emulator trap");
                InsnTrap::Port
            }
            Err(e) => {
                tracing::warn!(
                    "cannot tell how this KVM treats PVALIDATE/TDCALL ({e}); emulated TEEs use the emulator trap"
                );
                InsnTrap::Port
            }
        }
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
