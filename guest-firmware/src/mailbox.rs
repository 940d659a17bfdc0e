//! The emulated TEE mailbox of `cvm launch --tee emulated-*` (host_vmm::tee::emulated):
//! port 0xE00 takes the GPA of the request window, 0xE04 the command (and reads back
//! its status), 0xE08 reads the magic. Request at window + 0, response length (u32) at
//! + 0x40, response from + 0x100. Emulated guests only: it is plain port I/O.

use crate::arch;

const PORT: u16 = 0xE00;
const MAGIC: u32 = 0x454D_5643;
/// The request window: 16 KiB of firmware data memory.
pub const WINDOW: u64 = 0x18000;
const WINDOW_SIZE: usize = 0x4000;
const RESPONSE_LEN_AT: usize = 0x40;
const RESPONSE_AT: usize = 0x100;

/// Command: INFO (u32 kind: 1 = emulated SNP, 2 = emulated TDX; u32 version).
const CMD_INFO: u32 = 5;
/// Command: SNP extended-report certificates (used only to tell an older mailbox
/// without INFO apart: it succeeds on emulated SNP, is unsupported on emulated TDX).
const CMD_SNP_CERTS: u32 = 2;
const STATUS_UNSUPPORTED: u32 = 2;

/// The emulated TEE behind the mailbox.
pub enum Kind {
    /// Emulated SEV-SNP.
    Snp,
    /// Emulated TDX.
    Tdx,
}

fn window() -> &'static mut [u8] {
    // SAFETY: the window is firmware data memory (0x18000-0x1BFFF) used by nothing else.
    unsafe { arch::phys_mut(WINDOW, WINDOW_SIZE) }
}

fn command(cmd: u32, request: &[u8]) -> Result<&'static [u8], u32> {
    let w = window();
    w[..RESPONSE_AT].fill(0);
    w[..request.len()].copy_from_slice(request);
    arch::outl(PORT, WINDOW as u32);
    arch::outl(PORT + 4, cmd);
    let status = arch::inl(PORT + 4);
    if status != 0 {
        return Err(status);
    }
    let w = window();
    let len = u32::from_le_bytes([
        w[RESPONSE_LEN_AT],
        w[RESPONSE_LEN_AT + 1],
        w[RESPONSE_LEN_AT + 2],
        w[RESPONSE_LEN_AT + 3],
    ]) as usize;
    Ok(&w[RESPONSE_AT..RESPONSE_AT + len.min(WINDOW_SIZE - RESPONSE_AT)])
}

/// Whether the mailbox answers, and which TEE it emulates.
pub fn kind() -> Option<Kind> {
    if arch::inl(PORT + 8) != MAGIC {
        return None;
    }
    match command(CMD_INFO, &[]) {
        Ok(r) if r.len() >= 4 && r[..4] == 1u32.to_le_bytes() => Some(Kind::Snp),
        Ok(r) if r.len() >= 4 && r[..4] == 2u32.to_le_bytes() => Some(Kind::Tdx),
        Ok(_) => None,
        // A mailbox from before INFO existed.
        Err(_) => match command(CMD_SNP_CERTS, &[]) {
            Err(STATUS_UNSUPPORTED) => Some(Kind::Tdx),
            _ => Some(Kind::Snp),
        },
    }
}
