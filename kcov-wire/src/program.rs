//! Fuzz programs: bounded sequences of operations on one guest vhost device, shared by the
//! guest agent (which executes and mutates them, `guest-agent/src/fuzz.rs`) and the host
//! (`cargo xtask fuzz`, which stores, shows and replays them).
//!
//! # Binary form
//!
//! A program is a sequence of ops, each an opcode byte followed by its fixed little-endian
//! arguments (two ops, [`Op::SetMemTable`] and [`Op::WriteBytes`], carry a count byte first).
//! [`Program::decode`] reads **any** bytes without panicking: an opcode byte is taken modulo
//! the number of ops, counts are clamped, an op cut short ends the program, and at most
//! [`MAX_OPS`] ops of at most [`MAX_PROGRAM_BYTES`] bytes are read. [`Program::encode`] writes
//! the canonical form, so `decode(encode(p)) == p` for every program `decode` returns and
//! `encode(decode(b))` is a fixed point.
//!
//! # Meaning (executed by the agent)
//!
//! Values are kept as given (a queue index of 200 is passed to the kernel as 200); the agent
//! only bounds what touches its own memory: ring and buffer writes go into its arena of
//! [`ARENA_BYTES`] (offsets taken modulo the arena), device slots are `slot % SLOTS`, and
//! memory-table regions point into the arena or at addresses that cannot be the agent's own
//! ([`RegionBase`]), so the kernel may be handed nonsense but never the agent's heap.

use std::fmt;

/// Most ops in one program.
pub const MAX_OPS: usize = 64;
/// Most bytes of an encoded program (also the bound of a `FuzzInput` frame's data).
pub const MAX_PROGRAM_BYTES: usize = 4096;
/// Device fd slots a program may hold open at once.
pub const SLOTS: u8 = 2;
/// Most regions of one [`Op::SetMemTable`] (the kernel's own limit is 64 by default: a count
/// beyond it is tried through [`Op::SetMemTable`]'s `claimed` field).
pub const MAX_REGIONS: usize = 4;
/// Most bytes one [`Op::WriteBytes`] writes.
pub const MAX_WRITE_BYTES: usize = 128;
/// The agent's arena (guest-physical 0.. in the identity memory table).
pub const ARENA_BYTES: u64 = 256 << 10;
/// Queues whose rings the agent lays out in its arena (vhost-net and vhost-vsock: 0 = rx,
/// 1 = tx).
pub const RING_QUEUES: u8 = 2;
/// Arena offset of queue 0's ring; queue q's is `RING_BASE + q * RING_STRIDE`.
pub const RING_BASE: u64 = 0;
/// Bytes per queue's ring area: descriptor table, then the avail ring at +4 KiB and the used
/// ring at +8 KiB (room for [`MAX_RING_NUM`] entries).
pub const RING_STRIDE: u64 = 16 << 10;
/// Largest ring size the agent lays out (bigger `num`s are still passed to the kernel).
pub const MAX_RING_NUM: u16 = 256;
/// Arena offset where data buffers start (descriptor addresses in the seeds point here).
pub const BUF_BASE: u64 = 64 << 10;
/// Longest wait an [`Op::Wait`] may ask for, in milliseconds.
pub const MAX_WAIT_MS: u8 = 20;
/// Where the host puts a campaign's corpus in the initramfs: the agent runs every file there
/// (a program each) before it mutates, and then only those when `testbed.fuzz_time=0`.
pub const CORPUS_DIR: &str = "/etc/testbed/corpus";
/// The agent's status when a program did not finish within [`EXEC_TIMEOUT_MS`] (a hang).
pub const HANG_STATUS: i32 = 75;
/// How long one program may run before the agent calls it a hang, in milliseconds.
pub const EXEC_TIMEOUT_MS: u64 = 10_000;
/// The workload name a campaign's coverage is streamed under.
pub fn workload_name(target: Target) -> String {
    format!("fuzz-{}", target.name())
}

/// The device a campaign fuzzes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `/dev/vhost-net` with a tap backend.
    VhostNet,
    /// `/dev/vhost-vsock`.
    VhostVsock,
}

impl Target {
    /// Both targets.
    pub const ALL: [Target; 2] = [Target::VhostNet, Target::VhostVsock];

    /// `vhost-net` or `vhost-vsock`.
    pub fn name(self) -> &'static str {
        match self {
            Target::VhostNet => "vhost-net",
            Target::VhostVsock => "vhost-vsock",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The device node.
    pub fn device(self) -> &'static str {
        match self {
            Target::VhostNet => "/dev/vhost-net",
            Target::VhostVsock => "/dev/vhost-vsock",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a memory-table region's `userspace_addr` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegionBase {
    /// The agent's arena plus `offset % ARENA_BYTES`.
    Arena,
    /// The PROT_NONE guard page right after the arena (plus `offset % 4096`).
    Guard,
    /// `offset` itself, masked below 64 KiB (never mapped in the agent: mmap_min_addr).
    Low,
    /// A kernel address (`0xffff_8880_0000_0000 + offset % 4 GiB`).
    Kernel,
    /// A non-canonical address (`0x8000_0000_0000_0000 | offset`).
    NonCanonical,
}

impl RegionBase {
    const ALL: [RegionBase; 5] = [
        RegionBase::Arena,
        RegionBase::Guard,
        RegionBase::Low,
        RegionBase::Kernel,
        RegionBase::NonCanonical,
    ];

    fn from_u8(b: u8) -> RegionBase {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    fn name(self) -> &'static str {
        match self {
            RegionBase::Arena => "arena",
            RegionBase::Guard => "guard",
            RegionBase::Low => "low",
            RegionBase::Kernel => "kernel",
            RegionBase::NonCanonical => "noncanonical",
        }
    }
}

/// One memory-table region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// `guest_phys_addr`.
    pub gpa: u64,
    /// `memory_size`.
    pub size: u64,
    /// What `userspace_addr` is based on.
    pub base: RegionBase,
    /// Offset from the base (see [`RegionBase`]).
    pub offset: u64,
}

/// Which file descriptor an fd-taking ioctl gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FdKind {
    /// The queue's own eventfd (kick or call) or, for a backend, the tap / the queue's eventfd.
    Good,
    /// -1 (unset / detach).
    None,
    /// An fd of the wrong kind (an eventfd where a socket is expected, /dev/null otherwise).
    Wrong,
    /// A number that is no open fd.
    Closed,
}

impl FdKind {
    const ALL: [FdKind; 4] = [FdKind::Good, FdKind::None, FdKind::Wrong, FdKind::Closed];

    fn from_u8(b: u8) -> FdKind {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    fn name(self) -> &'static str {
        match self {
            FdKind::Good => "good",
            FdKind::None => "none",
            FdKind::Wrong => "wrong",
            FdKind::Closed => "closed",
        }
    }
}

/// Which per-queue fd ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VringFd {
    /// VHOST_SET_VRING_KICK.
    Kick,
    /// VHOST_SET_VRING_CALL.
    Call,
    /// VHOST_SET_VRING_ERR.
    Err,
}

impl VringFd {
    const ALL: [VringFd; 3] = [VringFd::Kick, VringFd::Call, VringFd::Err];

    fn from_u8(b: u8) -> VringFd {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    fn name(self) -> &'static str {
        match self {
            VringFd::Kick => "kick",
            VringFd::Call => "call",
            VringFd::Err => "err",
        }
    }
}

/// A kernel bug [`Op::Provoke`] asks lkdtm for (`/sys/kernel/debug/provoke-crash/DIRECT`):
/// the fuzzer's self-test of its own crash pipeline, never produced by mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProvokeKind {
    /// `panic()` (lkdtm `PANIC`).
    Panic,
    /// A slab use-after-free read (lkdtm `READ_AFTER_FREE`): a KASAN report.
    KasanUseAfterFree,
    /// `WARN_ON` (lkdtm `WARNING`): fatal under `panic_on_warn=1`.
    Warn,
    /// The writing task sleeps uninterruptibly forever (lkdtm `HUNG_TASK`): a task stuck in
    /// the kernel while the rest of the guest runs.
    HungTask,
    /// A CPU spins with preemption off forever (lkdtm `SOFTLOCKUP`): on a one-vCPU guest the
    /// whole kernel stops.
    SoftLockup,
    /// One task takes the same spinlock twice (lkdtm `SPINLOCKUP`, written twice): lockdep
    /// reports the lock held on the return to user space and then the recursive locking,
    /// and the CPU spins forever (the whole one-vCPU guest stops).
    Lockdep,
}

impl ProvokeKind {
    /// Every kind, in encoding order.
    pub const ALL: [ProvokeKind; 6] = [
        ProvokeKind::Panic,
        ProvokeKind::KasanUseAfterFree,
        ProvokeKind::Warn,
        ProvokeKind::HungTask,
        ProvokeKind::SoftLockup,
        ProvokeKind::Lockdep,
    ];

    fn from_u8(b: u8) -> ProvokeKind {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    /// The crash type name lkdtm's `DIRECT` file takes.
    pub fn lkdtm_name(self) -> &'static str {
        match self {
            ProvokeKind::Panic => "PANIC",
            ProvokeKind::KasanUseAfterFree => "READ_AFTER_FREE",
            ProvokeKind::Warn => "WARNING",
            ProvokeKind::HungTask => "HUNG_TASK",
            ProvokeKind::SoftLockup => "SOFTLOCKUP",
            ProvokeKind::Lockdep => "SPINLOCKUP",
        }
    }

    /// How many times the crash type is written to lkdtm's `DIRECT` (`SPINLOCKUP` takes the
    /// lock once per write: the second write is the bug).
    pub fn lkdtm_writes(self) -> usize {
        match self {
            ProvokeKind::Lockdep => 2,
            _ => 1,
        }
    }

    /// Our short name (`panic`, `kasan-uaf`, `warn`, `hang`, `lockup`, `lockdep`).
    pub fn name(self) -> &'static str {
        match self {
            ProvokeKind::Panic => "panic",
            ProvokeKind::KasanUseAfterFree => "kasan-uaf",
            ProvokeKind::Warn => "warn",
            ProvokeKind::HungTask => "hang",
            ProvokeKind::SoftLockup => "lockup",
            ProvokeKind::Lockdep => "lockdep",
        }
    }

    /// The kind named `name` ([`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<ProvokeKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Where lkdtm takes a crash type name (CONFIG_LKDTM, debugfs).
pub const LKDTM_DIRECT: &str = "/sys/kernel/debug/provoke-crash/DIRECT";

/// One operation. `slot` picks one of [`SLOTS`] device fds (`slot % SLOTS`); `queue` is
/// passed to the kernel as is, and picks the arena ring `queue % RING_QUEUES` for the
/// agent-side ring ops.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Op {
    /// open() the target device into the slot (closing what was there).
    Open { slot: u8 },
    /// close() the slot's fd.
    Close { slot: u8 },
    /// VHOST_SET_OWNER (on the executing thread, which carries the common handle).
    SetOwner { slot: u8 },
    /// VHOST_RESET_OWNER.
    ResetOwner { slot: u8 },
    /// VHOST_GET_FEATURES (remembered as the slot's offered features).
    GetFeatures { slot: u8 },
    /// VHOST_SET_FEATURES with the offered features `& mask`.
    SetFeatures { slot: u8, mask: u64 },
    /// VHOST_SET_FEATURES with exactly `features`.
    SetFeaturesRaw { slot: u8, features: u64 },
    /// VHOST_SET_BACKEND_FEATURES.
    SetBackendFeatures { slot: u8, features: u64 },
    /// VHOST_SET_MEM_TABLE with these regions followed by `claimed_extra` zeroed ones
    /// (`nregions = regions.len() + claimed_extra`: beyond the kernel's limit it must refuse).
    SetMemTable {
        slot: u8,
        claimed_extra: u8,
        regions: Vec<Region>,
    },
    /// VHOST_SET_MEM_TABLE with one region: guest-physical 0.. = the whole arena.
    SetMemIdentity { slot: u8 },
    /// VHOST_SET_VRING_NUM.
    SetVringNum { slot: u8, queue: u8, num: u32 },
    /// VHOST_SET_VRING_BASE (also resets the agent's avail index shadow for the queue).
    SetVringBase { slot: u8, queue: u8, num: u32 },
    /// VHOST_GET_VRING_BASE.
    GetVringBase { slot: u8, queue: u8 },
    /// VHOST_SET_VRING_ADDR with ring addresses at arena offsets (`% ARENA_BYTES`, alignment
    /// not fixed) and a raw log address.
    SetVringAddr {
        slot: u8,
        queue: u8,
        flags: u32,
        desc: u32,
        avail: u32,
        used: u32,
        log: u64,
    },
    /// VHOST_SET_VRING_ADDR with the arena's layout for the queue.
    SetVringAddrDefault { slot: u8, queue: u8 },
    /// VHOST_SET_VRING_KICK / CALL / ERR.
    SetVringFd {
        slot: u8,
        which: VringFd,
        queue: u8,
        fd: FdKind,
    },
    /// VHOST_NET_SET_BACKEND (good = the tap).
    NetSetBackend { slot: u8, queue: u8, fd: FdKind },
    /// VHOST_VSOCK_SET_GUEST_CID.
    VsockSetCid { slot: u8, cid: u64 },
    /// VHOST_VSOCK_SET_RUNNING.
    VsockSetRunning { slot: u8, running: u32 },
    /// Writes descriptor `index % num` of the queue's arena ring.
    WriteDesc {
        queue: u8,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// Puts `head` into the queue's avail ring and publishes the new avail index.
    PushAvail { queue: u8, head: u16 },
    /// Writes bytes into the arena at `offset % ARENA_BYTES` (headers, payloads, rings).
    WriteBytes { offset: u32, bytes: Vec<u8> },
    /// Signals the queue's kick eventfd.
    Kick { queue: u8 },
    /// Sleeps `min(ms, MAX_WAIT_MS)` milliseconds (lets the workers run).
    Wait { ms: u8 },
    /// A non-blocking AF_VSOCK connect to (cid, port) (vhost-vsock RX traffic).
    VsockConnect { cid: u32, port: u32 },
    /// Sends a `len`-byte Ethernet frame out of the tap over AF_PACKET (vhost-net RX traffic).
    SendPacket { len: u16 },
    /// Writes the kind's lkdtm name to [`LKDTM_DIRECT`], **only** when the boot enables it
    /// (`testbed.fuzz_provoke=1`, set by `cargo xtask fuzz --self-test` and `--provoke`);
    /// otherwise the agent skips it. [`Op::random`] never draws it and [`Program::mutate`]
    /// removes it, so a campaign's mutants never provoke.
    Provoke { kind: ProvokeKind },
}

/// Number of opcodes.
pub const NUM_OPS: u8 = 27;
/// Opcodes [`Op::random`] draws from: all but [`Op::Provoke`] (the last).
const RANDOM_OPS: u8 = NUM_OPS - 1;

/// A fuzz program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Program {
    /// The ops in order.
    pub ops: Vec<Op>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take()?))
    }
}

impl Op {
    /// Whether this is an [`Op::Provoke`].
    pub fn is_provoke(&self) -> bool {
        matches!(self, Op::Provoke { .. })
    }

    /// The opcode byte.
    pub fn opcode(&self) -> u8 {
        match self {
            Op::Open { .. } => 0,
            Op::Close { .. } => 1,
            Op::SetOwner { .. } => 2,
            Op::ResetOwner { .. } => 3,
            Op::GetFeatures { .. } => 4,
            Op::SetFeatures { .. } => 5,
            Op::SetFeaturesRaw { .. } => 6,
            Op::SetBackendFeatures { .. } => 7,
            Op::SetMemTable { .. } => 8,
            Op::SetMemIdentity { .. } => 9,
            Op::SetVringNum { .. } => 10,
            Op::SetVringBase { .. } => 11,
            Op::GetVringBase { .. } => 12,
            Op::SetVringAddr { .. } => 13,
            Op::SetVringAddrDefault { .. } => 14,
            Op::SetVringFd { .. } => 15,
            Op::NetSetBackend { .. } => 16,
            Op::VsockSetCid { .. } => 17,
            Op::VsockSetRunning { .. } => 18,
            Op::WriteDesc { .. } => 19,
            Op::PushAvail { .. } => 20,
            Op::WriteBytes { .. } => 21,
            Op::Kick { .. } => 22,
            Op::Wait { .. } => 23,
            Op::VsockConnect { .. } => 24,
            Op::SendPacket { .. } => 25,
            Op::Provoke { .. } => 26,
        }
    }

    /// Reads one op; `None` when the bytes end inside it.
    fn read(r: &mut Reader<'_>) -> Option<Op> {
        let code = r.u8()? % NUM_OPS;
        Some(match code {
            0 => Op::Open { slot: r.u8()? },
            1 => Op::Close { slot: r.u8()? },
            2 => Op::SetOwner { slot: r.u8()? },
            3 => Op::ResetOwner { slot: r.u8()? },
            4 => Op::GetFeatures { slot: r.u8()? },
            5 => Op::SetFeatures {
                slot: r.u8()?,
                mask: r.u64()?,
            },
            6 => Op::SetFeaturesRaw {
                slot: r.u8()?,
                features: r.u64()?,
            },
            7 => Op::SetBackendFeatures {
                slot: r.u8()?,
                features: r.u64()?,
            },
            8 => {
                let slot = r.u8()?;
                let claimed_extra = r.u8()?;
                let n = usize::from(r.u8()?) % (MAX_REGIONS + 1);
                let mut regions = Vec::with_capacity(n);
                for _ in 0..n {
                    regions.push(Region {
                        gpa: r.u64()?,
                        size: r.u64()?,
                        base: RegionBase::from_u8(r.u8()?),
                        offset: r.u64()?,
                    });
                }
                Op::SetMemTable {
                    slot,
                    claimed_extra,
                    regions,
                }
            }
            9 => Op::SetMemIdentity { slot: r.u8()? },
            10 => Op::SetVringNum {
                slot: r.u8()?,
                queue: r.u8()?,
                num: r.u32()?,
            },
            11 => Op::SetVringBase {
                slot: r.u8()?,
                queue: r.u8()?,
                num: r.u32()?,
            },
            12 => Op::GetVringBase {
                slot: r.u8()?,
                queue: r.u8()?,
            },
            13 => Op::SetVringAddr {
                slot: r.u8()?,
                queue: r.u8()?,
                flags: r.u32()?,
                desc: r.u32()?,
                avail: r.u32()?,
                used: r.u32()?,
                log: r.u64()?,
            },
            14 => Op::SetVringAddrDefault {
                slot: r.u8()?,
                queue: r.u8()?,
            },
            15 => Op::SetVringFd {
                slot: r.u8()?,
                which: VringFd::from_u8(r.u8()?),
                queue: r.u8()?,
                fd: FdKind::from_u8(r.u8()?),
            },
            16 => Op::NetSetBackend {
                slot: r.u8()?,
                queue: r.u8()?,
                fd: FdKind::from_u8(r.u8()?),
            },
            17 => Op::VsockSetCid {
                slot: r.u8()?,
                cid: r.u64()?,
            },
            18 => Op::VsockSetRunning {
                slot: r.u8()?,
                running: r.u32()?,
            },
            19 => Op::WriteDesc {
                queue: r.u8()?,
                index: r.u16()?,
                addr: r.u64()?,
                len: r.u32()?,
                flags: r.u16()?,
                next: r.u16()?,
            },
            20 => Op::PushAvail {
                queue: r.u8()?,
                head: r.u16()?,
            },
            21 => {
                let offset = r.u32()?;
                let n = usize::from(r.u8()?) % (MAX_WRITE_BYTES + 1);
                let end = r.pos.checked_add(n)?;
                let bytes = r.buf.get(r.pos..end)?.to_vec();
                r.pos = end;
                Op::WriteBytes { offset, bytes }
            }
            22 => Op::Kick { queue: r.u8()? },
            23 => Op::Wait { ms: r.u8()? },
            24 => Op::VsockConnect {
                cid: r.u32()?,
                port: r.u32()?,
            },
            25 => Op::SendPacket { len: r.u16()? },
            _ => Op::Provoke {
                kind: ProvokeKind::from_u8(r.u8()?),
            },
        })
    }

    /// Appends the canonical encoding (regions and bytes beyond the limits are cut).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.opcode());
        let u16 = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_le_bytes());
        let u32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
        let u64 = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        match self {
            Op::Open { slot }
            | Op::Close { slot }
            | Op::SetOwner { slot }
            | Op::ResetOwner { slot }
            | Op::GetFeatures { slot }
            | Op::SetMemIdentity { slot } => out.push(*slot),
            Op::SetFeatures { slot, mask: v }
            | Op::SetFeaturesRaw { slot, features: v }
            | Op::SetBackendFeatures { slot, features: v }
            | Op::VsockSetCid { slot, cid: v } => {
                out.push(*slot);
                u64(out, *v);
            }
            Op::SetMemTable {
                slot,
                claimed_extra,
                regions,
            } => {
                out.push(*slot);
                out.push(*claimed_extra);
                let regions = &regions[..regions.len().min(MAX_REGIONS)];
                out.push(regions.len() as u8);
                for g in regions {
                    u64(out, g.gpa);
                    u64(out, g.size);
                    out.push(
                        RegionBase::ALL
                            .iter()
                            .position(|b| *b == g.base)
                            .unwrap_or(0) as u8,
                    );
                    u64(out, g.offset);
                }
            }
            Op::SetVringNum { slot, queue, num } | Op::SetVringBase { slot, queue, num } => {
                out.push(*slot);
                out.push(*queue);
                u32(out, *num);
            }
            Op::GetVringBase { slot, queue } | Op::SetVringAddrDefault { slot, queue } => {
                out.push(*slot);
                out.push(*queue);
            }
            Op::SetVringAddr {
                slot,
                queue,
                flags,
                desc,
                avail,
                used,
                log,
            } => {
                out.push(*slot);
                out.push(*queue);
                u32(out, *flags);
                u32(out, *desc);
                u32(out, *avail);
                u32(out, *used);
                u64(out, *log);
            }
            Op::SetVringFd {
                slot,
                which,
                queue,
                fd,
            } => {
                out.push(*slot);
                out.push(VringFd::ALL.iter().position(|w| w == which).unwrap_or(0) as u8);
                out.push(*queue);
                out.push(FdKind::ALL.iter().position(|k| k == fd).unwrap_or(0) as u8);
            }
            Op::NetSetBackend { slot, queue, fd } => {
                out.push(*slot);
                out.push(*queue);
                out.push(FdKind::ALL.iter().position(|k| k == fd).unwrap_or(0) as u8);
            }
            Op::VsockSetRunning { slot, running } => {
                out.push(*slot);
                u32(out, *running);
            }
            Op::WriteDesc {
                queue,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                out.push(*queue);
                u16(out, *index);
                u64(out, *addr);
                u32(out, *len);
                u16(out, *flags);
                u16(out, *next);
            }
            Op::PushAvail { queue, head } => {
                out.push(*queue);
                u16(out, *head);
            }
            Op::WriteBytes { offset, bytes } => {
                u32(out, *offset);
                let bytes = &bytes[..bytes.len().min(MAX_WRITE_BYTES)];
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
            Op::Kick { queue } => out.push(*queue),
            Op::Wait { ms } => out.push(*ms),
            Op::VsockConnect { cid, port } => {
                u32(out, *cid);
                u32(out, *port);
            }
            Op::SendPacket { len } => u16(out, *len),
            Op::Provoke { kind } => {
                out.push(ProvokeKind::ALL.iter().position(|k| k == kind).unwrap_or(0) as u8)
            }
        }
    }

    /// A random op for `target`, its values drawn towards the ones the kernel checks against
    /// (never [`Op::Provoke`]).
    pub fn random(rng: &mut Rng, target: Target) -> Op {
        let slot = if rng.below(8) == 0 { 1 } else { 0 };
        let queue = rng.queue();
        match rng.below(u64::from(RANDOM_OPS)) {
            0 => Op::Open { slot },
            1 => Op::Close { slot },
            2 => Op::SetOwner { slot },
            3 => Op::ResetOwner { slot },
            4 => Op::GetFeatures { slot },
            5 => Op::SetFeatures {
                slot,
                mask: rng.mask(),
            },
            6 => Op::SetFeaturesRaw {
                slot,
                features: rng.mask(),
            },
            7 => Op::SetBackendFeatures {
                slot,
                features: rng.interesting() & 0x3f,
            },
            8 => {
                let n = rng.below(MAX_REGIONS as u64 + 1) as usize;
                let regions = (0..n)
                    .map(|_| Region {
                        gpa: rng.addr(),
                        size: rng.size(),
                        base: RegionBase::ALL[rng.below(RegionBase::ALL.len() as u64) as usize],
                        offset: rng.addr(),
                    })
                    .collect();
                Op::SetMemTable {
                    slot,
                    claimed_extra: if rng.below(8) == 0 {
                        rng.interesting() as u8
                    } else {
                        0
                    },
                    regions,
                }
            }
            9 => Op::SetMemIdentity { slot },
            10 => Op::SetVringNum {
                slot,
                queue,
                num: rng.num(),
            },
            11 => Op::SetVringBase {
                slot,
                queue,
                num: rng.num(),
            },
            12 => Op::GetVringBase { slot, queue },
            13 => Op::SetVringAddr {
                slot,
                queue,
                flags: rng.below(2) as u32,
                desc: rng.addr() as u32,
                avail: rng.addr() as u32,
                used: rng.addr() as u32,
                log: rng.addr(),
            },
            14 => Op::SetVringAddrDefault { slot, queue },
            15 => Op::SetVringFd {
                slot,
                which: VringFd::ALL[rng.below(3) as usize],
                queue,
                fd: rng.fd(),
            },
            16 => Op::NetSetBackend {
                slot,
                queue,
                fd: rng.fd(),
            },
            17 => Op::VsockSetCid {
                slot,
                cid: rng.interesting(),
            },
            18 => Op::VsockSetRunning {
                slot,
                running: rng.below(3) as u32,
            },
            19 => Op::WriteDesc {
                queue,
                index: rng.num() as u16,
                addr: rng.addr(),
                len: rng.size() as u32,
                flags: rng.below(8) as u16,
                next: rng.num() as u16,
            },
            20 => Op::PushAvail {
                queue,
                head: rng.num() as u16,
            },
            21 => {
                let n = 1 + rng.below(MAX_WRITE_BYTES as u64) as usize;
                let bytes = (0..n).map(|_| rng.interesting() as u8).collect();
                Op::WriteBytes {
                    offset: rng.addr() as u32,
                    bytes,
                }
            }
            22 => Op::Kick { queue },
            23 => Op::Wait {
                ms: rng.below(u64::from(MAX_WAIT_MS) + 1) as u8,
            },
            24 => Op::VsockConnect {
                cid: match target {
                    Target::VhostVsock if rng.below(2) == 0 => 100,
                    _ => rng.interesting() as u32,
                },
                port: rng.interesting() as u32,
            },
            _ => Op::SendPacket {
                len: rng.size() as u16,
            },
        }
    }
}

impl Program {
    /// Decodes any bytes (see the module docs): never panics, bounded by [`MAX_OPS`] and
    /// [`MAX_PROGRAM_BYTES`].
    pub fn decode(bytes: &[u8]) -> Program {
        let bytes = &bytes[..bytes.len().min(MAX_PROGRAM_BYTES)];
        let mut r = Reader { buf: bytes, pos: 0 };
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS && r.pos < bytes.len() {
            match Op::read(&mut r) {
                Some(op) => ops.push(op),
                None => break,
            }
        }
        Program { ops }
    }

    /// The canonical bytes: at most [`MAX_OPS`] ops and [`MAX_PROGRAM_BYTES`] bytes (ops that
    /// would not fit are left out).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut op_bytes = Vec::new();
        for op in self.ops.iter().take(MAX_OPS) {
            op_bytes.clear();
            op.write(&mut op_bytes);
            if out.len() + op_bytes.len() > MAX_PROGRAM_BYTES {
                break;
            }
            out.extend_from_slice(&op_bytes);
        }
        out
    }

    /// A program that opens the device, takes ownership (so a vhost worker exists) and then
    /// provokes `kind`: the self-test's input for that kind of crash.
    pub fn provoke(kind: ProvokeKind) -> Program {
        Program {
            ops: vec![
                Op::Open { slot: 0 },
                Op::SetOwner { slot: 0 },
                Op::Provoke { kind },
                Op::Close { slot: 0 },
            ],
        }
    }

    /// A program that sets the device up the way a driver would and moves data once: the
    /// campaign's first corpus entry.
    pub fn seed(target: Target) -> Program {
        let mut ops = vec![
            Op::Open { slot: 0 },
            Op::SetOwner { slot: 0 },
            Op::GetFeatures { slot: 0 },
            Op::SetFeatures {
                slot: 0,
                mask: u64::MAX,
            },
            Op::SetMemIdentity { slot: 0 },
        ];
        for queue in 0..RING_QUEUES {
            ops.extend([
                Op::SetVringNum {
                    slot: 0,
                    queue,
                    num: 64,
                },
                Op::SetVringBase {
                    slot: 0,
                    queue,
                    num: 0,
                },
                Op::SetVringAddrDefault { slot: 0, queue },
                Op::SetVringFd {
                    slot: 0,
                    which: VringFd::Kick,
                    queue,
                    fd: FdKind::Good,
                },
                Op::SetVringFd {
                    slot: 0,
                    which: VringFd::Call,
                    queue,
                    fd: FdKind::Good,
                },
            ]);
        }
        // An RX buffer (device-writable), a TX buffer (driver-written).
        let rx = BUF_BASE;
        let tx = BUF_BASE + 4096;
        ops.extend([
            Op::WriteDesc {
                queue: 0,
                index: 0,
                addr: rx,
                len: 2048,
                flags: 2,
                next: 0,
            },
            Op::PushAvail { queue: 0, head: 0 },
        ]);
        match target {
            Target::VhostNet => {
                for queue in 0..RING_QUEUES {
                    ops.push(Op::NetSetBackend {
                        slot: 0,
                        queue,
                        fd: FdKind::Good,
                    });
                }
                // virtio_net_hdr_mrg_rxbuf (12 bytes, zero) + an Ethernet frame.
                let mut frame = vec![0u8; 12];
                frame.extend_from_slice(&[0xff; 6]);
                frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
                frame.resize(12 + 60, 0x5a);
                ops.extend([
                    Op::WriteBytes {
                        offset: tx as u32,
                        bytes: frame,
                    },
                    Op::WriteDesc {
                        queue: 1,
                        index: 0,
                        addr: tx,
                        len: 72,
                        flags: 0,
                        next: 0,
                    },
                    Op::PushAvail { queue: 1, head: 0 },
                    Op::Kick { queue: 1 },
                    Op::Kick { queue: 0 },
                    Op::SendPacket { len: 60 },
                ]);
            }
            Target::VhostVsock => {
                // virtio_vsock_hdr: src_cid 100, dst_cid 2, src/dst port, len 0, type STREAM,
                // op REQUEST.
                let mut hdr = Vec::new();
                hdr.extend_from_slice(&100u64.to_le_bytes());
                hdr.extend_from_slice(&2u64.to_le_bytes());
                hdr.extend_from_slice(&1234u32.to_le_bytes());
                hdr.extend_from_slice(&5678u32.to_le_bytes());
                hdr.extend_from_slice(&0u32.to_le_bytes());
                hdr.extend_from_slice(&1u16.to_le_bytes());
                hdr.extend_from_slice(&1u16.to_le_bytes());
                hdr.extend_from_slice(&0u32.to_le_bytes());
                hdr.extend_from_slice(&65536u32.to_le_bytes());
                hdr.extend_from_slice(&0u32.to_le_bytes());
                ops.extend([
                    Op::VsockSetCid { slot: 0, cid: 100 },
                    Op::VsockSetRunning {
                        slot: 0,
                        running: 1,
                    },
                    Op::Kick { queue: 0 },
                    Op::VsockConnect {
                        cid: 100,
                        port: 1234,
                    },
                    Op::WriteBytes {
                        offset: tx as u32,
                        bytes: hdr,
                    },
                    Op::WriteDesc {
                        queue: 1,
                        index: 0,
                        addr: tx,
                        len: 44,
                        flags: 0,
                        next: 0,
                    },
                    Op::PushAvail { queue: 1, head: 0 },
                    Op::Kick { queue: 1 },
                ]);
            }
        }
        ops.extend([
            Op::Wait { ms: 10 },
            Op::GetVringBase { slot: 0, queue: 0 },
            Op::GetVringBase { slot: 0, queue: 1 },
            Op::Close { slot: 0 },
        ]);
        Program { ops }
    }

    /// A mutant of `self`: 1 to 4 changes (an op's argument bytes flipped or set to
    /// interesting values, an op inserted, deleted, duplicated or swapped, or a splice with
    /// `other`). The result stays within [`MAX_OPS`] and [`MAX_PROGRAM_BYTES`] and holds no
    /// [`Op::Provoke`] (those of `self` and `other` are left out).
    pub fn mutate(&self, rng: &mut Rng, target: Target, other: Option<&Program>) -> Program {
        let mut ops = self.ops.clone();
        let changes = 1 + rng.below(4);
        for _ in 0..changes {
            let n = ops.len() as u64;
            match rng.below(10) {
                0..=3 if n > 0 => {
                    let i = rng.below(n) as usize;
                    ops[i] = mutate_op(&ops[i], rng);
                }
                4 | 5 => {
                    let i = rng.below(n + 1) as usize;
                    ops.insert(i, Op::random(rng, target));
                }
                6 if n > 0 => {
                    ops.remove(rng.below(n) as usize);
                }
                7 if n > 0 => {
                    let i = rng.below(n) as usize;
                    let op = ops[i].clone();
                    ops.insert(rng.below(n + 1) as usize, op);
                }
                8 if n > 1 => {
                    let (i, j) = (rng.below(n) as usize, rng.below(n) as usize);
                    ops.swap(i, j);
                }
                9 => {
                    if let Some(o) = other.filter(|o| !o.ops.is_empty()) {
                        let cut = rng.below(n + 1) as usize;
                        let from = rng.below(o.ops.len() as u64) as usize;
                        ops.truncate(cut);
                        ops.extend(o.ops[from..].iter().cloned());
                    }
                }
                _ => {
                    let i = rng.below(n + 1) as usize;
                    ops.insert(i, Op::random(rng, target));
                }
            }
            ops.truncate(MAX_OPS);
        }
        ops.retain(|op| !op.is_provoke());
        // Through the canonical form: the byte bound holds and what runs is what is sent.
        Program::decode(&Program { ops }.encode())
    }
}

/// One op with its argument bytes changed (the opcode stays).
fn mutate_op(op: &Op, rng: &mut Rng) -> Op {
    let mut b = Vec::new();
    op.write(&mut b);
    if b.len() < 2 {
        return op.clone();
    }
    let args = b.len() - 1;
    match rng.below(3) {
        0 => {
            let i = 1 + rng.below(args as u64) as usize;
            b[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = 1 + rng.below(args as u64) as usize;
            b[i] = rng.interesting() as u8;
        }
        _ => {
            let width = [2usize, 4, 8][rng.below(3) as usize].min(args);
            let i = 1 + rng.below((args - width + 1) as u64) as usize;
            let v = rng.interesting().to_le_bytes();
            b[i..i + width].copy_from_slice(&v[..width]);
        }
    }
    let mut r = Reader { buf: &b, pos: 0 };
    Op::read(&mut r).unwrap_or_else(|| op.clone())
}

/// A small deterministic PRNG (xorshift64*), so a campaign's mutations are reproducible from
/// its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// Values that kernels compare against: limits, powers of two and their neighbours.
const INTERESTING: [u64; 24] = [
    0,
    1,
    2,
    3,
    4,
    8,
    16,
    32,
    63,
    64,
    100,
    127,
    128,
    255,
    256,
    1024,
    4095,
    4096,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0xffff_ffff,
    u64::MAX,
];

impl Rng {
    /// A generator from a seed (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// An interesting value, sometimes off by one, sometimes random.
    pub fn interesting(&mut self) -> u64 {
        let v = INTERESTING[self.below(INTERESTING.len() as u64) as usize];
        match self.below(8) {
            0 => v.wrapping_add(1),
            1 => v.wrapping_sub(1),
            2 => self.next_u64(),
            _ => v,
        }
    }

    fn queue(&mut self) -> u8 {
        match self.below(16) {
            0 => self.interesting() as u8,
            n => (n % 2) as u8,
        }
    }

    fn num(&mut self) -> u32 {
        match self.below(4) {
            0 => self.interesting() as u32,
            _ => 1 << self.below(9),
        }
    }

    fn mask(&mut self) -> u64 {
        match self.below(4) {
            0 => u64::MAX,
            1 => self.interesting(),
            2 => u64::MAX ^ (1 << self.below(64)),
            _ => self.next_u64(),
        }
    }

    /// Mostly inside the arena, sometimes anywhere.
    fn addr(&mut self) -> u64 {
        match self.below(4) {
            0 => self.interesting(),
            1 => BUF_BASE + self.below(ARENA_BYTES - BUF_BASE),
            _ => self.below(ARENA_BYTES / 16) * 16,
        }
    }

    fn size(&mut self) -> u64 {
        match self.below(4) {
            0 => self.interesting(),
            1 => ARENA_BYTES,
            _ => self.below(4096),
        }
    }

    fn fd(&mut self) -> FdKind {
        match self.below(8) {
            0 => FdKind::None,
            1 => FdKind::Wrong,
            2 => FdKind::Closed,
            _ => FdKind::Good,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Open { slot } => write!(f, "open slot={slot}"),
            Op::Close { slot } => write!(f, "close slot={slot}"),
            Op::SetOwner { slot } => write!(f, "VHOST_SET_OWNER slot={slot}"),
            Op::ResetOwner { slot } => write!(f, "VHOST_RESET_OWNER slot={slot}"),
            Op::GetFeatures { slot } => write!(f, "VHOST_GET_FEATURES slot={slot}"),
            Op::SetFeatures { slot, mask } => {
                write!(f, "VHOST_SET_FEATURES slot={slot} offered&{mask:#x}")
            }
            Op::SetFeaturesRaw { slot, features } => {
                write!(f, "VHOST_SET_FEATURES slot={slot} {features:#x}")
            }
            Op::SetBackendFeatures { slot, features } => {
                write!(f, "VHOST_SET_BACKEND_FEATURES slot={slot} {features:#x}")
            }
            Op::SetMemTable {
                slot,
                claimed_extra,
                regions,
            } => {
                write!(
                    f,
                    "VHOST_SET_MEM_TABLE slot={slot} nregions={}+{claimed_extra}",
                    regions.len()
                )?;
                for g in regions {
                    write!(
                        f,
                        " [gpa={:#x} size={:#x} uaddr={}+{:#x}]",
                        g.gpa,
                        g.size,
                        g.base.name(),
                        g.offset
                    )?;
                }
                Ok(())
            }
            Op::SetMemIdentity { slot } => write!(f, "VHOST_SET_MEM_TABLE slot={slot} identity"),
            Op::SetVringNum { slot, queue, num } => {
                write!(f, "VHOST_SET_VRING_NUM slot={slot} q={queue} num={num}")
            }
            Op::SetVringBase { slot, queue, num } => {
                write!(f, "VHOST_SET_VRING_BASE slot={slot} q={queue} num={num}")
            }
            Op::GetVringBase { slot, queue } => {
                write!(f, "VHOST_GET_VRING_BASE slot={slot} q={queue}")
            }
            Op::SetVringAddr {
                slot,
                queue,
                flags,
                desc,
                avail,
                used,
                log,
            } => write!(
                f,
                "VHOST_SET_VRING_ADDR slot={slot} q={queue} flags={flags:#x} desc=+{desc:#x} avail=+{avail:#x} used=+{used:#x} log={log:#x}"
            ),
            Op::SetVringAddrDefault { slot, queue } => {
                write!(f, "VHOST_SET_VRING_ADDR slot={slot} q={queue} default")
            }
            Op::SetVringFd {
                slot,
                which,
                queue,
                fd,
            } => write!(
                f,
                "VHOST_SET_VRING_{} slot={slot} q={queue} fd={}",
                which.name().to_uppercase(),
                fd.name()
            ),
            Op::NetSetBackend { slot, queue, fd } => write!(
                f,
                "VHOST_NET_SET_BACKEND slot={slot} q={queue} fd={}",
                fd.name()
            ),
            Op::VsockSetCid { slot, cid } => {
                write!(f, "VHOST_VSOCK_SET_GUEST_CID slot={slot} cid={cid}")
            }
            Op::VsockSetRunning { slot, running } => {
                write!(f, "VHOST_VSOCK_SET_RUNNING slot={slot} {running}")
            }
            Op::WriteDesc {
                queue,
                index,
                addr,
                len,
                flags,
                next,
            } => write!(
                f,
                "desc q={queue} [{index}] addr={addr:#x} len={len} flags={flags:#x} next={next}"
            ),
            Op::PushAvail { queue, head } => write!(f, "avail q={queue} head={head}"),
            Op::WriteBytes { offset, bytes } => {
                write!(f, "write +{offset:#x} ")?;
                for b in bytes {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            Op::Kick { queue } => write!(f, "kick q={queue}"),
            Op::Wait { ms } => write!(f, "wait {}ms", (*ms).min(MAX_WAIT_MS)),
            Op::VsockConnect { cid, port } => write!(f, "vsock connect {cid}:{port}"),
            Op::SendPacket { len } => write!(f, "packet out of the tap len={len}"),
            Op::Provoke { kind } => write!(
                f,
                "provoke {} (lkdtm {}; only with testbed.fuzz_provoke=1)",
                kind.name(),
                kind.lkdtm_name()
            ),
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "{i:3}: {op}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bytes_decode_within_bounds_and_round_trip() {
        let mut rng = Rng::new(7);
        for i in 0..20_000 {
            let len = rng.below(if i % 10 == 0 { 9000 } else { 300 }) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let p = Program::decode(&bytes);
            assert!(p.ops.len() <= MAX_OPS);
            let enc = p.encode();
            assert!(enc.len() <= MAX_PROGRAM_BYTES);
            assert_eq!(Program::decode(&enc), p, "decode(encode(p)) == p");
            assert_eq!(
                Program::decode(&enc).encode(),
                enc,
                "canonical form is a fixed point"
            );
        }
    }

    #[test]
    fn seeds_round_trip_and_show() {
        for t in Target::ALL {
            let p = Program::seed(t);
            assert!(p.encode().len() <= MAX_PROGRAM_BYTES);
            assert_eq!(Program::decode(&p.encode()), p);
            let text = p.to_string();
            assert!(text.contains("VHOST_SET_OWNER slot=0"), "{text}");
        }
    }

    #[test]
    fn mutation_is_bounded_deterministic_and_changes_things() {
        for t in Target::ALL {
            let mut rng = Rng::new(42);
            let mut p = Program::seed(t);
            let other = Program::seed(t);
            let mut changed = 0;
            for _ in 0..5000 {
                let q = p.mutate(&mut rng, t, Some(&other));
                assert!(q.ops.len() <= MAX_OPS);
                assert!(q.encode().len() <= MAX_PROGRAM_BYTES);
                assert_eq!(Program::decode(&q.encode()), q);
                if q != p {
                    changed += 1;
                }
                p = q;
            }
            assert!(
                changed > 4000,
                "{changed} of 5000 mutations changed the program"
            );
            let a = Program::seed(t).mutate(&mut Rng::new(9), t, None);
            let b = Program::seed(t).mutate(&mut Rng::new(9), t, None);
            assert_eq!(a, b, "same seed, same mutant");
        }
    }

    #[test]
    fn provoke_ops_decode_from_any_bytes_and_round_trip() {
        let mut rng = Rng::new(11);
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let len = rng.below(64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let p = Program::decode(&bytes);
            for op in &p.ops {
                if let Op::Provoke { kind } = op {
                    kinds.insert(*kind);
                }
            }
            assert_eq!(Program::decode(&p.encode()), p);
        }
        assert_eq!(kinds.len(), ProvokeKind::ALL.len(), "{kinds:?}");
        for kind in ProvokeKind::ALL {
            let p = Program::provoke(kind);
            let enc = p.encode();
            assert_eq!(Program::decode(&enc), p);
            // Opcode 26, then the kind's index; a kind byte out of range wraps.
            assert_eq!(
                &enc[4..6],
                &[
                    26,
                    ProvokeKind::ALL.iter().position(|k| *k == kind).unwrap() as u8
                ]
            );
            let mut wrapped = enc.clone();
            wrapped[5] += ProvokeKind::ALL.len() as u8;
            assert_eq!(Program::decode(&wrapped), p);
            assert_ne!(Program::decode(&wrapped).encode(), wrapped, "not canonical");
            assert!(p.to_string().contains(kind.lkdtm_name()), "{p}");
            assert_eq!(ProvokeKind::from_name(kind.name()), Some(kind));
        }
    }

    #[test]
    fn the_mutator_never_generates_a_provoke_op() {
        let mut rng = Rng::new(5);
        for t in Target::ALL {
            for _ in 0..50_000 {
                assert!(!Op::random(&mut rng, t).is_provoke());
            }
            let provoking: Vec<Program> =
                ProvokeKind::ALL.into_iter().map(Program::provoke).collect();
            let mut p = Program::seed(t);
            for i in 0..5000 {
                let base = if i % 3 == 0 {
                    &provoking[i % provoking.len()]
                } else {
                    &p
                };
                let other = &provoking[(i + 1) % provoking.len()];
                let q = base.mutate(&mut rng, t, Some(other));
                assert!(!q.ops.iter().any(Op::is_provoke), "{q}");
                p = q;
            }
            // Byte-level: a mutated argument never turns another op into a Provoke.
            for _ in 0..5000 {
                let op = Op::random(&mut rng, t);
                assert!(!mutate_op(&op, &mut rng).is_provoke());
            }
        }
    }

    #[test]
    fn long_programs_are_cut_to_the_limits() {
        let p = Program {
            ops: vec![
                Op::WriteBytes {
                    offset: 0,
                    bytes: vec![1; 200],
                };
                200
            ],
        };
        let enc = p.encode();
        assert!(enc.len() <= MAX_PROGRAM_BYTES);
        let q = Program::decode(&enc);
        assert!(q.ops.len() <= MAX_OPS);
        assert!(q.ops.iter().all(
            |op| matches!(op, Op::WriteBytes { bytes, .. } if bytes.len() == MAX_WRITE_BYTES)
        ));
    }
}
