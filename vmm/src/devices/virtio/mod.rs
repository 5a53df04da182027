//! virtio devices and their transport, virtio-mmio (virtio 1.2, 4.2 "Virtio Over
//! MMIO", version 2 only).
//!
//! * [`VirtioDevice`]: what a device (vsock, net, the test [`echo`] device)
//!   implements: type, features, queue sizes, config space, activation, reset.
//! * [`mmio::MmioTransport`]: the register state machine a driver talks to; it
//!   owns feature negotiation, the device status rules and queue setup
//!   (`virtio_queue::Queue`), and hands ready queues to the device on DRIVER_OK.
//! * [`Interrupt`]: InterruptStatus + config generation + the irqfd the device
//!   signals; queue notifications reach the device through one eventfd per queue
//!   (registered with KVM as an ioeventfd where possible, written by the
//!   transport on a QueueNotify exit otherwise).
//! * [`MmioSlot`]: where the VMM puts device `i` (window, IRQ) and the kernel
//!   command-line entry that tells Linux about it.
//!
//! Everything the driver writes is hostile: bad values are ignored with a debug
//! log or put the device in DEVICE_NEEDS_RESET; nothing panics.

pub mod echo;
pub mod mmio;
pub mod net;
pub mod vsock;
mod worker;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{MMIO_DEVICES_START, MMIO_DEVICE_WINDOW};

pub use mmio::MmioTransport;

/// Device IDs (virtio 1.2, 5 "Device Types").
pub mod device_type {
    use virtio_bindings::virtio_ids;
    /// Network card.
    pub const NET: u32 = virtio_ids::VIRTIO_ID_NET;
    /// Entropy source.
    pub const RNG: u32 = virtio_ids::VIRTIO_ID_RNG;
    /// Socket device.
    pub const VSOCK: u32 = virtio_ids::VIRTIO_ID_VSOCK;
    /// Our loop-back test device ([`super::echo`]); a value from the range the
    /// spec leaves unassigned, so no Linux driver binds to it.
    pub const ECHO: u32 = 0xec40;
}

/// Feature bits the transport knows about (virtio 1.2, 6 "Reserved Feature Bits").
pub mod features {
    /// VIRTIO_F_VERSION_1: a virtio 1.x device. The transport always offers it
    /// and refuses FEATURES_OK without it (no legacy interface).
    pub const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    /// VIRTIO_RING_F_EVENT_IDX: used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const RING_INDIRECT_DESC: u64 =
        1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
}

/// First virtio-mmio window: 64 KiB into the MMIO gap, so the first pages stay
/// free for test devices (`guests::TESTDEV_MMIO`).
pub const VIRTIO_MMIO_BASE: u64 = MMIO_DEVICES_START + 0x1_0000;
/// Size of one device's window (registers 0x000..0x100, config space from 0x100).
pub const VIRTIO_MMIO_WINDOW: u64 = MMIO_DEVICE_WINDOW;
/// IRQ (IOAPIC pin, 1:1 from ISA IRQs in our MP table) of the first device;
/// 0-4 are the PIT, keyboard, cascade, COM2 and COM1.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// At most this many virtio-mmio devices (IRQs 5..=20 of the 24 IOAPIC pins).
pub const VIRTIO_MAX_DEVICES: usize = 16;

/// Where the VMM places one virtio-mmio device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base guest-physical address of the register window.
    pub base: u64,
    /// Length of the window.
    pub len: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
}

impl MmioSlot {
    /// The slot of device `index` (0-based), or `None` past [`VIRTIO_MAX_DEVICES`].
    pub fn nth(index: usize) -> Option<MmioSlot> {
        (index < VIRTIO_MAX_DEVICES).then(|| MmioSlot {
            base: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_WINDOW,
            len: VIRTIO_MMIO_WINDOW,
            irq: VIRTIO_IRQ_BASE + index as u32,
        })
    }

    /// The kernel command-line word that makes Linux probe this device
    /// (`drivers/virtio/virtio_mmio.c`, `virtio_mmio.device=<size>@<base>:<irq>`).
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.len >> 10,
            self.base,
            self.irq
        )
    }
}

/// Why a device refused activation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// A queue the device needs was not made ready by the driver.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The device got a different number of queues than it asked for.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Asked for.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// The device is already active (activate without reset).
    #[error("device is already active")]
    AlreadyActive,
    /// The device could not start its worker (thread, epoll).
    #[error("cannot start the device worker: {0}")]
    Worker(String),
    /// The device's host backend refused (e.g. host vhost-net failed).
    #[error("device backend: {0}")]
    Backend(String),
}

/// Interrupt state shared by the transport and the device: the InterruptStatus
/// register, the config generation counter and the eventfd (an irqfd under KVM)
/// that raises the device's interrupt line.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    generation: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// A new interrupt with a fresh non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The device placed buffers in a used ring (InterruptStatus bit 0).
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device changed its configuration space: bump ConfigGeneration, then
    /// raise InterruptStatus bit 1. Call it after the change is visible to
    /// `read_config`.
    pub fn signal_config_change(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            // EAGAIN: the counter is saturated, the line is raised anyway.
            crate::log::debug(format_args!("virtio: interrupt eventfd write: {e}"));
        }
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clear `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Current ConfigGeneration.
    pub fn config_generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The eventfd to register as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Device reset: InterruptStatus back to 0, pending eventfd count dropped.
    fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        let _ = self.evt.read();
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory (shares the mappings of the VM).
    pub mem: GuestMemoryMmap,
    /// Negotiated features (the driver's acknowledged subset of what was offered).
    pub features: u64,
    /// One queue per entry of [`VirtioDevice::queue_max_sizes`], in order; a
    /// queue the driver did not enable has `ready() == false`. Ready queues
    /// were checked to lie inside guest memory.
    pub queues: Vec<Queue>,
    /// Queue notifications: eventfd `i` becomes readable when the driver
    /// notifies queue `i` (non-blocking fds).
    pub queue_evts: Vec<EventFd>,
    /// Used-buffer and config-change interrupts.
    pub interrupt: Arc<Interrupt>,
}

impl std::fmt::Debug for ActivateContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivateContext")
            .field("features", &format_args!("{:#x}", self.features))
            .field("queues", &self.queues)
            .field("queue_evts", &self.queue_evts.len())
            .finish()
    }
}

/// A virtio device behind a transport. Calls come from vCPU threads holding
/// the transport's lock; work on the queues happens on the device's own
/// threads after [`VirtioDevice::activate`].
pub trait VirtioDevice: Send {
    /// Device ID ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Device feature bits offered to the driver (device-specific bits 0-23 and
    /// transport bits it supports, e.g. [`features::RING_EVENT_IDX`]);
    /// [`features::VERSION_1`] is added by the transport.
    fn features(&self) -> u64;
    /// Maximum size of each queue (powers of two, 1..=32768); its length is
    /// the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Read `data.len()` bytes of the config space at `offset`; bytes past the
    /// end of the config space read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Driver write to the config space; out-of-range or read-only bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The driver reset the device (status 0) or the VM ends: stop using guest
    /// memory and the queues, drop them, and be ready for a new activation.
    fn reset(&mut self);
}

/// A device shared between the transport and its owner.
pub type SharedVirtioDevice = Arc<Mutex<dyn VirtioDevice>>;

/// A virtio device the VMM attaches over virtio-mmio ([`crate::VmConfig::virtio_devices`]).
#[derive(Clone)]
pub struct VirtioMmioDevice {
    /// The device.
    pub device: SharedVirtioDevice,
    /// Register a KVM ioeventfd per queue for QueueNotify (falls back to the
    /// MMIO exit where KVM refuses); `false` always takes the exit.
    pub ioeventfd: bool,
}

impl VirtioMmioDevice {
    /// Wrap `device`, with ioeventfds.
    pub fn new(device: SharedVirtioDevice) -> Self {
        VirtioMmioDevice {
            device,
            ioeventfd: true,
        }
    }
}

impl std::fmt::Debug for VirtioMmioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // try_lock: formatting must not wait for a vCPU thread.
        let ty = self.device.try_lock().map(|d| d.device_type()).ok();
        f.debug_struct("VirtioMmioDevice")
            .field("device_type", &ty)
            .field("ioeventfd", &self.ioeventfd)
            .finish()
    }
}

/// What became of one virtio-mmio device in a run ([`crate::RunOutcome::virtio`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioMmioInfo {
    /// Window and IRQ.
    pub slot: MmioSlot,
    /// Device ID.
    pub device_type: u32,
    /// QueueNotify went through KVM ioeventfds.
    pub ioeventfd: bool,
    /// QueueNotify writes that reached the VMM as MMIO exits.
    pub notify_exits: u64,
    /// Device status register when the VM ended.
    pub status: u32,
    /// Times the device was activated (DRIVER_OK).
    pub activations: u64,
}
