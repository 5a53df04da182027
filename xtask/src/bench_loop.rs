//! `cargo xtask bench loop`: the vhost developer's inner loop, end to end, as the developer
//! runs it: an edit inside `handle_tx_copy` of a git kernel tree, then `cargo xtask kernel
//! --kernel-src TREE`, `cargo xtask boot --kernel-src TREE --workload vhost-net-tx` and
//! `cargo xtask report RUN --patch-base HEAD --tree TREE`, each a `cargo xtask` process, timed
//! with its share of the whole and next to a baseline measured in the same run:
//!
//! - kernel: a bare `make` of the same change (the revert, made in the same build directory);
//! - boot: QEMU from its start to the kernel's first line (`earlyprintk`), and the guest's own
//!   time (QEMU start to end, from `run.json`), so the host's overhead shows; the same boot
//!   again with nothing changed (the revert's kernel, reused);
//! - report: plain process starts (`/bin/true`, the xtask binary's `--help`, and
//!   `cargo xtask --help`, the floor of any `cargo xtask` command).
//!
//! It also checks what it relies on: the edited tree gets a new kernel (new cache key, booted by
//! the run), and the reverted tree gets the old one back without running make.
//!
//! The developer tree is a git copy of Debian's linux-source-6.12 under the cache
//! (`bench-loop/linux`), made once; its first kernel build is cold (about 6 minutes on 2 cores).
//! The edit is reverted when the bench ends, on error too, and a run killed before that is
//! undone by the next (the file is checked out from HEAD first). The kernels the edits built
//! are removed from the cache at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::kernel::{self, BuildTimes};
use crate::paths;
use crate::runner::qemu;

/// The file the bench edits, relative to the tree.
pub const EDIT_FILE: &str = "drivers/vhost/net.c";
/// The function the edit goes into.
const EDIT_FUNCTION: &str = "static void handle_tx_copy(";

/// `text` (net.c) with a three-line edit inside `handle_tx_copy`, just before its loop: a
/// branch on a function-local mark, so the new lines are instrumented and run on the first
/// TX work item. `nonce` makes every edit a different kernel.
pub fn edited(text: &str, nonce: u64) -> Result<String> {
    let func = text
        .find(EDIT_FUNCTION)
        .ok_or_else(|| anyhow!("{EDIT_FILE}: no `{EDIT_FUNCTION}`"))?;
    let at = text[func..]
        .find("\n\tdo {\n")
        .map(|i| func + i + 1)
        .ok_or_else(|| anyhow!("{EDIT_FILE}: handle_tx_copy has no `do {{` loop"))?;
    let lines = format!(
        "\tstatic unsigned long bench_loop_mark; /* cargo xtask bench loop */\n\
         \tif (READ_ONCE(bench_loop_mark) != {nonce}UL)\n\
         \t\tWRITE_ONCE(bench_loop_mark, {nonce}UL);\n"
    );
    Ok(format!("{}{lines}{}", &text[..at], &text[at..]))
}

/// The edit in the tree: applied and reverted by hand, reverted on drop whatever happened.
struct Edit {
    file: PathBuf,
    original: String,
}

impl Edit {
    fn new(file: &Path) -> Result<Edit> {
        let original =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        edited(&original, 0)?;
        Ok(Edit {
            file: file.to_path_buf(),
            original,
        })
    }

    fn apply(&self, nonce: u64) -> Result<()> {
        std::fs::write(&self.file, edited(&self.original, nonce)?)
            .with_context(|| format!("editing {}", self.file.display()))
    }

    fn revert(&self) -> Result<()> {
        std::fs::write(&self.file, &self.original)
            .with_context(|| format!("reverting {}", self.file.display()))
    }
}

impl Drop for Edit {
    fn drop(&mut self) {
        if let Err(e) = self.revert() {
            eprintln!("error: bench loop: {e:#}; run `git checkout -- {EDIT_FILE}` in the tree");
        }
    }
}

fn git(tree: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(tree)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {} in {}: {}",
            args.join(" "),
            tree.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The developer tree: a git copy of Debian's source in the cache, made on first use.
/// Debian's top-level `.gitignore` ignores every top-level entry (its packaging repository
/// tracks only `debian/`); the copy drops those two lines, so that, as in a clone of the
/// kernel, a new file under `drivers/` is untracked rather than ignored.
pub fn ensure_tree() -> Result<PathBuf> {
    let root = paths::cache_root().join("bench-loop");
    let tree = root.join("linux");
    if tree.join(".git").is_dir() {
        return Ok(tree);
    }
    let src = kernel::debian_source()?;
    eprintln!(
        "bench loop: making the developer tree {} (a git copy of {}, once)",
        tree.display(),
        src.display()
    );
    let start = Instant::now();
    std::fs::create_dir_all(&root)?;
    let tmp = root.join(format!(".linux-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(&tmp)
        .status()
        .context("running cp")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("copying {} failed (disk full?)", src.display());
    }
    let _ = std::fs::remove_file(tmp.join(".testbed-complete"));
    let ignore = tmp.join(".gitignore");
    if let Ok(text) = std::fs::read_to_string(&ignore) {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| *l != "/*" && *l != "!/debian/")
            .collect();
        std::fs::write(&ignore, kept.join("\n") + "\n")?;
    }
    let made = (|| {
        git(&tmp, &["init", "-q"])?;
        git(&tmp, &["-c", "core.looseCompression=1", "add", "-A"])?;
        git(
            &tmp,
            &["commit", "-q", "-m", "linux-source-6.12 (bench loop base)"],
        )
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &tree).context("moving the developer tree into place")?;
    eprintln!(
        "bench loop: developer tree ready in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(tree)
}

/// What a `cargo xtask` process printed, and how long it took.
struct Ran {
    wall: Duration,
    stdout: String,
}

/// Runs `cargo xtask ARGS` as the developer does; `times` receives the kernel build's
/// [`BuildTimes`]. Fails with the tail of its stderr.
fn xtask(args: &[&str], times: &Path) -> Result<Ran> {
    let mut cmd = paths::cargo();
    cmd.arg("xtask")
        .args(args)
        .env(kernel::TIMES_VAR, times)
        .stdin(Stdio::null());
    timed(&mut cmd, &format!("cargo xtask {}", args.join(" ")))
}

fn timed(cmd: &mut Command, what: &str) -> Result<Ran> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let wall = start.elapsed();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(Ran {
        wall,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

fn read_times(path: &Path) -> Result<BuildTimes> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_slice(&data)?)
}

/// The run directory a `cargo xtask boot` printed (its `raw stream:` line).
fn run_dir_of(stdout: &str) -> Result<PathBuf> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("raw stream: "))
        .and_then(|p| Path::new(p.trim()).parent())
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cargo xtask boot printed no `raw stream:` line"))
}

/// QEMU (the qemu runner's machine) from its start to the kernel's first console line, with
/// `earlyprintk` so that the kernel prints from its first steps.
fn qemu_first_line(kernel_image: &Path, initrd: &Path) -> Result<Duration> {
    let m = qemu::Machine {
        kernel: kernel_image,
        initrd,
        cmdline: "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 reboot=t",
        mem_mib: 512,
        cpus: 1,
        cpu: "max",
        vsock: None,
    };
    let mut cmd = qemu::command(&m);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut found = None;
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        if String::from_utf8_lossy(&line).contains("Linux version") {
            found = Some(start.elapsed());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    found.ok_or_else(|| anyhow!("qemu ended before the kernel's first line"))
}

/// One pass of the loop and its baselines.
#[derive(Default)]
struct Sample {
    kernel: Duration,
    kernel_times: BuildTimes,
    boot: Duration,
    boot_guest: Duration,
    boot_ready: Duration,
    report_cold: Duration,
    report_warm: Duration,
    bare_make: Duration,
    kernel_unchanged: Duration,
    kernel_unchanged_times: BuildTimes,
    boot_unchanged: Duration,
    boot_unchanged_guest: Duration,
    boot_unchanged_ready: Duration,
    qemu_first_line: Duration,
    bin_true: Duration,
    xtask_help: Duration,
    cargo_xtask_help: Duration,
}

impl Sample {
    fn end_to_end(&self) -> Duration {
        self.kernel + self.boot + self.report_cold
    }
}

fn guest_times(run_dir: &Path, key: &str) -> Result<(Duration, Duration)> {
    let rec = coverage::run::RunRecord::read(run_dir)
        .ok_or_else(|| anyhow!("{}: no run.json", run_dir.display()))?;
    if rec.kernel_key.as_deref() != Some(key) {
        bail!(
            "stale kernel: the run booted kernel {:?}, the build gave {key}",
            rec.kernel_key
        );
    }
    let ms = |v: Option<u128>| Duration::from_millis(v.unwrap_or(0) as u64);
    Ok((ms(rec.total_ms), ms(rec.ready_after_ms)))
}

/// `cargo xtask bench loop`: `runs` passes of the loop (each a different edit), medians.
pub fn run(runs: usize) -> Result<()> {
    let tree = ensure_tree()?;
    let t = tree
        .to_str()
        .ok_or_else(|| anyhow!("{}: not UTF-8", tree.display()))?
        .to_string();
    // A bench killed before its revert left its edit behind.
    git(&tree, &["checkout", "-q", "--", EDIT_FILE])?;
    let work = paths::workspace_root()
        .join("target/testbed/bench")
        .join(format!("loop-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let times = work.join("kernel-times.json");
    let result = passes(&tree, &t, &times, runs);
    let _ = std::fs::remove_dir_all(&work);
    let (samples, base) = result?;
    print(&samples, &base, &t);
    Ok(())
}

fn passes(tree: &Path, t: &str, times: &Path, runs: usize) -> Result<(Vec<Sample>, BuildTimes)> {
    eprintln!("bench loop: warming up (the tree's first kernel build is cold, ~6 min on 2 cores)");
    xtask(&["--help"], times)?;
    xtask(&["kernel", "--kernel-src", t], times)?;
    let base = read_times(times)?;
    // The agent and the initramfs, as a developer's earlier boots left them.
    xtask(&["boot", "--kernel-src", t, "--no-echo"], times)?;
    let build_dir = kernel::build_dir(Some(tree))?;
    let edit = Edit::new(&tree.join(EDIT_FILE))?;
    let nonce0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let boot_args = [
        "boot",
        "--kernel-src",
        t,
        "--workload",
        "vhost-net-tx",
        "--no-echo",
    ];
    let mut samples = Vec::new();
    let mut built_keys = Vec::new();
    let mut run_dirs = Vec::new();
    let result = (|| -> Result<()> {
        for i in 0..runs.max(1) {
            eprintln!("bench loop: pass {} of {runs}", i + 1);
            let mut s = Sample::default();
            edit.apply(nonce0 + i as u64)?;
            s.kernel = xtask(&["kernel", "--kernel-src", t], times)?.wall;
            s.kernel_times = read_times(times)?;
            built_keys.push(s.kernel_times.key.clone());
            if s.kernel_times.cached || s.kernel_times.key == base.key {
                bail!(
                    "stale kernel: the edited tree got cache key {} (the unedited tree's is {})",
                    s.kernel_times.key,
                    base.key
                );
            }
            let boot = xtask(&boot_args, times)?;
            s.boot = boot.wall;
            let run_dir = run_dir_of(&boot.stdout)?;
            run_dirs.push(run_dir.clone());
            (s.boot_guest, s.boot_ready) = guest_times(&run_dir, &s.kernel_times.key)?;
            let rd = run_dir.to_str().unwrap_or_default();
            let report_args = ["report", rd, "--patch-base", "HEAD", "--tree", t];
            let report = xtask(&report_args, times)?;
            s.report_cold = report.wall;
            if !report.stdout.contains(EDIT_FILE) {
                bail!(
                    "the patch report does not name {EDIT_FILE}:\n{}",
                    report.stdout
                );
            }
            // The same run again, no patch (no git in the tree): the site table is cached.
            s.report_warm = xtask(&["report", rd], times)?.wall;

            // Baselines. The revert is the same change backwards: make alone rebuilds it.
            edit.revert()?;
            let mut make = Command::new("make");
            make.arg("-C")
                .arg(tree)
                .arg(format!("O={}", build_dir.display()))
                .arg(format!(
                    "-j{}",
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                ))
                .args(kernel::MAKE_TARGETS)
                .stdin(Stdio::null());
            s.bare_make = timed(&mut make, "make (baseline)")?.wall;
            s.kernel_unchanged = xtask(&["kernel", "--kernel-src", t], times)?.wall;
            s.kernel_unchanged_times = read_times(times)?;
            if !s.kernel_unchanged_times.cached || s.kernel_unchanged_times.key != base.key {
                bail!(
                    "the reverted tree did not get its old kernel back (key {}, cached {}; expected {})",
                    s.kernel_unchanged_times.key,
                    s.kernel_unchanged_times.cached,
                    base.key
                );
            }
            let boot0 = xtask(&boot_args, times)?;
            s.boot_unchanged = boot0.wall;
            let run0 = run_dir_of(&boot0.stdout)?;
            run_dirs.push(run0.clone());
            (s.boot_unchanged_guest, s.boot_unchanged_ready) = guest_times(&run0, &base.key)?;
            let initrd = coverage::run::RunRecord::read(&run0)
                .and_then(|r| r.initramfs)
                .map(|i| i.path)
                .ok_or_else(|| anyhow!("the unchanged boot names no initramfs"))?;
            let bz = paths::cache_root()
                .join("kernels")
                .join(&base.key)
                .join("bzImage");
            s.qemu_first_line = qemu_first_line(&bz, &initrd)?;
            s.bin_true = timed(&mut Command::new("/bin/true"), "/bin/true")?.wall;
            let bin = paths::workspace_root().join("target/debug/xtask");
            s.xtask_help = timed(Command::new(&bin).arg("--help"), "xtask --help")?.wall;
            s.cargo_xtask_help = xtask(&["--help"], times)?.wall;
            eprintln!(
                "bench loop: pass {}: kernel {:.2} s (bare make {:.2} s), boot {:.2} s, report {:.2} s (warm {:.3} s)",
                i + 1,
                s.kernel.as_secs_f64(),
                s.bare_make.as_secs_f64(),
                s.boot.as_secs_f64(),
                s.report_cold.as_secs_f64(),
                s.report_warm.as_secs_f64()
            );
            samples.push(s);
        }
        Ok(())
    })();
    drop(edit);
    // The edits' kernels and runs are the bench's own: leave the cache as it was.
    for key in built_keys.iter().filter(|k| **k != base.key) {
        let _ = std::fs::remove_dir_all(paths::cache_root().join("kernels").join(key));
    }
    for dir in &run_dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    result?;
    Ok((samples, base))
}

fn median_by(samples: &[Sample], f: impl Fn(&Sample) -> Duration) -> Duration {
    let mut v: Vec<Duration> = samples.iter().map(f).collect();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn median_f(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn print(samples: &[Sample], base: &BuildTimes, tree: &str) {
    let m = |f: fn(&Sample) -> Duration| median_by(samples, f).as_secs_f64();
    let mf = |f: fn(&Sample) -> f64| median_f(samples, f);
    let total = m(Sample::end_to_end);
    let share = |x: f64| 100.0 * x / total.max(1e-9);
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    println!(
        "bench loop ({} pass(es), medians; {EDIT_FILE}: a 3-line edit inside handle_tx_copy; tree {tree}):",
        samples.len()
    );
    let (kernel, make) = (m(|s| s.kernel), m(|s| s.bare_make));
    println!(
        "  kernel  cargo xtask kernel --kernel-src: {kernel:.2} s ({:.0}%), {:.2}x a bare make of the same change ({make:.2} s)",
        share(kernel),
        ratio(kernel, make)
    );
    println!(
        "          identity {:.2} s, configure {:.2} s (reused in {} of {}), make {:.2} s, publish {:.2} s",
        mf(|s| s.kernel_times.identity_s),
        mf(|s| s.kernel_times.configure_s),
        samples
            .iter()
            .filter(|s| s.kernel_times.config_reused)
            .count(),
        samples.len(),
        mf(|s| s.kernel_times.make_s),
        mf(|s| s.kernel_times.publish_s),
    );
    let (boot, guest, ready, first) = (
        m(|s| s.boot),
        m(|s| s.boot_guest),
        m(|s| s.boot_ready),
        m(|s| s.qemu_first_line),
    );
    println!(
        "  boot    cargo xtask boot --workload vhost-net-tx: {boot:.2} s ({:.0}%): guest {guest:.2} s (agent ready at {ready:.2} s, {:.2}x QEMU to the kernel's first line, {first:.2} s), host {:.2} s",
        share(boot),
        ratio(ready, first),
        boot - guest
    );
    let (cold, warm) = (m(|s| s.report_cold), m(|s| s.report_warm));
    let (btrue, help, chelp) = (
        m(|s| s.bin_true),
        m(|s| s.xtask_help),
        m(|s| s.cargo_xtask_help),
    );
    println!(
        "  report  cargo xtask report --patch-base (new kernel): {cold:.2} s ({:.0}%)",
        share(cold)
    );
    println!(
        "  edit to patch report: {total:.2} s (goal 15 s; {:.2}x the bare make alone)",
        ratio(total, make)
    );
    println!(
        "  cargo xtask report RUN, warm: {warm:.3} s, {:.2}x `cargo xtask --help` ({chelp:.3} s); xtask --help {help:.3} s, /bin/true {:.4} s",
        ratio(warm, chelp),
        btrue
    );
    let (k0, b0, g0, r0) = (
        m(|s| s.kernel_unchanged),
        m(|s| s.boot_unchanged),
        m(|s| s.boot_unchanged_guest),
        m(|s| s.boot_unchanged_ready),
    );
    println!(
        "  unchanged tree (the revert): cargo xtask kernel {k0:.2} s (the old kernel {}, no make), {:.2}x `cargo xtask --help`",
        base.key,
        ratio(k0, chelp)
    );
    println!(
        "  unchanged tree: cargo xtask boot {b0:.2} s: guest {g0:.2} s (agent ready at {r0:.2} s), host {:.2} s",
        b0 - g0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_C: &str = "static void handle_rx(void)\n{\n\tdo {\n\t} while (0);\n}\n\n\
        static void handle_tx_copy(struct vhost_net *net, struct socket *sock)\n{\n\
        \tint sent_pkts = 0;\n\n\tdo {\n\t\tsent_pkts++;\n\t} while (0);\n}\n";

    #[test]
    fn the_edit_goes_inside_handle_tx_copy_and_differs_per_nonce() {
        let a = edited(NET_C, 1).unwrap();
        let b = edited(NET_C, 2).unwrap();
        assert_ne!(a, b);
        let func = a.find(EDIT_FUNCTION).unwrap();
        let mark = a.find("bench_loop_mark").unwrap();
        assert!(mark > func, "the edit is inside handle_tx_copy:\n{a}");
        assert!(
            a[mark..].find("\tdo {").is_some(),
            "before its loop, after the declarations:\n{a}"
        );
        assert_eq!(a.lines().count(), NET_C.lines().count() + 3);
        assert!(edited("int x;\n", 1).is_err());
    }

    #[test]
    fn the_run_directory_comes_from_the_raw_stream_line() {
        let out = "report...\nraw stream: /t/runs/run-1/coverage.kcw\n";
        assert_eq!(run_dir_of(out).unwrap(), Path::new("/t/runs/run-1"));
        assert!(run_dir_of("nothing").is_err());
    }
}
