//! The gates of `testbed.toml` (`[expect]`, `[case.expect]`) evaluated on a report: functions
//! that must be covered, a golden, a minimum patch coverage, no regression against a baseline.
//! Each gate gives one [`GateResult`]; a gate that cannot be evaluated (an unreadable
//! baseline, say) fails with the reason: CI must never read "could not check" as a pass.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use coverage::diff::PatchCoverage;
use coverage::golden::{classify, covered_items, GoldenCheck, Item};
use coverage::report::Report;
use serde::Deserialize;

use super::config::{Expect, Regression};
use super::manifest::{GateResult, Manifest, CASES_DIR, COVERAGE_JSON, MANIFEST};

/// What the gates are evaluated on.
pub struct GateInput<'a> {
    /// `all` or the case's name (the baseline's report of the same scope is compared).
    pub scope: &'a str,
    /// The report under the config's filter.
    pub report: &'a Report,
    /// Patch coverage (of the config's `[patch]`), when there is one.
    pub patch: Option<&'a PatchCoverage>,
    /// The kernel's build-id and cache key.
    pub build_id: Option<&'a str>,
    /// Cache key.
    pub kernel_key: Option<&'a str>,
}

/// The names of the gates `expect` has, as [`evaluate`] titles them (for deferred gates).
pub fn gate_names(expect: &Expect) -> Vec<String> {
    let mut out = Vec::new();
    if !expect.functions.is_empty() {
        out.push("functions".to_string());
    }
    if expect.golden.is_some() {
        out.push("golden".to_string());
    }
    if let Some(m) = expect.min_patch_coverage {
        out.push(format!("patch coverage >= {m}%"));
    }
    if expect.baseline.is_some() {
        out.push(regression_name(expect.regression));
    }
    out
}

fn regression_name(r: Regression) -> String {
    match r {
        Regression::Functions => "no regression (functions)".into(),
        Regression::Lines => "no regression (functions and lines)".into(),
    }
}

/// Gates of `expect` that cannot be evaluated here, marked deferred (not passed, not failed).
pub fn deferred(expect: &Expect, scope: &str, why: &str) -> Vec<GateResult> {
    gate_names(expect)
        .into_iter()
        .map(|g| GateResult {
            deferred: true,
            ..GateResult::new(scope, &g, false, why.to_string(), Vec::new())
        })
        .collect()
}

/// Evaluates every gate of `expect` on `input`.
pub fn evaluate(expect: &Expect, input: &GateInput<'_>) -> Vec<GateResult> {
    let scope = input.scope;
    let mut out = Vec::new();
    if !expect.functions.is_empty() {
        let missing: Vec<String> = expect
            .functions
            .iter()
            .filter(|spec| !function_covered(input.report, spec))
            .map(|s| format!("function {s}"))
            .collect();
        let n = expect.functions.len();
        out.push(GateResult::new(
            scope,
            "functions",
            missing.is_empty(),
            format!("{} of {n} required functions covered", n - missing.len()),
            missing,
        ));
    }
    if let Some((path, golden)) = &expect.golden {
        let (golden, note) = match golden.check_kernel(input.build_id, input.kernel_key) {
            Ok(()) => (golden.clone(), String::new()),
            Err(reason) => (
                golden.functions_only(),
                format!(" (functions only: {reason})"),
            ),
        };
        let check = GoldenCheck::new(&golden, &classify(&[covered_items(input.report)]));
        let n = golden.items.len();
        out.push(GateResult::new(
            scope,
            "golden",
            check.passed(),
            format!(
                "{} of {n} items of {} covered{note}",
                n - check.missing.len(),
                path.display()
            ),
            check.missing.iter().map(Item::to_string).collect(),
        ));
    }
    if let Some(min) = expect.min_patch_coverage {
        out.push(patch_gate(scope, min, input.patch));
    }
    if let Some(path) = &expect.baseline {
        let gate = regression_name(expect.regression);
        out.push(
            match regression_gate(scope, &gate, path, expect.regression, input) {
                Ok(r) => r,
                Err(e) => GateResult::new(
                    scope,
                    &gate,
                    false,
                    format!("baseline {}: {e:#}", path.display()),
                    Vec::new(),
                ),
            },
        );
    }
    out
}

/// `spec` (`name` or `path:name`) names a function of `report` with a hit site.
fn function_covered(report: &Report, spec: &str) -> bool {
    let (file, name) = match spec.rsplit_once(':') {
        Some((f, n)) => (Some(f), n),
        None => (None, spec),
    };
    report
        .files
        .iter()
        .filter(|f| file.is_none_or(|p| f.path == p || f.path.ends_with(&format!("/{p}"))))
        .flat_map(|f| &f.functions)
        .any(|g| g.name == name && g.sites_hit > 0)
}

fn patch_gate(scope: &str, min: f64, patch: Option<&PatchCoverage>) -> GateResult {
    let gate = format!("patch coverage >= {min}%");
    let Some(pc) = patch else {
        return GateResult::new(
            scope,
            &gate,
            false,
            "no patch coverage was computed".into(),
            Vec::new(),
        );
    };
    let missed: Vec<String> = pc
        .files
        .iter()
        .flat_map(|f| f.missed.iter().map(move |l| format!("{}:{l}", f.path)))
        .collect();
    if pc.instrumented == 0 {
        return GateResult::new(
            scope,
            &gate,
            true,
            format!(
                "{} changed lines, none instrumented: nothing to cover",
                pc.changed
            ),
            Vec::new(),
        );
    }
    let pct = 100.0 * pc.hit as f64 / pc.instrumented as f64;
    GateResult::new(
        scope,
        &gate,
        pct >= min,
        format!(
            "{} of {} instrumented changed lines hit ({pct:.1}%), {} changed lines",
            pc.hit, pc.instrumented, pc.changed
        ),
        missed,
    )
}

/// A baseline's report and the build-id it was made on.
#[derive(Debug, Deserialize)]
struct Baseline {
    #[serde(flatten)]
    report: Report,
    #[serde(default)]
    build_id: Option<String>,
}

/// Reads the baseline report of `scope` from `path`: a `ci` or `merge` output directory (its
/// `coverage.json`, or `cases/<case>.json` for a case), or a JSON report file.
fn load_baseline(path: &Path, scope: &str) -> Result<Baseline> {
    let file = if path.is_dir() {
        if !path.join(MANIFEST).is_file() {
            bail!(
                "not a `cargo xtask ci` output directory (no {MANIFEST}); give one, or a JSON \
                 report"
            );
        }
        let m = Manifest::read(path)?;
        if scope == "all" {
            path.join(COVERAGE_JSON)
        } else {
            if !m.cases.iter().any(|c| c.name == scope) {
                bail!("it has no case {scope:?}");
            }
            path.join(CASES_DIR).join(format!("{scope}.json"))
        }
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
    serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("{}: not a coverage JSON report ({e})", file.display()))
}

fn covered(report: &Report, lines: bool) -> BTreeSet<Item> {
    covered_items(report)
        .into_iter()
        .filter(|i| lines || matches!(i, Item::Function { .. }))
        .collect()
}

fn regression_gate(
    scope: &str,
    gate: &str,
    path: &Path,
    mode: Regression,
    input: &GateInput<'_>,
) -> Result<GateResult> {
    let base = load_baseline(path, scope)?;
    let same_kernel = matches!((&base.build_id, input.build_id), (Some(a), Some(b)) if a == b);
    let lines = mode == Regression::Lines && same_kernel;
    let note = if mode == Regression::Lines && !same_kernel {
        " (lines not compared: the baseline ran another kernel build)"
    } else {
        ""
    };
    // Only files both reports show are compared: a narrower filter is no regression.
    let shown: BTreeSet<&str> = input.report.files.iter().map(|f| f.path.as_str()).collect();
    let then = covered(&base.report, lines);
    let now = covered(input.report, lines);
    let lost: Vec<String> = then
        .difference(&now)
        .filter(|i| match i {
            Item::Function { file, .. } | Item::Line { file, .. } => shown.contains(file.as_str()),
        })
        .map(Item::to_string)
        .collect();
    let gained = now.difference(&then).count();
    Ok(GateResult::new(
        scope,
        gate,
        lost.is_empty(),
        format!(
            "{} items lost, {gained} gained against {}{note}",
            lost.len(),
            path.display()
        ),
        lost,
    ))
}
