//! `cargo xtask fuzz --repro FILE --minimize`: the fewest ops of a reproducer that still give
//! the same kernel report (kind and normalised title), found by replaying candidates.
//!
//! Delta debugging over the program's ops, one VM boot per candidate: remove the first half,
//! then the second; then quarters, and so on down to single ops, keeping every removal after
//! which the crash still reproduces. A program of n ops needs about 2·log2(n) replays when
//! one op matters and at most about 2n in all; `--max-replays` bounds them (then the smallest
//! program found so far is kept). Written next to the input as `NAME-min.txt`, a reproducer
//! like any other.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kcov_wire::program::{Op, Program, Target};

use super::crashes::{normalise_title, repro_text};
use super::{read_repro, replay, FuzzOpts};

/// What minimising found.
#[derive(Debug)]
pub struct Minimized {
    pub target: Target,
    /// The crash every kept candidate reproduced: kind and title of the first replay.
    pub kind: String,
    pub title: String,
    pub before: usize,
    pub program: Program,
    /// Replays run, the first (the input as it is) included.
    pub replays: u32,
    /// The replay budget ran out before single ops were tried.
    pub budget_spent: bool,
    pub file: PathBuf,
    pub elapsed: Duration,
}

/// The smallest sub-sequence of `items` for which `reproduces` holds, found by removing
/// chunks (halves, quarters, ..., single items) as long as it still holds; `reproduces` is
/// called at most `budget` times (the full input is not re-checked). Returns the items kept
/// and whether the budget ran out.
pub fn ddmin<T: Clone>(
    items: &[T],
    budget: u32,
    mut reproduces: impl FnMut(&[T]) -> Result<bool>,
) -> Result<(Vec<T>, bool)> {
    let mut kept = items.to_vec();
    let mut calls = 0u32;
    let mut chunk = kept.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < kept.len() {
            if kept.len() == 1 {
                return Ok((kept, false));
            }
            let end = (start + chunk).min(kept.len());
            if start == 0 && end == kept.len() {
                // Nothing would be left: an empty program is no reproducer.
                break;
            }
            let candidate: Vec<T> = kept[..start].iter().chain(&kept[end..]).cloned().collect();
            if calls == budget {
                return Ok((kept, true));
            }
            calls += 1;
            if reproduces(&candidate)? {
                kept = candidate;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            return Ok((kept, false));
        }
        chunk = chunk.div_ceil(2);
    }
}

/// Where the minimised reproducer of `input` goes: `repro.txt` → `repro-min.txt`.
pub fn output_path(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repro".into());
    input.with_file_name(format!("{stem}-min.txt"))
}

/// Replays `file` and then ever smaller programs (see the module's text); writes the result.
pub fn minimize(
    file: &Path,
    opts: &FuzzOpts,
    default_target: Option<Target>,
    max_replays: u32,
) -> Result<Minimized> {
    let started = Instant::now();
    let (target, data) = read_repro(file, default_target)?;
    let program = Program::decode(&data);
    let before = program.ops.len();
    if before == 0 {
        bail!(
            "{}: the program has no ops: nothing to minimise",
            file.display()
        );
    }
    eprintln!(
        "fuzz: minimise: replaying {} on {target} ({before} ops) as it is",
        file.display()
    );
    let first = replay(target, &data, opts)?;
    let Some((kind, title)) = first.report else {
        bail!(
            "{} does not reproduce: the replay ended without a kernel report ({}; run directory {}); nothing to minimise{}",
            file.display(),
            first.status.describe(),
            first.run_dir.display(),
            if !opts.provoke && program.ops.iter().any(Op::is_provoke) {
                " (it provokes a bug on purpose: add --provoke)"
            } else {
                ""
            }
        );
    };
    let want = normalise_title(&title);
    eprintln!("fuzz: minimise: reproduced {kind}: {title}");
    let mut replays = 1u32;
    let (ops, budget_spent) = ddmin(&program.ops, max_replays.saturating_sub(1), |ops| {
        replays += 1;
        let candidate = Program { ops: ops.to_vec() };
        let r = replay(target, &candidate.encode(), opts)?;
        let same = r
            .report
            .as_ref()
            .is_some_and(|(k, t)| *k == kind && normalise_title(t) == want);
        eprintln!(
            "fuzz: minimise: replay {replays}: {} ops: {}",
            ops.len(),
            match &r.report {
                Some((k, _)) if same => format!("reproduced ({k}), kept"),
                Some((k, t)) => format!("another report ({k}: {t}), not kept"),
                None => format!("no report ({}), not kept", r.status.describe()),
            }
        );
        Ok(same)
    })?;
    let program = Program { ops };
    let out = output_path(file);
    let mut text = repro_text(target, &kind, &title, &program.encode());
    text.push_str(&format!(
        "# minimised from {} ({before} ops) by {replays} replays{}\n",
        file.display(),
        if budget_spent {
            " (the replay budget ran out: it may shrink further with a larger --max-replays)"
        } else {
            ""
        }
    ));
    coverage::store::write_atomic(&out, text.as_bytes())?;
    Ok(Minimized {
        target,
        kind,
        title,
        before,
        program,
        replays,
        budget_spent,
        file: out,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `ddmin` with an oracle that needs all of `needed`; returns (kept, calls, spent).
    fn run(n: usize, needed: &[usize], budget: u32) -> (Vec<usize>, u32, bool) {
        let items: Vec<usize> = (0..n).collect();
        let mut calls = 0;
        let (kept, spent) = ddmin(&items, budget, |c| {
            calls += 1;
            Ok(needed.iter().all(|x| c.contains(x)))
        })
        .unwrap();
        (kept, calls, spent)
    }

    #[test]
    fn one_op_that_matters_is_found_in_a_few_replays() {
        for at in [0, 7, 12, 23] {
            let (kept, calls, spent) = run(24, &[at], 100);
            assert_eq!(kept, vec![at]);
            assert!(!spent);
            assert!(calls <= 2 * 5, "{at}: {calls} replays");
        }
    }

    #[test]
    fn ops_that_matter_together_all_stay_in_order() {
        let (kept, _, spent) = run(30, &[3, 17, 29], 200);
        assert_eq!(kept, vec![3, 17, 29]);
        assert!(!spent);
        // Every op matters: nothing goes, each is tried.
        let (kept, calls, _) = run(5, &[0, 1, 2, 3, 4], 200);
        assert_eq!(kept, vec![0, 1, 2, 3, 4]);
        assert!(calls <= 10, "{calls}");
    }

    #[test]
    fn the_budget_bounds_the_replays_and_keeps_the_smallest_so_far() {
        // Halves fail (5 and 33 are in different ones), [0, 10) fails, [10, 20) goes.
        let (kept, calls, spent) = run(40, &[5, 33], 4);
        assert_eq!(calls, 4);
        assert!(spent);
        assert_eq!(kept.len(), 30);
        assert!(kept.contains(&5) && kept.contains(&33));
        let (kept, calls, spent) = run(4, &[1], 0);
        assert_eq!((kept, calls, spent), (vec![0, 1, 2, 3], 0, true));
    }

    #[test]
    fn a_flaky_or_failing_oracle_does_not_lose_the_input() {
        // Never reproduces again: the input stays as it is.
        let items: Vec<u8> = (0..9).collect();
        let (kept, spent) = ddmin(&items, 100, |c| {
            assert!(!c.is_empty(), "an empty candidate was tried");
            Ok(false)
        })
        .unwrap();
        assert_eq!((kept, spent), (items.clone(), false));
        // A replay that fails (a boot error) ends minimising with the error.
        let err = ddmin(&items, 100, |_| bail!("boot failed")).unwrap_err();
        assert!(err.to_string().contains("boot failed"));
    }

    #[test]
    fn the_output_sits_next_to_the_input() {
        assert_eq!(
            output_path(Path::new("/c/crashes/000-kasan/repro.txt")),
            PathBuf::from("/c/crashes/000-kasan/repro-min.txt")
        );
        assert_eq!(
            output_path(Path::new("corpus/ab12")),
            PathBuf::from("corpus/ab12-min.txt")
        );
    }
}
