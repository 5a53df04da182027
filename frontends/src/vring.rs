//! The driver side of virtio split rings (virtio 1.x, 2.7).
//!
//! [`DriverRing`] is the ring itself: descriptor table, available ring and used ring at given
//! guest addresses of any [`GuestMemoryMmap`], written and read the way a driver does, with no
//! policy (a fuzzer may publish any head or index). The vsock crate's synthetic guest driver
//! uses it directly.
//!
//! The agent is the vhost frontend inside the guest: it owns the memory the vhost worker
//! reads and writes. [`Arena`] is one anonymous mapping registered with vhost under an
//! *identity* memory table (guest address = agent virtual address), so every address in a
//! descriptor is simply a pointer in the agent. [`SplitQueue`] lays out a split virtqueue
//! (virtio 1.x, 2.6) in an arena and drives it as a virtio driver would: descriptor chains
//! (direct or indirect), available ring, used ring, EVENT_IDX notification suppression,
//! kick and call eventfds.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};

/// Size of one descriptor (`struct vring_desc`).
pub const DESC_SIZE: u64 = 16;
/// Most segments one buffer may have (the size of each indirect table).
pub const MAX_SEGMENTS: usize = 4;

/// Ring and arena errors.
#[derive(Debug, thiserror::Error)]
pub enum VringError {
    /// mmap of the arena failed.
    #[error("mapping {size} bytes of frontend memory: {source}")]
    Map {
        /// Size asked for.
        size: usize,
        /// The error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The arena could not be turned into guest memory.
    #[error("building the identity guest memory: {0}")]
    Memory(String),
    /// The arena is exhausted.
    #[error("frontend memory exhausted: {want} bytes wanted, {left} left")]
    Exhausted {
        /// Bytes wanted.
        want: u64,
        /// Bytes left.
        left: u64,
    },
    /// A guest memory access failed (an address outside the arena).
    #[error("frontend memory access at {addr:#x}: {why}")]
    Access {
        /// Address.
        addr: u64,
        /// Why.
        why: String,
    },
    /// No free descriptors.
    #[error("virtqueue full")]
    Full,
    /// A buffer with no or too many segments.
    #[error("a buffer needs 1..={MAX_SEGMENTS} segments, got {0}")]
    Segments(usize),
    /// The device put an id in the used ring that is not an outstanding buffer.
    #[error("device returned used id {id}, which is not an outstanding buffer")]
    BadUsedId {
        /// The id.
        id: u32,
    },
    /// Waiting for the device timed out.
    #[error("timed out after {0:?} waiting for the device to use buffers")]
    Timeout(Duration),
    /// eventfd / poll failure.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn access(addr: u64, e: impl std::fmt::Display) -> VringError {
    VringError::Access {
        addr,
        why: e.to_string(),
    }
}

/// A split ring seen from the driver: where its three parts are, the next available index to
/// publish and the next used index to read.
#[derive(Debug, Clone)]
pub struct DriverRing {
    /// Entries (a power of two).
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverRing {
    /// A ring of `size` entries at these addresses.
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Self {
        DriverRing {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The legacy contiguous layout from `base`: table, available ring, used ring aligned to 4.
    pub fn contiguous(base: u64, size: u16) -> Self {
        let avail = base + DESC_SIZE * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self::new(size, base, avail, used)
    }

    /// The next available index (buffers put but maybe not yet published count).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Where the driver asks for a used-buffer notification (`used_event`, EVENT_IDX).
    pub fn used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    /// Where the device asks for an available-buffer notification (`avail_event`, EVENT_IDX).
    pub fn avail_event_addr(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }

    /// Writes descriptor `idx` (taken modulo the size) at `at` = the table, or an indirect
    /// table when `at` is given.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        at: Option<u64>,
        idx: u16,
        d: Desc,
    ) -> Result<(), VringError> {
        let addr = match at {
            Some(table) => table + DESC_SIZE * u64::from(idx),
            None => self.desc + DESC_SIZE * u64::from(idx % self.size),
        };
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(addr))
            .map_err(|e| access(addr, e))
    }

    /// Puts `head` (any value) in the next available slot without publishing it.
    pub fn put_avail(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<(), VringError> {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(slot))
            .map_err(|e| access(slot, e))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Makes every put slot visible: stores the available index (release order).
    pub fn publish(&self, mem: &GuestMemoryMmap) -> Result<(), VringError> {
        fence(Ordering::Release);
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .map_err(|e| access(self.avail + 2, e))
    }

    /// [`put_avail`](Self::put_avail) then [`publish`](Self::publish).
    pub fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<(), VringError> {
        self.put_avail(mem, head)?;
        self.publish(mem)
    }

    /// Sets and publishes the available index to any value (fuzzing).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) -> Result<(), VringError> {
        self.avail_idx = idx;
        self.publish(mem)
    }

    /// The next used element the device returned, `(id, len)`, if any, without consuming it.
    pub fn peek_used(&self, mem: &GuestMemoryMmap) -> Result<Option<(u32, u32)>, VringError> {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .map_err(|e| access(self.used + 2, e))?;
        if u16::from_le(idx) == self.used_seen {
            return Ok(None);
        }
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let mut elem = [0u8; 8];
        mem.read_slice(&mut elem, GuestAddress(at))
            .map_err(|e| access(at, e))?;
        Ok(Some((
            u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]),
            u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]),
        )))
    }

    /// Consumes the element [`peek_used`](Self::peek_used) returned.
    pub fn advance_used(&mut self) {
        self.used_seen = self.used_seen.wrapping_add(1);
    }

    /// The next used element, consumed.
    pub fn next_used(&mut self, mem: &GuestMemoryMmap) -> Result<Option<(u32, u32)>, VringError> {
        let u = self.peek_used(mem)?;
        if u.is_some() {
            self.advance_used();
        }
        Ok(u)
    }

    /// Every used element returned since the last call (stops at the first unreadable one).
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        while let Ok(Some(u)) = self.next_used(mem) {
            out.push(u);
        }
        out
    }

    /// The index the driver has consumed the used ring up to.
    pub fn used_seen(&self) -> u16 {
        self.used_seen
    }
}

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor when `flags` has NEXT.
    pub next: u16,
}

/// One anonymous mapping used as vhost "guest memory" with an identity memory table.
#[derive(Debug)]
pub struct Arena {
    mem: Arc<GuestMemoryMmap>,
    base: u64,
    size: u64,
    next: u64,
}

impl Arena {
    /// Maps `size` bytes (rounded up to 4 KiB) and registers them at guest address = their
    /// virtual address.
    pub fn new(size: usize) -> Result<Self, VringError> {
        let size = size.div_ceil(4096) * 4096;
        let region: MmapRegion =
            MmapRegion::new(size).map_err(|source| VringError::Map { size, source })?;
        let base = region.as_ptr() as u64;
        let guest = GuestRegionMmap::new(region, GuestAddress(base))
            .ok_or_else(|| VringError::Memory("region end overflows".into()))?;
        let mem = GuestMemoryMmap::from_regions(vec![guest])
            .map_err(|e| VringError::Memory(e.to_string()))?;
        Ok(Arena {
            mem: Arc::new(mem),
            base,
            size: size as u64,
            next: 0,
        })
    }

    /// The guest memory (for the vhost crate's backends).
    pub fn mem(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(&self.mem)
    }

    /// The identity memory-table entry for `VHOST_SET_MEM_TABLE`.
    pub fn region_info(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.base,
            memory_size: self.size,
            userspace_addr: self.base,
            mmap_offset: 0,
            mmap_handle: -1,
        }
    }

    /// Allocates `len` bytes aligned to `align` (a power of two); returns the guest address.
    /// The memory is zero (fresh anonymous mapping, never reused).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, VringError> {
        let start = (self.base + self.next).next_multiple_of(align.max(1)) - self.base;
        let left = self.size.saturating_sub(start);
        if len > left {
            return Err(VringError::Exhausted { want: len, left });
        }
        self.next = start + len;
        Ok(self.base + start)
    }

    /// Writes `data` at guest address `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), VringError> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|e| access(addr, e))
    }

    /// Reads `buf.len()` bytes at guest address `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), VringError> {
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|e| access(addr, e))
    }
}

/// One segment of a buffer: guest address, length, device-writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (an "in" buffer); else the device reads it.
    pub write: bool,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// Descriptors of the ring the buffer occupies (1 for indirect).
    descs: u16,
    /// Caller's token.
    token: u64,
}

/// `vring_need_event()` (virtio 1.x 2.7.10): should the other side be notified when the index
/// moved from `old` to `new` and it asked for an event at `event`?
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Counters of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Buffers made available.
    pub added: u64,
    /// Buffers returned in the used ring.
    pub used: u64,
    /// Kicks written to the kick eventfd.
    pub kicks: u64,
    /// Kicks suppressed by the device (EVENT_IDX or NO_NOTIFY).
    pub kicks_suppressed: u64,
    /// Call eventfd signals consumed.
    pub calls: u64,
}

/// A split virtqueue driven from the driver side.
#[derive(Debug)]
pub struct SplitQueue {
    mem: Arc<GuestMemoryMmap>,
    ring: DriverRing,
    indirect_tables: Option<u64>,
    event_idx: bool,
    free: Vec<u16>,
    outstanding: Vec<Option<Outstanding>>,
    /// Chains of direct buffers, to return their descriptors.
    chains: Vec<Vec<u16>>,
    /// avail idx at the last notification decision.
    notified_idx: u16,
    /// Kick eventfd (driver → device).
    pub kick: EventFd,
    /// Call eventfd (device → driver).
    pub call: EventFd,
    stats: QueueStats,
}

impl SplitQueue {
    /// Lays out a queue of `size` entries (power of two) in `arena`. `indirect`: each buffer
    /// uses one ring descriptor pointing at an indirect table; `event_idx`: EVENT_IDX was
    /// negotiated.
    pub fn new(
        arena: &mut Arena,
        size: u16,
        indirect: bool,
        event_idx: bool,
    ) -> Result<Self, VringError> {
        let n = u64::from(size);
        let desc = arena.alloc(DESC_SIZE * n, 4096)?;
        let avail = arena.alloc(6 + 2 * n, 4096)?;
        let used = arena.alloc(6 + 8 * n, 4096)?;
        let indirect_tables = if indirect {
            Some(arena.alloc(DESC_SIZE * MAX_SEGMENTS as u64 * n, 4096)?)
        } else {
            None
        };
        let io = |what, source| VringError::Io { what, source };
        Ok(SplitQueue {
            mem: arena.mem(),
            ring: DriverRing::new(size, desc, avail, used),
            indirect_tables,
            event_idx,
            free: (0..size).rev().collect(),
            outstanding: vec![None; usize::from(size)],
            chains: vec![Vec::new(); usize::from(size)],
            notified_idx: 0,
            kick: EventFd::new(EFD_NONBLOCK).map_err(|e| io("eventfd (kick)", e))?,
            call: EventFd::new(EFD_NONBLOCK).map_err(|e| io("eventfd (call)", e))?,
            stats: QueueStats::default(),
        })
    }

    /// `VHOST_SET_VRING_ADDR` data for this queue.
    pub fn config(&self) -> VringConfigData {
        VringConfigData {
            queue_max_size: self.ring.size,
            queue_size: self.ring.size,
            flags: 0,
            desc_table_addr: self.ring.desc,
            used_ring_addr: self.ring.used,
            avail_ring_addr: self.ring.avail,
            log_addr: None,
        }
    }

    /// This queue as vhost ring `index` of a fresh device (base 0, its kick and call).
    pub fn vhost_ring(&self, index: usize) -> crate::vhost::Ring<'_> {
        crate::vhost::Ring {
            index,
            config: self.config(),
            base: 0,
            kick: &self.kick,
            call: &self.call,
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.ring.size
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Buffers made available and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.outstanding.iter().filter(|o| o.is_some()).count()
    }

    /// Ring descriptors a buffer of `segments` segments needs.
    pub fn descs_needed(&self, segments: usize) -> usize {
        if self.indirect_tables.is_some() {
            1
        } else {
            segments
        }
    }

    /// Free ring descriptors.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    fn write_desc(
        &self,
        table: Option<u64>,
        idx: u16,
        seg: Segment,
        flags: u16,
        next: u16,
    ) -> Result<(), VringError> {
        let write = if seg.write {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        let d = Desc {
            addr: seg.addr,
            len: seg.len,
            flags: flags | write,
            next,
        };
        self.ring.write_desc(&self.mem, table, idx, d)
    }

    /// Adds a buffer (not yet visible to the device: call [`publish`](Self::publish)).
    /// `token` comes back from [`pop_used`](Self::pop_used).
    pub fn add(&mut self, segs: &[Segment], token: u64) -> Result<u16, VringError> {
        if segs.is_empty() || segs.len() > MAX_SEGMENTS {
            return Err(VringError::Segments(segs.len()));
        }
        let needed = self.descs_needed(segs.len());
        if self.free.len() < needed {
            return Err(VringError::Full);
        }
        let mut ids = Vec::with_capacity(needed);
        for _ in 0..needed {
            ids.push(self.free.pop().ok_or(VringError::Full)?);
        }
        let head = ids[0];
        if let Some(tables) = self.indirect_tables {
            let table = tables + u64::from(head) * DESC_SIZE * MAX_SEGMENTS as u64;
            for (i, seg) in segs.iter().enumerate() {
                let last = i + 1 == segs.len();
                let flags = if last { 0 } else { VRING_DESC_F_NEXT as u16 };
                let next = if last { 0 } else { i as u16 + 1 };
                self.write_desc(Some(table), i as u16, *seg, flags, next)?;
            }
            let ind = Segment {
                addr: table,
                len: (segs.len() as u64 * DESC_SIZE) as u32,
                write: false,
            };
            self.write_desc(None, head, ind, VRING_DESC_F_INDIRECT as u16, 0)?;
        } else {
            for (i, seg) in segs.iter().enumerate() {
                let last = i + 1 == segs.len();
                let flags = if last { 0 } else { VRING_DESC_F_NEXT as u16 };
                let next = if last { 0 } else { ids[i + 1] };
                self.write_desc(None, ids[i], *seg, flags, next)?;
            }
        }
        self.ring.put_avail(&self.mem, head)?;
        self.outstanding[usize::from(head)] = Some(Outstanding {
            descs: needed as u16,
            token,
        });
        self.chains[usize::from(head)] = ids;
        self.stats.added += 1;
        Ok(head)
    }

    /// Makes the added buffers visible (avail idx, release order) and kicks the device unless
    /// it suppressed notifications. Returns whether it kicked.
    pub fn publish(&mut self) -> Result<bool, VringError> {
        let new = self.ring.avail_idx();
        let old = self.notified_idx;
        if new == old {
            return Ok(false);
        }
        self.ring.publish(&self.mem)?;
        // The index store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        self.notified_idx = new;
        let kick = if self.event_idx {
            let at = self.ring.avail_event_addr();
            let event: u16 = self
                .mem
                .load(GuestAddress(at), Ordering::Acquire)
                .map_err(|e| access(at, e))?;
            need_event(u16::from_le(event), new, old)
        } else {
            let flags: u16 = self
                .mem
                .load(GuestAddress(self.ring.used), Ordering::Acquire)
                .map_err(|e| access(self.ring.used, e))?;
            u16::from_le(flags) & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if kick {
            self.kick.write(1).map_err(|source| VringError::Io {
                what: "kick eventfd",
                source,
            })?;
            self.stats.kicks += 1;
        } else {
            self.stats.kicks_suppressed += 1;
        }
        Ok(kick)
    }

    /// Takes the next used buffer: `(token, bytes written by the device)`.
    pub fn pop_used(&mut self) -> Result<Option<(u64, u32)>, VringError> {
        let Some((id, len)) = self.ring.peek_used(&self.mem)? else {
            return Ok(None);
        };
        let out = usize::try_from(id)
            .ok()
            .and_then(|i| self.outstanding.get_mut(i))
            .and_then(Option::take)
            .ok_or(VringError::BadUsedId { id })?;
        let chain = std::mem::take(&mut self.chains[id as usize]);
        debug_assert_eq!(chain.len(), usize::from(out.descs));
        self.free.extend(chain.into_iter().rev());
        self.ring.advance_used();
        self.stats.used += 1;
        if self.event_idx {
            // Ask for a call when the next buffer is used.
            let at = self.ring.used_event_addr();
            self.mem
                .store(
                    self.ring.used_seen().to_le(),
                    GuestAddress(at),
                    Ordering::Release,
                )
                .map_err(|e| access(at, e))?;
        }
        Ok(Some((out.token, len)))
    }

    /// Waits until a buffer is used (polling the call eventfd), up to `timeout`.
    pub fn wait_used(&mut self, timeout: Duration) -> Result<(u64, u32), VringError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.pop_used()? {
                return Ok(u);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VringError::Timeout(timeout));
            }
            if self.wait_call(left.min(Duration::from_millis(100)))? {
                self.stats.calls += 1;
            }
        }
    }

    /// Waits for the call eventfd up to `timeout`; true if it fired (it is then cleared).
    pub fn wait_call(&self, timeout: Duration) -> Result<bool, VringError> {
        let fired =
            poll_readable(&[self.call.as_raw_fd()], timeout).map_err(|source| VringError::Io {
                what: "poll (call eventfd)",
                source,
            })?;
        if fired.first() == Some(&true) {
            let _ = self.call.read();
            return Ok(true);
        }
        Ok(false)
    }
}

use std::os::fd::{AsRawFd, RawFd};

/// poll(2) for readability on `fds`; returns one flag per fd (all false on timeout).
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> std::io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(pfds
            .iter()
            .map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
            .collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal device: consumes available buffers in order and writes `fill` into writable
    /// segments, the way vhost would, through the same memory.
    fn device_use(
        arena: &Arena,
        q: &SplitQueue,
        seen: &mut u16,
        fill: u8,
    ) -> Vec<(u16, Vec<Segment>)> {
        let mem = arena.mem();
        let avail_idx: u16 = mem
            .load(GuestAddress(q.ring.avail + 2), Ordering::Acquire)
            .unwrap();
        let mut out = Vec::new();
        while *seen != avail_idx {
            let slot = u64::from(*seen % q.ring.size);
            let head: u16 = mem
                .read_obj(GuestAddress(q.ring.avail + 4 + 2 * slot))
                .unwrap();
            let mut segs = Vec::new();
            let read_desc = |at: u64| {
                let mut raw = [0u8; 16];
                mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
                let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap());
                let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
                let flags = u16::from_le_bytes(raw[12..14].try_into().unwrap());
                let next = u16::from_le_bytes(raw[14..16].try_into().unwrap());
                (addr, len, flags, next)
            };
            let (addr, len, flags, mut next) = read_desc(q.ring.desc + u64::from(head) * 16);
            let (table, mut cur) = if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
                assert_eq!(len % 16, 0);
                (Some(addr), read_desc(addr))
            } else {
                (None, (addr, len, flags, next))
            };
            loop {
                segs.push(Segment {
                    addr: cur.0,
                    len: cur.1,
                    write: cur.2 & VRING_DESC_F_WRITE as u16 != 0,
                });
                if cur.2 & VRING_DESC_F_NEXT as u16 == 0 {
                    break;
                }
                next = cur.3;
                cur = match table {
                    Some(t) => read_desc(t + u64::from(next) * 16),
                    None => read_desc(q.ring.desc + u64::from(next) * 16),
                };
            }
            let mut written = 0u32;
            for s in segs.iter().filter(|s| s.write) {
                arena.write(s.addr, &vec![fill; s.len as usize]).unwrap();
                written += s.len;
            }
            let used_idx: u16 = mem
                .load(GuestAddress(q.ring.used + 2), Ordering::Acquire)
                .unwrap();
            let at = q.ring.used + 4 + 8 * u64::from(used_idx % q.ring.size);
            mem.write_obj(u32::from(head), GuestAddress(at)).unwrap();
            mem.write_obj(written, GuestAddress(at + 4)).unwrap();
            mem.store(
                used_idx.wrapping_add(1),
                GuestAddress(q.ring.used + 2),
                Ordering::Release,
            )
            .unwrap();
            out.push((head, segs));
            *seen = seen.wrapping_add(1);
        }
        out
    }

    #[test]
    fn identity_arena() {
        let mut a = Arena::new(10_000).unwrap();
        let info = a.region_info();
        assert_eq!(info.guest_phys_addr, info.userspace_addr);
        assert_eq!(info.memory_size, 12_288);
        let x = a.alloc(100, 64).unwrap();
        assert_eq!(x % 64, 0);
        a.write(x, b"hello").unwrap();
        // Identity: the guest address is a pointer in this process.
        // SAFETY: x is inside the live arena mapping.
        assert_eq!(
            unsafe { std::slice::from_raw_parts(x as *const u8, 5) },
            b"hello"
        );
        assert!(matches!(
            a.alloc(1 << 20, 8),
            Err(VringError::Exhausted { .. })
        ));
        assert!(a.write(x + 20_000, b"x").is_err());
    }

    #[test]
    fn need_event_matches_the_spec() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(4, 6, 3));
        assert!(!need_event(7, 6, 3));
        assert!(need_event(u16::MAX, 1, u16::MAX - 1), "wrapping");
    }

    fn exercise(indirect: bool, event_idx: bool) {
        let mut a = Arena::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&mut a, 8, indirect, event_idx).unwrap();
        let buf = a.alloc(4096, 64).unwrap();
        let mut seen = 0u16;
        let mut total_used = 0;
        for round in 0..5u64 {
            // Fill the ring.
            let mut added = 0u64;
            while q.free_descs() >= q.descs_needed(2) {
                let off = added * 64;
                q.add(
                    &[
                        Segment {
                            addr: buf + off,
                            len: 12,
                            write: false,
                        },
                        Segment {
                            addr: buf + off + 12,
                            len: 20,
                            write: true,
                        },
                    ],
                    round * 100 + added,
                )
                .unwrap();
                added += 1;
            }
            assert_eq!(added, if indirect { 8 } else { 4 });
            assert!(matches!(
                q.add(
                    &[Segment {
                        addr: buf,
                        len: 1,
                        write: false
                    }; 2],
                    0
                ),
                Err(VringError::Full)
            ));
            q.publish().unwrap();
            let used = device_use(&a, &q, &mut seen, round as u8 + 1);
            assert_eq!(used.len() as u64, added);
            for (_, segs) in &used {
                assert_eq!(segs.len(), 2);
                assert!(!segs[0].write && segs[1].write);
            }
            for i in 0..added {
                let (tok, len) = q.wait_used(Duration::from_millis(10)).unwrap();
                assert_eq!(tok, round * 100 + i);
                assert_eq!(len, 20);
                total_used += 1;
            }
            assert_eq!(q.pop_used().unwrap(), None);
            assert_eq!(q.in_flight(), 0);
            let mut got = [0u8; 20];
            a.read(buf + 12, &mut got).unwrap();
            assert_eq!(got, [round as u8 + 1; 20]);
        }
        assert_eq!(q.stats().used, total_used);
        // Nobody wrote avail_event / flags: with EVENT_IDX the event stays 0, so only the
        // first publish (0 -> n crosses 0) kicks; without it every publish kicks.
        let s = q.stats();
        if event_idx {
            assert_eq!((s.kicks, s.kicks_suppressed), (1, 4));
        } else {
            assert_eq!((s.kicks, s.kicks_suppressed), (5, 0));
        }
        assert!(matches!(
            q.wait_used(Duration::from_millis(1)),
            Err(VringError::Timeout(_))
        ));
    }

    #[test]
    fn direct_and_indirect_rings() {
        for indirect in [false, true] {
            for event_idx in [false, true] {
                exercise(indirect, event_idx);
            }
        }
    }

    #[test]
    fn hostile_used_ids_are_rejected() {
        let mut a = Arena::new(1 << 16).unwrap();
        let mut q = SplitQueue::new(&mut a, 8, false, false).unwrap();
        let mem = a.mem();
        // The device claims buffer 5 was used, which was never made available.
        mem.write_obj(5u32, GuestAddress(q.ring.used + 4)).unwrap();
        mem.store(1u16, GuestAddress(q.ring.used + 2), Ordering::Release)
            .unwrap();
        assert!(matches!(q.pop_used(), Err(VringError::BadUsedId { id: 5 })));
        mem.write_obj(u32::MAX, GuestAddress(q.ring.used + 4))
            .unwrap();
        assert!(matches!(q.pop_used(), Err(VringError::BadUsedId { .. })));
        assert!(matches!(q.add(&[], 0), Err(VringError::Segments(0))));
    }
}
