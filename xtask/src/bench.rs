//! `cargo xtask bench`: benchmarks, each reported against a baseline measured
//! in the same run (ratios, not absolute targets baked into tests).

use std::io::Read;
use std::path::{Path, PathBuf};
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
    let status = paths::cargo_build_release(&["--package", "vmm", "--bin", "vmm"])
        .status()
        .context("running cargo build for the vmm binary")?;
    if !status.success() {
        bail!("building the release vmm binary failed");
    }
    Ok(root.join("target/release/vmm"))
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
    let dir = bench_dir("vmm-start")?;
    let r = testbed_bench::vmm_start::process_start(&vmm_bin, runs, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    let runs = r.runs;
    println!("vmm-start ({runs} runs, 128 MiB test guest, release build, this host's /dev/kvm):");
    println!(
        "  VMM process start -> first guest port write: median {} (min {}, max {})",
        ms(r.median),
        ms(r.min),
        ms(r.max)
    );
    println!(
        "  baseline: spawn+exit of /bin/true: median {}",
        ms(r.baseline_median)
    );
    println!(
        "  ratio: {:.1}x the process-spawn baseline",
        r.median.as_secs_f64() / r.baseline_median.as_secs_f64().max(1e-9)
    );
    println!(
        "  VMM RSS while the guest runs (VmRSS, 128 MiB guest mostly untouched): median {} KiB",
        r.rss_kib_median
    );
    Ok(())
}

/// Host baseline for stream throughput: `bytes` through a Unix socket pair on
/// this host (the ceiling any vsock path that ends in a Unix socket can reach).
fn unix_socket_baseline(bytes: u64) -> Result<f64> {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair()?;
    let start = Instant::now();
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            let r = b.read(&mut buf)?;
            if r == 0 {
                return Ok(n);
            }
            n += r as u64;
        }
    });
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        a.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    drop(a);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(got as f64 / 1e6 / start.elapsed().as_secs_f64().max(1e-9))
}

/// `vsock`: guest→host throughput under the qemu runner (real kernel, AF_VSOCK
/// echo through our vhost-user backend), in our VMM (test guest, in-process
/// device, where /dev/kvm works), and the core's packets/s with a synthetic
/// driver; baseline: a host Unix socket pair in the same run.
pub fn vsock() -> Result<()> {
    const BYTES: u64 = 64 << 20;
    let base = unix_socket_baseline(BYTES)?;
    println!("vsock (64 MiB streams):");
    println!("  baseline: host Unix socket pair: {base:.0} MB/s");
    let ratio = |x: f64| x / base.max(1e-9);

    let kernel = crate::kernel::build(&crate::kernel::KernelOpts::default())?;
    let agent = crate::agent::build()?;
    let dir = bench_dir("vsock-qemu")?;
    let echo = crate::runner::vsock_echo::run(&kernel.bzimage, &agent, &dir, BYTES, 1 << 20);
    let _ = std::fs::remove_dir_all(&dir);
    let echo = echo?;
    println!(
        "  qemu runner (TCG, real kernel, AF_VSOCK echo, vhost-user backend): {:.1} MB/s each way ({:.4}x baseline)",
        echo.mb_per_s(),
        ratio(echo.mb_per_s())
    );
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => {
            let b = testbed_bench::vsock_device::bench_guest_to_host(BYTES, 65536)?;
            println!(
                "  kvm runner device (our VMM, polling test guest, 64 KiB packets): {:.1} MB/s ({:.3}x baseline)",
                b.mb_per_s(),
                ratio(b.mb_per_s())
            );
        }
        Err(e) => println!("  kvm runner device: skipped (/dev/kvm not usable: {e})"),
    }
    for (packets, payload) in [(200_000u64, 64usize), (50_000, 4096), (5_000, 65536)] {
        let c = testbed_bench::vsock_core::core(packets, payload)?;
        println!(
            "  core, synthetic driver, {payload} B packets: {:.0} packets/s, {:.0} MB/s ({:.3}x baseline)",
            c.packets_per_s(),
            c.mb_per_s(),
            ratio(c.mb_per_s())
        );
    }
    println!("  anchor: Firecracker's vsock guest->host baseline is 12.7 Gbit/s (1588 MB/s) on metal, 1 vCPU");
    Ok(())
}

/// `workload`: each vhost workload with coverage on and off (iterations/s and
/// the ratio), and PCs/s shipped over the console and over vsock.
pub fn workload(frames: u32) -> Result<()> {
    use crate::boot::{self, BootOpts, PlanOpts};
    let workloads = ["vhost-net-tx", "vhost-net-rx", "vhost-vsock"];
    let run = |cover: &str, transport: &str| -> Result<boot::StreamSummary> {
        let opts = BootOpts {
            runner: crate::runner::RunnerKind::Auto,
            echo: false,
            plan: PlanOpts {
                workloads: workloads.iter().map(|w| w.to_string()).collect(),
                cover: Some(cover.into()),
                area: None,
                transport: Some(transport.into()),
                params: vec![format!("frames={frames}")],
            }
            .to_plan()?,
            ..BootOpts::default()
        };
        let (outcome, run_dir) = boot::boot(&opts)?;
        if outcome.status.exit_code() != 0 {
            bail!("workload run failed: {}", outcome.status.describe());
        }
        boot::collect_stream(&run_dir, &outcome.serial_log)?
            .context("the run produced no coverage stream")
    };
    let on = run("pc", "vsock")?;
    let off = run("off", "vsock")?;
    let console = run("pc", "console")?;
    println!("workload ({frames} frames/messages each, qemu TCG):");
    for w in workloads {
        let ips = |r: &boot::StreamSummary| r.workload(w).and_then(|s| s.iterations_per_sec());
        let shipped = |r: &boot::StreamSummary| r.workload(w).and_then(|s| s.pcs_shipped_per_sec());
        match (ips(&on), ips(&off)) {
            (Some(a), Some(b)) => println!(
                "  {w}: coverage on {a:.0} it/s, off {b:.0} it/s (on/off = {:.2})",
                a / b.max(1e-9)
            ),
            _ => println!("  {w}: iteration counters missing"),
        }
        if let (Some(v), Some(c)) = (shipped(&on), shipped(&console)) {
            println!(
                "    PCs shipped: vsock {v:.0}/s, console {c:.0}/s (vsock/console = {:.1})",
                v / c.max(1e-9)
            );
        }
    }
    Ok(())
}

/// `net`: frames/s and MB/s through our VMM's virtio-net device with the tap
/// backend, driven by the polling `net_bench` test guest under this host's
/// /dev/kvm, each way, for 64 B, 1514 B and 65535 B frames (the longest a host
/// can send into a tap); baseline: the same frames through the same kind of
/// tap by host threads alone, in the same run (`testbed_bench::net`). Each figure
/// is the median of [`NET_RUNS`] runs (baseline and VM interleaved); frames
/// per run are `frames`, or about one second's worth at the VM's rate (from a
/// 200-frame probe). Skips with the reason without root, tun or /dev/kvm.
pub fn net(frames: Option<u32>) -> Result<()> {
    use testbed_bench::net::{
        host_ready, run_host, run_vm, Direction, NetBenchConfig, NetBenchError, NetBenchResult,
    };
    match host_ready(true) {
        Ok(()) => {}
        Err(NetBenchError::Unavailable(why)) => {
            println!("net: skipped: {why}");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let median = |mut v: Vec<NetBenchResult>| -> NetBenchResult {
        v.sort_by(|a, b| a.frames_per_s().total_cmp(&b.frames_per_s()));
        v.swap_remove(v.len() / 2)
    };
    let delivery = |r: &NetBenchResult| {
        let mut s = format!("{}/{}", r.delivered, r.sent);
        if r.corrupt + r.gaps + r.reordered > 0 {
            s += &format!(
                " ({} corrupt, {} gaps, {} reordered)",
                r.corrupt, r.gaps, r.reordered
            );
        }
        s
    };
    println!(
        "net (virtio-net, tap backend; our VMM, polling test guest, this host's /dev/kvm; release build; median of {NET_RUNS}):"
    );
    println!("  baseline: the same frames through a tap by host threads alone (TX: tap fd writes -> AF_PACKET; RX: AF_PACKET -> tap fd reads)");
    println!(
        "  {:<14} {:>7} {:>7} | {:>10} {:>9} {:>17} | {:>10} {:>9} {:>17} | {:>8}",
        "direction",
        "frame",
        "frames",
        "VM fr/s",
        "VM MB/s",
        "VM delivered",
        "host fr/s",
        "host MB/s",
        "host delivered",
        "VM/host"
    );
    for dir in [Direction::Tx, Direction::Rx] {
        for len in [64usize, 1514, 65535] {
            let n = match frames {
                Some(n) => n,
                None => {
                    let probe = run_vm(&NetBenchConfig::new(dir, 200, len, false))?;
                    (probe.frames_per_s() as u32).clamp(500, 200_000)
                }
            };
            let cfg = NetBenchConfig::new(dir, n, len, false);
            let (mut host, mut vm) = (Vec::new(), Vec::new());
            for _ in 0..NET_RUNS {
                host.push(run_host(&cfg)?);
                vm.push(run_vm(&cfg)?);
            }
            let (h, v) = (median(host), median(vm));
            println!(
                "  {:<14} {:>5} B {:>7} | {:>10.0} {:>9.1} {:>17} | {:>10.0} {:>9.1} {:>17} | {:>8.4}",
                dir.to_string(),
                len,
                n,
                v.frames_per_s(),
                v.mb_per_s(),
                delivery(&v),
                h.frames_per_s(),
                h.mb_per_s(),
                delivery(&h),
                v.frames_per_s() / h.frames_per_s().max(1e-9)
            );
            if let Some(s) = &v.vm {
                println!(
                    "  {:<14} VM: {} guest kicks, event_idx {}, {} buffers, VM run {:.2} s; lost: tap queue {} / socket {} (host: {} / {})",
                    "",
                    s.kicks,
                    s.event_idx,
                    s.buffers,
                    s.wall.as_secs_f64(),
                    v.tap_dropped,
                    v.socket_dropped,
                    h.tap_dropped,
                    h.socket_dropped
                );
            }
        }
    }
    Ok(())
}

/// Runs per figure of [`net`] (the median is printed).
pub const NET_RUNS: usize = 3;

fn bench_dir(name: &str) -> Result<PathBuf> {
    let dir = paths::workspace_root()
        .join("target/testbed/bench")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `nested`: the nested runner next to the qemu runner, same kernel, same work, same run:
/// boot to the agent (median of `runs`; nested also L1 to its init), the agent's PCs
/// shipped per second over vsock (vhost-net-tx, vhost-vsock), and echo throughput: vsock
/// (qemu: guest ↔ host through the vhost-user backend; nested: L2 ↔ L1 through our VMM's
/// device) and, nested only (the qemu runner has no --net), TCP through our virtio-net
/// device and a tap into L1.
pub fn nested(runs: usize) -> Result<()> {
    use crate::boot::{self, BootOpts, PlanOpts};
    use crate::runner::RunnerKind;
    const VSOCK_BYTES: u64 = 4 << 20;
    const TCP_BYTES: u64 = 8 << 20;
    let workloads = ["vhost-net-tx", "vhost-vsock"];
    let secs = |v: &mut Vec<Duration>| format!("{:.1} s", median(v).as_secs_f64());
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut rows = Vec::new();
    for runner in [RunnerKind::Qemu, RunnerKind::Nested] {
        let (mut ready, mut l1_ready) = (Vec::new(), Vec::new());
        let mut shipped: Vec<Vec<f64>> = vec![Vec::new(); workloads.len()];
        for i in 0..runs.max(1) {
            eprintln!("bench nested: {runner} run {} of {runs}", i + 1);
            let opts = BootOpts {
                runner,
                echo: false,
                plan: PlanOpts {
                    workloads: workloads.iter().map(|w| w.to_string()).collect(),
                    ..PlanOpts::default()
                }
                .to_plan()?,
                ..BootOpts::default()
            };
            let (outcome, run_dir) = boot::boot(&opts)?;
            if outcome.status.exit_code() != 0 {
                bail!("{runner} run failed: {}", outcome.status.describe());
            }
            let report = boot::collect_stream(&run_dir, &outcome.serial_log)?
                .context("the run produced no coverage stream")?;
            ready.extend(outcome.ready_after);
            l1_ready.extend(outcome.l1_ready_after);
            for (k, w) in workloads.iter().enumerate() {
                shipped[k].extend(report.workload(w).and_then(|s| s.pcs_shipped_per_sec()));
            }
        }
        rows.push((runner, ready, l1_ready, shipped));
    }
    // Echo throughput.
    let dir = bench_dir("nested")?;
    let kernel = crate::kernel::build(&crate::kernel::KernelOpts::default())?;
    let agent = crate::agent::build()?;
    std::fs::create_dir_all(dir.join("qemu"))?;
    let qemu_echo = crate::runner::vsock_echo::run(
        &kernel.bzimage,
        &agent,
        &dir.join("qemu"),
        VSOCK_BYTES,
        1 << 16,
    );
    let check = compile_nested_check(&dir)?;
    let opts = BootOpts {
        runner: RunnerKind::Nested,
        echo: false,
        includes: vec![format!("{}:/bin/check", check.display())],
        cmd: vec![
            "/bin/check".into(),
            TCP_BYTES.to_string(),
            VSOCK_BYTES.to_string(),
        ],
        net: Some("tap=tap0".parse().map_err(|e| anyhow::anyhow!("{e}"))?),
        vcpus: 2,
        plan: PlanOpts {
            transport: Some("console".into()),
            cover: Some("off".into()),
            ..PlanOpts::default()
        }
        .to_plan()?,
        ..BootOpts::default()
    };
    let nested_echo = boot::boot(&opts);
    let _ = std::fs::remove_dir_all(&dir);
    let qemu_echo = qemu_echo?;
    let (outcome, _) = nested_echo?;
    if outcome.status.exit_code() != 0 {
        bail!("nested echo run failed: {}", outcome.status.describe());
    }
    let log = std::fs::read_to_string(&outcome.serial_log)?;
    let rate = |what: &str| -> Option<f64> {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("nested-check: {what}: ")))?
            .rsplit_once(", ")?
            .1
            .strip_suffix(" MB/s")?
            .parse()
            .ok()
    };

    println!("nested vs qemu runner (same kernel and work, this run; medians of {runs}):");
    let [(_, qr, _, qs), (_, nr, nl1, ns)] = &mut rows[..] else {
        bail!("two runners expected");
    };
    let (q_ready, n_ready) = (median(qr), median(nr));
    println!(
        "  boot to agent ready: qemu {}, nested {} ({:.1}x qemu; L1 to its init {})",
        secs(qr),
        secs(nr),
        n_ready.as_secs_f64() / q_ready.as_secs_f64().max(1e-9),
        secs(nl1)
    );
    for (k, w) in workloads.iter().enumerate() {
        let (q, n) = (med(&mut qs[k]), med(&mut ns[k]));
        println!(
            "  {w}: PCs shipped over vsock: qemu {q:.0}/s, nested {n:.0}/s ({:.2}x qemu)",
            n / q.max(1e-9)
        );
    }
    let nv = rate("vsock echo").unwrap_or(0.0);
    println!(
        "  vsock echo ({} MiB): qemu {:.1} MB/s each way (guest-host), nested {nv:.1} MB/s (L2-L1, our device; {:.2}x qemu)",
        VSOCK_BYTES >> 20,
        qemu_echo.mb_per_s(),
        nv / qemu_echo.mb_per_s().max(1e-9)
    );
    match rate("tcp echo") {
        Some(t) => println!(
            "  TCP echo ({} MiB, nested only: our virtio-net + tap into L1): {t:.1} MB/s ({:.2}x nested vsock)",
            TCP_BYTES >> 20,
            t / nv.max(1e-9)
        ),
        None => println!("  TCP echo: no figure in the run's console"),
    }
    Ok(())
}

/// The L2 side of the nested net and vsock checks (shared with tests/tests/nested.rs).
pub const NESTED_CHECK_SRC: &str = "tests/guests/nested_net_vsock.c";

/// Compiles [`NESTED_CHECK_SRC`] (static) into `dir`.
fn compile_nested_check(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("nested_net_vsock");
    crate::agent::gcc_static(&paths::workspace_root().join(NESTED_CHECK_SRC), &bin)?;
    Ok(bin)
}
