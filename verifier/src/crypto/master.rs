//! The master key and envelope encryption of secrets at rest.
//!
//! Every secret the verifier stores (resource values, TOTP secrets, the token signing
//! key) is sealed with its own random 256-bit data key under AES-256-GCM, and the data
//! key is wrapped with the master key (AES-256-GCM as well). Both encryptions bind a
//! *context* string (for example `resource:repo/type/tag`) as associated data, so a
//! sealed value copied into another row does not open. Rotating the master key only
//! re-wraps the data keys ([`Sealed::rewrap`]); the values are never re-encrypted.
//!
//! Sealed layout (version 1): `0x01 | key id (8) | wrap nonce (12) | wrapped data key
//! (32 + 16 tag) | data nonce (12) | ciphertext + tag (16)`. The key id is the first 8
//! bytes of SHA-256 over the master key, so a database opened with the wrong key is
//! refused with a clear error rather than failing one value at a time.
//!
//! The master key comes from a file or from a KMS-style command. The file holds 32
//! bytes, raw or as 64 hex digits, and must not be readable or writable by group or
//! others (mode 0600 or stricter). The command (run with `sh -c`, no stdin, within
//! [`COMMAND_TIMEOUT`]) must print the key as 64 hex digits (or 32 raw bytes) on stdout
//! and exit 0 — for example a KMS or HSM client that unwraps it; its output is kept in
//! zeroized memory and never logged.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = 32 + TAG_LEN;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN + WRAPPED_LEN + NONCE_LEN;

/// How long a master-key command may run.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// A 0600 file.
    File(PathBuf),
    /// A command whose stdout is the key (KMS-style).
    Command(String),
}

/// Errors of the master key and of sealing.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The key file could not be read or created.
    #[error("cannot access the master key file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file is accessible to group or others.
    #[error("the master key file {} has mode {mode:o}; it must be 0600 or stricter", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The master-key command could not run, failed, timed out or printed no key.
    #[error("the master key command failed: {0}")]
    Command(String),
    /// The key file does not hold 32 bytes (raw or hex).
    #[error("the master key file {} must hold 32 bytes, raw or as 64 hex digits", path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// A sealed value is malformed.
    #[error("a sealed value is malformed")]
    Malformed,
    /// A sealed value was sealed under another master key.
    #[error(
        "a sealed value was sealed under master key {found}, not the configured key {expected}"
    )]
    WrongKey {
        /// The key id in the value.
        found: String,
        /// The configured key's id.
        expected: String,
    },
    /// Authentication of a sealed value failed (tampered, or bound to another context).
    #[error("a sealed value failed authentication")]
    Authentication,
}

/// The 256-bit master key (zeroized on drop, never printed), with the extra keys it
/// also accepts for opening values during a rotation ([`MasterKey::with_extra_keys`]).
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
    id: [u8; KEY_ID_LEN],
    extra: Vec<MasterKey>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id {}", self.id_hex())?;
        for k in &self.extra {
            write!(f, ", accepts {}", k.id_hex())?;
        }
        f.write_str(")")
    }
}

impl MasterKey {
    /// A master key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let key = Zeroizing::new(bytes);
        let digest = Sha256::digest(key.as_ref());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self {
            key,
            id,
            extra: Vec::new(),
        }
    }

    /// This key for sealing, and also `extra` keys for opening: what a replica runs
    /// with while the master key is rotated without downtime (see the crate README).
    /// Values are always sealed with `self`; a value opens with whichever key its key
    /// id names.
    pub fn with_extra_keys(mut self, extra: Vec<MasterKey>) -> Self {
        for mut k in extra {
            if k.id != self.id && !self.extra.iter().any(|e| e.id == k.id) {
                k.extra.clear();
                self.extra.push(k);
            }
        }
        self
    }

    /// The ids of every key this ring opens with, sealing key first.
    pub fn accepted_ids_hex(&self) -> Vec<String> {
        std::iter::once(self.id_hex())
            .chain(self.extra.iter().map(MasterKey::id_hex))
            .collect()
    }

    /// Whether `sealed` is sealed under this (sealing) key.
    pub fn sealed_with_this_key(&self, sealed: &[u8]) -> bool {
        Parts::parse(sealed).is_ok_and(|p| p.key_id == self.id)
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        Self::from_bytes(*bytes)
    }

    /// Loads the key from `path`, refusing files accessible to group or others.
    pub fn load(path: &Path) -> Result<Self, MasterKeyError> {
        let io = |source| MasterKeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(MasterKeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let raw = Zeroizing::new(std::fs::read(path).map_err(io)?);
        let format = || MasterKeyError::Format {
            path: path.to_owned(),
        };
        let mut key = Zeroizing::new([0u8; 32]);
        if raw.len() == 32 {
            key.copy_from_slice(&raw);
        } else {
            let text = std::str::from_utf8(&raw).map_err(|_| format())?.trim();
            hex::decode_to_slice(text, key.as_mut()).map_err(|_| format())?;
        }
        Ok(Self::from_bytes(*key))
    }

    /// Loads the key from `source`.
    pub fn from_source(source: &MasterKeySource) -> Result<Self, MasterKeyError> {
        match source {
            MasterKeySource::File(p) => Self::load(p),
            MasterKeySource::Command(c) => Self::from_command(c, COMMAND_TIMEOUT),
        }
    }

    /// Runs `command` with `sh -c` and reads the key from its stdout (64 hex digits or
    /// 32 raw bytes). The command is killed after `timeout`; at most 4 KiB of output
    /// is read. Nothing it prints is logged or put into an error message.
    pub fn from_command(
        command: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, MasterKeyError> {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let fail = |m: &str| MasterKeyError::Command(m.to_owned());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| MasterKeyError::Command(format!("cannot start it: {e}")))?;
        let mut stdout = child.stdout.take().ok_or_else(|| fail("no stdout"))?;
        let reader = std::thread::spawn(move || {
            let mut out = Zeroizing::new(Vec::new());
            let _ = stdout.by_ref().take(4096).read_to_end(&mut out);
            out
        });
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail("it did not finish in time and was killed"));
                }
                Err(e) => return Err(MasterKeyError::Command(format!("cannot wait for it: {e}"))),
            }
        };
        let out = reader
            .join()
            .map_err(|_| fail("its output could not be read"))?;
        if !status.success() {
            return Err(MasterKeyError::Command(format!("it exited with {status}")));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        if out.len() == 32 {
            key.copy_from_slice(&out);
        } else {
            let text = std::str::from_utf8(&out)
                .map_err(|_| fail("its output is not 32 bytes or 64 hex digits"))?
                .trim();
            hex::decode_to_slice(text, key.as_mut())
                .map_err(|_| fail("its output is not 32 bytes or 64 hex digits"))?;
        }
        Ok(Self::from_bytes(*key))
    }

    /// Writes the key as hex to a new file created with mode 0600.
    pub fn write_new(&self, path: &Path) -> Result<(), MasterKeyError> {
        let io = |source| MasterKeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut text = hex::encode(self.key.as_ref());
        text.push('\n');
        let res = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
        text.zeroize();
        res.map_err(io)
    }

    /// The key id: hex of the first 8 bytes of SHA-256(key).
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.key.as_ref().into())
    }

    /// Seals `plaintext` bound to `context` under a fresh data key.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Sealed, MasterKeyError> {
        let mut dek = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(dek.as_mut());
        let mut wrap_nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut wrap_nonce);
        let mut data_nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut data_nonce);
        let wrapped = self
            .cipher()
            .encrypt(
                &Nonce::from(wrap_nonce),
                Payload {
                    msg: dek.as_ref(),
                    aad: &wrap_aad(context),
                },
            )
            .map_err(|_| MasterKeyError::Authentication)?;
        let data_cipher = Aes256Gcm::new(dek.as_ref().into());
        let ct = data_cipher
            .encrypt(
                &Nonce::from(data_nonce),
                Payload {
                    msg: plaintext,
                    aad: &data_aad(context),
                },
            )
            .map_err(|_| MasterKeyError::Authentication)?;
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&wrap_nonce);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&data_nonce);
        out.extend_from_slice(&ct);
        Ok(Sealed(out))
    }

    /// Parses `sealed` and picks the key of the ring its key id names.
    fn check_header<'a>(
        &self,
        sealed: &'a [u8],
    ) -> Result<(&MasterKey, Parts<'a>), MasterKeyError> {
        let p = Parts::parse(sealed)?;
        let key = std::iter::once(self)
            .chain(self.extra.iter())
            .find(|k| k.id == p.key_id)
            .ok_or_else(|| MasterKeyError::WrongKey {
                found: hex::encode(p.key_id),
                expected: self.accepted_ids_hex().join(" or "),
            })?;
        Ok((key, p))
    }

    fn unwrap_dek(
        &self,
        p: &Parts<'_>,
        context: &str,
    ) -> Result<Zeroizing<Vec<u8>>, MasterKeyError> {
        self.cipher()
            .decrypt(
                &nonce(p.wrap_nonce)?,
                Payload {
                    msg: p.wrapped,
                    aad: &wrap_aad(context),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| MasterKeyError::Authentication)
    }

    /// Opens a value sealed with [`MasterKey::seal`] under the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, MasterKeyError> {
        let (key, p) = self.check_header(sealed)?;
        let dek = key.unwrap_dek(&p, context)?;
        if dek.len() != 32 {
            return Err(MasterKeyError::Malformed);
        }
        let data_cipher = Aes256Gcm::new(dek.as_slice().into());
        data_cipher
            .decrypt(
                &nonce(p.data_nonce)?,
                Payload {
                    msg: p.ciphertext,
                    aad: &data_aad(context),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| MasterKeyError::Authentication)
    }

    /// The key id recorded in a sealed value.
    pub fn key_id_of(sealed: &[u8]) -> Result<String, MasterKeyError> {
        Parts::parse(sealed).map(|p| hex::encode(p.key_id))
    }
}

/// A sealed secret (the bytes stored in the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl Sealed {
    /// Re-wraps the data key of `sealed` from `old` to `new`; the ciphertext is kept.
    pub fn rewrap(
        sealed: &[u8],
        context: &str,
        old: &MasterKey,
        new: &MasterKey,
    ) -> Result<Sealed, MasterKeyError> {
        let (key, p) = old.check_header(sealed)?;
        let dek = key.unwrap_dek(&p, context)?;
        let mut wrap_nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut wrap_nonce);
        let wrapped = new
            .cipher()
            .encrypt(
                &Nonce::from(wrap_nonce),
                Payload {
                    msg: dek.as_slice(),
                    aad: &wrap_aad(context),
                },
            )
            .map_err(|_| MasterKeyError::Authentication)?;
        let mut out = Vec::with_capacity(sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&new.id);
        out.extend_from_slice(&wrap_nonce);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(p.data_nonce);
        out.extend_from_slice(p.ciphertext);
        Ok(Sealed(out))
    }
}

struct Parts<'a> {
    key_id: &'a [u8],
    wrap_nonce: &'a [u8],
    wrapped: &'a [u8],
    data_nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Parts<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, MasterKeyError> {
        if b.len() < HEADER_LEN + TAG_LEN || b.first() != Some(&VERSION) {
            return Err(MasterKeyError::Malformed);
        }
        let (_, rest) = b.split_at(1);
        let (key_id, rest) = rest.split_at(KEY_ID_LEN);
        let (wrap_nonce, rest) = rest.split_at(NONCE_LEN);
        let (wrapped, rest) = rest.split_at(WRAPPED_LEN);
        let (data_nonce, ciphertext) = rest.split_at(NONCE_LEN);
        Ok(Self {
            key_id,
            wrap_nonce,
            wrapped,
            data_nonce,
            ciphertext,
        })
    }
}

fn nonce(b: &[u8]) -> Result<Nonce<aes_gcm::aead::consts::U12>, MasterKeyError> {
    let a: [u8; NONCE_LEN] = b.try_into().map_err(|_| MasterKeyError::Malformed)?;
    Ok(Nonce::from(a))
}

fn wrap_aad(context: &str) -> Vec<u8> {
    format!("cvm-verifier/dek/v1|{context}").into_bytes()
}

fn data_aad(context: &str) -> Vec<u8> {
    format!("cvm-verifier/data/v1|{context}").into_bytes()
}

#[cfg(test)]
mod command_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_command_can_supply_the_key() {
        let hexkey = "11".repeat(32);
        let k =
            MasterKey::from_command(&format!("printf '%s\\n' {hexkey}"), Duration::from_secs(10))
                .unwrap();
        assert_eq!(k.id_hex(), MasterKey::from_bytes([0x11; 32]).id_hex());
        let src = MasterKeySource::Command(format!("echo {hexkey}"));
        assert_eq!(MasterKey::from_source(&src).unwrap().id_hex(), k.id_hex());
    }

    #[test]
    fn failing_slow_or_wrong_commands_are_refused_without_echoing_output() {
        for (cmd, needle) in [
            ("exit 3", "exited"),
            ("echo abc", "64 hex digits"),
            ("echo secret-ish-text; exit 0", "64 hex digits"),
            ("sleep 5", "did not finish"),
        ] {
            let e = MasterKey::from_command(cmd, Duration::from_millis(300))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{cmd}: {e}");
            assert!(!e.contains("secret-ish"), "output must not be echoed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyring_opens_with_any_key_and_seals_with_the_first() {
        let old = MasterKey::from_bytes([1; 32]);
        let new = MasterKey::from_bytes([2; 32]);
        let under_old = old.seal("ctx", b"old secret").unwrap();
        let ring =
            MasterKey::from_bytes([2; 32]).with_extra_keys(vec![MasterKey::from_bytes([1; 32])]);
        assert_eq!(
            ring.open("ctx", &under_old.0).unwrap().as_slice(),
            b"old secret"
        );
        let under_ring = ring.seal("ctx", b"new secret").unwrap();
        assert!(new.sealed_with_this_key(&under_ring.0));
        assert!(!old.sealed_with_this_key(&under_ring.0));
        assert_eq!(
            new.open("ctx", &under_ring.0).unwrap().as_slice(),
            b"new secret"
        );
        // Without the old key the old value is refused, naming the accepted ids.
        let err = new.open("ctx", &under_old.0).unwrap_err().to_string();
        assert!(
            err.contains(&old.id_hex()) && err.contains(&new.id_hex()),
            "{err}"
        );
        // The extra key never opens a value bound to another context.
        assert!(ring.open("other", &under_old.0).is_err());
        // Duplicates and the sealing key itself are not added twice.
        let dup = MasterKey::from_bytes([2; 32]).with_extra_keys(vec![
            MasterKey::from_bytes([2; 32]),
            MasterKey::from_bytes([1; 32]),
            MasterKey::from_bytes([1; 32]),
        ]);
        assert_eq!(dup.accepted_ids_hex(), vec![new.id_hex(), old.id_hex()]);
        assert!(format!("{dup:?}").contains("accepts"));
    }

    #[test]
    fn seal_open_roundtrip_and_context_binding() {
        let k = MasterKey::generate();
        let s = k.seal("resource:a/b/c", b"secret").unwrap();
        assert_eq!(
            k.open("resource:a/b/c", &s.0).unwrap().as_slice(),
            b"secret"
        );
        assert!(matches!(
            k.open("resource:a/b/d", &s.0),
            Err(MasterKeyError::Authentication)
        ));
        let mut t = s.0.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(matches!(
            k.open("resource:a/b/c", &t),
            Err(MasterKeyError::Authentication)
        ));
        assert!(matches!(
            k.open("x", &t[..10]),
            Err(MasterKeyError::Malformed)
        ));
    }

    #[test]
    fn rewrap_moves_to_new_key() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let s = old.seal("c", b"value").unwrap();
        let r = Sealed::rewrap(&s.0, "c", &old, &new).unwrap();
        assert_eq!(new.open("c", &r.0).unwrap().as_slice(), b"value");
        assert!(matches!(
            old.open("c", &r.0),
            Err(MasterKeyError::WrongKey { .. })
        ));
        // The ciphertext part is unchanged.
        assert_eq!(s.0[HEADER_LEN..], r.0[HEADER_LEN..]);
    }

    #[test]
    fn key_file_permissions_enforced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mk");
        let k = MasterKey::generate();
        k.write_new(&p).unwrap();
        assert_eq!(MasterKey::load(&p).unwrap().id_hex(), k.id_hex());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            MasterKey::load(&p),
            Err(MasterKeyError::Permissions { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "zz").unwrap();
        assert!(matches!(
            MasterKey::load(&p),
            Err(MasterKeyError::Format { .. })
        ));
    }
}
