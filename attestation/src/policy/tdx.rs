//! TDX policy checks on [`TdxClaims`], with secure defaults.
//!
//! The common [`Policy`](super::Policy) checks MRTD (`measurements`), MRCONFIGID
//! (`host_data`), REPORTDATA and debug. [`TdxPolicy`] adds:
//!
//! | check name | field | default |
//! |---|---|---|
//! | `tcb-status` | `allowed_tcb_statuses` | `["UpToDate"]` |
//! | `advisory-ids` | `allowed_advisory_ids` | none (any advisory of an allowed status) |
//! | `sept-ve-disable` | always on | SEPT_VE_DISABLE must be set |
//! | `td-attributes` | always on | no reserved TD-under-debug bits, not migratable |
//! | `service-td` | `allow_service_td` | false: MRSERVICETD must be zero |
//! | `min-tee-tcb-svn` | `min_tee_tcb_svn` | none; component-wise minimum |
//! | `mr-owner`, `mr-owner-config` | `mr_owner`, `mr_owner_config` | none |
//! | `rtmr` | `rtmrs` | none; expected value per index |
//! | `event-log` | `event_log` | none; events replayed from zero |
//! | `boot-digests` | `boot_digests` | none; kernel/initrd/cmdline digests of the evidence's replayed CC event log |
//! | `rtmr-unpinned` (common policy) | `rtmrs` / `event_log` | **RTMR1 and RTMR2 must be pinned** |
//!
//! MRTD measures only the TD firmware (TDVF); the kernel, initrd and command line —
//! including the pinned verifier key `cvm.verifier_key` — are measured into RTMR1 and
//! RTMR2 by the firmware. A policy that lists an MRTD but leaves RTMR1 or RTMR2 free
//! would accept a host's own kernel and command line booted under the tenant's firmware,
//! so [`Policy::evaluate`](super::Policy::evaluate) refuses every TDX guest under such a
//! policy (check `rtmr-unpinned`) unless it sets `allow_any_measurement` (which the
//! verifier service honours for insecure-emulated evidence only).
//! [`TdxPolicy::unpinned_boot_rtmrs`] names the missing ones.
//!
//! SEPT_VE_DISABLE has no off switch: without it the host can inject #VE at will on
//! pending private pages, and Intel's verification rules (which dcap-qvl enforces during
//! verification) refuse such TDs anyway.
//!
//! `event_log` lists the expected (RTMR index, SHA-384 digest) events in order; each
//! RTMR that appears in the list is replayed from zero with
//! `measured_boot::tdx::rtmr_extend` and must equal the quote's RTMR. RTMRs with no
//! listed event are not constrained by the replay: pin them with `rtmrs` (for example
//! RTMR3 = zero when nothing may be extended at run time).
//!
//! `boot_digests` pins the kernel, initrd and/or command-line digests that the guest's
//! own CC event log (Trustee's `TdxEvidence.cc_eventlog`) records, after the verifier
//! replayed that log against the quote's RTMRs
//! ([`crate::tdx::eventlog`], claims [`TdxClaims::boot_events`]). Evidence without a
//! log is refused by it. It does not count as pinning RTMR1/RTMR2 for `rtmr-unpinned`:
//! other events may share those RTMRs.

use serde::{Deserialize, Serialize};

use super::PolicyViolation;
use crate::tdx::{TcbStatus, TdxClaims};

/// An expected RTMR value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRtmr {
    /// RTMR index, 0..=3.
    pub index: u8,
    /// The expected value (48 bytes).
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub value: [u8; 48],
}

/// An expected measurement event: `digest` extended into RTMR `rtmr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedEvent {
    /// RTMR index, 0..=3.
    pub rtmr: u8,
    /// The SHA-384 digest extended.
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub digest: [u8; 48],
}

/// Expected boot digests from a replayed CC event log (each `None` is not checked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpectedBootDigests {
    /// SHA-384 of the kernel as the firmware measured it.
    #[serde(with = "crate::tdx::wire::hex_array_opt")]
    pub kernel: Option<[u8; 48]>,
    /// SHA-384 of the initrd.
    #[serde(with = "crate::tdx::wire::hex_array_opt")]
    pub initrd: Option<[u8; 48]>,
    /// SHA-384 of the kernel command line.
    #[serde(with = "crate::tdx::wire::hex_array_opt")]
    pub cmdline: Option<[u8; 48]>,
}

/// TDX specific checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TdxPolicy {
    /// Accepted TCB statuses. Default: only `UpToDate`.
    pub allowed_tcb_statuses: Vec<TcbStatus>,
    /// If set, every advisory id reported for the TCB must be in this list.
    pub allowed_advisory_ids: Option<Vec<String>>,
    /// If set, each TEE_TCB_SVN component must be at least this.
    #[serde(with = "crate::tdx::wire::hex_array_opt")]
    pub min_tee_tcb_svn: Option<[u8; 16]>,
    /// If set, MROWNER must equal this.
    #[serde(with = "crate::tdx::wire::hex_array_opt")]
    pub mr_owner: Option<[u8; 48]>,
    /// If set, MROWNERCONFIG must equal this.
    #[serde(with = "crate::tdx::wire::hex_array_opt")]
    pub mr_owner_config: Option<[u8; 48]>,
    /// Expected RTMR values.
    pub rtmrs: Vec<ExpectedRtmr>,
    /// Expected events, replayed into the RTMRs they name.
    pub event_log: Vec<ExpectedEvent>,
    /// If set, the evidence must carry a CC event log that replayed, with these digests.
    pub boot_digests: Option<ExpectedBootDigests>,
    /// Accept a TD bound to service TDs (non-zero MRSERVICETD). Off by default.
    pub allow_service_td: bool,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        Self {
            allowed_tcb_statuses: vec![TcbStatus::UpToDate],
            allowed_advisory_ids: None,
            min_tee_tcb_svn: None,
            mr_owner: None,
            mr_owner_config: None,
            rtmrs: Vec::new(),
            event_log: Vec::new(),
            boot_digests: None,
            allow_service_td: false,
        }
    }
}

/// The RTMRs that hold the boot chain after MRTD (TDVF measures the kernel into RTMR1
/// and the initrd and command line into RTMR2) and that every TDX policy must pin.
pub const BOOT_RTMRS: [u8; 2] = [1, 2];

/// TUD bits 7:1, bits 15:8, and the other TDX 1.5 must-be-zero bits of TD_ATTRIBUTES (ABI spec 348551-008,
/// table 3.23); DEBUG (bit 0) is left to the common `debug` check.
const TD_ATTRIBUTES_REFUSED: u64 = 0xfffe | (0xf << 23) | (((1u64 << 30) - 1) << 32);

impl TdxPolicy {
    /// The [`BOOT_RTMRS`] that neither `rtmrs` nor `event_log` pins (empty: all pinned).
    pub fn unpinned_boot_rtmrs(&self) -> Vec<u8> {
        BOOT_RTMRS
            .into_iter()
            .filter(|i| {
                !self.rtmrs.iter().any(|r| r.index == *i)
                    && !self.event_log.iter().any(|e| e.rtmr == *i)
            })
            .collect()
    }

    /// Evaluates the TDX checks; the first refusal is returned.
    pub fn check(&self, c: &TdxClaims) -> Result<(), PolicyViolation> {
        if !self.allowed_tcb_statuses.contains(&c.tcb_status) {
            let allowed: Vec<&str> = self
                .allowed_tcb_statuses
                .iter()
                .map(|s| s.as_str())
                .collect();
            return Err(PolicyViolation::new(
                "tcb-status",
                format!(
                    "TCB status {} is not allowed (allowed: {})",
                    c.tcb_status,
                    allowed.join(", ")
                ),
            ));
        }
        if let Some(allowed) = &self.allowed_advisory_ids {
            if let Some(bad) = c
                .advisory_ids
                .iter()
                .find(|a| !allowed.iter().any(|x| x.eq_ignore_ascii_case(a)))
            {
                return Err(PolicyViolation::new(
                    "advisory-ids",
                    format!("advisory {bad} is not in the allowed list"),
                ));
            }
        }
        let a = &c.td_attributes;
        if !a.sept_ve_disable {
            return Err(PolicyViolation::new(
                "sept-ve-disable",
                "TD_ATTRIBUTES.SEPT_VE_DISABLE (bit 28) is not set",
            ));
        }
        if a.value() & TD_ATTRIBUTES_REFUSED != 0 || a.migratable {
            return Err(PolicyViolation::new(
                "td-attributes",
                format!(
                    "TD_ATTRIBUTES {:#018x} has reserved, debug-class or MIGRATABLE bits set",
                    a.value()
                ),
            ));
        }
        if !self.allow_service_td && c.mr_service_td.is_some_and(|m| m != [0u8; 48]) {
            return Err(PolicyViolation::new(
                "service-td",
                "the TD is bound to service TDs (MRSERVICETD is not zero)",
            ));
        }
        if let Some(min) = &self.min_tee_tcb_svn {
            if let Some((i, (have, need))) = c
                .tee_tcb_svn
                .iter()
                .zip(min)
                .enumerate()
                .find(|(_, (h, n))| h < n)
            {
                return Err(PolicyViolation::new(
                    "min-tee-tcb-svn",
                    format!("TEE_TCB_SVN component {i} is {have}, below the minimum {need}"),
                ));
            }
        }
        if let Some(o) = &self.mr_owner {
            if *o != c.mr_owner {
                return Err(PolicyViolation::new(
                    "mr-owner",
                    format!(
                        "MROWNER {} does not match the expected value",
                        hex::encode(c.mr_owner)
                    ),
                ));
            }
        }
        if let Some(o) = &self.mr_owner_config {
            if *o != c.mr_owner_config {
                return Err(PolicyViolation::new(
                    "mr-owner-config",
                    format!(
                        "MROWNERCONFIG {} does not match the expected value",
                        hex::encode(c.mr_owner_config)
                    ),
                ));
            }
        }
        for r in &self.rtmrs {
            let actual = c.rtmrs.get(usize::from(r.index)).ok_or_else(|| {
                PolicyViolation::new(
                    "rtmr",
                    format!("the policy names RTMR{}, but RTMRs are 0 to 3", r.index),
                )
            })?;
            if *actual != r.value {
                return Err(PolicyViolation::new(
                    "rtmr",
                    format!(
                        "RTMR{} is {}, not the expected value",
                        r.index,
                        hex::encode(actual)
                    ),
                ));
            }
        }
        if !self.event_log.is_empty() {
            let mut replayed = [[0u8; 48]; 4];
            let mut used = [false; 4];
            for e in &self.event_log {
                let i = usize::from(e.rtmr);
                let slot = replayed.get_mut(i).ok_or_else(|| {
                    PolicyViolation::new(
                        "event-log",
                        format!("an expected event names RTMR{i}, but RTMRs are 0 to 3"),
                    )
                })?;
                measured_boot::tdx::rtmr_extend(slot, &e.digest);
                if let Some(u) = used.get_mut(i) {
                    *u = true;
                }
            }
            for (i, ((want, have), used)) in
                replayed.iter().zip(c.rtmrs.iter()).zip(used).enumerate()
            {
                if used && want != have {
                    return Err(PolicyViolation::new(
                        "event-log",
                        format!(
                            "RTMR{i} is {}, but replaying the expected events gives {}",
                            hex::encode(have),
                            hex::encode(want)
                        ),
                    ));
                }
            }
        }
        if let Some(want) = &self.boot_digests {
            check_boot_digests(want, c)?;
        }
        Ok(())
    }
}

fn check_boot_digests(want: &ExpectedBootDigests, c: &TdxClaims) -> Result<(), PolicyViolation> {
    let Some(have) = &c.boot_events else {
        return Err(PolicyViolation::new(
            "boot-digests",
            "the policy pins boot digests, but the evidence carries no CC event log",
        ));
    };
    for (what, want, have) in [
        ("kernel", &want.kernel, &have.kernel),
        ("initrd", &want.initrd, &have.initrd),
        ("command line", &want.cmdline, &have.cmdline),
    ] {
        let Some(want) = want else { continue };
        match have {
            Some(h) if h == want => {}
            Some(h) => {
                return Err(PolicyViolation::new(
                    "boot-digests",
                    format!(
                        "the {what} digest is {}, not the expected value",
                        hex::encode(h)
                    ),
                ))
            }
            None => {
                return Err(PolicyViolation::new(
                    "boot-digests",
                    format!("the CC event log records no {what}"),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::tdx::TdAttributes;

    pub(in crate::policy) fn claims() -> TdxClaims {
        TdxClaims {
            quote_version: 4,
            body_type: 2,
            tee_tcb_svn: [6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            tee_tcb_svn2: None,
            mr_seam: [1; 48],
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: TdAttributes::from_bytes(TdAttributes::SEPT_VE_DISABLE.to_le_bytes()),
            xfam: [0; 8],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rtmrs: Box::new([[0; 48]; 4]),
            mr_service_td: None,
            fmspc: [0; 6],
            cpu_svn: [0; 16],
            pce_svn: 13,
            qe_svn: 4,
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            boot_events: None,
        }
    }

    fn refused(p: &TdxPolicy, c: &TdxClaims) -> String {
        p.check(c).expect_err("refused").check
    }

    #[test]
    fn boot_digests_need_a_replayed_log_with_those_digests() {
        let p = TdxPolicy {
            boot_digests: Some(ExpectedBootDigests {
                kernel: Some([7; 48]),
                ..ExpectedBootDigests::default()
            }),
            ..TdxPolicy::default()
        };
        assert_eq!(refused(&p, &claims()), "boot-digests");
        let events = |kernel| {
            Box::new(crate::tdx::eventlog::BootEvents {
                events: Vec::new(),
                kernel,
                initrd: None,
                cmdline: None,
            })
        };
        let mut c = claims();
        c.boot_events = Some(events(Some([8; 48])));
        assert_eq!(refused(&p, &c), "boot-digests");
        c.boot_events = Some(events(None));
        assert_eq!(refused(&p, &c), "boot-digests");
        c.boot_events = Some(events(Some([7; 48])));
        p.check(&c).expect("matching kernel digest");
    }

    #[test]
    fn default_is_secure() {
        let p = TdxPolicy::default();
        p.check(&claims())
            .expect("an UpToDate TD with SEPT_VE_DISABLE passes");
        for status in TcbStatus::ALL
            .into_iter()
            .filter(|s| *s != TcbStatus::UpToDate)
        {
            let c = TdxClaims {
                tcb_status: status,
                ..claims()
            };
            assert_eq!(refused(&p, &c), "tcb-status", "{status}");
        }
        let no_sept = TdxClaims {
            td_attributes: TdAttributes::from_bytes([0; 8]),
            ..claims()
        };
        assert_eq!(refused(&p, &no_sept), "sept-ve-disable");
        for bit in [
            1u64 << 4,
            1 << 8,
            1 << 24,
            TdAttributes::MIGRATABLE,
            1 << 40,
        ] {
            let v = TdAttributes::SEPT_VE_DISABLE | bit;
            let c = TdxClaims {
                td_attributes: TdAttributes::from_bytes(v.to_le_bytes()),
                ..claims()
            };
            assert_eq!(refused(&p, &c), "td-attributes", "{v:#x}");
        }
        for bit in [
            TdAttributes::PKS,
            TdAttributes::KL,
            TdAttributes::PERFMON,
            TdAttributes::DEBUG,
        ] {
            let v = TdAttributes::SEPT_VE_DISABLE | bit;
            let c = TdxClaims {
                td_attributes: TdAttributes::from_bytes(v.to_le_bytes()),
                ..claims()
            };
            p.check(&c)
                .expect("defined, non-refused attribute (DEBUG is the common check's)");
        }
        let servtd = TdxClaims {
            mr_service_td: Some([1; 48]),
            ..claims()
        };
        assert_eq!(refused(&p, &servtd), "service-td");
        TdxPolicy {
            allow_service_td: true,
            ..TdxPolicy::default()
        }
        .check(&servtd)
        .expect("allowed");
        let zero_servtd = TdxClaims {
            mr_service_td: Some([0; 48]),
            ..claims()
        };
        p.check(&zero_servtd).expect("zero MRSERVICETD");
    }

    #[test]
    fn owner_fields_and_bad_indexes() {
        let mut p = TdxPolicy {
            mr_owner_config: Some([9; 48]),
            ..TdxPolicy::default()
        };
        assert_eq!(refused(&p, &claims()), "mr-owner-config");
        p.mr_owner_config = None;
        p.rtmrs.push(ExpectedRtmr {
            index: 4,
            value: [0; 48],
        });
        assert_eq!(refused(&p, &claims()), "rtmr");
        p.rtmrs.clear();
        p.event_log.push(ExpectedEvent {
            rtmr: 7,
            digest: [0; 48],
        });
        assert_eq!(refused(&p, &claims()), "event-log");
    }

    #[test]
    fn serde_is_strict_and_round_trips() {
        let p: TdxPolicy = serde_json::from_str(
            r#"{"allowed_tcb_statuses":["UpToDate","SWHardeningNeeded"],
                "min_tee_tcb_svn":"06010300000000000000000000000000",
                "rtmrs":[{"index":0,"value":"000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"}]}"#,
        )
        .expect("parses");
        assert_eq!(p.allowed_tcb_statuses.len(), 2);
        assert_eq!(p.min_tee_tcb_svn.map(|m| m[0]), Some(6));
        let back: TdxPolicy =
            serde_json::from_str(&serde_json::to_string(&p).expect("ser")).expect("de");
        assert_eq!(back, p);
        assert!(serde_json::from_str::<TdxPolicy>(r#"{"allow_everything":true}"#).is_err());
        assert!(
            serde_json::from_str::<TdxPolicy>(r#"{"rtmrs":[{"index":0,"value":"00"}]}"#).is_err()
        );
        assert_eq!(
            serde_json::from_str::<TdxPolicy>("{}").expect("empty"),
            TdxPolicy::default()
        );
    }
}
