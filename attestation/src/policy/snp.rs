//! Snp policy checks. (Being written.)

use serde::{Deserialize, Serialize};

use super::PolicyViolation;
use crate::snp::SnpClaims;

/// Snp specific checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnpPolicy {}

impl SnpPolicy {
    /// Evaluates the Snp checks.
    pub fn check(&self, _claims: &SnpClaims) -> Result<(), PolicyViolation> {
        Ok(())
    }
}
