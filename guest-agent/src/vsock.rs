//! The vhost-vsock workload: the agent is the vhost-vsock frontend (the "guest" of an
//! in-guest vhost-vsock device with CID `params.vsock_cid`), and a guest-userspace AF_VSOCK
//! client connects to that CID. The agent answers on its rings as a virtio-vsock driver
//! would: it parses `struct virtio_vsock_hdr` packets from the RX queue (0), replies
//! RESPONSE to REQUEST, checks each message the client sends and answers with a message the
//! client checks, honours credit, and closes with RST after the client's SHUTDOWN.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vhost::vhost_kern::vsock::Vsock;
use vhost::vsock::VhostVsock;
use vhost::VhostBackend;

use crate::net::{wanted_features, Counters};
use frontends::vhost::configure_rings;

use frontends::vring::{poll_readable, Arena, Segment, SplitQueue, VringError};
use kcov_wire::plan::Params;

/// vhost-vsock queue indices.
pub const RX_QUEUE: usize = 0;
/// See [`RX_QUEUE`].
pub const TX_QUEUE: usize = 1;
/// `struct virtio_vsock_hdr` and its size (shared with the vsock crate's test driver).
pub use frontends::vsock_hdr::{Hdr, HDR_LEN};
/// Payload room of each RX buffer and largest payload we send per packet.
pub const PKT_PAYLOAD: usize = 4096;
/// The CID the vhost transport gives the host side (`VHOST_VSOCK_DEFAULT_HOST_CID`).
pub const HOST_CID: u64 = 2;
/// The port the agent listens on inside its device.
pub const SERVICE_PORT: u32 = 5000;
/// Receive buffer space the agent advertises.
pub const BUF_ALLOC: u32 = 1 << 20;

/// `virtio_vsock_type`.
pub const TYPE_STREAM: u16 = 1;
/// `virtio_vsock_op` values.
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Connect accepted.
    pub const RESPONSE: u16 = 2;
    /// Reset.
    pub const RST: u16 = 3;
    /// Shutdown.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Credit update.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Credit request.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Errors of the vsock workload.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A vhost ioctl failed.
    #[error("vhost-vsock {op}: {source}")]
    Vhost {
        /// The operation.
        op: &'static str,
        /// The error.
        source: vhost::Error,
    },
    /// Features, memory table or rings refused.
    #[error(transparent)]
    Setup(#[from] frontends::vhost::VhostError),
    /// Ring trouble.
    #[error(transparent)]
    Ring(#[from] VringError),
    /// A protocol violation by the kernel side.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The client failed.
    #[error("AF_VSOCK client: {0}")]
    Client(String),
    /// The data check failed.
    #[error("data check: {0}")]
    Mismatch(String),
    /// Nothing happened in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

fn vh(op: &'static str) -> impl FnOnce(vhost::Error) -> VsockError {
    move |source| VsockError::Vhost { op, source }
}

/// Message `i` of `size` bytes from side `who` (b'C' client, b'S' agent).
pub fn message(who: u8, i: u32, size: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x0100_0193) ^ (u32::from(who) << 24) ^ 0x811c_9dc5;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A fresh AF_VSOCK stream socket (close-on-exec); the error names the call.
pub fn stream_socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket(AF_VSOCK): {}", io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the socket timeout option `opt` (`SO_RCVTIMEO` or `SO_SNDTIMEO`) of `fd`;
/// best effort, like the callers always had it (a failure leaves no timeout).
pub fn set_socket_timeout(fd: &OwnedFd, opt: libc::c_int, timeout: Duration) {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a valid timeval option on a socket we own.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
}

/// Connects the AF_VSOCK socket `fd` to `cid:port`.
pub fn connect(fd: &OwnedFd, cid: u32, port: u32) -> io::Result<()> {
    // SAFETY: sockaddr_vm is plain data.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: addr is a valid sockaddr_vm of the size passed.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The client: connects to `cid:port`, sends `count` messages, checks each answer.
fn client(cid: u32, port: u32, count: u32, size: usize, timeout: Duration) -> Result<u64, String> {
    let fd = stream_socket()?;
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        set_socket_timeout(&fd, opt, timeout);
    }
    connect(&fd, cid, port).map_err(|e| format!("connect to CID {cid} port {port}: {e}"))?;
    let mut sock = std::fs::File::from(fd);
    let mut got = vec![0u8; size];
    let mut bytes = 0u64;
    for i in 0..count {
        sock.write_all(&message(b'C', i, size))
            .map_err(|e| format!("send message {i}: {e}"))?;
        sock.read_exact(&mut got)
            .map_err(|e| format!("receive answer {i}: {e}"))?;
        if got != message(b'S', i, size) {
            return Err(format!(
                "answer {i} differs from what the agent put on its TX ring"
            ));
        }
        bytes += 2 * size as u64;
    }
    // SAFETY: shutdown on our socket.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
    Ok(bytes)
}

struct Conn {
    peer_port: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    fwd_cnt: u32,
}

struct Driver<'a> {
    arena: &'a Arena,
    rx: SplitQueue,
    tx: SplitQueue,
    rx_slots: Vec<u64>,
    tx_slots: Vec<u64>,
    tx_free: Vec<usize>,
    cid: u64,
    stats: Counters,
    packets_in: u64,
    packets_out: u64,
}

impl Driver<'_> {
    fn post_rx(&mut self, i: usize) -> Result<(), VringError> {
        let a = self.rx_slots[i];
        self.rx.add(
            &[
                Segment {
                    addr: a,
                    len: HDR_LEN as u32,
                    write: true,
                },
                Segment {
                    addr: a + HDR_LEN as u64,
                    len: PKT_PAYLOAD as u32,
                    write: true,
                },
            ],
            i as u64,
        )?;
        Ok(())
    }

    fn reclaim_tx(&mut self) -> Result<(), VringError> {
        while let Some((tok, _)) = self.tx.pop_used()? {
            if let Some(i) = usize::try_from(tok)
                .ok()
                .filter(|&i| i < self.tx_slots.len())
            {
                self.tx_free.push(i);
            }
        }
        Ok(())
    }

    fn send(&mut self, hdr: Hdr, payload: &[u8], timeout: Duration) -> Result<(), VsockError> {
        self.reclaim_tx()?;
        if self.tx_free.is_empty() {
            let (tok, _) = self.tx.wait_used(timeout)?;
            self.tx_free.push(tok as usize);
        }
        let i = self.tx_free.pop().ok_or(VringError::Full)?;
        let a = self.tx_slots[i];
        let hdr = Hdr {
            len: payload.len() as u32,
            ..hdr
        };
        self.arena.write(a, &hdr.to_bytes())?;
        let mut segs = vec![Segment {
            addr: a,
            len: HDR_LEN as u32,
            write: false,
        }];
        if !payload.is_empty() {
            self.arena.write(a + HDR_LEN as u64, payload)?;
            segs.push(Segment {
                addr: a + HDR_LEN as u64,
                len: payload.len() as u32,
                write: false,
            });
        }
        self.tx.add(&segs, i as u64)?;
        self.tx.publish()?;
        self.packets_out += 1;
        Ok(())
    }

    fn reply(&self, conn: &Conn, op: u16) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: SERVICE_PORT,
            dst_port: conn.peer_port,
            len: 0,
            ty: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: conn.fwd_cnt,
        }
    }
}

/// Runs the workload. VHOST_SET_OWNER happens on the calling thread.
pub fn run(params: &Params) -> Result<Counters, VsockError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let size = params.size as usize;
    let q = usize::from(params.queue);
    let per_buf = if params.indirect { 1 } else { 2 };
    let nslots = (q / per_buf).max(1);
    let mut arena = Arena::new(
        2 * (4 * 4096 + 100 * q) + 2 * nslots * (HDR_LEN + PKT_PAYLOAD + 64) + (1 << 16),
    )?;

    let dev = Vsock::new(arena.mem()).map_err(vh("open /dev/vhost-vsock"))?;
    dev.set_owner().map_err(vh("VHOST_SET_OWNER"))?;
    let want = wanted_features(params, false);
    let rx = SplitQueue::new(&mut arena, params.queue, params.indirect, params.event_idx)?;
    let tx = SplitQueue::new(&mut arena, params.queue, params.indirect, params.event_idx)?;
    let rings = [rx.vhost_ring(RX_QUEUE), tx.vhost_ring(TX_QUEUE)];
    configure_rings(&dev, "vhost-vsock", want, &[arena.region_info()], &rings)?;
    let rx_slots: Vec<u64> = (0..nslots)
        .map(|_| arena.alloc((HDR_LEN + PKT_PAYLOAD) as u64, 64))
        .collect::<Result<_, _>>()?;
    let tx_slots: Vec<u64> = (0..nslots)
        .map(|_| arena.alloc((HDR_LEN + PKT_PAYLOAD) as u64, 64))
        .collect::<Result<_, _>>()?;
    let mut d = Driver {
        arena: &arena,
        rx,
        tx,
        rx_slots,
        tx_free: (0..nslots).rev().collect(),
        tx_slots,
        cid: u64::from(params.vsock_cid),
        stats: Vec::new(),
        packets_in: 0,
        packets_out: 0,
    };
    for i in 0..nslots {
        d.post_rx(i)?;
    }
    d.rx.publish()?;
    dev.set_guest_cid(d.cid).map_err(|e| match e {
        vhost::Error::IoctlError(ref io) if io.raw_os_error() == Some(libc::EADDRINUSE) => {
            VsockError::Protocol(format!(
                "VHOST_VSOCK_SET_GUEST_CID {}: CID in use (our own virtio-vsock CID?); pick another with testbed.vsock_cid",
                d.cid
            ))
        }
        e => VsockError::Vhost { op: "VHOST_VSOCK_SET_GUEST_CID", source: e },
    })?;
    dev.start().map_err(vh("VHOST_VSOCK_SET_RUNNING"))?;

    let (done_tx, done_rx) = mpsc::channel();
    let (cid, count) = (params.vsock_cid, params.frames);
    let client_thread = std::thread::Builder::new()
        .name("vsock-client".into())
        .spawn(move || {
            let _ = done_tx.send(client(cid, SERVICE_PORT, count, size, timeout));
        })
        .map_err(|e| VsockError::Client(format!("spawning the client thread: {e}")))?;

    let start = Instant::now();
    let mut client_done = None;
    let result = serve(&mut d, params, size, timeout, &done_rx, &mut client_done);
    let _ = dev.stop();
    // The client may have finished while serve() was still waiting for the close.
    let client_result = match client_done {
        Some(r) => r,
        None => match done_rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Err("the client did not finish".into()),
        },
    };
    let _ = client_thread.join();
    let (served, answers) = result?;
    let client_bytes = client_result.map_err(VsockError::Client)?;
    let elapsed = start.elapsed();
    let mut c = std::mem::take(&mut d.stats);
    c.extend([
        ("messages_rx".to_string(), served),
        ("messages_tx".to_string(), answers),
        ("bytes".to_string(), client_bytes),
        ("packets_in".to_string(), d.packets_in),
        ("packets_out".to_string(), d.packets_out),
        ("iterations".to_string(), answers),
        ("loop_us".to_string(), elapsed.as_micros() as u64),
        ("features".to_string(), want),
    ]);
    for (name, q) in [("rx", &d.rx), ("tx", &d.tx)] {
        let s = q.stats();
        c.push((format!("{name}_kicks"), s.kicks));
        c.push((format!("{name}_calls"), s.calls));
        c.push((format!("{name}_used"), s.used));
    }
    Ok(c)
}

/// The device-facing loop: returns (messages checked, answers sent).
fn serve(
    d: &mut Driver<'_>,
    params: &Params,
    size: usize,
    timeout: Duration,
    done: &mpsc::Receiver<Result<u64, String>>,
    client_done: &mut Option<Result<u64, String>>,
) -> Result<(u64, u64), VsockError> {
    let mut conn: Option<Conn> = None;
    let mut inbuf: Vec<u8> = Vec::new();
    let (mut served, mut answers) = (0u64, 0u64);
    let mut closed = false;
    let mut last_progress = Instant::now();
    while !closed {
        let Some((tok, used_len)) = d.rx.pop_used()? else {
            if last_progress.elapsed() > timeout {
                return Err(VsockError::Timeout(format!(
                    "no packet from the vhost-vsock device for {timeout:?} (connected: {}, messages {served})",
                    conn.is_some()
                )));
            }
            match done.try_recv() {
                Ok(Err(e)) => return Err(VsockError::Client(e)),
                // Keep a finished client's result: the channel yields it only once.
                Ok(Ok(bytes)) => *client_done = Some(Ok(bytes)),
                Err(_) => {}
            }
            poll_readable(
                &[d.rx.call.as_raw_fd(), d.tx.call.as_raw_fd()],
                Duration::from_millis(50),
            )
            .map_err(|e| VsockError::Protocol(format!("poll: {e}")))?;
            let _ = d.rx.call.read();
            let _ = d.tx.call.read();
            d.reclaim_tx()?;
            continue;
        };
        last_progress = Instant::now();
        d.packets_in += 1;
        let slot = usize::try_from(tok)
            .ok()
            .filter(|&i| i < d.rx_slots.len())
            .ok_or_else(|| VsockError::Protocol(format!("RX token {tok} is no buffer of ours")))?;
        let used_len = used_len as usize;
        let mut raw = vec![0u8; used_len.min(HDR_LEN + PKT_PAYLOAD)];
        d.arena.read(d.rx_slots[slot], &mut raw)?;
        d.post_rx(slot)?;
        d.rx.publish()?;
        let hdr = Hdr::parse(&raw).ok_or_else(|| {
            VsockError::Protocol(format!(
                "packet of {used_len} bytes is shorter than a header"
            ))
        })?;
        let payload = raw
            .get(HDR_LEN..HDR_LEN + hdr.len as usize)
            .ok_or_else(|| {
                VsockError::Protocol(format!(
                    "header says {} payload bytes, buffer has {}",
                    hdr.len,
                    used_len.saturating_sub(HDR_LEN)
                ))
            })?
            .to_vec();
        if hdr.dst_cid != d.cid || hdr.src_cid != HOST_CID || hdr.ty != TYPE_STREAM {
            return Err(VsockError::Protocol(format!("unexpected packet {hdr:?}")));
        }
        match (hdr.op, conn.as_mut()) {
            (op::REQUEST, None) => {
                if hdr.dst_port != SERVICE_PORT {
                    return Err(VsockError::Protocol(format!(
                        "REQUEST for port {}",
                        hdr.dst_port
                    )));
                }
                let c = Conn {
                    peer_port: hdr.src_port,
                    peer_buf_alloc: hdr.buf_alloc,
                    peer_fwd_cnt: hdr.fwd_cnt,
                    tx_cnt: 0,
                    fwd_cnt: 0,
                };
                let h = d.reply(&c, op::RESPONSE);
                d.send(h, &[], timeout)?;
                conn = Some(c);
            }
            (_, None) => {
                return Err(VsockError::Protocol(format!(
                    "op {} before REQUEST",
                    hdr.op
                )))
            }
            (_, Some(c)) if hdr.src_port != c.peer_port => {
                return Err(VsockError::Protocol(format!(
                    "packet from port {}",
                    hdr.src_port
                )))
            }
            (op::RW, Some(c)) => {
                c.peer_buf_alloc = hdr.buf_alloc;
                c.peer_fwd_cnt = hdr.fwd_cnt;
                c.fwd_cnt = c.fwd_cnt.wrapping_add(payload.len() as u32);
                inbuf.extend_from_slice(&payload);
                if inbuf.len() > size * 2 + PKT_PAYLOAD {
                    return Err(VsockError::Protocol(
                        "client sent ahead of the protocol".into(),
                    ));
                }
                while inbuf.len() >= size {
                    let msg: Vec<u8> = inbuf.drain(..size).collect();
                    let i = served as u32;
                    if msg != message(b'C', i, size) {
                        return Err(VsockError::Mismatch(format!(
                            "message {i} in the RX ring differs from what the client sent"
                        )));
                    }
                    served += 1;
                    let answer = message(b'S', i, size);
                    let mut off = 0;
                    while off < answer.len() {
                        let credit = c
                            .peer_buf_alloc
                            .wrapping_sub(c.tx_cnt.wrapping_sub(c.peer_fwd_cnt))
                            as usize;
                        if credit == 0 {
                            return Err(VsockError::Protocol("the client gave no credit".into()));
                        }
                        let n = (answer.len() - off).min(PKT_PAYLOAD).min(credit);
                        let h = Hdr {
                            ..d.reply(c, op::RW)
                        };
                        d.send(h, &answer[off..off + n], timeout)?;
                        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                        off += n;
                    }
                    answers += 1;
                }
            }
            (op::CREDIT_UPDATE, Some(c)) => {
                c.peer_buf_alloc = hdr.buf_alloc;
                c.peer_fwd_cnt = hdr.fwd_cnt;
            }
            (op::CREDIT_REQUEST, Some(c)) => {
                let h = d.reply(c, op::CREDIT_UPDATE);
                d.send(h, &[], timeout)?;
            }
            (op::SHUTDOWN, Some(c)) => {
                let h = d.reply(c, op::RST);
                d.send(h, &[], timeout)?;
                closed = true;
            }
            (op::RST, Some(_)) => closed = true,
            (other, Some(_)) => return Err(VsockError::Protocol(format!("unexpected op {other}"))),
        }
    }
    if served != u64::from(params.frames) {
        return Err(VsockError::Mismatch(format!(
            "connection closed after {served} of {} messages",
            params.frames
        )));
    }
    // Let the device take our last packets.
    let deadline = Instant::now() + timeout;
    while d.tx.in_flight() > 0 && Instant::now() < deadline {
        d.reclaim_tx()?;
        let _ = d.tx.wait_call(Duration::from_millis(20));
    }
    Ok((served, answers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let h = Hdr {
            src_cid: 2,
            dst_cid: 100,
            src_port: 1025,
            dst_port: SERVICE_PORT,
            len: 7,
            ty: TYPE_STREAM,
            op: op::RW,
            flags: 3,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 9,
        };
        let b = h.to_bytes();
        assert_eq!(b.len(), 44);
        assert_eq!(&b[8..16], &100u64.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(Hdr::parse(&b), Some(h));
        assert_eq!(Hdr::parse(&b[..43]), None);
    }

    #[test]
    fn messages_differ_by_side_and_index() {
        assert_eq!(message(b'C', 1, 100), message(b'C', 1, 100));
        assert_ne!(message(b'C', 1, 100), message(b'S', 1, 100));
        assert_ne!(message(b'C', 1, 100), message(b'C', 2, 100));
        assert_eq!(message(b'C', 0, 0).len(), 0);
    }
}
