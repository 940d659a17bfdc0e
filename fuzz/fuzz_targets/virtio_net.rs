//! Drives the virtio-net device model as a hostile guest and a hostile network would:
//! the fuzzer controls all of guest memory (descriptor tables, rings, frames and their
//! virtio headers) and the frames the "tap" (a SOCK_SEQPACKET socket pair) delivers,
//! and which features the guest negotiated.
//!
//! Input: byte 0 selects queue sizes (low nibble: TX, high: RX, as 2^(n%5)); byte 1 the
//! negotiated features (bit i: the i-th offered feature, in `FEATURES` order); byte 2
//! the number of host frames; bytes 3..7 reserved; then `MEM` bytes of guest memory
//! (TX ring at 0x0000/0x1000/0x1400, RX ring at 0x2000/0x3000/0x3400); then host frames
//! as (u16 little-endian length, bytes).
#![no_main]

use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};

use host_vmm::devices::virtio::net::{Net, FEATURES, TOKEN_TAP, TOKEN_WAKE};
use host_vmm::devices::virtio::{VirtioDevice, F_VERSION_1};
use host_vmm::net::{MacAddr, RateLimits, Tap};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::Epoll;

const MEM: usize = 64 << 10;

fn queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

fn pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair returns.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both were just created and are owned here.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let body = &data[8..];
    let image = &body[..body.len().min(MEM)];
    let _ = mem.write_slice(image, GuestAddress(0));
    let tx_size = 1u16 << ((data[0] & 0xf) % 5);
    let rx_size = 1u16 << ((data[0] >> 4) % 5);
    let offered: Vec<u64> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|f| FEATURES & f != 0)
        .collect();
    let features = offered
        .iter()
        .enumerate()
        .filter(|(i, _)| data[1] & (1 << i) != 0)
        .fold(F_VERSION_1, |a, (_, f)| a | f);

    let (dev_end, host_end) = pair();
    let epoll = Epoll::new().unwrap();
    let mut net = Net::new(
        Tap::from_fd(dev_end, "fuzz0"),
        MacAddr([2, 0, 0, 0, 0, 1]),
        RateLimits::default(),
        &epoll,
    )
    .unwrap();
    net.activate(features);
    // Host frames.
    let mut rest = body.get(MEM..).unwrap_or(&[]);
    for _ in 0..data[2].min(16) {
        if rest.len() < 2 {
            break;
        }
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let f = &rest[2..2 + n];
        // SAFETY: `f` is a readable buffer of its length.
        unsafe { libc::send(host_end.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        rest = &rest[2 + n..];
    }
    let mut qs = [
        queue(rx_size, 0x2000, 0x3000, 0x3400),
        queue(tx_size, 0x0000, 0x1000, 0x1400),
    ];
    net.backend_event(TOKEN_WAKE, 0, &mut qs, &mem);
    net.backend_event(TOKEN_TAP, 0, &mut qs, &mem);
    // Drain what reached the tap.
    let mut buf = vec![0u8; 70_000];
    // SAFETY: `buf` is a writable buffer of its length.
    while unsafe { libc::recv(host_end.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } > 0 {}
});
