//! The run-time exit handler of real SEV-SNP and TDX guests ([`CcRuntime`]): implicit
//! conversions on memory faults, MapGPA, the TDVMCALLs KVM forwards, SNP certificate
//! requests; and the TDX quote thread that serves GetQuote asynchronously.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::backend::TeeError;
use super::services::{self, CertTable, Interrupt, Notify, TdVmcalls};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::vstate::vcpu::{ExitError, ExitHandler};
use crate::vstate::vm::Vm;

/// The run-time services of a real SNP or TDX guest.
#[derive(Debug)]
pub struct CcRuntime {
    vm: Arc<Vm>,
    tdx: Option<TdVmcalls>,
    certs: Option<CertTable>,
}

impl CcRuntime {
    /// An SNP guest's handler; `certs` answers extended-report certificate requests.
    pub fn snp(vm: Arc<Vm>, certs: Option<CertTable>) -> Self {
        Self {
            vm,
            tdx: None,
            certs,
        }
    }

    /// A TD's handler.
    pub fn tdx(vm: Arc<Vm>, tdx: TdVmcalls) -> Self {
        Self {
            vm,
            tdx: Some(tdx),
            certs: None,
        }
    }
}

impl ExitHandler for CcRuntime {
    fn memory_fault(&self, gpa: u64, size: u64, private: bool) -> Result<(), ExitError> {
        self.vm
            .convert(gpa, size, private)
            .map_err(|source| ExitError::Conversion { gpa, size, source })
    }

    fn map_gpa_range(&self, args: &[u64; 6]) -> u64 {
        self.vm.map_gpa_range(args)
    }

    fn tdx_vmcall(&self, vcpu: u32, exit: &mut [u8; 256]) -> Result<(), ExitError> {
        match &self.tdx {
            Some(t) => {
                t.handle(vcpu, exit);
                Ok(())
            }
            None => Err(ExitError::Unexpected(
                "KVM_EXIT_TDX from a VM that is not a TD",
            )),
        }
    }

    fn snp_req_certs(&self, exit: &mut [u8; 256]) -> Result<(), ExitError> {
        match &self.certs {
            Some(c) => {
                c.serve(self.vm.memory(), exit);
                Ok(())
            }
            None => Err(ExitError::Unexpected(
                "KVM_EXIT_SNP_REQ_CERTS although certificate requests were not enabled",
            )),
        }
    }
}

/// Raises a vector on a vCPU with KVM_SIGNAL_MSI.
struct MsiInterrupt(Arc<Vm>);

impl Interrupt for MsiInterrupt {
    fn raise(&self, apic: u32, vector: u8) -> Result<(), kvm_ioctls::Error> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: 0xFEE0_0000 | (apic << 12),
            data: u32::from(vector),
            ..Default::default()
        };
        self.0.fd().signal_msi(msi).map(|_| ())
    }
}

/// A TD's TDVMCALL handling; with a QGS socket, also the quote thread (confined by
/// its own seccomp filter) that serves GetQuote. `r11` is GetTdVmCallInfo's (kernel,
/// user) leaf-1 R11 from KVM_TDX_CAPABILITIES.
pub fn tdx_vmcalls(
    vm: &Arc<Vm>,
    qgs: Option<PathBuf>,
    r11: (u64, u64),
    mode: SeccompMode,
) -> Result<(TdVmcalls, Option<JoinHandle<()>>), TeeError> {
    let notify: Notify = Arc::default();
    let mut thread = None;
    let quotes = match qgs {
        Some(socket) => {
            let (tx, rx) = mpsc::sync_channel(services::QUOTE_MAX_IN_FLIGHT as usize);
            let in_flight = Arc::new(AtomicU64::new(0));
            let (mem, n, irq, note) = (
                vm.memory().clone(),
                in_flight.clone(),
                MsiInterrupt(vm.clone()),
                notify.clone(),
            );
            thread = Some(
                std::thread::Builder::new()
                    .name("quote".into())
                    .spawn(move || match seccomp::install(ThreadKind::Quote, mode) {
                        Ok(()) => services::quote_worker(rx, mem, socket, n, note, irq),
                        Err(e) => {
                            tracing::error!(error = %e, "quote thread not confined; not serving")
                        }
                    })
                    .map_err(|e| TeeError::Thread("quote", e))?,
            );
            Some((tx, in_flight))
        }
        None => None,
    };
    let calls = TdVmcalls::new(vm.memory().clone(), quotes, notify, r11.0, r11.1);
    Ok((calls, thread))
}
