//! End-to-end tests across processes and the real KVM.
//!
//! The tests live in `tests/tests/`; this library holds only shared helpers.
