//! `cvm image disk`: an encrypted LUKS2 disk image for a guest, and its random key file.
//!
//! The image is a LUKS2 volume that stock `cryptsetup` opens (aes-xts-plain64 with a
//! 512-bit key, 4096-byte sectors, one PBKDF2-SHA-256 keyslot, data at 16 MiB), written
//! by the `luks` crate without dm-crypt. The key file holds 64 random bytes from the OS
//! RNG; it is created with mode 0600 and never overwrites an existing file.
//!
//! # Payload formats
//!
//! What a guest finds at plaintext byte 0 of the encrypted segment:
//!
//! - `--message TEXT`: the UTF-8 bytes of `TEXT` followed by one NUL byte (`TEXT` must not
//!   contain NUL). Everything after the NUL is unspecified: sectors never written decrypt
//!   to pseudo-random bytes, so readers stop at the first NUL. The demo and the test guest
//!   read this format.
//! - `--from-file FILE`: the file's bytes, zero-padded to the end of the last 4096-byte
//!   sector they touch. The length is not recorded: the consumer knows its format (for
//!   example a file-system image).
//! - `--from-dir DIR`: an ext4 file system filling the whole payload, made by
//!   `mkfs.ext4 -d DIR` (e2fsprogs 1.43 or later) on a temporary plain file next to `--out`
//!   (no loop device, no root), then encrypted into the segment. The guest sees the
//!   decrypted segment as an ext4 block device.
//! - none of these: nothing is written; the whole payload decrypts to pseudo-random bytes.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Keyslot KDF choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KdfArg {
    /// PBKDF2-SHA-256 at 1000 iterations: right for a random 64-byte key, cheap to unlock.
    Pbkdf2,
    /// Argon2id (4 passes, 64 MiB, 1 lane): slower to unlock, for keys that might be reused
    /// as passphrases.
    Argon2id,
}

/// `cvm image disk`.
#[derive(Debug, clap::Args)]
pub struct DiskArgs {
    /// Payload size in bytes, or with a K, M or G suffix (powers of 1024); a multiple of
    /// 4096. The image file is 16 MiB larger (LUKS2 headers and keyslots).
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// The disk image to create (must not exist, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// The key file to create, mode 0600 (must not exist, unless --force).
    #[arg(long)]
    pub key_out: PathBuf,
    /// Replace --out and --key-out if they exist.
    #[arg(long)]
    pub force: bool,
    /// `text` or `json` (what was created, on standard output).
    #[arg(long, visible_alias = "output-format", value_enum, default_value_t)]
    pub output: cli_support::Output,
    /// Copy this file's bytes to payload offset 0.
    #[arg(long, conflicts_with = "message")]
    pub from_file: Option<PathBuf>,
    /// Fill the payload with an ext4 file system holding this directory's contents.
    #[arg(long, conflicts_with_all = ["message", "from_file"])]
    pub from_dir: Option<PathBuf>,
    /// Write this text, NUL-terminated, at payload offset 0.
    #[arg(long)]
    pub message: Option<String>,
    /// Keyslot key derivation function.
    #[arg(long, value_enum, default_value = "pbkdf2")]
    pub kdf: KdfArg,
}

/// Why `cvm image disk` failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The output file already exists.
    #[error(transparent)]
    Exists(#[from] cli_support::output::Exists),
    /// An existing output could not be removed for --force.
    #[error("cannot replace {0}")]
    Replace(PathBuf, #[source] std::io::Error),
    /// The key file could not be created or written.
    #[error("cannot create the key file {0}")]
    KeyFile(PathBuf, #[source] std::io::Error),
    /// The `--from-file` input could not be read.
    #[error("cannot read {0}")]
    Input(PathBuf, #[source] std::io::Error),
    /// The payload does not fit.
    #[error("the payload ({len} bytes) does not fit in --size {size}")]
    TooLarge {
        /// Payload bytes (with the NUL of a message).
        len: u64,
        /// `--size`.
        size: u64,
    },
    /// `mkfs.ext4` could not be run.
    #[error("cannot run mkfs.ext4 (package e2fsprogs)")]
    MkfsSpawn(#[source] std::io::Error),
    /// `mkfs.ext4` failed; its standard error output.
    #[error("mkfs.ext4 failed: {0}")]
    Mkfs(String),
    /// The message contains a NUL byte.
    #[error("--message must not contain a NUL byte")]
    NulInMessage,
    /// Creating or writing the volume failed.
    #[error("cannot write the LUKS2 image")]
    Luks(#[from] luks::WriteError),
}

impl cli_support::ExitClass for ImageError {
    fn exit_code(&self) -> u8 {
        match self {
            // The operator's inputs: a file that exists, an unreadable source, a payload
            // that cannot fit, a bad --message.
            ImageError::Exists(_)
            | ImageError::Input(..)
            | ImageError::TooLarge { .. }
            | ImageError::NulInMessage => cli_support::EXIT_USAGE,
            // The work itself failed.
            ImageError::KeyFile(..)
            | ImageError::Replace(..)
            | ImageError::MkfsSpawn(_)
            | ImageError::Mkfs(_)
            | ImageError::Luks(_) => cli_support::EXIT_FAILURE,
        }
    }
}

/// What was created.
#[derive(Debug)]
pub struct Created {
    /// The image.
    pub image: PathBuf,
    /// The key file.
    pub key_file: PathBuf,
    /// Payload bytes written.
    pub payload_written: u64,
    /// Payload capacity.
    pub payload_size: u64,
}

/// Parses `123`, `64K`, `16M`, `1G` (powers of 1024; `KiB`-style suffixes also accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let v = cli_support::units::parse_size(s).map_err(|e| e.to_string())?;
    if v == 0 || v % 4096 != 0 {
        return Err(format!(
            "size {s:?} must be a non-zero multiple of 4096 bytes (for example 64M)"
        ));
    }
    Ok(v)
}

/// Creates the key file and the image, then writes the payload. On failure, removes the
/// files it created.
pub fn create_disk(args: &DiskArgs) -> Result<Created, ImageError> {
    // Check everything that can be checked before creating files.
    for p in [&args.out, &args.key_out] {
        cli_support::check_overwrite(p, args.force)?;
    }
    let payload_len = match (&args.message, &args.from_file) {
        (Some(m), _) => {
            if m.contains('\0') {
                return Err(ImageError::NulInMessage);
            }
            m.len() as u64 + 1
        }
        (None, Some(f)) => std::fs::metadata(f)
            .map_err(|e| ImageError::Input(f.clone(), e))?
            .len(),
        (None, None) => 0,
    };
    if let Some(d) = &args.from_dir {
        if !d.is_dir() {
            return Err(ImageError::Input(
                d.clone(),
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
    }
    if payload_len > args.size {
        return Err(ImageError::TooLarge {
            len: payload_len,
            size: args.size,
        });
    }
    if args.force {
        for p in [&args.out, &args.key_out] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ImageError::Replace(p.clone(), e))
                }
                _ => {}
            }
        }
    }

    let key = luks::random_key();
    let mut kf = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.key_out)
        .map_err(|e| ImageError::KeyFile(args.key_out.clone(), e))?;
    let r = kf
        .write_all(&key[..])
        .and_then(|()| kf.sync_all())
        .map_err(|e| ImageError::KeyFile(args.key_out.clone(), e))
        .and_then(|()| write_image(args, &key[..]));
    match r {
        Ok(written) => Ok(Created {
            image: args.out.clone(),
            key_file: args.key_out.clone(),
            payload_written: written,
            payload_size: args.size,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&args.key_out);
            Err(e)
        }
    }
}

fn write_image(args: &DiskArgs, key: &[u8]) -> Result<u64, ImageError> {
    let opts = luks::CreateOptions {
        kdf: match args.kdf {
            KdfArg::Pbkdf2 => luks::KdfChoice::Pbkdf2Sha256 { iterations: 1000 },
            KdfArg::Argon2id => luks::KdfChoice::Argon2id {
                time: 4,
                memory_kib: 65536,
                cpus: 1,
            },
        },
        ..luks::CreateOptions::default()
    };
    // `luks::create` removes the image itself if it fails.
    let mut vol = luks::create(&args.out, args.size, key, &opts)?;
    let r = fill(&mut vol, args).and_then(|n| {
        vol.sync()?;
        Ok(n)
    });
    if r.is_err() {
        drop(vol);
        let _ = std::fs::remove_file(&args.out);
    }
    r
}

fn fill(vol: &mut luks::Volume, args: &DiskArgs) -> Result<u64, ImageError> {
    if let Some(m) = &args.message {
        let mut bytes = m.as_bytes().to_vec();
        bytes.push(0);
        vol.write_plaintext(0, &bytes)?;
        return Ok(bytes.len() as u64);
    }
    if let Some(dir) = &args.from_dir {
        return fill_from_dir(vol, args, dir);
    }
    let Some(path) = &args.from_file else {
        return Ok(0);
    };
    copy_file(vol, path, args.size)
}

/// Builds the ext4 image in a temporary file beside `--out`, copies it in, removes it.
fn fill_from_dir(vol: &mut luks::Volume, args: &DiskArgs, dir: &Path) -> Result<u64, ImageError> {
    let mut name = args.out.as_os_str().to_owned();
    name.push(".ext4.tmp");
    let tmp = PathBuf::from(name);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| ImageError::Input(tmp.clone(), e))?;
    let r = f
        .set_len(args.size)
        .map_err(|e| ImageError::Input(tmp.clone(), e))
        .and_then(|()| {
            drop(f);
            tracing::info!(event = "mkfs", dir = %dir.display(), "making the ext4 file system");
            let out = cli_support::progress::ticking("making the ext4 file system", || {
                std::process::Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-b", "4096", "-L", "cvm-data", "-d"])
                    .arg(dir)
                    .arg(&tmp)
                    .output()
            })
            .map_err(ImageError::MkfsSpawn)?;
            if !out.status.success() {
                return Err(ImageError::Mkfs(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ));
            }
            copy_file(vol, &tmp, args.size)
        });
    let _ = std::fs::remove_file(&tmp);
    r
}

/// Copies `path` to payload offset 0, zero-padding to the end of its last sector.
fn copy_file(vol: &mut luks::Volume, path: &Path, size: u64) -> Result<u64, ImageError> {
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::Input(path.to_owned(), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    let total = f.metadata().ok().map(|m| m.len());
    let mut progress = cli_support::progress::Progress::new(
        format!("encrypting {}", path.display()),
        cli_support::progress::Unit::Bytes,
        total,
    );
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ImageError::Input(path.to_owned(), e))?;
        if n == 0 {
            break;
        }
        if off + n as u64 > size {
            return Err(ImageError::TooLarge {
                len: off + n as u64,
                size,
            });
        }
        vol.write_plaintext(off, &buf[..n])?;
        off += n as u64;
        progress.advance(n as u64);
    }
    progress.finish();
    let pad = (4096 - off % 4096) % 4096;
    if pad > 0 {
        vol.write_plaintext(off, &vec![0u8; pad as usize])?;
    }
    Ok(off)
}

/// Runs `cvm image disk`.
pub fn run(args: &DiskArgs) -> ExitCode {
    match create_disk(args) {
        Ok(c) => {
            let stem = c
                .image
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "disk".into());
            if args.output.is_json() {
                cli_support::output::print_json(&serde_json::json!({
                    "image": c.image,
                    "key_file": c.key_file,
                    "format": "luks2",
                    "cipher": "aes-xts-plain64",
                    "sector_size": 4096,
                    "payload_size": c.payload_size,
                    "payload_written": c.payload_written,
                    "data_offset": luks::DATA_OFFSET,
                    "suggested_resource": format!("default/luks-key/{stem}"),
                }));
                return ExitCode::SUCCESS;
            }
            println!(
                "created {}: LUKS2 aes-xts-plain64, 4096-byte sectors, {} payload bytes \
                 ({} written) at offset {}",
                c.image.display(),
                c.payload_size,
                c.payload_written,
                luks::DATA_OFFSET
            );
            println!(
                "key file: {} (64 random bytes, mode 0600)",
                c.key_file.display()
            );
            println!(
                "next: register the key with the verifier so it releases it only to \
                 attested guests, then delete the local copy:\n  cvm-verifier admin \
                 resource put default/luks-key/{stem} --value-file {}\n  and grant it \
                 to the workload (cvm-verifier admin workload put ... --resource \
                 default/luks-key/{stem})",
                c.key_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => cli_support::exit_with(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1000").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
