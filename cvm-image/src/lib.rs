//! `cvm image`: guest images. `disk` writes an encrypted LUKS2 disk image and its key
//! file ([`disk`]); `initramfs` builds the initramfs that attests, fetches that key from
//! the verifier and boots the disk as the root file system ([`initramfs`]).

pub mod disk;
pub mod initramfs;

use std::process::ExitCode;

pub use disk::{create_disk, parse_size, Created, DiskArgs, ImageError, KdfArg};
pub use initramfs::{InitramfsArgs, InitramfsError};

/// `cvm image`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an encrypted LUKS2 disk image and a random 64-byte key file for it.
    Disk(DiskArgs),
    /// Build a newc cpio initramfs that attests with cvm-agent, receives the disk key and
    /// switches to the LUKS2 root.
    Initramfs(Box<InitramfsArgs>),
}

/// Runs `cvm image`.
pub fn run(cmd: Command) -> ExitCode {
    match cmd {
        Command::Disk(args) => disk::run(&args),
        Command::Initramfs(args) => initramfs::run(&args),
    }
}
