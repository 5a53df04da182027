//! `cargo xtask diff`: functions and lines one run covers that another does not.

use std::path::PathBuf;

use anyhow::Result;
use coverage::diff::CoverageDiff;
use coverage::report::SourceFilter;
use coverage::run::LoadOpts;

use crate::report::{failed_run_exit, globs, parse_sources, title, write_file};
use crate::run_kernel::load;

/// Options of `cargo xtask diff`.
#[derive(Clone, Debug, Default)]
pub struct DiffOpts {
    /// Run A (before).
    pub a: PathBuf,
    /// Run B (after).
    pub b: PathBuf,
    /// vmlinux of A.
    pub vmlinux_a: Option<PathBuf>,
    /// vmlinux of B.
    pub vmlinux_b: Option<PathBuf>,
    /// Filter globs.
    pub filter: Vec<String>,
    /// Sources.
    pub sources: SourceFilter,
    /// JSON output file.
    pub json: Option<PathBuf>,
}

/// `cargo xtask diff`: functions and lines gained and lost from A to B.
pub fn diff(opts: &DiffOpts) -> Result<(String, CoverageDiff)> {
    let load_opts = |v: &Option<PathBuf>| LoadOpts {
        vmlinux: v.clone(),
        sources: opts.sources,
        ..LoadOpts::default()
    };
    let a = load(&opts.a, &load_opts(&opts.vmlinux_a))?;
    let b = load(&opts.b, &load_opts(&opts.vmlinux_b))?;
    let filter = globs(&opts.filter);
    let ra = a.report(&filter, &title(&opts.a, None));
    let rb = b.report(&filter, &title(&opts.b, None));
    let d = CoverageDiff::new(&ra, &rb);
    let mut text = String::new();
    if a.build_id != b.build_id {
        text.push_str(
            "note: the runs are on different kernels; lines are compared by file and number\n",
        );
    }
    for (name, run) in [("A", &a), ("B", &b)] {
        for f in coverage::store::run_failures(&run.store.meta, true) {
            text.push_str(&format!("note: run {name} FAILED: {f}\n"));
        }
    }
    text.push_str(&d.text(&ra.title, &rb.title));
    if let Some(path) = &opts.json {
        write_file(path, &serde_json::to_vec_pretty(&d)?)?;
    }
    Ok((text, d))
}

/// `cargo xtask diff` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct DiffArgs {
    /// Run A (before).
    pub run_a: PathBuf,
    /// Run B (after).
    pub run_b: PathBuf,
    /// vmlinux of both runs (default: each run's kernel).
    #[arg(long, value_name = "V")]
    pub vmlinux: Option<PathBuf>,
    /// vmlinux of run A only.
    #[arg(long, value_name = "V")]
    pub vmlinux_a: Option<PathBuf>,
    /// vmlinux of run B only.
    #[arg(long, value_name = "V")]
    pub vmlinux_b: Option<PathBuf>,
    /// Only files matching this glob (repeatable; default drivers/vhost/*).
    #[arg(long, value_name = "GLOB")]
    pub filter: Vec<String>,
    /// Coverage sources: all, remote, local.
    #[arg(long, default_value = "all")]
    pub source: String,
    /// Write the diff as JSON.
    #[arg(long, value_name = "F")]
    pub json: Option<PathBuf>,
    /// Exit 0 even when a run failed (agent error, failed workload): the diff says so either
    /// way.
    #[arg(long)]
    pub allow_failed: bool,
}

/// Runs `cargo xtask diff`.
pub fn diff_cmd(a: &DiffArgs) -> Result<std::process::ExitCode> {
    // Both runs in use while we read them: `cargo xtask runs prune` leaves them alone.
    let _in_use = (crate::runs::hold(&a.run_a)?, crate::runs::hold(&a.run_b)?);
    let (text, _) = diff(&DiffOpts {
        a: a.run_a.clone(),
        b: a.run_b.clone(),
        vmlinux_a: a.vmlinux_a.clone().or_else(|| a.vmlinux.clone()),
        vmlinux_b: a.vmlinux_b.clone().or_else(|| a.vmlinux.clone()),
        filter: a.filter.clone(),
        sources: parse_sources(&a.source)?,
        json: a.json.clone(),
    })?;
    print!("{text}");
    Ok(failed_run_exit(
        &[&a.run_a, &a.run_b],
        a.allow_failed,
        false,
    ))
}
