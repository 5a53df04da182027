//! `vhost-net-gaps`: the smaller vhost-net paths the other workloads leave, each checked.
//!
//! * **An AF_PACKET raw socket as backend** (`get_raw_socket`, `peek_head_len` on the
//!   socket's receive queue instead of tun's ptr_ring, no `rx_ring`): sockets that are not
//!   AF_PACKET/SOCK_RAW are refused with ENOTSOCK (an AF_PACKET SOCK_DGRAM socket fails
//!   `get_raw_socket`'s type check, a netlink SOCK_RAW socket its family check, and
//!   `get_socket` answers ENOTSOCK for both); an unbound packet socket is accepted, and a TX
//!   frame through it is used (length 0) but goes nowhere (`packet_snd`: ENXIO, which
//!   `handle_tx_copy` drops); then a packet socket bound to the tap replaces it on TX and
//!   serves RX (VHOST_NET_F_VIRTIO_NET_HDR: vhost strips and supplies the header): TX frames
//!   come out of the tap's fd byte-exact, frames written into the tap's fd land in RX
//!   buffers byte-exact behind a zero header with `num_buffers` 1. A VLAN-tagged frame on an
//!   ETH_P_ALL packet socket is discarded (`peek_head_len` adds `VLAN_HLEN` for the tag the
//!   receive path moved out of the data, `recvmsg` returns 4 bytes less) and its buffer
//!   goes to the next frame. The vnet header vhost supplies, written into a buffer whose first
//!   piece faults after `recvmsg` filled the rest: `vq_err` (the error eventfd fires), the
//!   buffer taken and never used, the next frame in the next buffer.
//! * **RX buffers running out in the middle of a mergeable frame** (MRG_RXBUF), on the packet
//!   socket and on a tap: a 1400-byte frame with two 512-byte buffers posted does not arrive
//!   (`get_rx_bufs` reaches the end of the avail ring, `vhost_discard_vq_desc` gives the two
//!   back, `vhost_enable_notify` sees no new index, the frame stays queued); a third buffer
//!   and a kick bring it, spread over the three (512, 512, 388 used bytes), `num_buffers` 3,
//!   byte-exact. On the tap also `num_buffers` into a faulting piece of the header that the
//!   tap skips (`vq_err`, the heads given back: the same buffer takes the next frame), and
//!   70 frames in one `handle_rx` pass (more than VHOST_NET_BATCH), in order, byte-exact.
//! * **Blocking reads of the device fd and the IOTLB slow paths**: a blocking read of a
//!   device without an IOTLB fails with EBADFD, a read shorter than a message returns 0.
//!   On a device with VIRTIO_F_ACCESS_PLATFORM and legacy (v1) IOTLB messages, the rings are
//!   mapped in two pieces each (so `iotlb_access_ok` never caches a ring part in
//!   `meta_iotlb`, and every ring access goes through `translate_desc`:
//!   `vhost_copy_from_user`'s and `vhost_copy_to_user`'s slow paths, `__vhost_get_user_slow`),
//!   the TX buffers not at all; a blocking read waits (the reader is seen asleep in `read`
//!   before anyone kicks) until the kick's miss for the first TX buffer comes, which must
//!   name exactly that buffer, read-only; once it is answered the frame and 39 more go out
//!   byte-exact (one used element straddles the used ring's two pieces) and 8 RX frames come
//!   in, with no further miss. After invalidating the TX buffers, the next miss read into a
//!   buffer whose end faults comes back short (exactly the 32 bytes that fit) and is freed:
//!   nothing left to read, its update wakes nothing, the frame waits for another kick.
//! * **The IOTLB dropped** (VHOST_SET_FEATURES without VIRTIO_F_ACCESS_PLATFORM after it,
//!   `vhost_clear_device_iotlb`): the pending miss of a failed attach is gone, and so are the
//!   ring addresses (this backport clears them: the attach is EFAULT until
//!   VHOST_SET_VRING_ADDR again); then frames both ways byte-exact, no miss.
//! * **Changes under an attached backend**: VHOST_SET_VRING_ADDR in kernel space, or logging
//!   the used ring into a log base in kernel space, EINVAL (the base itself is taken while no
//!   ring logs); VHOST_SET_MEM_TABLE in two regions taken, with a kernel-space region EFAULT
//!   (detached the same table is taken and the attach is EFAULT); a second kick eventfd
//!   replaces the first (the old one kicks nothing, the new one sends the frame).
//! * **A ring of 8**: a mergeable RX frame over three buffers whose used elements wrap the
//!   used ring (6, 7, 0), each element and the bytes checked.
//! * **EVENT_IDX with the dirty log**: the `avail_event` write after TX is logged (the page of
//!   the used ring holding only `avail_event` is dirty), a 6000-byte RX frame in one buffer
//!   dirties all three pages it covers, nothing else outside the used rings, the log eventfd
//!   fired.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use frontends::vhost_raw::{IotlbMsg, MemRegion, MsgV2, ACCESS_RO, ACCESS_RW, F_ACCESS_PLATFORM};
use frontends::vhost_raw::{BACKEND_F_IOTLB_MSG_V2, F_LOG_ALL, VRING_F_LOG};
use frontends::vhost_raw::{IOTLB_MISS, IOTLB_UPDATE, NET_F_VIRTIO_NET_HDR};
use frontends::vring::{poll_readable, Desc};
use kcov_wire::plan::Params;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::net::TEST_ETHERTYPE;
use crate::net::{
    frame_id, packet_socket, sys, test_frame, Counters, NetError, PacketSocket, NET_HDR_LEN,
};
use crate::rawnet::{drain_fired, page, DirtyLog};
use crate::rawnet::{expect_errno, expect_ok, fail, RawNet, RawOpts, F_V1, RXQ, TXQ};

const QUEUE: u16 = 64;
/// How a test frame reaches the RX backend (the tap's fd, or AF_PACKET onto the tap).
type Inject = dyn Fn(&RawNet, &[u8]) -> Result<(), NetError>;
/// `VHOST_IOTLB_MSG`: the legacy message type (`struct vhost_msg`).
const IOTLB_MSG_V1: u32 = 1;
/// `sizeof(struct vhost_msg)` = `sizeof(struct vhost_msg_v2)`.
const MSG_LEN: usize = std::mem::size_of::<MsgV2>();
/// RX buffer size of the starvation case, and its frame: needs three such buffers.
const SMALL_BUF: u32 = 512;
const BIG_FRAME: usize = 1400;

/// Runs the parts; the counters say what each checked.
pub fn run(params: &Params) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let mut c = Counters::new();
    let (errnos, frames_raw) = packet_backend(timeout)?;
    let (starved_tap, frames_tap) = starved_on_tap(timeout)?;
    let frames_batch = one_pass_batch(timeout)?;
    let (errnos_iotlb, misses, blocking, frames_iotlb) = iotlb_pieces(timeout)?;
    let (errnos_dropped, frames_dropped) = iotlb_dropped(timeout)?;
    let (errnos_live, frames_live) = live_changes(timeout)?;
    let frames_wrap = used_ring_wrap(timeout)?;
    let (log_pages, frames_log) = logged_event_idx(timeout)?;
    c.push((
        "errnos_checked".into(),
        errnos + errnos_iotlb + errnos_dropped + errnos_live,
    ));
    c.push(("log_pages".into(), log_pages));
    c.push(("starved_frames".into(), 1 + starved_tap));
    c.push(("iotlb_misses".into(), misses));
    c.push(("blocking_reads".into(), blocking));
    c.push((
        "frames_verified".into(),
        frames_raw
            + frames_tap
            + frames_batch
            + frames_iotlb
            + frames_dropped
            + frames_live
            + frames_wrap
            + frames_log,
    ));
    c.push(("iterations".into(), 7));
    Ok(c)
}

/// `socket(family, kind, proto)`, owned.
fn socket(family: i32, kind: i32, proto: i32) -> Result<OwnedFd, NetError> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(sys("socket")(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes `frame` into the tap's fd behind a zero 12-byte vnet header: the tap's interface
/// receives it.
fn tap_send(n: &RawNet, frame: &[u8]) -> Result<(), NetError> {
    let mut b = vec![0u8; NET_HDR_LEN];
    b.extend_from_slice(frame);
    let fd = n.tap.file().as_raw_fd();
    // SAFETY: b is a valid buffer of b.len() bytes.
    let w = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
    if w < 0 {
        return Err(sys("write (tap)")(io::Error::last_os_error()));
    }
    if w as usize != b.len() {
        return Err(fail("tap write", format!("{w} of {} bytes", b.len())));
    }
    Ok(())
}

/// The next test frame the tap's interface sent (read from the tap's fd, the vnet header
/// cut off) within `timeout`; other frames (the stack's own) are skipped.
fn tap_recv_test(n: &RawNet, timeout: Duration) -> Result<Option<Vec<u8>>, NetError> {
    let fd = n.tap.file().as_raw_fd();
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !poll_readable(&[fd], left).map_err(sys("poll (tap)"))?[0] {
            return Ok(None);
        }
        // SAFETY: buf is valid for buf.len() bytes.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                continue;
            }
            return Err(sys("read (tap)")(e));
        }
        let r = r as usize;
        if r < NET_HDR_LEN {
            return Err(fail(
                "tap read",
                format!("{r}-byte read, shorter than the header"),
            ));
        }
        let f = buf[NET_HDR_LEN..r].to_vec();
        if frame_id(&f).is_some() {
            return Ok(Some(f));
        }
    }
}

/// TX frame `seq` of `size` bytes must come out of the tap's fd byte-exact and be used.
fn tx_out_of_tap_fd(
    n: &mut RawNet,
    case: &str,
    seq: u32,
    size: usize,
    timeout: Duration,
) -> Result<(), NetError> {
    let head = n.tx_frame(seq, size, NET_HDR_LEN)?;
    match tap_recv_test(n, timeout)? {
        Some(f) if f == test_frame(b'T', seq, size) => {}
        Some(f) => {
            return Err(fail(
                case,
                format!("TX frame {seq}: {:?} came out instead", frame_id(&f)),
            ))
        }
        None => return Err(fail(case, format!("TX frame {seq} never came out"))),
    }
    match n.wait_used(TXQ, timeout)? {
        Some((id, 0)) if id == u32::from(head) => Ok(()),
        other => Err(fail(case, format!("TX frame {seq}: used {other:?}"))),
    }
}

/// The header vhost wrote: a zero `virtio_net_hdr`, then `num_buffers`.
fn check_header(case: &str, hdr: &[u8], num_buffers: u16, zero: bool) -> Result<(), NetError> {
    let nb = u16::from_le_bytes([hdr[10], hdr[11]]);
    if nb != num_buffers || (zero && hdr[..10].iter().any(|&b| b != 0)) {
        return Err(fail(
            case,
            format!("header {hdr:02x?}, expected num_buffers {num_buffers}"),
        ));
    }
    Ok(())
}

/// An RX frame into one posted buffer: used length header + frame, header, bytes.
fn rx_one(
    n: &mut RawNet,
    case: &str,
    seq: u32,
    size: usize,
    inject: &Inject,
    num_buffers: Option<u16>,
    timeout: Duration,
) -> Result<(), NetError> {
    let (head, buf) = n.rx_buffer((NET_HDR_LEN + 2048) as u32)?;
    let frame = test_frame(b'R', seq, size);
    inject(n, &frame)?;
    let want = (NET_HDR_LEN + size) as u32;
    match n.wait_used(RXQ, timeout)? {
        Some((id, len)) if id == u32::from(head) && len == want => {}
        other => return Err(fail(case, format!("RX frame {seq}: used {other:?}"))),
    }
    let mut got = vec![0u8; NET_HDR_LEN + size];
    n.arena.read(buf, &mut got)?;
    if let Some(nb) = num_buffers {
        check_header(case, &got[..NET_HDR_LEN], nb, inject_zero_header(n))?;
    }
    if got[NET_HDR_LEN..] != frame[..] {
        return Err(fail(
            case,
            format!(
                "RX frame {seq} differs: {:?} in the buffer, header {:02x?}",
                frame_id(&got[NET_HDR_LEN..]),
                &got[..NET_HDR_LEN]
            ),
        ));
    }
    Ok(())
}

/// Whether vhost itself writes the header (VHOST_NET_F_VIRTIO_NET_HDR): then it is all
/// zero but `num_buffers`; a tap's header is the tap's business.
fn inject_zero_header(n: &RawNet) -> bool {
    n.features & (1 << NET_F_VIRTIO_NET_HDR) != 0
}

/// A 1400-byte frame with two 512-byte buffers posted waits; a third buffer brings it over
/// three, `num_buffers` 3. Returns the frames checked (1).
fn starved(
    n: &mut RawNet,
    case: &str,
    seq: u32,
    inject: &Inject,
    timeout: Duration,
) -> Result<u64, NetError> {
    let frame = test_frame(b'R', seq, BIG_FRAME);
    let mut bufs = vec![n.rx_buffer(SMALL_BUF)?, n.rx_buffer(SMALL_BUF)?];
    inject(n, &frame)?;
    if let Some(u) = n.wait_used(RXQ, Duration::from_millis(300))? {
        return Err(fail(
            case,
            format!("used {u:?} with two {SMALL_BUF}-byte buffers for a {BIG_FRAME}-byte frame"),
        ));
    }
    bufs.push(n.rx_buffer(SMALL_BUF)?);
    let total = NET_HDR_LEN + BIG_FRAME;
    let mut got = Vec::with_capacity(total);
    for (i, &(head, buf)) in bufs.iter().enumerate() {
        let want = (total - i * SMALL_BUF as usize).min(SMALL_BUF as usize) as u32;
        match n.wait_used(RXQ, timeout)? {
            Some((id, len)) if id == u32::from(head) && len == want => {}
            other => {
                return Err(fail(
                    case,
                    format!("buffer {i} of the frame: used {other:?}, expected ({head}, {want})"),
                ))
            }
        }
        let mut part = vec![0u8; want as usize];
        n.arena.read(buf, &mut part)?;
        got.extend_from_slice(&part);
    }
    check_header(case, &got[..NET_HDR_LEN], 3, inject_zero_header(n))?;
    if got[NET_HDR_LEN..] != frame[..] {
        return Err(fail(case, "the frame over three buffers differs"));
    }
    if let Some(u) = n.wait_used(RXQ, Duration::from_millis(50))? {
        return Err(fail(case, format!("a fourth used element {u:?}")));
    }
    Ok(1)
}

/// Part 1 (and part 2 on the packet socket); returns (errnos checked, frames checked).
fn packet_backend(timeout: Duration) -> Result<(u64, u64), NetError> {
    let case = "packet backend";
    let features = F_V1 | (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << NET_F_VIRTIO_NET_HDR);
    let mut n = RawNet::open(
        RawNet::arena(QUEUE, 4 * 4096)?,
        RawOpts::new(features, QUEUE),
    )?;
    let mut errnos = 0;
    // Not SOCK_RAW: get_raw_socket's ESOCKTNOSUPPORT, then not a tap: ENOTSOCK.
    let dgram = socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0)?;
    expect_errno(
        "AF_PACKET SOCK_DGRAM backend",
        n.dev.net_set_backend(TXQ as u32, dgram.as_raw_fd()),
        libc::ENOTSOCK,
    )?;
    errnos += 1;
    // SOCK_RAW but not AF_PACKET: EPFNOSUPPORT, then ENOTSOCK.
    let netlink = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    expect_errno(
        "netlink SOCK_RAW backend",
        n.dev.net_set_backend(TXQ as u32, netlink.as_raw_fd()),
        libc::ENOTSOCK,
    )?;
    errnos += 1;
    // An unbound packet socket is a backend; what it is given to send has no device.
    let unbound = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
    expect_ok(
        "unbound packet socket backend",
        n.dev.net_set_backend(TXQ as u32, unbound.as_raw_fd()),
    )?;
    let mut seq = 0u32;
    let head = n.tx_frame(seq, 200, NET_HDR_LEN)?;
    match n.wait_used(TXQ, timeout)? {
        Some((id, 0)) if id == u32::from(head) => {}
        other => {
            return Err(fail(
                "unbound packet socket",
                format!("TX frame: used {other:?}"),
            ))
        }
    }
    if let Some(f) = tap_recv_test(&n, Duration::from_millis(200))? {
        return Err(fail(
            "unbound packet socket",
            format!("{:?} came out of the tap", frame_id(&f)),
        ));
    }
    seq += 1;
    // The bound socket replaces it on TX and serves RX.
    let sock = packet_socket(n.tap.ifindex()?, TEST_ETHERTYPE)?;
    expect_ok(case, n.dev.net_set_backend(TXQ as u32, sock.as_raw_fd()))?;
    expect_ok(case, n.dev.net_set_backend(RXQ as u32, sock.as_raw_fd()))?;
    drop(unbound);
    let mut frames = 0;
    for size in [60, 200, 1000, 1514, 300, 77, 1514, 128] {
        tx_out_of_tap_fd(&mut n, case, seq, size, timeout)?;
        rx_one(&mut n, case, seq, size, &tap_send, Some(1), timeout)?;
        seq += 1;
        frames += 2;
    }
    frames += starved(
        &mut n,
        "starved RX (packet socket)",
        seq,
        &tap_send,
        timeout,
    )?;
    // And a normal frame after it, into the next buffer.
    rx_one(&mut n, case, seq + 1, 200, &tap_send, Some(1), timeout)?;
    frames += 1;
    frames += vlan_discarded(&mut n, seq + 2, timeout)?;
    // A fresh socket of our EtherType on RX (the TX one has queued the last frames).
    let sock_rx = packet_socket(n.tap.ifindex()?, TEST_ETHERTYPE)?;
    expect_ok(case, n.dev.net_set_backend(RXQ as u32, sock_rx.as_raw_fd()))?;
    frames += header_write_fails(&mut n, seq + 4, timeout)?;
    // A blocking read of a device without an IOTLB fails at once; a short read returns 0.
    set_nonblocking(n.dev.fd(), false)?;
    let r = read_blocking(n.dev.fd(), MSG_LEN);
    let short = read_blocking(n.dev.fd(), MSG_LEN - 1);
    set_nonblocking(n.dev.fd(), true)?;
    expect_errno("blocking read without an IOTLB", r, libc::EBADFD)?;
    match short {
        Ok((0, _)) => {}
        other => {
            return Err(fail(
                "read shorter than a message",
                format!("{other:?}, expected 0"),
            ))
        }
    }
    errnos += 2;
    n.detach_all();
    Ok((errnos, frames))
}

/// A VLAN-tagged frame on an ETH_P_ALL packet socket as RX backend: the receive path moved
/// the tag out of the data (`skb_vlan_untag`) before the socket got the frame, so
/// `peek_head_len` counts 4 bytes more (`VLAN_HLEN`) than `recvmsg` returns; handle_rx
/// discards it and gives the buffer back, and the next frame lands in that buffer
/// byte-exact. Returns the frames checked (1).
fn vlan_discarded(n: &mut RawNet, seq: u32, timeout: Duration) -> Result<u64, NetError> {
    let case = "VLAN frame on an ETH_P_ALL backend";
    let all = packet_socket(n.tap.ifindex()?, libc::ETH_P_ALL as u16)?;
    expect_ok(case, n.dev.net_set_backend(RXQ as u32, all.as_raw_fd()))?;
    let (head, buf) = n.rx_buffer((NET_HDR_LEN + 2048) as u32)?;
    let mut tagged = test_frame(b'R', seq, 200);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    tap_send(n, &tagged)?;
    if let Some(u) = n.wait_used(RXQ, Duration::from_millis(300))? {
        return Err(fail(case, format!("the tagged frame was used: {u:?}")));
    }
    let frame = test_frame(b'R', seq + 1, 200);
    tap_send(n, &frame)?;
    let want = (NET_HDR_LEN + frame.len()) as u32;
    match n.wait_used(RXQ, timeout)? {
        Some((id, len)) if id == u32::from(head) && len == want => {}
        other => {
            return Err(fail(
                case,
                format!("next frame: used {other:?}, expected ({head}, {want})"),
            ))
        }
    }
    let mut got = vec![0u8; want as usize];
    n.arena.read(buf, &mut got)?;
    check_header(case, &got[..NET_HDR_LEN], 1, true)?;
    if got[NET_HDR_LEN..] != frame[..] {
        return Err(fail(case, "the frame after the tagged one differs"));
    }
    Ok(1)
}

/// A page of the device's memory that faults on every access while this lives (vhost's
/// copies into it come back short, as for any user address that faults).
struct Fenced {
    addr: u64,
}

fn protect(addr: u64, prot: i32) -> Result<(), NetError> {
    // SAFETY: addr is a page of the arena's own mapping, which outlives the guard; nothing of
    // ours touches it while it is fenced.
    if unsafe { libc::mprotect(addr as *mut libc::c_void, 4096, prot) } < 0 {
        return Err(sys("mprotect")(io::Error::last_os_error()));
    }
    Ok(())
}

impl Fenced {
    fn new(n: &mut RawNet) -> Result<Fenced, NetError> {
        let addr = n.arena.alloc(4096, 4096)?;
        protect(addr, libc::PROT_NONE)?;
        Ok(Fenced { addr })
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        let _ = protect(self.addr, libc::PROT_READ | libc::PROT_WRITE);
    }
}

/// Publishes an RX chain of writable (address, length) pieces from descriptor `first` on,
/// and kicks.
fn rx_chain(n: &mut RawNet, first: u16, pieces: &[(u64, u32)]) -> Result<(), NetError> {
    for (i, &(addr, len)) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let flags = VRING_DESC_F_WRITE as u16 | if last { 0 } else { VRING_DESC_F_NEXT as u16 };
        n.desc(
            RXQ,
            first + i as u16,
            Desc {
                addr,
                len,
                flags,
                next: if last { 0 } else { first + i as u16 + 1 },
            },
        )?;
    }
    n.push(RXQ, first)
}

/// `handle_rx` cannot write the header vhost supplies (VHOST_NET_F_VIRTIO_NET_HDR) because
/// the buffer's first piece faults, after `recvmsg` filled the rest: `vq_err` ("Unable to
/// write vnet_hdr") and out, the buffer taken off the ring and never used, the frame gone.
/// The next frame takes the next buffer. Returns the frames checked (1).
fn header_write_fails(n: &mut RawNet, seq: u32, timeout: Duration) -> Result<u64, NetError> {
    let case = "vnet header into a faulting page";
    let fence = Fenced::new(n)?;
    let k = n.rings[RXQ].ring.avail_idx();
    let (d, buf) = n.slot(RXQ, k);
    rx_chain(n, d, &[(fence.addr, NET_HDR_LEN as u32), (buf + 64, 2048)])?;
    tap_send(n, &test_frame(b'R', seq, 200))?;
    if !n.wait_err(RXQ, timeout)? {
        return Err(fail(case, "the ring's error eventfd never fired"));
    }
    if let Some(u) = n.wait_used(RXQ, Duration::from_millis(200))? {
        return Err(fail(case, format!("used {u:?}")));
    }
    drop(fence);
    // The faulting buffer is gone: the next frame lands in the next one.
    rx_one(n, case, seq + 1, 200, &tap_send, Some(1), timeout)?;
    Ok(1)
}

/// On a tap with MRG_RXBUF, `num_buffers` (bytes 10..12 of the header, which the tap skips)
/// lies in a faulting page: `vq_err` ("Failed num_buffers write"), the buffer given back
/// (`vhost_discard_vq_desc`), the frame gone. Unfenced, the same buffer takes the next
/// frame byte-exact. Returns the frames checked (1).
fn num_buffers_write_fails(
    n: &mut RawNet,
    inject: &Inject,
    seq: u32,
    timeout: Duration,
) -> Result<u64, NetError> {
    let case = "num_buffers into a faulting page";
    let fence = Fenced::new(n)?;
    let extra = n.arena.alloc(4096, 4096)?;
    // Descriptors well past the ones the slots of the avail indexes used so far take.
    let first = QUEUE - 8;
    rx_chain(
        n,
        first,
        &[(extra, 10), (fence.addr, 2), (extra + 64, 2048)],
    )?;
    inject(n, &test_frame(b'R', seq, 200))?;
    if !n.wait_err(RXQ, timeout)? {
        return Err(fail(case, "the ring's error eventfd never fired"));
    }
    if let Some(u) = n.wait_used(RXQ, Duration::from_millis(200))? {
        return Err(fail(case, format!("used {u:?}")));
    }
    let nb_at = fence.addr;
    drop(fence);
    let frame = test_frame(b'R', seq + 1, 200);
    inject(n, &frame)?;
    n.kick(RXQ)?;
    let want = (NET_HDR_LEN + frame.len()) as u32;
    match n.wait_used(RXQ, timeout)? {
        Some((id, len)) if id == u32::from(first) && len == want => {}
        other => {
            return Err(fail(
                case,
                format!("next frame: used {other:?}, expected ({first}, {want})"),
            ))
        }
    }
    let mut nb = [0u8; 2];
    n.arena.read(nb_at, &mut nb)?;
    let mut got = vec![0u8; frame.len()];
    n.arena.read(extra + 64, &mut got)?;
    if u16::from_le_bytes(nb) != 1 || got != frame {
        return Err(fail(
            case,
            format!(
                "next frame: num_buffers {}, frame equal: {}",
                u16::from_le_bytes(nb),
                got == frame
            ),
        ));
    }
    Ok(1)
}

/// More than VHOST_NET_BATCH (64) frames in one `handle_rx` pass: 70 frames wait in the tap
/// with no buffer, 70 buffers are published without a kick, then one kick; every frame
/// lands in its buffer in order, byte-exact (the pass signals used heads once its batch
/// passed 64). Returns the frames checked.
fn one_pass_batch(timeout: Duration) -> Result<u64, NetError> {
    let case = "70 frames in one pass";
    const BIG_QUEUE: u16 = 256;
    const FRAMES: u16 = 70;
    let o = RawOpts {
        queue: BIG_QUEUE,
        ..RawOpts::new(F_V1, QUEUE)
    };
    let mut n = RawNet::open(RawNet::arena(BIG_QUEUE, 0)?, o)?;
    n.attach(RXQ)?;
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    for seq in 0..u32::from(FRAMES) {
        inject.send(&test_frame(b'R', seq, 200))?;
    }
    // Let the worker see them with no buffer (and stop polling the tap).
    std::thread::sleep(Duration::from_millis(200));
    let mut heads = Vec::new();
    for _ in 0..FRAMES {
        heads.push(n.post_rx(None, (NET_HDR_LEN + 2048) as u32)?);
    }
    n.kick(RXQ)?;
    let want = (NET_HDR_LEN + 200) as u32;
    for (seq, &(d, buf)) in heads.iter().enumerate() {
        match n.wait_used(RXQ, timeout)? {
            Some((id, len)) if id == u32::from(d) && len == want => {}
            other => return Err(fail(case, format!("frame {seq}: used {other:?}"))),
        }
        let mut got = vec![0u8; 200];
        n.arena.read(buf + NET_HDR_LEN as u64, &mut got)?;
        if got != test_frame(b'R', seq as u32, 200) {
            return Err(fail(case, format!("frame {seq} differs")));
        }
    }
    n.detach_all();
    Ok(u64::from(FRAMES))
}

/// Part 2 on a tap (tun's ptr_ring holds the frame meanwhile), then `num_buffers` into a
/// faulting page; returns (starved frames, other frames checked).
fn starved_on_tap(timeout: Duration) -> Result<(u64, u64), NetError> {
    let features = F_V1 | (1 << VIRTIO_NET_F_MRG_RXBUF);
    let mut n = RawNet::open(
        RawNet::arena(QUEUE, 4 * 4096)?,
        RawOpts::new(features, QUEUE),
    )?;
    n.attach(RXQ)?;
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    let send = move |_: &RawNet, f: &[u8]| inject.send(f);
    let got = starved(&mut n, "starved RX (tap)", 0, &send, timeout)?;
    let nb = num_buffers_write_fails(&mut n, &send, 1, timeout)?;
    n.detach_all();
    Ok((got, nb))
}

fn set_nonblocking(fd: RawFd, on: bool) -> Result<(), NetError> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(sys("fcntl F_GETFL")(io::Error::last_os_error()));
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(sys("fcntl F_SETFL")(io::Error::last_os_error()));
    }
    Ok(())
}

/// One `read(2)` of up to `len` bytes: (bytes read, the buffer).
fn read_blocking(fd: RawFd, len: usize) -> io::Result<(usize, Vec<u8>)> {
    let mut b = vec![0u8; len];
    // SAFETY: b is writable for len bytes.
    let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r as usize, b))
}

/// Whether thread `tid` of this process sleeps in `read(fd, ...)`: /proc's `syscall` file
/// names the syscall and its arguments only for a task that is not running.
fn blocked_in_read(tid: libc::pid_t, fd: RawFd) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
        return false;
    };
    let mut w = s.split_whitespace();
    w.next() == Some(&libc::SYS_read.to_string()) && w.next() == Some(&format!("{fd:#x}"))
}

extern "C" fn wake_reader(_: libc::c_int) {}

/// SIGUSR1 interrupts a blocking read (no SA_RESTART): the watchdog's way out.
fn install_wakeup() -> Result<(), NetError> {
    // SAFETY: sigaction is plain data; the handler does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = wake_reader as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) < 0 {
            return Err(sys("sigaction(SIGUSR1)")(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// An IOTLB message in the legacy layout (`struct vhost_msg`: type, a hole, the message).
fn v1_msg(m: IotlbMsg) -> MsgV2 {
    let mut msg = MsgV2::iotlb(m);
    msg.kind = IOTLB_MSG_V1;
    msg
}

fn update(n: &RawNet, case: &str, start: u64, end: u64) -> Result<(), NetError> {
    let w = expect_ok(
        case,
        n.dev.write_msg(&v1_msg(IotlbMsg {
            iova: start,
            size: end - start,
            uaddr: start,
            perm: ACCESS_RW,
            kind: IOTLB_UPDATE,
        })),
    )?;
    if w != MSG_LEN {
        return Err(fail(case, format!("IOTLB update: wrote {w} bytes")));
    }
    Ok(())
}

/// Publishes TX frame `seq` (a zero header, then the frame, in two descriptors) without a
/// kick (`RawNet::tx_frame` kicks twice, and with an IOTLB each handler run that reaches
/// the unmapped buffer sends its own miss). Returns (head, buffer address).
fn publish_tx(n: &mut RawNet, seq: u32, size: usize) -> Result<(u16, u64), NetError> {
    let k = n.rings[TXQ].ring.avail_idx();
    let (d, buf) = n.slot(TXQ, k);
    n.arena.write(buf, &[0u8; NET_HDR_LEN])?;
    n.arena
        .write(buf + NET_HDR_LEN as u64, &test_frame(b'T', seq, size))?;
    n.desc(
        TXQ,
        d,
        Desc {
            addr: buf,
            len: NET_HDR_LEN as u32,
            flags: VRING_DESC_F_NEXT as u16,
            next: d + 1,
        },
    )?;
    n.desc(
        TXQ,
        d + 1,
        Desc {
            addr: buf + NET_HDR_LEN as u64,
            len: size as u32,
            flags: 0,
            next: 0,
        },
    )?;
    let mem = n.arena.mem();
    n.rings[TXQ].ring.push_avail(&mem, d)?;
    Ok((d, buf))
}

/// Two anonymous pages, the second one unmapped for access (PROT_NONE).
struct EdgePages {
    at: *mut libc::c_void,
}

impl EdgePages {
    fn new() -> Result<EdgePages, NetError> {
        // SAFETY: a fresh anonymous private mapping.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(sys("mmap")(io::Error::last_os_error()));
        }
        let pages = EdgePages { at };
        // SAFETY: the second page of our own mapping.
        if unsafe { libc::mprotect(at.cast::<u8>().add(4096).cast(), 4096, libc::PROT_NONE) } < 0 {
            return Err(sys("mprotect")(io::Error::last_os_error()));
        }
        Ok(pages)
    }
}

impl Drop for EdgePages {
    fn drop(&mut self) {
        // SAFETY: our mapping, unused from here on.
        unsafe { libc::munmap(self.at, 8192) };
    }
}

/// A miss read into a buffer whose end faults: `vhost_chr_read_iter` copies what fits,
/// frees the message instead of keeping it pending, and returns the short count. Nothing
/// is left to read, the update that answers it wakes nothing (no pending miss), and the
/// frame only goes out after another kick. Returns the frames checked (1).
fn lost_miss(
    n: &mut RawNet,
    (tx_bufs, tx_bufs_end): (u64, u64),
    seq: u32,
    timeout: Duration,
) -> Result<u64, NetError> {
    let case = "miss read short";
    let w = expect_ok(
        case,
        n.dev.write_msg(&v1_msg(IotlbMsg {
            iova: tx_bufs,
            size: tx_bufs_end - tx_bufs,
            uaddr: 0,
            perm: 0,
            kind: frontends::vhost_raw::IOTLB_INVALIDATE,
        })),
    )?;
    if w != MSG_LEN {
        return Err(fail(case, format!("IOTLB invalidate: wrote {w} bytes")));
    }
    let (head, buf) = publish_tx(n, seq, 200)?;
    n.kick(TXQ)?;
    if !poll_readable(&[n.dev.fd()], timeout).map_err(sys("poll (vhost-net fd)"))?[0] {
        return Err(fail(case, "no miss after the invalidation"));
    }
    const FITS: usize = 32;
    let pages = EdgePages::new()?;
    // SAFETY: FITS bytes before the fenced page are ours; the kernel stops at the fence.
    let r = unsafe {
        let at = pages.at.cast::<u8>().add(4096 - FITS);
        let r = libc::read(n.dev.fd(), at.cast(), MSG_LEN);
        let mut got = [0u8; FITS];
        std::ptr::copy_nonoverlapping(at, got.as_mut_ptr(), FITS);
        (r, got)
    };
    let want = v1_msg(IotlbMsg {
        iova: buf,
        size: 0,
        uaddr: 0,
        perm: ACCESS_RO,
        kind: IOTLB_MISS,
    })
    .bytes();
    if r.0 != FITS as isize || r.1[..] != want[..FITS] {
        return Err(fail(
            case,
            format!(
                "read returned {} ({}), {:02x?}; expected {FITS}: {:02x?}",
                r.0,
                io::Error::last_os_error(),
                r.1,
                &want[..FITS]
            ),
        ));
    }
    if let Some(m) = n.dev.read_msg().map_err(sys("read (IOTLB message)"))? {
        return Err(fail(case, format!("the miss is still there: {m:?}")));
    }
    update(n, case, tx_bufs, tx_bufs_end)?;
    n.expect_no_tx_out(case, Duration::from_millis(200))?;
    n.kick(TXQ)?;
    n.expect_tx_out(case, seq, 200, timeout)?;
    match n.wait_used(TXQ, timeout)? {
        Some((id, 0)) if id == u32::from(head) => Ok(1),
        other => Err(fail(case, format!("TX frame {seq}: used {other:?}"))),
    }
}

/// Part 3; returns (errnos checked, misses, blocking reads, frames checked).
fn iotlb_pieces(timeout: Duration) -> Result<(u64, u64, u64, u64), NetError> {
    let case = "iotlb pieces";
    let features = F_V1 | (1 << F_ACCESS_PLATFORM);
    let mut n = RawNet::open(RawNet::arena(QUEUE, 0)?, RawOpts::new(features, QUEUE))?;
    let info = n.arena.region_info();
    let (lo, hi) = (
        info.guest_phys_addr,
        info.guest_phys_addr + info.memory_size,
    );
    // An update of nothing is refused before it reaches the IOTLB.
    expect_errno(
        "IOTLB update of size 0",
        n.dev.write_msg(&v1_msg(IotlbMsg {
            iova: lo,
            size: 0,
            uaddr: lo,
            perm: ACCESS_RW,
            kind: IOTLB_UPDATE,
        })),
        libc::EINVAL,
    )?;
    // Everything but the TX buffers, in disjoint pieces cut in the middle of each ring part.
    let (tx_bufs, tx_bufs_end) = (
        n.rings[TXQ].bufs,
        n.rings[TXQ].bufs + crate::rawnet::SLOT * u64::from(QUEUE / 2),
    );
    let mut cuts = vec![lo, hi, tx_bufs, tx_bufs_end];
    for r in &n.rings {
        let q = &r.ring;
        cuts.extend([
            q.desc,
            q.desc + 512,
            q.avail,
            q.avail + 64,
            q.used,
            q.used + 256,
        ]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    for w in cuts.windows(2) {
        if (w[0] >= tx_bufs && w[1] <= tx_bufs_end) || w[0] < lo || w[1] > hi {
            continue;
        }
        update(&n, case, w[0], w[1])?;
    }
    n.attach(TXQ)?;
    n.attach(RXQ)?;
    // Every ring part is mapped: no miss.
    std::thread::sleep(Duration::from_millis(100));
    if let Some(m) = n.dev.read_msg().map_err(sys("read (IOTLB message)"))? {
        return Err(fail(
            case,
            format!("a message with the rings mapped: {m:?}"),
        ));
    }
    // TX frame 0 published without a kick.
    let seq = 0u32;
    let size = 200;
    let (d, buf) = publish_tx(&mut n, seq, size)?;
    // A blocking read; the helper kicks once it sees the reader asleep in it.
    install_wakeup()?;
    let kick = n.rings[TXQ].kick.try_clone().map_err(sys("eventfd dup"))?;
    let fd = n.dev.fd();
    // SAFETY: plain gettid / pthread_self.
    let (tid, me) = (unsafe { libc::gettid() }, unsafe { libc::pthread_self() });
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let helper = std::thread::spawn(move || -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut seen = false;
        while Instant::now() < deadline {
            if blocked_in_read(tid, fd) {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        kick.write(1).map_err(|e| format!("kick: {e}"))?;
        while !done2.load(Ordering::Acquire) {
            if Instant::now() > deadline + timeout {
                // SAFETY: `me` is the reader, alive until it joins us.
                unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                return Err("the blocking read never returned after the kick".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if seen {
            Ok(())
        } else {
            Err("the reader was never seen asleep in read(2)".into())
        }
    });
    set_nonblocking(fd, false)?;
    let r = read_blocking(fd, MSG_LEN);
    done.store(true, Ordering::Release);
    set_nonblocking(fd, true)?;
    let helped = helper
        .join()
        .map_err(|_| fail(case, "the kicking thread panicked"))?;
    helped.map_err(|e| fail("blocking read", e))?;
    let (len, bytes) = r.map_err(sys("blocking read of the device fd"))?;
    let miss = MsgV2::parse(&bytes[..len])
        .ok_or_else(|| fail("blocking read", format!("{len}-byte message")))?;
    if len != MSG_LEN
        || miss.kind != IOTLB_MSG_V1
        || miss.iotlb.kind != IOTLB_MISS
        || miss.iotlb.iova != buf
        || miss.iotlb.perm != ACCESS_RO
    {
        return Err(fail(
            "blocking read",
            format!("{len} bytes, {miss:?}; expected a v1 read-only miss at {buf:#x}"),
        ));
    }
    update(&n, case, tx_bufs, tx_bufs_end)?;
    n.expect_tx_out(case, seq, size, timeout)?;
    match n.wait_used(TXQ, timeout)? {
        Some((id, 0)) if id == u32::from(d) => {}
        other => return Err(fail(case, format!("TX frame {seq}: used {other:?}"))),
    }
    let mut frames = 1;
    // 39 more: the used ring's element 31 straddles its two pieces.
    for seq in 1..40 {
        n.tx_checked(case, seq, size, timeout)?;
        frames += 1;
    }
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    let send = move |_: &RawNet, f: &[u8]| inject.send(f);
    for seq in 0..8 {
        // No MRG_RXBUF: the tap's header, num_buffers not vhost's to write.
        rx_one(&mut n, case, seq, 300, &send, None, timeout)?;
        frames += 1;
    }
    if let Some(m) = n.dev.read_msg().map_err(sys("read (IOTLB message)"))? {
        return Err(fail(case, format!("a second message: {m:?}")));
    }
    frames += lost_miss(&mut n, (tx_bufs, tx_bufs_end), 40, timeout)?;
    n.detach_all();
    Ok((1, 2, 1, frames))
}

/// Whether the device fd has a message to read right now.
fn msg_pending(n: &RawNet) -> Result<bool, NetError> {
    Ok(poll_readable(&[n.dev.fd()], Duration::ZERO).map_err(sys("poll (vhost-net fd)"))?[0])
}

/// VHOST_SET_FEATURES without VIRTIO_F_ACCESS_PLATFORM after it (`vhost_clear_device_iotlb`):
/// the attach under an empty IOTLB fails (EFAULT) and leaves a miss for the used ring; the
/// features set again without the flag drop the IOTLB and that pending miss (nothing left to
/// read), and with them every ring's addresses (Debian's backport: the attach is EFAULT
/// until VHOST_SET_VRING_ADDR again); then the rings work on plain addresses through the
/// memory table: TX and RX frames byte-exact, no miss. Returns (errnos, frames checked).
fn iotlb_dropped(timeout: Duration) -> Result<(u64, u64), NetError> {
    let case = "IOTLB dropped";
    let features = F_V1 | (1 << F_ACCESS_PLATFORM);
    let mut n = RawNet::open(RawNet::arena(QUEUE, 0)?, RawOpts::new(features, QUEUE))?;
    expect_ok(case, n.dev.set_backend_features(BACKEND_F_IOTLB_MSG_V2))?;
    expect_errno(
        "attach under an empty IOTLB",
        n.dev.net_set_backend(TXQ as u32, n.tap.file().as_raw_fd()),
        libc::EFAULT,
    )?;
    if !msg_pending(&n)? {
        return Err(fail(case, "no IOTLB miss after the failed attach"));
    }
    expect_ok(case, n.dev.set_features(F_V1))?;
    if msg_pending(&n)? {
        let m = n.dev.read_msg();
        return Err(fail(case, format!("a message after the IOTLB went: {m:?}")));
    }
    // The ring addresses went with it (`vhost_vq_invalidate_access`): the attach writes
    // the used flags at address 0.
    expect_errno(
        "attach after the IOTLB went, ring addresses not set again",
        n.dev.net_set_backend(TXQ as u32, n.tap.file().as_raw_fd()),
        libc::EFAULT,
    )?;
    for q in [RXQ, TXQ] {
        expect_ok(case, n.dev.set_vring_addr(&n.rings[q].vring_addr(q as u32)))?;
    }
    n.attach(TXQ)?;
    n.attach(RXQ)?;
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    let send = move |_: &RawNet, f: &[u8]| inject.send(f);
    let mut frames = 0;
    for seq in 0..4 {
        n.tx_checked(case, seq, 200, timeout)?;
        rx_one(&mut n, case, seq, 300, &send, None, timeout)?;
        frames += 2;
    }
    if let Some(m) = n.dev.read_msg().map_err(sys("read (IOTLB message)"))? {
        return Err(fail(case, format!("a message without an IOTLB: {m:?}")));
    }
    n.detach_all();
    Ok((2, frames))
}

/// An address no user access can reach (`access_ok` fails).
const KERNEL_ADDR: u64 = 0xffff_8000_0000_0000;

/// Ring addresses, memory tables and kick eventfds changed while the backend is attached.
/// `VHOST_SET_VRING_ADDR` checks the new addresses only then (`vq->private_data`): a
/// descriptor table in kernel space is EINVAL; a log base in kernel space is taken while no
/// ring logs, but VHOST_VRING_F_LOG into it is EINVAL (`vq_log_used_access_ok`); the ring's
/// own addresses are taken and frames go on. `VHOST_SET_MEM_TABLE` checks every region of
/// an active ring (`memory_access_ok`): the memory in two regions is taken and frames go on,
/// a table with one more region in kernel space is EFAULT (the old table stays: frames go
/// on); with the backends detached the same table is taken and the attach is then EFAULT
/// (`vhost_vq_access_ok`), the good table again and the attach works. A second kick eventfd
/// replaces the first (`fput` of the old): a frame kicked through the old one stays, the new
/// one sends it. Returns (errnos checked, frames checked).
fn live_changes(timeout: Duration) -> Result<(u64, u64), NetError> {
    let case = "live changes";
    let mut n = RawNet::open(RawNet::arena(QUEUE, 0)?, RawOpts::new(F_V1, QUEUE))?;
    n.attach(RXQ)?;
    n.attach(TXQ)?;
    let mut seq = 0;
    let mut errnos = 0;
    let mut a = n.rings[TXQ].vring_addr(TXQ as u32);
    a.desc = KERNEL_ADDR;
    expect_errno(
        "ring address in kernel space, attached",
        n.dev.set_vring_addr(&a),
        libc::EINVAL,
    )?;
    // No ring logs: a log base in kernel space is taken, but a ring may not log into it.
    expect_ok(
        "log base in kernel space, no ring logging",
        n.dev.set_log_base(KERNEL_ADDR),
    )?;
    let mut a = n.rings[TXQ].vring_addr(TXQ as u32);
    a.flags = VRING_F_LOG;
    a.log_guest_addr = a.used;
    expect_errno(
        "used-ring log the log cannot cover, attached",
        n.dev.set_vring_addr(&a),
        libc::EINVAL,
    )?;
    expect_ok(case, n.dev.set_log_base(0))?;
    errnos += 2;
    expect_ok(
        case,
        n.dev.set_vring_addr(&n.rings[TXQ].vring_addr(TXQ as u32)),
    )?;
    n.tx_checked(case, seq, 200, timeout)?;
    seq += 1;
    let info = n.arena.region_info();
    let half = (info.memory_size / 2) & !4095;
    let good = [
        MemRegion {
            guest_phys_addr: info.guest_phys_addr,
            memory_size: half,
            userspace_addr: info.userspace_addr,
            flags_padding: 0,
        },
        MemRegion {
            guest_phys_addr: info.guest_phys_addr + half,
            memory_size: info.memory_size - half,
            userspace_addr: info.userspace_addr + half,
            flags_padding: 0,
        },
    ];
    expect_ok(case, n.dev.set_mem_table(&good))?;
    n.tx_checked(case, seq, 200, timeout)?;
    seq += 1;
    let mut bad = good.to_vec();
    bad.push(MemRegion {
        guest_phys_addr: info.guest_phys_addr + info.memory_size + (1 << 20),
        memory_size: 4096,
        userspace_addr: KERNEL_ADDR,
        flags_padding: 0,
    });
    expect_errno(
        "memory region in kernel space, attached",
        n.dev.set_mem_table(&bad),
        libc::EFAULT,
    )?;
    n.tx_checked(case, seq, 200, timeout)?;
    seq += 1;
    n.detach_all();
    expect_ok(
        "memory region in kernel space, detached",
        n.dev.set_mem_table(&bad),
    )?;
    expect_errno(
        "attach with a region in kernel space",
        n.dev.net_set_backend(TXQ as u32, n.tap.file().as_raw_fd()),
        libc::EFAULT,
    )?;
    errnos += 2;
    expect_ok(case, n.dev.set_mem_table(&good))?;
    n.attach(TXQ)?;
    n.tx_checked(case, seq, 200, timeout)?;
    seq += 1;
    // The kick replaced while attached.
    let new_kick = EventFd::new(EFD_NONBLOCK).map_err(sys("eventfd (kick)"))?;
    expect_ok(case, n.dev.set_vring_kick(TXQ as u32, new_kick.as_raw_fd()))?;
    // put_tx_frame kicks the old eventfd.
    let head = n.put_tx_frame(seq, 200, NET_HDR_LEN)?;
    n.expect_no_tx_out(
        "kick through the replaced eventfd",
        Duration::from_millis(300),
    )?;
    n.rings[TXQ].kick = new_kick;
    n.kick(TXQ)?;
    n.expect_tx_out(case, seq, 200, timeout)?;
    match n.wait_used(TXQ, timeout)? {
        Some((id, 0)) if id == u32::from(head) => {}
        other => return Err(fail(case, format!("TX frame {seq}: used {other:?}"))),
    }
    seq += 1;
    n.tx_checked(case, seq, 200, timeout)?;
    n.detach_all();
    Ok((errnos, u64::from(seq) + 1))
}

/// A ring of 8 with MRG_RXBUF: six one-buffer frames, then a frame over three buffers whose
/// used elements are 6, 7 and 0 (`vhost_add_used_n` writes them in two pieces), each used
/// element, `num_buffers` 3 and the bytes checked. Returns the frames checked.
fn used_ring_wrap(timeout: Duration) -> Result<u64, NetError> {
    let case = "used ring wrap";
    let features = F_V1 | (1 << VIRTIO_NET_F_MRG_RXBUF);
    let mut n = RawNet::open(RawNet::arena(8, 4 * 4096)?, RawOpts::new(features, 8))?;
    n.attach(RXQ)?;
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    let send = move |_: &RawNet, f: &[u8]| inject.send(f);
    for seq in 0..6 {
        rx_one(&mut n, case, seq, 200, &send, Some(1), timeout)?;
    }
    let got = starved(&mut n, case, 6, &send, timeout)?;
    n.detach_all();
    Ok(6 + got)
}

/// Ring size of the logged case: its used ring (6 + 8 * 512 bytes) ends one page after
/// `used + 4096`, where only `avail_event` lies (the 512th element never gets written).
const LOG_QUEUE: u16 = 512;
/// The RX frame written into one buffer over three pages.
const LONG_FRAME: usize = 6000;

/// VIRTIO_RING_F_EVENT_IDX with the dirty log (VHOST_F_LOG_ALL, VHOST_VRING_F_LOG on both
/// rings, a log eventfd): after a TX frame the worker re-enables notification by writing
/// `avail_event` (`vhost_update_avail_event`), which is logged: the page of the TX used
/// ring that holds only `avail_event` is dirty. A 6000-byte RX frame (the tap's MTU
/// raised) in one buffer that starts 96 bytes before a page end: every one of the three
/// pages it covers is dirty (`log_write`'s loop), the frame byte-exact. No page outside the
/// used rings and that buffer is dirty; the log eventfd fired. Returns (pages, frames).
fn logged_event_idx(timeout: Duration) -> Result<(u64, u64), NetError> {
    let case = "logged avail event";
    let arena = RawNet::arena(LOG_QUEUE, 4 * 4096)?;
    let info = arena.region_info();
    let features = F_V1 | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << F_LOG_ALL);
    let mut n = RawNet::open(arena, RawOpts::new(features, LOG_QUEUE))?;
    let log = DirtyLog::new(&info)?;
    expect_ok(case, n.dev.set_log_base(log.base()))?;
    let log_fd = EventFd::new(EFD_NONBLOCK).map_err(sys("eventfd (log)"))?;
    expect_ok(case, n.dev.set_log_fd(log_fd.as_raw_fd()))?;
    n.log_ring(case, RXQ)?;
    n.log_ring(case, TXQ)?;
    n.tap
        .set_mtu(9000)
        .map_err(|e| fail(case, format!("MTU 9000: {e}")))?;
    n.attach(RXQ)?;
    n.attach(TXQ)?;
    n.tx_checked(case, 0, 200, timeout)?;
    let tx_used = n.rings[TXQ].ring.used;
    let event_page = page(tx_used + 4 + 8 * u64::from(LOG_QUEUE));
    if event_page == page(tx_used + 4 + 8 * 2) {
        return Err(fail(
            case,
            "avail_event shares a page with the used elements",
        ));
    }
    // The long frame's buffer: 96 bytes before the end of a page, 8192 bytes long.
    let pages = n.arena.alloc(3 * 4096, 4096)?;
    let buf = pages + 4096 - 96;
    let len = (NET_HDR_LEN + LONG_FRAME) as u32;
    let (d, _) = n.post_rx(Some(buf), 8192)?;
    n.kick(RXQ)?;
    let frame = test_frame(b'R', 0, LONG_FRAME);
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    inject.send(&frame)?;
    match n.wait_used(RXQ, timeout)? {
        Some((id, l)) if id == u32::from(d) && l == len => {}
        other => return Err(fail(case, format!("long RX frame: used {other:?}"))),
    }
    let mut got = vec![0u8; LONG_FRAME];
    n.arena.read(buf + NET_HDR_LEN as u64, &mut got)?;
    if got != frame {
        return Err(fail(case, "the long RX frame differs"));
    }
    n.detach_all();
    let logged = log.pages()?;
    let written: std::collections::BTreeSet<u64> =
        (page(buf)..=page(buf + u64::from(len) - 1)).collect();
    let mut allowed = written.clone();
    for q in [RXQ, TXQ] {
        let used = n.rings[q].ring.used;
        allowed.extend(page(used)..=page(used + 6 + 8 * u64::from(LOG_QUEUE) - 1));
    }
    let missing: Vec<_> = written.iter().filter(|p| !logged.contains(p)).collect();
    if written.len() != 3 || !missing.is_empty() {
        return Err(fail(
            case,
            format!("long RX frame over {written:#x?}: {missing:#x?} not logged"),
        ));
    }
    if !logged.contains(&event_page) {
        return Err(fail(
            case,
            format!("the avail_event page {event_page:#x} not logged: {logged:#x?}"),
        ));
    }
    let extra: Vec<_> = logged.difference(&allowed).collect();
    if !extra.is_empty() {
        return Err(fail(
            case,
            format!("pages {extra:#x?} logged, never written"),
        ));
    }
    if !drain_fired(&log_fd)? {
        return Err(fail(case, "the log eventfd never fired"));
    }
    Ok((logged.len() as u64, 2))
}
