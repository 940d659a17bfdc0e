//! `cvm-verifier identity`: the verifier's public identity that guests pin, read from
//! the database and master key (a trusted source, unlike anything relayed by a host).
//!
//! The identity is the token signing key ([`crate::crypto::token`]): guests take it
//! from the measured kernel command line `cvm.verifier_key=<base64url SEC1 point>` and
//! accept only releases it signed. On a fresh database the key is created here, as on
//! the first `serve` (race-free across replicas); `serve` then uses the same key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::crypto::master::MasterKey;
use crate::crypto::token::Identity;
use crate::db::Db;
use crate::store::sessions;

use super::output::{fail, runtime, Format};

/// `identity` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database path or URL.
    #[arg(long, env = "CVM_VERIFIER_DATABASE")]
    database: String,
    /// Master key file.
    #[arg(long, env = "CVM_VERIFIER_MASTER_KEY_FILE")]
    master_key_file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Format,
}

/// The identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The master key could not be loaded.
    #[error("cannot load the master key")]
    Key(#[source] crate::crypto::master::MasterKeyError),
    /// The database could not be opened.
    #[error("cannot open the database")]
    Db(#[source] crate::db::DbError),
    /// The signing key could not be opened.
    #[error("cannot open the token signing key")]
    SigningKey(#[source] sessions::SigningKeyError),
}

/// The identity of the verifier whose database is `database` under `master_key_file`.
pub async fn load(database: &str, master_key_file: &Path) -> Result<Identity, IdentityError> {
    let mk = MasterKey::load(master_key_file).map_err(IdentityError::Key)?;
    let db = Db::open(database).await.map_err(IdentityError::Db)?;
    let signer = sessions::signing_key(&db, &mk).await;
    db.close().await;
    Ok(signer.map_err(IdentityError::SigningKey)?.identity())
}

/// Runs `identity`. Exit 0: printed; 2: error.
pub fn run(args: Args) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    let id = match rt.block_on(load(&args.database, &args.master_key_file)) {
        Ok(id) => id,
        Err(e) => return fail(&e, 2),
    };
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&id).unwrap_or_default()),
        Format::Text => {
            println!("verifier key:   {}", id.verifier_key);
            println!("kernel cmdline: {}", id.cmdline);
            println!("jwk thumbprint: {}", id.jwk_thumbprint);
            println!("kid:            {}", id.kid);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `identity` reads the key `serve` signs with (created once, then stable), and a
    /// master key that does not open it is an error, not a new identity.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identity_is_the_serving_key() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("v.db").display().to_string();
        let mk_path = dir.path().join("master.key");
        MasterKey::generate().write_new(&mk_path).unwrap();
        let first = load(&db_path, &mk_path).await.unwrap();
        let again = load(&db_path, &mk_path).await.unwrap();
        assert_eq!(first, again);
        let db = Db::open(&db_path).await.unwrap();
        let signer = sessions::signing_key(&db, &MasterKey::load(&mk_path).unwrap())
            .await
            .unwrap();
        db.close().await;
        assert_eq!(signer.identity(), first);
        assert_eq!(
            first.cmdline,
            format!("cvm.verifier_key={}", first.verifier_key)
        );
        let other = dir.path().join("other.key");
        MasterKey::generate().write_new(&other).unwrap();
        assert!(matches!(
            load(&db_path, &other).await,
            Err(IdentityError::SigningKey(_))
        ));
    }
}
