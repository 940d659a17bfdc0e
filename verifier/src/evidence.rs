//! Evidence verification behind one narrow trait, and its implementation over the
//! `attestation` crate.
//!
//! # The `tee-evidence` wire format
//!
//! The guest sends KBS protocol 0.4.0's `tee-evidence` as `kbs_types::CompositeEvidence`;
//! its `primary_evidence` is a JSON object per TEE, in the cvm format or in Trustee's
//! (`SnpEvidence`, `TdxEvidence`); [`crate::evidence_formats`] detects and parses both:
//!
//! | tee | cvm object | Trustee object |
//! |---|---|---|
//! | `snp` | `{"report": base64(1184-byte ATTESTATION_REPORT), "cert_chain": base64(extended-report certificate table) \| null}` | `{"attestation_report": <sev AttestationReport JSON>, "cert_chain": [{"cert_type", "data"}] \| null}` |
//! | `tdx` | `{"quote": base64(DCAP quote v4/v5), "collateral": <dcap-qvl QuoteCollateralV3 JSON object> \| null, "cc_eventlog": …}` | `{"quote": base64, "cc_eventlog": base64(CCEL) \| null}` |
//!
//! # TDX collateral: rollback
//!
//! Collateral a TDX evidence carries (`collateral`) is the guest's (or its host's)
//! choice: older collateral that is still inside its validity could judge a platform by
//! an outdated TCB evaluation (a TCB rollback). With a collateral service, the
//! service's current collateral for the platform (cached; evidence that carries
//! collateral causes no fetch) is used; the carried set is used instead only when it is
//! *newer* (no part older, one part newer). When the service has nothing current
//! cached, the carried set is accepted only if it is not older, in its TCB info's or
//! QE identity's `tcbEvaluationDataNumber` or `issueDate`, than the newest set the
//! service has seen (even an expired one); otherwise it is refused (check
//! `collateral-rollback`). Without a collateral service, carried collateral is judged
//! alone, as before.
//!
//! Standard base64 (with padding) is expected; URL-safe is accepted too. Without
//! certificates/collateral in the evidence, the verifier asks its collateral source
//! ([`AttestationVerifier::with_collateral`], the service's
//! [`crate::collateral::CollateralService`]: AMD KDS, Intel PCS/PCCS, cache); without a
//! source, or when the source has nothing valid, the result is
//! [`ErrorKind::CollateralUnavailable`]. A TDX `cc_eventlog` is replayed against the
//! verified quote's RTMR0..3 and refused (check `cc-eventlog`) unless it replays
//! exactly; its digests become [`TdxClaims::boot_events`](attestation::tdx::TdxClaims)
//! for policy (`boot_digests`).
//!
//! # Trust anchors
//!
//! AMD's pinned ARKs and Intel's root CA are always trusted. Each `--emulated-trust DIR`
//! adds the emulated platform's anchors (`DIR/snp/trust-anchor.pem`,
//! `DIR/tdx/root_ca.pem`); evidence chaining to them yields
//! [`TrustLevel::InsecureEmulated`](attestation::claims::TrustLevel::InsecureEmulated)
//! claims, which a workload policy must additionally allow (`allow_emulated`).
//!
//! # What is cached
//!
//! A platform sends the same certificate table with every report, so the verifier keeps
//! the *parsed* tables (not a verdict) of up to [`PARSED_TABLES`] distinct tables of at
//! most [`PARSED_TABLE_MAX_LEN`] bytes, keyed by the exact table bytes (whichever
//! format carried them): parsing is a pure function of those bytes. Verification is not cached here. The `attestation` crate's [`SnpVerifier`]
//! (one per verifier, with its trust anchors fixed) caches the outcome of verifying a
//! VCEK/VLEK's chain up to a trusted root, keyed by SHA-384 of the exact VCEK/VLEK DER
//! and bounded (4096 entries); on every use, cached or not, it checks every
//! certificate's validity period at the caller's time and any CRLs supplied, then the
//! product, the TCB and chip binding and the report's own ECDSA P-384 signature.
//! `tests/evidence_chain_cache.rs` checks that a warm cache never changes a verdict.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use attestation::claims::{Claims, Tee, TeeClaims};
use attestation::snp::{
    AmdCertificate, AmdCrl, AttestationReport, CertKind, CertTable, SnpCollateral, SnpVerifier,
    TrustRoots,
};
use attestation::tdx::collateral::Collateral;
use attestation::tdx::eventlog;
use attestation::tdx::verify::{TdxVerifier, TrustRoot};
use attestation::ErrorKind;

use crate::collateral::CollateralSource;
use crate::evidence_formats::{self, FormatError};

/// Why evidence was refused: the category and a message for the guest and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The category.
    pub kind: ErrorKind,
    /// The failed check (`report-data`, a policy check name…), when there is one.
    pub check: Option<String>,
    /// What went wrong (one sentence; no internal cause chain).
    pub message: String,
}

impl VerifyFailure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            check: None,
            message: message.into(),
        }
    }
}

/// Verifies evidence of one TEE and returns its claims. Implementations must check that
/// the evidence binds `expected_report_data` and must judge certificate validity at
/// `now`.
pub trait EvidenceVerifier: Send + Sync + 'static {
    /// Verifies `evidence` (the `primary_evidence` JSON, as bytes).
    fn verify(
        &self,
        tee: Tee,
        evidence: &[u8],
        expected_report_data: &[u8; 64],
        now: time::OffsetDateTime,
    ) -> Result<Claims, VerifyFailure>;
}

/// Loading trust anchors failed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// AMD's pinned roots could not be loaded.
    #[error("cannot load AMD's pinned roots")]
    Amd(#[source] attestation::snp::roots::RootError),
    /// A trust anchor file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An SNP trust anchor is invalid.
    #[error("{} is not a valid SNP trust anchor", path.display())]
    Snp {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: attestation::snp::roots::RootError,
    },
    /// A TDX root is invalid.
    #[error("{} is not a valid TDX root CA", path.display())]
    Tdx {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: attestation::tdx::verify::TrustRootError,
    },
    /// The directory holds neither anchor.
    #[error("{} holds neither snp/trust-anchor.pem nor tdx/root_ca.pem", .0.display())]
    Empty(PathBuf),
}

/// How many distinct parsed SNP certificate tables are kept (then the cache starts over).
pub const PARSED_TABLES: usize = 256;
/// Only certificate tables up to this length are kept (a genuine table is under 8 KiB),
/// so the cache holds at most a few MiB whatever clients send.
pub const PARSED_TABLE_MAX_LEN: usize = 32 << 10;

/// The production [`EvidenceVerifier`]: the `attestation` crate's SNP and TDX verifiers.
#[derive(Debug)]
pub struct AttestationVerifier {
    snp: SnpVerifier,
    tdx: Vec<TdxVerifier>,
    emulated: bool,
    /// Parsed certificate tables by their bytes (see the module docs).
    tables: Mutex<HashMap<Vec<u8>, Arc<SnpCollateral>>>,
    /// Where collateral absent from the evidence comes from.
    collateral: Option<Arc<dyn CollateralSource>>,
    /// AMD's pinned ASKs: a VCEK they issued is genuine, so its product's KDS CRL applies.
    amd_asks: Vec<AmdCertificate>,
    /// AMD's pinned ARKs and their products: an ASVK naming one is AMD's, so the
    /// product's VLEK CRL applies.
    amd_arks: Vec<(AmdCertificate, Option<attestation::snp::Product>)>,
}

impl AttestationVerifier {
    /// Trusts the genuine roots, plus the emulated platforms in `emulated_dirs`.
    pub fn new(emulated_dirs: &[PathBuf]) -> Result<Self, TrustError> {
        let mut roots = TrustRoots::amd().map_err(TrustError::Amd)?;
        let mut tdx = vec![TdxVerifier::intel()];
        for dir in emulated_dirs {
            let mut found = false;
            let snp = dir.join("snp").join("trust-anchor.pem");
            if snp.exists() {
                let bytes = read(&snp)?;
                roots = roots
                    .with_operator_roots(&bytes)
                    .map_err(|source| TrustError::Snp { path: snp, source })?;
                found = true;
            }
            let tdx_root = dir.join("tdx").join("root_ca.pem");
            if tdx_root.exists() {
                let bytes = read(&tdx_root)?;
                let root =
                    TrustRoot::emulated_from_bytes(&bytes).map_err(|source| TrustError::Tdx {
                        path: tdx_root,
                        source,
                    })?;
                tdx.push(TdxVerifier::new(root));
                found = true;
            }
            if !found {
                return Err(TrustError::Empty(dir.clone()));
            }
        }
        Ok(Self {
            snp: SnpVerifier::new(roots),
            tdx,
            emulated: !emulated_dirs.is_empty(),
            tables: Mutex::new(HashMap::new()),
            collateral: None,
            amd_asks: TrustRoots::amd()
                .map_err(TrustError::Amd)?
                .intermediates()
                .to_vec(),
            amd_arks: TrustRoots::amd()
                .map_err(TrustError::Amd)?
                .roots()
                .iter()
                .map(|r| (r.ark.clone(), r.product))
                .collect(),
        })
    }

    /// Fetches collateral absent from the evidence from `source`.
    pub fn with_collateral(mut self, source: Arc<dyn CollateralSource>) -> Self {
        self.collateral = Some(source);
        self
    }

    /// Whether emulated trust anchors are configured.
    pub fn trusts_emulated(&self) -> bool {
        self.emulated
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Io {
        path: path.to_owned(),
        source,
    })
}

fn malformed(e: FormatError) -> VerifyFailure {
    VerifyFailure::new(e.kind(), error_chain(&e))
}

impl AttestationVerifier {
    fn verify_snp(
        &self,
        evidence: &[u8],
        now: time::OffsetDateTime,
    ) -> Result<Claims, VerifyFailure> {
        let ev = evidence_formats::parse_snp(evidence).map_err(malformed)?;
        let report = ev.report;
        let collateral = match (ev.cert_table, &self.collateral) {
            (Some(chain), None) => self.snp_collateral(chain)?,
            (Some(chain), Some(source)) => {
                let table = self.snp_collateral(chain)?;
                self.with_kds_crl(table, source.as_ref(), &report, now)?
            }
            (None, Some(source)) => source
                .snp_collateral(&report, now)
                .map_err(|e| VerifyFailure::new(e.kind(), e.to_string()))?,
            (None, None) => {
                return Err(VerifyFailure::new(
                    ErrorKind::CollateralUnavailable,
                    "the evidence carries no cert_chain and no collateral service is configured; send the extended report's certificate table",
                ))
            }
        };
        self.snp
            .verify(&report, &collateral, now)
            .map_err(|e| VerifyFailure::new(e.kind(), e.to_string()))
    }

    /// Adds the KDS's CRL to a certificate table whose VCEK is issued by one of AMD's
    /// ASKs, or whose VLEK is issued by an ASVK that names one of AMD's ARKs (whatever
    /// CRLs the table carries): AMD publishes a VCEK CRL (`/vcek/v1/{product}/crl`) and a
    /// VLEK CRL (`/vlek/v1/{product}/crl`) per product, so a genuine chain is always
    /// checked against the right one (a revoked ASK/ASVK or VLEK is refused; a CRL that
    /// cannot be obtained refuses the evidence, under the same `amd_crl_optional` rule).
    /// Emulated and other chains are left as they are.
    fn with_kds_crl(
        &self,
        table: Arc<SnpCollateral>,
        source: &dyn CollateralSource,
        report: &[u8],
        now: time::OffsetDateTime,
    ) -> Result<Arc<SnpCollateral>, VerifyFailure> {
        // The table's own CRLs (if any) are the host's choice: a decoy CRL from another
        // issuer, or an old genuine one, must not stand in for the KDS's current CRL.
        // So the KDS's CRL is added whatever the table carries.
        // The product and the pinned ARK the chain ends at: the KDS's CRL must be that
        // ARK's (RFC 5280 §6.3.3), not merely some trusted ARK's.
        let product = table
            .certificates()
            .filter(|c| c.kind() == CertKind::Vcek)
            .find_map(|vcek| {
                let ask = self.amd_asks.iter().find(|a| vcek.names_issuer(a))?;
                let (ark, _) = self
                    .amd_arks
                    .iter()
                    .find(|(ark, _)| ask.names_issuer(ark))?;
                Some((ask.product().or_else(|| vcek.product())?, ark))
            });
        // VLEKs are not fetchable, but their CRL is: an ASVK naming one of AMD's ARKs.
        let vlek_product = || {
            table
                .certificates()
                .filter(|c| c.kind() == CertKind::Vlek)
                .find_map(|vlek| {
                    let asvk = table
                        .certificates()
                        .find(|a| a.kind() == CertKind::Asvk && vlek.names_issuer(a))?;
                    let (ark, product) = self
                        .amd_arks
                        .iter()
                        .find(|(ark, _)| asvk.names_issuer(ark))?;
                    let product = product
                        .or_else(|| asvk.product())
                        .or_else(|| vlek.product())?;
                    Some((product, ark))
                })
        };
        let ((product, ark), vlek) = match product {
            Some(p) => (p, false),
            None => match vlek_product() {
                Some(p) => (p, true),
                None => return Ok(table),
            },
        };
        // The report's own product must agree (a v2 report has no CPUID).
        if let Ok(r) = AttestationReport::parse(report) {
            if r.cpuid
                .and_then(|c| c.product())
                .is_some_and(|p| p != product)
            {
                return Ok(table);
            }
        }
        let fail =
            |e: crate::collateral::CollateralError| VerifyFailure::new(e.kind(), e.to_string());
        let crl = if vlek {
            source.snp_vlek_crl(product, now)
        } else {
            source.snp_crl(product, now)
        };
        let Some(crl) = crl.map_err(fail)? else {
            return Ok(table);
        };
        let mut with = (*table).clone();
        let crls = AmdCrl::parse_all(&crl.body).map_err(|e| {
            VerifyFailure::new(
                ErrorKind::CollateralUnavailable,
                format!("the KDS's {product} CRL does not parse: {e}"),
            )
        })?;
        if crls.iter().any(|c| !c.issued_by(ark)) {
            return Err(VerifyFailure::new(
                ErrorKind::CollateralUnavailable,
                format!(
                    "the KDS's {product} CRL is not issued by the chain's ARK ({}), so it revokes nothing of this chain; refused (RFC 5280 section 6.3.3)",
                    ark.common_name()
                ),
            ));
        }
        for c in crls {
            with.add_crl(c);
        }
        // The verification must then find a CRL of the chain's ARK: a decoy CRL of
        // another issuer in the table cannot stand in for it.
        with.require_ark_crl();
        Ok(Arc::new(with))
    }

    /// The parsed certificate table `chain`, from the cache if it was parsed before.
    fn snp_collateral(&self, chain: Vec<u8>) -> Result<Arc<SnpCollateral>, VerifyFailure> {
        let lock = || self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = lock().get(&chain) {
            return Ok(Arc::clone(c));
        }
        let table =
            CertTable::parse(&chain).map_err(|e| VerifyFailure::new(e.kind(), e.to_string()))?;
        let mut collateral = SnpCollateral::new();
        collateral
            .add_cert_table(&table)
            .map_err(|e| VerifyFailure::new(e.kind(), e.to_string()))?;
        let collateral = Arc::new(collateral);
        if chain.len() > PARSED_TABLE_MAX_LEN {
            return Ok(collateral);
        }
        let mut tables = lock();
        if tables.len() >= PARSED_TABLES {
            tables.clear();
        }
        tables.insert(chain, Arc::clone(&collateral));
        Ok(collateral)
    }

    fn verify_tdx(
        &self,
        evidence: &[u8],
        now: time::OffsetDateTime,
    ) -> Result<Claims, VerifyFailure> {
        let ev = evidence_formats::parse_tdx(evidence).map_err(malformed)?;
        let quote = ev.quote;
        let carried = ev
            .collateral
            .map(|bytes| {
                Collateral::from_json(&bytes)
                    .map(Arc::new)
                    .map_err(|e| VerifyFailure::new(e.kind(), e.to_string()))
            })
            .transpose()?;
        let collateral = match (carried, &self.collateral) {
            (Some(carried), Some(source)) => {
                self.tdx_newest(carried, source.as_ref(), &quote, now)?
            }
            (Some(carried), None) => carried,
            (None, Some(source)) => source
                .tdx_collateral(&quote, now)
                .map_err(|e| VerifyFailure::new(e.kind(), e.to_string()))?,
            (None, None) => {
                return Err(VerifyFailure::new(
                    ErrorKind::CollateralUnavailable,
                    "the evidence carries no collateral and no collateral service is configured; send the QuoteCollateralV3 object",
                ))
            }
        };
        // Genuine Intel first; emulated roots only on an untrusted chain.
        let mut first: Option<VerifyFailure> = None;
        for v in &self.tdx {
            match v.verify(&quote, &collateral, now) {
                Ok(q) => return with_event_log(q.claims, ev.cc_eventlog.as_deref()),
                Err(e) => {
                    let f = VerifyFailure::new(e.kind(), e.to_string());
                    if e.kind() != ErrorKind::UntrustedChain {
                        return Err(f);
                    }
                    first.get_or_insert(f);
                }
            }
        }
        Err(first.unwrap_or_else(|| {
            VerifyFailure::new(ErrorKind::UntrustedChain, "no TDX trust root is configured")
        }))
    }
}

impl AttestationVerifier {
    /// Chooses between collateral carried in the evidence and the collateral service's
    /// (see the module docs, "TDX collateral: rollback"): the service's when it has
    /// current collateral cached, unless the carried set is newer; without it, the
    /// carried set only if it is not older than the newest the service has seen.
    fn tdx_newest(
        &self,
        carried: Arc<Collateral>,
        source: &dyn CollateralSource,
        quote: &[u8],
        now: time::OffsetDateTime,
    ) -> Result<Arc<Collateral>, VerifyFailure> {
        let rollback = |why: String| {
            VerifyFailure {
            kind: ErrorKind::PolicyNotMet,
            check: Some("collateral-rollback".into()),
            message: format!(
                "the collateral in the evidence is older than collateral the verifier has seen ({why}); a TCB rollback is refused"
            ),
        }
        };
        // Nothing is fetched for evidence that carries collateral: the service's
        // current collateral is used when it has it, else its newest seen is the floor.
        if let Some(service) = source.tdx_cached(quote, now) {
            let newer = carried
                .freshness()
                .older_than(&service.freshness())
                .is_none()
                && carried.freshness() != service.freshness();
            return Ok(if newer { carried } else { service });
        }
        if let Some(floor) = source.tdx_floor(quote) {
            if let Some(why) = carried.freshness().older_than(&floor) {
                return Err(rollback(why));
            }
        }
        Ok(carried)
    }
}

/// Replays `cc_eventlog` (if any) against the verified quote's RTMRs and records its
/// digests in the claims; a log that does not replay refuses the evidence.
fn with_event_log(mut claims: Claims, cc_eventlog: Option<&[u8]>) -> Result<Claims, VerifyFailure> {
    let Some(log) = cc_eventlog else {
        return Ok(claims);
    };
    let TeeClaims::Tdx(tdx) = &mut claims.detail else {
        return Err(VerifyFailure::new(
            ErrorKind::Malformed,
            "a CC event log came with non-TDX claims",
        ));
    };
    let events = eventlog::replay(log, &tdx.rtmrs).map_err(|e| VerifyFailure {
        kind: e.kind(),
        check: Some("cc-eventlog".into()),
        message: error_chain(&e),
    })?;
    tdx.boot_events = Some(Box::new(events));
    Ok(claims)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl EvidenceVerifier for AttestationVerifier {
    fn verify(
        &self,
        tee: Tee,
        evidence: &[u8],
        expected_report_data: &[u8; 64],
        now: time::OffsetDateTime,
    ) -> Result<Claims, VerifyFailure> {
        let claims = match tee {
            Tee::Snp => self.verify_snp(evidence, now)?,
            Tee::Tdx => self.verify_tdx(evidence, now)?,
        };
        if claims.report_data.as_slice() != expected_report_data.as_slice() {
            return Err(VerifyFailure {
                kind: ErrorKind::PolicyNotMet,
                check: Some("report-data".into()),
                message: "REPORT_DATA does not bind the runtime data (nonce and TEE key)".into(),
            });
        }
        Ok(claims)
    }
}
