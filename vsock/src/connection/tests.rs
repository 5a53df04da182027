//! State machine and flow control, driven through real descriptor chains in
//! guest memory (the synthetic driver) and real host Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use crate::driver::{GuestDriver, Hdr};
use crate::muxer::{listener_path, Muxer};
use crate::proto::*;
use crate::{Limits, VsockEpollListener};
use vmm_sys_util::epoll::EventSet;

const CID: u64 = 3;

struct Rig {
    _dir: tempfile::TempDir,
    uds: std::path::PathBuf,
    m: Muxer,
    d: GuestDriver,
}

impl Rig {
    fn new(limits: Limits) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let m = Muxer::new(&uds, CID, limits).unwrap();
        Rig {
            _dir: dir,
            uds,
            m,
            d: GuestDriver::new(CID),
        }
    }

    fn listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(listener_path(&self.uds, port)).unwrap()
    }

    /// Runs host events and both queues until quiet; returns what the guest got.
    fn step(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let mut all = Vec::new();
        let mut quiet = 0;
        while quiet < 2 {
            self.m.notify(EventSet::IN);
            self.d.pump(&mut self.m);
            let got = self.d.recv();
            self.d.fill_rx();
            if got.is_empty() {
                quiet += 1;
            } else {
                quiet = 0;
            }
            all.extend(got);
        }
        all
    }

    fn send(&mut self, h: Hdr, data: &[u8]) -> Vec<(Hdr, Vec<u8>)> {
        let mut h = h;
        h.len = data.len() as u32;
        assert!(self.d.send(h, data), "TX ring full");
        self.step()
    }

    /// Guest port `gp` connects to host port `hp` (a listener must exist).
    fn guest_connect(&mut self, l: &UnixListener, gp: u32, hp: u32) -> UnixStream {
        let got = self.send(self.d.hdr(gp, hp, OP_REQUEST), &[]);
        assert_eq!(ops(&got), vec![OP_RESPONSE], "{got:?}");
        let h = got[0].0;
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID));
        assert_eq!((h.src_port, h.dst_port), (hp, gp));
        assert_eq!(h.buf_alloc, Limits::default().conn_buf_size);
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

fn ops(pkts: &[(Hdr, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|(h, _)| h.op).collect()
}

fn data_of(pkts: &[(Hdr, Vec<u8>)]) -> Vec<u8> {
    pkts.iter()
        .filter(|(h, _)| h.op == OP_RW)
        .flat_map(|(h, d)| {
            assert_eq!(h.len as usize, d.len());
            d.clone()
        })
        .collect()
}

fn read_exact_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

#[test]
fn guest_connect_and_data_both_ways() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    let mut host = r.guest_connect(&l, 1000, 52);
    assert_eq!(r.m.connection_count(), 1);

    let got = r.send(r.d.hdr(1000, 52, OP_RW), b"hello host");
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(read_exact_n(&mut host, 10), b"hello host");
    assert_eq!(r.m.connection(52, 1000).unwrap().fwd_cnt(), 10);

    host.write_all(b"hello guest").unwrap();
    let got = r.step();
    assert_eq!(ops(&got), vec![OP_RW]);
    assert_eq!(data_of(&got), b"hello guest");
    assert_eq!(got[0].0.fwd_cnt, 10, "credit info rides on every packet");
}

#[test]
fn refused_and_unknown_get_rst() {
    let mut r = Rig::new(Limits::default());
    // No listener on the port.
    let got = r.send(r.d.hdr(1000, 7777, OP_REQUEST), &[]);
    assert_eq!(ops(&got), vec![OP_RST]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (7777, 1000));
    // Data on no connection.
    let got = r.send(r.d.hdr(1001, 7777, OP_RW), b"x");
    assert_eq!(ops(&got), vec![OP_RST]);
    // An RST on no connection is not answered.
    assert!(r.send(r.d.hdr(1001, 7777, OP_RST), &[]).is_empty());
    // Another destination CID, or a non-stream type.
    let mut h = r.d.hdr(1002, 52, OP_REQUEST);
    h.dst_cid = 9;
    assert_eq!(ops(&r.send(h, &[])), vec![OP_RST]);
    let mut h = r.d.hdr(1003, 52, OP_REQUEST);
    h.ty = 2;
    assert_eq!(ops(&r.send(h, &[])), vec![OP_RST]);
    // A spoofed source CID is dropped silently.
    let mut h = r.d.hdr(1004, 52, OP_REQUEST);
    h.src_cid = 77;
    assert!(r.send(h, &[]).is_empty());
    assert_eq!(r.m.connection_count(), 0);
}

#[test]
fn protocol_violations_reset_the_connection() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    let mut host = r.guest_connect(&l, 1000, 52);
    // A second REQUEST on a live connection.
    let got = r.send(r.d.hdr(1000, 52, OP_REQUEST), &[]);
    assert_eq!(ops(&got), vec![OP_RST]);
    assert_eq!(r.m.connection_count(), 0);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0, "host stream closed");
    // Unknown op.
    let _host = r.guest_connect(&l, 1001, 52);
    assert_eq!(ops(&r.send(r.d.hdr(1001, 52, 99), &[])), vec![OP_RST]);
}

#[test]
fn guest_rst_closes_host_stream() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    let mut host = r.guest_connect(&l, 1000, 52);
    assert!(r.send(r.d.hdr(1000, 52, OP_RST), &[]).is_empty());
    assert_eq!(r.m.connection_count(), 0);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn host_to_guest_credit_exhaustion_and_resume() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    // The guest offers only 8 KiB of receive buffer.
    let mut req = r.d.hdr(1000, 52, OP_REQUEST);
    req.buf_alloc = 8192;
    let got = r.send(req, &[]);
    assert_eq!(ops(&got), vec![OP_RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    let pattern: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
    host.write_all(&pattern).unwrap();

    let got = r.step();
    let first = data_of(&got);
    assert_eq!(first.len(), 8192, "stops at the guest's credit");
    assert_eq!(ops(&got).last(), Some(&OP_CREDIT_REQUEST));
    assert_eq!(
        ops(&got)
            .iter()
            .filter(|&&o| o == OP_CREDIT_REQUEST)
            .count(),
        1
    );
    // Nothing more without credit.
    assert!(r.step().is_empty());

    // The guest consumed 8 KiB and says so.
    let mut upd = r.d.hdr(1000, 52, OP_CREDIT_UPDATE);
    upd.buf_alloc = 8192;
    upd.fwd_cnt = 8192;
    let got = r.send(upd, &[]);
    let second = data_of(&got);
    assert_eq!(second.len(), 8192);
    upd.fwd_cnt = 16384;
    let got = r.send(upd, &[]);
    let third = data_of(&got);
    assert_eq!(third.len(), 20_000 - 16384);
    let all: Vec<u8> = [first, second, third].concat();
    assert_eq!(all, pattern, "in order, byte-exact");
}

#[test]
fn guest_to_host_credit_exhaustion_stalled_host() {
    let limits = Limits {
        conn_buf_size: 64 * 1024,
        credit_update_threshold: 16 * 1024,
        ..Limits::default()
    };
    let mut r = Rig::new(limits);
    let l = r.listen(52);
    let got = r.send(r.d.hdr(1000, 52, OP_REQUEST), &[]);
    assert_eq!(got[0].0.buf_alloc, 64 * 1024);
    let (host, _) = l.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The host does not read: fill the socket buffer, then our buffer.
    let chunk = vec![0xabu8; 4096];
    let mut sent = 0usize;
    let mut updates = 0;
    loop {
        let conn = r.m.connection(52, 1000).unwrap();
        let credit = 64 * 1024 - conn.buffered();
        if credit < chunk.len() {
            break;
        }
        let got = r.send(r.d.hdr(1000, 52, OP_RW), &chunk);
        updates += ops(&got).iter().filter(|&&o| o == OP_CREDIT_UPDATE).count();
        sent += chunk.len();
        assert!(sent < 16 * 1024 * 1024, "host socket never filled");
    }
    assert!(updates > 0, "the guest heard of forwarded bytes");
    let buffered = r.m.buffered_bytes();
    assert!(buffered <= 64 * 1024, "bounded: {buffered}");
    assert!(buffered > 60 * 1024, "{buffered}");
    // Sending beyond the advertised buffer is a credit violation: RST.
    let got = r.send(r.d.hdr(1000, 52, OP_RW), &chunk);
    assert_eq!(ops(&got), vec![OP_RST]);
    assert_eq!(r.m.connection_count(), 0);
    assert_eq!(r.m.buffered_bytes(), 0);
    drop(host);
}

#[test]
fn stalled_host_resumes_and_credit_updates_flow() {
    let limits = Limits {
        conn_buf_size: 64 * 1024,
        credit_update_threshold: 16 * 1024,
        ..Limits::default()
    };
    let mut r = Rig::new(limits);
    let l = r.listen(52);
    r.send(r.d.hdr(1000, 52, OP_REQUEST), &[]);
    let (mut host, _) = l.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut expected = Vec::new();
    let mut received = Vec::new();
    let mut fwd_seen = 0u32;
    // Interleave guest writes with host reads of varying sizes: the host sees
    // the bytes in order whatever the timing.
    for i in 0..400u32 {
        let conn = r.m.connection(52, 1000).unwrap();
        let in_flight = expected.len() as u32 - fwd_seen;
        let credit = 64 * 1024 - in_flight;
        let n = ((i * 997) % 6000 + 1).min(credit) as usize;
        assert!(conn.buffered() <= 64 * 1024);
        if n > 0 {
            let data: Vec<u8> = (0..n).map(|k| (expected.len() + k) as u8 ^ 0x5a).collect();
            expected.extend_from_slice(&data);
            let got = r.send(r.d.hdr(1000, 52, OP_RW), &data);
            for (h, _) in &got {
                fwd_seen = fwd_seen.max(h.fwd_cnt);
            }
        }
        if i % 3 == 0 {
            let want = ((i * 131) % 50_000) as usize;
            let mut buf = vec![0u8; want.min(expected.len() - received.len())];
            if !buf.is_empty() {
                host.read_exact(&mut buf).unwrap();
                received.extend_from_slice(&buf);
            }
            for (h, _) in r.step() {
                fwd_seen = fwd_seen.max(h.fwd_cnt);
            }
        }
    }
    // The guest says it will send no more; the host drains to EOF.
    let mut sh = r.d.hdr(1000, 52, OP_SHUTDOWN);
    sh.flags = SHUTDOWN_SEND;
    let mut rest = Vec::new();
    let reader = std::thread::spawn(move || {
        host.read_to_end(&mut rest).unwrap();
        (host, rest)
    });
    r.send(sh, &[]);
    for _ in 0..1000 {
        r.step();
        if reader.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (_host, rest) = reader.join().unwrap();
    received.extend_from_slice(&rest);
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "byte-exact, in order");
}

#[test]
fn half_close_both_ways_then_rst() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    let mut host = r.guest_connect(&l, 1000, 52);
    // Guest: no more sending. The host reads EOF but can still write.
    let mut sh = r.d.hdr(1000, 52, OP_SHUTDOWN);
    sh.flags = SHUTDOWN_SEND;
    r.send(r.d.hdr(1000, 52, OP_RW), b"last words");
    assert!(r.send(sh, &[]).is_empty());
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
    host.write_all(b"still talking").unwrap();
    let pk = r.step();
    assert_eq!(data_of(&pk), b"still talking");
    // Data after the guest's SHUTDOWN SEND is a violation.
    // (Not sent here: the host closes its side instead.)
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let pk = r.step();
    assert_eq!(ops(&pk), vec![OP_SHUTDOWN, OP_RST], "{pk:?}");
    assert_eq!(pk[0].0.flags, SHUTDOWN_SEND);
    assert_eq!(r.m.connection_count(), 0);
}

#[test]
fn guest_full_shutdown_gets_rst_after_flush() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    let mut host = r.guest_connect(&l, 1000, 52);
    r.send(r.d.hdr(1000, 52, OP_RW), b"abc");
    let mut sh = r.d.hdr(1000, 52, OP_SHUTDOWN);
    sh.flags = SHUTDOWN_BOTH;
    let got = r.send(sh, &[]);
    assert_eq!(ops(&got), vec![OP_RST]);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"abc");
    assert_eq!(r.m.connection_count(), 0);
}

#[test]
fn guest_shutdown_rcv_stops_host_reads() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    let mut host = r.guest_connect(&l, 1000, 52);
    let mut sh = r.d.hdr(1000, 52, OP_SHUTDOWN);
    sh.flags = SHUTDOWN_RCV;
    assert!(r.send(sh, &[]).is_empty());
    host.write_all(b"nobody listens").unwrap();
    assert!(r.step().is_empty());
    // Guest → host still works.
    r.send(r.d.hdr(1000, 52, OP_RW), b"ok");
    assert_eq!(read_exact_n(&mut host, 2), b"ok");
}

#[test]
fn host_initiated_connect_ok_and_data() {
    let mut r = Rig::new(Limits::default());
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Data sent right after the line stays for the guest.
    host.write_all(b"CONNECT 5000\nearly").unwrap();
    let got = r.step();
    assert_eq!(ops(&got), vec![OP_REQUEST]);
    let req = got[0].0;
    assert_eq!(req.dst_port, 5000);
    assert!(req.src_port >= 1 << 30);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    let mut resp = r.d.hdr(5000, req.src_port, OP_RESPONSE);
    resp.buf_alloc = 65536;
    let got = r.send(resp, &[]);
    assert_eq!(data_of(&got), b"early");
    let line = format!("OK {}\n", req.src_port);
    assert_eq!(read_exact_n(&mut host, line.len()), line.as_bytes());
    r.send(r.d.hdr(5000, req.src_port, OP_RW), b"from guest");
    assert_eq!(read_exact_n(&mut host, 10), b"from guest");
}

#[test]
fn host_connect_refused_by_guest_or_malformed() {
    let mut r = Rig::new(Limits::default());
    // The guest refuses: the host stream ends without OK.
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 6000\n").unwrap();
    let got = r.step();
    let req = got[0].0;
    r.send(r.d.hdr(6000, req.src_port, OP_RST), &[]);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert!(all.is_empty());
    assert_eq!(r.m.connection_count(), 0);
    // Malformed lines and an over-long line are closed without a REQUEST.
    for line in [
        &b"CONNECT x\n"[..],
        b"HELLO\n",
        b"CONNECT 99999999999\n",
        &[b'A'; 100][..],
    ] {
        let mut h = UnixStream::connect(&r.uds).unwrap();
        h.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        h.write_all(line).unwrap();
        assert!(r.step().is_empty(), "{line:?}");
        let mut b = Vec::new();
        // Closed with unread bytes left: EOF or a reset, never a reply.
        match h.read_to_end(&mut b) {
            Ok(_) => assert!(b.is_empty()),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    // A host stream that closes mid-line.
    let mut h = UnixStream::connect(&r.uds).unwrap();
    h.write_all(b"CONN").unwrap();
    drop(h);
    assert!(r.step().is_empty());
}

#[test]
fn host_connect_the_guest_never_answers_times_out() {
    let limits = Limits {
        connect_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut r = Rig::new(limits);
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 7000\n").unwrap();
    let got = r.step();
    assert_eq!(ops(&got), vec![OP_REQUEST]);
    let req = got[0].0;
    // Within the timeout nothing happens.
    assert!(r.step().is_empty());
    assert_eq!(r.m.connection_count(), 1);
    std::thread::sleep(Duration::from_millis(80));
    // The muxer's fd (its epoll) is readable once the timer fired.
    let mut pfd = libc::pollfd {
        fd: r.m.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(
        unsafe { libc::poll(&mut pfd, 1, 1000) },
        1,
        "timer not seen"
    );
    let got = r.step();
    assert_eq!(ops(&got), vec![OP_RST], "{got:?}");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (req.src_port, 7000));
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert!(all.is_empty(), "no OK line: {all:?}");
    assert_eq!(r.m.connection_count(), 0);
    // A late RESPONSE finds no connection: it is answered with an RST.
    let got = r.send(r.d.hdr(7000, req.src_port, OP_RESPONSE), &[]);
    assert_eq!(ops(&got), vec![OP_RST]);
    // An answered CONNECT outlives its deadline.
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 7001\n").unwrap();
    let req = r.step()[0].0;
    let mut resp = r.d.hdr(7001, req.src_port, OP_RESPONSE);
    resp.buf_alloc = 65536;
    r.send(resp, &[]);
    std::thread::sleep(Duration::from_millis(80));
    assert!(r.step().is_empty());
    assert_eq!(r.m.connection_count(), 1);
    r.send(r.d.hdr(7001, req.src_port, OP_RW), b"alive");
    let line = format!("OK {}\n", req.src_port);
    assert_eq!(
        read_exact_n(&mut host, line.len() + 5),
        [line.as_bytes(), b"alive"].concat()
    );
}

#[test]
fn connection_limit_refuses_with_rst() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let mut r = Rig::new(limits);
    let l = r.listen(52);
    let _a = r.guest_connect(&l, 1, 52);
    let _b = r.guest_connect(&l, 2, 52);
    let got = r.send(r.d.hdr(3, 52, OP_REQUEST), &[]);
    assert_eq!(ops(&got), vec![OP_RST]);
    assert_eq!(r.m.connection_count(), 2);
    // Host CONNECTs over the limit are closed.
    let mut h = UnixStream::connect(&r.uds).unwrap();
    h.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    h.write_all(b"CONNECT 9\n").unwrap();
    assert!(r.step().is_empty());
    let mut b = Vec::new();
    h.read_to_end(&mut b).unwrap();
    assert!(b.is_empty());
}

#[test]
fn rst_backpressure_pauses_tx_without_growth() {
    let limits = Limits {
        max_pending_rst: 4,
        ..Limits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut m = Muxer::new(&dir.path().join("v.sock"), CID, limits).unwrap();
    let mut d = GuestDriver::new_without_rx(CID);
    for p in 0..20 {
        assert!(d.send(d.hdr(p, 9999, OP_REQUEST), &[]));
    }
    d.pump(&mut m);
    // Four RSTs wait for RX buffers; the rest of TX waits in the ring.
    assert_eq!(d.tx.take_used(&d.mem).len(), 4);
    d.fill_rx();
    let mut rsts = 0;
    for _ in 0..10 {
        d.pump(&mut m);
        rsts += d.recv().len();
        d.fill_rx();
    }
    assert_eq!(rsts, 20, "every refused REQUEST got its RST in the end");
}

#[test]
fn many_connections_interleaved_stay_separate() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    let mut hosts: Vec<UnixStream> = (0..8).map(|p| r.guest_connect(&l, 100 + p, 52)).collect();
    for round in 0..20u32 {
        for p in 0..8u32 {
            let msg = format!("c{p}r{round};");
            r.send(r.d.hdr(100 + p, 52, OP_RW), msg.as_bytes());
        }
    }
    for (p, h) in hosts.iter_mut().enumerate() {
        let want: String = (0..20).map(|round| format!("c{p}r{round};")).collect();
        assert_eq!(read_exact_n(h, want.len()), want.as_bytes());
    }
}

#[test]
fn tx_data_over_many_descriptors() {
    let mut r = Rig::new(Limits::default());
    let l = r.listen(52);
    let mut host = r.guest_connect(&l, 1000, 52);
    for (n, piece) in [(65536usize, 4096usize), (10_000, 7), (100, 1), (5000, 44)] {
        let data: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
        let mut h = r.d.hdr(1000, 52, OP_RW);
        h.len = n as u32;
        assert!(r.d.send_scattered(h, &data, piece));
        r.step();
        assert_eq!(
            read_exact_n(&mut host, n),
            data,
            "{n} bytes in pieces of {piece}"
        );
    }
    // A header that claims more data than the chain holds is dropped.
    let mut h = r.d.hdr(1000, 52, OP_RW);
    h.len = 9000;
    assert!(r.d.send_scattered(h, &[1u8; 100], 10));
    assert!(r.step().is_empty());
    assert_eq!(r.m.connection(52, 1000).unwrap().buffered(), 0);
}
