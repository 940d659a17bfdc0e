//! Writes the seed corpus of the `virtio_net` fuzz target (fuzz/corpus/virtio_net):
//! inputs whose guest memory holds valid TX rings and frames (plain, partial checksum,
//! TSO4, malformed headers) and valid RX rings, and whose host frames reach the RX path
//! (plain, offloaded, oversized). Layout: see fuzz/fuzz_targets/virtio_net.rs.
//!
//! `cargo run -p host-vmm --example virtio_net_corpus -- fuzz/corpus/virtio_net`

use std::path::PathBuf;

const MEM: usize = 64 << 10;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

fn desc(mem: &mut [u8], table: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let d = &mut mem[table + 16 * i..table + 16 * (i + 1)];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
}

fn publish(mem: &mut [u8], avail: usize, heads: &[u16]) {
    mem[avail + 2..avail + 4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
    for (i, h) in heads.iter().enumerate() {
        mem[avail + 4 + 2 * i..avail + 6 + 2 * i].copy_from_slice(&h.to_le_bytes());
    }
}

fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, off: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso;
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&off.to_le_bytes());
    h
}

/// `tx`: (header, frame length, split into two descriptors); `rx`: buffer sizes;
/// `host`: frames (header included) the tap delivers.
fn build(features: u8, tx: &[([u8; 12], usize, bool)], rx: &[u32], host: &[Vec<u8>]) -> Vec<u8> {
    let mut mem = vec![0u8; MEM];
    let mut heads = Vec::new();
    let mut d = 0usize;
    for (i, (h, len, split)) in tx.iter().enumerate() {
        let buf = 0x4000 + 0x1000 * i;
        mem[buf..buf + 12].copy_from_slice(h);
        for j in 0..*len {
            mem[buf + 12 + j] = j as u8;
        }
        mem[buf + 12..buf + 18].fill(0xff);
        heads.push(d as u16);
        if *split {
            desc(&mut mem, 0, d, buf as u64, 12, NEXT, (d + 1) as u16);
            desc(&mut mem, 0, d + 1, buf as u64 + 12, *len as u32, 0, 0);
            d += 2;
        } else {
            desc(&mut mem, 0, d, buf as u64, (12 + len) as u32, 0, 0);
            d += 1;
        }
    }
    publish(&mut mem, 0x1000, &heads);
    let heads: Vec<u16> = (0..rx.len() as u16).collect();
    for (i, n) in rx.iter().enumerate() {
        desc(&mut mem, 0x2000, i, 0xA000 + 0x800 * i as u64, *n, WRITE, 0);
    }
    publish(&mut mem, 0x3000, &heads);
    // Queue sizes 16/16, the features, the host frame count.
    let mut v = vec![0x44, features, host.len() as u8, 0, 0, 0, 0, 0];
    v.extend_from_slice(&mem);
    for f in host {
        v.extend_from_slice(&(f.len() as u16).to_le_bytes());
        v.extend_from_slice(f);
    }
    v
}

fn host_frame(h: [u8; 12], len: usize) -> Vec<u8> {
    let mut f = h.to_vec();
    f.extend((0..len).map(|i| i as u8));
    f
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("fuzz/corpus/virtio_net".into()),
    );
    std::fs::create_dir_all(&dir)?;
    // FEATURES order: CSUM, GUEST_CSUM, MAC, GUEST_TSO4, GUEST_TSO6, HOST_TSO4, HOST_TSO6.
    let all = 0x7f;
    let csum = 1;
    let put = |name: &str, v: Vec<u8>| std::fs::write(dir.join(name), v);
    put(
        "tx-plain-rx-plain.bin",
        build(
            0,
            &[(hdr(0, 0, 0, 0, 0), 60, true)],
            &[2048, 2048],
            &[host_frame(hdr(0, 0, 0, 0, 0), 60)],
        ),
    )?;
    put(
        "tx-csum-tso4.bin",
        build(
            all,
            &[
                (hdr(csum, 0, 0, 34, 16), 100, false),
                (hdr(csum, 1, 1448, 34, 16), 3000, true),
                (hdr(csum, 4, 1428, 54, 16), 3000, true),
            ],
            &[2048],
            &[],
        ),
    )?;
    put(
        "tx-malformed.bin",
        build(
            csum,
            &[
                (hdr(0x80, 0, 0, 0, 0), 60, false),
                (hdr(csum, 0, 0, 1000, 10), 60, false),
                (hdr(csum, 3, 1448, 34, 6), 60, true),
                (hdr(0, 0, 0, 0, 0), 2, false),
            ],
            &[],
            &[],
        ),
    )?;
    put(
        "rx-offloads-and-sizes.bin",
        build(
            all,
            &[],
            &[2048, 20, 4096, 2048],
            &[
                host_frame(hdr(1, 0, 0, 34, 16), 200),
                host_frame(hdr(0, 0, 0, 0, 0), 1514),
                host_frame(hdr(1, 1, 1448, 34, 16), 3000),
                host_frame(hdr(0, 0, 0, 0, 0), 5),
            ],
        ),
    )?;
    put(
        "rx-unaccepted-offloads.bin",
        build(
            0,
            &[],
            &[2048, 2048],
            &[
                host_frame(hdr(1, 1, 1448, 34, 16), 1000),
                host_frame(hdr(1, 0, 0, 34, 16), 100),
            ],
        ),
    )?;
    Ok(())
}
