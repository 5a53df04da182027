//! `vhost-vsock-conns`: many connections at once through one vhost-vsock device, with the agent
//! as the nested guest on its rings (as in `vsock_control.rs`: one thread, non-blocking
//! sockets).
//!
//! * reply backpressure: 64 REQUESTs to a port nobody listens on, with no RX buffers, leave 64
//!   RST replies queued (the TX ring's size): vhost stops taking TX packets
//!   (`vhost_vsock_more_replies`), so a 65th stays unused; once RX buffers come the RSTs
//!   leave in order (ports checked), the first one restarts TX, and the 65th is answered too.
//! * a reply cancelled: data to a socket still connecting fails it (EPROTO) and queues an RST
//!   reply; a blocking connect on it times out and cancels its packets, the reply included:
//!   nothing reaches buffers posted afterwards.
//! * 32 connections from guest sockets to the device and 32 from the device to a guest
//!   listener, open together; three rounds of interleaved data both ways on all of them (sizes
//!   vary per connection and round): every stream byte-exact and in order, every data header
//!   carrying the socket's credit (256 KiB, `fwd_cnt` = what it has read), one CREDIT_UPDATE
//!   per read with its exact `fwd_cnt`.
//! * listen backlog 2: three REQUESTs answered RESPONSE, the fourth RST
//!   (`sk_acceptq_is_full` is `>`); one accept makes room for one more, then RST again; exactly
//!   four accepts succeed, the fifth EAGAIN.
//! * half-closes: SHUT_WR (SHUTDOWN flags SEND, send EPIPE, data still read), SHUT_RD
//!   (SHUTDOWN flags RCV, recv EOF, data still sent), and the device's SHUTDOWN SEND (recv
//!   EOF) and RCV (send EPIPE).
//! * guest CID change with connections up: a send on one fails ENODEV, a packet from the old
//!   CID is used and dropped, a connect reaches the device at its new CID; changed back, the
//!   old connection carries data again both ways.
//! * release: every socket of the device gets ECONNRESET.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use frontends::vsock_hdr::Hdr;
use kcov_wire::plan::Params;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use crate::net::{sys, Counters, NetError};
use crate::rawnet::{expect_errno, expect_ok, fail};
use crate::vsock::{message, op, HOST_CID, TYPE_STREAM};
use crate::vsock_control::{
    connect, connect_result, local_port, recv_exact, recv_nb, send_nb, set_connect_timeout,
    so_error, socket, wait_fd, Dev, PORT, QUEUE, QUIET, SLOT,
};

/// Connections from guest sockets to the device, and from the device to a guest listener.
const N_OUT: usize = 32;
const N_IN: usize = 32;
/// Rounds of data on every connection.
const ROUNDS: u32 = 3;
/// Guest listeners: the connections', the small backlog's, and a port nobody listens on.
const LISTEN_PORT: u32 = 7000;
const BACKLOG_PORT: u32 = 7100;
const BACKLOG: i32 = 2;
const DEAD_PORT: u32 = 7999;
/// The device side's ports for the connections it opens (+ i).
const RING_PORT: u32 = 20000;
const BACKLOG_RING_PORT: u32 = 21000;
const DEAD_RING_PORT: u32 = 30000;
/// RX buffers kept posted while connections run.
const RX_TARGET: u32 = 48;
/// An AF_VSOCK socket's receive buffer by default (`VSOCK_DEFAULT_BUFFER_SIZE`).
const SOCK_BUF: u32 = 256 * 1024;
/// `VIRTIO_VSOCK_SHUTDOWN_RCV` / `_SEND`.
const SHUT_RCV: u32 = 1;
const SHUT_SEND: u32 = 2;

/// Bytes of connection `i`'s chunk in round `r` (1..=1500).
fn chunk_len(i: usize, r: u32) -> usize {
    1 + (i * 131 + r as usize * 977) % 1500
}

/// One connection: its socket and what went each way.
struct Conn {
    fd: OwnedFd,
    sock_port: u32,
    ring_port: u32,
    /// What the socket sent, and what of it reached the ring, in order.
    sent: Vec<u8>,
    at_ring: Vec<u8>,
    /// Bytes the socket has read (its `fwd_cnt`).
    read: u32,
    /// The CREDIT_UPDATEs its reads owe the ring, by `fwd_cnt`, in order.
    credits: VecDeque<u32>,
}

/// The device's side of all connections.
struct Ring {
    d: Dev,
    conns: Vec<Conn>,
    by_ports: HashMap<(u32, u32), usize>,
    timeout: Duration,
    credit_updates: u64,
}

impl Ring {
    fn add(&mut self, fd: OwnedFd, sock_port: u32, ring_port: u32) -> usize {
        let i = self.conns.len();
        self.by_ports.insert((sock_port, ring_port), i);
        self.conns.push(Conn {
            fd,
            sock_port,
            ring_port,
            sent: Vec::new(),
            at_ring: Vec::new(),
            read: 0,
            credits: VecDeque::new(),
        });
        i
    }

    /// The next RX packet, the RX ring topped up to [`RX_TARGET`] buffers first.
    fn next(&mut self, case: &str) -> Result<(Hdr, Vec<u8>), NetError> {
        while self.d.rx_out < RX_TARGET {
            self.d.post_rx(SLOT as u32)?;
        }
        self.d.recv(case, self.timeout)
    }

    /// Takes a data or credit packet of a known connection (checked against what that
    /// connection owes); any other packet is handed back.
    fn absorb(
        &mut self,
        case: &str,
        h: Hdr,
        p: Vec<u8>,
    ) -> Result<Option<(Hdr, Vec<u8>)>, NetError> {
        if h.op != op::RW && h.op != op::CREDIT_UPDATE {
            return Ok(Some((h, p)));
        }
        let Some(&i) = self.by_ports.get(&(h.src_port, h.dst_port)) else {
            return Err(fail(case, format!("packet of no connection: {h:?}")));
        };
        if (h.src_cid, h.dst_cid, h.ty, h.buf_alloc)
            != (HOST_CID, self.d.cid, TYPE_STREAM, SOCK_BUF)
        {
            return Err(fail(case, format!("connection {i}: header {h:?}")));
        }
        let c = &mut self.conns[i];
        if h.op == op::RW {
            if h.fwd_cnt != c.read {
                return Err(fail(
                    case,
                    format!(
                        "connection {i}: data with fwd_cnt {}, read {}",
                        h.fwd_cnt, c.read
                    ),
                ));
            }
            c.at_ring.extend_from_slice(&p);
            let n = c.at_ring.len();
            if n > c.sent.len() || c.at_ring[..] != c.sent[..n] {
                return Err(fail(
                    case,
                    format!(
                        "connection {i}: {n} bytes at the ring differ from the {} sent",
                        c.sent.len()
                    ),
                ));
            }
        } else {
            match c.credits.pop_front() {
                Some(f) if f == h.fwd_cnt && p.is_empty() => self.credit_updates += 1,
                want => {
                    return Err(fail(
                        case,
                        format!(
                            "connection {i}: CREDIT_UPDATE fwd_cnt {}, owed {want:?}",
                            h.fwd_cnt
                        ),
                    ))
                }
            }
        }
        Ok(None)
    }

    /// Takes packets until every byte sent reached the ring and every owed credit update came;
    /// anything else fails.
    fn drain(&mut self, case: &str) -> Result<(), NetError> {
        while !self
            .conns
            .iter()
            .all(|c| c.at_ring.len() == c.sent.len() && c.credits.is_empty())
        {
            let (h, p) = self.next(case)?;
            if let Some((h, _)) = self.absorb(case, h, p)? {
                return Err(fail(case, format!("unexpected packet {h:?}")));
            }
        }
        Ok(())
    }

    /// The next packet other than data and credit: `want` from the socket's `sock_port` to
    /// the device's `ring_port`, no payload.
    fn expect(
        &mut self,
        case: &str,
        want: u16,
        sock_port: u32,
        ring_port: u32,
    ) -> Result<Hdr, NetError> {
        loop {
            let (h, p) = self.next(case)?;
            if let Some((h, p)) = self.absorb(case, h, p)? {
                let got = (h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.ty, h.op);
                if got
                    != (
                        HOST_CID,
                        self.d.cid,
                        sock_port,
                        ring_port,
                        TYPE_STREAM,
                        want,
                    )
                    || !p.is_empty()
                {
                    return Err(fail(
                        case,
                        format!(
                            "expected op {want} {sock_port}->{ring_port}, got {h:?} ({} bytes)",
                            p.len()
                        ),
                    ));
                }
                return Ok(h);
            }
        }
    }

    /// A packet from the device's `ring_port` to the socket's `sock_port`; it must be used.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        case: &str,
        op: u16,
        ring_port: u32,
        sock_port: u32,
        flags: u32,
        payload: &[u8],
    ) -> Result<(), NetError> {
        let h = Hdr {
            src_cid: self.d.cid,
            dst_cid: HOST_CID,
            src_port: ring_port,
            dst_port: sock_port,
            len: 0,
            ty: TYPE_STREAM,
            op,
            flags,
            buf_alloc: SOCK_BUF,
            fwd_cnt: 0,
        };
        self.d.send(case, h, payload, self.timeout)
    }

    /// Connection `i`'s socket sends `bytes`, all taken.
    fn sock_send(&mut self, case: &str, i: usize, bytes: &[u8]) -> Result<(), NetError> {
        let c = &mut self.conns[i];
        let n = send_nb(&c.fd, bytes).map_err(sys("send"))?;
        if n != bytes.len() {
            return Err(fail(
                case,
                format!("connection {i}: send took {n} of {}", bytes.len()),
            ));
        }
        c.sent.extend_from_slice(bytes);
        Ok(())
    }

    /// The device sends `bytes` on connection `i`; its socket reads them back exactly, which
    /// owes the ring a CREDIT_UPDATE.
    fn ring_to_sock(&mut self, case: &str, i: usize, bytes: &[u8]) -> Result<(), NetError> {
        let (ring_port, sock_port) = (self.conns[i].ring_port, self.conns[i].sock_port);
        self.send(case, op::RW, ring_port, sock_port, 0, bytes)?;
        let c = &mut self.conns[i];
        if recv_exact(case, &c.fd, bytes.len(), self.timeout)? != bytes {
            return Err(fail(
                case,
                format!("connection {i}: {} bytes differ", bytes.len()),
            ));
        }
        c.read += bytes.len() as u32;
        c.credits.push_back(c.read);
        Ok(())
    }
}

/// A non-blocking listener on `port` (any CID).
fn listener(port: u32, backlog: i32) -> Result<OwnedFd, NetError> {
    let fd = socket(libc::SOCK_STREAM)?;
    // SAFETY: sockaddr_vm is plain data.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = libc::VMADDR_CID_ANY;
    a.svm_port = port;
    // SAFETY: bind with a sockaddr_vm of the size passed.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    } < 0
    {
        return Err(sys("bind (AF_VSOCK)")(io::Error::last_os_error()));
    }
    // SAFETY: plain listen(2).
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(sys("listen (AF_VSOCK)")(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// A non-blocking accept: the connection and its peer's (CID, port).
fn accept(fd: &OwnedFd) -> io::Result<(OwnedFd, u32, u32)> {
    // SAFETY: sockaddr_vm is plain data.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: accept4 into a sockaddr_vm of the size passed.
    let c = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            (&mut a as *mut libc::sockaddr_vm).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd, ours.
    Ok((unsafe { OwnedFd::from_raw_fd(c) }, a.svm_cid, a.svm_port))
}

fn shutdown(fd: &OwnedFd, how: libc::c_int) -> Result<(), NetError> {
    // SAFETY: plain shutdown(2).
    if unsafe { libc::shutdown(fd.as_raw_fd(), how) } < 0 {
        return Err(sys("shutdown")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs every part; counters say what was checked.
pub fn run(params: &Params) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let base = u64::from(params.vsock_cid) + 160;
    let resets = reply_backpressure(base + 1, timeout)?;
    cancelled_reply(base + 3, timeout)?;
    let d = Dev::open(base, 1u64 << VIRTIO_F_VERSION_1)?;
    let mut ring = Ring {
        d,
        conns: Vec::new(),
        by_ports: HashMap::new(),
        timeout,
        credit_updates: 0,
    };
    let mut keep = Vec::new();
    open_all(&mut ring, &mut keep)?;
    let bytes = rounds(&mut ring)?;
    let accepted = backlog(&mut ring, &mut keep)?;
    let half = half_closes(&mut ring)?;
    cid_change(&mut ring, &mut keep, base + 2)?;
    // Release: every connection of the device is reset.
    let Ring {
        d,
        conns,
        credit_updates,
        ..
    } = ring;
    drop(d);
    for (i, c) in conns.iter().enumerate() {
        let e = so_error(&c.fd)?;
        if e != libc::ECONNRESET {
            return Err(fail(
                "release with 64 connections",
                format!("connection {i}: SO_ERROR {e}, expected ECONNRESET"),
            ));
        }
    }
    drop(keep);
    Ok(vec![
        ("connections".into(), conns.len() as u64),
        ("stream_bytes".into(), bytes),
        ("credit_updates".into(), credit_updates),
        ("resets".into(), resets + 2),
        ("backlog_accepted".into(), accepted),
        ("half_closes".into(), half),
        ("iterations".into(), u64::from(ROUNDS)),
    ])
}

/// Replies pile up until vhost stops TX; RX buffers let them out and TX resumes. Returns the
/// RSTs checked.
fn reply_backpressure(cid: u64, timeout: Duration) -> Result<u64, NetError> {
    let case = "reply backpressure";
    let mut d = Dev::open(cid, 1u64 << VIRTIO_F_VERSION_1)?;
    let request = |i: u32| Hdr {
        src_cid: cid,
        dst_cid: HOST_CID,
        src_port: DEAD_RING_PORT + i,
        dst_port: DEAD_PORT,
        len: 0,
        ty: TYPE_STREAM,
        op: op::REQUEST,
        flags: 0,
        buf_alloc: SOCK_BUF,
        fwd_cnt: 0,
    };
    let n = u32::from(QUEUE);
    for i in 0..n {
        d.send(case, request(i), &[], timeout)?;
    }
    // 64 RST replies queued, as many as the TX ring's size: TX stops.
    let head = d.put_tx(&request(n).to_bytes())?;
    if let Some(u) = d.used(true, QUIET)? {
        return Err(fail(
            case,
            format!("TX went on with {n} replies queued: {u:?}"),
        ));
    }
    for _ in 0..n {
        d.post_rx(SLOT as u32)?;
    }
    for i in 0..=n {
        if d.rx_out == 0 {
            d.post_rx(SLOT as u32)?;
        }
        let (h, p) = d.recv(case, timeout)?;
        let got = (h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.ty, h.op);
        if got
            != (
                HOST_CID,
                cid,
                DEAD_PORT,
                DEAD_RING_PORT + i,
                TYPE_STREAM,
                op::RST,
            )
            || !p.is_empty()
        {
            return Err(fail(case, format!("reply {i}: {h:?}, expected RST")));
        }
        if i == 0 {
            // The first reply out frees room: the waiting REQUEST is taken.
            match d.used(true, timeout)? {
                Some((id, _)) if id == u32::from(head) => {}
                other => return Err(fail(case, format!("TX after the first reply: {other:?}"))),
            }
        }
    }
    match d.try_recv(case, QUIET)? {
        None => Ok(u64::from(n) + 1),
        Some((h, _)) => Err(fail(case, format!("unexpected packet {h:?}"))),
    }
}

/// A socket still connecting gets data: EPROTO, and an RST reply queued behind its REQUEST
/// (no RX buffers). A blocking connect on the same socket then times out, and
/// `vhost_transport_cancel_pkt` takes both back, the reply counted out of `queued_replies`:
/// buffers posted afterwards stay empty.
fn cancelled_reply(cid: u64, timeout: Duration) -> Result<(), NetError> {
    let case = "reply cancelled with its connect";
    let mut d = Dev::open(cid, 1u64 << VIRTIO_F_VERSION_1)?;
    let s = socket(libc::SOCK_STREAM)?;
    expect_errno(case, connect(&s, cid), libc::EINPROGRESS)?;
    let port = local_port(&s)?;
    let early = Hdr {
        src_cid: cid,
        dst_cid: HOST_CID,
        src_port: PORT,
        dst_port: port,
        len: 0,
        ty: TYPE_STREAM,
        op: op::RW,
        flags: 0,
        buf_alloc: SOCK_BUF,
        fwd_cnt: 0,
    };
    d.send(case, early, b"early", timeout)?;
    let e = so_error(&s)?;
    if e != libc::EPROTO {
        return Err(fail(case, format!("SO_ERROR {e}, expected EPROTO")));
    }
    set_blocking(&s)?;
    set_connect_timeout(&s, QUIET)?;
    expect_errno(case, connect(&s, cid), libc::ETIMEDOUT)?;
    for _ in 0..4 {
        d.post_rx(SLOT as u32)?;
    }
    match d.try_recv(case, QUIET)? {
        None => Ok(()),
        Some((h, _)) => Err(fail(case, format!("a cancelled packet arrived: {h:?}"))),
    }
}

fn set_blocking(fd: &OwnedFd) -> Result<(), NetError> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(sys("fcntl (O_NONBLOCK off)")(io::Error::last_os_error()));
    }
    Ok(())
}

/// 32 connections each way, open together.
fn open_all(ring: &mut Ring, keep: &mut Vec<OwnedFd>) -> Result<(), NetError> {
    let case = "opening 64 connections";
    let cid = ring.d.cid;
    let mut pending = HashMap::new();
    for _ in 0..N_OUT {
        let s = socket(libc::SOCK_STREAM)?;
        expect_errno(case, connect(&s, cid), libc::EINPROGRESS)?;
        pending.insert(local_port(&s)?, s);
    }
    let mut order = Vec::new();
    while order.len() < N_OUT {
        let (h, p) = ring.next(case)?;
        let got = (h.src_cid, h.dst_cid, h.dst_port, h.ty, h.op, p.len());
        if got != (HOST_CID, cid, PORT, TYPE_STREAM, op::REQUEST, 0)
            || !pending.contains_key(&h.src_port)
            || order.contains(&h.src_port)
        {
            return Err(fail(case, format!("expected a REQUEST of ours, got {h:?}")));
        }
        order.push(h.src_port);
    }
    for port in order {
        ring.send(case, op::RESPONSE, PORT, port, 0, &[])?;
        let s = pending
            .remove(&port)
            .ok_or_else(|| fail(case, format!("port {port} twice")))?;
        match connect_result(&s, ring.timeout)? {
            Some(0) => {}
            other => return Err(fail(case, format!("port {port}: SO_ERROR {other:?}"))),
        }
        ring.add(s, port, PORT);
    }
    let l = listener(LISTEN_PORT, 64)?;
    for i in 0..N_IN as u32 {
        ring.send(case, op::REQUEST, RING_PORT + i, LISTEN_PORT, 0, &[])?;
    }
    for i in 0..N_IN as u32 {
        ring.expect(case, op::RESPONSE, LISTEN_PORT, RING_PORT + i)?;
    }
    let mut accepted = Vec::new();
    for _ in 0..N_IN {
        let (fd, peer_cid, peer_port) = expect_ok("accept", accept(&l))?;
        if u64::from(peer_cid) != cid || !(RING_PORT..RING_PORT + N_IN as u32).contains(&peer_port)
        {
            return Err(fail(case, format!("accepted {peer_cid}:{peer_port}")));
        }
        accepted.push((peer_port, fd));
    }
    expect_errno("accept with none left", accept(&l).map(drop), libc::EAGAIN)?;
    accepted.sort_by_key(|(p, _)| *p);
    for (peer_port, fd) in accepted {
        ring.add(fd, LISTEN_PORT, peer_port);
    }
    if ring.by_ports.len() != N_OUT + N_IN {
        return Err(fail(
            case,
            format!("{} distinct connections", ring.by_ports.len()),
        ));
    }
    keep.push(l);
    ring.drain(case)
}

/// Interleaved data on every connection, both ways. Returns the bytes checked.
fn rounds(ring: &mut Ring) -> Result<u64, NetError> {
    let case = "data on 64 connections";
    let mut bytes = 0;
    for r in 0..ROUNDS {
        for i in 0..ring.conns.len() {
            let down = message(b'S', i as u32 * ROUNDS + r, chunk_len(i, r));
            ring.ring_to_sock(case, i, &down)?;
            let up = message(b'C', i as u32 * ROUNDS + r, chunk_len(i + 7, r));
            ring.sock_send(case, i, &up)?;
            bytes += (down.len() + up.len()) as u64;
        }
        ring.drain(case)?;
    }
    Ok(bytes)
}

/// Backlog 2: the fourth REQUEST is refused, one accept makes room for one more. Returns the
/// connections accepted.
fn backlog(ring: &mut Ring, keep: &mut Vec<OwnedFd>) -> Result<u64, NetError> {
    let case = "listen backlog 2";
    let l = listener(BACKLOG_PORT, BACKLOG)?;
    let answer = |ring: &mut Ring, i: u32, want: u16| -> Result<(), NetError> {
        ring.send(
            case,
            op::REQUEST,
            BACKLOG_RING_PORT + i,
            BACKLOG_PORT,
            0,
            &[],
        )?;
        ring.expect(case, want, BACKLOG_PORT, BACKLOG_RING_PORT + i)?;
        Ok(())
    };
    for i in 0..3 {
        answer(ring, i, op::RESPONSE)?;
    }
    answer(ring, 3, op::RST)?;
    let (fd, _, port) = expect_ok("accept", accept(&l))?;
    if port != BACKLOG_RING_PORT {
        return Err(fail(case, format!("accepted port {port} first")));
    }
    keep.push(fd);
    answer(ring, 4, op::RESPONSE)?;
    answer(ring, 5, op::RST)?;
    let mut n = 1;
    for want in [1, 2, 4] {
        let (fd, _, port) = expect_ok("accept", accept(&l))?;
        if port != BACKLOG_RING_PORT + want {
            return Err(fail(
                case,
                format!(
                    "accepted port {port}, expected {}",
                    BACKLOG_RING_PORT + want
                ),
            ));
        }
        keep.push(fd);
        n += 1;
    }
    expect_errno(
        "accept with the refused ones",
        accept(&l).map(drop),
        libc::EAGAIN,
    )?;
    keep.push(l);
    Ok(n)
}

/// SHUT_WR, SHUT_RD and the device's SHUTDOWN each way, on four connections. Returns them.
fn half_closes(ring: &mut Ring) -> Result<u64, NetError> {
    let extra = |tag: u8| message(tag, 0, 100);
    // Out 0: the socket stops sending; it still reads.
    {
        let case = "SHUT_WR";
        let (sp, rp) = (ring.conns[0].sock_port, ring.conns[0].ring_port);
        shutdown(&ring.conns[0].fd, libc::SHUT_WR)?;
        let h = ring.expect(case, op::SHUTDOWN, sp, rp)?;
        if h.flags != SHUT_SEND {
            return Err(fail(case, format!("SHUTDOWN flags {:#x}", h.flags)));
        }
        expect_errno(case, send_nb(&ring.conns[0].fd, b"x"), libc::EPIPE)?;
        ring.ring_to_sock(case, 0, &extra(b'w'))?;
    }
    // Out 1: the socket stops reading; it still sends.
    {
        let case = "SHUT_RD";
        let (sp, rp) = (ring.conns[1].sock_port, ring.conns[1].ring_port);
        shutdown(&ring.conns[1].fd, libc::SHUT_RD)?;
        let h = ring.expect(case, op::SHUTDOWN, sp, rp)?;
        if h.flags != SHUT_RCV {
            return Err(fail(case, format!("SHUTDOWN flags {:#x}", h.flags)));
        }
        let mut b = [0u8; 16];
        match recv_nb(&ring.conns[1].fd, &mut b) {
            Ok(0) => {}
            other => return Err(fail(case, format!("recv {other:?}, expected EOF"))),
        }
        ring.sock_send(case, 1, &extra(b'r'))?;
    }
    // In 0: the device stops sending: EOF, the socket still sends.
    let i0 = N_OUT;
    {
        let case = "SHUTDOWN SEND from the device";
        let (sp, rp) = (ring.conns[i0].sock_port, ring.conns[i0].ring_port);
        ring.send(case, op::SHUTDOWN, rp, sp, SHUT_SEND, &[])?;
        let mut b = [0u8; 16];
        match recv_nb(&ring.conns[i0].fd, &mut b) {
            Ok(0) => {}
            other => return Err(fail(case, format!("recv {other:?}, expected EOF"))),
        }
        ring.sock_send(case, i0, &extra(b's'))?;
    }
    // In 1: the device stops reading: EPIPE, the socket still reads.
    let i1 = N_OUT + 1;
    {
        let case = "SHUTDOWN RCV from the device";
        let (sp, rp) = (ring.conns[i1].sock_port, ring.conns[i1].ring_port);
        ring.send(case, op::SHUTDOWN, rp, sp, SHUT_RCV, &[])?;
        expect_errno(case, send_nb(&ring.conns[i1].fd, b"x"), libc::EPIPE)?;
        ring.ring_to_sock(case, i1, &extra(b'v'))?;
    }
    ring.drain("half-closes")?;
    Ok(4)
}

/// The device's CID changes under live connections, then changes back.
fn cid_change(ring: &mut Ring, keep: &mut Vec<OwnedFd>, new: u64) -> Result<(), NetError> {
    let case = "guest CID changed under connections";
    let old = ring.d.cid;
    let i = 2;
    let (sp, rp) = (ring.conns[i].sock_port, ring.conns[i].ring_port);
    expect_ok("VHOST_VSOCK_SET_GUEST_CID (new)", ring.d.set_guest_cid(new))?;
    // The socket's peer is the old CID: no device has it now.
    expect_errno(case, send_nb(&ring.conns[i].fd, b"y"), libc::ENODEV)?;
    // A packet still from the old CID is used and dropped.
    let stale = Hdr {
        src_cid: old,
        dst_cid: HOST_CID,
        src_port: rp,
        dst_port: sp,
        len: 5,
        ty: TYPE_STREAM,
        op: op::RW,
        flags: 0,
        buf_alloc: SOCK_BUF,
        fwd_cnt: 0,
    };
    ring.d.send(case, stale, b"stale", ring.timeout)?;
    if wait_fd(&ring.conns[i].fd, libc::POLLIN, QUIET)? {
        return Err(fail(case, "a packet from the old CID reached the socket"));
    }
    // A connect finds the device at its new CID.
    let s = socket(libc::SOCK_STREAM)?;
    expect_errno(case, connect(&s, new), libc::EINPROGRESS)?;
    let port = local_port(&s)?;
    ring.expect(case, op::REQUEST, port, PORT)?;
    ring.send(case, op::RESPONSE, PORT, port, 0, &[])?;
    match connect_result(&s, ring.timeout)? {
        Some(0) => {}
        other => {
            return Err(fail(
                case,
                format!("connect to the new CID: SO_ERROR {other:?}"),
            ))
        }
    }
    keep.push(s);
    // Back to the old CID: the old connection works again, both ways.
    expect_ok(
        "VHOST_VSOCK_SET_GUEST_CID (back)",
        ring.d.set_guest_cid(old),
    )?;
    // (The read first: the data header then carries the fwd_cnt the read left.)
    ring.ring_to_sock(case, i, &message(b'k', 2, 300))?;
    ring.sock_send(case, i, &message(b'k', 1, 300))?;
    ring.drain(case)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_vary_and_stay_in_one_packet() {
        let sizes: Vec<usize> = (0..N_OUT + N_IN + 7)
            .flat_map(|i| (0..ROUNDS).map(move |r| chunk_len(i, r)))
            .collect();
        assert!(sizes.iter().all(|&n| (1..=1500).contains(&n)));
        let distinct: std::collections::BTreeSet<_> = sizes.iter().collect();
        assert!(distinct.len() > 100, "{}", distinct.len());
        // One RX buffer's payload room holds any chunk: no split to reassemble per round.
        assert!(sizes.iter().all(|&n| n <= SLOT as usize - 44));
    }

    #[test]
    fn ports_do_not_overlap() {
        let ranges = [
            (RING_PORT, RING_PORT + N_IN as u32),
            (BACKLOG_RING_PORT, BACKLOG_RING_PORT + 6),
            (DEAD_RING_PORT, DEAD_RING_PORT + u32::from(QUEUE) + 1),
        ];
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:?} {b:?}");
            }
        }
        for p in [LISTEN_PORT, BACKLOG_PORT, DEAD_PORT, PORT] {
            assert!(ranges.iter().all(|r| !(r.0..r.1).contains(&p)));
        }
    }
}
