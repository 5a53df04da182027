//! The virtio-net device model ([module docs](super)): features, config space,
//! activation on the userspace [`super::worker`] or the host's
//! [`super::vhost`]-net, reset.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::super::worker::{check_queues, read_config_bytes, WorkerThread};
use super::super::{device_type, features, ActivateContext, ActivateError, VirtioDevice};
use super::backend::{NetBackend, SharedBackend};
use super::spec::{
    config_space, tun_offloads, CONFIG_SIZE, F_MAC, F_MRG_RXBUF, F_STATUS, NET_QUEUE_SIZE,
    OFFLOAD_FEATURES, RXQ, TXQ,
};
use super::stats::{NetHandle, Shared};
use super::tap::Tap;
use super::{vhost, worker};
use crate::host_kcov::KcovOwner;
use crate::log::debug;

enum Backend {
    User(SharedBackend),
    Vhost(vhost::VhostBackendSpec),
}

enum Running {
    User(WorkerThread),
    Vhost(vhost::Active),
}

/// The virtio-net device ([module docs](super)).
pub struct NetDevice {
    mac: [u8; 6],
    /// The backend passes vnet headers: offloads are offered.
    offloads: bool,
    backend: Backend,
    shared: Arc<Shared>,
    running: Option<Running>,
    queue_sizes: [u16; 2],
}

impl NetDevice {
    /// A device with MAC `mac` whose frames go to and come from `backend`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        Self::with_backend(Backend::User(Arc::new(Mutex::new(backend))), mac)
    }

    /// A device with MAC `mac` whose rings the host kernel's vhost-net serves, with `tap`
    /// as its backend; `VHOST_SET_OWNER` runs on `owner`'s thread when given (host kcov).
    /// `/dev/vhost-net` is opened at each activation: check it beforehand with
    /// [`frontends::vhost_net::probe`] to fail early.
    pub fn vhost(tap: Tap, mac: [u8; 6], owner: Option<KcovOwner>) -> Self {
        Self::with_backend(Backend::Vhost(vhost::VhostBackendSpec { tap, owner }), mac)
    }

    fn with_backend(backend: Backend, mac: [u8; 6]) -> Self {
        let offloads = match &backend {
            Backend::User(b) => b.lock().map(|b| b.offloads()).unwrap_or(false),
            Backend::Vhost(_) => true,
        };
        NetDevice {
            mac,
            offloads,
            backend,
            shared: Arc::default(),
            running: None,
            queue_sizes: [NET_QUEUE_SIZE; 2],
        }
    }

    /// Whether the host's vhost-net serves the rings.
    pub fn is_vhost(&self) -> bool {
        matches!(self.backend, Backend::Vhost(_))
    }

    /// A handle to its counters.
    pub fn handle(&self) -> NetHandle {
        NetHandle(self.shared.clone())
    }

    /// The guest's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        config_space(self.mac)
    }

    fn stop(&mut self) {
        match self.running.take() {
            Some(Running::User(r)) => r.stop("net", &self.shared.worker_panics),
            Some(Running::Vhost(a)) => a.stop(&self.shared.worker_panics),
            None => {}
        }
    }
}

impl Drop for NetDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn features(&self) -> u64 {
        let base = F_MAC | F_STATUS | F_MRG_RXBUF | features::RING_EVENT_IDX;
        if self.offloads {
            base | OFFLOAD_FEATURES
        } else {
            base
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // No VIRTIO_NET_F_CTRL_MAC_ADDR and no legacy interface: all read-only.
        debug(format_args!(
            "net: config write of {} bytes at {offset:#x} ignored (read-only)",
            data.len()
        ));
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        check_queues(&ctx.queues, &ctx.queue_evts, 2, &[RXQ, TXQ])?;
        let tun = tun_offloads(ctx.features);
        let running = match &self.backend {
            Backend::User(b) => {
                if self.offloads {
                    b.lock()
                        .map_err(|_| ActivateError::Worker("backend lock poisoned".into()))?
                        .set_offloads(tun)
                        .map_err(|e| ActivateError::Backend(format!("TUNSETOFFLOAD: {e}")))?;
                }
                Running::User(worker::start(ctx, b.clone(), self.shared.clone())?)
            }
            Backend::Vhost(spec) => {
                spec.tap
                    .set_offloads(tun)
                    .map_err(|e| ActivateError::Backend(e.to_string()))?;
                Running::Vhost(vhost::activate(ctx, spec, self.shared.vhost_calls.clone())?)
            }
        };
        self.shared.activations.fetch_add(1, Ordering::SeqCst);
        self.running = Some(running);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use super::super::super::Interrupt;
    use super::super::spec::DEFAULT_MAC;
    use super::super::testutil::{mem_backend, queues, root_and_tun_or_skip, MEM};
    use super::*;

    #[test]
    fn config_space_and_features() {
        let backend = mem_backend();
        let dev = NetDevice::new(backend, DEFAULT_MAC);
        assert_eq!(dev.device_type(), 1);
        let mut c = [0u8; 12];
        dev.read_config(0, &mut c);
        assert_eq!(&c[..6], &DEFAULT_MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "LINK_UP");
        assert_eq!(&c[10..], &[0, 0]);
        assert_eq!(dev.features() & (F_MAC | F_STATUS), F_MAC | F_STATUS);
        // No offloads.
        assert_eq!(
            dev.features() & 0x00ff_ffff & !(F_MAC | F_STATUS | F_MRG_RXBUF),
            0
        );
    }

    /// Both queues set up in `mem` (the TX queue ready only when `ready`).
    fn activation_ctx(mem: &GuestMemoryMmap, ready: bool) -> ActivateContext {
        let queues = queues(ready);
        ActivateContext {
            mem: mem.clone(),
            features: features::VERSION_1 | F_MAC,
            queues,
            queue_evts: (0..2)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: Arc::new(Interrupt::new().unwrap()),
        }
    }

    #[test]
    fn vhost_backend_activation_on_this_host() {
        if !root_and_tun_or_skip("vhost_backend_activation_on_this_host") {
            return;
        }
        let tap = super::super::tap::Tap::open("vhtest%d").unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let mut dev = NetDevice::vhost(tap, DEFAULT_MAC, None);
        assert!(dev.is_vhost());
        assert_eq!(
            dev.features(),
            F_MAC | F_STATUS | F_MRG_RXBUF | features::RING_EVENT_IDX | OFFLOAD_FEATURES
        );
        let h = dev.handle();
        assert_eq!(
            dev.activate(activation_ctx(&mem, false)),
            Err(ActivateError::QueueNotReady(TXQ))
        );
        match frontends::vhost_net::probe() {
            Err(why) => {
                // No host vhost-net: activation is refused with the reason, nothing runs,
                // and the device can be reset and tried again.
                test_skip::skip(
                    "vhost backend data path (partly)",
                    test_skip::HOST_VHOST_NET,
                    format!("host vhost-net data path: {why}"),
                );
                match dev.activate(activation_ctx(&mem, true)) {
                    Err(ActivateError::Backend(m)) => assert!(m.contains("/dev/vhost-net"), "{m}"),
                    other => panic!("expected a backend error, got {other:?}"),
                }
                dev.reset();
                assert!(dev.activate(activation_ctx(&mem, true)).is_err());
                assert_eq!(h.stats().activations, 0);
            }
            Ok(()) => {
                dev.activate(activation_ctx(&mem, true)).unwrap();
                dev.reset();
                dev.activate(activation_ctx(&mem, true)).unwrap();
                dev.reset();
                assert_eq!((h.stats().activations, h.stats().worker_panics), (2, 0));
            }
        }
    }

    /// Activation through the trait: queues must be ready; reset stops the
    /// worker and the device can be activated again.
    #[test]
    fn activate_reset_activate() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let ctx = |ready: bool| activation_ctx(&mem, ready);
        let backend = mem_backend();
        let mut dev = NetDevice::new(backend, DEFAULT_MAC);
        let h = dev.handle();
        assert_eq!(
            dev.activate(ctx(false)),
            Err(ActivateError::QueueNotReady(TXQ))
        );
        dev.activate(ctx(true)).unwrap();
        assert_eq!(dev.activate(ctx(true)), Err(ActivateError::AlreadyActive));
        dev.reset();
        dev.activate(ctx(true)).unwrap();
        dev.reset();
        let s = h.stats();
        assert_eq!((s.activations, s.worker_panics), (2, 0));
    }
}
