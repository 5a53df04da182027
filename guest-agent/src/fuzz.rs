//! The fuzz executor (`testbed.fuzz=vhost-net|vhost-vsock`): a coverage-guided campaign on
//! one of the guest's vhost devices, with programs from `kcov_wire::program`.
//!
//! Threads: the calling thread enables **remote** coverage with the common handle and then
//! spawns the executor thread, which inherits the handle (kcov copies `kcov_handle` at
//! clone), enables **local** coverage on its own kcov fd and runs each program: its
//! `VHOST_SET_OWNER` ties the vhost worker to the handle, so the worker's PCs land in the
//! calling thread's area and the executor's own syscalls in its local area (one thread
//! cannot have both: a remote-enabled thread's syscalls are not traced).
//!
//! Per input, the calling thread sends the program as a `FuzzInput` frame and flushes
//! **before** it runs, so a kernel that dies running it leaves it on the host; then it waits
//! (at most [`EXEC_TIMEOUT_MS`]) for the executor, reads both areas and keeps the program as
//! a corpus entry when it added PCs (a `FuzzStatus` with `new_pcs > 0`, and the new PCs as
//! coverage chunks of the workload `fuzz-TARGET`). A program that does not finish is a hang:
//! an Error frame names it and the campaign ends with [`HANG_STATUS`] (the host starts a new
//! VM). Every wait inside a program is bounded ([`MAX_WAIT_MS`], non-blocking sockets).
//!
//! [`Op::Provoke`] (the self-test's kernel bugs, through lkdtm) runs only when the plan says
//! `testbed.fuzz_provoke=1`; otherwise the executor skips it and says so once on the console.
//!
//! What a program may touch in the agent: only its arena ([`ARENA_BYTES`], zeroed before
//! each program) and its own fds. Memory-table regions point into the arena or at addresses
//! that are never mapped in the agent (a PROT_NONE guard page, below mmap_min_addr, kernel,
//! non-canonical), so the kernel's writes through a fuzzed table cannot reach the agent's heap.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kcov_wire::plan::FuzzPlan;
use kcov_wire::program::{
    workload_name, FdKind, Op, Program, ProvokeKind, RegionBase, Rng, Target, VringFd, ARENA_BYTES,
    CORPUS_DIR, EXEC_TIMEOUT_MS, HANG_STATUS, LKDTM_DIRECT, MAX_RING_NUM, MAX_WAIT_MS, RING_BASE,
    RING_QUEUES, RING_STRIDE, SLOTS,
};
use kcov_wire::{
    CoverageChunk, CoverageSource, ErrorReport, Frame, FuzzInput, FuzzStatus, KcovMode,
    WorkloadResult, WorkloadStart,
};
use vhost::vhost_kern::vhost_binding as vb;

use crate::kcov::{Kcov, TraceMode};
use crate::net::PacketSocket;
use crate::ship::FrameSink;

/// kcov area of the executor's local coverage, in words.
const LOCAL_AREA_WORDS: usize = 1 << 18;
/// How often a progress `FuzzStatus` goes out.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// Most PCs per coverage chunk of the campaign.
const CHUNK_PCS: usize = 4096;
/// An fd number the executor never has open ([`FdKind::Closed`]).
const CLOSED_FD: RawFd = 1000;

/// What a campaign did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Programs run.
    pub execs: u64,
    /// Corpus entries (programs that added PCs).
    pub corpus: u32,
    /// Distinct PCs, remote and local.
    pub pcs: u32,
    /// Distinct remote PCs.
    pub remote_pcs: u32,
    /// 0, or [`HANG_STATUS`].
    pub status: i32,
}

/// Runs the campaign `fuzz` under the common `handle` with a remote area of `area_words`,
/// streaming to `sink` the workload `fuzz-TARGET` (start, chunks, fuzz frames, result).
pub fn campaign(
    fuzz: FuzzPlan,
    handle: u64,
    area_words: usize,
    sink: &mut dyn FrameSink,
) -> Result<Summary, String> {
    let name = workload_name(fuzz.target);
    sink.send(Frame::WorkloadStart(WorkloadStart { name: name.clone() }))?;
    sink.flush()?;
    let start = Instant::now();
    let mut c = Campaign {
        name: name.clone(),
        sink,
        stream: Duration::ZERO,
        seen: HashSet::new(),
        remote_seen: 0,
        seqs: [0, 0],
        summary: Summary::default(),
        start,
    };
    let result = c.run(fuzz, handle, area_words);
    let s = c.summary;
    let elapsed = start.elapsed();
    let (status, error) = match &result {
        Ok(()) => (s.status, None),
        Err(e) => (1, Some(e.clone())),
    };
    let per_s = s.execs as f64 / elapsed.as_secs_f64().max(1e-3);
    println!(
        "testbed-agent: fuzz {}: {} execs in {:.1} s ({per_s:.1}/s), {} PCs ({} remote), {} corpus entries",
        fuzz.target,
        s.execs,
        elapsed.as_secs_f64(),
        s.pcs,
        s.remote_pcs,
        s.corpus
    );
    c.sink.send(Frame::WorkloadResult(WorkloadResult {
        name,
        status,
        duration_us: elapsed.as_micros() as u64,
        counters: vec![
            ("execs".into(), s.execs),
            ("corpus".into(), u64::from(s.corpus)),
            ("pcs".into(), u64::from(s.pcs)),
            ("remote_pcs".into(), u64::from(s.remote_pcs)),
            ("execs_per_s_x1000".into(), (per_s * 1000.0) as u64),
            ("stream_us".into(), c.stream.as_micros() as u64),
        ],
        error,
    }))?;
    c.sink.flush()?;
    Ok(Summary { status, ..s })
}

struct Campaign<'a> {
    name: String,
    sink: &'a mut dyn FrameSink,
    /// Time spent sending and flushing the stream (the cost of the feedback).
    stream: Duration,
    seen: HashSet<u64>,
    remote_seen: u32,
    /// Next chunk seq of (remote, local).
    seqs: [u32; 2],
    summary: Summary,
    start: Instant,
}

/// The executor's answer for one program.
struct Done {
    local: Vec<u64>,
}

impl Campaign<'_> {
    fn send(&mut self, frame: Frame) -> Result<(), String> {
        let t = Instant::now();
        let r = self.sink.send(frame);
        self.stream += t.elapsed();
        r
    }

    fn flush(&mut self) -> Result<(), String> {
        let t = Instant::now();
        let r = self.sink.flush();
        self.stream += t.elapsed();
        r
    }

    fn run(&mut self, fuzz: FuzzPlan, handle: u64, area_words: usize) -> Result<(), String> {
        let mut remote = Kcov::open_default().map_err(|e| e.to_string())?;
        remote
            .init_trace(area_words)
            .and_then(|_| remote.remote_enable(TraceMode::Pc, handle, &[]))
            .map_err(|e| format!("kcov remote enable: {e}"))?;
        let (req_tx, req_rx) = mpsc::channel::<Program>();
        let (done_tx, done_rx) = mpsc::channel::<Result<Done, String>>();
        let target = fuzz.target;
        let provoke = fuzz.provoke;
        if provoke {
            println!("testbed-agent: fuzz: provoke ops enabled (testbed.fuzz_provoke=1): they ask lkdtm for kernel bugs");
        }
        // Spawned after the remote enable: the executor inherits the common handle.
        std::thread::Builder::new()
            .name("fuzz-exec".into())
            .spawn(move || executor(target, provoke, &req_rx, &done_tx))
            .map_err(|e| format!("spawning the executor: {e}"))?;
        // The executor reports once that it is ready (or why not).
        match done_rx.recv_timeout(Duration::from_millis(EXEC_TIMEOUT_MS)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the fuzz executor did not start".into()),
        }
        let included = read_corpus();
        println!(
            "testbed-agent: fuzz {target}: {} corpus programs included, {} s of mutation",
            included.len(),
            fuzz.time_s
        );
        let mut queue: Vec<Program> = if included.is_empty() {
            vec![Program::seed(target)]
        } else {
            included
        };
        queue.reverse();
        let mut corpus: Vec<Program> = Vec::new();
        let mut rng = Rng::new(fuzz.seed);
        let budget = Duration::from_secs(fuzz.time_s.into());
        let mut last_status = Instant::now();
        loop {
            let program = match queue.pop() {
                Some(p) => p,
                None if fuzz.time_s == 0 || self.start.elapsed() >= budget => break,
                None if corpus.is_empty() => Program::seed(target).mutate(&mut rng, target, None),
                None => {
                    let base = &corpus[rng.below(corpus.len() as u64) as usize];
                    let other = &corpus[rng.below(corpus.len() as u64) as usize];
                    base.mutate(&mut rng, target, Some(other))
                }
            };
            let seq = self.summary.execs;
            // On the host before it runs.
            self.send(Frame::FuzzInput(FuzzInput {
                seq,
                data: program.encode(),
            }))?;
            self.flush()?;
            remote.reset().map_err(|e| e.to_string())?;
            req_tx
                .send(program.clone())
                .map_err(|_| "the fuzz executor ended".to_string())?;
            let done = match done_rx.recv_timeout(Duration::from_millis(EXEC_TIMEOUT_MS)) {
                Ok(r) => r?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the fuzz executor died running input {seq}"))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let msg = format!(
                        "fuzz: input {seq} did not finish within {EXEC_TIMEOUT_MS} ms (hang)"
                    );
                    println!("testbed-agent: {msg}");
                    self.send(Frame::Error(ErrorReport { message: msg }))?;
                    self.summary.status = HANG_STATUS;
                    return Ok(());
                }
            };
            self.summary.execs += 1;
            let remote_pcs: Vec<u64> = remote.drain().map_err(|e| e.to_string())?.pcs().collect();
            let new_remote = self.add(&remote_pcs);
            let new_local = self.add(&done.local);
            self.remote_seen += new_remote.len() as u32;
            let new = new_remote.len() + new_local.len();
            if new > 0 {
                corpus.push(program);
                self.summary.corpus += 1;
                self.ship(CoverageSource::Remote, &new_remote)?;
                self.ship(CoverageSource::Local, &new_local)?;
                self.status(seq, new as u32)?;
                last_status = Instant::now();
            } else if last_status.elapsed() >= STATUS_PERIOD {
                self.status(seq, 0)?;
                last_status = Instant::now();
            }
        }
        let last = self.summary.execs.saturating_sub(1);
        self.status(last, 0)?;
        Ok(())
    }

    /// The PCs of `pcs` not seen before (each once), now seen.
    fn add(&mut self, pcs: &[u64]) -> Vec<u64> {
        let mut new = Vec::new();
        for &pc in pcs {
            if self.seen.insert(pc) {
                new.push(pc);
            }
        }
        new
    }

    fn ship(&mut self, source: CoverageSource, pcs: &[u64]) -> Result<(), String> {
        let slot = usize::from(source == CoverageSource::Local);
        for words in pcs.chunks(CHUNK_PCS) {
            self.send(Frame::CoverageChunk(CoverageChunk {
                workload: self.name.clone(),
                source,
                mode: KcovMode::Pc,
                seq: self.seqs[slot],
                overflow: false,
                words: words.to_vec(),
            }))?;
            self.seqs[slot] += 1;
        }
        Ok(())
    }

    fn status(&mut self, seq: u64, new_pcs: u32) -> Result<(), String> {
        self.summary.pcs = self.seen.len() as u32;
        self.summary.remote_pcs = self.remote_seen;
        self.send(Frame::FuzzStatus(FuzzStatus {
            seq,
            new_pcs,
            execs: self.summary.execs,
            pcs: self.summary.pcs,
            remote_pcs: self.remote_seen,
            corpus: self.summary.corpus,
            elapsed_ms: self.start.elapsed().as_millis() as u64,
            stream_us: self.stream.as_micros() as u64,
        }))?;
        self.flush()
    }
}

/// The programs the host included (file name order), each decoded (any bytes decode).
fn read_corpus() -> Vec<Program> {
    let Ok(dir) = std::fs::read_dir(CORPUS_DIR) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|b| Program::decode(&b))
        .collect()
}

/// The executor thread: local kcov, then one program per request until the sender is gone.
fn executor(
    target: Target,
    provoke: bool,
    req: &mpsc::Receiver<Program>,
    done: &mpsc::Sender<Result<Done, String>>,
) {
    let setup = (|| -> Result<(Kcov, Env), String> {
        let mut k = Kcov::open_default().map_err(|e| e.to_string())?;
        k.init_trace(LOCAL_AREA_WORDS)
            .and_then(|_| k.enable_local(TraceMode::Pc))
            .map_err(|e| format!("kcov local enable: {e}"))?;
        Ok((k, Env::new(target, provoke)?))
    })();
    let (kcov, mut env) = match setup {
        Ok(x) => x,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    let _ = done.send(Ok(Done { local: Vec::new() }));
    while let Ok(program) = req.recv() {
        let _ = kcov.reset();
        env.run(&program);
        let local = kcov.drain().map(|c| c.pcs().collect()).unwrap_or_default();
        if done.send(Ok(Done { local })).is_err() {
            return;
        }
    }
}

/// The executor's memory and fds.
struct Env {
    target: Target,
    arena: *mut u8,
    /// Per-queue kick and call eventfds.
    kick: Vec<OwnedFd>,
    call: Vec<OwnedFd>,
    devnull: OwnedFd,
    /// vhost-net: the tap backend and an AF_PACKET socket on it.
    tap: Option<frontends::tap::Tap>,
    packet: Option<PacketSocket>,
    /// Per program: device fds, offered features, ring sizes and avail indexes, sockets.
    slots: Vec<Option<OwnedFd>>,
    offered: Vec<u64>,
    num: [u16; RING_QUEUES as usize],
    avail_idx: [u16; RING_QUEUES as usize],
    sockets: Vec<OwnedFd>,
    /// [`Op::Provoke`] runs (`testbed.fuzz_provoke=1`).
    provoke: bool,
    /// Whether a skipped or failed provoke op has been reported (once per VM).
    provoke_said: bool,
}

fn eventfd() -> Result<OwnedFd, String> {
    // SAFETY: plain eventfd(2).
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fd, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open(path: &str) -> Option<OwnedFd> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: c is a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    // SAFETY: fresh fd, ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// ioctl with an argument; the result is coverage, not control flow.
fn ioctl<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> i32 {
    // SAFETY: every caller passes a request whose argument is `T` (or a buffer at least as
    // large as the kernel reads), valid for the call.
    unsafe { libc::ioctl(fd, req as _, arg) }
}

impl Env {
    fn new(target: Target, provoke: bool) -> Result<Env, String> {
        let len = ARENA_BYTES as usize + 4096;
        // SAFETY: anonymous private mapping; the last page becomes the guard.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap arena: {}", std::io::Error::last_os_error()));
        }
        let arena = p.cast::<u8>();
        // SAFETY: the guard page lies inside the mapping just made.
        unsafe {
            libc::mprotect(
                arena.add(ARENA_BYTES as usize).cast(),
                4096,
                libc::PROT_NONE,
            )
        };
        let (tap, packet) = match target {
            Target::VhostNet => {
                let tap = frontends::tap::Tap::open("fuzztap%d")
                    .and_then(|t| t.set_up().map(|_| t))
                    .map_err(|e| format!("tap for the vhost-net backend: {e}"))?;
                let packet = tap
                    .ifindex()
                    .ok()
                    .and_then(|i| PacketSocket::bind(i, 0).ok());
                (Some(tap), packet)
            }
            Target::VhostVsock => (None, None),
        };
        Ok(Env {
            target,
            arena,
            kick: (0..RING_QUEUES)
                .map(|_| eventfd())
                .collect::<Result<_, _>>()?,
            call: (0..RING_QUEUES)
                .map(|_| eventfd())
                .collect::<Result<_, _>>()?,
            devnull: open("/dev/null").ok_or("open /dev/null")?,
            tap,
            packet,
            slots: (0..SLOTS).map(|_| None).collect(),
            offered: vec![0; SLOTS.into()],
            num: [MAX_RING_NUM; RING_QUEUES as usize],
            avail_idx: [0; RING_QUEUES as usize],
            sockets: Vec::new(),
            provoke,
            provoke_said: false,
        })
    }

    fn arena_addr(&self, offset: u64) -> u64 {
        self.arena as u64 + offset % ARENA_BYTES
    }

    /// Writes `bytes` at `offset % ARENA_BYTES`, cut at the arena's end.
    fn write(&self, offset: u64, bytes: &[u8]) {
        let off = (offset % ARENA_BYTES) as usize;
        let n = bytes.len().min(ARENA_BYTES as usize - off);
        // SAFETY: off + n <= ARENA_BYTES, inside the writable part of the mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.arena.add(off), n) };
    }

    fn slot(&self, slot: u8) -> RawFd {
        self.slots[usize::from(slot % SLOTS)]
            .as_ref()
            .map_or(-1, AsRawFd::as_raw_fd)
    }

    fn ring(&self, queue: u8) -> (u64, u16) {
        let q = usize::from(queue % RING_QUEUES);
        (RING_BASE + q as u64 * RING_STRIDE, self.num[q].max(1))
    }

    fn run(&mut self, program: &Program) {
        // SAFETY: the arena's writable part.
        unsafe { std::ptr::write_bytes(self.arena, 0, ARENA_BYTES as usize) };
        self.num = [MAX_RING_NUM; RING_QUEUES as usize];
        self.avail_idx = [0; RING_QUEUES as usize];
        self.offered.iter_mut().for_each(|o| *o = 0);
        for op in &program.ops {
            self.op(op);
        }
        // Closing stops the workers: their last remote sections are in the area after this.
        self.slots.iter_mut().for_each(|s| *s = None);
        self.sockets.clear();
        let mut v = 0u64;
        for fd in self.kick.iter().chain(&self.call) {
            // SAFETY: reading 8 bytes from a non-blocking eventfd into a u64.
            unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
    }

    fn fd_for(&self, kind: FdKind, good: RawFd) -> i32 {
        match kind {
            FdKind::Good => good,
            FdKind::None => -1,
            FdKind::Wrong => self.devnull.as_raw_fd(),
            FdKind::Closed => CLOSED_FD,
        }
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Open { slot } => {
                let i = usize::from(slot % SLOTS);
                self.slots[i] = None;
                self.slots[i] = open(self.target.device());
            }
            Op::Close { slot } => self.slots[usize::from(slot % SLOTS)] = None,
            Op::SetOwner { slot } => {
                ioctl::<u8>(
                    self.slot(*slot),
                    vb::VHOST_SET_OWNER(),
                    std::ptr::null_mut(),
                );
            }
            Op::ResetOwner { slot } => {
                ioctl::<u8>(
                    self.slot(*slot),
                    vb::VHOST_RESET_OWNER(),
                    std::ptr::null_mut(),
                );
            }
            Op::GetFeatures { slot } => {
                let mut f = 0u64;
                if ioctl(self.slot(*slot), vb::VHOST_GET_FEATURES(), &mut f) == 0 {
                    self.offered[usize::from(slot % SLOTS)] = f;
                }
            }
            Op::SetFeatures { slot, mask } => {
                let mut f = self.offered[usize::from(slot % SLOTS)] & mask;
                ioctl(self.slot(*slot), vb::VHOST_SET_FEATURES(), &mut f);
            }
            Op::SetFeaturesRaw { slot, features } => {
                let mut f = *features;
                ioctl(self.slot(*slot), vb::VHOST_SET_FEATURES(), &mut f);
            }
            Op::SetBackendFeatures { slot, features } => {
                let mut f = *features;
                ioctl(self.slot(*slot), vb::VHOST_SET_BACKEND_FEATURES(), &mut f);
            }
            Op::SetMemTable {
                slot,
                claimed_extra,
                regions,
            } => {
                let n = regions.len() + usize::from(*claimed_extra);
                // Header (nregions, padding) and 32-byte regions; claimed extras stay zero.
                let mut buf = vec![0u64; 1 + 4 * n];
                buf[0] = n as u64;
                for (i, g) in regions.iter().enumerate() {
                    let uaddr = match g.base {
                        RegionBase::Arena => self.arena_addr(g.offset),
                        RegionBase::Guard => self.arena as u64 + ARENA_BYTES + g.offset % 4096,
                        RegionBase::Low => g.offset % 0x1_0000,
                        RegionBase::Kernel => 0xffff_8880_0000_0000 + g.offset % (4 << 30),
                        RegionBase::NonCanonical => 0x8000_0000_0000_0000 | g.offset,
                    };
                    buf[1 + 4 * i..1 + 4 * i + 3].copy_from_slice(&[g.gpa, g.size, uaddr]);
                }
                ioctl(
                    self.slot(*slot),
                    vb::VHOST_SET_MEM_TABLE(),
                    buf.as_mut_ptr(),
                );
            }
            Op::SetMemIdentity { slot } => {
                let mut buf = [1u64, 0, ARENA_BYTES, self.arena as u64, 0];
                ioctl(
                    self.slot(*slot),
                    vb::VHOST_SET_MEM_TABLE(),
                    buf.as_mut_ptr(),
                );
            }
            Op::SetVringNum { slot, queue, num } => {
                let mut s = [u32::from(*queue), *num];
                if ioctl(self.slot(*slot), vb::VHOST_SET_VRING_NUM(), s.as_mut_ptr()) == 0
                    && (1..=u32::from(MAX_RING_NUM)).contains(num)
                {
                    self.num[usize::from(queue % RING_QUEUES)] = *num as u16;
                }
            }
            Op::SetVringBase { slot, queue, num } => {
                let mut s = [u32::from(*queue), *num];
                ioctl(self.slot(*slot), vb::VHOST_SET_VRING_BASE(), s.as_mut_ptr());
                self.avail_idx[usize::from(queue % RING_QUEUES)] = *num as u16;
            }
            Op::GetVringBase { slot, queue } => {
                let mut s = [u32::from(*queue), 0];
                ioctl(self.slot(*slot), vb::VHOST_GET_VRING_BASE(), s.as_mut_ptr());
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
                let mut a = [
                    u64::from(*queue) | u64::from(*flags) << 32,
                    self.arena_addr(u64::from(*desc)),
                    self.arena_addr(u64::from(*used)),
                    self.arena_addr(u64::from(*avail)),
                    *log,
                ];
                ioctl(self.slot(*slot), vb::VHOST_SET_VRING_ADDR(), a.as_mut_ptr());
            }
            Op::SetVringAddrDefault { slot, queue } => {
                let (base, _) = self.ring(*queue);
                let mut a = [
                    u64::from(*queue),
                    self.arena_addr(base),
                    self.arena_addr(base + 8192),
                    self.arena_addr(base + 4096),
                    0,
                ];
                ioctl(self.slot(*slot), vb::VHOST_SET_VRING_ADDR(), a.as_mut_ptr());
            }
            Op::SetVringFd {
                slot,
                which,
                queue,
                fd,
            } => {
                let q = usize::from(queue % RING_QUEUES);
                let (good, req) = match which {
                    VringFd::Kick => (self.kick[q].as_raw_fd(), vb::VHOST_SET_VRING_KICK()),
                    VringFd::Call => (self.call[q].as_raw_fd(), vb::VHOST_SET_VRING_CALL()),
                    VringFd::Err => (self.call[q].as_raw_fd(), vb::VHOST_SET_VRING_ERR()),
                };
                let mut f = [*queue as u32 as i32, self.fd_for(*fd, good)];
                ioctl(self.slot(*slot), req, f.as_mut_ptr());
            }
            Op::NetSetBackend { slot, queue, fd } => {
                let tap = self.tap.as_ref().map_or(-1, |t| t.file().as_raw_fd());
                let fd = match fd {
                    // Not a socket: vhost-net wants a tap, tun or packet socket.
                    FdKind::Wrong => self.kick[0].as_raw_fd(),
                    k => self.fd_for(*k, tap),
                };
                let mut f = [u32::from(*queue) as i32, fd];
                ioctl(
                    self.slot(*slot),
                    vb::VHOST_NET_SET_BACKEND(),
                    f.as_mut_ptr(),
                );
            }
            Op::VsockSetCid { slot, cid } => {
                let mut c = *cid;
                ioctl(self.slot(*slot), vb::VHOST_VSOCK_SET_GUEST_CID(), &mut c);
            }
            Op::VsockSetRunning { slot, running } => {
                let mut r = *running as i32;
                ioctl(self.slot(*slot), vb::VHOST_VSOCK_SET_RUNNING(), &mut r);
            }
            Op::WriteDesc {
                queue,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let (base, num) = self.ring(*queue);
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..].copy_from_slice(&next.to_le_bytes());
                self.write(base + u64::from(index % num) * 16, &d);
            }
            Op::PushAvail { queue, head } => {
                let (base, num) = self.ring(*queue);
                let q = usize::from(queue % RING_QUEUES);
                let idx = self.avail_idx[q];
                let avail = base + 4096;
                self.write(avail + 4 + u64::from(idx % num) * 2, &head.to_le_bytes());
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                let idx = idx.wrapping_add(1);
                self.write(avail + 2, &idx.to_le_bytes());
                self.avail_idx[q] = idx;
            }
            Op::WriteBytes { offset, bytes } => self.write(u64::from(*offset), bytes),
            Op::Kick { queue } => {
                let one = 1u64;
                let fd = self.kick[usize::from(queue % RING_QUEUES)].as_raw_fd();
                // SAFETY: writing 8 bytes to our eventfd.
                unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
            }
            Op::Wait { ms } => {
                std::thread::sleep(Duration::from_millis(u64::from((*ms).min(MAX_WAIT_MS))))
            }
            Op::VsockConnect { cid, port } => {
                // Never the host (CID 2) or the local CIDs: the agent's own stream goes there.
                let cid = if *cid <= 2 { 100 + cid } else { *cid };
                // SAFETY: plain socket(2).
                let fd = unsafe {
                    libc::socket(
                        libc::AF_VSOCK,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                if fd >= 0 && self.sockets.len() < 16 {
                    // SAFETY: fresh fd, ours.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    let _ = crate::vsock::connect(&fd, cid, *port);
                    self.sockets.push(fd);
                } else if fd >= 0 {
                    // SAFETY: fresh fd, ours, closed at once.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            Op::Provoke { kind } => self.provoke(*kind),
            Op::SendPacket { len } => {
                if let Some(p) = &self.packet {
                    let mut frame = vec![0x5au8; usize::from(*len).clamp(14, 1514)];
                    frame[..6].fill(0xff);
                    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
                    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
                    let _ = p.send(&frame);
                }
            }
        }
    }
}

impl Env {
    /// Asks lkdtm for `kind` (when enabled): the console names it first, then the write to
    /// `DIRECT` runs the bug in this thread (it may never return).
    fn provoke(&mut self, kind: ProvokeKind) {
        use std::io::Write;
        if !self.provoke {
            if !std::mem::replace(&mut self.provoke_said, true) {
                println!("testbed-agent: fuzz: provoke op skipped ({}): not enabled on this boot (testbed.fuzz_provoke=1; cargo xtask fuzz --provoke)", kind.name());
            }
            return;
        }
        println!(
            "testbed-agent: fuzz: provoking {} (lkdtm {})",
            kind.name(),
            kind.lkdtm_name()
        );
        let _ = std::io::stdout().flush();
        if kind == ProvokeKind::Lockdep {
            // The first write returns to user space holding a spinlock (preemption off). Had
            // the return path to reschedule first, the kernel would report "scheduling while
            // atomic" (fatal with panic_on_warn) before lockdep's check runs: a real-time
            // thread is not preempted by the others, so lockdep's report comes first.
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: plain sched_setscheduler(2) on this thread with a valid parameter.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
                println!(
                    "testbed-agent: fuzz: provoke lockdep: SCHED_FIFO: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let result = std::fs::OpenOptions::new()
            .write(true)
            .open(LKDTM_DIRECT)
            .and_then(|mut f| {
                (0..kind.lkdtm_writes()).try_for_each(|_| f.write_all(kind.lkdtm_name().as_bytes()))
            });
        if let Err(e) = result {
            if !std::mem::replace(&mut self.provoke_said, true) {
                println!("testbed-agent: fuzz: provoke {}: {LKDTM_DIRECT}: {e} (a kernel without CONFIG_LKDTM, or the type is not built in)", kind.name());
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // SAFETY: the mapping made in Env::new, no longer used.
        unsafe { libc::munmap(self.arena.cast(), ARENA_BYTES as usize + 4096) };
    }
}
