//! `cargo xtask ci`: the cases of a `testbed.toml` (or of one shard of it), their gates, and
//! the files CI systems read (JUnit XML, lcov, JSON, Markdown), in one output directory that a
//! later `cargo xtask merge` of all shards reads.

pub mod config;
pub mod gates;
pub mod manifest;
pub mod outputs;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use coverage::diff::{PatchCoverage, PatchLines};
use coverage::report::{Report, SourceFilter};
use coverage::run::{store_dir, LoadOpts, LoadedRun};
use coverage::store::Store;
use coverage::{PathGlob, SiteTable};

use config::{Case, Config, Partition, DEFAULT_CONFIG};
use gates::GateInput;
use manifest::{CaseResult, GateResult, KernelRef, Manifest, MANIFEST_VERSION};
use outputs::Outputs;

use crate::boot::BootOpts;
use crate::runner::Timeouts;

/// A booted case: its run directory (kept in use while `hold` lives), the guest's exit code and
/// status in words.
pub struct Booted {
    /// The run directory.
    pub dir: PathBuf,
    /// The guest's status as `boot` exits with it.
    pub exit_code: i32,
    /// The status in words.
    pub status: String,
    /// Keeps the run directory from being pruned while the case is evaluated.
    pub hold: Option<crate::runs::RunDir>,
}

/// Boots one case (the real one: [`boot_case`]).
pub type BootFn<'a> = dyn FnMut(&Case, &BootOpts) -> Result<Booted> + 'a;
/// Loads a booted run's coverage onto its kernel (the real one: [`crate::run_kernel::load`]).
pub type LoadFn<'a> = dyn Fn(&Path) -> Result<LoadedRun> + 'a;

/// The boot options of `case` under `cfg`.
pub fn boot_opts(cfg: &Config, case: &Case) -> BootOpts {
    BootOpts {
        runner: cfg.runner,
        kernel: cfg.kernel.clone(),
        includes: case.includes.clone(),
        cmd: case.command.clone(),
        append: case.append.clone(),
        mem_mib: cfg.mem_mib,
        vcpus: cfg.vcpus,
        timeouts: Timeouts {
            boot: cfg.boot_timeout,
            run: case.timeout.unwrap_or(cfg.timeout),
        },
        echo: false,
        plan: case.plan.clone(),
        ..BootOpts::default()
    }
}

/// Boots a case with the boot library and collects its stream.
pub fn boot_case(_case: &Case, opts: &BootOpts) -> Result<Booted> {
    let (outcome, run_dir) = crate::boot::boot(opts)?;
    crate::boot::collect_stream(&run_dir, &outcome.serial_log)?;
    Ok(Booted {
        dir: run_dir.to_path_buf(),
        exit_code: outcome.status.exit_code(),
        status: outcome.status.describe(),
        hold: Some(run_dir),
    })
}

/// The kernel a set of stores ran, for the manifest.
pub fn kernel_ref_of(stores: &[&Store]) -> KernelRef {
    let first = stores.first().map(|s| &s.meta);
    KernelRef {
        release: first.and_then(|m| {
            m.agent
                .as_ref()
                .map(|a| a.kernel_release.clone())
                .or_else(|| m.kernel.release.clone())
        }),
        build_id: first.and_then(|m| m.kernel.build_id.clone()),
        kernel_key: first.and_then(|m| m.kernel.kernel_key.clone()),
    }
}

/// All cases' coverage together: the filtered report (with declaration lines), its lcov and
/// JSON, and the patch coverage. `ci` and `merge` both make it here, from the same stores the
/// same way, so shards merged equal one machine running every case.
pub struct Union {
    /// Under the filter.
    pub report: Report,
    /// lcov (test name: the config's name).
    pub lcov: String,
    /// JSON, with `build_id` and `patch`.
    pub json: serde_json::Value,
    /// Patch coverage.
    pub patch: Option<PatchCoverage>,
}

/// Where union reports get their kernel from.
pub struct KernelTable<'a> {
    /// The site table.
    pub table: &'a SiteTable,
    /// The vmlinux (declaration lines).
    pub vmlinux: &'a Path,
}

/// A report's JSON with the kernel's build-id and the patch coverage beside it.
fn report_json(
    report: &Report,
    build_id: Option<&str>,
    patch: Option<&PatchCoverage>,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(report)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("build_id".into(), serde_json::to_value(build_id)?);
        if let Some(pc) = patch {
            obj.insert("patch".into(), serde_json::to_value(pc)?);
        }
    }
    Ok(v)
}

/// The union of `stores` (checked: one kernel build).
pub fn union(
    name: &str,
    filter: &[PathGlob],
    stores: &[&Store],
    kt: &KernelTable<'_>,
    patch: Option<&PatchLines>,
) -> Result<Union> {
    let build_id = coverage::merge::common_build_id(stores)?;
    let cov = coverage::merge::merged_coverage(kt.table, stores, SourceFilter::All)?;
    let k = kernel_ref_of(stores);
    let desc = format!(
        "{}, build-id {}, kernel key {}",
        k.release.as_deref().unwrap_or("?"),
        build_id.as_deref().unwrap_or("?"),
        k.kernel_key.as_deref().unwrap_or("?")
    );
    let report = Report::new(kt.table, &cov, filter, name, &desc);
    let report = crate::report::with_decl_lines_of(kt.vmlinux, &kt.table.src_roots, report);
    let patch = patch.map(|p| {
        let all = Report::new(kt.table, &cov, &[PathGlob::new("**")], name, &desc);
        PatchCoverage::new(p, &all)
    });
    Ok(Union {
        // Paths relative to the kernel tree's top: the same on every machine (shards and their
        // merge), and what codecov-style tools map onto a repository.
        lcov: report.lcov(name, None),
        json: report_json(&report, build_id.as_deref(), patch.as_ref())?,
        report,
        patch,
    })
}

/// The patch of `cfg`'s `[patch]` (`git diff BASE` of its tree), parsed.
pub fn config_patch(cfg: &Config) -> Result<Option<PatchLines>> {
    let Some(p) = &cfg.patch else {
        return Ok(None);
    };
    Ok(Some(
        crate::report::patch_since(&p.tree, &p.base)
            .with_context(|| format!("{}: [patch]", cfg.path.display()))?,
    ))
}

/// The gates on all cases of `cfg`, evaluated on `u`.
pub fn union_gates(cfg: &Config, u: &Union, k: &KernelRef) -> Vec<GateResult> {
    gates::evaluate(
        &cfg.expect,
        &GateInput {
            scope: "all",
            report: &u.report,
            patch: u.patch.as_ref(),
            build_id: k.build_id.as_deref(),
            kernel_key: k.kernel_key.as_deref(),
        },
    )
}

/// What one case left.
struct CaseOutcome {
    result: CaseResult,
    run: Option<LoadedRun>,
    report_json: Option<serde_json::Value>,
}

fn run_case(
    cfg: &Config,
    case: &Case,
    patch: Option<&PatchLines>,
    shard: Option<Partition>,
    boot: &mut BootFn<'_>,
    load: &LoadFn<'_>,
) -> CaseOutcome {
    let filter: Vec<PathGlob> = cfg.filter.iter().map(|g| PathGlob::new(g)).collect();
    let start = Instant::now();
    let mut result = CaseResult {
        name: case.name.clone(),
        passed: false,
        message: String::new(),
        seconds: 0.0,
        run_dir: None,
        has_store: false,
        gates: Vec::new(),
        shard: shard.map(|p| p.to_string()),
    };
    let booted = boot(case, &boot_opts(cfg, case));
    result.seconds = start.elapsed().as_secs_f64();
    let booted = match booted {
        Ok(b) => b,
        Err(e) => {
            result.message = format!("did not run: {e:#}");
            result.gates = gates::evaluate(&case.expect, &no_coverage(&case.name));
            return CaseOutcome {
                result,
                run: None,
                report_json: None,
            };
        }
    };
    result.run_dir = Some(booted.dir.clone());
    let run = match load(&booted.dir) {
        Ok(r) => r,
        Err(e) => {
            result.message = format!("{}; no coverage: {e:#}", booted.status);
            result.gates = gates::evaluate(&case.expect, &no_coverage(&case.name));
            return CaseOutcome {
                result,
                run: None,
                report_json: None,
            };
        }
    };
    let failures = run.failures(false);
    result.has_store = true;
    result.passed = booted.exit_code == 0 && failures.is_empty();
    result.message = if failures.is_empty() {
        booted.status.clone()
    } else {
        format!("{}; {}", booted.status, failures.join("; "))
    };
    let report = run.report(&filter, &case.name);
    let case_patch = patch
        .filter(|_| case.expect.min_patch_coverage.is_some())
        .map(|p| PatchCoverage::new(p, &run.report(&[PathGlob::new("**")], &case.name)));
    result.gates = gates::evaluate(
        &case.expect,
        &GateInput {
            scope: &case.name,
            report: &report,
            patch: case_patch.as_ref(),
            build_id: run.build_id.as_deref(),
            kernel_key: run.store.meta.kernel.kernel_key.as_deref(),
        },
    );
    let report_json = report_json(&report, run.build_id.as_deref(), case_patch.as_ref()).ok();
    drop(booted.hold);
    CaseOutcome {
        result,
        run: Some(run),
        report_json,
    }
}

/// The gate input of a case whose coverage never arrived: every gate fails (a baseline gate
/// names its baseline, a function gate every function).
pub fn no_coverage(scope: &str) -> GateInput<'_> {
    static EMPTY: std::sync::OnceLock<Report> = std::sync::OnceLock::new();
    GateInput {
        scope,
        report: EMPTY.get_or_init(|| Report::new(&SiteTable::default(), &empty_cov(), &[], "", "")),
        patch: None,
        build_id: None,
        kernel_key: None,
    }
}

fn empty_cov() -> coverage::report::RunCoverage {
    coverage::report::RunCoverage::build(
        &SiteTable::default(),
        &[],
        SourceFilter::All,
        coverage::Attribution::AllFrames,
    )
}

/// Options of one `ci` run.
pub struct CiOpts {
    /// One shard, or every case.
    pub partition: Option<Partition>,
    /// The output directory.
    pub out: PathBuf,
    /// The config's patch ([`config_patch`]), taken once before the kernel is built.
    pub patch: Option<PatchLines>,
}

/// Runs the cases of `cfg` in `opts.partition` through `boot`/`load`, evaluates the gates and
/// writes the output directory; returns its manifest.
pub fn run_ci(
    cfg: &Config,
    opts: &CiOpts,
    boot: &mut BootFn<'_>,
    load: &LoadFn<'_>,
) -> Result<Manifest> {
    // Everything that can be wrong before a boot is checked first.
    outputs::check_out_dir(&opts.out)?;
    let patch = opts.patch.as_ref();
    let selected: Vec<&Case> = cfg
        .cases
        .iter()
        .enumerate()
        .filter(|(i, _)| opts.partition.is_none_or(|p| p.owns(*i)))
        .map(|(_, c)| c)
        .collect();
    let shard = opts
        .partition
        .map(|p| format!(" (shard {p})"))
        .unwrap_or_default();
    eprintln!(
        "ci: {}: {} of {} cases{shard}, runner {}",
        cfg.name,
        selected.len(),
        cfg.cases.len(),
        cfg.runner
    );
    let mut outcomes = Vec::new();
    for (i, case) in selected.iter().enumerate() {
        eprintln!(
            "ci: [{}/{}] case {}: booting",
            i + 1,
            selected.len(),
            case.name
        );
        let o = run_case(cfg, case, patch, opts.partition, boot, load);
        let failed_gates: Vec<String> = o
            .result
            .gates
            .iter()
            .filter(|g| !g.passed)
            .map(|g| g.gate.clone())
            .collect();
        eprintln!(
            "ci: [{}/{}] case {}: {} in {:.1} s: {}{}",
            i + 1,
            selected.len(),
            case.name,
            if o.result.passed { "passed" } else { "FAILED" },
            o.result.seconds,
            o.result.message,
            if failed_gates.is_empty() {
                String::new()
            } else {
                format!("; gates FAILED: {}", failed_gates.join(", "))
            }
        );
        outcomes.push(o);
    }
    let loaded: Vec<&LoadedRun> = outcomes.iter().filter_map(|o| o.run.as_ref()).collect();
    let stores: Vec<&Store> = loaded.iter().map(|r| &r.store).collect();
    let filter: Vec<PathGlob> = cfg.filter.iter().map(|g| PathGlob::new(g)).collect();
    let union = match loaded.first() {
        Some(first) => Some(union(
            &cfg.name,
            &filter,
            &stores,
            &KernelTable {
                table: &first.table,
                vmlinux: &first.vmlinux,
            },
            patch,
        )?),
        None => None,
    };
    let kernel = kernel_ref_of(&stores);
    let union_gates = match (&opts.partition, &union) {
        (Some(_), _) if !cfg.expect.is_empty() => gates::deferred(
            &cfg.expect,
            "all",
            "on all cases together: evaluated by `cargo xtask merge` of every shard",
        ),
        (_, Some(u)) => union_gates(cfg, u, &kernel),
        (None, None) => gates::evaluate(&cfg.expect, &no_coverage("all")),
        (Some(_), None) => Vec::new(),
    };
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        name: cfg.name.clone(),
        filter: cfg.filter.clone(),
        config: Some(cfg.path.clone()),
        config_hash: Some(cfg.hash.clone()),
        partition: opts.partition.map(|p| p.to_string()),
        merged_from: Vec::new(),
        kernel,
        cases: outcomes.iter().map(|o| o.result.clone()).collect(),
        gates: union_gates,
    };
    let out = Outputs {
        case_json: outcomes
            .iter()
            .filter_map(|o| Some((o.result.name.clone(), o.report_json.clone()?)))
            .collect(),
        stores: outcomes
            .iter()
            .filter_map(|o| Some((o.result.name.clone(), store_dir(&o.run.as_ref()?.store.dir))))
            .collect(),
        manifest,
        lcov: union.as_ref().map(|u| u.lcov.clone()),
        json: union.as_ref().map(|u| u.json.clone()),
        patch: union.as_ref().and_then(|u| u.patch.clone()),
        report: union.map(|u| u.report),
    };
    outputs::write_dir(&opts.out, &out)?;
    Ok(out.manifest)
}

/// `cargo xtask ci` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct CiArgs {
    /// The config (default: testbed.toml in the current directory).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run shard K of N (1-based; cases are dealt round-robin in config order).
    #[arg(long, value_name = "K/N")]
    pub partition: Option<String>,
    /// Output directory (default: target/testbed/ci/all, or .../shard-K-of-N).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the cases this shard runs and exit.
    #[arg(long)]
    pub list: bool,
    /// Print the cache key of the config's kernel (for a CI cache) and exit; builds nothing.
    #[arg(long, conflicts_with_all = ["list", "prepare"])]
    pub kernel_key: bool,
    /// Build the config's kernel and the agent (a CI job before the shards, so that every
    /// shard boots the same kernel build), print the kernel's cache key and exit.
    #[arg(long, conflicts_with = "list")]
    pub prepare: bool,
}

/// The config a command reads: `explicit`, else `testbed.toml` here.
pub fn find_config(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Prints where the outputs are and what failed; the exit code reflects the gates.
pub fn print_outcome(m: &Manifest, out: &Path) -> ExitCode {
    for c in m.cases.iter().filter(|c| !c.passed) {
        eprintln!("ci: case {} FAILED: {}", c.name, c.message);
    }
    for g in m.all_gates().filter(|g| !g.passed && !g.deferred) {
        eprintln!("ci: gate {} FAILED: {}", g.title(), g.message);
        for d in g.details.iter().take(20) {
            eprintln!("ci:   {d}");
        }
        if g.details.len() > 20 {
            eprintln!(
                "ci:   ... {} more in {}",
                g.details.len() - 20,
                out.join(manifest::SUMMARY_MD).display()
            );
        }
    }
    println!("{}", out.join(manifest::SUMMARY_MD).display());
    let deferred = m.all_gates().filter(|g| g.deferred).count();
    eprintln!(
        "ci: {}: {} case(s), {} gate(s){}; outputs in {}",
        if m.passed() { "passed" } else { "FAILED" },
        m.cases.len(),
        m.all_gates().count() - deferred,
        if deferred > 0 {
            format!(", {deferred} left to `cargo xtask merge`")
        } else {
            String::new()
        },
        out.display()
    );
    if m.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `cargo xtask ci`.
pub fn ci_cmd(a: &CiArgs) -> Result<ExitCode> {
    let partition = a
        .partition
        .as_deref()
        .map(str::parse::<Partition>)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let cfg = Config::load(&find_config(a.config.as_deref()))?;
    if a.kernel_key {
        println!("{}", crate::kernel::cache_key_for(&cfg.kernel)?);
        return Ok(ExitCode::SUCCESS);
    }
    if a.prepare {
        let k = crate::kernel::build(&cfg.kernel)?;
        crate::agent::build()?;
        println!("{}", k.meta.key);
        return Ok(ExitCode::SUCCESS);
    }
    if a.list {
        for (i, c) in cfg.cases.iter().enumerate() {
            if partition.is_none_or(|p| p.owns(i)) {
                println!("{}", c.name);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = a.out.clone().unwrap_or_else(|| {
        let leaf = match partition {
            Some(p) => format!("shard-{}-of-{}", p.k, p.n),
            None => "all".into(),
        };
        crate::paths::workspace_root()
            .join("target/testbed/ci")
            .join(leaf)
    });
    // Cheap checks, then one kernel build for every case: a build that fails, fails once.
    outputs::check_out_dir(&out)?;
    let patch = config_patch(&cfg)?;
    crate::kernel::build(&cfg.kernel)?;
    let load = |dir: &Path| crate::run_kernel::load(dir, &LoadOpts::default());
    let m = run_ci(
        &cfg,
        &CiOpts {
            partition,
            out: out.clone(),
            patch,
        },
        &mut boot_case,
        &load,
    )?;
    Ok(print_outcome(&m, &out))
}

/// Shared with `merge`: the site table of a kernel, by its cache key or an explicit vmlinux.
pub fn kernel_table(
    explicit: Option<&Path>,
    key: Option<&str>,
) -> Result<(PathBuf, Arc<SiteTable>, Option<String>)> {
    let vmlinux = match (explicit, key.and_then(crate::run_kernel::cached_kernel_dir)) {
        (Some(v), _) => v.to_path_buf(),
        (None, Some(dir)) => dir.join("vmlinux"),
        (None, None) => anyhow::bail!(
            "the stores' kernel (cache key {}) is not in the kernel cache: pass its vmlinux \
             with --vmlinux (the CI workflow restores the kernel cache by its key)",
            key.unwrap_or("unknown")
        ),
    };
    let (table, build_id) = crate::run_kernel::site_table(&vmlinux)?;
    Ok((vmlinux, table, build_id))
}
