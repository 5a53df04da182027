//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2 "MMIO Device
//! Register Layout"; 3.1.1 "Driver Requirements: Device Initialization";
//! 2.1 "Device Status Field"; 2.2 "Feature Bits").
//!
//! [`MmioTransport`] is a [`BusDevice`] on the MMIO bus. It keeps the register
//! state (feature selectors, queue selector, status), negotiates features,
//! validates queue setup with `virtio_queue::Queue`, and on DRIVER_OK hands the
//! queues to the [`VirtioDevice`]. QueueNotify writes that reach it (no KVM
//! ioeventfd, or a value no ioeventfd matched) are forwarded to the queue's
//! eventfd, so a device sees the same notification either way.

use std::io;
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{features, ActivateContext, Interrupt, MmioSlot, SharedVirtioDevice, VirtioDevice};
use crate::devices::BusDevice;
use crate::log::debug;

/// MagicValue: "virt" in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Version: 2 = virtio 1.x (no legacy registers).
pub const MMIO_VERSION: u32 = 2;
/// VendorID reported by our devices ("KVMM" in little-endian; any value is allowed).
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"KVMM");
/// Offset of the device-specific configuration space in the window.
pub const CONFIG_SPACE_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;
/// Most queues a device may have (an arbitrary bound: vsock has 3, net 2 per pair).
pub const MAX_QUEUES: usize = 64;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    use super::*;
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
    /// The driver is ready: the device is live.
    pub const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
    /// Set by the device: it hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
    /// Set by the driver: it gave up on the device.
    pub const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
}
use status::*;

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A queue maximum size is not a power of two in 1..=32768.
    #[error("virtio device type {device_type}: queue {queue} has invalid maximum size {size}")]
    QueueMaxSize {
        /// Device type.
        device_type: u32,
        /// Queue index.
        queue: usize,
        /// Size asked for.
        size: u16,
    },
    /// No queues, or more than [`MAX_QUEUES`].
    #[error("virtio device type {device_type}: {count} queues (1..={MAX_QUEUES} allowed)")]
    QueueCount {
        /// Device type.
        device_type: u32,
        /// Number asked for.
        count: usize,
    },
    /// An eventfd could not be created.
    #[error("virtio-mmio eventfd: {0}")]
    EventFd(#[from] io::Error),
}

// Bits of `QueueSlot::bad`: a driver-written value the queue refused.
const BAD_SIZE: u8 = 1;
const BAD_DESC: u8 = 2;
const BAD_AVAIL: u8 = 4;
const BAD_USED: u8 = 8;

struct QueueSlot {
    queue: Queue,
    bad: u8,
    /// Ring addresses as the driver wrote them (desc, avail, used): the queue
    /// keeps only accepted values, the halves combine with what was written.
    raw: [u64; 3],
}

#[derive(Clone, Copy)]
enum Ring {
    Desc,
    Avail,
    Used,
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: SharedVirtioDevice,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<QueueSlot>,
    device_type: u32,
    offered: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked: u64,
    queue_sel: u32,
    status: u32,
    active: bool,
    notify_exits: u64,
    activations: u64,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &format_args!("{:#x}", self.status))
            .field("offered", &format_args!("{:#x}", self.offered))
            .field("acked", &format_args!("{:#x}", self.acked))
            .field("queues", &self.queues.len())
            .field("active", &self.active)
            .finish()
    }
}

fn lock(dev: &SharedVirtioDevice) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

impl MmioTransport {
    /// A transport for `device` over guest memory `mem`. Resets the device.
    pub fn new(device: SharedVirtioDevice, mem: GuestMemoryMmap) -> Result<Self, TransportError> {
        let (device_type, offered, sizes) = {
            let mut d = lock(&device);
            d.reset();
            (
                d.device_type(),
                d.features() | features::VERSION_1,
                d.queue_max_sizes().to_vec(),
            )
        };
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(TransportError::QueueCount {
                device_type,
                count: sizes.len(),
            });
        }
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for (i, &size) in sizes.iter().enumerate() {
            let queue = Queue::new(size).map_err(|_| TransportError::QueueMaxSize {
                device_type,
                queue: i,
                size,
            })?;
            queues.push(QueueSlot {
                queue,
                bad: 0,
                raw: [0; 3],
            });
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            queue_evts,
            queues,
            device_type,
            offered,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked: 0,
            queue_sel: 0,
            status: 0,
            active: false,
            notify_exits: 0,
            activations: 0,
        })
    }

    /// The interrupt (its eventfd is the irqfd to register).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Queue notification eventfds, one per queue.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Features the driver acknowledged (valid once FEATURES_OK is set).
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Features offered (device features plus VERSION_1).
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// QueueNotify writes handled here (MMIO exits, not ioeventfds).
    pub fn notify_exits(&self) -> u64 {
        self.notify_exits
    }

    /// How often the device was activated.
    pub fn activations(&self) -> u64 {
        self.activations
    }

    /// Whether the device is live (DRIVER_OK accepted).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The VM ends: stop the device (as a driver reset would).
    pub fn shutdown(&mut self) {
        self.reset();
    }

    fn selected(&self) -> Option<&QueueSlot> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u32) -> u32 {
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device_type,
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected().map_or(0, |q| u32::from(q.queue.max_size()))
            }
            reg::VIRTIO_MMIO_QUEUE_READY => {
                self.selected().map_or(0, |q| u32::from(q.queue.ready()))
            }
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            // No shared memory regions: length (and base) read as -1.
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                debug(format_args!(
                    "virtio-mmio: read of write-only or unknown register {offset:#x}"
                ));
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(v),
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            reg::VIRTIO_MMIO_QUEUE_NUM => self.write_queue_num(v),
            reg::VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(v),
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            reg::VIRTIO_MMIO_STATUS => self.write_status(v),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => self.write_ring_addr(Ring::Desc, false, v),
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => self.write_ring_addr(Ring::Desc, true, v),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.write_ring_addr(Ring::Avail, false, v),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.write_ring_addr(Ring::Avail, true, v),
            reg::VIRTIO_MMIO_QUEUE_USED_LOW => self.write_ring_addr(Ring::Used, false, v),
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_ring_addr(Ring::Used, true, v),
            reg::VIRTIO_MMIO_SHM_SEL => {}
            _ => debug(format_args!(
                "virtio-mmio: write {v:#x} to read-only or unknown register {offset:#x} ignored"
            )),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & (DRIVER | FEATURES_OK | FAILED) != DRIVER {
            debug(format_args!(
                "virtio-mmio: DriverFeatures written in status {:#x} ignored",
                self.status
            ));
            return;
        }
        match self.driver_features_sel {
            0 => self.acked = (self.acked & !0xffff_ffff) | u64::from(v),
            1 => self.acked = (self.acked & 0xffff_ffff) | (u64::from(v) << 32),
            sel if v != 0 => debug(format_args!(
                "virtio-mmio: DriverFeatures word {sel} = {v:#x} ignored (no such features)"
            )),
            _ => {}
        }
    }

    /// Queue registers may be written after FEATURES_OK and before DRIVER_OK,
    /// for a queue that exists and is not enabled yet (QueueReady 0 may also
    /// disable an enabled one: `allow_ready`).
    fn queue_for_config(&mut self, what: &str, allow_ready: bool) -> Option<&mut QueueSlot> {
        if self.status & (FEATURES_OK | DRIVER_OK | FAILED | DEVICE_NEEDS_RESET) != FEATURES_OK {
            debug(format_args!(
                "virtio-mmio: {what} written in status {:#x} ignored",
                self.status
            ));
            return None;
        }
        let sel = self.queue_sel;
        match self.queues.get_mut(sel as usize) {
            Some(q) if allow_ready || !q.queue.ready() => Some(q),
            Some(_) => {
                debug(format_args!(
                    "virtio-mmio: {what} of enabled queue {sel} ignored"
                ));
                None
            }
            None => {
                debug(format_args!(
                    "virtio-mmio: {what} of nonexistent queue {sel} ignored"
                ));
                None
            }
        }
    }

    fn write_queue_num(&mut self, v: u32) {
        let Some(q) = self.queue_for_config("QueueNum", false) else {
            return;
        };
        let ok = u16::try_from(v)
            .ok()
            .is_some_and(|n| q.queue.try_set_size(n).is_ok());
        if ok {
            q.bad &= !BAD_SIZE;
        } else {
            q.bad |= BAD_SIZE;
            debug(format_args!(
                "virtio-mmio: QueueNum {v} invalid (power of two <= {} expected)",
                q.queue.max_size()
            ));
        }
    }

    fn write_ring_addr(&mut self, ring: Ring, high: bool, v: u32) {
        let Some(q) = self.queue_for_config("queue address", false) else {
            return;
        };
        let cur = q.raw[ring as usize];
        let new = if high {
            (cur & 0xffff_ffff) | (u64::from(v) << 32)
        } else {
            (cur & !0xffff_ffff) | u64::from(v)
        };
        q.raw[ring as usize] = new;
        let addr = GuestAddress(new);
        let (res, bit) = match ring {
            Ring::Desc => (q.queue.try_set_desc_table_address(addr), BAD_DESC),
            Ring::Avail => (q.queue.try_set_avail_ring_address(addr), BAD_AVAIL),
            Ring::Used => (q.queue.try_set_used_ring_address(addr), BAD_USED),
        };
        match res {
            Ok(()) => q.bad &= !bit,
            Err(e) => {
                q.bad |= bit;
                debug(format_args!(
                    "virtio-mmio: queue address {new:#x} refused: {e}"
                ));
            }
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        let sel = self.queue_sel;
        let mem = self.mem.clone();
        let Some(q) = self.queue_for_config("QueueReady", v == 0) else {
            return;
        };
        match v {
            0 => q.queue.set_ready(false),
            1 => {
                let reason = if q.bad != 0 {
                    Some(format!("invalid size or ring address (flags {:#x})", q.bad))
                } else {
                    q.queue.set_ready(true);
                    if q.queue.is_valid(&mem) {
                        None
                    } else {
                        q.queue.set_ready(false);
                        Some(format!(
                            "rings outside guest memory (size {}, desc {:#x}, avail {:#x}, used {:#x})",
                            q.queue.size(),
                            q.queue.desc_table(),
                            q.queue.avail_ring(),
                            q.queue.used_ring()
                        ))
                    }
                };
                if let Some(r) = reason {
                    self.needs_reset(format_args!("queue {sel}: {r}"));
                }
            }
            _ => debug(format_args!("virtio-mmio: QueueReady {v} ignored")),
        }
    }

    fn notify(&mut self, v: u32) {
        self.notify_exits += 1;
        match self.queue_evts.get(v as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    debug(format_args!("virtio-mmio: queue {v} eventfd: {e}"));
                }
            }
            None => debug(format_args!(
                "virtio-mmio: QueueNotify for nonexistent queue {v} ignored"
            )),
        }
    }

    fn needs_reset(&mut self, why: std::fmt::Arguments<'_>) {
        debug(format_args!(
            "virtio-mmio: device type {} needs reset: {why}",
            self.device_type
        ));
        self.status |= DEVICE_NEEDS_RESET;
        if self.status & DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    fn features_acceptable(&self) -> Result<(), String> {
        if self.acked & features::VERSION_1 == 0 {
            return Err("driver did not accept VIRTIO_F_VERSION_1".into());
        }
        let extra = self.acked & !self.offered;
        if extra != 0 {
            return Err(format!("driver accepted features not offered: {extra:#x}"));
        }
        Ok(())
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's bit; the driver cannot set or clear it.
        let v = v & !DEVICE_NEEDS_RESET;
        let old = self.status & !DEVICE_NEEDS_RESET;
        if v & old != old {
            debug(format_args!(
                "virtio-mmio: status {v:#x} clears bits of {old:#x}; ignored (write 0 to reset)"
            ));
            return;
        }
        let new = v & !old;
        if new & FAILED != 0 {
            self.status |= FAILED;
        }
        let known = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;
        if new & !known != 0 {
            debug(format_args!(
                "virtio-mmio: unknown status bits {:#x} ignored",
                new & !known
            ));
        }
        if new & ACKNOWLEDGE != 0 {
            self.status |= ACKNOWLEDGE;
        }
        if new & DRIVER != 0 {
            if self.status & ACKNOWLEDGE == 0 {
                debug(format_args!(
                    "virtio-mmio: DRIVER before ACKNOWLEDGE ignored"
                ));
                return;
            }
            self.status |= DRIVER;
        }
        if new & FEATURES_OK != 0 {
            if self.status & DRIVER == 0 {
                debug(format_args!(
                    "virtio-mmio: FEATURES_OK before DRIVER ignored"
                ));
                return;
            }
            if let Err(why) = self.features_acceptable() {
                // Not setting the bit is how the device refuses (2.2.2).
                debug(format_args!("virtio-mmio: FEATURES_OK refused: {why}"));
                return;
            }
            self.status |= FEATURES_OK;
        }
        if new & DRIVER_OK != 0 {
            if self.status & FEATURES_OK == 0 {
                debug(format_args!(
                    "virtio-mmio: DRIVER_OK before FEATURES_OK ignored"
                ));
                return;
            }
            if self.status & (FAILED | DEVICE_NEEDS_RESET) != 0 {
                debug(format_args!(
                    "virtio-mmio: DRIVER_OK in status {:#x} ignored",
                    self.status
                ));
                return;
            }
            match self.activate() {
                Ok(()) => self.status |= DRIVER_OK,
                Err(e) => self.needs_reset(format_args!("activation failed: {e}")),
            }
        }
    }

    fn activate(&mut self) -> Result<(), String> {
        let event_idx = self.acked & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, slot) in self.queues.iter().enumerate() {
            let mut st = slot.queue.state();
            st.event_idx_enabled = event_idx;
            let q = Queue::try_from(st).map_err(|e| format!("queue {i}: {e}"))?;
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(format!("queue {i} is not valid"));
            }
            queues.push(q);
        }
        let queue_evts = self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| format!("eventfd: {e}"))?;
        lock(&self.device)
            .activate(ActivateContext {
                mem: self.mem.clone(),
                features: self.acked,
                queues,
                queue_evts,
                interrupt: self.interrupt.clone(),
            })
            .map_err(|e| e.to_string())?;
        self.active = true;
        self.activations += 1;
        Ok(())
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.active = false;
        self.status = 0;
        self.acked = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.queue.reset();
            q.bad = 0;
            q.raw = [0; 3];
        }
        for e in &self.queue_evts {
            let _ = e.read();
        }
        self.interrupt.reset();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            debug(format_args!(
                "virtio-mmio: {}-byte read at {offset:#x} (registers are 32-bit aligned) returns 0",
                data.len()
            ));
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset as u32).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.status & FAILED == 0 {
                lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug(format_args!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored (registers are 32-bit)",
                data.len()
            ));
            return;
        };
        if !offset.is_multiple_of(4) {
            debug(format_args!(
                "virtio-mmio: unaligned write at {offset:#x} ignored"
            ));
            return;
        }
        self.write_reg(offset as u32, u32::from_le_bytes(bytes));
    }
}

/// Connects a transport at `slot` to KVM: its interrupt eventfd as an irqfd on
/// `slot.irq`, and (if `ioeventfd`) one ioeventfd per queue on QueueNotify with
/// the queue index as datamatch. Returns whether the ioeventfds are in place;
/// where KVM refuses them the transport handles the MMIO exits instead.
pub fn register_with_kvm(
    vm: &VmFd,
    transport: &MmioTransport,
    slot: MmioSlot,
    ioeventfd: bool,
) -> Result<bool, kvm_ioctls::Error> {
    vm.register_irqfd(transport.interrupt().eventfd(), slot.irq)?;
    if !ioeventfd {
        return Ok(false);
    }
    let addr = IoEventAddress::Mmio(slot.base + u64::from(reg::VIRTIO_MMIO_QUEUE_NOTIFY));
    for (i, evt) in transport.queue_evts().iter().enumerate() {
        if let Err(e) = vm.register_ioevent(evt, &addr, i as u32) {
            debug(format_args!(
                "virtio-mmio at {:#x}: KVM_IOEVENTFD for queue {i} failed ({e}); \
                 QueueNotify goes through MMIO exits",
                slot.base
            ));
            for (j, evt) in transport.queue_evts().iter().enumerate().take(i) {
                let _ = vm.unregister_ioevent(evt, &addr, j as u32);
            }
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use vm_memory::Bytes;

    use super::super::echo::{self, EchoDevice};
    use super::super::{device_type, ActivateError};
    use super::*;

    pub(crate) const MEM_SIZE: usize = 0x10_0000;

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// What the mock device saw.
    #[derive(Default, Debug)]
    struct MockLog {
        resets: u32,
        activated: Option<(u64, Vec<virtio_queue::QueueState>)>,
        config_writes: Vec<(u64, Vec<u8>)>,
        interrupt: Option<Arc<Interrupt>>,
        evts: Vec<EventFd>,
    }

    struct Mock {
        log: Arc<Mutex<MockLog>>,
        sizes: Vec<u16>,
        features: u64,
        refuse: bool,
    }

    impl VirtioDevice for Mock {
        fn device_type(&self) -> u32 {
            device_type::RNG
        }
        fn features(&self) -> u64 {
            self.features
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8) | 0x80;
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.refuse {
                return Err(ActivateError::QueueNotReady(0));
            }
            let mut l = self.log.lock().unwrap();
            l.activated = Some((ctx.features, ctx.queues.iter().map(|q| q.state()).collect()));
            l.interrupt = Some(ctx.interrupt);
            l.evts = ctx.queue_evts;
            Ok(())
        }
        fn reset(&mut self) {
            let mut l = self.log.lock().unwrap();
            l.resets += 1;
            l.activated = None;
        }
    }

    /// A driver poking registers.
    pub(crate) struct Drv {
        pub t: MmioTransport,
    }

    impl Drv {
        pub fn r(&mut self, off: u32) -> u32 {
            let mut b = [0u8; 4];
            self.t.read(u64::from(off), &mut b);
            u32::from_le_bytes(b)
        }
        pub fn w(&mut self, off: u32, v: u32) {
            self.t.write(u64::from(off), &v.to_le_bytes());
        }
        pub fn status(&mut self) -> u32 {
            self.r(reg::VIRTIO_MMIO_STATUS)
        }
        pub fn device_features(&mut self) -> u64 {
            self.w(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
            let lo = self.r(reg::VIRTIO_MMIO_DEVICE_FEATURES);
            self.w(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
            let hi = self.r(reg::VIRTIO_MMIO_DEVICE_FEATURES);
            u64::from(lo) | (u64::from(hi) << 32)
        }
        /// Reset, ACK, DRIVER, features, FEATURES_OK; returns the status read back.
        pub fn negotiate(&mut self, features: u64) -> u32 {
            self.w(reg::VIRTIO_MMIO_STATUS, 0);
            self.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
            self.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
            self.w(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
            self.w(reg::VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
            self.w(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
            self.w(reg::VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
            self.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
            self.status()
        }
        pub fn setup_queue(&mut self, i: u32, size: u32, desc: u64, avail: u64, used: u64) {
            self.w(reg::VIRTIO_MMIO_QUEUE_SEL, i);
            self.w(reg::VIRTIO_MMIO_QUEUE_NUM, size);
            for (lo, v) in [
                (reg::VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
                (reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
                (reg::VIRTIO_MMIO_QUEUE_USED_LOW, used),
            ] {
                self.w(lo, v as u32);
                self.w(lo + 4, (v >> 32) as u32);
            }
            self.w(reg::VIRTIO_MMIO_QUEUE_READY, 1);
        }
        pub fn queue_ready(&mut self, i: u32) -> u32 {
            self.w(reg::VIRTIO_MMIO_QUEUE_SEL, i);
            self.r(reg::VIRTIO_MMIO_QUEUE_READY)
        }
    }

    fn mock(sizes: &[u16], features: u64, refuse: bool) -> (Drv, Arc<Mutex<MockLog>>) {
        let log = Arc::new(Mutex::new(MockLog::default()));
        let dev = Mock {
            log: log.clone(),
            sizes: sizes.to_vec(),
            features,
            refuse,
        };
        let t = MmioTransport::new(Arc::new(Mutex::new(dev)), mem()).unwrap();
        (Drv { t }, log)
    }

    const V1: u64 = features::VERSION_1;
    const OK: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK;

    #[test]
    fn identification_registers() {
        let (mut d, log) = mock(&[16, 8], 0b101, false);
        assert_eq!(log.lock().unwrap().resets, 1, "new() resets the device");
        assert_eq!(d.r(reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(d.r(reg::VIRTIO_MMIO_VERSION), 2);
        assert_eq!(d.r(reg::VIRTIO_MMIO_DEVICE_ID), device_type::RNG);
        assert_eq!(d.r(reg::VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(d.device_features(), 0b101 | V1);
        d.w(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
        assert_eq!(d.r(reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
        for (q, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
            d.w(reg::VIRTIO_MMIO_QUEUE_SEL, q);
            assert_eq!(d.r(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), max, "queue {q}");
            assert_eq!(d.r(reg::VIRTIO_MMIO_QUEUE_READY), 0);
        }
        assert_eq!(
            d.r(reg::VIRTIO_MMIO_SHM_LEN_LOW),
            u32::MAX,
            "no shm regions"
        );
        // Write-only and unknown registers read 0; odd sizes and offsets read 0.
        assert_eq!(d.r(reg::VIRTIO_MMIO_QUEUE_NOTIFY), 0);
        assert_eq!(d.r(0x0f0), 0);
        let mut b = [0xffu8; 2];
        d.t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        d.t.read(2, &mut b);
        assert_eq!(b, [0; 4]);
        // Read-only registers ignore writes.
        d.w(reg::VIRTIO_MMIO_MAGIC_VALUE, 1);
        d.w(reg::VIRTIO_MMIO_DEVICE_ID, 1);
        assert_eq!(d.r(reg::VIRTIO_MMIO_MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(d.r(reg::VIRTIO_MMIO_DEVICE_ID), device_type::RNG);
    }

    #[test]
    fn feature_negotiation() {
        let (mut d, _) = mock(&[16], 0b11, false);
        // Without VERSION_1: FEATURES_OK refused.
        assert_eq!(d.negotiate(0b1), ACKNOWLEDGE | DRIVER);
        // A feature the device did not offer: refused.
        assert_eq!(d.negotiate(V1 | 0b100), ACKNOWLEDGE | DRIVER);
        assert_eq!(d.negotiate(V1 | (1 << 40)), ACKNOWLEDGE | DRIVER);
        // A subset with VERSION_1: accepted.
        assert_eq!(d.negotiate(V1 | 0b10), OK);
        assert_eq!(d.t.acked_features(), V1 | 0b10);
        // Feature writes after FEATURES_OK are ignored.
        d.w(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        d.w(reg::VIRTIO_MMIO_DRIVER_FEATURES, 0b11);
        assert_eq!(d.t.acked_features(), V1 | 0b10);
        // Feature writes before DRIVER are ignored.
        d.w(reg::VIRTIO_MMIO_STATUS, 0);
        d.w(reg::VIRTIO_MMIO_DRIVER_FEATURES, 0b1);
        assert_eq!(d.t.acked_features(), 0);
        // Words past 1 hold no features.
        d.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        d.w(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
        d.w(reg::VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        assert_eq!(d.t.acked_features(), 0);
    }

    #[test]
    fn status_transitions() {
        let (mut d, log) = mock(&[16], 0, false);
        // Out of order: DRIVER without ACKNOWLEDGE, FEATURES_OK without DRIVER.
        d.w(reg::VIRTIO_MMIO_STATUS, DRIVER);
        assert_eq!(d.status(), 0);
        d.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | FEATURES_OK);
        assert_eq!(d.status(), ACKNOWLEDGE, "ACK taken, FEATURES_OK not");
        // Several steps in one write are fine.
        d.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        assert_eq!(d.status(), ACKNOWLEDGE | DRIVER);
        // Clearing bits (other than by writing 0) is ignored.
        d.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        assert_eq!(d.status(), ACKNOWLEDGE | DRIVER);
        // The driver cannot set DEVICE_NEEDS_RESET; unknown bits are ignored.
        d.w(
            reg::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET | 0x30,
        );
        assert_eq!(d.status(), ACKNOWLEDGE | DRIVER);
        // DRIVER_OK before FEATURES_OK: ignored, no activation.
        d.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_eq!(d.status(), ACKNOWLEDGE | DRIVER);
        assert!(log.lock().unwrap().activated.is_none());
        // FAILED sticks until reset.
        d.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FAILED);
        assert_eq!(d.status(), ACKNOWLEDGE | DRIVER | FAILED);
        d.w(
            reg::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FAILED | FEATURES_OK,
        );
        assert_eq!(
            d.status() & FEATURES_OK,
            0,
            "no FEATURES_OK after FAILED: acked 0"
        );
        let resets = log.lock().unwrap().resets;
        d.w(reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(d.status(), 0);
        assert_eq!(log.lock().unwrap().resets, resets + 1);
    }

    #[test]
    fn queue_setup_is_validated() {
        let (mut d, _) = mock(&[16, 16, 16, 16, 16, 16], 0, false);
        // Before FEATURES_OK, queue registers are ignored.
        d.setup_queue(0, 8, 0x1000, 0x2000, 0x3000);
        assert_eq!(d.queue_ready(0), 0);
        assert_eq!(d.status(), 0);
        assert_eq!(d.negotiate(V1), OK);
        // Valid.
        d.setup_queue(0, 8, 0x1000, 0x2000, 0x3000);
        assert_eq!(d.queue_ready(0), 1);
        // Writes to an enabled queue are ignored.
        d.w(reg::VIRTIO_MMIO_QUEUE_NUM, 2);
        d.w(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x5000);
        assert_eq!(d.t.queues[0].queue.size(), 8);
        assert_eq!(d.t.queues[0].queue.desc_table(), 0x1000);
        // QueueReady 0 disables it again (before DRIVER_OK).
        d.w(reg::VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(d.queue_ready(0), 0);
        assert_eq!(d.status(), OK);
        // Size not a power of two / above max / 0 / > u16: DEVICE_NEEDS_RESET on ready.
        for (q, size) in [(1, 3), (2, 32), (3, 0), (4, 0x1_0010)] {
            d.w(reg::VIRTIO_MMIO_STATUS, 0);
            assert_eq!(d.negotiate(V1), OK);
            d.setup_queue(q, size, 0x1000, 0x2000, 0x3000);
            assert_eq!(d.queue_ready(q), 0, "queue {q} size {size}");
            assert_eq!(d.status(), OK | DEVICE_NEEDS_RESET, "size {size}");
        }
        // Misaligned rings.
        for (desc, avail, used) in [
            (0x1008, 0x2000, 0x3000),
            (0x1000, 0x2001, 0x3000),
            (0x1000, 0x2000, 0x3002),
        ] {
            d.w(reg::VIRTIO_MMIO_STATUS, 0);
            assert_eq!(d.status(), 0, "reset clears DEVICE_NEEDS_RESET");
            assert_eq!(d.negotiate(V1), OK);
            d.setup_queue(5, 8, desc, avail, used);
            assert_eq!(d.queue_ready(5), 0, "{desc:#x} {avail:#x} {used:#x}");
            assert_eq!(d.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        }
        // A refused value can be corrected before QueueReady.
        d.w(reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(d.negotiate(V1), OK);
        d.w(reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        d.w(reg::VIRTIO_MMIO_QUEUE_NUM, 5);
        d.setup_queue(1, 4, 0x1000, 0x2000, 0x3000);
        assert_eq!(d.queue_ready(1), 1);
        assert_eq!(d.status(), OK);
        // Rings outside guest memory (or straddling its end, or high addresses).
        let end = MEM_SIZE as u64;
        for (desc, avail, used) in [
            (end, 0x2000, 0x3000),
            (end - 16, 0x2000, 0x3000),
            (0x1000, end - 2, 0x3000),
            (0x1000, 0x2000, end - 4),
            (0x1000, 0x2000, 0xffff_ffff_ffff_f000),
            (0x1_0000_1000, 0x2000, 0x3000),
        ] {
            d.w(reg::VIRTIO_MMIO_STATUS, 0);
            assert_eq!(d.negotiate(V1), OK);
            d.setup_queue(0, 16, desc, avail, used);
            assert_eq!(d.queue_ready(0), 0, "{desc:#x} {avail:#x} {used:#x}");
            assert_eq!(d.status(), OK | DEVICE_NEEDS_RESET);
            // And DRIVER_OK is refused while DEVICE_NEEDS_RESET is set.
            d.w(reg::VIRTIO_MMIO_STATUS, OK | DRIVER_OK);
            assert_eq!(d.status() & DRIVER_OK, 0);
        }
        // Nonexistent queue: ignored, nothing set.
        d.w(reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(d.negotiate(V1), OK);
        d.setup_queue(6, 8, 0x1000, 0x2000, 0x3000);
        assert_eq!(d.queue_ready(6), 0);
        assert_eq!(d.status(), OK);
    }

    #[test]
    fn activation_hands_over_queues_and_reset_takes_them_back() {
        let (mut d, log) = mock(&[16, 8], features::RING_EVENT_IDX, false);
        assert_eq!(d.negotiate(V1 | features::RING_EVENT_IDX), OK);
        d.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        // Queue 1 left disabled: handed over with ready == false.
        d.w(reg::VIRTIO_MMIO_STATUS, OK | DRIVER_OK);
        assert_eq!(d.status(), OK | DRIVER_OK);
        assert!(d.t.is_active());
        assert_eq!(d.t.activations(), 1);
        {
            let l = log.lock().unwrap();
            let (f, qs) = l.activated.as_ref().unwrap();
            assert_eq!(*f, V1 | features::RING_EVENT_IDX);
            assert_eq!(qs.len(), 2);
            assert!(qs[0].ready && qs[0].event_idx_enabled);
            assert_eq!(
                (
                    qs[0].size,
                    qs[0].desc_table,
                    qs[0].avail_ring,
                    qs[0].used_ring
                ),
                (16, 0x1000, 0x2000, 0x3000)
            );
            assert!(!qs[1].ready);
            assert_eq!(qs[1].max_size, 8);
            assert_eq!(l.evts.len(), 2);
        }
        // DRIVER_OK again does not activate twice; queue registers are frozen.
        d.w(reg::VIRTIO_MMIO_STATUS, OK | DRIVER_OK);
        assert_eq!(d.t.activations(), 1);
        d.setup_queue(1, 8, 0x4000, 0x5000, 0x6000);
        assert_eq!(d.queue_ready(1), 0);
        // Notifications reach the device's eventfds (MMIO exit path).
        d.w(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        d.w(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        d.w(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 9);
        assert_eq!(d.t.notify_exits(), 3);
        {
            let l = log.lock().unwrap();
            assert_eq!(l.evts[1].read().unwrap(), 2);
            assert!(l.evts[0].read().is_err(), "queue 0 not notified");
            // Interrupts: used ring, then config change.
            let irq = l.interrupt.as_ref().unwrap();
            irq.signal_used_queue();
        }
        assert_eq!(d.r(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        let g = d.r(reg::VIRTIO_MMIO_CONFIG_GENERATION);
        log.lock()
            .unwrap()
            .interrupt
            .as_ref()
            .unwrap()
            .signal_config_change();
        assert_eq!(d.r(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        assert_eq!(d.r(reg::VIRTIO_MMIO_CONFIG_GENERATION), g + 1);
        assert_eq!(d.t.interrupt().eventfd().read().unwrap(), 2);
        d.w(reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(d.r(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        // Reset: device reset, queues and interrupt state cleared.
        d.w(reg::VIRTIO_MMIO_STATUS, 0);
        assert!(log.lock().unwrap().activated.is_none());
        assert!(!d.t.is_active());
        assert_eq!(d.queue_ready(0), 0);
        assert_eq!(d.r(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(d.t.queues[0].queue.size(), 16, "size back to max");
        assert_eq!(d.t.queues[0].queue.desc_table(), 0);
    }

    #[test]
    fn refused_activation_sets_needs_reset() {
        let (mut d, _) = mock(&[16], 0, true);
        assert_eq!(d.negotiate(V1), OK);
        d.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        d.w(reg::VIRTIO_MMIO_STATUS, OK | DRIVER_OK);
        assert_eq!(d.status(), OK | DEVICE_NEEDS_RESET);
        assert!(!d.t.is_active());
    }

    #[test]
    fn config_space_is_forwarded() {
        let (mut d, log) = mock(&[16], 0, false);
        let mut b = [0u8; 2];
        d.t.read(0x105, &mut b);
        assert_eq!(b, [0x85, 0x86]);
        let mut b = [0u8; 8];
        d.t.read(0x1f8, &mut b);
        assert_eq!(b[0], 0xf8);
        d.t.write(0x108, &[1, 2, 3]);
        d.w(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | FAILED);
        d.t.write(0x100, &[9]);
        assert_eq!(log.lock().unwrap().config_writes, vec![(8, vec![1, 2, 3])]);
    }

    #[test]
    fn bad_transport_setup_is_an_error() {
        for sizes in [vec![], vec![3], vec![0], vec![16; MAX_QUEUES + 1]] {
            let dev = Mock {
                log: Arc::default(),
                sizes: sizes.clone(),
                features: 0,
                refuse: false,
            };
            assert!(
                MmioTransport::new(Arc::new(Mutex::new(dev)), mem()).is_err(),
                "{sizes:?}"
            );
        }
    }

    // ---- Split-ring helpers for driving real devices over mock memory. ----

    /// A split virtqueue the test places in guest memory.
    pub(crate) struct Ring {
        pub size: u16,
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        pub next_desc: u16,
        pub avail_idx: u16,
    }

    impl Ring {
        pub fn new(size: u16, base: u64) -> Ring {
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
            Ring {
                size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
            }
        }
        /// Add a chain of (addr, len, device-writable) buffers; returns the head.
        pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_desc;
            for (k, &(addr, len, write)) in bufs.iter().enumerate() {
                let i = self.next_desc % self.size;
                let next = (self.next_desc + 1) % self.size;
                let flags = u16::from(k + 1 < bufs.len()) | if write { 2 } else { 0 };
                let d = self.desc + 16 * u64::from(i);
                mem.write_obj(addr, GuestAddress(d)).unwrap();
                mem.write_obj(len, GuestAddress(d + 8)).unwrap();
                mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
                mem.write_obj(next, GuestAddress(d + 14)).unwrap();
                self.next_desc = self.next_desc.wrapping_add(1);
            }
            let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
            mem.write_obj(head % self.size, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
                .unwrap();
            head % self.size
        }
        pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
            mem.read_obj(GuestAddress(self.used + 2)).unwrap()
        }
        /// Used element `i`: (id, len).
        pub fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
            let e = self.used + 4 + 8 * u64::from(i % self.size);
            (
                mem.read_obj(GuestAddress(e)).unwrap(),
                mem.read_obj(GuestAddress(e + 4)).unwrap(),
            )
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn echo_device_end_to_end_over_mock_memory() {
        let dev = EchoDevice::new();
        let h = dev.handle();
        let m = mem();
        let t = MmioTransport::new(Arc::new(Mutex::new(dev)), m.clone()).unwrap();
        let mut d = Drv { t };
        assert_eq!(d.r(reg::VIRTIO_MMIO_DEVICE_ID), device_type::ECHO);
        assert_eq!(d.negotiate(V1), OK);
        // Config: max_len, echoed, xor key (written byte-wise, read back whole).
        let mut b = [0u8; 4];
        d.t.read(0x100, &mut b);
        assert_eq!(u32::from_le_bytes(b), echo::ECHO_MAX_LEN);
        d.t.write(0x100 + echo::CONFIG_XOR_KEY, &[0x33]);
        d.t.write(0x100, &[1, 2, 3, 4]); // read-only: ignored
        d.t.read(0x100 + echo::CONFIG_XOR_KEY, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x33);
        d.t.read(0x100, &mut b);
        assert_eq!(u32::from_le_bytes(b), echo::ECHO_MAX_LEN);
        let mut tx = Ring::new(8, 0x1000);
        let mut rx = Ring::new(8, 0x2000);
        d.setup_queue(0, 8, tx.desc, tx.avail, tx.used);
        d.setup_queue(1, 8, rx.desc, rx.avail, rx.used);
        d.w(reg::VIRTIO_MMIO_STATUS, OK | DRIVER_OK);
        assert_eq!(d.status(), OK | DRIVER_OK);
        let g0 = d.r(reg::VIRTIO_MMIO_CONFIG_GENERATION);

        // Two messages; the second split in two descriptors; the third RX
        // buffer is too small (truncation).
        let msgs: [&[u8]; 3] = [b"hello", b"split message", b"truncated!"];
        m.write_slice(msgs[0], GuestAddress(0x10000)).unwrap();
        m.write_slice(&msgs[1][..5], GuestAddress(0x11000)).unwrap();
        m.write_slice(&msgs[1][5..], GuestAddress(0x12000)).unwrap();
        m.write_slice(msgs[2], GuestAddress(0x13000)).unwrap();
        rx.add(&m, &[(0x20000, 64, true)]);
        rx.add(&m, &[(0x21000, 4, true), (0x22000, 60, true)]);
        rx.add(&m, &[(0x23000, 4, true)]);
        d.w(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        tx.add(&m, &[(0x10000, 5, false)]);
        tx.add(&m, &[(0x11000, 5, false), (0x12000, 8, false)]);
        tx.add(&m, &[(0x13000, 10, false)]);
        d.w(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        wait_for("3 RX buffers used", || rx.used_idx(&m) == 3);
        wait_for("3 TX buffers used", || tx.used_idx(&m) == 3);
        let x = |s: &[u8]| s.iter().map(|b| b ^ 0x33).collect::<Vec<u8>>();
        assert_eq!(rx.used_elem(&m, 0), (0, 5));
        assert_eq!(rx.used_elem(&m, 1), (1, 13));
        assert_eq!(rx.used_elem(&m, 2), (3, 4));
        let mut got = vec![0u8; 5];
        m.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(got, x(msgs[0]));
        let mut got = vec![0u8; 13];
        m.read_slice(&mut got[..4], GuestAddress(0x21000)).unwrap();
        m.read_slice(&mut got[4..], GuestAddress(0x22000)).unwrap();
        assert_eq!(got, x(msgs[1]));
        let mut got = vec![0u8; 4];
        m.read_slice(&mut got, GuestAddress(0x23000)).unwrap();
        assert_eq!(got, x(&msgs[2][..4]));
        wait_for("used interrupt", || {
            d.r(reg::VIRTIO_MMIO_INTERRUPT_STATUS) & 1 != 0
        });
        assert_eq!(d.r(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        assert_eq!(d.r(reg::VIRTIO_MMIO_CONFIG_GENERATION), g0 + 3);
        d.t.read(0x100 + echo::CONFIG_ECHOED, &mut b);
        assert_eq!(u32::from_le_bytes(b), 3);
        let s = h.stats();
        assert_eq!(
            (s.buffers, s.bytes, s.bad_chains, s.activations),
            (3, 22, 0, 1)
        );

        // A TX chain pointing outside memory is returned unused; the device
        // carries on with the next one.
        tx.add(&m, &[(MEM_SIZE as u64 - 2, 8, false)]);
        m.write_slice(b"ok", GuestAddress(0x14000)).unwrap();
        tx.add(&m, &[(0x14000, 2, false)]);
        rx.add(&m, &[(0x24000, 16, true)]);
        d.w(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        wait_for("4 RX buffers used", || rx.used_idx(&m) == 4);
        assert_eq!(rx.used_elem(&m, 3), (4, 2));
        assert_eq!(h.stats().bad_chains, 1);

        // Reset stops the worker; the key is back to 0.
        d.w(reg::VIRTIO_MMIO_STATUS, 0);
        d.t.read(0x100 + echo::CONFIG_XOR_KEY, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        assert_eq!(h.stats().worker_panics, 0);
    }
}
