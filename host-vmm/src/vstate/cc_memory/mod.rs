//! The private-memory contract of the emulated TEEs (`--tee emulated-snp|emulated-tdx`).
//!
//! On SEV-SNP and TDX hardware, private guest memory after launch holds only what the
//! launch measured or what the guest wrote: a host write never reaches the guest, a host
//! read sees ciphertext, and a guest access to a private page it has not validated
//! (SNP `PVALIDATE`) or accepted (TDX `TDG.MEM.PAGE.ACCEPT`) faults. On a default KVM
//! VM all of that is ordinary memory, so a VMM or firmware bug that relies on the host
//! seeing or writing private memory passes under emulation and fails on hardware (issue
//! 13: the TD boot-data descriptor written only to the shared view; ACPI tables left in
//! shared memory). [`CcMemory`] enforces the contract with the host's MMU instead.
//!
//! # Design
//!
//! - Guest RAM (and the firmware range) lives in one **memfd**. The VMM's view (the
//!   [`GuestMemoryMmap`] devices and loaders use, [`CcMemory::vmm_memory`]) and the
//!   guest's views (the KVM memslots) are **separate mappings** of it.
//! - A **page-state map** ([`pages::PageMap`], runs of 4 KiB pages) holds each page's
//!   [`PageState`]: `Shared`, `Private` (not validated/accepted) or
//!   `Validated(4K|2M)`. Bulk operations touch runs, not pages: validating a 4 GiB guest
//!   2 MiB at a time keeps one run.
//! - **Guest views** are protected per run with `mprotect`: a page is readable and
//!   writable in a view only when the guest may access it there; anything else is
//!   `PROT_NONE`, so KVM cannot map it and the access comes back to the VMM as a fault
//!   with its GPA (see *Measured facts*), which [`CcMemory::classify`] turns into a
//!   [`GuestFault`] ("guest accessed private page 0x…: SNP #VC page-not-validated").
//! - Optionally ([`CcConfig::alias_bit`]) each RAM range gets a second memslot at
//!   `GPA | 1 << bit`, mapping the same memfd bytes: the **attribute bit** (SNP C-bit:
//!   set = private; TDX shared bit: set = shared). Each alias is protected for its own
//!   role, so a guest access with the wrong attribute faults as on hardware. Without
//!   the alias, one view at the plain GPA serves both roles (shared or validated pages
//!   are accessible).
//! - **At launch** the VMM view maps the memfd everywhere, so loaders and the launch
//!   (the emulated PSP / TDX module) see what they write.
//!   [`CcMemory::launch_private_with`] copies the launch's source bytes into a page and
//!   marks it private and validated, as LAUNCH_UPDATE / INIT_MEM_REGION do (so a VMM
//!   write only into its own view is lost there, as on hardware);
//!   [`CcMemory::launch_private`] keeps what the VMM view holds.
//!   [`CcMemory::finish_launch`] then scrubs every private page that was not launched
//!   (hole punched in the memfd: it reads zero) and replaces every private page of the
//!   VMM view by an anonymous `MAP_FIXED` mapping: VMM writes land in a throwaway page
//!   that never reaches the guest, VMM reads see zeros (or their own throwaway writes;
//!   ciphertext would be useless anyway).
//! - **Conversions** ([`CcMemory::convert`]): private→shared and shared→private both
//!   scrub the page (the guest never sees its private data through the shared view, and
//!   a page made private holds nothing the host put there); after launch the VMM view
//!   follows (memfd for shared, anonymous for private). A 4 KiB conversion inside a
//!   2 MiB validated unit first splits it into 4 KiB validated pages (KVM's PSMASH).
//! - **Validation** ([`CcMemory::validate`], SNP PVALIDATE with the software RMP's
//!   results) and **acceptance** ([`CcMemory::accept`], TDX, zeroing the page as the TDX
//!   module does) change `Private` ↔ `Validated`.
//!
//! # API (for the emulated backends)
//!
//! ```text
//! CcMemory::new(&memory::layout(..)?, CcConfig { tee, alias_bit })  -> CcMemory
//! cc.register(&vm_fd, first_slot)          -> next free slot   (memslots: plain, then alias)
//! cc.vmm_memory()                          -> &GuestMemoryMmap (the VMM's view)
//! cc.launch_private_with(gpa, &bytes)      // measured launch pages from the launch's source bytes
//! cc.launch_private(gpa, len)              // the same, keeping what the VMM view holds there
//! cc.launch_shared(gpa, len)               // SNP: hypervisor-owned at launch, VMM contents kept
//! cc.convert(gpa, len, to_private)         -> Ok(changed)  (page-state change / MapGPA; scrubs changed pages)
//! cc.finish_launch()                       // from here on private memory is sealed from the VMM
//! cc.validate(gpa, PageSize, validate)     -> Ok(changed) | Err(RmpError)     (SNP PVALIDATE)
//! cc.accept(gpa, PageSize)                 -> Ok(()) | Err(AcceptError)       (TDX PAGE.ACCEPT)
//! cc.classify(fault_gpa)                   -> GuestFault { gpa, state, kind, tee } (Display: the stop message)
//! cc.classify_mmio(mmio_gpa)               -> Option<GuestFault>  (None: a real device access)
//! cc.expose_faults()                       // on EFAULT without memory-fault info: hole mode, then re-run
//! cc.state(gpa)                            -> Option<PageState>
//! cc.trusted_read(gpa, &mut buf) / cc.trusted_write(gpa, &data)  // the emulated PSP / TDX module only
//! cc.end_contract()                        // plain handoff: every page shared, contents kept, no isolation
//! host_alias_bit(&kvm)                     -> Option<u32>  (the attribute bit for this host)
//! ```
//!
//! The vCPU loop offers exits to the emulated backend's `ExitHandler`, which uses this
//! module like this: `KVM_EXIT_MEMORY_FAULT { gpa }` → `classify(gpa)`; `KVM_EXIT_MMIO`
//! at `gpa` → [`CcMemory::serve_mmio`] first, the device bus only for
//! [`MmioAccess::Device`]; `KVM_RUN` = `EFAULT` without memory-fault information →
//! `expose_faults()` and run again (once; a second EFAULT is a fetch fault, below, or a
//! plain run error). An MMIO exit at RAM that is accessible in its view
//! ([`FaultKind::Accessible`]) raced with a state change: KVM will not repeat the access
//! (a read completes from `kvm_run.mmio.data`, a write is gone), so `serve_mmio` carries
//! it out on guest memory. An instruction *fetch* from a protected page
//! is an emulation failure (`KVM_EXIT_INTERNAL_ERROR`, suberror 1) at CPL0 and the
//! same EFAULT at CPL3 (measured): when the bytes at CS:RIP cannot be read, translate
//! RIP through the guest's page tables (read with [`CcMemory::trusted_read`]) and
//! `classify` that GPA. Everything else ends the VM with the fault's message.
//! [`crate::vstate::vm::Vm::new_emulated_confidential`] builds the VM.
//!
//! Every operation takes GPAs with or without the attribute bit (it is stripped). All
//! methods take `&self` (one lock around the page-state map and the protections); the
//! vCPU threads call `validate`/`accept`/`convert`/`classify`, so their seccomp filter
//! must allow `mprotect`, `mmap` (MAP_FIXED), and `fallocate` (the lead wires this).
//!
//! # Choosing the mode
//!
//! - **Single view** (`alias_bit: None`): catches VMM writes after launch, unmeasured
//!   launch data, and accesses to unvalidated/unaccepted pages. It cannot see *which*
//!   attribute the guest used, so a guest that maps shared memory as private (issue 13,
//!   bug 7: ACPI tables left in shared memory, mapped encrypted by Linux) is caught only
//!   if that memory is still private (scrubbed at launch, so it reads zero or faults).
//! - **Alias** (`alias_bit: Some(host_alias_bit(..))`): also catches wrong-attribute
//!   accesses, as the hardware's #NPF / EPT violation. On SNP only C-bit-*set*
//!   accesses to shared pages: the hardware treats instruction fetches, guest
//!   page-table walks and all accesses with paging off as private whatever the C-bit
//!   (the firmware's reset path and its CR3 use plain GPAs), and KVM does not tell the
//!   VMM which kind of access faulted, so the plain view serves validated private pages
//!   as well as shared ones; a C-bit-clear *data* access to a validated private page
//!   is not caught (unvalidated pages fault in both views). The guest must learn the bit the
//!   way it does on hardware: SNP from CPUID 0x8000001F EBX bits 5:0 (the C-bit
//!   position; real parts say 51, the emulation says 47 here, which the guest must
//!   accept, and EBX bits 11:6 the reduction of its physical-address width); TDX from
//!   GPAW in TDG.VP.INFO (shared bit = GPAW - 1: GPAW 48 gives bit 47, exactly the
//!   hardware's value on this host). The emulated backends report these values.
//! - A `CcMemory` keeps a duplicate of its VM's fd (for hole mode), so the KVM VM
//!   object lives until the `CcMemory` drops.
//!
//! # Measured facts (this machine: PVM KVM, 48-bit host physical addresses)
//!
//! Measured by the tests in `facts.rs` (`cargo test -p host-vmm --lib cc_memory::facts
//! -- --nocapture` prints them):
//!
//! - **An alias memslot works.** A second memslot mapping the *same* memfd pages at
//!   `GPA | 1 << 47` is accepted, and guest accesses through it at CPL0 (interpreted)
//!   and CPL3 (native) reach the same bytes as the plain GPA (a write through the alias
//!   is read back through the host's mapping of the plain slot). A slot at `1 << 51` is
//!   *accepted* too on this 48-bit host, but the guest cannot reach it: a PTE with
//!   bit 51 has a reserved bit set (guest MAXPHYADDR 48), the #PF cannot be delivered
//!   here and the vCPU triple-faults. So the attribute bit must be below the guest's
//!   MAXPHYADDR ([`host_alias_bit`]: physical-address bits - 1, 47 here).
//! - **A protected page is caught, but how depends on the CPL.** With the host mapping
//!   behind a memslot page `PROT_NONE` (or unmapped), a guest read
//!   - at CPL0 (KVM's emulator) is a `KVM_EXIT_MMIO` read *at the faulting GPA*
//!     (plain or alias): the emulator's guest-memory read fails and it falls back to
//!     MMIO. [`CcMemory::classify_mmio`] recognises it (the address is RAM).
//!   - at CPL3 (native) makes `KVM_RUN` fail with `EFAULT` and **no**
//!     `KVM_EXIT_MEMORY_FAULT` information (exit reason 0, `memory_fault` zero), even
//!     though `KVM_CAP_MEMORY_FAULT_INFO` is 1, RIP still at the instruction and CR2
//!     unchanged: the VMM cannot tell the GPA.
//!   - A guest *write* is the same: an MMIO write exit at the GPA at CPL0, EFAULT
//!     without information at CPL3. An instruction *fetch* from a protected page is an
//!     emulation failure (`KVM_EXIT_INTERNAL_ERROR`, suberror 1) at CPL0 and EFAULT at
//!     CPL3.
//!   - A GPA with *no memslot* is an MMIO exit at that GPA at CPL0 and at CPL3. Hence
//!     *hole mode* ([`CcMemory::expose_faults`]): on that EFAULT the vCPU loop switches
//!     the layout to one memslot per accessible run and re-runs the vCPU; the same
//!     instruction then exits as MMIO at the GPA.
//! - **Costs** (`cost_of_protecting_and_replacing_host_pages`, 2 cores, idle-ish):
//!   `mprotect` of 4 KiB ~10 µs; of a uniform 2 MiB run ~5-10 µs; of 2 MiB spanning
//!   512 alternating VMAs ~0.8 ms; `fallocate(PUNCH_HOLE)` of 2 MiB of touched pages
//!   ~0.8 ms (freeing them; untouched holes are ~µs); `MAP_FIXED` anonymous 2 MiB
//!   ~8 µs. A memslot delete + create ~5-11 ms (an SRCU grace period each), which is
//!   why slots are not the normal enforcement. **VMA count**: every run boundary is a
//!   VMA in each view (plain, alias, VMM): 16384 alternating 4 KiB protections made
//!   32768 VMAs, and 32768 of them (256 MiB alternating) exceed the default
//!   `vm.max_map_count` (65530) so `mprotect` fails with ENOMEM
//!   ([`CcMemoryError::Remap`]: the VM must stop). Guests convert in large runs (2 MiB
//!   validation, a contiguous swiotlb), so this is far away in practice; the limit is
//!   the operator's `vm.max_map_count`.
//! - Per 2 MiB operation, then: `validate`/`accept` of an unvalidated 2 MiB page is one
//!   or two `mprotect`s plus (accept) one hole punch, in the tens of µs to ~1 ms; a
//!   4 GiB guest in 2048 such steps stays one run in the page map.
//!
//! # On a standard KVM
//!
//! Expected, not measured here (the nested-KVM tier of the Linux-guests issue will
//! measure it): with hardware paging (EPT/NPT, TDP MMU) a guest access at any CPL to a
//! `PROT_NONE` page fails `__kvm_faultin_pfn`, and since Linux 6.8 `kvm_handle_error_pfn`
//! fills `kvm_run.memory_fault` (`KVM_EXIT_MEMORY_FAULT`, the page's GPA, flags 0) before
//! returning `-EFAULT`; kvm-ioctls returns that as `VcpuExit::MemoryFault`, which goes to
//! [`CcMemory::classify`]. Accesses KVM emulates (MMIO-adjacent instructions, real mode)
//! fall back to MMIO exits as here. An older kernel without memory-fault information
//! behaves like this machine's CPL3 path: hole mode covers it. The alias bit must be
//! below the guest's MAXPHYADDR, which differs per host (QEMU's TCG CPU in the nested
//! tier defaults to 40 bits): take it from [`host_alias_bit`], never a constant.

pub mod pages;
mod sys;

#[cfg(test)]
mod facts;
#[cfg(test)]
mod probe;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

pub use pages::{OutsideRam, PageMap, PageSize, PageState, Run};
use sys::Mapping;

const PAGE: u64 = 4096;
/// Most memslots hole mode uses (KVM allows 32764 per address space). A `CcMemory`
/// owns every slot from its `first_slot` up to this many.
const MAX_HOLE_SLOTS: u32 = 16384;

/// The attribute bit for guests on this host: the guest's physical-address width
/// (KVM's supported CPUID 0x80000008 EAX bits 7:0) minus one, so the alias lies inside the
/// addressable space (see *Measured facts*). `None` if KVM reports no width.
pub fn host_alias_bit(kvm: &kvm_ioctls::Kvm) -> Option<u32> {
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .ok()?;
    let bits = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)?
        .eax
        & 0xff;
    (bits > 33).then(|| bits - 1)
}

/// Which TEE's rules and vocabulary apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcTee {
    /// SEV-SNP: the attribute bit is the C-bit (set = private); PVALIDATE.
    Snp,
    /// TDX: the attribute bit is the shared bit (set = shared); PAGE.ACCEPT.
    Tdx,
}

/// How [`CcMemory`] maps the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CcConfig {
    /// The TEE.
    pub tee: CcTee,
    /// The attribute bit's position (GPA bit), if the guest uses one: each RAM range is
    /// then also mapped at `GPA | 1 << bit`. Must be above every RAM address and below
    /// the host's physical-address width (47 on a 48-bit host).
    pub alias_bit: Option<u32>,
}

/// Errors setting up or changing the private-memory contract.
#[derive(Debug, thiserror::Error)]
pub enum CcMemoryError {
    /// The memfd or a mapping of it could not be made.
    #[error("cannot set up the guest memory backing ({what})")]
    Backing {
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM's view could not be built.
    #[error("cannot build the VMM's view of guest memory")]
    VmmView(#[source] vm_memory::GuestRegionCollectionError),
    /// The attribute bit does not fit the layout.
    #[error(
        "attribute bit {bit} is not above every RAM address (up to {top:#x}) or is beyond bit 51"
    )]
    BadAliasBit {
        /// The bit.
        bit: u32,
        /// One past the highest RAM address.
        top: u64,
    },
    /// Two RAM ranges overlap.
    #[error("RAM ranges overlap at {gpa:#x}")]
    Overlap {
        /// Start of the second range.
        gpa: u64,
    },
    /// A range is not page-aligned.
    #[error("range {gpa:#x}+{len:#x} is not 4 KiB-aligned")]
    Unaligned {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A range is not all guest RAM.
    #[error("range is not guest RAM")]
    Outside(#[from] OutsideRam),
    /// A launch step after `finish_launch`.
    #[error("{0} is a launch step, but the launch is finished")]
    AfterLaunch(&'static str),
    /// A step that needs the finished launch, before `finish_launch`.
    #[error("{0} needs a finished launch")]
    BeforeLaunch(&'static str),
    /// A page-state change after `end_contract`: every page is ordinary shared memory.
    #[error("{0}: the private-memory contract has ended (plain handoff)")]
    ContractEnded(&'static str),
    /// KVM refused a memslot.
    #[error("KVM refused memory slot {slot} at {gpa:#x}")]
    Register {
        /// Slot number.
        slot: u32,
        /// Guest physical address.
        gpa: u64,
        /// The KVM error.
        #[source]
        source: std::io::Error,
    },
    /// Hole mode needs a VM (`register` first).
    #[error("guest memory is not registered with a VM")]
    NotRegistered,
    /// Too many runs for hole mode's memslots.
    #[error("guest memory is too fragmented for one memslot per accessible run")]
    TooFragmented,
    /// Changing a protection or mapping failed (the page states are then unchanged but
    /// some views may be stale: the VM must stop).
    #[error("cannot change the host mapping of {gpa:#x}+{len:#x} ({what})")]
    Remap {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a PVALIDATE failed, with the hardware's result codes (AMD APM vol. 3, PVALIDATE;
/// Linux `arch/x86/include/asm/sev.h`).
#[derive(Debug, thiserror::Error)]
pub enum RmpError {
    /// `PVALIDATE_FAIL_INPUT` (1): misaligned or not guest memory.
    #[error("PVALIDATE of {gpa:#x}: FAIL_INPUT (misaligned or not guest memory)")]
    FailInput {
        /// The GPA.
        gpa: u64,
    },
    /// `PVALIDATE_FAIL_SIZEMISMATCH` (6): a 2 MiB PVALIDATE over pages the RMP holds as
    /// 4 KiB entries.
    #[error("PVALIDATE of {gpa:#x}: FAIL_SIZEMISMATCH (the RMP holds 4 KiB entries there)")]
    SizeMismatch {
        /// The GPA.
        gpa: u64,
    },
    /// The page is not assigned to the guest (shared): hardware raises #NPF with an RMP
    /// fault, which KVM reports as a private access to a shared GPA. The backend either
    /// converts (as QEMU does on that exit) and retries, or stops the guest.
    #[error("PVALIDATE of {gpa:#x}: the page is shared (not assigned to the guest): #NPF (RMP)")]
    NotAssigned {
        /// The first shared page.
        gpa: u64,
    },
    /// The host could not apply the change (the VM must stop).
    #[error("PVALIDATE of {gpa:#x}: the host could not apply it")]
    Host {
        /// The GPA.
        gpa: u64,
        /// Why.
        #[source]
        source: Box<CcMemoryError>,
    },
}

impl RmpError {
    /// PVALIDATE's RAX result for this error, if it is a result (not a fault).
    pub fn pvalidate_code(&self) -> Option<u64> {
        match self {
            RmpError::FailInput { .. } => Some(1),
            RmpError::SizeMismatch { .. } => Some(6),
            RmpError::NotAssigned { .. } | RmpError::Host { .. } => None,
        }
    }
}

/// Why a TDG.MEM.PAGE.ACCEPT failed (TDX module ABI; the backend maps these to the
/// status codes it returns in RAX).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Misaligned or not guest memory (`TDX_OPERAND_INVALID`).
    #[error("PAGE.ACCEPT of {gpa:#x}: operand invalid (misaligned or not guest memory)")]
    OperandInvalid {
        /// The GPA.
        gpa: u64,
    },
    /// The page is already accepted (`TDX_PAGE_ALREADY_ACCEPTED`).
    #[error("PAGE.ACCEPT of {gpa:#x}: already accepted")]
    AlreadyAccepted {
        /// The GPA.
        gpa: u64,
    },
    /// A 2 MiB accept over 4 KiB-accepted pages (`TDX_PAGE_SIZE_MISMATCH`).
    #[error("PAGE.ACCEPT of {gpa:#x}: page size mismatch (4 KiB pages already accepted there)")]
    SizeMismatch {
        /// The GPA.
        gpa: u64,
    },
    /// The page is shared (not mapped private): the access is an EPT violation KVM
    /// reports as a private access to a shared GPA.
    #[error("PAGE.ACCEPT of {gpa:#x}: the page is shared (not mapped private)")]
    NotPrivate {
        /// The first shared page.
        gpa: u64,
    },
    /// The host could not apply the change (the VM must stop).
    #[error("PAGE.ACCEPT of {gpa:#x}: the host could not apply it")]
    Host {
        /// The GPA.
        gpa: u64,
        /// Why.
        #[source]
        source: Box<CcMemoryError>,
    },
}

impl AcceptError {
    /// The TDCALL status (RAX) for this error, if it is a status (not a fault): the TDX
    /// module ABI's codes, as Linux `arch/x86/include/asm/shared/tdx_errno.h` and TDVF
    /// name them.
    pub fn tdx_status(&self) -> Option<u64> {
        match self {
            AcceptError::OperandInvalid { .. } => Some(0xC000_0100_0000_0000),
            AcceptError::AlreadyAccepted { .. } => Some(0x0000_0B0A_0000_0000),
            AcceptError::SizeMismatch { .. } => Some(0xC000_0B0B_0000_0000),
            AcceptError::NotPrivate { .. } | AcceptError::Host { .. } => None,
        }
    }
}

/// What a guest's faulting access did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A private access to a private page the guest has not validated / accepted.
    NotValidated,
    /// A private (C-bit set / shared bit clear) access to a shared page.
    PrivateAccessToShared,
    /// A shared access to a private page.
    SharedAccessToPrivate,
    /// The address is not guest RAM (neither view).
    NotRam,
    /// The page is accessible in that view now (a fault raced with a state change, or
    /// the fault is not about page states).
    Accessible,
}

/// A guest access the contract refused, as the vCPU loop reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestFault {
    /// The GPA the guest used (with the attribute bit, if any).
    pub gpa: u64,
    /// The page's state, if it is RAM.
    pub state: Option<PageState>,
    /// What was wrong.
    pub kind: FaultKind,
    /// Whose vocabulary the message uses.
    pub tee: CcTee,
}

/// What [`CcMemory::serve_mmio`] did with an MMIO exit.
#[derive(Debug)]
pub enum MmioAccess {
    /// Not guest RAM: a device access.
    Device,
    /// Guest RAM accessible in that view: served from guest memory.
    Served,
    /// An access the hardware would fault.
    Fault(GuestFault),
    /// Serving an accessible page failed on the host side.
    Failed(CcMemoryError),
}

impl std::fmt::Display for GuestFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gpa = self.gpa;
        match (self.kind, self.tee) {
            (FaultKind::NotValidated, CcTee::Snp) => write!(
                f,
                "guest accessed unvalidated private page {gpa:#x}: SNP #VC page-not-validated"
            ),
            (FaultKind::NotValidated, CcTee::Tdx) => write!(
                f,
                "guest accessed unaccepted private page {gpa:#x}: TDX #VE (EPT violation on a pending page)"
            ),
            (FaultKind::PrivateAccessToShared, CcTee::Snp) => write!(
                f,
                "guest accessed shared page {gpa:#x} as private (C-bit set): SNP #NPF (RMP violation)"
            ),
            (FaultKind::PrivateAccessToShared, CcTee::Tdx) => write!(
                f,
                "guest accessed shared page {gpa:#x} as private (shared bit clear): TDX EPT violation"
            ),
            (FaultKind::SharedAccessToPrivate, CcTee::Snp) => write!(
                f,
                "guest accessed private page {gpa:#x} as shared (C-bit clear): SNP #NPF (RMP violation)"
            ),
            (FaultKind::SharedAccessToPrivate, CcTee::Tdx) => write!(
                f,
                "guest accessed private page {gpa:#x} as shared (shared bit set): TDX EPT violation"
            ),
            (FaultKind::NotRam, _) => write!(f, "guest accessed {gpa:#x}, which is not guest RAM"),
            (FaultKind::Accessible, _) => write!(
                f,
                "guest fault at {gpa:#x} on a page accessible in that view ({:?})",
                self.state
            ),
        }
    }
}

/// The role of one guest view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The only view: shared and validated pages are accessible.
    Both,
    /// Private accesses: validated pages only.
    Private,
    /// Shared accesses: shared pages only.
    Shared,
}

impl Role {
    fn allows(self, s: PageState) -> bool {
        match self {
            Role::Both => !matches!(s, PageState::Private),
            Role::Private => matches!(s, PageState::Validated(_)),
            Role::Shared => matches!(s, PageState::Shared),
        }
    }
}

/// One RAM range and its mappings.
#[derive(Debug)]
struct Region {
    gpa: u64,
    len: u64,
    /// Offset in the memfd.
    file_off: u64,
    /// Host address of the VMM view of the range (owned by `CcMemory::vmm`).
    vmm_ptr: *mut u8,
    /// The guest view at the plain GPA.
    plain: Mapping,
    /// The guest view at `GPA | alias bit`.
    alias: Option<Mapping>,
}

#[derive(Debug)]
struct Inner {
    pages: PageMap,
    launched: bool,
    /// The VM (a dup of its fd) and the slots in use, once registered.
    vm: Option<File>,
    slots: Vec<u32>,
    first_slot: u32,
    /// Inaccessible runs are memslot holes (see [`CcMemory::expose_faults`]).
    holes: bool,
    /// The largest page the host backs private memory with (see
    /// [`CcMemory::set_largest_private_page`]).
    largest: PageSize,
}

/// Guest memory under the private-memory contract. See the module docs.
#[derive(Debug)]
pub struct CcMemory {
    tee: CcTee,
    alias_bit: Option<u32>,
    plain_role: Role,
    alias_role: Role,
    /// [`CcMemory::end_contract`] ran: every view serves every page (roles `Both`).
    ended: AtomicBool,
    regions: Vec<Region>,
    inner: Mutex<Inner>,
    vmm: GuestMemoryMmap,
    memfd: File,
}

// SAFETY: `Region::vmm_ptr` points into the VMM view owned by `vmm`, which lives as long
// as `self`; it is only used for MAP_FIXED replacement under the `inner` lock.
unsafe impl Send for CcMemory {}
// SAFETY: as above; all mutation goes through the `inner` lock.
unsafe impl Sync for CcMemory {}

fn remap_err(
    gpa: u64,
    len: u64,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> CcMemoryError {
    move |source| CcMemoryError::Remap {
        gpa,
        len,
        what,
        source,
    }
}

impl CcMemory {
    /// Guest memory for the `(start, size)` ranges of [`super::memory::layout`], every
    /// page private and not validated, zero-filled.
    pub fn new(ranges: &[(GuestAddress, usize)], config: CcConfig) -> Result<Self, CcMemoryError> {
        let top = ranges
            .iter()
            .map(|(a, l)| a.0.saturating_add(*l as u64))
            .max()
            .unwrap_or(0);
        let mut sorted: Vec<(u64, u64)> = ranges.iter().map(|(a, l)| (a.0, *l as u64)).collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(CcMemoryError::Overlap { gpa: w[1].0 });
        }
        if let Some(bit) = config.alias_bit {
            if bit > 51 || (1u64 << bit) < top {
                return Err(CcMemoryError::BadAliasBit { bit, top });
            }
        }
        for &(a, l) in ranges {
            if a.0 % PAGE != 0 || l as u64 % PAGE != 0 {
                return Err(CcMemoryError::Unaligned {
                    gpa: a.0,
                    len: l as u64,
                });
            }
        }
        let total: u64 = ranges.iter().map(|(_, l)| *l as u64).sum();
        let memfd =
            sys::memfd("cvm-guest-ram", total).map_err(|source| CcMemoryError::Backing {
                what: "memfd",
                source,
            })?;
        let mut regions = Vec::new();
        let mut vmm_regions = Vec::new();
        let mut file_off = 0;
        for &(GuestAddress(gpa), len) in ranges {
            let len = len as u64;
            let file = memfd.try_clone().map_err(|source| CcMemoryError::Backing {
                what: "dup of the memfd",
                source,
            })?;
            let vmm = MmapRegion::from_file(FileOffset::new(file, file_off), len as usize)
                .map_err(|e| CcMemoryError::Backing {
                    what: "the VMM view",
                    source: std::io::Error::other(e),
                })?;
            let vmm_ptr = vmm.as_ptr();
            vmm_regions.push(
                GuestRegionMmap::new(vmm, GuestAddress(gpa))
                    .ok_or(CcMemoryError::Unaligned { gpa, len })?,
            );
            let map = |what| {
                Mapping::shared(&memfd, file_off, len)
                    .map_err(|source| CcMemoryError::Backing { what, source })
            };
            regions.push(Region {
                gpa,
                len,
                file_off,
                vmm_ptr,
                plain: map("the guest view")?,
                alias: match config.alias_bit {
                    Some(_) => Some(map("the guest alias view")?),
                    None => None,
                },
            });
            file_off += len;
        }
        let vmm = GuestMemoryMmap::from_regions(vmm_regions).map_err(CcMemoryError::VmmView)?;
        let page_ranges: Vec<(u64, u64)> = regions
            .iter()
            .map(|r| (r.gpa / PAGE, r.len / PAGE))
            .collect();
        let (plain_role, alias_role) = match (config.alias_bit, config.tee) {
            (None, _) => (Role::Both, Role::Both),
            // SNP: instruction fetches, guest page-table walks and every access with
            // paging off are private whatever the C-bit (AMD APM vol. 2, §15.34.5), and
            // KVM does not say which kind an access was: the plain view serves
            // validated private pages too (module docs, *Choosing the mode*).
            (Some(_), CcTee::Snp) => (Role::Both, Role::Private),
            (Some(_), CcTee::Tdx) => (Role::Private, Role::Shared),
        };
        let cc = Self {
            tee: config.tee,
            alias_bit: config.alias_bit,
            plain_role,
            alias_role,
            ended: AtomicBool::new(false),
            regions,
            inner: Mutex::new(Inner {
                pages: PageMap::new(&page_ranges, PageState::Private),
                launched: false,
                vm: None,
                slots: Vec::new(),
                first_slot: 0,
                holes: false,
                largest: PageSize::Size4K,
            }),
            vmm,
            memfd,
        };
        let inner = cc.lock();
        let runs: Vec<Run> = inner.pages.all().collect();
        for run in runs {
            cc.apply(run, false)?;
        }
        drop(inner);
        Ok(cc)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The role of the plain view (`Both` once the contract ended).
    fn plain_role(&self) -> Role {
        if self.ended.load(Ordering::Acquire) {
            Role::Both
        } else {
            self.plain_role
        }
    }

    /// The role of the alias view (`Both` once the contract ended).
    fn alias_role(&self) -> Role {
        if self.ended.load(Ordering::Acquire) {
            Role::Both
        } else {
            self.alias_role
        }
    }

    /// Ends the private-memory contract, for a guest kernel that does not know the TEE
    /// (the emulated TDX plain handoff, README "Stock Linux under the emulated TEEs"):
    /// every page of guest RAM becomes ordinary shared memory **with the contents it
    /// has now** (nothing is scrubbed: accepted RAM keeps what the firmware wrote there,
    /// launched pages what the launch put there, pages nobody accepted stay zero), both
    /// guest views (plain GPA and alias) map every page read/write, and the VMM's view
    /// maps the guest's bytes again. There is no isolation from the host afterwards,
    /// which is the point: a kernel that executes no TDCALL cannot accept or convert
    /// pages, and its plain GPAs, virtio buffers and BIOS-area scans must reach
    /// ordinary memory. Pages never lose access during the change (each view goes from
    /// its current protection straight to read/write), so vCPUs still running (parked
    /// application processors) are not disturbed. Only after
    /// [`CcMemory::finish_launch`]; idempotent. Afterwards [`CcMemory::convert`] is
    /// refused and [`CcMemory::accept`] / [`CcMemory::validate`] find shared pages.
    pub fn end_contract(&self) -> Result<(), CcMemoryError> {
        let mut inner = self.lock();
        if !inner.launched {
            return Err(CcMemoryError::BeforeLaunch("end_contract"));
        }
        if self.ended.load(Ordering::Acquire) {
            return Ok(());
        }
        self.ended.store(true, Ordering::Release);
        for r in &self.regions {
            inner
                .pages
                .set(r.gpa / PAGE, (r.gpa + r.len) / PAGE, PageState::Shared)?;
        }
        let runs: Vec<Run> = inner.pages.all().collect();
        for run in runs {
            self.apply(run, true)?;
        }
        if inner.holes {
            self.relayout(&mut inner)?;
        }
        Ok(())
    }

    /// Whether [`CcMemory::end_contract`] ran.
    pub fn contract_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The VMM's view of guest memory (devices, loaders). After
    /// [`CcMemory::finish_launch`] its private pages are throwaway zero pages.
    pub fn vmm_memory(&self) -> &GuestMemoryMmap {
        &self.vmm
    }

    /// The TEE whose rules apply.
    pub fn tee(&self) -> CcTee {
        self.tee
    }

    /// The attribute bit, if the guest is mapped with one.
    pub fn alias_bit(&self) -> Option<u32> {
        self.alias_bit
    }

    /// Registers the guest views with KVM as memslots `first_slot..`: every range at its
    /// GPA, then every alias. Returns the next free slot. The VM's fd is duplicated and
    /// kept, for [`CcMemory::expose_faults`]; use one `CcMemory` per VM.
    pub fn register(&self, vm: &VmFd, first_slot: u32) -> Result<u32, CcMemoryError> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let mut inner = self.lock();
        // SAFETY: dup of a live fd; the result is checked and owned by the File.
        let dup = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(CcMemoryError::Backing {
                what: "dup of the VM fd",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `dup` is a new fd owned by nothing else.
        inner.vm = Some(unsafe { File::from_raw_fd(dup) });
        inner.first_slot = first_slot;
        inner.slots.clear();
        inner.holes = false;
        let mut slot = first_slot;
        let views: Vec<(u64, &Mapping)> = self
            .regions
            .iter()
            .map(|r| (r.gpa, &r.plain))
            .chain(
                self.regions
                    .iter()
                    .filter_map(|r| Some((r.gpa | 1u64 << self.alias_bit?, r.alias.as_ref()?))),
            )
            .collect();
        for (gpa, m) in views {
            self.add_slot(&mut inner, slot, gpa, m.len(), m.ptr())?;
            slot += 1;
        }
        Ok(slot)
    }

    fn add_slot(
        &self,
        inner: &mut Inner,
        slot: u32,
        gpa: u64,
        len: u64,
        host: *mut u8,
    ) -> Result<(), CcMemoryError> {
        let vm = inner.vm.as_ref().ok_or(CcMemoryError::NotRegistered)?;
        // SAFETY: `host..host+len` lies in a guest view owned by `self`, which stays
        // reserved (only re-protected) until `self` drops; the caller keeps `self`
        // alive as long as the VM (see `Vm`'s field order). Slots do not overlap: the
        // ranges come from the layout, the aliases lie above every RAM address, and
        // hole-mode slots are disjoint runs of one view.
        unsafe { sys::set_slot(vm, slot, gpa, len, host) }
            .map_err(|source| CcMemoryError::Register { slot, gpa, source })?;
        inner.slots.push(slot);
        Ok(())
    }

    /// Makes every page the guest may not access a memslot *hole*, so that a guest
    /// access to it is an MMIO exit with its GPA at any privilege level, and keeps it so
    /// (every later page-state change lays the slots out again, ~5 ms per slot).
    ///
    /// Why: on this machine's KVM a CPL3 access to a `PROT_NONE` page fails `KVM_RUN`
    /// with EFAULT *without* `KVM_EXIT_MEMORY_FAULT` information (see *Measured
    /// facts*), so the VMM cannot tell which GPA. The vCPU loop calls this on such an
    /// EFAULT and runs the vCPU again: the same instruction now exits as MMIO at the
    /// GPA, which [`CcMemory::classify_mmio`] reports. Guest faults end the VM, so the
    /// cost of the slower layout does not matter.
    pub fn expose_faults(&self) -> Result<(), CcMemoryError> {
        let mut inner = self.lock();
        inner.holes = true;
        self.relayout(&mut inner)
    }

    /// Hole mode: one slot per accessible run of each view.
    fn relayout(&self, inner: &mut Inner) -> Result<(), CcMemoryError> {
        for slot in std::mem::take(&mut inner.slots) {
            let vm = inner.vm.as_ref().ok_or(CcMemoryError::NotRegistered)?;
            // SAFETY: size 0 deletes the slot; no memory is referenced.
            unsafe { sys::set_slot(vm, slot, 0, 0, std::ptr::null_mut()) }.map_err(|source| {
                CcMemoryError::Register {
                    slot,
                    gpa: 0,
                    source,
                }
            })?;
        }
        let runs: Vec<Run> = inner.pages.all().collect();
        let mut slot = inner.first_slot;
        for r in &self.regions {
            let (rs, re) = (r.gpa / PAGE, (r.gpa + r.len) / PAGE);
            let views = [
                (self.plain_role(), 0, Some(&r.plain)),
                (
                    self.alias_role(),
                    self.alias_bit.map_or(0, |b| 1u64 << b),
                    r.alias.as_ref(),
                ),
            ];
            for (role, bit, view) in views {
                let Some(view) = view else { continue };
                for run in runs.iter().filter(|run| role.allows(run.state)) {
                    let (s, e) = (run.start.max(rs), run.end.min(re));
                    if s >= e {
                        continue;
                    }
                    if slot - inner.first_slot >= MAX_HOLE_SLOTS {
                        return Err(CcMemoryError::TooFragmented);
                    }
                    // SAFETY: `s..e` lies inside the region, so the offset stays inside
                    // `view`'s mapping.
                    let host = unsafe { view.ptr().add(((s - rs) * PAGE) as usize) };
                    self.add_slot(inner, slot, (s * PAGE) | bit, (e - s) * PAGE, host)?;
                    slot += 1;
                }
            }
        }
        Ok(())
    }

    fn strip(&self, gpa: u64) -> u64 {
        match self.alias_bit {
            Some(b) => gpa & !(1u64 << b),
            None => gpa,
        }
    }

    fn pages_of(&self, gpa: u64, len: u64) -> Result<(u64, u64), CcMemoryError> {
        let gpa = self.strip(gpa);
        if gpa % PAGE != 0 || len % PAGE != 0 {
            return Err(CcMemoryError::Unaligned { gpa, len });
        }
        let end = gpa
            .checked_add(len)
            .ok_or(CcMemoryError::Unaligned { gpa, len })?;
        Ok((gpa / PAGE, end / PAGE))
    }

    /// Applies the protections of `run` to every view (the VMM view too, once launched).
    fn apply(&self, run: Run, launched: bool) -> Result<(), CcMemoryError> {
        for r in &self.regions {
            let (rs, re) = (r.gpa / PAGE, (r.gpa + r.len) / PAGE);
            let (s, e) = (run.start.max(rs), run.end.min(re));
            if s >= e {
                continue;
            }
            let (off, len) = ((s - rs) * PAGE, (e - s) * PAGE);
            let (gpa, err) = (s * PAGE, |what| remap_err(s * PAGE, len, what));
            let prot = |role: Role| {
                if role.allows(run.state) {
                    libc::PROT_READ | libc::PROT_WRITE
                } else {
                    libc::PROT_NONE
                }
            };
            r.plain
                .protect(off, len, prot(self.plain_role()))
                .map_err(err("mprotect"))?;
            if let Some(a) = &r.alias {
                a.protect(off, len, prot(self.alias_role()))
                    .map_err(err("mprotect"))?;
            }
            if launched {
                if run.state.is_private() {
                    sys::replace_anonymous(r.vmm_ptr, off, len)
                } else {
                    sys::restore_file(r.vmm_ptr, off, len, self.fd(), r.file_off + off)
                }
                .map_err(remap_err(gpa, len, "remap of the VMM view"))?;
            }
        }
        Ok(())
    }

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.memfd.as_raw_fd()
    }

    /// Zeroes `[start, end)` (pages) in the memfd: every view reads zero there.
    fn scrub(&self, start: u64, end: u64) -> Result<(), CcMemoryError> {
        for r in &self.regions {
            let (rs, re) = (r.gpa / PAGE, (r.gpa + r.len) / PAGE);
            let (s, e) = (start.max(rs), end.min(re));
            if s < e {
                let len = (e - s) * PAGE;
                sys::punch_hole(&self.memfd, r.file_off + (s - rs) * PAGE, len)
                    .map_err(remap_err(s * PAGE, len, "scrub"))?;
            }
        }
        Ok(())
    }

    /// Sets `[start, end)` to `state` and applies the protections.
    fn set(
        &self,
        inner: &mut Inner,
        start: u64,
        end: u64,
        state: PageState,
    ) -> Result<(), CcMemoryError> {
        inner.pages.set(start, end, state)?;
        self.apply(Run { start, end, state }, inner.launched)?;
        if inner.holes {
            self.relayout(inner)?;
        }
        Ok(())
    }

    /// Launches `contents` (whole pages) at `gpa` as measured launch memory: written
    /// into guest memory, then private and validated like [`CcMemory::launch_private`].
    ///
    /// This is what the hardware launch does (SNP LAUNCH_UPDATE and TDX
    /// INIT_MEM_REGION copy a *source* buffer into the private page): emulated
    /// backends should pass the same bytes the KVM backends pass as source (the launch
    /// plan's page contents), so that anything the VMM wrote at that GPA only in its own
    /// view is lost, as on hardware (issue 13, bug 3: the TD-HOB descriptor).
    pub fn launch_private_with(&self, gpa: u64, contents: &[u8]) -> Result<(), CcMemoryError> {
        use vm_memory::Bytes;
        let len = contents.len() as u64;
        let (s, e) = self.pages_of(gpa, len)?;
        let mut inner = self.lock();
        if inner.launched {
            return Err(CcMemoryError::AfterLaunch("launch_private_with"));
        }
        inner.pages.runs(s, e)?;
        self.vmm
            .write_slice(contents, GuestAddress(s * PAGE))
            .map_err(|e| CcMemoryError::Backing {
                what: "the launch copy",
                source: std::io::Error::other(e),
            })?;
        self.set(&mut inner, s, e, PageState::Validated(PageSize::Size4K))
    }

    /// Marks `gpa..gpa+len` shared before the launch, keeping what the VMM wrote there
    /// (no scrub): SNP's starting state, where every page the launch does not add
    /// (SNP_LAUNCH_UPDATE) belongs to the hypervisor, so the boot-data descriptor, ACPI
    /// tables and staging the VMM placed are what the guest finds there. Only before
    /// [`CcMemory::finish_launch`]; launch pages added afterwards become private again.
    pub fn launch_shared(&self, gpa: u64, len: u64) -> Result<(), CcMemoryError> {
        let (s, e) = self.pages_of(gpa, len)?;
        let mut inner = self.lock();
        if inner.launched {
            return Err(CcMemoryError::AfterLaunch("launch_shared"));
        }
        inner.pages.runs(s, e)?;
        self.set(&mut inner, s, e, PageState::Shared)
    }

    /// Marks `gpa..gpa+len` as measured launch memory: private and validated (as the
    /// PSP's LAUNCH_UPDATE / the TDX module's PAGE.ADD leave it, in 4 KiB pages), with
    /// the contents the VMM wrote into its view there. Only before
    /// [`CcMemory::finish_launch`]. Prefer [`CcMemory::launch_private_with`], which
    /// takes the launch's source bytes as the hardware does.
    pub fn launch_private(&self, gpa: u64, len: u64) -> Result<(), CcMemoryError> {
        let (s, e) = self.pages_of(gpa, len)?;
        let mut inner = self.lock();
        if inner.launched {
            return Err(CcMemoryError::AfterLaunch("launch_private"));
        }
        self.set(&mut inner, s, e, PageState::Validated(PageSize::Size4K))
    }

    /// Ends the launch: every private page that was not launched is scrubbed, and the
    /// VMM's view of every private page becomes a throwaway zero page. Idempotent.
    pub fn finish_launch(&self) -> Result<(), CcMemoryError> {
        let mut inner = self.lock();
        if inner.launched {
            return Ok(());
        }
        let runs: Vec<Run> = inner.pages.all().collect();
        for run in &runs {
            if run.state == PageState::Private {
                self.scrub(run.start, run.end)?;
            }
        }
        inner.launched = true;
        for run in runs {
            self.apply(run, true)?;
        }
        Ok(())
    }

    /// Whether [`CcMemory::finish_launch`] ran.
    pub fn launched(&self) -> bool {
        self.lock().launched
    }

    /// The state of the page holding `gpa`, if it is RAM.
    pub fn state(&self, gpa: u64) -> Option<PageState> {
        self.lock().pages.get(self.strip(gpa) / PAGE)
    }

    /// Converts `gpa..gpa+len` to private (not validated) or shared: a page-state
    /// change (SNP) or MapGPA (TDX). Pages already in that state are left alone; every
    /// page that changes is scrubbed. Returns whether any page changed.
    pub fn convert(&self, gpa: u64, len: u64, to_private: bool) -> Result<bool, CcMemoryError> {
        let (s, e) = self.pages_of(gpa, len)?;
        let mut inner = self.lock();
        if self.ended.load(Ordering::Acquire) {
            return Err(CcMemoryError::ContractEnded("convert"));
        }
        let runs = inner.pages.runs(s, e)?;
        // A 2 MiB unit cut by the range keeps its other pages validated, as 4 KiB pages.
        for edge in [s, e] {
            let unit = edge & !511;
            if edge != unit && inner.pages.get(unit) == Some(PageState::Validated(PageSize::Size2M))
            {
                self.set(
                    &mut inner,
                    unit,
                    unit + 512,
                    PageState::Validated(PageSize::Size4K),
                )?;
            }
        }
        let target = if to_private {
            PageState::Private
        } else {
            PageState::Shared
        };
        let mut changed = false;
        for run in runs {
            if run.state.is_private() != to_private {
                // Closed to the guest (both views) and the VMM first, then scrubbed, then
                // opened as the target: no view ever shows the old bytes in the new role.
                let closed = Run {
                    state: PageState::Private,
                    ..run
                };
                self.apply(closed, inner.launched)?;
                self.scrub(run.start, run.end)?;
                self.set(&mut inner, run.start, run.end, target)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// SNP PVALIDATE of the page of `size` at `gpa` (`validate` false: rescind).
    /// Returns whether the RMP changed (`false` is the hardware's "no update", CF=1).
    pub fn validate(&self, gpa: u64, size: PageSize, validate: bool) -> Result<bool, RmpError> {
        let gpa = self.strip(gpa);
        if gpa % size.bytes() != 0 {
            return Err(RmpError::FailInput { gpa });
        }
        let (s, e) = (gpa / PAGE, gpa / PAGE + size.pages());
        let mut inner = self.lock();
        let runs = inner
            .pages
            .runs(s, e)
            .map_err(|_| RmpError::FailInput { gpa })?;
        if let Some(r) = runs.iter().find(|r| r.state == PageState::Shared) {
            return Err(RmpError::NotAssigned {
                gpa: r.start * PAGE,
            });
        }
        let fail = |e| RmpError::Host {
            gpa,
            source: Box::new(e),
        };
        match size {
            PageSize::Size4K => {
                let mut state = runs[0].state;
                if state == PageState::Validated(PageSize::Size2M) {
                    // A 4 KiB PVALIDATE on a 2 MiB RMP entry: #NPF (size mismatch),
                    // which KVM answers with PSMASH; the guest's retry sees 4 KiB pages.
                    let unit = s & !511;
                    self.set(
                        &mut inner,
                        unit,
                        unit + 512,
                        PageState::Validated(PageSize::Size4K),
                    )
                    .map_err(fail)?;
                    state = PageState::Validated(PageSize::Size4K);
                }
                let want = if validate {
                    PageState::Validated(PageSize::Size4K)
                } else {
                    PageState::Private
                };
                if state == want {
                    return Ok(false);
                }
                self.set(&mut inner, s, e, want).map_err(fail)?;
                Ok(true)
            }
            PageSize::Size2M => {
                if inner.largest == PageSize::Size4K
                    || runs
                        .iter()
                        .any(|r| r.state == PageState::Validated(PageSize::Size4K))
                {
                    return Err(RmpError::SizeMismatch { gpa });
                }
                let want = if validate {
                    PageState::Validated(PageSize::Size2M)
                } else {
                    PageState::Private
                };
                if runs.len() == 1 && runs[0].state == want {
                    return Ok(false);
                }
                self.set(&mut inner, s, e, want).map_err(fail)?;
                Ok(true)
            }
        }
    }

    /// TDX TDG.MEM.PAGE.ACCEPT of the page of `size` at `gpa`: the page becomes
    /// accepted and zero, as the TDX module initialises it.
    pub fn accept(&self, gpa: u64, size: PageSize) -> Result<(), AcceptError> {
        let gpa = self.strip(gpa);
        if gpa % size.bytes() != 0 {
            return Err(AcceptError::OperandInvalid { gpa });
        }
        let (s, e) = (gpa / PAGE, gpa / PAGE + size.pages());
        let mut inner = self.lock();
        let runs = inner
            .pages
            .runs(s, e)
            .map_err(|_| AcceptError::OperandInvalid { gpa })?;
        if let Some(r) = runs.iter().find(|r| r.state == PageState::Shared) {
            return Err(AcceptError::NotPrivate {
                gpa: r.start * PAGE,
            });
        }
        let accepted = |r: &Run| matches!(r.state, PageState::Validated(_));
        if size == PageSize::Size2M && inner.largest == PageSize::Size4K {
            // The Secure EPT maps this private memory with 4 KiB pages only.
            return Err(AcceptError::SizeMismatch { gpa });
        }
        match size {
            PageSize::Size4K if accepted(&runs[0]) => {
                return Err(AcceptError::AlreadyAccepted { gpa })
            }
            PageSize::Size2M
                if runs
                    .iter()
                    .any(|r| r.state == PageState::Validated(PageSize::Size4K)) =>
            {
                return Err(AcceptError::SizeMismatch { gpa })
            }
            PageSize::Size2M if runs.iter().all(accepted) => {
                return Err(AcceptError::AlreadyAccepted { gpa })
            }
            _ => {}
        }
        let fail = |e| AcceptError::Host {
            gpa,
            source: Box::new(e),
        };
        self.scrub(s, e).map_err(fail)?;
        self.set(&mut inner, s, e, PageState::Validated(size))
            .map_err(fail)
    }

    /// Reads guest memory as the emulated secure processor (PSP, TDX module) may:
    /// straight from the memfd, whatever the pages' states. For the emulated TEE's own
    /// operations on private memory (TDG.MR.REPORT's REPORTDATA, the secrets page) and
    /// for diagnosis (walking the guest's page tables after a fault); never for devices,
    /// which use [`CcMemory::vmm_memory`].
    pub fn trusted_read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), CcMemoryError> {
        use std::os::unix::fs::FileExt;
        let off = self.file_offset(gpa, buf.len() as u64)?;
        self.memfd
            .read_exact_at(buf, off)
            .map_err(remap_err(gpa, buf.len() as u64, "trusted read"))
    }

    /// Writes guest memory as the emulated secure processor may (see
    /// [`CcMemory::trusted_read`]): TDG.MR.REPORT's TDREPORT, the PSP's pages.
    pub fn trusted_write(&self, gpa: u64, data: &[u8]) -> Result<(), CcMemoryError> {
        use std::os::unix::fs::FileExt;
        let off = self.file_offset(gpa, data.len() as u64)?;
        self.memfd.write_all_at(data, off).map_err(remap_err(
            gpa,
            data.len() as u64,
            "trusted write",
        ))
    }

    /// The memfd offset of `gpa..gpa+len`, which must lie in one RAM range.
    fn file_offset(&self, gpa: u64, len: u64) -> Result<u64, CcMemoryError> {
        let gpa = self.strip(gpa);
        let end = gpa
            .checked_add(len)
            .ok_or(CcMemoryError::Unaligned { gpa, len })?;
        self.regions
            .iter()
            .find(|r| r.gpa <= gpa && end <= r.gpa + r.len)
            .map(|r| r.file_off + (gpa - r.gpa))
            .ok_or(CcMemoryError::Outside(OutsideRam {
                start: gpa / PAGE,
                end: end.div_ceil(PAGE),
                missing: gpa / PAGE,
            }))
    }

    /// An MMIO exit at `gpa` as a guest fault, if `gpa` is guest RAM (in either view):
    /// this machine's KVM turns a CPL0 access to a `PROT_NONE` page into an MMIO exit,
    /// and hole mode ([`CcMemory::expose_faults`]) does so at any CPL. `None`: a real
    /// MMIO access, for the device buses.
    pub fn classify_mmio(&self, gpa: u64) -> Option<GuestFault> {
        let f = self.classify(gpa);
        (f.kind != FaultKind::NotRam).then_some(f)
    }

    /// The largest page the host backs private memory with: [`PageSize::Size4K`] by
    /// default, as on Linux 6.16, whose guest_memfd hands KVM only 4 KiB pages — so the
    /// SNP RMP holds 4 KiB entries and a 2 MiB PVALIDATE fails with FAIL_SIZEMISMATCH
    /// (arch/x86/kvm/svm/sev.c maps gmem at 4 KiB), and a TD's 2 MiB
    /// TDG.MEM.PAGE.ACCEPT fails with TDX_PAGE_SIZE_MISMATCH
    /// (`tdx_gmem_private_max_mapping_level` returns 4K in arch/x86/kvm/vmx/tdx.c). A
    /// guest must handle that (fall back to 4 KiB), and CI must run that fallback.
    /// [`PageSize::Size2M`] models a host with huge-page guest_memfd.
    pub fn set_largest_private_page(&self, size: PageSize) {
        self.lock().largest = size;
    }

    /// An MMIO exit at `gpa`, decided for the vCPU loop ([`crate::vstate::vcpu::ExitHandler::mmio`]):
    /// [`MmioAccess::Device`] when `gpa` is not guest RAM (the device buses take it);
    /// [`MmioAccess::Served`] when the page is accessible in that view now — the exit
    /// raced with a state change (for example hole mode's relayout, which briefly
    /// removes memslots while other vCPUs run). KVM completes an MMIO read from
    /// `kvm_run.mmio.data` on re-entry and never repeats a write, so the access is
    /// carried out here on guest memory instead of being lost; [`MmioAccess::Fault`] for
    /// an access the hardware would fault.
    pub fn serve_mmio(&self, gpa: u64, data: &mut [u8], write: bool) -> MmioAccess {
        let fault = self.classify(gpa);
        match fault.kind {
            FaultKind::NotRam => MmioAccess::Device,
            FaultKind::Accessible => {
                let done = if write {
                    self.trusted_write(gpa, data)
                } else {
                    self.trusted_read(gpa, data)
                };
                match done {
                    Ok(()) => MmioAccess::Served,
                    Err(e) => MmioAccess::Failed(e),
                }
            }
            _ => MmioAccess::Fault(fault),
        }
    }

    /// Classifies a guest fault at `gpa` (from `KVM_EXIT_MEMORY_FAULT`, or an MMIO exit
    /// at a RAM address — see *Measured facts*).
    pub fn classify(&self, gpa: u64) -> GuestFault {
        let aliased = self.alias_bit.is_some_and(|b| gpa & (1u64 << b) != 0);
        let state = self.state(gpa);
        let role = if aliased {
            self.alias_role()
        } else {
            self.plain_role()
        };
        let kind = match state {
            None => FaultKind::NotRam,
            Some(s) if role.allows(s) => FaultKind::Accessible,
            Some(PageState::Private) if role != Role::Shared => FaultKind::NotValidated,
            Some(PageState::Shared) => FaultKind::PrivateAccessToShared,
            Some(_) => FaultKind::SharedAccessToPrivate,
        };
        GuestFault {
            gpa,
            state,
            kind,
            tee: self.tee,
        }
    }
}
