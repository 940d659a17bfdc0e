//! The TDX confidential-computing event log (CCEL) as Trustee's `TdxEvidence` carries
//! it: parsing, replay against the RTMRs of a *verified* quote, and the boot digests a
//! policy can pin.
//!
//! # Format
//!
//! The log is the CCEL ACPI table's data area (`/sys/firmware/acpi/tables/data/CCEL`)
//! in the TCG PC Client crypto-agile format: a legacy `EV_NO_ACTION` header carrying
//! `"Spec ID Event03"` (the digest algorithms), then `TCG_PCR_EVENT2` records whose
//! "PCR index" is the CC measurement-register index: 0 for MRTD, 1..=4 for RTMR0..3
//! (UEFI 2.10 §38.4.1). Unused space after the last record (all 0x00 or all 0xFF) is
//! accepted. Parsing is `measured_boot::tdx::eventlog::EventLog::parse`, the same code
//! that writes the log of our own firmware, so there is one parser; it keeps the SHA-384
//! digest of each record and refuses logs without SHA-384, undeclared algorithms, MR
//! indexes above 4, truncation and oversized fields.
//!
//! # Replay
//!
//! [`replay`] extends each RTMR from zero with the log's SHA-384 digests in order
//! (`RTMR = SHA-384(RTMR || digest)`, skipping `EV_NO_ACTION` and MRTD records as the
//! TDX module does) and requires **all four** results to equal the quote's RTMR0..3.
//! A log that does not replay is refused ([`ReplayError::Mismatch`]): its digests are
//! then not the ones the TD measured. Trustee's verifier does the same check (CC MR
//! indexes 1..=4 against RTMR0..3).
//!
//! # What replay proves, and what it does not
//!
//! Replay authenticates the **sequence of digests per RTMR**: each digest was extended
//! into that RTMR, in that order. It does not authenticate an event's *type* or *data*
//! (the description), which are not part of the extension. [`BootEvents`] therefore
//! classifies by (RTMR, type, tag) and only within the RTMR where the component belongs,
//! so whoever edits descriptions in transit can at most relabel *another digest that was
//! measured into the same RTMR*. A policy that must be exact pins the RTMR values
//! (`rtmrs`) or the whole expected sequence (`event_log`); `boot_events` is a readable
//! shorthand on top of the replay, not a replacement.
//!
//! # Classification
//!
//! | claim | RTMR (CC MR) | record |
//! |---|---|---|
//! | `kernel` | RTMR1 (2) | the last `EV_EFI_BOOT_SERVICES_APPLICATION` (0x80000003): the image the firmware started last — the kernel's EFI stub in OVMF/TDVF direct boot, or the kernel GRUB/shim loaded through `LoadImage`; or our firmware's `EV_IPL` "cvm: kernel" |
//! | `cmdline` | RTMR2 (3) | `EV_EVENT_TAG` (6) with Linux's tag `0x8F3B22ED` (`LOADED_IMAGE::LoadOptions`, measured by the EFI stub); or our firmware's `EV_IPL` "cvm: cmdline" |
//! | `initrd` | RTMR2 (3) | `EV_EVENT_TAG` with Linux's tag `0x8F3B22EC` ("Linux initrd"); or our firmware's `EV_IPL` "cvm: initrd" |
//!
//! When several records match, the last one wins (a later load supersedes). The tag
//! ids are Linux's `INITRD_EVENT_TAG_ID` and `LOAD_OPTIONS_EVENT_TAG_ID`
//! (`drivers/firmware/efi/libstub/efistub.h`), checked against genuine logs from OVMF
//! and GRUB guests in `tests/data/tdx/ccel`.

use measured_boot::tdx::eventlog::{Event, EventLog, EventLogError, EV_EVENT_TAG, EV_IPL};
use serde::{Deserialize, Serialize};

use crate::ErrorKind;

/// `EV_EFI_BOOT_SERVICES_APPLICATION`: a UEFI application the firmware loaded.
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// Linux EFI stub's tagged-event id for the initrd (`INITRD_EVENT_TAG_ID`).
pub const LINUX_INITRD_TAG: u32 = 0x8F3B_22EC;
/// Linux EFI stub's tagged-event id for the command line (`LOAD_OPTIONS_EVENT_TAG_ID`).
pub const LINUX_LOAD_OPTIONS_TAG: u32 = 0x8F3B_22ED;

/// Why a CC event log was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The log could not be parsed.
    #[error("the CC event log is malformed")]
    Parse(#[source] EventLogError),
    /// Replaying the log does not give the quote's RTMR.
    #[error("the CC event log does not replay to the quote's RTMR{index}: the quote has {quote}, the log gives {log}")]
    Mismatch {
        /// RTMR index (0..=3).
        index: usize,
        /// The quote's value (hex).
        quote: String,
        /// The replayed value (hex).
        log: String,
    },
}

impl ReplayError {
    /// The error category: a malformed log is [`ErrorKind::Malformed`]; a log that does
    /// not replay is not covered by the quote's signature ([`ErrorKind::BadSignature`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplayError::Parse(_) => ErrorKind::Malformed,
            ReplayError::Mismatch { .. } => ErrorKind::BadSignature,
        }
    }
}

/// One replayed event: the digest extended into an RTMR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootEvent {
    /// RTMR index, 0..=3.
    pub rtmr: u8,
    /// TCG event type (not authenticated by the replay).
    pub event_type: u32,
    /// The SHA-384 digest extended.
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub digest: [u8; 48],
}

/// The digests of a replayed CC event log, for policy (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootEvents {
    /// Every extension, in order.
    pub events: Vec<BootEvent>,
    /// The kernel's digest, when the log records one.
    #[serde(
        with = "crate::tdx::wire::hex_array_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kernel: Option<[u8; 48]>,
    /// The initrd's digest, when the log records one.
    #[serde(
        with = "crate::tdx::wire::hex_array_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub initrd: Option<[u8; 48]>,
    /// The kernel command line's digest, when the log records one.
    #[serde(
        with = "crate::tdx::wire::hex_array_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cmdline: Option<[u8; 48]>,
}

/// The component an event measures, if it is one of the classified ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Kernel,
    Initrd,
    Cmdline,
}

fn classify(e: &Event) -> Option<Component> {
    let tag = || {
        let d = e.data.get(..4)?;
        Some(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
    };
    match (e.mr_index, e.event_type) {
        (2, EV_EFI_BOOT_SERVICES_APPLICATION) => Some(Component::Kernel),
        (2, EV_IPL) if e.data == b"cvm: kernel" => Some(Component::Kernel),
        (3, EV_EVENT_TAG) => match tag()? {
            LINUX_INITRD_TAG => Some(Component::Initrd),
            LINUX_LOAD_OPTIONS_TAG => Some(Component::Cmdline),
            _ => None,
        },
        (3, EV_IPL) if e.data == b"cvm: cmdline" => Some(Component::Cmdline),
        (3, EV_IPL) if e.data == b"cvm: initrd" => Some(Component::Initrd),
        _ => None,
    }
}

impl BootEvents {
    /// The events and classified digests of `log` (not checked against any quote: use
    /// [`replay`]).
    pub fn from_log(log: &EventLog) -> Self {
        let mut out = BootEvents {
            events: Vec::with_capacity(log.events.len()),
            kernel: None,
            initrd: None,
            cmdline: None,
        };
        for e in &log.events {
            let Some(rtmr) = e.rtmr() else { continue };
            out.events.push(BootEvent {
                rtmr: rtmr as u8,
                event_type: e.event_type,
                digest: e.digest,
            });
            match classify(e) {
                Some(Component::Kernel) => out.kernel = Some(e.digest),
                Some(Component::Initrd) => out.initrd = Some(e.digest),
                Some(Component::Cmdline) => out.cmdline = Some(e.digest),
                None => {}
            }
        }
        out
    }
}

/// Parses the CC event log `bytes` without checking it against a quote.
pub fn parse(bytes: &[u8]) -> Result<EventLog, ReplayError> {
    EventLog::parse(bytes).map_err(ReplayError::Parse)
}

/// Parses `bytes`, replays it and requires the result to equal `rtmrs` (RTMR0..3 of a
/// verified quote) exactly; returns the events for policy.
pub fn replay(bytes: &[u8], rtmrs: &[[u8; 48]; 4]) -> Result<BootEvents, ReplayError> {
    let log = parse(bytes)?;
    let replayed = log.replay();
    for (index, (have, want)) in replayed.iter().zip(rtmrs.iter()).enumerate() {
        if have != want {
            return Err(ReplayError::Mismatch {
                index,
                quote: hex::encode(want),
                log: hex::encode(have),
            });
        }
    }
    Ok(BootEvents::from_log(&log))
}

#[cfg(test)]
mod tests {
    use super::*;
    use measured_boot::tdx::DirectBoot;

    #[test]
    fn our_direct_boot_log_replays_and_classifies() {
        let boot = DirectBoot::measure(b"kernel image", Some(b"initrd"), Some("console=hvc0"));
        let log = boot.events();
        let rtmrs = log.replay();
        let ev = replay(&log.to_bytes(), &rtmrs).expect("replays");
        assert_eq!(ev.kernel, Some(boot.kernel));
        assert_eq!(ev.initrd, Some(boot.initrd));
        assert_eq!(ev.cmdline, Some(boot.cmdline));
        assert_eq!(ev.events.len(), 3);
        assert_eq!(ev.events[0].rtmr, 1);
    }

    #[test]
    fn a_log_that_does_not_replay_is_refused() {
        let boot = DirectBoot::measure(b"kernel image", None, None);
        let log = boot.events();
        let mut rtmrs = log.replay();
        rtmrs[3] = [1; 48];
        let e = replay(&log.to_bytes(), &rtmrs).unwrap_err();
        assert!(matches!(e, ReplayError::Mismatch { index: 3, .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::BadSignature);
        let e = replay(b"\x01\x02", &rtmrs).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
    }
}
