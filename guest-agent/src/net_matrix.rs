//! `vhost-net-matrix`: the vhost-net feature matrix, one fresh device per variant, each
//! moving `frames` (at most 16) TX frames out of the tap and as many RX frames into the ring, every one
//! checked byte-exact (and, on RX, its used length and `num_buffers`) by [`crate::net`].
//!
//! | variant | what it turns |
//! |---|---|
//! | `indirect-noevent` | VIRTIO_RING_F_INDIRECT_DESC on, EVENT_IDX off (flags-based notification) |
//! | `no-mrg` | MRG_RXBUF off: one RX buffer per frame, EVENT_IDX on |
//! | `legacy` | no VERSION_1, no MRG_RXBUF: the 10-byte legacy header, the tap told so |
//! | `legacy-mrg` | no VERSION_1 with MRG_RXBUF: 12-byte header |
//! | `vhost-hdr` | VHOST_NET_F_VIRTIO_NET_HDR: vhost adds/strips the header, the tap has none; header and frame in one descriptor |
//! | `scattered` | the header cut across descriptors, the frame across two (ANY_LAYOUT), indirect |
//! | `busy-poll` | VHOST_SET_VRING_BUSYLOOP_TIMEOUT 200 µs on both rings (read back) |
//! | `sndbuf` | a finite tap send buffer: TX frames sent one by one instead of XDP batches |
//! | `big-tx` | 3000-byte TX frames: too big for one page, the single-frame send path |
//! | `kthread` | VHOST_SET_FORK_FROM_OWNER(kthread): the worker is a kthread (read back) |

use kcov_wire::plan::Params;

use std::os::fd::AsRawFd;

use frontends::tap::Tap;
use frontends::vhost_raw::MemRegion;

use crate::net::{run_rx_variant, run_tx_variant, Counters, Layout, NetError, Variant};
use crate::net::{PacketSocket, TEST_ETHERTYPE};
use crate::rawnet::{expect_errno, expect_ok, RawNet, RawOpts, F_V1, TXQ};

/// One row of the matrix: its name, the ring parameters it changes, the device options, and
/// the TX / RX frame sizes (RX 0: no RX run).
struct Row {
    name: &'static str,
    indirect: bool,
    event_idx: bool,
    mrg_rxbuf: bool,
    variant: Variant,
    tx_size: usize,
    rx_size: usize,
}

fn rows() -> Vec<Row> {
    let base = Variant::default();
    let row = |name, variant| Row {
        name,
        indirect: false,
        event_idx: true,
        mrg_rxbuf: true,
        variant,
        tx_size: 256,
        rx_size: 256,
    };
    vec![
        Row {
            indirect: true,
            event_idx: false,
            ..row("indirect-noevent", base)
        },
        Row {
            mrg_rxbuf: false,
            ..row("no-mrg", base)
        },
        Row {
            mrg_rxbuf: false,
            event_idx: false,
            ..row(
                "legacy",
                Variant {
                    version_1: false,
                    ..base
                },
            )
        },
        row(
            "legacy-mrg",
            Variant {
                version_1: false,
                ..base
            },
        ),
        row(
            "vhost-hdr",
            Variant {
                vhost_hdr: true,
                layout: Layout::One,
                ..base
            },
        ),
        Row {
            indirect: true,
            ..row(
                "scattered",
                Variant {
                    layout: Layout::Scattered,
                    ..base
                },
            )
        },
        row(
            "busy-poll",
            Variant {
                busyloop_us: 200,
                ..base
            },
        ),
        Row {
            rx_size: 0,
            ..row(
                "sndbuf",
                Variant {
                    sndbuf: Some(1 << 20),
                    ..base
                },
            )
        },
        Row {
            tx_size: 3000,
            rx_size: 0,
            ..row("big-tx", base)
        },
        row(
            "kthread",
            Variant {
                kthread: true,
                ..base
            },
        ),
    ]
}

/// Runs every row; a failing row fails the workload, named.
pub fn run(params: &Params) -> Result<Counters, NetError> {
    let mut variants = 0u64;
    let mut frames = 0u64;
    for r in rows() {
        let p = Params {
            indirect: r.indirect,
            event_idx: r.event_idx,
            mrg_rxbuf: r.mrg_rxbuf,
            queue: 64,
            frames: params.frames.min(16),
            ..*params
        };
        let named = |e: NetError| NetError::Mismatch(format!("variant {}: {e}", r.name));
        let tx = run_tx_variant(&p, &r.variant, r.tx_size).map_err(named)?;
        frames += counter(&tx, "frames_verified");
        if r.rx_size > 0 {
            let rx = run_rx_variant(&p, &r.variant, r.rx_size).map_err(named)?;
            frames += counter(&rx, "frames_verified");
        }
        variants += 1;
    }
    Ok(vec![
        ("variants".into(), variants),
        ("frames_verified".into(), frames),
        ("iterations".into(), variants),
    ])
}

/// Where the kernel says whether vhost-net TX may use zero-copy.
const ZCOPY_PARAM: &str = "/sys/module/vhost_net/parameters/experimental_zcopytx";

/// `vhost-net-zcopy`: TX with `vhost_net.experimental_zcopytx=1` (the plan puts it on the
/// kernel command line): frames of at least VHOST_GOODCOPY_LEN (256) bytes leave by
/// zero-copy from the frontend's pages, shorter ones are copied by the same handler, and each
/// buffer is used only once the tap let go of its pages. Every frame must come out of the
/// tap byte-exact and be used; the parameter must read 1. Then [`zcopy_raw`]: a refused
/// attach, a flush and a backend replacement with zero-copy buffers in place.
pub fn run_zcopy(params: &Params) -> Result<Counters, NetError> {
    let on = std::fs::read_to_string(ZCOPY_PARAM).map_err(|source| NetError::Sys {
        what: format!("read {ZCOPY_PARAM}"),
        source,
    })?;
    if on.trim() != "1" {
        return Err(NetError::Mismatch(format!(
            "{ZCOPY_PARAM} is {:?}: boot with vhost_net.experimental_zcopytx=1",
            on.trim()
        )));
    }
    let p = Params {
        queue: 64,
        frames: params.frames.min(32),
        ..*params
    };
    let mut frames = 0u64;
    let mut runs = 0u64;
    for (name, size, v) in [
        ("zcopy", 1000, Variant::default()),
        ("copy below 256 bytes", 100, Variant::default()),
        (
            "zcopy scattered",
            1514,
            Variant {
                layout: Layout::Scattered,
                ..Variant::default()
            },
        ),
    ] {
        let c =
            run_tx_variant(&p, &v, size).map_err(|e| NetError::Mismatch(format!("{name}: {e}")))?;
        frames += counter(&c, "frames_verified");
        runs += 1;
    }
    let timeout = std::time::Duration::from_millis(u64::from(params.timeout_ms));
    frames += zcopy_raw(timeout)?;
    Ok(vec![
        ("frames_verified".into(), frames),
        ("iterations".into(), runs + 1),
    ])
}

/// Zero-copy TX frames of this part, per step.
const ZCOPY_STEP: u32 = 4;

/// Zero-copy TX on the raw device ([`RawNet`]). The zero-copy tap given to a TX ring whose
/// used ring is at address 0 is refused (EFAULT: `vhost_vq_init_access` fails after the
/// ubufs were allocated, which are waited for and freed); with the ring's address back,
/// 1000-byte frames leave by zero-copy; a VHOST_SET_MEM_TABLE of the same memory flushes the
/// device with ubufs in place (`vhost_net_flush` waits for every zero-copy buffer, then
/// re-arms the count) and frames go on; a second tap replaces the first on TX (the old
/// ubufs waited for and freed): frames come out of the new tap byte-exact and none out of
/// the old one. Returns the frames checked.
fn zcopy_raw(timeout: std::time::Duration) -> Result<u64, NetError> {
    let case = "zcopy raw device";
    let mut n = RawNet::open(RawNet::arena(64, 0)?, RawOpts::new(F_V1, 64))?;
    let mut a = n.rings[TXQ].vring_addr(TXQ as u32);
    a.used = 0;
    expect_ok(case, n.dev.set_vring_addr(&a))?;
    expect_errno(
        "zero-copy tap on a ring whose used ring is at 0",
        n.dev.net_set_backend(TXQ as u32, n.tap.file().as_raw_fd()),
        libc::EFAULT,
    )?;
    expect_ok(
        case,
        n.dev.set_vring_addr(&n.rings[TXQ].vring_addr(TXQ as u32)),
    )?;
    n.attach(TXQ)?;
    let mut seq = 0;
    let mut step = |n: &mut RawNet| -> Result<(), NetError> {
        for _ in 0..ZCOPY_STEP {
            n.tx_checked(case, seq, 1000, timeout)?;
            seq += 1;
        }
        Ok(())
    };
    step(&mut n)?;
    let info = n.arena.region_info();
    expect_ok(
        "VHOST_SET_MEM_TABLE with zero-copy ubufs",
        n.dev.set_mem_table(&[MemRegion {
            guest_phys_addr: info.guest_phys_addr,
            memory_size: info.memory_size,
            userspace_addr: info.userspace_addr,
            flags_padding: 0,
        }]),
    )?;
    step(&mut n)?;
    let tap = Tap::open("kcovtap%d")?;
    tap.set_up()?;
    let sock = PacketSocket::bind(tap.ifindex()?, TEST_ETHERTYPE)?;
    expect_ok(
        "second tap on TX",
        n.dev.net_set_backend(TXQ as u32, tap.file().as_raw_fd()),
    )?;
    let old_sock = std::mem::replace(&mut n.sock, sock);
    let old_tap = std::mem::replace(&mut n.tap, tap);
    step(&mut n)?;
    if let Some(f) = old_sock.recv(std::time::Duration::from_millis(100))? {
        return Err(NetError::Mismatch(format!(
            "{case}: {:?} came out of the replaced tap",
            crate::net::frame_id(&f)
        )));
    }
    n.detach_all();
    drop(old_tap);
    Ok(u64::from(3 * ZCOPY_STEP))
}

fn counter(c: &Counters, name: &str) -> u64 {
    c.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}
