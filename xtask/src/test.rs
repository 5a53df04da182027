//! `cargo xtask test`: format check, clippy, then the whole test suite with
//! the guest kernel and agent built, so no test that needs them is skipped.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::kernel::{self, KernelOpts};
use crate::{agent, paths};

fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("test: {name}");
    let status = cmd.status().with_context(|| format!("running {name}"))?;
    if !status.success() {
        bail!("{name} failed");
    }
    Ok(())
}

fn has_nextest() -> bool {
    paths::cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub struct TestOpts {
    pub lint: bool,
    /// Extra arguments for the test runner (e.g. a filter, `--partition count:1/2`).
    pub args: Vec<String>,
}

pub fn run(opts: &TestOpts) -> Result<()> {
    if opts.lint {
        step(
            "cargo fmt --check",
            paths::cargo().args(["fmt", "--all", "--", "--check"]),
        )?;
        step(
            "cargo clippy -D warnings",
            paths::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    eprintln!("test: preparing the guest kernel and agent");
    let kernel = kernel::build(&KernelOpts::default())?;
    let agent = agent::build()?;
    let vhost_selftest = agent::build_vhost_selftest()?;
    // The nested runner's L1 kernel, static vmm and L1 init, built here rather than inside
    // the first nested test (a cold L1 kernel takes minutes).
    crate::boot::nested_parts(&KernelOpts::default())?;
    // The fuzz kernel (KASAN, lockdep, lkdtm) of the fuzz tests' KASAN replay and
    // `fuzz --self-test` (about 12 minutes cold on 2 cores; cached by content like the others).
    let fuzz_kernel =
        kernel::build(&crate::fuzz::FuzzOpts::new(kcov_wire::program::Target::VhostNet).kernel())?;
    crate::deps::ensure_packages(
        crate::deps::REPORT_CHECK_PACKAGES,
        "the coverage report tests (genhtml, headless chromium, addr2line)",
    )?;
    let xtask_bin = std::env::current_exe().context("locating the xtask binary")?;
    let skip_dir = paths::workspace_root()
        .join("target/testbed")
        .join(format!("skips-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&skip_dir);
    std::fs::create_dir_all(&skip_dir)
        .with_context(|| format!("creating {}", skip_dir.display()))?;
    let mut cmd = paths::cargo();
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(&opts.args)
        .env("TESTBED_REQUIRE_KERNEL", "1")
        .env("TESTBED_BZIMAGE", &kernel.bzimage)
        .env("TESTBED_VMLINUX", &kernel.vmlinux)
        .env("TESTBED_KCONFIG", &kernel.config)
        .env("TESTBED_AGENT", &agent)
        .env("TESTBED_VHOST_SELFTEST", &vhost_selftest)
        .env("TESTBED_XTASK_BIN", &xtask_bin)
        .env("TESTBED_FUZZ_BZIMAGE", &fuzz_kernel.bzimage)
        // A real kernel for the vmm's hardware-KVM boot test (it skips, recorded, without).
        .env("VMM_TEST_KERNEL", &kernel.bzimage)
        .env(test_skip::DIR_VAR, &skip_dir);
    eprintln!("test: test suite");
    let (ok, counts) = run_counting(&mut cmd)?;
    let skips = read_skips(&skip_dir)?;
    let _ = std::fs::remove_dir_all(&skip_dir);
    let verdict = report_skips(&skips, counts);
    if !ok {
        bail!("test suite failed");
    }
    verdict
}

/// Passed and failed test counts as the runner reported them (skipped tests among "passed").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    /// nextest's summary was seen: it alone counts (the libtest lines inside the output it
    /// shows of failed tests would count them twice).
    nextest: bool,
}

impl Counts {
    /// Takes the counts a runner line reports: nextest's `Summary [..] N tests run: P passed
    /// (..), F failed, ..` (the whole run), or, without it, the sum of libtest's `test
    /// result: ok. P passed; F failed; ..` lines.
    pub fn add_line(&mut self, line: &str) {
        // "1 test run:" for one test, "N tests run:" otherwise.
        let nextest = line.contains("Summary [")
            && (line.contains("tests run:") || line.contains(" test run:"));
        let libtest = line.trim_start().starts_with("test result:");
        if !(nextest || libtest && !self.nextest) {
            return;
        }
        if nextest && !self.nextest {
            *self = Counts {
                nextest: true,
                ..Counts::default()
            };
        }
        let number_before = |word: &str| -> u64 {
            let words: Vec<&str> = line
                .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
                .filter(|w| !w.is_empty())
                .collect();
            words
                .windows(2)
                .find(|w| w[1] == word)
                .and_then(|w| w[0].parse().ok())
                .unwrap_or(0)
        };
        self.passed += number_before("passed");
        self.failed += number_before("failed");
    }
}

/// Runs `cmd`, copying its output through and counting the tests its summary lines report.
fn run_counting(cmd: &mut Command) -> Result<(bool, Counts)> {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running the test suite")?;
    let counts = Arc::new(Mutex::new(Counts::default()));
    let pipe = |r: Box<dyn std::io::Read + Send>, to_stderr: bool| {
        let counts = Arc::clone(&counts);
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if let Ok(mut c) = counts.lock() {
                    c.add_line(&line);
                }
                if to_stderr {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                } else {
                    let _ = writeln!(std::io::stdout().lock(), "{line}");
                }
            }
        })
    };
    let out = pipe(Box::new(child.stdout.take().context("stdout")?), false);
    let err = pipe(Box::new(child.stderr.take().context("stderr")?), true);
    let status = child.wait()?;
    let _ = out.join();
    let _ = err.join();
    let c = counts.lock().map(|c| *c).unwrap_or_default();
    Ok((status.success(), c))
}

/// One recorded skip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub test: String,
    pub capability: String,
    pub reason: String,
}

impl Skip {
    /// A skip of part of a test (the rest ran and passed): listed, not counted.
    pub fn partial(&self) -> bool {
        self.test.ends_with("(partly)")
    }
}

fn read_skips(dir: &std::path::Path) -> Result<Vec<Skip>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let text = std::fs::read_to_string(e?.path())?;
        for line in text.lines() {
            if let Some((t, c, r)) = test_skip::parse_record(line) {
                out.push(Skip {
                    test: t.into(),
                    capability: c.into(),
                    reason: r.into(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.test.cmp(&b.test));
    Ok(out)
}

/// Whether this machine has `capability` (a [`test_skip`] name); None for an unknown one.
pub fn machine_has(capability: &str) -> Option<bool> {
    let exists = |p: &str| std::path::Path::new(p).exists();
    let openable = |p: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .is_ok()
    };
    let kvm = || openable("/dev/kvm");
    let vhost_net = || openable("/dev/vhost-net");
    Some(match capability {
        test_skip::KVM => kvm(),
        test_skip::HW_KVM => {
            kvm()
                && !vmm::host::is_pvm_host(&vmm::host::HostPaths::default())
                && vmm::host::cpuinfo_has_hw_virt(
                    &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
                )
        }
        test_skip::ROOT_TUN => {
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            root && exists("/dev/net/tun")
        }
        test_skip::HOST_VHOST_NET => vhost_net(),
        test_skip::NO_HOST_VHOST_NET => !vhost_net(),
        test_skip::HOST_KCOV => exists("/sys/kernel/debug/kcov"),
        test_skip::SETPRIV => Command::new("setpriv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        // `cargo xtask test` built and installed them before running the suite.
        test_skip::ARTIFACTS => true,
        test_skip::OPT_IN => false,
        _ => return None,
    })
}

/// Prints the skips (test, what it needs, why) and the closing count line, skips counted as
/// skipped; fails when a test skipped for a capability this machine has (or an unknown one).
fn report_skips(skips: &[Skip], counts: Counts) -> Result<()> {
    let whole: Vec<&Skip> = skips.iter().filter(|s| !s.partial()).collect();
    let mut wrong = Vec::new();
    if !skips.is_empty() {
        eprintln!(
            "test: skipped (a test marked \"(partly)\" ran its other checks and counts as \
             passed; the others count as skipped):"
        );
        for s in skips {
            eprintln!("  {}: needs {}: {}", s.test, s.capability, s.reason);
            match machine_has(&s.capability) {
                Some(false) => {}
                Some(true) => wrong.push(format!(
                    "{} skipped for {}, which this machine has",
                    s.test, s.capability
                )),
                None => wrong.push(format!(
                    "{} skipped for an unknown capability {:?}",
                    s.test, s.capability
                )),
            }
        }
    }
    let skipped = whole.len() as u64;
    // The plain closing line CI reads: skips are not passes.
    eprintln!(
        "test: {} passed, {} failed, {skipped} skipped",
        counts.passed.saturating_sub(skipped),
        counts.failed
    );
    if !wrong.is_empty() {
        bail!(
            "{} skip(s) this machine should have run:\n  {}",
            wrong.len(),
            wrong.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_nextest_and_libtest_summaries() {
        // nextest shows failed tests' libtest lines around its summary: only the summary counts.
        let mut c = Counts::default();
        c.add_line("    test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured");
        c.add_line(
            "     Summary [ 210.170s] 314 tests run: 312 passed (2 slow), 2 failed, 0 skipped",
        );
        c.add_line("    test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured");
        assert_eq!((c.passed, c.failed), (312, 2));
        // One test: nextest says "1 test run", and a slow pass is still a pass.
        let mut c = Counts::default();
        c.add_line("     Summary [ 196.060s] 1 test run: 1 passed (1 slow), 10 skipped");
        assert_eq!((c.passed, c.failed), (1, 0));
        let mut c = Counts::default();
        c.add_line("test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out");
        c.add_line("test result: FAILED. 3 passed; 1 failed; 0 ignored");
        c.add_line("note: 4 passed elsewhere");
        assert_eq!((c.passed, c.failed), (8, 1));
    }

    #[test]
    fn skips_of_missing_capabilities_pass_others_fail() {
        let skip = |t: &str, c: &str| Skip {
            test: t.into(),
            capability: c.into(),
            reason: "r".into(),
        };
        // Opt-in is never required; artifacts always are under cargo xtask test.
        assert!(report_skips(&[skip("a", test_skip::OPT_IN)], Counts::default()).is_ok());
        let e = report_skips(&[skip("b", test_skip::ARTIFACTS)], Counts::default()).unwrap_err();
        assert!(e.to_string().contains("b skipped for artifacts"), "{e}");
        let e = report_skips(&[skip("c", "warp-drive")], Counts::default()).unwrap_err();
        assert!(e.to_string().contains("unknown capability"), "{e}");
        // Exactly one of a pair of opposite capabilities is present.
        assert_ne!(
            machine_has(test_skip::HOST_VHOST_NET),
            machine_has(test_skip::NO_HOST_VHOST_NET)
        );
        for c in test_skip::ALL {
            assert!(machine_has(c).is_some(), "{c} has no probe");
        }
    }
}
