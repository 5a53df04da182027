//! `cargo xtask fuzz TARGET --cmin --corpus DIR [--out NEW]`: a smaller corpus with the same
//! coverage. The corpus's distinct programs are replayed in one VM, smallest first, with no
//! mutation; the agent reports each program that adds PCs to what the VM has seen (the same
//! test that makes a campaign keep an input), and only those are written to NEW. Every PC the
//! replay saw was first reached by a kept program, so the kept ones cover it (within the run
//! to run variation of the vhost workers' timing).
//!
//! A program that crashes the kernel is left out and named (its file is still in DIR); the
//! next VM replays what was kept so far (to see the same PCs again) and then the programs not
//! yet run. DIR is only read: NEW must be a new or empty directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kcov_wire::program::Program;

use super::stream::{corpus_name, Campaign};
use super::{replay_boot_opts, run_vm, FuzzOpts, DEADLINE_GRACE, MAX_PROGRAM_FILE};

/// Boots that ran no program in a row before minimising gives up.
const MAX_IDLE_VMS: u32 = 3;

/// What minimising the corpus did.
#[derive(Debug)]
pub struct Cmin {
    /// Files read from the corpus directory.
    pub files: usize,
    /// Distinct programs among them (canonical bytes).
    pub distinct: usize,
    /// Programs written to the output directory.
    pub kept: usize,
    pub out: PathBuf,
    /// Distinct PCs (remote and local) the replay saw, and the remote ones among them.
    pub pcs: usize,
    pub remote: usize,
    /// Programs that crashed the kernel: (file name in the corpus, kind, title).
    pub crashed: Vec<(String, String, String)>,
    pub vms: u32,
    pub elapsed: Duration,
}

/// A corpus program: its file name and its canonical bytes.
pub type Named = (String, Vec<u8>);

/// The number of corpus files, and their programs, one per distinct program, in the order
/// they are replayed: fewest ops first, then shortest, then by name.
pub fn distinct_programs(dir: &Path) -> Result<(usize, Vec<Named>)> {
    let mut files = 0;
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(usize, String, Vec<u8>)> = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the corpus directory {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if !e.file_type()?.is_file() {
            continue;
        }
        let bytes = std::fs::read(e.path())?;
        if bytes.len() > MAX_PROGRAM_FILE {
            eprintln!(
                "fuzz: cmin: skipping {}: {} bytes is no program",
                e.path().display(),
                bytes.len()
            );
            continue;
        }
        files += 1;
        let program = Program::decode(&bytes);
        let canonical = program.encode();
        if seen.insert(canonical.clone()) {
            out.push((
                program.ops.len(),
                e.file_name().to_string_lossy().into_owned(),
                canonical,
            ));
        }
    }
    out.sort_by(|a, b| (a.0, a.2.len(), &a.1).cmp(&(b.0, b.2.len(), &b.1)));
    Ok((files, out.into_iter().map(|(_, n, d)| (n, d)).collect()))
}

/// Minimises `corpus` into `out` (see the module's text).
pub fn cmin(opts: &FuzzOpts, corpus: &Path, out: &Path) -> Result<Cmin> {
    let started = Instant::now();
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("{}", out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "--out {}: not empty (the minimised corpus goes into a new or empty directory)",
            out.display()
        );
    }
    let (files, programs) = distinct_programs(corpus)?;
    if programs.is_empty() {
        bail!("{}: no corpus files to minimise", corpus.display());
    }
    eprintln!(
        "fuzz: cmin: {} files in {}, {} distinct programs, replayed smallest first on {}",
        files,
        corpus.display(),
        programs.len(),
        opts.target
    );
    let mut camp = Campaign::new(out).with_context(|| format!("{}", out.display()))?;
    let mut pending: Vec<Named> = programs.clone();
    let mut crashed = Vec::new();
    let (mut vms, mut idle) = (0u32, 0u32);
    let stage_root = tempfile::tempdir()?;
    while !pending.is_empty() {
        // What this VM replays: the kept programs (to see their PCs again), then the rest.
        let kept: Vec<Vec<u8>> = programs
            .iter()
            .filter(|(_, d)| camp.corpus.contains(&corpus_name(d)))
            .map(|(_, d)| d.clone())
            .collect();
        let stage = stage_root.path().join(format!("vm{vms}"));
        std::fs::create_dir_all(&stage)?;
        let order: Vec<&Vec<u8>> = kept.iter().chain(pending.iter().map(|(_, d)| d)).collect();
        for (i, d) in order.iter().enumerate() {
            std::fs::write(stage.join(format!("{i:05}.bin")), d)?;
        }
        // Tens of ms a program under TCG, and a minute for the one the watchdog may end.
        let run = Duration::from_secs(60) + Duration::from_millis(500) * order.len() as u32;
        let bopts = replay_boot_opts(opts.target, &stage, run, opts);
        let start = Instant::now();
        let deadline = start + opts.boot_timeout + bopts.timeouts.run + DEADLINE_GRACE;
        let before = camp.execs();
        let end = run_vm(&bopts, &mut camp, start, deadline, opts, false)?;
        vms += 1;
        let ran = (camp.execs() - before) as usize;
        let inflight = camp.end_vm();
        let console = std::fs::read_to_string(end.run_dir.join("serial.log")).unwrap_or_default();
        let verdict = end.verdict(&console);
        let kept_n = kept.len();
        match verdict {
            None => {
                if ran < order.len() {
                    bail!(
                        "the VM ended cleanly after {ran} of {} programs (run directory {})",
                        order.len(),
                        end.run_dir.display()
                    );
                }
                pending.clear();
            }
            Some((kind, title)) => {
                // The program in flight crashed the kernel; those before it ran.
                let crashed_at = inflight
                    .as_ref()
                    .and_then(|f| order.iter().position(|d| **d == f.data));
                match crashed_at {
                    Some(i) if i >= kept_n => {
                        let (name, _) = pending.remove(i - kept_n);
                        eprintln!(
                            "fuzz: cmin: {name} crashes the kernel ({kind}: {title}): left out"
                        );
                        crashed.push((name, kind, title));
                        pending.drain(..i - kept_n);
                        idle = 0;
                    }
                    Some(_) => bail!(
                        "a program kept a moment ago crashed the kernel on its replay ({kind}: {title}; run directory {})",
                        end.run_dir.display()
                    ),
                    None => {
                        idle += 1;
                        eprintln!(
                            "fuzz: cmin: the VM ended ({kind}: {title}) with no program of the corpus in flight; booting again ({idle} of {MAX_IDLE_VMS})"
                        );
                        if idle >= MAX_IDLE_VMS {
                            bail!(
                                "{MAX_IDLE_VMS} VMs in a row ended without running the corpus (last: {kind}: {title}; run directory {})",
                                end.run_dir.display()
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(Cmin {
        files,
        distinct: programs.len(),
        kept: camp.corpus.len(),
        out: out.to_path_buf(),
        pcs: camp.pcs.len(),
        remote: camp.remote.len(),
        crashed,
        vms,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcov_wire::program::{Op, Target};

    #[test]
    fn programs_are_read_once_each_smallest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let seed = Program::seed(Target::VhostNet);
        let small = Program {
            ops: vec![Op::Open { slot: 0 }, Op::SetOwner { slot: 0 }],
        };
        std::fs::write(tmp.path().join("a.bin"), seed.encode()).unwrap();
        std::fs::write(tmp.path().join("b.bin"), small.encode()).unwrap();
        // The same program again under another name: one distinct program.
        std::fs::write(tmp.path().join("c.bin"), seed.encode()).unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        let (files, programs) = distinct_programs(tmp.path()).unwrap();
        assert_eq!(files, 3);
        let names: Vec<&str> = programs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b.bin", "a.bin"]);
        assert_eq!(programs[1].1, seed.encode());
        assert!(distinct_programs(&tmp.path().join("missing")).is_err());
    }
}
