//! Kernel delivery (docs/guest-boot-protocol.md): the VMM stages the kernel, initrd and
//! command line at the top of RAM below 4 GiB and describes them in the boot-data
//! descriptor at [`DESCRIPTOR_GPA`]. Nothing here is trusted by the guest: the firmware
//! validates the descriptor, copies the staged bytes into private memory and checks them
//! against the *measured* hashes (the SNP_KERNEL_HASHES page of the launch plan, or the
//! RTMRs it extends under TDX) before it boots anything.
//!
//! The hashes come from the same inputs [`BootInputs`] holds, through
//! [`measured_boot::snp::hashes::SevHashes`] and [`measured_boot::tdx::DirectBoot`] — the
//! functions `cvm measure --kernel --initrd --append` uses.
//!
//! # Test equipment: tampering
//! [`Tamper`] makes the VMM stage bytes that differ from the measured ones, as a
//! malicious host would; tests use it to prove the firmware refuses them. `cvm launch`
//! accepts it only when `CVM_ALLOW_TAMPER_FOR_TESTS=1` is set.

use std::path::{Path, PathBuf};

use measured_boot::snp::hashes::SevHashes;
use measured_boot::tdx::DirectBoot;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vstate::memory::MMIO_HOLE_START;

/// Where the boot-data descriptor lives.
pub const DESCRIPTOR_GPA: u64 = 0x8000;
/// Size of the descriptor.
pub const DESCRIPTOR_SIZE: usize = 0x80;
/// Descriptor magic.
pub const MAGIC: [u8; 8] = *b"CVMBOOT1";
/// Descriptor version.
pub const VERSION: u32 = 1;
/// Where the firmware loads the kernel's protected-mode part; staging must stay above
/// it.
pub const KERNEL_LOAD_GPA: u64 = 0x10_0000;
/// The link address of the ACPI tables (descriptor 0x50): where the RSDP was built
/// to live and what every table pointer is relative to. The VMM writes the tables
/// there too (what `--tee none` guests without the project firmware read); the
/// firmware places its private, checked copy there.
pub const RSDP_GPA: u64 = crate::acpi::ACPI_BASE;
/// Room reserved for the ACPI table blob at the end of the staging region.
pub const ACPI_SLOT: u64 = crate::acpi::ACPI_SIZE;
const PAGE: u64 = 4096;

/// Which staged item to corrupt (test equipment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Flip a bit of the last kernel byte.
    Kernel,
    /// Flip a bit of the last initrd byte.
    Initrd,
    /// Flip a bit of the first command-line byte.
    Cmdline,
    /// Point the last XSDT entry of the staged ACPI tables outside the blob (checksums
    /// kept valid).
    AcpiPointer,
    /// Flip a bit of the OEM ID of the table the last XSDT entry of the staged ACPI
    /// tables names (its checksum no longer holds).
    AcpiChecksum,
    /// Describe the staged ACPI tables as larger than the firmware accepts.
    AcpiSize,
}

/// The kernel, initrd and command line to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInputs {
    /// The whole bzImage file.
    pub kernel: Vec<u8>,
    /// The initrd, if any.
    pub initrd: Option<Vec<u8>>,
    /// The command line (without its NUL), if any.
    pub cmdline: Option<String>,
}

/// Why the boot inputs cannot be staged.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be read.
    #[error("cannot read the {what} {path}")]
    Read {
        /// Kernel or initrd.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is empty.
    #[error("the kernel file is empty")]
    EmptyKernel,
    /// The command line has a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Kernel, initrd and command line do not fit in RAM below 4 GiB.
    #[error("kernel, initrd and command line ({need:#x} bytes) do not fit in RAM below 4 GiB above the kernel load area (RAM ends at {ram_end:#x}); give the guest more memory")]
    TooLarge {
        /// Bytes needed.
        need: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// Tampering asked for an item that is not given.
    #[error("--tamper-staged {0:?}: that item is not given, so it cannot be tampered with")]
    TamperMissing(Tamper),
    /// The ACPI tables outgrew their slot in the staging region.
    #[error("the ACPI tables ({0:#x} bytes) do not fit their {ACPI_SLOT:#x}-byte slot in the staging region")]
    AcpiTooLarge(usize),
    /// `--tamper-staged acpi-pointer|acpi-checksum` found no XSDT entry to corrupt.
    #[error("--tamper-staged: the ACPI tables have no XSDT entry to corrupt")]
    AcpiNoXsdtEntry,
    /// Writing guest memory failed.
    #[error("cannot write the boot data into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

impl BootInputs {
    /// Reads the kernel and initrd files.
    pub fn read(
        kernel: &Path,
        initrd: Option<&Path>,
        cmdline: Option<String>,
    ) -> Result<Self, BootError> {
        let read = |what, p: &Path| {
            std::fs::read(p).map_err(|source| BootError::Read {
                what,
                path: p.to_owned(),
                source,
            })
        };
        let inputs = Self {
            kernel: read("kernel", kernel)?,
            initrd: initrd.map(|p| read("initrd", p)).transpose()?,
            cmdline,
        };
        if inputs.kernel.is_empty() {
            return Err(BootError::EmptyKernel);
        }
        if inputs.cmdline.as_deref().is_some_and(|c| c.contains('\0')) {
            return Err(BootError::CmdlineNul);
        }
        Ok(inputs)
    }

    /// The SNP kernel hashes table contents (as `cvm measure snp` computes them).
    pub fn sev_hashes(&self) -> SevHashes {
        SevHashes::compute(
            &self.kernel,
            self.initrd.as_deref(),
            self.cmdline.as_deref(),
        )
    }

    /// The TDX direct-boot digests (as `cvm measure tdx` computes them).
    pub fn direct_boot(&self) -> DirectBoot {
        DirectBoot::measure(
            &self.kernel,
            self.initrd.as_deref(),
            self.cmdline.as_deref(),
        )
    }

    /// The command line as staged: its bytes and a NUL (empty when none is given).
    fn cmdline_bytes(&self) -> Vec<u8> {
        self.cmdline
            .as_ref()
            .map(|c| {
                let mut v = c.as_bytes().to_vec();
                v.push(0);
                v
            })
            .unwrap_or_default()
    }
}

/// Where each item lands in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StagingLayout {
    /// Staging region GPA (page aligned).
    pub base: u64,
    /// Staging region size (page multiple).
    pub size: u64,
    /// Kernel (GPA, size).
    pub kernel: (u64, u64),
    /// Initrd (GPA, size; 0/0 when none).
    pub initrd: (u64, u64),
    /// Command line with NUL (GPA, size; 0/0 when none).
    pub cmdline: (u64, u64),
    /// The slot for the ACPI table blob (GPA, [`ACPI_SLOT`]); [`stage_acpi`] fills
    /// it.
    pub acpi: (u64, u64),
}

fn round_up(v: u64) -> u64 {
    v.div_ceil(PAGE) * PAGE
}

/// Bytes of RAM below 4 GiB, and from 4 GiB, for `--memory` bytes.
pub fn ram_split(memory: u64) -> (u64, u64) {
    let low = memory.min(MMIO_HOLE_START);
    (low, memory - low)
}

impl StagingLayout {
    /// Places kernel, initrd, command line and the ACPI slot (each page aligned, in
    /// that order) at the top of low RAM.
    pub fn new(memory: u64, kernel: u64, initrd: u64, cmdline: u64) -> Result<Self, BootError> {
        let (ram_end, _) = ram_split(memory);
        let need = round_up(kernel) + round_up(initrd) + round_up(cmdline) + ACPI_SLOT;
        let floor = KERNEL_LOAD_GPA + round_up(kernel);
        let base = ram_end
            .checked_sub(need)
            .filter(|b| *b >= floor)
            .ok_or(BootError::TooLarge { need, ram_end })?;
        let k = (base, kernel);
        let i_gpa = base + round_up(kernel);
        let c_gpa = i_gpa + round_up(initrd);
        Ok(Self {
            base,
            size: need,
            kernel: k,
            initrd: if initrd > 0 { (i_gpa, initrd) } else { (0, 0) },
            cmdline: if cmdline > 0 {
                (c_gpa, cmdline)
            } else {
                (0, 0)
            },
            acpi: (c_gpa + round_up(cmdline), ACPI_SLOT),
        })
    }
}

/// The boot-data descriptor for `layout` (all zeros for "no kernel"); the ACPI blob
/// fields (0x70, 0x78) are zero until [`stage_acpi`] fills them.
pub fn descriptor(layout: &StagingLayout, memory: u64, vcpus: u32) -> [u8; DESCRIPTOR_SIZE] {
    let (low, high) = ram_split(memory);
    let mut d = [0u8; DESCRIPTOR_SIZE];
    let mut put = |off: usize, v: &[u8]| d[off..off + v.len()].copy_from_slice(v);
    put(0x00, &MAGIC);
    put(0x08, &VERSION.to_le_bytes());
    put(0x0C, &(DESCRIPTOR_SIZE as u32).to_le_bytes());
    put(0x10, &layout.kernel.0.to_le_bytes());
    put(0x18, &layout.kernel.1.to_le_bytes());
    put(0x20, &layout.initrd.0.to_le_bytes());
    put(0x28, &layout.initrd.1.to_le_bytes());
    put(0x30, &layout.cmdline.0.to_le_bytes());
    put(0x38, &layout.cmdline.1.to_le_bytes());
    put(0x40, &low.to_le_bytes());
    put(0x48, &high.to_le_bytes());
    put(0x50, &RSDP_GPA.to_le_bytes());
    put(0x58, &vcpus.to_le_bytes());
    put(0x60, &layout.base.to_le_bytes());
    put(0x68, &layout.size.to_le_bytes());
    d
}

/// Stages `inputs` (or nothing) into `mem` and writes the descriptor; returns the
/// layout. With `tamper`, the chosen item is staged with one bit flipped (test
/// equipment: the measured hashes still describe the original bytes).
pub fn stage(
    mem: &GuestMemoryMmap,
    memory: u64,
    vcpus: u32,
    inputs: Option<&BootInputs>,
    tamper: Option<Tamper>,
) -> Result<StagingLayout, BootError> {
    let layout = match inputs {
        None => StagingLayout::default(),
        Some(b) => {
            let cmdline = b.cmdline_bytes();
            let initrd = b.initrd.as_deref().unwrap_or(&[]);
            let layout = StagingLayout::new(
                memory,
                b.kernel.len() as u64,
                initrd.len() as u64,
                cmdline.len() as u64,
            )?;
            let mut kernel = b.kernel.clone();
            let mut initrd = initrd.to_vec();
            let mut cmdline = cmdline;
            match tamper {
                None => {}
                Some(Tamper::Kernel) => flip(&mut kernel, false),
                Some(Tamper::Initrd) if !initrd.is_empty() => flip(&mut initrd, false),
                Some(Tamper::Cmdline) if cmdline.len() > 1 => flip(&mut cmdline, true),
                // The ACPI tables are staged by `stage_acpi`.
                Some(Tamper::AcpiPointer | Tamper::AcpiChecksum | Tamper::AcpiSize) => {}
                Some(t) => return Err(BootError::TamperMissing(t)),
            }
            for (gpa, data) in [
                (layout.kernel.0, &kernel),
                (layout.initrd.0, &initrd),
                (layout.cmdline.0, &cmdline),
            ] {
                if !data.is_empty() {
                    mem.write_slice(data, GuestAddress(gpa))
                        .map_err(BootError::Write)?;
                }
            }
            layout
        }
    };
    mem.write_slice(
        &descriptor(&layout, memory, vcpus),
        GuestAddress(DESCRIPTOR_GPA),
    )
    .map_err(BootError::Write)?;
    Ok(layout)
}

/// Stages the ACPI table blob `tables` (built for [`RSDP_GPA`]) in the layout's ACPI
/// slot and names it in the descriptor (0x70 GPA, 0x78 size). No kernel staged:
/// nothing to do (the firmware boots nothing). With an `Acpi*` `tamper`, the staged
/// blob or its size is corrupted as a malicious host would (test equipment).
pub fn stage_acpi(
    mem: &GuestMemoryMmap,
    layout: &StagingLayout,
    tables: &[u8],
    tamper: Option<Tamper>,
) -> Result<(), BootError> {
    let (gpa, slot) = layout.acpi;
    if slot == 0 {
        return Ok(());
    }
    if tables.len() as u64 > slot {
        return Err(BootError::AcpiTooLarge(tables.len()));
    }
    let mut blob = tables.to_vec();
    let mut size = blob.len() as u64;
    match tamper {
        Some(Tamper::AcpiChecksum) => break_last_table_checksum(&mut blob)?,
        Some(Tamper::AcpiPointer) => point_last_xsdt_entry_outside(&mut blob)?,
        Some(Tamper::AcpiSize) => size = slot + PAGE,
        _ => {}
    }
    mem.write_slice(&blob, GuestAddress(gpa))
        .map_err(BootError::Write)?;
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&gpa.to_le_bytes());
    d[8..].copy_from_slice(&size.to_le_bytes());
    mem.write_slice(&d, GuestAddress(DESCRIPTOR_GPA + 0x70))
        .map_err(BootError::Write)
}

/// Test equipment: where the XSDT of `blob` (RSDP at 0, built for [`RSDP_GPA`]) is
/// and how long, with at least one entry.
fn xsdt_of(blob: &[u8]) -> Result<(usize, usize), BootError> {
    let rd = |o: usize, n: usize| {
        blob.get(o..o + n).map(|s| {
            let mut w = [0u8; 8];
            w[..n].copy_from_slice(s);
            u64::from_le_bytes(w)
        })
    };
    let x = rd(24, 8)
        .and_then(|p| p.checked_sub(RSDP_GPA))
        .ok_or(BootError::AcpiNoXsdtEntry)? as usize;
    let len = rd(x + 4, 4).ok_or(BootError::AcpiNoXsdtEntry)? as usize;
    if len < 44 || x + len > blob.len() {
        return Err(BootError::AcpiNoXsdtEntry);
    }
    Ok((x, len))
}

/// Test equipment: the last XSDT entry points past the blob; the XSDT's checksum is
/// fixed so only the pointer is wrong.
fn point_last_xsdt_entry_outside(blob: &mut [u8]) -> Result<(), BootError> {
    let (x, len) = xsdt_of(blob)?;
    let outside = RSDP_GPA + blob.len() as u64 + 0x1000;
    blob[x + len - 8..x + len].copy_from_slice(&outside.to_le_bytes());
    blob[x + 9] = 0;
    let sum = blob[x..x + len].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    blob[x + 9] = sum.wrapping_neg();
    Ok(())
}

/// Test equipment: flips a bit of the OEM ID of the table the last XSDT entry names,
/// so that table's checksum no longer holds.
fn break_last_table_checksum(blob: &mut [u8]) -> Result<(), BootError> {
    let (x, len) = xsdt_of(blob)?;
    let mut p = [0u8; 8];
    p.copy_from_slice(&blob[x + len - 8..x + len]);
    let t = u64::from_le_bytes(p)
        .checked_sub(RSDP_GPA)
        .map(|o| o as usize + 10)
        .filter(|o| *o < blob.len())
        .ok_or(BootError::AcpiNoXsdtEntry)?;
    blob[t] ^= 1;
    Ok(())
}

fn flip(v: &mut [u8], first: bool) {
    let i = if first { 0 } else { v.len() - 1 };
    v[i] ^= 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(d: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(d[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn layout_sits_at_the_top_of_low_ram_page_aligned() {
        let l = StagingLayout::new(64 << 20, 5000, 100, 10).unwrap();
        assert_eq!(l.size, 0x2000 + 0x1000 + 0x1000 + ACPI_SLOT);
        assert_eq!(l.base, (64 << 20) - l.size);
        assert_eq!(l.kernel, (l.base, 5000));
        assert_eq!(l.initrd, (l.base + 0x2000, 100));
        assert_eq!(l.cmdline, (l.base + 0x3000, 10));
        assert_eq!(l.acpi, (l.base + 0x4000, ACPI_SLOT));
        assert_eq!(
            l.acpi.0 + l.acpi.1,
            l.base + l.size,
            "the slot ends the region"
        );
        // Above 3 GiB of memory, the staging region ends at the MMIO hole.
        let l = StagingLayout::new(8 << 30, 4096, 0, 0).unwrap();
        assert_eq!(l.base + l.size, MMIO_HOLE_START);
        assert_eq!((l.initrd, l.cmdline), ((0, 0), (0, 0)));
        assert_eq!(l.acpi, (l.base + 0x1000, ACPI_SLOT));
        // Too large: it would overlap the kernel load area.
        assert!(matches!(
            StagingLayout::new(16 << 20, 8 << 20, 8 << 20, 1),
            Err(BootError::TooLarge { .. })
        ));
    }

    #[test]
    fn descriptor_matches_the_documented_layout() {
        let l = StagingLayout::new(4 << 30, 4096, 8192, 5).unwrap();
        let d = descriptor(&l, 4 << 30, 3);
        assert_eq!(&d[..8], b"CVMBOOT1");
        assert_eq!(&d[8..12], &1u32.to_le_bytes());
        assert_eq!(&d[12..16], &0x80u32.to_le_bytes());
        assert_eq!(u64_at(&d, 0x10), l.kernel.0);
        assert_eq!(u64_at(&d, 0x18), 4096);
        assert_eq!(u64_at(&d, 0x20), l.initrd.0);
        assert_eq!(u64_at(&d, 0x28), 8192);
        assert_eq!(u64_at(&d, 0x30), l.cmdline.0);
        assert_eq!(u64_at(&d, 0x38), 5);
        assert_eq!(u64_at(&d, 0x40), 3 << 30);
        assert_eq!(u64_at(&d, 0x48), 1 << 30);
        assert_eq!(u64_at(&d, 0x50), 0xE0000);
        assert_eq!(&d[0x58..0x5C], &3u32.to_le_bytes());
        assert_eq!(&d[0x5C..0x60], &[0; 4]);
        assert_eq!(u64_at(&d, 0x60), l.base);
        assert_eq!(u64_at(&d, 0x68), l.size);
        assert_eq!(&d[0x70..], &[0; 16]);
    }

    #[test]
    fn staging_writes_the_bytes_the_hashes_cover_unless_tampered() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let b = BootInputs {
            kernel: vec![7; 5000],
            initrd: Some(vec![9; 300]),
            cmdline: Some("console=ttyS0".into()),
        };
        let l = stage(&mem, 32 << 20, 1, Some(&b), None).unwrap();
        let mut k = vec![0; 5000];
        mem.read_slice(&mut k, GuestAddress(l.kernel.0)).unwrap();
        assert_eq!(k, b.kernel);
        let mut c = vec![0; 14];
        mem.read_slice(&mut c, GuestAddress(l.cmdline.0)).unwrap();
        assert_eq!(&c, b"console=ttyS0\0");
        assert_eq!(
            b.sev_hashes(),
            SevHashes::compute(&k, Some(&[9; 300]), Some("console=ttyS0"))
        );
        let mut d = [0u8; DESCRIPTOR_SIZE];
        mem.read_slice(&mut d, GuestAddress(DESCRIPTOR_GPA))
            .unwrap();
        assert_eq!(d, descriptor(&l, 32 << 20, 1));

        stage(&mem, 32 << 20, 1, Some(&b), Some(Tamper::Cmdline)).unwrap();
        mem.read_slice(&mut c, GuestAddress(l.cmdline.0)).unwrap();
        assert_eq!(&c, b"bonsole=ttyS0\0");
        stage(&mem, 32 << 20, 1, Some(&b), Some(Tamper::Kernel)).unwrap();
        mem.read_slice(&mut k, GuestAddress(l.kernel.0)).unwrap();
        assert_ne!(k, b.kernel);
        let no_initrd = BootInputs {
            initrd: None,
            ..b.clone()
        };
        assert!(matches!(
            stage(&mem, 32 << 20, 1, Some(&no_initrd), Some(Tamper::Initrd)),
            Err(BootError::TamperMissing(Tamper::Initrd))
        ));

        // The ACPI blob goes into its slot and the descriptor names it.
        let tables = crate::acpi::build(2, &[]).unwrap();
        stage_acpi(&mem, &l, &tables.blob, None).unwrap();
        let mut t = vec![0; tables.blob.len()];
        mem.read_slice(&mut t, GuestAddress(l.acpi.0)).unwrap();
        assert_eq!(t, tables.blob);
        mem.read_slice(&mut d, GuestAddress(DESCRIPTOR_GPA))
            .unwrap();
        assert_eq!(u64_at(&d, 0x70), l.acpi.0);
        assert_eq!(u64_at(&d, 0x78), tables.blob.len() as u64);
        assert!(matches!(
            stage_acpi(&mem, &l, &vec![0; ACPI_SLOT as usize + 1], None),
            Err(BootError::AcpiTooLarge(_))
        ));
        // Tampering: the size, a checksum, a pointer.
        stage_acpi(&mem, &l, &tables.blob, Some(Tamper::AcpiSize)).unwrap();
        mem.read_slice(&mut d, GuestAddress(DESCRIPTOR_GPA))
            .unwrap();
        assert!(u64_at(&d, 0x78) > ACPI_SLOT);
        stage_acpi(&mem, &l, &tables.blob, Some(Tamper::AcpiChecksum)).unwrap();
        mem.read_slice(&mut t, GuestAddress(l.acpi.0)).unwrap();
        assert_ne!(t, tables.blob);
        stage_acpi(&mem, &l, &tables.blob, Some(Tamper::AcpiPointer)).unwrap();
        mem.read_slice(&mut t, GuestAddress(l.acpi.0)).unwrap();
        let x = (u64_at(&t, 24) - RSDP_GPA) as usize;
        let xlen = u32::from_le_bytes(t[x + 4..x + 8].try_into().unwrap()) as usize;
        assert!(u64_at(&t, x + xlen - 8) >= RSDP_GPA + t.len() as u64);
        assert_eq!(
            t[x..x + xlen].iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0
        );

        // No kernel: a descriptor with zero sizes.
        let l = stage(&mem, 32 << 20, 2, None, None).unwrap();
        assert_eq!(l, StagingLayout::default());
        mem.read_slice(&mut d, GuestAddress(DESCRIPTOR_GPA))
            .unwrap();
        assert_eq!(&d[..8], b"CVMBOOT1");
        assert_eq!(u64_at(&d, 0x10), 0);
        assert_eq!(u64_at(&d, 0x18), 0);
    }
}
