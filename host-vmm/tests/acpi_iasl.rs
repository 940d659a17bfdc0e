//! The ACPI tables, disassembled by ACPICA's `iasl` (Debian `acpica-tools`), an
//! independent implementation of the ACPI specification. Fails under CI when `iasl` is
//! missing; prints `SKIPPED` elsewhere.

use std::process::Command;

use host_vmm::acpi::{build, VirtioMmioDesc};

/// Writes the table with signature `sig` and returns iasl's disassembly.
fn disassemble(dir: &std::path::Path, t: &host_vmm::acpi::AcpiTables, sig: &[u8; 4]) -> String {
    let off = t.offsets.iter().find(|(s, _)| s == sig).unwrap().1;
    let len = u32::from_le_bytes(t.blob[off + 4..off + 8].try_into().unwrap()) as usize;
    let name = String::from_utf8_lossy(sig).to_lowercase();
    let path = dir.join(format!("{name}.dat"));
    std::fs::write(&path, &t.blob[off..off + len]).unwrap();
    let o = Command::new("iasl")
        .arg("-d")
        .arg(&path)
        .current_dir(dir)
        .output()
        .unwrap();
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap_or_default();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "iasl -d {name}: {all}");
    assert!(
        !all.contains("Error") && !dsl.contains("Invalid"),
        "iasl complained about {name}: {all}\n{dsl}"
    );
    dsl
}

#[test]
fn iasl_disassembles_every_table_and_sees_our_devices() {
    test_kit::require!(tool "iasl");
    let dir = tempfile::tempdir().unwrap();
    let devs = [
        VirtioMmioDesc {
            base: 0xd000_0000,
            size: 0x200,
            irq: 5,
        },
        VirtioMmioDesc {
            base: 0xd000_0200,
            size: 0x200,
            irq: 6,
        },
    ];
    let t = build(2, &devs).unwrap();

    let dsdt = disassemble(dir.path(), &t, b"DSDT");
    assert_eq!(dsdt.matches("\"LNRO0005\"").count(), 2, "{dsdt}");
    assert!(
        dsdt.contains("0xD0000000") && dsdt.contains("0xD0000200"),
        "{dsdt}"
    );
    assert!(dsdt.contains("Name (_S5, Package"), "{dsdt}");
    assert!(dsdt.contains("PNP0501"), "{dsdt}");
    assert!(
        dsdt.contains("QEMU0001") && dsdt.contains("0x0505"),
        "pvpanic: {dsdt}"
    );
    assert!(dsdt.contains("Memory32Fixed (ReadWrite,"), "{dsdt}");

    let fadt = disassemble(dir.path(), &t, b"FACP");
    assert!(
        fadt.contains("PM1A Control Block Address : 00000604"),
        "{fadt}"
    );
    assert!(
        fadt.contains("PM1A Event Block Address : 00000600"),
        "{fadt}"
    );

    let madt = disassemble(dir.path(), &t, b"APIC");
    assert_eq!(madt.matches("Processor Local APIC").count(), 2, "{madt}");
    assert!(madt.contains("I/O APIC"), "{madt}");

    let xsdt = disassemble(dir.path(), &t, b"XSDT");
    assert!(xsdt.contains("ACPI Table Address   0"), "{xsdt}");
}
