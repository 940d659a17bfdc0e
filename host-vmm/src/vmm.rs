//! Building and running a VM: guest memory, devices, vCPU threads, and the reason the
//! guest stopped.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::acpi::{self, AcpiError, VirtioMmioDesc};
use crate::boot::{self, BootError, BootInputs, Tamper};
use crate::devices::ioapic::{IoApic, KvmRoutes, IOAPIC_BASE, IOAPIC_SIZE};
use crate::devices::legacy::{AcpiPm, PvPanic, I8042, I8042_BASE, PM1A_EVT, PVPANIC_PORT};
use crate::devices::serial::IrqTrigger;
use crate::devices::serial::{SerialPort, COM1_BASE, COM1_IRQ};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::{self, Vsock, VsockConfig, VsockError};
use crate::devices::{BusOverlap, Buses, MmioOverlap};
use crate::seccomp::{self, SeccompError, SeccompMode, ThreadKind};
use crate::tee::emulated::{EmulatedTee, Mailbox, MAILBOX_PORT};
use crate::tee::launch::{self as cc, ConfidentialLaunch, LaunchStepError};
use crate::tee::services::{CertTable, Interrupt, Notify, TdVmcalls};
use crate::tee::TeeKind;
use crate::vstate::vcpu::sanitize_cpuid;
use crate::vstate::vcpu::ConfidentialExits;
use crate::vstate::vcpu::{RunControl, Vcpu, VcpuError, VcpuStop};
use crate::vstate::vm::IrqChip;
use crate::vstate::vm::{Vm, VmError};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's standard output.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Discarded.
    None,
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Expose it read-only.
    pub read_only: bool,
}

/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xD000_0000;
/// Size of each virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI of the virtio devices (above the ISA interrupts).
pub const VIRTIO_FIRST_GSI: u32 = 16;
/// Most virtio devices (GSIs 16..23 of the I/O APIC).
pub const MAX_VIRTIO_DEVICES: usize = 8;

/// What to run.
#[derive(Debug)]
pub struct VmConfig {
    /// Firmware image, mapped to end at 4 GiB.
    pub firmware: Vec<u8>,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Serial console destination.
    pub serial: SerialOutput,
    /// Whether to install the seccomp filters.
    pub seccomp: SeccompMode,
    /// virtio-blk disks, in order.
    pub disks: Vec<DiskConfig>,
    /// The emulated TEE the guest's mailbox talks to, if any.
    pub emulated_tee: Option<EmulatedTee>,
    /// The TEE (decides the CPUID leaves the guest sees and whether virtio devices
    /// require VIRTIO_F_ACCESS_PLATFORM).
    pub tee: TeeKind,
    /// Kernel, initrd and command line to stage for the firmware.
    pub boot: Option<BootInputs>,
    /// TEST EQUIPMENT: stage a corrupted copy of one boot item.
    pub tamper: Option<Tamper>,
    /// Pages of the launch plan the VMM places itself (the kernel hashes table).
    pub preload: Vec<(u64, Vec<u8>)>,
    /// The virtio-vsock device, if any (after the disks in MMIO order).
    pub vsock: Option<VsockConfig>,
    /// /dev/kvm opened before the VMM entered its jail (`None`: open it here).
    pub kvm: Option<Kvm>,
    /// The control API: its bound socket and the measurement it reports.
    pub api: Option<ApiConfig>,
    /// A real SEV-SNP or TDX launch (for `tee` snp or tdx): the VM gets private memory
    /// and the launch commands run before the guest starts.
    pub confidential: Option<ConfidentialLaunch>,
}

/// `--api-socket`: a listener bound before the jail, and what `GET /v1/vm/measurement`
/// answers.
#[derive(Debug)]
pub struct ApiConfig {
    /// The bound socket.
    pub listener: std::os::unix::net::UnixListener,
    /// The expected measurement, as JSON.
    pub measurement: serde_json::Value,
}

/// The VM as the control API sees it.
struct ApiView {
    control: Arc<RunControl>,
    /// vCPU threads to kick out of KVM_RUN; emptied before they are joined.
    vcpu_threads: Arc<Mutex<Vec<libc::pthread_t>>>,
    stop_tx: mpsc::Sender<(u32, VcpuStop)>,
    tee: TeeKind,
    vcpus: u32,
    memory: u64,
    started: Instant,
    measurement: serde_json::Value,
}

impl ApiView {
    fn kick(&self) {
        let threads = self.vcpu_threads.lock().unwrap_or_else(|e| e.into_inner());
        for &t in threads.iter() {
            // SAFETY: `t` is a live, unjoined vCPU thread (the list is emptied before the
            // threads are joined, under this lock); the signal's handler does nothing.
            unsafe { libc::pthread_kill(t, SIGRTMIN()) };
        }
    }
}

impl crate::api::VmControl for ApiView {
    fn status(&self) -> serde_json::Value {
        let state = if self.control.stopped() {
            "stopping"
        } else if self.control.paused() {
            "paused"
        } else {
            "running"
        };
        serde_json::json!({
            "state": state,
            "tee": self.tee.to_string(),
            "vcpus": self.vcpus,
            "memory_bytes": self.memory,
            "uptime_ms": self.started.elapsed().as_millis() as u64,
        })
    }

    fn measurement(&self) -> serde_json::Value {
        self.measurement.clone()
    }

    fn pause(&self) -> Result<(), String> {
        if self.control.stopped() {
            return Err("the VM is stopping".into());
        }
        if self.control.paused() {
            return Err("the VM is already paused".into());
        }
        self.control.set_paused(true);
        self.kick();
        tracing::info!(event = "paused", "vCPUs paused through the API");
        Ok(())
    }

    fn resume(&self) -> Result<(), String> {
        if !self.control.paused() {
            return Err("the VM is not paused".into());
        }
        self.control.set_paused(false);
        tracing::info!(event = "resumed", "vCPUs resumed through the API");
        Ok(())
    }

    fn shutdown(&self) {
        tracing::info!(
            event = "shutdown-requested",
            "shutdown requested through the API"
        );
        let _ = self.stop_tx.send((u32::MAX, VcpuStop::ShutdownRequested));
    }
}

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// The VM could not be created.
    #[error("cannot create the VM")]
    Vm(#[from] VmError),
    /// A vCPU could not be created.
    #[error("cannot create a vCPU")]
    Vcpu(#[from] VcpuError),
    /// The vCPU count is out of range.
    #[error("{requested} vCPUs requested; this host's KVM allows 1..={max}")]
    VcpuCount {
        /// Requested.
        requested: u32,
        /// KVM's limit.
        max: usize,
    },
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot read the host's supported CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// The serial output file could not be opened.
    #[error("cannot open the serial output file {0}")]
    SerialFile(PathBuf, #[source] std::io::Error),
    /// Devices overlap (a bug).
    #[error("device layout is inconsistent")]
    Bus(#[from] BusOverlap),
    /// A thread could not be started.
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    /// A disk could not be opened.
    #[error("cannot attach a disk")]
    Disk(#[from] BlockError),
    /// Too many virtio devices.
    #[error("{0} virtio devices requested; at most {MAX_VIRTIO_DEVICES} are supported")]
    TooManyDevices(usize),
    /// MMIO devices overlap (a bug).
    #[error("MMIO device layout is inconsistent")]
    Mmio(#[from] MmioOverlap),
    /// The ACPI tables could not be built.
    #[error("cannot build the ACPI tables")]
    Acpi(#[from] AcpiError),
    /// The ACPI tables could not be written to guest memory.
    #[error("cannot write the ACPI tables into guest memory")]
    AcpiWrite(#[source] vm_memory::GuestMemoryError),
    /// A seccomp filter could not be installed.
    #[error("cannot confine the VMM")]
    Seccomp(#[from] SeccompError),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The boot data could not be staged.
    #[error("cannot stage the kernel")]
    Boot(#[from] BootError),
    /// A launch-plan page could not be written.
    #[error("cannot write a launch-plan page into guest memory")]
    Preload(#[source] vm_memory::GuestMemoryError),
    /// The vsock device could not be created.
    #[error("cannot create the virtio-vsock device")]
    Vsock(#[from] VsockError),
    /// The vsock event loop could not be set up.
    #[error("cannot set up the vsock event loop")]
    EventLoop(#[source] std::io::Error),
    /// A step of the SEV-SNP or TDX launch failed.
    #[error("confidential launch failed")]
    Launch(#[from] LaunchStepError),
    /// `tee` and the confidential launch disagree (a bug in the caller).
    #[error("--tee {0} needs a matching confidential launch")]
    LaunchMismatch(TeeKind),
}

/// The run-time services of a real SNP or TDX guest.
struct CcRuntime {
    vm: Arc<Vm>,
    tdx: Option<TdVmcalls>,
    certs: Option<CertTable>,
}

impl ConfidentialExits for CcRuntime {
    fn memory_fault(&self, gpa: u64, size: u64, private: bool) -> Result<(), String> {
        self.vm
            .convert(gpa, size, private)
            .map_err(|e| format!("implicit conversion failed: {e}"))
    }

    fn map_gpa_range(&self, args: &[u64; 6]) -> u64 {
        self.vm.map_gpa_range(args)
    }

    fn tdx_vmcall(&self, vcpu: u32, exit: &mut [u8; 256]) -> Result<(), String> {
        match &self.tdx {
            Some(t) => {
                t.handle(vcpu, exit);
                Ok(())
            }
            None => Err("KVM_EXIT_TDX from a VM that is not a TD".into()),
        }
    }

    fn snp_req_certs(&self, exit: &mut [u8; 256]) -> Result<(), String> {
        match &self.certs {
            Some(c) => {
                c.serve(self.vm.memory(), exit);
                Ok(())
            }
            None => {
                Err("KVM_EXIT_SNP_REQ_CERTS although certificate requests were not enabled".into())
            }
        }
    }
}

/// Raises a vector on a vCPU with KVM_SIGNAL_MSI.
struct MsiInterrupt(Arc<Vm>);

impl Interrupt for MsiInterrupt {
    fn raise(&self, apic: u32, vector: u8) -> Result<(), String> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: 0xFEE0_0000 | (apic << 12),
            data: u32::from(vector),
            ..Default::default()
        };
        self.0
            .fd()
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| format!("KVM_SIGNAL_MSI: {e}"))
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn serial_writer(out: &SerialOutput) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(p) => {
            Box::new(std::fs::File::create(p).map_err(|e| VmmError::SerialFile(p.clone(), e))?)
        }
        SerialOutput::None => Box::new(std::io::sink()),
    })
}

/// Builds the VM described by `config`, runs it until the guest stops, and returns why.
///
/// The first vCPU to stop decides the outcome; the others are then interrupted
/// (signalled out of KVM_RUN) and joined.
pub fn run(mut config: VmConfig) -> Result<VcpuStop, VmmError> {
    let started = Instant::now();
    let kvm = match config.kvm.take() {
        Some(k) => k,
        None => Kvm::new().map_err(VmmError::Kvm)?,
    };
    let max = kvm.get_max_vcpus();
    if config.vcpus == 0 || config.vcpus as usize > max {
        return Err(VmmError::VcpuCount {
            requested: config.vcpus,
            max,
        });
    }
    let vm = Arc::new(match (&config.confidential, config.tee) {
        (None, TeeKind::None | TeeKind::EmulatedSnp | TeeKind::EmulatedTdx) => {
            Vm::new(&kvm, config.memory, &config.firmware)?
        }
        (Some(ConfidentialLaunch::Snp(_)), TeeKind::Snp) => Vm::new_confidential(
            &kvm,
            u64::from(kvm_bindings::KVM_X86_SNP_VM),
            IrqChip::Full,
            config.memory,
            &config.firmware,
        )?,
        (Some(ConfidentialLaunch::Tdx(_)), TeeKind::Tdx) => Vm::new_confidential(
            &kvm,
            u64::from(kvm_bindings::KVM_X86_TDX_VM),
            IrqChip::Split,
            config.memory,
            &config.firmware,
        )?,
        (_, tee) => return Err(VmmError::LaunchMismatch(tee)),
    });

    let mut bus = Buses::default();
    if let Some(ConfidentialLaunch::Tdx(_)) = &config.confidential {
        // Split irqchip: the I/O APIC is ours; its routes make device lines MSIs.
        bus.mmio.insert(
            IOAPIC_BASE,
            IOAPIC_SIZE,
            Arc::new(Mutex::new(IoApic::new(KvmRoutes(vm.clone())))),
        )?;
    }
    let serial = SerialPort::new(vm.irqfd(COM1_IRQ)?, serial_writer(&config.serial)?);
    bus.pio.insert(COM1_BASE, 8, Arc::new(Mutex::new(serial)))?;
    bus.pio.insert(I8042_BASE, 5, Arc::new(Mutex::new(I8042)))?;
    bus.pio
        .insert(PM1A_EVT, 8, Arc::new(Mutex::new(AcpiPm::default())))?;
    bus.pio
        .insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(PvPanic)))?;
    {
        use vm_memory::Bytes;
        for (gpa, page) in &config.preload {
            vm.memory()
                .write_slice(page, vm_memory::GuestAddress(*gpa))
                .map_err(VmmError::Preload)?;
        }
    }
    let staged = boot::stage(
        vm.memory(),
        config.memory,
        config.vcpus,
        config.boot.as_ref(),
        config.tamper,
    )?;
    if config.boot.is_some() {
        tracing::info!(
            event = "boot-data",
            staging = format_args!("{:#x}+{:#x}", staged.base, staged.size),
            kernel = format_args!("{:#x}+{:#x}", staged.kernel.0, staged.kernel.1),
            initrd = format_args!("{:#x}+{:#x}", staged.initrd.0, staged.initrd.1),
            cmdline = format_args!("{:#x}+{:#x}", staged.cmdline.0, staged.cmdline.1),
            "kernel staged; boot-data descriptor at 0x8000"
        );
    }
    let confidential = matches!(config.tee, TeeKind::Snp | TeeKind::Tdx);

    if let Some(tee) = config.emulated_tee {
        bus.pio.insert(
            MAILBOX_PORT,
            12,
            Arc::new(Mutex::new(Mailbox::new(tee, vm.memory().clone()))),
        )?;
    }
    let n_devices = config.disks.len() + usize::from(config.vsock.is_some());
    if n_devices > MAX_VIRTIO_DEVICES {
        return Err(VmmError::TooManyDevices(n_devices));
    }
    let mut descs = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_FIRST_GSI + i as u32;
        let block = Block::open(&d.path, d.read_only)?;
        let transport = MmioTransport::new(
            Box::new(block),
            vm.memory().clone(),
            IrqTrigger(vm.irqfd(gsi)?),
            confidential,
        );
        bus.mmio
            .insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
        descs.push(VirtioMmioDesc {
            base: base as u32,
            size: VIRTIO_MMIO_SIZE as u32,
            irq: gsi,
        });
        tracing::info!(event = "device", kind = "virtio-blk", path = %d.path.display(), read_only = d.read_only, mmio = format_args!("{base:#x}"), gsi, "disk attached");
    }
    let mut vsock_loop = None;
    if let Some(vc) = &config.vsock {
        let i = descs.len();
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_FIRST_GSI + i as u32;
        let epoll = Arc::new(Epoll::new().map_err(VmmError::EventLoop)?);
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventLoop)?;
        epoll
            .ctl(
                ControlOperation::Add,
                std::os::unix::io::AsRawFd::as_raw_fd(&stop),
                EpollEvent::new(EventSet::IN, vsock::TOKEN_STOP),
            )
            .map_err(VmmError::EventLoop)?;
        let device = Vsock::new(vc, epoll.clone())?;
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            Box::new(device),
            vm.memory().clone(),
            IrqTrigger(vm.irqfd(gsi)?),
            confidential,
        )));
        bus.mmio.insert(base, VIRTIO_MMIO_SIZE, transport.clone())?;
        descs.push(VirtioMmioDesc {
            base: base as u32,
            size: VIRTIO_MMIO_SIZE as u32,
            irq: gsi,
        });
        tracing::info!(
            event = "device",
            kind = "virtio-vsock",
            guest_cid = vc.guest_cid,
            uds = ?vc.uds,
            relay = vc.relay.as_ref().map(|r| r.url.as_str()).unwrap_or("none"),
            mmio = format_args!("{base:#x}"),
            gsi,
            "vsock attached"
        );
        vsock_loop = Some((epoll, transport, stop));
    }
    // TD guests: the CCEL table points the kernel at the firmware's CC event log.
    let ccel = matches!(config.tee, TeeKind::Tdx | TeeKind::EmulatedTdx)
        .then_some(acpi::Ccel::TDX_FIRMWARE);
    let tables = acpi::build_with(config.vcpus, &descs, ccel)?;
    {
        use vm_memory::Bytes;
        vm.memory()
            .write_slice(&tables.blob, vm_memory::GuestAddress(tables.rsdp_gpa))
            .map_err(VmmError::AcpiWrite)?;
    }
    let bus = Arc::new(bus);

    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::Cpuid)?;
    sanitize_cpuid(
        &mut cpuid,
        config.tee == TeeKind::Snp,
        config.tee == TeeKind::Tdx,
    );
    // The TEE's VM-level launch steps come before any vCPU exists.
    enum Begun<'a> {
        Snp(crate::tee::snp::SnpLauncher<crate::tee::snp::Started, crate::vstate::sev::KvmSev<'a>>),
        Tdx(
            crate::tee::tdx::TdxLauncher<
                crate::tee::tdx::VmInitialized,
                crate::vstate::tdx::KvmTdx<'a>,
            >,
        ),
    }
    let begun = match &config.confidential {
        None => None,
        Some(ConfidentialLaunch::Snp(l)) => Some(Begun::Snp(cc::snp_begin(&vm, l)?)),
        Some(ConfidentialLaunch::Tdx(l)) => Some(Begun::Tdx(cc::tdx_begin(&vm, &cpuid, l)?)),
    };
    let vcpus = (0..config.vcpus)
        .map(|i| Vcpu::new(vm.fd(), i, &cpuid))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tdx_caps = (0, 0);
    match (begun, &config.confidential) {
        (Some(Begun::Snp(b)), Some(ConfidentialLaunch::Snp(l))) => {
            let fds: Vec<_> = vcpus.iter().map(Vcpu::fd).collect();
            let pages = cc::snp_complete(b, &vm, &fds, &cpuid, l)?;
            tracing::info!(event = "measurement", tee = "snp", pages, digest = %hex::encode(l.plan.launch_digest()), "SNP_LAUNCH_FINISH done; the PSP measured the launch");
        }
        (Some(Begun::Tdx(b)), Some(ConfidentialLaunch::Tdx(l))) => {
            if let Some(c) = b.caps() {
                tdx_caps = (c.kernel_tdvmcallinfo_1_r11, c.user_tdvmcallinfo_1_r11);
            }
            let fds: Vec<_> = vcpus.iter().map(Vcpu::fd).collect();
            let (added, measured) = cc::tdx_complete(b, fds, l)?;
            tracing::info!(event = "measurement", tee = "tdx", pages = added, measured, mrtd = %hex::encode(l.plan.mrtd()), "KVM_TDX_FINALIZE_VM done; the TDX module measured the launch");
        }
        _ => {}
    }

    let mut quote_thread = None;
    let runtime: Option<Arc<dyn ConfidentialExits>> = match config.confidential.take() {
        None => None,
        Some(ConfidentialLaunch::Snp(l)) => Some(Arc::new(CcRuntime {
            vm: vm.clone(),
            tdx: None,
            certs: l.certs,
        })),
        Some(ConfidentialLaunch::Tdx(l)) => {
            let notify: Notify = Arc::default();
            let quotes = match l.qgs {
                Some(socket) => {
                    let (tx, rx) =
                        mpsc::sync_channel(crate::tee::services::QUOTE_MAX_IN_FLIGHT as usize);
                    let in_flight = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let (mem, n, irq, note) = (
                        vm.memory().clone(),
                        in_flight.clone(),
                        MsiInterrupt(vm.clone()),
                        notify.clone(),
                    );
                    let mode = config.seccomp;
                    quote_thread = Some(
                        std::thread::Builder::new()
                            .name("quote".into())
                            .spawn(move || match seccomp::install(ThreadKind::Quote, mode) {
                                Ok(()) => crate::tee::services::quote_worker(rx, mem, socket, n, note, irq),
                                Err(e) => tracing::error!(error = %e, "quote thread not confined; not serving"),
                            })
                            .map_err(VmmError::Thread)?,
                    );
                    Some((tx, in_flight))
                }
                None => None,
            };
            Some(Arc::new(CcRuntime {
                vm: vm.clone(),
                tdx: Some(TdVmcalls::new(
                    vm.memory().clone(),
                    quotes,
                    notify,
                    tdx_caps.0,
                    tdx_caps.1,
                )),
                certs: None,
            }))
        }
    };
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(VmmError::Signal)?;
    let stop = Arc::new(RunControl::default());
    let (tx, rx) = mpsc::channel();
    // Every thread installs its seccomp filter, then waits here: no guest code runs
    // before all filters are in place.
    let gate = Arc::new(std::sync::Barrier::new(
        vcpus.len() + 1 + usize::from(vsock_loop.is_some()) + usize::from(config.api.is_some()),
    ));
    let mode = config.seccomp;
    let mut threads = Vec::new();
    let mut event_thread = None;
    if let Some((epoll, transport, stop_evt)) = vsock_loop {
        let gate = gate.clone();
        // Dropped when the thread ends: the VMM waits on it instead of polling.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || {
                let _done = done_tx;
                let confined = seccomp::install(ThreadKind::VsockEvents, mode);
                gate.wait();
                match confined {
                    Ok(()) => vsock::event_loop(&epoll, &transport),
                    Err(e) => tracing::error!(error = %e, "vsock thread not confined; not serving"),
                }
            })
            .map_err(VmmError::Thread)?;
        event_thread = Some((t, stop_evt, done_rx));
    }
    let vcpu_kind = if runtime.is_some() {
        ThreadKind::ConfidentialVcpu
    } else {
        ThreadKind::Vcpu
    };
    for mut vcpu in vcpus {
        let (bus, vm, stop, tx, gate, cc) = (
            bus.clone(),
            vm.clone(),
            stop.clone(),
            tx.clone(),
            gate.clone(),
            runtime.clone(),
        );
        let t = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.index()))
            .spawn(move || {
                let confined = seccomp::install(vcpu_kind, mode);
                gate.wait();
                let why = match confined {
                    Ok(()) if !stop.stopped() => vcpu.run(&bus, vm.memory(), &stop, cc.as_deref()),
                    Ok(()) => VcpuStop::Stopped,
                    Err(e) => VcpuStop::RunError(format!("seccomp: {e}")),
                };
                // Logged here, when it happens (the VMM thread may be in settle_srcu).
                tracing::info!(
                    event = "vcpu-stopped",
                    vcpu = vcpu.index(),
                    reason = why.kind(),
                    "vCPU stopped"
                );
                let _ = tx.send((vcpu.index(), why));
            })
            .map_err(VmmError::Thread)?;
        threads.push(t);
    }
    let vcpu_threads = Arc::new(Mutex::new(
        threads
            .iter()
            .map(std::os::unix::thread::JoinHandleExt::as_pthread_t)
            .collect::<Vec<_>>(),
    ));
    if let Some(api) = config.api.take() {
        let view = ApiView {
            control: stop.clone(),
            vcpu_threads: vcpu_threads.clone(),
            stop_tx: tx.clone(),
            tee: config.tee,
            vcpus: config.vcpus,
            memory: config.memory,
            started,
            measurement: api.measurement,
        };
        let gate = gate.clone();
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let confined = seccomp::install(ThreadKind::Api, mode);
                gate.wait();
                match confined {
                    Ok(()) => crate::api::serve(api.listener, Arc::new(view)),
                    Err(e) => tracing::error!(error = %e, "API thread not confined; not serving"),
                }
            })
            .map_err(VmmError::Thread)?;
    }
    drop(tx);
    if mode == SeccompMode::Off {
        tracing::warn!("seccomp filters are OFF: the VMM is not confined (debugging only)");
    }
    // Created before the filter forbids eventfd2.
    let settle = EventFd::new(libc::EFD_NONBLOCK).ok();
    let confined = seccomp::install(ThreadKind::Vmm, mode);
    if confined.is_err() {
        stop.stop();
    }
    gate.wait();
    confined?;
    tracing::info!(
        event = "running",
        vcpus = config.vcpus,
        setup_us = started.elapsed().as_micros() as u64,
        "guest started"
    );
    if let Some(evt) = settle {
        settle_srcu(&vm, &evt);
    }

    let (index, why) = rx.recv().unwrap_or((
        0,
        VcpuStop::RunError("every vCPU thread ended without a report".into()),
    ));
    tracing::info!(
        event = "stopping",
        first = index,
        reason = why.kind(),
        "stopping the VM"
    );
    stop_threads(&stop, threads, index, &rx, &vcpu_threads, event_thread);
    // Dropping the runtime closes the quote channel; the quote thread ends after at
    // most one QGS exchange, or with the process.
    drop(runtime);
    drop(quote_thread);
    Ok(why)
}

/// Stops every vCPU after the first report (`first`: the vCPU that reported, or
/// `u32::MAX` for the control API) and the vsock event thread, waiting on events rather
/// than sleeping: each vCPU thread sends its report as its last act, so the reports say
/// when it is done with the guest and its devices (no disk request is then in flight).
/// Threads still in KVM_RUN are kicked out with `SIGRTMIN` every millisecond (a kick
/// that lands just before KVM_RUN is lost, so it is repeated). A vCPU that does not
/// report within 5 s, or a vsock thread that does not end within 2 s, is left to
/// process exit with a warning.
fn stop_threads(
    stop: &RunControl,
    threads: Vec<std::thread::JoinHandle<()>>,
    first: u32,
    rx: &mpsc::Receiver<(u32, VcpuStop)>,
    vcpu_threads: &Mutex<Vec<libc::pthread_t>>,
    event_thread: Option<(std::thread::JoinHandle<()>, EventFd, mpsc::Receiver<()>)>,
) {
    stop.stop();
    // vCPU threads are spawned in index order.
    let mut pending: Vec<bool> = (0..threads.len()).map(|i| i as u32 != first).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for (t, p) in threads.iter().zip(pending.iter_mut()).filter(|(_, p)| **p) {
            if t.is_finished() {
                // Ended without a report (it panicked): nothing to wait for.
                *p = false;
            } else {
                let _ = t.kill(SIGRTMIN());
            }
        }
        if !pending.contains(&true) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(1))) {
            Ok((i, _)) => {
                if let Some(p) = pending.get_mut(i as usize) {
                    *p = false;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
            Err(_) => break,
        }
    }
    // The API may not kick threads that are about to be joined.
    vcpu_threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    for (t, still_running) in threads.into_iter().zip(pending) {
        if still_running {
            tracing::warn!("a vCPU thread did not stop; leaving it to process exit");
        } else {
            // It reported: it only has its vCPU to close.
            let _ = t.join();
        }
    }
    if let Some((t, stop_evt, done)) = event_thread {
        let _ = stop_evt.write(1);
        match done.recv_timeout(Duration::from_secs(2)) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = t.join();
            }
            _ => tracing::warn!("the vsock thread did not stop; leaving it to process exit"),
        }
    }
}

/// An MMIO address no device uses (past the last virtio window) and a value no driver
/// writes: the probe of [`settle_srcu`].
const SETTLE_ADDR: u64 = VIRTIO_MMIO_BASE + MAX_VIRTIO_DEVICES as u64 * VIRTIO_MMIO_SIZE;
const SETTLE_MATCH: u64 = u64::from_le_bytes(*b"cvm-srcu");

/// Ends now, while the guest runs, the SRCU grace period that closing the VM would
/// otherwise wait for.
///
/// KVM_CREATE_IRQCHIP registers the in-kernel PIC and I/O APIC on KVM's I/O buses; each
/// registration frees the old bus with `call_srcu(&kvm->srcu)`, and `kvm_destroy_vm`
/// waits for those callbacks (`srcu_barrier`). Nothing asks for that grace period to
/// be expedited, so it takes a few scheduler ticks (~8 ms at HZ=250 on this project's
/// machine): a guest that stops sooner than that made `cvm` wait for it after the
/// vCPU stopped. Registering and unregistering an ioeventfd makes KVM run
/// `synchronize_srcu_expedited(&kvm->srcu)`, which finishes the pending grace period
/// early. The VMM thread has nothing else to do until a vCPU reports, and the probe
/// (an 8-byte write of [`SETTLE_MATCH`] to [`SETTLE_ADDR`], where a write is ignored
/// anyway) changes nothing the guest can see. Best effort: a failure is only logged.
fn settle_srcu(vm: &Vm, evt: &EventFd) {
    let addr = kvm_ioctls::IoEventAddress::Mmio(SETTLE_ADDR);
    let r = vm
        .fd()
        .register_ioevent(evt, &addr, SETTLE_MATCH)
        .and_then(|()| vm.fd().unregister_ioevent(evt, &addr, SETTLE_MATCH));
    if let Err(e) = r {
        tracing::debug!(error = %e, "cannot settle KVM's SRCU grace period early");
    }
}
