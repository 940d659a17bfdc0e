//! Configuration of `cvm-verifier serve`: a TOML file (one section per concern, unknown
//! keys refused), overridden by environment variables, overridden by command-line
//! options. See `verifier/cvm-verifier.sample.toml`.

use crate::collateral::CollateralConfig;
use crate::crypto::master::MasterKeySource;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits::{AuthLimits, FloodLimits};

/// The configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerSection,
    /// `[database]`.
    #[serde(default)]
    pub database: DatabaseSection,
    /// `[keys]`.
    #[serde(default)]
    pub keys: KeysSection,
    /// `[attestation]`.
    #[serde(default)]
    pub attestation: AttestationSection,
    /// `[admin]`.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[collateral]`.
    #[serde(default)]
    pub collateral: CollateralSection,
}

/// `[collateral]`: the collateral service (AMD KDS, Intel PCS/PCCS, cache); see
/// [`crate::collateral`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollateralSection {
    /// AMD KDS base URL (default `https://kdsintf.amd.com`).
    pub amd_kds_url: Option<String>,
    /// Intel PCS or PCCS base URL (default `https://api.trustedservices.intel.com`).
    pub intel_pcs_url: Option<String>,
    /// Intel SGX root CA CRL URL (default: the PCCS's `rootcacrl`, or Intel's
    /// distribution point for the public PCS).
    pub intel_root_ca_crl_url: Option<String>,
    /// HTTP(S) proxy URL for every fetch.
    pub proxy: Option<String>,
    /// Never fetch; use only imported or cached collateral (default false).
    pub offline: Option<bool>,
    /// Let SNP chains verify without a CRL when the KDS publishes none (answers 404):
    /// only for a private KDS (default false: such chains are refused).
    pub amd_crl_optional: Option<bool>,
    /// Timeout of one request, seconds (default 10).
    pub timeout_secs: Option<u64>,
    /// Attempts per fetch (default 3).
    pub attempts: Option<u32>,
    /// Delay before the first retry, milliseconds, doubled per retry (default 500).
    pub backoff_ms: Option<u64>,
    /// How often to look for items to refresh, seconds (default 300).
    pub refresh_interval_secs: Option<u64>,
    /// Cache-miss fetches one client's evidence may cause per budget window (default 16).
    pub fetch_budget_per_client: Option<u32>,
    /// Cache-miss fetches all evidence together may cause per budget window (default 256).
    pub fetch_budget_global: Option<u32>,
    /// The fetch budgets' window, seconds (default 60).
    pub fetch_budget_window_secs: Option<u64>,
}

/// `[server]`: where and how to listen.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// `ADDR:PORT` to listen on.
    pub listen: Option<String>,
    /// PEM certificate chain for HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (loopback addresses only; for tests and local proxies).
    pub insecure_http: Option<bool>,
    /// Body limit of every route but attest, bytes (default 65536).
    pub body_limit: Option<usize>,
    /// Body limit of `/kbs/v0/attest`, bytes (default 1048576).
    pub attest_body_limit: Option<usize>,
}

/// `[database]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// A SQLite file path or `sqlite:` URL (created on first start), or a `postgres://` URL.
    pub url: Option<String>,
}

/// `[keys]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// The 32-byte master key file (mode 0600).
    pub master_key_file: Option<PathBuf>,
    /// Or a KMS-style command printing the key (64 hex digits) on stdout.
    pub master_key_command: Option<String>,
    /// Keys accepted for opening sealed values but never used for sealing (online
    /// master-key rotation).
    #[serde(default)]
    pub extra_master_key_files: Vec<PathBuf>,
}

/// `[attestation]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationSection {
    /// Emulated platform directories whose trust anchors to accept (INSECURE).
    pub emulated_trust: Option<Vec<PathBuf>>,
    /// Challenge lifetime, seconds (default 300).
    pub session_ttl_secs: Option<i64>,
    /// Attestation token (and attested session) lifetime, seconds (default 300).
    pub token_ttl_secs: Option<i64>,
}

/// `[admin]`: admin-plane authentication limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Failed authentications allowed per client IP per window (default 20).
    pub auth_failures_per_ip: Option<usize>,
    /// Failed authentications allowed per user per window (default 5).
    pub auth_failures_per_user: Option<usize>,
    /// The window, seconds (default 300).
    pub auth_failure_window_secs: Option<u64>,
}

/// `[limits]`: what an unauthenticated client can make the service spend (connections,
/// timeouts, argon2 work, KBS sessions and refusals). Every field is optional; the
/// defaults are those of [`FloodLimits::default`] and are listed in the README.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Open connections in total (default 4096).
    pub max_connections: Option<usize>,
    /// Open connections per client IP (default 256).
    pub max_connections_per_ip: Option<usize>,
    /// Seconds to receive a complete request head, also the keep-alive idle time
    /// between requests (default 10).
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds to receive the body and answer one request (default 30).
    pub request_timeout_secs: Option<u64>,
    /// Seconds to complete a TLS handshake (default 10).
    pub tls_handshake_timeout_secs: Option<u64>,
    /// Longest life of a connection, seconds; then it is shut down gracefully and
    /// closed `request_timeout_secs` later at the latest (default 60).
    pub max_connection_lifetime_secs: Option<u64>,
    /// `/kbs/v0/attest` requests reading or verifying their body at once; more get 429
    /// (default 64; each holds at most `attest_body_limit` bytes of body).
    pub attest_concurrency: Option<usize>,
    /// Concurrent argon2 verifications (default 2; each uses 19 MiB).
    pub argon2_concurrency: Option<usize>,
    /// Requests allowed to wait for an argon2 slot; more get 503 (default 32).
    pub argon2_queue: Option<usize>,
    /// `/kbs/v0/auth` requests per client IP per window (default 3000).
    pub kbs_auth_per_ip: Option<usize>,
    /// `/kbs/v0/auth` requests in total per window (default 30000).
    pub kbs_auth_global: Option<usize>,
    /// The `/kbs/v0/auth` window, seconds (default 60).
    pub kbs_auth_window_secs: Option<u64>,
    /// Challenged sessions per client IP created within one session TTL (default 5000).
    pub open_sessions_per_ip: Option<usize>,
    /// Challenged sessions in total created within one session TTL (default 50000).
    pub open_sessions: Option<usize>,
    /// KBS refusals per client IP (per session for requests carrying the cookie or token
    /// of an existing session) per window before its KBS requests get 429 (default 600).
    pub kbs_refusals_per_ip: Option<usize>,
    /// Ignored (kept so existing files load): a global refusal limit refused every guest
    /// once one client flooded. Global floods are bounded in the audit log by
    /// `audit_refusals_global`.
    pub kbs_refusals_global: Option<usize>,
    /// The KBS refusal window, seconds (default 60).
    pub kbs_refusal_window_secs: Option<u64>,
    /// Refusals audited one by one per (client, reason) per window (default 20).
    pub audit_refusals_per_client: Option<usize>,
    /// Refusals audited one by one in total per window (default 500).
    pub audit_refusals_global: Option<usize>,
    /// The audit aggregation window and flush period, seconds (default 60).
    pub audit_refusal_window_secs: Option<u64>,
    /// Longest resource path (`repository/type/tag`) accepted, bytes (default 256).
    pub max_resource_path: Option<usize>,
}

impl LimitsSection {
    fn resolve(self) -> Result<FloodLimits, ConfigError> {
        let d = FloodLimits::default();
        let secs = |v: Option<u64>, d: Duration, name: &'static str| match v {
            None => Ok(d),
            Some(0) => Err(ConfigError::Range(name)),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        let count = |v: Option<usize>, d: usize, name: &'static str| match v {
            None => Ok(d),
            Some(0) => Err(ConfigError::Range(name)),
            Some(n) => Ok(n),
        };
        Ok(FloodLimits {
            max_connections: count(self.max_connections, d.max_connections, "max_connections")?,
            max_connections_per_ip: count(
                self.max_connections_per_ip,
                d.max_connections_per_ip,
                "max_connections_per_ip",
            )?,
            header_read_timeout: secs(
                self.header_read_timeout_secs,
                d.header_read_timeout,
                "header_read_timeout_secs",
            )?,
            request_timeout: secs(
                self.request_timeout_secs,
                d.request_timeout,
                "request_timeout_secs",
            )?,
            tls_handshake_timeout: secs(
                self.tls_handshake_timeout_secs,
                d.tls_handshake_timeout,
                "tls_handshake_timeout_secs",
            )?,
            max_connection_lifetime: secs(
                self.max_connection_lifetime_secs,
                d.max_connection_lifetime,
                "max_connection_lifetime_secs",
            )?,
            attest_concurrency: count(
                self.attest_concurrency,
                d.attest_concurrency,
                "attest_concurrency",
            )?,
            argon2_concurrency: count(
                self.argon2_concurrency,
                d.argon2_concurrency,
                "argon2_concurrency",
            )?,
            argon2_queue: self.argon2_queue.unwrap_or(d.argon2_queue),
            kbs_auth_per_ip: count(self.kbs_auth_per_ip, d.kbs_auth_per_ip, "kbs_auth_per_ip")?,
            kbs_auth_global: count(self.kbs_auth_global, d.kbs_auth_global, "kbs_auth_global")?,
            kbs_auth_window: secs(
                self.kbs_auth_window_secs,
                d.kbs_auth_window,
                "kbs_auth_window_secs",
            )?,
            open_sessions_per_ip: count(
                self.open_sessions_per_ip,
                d.open_sessions_per_ip,
                "open_sessions_per_ip",
            )?,
            open_sessions: count(self.open_sessions, d.open_sessions, "open_sessions")?,
            kbs_refusals_per_ip: count(
                self.kbs_refusals_per_ip,
                d.kbs_refusals_per_ip,
                "kbs_refusals_per_ip",
            )?,
            kbs_refusals_global: count(
                self.kbs_refusals_global,
                d.kbs_refusals_global,
                "kbs_refusals_global",
            )?,
            kbs_refusal_window: secs(
                self.kbs_refusal_window_secs,
                d.kbs_refusal_window,
                "kbs_refusal_window_secs",
            )?,
            audit_refusals_per_client: self
                .audit_refusals_per_client
                .unwrap_or(d.audit_refusals_per_client),
            audit_refusals_global: self
                .audit_refusals_global
                .unwrap_or(d.audit_refusals_global),
            audit_refusal_window: secs(
                self.audit_refusal_window_secs,
                d.audit_refusal_window,
                "audit_refusal_window_secs",
            )?,
            max_resource_path: count(
                self.max_resource_path,
                d.max_resource_path,
                "max_resource_path",
            )?,
        })
    }
}

/// Command-line/environment overrides (every field optional).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--database`.
    pub database: Option<String>,
    /// `--master-key-file`.
    pub master_key_file: Option<PathBuf>,
    /// `--master-key-command`.
    pub master_key_command: Option<String>,
    /// `--extra-master-key-file` (replaces the file's list when non-empty).
    pub extra_master_key_files: Vec<PathBuf>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--insecure-http`.
    pub insecure_http: bool,
    /// `--emulated-trust` (replaces the file's list when given).
    pub emulated_trust: Vec<PathBuf>,
    /// `--session-ttl`.
    pub session_ttl: Option<i64>,
    /// `--amd-kds-url`.
    pub amd_kds_url: Option<String>,
    /// `--intel-pcs-url`.
    pub intel_pcs_url: Option<String>,
    /// `--collateral-proxy`.
    pub collateral_proxy: Option<String>,
    /// `--collateral-offline`.
    pub collateral_offline: bool,
}

/// How to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTPS with this certificate chain and key.
    Tls {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
    /// Plain HTTP on a loopback address.
    InsecureHttp,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// HTTPS or loopback HTTP.
    pub tls: TlsMode,
    /// Database URL or path.
    pub database_url: String,
    /// Where the master key comes from.
    pub master_key: MasterKeySource,
    /// Extra master key files accepted for opening values (rotation).
    pub extra_master_keys: Vec<PathBuf>,
    /// Emulated trust directories.
    pub emulated_trust: Vec<PathBuf>,
    /// Challenge lifetime.
    pub session_ttl: i64,
    /// Token lifetime.
    pub token_ttl: i64,
    /// Body limit.
    pub body_limit: usize,
    /// Attest body limit.
    pub attest_body_limit: usize,
    /// Admin authentication limits.
    pub auth_limits: AuthLimits,
    /// Connection, timeout, argon2, session and refusal limits.
    pub flood_limits: FloodLimits,
    /// The collateral service.
    pub collateral: CollateralConfig,
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("the configuration file {} is invalid", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A required setting is missing.
    #[error("{0} is required (option, environment variable or configuration file)")]
    Missing(&'static str),
    /// Both a master key file and a master key command were given.
    #[error("give either a master key file or a master key command, not both")]
    TwoMasterKeys,
    /// The listen address is invalid.
    #[error("`{0}` is not an ADDR:PORT socket address")]
    Listen(String),
    /// TLS settings are inconsistent.
    #[error("give both --tls-cert and --tls-key, or --insecure-http (not both)")]
    Tls,
    /// Plain HTTP on a non-loopback address.
    #[error("--insecure-http is only allowed on a loopback address, not {0}")]
    NotLoopback(SocketAddr),
    /// A value is out of range.
    #[error("{0} must be positive")]
    Range(&'static str),
    /// A collateral service URL is not http(s).
    #[error("{0} `{1}` is not an http:// or https:// URL")]
    Url(&'static str, String),
}

impl ConfigFile {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Applies overrides and validates.
    pub fn resolve(self, o: Overrides) -> Result<ServeConfig, ConfigError> {
        let listen_s = o
            .listen
            .or(self.server.listen)
            .ok_or(ConfigError::Missing("--listen"))?;
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|_| ConfigError::Listen(listen_s.clone()))?;
        let database_url = o
            .database
            .or(self.database.url)
            .ok_or(ConfigError::Missing("--database"))?;
        let master_key = match (
            o.master_key_file.or(self.keys.master_key_file),
            o.master_key_command.or(self.keys.master_key_command),
        ) {
            (Some(f), None) => MasterKeySource::File(f),
            (None, Some(c)) => MasterKeySource::Command(c),
            (None, None) => {
                return Err(ConfigError::Missing(
                    "--master-key-file or --master-key-command",
                ))
            }
            (Some(_), Some(_)) => return Err(ConfigError::TwoMasterKeys),
        };
        let extra_master_keys = if o.extra_master_key_files.is_empty() {
            self.keys.extra_master_key_files
        } else {
            o.extra_master_key_files
        };
        let cert = o.tls_cert.or(self.server.tls_cert);
        let key = o.tls_key.or(self.server.tls_key);
        let insecure = o.insecure_http || self.server.insecure_http.unwrap_or(false);
        let tls = match (cert, key, insecure) {
            (Some(cert), Some(key), false) => TlsMode::Tls { cert, key },
            (None, None, true) => {
                if !listen.ip().is_loopback() {
                    return Err(ConfigError::NotLoopback(listen));
                }
                TlsMode::InsecureHttp
            }
            _ => return Err(ConfigError::Tls),
        };
        let emulated_trust = if o.emulated_trust.is_empty() {
            self.attestation.emulated_trust.unwrap_or_default()
        } else {
            o.emulated_trust
        };
        let session_ttl = o
            .session_ttl
            .or(self.attestation.session_ttl_secs)
            .unwrap_or(300);
        let token_ttl = self.attestation.token_ttl_secs.unwrap_or(300);
        if session_ttl <= 0 {
            return Err(ConfigError::Range("session_ttl_secs"));
        }
        if token_ttl <= 0 {
            return Err(ConfigError::Range("token_ttl_secs"));
        }
        let d = AuthLimits::default();
        let auth_limits = AuthLimits {
            per_ip: self.admin.auth_failures_per_ip.unwrap_or(d.per_ip),
            per_user: self.admin.auth_failures_per_user.unwrap_or(d.per_user),
            window: self
                .admin
                .auth_failure_window_secs
                .map(Duration::from_secs)
                .unwrap_or(d.window),
        };
        let flood_limits = self.limits.resolve()?;
        let collateral = self.collateral.resolve(
            o.amd_kds_url,
            o.intel_pcs_url,
            o.collateral_proxy,
            o.collateral_offline,
        )?;
        Ok(ServeConfig {
            listen,
            tls,
            database_url,
            master_key,
            extra_master_keys,
            emulated_trust,
            session_ttl,
            token_ttl,
            body_limit: self.server.body_limit.unwrap_or(64 << 10),
            attest_body_limit: self.server.attest_body_limit.unwrap_or(1 << 20),
            auth_limits,
            flood_limits,
            collateral,
        })
    }
}

impl CollateralSection {
    /// Applies the command-line overrides and the defaults.
    pub fn resolve(
        self,
        amd_kds_url: Option<String>,
        intel_pcs_url: Option<String>,
        proxy: Option<String>,
        offline: bool,
    ) -> Result<CollateralConfig, ConfigError> {
        let d = CollateralConfig::default();
        let url = |what: &'static str, u: String| -> Result<String, ConfigError> {
            if u.starts_with("https://") || u.starts_with("http://") {
                Ok(u)
            } else {
                Err(ConfigError::Url(what, u))
            }
        };
        let attempts = self.attempts.unwrap_or(d.attempts);
        if attempts == 0 {
            return Err(ConfigError::Range("collateral.attempts"));
        }
        if self.timeout_secs == Some(0) {
            return Err(ConfigError::Range("collateral.timeout_secs"));
        }
        if self.refresh_interval_secs == Some(0) {
            return Err(ConfigError::Range("collateral.refresh_interval_secs"));
        }
        // A zero budget would refuse every fetch silently (a verifier that can never
        // learn a new chip or TCB); an operator who wants that sets `offline`.
        let per_client = self
            .fetch_budget_per_client
            .unwrap_or(d.fetch_budget_per_client);
        if per_client == 0 {
            return Err(ConfigError::Range("collateral.fetch_budget_per_client"));
        }
        let global = self.fetch_budget_global.unwrap_or(d.fetch_budget_global);
        if global == 0 || global < per_client {
            return Err(ConfigError::Range("collateral.fetch_budget_global"));
        }
        if self.fetch_budget_window_secs == Some(0) {
            return Err(ConfigError::Range("collateral.fetch_budget_window_secs"));
        }
        Ok(CollateralConfig {
            amd_kds_url: url(
                "amd_kds_url",
                amd_kds_url.or(self.amd_kds_url).unwrap_or(d.amd_kds_url),
            )?,
            intel_pcs_url: url(
                "intel_pcs_url",
                intel_pcs_url
                    .or(self.intel_pcs_url)
                    .unwrap_or(d.intel_pcs_url),
            )?,
            intel_root_ca_crl_url: self
                .intel_root_ca_crl_url
                .map(|u| url("intel_root_ca_crl_url", u))
                .transpose()?,
            proxy: proxy.or(self.proxy),
            offline: offline || self.offline.unwrap_or(false),
            timeout: self
                .timeout_secs
                .map(Duration::from_secs)
                .unwrap_or(d.timeout),
            attempts,
            backoff: self
                .backoff_ms
                .map(Duration::from_millis)
                .unwrap_or(d.backoff),
            refresh_interval: self
                .refresh_interval_secs
                .map(Duration::from_secs)
                .unwrap_or(d.refresh_interval),
            amd_crl_required: !self.amd_crl_optional.unwrap_or(false),
            fetch_budget_per_client: per_client,
            fetch_budget_global: global,
            fetch_budget_window: self
                .fetch_budget_window_secs
                .map(Duration::from_secs)
                .unwrap_or(d.fetch_budget_window),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Overrides {
        Overrides {
            database: Some("/tmp/x.db".into()),
            master_key_file: Some("/tmp/mk".into()),
            ..Default::default()
        }
    }

    #[test]
    fn sample_file_parses() {
        let text = include_str!("../cvm-verifier.sample.toml");
        let f: ConfigFile = toml::from_str(text).unwrap();
        let c = f.resolve(Overrides::default()).unwrap();
        assert!(matches!(c.tls, TlsMode::Tls { .. }));
        assert_eq!(c.session_ttl, 300);
    }

    #[test]
    fn master_key_from_exactly_one_source() {
        let mut o = base();
        o.listen = Some("127.0.0.1:1".into());
        o.insecure_http = true;
        assert_eq!(
            ConfigFile::default().resolve(o.clone()).unwrap().master_key,
            MasterKeySource::File("/tmp/mk".into())
        );
        o.master_key_command = Some("kms-unwrap verifier".into());
        assert!(matches!(
            ConfigFile::default().resolve(o.clone()),
            Err(ConfigError::TwoMasterKeys)
        ));
        o.master_key_file = None;
        assert_eq!(
            ConfigFile::default().resolve(o.clone()).unwrap().master_key,
            MasterKeySource::Command("kms-unwrap verifier".into())
        );
        o.master_key_command = None;
        assert!(matches!(
            ConfigFile::default().resolve(o.clone()),
            Err(ConfigError::Missing(_))
        ));
        let f: ConfigFile =
            toml::from_str("[keys]\nmaster_key_command = \"cat /run/key\"\n").unwrap();
        assert_eq!(
            f.resolve(o).unwrap().master_key,
            MasterKeySource::Command("cat /run/key".into())
        );
    }

    #[test]
    fn connection_lifetime_and_attest_concurrency() {
        let mut o = base();
        o.listen = Some("127.0.0.1:1".into());
        o.insecure_http = true;
        let c = ConfigFile::default().resolve(o.clone()).unwrap();
        assert_eq!(
            c.flood_limits.max_connection_lifetime,
            Duration::from_secs(60)
        );
        assert_eq!(c.flood_limits.attest_concurrency, 64);
        let f: ConfigFile = toml::from_str(
            "[limits]\nmax_connection_lifetime_secs = 5\nattest_concurrency = 3\n\
             kbs_refusals_global = 1",
        )
        .unwrap();
        let c = f.resolve(o.clone()).unwrap();
        assert_eq!(
            c.flood_limits.max_connection_lifetime,
            Duration::from_secs(5)
        );
        assert_eq!(c.flood_limits.attest_concurrency, 3);
        for zero in ["max_connection_lifetime_secs = 0", "attest_concurrency = 0"] {
            let f: ConfigFile = toml::from_str(&format!("[limits]\n{zero}")).unwrap();
            assert!(
                matches!(f.resolve(o.clone()), Err(ConfigError::Range(_))),
                "{zero}"
            );
        }
    }

    #[test]
    fn limits_default_and_refuse_zero() {
        let mut o = base();
        o.listen = Some("127.0.0.1:1".into());
        o.insecure_http = true;
        let c = ConfigFile::default().resolve(o.clone()).unwrap();
        assert_eq!(c.flood_limits.argon2_concurrency, 2);
        let f: ConfigFile =
            toml::from_str("[limits]\nmax_connections_per_ip = 7\nheader_read_timeout_secs = 2")
                .unwrap();
        let c = f.resolve(o.clone()).unwrap();
        assert_eq!(c.flood_limits.max_connections_per_ip, 7);
        assert_eq!(c.flood_limits.header_read_timeout, Duration::from_secs(2));
        let f: ConfigFile = toml::from_str("[limits]\nmax_connections = 0").unwrap();
        assert!(matches!(f.resolve(o.clone()), Err(ConfigError::Range(_))));
        assert!(toml::from_str::<ConfigFile>("[limits]\nmax_conns = 1").is_err());
    }

    #[test]
    fn unknown_keys_refused() {
        assert!(toml::from_str::<ConfigFile>("[server]\nlisten_addr = \"x\"").is_err());
        assert!(toml::from_str::<ConfigFile>("[nope]").is_err());
    }

    #[test]
    fn insecure_http_loopback_only() {
        let mut o = base();
        o.listen = Some("0.0.0.0:8080".into());
        o.insecure_http = true;
        assert!(matches!(
            ConfigFile::default().resolve(o.clone()),
            Err(ConfigError::NotLoopback(_))
        ));
        o.listen = Some("127.0.0.1:8080".into());
        assert_eq!(
            ConfigFile::default().resolve(o.clone()).unwrap().tls,
            TlsMode::InsecureHttp
        );
        o.listen = Some("[::1]:8080".into());
        assert!(ConfigFile::default().resolve(o).is_ok());
    }

    #[test]
    fn tls_required_and_overrides_win() {
        let mut o = base();
        o.listen = Some("127.0.0.1:1".into());
        assert!(matches!(
            ConfigFile::default().resolve(o.clone()),
            Err(ConfigError::Tls)
        ));
        let f: ConfigFile =
            toml::from_str("[server]\nlisten = \"127.0.0.1:2\"\ninsecure_http = true").unwrap();
        let c = f.resolve(o).unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.tls, TlsMode::InsecureHttp);
    }

    #[test]
    fn collateral_section_defaults_overrides_and_refusals() {
        let mut o = base();
        o.listen = Some("127.0.0.1:1".into());
        o.insecure_http = true;
        let c = ConfigFile::default().resolve(o.clone()).unwrap().collateral;
        assert_eq!(c.amd_kds_url, "https://kdsintf.amd.com");
        assert_eq!(c.intel_pcs_url, "https://api.trustedservices.intel.com");
        assert!(!c.offline && c.proxy.is_none() && c.attempts == 3);
        assert!(
            c.amd_crl_required,
            "a missing AMD CRL is refused by default"
        );
        let f: ConfigFile = toml::from_str(
            "[collateral]\namd_kds_url = \"http://kds.local\"\noffline = true\nattempts = 5\namd_crl_optional = true",
        )
        .unwrap();
        o.intel_pcs_url = Some("https://pccs.local:8081".into());
        o.collateral_proxy = Some("http://proxy:3128".into());
        let c = f.resolve(o.clone()).unwrap().collateral;
        assert_eq!(c.amd_kds_url, "http://kds.local");
        assert_eq!(c.intel_pcs_url, "https://pccs.local:8081");
        assert_eq!(c.proxy.as_deref(), Some("http://proxy:3128"));
        assert!(c.offline);
        assert!(!c.amd_crl_required);
        assert_eq!(c.attempts, 5);
        o.amd_kds_url = Some("file:///etc/passwd".into());
        assert!(matches!(
            ConfigFile::default().resolve(o.clone()),
            Err(ConfigError::Url("amd_kds_url", _))
        ));
        o.amd_kds_url = None;
        let f: ConfigFile = toml::from_str("[collateral]\nattempts = 0").unwrap();
        assert!(matches!(f.resolve(o.clone()), Err(ConfigError::Range(_))));
    }

    #[test]
    fn fetch_budgets_come_from_the_file_and_zero_or_inverted_budgets_are_refused() {
        let mut o = base();
        o.listen = Some("127.0.0.1:1".into());
        o.insecure_http = true;
        let c = ConfigFile::default().resolve(o.clone()).unwrap().collateral;
        assert_eq!(
            (c.fetch_budget_per_client, c.fetch_budget_global),
            (16, 256)
        );
        assert_eq!(c.fetch_budget_window, Duration::from_secs(60));
        let f: ConfigFile = toml::from_str(
            "[collateral]\nfetch_budget_per_client = 4\nfetch_budget_global = 40\nfetch_budget_window_secs = 600",
        )
        .unwrap();
        let c = f.resolve(o.clone()).unwrap().collateral;
        assert_eq!((c.fetch_budget_per_client, c.fetch_budget_global), (4, 40));
        assert_eq!(c.fetch_budget_window, Duration::from_secs(600));
        for (text, key) in [
            (
                "fetch_budget_per_client = 0",
                "collateral.fetch_budget_per_client",
            ),
            ("fetch_budget_global = 0", "collateral.fetch_budget_global"),
            (
                "fetch_budget_per_client = 50\nfetch_budget_global = 10",
                "collateral.fetch_budget_global",
            ),
            (
                "fetch_budget_window_secs = 0",
                "collateral.fetch_budget_window_secs",
            ),
        ] {
            let f: ConfigFile = toml::from_str(&format!("[collateral]\n{text}")).unwrap();
            match f.resolve(o.clone()) {
                Err(ConfigError::Range(k)) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
