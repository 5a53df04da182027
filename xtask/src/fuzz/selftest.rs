//! `cargo xtask fuzz vhost-net|vhost-vsock --self-test`: proves the crash pipeline on the
//! user's own fuzz kernel. A short campaign whose corpus is the seed plus one program per
//! provoked kind of kernel bug ([`Program::provoke`]: open the device, `VHOST_SET_OWNER`, then
//! lkdtm's `DIRECT` with `testbed.fuzz_provoke=1`), run until a VM ends cleanly; then each
//! provoked bug must be recorded with the right kind, its reproducer must be the program that
//! provoked it, a later VM must have run programs (the campaign went on), and a replay of the
//! reproducer must show the same kind of report. A table says which held.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kcov_wire::program::{Program, ProvokeKind};

use super::crashes::{parse_repro, Crash};
use coverage::store::write_atomic;

use super::stream::corpus_name;
use super::{campaign, repro, FuzzOpts, Outcome};
use crate::paths;

/// The kinds a self-test provokes unless told otherwise.
pub const DEFAULT_KINDS: [ProvokeKind; 4] = [
    ProvokeKind::Panic,
    ProvokeKind::KasanUseAfterFree,
    ProvokeKind::Warn,
    ProvokeKind::HungTask,
];

/// Seconds of mutation per VM: the VM after the provoked bugs shows the campaign goes on.
const VM_TIME: Duration = Duration::from_secs(5);

/// The crash kind (`fuzz::classify`) a provoked bug must be recorded as.
pub fn expected_kind(kind: ProvokeKind) -> &'static str {
    match kind {
        ProvokeKind::Panic => "panic",
        ProvokeKind::KasanUseAfterFree => "kasan",
        ProvokeKind::Warn => "warn",
        // The agent's watchdog (a task stuck in the kernel), or the host's (a stopped kernel).
        ProvokeKind::HungTask | ProvokeKind::SoftLockup => "hang",
        // The report on the console, though the guest then stops (the host's watchdog ends it).
        ProvokeKind::Lockdep => "lockdep",
    }
}

/// What the self-test found for one kind.
#[derive(Debug)]
pub struct Row {
    pub kind: ProvokeKind,
    /// The crash recorded with this kind's program in flight.
    pub crash: Option<Crash>,
    /// Its reproducer file holds exactly that program.
    pub repro_ok: bool,
    /// Programs the VMs after it ran (the campaign went on with a new VM).
    pub later_execs: u64,
    /// The replay's report kind (`None`: none, or no replay) and how long it took.
    pub replay: Option<(Option<String>, Duration)>,
}

impl Row {
    pub fn recorded_ok(&self) -> bool {
        self.crash
            .as_ref()
            .is_some_and(|c| c.kind == expected_kind(self.kind))
    }

    pub fn replay_ok(&self) -> bool {
        matches!(&self.replay, Some((Some(k), _)) if k == expected_kind(self.kind))
    }

    pub fn ok(&self) -> bool {
        self.recorded_ok() && self.repro_ok && self.later_execs > 0 && self.replay_ok()
    }
}

/// The self-test's result.
#[derive(Debug)]
pub struct SelfTest {
    pub rows: Vec<Row>,
    /// Crashes no provoked program explains (the seed or a mutant crashed, or a VM died
    /// without a program in flight after its agent started): each is a failure.
    pub unexpected: Vec<Crash>,
    /// VMs whose kernel crashed while booting, before the agent started: no program ran, so
    /// the pipeline under test is not involved; shown as a note with the crash's directory.
    pub boot_crashes: Vec<Crash>,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

impl SelfTest {
    pub fn ok(&self) -> bool {
        self.unexpected.is_empty() && self.rows.iter().all(Row::ok)
    }

    /// The table and the verdict, for the terminal.
    pub fn render(&self) -> String {
        let rel = |p: &Path| {
            p.strip_prefix(&self.outcome.dir)
                .unwrap_or(p)
                .display()
                .to_string()
        };
        let mark = |ok: bool| if ok { "ok" } else { "FAIL" };
        let mut rows = vec![[
            "kind".to_string(),
            "lkdtm".into(),
            "recorded as".into(),
            "caught after".into(),
            "reproducer".into(),
            "new VM".into(),
            "replay".into(),
        ]];
        for r in &self.rows {
            let want = expected_kind(r.kind);
            let recorded = match &r.crash {
                Some(c) => format!("{} {}", mark(r.recorded_ok()), c.kind),
                None => "FAIL not recorded".into(),
            };
            let caught = r
                .crash
                .as_ref()
                .and_then(|c| c.caught_after)
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
            let reproducer = match r.crash.as_ref().and_then(|c| c.repro.as_ref()) {
                Some(p) => format!("{} {}", mark(r.repro_ok), rel(p)),
                None if r.crash.is_some() => "FAIL none".into(),
                None => "-".into(),
            };
            let new_vm = if r.crash.is_none() {
                "-".into()
            } else if r.later_execs > 0 {
                format!("ok ({} execs)", r.later_execs)
            } else {
                "FAIL none ran".into()
            };
            let replay = match &r.replay {
                Some((Some(k), d)) => {
                    format!("{} {k} ({:.0} s)", mark(k == want), d.as_secs_f64())
                }
                Some((None, d)) => format!("FAIL no report ({:.0} s)", d.as_secs_f64()),
                None => "-".into(),
            };
            rows.push([
                format!("{} (want {want})", r.kind.name()),
                r.kind.lkdtm_name().into(),
                recorded,
                caught,
                reproducer,
                new_vm,
                replay,
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut s = format!(
            "fuzz self-test: {} kinds provoked, {} VMs, {} crashes ({} unique), {:.0} s; campaign {}\n",
            self.rows.len(),
            self.outcome.vms,
            self.outcome.crashes.len(),
            self.outcome.unique.len(),
            self.elapsed.as_secs_f64(),
            self.outcome.dir.display()
        );
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            s.push_str(line.join("  ").trim_end());
            s.push('\n');
        }
        for c in &self.unexpected {
            s.push_str(&format!(
                "FAIL: an unexpected crash in VM {}: {} {} ({})\n",
                c.vm,
                c.kind,
                c.title,
                c.dir.display()
            ));
        }
        for c in &self.boot_crashes {
            s.push_str(&format!(
                "note: VM {} crashed while booting, before the agent started (no program ran; a kernel bug of its own): {} {} ({})\n",
                c.vm,
                c.kind,
                c.title,
                c.dir.display()
            ));
        }
        if let Some(f) = self
            .rows
            .iter()
            .find_map(|r| r.crash.as_ref().and_then(|c| c.repro.as_ref()))
        {
            s.push_str(&format!(
                "replay one yourself: cargo xtask fuzz --provoke --repro {}\n",
                f.display()
            ));
        }
        if self.ok() {
            s.push_str(&format!(
                "self-test: PASS: each of the {} provoked kernel bugs was recorded with its reproducer, the campaign went on, and each replay showed the same report\n",
                self.rows.len()
            ));
        } else {
            s.push_str("self-test: FAILED\n");
            if self.rows.iter().all(|r| r.crash.is_none()) {
                s.push_str("  nothing provoked was recorded: does the kernel have CONFIG_LKDTM (kernel-config/fuzz.config; --plain-kernel has not)?\n");
                if let Some(run) = self.outcome.runs.first() {
                    let log = run.join("serial.log");
                    let console = std::fs::read_to_string(&log).unwrap_or_default();
                    for l in console
                        .lines()
                        .filter(|l| l.contains("fuzz: provoke"))
                        .take(3)
                    {
                        s.push_str(&format!("  the agent said: {}\n", l.trim()));
                    }
                    s.push_str(&format!("  (console: {})\n", log.display()));
                }
            }
            for r in &self.rows {
                let hint = match (r.kind, &r.crash) {
                    (ProvokeKind::KasanUseAfterFree, Some(c)) if c.kind != "kasan" => {
                        " (no KASAN report: is CONFIG_KASAN on, and kasan.fault=panic on the command line?)"
                    }
                    (ProvokeKind::Warn, Some(c)) if c.kind != "warn" => {
                        " (a WARN must panic: panic_on_warn=1 on the command line)"
                    }
                    _ => "",
                };
                if !r.ok() {
                    s.push_str(&format!("  {}: failed{hint}\n", r.kind.name()));
                }
            }
        }
        s
    }
}

/// Runs the self-test: `base` gives target, runner, kernel and command line; `kinds` the
/// bugs to provoke.
pub fn run(base: &FuzzOpts, kinds: &[ProvokeKind]) -> Result<SelfTest> {
    let started = Instant::now();
    let dir = base.out.clone().unwrap_or_else(|| {
        paths::workspace_root()
            .join("target/testbed/fuzz")
            .join(format!("selftest-{}-{}", base.target, super::now_ms()))
    });
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut programs: Vec<Program> = vec![Program::seed(base.target)];
    programs.extend(kinds.iter().map(|k| Program::provoke(*k)));
    for p in &programs {
        let bytes = p.encode();
        write_atomic(&corpus.join(corpus_name(&bytes)), &bytes)?;
    }
    eprintln!(
        "fuzz: self-test on {}: the seed and {} provoking programs ({}) in {}",
        base.target,
        kinds.len(),
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        corpus.display()
    );
    let mut opts = base.clone();
    opts.out = Some(dir);
    opts.corpus = Some(corpus);
    opts.provoke = true;
    opts.vm_time = Some(VM_TIME);
    opts.stop_on_clean_vm = true;
    // One VM per kind, one clean one, one spare (a kind that did not crash its VM shows in
    // the table, not as a campaign that runs on).
    opts.max_vms = Some(kinds.len() as u32 + 2);
    opts.time = opts.time.max(Duration::from_secs(600));
    let outcome = campaign(&opts)?;
    let mut rows = Vec::new();
    let mut explained = vec![false; outcome.crashes.len()];
    for &kind in kinds {
        let want = Program::provoke(kind).encode();
        let found = outcome
            .crashes
            .iter()
            .position(|c| c.program.as_deref() == Some(want.as_slice()));
        if let Some(i) = found {
            explained[i] = true;
        }
        let crash = found.map(|i| outcome.crashes[i].clone());
        let repro_file: Option<PathBuf> = crash.as_ref().and_then(|c| c.repro.clone());
        let repro_ok = repro_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| parse_repro(&b, None).ok())
            .is_some_and(|(t, data)| t == base.target && data == want);
        let later_execs = crash.as_ref().map_or(0, |c| {
            outcome.vm_execs.iter().skip(c.vm as usize + 1).sum::<u64>()
        });
        let replay = match &repro_file {
            Some(f) if repro_ok => {
                eprintln!("fuzz: self-test: replaying the {} reproducer", kind.name());
                let t = Instant::now();
                let r = repro(f, &opts, None)?;
                Some((r.report.map(|(k, _)| k), t.elapsed()))
            }
            _ => None,
        };
        rows.push(Row {
            kind,
            crash,
            repro_ok,
            later_execs,
            replay,
        });
    }
    let (boot_crashes, unexpected) = outcome
        .crashes
        .iter()
        .zip(&explained)
        .filter(|(_, e)| !**e)
        .map(|(c, _)| c.clone())
        .partition(|c| c.at_boot);
    Ok(SelfTest {
        rows,
        unexpected,
        boot_crashes,
        outcome,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(kind: &str, k: ProvokeKind, vm: u32) -> Crash {
        Crash {
            kind: kind.into(),
            title: "t".into(),
            normalised: "t".into(),
            dir: PathBuf::from(format!("/c/crashes/00{vm}-{kind}")),
            repro: Some(PathBuf::from(format!("/c/crashes/00{vm}-{kind}/repro.txt"))),
            program: Some(Program::provoke(k).encode()),
            vm,
            occurrence: 1,
            caught_after: Some(Duration::from_millis(10_100)),
            at_boot: false,
        }
    }

    fn outcome(crashes: Vec<Crash>) -> Outcome {
        Outcome {
            dir: PathBuf::from("/c"),
            corpus_dir: PathBuf::from("/c/corpus"),
            vms: crashes.len() as u32 + 1,
            execs: 0,
            pcs: 0,
            remote: Default::default(),
            corpus: 0,
            crashes,
            unique: Vec::new(),
            vm_execs: Vec::new(),
            agent_us: 0,
            stream_us: 0,
            agent_execs: 0,
            elapsed: Duration::ZERO,
            points: Vec::new(),
            runs: Vec::new(),
        }
    }

    fn row(kind: ProvokeKind, crash: Option<Crash>, replay: Option<&str>) -> Row {
        Row {
            kind,
            repro_ok: crash.is_some(),
            later_execs: if crash.is_some() { 7 } else { 0 },
            crash,
            replay: replay.map(|k| (Some(k.to_string()), Duration::from_secs(5))),
        }
    }

    #[test]
    fn the_verdict_fails_on_any_wrong_or_missing_piece() {
        let good = |k: ProvokeKind, vm| {
            row(
                k,
                Some(crash(expected_kind(k), k, vm)),
                Some(expected_kind(k)),
            )
        };
        let pass = SelfTest {
            rows: vec![good(ProvokeKind::Panic, 0), good(ProvokeKind::HungTask, 1)],
            unexpected: Vec::new(),
            boot_crashes: Vec::new(),
            outcome: outcome(Vec::new()),
            elapsed: Duration::from_secs(60),
        };
        assert!(pass.ok());
        let table = pass.render();
        assert!(table.contains("self-test: PASS"), "{table}");
        assert!(!table.contains("FAIL"), "{table}");
        // A kernel that crashed while booting ran no program: a note, not a failure.
        let boot = SelfTest {
            boot_crashes: vec![Crash {
                at_boot: true,
                program: None,
                repro: None,
                ..crash("kasan", ProvokeKind::Panic, 2)
            }],
            ..pass
        };
        assert!(boot.ok());
        let table = boot.render();
        assert!(table.contains("self-test: PASS"), "{table}");
        assert!(
            table.contains("note: VM 2 crashed while booting, before the agent started"),
            "{table}"
        );

        assert!(table.contains("10.1 s"), "{table}");
        assert!(table.contains("ok crashes/001-hang/repro.txt"), "{table}");

        let fails: Vec<(&str, SelfTest)> = vec![
            (
                "recorded as the wrong kind (KASAN off: the read passed, then a later panic)",
                SelfTest {
                    rows: vec![row(
                        ProvokeKind::KasanUseAfterFree,
                        Some(crash("panic", ProvokeKind::KasanUseAfterFree, 0)),
                        Some("kasan"),
                    )],
                    ..pass_like()
                },
            ),
            (
                "not recorded",
                SelfTest {
                    rows: vec![row(ProvokeKind::Warn, None, None)],
                    ..pass_like()
                },
            ),
            (
                "replay showed another kind",
                SelfTest {
                    rows: vec![row(
                        ProvokeKind::Warn,
                        Some(crash("warn", ProvokeKind::Warn, 0)),
                        Some("panic"),
                    )],
                    ..pass_like()
                },
            ),
            (
                "no VM after it ran programs",
                SelfTest {
                    rows: vec![Row {
                        later_execs: 0,
                        ..good(ProvokeKind::Panic, 0)
                    }],
                    ..pass_like()
                },
            ),
            (
                "reproducer is not the program",
                SelfTest {
                    rows: vec![Row {
                        repro_ok: false,
                        ..good(ProvokeKind::Panic, 0)
                    }],
                    ..pass_like()
                },
            ),
            (
                "an unexpected crash",
                SelfTest {
                    rows: vec![good(ProvokeKind::Panic, 0)],
                    unexpected: vec![crash("bug", ProvokeKind::Panic, 3)],
                    ..pass_like()
                },
            ),
        ];
        for (why, t) in fails {
            assert!(!t.ok(), "{why}");
            let table = t.render();
            assert!(table.contains("self-test: FAILED"), "{why}: {table}");
            assert!(table.contains("FAIL"), "{why}: {table}");
        }
    }

    fn pass_like() -> SelfTest {
        SelfTest {
            rows: Vec::new(),
            unexpected: Vec::new(),
            boot_crashes: Vec::new(),
            outcome: outcome(Vec::new()),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn every_kind_has_an_expected_crash_kind_the_classifier_knows() {
        for k in ProvokeKind::ALL {
            assert!(
                ["panic", "kasan", "warn", "hang", "lockdep"].contains(&expected_kind(k)),
                "{k:?}"
            );
        }
        // The provoking programs are distinct, so each crash names its kind by its program.
        let mut seen = std::collections::HashSet::new();
        for k in ProvokeKind::ALL {
            assert!(seen.insert(Program::provoke(k).encode()));
        }
    }
}
