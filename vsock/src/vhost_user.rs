//! The vsock core as a vhost-user backend (for QEMU's
//! `-device vhost-user-vsock-device,chardev=...`), on the
//! `vhost-user-backend` crate.
//!
//! [`spawn`] binds the vhost-user socket and the hybrid-vsock Unix socket at
//! once (so errors come before QEMU starts and QEMU finds the socket), then
//! serves one front-end connection on a thread until it disconnects (the VM
//! ended).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{
    ShutdownHandle, VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT,
};
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::device::{self, EVQ, MAX_QUEUE_SIZE, NUM_QUEUES, RXQ, TXQ};
use crate::muxer::Muxer;
use crate::{Error, Limits, Result, VsockBackend};

type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// epoll data of the backend's own fd (0..=NUM_QUEUES are the daemon's).
const BACKEND_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// A vsock device served over vhost-user.
pub struct VhostUserVsock<B: VsockBackend> {
    backend: B,
    guest_cid: u64,
    mem: GuestMem,
    exit_consumer: EventConsumer,
    exit_notifier: EventNotifier,
}

impl<B: VsockBackend> VhostUserVsock<B> {
    pub fn new(backend: B, guest_cid: u64) -> Result<Self> {
        crate::validate_guest_cid(guest_cid)?;
        let (exit_consumer, exit_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(Error::Epoll)?;
        Ok(VhostUserVsock {
            backend,
            guest_cid,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            exit_consumer,
            exit_notifier,
        })
    }

    /// The virtio-vsock config space: `le64 guest_cid`.
    fn config(&self) -> [u8; 8] {
        self.guest_cid.to_le_bytes()
    }
}

impl<B: VsockBackend + Sync> VhostUserBackendMut for VhostUserVsock<B> {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE as usize
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // VIRTIO_RING_F_EVENT_IDX is not offered.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.config();
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg[start..end].to_vec()
    }

    fn update_memory(&mut self, mem: GuestMem) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((
            self.exit_consumer.try_clone().ok()?,
            self.exit_notifier.try_clone().ok()?,
        ))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock<GuestMem>],
        _thread_id: usize,
    ) -> io::Result<()> {
        match device_event as usize {
            RXQ | TXQ | EVQ => {}
            _ if device_event == BACKEND_EVENT => self.backend.notify(evset),
            _ => {
                return Err(io::Error::other(format!(
                    "vsock: unexpected event {device_event}"
                )))
            }
        }
        let (Some(rx_vring), Some(tx_vring)) = (vrings.get(RXQ), vrings.get(TXQ)) else {
            return Err(io::Error::other("vsock: missing vrings"));
        };
        let mem = self.mem.memory();
        let mut rx = rx_vring.get_mut();
        let mut tx = tx_vring.get_mut();
        let (tx_used, rx_used) = device::process_queues(
            &*mem,
            rx.get_queue_mut(),
            tx.get_queue_mut(),
            &mut self.backend,
        );
        if rx_used && rx.get_queue_mut().needs_notification(&*mem).unwrap_or(true) {
            rx.signal_used_queue()?;
        }
        if tx_used && tx.get_queue_mut().needs_notification(&*mem).unwrap_or(true) {
            tx.signal_used_queue()?;
        }
        Ok(())
    }
}

/// What to serve.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// The vhost-user socket QEMU connects to (`-chardev socket,path=...`).
    pub vhost_socket: PathBuf,
    /// The hybrid-vsock Unix socket (`<uds>` and `<uds>_<port>`).
    pub uds: PathBuf,
    pub guest_cid: u64,
    pub limits: Limits,
}

impl BackendConfig {
    pub fn new(vhost_socket: &Path, uds: &Path, guest_cid: u64) -> Self {
        BackendConfig {
            vhost_socket: vhost_socket.to_path_buf(),
            uds: uds.to_path_buf(),
            guest_cid,
            limits: Limits::default(),
        }
    }
}

/// A backend serving on its thread.
pub struct BackendHandle {
    thread: Option<JoinHandle<Result<()>>>,
    vhost_socket: PathBuf,
    shutdown: Arc<Mutex<Option<ShutdownHandle>>>,
}

impl BackendHandle {
    /// Whether the serving thread ended (the front end disconnected).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the front end disconnects.
    pub fn join(mut self) -> Result<()> {
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::VhostUser("the vhost-user thread panicked".into()))?,
            None => Ok(()),
        }
    }

    /// Stops serving (also when no front end ever connected) and waits.
    pub fn stop(mut self) -> Result<()> {
        if !self.is_finished() {
            let handle = self.shutdown.lock().ok().and_then(|h| h.clone());
            match handle {
                Some(h) => h.shutdown(),
                // Still waiting in accept(): connect and hang up to wake it.
                None => drop(std::os::unix::net::UnixStream::connect(&self.vhost_socket)),
            }
        }
        self.join_inner()
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let handle = self.shutdown.lock().ok().and_then(|h| h.clone());
            if let Some(h) = handle {
                h.shutdown();
            }
        }
    }
}

/// Binds both sockets, then serves one vhost-user front end on a thread.
pub fn spawn(cfg: &BackendConfig) -> Result<BackendHandle> {
    let muxer = Muxer::new(&cfg.uds, cfg.guest_cid, cfg.limits)?;
    let backend = VhostUserVsock::new(muxer, cfg.guest_cid)?;
    let listener = Listener::new(&cfg.vhost_socket, true).map_err(|e| Error::VhostUserSocket {
        path: cfg.vhost_socket.clone(),
        cause: io::Error::other(e.to_string()),
    })?;
    let shutdown = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&shutdown);
    let thread = std::thread::Builder::new()
        .name("vsock-vhost-user".into())
        .spawn(move || run(listener, backend, slot))
        .map_err(|e| Error::VhostUser(format!("spawning the backend thread: {e}")))?;
    Ok(BackendHandle {
        thread: Some(thread),
        vhost_socket: cfg.vhost_socket.clone(),
        shutdown,
    })
}

/// Serves until the front end disconnects (blocking).
pub fn serve(cfg: &BackendConfig) -> Result<()> {
    spawn(cfg)?.join()
}

fn run(
    mut listener: Listener,
    backend: VhostUserVsock<Muxer>,
    shutdown: Arc<Mutex<Option<ShutdownHandle>>>,
) -> Result<()> {
    let vu = |e: vhost_user_backend::Error| Error::VhostUser(e.to_string());
    let fd = crate::VsockEpollListener::as_raw_fd(&backend.backend);
    let backend = Arc::new(RwLock::new(backend));
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("vsock".into(), Arc::clone(&backend), mem).map_err(vu)?;
    for h in daemon.get_epoll_handlers() {
        h.register_listener(fd, EventSet::IN, BACKEND_EVENT as u64)
            .map_err(|e| Error::VhostUser(format!("registering the muxer fd: {e}")))?;
    }
    daemon.start(&mut listener).map_err(vu)?;
    if let Ok(mut s) = shutdown.lock() {
        *s = daemon.shutdown_handle();
    }
    let result = daemon.wait();
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
    match result {
        Ok(()) => Ok(()),
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(vu(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_checks_input_and_stops_without_a_front_end() {
        let dir = tempfile::tempdir().unwrap();
        let vu = dir.path().join("vu.sock");
        let uds = dir.path().join("v.sock");
        let e = spawn(&BackendConfig::new(&vu, &uds, 2)).err().unwrap();
        assert!(matches!(e, Error::InvalidGuestCid(2)), "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = spawn(&BackendConfig::new(&vu, &file, 3)).err().unwrap();
        assert!(matches!(e, Error::UdsPathNotSocket(_)), "{e}");
        let h = spawn(&BackendConfig::new(&vu, &uds, 3)).unwrap();
        assert!(vu.exists() && uds.exists());
        assert!(!h.is_finished());
        h.stop().unwrap();
        assert!(!uds.exists(), "the muxer removed its socket");
    }

    #[test]
    fn config_space_is_the_guest_cid() {
        let dir = tempfile::tempdir().unwrap();
        let m = Muxer::new(&dir.path().join("v.sock"), 0x1234_5678, Limits::default()).unwrap();
        let b = VhostUserVsock::new(m, 0x1234_5678).unwrap();
        assert_eq!(b.get_config(0, 8), 0x1234_5678u64.to_le_bytes());
        assert_eq!(b.get_config(4, 100), vec![0, 0, 0, 0]);
        assert!(b.get_config(9, 4).is_empty());
        assert_eq!(b.num_queues(), 3);
        assert!(b
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG));
    }
}
