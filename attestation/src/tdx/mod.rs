//! TDX evidence. (Being written.)

use serde::{Deserialize, Serialize};

/// TDX specific claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxClaims {}
