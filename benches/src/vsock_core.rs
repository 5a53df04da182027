//! Throughput of the core with the synthetic driver (no VM): guest → host
//! data packets through real descriptor chains, the muxer and a Unix socket
//! drained by a host thread, through the `vsock` crate's public API. `cargo
//! xtask bench vsock` calls [`core()`].

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;
use vsock::driver::GuestDriver;
use vsock::muxer::{listener_path, Muxer};
use vsock::proto::*;
use vsock::{Limits, VsockEpollListener};

use crate::Error;

/// What [`core()`] measured.
#[derive(Clone, Copy, Debug)]
pub struct CoreBench {
    /// RW packets sent guest → host.
    pub packets: u64,
    /// Payload bytes of each.
    pub payload: usize,
    /// First packet to the host having taken the last byte.
    pub elapsed: Duration,
}

impl CoreBench {
    /// Packets per second.
    pub fn packets_per_s(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Payload MB (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        (self.packets * self.payload as u64) as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for CoreBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets of {} B in {:.3} s: {:.0} packets/s, {:.1} MB/s",
            self.packets,
            self.payload,
            self.elapsed.as_secs_f64(),
            self.packets_per_s(),
            self.mb_per_s()
        )
    }
}

/// Sends `packets` RW packets of `payload` bytes (≤ 64 KiB) guest → host,
/// within the credit the device grants, and times it.
pub fn core(packets: u64, payload: usize) -> Result<CoreBench, Error> {
    let payload = payload.clamp(1, MAX_PKT_BUF_SIZE as usize);
    let dir = std::env::temp_dir().join(format!("vsock-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let uds = dir.join("v.sock");
    let limits = Limits::default();
    let mut m = Muxer::new(&uds, 3, limits)?;
    let lpath = listener_path(&uds, 9000);
    let _ = std::fs::remove_file(&lpath);
    let listener = UnixListener::bind(&lpath).map_err(|cause| vsock::Error::Bind {
        path: lpath.clone(),
        cause,
    })?;
    let mut d = GuestDriver::new(3);
    d.send(d.hdr(1, 9000, OP_REQUEST), &[]);
    d.pump(&mut m);
    d.recv();
    d.fill_rx();
    let (mut host, _) = listener.accept().map_err(Error::io(&lpath))?;
    let total = packets * payload as u64;
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < total {
            match host.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        got
    });
    let data = vec![0x5au8; payload];
    let mut sent_bytes = 0u64;
    let mut fwd_seen = 0u64;
    let mut sent = 0u64;
    let start = Instant::now();
    while sent < packets {
        let credit = limits.conn_buf_size as u64 - (sent_bytes - fwd_seen);
        if credit >= payload as u64 {
            let mut h = d.hdr(1, 9000, OP_RW);
            h.len = payload as u32;
            if d.send(h, &data) {
                sent += 1;
                sent_bytes += payload as u64;
                continue;
            }
        }
        m.notify(EventSet::IN);
        d.pump(&mut m);
        for (h, _) in d.recv() {
            // fwd_cnt wraps at 4 GiB: extend it against what was sent.
            let lo = (sent_bytes as u32).wrapping_sub(h.fwd_cnt) as u64;
            fwd_seen = fwd_seen.max(sent_bytes - lo.min(sent_bytes));
        }
        d.fill_rx();
    }
    // Flush what the host has not taken yet.
    while m.buffered_bytes() > 0 || d.tx_pending() {
        m.notify(EventSet::IN);
        d.pump(&mut m);
        d.recv();
        d.fill_rx();
    }
    let mut sh = d.hdr(1, 9000, OP_SHUTDOWN);
    sh.flags = SHUTDOWN_BOTH;
    d.send(sh, &[]);
    d.pump(&mut m);
    let got = drain.join().unwrap_or(0);
    let elapsed = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    if got != total {
        return Err(Error::Failed(format!("host got {got} of {total} bytes")));
    }
    Ok(CoreBench {
        packets,
        payload,
        elapsed,
    })
}
