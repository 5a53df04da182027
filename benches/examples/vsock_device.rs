//! In-VMM virtio-vsock guest → host throughput (the `vsock_stream` test guest
//! under /dev/kvm, a host listener on `<uds>_<port>`), for `cargo xtask bench
//! vsock` or by hand:
//!
//! `cargo run --release -p testbed-bench --example vsock_device -- [MiB] [packet bytes] [runs]`

use testbed_bench::vsock_device::bench_guest_to_host;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mut num = |default: u64| {
        args.next()
            .map(|a| a.parse::<u64>().unwrap_or(default))
            .unwrap_or(default)
    };
    let mib = num(64).clamp(1, 4096);
    let packet = num(65536).clamp(1, 65536) as u32;
    let runs = num(3).clamp(1, 100);
    let mut rates = Vec::new();
    for _ in 0..runs {
        match bench_guest_to_host(mib << 20, packet) {
            Ok(b) => {
                println!("vsock: {b}");
                rates.push(b.mb_per_s());
            }
            Err(e) => {
                eprintln!("vsock bench: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "vsock guest->host median of {runs}: {:.1} MB/s",
        rates[rates.len() / 2]
    );
    std::process::ExitCode::SUCCESS
}
