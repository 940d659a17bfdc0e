//! The `cvm` confidential-VM host.
//!
//! - [`acpi`]: the guest's ACPI tables (FADT/MADT/DSDT with pvpanic and the virtio-mmio
//!   devices).
//! - [`boot`]: kernel delivery — the staging region and the boot-data descriptor of
//!   `docs/guest-boot-protocol.md`.
//! - [`vmm`]: builds a VM from a [`vmm::VmConfig`] and runs it until the guest stops.
//! - [`vstate`]: KVM state (VM, guest memory, vCPUs); almost all `unsafe` lives here.
//! - [`devices`]: the emulated devices (16550 serial, i8042 reset, ACPI PM1a, pvpanic,
//!   virtio-blk, virtio-vsock with hybrid Unix sockets and the attestation relay) and
//!   the port-I/O and MMIO buses; the VMM-side I/O APIC of split-irqchip (TDX) VMs. See `host-vmm/README.md` for vsock and the relay.
//! - [`tee`]: the TEEs, whether this host can provide them, the real SNP/TDX launch
//!   ([`tee::launch`]) and the run-time services of confidential guests
//!   ([`tee::services`]: TDX GetQuote via QGS, SNP certificate tables).
//! - [`seccomp`]: the per-thread seccomp filters.
//!
//! # Dependencies
//! The rust-vmm crates (`kvm-ioctls`, `kvm-bindings`, `vm-memory`, `vm-superio`,
//! `vmm-sys-util`) for the kernel interface and the UART model, `seccompiler` for the
//! BPF filters, `virtio-queue` for descriptor chains, `rustls` (ring) and `socket2` for
//! the attestation relay's TLS and non-blocking connects, `tracing` for the structured
//! lifecycle log.

pub mod acpi;
pub mod api;
pub mod boot;
pub mod devices;
pub mod isolation;
pub mod seccomp;
pub mod tee;
pub mod vmm;
pub mod vstate;
