//! The VMM library of the `cvm` confidential-VM host. The `cvm` binary crate owns the
//! command line (`cvm launch` turns its flags into a TEE backend and a
//! [`vmm::VmConfig`]); the embedded firmware and test guest live in `guest-images`.
//! This crate has no CLI dependencies.
//!
//! - [`acpi`]: the guest's ACPI tables (FADT/MADT/DSDT with pvpanic and the virtio-mmio
//!   devices).
//! - [`boot`]: kernel delivery — the staging region and the boot-data descriptor of
//!   `docs/guest-boot-protocol.md`.
//! - [`api`]: the REST control API on a Unix socket (`--api-socket`).
//! - [`vmm`]: [`vmm::VmBuilder`] builds a VM from a [`vmm::VmConfig`] in named steps
//!   ([`vmm::Step`]) and returns a running [`vmm::Vmm`] (`run`, `pause`, `resume`,
//!   `shutdown`); the control API ([`api`]) talks to a [`vmm::VmmHandle`]. Its stop
//!   path waits on events (each vCPU's stop report, the vsock thread's end), and it
//!   ends KVM's pending SRCU grace period while the guest runs so that closing the VM
//!   does not wait for it.
//! - [`vstate`]: KVM state (VM, guest memory, private memory, vCPUs and their exit
//!   handler trait, the SEV/TDX ioctls).
//! - [`devices`]: the emulated devices (16550 serial, i8042 reset, ACPI PM1a, pvpanic,
//!   virtio-blk, virtio-vsock with hybrid Unix sockets and the attestation relay,
//!   virtio-net on a tap) and
//!   the port-I/O and MMIO buses; the I/O APIC of split-irqchip (TDX) VMs, which
//!   routes through a [`devices::ioapic::RouteSink`] (KVM's is
//!   [`vstate::vm::KvmRoutes`]), so `devices` does not depend on `vstate`. See
//!   `host-vmm/README.md` for vsock and the relay.
//! - [`tee`]: the [`tee::TeeBackend`] trait and its backends (`none`, emulated SNP and
//!   TDX, KVM SNP and TDX), whether this host can provide each TEE, and the run-time
//!   services of confidential guests.
//! - [`isolation`]: the jail (namespaces, pivot_root) and the cgroup limits.
//! - [`net`]: the host side of guest networking: taps, rate limiters, and the
//!   [`net::NetInterface`] the host's network policy consumes.
//! - [`seccomp`]: the per-thread seccomp filters.
//!
//! # Where `unsafe` lives
//! Mostly in [`vstate`] (ioctls, memory maps, the `kvm_run` exit union); besides that
//! the vCPU kick in [`vmm`] (`pthread_kill`) and the fork/namespace calls of
//! [`isolation`] (`jail::enter` and `jail::supervise` are `unsafe fn`: the process must
//! be single-threaded). Every block has a `SAFETY:` comment.
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
pub mod net;
pub mod seccomp;
pub mod tee;
pub mod vmm;
pub mod vstate;
