//! Checks of `cvm-verifier admin` input before anything is sent, and the translation of
//! client failures into errors that name the flag to fix.
//!
//! Every value that ends up in a request is checked here with the server's own rules
//! (names, resource paths, 48-byte hex measurements, readable files), so a typo exits 2
//! naming the flag and the server never sees the request. Names are also what the
//! request path is built from: a name with `/` or `..` would otherwise address another
//! route (`workload remove ../users/bob` is `DELETE /admin/v1/users/bob`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::client::ClientError;
use crate::store::users::valid_name;
use crate::store::workloads::{valid_path, valid_segment};

/// Size of a launch measurement (SNP MEASUREMENT, TDX MRTD) and of an RTMR.
pub const MEASUREMENT_LEN: usize = 48;

/// Bad admin input, or a client failure explained in terms of the flags.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A value is not hexadecimal.
    #[error("{flag}: `{value}` is not hex")]
    NotHex {
        /// The flag or argument.
        flag: &'static str,
        /// The value.
        value: String,
    },
    /// A measurement of the wrong length.
    #[error("{flag}: {len} bytes; a measurement (SNP MEASUREMENT or TDX MRTD) is 48 bytes, 96 hex digits")]
    MeasurementLength {
        /// The flag or argument.
        flag: &'static str,
        /// The decoded length.
        len: usize,
    },
    /// A workload name breaks the naming rule.
    #[error("{what} `{value}` is not a valid name: use 1-128 of A-Za-z0-9._- (not `.` or `..`)")]
    Name {
        /// What the name is of.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A user name breaks the naming rule.
    #[error("user name `{0}` is not valid: use 1-64 of a-z0-9._-")]
    UserName(String),
    /// A role that does not exist.
    #[error("--role: `{0}` is not a role; use admin, operator or auditor")]
    Role(String),
    /// A resource path breaks the rule.
    #[error("{flag}: `{value}` is not a resource path repo/type/tag (each 1-128 of A-Za-z0-9._-)")]
    ResourcePath {
        /// The flag or argument.
        flag: &'static str,
        /// The value.
        value: String,
    },
    /// The URL is unusable.
    #[error("--url: `{0}` is not an http:// or https:// URL")]
    Url(String),
    /// A file cannot be read.
    #[error("{flag}: cannot read {}", path.display())]
    Read {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is empty.
    #[error("{flag}: {} is empty", path.display())]
    Empty {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The TOTP secret file does not hold a base32 secret.
    #[error("--totp-secret-file: {} does not hold a base32 TOTP secret (the `totp secret` that `admin bootstrap` or `admin user add` printed)", .0.display())]
    TotpSecret(PathBuf),
    /// A TOTP code that is not six digits.
    #[error("--totp: a TOTP code is 6 digits")]
    TotpCode,
    /// The measure file is not `cvm measure --output json` output.
    #[error("--from-measure: {0}")]
    Measure(String),
    /// The measure file's TEE contradicts `--tee`.
    #[error("--from-measure: the file measures a {file} guest but --tee is {flag}")]
    TeeMismatch {
        /// The TEE in the file.
        file: String,
        /// The TEE of `--tee`.
        flag: String,
    },
    /// The policy file pins an RTMR to another value than the measure file.
    #[error("--from-measure: the policy file pins RTMR{0} to another value than the measure file")]
    RtmrConflict(u8),
    /// Neither `--tee` nor `--from-measure` says which TEE.
    #[error("--tee is required (or --from-measure, whose file names the TEE)")]
    NoTee,
    /// The server's certificate did not verify against the trusted CAs.
    #[error("the server's certificate is not signed by the CA given with --ca-cert (or the system roots)")]
    UnknownIssuer(#[source] ClientError),
    /// Another TLS certificate problem.
    #[error("the server's TLS certificate was refused (check --url and --ca-cert)")]
    BadCertificate(#[source] ClientError),
    /// The server could not be reached.
    #[error("cannot reach the verifier at {url} (check --url and that the verifier runs)")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: ClientError,
    },
    /// The server wants a TOTP code.
    #[error("the admin role needs a TOTP code: pass --totp-secret-file FILE (or --totp CODE)")]
    TotpRequired(#[source] ClientError),
    /// Authentication failed.
    #[error(
        "authentication failed: check --token / --token-file (and --totp-secret-file for an admin)"
    )]
    AuthFailed(#[source] ClientError),
}

impl InputError {
    /// Whether the server refused (exit 1) rather than the input or the connection being
    /// bad (exit 2).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::TotpRequired(_) | Self::AuthFailed(_))
    }
}

/// A 48-byte measurement in hex, normalized to lower case.
pub fn measurement(flag: &'static str, value: &str) -> Result<String, InputError> {
    let v = value.trim();
    let bytes = hex::decode(v).map_err(|_| InputError::NotHex {
        flag,
        value: value.to_owned(),
    })?;
    if bytes.len() != MEASUREMENT_LEN {
        return Err(InputError::MeasurementLength {
            flag,
            len: bytes.len(),
        });
    }
    Ok(hex::encode(bytes))
}

/// A workload name (also an inventory id: the same rule keeps it one path segment).
pub fn name(what: &'static str, value: &str) -> Result<(), InputError> {
    if valid_segment(value) {
        Ok(())
    } else {
        Err(InputError::Name {
            what,
            value: value.to_owned(),
        })
    }
}

/// A user name.
pub fn user_name(value: &str) -> Result<(), InputError> {
    if valid_name(value) {
        Ok(())
    } else {
        Err(InputError::UserName(value.to_owned()))
    }
}

/// A role.
pub fn role(value: &str) -> Result<(), InputError> {
    match value {
        "admin" | "operator" | "auditor" => Ok(()),
        _ => Err(InputError::Role(value.to_owned())),
    }
}

/// A resource path `repo/type/tag`.
pub fn resource_path(flag: &'static str, value: &str) -> Result<(), InputError> {
    if valid_path(value) {
        Ok(())
    } else {
        Err(InputError::ResourcePath {
            flag,
            value: value.to_owned(),
        })
    }
}

/// The verifier's base URL.
pub fn url(value: &str) -> Result<(), InputError> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && reqwest::Url::parse(value).is_ok() => {
            Ok(())
        }
        _ => Err(InputError::Url(value.to_owned())),
    }
}

/// Reads a file named by `flag` (`-`: standard input where `stdin` allows it).
pub fn read_file(flag: &'static str, path: &Path, stdin: bool) -> Result<Vec<u8>, InputError> {
    let err = |source| InputError::Read {
        flag,
        path: path.to_owned(),
        source,
    };
    let bytes = if stdin && path == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(err)?;
        b
    } else {
        std::fs::read(path).map_err(err)?
    };
    if bytes.is_empty() {
        return Err(InputError::Empty {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// A base32 TOTP secret (checked by computing a code with it).
pub fn totp_secret(path: &Path, secret: &str) -> Result<(), InputError> {
    crate::store::users::totp_code(secret, 0)
        .map(|_| ())
        .ok_or_else(|| InputError::TotpSecret(path.to_owned()))
}

/// A TOTP code.
pub fn totp_code(code: &str) -> Result<(), InputError> {
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(InputError::TotpCode)
    }
}

/// Which RTMRs `--from-measure` pins for a TDX guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PinRtmrs {
    /// All four RTMR values the measurement computed (exact: nothing may extend an
    /// RTMR after the firmware's direct boot).
    #[default]
    All,
    /// Only RTMR1 and RTMR2 (kernel, initrd, command line), which the policy requires
    /// pinned; RTMR0 and RTMR3 stay free for guests that extend them at run time.
    Boot,
}

/// What `cvm measure --output json` measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// `snp` or `tdx`.
    pub tee: String,
    /// SNP MEASUREMENT or TDX MRTD, lower-case hex.
    pub measurement: String,
    /// TDX: RTMR0..3 in hex.
    pub rtmrs: Vec<String>,
}

/// Parses the JSON that `cvm measure snp|tdx --output json` prints.
pub fn parse_measure(bytes: &[u8]) -> Result<Measured, InputError> {
    let bad = |m: &str| InputError::Measure(m.to_owned());
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        InputError::Measure(format!(
            "not JSON ({e}); use the output of `cvm measure … --output json`"
        ))
    })?;
    let tee = v
        .get("tee")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no \"tee\" field; use the output of `cvm measure … --output json`"))?;
    match tee {
        "snp" => {
            let m = v
                .get("measurement")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an SNP measurement file has no \"measurement\""))?;
            Ok(Measured {
                tee: tee.into(),
                measurement: measurement("--from-measure (measurement)", m)?,
                rtmrs: Vec::new(),
            })
        }
        "tdx" => {
            let m = v
                .get("mrtd")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a TDX measurement file has no \"mrtd\""))?;
            let rtmrs = v
                .get("rtmrs")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 4)
                .ok_or_else(|| bad("a TDX measurement file needs \"rtmrs\": four hex values"))?
                .iter()
                .map(|r| {
                    r.as_str()
                        .ok_or_else(|| bad("an RTMR is not a string"))
                        .and_then(|s| measurement("--from-measure (rtmrs)", s))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Measured {
                tee: tee.into(),
                measurement: measurement("--from-measure (mrtd)", m)?,
                rtmrs,
            })
        }
        other => Err(InputError::Measure(format!(
            "the TEE `{other}` is neither snp nor tdx"
        ))),
    }
}

/// Adds what was measured to `policy` (JSON of `attestation::policy::Policy`): the
/// measurement to `measurements`, and for TDX the chosen RTMRs to `tdx.rtmrs`. An RTMR
/// the policy already pins must agree.
pub fn apply_measure(policy: &mut Value, m: &Measured, pin: PinRtmrs) -> Result<(), InputError> {
    push_measurement(policy, &m.measurement);
    if m.tee != "tdx" {
        return Ok(());
    }
    let wanted: &[u8] = match pin {
        PinRtmrs::All => &[0, 1, 2, 3],
        PinRtmrs::Boot => &attestation::policy::tdx::BOOT_RTMRS,
    };
    if !policy.get("tdx").is_some_and(Value::is_object) {
        policy["tdx"] = Value::Object(Default::default());
    }
    if !policy["tdx"].get("rtmrs").is_some_and(Value::is_array) {
        policy["tdx"]["rtmrs"] = Value::Array(Vec::new());
    }
    let list = policy["tdx"]["rtmrs"]
        .as_array_mut()
        .expect("just made an array");
    for &i in wanted {
        let value = &m.rtmrs[usize::from(i)];
        let existing = list
            .iter()
            .find(|r| r.get("index").and_then(Value::as_u64) == Some(u64::from(i)));
        match existing {
            Some(r)
                if r.get("value")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    == Some(value.clone()) => {}
            Some(_) => return Err(InputError::RtmrConflict(i)),
            None => list.push(serde_json::json!({"index": i, "value": value})),
        }
    }
    Ok(())
}

/// Adds `m` to the policy's `measurements` (once).
pub fn push_measurement(policy: &mut Value, m: &str) {
    if !policy.get("measurements").is_some_and(Value::is_array) {
        policy["measurements"] = Value::Array(Vec::new());
    }
    let list = policy["measurements"]
        .as_array_mut()
        .expect("just made an array");
    if !list.iter().any(|v| v.as_str() == Some(m)) {
        list.push(Value::String(m.to_owned()));
    }
}

/// Explains a failed API call in terms of the flags (`--ca-cert`, `--url`,
/// `--totp-secret-file`, `--token-file`); other failures are returned as they are.
pub fn explain(url: &str, e: ClientError) -> Result<InputError, ClientError> {
    match &e {
        ClientError::Http(re) => {
            // The rustls error sits inside an io::Error, whose `source()` skips it; its
            // debug form names it.
            let dbg = format!("{re:?}");
            if dbg.contains("UnknownIssuer") {
                Ok(InputError::UnknownIssuer(e))
            } else if dbg.contains("InvalidCertificate") {
                Ok(InputError::BadCertificate(e))
            } else if re.is_connect() || re.is_timeout() {
                Ok(InputError::Unreachable {
                    url: url.to_owned(),
                    source: e,
                })
            } else {
                Err(e)
            }
        }
        ClientError::Status {
            status: 401,
            detail,
            ..
        } if detail.contains("TOTP") => Ok(InputError::TotpRequired(e)),
        ClientError::Status { status: 401, .. } => Ok(InputError::AuthFailed(e)),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_are_48_bytes_of_hex() {
        let ok = "AB".repeat(48);
        assert_eq!(measurement("--measurement", &ok).unwrap(), "ab".repeat(48));
        assert_eq!(
            measurement("--measurement", "zz").unwrap_err().to_string(),
            "--measurement: `zz` is not hex"
        );
        assert!(matches!(
            measurement("--measurement", "abcd"),
            Err(InputError::MeasurementLength { len: 2, .. })
        ));
    }

    #[test]
    fn names_that_would_change_the_request_path_are_refused() {
        for bad in ["", ".", "..", "a/b", "../users/bob", "a?x=1", "a b", "é"] {
            assert!(name("workload name", bad).is_err(), "{bad}");
        }
        name("workload name", "web-1.prod_A").unwrap();
        assert!(user_name("Bob").is_err());
        user_name("bob.ops-1").unwrap();
        assert!(resource_path("--resource", "a/b").is_err());
        assert!(resource_path("--resource", "a/../b").is_err());
        resource_path("--resource", "default/disk/key").unwrap();
    }

    #[test]
    fn measure_files_of_both_tees() {
        let m = "11".repeat(48);
        let snp = parse_measure(
            serde_json::json!({"tee": "snp", "measurement": m, "plan": {}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!((snp.tee.as_str(), snp.rtmrs.len()), ("snp", 0));
        let rt: Vec<String> = (0..4).map(|i| format!("{i:02x}").repeat(48)).collect();
        let tdx = serde_json::json!({"tee": "tdx", "mrtd": m, "rtmrs": rt});
        let tdx = parse_measure(tdx.to_string().as_bytes()).unwrap();
        let mut p = serde_json::json!({});
        apply_measure(&mut p, &tdx, PinRtmrs::Boot).unwrap();
        assert_eq!(p["measurements"], serde_json::json!([m]));
        let pinned: Vec<u64> = p["tdx"]["rtmrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect();
        assert_eq!(pinned, vec![1, 2]);
        apply_measure(&mut p, &tdx, PinRtmrs::All).unwrap();
        assert_eq!(p["tdx"]["rtmrs"].as_array().unwrap().len(), 4);
        assert_eq!(p["measurements"].as_array().unwrap().len(), 1);
        // A policy that pins RTMR1 elsewhere contradicts the file.
        let mut q = serde_json::json!({"tdx": {"rtmrs": [{"index": 1, "value": "ff".repeat(48)}]}});
        assert!(matches!(
            apply_measure(&mut q, &tdx, PinRtmrs::Boot),
            Err(InputError::RtmrConflict(1))
        ));
        for bad in [
            "nonsense",
            r#"{"measurement": "00"}"#,
            r#"{"tee": "sev", "measurement": "00"}"#,
            r#"{"tee": "tdx", "mrtd": "00"}"#,
        ] {
            assert!(parse_measure(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
