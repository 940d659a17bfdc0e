//! A tap interface opened through `/dev/net/tun` with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, non-blocking, with a 12-byte `virtio_net_hdr_v1` in front of every
//! frame (TUNSETVNETHDRSZ), so the guest's virtio-net header passes through unchanged
//! and offloads (checksum, TSO) cost nothing to translate.
//!
//! All `ioctl`s are made before the VMM is confined, except `TUNSETOFFLOAD`, which the
//! device's event thread issues once the guest has negotiated its receive offloads (the
//! seccomp filter allows exactly that request there).

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{check_ifname, NetValueError, TapSpec};

/// Length of an interface name including its NUL.
pub const IFNAMSIZ: usize = 16;
/// `TUNSETIFF` (`_IOW('T', 202, int)`).
pub const TUNSETIFF: u64 = 0x4004_54ca;
/// `TUNGETIFF` (`_IOR('T', 210, unsigned int)`).
pub const TUNGETIFF: u64 = 0x8004_54d2;
/// `TUNSETOFFLOAD` (`_IOW('T', 208, unsigned int)`).
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// `TUNSETVNETHDRSZ` (`_IOW('T', 216, int)`).
pub const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_TUN_EXCL: i16 = -0x8000; // 0x8000 as a C short
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_PERSIST: i16 = 0x0800;

/// `TUN_F_CSUM`: the guest takes frames with a partial checksum.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`.
pub const TUN_F_TSO6: u32 = 0x04;

/// Size of the `virtio_net_hdr_v1` in front of every frame.
pub const VNET_HDR_LEN: usize = 12;

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}
const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    fn new(name: &str, flags: i16) -> Self {
        let mut r = Self {
            name: [0; IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid interface name.
    #[error("invalid tap name")]
    Name(#[source] NetValueError),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun (is the tun module loaded and is cvm allowed to use it?)")]
    OpenTun(#[source] io::Error),
    /// `tap=NAME` names no interface.
    #[error(
        "tap `{0}` does not exist; create it first (ip tuntap add {0} mode tap) or use create={0}"
    )]
    Missing(String),
    /// `tap=NAME` names an interface that is not a persistent tap.
    #[error("`{0}` is not a persistent tap interface")]
    NotTap(String, #[source] Option<io::Error>),
    /// `create=NAME` names an interface that already exists.
    #[error("cannot create tap `{0}`: an interface of that name already exists")]
    Exists(String),
    /// An ioctl failed.
    #[error("cannot set up tap `{0}`: {1} failed")]
    Ioctl(String, &'static str, #[source] io::Error),
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    owned: bool,
}

fn ioctl_ptr<T>(fd: RawFd, req: u64, arg: *mut T) -> io::Result<()> {
    // SAFETY: `req` is a tun ioctl whose argument is `*arg` (an `IfReq`, an int or an
    // unsigned int that the caller owns for the duration of the call).
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

impl Tap {
    /// Opens (or, for [`TapSpec::Create`], creates, still down) the tap.
    pub fn open(spec: &TapSpec) -> Result<Self, TapError> {
        let name = spec.name();
        check_ifname(name).map_err(TapError::Name)?;
        let create = matches!(spec, TapSpec::Create(_));
        if !create && !interface_exists(name) {
            return Err(TapError::Missing(name.to_owned()));
        }
        if create && interface_exists(name) {
            return Err(TapError::Exists(name.to_owned()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let fd = file.as_raw_fd();
        let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if create {
            flags |= IFF_TUN_EXCL;
        }
        let mut req = IfReq::new(name, flags);
        if let Err(e) = ioctl_ptr(fd, TUNSETIFF, &mut req) {
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) if create => TapError::Exists(name.to_owned()),
                Some(libc::EINVAL) if !create => TapError::NotTap(name.to_owned(), Some(e)),
                _ => TapError::Ioctl(name.to_owned(), "TUNSETIFF", e),
            });
        }
        let mut got = IfReq::new("", 0);
        ioctl_ptr(fd, TUNGETIFF, &mut got)
            .map_err(|e| TapError::Ioctl(name.to_owned(), "TUNGETIFF", e))?;
        // `tap=` must not have created a fresh, non-persistent interface (the named one
        // disappeared between the check and TUNSETIFF).
        if !create && got.flags & IFF_PERSIST == 0 {
            return Err(TapError::NotTap(name.to_owned(), None));
        }
        let mut hdr: libc::c_int = VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(fd, TUNSETVNETHDRSZ, &mut hdr)
            .map_err(|e| TapError::Ioctl(name.to_owned(), "TUNSETVNETHDRSZ", e))?;
        let tap = Self {
            file,
            name: name.to_owned(),
            owned: create,
        };
        // No offloads until the guest negotiates them: the kernel then checksums and
        // segments what it sends us.
        tap.set_offload(0)
            .map_err(|e| TapError::Ioctl(name.to_owned(), "TUNSETOFFLOAD", e))?;
        // A created tap stays down (the host cannot queue frames on it) until
        // `bring_up`, which the caller does once the network policy is installed.
        Ok(tap)
    }

    /// Brings a tap `cvm` created up (a persistent tap is up or down as its owner set
    /// it). Call it only once the tap's network policy is installed.
    pub fn bring_up(&self) -> Result<(), TapError> {
        if !self.owned {
            return Ok(());
        }
        set_up(&self.name).map_err(|e| TapError::Ioctl(self.name.clone(), "SIOCSIFFLAGS", e))
    }

    /// Discards every frame queued on the tap (those queued before the network policy
    /// was installed never reach the guest). Returns how many were discarded.
    pub fn drain(&self) -> io::Result<u64> {
        let mut buf = vec![0u8; 65_550];
        let mut n = 0u64;
        loop {
            match self.read_frame(&mut buf) {
                Ok(0) => return Ok(n),
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A tap-like backend over an already open descriptor that keeps frame boundaries
    /// (a `SOCK_SEQPACKET` socket in tests and the fuzz target). Frames carry the
    /// 12-byte header as on a tap; [`Tap::set_offload`] is a no-op for it.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Self {
        Self {
            file: File::from(fd),
            name: name.to_owned(),
            owned: false,
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `cvm` created it.
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Sets the receive offloads (`TUN_F_*`) the guest accepted.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if r == 0 {
            return Ok(());
        }
        match io::Error::last_os_error() {
            // Not a tap (a test socket): nothing to configure.
            e if e.raw_os_error() == Some(libc::ENOTTY) => Ok(()),
            e => Err(e),
        }
    }

    /// Reads one frame (header included); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame (header included).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is a valid buffer of `frame.len()` bytes.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Sets IFF_UP on `name` (SIOCGIFFLAGS / SIOCSIFFLAGS on a throwaway socket).
fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a descriptor we just created and own.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = IfReq::new(name, 0);
    ioctl_ptr(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
    req.flags |= libc::IFF_UP as i16;
    ioctl_ptr(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_abi() {
        // linux/if_tun.h: _IOW('T', 202, int) etc.
        const fn iow(nr: u64, size: u64) -> u64 {
            (1 << 30) | (size << 16) | ((b'T' as u64) << 8) | nr
        }
        assert_eq!(TUNSETIFF, iow(202, 4));
        assert_eq!(TUNSETOFFLOAD, iow(208, 4));
        assert_eq!(TUNSETVNETHDRSZ, iow(216, 4));
        assert_eq!(
            TUNGETIFF,
            (2 << 30) | (4 << 16) | ((b'T' as u64) << 8) | 210
        );
    }

    #[test]
    fn a_missing_tap_and_a_bad_name_are_refused() {
        assert!(matches!(
            Tap::open(&TapSpec::Existing("cvmnosuchtap0".into())),
            Err(TapError::Missing(_))
        ));
        assert!(matches!(
            Tap::open(&TapSpec::Create("a/b".into())),
            Err(TapError::Name(_))
        ));
        // "lo" exists and is no tap.
        match Tap::open(&TapSpec::Create("lo".into())) {
            Err(TapError::Exists(n)) => assert_eq!(n, "lo"),
            other => panic!("{other:?}"),
        }
    }
}

/// Real taps in a fresh network namespace (root and /dev/net/tun, else SKIPPED).
#[cfg(test)]
mod netns_tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    fn in_netns(f: impl FnOnce() + Send + 'static) {
        let r = std::thread::spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) moves only this thread to a new namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", io::Error::last_os_error());
            f();
        })
        .join();
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }

    fn ip(args: &str) -> String {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn is_up(name: &str) -> bool {
        let l = ip(&format!("-o link show {name}"));
        let flags = l.split('<').nth(1).and_then(|r| r.split('>').next());
        flags.is_some_and(|f| f.split(',').any(|x| x == "UP"))
    }

    /// Attack (red-team L6): frames reached the guest before its policy existed: a
    /// `create=` tap came up (so the host could queue frames on it) at open, before the
    /// policy was installed, and frames queued on a `tap=` tap since open were read by
    /// the VM. A created tap now stays down until [`Tap::bring_up`], and
    /// [`Tap::drain`] empties the queue once the policy is in place.
    #[test]
    fn a_created_tap_stays_down_until_brought_up_and_drain_empties_its_queue() {
        if !(test_kit::require_root()
            && test_kit::require_tool("ip")
            && test_kit::require_file("/dev/net/tun"))
        {
            return;
        }
        in_netns(|| {
            let t = Tap::open(&TapSpec::Create("cvmdr0".into())).unwrap();
            assert!(
                !is_up("cvmdr0"),
                "create= brought the tap up before the policy could be installed"
            );
            t.bring_up().unwrap();
            assert!(is_up("cvmdr0"));
            // The host queues frames for the guest.
            ip("addr add 10.9.9.1/24 dev cvmdr0");
            ip("neigh replace 10.9.9.2 lladdr 02:00:00:00:00:09 dev cvmdr0");
            let s = std::net::UdpSocket::bind("10.9.9.1:0").unwrap();
            for _ in 0..3 {
                s.send_to(b"queued", "10.9.9.2:9").unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
            assert!(t.drain().unwrap() >= 3);
            let mut buf = [0u8; 2048];
            let e = t.read_frame(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        });
    }
}
