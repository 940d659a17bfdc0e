//! SEV-SNP evidence. (Being written.)

use serde::{Deserialize, Serialize};

/// SEV-SNP specific claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpClaims {}
