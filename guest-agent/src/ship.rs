//! Shipping a workload's kcov area as `CoverageChunk` frames: in pieces while the workload
//! runs (snapshots), and the rest once it ended.
//!
//! The agent's main thread holds a shared handle of the area the workload thread's kcov fd
//! maps ([`frontends::kcov::Kcov::shared_area`]) and, every `testbed.snapshot_ms`, ships the
//! entries the kernel appended since the last shipment; after the workload it ships the
//! rest. An [`AreaCursor`] makes each entry go out exactly once and in area order, and the
//! chunks' `seq` numbers run on across shipments, so the host sees the same stream of words
//! a single drain at the end would give, only cut into more chunks. Should the run end while
//! the workload runs (a hang, a host timeout, a kernel panic), the host has its coverage up
//! to the last snapshot.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use frontends::kcov::{AreaCursor, AreaWords, MappedArea, TraceMode};
use kcov_wire::{chunk_coverage, CoverageSource, Frame, KcovMode};

/// Where shipped frames go (the agent's stream).
pub trait FrameSink {
    /// Writes one frame (buffered).
    fn send(&mut self, frame: Frame) -> Result<(), String>;
    /// Pushes everything written so far to the host.
    fn flush(&mut self) -> Result<(), String>;
}

/// A workload's kcov area, handed to the shipping thread once its fd is enabled: the shared
/// mapping, the mode it is filled in, and whose coverage it holds (the vhost workers under
/// the common handle, or the workload's own syscalls).
pub type AreaNote = (Arc<MappedArea>, KcovMode, CoverageSource);

/// The kcov trace mode of a wire (plan, frame) mode: the agent's boundary between
/// `kcov_wire` and `frontends::kcov`.
pub fn trace_mode(mode: KcovMode) -> TraceMode {
    match mode {
        KcovMode::Pc => TraceMode::Pc,
        KcovMode::Cmp => TraceMode::Cmp,
    }
}

/// Ships the coverage of the workload running on `thread` while it runs, then the rest.
///
/// The workload's threads send their areas on `areas` once their kcov fds are enabled (the
/// remote one, and the local one of the thread that drives the device) and drop the senders
/// when they end (return or panic). Meanwhile, every `period` (none: no snapshots) the
/// areas' new entries go to `sink` and are flushed, so the host has them even if the
/// workload never ends. Once the thread ended (its kcov fds disabled) the rest is shipped
/// and flushed. Returns the thread's result and a [`Shipper`] per area that came, in the
/// order they came; errors are the sink's.
pub fn ship_while_running<T, S: FrameSink + ?Sized>(
    workload: &str,
    period: Option<Duration>,
    max_words: usize,
    thread: JoinHandle<T>,
    areas: &Receiver<AreaNote>,
    sink: &mut S,
) -> Result<(std::thread::Result<T>, Vec<Shipper>), String> {
    let mut shipped: Vec<(Arc<MappedArea>, Shipper)> = Vec::new();
    let mut next = period.map(|p| Instant::now() + p);
    loop {
        let note = match next {
            Some(at) => areas.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => areas.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match note {
            Ok((a, mode, source)) => {
                let shipper = Shipper::of_source(workload, source, mode, max_words);
                shipped.push((a, shipper));
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut sent = 0;
                for (a, shipper) in &mut shipped {
                    sent += shipper.ship(&**a, Shipment::Snapshot, |f| sink.send(f))?;
                }
                if sent > 0 {
                    sink.flush()?;
                }
                next = period.map(|p| Instant::now() + p);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let result = thread.join();
    // The workload thread closed its kcov fds; our handles keep the areas mapped.
    for (a, shipper) in &mut shipped {
        shipper.ship(&**a, Shipment::Final, |f| sink.send(f))?;
    }
    sink.flush()?;
    Ok((result, shipped.into_iter().map(|(_, s)| s).collect()))
}

/// Which shipment of a workload's area this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipment {
    /// While the workload runs: only entries known to be written; nothing new sends nothing.
    Snapshot,
    /// After the workload ended (its kcov fd disabled): everything counted that is left.
    Final,
}

/// Ships one workload's area incrementally; see the module docs.
#[derive(Debug)]
pub struct Shipper {
    workload: String,
    source: CoverageSource,
    mode: KcovMode,
    cursor: AreaCursor,
    max_words: usize,
    next_seq: u32,
    chunks: u64,
    entries: u64,
    overflow: bool,
    overflow_sent: bool,
    snapshots: u64,
    busy: Duration,
}

impl Shipper {
    /// A shipper for the remote coverage of `workload`, read in `mode`, at most `max_words`
    /// words per chunk.
    pub fn new(workload: &str, mode: KcovMode, max_words: usize) -> Self {
        Self::of_source(workload, CoverageSource::Remote, mode, max_words)
    }

    /// A shipper for the `source` coverage of `workload` (remote, or the local coverage of
    /// the thread that drives the device).
    pub fn of_source(
        workload: &str,
        source: CoverageSource,
        mode: KcovMode,
        max_words: usize,
    ) -> Self {
        Shipper {
            workload: workload.to_string(),
            source,
            mode,
            cursor: AreaCursor::new(trace_mode(mode)),
            max_words,
            next_seq: 0,
            chunks: 0,
            entries: 0,
            overflow: false,
            overflow_sent: false,
            snapshots: 0,
            busy: Duration::ZERO,
        }
    }

    /// Ships what `area` gained since the last shipment through `send`, as chunks numbered
    /// on from the last one. A snapshot sends only when there is something new (entries, or
    /// the news that the area overflowed); the final shipment sends at least one chunk for
    /// the workload (an empty one when nothing was sent before), so the host learns that the
    /// area was drained. Returns the chunks sent.
    pub fn ship<A, F>(&mut self, area: &A, when: Shipment, mut send: F) -> Result<usize, String>
    where
        A: AreaWords + ?Sized,
        F: FnMut(Frame) -> Result<(), String>,
    {
        let start = Instant::now();
        let new = self.cursor.take_new(area, when == Shipment::Final);
        self.overflow |= new.overflow;
        let news = !new.words.is_empty()
            || (self.overflow && !self.overflow_sent)
            || (when == Shipment::Final && self.chunks == 0);
        if !news {
            self.busy += start.elapsed();
            return Ok(0);
        }
        let chunks = chunk_coverage(
            &self.workload,
            self.source,
            self.mode,
            self.overflow,
            &new.words,
            self.next_seq,
            self.max_words,
        )
        .map_err(|e| format!("chunking the coverage of {}: {e}", self.workload))?;
        let mut sent = 0;
        for chunk in chunks {
            self.next_seq = chunk.seq.wrapping_add(1);
            self.entries += chunk.entry_count() as u64;
            send(Frame::CoverageChunk(chunk))?;
            sent += 1;
            self.chunks += 1;
        }
        self.overflow_sent |= self.overflow;
        if when == Shipment::Snapshot {
            self.snapshots += 1;
        }
        self.busy += start.elapsed();
        Ok(sent)
    }

    /// Whose coverage it ships.
    pub fn source(&self) -> CoverageSource {
        self.source
    }

    /// Entries (PCs, or CMP records) shipped so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The area overflowed (coverage was lost).
    pub fn overflow(&self) -> bool {
        self.overflow
    }

    /// Chunks shipped so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Snapshots that sent something.
    pub fn snapshots(&self) -> u64 {
        self.snapshots
    }

    /// Time spent reading the area and writing its frames, all shipments together.
    pub fn busy(&self) -> Duration {
        self.busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frontends::kcov::parse_area;

    #[test]
    fn wire_modes_are_the_kernels_trace_modes() {
        for m in [KcovMode::Pc, KcovMode::Cmp] {
            assert_eq!(trace_mode(m) as u32, m as u32);
            assert_eq!(trace_mode(m).words_per_entry(), m.words_per_entry());
        }
    }
    use kcov_wire::CoverageChunk;

    fn ship(s: &mut Shipper, area: &[u64], when: Shipment) -> Vec<CoverageChunk> {
        let mut out = Vec::new();
        s.ship(area, when, |f| match f {
            Frame::CoverageChunk(c) => {
                out.push(c);
                Ok(())
            }
            other => Err(format!("not a chunk: {other:?}")),
        })
        .unwrap();
        out
    }

    fn words(chunks: &[CoverageChunk]) -> Vec<u64> {
        chunks
            .iter()
            .flat_map(|c| c.words.iter().copied())
            .collect()
    }

    #[test]
    fn snapshots_ship_only_new_entries_and_seq_runs_on() {
        let mut area = vec![0u64; 64];
        let mut s = Shipper::new("cmd", KcovMode::Pc, 4);
        assert!(
            ship(&mut s, &area, Shipment::Snapshot).is_empty(),
            "nothing yet"
        );
        let mut all = Vec::new();
        // Remote sections land in bursts between snapshots (entries, then the count).
        let mut next = 1usize;
        for burst in [3usize, 0, 9, 1, 0, 5] {
            for _ in 0..burst {
                area[next] = 0xffff_0000 + next as u64;
                next += 1;
            }
            area[0] = (next - 1) as u64;
            let got = ship(&mut s, &area, Shipment::Snapshot);
            assert_eq!(got.is_empty(), burst == 0, "burst {burst}: {got:?}");
            assert!(got.iter().all(|c| c.words.len() <= 4 && !c.overflow));
            all.extend(got);
        }
        area[next] = 0xffff_0000 + next as u64;
        area[0] = next as u64;
        let last = ship(&mut s, &area, Shipment::Final);
        assert_eq!(words(&last), [0xffff_0000 + next as u64]);
        all.extend(last);
        // seq 0, 1, 2, ... across all shipments; every entry once, in area order: exactly
        // the words one drain at the end would have shipped.
        let seqs: Vec<u32> = all.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (0..all.len() as u32).collect::<Vec<_>>());
        assert_eq!(words(&all), parse_area(&area, TraceMode::Pc).words);
        assert!(all.iter().all(|c| c.workload == "cmd"
            && c.source == CoverageSource::Remote
            && c.mode == KcovMode::Pc));
        assert_eq!(s.entries(), next as u64);
        assert_eq!(s.chunks(), all.len() as u64);
        assert_eq!(s.snapshots(), 4);
        assert!(!s.overflow());
        // Nothing after the final shipment.
        assert!(ship(&mut s, &area, Shipment::Final).is_empty());
    }

    #[test]
    fn final_shipment_of_an_empty_area_is_one_empty_chunk() {
        let area = vec![0u64; 8];
        let mut s = Shipper::new("w", KcovMode::Pc, 4096);
        assert!(ship(&mut s, &area, Shipment::Snapshot).is_empty());
        let last = ship(&mut s, &area, Shipment::Final);
        assert_eq!(last.len(), 1);
        assert!(last[0].words.is_empty() && last[0].seq == 0 && !last[0].overflow);
        // One that already shipped sends no empty tail.
        let mut area = vec![0u64; 8];
        area[1] = 7;
        area[0] = 1;
        let mut s = Shipper::new("w", KcovMode::Pc, 4096);
        assert_eq!(ship(&mut s, &area, Shipment::Snapshot).len(), 1);
        assert!(ship(&mut s, &area, Shipment::Final).is_empty());
    }

    #[test]
    fn unwritten_entries_wait_for_a_later_shipment() {
        // Local-style writer: counted, pc not stored yet.
        let mut area = vec![0u64; 16];
        area[1] = 0x10;
        area[0] = 2;
        let mut s = Shipper::new("w", KcovMode::Pc, 4096);
        assert_eq!(words(&ship(&mut s, &area, Shipment::Snapshot)), [0x10]);
        assert!(ship(&mut s, &area, Shipment::Snapshot).is_empty());
        area[2] = 0x20;
        assert_eq!(words(&ship(&mut s, &area, Shipment::Snapshot)), [0x20]);
        assert_eq!(s.entries(), 2);
    }

    #[test]
    fn overflow_is_flagged_once_known_and_in_cmp_mode_too() {
        // 9 words: count + 2 CMP entries.
        let mut area = vec![0u64; 9];
        area[1..5].copy_from_slice(&[1, 2, 3, 0xa]);
        area[0] = 1;
        let mut s = Shipper::new("w", KcovMode::Cmp, 4);
        let first = ship(&mut s, &area, Shipment::Snapshot);
        assert_eq!(first.len(), 1);
        assert!(!first[0].overflow);
        area[5..9].copy_from_slice(&[4, 5, 6, 0xb]);
        area[0] = 7; // more than fits: full
        let second = ship(&mut s, &area, Shipment::Snapshot);
        assert_eq!(second.len(), 1);
        assert!(second[0].overflow);
        assert_eq!(second[0].words, [4, 5, 6, 0xb]);
        assert!(s.overflow());
        // Already said: the final shipment has nothing to add.
        assert!(ship(&mut s, &area, Shipment::Final).is_empty());
        assert_eq!(s.entries(), 2);
    }

    /// A sink that records frames and flushes, and tells `on_flush` after each flush that
    /// carried chunks.
    struct Recorder {
        frames: Vec<(CoverageChunk, bool)>,
        flushes: usize,
        on_flush: Option<std::sync::mpsc::Sender<usize>>,
    }

    impl FrameSink for Recorder {
        fn send(&mut self, frame: Frame) -> Result<(), String> {
            match frame {
                Frame::CoverageChunk(c) => self.frames.push((c, false)),
                other => return Err(format!("not a chunk: {other:?}")),
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<(), String> {
            self.flushes += 1;
            let mut newly = 0;
            for f in self.frames.iter_mut().filter(|f| !f.1) {
                f.1 = true;
                newly += f.0.words.len();
            }
            if let Some(tx) = &self.on_flush {
                let _ = tx.send(newly);
            }
            Ok(())
        }
    }

    fn recorder(on_flush: Option<std::sync::mpsc::Sender<usize>>) -> Recorder {
        Recorder {
            frames: Vec::new(),
            flushes: 0,
            on_flush,
        }
    }

    /// Appends `pcs` the way kcov_move_area does: entries first, then the count.
    fn land(area: &MappedArea, pcs: &[u64]) {
        let n = area.count() as usize;
        for (i, pc) in pcs.iter().enumerate() {
            area.write_word(n + 1 + i, *pc);
        }
        area.write_word(0, (n + pcs.len()) as u64);
    }

    #[test]
    fn snapshots_flush_a_running_workloads_coverage() {
        use std::sync::mpsc::channel;
        let (area_tx, area_rx) = channel::<AreaNote>();
        let (flushed_tx, flushed_rx) = channel::<usize>();
        // The workload lands 3 PCs, then waits until a snapshot with them was flushed (as a
        // hung workload would wait forever), then lands 2 more and ends.
        let t = std::thread::spawn(move || {
            let area = Arc::new(MappedArea::anonymous(512).unwrap());
            area_tx
                .send((Arc::clone(&area), KcovMode::Pc, CoverageSource::Remote))
                .unwrap();
            land(&area, &[0xa1, 0xa2, 0xa3]);
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut seen = 0;
            while seen < 3 && Instant::now() < deadline {
                if let Ok(n) = flushed_rx.recv_timeout(Duration::from_millis(50)) {
                    seen += n;
                }
            }
            land(&area, &[0xa4, 0xa5]);
            seen
        });
        let mut sink = recorder(Some(flushed_tx));
        let (result, shipper) = ship_while_running(
            "w",
            Some(Duration::from_millis(10)),
            4096,
            t,
            &area_rx,
            &mut sink,
        )
        .unwrap();
        assert_eq!(
            result.unwrap(),
            3,
            "the running workload's PCs were flushed"
        );
        let [shipper] = &shipper[..] else {
            panic!("one area")
        };
        assert!(shipper.snapshots() >= 1);
        assert_eq!(shipper.entries(), 5);
        let all: Vec<u64> = sink.frames.iter().flat_map(|f| f.0.words.clone()).collect();
        assert_eq!(all, [0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
        let seqs: Vec<u32> = sink.frames.iter().map(|f| f.0.seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>());
        assert!(sink.frames.iter().all(|f| f.1), "everything flushed");
    }

    #[test]
    fn without_snapshots_everything_goes_at_the_end() {
        use std::sync::mpsc::channel;
        let (area_tx, area_rx) = channel::<AreaNote>();
        let t = std::thread::spawn(move || {
            let area = Arc::new(MappedArea::anonymous(512).unwrap());
            area_tx
                .send((Arc::clone(&area), KcovMode::Pc, CoverageSource::Remote))
                .unwrap();
            for pc in 1..=40u64 {
                land(&area, &[pc]);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let mut sink = recorder(None);
        let (result, shipper) = ship_while_running("w", None, 16, t, &area_rx, &mut sink).unwrap();
        result.unwrap();
        assert_eq!(shipper[0].snapshots(), 0);
        assert_eq!(sink.flushes, 1);
        let sizes: Vec<usize> = sink.frames.iter().map(|f| f.0.words.len()).collect();
        assert_eq!(sizes, [16, 16, 8]);
    }

    #[test]
    fn remote_and_local_areas_ship_side_by_side() {
        use std::sync::mpsc::channel;
        let (area_tx, area_rx) = channel::<AreaNote>();
        let t = std::thread::spawn(move || {
            let remote = Arc::new(MappedArea::anonymous(512).unwrap());
            let local = Arc::new(MappedArea::anonymous(512).unwrap());
            let note = |a: &Arc<MappedArea>, s| (Arc::clone(a), KcovMode::Pc, s);
            area_tx.send(note(&remote, CoverageSource::Remote)).unwrap();
            area_tx.send(note(&local, CoverageSource::Local)).unwrap();
            for i in 0..10u64 {
                land(&remote, &[0x100 + i]);
                land(&local, &[0x200 + i, 0x300 + i]);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let mut sink = recorder(None);
        let (result, shippers) = ship_while_running(
            "w",
            Some(Duration::from_millis(3)),
            4,
            t,
            &area_rx,
            &mut sink,
        )
        .unwrap();
        result.unwrap();
        let sources: Vec<_> = shippers.iter().map(|s| (s.source(), s.entries())).collect();
        assert_eq!(
            sources,
            [(CoverageSource::Remote, 10), (CoverageSource::Local, 20)]
        );
        for (source, want) in [
            (CoverageSource::Remote, (0..10).map(|i| 0x100 + i).collect()),
            (
                CoverageSource::Local,
                (0..10)
                    .flat_map(|i| [0x200 + i, 0x300 + i])
                    .collect::<Vec<u64>>(),
            ),
        ] {
            let mine: Vec<&CoverageChunk> = sink
                .frames
                .iter()
                .map(|f| &f.0)
                .filter(|c| c.source == source)
                .collect();
            let seqs: Vec<u32> = mine.iter().map(|c| c.seq).collect();
            assert_eq!(
                seqs,
                (0..seqs.len() as u32).collect::<Vec<_>>(),
                "{source:?}"
            );
            let words: Vec<u64> = mine.iter().flat_map(|c| c.words.clone()).collect();
            assert_eq!(words, want, "{source:?}");
        }
    }

    #[test]
    fn a_panicking_workload_still_ships_its_area() {
        use std::sync::mpsc::channel;
        let (area_tx, area_rx) = channel::<AreaNote>();
        let t = std::thread::spawn(move || {
            let area = Arc::new(MappedArea::anonymous(512).unwrap());
            area_tx
                .send((Arc::clone(&area), KcovMode::Pc, CoverageSource::Remote))
                .unwrap();
            land(&area, &[0xb1, 0xb2]);
            drop(area);
            panic!("workload went wrong");
        });
        let mut sink = recorder(None);
        let (result, shipper) = ship_while_running(
            "w",
            Some(Duration::from_secs(60)),
            4096,
            t,
            &area_rx,
            &mut sink,
        )
        .unwrap();
        assert!(result.is_err());
        assert_eq!(shipper[0].entries(), 2);
        assert_eq!(sink.frames[0].0.words, [0xb1, 0xb2]);
        // A thread that ends before any area (coverage off, enable failed): nothing shipped.
        let (_tx, rx) = channel::<AreaNote>();
        drop(_tx);
        let t = std::thread::spawn(|| 7);
        let mut sink = recorder(None);
        let (result, shipper) =
            ship_while_running("w", Some(Duration::from_millis(1)), 16, t, &rx, &mut sink).unwrap();
        assert_eq!(result.unwrap(), 7);
        assert!(shipper.is_empty() && sink.frames.is_empty());
    }

    #[test]
    fn a_failed_send_is_an_error() {
        let mut area = [0u64; 8];
        area[1] = 1;
        area[0] = 1;
        let mut s = Shipper::new("w", KcovMode::Pc, 4096);
        let e = s
            .ship(&area[..], Shipment::Snapshot, |_| Err("host gone".into()))
            .unwrap_err();
        assert_eq!(e, "host gone");
    }
}
