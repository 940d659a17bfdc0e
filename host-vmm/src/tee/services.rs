//! Run-time services a real SNP or TDX guest asks of its VMM, beyond devices:
//! private/shared conversions (see [`crate::vstate::private`]), TDX `GetQuote` forwarded
//! to Intel's Quote Generation Service (QGS), TDX `SetupEventNotifyInterrupt` and
//! `GetTdVmCallInfo`, and SEV-SNP extended-report certificates (`KVM_EXIT_SNP_REQ_CERTS`,
//! Linux 7.0).
//!
//! Layouts (Linux uapi, offsets from the start of the `kvm_run` exit union):
//! - `KVM_EXIT_TDX` (40): flags @0, nr @8, then `ret` @16 and per call: GetQuote
//!   {gpa @24, size @32}; GetTdVmCallInfo {leaf @24, r11..r14 @32..56};
//!   SetupEventNotifyInterrupt {vector @24}.
//! - `KVM_EXIT_SNP_REQ_CERTS` (43): gpa @0, npages @8, ret @16 (0, or a positive errno:
//!   ENOSPC with `npages` set to what is needed, EAGAIN, EIO).
//!
//! GetQuote is asynchronous as in QEMU: the vCPU marks the guest's buffer IN_FLIGHT and
//! returns at once; a dedicated thread talks to QGS (one request per connection, a
//! 4-byte big-endian length, a 16-byte `qgs_msg` header version 1.1, 30 s timeout),
//! writes the quote and the status into the shared buffer, and raises the guest's
//! notification vector. The VMM never interprets the quote: the verifier does.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// TDVMCALL leaf `GetTdVmCallInfo`.
pub const TDVMCALL_GET_TD_VM_CALL_INFO: u64 = 0x10000;
/// TDVMCALL leaf `GetQuote`.
pub const TDVMCALL_GET_QUOTE: u64 = 0x10002;
/// TDVMCALL leaf `SetupEventNotifyInterrupt`.
pub const TDVMCALL_SETUP_EVENT_NOTIFY: u64 = 0x10004;
/// TDVMCALL status: success.
pub const TDVMCALL_SUCCESS: u64 = 0;
/// TDVMCALL status: retry later.
pub const TDVMCALL_RETRY: u64 = 1;
/// TDVMCALL status: invalid operand.
pub const TDVMCALL_INVALID_OPERAND: u64 = 0x8000_0000_0000_0000;
/// TDVMCALL status: misaligned operand.
pub const TDVMCALL_ALIGN_ERROR: u64 = 0x8000_0000_0000_0002;
/// TDVMCALL status: not supported.
pub const TDVMCALL_SUBFUNC_UNSUPPORTED: u64 = 0x8000_0000_0000_0003;
/// `GetTdVmCallInfo` leaf 1, R11 bit 1: SetupEventNotifyInterrupt is supported.
pub const TDVMCALLINFO_SETUP_EVENT_NOTIFY: u64 = 1 << 1;

/// GetQuote buffer status: done.
pub const QUOTE_SUCCESS: u64 = 0;
/// GetQuote buffer status: the VMM is working on it.
pub const QUOTE_IN_FLIGHT: u64 = u64::MAX;
/// GetQuote buffer status: failed.
pub const QUOTE_ERROR: u64 = 0x8000_0000_0000_0000;
/// GetQuote buffer status: no quote service.
pub const QUOTE_SERVICE_UNAVAILABLE: u64 = 0x8000_0000_0000_0001;
/// Size of the GetQuote buffer header.
pub const QUOTE_HEADER: u64 = 24;
/// Largest GetQuote buffer accepted (as QEMU).
pub const QUOTE_MAX_BUFFER: u64 = 128 << 10;
/// Most GetQuote requests in flight at once.
pub const QUOTE_MAX_IN_FLIGHT: u64 = 16;
/// How long QGS may take.
pub const QGS_TIMEOUT: Duration = Duration::from_secs(30);

fn word(b: &[u8; 256], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn set_word(b: &mut [u8; 256], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// One GetQuote request handed to the quote thread.
#[derive(Debug)]
pub struct QuoteJob {
    /// Guest buffer (shared memory).
    pub gpa: u64,
    /// Its size.
    pub size: u64,
    /// The TDREPORT the guest placed in it.
    pub report: Vec<u8>,
}

/// Where the guest's notification interrupt goes: (APIC ID, vector).
pub type Notify = Arc<Mutex<Option<(u32, u8)>>>;

/// The TDVMCALLs KVM forwards to the VMM.
#[derive(Debug)]
pub struct TdVmcalls {
    mem: GuestMemoryMmap,
    quotes: Option<mpsc::SyncSender<QuoteJob>>,
    in_flight: Arc<AtomicU64>,
    notify: Notify,
    /// `GetTdVmCallInfo` leaf-1 R11 bits KVM handles itself.
    kernel_r11: u64,
    /// The bits KVM lets userspace offer.
    user_r11: u64,
}

impl TdVmcalls {
    /// TDVMCALL handling over guest memory `mem`; `quotes` feeds the quote thread
    /// (`None`: no quote service configured, GetQuote answers SERVICE_UNAVAILABLE).
    pub fn new(
        mem: GuestMemoryMmap,
        quotes: Option<(mpsc::SyncSender<QuoteJob>, Arc<AtomicU64>)>,
        notify: Notify,
        kernel_r11: u64,
        user_r11: u64,
    ) -> Self {
        let (quotes, in_flight) = match quotes {
            Some((q, n)) => (Some(q), n),
            None => (None, Arc::new(AtomicU64::new(0))),
        };
        Self {
            mem,
            quotes,
            in_flight,
            notify,
            kernel_r11,
            user_r11,
        }
    }

    /// Handles one `KVM_EXIT_TDX` from vCPU `vcpu` (its APIC ID), answering in `exit`.
    pub fn handle(&self, vcpu: u32, exit: &mut [u8; 256]) {
        let ret = match word(exit, 8) {
            TDVMCALL_GET_QUOTE => self.get_quote(word(exit, 24), word(exit, 32)),
            TDVMCALL_SETUP_EVENT_NOTIFY => {
                // KVM has already refused vectors outside 32..=255.
                let vector = word(exit, 24);
                match u8::try_from(vector) {
                    Ok(v) if v >= 32 => {
                        *self.notify.lock().unwrap_or_else(|e| e.into_inner()) = Some((vcpu, v));
                        TDVMCALL_SUCCESS
                    }
                    _ => TDVMCALL_INVALID_OPERAND,
                }
            }
            TDVMCALL_GET_TD_VM_CALL_INFO if word(exit, 24) == 1 => {
                let r11 = (self.user_r11 & TDVMCALLINFO_SETUP_EVENT_NOTIFY) | self.kernel_r11;
                set_word(exit, 32, r11);
                for at in [40, 48, 56] {
                    set_word(exit, at, 0);
                }
                TDVMCALL_SUCCESS
            }
            TDVMCALL_GET_TD_VM_CALL_INFO => TDVMCALL_INVALID_OPERAND,
            _ => TDVMCALL_SUBFUNC_UNSUPPORTED,
        };
        set_word(exit, 16, ret);
    }

    fn get_quote(&self, gpa: u64, size: u64) -> u64 {
        if size == 0 || size > QUOTE_MAX_BUFFER {
            return TDVMCALL_INVALID_OPERAND;
        }
        if gpa % 4096 != 0 || size % 4096 != 0 {
            return TDVMCALL_ALIGN_ERROR;
        }
        let mut header = [0u8; 24];
        if self.mem.read_slice(&mut header, GuestAddress(gpa)).is_err() {
            return TDVMCALL_INVALID_OPERAND;
        }
        let version = u64::from_le_bytes(header[0..8].try_into().unwrap_or_default());
        let in_len = u64::from(u32::from_le_bytes(
            header[16..20].try_into().unwrap_or_default(),
        ));
        if version != 1 || in_len > size - QUOTE_HEADER || in_len == 0 {
            return TDVMCALL_INVALID_OPERAND;
        }
        // The whole buffer must be guest memory before anything is promised.
        if self
            .mem
            .read_slice(&mut [0u8; 1], GuestAddress(gpa + size - 1))
            .is_err()
        {
            return TDVMCALL_INVALID_OPERAND;
        }
        let status = |s: u64| {
            let _ = self.mem.write_obj(s, GuestAddress(gpa + 8));
        };
        let Some(quotes) = &self.quotes else {
            status(QUOTE_SERVICE_UNAVAILABLE);
            return TDVMCALL_SUCCESS;
        };
        if self.in_flight.load(Ordering::Acquire) >= QUOTE_MAX_IN_FLIGHT {
            return TDVMCALL_RETRY;
        }
        let mut report = vec![0u8; in_len as usize];
        if self
            .mem
            .read_slice(&mut report, GuestAddress(gpa + QUOTE_HEADER))
            .is_err()
        {
            return TDVMCALL_INVALID_OPERAND;
        }
        status(QUOTE_IN_FLIGHT);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if quotes.try_send(QuoteJob { gpa, size, report }).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            status(QUOTE_SERVICE_UNAVAILABLE);
        }
        TDVMCALL_SUCCESS
    }
}

/// QGS message types.
const QGS_GET_QUOTE_REQ: u32 = 0;
const QGS_GET_QUOTE_RESP: u32 = 1;

/// The GET_QUOTE_REQ message for `report`, with its 4-byte big-endian length prefix.
pub fn qgs_request(report: &[u8]) -> Vec<u8> {
    let size = 24 + report.len() as u32;
    let mut m = Vec::with_capacity(4 + size as usize);
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(&1u16.to_le_bytes()); // major
    m.extend_from_slice(&1u16.to_le_bytes()); // minor
    m.extend_from_slice(&QGS_GET_QUOTE_REQ.to_le_bytes());
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // error_code
    m.extend_from_slice(&(report.len() as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // id_list_size
    m.extend_from_slice(report);
    m
}

/// Why a GetQuote exchange with QGS failed.
#[derive(Debug, thiserror::Error)]
pub enum QgsError {
    /// The socket could not be reached or used.
    #[error("cannot {what} QGS at {}", .socket.display())]
    Io {
        /// What failed.
        what: &'static str,
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The response is malformed or reports an error.
    #[error("QGS response refused: {0}")]
    Response(String),
}

/// Parses a GET_QUOTE_RESP message body (after the length prefix) into the quote.
pub fn qgs_response(m: &[u8]) -> Result<Vec<u8>, QgsError> {
    let bad = |why: String| Err(QgsError::Response(why));
    if m.len() < 24 {
        return bad(format!("{} bytes is truncated", m.len()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([m[o], m[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([m[o], m[o + 1], m[o + 2], m[o + 3]]);
    if u16_at(0) != 1 {
        return bad(format!(
            "message version {}.{} (need 1.x)",
            u16_at(0),
            u16_at(2)
        ));
    }
    if u32_at(4) != QGS_GET_QUOTE_RESP {
        return bad(format!("message type {}", u32_at(4)));
    }
    if u32_at(8) as usize != m.len() {
        return bad(format!(
            "message size {} but {} bytes received",
            u32_at(8),
            m.len()
        ));
    }
    if u32_at(12) != 0 {
        return bad(format!("QGS error {:#x}", u32_at(12)));
    }
    let (ids, quote) = (u32_at(16) as usize, u32_at(20) as usize);
    if ids != 0 || quote == 0 || 24 + quote != m.len() {
        return bad(format!(
            "sizes do not add up: ids {ids}, quote {quote}, message {}",
            m.len()
        ));
    }
    Ok(m[24..].to_vec())
}

/// One GetQuote exchange with QGS at `socket`.
pub fn qgs_get_quote(socket: &std::path::Path, report: &[u8]) -> Result<Vec<u8>, QgsError> {
    let io = |what| {
        move |source| QgsError::Io {
            what,
            socket: socket.to_owned(),
            source,
        }
    };
    let mut s = UnixStream::connect(socket).map_err(io("reach"))?;
    s.set_read_timeout(Some(QGS_TIMEOUT))
        .map_err(io("set a timeout on"))?;
    s.set_write_timeout(Some(QGS_TIMEOUT))
        .map_err(io("set a timeout on"))?;
    s.write_all(&qgs_request(report))
        .map_err(io("send the request to"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(io("read the response from"))?;
    let len = u32::from_be_bytes(len) as usize;
    if !(24..=QUOTE_MAX_BUFFER as usize).contains(&len) {
        return Err(QgsError::Response(format!("length {len} out of range")));
    }
    let mut m = vec![0u8; len];
    s.read_exact(&mut m).map_err(io("read the response from"))?;
    qgs_response(&m)
}

/// Something that raises an interrupt vector on a vCPU (KVM_SIGNAL_MSI).
pub trait Interrupt: Send {
    /// Raises `vector` on the vCPU with APIC ID `apic`.
    fn raise(&self, apic: u32, vector: u8) -> Result<(), kvm_ioctls::Error>;
}

/// Serves GetQuote jobs until the channel closes: asks QGS at `socket`, writes the
/// quote (or the failure status) into the guest's buffer, then raises the notification.
pub fn quote_worker(
    jobs: mpsc::Receiver<QuoteJob>,
    mem: GuestMemoryMmap,
    socket: PathBuf,
    in_flight: Arc<AtomicU64>,
    notify: Notify,
    irq: impl Interrupt,
) {
    for job in jobs {
        let result = qgs_get_quote(&socket, &job.report);
        complete_quote(&mem, &job, result);
        in_flight.fetch_sub(1, Ordering::AcqRel);
        let target = *notify.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((apic, vector)) = target {
            if let Err(e) = irq.raise(apic, vector) {
                tracing::warn!(error = %e, "cannot notify the TD of a finished quote");
            }
        }
    }
}

/// Writes a finished GetQuote into the guest buffer: the quote at +24 and `out_len`
/// first, the status last, so a guest polling the status never sees a half quote.
pub fn complete_quote(mem: &GuestMemoryMmap, job: &QuoteJob, result: Result<Vec<u8>, QgsError>) {
    let status = match result {
        Ok(q) if q.len() as u64 <= job.size - QUOTE_HEADER => {
            let ok = mem
                .write_slice(&q, GuestAddress(job.gpa + QUOTE_HEADER))
                .and_then(|()| mem.write_obj(q.len() as u32, GuestAddress(job.gpa + 20)));
            tracing::info!(event = "quote", bytes = q.len(), "TD quote delivered");
            if ok.is_ok() {
                QUOTE_SUCCESS
            } else {
                QUOTE_ERROR
            }
        }
        Ok(q) => {
            tracing::warn!(
                quote = q.len(),
                buffer = job.size,
                "TD quote does not fit the guest's buffer"
            );
            QUOTE_ERROR
        }
        Err(e) => {
            tracing::warn!(error = %e, "GetQuote failed");
            QUOTE_ERROR
        }
    };
    std::sync::atomic::fence(Ordering::Release);
    let _ = mem.write_obj(status, GuestAddress(job.gpa + 8));
}

/// GUIDs of the GHCB certificate table entries.
pub const CERT_GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
/// ASK.
pub const CERT_GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
/// VCEK.
pub const CERT_GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
/// VLEK.
pub const CERT_GUID_VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";

/// Why a certificate table is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertTableError {
    /// No zero entry ends the table.
    #[error("certificate table has no terminating zero entry")]
    Unterminated,
    /// Only the zero entry.
    #[error("certificate table is empty")]
    Empty,
    /// An entry's blob is not inside the table's data.
    #[error("certificate table entry {entry}: blob {off:#x}+{len:#x} is outside the table's data")]
    Blob {
        /// Entry index.
        entry: usize,
        /// Blob offset.
        off: usize,
        /// Blob length.
        len: usize,
    },
    /// A GUID is malformed.
    #[error("bad GUID {0}")]
    Guid(String),
}

/// A GHCB certificate table (24-byte entries {GUID, offset, length}, a zero entry,
/// then the DER blobs), checked when loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTable(Vec<u8>);

impl CertTable {
    /// Checks `b`: entries end with a zero entry; every blob lies inside `b`, after
    /// the table; at least one entry.
    pub fn parse(b: Vec<u8>) -> Result<Self, CertTableError> {
        let mut i = 0;
        loop {
            let e = b
                .get(i * 24..i * 24 + 24)
                .ok_or(CertTableError::Unterminated)?;
            if e.iter().all(|&x| x == 0) {
                break;
            }
            i += 1;
        }
        if i == 0 {
            return Err(CertTableError::Empty);
        }
        let table_end = (i + 1) * 24;
        for k in 0..i {
            let e = &b[k * 24..k * 24 + 24];
            let off = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
            let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
            if off < table_end || off.checked_add(len).is_none_or(|end| end > b.len()) || len == 0 {
                return Err(CertTableError::Blob { entry: k, off, len });
            }
        }
        Ok(Self(b))
    }

    /// Builds a table from (GUID, DER) pairs.
    pub fn build(certs: &[(&str, &[u8])]) -> Result<Self, CertTableError> {
        let mut table = Vec::new();
        let mut data = Vec::new();
        let base = (certs.len() + 1) * 24;
        for (guid, der) in certs {
            let g = uuid_bytes(guid)?;
            table.extend_from_slice(&g);
            table.extend_from_slice(&((base + data.len()) as u32).to_le_bytes());
            table.extend_from_slice(&(der.len() as u32).to_le_bytes());
            data.extend_from_slice(der);
        }
        table.extend_from_slice(&[0; 24]);
        table.extend_from_slice(&data);
        Self::parse(table)
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Answers a `KVM_EXIT_SNP_REQ_CERTS` (`exit`: gpa @0, npages @8, ret @16).
    pub fn serve(&self, mem: &GuestMemoryMmap, exit: &mut [u8; 256]) {
        let (gpa, npages) = (word(exit, 0), word(exit, 8));
        let need = (self.0.len() as u64).div_ceil(4096);
        let ret = if npages < need {
            set_word(exit, 8, need);
            libc::ENOSPC as u64
        } else if mem.write_slice(&self.0, GuestAddress(gpa)).is_err() {
            libc::EIO as u64
        } else {
            0
        };
        set_word(exit, 16, ret);
    }
}

fn uuid_bytes(s: &str) -> Result<[u8; 16], CertTableError> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let bad = || CertTableError::Guid(s.to_owned());
    let v = hex::decode(&hex).map_err(|_| bad())?;
    v.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn exit(nr: u64, a: u64, b: u64) -> [u8; 256] {
        let mut e = [0u8; 256];
        set_word(&mut e, 8, nr);
        set_word(&mut e, 16, TDVMCALL_SUBFUNC_UNSUPPORTED);
        set_word(&mut e, 24, a);
        set_word(&mut e, 32, b);
        e
    }

    fn quote_buffer(m: &GuestMemoryMmap, gpa: u64, version: u64, in_len: u32) {
        m.write_obj(version, GuestAddress(gpa)).unwrap();
        m.write_obj(0u64, GuestAddress(gpa + 8)).unwrap();
        m.write_obj(in_len, GuestAddress(gpa + 16)).unwrap();
        m.write_slice(&vec![0xAB; in_len as usize], GuestAddress(gpa + 24))
            .unwrap();
    }

    #[test]
    fn get_quote_goes_in_flight_then_completes_status_last() {
        let m = mem();
        let (tx, rx) = mpsc::sync_channel(4);
        let n = Arc::new(AtomicU64::new(0));
        let notify: Notify = Arc::default();
        let calls = TdVmcalls::new(m.clone(), Some((tx, n.clone())), notify.clone(), 0, 2);
        quote_buffer(&m, 0x2000, 1, 1024);
        let mut e = exit(TDVMCALL_GET_QUOTE, 0x2000, 0x2000);
        calls.handle(0, &mut e);
        assert_eq!(word(&e, 16), TDVMCALL_SUCCESS);
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(0x2008)).unwrap(),
            QUOTE_IN_FLIGHT
        );
        let job = rx.try_recv().unwrap();
        assert_eq!(
            (job.gpa, job.size, job.report.len()),
            (0x2000, 0x2000, 1024)
        );
        assert!(job.report.iter().all(|&b| b == 0xAB));
        assert_eq!(n.load(Ordering::Acquire), 1);
        complete_quote(&m, &job, Ok(vec![7; 100]));
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(0x2008)).unwrap(),
            QUOTE_SUCCESS
        );
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x2014)).unwrap(), 100);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2018)).unwrap(), 7);
        // A quote larger than the buffer, or a QGS failure, is an error status.
        complete_quote(&m, &job, Ok(vec![7; 0x2000]));
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(0x2008)).unwrap(),
            QUOTE_ERROR
        );
        complete_quote(&m, &job, Err(QgsError::Response("down".into())));
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(0x2008)).unwrap(),
            QUOTE_ERROR
        );
    }

    #[test]
    fn bad_get_quote_requests_are_refused() {
        let m = mem();
        let (tx, rx) = mpsc::sync_channel(4);
        let n = Arc::new(AtomicU64::new(0));
        let calls = TdVmcalls::new(m.clone(), Some((tx, n.clone())), Arc::default(), 0, 0);
        quote_buffer(&m, 0x2000, 1, 1024);
        let ret = |gpa, size| {
            let mut e = exit(TDVMCALL_GET_QUOTE, gpa, size);
            calls.handle(0, &mut e);
            word(&e, 16)
        };
        assert_eq!(ret(0x2000, 0), TDVMCALL_INVALID_OPERAND);
        assert_eq!(ret(0x2000, 256 << 10), TDVMCALL_INVALID_OPERAND);
        assert_eq!(ret(0x2100, 0x1000), TDVMCALL_ALIGN_ERROR);
        assert_eq!(
            ret(0xFF000, 0x2000),
            TDVMCALL_INVALID_OPERAND,
            "runs past memory"
        );
        quote_buffer(&m, 0x4000, 2, 16);
        assert_eq!(ret(0x4000, 0x1000), TDVMCALL_INVALID_OPERAND, "version 2");
        quote_buffer(&m, 0x4000, 1, 0x1000);
        assert_eq!(
            ret(0x4000, 0x1000),
            TDVMCALL_INVALID_OPERAND,
            "in_len too big"
        );
        assert!(rx.try_recv().is_err(), "nothing was queued");
        n.store(QUOTE_MAX_IN_FLIGHT, Ordering::Release);
        assert_eq!(ret(0x2000, 0x2000), TDVMCALL_RETRY);
        // Without a quote service: SUCCESS with SERVICE_UNAVAILABLE in the buffer.
        let none = TdVmcalls::new(m.clone(), None, Arc::default(), 0, 0);
        let mut e = exit(TDVMCALL_GET_QUOTE, 0x2000, 0x2000);
        none.handle(0, &mut e);
        assert_eq!(word(&e, 16), TDVMCALL_SUCCESS);
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(0x2008)).unwrap(),
            QUOTE_SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn notify_vector_and_vmcall_info() {
        let notify: Notify = Arc::default();
        let calls = TdVmcalls::new(mem(), None, notify.clone(), 0x1, 0x2);
        let mut e = exit(TDVMCALL_SETUP_EVENT_NOTIFY, 0x40, 0);
        calls.handle(3, &mut e);
        assert_eq!(word(&e, 16), TDVMCALL_SUCCESS);
        assert_eq!(*notify.lock().unwrap(), Some((3, 0x40)));
        let mut e = exit(TDVMCALL_SETUP_EVENT_NOTIFY, 0x10, 0);
        calls.handle(3, &mut e);
        assert_eq!(word(&e, 16), TDVMCALL_INVALID_OPERAND);
        let mut e = exit(TDVMCALL_GET_TD_VM_CALL_INFO, 1, 0xdead);
        calls.handle(0, &mut e);
        assert_eq!((word(&e, 16), word(&e, 32)), (TDVMCALL_SUCCESS, 0x3));
        let mut e = exit(0x12345, 0, 0);
        calls.handle(0, &mut e);
        assert_eq!(word(&e, 16), TDVMCALL_SUBFUNC_UNSUPPORTED);
    }

    #[test]
    fn qgs_messages_round_trip_and_bad_responses_fail() {
        let req = qgs_request(&[1, 2, 3]);
        assert_eq!(&req[0..4], &27u32.to_be_bytes());
        assert_eq!(&req[4..8], &[1, 0, 1, 0]);
        assert_eq!(u32::from_le_bytes(req[12..16].try_into().unwrap()), 27);
        assert_eq!(u32::from_le_bytes(req[20..24].try_into().unwrap()), 3);
        assert_eq!(&req[28..], &[1, 2, 3]);
        let resp = |ty: u32, err: u32, ids: u32, quote: &[u8], size_adj: i32| {
            let size = (24 + quote.len()) as i32 + size_adj;
            let mut m = vec![1, 0, 1, 0];
            m.extend_from_slice(&ty.to_le_bytes());
            m.extend_from_slice(&(size as u32).to_le_bytes());
            m.extend_from_slice(&err.to_le_bytes());
            m.extend_from_slice(&ids.to_le_bytes());
            m.extend_from_slice(&(quote.len() as u32).to_le_bytes());
            m.extend_from_slice(quote);
            m
        };
        assert_eq!(
            qgs_response(&resp(1, 0, 0, &[9; 50], 0)).unwrap(),
            vec![9; 50]
        );
        assert!(qgs_response(&resp(0, 0, 0, &[9; 50], 0)).is_err());
        assert!(qgs_response(&resp(1, 0x12001, 0, &[9; 50], 0))
            .unwrap_err()
            .to_string()
            .contains("0x12001"));
        assert!(qgs_response(&resp(1, 0, 4, &[9; 50], 0)).is_err());
        assert!(qgs_response(&resp(1, 0, 0, &[9; 50], 1)).is_err());
        assert!(qgs_response(&resp(1, 0, 0, &[], 0)).is_err());
        assert!(qgs_response(&[1, 0]).is_err());
    }

    #[test]
    fn qgs_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qgs.socket");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut m = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut m).unwrap();
            let report = m[24..].to_vec();
            let mut r = vec![1, 0, 1, 0];
            r.extend_from_slice(&1u32.to_le_bytes());
            r.extend_from_slice(&((24 + report.len()) as u32).to_le_bytes());
            r.extend_from_slice(&[0; 8]);
            r.extend_from_slice(&(report.len() as u32).to_le_bytes());
            r.extend_from_slice(&report);
            s.write_all(&(r.len() as u32).to_be_bytes()).unwrap();
            s.write_all(&r).unwrap();
        });
        assert_eq!(qgs_get_quote(&path, b"tdreport").unwrap(), b"tdreport");
        server.join().unwrap();
        assert!(qgs_get_quote(&dir.path().join("absent"), b"x")
            .unwrap_err()
            .to_string()
            .contains("cannot reach QGS"));
    }

    #[test]
    fn cert_table_build_parse_and_serve() {
        let t =
            CertTable::build(&[(CERT_GUID_VCEK, &[1; 100]), (CERT_GUID_ASK, &[2; 50])]).unwrap();
        let b = t.bytes();
        assert_eq!(&b[0..4], &[0x63, 0xda, 0x75, 0x8d]);
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 72);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 100);
        assert!(b[48..72].iter().all(|&x| x == 0));
        assert_eq!(b.len(), 72 + 150);
        assert_eq!(CertTable::parse(b.to_vec()).unwrap(), t);
        // Truncated data, a blob overlapping the table, no terminator, empty.
        assert!(CertTable::parse(b[..b.len() - 1].to_vec()).is_err());
        let mut overlap = b.to_vec();
        overlap[16] = 8;
        assert!(CertTable::parse(overlap).is_err());
        assert!(CertTable::parse(vec![1; 30]).is_err());
        assert!(CertTable::parse(vec![0; 24]).is_err());
        let m = mem();
        let mut e = [0u8; 256];
        set_word(&mut e, 0, 0x3000);
        set_word(&mut e, 8, 0);
        t.serve(&m, &mut e);
        assert_eq!((word(&e, 16), word(&e, 8)), (libc::ENOSPC as u64, 1));
        set_word(&mut e, 8, 1);
        t.serve(&m, &mut e);
        assert_eq!(word(&e, 16), 0);
        let mut back = vec![0u8; b.len()];
        m.read_slice(&mut back, GuestAddress(0x3000)).unwrap();
        assert_eq!(back, b);
        set_word(&mut e, 0, 0x1_0000_0000);
        t.serve(&m, &mut e);
        assert_eq!(word(&e, 16), libc::EIO as u64);
    }
}
