//! `vhost-vsock-control`: vhost-vsock's ioctls, its transport's socket paths and its rings,
//! each with the outcome `drivers/vhost/vsock.c` must give, all driven from the agent's
//! driver thread (non-blocking sockets, so one thread is both the AF_VSOCK peer and the
//! device's frontend and every syscall is traced locally).
//!
//! * ioctls: reserved and 64-bit guest CIDs (EINVAL), the CID of the guest's own virtio-vsock
//!   transport and a CID another device holds (EADDRINUSE), a CID change, SET_RUNNING before
//!   the owner (EPERM) and with a ring in kernel space (EFAULT), unknown features and backend
//!   features (EOPNOTSUPP), the device fd's IOTLB interface (read: EAGAIN, nothing to poll;
//!   with ACCESS_PLATFORM an update is taken, without it EFAULT).
//! * transport: a connect to a CID no device has (ENODEV); a SEQPACKET connect to a device
//!   that did not negotiate VIRTIO_VSOCK_F_SEQPACKET (ESOCKTNOSUPPORT); a connect whose
//!   REQUEST waits in the device for RX buffers is cancelled when the socket goes, so buffers
//!   posted afterwards stay empty; a REQUEST answered with RST fails the connect (ECONNRESET).
//! * SEQPACKET end to end: REQUEST read from the RX ring (type, ports, CIDs checked) and
//!   answered RESPONSE; a 600-byte message from the socket arrives in 256-byte RX buffers
//!   split by vhost, EOM and EOR only on its last piece, reassembled byte-exact; a message
//!   from the frontend reaches the socket whole (one recv, record boundary kept).
//! * ring errors: an RX buffer smaller than a header, a TX header short of 44 bytes, a TX
//!   packet claiming more payload than its buffer: each signals the ring's error eventfd and
//!   uses nothing; a TX packet with a spoofed source CID is used and dropped.
//! * release with a live connection: closing the device resets the connected socket
//!   (vhost_vsock_reset_orphans: its recv fails with ECONNRESET).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use frontends::vhost_raw::{
    IotlbMsg, MemRegion, MsgV2, RawVhost, VringAddr, ACCESS_RW, F_ACCESS_PLATFORM, IOTLB_UPDATE,
};
use frontends::vring::{poll_readable, Arena, Desc, DriverRing, DESC_SIZE};
use frontends::vsock_hdr::{Hdr, HDR_LEN};
use kcov_wire::plan::Params;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::net::{sys, Counters, NetError};
use crate::rawnet::{expect_errno, expect_ok, fail, RawRing};
use crate::vsock::{message, op, HOST_CID, TYPE_STREAM};

pub(crate) const PATH: &str = "/dev/vhost-vsock";
pub(crate) const QUEUE: u16 = 64;
/// Bytes per buffer slot.
pub(crate) const SLOT: u64 = 4096;
/// `VIRTIO_VSOCK_F_SEQPACKET` (a feature bit number).
pub(crate) const F_SEQPACKET: u32 = 1;
/// `VIRTIO_VSOCK_TYPE_SEQPACKET`.
pub(crate) const TYPE_SEQPACKET: u16 = 2;
/// `VIRTIO_VSOCK_SEQ_EOM` / `_EOR`.
const SEQ_EOM: u32 = 1;
const SEQ_EOR: u32 = 2;
/// `SO_VM_SOCKETS_*` level and `IOCTL_VM_SOCKETS_GET_LOCAL_CID`.
pub(crate) const SOL_VSOCK: libc::c_int = libc::AF_VSOCK;
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;
/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (a `struct timeval` on 64-bit).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;
/// `MSG_EOR`.
const MSG_EOR: libc::c_int = 0x80;
/// Ports: the device's service, and what it must never see.
pub(crate) const PORT: u32 = 6000;
pub(crate) const BUF_ALLOC: u32 = 1 << 18;
pub(crate) const QUIET: Duration = Duration::from_millis(150);

/// A vhost-vsock device driven by hand.
pub(crate) struct Dev {
    /// Held open: dropping the `Dev` releases the device.
    _dev: RawVhost,
    arena: Arena,
    rx: RawRing,
    tx: RawRing,
    /// The device's guest CID.
    pub(crate) cid: u64,
    /// RX buffers posted and not yet used.
    pub(crate) rx_out: u32,
}

fn efd() -> Result<EventFd, NetError> {
    EventFd::new(EFD_NONBLOCK).map_err(sys("eventfd"))
}

impl Dev {
    /// Open, owner, features, memory, rings, CID, running; no RX buffers yet.
    pub(crate) fn open(cid: u64, features: u64) -> Result<Dev, NetError> {
        let mut arena =
            Arena::new(2 * (3 * 4096 + SLOT as usize * usize::from(QUEUE)) + (1 << 16))?;
        let dev = RawVhost::open(PATH).map_err(sys("open /dev/vhost-vsock"))?;
        expect_ok("VHOST_SET_OWNER", dev.set_owner())?;
        expect_ok("VHOST_SET_FEATURES", dev.set_features(features))?;
        let info = arena.region_info();
        expect_ok(
            "VHOST_SET_MEM_TABLE",
            dev.set_mem_table(&[MemRegion::from(info)]),
        )?;
        let mut ring = |index: u32| -> Result<RawRing, NetError> {
            let n = u64::from(QUEUE);
            let desc = arena.alloc(DESC_SIZE * n, 4096)?;
            let avail = arena.alloc(6 + 2 * n, 4096)?;
            let used = arena.alloc(6 + 8 * n, 4096)?;
            let bufs = arena.alloc(SLOT * n, 4096)?;
            let r = RawRing {
                ring: DriverRing::new(QUEUE, desc, avail, used),
                kick: efd()?,
                call: efd()?,
                err: efd()?,
                bufs,
            };
            r.configure(&dev, index)?;
            Ok(r)
        };
        let rx = ring(0)?;
        let tx = ring(1)?;
        expect_ok("VHOST_VSOCK_SET_GUEST_CID", set_cid(&dev, cid))?;
        expect_ok("VHOST_VSOCK_SET_RUNNING", set_running(&dev, 1))?;
        Ok(Dev {
            _dev: dev,
            arena,
            rx,
            tx,
            cid,
            rx_out: 0,
        })
    }

    /// A guest address outside the device's memory table (just past its one region).
    pub(crate) fn outside_memory(&self) -> u64 {
        let info = self.arena.region_info();
        info.guest_phys_addr + info.memory_size
    }

    /// VHOST_VSOCK_SET_GUEST_CID on the running device; on success its packets use `cid`.
    pub(crate) fn set_guest_cid(&mut self, cid: u64) -> io::Result<()> {
        set_cid(&self._dev, cid)?;
        self.cid = cid;
        Ok(())
    }

    fn ring(&mut self, tx: bool) -> &mut RawRing {
        if tx {
            &mut self.tx
        } else {
            &mut self.rx
        }
    }

    /// Posts an RX buffer of `len` bytes at the next slot and kicks.
    pub(crate) fn post_rx(&mut self, len: u32) -> Result<(), NetError> {
        self.post_rx_at(None, len)
    }

    /// [`post_rx`](Self::post_rx) at guest address `addr` instead of the slot's buffer (e.g. one
    /// outside the memory table).
    pub(crate) fn post_rx_at(&mut self, addr: Option<u64>, len: u32) -> Result<(), NetError> {
        let mem = self.arena.mem();
        let r = &mut self.rx;
        let k = r.ring.avail_idx();
        let d = k % QUEUE;
        let buf = addr.unwrap_or(r.bufs + SLOT * u64::from(d));
        let desc = Desc {
            addr: buf,
            len,
            flags: VRING_DESC_F_WRITE as u16,
            next: 0,
        };
        r.ring.write_desc(&mem, None, d, desc)?;
        r.ring.push_avail(&mem, d)?;
        self.rx_out += 1;
        r.kick.write(1).map_err(sys("kick"))
    }

    /// Puts one TX buffer of `bytes` (read-only) on the next slot and kicks; returns its head.
    pub(crate) fn put_tx(&mut self, bytes: &[u8]) -> Result<u16, NetError> {
        self.put_tx_flags(bytes, 0)
    }

    /// [`put_tx`](Self::put_tx) with descriptor `flags`.
    fn put_tx_flags(&mut self, bytes: &[u8], flags: u16) -> Result<u16, NetError> {
        let mem = self.arena.mem();
        let k = self.tx.ring.avail_idx();
        let d = k % QUEUE;
        let buf = self.tx.bufs + SLOT * u64::from(d);
        self.arena.write(buf, bytes)?;
        let desc = Desc {
            addr: buf,
            len: bytes.len() as u32,
            flags,
            next: 0,
        };
        self.tx.ring.write_desc(&mem, None, d, desc)?;
        self.tx.ring.push_avail(&mem, d)?;
        self.tx.kick.write(1).map_err(sys("kick"))?;
        Ok(d)
    }

    /// The next used element of a ring within `timeout`.
    pub(crate) fn used(
        &mut self,
        tx: bool,
        timeout: Duration,
    ) -> Result<Option<(u32, u32)>, NetError> {
        let mem = self.arena.mem();
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.ring(tx);
            if let Some(u) = r.ring.next_used(&mem)? {
                return Ok(Some(u));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if poll_readable(&[r.call.as_raw_fd()], left.min(Duration::from_millis(20)))
                .map_err(sys("poll (call)"))?[0]
            {
                let _ = r.call.read();
            }
        }
    }

    /// The next packet in the RX ring: its header and payload.
    pub(crate) fn recv(
        &mut self,
        case: &str,
        timeout: Duration,
    ) -> Result<(Hdr, Vec<u8>), NetError> {
        self.try_recv(case, timeout)?
            .ok_or_else(|| fail(case, "no packet in the RX ring"))
    }

    /// The next packet in the RX ring within `timeout`, if one comes.
    pub(crate) fn try_recv(
        &mut self,
        case: &str,
        timeout: Duration,
    ) -> Result<Option<(Hdr, Vec<u8>)>, NetError> {
        let Some((id, len)) = self.used(false, timeout)? else {
            return Ok(None);
        };
        self.rx_out = self.rx_out.saturating_sub(1);
        let buf = self.rx.bufs + SLOT * u64::from(id);
        let mut raw = vec![0u8; (len as usize).min(SLOT as usize)];
        self.arena.read(buf, &mut raw)?;
        let hdr = Hdr::parse(&raw).ok_or_else(|| fail(case, format!("{len}-byte RX packet")))?;
        let payload = raw
            .get(HDR_LEN..HDR_LEN + hdr.len as usize)
            .ok_or_else(|| fail(case, format!("payload {} beyond {len} bytes used", hdr.len)))?
            .to_vec();
        Ok(Some((hdr, payload)))
    }

    /// Sends a packet to the host side on the TX ring; it must be used.
    pub(crate) fn send(
        &mut self,
        case: &str,
        hdr: Hdr,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(), NetError> {
        let mut bytes = Hdr {
            len: payload.len() as u32,
            ..hdr
        }
        .to_bytes()
        .to_vec();
        bytes.extend_from_slice(payload);
        let head = self.put_tx(&bytes)?;
        match self.used(true, timeout)? {
            Some((id, _)) if id == u32::from(head) => Ok(()),
            other => Err(fail(case, format!("TX packet: used {other:?}"))),
        }
    }

    pub(crate) fn wait_err(&self, tx: bool, timeout: Duration) -> Result<bool, NetError> {
        let r = if tx { &self.tx } else { &self.rx };
        let fired = poll_readable(&[r.err.as_raw_fd()], timeout).map_err(sys("poll (err)"))?[0];
        if fired {
            let _ = r.err.read();
        }
        Ok(fired)
    }

    /// A reply header from this device to the host side's `peer` port.
    pub(crate) fn hdr(&self, ty: u16, op: u16, peer: u32, flags: u32) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: PORT,
            dst_port: peer,
            len: 0,
            ty,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 0,
        }
    }
}

pub(crate) fn set_cid(d: &RawVhost, cid: u64) -> io::Result<()> {
    let mut v = cid;
    // SAFETY: VHOST_VSOCK_SET_GUEST_CID reads one u64.
    unsafe { d.ioctl_ptr(0x4008_af60, (&mut v as *mut u64).cast()) }.map(drop)
}

fn set_running(d: &RawVhost, on: i32) -> io::Result<()> {
    let mut v = on;
    // SAFETY: VHOST_VSOCK_SET_RUNNING reads one int.
    unsafe { d.ioctl_ptr(0x4004_af61, (&mut v as *mut i32).cast()) }.map(drop)
}

/// A non-blocking AF_VSOCK socket of `ty`.
pub(crate) fn socket(ty: libc::c_int) -> Result<OwnedFd, NetError> {
    socket_of(ty | libc::SOCK_NONBLOCK)
}

/// An AF_VSOCK socket of `ty` (flags included).
pub(crate) fn socket_of(ty: libc::c_int) -> Result<OwnedFd, NetError> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("socket(AF_VSOCK)")(io::Error::last_os_error()));
    }
    // SAFETY: fresh fd, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn connect(fd: &OwnedFd, cid: u64) -> io::Result<()> {
    crate::vsock::connect(fd, cid as u32, PORT)
}

/// SO_ERROR of `fd` once it is writable or failed, within `timeout` (None: still pending).
pub(crate) fn connect_result(fd: &OwnedFd, timeout: Duration) -> Result<Option<i32>, NetError> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    if r < 0 {
        return Err(sys("poll (connect)")(io::Error::last_os_error()));
    }
    if r == 0 {
        return Ok(None);
    }
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_ERROR) into an int of the size passed.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    Ok(Some(err))
}

/// SO_ERROR of `fd` (read and cleared).
pub(crate) fn so_error(fd: &OwnedFd) -> Result<i32, NetError> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_ERROR) into an int of the size passed.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(sys("getsockopt(SO_ERROR)")(io::Error::last_os_error()));
    }
    Ok(err)
}

/// SO_VM_SOCKETS_CONNECT_TIMEOUT of a blocking socket.
pub(crate) fn set_connect_timeout(fd: &OwnedFd, t: Duration) -> Result<(), NetError> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a timeval of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(sys("setsockopt(SO_VM_SOCKETS_CONNECT_TIMEOUT)")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub(crate) fn local_port(fd: &OwnedFd) -> Result<u32, NetError> {
    // SAFETY: sockaddr_vm is plain data.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: getsockname into a sockaddr_vm of the size passed.
    if unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut a as *mut libc::sockaddr_vm).cast(),
            &mut len,
        )
    } < 0
    {
        return Err(sys("getsockname")(io::Error::last_os_error()));
    }
    Ok(a.svm_port)
}

/// A non-blocking send (MSG_NOSIGNAL: a shut-down socket answers EPIPE, not SIGPIPE).
pub(crate) fn send_nb(fd: &OwnedFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: sending from a valid buffer of the length passed.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A non-blocking receive into `buf`.
pub(crate) fn recv_nb(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: receiving into a valid buffer of the length passed.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether `fd` polls with any of `events` within `timeout`.
pub(crate) fn wait_fd(fd: &OwnedFd, events: i16, timeout: Duration) -> Result<bool, NetError> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    if r < 0 {
        return Err(sys("poll")(io::Error::last_os_error()));
    }
    Ok(r > 0 && p.revents & events != 0)
}

/// Reads exactly `want` bytes from a non-blocking socket within `timeout`.
pub(crate) fn recv_exact(
    case: &str,
    fd: &OwnedFd,
    want: usize,
    timeout: Duration,
) -> Result<Vec<u8>, NetError> {
    let mut got = vec![0u8; want];
    let mut n = 0;
    let deadline = Instant::now() + timeout;
    while n < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(case, format!("{n} of {want} bytes on the socket")));
        }
        wait_fd(fd, libc::POLLIN, left)?;
        match recv_nb(fd, &mut got[n..]) {
            Ok(0) => return Err(fail(case, format!("EOF after {n} of {want} bytes"))),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(fail(case, format!("recv after {n} of {want} bytes: {e}"))),
        }
    }
    Ok(got)
}

/// The guest's own CID on its virtio-vsock transport (`/dev/vsock`).
fn own_cid() -> Result<u64, NetError> {
    let f = std::fs::File::open("/dev/vsock").map_err(sys("open /dev/vsock"))?;
    let mut cid: u32 = 0;
    // SAFETY: IOCTL_VM_SOCKETS_GET_LOCAL_CID writes one u32.
    if unsafe { libc::ioctl(f.as_raw_fd(), IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid) } < 0 {
        return Err(sys("IOCTL_VM_SOCKETS_GET_LOCAL_CID")(
            io::Error::last_os_error(),
        ));
    }
    Ok(u64::from(cid))
}

/// Runs every part; counters say what was checked.
pub fn run(params: &Params) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let base = u64::from(params.vsock_cid) + 100;
    let ioctls = ioctls(base)?;
    let transport = transport(base + 10, timeout)?;
    let (seq_bytes, ring_errors) = seqpacket(base + 20, timeout)?;
    Ok(vec![
        ("ioctl_errors".into(), ioctls),
        ("transport_cases".into(), transport),
        ("seqpacket_bytes".into(), seq_bytes),
        ("ring_errors".into(), ring_errors),
        ("iterations".into(), 4),
    ])
}

fn ioctls(cid: u64) -> Result<u64, NetError> {
    let mut n = 0u64;
    let mut check = |case: &str, r: io::Result<()>, errno: i32| {
        n += 1;
        expect_errno(case, r, errno)
    };
    let a = RawVhost::open(PATH).map_err(sys("open /dev/vhost-vsock"))?;
    check("running before the owner", set_running(&a, 1), libc::EPERM)?;
    check("CID 2 (the host)", set_cid(&a, 2), libc::EINVAL)?;
    check(
        "CID U32_MAX",
        set_cid(&a, u64::from(u32::MAX)),
        libc::EINVAL,
    )?;
    check("64-bit CID", set_cid(&a, 1 << 32), libc::EINVAL)?;
    let own = own_cid()?;
    check("the guest's own CID", set_cid(&a, own), libc::EADDRINUSE)?;
    expect_ok("CID", set_cid(&a, cid))?;
    expect_ok("CID change", set_cid(&a, cid + 1))?;
    let b = RawVhost::open(PATH).map_err(sys("open /dev/vhost-vsock"))?;
    check(
        "a CID another device holds",
        set_cid(&b, cid + 1),
        libc::EADDRINUSE,
    )?;
    expect_ok("the CID given up", set_cid(&b, cid))?;
    expect_ok("VHOST_SET_OWNER", a.set_owner())?;
    let offered = expect_ok("VHOST_GET_FEATURES", a.get_features())?;
    let unknown = (0..64)
        .map(|b| 1u64 << b)
        .find(|b| offered & b == 0)
        .unwrap_or(0);
    check(
        "unknown feature",
        a.set_features(offered | unknown),
        libc::EOPNOTSUPP,
    )?;
    check(
        "unknown backend feature",
        a.set_backend_features(1 << 40),
        libc::EOPNOTSUPP,
    )?;
    let bf = expect_ok("VHOST_GET_BACKEND_FEATURES", a.get_backend_features())?;
    expect_ok("VHOST_SET_BACKEND_FEATURES", a.set_backend_features(bf))?;
    // The device fd's message interface: nothing to read or poll, no IOTLB to update.
    // RawVhost::read_msg turns the non-blocking read's EAGAIN into None: back to the errno.
    let read = a.read_msg().and_then(|m| match m {
        None => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
        Some(_) => Ok(()),
    });
    check("read with nothing queued", read, libc::EAGAIN)?;
    if poll_readable(&[a.fd()], Duration::ZERO).map_err(sys("poll (vhost-vsock)"))?[0] {
        return Err(fail(
            "poll",
            "the device fd polls readable with nothing queued",
        ));
    }
    let mem = Arena::new(1 << 16)?;
    let info = mem.region_info();
    let update = MsgV2::iotlb(IotlbMsg {
        iova: info.guest_phys_addr,
        size: info.memory_size,
        uaddr: info.guest_phys_addr,
        perm: ACCESS_RW,
        kind: IOTLB_UPDATE,
    });
    check(
        "IOTLB update without an IOTLB",
        a.write_msg(&update).map(drop),
        libc::EFAULT,
    )?;
    let f = (1u64 << VIRTIO_F_VERSION_1) | (1u64 << F_ACCESS_PLATFORM);
    expect_ok("VHOST_SET_FEATURES (ACCESS_PLATFORM)", a.set_features(f))?;
    let w = expect_ok("IOTLB update", a.write_msg(&update))?;
    if w != std::mem::size_of::<MsgV2>() {
        return Err(fail("IOTLB update", format!("wrote {w} bytes")));
    }
    // A ring in kernel space: SET_RUNNING checks every ring.
    expect_ok("VHOST_SET_VRING_NUM", a.set_vring_num(0, 64))?;
    let kernel = 0xffff_8000_0000_0000u64;
    expect_ok(
        "VHOST_SET_VRING_ADDR",
        a.set_vring_addr(&VringAddr {
            index: 0,
            flags: 0,
            desc: kernel,
            used: kernel + 4096,
            avail: kernel + 8192,
            log_guest_addr: 0,
        }),
    )?;
    check(
        "running with a ring in kernel space",
        set_running(&a, 1),
        libc::EFAULT,
    )?;
    expect_ok("VHOST_VSOCK_SET_RUNNING 0", set_running(&a, 0))?;
    Ok(n)
}

/// Connects nobody completes; returns the cases checked.
fn transport(cid: u64, timeout: Duration) -> Result<u64, NetError> {
    let mut cases = 0;
    // No device has this CID.
    let s = socket(libc::SOCK_STREAM)?;
    expect_errno(
        "connect to a CID no device has",
        connect(&s, cid + 5),
        libc::ENODEV,
    )?;
    cases += 1;
    let features = 1u64 << VIRTIO_F_VERSION_1;
    let mut d = Dev::open(cid, features)?;
    let s = socket(libc::SOCK_SEQPACKET)?;
    expect_errno(
        "SEQPACKET to a device without F_SEQPACKET",
        connect(&s, cid),
        libc::ESOCKTNOSUPPORT,
    )?;
    cases += 1;
    // No RX buffers: the REQUEST waits in the device; the connect times out and cancels it
    // (vhost_transport_cancel_pkt), so buffers posted afterwards stay empty.
    {
        let case = "cancelled connect";
        let s = socket_of(libc::SOCK_STREAM)?;
        set_connect_timeout(&s, QUIET)?;
        expect_errno(case, connect(&s, cid), libc::ETIMEDOUT)?;
        drop(s);
        for _ in 0..4 {
            d.post_rx(SLOT as u32)?;
        }
        if let Some(u) = d.used(false, QUIET)? {
            return Err(fail(
                case,
                format!("the cancelled REQUEST still arrived: {u:?}"),
            ));
        }
        cases += 1;
    }
    // A REQUEST answered with RST.
    {
        let case = "connect refused with RST";
        let s = socket(libc::SOCK_STREAM)?;
        expect_errno(case, connect(&s, cid), libc::EINPROGRESS)?;
        let port = local_port(&s)?;
        let (h, _) = d.recv(case, timeout)?;
        let want = (HOST_CID, cid, port, PORT, TYPE_STREAM, op::REQUEST);
        let got = (h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.ty, h.op);
        if got != want {
            return Err(fail(case, format!("REQUEST {h:?}")));
        }
        let rst = d.hdr(TYPE_STREAM, op::RST, port, 0);
        d.send(case, rst, &[], timeout)?;
        match connect_result(&s, timeout)? {
            Some(e) if e == libc::ECONNRESET => {}
            other => {
                return Err(fail(
                    case,
                    format!("SO_ERROR {other:?}, expected ECONNRESET"),
                ))
            }
        }
        cases += 1;
    }
    Ok(cases)
}

/// SEQPACKET both ways, ring errors, release with the connection up. Returns (message bytes
/// checked, ring errors checked).
fn seqpacket(cid: u64, timeout: Duration) -> Result<(u64, u64), NetError> {
    let case = "seqpacket";
    let features = (1u64 << VIRTIO_F_VERSION_1) | (1u64 << F_SEQPACKET);
    let mut d = Dev::open(cid, features)?;
    let mut errors = 0;
    // An RX buffer too small for a header: the packet it was meant for is dropped.
    {
        let case = "RX buffer smaller than a header";
        d.post_rx(20)?;
        let s = socket(libc::SOCK_SEQPACKET)?;
        expect_errno(case, connect(&s, cid), libc::EINPROGRESS)?;
        if !d.wait_err(false, timeout)? {
            return Err(fail(case, "vhost did not signal the error eventfd"));
        }
        if let Some(u) = d.used(false, QUIET)? {
            return Err(fail(case, format!("vhost used the small buffer: {u:?}")));
        }
        drop(s);
        errors += 1;
    }
    for _ in 0..16 {
        d.post_rx((HDR_LEN + 256) as u32)?;
    }
    let s = socket(libc::SOCK_SEQPACKET)?;
    expect_errno(case, connect(&s, cid), libc::EINPROGRESS)?;
    let port = local_port(&s)?;
    let (h, _) = d.recv(case, timeout)?;
    if (h.op, h.ty, h.src_port, h.dst_port) != (op::REQUEST, TYPE_SEQPACKET, port, PORT) {
        return Err(fail(case, format!("REQUEST {h:?}")));
    }
    let resp = d.hdr(TYPE_SEQPACKET, op::RESPONSE, port, 0);
    d.send(case, resp, &[], timeout)?;
    match connect_result(&s, timeout)? {
        Some(0) => {}
        other => return Err(fail(case, format!("SO_ERROR {other:?} after RESPONSE"))),
    }
    // Socket → device: one 600-byte record, split over 256-byte buffers.
    let msg = message(b'C', 0, 600);
    // SAFETY: sending from a valid buffer.
    let n = unsafe { libc::send(s.as_raw_fd(), msg.as_ptr().cast(), msg.len(), MSG_EOR) };
    if n != msg.len() as isize {
        return Err(fail(
            case,
            format!("send: {n} ({})", io::Error::last_os_error()),
        ));
    }
    let mut got = Vec::new();
    let mut pieces = 0;
    loop {
        let (h, p) = d.recv(case, timeout)?;
        if h.op == op::CREDIT_UPDATE || h.op == op::CREDIT_REQUEST {
            continue;
        }
        if (h.op, h.ty) != (op::RW, TYPE_SEQPACKET) {
            return Err(fail(case, format!("expected data, got {h:?}")));
        }
        pieces += 1;
        got.extend_from_slice(&p);
        let last = got.len() >= msg.len();
        let want_flags = if last { SEQ_EOM | SEQ_EOR } else { 0 };
        if h.flags & (SEQ_EOM | SEQ_EOR) != want_flags {
            return Err(fail(
                case,
                format!(
                    "piece {pieces} ({} bytes): flags {:#x}, expected {want_flags:#x}",
                    p.len(),
                    h.flags
                ),
            ));
        }
        if last {
            break;
        }
    }
    if got != msg || pieces < 3 {
        return Err(fail(
            case,
            format!("record of {} bytes in {pieces} pieces differs", got.len()),
        ));
    }
    // Device → socket: a record arrives whole.
    let answer = message(b'S', 0, 300);
    let rw = d.hdr(TYPE_SEQPACKET, op::RW, port, SEQ_EOM | SEQ_EOR);
    d.send(case, rw, &answer, timeout)?;
    let mut buf = vec![0u8; 1024];
    let deadline = Instant::now() + timeout;
    let n = loop {
        // SAFETY: receiving into a valid buffer.
        let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock || Instant::now() > deadline {
            return Err(fail(case, format!("recv: {e}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if buf[..n] != answer[..] {
        return Err(fail(
            case,
            format!("{n}-byte record on the socket differs from the 300 sent"),
        ));
    }
    // TX ring errors: each signals the error eventfd and uses nothing.
    let good = d.hdr(TYPE_SEQPACKET, op::CREDIT_UPDATE, port, 0);
    {
        let what = "device-writable TX buffer";
        d.put_tx_flags(&good.to_bytes(), VRING_DESC_F_WRITE as u16)?;
        if !d.wait_err(true, timeout)? {
            return Err(fail(what, "vhost did not signal the error eventfd"));
        }
        if let Some(u) = d.used(true, QUIET)? {
            return Err(fail(what, format!("vhost used the bad buffer: {u:?}")));
        }
        errors += 1;
    }
    for (what, bytes) in [
        (
            "TX header short of 44 bytes",
            good.to_bytes()[..30].to_vec(),
        ),
        ("TX payload beyond its buffer", {
            let mut b = Hdr { len: 4000, ..good }.to_bytes().to_vec();
            b.extend_from_slice(&[0u8; 16]);
            b
        }),
    ] {
        d.put_tx(&bytes)?;
        if !d.wait_err(true, timeout)? {
            return Err(fail(what, "vhost did not signal the error eventfd"));
        }
        if let Some(u) = d.used(true, QUIET)? {
            return Err(fail(what, format!("vhost used the bad buffer: {u:?}")));
        }
        errors += 1;
    }
    // A spoofed source CID: taken off the ring and used, then dropped.
    {
        let what = "TX packet with a spoofed source CID";
        let spoofed = Hdr {
            src_cid: cid + 1,
            ..d.hdr(TYPE_SEQPACKET, op::RST, port, 0)
        };
        d.send(what, spoofed, &[], timeout)?;
        if d.wait_err(true, Duration::ZERO)? {
            return Err(fail(what, "vhost signalled an error"));
        }
        // The RST was dropped: the connection is still up.
        match connect_result(&s, Duration::ZERO)? {
            Some(0) => {}
            other => return Err(fail(what, format!("SO_ERROR {other:?}: the RST was taken"))),
        }
        errors += 1;
    }
    // Release with the connection up: the socket is reset (vhost_vsock_reset_orphans).
    {
        let what = "release with a live connection";
        drop(d);
        let e = so_error(&s)?;
        if e != libc::ECONNRESET {
            return Err(fail(
                what,
                format!("SO_ERROR {e} after the release, expected ECONNRESET"),
            ));
        }
    }
    Ok((msg.len() as u64 + answer.len() as u64, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_ioctl_numbers() {
        // _IOW(VHOST_VIRTIO, 0x60, __u64), _IOW(VHOST_VIRTIO, 0x61, int) (KERNEL-FACTS.md).
        assert_eq!(0x4008_af60u64, (1 << 30) | (8 << 16) | (0xaf << 8) | 0x60);
        assert_eq!(0x4004_af61u64, (1 << 30) | (4 << 16) | (0xaf << 8) | 0x61);
        assert_eq!(SOL_VSOCK, 40);
    }
}
