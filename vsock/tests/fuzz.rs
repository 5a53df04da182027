//! Bounded fuzzing of the device: arbitrary descriptor chains (wild
//! addresses, lengths, flags, loops, indirect bits, bogus heads and avail
//! indices) and packet headers (biased towards plausible ones so the
//! connection state machine is reached), against a muxer with live host
//! sockets that read, write, close and send CONNECT lines at random.
//! Fixed iteration count and a deterministic PRNG: the same run every time.
//! Checked: no panic, connections and buffered bytes stay within `Limits`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use vmm_sys_util::epoll::EventSet;
use vsock::driver::{desc, GuestDriver, Hdr, MEM_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vsock::muxer::{listener_path, Muxer};
use vsock::proto::*;
use vsock::{Limits, VsockEpollListener};

/// Iterations (recorded in vsock/README.md).
const ITERATIONS: u32 = 100_000;
/// Iterations per guest driver (a fresh one after corrupting its rings).
const EPOCH: u32 = 250;
const CID: u64 = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

fn random_hdr(r: &mut Rng) -> Hdr {
    let plausible = r.chance(80);
    Hdr {
        src_cid: if plausible { CID } else { r.next() },
        dst_cid: if plausible { HOST_CID } else { r.below(8) },
        src_port: if plausible {
            r.below(6) as u32
        } else {
            r.next() as u32
        },
        dst_port: if plausible {
            1 + r.below(5) as u32
        } else if r.chance(50) {
            (1 << 30) + r.below(8) as u32
        } else {
            r.next() as u32
        },
        len: 0,
        ty: if plausible {
            TYPE_STREAM
        } else {
            r.below(4) as u16
        },
        op: if plausible {
            1 + r.below(7) as u16
        } else {
            r.next() as u16
        },
        flags: r.below(8) as u32,
        buf_alloc: if r.chance(70) {
            256 * 1024
        } else {
            r.next() as u32
        },
        fwd_cnt: r.next() as u32 % (1 << 20),
    }
}

fn wild_addr(r: &mut Rng) -> u64 {
    match r.below(4) {
        0 => r.next(),
        1 => MEM_SIZE - r.below(128),
        _ => r.below(MEM_SIZE),
    }
}

#[test]
fn fuzz_descriptor_chains_and_headers() {
    let limits = Limits {
        max_connections: 8,
        conn_buf_size: 64 * 1024,
        credit_update_threshold: 8 * 1024,
        max_pending_host: 4,
        max_pending_rst: 16,
        // Short, so unanswered host CONNECTs expire during the run.
        connect_timeout: std::time::Duration::from_millis(5),
    };
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut m = Muxer::new(&uds, CID, limits).unwrap();
    let listeners: Vec<UnixListener> = (1..=4)
        .map(|p| {
            let l = UnixListener::bind(listener_path(&uds, p)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut d = GuestDriver::new(CID);
    let mut buf = vec![0u8; 16 * 1024];
    let mut packets_seen = 0u64;
    for i in 0..ITERATIONS {
        if i % EPOCH == 0 {
            d = GuestDriver::new(CID);
        }
        match r.below(10) {
            // A well-formed chain with a random header and data.
            0..=3 => {
                let mut h = random_hdr(&mut r);
                let n = r.below(6000) as usize;
                let data: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
                h.len = if r.chance(85) {
                    n as u32
                } else {
                    r.next() as u32
                };
                d.send(h, &data);
            }
            // Raw TX descriptors: anything goes.
            4 => {
                for _ in 0..1 + r.below(4) {
                    let idx = r.below(d.tx.size as u64 + 4) as u16;
                    let flags = r.next() as u16 & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | 4);
                    let addr = wild_addr(&mut r);
                    let len = if r.chance(50) {
                        r.below(70_000) as u32
                    } else {
                        r.next() as u32
                    };
                    let next = r.below(d.tx.size as u64 + 2) as u16;
                    desc(&d.tx, &d.mem, idx, addr, len, flags, next);
                }
                let head = r.below(d.tx.size as u64 + 4) as u16;
                let _ = d.tx.push_avail(&d.mem, head);
                if r.chance(5) {
                    let idx = r.next() as u16;
                    let _ = d.tx.set_avail_idx(&d.mem, idx);
                }
            }
            // Raw RX descriptors.
            5 => {
                let idx = r.below(d.rx.size as u64) as u16;
                let flags = r.next() as u16 & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | 4);
                let addr = wild_addr(&mut r);
                let len = r.next() as u32 % 100_000;
                let next = r.below(d.rx.size as u64 + 2) as u16;
                desc(&d.rx, &d.mem, idx, addr, len, flags, next);
                let head = r.below(d.rx.size as u64 + 2) as u16;
                let _ = d.rx.push_avail(&d.mem, head);
            }
            // Host side: accept, write, read, close.
            6 => {
                for l in &listeners {
                    while let Ok((s, _)) = l.accept() {
                        s.set_nonblocking(true).unwrap();
                        hosts.push(s);
                    }
                }
                if hosts.len() > 16 {
                    hosts.remove(0);
                }
                if !hosts.is_empty() {
                    let k = r.below(hosts.len() as u64) as usize;
                    match r.below(4) {
                        0 => {
                            let n = r.below(buf.len() as u64) as usize;
                            let _ = hosts[k].write(&buf[..n]);
                        }
                        1 => {
                            let _ = hosts[k].read(&mut buf);
                        }
                        2 => {
                            hosts.remove(k);
                        }
                        _ => {
                            let _ = hosts[k].shutdown(std::net::Shutdown::Write);
                        }
                    }
                }
            }
            // Host CONNECT lines, good and bad.
            7 => {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    s.set_nonblocking(true).unwrap();
                    let line = match r.below(4) {
                        0 => format!("CONNECT {}\n", r.below(6)),
                        1 => format!("CONNECT {}", r.next()),
                        2 => "CONNECT\n".to_string(),
                        _ => (0..r.below(64)).map(|_| r.next() as u8 as char).collect(),
                    };
                    let _ = s.write(line.as_bytes());
                    hosts.push(s);
                }
            }
            // Drain the host streams.
            _ => {
                for h in &mut hosts {
                    while let Ok(n) = h.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
        }
        m.notify(EventSet::IN);
        d.pump(&mut m);
        packets_seen += d.recv().len() as u64;
        d.fill_rx();
        assert!(m.connection_count() <= limits.max_connections);
        assert!(
            m.buffered_bytes() <= limits.max_connections * limits.conn_buf_size as usize,
            "buffered {}",
            m.buffered_bytes()
        );
    }
    eprintln!(
        "fuzz: {ITERATIONS} iterations, {packets_seen} packets to the guest, {} connections at the end",
        m.connection_count()
    );
    assert!(packets_seen > 100, "the fuzzer reached the state machine");
}
