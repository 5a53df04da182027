//! Start-up benchmark: VMM start (the call of [`vmm::run`]) to the test guest's
//! first port write, over many runs of the [`vmm::guests::HELLO`] guest, in
//! this process (`cargo run -p testbed-bench --example vmm_start`; `cargo xtask
//! bench vmm-start` times the `vmm` binary instead, process start included).

use std::time::Duration;

use vmm::{proc_status_kib, run, VmConfig, VmExit};

use crate::Error;

/// Result of [`bench_start_to_first_pio`].
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Runs measured.
    pub iterations: usize,
    /// Start to first port write, per run, in run order.
    pub samples: Vec<Duration>,
    /// Median of `samples`.
    pub median: Duration,
    /// Fastest run.
    pub min: Duration,
    /// Slowest run.
    pub max: Duration,
    /// Median RSS of this process while a VM was alive (KiB).
    pub rss_kib_median: Option<u64>,
    /// Peak RSS of this process (VmHWM) after all runs (KiB).
    pub peak_rss_kib: Option<u64>,
}

fn median<T: Copy + Ord>(v: &[T]) -> Option<T> {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied()
}

/// Boot the HELLO guest `iterations` times (at least 1) with `mem_mib` MiB and
/// measure the time from `run` to its first port write.
pub fn bench_start_to_first_pio(iterations: usize, mem_mib: u64) -> Result<BenchReport, Error> {
    let dir = std::env::temp_dir().join(format!("vmm-bench-{}", std::process::id()));
    let io = Error::io(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let kernel = vmm::guests::write_guest(&dir, "hello.elf", vmm::guests::HELLO).map_err(io)?;
    let cfg = VmConfig {
        kernel,
        cmdline: String::new(),
        mem_mib,
        serial_stdout: false,
        timeout: Some(Duration::from_secs(10)),
        skip_host_check: true,
        ..Default::default()
    };
    let mut samples = Vec::new();
    let mut rss = Vec::new();
    let result = (|| {
        for _ in 0..iterations.max(1) {
            let o = run(&cfg)?;
            if o.exit != VmExit::Reset {
                return Err(Error::Failed(format!(
                    "benchmark guest ended with {:?} instead of a reset",
                    o.exit
                )));
            }
            if let Some(t) = o.start_to_first_pio {
                samples.push(t);
            }
            if let Some(r) = o.rss_kib {
                rss.push(r);
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(BenchReport {
        iterations: samples.len(),
        median: median(&samples).unwrap_or_default(),
        min: samples.iter().min().copied().unwrap_or_default(),
        max: samples.iter().max().copied().unwrap_or_default(),
        samples,
        rss_kib_median: median(&rss),
        // VmHWM is updated lazily; never report less than an observed RSS.
        peak_rss_kib: proc_status_kib("VmHWM:").max(rss.iter().max().copied()),
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3, 1, 2]), Some(2));
        assert_eq!(median(&[4, 1, 3, 2]), Some(3));
        assert_eq!(median::<u32>(&[]), None);
    }
}
