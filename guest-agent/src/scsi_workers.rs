//! `vhost-scsi-workers`: the vhost worker ioctls on `/dev/vhost-scsi`, the only vhost device
//! whose ioctl passes `VHOST_NEW_WORKER`, `VHOST_FREE_WORKER`, `VHOST_ATTACH_VRING_WORKER` and
//! `VHOST_GET_VRING_WORKER` to `vhost_worker_ioctl` in 6.12 (`drivers/vhost/vhost.c`).
//!
//! Every answer is checked against what the 6.12 source returns:
//!
//! * before `VHOST_SET_OWNER` all four are refused with EINVAL; from another process (a
//!   forked child) with EPERM; bad argument pointers give EFAULT, and a `VHOST_NEW_WORKER`
//!   whose id cannot be written back still creates the worker (the next id shows it);
//! * the default worker has id 0 and serves every queue; new workers get the lowest free ids
//!   of the device's xarray (1, 2, 3, and 0 again once the default one is freed);
//!   `VHOST_GET_VRING_WORKER` returns exactly the queue index and the worker last attached;
//!   a queue index past the device's queues gives ENOBUFS, an id no worker has ENODEV (both
//!   lookups: nothing at or above the id, and a live worker above a freed one), freeing an
//!   attached worker EBUSY, freeing a free one works once and then gives ENODEV;
//! * the worker threads themselves: each `VHOST_NEW_WORKER` adds a `vhost-<tid>` thread to
//!   this process and each `VHOST_FREE_WORKER` (and the device's release) takes it away;
//!   `VHOST_NEW_WORKER` on a device whose owner forks kthreads (`VHOST_SET_FORK_FROM_OWNER`)
//!   gives EFAULT;
//! * queues re-attached across the workers while another thread kicks them (the attach that
//!   must synchronise with the old worker and flush it), each attach read back;
//! * that new workers run under the kcov handle of the thread that made them
//!   (`vhost_worker_create` copies `kcov_common_handle()`): on a device of its own, under a
//!   common handle of its own, every queue moved to a new worker and the default worker
//!   freed, a kick of the control and an I/O queue must put PCs of
//!   `vhost_scsi_ctl_handle_kick` and `vhost_scsi_handle_kick` (addresses from
//!   `/proc/kallsyms`) into that handle's remote area, and none may be there before the kick;
//! * vhost-scsi's own ioctls: features, ABI version, the events-missed flag, endpoint errors
//!   (EFAULT without a memory table, ENODEV for a target nobody configured, EOPNOTSUPP with
//!   `reserved` set);
//! * real I/O on a new worker (the default one freed): a target configured in configfs (an
//!   `rd_mcp` ramdisk as LUN 0 of a `tcm_vhost` port with a nexus), `VHOST_SCSI_SET_ENDPOINT`
//!   (EEXIST the second time), WRITE(10) of a block read back byte-exact by READ(10), a block
//!   never written read as zeros, a command for a target that does not exist answered
//!   BAD_TARGET; clearing another target's endpoint EINVAL, then the right one; the nexus
//!   cannot be dropped while the LUN is linked (EBUSY); everything removed again.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use frontends::kcov::{self, Kcov, MappedArea, TraceMode};
use frontends::vhost_raw::{errno_of, nr, MemRegion, RawVhost, ScsiTarget, FORK_OWNER_KTHREAD};
use kcov_wire::plan::Params;
use vmm_sys_util::eventfd::EventFd;

use crate::net::{sys, Counters, NetError};
use crate::rawnet::{expect_errno, expect_ok, fail};
use crate::scsi_dev::{
    arena_write, open, rw10, scsi_req, scsi_resp, ScsiRing, Target, BLOCK, CTL_VQ, EVT_VQ,
    FIRST_IO_VQ, INITIATOR_WWPN, REQ_LEN, RESP_LEN, STAT_GOOD, S_BAD_TARGET, S_OK, TARGET_WWPN,
    TPGT, WRITE,
};

/// vhost-scsi's `max_io_vqs` module parameter: the I/O queues of each device.
const MAX_IO_VQS_PARAM: &str = "/sys/module/vhost_scsi/parameters/max_io_vqs";
/// `VHOST_SCSI_MAX_IO_VQ`.
const MAX_IO_VQ: u32 = 1024;
/// `VHOST_SCSI_FEATURES`: `VHOST_FEATURES` (NOTIFY_ON_EMPTY, INDIRECT_DESC, EVENT_IDX,
/// LOG_ALL, ANY_LAYOUT, VERSION_1) and VIRTIO_SCSI_F_HOTPLUG, VIRTIO_SCSI_F_T10_PI.
pub const SCSI_FEATURES: u64 =
    1 << 24 | 1 << 28 | 1 << 29 | 1 << 26 | 1 << 27 | 1 << 32 | 1 << 1 | 1 << 3;
/// An address no user mapping has: the kernel's `copy_*_user` fails on it with EFAULT.
const BAD_PTR: usize = 8;
/// A target port WWPN nobody configured.
const UNKNOWN_WWPN: &str = "naa.6001405000000000";
/// Re-attaches of the kicked queue across the workers.
const ATTACH_ROUNDS: u32 = 48;
/// Remote area of the kcov proof, in words.
const PROOF_AREA_WORDS: usize = 1 << 16;

/// The kick handlers the proof looks for, with the queue whose kick runs each.
const KICK_HANDLERS: [(&str, u32); 2] = [
    ("vhost_scsi_ctl_handle_kick", CTL_VQ),
    ("vhost_scsi_handle_kick", FIRST_IO_VQ),
];

/// Runs every part; `prove_kcov`: also the kcov proof (it needs `/sys/kernel/debug/kcov`).
pub fn run(params: &Params, prove_kcov: bool) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let nvqs = device_queues()?;
    let mut n = Tally::default();
    before_owner(&mut n)?;
    workers(&mut n, nvqs, timeout)?;
    kthread_owner(&mut n)?;
    let scsi_commands = scsi_io(&mut n, nvqs, timeout)?;
    let kick_pcs = if prove_kcov {
        prove_kick_coverage(nvqs, timeout)?
    } else {
        0
    };
    Ok(vec![
        ("queues".into(), u64::from(nvqs)),
        ("ioctl_errors".into(), n.errors),
        ("workers_created".into(), n.created),
        ("attaches_checked".into(), n.attaches),
        ("kicks".into(), n.kicks),
        ("kick_pcs".into(), kick_pcs),
        ("scsi_commands".into(), scsi_commands),
        ("iterations".into(), n.errors + n.attaches),
    ])
}

/// What was checked.
#[derive(Default)]
struct Tally {
    errors: u64,
    created: u64,
    attaches: u64,
    kicks: u64,
}

impl Tally {
    fn errno<T: std::fmt::Debug>(
        &mut self,
        case: &str,
        r: io::Result<T>,
        errno: i32,
    ) -> Result<(), NetError> {
        self.errors += 1;
        expect_errno(case, r, errno)
    }
}

/// The queues of a vhost-scsi device: `max_io_vqs` clamped as `vhost_scsi_open` does, plus
/// the control and event queues.
fn device_queues() -> Result<u32, NetError> {
    let raw = std::fs::read_to_string(MAX_IO_VQS_PARAM).map_err(sys(MAX_IO_VQS_PARAM))?;
    let io: u32 = raw
        .trim()
        .parse()
        .map_err(|_| fail(MAX_IO_VQS_PARAM, format!("not a number: {raw:?}")))?;
    Ok(queues_for(io))
}

fn queues_for(max_io_vqs: u32) -> u32 {
    max_io_vqs.clamp(1, MAX_IO_VQ) + FIRST_IO_VQ
}

/// `ioctl(fd, req, BAD_PTR)`.
fn bad_ptr(d: &RawVhost, req: u64) -> io::Result<i32> {
    // SAFETY: the argument is an address no mapping has; the kernel checks user pointers
    // and answers EFAULT, nothing in this process is touched.
    unsafe { d.ioctl_ptr(req, BAD_PTR as *mut libc::c_void) }
}

/// One ioctl of a table of cases.
type Call = dyn Fn(&RawVhost) -> io::Result<()>;

/// A device without an owner: the worker ioctls are refused, vhost-scsi's own ones answer.
fn before_owner(n: &mut Tally) -> Result<(), NetError> {
    let d = open()?;
    // vhost_worker_ioctl: !vhost_dev_has_owner -> EINVAL, before any argument is read.
    let cases: [(&str, &Call); 5] = [
        ("VHOST_NEW_WORKER before the owner", &|d| {
            d.new_worker().map(drop)
        }),
        ("VHOST_FREE_WORKER before the owner", &|d| d.free_worker(0)),
        ("VHOST_ATTACH_VRING_WORKER before the owner", &|d| {
            d.attach_vring_worker(0, 0)
        }),
        ("VHOST_GET_VRING_WORKER before the owner", &|d| {
            d.get_vring_worker(0).map(drop)
        }),
        ("VHOST_NEW_WORKER (bad pointer) before the owner", &|d| {
            bad_ptr(d, nr::NEW_WORKER).map(drop)
        }),
    ];
    for (case, call) in cases {
        n.errno(case, call(&d), libc::EINVAL)?;
    }
    // vhost-scsi's own ioctls need no owner.
    let f = expect_ok("VHOST_GET_FEATURES", d.get_features())?;
    if f != SCSI_FEATURES {
        return Err(fail(
            "VHOST_GET_FEATURES",
            format!("{f:#x}, VHOST_SCSI_FEATURES is {SCSI_FEATURES:#x}"),
        ));
    }
    let unknown = 1u64 << 40;
    n.errno(
        "VHOST_SET_FEATURES with an unknown bit",
        d.set_features(SCSI_FEATURES | unknown),
        libc::EOPNOTSUPP,
    )?;
    let abi = expect_ok("VHOST_SCSI_GET_ABI_VERSION", d.scsi_abi_version())?;
    if abi != frontends::vhost_raw::SCSI_ABI_VERSION {
        return Err(fail("VHOST_SCSI_GET_ABI_VERSION", format!("{abi}, not 1")));
    }
    for v in [1u32, 0] {
        expect_ok("VHOST_SCSI_SET_EVENTS_MISSED", d.scsi_set_events_missed(v))?;
        let got = expect_ok("VHOST_SCSI_GET_EVENTS_MISSED", d.scsi_events_missed())?;
        if got != v {
            return Err(fail(
                "VHOST_SCSI_GET_EVENTS_MISSED",
                format!("{got} after setting {v}"),
            ));
        }
    }
    let mut reserved = ScsiTarget::new(UNKNOWN_WWPN);
    reserved.reserved = 1;
    n.errno(
        "VHOST_SCSI_SET_ENDPOINT with reserved set",
        d.scsi_set_endpoint(&reserved),
        libc::EOPNOTSUPP,
    )?;
    n.errno(
        "VHOST_SCSI_CLEAR_ENDPOINT with reserved set",
        d.scsi_clear_endpoint(&reserved),
        libc::EOPNOTSUPP,
    )?;
    // Without a memory table no ring passes vhost_vq_access_ok (vq->umem is NULL).
    n.errno(
        "VHOST_SCSI_SET_ENDPOINT without a memory table",
        d.scsi_set_endpoint(&ScsiTarget::new(UNKNOWN_WWPN)),
        libc::EFAULT,
    )?;
    n.errno(
        "VHOST_SCSI_CLEAR_ENDPOINT without a memory table",
        d.scsi_clear_endpoint(&ScsiTarget::new(UNKNOWN_WWPN)),
        libc::EFAULT,
    )?;
    n.errno(
        "VHOST_SCSI_GET_ABI_VERSION (bad pointer)",
        bad_ptr(&d, nr::SCSI_GET_ABI_VERSION),
        libc::EFAULT,
    )?;
    Ok(())
}

/// The device's worker threads in this process: vhost names them `vhost-<tid>` after the
/// thread `tid` that called `VHOST_SET_OWNER` / `VHOST_NEW_WORKER` (kthread workers are not
/// ours).
fn worker_threads(tid: i32) -> Result<usize, NetError> {
    let name = format!("vhost-{tid}");
    let dir = std::fs::read_dir("/proc/self/task").map_err(sys("/proc/self/task"))?;
    let mut count = 0;
    for e in dir.flatten() {
        // A thread that exited between the listing and the read has no comm: not counted.
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
            if comm.trim_end() == name {
                count += 1;
            }
        }
    }
    Ok(count)
}

/// This thread's worker threads ([`worker_threads`]) once they are `want` (a freed worker's
/// thread leaves the thread list shortly after `VHOST_FREE_WORKER` returned); `want: None`:
/// how many there are now. Counted on a helper thread so that the driver thread's local
/// coverage stays the vhost calls', not procfs's.
fn threads(case: &str, want: Option<usize>, timeout: Duration) -> Result<usize, NetError> {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    let deadline = Instant::now() + timeout;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("scsi-threads".into())
            .spawn_scoped(s, || loop {
                let got = worker_threads(tid)?;
                match want {
                    None => return Ok(got),
                    Some(w) if w == got => return Ok(got),
                    Some(w) if Instant::now() >= deadline => {
                        return Err(fail(
                            case,
                            format!("{got} vhost worker threads of this thread, expected {w}"),
                        ))
                    }
                    Some(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            })
            .map_err(sys("spawning the thread counter"))?
            .join()
            .unwrap_or_else(|_| Err(fail(case, "the thread counter panicked")))
    })
}

fn expect_threads(case: &str, want: usize, timeout: Duration) -> Result<(), NetError> {
    threads(case, Some(want), timeout).map(drop)
}

/// `VHOST_GET_VRING_WORKER` of queue `vq` must say exactly (`vq`, `id`).
fn expect_worker(n: &mut Tally, d: &RawVhost, vq: u32, id: u32) -> Result<(), NetError> {
    n.attaches += 1;
    let s = expect_ok("VHOST_GET_VRING_WORKER", d.get_vring_worker(vq))?;
    if (s.index, s.num) != (vq, id) {
        return Err(fail(
            "VHOST_GET_VRING_WORKER",
            format!(
                "queue {vq}: index {} worker {}, expected worker {id}",
                s.index, s.num
            ),
        ));
    }
    Ok(())
}

/// `VHOST_NEW_WORKER` must return `want`.
fn new_worker(n: &mut Tally, d: &RawVhost, want: u32) -> Result<(), NetError> {
    let id = expect_ok("VHOST_NEW_WORKER", d.new_worker())?;
    if id != want {
        return Err(fail(
            "VHOST_NEW_WORKER",
            format!("id {id}, expected the lowest free id {want}"),
        ));
    }
    n.created += 1;
    Ok(())
}

/// The errno of `call` run in a forked child (another process, so not the device's owner).
fn errno_in_child(call: impl FnOnce() -> i32) -> Result<i32, NetError> {
    // SAFETY: the child only runs `call` (one ioctl, no allocation, no locks) and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        let e = call();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(e & 0xff) }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid {
        return Err(sys("waitpid")(io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) {
        return Err(fail("the forked child", format!("status {status:#x}")));
    }
    Ok(libc::WEXITSTATUS(status))
}

/// A raw ioctl's errno (0: it succeeded), for the forked child.
fn raw_errno(fd: i32, req: u64, arg: *mut libc::c_void) -> i32 {
    // SAFETY: arg points at 8 writable bytes of the caller's stack, more than any worker
    // ioctl reads or writes.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg) };
    if r < 0 {
        // SAFETY: errno of this thread.
        unsafe { *libc::__errno_location() }
    } else {
        0
    }
}

/// The owner's view: ids, attaches, frees, threads, errnos, kicks during attaches, release.
fn workers(n: &mut Tally, nvqs: u32, timeout: Duration) -> Result<(), NetError> {
    let threads_before = threads("vhost worker threads", None, timeout)?;
    let d = open()?;
    expect_ok("VHOST_SET_FEATURES", d.set_features(SCSI_FEATURES))?;
    expect_ok("VHOST_SET_OWNER", d.set_owner())?;
    // The default worker: one thread, id 0 (the device's xarray was empty), every queue.
    expect_threads("VHOST_SET_OWNER", threads_before + 1, timeout)?;
    for vq in 0..nvqs {
        expect_worker(n, &d, vq, 0)?;
    }
    // With a memory table every ring passes vhost_vq_access_ok: the unknown target is
    // looked for and not found; clearing no endpoint succeeds.
    let mem = crate::vring::Arena::new(1 << 16)?;
    let info = mem.region_info();
    let region = MemRegion::from(info);
    expect_ok("VHOST_SET_MEM_TABLE", d.set_mem_table(&[region]))?;
    n.errno(
        "VHOST_SCSI_SET_ENDPOINT of an unknown target",
        d.scsi_set_endpoint(&ScsiTarget::new(UNKNOWN_WWPN)),
        libc::ENODEV,
    )?;
    expect_ok(
        "VHOST_SCSI_CLEAR_ENDPOINT without an endpoint",
        d.scsi_clear_endpoint(&ScsiTarget::new(UNKNOWN_WWPN)),
    )?;
    // Not the owner: another process (vhost_dev_check_owner compares the mm).
    let fd = d.fd();
    for (case, req) in [
        ("VHOST_NEW_WORKER from another process", nr::NEW_WORKER),
        (
            "VHOST_GET_VRING_WORKER from another process",
            nr::GET_VRING_WORKER,
        ),
    ] {
        n.errors += 1;
        let e = errno_in_child(|| {
            let mut arg = [0u32; 2];
            raw_errno(fd, req, arg.as_mut_ptr().cast())
        })?;
        if e != libc::EPERM {
            return Err(fail(case, format!("errno {e}, expected EPERM")));
        }
    }
    // Queue index and worker id lookups.
    n.errno(
        "VHOST_GET_VRING_WORKER of a queue past the last",
        d.get_vring_worker(nvqs),
        libc::ENOBUFS,
    )?;
    n.errno(
        "VHOST_ATTACH_VRING_WORKER to a queue past the last",
        d.attach_vring_worker(nvqs, 0),
        libc::ENOBUFS,
    )?;
    n.errno(
        "VHOST_ATTACH_VRING_WORKER to a queue index of 2^32-1",
        d.attach_vring_worker(u32::MAX, 0),
        libc::ENOBUFS,
    )?;
    n.errno(
        "VHOST_ATTACH_VRING_WORKER to an unknown worker",
        d.attach_vring_worker(0, 7),
        libc::ENODEV,
    )?;
    n.errno(
        "VHOST_FREE_WORKER of an unknown worker",
        d.free_worker(7),
        libc::ENODEV,
    )?;
    n.errno(
        "VHOST_FREE_WORKER of the attached default worker",
        d.free_worker(0),
        libc::EBUSY,
    )?;
    for (case, req) in [
        ("VHOST_FREE_WORKER (bad pointer)", nr::FREE_WORKER),
        (
            "VHOST_ATTACH_VRING_WORKER (bad pointer)",
            nr::ATTACH_VRING_WORKER,
        ),
        ("VHOST_GET_VRING_WORKER (bad pointer)", nr::GET_VRING_WORKER),
    ] {
        n.errno(case, bad_ptr(&d, req), libc::EFAULT)?;
    }
    // New workers: the lowest free ids, one thread each.
    for id in 1..=3 {
        new_worker(n, &d, id)?;
    }
    expect_threads("VHOST_NEW_WORKER x3", threads_before + 4, timeout)?;
    // A new worker whose id cannot be written back: EFAULT, yet it exists (id 4) and the
    // next one gets 5.
    n.errno(
        "VHOST_NEW_WORKER (bad pointer)",
        bad_ptr(&d, nr::NEW_WORKER),
        libc::EFAULT,
    )?;
    expect_threads(
        "VHOST_NEW_WORKER (bad pointer)",
        threads_before + 5,
        timeout,
    )?;
    new_worker(n, &d, 5)?;
    expect_ok(
        "VHOST_FREE_WORKER of the unreported worker",
        d.free_worker(4),
    )?;
    expect_ok("VHOST_FREE_WORKER of a fresh worker", d.free_worker(5))?;
    expect_threads("VHOST_FREE_WORKER x2", threads_before + 4, timeout)?;
    // Every queue to one of the three, round robin: nothing is left on the default worker.
    let ids = [1u32, 2, 3];
    let mut attached: Vec<u32> = (0..nvqs).map(|vq| ids[vq as usize % 3]).collect();
    for (vq, &id) in (0..nvqs).zip(&attached) {
        expect_ok("VHOST_ATTACH_VRING_WORKER", d.attach_vring_worker(vq, id))?;
    }
    for (vq, &id) in (0..nvqs).zip(&attached) {
        expect_worker(n, &d, vq, id)?;
    }
    n.errno(
        "VHOST_FREE_WORKER of an attached worker",
        d.free_worker(2),
        libc::EBUSY,
    )?;
    // The default worker serves no queue now: it can go like any other.
    expect_ok("VHOST_FREE_WORKER of the default worker", d.free_worker(0))?;
    expect_threads(
        "VHOST_FREE_WORKER of the default worker",
        threads_before + 3,
        timeout,
    )?;
    n.errno(
        "VHOST_FREE_WORKER of a freed worker",
        d.free_worker(0),
        libc::ENODEV,
    )?;
    // Id 0 is gone, 1..3 live: the lookup finds worker 1 and refuses it for 0.
    n.errno(
        "VHOST_ATTACH_VRING_WORKER to a freed worker",
        d.attach_vring_worker(0, 0),
        libc::ENODEV,
    )?;
    // A worker never attached is freed at once; a freed id is handed out again.
    new_worker(n, &d, 0)?;
    new_worker(n, &d, 4)?;
    expect_ok(
        "VHOST_FREE_WORKER of an unattached worker",
        d.free_worker(4),
    )?;
    n.errno("VHOST_FREE_WORKER twice", d.free_worker(4), libc::ENODEV)?;
    expect_threads("workers 0..=3", threads_before + 4, timeout)?;
    for (vq, &id) in (0..nvqs).zip(&attached) {
        expect_worker(n, &d, vq, id)?;
    }
    // Kicks while the kicked queues move across the workers: every attach of a queue with
    // a kick fd synchronises with its old worker and flushes it.
    let kicked = [CTL_VQ, EVT_VQ, FIRST_IO_VQ];
    let mut fds = Vec::new();
    for &vq in &kicked {
        let ev = EventFd::new(libc::EFD_NONBLOCK).map_err(sys("eventfd"))?;
        expect_ok("VHOST_SET_VRING_KICK", d.set_vring_kick(vq, ev.as_raw_fd()))?;
        fds.push(ev);
    }
    let stop = AtomicBool::new(false);
    let kicks = AtomicU64::new(0);
    let order = [0u32, 1, 2, 3];
    std::thread::scope(|s| -> Result<(), NetError> {
        let kicker = std::thread::Builder::new()
            .name("scsi-kick".into())
            .spawn_scoped(s, || {
                while !stop.load(Ordering::Relaxed) {
                    for ev in &fds {
                        if ev.write(1).is_ok() {
                            kicks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
            .map_err(sys("spawning the kick thread"))?;
        let mut result = Ok(());
        'rounds: for round in 0..ATTACH_ROUNDS {
            for (i, &vq) in kicked.iter().enumerate() {
                let id = order[(round as usize + i) % order.len()];
                result = expect_ok(
                    "VHOST_ATTACH_VRING_WORKER while kicked",
                    d.attach_vring_worker(vq, id),
                )
                .and_then(|()| expect_worker(n, &d, vq, id));
                if result.is_err() {
                    break 'rounds;
                }
                attached[vq as usize] = id;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = kicker.join();
        result
    })?;
    n.kicks = kicks.load(Ordering::Relaxed);
    if n.kicks == 0 {
        return Err(fail("kicks", "no kick was written"));
    }
    // Each worker is busy exactly while a queue is attached to it.
    for id in 0..4u32 {
        let want_busy = attached.contains(&id);
        let r = d.free_worker(id);
        match (want_busy, errno_of(&r)) {
            (true, Some(libc::EBUSY)) => n.errors += 1,
            (false, None) if r.is_ok() => {}
            (want, e) => {
                return Err(fail(
                    "VHOST_FREE_WORKER after the kicks",
                    format!(
                        "worker {id}: {r:?} (errno {e:?}), expected {}",
                        if want { "EBUSY" } else { "success" }
                    ),
                ))
            }
        }
    }
    // A device-wide flush (every ioctl of vhost_dev_ioctl ends in vhost_scsi_flush) waits
    // for the last kicks' work.
    expect_ok("VHOST_SET_LOG_FD -1 (flush)", d.set_log_fd(-1))?;
    // The release frees every worker, new ones included.
    drop(d);
    expect_threads("the device's release", threads_before, timeout)?;
    drop(fds);
    Ok(())
}

/// An owner that forks kthreads may not make more workers; its default one answers.
fn kthread_owner(n: &mut Tally) -> Result<(), NetError> {
    let d = open()?;
    expect_ok(
        "VHOST_SET_FORK_FROM_OWNER kthread",
        d.set_fork_from_owner(FORK_OWNER_KTHREAD),
    )?;
    expect_ok("VHOST_SET_OWNER", d.set_owner())?;
    n.errno(
        "VHOST_NEW_WORKER with a kthread owner",
        d.new_worker(),
        libc::EFAULT,
    )?;
    expect_worker(n, &d, FIRST_IO_VQ, 0)?;
    expect_ok(
        "VHOST_ATTACH_VRING_WORKER to the same worker",
        d.attach_vring_worker(FIRST_IO_VQ, 0),
    )?;
    expect_worker(n, &d, FIRST_IO_VQ, 0)?;
    n.errno(
        "VHOST_FREE_WORKER of the kthread worker",
        d.free_worker(0),
        libc::EBUSY,
    )?;
    Ok(())
}

/// Ring size of the I/O part's queues.
const IO_RING: u16 = 16;

/// Real I/O through vhost-scsi on a new worker: a target configured in configfs, the
/// endpoint set, WRITE(10) then READ(10) of the same block through the ring (data checked
/// byte for byte), a block never written read back as zeros, a command for a target that
/// does not exist answered BAD_TARGET; the endpoint's errnos (EEXIST, EINVAL) and its
/// clearing. Returns the commands checked.
fn scsi_io(n: &mut Tally, nvqs: u32, timeout: Duration) -> Result<u64, NetError> {
    let cmds = Target::with(|_| scsi_io_on(n, nvqs, timeout))?;
    // Target::remove's EBUSY for the nexus.
    n.errors += 1;
    Ok(cmds)
}

fn scsi_io_on(n: &mut Tally, nvqs: u32, timeout: Duration) -> Result<u64, NetError> {
    let mut arena = crate::vring::Arena::new(1 << 20)?;
    let info = arena.region_info();
    let d = open()?;
    expect_ok(
        "VHOST_SET_FEATURES",
        d.set_features(1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1),
    )?;
    expect_ok("VHOST_SET_OWNER", d.set_owner())?;
    expect_ok(
        "VHOST_SET_MEM_TABLE",
        d.set_mem_table(&[MemRegion::from(info)]),
    )?;
    // The control, event and first I/O queue, all on a new worker; the default one freed.
    let w = expect_ok("VHOST_NEW_WORKER", d.new_worker())?;
    for vq in 0..nvqs {
        expect_ok("VHOST_ATTACH_VRING_WORKER", d.attach_vring_worker(vq, w))?;
    }
    expect_ok("VHOST_FREE_WORKER of the default worker", d.free_worker(0))?;
    let mut rings = Vec::new();
    for vq in [CTL_VQ, EVT_VQ, FIRST_IO_VQ] {
        rings.push(ScsiRing::configure(&d, &mut arena, vq, IO_RING, false)?);
    }
    let wwpn = ScsiTarget::new(TARGET_WWPN);
    expect_ok("VHOST_SCSI_SET_ENDPOINT", d.scsi_set_endpoint(&wwpn))?;
    n.errno(
        "VHOST_SCSI_SET_ENDPOINT twice",
        d.scsi_set_endpoint(&wwpn),
        libc::EEXIST,
    )?;
    let req = arena.alloc(64, 64)?;
    let resp = arena.alloc(RESP_LEN as u64, 64)?;
    let data = arena.alloc(BLOCK as u64, 4096)?;
    let io = &mut rings[2];
    let mut tag = 0u64;
    // One command: the request (and data out), then the response (and data in); waits for
    // its used entry and returns the response.
    let mut command = |target: u8,
                       cdb: &[u8],
                       out: Option<&[u8]>,
                       data_in: bool|
     -> Result<(u8, u8, u32, u32), NetError> {
        tag += 1;
        arena_write(&arena, req, &scsi_req(target, tag, cdb))?;
        arena_write(&arena, resp, &[0xffu8; RESP_LEN])?;
        let mut descs = vec![(req, REQ_LEN as u32, 0u16)];
        if let Some(bytes) = out {
            arena_write(&arena, data, bytes)?;
            descs.push((data, bytes.len() as u32, 0));
        }
        descs.push((resp, RESP_LEN as u32, WRITE));
        if data_in {
            arena_write(&arena, data, &[0xeeu8; BLOCK])?;
            descs.push((data, BLOCK as u32, WRITE));
        }
        let head = io.post(&arena, &descs)?;
        io.kick()?;
        io.expect_used(
            &arena,
            &format!("vhost-scsi command, tag {tag} (cdb {:#04x})", cdb[0]),
            head,
            timeout,
        )?;
        let mut b = [0u8; RESP_LEN];
        arena.read(resp, &mut b)?;
        Ok(scsi_resp(&b))
    };
    let good = (S_OK, STAT_GOOD, 0u32, 0u32);
    let pattern: Vec<u8> = (0..BLOCK).map(|i| (i * 7 + 3) as u8).collect();
    let mut cmds = 0u64;
    let mut expect = |case: &str, got: (u8, u8, u32, u32), want: (u8, u8, u32, u32)| {
        cmds += 1;
        if got == want {
            Ok(())
        } else {
            Err(fail(
                case,
                format!("(response, status, resid, sense_len) {got:?}, expected {want:?}"),
            ))
        }
    };
    let got = command(TPGT, &rw10(true, 8, 1), Some(&pattern), false)?;
    expect("WRITE(10) of block 8", got, good)?;
    let got = command(TPGT, &rw10(false, 8, 1), None, true)?;
    expect("READ(10) of block 8", got, good)?;
    let mut back = vec![0u8; BLOCK];
    arena.read(data, &mut back)?;
    if back != pattern {
        return Err(fail(
            "READ(10) of block 8",
            "the data differs from what was written",
        ));
    }
    let got = command(TPGT, &rw10(false, 9, 1), None, true)?;
    expect("READ(10) of block 9", got, good)?;
    arena.read(data, &mut back)?;
    if back.iter().any(|&b| b != 0) {
        return Err(fail(
            "READ(10) of block 9",
            "a block never written is not zeros",
        ));
    }
    // No portal group with tag 5: answered at once, nothing reaches the target.
    let got = command(5, &rw10(false, 8, 1), None, true)?;
    if got.0 != S_BAD_TARGET {
        return Err(fail(
            "a command for target 5",
            format!("response {}, expected BAD_TARGET", got.0),
        ));
    }
    cmds += 1;
    n.errno(
        "VHOST_SCSI_CLEAR_ENDPOINT of another target",
        d.scsi_clear_endpoint(&ScsiTarget::new(INITIATOR_WWPN)),
        libc::EINVAL,
    )?;
    expect_ok("VHOST_SCSI_CLEAR_ENDPOINT", d.scsi_clear_endpoint(&wwpn))?;
    drop(d);
    Ok(cmds)
}

/// `[start, end)` of the text symbol `name` in `/proc/kallsyms` text: its address and the
/// next higher symbol's. `None` when it is missing, listed twice, or addresses are hidden.
pub fn symbol_range(kallsyms: &str, name: &str) -> Option<(u64, u64)> {
    let mut start = None;
    let mut addrs = Vec::new();
    for line in kallsyms.lines() {
        let mut it = line.split_whitespace();
        let (Some(a), Some(kind), Some(sym)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        if sym == name && matches!(kind, "t" | "T") {
            if start.is_some() {
                return None;
            }
            start = Some(a);
        }
        addrs.push(a);
    }
    let start = start.filter(|&a| a != 0)?;
    let end = addrs.into_iter().filter(|&a| a > start).min()?;
    Some((start, end))
}

/// PCs of `area` in `[start, end)`.
fn pcs_in(area: &MappedArea, (start, end): (u64, u64)) -> u64 {
    area.snapshot(TraceMode::Pc)
        .pcs()
        .filter(|pc| (start..end).contains(pc))
        .count() as u64
}

/// The new workers run under the kcov handle of the thread that created them: a thread
/// with a common handle of its own (remote enable) spawns one that owns a device whose
/// queues all moved to a new worker (the default one freed); the kicks' handlers must show
/// up in that handle's area. Returns the PCs found in the kick handlers.
fn prove_kick_coverage(nvqs: u32, timeout: Duration) -> Result<u64, NetError> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("scsi-kcov".into())
            .spawn_scoped(s, || {
                // Read here, untraced: kallsyms would flood the driver thread's local area.
                let kallsyms =
                    std::fs::read_to_string("/proc/kallsyms").map_err(sys("/proc/kallsyms"))?;
                let mut ranges = Vec::new();
                for (name, vq) in KICK_HANDLERS {
                    let r = symbol_range(&kallsyms, name).ok_or_else(|| {
                        fail(
                            "kcov proof",
                            format!("{name} not found (once, with an address) in /proc/kallsyms"),
                        )
                    })?;
                    ranges.push((name, vq, r));
                }
                drop(kallsyms);
                let handle =
                    kcov::common_handle(kcov::fresh_instance()).map_err(|e| fail("kcov", e))?;
                let mut k = Kcov::open_default()
                    .and_then(|mut k| {
                        k.init_trace(PROOF_AREA_WORDS)?;
                        k.remote_enable(TraceMode::Pc, handle, &[])?;
                        Ok(k)
                    })
                    .map_err(|e| fail("kcov remote enable (proof)", e))?;
                let area = k
                    .shared_area()
                    .ok_or_else(|| fail("kcov proof", "no area"))?;
                // The owner inherits the handle at its creation, after the enable.
                let r = std::thread::scope(|s2| {
                    std::thread::Builder::new()
                        .name("scsi-owner".into())
                        .spawn_scoped(s2, || kick_on_new_worker(&area, &ranges, nvqs, timeout))
                        .map_err(sys("spawning the owner thread"))?
                        .join()
                        .unwrap_or_else(|_| Err(fail("kcov proof", "the owner thread panicked")))
                });
                let _ = k.disable();
                r
            })
            .map_err(sys("spawning the kcov thread"))?
            .join()
            .unwrap_or_else(|_| Err(fail("kcov proof", "the kcov thread panicked")))
    })
}

type Handlers<'a> = [(&'a str, u32, (u64, u64))];

fn kick_on_new_worker(
    area: &Arc<MappedArea>,
    handlers: &Handlers<'_>,
    nvqs: u32,
    timeout: Duration,
) -> Result<u64, NetError> {
    let case = "kcov proof";
    let d = open()?;
    expect_ok("VHOST_SET_OWNER (proof)", d.set_owner())?;
    let w = expect_ok("VHOST_NEW_WORKER (proof)", d.new_worker())?;
    for vq in 0..nvqs {
        expect_ok(
            "VHOST_ATTACH_VRING_WORKER (proof)",
            d.attach_vring_worker(vq, w),
        )?;
    }
    expect_ok(
        "VHOST_FREE_WORKER of the default worker (proof)",
        d.free_worker(0),
    )?;
    let mut fds = Vec::new();
    for &(_, vq, _) in handlers {
        let s = expect_ok("VHOST_GET_VRING_WORKER (proof)", d.get_vring_worker(vq))?;
        if s.num != w {
            return Err(fail(
                case,
                format!("queue {vq} on worker {}, not {w}", s.num),
            ));
        }
        let ev = EventFd::new(libc::EFD_NONBLOCK).map_err(sys("eventfd"))?;
        expect_ok(
            "VHOST_SET_VRING_KICK (proof)",
            d.set_vring_kick(vq, ev.as_raw_fd()),
        )?;
        fds.push(ev);
    }
    expect_ok("VHOST_SET_LOG_FD -1 (flush)", d.set_log_fd(-1))?;
    for &(name, _, r) in handlers {
        let before = pcs_in(area, r);
        if before != 0 {
            return Err(fail(
                case,
                format!("{before} PCs of {name} before any kick"),
            ));
        }
    }
    if area.snapshot(TraceMode::Pc).pcs().next().is_none() {
        // The setup's flushes ran on the workers too (vhost_flush_work).
        return Err(fail(
            case,
            "no remote coverage at all from the device's workers",
        ));
    }
    for ev in &fds {
        ev.write(1).map_err(sys("kick"))?;
    }
    // The flush waits for the kicks' work on the new worker; its remote section has been
    // copied into the area by then. Poll a little in case of a late wakeup.
    expect_ok("VHOST_SET_LOG_FD -1 (flush)", d.set_log_fd(-1))?;
    let deadline = Instant::now() + timeout;
    let mut total = 0;
    for &(name, vq, r) in handlers {
        let got = loop {
            let got = pcs_in(area, r);
            if got > 0 || Instant::now() >= deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if got == 0 {
            return Err(fail(
                case,
                format!(
                    "no PC of {name} ({:#x}..{:#x}) in the remote area after kicking queue {vq} on new worker {w}",
                    r.0, r.1
                ),
            ));
        }
        total += got;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_follow_vhost_scsi_open() {
        assert_eq!(queues_for(128), 130);
        assert_eq!(queues_for(0), 3);
        assert_eq!(queues_for(5000), 1026);
    }

    #[test]
    fn features_are_vhost_scsi_features() {
        assert_eq!(SCSI_FEATURES, 0x1_3d00_000a);
    }

    #[test]
    fn symbol_ranges_come_from_the_next_symbol() {
        let k = "ffffffff81000000 T _stext\n\
                 ffffffff81200010 t vhost_scsi_handle_kick\n\
                 ffffffff81200000 t before\n\
                 ffffffff81200040 t after\n\
                 ffffffff81300000 T far\n\
                 bad line\n\
                 ffffffff81200080 t vhost_scsi_ctl_handle_kick [vhost_scsi]\n";
        assert_eq!(
            symbol_range(k, "vhost_scsi_handle_kick"),
            Some((0xffffffff81200010, 0xffffffff81200040))
        );
        assert_eq!(
            symbol_range(k, "vhost_scsi_ctl_handle_kick"),
            Some((0xffffffff81200080, 0xffffffff81300000))
        );
        assert_eq!(symbol_range(k, "missing"), None);
        assert_eq!(symbol_range(k, "far"), None, "no symbol after it");
        // Hidden addresses (kptr_restrict) and duplicates give no range.
        assert_eq!(
            symbol_range("0000000000000000 t f\n0000000000000000 t g\n", "f"),
            None
        );
        let dup = "ffffffff81200010 t f\nffffffff81200020 t f\nffffffff81200030 t g\n";
        assert_eq!(symbol_range(dup, "f"), None);
    }
}
