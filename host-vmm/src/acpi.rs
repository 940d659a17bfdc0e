//! ACPI tables for the guest: RSDP, XSDT, FADT, MADT and a DSDT that describes the
//! power-off sleep state and the virtio-mmio devices, built with rust-vmm's
//! `acpi_tables`.
//!
//! - The FADT points at the PM1a event and control blocks of
//!   [`crate::devices::legacy`]; the DSDT's `\_S5` package carries the SLP_TYP value
//!   that device treats as power-off, so a stock kernel's `poweroff` ends the VM.
//! - Each virtio-mmio device is a `LNRO0005` device with its MMIO window and its
//!   interrupt, which is how Linux finds virtio-mmio devices without the
//!   `virtio_mmio.device=` command line (Debian's kernel lacks that option).
//! - The pvpanic device (`QEMU0001`, port 0x505) lets a stock kernel report panics.
//! - The MADT lists one local APIC per vCPU and the I/O APIC.
//!
//! The tables are laid out contiguously from [`AcpiTables::rsdp_gpa`] (the RSDP
//! first, 16-byte aligned, so a legacy scan of 0xE0000..0xFFFFF also finds it).
//!
//! Confidential guests (issue 13 bug 7) cannot read tables the host wrote into shared
//! memory, so the VMM also stages the same blob in the staging region
//! ([`crate::boot::stage_acpi`]); the project firmware copies it into private memory
//! at [`ACPI_BASE`], checks it and relocates it (its pointers are relative to
//! [`ACPI_BASE`], the link address in the boot-data descriptor). Not measured.

use acpi_tables::aml::{
    AmlString, Device, EISAName, Interrupt, Memory32Fixed, Name, One, Package, Path,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::FADTBuilder;
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::devices::legacy::{PM1A_CNT, PM1A_EVT, PVPANIC_PORT, S5_SLP_TYP};
use crate::devices::serial::{COM1_BASE, COM1_IRQ};

/// Where the tables start in guest memory (the legacy BIOS area below 1 MiB).
pub const ACPI_BASE: u64 = 0x000E_0000;
/// Space reserved for the tables.
pub const ACPI_SIZE: u64 = 0x2_0000;
/// Local APIC base.
pub const LAPIC_BASE: u32 = 0xFEE0_0000;
/// I/O APIC base.
pub const IOAPIC_BASE: u32 = 0xFEC0_0000;
/// The SCI interrupt (as on PC platforms).
pub const SCI_IRQ: u16 = 9;

/// FADT IAPC_BOOT_ARCH bit 0: LEGACY_DEVICES (ACPI 6.5 Table 5.11).
const IAPC_BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
/// FADT IAPC_BOOT_ARCH bit 1: 8042 present.
#[cfg(test)]
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;

const OEM_ID: [u8; 6] = *b"CVMHST";
const OEM_TABLE: [u8; 8] = *b"CVMTABLE";

/// A virtio-mmio device to describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDesc {
    /// MMIO window base.
    pub base: u32,
    /// MMIO window size.
    pub size: u32,
    /// Its interrupt (GSI).
    pub irq: u32,
}

/// Why tables could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// xAPIC MADT entries carry 8-bit APIC IDs.
    #[error("{0} vCPUs cannot be described with xAPIC entries (at most 255)")]
    TooManyVcpus(u32),
    /// The tables outgrew their reserved space.
    #[error("ACPI tables need {0:#x} bytes, more than the {ACPI_SIZE:#x} reserved")]
    TooLarge(usize),
}

/// The built tables: one blob to copy at [`AcpiTables::rsdp_gpa`].
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// Guest address of the blob and of the RSDP at its start.
    pub rsdp_gpa: u64,
    /// RSDP, XSDT, FADT, MADT and DSDT, each 16-byte aligned.
    pub blob: Vec<u8>,
    /// Offsets of each table in the blob, by signature.
    pub offsets: Vec<([u8; 4], usize)>,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn align16(v: &mut Vec<u8>) {
    while v.len() % 16 != 0 {
        v.push(0);
    }
}

/// The DSDT: `\_S5` and the devices.
pub fn dsdt(devices: &[VirtioMmioDesc]) -> Vec<u8> {
    let s5_typ = u8::try_from(S5_SLP_TYP).unwrap_or(5);
    let (zero, typ) = (0u8, s5_typ);
    let s5 = Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&typ, &typ, &zero, &zero]),
    );

    let (com1_io, com1_irq) = (
        IO::new(COM1_BASE, COM1_BASE, 1, 8),
        Interrupt::new(true, true, false, false, COM1_IRQ),
    );
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
    let com1_uid = Name::new(Path::new("_UID"), &zero);
    let com1_crs_name = Name::new(Path::new("_CRS"), &com1_crs);
    let com1 = Device::new(
        Path::new("COM1"),
        vec![&com1_hid, &com1_uid, &com1_crs_name],
    );

    // pvpanic (QEMU's ISA device): Linux's pvpanic driver binds to QEMU0001.
    let (pv_io, pv_sta) = (IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1), 0x0Fu8);
    let pv_hid_str = AmlString::from("QEMU0001");
    let pv_hid = Name::new(Path::new("_HID"), &pv_hid_str);
    let pv_crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&pv_io]));
    let pv_sta = Name::new(Path::new("_STA"), &pv_sta);
    let pvpanic = Device::new(Path::new("PEVT"), vec![&pv_hid, &pv_crs, &pv_sta]);

    struct Dev {
        hid: Name,
        uid: Name,
        cca: Name,
        crs: Name,
    }
    let hid_str = AmlString::from("LNRO0005");
    let devs: Vec<Dev> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mem = Memory32Fixed::new(true, d.base, d.size);
            // Edge-triggered, active high, exclusive — what virtio-mmio signals.
            let irq = Interrupt::new(true, true, false, false, d.irq);
            Dev {
                hid: Name::new(Path::new("_HID"), &hid_str),
                uid: Name::new(Path::new("_UID"), &(i as u32)),
                cca: Name::new(Path::new("_CCA"), &One {}),
                crs: Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&mem, &irq])),
            }
        })
        .collect();
    let names: Vec<String> = (0..devices.len()).map(|i| format!("VR{i:02X}")).collect();
    let dev_objs: Vec<Device> = devs
        .iter()
        .zip(&names)
        .map(|(d, n)| Device::new(Path::new(n), vec![&d.hid, &d.uid, &d.cca, &d.crs]))
        .collect();
    let mut sb_children: Vec<&dyn Aml> = vec![&com1, &pvpanic];
    sb_children.extend(dev_objs.iter().map(|d| d as &dyn Aml));
    let sb = Scope::new(Path::new("\\_SB_"), sb_children);

    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    sb.to_aml_bytes(&mut body);
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// The Confidential Computing Event Log table (ACPI 6.5 §5.2.34): where a TD's
/// firmware left the CC event log (TCG crypto-agile format, RTMR events), so the guest
/// kernel can expose it (`/sys/firmware/acpi/tables/data/CCEL`) for replay against the
/// quote's RTMRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ccel {
    /// CC type: 2 = Intel TDX.
    pub cc_type: u8,
    /// Log area start address (the firmware's, see docs/guest-boot-protocol.md).
    pub lasa: u64,
    /// Log area minimum length.
    pub laml: u64,
}

impl Ccel {
    /// The log area the project firmware fills in TDX and emulated-TDX guests.
    pub const TDX_FIRMWARE: Ccel = Ccel {
        cc_type: 2,
        lasa: 0x3_0000,
        laml: 0x1_0000,
    };
}

/// The CCEL table bytes: header, CC type, CC subtype 0, 2 reserved, LAML, LASA.
pub fn ccel(c: &Ccel) -> Vec<u8> {
    let mut table = Sdt::new(*b"CCEL", 36, 1, OEM_ID, OEM_TABLE, 1);
    table.append_slice(&[c.cc_type, 0, 0, 0]);
    table.append_slice(&c.laml.to_le_bytes());
    table.append_slice(&c.lasa.to_le_bytes());
    table.as_slice().to_vec()
}

/// Builds every table for `vcpus` vCPUs and the given devices, laid out from
/// [`ACPI_BASE`].
pub fn build(vcpus: u32, devices: &[VirtioMmioDesc]) -> Result<AcpiTables, AcpiError> {
    build_with(vcpus, devices, None)
}

/// GPA of the ACPI Multiprocessor Wakeup mailbox of TD guests: 4 KiB in the project
/// firmware's TempMem, where its parked APs wait (docs/guest-boot-protocol.md).
pub const MP_WAKEUP_MAILBOX: u64 = 0x1C000;

/// The MADT Multiprocessor Wakeup structure (ACPI 6.4 §5.2.12.19, type 0x10, 16
/// bytes): mailbox version 0 at `mailbox`. A TD has no INIT/SIPI; Linux starts TD APs
/// through this mailbox.
pub fn mp_wakeup_structure(mailbox: u64) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0] = 0x10;
    s[1] = 16;
    // MailBoxVersion 0 (2 bytes), Reserved (4 bytes).
    s[8..16].copy_from_slice(&mailbox.to_le_bytes());
    s
}

/// `madt` with `extra` structures appended (length and checksum fixed up).
fn append_to_table(mut table: Vec<u8>, extra: &[u8]) -> Vec<u8> {
    table.extend_from_slice(extra);
    let len = table.len() as u32;
    table[4..8].copy_from_slice(&len.to_le_bytes());
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = sum.wrapping_neg();
    table
}

/// The MADT: one enabled local APIC per vCPU and the I/O APIC.
fn madt(vcpus: u32) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_BASE),
    );
    for i in 0..vcpus {
        let id = i as u8;
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_BASE, 0));
    bytes(&madt)
}

/// The FADT: SCI, the PM1a blocks, the IA-PC boot flags and the DSDT at `dsdt_gpa`.
fn fadt(dsdt_gpa: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1).dsdt_64(dsdt_gpa);
    fadt.sci_int = SCI_IRQ.into();
    fadt.pm1a_evt_blk = u32::from(PM1A_EVT).into();
    fadt.pm1a_cnt_blk = u32::from(PM1A_CNT).into();
    fadt.pm1_evt_len = 4;
    fadt.pm1_cnt_len = 2;
    fadt.x_pm1a_evt_blk = acpi_tables::gas::GAS::new(
        acpi_tables::gas::AddressSpace::SystemIo,
        32,
        0,
        acpi_tables::gas::AccessSize::WordAccess,
        u64::from(PM1A_EVT),
    );
    fadt.x_pm1a_cnt_blk = acpi_tables::gas::GAS::new(
        acpi_tables::gas::AddressSpace::SystemIo,
        16,
        0,
        acpi_tables::gas::AccessSize::WordAccess,
        u64::from(PM1A_CNT),
    );
    // IA-PC boot architecture: legacy devices (ACPI 6.5 §5.2.9.3 bit 0); no 8042 (bit 1
    // clear): the i8042 here is only a reset line (port 0x64, 0xFE), so a kernel that
    // trusted this flag would spend seconds probing a keyboard controller that never
    // answers (Linux: arch/x86/kernel/acpi/boot.c clears x86_platform.legacy.i8042 when the
    // bit is clear and skips the probe; its reboot still tries port 0x64).
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_LEGACY_DEVICES.into();
    bytes(
        &fadt
            .flag(acpi_tables::fadt::Flags::PwrButton)
            .flag(acpi_tables::fadt::Flags::SlpButton)
            .finalize(),
    )
}

/// [`build`], plus a CCEL table when `ccel` is given (TDX guests).
pub fn build_with(
    vcpus: u32,
    devices: &[VirtioMmioDesc],
    ccel_table: Option<Ccel>,
) -> Result<AcpiTables, AcpiError> {
    if vcpus == 0 || vcpus > 255 {
        return Err(AcpiError::TooManyVcpus(vcpus));
    }
    let rsdp_len = Rsdp::len();
    let dsdt = dsdt(devices);

    // TD guests (the TDX CCEL marks them: cc_type 2) also get the Multiprocessor
    // Wakeup structure: their APs are parked by the firmware, not started by SIPI.
    let madt = match ccel_table {
        Some(c) if c.cc_type == 2 => {
            append_to_table(madt(vcpus), &mp_wakeup_structure(MP_WAKEUP_MAILBOX))
        }
        _ => madt(vcpus),
    };

    let ccel_bytes = ccel_table.as_ref().map(ccel);
    // Offsets: RSDP | XSDT | FADT | MADT | DSDT [| CCEL], each 16-byte aligned.
    let round = |n: usize| n.div_ceil(16) * 16;
    let xsdt_off = round(rsdp_len);
    let xsdt_len = 36 + 8 * (2 + usize::from(ccel_bytes.is_some()));
    let fadt_off = xsdt_off + round(xsdt_len);
    let fadt_len = acpi_tables::fadt::FADT::len();
    let madt_off = fadt_off + round(fadt_len);
    let dsdt_off = madt_off + round(madt.len());
    let ccel_off = dsdt_off + round(dsdt.len());
    let total = ccel_off + ccel_bytes.as_ref().map_or(0, Vec::len);
    if total as u64 > ACPI_SIZE {
        return Err(AcpiError::TooLarge(total));
    }
    let at = |off: usize| ACPI_BASE + off as u64;

    let fadt = fadt(at(dsdt_off));

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(at(fadt_off));
    xsdt.add_entry(at(madt_off));
    if ccel_bytes.is_some() {
        xsdt.add_entry(at(ccel_off));
    }
    let xsdt = bytes(&xsdt);
    let rsdp = bytes(&Rsdp::new(OEM_ID, at(xsdt_off)));

    let mut blob = Vec::with_capacity(total);
    let mut offsets = Vec::new();
    let mut tables = vec![
        (*b"RSDP", 0, &rsdp),
        (*b"XSDT", xsdt_off, &xsdt),
        (*b"FACP", fadt_off, &fadt),
        (*b"APIC", madt_off, &madt),
        (*b"DSDT", dsdt_off, &dsdt),
    ];
    if let Some(c) = &ccel_bytes {
        tables.push((*b"CCEL", ccel_off, c));
    }
    for (sig, off, t) in tables {
        debug_assert_eq!(blob.len(), off);
        offsets.push((sig, off));
        blob.extend_from_slice(t);
        align16(&mut blob);
    }
    Ok(AcpiTables {
        rsdp_gpa: ACPI_BASE,
        blob,
        offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> &'a [u8] {
        let off = t.offsets.iter().find(|(s, _)| s == sig).unwrap().1;
        if sig == b"RSDP" {
            return &t.blob[off..off + 36];
        }
        let len = u32::from_le_bytes(t.blob[off + 4..off + 8].try_into().unwrap()) as usize;
        &t.blob[off..off + len]
    }

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_link_together_with_valid_checksums() {
        let t = build(
            4,
            &[VirtioMmioDesc {
                base: 0xd000_0000,
                size: 0x200,
                irq: 5,
            }],
        )
        .unwrap();
        let rsdp = table(&t, b"RSDP");
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = table(&t, b"XSDT");
        assert_eq!(xsdt_addr, ACPI_BASE + t.offsets[1].1 as u64);
        for sig in [b"XSDT", b"FACP", b"APIC", b"DSDT"] {
            assert!(
                checksum_ok(table(&t, sig)),
                "{}",
                String::from_utf8_lossy(sig)
            );
        }
        // XSDT -> FADT, MADT
        let e0 = u64::from_le_bytes(xsdt[36..44].try_into().unwrap());
        let e1 = u64::from_le_bytes(xsdt[44..52].try_into().unwrap());
        assert_eq!(&t.blob[(e0 - ACPI_BASE) as usize..][..4], b"FACP");
        assert_eq!(&t.blob[(e1 - ACPI_BASE) as usize..][..4], b"APIC");
        // FADT: PM1a blocks (offsets 56 and 64 in the ACPI spec) and X_DSDT (140).
        let fadt = table(&t, b"FACP");
        assert_eq!(u32::from_le_bytes(fadt[56..60].try_into().unwrap()), 0x600);
        assert_eq!(u32::from_le_bytes(fadt[64..68].try_into().unwrap()), 0x604);
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(&t.blob[(x_dsdt - ACPI_BASE) as usize..][..4], b"DSDT");
        // IAPC_BOOT_ARCH (offset 109): legacy devices, and no 8042 (only a reset line
        // here: Linux would probe it for seconds).
        let boot_arch = u16::from_le_bytes(fadt[109..111].try_into().unwrap());
        assert_eq!(
            boot_arch & IAPC_BOOT_ARCH_LEGACY_DEVICES,
            IAPC_BOOT_ARCH_LEGACY_DEVICES
        );
        assert_eq!(boot_arch & IAPC_BOOT_ARCH_8042, 0, "{boot_arch:#x}");
        // MADT: 4 local APICs (type 0) and one I/O APIC (type 1).
        let madt = table(&t, b"APIC");
        let mut types = Vec::new();
        let mut o = 44;
        while o < madt.len() {
            types.push(madt[o]);
            o += madt[o + 1] as usize;
        }
        assert_eq!(types, vec![0, 0, 0, 0, 1]);
        assert!(t.blob.len() as u64 <= ACPI_SIZE);
    }

    #[test]
    fn dsdt_describes_pvpanic_and_every_virtio_device() {
        let devs: Vec<_> = (0..3)
            .map(|i| VirtioMmioDesc {
                base: 0xd000_0000 + 0x1000 * i,
                size: 0x1000,
                irq: 16 + i,
            })
            .collect();
        let d = dsdt(&devs);
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"QEMU0001") && has(b"PEVT"));
        assert!(has(b"VR00") && has(b"VR02") && !has(b"VR03"));
    }

    #[test]
    fn tdx_guests_get_a_ccel_table_in_the_xsdt() {
        let plain = build(1, &[]).unwrap();
        assert!(!plain.offsets.iter().any(|(s, _)| s == b"CCEL"));
        let t = build_with(1, &[], Some(Ccel::TDX_FIRMWARE)).unwrap();
        // The MADT ends with the Multiprocessor Wakeup structure (type 0x10) naming the
        // firmware's mailbox; a plain guest's MADT has none.
        let madt = table(&t, b"APIC");
        assert!(checksum_ok(madt));
        assert_eq!(
            &madt[madt.len() - 16..],
            &mp_wakeup_structure(MP_WAKEUP_MAILBOX)
        );
        assert_eq!(madt[madt.len() - 16], 0x10);
        assert_eq!(&madt[madt.len() - 8..], &0x1C000u64.to_le_bytes());
        assert_eq!(table(&plain, b"APIC").len() + 16, madt.len());
        let c = table(&t, b"CCEL");
        assert_eq!(c.len(), 56);
        assert!(checksum_ok(c));
        assert_eq!(c[36], 2, "CC type TDX");
        assert_eq!(u64::from_le_bytes(c[40..48].try_into().unwrap()), 0x1_0000);
        assert_eq!(u64::from_le_bytes(c[48..56].try_into().unwrap()), 0x3_0000);
        let xsdt = table(&t, b"XSDT");
        assert_eq!(xsdt.len(), 36 + 24);
        let off = t.offsets.iter().find(|(s, _)| s == b"CCEL").unwrap().1;
        let e2 = u64::from_le_bytes(xsdt[52..60].try_into().unwrap());
        assert_eq!(e2, ACPI_BASE + off as u64);
        assert!(checksum_ok(xsdt));
    }

    #[test]
    fn refuses_unrepresentable_vcpu_counts() {
        assert_eq!(build(0, &[]).unwrap_err(), AcpiError::TooManyVcpus(0));
        assert_eq!(build(256, &[]).unwrap_err(), AcpiError::TooManyVcpus(256));
    }
}
