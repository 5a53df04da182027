//! The in-process virtio-vsock device (virtio 1.2, 5.10 "Socket Device").
//!
//! [`VsockDevice`] is the virtio-mmio face of the `vsock` crate's core: three
//! queues (rx, tx, event; the event queue is accepted and never used), config
//! space = `le64 guest_cid`, and on activation a worker thread with one epoll
//! loop over the rx/tx queue eventfds and the backend's fd. The worker moves
//! packets with [`::vsock::device::process_queues`] between the virtqueues and
//! a [`VsockBackend`] (by default the hybrid-vsock [`Muxer`]: a guest connect
//! to CID 2 port P reaches a host listener on `<uds>_P`; a host process
//! connects to `<uds>`, writes `CONNECT <port>\n` and reads `OK <n>\n`), and
//! signals used buffers through the [`Interrupt`].
//!
//! The backend is built when the device is (so a bad `--vsock-uds` or CID is
//! an error before the VM starts, and `<uds>` exists while the guest boots).
//! A reset stops the worker and drops the backend with all its connections;
//! the next activation builds a fresh one.
//!
//! Everything the guest writes is hostile: malformed chains and packets are
//! dropped or answered with RST by the core; nothing here panics on them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ::vsock::device::{self as core, EVQ, MAX_QUEUE_SIZE, NUM_QUEUES, RXQ, TXQ};
use ::vsock::muxer::Muxer;
use ::vsock::{Limits, VsockBackend};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{check_queues, read_config_bytes, spawn, QueueWorker, WorkerThread};
use super::{device_type, features, ActivateContext, ActivateError, Interrupt, VirtioDevice};
use crate::log::debug;

pub use ::vsock::proto::{FIRST_GUEST_CID, HOST_CID};

/// Size of the config space (`le64 guest_cid`).
pub const CONFIG_SIZE: usize = 8;
/// Most rounds of queue processing per wake-up before the worker yields to
/// epoll (it wakes itself again if work is left).
const MAX_ROUNDS: usize = 16;

/// Why a vsock device cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum VsockDeviceError {
    /// The guest CID is reserved or out of range, the Unix socket path is
    /// unusable, or the backend could not be set up.
    #[error(transparent)]
    Backend(#[from] ::vsock::Error),
}

/// What the `vmm` binary's `--vsock-uds PATH --guest-cid N` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The hybrid-vsock Unix socket (`<uds>`; guest connects reach `<uds>_<port>`).
    pub uds: PathBuf,
    /// The guest's CID (3 or more, below `u32::MAX`).
    pub guest_cid: u64,
    /// Bounds on connections and buffers.
    pub limits: Limits,
}

impl VsockConfig {
    /// `uds` and `guest_cid` with the default [`Limits`].
    pub fn new(uds: &Path, guest_cid: u64) -> Self {
        VsockConfig {
            uds: uds.to_path_buf(),
            guest_cid,
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    activations: AtomicU64,
    tx_packets: AtomicU64,
    rx_packets: AtomicU64,
    interrupts: AtomicU64,
    wakeups: AtomicU64,
    worker_panics: AtomicU64,
    backend_errors: AtomicU64,
}

/// Counters of a [`VsockDevice`] over its whole life (all activations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Activations (DRIVER_OK).
    pub activations: u64,
    /// TX descriptor chains returned to the guest (packets taken, including
    /// malformed ones that were dropped).
    pub tx_packets: u64,
    /// RX buffers filled for the guest.
    pub rx_packets: u64,
    /// Used-buffer interrupts raised.
    pub interrupts: u64,
    /// Times the worker woke up.
    pub wakeups: u64,
    /// Worker threads that panicked (always 0 unless there is a bug).
    pub worker_panics: u64,
    /// Backends that could not be rebuilt for a re-activation.
    pub backend_errors: u64,
}

/// A handle to read a [`VsockDevice`]'s counters after it moved into a VM.
#[derive(Debug, Clone)]
pub struct VsockHandle(Arc<Shared>);

impl VsockHandle {
    /// Current counters.
    pub fn stats(&self) -> VsockStats {
        let s = &self.0;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        VsockStats {
            activations: l(&s.activations),
            tx_packets: l(&s.tx_packets),
            rx_packets: l(&s.rx_packets),
            interrupts: l(&s.interrupts),
            wakeups: l(&s.wakeups),
            worker_panics: l(&s.worker_panics),
            backend_errors: l(&s.backend_errors),
        }
    }
}

/// Builds a backend (again after each reset).
pub type BackendFactory<B> = Box<dyn FnMut() -> ::vsock::Result<B> + Send>;

/// The virtio-vsock device ([module docs](self)).
pub struct VsockDevice<B: VsockBackend + 'static = Muxer> {
    guest_cid: u64,
    queue_sizes: [u16; NUM_QUEUES],
    /// The backend the next activation gets (`None` once a worker took it).
    backend: Option<B>,
    factory: BackendFactory<B>,
    running: Option<WorkerThread>,
    shared: Arc<Shared>,
}

impl VsockDevice<Muxer> {
    /// A device whose host side is the hybrid-vsock [`Muxer`] on `cfg.uds`.
    /// Binds `cfg.uds` now: a reserved CID, a path that exists and is not a
    /// socket, or a directory that does not exist is an error here.
    pub fn new(cfg: &VsockConfig) -> Result<Self, VsockDeviceError> {
        let cfg = cfg.clone();
        let cid = cfg.guest_cid;
        Self::with_backend(
            cid,
            Box::new(move || Muxer::new(&cfg.uds, cfg.guest_cid, cfg.limits)),
        )
    }

    /// The Unix socket the host side listens on, while a backend is held
    /// (before the first activation and after each reset).
    pub fn uds(&self) -> Option<&Path> {
        self.backend.as_ref().map(|m| m.uds())
    }
}

impl<B: VsockBackend + 'static> VsockDevice<B> {
    /// A device for a guest with `guest_cid` over backends made by `factory`
    /// (called once now, and again for each activation after a reset).
    pub fn with_backend(
        guest_cid: u64,
        mut factory: BackendFactory<B>,
    ) -> Result<Self, VsockDeviceError> {
        ::vsock::validate_guest_cid(guest_cid)?;
        let backend = factory()?;
        Ok(VsockDevice {
            guest_cid,
            queue_sizes: [MAX_QUEUE_SIZE; NUM_QUEUES],
            backend: Some(backend),
            factory,
            running: None,
            shared: Arc::default(),
        })
    }

    /// The guest's CID (the config space).
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// A handle to its counters.
    pub fn handle(&self) -> VsockHandle {
        VsockHandle(self.shared.clone())
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop("vsock", &self.shared.worker_panics);
        }
    }
}

impl<B: VsockBackend + 'static> Drop for VsockDevice<B> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<B: VsockBackend + 'static> VirtioDevice for VsockDevice<B> {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn features(&self) -> u64 {
        // VERSION_1 comes from the transport; no VIRTIO_VSOCK_F_STREAM bit is
        // needed (stream is implied), SEQPACKET is not offered.
        features::RING_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug(format_args!(
            "vsock: config write of {} bytes at {offset:#x} ignored (read-only)",
            data.len()
        ));
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateContext {
            mem,
            features,
            queues,
            queue_evts,
            interrupt,
        } = ctx;
        // The event queue is never used; the driver may leave it disabled.
        check_queues(&queues, &queue_evts, NUM_QUEUES, &[RXQ, TXQ])?;
        let backend = match self.backend.take() {
            Some(b) => b,
            None => (self.factory)().map_err(|e| {
                self.shared.backend_errors.fetch_add(1, Ordering::SeqCst);
                ActivateError::Worker(format!("vsock backend: {e}"))
            })?,
        };
        let mut queues = queues.into_iter();
        let (Some(rxq), Some(txq)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: 0,
            });
        };
        let backend_fd = (backend.as_raw_fd(), backend.interest());
        let worker = Worker {
            mem,
            rxq,
            txq,
            event_idx: features & features::RING_EVENT_IDX != 0,
            queue_evts,
            interrupt,
            backend,
            shared: self.shared.clone(),
        };
        self.running = Some(spawn("virtio-vsock", "vsock", worker, &[backend_fd])?);
        self.shared.activations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn reset(&mut self) {
        // The worker drops its backend (every connection, the sockets) when
        // it ends; the next activation builds a fresh one.
        self.stop();
    }
}

/// The device side of an active vsock device, on its own thread.
struct Worker<B: VsockBackend> {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    event_idx: bool,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    backend: B,
    shared: Arc<Shared>,
}

impl<B: VsockBackend + 'static> QueueWorker for Worker<B> {
    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn woken(&mut self) {
        self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// The backend's fd (the only extra one).
    fn extra_event(&mut self, _index: usize, events: EventSet) {
        self.backend.notify(events);
    }

    /// Serves both queues until no more progress is possible (bounded; if
    /// work is left the worker wakes itself again), then interrupts the guest
    /// if it wants to hear of the used buffers.
    fn process(&mut self) {
        let (tx0, rx0) = (self.txq.next_used(), self.rxq.next_used());
        let (mut tx_used, mut rx_used) = (false, false);
        let mut idle = false;
        for _ in 0..MAX_ROUNDS {
            self.set_notifications(false);
            let (t, r) =
                core::process_queues(&self.mem, &mut self.rxq, &mut self.txq, &mut self.backend);
            tx_used |= t;
            rx_used |= r;
            // Re-enable notifications, then look again: buffers the driver
            // added before it saw them enabled are served now.
            self.set_notifications(true);
            let more = self.has_avail(&self.txq)
                || (self.backend.has_pending_rx() && self.has_avail(&self.rxq));
            if !(t || r) || !more {
                idle = true;
                break;
            }
        }
        if !idle {
            // Out of rounds with work left: come back through epoll.
            let _ = self.queue_evts[TXQ].write(1);
        }
        let s = &self.shared;
        s.tx_packets.fetch_add(
            u64::from(self.txq.next_used().wrapping_sub(tx0)),
            Ordering::Relaxed,
        );
        s.rx_packets.fetch_add(
            u64::from(self.rxq.next_used().wrapping_sub(rx0)),
            Ordering::Relaxed,
        );
        let mut notify = false;
        if tx_used {
            notify |= self.txq.needs_notification(&self.mem).unwrap_or(true);
        }
        if rx_used {
            notify |= self.rxq.needs_notification(&self.mem).unwrap_or(true);
        }
        if notify {
            s.interrupts.fetch_add(1, Ordering::Relaxed);
            self.interrupt.signal_used_queue();
        }
    }
}

impl<B: VsockBackend> Worker<B> {
    fn set_notifications(&mut self, enable: bool) {
        if !self.event_idx {
            return;
        }
        for q in [&mut self.rxq, &mut self.txq] {
            let r = if enable {
                q.enable_notification(&self.mem).map(|_| ())
            } else {
                q.disable_notification(&self.mem)
            };
            if let Err(e) = r {
                debug(format_args!("vsock: queue notification setting: {e}"));
            }
        }
    }

    fn has_avail(&self, q: &Queue) -> bool {
        q.avail_idx(&self.mem, Ordering::Acquire)
            .map(|i| i.0 != q.next_avail())
            .unwrap_or(false)
    }
}

// The event queue index is part of the layout the driver sees; keep the
// constant referenced so a change in the core shows up here.
const _: () = assert!(EVQ == 2 && RXQ == 0 && TXQ == 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_cids_and_bad_paths_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let uds = d.path().join("v.sock");
        for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            let e = VsockDevice::new(&VsockConfig::new(&uds, cid))
                .err()
                .unwrap();
            let m = e.to_string();
            assert!(m.contains("reserved") && !m.contains('\n'), "{m}");
            assert!(!uds.exists());
        }
        let file = d.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        let e = VsockDevice::new(&VsockConfig::new(&file, 3)).err().unwrap();
        assert!(e.to_string().contains("not a Unix socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        let e = VsockDevice::new(&VsockConfig::new(&d.path().join("no/dir/v.sock"), 3))
            .err()
            .unwrap();
        assert!(e.to_string().contains("binding"), "{e}");
    }

    fn ctx(mem: &GuestMemoryMmap, ready: [bool; 3]) -> ActivateContext {
        let queues = (0..3u64)
            .map(|i| {
                let mut q = Queue::new(16).unwrap();
                let base = vm_memory::GuestAddress(0x1_0000 * (i + 1));
                q.set_desc_table_address(Some(base.0 as u32), Some(0));
                q.set_avail_ring_address(Some(base.0 as u32 + 0x1000), Some(0));
                q.set_used_ring_address(Some(base.0 as u32 + 0x2000), Some(0));
                q.set_ready(ready[i as usize]);
                q
            })
            .collect();
        ActivateContext {
            mem: mem.clone(),
            features: features::VERSION_1,
            queues,
            queue_evts: (0..3)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: Arc::new(Interrupt::new().unwrap()),
        }
    }

    /// Activation needs rx and tx ready; reset stops the worker and drops the
    /// muxer (its socket goes); the next activation binds a fresh one.
    #[test]
    fn activate_reset_and_activate_again() {
        let d = tempfile::tempdir().unwrap();
        let uds = d.path().join("v.sock");
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let mut dev = VsockDevice::new(&VsockConfig::new(&uds, 3)).unwrap();
        let h = dev.handle();
        assert_eq!(
            dev.activate(ctx(&mem, [true, false, true])),
            Err(ActivateError::QueueNotReady(TXQ))
        );
        let mut c = ctx(&mem, [true; 3]);
        c.queues.pop();
        assert!(matches!(
            dev.activate(c),
            Err(ActivateError::QueueCount { expected: 3, .. })
        ));
        // The event queue may stay disabled.
        dev.activate(ctx(&mem, [true, true, false])).unwrap();
        assert_eq!(
            dev.activate(ctx(&mem, [true; 3])),
            Err(ActivateError::AlreadyActive)
        );
        assert!(uds.exists());
        assert_eq!(dev.uds(), None, "the worker holds the muxer");
        dev.reset();
        assert!(!uds.exists(), "reset dropped the muxer and its socket");
        dev.activate(ctx(&mem, [true; 3])).unwrap();
        assert!(uds.exists(), "a fresh muxer for the new activation");
        // A host peer can connect to the new socket.
        std::os::unix::net::UnixStream::connect(&uds).unwrap();
        dev.reset();
        let s = h.stats();
        assert_eq!(
            (s.activations, s.worker_panics, s.backend_errors),
            (2, 0, 0)
        );
        // Rebinding fails once something else took the path: the activation
        // is refused (the transport sets DEVICE_NEEDS_RESET), nothing panics.
        std::fs::write(&uds, b"not a socket").unwrap();
        assert!(matches!(
            dev.activate(ctx(&mem, [true; 3])),
            Err(ActivateError::Worker(_))
        ));
        assert_eq!(h.stats().backend_errors, 1);
    }

    #[test]
    fn device_identity_and_config_space() {
        let d = tempfile::tempdir().unwrap();
        let uds = d.path().join("v.sock");
        let mut dev = VsockDevice::new(&VsockConfig::new(&uds, 0xfedc_ba98)).unwrap();
        assert!(uds.exists(), "the socket is bound before the VM runs");
        assert_eq!(dev.uds(), Some(uds.as_path()));
        assert_eq!(dev.device_type(), 19);
        assert_eq!(dev.queue_max_sizes().len(), 3);
        let mut c = [0xffu8; 8];
        dev.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c), 0xfedc_ba98);
        let mut c = [0xffu8; 4];
        dev.read_config(2, &mut c);
        assert_eq!(c, [0xdc, 0xfe, 0, 0]);
        dev.read_config(6, &mut c);
        assert_eq!(c, [0; 4]);
        dev.read_config(u64::MAX, &mut c);
        assert_eq!(c, [0; 4]);
        dev.write_config(0, &[9; 8]);
        let mut c = [0u8; 8];
        dev.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c), 0xfedc_ba98, "read-only");
        // A reset before any activation keeps the bound socket.
        dev.reset();
        assert!(uds.exists());
        drop(dev);
        assert!(!uds.exists(), "the socket goes with the device");
    }
}
