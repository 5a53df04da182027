//! The host's reading of a fuzz campaign's stream (`FuzzInput`, `FuzzStatus` and the
//! campaign's coverage chunks; `coverage::store::Collector` reads the same stream for the
//! store and leaves the fuzz frames to this file), and the campaign's state across VMs:
//! corpus files, the program in flight, PCs and progress points.
//!
//! The stream is hostile: frames are decoded by `kcov_wire::Decoder` (bounded), programs by
//! `Program::decode` (any bytes), counts are capped; a corrupt stream stops being read, it
//! never panics the host.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use coverage::store::write_atomic;
use kcov_wire::program::Program;
use kcov_wire::{Decoder, Frame};
use sha2::{Digest, Sha256};

/// Most distinct PCs a campaign keeps (a hostile stream cannot grow the set beyond it).
pub const MAX_PCS: usize = 8 << 20;

/// One progress point of the campaign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds since the campaign started (host clock).
    pub t: f64,
    /// Executions so far, all VMs.
    pub execs: u64,
    /// Distinct PCs so far, all VMs (remote and local).
    pub pcs: usize,
    /// Distinct remote (vhost worker) PCs so far.
    pub remote: usize,
    /// Corpus files.
    pub corpus: usize,
}

/// A campaign's state on the host.
#[derive(Debug)]
pub struct Campaign {
    /// Where corpus entries go (`<sha256 prefix>.bin`).
    pub corpus_dir: PathBuf,
    /// Names of the corpus files (written or found).
    pub corpus: HashSet<String>,
    /// Distinct PCs of all VMs.
    pub pcs: HashSet<u64>,
    /// The remote ones among them.
    pub remote: HashSet<u64>,
    /// Of the VMs that ended, from their last `FuzzStatus`: microseconds the agents fuzzed
    /// (guest clock), of which they spent `stream_us` sending the stream, and their executions.
    pub agent_us: u64,
    pub stream_us: u64,
    pub agent_execs: u64,
    /// Executions of the VMs that ended.
    pub execs_done: u64,
    /// Progress points.
    pub points: Vec<Point>,
    /// The stream of the current VM.
    vm: Vm,
}

/// The current VM's stream.
#[derive(Debug, Default)]
struct Vm {
    dec: Decoder,
    /// The last program sent (it was running, or the last one run).
    inflight: Option<(u64, Vec<u8>)>,
    /// When its `FuzzInput` was read (seconds since the campaign started).
    inflight_t: f64,
    execs: u64,
    /// The last `FuzzStatus`'s (elapsed_ms, stream_us).
    agent: (u64, u64),
    /// Why this stream is no longer read.
    broken: Option<String>,
}

/// The program a VM was running when it ended, as far as the stream tells.
#[derive(Debug, Clone, PartialEq)]
pub struct InFlight {
    /// Its execution number in that VM.
    pub seq: u64,
    /// Its bytes.
    pub data: Vec<u8>,
    /// When the host read it (seconds since the campaign started): it ran from about then.
    pub t: f64,
}

/// The corpus file name of a program: the first 16 hex digits of its SHA-256.
pub fn corpus_name(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{hex}.bin")
}

impl Campaign {
    /// A campaign writing into `corpus_dir` (created); files already there count as corpus.
    pub fn new(corpus_dir: &Path) -> std::io::Result<Campaign> {
        std::fs::create_dir_all(corpus_dir)?;
        let mut corpus = HashSet::new();
        for e in std::fs::read_dir(corpus_dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".bin") {
                corpus.insert(name);
            }
        }
        Ok(Campaign {
            corpus_dir: corpus_dir.to_path_buf(),
            corpus,
            pcs: HashSet::new(),
            remote: HashSet::new(),
            agent_us: 0,
            stream_us: 0,
            agent_execs: 0,
            execs_done: 0,
            points: Vec::new(),
            vm: Vm::default(),
        })
    }

    /// A new VM's stream starts.
    pub fn start_vm(&mut self) {
        self.vm = Vm::default();
    }

    /// Executions so far, all VMs.
    pub fn execs(&self) -> u64 {
        self.execs_done + self.vm.execs
    }

    /// Why the current stream stopped being read, if it did.
    pub fn broken(&self) -> Option<&str> {
        self.vm.broken.as_deref()
    }

    /// Feeds bytes of the current VM's stream; `t` = seconds since the campaign started.
    /// Returns the corpus files written.
    pub fn feed(&mut self, bytes: &[u8], t: f64) -> Vec<String> {
        let mut written = Vec::new();
        if self.vm.broken.is_some() {
            return written;
        }
        self.vm.dec.feed(bytes);
        loop {
            let frame = match self.vm.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.vm.broken = Some(format!("corrupt stream: {e}"));
                    break;
                }
            };
            match frame {
                Frame::FuzzInput(i) => {
                    self.vm.inflight = Some((i.seq, i.data));
                    self.vm.inflight_t = t;
                }
                Frame::FuzzStatus(s) => {
                    self.vm.execs = self.vm.execs.max(s.execs);
                    self.vm.agent = (s.elapsed_ms, s.stream_us);
                    if s.new_pcs > 0 {
                        if let Some((seq, data)) = &self.vm.inflight {
                            if *seq == s.seq {
                                // Canonical bytes: the same program always gets one name.
                                let bytes = Program::decode(data).encode();
                                let name = corpus_name(&bytes);
                                if !self.corpus.contains(&name)
                                    && write_atomic(&self.corpus_dir.join(&name), &bytes).is_ok()
                                {
                                    self.corpus.insert(name.clone());
                                    written.push(name);
                                }
                            }
                        }
                    }
                    self.points.push(Point {
                        t,
                        execs: self.execs(),
                        pcs: self.pcs.len(),
                        remote: self.remote.len(),
                        corpus: self.corpus.len(),
                    });
                }
                Frame::CoverageChunk(c) => {
                    let step = c.mode.words_per_entry();
                    for pc in c.words.iter().skip(step - 1).step_by(step) {
                        if self.pcs.len() >= MAX_PCS {
                            break;
                        }
                        self.pcs.insert(*pc);
                        if c.source == kcov_wire::CoverageSource::Remote {
                            self.remote.insert(*pc);
                        }
                    }
                }
                _ => {}
            }
        }
        written
    }

    /// The current VM ended: its executions are counted, and the program it was running
    /// (the last one sent) is returned.
    pub fn end_vm(&mut self) -> Option<InFlight> {
        self.execs_done += self.vm.execs;
        self.agent_execs = self.agent_execs.saturating_add(self.vm.execs);
        self.agent_us = self
            .agent_us
            .saturating_add(self.vm.agent.0.saturating_mul(1000));
        self.stream_us = self.stream_us.saturating_add(self.vm.agent.1);
        self.vm.execs = 0;
        self.vm.inflight.take().map(|(seq, data)| InFlight {
            seq,
            data,
            t: self.vm.inflight_t,
        })
    }

    /// Removes a corpus file that crashed the kernel (so later VMs do not replay it).
    pub fn drop_from_corpus(&mut self, data: &[u8]) -> bool {
        let name = corpus_name(&Program::decode(data).encode());
        if self.corpus.remove(&name) {
            let _ = std::fs::remove_file(self.corpus_dir.join(&name));
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcov_wire::program::Target;
    use kcov_wire::{
        encode, CoverageChunk, CoverageSource, FuzzInput, FuzzStatus, Hello, KcovMode,
        WorkloadStart,
    };

    fn status(seq: u64, new_pcs: u32, execs: u64) -> Frame {
        Frame::FuzzStatus(FuzzStatus {
            seq,
            new_pcs,
            execs,
            pcs: 0,
            remote_pcs: 0,
            corpus: 0,
            elapsed_ms: 0,
            stream_us: 0,
        })
    }

    fn stream(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| encode(f).unwrap()).collect()
    }

    fn input(seq: u64, p: &Program) -> Frame {
        Frame::FuzzInput(FuzzInput {
            seq,
            data: p.encode(),
        })
    }

    #[test]
    fn corpus_entries_pcs_and_a_crash_in_the_middle_of_a_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Campaign::new(&dir.path().join("corpus")).unwrap();
        let seed = Program::seed(Target::VhostNet);
        let mut rng = kcov_wire::program::Rng::new(3);
        let second = seed.mutate(&mut rng, Target::VhostNet, None);
        let crasher = second.mutate(&mut rng, Target::VhostNet, None);
        let bytes = stream(&[
            Frame::Hello(Hello {
                agent_version: "t".into(),
                kernel_release: "6.12".into(),
                kcov_mode: KcovMode::Pc,
                area_words: 512,
                common_handle: 1,
            }),
            Frame::WorkloadStart(WorkloadStart {
                name: "fuzz-vhost-net".into(),
            }),
            input(0, &seed),
            Frame::CoverageChunk(CoverageChunk {
                workload: "fuzz-vhost-net".into(),
                source: CoverageSource::Remote,
                mode: KcovMode::Pc,
                seq: 0,
                overflow: false,
                words: vec![10, 11, 12],
            }),
            status(0, 3, 1),
            input(1, &second),
            status(1, 0, 2),
            input(2, &crasher),
        ]);
        // The VM dies in the middle of a frame after the crasher was sent.
        let mut cut = bytes.clone();
        cut.extend_from_slice(&encode(&status(2, 5, 3)).unwrap()[..9]);
        for piece in cut.chunks(7) {
            c.feed(piece, 1.0);
        }
        assert_eq!(c.corpus.len(), 1, "only the seed added PCs");
        assert!(dir
            .path()
            .join("corpus")
            .join(corpus_name(&seed.encode()))
            .is_file());
        assert_eq!(c.pcs.len(), 3);
        assert_eq!(c.remote.len(), 3);
        assert_eq!(c.execs(), 2);
        assert!(c.broken().is_none(), "a cut frame is not corruption");
        let inflight = c.end_vm().unwrap();
        assert_eq!(inflight.seq, 2);
        assert_eq!(Program::decode(&inflight.data), crasher);
        assert_eq!(c.execs_done, 2);

        // The next VM: garbage after a good frame stops the reading, without a panic.
        c.start_vm();
        let mut junk = stream(&[input(0, &second)]);
        junk.extend_from_slice(b"not a frame at all, hostile");
        c.feed(&junk, 2.0);
        assert!(c.broken().is_some());
        assert_eq!(c.end_vm().unwrap().seq, 0);

        // A corpus entry that crashed the kernel leaves the corpus.
        assert!(c.drop_from_corpus(&seed.encode()));
        assert!(c.corpus.is_empty());
        assert_eq!(
            Campaign::new(&dir.path().join("corpus"))
                .unwrap()
                .corpus
                .len(),
            0
        );
    }

    #[test]
    fn random_streams_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = kcov_wire::program::Rng::new(11);
        let good = stream(&[
            input(0, &Program::seed(Target::VhostVsock)),
            status(0, 1, 1),
        ]);
        for _ in 0..2000 {
            let mut c = Campaign::new(dir.path()).unwrap();
            let mut b = good.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            c.feed(&b, 0.0);
            c.end_vm();
        }
    }
}
