//! `cargo xtask fuzz` end to end under the qemu runner: short campaigns on the default guest
//! kernel (what `cargo xtask test` builds), a replay, a campaign whose every VM panics (the
//! crash path with a real kernel panic), and, opt-in, a replay on the KASAN + lockdep kernel.

use std::path::Path;

use kcov_wire::program::{Program, Target};
use tests::text;

/// The `fuzz: N execs, P PCs, C corpus entries` line's numbers.
fn totals(all: &str) -> (u64, u64, u64) {
    let line = all
        .lines()
        .rev()
        .find(|l| l.starts_with("fuzz: ") && l.contains(" execs, "))
        .unwrap_or_else(|| panic!("no totals line in:\n{all}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(3)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums[2])
}

/// progress.tsv rows: (seconds, execs, pcs, corpus).
fn progress(dir: &Path) -> Vec<(f64, u64, u64, u64)> {
    std::fs::read_to_string(dir.join("progress.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

fn campaign(target: &str, secs: &str, dir: &Path) -> Option<String> {
    let out = tests::xtask(&[
        "fuzz",
        target,
        "--time",
        secs,
        "--plain-kernel",
        "--runner",
        "qemu",
        "--out",
        dir.to_str().unwrap(),
    ])?;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    Some(all)
}

#[test]
fn a_short_vhost_net_campaign_adds_coverage_beyond_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(all) = campaign("vhost-net", "30", dir.path()) else {
        return;
    };
    let (execs, pcs, corpus) = totals(&all);
    assert!(execs > 10, "{all}");
    assert!(corpus >= 2, "the seed and at least one mutant: {all}");
    let files = std::fs::read_dir(dir.path().join("corpus"))
        .unwrap()
        .count() as u64;
    assert_eq!(files, corpus, "{all}");
    // The second progress point is the seed's coverage (its chunks come before its status).
    let rows = progress(dir.path());
    let seed_pcs = rows[1].2;
    assert!(seed_pcs > 100, "{rows:?}");
    assert!(
        pcs > seed_pcs,
        "campaign {pcs} PCs, seed alone {seed_pcs}: {all}"
    );
    let svg = std::fs::read_to_string(dir.path().join("coverage.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(all.contains("0 crashes"), "{all}");
    // The corpus is named by content and decodes to what it was.
    for e in std::fs::read_dir(dir.path().join("corpus")).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(Program::decode(&bytes).encode(), bytes, "{}", p.display());
    }
}

#[test]
fn a_short_vhost_vsock_campaign_runs_and_keeps_a_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let Some(all) = campaign("vhost-vsock", "25", dir.path()) else {
        return;
    };
    let (execs, pcs, corpus) = totals(&all);
    assert!(execs > 5 && pcs > 100 && corpus >= 1, "{all}");
}

#[test]
fn a_replay_runs_the_reproducer_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.repro");
    let seed = Program::seed(Target::VhostNet);
    std::fs::write(
        &file,
        xtask::fuzz::repro_text(Target::VhostNet, "test", "the seed", &seed.encode()),
    )
    .unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "--repro",
        file.to_str().unwrap(),
        "--plain-kernel",
        "--runner",
        "qemu",
    ]) else {
        return;
    };
    let all = tests::assert_exit_with(
        &out,
        0,
        &[
            "fuzz vhost-net: 1 corpus programs included, 0 s of mutation",
            "fuzz vhost-net: 1 execs",
            "fuzz: replay: no kernel report",
        ],
    );
    assert!(
        all.contains("VHOST_NET_SET_BACKEND slot=0 q=1 fd=good"),
        "{all}"
    );
}

/// The crash path with a real kernel panic: no init, so every VM's kernel panics at boot.
/// Each panic is recorded (no program was in flight) and the campaign boots the next VM,
/// until it gives up after five VMs in a row that ran nothing.
#[test]
fn kernel_panics_are_recorded_and_the_campaign_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "vhost-net",
        "--time",
        "300",
        "--plain-kernel",
        "--runner",
        "qemu",
        "--append",
        "rdinit=/none",
        "--append",
        "init=/none",
        "--out",
        dir.path().to_str().unwrap(),
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("5 VMs in a row ran no program"), "{all}");
    let crashes: Vec<_> = std::fs::read_dir(dir.path().join("crashes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(crashes.len(), 5, "{all}");
    for c in &crashes {
        let console = std::fs::read_to_string(c.join("console.txt")).unwrap();
        assert!(console.contains("Kernel panic"), "{console}");
        assert!(!c.join("repro.txt").exists(), "no program was in flight");
    }
    assert!(all.contains("fuzz: CRASH panic"), "{all}");
}

/// A VM that does not come up in time (here: a 1 s boot timeout, which no boot meets) is
/// killed, recorded as `boot-timeout` and followed by a new VM: the runner's timeout is the
/// campaign's watchdog for a kernel that stops making progress.
#[test]
fn vms_that_hang_are_killed_recorded_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "vhost-net",
        "--time",
        "300",
        "--plain-kernel",
        "--runner",
        "qemu",
        "--boot-timeout",
        "1",
        "--out",
        dir.path().to_str().unwrap(),
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("5 VMs in a row ran no program"), "{all}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("crashes"))
            .unwrap()
            .count(),
        5,
        "{all}"
    );
    assert!(all.contains("fuzz: CRASH boot-timeout"), "{all}");
}

/// The fuzz kernel (KASAN, lockdep, panic_on_warn) boots and runs the seed without a report.
/// Opt-in: its cold build takes about 12 minutes on 2 cores.
#[test]
fn the_kasan_kernel_replays_the_seed_without_a_report() {
    if std::env::var("TESTBED_FUZZ_KERNEL").as_deref() != Ok("1") {
        test_skip::skip(
            &tests::current_test(),
            test_skip::OPT_IN,
            "needs the KASAN + lockdep fuzz kernel (about 12 min cold build): set TESTBED_FUZZ_KERNEL=1",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.bin");
    std::fs::write(&file, Program::seed(Target::VhostVsock).encode()).unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "vhost-vsock",
        "--repro",
        file.to_str().unwrap(),
        "--runner",
        "qemu",
    ]) else {
        return;
    };
    tests::assert_exit_with(&out, 0, &["fuzz: replay: no kernel report", "1 execs"]);
}
