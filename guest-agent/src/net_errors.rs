//! `vhost-net-errors`: the frontend misbehaves on purpose and the kernel's exact reaction is
//! asserted, then the device is shown to still work.
//!
//! * ioctl errors: each refused call must fail with the errno `drivers/vhost` returns for it
//!   (eventfds that are none, a closed fd, not owner, owner twice, unknown feature bits, a memory table with padding, too many or
//!   empty regions, a queue index out of range, ring sizes that are no power of two, misaligned
//!   or flagged ring addresses, a base beyond 16 bits, resizing or moving the base of a ring
//!   with a backend, a backend that is no socket, ring addresses outside the memory table at
//!   attach time, an unknown ioctl, cross-endian rings on a kernel without them).
//! * ring errors on TX and RX: a descriptor loop, a `next` out of the table, a head out of the
//!   table, an address outside the memory table, a device-writable buffer on TX, a read-only
//!   one on RX, an indirect table whose length is no multiple of 16, a nested indirect table,
//!   a chain longer than vhost's iovec array (too long), a zero-length buffer, an avail index
//!   that jumps past the ring size. vhost must signal the ring's error eventfd
//!   (`VHOST_SET_VRING_ERR`), use nothing, send nothing, leave the ring stuck at that buffer
//!   (`VHOST_GET_VRING_BASE`), and carry good frames byte-exact once the base was moved past
//!   it (`VHOST_SET_VRING_BASE`).
//! * bad lengths vhost does not call errors: a TX buffer shorter than the virtio-net header and
//!   one whose checksum offsets point past the frame are put back (no error, nothing used,
//!   nothing sent), and an RX frame larger than the posted buffer (no MRG_RXBUF) is dropped
//!   while the buffer stays available for the next frame, which lands byte-exact.

use std::io;
use std::time::Duration;

use frontends::vring::{Desc, DESC_SIZE};
use kcov_wire::plan::Params;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::net::{test_frame, Counters, NetError, PacketSocket, NET_HDR_LEN};
use crate::rawnet::{expect_errno, expect_ok, fail, RawNet, RawOpts, RXQ, TXQ};
use frontends::vhost_raw::{
    IotlbMsg, MemRegion, MsgV2, RawVhost, VringAddr, ACCESS_RW, IOTLB_UPDATE,
};

/// Ring size of the error workload.
const QUEUE: u16 = 64;
/// Frame size of its good frames.
const SIZE: usize = 128;
/// How long a ring must stay quiet after a bad buffer.
const QUIET: Duration = Duration::from_millis(100);
/// `UIO_MAXIOV`: vhost's iovec array per ring.
const UIO_MAXIOV: u32 = 1024;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Runs every case; counters say how many of each kind were checked.
pub fn run(params: &Params) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let ioctl_cases = ioctl_errors()?;
    // Version 1 without MRG_RXBUF: 12-byte header, and an RX frame must fit one buffer.
    let features = 1u64 << VIRTIO_F_VERSION_1;
    let extra = (UIO_MAXIOV as usize + 8) * DESC_SIZE as usize + 8192;
    let arena = RawNet::arena(QUEUE, extra)?;
    let mut n = RawNet::open(
        arena,
        RawOpts {
            features,
            queue: QUEUE,
            fork_owner: None,
            attach: true,
        },
    )?;
    let result = ring_errors(&mut n, timeout);
    n.detach_all();
    let (ring_cases, frames) = result?;
    Ok(vec![
        ("ioctl_errors".into(), ioctl_cases),
        ("ring_errors".into(), ring_cases),
        ("frames_verified".into(), frames),
        ("iterations".into(), ioctl_cases + ring_cases),
    ])
}

/// One refused call: its name, the call, and the errno `drivers/vhost` answers.
type Refused = (&'static str, fn(&RawVhost) -> io::Result<()>, i32);
/// A ring address refused: the name, how the valid [`VringAddr`] is spoiled, the errno.
type BadAddr = (&'static str, fn(VringAddr) -> VringAddr, i32);
/// A ring or log eventfd refused: the name, the ioctl (on ring 1 where it has one), the fd
/// it is given, the errno.
type BadFd = (
    &'static str,
    fn(&RawVhost, i32) -> io::Result<()>,
    FdKind,
    i32,
);
/// An IOTLB message refused: the name, how the valid update is changed, the errno.
type BadMsg = (&'static str, fn(&mut MsgV2), i32);

/// Which fd a [`BadFd`] case hands over.
#[derive(Clone, Copy)]
enum FdKind {
    /// The tap: an open fd that is no eventfd.
    NoEventfd,
    /// A number no open fd has.
    Closed,
}

/// Not the owner yet: everything but SET_OWNER and the feature ioctls is refused.
const NOT_OWNER: [Refused; 4] = [
    ("not owner", |d| d.set_vring_num(0, 64), libc::EPERM),
    (
        "not owner (mem table)",
        |d| d.set_mem_table(&[]),
        libc::EPERM,
    ),
    (
        "not owner (backend)",
        |d| d.net_set_backend(0, -1),
        libc::EPERM,
    ),
    (
        "fork owner value",
        |d| d.set_fork_from_owner(7),
        libc::EINVAL,
    ),
];

/// The owner again, or the fork mode once there is an owner.
const OWNER_TWICE: [Refused; 2] = [
    ("owner twice", |d| d.set_owner(), libc::EBUSY),
    (
        "fork owner after owner",
        |d| d.set_fork_from_owner(1),
        libc::EBUSY,
    ),
];

/// `VHOST_SET_VRING_NUM`: (name, queue, size, errno).
const BAD_NUM: [(&str, u32, u32, i32); 4] = [
    ("queue index 2", 2, 64, libc::ENOBUFS),
    ("ring size 100", 1, 100, libc::EINVAL),
    ("ring size 0", 1, 0, libc::EINVAL),
    ("ring size 2^16", 1, 1 << 16, libc::EINVAL),
];

/// `VHOST_SET_VRING_ADDR` of ring 1, one field spoiled.
const BAD_ADDR: [BadAddr; 3] = [
    (
        "ring flags",
        |a| VringAddr { flags: 2, ..a },
        libc::EOPNOTSUPP,
    ),
    (
        "avail misaligned",
        |a| VringAddr {
            avail: a.avail + 1,
            ..a
        },
        libc::EINVAL,
    ),
    (
        "used misaligned",
        |a| VringAddr {
            used: a.used + 2,
            ..a
        },
        libc::EINVAL,
    ),
];

/// After the ring addresses: a base beyond 16 bits, cross-endian rings on a kernel without
/// them, an ioctl vhost does not have.
const BAD_RING: [Refused; 3] = [
    ("base 2^16", |d| d.set_vring_base(1, 0x1_0000), libc::EINVAL),
    (
        "cross-endian ring",
        |d| d.set_vring_endian(1, true),
        libc::ENOTTY,
    ),
    ("unknown ioctl", unknown_ioctl, libc::ENOTTY),
];

/// Ring and log eventfds: anything but an eventfd is refused.
const BAD_FD: [BadFd; 5] = [
    (
        "kick that is no eventfd",
        |d, fd| d.set_vring_kick(1, fd),
        FdKind::NoEventfd,
        libc::EINVAL,
    ),
    (
        "call that is no eventfd",
        |d, fd| d.set_vring_call(1, fd),
        FdKind::NoEventfd,
        libc::EINVAL,
    ),
    (
        "error fd that is no eventfd",
        |d, fd| d.set_vring_err(1, fd),
        FdKind::NoEventfd,
        libc::EINVAL,
    ),
    (
        "log fd that is no eventfd",
        |d, fd| d.set_log_fd(fd),
        FdKind::NoEventfd,
        libc::EINVAL,
    ),
    (
        "kick of a closed fd",
        |d, fd| d.set_vring_kick(1, fd),
        FdKind::Closed,
        libc::EBADF,
    ),
];

/// With a backend attached the ring may neither be resized nor have its base moved.
const WITH_BACKEND: [Refused; 2] = [
    (
        "resize with a backend",
        |d| d.set_vring_num(1, 32),
        libc::EBUSY,
    ),
    (
        "move base with a backend",
        |d| d.set_vring_base(1, 3),
        libc::EBUSY,
    ),
];

/// IOTLB messages without VIRTIO_F_ACCESS_PLATFORM (no IOTLB to update), each a change of
/// one valid update.
const BAD_MSG: [BadMsg; 4] = [
    ("IOTLB update without an IOTLB", |_| {}, libc::EFAULT),
    ("IOTLB update of size 0", |m| m.iotlb.size = 0, libc::EINVAL),
    ("message of unknown type", |m| m.kind = 9, libc::EINVAL),
    // vhost_process_iotlb_msg says EINVAL, vhost_chr_write_iter turns every refusal into
    // EFAULT.
    (
        "IOTLB message of unknown kind",
        |m| m.iotlb.kind = 42,
        libc::EFAULT,
    ),
];

/// A closed fd number for [`FdKind::Closed`].
const CLOSED_FD: i32 = 9999;

/// The ioctl cases, on devices of their own. Returns how many were checked.
fn ioctl_errors() -> Result<u64, NetError> {
    let path = frontends::vhost_net::VHOST_NET_PATH;
    let open = || {
        RawVhost::open(path).map_err(|source| NetError::Sys {
            what: format!("open {path}"),
            source,
        })
    };
    let mut checked = 0u64;
    let mut check = |case: &str, r: io::Result<()>, errno: i32| {
        checked += 1;
        expect_errno(case, r, errno)
    };
    let d = open()?;
    for (case, call, errno) in NOT_OWNER {
        check(case, call(&d), errno)?;
    }
    expect_ok("VHOST_SET_OWNER", d.set_owner())?;
    for (case, call, errno) in OWNER_TWICE {
        check(case, call(&d), errno)?;
    }
    let offered = expect_ok("VHOST_GET_FEATURES", d.get_features())?;
    let unknown = (0..64)
        .map(|b| 1u64 << b)
        .find(|b| offered & b == 0)
        .unwrap_or(0);
    check(
        "unknown feature",
        d.set_features(offered | unknown),
        libc::EOPNOTSUPP,
    )?;
    check(
        "unknown backend feature",
        d.set_backend_features(1 << 40),
        libc::EOPNOTSUPP,
    )?;
    let mem = crate::vring::Arena::new(1 << 16)?;
    let info = mem.region_info();
    let region = MemRegion::from(info);
    // Memory tables: (name, regions, the header's padding word, errno).
    let many: Vec<MemRegion> = (0..65u64)
        .map(|i| MemRegion {
            guest_phys_addr: i << 20,
            memory_size: 4096,
            ..region
        })
        .collect();
    let empty = MemRegion {
        memory_size: 0,
        ..region
    };
    let bad_tables: [(&str, &[MemRegion], u32, i32); 3] = [
        ("mem table padding", &[region], 1, libc::EOPNOTSUPP),
        ("mem table of 65 regions", &many, 0, libc::E2BIG),
        ("empty region", &[empty], 0, libc::EFAULT),
    ];
    for (case, regions, padding, errno) in bad_tables {
        check(case, d.set_mem_table_raw(regions, padding), errno)?;
    }
    expect_ok("VHOST_SET_MEM_TABLE", d.set_mem_table(&[region]))?;
    for (case, index, num, errno) in BAD_NUM {
        check(case, d.set_vring_num(index, num), errno)?;
    }
    let a = VringAddr {
        index: 1,
        flags: 0,
        desc: info.guest_phys_addr,
        avail: info.guest_phys_addr + 4096,
        used: info.guest_phys_addr + 8192,
        log_guest_addr: 0,
    };
    for (case, spoil, errno) in BAD_ADDR {
        check(case, d.set_vring_addr(&spoil(a)), errno)?;
    }
    for (case, call, errno) in BAD_RING {
        check(case, call(&d), errno)?;
    }
    // Ring 1 in kernel space: accepted unattached (nothing is checked before a backend
    // comes), refused at attach (access_ok; the memory table is only consulted per access).
    expect_ok("VHOST_SET_VRING_NUM", d.set_vring_num(1, 64))?;
    let outside = 0xffff_8000_0000_0000u64;
    expect_ok(
        "VHOST_SET_VRING_ADDR outside memory",
        d.set_vring_addr(&VringAddr { desc: outside, ..a }),
    )?;
    let tap = frontends::tap::Tap::open("kcovtap%d")?;
    let tapfd = std::os::fd::AsRawFd::as_raw_fd(tap.file());
    check(
        "backend with a ring in kernel space",
        d.net_set_backend(1, tapfd),
        libc::EFAULT,
    )?;
    expect_ok("VHOST_SET_VRING_ADDR", d.set_vring_addr(&a))?;
    let ev = vmm_sys_util::eventfd::EventFd::new(0).map_err(|source| NetError::Sys {
        what: "eventfd".into(),
        source,
    })?;
    let evfd = std::os::fd::AsRawFd::as_raw_fd(&ev);
    check(
        "backend that is no socket",
        d.net_set_backend(1, evfd),
        libc::ENOTSOCK,
    )?;
    for (case, call, fd, errno) in BAD_FD {
        let fd = match fd {
            FdKind::NoEventfd => tapfd,
            FdKind::Closed => CLOSED_FD,
        };
        check(case, call(&d, fd), errno)?;
    }
    check(
        "ring endianness query",
        d.get_vring_endian(1).map(drop),
        libc::ENOTTY,
    )?;
    // The same ioctls with an eventfd, then -1 (unbind), are accepted.
    for (what, r) in [
        ("VHOST_SET_VRING_KICK", d.set_vring_kick(1, evfd)),
        ("VHOST_SET_VRING_CALL", d.set_vring_call(1, evfd)),
        ("VHOST_SET_VRING_ERR", d.set_vring_err(1, evfd)),
        ("VHOST_SET_LOG_FD", d.set_log_fd(evfd)),
        ("VHOST_SET_VRING_KICK -1", d.set_vring_kick(1, -1)),
        ("VHOST_SET_VRING_CALL -1", d.set_vring_call(1, -1)),
        ("VHOST_SET_VRING_ERR -1", d.set_vring_err(1, -1)),
        ("VHOST_SET_LOG_FD -1", d.set_log_fd(-1)),
    ] {
        expect_ok(what, r)?;
    }
    check(
        "backend queue 2",
        d.net_set_backend(2, tapfd),
        libc::ENOBUFS,
    )?;
    expect_ok("VHOST_NET_SET_BACKEND", d.net_set_backend(1, tapfd))?;
    for (case, call, errno) in WITH_BACKEND {
        check(case, call(&d), errno)?;
    }
    // And the flip side: with the backend gone both work again.
    expect_ok("VHOST_NET_SET_BACKEND -1", d.net_set_backend(1, -1))?;
    expect_ok("VHOST_SET_VRING_BASE", d.set_vring_base(1, 3))?;
    let base = expect_ok("VHOST_GET_VRING_BASE", d.get_vring_base(1))?;
    if base != 3 {
        return Err(fail(
            "VHOST_GET_VRING_BASE",
            format!("{base} after setting 3"),
        ));
    }
    let update = MsgV2::iotlb(IotlbMsg {
        iova: 0,
        size: 4096,
        uaddr: info.guest_phys_addr,
        perm: ACCESS_RW,
        kind: IOTLB_UPDATE,
    });
    for (case, change, errno) in BAD_MSG {
        let mut m = update;
        change(&mut m);
        check(case, d.write_msg(&m).map(drop), errno)?;
    }
    Ok(checked)
}

fn unknown_ioctl(d: &RawVhost) -> io::Result<()> {
    // _IO(VHOST_VIRTIO, 0x7f): no vhost ioctl. vhost_vring_ioctl reads a queue index through
    // the argument before it gives up, so it points at a valid (index 0) state.
    let mut state = [0u32; 2];
    // SAFETY: the argument points at 8 writable bytes, more than the kernel reads.
    unsafe { d.ioctl_ptr(0xaf7f, state.as_mut_ptr().cast()) }.map(drop)
}

/// A bad TX buffer, written by `write` at the slot's descriptors and made available, then
/// checked and skipped. One vhost calls an error (`signals`) must fire the error eventfd. One
/// it puts back silently goes right behind a good frame in the same kick: the good frame's
/// used entry is written when the bad buffer was put back (the batch is flushed then), which
/// proves vhost saw it; the ring is detached at once, since the worker retries a put-back
/// buffer for as long as the tap is writable.
fn tx_case(
    n: &mut RawNet,
    case: &str,
    (signals, consumed): (bool, bool),
    seq: &mut u32,
    timeout: Duration,
    write: impl FnOnce(&RawNet, u16, u64) -> Result<u16, NetError>,
) -> Result<(), NetError> {
    let before = if signals {
        None
    } else {
        let s = *seq;
        *seq += 1;
        Some((s, n.put_tx_frame(s, SIZE, NET_HDR_LEN)?))
    };
    let at = n.rings[TXQ].ring.avail_idx();
    let (d, buf) = n.slot(TXQ, at);
    let head = write(n, d, buf)?;
    n.push(TXQ, head)?;
    if let Some((s, good)) = before {
        match n.wait_used(TXQ, timeout)? {
            Some((id, 0)) if id == u32::from(good) => {}
            other => return Err(fail(case, format!("frame {s} before it: used {other:?}"))),
        }
        n.detach(TXQ)?;
        n.expect_tx_out(case, s, SIZE, timeout)?;
        if n.wait_err(TXQ, Duration::ZERO)? {
            return Err(fail(
                case,
                "vhost signalled an error for a buffer it puts back",
            ));
        }
    } else if !n.wait_err(TXQ, timeout)? {
        return Err(fail(case, "vhost did not signal the error eventfd"));
    }
    if let Some((id, len)) = n.wait_used(TXQ, QUIET)? {
        return Err(fail(
            case,
            format!("vhost used the bad buffer (id {id}, len {len})"),
        ));
    }
    n.expect_no_tx_out(case, Duration::from_millis(10))?;
    n.skip_bad(case, TXQ, at, consumed)?;
    good_tx(n, case, seq, timeout)
}

/// One good TX frame must come out byte-exact and be used.
fn good_tx(n: &mut RawNet, case: &str, seq: &mut u32, timeout: Duration) -> Result<(), NetError> {
    let s = *seq;
    *seq += 1;
    let head = n.tx_frame(s, SIZE, NET_HDR_LEN)?;
    n.expect_tx_out(case, s, SIZE, timeout)?;
    match n.wait_used(TXQ, timeout)? {
        Some((id, 0)) if id == u32::from(head) => Ok(()),
        other => Err(fail(
            case,
            format!("good frame {s} (head {head}): used {other:?}"),
        )),
    }
}

/// RX: a buffer of `len` bytes posted, test frame `seq` injected, it must land byte-exact
/// after the header.
fn good_rx(
    n: &mut RawNet,
    inject: &PacketSocket,
    case: &str,
    seq: u32,
    timeout: Duration,
) -> Result<(), NetError> {
    let (head, buf) = n.rx_buffer((NET_HDR_LEN + 2048) as u32)?;
    rx_lands(n, inject, case, seq, head, buf, timeout)
}

fn rx_lands(
    n: &mut RawNet,
    inject: &PacketSocket,
    case: &str,
    seq: u32,
    head: u16,
    buf: u64,
    timeout: Duration,
) -> Result<(), NetError> {
    let frame = test_frame(b'R', seq, SIZE);
    inject.send(&frame)?;
    let want = (NET_HDR_LEN + SIZE) as u32;
    match n.wait_used(RXQ, timeout)? {
        Some((id, len)) if id == u32::from(head) && len == want => {}
        other => {
            return Err(fail(
                case,
                format!("RX frame {seq}: used {other:?}, expected ({head}, {want})"),
            ))
        }
    }
    let mut got = vec![0u8; SIZE];
    n.arena.read(buf + NET_HDR_LEN as u64, &mut got)?;
    if got != frame {
        return Err(fail(case, format!("RX frame {seq} differs in the buffer")));
    }
    Ok(())
}

fn ring_errors(n: &mut RawNet, timeout: Duration) -> Result<(u64, u64), NetError> {
    let mut seq = 0u32;
    let mut cases = 0u64;
    good_tx(n, "first frame", &mut seq, timeout)?;
    let hdr = NET_HDR_LEN as u32;
    let sz = SIZE as u32;
    let q = QUEUE;
    // Each case: name, (whether vhost calls it an error, whether it took the buffer off the
    // ring before refusing it), the descriptors.
    type Write = Box<dyn FnOnce(&RawNet, u16, u64) -> Result<u16, NetError>>;
    let table_at = n.arena.alloc(u64::from(UIO_MAXIOV + 8) * DESC_SIZE, 4096)?;
    let cases_tx: Vec<(&str, (bool, bool), Write)> = vec![
        (
            "descriptor loop",
            (true, false),
            Box::new(move |n, d, buf| {
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: buf,
                        len: hdr,
                        flags: NEXT,
                        next: d + 1,
                    },
                )?;
                n.desc(
                    TXQ,
                    d + 1,
                    Desc {
                        addr: buf,
                        len: sz,
                        flags: NEXT,
                        next: d,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "next out of the table",
            (true, false),
            Box::new(move |n, d, buf| {
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: buf,
                        len: hdr,
                        flags: NEXT,
                        next: q + 5,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "head out of the table",
            (true, false),
            Box::new(move |_, _, _| Ok(q + 3)),
        ),
        (
            "address outside the memory table",
            (true, false),
            Box::new(move |n, d, _| {
                let info = n.arena.region_info();
                let far = info.guest_phys_addr + info.memory_size + (16 << 20);
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: far,
                        len: hdr + sz,
                        flags: 0,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "writable buffer on TX",
            (true, true),
            Box::new(move |n, d, buf| {
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: buf,
                        len: hdr + sz,
                        flags: WRITE,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "read-only after writable",
            (true, false),
            Box::new(move |n, d, buf| {
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: buf,
                        len: hdr,
                        flags: WRITE | NEXT,
                        next: d + 1,
                    },
                )?;
                n.desc(
                    TXQ,
                    d + 1,
                    Desc {
                        addr: buf + 64,
                        len: sz,
                        flags: 0,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "indirect length no multiple of 16",
            (true, false),
            Box::new(move |n, d, _| {
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: table_at,
                        len: 20,
                        flags: INDIRECT,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "nested indirect",
            (true, false),
            Box::new(move |n, d, _| {
                let mem = n.arena.mem();
                let inner = Desc {
                    addr: table_at,
                    len: 16,
                    flags: INDIRECT,
                    next: 0,
                };
                n.rings[TXQ]
                    .ring
                    .write_desc(&mem, Some(table_at), 0, inner)?;
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: table_at,
                        len: 16,
                        flags: INDIRECT,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "chain longer than UIO_MAXIOV",
            (true, false),
            Box::new(move |n, d, buf| {
                let mem = n.arena.mem();
                let count = UIO_MAXIOV + 4;
                for i in 0..count {
                    let last = i + 1 == count;
                    let e = Desc {
                        addr: buf + u64::from(i % 64),
                        len: 1,
                        flags: if last { 0 } else { NEXT },
                        next: if last { 0 } else { (i + 1) as u16 },
                    };
                    n.rings[TXQ]
                        .ring
                        .write_desc(&mem, Some(table_at), i as u16, e)?;
                }
                let len = count * DESC_SIZE as u32;
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: table_at,
                        len,
                        flags: INDIRECT,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "zero-length buffer",
            (true, true),
            Box::new(move |n, d, buf| {
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: buf,
                        len: 0,
                        flags: 0,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "buffer shorter than the header",
            (false, false),
            Box::new(move |n, d, buf| {
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: buf,
                        len: 8,
                        flags: 0,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
        (
            "checksum offsets past the frame",
            (false, false),
            Box::new(move |n, d, buf| {
                // virtio_net_hdr: flags NEEDS_CSUM, csum_start 200, csum_offset 16.
                let mut h = [0u8; NET_HDR_LEN];
                h[0] = 1;
                h[6..8].copy_from_slice(&200u16.to_le_bytes());
                h[8..10].copy_from_slice(&16u16.to_le_bytes());
                n.arena.write(buf, &h)?;
                n.arena
                    .write(buf + u64::from(hdr), &test_frame(b'T', 9999, 60))?;
                n.desc(
                    TXQ,
                    d,
                    Desc {
                        addr: buf,
                        len: hdr + 60,
                        flags: 0,
                        next: 0,
                    },
                )?;
                Ok(d)
            }),
        ),
    ];
    for (case, kind, write) in cases_tx {
        tx_case(n, case, kind, &mut seq, timeout, write)?;
        cases += 1;
    }
    // The avail index jumps past the ring size: refused without consuming anything; the
    // right index put back, the ring goes on.
    {
        let case = "avail index jump";
        let mem = n.arena.mem();
        let at = n.rings[TXQ].ring.avail_idx();
        n.rings[TXQ]
            .ring
            .set_avail_idx(&mem, at.wrapping_add(q + 1))?;
        n.kick(TXQ)?;
        if !n.wait_err(TXQ, timeout)? {
            return Err(fail(case, "vhost did not signal the error eventfd"));
        }
        n.rings[TXQ].ring.set_avail_idx(&mem, at)?;
        n.kick(TXQ)?;
        good_tx(n, case, &mut seq, timeout)?;
        cases += 1;
    }
    // RX.
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    good_rx(n, &inject, "first RX frame", 0, timeout)?;
    {
        let case = "read-only buffer on RX";
        let at = n.rings[RXQ].ring.avail_idx();
        let (d, buf) = n.slot(RXQ, at);
        n.desc(
            RXQ,
            d,
            Desc {
                addr: buf,
                len: 2048,
                flags: 0,
                next: 0,
            },
        )?;
        n.push(RXQ, d)?;
        inject.send(&test_frame(b'R', 1, SIZE))?;
        if !n.wait_err(RXQ, timeout)? {
            return Err(fail(case, "vhost did not signal the error eventfd"));
        }
        if let Some(u) = n.wait_used(RXQ, QUIET)? {
            return Err(fail(case, format!("vhost used the bad buffer: {u:?}")));
        }
        n.skip_bad(case, RXQ, at, true)?;
        // Frame 1 waits in the tap; the next buffer gets it.
        let (head, buf) = n.rx_buffer((NET_HDR_LEN + 2048) as u32)?;
        match n.wait_used(RXQ, timeout)? {
            Some((id, len)) if id == u32::from(head) && len == (NET_HDR_LEN + SIZE) as u32 => {}
            other => {
                return Err(fail(
                    case,
                    format!("frame 1 after the skip: used {other:?}"),
                ))
            }
        }
        let mut got = vec![0u8; SIZE];
        n.arena.read(buf + NET_HDR_LEN as u64, &mut got)?;
        if got != test_frame(b'R', 1, SIZE) {
            return Err(fail(case, "frame 1 differs after the skip"));
        }
        cases += 1;
    }
    {
        // No MRG_RXBUF: a frame larger than the buffer is dropped, the buffer stays.
        let case = "RX frame larger than the buffer";
        let (head, buf) = n.rx_buffer((NET_HDR_LEN + 100) as u32)?;
        inject.send(&test_frame(b'R', 2, 600))?;
        if let Some(u) = n.wait_used(RXQ, QUIET)? {
            return Err(fail(case, format!("vhost used the small buffer: {u:?}")));
        }
        let frame = test_frame(b'R', 3, 60);
        inject.send(&frame)?;
        match n.wait_used(RXQ, timeout)? {
            Some((id, len)) if id == u32::from(head) && len == (NET_HDR_LEN + 60) as u32 => {}
            other => return Err(fail(case, format!("the next frame: used {other:?}"))),
        }
        let mut got = vec![0u8; 60];
        n.arena.read(buf + NET_HDR_LEN as u64, &mut got)?;
        if got != frame {
            return Err(fail(case, "the next frame differs"));
        }
        if n.wait_err(RXQ, Duration::ZERO)? {
            return Err(fail(case, "vhost signalled an error for a dropped frame"));
        }
        cases += 1;
    }
    good_rx(n, &inject, "last RX frame", 4, timeout)?;
    Ok((cases, u64::from(seq) + 4))
}
