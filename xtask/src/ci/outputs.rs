//! Renders a [`Manifest`] and the coverage of all cases as the files CI systems read (JUnit
//! XML, lcov, JSON, a Markdown summary), and writes the output directory whole or not at all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coverage::diff::PatchCoverage;
use coverage::matrix::FunctionMatrix;
use coverage::report::Report;
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::manifest::{
    GateResult, Manifest, CASES_DIR, COVERAGE_JSON, COVERAGE_LCOV, FUNCTIONS_MD, FUNCTIONS_TSV,
    JUNIT_XML, MANIFEST, STORES_DIR, SUMMARY_MD,
};

/// Everything an output directory holds.
pub struct Outputs {
    /// `ci.json`.
    pub manifest: Manifest,
    /// All cases' coverage under the filter (None when no case's coverage arrived).
    pub report: Option<Report>,
    /// Its lcov.
    pub lcov: Option<String>,
    /// Its JSON (with patch coverage and build-id).
    pub json: Option<serde_json::Value>,
    /// Patch coverage of all cases.
    pub patch: Option<PatchCoverage>,
    /// Per-case JSON reports: (case, JSON).
    pub case_json: Vec<(String, serde_json::Value)>,
    /// Per-case stores to copy: (case, store directory).
    pub stores: Vec<(String, PathBuf)>,
}

fn status_of(passed: bool, deferred: bool, message: &str, details: &[String]) -> TestCaseStatus {
    if deferred {
        let mut s = TestCaseStatus::skipped();
        s.set_message(message.to_string());
        return s;
    }
    if passed {
        return TestCaseStatus::success();
    }
    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
    s.set_message(message.to_string());
    if !details.is_empty() {
        s.set_description(details.join("\n"));
    }
    s
}

fn gate_case(classname: &str, g: &GateResult) -> TestCase {
    let mut t = TestCase::new(
        g.title(),
        status_of(g.passed, g.deferred, &g.message, &g.details),
    );
    t.set_classname(format!("{classname}.gates"));
    if g.passed {
        t.set_system_out(g.message.clone());
    }
    t
}

/// JUnit XML: a suite of the cases (one testcase each, failed with the guest's status) and a
/// suite of the gates (one testcase each: the cases' gates, then those on all cases; a gate
/// left to `merge` is skipped, with the reason).
pub fn junit(m: &Manifest) -> Result<String> {
    let mut report = quick_junit::Report::new(m.name.clone());
    let mut cases = TestSuite::new(format!("{} cases", m.name));
    for c in &m.cases {
        let mut t = TestCase::new(c.name.clone(), status_of(c.passed, false, &c.message, &[]));
        t.set_classname(format!("{}.cases", m.name));
        t.set_time(Duration::from_secs_f64(c.seconds.max(0.0)));
        if c.passed {
            t.set_system_out(c.message.clone());
        }
        cases.add_test_case(t);
    }
    let mut gates = TestSuite::new(format!("{} gates", m.name));
    for g in m.all_gates() {
        gates.add_test_case(gate_case(&m.name, g));
    }
    report.add_test_suite(cases);
    report.add_test_suite(gates);
    Ok(report.to_string()?)
}

fn pct(hit: usize, total: usize) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * hit as f64 / total as f64)
    }
}

/// Markdown for a pull-request comment: the verdict, the cases, the gates, a per-file table of
/// all cases' coverage, and the changed lines no case covered.
pub fn markdown(
    m: &Manifest,
    report: Option<&Report>,
    patch: Option<&PatchCoverage>,
    functions: Option<&FunctionMatrix>,
) -> String {
    let mut s = String::new();
    let scope = match (&m.partition, m.merged_from.len()) {
        (Some(p), _) => format!(" (shard {p})"),
        (None, n) if n > 0 => format!(" (merged from {n} shards)"),
        _ => String::new(),
    };
    let _ = writeln!(s, "### Coverage tests: {}{scope}\n", m.name);
    let failed_cases = m.cases.iter().filter(|c| !c.passed).count();
    let gates: Vec<&GateResult> = m.all_gates().collect();
    let failed_gates = gates.iter().filter(|g| !g.passed && !g.deferred).count();
    let deferred = gates.iter().filter(|g| g.deferred).count();
    let _ = writeln!(
        s,
        "**{}**: {} of {} cases passed, {} of {} gates passed{}.\n",
        if m.passed() { "passed" } else { "FAILED" },
        m.cases.len() - failed_cases,
        m.cases.len(),
        gates.len() - failed_gates - deferred,
        gates.len() - deferred,
        if deferred > 0 {
            format!(" ({deferred} left to the merge of all shards)")
        } else {
            String::new()
        }
    );
    let k = &m.kernel;
    let _ = writeln!(
        s,
        "Kernel {}, build-id `{}`.\n",
        k.release.as_deref().unwrap_or("?"),
        k.build_id.as_deref().unwrap_or("?")
    );
    let _ = writeln!(s, "| case | result | time | detail |\n|---|---|---|---|");
    for c in &m.cases {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} s | {} |",
            c.name,
            if c.passed { "passed" } else { "**FAILED**" },
            c.seconds,
            md_cell(&c.message)
        );
    }
    if !gates.is_empty() {
        let _ = writeln!(s, "\n| gate | result | detail |\n|---|---|---|");
        for g in &gates {
            let result = if g.deferred {
                "left to merge"
            } else if g.passed {
                "passed"
            } else {
                "**FAILED**"
            };
            let _ = writeln!(
                s,
                "| {} | {result} | {} |",
                md_cell(&g.title()),
                md_cell(&g.message)
            );
        }
    }
    if let Some(r) = report {
        let _ = writeln!(
            s,
            "\nCoverage of `{}`, all cases together:\n\n| file | lines | functions |\n|---|---|---|",
            r.filter.join("`, `")
        );
        for f in &r.files {
            let _ = writeln!(
                s,
                "| `{}` | {}/{} ({}) | {}/{} |",
                f.path,
                f.lines_hit,
                f.lines_total,
                pct(f.lines_hit, f.lines_total),
                f.functions_hit,
                f.functions_total
            );
        }
        let t = &r.totals;
        let _ = writeln!(
            s,
            "| **total** | {}/{} ({}) | {}/{} |",
            t.lines_hit,
            t.lines_total,
            pct(t.lines_hit, t.lines_total),
            t.functions_hit,
            t.functions_total
        );
    }
    if let Some(fm) = functions {
        let per_case: Vec<String> = fm
            .cases
            .iter()
            .map(|c| format!("{} {} ({} only it)", c.name, c.reached, c.only))
            .collect();
        let _ = writeln!(
            s,
            "\nFunctions reached per case: {}; {} of {} functions reached by no case. Which \
             case reached which function: `{FUNCTIONS_MD}`.",
            md_cell(&per_case.join(", ")),
            fm.unreached(),
            fm.rows.len()
        );
    }
    if let Some(pc) = patch {
        let _ = writeln!(
            s,
            "\nPatch: {} changed lines, {} instrumented, {} hit ({}).",
            pc.changed,
            pc.instrumented,
            pc.hit,
            pct(pc.hit, pc.instrumented)
        );
        let missed: Vec<String> = pc
            .files
            .iter()
            .flat_map(|f| f.missed.iter().map(move |l| format!("- `{}:{l}`", f.path)))
            .collect();
        if !missed.is_empty() {
            let _ = writeln!(
                s,
                "\n<details><summary>Changed lines no case covered ({})</summary>\n\n{}\n\n</details>",
                missed.len(),
                missed.join("\n")
            );
        }
    }
    let failing: Vec<&&GateResult> = gates
        .iter()
        .filter(|g| !g.passed && !g.deferred && !g.details.is_empty())
        .collect();
    for g in failing {
        let shown: Vec<String> = g
            .details
            .iter()
            .take(50)
            .map(|d| format!("- `{d}`"))
            .collect();
        let more = g.details.len().saturating_sub(shown.len());
        let _ = writeln!(
            s,
            "\n<details><summary>{} ({} items)</summary>\n\n{}{}\n\n</details>",
            g.title(),
            g.details.len(),
            shown.join("\n"),
            if more > 0 {
                format!("\n- ... and {more} more")
            } else {
                String::new()
            }
        );
    }
    s
}

/// Which case reached which function, from the per-case reports (the same input for `ci` and
/// `merge`, so a merge of shards gives the table of one machine); None without any.
pub fn function_matrix(
    case_json: &[(String, serde_json::Value)],
) -> Result<Option<FunctionMatrix>> {
    if case_json.is_empty() {
        return Ok(None);
    }
    let reports: Vec<(&str, Report)> = case_json
        .iter()
        .map(|(name, v)| {
            let r: Report = serde_json::from_value(v.clone())
                .with_context(|| format!("case {name}: its report is no coverage report"))?;
            Ok((name.as_str(), r))
        })
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &Report)> = reports.iter().map(|(n, r)| (*n, r)).collect();
    Ok(Some(FunctionMatrix::new(&refs)))
}

/// A table cell: one line, no `|`.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Checks that `out` may be (re)written: absent, empty, or an earlier output directory.
/// Called before anything runs, so a wrong `--out` costs nothing.
pub fn check_out_dir(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("--out {}: exists and is not a directory", out.display());
    }
    let empty = std::fs::read_dir(out)
        .with_context(|| out.display().to_string())?
        .next()
        .is_none();
    if !empty && !out.join(MANIFEST).is_file() {
        bail!(
            "--out {}: exists, is not empty and holds no {MANIFEST}: refusing to replace it \
             (give another directory)",
            out.display()
        );
    }
    Ok(())
}

fn copy_store(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| from.display().to_string())? {
        let e = e?;
        let name = e.file_name();
        // The lock file is the writer's, not data.
        if name == coverage::store::LOCK_FILE || !e.file_type()?.is_file() {
            continue;
        }
        std::fs::copy(e.path(), to.join(&name))
            .with_context(|| format!("copying {}", e.path().display()))?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| path.display().to_string())
}

/// Writes `o` into `out`: built in a temporary directory beside it, then renamed into place
/// (an earlier output there is replaced only then), so `out` is whole or untouched.
pub fn write_dir(out: &Path, o: &Outputs) -> Result<()> {
    check_out_dir(out)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| parent.display().to_string())?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ci".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let t = tmp.path();
    for (case, dir) in &o.stores {
        copy_store(dir, &t.join(STORES_DIR).join(case))?;
    }
    if !o.case_json.is_empty() {
        std::fs::create_dir_all(t.join(CASES_DIR))?;
        for (case, v) in &o.case_json {
            write(
                &t.join(CASES_DIR).join(format!("{case}.json")),
                &serde_json::to_vec_pretty(v)?,
            )?;
        }
    }
    if let Some(l) = &o.lcov {
        write(&t.join(COVERAGE_LCOV), l.as_bytes())?;
    }
    if let Some(j) = &o.json {
        write(&t.join(COVERAGE_JSON), &serde_json::to_vec_pretty(j)?)?;
    }
    let functions = function_matrix(&o.case_json)?;
    if let Some(fm) = &functions {
        let k = &o.manifest.kernel;
        let kernel = format!(
            "{}, build-id `{}`",
            k.release.as_deref().unwrap_or("?"),
            k.build_id.as_deref().unwrap_or("?")
        );
        write(
            &t.join(FUNCTIONS_MD),
            fm.markdown(&o.manifest.name, &kernel).as_bytes(),
        )?;
        write(&t.join(FUNCTIONS_TSV), fm.tsv().as_bytes())?;
    }
    write(&t.join(JUNIT_XML), junit(&o.manifest)?.as_bytes())?;
    write(
        &t.join(SUMMARY_MD),
        markdown(
            &o.manifest,
            o.report.as_ref(),
            o.patch.as_ref(),
            functions.as_ref(),
        )
        .as_bytes(),
    )?;
    write(&t.join(MANIFEST), &serde_json::to_vec_pretty(&o.manifest)?)?;
    let tmp = tmp.keep();
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if out.exists() {
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        let _ = std::fs::rename(&old, out);
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("renaming into {}", out.display()));
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
