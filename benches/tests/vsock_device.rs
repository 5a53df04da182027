//! The in-VMM vsock bench under the real /dev/kvm (skips where it cannot be opened).

mod common;

use common::kvm_or_skip;
use testbed_bench::vsock_device::bench_guest_to_host;

/// `bench_guest_to_host` (what `cargo xtask bench vsock` calls) runs and
/// checks its stream.
#[test]
fn bench_guest_to_host_reports_a_throughput() {
    if !kvm_or_skip("bench_guest_to_host_reports_a_throughput") {
        return;
    }
    let b = bench_guest_to_host(4 << 20, 65536).unwrap();
    eprintln!("vsock bench: {b}");
    assert_eq!(b.bytes, 4 << 20);
    assert!(b.mb_per_s() > 0.0);
    assert_eq!(b.stats.activations, 1);
}
