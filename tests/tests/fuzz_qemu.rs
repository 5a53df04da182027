//! `cargo xtask fuzz` end to end under the qemu runner: short campaigns on the default guest
//! kernel (what `cargo xtask test` builds), a replay, a campaign whose every VM panics (the
//! crash path with a real kernel panic, de-duplicated into one crash), and on the fuzz kernel
//! (KASAN, lockdep, lkdtm; `cargo xtask test` builds it too and names it in
//! `TESTBED_FUZZ_BZIMAGE`) a replay of the seed without a report and `--self-test`: a panic, a
//! KASAN use-after-free, a WARN and a hung task provoked, each recorded, replaced and replayed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kcov_wire::program::{Op, Program, ProvokeKind, Target};
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
    // --cmin of that corpus: fewer programs (a campaign keeps inputs that later ones cover
    // again; measured 39 -> 28 on such a corpus), each one of the corpus, about the same PCs.
    let min = dir.path().join("corpus-min");
    let out = tests::xtask(&[
        "fuzz",
        "vhost-net",
        "--cmin",
        "--corpus",
        dir.path().join("corpus").to_str().unwrap(),
        "--plain-kernel",
        "--runner",
        "qemu",
    ])
    .unwrap();
    let cmin = tests::assert_exit_with(&out, 0, &["fuzz: cmin: ", "1 VMs"]);
    let kept: Vec<Vec<u8>> = std::fs::read_dir(&min)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        !kept.is_empty() && (kept.len() as u64) < corpus,
        "{} of {corpus} kept:\n{cmin}",
        kept.len()
    );
    let originals: Vec<Vec<u8>> = std::fs::read_dir(dir.path().join("corpus"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(kept.iter().all(|k| originals.contains(k)), "{cmin}");
    assert_eq!(originals.len() as u64, corpus, "the input stays as it was");
    let line = cmin.lines().find(|l| l.contains(" PCs, ")).unwrap();
    let replayed: u64 = line
        .split(" PCs, ")
        .next()
        .and_then(|h| h.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PC count in {line:?}"));
    assert!(
        replayed * 10 >= pcs * 9,
        "the corpus replayed reached {replayed} PCs, the campaign {pcs}: {cmin}"
    );
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

/// The unique crash directories of a campaign in `dir`.
fn crash_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("crashes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// A replay whose VM crashes before the agent starts never ran its program: it boots again
/// (three boots in all), says so each time, and reports the last boot's panic.
#[test]
fn a_replay_whose_vm_crashes_at_boot_boots_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.bin");
    std::fs::write(&file, Program::seed(Target::VhostNet).encode()).unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "vhost-net",
        "--repro",
        file.to_str().unwrap(),
        "--plain-kernel",
        "--runner",
        "qemu",
        "--append",
        "rdinit=/none",
        "--append",
        "init=/none",
    ]) else {
        return;
    };
    let all = tests::assert_exit_with(
        &out,
        70,
        &[
            "the program never ran, booting again (2 of 3)",
            "the program never ran, booting again (3 of 3)",
            "fuzz: replay: panic: Kernel panic",
        ],
    );
    assert_eq!(
        all.matches("the program never ran, booting again").count(),
        2,
        "{all}"
    );
}

/// The crash path with a real kernel panic: no init, so every VM's kernel panics at boot.
/// Each panic is recorded (no program was in flight) and the campaign boots the next VM,
/// until it gives up after five VMs in a row that ran nothing. The five are one bug: one
/// crash directory counts them and keeps the first three consoles.
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
    let crashes = crash_dirs(dir.path());
    assert_eq!(crashes.len(), 1, "five panics, one bug: {crashes:?}\n{all}");
    let c = &crashes[0];
    assert!(c.ends_with("000-panic"), "{}", c.display());
    for f in ["console.txt", "console-2.txt", "console-3.txt"] {
        let console = std::fs::read_to_string(c.join(f)).unwrap();
        assert!(console.contains("Kernel panic"), "{f}: {console}");
    }
    assert!(
        !c.join("console-4.txt").exists(),
        "only the first three are kept"
    );
    assert!(!c.join("repro.txt").exists(), "no program was in flight");
    let summary = std::fs::read_to_string(c.join("crash.txt")).unwrap();
    assert!(summary.contains("kind: panic\n"), "{summary}");
    assert!(summary.contains("count: 5\n"), "{summary}");
    assert_eq!(
        summary
            .lines()
            .filter(|l| l.contains("\tKernel panic"))
            .count(),
        5,
        "every occurrence listed: {summary}"
    );
    assert!(all.contains("fuzz: CRASH panic"), "{all}");
    assert!(all.contains("5 crashes (1 unique)"), "{all}");
    assert!(all.contains("crash panic x5: "), "{all}");
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
    let crashes = crash_dirs(dir.path());
    assert_eq!(crashes.len(), 1, "{crashes:?}\n{all}");
    let summary = std::fs::read_to_string(crashes[0].join("crash.txt")).unwrap();
    assert!(
        summary.contains("kind: boot-timeout\n") && summary.contains("count: 5\n"),
        "{summary}"
    );
    assert!(all.contains("fuzz: CRASH boot-timeout"), "{all}");
}

/// The fuzz kernel (KASAN, lockdep, panic_on_warn) boots and runs the seed without a report.
#[test]
fn the_kasan_kernel_replays_the_seed_without_a_report() {
    // Built by `cargo xtask test` (about 12 min cold); `fuzz` finds it in the cache.
    if tests::artifact("TESTBED_FUZZ_BZIMAGE").is_none() {
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

/// `--self-test` on the fuzz kernel: lkdtm provokes a panic, a KASAN use-after-free, a WARN
/// (fatal with panic_on_warn), a task stuck in the kernel (the agent's watchdog) and a
/// spinlock taken twice (lockdep's report, then a stopped guest: the host's watchdog). Checked
/// here from the files, not only from the command's table: each kind's crash directory, its
/// reproducer (exactly the provoking program), its console, the clean VM after them, and the
/// hang caught within a bound.
#[test]
fn the_self_test_provokes_records_and_replays_each_kind_of_kernel_bug() {
    if tests::artifact("TESTBED_FUZZ_BZIMAGE").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "vhost-net",
        "--self-test",
        "--kinds",
        "panic,kasan-uaf,warn,hang,lockdep",
        "--runner",
        "qemu",
        "--out",
        dir.path().to_str().unwrap(),
    ]) else {
        return;
    };
    let took = t.elapsed();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("self-test: PASS"), "{all}");
    eprintln!("fuzz --self-test took {:.0} s", took.as_secs_f64());
    let crashes = crash_dirs(dir.path());
    let want = [
        (
            ProvokeKind::Panic,
            "panic",
            "Kernel panic - not syncing: dumptest",
        ),
        (
            ProvokeKind::KasanUseAfterFree,
            "kasan",
            "BUG: KASAN: slab-use-after-free in lkdtm_READ_AFTER_FREE",
        ),
        (ProvokeKind::Warn, "warn", "lkdtm_WARNING"),
        (ProvokeKind::HungTask, "hang", "did not finish within"),
        // lockdep's first report (it reports once per boot); the guest then stops and the
        // host's stall watchdog ends the VM, but the report names the crash.
        (
            ProvokeKind::Lockdep,
            "lockdep",
            "WARNING: lock held when returning to user space!",
        ),
    ];
    assert_eq!(crashes.len(), want.len(), "{crashes:?}\n{all}");
    for (kind, crash_kind, report) in want {
        let program = Program::provoke(kind).encode();
        let found = crashes.iter().find(|c| {
            std::fs::read(c.join("repro.txt"))
                .ok()
                .and_then(|b| xtask::fuzz::parse_repro(&b, None).ok())
                .is_some_and(|(t, data)| t == Target::VhostNet && data == program)
        });
        let c = found.unwrap_or_else(|| panic!("no reproducer of {kind:?} in {crashes:?}\n{all}"));
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(&format!("-{crash_kind}")),
            "{kind:?}: {name}"
        );
        let console = std::fs::read_to_string(c.join("console.txt")).unwrap();
        assert!(console.contains(report), "{kind:?}: {console}");
        let summary = std::fs::read_to_string(c.join("crash.txt")).unwrap();
        assert!(summary.contains("count: 1\n"), "{summary}");
    }
    // The table's rows: each kind recorded, replayed, and followed by a VM that ran programs.
    for (kind, crash_kind, _) in want {
        let row = all
            .lines()
            .find(|l| l.starts_with(&format!("{} (want {crash_kind})", kind.name())))
            .unwrap_or_else(|| panic!("no table row for {kind:?}:\n{all}"));
        assert!(!row.contains("FAIL"), "{row}");
        assert!(row.contains(&format!("ok {crash_kind}")), "{row}");
    }
    // The hang: the agent's watchdog (10 s of guest time) caught it (the console check above
    // saw its line), before the host's 30 s stream stall or the run timeout would have.
    let hang_row = all
        .lines()
        .find(|l| l.starts_with("hang (want hang)"))
        .unwrap();
    let caught: f64 = hang_row
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "s")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no caught-after figure: {hang_row}"));
    assert!(
        (9.0..25.0).contains(&caught),
        "hang caught after {caught} s: {hang_row}"
    );
    let lockdep = crashes
        .iter()
        .find(|c| c.to_string_lossy().ends_with("-lockdep"))
        .unwrap();
    let console = std::fs::read_to_string(lockdep.join("console.txt")).unwrap();
    assert!(console.contains("(lock_me_up)"), "{console}");
    assert!(took < Duration::from_secs(900), "{took:?}");
}

/// The self-test can fail: on the default kernel (no lkdtm) nothing provoked is recorded, and
/// it says so and exits 1 after one clean VM.
#[test]
fn the_self_test_fails_on_a_kernel_without_lkdtm() {
    let dir = tempfile::tempdir().unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "vhost-vsock",
        "--self-test",
        "--kinds",
        "panic,hang",
        "--plain-kernel",
        "--runner",
        "qemu",
        "--out",
        dir.path().to_str().unwrap(),
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("self-test: FAILED"), "{all}");
    assert!(all.contains("CONFIG_LKDTM"), "{all}");
    assert_eq!(all.matches("FAIL not recorded").count(), 2, "{all}");
    assert!(
        all.contains("a VM ended without a crash: stopping"),
        "{all}"
    );
    assert!(crash_dirs(dir.path()).is_empty(), "{all}");
}

/// `--repro --minimize` on the fuzz kernel: the seed's ops, then a WARN provoked (fatal
/// with panic_on_warn), then a close. Only the provoking op matters (lkdtm's debugfs file
/// needs no vhost device), so minimising must end with that op alone, written next to the
/// input, and say how many replays it took.
#[test]
fn minimize_keeps_only_the_op_that_crashes_the_kernel() {
    if tests::artifact("TESTBED_FUZZ_BZIMAGE").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("repro.txt");
    let mut program = Program::seed(Target::VhostNet);
    program.ops.extend([
        Op::Provoke {
            kind: ProvokeKind::Warn,
        },
        Op::Close { slot: 0 },
    ]);
    std::fs::write(
        &file,
        xtask::fuzz::repro_text(Target::VhostNet, "warn", "WARNING", &program.encode()),
    )
    .unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "--repro",
        file.to_str().unwrap(),
        "--provoke",
        "--minimize",
        "--runner",
        "qemu",
    ]) else {
        return;
    };
    let all = tests::assert_exit_with(
        &out,
        0,
        &[
            "fuzz: minimise: reproduced warn: WARNING: CPU:",
            "fuzz: minimised warn: WARNING: CPU:",
            &format!("{} ops -> 1 in ", program.ops.len()),
            "repro-min.txt",
        ],
    );
    eprintln!("{all}");
    let min = std::fs::read(dir.path().join("repro-min.txt")).unwrap();
    let (target, data) = xtask::fuzz::parse_repro(&min, None).unwrap();
    assert_eq!(target, Target::VhostNet);
    let kept = Program::decode(&data);
    assert_eq!(
        kept.ops,
        vec![Op::Provoke {
            kind: ProvokeKind::Warn
        }],
        "{all}"
    );
    let text = String::from_utf8(min).unwrap();
    assert!(text.contains("kind: warn\n"), "{text}");
    assert!(
        text.contains(&format!("# minimised from {}", file.display())),
        "{text}"
    );
}

/// Bad input: a program that does not crash the kernel has nothing to minimise: one replay,
/// exit 1, the reason in one line, nothing written.
#[test]
fn minimize_refuses_a_program_that_does_not_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.bin");
    std::fs::write(&file, Program::seed(Target::VhostNet).encode()).unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "vhost-net",
        "--repro",
        file.to_str().unwrap(),
        "--minimize",
        "--plain-kernel",
        "--runner",
        "qemu",
    ]) else {
        return;
    };
    let all = tests::assert_exit_with(
        &out,
        1,
        &["does not reproduce: the replay ended without a kernel report"],
    );
    assert!(!dir.path().join("seed-min.txt").exists(), "{all}");
    // --minimize without --repro is a usage error.
    let out = tests::xtask(&["fuzz", "vhost-net", "--minimize"]).unwrap();
    tests::assert_exit_with(&out, 2, &["--repro"]);
}

/// `--cmin` on the fuzz kernel: a corpus of the seed (twice, under two names) and a program
/// that provokes a WARN. The WARN program (fewest ops, so replayed first) crashes the first VM
/// and is left out, named; the second VM replays the seed, which is kept (the first program of
/// a VM always adds PCs); the copy is the same program. The input directory is left as it
/// was; a non-empty --out is refused before any boot. (That cmin drops what adds nothing is
/// tested on a campaign's corpus, with the short vhost-net campaign.)
#[test]
fn cmin_keeps_what_adds_coverage_and_leaves_out_what_crashes() {
    if tests::artifact("TESTBED_FUZZ_BZIMAGE").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let seed = Program::seed(Target::VhostNet);
    std::fs::write(corpus.join("seed.bin"), seed.encode()).unwrap();
    std::fs::write(corpus.join("seed-copy.bin"), seed.encode()).unwrap();
    let warn = Program::provoke(ProvokeKind::Warn);
    std::fs::write(corpus.join("warn.bin"), warn.encode()).unwrap();
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("x"), b"x").unwrap();
    let Some(out) = tests::xtask(&[
        "fuzz",
        "vhost-net",
        "--cmin",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        busy.to_str().unwrap(),
        "--runner",
        "qemu",
    ]) else {
        return;
    };
    tests::assert_exit_with(&out, 1, &["not empty"]);
    let min = dir.path().join("min");
    let out = tests::xtask(&[
        "fuzz",
        "vhost-net",
        "--cmin",
        "--provoke",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        min.to_str().unwrap(),
        "--runner",
        "qemu",
    ])
    .unwrap();
    let all = tests::assert_exit_with(
        &out,
        0,
        &[
            "fuzz: cmin: 3 files in",
            "2 distinct programs",
            "left out warn.bin: it crashes the kernel (warn: WARNING: CPU:",
            "2 VMs",
        ],
    );
    let kept: Vec<Vec<u8>> = std::fs::read_dir(&min)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept, vec![seed.encode()], "{all}");
    assert!(all.contains("2 distinct programs -> 1 in"), "{all}");
    assert_eq!(std::fs::read_dir(&corpus).unwrap().count(), 3);
}
