//! Throughput of the launch measurements.
//!
//! - `snp_launch_digest/<MiB>`: the PAGE_INFO chain over a firmware image of 1, 4 and
//!   16 MiB (one SHA-384 of each 4 KiB page plus one of its 112-byte PAGE_INFO).
//! - `tdx_mrtd/<MiB>`: MRTD over the same images with MR.EXTEND.
//! - `sha384/16KiB`: bare SHA-384 of 16 KiB blocks, to compare with
//!   `openssl speed -evp sha384 -bytes 16384` on the same machine.
//!
//! Run: `cargo bench -p measured-boot --bench digest`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use measured_boot::snp::{LaunchDigest, LaunchUpdate, PageType, UpdateContents};
use measured_boot::tdx::{MemRegion, Mrtd};
use sha2::{Digest, Sha384};

fn image(mib: usize) -> Vec<u8> {
    (0..mib << 20)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3])
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("snp_launch_digest");
    for mib in [1usize, 4, 16] {
        let img = image(mib);
        g.throughput(Throughput::Bytes(img.len() as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{mib}MiB")),
            &img,
            |b, img| {
                b.iter(|| {
                    let mut ld = LaunchDigest::new();
                    let gpa = (1u64 << 32) - img.len() as u64;
                    ld.update(&LaunchUpdate {
                        gpa,
                        page_type: PageType::Normal,
                        contents: UpdateContents::Data(img),
                    });
                    ld.value()
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("tdx_mrtd");
    for mib in [1usize, 4, 16] {
        let img = image(mib);
        g.throughput(Throughput::Bytes(img.len() as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{mib}MiB")),
            &img,
            |b, img| {
                b.iter(|| {
                    let mut m = Mrtd::new();
                    m.add_region(&MemRegion {
                        gpa: (1u64 << 32) - img.len() as u64,
                        data: img,
                        measure: true,
                    });
                    m.value()
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("sha384");
    let block = image(1)[..16384].to_vec();
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("16KiB", |b| b.iter(|| Sha384::digest(&block)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
