//! A synthetic guest driver: split virtqueues laid out in plain guest memory
//! (`GuestMemoryMmap`), filled the way the Linux virtio-vsock driver fills
//! them (TX: header descriptor + data descriptor; RX: one device-writable
//! descriptor for header and data). Used by the unit tests, the fuzz test
//! and the packets/s benchmark (`testbed_bench::vsock_core`); it is not a
//! device model.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::device;
use crate::proto::*;
use crate::{VsockChannel, PKT_HEADER_SIZE};

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

pub use frontends::vring::{Desc, DriverRing};
pub use frontends::vsock_hdr::Hdr;

/// The device-side `Queue` over `ring`.
fn device_queue(ring: &DriverRing) -> Queue {
    let mut q = Queue::new(ring.size).unwrap_or_else(|_| unreachable!("valid queue size"));
    q.set_size(ring.size);
    q.set_desc_table_address(Some(ring.desc as u32), Some((ring.desc >> 32) as u32));
    q.set_avail_ring_address(Some(ring.avail as u32), Some((ring.avail >> 32) as u32));
    q.set_used_ring_address(Some(ring.used as u32), Some((ring.used >> 32) as u32));
    q.set_ready(true);
    q
}

/// Writes one descriptor of the ring's table (index taken modulo the size); a write outside
/// the driver's memory is a bug of the driver's layout, and fuzzed values stay inside the
/// table, so it is ignored.
pub fn desc(
    ring: &DriverRing,
    mem: &GuestMemoryMmap,
    idx: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let _ = ring.write_desc(
        mem,
        None,
        idx,
        Desc {
            addr,
            len,
            flags,
            next,
        },
    );
}

/// Queue size of the synthetic driver.
pub const DRIVER_QUEUE_SIZE: u16 = 128;
/// RX buffer payload size (Linux VIRTIO_VSOCK_DEFAULT_RX_BUF_SIZE).
pub const RX_BUF_DATA: u32 = 4096;
const TX_SLOTS: u16 = DRIVER_QUEUE_SIZE / 2;
const TX_SLOT_SIZE: u64 = (PKT_HEADER_SIZE as u64 + MAX_PKT_BUF_SIZE as u64 + 4095) & !4095;
const RX_SLOT_SIZE: u64 = (PKT_HEADER_SIZE as u64 + RX_BUF_DATA as u64 + 4095) & !4095;
const RX_RING_BASE: u64 = 0x1_0000;
const TX_RING_BASE: u64 = 0x2_0000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = RX_BUFS + RX_SLOT_SIZE * DRIVER_QUEUE_SIZE as u64;
/// Guest memory size of the driver.
pub const MEM_SIZE: u64 = TX_BUFS + TX_SLOT_SIZE * TX_SLOTS as u64;

/// A guest-side driver plus the device-side queues, over real guest memory.
pub struct GuestDriver {
    pub mem: GuestMemoryMmap,
    pub rx: DriverRing,
    pub tx: DriverRing,
    pub rxq: Queue,
    pub txq: Queue,
    pub guest_cid: u64,
    tx_free: Vec<u16>,
    rx_free: Vec<u16>,
    scattered_inflight: bool,
}

impl GuestDriver {
    /// A driver with every RX buffer offered.
    pub fn new(guest_cid: u64) -> GuestDriver {
        let mut d = GuestDriver::new_without_rx(guest_cid);
        d.fill_rx();
        d
    }

    /// A driver that has offered no RX buffer yet.
    pub fn new_without_rx(guest_cid: u64) -> GuestDriver {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .unwrap_or_else(|e| panic!("test guest memory of {MEM_SIZE} bytes: {e}"));
        let rx = DriverRing::contiguous(RX_RING_BASE, DRIVER_QUEUE_SIZE);
        let tx = DriverRing::contiguous(TX_RING_BASE, DRIVER_QUEUE_SIZE);
        let rxq = device_queue(&rx);
        let txq = device_queue(&tx);
        GuestDriver {
            mem,
            rx,
            tx,
            rxq,
            txq,
            guest_cid,
            tx_free: (0..TX_SLOTS).rev().collect(),
            rx_free: (0..DRIVER_QUEUE_SIZE).rev().collect(),
            scattered_inflight: false,
        }
    }

    /// Offers every free RX buffer to the device.
    pub fn fill_rx(&mut self) {
        while let Some(slot) = self.rx_free.pop() {
            let addr = RX_BUFS + RX_SLOT_SIZE * slot as u64;
            desc(
                &self.rx,
                &self.mem,
                slot,
                addr,
                PKT_HEADER_SIZE as u32 + RX_BUF_DATA,
                VRING_DESC_F_WRITE,
                0,
            );
            let _ = self.rx.push_avail(&self.mem, slot);
        }
    }

    /// RX buffers the device may still fill.
    pub fn rx_offered(&self) -> usize {
        DRIVER_QUEUE_SIZE as usize - self.rx_free.len()
    }

    /// Queues one TX packet (header + data descriptors); false when the ring is full.
    pub fn send(&mut self, hdr: Hdr, data: &[u8]) -> bool {
        self.reclaim_tx();
        let Some(slot) = self.tx_free.pop() else {
            return false;
        };
        let data = &data[..data.len().min(MAX_PKT_BUF_SIZE as usize)];
        let base = TX_BUFS + TX_SLOT_SIZE * slot as u64;
        let _ = self.mem.write_slice(&hdr.to_bytes(), GuestAddress(base));
        let (h, dd) = (2 * slot, 2 * slot + 1);
        if data.is_empty() {
            desc(&self.tx, &self.mem, h, base, PKT_HEADER_SIZE as u32, 0, 0);
        } else {
            let daddr = base + PKT_HEADER_SIZE as u64;
            let _ = self.mem.write_slice(data, GuestAddress(daddr));
            desc(
                &self.tx,
                &self.mem,
                h,
                base,
                PKT_HEADER_SIZE as u32,
                VRING_DESC_F_NEXT,
                dd,
            );
            desc(&self.tx, &self.mem, dd, daddr, data.len() as u32, 0, 0);
        }
        let _ = self.tx.push_avail(&self.mem, h);
        true
    }

    /// Whether TX chains are still waiting for the device.
    pub fn tx_pending(&mut self) -> bool {
        self.reclaim_tx();
        self.tx_free.len() < TX_SLOTS as usize
    }

    /// Queues one TX packet with header and data spread over descriptors of
    /// `piece` bytes each (the header split too), as Linux does for paged
    /// skbs. Needs an idle TX ring; false otherwise.
    pub fn send_scattered(&mut self, hdr: Hdr, data: &[u8], piece: usize) -> bool {
        if self.tx_pending() {
            return false;
        }
        let data = &data[..data.len().min(MAX_PKT_BUF_SIZE as usize)];
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        let piece = piece
            .max(bytes.len().div_ceil(DRIVER_QUEUE_SIZE as usize))
            .max(1);
        let _ = self.mem.write_slice(&bytes, GuestAddress(TX_BUFS));
        let pieces = bytes.len().div_ceil(piece);
        for k in 0..pieces {
            let off = k * piece;
            let len = piece.min(bytes.len() - off);
            let last = k + 1 == pieces;
            desc(
                &self.tx,
                &self.mem,
                k as u16,
                TX_BUFS + off as u64,
                len as u32,
                if last { 0 } else { VRING_DESC_F_NEXT },
                k as u16 + 1,
            );
        }
        self.tx_free.clear();
        self.scattered_inflight = true;
        let _ = self.tx.push_avail(&self.mem, 0);
        true
    }

    fn reclaim_tx(&mut self) {
        for (id, _) in self.tx.take_used(&self.mem) {
            if self.scattered_inflight && id == 0 {
                self.scattered_inflight = false;
                self.tx_free = (0..TX_SLOTS).rev().collect();
                continue;
            }
            let slot = (id / 2) as u16;
            if id % 2 == 0 && slot < TX_SLOTS && !self.tx_free.contains(&slot) {
                self.tx_free.push(slot);
            }
        }
    }

    /// A header from this guest to the host.
    pub fn hdr(&self, src_port: u32, dst_port: u32, op: u16) -> Hdr {
        Hdr {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            ty: TYPE_STREAM,
            op,
            buf_alloc: 256 * 1024,
            ..Hdr::default()
        }
    }

    /// Runs the device side once (TX then RX, until quiet).
    pub fn pump<C: VsockChannel>(&mut self, chan: &mut C) {
        device::process_queues(&self.mem, &mut self.rxq, &mut self.txq, chan);
    }

    /// Packets the device delivered since the last call; their buffers go
    /// back to the free list (offer them again with [`GuestDriver::fill_rx`]).
    pub fn recv(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, len) in self.rx.take_used(&self.mem) {
            let slot = id as u16;
            if id >= DRIVER_QUEUE_SIZE as u32 {
                continue;
            }
            self.rx_free.push(slot);
            if (len as usize) < PKT_HEADER_SIZE {
                continue;
            }
            let base = RX_BUFS + RX_SLOT_SIZE * slot as u64;
            let mut hb = [0u8; PKT_HEADER_SIZE];
            let _ = self.mem.read_slice(&mut hb, GuestAddress(base));
            // A full header's worth of bytes always parses.
            let hdr = Hdr::parse(&hb).unwrap_or_default();
            let n = (len as usize - PKT_HEADER_SIZE).min(RX_BUF_DATA as usize);
            let mut data = vec![0u8; n];
            let _ = self
                .mem
                .read_slice(&mut data, GuestAddress(base + PKT_HEADER_SIZE as u64));
            out.push((hdr, data));
        }
        out
    }
}
