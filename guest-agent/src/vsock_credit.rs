//! `vhost-vsock-credit`: virtio-vsock flow control through vhost-vsock, both ways, with the
//! agent as the nested guest on the device's rings (as in `vsock_control.rs`: one thread is the
//! ring side and drives the in-kernel AF_VSOCK socket, non-blocking).
//!
//! * queue full: with no RX buffers the socket's three writes wait in vhost's send queue
//!   (`vhost_transport_do_send_pkt` puts each back); small buffers posted afterwards get them
//!   in order, each write split by vhost into pieces of at most the buffer's room (17 pieces
//!   for 1000 + 3000 + 200 bytes in 256-byte buffers), byte-exact.
//! * socket → ring credit: the ring side advertises `buf_alloc` 3000 and the socket writes
//!   10000 bytes: each `send` returns exactly what the window allows (3000, then EAGAIN),
//!   the bytes outstanding never pass `fwd_cnt + buf_alloc` at any packet and nothing more
//!   arrives while the window is shut; each CREDIT_UPDATE (consumed bytes, a larger window)
//!   releases exactly its difference; all 10000 bytes arrive byte-exact.
//! * ring → socket credit: the socket's own credit in every header it sends (256 KiB, fwd_cnt
//!   as it reads), the CREDIT_UPDATE its read sends, the ring side's CREDIT_REQUEST answered,
//!   SO_VM_SOCKETS_BUFFER_SIZE announced by a CREDIT_UPDATE; then the ring side sends one
//!   byte past the 4096 the socket advertised: 6.12 drops the connection
//!   (`virtio_transport_recv_connected`: the packet is not queued, RST back, `sk_err`
//!   ENOBUFS), yet the 4096 bytes within the credit are still read byte-exact (and credited
//!   back), then ENOBUFS, SO_ERROR ENOBUFS and EOF; closing it sends a second RST.
//! * closing a connected socket: SHUTDOWN (both directions), answered with RST, then silence.
//! * SEQPACKET: a message larger than the peer's window is refused whole (EMSGSIZE), one
//!   that fits arrives whole in one packet with EOM (no EOR: sent without MSG_EOR); then an RX
//!   buffer outside the memory table: the credit update for it signals the RX error eventfd
//!   and waits (nothing used) until the release resets the socket.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use frontends::vsock_hdr::{Hdr, HDR_LEN};
use kcov_wire::plan::Params;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use crate::net::{sys, Counters, NetError};
use crate::rawnet::{expect_errno, fail};
use crate::vsock::{message, op, HOST_CID, TYPE_STREAM};
use crate::vsock_control::{
    connect, connect_result, local_port, recv_exact, recv_nb, send_nb, so_error, socket, wait_fd,
    Dev, F_SEQPACKET, PORT, QUIET, SLOT, SOL_VSOCK, TYPE_SEQPACKET,
};

/// The window the ring side first advertises: less than one write.
const CREDIT: u32 = 3000;
/// Bytes the socket writes under the small window.
const TOTAL: usize = 10_000;
/// An AF_VSOCK socket's receive buffer by default (`VSOCK_DEFAULT_BUFFER_SIZE`).
const SOCK_BUF: u32 = 256 * 1024;
/// The socket's receive buffer once shrunk with SO_VM_SOCKETS_BUFFER_SIZE.
const SMALL_BUF: u32 = 4096;
/// `SO_VM_SOCKETS_BUFFER_SIZE` (a u64).
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
/// The queued writes and the RX buffer room they are split into.
const QUEUED: [usize; 3] = [1000, 3000, 200];
const PIECE: usize = 256;
/// `VIRTIO_VSOCK_SEQ_EOM` and `_EOR`.
const SEQ_EOM: u32 = 1;
const SEQ_EOR: u32 = 2;
/// `VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND`.
const SHUTDOWN_RCV_SEND: u32 = 3;

/// Pieces a write of `len` bytes becomes in RX buffers of `room` payload bytes.
fn pieces(len: usize, room: usize) -> usize {
    len.div_ceil(room)
}

/// A header from the ring side (`PORT`) to the socket's `peer` port.
fn hdr(d: &Dev, ty: u16, op: u16, peer: u32, buf_alloc: u32, fwd_cnt: u32) -> Hdr {
    Hdr {
        buf_alloc,
        fwd_cnt,
        ..d.hdr(ty, op, peer, 0)
    }
}

/// The next RX packet: it must belong to the connection of socket port `port` (CIDs, ports,
/// type) and be `want` (no payload unless RW). Returns its header and payload.
fn expect_pkt(
    d: &mut Dev,
    case: &str,
    ty: u16,
    port: u32,
    want: u16,
    timeout: Duration,
) -> Result<(Hdr, Vec<u8>), NetError> {
    if d.rx_out == 0 {
        d.post_rx(SLOT as u32)?;
    }
    let (h, p) = d.recv(case, timeout)?;
    let addr = (h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.ty);
    if addr != (HOST_CID, d.cid, port, PORT, ty) {
        return Err(fail(
            case,
            format!("packet of another connection or type: {h:?}"),
        ));
    }
    if h.op != want || (want != op::RW && !p.is_empty()) {
        return Err(fail(
            case,
            format!("expected op {want}, got {h:?} with {} bytes", p.len()),
        ));
    }
    Ok((h, p))
}

/// Expects a header-only packet `want` whose credit fields are `(buf_alloc, fwd_cnt)`.
fn expect_credit(
    d: &mut Dev,
    case: &str,
    port: u32,
    want: u16,
    credit: (u32, u32),
    timeout: Duration,
) -> Result<(), NetError> {
    let (h, _) = expect_pkt(d, case, TYPE_STREAM, port, want, timeout)?;
    if (h.buf_alloc, h.fwd_cnt) != credit {
        return Err(fail(
            case,
            format!(
                "op {want}: buf_alloc {} fwd_cnt {}, expected {credit:?}",
                h.buf_alloc, h.fwd_cnt
            ),
        ));
    }
    Ok(())
}

/// Closes a connected socket: its SHUTDOWN (both directions) must come, answered with RST,
/// after which nothing more.
fn close(
    d: &mut Dev,
    case: &str,
    s: OwnedFd,
    port: u32,
    timeout: Duration,
) -> Result<(), NetError> {
    drop(s);
    let (h, _) = expect_pkt(d, case, TYPE_STREAM, port, op::SHUTDOWN, timeout)?;
    if h.flags != SHUTDOWN_RCV_SEND {
        return Err(fail(
            case,
            format!("SHUTDOWN flags {:#x} on close", h.flags),
        ));
    }
    let rst = hdr(d, TYPE_STREAM, op::RST, port, 0, 0);
    d.send(case, rst, &[], timeout)?;
    quiet(d, case)
}

/// Nothing more arrives in the RX ring for a while.
fn quiet(d: &mut Dev, case: &str) -> Result<(), NetError> {
    if d.rx_out == 0 {
        // A buffer to see a stray packet in.
        d.post_rx(SLOT as u32)?;
    }
    match d.try_recv(case, QUIET)? {
        None => Ok(()),
        Some((h, p)) => Err(fail(
            case,
            format!("unexpected RX packet {h:?} with {} bytes", p.len()),
        )),
    }
}

/// Takes RW packets of socket port `port` until `got` holds `want` bytes. `limit` is what the
/// ring side allowed (its `fwd_cnt + buf_alloc`): the bytes sent may never pass it, at any
/// packet; each piece at most `room` bytes. Returns the pieces taken.
#[allow(clippy::too_many_arguments)]
fn take(
    d: &mut Dev,
    case: &str,
    port: u32,
    got: &mut Vec<u8>,
    want: usize,
    limit: usize,
    room: usize,
    credit: (u32, u32),
    timeout: Duration,
) -> Result<usize, NetError> {
    let mut n = 0;
    while got.len() < want {
        if d.rx_out == 0 {
            d.post_rx(SLOT as u32)?;
        }
        let (h, p) = expect_pkt(d, case, TYPE_STREAM, port, op::RW, timeout)?;
        if p.is_empty() || p.len() > room {
            return Err(fail(case, format!("{}-byte piece, room {room}", p.len())));
        }
        if (h.buf_alloc, h.fwd_cnt) != credit {
            return Err(fail(
                case,
                format!(
                    "data carries buf_alloc {} fwd_cnt {}, expected {credit:?}",
                    h.buf_alloc, h.fwd_cnt
                ),
            ));
        }
        got.extend_from_slice(&p);
        n += 1;
        if got.len() > limit {
            return Err(fail(
                case,
                format!(
                    "{} bytes sent, the ring side allowed {limit} (fwd_cnt + buf_alloc)",
                    got.len()
                ),
            ));
        }
    }
    if got.len() != want {
        return Err(fail(case, format!("{} bytes, expected {want}", got.len())));
    }
    Ok(n)
}

/// Connects a socket of `ty` to the device, answers its REQUEST with RESPONSE advertising
/// `buf_alloc`; returns the socket and its port. The REQUEST must carry the socket's default
/// credit (256 KiB, nothing consumed).
fn connected(
    d: &mut Dev,
    case: &str,
    ty: libc::c_int,
    buf_alloc: u32,
    timeout: Duration,
) -> Result<(OwnedFd, u32), NetError> {
    let vty = if ty == libc::SOCK_SEQPACKET {
        TYPE_SEQPACKET
    } else {
        TYPE_STREAM
    };
    if d.rx_out == 0 {
        d.post_rx(SLOT as u32)?;
    }
    let s = socket(ty)?;
    expect_errno(case, connect(&s, d.cid), libc::EINPROGRESS)?;
    let port = local_port(&s)?;
    let (h, _) = expect_pkt(d, case, vty, port, op::REQUEST, timeout)?;
    if (h.buf_alloc, h.fwd_cnt) != (SOCK_BUF, 0) {
        return Err(fail(case, format!("REQUEST credit {h:?}")));
    }
    let resp = hdr(d, vty, op::RESPONSE, port, buf_alloc, 0);
    d.send(case, resp, &[], timeout)?;
    match connect_result(&s, timeout)? {
        Some(0) => Ok((s, port)),
        other => Err(fail(case, format!("SO_ERROR {other:?} after RESPONSE"))),
    }
}

fn set_buffer_size(fd: &OwnedFd, size: u64) -> Result<(), NetError> {
    // SAFETY: setsockopt with a u64 of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_VSOCK,
            SO_VM_SOCKETS_BUFFER_SIZE,
            (&size as *const u64).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(sys("setsockopt(SO_VM_SOCKETS_BUFFER_SIZE)")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Runs every part; counters say what was checked.
pub fn run(params: &Params) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let base = u64::from(params.vsock_cid) + 140;
    let mut d = Dev::open(base, 1u64 << VIRTIO_F_VERSION_1)?;
    let queued = queue_full(&mut d, timeout)?;
    let (sent, windows) = socket_to_ring(&mut d, timeout)?;
    let back = ring_to_socket(&mut d, timeout)?;
    drop(d);
    let seq = seqpacket(base + 1, timeout)?;
    Ok(vec![
        ("queued_bytes".into(), queued),
        ("credit_bytes".into(), sent),
        ("credit_windows".into(), windows),
        ("overflow_bytes".into(), back),
        ("seqpacket_bytes".into(), seq),
        ("iterations".into(), 4),
    ])
}

/// Writes wait in vhost's send queue while the RX ring has no buffers, then come out in
/// order, split over small buffers.
fn queue_full(d: &mut Dev, timeout: Duration) -> Result<u64, NetError> {
    let case = "writes queued without RX buffers";
    let (s, port) = connected(d, case, libc::SOCK_STREAM, 1 << 16, timeout)?;
    if d.rx_out != 0 {
        return Err(fail(case, format!("{} RX buffers left", d.rx_out)));
    }
    let parts: Vec<Vec<u8>> = QUEUED
        .iter()
        .enumerate()
        .map(|(i, &n)| message(b'q', i as u32, n))
        .collect();
    for p in &parts {
        let n = send_nb(&s, p).map_err(sys("send (queued)"))?;
        if n != p.len() {
            return Err(fail(case, format!("send took {n} of {} bytes", p.len())));
        }
    }
    // Give the worker time to find the ring empty (and put the packet back) before buffers
    // come: otherwise this would only test the ordinary path.
    std::thread::sleep(QUIET);
    let want_pieces: usize = QUEUED.iter().map(|&n| pieces(n, PIECE)).sum();
    for _ in 0..want_pieces + 3 {
        d.post_rx((HDR_LEN + PIECE) as u32)?;
    }
    let total: usize = QUEUED.iter().sum();
    let mut got = Vec::new();
    let n = take(
        d,
        case,
        port,
        &mut got,
        total,
        1 << 16,
        PIECE,
        (SOCK_BUF, 0),
        timeout,
    )?;
    if got != parts.concat() {
        return Err(fail(case, "the queued bytes differ (order or content)"));
    }
    if n != want_pieces {
        return Err(fail(
            case,
            format!("{n} pieces, expected {want_pieces} (each write split on its own)"),
        ));
    }
    quiet(d, case)?;
    close(d, case, s, port, timeout)?;
    Ok(total as u64)
}

/// The socket writes 10000 bytes into a 3000-byte window moved by CREDIT_UPDATEs. Returns
/// (bytes checked, windows checked).
fn socket_to_ring(d: &mut Dev, timeout: Duration) -> Result<(u64, u64), NetError> {
    let case = "socket to ring under credit";
    let (s, port) = connected(d, case, libc::SOCK_STREAM, CREDIT, timeout)?;
    let data = message(b'c', 0, TOTAL);
    let mut got = Vec::new();
    let mut sent = 0usize;
    let mut windows = 0;
    // (buf_alloc, fwd_cnt) the ring side advertises: the first in the RESPONSE, then updates
    // for consumed bytes and a larger buffer.
    for (i, (buf_alloc, fwd_cnt)) in [(CREDIT, 0u32), (CREDIT, 1000), (8000, 1000), (8000, 9000)]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            let upd = hdr(d, TYPE_STREAM, op::CREDIT_UPDATE, port, buf_alloc, fwd_cnt);
            d.send(case, upd, &[], timeout)?;
            if !wait_fd(&s, libc::POLLOUT, timeout)? {
                return Err(fail(
                    case,
                    format!("not writable after CREDIT_UPDATE {buf_alloc}/{fwd_cnt}"),
                ));
            }
        }
        let limit = (buf_alloc + fwd_cnt) as usize;
        let want = (limit - sent).min(TOTAL - sent);
        let n = send_nb(&s, &data[sent..]).map_err(sys("send (credit)"))?;
        if n != want {
            return Err(fail(
                case,
                format!("window {buf_alloc}/{fwd_cnt}: send took {n}, expected {want}"),
            ));
        }
        sent += n;
        if sent < TOTAL {
            expect_errno(
                "send with the window shut",
                send_nb(&s, &data[sent..]),
                libc::EAGAIN,
            )?;
        }
        take(
            d,
            case,
            port,
            &mut got,
            sent,
            limit,
            SLOT as usize - HDR_LEN,
            (SOCK_BUF, 0),
            timeout,
        )?;
        quiet(d, case)?;
        windows += 1;
    }
    if got != data {
        return Err(fail(case, format!("{} bytes differ", got.len())));
    }
    close(d, case, s, port, timeout)?;
    Ok((TOTAL as u64, windows))
}

/// The socket's own credit; then one byte past it. Returns the bytes checked.
fn ring_to_socket(d: &mut Dev, timeout: Duration) -> Result<u64, NetError> {
    let case = "ring to socket";
    let (s, port) = connected(d, case, libc::SOCK_STREAM, 1 << 16, timeout)?;
    let ours = (1u32 << 16, 0u32);
    let send = |d: &mut Dev, payload: &[u8]| {
        let h = hdr(d, TYPE_STREAM, op::RW, port, ours.0, ours.1);
        d.send(case, h, payload, timeout)
    };
    // 500 bytes read: the read hands the credit back (too little left to read to wake a
    // reader, so virtio_transport_stream_do_dequeue sends CREDIT_UPDATE).
    let first = message(b'r', 0, 500);
    send(d, &first)?;
    if recv_exact(case, &s, first.len(), timeout)? != first {
        return Err(fail(case, "the 500 bytes differ"));
    }
    let what = "CREDIT_UPDATE after a read";
    expect_credit(d, what, port, op::CREDIT_UPDATE, (SOCK_BUF, 500), timeout)?;
    // CREDIT_REQUEST: answered with the same credit.
    let what = "CREDIT_REQUEST answered";
    let req = hdr(d, TYPE_STREAM, op::CREDIT_REQUEST, port, ours.0, ours.1);
    d.send(what, req, &[], timeout)?;
    expect_credit(d, what, port, op::CREDIT_UPDATE, (SOCK_BUF, 500), timeout)?;
    // A smaller buffer is announced at once.
    let what = "SO_VM_SOCKETS_BUFFER_SIZE announced";
    set_buffer_size(&s, u64::from(SMALL_BUF))?;
    expect_credit(d, what, port, op::CREDIT_UPDATE, (SMALL_BUF, 500), timeout)?;
    // The whole window, in two packets: taken, nothing answered.
    let fill = message(b'r', 1, SMALL_BUF as usize);
    let half = fill.len() / 2;
    send(d, &fill[..half])?;
    send(d, &fill[half..])?;
    quiet(d, case)?;
    // One byte past it: the packet is not queued, the connection is reset.
    let what = "one byte past the socket's credit";
    send(d, b"x")?;
    expect_credit(d, what, port, op::RST, (SMALL_BUF, 500), timeout)?;
    // The bytes within the credit are still there, whole; then the error, then EOF.
    if recv_exact(what, &s, fill.len(), timeout)? != fill {
        return Err(fail(what, "the 4096 bytes within the credit differ"));
    }
    expect_credit(
        d,
        "CREDIT_UPDATE after reading the reset socket",
        port,
        op::CREDIT_UPDATE,
        (SMALL_BUF, 500 + SMALL_BUF),
        timeout,
    )?;
    let mut buf = [0u8; 64];
    expect_errno(what, recv_nb(&s, &mut buf), libc::ENOBUFS)?;
    let e = so_error(&s)?;
    if e != libc::ENOBUFS {
        return Err(fail(what, format!("SO_ERROR {e}, expected ENOBUFS")));
    }
    match recv_nb(&s, &mut buf) {
        Ok(0) => {}
        other => {
            return Err(fail(
                what,
                format!("after SO_ERROR: {other:?}, expected EOF"),
            ))
        }
    }
    quiet(d, "after EOF on the reset socket")?;
    // Closing it: the reset left it established with the peer's shutdown recorded as both
    // directions, so virtio_transport_close answers with another RST (not SHUTDOWN).
    let what = "closing the reset socket";
    drop(s);
    expect_credit(
        d,
        what,
        port,
        op::RST,
        (SMALL_BUF, 500 + SMALL_BUF),
        timeout,
    )?;
    quiet(d, what)?;
    Ok((first.len() + fill.len()) as u64)
}

/// SEQPACKET records against the peer's window: one too large is refused whole, one that fits
/// arrives whole. Returns the bytes checked.
fn seqpacket(cid: u64, timeout: Duration) -> Result<u64, NetError> {
    let case = "SEQPACKET record and credit";
    let features = (1u64 << VIRTIO_F_VERSION_1) | (1u64 << F_SEQPACKET);
    let mut d = Dev::open(cid, features)?;
    let (s, port) = connected(&mut d, case, libc::SOCK_SEQPACKET, CREDIT, timeout)?;
    let big = message(b'p', 0, CREDIT as usize + 1);
    expect_errno(
        "SEQPACKET record beyond the peer's buf_alloc",
        send_nb(&s, &big),
        libc::EMSGSIZE,
    )?;
    let fits = &big[..CREDIT as usize];
    let n = send_nb(&s, fits).map_err(sys("send (SEQPACKET)"))?;
    if n != fits.len() {
        return Err(fail(case, format!("send took {n} of {}", fits.len())));
    }
    d.post_rx(SLOT as u32)?;
    let (h, p) = expect_pkt(&mut d, case, TYPE_SEQPACKET, port, op::RW, timeout)?;
    // Sent without MSG_EOR: the end of the message, not of a record.
    if p != fits || h.flags & (SEQ_EOM | SEQ_EOR) != SEQ_EOM {
        return Err(fail(
            case,
            format!("{}-byte record, flags {:#x}", p.len(), h.flags),
        ));
    }
    quiet(&mut d, case)?;
    // An RX buffer outside the memory table: vhost cannot take it (error eventfd, nothing
    // used); the credit update it was for waits in the device until the release.
    let what = "RX buffer outside the memory table";
    let req = hdr(&d, TYPE_SEQPACKET, op::CREDIT_REQUEST, port, CREDIT, 0);
    // First the good buffers still posted, each taking one answer.
    while d.rx_out > 0 {
        d.send(what, req, &[], timeout)?;
        expect_pkt(
            &mut d,
            what,
            TYPE_SEQPACKET,
            port,
            op::CREDIT_UPDATE,
            timeout,
        )?;
    }
    let bad = d.outside_memory();
    d.post_rx_at(Some(bad), SLOT as u32)?;
    d.send(what, req, &[], timeout)?;
    if !d.wait_err(false, timeout)? {
        return Err(fail(what, "vhost did not signal the RX error eventfd"));
    }
    if let Some(u) = d.used(false, QUIET)? {
        return Err(fail(what, format!("vhost used the bad buffer: {u:?}")));
    }
    // Released under the connection: the socket is reset, the ring hears nothing.
    drop(d);
    let e = so_error(&s)?;
    if e != libc::ECONNRESET {
        return Err(fail(case, format!("SO_ERROR {e} after the release")));
    }
    Ok(fits.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_writes_split_into_pieces() {
        assert_eq!(pieces(1000, 256), 4);
        assert_eq!(pieces(3000, 256), 12);
        assert_eq!(pieces(200, 256), 1);
        assert_eq!(pieces(256, 256), 1);
        let total: usize = QUEUED.iter().map(|&n| pieces(n, PIECE)).sum();
        assert_eq!(total, 17);
    }

    #[test]
    fn windows_release_their_difference() {
        // The socket may send fwd_cnt + buf_alloc in all: 3000, +1000, +5000, the last 1000.
        let mut sent = 0usize;
        let mut steps = vec![];
        for (buf_alloc, fwd) in [(CREDIT, 0u32), (CREDIT, 1000), (8000, 1000), (8000, 9000)] {
            let n = ((buf_alloc + fwd) as usize - sent).min(TOTAL - sent);
            steps.push(n);
            sent += n;
        }
        assert_eq!(steps, [3000, 1000, 5000, 1000]);
        assert_eq!(sent, TOTAL);
    }

    #[test]
    fn header_from_the_ring_side() {
        let d_cid = 7u64;
        let h = Hdr {
            src_cid: d_cid,
            dst_cid: HOST_CID,
            src_port: PORT,
            dst_port: 1234,
            len: 0,
            ty: TYPE_STREAM,
            op: op::CREDIT_UPDATE,
            flags: 0,
            buf_alloc: CREDIT,
            fwd_cnt: 1000,
        };
        assert_eq!(Hdr::parse(&h.to_bytes()), Some(h));
    }
}
