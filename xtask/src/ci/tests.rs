//! `ci` and `merge` on synthetic runs: a fake boot writes each case's stream (PCs of a small
//! site table), so every check is exact; the real boots are in `tests/tests/ci.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coverage::run::STORE_DIR;
use coverage::store::{collect, KernelIdentity};
use coverage::SiteTable;

use super::config::{Config, Partition};
use super::manifest::{
    Manifest, COVERAGE_LCOV, FUNCTIONS_MD, FUNCTIONS_TSV, JUNIT_XML, SUMMARY_MD,
};
use super::*;
use crate::merge::merge_dirs;
use crate::test_support::{table, workload_stream};

const CONFIG: &str = r#"
name = "unit"

[expect]
functions = ["handle_tx", "drivers/vhost/vhost.c:vhost_poll"]

[[case]]
name = "one"
workloads = ["vhost-net-tx"]
[case.expect]
functions = ["handle_tx"]

[[case]]
name = "two"
workloads = ["vhost-net-rx"]

[[case]]
name = "three"
workloads = ["vhost-vsock"]
"#;

/// The PCs and agent status each case's fake boot streams.
fn case_pcs(name: &str) -> (Vec<u64>, i32) {
    match name {
        "one" => (vec![0x15, 0x25, 0x15], 0),
        "two" => (vec![0x25, 0x25, 0x35], 0),
        "three" => (vec![0x45], 0),
        "bad" => (vec![0x15], 3),
        _ => (vec![], 0),
    }
}

struct Fake {
    root: PathBuf,
    build_id: &'static str,
    boots: Vec<String>,
}

impl Fake {
    fn boot(&mut self, case: &Case) -> Result<Booted> {
        self.boots.push(case.name.clone());
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.join(format!("run-{}-{n}", case.name));
        let (pcs, status) = case_pcs(&case.name);
        let kernel = KernelIdentity {
            build_id: Some(self.build_id.into()),
            kernel_key: Some("k".into()),
            ..KernelIdentity::default()
        };
        collect(
            &workload_stream(&pcs, status)[..],
            &dir.join(STORE_DIR),
            kernel,
        )?;
        Ok(Booted {
            dir,
            exit_code: status,
            status: format!("the agent exited with status {status}"),
            hold: None,
        })
    }
}

fn load(dir: &Path) -> Result<LoadedRun> {
    let t = table();
    let id = t.build_id.as_ref().map(|b| b.to_hex());
    crate::run_kernel::load_with_table(
        dir,
        &LoadOpts::default(),
        PathBuf::from("/nonexistent/vmlinux"),
        t,
        id,
    )
}

fn ci(cfg: &Config, root: &Path, partition: Option<&str>, out: &Path) -> (Manifest, Vec<String>) {
    let mut fake = Fake {
        root: root.to_path_buf(),
        build_id: "ab12",
        boots: Vec::new(),
    };
    let m = run_ci(
        cfg,
        &CiOpts {
            partition: partition.map(|p| p.parse::<Partition>().unwrap()),
            out: out.to_path_buf(),
            patch: None,
        },
        &mut |c, _| fake.boot(c),
        &load,
    )
    .unwrap();
    (m, fake.boots)
}

fn kernel(_: Option<&str>) -> Result<(PathBuf, Arc<SiteTable>, Option<String>)> {
    Ok((PathBuf::from("/nonexistent/vmlinux"), table(), None))
}

fn config(dir: &Path, text: &str) -> Config {
    let path = dir.join("testbed.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

/// Two shards merged give the unpartitioned run's lcov byte for byte; each case runs in
/// exactly one shard; the gates on all cases wait for the merge and pass there.
#[test]
fn shards_merged_equal_one_run() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), CONFIG);
    let (all, boots) = ci(&cfg, t.path(), None, &t.path().join("all"));
    assert_eq!(boots, ["one", "two", "three"]);
    assert!(all.passed(), "{all:?}");
    assert_eq!(all.gates.len(), 1);
    assert!(all.gates[0].passed && !all.gates[0].deferred);
    let (s1, b1) = ci(&cfg, t.path(), Some("1/2"), &t.path().join("s1"));
    let (s2, b2) = ci(&cfg, t.path(), Some("2/2"), &t.path().join("s2"));
    assert_eq!(b1, ["one", "three"]);
    assert_eq!(b2, ["two"]);
    assert_eq!(s2.partition.as_deref(), Some("2/2"));
    assert!(s1.gates.iter().all(|g| g.deferred), "{:?}", s1.gates);
    let junit1 = std::fs::read_to_string(t.path().join("s1").join(JUNIT_XML)).unwrap();
    assert!(junit1.contains("<skipped"), "{junit1}");
    let merged = merge_dirs(
        &[t.path().join("s2"), t.path().join("s1")],
        Some(&cfg),
        &t.path().join("merged"),
        &mut kernel,
    )
    .unwrap();
    assert!(merged.passed(), "{merged:?}");
    let names: Vec<&str> = merged.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["one", "two", "three"], "config order");
    assert!(merged.gates.iter().all(|g| g.passed && !g.deferred));
    let lcov = |d: &str| std::fs::read(t.path().join(d).join(COVERAGE_LCOV)).unwrap();
    assert_eq!(lcov("all"), lcov("merged"));
    let text = String::from_utf8(lcov("merged")).unwrap();
    // Hit counts add up over cases: line 11 was hit once by one and twice by two.
    assert!(text.contains("DA:11,3"), "{text}");
    assert!(text.contains("DA:50,1"), "{text}");
    let md = std::fs::read_to_string(t.path().join("merged").join(SUMMARY_MD)).unwrap();
    assert!(md.contains("merged from 2 shards"), "{md}");
    assert!(md.contains("**passed**: 3 of 3 cases passed"), "{md}");
    // Which case reached which function: the same table from the shards as from one run.
    let file = |d: &str, f: &str| std::fs::read_to_string(t.path().join(d).join(f)).unwrap();
    assert_eq!(file("all", FUNCTIONS_TSV), file("merged", FUNCTIONS_TSV));
    assert_eq!(file("all", FUNCTIONS_MD), file("merged", FUNCTIONS_MD));
    assert_eq!(
        file("merged", FUNCTIONS_TSV),
        "file\tfunction\tfirst_line\tlines_total\tone\ttwo\tthree\n\
         drivers/vhost/net.c\thandle_tx\t10\t3\t2\t2\t0\n\
         drivers/vhost/vhost.c\tvhost_poll\t50\t1\t0\t0\t1\n"
    );
    let fmd = file("merged", FUNCTIONS_MD);
    assert!(fmd.contains("| three | 1 | 1 |"), "{fmd}");
    assert!(fmd.contains("| one | 1 | 0 |"), "{fmd}");
    assert!(
        md.contains(
            "Functions reached per case: one 1 (0 only it), two 1 (0 only it), three 1 (1 only it)"
        ),
        "{md}"
    );
}

/// A failing case and a failing gate show in the manifest, JUnit and Markdown, and fail the
/// exit status; the output directory is replaced only whole.
#[test]
fn failures_are_reported() {
    let t = tempfile::tempdir().unwrap();
    let text = r#"
[expect]
functions = ["no_such_function"]
[[case]]
name = "bad"
workloads = ["vhost-net-tx"]
[case.expect]
functions = ["vhost_poll"]
"#;
    let cfg = config(t.path(), text);
    let (m, _) = ci(&cfg, t.path(), None, &t.path().join("out"));
    assert!(!m.passed());
    assert!(!m.cases[0].passed);
    assert!(m.cases[0].message.contains("status 3"), "{:?}", m.cases[0]);
    assert!(!m.cases[0].gates[0].passed);
    assert_eq!(m.cases[0].gates[0].details, ["function vhost_poll"]);
    assert!(!m.gates[0].passed);
    let junit = std::fs::read_to_string(t.path().join("out").join(JUNIT_XML)).unwrap();
    assert_eq!(junit.matches("<failure").count(), 3, "{junit}");
    assert!(junit.contains("tests=\"1\""), "{junit}");
    let md = std::fs::read_to_string(t.path().join("out").join(SUMMARY_MD)).unwrap();
    assert!(md.contains("**FAILED**"), "{md}");
    assert_eq!(
        format!("{:?}", print_outcome(&m, &t.path().join("out"))),
        format!("{:?}", ExitCode::FAILURE)
    );
    // An earlier output is replaced; a foreign directory is refused before any boot.
    let (_, boots) = ci(&cfg, t.path(), None, &t.path().join("out"));
    assert_eq!(boots.len(), 1);
    std::fs::create_dir_all(t.path().join("foreign")).unwrap();
    std::fs::write(t.path().join("foreign/keep.txt"), b"x").unwrap();
    let mut fake = Fake {
        root: t.path().to_path_buf(),
        build_id: "ab12",
        boots: Vec::new(),
    };
    let e = run_ci(
        &cfg,
        &CiOpts {
            partition: None,
            out: t.path().join("foreign"),
            patch: None,
        },
        &mut |c, _| fake.boot(c),
        &load,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("refusing to replace it"), "{e}");
    assert!(fake.boots.is_empty());
    assert!(t.path().join("foreign/keep.txt").is_file());
}

/// Bad merges fail in one line and write nothing: a missing or repeated shard, no config for
/// the gates left to the merge, another config, stores of another kernel build, a per-case
/// report that is no report.
#[test]
fn bad_merges_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), CONFIG);
    ci(&cfg, t.path(), Some("1/2"), &t.path().join("s1"));
    ci(&cfg, t.path(), Some("2/2"), &t.path().join("s2"));
    let out = t.path().join("m");
    let merge = |inputs: &[&str], cfg: Option<&Config>| {
        let inputs: Vec<PathBuf> = inputs.iter().map(|i| t.path().join(i)).collect();
        format!(
            "{:#}",
            merge_dirs(&inputs, cfg, &out, &mut kernel).expect_err("refused")
        )
    };
    let e = merge(&["s1"], Some(&cfg));
    assert!(e.contains("shard 2/2 missing"), "{e}");
    let e = merge(&["s1", "s1"], Some(&cfg));
    assert!(e.contains("s1 is given twice"), "{e}");
    let e = merge(&["s1", "s2"], None);
    assert!(e.contains("give their config with --config"), "{e}");
    let other = {
        let d = t.path().join("other");
        std::fs::create_dir_all(&d).unwrap();
        config(&d, &format!("{CONFIG}\n# changed\n"))
    };
    let e = merge(&["s1", "s2"], Some(&other));
    assert!(e.contains("is not the config"), "{e}");
    // Shard 2 on another kernel build.
    let mut fake = Fake {
        root: t.path().join("k2"),
        build_id: "cd34",
        boots: Vec::new(),
    };
    run_ci(
        &cfg,
        &CiOpts {
            partition: Some("2/2".parse().unwrap()),
            out: t.path().join("s2k"),
            patch: None,
        },
        &mut |c, _| fake.boot(c),
        &load,
    )
    .unwrap();
    let e = merge(&["s1", "s2k"], Some(&cfg));
    assert!(
        e.contains("build-id ab12") && e.contains("build-id cd34"),
        "{e}"
    );
    let e = merge(&["nope"], Some(&cfg));
    assert!(e.contains("no such directory"), "{e}");
    // A shard's per-case report that is JSON but no report (edited, truncated by a tool).
    std::fs::write(t.path().join("s2/cases/two.json"), b"{\"files\": 3}").unwrap();
    let e = merge(&["s1", "s2"], Some(&cfg));
    assert!(
        e.contains("case two: its report is no coverage report"),
        "{e}"
    );
    assert!(!out.exists(), "a refused merge wrote {}", out.display());
}

/// A baseline is an earlier output: a function it covered and this run does not is a
/// regression (per case, and on all cases); lines count too with `regression = "lines"` on
/// the same kernel build. A golden gate fails on a golden item no run covered.
#[test]
fn regressions_and_goldens() {
    let t = tempfile::tempdir().unwrap();
    let base_cfg = config(t.path(), CONFIG);
    let (base, _) = ci(&base_cfg, t.path(), None, &t.path().join("base"));
    assert!(base.passed());
    // Case "one" now runs with the PCs of "three" (loses handle_tx, gains vhost_poll).
    let golden = t.path().join("one.txt");
    std::fs::write(
        &golden,
        "workload one\nfilter drivers/vhost/*\nfunction drivers/vhost/net.c handle_tx\n\
         line drivers/vhost/net.c 10\n",
    )
    .unwrap();
    let d = t.path().join("later");
    std::fs::create_dir_all(&d).unwrap();
    let text = format!(
        r#"
[expect]
baseline = "{base}"
regression = "lines"
[[case]]
name = "one"
workloads = ["vhost-vsock"]
[case.expect]
baseline = "{base}"
golden = "{golden}"
[[case]]
name = "two"
workloads = ["vhost-net-rx"]
[case.expect]
baseline = "{base}"
"#,
        base = t.path().join("base").display(),
        golden = golden.display()
    );
    let cfg = config(&d, &text);
    let mut fake = Fake {
        root: d.clone(),
        build_id: "ab12",
        boots: Vec::new(),
    };
    let m = run_ci(
        &cfg,
        &CiOpts {
            partition: None,
            out: d.join("out"),
            patch: None,
        },
        &mut |c, _| {
            // "one" streams what "three" streamed.
            let mut c = c.clone();
            if c.name == "one" {
                c.name = "three".into();
            }
            let b = fake.boot(&c)?;
            Ok(b)
        },
        &load,
    )
    .unwrap();
    assert!(!m.passed());
    let gate = |scope: &str, name: &str| {
        m.all_gates()
            .find(|g| g.scope == scope && g.gate.starts_with(name))
            .unwrap_or_else(|| panic!("{scope}: {name}: {:?}", m.all_gates().collect::<Vec<_>>()))
            .clone()
    };
    let one = gate("one", "no regression");
    assert!(!one.passed);
    assert_eq!(one.details, ["function drivers/vhost/net.c handle_tx"]);
    assert!(gate("two", "no regression").passed);
    let golden = gate("one", "golden");
    assert!(!golden.passed);
    assert_eq!(
        golden.details,
        [
            "function drivers/vhost/net.c handle_tx",
            "line drivers/vhost/net.c 10"
        ]
    );
    // On all cases: line 10 (only "one" hit it) is lost; handle_tx is still covered by "two".
    let all = gate("all", "no regression (functions and lines)");
    assert!(!all.passed);
    assert_eq!(all.details, ["line drivers/vhost/net.c 10"]);
    // A baseline of another kernel build compares functions only, and says so.
    let mut other = json_of(&t.path().join("base").join(super::manifest::COVERAGE_JSON));
    other["build_id"] = "ffff".into();
    let other_path = d.join("other.json");
    std::fs::write(&other_path, serde_json::to_vec(&other).unwrap()).unwrap();
    let cfg2 = config(
        &d,
        &format!(
            "[expect]\nbaseline = \"{}\"\nregression = \"lines\"\n[[case]]\nname = \"two\"\nworkloads = [\"vhost-net-rx\"]\n",
            other_path.display()
        ),
    );
    let (m2, _) = ci(&cfg2, &d, None, &d.join("out2"));
    let g = &m2.gates[0];
    assert!(g.message.contains("lines not compared"), "{g:?}");
    // Two alone still covers handle_tx; vhost_poll (base's "three") is lost.
    assert_eq!(g.details, ["function drivers/vhost/vhost.c vhost_poll"]);
}

fn json_of(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// More shards than cases: a shard without cases writes its (empty) output and passes; the
/// merge of all shards still has every case.
#[test]
fn empty_shards() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), CONFIG);
    let dirs: Vec<PathBuf> = (1..=4).map(|k| t.path().join(format!("s{k}"))).collect();
    for (k, d) in dirs.iter().enumerate() {
        let (m, boots) = ci(&cfg, t.path(), Some(&format!("{}/4", k + 1)), d);
        assert_eq!(boots.len(), usize::from(k < 3));
        assert!(m.passed());
    }
    let m = merge_dirs(&dirs, Some(&cfg), &t.path().join("m"), &mut kernel).unwrap();
    assert_eq!(m.cases.len(), 3);
    assert!(m.passed(), "{m:?}");
}
