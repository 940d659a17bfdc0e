//! Policy checks on [`Claims`], with secure defaults.
//!
//! A [`Policy`] holds the checks common to both TEEs and one section per TEE
//! ([`snp::SnpPolicy`], [`tdx::TdxPolicy`]). Every refusal names the failed check.
//!
//! `Policy::default()` is the secure default; it fails closed:
//!
//! | check name | field | default |
//! |---|---|---|
//! | `trust-anchor` | `allow_emulated` | false: emulated evidence refused |
//! | `measurement` | `measurements`, `allow_any_measurement` | the measurement must be listed; an **empty list refuses every guest** unless `allow_any_measurement` is set explicitly |
//! | `report-data` | `report_data` | none |
//! | `host-data` | `host_data` | none |
//! | `debug` | `allow_debug` | false: debuggable guests refused |
//! | `min-tcb` (SNP) | `snp.min_tcb` | a per-product baseline, never zero ([`snp::MinTcb::baseline`]) |
//! | `vmpl` (SNP) | `snp.vmpl` | `0`: the report must be requested at VMPL 0 |
//! | `migration-agent` (SNP) | `snp.allow_migration_agent` | false |
//! | `rtmr-unpinned` (TDX) | `tdx.rtmrs`, `tdx.event_log` | RTMR1 and RTMR2 (kernel, initrd, command line) must be pinned unless `allow_any_measurement` ([`tdx::BOOT_RTMRS`]) |
//! | `tcb-status` (TDX) | `tdx.allowed_tcb_statuses` | `["UpToDate"]` |
//! | `sept-ve-disable`, `td-attributes`, `service-td` (TDX) | see [`tdx`] | always on / false |
//!
//! `allow_any_measurement` is meant for tests and tools; the verifier service honours it
//! only for insecure-emulated evidence (see the verifier's workload model).
//!
//! ```
//! use attestation::policy::Policy;
//! let p = Policy::default();
//! assert!(p.measurements.is_empty() && !p.allow_any_measurement); // refuses every guest
//! assert_eq!(p.snp.vmpl, Some(0));
//! assert!(p.snp.min_tcb.is_none()); // the built-in baseline applies
//! ```

pub mod snp;
pub mod tdx;

use serde::{Deserialize, Serialize};

use crate::claims::{Claims, TeeClaims};

/// A refused check: the stable name of the check and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("policy check `{check}` failed: {detail}")]
pub struct PolicyViolation {
    /// Stable, machine-readable name of the check (for example `measurement`, `debug`).
    pub check: String,
    /// Human-readable description of what was found and what was required.
    pub detail: String,
}

impl PolicyViolation {
    /// A violation of `check` described by `detail`.
    pub fn new(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            detail: detail.into(),
        }
    }
}

/// The checks applied to verified claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Allowed launch measurements (SNP MEASUREMENT or TDX MRTD). An empty list allows
    /// none (fail closed) unless `allow_any_measurement` is set.
    #[serde(with = "hex_list")]
    pub measurements: Vec<Vec<u8>>,
    /// Accept any launch measurement, listed or not. Off by default; must be set
    /// explicitly (an empty `measurements` list never means "any").
    pub allow_any_measurement: bool,
    /// If set, REPORT_DATA must equal this (64 bytes).
    #[serde(with = "hex_opt")]
    pub report_data: Option<Vec<u8>>,
    /// If set, HOST_DATA (SNP) or MRCONFIGID (TDX) must equal this.
    #[serde(with = "hex_opt")]
    pub host_data: Option<Vec<u8>>,
    /// Accept guests launched with debugging enabled. Off by default.
    pub allow_debug: bool,
    /// Accept evidence whose trust anchor is emulated. Off by default.
    pub allow_emulated: bool,
    /// SEV-SNP specific checks.
    pub snp: snp::SnpPolicy,
    /// TDX specific checks.
    pub tdx: tdx::TdxPolicy,
}

impl Policy {
    /// Evaluates every check; the first refusal is returned.
    pub fn evaluate(&self, claims: &Claims) -> Result<(), PolicyViolation> {
        use crate::claims::TrustLevel;
        if claims.trust == TrustLevel::InsecureEmulated && !self.allow_emulated {
            return Err(PolicyViolation::new(
                "trust-anchor",
                "evidence is from an emulated TEE and emulated evidence is not allowed",
            ));
        }
        if !self.allow_any_measurement {
            if self.measurements.is_empty() {
                return Err(PolicyViolation::new(
                    "measurement",
                    "the policy allows no measurement (list one, or set allow_any_measurement)",
                ));
            }
            if !self.measurements.contains(&claims.measurement) {
                return Err(PolicyViolation::new(
                    "measurement",
                    format!(
                        "measurement {} is not in the allowed list",
                        hex::encode(&claims.measurement)
                    ),
                ));
            }
        }
        if let TeeClaims::Tdx(_) = &claims.detail {
            // MRTD measures only the firmware: without RTMR1/RTMR2 pinned, a host's own
            // kernel and command line under the tenant's firmware would pass.
            let unpinned = self.tdx.unpinned_boot_rtmrs();
            if !self.allow_any_measurement && !unpinned.is_empty() {
                let names: Vec<String> = unpinned.iter().map(|i| format!("RTMR{i}")).collect();
                return Err(PolicyViolation::new(
                    "rtmr-unpinned",
                    format!(
                        "the policy does not pin {} (MRTD measures only the firmware; pin the kernel, initrd and command line with tdx.rtmrs or tdx.event_log)",
                        names.join(" and ")
                    ),
                ));
            }
        }
        if let Some(rd) = &self.report_data {
            if *rd != claims.report_data {
                return Err(PolicyViolation::new(
                    "report-data",
                    "REPORT_DATA does not match the expected value",
                ));
            }
        }
        if let Some(hd) = &self.host_data {
            if *hd != claims.host_data {
                return Err(PolicyViolation::new(
                    "host-data",
                    format!(
                        "host data {} does not match the expected value",
                        hex::encode(&claims.host_data)
                    ),
                ));
            }
        }
        if claims.debug && !self.allow_debug {
            return Err(PolicyViolation::new(
                "debug",
                "the guest was launched with debugging enabled",
            ));
        }
        match &claims.detail {
            TeeClaims::Snp(c) => self.snp.check(c),
            TeeClaims::Tdx(c) => self.tdx.check(c),
        }
    }
}

mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Tee, TrustLevel};

    fn claims(trust: TrustLevel) -> Claims {
        Claims {
            tee: Tee::Snp,
            trust,
            measurement: vec![7; 48],
            report_data: vec![0; 64],
            host_data: vec![0; 32],
            debug: false,
            platform_id: "00".repeat(64),
            detail: TeeClaims::Snp(snp::tests::claims()),
        }
    }

    fn check(p: &Policy, c: &Claims) -> Result<(), String> {
        p.evaluate(c).map_err(|v| v.check)
    }

    #[test]
    fn an_empty_measurement_list_refuses_every_guest() {
        // Attack: a policy with no measurements accepted a guest of any measurement.
        let c = claims(TrustLevel::Hardware);
        assert_eq!(check(&Policy::default(), &c), Err("measurement".to_owned()));
        let err = Policy::default().evaluate(&c).expect_err("refused");
        assert!(err.detail.contains("allows no measurement"), "{err}");
        let listed = Policy {
            measurements: vec![vec![7; 48]],
            ..Policy::default()
        };
        check(&listed, &c).expect("listed");
        let other = Policy {
            measurements: vec![vec![8; 48]],
            ..Policy::default()
        };
        assert_eq!(check(&other, &c), Err("measurement".to_owned()));
    }

    #[test]
    fn allow_any_measurement_is_explicit() {
        let c = claims(TrustLevel::Hardware);
        let any = Policy {
            allow_any_measurement: true,
            ..Policy::default()
        };
        check(&any, &c).expect("explicitly any");
        let p: Policy = serde_json::from_str(r#"{"measurements": []}"#).expect("parses");
        assert!(!p.allow_any_measurement);
        assert_eq!(check(&p, &c), Err("measurement".to_owned()));
        let p: Policy = serde_json::from_str(r#"{"allow_any_measurement": true}"#).expect("parses");
        check(&p, &c).expect("any");
    }

    #[test]
    fn defaults_fail_closed_for_emulated_evidence_too() {
        let c = claims(TrustLevel::InsecureEmulated);
        let p = Policy {
            measurements: vec![vec![7; 48]],
            ..Policy::default()
        };
        assert_eq!(check(&p, &c), Err("trust-anchor".to_owned()));
        let p = Policy {
            allow_emulated: true,
            ..p
        };
        check(&p, &c).expect("emulated allowed");
    }

    fn tdx_claims() -> Claims {
        Claims {
            tee: Tee::Tdx,
            detail: TeeClaims::Tdx(tdx::tests::claims()),
            ..claims(TrustLevel::Hardware)
        }
    }

    #[test]
    fn a_tdx_policy_must_pin_rtmr1_and_rtmr2() {
        // Attack (red team round 2, finding 1): the policy lists only the tenant's MRTD
        // (firmware); the host boots its own kernel and command line under it.
        let c = tdx_claims();
        let mrtd_only = Policy {
            measurements: vec![vec![7; 48]],
            ..Policy::default()
        };
        let err = mrtd_only.evaluate(&c).expect_err("RTMR1/RTMR2 unpinned");
        assert_eq!(err.check, "rtmr-unpinned");
        assert!(err.detail.contains("RTMR1 and RTMR2"), "{err}");
        let pin = |index| tdx::ExpectedRtmr {
            index,
            value: [0; 48],
        };
        // Pinning only one, or only RTMR0/RTMR3, is not enough.
        for pins in [vec![pin(1)], vec![pin(2)], vec![pin(0), pin(3)]] {
            let p = Policy {
                tdx: tdx::TdxPolicy {
                    rtmrs: pins,
                    ..Default::default()
                },
                ..mrtd_only.clone()
            };
            assert_eq!(check(&p, &c), Err("rtmr-unpinned".to_owned()));
        }
        let pinned = Policy {
            tdx: tdx::TdxPolicy {
                rtmrs: vec![pin(1), pin(2)],
                ..Default::default()
            },
            ..mrtd_only.clone()
        };
        check(&pinned, &c).expect("RTMR1 and RTMR2 pinned");
        // A pin with the wrong value is the `rtmr` check, not a pass.
        let mut wrong = pinned.clone();
        wrong.tdx.rtmrs[1].value = [1; 48];
        assert_eq!(check(&wrong, &c), Err("rtmr".to_owned()));
        // The event log pins the RTMRs it names (replayed from zero).
        let mut rtmr1 = [0u8; 48];
        measured_boot::tdx::rtmr_extend(&mut rtmr1, &[5; 48]);
        let mut claims_with_events = tdx_claims();
        if let TeeClaims::Tdx(t) = &mut claims_with_events.detail {
            t.rtmrs[1] = rtmr1;
        }
        let by_log = Policy {
            tdx: tdx::TdxPolicy {
                event_log: vec![tdx::ExpectedEvent {
                    rtmr: 1,
                    digest: [5; 48],
                }],
                rtmrs: vec![pin(2)],
                ..Default::default()
            },
            ..mrtd_only.clone()
        };
        check(&by_log, &claims_with_events).expect("RTMR1 by event log, RTMR2 by value");
        // SNP policies are unaffected; allow_any_measurement (emulated only in the
        // service) is the only exemption.
        check(&mrtd_only, &claims(TrustLevel::Hardware)).expect("SNP");
        let any = Policy {
            allow_any_measurement: true,
            ..Policy::default()
        };
        check(&any, &c).expect("explicitly any");
    }
}
