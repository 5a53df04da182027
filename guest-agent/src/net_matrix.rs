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

use crate::net::{run_rx_variant, run_tx_variant, Counters, Layout, NetError, Variant};

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
/// tap byte-exact and be used; the parameter must read 1.
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
    Ok(vec![
        ("frames_verified".into(), frames),
        ("iterations".into(), runs),
    ])
}

fn counter(c: &Counters, name: &str) -> u64 {
    c.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}
