//! Tdx policy checks. (Being written.)

use serde::{Deserialize, Serialize};

use super::PolicyViolation;
use crate::tdx::TdxClaims;

/// Tdx specific checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TdxPolicy {}

impl TdxPolicy {
    /// Evaluates the Tdx checks.
    pub fn check(&self, _claims: &TdxClaims) -> Result<(), PolicyViolation> {
        Ok(())
    }
}
