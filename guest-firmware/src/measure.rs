//! Measured direct boot: hashes of the private copies, checked against the QEMU hashes
//! table (SNP, emulated SNP, plain) or extended into RTMRs with CC event log records
//! (TDX, real or emulated by the VMM's software TDX module).

use crate::env::Env;
use crate::io::Io;
use crate::sha::{Sha256, Sha384};
use crate::{arch, tdx};

/// The SNP_KERNEL_HASHES page; the table sits at its start (footer entry base 0xC000).
pub const HASHES_TABLE: u64 = 0xC000;
/// The CC event log area (CCEL LASA).
pub const EVENT_LOG: u64 = 0x30000;
const EVENT_LOG_SIZE: usize = 0x10000;

const TABLE_GUID: [u8; 16] = [
    0x06, 0xd6, 0x38, 0x94, 0x22, 0x4f, 0xc9, 0x4c, 0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21,
];
const CMDLINE_GUID: [u8; 16] = [
    0xd8, 0x2d, 0xd0, 0x97, 0x20, 0xbd, 0x94, 0x4c, 0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a,
];
const INITRD_GUID: [u8; 16] = [
    0x31, 0xf7, 0xba, 0x44, 0x2f, 0x3a, 0xd7, 0x4b, 0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d,
];
const KERNEL_GUID: [u8; 16] = [
    0x37, 0x94, 0xe7, 0x4d, 0xd2, 0xab, 0x7f, 0x42, 0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b,
];

/// The private copies to measure, as (GPA, length) pieces.
pub struct Copies {
    /// Kernel file: setup copy, then the protected-mode part at 0x100000.
    pub kernel: [(u64, u64); 2],
    /// Initrd copy (length 0 = none).
    pub initrd: (u64, u64),
    /// Command line copy including its NUL.
    pub cmdline: (u64, u64),
}

fn bytes(piece: (u64, u64)) -> &'static [u8] {
    // SAFETY: every piece is a private copy the firmware made and no longer writes.
    unsafe { arch::phys(piece.0, piece.1 as usize) }
}

/// The three hashes from the table, in (cmdline, initrd, kernel) order, if the page
/// holds a well-formed table.
fn read_table() -> Option<[[u8; 32]; 3]> {
    // SAFETY: the hashes page is firmware memory (measured at launch on SNP).
    parse_table(unsafe { arch::phys(HASHES_TABLE, 168) })
}

/// Parses a QEMU hashes table: header GUID, length 168, three {GUID, 50, SHA-256}.
fn parse_table(t: &[u8]) -> Option<[[u8; 32]; 3]> {
    let t = t.get(..168)?;
    if t[..16] != TABLE_GUID || t[16..18] != 168u16.to_le_bytes() {
        return None;
    }
    let mut out = [[0u8; 32]; 3];
    let mut seen = [false; 3];
    for e in t[18..].chunks_exact(50) {
        if e[16..18] != 50u16.to_le_bytes() {
            return None;
        }
        let i = match &e[..16] {
            g if *g == CMDLINE_GUID => 0,
            g if *g == INITRD_GUID => 1,
            g if *g == KERNEL_GUID => 2,
            _ => return None,
        };
        if seen[i] {
            return None;
        }
        seen[i] = true;
        out[i].copy_from_slice(&e[18..50]);
    }
    Some(out)
}

/// SNP, emulated SNP and plain: compares SHA-256 of each copy with the hashes table;
/// refuses to boot on any difference or without a table.
pub fn check_hashes(io: Io, c: &Copies) {
    let Some(table) = read_table() else {
        io.refuse("kernel hash mismatch (no kernel hashes table at 0xC000)");
    };
    let mut k = Sha256::new();
    k.update(bytes(c.kernel[0]));
    k.update(bytes(c.kernel[1]));
    if k.finish() != table[2] {
        io.refuse("kernel hash mismatch");
    }
    let mut i = Sha256::new();
    i.update(bytes(c.initrd));
    if i.finish() != table[1] {
        io.refuse("initrd hash mismatch");
    }
    let mut m = Sha256::new();
    m.update(bytes(c.cmdline));
    if m.finish() != table[0] {
        io.refuse("cmdline hash mismatch");
    }
}

struct EventLog<'a> {
    log: &'a mut [u8],
    at: usize,
}

impl<'a> EventLog<'a> {
    /// Starts the log in `log` with the TCG "Spec ID Event03" header (SHA-384 only).
    fn new(log: &'a mut [u8]) -> Self {
        log.fill(0);
        let mut spec = [0u8; 33];
        spec[..16].copy_from_slice(b"Spec ID Event03\0");
        spec[20..24].copy_from_slice(&[0, 2, 0, 2]);
        spec[24..28].copy_from_slice(&1u32.to_le_bytes());
        spec[28..30].copy_from_slice(&0x000Cu16.to_le_bytes());
        spec[30..32].copy_from_slice(&48u16.to_le_bytes());
        log[4..8].copy_from_slice(&3u32.to_le_bytes()); // EV_NO_ACTION
        log[28..32].copy_from_slice(&(spec.len() as u32).to_le_bytes());
        log[32..32 + spec.len()].copy_from_slice(&spec);
        Self {
            log,
            at: 32 + spec.len(),
        }
    }

    /// Appends an EV_IPL record for CC MR `mr` (RTMR mr-1).
    fn push(&mut self, mr: u32, digest: &[u8; 48], what: &[u8]) {
        let e = &mut self.log[self.at..self.at + 66 + what.len()];
        e[0..4].copy_from_slice(&mr.to_le_bytes());
        e[4..8].copy_from_slice(&0xDu32.to_le_bytes()); // EV_IPL
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        e[12..14].copy_from_slice(&0x000Cu16.to_le_bytes());
        e[14..62].copy_from_slice(digest);
        e[62..66].copy_from_slice(&(what.len() as u32).to_le_bytes());
        e[66..].copy_from_slice(what);
        self.at += e.len();
    }
}

/// TDX: RTMR1 <- SHA-384(kernel); RTMR2 <- SHA-384(cmdline), then
/// SHA-384(initrd); each recorded as EV_IPL in the CC event log at 0x30000.
pub fn extend_rtmrs(io: Io, env: Env, c: &Copies) {
    let mut k = Sha384::new();
    k.update(bytes(c.kernel[0]));
    k.update(bytes(c.kernel[1]));
    let kernel = k.finish();
    let mut m = Sha384::new();
    m.update(bytes(c.cmdline));
    let cmdline = m.finish();
    let mut i = Sha384::new();
    i.update(bytes(c.initrd));
    let initrd = i.finish();

    // SAFETY: the event log area is firmware memory used by nothing else.
    let mut log = EventLog::new(unsafe { arch::phys_mut(EVENT_LOG, EVENT_LOG_SIZE) });
    for (rtmr, digest, what) in [
        (1u32, &kernel, &b"cvm: kernel"[..]),
        (2, &cmdline, &b"cvm: cmdline"[..]),
        (2, &initrd, &b"cvm: initrd"[..]),
    ] {
        // TDX only (real, or emulated by the VMM's software TDX module): the same
        // TDG.MR.RTMR.EXTEND either way.
        if env != Env::Tdx || !tdx::rtmr_extend(rtmr, digest) {
            io.refuse("RTMR extension failed");
        }
        log.push(rtmr + 1, digest, what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> std::vec::Vec<u8> {
        let mut t = std::vec::Vec::new();
        t.extend_from_slice(&TABLE_GUID);
        t.extend_from_slice(&168u16.to_le_bytes());
        for (g, b) in [(CMDLINE_GUID, 1u8), (INITRD_GUID, 2), (KERNEL_GUID, 3)] {
            t.extend_from_slice(&g);
            t.extend_from_slice(&50u16.to_le_bytes());
            t.extend_from_slice(&[b; 32]);
        }
        t
    }

    #[test]
    fn hashes_table_is_parsed_and_tampering_refused() {
        assert_eq!(parse_table(&table()), Some([[1; 32], [2; 32], [3; 32]]));
        for pos in [0, 16, 18, 34] {
            let mut t = table();
            t[pos] ^= 1;
            assert_eq!(parse_table(&t), None, "byte {pos}");
        }
        let mut dup = table();
        dup.copy_within(68..84, 18); // initrd GUID twice
        assert_eq!(parse_table(&dup), None);
        assert_eq!(parse_table(&table()[..100]), None);
        assert_eq!(parse_table(&[0; 168]), None);
    }

    /// The byte layout measured-boot's `EventLog::to_bytes` produces for the same events
    /// (and its parser reads): legacy header event with "Spec ID Event03", then
    /// TCG_PCR_EVENT2 records with one SHA-384 digest.
    #[test]
    fn event_log_layout_is_tcg_crypto_agile() {
        let mut buf = std::vec![0xAAu8; 512];
        let mut log = EventLog::new(&mut buf);
        log.push(2, &[7; 48], b"cvm: kernel");
        let end = log.at;
        let mut expect = std::vec::Vec::new();
        expect.extend_from_slice(&0u32.to_le_bytes());
        expect.extend_from_slice(&3u32.to_le_bytes());
        expect.extend_from_slice(&[0; 20]);
        expect.extend_from_slice(&33u32.to_le_bytes());
        expect.extend_from_slice(b"Spec ID Event03\0");
        expect.extend_from_slice(&0u32.to_le_bytes());
        expect.extend_from_slice(&[0, 2, 0, 2]);
        expect.extend_from_slice(&1u32.to_le_bytes());
        expect.extend_from_slice(&0x000Cu16.to_le_bytes());
        expect.extend_from_slice(&48u16.to_le_bytes());
        expect.push(0);
        expect.extend_from_slice(&2u32.to_le_bytes());
        expect.extend_from_slice(&0xDu32.to_le_bytes());
        expect.extend_from_slice(&1u32.to_le_bytes());
        expect.extend_from_slice(&0x000Cu16.to_le_bytes());
        expect.extend_from_slice(&[7; 48]);
        expect.extend_from_slice(&11u32.to_le_bytes());
        expect.extend_from_slice(b"cvm: kernel");
        assert_eq!(&buf[..end], &expect[..]);
        assert!(buf[end..].iter().all(|&b| b == 0));
    }
}
