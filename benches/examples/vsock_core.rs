//! `cargo run --release -p testbed-bench --example vsock_core [PACKETS]`: packets/s
//! of the vsock core with the synthetic driver (small and full-size packets).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let packets: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    for payload in [64, 4096, 65536] {
        let n = if payload == 65536 {
            packets / 16
        } else {
            packets
        };
        println!(
            "vsock core: {}",
            testbed_bench::vsock_core::core(n, payload)?
        );
    }
    Ok(())
}
