//! Drives the virtio-vsock device model through guest memory, as a hostile guest would.
//!
//! - Raw mode (first byte even): the fuzzer controls all of guest memory — descriptor
//!   tables, rings and packets — and the ring placement.
//! - Packet mode (first byte odd): the harness lays out valid rings and feeds the
//!   fuzzer's packets one by one through the transmit queue (optionally with a valid
//!   source CID, destination CID and type, and aimed at port 1, where a host listener
//!   accepts connections), pumping the device after each, so the connection state
//!   machine (REQUEST, RW, credit, SHUTDOWN, RST…) is reached.
#![no_main]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use host_vmm::devices::virtio::vsock::muxer::Muxer;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::Epoll;

const MEM: usize = 64 << 10;
const QSIZE: u16 = 16;
// Packet mode layout: TX rings, RX rings, TX buffers, RX buffers.
const TX_DESC: u64 = 0x0000;
const TX_AVAIL: u64 = 0x0400;
const TX_USED: u64 = 0x0800;
const RX_DESC: u64 = 0x1000;
const RX_AVAIL: u64 = 0x1400;
const RX_USED: u64 = 0x1800;
const TX_BUF: u64 = 0x2000;
const TX_BUF_LEN: u64 = 0x800;
const RX_BUF: u64 = 0xA000;
const RX_BUF_LEN: u64 = 0x600;

fn base() -> &'static PathBuf {
    static BASE: OnceLock<(tempfile::TempDir, UnixListener, PathBuf)> = OnceLock::new();
    &BASE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join("v");
            let l = UnixListener::bind(dir.path().join("v_1")).unwrap();
            (dir, l, base)
        })
        .2
}

fn queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&d, GuestAddress(table + 16 * u64::from(i)))
        .unwrap();
}

fn publish(mem: &GuestMemoryMmap, avail: u64, idx: u16, head: u16) {
    mem.write_obj(head, GuestAddress(avail + 4 + 2 * u64::from(idx % QSIZE)))
        .unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
        .unwrap();
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let epoll = Arc::new(Epoll::new().unwrap());
    let mut m = Muxer::new(3, epoll, Some(base().clone()), None, None).unwrap();
    if data[0] & 1 == 0 {
        let _ = mem.write_slice(&data[8..data.len().min(MEM + 8)], GuestAddress(0));
        let q = |s: u8, d: u8, a: u8, u: u8| {
            queue(
                1u16 << (s % 5),
                u64::from(d) * 256,
                0x8000 + u64::from(a) * 16,
                0xc000 + u64::from(u) * 16,
            )
        };
        let mut queues = vec![
            q(data[0] >> 1, data[1], data[2], data[3]),
            q(data[4], data[5], data[6], data[7]),
            Queue::new(QSIZE).unwrap(),
        ];
        for _ in 0..3 {
            let _ = m.pump(&mut queues, &mem);
        }
        m.reset();
        return;
    }
    let mut queues = vec![
        queue(QSIZE, RX_DESC, RX_AVAIL, RX_USED),
        queue(QSIZE, TX_DESC, TX_AVAIL, TX_USED),
        Queue::new(QSIZE).unwrap(),
    ];
    // Receive buffers; the number offered comes from the input.
    let rx_bufs = u16::from(data[1]) % (QSIZE + 1);
    for i in 0..rx_bufs {
        desc(
            &mem,
            RX_DESC,
            i,
            RX_BUF + u64::from(i) * RX_BUF_LEN,
            RX_BUF_LEN as u32,
            2,
        );
        publish(&mem, RX_AVAIL, i, i);
    }
    let mut rest = &data[2..];
    let mut i = 0u16;
    while rest.len() > 45 && i < QSIZE {
        let ctl = rest[0];
        let mut hdr = [0u8; 44];
        hdr.copy_from_slice(&rest[1..45]);
        rest = &rest[45..];
        if ctl & 1 != 0 {
            hdr[0..8].copy_from_slice(&3u64.to_le_bytes());
            hdr[8..16].copy_from_slice(&2u64.to_le_bytes());
            hdr[28..30].copy_from_slice(&1u16.to_le_bytes());
        }
        if ctl & 2 != 0 {
            hdr[20..24].copy_from_slice(&1u32.to_le_bytes());
            hdr[16..20].copy_from_slice(&u32::from(ctl >> 4).to_le_bytes());
        }
        let declared = u32::from_le_bytes([hdr[24], hdr[25], hdr[26], hdr[27]]) as usize;
        let n = declared.min(rest.len()).min(TX_BUF_LEN as usize - 44);
        if ctl & 4 != 0 {
            hdr[24..28].copy_from_slice(&(n as u32).to_le_bytes());
        }
        let buf = TX_BUF + u64::from(i % 8) * TX_BUF_LEN;
        mem.write_slice(&hdr, GuestAddress(buf)).unwrap();
        mem.write_slice(&rest[..n], GuestAddress(buf + 44)).unwrap();
        rest = &rest[n..];
        // Optionally split header and payload over two descriptors.
        let d = (2 * i) % QSIZE;
        if ctl & 8 != 0 && n > 0 {
            desc(&mem, TX_DESC, d, buf, 44, 1);
            let mut nd = [0u8; 2];
            nd.copy_from_slice(&(d + 1).to_le_bytes());
            mem.write_slice(&nd, GuestAddress(TX_DESC + 16 * u64::from(d) + 14))
                .unwrap();
            desc(&mem, TX_DESC, d + 1, buf + 44, n as u32, 0);
        } else {
            desc(&mem, TX_DESC, d, buf, 44 + n as u32, 0);
        }
        publish(&mem, TX_AVAIL, i, d);
        let _ = m.pump(&mut queues, &mem);
        i += 1;
    }
    let _ = m.pump(&mut queues, &mem);
    m.reset();
});
