//! A campaign's crashes, grouped: each crash is keyed by its kind and its **normalised title**
//! (the report's first line without timestamps, addresses, offsets, pids and other numbers),
//! and each unique crash has one directory `crashes/NNN-KIND/` with `crash.txt` (kind,
//! normalised title, count, every occurrence: VM, run directory, title as reported) and the
//! files of its first [`KEPT`] occurrences: `repro.txt` and `console.txt`, then
//! `repro-2.txt`, `console-2.txt`, ... (a reproducer only where a program was in flight).
//! Also the reproducer file's format ([`repro_text`], [`parse_repro`]) and the console
//! excerpt kept beside it ([`report_excerpt`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};
use kcov_wire::program::{Program, Target};

use coverage::store::write_atomic;

use super::stream::InFlight;

/// Occurrences of one unique crash whose reproducer and console are kept.
pub const KEPT: u32 = 3;

/// Console lines that start a kernel report.
const REPORT_MARKERS: &[&str] = &[
    "BUG: KASAN",
    "possible circular locking",
    "WARNING: ",
    "BUG: ",
    "Oops",
    "Kernel panic",
    "general protection fault",
    "INFO: task",
    "watchdog: ",
];

/// The console from a little before the first report line to the end (at most 300 lines),
/// or its last 80 lines when there is no report.
pub fn report_excerpt(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let start = lines
        .iter()
        .position(|l| REPORT_MARKERS.iter().any(|m| l.contains(m)))
        .map(|i| i.saturating_sub(3))
        .unwrap_or(lines.len().saturating_sub(80));
    let end = lines.len().min(start + 300);
    let mut s = lines[start..end].join("\n");
    s.push('\n');
    s
}

/// The reproducer file's first line.
pub const REPRO_HEADER: &str = "# kcov-testbed fuzz reproducer";

/// A reproducer file: header, target, kind, title, the program in hex, the ops as comments.
pub fn repro_text(target: Target, kind: &str, title: &str, data: &[u8]) -> String {
    let program = Program::decode(data);
    let mut s = format!(
        "{REPRO_HEADER}: replay with `cargo xtask fuzz --repro THIS_FILE`\ntarget: {target}\nkind: {kind}\ntitle: {}\nprogram: {}\n# the program (the last one the agent sent before the VM ended), one op per line:\n",
        title.replace('\n', " "),
        hex::encode(program.encode())
    );
    if program.ops.iter().any(|op| op.is_provoke()) {
        s.push_str(
            "# it provokes a kernel bug on purpose: replay with --provoke (on the fuzz kernel)\n",
        );
    }
    for line in program.to_string().lines() {
        s.push_str("#   ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// Reads a reproducer: the text form [`repro_text`] writes, or a raw program (a corpus file)
/// for `default_target`.
pub fn parse_repro(bytes: &[u8], default_target: Option<Target>) -> Result<(Target, Vec<u8>)> {
    let Some(text) = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.starts_with(REPRO_HEADER))
    else {
        let t = default_target.ok_or_else(|| {
            anyhow!("a raw program (corpus file) needs its target: cargo xtask fuzz vhost-net|vhost-vsock --repro FILE")
        })?;
        return Ok((t, Program::decode(bytes).encode()));
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let target = field("target:")
        .and_then(Target::from_name)
        .or(default_target)
        .ok_or_else(|| anyhow!("reproducer without a valid `target:` line"))?;
    let hex = field("program:").ok_or_else(|| anyhow!("reproducer without a `program:` line"))?;
    let data = hex::decode(hex).map_err(|e| anyhow!("reproducer `program:` is not hex: {e}"))?;
    Ok((target, Program::decode(&data).encode()))
}

/// A report title without what changes from one occurrence of the same bug to the next:
/// a leading `[ seconds]` timestamp (and `[ T123]` caller id), `+0x1c/0x30` offsets,
/// addresses (`0x…`, and bare hex of 8 or more digits) as `ADDR`, and numbers that start a
/// word (pids, CPUs, line numbers, sizes, seconds) as `N`; digits inside a name stay
/// (`ipv6_rcv`, `lkdtm_FAM_BOUNDS`). Runs of blanks become one space.
pub fn normalise_title(title: &str) -> String {
    let mut t = title.trim();
    // "[   12.345678] " and "[    T1] " prefixes, in either order.
    while let Some(rest) = t.strip_prefix('[') {
        match rest.find(']') {
            Some(end)
                if end <= 20
                    && rest[..end]
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '.' | 'T' | 'C')) =>
            {
                t = rest[end + 1..].trim_start();
            }
            _ => break,
        }
    }
    let chars: Vec<char> = t.chars().collect();
    let mut out = String::with_capacity(t.len());
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let hex_len = |from: usize| {
        chars[from..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count()
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts_word = i == 0 || !word_char(chars[i - 1]);
        // "+0x1c/0x30": a symbol's offset and size.
        if c == '+' && chars.get(i + 1) == Some(&'0') && chars.get(i + 2) == Some(&'x') {
            let n = hex_len(i + 3);
            let after = i + 3 + n;
            if n > 0
                && chars.get(after) == Some(&'/')
                && chars.get(after + 1) == Some(&'0')
                && chars.get(after + 2) == Some(&'x')
            {
                let m = hex_len(after + 3);
                if m > 0 {
                    i = after + 3 + m;
                    continue;
                }
            }
        }
        if starts_word && c == '0' && chars.get(i + 1) == Some(&'x') {
            let n = hex_len(i + 2);
            if n > 0 && !chars.get(i + 2 + n).copied().is_some_and(word_char) {
                out.push_str("ADDR");
                i += 2 + n;
                continue;
            }
        }
        if starts_word && c.is_ascii_hexdigit() {
            let n = hex_len(i);
            if n >= 8 && !chars.get(i + n).copied().is_some_and(word_char) {
                out.push_str("ADDR");
                i += n;
                continue;
            }
        }
        if starts_word && c.is_ascii_digit() {
            let n = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            out.push('N');
            i += n;
            continue;
        }
        if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
        i += 1;
    }
    out.trim_end().to_string()
}

/// One occurrence of a crash.
#[derive(Clone, Debug)]
pub struct Crash {
    /// `panic`, `kasan`, `lockdep`, `warn`, `hang`, `boot-timeout`, `vm-ended`, ...
    pub kind: String,
    /// The report's first line (or the status in words), as reported.
    pub title: String,
    /// The title [`normalise_title`] gives: with the kind, the unique crash it belongs to.
    pub normalised: String,
    /// The unique crash's directory.
    pub dir: PathBuf,
    /// This occurrence's reproducer, when a program was in flight and it is among the first
    /// [`KEPT`] occurrences.
    pub repro: Option<PathBuf>,
    /// The program in flight (canonical bytes), if any.
    pub program: Option<Vec<u8>>,
    /// Which VM of the campaign (0-based).
    pub vm: u32,
    /// This is the n-th occurrence of its unique crash (1-based).
    pub occurrence: u32,
    /// From the host's reading of the program in flight to the VM's end: how long the
    /// crash took to be caught (most telling for a hang).
    pub caught_after: Option<Duration>,
    /// The VM ended while booting, before its agent started (no program can have caused it).
    pub at_boot: bool,
}

impl Crash {
    /// Whether a program was in flight (there is a reproducer).
    pub fn has_repro(&self) -> bool {
        self.program.is_some()
    }
}

/// A unique crash: kind + normalised title.
#[derive(Clone, Debug)]
pub struct Unique {
    pub kind: String,
    pub normalised: String,
    pub dir: PathBuf,
    pub count: u32,
    /// (VM, run directory, title as reported, while booting) of every occurrence.
    occurrences: Vec<(u32, PathBuf, String, bool)>,
}

/// What a VM's end left, for [`CrashLog::record`].
pub struct Occurrence<'a> {
    pub target: Target,
    pub kind: &'a str,
    pub title: &'a str,
    pub inflight: Option<&'a InFlight>,
    pub console: &'a str,
    pub vm: u32,
    pub run_dir: &'a Path,
    /// Seconds since the campaign started when the VM ended.
    pub ended_t: f64,
    /// The VM ended before its agent started: the kernel's own boot crashed, no program ran.
    pub at_boot: bool,
}

/// The crashes of one campaign, grouped, on disk under `crashes/`.
#[derive(Debug)]
pub struct CrashLog {
    dir: PathBuf,
    /// Unique crashes in the order first seen.
    pub unique: Vec<Unique>,
    /// Every occurrence, in order.
    pub all: Vec<Crash>,
    /// Directories already under `crashes/` (a campaign directory used again): new ones are
    /// numbered after them.
    first_number: usize,
}

impl CrashLog {
    /// The log of `crashes_dir` (created).
    pub fn new(crashes_dir: &Path) -> Result<CrashLog> {
        std::fs::create_dir_all(crashes_dir)?;
        let first_number = std::fs::read_dir(crashes_dir)?.count();
        Ok(CrashLog {
            dir: crashes_dir.to_path_buf(),
            unique: Vec::new(),
            all: Vec::new(),
            first_number,
        })
    }

    /// Records one occurrence: into its unique crash's directory (a new one for a new kind
    /// and normalised title), its reproducer and console kept while fewer than [`KEPT`].
    pub fn record(&mut self, o: &Occurrence<'_>) -> Result<Crash> {
        let normalised = normalise_title(o.title);
        let i = match self
            .unique
            .iter()
            .position(|u| u.kind == o.kind && u.normalised == normalised)
        {
            Some(i) => i,
            None => {
                let n = self.first_number + self.unique.len();
                let dir = self.dir.join(format!("{n:03}-{}", o.kind));
                std::fs::create_dir_all(&dir)?;
                self.unique.push(Unique {
                    kind: o.kind.to_string(),
                    normalised: normalised.clone(),
                    dir,
                    count: 0,
                    occurrences: Vec::new(),
                });
                self.unique.len() - 1
            }
        };
        let u = &mut self.unique[i];
        u.count += 1;
        u.occurrences.push((
            o.vm,
            o.run_dir.to_path_buf(),
            o.title.replace('\n', " "),
            o.at_boot,
        ));
        let suffix = if u.count == 1 {
            String::new()
        } else {
            format!("-{}", u.count)
        };
        let program = o.inflight.map(|f| Program::decode(&f.data).encode());
        let mut repro = None;
        if u.count <= KEPT {
            write_atomic(
                &u.dir.join(format!("console{suffix}.txt")),
                report_excerpt(o.console).as_bytes(),
            )?;
            if let Some(data) = &program {
                let path = u.dir.join(format!("repro{suffix}.txt"));
                write_atomic(
                    &path,
                    repro_text(o.target, o.kind, o.title, data).as_bytes(),
                )?;
                repro = Some(path);
            }
        }
        let mut summary = format!(
            "kind: {}\ntitle: {}\ncount: {}\n# occurrences (VM, run directory, title as reported); files kept for the first {KEPT}:\n",
            u.kind, u.normalised, u.count
        );
        for (vm, run, title, at_boot) in &u.occurrences {
            let when = if *at_boot { " (while booting)" } else { "" };
            summary.push_str(&format!("{vm}\t{}\t{title}{when}\n", run.display()));
        }
        write_atomic(&u.dir.join("crash.txt"), summary.as_bytes())?;
        let crash = Crash {
            kind: o.kind.to_string(),
            title: o.title.to_string(),
            normalised,
            dir: u.dir.clone(),
            repro,
            program,
            vm: o.vm,
            occurrence: u.count,
            caught_after: o
                .inflight
                .map(|f| Duration::from_secs_f64((o.ended_t - f.t).max(0.0))),
            at_boot: o.at_boot,
        };
        self.all.push(crash.clone());
        Ok(crash)
    }
}

/// The end-of-campaign summary: one line per unique crash with its count.
pub fn summary(unique: &[Unique]) -> String {
    unique
        .iter()
        .map(|u| {
            format!(
                "crash {} x{}: {} ({})\n",
                u.kind,
                u.count,
                u.normalised,
                u.dir.display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Report lines as this kernel prints them, two occurrences each (different pids,
    /// addresses, timestamps), with the title both must get.
    const SAME: &[(&str, &str, &str)] = &[
        (
            "[   23.417791] BUG: KASAN: slab-use-after-free in lkdtm_READ_AFTER_FREE+0x1a5/0x2f0",
            "BUG: KASAN: slab-use-after-free in lkdtm_READ_AFTER_FREE+0x1b5/0x300",
            "BUG: KASAN: slab-use-after-free in lkdtm_READ_AFTER_FREE",
        ),
        (
            "WARNING: CPU: 0 PID: 85 at drivers/misc/lkdtm/bugs.c:112 lkdtm_WARNING+0x1c/0x30",
            "[    9.001000] WARNING: CPU: 1 PID: 1203 at drivers/misc/lkdtm/bugs.c:113 lkdtm_WARNING+0x1e/0x30",
            "WARNING: CPU: N PID: N at drivers/misc/lkdtm/bugs.c:N lkdtm_WARNING",
        ),
        (
            "INFO: task fuzz-exec:85 blocked for more than 120 seconds.",
            "INFO: task fuzz-exec:91 blocked for more than 122 seconds.",
            "INFO: task fuzz-exec:N blocked for more than N seconds.",
        ),
        (
            "testbed-agent: fuzz: input 7 did not finish within 10000 ms (hang)",
            "[   31.2] testbed-agent: fuzz: input 1234 did not finish within 10000 ms (hang)",
            "testbed-agent: fuzz: input N did not finish within N ms (hang)",
        ),
        (
            "BUG: unable to handle page fault for address: ffff888003a4c000",
            "BUG: unable to handle page fault for address: ffff88800b1f2e40",
            "BUG: unable to handle page fault for address: ADDR",
        ),
        (
            "general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN",
            "general protection fault, probably for non-canonical address 0xdffffc0000000023: 0000 [#1] PREEMPT SMP KASAN",
            "general protection fault, probably for non-canonical address ADDR: N [#N] PREEMPT SMP KASAN",
        ),
        (
            "[    5.123456] [    T1] Kernel panic - not syncing: dumptest",
            "Kernel panic - not syncing: dumptest",
            "Kernel panic - not syncing: dumptest",
        ),
        (
            "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [fuzz-exec:85]",
            "watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [fuzz-exec:97]",
            "watchdog: BUG: soft lockup - CPU#N stuck for Ns! [fuzz-exec:N]",
        ),
    ];

    #[test]
    fn occurrences_of_one_bug_get_one_title() {
        for (a, b, want) in SAME {
            let (na, nb) = (normalise_title(a), normalise_title(b));
            assert_eq!(na, *want, "from {a:?}");
            assert_eq!(nb, *want, "from {b:?}");
        }
    }

    #[test]
    fn different_bugs_keep_different_titles() {
        let titles = [
            "BUG: KASAN: slab-use-after-free in lkdtm_READ_AFTER_FREE+0x1a5/0x2f0",
            "BUG: KASAN: slab-use-after-free in vhost_worker+0x1a5/0x2f0",
            "BUG: KASAN: slab-out-of-bounds in vhost_worker+0x1a5/0x2f0",
            "WARNING: CPU: 0 PID: 85 at drivers/vhost/vhost.c:1234 vhost_dev_cleanup+0x1c/0x30",
            "WARNING: CPU: 0 PID: 85 at drivers/vhost/net.c:1234 vhost_net_flush+0x1c/0x30",
            "BUG: KASAN: slab-use-after-free in ipv6_rcv+0x10/0x20",
            "BUG: KASAN: slab-use-after-free in ipv4_rcv+0x10/0x20",
            "Kernel panic - not syncing: dumptest",
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009",
        ];
        let normalised: std::collections::HashSet<String> =
            titles.iter().map(|t| normalise_title(t)).collect();
        assert_eq!(normalised.len(), titles.len(), "{normalised:#?}");
        // Digits inside a name stay.
        assert!(normalise_title(titles[5]).contains("ipv6_rcv"));
        assert!(normalise_title(titles[0]).contains("lkdtm_READ_AFTER_FREE"));
    }

    #[test]
    fn hostile_titles_do_not_panic() {
        for t in [
            "", "[", "[]", "[ 1.0", "+0x", "+0x1/", "+0x1/0x", "0x", "0xg", "ß0x12ü", "[T]]]",
            "\u{0}[1]",
        ] {
            let _ = normalise_title(t);
        }
        assert_eq!(normalise_title("  a   b\t c  "), "a b c");
    }

    #[test]
    fn occurrences_are_grouped_counted_and_the_first_few_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = CrashLog::new(&tmp.path().join("crashes")).unwrap();
        let p = Program::provoke(kcov_wire::program::ProvokeKind::Warn);
        let inflight = InFlight {
            seq: 3,
            data: p.encode(),
            t: 10.0,
        };
        let run = tmp.path().join("run");
        for i in 0..5u32 {
            let title = format!(
                "[ {i}.5] WARNING: CPU: 0 PID: {} at drivers/misc/lkdtm/bugs.c:112 lkdtm_WARNING+0x1c/0x30",
                80 + i
            );
            let c = log
                .record(&Occurrence {
                    target: Target::VhostNet,
                    kind: "warn",
                    title: &title,
                    inflight: Some(&inflight),
                    console: &format!("boot\n{title}\nKernel panic - not syncing: panic_on_warn\n"),
                    vm: i,
                    run_dir: &run,
                    ended_t: 12.5,
                    at_boot: false,
                })
                .unwrap();
            assert_eq!(c.occurrence, i + 1);
            assert_eq!(c.repro.is_some(), i < KEPT);
            assert_eq!(c.caught_after, Some(Duration::from_millis(2500)));
        }
        let other = log
            .record(&Occurrence {
                target: Target::VhostNet,
                kind: "panic",
                title: "Kernel panic - not syncing: dumptest",
                inflight: None,
                console: "Kernel panic - not syncing: dumptest\n",
                vm: 5,
                run_dir: &run,
                ended_t: 20.0,
                at_boot: true,
            })
            .unwrap();
        assert_eq!(log.unique.len(), 2);
        assert_eq!(log.all.len(), 6);
        let warn = &log.unique[0];
        assert_eq!((warn.count, warn.kind.as_str()), (5, "warn"));
        assert!(warn.dir.ends_with("000-warn"));
        assert!(other.dir.ends_with("001-panic"));
        assert!(other.repro.is_none() && !other.has_repro() && other.at_boot);
        let text = std::fs::read_to_string(other.dir.join("crash.txt")).unwrap();
        assert!(text.contains("dumptest (while booting)\n"), "{text}");
        for f in [
            "repro.txt",
            "console.txt",
            "repro-2.txt",
            "repro-3.txt",
            "console-3.txt",
        ] {
            assert!(warn.dir.join(f).exists(), "{f}");
        }
        assert!(!warn.dir.join("repro-4.txt").exists());
        let (t, data) =
            parse_repro(&std::fs::read(warn.dir.join("repro-2.txt")).unwrap(), None).unwrap();
        assert_eq!((t, Program::decode(&data)), (Target::VhostNet, p));
        let text = std::fs::read_to_string(warn.dir.join("crash.txt")).unwrap();
        assert!(text.contains("count: 5\n"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("lkdtm_WARNING+0x1c"))
                .count(),
            5
        );
        let summary = summary(&log.unique);
        assert!(summary.contains("crash warn x5: WARNING: CPU: N PID: N at drivers/misc/lkdtm/bugs.c:N lkdtm_WARNING"), "{summary}");
        assert!(summary.contains("crash panic x1: Kernel panic - not syncing: dumptest"));
        // A second log on the same directory numbers after what is there.
        let mut again = CrashLog::new(&tmp.path().join("crashes")).unwrap();
        let c = again
            .record(&Occurrence {
                target: Target::VhostNet,
                kind: "hang",
                title: "x",
                inflight: None,
                console: "",
                vm: 0,
                run_dir: &run,
                ended_t: 0.0,
                at_boot: false,
            })
            .unwrap();
        assert!(c.dir.ends_with("002-hang"), "{}", c.dir.display());
    }

    #[test]
    fn reproducers_round_trip_in_both_forms() {
        let p = Program::seed(Target::VhostVsock);
        let text = repro_text(Target::VhostVsock, "kasan", "BUG: KASAN: x", &p.encode());
        assert!(text.contains("VHOST_VSOCK_SET_GUEST_CID"));
        assert!(!text.contains("--provoke"));
        let (t, data) = parse_repro(text.as_bytes(), None).unwrap();
        assert_eq!(t, Target::VhostVsock);
        assert_eq!(Program::decode(&data), p);
        let (t, data) = parse_repro(&p.encode(), Some(Target::VhostNet)).unwrap();
        assert_eq!((t, Program::decode(&data)), (Target::VhostNet, p));
        assert!(parse_repro(b"\x01\x02", None).is_err());
        assert!(parse_repro(
            format!("{REPRO_HEADER}\ntarget: vhost-net\nprogram: zz\n").as_bytes(),
            None
        )
        .is_err());
        let provoking = Program::provoke(kcov_wire::program::ProvokeKind::Panic);
        let text = repro_text(
            Target::VhostNet,
            "panic",
            "Kernel panic",
            &provoking.encode(),
        );
        assert!(text.contains("replay with --provoke"), "{text}");
    }
}
