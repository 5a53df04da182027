//! virtio-net throughput through the tap backend, for `cargo xtask bench net`
//! and `benches/tests/net.rs`.
//!
//! [`run_vm`] boots the [`vmm::guests::NET_BENCH`] test guest under
//! /dev/kvm with a [`NetDevice`] on a fresh tap and moves `frames` Ethernet
//! frames of `frame_len` bytes one way:
//!
//! * [`Direction::Tx`] (guest → host): the guest sends as fast as its TX ring
//!   allows; an AF_PACKET socket bound to the tap receives and compares every
//!   frame byte for byte. Nothing paces the guest: frames the socket cannot
//!   queue are dropped by the kernel and show up as lost (and in
//!   [`NetBenchResult::socket_dropped`]).
//! * [`Direction::Rx`] (host → guest): this process sends the frames through an
//!   AF_PACKET socket on the tap, keeping at most a window (half the tap's
//!   queue, at most 256) in flight beyond what the guest has reported through
//!   [`BENCH_PORT`], so the tap's queue does not overflow; where it does anyway
//!   the tap's `tx_dropped` counts it. The guest counts, checks the length and
//!   sequence number of, and (with `verify`) checksums every frame.
//!
//! [`run_host`] is the baseline: the same frames through the same kind of tap
//! with no VM, a host thread in the guest's place (TX: writes to the tap fd;
//! RX: reads the tap fd, with the guest's accounting and progress reports).
//!
//! Frame layout and guest protocol: `vmm/guests/net_bench.c` (mirrored here).
//! Everything the guest reports is checked; a guest that misbehaves gives a
//! [`NetBenchError::Guest`], never a panic.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use frontends::netif::ifreq;
use vmm::devices::virtio::net::tap::{Tap, TapError, TUN_PATH};
use vmm::devices::virtio::net::{NetBackend, NetDevice, NetStats, DEFAULT_MAC};
use vmm::devices::virtio::{device_type, VirtioMmioDevice};
use vmm::devices::BusDevice;
use vmm::guests::{BOOT_MAGIC, END_MAGIC, REPORT_PORT};

/// Port the guest writes progress to and reads the host's control word from
/// (`BENCH_PORT` in net_bench.c).
pub const BENCH_PORT: u16 = REPORT_PORT + 8;
/// Control word bit: stop receiving and report.
pub const CTRL_STOP: u32 = 1;
/// Ethertype of the bench frames (IEEE local experimental 2).
pub const ETHERTYPE: u16 = 0x88b6;
/// Offset of the little-endian u32 sequence number in a frame.
pub const SEQ_OFF: usize = 14;
/// Offset of the first pattern byte.
pub const PAT_OFF: usize = 18;
/// Shortest frame the guest accepts (an Ethernet minimum frame without FCS).
pub const MIN_LEN: usize = 60;
/// Longest frame: the device's limit (65535 MTU + Ethernet header + VLAN tag).
pub const MAX_LEN: usize = 65553;
/// Most frames in one run.
pub const MAX_FRAMES: u32 = 0x7fff_ffff;
/// Source MAC of the frames the host injects (locally administered).
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The guest's (and the RX baseline's) progress report interval, in frames.
pub const PROGRESS_EVERY: u64 = 32;
/// vnet header on every tap read/write (`virtio_net_hdr_v1`).
const VNET_HDR: usize = 12;
/// Most frames the host keeps in flight towards the RX sink.
const MAX_WINDOW: u64 = 256;
/// How long a sink may stay silent, once its source is done, before the run
/// is considered over (frames still missing are lost).
const QUIET: Duration = Duration::from_millis(300);
/// RX: no progress at all for this long while the window is full ends sending.
const STALL: Duration = Duration::from_secs(5);
/// Reports kept from one guest.
const MAX_REPORTS: usize = 256;

/// Why a run could not be made or did not add up. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum NetBenchError {
    /// This host cannot run the bench (not root, no tun, no usable /dev/kvm):
    /// callers print it as a skip reason.
    #[error("{0}")]
    Unavailable(String),
    /// The configuration is out of range.
    #[error("bad net bench configuration: {0}")]
    Config(String),
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A host networking step failed.
    #[error("{op}: {source}")]
    Io {
        /// What failed.
        op: String,
        /// The OS error.
        source: io::Error,
    },
    /// The VM could not be run.
    #[error("VM: {0}")]
    Vm(#[from] vmm::Error),
    /// The guest's reports do not follow net_bench.c's protocol.
    #[error("net bench guest: {0}")]
    Guest(String),
    /// A helper thread panicked.
    #[error("net bench: the {0} thread panicked")]
    Thread(&'static str),
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> NetBenchError {
    let op = op.into();
    move |source| NetBenchError::Io { op, source }
}

fn last_os(op: impl Into<String>) -> NetBenchError {
    NetBenchError::Io {
        op: op.into(),
        source: io::Error::last_os_error(),
    }
}

/// Which way the frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest → host (the guest's transmitq).
    Tx,
    /// Host → guest (the guest's receiveq).
    Rx,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Tx => "TX guest->tap",
            Direction::Rx => "RX tap->guest",
        })
    }
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct NetBenchConfig {
    /// Which way.
    pub direction: Direction,
    /// Frames to send (1..=[`MAX_FRAMES`]).
    pub frames: u32,
    /// Ethernet frame length (no vnet header, no FCS): [`MIN_LEN`]..=[`MAX_LEN`]
    /// for TX, up to 65535 for RX (the largest frame a host can send into a
    /// tap, [`TAP_MAX_MTU`]).
    pub frame_len: usize,
    /// RX: the sink sums [`frame_sum`] over every frame (checked against the
    /// frames sent). TX frames are always compared byte for byte.
    pub verify: bool,
    /// Whole run, VM included.
    pub timeout: Duration,
}

impl NetBenchConfig {
    /// A config with a 120 s timeout.
    pub fn new(direction: Direction, frames: u32, frame_len: usize, verify: bool) -> Self {
        NetBenchConfig {
            direction,
            frames,
            frame_len,
            verify,
            timeout: Duration::from_secs(120),
        }
    }

    fn check(&self) -> Result<(), NetBenchError> {
        let max = match self.direction {
            Direction::Tx => MAX_LEN,
            Direction::Rx => TAP_MAX_MTU as usize + 14,
        };
        if !(1..=MAX_FRAMES).contains(&self.frames) {
            return Err(NetBenchError::Config(format!(
                "frames {} not in 1..={MAX_FRAMES}",
                self.frames
            )));
        }
        if !(MIN_LEN..=max).contains(&self.frame_len) {
            return Err(NetBenchError::Config(format!(
                "frame length {} not in {MIN_LEN}..={max} ({})",
                self.frame_len, self.direction
            )));
        }
        Ok(())
    }
}

/// A frame sum the sink computed and the one the frames sent add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksumCheck {
    /// Wrapping sum of [`frame_sum`] over the frames the sink accepted.
    pub got: u64,
    /// The same over every frame sent.
    pub want: u64,
}

/// What the VM side of a [`run_vm`] reported.
#[derive(Debug, Clone)]
pub struct VmSide {
    /// Whole VM run (boot, handshake, transfer, reset).
    pub wall: Duration,
    /// Device counters.
    pub device: NetStats,
    /// QueueNotify writes the guest made (the rest were suppressed).
    pub kicks: u32,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// TX slots (two-descriptor chains) / RX buffers the guest kept posted.
    pub buffers: u32,
    /// RX: the guest stopped on the host's word (frames were missing).
    pub stopped_by_host: bool,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct NetBenchResult {
    /// Which way.
    pub direction: Direction,
    /// Ethernet frame length.
    pub frame_len: usize,
    /// Frames the source put out: TX from the guest, the frames the device
    /// took from its ring; TX from the host, the frames written to the tap;
    /// RX, the frames sent into the tap.
    pub sent: u64,
    /// Frames the sink accepted: the right length and content (TX), the right
    /// length and ethertype (RX).
    pub delivered: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames at the sink with a wrong length or (TX) content.
    pub corrupt: u64,
    /// Sequence numbers the sink skipped.
    pub gaps: u64,
    /// Frames whose sequence number went backwards.
    pub reordered: u64,
    /// RX: frames of another ethertype (the host stack's own).
    pub ignored: u64,
    /// RX: frames the tap dropped because its queue was full (`tx_dropped`).
    pub tap_dropped: u64,
    /// TX: frames the AF_PACKET socket dropped (`PACKET_STATISTICS`).
    pub socket_dropped: u64,
    /// RX: the host stopped sending because the sink made no progress.
    pub stalled: bool,
    /// Source start to the sink's last frame.
    pub elapsed: Duration,
    /// RX with `verify`.
    pub checksum: Option<ChecksumCheck>,
    /// [`run_vm`] only.
    pub vm: Option<VmSide>,
}

impl NetBenchResult {
    /// Frames sent but not delivered.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
    /// Delivered frames per second.
    pub fn frames_per_s(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Delivered frame bytes, in MB (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Every frame arrived once, in order, intact (and the checksum matches
    /// where one was taken).
    pub fn all_delivered_intact(&self) -> bool {
        self.delivered == self.sent
            && self.corrupt == 0
            && self.gaps == 0
            && self.reordered == 0
            && self.checksum.is_none_or(|c| c.got == c.want)
    }
}

impl std::fmt::Display for NetBenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} B: {:.0} frames/s, {:.1} MB/s; delivered {}/{} (lost {}, corrupt {}, gaps {}, reordered {}",
            self.direction,
            self.frame_len,
            self.frames_per_s(),
            self.mb_per_s(),
            self.delivered,
            self.sent,
            self.lost(),
            self.corrupt,
            self.gaps,
            self.reordered,
        )?;
        match self.direction {
            Direction::Tx => write!(f, ", socket dropped {}", self.socket_dropped)?,
            Direction::Rx => write!(
                f,
                ", tap dropped {}, ignored {}",
                self.tap_dropped, self.ignored
            )?,
        }
        if self.stalled {
            f.write_str(", sending stalled")?;
        }
        write!(f, ") in {:.3} s", self.elapsed.as_secs_f64())?;
        if let Some(c) = self.checksum {
            let ok = if c.got == c.want { "ok" } else { "MISMATCH" };
            write!(f, "; checksum {ok} ({:#018x})", c.got)?;
        }
        if let Some(v) = &self.vm {
            write!(
                f,
                "; guest kicks {}, event_idx {}, {} buffers; VM run {:.3} s",
                v.kicks,
                v.event_idx,
                v.buffers,
                v.wall.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// Payload byte `j` of every frame (`pat` in net_bench.c).
pub fn pattern(j: usize) -> u8 {
    (j.wrapping_mul(7).wrapping_add((j >> 8).wrapping_mul(3)) + 1) as u8
}

/// Fletcher-style sum of a frame: little-endian 64-bit words, the tail
/// zero-padded (`frame_sum` in net_bench.c).
pub fn frame_sum(f: &[u8]) -> u64 {
    let (mut a, mut b) = (0u64, 0u64);
    let mut words = f.chunks_exact(8);
    for w in &mut words {
        let mut x = [0u8; 8];
        x.copy_from_slice(w);
        a = a.wrapping_add(u64::from_le_bytes(x));
        b = b.wrapping_add(a);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    a = a.wrapping_add(u64::from_le_bytes(tail));
    b = b.wrapping_add(a);
    a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ f.len() as u64
}

/// Frame `seq` of a run: `dst`, `src`, [`ETHERTYPE`], `seq`, the pattern.
pub fn frame(len: usize, seq: u32, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend(dst);
    f.extend(src);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(seq.to_le_bytes());
    f.extend((PAT_OFF..len).map(pattern));
    f.truncate(len);
    f
}

/// The frames of a direction: TX from the guest's MAC to broadcast, RX from
/// [`HOST_MAC`] to the guest's MAC.
fn frame_for(dir: Direction, len: usize, seq: u32) -> Vec<u8> {
    match dir {
        Direction::Tx => frame(len, seq, [0xff; 6], DEFAULT_MAC),
        Direction::Rx => frame(len, seq, DEFAULT_MAC, HOST_MAC),
    }
}

fn seq_of(f: &[u8]) -> Option<u32> {
    let b = f.get(SEQ_OFF..SEQ_OFF + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Sequence accounting of a sink, as net_bench.c does it.
#[derive(Debug, Default, Clone, Copy)]
struct Seq {
    expect: u64,
    gaps: u64,
    reordered: u64,
}

impl Seq {
    fn see(&mut self, seq: u32) {
        let seq = u64::from(seq);
        if seq >= self.expect {
            self.gaps += seq - self.expect;
            self.expect = seq + 1;
        } else {
            self.reordered += 1;
        }
    }
}

/// The RX sink's accounting of one vnet header + frame (net_bench.c `run_rx`).
#[derive(Debug, Default, Clone, Copy)]
struct RxTally {
    got: u64,
    bytes: u64,
    ignored: u64,
    badlen: u64,
    seq: Seq,
    sum: u64,
}

impl RxTally {
    fn account(&mut self, buf: &[u8], len: usize, verify: bool) {
        let ulen = buf.len();
        if ulen < VNET_HDR + PAT_OFF || ulen > VNET_HDR + len {
            self.badlen += 1;
            return;
        }
        let f = &buf[VNET_HDR..];
        if f[12..14] != ETHERTYPE.to_be_bytes() {
            self.ignored += 1;
        } else if f.len() != len {
            self.badlen += 1;
        } else {
            if let Some(s) = seq_of(f) {
                self.seq.see(s);
            }
            self.got += 1;
            self.bytes += len as u64;
            if verify {
                self.sum = self.sum.wrapping_add(frame_sum(f));
            }
        }
    }
}

/// The TX sink's accounting of frames from the AF_PACKET socket: every one is
/// compared with the frame its sequence number names.
#[derive(Debug, Default, Clone, Copy)]
struct TxTally {
    delivered: u64,
    bytes: u64,
    corrupt: u64,
    seq: Seq,
    last_at: Option<Instant>,
}

impl TxTally {
    fn account(&mut self, f: &[u8], full_len: usize, template: &[u8]) {
        self.last_at = Some(Instant::now());
        let intact = full_len == template.len()
            && f.len() == template.len()
            && f[..SEQ_OFF] == template[..SEQ_OFF]
            && f[PAT_OFF..] == template[PAT_OFF..];
        match (intact, seq_of(f)) {
            (true, Some(s)) => {
                self.seq.see(s);
                self.delivered += 1;
                self.bytes += f.len() as u64;
            }
            _ => self.corrupt += 1,
        }
    }
}

/// Whether this host can run the bench: root (a tap needs CAP_NET_ADMIN),
/// /dev/net/tun and, for [`run_vm`] (`need_kvm`), a /dev/kvm that opens.
/// The error is [`NetBenchError::Unavailable`] with the reason.
pub fn host_ready(need_kvm: bool) -> Result<(), NetBenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetBenchError::Unavailable(
            "not root (creating a tap needs CAP_NET_ADMIN)".into(),
        ));
    }
    if !Path::new(TUN_PATH).exists() {
        return Err(NetBenchError::Unavailable(format!("{TUN_PATH} is missing")));
    }
    if need_kvm {
        if let Err(e) = kvm_ioctls::Kvm::new() {
            return Err(NetBenchError::Unavailable(format!(
                "cannot open /dev/kvm: {e}"
            )));
        }
    }
    Ok(())
}

/// A tap name unique to this process and call (at most 15 bytes).
fn tap_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "nb{}x{}",
        std::process::id() % 10_000_000,
        N.fetch_add(1, Ordering::SeqCst) % 1000
    )
}

/// The largest MTU a tap takes (65535 less its Ethernet header): frames sent
/// into a tap (RX) are at most this plus 14 = 65535 bytes.
pub const TAP_MAX_MTU: u32 = 65535 - 14;

/// IPv6 off (the host stack then sends nothing of its own on the tap), MTU
/// [`TAP_MAX_MTU`], link up.
fn prepare_link(name: &str) -> Result<(), NetBenchError> {
    let v6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if Path::new(&v6).exists() {
        std::fs::write(&v6, "1").map_err(io_err(format!("writing {v6}")))?;
    }
    // SAFETY: plain socket call; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_os("control socket"));
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_mtu = TAP_MAX_MTU as libc::c_int;
    // SAFETY: SIOCSIFMTU reads one ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &ifr) } != 0 {
        return Err(last_os(format!("SIOCSIFMTU {TAP_MAX_MTU} on {name}")));
    }
    let mut ifr = ifreq(name);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write one ifreq that outlives the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(last_os(format!("SIOCGIFFLAGS on {name}")));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(last_os(format!("SIOCSIFFLAGS up on {name}")));
        }
    }
    Ok(())
}

/// A counter under /sys/class/net/NAME/.
fn sysfs_counter(name: &str, what: &str) -> Result<u64, NetBenchError> {
    let p = format!("/sys/class/net/{name}/{what}");
    let s = std::fs::read_to_string(&p).map_err(io_err(format!("reading {p}")))?;
    s.trim().parse().map_err(|_| NetBenchError::Io {
        op: format!("parsing {p}"),
        source: io::Error::other(format!("not a number: {:?}", s.trim())),
    })
}

/// An AF_PACKET raw socket bound to one interface.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Bound to `name` for frames of `ethertype` (0: none are received, for
    /// sending only); receive timeout 20 ms; a 64 MiB receive buffer where
    /// receiving.
    fn bind(name: &str, ethertype: u16) -> Result<Self, NetBenchError> {
        // Created for protocol 0 (receives nothing) and bound with the
        // ethertype, so no frame of another interface gets queued meanwhile.
        // SAFETY: plain socket call; the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(last_os("AF_PACKET socket"));
        }
        // SAFETY: fd is a fresh socket nothing else owns.
        let sock = PacketSocket(unsafe { OwnedFd::from_raw_fd(fd) });
        let cname = std::ffi::CString::new(name)
            .map_err(|_| NetBenchError::Config(format!("interface name {name:?} holds a NUL")))?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(last_os(format!("if_nametoindex({name})")));
        }
        if ethertype != 0 {
            let big: libc::c_int = 64 << 20;
            // SO_RCVBUFFORCE (root) lifts rmem_max; SO_RCVBUF is the fallback.
            if sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &big) != 0
                && sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, &big) != 0
            {
                return Err(last_os("SO_RCVBUF"));
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            if sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv) != 0 {
                return Err(last_os("SO_RCVTIMEO"));
            }
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind reads the sockaddr_ll given, which outlives the call.
        let r = unsafe {
            libc::bind(
                sock.0.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(last_os(format!("binding AF_PACKET to {name}")));
        }
        // Reading the statistics resets them: start from zero.
        sock.take_drops()?;
        Ok(sock)
    }

    fn setsockopt<T>(&self, level: libc::c_int, opt: libc::c_int, v: &T) -> libc::c_int {
        // SAFETY: setsockopt reads size_of::<T>() bytes of v, which outlives the call.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                level,
                opt,
                v as *const T as *const libc::c_void,
                std::mem::size_of::<T>() as u32,
            )
        }
    }

    /// One frame into `buf`: `Ok(Some(full length))` (the frame may be longer
    /// than `buf`), `Ok(None)` after the receive timeout.
    fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>, NetBenchError> {
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match (e.kind(), e.raw_os_error()) {
                (io::ErrorKind::Interrupted, _) => continue,
                (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, _) => return Ok(None),
                // The tap went away (its VM ended): reported once; frames
                // already queued can still be read.
                (_, Some(libc::ENETDOWN)) => return Ok(None),
                _ => return Err(io_err("AF_PACKET recv")(e)),
            }
        }
    }

    fn send(&self, f: &[u8]) -> Result<(), NetBenchError> {
        loop {
            // SAFETY: f is readable for its length.
            let n = unsafe {
                libc::send(
                    self.0.as_raw_fd(),
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                )
            };
            if n == f.len() as isize {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(NetBenchError::Io {
                op: format!("AF_PACKET send of {} bytes (sent {n})", f.len()),
                source: e,
            });
        }
    }

    /// Frames dropped since the last call (`PACKET_STATISTICS`, which resets).
    fn take_drops(&self) -> Result<u64, NetBenchError> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most len bytes into st, which outlives the call.
        let r = unsafe {
            libc::getsockopt(
                self.0.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
                &mut len,
            )
        };
        if r != 0 {
            return Err(last_os("PACKET_STATISTICS"));
        }
        Ok(u64::from(st.tp_drops))
    }
}

/// An open tap, up, ready for bench frames.
fn open_tap() -> Result<Tap, NetBenchError> {
    let name = tap_name();
    let tap = Tap::open(&name)?;
    prepare_link(&name)?;
    Ok(tap)
}

/// The RX window: half the tap's queue, at most [`MAX_WINDOW`].
fn rx_window(tap: &str) -> Result<u64, NetBenchError> {
    Ok((sysfs_counter(tap, "tx_queue_len")? / 2).clamp(1, MAX_WINDOW))
}

/// Progress of a sink (the guest through [`BENCH_PORT`], or the RX baseline's
/// reader): when it started, its count, when that last changed; and the
/// host's stop word.
#[derive(Default)]
struct Progress {
    value: AtomicU64,
    times: Mutex<ProgressTimes>,
    cv: Condvar,
    stop: AtomicBool,
}

#[derive(Debug, Default, Clone, Copy)]
struct ProgressTimes {
    started: Option<Instant>,
    changed: Option<Instant>,
    /// Posts after the start.
    posts: u64,
}

impl Progress {
    fn times(&self) -> MutexGuard<'_, ProgressTimes> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first post starts the clock; later ones give the sink's count.
    fn post(&self, v: u64) {
        let now = Instant::now();
        let mut t = self.times();
        if t.started.is_none() {
            t.started = Some(now);
        } else {
            t.posts += 1;
            if v != self.value.load(Ordering::SeqCst) {
                self.value.store(v, Ordering::SeqCst);
                t.changed = Some(now);
            }
        }
        drop(t);
        self.cv.notify_all();
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> ProgressTimes {
        *self.times()
    }

    /// Waits up to `timeout` for a post (or returns at once if `until` holds).
    fn wait(&self, timeout: Duration, until: impl Fn(&ProgressTimes, u64) -> bool) {
        let t = self.times();
        if until(&t, self.get()) {
            return;
        }
        let _ = self.cv.wait_timeout(t, timeout);
    }
}

/// The guest's ports: REPORT_PORT (+0) reports, [`BENCH_PORT`] (+8) progress
/// writes and control reads. TEXT_PORT (+4) is ignored.
struct BenchPort {
    reports: Vec<u32>,
    progress: Arc<Progress>,
}

impl BusDevice for BenchPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == u64::from(BENCH_PORT - REPORT_PORT)
            && self.progress.stop.load(Ordering::SeqCst)
        {
            CTRL_STOP
        } else {
            0
        };
        for (d, s) in data
            .iter_mut()
            .zip(v.to_le_bytes().iter().chain([0u8; 4].iter().cycle()))
        {
            *d = *s;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(b) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(b);
        if offset == 0 {
            if self.reports.len() < MAX_REPORTS {
                self.reports.push(v);
            }
        } else if offset == u64::from(BENCH_PORT - REPORT_PORT) {
            self.progress.post(u64::from(v));
        }
    }
}

/// A cursor over the guest's reports.
struct Reports<'a> {
    r: &'a [u32],
    i: usize,
}

impl Reports<'_> {
    fn fail(&self, what: &str) -> NetBenchError {
        NetBenchError::Guest(format!(
            "{what} (report #{}); reports {:x?}",
            self.i,
            &self.r[..self.r.len().min(64)]
        ))
    }
    fn next(&mut self, what: &str) -> Result<u32, NetBenchError> {
        let v = *self
            .r
            .get(self.i)
            .ok_or_else(|| self.fail(&format!("missing: {what}")))?;
        self.i += 1;
        Ok(v)
    }
    fn expect(&mut self, what: &str, want: u32) -> Result<(), NetBenchError> {
        let v = self.next(what)?;
        if v != want {
            self.i -= 1;
            return Err(self.fail(&format!("{what}: {v:#x}, expected {want:#x}")));
        }
        Ok(())
    }
    fn u64(&mut self, what: &str) -> Result<u64, NetBenchError> {
        let lo = self.next(what)?;
        Ok(u64::from(lo) | u64::from(self.next(what)?) << 32)
    }
}

/// What the guest reported after the transfer.
#[derive(Debug, Default)]
struct GuestResult {
    event_idx: bool,
    buffers: u32,
    kicks: u32,
    /// TX: used entries seen.
    used: u64,
    /// RX.
    rx: RxTally,
    bad_ids: u32,
    stopped: bool,
}

fn parse_reports(r: &[u32], cfg: &NetBenchConfig) -> Result<GuestResult, NetBenchError> {
    let mut r = Reports { r, i: 0 };
    r.expect("boot", BOOT_MAGIC)?;
    r.expect("device id", device_type::NET)?;
    r.next("features word 0")?;
    r.next("features word 1")?;
    r.expect("status after FEATURES_OK", 0xb)?;
    r.expect("queue 0 size", 256)?;
    r.expect("queue 1 size", 256)?;
    r.expect("status after DRIVER_OK", 0xf)?;
    r.expect(
        "direction",
        match cfg.direction {
            Direction::Tx => 0,
            Direction::Rx => 1,
        },
    )?;
    r.expect("frames", cfg.frames)?;
    r.expect("frame length", cfg.frame_len as u32)?;
    r.expect("verify", u32::from(cfg.verify))?;
    let mut g = GuestResult {
        event_idx: r.next("event_idx")? != 0,
        ..Default::default()
    };
    g.buffers = r.next("buffers")?;
    if g.buffers == 0 {
        return Err(r.fail("the guest refused the parameters"));
    }
    match cfg.direction {
        Direction::Tx => {
            r.next("frames posted")?;
            g.used = u64::from(r.next("used entries")?);
            g.kicks = r.next("kicks")?;
            g.bad_ids = r.next("bad used ids")?;
        }
        Direction::Rx => {
            g.rx.got = u64::from(r.next("frames")?);
            g.rx.bytes = r.u64("bytes")?;
            g.rx.ignored = u64::from(r.next("ignored")?);
            g.rx.badlen = u64::from(r.next("bad length")?);
            g.rx.seq.gaps = u64::from(r.next("lost")?);
            g.rx.seq.reordered = u64::from(r.next("reordered")?);
            g.bad_ids = r.next("bad used ids")?;
            g.rx.sum = r.u64("checksum")?;
            g.kicks = r.next("kicks")?;
            g.stopped = r.next("stopped")? != 0;
        }
    }
    r.expect("end", END_MAGIC)?;
    if r.i != r.r.len() {
        return Err(r.fail("reports after the end"));
    }
    if g.bad_ids != 0 {
        return Err(r.fail(&format!(
            "the device returned {} unknown descriptor ids",
            g.bad_ids
        )));
    }
    Ok(g)
}

/// TX sink: receives on `sock` until `n` frames came, or the source is done
/// (`done`) and nothing came for [`QUIET`], or `deadline`.
fn tx_sink(
    sock: &PacketSocket,
    n: u64,
    len: usize,
    done: &dyn Fn() -> bool,
    deadline: Instant,
) -> Result<TxTally, NetBenchError> {
    let template = frame_for(Direction::Tx, len, 0);
    let mut buf = vec![0u8; MAX_LEN + 64];
    let mut t = TxTally::default();
    let mut quiet_since: Option<Instant> = None;
    while t.delivered + t.corrupt < n && Instant::now() < deadline {
        match sock.recv(&mut buf)? {
            Some(full) => {
                quiet_since = None;
                t.account(&buf[..full.min(buf.len())], full, &template);
            }
            None => {
                if done() {
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() >= QUIET {
                        break;
                    }
                }
            }
        }
    }
    Ok(t)
}

/// What [`rx_source`] did.
#[derive(Debug, Clone, Copy)]
struct SourceResult {
    sent: u64,
    stalled: bool,
    start: Instant,
    /// The tap's `tx_dropped` growth, read once sending was over (drops
    /// happen as frames are sent).
    tap_dropped: u64,
}

/// RX source: sends frames 0..n into the tap through `sock`, with at most
/// `window` frames beyond the sink's progress (less the tap's drops) in
/// flight; then waits until the sink has them all or went quiet, and sets
/// the stop word.
fn rx_source(
    sock: &PacketSocket,
    tap: &str,
    n: u64,
    len: usize,
    progress: &Progress,
    alive: &dyn Fn() -> bool,
    deadline: Instant,
) -> Result<SourceResult, NetBenchError> {
    let window = rx_window(tap)?;
    let drops0 = sysfs_counter(tap, "statistics/tx_dropped")?;
    let tap_drops = || -> Result<u64, NetBenchError> {
        Ok(sysfs_counter(tap, "statistics/tx_dropped")?.saturating_sub(drops0))
    };
    let in_flight =
        |sent: u64, drops: u64, got: u64| sent.saturating_sub(drops).saturating_sub(got);
    let mut drops = 0;
    let mut f = frame_for(Direction::Rx, len, 0);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut stalled = false;
    'send: while sent < n {
        let mut last_move = Instant::now();
        let mut seen = (progress.get(), drops);
        while in_flight(sent, drops, progress.get()) >= window {
            if !alive() || Instant::now() > deadline {
                break 'send;
            }
            progress.wait(Duration::from_millis(10), |_, v| {
                in_flight(sent, drops, v) < window
            });
            drops = tap_drops()?;
            if (progress.get(), drops) != seen {
                seen = (progress.get(), drops);
                last_move = Instant::now();
            } else if last_move.elapsed() > STALL {
                stalled = true;
                break 'send;
            }
        }
        f[SEQ_OFF..SEQ_OFF + 4].copy_from_slice(&(sent as u32).to_le_bytes());
        sock.send(&f)?;
        sent += 1;
    }
    // The tap may be gone already where the sink ended on its own.
    let tap_dropped = tap_drops().unwrap_or(drops);
    // Until the sink has every frame, or stays quiet.
    let mut last = (progress.get(), Instant::now());
    while progress.get() < sent && alive() && Instant::now() < deadline {
        progress.wait(Duration::from_millis(20), |_, v| v >= sent);
        let v = progress.get();
        if v != last.0 {
            last = (v, Instant::now());
        } else if last.1.elapsed() >= QUIET {
            break;
        }
    }
    progress.stop.store(true, Ordering::SeqCst);
    Ok(SourceResult {
        sent,
        stalled,
        start,
        tap_dropped,
    })
}

/// A scratch directory for the guest image, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, NetBenchError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "vmm-net-bench-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        Ok(Scratch(d))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One run through our VMM: the [`vmm::guests::NET_BENCH`] guest under
/// /dev/kvm, its [`NetDevice`] on a fresh tap ([module docs](self)).
pub fn run_vm(cfg: &NetBenchConfig) -> Result<NetBenchResult, NetBenchError> {
    cfg.check()?;
    host_ready(true)?;
    let scratch = Scratch::new()?;
    let kernel = vmm::guests::write_guest(&scratch.0, "net_bench.elf", vmm::guests::NET_BENCH)
        .map_err(io_err("writing the guest image"))?;
    let tap = open_tap()?;
    let name = tap.name().to_owned();
    let sock = PacketSocket::bind(
        &name,
        match cfg.direction {
            Direction::Tx => ETHERTYPE,
            Direction::Rx => 0,
        },
    )?;
    let dev = NetDevice::new(Box::new(tap), DEFAULT_MAC);
    let handle = dev.handle();
    let progress = Arc::new(Progress::default());
    let port = Arc::new(Mutex::new(BenchPort {
        reports: Vec::new(),
        progress: progress.clone(),
    }));
    let dir = match cfg.direction {
        Direction::Tx => "tx",
        Direction::Rx => "rx",
    };
    let vm_cfg = vmm::VmConfig {
        kernel,
        cmdline: format!(
            "nb.dir={dir} nb.frames={} nb.len={}{}",
            cfg.frames,
            cfg.frame_len,
            if cfg.verify { " nb.verify" } else { "" }
        ),
        mem_mib: 64,
        serial_stdout: false,
        timeout: Some(cfg.timeout),
        skip_host_check: true,
        virtio_devices: vec![VirtioMmioDevice::new(Arc::new(Mutex::new(dev)))],
        ..Default::default()
    };
    let extra = vec![vmm::ExtraDevice {
        bus: vmm::BusKind::Pio,
        base: u64::from(REPORT_PORT),
        len: 12,
        device: port.clone(),
    }];
    let deadline = Instant::now() + cfg.timeout;
    let vm = std::thread::Builder::new()
        .name("net-bench-vm".into())
        .spawn(move || vmm::run_with_devices(&vm_cfg, extra))
        .map_err(io_err("spawning the VM thread"))?;
    let alive = || !vm.is_finished();
    let n = u64::from(cfg.frames);

    // The transfer, with this thread as the host end.
    let host_end = (|| -> Result<(Option<TxTally>, Option<SourceResult>), NetBenchError> {
        // Both ends start when the guest says so.
        while progress.snapshot().started.is_none() {
            if !alive() || Instant::now() > deadline {
                return Ok((None, None));
            }
            progress.wait(Duration::from_millis(20), |t, _| t.started.is_some());
        }
        match cfg.direction {
            Direction::Tx => {
                let done = || !alive() || progress.snapshot().posts >= 1;
                Ok((
                    Some(tx_sink(&sock, n, cfg.frame_len, &done, deadline)?),
                    None,
                ))
            }
            Direction::Rx => Ok((
                None,
                Some(rx_source(
                    &sock,
                    &name,
                    n,
                    cfg.frame_len,
                    &progress,
                    &alive,
                    deadline,
                )?),
            )),
        }
    })();
    // The guest may wait for the stop word whatever happened here.
    progress.stop.store(true, Ordering::SeqCst);
    let outcome = vm
        .join()
        .map_err(|_| NetBenchError::Thread("VM"))?
        .map_err(NetBenchError::Vm)?;
    let (tally, source) = host_end?;
    let reports = port
        .lock()
        .map(|p| p.reports.clone())
        .unwrap_or_else(|p| p.into_inner().reports.clone());
    if !outcome.exit.is_clean() {
        return Err(NetBenchError::Guest(format!(
            "the VM ended with {:?}; reports {:x?}",
            outcome.exit,
            &reports[..reports.len().min(64)]
        )));
    }
    let g = parse_reports(&reports, cfg)?;
    let times = progress.snapshot();
    let started = times.started.ok_or_else(|| {
        NetBenchError::Guest("the guest never wrote the start to BENCH_PORT".into())
    })?;
    let device = handle.stats();
    let vm_side = |stopped| VmSide {
        wall: outcome.wall,
        device,
        kicks: g.kicks,
        event_idx: g.event_idx,
        buffers: g.buffers,
        stopped_by_host: stopped,
    };
    let r = match cfg.direction {
        Direction::Tx => {
            let t = tally.ok_or_else(|| NetBenchError::Guest("no TX transfer".into()))?;
            tx_result(
                cfg,
                g.used,
                &t,
                started,
                sock.take_drops()?,
                Some(vm_side(false)),
            )
        }
        Direction::Rx => {
            let s = source.ok_or_else(|| NetBenchError::Guest("no RX transfer".into()))?;
            rx_result(cfg, s, &g.rx, times, Some(vm_side(g.stopped)))
        }
    };
    Ok(r)
}

/// The result of a TX run: `sent` frames put in, `t` what the AF_PACKET sink saw
/// (elapsed from `start` to its last frame).
fn tx_result(
    cfg: &NetBenchConfig,
    sent: u64,
    t: &TxTally,
    start: Instant,
    socket_dropped: u64,
    vm: Option<VmSide>,
) -> NetBenchResult {
    NetBenchResult {
        direction: Direction::Tx,
        frame_len: cfg.frame_len,
        sent,
        delivered: t.delivered,
        bytes: t.bytes,
        corrupt: t.corrupt,
        gaps: t.seq.gaps,
        reordered: t.seq.reordered,
        ignored: 0,
        tap_dropped: 0,
        socket_dropped,
        stalled: false,
        elapsed: t
            .last_at
            .map(|l| l.saturating_duration_since(start))
            .unwrap_or_default(),
        checksum: None,
        vm,
    }
}

fn rx_result(
    cfg: &NetBenchConfig,
    s: SourceResult,
    t: &RxTally,
    times: ProgressTimes,
    vm: Option<VmSide>,
) -> NetBenchResult {
    let sent = s.sent;
    let checksum = cfg.verify.then(|| ChecksumCheck {
        got: t.sum,
        want: (0..sent as u32).fold(0u64, |s, seq| {
            s.wrapping_add(frame_sum(&frame_for(Direction::Rx, cfg.frame_len, seq)))
        }),
    });
    NetBenchResult {
        direction: Direction::Rx,
        frame_len: cfg.frame_len,
        sent,
        delivered: t.got,
        bytes: t.bytes,
        corrupt: t.badlen,
        gaps: t.seq.gaps,
        reordered: t.seq.reordered,
        ignored: t.ignored,
        tap_dropped: s.tap_dropped,
        socket_dropped: 0,
        stalled: s.stalled,
        elapsed: times
            .changed
            .map(|c| c.saturating_duration_since(s.start))
            .unwrap_or_default(),
        checksum,
        vm,
    }
}

/// The baseline: the same frames through the same kind of tap by host
/// threads alone ([module docs](self)).
pub fn run_host(cfg: &NetBenchConfig) -> Result<NetBenchResult, NetBenchError> {
    cfg.check()?;
    host_ready(false)?;
    let mut tap = open_tap()?;
    let name = tap.name().to_owned();
    let n = u64::from(cfg.frames);
    let deadline = Instant::now() + cfg.timeout;
    match cfg.direction {
        Direction::Tx => {
            let sock = PacketSocket::bind(&name, ETHERTYPE)?;
            let done = Arc::new(AtomicBool::new(false));
            let len = cfg.frame_len;
            let writer_done = done.clone();
            let start = Instant::now();
            let writer = std::thread::Builder::new()
                .name("net-bench-tx".into())
                .spawn(move || -> (u64, io::Result<()>) {
                    let mut buf = vec![0u8; VNET_HDR];
                    buf.extend(frame_for(Direction::Tx, len, 0));
                    let mut sent = 0;
                    let mut r = Ok(());
                    for seq in 0..n as u32 {
                        let at = VNET_HDR + SEQ_OFF;
                        buf[at..at + 4].copy_from_slice(&seq.to_le_bytes());
                        if let Err(e) = tap.send(&buf) {
                            r = Err(e);
                            break;
                        }
                        sent += 1;
                    }
                    writer_done.store(true, Ordering::SeqCst);
                    (sent, r)
                })
                .map_err(io_err("spawning the TX writer"))?;
            let t = tx_sink(
                &sock,
                n,
                cfg.frame_len,
                &|| done.load(Ordering::SeqCst),
                deadline,
            );
            let (sent, w) = writer
                .join()
                .map_err(|_| NetBenchError::Thread("TX writer"))?;
            w.map_err(io_err(format!("writing frames to tap {name}")))?;
            let t = t?;
            Ok(tx_result(cfg, sent, &t, start, sock.take_drops()?, None))
        }
        Direction::Rx => {
            let sock = PacketSocket::bind(&name, 0)?;
            let progress = Arc::new(Progress::default());
            let reader_progress = progress.clone();
            let (len, verify) = (cfg.frame_len, cfg.verify);
            let reader = std::thread::Builder::new()
                .name("net-bench-rx".into())
                .spawn(move || rx_reader(&mut tap, n, len, verify, &reader_progress))
                .map_err(io_err("spawning the RX reader"))?;
            // The reader's start post comes first.
            while progress.snapshot().started.is_none() && !reader.is_finished() {
                progress.wait(Duration::from_millis(20), |t, _| t.started.is_some());
            }
            let source = rx_source(
                &sock,
                &name,
                n,
                cfg.frame_len,
                &progress,
                &|| !reader.is_finished(),
                deadline,
            );
            progress.stop.store(true, Ordering::SeqCst);
            let tally = reader
                .join()
                .map_err(|_| NetBenchError::Thread("RX reader"))??;
            Ok(rx_result(cfg, source?, &tally, progress.snapshot(), None))
        }
    }
    // The tap goes away with its only fd (moved into the threads above).
}

/// The RX baseline's sink: reads the tap like the device would and accounts
/// and reports progress like the guest.
fn rx_reader(
    tap: &mut Tap,
    n: u64,
    len: usize,
    verify: bool,
    progress: &Progress,
) -> Result<RxTally, NetBenchError> {
    let mut buf = vec![0u8; VNET_HDR + MAX_LEN + 64];
    let mut t = RxTally::default();
    let mut reported = 0;
    progress.post(0);
    while t.got < n {
        match tap.recv(&mut buf) {
            Ok(Some(k)) => {
                t.account(&buf[..k.min(buf.len())], len, verify);
                if t.got - reported >= PROGRESS_EVERY {
                    progress.post(t.got);
                    reported = t.got;
                }
            }
            Ok(None) => {
                if t.got != reported {
                    progress.post(t.got);
                    reported = t.got;
                }
                if progress.stop.load(Ordering::SeqCst) {
                    break;
                }
                let mut pfd = libc::pollfd {
                    fd: tap.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd, valid for the call.
                unsafe { libc::poll(&mut pfd, 1, 10) };
            }
            Err(e) => return Err(io_err(format!("reading tap {}", tap.name()))(e)),
        }
    }
    if t.got != reported {
        progress.post(t.got);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants match net_bench.c.
    #[test]
    fn guest_source_matches() {
        let c = include_str!("../../vmm/guests/net_bench.c");
        let def = |name: &str| -> u64 {
            let line = c
                .lines()
                .find(|l| l.starts_with("#define") && l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("{name} not in net_bench.c"));
            let v = line.split_whitespace().nth(2).unwrap();
            let v = v.trim_end_matches('u');
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).unwrap(),
                None => v.parse().unwrap(),
            }
        };
        assert_eq!(def("BENCH_PORT"), u64::from(BENCH_PORT));
        assert_eq!(def("CTRL_STOP"), u64::from(CTRL_STOP));
        assert_eq!(def("ETHERTYPE"), u64::from(ETHERTYPE));
        assert_eq!(def("SEQ_OFF"), SEQ_OFF as u64);
        assert_eq!(def("PAT_OFF"), PAT_OFF as u64);
        assert_eq!(def("MIN_LEN"), MIN_LEN as u64);
        assert_eq!(def("MAX_LEN"), MAX_LEN as u64);
        assert_eq!(def("MAX_FRAMES"), u64::from(MAX_FRAMES));
        assert_eq!(def("PROGRESS_EVERY"), PROGRESS_EVERY);
        assert_eq!(def("HDR"), VNET_HDR as u64);
        assert_eq!(
            MAX_LEN,
            vmm::devices::virtio::net::MAX_FRAME_LEN,
            "MAX_LEN follows the device's limit"
        );
    }

    #[test]
    fn frames_and_sums() {
        let f = frame(64, 0x0403_0201, [0xff; 6], DEFAULT_MAC);
        assert_eq!(f.len(), 64);
        assert_eq!(&f[12..14], &[0x88, 0xb6]);
        assert_eq!(seq_of(&f), Some(0x0403_0201));
        assert_eq!(f[PAT_OFF], pattern(PAT_OFF));
        // The pattern does not repeat every 256 bytes.
        assert_ne!(pattern(20), pattern(20 + 256));
        // Every byte counts, and where it sits.
        let base = frame_sum(&f);
        for i in [0, 7, 8, 33, 63] {
            let mut g = f.clone();
            g[i] ^= 1;
            assert_ne!(frame_sum(&g), base, "byte {i}");
        }
        let mut g = f.clone();
        g.swap(20, 28);
        assert_ne!(frame_sum(&g), base, "swapped words");
        // Tails of 0..7 bytes; the length is in the sum.
        assert_ne!(frame_sum(&[1, 2, 3]), frame_sum(&[1, 2, 3, 0]));
        assert_eq!(frame_sum(&[]), 0);
    }

    #[test]
    fn sequence_and_rx_accounting() {
        let mut s = Seq::default();
        for q in [0, 1, 3, 2, 4] {
            s.see(q);
        }
        assert_eq!((s.expect, s.gaps, s.reordered), (5, 1, 1));
        let mut t = RxTally::default();
        let good = |seq| {
            let mut b = vec![0u8; VNET_HDR];
            b.extend(frame(100, seq, DEFAULT_MAC, HOST_MAC));
            b
        };
        t.account(&good(0), 100, true);
        t.account(&good(1)[..50], 100, true);
        let mut other = good(2);
        other[VNET_HDR + 12] = 0x08;
        t.account(&other, 100, true);
        t.account(&good(2), 100, true);
        assert_eq!((t.got, t.bytes, t.badlen, t.ignored), (2, 200, 1, 1));
        assert_eq!(
            t.sum,
            frame_sum(&good(0)[VNET_HDR..]).wrapping_add(frame_sum(&good(2)[VNET_HDR..]))
        );
        assert_eq!(t.seq.gaps, 1);
    }

    #[test]
    fn tx_accounting_compares_every_byte() {
        let tmpl = frame_for(Direction::Tx, 80, 0);
        let mut t = TxTally::default();
        let f = frame_for(Direction::Tx, 80, 1);
        t.account(&f, f.len(), &tmpl);
        let mut bad = frame_for(Direction::Tx, 80, 2);
        bad[70] ^= 0x80;
        t.account(&bad, bad.len(), &tmpl);
        t.account(&f[..60], 60, &tmpl);
        assert_eq!((t.delivered, t.corrupt, t.seq.gaps), (1, 2, 1));
    }

    #[test]
    fn reports_are_checked_not_trusted() {
        let cfg = NetBenchConfig::new(Direction::Tx, 10, 64, false);
        let head = [
            BOOT_MAGIC,
            device_type::NET,
            0,
            1,
            0xb,
            256,
            256,
            0xf,
            0,
            10,
            64,
            0,
            1,
            256,
        ];
        let ok: Vec<u32> = head
            .iter()
            .copied()
            .chain([10, 10, 3, 0, END_MAGIC])
            .collect();
        let g = parse_reports(&ok, &cfg).unwrap();
        assert_eq!((g.used, g.kicks, g.event_idx), (10, 3, true));
        for bad in [
            &ok[..5],
            &ok[..ok.len() - 1],
            &[ok.as_slice(), &[1]].concat()[..],
            &[&head[..], &[10, 10, 3, 7, END_MAGIC]].concat()[..],
            &[],
        ] {
            let e = parse_reports(bad, &cfg).unwrap_err();
            assert!(matches!(e, NetBenchError::Guest(_)), "{e}");
            assert!(!e.to_string().contains('\n'));
        }
        let mut wrong_len = ok.clone();
        wrong_len[10] = 65;
        assert!(parse_reports(&wrong_len, &cfg).is_err());
    }

    #[test]
    fn configs_are_checked() {
        for (n, len) in [
            (0, 64),
            (1, MIN_LEN - 1),
            (1, MAX_LEN + 1),
            (1, 65536),
            (MAX_FRAMES + 1, 64),
        ] {
            let e = NetBenchConfig::new(Direction::Rx, n, len, false)
                .check()
                .unwrap_err();
            assert!(matches!(e, NetBenchError::Config(_)), "{e}");
        }
        NetBenchConfig::new(Direction::Tx, 1, MAX_LEN, false)
            .check()
            .unwrap();
        NetBenchConfig::new(Direction::Rx, 1, 65535, false)
            .check()
            .unwrap();
    }

    #[test]
    fn port_device_bounds_reports_and_answers_stop() {
        let progress = Arc::new(Progress::default());
        let mut p = BenchPort {
            reports: Vec::new(),
            progress: progress.clone(),
        };
        for i in 0..(MAX_REPORTS as u32 + 10) {
            p.write(0, &i.to_le_bytes());
        }
        p.write(0, &[1, 2]);
        assert_eq!(p.reports.len(), MAX_REPORTS);
        let mut d = [0xffu8; 4];
        p.read(8, &mut d);
        assert_eq!(d, [0; 4]);
        progress.stop.store(true, Ordering::SeqCst);
        p.read(8, &mut d);
        assert_eq!(u32::from_le_bytes(d), CTRL_STOP);
        p.write(8, &0u32.to_le_bytes());
        p.write(8, &5u32.to_le_bytes());
        let t = progress.snapshot();
        assert!(t.started.is_some() && t.changed.is_some());
        assert_eq!((progress.get(), t.posts), (5, 1));
    }
}
