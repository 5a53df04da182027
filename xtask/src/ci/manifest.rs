//! A `ci` (or `merge`) output directory: what one CI job leaves for the next, as an artifact.
//!
//! ```text
//! DIR/ci.json           Manifest: config, shard, kernel, each case's result and gates, the gates on all cases
//! DIR/stores/<case>/    each case's coverage store (what `merge` reads)
//! DIR/cases/<case>.json each case's report (JSON; a later run's per-case baseline)
//! DIR/coverage.lcov     all cases together, lcov
//! DIR/coverage.json     all cases together, JSON (with patch coverage and build-id)
//! DIR/junit.xml         one testcase per case and per gate
//! DIR/summary.md        for a pull-request comment
//! DIR/functions.md      which case reached which function (coverage::matrix), and functions.tsv
//! ```
//!
//! The directory is written aside and renamed into place, so it is whole or absent.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// The manifest's file name.
pub const MANIFEST: &str = "ci.json";
/// Per-case stores.
pub const STORES_DIR: &str = "stores";
/// Per-case JSON reports.
pub const CASES_DIR: &str = "cases";
/// lcov of all cases.
pub const COVERAGE_LCOV: &str = "coverage.lcov";
/// JSON of all cases.
pub const COVERAGE_JSON: &str = "coverage.json";
/// JUnit XML.
pub const JUNIT_XML: &str = "junit.xml";
/// Markdown summary.
pub const SUMMARY_MD: &str = "summary.md";
/// Which case reached which function, Markdown.
pub const FUNCTIONS_MD: &str = "functions.md";
/// The same, tab-separated.
pub const FUNCTIONS_TSV: &str = "functions.tsv";
/// Format version of `ci.json`.
pub const MANIFEST_VERSION: u32 = 1;

/// One gate's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The case it belongs to, or `all` for the gates on all cases together.
    pub scope: String,
    /// `functions`, `golden`, `patch coverage >= N%`, `no regression (functions)`.
    pub gate: String,
    /// Passed; false also when it could not be evaluated.
    pub passed: bool,
    /// Evaluated elsewhere (the gates on all cases of a partitioned run: by `merge`).
    #[serde(default)]
    pub deferred: bool,
    /// One line.
    pub message: String,
    /// What failed, one item a line (`drivers/vhost/net.c:812`, `function ...`).
    #[serde(default)]
    pub details: Vec<String>,
}

impl GateResult {
    pub(crate) fn new(
        scope: &str,
        gate: &str,
        passed: bool,
        message: String,
        details: Vec<String>,
    ) -> Self {
        GateResult {
            scope: scope.to_string(),
            gate: gate.to_string(),
            passed,
            deferred: false,
            message,
            details,
        }
    }

    /// `scope: gate`.
    pub fn title(&self) -> String {
        format!("{}: {}", self.scope, self.gate)
    }
}

/// Which kernel the cases ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRef {
    /// Release.
    pub release: Option<String>,
    /// GNU build-id (hex).
    pub build_id: Option<String>,
    /// Kernel cache key.
    pub kernel_key: Option<String>,
}

/// One case's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// Name.
    pub name: String,
    /// The guest ran it to the end with status 0 and its coverage arrived whole.
    pub passed: bool,
    /// One line: the guest's status, or what went wrong.
    pub message: String,
    /// Wall seconds of its boot.
    pub seconds: f64,
    /// The run directory on the machine that ran it.
    pub run_dir: Option<PathBuf>,
    /// Its store under `stores/`, when its coverage arrived whole.
    pub has_store: bool,
    /// Its gates.
    pub gates: Vec<GateResult>,
    /// The shard that ran it (`K/N`), if partitioned.
    #[serde(default)]
    pub shard: Option<String>,
}

/// `ci.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// Config name.
    pub name: String,
    /// The report filter globs.
    pub filter: Vec<String>,
    /// The config file and the SHA-256 of its bytes.
    pub config: Option<PathBuf>,
    /// SHA-256 of the config.
    pub config_hash: Option<String>,
    /// `K/N` for a shard; None for an unpartitioned run or a merge.
    pub partition: Option<String>,
    /// The shards a merge read (their directories).
    #[serde(default)]
    pub merged_from: Vec<PathBuf>,
    /// The kernel.
    pub kernel: KernelRef,
    /// Cases in config order.
    pub cases: Vec<CaseResult>,
    /// The gates on all cases together (deferred in a shard).
    pub gates: Vec<GateResult>,
}

impl Manifest {
    /// Reads `DIR/ci.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("{}: not a ci manifest ({e})", path.display()))?;
        if m.version != MANIFEST_VERSION {
            return Err(anyhow!(
                "{}: manifest version {} (this xtask reads {MANIFEST_VERSION})",
                path.display(),
                m.version
            ));
        }
        Ok(m)
    }

    /// Every case passed and no gate failed (deferred gates are not failures here).
    pub fn passed(&self) -> bool {
        self.cases
            .iter()
            .all(|c| c.passed && c.gates.iter().all(|g| g.passed || g.deferred))
            && self.gates.iter().all(|g| g.passed || g.deferred)
    }

    /// Every gate, the cases' first.
    pub fn all_gates(&self) -> impl Iterator<Item = &GateResult> {
        self.cases
            .iter()
            .flat_map(|c| c.gates.iter())
            .chain(self.gates.iter())
    }
}
