//! `cargo xtask merge`: the outputs of several `ci` shards (or run and store directories) →
//! one output directory with the coverage of every case together, and the gates on all cases
//! that the shards left to it. Stores merge only when they ran one kernel build; shards must
//! have read the same config, and every shard of a partitioned run must be there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use coverage::run::{store_dir, STREAM_FILE};
use coverage::store::{Store, META_FILE};
use coverage::{PathGlob, SiteTable};

use crate::ci::config::{Config, Partition};
use crate::ci::manifest::{
    CaseResult, Manifest, CASES_DIR, MANIFEST, MANIFEST_VERSION, STORES_DIR,
};
use crate::ci::outputs::{self, Outputs};
use crate::ci::{self, KernelTable};

/// `cargo xtask merge` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct MergeArgs {
    /// `cargo xtask ci` output directories (one per shard), run directories or store directories.
    #[arg(required = true, value_name = "DIR")]
    pub inputs: Vec<PathBuf>,
    /// The config whose gates on all cases the merge evaluates (default: testbed.toml here,
    /// when it exists); it must be the one the shards ran.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output directory (default: target/testbed/ci/merged).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The kernel's vmlinux (default: the cached kernel the stores name).
    #[arg(long, value_name = "FILE")]
    pub vmlinux: Option<PathBuf>,
}

/// One case found in the inputs.
struct FoundCase {
    result: CaseResult,
    input: PathBuf,
    store: Option<PathBuf>,
    json: Option<PathBuf>,
}

/// The site table of the stores' kernel: (vmlinux, table, build-id).
pub type KernelFn<'a> =
    dyn FnMut(Option<&str>) -> Result<(PathBuf, Arc<SiteTable>, Option<String>)> + 'a;

fn read_input(dir: &Path, manifests: &mut Vec<(PathBuf, Manifest)>) -> Result<Vec<FoundCase>> {
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    if dir.join(MANIFEST).is_file() {
        let m = Manifest::read(dir)?;
        let mut found = Vec::new();
        for c in &m.cases {
            let store = dir.join(STORES_DIR).join(&c.name);
            if c.has_store && !store.join(META_FILE).is_file() {
                bail!(
                    "{}: case {} has no store under {STORES_DIR}/ (an incomplete artifact?)",
                    dir.display(),
                    c.name
                );
            }
            let json = dir.join(CASES_DIR).join(format!("{}.json", c.name));
            found.push(FoundCase {
                result: c.clone(),
                input: dir.to_path_buf(),
                store: c.has_store.then_some(store),
                json: json.is_file().then_some(json),
            });
        }
        manifests.push((dir.to_path_buf(), m));
        return Ok(found);
    }
    // A run directory (collected here if needed) or a store directory.
    if !store_dir(dir).join(META_FILE).is_file() && !dir.join(STREAM_FILE).is_file() {
        bail!(
            "{}: neither a `cargo xtask ci` output ({MANIFEST}) nor a run or store directory",
            dir.display()
        );
    }
    let store = crate::run_kernel::open_or_collect(dir, false)?;
    let failures = coverage::store::run_failures(&store.meta, false);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(vec![FoundCase {
        result: CaseResult {
            name,
            passed: failures.is_empty(),
            message: if failures.is_empty() {
                format!("coverage of {}", dir.display())
            } else {
                failures.join("; ")
            },
            seconds: 0.0,
            run_dir: Some(dir.to_path_buf()),
            has_store: true,
            gates: Vec::new(),
            shard: None,
        },
        input: dir.to_path_buf(),
        store: Some(store.dir.clone()),
        json: None,
    }])
}

/// Shards of a partitioned run: one N, each K once, none missing.
fn check_shards(manifests: &[(PathBuf, Manifest)]) -> Result<()> {
    let mut seen: BTreeMap<usize, &Path> = BTreeMap::new();
    let mut n_of: Option<(usize, &Path)> = None;
    for (dir, m) in manifests {
        let Some(p) = &m.partition else { continue };
        let p: Partition = p
            .parse()
            .map_err(|e| anyhow!("{}: {e}", dir.join(MANIFEST).display()))?;
        match n_of {
            Some((n, first)) if n != p.n => bail!(
                "{} is shard {p} but {} is one of {n} shards: not one partitioned run",
                dir.display(),
                first.display()
            ),
            _ => n_of = Some((p.n, dir)),
        }
        if let Some(other) = seen.insert(p.k, dir) {
            bail!(
                "{} and {} are both shard {p}: give each shard once",
                other.display(),
                dir.display()
            );
        }
    }
    if let Some((n, _)) = n_of {
        let missing: Vec<String> = (1..=n)
            .filter(|k| !seen.contains_key(k))
            .map(|k| format!("{k}/{n}"))
            .collect();
        if !missing.is_empty() {
            bail!(
                "shard {} missing: a merge of part of the shards would pass gates on part of \
                 the cases (did a shard's job fail before uploading its output?)",
                missing.join(", ")
            );
        }
    }
    Ok(())
}

/// Merges `inputs` (checked) into `out`; `cfg` gives the gates on all cases. Returns the merged
/// manifest.
pub fn merge_dirs(
    inputs: &[PathBuf],
    cfg: Option<&Config>,
    out: &Path,
    kernel: &mut KernelFn<'_>,
) -> Result<Manifest> {
    outputs::check_out_dir(out)?;
    let out_abs = out
        .canonicalize()
        .or_else(|_| std::path::absolute(out))
        .unwrap_or_else(|_| out.to_path_buf());
    let mut given = BTreeSet::new();
    for i in inputs {
        let abs = i.canonicalize().unwrap_or_else(|_| i.clone());
        if abs == out_abs || i == out {
            bail!("--out {} is one of the inputs", out.display());
        }
        if !given.insert(abs) {
            bail!("{} is given twice", i.display());
        }
    }
    let mut manifests = Vec::new();
    let mut found: Vec<FoundCase> = Vec::new();
    for i in inputs {
        found.extend(read_input(i, &mut manifests)?);
    }
    let mut names: BTreeMap<&str, &Path> = BTreeMap::new();
    for f in &found {
        if let Some(other) = names.insert(&f.result.name, &f.input) {
            bail!(
                "case {} is in {} and in {}: give each shard once (or rename the run \
                 directories)",
                f.result.name,
                other.display(),
                f.input.display()
            );
        }
    }
    check_shards(&manifests)?;
    // One config for all: the shards' and the one given here.
    let mut hashes = manifests
        .iter()
        .filter_map(|(d, m)| Some((d, m.config_hash.as_ref()?)));
    if let Some((d0, h0)) = hashes.next() {
        for (d, h) in hashes {
            if h != h0 {
                bail!(
                    "{} and {} ran different configs (SHA-256 {} and {}): merge the shards of \
                     one CI run",
                    d0.display(),
                    d.display(),
                    &h0[..12.min(h0.len())],
                    &h[..12.min(h.len())]
                );
            }
        }
        if let Some(c) = cfg {
            if &c.hash != h0 {
                bail!(
                    "{} is not the config {} ran (SHA-256 {} and {}); give the same file",
                    c.path.display(),
                    d0.display(),
                    &c.hash[..12],
                    &h0[..12.min(h0.len())]
                );
            }
        }
    }
    let left: BTreeSet<String> = manifests
        .iter()
        .flat_map(|(_, m)| {
            m.gates
                .iter()
                .filter(|g| g.deferred)
                .map(|g| g.gate.clone())
        })
        .collect();
    if cfg.is_none() && !left.is_empty() {
        bail!(
            "the shards left gates to the merge ({}): give their config with --config",
            left.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(c) = cfg {
        // Cases in config order; those the config does not name (run directories) after.
        let pos = |n: &str| {
            c.cases
                .iter()
                .position(|k| k.name == n)
                .unwrap_or(usize::MAX)
        };
        found.sort_by_key(|f| pos(&f.result.name));
    }
    let stores: Vec<Store> = found
        .iter()
        .filter_map(|f| f.store.as_ref())
        .map(|d| Store::open(d).map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    let store_refs: Vec<&Store> = stores.iter().collect();
    let name = cfg
        .map(|c| c.name.clone())
        .or_else(|| manifests.first().map(|(_, m)| m.name.clone()))
        .unwrap_or_else(|| "testbed".into());
    let filter: Vec<String> = cfg
        .map(|c| c.filter.clone())
        .or_else(|| manifests.first().map(|(_, m)| m.filter.clone()))
        .unwrap_or_else(|| vec![coverage::report::DEFAULT_FILTER.to_string()]);
    let globs: Vec<PathGlob> = filter.iter().map(|g| PathGlob::new(g)).collect();
    let patch = match cfg {
        Some(c) => ci::config_patch(c)?,
        None => None,
    };
    let (union, kref) = if store_refs.is_empty() {
        (None, Default::default())
    } else {
        coverage::merge::common_build_id(&store_refs)?;
        let key = store_refs[0].meta.kernel.kernel_key.clone();
        let (vmlinux, table, _) = kernel(key.as_deref())?;
        let u = ci::union(
            &name,
            &globs,
            &store_refs,
            &KernelTable {
                table: &table,
                vmlinux: &vmlinux,
            },
            patch.as_ref(),
        )?;
        let k = ci::kernel_ref_of(&store_refs);
        (Some(u), k)
    };
    let gates = match (cfg, &union) {
        (Some(c), Some(u)) => ci::union_gates(c, u, &kref),
        (Some(c), None) => crate::ci::gates::evaluate(&c.expect, &ci::no_coverage("all")),
        (None, _) => Vec::new(),
    };
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        name,
        filter,
        config: cfg
            .map(|c| c.path.clone())
            .or_else(|| manifests.first().and_then(|(_, m)| m.config.clone())),
        config_hash: cfg
            .map(|c| c.hash.clone())
            .or_else(|| manifests.first().and_then(|(_, m)| m.config_hash.clone())),
        partition: None,
        merged_from: inputs.to_vec(),
        kernel: kref,
        cases: found.iter().map(|f| f.result.clone()).collect(),
        gates,
    };
    let mut case_json = Vec::new();
    for f in &found {
        if let Some(p) = &f.json {
            let bytes = std::fs::read(p).with_context(|| p.display().to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not JSON", p.display()))?;
            case_json.push((f.result.name.clone(), v));
        }
    }
    let out_files = Outputs {
        manifest,
        lcov: union.as_ref().map(|u| u.lcov.clone()),
        json: union.as_ref().map(|u| u.json.clone()),
        patch: union.as_ref().and_then(|u| u.patch.clone()),
        report: union.map(|u| u.report),
        case_json,
        stores: found
            .iter()
            .filter_map(|f| Some((f.result.name.clone(), f.store.clone()?)))
            .collect(),
    };
    outputs::write_dir(out, &out_files)?;
    Ok(out_files.manifest)
}

/// `cargo xtask merge`.
pub fn merge_cmd(a: &MergeArgs) -> Result<ExitCode> {
    let cfg_path = ci::find_config(a.config.as_deref());
    let cfg = if a.config.is_some() || cfg_path.is_file() {
        Some(Config::load(&cfg_path)?)
    } else {
        None
    };
    let out = a.out.clone().unwrap_or_else(|| {
        crate::paths::workspace_root()
            .join("target/testbed/ci")
            .join("merged")
    });
    let vmlinux = a.vmlinux.clone();
    let m = merge_dirs(&a.inputs, cfg.as_ref(), &out, &mut |key| {
        ci::kernel_table(vmlinux.as_deref(), key)
    })?;
    Ok(ci::print_outcome(&m, &out))
}
