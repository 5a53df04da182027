//! Run directories and the initramfs cache through `cargo xtask boot` and `cargo xtask runs`:
//! runs share one content-addressed initramfs and hold no copy; prune keeps the newest runs and
//! any run in use, and removes the cache entries no remaining run booted. Every test works in
//! a runs directory and initramfs cache of its own (`KCOV_TESTBED_RUNS`,
//! `KCOV_TESTBED_INITRAMFS_CACHE`); the kernel cache is the shared one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tests::{assert_exit_with, error_lines, text};

const DAY: Duration = Duration::from_secs(86_400);

/// A runs directory and an initramfs cache for one test.
struct Scratch {
    _tmp: tempfile::TempDir,
    runs: PathBuf,
    cache: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, cache) = (tmp.path().join("runs"), tmp.path().join("initramfs"));
        Scratch {
            _tmp: tmp,
            runs,
            cache,
        }
    }

    fn command(&self, args: &[&str]) -> Option<Command> {
        let mut cmd = tests::xtask_command(args)?;
        cmd.env("KCOV_TESTBED_RUNS", &self.runs)
            .env("KCOV_TESTBED_INITRAMFS_CACHE", &self.cache);
        Some(cmd)
    }

    fn xtask(&self, args: &[&str]) -> Option<Output> {
        Some(self.command(args)?.output().expect("running xtask"))
    }

    /// Run directory names, sorted.
    fn runs(&self) -> Vec<String> {
        names(&self.runs)
    }

    /// Cache entry names (`*.cpio`), sorted.
    fn entries(&self) -> Vec<String> {
        names(&self.cache)
            .into_iter()
            .filter(|n| n.ends_with(".cpio"))
            .collect()
    }

    /// A finished run that started `age` ago and booted the initramfs `sha256`.
    fn fake_run(&self, age: Duration, sha256: &str) -> String {
        let ms = (SystemTime::now() - age)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let name = format!("run-{ms}-7-0");
        let dir = self.runs.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let rec = serde_json::json!({
            "runner": "qemu",
            "cmdline": "console=ttyS0 testbed.workloads=vhost-vsock",
            "command": [],
            "initramfs": {"sha256": sha256, "bytes": 4096,
                          "path": self.cache.join(format!("{sha256}.cpio"))},
            "exit_code": 0,
        });
        std::fs::write(dir.join("run.json"), rec.to_string()).unwrap();
        std::fs::write(dir.join("serial.log"), vec![b'.'; 4096]).unwrap();
        name
    }

    /// A cache entry for `sha256` last written `age` ago.
    fn fake_entry(&self, sha256: &str, age: Duration) -> String {
        std::fs::create_dir_all(&self.cache).unwrap();
        let name = format!("{sha256}.cpio");
        let path = self.cache.join(&name);
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        set_mtime(&path, SystemTime::now() - age);
        name
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn set_mtime(path: &Path, t: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn run_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap()
}

/// Every file under `dir` whose name ends in `.cpio`.
fn cpio_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            found.extend(cpio_files(&p));
        } else if p.to_string_lossy().ends_with(".cpio") {
            found.push(p);
        }
    }
    found
}

fn digest(c: char) -> String {
    c.to_string().repeat(64)
}

#[test]
fn same_inputs_boot_one_cached_initramfs_and_runs_hold_no_copy() {
    let s = Scratch::new();
    for _ in 0..2 {
        let Some(out) = s.xtask(&["boot", "--runner", "qemu", "--no-echo"]) else {
            return;
        };
        assert_exit_with(&out, 0, &["agent finished successfully"]);
    }
    let runs = s.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let entries = s.entries();
    assert_eq!(
        entries.len(),
        1,
        "one cache entry for the same inputs: {entries:?}"
    );
    let entry = s.cache.join(&entries[0]);
    let bytes = std::fs::read(&entry).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(
        entries[0],
        format!("{sha}.cpio"),
        "entries are named by their digest"
    );
    for run in &runs {
        let dir = s.runs.join(run);
        let rec = run_json(&dir);
        assert_eq!(rec["initramfs"]["sha256"], sha.as_str(), "{rec}");
        assert_eq!(rec["initramfs"]["bytes"], bytes.len() as u64, "{rec}");
        assert_eq!(rec["initramfs"]["path"], entry.to_str().unwrap(), "{rec}");
        assert_eq!(cpio_files(&dir), Vec::<PathBuf>::new(), "a copy in {run}");
    }
}

#[test]
fn prune_leaves_a_booting_run_and_its_initramfs_alone() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let s = Scratch::new();
    let tmp = tempfile::tempdir().unwrap();
    let spin = tests::spin_program(tmp.path());
    let include = format!("{}:/bin/spin", spin.display());
    let Some(mut cmd) = s.command(&[
        "boot",
        "--runner",
        "qemu",
        "--include",
        &include,
        "--",
        "/bin/spin",
    ]) else {
        return;
    };
    let mut boot = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = BufReader::new(boot.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("testbed-agent: running /bin/spin"));
    assert!(running, "the guest never ran the command");
    let live = s.runs();
    assert_eq!(live.len(), 1, "{live:?}");
    let live_dir = s.runs.join(&live[0]);
    let entry = s.entries();
    assert_eq!(entry.len(), 1, "{entry:?}");
    // Old enough for prune: only the run naming it keeps it.
    set_mtime(&s.cache.join(&entry[0]), SystemTime::now() - DAY);
    let finished = s.fake_run(DAY * 3, &digest('a'));

    let out = s.xtask(&["runs", "prune", "--keep", "0"]).unwrap();
    let all = assert_exit_with(&out, 0, &[&format!("kept {}: in use", live_dir.display())]);
    assert!(
        all.contains(&format!("removed {}", s.runs.join(&finished).display())),
        "{all}"
    );
    assert_eq!(s.runs(), live, "{all}");
    assert_eq!(s.entries(), entry, "{all}");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(boot.id() as libc::pid_t, libc::SIGKILL) };
    let _ = boot.wait();
    tests::assert_no_qemu_left(&live_dir);
    // The killed boot holds nothing: its run and, then unnamed, its initramfs go.
    let out = s.xtask(&["runs", "prune", "--keep", "0"]).unwrap();
    let all = assert_exit_with(
        &out,
        0,
        &[
            &format!("removed {}", live_dir.display()),
            &format!("removed initramfs cache entry {}", entry[0]),
        ],
    );
    assert!(s.runs().is_empty() && s.entries().is_empty(), "{all}");
}

#[test]
fn prune_keeps_the_newest_runs_and_the_initramfs_they_name() {
    let s = Scratch::new();
    let (newest, second) = (
        s.fake_run(DAY, &digest('a')),
        s.fake_run(DAY * 2, &digest('a')),
    );
    let third = s.fake_run(DAY * 3, &digest('b'));
    let oldest = s.fake_run(DAY * 30, &digest('c'));
    let named = s.fake_entry(&digest('a'), DAY);
    let of_third = s.fake_entry(&digest('b'), DAY);
    let orphan = s.fake_entry(&digest('d'), DAY * 5);
    let fresh = s.fake_entry(&digest('e'), Duration::from_secs(10));
    let (all_runs, all_entries) = (s.runs(), s.entries());

    let Some(out) = s.xtask(&["runs", "list"]) else {
        return;
    };
    let listed = assert_exit_with(&out, 0, &["4 runs, ", "initramfs cache: 4 entries"]);
    for run in &all_runs {
        assert!(listed.contains(run.as_str()), "{listed}");
    }
    assert!(listed.contains("vhost-vsock"), "{listed}");

    let out = s
        .xtask(&["runs", "prune", "--keep", "2", "--dry-run"])
        .unwrap();
    assert_exit_with(&out, 0, &["would remove", "would free"]);
    assert_eq!((s.runs(), s.entries()), (all_runs.clone(), all_entries));

    let out = s.xtask(&["runs", "prune", "--keep", "2"]).unwrap();
    let all = assert_exit_with(
        &out,
        0,
        &[
            &format!("removed {}", s.runs.join(&third).display()),
            &format!("removed {}", s.runs.join(&oldest).display()),
            &format!("removed initramfs cache entry {of_third}"),
            &format!("removed initramfs cache entry {orphan}"),
            "runs: removed 2 (",
            "freed ",
        ],
    );
    let mut kept = vec![newest, second];
    kept.sort();
    assert_eq!(s.runs(), kept, "{all}");
    let mut left = vec![named, fresh];
    left.sort();
    assert_eq!(s.entries(), left, "{all}");

    // --older-than alone: the two runs left are a day and two days old.
    let out = s.xtask(&["runs", "prune", "--older-than", "36h"]).unwrap();
    assert_exit_with(&out, 0, &["runs: removed 1 ("]);
    assert_eq!(s.runs().len(), 1);
}

#[test]
fn bad_prune_arguments_are_refused_in_one_line() {
    let s = Scratch::new();
    let run = s.fake_run(DAY * 30, &digest('a'));
    let cases: &[(&[&str], &str)] = &[
        (&["--keep", "abc"], "invalid value 'abc' for '--keep <N>'"),
        (&["--keep", "-3"], "invalid value '-3' for '--keep <N>'"),
        (
            &["--older-than", "-1d"],
            "invalid value '-1d' for '--older-than <DURATION>'",
        ),
        (
            &["--older-than", "3x"],
            "invalid value '3x' for '--older-than <DURATION>': expected a number and a unit",
        ),
        (&["--older-than", "10"], "expected a number and a unit"),
        (
            &[],
            "say which runs to remove with --keep N and/or --older-than",
        ),
    ];
    for (extra, want) in cases {
        let args: Vec<&str> = ["runs", "prune"].iter().chain(*extra).copied().collect();
        let Some(out) = s.xtask(&args) else { return };
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        let errors = error_lines(&out);
        assert_eq!(errors.len(), 1, "{args:?}: {}", text(&out));
        assert!(errors[0].contains(want), "{args:?}: {errors:?}");
        assert_eq!(
            s.runs(),
            std::slice::from_ref(&run),
            "{args:?} removed something"
        );
    }
}
