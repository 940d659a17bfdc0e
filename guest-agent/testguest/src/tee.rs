//! The test guest's TDX evidence: [`Provider::detect`] finds a TD by CPUID leaf 0x21
//! ("IntelTDX    ") and then attests with the TD protocol of [`crate::trap_tdx`]
//! (TDG.MR.REPORT and `TDVMCALL<GetQuote>`, through the trap the measured command line
//! names). SEV-SNP evidence comes from the guest-request path of [`crate::snp`].
//!
//! The quote goes to the verifier without collateral, as from a real TD: the verifier
//! fetches the platform's collateral from its PCS (for the emulated platform, the
//! collateral server `cvm emulated collateral-server` runs next to it).
//!
//! Without SNP or a TD there is no evidence: the guest fails with a clear message
//! instead of falling back to anything host-defined.

use alloc::string::ToString;
use guest_agent::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};

use crate::trap_tdx::{self, Trap};

/// Why the test guest cannot attest when neither SNP nor a TD was found.
pub const NO_TEE: &str = "no SNP or TDX: this CPL3 test guest needs --tee \
     emulated-snp|emulated-tdx and the word cvm.tee_trap=port on its measured command line \
     (it reaches the emulated TEE only through the port trap)";

/// A TD's evidence: TDREPORT + GetQuote through `trap`.
#[derive(Debug)]
pub struct Provider {
    /// How TDCALL reaches the module.
    trap: Trap,
}

impl Provider {
    /// The TD's provider with `trap`; an error (with [`NO_TEE`]) when CPUID leaf 0x21
    /// does not say TDX.
    pub fn detect(trap: Trap) -> Result<Self, EvidenceError> {
        if trap_tdx::is_td() {
            Ok(Provider { trap })
        } else {
            Err(EvidenceError::Unavailable(NO_TEE.to_string()))
        }
    }
}

impl EvidenceProvider for Provider {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let quote = trap_tdx::quote(self.trap, report_data)?;
        Evidence::tdx(&quote, None)
    }
}
