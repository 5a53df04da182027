//! Start-up benchmarks: VMM start to the [`vmm::guests::HELLO`] test guest's
//! first port write, over many runs.
//!
//! * [`process_start`] (`cargo xtask bench vmm-start`): from spawning the `vmm`
//!   binary to the guest's first serial byte on its stdout, and the VMM's RSS
//!   as it reports it; baseline: spawning `/bin/true` in the same run.
//! * [`bench_start_to_first_pio`] (`cargo run -p testbed-bench --example
//!   vmm_start`): from the call of [`vmm::run`] in this process.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// What [`process_start`] measured.
#[derive(Debug, Clone)]
pub struct ProcessStart {
    /// Runs measured.
    pub runs: usize,
    /// `vmm` process spawn to the guest's first serial byte: median.
    pub median: Duration,
    /// Fastest run.
    pub min: Duration,
    /// Slowest run.
    pub max: Duration,
    /// Spawn to exit of `/bin/true`: median (the baseline).
    pub baseline_median: Duration,
    /// The VMM's RSS while the guest runs, as `vmm --verbose` reports it (KiB): median.
    pub rss_kib_median: u64,
}

/// Runs the `vmm` binary `vmm_bin` on the HELLO guest (128 MiB, written under
/// `dir`) `runs` times (at least 1), each followed by a `/bin/true` baseline
/// spawn, and times each to its first stdout byte.
pub fn process_start(vmm_bin: &Path, runs: usize, dir: &Path) -> Result<ProcessStart, Error> {
    let guest =
        vmm::guests::write_guest(dir, "hello.elf", vmm::guests::HELLO).map_err(Error::io(dir))?;
    let runs = runs.max(1);
    let mut vmm_t = Vec::new();
    let mut rss = Vec::new();
    let mut base_t = Vec::new();
    for _ in 0..runs {
        let (t, err) = time_first_byte(&mut vmm_cmd(vmm_bin, &guest))?;
        vmm_t.push(t);
        rss.push(
            parse_rss(&err)
                .ok_or_else(|| Error::Failed(format!("no RSS in the VMM's report: {err}")))?,
        );
        let (t, _) = time_first_byte(&mut Command::new("true"))?;
        base_t.push(t);
    }
    Ok(ProcessStart {
        runs,
        median: median(&vmm_t).unwrap_or_default(),
        min: vmm_t.iter().min().copied().unwrap_or_default(),
        max: vmm_t.iter().max().copied().unwrap_or_default(),
        baseline_median: median(&base_t).unwrap_or_default(),
        rss_kib_median: median(&rss).unwrap_or_default(),
    })
}

fn vmm_cmd(bin: &Path, guest: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--kernel").arg(guest).args([
        "--mem",
        "128",
        "--timeout",
        "10",
        "--cmdline",
        "",
        "--no-host-check",
        "--verbose",
    ]);
    c
}

/// Spawns `cmd`; returns the time to its first stdout byte (or its exit) and its stderr.
fn time_first_byte(cmd: &mut Command) -> Result<(Duration, String), Error> {
    let program = Path::new(cmd.get_program()).to_path_buf();
    let io = Error::io(&program);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| Error::Failed("no stdout pipe".into()))?;
    let mut byte = [0u8; 1];
    let _ = out.read(&mut byte).map_err(io)?;
    let first = start.elapsed();
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().map_err(io)?;
    if !status.success() {
        return Err(Error::Failed(format!(
            "benchmark process failed ({status}): {}",
            err.trim()
        )));
    }
    Ok((first, err))
}

/// The VMM's own RSS report (`vmm --verbose`: "..., VMM RSS N KiB").
fn parse_rss(stderr: &str) -> Option<u64> {
    let at = stderr.find("VMM RSS ")? + "VMM RSS ".len();
    stderr[at..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{median, parse_rss};

    #[test]
    fn rss_from_the_vmm_report() {
        assert_eq!(parse_rss("vmm: 1 vCPU, VMM RSS 2960 KiB\n"), Some(2960));
        assert_eq!(parse_rss("no report"), None);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3, 1, 2]), Some(2));
        assert_eq!(median(&[4, 1, 3, 2]), Some(3));
        assert_eq!(median::<u32>(&[]), None);
    }
}
