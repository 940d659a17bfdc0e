//! The emulated TDX backend: a default KVM VM whose firmware is "measured" by the
//! emulated TDX platform of the `attestation` crate, and whose vCPUs start as TD vCPUs
//! do (32-bit protected mode at the reset vector, [`emu_tdx::td_entry`]) with CPUID leaf
//! 0x21 saying "IntelTDX    ". The guest runs its real TDX code; the VMM plays the TDX
//! module ([`emu_tdx::TdxModule`]: TDCALL through the internal-error exit or the
//! emulator trap). The paravirtual mailbox ([`super::emulated`]) stays for guests that
//! still use it. Insecure test equipment.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use attestation::tdx::emulated::TdConfig;
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use kvm_ioctls::VcpuFd;
use measured_boot::tdx::DirectBoot;
use vm_memory::GuestMemoryMmap;

use super::backend::{
    AcpiAdditions, ExpectedMeasurement, LaunchReport, PendingLaunch, TeeBackend, TeeDevice,
    TeeError, TeeRuntime, VmType,
};
use super::emu_tdx::{self, AcceptMap, TdxModule};
use super::emulated::{
    EmulatedLaunchError, EmulatedTee, Mailbox, Rtmrs, MAILBOX_LEN, MAILBOX_PORT,
};
use super::launch::LaunchStepError;
use super::services::{self, Notify};
use super::TeeKind;
use crate::acpi::Ccel;
use crate::devices::Buses;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::vstate::vcpu::{sanitize_cpuid, LEAF_TDX};
use crate::vstate::vm::Vm;

/// Emulated TDX.
#[derive(Debug)]
pub struct EmulatedTdx {
    tee: Arc<Mutex<EmulatedTee>>,
    mrtd: [u8; 48],
    rtmrs: Rtmrs,
    accepted: AcceptMap,
    vcpus: Arc<OnceLock<u32>>,
    module: OnceLock<Arc<TdxModule>>,
}

impl EmulatedTdx {
    /// Launches `firmware` (with `direct_boot`, if a kernel is staged) on the emulated
    /// platform in `dir`.
    pub fn launch(
        dir: &Path,
        firmware: Vec<u8>,
        config: TdConfig,
        direct_boot: Option<DirectBoot>,
    ) -> Result<Self, EmulatedLaunchError> {
        let (tee, mrtd, rtmrs, accepted) =
            EmulatedTee::launch_tdx(dir, firmware, config, direct_boot)?;
        Ok(Self {
            tee: Arc::new(Mutex::new(tee)),
            mrtd,
            rtmrs,
            accepted,
            vcpus: Arc::default(),
            module: OnceLock::new(),
        })
    }
}

impl TeeBackend for EmulatedTdx {
    fn kind(&self) -> TeeKind {
        TeeKind::EmulatedTdx
    }

    fn vm_type(&self) -> VmType {
        VmType::Default
    }

    fn preload(&self) -> &[(u64, Vec<u8>)] {
        // The TD HOB and sections are the firmware's own business in emulation.
        &[]
    }

    fn devices(&self, mem: &GuestMemoryMmap) -> Vec<TeeDevice> {
        vec![TeeDevice {
            name: "emulated-tee-mailbox",
            base: MAILBOX_PORT,
            len: MAILBOX_LEN,
            device: Arc::new(Mutex::new(Mailbox::shared(self.tee.clone(), mem.clone()))),
        }]
    }

    fn acpi(&self) -> AcpiAdditions {
        AcpiAdditions {
            ccel: Some(Ccel::TDX_FIRMWARE),
        }
    }

    fn adjust_cpuid(&self, cpuid: &mut CpuId) {
        sanitize_cpuid(cpuid, false, false);
        show_tdx_leaf(cpuid);
    }

    fn before_vcpus<'v>(
        &self,
        vm: &'v Vm,
        _cpuid: &CpuId,
    ) -> Result<Box<dyn PendingLaunch + 'v>, TeeError> {
        emu_tdx::map_shared_alias(vm.fd(), vm.memory()).map_err(|source| {
            LaunchStepError::Registers {
                index: 0,
                what: "KVM_SET_USER_MEMORY_REGION (shared alias)",
                source,
            }
        })?;
        Ok(Box::new(TdEntry {
            vcpus: self.vcpus.clone(),
        }))
    }

    fn runtime(&self, vm: &Arc<Vm>, mode: SeccompMode) -> Result<Option<TeeRuntime>, TeeError> {
        let (tx, rx) = mpsc::sync_channel(services::QUOTE_MAX_IN_FLIGHT as usize);
        let in_flight = Arc::new(AtomicU64::new(0));
        let notify = Notify::default();
        let (mem, n, tee, note, irq) = (
            vm.memory().clone(),
            in_flight.clone(),
            self.tee.clone(),
            notify.clone(),
            emu_tdx::MsiInterrupt(vm.clone()),
        );
        // The quote thread's filter (KVM_SIGNAL_MSI for the notification); the emulated
        // quoting enclave's signing (deterministic ECDSA) needs no further syscalls.
        let thread = std::thread::Builder::new()
            .name("emulated-quote".into())
            .spawn(move || match seccomp::install(ThreadKind::Quote, mode) {
                Ok(()) => emu_tdx::quote_worker(rx, mem, tee, n, note, irq),
                Err(e) => tracing::error!(error = %e, "quote thread not confined; not serving"),
            })
            .map_err(|e| TeeError::Thread("emulated-quote", e))?;
        let module = Arc::new(TdxModule::new(
            vm.memory().clone(),
            self.tee.clone(),
            self.accepted.clone(),
            self.vcpus.get().copied().unwrap_or(1),
            Some((tx, in_flight)),
            notify,
        ));
        let _ = self.module.set(module.clone());
        Ok(Some(TeeRuntime {
            exits: module,
            threads: vec![thread],
            // TDCALL results are written back with KVM_SET_REGS.
            vcpu_thread: ThreadKind::EmulatedTeeVcpu,
        }))
    }

    fn attach_buses(&self, bus: &Arc<Buses>) {
        if let Some(m) = self.module.get() {
            m.attach_buses(bus.clone());
        }
    }

    fn virtio_access_platform(&self) -> bool {
        false
    }

    fn measurement(&self) -> ExpectedMeasurement {
        ExpectedMeasurement {
            tee: TeeKind::EmulatedTdx,
            digest: Some(self.mrtd),
            rtmrs: Some(self.rtmrs),
        }
    }
}

/// Shows CPUID leaf 0x21 as a TDX module does ("IntelTDX    " in EBX, EDX, ECX) and
/// raises the maximum basic leaf to reach it.
fn show_tdx_leaf(cpuid: &mut CpuId) {
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_TDX)
        .copied()
        .collect();
    for e in entries.iter_mut().filter(|e| e.function == 0) {
        e.eax = e.eax.max(LEAF_TDX);
    }
    let word = |s: &[u8; 4]| u32::from_le_bytes(*s);
    entries.push(kvm_cpuid_entry2 {
        function: LEAF_TDX,
        index: 0,
        eax: 0,
        ebx: word(b"Inte"),
        edx: word(b"lTDX"),
        ecx: word(b"    "),
        ..Default::default()
    });
    if let Ok(c) = CpuId::from_entries(&entries) {
        *cpuid = c;
    }
}

/// The per-vCPU step of the emulated launch: every vCPU enters as a TD vCPU.
struct TdEntry {
    vcpus: Arc<OnceLock<u32>>,
}

impl PendingLaunch for TdEntry {
    fn after_vcpus(
        self: Box<Self>,
        _vm: &Vm,
        vcpus: &[&VcpuFd],
        _cpuid: &CpuId,
    ) -> Result<LaunchReport, TeeError> {
        for (i, fd) in vcpus.iter().enumerate() {
            emu_tdx::td_entry(fd, i as u32).map_err(|source| LaunchStepError::Registers {
                index: i as u32,
                what: "TD vCPU initial state",
                source,
            })?;
        }
        let _ = self.vcpus.set(vcpus.len() as u32);
        Ok(LaunchReport::default())
    }
}
