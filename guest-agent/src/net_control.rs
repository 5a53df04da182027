//! `vhost-net-control`: the control plane of a live vhost-net device, each step checked.
//!
//! * Dirty logging (VHOST_F_LOG_ALL, VHOST_SET_LOG_BASE, VHOST_SET_LOG_FD, rings with
//!   VHOST_VRING_F_LOG): after TX and RX traffic the log bitmap must name exactly the pages
//!   vhost wrote (the RX buffers' header and frame bytes, both used rings) and no other; the
//!   log eventfd must have fired; a log base in kernel space is refused (EFAULT).
//! * Backend detach / attach under traffic with `VHOST_GET_VRING_BASE`: a batch kicked and
//!   detached at once stops where vhost got to (used ring = base, exactly those frames out of
//!   the tap); re-attached, the rest follow in order, byte-exact.
//! * `VHOST_RESET_OWNER` with backends attached: the device forgets its owner (EPERM), a new
//!   owner sets it up again and `VHOST_SET_VRING_BASE` resumes the rings where they were.
//! * IOTLB (VIRTIO_F_ACCESS_PLATFORM, VHOST_BACKEND_F_IOTLB_MSG_V2): starting with an empty
//!   IOTLB, every ring and buffer access misses; the misses are read from the device fd
//!   (each inside the frontend's memory) and answered with VHOST_IOTLB_UPDATE until the frames
//!   come out byte-exact; after VHOST_IOTLB_INVALIDATE of everything the next frame misses
//!   again; an update pointing into kernel space is refused (EFAULT). The dirty log is on
//!   meanwhile: logged through the IOTLB (vhost translates the used ring's I/O address and
//!   finds the guest address by the memory table), it must name the TX used ring's pages
//!   only.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use frontends::vhost_raw::{
    IotlbMsg, MsgV2, ACCESS_RW, BACKEND_F_IOTLB_MSG_V2, F_ACCESS_PLATFORM, F_LOG_ALL,
    IOTLB_INVALIDATE, IOTLB_MISS, IOTLB_MSG_V2, IOTLB_UPDATE,
};
use frontends::vring::poll_readable;
use kcov_wire::plan::Params;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::net::{test_frame, Counters, NetError, PacketSocket, NET_HDR_LEN};
use crate::rawnet::{compare, drain_fired, page, DirtyLog, VHOST_PAGE};
use crate::rawnet::{expect_errno, expect_ok, fail, RawNet, RawOpts, F_V1, RXQ, TXQ};

const QUEUE: u16 = 64;
const SIZE: usize = 200;

/// Runs the four parts; counters say what each checked.
pub fn run(params: &Params) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let mut c = Counters::new();
    let (pages, frames_log) = dirty_log(timeout)?;
    c.push(("log_pages".into(), pages));
    let frames_live = live_base(timeout)?;
    let (misses, frames_iotlb) = iotlb(timeout)?;
    c.push(("iotlb_misses".into(), misses));
    c.push((
        "frames_verified".into(),
        frames_log + frames_live + frames_iotlb,
    ));
    c.push(("iterations".into(), 4));
    Ok(c)
}

/// Posts an RX buffer, injects RX frame `seq`, checks it landed; returns (buffer, used len).
fn rx_one(
    n: &mut RawNet,
    inject: &PacketSocket,
    case: &str,
    seq: u32,
    timeout: Duration,
) -> Result<(u64, u32), NetError> {
    let (head, buf) = n.rx_buffer((NET_HDR_LEN + 2048) as u32)?;
    let frame = test_frame(b'R', seq, SIZE);
    inject.send(&frame)?;
    let want = (NET_HDR_LEN + SIZE) as u32;
    match n.wait_used(RXQ, timeout)? {
        Some((id, len)) if id == u32::from(head) && len == want => {}
        other => return Err(fail(case, format!("RX frame {seq}: used {other:?}"))),
    }
    let mut got = vec![0u8; SIZE];
    n.arena.read(buf + NET_HDR_LEN as u64, &mut got)?;
    if got != frame {
        return Err(fail(case, format!("RX frame {seq} differs")));
    }
    Ok((buf, want))
}

/// The pages of ring `q`'s used ring.
fn used_pages(n: &RawNet, q: usize) -> std::ops::RangeInclusive<u64> {
    let used = n.rings[q].ring.used;
    page(used)..=page(used + 6 + 8 * u64::from(QUEUE) - 1)
}

/// Dirty logging; returns (pages logged, frames checked).
fn dirty_log(timeout: Duration) -> Result<(u64, u64), NetError> {
    let case = "dirty log";
    let arena = RawNet::arena(QUEUE, 0)?;
    let info = arena.region_info();
    let mut n = RawNet::open(arena, RawOpts::new(F_V1 | (1 << F_LOG_ALL), QUEUE))?;
    let log = DirtyLog::new(&info)?;
    expect_ok(case, n.dev.set_log_base(log.base()))?;
    let log_fd = EventFd::new(EFD_NONBLOCK).map_err(|source| NetError::Sys {
        what: "eventfd (log)".into(),
        source,
    })?;
    expect_ok(case, n.dev.set_log_fd(log_fd.as_raw_fd()))?;
    for q in [RXQ, TXQ] {
        n.log_ring(case, q)?;
    }
    n.attach(RXQ)?;
    n.attach(TXQ)?;
    // A log base whose bitmap lies in kernel space is refused while rings log.
    expect_errno(
        "log base in kernel space",
        n.dev.set_log_base(0xffff_8000_0000_0000),
        libc::EFAULT,
    )?;
    // The attach already wrote each used ring's flags (vhost_update_used_flags): their
    // pages, and nothing else, are dirty before any traffic.
    let mut expected = std::collections::BTreeSet::new();
    for q in [RXQ, TXQ] {
        expected.extend(used_pages(&n, q));
    }
    compare(case, "after the attach", &log.pages()?, &expected)?;
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    let mut frames = 0;
    for seq in 0..8 {
        n.tx_checked(case, seq, SIZE, timeout)?;
        let (buf, len) = rx_one(&mut n, &inject, case, seq, timeout)?;
        expected.extend(page(buf)..=page(buf + u64::from(len) - 1));
        frames += 2;
    }
    n.detach_all();
    let logged = log.pages()?;
    compare(case, "after the traffic", &logged, &expected)?;
    let fired = drain_fired(&log_fd)?;
    if !fired {
        return Err(fail(case, "the log eventfd never fired"));
    }
    Ok((logged.len() as u64, frames))
}

/// Detach/attach under traffic, GET/SET_VRING_BASE, RESET_OWNER; returns frames checked.
fn live_base(timeout: Duration) -> Result<u64, NetError> {
    let case = "detach under traffic";
    let arena = RawNet::arena(QUEUE, 0)?;
    let mut n = RawNet::open(arena, RawOpts::new(F_V1, QUEUE))?;
    n.attach(RXQ)?;
    n.attach(TXQ)?;
    let mut seq = 0u32;
    for _ in 0..4 {
        n.tx_checked(case, seq, SIZE, timeout)?;
        seq += 1;
    }
    let base = expect_ok(case, n.dev.get_vring_base(TXQ as u32))?;
    if base != seq {
        return Err(fail(
            case,
            format!("VHOST_GET_VRING_BASE {base} after {seq} frames"),
        ));
    }
    // A batch of 16 kicked, the backend pulled right away.
    for i in 0..16 {
        n.put_tx_frame(seq + i, SIZE, NET_HDR_LEN)?;
    }
    n.kick(TXQ)?;
    n.detach(TXQ)?;
    let stopped = expect_ok(case, n.dev.get_vring_base(TXQ as u32))?;
    if !(seq..=seq + 16).contains(&stopped) {
        return Err(fail(
            case,
            format!("base {stopped} outside {seq}..={}", seq + 16),
        ));
    }
    let mut used = 0;
    while let Some((id, _)) = n.wait_used(TXQ, Duration::from_millis(100))? {
        let want = n.slot(TXQ, (seq + used) as u16).0;
        if id != u32::from(want) {
            return Err(fail(case, format!("used id {id}, expected {want}")));
        }
        used += 1;
    }
    if seq + used != stopped {
        return Err(fail(
            case,
            format!(
                "{used} used after the detach, the base says {}",
                stopped - seq
            ),
        ));
    }
    for s in seq..stopped {
        n.expect_tx_out(case, s, SIZE, timeout)?;
    }
    n.expect_no_tx_out(case, Duration::from_millis(200))?;
    // Re-attached, the rest of the batch follows.
    n.attach(TXQ)?;
    n.kick(TXQ)?;
    for s in stopped..seq + 16 {
        n.expect_tx_out(case, s, SIZE, timeout)?;
        if n.wait_used(TXQ, timeout)?.is_none() {
            return Err(fail(
                case,
                format!("frame {s} never used after the re-attach"),
            ));
        }
    }
    seq += 16;

    // RESET_OWNER with the backends attached; a new owner resumes where the rings were.
    let case = "reset owner";
    expect_ok(case, n.dev.reset_owner())?;
    expect_errno(case, n.dev.get_vring_base(TXQ as u32), libc::EPERM)?;
    expect_ok(case, n.dev.set_owner())?;
    let base = expect_ok(case, n.dev.get_vring_base(TXQ as u32))?;
    if base != 0 {
        return Err(fail(
            case,
            format!("base {base} after the reset, expected 0"),
        ));
    }
    expect_ok(case, n.dev.set_features(F_V1))?;
    let info = n.arena.region_info();
    expect_ok(
        case,
        n.dev
            .set_mem_table(&[frontends::vhost_raw::MemRegion::from(info)]),
    )?;
    for q in [RXQ, TXQ] {
        n.rings[q].configure(&n.dev, q as u32)?;
    }
    let rx_base = u32::from(n.rings[RXQ].ring.avail_idx());
    expect_ok(case, n.dev.set_vring_base(TXQ as u32, seq))?;
    expect_ok(case, n.dev.set_vring_base(RXQ as u32, rx_base))?;
    n.attach(RXQ)?;
    n.attach(TXQ)?;
    for _ in 0..4 {
        n.tx_checked(case, seq, SIZE, timeout)?;
        seq += 1;
    }
    let base = expect_ok(case, n.dev.get_vring_base(TXQ as u32))?;
    if base != seq {
        return Err(fail(case, format!("base {base} after {seq} frames")));
    }
    let inject = PacketSocket::bind(n.tap.ifindex()?, 0)?;
    for s in 0..4 {
        rx_one(&mut n, &inject, case, s, timeout)?;
    }
    n.detach_all();
    Ok(u64::from(seq) + 4)
}

/// Answers the device's IOTLB misses until TX frame `seq` is out and used; returns misses.
fn iotlb_frame(
    n: &mut RawNet,
    case: &str,
    seq: u32,
    chunk: u64,
    timeout: Duration,
) -> Result<u64, NetError> {
    let info = n.arena.region_info();
    let (lo, hi) = (
        info.guest_phys_addr,
        info.guest_phys_addr + info.memory_size,
    );
    let head = n.tx_frame(seq, SIZE, NET_HDR_LEN)?;
    let deadline = Instant::now() + timeout;
    let mut misses = 0;
    let mut out = false;
    loop {
        if Instant::now() > deadline {
            return Err(fail(
                case,
                format!("frame {seq}: not out after {misses} misses"),
            ));
        }
        if !out {
            if let Some(f) = n.sock.recv(Duration::from_millis(5))? {
                if f == test_frame(b'T', seq, SIZE) {
                    out = true;
                }
            }
        }
        if out {
            if let Some((id, len)) = n.wait_used(TXQ, Duration::from_millis(5))? {
                if (id, len) != (u32::from(head), 0) {
                    return Err(fail(case, format!("frame {seq}: used ({id}, {len})")));
                }
                return Ok(misses);
            }
        }
        let readable =
            poll_readable(&[n.dev.fd()], Duration::from_millis(20)).map_err(|source| {
                NetError::Sys {
                    what: "poll (vhost-net fd)".into(),
                    source,
                }
            })?;
        if !readable[0] {
            continue;
        }
        while let Some(m) = n.dev.read_msg().map_err(|source| NetError::Sys {
            what: "read (IOTLB message)".into(),
            source,
        })? {
            if m.kind != IOTLB_MSG_V2 || m.iotlb.kind != IOTLB_MISS {
                return Err(fail(case, format!("unexpected message {m:?}")));
            }
            let iova = m.iotlb.iova;
            if !(lo..hi).contains(&iova) {
                return Err(fail(
                    case,
                    format!("miss at {iova:#x}, outside {lo:#x}..{hi:#x}"),
                ));
            }
            misses += 1;
            let start = (iova & !(chunk - 1)).max(lo);
            let end = (start + chunk).min(hi);
            let update = MsgV2::iotlb(IotlbMsg {
                iova: start,
                size: end - start,
                uaddr: start,
                perm: ACCESS_RW,
                kind: IOTLB_UPDATE,
            });
            let w = expect_ok(case, n.dev.write_msg(&update))?;
            if w != std::mem::size_of::<MsgV2>() {
                return Err(fail(case, format!("IOTLB update: wrote {w} bytes")));
            }
        }
    }
}

/// The IOTLB message flow; returns (misses, frames checked).
fn iotlb(timeout: Duration) -> Result<(u64, u64), NetError> {
    let case = "iotlb";
    let arena = RawNet::arena(QUEUE, 0)?;
    let info = arena.region_info();
    let features = F_V1 | (1u64 << F_ACCESS_PLATFORM) | (1 << F_LOG_ALL);
    let mut n = RawNet::open(arena, RawOpts::new(features, QUEUE))?;
    expect_ok(case, n.dev.set_backend_features(BACKEND_F_IOTLB_MSG_V2))?;
    // The dirty log through the IOTLB: vhost logs what it wrote at I/O addresses by the
    // memory table's guest address of the frontend address they translate to.
    let log = DirtyLog::new(&info)?;
    expect_ok(case, n.dev.set_log_base(log.base()))?;
    n.log_ring(case, TXQ)?;
    let got = expect_ok(case, n.dev.get_backend_features())?;
    if got & BACKEND_F_IOTLB_MSG_V2 == 0 {
        return Err(fail(
            case,
            format!("backend features {got:#x} lack IOTLB_MSG_V2"),
        ));
    }
    // vhost touches the used ring when a backend comes (its flags): with nothing translated
    // the attach fails and leaves a miss for the used ring to read.
    expect_errno(
        "attach before the used ring is translated",
        n.dev.net_set_backend(TXQ as u32, n.tap.file().as_raw_fd()),
        libc::EFAULT,
    )?;
    let used = n.rings[TXQ].ring.used;
    let miss = expect_ok(case, n.dev.read_msg())?
        .ok_or_else(|| fail(case, "no IOTLB miss after the failed attach"))?;
    if miss.kind != IOTLB_MSG_V2
        || miss.iotlb.kind != IOTLB_MISS
        || !(used..used + VHOST_PAGE).contains(&miss.iotlb.iova)
    {
        return Err(fail(
            case,
            format!("expected a miss in the used ring at {used:#x}: {miss:?}"),
        ));
    }
    let map_used = MsgV2::iotlb(IotlbMsg {
        iova: used,
        size: VHOST_PAGE,
        uaddr: used,
        perm: ACCESS_RW,
        kind: IOTLB_UPDATE,
    });
    expect_ok(case, n.dev.write_msg(&map_used))?;
    n.attach(TXQ)?;
    // An update into kernel space is refused before it reaches the IOTLB.
    let bad = MsgV2::iotlb(IotlbMsg {
        iova: 0,
        size: 4096,
        uaddr: 0xffff_8000_0000_0000,
        perm: ACCESS_RW,
        kind: IOTLB_UPDATE,
    });
    expect_errno(
        "IOTLB update into kernel space",
        n.dev.write_msg(&bad),
        libc::EFAULT,
    )?;
    let mut misses = 0;
    // 16 KiB translations: each ring part and buffer page misses on its own.
    for seq in 0..4 {
        misses += iotlb_frame(&mut n, case, seq, 16 << 10, timeout)?;
    }
    if misses == 0 {
        return Err(fail(case, "no IOTLB miss with an empty IOTLB"));
    }
    let inval = MsgV2::iotlb(IotlbMsg {
        iova: info.guest_phys_addr,
        size: info.memory_size,
        uaddr: 0,
        perm: 0,
        kind: IOTLB_INVALIDATE,
    });
    expect_ok(case, n.dev.write_msg(&inval))?;
    let again = iotlb_frame(&mut n, case, 4, 1 << 20, timeout)?;
    if again == 0 {
        return Err(fail(case, "no IOTLB miss after invalidating everything"));
    }
    n.detach_all();
    // TX wrote nothing but its used ring.
    let expected: std::collections::BTreeSet<u64> = used_pages(&n, TXQ).collect();
    compare(
        "iotlb dirty log",
        "after the traffic",
        &log.pages()?,
        &expected,
    )?;
    // The used-ring miss of the failed attach counts too.
    Ok((1 + misses + again, 5))
}
