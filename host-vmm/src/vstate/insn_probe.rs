//! Does this host's KVM exit to the VMM on the TEE instructions, or raise #UD in the
//! guest? Decides the emulator trap of `--tee emulated-*` ([`crate::tee::trap`]).
//!
//! A probe VM with one vCPU in 64-bit mode at CPL0 (identity-mapped 2 MiB page, a GDT,
//! an IDT whose #UD gate points at a reporter) runs
//!
//! ```text
//! pvalidate          ; f2 0f 01 ff
//! tdcall             ; 66 0f 01 cc
//! mov al, 1; out 0x10, al; hlt
//! ud_handler: mov al, 6; out 0x10, al; hlt
//! ```
//!
//! - Each instruction ends in KVM_EXIT_INTERNAL_ERROR (emulation failure, suberror 1)
//!   with its bytes in `internal.data`; the probe skips it (RIP + 4, as the emulated
//!   TEEs do) and the run reports 1: the host **exits** on both instructions (this
//!   project's PVM KVM, measured 2026-12-06: every CPL0 instruction is interpreted and
//!   an unknown one comes back to userspace).
//! - The guest reports 6: KVM re-injected #UD into the guest (a standard KVM: the #UD
//!   intercept tries the emulator with EMULTYPE_TRAP_UD and injects #UD when it fails,
//!   arch/x86/kvm/x86.c `handle_ud`; measured in the nested-KVM tier).
//! - Anything else is an error: the caller falls back to the emulator trap, which
//!   works on both kinds of host.
//!
//! The probe costs one small VM (128 KiB of memory, a few exits; ~1 ms here).

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsnBehaviour {
    /// PVALIDATE and TDCALL exit to userspace (KVM_EXIT_INTERNAL_ERROR).
    Exits,
    /// They raise #UD inside the guest.
    RaisesUd,
}

/// Why the probe could not decide.
#[derive(Debug, thiserror::Error)]
pub enum InsnProbeError {
    /// A KVM call failed.
    #[error("the TEE-instruction probe VM failed at {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The probe's memory could not be set up.
    #[error("the TEE-instruction probe VM's memory could not be set up")]
    Memory,
    /// The probe VM ended in a way neither kind of host produces.
    #[error("the TEE-instruction probe VM ended unexpectedly: {0}")]
    Unexpected(String),
}

const MEM: usize = 0x2_0000;
const PML4: u64 = 0x1000;
const GDT: u64 = 0x500;
const IDT: u64 = 0x4000;
const STACK_TOP: u64 = 0x8000;
const CODE: u64 = 0x1_0000;
const UD_HANDLER: u64 = 0x1_0100;
const REPORT_PORT: u16 = 0x10;
const REPORT_DONE: u8 = 1;
const REPORT_UD: u8 = 6;
const INSN_LEN: u64 = 4;
/// KVM_INTERNAL_ERROR_EMULATION.
const SUBERROR_EMULATION: u32 = 1;

/// pvalidate; tdcall; mov al, 1; out 0x10, al; hlt
const PROGRAM: &[u8] = &[
    0xf2,
    0x0f,
    0x01,
    0xff,
    0x66,
    0x0f,
    0x01,
    0xcc,
    0xb0,
    REPORT_DONE,
    0xe6,
    0x10,
    0xf4,
];
/// mov al, 6; out 0x10, al; hlt
const HANDLER: &[u8] = &[0xb0, REPORT_UD, 0xe6, 0x10, 0xf4];

/// The probe's memory image: page tables, GDT, IDT (gate 6), program, handler.
fn image() -> Vec<u8> {
    let mut m = vec![0u8; MEM];
    let mut put =
        |at: u64, v: u64| m[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    put(PML4, 0x2000 | 3);
    put(0x2000, 0x3000 | 3);
    put(0x3000, 0x83); // 0-2 MiB, present, writable, 2 MiB page
    put(GDT + 8, 0x00af_9a00_0000_ffff); // 64-bit code, DPL 0
    put(GDT + 16, 0x00cf_9200_0000_ffff); // data
                                          // Interrupt gate 6 (#UD): offset, selector 8, present, DPL 0, type 0xE.
    let gate_lo = (UD_HANDLER & 0xffff) | (8 << 16) | (0x8e00 << 32) | ((UD_HANDLER >> 16) << 48);
    put(IDT + 6 * 16, gate_lo);
    put(IDT + 6 * 16 + 8, UD_HANDLER >> 32);
    m[CODE as usize..CODE as usize + PROGRAM.len()].copy_from_slice(PROGRAM);
    m[UD_HANDLER as usize..UD_HANDLER as usize + HANDLER.len()].copy_from_slice(HANDLER);
    m
}

/// Runs the probe on `kvm`.
pub fn probe(kvm: &Kvm) -> Result<InsnBehaviour, InsnProbeError> {
    let err = |what| move |e| InsnProbeError::Kvm(what, e);
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)])
        .map_err(|_| InsnProbeError::Memory)?;
    mem.write_slice(&image(), GuestAddress(0))
        .map_err(|_| InsnProbeError::Memory)?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|_| InsnProbeError::Memory)?;
    let vm = kvm.create_vm().map_err(err("KVM_CREATE_VM"))?;
    // SAFETY: `mem` maps MEM bytes at `host` and outlives `vm` (declared after it, so
    // dropped first at the end of this function); one slot, nothing overlaps it.
    unsafe {
        vm.set_user_memory_region(kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: host as u64,
        })
    }
    .map_err(err("KVM_SET_USER_MEMORY_REGION"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(err("KVM_CREATE_VCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(err("KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    let mut s = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3,
        l: 0,
        db: 1,
        ..code
    };
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.gdt = kvm_dtable {
        base: GDT,
        limit: 23,
        ..Default::default()
    };
    s.idt = kvm_dtable {
        base: IDT,
        limit: 16 * 32 - 1,
        ..Default::default()
    };
    s.cr3 = PML4;
    s.cr4 = 0x20; // PAE
    s.cr0 = 0x8000_0011; // PG | ET | PE
    s.efer = 0x500; // LME | LMA
    vcpu.set_sregs(&s).map_err(err("KVM_SET_SREGS"))?;
    vcpu.set_regs(&kvm_regs {
        rip: CODE,
        rsp: STACK_TOP,
        rflags: 0x2,
        ..Default::default()
    })
    .map_err(err("KVM_SET_REGS"))?;

    let mut exits = 0u32;
    // Two instruction exits and one report at most.
    for _ in 0..4 {
        let outcome = match vcpu.run() {
            Ok(VcpuExit::IoOut(REPORT_PORT, d)) => Err(d.first().copied()),
            Ok(VcpuExit::InternalError) => Ok(()),
            Ok(other) => return Err(InsnProbeError::Unexpected(format!("{other:?}"))),
            Err(e) => return Err(InsnProbeError::Kvm("KVM_RUN", e)),
        };
        match outcome {
            Ok(()) => {
                // SAFETY: the exit reason says `internal` is the valid union member.
                let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                if sub != SUBERROR_EMULATION {
                    return Err(InsnProbeError::Unexpected(format!(
                        "KVM_EXIT_INTERNAL_ERROR suberror {sub}"
                    )));
                }
                let mut r = vcpu.get_regs().map_err(err("KVM_GET_REGS"))?;
                if r.rip != CODE + u64::from(exits) * INSN_LEN {
                    return Err(InsnProbeError::Unexpected(format!(
                        "emulation failure at {:#x}",
                        r.rip
                    )));
                }
                r.rip += INSN_LEN;
                vcpu.set_regs(&r).map_err(err("KVM_SET_REGS"))?;
                exits += 1;
            }
            Err(Some(REPORT_UD)) if exits == 0 => return Ok(InsnBehaviour::RaisesUd),
            Err(Some(REPORT_DONE)) if exits == 2 => return Ok(InsnBehaviour::Exits),
            Err(v) => {
                return Err(InsnProbeError::Unexpected(format!(
                    "report {v:?} after {exits} instruction exits"
                )))
            }
        }
    }
    Err(InsnProbeError::Unexpected("no report".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe agrees with the KVM module that is loaded: PVM (`kvm_pvm`, this
    /// machine) exits on both instructions; a standard KVM (`kvm_amd` / `kvm_intel`,
    /// e.g. the nested tier) raises #UD in the guest.
    #[test]
    fn the_probe_matches_the_loaded_kvm_module() {
        test_kit::require!(kvm);
        let kvm = Kvm::new().expect("/dev/kvm");
        let got = probe(&kvm).expect("the probe decides");
        let module = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
        if module("kvm_pvm") {
            assert_eq!(got, InsnBehaviour::Exits, "PVM KVM");
        } else if module("kvm_amd") || module("kvm_intel") {
            assert_eq!(got, InsnBehaviour::RaisesUd, "standard KVM");
        }
        // Run twice: the probe leaves nothing behind.
        assert_eq!(probe(&kvm).expect("again"), got);
    }
}
