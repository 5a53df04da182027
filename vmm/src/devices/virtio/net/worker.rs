//! The userspace data path of an active [`super::NetDevice`]: one thread that
//! moves frames between the two virtqueues and a [`NetBackend`] (TX chains to
//! the backend, backend frames into RX buffers, merged or not), bounded per
//! wake-up, raising the used-buffer interrupt where the driver wants it.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::super::worker::{spawn, QueueWorker, WorkerThread};
use super::super::{ActivateContext, ActivateError, Interrupt};
use super::backend::{NetBackend, SharedBackend};
use super::spec::{
    check_tx_header, rx_header, F_CSUM, F_HOST_TSO4, F_HOST_TSO6, F_MRG_RXBUF, MAX_FRAME_LEN,
    MIN_FRAME_LEN, NUM_BUFFERS_OFFSET, RXQ, TXQ, VNET_HDR_LEN,
};
use super::stats::Shared;
use crate::log::debug;

/// Chains served per queue per wake-up before the worker yields to epoll (it
/// re-arms its own eventfd when work is left).
const BUDGET: usize = 512;

/// Starts the worker of an activation with a userspace `backend` (the queues
/// were checked); it counts into `shared`.
pub(super) fn start(
    ctx: ActivateContext,
    backend: SharedBackend,
    shared: Arc<Shared>,
) -> Result<WorkerThread, ActivateError> {
    let ActivateContext {
        mem,
        features,
        queues,
        queue_evts,
        interrupt,
        ..
    } = ctx;
    let backend_fd = backend
        .lock()
        .map_err(|_| ActivateError::Worker("backend lock poisoned".into()))?
        .ready_fd();
    let worker = Worker {
        mem,
        queues,
        queue_evts,
        interrupt,
        shared,
        backend,
        frame: Frames::new(),
        mrg_rxbuf: features & F_MRG_RXBUF != 0,
        features,
    };
    // The backend fd is edge-triggered: process() reads it until it is empty.
    spawn(
        "virtio-net",
        "net",
        worker,
        &[(backend_fd, EventSet::IN | EventSet::EDGE_TRIGGERED)],
    )
}

/// The worker's two frame buffers (allocated once per activation).
struct Frames {
    rx: Vec<u8>,
    /// Length of the frame waiting in `rx` for a guest buffer.
    rx_len: Option<usize>,
    tx: Vec<u8>,
}

impl Frames {
    fn new() -> Self {
        Frames {
            rx: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            rx_len: None,
            tx: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
        }
    }
}

/// The device side of an active device, on its own thread.
struct Worker {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    shared: Arc<Shared>,
    backend: SharedBackend,
    frame: Frames,
    /// VIRTIO_NET_F_MRG_RXBUF was negotiated.
    mrg_rxbuf: bool,
    /// All negotiated features (offloads decide what the headers may carry).
    features: u64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::SeqCst);
}

impl QueueWorker for Worker {
    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Serves TX, then RX, and raises the interrupt where the driver wants it.
    fn process(&mut self) {
        let shared_backend = self.backend.clone();
        let Ok(mut backend) = shared_backend.lock() else {
            debug(format_args!("net: backend lock poisoned"));
            return;
        };
        let tx = self.process_tx(backend.as_mut());
        let rx = self.process_rx(backend.as_mut());
        drop(backend);
        let mut notify = false;
        for (q, u) in [(RXQ, rx), (TXQ, tx)] {
            if u {
                notify |= self.queues[q].needs_notification(&self.mem).unwrap_or(true);
            }
        }
        if notify {
            self.interrupt.signal_used_queue();
        }
    }
}

impl Worker {
    /// Sends every TX chain (at most [`BUDGET`]); returns whether any went to
    /// the used ring.
    fn process_tx(&mut self, backend: &mut dyn NetBackend) -> bool {
        let mut used = false;
        let mut budget = BUDGET;
        loop {
            if budget == 0 {
                // Work may be left: come back through epoll. Without progress
                // (a broken ring) wait for the driver's next notification
                // instead of spinning.
                if used {
                    let _ = self.queue_evts[TXQ].write(1);
                }
                break;
            }
            budget -= 1;
            if let Err(e) = self.queues[TXQ].disable_notification(&self.mem) {
                debug(format_args!("net: TX disable_notification: {e}"));
            }
            let Some(chain) = self.queues[TXQ].pop_descriptor_chain(&self.mem) else {
                match self.queues[TXQ].enable_notification(&self.mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            };
            let head = chain.head_index();
            let buf = &mut self.frame.tx;
            let read = Reader::new(&self.mem, chain)
                .map_err(|e| e.to_string())
                .and_then(|mut r| {
                    let n = r.available_bytes();
                    if !(VNET_HDR_LEN + MIN_FRAME_LEN..=buf.len()).contains(&n) {
                        return Err(format!("{n} bytes"));
                    }
                    r.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
                    Ok(n)
                });
            let read = read.and_then(|n| {
                if self.features & (F_CSUM | F_HOST_TSO4 | F_HOST_TSO6) == 0 {
                    // No TX offloads: the host gets a zero header.
                    buf[..VNET_HDR_LEN].fill(0);
                    return Ok(n);
                }
                let mut hdr = [0u8; VNET_HDR_LEN];
                hdr.copy_from_slice(&buf[..VNET_HDR_LEN]);
                check_tx_header(&hdr, self.features)?;
                // num_buffers is an RX field: zero on the way out.
                buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].fill(0);
                Ok(n)
            });
            match read {
                Ok(n) => match backend.send(&buf[..n]) {
                    Ok(()) => {
                        add(&self.shared.tx_frames, 1);
                        add(&self.shared.tx_bytes, (n - VNET_HDR_LEN) as u64);
                    }
                    Err(e) => {
                        add(&self.shared.backend_errors, 1);
                        debug(format_args!("net: backend send: {e}"));
                    }
                },
                Err(e) => {
                    add(&self.shared.bad_chains, 1);
                    debug(format_args!("net: TX chain {head} dropped: {e}"));
                }
            }
            if let Err(e) = self.queues[TXQ].add_used(&self.mem, head, 0) {
                debug(format_args!("net: TX add_used({head}): {e}"));
            }
            used = true;
        }
        used
    }

    /// Moves backend frames into RX buffers while both exist (at most
    /// [`BUDGET`] steps); returns whether any buffer went to the used ring.
    fn process_rx(&mut self, backend: &mut dyn NetBackend) -> bool {
        let mut used = false;
        let mut read_any = false;
        let mut budget = BUDGET;
        loop {
            if budget == 0 {
                if used || read_any {
                    let _ = self.queue_evts[RXQ].write(1);
                }
                break;
            }
            budget -= 1;
            let q = &self.queues[RXQ];
            let has_buffer = q
                .avail_idx(&self.mem, Ordering::Acquire)
                .map(|i| i.0 != q.next_avail())
                .unwrap_or(false);
            if !has_buffer {
                // Ask for a notification, then look once more.
                match self.queues[RXQ].enable_notification(&self.mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            }
            let len = match self.frame.rx_len {
                Some(n) => n,
                None => match backend.recv(&mut self.frame.rx) {
                    Ok(None) => break,
                    Ok(Some(n)) if n < VNET_HDR_LEN + MIN_FRAME_LEN => {
                        read_any = true;
                        add(&self.shared.rx_dropped, 1);
                        continue;
                    }
                    Ok(Some(n)) => {
                        let n = n.min(self.frame.rx.len());
                        self.frame.rx_len = Some(n);
                        n
                    }
                    Err(e) => {
                        add(&self.shared.backend_errors, 1);
                        debug(format_args!("net: backend recv: {e}"));
                        break;
                    }
                },
            };
            if self.mrg_rxbuf {
                match self.rx_merged(len) {
                    Merged::Delivered => used = true,
                    Merged::Dropped => {
                        self.frame.rx_len = None;
                        used = true;
                    }
                    Merged::Rewound => {
                        // Too few buffers for this frame yet: wait for more.
                        match self.queues[RXQ].enable_notification(&self.mem) {
                            Ok(true) => continue,
                            _ => break,
                        }
                    }
                }
                continue;
            }
            let Some(chain) = self.queues[RXQ].pop_descriptor_chain(&self.mem) else {
                // avail idx moved on but no chain came: a broken ring. Keep
                // the frame; the budget ends the loop.
                continue;
            };
            let head = chain.head_index();
            let frame = &mut self.frame.rx[..len];
            rx_header(frame, self.features, 1);
            let written = match Writer::new(&self.mem, chain) {
                Err(e) => {
                    // Keep the frame for the next buffer.
                    add(&self.shared.bad_chains, 1);
                    debug(format_args!("net: RX chain {head} unwritable: {e}"));
                    0
                }
                Ok(w) if w.available_bytes() < len => {
                    self.frame.rx_len = None;
                    add(&self.shared.rx_dropped, 1);
                    debug(format_args!(
                        "net: RX chain {head} holds {} bytes, frame needs {len}: dropped",
                        w.available_bytes()
                    ));
                    0
                }
                Ok(mut w) => match w.write_all(frame) {
                    Ok(()) => {
                        self.frame.rx_len = None;
                        add(&self.shared.rx_frames, 1);
                        add(&self.shared.rx_bytes, (len - VNET_HDR_LEN) as u64);
                        len as u32
                    }
                    Err(e) => {
                        add(&self.shared.bad_chains, 1);
                        debug(format_args!("net: RX chain {head} write: {e}"));
                        0
                    }
                },
            };
            if let Err(e) = self.queues[RXQ].add_used(&self.mem, head, written) {
                debug(format_args!("net: RX add_used({head}): {e}"));
            }
            used = true;
        }
        used
    }

    /// VIRTIO_NET_F_MRG_RXBUF: places the pending frame (`len` bytes with its
    /// header) into as many RX chains as it takes, `num_buffers` = their
    /// count, their used entries consecutive. Chains that cannot take a
    /// header are returned with length 0 ahead of them.
    fn rx_merged(&mut self, len: usize) -> Merged {
        let mem = &self.mem;
        let q = &mut self.queues[RXQ];
        let size = usize::from(q.size());
        let start = q.next_avail();
        let mut good: Vec<(u16, Writer<'_>)> = Vec::new();
        let mut bad: Vec<u16> = Vec::new();
        let mut cap = 0usize;
        while cap < len && good.len() + bad.len() < size {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match Writer::new(mem, chain) {
                Ok(w) if w.available_bytes() >= VNET_HDR_LEN => {
                    cap += w.available_bytes();
                    good.push((head, w));
                }
                Ok(_) | Err(_) => bad.push(head),
            }
        }
        let popped = good.len() + bad.len();
        if cap < len && bad.is_empty() && popped < size {
            // The guest may still post more: give the chains back.
            q.set_next_avail(start);
            return Merged::Rewound;
        }
        add(&self.shared.bad_chains, bad.len() as u64);
        for head in bad {
            if let Err(e) = q.add_used(mem, head, 0) {
                debug(format_args!("net: RX add_used({head}): {e}"));
            }
        }
        let delivered = cap >= len;
        let frame = &mut self.frame.rx[..len];
        rx_header(
            frame,
            self.features,
            u16::try_from(good.len()).unwrap_or(u16::MAX),
        );
        let mut off = 0;
        for (head, mut w) in good {
            let mut put = 0;
            if delivered {
                let take = w.available_bytes().min(len - off);
                match w.write_all(&frame[off..off + take]) {
                    Ok(()) => put = take,
                    Err(e) => {
                        add(&self.shared.bad_chains, 1);
                        debug(format_args!("net: RX chain {head} write: {e}"));
                        put = w.bytes_written();
                    }
                }
                off += take;
            }
            if let Err(e) = q.add_used(mem, head, put as u32) {
                debug(format_args!("net: RX add_used({head}): {e}"));
            }
        }
        if delivered {
            add(&self.shared.rx_frames, 1);
            add(&self.shared.rx_bytes, (len - VNET_HDR_LEN) as u64);
            self.frame.rx_len = None;
            Merged::Delivered
        } else {
            // Bad chains among the buffers, or a whole ring too small.
            add(&self.shared.rx_dropped, 1);
            Merged::Dropped
        }
    }
}

/// What [`Worker::rx_merged`] did with the pending frame.
enum Merged {
    /// In the guest's buffers.
    Delivered,
    /// Dropped; the chains it took went back with length 0.
    Dropped,
    /// Kept: too few buffers yet, none consumed.
    Rewound,
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use frontends::netif::ifreq;
    use vm_memory::{Bytes, GuestAddress};

    use super::super::super::features;
    use super::super::spec::{tun_offloads, F_GUEST_CSUM};
    use super::super::stats::{NetHandle, NetStats};
    use super::super::testutil::{queues, ring, root_and_tun_or_skip, MemBackend, MEM, QSZ};
    use super::*;

    struct Rig {
        mem: GuestMemoryMmap,
        worker: Worker,
        inbox: Arc<Mutex<VecDeque<Vec<u8>>>>,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        avail: [u16; 2],
    }

    fn rig() -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let queues = queues(true);
        let inbox = Arc::new(Mutex::new(VecDeque::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let backend: Box<dyn NetBackend> = Box::new(MemBackend {
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            inbox: inbox.clone(),
            sent: sent.clone(),
            max_sent: 8,
        });
        let worker = Worker {
            mem: mem.clone(),
            queues,
            queue_evts: (0..2)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: Arc::new(Interrupt::new().unwrap()),
            shared: Arc::default(),
            backend: Arc::new(Mutex::new(backend)),
            frame: Frames::new(),
            mrg_rxbuf: false,
            features: 0,
        };
        Rig {
            mem,
            worker,
            inbox,
            sent,
            avail: [0; 2],
        }
    }

    impl Rig {
        /// Writes descriptor `i` of queue `q`.
        fn desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let a = GuestAddress(ring(q) + 16 * u64::from(i % QSZ));
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&d, a).unwrap();
        }
        /// Makes head `h` available on queue `q`.
        fn publish(&mut self, q: usize, h: u16) {
            let avail = ring(q) + 0x1000;
            let slot = self.avail[q] % QSZ;
            self.mem
                .write_obj(h, GuestAddress(avail + 4 + 2 * u64::from(slot)))
                .unwrap();
            self.avail[q] = self.avail[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail[q], GuestAddress(avail + 2))
                .unwrap();
        }
        fn used_idx(&self, q: usize) -> u16 {
            self.mem
                .read_obj(GuestAddress(ring(q) + 0x2000 + 2))
                .unwrap()
        }
        fn used_elem(&self, q: usize, i: u16) -> (u32, u32) {
            let a = ring(q) + 0x2000 + 4 + 8 * u64::from(i % QSZ);
            (
                self.mem.read_obj(GuestAddress(a)).unwrap(),
                self.mem.read_obj(GuestAddress(a + 4)).unwrap(),
            )
        }
        fn stats(&self) -> NetStats {
            NetHandle(self.worker.shared.clone()).stats()
        }
    }

    const DATA: u64 = 0x10_0000 / 2;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    /// A TX frame split over two descriptors reaches the backend with a zero
    /// header; an injected frame lands in an RX buffer after a header with
    /// num_buffers = 1; an RX buffer too small drops the frame.
    #[test]
    fn tx_and_rx_round_trip() {
        let mut r = rig();
        let mut tx = vec![0xeeu8; VNET_HDR_LEN];
        tx.extend((0..100u8).map(|b| b.wrapping_mul(3)));
        r.mem.write_slice(&tx, GuestAddress(DATA)).unwrap();
        r.desc(TXQ, 0, DATA, 20, F_NEXT, 1);
        r.desc(TXQ, 1, DATA + 20, tx.len() as u32 - 20, 0, 0);
        r.publish(TXQ, 0);
        // RX: a 50-byte buffer (too small), then a 2048-byte one.
        r.desc(RXQ, 0, DATA + 0x1000, 50, F_WRITE, 0);
        r.desc(RXQ, 1, DATA + 0x2000, 2048, F_WRITE, 0);
        r.publish(RXQ, 0);
        r.publish(RXQ, 1);
        let mut rx = vec![0x77u8; VNET_HDR_LEN];
        rx.extend((0..200u8).map(|b| b ^ 0x5a));
        r.inbox.lock().unwrap().push_back(rx.clone());
        r.inbox.lock().unwrap().push_back(rx.clone());
        r.worker.process();
        let sent = r.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(&sent[0][..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&sent[0][VNET_HDR_LEN..], &tx[VNET_HDR_LEN..]);
        assert_eq!(r.used_idx(TXQ), 1);
        assert_eq!(r.used_idx(RXQ), 2);
        assert_eq!(r.used_elem(RXQ, 0), (0, 0));
        assert_eq!(r.used_elem(RXQ, 1), (1, rx.len() as u32));
        let mut got = vec![0u8; rx.len()];
        r.mem
            .read_slice(&mut got, GuestAddress(DATA + 0x2000))
            .unwrap();
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[NUM_BUFFERS_OFFSET] = 1;
        assert_eq!(&got[..VNET_HDR_LEN], &hdr);
        assert_eq!(&got[VNET_HDR_LEN..], &rx[VNET_HDR_LEN..]);
        let s = r.stats();
        assert_eq!(
            (
                s.tx_frames,
                s.tx_bytes,
                s.rx_frames,
                s.rx_bytes,
                s.rx_dropped
            ),
            (1, 100, 1, 200, 1)
        );
        assert_eq!(s.bad_chains, 0);
        // No RX buffers left: a frame waits in the backend, not in the device.
        r.inbox.lock().unwrap().push_back(rx.clone());
        r.worker.process();
        assert_eq!(r.inbox.lock().unwrap().len(), 1);
        assert_eq!(r.worker.frame.rx_len, None);
    }

    /// With offloads negotiated the guest's checksum/GSO header reaches the
    /// backend (num_buffers zeroed) and the backend's reaches the guest; a
    /// header asking for an offload that was not negotiated is a bad chain.
    #[test]
    fn offload_headers_pass_only_what_was_negotiated() {
        let mut r = rig();
        r.worker.features = features::VERSION_1 | F_CSUM | F_HOST_TSO4 | F_GUEST_CSUM;
        // flags NEEDS_CSUM, gso TCPV4, hdr_len 54, gso_size 1448, csum 34/16, num_buffers 9.
        let good = [1u8, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 9, 0];
        let tcp6 = [1u8, 4, 54, 0, 0xa8, 0x05, 54, 0, 16, 0, 0, 0];
        let bad_flags = [2u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for (i, h) in [good, tcp6, bad_flags].iter().enumerate() {
            let mut f = h.to_vec();
            f.extend([0x42u8; 60]);
            let at = DATA + 0x100 * i as u64;
            r.mem.write_slice(&f, GuestAddress(at)).unwrap();
            r.desc(TXQ, i as u16, at, f.len() as u32, 0, 0);
            r.publish(TXQ, i as u16);
        }
        let mut rx = vec![1u8, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0];
        rx.extend([0x17u8; 100]);
        r.inbox.lock().unwrap().push_back(rx.clone());
        r.desc(RXQ, 0, DATA + 0x1000, 2048, F_WRITE, 0);
        r.publish(RXQ, 0);
        r.worker.process();
        let sent = r.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "only the negotiated offload goes out");
        let mut want = good;
        want[NUM_BUFFERS_OFFSET] = 0;
        assert_eq!(&sent[0][..VNET_HDR_LEN], &want);
        assert_eq!(r.stats().bad_chains, 2);
        let mut got = vec![0u8; rx.len()];
        r.mem
            .read_slice(&mut got, GuestAddress(DATA + 0x1000))
            .unwrap();
        let mut want = rx[..VNET_HDR_LEN].to_vec();
        want[NUM_BUFFERS_OFFSET] = 1;
        assert_eq!(&got[..VNET_HDR_LEN], &want[..], "backend header kept");

        // Without guest offloads the backend's header never reaches the guest.
        let mut r = rig();
        r.worker.features = features::VERSION_1 | F_CSUM;
        r.inbox.lock().unwrap().push_back(rx.clone());
        r.desc(RXQ, 0, DATA + 0x1000, 2048, F_WRITE, 0);
        r.publish(RXQ, 0);
        r.worker.process();
        r.mem
            .read_slice(&mut got, GuestAddress(DATA + 0x1000))
            .unwrap();
        let mut zero = [0u8; VNET_HDR_LEN];
        zero[NUM_BUFFERS_OFFSET] = 1;
        assert_eq!(&got[..VNET_HDR_LEN], &zero);
    }

    fn sockaddr_v4(ip: [u8; 4]) -> libc::sockaddr {
        // SAFETY: sockaddr_in and sockaddr are plain old data of the same size.
        unsafe {
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(ip);
            std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin)
        }
    }

    /// Gives tap `name` address `ip`/24, a permanent neighbour `peer` with MAC
    /// `peer_mac`, and returns the tap's own MAC.
    fn tap_ipv4(name: &str, ip: [u8; 4], peer: [u8; 4], peer_mac: [u8; 6]) -> [u8; 6] {
        // SAFETY: plain socket call; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(fd >= 0);
        let ctl = |req: libc::c_ulong, arg: *mut libc::c_void, what: &str| {
            // SAFETY: each request reads or writes the struct `arg` points to.
            let r = unsafe { libc::ioctl(fd, req, arg) };
            assert_eq!(r, 0, "{what}: {}", std::io::Error::last_os_error());
        };
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_addr = sockaddr_v4(ip);
        ctl(
            libc::SIOCSIFADDR,
            (&mut ifr as *mut libc::ifreq).cast(),
            "SIOCSIFADDR",
        );
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_netmask = sockaddr_v4([255, 255, 255, 0]);
        ctl(
            libc::SIOCSIFNETMASK,
            (&mut ifr as *mut libc::ifreq).cast(),
            "SIOCSIFNETMASK",
        );
        let mut ifr = ifreq(name);
        ctl(
            libc::SIOCGIFHWADDR,
            (&mut ifr as *mut libc::ifreq).cast(),
            "SIOCGIFHWADDR",
        );
        // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
        let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
        // SAFETY: arpreq is plain old data.
        let mut arp: libc::arpreq = unsafe { std::mem::zeroed() };
        arp.arp_pa = sockaddr_v4(peer);
        arp.arp_ha.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in arp.arp_ha.sa_data.iter_mut().zip(peer_mac) {
            *d = s as libc::c_char;
        }
        arp.arp_flags = 0x02 | 0x04; // ATF_COM | ATF_PERM
        for (d, s) in arp.arp_dev.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ctl(
            libc::SIOCSARP,
            (&mut arp as *mut libc::arpreq).cast(),
            "SIOCSARP",
        );
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        std::array::from_fn(|i| hw[i] as u8)
    }

    /// The 16-bit ones' complement sum of `data` (not inverted).
    fn csum16(mut sum: u32, data: &[u8]) -> u32 {
        for c in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }

    /// Checksum offload end to end through a real tap: a guest UDP datagram
    /// whose checksum only holds the pseudo-header sum (NEEDS_CSUM) reaches a
    /// host socket only when CSUM was negotiated (else the zeroed header leaves
    /// a wrong checksum and the host drops it); with GUEST_CSUM the host's
    /// datagram reaches the guest partially checksummed (NEEDS_CSUM, csum_start
    /// 34), without it fully checksummed.
    #[test]
    fn checksum_offload_through_a_real_tap() {
        if !root_and_tun_or_skip("checksum_offload_through_a_real_tap") {
            return;
        }
        let tap = super::super::tap::Tap::open("vcsum%d").unwrap();
        tap.set_up().unwrap();
        let net = 10 + (std::process::id() % 200) as u8;
        let (host_ip, guest_ip) = ([10, 213, net, 1], [10, 213, net, 2]);
        let guest_mac = [0x02, 0, 0, 0, 0x21, 0x13];
        let tap_mac = tap_ipv4(tap.name(), host_ip, guest_ip, guest_mac);
        let sock = std::net::UdpSocket::bind((std::net::Ipv4Addr::from(host_ip), 0)).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();

        let mut r = rig();
        let backend: Box<dyn NetBackend> = Box::new(tap);
        assert!(backend.offloads());
        r.worker.backend = Arc::new(Mutex::new(backend));

        // TX: one datagram with each feature set.
        let datagram = |payload: &[u8]| {
            let udp_len = 8 + payload.len();
            let mut ip = vec![0x45u8, 0];
            ip.extend(((20 + udp_len) as u16).to_be_bytes());
            ip.extend([0, 1, 0x40, 0, 64, 17, 0, 0]);
            ip.extend(guest_ip);
            ip.extend(host_ip);
            let c = !(csum16(0, &ip) as u16);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let mut pseudo = guest_ip.to_vec();
            pseudo.extend(host_ip);
            pseudo.extend([0, 17]);
            pseudo.extend((udp_len as u16).to_be_bytes());
            let partial = csum16(0, &pseudo) as u16;
            let mut f = vec![1u8, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0]; // NEEDS_CSUM at 34+6
            f.extend(tap_mac);
            f.extend(guest_mac);
            f.extend([0x08, 0x00]);
            f.extend(ip);
            f.extend(40000u16.to_be_bytes());
            f.extend(port.to_be_bytes());
            f.extend((udp_len as u16).to_be_bytes());
            f.extend(partial.to_be_bytes());
            f.extend(payload);
            f
        };
        for (i, (features, payload)) in [
            (features::VERSION_1, &b"zeroed header, wrong checksum"[..]),
            (features::VERSION_1 | F_CSUM, &b"checksum offloaded"[..]),
        ]
        .into_iter()
        .enumerate()
        {
            r.worker.features = features;
            let f = datagram(payload);
            let at = DATA + 0x800 * i as u64;
            r.mem.write_slice(&f, GuestAddress(at)).unwrap();
            r.desc(TXQ, i as u16, at, f.len() as u32, 0, 0);
            r.publish(TXQ, i as u16);
            r.worker.process();
        }
        assert_eq!(r.stats().tx_frames, 2, "{:?}", r.stats());
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        assert_eq!(
            got,
            [b"checksum offloaded".to_vec()],
            "only the offloaded datagram arrives"
        );

        // RX: the host's datagram, with and without the tap's checksum offload.
        for (i, features) in [features::VERSION_1, features::VERSION_1 | F_GUEST_CSUM]
            .into_iter()
            .enumerate()
        {
            r.worker.features = features;
            r.worker
                .backend
                .lock()
                .unwrap()
                .set_offloads(tun_offloads(features))
                .unwrap();
            let at = DATA + 0x4000 + 0x1000 * i as u64;
            r.desc(RXQ, i as u16, at, 2048, F_WRITE, 0);
            r.publish(RXQ, i as u16);
            sock.send_to(b"to the guest", (std::net::Ipv4Addr::from(guest_ip), 40000))
                .unwrap();
            let t = std::time::Instant::now();
            while r.used_idx(RXQ) as usize <= i {
                assert!(
                    t.elapsed() < std::time::Duration::from_secs(5),
                    "no RX frame"
                );
                r.worker.process();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let (_, len) = r.used_elem(RXQ, i as u16);
            let mut f = vec![0u8; len as usize];
            r.mem.read_slice(&mut f, GuestAddress(at)).unwrap();
            let frame = &f[VNET_HDR_LEN..];
            assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4");
            assert_eq!(frame[23], 17, "UDP");
            let udp = &frame[34..];
            assert_eq!(&udp[8..], b"to the guest");
            let mut pseudo = host_ip.to_vec();
            pseudo.extend(guest_ip);
            pseudo.extend([0, 17]);
            pseudo.extend((udp.len() as u16).to_be_bytes());
            if features & F_GUEST_CSUM != 0 {
                assert_eq!(f[0], 1, "NEEDS_CSUM: {:?}", &f[..VNET_HDR_LEN]);
                assert_eq!(u16::from_le_bytes([f[6], f[7]]), 34, "csum_start");
                assert_eq!(u16::from_le_bytes([f[8], f[9]]), 6, "csum_offset");
                // The checksum field holds the pseudo-header sum, as offloaded.
                let field = u16::from_be_bytes([udp[6], udp[7]]);
                assert_eq!(u32::from(field), csum16(0, &pseudo));
            } else {
                assert_eq!(f[0], 0, "whole frame: {:?}", &f[..VNET_HDR_LEN]);
                // A complete checksum: pseudo header + UDP sums to 0xffff.
                assert_eq!(csum16(csum16(0, &pseudo), udp), 0xffff);
            }
            assert_eq!(u16::from_le_bytes([f[10], f[11]]), 1, "num_buffers");
        }
    }

    /// VIRTIO_NET_F_MRG_RXBUF: a frame spreads over consecutive buffers with
    /// num_buffers = their count; too few buffers keep the frame pending
    /// without consuming any; an unwritable chain goes back with length 0
    /// ahead of the frame's buffers.
    #[test]
    fn mergeable_rx_buffers() {
        let mut r = rig();
        r.worker.mrg_rxbuf = true;
        let mut rx = vec![0x77u8; VNET_HDR_LEN];
        rx.extend((0..250u32).map(|b| (b * 7) as u8));
        r.inbox.lock().unwrap().push_back(rx.clone());
        r.desc(RXQ, 0, DATA, 100, F_WRITE, 0);
        r.publish(RXQ, 0);
        r.worker.process();
        assert_eq!(r.used_idx(RXQ), 0, "one buffer is not enough");
        assert_eq!(r.worker.frame.rx_len, Some(rx.len()));
        assert_eq!(r.worker.queues[RXQ].next_avail(), 0, "rewound");
        r.desc(RXQ, 1, DATA + 0x1000, 100, F_WRITE, 0);
        r.desc(RXQ, 2, DATA + 0x2000, 100, F_WRITE, 0);
        r.publish(RXQ, 1);
        r.publish(RXQ, 2);
        r.worker.process();
        assert_eq!(r.used_idx(RXQ), 3);
        assert_eq!(
            [0, 1, 2].map(|i| r.used_elem(RXQ, i)),
            [(0, 100), (1, 100), (2, 62)]
        );
        let mut got = Vec::new();
        for (a, l) in [(DATA, 100), (DATA + 0x1000, 100), (DATA + 0x2000, 62)] {
            let mut b = vec![0u8; l];
            r.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            got.extend(b);
        }
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[NUM_BUFFERS_OFFSET] = 3;
        assert_eq!(&got[..VNET_HDR_LEN], &hdr);
        assert_eq!(&got[VNET_HDR_LEN..], &rx[VNET_HDR_LEN..]);

        // [ok 100, read-only, ok 200]: the bad one first, then the frame.
        r.inbox.lock().unwrap().push_back(rx.clone());
        r.desc(RXQ, 3, DATA, 100, F_WRITE, 0);
        r.desc(RXQ, 4, DATA + 0x1000, 100, 0, 0);
        r.desc(RXQ, 5, DATA + 0x2000, 200, F_WRITE, 0);
        for h in 3..6 {
            r.publish(RXQ, h);
        }
        r.worker.process();
        assert_eq!(r.used_idx(RXQ), 6);
        assert_eq!(
            [3, 4, 5].map(|i| r.used_elem(RXQ, i)),
            [(4, 0), (3, 100), (5, 162)]
        );
        let mut n = [0u8; 2];
        r.mem.read_slice(&mut n, GuestAddress(DATA + 10)).unwrap();
        assert_eq!(u16::from_le_bytes(n), 2);
        let s = r.stats();
        assert_eq!((s.rx_frames, s.bad_chains, s.rx_dropped), (2, 1, 0));
    }

    /// Malformed chains: out-of-memory addresses, a header-only TX, a TX past
    /// MAX_FRAME_LEN, a read-only RX buffer. All are returned, counted, and
    /// the device keeps working.
    #[test]
    fn malformed_chains_are_counted_not_fatal() {
        let mut r = rig();
        r.desc(TXQ, 0, MEM - 8, 64, 0, 0); // crosses the end of memory
        r.desc(TXQ, 1, DATA, VNET_HDR_LEN as u32, 0, 0); // no frame
        r.desc(
            TXQ,
            2,
            DATA,
            (VNET_HDR_LEN + MAX_FRAME_LEN + 1) as u32,
            0,
            0,
        );
        r.desc(TXQ, 3, DATA, 64, F_NEXT, 3); // loops onto itself
        for h in 0..4 {
            r.publish(TXQ, h);
        }
        r.desc(RXQ, 0, DATA, 2048, 0, 0); // device-readable: no room
        r.publish(RXQ, 0);
        r.inbox.lock().unwrap().push_back(vec![1u8; 80]);
        r.worker.process();
        assert_eq!(r.used_idx(TXQ), 4);
        assert_eq!(r.used_idx(RXQ), 1);
        // The loop is cut after a queue's worth of descriptors (virtio-queue's
        // chain TTL): one bounded frame.
        let sent = r.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].len(), usize::from(QSZ) * 64);
        let s = r.stats();
        assert_eq!(s.bad_chains + s.rx_dropped, 4, "{s:?}");
        assert_eq!(s.tx_frames, 1);
    }

    /// Deterministic fuzz: random descriptor tables, chains and avail
    /// indices on both queues and random backend frames; the worker must not
    /// panic or loop, every step is bounded, and host buffers never grow.
    #[test]
    fn fuzz_random_chains() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut r = rig();
        let cap = r.worker.frame.rx.capacity();
        for round in 0..3000 {
            for q in [RXQ, TXQ] {
                for i in 0..QSZ {
                    let v = next();
                    let addr = match v % 4 {
                        0 => next() % MEM,
                        1 => DATA + (next() % 0x8000),
                        2 => next(),
                        _ => MEM - (next() % 64),
                    };
                    let len = match (v >> 8) % 4 {
                        0 => (next() % 64) as u32,
                        1 => (next() % 4096) as u32,
                        2 => next() as u32,
                        _ => (VNET_HDR_LEN + MIN_FRAME_LEN) as u32,
                    };
                    // Mostly plain chains (write-only on RX); sometimes any flags.
                    let flags = match (v >> 16) % 8 {
                        0 => ((v >> 20) % 8) as u16,
                        1 | 2 => F_NEXT | if q == RXQ { F_WRITE } else { 0 },
                        _ => {
                            if q == RXQ {
                                F_WRITE
                            } else {
                                0
                            }
                        }
                    };
                    let nxt = ((v >> 24) % u64::from(QSZ + 2)) as u16;
                    r.desc(q, i, addr, len, flags, nxt);
                }
                for _ in 0..next() % 6 {
                    let h = (next() % u64::from(QSZ + 1)) as u16;
                    r.publish(q, h);
                }
                if next() % 50 == 0 {
                    // A wild avail index (more than a queue's worth ahead) for
                    // one pass; restored below.
                    let wild = r.avail[q].wrapping_add((next() % 1000) as u16);
                    r.mem
                        .write_obj(wild, GuestAddress(ring(q) + 0x1000 + 2))
                        .unwrap();
                }
            }
            for _ in 0..next() % 4 {
                let n = (next() % 600) as usize;
                let f: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                let mut inbox = r.inbox.lock().unwrap();
                if inbox.len() < 64 {
                    inbox.push_back(f);
                }
            }
            r.worker.mrg_rxbuf = (round / 100) % 2 == 1;
            r.worker.process();
            // The device consumed what it could; resync the driver's view.
            for q in [RXQ, TXQ] {
                r.avail[q] = r.worker.queues[q].next_avail();
                r.mem
                    .write_obj(r.avail[q], GuestAddress(ring(q) + 0x1000 + 2))
                    .unwrap();
            }
            assert_eq!(r.worker.frame.rx.capacity(), cap, "round {round}");
            assert_eq!(r.worker.frame.tx.len(), VNET_HDR_LEN + MAX_FRAME_LEN);
            assert!(r.sent.lock().unwrap().len() <= 8);
        }
        let s = r.stats();
        eprintln!("net fuzz: {s:?}");
        assert!(
            s.bad_chains > 0 && s.tx_frames > 0 && s.rx_frames > 0,
            "{s:?}"
        );
        assert_eq!(s.worker_panics, 0);
    }
}
