//! What the net module's tests share: a memory backend, the ring layout of
//! their queues, and the skip rule for tests that need a tap.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::backend::NetBackend;

/// A memory backend: frames to give the device, frames it sent.
pub(super) struct MemBackend {
    pub(super) evt: EventFd,
    pub(super) inbox: Arc<Mutex<VecDeque<Vec<u8>>>>,
    pub(super) sent: Arc<Mutex<Vec<Vec<u8>>>>,
    pub(super) max_sent: usize,
}

impl NetBackend for MemBackend {
    fn ready_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(f) = self.inbox.lock().unwrap().pop_front() else {
            return Ok(None);
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(n))
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut s = self.sent.lock().unwrap();
        // Bounded: the test only keeps the last few.
        if s.len() == self.max_sent {
            s.remove(0);
        }
        s.push(frame.to_vec());
        Ok(())
    }
}

pub(super) const QSZ: u16 = 16;
pub(super) const MEM: u64 = 1 << 20;
/// Queue q's rings at 0x1000 * (1 + 3q): desc, avail, used.
pub(super) fn ring(q: usize) -> u64 {
    0x1000 * (1 + 3 * q as u64)
}

/// The RX and TX queues at [`ring`]'s layout; TX is ready only when `tx_ready`.
pub(super) fn queues(tx_ready: bool) -> Vec<Queue> {
    (0..2)
        .map(|i| {
            let mut q = Queue::new(QSZ).unwrap();
            q.set_desc_table_address(Some(ring(i) as u32), Some(0));
            q.set_avail_ring_address(Some(ring(i) as u32 + 0x1000), Some(0));
            q.set_used_ring_address(Some(ring(i) as u32 + 0x2000), Some(0));
            q.set_ready(tx_ready || i == 0);
            q
        })
        .collect()
}

pub(super) fn mem_backend() -> Box<dyn NetBackend> {
    Box::new(MemBackend {
        evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        inbox: Arc::default(),
        sent: Arc::default(),
        max_sent: 8,
    })
}

/// Whether this test may create taps (root, /dev/net/tun); prints why not.
pub(super) fn root_and_tun_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let ok = unsafe { libc::geteuid() } == 0 && std::path::Path::new(super::tap::TUN_PATH).exists();
    if !ok {
        test_skip::skip(test, test_skip::ROOT_TUN, "needs root and /dev/net/tun");
    }
    ok
}
