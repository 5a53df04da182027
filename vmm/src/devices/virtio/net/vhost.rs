//! The host vhost-net backend of [`NetDevice`](super::NetDevice): on DRIVER_OK the
//! guest's two rings go to the host kernel's `/dev/vhost-net` through the shared
//! frontend ([`frontends::vhost_net`], the same code the guest agent drives the
//! guest's vhost-net with), with the device's tap as the vhost backend. The host's
//! vhost worker then moves frames between the rings and the tap; the VMM is out of
//! the data path.
//!
//! * Kicks: the queue eventfds (KVM ioeventfds on QueueNotify, or written by the
//!   transport on an MMIO exit) are the vhost kick fds.
//! * Calls: vhost signals one eventfd per queue. virtio-mmio has a single interrupt
//!   line and an InterruptStatus register the guest reads in its handler, so a relay
//!   thread turns each call into [`Interrupt::signal_used_queue`] (status bit + irqfd);
//!   an irqfd wired straight to vhost would raise the line with InterruptStatus 0,
//!   and Linux's `vm_interrupt` would ignore it.
//! * Owner: `VHOST_SET_OWNER` runs on the [`KcovOwner`] thread when `--host-kcov` is
//!   on, so the host's vhost worker reports coverage under that thread's common handle.
//! * Features: only the ring bits ([`frontends::vhost_net::RING_FEATURES`]) go to
//!   vhost; MAC and STATUS stay with the device model.
//! * Reset: the backend is detached (a flush of the worker), the vhost instance
//!   closed (its worker ends) and the relay stopped; a new DRIVER_OK opens a fresh
//!   instance.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use frontends::tap::Tap;
use frontends::vhost_net::{
    regions_of, ring_features, Ring, VhostError, VhostNet, RX_QUEUE, TX_QUEUE,
};
use vhost::VringConfigData;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::super::worker::{epoll_wait, WorkerThread};
use super::super::{ActivateContext, ActivateError, Interrupt};
use crate::host_kcov::KcovOwner;

/// What the vhost-net backend needs besides the activation context.
pub(super) struct VhostBackendSpec {
    pub(super) tap: Tap,
    pub(super) owner: Option<KcovOwner>,
}

/// An active vhost-net backend.
pub(super) struct Active {
    net: VhostNet<Arc<GuestMemoryMmap>>,
    relay: WorkerThread,
    /// Kept open for as long as vhost uses them.
    _calls: Vec<EventFd>,
    _kicks: Vec<EventFd>,
}

impl Active {
    /// Detach, close, stop the relay.
    pub(super) fn stop(self, panics: &AtomicU64) {
        self.net.detach();
        drop(self.net);
        self.relay.stop("net/vhost", panics);
    }
}

/// The vhost view of a ready queue: its size and the guest addresses the driver set.
pub fn vring_config(q: &Queue) -> VringConfigData {
    VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: q.desc_table(),
        used_ring_addr: q.used_ring(),
        avail_ring_addr: q.avail_ring(),
        log_addr: None,
    }
}

fn backend_err(e: VhostError) -> ActivateError {
    ActivateError::Backend(e.to_string())
}

/// Opens and configures vhost-net for the context's rings, attaches the tap and starts
/// the call relay. `calls` counts the interrupts relayed.
pub(super) fn activate(
    ctx: ActivateContext,
    spec: &VhostBackendSpec,
    calls_relayed: Arc<AtomicU64>,
) -> Result<Active, ActivateError> {
    let ActivateContext {
        mem,
        features,
        queues,
        queue_evts,
        interrupt,
        ..
    } = ctx;
    let mem = Arc::new(mem);
    let open_mem = mem.clone();
    let open = move || VhostNet::open_owned(open_mem);
    let mut net = match &spec.owner {
        Some(owner) => owner.run(open).ok_or_else(|| {
            ActivateError::Backend("the host-kcov owner thread has finished".into())
        })?,
        None => open(),
    }
    .map_err(backend_err)?;
    let w = |e: std::io::Error| ActivateError::Worker(e.to_string());
    let calls = [
        EventFd::new(libc::EFD_NONBLOCK).map_err(w)?,
        EventFd::new(libc::EFD_NONBLOCK).map_err(w)?,
    ];
    let rings = [RX_QUEUE, TX_QUEUE].map(|i| Ring {
        index: i,
        config: vring_config(&queues[i]),
        base: queues[i].next_avail(),
        kick: &queue_evts[i],
        call: &calls[i],
    });
    net.configure(ring_features(features), &regions_of(&*mem), &rings)
        .map_err(backend_err)?;
    net.attach(spec.tap.file()).map_err(backend_err)?;
    let relay = start_relay(&calls, interrupt, calls_relayed).inspect_err(|_| net.detach())?;
    Ok(Active {
        net,
        relay,
        _calls: calls.into(),
        _kicks: queue_evts,
    })
}

/// A thread that turns vhost call eventfds into device interrupts until killed.
pub(super) fn start_relay(
    calls: &[EventFd],
    interrupt: Arc<Interrupt>,
    relayed: Arc<AtomicU64>,
) -> Result<WorkerThread, ActivateError> {
    let w = |e: std::io::Error| ActivateError::Worker(e.to_string());
    let epoll = Epoll::new().map_err(w)?;
    let kill = EventFd::new(libc::EFD_NONBLOCK).map_err(w)?;
    let calls: Vec<EventFd> = calls
        .iter()
        .map(|c| c.try_clone())
        .collect::<Result<_, _>>()
        .map_err(w)?;
    for (i, c) in calls.iter().enumerate() {
        epoll
            .ctl(
                ControlOperation::Add,
                c.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )
            .map_err(w)?;
    }
    let kill_token = calls.len() as u64;
    epoll
        .ctl(
            ControlOperation::Add,
            kill.as_raw_fd(),
            EpollEvent::new(EventSet::IN, kill_token),
        )
        .map_err(w)?;
    let kill_rx = kill.try_clone().map_err(w)?;
    let thread = std::thread::Builder::new()
        .name("vhost-net-call".into())
        .spawn(move || {
            let mut events = vec![EpollEvent::default(); calls.len() + 1];
            loop {
                let Some(n) = epoll_wait(&epoll, &mut events, "net/vhost") else {
                    return;
                };
                let mut raise = false;
                for ev in &events[..n] {
                    match calls.get(ev.data() as usize) {
                        Some(c) => raise |= c.read().is_ok(),
                        None => {
                            let _ = kill_rx.read();
                            return;
                        }
                    }
                }
                if raise {
                    relayed.fetch_add(1, Ordering::SeqCst);
                    interrupt.signal_used_queue();
                }
            }
        })
        .map_err(w)?;
    Ok(WorkerThread { kill, thread })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;

    #[test]
    fn vring_config_carries_the_driver_addresses() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(128);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(0x3000), Some(0));
        let c = vring_config(&q);
        assert_eq!((c.queue_max_size, c.queue_size), (256, 128));
        assert_eq!(
            (c.desc_table_addr, c.avail_ring_addr, c.used_ring_addr),
            (0x1000, 0x2000, 0x3000)
        );
        assert_eq!((c.flags, c.log_addr), (0, None));
    }

    #[test]
    fn calls_become_interrupts_until_stopped() {
        let calls = [
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ];
        let interrupt = Arc::new(Interrupt::new().unwrap());
        let relayed = Arc::new(AtomicU64::new(0));
        let relay = start_relay(&calls, interrupt.clone(), relayed.clone()).unwrap();
        for (i, c) in calls.iter().enumerate() {
            interrupt.ack(VIRTIO_MMIO_INT_VRING);
            let _ = interrupt.eventfd().read();
            let before = relayed.load(Ordering::SeqCst);
            c.write(1).unwrap();
            let t = Instant::now();
            while relayed.load(Ordering::SeqCst) == before {
                assert!(t.elapsed() < Duration::from_secs(5), "call {i} not relayed");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_ne!(interrupt.status() & VIRTIO_MMIO_INT_VRING, 0);
            assert_eq!(interrupt.eventfd().read().unwrap(), 1, "irqfd not raised");
        }
        let panics = AtomicU64::new(0);
        relay.stop("test", &panics);
        assert_eq!(panics.load(Ordering::SeqCst), 0);
        // After the stop nothing relays.
        let before = relayed.load(Ordering::SeqCst);
        calls[0].write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(relayed.load(Ordering::SeqCst), before);
    }
}
