//! `cargo xtask golden`: reproducible coverage. Runs each workload K times and checks (or
//! `--update`s) the function and line sets in `goldens/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use coverage::golden::{classify, covered_items, Golden, GoldenCheck, Item};
use coverage::report::DEFAULT_FILTER;
use coverage::run::{store_dir, LoadOpts, STREAM_FILE};
use coverage::store::{StoreError, META_FILE};
use coverage::PathGlob;

use crate::paths;
use crate::report::title;
use crate::run_kernel::{load, open_or_collect};

/// The workloads the guest agent is getting; each has a golden under `goldens/`.
pub const WORKLOADS: &[&str] = &[
    "vhost-net-tx",
    "vhost-net-rx",
    "vhost-vsock",
    "vhost-net-matrix",
    "vhost-net-errors",
    "vhost-net-control",
    "vhost-vsock-control",
    "vhost-vsock-credit",
    "vhost-vsock-conns",
    "vhost-net-zcopy",
    "vhost-scsi-workers",
    "vhost-net-gaps",
    "vhost-scsi-control",
];

/// `goldens/` at the workspace root.
pub fn goldens_dir() -> PathBuf {
    paths::workspace_root().join("goldens")
}

/// What one run says about a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunVerdict {
    /// The items it covered under the filter, and the kernel's build-id and key.
    Covered {
        /// Covered items.
        items: BTreeSet<Item>,
        /// Build-id.
        build_id: Option<String>,
        /// Kernel key.
        kernel_key: Option<String>,
    },
    /// The workload cannot be checked in this run (the reason is printed).
    Skip(String),
}

/// Reads a workload's coverage from a run directory; skips (with the reason) when the run has no
/// coverage stream or the agent did not run the workload (its Error frames say why).
pub fn workload_verdict(
    run_dir: &Path,
    workload: &str,
    filter: &[PathGlob],
    vmlinux: Option<&Path>,
) -> Result<RunVerdict> {
    if !run_dir.join(STREAM_FILE).is_file() && !store_dir(run_dir).join(META_FILE).is_file() {
        // A boot that failed (a kernel panic, a timeout) is a failure, not a missing feature.
        if let Some(rec) = coverage::run::RunRecord::read(run_dir) {
            if rec.exit_code.is_some_and(|c| c != 0) {
                bail!(
                    "the boot of {} failed before any coverage arrived: {}",
                    run_dir.display(),
                    rec.status.as_deref().unwrap_or("no status")
                );
            }
        }
        return Ok(RunVerdict::Skip(format!(
            "run {} has no coverage stream ({STREAM_FILE}): this boot does not stream coverage yet",
            run_dir.display()
        )));
    }
    let store = open_or_collect(run_dir, true)?;
    let Some(w) = store.meta.workload(workload) else {
        let why = if store.meta.errors.is_empty() {
            "it sent no WorkloadStart for it".to_string()
        } else {
            format!("agent error: {}", store.meta.errors.join("; "))
        };
        return Ok(RunVerdict::Skip(format!(
            "the guest agent did not run workload {workload:?} ({why})"
        )));
    };
    if !store.meta.complete {
        bail!(StoreError::Incomplete {
            dir: store.dir.clone(),
            reason: store.meta.incomplete_reason.clone().unwrap_or_default(),
        });
    }
    match &w.result {
        Some(r) if r.status == 0 => {}
        Some(r) => bail!(
            "workload {workload} failed with status {}: {}",
            r.status,
            r.error.as_deref().unwrap_or("no message")
        ),
        None => bail!("workload {workload} has no result"),
    }
    let run = load(
        run_dir,
        &LoadOpts {
            vmlinux: vmlinux.map(Path::to_path_buf),
            workload: Some(workload.to_string()),
            ..LoadOpts::default()
        },
    )?;
    let report = run.report(filter, &title(run_dir, Some(workload)));
    Ok(RunVerdict::Covered {
        items: covered_items(&report),
        build_id: run.build_id.clone(),
        kernel_key: run.store.meta.kernel.kernel_key.clone(),
    })
}

/// What `golden` concluded for a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GoldenOutcome {
    /// Not checkable yet; the reason.
    Skipped(String),
    /// Every golden item covered (the text lists flaky and new items).
    Passed(String),
    /// Golden items missing, or no golden, or another kernel: the readable diff.
    Failed(String),
    /// `--update` wrote the golden.
    Updated(PathBuf, String),
}

/// Options of a golden check.
#[derive(Clone, Debug)]
pub struct GoldenOpts {
    /// Runs per workload.
    pub runs: usize,
    /// Rewrite the goldens from the stable items.
    pub update: bool,
    /// Filter (default drivers/vhost/*).
    pub filter: String,
    /// Golden directory (default `goldens/`).
    pub dir: PathBuf,
    /// vmlinux (default: each run's kernel).
    pub vmlinux: Option<PathBuf>,
    /// Compare functions only (another runner than the goldens were recorded with: the
    /// same kernel runs the same functions, lines may differ with timing).
    pub functions_only: bool,
}

impl Default for GoldenOpts {
    fn default() -> Self {
        GoldenOpts {
            runs: 3,
            update: false,
            filter: DEFAULT_FILTER.into(),
            dir: goldens_dir(),
            vmlinux: None,
            functions_only: false,
        }
    }
}

/// Runs `workload` `opts.runs` times through `boot` (which returns each run directory: a
/// [`crate::runs::RunDir`] keeps it in use until its verdict is in), classifies stable/flaky
/// items and checks (or, with `update`, rewrites) its golden.
pub fn golden_workload<R: AsRef<Path>>(
    workload: &str,
    opts: &GoldenOpts,
    boot: &mut dyn FnMut(&str) -> Result<R>,
) -> Result<GoldenOutcome> {
    let filter = vec![PathGlob::new(&opts.filter)];
    let mut runs = Vec::new();
    let mut identity = (None, None);
    for i in 0..opts.runs.max(1) {
        let run_dir = boot(workload).with_context(|| format!("run {} of {workload}", i + 1))?;
        match workload_verdict(run_dir.as_ref(), workload, &filter, opts.vmlinux.as_deref())? {
            RunVerdict::Skip(reason) => return Ok(GoldenOutcome::Skipped(reason)),
            RunVerdict::Covered {
                items,
                build_id,
                kernel_key,
            } => {
                identity = (build_id, kernel_key);
                runs.push(items);
            }
        }
    }
    let stability = classify(&runs);
    let path = opts.dir.join(format!("{workload}.txt"));
    if opts.update {
        let g = Golden {
            workload: workload.to_string(),
            build_id: identity.0,
            kernel_key: identity.1,
            filter: opts.filter.clone(),
            items: stability.stable.clone(),
        };
        std::fs::create_dir_all(&opts.dir)?;
        coverage::store::write_atomic(&path, g.render().as_bytes())?;
        let flaky = stability.flaky.len();
        return Ok(GoldenOutcome::Updated(
            path,
            format!(
                "{} stable items from {} runs ({flaky} flaky items left out)",
                g.items.len(),
                runs.len()
            ),
        ));
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(GoldenOutcome::Failed(format!(
                "no golden {} for workload {workload}: create it with \
                 `cargo xtask golden --update {workload}`, review and commit it",
                path.display()
            )))
        }
        Err(e) => return Err(anyhow!(e).context(format!("reading {}", path.display()))),
    };
    let golden = Golden::parse(&text).with_context(|| path.display().to_string())?;
    // On another kernel (e.g. a newer Debian kernel package on a fresh machine) line numbers
    // move but function names hold: compare functions only and say so.
    let (golden, note) = match golden.check_kernel(identity.0.as_deref(), identity.1.as_deref()) {
        Ok(()) if opts.functions_only => (
            golden.functions_only(),
            "note: another runner; compared functions only\n".to_string(),
        ),
        Ok(()) => (golden, String::new()),
        Err(reason) => (
            golden.functions_only(),
            format!("note: {reason}; compared functions only\n"),
        ),
    };
    let check = GoldenCheck::new(&golden, &stability);
    let rendered = format!("{note}{}", check.render(workload));
    Ok(if check.passed() {
        GoldenOutcome::Passed(rendered)
    } else {
        GoldenOutcome::Failed(rendered)
    })
}

/// Boot options that run `workload` in the guest agent (`testbed.workloads=`), console quiet.
pub fn workload_boot_opts(workload: &str) -> Result<crate::boot::BootOpts> {
    Ok(crate::boot::BootOpts {
        echo: false,
        plan: crate::boot::PlanOpts {
            workloads: vec![workload.to_string()],
            ..crate::boot::PlanOpts::default()
        }
        .to_plan()?,
        ..crate::boot::BootOpts::default()
    })
}

/// Boots the guest once for `workload` with the xtask boot library and returns the run
/// directory (in use while it is held), with the agent's stream reassembled into
/// `coverage.kcw` (when it sent one).
pub fn boot_workload(workload: &str) -> Result<crate::runs::RunDir> {
    let (outcome, run_dir) = crate::boot::boot(&workload_boot_opts(workload)?)?;
    crate::boot::collect_stream(&run_dir, &outcome.serial_log)?;
    Ok(run_dir)
}

/// `cargo xtask golden` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct GoldenArgs {
    /// Workloads (default: all of [`WORKLOADS`]).
    pub workloads: Vec<String>,
    /// Runs per workload; lines covered in every run are stable, the others flaky.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Rewrite goldens/<workload>.txt from the stable lines and functions.
    #[arg(long)]
    pub update: bool,
    /// Glob of the files the goldens cover.
    #[arg(long, default_value = DEFAULT_FILTER)]
    pub filter: String,
}

/// Runs `cargo xtask golden`: exit 1 when a golden check fails.
pub fn golden_cmd(a: &GoldenArgs) -> Result<std::process::ExitCode> {
    let opts = GoldenOpts {
        runs: a.runs,
        update: a.update,
        filter: a.filter.clone(),
        ..GoldenOpts::default()
    };
    let names: Vec<String> = if a.workloads.is_empty() {
        WORKLOADS.iter().map(|s| s.to_string()).collect()
    } else {
        a.workloads.clone()
    };
    let mut failed = false;
    let mut skipped = 0;
    for w in &names {
        match golden_workload(w, &opts, &mut |w| boot_workload(w))? {
            GoldenOutcome::Skipped(r) => {
                skipped += 1;
                println!("golden {w}: SKIPPED: {r}");
            }
            GoldenOutcome::Passed(t) => print!("golden {w}: ok\n{t}"),
            GoldenOutcome::Updated(p, t) => println!("golden {w}: wrote {}: {t}", p.display()),
            GoldenOutcome::Failed(t) => {
                failed = true;
                print!("golden {w}: FAILED\n{t}");
            }
        }
    }
    if skipped > 0 {
        // A workload that could not be checked is no pass.
        eprintln!(
            "golden: {skipped} of {} workloads skipped, not checked",
            names.len()
        );
    }
    Ok(if failed || skipped > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coverage::run::RunRecord;

    /// A boot that ended without a stream is a failure when the boot failed (a panic, a
    /// timeout), and a skip only when the guest ended well without streaming.
    #[test]
    fn a_failed_boot_is_no_skip() {
        let t = tempfile::tempdir().unwrap();
        let filter = [PathGlob::new(DEFAULT_FILTER)];
        let rec = |code: i32, status: &str| RunRecord {
            exit_code: Some(code),
            status: Some(status.into()),
            ..RunRecord::default()
        };
        rec(70, "guest kernel panicked: IO-APIC + timer doesn't work!")
            .write(t.path())
            .unwrap();
        let e = workload_verdict(t.path(), "vhost-net-tx", &filter, None).unwrap_err();
        assert!(e.to_string().contains("kernel panicked"), "{e}");
        rec(0, "agent finished successfully")
            .write(t.path())
            .unwrap();
        assert!(matches!(
            workload_verdict(t.path(), "vhost-net-tx", &filter, None).unwrap(),
            RunVerdict::Skip(_)
        ));
    }
}
