//! virtio-vsock (virtio 1.2 §5.10, device id 19) over the MMIO transport, with
//! Firecracker-style hybrid vsock and the attestation relay.
//!
//! - **Guest → host**: a guest connection to CID 2 port P reaches the Unix socket
//!   `<uds>_P`; port [`RELAY_PORT`] (50000) reaches the verifier through the attestation
//!   relay when one is configured (one TCP or TLS connection per guest connection, bytes
//!   copied both ways, never parsed); port [`EVIDENCE_PORT`] (50001) reaches the
//!   emulated TEE's evidence service under `emulated-snp`/`emulated-tdx` only
//!   ([`crate::tee::evidence_vsock`]) and is refused otherwise. Anything else is
//!   refused with RST.
//! - **Host → guest**: the VMM listens on `<uds>`; a host client sends
//!   `CONNECT <port>\n`, receives `OK <hostport>\n` once the guest accepted, then the
//!   stream. A refused or invalid request closes the client's socket.
//! - Stream sockets only, credit-based flow control (buf_alloc / fwd_cnt,
//!   CREDIT_UPDATE / CREDIT_REQUEST), SHUTDOWN and RST, bounded buffers and connection
//!   counts (see [`muxer`]).
//! - The event queue is never used: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET is needed only
//!   when the guest's CID changes under it (migration), which this VMM never does.
//!
//! # Threads
//! All connection work happens on one event thread (epoll, edge-triggered, vmm-sys-util)
//! under the transport's lock: a guest notification only wakes that thread through an
//! eventfd, so vCPU threads never touch a socket and their seccomp filter needs nothing
//! new. The event thread's filter adds exactly the socket calls it makes.

pub mod backend;
pub mod muxer;
pub mod packet;

use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

pub use backend::{RelayConfig, RelayError};
pub use muxer::{Muxer, EVIDENCE_PORT, RELAY_PORT};

use super::mmio::MmioTransport;
use super::{read_config_bytes, VirtioDevice};
use muxer::{EVQ, TOKEN_WAKE, TXQ};

/// Virtio device id of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Epoll token that stops the event thread.
pub const TOKEN_STOP: u64 = 0;

/// The vsock device's configuration.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's CID (3 by default).
    pub guest_cid: u64,
    /// Hybrid vsock base path: listener at PATH, guest connections to port P at PATH_P.
    pub uds: Option<PathBuf>,
    /// The attestation relay.
    pub relay: Option<RelayConfig>,
}

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The Unix listener could not be bound.
    #[error("cannot listen on the vsock Unix socket {0} (it must not exist yet)")]
    Bind(PathBuf, #[source] std::io::Error),
    /// epoll or an eventfd could not be created.
    #[error("cannot set up the vsock event loop")]
    EventLoop(#[source] std::io::Error),
}

/// The virtio-vsock device model.
pub struct Vsock {
    config: [u8; 8],
    wake: EventFd,
    muxer: Muxer,
    queue_sizes: [u16; 3],
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock").field("muxer", &self.muxer).finish()
    }
}

impl Vsock {
    /// Creates the device and registers its wake eventfd and listener with `epoll`.
    pub fn new(config: &VsockConfig, epoll: Arc<Epoll>) -> Result<Self, VsockError> {
        let listener = config
            .uds
            .as_ref()
            .map(|p| UnixListener::bind(p).map_err(|e| VsockError::Bind(p.clone(), e)))
            .transpose()?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventLoop)?;
        epoll
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_WAKE),
            )
            .map_err(VsockError::EventLoop)?;
        let muxer = Muxer::new(
            config.guest_cid,
            epoll,
            config.uds.clone(),
            listener,
            config.relay.clone(),
        )
        .map_err(VsockError::EventLoop)?;
        Ok(Self {
            config: config.guest_cid.to_le_bytes(),
            wake,
            muxer,
            queue_sizes: [QUEUE_SIZE; 3],
        })
    }

    /// Offers the emulated TEE's evidence service (see [`muxer`]).
    pub fn set_evidence(&mut self, service: crate::tee::evidence_vsock::EvidenceService) {
        self.muxer.set_evidence(service);
    }

    /// The multiplexer (tests).
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, _queue: &mut Queue, _mem: &GuestMemoryMmap) -> bool {
        // The event thread does the work; the event queue needs none.
        if index != EVQ {
            let _ = self.wake.write(1);
        }
        false
    }

    fn backend_event(
        &mut self,
        token: u64,
        events: u32,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> u32 {
        if token == TOKEN_WAKE {
            let _ = self.wake.read();
        }
        let running = queues.len() > TXQ;
        self.muxer.event(token, events, running);
        if running {
            self.muxer.pump(queues, mem)
        } else {
            0
        }
    }

    fn reset(&mut self) {
        self.muxer.reset();
    }
}

/// Runs the vsock event loop until `TOKEN_STOP` fires: every readiness event is handed
/// to the device through its transport.
pub fn event_loop(epoll: &Epoll, transport: &Mutex<MmioTransport>) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "vsock event loop failed");
                return;
            }
        };
        for ev in &events[..n] {
            if ev.data() == TOKEN_STOP {
                return;
            }
            if let Ok(mut t) = transport.lock() {
                t.backend_event(ev.data(), ev.events());
            }
        }
    }
}

#[cfg(test)]
mod tests;
