//! Isolation of the VMM process and resource limits of its VM: a jail (namespaces,
//! `pivot_root`, dropped privileges) and a control group per VM.

pub mod cgroup;
pub mod jail;
