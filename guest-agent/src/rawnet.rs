//! A vhost-net device driven ioctl by ioctl ([`frontends::vhost_raw`]) over raw split rings
//! ([`DriverRing`]): what the breadth workloads (`vhost-net-errors`, `vhost-net-control`)
//! need to write any descriptor, move ring bases, detach and re-attach backends, and read the
//! kernel's exact errno.
//!
//! Each ring has its own kick, call and error eventfd (`VHOST_SET_VRING_ERR`: vhost signals
//! it on every `vq_err`). TX frames use two descriptors, `2k` and `2k + 1` modulo the ring
//! size for avail index `k`, so a frame's descriptors are only reused after the ring went
//! round once; RX buffers the same.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use frontends::tap::Tap;
use frontends::vhost_raw::{MemRegion, RawVhost, VringAddr, VRING_F_LOG};
use frontends::vring::{poll_readable, Arena, Desc, DriverRing, DESC_SIZE};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::net::{frame_id, test_frame, NetError, PacketSocket, TEST_ETHERTYPE};

/// vhost-net queue index of the RX ring.
pub const RXQ: usize = 0;
/// vhost-net queue index of the TX ring.
pub const TXQ: usize = 1;
/// Bytes reserved per descriptor slot (header + a full frame + slack).
pub const SLOT: u64 = 4096;

/// A failed check of a breadth workload, named by its case.
pub fn fail(case: &str, what: impl std::fmt::Display) -> NetError {
    NetError::Mismatch(format!("{case}: {what}"))
}

/// `r` must fail with exactly `errno`.
pub fn expect_errno<T: std::fmt::Debug>(
    case: &str,
    r: io::Result<T>,
    errno: i32,
) -> Result<(), NetError> {
    match r {
        Err(e) if e.raw_os_error() == Some(errno) => Ok(()),
        Err(e) => Err(fail(
            case,
            format!(
                "expected errno {errno} ({}), got {e}",
                io::Error::from_raw_os_error(errno)
            ),
        )),
        Ok(v) => Err(fail(
            case,
            format!(
                "expected errno {errno} ({}), the call succeeded ({v:?})",
                io::Error::from_raw_os_error(errno)
            ),
        )),
    }
}

/// `r` must succeed.
pub fn expect_ok<T>(case: &str, r: io::Result<T>) -> Result<T, NetError> {
    r.map_err(|e| fail(case, e))
}

/// One ring: its driver view, its eventfds.
pub struct RawRing {
    /// The driver's view.
    pub ring: DriverRing,
    /// Kick eventfd.
    pub kick: EventFd,
    /// Call eventfd.
    pub call: EventFd,
    /// Error eventfd (`VHOST_SET_VRING_ERR`).
    pub err: EventFd,
    /// Buffer slots, one per descriptor pair.
    pub bufs: u64,
}

/// How to set a device up.
#[derive(Debug, Clone, Copy)]
pub struct RawOpts {
    /// Features to negotiate.
    pub features: u64,
    /// Ring size.
    pub queue: u16,
    /// `VHOST_SET_FORK_FROM_OWNER` before `VHOST_SET_OWNER` (None: leave the default).
    pub fork_owner: Option<u8>,
    /// Attach the tap to both rings at the end of setup.
    pub attach: bool,
}

impl RawOpts {
    /// `features` on rings of `queue` entries, the default owner, the tap attached by the
    /// workload itself.
    pub fn new(features: u64, queue: u16) -> RawOpts {
        RawOpts {
            features,
            queue,
            fork_owner: None,
            attach: false,
        }
    }
}

/// `VIRTIO_F_VERSION_1` as a feature bit.
pub const F_V1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// The device, its memory, rings, tap and AF_PACKET socket.
pub struct RawNet {
    /// The vhost-net fd.
    pub dev: RawVhost,
    /// Its memory (identity memory table).
    pub arena: Arena,
    /// RX and TX rings ([`RXQ`], [`TXQ`]).
    pub rings: [RawRing; 2],
    /// The tap backend.
    pub tap: Tap,
    /// AF_PACKET on the tap: test frames out of TX, frames injected for RX.
    pub sock: PacketSocket,
    /// Negotiated features.
    pub features: u64,
}

fn efd(what: &'static str) -> Result<EventFd, NetError> {
    EventFd::new(EFD_NONBLOCK).map_err(|source| NetError::Sys {
        what: format!("eventfd ({what})"),
        source,
    })
}

impl RawNet {
    /// Memory for two rings of `queue` entries and their buffer slots, plus `extra` bytes.
    pub fn arena(queue: u16, extra: usize) -> Result<Arena, NetError> {
        let q = usize::from(queue);
        Ok(Arena::new(
            2 * (3 * 4096 + 32 * q + q * SLOT as usize) + extra + (1 << 16),
        )?)
    }

    /// Opens /dev/vhost-net, becomes its owner (the calling thread's kcov handle goes to the
    /// worker) and sets features, memory and both rings up; attaches the tap if asked.
    pub fn open(mut arena: Arena, o: RawOpts) -> Result<RawNet, NetError> {
        let dev = RawVhost::open(frontends::vhost_net::VHOST_NET_PATH).map_err(|source| {
            NetError::Sys {
                what: "open /dev/vhost-net".into(),
                source,
            }
        })?;
        if let Some(v) = o.fork_owner {
            expect_ok("VHOST_SET_FORK_FROM_OWNER", dev.set_fork_from_owner(v))?;
        }
        expect_ok("VHOST_SET_OWNER", dev.set_owner())?;
        let offered = expect_ok("VHOST_GET_FEATURES", dev.get_features())?;
        if offered & o.features != o.features {
            return Err(fail(
                "VHOST_GET_FEATURES",
                format!(
                    "{:#x} not offered (offers {offered:#x})",
                    o.features & !offered
                ),
            ));
        }
        expect_ok("VHOST_SET_FEATURES", dev.set_features(o.features))?;
        let info = arena.region_info();
        expect_ok(
            "VHOST_SET_MEM_TABLE",
            dev.set_mem_table(&[MemRegion {
                guest_phys_addr: info.guest_phys_addr,
                memory_size: info.memory_size,
                userspace_addr: info.userspace_addr,
                flags_padding: 0,
            }]),
        )?;
        let ring = |arena: &mut Arena| -> Result<RawRing, NetError> {
            let n = u64::from(o.queue);
            let desc = arena.alloc(DESC_SIZE * n, 4096)?;
            let avail = arena.alloc(6 + 2 * n, 4096)?;
            let used = arena.alloc(6 + 8 * n, 4096)?;
            let bufs = arena.alloc(SLOT * n / 2, 4096)?;
            Ok(RawRing {
                ring: DriverRing::new(o.queue, desc, avail, used),
                kick: efd("kick")?,
                call: efd("call")?,
                err: efd("err")?,
                bufs,
            })
        };
        let rings = [ring(&mut arena)?, ring(&mut arena)?];
        for (i, r) in rings.iter().enumerate() {
            r.configure(&dev, i as u32)?;
        }
        let tap = Tap::open("kcovtap%d")?;
        tap.set_up()?;
        let sock = PacketSocket::bind(tap.ifindex()?, TEST_ETHERTYPE)?;
        let net = RawNet {
            dev,
            arena,
            rings,
            tap,
            sock,
            features: o.features,
        };
        if o.attach {
            net.attach(RXQ)?;
            net.attach(TXQ)?;
        }
        Ok(net)
    }

    /// `VHOST_NET_SET_BACKEND` of the tap on queue `q`.
    pub fn attach(&self, q: usize) -> Result<(), NetError> {
        expect_ok(
            "VHOST_NET_SET_BACKEND",
            self.dev
                .net_set_backend(q as u32, self.tap.file().as_raw_fd()),
        )
    }

    /// Detaches queue `q`'s backend (flushes its worker).
    pub fn detach(&self, q: usize) -> Result<(), NetError> {
        expect_ok(
            "VHOST_NET_SET_BACKEND -1",
            self.dev.net_set_backend(q as u32, -1),
        )
    }

    /// Detaches both queues, ignoring errors (teardown).
    pub fn detach_all(&self) {
        for q in [RXQ, TXQ] {
            let _ = self.dev.net_set_backend(q as u32, -1);
        }
    }

    /// The slot of avail index `k` on ring `q`: (first descriptor, buffer address).
    pub fn slot(&self, q: usize, k: u16) -> (u16, u64) {
        let r = &self.rings[q];
        let pairs = r.ring.size / 2;
        let p = k % pairs;
        (2 * p, r.bufs + SLOT * u64::from(p))
    }

    /// Writes descriptor `idx` of ring `q`.
    pub fn desc(&self, q: usize, idx: u16, d: Desc) -> Result<(), NetError> {
        Ok(self.rings[q]
            .ring
            .write_desc(&self.arena.mem(), None, idx, d)?)
    }

    /// Makes `head` available on ring `q` and kicks.
    pub fn push(&mut self, q: usize, head: u16) -> Result<(), NetError> {
        let mem = self.arena.mem();
        self.rings[q].ring.push_avail(&mem, head)?;
        self.kick(q)
    }

    /// Kicks ring `q`.
    pub fn kick(&self, q: usize) -> Result<(), NetError> {
        self.rings[q].kick.write(1).map_err(|source| NetError::Sys {
            what: "kick eventfd".into(),
            source,
        })
    }

    /// Puts TX test frame `seq` of `size` bytes (a zero virtio-net header of `hdr` bytes,
    /// then the frame, in two descriptors) on the next avail slot and kicks. Returns its head.
    pub fn tx_frame(&mut self, seq: u32, size: usize, hdr: usize) -> Result<u16, NetError> {
        let d = self.put_tx_frame(seq, size, hdr)?;
        self.kick(TXQ)?;
        Ok(d)
    }

    /// [`tx_frame`](Self::tx_frame) without the kick (published, not announced).
    pub fn put_tx_frame(&mut self, seq: u32, size: usize, hdr: usize) -> Result<u16, NetError> {
        let k = self.rings[TXQ].ring.avail_idx();
        let (d, buf) = self.slot(TXQ, k);
        self.arena.write(buf, &vec![0u8; hdr])?;
        self.arena
            .write(buf + hdr as u64, &test_frame(b'T', seq, size))?;
        let next = VRING_DESC_F_NEXT as u16;
        self.desc(
            TXQ,
            d,
            Desc {
                addr: buf,
                len: hdr as u32,
                flags: next,
                next: d + 1,
            },
        )?;
        self.desc(
            TXQ,
            d + 1,
            Desc {
                addr: buf + hdr as u64,
                len: size as u32,
                flags: 0,
                next: 0,
            },
        )?;
        self.push(TXQ, d)?;
        Ok(d)
    }

    /// Posts an RX buffer of `len` bytes (one writable descriptor) on the next avail slot and
    /// kicks. Returns (head, buffer address).
    pub fn rx_buffer(&mut self, len: u32) -> Result<(u16, u64), NetError> {
        let posted = self.post_rx(None, len)?;
        self.kick(RXQ)?;
        Ok(posted)
    }

    /// Makes one writable descriptor of `len` bytes the next avail RX entry, without a kick:
    /// the slot's own buffer, or the one at `addr`. Returns (head, buffer address).
    pub fn post_rx(&mut self, addr: Option<u64>, len: u32) -> Result<(u16, u64), NetError> {
        let k = self.rings[RXQ].ring.avail_idx();
        let (d, slot_buf) = self.slot(RXQ, k);
        let buf = addr.unwrap_or(slot_buf);
        self.desc(
            RXQ,
            d,
            Desc {
                addr: buf,
                len,
                flags: VRING_DESC_F_WRITE as u16,
                next: 0,
            },
        )?;
        let mem = self.arena.mem();
        self.rings[RXQ].ring.push_avail(&mem, d)?;
        Ok((d, buf))
    }

    /// The next used element of ring `q` within `timeout` (None: none came).
    pub fn wait_used(
        &mut self,
        q: usize,
        timeout: Duration,
    ) -> Result<Option<(u32, u32)>, NetError> {
        let deadline = Instant::now() + timeout;
        let mem = self.arena.mem();
        loop {
            if let Some(u) = self.rings[q].ring.next_used(&mem)? {
                return Ok(Some(u));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let fd = self.rings[q].call.as_raw_fd();
            if poll_readable(&[fd], left.min(Duration::from_millis(20))).map_err(|source| {
                NetError::Sys {
                    what: "poll (call)".into(),
                    source,
                }
            })?[0]
            {
                let _ = self.rings[q].call.read();
            }
        }
    }

    /// Whether ring `q`'s error eventfd fired within `timeout` (cleared when it did).
    pub fn wait_err(&self, q: usize, timeout: Duration) -> Result<bool, NetError> {
        let fd = self.rings[q].err.as_raw_fd();
        let fired = poll_readable(&[fd], timeout).map_err(|source| NetError::Sys {
            what: "poll (err)".into(),
            source,
        })?[0];
        if fired {
            let _ = self.rings[q].err.read();
        }
        Ok(fired)
    }

    /// Waits for TX test frame `seq` (`size` bytes) to come out of the tap byte-exact.
    pub fn expect_tx_out(
        &self,
        case: &str,
        seq: u32,
        size: usize,
        timeout: Duration,
    ) -> Result<(), NetError> {
        let deadline = Instant::now() + timeout;
        let want = test_frame(b'T', seq, size);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(f) = self.sock.recv(left)? else {
                return Err(fail(
                    case,
                    format!("TX frame {seq} never came out of the tap"),
                ));
            };
            match frame_id(&f) {
                Some((b'T', s)) if s == seq => {
                    if f != want {
                        return Err(fail(case, format!("TX frame {seq} differs")));
                    }
                    return Ok(());
                }
                Some((b'T', s)) => {
                    return Err(fail(
                        case,
                        format!("TX frame {s} came out where {seq} was expected"),
                    ))
                }
                _ => {}
            }
        }
    }

    /// TX test frame `seq` of `size` bytes (behind a zero 12-byte header) must come out of
    /// the tap byte-exact and its head be used with length 0.
    pub fn tx_checked(
        &mut self,
        case: &str,
        seq: u32,
        size: usize,
        timeout: Duration,
    ) -> Result<(), NetError> {
        let head = self.tx_frame(seq, size, crate::net::NET_HDR_LEN)?;
        self.expect_tx_out(case, seq, size, timeout)?;
        match self.wait_used(TXQ, timeout)? {
            Some((id, 0)) if id == u32::from(head) => Ok(()),
            other => Err(fail(case, format!("TX frame {seq}: used {other:?}"))),
        }
    }

    /// No TX test frame comes out of the tap within `quiet`.
    pub fn expect_no_tx_out(&self, case: &str, quiet: Duration) -> Result<(), NetError> {
        let deadline = Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.sock.recv(left)? {
                None => return Ok(()),
                Some(f) => {
                    if let Some((b'T', s)) = frame_id(&f) {
                        return Err(fail(case, format!("TX frame {s} came out of the tap")));
                    }
                }
            }
        }
    }

    /// Sets VHOST_VRING_F_LOG on ring `q`, logging its used ring at its own address.
    pub fn log_ring(&self, case: &str, q: usize) -> Result<(), NetError> {
        let mut a = self.rings[q].vring_addr(q as u32);
        a.flags = VRING_F_LOG;
        a.log_guest_addr = a.used;
        expect_ok(case, self.dev.set_vring_addr(&a))
    }

    /// Ring `q` stopped at the bad buffer at avail index `at`: detaches it, checks
    /// `VHOST_GET_VRING_BASE` says `at` (vhost left it there) or `at + 1` (`consumed`: vhost
    /// took it off the ring and never used it), moves the base past it with
    /// `VHOST_SET_VRING_BASE`, re-attaches, and checks that moving the base of an attached
    /// ring is refused (EBUSY).
    pub fn skip_bad(
        &mut self,
        case: &str,
        q: usize,
        at: u16,
        consumed: bool,
    ) -> Result<(), NetError> {
        self.detach(q)?;
        let base = expect_ok(case, self.dev.get_vring_base(q as u32))?;
        let want = u32::from(at.wrapping_add(u16::from(consumed)));
        if base != want {
            return Err(fail(
                case,
                format!(
                    "VHOST_GET_VRING_BASE {base}, expected {want} (bad buffer at avail index {at}, {})",
                    if consumed { "taken off the ring" } else { "left on the ring" }
                ),
            ));
        }
        expect_ok(
            case,
            self.dev
                .set_vring_base(q as u32, u32::from(at.wrapping_add(1))),
        )?;
        self.attach(q)?;
        expect_errno(case, self.dev.set_vring_base(q as u32, 0), libc::EBUSY)
    }
}

/// `VHOST_SET_VRING_ADDR` data for `ring` as queue `index` (no log, no flags).
fn vring_addr_of(ring: &DriverRing, index: u32) -> VringAddr {
    VringAddr {
        index,
        flags: 0,
        desc: ring.desc,
        used: ring.used,
        avail: ring.avail,
        log_guest_addr: 0,
    }
}

/// Hands `ring` to `dev` as queue `index`: VHOST_SET_VRING_NUM (the ring's size), _ADDR, _BASE
/// 0, _KICK, _CALL and _ERR with the three eventfds, each of which must succeed. The one
/// ring set-up of the raw workloads (vhost-net's `RawNet`, vhost-vsock's `vsock_control::Dev`).
pub fn configure_vring(
    dev: &RawVhost,
    index: u32,
    ring: &DriverRing,
    kick: &EventFd,
    call: &EventFd,
    err: &EventFd,
) -> Result<(), NetError> {
    expect_ok(
        "VHOST_SET_VRING_NUM",
        dev.set_vring_num(index, u32::from(ring.size)),
    )?;
    expect_ok(
        "VHOST_SET_VRING_ADDR",
        dev.set_vring_addr(&vring_addr_of(ring, index)),
    )?;
    expect_ok("VHOST_SET_VRING_BASE", dev.set_vring_base(index, 0))?;
    expect_ok(
        "VHOST_SET_VRING_KICK",
        dev.set_vring_kick(index, kick.as_raw_fd()),
    )?;
    expect_ok(
        "VHOST_SET_VRING_CALL",
        dev.set_vring_call(index, call.as_raw_fd()),
    )?;
    expect_ok(
        "VHOST_SET_VRING_ERR",
        dev.set_vring_err(index, err.as_raw_fd()),
    )
}

impl RawRing {
    fn addr(&self, index: u32) -> VringAddr {
        vring_addr_of(&self.ring, index)
    }

    /// Hands this ring to `dev` as queue `index`: size, addresses, base 0, kick, call, err.
    pub fn configure(&self, dev: &RawVhost, index: u32) -> Result<(), NetError> {
        configure_vring(dev, index, &self.ring, &self.kick, &self.call, &self.err)
    }

    /// `VHOST_SET_VRING_ADDR` data for queue `index` (to change, e.g. for the dirty log).
    pub fn vring_addr(&self, index: u32) -> VringAddr {
        self.addr(index)
    }
}

/// vhost's dirty-log page size (`VHOST_PAGE_SIZE`).
pub const VHOST_PAGE: u64 = 4096;

/// The dirty-log page of address `a`.
pub fn page(a: u64) -> u64 {
    a / VHOST_PAGE
}

/// A dirty-log bitmap for the frontend memory `info` describes: one bit per 4 KiB page of
/// guest address, the byte of address a at `base() + a / 2^15`; only the memory's part of it
/// is mapped.
pub struct DirtyLog {
    mem: Arena,
    at: u64,
    first: u64,
    bytes: u64,
}

impl DirtyLog {
    /// A zeroed bitmap covering the memory `info` describes.
    pub fn new(info: &vhost::VhostUserMemoryRegionInfo) -> Result<DirtyLog, NetError> {
        let first = info.guest_phys_addr >> 15;
        let bytes = (info.memory_size >> 15) + 2;
        let mut mem = Arena::new(bytes as usize)?;
        let at = mem.alloc(bytes, 8)?;
        Ok(DirtyLog {
            mem,
            at,
            first,
            bytes,
        })
    }

    /// What VHOST_SET_LOG_BASE gets.
    pub fn base(&self) -> u64 {
        self.at.wrapping_sub(self.first)
    }

    /// The pages whose bits are set.
    pub fn pages(&self) -> Result<std::collections::BTreeSet<u64>, NetError> {
        let mut b = vec![0u8; self.bytes as usize];
        self.mem.read(self.at, &mut b)?;
        let mut logged = std::collections::BTreeSet::new();
        for (i, b) in b.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    logged.insert((self.first + i as u64) * 8 + bit);
                }
            }
        }
        Ok(logged)
    }
}

/// The pages the log names must be exactly the expected ones.
pub fn compare(
    case: &str,
    what: &str,
    logged: &std::collections::BTreeSet<u64>,
    expected: &std::collections::BTreeSet<u64>,
) -> Result<(), NetError> {
    if logged == expected {
        return Ok(());
    }
    let extra: Vec<_> = logged.difference(expected).collect();
    let missing: Vec<_> = expected.difference(logged).collect();
    Err(fail(
        case,
        format!("{what}: logged pages differ: {extra:#x?} not written, {missing:#x?} not logged"),
    ))
}

/// Whether `efd` fired (is readable now); reads it down when it did.
pub fn drain_fired(efd: &EventFd) -> Result<bool, NetError> {
    let ready =
        poll_readable(&[efd.as_raw_fd()], Duration::ZERO).map_err(|source| NetError::Sys {
            what: "poll (eventfd)".into(),
            source,
        })?;
    Ok(ready.first() == Some(&true) && efd.read().is_ok())
}
