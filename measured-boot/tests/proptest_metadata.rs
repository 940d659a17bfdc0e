//! Property tests of the firmware-metadata parsers: valid tables round-trip, and any
//! input — random or a corrupted valid image — parses to sections that satisfy the
//! documented invariants or to an error, never a panic.

use measured_boot::firmware::sev::SevSection;
use measured_boot::firmware::tdx::TdvfSection;
use measured_boot::firmware::{FOUR_GIB, PAGE_SIZE};
use measured_boot::testing::{ovmf_like, sev_image, tdx_image};
use measured_boot::FirmwareImage;
use proptest::prelude::*;

fn sev_invariants(fw: &FirmwareImage, s: &[SevSection]) {
    for (i, a) in s.iter().enumerate() {
        assert!(a.size > 0 && a.gpa % PAGE_SIZE == 0 && a.size % PAGE_SIZE == 0);
        assert!(a.gpa + a.size <= fw.gpa() && a.gpa + a.size <= FOUR_GIB);
        for b in &s[i + 1..] {
            assert!(
                a.gpa + a.size <= b.gpa || b.gpa + b.size <= a.gpa,
                "overlap accepted"
            );
        }
    }
}

fn tdx_invariants(fw: &FirmwareImage, s: &[TdvfSection]) {
    for (i, a) in s.iter().enumerate() {
        assert!(a.mem_size > 0 && a.gpa % PAGE_SIZE == 0 && a.mem_size % PAGE_SIZE == 0);
        assert!(u64::from(a.raw_size) <= a.mem_size);
        assert!(a.data_offset as usize + a.raw_size as usize <= fw.data().len());
        for b in &s[i + 1..] {
            assert!(
                a.gpa + a.mem_size <= b.gpa || b.gpa + b.mem_size <= a.gpa,
                "overlap accepted"
            );
        }
    }
}

fn check_any(img: Vec<u8>) {
    if let Ok(fw) = FirmwareImage::parse(img) {
        if let Ok(s) = fw.sev_metadata() {
            sev_invariants(&fw, &s);
        }
        if let Ok(s) = fw.tdx_metadata() {
            tdx_invariants(&fw, &s);
        }
        let _ = fw.sev_es_reset_eip();
        let _ = fw.sev_hashes_table_gpa();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_sev_tables_round_trip(pages in proptest::collection::vec((1u32..8, prop::sample::select(vec![1u32, 4])), 1..12)) {
        // Lay sections out back to back from 8 MiB (ZERO-like types may be any size).
        let mut gpa = 0x80_0000u32;
        let mut triples = Vec::new();
        for (n, t) in &pages {
            triples.push((gpa, n * 4096, *t));
            gpa += n * 4096;
        }
        let fw = FirmwareImage::parse(sev_image(0x4000, &triples)).unwrap();
        let parsed = fw.sev_metadata().unwrap();
        let back: Vec<_> = parsed.iter().map(|s| (s.gpa as u32, s.size as u32, s.section_type.raw())).collect();
        prop_assert_eq!(back, triples);
    }

    #[test]
    fn valid_tdx_tables_round_trip(sizes in proptest::collection::vec(1u64..16, 1..8)) {
        let mut gpa = 0x80_0000u64;
        let mut secs = Vec::new();
        for n in &sizes {
            secs.push((0u32, 0u32, gpa, n * 4096, 3u32, 0u32));
            gpa += n * 4096;
        }
        let fw = FirmwareImage::parse(tdx_image(0x4000, &secs)).unwrap();
        let parsed = fw.tdx_metadata().unwrap();
        prop_assert_eq!(parsed.len(), secs.len());
        for (p, s) in parsed.iter().zip(&secs) {
            prop_assert_eq!((p.gpa, p.mem_size), (s.2, s.3));
        }
    }

    #[test]
    fn random_images_never_panic(mut img in proptest::collection::vec(any::<u8>(), 4096..=4096)) {
        // Give half of them a footer so the table walker is exercised too.
        if img[0] & 1 == 1 {
            let footer = measured_boot::firmware::FOOTER_GUID;
            let len = (img[1] as u16).max(18);
            img[4096 - 50..4096 - 48].copy_from_slice(&len.to_le_bytes());
            img[4096 - 48..4096 - 32].copy_from_slice(footer.as_bytes());
        }
        check_any(img);
    }

    #[test]
    fn corrupted_valid_images_keep_invariants(flips in proptest::collection::vec((0usize..0x10000, any::<u8>()), 1..6)) {
        let mut img = ovmf_like(0x10000);
        for (pos, x) in flips {
            // Aim most corruption at the metadata and the footer table.
            let p = match pos % 3 { 0 => 0x100 + pos % 0x80, 1 => 0x400 + pos % 0x70, _ => 0x10000 - 32 - 1 - pos % 140 };
            img[p] ^= x | 1;
        }
        check_any(img);
    }
}
