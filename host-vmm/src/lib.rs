//! The `cvm` confidential-VM host.
//!
//! - [`acpi`]: the guest's ACPI tables (FADT/MADT/DSDT with virtio-mmio devices).
//! - [`cli`]: the subcommands (`measure`, `emulated`, `launch`, `host-check`).
//! - [`vmm`]: builds a VM from a [`vmm::VmConfig`] and runs it until the guest stops.
//! - [`vstate`]: KVM state (VM, guest memory, vCPUs); almost all `unsafe` lives here.
//! - [`devices`]: the emulated devices (16550 serial, i8042 reset, ACPI PM1a) and the
//!   port-I/O bus.
//! - [`tee`]: the TEEs and whether this host can provide them.
//! - [`seccomp`]: the per-thread seccomp filters.
//!
//! # Dependencies
//! The rust-vmm crates (`kvm-ioctls`, `kvm-bindings`, `vm-memory`, `vm-superio`,
//! `vmm-sys-util`) for the kernel interface and the UART model, `seccompiler` for the
//! BPF filters, `tracing` for the
//! structured lifecycle log.

pub mod acpi;
pub mod cli;
pub mod devices;
pub mod seccomp;
pub mod tee;
pub mod vmm;
pub mod vstate;
