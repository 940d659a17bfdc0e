//! Building and running a VM: guest memory, devices, vCPU threads, and the reason the
//! guest stopped.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::acpi::{self, AcpiError, VirtioMmioDesc};
use crate::devices::legacy::{AcpiPm, I8042, I8042_BASE, PM1A_EVT};
use crate::devices::serial::IrqTrigger;
use crate::devices::serial::{SerialPort, COM1_BASE, COM1_IRQ};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::{BusOverlap, Buses, MmioOverlap};
use crate::seccomp::{self, SeccompError, SeccompMode, ThreadKind};
use crate::tee::emulated::{EmulatedTee, Mailbox, MAILBOX_PORT};
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuStop};
use crate::vstate::vm::{Vm, VmError};

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
pub fn run(config: VmConfig) -> Result<VcpuStop, VmmError> {
    let started = Instant::now();
    let kvm = Kvm::new().map_err(VmmError::Kvm)?;
    let max = kvm.get_max_vcpus();
    if config.vcpus == 0 || config.vcpus as usize > max {
        return Err(VmmError::VcpuCount {
            requested: config.vcpus,
            max,
        });
    }
    let vm = Arc::new(Vm::new(&kvm, config.memory, &config.firmware)?);

    let mut bus = Buses::default();
    let serial = SerialPort::new(vm.irqfd(COM1_IRQ)?, serial_writer(&config.serial)?);
    bus.pio.insert(COM1_BASE, 8, Arc::new(Mutex::new(serial)))?;
    bus.pio.insert(I8042_BASE, 5, Arc::new(Mutex::new(I8042)))?;
    bus.pio
        .insert(PM1A_EVT, 8, Arc::new(Mutex::new(AcpiPm::default())))?;

    if let Some(tee) = config.emulated_tee {
        bus.pio.insert(
            MAILBOX_PORT,
            12,
            Arc::new(Mutex::new(Mailbox::new(tee, vm.memory().clone()))),
        )?;
    }
    if config.disks.len() > MAX_VIRTIO_DEVICES {
        return Err(VmmError::TooManyDevices(config.disks.len()));
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
            false,
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
    let tables = acpi::build(config.vcpus, &descs)?;
    {
        use vm_memory::Bytes;
        vm.memory()
            .write_slice(&tables.blob, vm_memory::GuestAddress(tables.rsdp_gpa))
            .map_err(VmmError::AcpiWrite)?;
    }
    let bus = Arc::new(bus);

    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::Cpuid)?;
    let vcpus = (0..config.vcpus)
        .map(|i| Vcpu::new(vm.fd(), i, &cpuid))
        .collect::<Result<Vec<_>, _>>()?;

    register_signal_handler(SIGRTMIN(), kick_handler).map_err(VmmError::Signal)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    // Every thread installs its seccomp filter, then waits here: no guest code runs
    // before all filters are in place.
    let gate = Arc::new(std::sync::Barrier::new(vcpus.len() + 1));
    let mode = config.seccomp;
    let mut threads = Vec::new();
    for mut vcpu in vcpus {
        let (bus, vm, stop, tx, gate) = (
            bus.clone(),
            vm.clone(),
            stop.clone(),
            tx.clone(),
            gate.clone(),
        );
        let t = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.index()))
            .spawn(move || {
                let confined = seccomp::install(ThreadKind::Vcpu, mode);
                gate.wait();
                let why = match confined {
                    Ok(()) if !stop.load(Ordering::Acquire) => vcpu.run(&bus, vm.memory(), &stop),
                    Ok(()) => VcpuStop::Stopped,
                    Err(e) => VcpuStop::RunError(format!("seccomp: {e}")),
                };
                let _ = tx.send((vcpu.index(), why));
            })
            .map_err(VmmError::Thread)?;
        threads.push(t);
    }
    drop(tx);
    if mode == SeccompMode::Off {
        tracing::warn!("seccomp filters are OFF: the VMM is not confined (debugging only)");
    }
    let confined = seccomp::install(ThreadKind::Vmm, mode);
    if confined.is_err() {
        stop.store(true, Ordering::Release);
    }
    gate.wait();
    confined?;
    tracing::info!(
        event = "running",
        vcpus = config.vcpus,
        setup_us = started.elapsed().as_micros() as u64,
        "guest started"
    );

    let (index, why) = rx.recv().unwrap_or((
        0,
        VcpuStop::RunError("every vCPU thread ended without a report".into()),
    ));
    tracing::info!(
        event = "vcpu-stopped",
        vcpu = index,
        reason = why.kind(),
        "vCPU stopped; stopping the others"
    );
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(SIGRTMIN());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!("a vCPU thread did not stop; leaving it to process exit");
        }
    }
    Ok(why)
}
