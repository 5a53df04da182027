//! `cargo xtask report`: a run directory's coverage (the raw kcov-wire stream `coverage.kcw`,
//! collected once into `store/`) + the run's vmlinux → terminal summary, lcov, HTML, JSON,
//! patch coverage; and the coverage benchmark `cargo xtask bench symbolize` calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coverage::diff::{PatchCoverage, PatchLines};
use coverage::html::write_html;
use coverage::map::Attribution;
use coverage::report::{Report, RunCoverage, SourceFilter, DEFAULT_FILTER};
use coverage::run::store_dir;
use coverage::run::{LoadOpts, LoadedRun};
use coverage::store::Store;
use coverage::PathGlob;

use crate::kernel::{self, KernelOpts};
use crate::paths;
use crate::run_kernel::{built_release, host_vmlinux, load, open_vmlinux, site_table};

/// The host coverage of `run`, each entry mapped onto the host kernel's vmlinux when it is
/// known and its build-id matches the entry's, as text (one report per entry); an entry whose
/// kernel is unknown gets one line saying so.
pub fn host_section(
    run: &LoadedRun,
    run_dir: &Path,
    explicit: Option<&Path>,
    filter: &[PathGlob],
) -> Result<String> {
    let mut text = String::new();
    let entries = run.store.host_pcs()?;
    if entries.is_empty() {
        return Ok(text);
    }
    let vmlinux = host_vmlinux(run_dir, explicit);
    for (meta, pcs) in entries {
        let Some(path) = &vmlinux else {
            text.push_str(&format!(
                "host coverage {}: not mapped (the host kernel's vmlinux is unknown; pass \
                 --host-vmlinux)\n",
                meta.name
            ));
            continue;
        };
        let (table, build_id) = site_table(path)?;
        match (&meta.kernel_build_id, &build_id) {
            (Some(want), Some(have)) if want != have => bail!(
                "{}: build-id {have} is not the host kernel's of host coverage {} ({want})",
                path.display(),
                meta.name
            ),
            (None, _) if explicit.is_none() => {
                text.push_str(&format!(
                    "host coverage {}: not mapped (no build-id recorded; pass --host-vmlinux)\n",
                    meta.name
                ));
                continue;
            }
            _ => {}
        }
        let cov = RunCoverage::build(
            &table,
            std::slice::from_ref(&pcs),
            SourceFilter::Host,
            Attribution::AllFrames,
        );
        let desc = format!(
            "host kernel {}, build-id {}, vmlinux {}",
            meta.kernel_release.as_deref().unwrap_or("?"),
            build_id.as_deref().unwrap_or("?"),
            path.display()
        );
        let title = format!("host coverage {} (source=host)", meta.name);
        text.push_str(&Report::new(&table, &cov, filter, &title, &desc).text());
    }
    Ok(text)
}

/// The default kernel source tree for annotated HTML: the extracted Debian source in the cache.
pub fn default_source_root() -> Option<PathBuf> {
    let src = paths::cache_root().join("src");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&src)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("linux-source-"))
        })
        .collect();
    dirs.sort();
    dirs.pop()
}

/// `report` with its functions' declaration lines (a warning, and `report` unchanged, when the
/// vmlinux's DWARF cannot be read for them).
pub fn with_decl_lines(run: &LoadedRun, report: Report) -> Report {
    with_decl_lines_of(&run.vmlinux, &run.table.src_roots, report)
}

/// [`with_decl_lines`] from `vmlinux`, whose site table strips `src_roots` from paths.
pub fn with_decl_lines_of(vmlinux: &Path, src_roots: &[String], report: Report) -> Report {
    let decl = open_vmlinux(vmlinux)
        .map_err(|e| e.to_string())
        .and_then(|vm| {
            coverage::symbolizer::decl_lines(&vm, src_roots, &report.file_paths())
                .map_err(|e| e.to_string())
        });
    match decl {
        Ok(decl) => report.with_decl_lines(&decl),
        Err(e) => {
            eprintln!(
                "report: warning: declaration lines unknown ({e}); FN uses the first instrumented line"
            );
            report
        }
    }
}

pub(crate) fn globs(filter: &[String]) -> Vec<PathGlob> {
    if filter.is_empty() {
        vec![PathGlob::new(DEFAULT_FILTER)]
    } else {
        filter.iter().map(|f| PathGlob::new(f)).collect()
    }
}

pub(crate) fn title(run_dir: &Path, workload: Option<&str>) -> String {
    let mut t = run_dir.display().to_string();
    if let Some(w) = workload {
        t.push_str(&format!(" (workload {w})"));
    }
    t
}

/// Options of `cargo xtask report`.
#[derive(Clone, Debug, Default)]
pub struct ReportOpts {
    /// The run directory (or a store directory).
    pub run_dir: PathBuf,
    /// Load options.
    pub load: LoadOpts,
    /// lcov tracefile to write.
    pub lcov: Option<PathBuf>,
    /// HTML directory to write.
    pub html: Option<PathBuf>,
    /// JSON file to write.
    pub json: Option<PathBuf>,
    /// Filter globs (default `drivers/vhost/*`).
    pub filter: Vec<String>,
    /// Unified diff for patch coverage.
    pub patch: Option<PathBuf>,
    /// Patch coverage of the changes since this git revision in `tree` (instead of `patch`).
    pub patch_base: Option<String>,
    /// The git tree `patch_base` is taken from (default: the current directory).
    pub tree: Option<PathBuf>,
    /// Kernel source tree for HTML and lcov paths (default: the cached Debian source).
    pub source_root: Option<PathBuf>,
    /// The host kernel's vmlinux for host coverage (default: the one run.json names).
    pub host_vmlinux: Option<PathBuf>,
    /// Which workload of the run reached which function: Markdown, or TSV for a `.tsv` name.
    pub functions: Option<PathBuf>,
}

/// `cargo xtask report`: returns the terminal text; writes the requested files.
pub fn report(opts: &ReportOpts) -> Result<String> {
    // Cheap input checks first, so bad input fails before anything is read or written.
    let patch = match (&opts.patch, &opts.patch_base) {
        (Some(_), Some(_)) => bail!("--patch and --patch-base: give one of them"),
        (Some(p), None) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("reading the patch {}", p.display()))?;
            Some(parse_patch(&bytes, &p.display().to_string())?)
        }
        (None, Some(base)) => {
            let tree = opts.tree.clone().unwrap_or_else(|| PathBuf::from("."));
            Some(patch_since(&tree, base)?)
        }
        (None, None) if opts.tree.is_some() => bail!("--tree is for --patch-base REF"),
        (None, None) => None,
    };
    let run = load(&opts.run_dir, &opts.load)?;
    report_run(opts, &run, patch)
}

/// A unified diff's changed lines. Bytes that are not UTF-8 (a Latin-1 comment, say) do not
/// spoil the patch: they are read as U+FFFD and named by line (`what` names the patch).
fn parse_patch(bytes: &[u8], what: &str) -> Result<PatchLines> {
    let bad: Vec<String> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| std::str::from_utf8(l).is_err())
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    if !bad.is_empty() {
        eprintln!(
            "report: warning: {what} line(s) {} are not UTF-8; read with U+FFFD",
            bad.join(", ")
        );
    }
    let text = String::from_utf8_lossy(bytes);
    PatchLines::parse(&text).with_context(|| what.to_string())
}

/// The changes of the working tree at `tree` since `base` (see [`git_diff_since`]); no change
/// at all is an empty patch.
pub(crate) fn patch_since(tree: &Path, base: &str) -> Result<PatchLines> {
    let bytes = git_diff_since(tree, base)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(PatchLines::default());
    }
    parse_patch(&bytes, &format!("git diff {base} in {}", tree.display()))
}

/// `git diff BASE` of the working tree at `tree` (committed, staged and unstaged changes since
/// `base`), checked first: a tree that is no git work tree and a revision git does not know
/// each fail in one line.
pub(crate) fn git_diff_since(tree: &Path, base: &str) -> Result<Vec<u8>> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(args)
            .output()
            .with_context(|| "running git (is it installed?)".to_string())
    };
    let inside = git(&["rev-parse", "--is-inside-work-tree"])?;
    if !inside.status.success() {
        bail!(
            "--patch-base: {} is not inside a git work tree (give the kernel tree with --tree)",
            tree.display()
        );
    }
    if base.starts_with('-') {
        bail!("--patch-base {base:?}: expected a git revision");
    }
    let commit = format!("{base}^{{commit}}");
    if !git(&["rev-parse", "--verify", "--quiet", &commit])?
        .status
        .success()
    {
        bail!(
            "--patch-base {base}: no such commit in {} (try a branch, tag or hash that `git \
             log` shows)",
            tree.display()
        );
    }
    let out = git(&["diff", "--no-color", "--no-ext-diff", base, "--"])?;
    if !out.status.success() {
        bail!(
            "git diff {base} in {}: {}",
            tree.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The rendering half of [`report`]: `run` is `opts.run_dir` loaded, `patch` the parsed
/// `opts.patch`.
pub fn report_run(opts: &ReportOpts, run: &LoadedRun, patch: Option<PatchLines>) -> Result<String> {
    let filter = globs(&opts.filter);
    let t = title(&opts.run_dir, opts.load.workload.as_deref());
    let mut report = run.report(&filter, &t);
    if opts.lcov.is_some() || opts.html.is_some() || opts.json.is_some() {
        // lcov's FN is the declaration line: read from the DWARF of the shown files only.
        report = with_decl_lines(run, report);
    }
    let mut text = String::new();
    if !run.store.meta.complete {
        text.push_str(&format!(
            "WARNING: partial report of an incomplete store: {}\n",
            run.store.meta.incomplete_reason.as_deref().unwrap_or("?")
        ));
    }
    // The agent's Hello names the kernel that really ran: it must be the run's kernel.
    if let (Some(hello), Some(built)) = (
        run.store
            .meta
            .agent
            .as_ref()
            .map(|a| a.kernel_release.as_str()),
        built_release(&opts.run_dir),
    ) {
        if hello != built {
            text.push_str(&format!(
                "WARNING: the agent ran on kernel {hello}, but the run's kernel (run.json) is \
                 {built}: the coverage may be mapped onto the wrong vmlinux\n"
            ));
        }
    }
    let failures = coverage::store::run_failures(&run.store.meta, true);
    if !failures.is_empty() {
        text.push_str("RUN FAILED: this coverage is what ran before or besides the failure:\n");
        for f in &failures {
            text.push_str(&format!("  - {f}\n"));
        }
    }
    text.push_str(&report.text());
    text.push_str(&host_section(
        run,
        &opts.run_dir,
        opts.host_vmlinux.as_deref(),
        &filter,
    )?);
    let source_root = opts.source_root.clone().or_else(default_source_root);
    let patch_cov = patch.map(|p| {
        // Patch lines may lie outside the filter: classify against every file.
        let all = run.report(&[PathGlob::new("**")], &t);
        PatchCoverage::new(&p, &all)
    });
    if let Some(pc) = &patch_cov {
        text.push_str(&pc.text());
    }
    if let Some(path) = &opts.lcov {
        write_file(path, report.lcov(&t, source_root.as_deref()).as_bytes())?;
        text.push_str(&format!("lcov: {}\n", path.display()));
    }
    if let Some(dir) = &opts.html {
        let index = write_html(&report, dir, source_root.as_deref())?;
        text.push_str(&format!("html: {}\n", index.display()));
    }
    if let Some(path) = &opts.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(obj), Some(pc)) = (v.as_object_mut(), &patch_cov) {
            obj.insert("patch".into(), serde_json::to_value(pc)?);
        }
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "workloads".into(),
                serde_json::to_value(&run.store.meta.workloads)?,
            );
            obj.insert("complete".into(), run.store.meta.complete.into());
        }
        write_file(path, &serde_json::to_vec_pretty(&v)?)?;
        text.push_str(&format!("json: {}\n", path.display()));
    }
    if let Some(path) = &opts.functions {
        let reports = run.workload_reports(&filter, opts.load.sources)?;
        let cols: Vec<(&str, &coverage::report::Report)> =
            reports.iter().map(|(n, r)| (n.as_str(), r)).collect();
        let m = coverage::matrix::FunctionMatrix::new(&cols);
        let body = if path.extension().is_some_and(|e| e == "tsv") {
            m.tsv()
        } else {
            m.markdown(&t, &report.kernel)
        };
        write_file(path, body.as_bytes())?;
        text.push_str(&format!(
            "functions: {} ({} workloads, {} functions, {} reached by none)\n",
            path.display(),
            m.cases.len(),
            m.rows.len(),
            m.unreached()
        ));
    }
    Ok(text)
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Runs both coverage benchmarks on `vmlinux` (default: the default kernel's) and prints the
/// figures: symbolizing every instrumented site vs binutils `addr2line -f -i` on the same
/// addresses (same run), and report generation for a 100k-PC run.
pub fn bench(vmlinux: Option<&Path>) -> Result<()> {
    crate::deps::ensure_packages(&["binutils"], "the addr2line baseline")?;
    let vmlinux = match vmlinux {
        Some(v) => v.to_path_buf(),
        None => kernel::build(&KernelOpts::default())?.vmlinux,
    };
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let cache_dir = paths::workspace_root()
        .join("target/testbed/bench")
        .join(format!("symbols-{}", std::process::id()));
    let s = testbed_bench::coverage::symbolize_vs_addr2line(&vmlinux, &cache_dir);
    let _ = std::fs::remove_dir_all(&cache_dir);
    let s = s?;
    println!("symbolize-all ({}):", vmlinux.display());
    println!(
        "  ours: {} sites -> {} frames in {} (enumerate + symbolize; symbolize {})",
        s.sites,
        s.frames,
        ms(s.ours),
        ms(s.ours_symbolize)
    );
    println!(
        "  baseline: addr2line -f -i -e vmlinux, same addresses: {} ({} output lines)",
        ms(s.addr2line),
        s.addr2line_lines
    );
    println!(
        "  ratio: {:.1}x faster than addr2line, cold (goal >= 10x)",
        s.ratio()
    );
    if let (Some(c), Some(r)) = (s.cached, s.cached_ratio()) {
        println!(
            "  same table from the per-build-id cache: {} ({r:.1}x faster than addr2line)",
            ms(c)
        );
    }
    let (table, _) = site_table(&vmlinux)?;
    let dir = paths::workspace_root()
        .join("target/testbed/bench")
        .join(format!("report-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = testbed_bench::coverage::report_generation(
        &table,
        100_000,
        default_source_root().as_deref(),
        &dir,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    println!("report ({} PCs, {} distinct):", r.entries, r.distinct);
    for (name, d) in &r.stages {
        println!("  {name}: {}", ms(*d));
    }
    println!("  total: {}", ms(r.total()));
    Ok(())
}

pub(crate) fn parse_sources(s: &str) -> Result<SourceFilter> {
    match SourceFilter::parse(s) {
        // Host PCs are mapped onto the host's vmlinux in their own section, never the guest's.
        Some(SourceFilter::Host) | None => {
            bail!("--source {s:?}: expected all, remote or local")
        }
        Some(f) => Ok(f),
    }
}

/// `cargo xtask report` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Run directory written by `cargo xtask boot` (or a store directory).
    pub run_dir: PathBuf,
    /// vmlinux of the run's kernel (default: the kernel recorded in run.json, else the default kernel).
    #[arg(long, value_name = "V")]
    pub vmlinux: Option<PathBuf>,
    /// vmlinux of the host kernel, for host coverage (--host-kcov; default: the one run.json
    /// names, e.g. the nested runner's L1 kernel; its build-id must match).
    #[arg(long, value_name = "V")]
    pub host_vmlinux: Option<PathBuf>,
    /// Write an lcov tracefile (for genhtml and CI tools).
    #[arg(long, value_name = "F")]
    pub lcov: Option<PathBuf>,
    /// Write a self-contained HTML report into this directory.
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
    /// Write JSON for scripts.
    #[arg(long, value_name = "F")]
    pub json: Option<PathBuf>,
    /// Write which workload of the run reached which function (lines hit per function and
    /// workload): Markdown, or tab-separated when F ends in .tsv.
    #[arg(long, value_name = "F")]
    pub functions: Option<PathBuf>,
    /// Only files matching this glob (repeatable; default drivers/vhost/*).
    #[arg(long, value_name = "GLOB")]
    pub filter: Vec<String>,
    /// Patch coverage of a unified diff (e.g. `git diff base..topic -- drivers/vhost`).
    #[arg(long, value_name = "DIFF")]
    pub patch: Option<PathBuf>,
    /// Patch coverage of the changes since git revision REF in the kernel tree (`git diff REF`
    /// of --tree, default the current directory), instead of --patch.
    #[arg(long, value_name = "REF")]
    pub patch_base: Option<String>,
    /// The kernel tree for --patch-base (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub tree: Option<PathBuf>,
    /// Kernel source tree for annotated HTML (default: the cached Debian source).
    #[arg(long, value_name = "DIR")]
    pub source_root: Option<PathBuf>,
    /// Coverage sources to merge: all, remote (vhost workers), local (agent syscalls).
    #[arg(long, default_value = "all")]
    pub source: String,
    /// Only this workload of the run.
    #[arg(long)]
    pub workload: Option<String>,
    /// Report an incomplete store (a run whose stream was cut) instead of refusing it.
    #[arg(long)]
    pub partial: bool,
    /// Exit 0 even when the run failed (agent error, failed workload): the report says so
    /// either way.
    #[arg(long)]
    pub allow_failed: bool,
}

/// Runs `cargo xtask report`.
pub fn report_cmd(a: &ReportArgs) -> Result<std::process::ExitCode> {
    // In use while we read it: `cargo xtask runs prune` leaves it alone.
    let _in_use = crate::runs::hold(&a.run_dir)?;
    let text = report(&ReportOpts {
        run_dir: a.run_dir.clone(),
        load: LoadOpts {
            vmlinux: a.vmlinux.clone(),
            sources: parse_sources(&a.source)?,
            workload: a.workload.clone(),
            partial: a.partial,
        },
        lcov: a.lcov.clone(),
        html: a.html.clone(),
        json: a.json.clone(),
        filter: a.filter.clone(),
        patch: a.patch.clone(),
        patch_base: a.patch_base.clone(),
        tree: a.tree.clone(),
        source_root: a.source_root.clone(),
        host_vmlinux: a.host_vmlinux.clone(),
        functions: a.functions.clone(),
    })?;
    print!("{text}");
    Ok(failed_run_exit(&[&a.run_dir], a.allow_failed, a.partial))
}

/// Exit status of a report or diff: failure when one of `runs` failed (agent error, failed
/// workload, non-zero final status; with `partial` a stream cut short was asked for and does
/// not count), unless `allow_failed`; says so in one line.
pub(crate) fn failed_run_exit(
    runs: &[&Path],
    allow_failed: bool,
    partial: bool,
) -> std::process::ExitCode {
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| {
            Store::open_partial(&store_dir(r))
                .is_ok_and(|s| !coverage::store::run_failures(&s.meta, !partial).is_empty())
        })
        .map(|r| r.display().to_string())
        .collect();
    if failed.is_empty() || allow_failed {
        return std::process::ExitCode::SUCCESS;
    }
    eprintln!(
        "error: run {} failed (see RUN FAILED above); pass --allow-failed to exit 0 anyway",
        failed.join(" and ")
    );
    std::process::ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    use coverage::run::{STORE_DIR, STREAM_FILE};
    use coverage::store::{add_host_coverage, collect, HostCoverageInfo, KernelIdentity};

    use crate::run_kernel::{load_with_table, open_or_collect};
    use crate::test_support::{hello, table, workload_stream};
    use kcov_wire::{encode, CoverageChunk, CoverageSource, Frame, KcovMode, WorkloadStart};

    /// A run directory whose store holds guest PC 0x15 (net.c line 10) of workload `w`.
    fn run_dir(root: &Path) -> PathBuf {
        run_with_status(root, 0)
    }

    /// A collected run whose workload `w` and agent end with `status` (an error if non-zero).
    fn run_with_status(root: &Path, status: i32) -> PathBuf {
        let bytes = workload_stream(&[0x15, 0x15], status);
        let run = root.join("run");
        let s = collect(&bytes[..], &run.join(STORE_DIR), KernelIdentity::default()).unwrap();
        std::fs::write(run.join("stream.bin"), &bytes).unwrap();
        assert!(s.complete, "{s:?}");
        run
    }

    /// The stream of [`run_dir`]'s run, and a run directory holding only it (no store yet).
    fn fresh_run(root: &Path) -> PathBuf {
        let collected = run_dir(&root.join("src"));
        let run = root.join("fresh");
        std::fs::create_dir_all(&run).unwrap();
        let bytes = std::fs::read(collected.join("stream.bin")).unwrap();
        std::fs::write(run.join(STREAM_FILE), bytes).unwrap();
        run
    }

    /// A run whose agent failed is reported with what failed, and report/diff exit non-zero
    /// unless --allow-failed.
    #[test]
    fn failed_runs_say_so_and_fail_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let good = run_with_status(&tmp.path().join("good"), 0);
        let bad = run_with_status(&tmp.path().join("bad"), 2);
        let (text, _) = render(&bad, &tmp.path().join("bad.json"));
        assert!(text.starts_with("RUN FAILED"), "{text}");
        assert!(
            text.contains("workload w failed (status 2): boom"),
            "{text}"
        );
        assert!(text.contains("the agent ended with status 2"), "{text}");
        let (text, _) = render(&good, &tmp.path().join("good.json"));
        assert!(!text.contains("FAILED"), "{text}");
        let code = |runs: &[&Path], allow| format!("{:?}", failed_run_exit(runs, allow, false));
        let ok = format!("{:?}", std::process::ExitCode::SUCCESS);
        assert_eq!(code(&[&good], false), ok);
        assert_ne!(code(&[&bad], false), ok);
        assert_ne!(code(&[&good, &bad], false), ok);
        assert_eq!(code(&[&bad], true), ok);
    }

    /// A run that ended while its workload ran (a hang, a timeout, a panic): the coverage its
    /// snapshots shipped is reported, the workload is marked partial, and the run failed.
    #[test]
    fn a_workload_cut_off_reports_its_snapshots_as_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let chunk = |seq, words: Vec<u64>| {
            Frame::CoverageChunk(CoverageChunk {
                workload: "w".into(),
                source: CoverageSource::Remote,
                mode: KcovMode::Pc,
                seq,
                overflow: false,
                words,
            })
        };
        let frames = [
            hello(),
            Frame::WorkloadStart(WorkloadStart { name: "w".into() }),
            chunk(0, vec![0x15]),
            chunk(1, vec![0x15, 0x45]),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap()).collect();
        let run = tmp.path().join("run");
        let s = collect(&bytes[..], &run.join(STORE_DIR), KernelIdentity::default()).unwrap();
        assert!(!s.complete);
        let opts = ReportOpts {
            run_dir: run.clone(),
            json: Some(tmp.path().join("r.json")),
            load: LoadOpts {
                partial: true,
                ..LoadOpts::default()
            },
            ..ReportOpts::default()
        };
        let loaded = load_with_table(
            &run,
            &opts.load,
            PathBuf::from("synthetic-vmlinux"),
            table(),
            None,
        )
        .unwrap();
        let text = report_run(&opts, &loaded, None).unwrap();
        assert!(text.starts_with("WARNING: partial report"), "{text}");
        assert!(text.contains("RUN FAILED"), "{text}");
        assert!(
            text.contains(
                "  - workload w: no result (the run ended while it ran: a hang, a panic or a \
                 timeout); coverage up to its last snapshot, 3 PCs (2 distinct)"
            ),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("r.json")).unwrap()).unwrap();
        assert_eq!(v["workloads"][0]["partial"], true, "{v}");
        assert_eq!(v["complete"], false);
        // The snapshots' PCs are in the report: net.c line 10 (0x15) twice.
        assert!(
            hit_lines(&v).contains(&("drivers/vhost/net.c".to_string(), 10)),
            "{:?}",
            hit_lines(&v)
        );
        // A failed run: the command fails, unless the user asked for a cut stream.
        let ok = format!("{:?}", std::process::ExitCode::SUCCESS);
        assert_ne!(format!("{:?}", failed_run_exit(&[&run], false, false)), ok);
        assert_eq!(format!("{:?}", failed_run_exit(&[&run], false, true)), ok);
    }

    /// A collector killed mid-way (here: dropped before its end, which frees the lock as a
    /// kill does) leaves the store "in progress"; the next report collects it again.
    #[test]
    fn a_dead_collector_is_detected_and_the_run_collected_again() {
        let tmp = tempfile::tempdir().unwrap();
        let run = fresh_run(tmp.path());
        let dir = store_dir(&run);
        drop(coverage::store::Collector::create(&dir, KernelIdentity::default()).unwrap());
        assert!(
            Store::open(&dir).is_err(),
            "the dead collection must look incomplete"
        );
        // The lock is an flock on an O_CLOEXEC file: a process another test thread forks in
        // the same moment holds a copy of it until its exec, so "died" may take a moment to
        // show under `cargo test` (threads); under nextest (a process per test) it is at once.
        let t = std::time::Instant::now();
        while !coverage::store::collection_died(&dir).unwrap() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "the dead collector's lock stayed held"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let store = open_or_collect(&run, false).unwrap();
        assert!(store.meta.complete);
        assert!(!coverage::store::collection_died(&dir).unwrap());
    }

    /// Concurrent first reports of one run: one collects, the others wait for it; all read
    /// the same complete store.
    #[test]
    fn concurrent_first_reports_wait_for_the_collector() {
        let tmp = tempfile::tempdir().unwrap();
        for round in 0..10 {
            let run = fresh_run(&tmp.path().join(format!("r{round}")));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let run = run.clone();
                    std::thread::spawn(move || open_or_collect(&run, false).map(|s| s.meta))
                })
                .collect();
            for t in threads {
                let meta = t
                    .join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
                assert!(meta.complete);
            }
        }
    }

    fn render(run: &Path, json: &Path) -> (String, serde_json::Value) {
        let opts = ReportOpts {
            run_dir: run.to_path_buf(),
            json: Some(json.to_path_buf()),
            ..ReportOpts::default()
        };
        let loaded = load_with_table(
            run,
            &opts.load,
            PathBuf::from("synthetic-vmlinux"),
            table(),
            None,
        )
        .unwrap();
        let text = report_run(&opts, &loaded, None).unwrap();
        let v = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
        (text, v)
    }

    fn hit_lines(v: &serde_json::Value) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for f in v["files"].as_array().unwrap() {
            for l in f["lines"].as_array().unwrap() {
                if l["sites_hit"].as_u64().unwrap() > 0 {
                    out.push((
                        f["path"].as_str().unwrap().to_string(),
                        l["line"].as_u64().unwrap(),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn report_lists_host_coverage_without_symbolizing_it() {
        let tmp = tempfile::tempdir().unwrap();
        let run = run_dir(tmp.path());
        let (text0, json0) = render(&run, &tmp.path().join("before.json"));
        assert!(!text0.contains("host coverage"), "{text0}");
        assert!(json0.get("host").is_none());
        assert_eq!(hit_lines(&json0), [("drivers/vhost/net.c".to_string(), 10)]);

        // The VMM adds host PCs that, read as guest addresses, would hit net.c 11 and 12 and
        // vhost.c 50.
        add_host_coverage(
            &run.join(STORE_DIR),
            "vhost-net",
            HostCoverageInfo {
                kernel_release: Some("6.8.0-host".into()),
                kernel_build_id: None,
                common_handle: 7,
                mode: KcovMode::Pc,
                overflow: false,
            },
            [0x25u64, 0x35, 0x45, 0x25],
        )
        .unwrap();
        let (text, json) = render(&run, &tmp.path().join("after.json"));
        let line = "host coverage vhost-net (host kernel 6.8.0-host): 3 distinct PCs, not \
                    symbolized against the guest vmlinux\n";
        assert!(text.contains(line), "{text}");
        // No run.json names the host kernel and no build-id was recorded: not mapped, and
        // the report says so and how to map it.
        let unmapped = "host coverage vhost-net: not mapped (the host kernel's vmlinux is \
                        unknown; pass --host-vmlinux)\n";
        assert!(text.contains(unmapped), "{text}");
        // Nothing else of the terminal report changed.
        assert_eq!(
            text.replacen(line, "", 1)
                .replacen(unmapped, "", 1)
                .replace("after.json", "before.json"),
            text0
        );
        // The guest's lines alone are hit; the host entry is there raw.
        assert_eq!(hit_lines(&json), hit_lines(&json0));
        assert_eq!(json["pcs"], json0["pcs"]);
        assert_eq!(json["host"][0]["distinct_pcs"], 3);
        assert_eq!(json["host"][0]["entries"], 4);
        assert_eq!(json["host"][0]["meta"]["name"], "vhost-net");
        assert_eq!(json["host"][0]["meta"]["common_handle"], 7);
        assert_eq!(
            json["host"][0]["meta"]["coverage"]["file"],
            "h-vhost-net.host.pcs"
        );
        let mut without = json.clone();
        without.as_object_mut().unwrap().remove("host");
        assert_eq!(without, json0);
    }
}
