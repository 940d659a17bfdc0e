//! `cvm-verifier admin …`: bootstrap and key maintenance directly on the database, and
//! every other operation through the admin API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::client::admin::AdminClient;
use crate::client::http_client;
use crate::crypto::master::MasterKey;
use crate::db::Db;
use crate::store::audit::{self, AuditEvent, AuditKind};
use crate::store::users::{self, Role};
use crate::store::{rotate_master_key, sessions};

use super::admin_input::{self as check, InputError, PinRtmrs};
use super::output::{fail, print_value, runtime, Format};

/// How to reach and authenticate to the admin API.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Verifier base URL, e.g. https://verifier:8443 (old names: --verifier, --kbs).
    #[arg(
        long,
        env = "CVM_VERIFIER_URL",
        global = true,
        visible_alias = "verifier",
        alias = "kbs"
    )]
    pub url: Option<String>,
    /// API token (prefer the environment variable or --token-file).
    #[arg(
        long,
        env = "CVM_VERIFIER_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// File holding the API token.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// The current TOTP code (admin role).
    #[arg(long, env = "CVM_VERIFIER_TOTP", hide_env_values = true, global = true)]
    pub totp: Option<String>,
    /// File holding the base32 TOTP secret, to compute the current code.
    #[arg(long, global = true)]
    pub totp_secret_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for HTTPS (old names: --verifier-ca,
    /// --kbs-ca).
    #[arg(long, global = true, alias = "verifier-ca", alias = "kbs-ca")]
    pub ca_cert: Option<PathBuf>,
    /// Output format of the results (times in RFC 3339 in both).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub output: Format,
}

/// `admin` with its connection options.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: Command,
}

/// `admin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the first admin directly in the database (refused if any user exists).
    Bootstrap {
        /// Database path or URL.
        #[arg(long, env = "CVM_VERIFIER_DATABASE")]
        database: String,
        /// Master key file.
        #[arg(long, env = "CVM_VERIFIER_MASTER_KEY_FILE")]
        master_key_file: PathBuf,
        /// The admin's name.
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// Write a new random master key to FILE (created with mode 0600).
    GenMasterKey {
        /// The new file.
        file: PathBuf,
    },
    /// Re-wrap every sealed value from the current master key to a new one.
    RotateMasterKey {
        /// Database path or URL.
        #[arg(long, env = "CVM_VERIFIER_DATABASE")]
        database: String,
        /// The current master key file.
        #[arg(long)]
        master_key_file: PathBuf,
        /// The new master key file.
        #[arg(long)]
        new_master_key_file: PathBuf,
    },
    /// Show the authenticated user.
    Whoami,
    /// Manage users (admin).
    #[command(subcommand)]
    User(UserCmd),
    /// Manage workloads (admin, operator).
    #[command(subcommand)]
    Workload(WorkloadCmd),
    /// Manage resources (admin, operator).
    #[command(subcommand)]
    Resource(ResourceCmd),
    /// Attested guests (read: all roles; revoke: admin, operator).
    #[command(subcommand)]
    Guest(GuestCmd),
    /// Read the audit log (admin, auditor).
    AuditLog {
        /// Only records at or after this time (RFC 3339 or Unix seconds).
        #[arg(long, value_name = "TIME", value_parser = cli_support::units::parse_time)]
        since: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

/// `admin user`.
#[derive(Debug, clap::Subcommand)]
pub enum UserCmd {
    /// List users.
    List,
    /// Create a user; prints its token (and TOTP secret for admins) once.
    Add {
        /// Name.
        name: String,
        /// Role: admin, operator or auditor.
        #[arg(long)]
        role: String,
    },
    /// Delete a user.
    Remove {
        /// Name.
        name: String,
    },
}

/// `admin workload`.
#[derive(Debug, clap::Subcommand)]
pub enum WorkloadCmd {
    /// List workloads.
    List,
    /// Show one workload.
    Show {
        /// Name.
        name: String,
    },
    /// Create or replace a workload (granting resources needs an admin).
    Put {
        /// Name.
        name: String,
        /// The TEE whose guests the workload accepts (required unless --from-measure
        /// names it; a file that names another TEE is refused).
        #[arg(long, value_parser = ["snp", "tdx"])]
        tee: Option<String>,
        /// Register what `cvm measure … --output json` printed (FILE, or `-` for
        /// standard input): its TEE and measurement (SNP MEASUREMENT or TDX MRTD), and
        /// for TDX the RTMRs chosen by --pin-rtmrs.
        #[arg(long, value_name = "FILE")]
        from_measure: Option<PathBuf>,
        /// TDX with --from-measure: which measured RTMRs become expected values.
        #[arg(long, value_enum, default_value = "all", requires = "from_measure")]
        pin_rtmrs: PinRtmrs,
        /// Policy file (TOML or JSON, attestation::policy::Policy).
        #[arg(long)]
        policy_file: Option<PathBuf>,
        /// Allowed measurement (hex, repeatable; added to the policy's list).
        #[arg(long = "measurement")]
        measurements: Vec<String>,
        /// Granted resource path repo/type/tag (repeatable).
        #[arg(long = "resource")]
        resources: Vec<String>,
    },
    /// Delete a workload.
    Remove {
        /// Name.
        name: String,
    },
    /// Allow a measurement.
    AddMeasurement {
        /// Name.
        name: String,
        /// Measurement, hex.
        measurement: String,
    },
    /// Disallow a measurement.
    RemoveMeasurement {
        /// Name.
        name: String,
        /// Measurement, hex.
        measurement: String,
    },
    /// Revoke (or with --restore, restore) a workload's grants.
    Revoke {
        /// Name.
        name: String,
        /// Restore instead.
        #[arg(long)]
        restore: bool,
    },
}

/// `admin resource`.
#[derive(Debug, clap::Subcommand)]
pub enum ResourceCmd {
    /// List resources (metadata only).
    List,
    /// Store a resource value read from a file.
    Put {
        /// repo/type/tag.
        path: String,
        /// File with the value.
        #[arg(long)]
        value_file: PathBuf,
    },
    /// Delete a resource.
    Remove {
        /// repo/type/tag.
        path: String,
    },
}

/// `admin guest`.
#[derive(Debug, clap::Subcommand)]
pub enum GuestCmd {
    /// List attested guests.
    List {
        /// Only guests not seen for this long (`90s`, `30m`, `7d`; plain: seconds).
        #[arg(long, value_name = "DURATION", value_parser = cli_support::units::parse_duration)]
        stale: Option<u64>,
    },
    /// Revoke (or restore) one guest's grants.
    Revoke {
        /// Inventory id.
        id: String,
        /// Restore instead.
        #[arg(long)]
        restore: bool,
    },
}

/// Errors of the admin CLI.
#[derive(Debug, thiserror::Error)]
pub enum AdminCliError {
    /// A required option is missing.
    #[error("{0}")]
    Usage(String),
    /// A policy file is invalid.
    #[error("--policy-file: the file is neither a valid TOML nor a valid JSON policy: {0}")]
    Policy(String),
    /// The database already has users.
    #[error("the database already has users; bootstrap is refused")]
    AlreadyBootstrapped,
    /// An API call failed.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] crate::crypto::master::MasterKeyError),
    /// The signing key could not be opened.
    #[error(transparent)]
    SigningKey(#[from] crate::store::sessions::SigningKeyError),
    /// User creation failed.
    #[error(transparent)]
    User(#[from] crate::store::users::UserError),
    /// Rotation failed.
    #[error(transparent)]
    Rotate(#[from] crate::store::RotateError),
    /// Bad input (refused before sending), or a failure explained by its flag.
    #[error(transparent)]
    Input(#[from] InputError),
}

/// Runs an `admin` subcommand. Exit 0: done; 1: refused by the server or the
/// database state; 2: usage or I/O error.
pub fn run(args: Args) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    match rt.block_on(dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            e @ (AdminCliError::AlreadyBootstrapped
            | AdminCliError::Client(crate::client::ClientError::Status { .. })),
        ) => fail(&e, 1),
        Err(AdminCliError::Input(e)) if e.is_refusal() => fail(&e, 1),
        Err(e) => fail(&e, 2),
    }
}

async fn dispatch(args: Args) -> Result<(), AdminCliError> {
    match args.cmd {
        Command::Bootstrap {
            database,
            master_key_file,
            name,
        } => bootstrap(&database, &master_key_file, &name, args.conn.output).await,
        Command::GenMasterKey { file } => {
            let k = MasterKey::generate();
            k.write_new(&file)?;
            match args.conn.output {
                Format::Text => {
                    println!("master key {} written to {}", k.id_hex(), file.display())
                }
                Format::Json => print_value(
                    json!({"master_key_id": k.id_hex(), "file": file.display().to_string()}),
                    Format::Json,
                ),
            }
            Ok(())
        }
        Command::RotateMasterKey {
            database,
            master_key_file,
            new_master_key_file,
        } => {
            let old = MasterKey::load(&master_key_file)?;
            let new = MasterKey::load(&new_master_key_file)?;
            let db = Db::connect_existing(&database).await?;
            let n = rotate_master_key(&db, &old, &new).await?;
            match args.conn.output {
                Format::Text => println!(
                    "re-wrapped {n} values from master key {} to {}",
                    old.id_hex(),
                    new.id_hex()
                ),
                Format::Json => print_value(
                    json!({"rewrapped": n, "from": old.id_hex(), "to": new.id_hex()}),
                    Format::Json,
                ),
            }
            Ok(())
        }
        cmd => api(&args.conn, cmd).await,
    }
}

async fn bootstrap(
    database: &str,
    mk_file: &std::path::Path,
    name: &str,
    output: Format,
) -> Result<(), AdminCliError> {
    let mk = MasterKey::load(mk_file)?;
    let db = Db::open(database).await?;
    // Creates the token key on a fresh database; refuses a database sealed under another key.
    sessions::signing_key(&db, &mk).await?;
    let mut tx = db.begin().await?;
    if users::count(&mut tx).await? > 0 {
        return Err(AdminCliError::AlreadyBootstrapped);
    }
    let creds = users::create(&mut tx, &mk, name, Role::Admin).await?;
    audit::append(
        &mut tx,
        &AuditEvent {
            kind: AuditKind::Maintenance,
            actor: "system".into(),
            client: "-".into(),
            subject: format!("user:{name}"),
            outcome: "bootstrapped".into(),
            detail: json!({"role": "admin"}),
        },
    )
    .await?;
    tx.commit().await.map_err(crate::db::DbError::from)?;
    match output {
        Format::Json => print_value(
            serde_json::to_value(&creds).unwrap_or_default(),
            Format::Json,
        ),
        Format::Text => {
            println!("admin user: {}", creds.user.name);
            println!("token: {}", creds.token.as_str());
            if let (Some(s), Some(u)) = (&creds.totp_secret, &creds.otpauth_uri) {
                println!("totp secret: {}", s.as_str());
                println!("otpauth uri: {}", u.as_str());
            }
            println!("Store these now: they are not shown again.");
        }
    }
    Ok(())
}

fn read_secret(flag: &'static str, path: &Path) -> Result<Zeroizing<String>, AdminCliError> {
    let bytes = Zeroizing::new(check::read_file(flag, path, false)?);
    let text = std::str::from_utf8(&bytes).map_err(|_| InputError::Read {
        flag,
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// One API request, checked and built before anything is sent.
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
}

impl Call {
    fn new(method: Method, path: impl Into<String>, body: Option<Value>) -> Self {
        Self {
            method,
            path: path.into(),
            body,
        }
    }
}

/// Checks the input of an API subcommand and builds its request (exit 2 on bad input,
/// naming the flag; nothing is sent).
fn build(cmd: Command) -> Result<Call, AdminCliError> {
    use Method as M;
    Ok(match cmd {
        Command::Whoami => Call::new(M::GET, "/admin/v1/whoami", None),
        Command::User(UserCmd::List) => Call::new(M::GET, "/admin/v1/users", None),
        Command::User(UserCmd::Add { name, role }) => {
            check::user_name(&name)?;
            check::role(&role)?;
            Call::new(
                M::POST,
                "/admin/v1/users",
                Some(json!({"name": name, "role": role})),
            )
        }
        Command::User(UserCmd::Remove { name }) => {
            check::user_name(&name)?;
            Call::new(M::DELETE, format!("/admin/v1/users/{name}"), None)
        }
        Command::Workload(WorkloadCmd::List) => Call::new(M::GET, "/admin/v1/workloads", None),
        Command::Workload(WorkloadCmd::Show { name }) => {
            check::name("workload name", &name)?;
            Call::new(M::GET, format!("/admin/v1/workloads/{name}"), None)
        }
        Command::Workload(WorkloadCmd::Put {
            name,
            tee,
            from_measure,
            pin_rtmrs,
            policy_file,
            measurements,
            resources,
        }) => {
            check::name("workload name", &name)?;
            let measurements = measurements
                .iter()
                .map(|m| check::measurement("--measurement", m))
                .collect::<Result<Vec<_>, _>>()?;
            for r in &resources {
                check::resource_path("--resource", r)?;
            }
            let measured = match &from_measure {
                Some(f) => Some(check::parse_measure(&check::read_file(
                    "--from-measure",
                    f,
                    true,
                )?)?),
                None => None,
            };
            let tee = match (tee, &measured) {
                (Some(t), Some(m)) if t != m.tee => {
                    return Err(InputError::TeeMismatch {
                        file: m.tee.clone(),
                        flag: t,
                    }
                    .into())
                }
                (Some(t), _) => t,
                (None, Some(m)) => m.tee.clone(),
                (None, None) => return Err(InputError::NoTee.into()),
            };
            let mut policy = match policy_file {
                Some(f) => load_policy(&f)?,
                None => json!({}),
            };
            if let Some(m) = &measured {
                check::apply_measure(&mut policy, m, pin_rtmrs)?;
            }
            for m in &measurements {
                check::push_measurement(&mut policy, m);
            }
            Call::new(
                M::PUT,
                format!("/admin/v1/workloads/{name}"),
                Some(json!({"tee": tee, "policy": policy, "resources": resources})),
            )
        }
        Command::Workload(WorkloadCmd::Remove { name }) => {
            check::name("workload name", &name)?;
            Call::new(M::DELETE, format!("/admin/v1/workloads/{name}"), None)
        }
        Command::Workload(WorkloadCmd::AddMeasurement { name, measurement }) => {
            check::name("workload name", &name)?;
            let m = check::measurement("MEASUREMENT", &measurement)?;
            Call::new(
                M::POST,
                format!("/admin/v1/workloads/{name}/measurements"),
                Some(json!({"measurement": m})),
            )
        }
        Command::Workload(WorkloadCmd::RemoveMeasurement { name, measurement }) => {
            check::name("workload name", &name)?;
            let m = check::measurement("MEASUREMENT", &measurement)?;
            Call::new(
                M::DELETE,
                format!("/admin/v1/workloads/{name}/measurements/{m}"),
                None,
            )
        }
        Command::Workload(WorkloadCmd::Revoke { name, restore }) => {
            check::name("workload name", &name)?;
            Call::new(
                M::PUT,
                format!("/admin/v1/workloads/{name}/revocation"),
                Some(json!({"revoked": !restore})),
            )
        }
        Command::Resource(ResourceCmd::List) => Call::new(M::GET, "/admin/v1/resources", None),
        Command::Resource(ResourceCmd::Put { path, value_file }) => {
            check::resource_path("PATH", &path)?;
            let value = Zeroizing::new(check::read_file("--value-file", &value_file, false)?);
            let body = json!({"value": base64::engine::general_purpose::STANDARD.encode(value.as_slice())});
            Call::new(M::PUT, format!("/admin/v1/resources/{path}"), Some(body))
        }
        Command::Resource(ResourceCmd::Remove { path }) => {
            check::resource_path("PATH", &path)?;
            Call::new(M::DELETE, format!("/admin/v1/resources/{path}"), None)
        }
        Command::Guest(GuestCmd::List { stale }) => {
            let q = stale.map(|s| format!("?stale={s}")).unwrap_or_default();
            Call::new(M::GET, format!("/admin/v1/inventory{q}"), None)
        }
        Command::Guest(GuestCmd::Revoke { id, restore }) => {
            check::name("guest id", &id)?;
            Call::new(
                M::PUT,
                format!("/admin/v1/inventory/{id}/revocation"),
                Some(json!({"revoked": !restore})),
            )
        }
        Command::AuditLog { since, limit } => {
            let q = format!(
                "?limit={limit}{}",
                since.map(|s| format!("&since={s}")).unwrap_or_default()
            );
            Call::new(M::GET, format!("/admin/v1/audit{q}"), None)
        }
        Command::Bootstrap { .. }
        | Command::GenMasterKey { .. }
        | Command::RotateMasterKey { .. } => {
            return Err(AdminCliError::Usage("not an API subcommand".into()))
        }
    })
}

async fn api(conn: &Conn, cmd: Command) -> Result<(), AdminCliError> {
    // Everything is checked before the first byte is sent.
    let url = conn
        .url
        .clone()
        .ok_or_else(|| AdminCliError::Usage("--url (or CVM_VERIFIER_URL) is required".into()))?;
    check::url(&url)?;
    let token = match (&conn.token, &conn.token_file) {
        (Some(t), _) => Zeroizing::new(t.clone()),
        (None, Some(f)) => read_secret("--token-file", f)?,
        (None, None) => {
            return Err(AdminCliError::Usage(
                "--token, --token-file or CVM_VERIFIER_TOKEN is required".into(),
            ))
        }
    };
    let totp = match (&conn.totp, &conn.totp_secret_file) {
        (Some(c), _) => {
            check::totp_code(c)?;
            Some(Totp::Code(Zeroizing::new(c.clone())))
        }
        (None, Some(f)) => {
            let secret = read_secret("--totp-secret-file", f)?;
            check::totp_secret(f, &secret)?;
            Some(Totp::Secret(secret))
        }
        (None, None) => None,
    };
    if let Some(ca) = &conn.ca_cert {
        check::read_file("--ca-cert", ca, false)?;
    }
    let call = build(cmd)?;
    let http = http_client(conn.ca_cert.as_deref())?;
    let client = match totp {
        Some(Totp::Code(c)) => AdminClient::new(http, &url, token, Some(c)),
        Some(Totp::Secret(s)) => AdminClient::with_totp_secret(http, &url, token, s),
        None => AdminClient::new(http, &url, token, None),
    };
    let v = client
        .call(call.method, &call.path, call.body.as_ref())
        .await
        .map_err(|e| match check::explain(&url, e) {
            Ok(explained) => AdminCliError::Input(explained),
            Err(e) => AdminCliError::Client(e),
        })?;
    print_value(v, conn.output);
    Ok(())
}

/// Where the TOTP code comes from.
enum Totp {
    Code(Zeroizing<String>),
    Secret(Zeroizing<String>),
}

fn load_policy(path: &Path) -> Result<Value, AdminCliError> {
    let bytes = check::read_file("--policy-file", path, false)?;
    let text = String::from_utf8_lossy(&bytes);
    let policy: attestation::policy::Policy = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(_) => toml::from_str(&text).map_err(|e| AdminCliError::Policy(e.to_string()))?,
    };
    serde_json::to_value(policy).map_err(|e| AdminCliError::Policy(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sample_policy_parses_and_fails_closed() {
        let p: attestation::policy::Policy =
            toml::from_str(include_str!("../../policy.sample.toml")).expect("sample parses");
        assert_eq!(p.measurements.len(), 1);
        assert_eq!(p.measurements[0].len(), 48);
        assert!(!p.allow_any_measurement && !p.allow_emulated && !p.allow_debug);
        assert_eq!(p.snp.vmpl, Some(0));
        assert_eq!(p.snp.min_tcb.map(|m| m.snp), Some(24));
    }
}
