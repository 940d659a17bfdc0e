//! A tiny long-mode KVM guest for the measurements and negative tests of this module:
//! identity-mapped 2 MiB pages over GPA 0..1 GiB, and virtual 1 GiB..2 GiB mapped to
//! `alias_base + (va - 1 GiB)` (the attribute-bit alias). The guest runs `code` at CPL0
//! (interpreted by this machine's KVM) or CPL3 (native) with `rbx` = the address to
//! touch; it reports a byte through port [`REPORT_PORT`].

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// The port the probe guest writes the byte it read to.
pub const REPORT_PORT: u16 = 0x10;
/// Where the probe's code is.
pub const CODE: u64 = 0x1_0000;
/// Virtual base of the alias window.
pub const ALIAS_VA: u64 = 1 << 30;

/// `mov al, [rbx]; out 0x10, al; jmp $` — read a byte and report it.
pub const READ: &[u8] = &[0x8a, 0x03, 0xe6, 0x10, 0xeb, 0xfe];
/// `mov al, 0x5a; mov [rbx], al; mov al, [rbx]; out 0x10, al; jmp $`.
pub const WRITE_5A: &[u8] = &[0xb0, 0x5a, 0x88, 0x03, 0x8a, 0x03, 0xe6, 0x10, 0xeb, 0xfe];

/// How one run of the probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reported this byte.
    Reported(u8),
    /// KVM_RUN failed with EFAULT and filled `kvm_run.memory_fault`.
    MemoryFault {
        /// GPA KVM reported.
        gpa: u64,
        /// Flags (bit 3: private).
        flags: u64,
    },
    /// KVM_RUN failed with this errno and no memory-fault information.
    RunError(i32),
    /// An MMIO exit at this address.
    Mmio {
        /// GPA.
        gpa: u64,
        /// Write or read.
        write: bool,
    },
    /// KVM_EXIT_INTERNAL_ERROR with this suberror.
    Internal(u32),
    /// A triple fault.
    Shutdown,
    /// Anything else.
    Other(String),
}

/// One probe VM. Slots are registered by the caller (`add_slot`).
pub struct Probe {
    /// The VM fd (declared first: closed before the memory below is unmapped).
    pub vm: VmFd,
    /// The vCPU.
    pub vcpu: VcpuFd,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

/// The first 0x20000 bytes of the probe's memory: page tables and `code`; the alias
/// window maps to `alias_base`.
pub fn boot_image(alias_base: u64, code: &[u8]) -> Vec<u8> {
    let mut mem = vec![0u8; 0x2_0000];
    let mem = &mut mem[..];
    let put = |mem: &mut [u8], at: usize, v: u64| mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
    // P | RW | US
    put(mem, 0x1000, 0x2000 | 7);
    put(mem, 0x2000, 0x3000 | 7);
    put(mem, 0x2008, 0x4000 | 7);
    for i in 0..512u64 {
        // P | RW | US | PS
        put(mem, 0x3000 + 8 * i as usize, (i << 21) | 0x87);
        put(
            mem,
            0x4000 + 8 * i as usize,
            (alias_base + (i << 21)) | 0x87,
        );
    }
    mem[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
    mem.to_vec()
}

impl Probe {
    /// A VM with one vCPU in 64-bit mode at [`CODE`], CPL3 if `cpl3`, with `rbx` set.
    pub fn new(kvm: &Kvm, cpl3: bool, rbx: u64) -> Self {
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .expect("KVM_GET_SUPPORTED_CPUID");
        vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
        let mut s = vcpu.get_sregs().expect("KVM_GET_SREGS");
        let dpl = if cpl3 { 3 } else { 0 };
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x8 | u16::from(dpl),
            type_: 0xb,
            present: 1,
            dpl,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment {
            selector: 0x10 | u16::from(dpl),
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
        s.cr3 = 0x1000;
        s.cr4 = 0x20; // PAE
        s.cr0 = 0x8000_0011; // PG | ET | PE
        s.efer = 0x500; // LME | LMA
        vcpu.set_sregs(&s).expect("KVM_SET_SREGS");
        vcpu.set_regs(&kvm_regs {
            rip: CODE,
            rbx,
            rsp: 0x8000,
            rflags: 0x3002, // IOPL 3: CPL3 may use ports
            ..Default::default()
        })
        .expect("KVM_SET_REGS");
        Self { vm, vcpu }
    }

    /// Registers `len` bytes at host address `host` as slot `slot` at `gpa`.
    ///
    /// # Safety
    /// `host..host+len` must stay mapped (or be replaced only by other mappings) while
    /// the VM exists.
    pub unsafe fn add_slot(
        &self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        len: u64,
    ) -> Result<(), kvm_ioctls::Error> {
        // SAFETY: the caller keeps the range mapped for the VM's life.
        unsafe {
            self.vm.set_user_memory_region(kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: host as u64,
            })
        }
    }

    /// Runs until the guest reports, or something else ends the run.
    pub fn run(&mut self) -> Outcome {
        let r = self.vcpu.run();
        match r {
            Ok(VcpuExit::IoOut(REPORT_PORT, d)) => Outcome::Reported(d[0]),
            Ok(VcpuExit::MemoryFault { flags, gpa, .. }) => Outcome::MemoryFault { gpa, flags },
            Ok(VcpuExit::MmioRead(gpa, _)) => Outcome::Mmio { gpa, write: false },
            Ok(VcpuExit::MmioWrite(gpa, _)) => Outcome::Mmio { gpa, write: true },
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the exit reason says `internal` is the valid union member.
                Outcome::Internal(unsafe {
                    self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror
                })
            }
            Ok(VcpuExit::Shutdown) => Outcome::Shutdown,
            Ok(e) => Outcome::Other(format!("{e:?}")),
            Err(e) => {
                let errno = e.errno();
                let run = self.vcpu.get_kvm_run();
                // SAFETY: reading plain integers of the union for diagnostics.
                let mf = unsafe { run.__bindgen_anon_1.memory_fault };
                let reason = run.exit_reason;
                let regs = self.vcpu.get_regs().unwrap();
                let sregs = self.vcpu.get_sregs().unwrap();
                eprintln!(
                    "probe: KVM_RUN errno {errno}, exit_reason {reason} mf gpa {:#x} size {:#x} flags {:#x} rip {:#x} cr2 {:#x}",
                    mf.gpa, mf.size, mf.flags, regs.rip, sregs.cr2
                );
                Outcome::RunError(errno)
            }
        }
    }
}
