//! The in-process start-up bench under the real /dev/kvm (skips where it cannot be opened).

mod common;

use common::kvm_or_skip;

#[test]
fn bench_helper_measures_start_to_first_pio() {
    if !kvm_or_skip("bench_helper_measures_start_to_first_pio") {
        return;
    }
    let r = testbed_bench::vmm_start::bench_start_to_first_pio(3, 32).unwrap();
    assert_eq!(r.iterations, 3);
    assert!(r.min <= r.median && r.median <= r.max);
    assert!(r.peak_rss_kib.is_some());
}
