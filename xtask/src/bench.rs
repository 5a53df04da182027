//! `cargo xtask bench`: benchmarks, each reported against a baseline measured
//! in the same run (ratios, not absolute targets baked into tests).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::paths;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Builds the release `vmm` binary and returns its path.
fn build_vmm_release() -> Result<PathBuf> {
    let root = paths::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "vmm",
            "--bin",
            "vmm",
        ])
        .status()
        .context("running cargo build for the vmm binary")?;
    if !status.success() {
        bail!("building the release vmm binary failed");
    }
    Ok(root.join("target/release/vmm"))
}

/// Spawns `cmd`; returns the time to its first stdout byte (or its exit) and its stderr.
fn time_first_byte(cmd: &mut Command) -> Result<(Duration, String)> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the benchmark process")?;
    let mut out = child.stdout.take().context("stdout pipe")?;
    let mut byte = [0u8; 1];
    let _ = out.read(&mut byte)?;
    let first = start.elapsed();
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("benchmark process failed ({status}): {}", err.trim());
    }
    Ok((first, err))
}

/// The VMM's own RSS report (`vmm --verbose`: "..., VMM RSS N KiB").
fn parse_rss(stderr: &str) -> Option<u64> {
    let at = stderr.find("VMM RSS ")? + "VMM RSS ".len();
    stderr[at..].split_whitespace().next()?.parse().ok()
}

/// `vmm-start`: VMM process start to the test guest's first port write
/// (its first serial byte on the VMM's stdout), median of `runs`, and the VMM
/// process's RSS as it reports it; baseline: spawning `/bin/true` in the same run.
pub fn vmm_start(runs: usize) -> Result<()> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        bail!("/dev/kvm is not usable here ({e}): vmm-start needs KVM");
    }
    let vmm_bin = build_vmm_release()?;
    let dir = tempfile_dir()?;
    let guest = vmm::guests::write_guest(&dir, "hello.elf", vmm::guests::HELLO)?;
    let runs = runs.max(1);
    let mut vmm_t = Vec::new();
    let mut rss = Vec::new();
    let mut base_t = Vec::new();
    for _ in 0..runs {
        let (t, err) = time_first_byte(vmm_cmd(&vmm_bin, &guest).as_mut())?;
        vmm_t.push(t);
        rss.push(parse_rss(&err).with_context(|| format!("no RSS in the VMM's report: {err}"))?);
        let (t, _) = time_first_byte(&mut Command::new("true"))?;
        base_t.push(t);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let vmm_med = median(&mut vmm_t);
    let base_med = median(&mut base_t);
    rss.sort();
    let rss_med = rss[rss.len() / 2];
    println!("vmm-start ({runs} runs, 128 MiB test guest, release build, this host's /dev/kvm):");
    println!(
        "  VMM process start -> first guest port write: median {} (min {}, max {})",
        ms(vmm_med),
        ms(vmm_t[0]),
        ms(vmm_t[vmm_t.len() - 1])
    );
    println!(
        "  baseline: spawn+exit of /bin/true: median {}",
        ms(base_med)
    );
    println!(
        "  ratio: {:.1}x the process-spawn baseline",
        vmm_med.as_secs_f64() / base_med.as_secs_f64().max(1e-9)
    );
    println!("  VMM RSS while the guest runs (VmRSS, 128 MiB guest mostly untouched): median {rss_med} KiB");
    Ok(())
}

fn vmm_cmd(bin: &Path, guest: &Path) -> Box<Command> {
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
    Box::new(c)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = paths::workspace_root()
        .join("target/testbed/bench")
        .join(format!("vmm-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
