//! `cargo xtask ci` and `cargo xtask merge` on real boots (qemu runner): two shards of a
//! two-case config, each with its own gates; the merge evaluates the gates on all cases,
//! among them a patch-coverage gate on a git tree whose diff touches one line the cases hit
//! and one they miss. Bad input fails in one line and writes nothing. (The byte-for-byte
//! equality of merged shards and one unpartitioned run is checked on synthetic runs in
//! `xtask/src/ci/tests.rs`, where hit counts do not vary with timing.)

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::{artifact, text, xtask};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// An instrumented line of `file` in `report` (a coverage JSON) that was hit (`hit`) or not,
/// inside function `func` when given.
fn pick_line(report: &serde_json::Value, file: &str, func: Option<&str>, hit: bool) -> u64 {
    let f = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == file)
        .unwrap_or_else(|| panic!("{file} not in the report"));
    let range = func.map(|name| {
        let g = f["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {file}"));
        (
            g["first_line"].as_u64().unwrap(),
            g["last_line"].as_u64().unwrap(),
        )
    });
    f["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| (l["sites_hit"].as_u64().unwrap() > 0) == hit)
        .map(|l| l["line"].as_u64().unwrap())
        .find(|n| range.is_none_or(|(a, b)| (a..=b).contains(n)))
        .unwrap_or_else(|| {
            panic!(
                "no {} line in {file} {func:?}",
                if hit { "hit" } else { "missed" }
            )
        })
}

#[test]
fn ci_shards_merge_with_gates() {
    if artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let src = xtask::report::default_source_root()
        .expect("the Debian kernel source (built with the kernel)");
    let t = tempfile::tempdir().unwrap();
    // A stand-in for the developer's kernel tree: a git repository with net.c at its base.
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("drivers/vhost")).unwrap();
    std::fs::copy(
        src.join("drivers/vhost/net.c"),
        tree.join("drivers/vhost/net.c"),
    )
    .unwrap();
    git(&tree, &["init", "-q"]);
    git(&tree, &["add", "."]);
    git(&tree, &["commit", "-q", "-m", "base"]);
    let cfg = t.path().join("testbed.toml");
    std::fs::write(
        &cfg,
        r#"name = "e2e"
[run]
runner = "qemu"
timeout = 120
[patch]
base = "HEAD"
tree = "tree"
[expect]
min_patch_coverage = 100
functions = ["handle_tx_copy", "vhost_vsock_handle_tx_kick"]

[[case]]
name = "tx"
workloads = ["vhost-net-tx"]
[case.expect]
functions = ["handle_tx_copy"]

[[case]]
name = "vsock"
workloads = ["vhost-vsock"]
[case.expect]
functions = ["drivers/vhost/vsock.c:vhost_vsock_handle_tx_kick"]
"#,
    )
    .unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let dir = |n: &str| t.path().join(n);
    let shard = |k: &str, out: &PathBuf| {
        let o = xtask(&[
            "ci",
            "--config",
            &p(&cfg),
            "--partition",
            k,
            "--out",
            &p(out),
        ])
        .unwrap();
        let s = text(&o);
        assert!(o.status.success(), "shard {k}: {s}");
        assert!(s.contains("2 left to `cargo xtask merge`"), "{s}");
        s
    };
    let s1 = shard("1/2", &dir("s1"));
    assert!(s1.contains("case tx: passed"), "{s1}");
    let s2 = shard("2/2", &dir("s2"));
    assert!(s2.contains("case vsock: passed"), "{s2}");
    let m1 = json(&dir("s1").join("ci.json"));
    assert_eq!(m1["cases"][0]["gates"][0]["passed"], true, "{m1}");
    for f in [
        "junit.xml",
        "coverage.lcov",
        "coverage.json",
        "summary.md",
        "stores/tx/meta.json",
    ] {
        assert!(dir("s1").join(f).is_file(), "s1/{f}");
    }

    // The patch: one line handle_tx_copy ran, one instrumented line no case ran.
    let report = json(&dir("s1").join("coverage.json"));
    let hit = pick_line(&report, "drivers/vhost/net.c", Some("handle_tx_copy"), true);
    let missed = pick_line(&report, "drivers/vhost/net.c", None, false);
    let path = tree.join("drivers/vhost/net.c");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for n in [hit, missed] {
        lines[n as usize - 1].push_str(" /* changed */");
    }
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let out = dir("merged");
    let o = xtask(&[
        "merge",
        &p(&dir("s1")),
        &p(&dir("s2")),
        "--config",
        &p(&cfg),
        "--out",
        &p(&out),
    ])
    .unwrap();
    let s = text(&o);
    assert_eq!(o.status.code(), Some(1), "the patch gate fails: {s}");
    assert!(s.contains("gate all: patch coverage >= 100% FAILED"), "{s}");
    assert!(s.contains(&format!("drivers/vhost/net.c:{missed}")), "{s}");
    let m = json(&out.join("ci.json"));
    let gates = m["gates"].as_array().unwrap();
    let patch = gates
        .iter()
        .find(|g| g["gate"] == "patch coverage >= 100%")
        .unwrap();
    assert_eq!(patch["passed"], false);
    assert_eq!(
        patch["message"],
        "1 of 2 instrumented changed lines hit (50.0%), 2 changed lines"
    );
    let functions = gates.iter().find(|g| g["gate"] == "functions").unwrap();
    assert_eq!(functions["passed"], true, "{functions}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains(&format!("`drivers/vhost/net.c:{missed}`")),
        "{md}"
    );
    assert!(
        !md.contains(&format!("`drivers/vhost/net.c:{hit}`")),
        "{md}"
    );
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(
        junit.contains("name=\"all: patch coverage &gt;= 100%\""),
        "{junit}"
    );
    assert_eq!(junit.matches("<failure").count(), 1, "{junit}");
    // Every case's store came along, and the merged lcov covers both cases' files.
    let lcov = std::fs::read_to_string(out.join("coverage.lcov")).unwrap();
    assert!(lcov.contains("drivers/vhost/net.c") && lcov.contains("drivers/vhost/vsock.c"));
    // Which case reached which function: the TX case alone reaches handle_tx_copy, the vsock
    // case alone the vsock TX kick; functions both reach (vhost.c) count for both.
    let tsv = std::fs::read_to_string(out.join("functions.tsv")).unwrap();
    assert_eq!(
        tsv.lines().next(),
        Some("file\tfunction\tfirst_line\tlines_total\ttx\tvsock")
    );
    let row = |f: &str| -> Vec<u64> {
        let l = tsv
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(f))
            .unwrap_or_else(|| panic!("no {f} in {tsv}"));
        l.split('\t').skip(4).map(|n| n.parse().unwrap()).collect()
    };
    let tx = row("handle_tx_copy");
    assert!(tx[0] > 0 && tx[1] == 0, "{tx:?}");
    let vs = row("vhost_vsock_handle_tx_kick");
    assert!(vs[0] == 0 && vs[1] > 0, "{vs:?}");
    let both = row("vhost_dev_set_owner");
    assert!(both[0] > 0 && both[1] > 0, "{both:?}");
    assert!(md.contains("Functions reached per case: tx "), "{md}");

    // Bad input: one line, non-zero, nothing written.
    let bad = dir("bad");
    let one_error = |args: &[&str], want: &str| {
        let o = xtask(args).unwrap();
        let s = text(&o);
        assert!(!o.status.success(), "{args:?}: {s}");
        let errors: Vec<&str> = s.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {s}");
        assert!(errors[0].contains(want), "{args:?}: {s}");
        assert!(!bad.exists(), "{args:?} wrote {}", bad.display());
    };
    one_error(
        &[
            "merge",
            &p(&dir("s1")),
            "--config",
            &p(&cfg),
            "--out",
            &p(&bad),
        ],
        "shard 2/2 missing",
    );
    one_error(
        &[
            "ci",
            "--config",
            &p(&cfg),
            "--partition",
            "3/2",
            "--out",
            &p(&bad),
        ],
        "out of range",
    );
    let typo = t.path().join("typo.toml");
    std::fs::write(
        &typo,
        "[[case]]\nname = \"a\"\nworklods = [\"vhost-net-tx\"]\n",
    )
    .unwrap();
    one_error(
        &["ci", "--config", &p(&typo), "--out", &p(&bad)],
        "typo.toml:3: unknown field `worklods`",
    );
    let base = t.path().join("base.toml");
    std::fs::write(
        &base,
        "[patch]\nbase = \"no-such-ref\"\ntree = \"tree\"\n[[case]]\nname = \"a\"\nworkloads = [\"vhost-net-tx\"]\n",
    )
    .unwrap();
    one_error(
        &["ci", "--config", &p(&base), "--out", &p(&bad)],
        "no-such-ref",
    );
}

/// The repository's own `testbed.toml` is valid (its goldens exist), and the CI workflows in
/// `docs/ci/` call only `ci`/`merge` flags that exist.
#[test]
fn shipped_config_and_workflows_are_valid() {
    use clap::Args;
    let root = xtask::paths::workspace_root();
    let cfg = xtask::ci::config::Config::load(&root.join("testbed.toml")).unwrap();
    let names: Vec<&str> = cfg.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, xtask::golden::WORKLOADS);
    assert!(cfg.cases.iter().all(|c| c.expect.golden.is_some()));
    let commands = [
        (
            "ci",
            xtask::ci::CiArgs::augment_args(clap::Command::new("ci")),
        ),
        (
            "merge",
            xtask::merge::MergeArgs::augment_args(clap::Command::new("merge")),
        ),
    ];
    for file in ["github-actions.yml", "gitlab-ci.yml"] {
        let text = std::fs::read_to_string(root.join("docs/ci").join(file)).unwrap();
        let mut seen = 0;
        for call in text.split("cargo xtask ").skip(1) {
            let words: Vec<&str> = call
                .split(['\n', '|', ')'])
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            let (_, cmd) = commands
                .iter()
                .find(|(n, _)| *n == words[0])
                .unwrap_or_else(|| panic!("{file}: cargo xtask {}", words[0]));
            for flag in words.iter().filter_map(|w| w.strip_prefix("--")) {
                assert!(
                    cmd.get_arguments().any(|a| a.get_long() == Some(flag)),
                    "{file}: `cargo xtask {}` has no --{flag}",
                    words[0]
                );
            }
            seen += 1;
        }
        assert!(seen >= 3, "{file}: {seen} xtask calls");
    }
}
