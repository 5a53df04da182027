//! `cargo run -p testbed-bench --example vmm_start [ITERATIONS] [MEM_MIB]`: VMM start
//! to the test guest's first port write, median of ITERATIONS (default 20) runs, plus
//! RSS, in this process (`testbed_bench::vmm_start::bench_start_to_first_pio`);
//! `cargo xtask bench vmm-start` measures the same from the `vmm` binary's start.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let iterations = args.next().and_then(|a| a.parse().ok()).unwrap_or(20usize);
    let mem_mib = args.next().and_then(|a| a.parse().ok()).unwrap_or(128u64);
    match testbed_bench::vmm_start::bench_start_to_first_pio(iterations, mem_mib) {
        Ok(r) => {
            println!(
                "vmm-start: {} runs, {} MiB guest: start -> first PIO median {:.3} ms (min {:.3}, max {:.3}); RSS while running median {} KiB, peak {} KiB",
                r.iterations,
                mem_mib,
                r.median.as_secs_f64() * 1e3,
                r.min.as_secs_f64() * 1e3,
                r.max.as_secs_f64() * 1e3,
                r.rss_kib_median.map_or("?".into(), |v| v.to_string()),
                r.peak_rss_kib.map_or("?".into(), |v| v.to_string()),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmm-start: {e}");
            ExitCode::FAILURE
        }
    }
}
