//! Shared helpers for the end-to-end tests in `tests/tests/`.
//!
//! These tests need the guest kernel and agent that `cargo xtask test` builds
//! and announces through environment variables. Run alone (plain `cargo
//! test`), they skip with a printed reason; under `cargo xtask test`
//! (`TESTBED_REQUIRE_KERNEL=1`) a missing artifact is a failure.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::{Command, Output};

use coverage::{Symbolizer, Vmlinux};

/// The path in environment variable `var`, or None after printing why the
/// test is skipped. Panics when `TESTBED_REQUIRE_KERNEL=1`.
pub fn artifact(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => Some(PathBuf::from(v)),
        None => {
            if std::env::var("TESTBED_REQUIRE_KERNEL").as_deref() == Ok("1") {
                panic!("{var} is not set although TESTBED_REQUIRE_KERNEL=1");
            }
            test_skip::skip(
                &current_test(),
                test_skip::ARTIFACTS,
                format!("{var} not set (run via `cargo xtask test`, which builds the guest kernel and agent)"),
            );
            None
        }
    }
}

/// The running test's name (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string()
}

/// Runs the xtask binary (the same one `cargo xtask` runs) with `args`.
pub fn xtask(args: &[&str]) -> Option<Output> {
    Some(xtask_command(args)?.output().expect("running xtask"))
}

/// The xtask binary with `args`, in the workspace root, to adjust (environment, pipes) and
/// run; None after printing why it is skipped.
pub fn xtask_command(args: &[&str]) -> Option<Command> {
    let bin = artifact("TESTBED_XTASK_BIN")?;
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(xtask::paths::workspace_root());
    Some(cmd)
}

/// Compiles the C program `src` (text) into the static binary `dir/name` for the guest.
pub fn static_c(dir: &std::path::Path, name: &str, src: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let bin = dir.join(name);
    xtask::agent::gcc_static(&c, &bin).unwrap_or_else(|e| panic!("{e:#}"));
    bin
}

/// A static guest program that exits with `code`.
pub fn exit_program(dir: &std::path::Path, code: i32) -> PathBuf {
    static_c(
        dir,
        &format!("exit{code}"),
        &format!("int main(void) {{ return {code}; }}\n"),
    )
}

/// A static guest program that spins forever (a hung command).
pub fn spin_program(dir: &std::path::Path) -> PathBuf {
    static_c(
        dir,
        "spin",
        "int main(void) { for (;;) { __asm__ volatile(\"\"); } }\n",
    )
}

/// No QEMU of the run in `dir` (its sockets and images live there) may outlive the run: waits
/// up to 5 s for them to go, then fails naming what is left.
pub fn assert_no_qemu_left(dir: &std::path::Path) {
    let needle = dir.to_string_lossy().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ps = Command::new("ps")
            .args(["-eo", "pid,args"])
            .output()
            .unwrap();
        let left: Vec<String> = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("qemu-system"))
            .map(str::to_string)
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left running: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Asserts that `out` exited with `code` and its output contains every one of `lines`;
/// returns the output (stdout + stderr) for further checks.
pub fn assert_exit_with(out: &Output, code: i32, lines: &[&str]) -> String {
    let all = text(out);
    assert_eq!(out.status.code(), Some(code), "{all}");
    for line in lines {
        assert!(all.contains(line), "missing {line:?} in:\n{all}");
    }
    all
}

/// stdout + stderr as text, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A boot run's stream file, from the "raw stream: PATH" line `xtask boot` prints (its
/// `serial.log` lies beside it).
pub fn stream_path(out: &Output) -> PathBuf {
    let all = text(out);
    let p = all
        .lines()
        .find_map(|l| l.strip_prefix("raw stream: "))
        .unwrap_or_else(|| panic!("no raw stream line in:\n{all}"));
    PathBuf::from(p.trim())
}

/// Lines of stderr that start with "error:".
pub fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

/// Function names of the unique PCs (PCs are return addresses: look up `pc - 1`).
pub fn functions(vmlinux: &Vmlinux, pcs: &[u64]) -> BTreeSet<String> {
    let unique: HashSet<u64> = pcs.iter().copied().collect();
    unique
        .into_iter()
        .filter_map(|pc| vmlinux.symbols().lookup(pc - 1).map(|f| f.name.clone()))
        .collect()
}

/// Unique PCs whose call site DWARF places in drivers/vhost/.
pub fn vhost_source_pcs(vmlinux: &Vmlinux, pcs: &[u64]) -> usize {
    let sym = Symbolizer::new(vmlinux).expect("symbolizer");
    let mut unique: Vec<u64> = pcs.iter().map(|pc| pc - 1).collect();
    unique.sort_unstable();
    unique.dedup();
    sym.symbolize_sorted(&unique)
        .iter()
        .filter(|frames| {
            frames.iter().any(|f| {
                f.file
                    .as_deref()
                    .is_some_and(|p| p.contains("drivers/vhost/"))
            })
        })
        .count()
}

/// The guest vmlinux (`TESTBED_VMLINUX`), opened; `None` after printing why when unset.
pub fn vmlinux() -> Option<Vmlinux> {
    let path = artifact("TESTBED_VMLINUX")?;
    Some(Vmlinux::open(&path).expect("open vmlinux"))
}
