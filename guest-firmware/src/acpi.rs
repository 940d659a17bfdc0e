//! The ACPI tables of the guest, moved into memory the firmware owns (issue 13 bug 7).
//!
//! A confidential guest must not read its ACPI tables from host-shared memory: Linux
//! maps the e820 ACPI (and, on SEV, reserved) ranges *encrypted*
//! (`arch/x86/mm/ioremap.c` `__ioremap_check_encrypted`: every resource but
//! `IORES_DESC_NONE`/`IORES_DESC_RESERVED` is mapped encrypted under
//! `CC_ATTR_GUEST_MEM_ENCRYPT`; `arch/x86/mm/mem_encrypt_amd.c`
//! `memremap_should_map_decrypted`: on SEV, E820 reserved/ACPI/NVS are encrypted), so
//! tables the host wrote into shared memory read as ciphertext (SNP) or fault on a page
//! nobody accepted (TDX). OVMF does what this module does: QEMU hands the tables over
//! fw_cfg (host memory, unmeasured), and `OvmfPkg/AcpiPlatformDxe/QemuFwCfgAcpi.c`
//! copies them into ACPI memory it allocates (EfiACPIReclaimMemory, private),
//! processes the linker/loader's pointer commands against the blobs it was given, and
//! installs them; the e820 map Linux gets reports that memory as ACPI.
//!
//! Here the VMM stages one blob (RSDP, XSDT, FADT, MADT, DSDT [, CCEL]) built for the
//! link address the descriptor names (`rsdp`, 0xE0000) in the shared staging region;
//! `main` copies it into [`BASE`] (private memory the firmware validated or accepted)
//! and [`relocate`] checks the *private copy* (so the host cannot change it between
//! check and use) and moves every pointer it follows from the link address to
//! [`BASE`]. The blob is untrusted input, as fw_cfg is for OVMF, and unmeasured on
//! SNP and TDX alike. What it must satisfy:
//!
//! - at most [`MAX`] bytes; an RSDP (revision 2, 36 bytes, both checksums) at offset 0
//!   with no RSDT (32-bit tables are not accepted);
//! - the XSDT, each of its (at most [`MAX_TABLES`]) entries, and the DSDT and FACS the
//!   FADT names: inside the blob, with their header length inside it, the expected
//!   signature, a valid checksum (FACS has none), and no two of them overlapping (so
//!   relocating one never changes bytes another's checksum covered);
//! - the FADT's 32- and 64-bit DSDT (and FACS) pointers agree where both are set.
//!
//! Any other pointer inside a table (the MADT's wakeup mailbox, the CCEL's log area) is
//! an address of firmware memory the VMM and firmware agree on, not a blob pointer, and
//! is left alone.

/// Where the private copy of the tables lives: the legacy BIOS area, reported to the
/// kernel as e820 ACPI (type 3), so a legacy RSDP scan finds them too.
pub const BASE: u64 = 0xE0000;
/// Largest blob (the whole 0xE0000-0xFFFFF area).
pub const MAX: u64 = 0x20000;
/// Most XSDT entries accepted.
pub const MAX_TABLES: usize = 32;

const RSDP_LEN: usize = 36;
const HEADER_LEN: usize = 36;
/// FADT offsets (ACPI 6.5 Table 5.9).
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
const FADT_X_FIRMWARE_CTRL: usize = 132;
const FADT_X_DSDT: usize = 140;
const FADT_MIN_LEN: usize = 148;
const FACS_MIN_LEN: usize = 64;

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from(rd32(b, o)) | (u64::from(rd32(b, o + 4)) << 32)
}

fn wr32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn wr64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Sets the checksum byte at `at` so that `b` sums to zero.
fn fix_checksum(b: &mut [u8], at: usize) {
    b[at] = 0;
    b[at] = sum(b).wrapping_neg();
}

/// The tables found so far, as disjoint (offset, length) ranges of the blob.
struct Ranges {
    r: [(usize, usize); MAX_TABLES + 4],
    n: usize,
}

impl Ranges {
    fn add(&mut self, off: usize, len: usize) -> Result<(), &'static str> {
        if self.n == self.r.len() {
            return Err("too many ACPI tables");
        }
        if self.r[..self.n]
            .iter()
            .any(|&(o, l)| off < o + l && o < off + len)
        {
            return Err("ACPI tables overlap");
        }
        self.r[self.n] = (off, len);
        self.n += 1;
        Ok(())
    }
}

/// The blob offset of the table at link address `ptr`, checked: header and length
/// inside the blob, signature `sig` (if given), checksum (unless `facs`).
fn table(
    t: &[u8],
    link: u64,
    ptr: u64,
    sig: Option<&[u8; 4]>,
    outside: &'static str,
) -> Result<(usize, usize), &'static str> {
    let off = ptr
        .checked_sub(link)
        .filter(|o| {
            o.checked_add(HEADER_LEN as u64)
                .is_some_and(|end| end <= t.len() as u64)
        })
        .ok_or(outside)? as usize;
    let len = rd32(t, off + 4) as usize;
    let facs = sig == Some(b"FACS");
    let min = if facs { FACS_MIN_LEN } else { HEADER_LEN };
    if len < min || off + len > t.len() {
        return Err("ACPI table length runs outside the tables");
    }
    if let Some(s) = sig {
        if &t[off..off + 4] != s {
            return Err("ACPI pointer names a table of the wrong signature");
        }
    }
    if !facs && sum(&t[off..off + len]) != 0 {
        return Err("ACPI table checksum is wrong");
    }
    Ok((off, len))
}

/// The FADT's pointer pair (32-bit at `lo`, 64-bit at `hi`) as one address (0: none).
fn fadt_pair(f: &[u8], lo: usize, hi: usize) -> Result<u64, &'static str> {
    let (a, b) = (u64::from(rd32(f, lo)), rd64(f, hi));
    match (a, b) {
        (0, x) | (x, 0) => Ok(x),
        (a, b) if a == b => Ok(a),
        _ => Err("ACPI FADT's 32- and 64-bit pointers disagree"),
    }
}

/// Validates the tables in `t` (a private copy, built for link address `link`) and
/// relocates them to `dest`; returns the new RSDP address (`dest`). On error nothing
/// may be used (the caller refuses to boot).
pub fn relocate(t: &mut [u8], link: u64, dest: u64) -> Result<u64, &'static str> {
    if t.len() as u64 > MAX {
        return Err("ACPI tables larger than 128 KiB");
    }
    if t.len() < RSDP_LEN {
        return Err("ACPI tables too short for an RSDP");
    }
    if &t[..8] != b"RSD PTR " || t[15] < 2 || rd32(t, 20) as usize != RSDP_LEN {
        return Err("ACPI RSDP is not an ACPI 2.0+ RSDP at the start of the tables");
    }
    if sum(&t[..20]) != 0 || sum(&t[..RSDP_LEN]) != 0 {
        return Err("ACPI table checksum is wrong (RSDP)");
    }
    if rd32(t, 16) != 0 {
        return Err("ACPI RSDP names an RSDT; only an XSDT is accepted");
    }
    let to = |p: u64| p - link + dest;
    let mut seen = Ranges {
        r: [(0, 0); MAX_TABLES + 4],
        n: 0,
    };
    seen.add(0, RSDP_LEN)?;
    let (xoff, xlen) = table(
        t,
        link,
        rd64(t, 24),
        Some(b"XSDT"),
        "ACPI RSDP points outside the tables",
    )?;
    seen.add(xoff, xlen)?;
    let entries = (xlen - HEADER_LEN) / 8;
    if (xlen - HEADER_LEN) % 8 != 0 || entries > MAX_TABLES {
        return Err("ACPI XSDT has a malformed entry list");
    }
    let mut fadt = None;
    for i in 0..entries {
        let at = xoff + HEADER_LEN + 8 * i;
        let (off, len) = table(
            t,
            link,
            rd64(t, at),
            None,
            "ACPI XSDT entry points outside the tables",
        )?;
        seen.add(off, len)?;
        if &t[off..off + 4] == b"FACP" {
            if fadt.is_some() {
                return Err("ACPI XSDT lists two FADTs");
            }
            if len < FADT_MIN_LEN {
                return Err("ACPI FADT is too short for its 64-bit pointers");
            }
            fadt = Some(off);
        }
    }
    // The FADT's DSDT and FACS: checked before anything is written.
    let mut fadt_targets = [0u64; 2];
    if let Some(f) = fadt {
        for (k, (lo, hi, sig, what)) in [
            (
                FADT_DSDT,
                FADT_X_DSDT,
                b"DSDT",
                "ACPI FADT's DSDT points outside the tables",
            ),
            (
                FADT_FIRMWARE_CTRL,
                FADT_X_FIRMWARE_CTRL,
                b"FACS",
                "ACPI FADT's FACS points outside the tables",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let p = fadt_pair(&t[f..], lo, hi)?;
            if p != 0 {
                let (off, len) = table(t, link, p, Some(sig), what)?;
                seen.add(off, len)?;
                fadt_targets[k] = p;
            }
        }
    }
    // Relocation: every pointer followed above moves from `link` to `dest`.
    for i in 0..entries {
        let at = xoff + HEADER_LEN + 8 * i;
        let p = rd64(t, at);
        wr64(t, at, to(p));
    }
    fix_checksum(&mut t[xoff..xoff + xlen], 9);
    if let Some(f) = fadt {
        for (p, lo, hi) in [
            (fadt_targets[0], FADT_DSDT, FADT_X_DSDT),
            (fadt_targets[1], FADT_FIRMWARE_CTRL, FADT_X_FIRMWARE_CTRL),
        ] {
            if p == 0 {
                continue;
            }
            let new = to(p);
            if rd32(t, f + lo) != 0 {
                let low = u32::try_from(new).map_err(|_| "ACPI tables placed above 4 GiB")?;
                wr32(t, f + lo, low);
            }
            if rd64(t, f + hi) != 0 {
                wr64(t, f + hi, new);
            }
        }
        let flen = rd32(t, f + 4) as usize;
        fix_checksum(&mut t[f..f + flen], 9);
    }
    let x = to(rd64(t, 24));
    wr64(t, 24, x);
    fix_checksum(&mut t[..20], 8);
    fix_checksum(&mut t[..RSDP_LEN], 32);
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const LINK: u64 = 0xE0000;

    fn header(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = std::vec![0u8; HEADER_LEN];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[8] = 2;
        fix_checksum(&mut t, 9);
        t
    }

    fn put(blob: &mut Vec<u8>, t: &[u8]) -> u64 {
        while blob.len() % 16 != 0 {
            blob.push(0);
        }
        let at = LINK + blob.len() as u64;
        blob.extend_from_slice(t);
        at
    }

    /// RSDP | XSDT(FADT, MADT) | FADT(DSDT, FACS) | MADT | DSDT | FACS, linked at LINK.
    fn blob() -> Vec<u8> {
        let mut b = std::vec![0u8; RSDP_LEN];
        let xsdt_at = LINK + 48;
        let xsdt_len = HEADER_LEN + 16;
        b.resize(48 + xsdt_len, 0);
        let dsdt = header(b"DSDT", &[0x10; 20]);
        let madt = header(b"APIC", &[1; 12]);
        let mut facs = std::vec![0u8; 64];
        facs[..4].copy_from_slice(b"FACS");
        facs[4..8].copy_from_slice(&64u32.to_le_bytes());
        // FADT placeholder, patched below.
        let fadt_at = put(&mut b, &header(b"FACP", &[0; 276 - HEADER_LEN]));
        let madt_at = put(&mut b, &madt);
        let dsdt_at = put(&mut b, &dsdt);
        let facs_at = put(&mut b, &facs);
        let f = (fadt_at - LINK) as usize;
        wr32(&mut b, f + FADT_DSDT, dsdt_at as u32);
        wr64(&mut b, f + FADT_X_DSDT, dsdt_at);
        wr64(&mut b, f + FADT_X_FIRMWARE_CTRL, facs_at);
        fix_checksum(&mut b[f..f + 276], 9);
        let x = 48;
        b[x..x + 4].copy_from_slice(b"XSDT");
        wr32(&mut b, x + 4, xsdt_len as u32);
        wr64(&mut b, x + 36, fadt_at);
        wr64(&mut b, x + 44, madt_at);
        fix_checksum(&mut b[x..x + xsdt_len], 9);
        b[..8].copy_from_slice(b"RSD PTR ");
        b[15] = 2;
        wr32(&mut b, 20, RSDP_LEN as u32);
        wr64(&mut b, 24, xsdt_at);
        fix_checksum(&mut b[..20], 8);
        fix_checksum(&mut b[..RSDP_LEN], 32);
        b
    }

    fn tables_at(b: &[u8], base: u64) -> Vec<[u8; 4]> {
        let x = (rd64(b, 24) - base) as usize;
        let n = (rd32(b, x + 4) as usize - HEADER_LEN) / 8;
        (0..n)
            .map(|i| {
                let o = (rd64(b, x + 36 + 8 * i) - base) as usize;
                b[o..o + 4].try_into().unwrap()
            })
            .collect()
    }

    #[test]
    fn relocates_every_pointer_it_follows_and_keeps_checksums() {
        let mut b = blob();
        let dest = 0x7F0_0000;
        assert_eq!(relocate(&mut b, LINK, dest).unwrap(), dest);
        assert_eq!(sum(&b[..20]), 0);
        assert_eq!(sum(&b[..36]), 0);
        assert_eq!(tables_at(&b, dest), [*b"FACP", *b"APIC"]);
        let x = (rd64(&b, 24) - dest) as usize;
        assert_eq!(sum(&b[x..x + rd32(&b, x + 4) as usize]), 0);
        let f = (rd64(&b, x + 36) - dest) as usize;
        assert_eq!(sum(&b[f..f + 276]), 0);
        let d = rd64(&b, f + FADT_X_DSDT);
        assert_eq!(u64::from(rd32(&b, f + FADT_DSDT)), d);
        assert_eq!(&b[(d - dest) as usize..][..4], b"DSDT");
        let facs = rd64(&b, f + FADT_X_FIRMWARE_CTRL);
        assert_eq!(&b[(facs - dest) as usize..][..4], b"FACS");
        assert_eq!(rd32(&b, f + FADT_FIRMWARE_CTRL), 0, "unset stays unset");
        // The relocated copy is itself valid tables at `dest`.
        let mut again = b.clone();
        relocate(&mut again, dest, dest).unwrap();
        assert_eq!(again, b);
        // In place (dest == link) changes nothing.
        let mut same = blob();
        relocate(&mut same, LINK, LINK).unwrap();
        assert_eq!(same, blob());
    }

    /// Patches `b` with `f`, restoring the RSDP and XSDT checksums unless `raw`.
    fn bad(f: impl Fn(&mut Vec<u8>), raw: bool) -> Result<u64, &'static str> {
        let mut b = blob();
        f(&mut b);
        if !raw {
            let x = 48;
            let xl = rd32(&b, x + 4) as usize;
            if x + xl <= b.len() {
                fix_checksum(&mut b[x..x + xl], 9);
            }
            fix_checksum(&mut b[..20], 8);
            fix_checksum(&mut b[..RSDP_LEN], 32);
        }
        relocate(&mut b, LINK, 0x10_0000)
    }

    #[test]
    fn refuses_every_malformed_blob() {
        let fadt_off = (rd64(&blob(), 48 + 36) - LINK) as usize;
        type Patch<'a> = &'a dyn Fn(&mut Vec<u8>);
        let cases: &[(&str, Patch, bool, &str)] = &[
            ("signature", &|b| b[0] = b'X', false, "RSDP"),
            ("revision 0", &|b| b[15] = 0, false, "RSDP"),
            ("RSDP checksum", &|b| b[8] ^= 1, true, "checksum"),
            ("RSDP ext checksum", &|b| b[32] ^= 1, true, "checksum"),
            ("RSDT", &|b| wr32(b, 16, 0xE0040), false, "RSDT"),
            ("XSDT below", &|b| wr64(b, 24, LINK - 16), false, "outside"),
            (
                "XSDT past",
                &|b| wr64(b, 24, LINK + 0x10_0000),
                false,
                "outside",
            ),
            (
                "XSDT overflow",
                &|b| wr64(b, 24, u64::MAX - 8),
                false,
                "outside",
            ),
            (
                "XSDT length",
                &|b| wr32(b, 48 + 4, 0x10_0000),
                false,
                "length",
            ),
            (
                "entry outside",
                &|b| wr64(b, 48 + 44, 0xFFFF_0000),
                false,
                "XSDT entry points outside",
            ),
            (
                "entry onto the RSDP",
                &|b| wr64(b, 48 + 44, LINK),
                false,
                "ACPI",
            ),
            (
                "duplicate entry",
                &|b| {
                    let f = rd64(b, 48 + 36);
                    wr64(b, 48 + 44, f)
                },
                false,
                "overlap",
            ),
            (
                "MADT checksum",
                &move |b| {
                    let m = (rd64(b, 48 + 44) - LINK) as usize;
                    b[m + 40] ^= 0x55;
                },
                false,
                "checksum",
            ),
            (
                "DSDT outside",
                &move |b| {
                    wr64(b, fadt_off + FADT_X_DSDT, 0x20_0000);
                    wr32(b, fadt_off + FADT_DSDT, 0);
                    fix_checksum(&mut b[fadt_off..fadt_off + 276], 9);
                },
                false,
                "DSDT points outside",
            ),
            (
                "DSDT pair disagrees",
                &move |b| {
                    wr32(b, fadt_off + FADT_DSDT, 0xE0000);
                    fix_checksum(&mut b[fadt_off..fadt_off + 276], 9);
                },
                false,
                "disagree",
            ),
            (
                "DSDT is the MADT",
                &move |b| {
                    let m = rd64(b, 48 + 44);
                    wr64(b, fadt_off + FADT_X_DSDT, m);
                    wr32(b, fadt_off + FADT_DSDT, m as u32);
                    fix_checksum(&mut b[fadt_off..fadt_off + 276], 9);
                },
                false,
                "signature",
            ),
        ];
        for (what, f, raw, why) in cases {
            let e = bad(f, *raw).expect_err(what);
            assert!(e.contains(why), "{what}: {e}");
        }
        let mut huge = blob();
        huge.resize(MAX as usize + 1, 0);
        assert_eq!(
            relocate(&mut huge, LINK, LINK),
            Err("ACPI tables larger than 128 KiB")
        );
        let mut short = blob();
        short.truncate(30);
        assert!(relocate(&mut short, LINK, LINK).is_err());
        // Truncated after the RSDP: the XSDT is outside.
        let mut cut = blob();
        cut.truncate(60);
        assert!(relocate(&mut cut, LINK, LINK).is_err());
    }
}
