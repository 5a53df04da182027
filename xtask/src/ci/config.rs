//! `testbed.toml`: the coverage tests a project runs in CI, read once and checked whole before
//! anything is built. Unknown keys and bad values are errors naming the file and line.
//!
//! ```toml
//! name = "vhost"                       # lcov test name, report titles (default: "testbed")
//! filter = ["drivers/vhost/*"]          # files the reports and gates look at
//!
//! [kernel]                              # default: Debian's linux-source-6.12
//! src = "../linux"                      # a kernel tree (relative to this file)
//! fragments = ["extra.config"]
//!
//! [run]
//! runner = "qemu"                       # auto | kvm | qemu | nested
//! timeout = 600                         # seconds the agent may run (per case)
//! boot_timeout = 120
//! mem = 512
//! vcpus = 1
//!
//! [patch]                               # for min_patch_coverage
//! base = "origin/master"                # `git diff BASE` of ...
//! tree = "../linux"                     # ... this tree (default: kernel.src)
//!
//! [expect]                              # gates on all cases together
//! min_patch_coverage = 80.0             # percent of the patch's instrumented lines hit
//! baseline = "baseline-ci"              # no regression against this earlier result
//! regression = "functions"              # functions | lines
//! functions = ["handle_tx_copy"]        # must be covered ("name" or "path:name")
//!
//! [[case]]
//! name = "net-tx"
//! workloads = ["vhost-net-tx"]          # and/or a command:
//! command = ["/mytest", "-v"]
//! include = ["mytest"]                  # HOST[:GUEST], host paths relative to this file
//! cover = "pc"                          # pc | cmp | off
//! area = 262144                         # kcov area words
//! params = { frames = 100 }             # testbed.KEY=VALUE plan words
//! append = ["loglevel=4"]               # kernel command-line words
//! timeout = 300
//!
//! [case.expect]                         # gates on this case alone (same keys as [expect])
//! golden = "goldens/vhost-net-tx.txt"
//! ```

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use coverage::golden::Golden;
use coverage::report::DEFAULT_FILTER;
use kcov_wire::plan::Plan;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::boot::PlanOpts;
use crate::kernel::KernelOpts;
use crate::runner::RunnerKind;

/// The file `ci` reads when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "testbed.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<Spanned<String>>,
    filter: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    kernel: RawKernel,
    #[serde(default)]
    run: RawRun,
    patch: Option<Spanned<RawPatch>>,
    expect: Option<Spanned<RawExpect>>,
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    src: Option<Spanned<String>>,
    #[serde(default)]
    fragments: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    runner: Option<Spanned<String>>,
    timeout: Option<Spanned<u64>>,
    boot_timeout: Option<Spanned<u64>>,
    mem: Option<Spanned<u64>>,
    vcpus: Option<Spanned<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatch {
    base: Spanned<String>,
    tree: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    functions: Vec<Spanned<String>>,
    golden: Option<Spanned<String>>,
    min_patch_coverage: Option<Spanned<f64>>,
    baseline: Option<Spanned<String>>,
    regression: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    #[serde(default)]
    workloads: Vec<Spanned<String>>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    cover: Option<Spanned<String>>,
    area: Option<Spanned<u64>>,
    params: Option<Spanned<toml::Table>>,
    #[serde(default)]
    append: Vec<String>,
    timeout: Option<Spanned<u64>>,
    expect: Option<Spanned<RawExpect>>,
}

/// What counts as a regression against the baseline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Regression {
    /// A function the baseline covered is not covered (stable across kernels and timing).
    #[default]
    Functions,
    /// A function or a line the baseline covered is not covered (lines only on the same kernel).
    Lines,
}

/// The gates of a case, or of all cases together.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Functions that must be covered: `name` or `path:name`.
    pub functions: Vec<String>,
    /// A golden file (functions, and lines on the kernel it was recorded on).
    pub golden: Option<(PathBuf, Golden)>,
    /// Minimum percentage of the patch's instrumented changed lines that must be hit.
    pub min_patch_coverage: Option<f64>,
    /// An earlier result the coverage must not fall below (a `ci` output directory, a JSON
    /// report, a run or a store).
    pub baseline: Option<PathBuf>,
    /// What a regression is.
    pub regression: Regression,
}

impl Expect {
    /// True when there is no gate.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
            && self.golden.is_none()
            && self.min_patch_coverage.is_none()
            && self.baseline.is_none()
    }
}

/// One named case: a boot of the guest with workloads and/or a command.
#[derive(Clone, Debug)]
pub struct Case {
    /// Name (letters, digits, `-`, `_`, `.`: it names files).
    pub name: String,
    /// Line of the case in the config.
    pub line: usize,
    /// The agent's plan (workloads, cover mode, area, parameters).
    pub plan: Plan,
    /// The command the agent runs.
    pub command: Vec<String>,
    /// `HOST[:GUEST]` includes, host paths made absolute.
    pub includes: Vec<String>,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// Seconds the agent may run (default: `[run] timeout`).
    pub timeout: Option<Duration>,
    /// Gates on this case alone.
    pub expect: Expect,
}

/// Where patch coverage is taken from.
#[derive(Clone, Debug)]
pub struct PatchSpec {
    /// A git revision.
    pub base: String,
    /// The git tree.
    pub tree: PathBuf,
}

/// A checked `testbed.toml`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of its bytes (shards of one CI run must have read the same config).
    pub hash: String,
    /// Name (lcov test name).
    pub name: String,
    /// Report filter globs.
    pub filter: Vec<String>,
    /// Kernel to build.
    pub kernel: KernelOpts,
    /// Runner.
    pub runner: RunnerKind,
    /// Start → agent ready.
    pub boot_timeout: Duration,
    /// Agent ready → end (per case, unless the case says otherwise).
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Guest vCPUs.
    pub vcpus: u8,
    /// Patch coverage source, when a gate needs one.
    pub patch: Option<PatchSpec>,
    /// Gates on all cases together.
    pub expect: Expect,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Ctx<'a> {
    path: &'a Path,
    dir: PathBuf,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}:{}: {msg}",
            self.path.display(),
            line_of(self.text, span.start)
        )
    }

    /// `p` relative to the config's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// A path that must exist.
    fn existing(&self, p: &Spanned<String>, what: &str) -> Result<PathBuf> {
        let path = self.resolve(p.get_ref());
        if !path.exists() {
            return Err(self.err(
                p.span(),
                format!("{what} {}: no such file or directory", path.display()),
            ));
        }
        Ok(path)
    }
}

/// Case names name files: letters, digits, `-`, `_`, `.`, not starting with `.` or `-`.
fn valid_case_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "{}: no such config file (write one, see README \"Coverage tests in CI\", or \
                     pass --config FILE)",
                    path.display()
                )
            } else {
                anyhow!("{}: {e}", path.display())
            }
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| anyhow!("{}: not UTF-8 ({e})", path.display()))?;
        let dir = path
            .canonicalize()
            .with_context(|| path.display().to_string())?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut cfg = Config::parse(text, path, &dir)?;
        cfg.hash = hex::encode(Sha256::digest(&bytes));
        Ok(cfg)
    }

    /// Parses and checks `text` (read from `path`, whose directory is `dir`).
    pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Config> {
        let cx = Ctx {
            path,
            dir: dir.to_path_buf(),
            text,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => cx.err(span, e.message()),
            None => anyhow!("{}: {}", path.display(), e.message()),
        })?;
        let name = match &raw.name {
            Some(n) if n.get_ref().trim().is_empty() || n.get_ref().contains('\n') => {
                return Err(cx.err(n.span(), "name: expected a one-line, non-empty name"))
            }
            Some(n) => n.get_ref().clone(),
            None => "testbed".to_string(),
        };
        let filter = match &raw.filter {
            Some(f) if f.get_ref().is_empty() || f.get_ref().iter().any(|g| g.is_empty()) => {
                return Err(cx.err(f.span(), "filter: expected non-empty globs"))
            }
            Some(f) => f.get_ref().clone(),
            None => vec![DEFAULT_FILTER.to_string()],
        };
        let kernel_src = match &raw.kernel.src {
            Some(s) => Some(cx.existing(s, "kernel.src")?),
            None => None,
        };
        let mut fragments = Vec::new();
        for f in &raw.kernel.fragments {
            let p = cx.existing(f, "kernel.fragments:")?;
            crate::kernel::Fragment::load(&p).map_err(|e| cx.err(f.span(), format!("{e:#}")))?;
            fragments.push(p);
        }
        let runner = match &raw.run.runner {
            Some(r) => {
                <RunnerKind as clap::ValueEnum>::from_str(r.get_ref(), false).map_err(|_| {
                    cx.err(
                        r.span(),
                        format!(
                            "run.runner {:?}: expected auto, kvm, qemu or nested",
                            r.get_ref()
                        ),
                    )
                })?
            }
            None => RunnerKind::Auto,
        };
        let secs = |v: &Option<Spanned<u64>>, key: &str, default: u64| -> Result<Duration> {
            match v {
                Some(s) if *s.get_ref() == 0 || *s.get_ref() > 24 * 3600 => Err(cx.err(
                    s.span(),
                    format!("{key}: expected seconds between 1 and 86400"),
                )),
                Some(s) => Ok(Duration::from_secs(*s.get_ref())),
                None => Ok(Duration::from_secs(default)),
            }
        };
        let timeout = secs(&raw.run.timeout, "run.timeout", 600)?;
        let boot_timeout = secs(&raw.run.boot_timeout, "run.boot_timeout", 120)?;
        let mem_mib = match &raw.run.mem {
            Some(m) if !(64..=65536).contains(m.get_ref()) => {
                return Err(cx.err(m.span(), "run.mem: expected MiB between 64 and 65536"))
            }
            Some(m) => *m.get_ref(),
            None => 512,
        };
        let vcpus = match &raw.run.vcpus {
            Some(v) if *v.get_ref() == 0 => {
                return Err(cx.err(v.span(), "run.vcpus: expected at least 1"))
            }
            Some(v) => *v.get_ref(),
            None => 1,
        };
        let patch = match &raw.patch {
            Some(p) => {
                let base = &p.get_ref().base;
                if base.get_ref().is_empty() || base.get_ref().starts_with('-') {
                    return Err(cx.err(base.span(), "patch.base: expected a git revision"));
                }
                let tree = match (&p.get_ref().tree, &kernel_src) {
                    (Some(t), _) => cx.existing(t, "patch.tree")?,
                    (None, Some(src)) => src.clone(),
                    (None, None) => {
                        return Err(cx.err(
                            p.span(),
                            "patch: needs a git tree: set patch.tree or kernel.src",
                        ))
                    }
                };
                Some(PatchSpec {
                    base: base.get_ref().clone(),
                    tree,
                })
            }
            None => None,
        };
        let expect = match &raw.expect {
            Some(e) => expect(&cx, e, patch.is_some(), "expect")?,
            None => Expect::default(),
        };
        let mut cases = Vec::new();
        let mut names = BTreeSet::new();
        for c in &raw.case {
            cases.push(case(&cx, c, patch.is_some(), timeout)?);
            let n = c.get_ref().name.get_ref();
            if !names.insert(n.clone()) {
                return Err(cx.err(
                    c.get_ref().name.span(),
                    format!("case name {n:?} is used twice"),
                ));
            }
        }
        if cases.is_empty() {
            bail!(
                "{}: no [[case]]: a config runs at least one case",
                path.display()
            );
        }
        Ok(Config {
            path: path.to_path_buf(),
            hash: hex::encode(Sha256::digest(text.as_bytes())),
            name,
            filter,
            kernel: KernelOpts {
                src: kernel_src,
                fragments: Vec::new(),
                extra_fragments: fragments,
                jobs: 0,
            },
            runner,
            boot_timeout,
            timeout,
            mem_mib,
            vcpus,
            patch,
            expect,
            cases,
        })
    }
}

fn expect(cx: &Ctx<'_>, e: &Spanned<RawExpect>, has_patch: bool, what: &str) -> Result<Expect> {
    let r = e.get_ref();
    let mut functions = Vec::new();
    for f in &r.functions {
        let s = f.get_ref().trim();
        let name = s.rsplit_once(':').map_or(s, |(_, n)| n);
        if name.is_empty() || s.contains(char::is_whitespace) {
            return Err(cx.err(
                f.span(),
                format!("{what}.functions: {s:?}: expected \"name\" or \"path:name\""),
            ));
        }
        functions.push(s.to_string());
    }
    let golden = match &r.golden {
        Some(g) => {
            let path = cx.existing(g, &format!("{what}.golden"))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|err| cx.err(g.span(), format!("{}: {err}", path.display())))?;
            let golden = Golden::parse(&text)
                .map_err(|err| cx.err(g.span(), format!("{}: {err}", path.display())))?;
            Some((path, golden))
        }
        None => None,
    };
    let min_patch_coverage = match &r.min_patch_coverage {
        Some(m) if !(0.0..=100.0).contains(m.get_ref()) => {
            return Err(cx.err(
                m.span(),
                format!("{what}.min_patch_coverage: expected a percentage from 0 to 100"),
            ))
        }
        Some(m) if !has_patch => {
            return Err(cx.err(
                m.span(),
                format!(
                    "{what}.min_patch_coverage needs a [patch] section (base, tree) to take \
                     the diff from"
                ),
            ))
        }
        Some(m) => Some(*m.get_ref()),
        None => None,
    };
    let baseline = match &r.baseline {
        Some(b) => Some(cx.existing(b, &format!("{what}.baseline"))?),
        None => None,
    };
    let regression = match r
        .regression
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("functions", _)) => Regression::Functions,
        Some(("lines", _)) => Regression::Lines,
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("{what}.regression {other:?}: expected \"functions\" or \"lines\""),
            ))
        }
    };
    if r.regression.is_some() && baseline.is_none() {
        return Err(cx.err(e.span(), format!("{what}.regression needs {what}.baseline")));
    }
    Ok(Expect {
        functions,
        golden,
        min_patch_coverage,
        baseline,
        regression,
    })
}

fn param_value(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(if *b { "on" } else { "off" }.to_string()),
        _ => None,
    }
}

fn case(cx: &Ctx<'_>, c: &Spanned<RawCase>, has_patch: bool, timeout: Duration) -> Result<Case> {
    let r = c.get_ref();
    let name = r.name.get_ref();
    if !valid_case_name(name) {
        return Err(cx.err(
            r.name.span(),
            format!(
                "case name {name:?}: expected letters, digits, '-', '_' or '.' (up to 64, \
                 starting with a letter or digit)"
            ),
        ));
    }
    if r.workloads.is_empty() && r.command.is_empty() {
        return Err(cx.err(
            c.span(),
            format!("case {name}: give workloads, a command, or both"),
        ));
    }
    let mut includes = Vec::new();
    for i in &r.include {
        let spec = i.get_ref();
        let (host, guest) = match spec.split_once(':') {
            Some((h, g)) => (h, Some(g)),
            None => (spec.as_str(), None),
        };
        if host.is_empty() {
            return Err(cx.err(
                i.span(),
                format!("case {name}: include {spec:?}: expected HOST[:GUEST]"),
            ));
        }
        let host = cx.resolve(host);
        let resolved = match guest {
            Some(g) => format!("{}:{g}", host.display()),
            None => host.display().to_string(),
        };
        images::Include::parse(&resolved)
            .map_err(|e| cx.err(i.span(), format!("case {name}: include: {e}")))?;
        includes.push(resolved);
    }
    let mut params = Vec::new();
    for (k, v) in r.params.iter().flat_map(|p| p.get_ref()) {
        let v = param_value(v).ok_or_else(|| {
            cx.err(
                r.params.as_ref().map_or(c.span(), Spanned::span),
                format!("case {name}: params.{k}: expected a string, integer or boolean"),
            )
        })?;
        params.push(format!("{k}={v}"));
    }
    let plan_opts = PlanOpts {
        workloads: r.workloads.iter().map(|w| w.get_ref().clone()).collect(),
        cover: r.cover.as_ref().map(|c| c.get_ref().clone()),
        area: r.area.as_ref().map(|a| *a.get_ref()),
        transport: None,
        params,
    };
    // The agent's own checks, each error at the key that caused it.
    let plan = plan_opts.to_plan().map_err(|e| {
        let msg = e.to_string();
        let span = if msg.contains("workload") {
            r.workloads.first().map(Spanned::span)
        } else if msg.contains("cover") {
            r.cover.as_ref().map(Spanned::span)
        } else if msg.contains("area") {
            r.area.as_ref().map(Spanned::span)
        } else {
            r.params.as_ref().map(Spanned::span)
        };
        cx.err(span.unwrap_or(c.span()), format!("case {name}: {msg}"))
    })?;
    let timeout = match &r.timeout {
        Some(t) if *t.get_ref() == 0 || *t.get_ref() > 24 * 3600 => {
            return Err(cx.err(
                t.span(),
                format!("case {name}: timeout: expected seconds between 1 and 86400"),
            ))
        }
        Some(t) => Some(Duration::from_secs(*t.get_ref())),
        None => Some(timeout),
    };
    let expect = match &r.expect {
        Some(e) => expect(cx, e, has_patch, &format!("case {name}: expect"))?,
        None => Expect::default(),
    };
    Ok(Case {
        name: name.clone(),
        line: line_of(cx.text, r.name.span().start),
        plan,
        command: r.command.clone(),
        includes,
        append: r.append.clone(),
        timeout,
        expect,
    })
}

/// `--partition K/N`: shard K (1-based) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based shard.
    pub k: usize,
    /// Shards.
    pub n: usize,
}

impl std::str::FromStr for Partition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--partition {s:?}: expected K/N with 1 <= K <= N, e.g. 1/2");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: usize = k.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || k == 0 || k > n {
            return Err(format!(
                "--partition {s}: shard {k} is out of range (shards are numbered 1 to {n})"
            ));
        }
        Ok(Partition { k, n })
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl Partition {
    /// Whether the case at `index` (0-based, in config order) belongs to this shard: cases are
    /// dealt round-robin, so every case is in exactly one shard and shards differ by at most
    /// one case; the assignment depends only on the config.
    pub fn owns(&self, index: usize) -> bool {
        index % self.n == self.k - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        Config::parse(text, Path::new("testbed.toml"), dir.path())
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    const MIN: &str = "[[case]]\nname = \"tx\"\nworkloads = [\"vhost-net-tx\"]\n";

    #[test]
    fn minimal_config_has_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.name, "testbed");
        assert_eq!(c.filter, vec![DEFAULT_FILTER.to_string()]);
        assert_eq!(c.runner, RunnerKind::Auto);
        assert_eq!(c.cases.len(), 1);
        assert_eq!(c.cases[0].name, "tx");
        assert_eq!(c.cases[0].line, 2);
        assert_eq!(c.cases[0].plan.workloads.len(), 1);
        assert!(c.expect.is_empty());
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let e = err("name = \"x\"\n[run]\nrunner = \"qemu\"\ntimeuot = 5\n");
        assert!(e.starts_with("testbed.toml:4: "), "{e}");
        assert!(e.contains("unknown field `timeuot`"), "{e}");
        let e = err(&format!("{MIN}wrkloads = [\"a\"]\n"));
        assert!(e.starts_with("testbed.toml:4: "), "{e}");
        let e = err(&format!("{MIN}[case.expect]\ngolden_file = \"x\"\n"));
        assert!(e.starts_with("testbed.toml:5: "), "{e}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let e = err(&format!("[run]\nrunner = \"kvmm\"\n{MIN}"));
        assert!(e.starts_with("testbed.toml:2: run.runner \"kvmm\""), "{e}");
        let e = err(&format!("[run]\ntimeout = 0\n{MIN}"));
        assert!(e.starts_with("testbed.toml:2: run.timeout"), "{e}");
        let e = err("[[case]]\nname = \"a\"\nworkloads = [\"vhost-net-txx\"]\n");
        assert!(e.starts_with("testbed.toml:3: case a: "), "{e}");
        assert!(e.contains("vhost-net-txx"), "{e}");
        let e = err(&format!("{MIN}cover = \"pcs\"\n"));
        assert!(e.starts_with("testbed.toml:4: case tx: "), "{e}");
        let e = err(&format!("{MIN}area = 100\n"));
        assert!(e.starts_with("testbed.toml:4: case tx: "), "{e}");
        let e = err(&format!("{MIN}include = [\"no-such-file\"]\n"));
        assert!(e.starts_with("testbed.toml:4: case tx: include"), "{e}");
        let e = err(&format!("{MIN}[case.expect]\nmin_patch_coverage = 101\n"));
        assert!(e.starts_with("testbed.toml:5: "), "{e}");
        let e = err(&format!("{MIN}[case.expect]\nmin_patch_coverage = 50\n"));
        assert!(e.contains("needs a [patch] section"), "{e}");
        let e = err(&format!("{MIN}[case.expect]\nregression = \"lines\"\n"));
        assert!(e.contains("needs case tx: expect.baseline"), "{e}");
        let e = err(&format!("{MIN}[case.expect]\ngolden = \"nope.txt\"\n"));
        assert!(e.starts_with("testbed.toml:5: "), "{e}");
        let e = err(&format!("[patch]\nbase = \"main\"\n{MIN}"));
        assert!(e.contains("needs a git tree"), "{e}");
        let e = err("name = 3\n");
        assert!(e.starts_with("testbed.toml:1: "), "{e}");
        let e = err("[[case]\nname = \"a\"\n");
        assert!(e.starts_with("testbed.toml:1: "), "{e}");
    }

    #[test]
    fn cases_are_checked() {
        let e = err("[[case]]\nname = \"a\"\n");
        assert!(e.contains("give workloads, a command, or both"), "{e}");
        let e = err("[[case]]\nname = \"../x\"\ncommand = [\"/x\"]\n");
        assert!(e.starts_with("testbed.toml:2: case name"), "{e}");
        let e = err(&format!("{MIN}{MIN}"));
        assert!(
            e.starts_with("testbed.toml:5: case name \"tx\" is used twice"),
            "{e}"
        );
        let e = err("name = \"x\"\n");
        assert!(e.contains("no [[case]]"), "{e}");
    }

    #[test]
    fn params_include_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mytest"), b"#!/bin/sh\n").unwrap();
        let text = "[[case]]\nname = \"c\"\ncommand = [\"/t\"]\ninclude = [\"mytest:/t\"]\n\
                    workloads = [\"vhost-net-tx\"]\nparams = { frames = 7 }\n";
        let c = Config::parse(text, Path::new("t.toml"), dir.path()).unwrap();
        let case = &c.cases[0];
        assert_eq!(
            case.includes,
            vec![format!("{}:/t", dir.path().join("mytest").display())]
        );
        assert_eq!(case.command, vec!["/t".to_string()]);
        assert!(case.plan.words().iter().any(|w| w == "testbed.frames=7"));
    }

    #[test]
    fn partitions_cover_every_case_once() {
        assert!("0/2".parse::<Partition>().is_err());
        assert!("3/2"
            .parse::<Partition>()
            .unwrap_err()
            .contains("out of range"));
        assert!("1/0".parse::<Partition>().is_err());
        assert!("x".parse::<Partition>().is_err());
        for n in 1..=5 {
            for i in 0..11 {
                let owners: Vec<usize> = (1..=n).filter(|&k| Partition { k, n }.owns(i)).collect();
                assert_eq!(owners.len(), 1, "case {i} of {n} shards: {owners:?}");
            }
        }
    }
}
