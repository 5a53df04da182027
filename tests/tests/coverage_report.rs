//! `cargo xtask report` / `diff` / `--patch` on the real vmlinux (TESTBED_VMLINUX) with
//! synthetic runs whose PCs are return addresses of real call sites: exact expected coverage,
//! lcov accepted by genhtml, HTML rendered by headless Chromium, and bad input.

mod coverage_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use coverage::golden::Item;
use coverage::store::{collect, KernelIdentity};
use coverage_support::*;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Hit items in a report JSON.
fn hit_items(v: &serde_json::Value) -> BTreeSet<Item> {
    let mut out = BTreeSet::new();
    for f in v["files"].as_array().unwrap() {
        let file = f["path"].as_str().unwrap().to_string();
        for l in f["lines"].as_array().unwrap() {
            if l["sites_hit"].as_u64().unwrap() > 0 {
                out.insert(Item::Line {
                    file: file.clone(),
                    line: l["line"].as_u64().unwrap() as u32,
                });
            }
        }
        for g in f["functions"].as_array().unwrap() {
            if g["sites_hit"].as_u64().unwrap() > 0 {
                out.insert(Item::Function {
                    file: file.clone(),
                    name: g["name"].as_str().unwrap().into(),
                });
            }
        }
    }
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn coverage_report_formats_on_real_vmlinux() {
    let (Some(t), Some(vm)) = (table(), vmlinux()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut sites = sites_of(t, "vhost_dev_init");
    let tx = sites_of(t, "handle_tx_copy");
    sites.extend(&tx[..tx.len() / 2]);
    write_run(
        &run,
        &stream(
            &[Workload {
                name: "synthetic",
                pcs: pcs_of(t, &sites),
                status: 0,
            }],
            &[],
            true,
        ),
    );
    let (lcov, html, js) = (
        tmp.path().join("out/cov.info"),
        tmp.path().join("html"),
        tmp.path().join("cov.json"),
    );
    let Some((ok, stdout, stderr, _)) = xtask_run(&[
        "report",
        s(&run),
        "--vmlinux",
        s(&vm),
        "--lcov",
        s(&lcov),
        "--html",
        s(&html),
        "--json",
        s(&js),
    ]) else {
        return;
    };
    assert!(ok, "{stdout}{stderr}");
    eprintln!("{stdout}");
    // Exact: the report's hit lines and functions are those of the frames of the hit sites.
    let v = json(&js);
    let expected = expected_items(t, &sites, "drivers/vhost/*");
    assert_eq!(hit_items(&v), expected);
    assert_eq!(v["complete"], true);
    assert_eq!(v["workloads"][0]["name"], "synthetic");
    // vhost_dev_init fully covered, handle_tx_copy partly.
    let vhost_c = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "drivers/vhost/vhost.c")
        .unwrap();
    let init = vhost_c["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "vhost_dev_init")
        .unwrap();
    assert_eq!(init["sites_hit"], init["sites"]);
    assert_eq!(init["lines_hit"], init["lines_total"]);
    assert_eq!(init["count"], 2, "every PC was sent twice");
    // Terminal summary: per file and function.
    assert!(stdout.contains("drivers/vhost/vhost.c"), "{stdout}");
    assert!(stdout.contains("  vhost_dev_init "), "{stdout}");
    assert!(stdout.contains("drivers/vhost/net.c"), "{stdout}");
    // The run's store was collected with the kernel identity.
    let meta: serde_json::Value = json(&run.join("store/meta.json"));
    assert_eq!(meta["kernel"]["build_id"].as_str(), build_id().as_deref());
    assert!(run.join("store/COMPLETE").is_file());

    // lcov: DA lines == the report's lines; genhtml accepts it.
    let info = std::fs::read_to_string(&lcov).unwrap();
    assert!(info.contains("SF:") && info.contains("FN:") && info.contains("end_of_record"));
    let da_hit = info
        .lines()
        .filter(|l| l.starts_with("DA:") && !l.ends_with(",0"))
        .count();
    let lines_hit = expected
        .iter()
        .filter(|i| matches!(i, Item::Line { .. }))
        .count();
    assert_eq!(da_hit, lines_hit);
    if let Some(genhtml) = tool("genhtml") {
        let out_dir = artifacts_dir().join("genhtml");
        let _ = std::fs::remove_dir_all(&out_dir);
        let out = Command::new(genhtml)
            .arg("-q")
            .arg("-o")
            .arg(&out_dir)
            .arg(&lcov)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "genhtml rejected the tracefile:\n{text}"
        );
        assert!(out_dir.join("index.html").is_file());
        let index = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
        assert!(index.contains("vhost"), "genhtml index without our files");
    }

    // HTML: an annotated page per file, with hit and missed lines marked.
    let index = std::fs::read_to_string(html.join("index.html")).unwrap();
    assert!(index.contains("drivers/vhost/vhost.c") && index.contains("drivers/vhost/net.c"));
    let net_page = std::fs::read_dir(html.join("files"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("drivers_vhost_net.c"))
        .unwrap();
    let page = std::fs::read_to_string(&net_page).unwrap();
    assert!(page.contains("class=\"hit\"") && page.contains("class=\"miss\""));
    assert!(page.contains("handle_tx_copy"));
    if let Some(chromium) = tool("chromium") {
        let shot = artifacts_dir().join("coverage-report-index.png");
        let _ = std::fs::remove_file(&shot);
        let profile = tempfile::tempdir().unwrap();
        let flags = |c: &mut Command| {
            c.args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()));
        };
        let url = format!("file://{}", html.join("index.html").display());
        let mut c = Command::new(&chromium);
        flags(&mut c);
        let out = c
            .arg(format!("--screenshot={}", shot.display()))
            .arg("--window-size=1200,900")
            .arg(&url)
            .output()
            .unwrap();
        let png = std::fs::read(&shot).unwrap_or_default();
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG"),
            "no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());
        // The rendered page text names the files (DOM after rendering).
        let mut c = Command::new(&chromium);
        flags(&mut c);
        let out = c.arg("--dump-dom").arg(&url).output().unwrap();
        let dom = String::from_utf8_lossy(&out.stdout);
        for f in ["drivers/vhost/vhost.c", "drivers/vhost/net.c"] {
            assert!(dom.contains(f), "rendered page lacks {f}");
        }
        let mut c = Command::new(&chromium);
        flags(&mut c);
        let shot = artifacts_dir().join("coverage-report-net.c.png");
        c.arg(format!("--screenshot={}", shot.display()))
            .arg("--window-size=1200,2000")
            .arg(format!("file://{}", net_page.display()))
            .output()
            .unwrap();
        assert!(std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 1000);
    }
}

/// `report --functions`: one column per workload of the run, each its own PCs only.
#[test]
fn coverage_functions_table_per_workload() {
    let (Some(t), Some(vm)) = (table(), vmlinux()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let init = sites_of(t, "vhost_dev_init");
    let tx = sites_of(t, "handle_tx_copy");
    let mut a = init.clone();
    a.extend(&tx[..tx.len() / 2]);
    write_run(
        &run,
        &stream(
            &[
                Workload {
                    name: "a",
                    pcs: pcs_of(t, &a),
                    status: 0,
                },
                Workload {
                    name: "b",
                    pcs: pcs_of(t, &tx),
                    status: 0,
                },
            ],
            &[],
            true,
        ),
    );
    let (tsv, md) = (tmp.path().join("f.tsv"), tmp.path().join("f.md"));
    for f in [&tsv, &md] {
        let Some((ok, stdout, stderr, _)) =
            xtask_run(&["report", s(&run), "--vmlinux", s(&vm), "--functions", s(f)])
        else {
            return;
        };
        assert!(ok, "{stdout}{stderr}");
        assert!(
            stdout.contains("functions: ") && stdout.contains("(2 workloads, "),
            "{stdout}"
        );
    }
    let tsv = std::fs::read_to_string(&tsv).unwrap();
    assert_eq!(
        tsv.lines().next(),
        Some("file\tfunction\tfirst_line\tlines_total\ta\tb")
    );
    let row = |f: &str| -> Vec<usize> {
        let l = tsv
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(f))
            .unwrap_or_else(|| panic!("no {f} in {tsv}"));
        l.split('\t').skip(3).map(|n| n.parse().unwrap()).collect()
    };
    // [lines_total, a, b]
    let i = row("vhost_dev_init");
    assert_eq!((i[1], i[2]), (i[0], 0), "{i:?}");
    let x = row("handle_tx_copy");
    assert_eq!(x[2], x[0], "b ran every site: {x:?}");
    assert!(x[1] > 0 && x[1] < x[2], "a ran half the sites: {x:?}");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("| case | functions reached | reached by no other case |"),
        "{md}"
    );
    assert!(
        md.contains(&format!("`vhost_dev_init` | {} | {} | · | 1 |", i[0], i[0])),
        "{md}"
    );
}

#[test]
fn coverage_diff_exact() {
    let (Some(t), Some(vm)) = (table(), vmlinux()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a_sites, b_sites) = {
        let mut a = sites_of(t, "vhost_dev_init");
        a.extend(sites_of(t, "vhost_dev_cleanup"));
        let mut b = sites_of(t, "vhost_dev_cleanup");
        b.extend(sites_of(t, "vhost_vsock_dev_open"));
        (a, b)
    };
    for (name, sites) in [("a", &a_sites), ("b", &b_sites)] {
        write_run(
            &tmp.path().join(name),
            &stream(
                &[Workload {
                    name: "w",
                    pcs: pcs_of(t, sites),
                    status: 0,
                }],
                &[],
                true,
            ),
        );
    }
    let js = tmp.path().join("diff.json");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut args = vec!["diff", s(&a), s(&b), "--json", s(&js)];
    // The vmlinux defaults to the kernel named in run.json; name it only when it is not in the
    // kernel cache (write_run records the cache key).
    let cached = xtask::paths::cache_root().join("kernels");
    if !vm.starts_with(&cached) {
        args.extend(["--vmlinux", s(&vm)]);
    }
    let Some((ok, stdout, stderr, _)) = xtask_run(&args) else {
        return;
    };
    assert!(stdout.contains(&format!("B = {}", b.display())), "{stdout}");
    assert!(ok, "{stdout}{stderr}");
    eprintln!("{stdout}");
    let ea = expected_items(t, &a_sites, "drivers/vhost/*");
    let eb = expected_items(t, &b_sites, "drivers/vhost/*");
    let v = json(&js);
    let lines = |key: &str| -> BTreeSet<Item> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| Item::Line {
                file: l["file"].as_str().unwrap().into(),
                line: l["line"].as_u64().unwrap() as u32,
            })
            .collect()
    };
    let funcs = |key: &str| -> BTreeSet<Item> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| Item::Function {
                file: f["file"].as_str().unwrap().into(),
                name: f["name"].as_str().unwrap().into(),
            })
            .collect()
    };
    let is_line = |i: &&Item| matches!(i, Item::Line { .. });
    let gained: BTreeSet<Item> = eb.difference(&ea).cloned().collect();
    let lost: BTreeSet<Item> = ea.difference(&eb).cloned().collect();
    assert_eq!(
        lines("lines_gained"),
        gained.iter().filter(is_line).cloned().collect()
    );
    assert_eq!(
        lines("lines_lost"),
        lost.iter().filter(is_line).cloned().collect()
    );
    assert_eq!(
        funcs("functions_gained"),
        gained.iter().filter(|i| !is_line(i)).cloned().collect()
    );
    assert_eq!(
        funcs("functions_lost"),
        lost.iter().filter(|i| !is_line(i)).cloned().collect()
    );
    assert!(funcs("functions_gained").contains(&Item::Function {
        file: "drivers/vhost/vsock.c".into(),
        name: "vhost_vsock_dev_open".into()
    }));
    assert!(funcs("functions_lost").contains(&Item::Function {
        file: "drivers/vhost/vhost.c".into(),
        name: "vhost_dev_init".into()
    }));
    assert!(stdout.contains("+ function drivers/vhost/vsock.c vhost_vsock_dev_open"));
}

#[test]
fn coverage_patch_exact() {
    let (Some(t), Some(vm)) = (table(), vmlinux()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hit_sites = sites_of(t, "vhost_dev_init");
    let run = tmp.path().join("run");
    write_run(
        &run,
        &stream(
            &[Workload {
                name: "w",
                pcs: pcs_of(t, &hit_sites),
                status: 0,
            }],
            &[],
            true,
        ),
    );
    let file = "drivers/vhost/vhost.c";
    let inst = instrumented_lines(t, file);
    let hit_set: BTreeSet<usize> = hit_sites.iter().copied().collect();
    let is_hit = |l: &u32| inst[l].iter().any(|i| hit_set.contains(i));
    let hit: Vec<u32> = inst.keys().copied().filter(is_hit).take(3).collect();
    let missed: Vec<u32> = inst
        .keys()
        .copied()
        .filter(|l| !is_hit(l))
        .take(2)
        .collect();
    let not_inst: Vec<u32> = (1..400).filter(|l| !inst.contains_key(l)).take(2).collect();
    assert_eq!((hit.len(), missed.len(), not_inst.len()), (3, 2, 2));
    let mut changed: Vec<u32> = hit
        .iter()
        .chain(&missed)
        .chain(&not_inst)
        .copied()
        .collect();
    changed.sort_unstable();
    // One-line replacement hunks, as `git diff -U0` writes them.
    let mut diff = format!(
        "diff --git a/{file} b/{file}\nindex 1111111..2222222 100644\n--- a/{file}\n+++ b/{file}\n"
    );
    for l in &changed {
        diff.push_str(&format!("@@ -{l} +{l} @@\n-old {l}\n+new {l}\n"));
    }
    // A second file the run does not cover at all, with a pure addition.
    diff.push_str(
        "--- a/drivers/vhost/test.h\n+++ b/drivers/vhost/test.h\n@@ -3,0 +4,2 @@\n+a\n+b\n",
    );
    let patch = tmp.path().join("topic.diff");
    std::fs::write(&patch, &diff).unwrap();
    let js = tmp.path().join("r.json");
    let Some((ok, stdout, stderr, _)) = xtask_run(&[
        "report",
        s(&run),
        "--vmlinux",
        s(&vm),
        "--patch",
        s(&patch),
        "--json",
        s(&js),
    ]) else {
        return;
    };
    assert!(ok, "{stdout}{stderr}");
    eprintln!("{stdout}");
    // A byte that is not UTF-8 in an added line does not refuse the patch: it is named.
    let mut latin1 = diff.clone().into_bytes();
    let at = latin1.windows(3).position(|w| w == b"\n+a").unwrap() + 3;
    latin1.insert(at, 0xe9);
    let bad_line = latin1[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let patch2 = tmp.path().join("latin1.diff");
    std::fs::write(&patch2, &latin1).unwrap();
    let (ok2, stdout2, stderr2, _) = xtask_run(&[
        "report",
        s(&run),
        "--vmlinux",
        s(&vm),
        "--patch",
        s(&patch2),
    ])
    .unwrap();
    assert!(ok2, "{stdout2}{stderr2}");
    assert!(
        stderr2.contains(&format!("line(s) {bad_line} are not UTF-8")),
        "{stderr2}"
    );
    assert!(stdout2.contains("patch coverage:"), "{stdout2}");
    let v = json(&js);
    let p = &v["patch"];
    let nums = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap() as u32)
            .collect()
    };
    let f = p["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == file)
        .unwrap();
    let mut inst_expected: Vec<u32> = hit.iter().chain(&missed).copied().collect();
    inst_expected.sort_unstable();
    assert_eq!(nums(&f["changed"]), changed);
    assert_eq!(nums(&f["instrumented"]), inst_expected);
    assert_eq!(nums(&f["hit"]), hit);
    assert_eq!(nums(&f["missed"]), missed);
    let h = p["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "drivers/vhost/test.h")
        .unwrap();
    assert_eq!(nums(&h["changed"]), [4, 5]);
    assert_eq!(nums(&h["hit"]), Vec::<u32>::new());
    assert_eq!(p["changed"], 9);
    assert_eq!(p["instrumented"], 5);
    assert_eq!(p["hit"], 3);
    assert!(stdout.contains("patch coverage: 9 changed lines, 5 instrumented, 3 hit, 2 missed"));

    // --patch-base REF: the same changes made in a git tree give the same patch coverage,
    // without piping a diff by hand.
    let tree = tmp.path().join("linux");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&tree)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    std::fs::create_dir_all(tree.join("drivers/vhost")).unwrap();
    let last = changed.iter().max().unwrap() + 10;
    let lines = |f: &dyn Fn(u32) -> String| (1..=last).map(|l| f(l) + "\n").collect::<String>();
    std::fs::write(tree.join(file), lines(&|l| format!("old {l}"))).unwrap();
    std::fs::write(tree.join("drivers/vhost/test.h"), "1\n2\n3\n").unwrap();
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "base"]);
    let changed2 = changed.clone();
    std::fs::write(
        tree.join(file),
        lines(&|l| {
            if changed2.contains(&l) {
                format!("new {l}")
            } else {
                format!("old {l}")
            }
        }),
    )
    .unwrap();
    std::fs::write(tree.join("drivers/vhost/test.h"), "1\n2\n3\na\nb\n").unwrap();
    let js2 = tmp.path().join("r2.json");
    let (ok, stdout, stderr, _) = xtask_run(&[
        "report",
        s(&run),
        "--vmlinux",
        s(&vm),
        "--patch-base",
        "HEAD",
        "--tree",
        s(&tree),
        "--json",
        s(&js2),
    ])
    .unwrap();
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(json(&js2)["patch"], v["patch"]);
    // A revision the tree does not have, a directory that is no git tree, both sources at once:
    // one line each, non-zero exit.
    for (args, want) in [
        (
            vec!["--patch-base", "no-such-branch", "--tree", s(&tree)],
            "no such commit",
        ),
        (
            vec!["--patch-base", "HEAD", "--tree", s(&run)],
            "not inside a git work tree",
        ),
        (
            vec!["--patch-base", "HEAD", "--patch", s(&patch)],
            "give one of them",
        ),
    ] {
        let mut all = vec!["report", s(&run), "--vmlinux", s(&vm)];
        all.extend(args);
        let (ok, stdout, stderr, _) = xtask_run(&all).unwrap();
        assert!(!ok, "{all:?}: {stdout}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{all:?}: {stderr}");
        assert!(errors[0].contains(want), "{all:?}: {stderr}");
    }
}

/// One error line containing every word of `want`, a failure status, and the store unchanged.
fn assert_one_error(args: &[&str], want: &[&str], store: &Path) {
    let before = snapshot(store);
    let Some((ok, stdout, stderr, errors)) = xtask_run(args) else {
        return;
    };
    assert!(!ok, "{args:?} succeeded:\n{stdout}{stderr}");
    assert_eq!(errors.len(), 1, "{args:?}:\n{stderr}");
    for w in want {
        assert!(
            errors[0].contains(w),
            "{args:?}: {:?} lacks {w:?}",
            errors[0]
        );
    }
    assert_eq!(snapshot(store), before, "{args:?} modified the store");
    eprintln!("{}", errors[0]);
}

#[test]
fn coverage_bad_inputs() {
    let (Some(t), Some(vm)) = (table(), vmlinux()) else {
        return;
    };
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pcs = pcs_of(t, &sites_of(t, "vhost_dev_init"));
    // One workload "w" that covers vhost_dev_init, as the agent on `release` sends it.
    let one_workload = |release: &str| {
        stream_on(
            release,
            &[Workload {
                name: "w",
                pcs: pcs.clone(),
                status: 0,
            }],
            &[],
            true,
        )
    };
    let good = one_workload(&kernel_release());
    let run = tmp.path().join("run");
    write_run(&run, &good);
    // Collect the store once with a good report.
    let (ok, _, stderr, _) = xtask_run(&["report", s(&run), "--vmlinux", s(&vm)]).unwrap();
    assert!(ok, "{stderr}");
    let store = run.join("store");

    // vmlinux without DWARF.
    let stripped = tmp.path().join("vmlinux.nodebug");
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&vm)
        .arg(&stripped)
        .status()
        .unwrap();
    assert!(st.success());
    assert_one_error(
        &["report", s(&run), "--vmlinux", s(&stripped)],
        &["no DWARF", "vmlinux.nodebug"],
        &store,
    );

    // A vmlinux that does not match the run's build-id.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    collect(
        &good[..],
        &other.join("store"),
        KernelIdentity {
            build_id: Some("00".repeat(20)),
            ..KernelIdentity::default()
        },
    )
    .unwrap();
    assert_one_error(
        &["report", s(&other), "--vmlinux", s(&vm)],
        &["build-id", &"00".repeat(20), "does not match", "--vmlinux"],
        &other.join("store"),
    );

    // A diff that does not parse.
    let bad_diff = tmp.path().join("bad.diff");
    std::fs::write(
        &bad_diff,
        "--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n context\n",
    )
    .unwrap();
    assert_one_error(
        &[
            "report",
            s(&run),
            "--vmlinux",
            s(&vm),
            "--patch",
            s(&bad_diff),
        ],
        &["bad.diff", "hunk ends early"],
        &store,
    );

    // A truncated PC file.
    let pcs_file = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pcs"))
        .unwrap();
    let bytes = std::fs::read(&pcs_file).unwrap();
    std::fs::write(&pcs_file, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_error(
        &["report", s(&run), "--vmlinux", s(&vm)],
        &["bad PC file", "truncated"],
        &store,
    );

    // A stream cut short: the store is incomplete and refused (and kept as it is).
    let cut = tmp.path().join("cut");
    write_run(&cut, &good[..good.len() - 30]);
    let (ok, _, stderr, errors) = xtask_run(&["report", s(&cut), "--vmlinux", s(&vm)]).unwrap();
    assert!(!ok);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("incomplete") && errors[0].contains("truncated"),
        "{stderr}"
    );
    assert!(!cut.join("store/COMPLETE").exists());
    assert_one_error(
        &["report", s(&cut), "--vmlinux", s(&vm)],
        &["incomplete"],
        &cut.join("store"),
    );
    // ... but readable on request.
    let (ok, stdout, stderr, _) =
        xtask_run(&["report", s(&cut), "--vmlinux", s(&vm), "--partial"]).unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("WARNING: partial report"), "{stdout}");

    // The agent ran another kernel than run.json names: said at the top, not silently mapped.
    let elsewhere = tmp.path().join("elsewhere");
    write_run(&elsewhere, &one_workload("0.0.1-elsewhere"));
    let (ok, stdout, stderr, _) = xtask_run(&["report", s(&elsewhere)]).unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("WARNING: the agent ran on kernel 0.0.1-elsewhere, but the run's kernel"),
        "{stdout}"
    );
    let good_run = tmp.path().join("good-release");
    write_run(&good_run, &good);
    let (ok, stdout, stderr, _) = xtask_run(&["report", s(&good_run)]).unwrap();
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("WARNING"), "{stdout}");
}

/// A real run: boot the guest with the vhost-net-tx workload, then report on its run
/// directory with everything defaulted (vmlinux from run.json, filter drivers/vhost/*).
#[test]
fn coverage_report_real_run() {
    if tests::artifact("TESTBED_BZIMAGE").is_none() {
        return;
    }
    let Some((ok, stdout, stderr, _)) =
        xtask_run(&["boot", "--workload", "vhost-net-tx", "--no-echo"])
    else {
        return;
    };
    assert!(ok, "{stdout}{stderr}");
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("raw stream: "))
        .and_then(|p| Path::new(p).parent())
        .unwrap_or_else(|| panic!("no raw stream line in:\n{stdout}"))
        .to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let js = tmp.path().join("r.json");
    let info = tmp.path().join("r.info");
    let (ok, stdout, stderr, _) =
        xtask_run(&["report", s(&run), "--json", s(&js), "--lcov", s(&info)]).unwrap();
    assert!(ok, "{stdout}{stderr}");
    eprintln!("{stdout}");
    let v = json(&js);
    // PCs recorded by hooks that callees reach by tail jumps are credited to the calling line:
    // almost nothing is left unmatched (was 15 of 537).
    let (distinct, unmatched) = (
        v["pcs"]["distinct"].as_u64().unwrap(),
        v["pcs"]["unmatched"].as_u64().unwrap(),
    );
    assert!(
        unmatched * 100 <= distinct,
        "{unmatched} of {distinct} PCs unmatched"
    );
    // lcov: FN is the declaration, FNDA the number of calls (the entry site's count), not the
    // hottest line of the function (handle_tx_copy's loop runs once per frame).
    let tx_copy = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["functions"].as_array().unwrap())
        .find(|g| g["name"] == "handle_tx_copy")
        .unwrap();
    let (decl, first, calls, hottest) = (
        tx_copy["decl_line"].as_u64().unwrap(),
        tx_copy["first_line"].as_u64().unwrap(),
        tx_copy["calls"].as_u64().unwrap(),
        tx_copy["count"].as_u64().unwrap(),
    );
    assert!(
        decl < first && first - decl < 5,
        "declared at {decl}, first site {first}"
    );
    assert!(
        calls >= 1 && calls < hottest,
        "calls {calls}, hottest line {hottest}"
    );
    let lcov = std::fs::read_to_string(&info).unwrap();
    assert!(
        lcov.contains(&format!("FN:{decl},handle_tx_copy\n")),
        "{lcov}"
    );
    assert!(
        lcov.contains(&format!("FNDA:{calls},handle_tx_copy\n")),
        "{lcov}"
    );
    let items = hit_items(&v);
    for (file, name) in [
        ("drivers/vhost/net.c", "handle_tx_copy"),
        ("drivers/vhost/vhost.c", "vhost_get_vq_desc"),
        ("drivers/vhost/vhost.c", "translate_desc"),
    ] {
        assert!(
            items.contains(&Item::Function {
                file: file.into(),
                name: name.into()
            }),
            "{name} not covered by vhost-net-tx"
        );
    }
    assert!(v["kernel"]
        .as_str()
        .unwrap()
        .contains(&build_id().unwrap_or_default()));
}
