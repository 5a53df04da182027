//! Address buses (port I/O and MMIO): devices register address ranges; vCPU exits
//! are dispatched to the device whose range contains the whole access.
//!
//! Later virtio-mmio devices plug in with [`Bus::insert`] on the MMIO bus,
//! normally at windows from [`crate::arch::x86_64::layout::MMIO_DEVICES_START`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A device on a bus. `offset` is relative to the base the device was inserted at.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of bus registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a registered one.
    #[error("bus range {base:#x}+{len:#x} overlaps a registered device at {other:#x}")]
    Overlap {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
        /// Base of the device it collides with.
        other: u64,
    },
    /// Zero length or base + len overflows.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// A bus: a sorted map of non-overlapping ranges to devices. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Bus {
    devices: Arc<RwLock<BTreeMap<u64, Entry>>>,
    unclaimed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<(u64, u64)> = self
            .devices
            .read()
            .map(|d| d.iter().map(|(b, e)| (*b, e.len)).collect())
            .unwrap_or_default();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `dev` for `base..base+len`.
    pub fn insert(&self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        // The closest range starting below `end` is the only candidate for overlap.
        if let Some((b, e)) = map.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other: *b,
                });
            }
        }
        map.insert(base, Entry { len, dev });
        Ok(())
    }

    /// The device covering `addr..addr+size`, with the offset of `addr` in it.
    pub fn resolve(&self, addr: u64, size: usize) -> Option<(SharedDevice, u64)> {
        let map = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let (base, e) = map.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= e.len).then(|| (e.dev.clone(), offset))
    }

    /// Dispatch a read; `false` if no device claims the whole access (then `data` is untouched).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, off)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; `false` if no device claims the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, off)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(off, data);
                true
            }
            None => false,
        }
    }

    /// Count an unclaimed access; `true` when it should be logged (the first 16,
    /// then every power of two), so a guest hammering a port cannot flood the log.
    pub fn note_unclaimed(&self) -> bool {
        let n = self.unclaimed.fetch_add(1, Ordering::Relaxed) + 1;
        n <= 16 || n.is_power_of_two()
    }

    /// Number of unclaimed accesses so far.
    pub fn unclaimed_count(&self) -> u64 {
        self.unclaimed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Dummy {
        last: Option<(u64, Vec<u8>)>,
    }
    impl BusDevice for Dummy {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn insert_and_overlap() {
        let bus = Bus::new();
        let d: SharedDevice = Arc::new(Mutex::new(Dummy::default()));
        bus.insert(d.clone(), 0x100, 0x10).unwrap();
        bus.insert(d.clone(), 0x110, 0x10).unwrap();
        bus.insert(d.clone(), 0xf0, 0x10).unwrap();
        for (b, l) in [(0x100, 1), (0x10f, 1), (0xff, 2), (0x90, 0x100), (0x11f, 4)] {
            assert!(
                matches!(bus.insert(d.clone(), b, l), Err(BusError::Overlap { .. })),
                "{b:#x}+{l:#x}"
            );
        }
        assert!(matches!(
            bus.insert(d.clone(), 0x200, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(d, u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn dispatch_with_offsets() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Dummy::default()));
        bus.insert(dev.clone(), 0xd000_0000, 0x1000).unwrap();
        let mut buf = [0u8; 4];
        assert!(bus.read(0xd000_0008, &mut buf));
        assert_eq!(buf, [8, 9, 10, 11]);
        assert!(bus.write(0xd000_0ffc, &[1, 2, 3, 4]));
        assert_eq!(dev.lock().unwrap().last, Some((0xffc, vec![1, 2, 3, 4])));
        // Straddling the end, below, above: unclaimed.
        assert!(!bus.write(0xd000_0ffd, &[1, 2, 3, 4]));
        assert!(!bus.read(0xcfff_ffff, &mut buf));
        assert!(!bus.read(0xd000_1000, &mut buf));
        assert_eq!(
            buf,
            [8, 9, 10, 11],
            "unclaimed read leaves the buffer alone"
        );
    }

    #[test]
    fn unclaimed_logging_is_rate_limited() {
        let bus = Bus::new();
        let logged = (0..1000).filter(|_| bus.note_unclaimed()).count();
        // 1..=16, then 32, 64, 128, 256, 512.
        assert_eq!(logged, 16 + 5);
        assert_eq!(bus.unclaimed_count(), 1000);
    }
}
