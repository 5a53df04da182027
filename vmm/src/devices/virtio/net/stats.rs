//! The counters a [`super::NetDevice`] and its worker keep, and the handle that
//! reads them after the device moved into a VM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) tx_frames: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) rx_frames: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) bad_chains: AtomicU64,
    pub(super) rx_dropped: AtomicU64,
    pub(super) backend_errors: AtomicU64,
    pub(super) activations: AtomicU64,
    pub(super) worker_panics: AtomicU64,
    pub(super) vhost_calls: Arc<AtomicU64>,
}

/// Counters of a [`NetDevice`](super::NetDevice) over its whole life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that went to the backend.
    pub tx_frames: u64,
    /// Their bytes (frames only, no headers).
    pub tx_bytes: u64,
    /// Frames placed into guest RX buffers.
    pub rx_frames: u64,
    /// Their bytes (frames only).
    pub rx_bytes: u64,
    /// Malformed guest chains (returned with length 0).
    pub bad_chains: u64,
    /// Backend frames dropped: too short, or larger than the RX buffer the
    /// guest posted.
    pub rx_dropped: u64,
    /// Backend read or write errors (the frame is dropped).
    pub backend_errors: u64,
    /// Activations.
    pub activations: u64,
    /// Worker threads that panicked (0 unless there is a bug).
    pub worker_panics: u64,
    /// vhost backend: used-buffer notifications of host vhost-net relayed to the
    /// guest as interrupts (0 with a userspace backend).
    pub vhost_calls: u64,
}

/// Reads a [`NetDevice`](super::NetDevice)'s counters after it moved into a VM.
#[derive(Debug, Clone)]
pub struct NetHandle(pub(super) Arc<Shared>);

impl NetHandle {
    /// Current counters.
    pub fn stats(&self) -> NetStats {
        let s = &self.0;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        NetStats {
            tx_frames: l(&s.tx_frames),
            tx_bytes: l(&s.tx_bytes),
            rx_frames: l(&s.rx_frames),
            rx_bytes: l(&s.rx_bytes),
            bad_chains: l(&s.bad_chains),
            rx_dropped: l(&s.rx_dropped),
            backend_errors: l(&s.backend_errors),
            activations: l(&s.activations),
            worker_panics: l(&s.worker_panics),
            vhost_calls: l(&s.vhost_calls),
        }
    }
}
