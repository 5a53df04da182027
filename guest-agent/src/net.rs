//! vhost-net workloads: the agent as the vhost-net frontend over its own memory, a tap
//! (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) as backend, AF_PACKET on the tap as the far end.
//!
//! * TX: frames put on the TX ring (queue 1) must come out of the tap byte-exact (read back
//!   through an AF_PACKET socket bound to it).
//! * RX: frames injected into the tap through AF_PACKET must land in RX ring (queue 0)
//!   buffers byte-exact, after the 12-byte `virtio_net_hdr_mrg_rxbuf`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use frontends::tap::{Tap, TapError};
use frontends::vhost_net::{VhostError, VhostNet, RX_QUEUE, TX_QUEUE};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use frontends::vring::{poll_readable, Arena, Segment, SplitQueue, VringError};
use kcov_wire::plan::Params;

/// `sizeof(struct virtio_net_hdr_mrg_rxbuf)`: the header with VERSION_1 or MRG_RXBUF.
pub const NET_HDR_LEN: usize = frontends::tap::VNET_HDR_LEN;
/// Local experimental EtherType (IEEE 802 "local experimental 1") carried by test frames.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// Size of each RX buffer's data segment.
pub const RX_BUF_LEN: usize = 2048;

/// Errors of the net workloads.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The vhost-net frontend failed.
    #[error(transparent)]
    Vhost(#[from] VhostError),
    /// The tap failed.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Ring trouble.
    #[error(transparent)]
    Ring(#[from] VringError),
    /// A syscall failed.
    #[error("{what}: {source}")]
    Sys {
        /// What.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The data check failed.
    #[error("data check: {0}")]
    Mismatch(String),
    /// Frames did not arrive.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Maps an OS error of `what` to [`NetError::Sys`] (every workload's one way to name a failed
/// system call).
pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Sys { what, source }
}

/// The agent's tap: `kcovtap%d` with a vnet header of `vnet_hdr` bytes (or none), up, IPv6
/// off.
fn open_tap(vnet_hdr: Option<usize>) -> Result<(Tap, i32), NetError> {
    let tap = Tap::open_with("kcovtap%d", vnet_hdr)?;
    tap.set_up()?;
    let ifindex = tap.ifindex()?;
    Ok((tap, ifindex))
}

/// An AF_PACKET SOCK_RAW socket bound to `ifindex`, receiving frames of `ethertype` (0: none,
/// send only; ETH_P_ALL: all).
pub(crate) fn packet_socket(ifindex: i32, ethertype: u16) -> Result<OwnedFd, NetError> {
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(sys("socket(AF_PACKET) (CONFIG_PACKET?)")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex;
    // SAFETY: sll is a valid sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(sys("bind(AF_PACKET)")(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// An AF_PACKET raw socket bound to one interface and EtherType (0 = send only).
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Binds to `ifindex`; receives frames of `ethertype` (0: none, send only).
    pub fn bind(ifindex: i32, ethertype: u16) -> Result<Self, NetError> {
        let fd = packet_socket(ifindex, ethertype)?;
        let rcvbuf: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with a valid int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const libc::c_int).cast(),
                4,
            );
        }
        Ok(PacketSocket { fd })
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<(), NetError> {
        // SAFETY: frame is a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(sys("send(AF_PACKET)")(io::Error::last_os_error()));
        }
        if n as usize != frame.len() {
            return Err(NetError::Mismatch(format!(
                "AF_PACKET sent {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    /// Receives one frame within `timeout` (`None` on timeout). Frames longer than the
    /// buffer are reported with their full length and truncated content.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Vec<u8>>, NetError> {
        if !poll_readable(&[self.fd.as_raw_fd()], timeout).map_err(sys("poll(AF_PACKET)"))?[0] {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(sys("recv(AF_PACKET)")(e));
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    }
}

/// The test frame number `seq` of `size` bytes for direction `dir` (b'T' or b'R'):
/// broadcast destination, a locally administered source, [`TEST_ETHERTYPE`], then a
/// header (`KCVT`, dir, seq) and a pattern derived from seq.
pub fn test_frame(dir: u8, seq: u32, size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0x6b, 0x63, 0x76, 0x00, dir]);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(b"KCVT");
    f.push(dir);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9) ^ u32::from(dir);
    while f.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f.truncate(size);
    f
}

/// Parses (dir, seq) out of a test frame; `None` for any other frame.
pub fn frame_id(frame: &[u8]) -> Option<(u8, u32)> {
    if frame.len() < 23
        || frame[12..14] != TEST_ETHERTYPE.to_be_bytes()
        || &frame[14..18] != b"KCVT"
    {
        return None;
    }
    Some((
        frame[18],
        u32::from_be_bytes([frame[19], frame[20], frame[21], frame[22]]),
    ))
}

/// Result counters of a net workload.
pub type Counters = Vec<(String, u64)>;

/// Features to negotiate for `params`.
pub fn wanted_features(params: &Params, net: bool) -> u64 {
    let mut f = 1u64 << VIRTIO_F_VERSION_1;
    if params.event_idx {
        f |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    if params.indirect {
        f |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
    }
    if net && params.mrg_rxbuf {
        f |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    f
}

/// How a buffer's header and frame are laid out in descriptors (VIRTIO_F_ANY_LAYOUT, implied
/// by VERSION_1: vhost must not care).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Header in one descriptor, the frame in the next (what the plain workloads do).
    Split,
    /// Header and frame in one descriptor.
    One,
    /// The header cut in two, the second piece sharing a descriptor with the frame's first
    /// half, the frame's second half in a third.
    Scattered,
}

/// The vhost-net options beyond [`Params`] that a feature-matrix variant turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Negotiate VIRTIO_F_VERSION_1 (off: a legacy device, whose header is the 10-byte
    /// `virtio_net_hdr` unless MRG_RXBUF).
    pub version_1: bool,
    /// VHOST_NET_F_VIRTIO_NET_HDR: vhost adds and strips the header, the tap sees plain frames.
    pub vhost_hdr: bool,
    /// Descriptor layout of each buffer.
    pub layout: Layout,
    /// VHOST_SET_VRING_BUSYLOOP_TIMEOUT on both rings, in microseconds (0: none).
    pub busyloop_us: u32,
    /// A finite tap send buffer (TUNSETSNDBUF): no XDP batching on TX.
    pub sndbuf: Option<i32>,
    /// VHOST_SET_FORK_FROM_OWNER: a kthread worker instead of a task forked from the owner.
    pub kthread: bool,
}

impl Default for Variant {
    /// The plain workloads' device.
    fn default() -> Self {
        Variant {
            version_1: true,
            vhost_hdr: false,
            layout: Layout::Split,
            busyloop_us: 0,
            sndbuf: None,
            kthread: false,
        }
    }
}

impl Variant {
    /// The features to negotiate with `params`.
    pub fn features(&self, params: &Params) -> u64 {
        let mut f = wanted_features(params, true);
        if !self.version_1 {
            f &= !(1u64 << VIRTIO_F_VERSION_1);
        }
        if self.vhost_hdr {
            f |= 1 << frontends::vhost_raw::NET_F_VIRTIO_NET_HDR;
        }
        f
    }

    /// The virtio-net header's length with these features (vhost_net_set_features).
    pub fn hdr_len(&self, params: &Params) -> usize {
        if self.version_1 || params.mrg_rxbuf {
            NET_HDR_LEN
        } else {
            NET_HDR_LEN - 2
        }
    }

    /// The segments of a buffer at `addr`: a header of `hdr` bytes and `data` bytes after it.
    fn segments(&self, addr: u64, hdr: usize, data: usize, write: bool) -> Vec<Segment> {
        let seg = |addr: u64, len: usize| Segment {
            addr,
            len: len as u32,
            write,
        };
        let (h, d) = (hdr as u64, data as u64);
        match self.layout {
            Layout::Split => vec![seg(addr, hdr), seg(addr + h, data)],
            Layout::One => vec![seg(addr, hdr + data)],
            Layout::Scattered => {
                let half = d / 2;
                vec![
                    seg(addr, 4),
                    seg(addr + 4, (h - 4 + half) as usize),
                    seg(addr + h + half, (d - half) as usize),
                ]
            }
        }
    }
}

/// A configured vhost-net device with both rings and a tap backend.
struct Device {
    net: VhostNet<std::sync::Arc<vm_memory::GuestMemoryMmap>>,
    rx: SplitQueue,
    tx: SplitQueue,
    tap: Tap,
    ifindex: i32,
    features: u64,
    hdr_len: usize,
}

impl Device {
    /// VHOST_SET_OWNER first: the calling thread must carry the kcov common handle.
    fn setup(arena: &mut Arena, params: &Params, v: &Variant) -> Result<Device, NetError> {
        let fork = v
            .kthread
            .then_some(frontends::vhost_raw::FORK_OWNER_KTHREAD);
        let mut net = VhostNet::open_owned_with(arena.mem(), fork)?;
        let want = v.features(params);
        let hdr_len = v.hdr_len(params);
        let rx = SplitQueue::new(arena, params.queue, params.indirect, params.event_idx)?;
        let tx = SplitQueue::new(arena, params.queue, params.indirect, params.event_idx)?;
        let rings = [rx.vhost_ring(RX_QUEUE), tx.vhost_ring(TX_QUEUE)];
        net.configure(want, &[arena.region_info()], &rings)?;
        if v.busyloop_us > 0 || v.kthread {
            // SAFETY: the fd is the device's, open for as long as `net` lives.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(net.raw_fd()) };
            let raw = frontends::vhost_raw::RawVhost::dup_of(fd).map_err(sys("dup (vhost-net)"))?;
            if v.kthread {
                let kind = raw
                    .get_fork_from_owner()
                    .map_err(sys("VHOST_GET_FORK_FROM_OWNER"))?;
                if kind != frontends::vhost_raw::FORK_OWNER_KTHREAD {
                    return Err(NetError::Mismatch(format!(
                        "VHOST_GET_FORK_FROM_OWNER says {kind}, a kthread worker was set"
                    )));
                }
            }
            for q in [RX_QUEUE, TX_QUEUE] {
                if v.busyloop_us == 0 {
                    break;
                }
                raw.set_busyloop_timeout(q as u32, v.busyloop_us)
                    .map_err(sys("VHOST_SET_VRING_BUSYLOOP_TIMEOUT"))?;
                let got = raw
                    .get_busyloop_timeout(q as u32)
                    .map_err(sys("VHOST_GET_VRING_BUSYLOOP_TIMEOUT"))?;
                if got != v.busyloop_us {
                    return Err(NetError::Mismatch(format!(
                        "busyloop timeout of queue {q}: set {}, read back {got}",
                        v.busyloop_us
                    )));
                }
            }
        }
        let vnet_hdr = (!v.vhost_hdr).then_some(hdr_len);
        let (tap, ifindex) = open_tap(vnet_hdr)?;
        if let Some(b) = v.sndbuf {
            tap.set_sndbuf(b)?;
        }
        Ok(Device {
            net,
            rx,
            tx,
            tap,
            ifindex,
            features: want,
            hdr_len,
        })
    }

    fn attach(&self) -> Result<(), NetError> {
        Ok(self.net.attach(self.tap.file())?)
    }

    /// Detaches the backend (each call flushes the worker) before the fds close.
    fn detach(&self) {
        self.net.detach();
    }

    fn counters(&self, c: &mut Counters) {
        c.push(("features".into(), self.features));
        for (name, q) in [("rx", &self.rx), ("tx", &self.tx)] {
            let s = q.stats();
            c.push((format!("{name}_kicks"), s.kicks));
            c.push((format!("{name}_kicks_suppressed"), s.kicks_suppressed));
            c.push((format!("{name}_calls"), s.calls));
            c.push((format!("{name}_used"), s.used));
        }
    }
}

/// One direction of the frame tests: the test frames it moves and how its errors say so.
struct Direction {
    /// "TX" or "RX".
    label: &'static str,
    /// The direction byte of its test frames (`test_frame`).
    kind: u8,
    /// Where a frame is checked, and where it came from.
    seen: &'static str,
    origin: &'static str,
    /// The counter of frames moved.
    moved_key: &'static str,
}

const TX: Direction = Direction {
    label: "TX",
    kind: b'T',
    seen: "out of the tap",
    origin: "put on the ring",
    moved_key: "frames_tx",
};

const RX: Direction = Direction {
    label: "RX",
    kind: b'R',
    seen: "in the ring",
    origin: "injected",
    moved_key: "frames_rx",
};

/// The frames a TX or RX run has checked on the far side.
#[derive(Default)]
struct Tally {
    verified: u32,
    bytes: u64,
    foreign: u64,
}

impl Tally {
    /// Checks one frame that came out on the far side: test frame `*want` of `dir`,
    /// byte-exact, advances `*want`; a frame that is no test frame of `dir` counts as
    /// foreign; another test frame of `dir`, or one whose bytes differ, is an error.
    fn check(
        &mut self,
        dir: &Direction,
        frame: &[u8],
        want: &mut u32,
        size: usize,
    ) -> Result<(), NetError> {
        match frame_id(frame) {
            Some((kind, seq)) if kind == dir.kind && seq == *want => {
                let expect = test_frame(dir.kind, seq, size);
                if frame != expect {
                    return Err(NetError::Mismatch(format!(
                        "{} frame {seq}: {} bytes {} differ from the {} {}",
                        dir.label,
                        frame.len(),
                        dir.seen,
                        expect.len(),
                        dir.origin
                    )));
                }
                self.verified += 1;
                self.bytes += frame.len() as u64;
                *want += 1;
            }
            Some((kind, seq)) if kind == dir.kind => {
                return Err(NetError::Mismatch(format!(
                    "{} frame {seq} where {want} was expected",
                    dir.label
                )))
            }
            _ => self.foreign += 1,
        }
        Ok(())
    }

    /// Detaches `dev` and returns the run's counters: `moved` frames, `elapsed` looping.
    fn finish(self, dev: &Device, dir: &Direction, moved: u32, elapsed: Duration) -> Counters {
        dev.detach();
        let mut c: Counters = vec![
            (dir.moved_key.into(), u64::from(moved)),
            ("frames_verified".into(), u64::from(self.verified)),
            ("bytes".into(), self.bytes),
            ("foreign_frames".into(), self.foreign),
            ("iterations".into(), u64::from(self.verified)),
            ("loop_us".into(), elapsed.as_micros() as u64),
        ];
        dev.counters(&mut c);
        c
    }
}

fn arena_for(params: &Params, size: usize) -> Result<Arena, NetError> {
    let q = usize::from(params.queue);
    let rings = 2 * (3 * 4096 + 16 * q + 6 + 2 * q + 6 + 8 * q + 16 * 4 * q);
    let bufs = q * (NET_HDR_LEN + RX_BUF_LEN.max(size) + 64);
    Ok(Arena::new(rings + bufs + (1 << 16))?)
}

/// TX: `params.frames` frames of `size` bytes through vhost-net TX into the tap.
pub fn run_tx(params: &Params, size: usize) -> Result<Counters, NetError> {
    run_tx_variant(params, &Variant::default(), size)
}

/// [`run_tx`] on a device set up as `v` says.
pub fn run_tx_variant(params: &Params, v: &Variant, size: usize) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let mut arena = arena_for(params, size)?;
    let mut dev = Device::setup(&mut arena, params, v)?;
    let sock = PacketSocket::bind(dev.ifindex, TEST_ETHERTYPE)?;
    dev.attach()?;
    let hdr = dev.hdr_len;
    let per_buf = dev.tx.descs_needed(3);
    let batch = (usize::from(params.queue) / per_buf).clamp(1, 64);
    let slots: Vec<u64> = (0..batch)
        .map(|_| arena.alloc((hdr + size) as u64, 64))
        .collect::<Result<_, _>>()?;
    let total = params.frames;
    let mut sent = 0u32;
    let mut tally = Tally::default();
    let start = Instant::now();
    while sent < total {
        let n = (total - sent).min(batch as u32);
        for i in 0..n {
            let seq = sent + i;
            let slot = slots[i as usize];
            // virtio_net_hdr(_mrg_rxbuf): no offloads (flags 0, GSO_NONE), num_buffers 0.
            arena.write(slot, &vec![0u8; hdr])?;
            arena.write(slot + hdr as u64, &test_frame(b'T', seq, size))?;
            dev.tx
                .add(&v.segments(slot, hdr, size, false), u64::from(seq))?;
        }
        dev.tx.publish()?;
        for _ in 0..n {
            dev.tx.wait_used(timeout)?;
        }
        // Every frame of the batch must come out of the tap, in order, byte-exact.
        let mut want = sent;
        while want < sent + n {
            let frame = sock.recv(timeout)?.ok_or_else(|| {
                NetError::Timeout(format!("frame {want} never came out of {}", dev.tap.name()))
            })?;
            tally.check(&TX, &frame, &mut want, size)?;
        }
        sent += n;
    }
    Ok(tally.finish(&dev, &TX, sent, start.elapsed()))
}

/// RX: `params.frames` frames injected through AF_PACKET, received from the RX ring.
pub fn run_rx(params: &Params, size: usize) -> Result<Counters, NetError> {
    run_rx_variant(params, &Variant::default(), size)
}

/// [`run_rx`] on a device set up as `v` says. Each frame must fill exactly one buffer:
/// used length = header + frame, and with MRG_RXBUF the header's `num_buffers` is 1.
pub fn run_rx_variant(params: &Params, v: &Variant, size: usize) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let mut arena = arena_for(params, size)?;
    let mut dev = Device::setup(&mut arena, params, v)?;
    let hdr = dev.hdr_len;
    let sender = PacketSocket::bind(dev.ifindex, 0)?;
    let per_buf = dev.rx.descs_needed(3);
    let nbufs = (usize::from(params.queue) / per_buf).max(1);
    let slots: Vec<u64> = (0..nbufs)
        .map(|_| arena.alloc((hdr + RX_BUF_LEN) as u64, 64))
        .collect::<Result<_, _>>()?;
    let post = |q: &mut SplitQueue, i: usize| {
        q.add(&v.segments(slots[i], hdr, RX_BUF_LEN, true), i as u64)
    };
    for i in 0..nbufs {
        post(&mut dev.rx, i)?;
    }
    dev.rx.publish()?;
    dev.attach()?;
    let batch = nbufs.min(64) as u32;
    let total = params.frames;
    let mut injected = 0u32;
    let mut tally = Tally::default();
    let start = Instant::now();
    while injected < total {
        let n = (total - injected).min(batch);
        for i in 0..n {
            sender.send(&test_frame(b'R', injected + i, size))?;
        }
        let mut want = injected;
        while want < injected + n {
            let (token, len) = dev.rx.wait_used(timeout).map_err(|e| match e {
                VringError::Timeout(_) => {
                    NetError::Timeout(format!("injected frame {want} never reached the RX ring"))
                }
                e => e.into(),
            })?;
            let slot = usize::try_from(token)
                .ok()
                .filter(|&i| i < nbufs)
                .ok_or_else(|| {
                    NetError::Mismatch(format!("RX used token {token} is no buffer of ours"))
                })?;
            let len = len as usize;
            if !(hdr..=hdr + RX_BUF_LEN).contains(&len) {
                return Err(NetError::Mismatch(format!(
                    "RX used length {len} out of range"
                )));
            }
            if dev.features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0 {
                let mut nb = [0u8; 2];
                arena.read(slots[slot] + 10, &mut nb)?;
                if u16::from_le_bytes(nb) != 1 {
                    return Err(NetError::Mismatch(format!(
                        "RX frame {want}: num_buffers {} in the header, one buffer was used",
                        u16::from_le_bytes(nb)
                    )));
                }
            }
            let mut got = vec![0u8; len - hdr];
            arena.read(slots[slot] + hdr as u64, &mut got)?;
            post(&mut dev.rx, slot)?;
            dev.rx.publish()?;
            tally.check(&RX, &got, &mut want, size)?;
        }
        injected += n;
    }
    Ok(tally.finish(&dev, &RX, injected, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_checks_order_bytes_and_foreign_frames() {
        let mut t = Tally::default();
        let mut want = 0;
        t.check(&TX, &test_frame(b'T', 0, 100), &mut want, 100)
            .unwrap();
        // An RX frame on the TX side, or no test frame at all: foreign.
        t.check(&TX, &test_frame(b'R', 1, 100), &mut want, 100)
            .unwrap();
        t.check(&TX, &[0u8; 60], &mut want, 100).unwrap();
        assert_eq!((want, t.verified, t.bytes, t.foreign), (1, 1, 100, 2));
        let e = t
            .check(&TX, &test_frame(b'T', 5, 100), &mut want, 100)
            .unwrap_err();
        assert!(
            e.to_string().contains("TX frame 5 where 1 was expected"),
            "{e}"
        );
        let mut bad = test_frame(b'R', 1, 100);
        *bad.last_mut().unwrap() ^= 1;
        let e = t.check(&RX, &bad, &mut want, 100).unwrap_err();
        assert!(
            e.to_string()
                .contains("RX frame 1: 100 bytes in the ring differ from the 100 injected"),
            "{e}"
        );
        assert_eq!((want, t.verified), (1, 1));
    }

    #[test]
    fn test_frames_are_distinct_and_identifiable() {
        let a = test_frame(b'T', 1, 256);
        let b = test_frame(b'T', 2, 256);
        let r = test_frame(b'R', 1, 256);
        assert_eq!(a.len(), 256);
        assert_ne!(a, b);
        assert_ne!(a, r);
        assert_eq!(frame_id(&a), Some((b'T', 1)));
        assert_eq!(frame_id(&r), Some((b'R', 1)));
        assert_eq!(frame_id(&a[..20]), None);
        let mut ipv6 = a.clone();
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(frame_id(&ipv6), None);
        assert_eq!(test_frame(b'T', 7, 1514), test_frame(b'T', 7, 1514));
        assert_eq!(test_frame(b'T', 7, 60).len(), 60);
    }

    #[test]
    fn features_follow_params() {
        let p = Params::default();
        let f = wanted_features(&p, true);
        assert_ne!(f & (1 << 32), 0);
        assert_ne!(f & (1 << 29), 0, "event idx by default");
        assert_ne!(f & (1 << 15), 0, "mrg_rxbuf by default");
        assert_eq!(f & (1 << 28), 0);
        let p = Params {
            indirect: true,
            event_idx: false,
            mrg_rxbuf: false,
            ..p
        };
        assert_eq!(wanted_features(&p, true), (1 << 32) | (1 << 28));
        assert_eq!(wanted_features(&Params::default(), false) & (1 << 15), 0);
    }
}
