//! Building and running a VM.
//!
//! [`VmBuilder`] assembles a VM from a [`VmConfig`] in named steps ([`Step`]): create
//! the VM, attach the legacy devices, place the boot data, attach the TEE's devices,
//! attach the virtio devices (one helper for every kind), write the ACPI tables, then
//! the TEE backend's launch steps around vCPU creation, and finally start the vCPU
//! threads. The result is a running [`Vmm`] with `pause`, `resume`, `shutdown` and
//! `run` (wait for the guest to stop, then tear down); the control API talks to a
//! [`VmmHandle`] of it. Everything TEE-specific comes from the config's
//! [`TeeBackend`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::acpi::{self, AcpiError, VirtioMmioDesc};
use crate::api::ControlError;
use crate::boot::{self, BootError, BootInputs, Tamper};
use crate::devices::cmos::{Cmos, CMOS_BASE};
use crate::devices::ioapic::{IoApic, IOAPIC_BASE, IOAPIC_SIZE};
use crate::devices::legacy::{AcpiPm, PvPanic, I8042, I8042_BASE, PM1A_EVT, PVPANIC_PORT};
use crate::devices::pci_config::{NoPci, PCI_CONFIG_BASE, PCI_CONFIG_LEN};
use crate::devices::serial::{IrqTrigger, SerialPort, COM1_BASE, COM1_IRQ};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{self as virtio_net, Net, NetError, NetStats};
use crate::devices::virtio::vsock::{self, Vsock, VsockConfig, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::devices::{BusOverlap, Buses, MmioOverlap};
use crate::net::NetAttachment;
use crate::seccomp::{self, SeccompError, SeccompMode, ThreadKind};
use crate::tee::backend::{ExpectedMeasurement, PendingLaunch, TeeError, TeeRuntime, VmType};
use crate::tee::evidence_vsock::{EvidenceService, EvidenceServiceError};
use crate::tee::TeeBackend;
use crate::vstate::vcpu::{RunControl, Vcpu, VcpuError, VcpuStop};
use crate::vstate::vm::{IrqChip, KvmRoutes, Vm, VmError};

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
    /// The TEE: VM type, CPUID, devices, ACPI additions, launch steps, exit handlers
    /// and the expected measurement.
    pub tee: Arc<dyn TeeBackend>,
    /// Kernel, initrd and command line to stage for the firmware.
    pub boot: Option<BootInputs>,
    /// TEST EQUIPMENT: stage a corrupted copy of one boot item.
    pub tamper: Option<Tamper>,
    /// The virtio-vsock device, if any (after the disks in MMIO order).
    pub vsock: Option<VsockConfig>,
    /// /dev/kvm opened before the VMM entered its jail (`None`: open it here).
    pub kvm: Option<Kvm>,
    /// The control API's socket, bound before the jail.
    pub api: Option<std::os::unix::net::UnixListener>,
    /// virtio-net interfaces, their taps opened before the jail (after vsock in MMIO
    /// order).
    pub net: Vec<NetAttachment>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("firmware_bytes", &self.firmware.len())
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus)
            .field("tee", &self.tee)
            .field("disks", &self.disks)
            .field("vsock", &self.vsock.is_some())
            .field("api", &self.api.is_some())
            .field(
                "net",
                &self
                    .net
                    .iter()
                    .map(|n| n.config.interface())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
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
    /// The guest CPUID template could not be applied.
    #[error("cannot build the guest CPUID")]
    CpuidTemplate(#[from] crate::vstate::cpuid::CpuidError),
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
    /// A virtio-net device could not be created.
    #[error("cannot create the virtio-net device on tap {0}")]
    Net(String, #[source] NetError),
    /// The emulated TEE's evidence service could not start (or the command line's
    /// `cvm.tsm=` word is unusable).
    #[error("cannot start the emulated TEE's evidence service")]
    Evidence(#[source] crate::tee::evidence_vsock::EvidenceServiceError),
    /// A step of the TEE backend failed.
    #[error("the TEE backend failed")]
    Tee(#[from] TeeError),
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

/// The build steps, in the order [`VmBuilder::build`] runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// KVM_CREATE_VM of the backend's type, guest memory and the firmware.
    CreateVm,
    /// Serial, i8042, ACPI PM, pvpanic, RTC/CMOS, PCI configuration ports (no PCI) (and
    /// the I/O APIC of a split irqchip).
    LegacyDevices,
    /// The backend's preloaded pages and the staged kernel.
    BootData,
    /// The backend's own devices (emulated SNP's trap-event ports, emulated TDX's
    /// plain-handoff port).
    TeeDevices,
    /// virtio-blk disks, virtio-vsock and virtio-net.
    VirtioDevices,
    /// The ACPI tables, with the backend's additions.
    Acpi,
    /// The host-supported CPUID, adjusted by the backend.
    Cpuid,
    /// The backend's VM-level launch commands.
    TeeBeforeVcpus,
    /// KVM_CREATE_VCPU for every vCPU.
    Vcpus,
    /// The backend's per-vCPU and memory launch commands.
    TeeAfterVcpus,
    /// The backend's run-time exit handler and its threads.
    TeeRuntime,
    /// Every thread confined and released: the guest runs.
    StartVcpus,
}

/// A VM being built: the state the steps hand on.
pub struct VmBuilder {
    config: VmConfig,
    kvm: Kvm,
    started: Instant,
    steps: Vec<Step>,
    vm: Option<Arc<Vm>>,
    bus: Buses,
    virtio: Vec<VirtioMmioDesc>,
    vsock_loop: Option<VsockLoop>,
    net_loops: Vec<VsockLoop>,
    net_stats: Vec<(String, Arc<NetStats>)>,
    /// Where the boot data was staged (the ACPI slot is filled by `write_acpi`).
    staged: boot::StagingLayout,
}

impl std::fmt::Debug for VmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBuilder")
            .field("config", &self.config)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

/// A device's event loop (vsock, each virtio-net), before its thread starts.
struct VsockLoop {
    epoll: Arc<Epoll>,
    transport: Arc<Mutex<MmioTransport>>,
    stop: EventFd,
}

/// The launched vCPUs and the TEE runtime, ready to start.
struct Launched {
    vcpus: Vec<Vcpu>,
    runtime: Option<TeeRuntime>,
}

impl VmBuilder {
    /// Checks `config` against this host's KVM.
    pub fn new(mut config: VmConfig) -> Result<Self, VmmError> {
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
        let n_devices = config.disks.len() + usize::from(config.vsock.is_some()) + config.net.len();
        if n_devices > MAX_VIRTIO_DEVICES {
            return Err(VmmError::TooManyDevices(n_devices));
        }
        Ok(Self {
            config,
            kvm,
            started,
            steps: Vec::new(),
            vm: None,
            bus: Buses::default(),
            virtio: Vec::new(),
            vsock_loop: None,
            net_loops: Vec::new(),
            net_stats: Vec::new(),
            staged: boot::StagingLayout::default(),
        })
    }

    /// Runs every step and starts the guest.
    pub fn build(mut self) -> Result<Vmm, VmmError> {
        let vm = self.create_vm()?;
        self.attach_legacy_devices(&vm)?;
        self.place_boot_data(&vm)?;
        self.attach_tee_devices(&vm)?;
        self.attach_virtio_devices(&vm)?;
        self.write_acpi(&vm)?;
        let cpuid = self.cpuid(&vm)?;
        let launched = self.launch(&vm, &cpuid)?;
        self.start(vm, launched)
    }

    fn step(&mut self, s: Step) {
        tracing::debug!(step = ?s, elapsed_us = self.started.elapsed().as_micros() as u64, "build step");
        self.steps.push(s);
    }

    fn create_vm(&mut self) -> Result<Arc<Vm>, VmmError> {
        self.step(Step::CreateVm);
        let c = &self.config;
        let vm = Arc::new(match c.tee.vm_type() {
            VmType::Default => Vm::new(&self.kvm, c.memory, &c.firmware)?,
            VmType::Confidential { kvm_type, irqchip } => {
                Vm::new_confidential(&self.kvm, kvm_type, irqchip, c.memory, &c.firmware)?
            }
            VmType::EmulatedConfidential(config) => {
                Vm::new_emulated_confidential(&self.kvm, c.memory, &c.firmware, config)?
            }
        });
        self.vm = Some(vm.clone());
        Ok(vm)
    }

    fn attach_legacy_devices(&mut self, vm: &Arc<Vm>) -> Result<(), VmmError> {
        self.step(Step::LegacyDevices);
        let split = matches!(
            self.config.tee.vm_type(),
            VmType::Confidential {
                irqchip: IrqChip::Split,
                ..
            }
        );
        if split {
            // Split irqchip: the I/O APIC is ours; its routes make device lines MSIs.
            self.bus.mmio.insert(
                IOAPIC_BASE,
                IOAPIC_SIZE,
                Arc::new(Mutex::new(IoApic::new(KvmRoutes(vm.clone())))),
            )?;
        }
        let serial = SerialPort::new(vm.irqfd(COM1_IRQ)?, serial_writer(&self.config.serial)?);
        let pio = &mut self.bus.pio;
        pio.insert(COM1_BASE, 8, Arc::new(Mutex::new(serial)))?;
        pio.insert(I8042_BASE, 5, Arc::new(Mutex::new(I8042)))?;
        pio.insert(PM1A_EVT, 8, Arc::new(Mutex::new(AcpiPm::default())))?;
        pio.insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(PvPanic)))?;
        // What a stock Linux probes: the RTC/CMOS and PCI configuration (none).
        pio.insert(CMOS_BASE, 2, Arc::new(Mutex::new(Cmos::default())))?;
        pio.insert(
            PCI_CONFIG_BASE,
            PCI_CONFIG_LEN,
            Arc::new(Mutex::new(NoPci::default())),
        )?;
        Ok(())
    }

    fn place_boot_data(&mut self, vm: &Vm) -> Result<(), VmmError> {
        self.step(Step::BootData);
        for (gpa, page) in self.config.tee.preload() {
            vm.memory()
                .write_slice(page, vm_memory::GuestAddress(*gpa))
                .map_err(VmmError::Preload)?;
        }
        let c = &self.config;
        let staged = boot::stage(vm.memory(), c.memory, c.vcpus, c.boot.as_ref(), c.tamper)?;
        self.staged = staged;
        if c.boot.is_some() {
            tracing::info!(
                event = "boot-data",
                staging = format_args!("{:#x}+{:#x}", staged.base, staged.size),
                kernel = format_args!("{:#x}+{:#x}", staged.kernel.0, staged.kernel.1),
                initrd = format_args!("{:#x}+{:#x}", staged.initrd.0, staged.initrd.1),
                cmdline = format_args!("{:#x}+{:#x}", staged.cmdline.0, staged.cmdline.1),
                "kernel staged; boot-data descriptor at 0x8000"
            );
        }
        Ok(())
    }

    fn attach_tee_devices(&mut self, vm: &Vm) -> Result<(), VmmError> {
        self.step(Step::TeeDevices);
        for d in self.config.tee.devices(vm.memory()) {
            tracing::info!(
                event = "device",
                kind = d.name,
                port = format_args!("{:#x}", d.base),
                "TEE device attached"
            );
            self.bus.pio.insert(d.base, d.len, d.device)?;
        }
        Ok(())
    }

    /// Whether the command line staged in guest memory (the bytes the firmware
    /// measures and the kernel reads) asks for the vsock evidence service
    /// ([`crate::tee::evidence_vsock::requested`]).
    fn staged_cmdline_requests_evidence(&self, vm: &Vm) -> Result<bool, VmmError> {
        let (gpa, size) = self.staged.cmdline;
        if size == 0 {
            return Ok(false);
        }
        let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(0)];
        vm.memory()
            .read_slice(&mut bytes, vm_memory::GuestAddress(gpa))
            .map_err(|e| VmmError::Evidence(EvidenceServiceError::Cmdline(e)))?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        // Not UTF-8: no word can be `cvm.tsm=vsock` in the lossy text either way.
        let text = String::from_utf8_lossy(&bytes[..end]);
        crate::tee::evidence_vsock::requested(&text).map_err(VmmError::Evidence)
    }

    fn attach_virtio_devices(&mut self, vm: &Vm) -> Result<(), VmmError> {
        self.step(Step::VirtioDevices);
        for d in self.config.disks.clone() {
            let block = Block::open(&d.path, d.read_only)?;
            let (base, gsi, _) = self.attach_virtio(vm, Box::new(block))?;
            tracing::info!(event = "device", kind = "virtio-blk", path = %d.path.display(), read_only = d.read_only, mmio = format_args!("{base:#x}"), gsi, "disk attached");
        }
        if let Some(vc) = self.config.vsock.clone() {
            let epoll = Arc::new(Epoll::new().map_err(VmmError::EventLoop)?);
            let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventLoop)?;
            epoll
                .ctl(
                    ControlOperation::Add,
                    std::os::unix::io::AsRawFd::as_raw_fd(&stop),
                    EpollEvent::new(EventSet::IN, vsock::TOKEN_STOP),
                )
                .map_err(VmmError::EventLoop)?;
            let mut device = Vsock::new(&vc, epoll.clone())?;
            // The evidence service is for a stock Linux under an emulated TEE, and only
            // when the staged (measured) command line selects it with `cvm.tsm=vsock`.
            let mut offers_evidence = false;
            if let Some(source) = self.config.tee.evidence_source() {
                if self.staged_cmdline_requests_evidence(vm)? {
                    device.set_evidence(
                        EvidenceService::start(source, self.config.seccomp)
                            .map_err(VmmError::Evidence)?,
                    );
                    offers_evidence = true;
                    tracing::info!(
                        event = "evidence-service",
                        port = vsock::EVIDENCE_PORT,
                        "the measured command line says cvm.tsm=vsock: the emulated TEE's \
                         vsock evidence service is attached"
                    );
                } else {
                    tracing::info!(
                        event = "evidence-service",
                        "no cvm.tsm=vsock on the measured command line: no vsock evidence \
                         service (the port is refused)"
                    );
                }
            }
            let (base, gsi, transport) = self.attach_virtio(vm, Box::new(device))?;
            tracing::info!(
                event = "device",
                kind = "virtio-vsock",
                guest_cid = vc.guest_cid,
                uds = ?vc.uds,
                relay = vc.relay.as_ref().map(|r| r.url.as_str()).unwrap_or("none"),
                evidence_port = offers_evidence.then_some(vsock::EVIDENCE_PORT),
                mmio = format_args!("{base:#x}"),
                gsi,
                "vsock attached"
            );
            self.vsock_loop = Some(VsockLoop {
                epoll,
                transport,
                stop,
            });
        }
        for n in std::mem::take(&mut self.config.net) {
            let iface = n.config.interface();
            let epoll = Arc::new(Epoll::new().map_err(VmmError::EventLoop)?);
            let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventLoop)?;
            epoll
                .ctl(
                    ControlOperation::Add,
                    std::os::unix::io::AsRawFd::as_raw_fd(&stop),
                    EpollEvent::new(EventSet::IN, virtio_net::TOKEN_STOP),
                )
                .map_err(VmmError::EventLoop)?;
            let device = Net::new(n.tap, n.config.mac, n.config.limits, &epoll)
                .map_err(|e| VmmError::Net(iface.tap.clone(), e))?;
            self.net_stats.push((iface.tap.clone(), device.stats()));
            let (base, gsi, transport) = self.attach_virtio(vm, Box::new(device))?;
            tracing::info!(
                event = "device",
                kind = "virtio-net",
                tap = %iface.tap,
                owned = iface.owned,
                mac = %iface.mac,
                ip = ?iface.ip.map(|i| i.to_string()),
                limits = ?n.config.limits,
                mmio = format_args!("{base:#x}"),
                gsi,
                "network interface attached"
            );
            self.net_loops.push(VsockLoop {
                epoll,
                transport,
                stop,
            });
        }
        Ok(())
    }

    /// Puts `device` behind the next virtio-mmio window and GSI; returns (base, GSI,
    /// transport).
    fn attach_virtio(
        &mut self,
        vm: &Vm,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(u64, u32, Arc<Mutex<MmioTransport>>), VmmError> {
        let i = self.virtio.len();
        if i >= MAX_VIRTIO_DEVICES {
            return Err(VmmError::TooManyDevices(i + 1));
        }
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_FIRST_GSI + i as u32;
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            vm.memory().clone(),
            IrqTrigger(vm.irqfd(gsi)?),
            self.config.tee.virtio_access_platform(),
        )));
        self.bus
            .mmio
            .insert(base, VIRTIO_MMIO_SIZE, transport.clone())?;
        self.virtio.push(VirtioMmioDesc {
            base: base as u32,
            size: VIRTIO_MMIO_SIZE as u32,
            irq: gsi,
        });
        Ok((base, gsi, transport))
    }

    fn write_acpi(&mut self, vm: &Vm) -> Result<(), VmmError> {
        self.step(Step::Acpi);
        let extra = self.config.tee.acpi();
        let tables = acpi::build_with(self.config.vcpus, &self.virtio, extra.ccel)?;
        vm.memory()
            .write_slice(&tables.blob, vm_memory::GuestAddress(tables.rsdp_gpa))
            .map_err(VmmError::AcpiWrite)?;
        // The firmware's input (issue 13 bug 7): the same blob in the shared staging
        // region, which the firmware checks and copies into private memory.
        boot::stage_acpi(vm.memory(), &self.staged, &tables.blob, self.config.tamper)?;
        Ok(())
    }

    /// KVM's supported CPUID, normalised by the template ([`crate::vstate::cpuid`]),
    /// then adjusted by the TEE backend.
    fn cpuid(&mut self, vm: &Vm) -> Result<CpuId, VmmError> {
        self.step(Step::Cpuid);
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::Cpuid)?;
        let template =
            crate::vstate::cpuid::Template::for_host(&self.kvm, vm.fd(), self.config.vcpus);
        tracing::debug!(?template, "guest CPUID template");
        crate::vstate::cpuid::apply(&mut cpuid, &template)?;
        self.config.tee.adjust_cpuid(&mut cpuid);
        Ok(cpuid)
    }

    /// The backend's launch steps around vCPU creation, then its runtime.
    fn launch(&mut self, vm: &Arc<Vm>, cpuid: &CpuId) -> Result<Launched, VmmError> {
        self.step(Step::TeeBeforeVcpus);
        let tee = self.config.tee.clone();
        let pending: Box<dyn PendingLaunch + '_> = tee.before_vcpus(vm, cpuid)?;
        self.step(Step::Vcpus);
        let vcpus = (0..self.config.vcpus)
            .map(|i| Vcpu::new(vm.fd(), i, cpuid))
            .collect::<Result<Vec<_>, _>>()?;
        self.step(Step::TeeAfterVcpus);
        let fds: Vec<_> = vcpus.iter().map(Vcpu::fd).collect();
        pending.after_vcpus(vm, &fds, cpuid)?;
        self.step(Step::TeeRuntime);
        let runtime = tee.runtime(vm, self.config.seccomp)?;
        Ok(Launched { vcpus, runtime })
    }

    /// Starts every thread; each installs its seccomp filter and waits at a gate, so no
    /// guest code runs before all filters are in place.
    fn start(mut self, vm: Arc<Vm>, launched: Launched) -> Result<Vmm, VmmError> {
        self.step(Step::StartVcpus);
        register_signal_handler(SIGRTMIN(), kick_handler).map_err(VmmError::Signal)?;
        let mode = self.config.seccomp;
        let control = Arc::new(RunControl::default());
        let (tx, rx) = mpsc::channel();
        let api = self.config.api.take();
        let gate = Arc::new(std::sync::Barrier::new(
            launched.vcpus.len()
                + 1
                + usize::from(self.vsock_loop.is_some())
                + self.net_loops.len()
                + usize::from(api.is_some()),
        ));
        let event_thread = match self.vsock_loop.take() {
            Some(l) => Some(spawn_vsock(l, gate.clone(), mode)?),
            None => None,
        };
        let net_threads = std::mem::take(&mut self.net_loops)
            .into_iter()
            .map(|l| spawn_net(l, gate.clone(), mode))
            .collect::<Result<Vec<_>, _>>()?;
        let exits = launched
            .runtime
            .as_ref()
            .map(|r| (r.exits.clone(), r.vcpu_thread));
        let bus = Arc::new(std::mem::take(&mut self.bus));
        // A TEE whose handler performs port I/O for the guest (GHCB IOIO exits of the
        // emulated SNP, TDVMCALL<Instruction.IO> of the emulated TDX) reaches the devices
        // through the same bus.
        self.config.tee.attach_buses(&bus);
        let threads = launched
            .vcpus
            .into_iter()
            .map(|vcpu| {
                let ctx = VcpuContext {
                    bus: bus.clone(),
                    vm: vm.clone(),
                    control: control.clone(),
                    tx: tx.clone(),
                    gate: gate.clone(),
                    exits: exits.clone(),
                    mode,
                };
                spawn_vcpu(vcpu, ctx)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(VmmShared {
            control,
            vcpu_threads: Mutex::new(
                threads
                    .iter()
                    .map(std::os::unix::thread::JoinHandleExt::as_pthread_t)
                    .collect(),
            ),
            stop_tx: Mutex::new(tx),
            vcpus: self.config.vcpus,
            memory: self.config.memory,
            started: self.started,
            measurement: self.config.tee.measurement(),
        });
        if let Some(listener) = api {
            spawn_api(listener, VmmHandle(shared.clone()), gate.clone(), mode)?;
        }
        if mode == SeccompMode::Off {
            tracing::warn!("seccomp filters are OFF: the VMM is not confined (debugging only)");
        }
        // Created before the filter forbids eventfd2.
        let settle = EventFd::new(libc::EFD_NONBLOCK).ok();
        let confined = seccomp::install(ThreadKind::Vmm, mode);
        if confined.is_err() {
            shared.control.stop();
        }
        gate.wait();
        confined?;
        tracing::info!(
            event = "running",
            vcpus = self.config.vcpus,
            setup_us = self.started.elapsed().as_micros() as u64,
            "guest started"
        );
        if let Some(evt) = settle {
            settle_srcu(&vm, &evt);
        }
        Ok(Vmm {
            shared,
            threads,
            rx,
            event_thread,
            net_threads,
            net_stats: std::mem::take(&mut self.net_stats),
            runtime: launched.runtime,
            steps: self.steps,
            _vm: vm,
        })
    }
}

/// What a vCPU thread needs.
struct VcpuContext {
    bus: Arc<Buses>,
    vm: Arc<Vm>,
    control: Arc<RunControl>,
    tx: mpsc::Sender<(u32, VcpuStop)>,
    gate: Arc<std::sync::Barrier>,
    /// The TEE's exit handler and the filter its vCPU threads need.
    exits: Option<(Arc<dyn crate::vstate::vcpu::ExitHandler>, ThreadKind)>,
    mode: SeccompMode,
}

fn spawn_vcpu(mut vcpu: Vcpu, c: VcpuContext) -> Result<JoinHandle<()>, VmmError> {
    let kind = c.exits.as_ref().map_or(ThreadKind::Vcpu, |(_, kind)| *kind);
    std::thread::Builder::new()
        .name(format!("vcpu{}", vcpu.index()))
        .spawn(move || {
            let confined = seccomp::install(kind, c.mode);
            c.gate.wait();
            let why = match confined {
                Ok(()) if !c.control.stopped() => vcpu.run(
                    &c.bus,
                    c.vm.memory(),
                    &c.control,
                    c.exits.as_ref().map(|(h, _)| h.as_ref()),
                ),
                Ok(()) => VcpuStop::Stopped,
                Err(e) => VcpuStop::RunError(format!("seccomp: {e}")),
            };
            // Logged here, when it happens (the VMM thread may be in settle_srcu).
            let n = vcpu.exit_counts();
            tracing::info!(
                event = "vcpu-stopped",
                vcpu = vcpu.index(),
                reason = why.kind(),
                exits = n.total,
                exits_io = n.io,
                exits_mmio = n.mmio,
                exits_msr = n.msr,
                exits_internal = n.internal,
                exits_hypercall = n.hypercall,
                exits_memory_fault = n.memory_fault,
                "vCPU stopped"
            );
            let _ = c.tx.send((vcpu.index(), why));
        })
        .map_err(VmmError::Thread)
}

fn spawn_vsock(
    l: VsockLoop,
    gate: Arc<std::sync::Barrier>,
    mode: SeccompMode,
) -> Result<EventThread, VmmError> {
    let (epoll, transport) = (l.epoll, l.transport);
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
    Ok(EventThread {
        thread: t,
        stop: l.stop,
        done: done_rx,
    })
}

fn spawn_net(
    l: VsockLoop,
    gate: Arc<std::sync::Barrier>,
    mode: SeccompMode,
) -> Result<EventThread, VmmError> {
    let (epoll, transport) = (l.epoll, l.transport);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let t = std::thread::Builder::new()
        .name("virtio-net".into())
        .spawn(move || {
            let _done = done_tx;
            let confined = seccomp::install(ThreadKind::NetEvents, mode);
            gate.wait();
            match confined {
                Ok(()) => virtio_net::event_loop(&epoll, &transport),
                Err(e) => {
                    tracing::error!(error = %e, "virtio-net thread not confined; not serving")
                }
            }
        })
        .map_err(VmmError::Thread)?;
    Ok(EventThread {
        thread: t,
        stop: l.stop,
        done: done_rx,
    })
}

/// A device event thread, its stop event and the channel its end closes.
struct EventThread {
    thread: JoinHandle<()>,
    stop: EventFd,
    done: mpsc::Receiver<()>,
}

fn spawn_api(
    listener: std::os::unix::net::UnixListener,
    handle: VmmHandle,
    gate: Arc<std::sync::Barrier>,
    mode: SeccompMode,
) -> Result<(), VmmError> {
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let confined = seccomp::install(ThreadKind::Api, mode);
            gate.wait();
            match confined {
                Ok(()) => crate::api::serve(listener, Arc::new(handle)),
                Err(e) => tracing::error!(error = %e, "API thread not confined; not serving"),
            }
        })
        .map(|_| ())
        .map_err(VmmError::Thread)
}

/// What the [`Vmm`] shares with its handles.
struct VmmShared {
    control: Arc<RunControl>,
    /// vCPU threads to kick out of KVM_RUN; emptied before they are joined.
    vcpu_threads: Mutex<Vec<libc::pthread_t>>,
    stop_tx: Mutex<mpsc::Sender<(u32, VcpuStop)>>,
    vcpus: u32,
    memory: u64,
    started: Instant,
    measurement: ExpectedMeasurement,
}

impl VmmShared {
    fn kick(&self) {
        let threads = self.vcpu_threads.lock().unwrap_or_else(|e| e.into_inner());
        for &t in threads.iter() {
            // SAFETY: `t` is a live, unjoined vCPU thread (the list is emptied before the
            // threads are joined, under this lock); the signal's handler does nothing.
            unsafe { libc::pthread_kill(t, SIGRTMIN()) };
        }
    }
}

/// A running VM.
pub struct Vmm {
    shared: Arc<VmmShared>,
    threads: Vec<JoinHandle<()>>,
    rx: mpsc::Receiver<(u32, VcpuStop)>,
    event_thread: Option<EventThread>,
    net_threads: Vec<EventThread>,
    /// Each virtio-net interface's counters, logged when the VM stops.
    net_stats: Vec<(String, Arc<NetStats>)>,
    runtime: Option<TeeRuntime>,
    steps: Vec<Step>,
    /// Keeps the VM (and its memory) alive until the threads are gone.
    _vm: Arc<Vm>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.shared.vcpus)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

/// A handle of a [`Vmm`] for the control API.
#[derive(Clone)]
pub struct VmmHandle(Arc<VmmShared>);

impl std::fmt::Debug for VmmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmHandle")
            .field("vcpus", &self.0.vcpus)
            .finish_non_exhaustive()
    }
}

impl Vmm {
    /// The build steps that ran, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// A handle for the control API.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle(self.shared.clone())
    }

    /// Pauses the vCPUs.
    pub fn pause(&self) -> Result<(), ControlError> {
        self.handle().pause_vcpus()
    }

    /// Resumes the vCPUs.
    pub fn resume(&self) -> Result<(), ControlError> {
        self.handle().resume_vcpus()
    }

    /// Asks the VM to stop; [`Vmm::run`] then returns [`VcpuStop::ShutdownRequested`].
    pub fn shutdown(&self) {
        self.handle().request_shutdown();
    }

    /// Waits until the guest stops (the first vCPU to stop decides why), then tears
    /// the VM down.
    pub fn run(mut self) -> VcpuStop {
        let (index, why) = self.first_stop();
        tracing::info!(
            event = "stopping",
            first = index,
            reason = why.kind(),
            "stopping the VM"
        );
        self.teardown(index);
        why
    }

    /// The first vCPU's stop report. Handles keep a sender alive (for API shutdowns),
    /// so vCPU threads that all ended without a report are noticed by polling.
    fn first_stop(&self) -> (u32, VcpuStop) {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(report) => return report,
                Err(mpsc::RecvTimeoutError::Timeout)
                    if !self.threads.iter().all(JoinHandle::is_finished) => {}
                // A report sent just before its thread ended is still queued.
                Err(_) => {
                    return self.rx.try_recv().unwrap_or((
                        0,
                        VcpuStop::RunError("every vCPU thread ended without a report".into()),
                    ))
                }
            }
        }
    }

    /// Stops the vCPU threads and the vsock thread ([`stop_threads`]); dropping the TEE
    /// runtime ends its threads. `first` is the vCPU that reported first. Runs once:
    /// afterwards the thread lists are empty (so [`Drop`] does nothing).
    fn teardown(&mut self, first: u32) {
        let threads = std::mem::take(&mut self.threads);
        let event_thread = self.event_thread.take();
        let net_threads = std::mem::take(&mut self.net_threads);
        if threads.is_empty()
            && event_thread.is_none()
            && net_threads.is_empty()
            && self.runtime.is_none()
        {
            return;
        }
        stop_threads(
            &self.shared.control,
            threads,
            first,
            &self.rx,
            &self.shared.vcpu_threads,
            event_thread,
        );
        for e in net_threads {
            stop_event_thread(e, "virtio-net");
        }
        for (tap, s) in &self.net_stats {
            let g = NetStats::get;
            tracing::info!(
                event = "net-stats",
                tap = %tap,
                tx_frames = g(&s.tx_frames),
                tx_bytes = g(&s.tx_bytes),
                tx_malformed = g(&s.tx_malformed),
                tx_errors = g(&s.tx_errors),
                rx_frames = g(&s.rx_frames),
                rx_bytes = g(&s.rx_bytes),
                rx_malformed = g(&s.rx_malformed),
                rx_dropped = g(&s.rx_dropped),
                throttled = g(&s.throttled),
                "network interface counters"
            );
        }
        // Dropping the runtime closes the quote channel; the quote thread ends after at
        // most one QGS exchange, or with the process.
        drop(self.runtime.take());
    }
}

/// A `Vmm` dropped without [`Vmm::run`] (an error path of its owner, a test) stops its
/// guest and tears down exactly as `run` does: the vCPU threads are stopped and
/// joined and their ids removed from the list the control API kicks, so a
/// [`VmmHandle`] that outlives the `Vmm` never signals a thread that has ended.
impl Drop for Vmm {
    fn drop(&mut self) {
        self.teardown(u32::MAX);
    }
}

impl VmmHandle {
    fn pause_vcpus(&self) -> Result<(), ControlError> {
        let c = &self.0.control;
        if c.stopped() {
            return Err(ControlError::Stopping);
        }
        if c.paused() {
            return Err(ControlError::AlreadyPaused);
        }
        c.set_paused(true);
        self.0.kick();
        tracing::info!(event = "paused", "vCPUs paused through the API");
        Ok(())
    }

    fn resume_vcpus(&self) -> Result<(), ControlError> {
        if !self.0.control.paused() {
            return Err(ControlError::NotPaused);
        }
        self.0.control.set_paused(false);
        tracing::info!(event = "resumed", "vCPUs resumed through the API");
        Ok(())
    }

    fn request_shutdown(&self) {
        tracing::info!(
            event = "shutdown-requested",
            "shutdown requested through the API"
        );
        let tx = self.0.stop_tx.lock().unwrap_or_else(|e| e.into_inner());
        let _ = tx.send((u32::MAX, VcpuStop::ShutdownRequested));
    }
}

impl crate::api::VmControl for VmmHandle {
    fn status(&self) -> serde_json::Value {
        let c = &self.0.control;
        let state = if c.stopped() {
            "stopping"
        } else if c.paused() {
            "paused"
        } else {
            "running"
        };
        serde_json::json!({
            "state": state,
            "tee": self.0.measurement.tee.to_string(),
            "vcpus": self.0.vcpus,
            "memory_bytes": self.0.memory,
            "uptime_ms": self.0.started.elapsed().as_millis() as u64,
        })
    }

    fn measurement(&self) -> serde_json::Value {
        self.0.measurement.to_json()
    }

    fn pause(&self) -> Result<(), ControlError> {
        self.pause_vcpus()
    }

    fn resume(&self) -> Result<(), ControlError> {
        self.resume_vcpus()
    }

    fn shutdown(&self) {
        self.request_shutdown();
    }
}

/// Builds the VM described by `config`, runs it until the guest stops, and returns why.
pub fn run(config: VmConfig) -> Result<VcpuStop, VmmError> {
    Ok(VmBuilder::new(config)?.build()?.run())
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
    event_thread: Option<EventThread>,
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
    if let Some(e) = event_thread {
        stop_event_thread(e, "vsock");
    }
}

/// Stops a device event thread: signals its stop event and joins it, or leaves it to
/// process exit with a warning after 2 s.
fn stop_event_thread(e: EventThread, name: &str) {
    let _ = e.stop.write(1);
    match e.done.recv_timeout(Duration::from_secs(2)) {
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = e.thread.join();
        }
        _ => tracing::warn!("the {name} thread did not stop; leaving it to process exit"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tee::none::NoTee;

    /// /dev/kvm, or a visible skip (a failure under `CI=true`).
    /// /dev/kvm, or a visible skip (a failure under CI: `test_kit`).
    fn kvm_or_skip(_test: &str) -> Option<Kvm> {
        if !test_kit::require_kvm() {
            return None;
        }
        Some(Kvm::new().expect("/dev/kvm opened for the check but KVM_GET_API_VERSION failed"))
    }

    /// A 4 KiB firmware whose reset vector runs `code`.
    fn firmware(code: &[u8]) -> Vec<u8> {
        let mut fw = vec![0xF4; 4096];
        fw[4096 - 16..4096 - 16 + code.len()].copy_from_slice(code);
        fw
    }

    fn config(kvm: Kvm, code: &[u8]) -> VmConfig {
        VmConfig {
            firmware: firmware(code),
            memory: 64 << 20,
            vcpus: 1,
            serial: SerialOutput::None,
            seccomp: SeccompMode::Off,
            disks: Vec::new(),
            tee: Arc::new(NoTee::default()),
            boot: None,
            tamper: None,
            vsock: None,
            kvm: Some(kvm),
            api: None,
            net: Vec::new(),
        }
    }

    #[test]
    fn the_builder_runs_its_steps_in_launch_order_and_the_guest_runs() {
        let Some(kvm) = kvm_or_skip("the_builder_runs_its_steps_in_launch_order") else {
            return;
        };
        // mov al, 0xfe; out 0x64, al: an i8042 reset request.
        let vmm = VmBuilder::new(config(kvm, &[0xB0, 0xFE, 0xE6, 0x64, 0xF4]))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            vmm.steps(),
            [
                Step::CreateVm,
                Step::LegacyDevices,
                Step::BootData,
                Step::TeeDevices,
                Step::VirtioDevices,
                Step::Acpi,
                Step::Cpuid,
                Step::TeeBeforeVcpus,
                Step::Vcpus,
                Step::TeeAfterVcpus,
                Step::TeeRuntime,
                Step::StartVcpus,
            ]
        );
        assert_eq!(
            vmm.run(),
            VcpuStop::Reset,
            "the firmware's reset reached the VMM"
        );
    }

    #[test]
    fn a_running_vmm_pauses_resumes_and_shuts_down() {
        let Some(kvm) = kvm_or_skip("a_running_vmm_pauses_resumes_and_shuts_down") else {
            return;
        };
        // pause: jmp pause (a busy guest the VMM must kick out of KVM_RUN).
        let vmm = VmBuilder::new(config(kvm, &[0xF3, 0x90, 0xEB, 0xFC]))
            .unwrap()
            .build()
            .unwrap();
        use crate::api::VmControl;
        let h = vmm.handle();
        assert_eq!(h.status()["state"], "running");
        assert_eq!(h.measurement()["tee"], "none");
        assert!(h.measurement()["measurement"].is_null());
        assert_eq!(vmm.resume(), Err(ControlError::NotPaused));
        vmm.pause().unwrap();
        assert_eq!(h.status()["state"], "paused");
        assert_eq!(vmm.pause(), Err(ControlError::AlreadyPaused));
        vmm.resume().unwrap();
        assert_eq!(h.status()["state"], "running");
        vmm.shutdown();
        assert_eq!(vmm.run(), VcpuStop::ShutdownRequested);
        assert_eq!(h.status()["state"], "stopping");
        assert_eq!(h.pause(), Err(ControlError::Stopping));
    }

    #[test]
    fn a_vmm_dropped_without_run_stops_its_guest_and_its_handle_kicks_nothing() {
        let Some(kvm) = kvm_or_skip("a_vmm_dropped_without_run") else {
            return;
        };
        // A busy guest: only a kick gets its vCPU out of KVM_RUN.
        let vmm = VmBuilder::new(config(kvm, &[0xF3, 0x90, 0xEB, 0xFC]))
            .unwrap()
            .build()
            .unwrap();
        use crate::api::VmControl;
        let h = vmm.handle();
        assert_eq!(h.status()["state"], "running");
        drop(vmm);
        // The threads were stopped and joined, and the kick list is empty: a pause
        // through the surviving handle is refused and signals nothing.
        assert!(h.0.vcpu_threads.lock().unwrap().is_empty());
        assert_eq!(h.status()["state"], "stopping");
        assert_eq!(h.pause(), Err(ControlError::Stopping));
    }

    #[test]
    fn too_many_virtio_devices_are_refused_before_any_vm_exists() {
        let Some(kvm) = kvm_or_skip("too_many_virtio_devices_are_refused") else {
            return;
        };
        let mut c = config(kvm, &[0xF4]);
        c.disks = (0..=MAX_VIRTIO_DEVICES)
            .map(|i| DiskConfig {
                path: format!("/nonexistent/{i}").into(),
                read_only: true,
            })
            .collect();
        assert!(matches!(
            VmBuilder::new(c),
            Err(VmmError::TooManyDevices(n)) if n == MAX_VIRTIO_DEVICES + 1
        ));
    }
}
