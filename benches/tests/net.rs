//! The `cargo xtask bench net` path, small (200 frames per run, 50 of 64 KiB),
//! checked for
//! what it counts rather than how fast: every frame sent arrives once, in
//! order, byte-exact (TX: compared on the AF_PACKET socket; RX: the guest's
//! and the baseline reader's checksum over all frames equals the sum over the
//! frames sent), and the device's counters agree. Skips ("SKIP: reason")
//! without root, /dev/net/tun or a usable /dev/kvm.

use testbed_bench::net::{
    host_ready, run_host, run_vm, Direction, NetBenchConfig, NetBenchError, NetBenchResult,
};

/// (frame length, frames): the shortest, a full 1500-MTU frame, and the longest
/// a host can send into a tap; fewer of those, as the guest's checksum over
/// them is slow (its CPU runs far below native speed under PVM).
const RUNS: [(usize, u32); 3] = [(60, 200), (1514, 200), (65535, 50)];

fn ready_or_skip(test: &str, need_kvm: bool) -> bool {
    match host_ready(need_kvm) {
        Ok(()) => true,
        Err(NetBenchError::Unavailable(why)) => {
            let need = if why.contains("/dev/kvm") {
                test_skip::KVM
            } else {
                test_skip::ROOT_TUN
            };
            test_skip::skip(test, need, why);
            false
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

fn check_counts(r: &NetBenchResult, len: usize, frames: u32) {
    eprintln!("{r}");
    let n = u64::from(frames);
    assert_eq!(r.sent, n, "{r}");
    assert_eq!(r.delivered, n, "{r}");
    assert_eq!(r.bytes, n * len as u64, "{r}");
    assert_eq!(
        (r.corrupt, r.gaps, r.reordered, r.lost()),
        (0, 0, 0, 0),
        "{r}"
    );
    assert_eq!((r.tap_dropped, r.socket_dropped), (0, 0), "{r}");
    assert!(!r.stalled, "{r}");
    assert!(r.all_delivered_intact(), "{r}");
}

#[test]
fn vm_tx_frames_reach_the_tap_byte_exact() {
    let test = "vm_tx_frames_reach_the_tap_byte_exact";
    if !ready_or_skip(test, true) {
        return;
    }
    for (len, frames) in RUNS {
        let r = run_vm(&NetBenchConfig::new(Direction::Tx, frames, len, true)).unwrap();
        check_counts(&r, len, frames);
        assert_eq!(r.checksum, None, "TX frames are compared, not summed");
        let v = r.vm.as_ref().unwrap();
        assert_eq!(v.device.tx_frames, u64::from(frames), "{v:?}");
        assert_eq!(v.device.tx_bytes, u64::from(frames) * len as u64, "{v:?}");
        assert_eq!(
            (v.device.bad_chains, v.device.backend_errors),
            (0, 0),
            "{v:?}"
        );
        assert!(v.kicks >= 1 && v.kicks <= frames, "{v:?}");
        assert!(!v.stopped_by_host);
    }
}

#[test]
fn vm_rx_frames_reach_the_guest_byte_exact() {
    let test = "vm_rx_frames_reach_the_guest_byte_exact";
    if !ready_or_skip(test, true) {
        return;
    }
    for (len, frames) in RUNS {
        let r = run_vm(&NetBenchConfig::new(Direction::Rx, frames, len, true)).unwrap();
        check_counts(&r, len, frames);
        let c = r.checksum.expect("verify asks the guest for a checksum");
        assert_eq!(c.got, c.want, "{r}");
        let v = r.vm.as_ref().unwrap();
        // Frames of other ethertypes are the only others the device may carry.
        assert_eq!(v.device.rx_frames, u64::from(frames) + r.ignored, "{v:?}");
        assert_eq!(
            (
                v.device.rx_dropped,
                v.device.bad_chains,
                v.device.backend_errors
            ),
            (0, 0, 0),
            "{v:?}"
        );
        assert!(
            !v.stopped_by_host,
            "the guest had all frames before the stop word"
        );
    }
}

#[test]
fn host_baseline_counts_add_up_both_ways() {
    let test = "host_baseline_counts_add_up_both_ways";
    if !ready_or_skip(test, false) {
        return;
    }
    for (len, frames) in RUNS {
        let tx = run_host(&NetBenchConfig::new(Direction::Tx, frames, len, true)).unwrap();
        check_counts(&tx, len, frames);
        assert!(tx.vm.is_none());
        let rx = run_host(&NetBenchConfig::new(Direction::Rx, frames, len, true)).unwrap();
        check_counts(&rx, len, frames);
        let c = rx.checksum.unwrap();
        assert_eq!(c.got, c.want, "{rx}");
    }
}

#[test]
fn bad_configs_are_refused_before_anything_runs() {
    for (n, len) in [(0, 64), (10, 59), (10, 65554)] {
        for dir in [Direction::Tx, Direction::Rx] {
            let cfg = NetBenchConfig::new(dir, n, len, false);
            for e in [run_vm(&cfg).unwrap_err(), run_host(&cfg).unwrap_err()] {
                assert!(matches!(e, NetBenchError::Config(_)), "{e}");
            }
        }
    }
}
