//! Bounded, deterministic fuzzing of the virtio-mmio transport with the echo
//! device (no KVM): random register reads and writes of every width, random
//! handshakes, and random descriptor tables, avail rings and memory contents
//! while the device's worker thread serves the queues. Checks: no panic (the
//! test thread's or the worker's), state-machine invariants after every
//! status read, and bounded host memory (a counting global allocator, which is
//! why this test has a file of its own).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::echo::{EchoDevice, EchoHandle};
use vmm::devices::virtio::{features, MmioTransport};
use vmm::devices::BusDevice;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let c = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(c, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only
// counters are updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Guest RAM: two regions with a hole, so buffers can straddle a gap.
const REGIONS: [(u64, usize); 2] = [(0, 0x4_0000), (0x10_0000, 0x1_0000)];
const EPISODES: usize = 150;
const OPS_PER_EPISODE: usize = 600;
/// Host memory the whole run may add on top of where it started.
const ALLOC_BUDGET: usize = 32 << 20;

const REGISTERS: [u64; 27] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0c0, 0x0fc,
    0x100,
];
const STATUS: u64 = 0x070;

struct Fuzz {
    rng: Rng,
    mem: GuestMemoryMmap,
    t: MmioTransport,
    h: EchoHandle,
    /// Ring addresses (desc, avail) the last handshake configured, per queue.
    rings: [(u64, u64, u16); 2],
    checked_statuses: u64,
}

impl Fuzz {
    fn w32(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn addr(&mut self) -> u64 {
        match self.rng.below(10) {
            0 => self.rng.next(),
            1 => 0x4_0000 - self.rng.below(64),
            _ => {
                let (base, len) = REGIONS[self.rng.below(2) as usize];
                base + self.rng.below(len as u64)
            }
        }
    }

    fn value(&mut self) -> u32 {
        match self.rng.below(6) {
            0 => self.rng.next() as u32,
            1 => 1 << self.rng.below(32),
            2 => self.rng.below(0x100) as u32,
            3 => self.rng.below(3) as u32,
            4 => [1, 3, 7, 0xb, 0xf, 0x80, 0x40][self.rng.below(7) as usize],
            _ => self.addr() as u32,
        }
    }

    /// The invariants any status value must satisfy.
    fn check_status(&mut self) {
        let s = self.r32(STATUS);
        assert_eq!(s, self.t.status());
        if s & 0x4 != 0 {
            assert!(s & 0x8 != 0, "DRIVER_OK without FEATURES_OK: {s:#x}");
            assert!(self.t.is_active());
        }
        if s & 0x8 != 0 {
            let acked = self.t.acked_features();
            assert!(
                acked & features::VERSION_1 != 0,
                "FEATURES_OK without VERSION_1"
            );
            assert_eq!(
                acked & !self.t.offered_features(),
                0,
                "unoffered feature accepted"
            );
            assert!(
                s & 0x3 == 0x3,
                "FEATURES_OK without ACKNOWLEDGE|DRIVER: {s:#x}"
            );
        }
        self.checked_statuses += 1;
    }

    /// Reset and drive the device to DRIVER_OK; `sane` picks valid sizes and
    /// in-memory rings, otherwise anything goes.
    fn handshake(&mut self, sane: bool) {
        self.w32(STATUS, 0);
        assert_eq!(self.r32(STATUS), 0, "reset");
        self.w32(STATUS, 1);
        self.w32(STATUS, 3);
        let mut f = features::VERSION_1 | features::RING_EVENT_IDX;
        if !sane && self.rng.chance(10) {
            f ^= 1 << self.rng.below(64);
        }
        for sel in 0..2 {
            self.w32(0x024, sel);
            self.w32(0x020, (f >> (32 * sel)) as u32);
        }
        self.w32(STATUS, 0xb);
        for q in 0..2u32 {
            let (size, desc, avail, used) = if sane {
                let size = 1u16 << self.rng.below(9);
                // Rings of queue q in [q * 0x8000, q * 0x8000 + 0x8000).
                let desc = u64::from(q) * 0x8000;
                let avail = desc + 16 * u64::from(size);
                (size, desc, avail, desc + 0x6000)
            } else {
                let size = [1u16, 2, 4, 8, 16, 64, 256, 3, 512][self.rng.below(9) as usize];
                let desc = self.addr() & !0xf;
                let avail = if self.rng.chance(80) {
                    desc + 16 * u64::from(size)
                } else {
                    self.addr() & !1
                };
                (size, desc, avail, self.addr() & !3)
            };
            self.rings[q as usize] = (desc, avail, size);
            self.w32(0x030, q);
            self.w32(0x038, u32::from(size));
            for (reg, a) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
                self.w32(reg, a as u32);
                self.w32(reg + 4, (a >> 32) as u32);
            }
            self.w32(0x044, 1);
        }
        self.w32(STATUS, 0xf);
        self.check_status();
    }

    /// A random descriptor in one of the configured tables, or an avail entry.
    fn scribble_ring(&mut self) {
        let q = self.rng.below(2) as usize;
        let (desc, avail, size) = self.rings[q];
        let size = u64::from(size.max(1));
        if self.rng.chance(60) {
            let d = desc + 16 * self.rng.below(size);
            let len: u32 = match self.rng.below(4) {
                0 => self.rng.next() as u32,
                1 => 0,
                _ => self.rng.below(0x2000) as u32,
            };
            // Mostly what a driver would write (TX readable, RX writable).
            let flags = if self.rng.chance(70) {
                if q == 1 {
                    2
                } else {
                    0
                }
            } else {
                self.rng.below(8) as u16
            };
            let next = if self.rng.chance(80) {
                self.rng.below(size) as u16
            } else {
                self.rng.next() as u16
            };
            let a = self.addr();
            let _ = self.mem.write_obj(a, GuestAddress(d));
            let _ = self.mem.write_obj(len, GuestAddress(d + 8));
            let _ = self.mem.write_obj(flags, GuestAddress(d + 12));
            let _ = self.mem.write_obj(next, GuestAddress(d + 14));
        } else {
            let slot = avail + 4 + 2 * self.rng.below(size);
            let head = self.rng.below(size + 2) as u16;
            let _ = self.mem.write_obj(head, GuestAddress(slot));
            let idx = if self.rng.chance(97) {
                self.rng.below(3) as u16
            } else {
                self.rng.next() as u16
            };
            let cur: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap_or(0);
            let _ = self
                .mem
                .write_obj(cur.wrapping_add(idx), GuestAddress(avail + 2));
        }
    }

    fn op(&mut self) {
        match self.rng.below(100) {
            0..=4 => {
                let a = self.addr();
                let n = self.rng.below(256) as usize;
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
                let _ = self.mem.write_slice(&bytes, GuestAddress(a));
            }
            5..=24 => self.scribble_ring(),
            25..=27 => {
                let sane = self.rng.chance(50);
                self.handshake(sane)
            }
            28..=59 => {
                let off = if self.rng.chance(80) {
                    REGISTERS[self.rng.below(REGISTERS.len() as u64) as usize]
                        + if self.rng.chance(5) {
                            self.rng.below(4)
                        } else {
                            0
                        }
                } else {
                    self.rng.below(0x1000)
                };
                let width = [4usize, 4, 4, 1, 2, 8][self.rng.below(6) as usize];
                let v = (u64::from(self.value()) | (self.rng.next() << 32)).to_le_bytes();
                self.t.write(off, &v[..width]);
            }
            60..=84 => {
                let off = if self.rng.chance(70) {
                    REGISTERS[self.rng.below(REGISTERS.len() as u64) as usize]
                } else {
                    self.rng.below(0x1000)
                };
                let width = [4usize, 4, 1, 2, 8][self.rng.below(5) as usize];
                let mut b = [0u8; 8];
                self.t.read(off, &mut b[..width]);
            }
            85..=89 => self.check_status(),
            _ => {
                let q = if self.rng.chance(90) {
                    self.rng.below(2) as u32
                } else {
                    self.value()
                };
                self.w32(0x050, q);
            }
        }
    }
}

#[test]
fn random_driver_input_never_panics_or_grows_memory() {
    let mem = GuestMemoryMmap::from_ranges(
        &REGIONS
            .iter()
            .map(|(b, l)| (GuestAddress(*b), *l))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let start = Instant::now();
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let (mut activations, mut buffers, mut bad_chains, mut statuses) = (0, 0, 0, 0);
    for episode in 0..EPISODES {
        let dev = EchoDevice::new();
        let h = dev.handle();
        let t = MmioTransport::new(Arc::new(Mutex::new(dev)), mem.clone()).unwrap();
        let mut f = Fuzz {
            rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (episode as u64 + 1).wrapping_mul(0x1234_5678_9abc)),
            mem: mem.clone(),
            t,
            h,
            rings: [(0x1000, 0x2000, 16), (0x3000, 0x4000, 16)],
            checked_statuses: 0,
        };
        if episode % 2 == 0 {
            // Data episode: one handshake, then only ring contents, notifies
            // and reads, with pauses so the worker keeps up.
            f.handshake(true);
            for i in 0..OPS_PER_EPISODE {
                match f.rng.below(10) {
                    0..=6 => f.scribble_ring(),
                    7 => f.check_status(),
                    _ => {
                        let q = f.rng.below(2) as u32;
                        f.w32(0x050, q);
                    }
                }
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        } else {
            for _ in 0..OPS_PER_EPISODE {
                f.op();
            }
        }
        // Give the worker a moment on the last state, then stop it.
        std::thread::sleep(Duration::from_millis(1));
        f.t.shutdown();
        assert_eq!(f.t.status(), 0);
        assert!(!f.t.is_active());
        let s = f.h.stats();
        assert_eq!(s.worker_panics, 0, "episode {episode}: the worker panicked");
        activations += s.activations;
        buffers += s.buffers;
        bad_chains += s.bad_chains;
        statuses += f.checked_statuses;
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    eprintln!(
        "fuzz: {EPISODES} episodes x {OPS_PER_EPISODE} ops in {:?}: {activations} activations, \
         {buffers} buffers echoed, {bad_chains} bad chains, {statuses} status checks, \
         peak extra heap {} KiB",
        start.elapsed(),
        peak >> 10
    );
    assert!(peak < ALLOC_BUDGET, "peak extra heap {peak} bytes");
    // The fuzzer must reach the interesting states, or it proves nothing.
    assert!(
        activations >= EPISODES as u64 / 4,
        "only {activations} activations"
    );
    // (The worker runs concurrently, so these counts vary a little between
    // runs; ~190 and ~230 here.)
    assert!(
        buffers >= 20 && bad_chains >= 20,
        "buffers {buffers}, bad chains {bad_chains}"
    );
}
