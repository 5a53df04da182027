//! A loop-back test device that proves the transport end to end: every buffer
//! the driver places on queue 0 (TX, device-readable) is copied, XOR-ed with
//! the config-space key, into the next buffer the driver placed on queue 1
//! (RX, device-writable), truncated to that buffer's size.
//!
//! Config space (little-endian):
//!
//! | offset | field     | access |
//! |--------|-----------|--------|
//! | 0x0    | `max_len` | RO: bytes echoed per buffer at most ([`ECHO_MAX_LEN`]) |
//! | 0x4    | `echoed`  | RO: buffers echoed since activation; every change bumps ConfigGeneration and raises the config interrupt |
//! | 0x8    | `xor_key` | RW: low byte XOR-ed onto each echoed byte |
//!
//! The worker thread serves the queues until reset; host memory use is bounded
//! by one pending buffer of at most [`ECHO_MAX_LEN`] bytes.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{check_queues, read_config_bytes, spawn, QueueWorker, WorkerThread};
use super::{device_type, features, ActivateContext, ActivateError, Interrupt, VirtioDevice};
use crate::log::debug;

/// Longest buffer echoed (longer TX buffers are cut).
pub const ECHO_MAX_LEN: u32 = 64 * 1024;
/// Maximum size of both queues.
pub const ECHO_QUEUE_SIZE: u16 = 256;
/// Driver → device queue.
pub const TXQ: usize = 0;
/// Device → driver queue.
pub const RXQ: usize = 1;
/// Config offset of `max_len`.
pub const CONFIG_MAX_LEN: u64 = 0;
/// Config offset of `echoed`.
pub const CONFIG_ECHOED: u64 = 4;
/// Config offset of `xor_key`.
pub const CONFIG_XOR_KEY: u64 = 8;
/// Size of the config space.
pub const CONFIG_SIZE: u64 = 12;

/// Most rounds of [`Worker::process`] per wake-up before yielding to epoll
/// (the worker re-arms its own eventfd if work is left).
const MAX_ROUNDS: usize = 16;

#[derive(Debug, Default)]
struct Shared {
    xor_key: AtomicU32,
    echoed: AtomicU32,
    total_buffers: AtomicU64,
    total_bytes: AtomicU64,
    bad_chains: AtomicU64,
    activations: AtomicU64,
    worker_panics: AtomicU64,
}

/// Counters of an [`EchoDevice`] over its whole life (all activations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Buffers echoed.
    pub buffers: u64,
    /// Bytes echoed (after truncation).
    pub bytes: u64,
    /// Descriptor chains the device could not read or write (returned with length 0).
    pub bad_chains: u64,
    /// Activations.
    pub activations: u64,
    /// Worker threads that panicked (always 0 unless there is a bug).
    pub worker_panics: u64,
}

/// A handle to read an [`EchoDevice`]'s counters after it moved into a VM.
#[derive(Debug, Clone)]
pub struct EchoHandle(Arc<Shared>);

impl EchoHandle {
    /// Current counters.
    pub fn stats(&self) -> EchoStats {
        let s = &self.0;
        EchoStats {
            buffers: s.total_buffers.load(Ordering::SeqCst),
            bytes: s.total_bytes.load(Ordering::SeqCst),
            bad_chains: s.bad_chains.load(Ordering::SeqCst),
            activations: s.activations.load(Ordering::SeqCst),
            worker_panics: s.worker_panics.load(Ordering::SeqCst),
        }
    }
}

/// The echo test device ([module docs](self)).
pub struct EchoDevice {
    shared: Arc<Shared>,
    running: Option<WorkerThread>,
    queue_sizes: [u16; 2],
}

impl Default for EchoDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoDevice {
    /// A new, inactive device.
    pub fn new() -> Self {
        EchoDevice {
            shared: Arc::default(),
            running: None,
            queue_sizes: [ECHO_QUEUE_SIZE; 2],
        }
    }

    /// A handle to its counters.
    pub fn handle(&self) -> EchoHandle {
        EchoHandle(self.shared.clone())
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE as usize] {
        let mut c = [0u8; CONFIG_SIZE as usize];
        c[0..4].copy_from_slice(&ECHO_MAX_LEN.to_le_bytes());
        c[4..8].copy_from_slice(&self.shared.echoed.load(Ordering::SeqCst).to_le_bytes());
        c[8..12].copy_from_slice(&self.shared.xor_key.load(Ordering::SeqCst).to_le_bytes());
        c
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop("echo", &self.shared.worker_panics);
        }
    }
}

impl Drop for EchoDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

impl VirtioDevice for EchoDevice {
    fn device_type(&self) -> u32 {
        device_type::ECHO
    }

    fn features(&self) -> u64 {
        features::RING_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut key = self.shared.xor_key.load(Ordering::SeqCst).to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(o) if (CONFIG_XOR_KEY..CONFIG_SIZE).contains(&o) => {
                    key[(o - CONFIG_XOR_KEY) as usize] = *b;
                }
                o => debug(format_args!(
                    "echo: config write at {o:?} ignored (read-only or past the end)"
                )),
            }
        }
        self.shared
            .xor_key
            .store(u32::from_le_bytes(key), Ordering::SeqCst);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateContext {
            mem,
            queues,
            queue_evts,
            interrupt,
            ..
        } = ctx;
        check_queues(&queues, &queue_evts, 2, &[0, 1])?;
        let worker = Worker {
            mem,
            queues,
            queue_evts,
            interrupt,
            shared: self.shared.clone(),
            pending: None,
        };
        self.shared.echoed.store(0, Ordering::SeqCst);
        self.running = Some(spawn("virtio-echo", "echo", worker, &[])?);
        self.shared.activations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
        self.shared.xor_key.store(0, Ordering::SeqCst);
        self.shared.echoed.store(0, Ordering::SeqCst);
    }
}

/// The device side of an active echo device, run on its own thread.
struct Worker {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    shared: Arc<Shared>,
    pending: Option<Vec<u8>>,
}

impl QueueWorker for Worker {
    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Serve both queues until no more work is visible (at most a bounded
    /// number of rounds; if work is left the worker wakes itself again).
    fn process(&mut self) {
        let mut used = [false; 2];
        let mut idle = false;
        for _ in 0..MAX_ROUNDS {
            for q in &mut self.queues {
                if let Err(e) = q.disable_notification(&self.mem) {
                    debug(format_args!("echo: disable_notification: {e}"));
                }
            }
            let progressed = self.round(&mut used);
            // Re-enable notifications, then look again: buffers the driver
            // added before it saw them enabled are still served.
            for q in &mut self.queues {
                if let Err(e) = q.enable_notification(&self.mem) {
                    debug(format_args!("echo: enable_notification: {e}"));
                }
            }
            if !progressed || self.stalled() {
                idle = true;
                break;
            }
        }
        if !idle {
            // Out of rounds with work left: wake up again through epoll.
            let _ = self.queue_evts[TXQ].write(1);
        }
        let mut notify = false;
        for (q, u) in self.queues.iter_mut().zip(used) {
            if u {
                notify |= q.needs_notification(&self.mem).unwrap_or(true);
            }
        }
        if notify {
            self.interrupt.signal_used_queue();
        }
    }
}

impl Worker {
    /// No progress possible: the queue the next step needs (RX while a buffer
    /// is pending, TX otherwise) has no new buffers.
    fn stalled(&self) -> bool {
        let q = &self.queues[if self.pending.is_some() { RXQ } else { TXQ }];
        q.avail_idx(&self.mem, Ordering::Acquire)
            .map(|i| i.0 == q.next_avail())
            .unwrap_or(true)
    }

    /// One pass: at most one queue's worth of chains from each queue. Returns
    /// whether any chain was consumed.
    fn round(&mut self, used: &mut [bool; 2]) -> bool {
        let mut progressed = false;
        let budget = usize::from(self.queues[TXQ].size()) + usize::from(self.queues[RXQ].size());
        for _ in 0..budget {
            if self.pending.is_none() {
                let Some(chain) = self.queues[TXQ].pop_descriptor_chain(&self.mem) else {
                    break;
                };
                progressed = true;
                let head = chain.head_index();
                let data = Reader::new(&self.mem, chain)
                    .map_err(|e| e.to_string())
                    .and_then(|mut r| {
                        let n = r.available_bytes().min(ECHO_MAX_LEN as usize);
                        let mut buf = vec![0u8; n];
                        r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                        Ok(buf)
                    });
                match data {
                    Ok(mut buf) => {
                        let key = self.shared.xor_key.load(Ordering::SeqCst) as u8;
                        buf.iter_mut().for_each(|b| *b ^= key);
                        self.pending = Some(buf);
                    }
                    Err(e) => {
                        self.shared.bad_chains.fetch_add(1, Ordering::SeqCst);
                        debug(format_args!("echo: TX chain {head} unreadable: {e}"));
                    }
                }
                if let Err(e) = self.queues[TXQ].add_used(&self.mem, head, 0) {
                    debug(format_args!("echo: TX add_used({head}): {e}"));
                }
                used[TXQ] = true;
                continue;
            }
            let Some(chain) = self.queues[RXQ].pop_descriptor_chain(&self.mem) else {
                break;
            };
            progressed = true;
            let head = chain.head_index();
            let buf = self.pending.as_deref().unwrap_or_default();
            let written = Writer::new(&self.mem, chain)
                .map_err(|e| e.to_string())
                .and_then(|mut w| {
                    let n = buf.len().min(w.available_bytes());
                    w.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                    Ok(n)
                });
            let len = match written {
                Ok(n) => {
                    self.pending = None;
                    self.shared.total_buffers.fetch_add(1, Ordering::SeqCst);
                    self.shared
                        .total_bytes
                        .fetch_add(n as u64, Ordering::SeqCst);
                    // Config first, then the used ring: a driver that sees the
                    // buffer also sees the new `echoed` and generation.
                    self.shared.echoed.fetch_add(1, Ordering::SeqCst);
                    self.interrupt.signal_config_change();
                    n as u32
                }
                Err(e) => {
                    // Keep the pending data for the next RX buffer.
                    self.shared.bad_chains.fetch_add(1, Ordering::SeqCst);
                    debug(format_args!("echo: RX chain {head} unwritable: {e}"));
                    0
                }
            };
            if let Err(e) = self.queues[RXQ].add_used(&self.mem, head, len) {
                debug(format_args!("echo: RX add_used({head}): {e}"));
            }
            used[RXQ] = true;
        }
        progressed
    }
}
