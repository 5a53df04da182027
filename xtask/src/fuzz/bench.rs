//! `cargo xtask bench fuzz`: the fuzzer's executions per second in the guest, the remote
//! (vhost worker) PCs it reaches after 1, 5 and 30 minutes where the run is that long, next
//! to the shipped workloads' remote PCs on the same kernel in the same run, and what the
//! coverage feedback stream costs the agent.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kcov_wire::program::Target;
use kcov_wire::CoverageSource;

use super::{campaign, FuzzOpts, Outcome};
use crate::boot::{self, BootOpts, PlanOpts};

/// The shipped workloads that drive `target`.
fn workloads(target: Target) -> &'static [&'static str] {
    match target {
        Target::VhostNet => &["vhost-net-tx", "vhost-net-rx"],
        Target::VhostVsock => &["vhost-vsock"],
    }
}

/// Distinct remote PCs of the shipped workloads for `target`, booted like the campaign.
fn shipped_remote_pcs(opts: &FuzzOpts) -> Result<HashSet<u64>> {
    let bopts = BootOpts {
        runner: opts.runner,
        kernel: opts.kernel(),
        append: opts.cmdline(),
        echo: false,
        plan: PlanOpts {
            workloads: workloads(opts.target)
                .iter()
                .map(|w| w.to_string())
                .collect(),
            ..PlanOpts::default()
        }
        .to_plan()?,
        ..BootOpts::default()
    };
    let (outcome, run_dir) = boot::boot(&bopts)?;
    if outcome.status.exit_code() != 0 {
        bail!("the workload run failed: {}", outcome.status.describe());
    }
    boot::collect_stream(&run_dir, &outcome.serial_log)?
        .context("the workload run produced no coverage stream")?;
    let store = coverage::store::Store::open(&coverage::run::store_dir(&run_dir))?;
    let mut pcs = HashSet::new();
    for (_, counts) in store.all_pcs(None)? {
        if counts.source == CoverageSource::Remote {
            pcs.extend(counts.iter().map(|(pc, _)| pc));
        }
    }
    Ok(pcs)
}

/// Remote PCs of the campaign at `t` seconds (the last point at or before it).
fn remote_at(out: &Outcome, t: f64) -> Option<usize> {
    if out.elapsed.as_secs_f64() < t {
        return None;
    }
    out.points
        .iter()
        .take_while(|p| p.t <= t)
        .last()
        .map(|p| p.remote)
}

/// Runs the benchmark: the workloads, then a campaign of `time`.
pub fn fuzz(target: Target, time: Duration, plain_kernel: bool) -> Result<()> {
    let mut opts = FuzzOpts::new(target);
    opts.time = time;
    opts.plain_kernel = plain_kernel;
    let shipped = shipped_remote_pcs(&opts)?;
    let out = campaign(&opts)?;
    let secs = out.elapsed.as_secs_f64().max(1e-3);
    let agent_s = (out.agent_us as f64 / 1e6).max(1e-3);
    let both = out.remote.intersection(&shipped).count();
    println!(
        "fuzz {target} ({} kernel, {} s, {} VMs, {} crashes):",
        if plain_kernel {
            "default"
        } else {
            "KASAN + lockdep"
        },
        time.as_secs(),
        out.vms,
        out.crashes.len()
    );
    println!(
        "  executions: {} ({:.1}/s of wall time, {:.1}/s while the agents fuzzed)",
        out.execs,
        out.execs as f64 / secs,
        out.agent_execs as f64 / agent_s
    );
    for mark in [60.0, 300.0, 1800.0] {
        if let Some(r) = remote_at(&out, mark) {
            println!("  remote PCs after {:>4.0} s: {r}", mark);
        }
    }
    println!(
        "  remote PCs at the end: {} (all PCs, local included: {}), corpus {}",
        out.remote.len(),
        out.pcs,
        out.corpus
    );
    println!(
        "  shipped workloads ({}) in the same run: {} remote PCs; the fuzzer reached {} of them ({:.0}%) and {} others",
        workloads(target).join(" + "),
        shipped.len(),
        both,
        100.0 * both as f64 / shipped.len().max(1) as f64,
        out.remote.len() - both
    );
    println!(
        "  coverage feedback stream: {:.1}% of the agents' time ({:.2} ms per execution)",
        100.0 * out.stream_us as f64 / out.agent_us.max(1) as f64,
        out.stream_us as f64 / 1000.0 / out.agent_execs.max(1) as f64
    );
    println!("  plot: {}", out.dir.join("coverage.svg").display());
    Ok(())
}
