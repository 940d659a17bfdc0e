//! Drives the virtio-blk device model with arbitrary guest memory: the fuzzer controls
//! the descriptor table, the available ring and every buffer, as a hostile guest would.
#![no_main]

use host_vmm::devices::virtio::block::Block;
use host_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let _ = mem.write_slice(&data[4..data.len().min(MEM + 4)], GuestAddress(0));
    // The first bytes choose the queue size and ring placement.
    let size = 1u16 << (data[0] % 5); // 1..16
    let desc = u64::from(data[1]) * 256;
    let avail = 0x8000 + u64::from(data[2]) * 16;
    let used = 0xc000 + u64::from(data[3]) * 16;
    let mut q = Queue::new(16).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);

    let file = tempfile::tempfile().unwrap();
    file.set_len(16 * 512).unwrap();
    let mut blk = Block::with_file(file, 16 * 512, data[0] & 0x80 != 0, [0; 20]);
    let _ = blk.process_queue(0, &mut q, &mem);
});
