//! Area parsing (pure): what to copy out of an area ([`plan_drain`], [`parse_area`]), the
//! copied [`Coverage`], incremental reads of a live area ([`AreaCursor`]) and CMP entries.

use super::uapi::{TraceMode, KCOV_CMP_CONST, KCOV_CMP_SIZE_MASK};

/// What to copy out of an area whose word 0 (kernel-written, untrusted) says `reported_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// Entries to copy (reported count clamped to the area's capacity).
    pub entries: usize,
    /// Words to copy, starting at word 1 (`entries * words_per_entry`).
    pub words: usize,
    /// The area has no room for another entry: the kernel may have dropped coverage.
    pub overflow: bool,
}

/// Decides what to copy from an area of `area_words` words (including the count word).
///
/// Capacity is `(area_words - 1) / words_per_entry` entries. Overflow is reported when
/// `reported_count >= capacity`, i.e. no further entry fits: in PC mode that is
/// `count >= area_words - 1`; in CMP mode it includes `count * 4 + 1 >= area_words` and also
/// catches a full area whose size is not `4k + 1`. A count beyond capacity (corrupt or racing)
/// is clamped.
pub fn plan_drain(reported_count: u64, area_words: usize, mode: TraceMode) -> DrainPlan {
    let wpe = mode.words_per_entry();
    let capacity = area_words.saturating_sub(1) / wpe;
    let count = usize::try_from(reported_count).unwrap_or(usize::MAX);
    let entries = count.min(capacity);
    DrainPlan {
        entries,
        words: entries * wpe,
        overflow: count >= capacity,
    }
}

/// Coverage copied out of a kcov area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Trace mode the area was filled in.
    pub mode: TraceMode,
    /// Raw entry words after the count word: PCs, or 4 words per CMP entry.
    pub words: Vec<u64>,
    /// The area was full: coverage may be missing.
    pub overflow: bool,
    /// Word 0 as the kernel wrote it (before clamping).
    pub reported_count: u64,
}

impl Coverage {
    /// Number of entries (PCs or comparisons).
    pub fn entry_count(&self) -> usize {
        self.words.len() / self.mode.words_per_entry()
    }

    /// True if no entries were collected.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// PCs: every word in PC mode, the `pc` of each entry in CMP mode.
    pub fn pcs(&self) -> impl Iterator<Item = u64> + '_ {
        let (skip, step) = match self.mode {
            TraceMode::Pc => (0, 1),
            TraceMode::Cmp => (3, 4),
        };
        self.words.iter().copied().skip(skip).step_by(step)
    }

    /// CMP entries (empty in PC mode).
    pub fn cmp_entries(&self) -> impl Iterator<Item = CmpEntry> + '_ {
        let words: &[u64] = match self.mode {
            TraceMode::Pc => &[],
            TraceMode::Cmp => &self.words,
        };
        parse_cmp(words)
    }
}

/// Parses an area snapshot (`area[0]` = count, entries follow). Pure: used on in-memory copies
/// and in tests; [`Kcov::drain`](crate::kcov::Kcov::drain) applies the same [`plan_drain`] to the live mapping.
pub fn parse_area(area: &[u64], mode: TraceMode) -> Coverage {
    let reported_count = area.first().copied().unwrap_or(0);
    let plan = plan_drain(reported_count, area.len(), mode);
    Coverage {
        mode,
        words: area.iter().skip(1).take(plan.words).copied().collect(),
        overflow: plan.overflow,
        reported_count,
    }
}

/// Word access to a kcov area (word 0 = count, entries follow), as an [`AreaCursor`] reads it.
/// Implemented by the live mapping ([`MappedArea`](crate::kcov::MappedArea): word 0 an acquire load, entries relaxed
/// atomic loads) and by plain slices (tests, in-memory copies).
pub trait AreaWords {
    /// Area size in words, including the count word.
    fn area_len(&self) -> usize;
    /// Word `i` (`i < area_len()`); word 0 is the kernel's entry count (untrusted).
    fn area_word(&self, i: usize) -> u64;
}

impl AreaWords for [u64] {
    fn area_len(&self) -> usize {
        self.len()
    }
    fn area_word(&self, i: usize) -> u64 {
        self.get(i).copied().unwrap_or(0)
    }
}

/// What one [`AreaCursor::take_new`] read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewEntries {
    /// Raw words of the entries appended since the last read (whole entries, in area order).
    pub words: Vec<u64>,
    /// The area is full (see [`plan_drain`]): the kernel may have dropped coverage.
    pub overflow: bool,
    /// Counted entries left for a later read because their pc word still reads 0 (a local
    /// writer bumps the count before it stores the pc).
    pub held_back: usize,
}

/// Reads a kcov area incrementally while the kernel still appends to it: each
/// [`take_new`](Self::take_new) returns the entries after those already taken, so shipping
/// every result in turn ships each entry exactly once, in area order.
///
/// When an entry may be taken: remote sections are copied into the area by
/// `kcov_move_area()` at `kcov_remote_stop()`, entries first and the count after (x86 keeps
/// the stores in order), so every counted entry is written. Local tracing
/// (`__sanitizer_cov_trace_pc`, `write_comp_data`) stores the count *before* the entry, so a
/// freshly counted slot may still read 0: an entry whose pc word (the last of its words) is
/// 0, and everything after it, is held back until a later read — no kernel PC is 0. The
/// last read after the writer stopped (`final_read`) takes every counted entry as it is, as a
/// one-shot drain would.
///
/// Nothing here resets the area; a count below what was taken (someone reset it) yields
/// nothing until it grows past the taken part again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaCursor {
    mode: TraceMode,
    /// Words after the count word already taken (a multiple of the entry size).
    taken: usize,
}

impl AreaCursor {
    /// A cursor at the start of a fresh area filled in `mode`.
    pub fn new(mode: TraceMode) -> Self {
        AreaCursor { mode, taken: 0 }
    }

    /// Trace mode the cursor reads.
    pub fn mode(&self) -> TraceMode {
        self.mode
    }

    /// Words (after the count word) taken so far.
    pub fn taken_words(&self) -> usize {
        self.taken
    }

    /// The entries appended since the last call. Reads word 0 once (clamped with
    /// [`plan_drain`], so never past the area), then the new entries' words.
    pub fn take_new<A: AreaWords + ?Sized>(&mut self, area: &A, final_read: bool) -> NewEntries {
        let len = area.area_len();
        let plan = plan_drain(area.area_word(0), len, self.mode);
        let wpe = self.mode.words_per_entry();
        let mut out = NewEntries {
            overflow: plan.overflow,
            ..NewEntries::default()
        };
        let end = plan.words;
        if end <= self.taken {
            return out;
        }
        out.words.reserve(end - self.taken);
        let mut pos = self.taken;
        while pos < end {
            // Entry words are area words 1 + pos .. 1 + pos + wpe; end < len, so in bounds.
            let pc = area.area_word(pos + wpe);
            if pc == 0 && !final_read {
                out.held_back = (end - pos) / wpe;
                break;
            }
            out.words.extend((1..=wpe).map(|k| area.area_word(pos + k)));
            pos += wpe;
        }
        self.taken = pos;
        out
    }
}

/// One CMP-mode record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmpEntry {
    /// Raw type word: bit 0 [`KCOV_CMP_CONST`], bits 1-2 log2(size).
    pub ty: u64,
    /// First operand.
    pub arg1: u64,
    /// Second operand.
    pub arg2: u64,
    /// PC of the comparison (return address of the hook call).
    pub pc: u64,
}

impl CmpEntry {
    /// From the 4 area words `type, arg1, arg2, pc`.
    pub fn from_words(w: [u64; 4]) -> Self {
        CmpEntry {
            ty: w[0],
            arg1: w[1],
            arg2: w[2],
            pc: w[3],
        }
    }

    /// One operand is a compile-time constant (`__sanitizer_cov_trace_const_cmp*`).
    pub fn is_const(&self) -> bool {
        self.ty & KCOV_CMP_CONST != 0
    }

    /// Operand size in bytes: 1, 2, 4 or 8.
    pub fn size_bytes(&self) -> u8 {
        1 << ((self.ty & KCOV_CMP_SIZE_MASK) >> 1)
    }
}

/// CMP entries of raw area words (4 per entry; a trailing partial entry is ignored).
pub fn parse_cmp(words: &[u64]) -> impl Iterator<Item = CmpEntry> + '_ {
    words
        .chunks_exact(4)
        .map(|c| CmpEntry::from_words([c[0], c[1], c[2], c[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmp_entries_decode_type_bits() {
        let words = [
            0,
            1,
            2,
            0x100, // 1 byte, not const
            1,
            3,
            4,
            0x200, // 1 byte, const
            2,
            5,
            6,
            0x300, // 2 bytes
            5,
            7,
            8,
            0x400, // 4 bytes, const
            6,
            u64::MAX,
            0,
            0x500, // 8 bytes
            7,
            9, // trailing partial entry: ignored
        ];
        let e: Vec<CmpEntry> = parse_cmp(&words).collect();
        assert_eq!(e.len(), 5);
        assert_eq!(
            e.iter()
                .map(|e| (e.is_const(), e.size_bytes()))
                .collect::<Vec<_>>(),
            [(false, 1), (true, 1), (false, 2), (true, 4), (false, 8)]
        );
        assert_eq!(
            e[4],
            CmpEntry {
                ty: 6,
                arg1: u64::MAX,
                arg2: 0,
                pc: 0x500
            }
        );
        // Upper type bits do not disturb the decode.
        let odd = CmpEntry::from_words([0xf0 | 7, 0, 0, 0]);
        assert!(odd.is_const());
        assert_eq!(odd.size_bytes(), 8);

        let cov = parse_area(&[2, 5, 1, 2, 0xa, 3, 3, 4, 0xb, 0], TraceMode::Cmp);
        assert_eq!(cov.entry_count(), 2);
        assert_eq!(cov.pcs().collect::<Vec<_>>(), [0xa, 0xb]);
        assert_eq!(
            cov.cmp_entries()
                .map(|e| e.size_bytes())
                .collect::<Vec<_>>(),
            [4, 2]
        );
        assert_eq!(
            parse_area(&[1, 7, 0], TraceMode::Pc).cmp_entries().count(),
            0
        );
    }

    #[test]
    fn drain_plan_pc_mode() {
        // 8-word area: count word + 7 PCs.
        let p = |c| plan_drain(c, 8, TraceMode::Pc);
        assert_eq!(
            p(0),
            DrainPlan {
                entries: 0,
                words: 0,
                overflow: false
            }
        );
        assert_eq!(
            p(6),
            DrainPlan {
                entries: 6,
                words: 6,
                overflow: false
            }
        );
        assert_eq!(
            p(7),
            DrainPlan {
                entries: 7,
                words: 7,
                overflow: true
            },
            "count == words - 1"
        );
        assert_eq!(
            p(8),
            DrainPlan {
                entries: 7,
                words: 7,
                overflow: true
            },
            "clamped"
        );
        assert_eq!(
            p(u64::MAX),
            DrainPlan {
                entries: 7,
                words: 7,
                overflow: true
            }
        );
        // Degenerate areas never index out of bounds.
        assert_eq!(plan_drain(5, 0, TraceMode::Pc).words, 0);
        assert_eq!(plan_drain(5, 1, TraceMode::Pc).words, 0);
        assert_eq!(
            plan_drain(0, 2, TraceMode::Pc),
            DrainPlan {
                entries: 0,
                words: 0,
                overflow: false
            }
        );
        assert!(plan_drain(1, 2, TraceMode::Pc).overflow);
    }

    #[test]
    fn drain_plan_cmp_mode() {
        // 9 words = count + 2 entries exactly.
        let p = |c| plan_drain(c, 9, TraceMode::Cmp);
        assert_eq!(
            p(1),
            DrainPlan {
                entries: 1,
                words: 4,
                overflow: false
            }
        );
        assert_eq!(
            p(2),
            DrainPlan {
                entries: 2,
                words: 8,
                overflow: true
            },
            "2*4+1 >= 9"
        );
        assert_eq!(
            p(3),
            DrainPlan {
                entries: 2,
                words: 8,
                overflow: true
            }
        );
        // 12 words: room for 2 entries (11 / 4); full at 2 even though 2*4+1 < 12.
        let q = |c| plan_drain(c, 12, TraceMode::Cmp);
        assert!(!q(1).overflow);
        assert_eq!(
            q(2),
            DrainPlan {
                entries: 2,
                words: 8,
                overflow: true
            }
        );
        assert_eq!(plan_drain(u64::MAX, 12, TraceMode::Cmp).words, 8);
        // Too small for any entry: always "full".
        assert_eq!(
            plan_drain(0, 4, TraceMode::Cmp),
            DrainPlan {
                entries: 0,
                words: 0,
                overflow: true
            }
        );
        // The brief's rule is implied: count*4+1 >= area_words => overflow.
        for area in 2..40usize {
            for c in 0..12u64 {
                let plan = plan_drain(c, area, TraceMode::Cmp);
                if c * 4 + 1 >= area as u64 {
                    assert!(plan.overflow, "area {area} count {c}");
                }
                assert!(plan.words < area);
            }
        }
    }

    #[test]
    fn parse_area_copies_and_clamps() {
        let cov = parse_area(&[3, 10, 20, 30, 99, 99], TraceMode::Pc);
        assert_eq!(cov.words, [10, 20, 30]);
        assert!(!cov.overflow);
        assert_eq!(cov.reported_count, 3);
        let cov = parse_area(&[1000, 10, 20, 30], TraceMode::Pc);
        assert_eq!(cov.words, [10, 20, 30]);
        assert!(cov.overflow);
        assert_eq!(cov.reported_count, 1000);
        let cov = parse_area(&[], TraceMode::Pc);
        assert!(cov.is_empty());
        let cov = parse_area(&[0, 0], TraceMode::Pc);
        assert!(cov.is_empty() && !cov.overflow);
    }

    /// Takes everything through `c` until nothing new comes, then a final read.
    fn take_all(c: &mut AreaCursor, area: &[u64]) -> Vec<u64> {
        let mut all = c.take_new(area, false).words;
        all.extend(c.take_new(area, true).words);
        all
    }

    #[test]
    fn cursor_takes_each_remote_entry_once() {
        // Remote sections land entries first, count after: every counted entry is written.
        let mut area = vec![0u64; 8];
        let mut c = AreaCursor::new(TraceMode::Pc);
        assert_eq!(c.take_new(&area[..], false), NewEntries::default());
        area[1..4].copy_from_slice(&[0x11, 0x12, 0x13]);
        area[0] = 2; // the third is written but not counted yet: not taken
        let n = c.take_new(&area[..], false);
        assert_eq!(n.words, [0x11, 0x12]);
        assert!(!n.overflow);
        assert_eq!(c.taken_words(), 2);
        assert!(c.take_new(&area[..], false).words.is_empty(), "nothing new");
        area[0] = 3;
        area[4] = 0x14;
        assert_eq!(c.take_new(&area[..], false).words, [0x13]);
        area[0] = 4;
        assert_eq!(c.take_new(&area[..], false).words, [0x14]);
        // Full: 7 entries fit; a hostile count is clamped to the area and says overflow.
        area[5..8].copy_from_slice(&[0x15, 0x16, 0x17]);
        area[0] = u64::MAX;
        let n = c.take_new(&area[..], false);
        assert_eq!(n.words, [0x15, 0x16, 0x17]);
        assert!(n.overflow);
        let n = c.take_new(&area[..], true);
        assert!(n.words.is_empty() && n.overflow, "{n:?}");
        assert_eq!(c.taken_words(), 7);
        // Concatenated, the reads are exactly what one drain at the end copies.
        let mut fresh = AreaCursor::new(TraceMode::Pc);
        assert_eq!(
            take_all(&mut fresh, &area),
            parse_area(&area, TraceMode::Pc).words
        );
    }

    #[test]
    fn cursor_holds_back_counted_but_unwritten_entries() {
        // Local tracing counts first and stores the pc after: a counted 0 is not written yet.
        let mut area = vec![0u64; 16];
        let mut c = AreaCursor::new(TraceMode::Pc);
        area[1] = 0x21;
        area[0] = 3; // slots 2 and 3 counted, not written
        let n = c.take_new(&area[..], false);
        assert_eq!((n.words.as_slice(), n.held_back), (&[0x21][..], 2));
        area[3] = 0x23; // the later slot lands first: still held behind slot 2
        let n = c.take_new(&area[..], false);
        assert_eq!((n.words.len(), n.held_back), (0, 2));
        area[2] = 0x22;
        assert_eq!(c.take_new(&area[..], false).words, [0x22, 0x23]);
        // The final read (writer stopped) takes what is counted as it is, zeros included,
        // exactly as a one-shot drain would.
        area[0] = 5;
        area[4] = 0x24;
        let n = c.take_new(&area[..], true);
        assert_eq!((n.words.as_slice(), n.held_back), (&[0x24, 0][..], 0));
        assert_eq!(c.taken_words(), 5);
        let mut fresh = AreaCursor::new(TraceMode::Pc);
        assert_eq!(
            take_all(&mut fresh, &area),
            parse_area(&area, TraceMode::Pc).words
        );
    }

    #[test]
    fn cursor_cmp_mode_takes_whole_entries() {
        // 13 words = count + 3 CMP entries (type, arg1, arg2, pc).
        let mut area = [0u64; 13];
        let mut c = AreaCursor::new(TraceMode::Cmp);
        area[1..5].copy_from_slice(&[1, 2, 3, 0xa0]);
        area[5..8].copy_from_slice(&[4, 5, 6]); // pc of entry 2 not written yet
        area[0] = 2;
        let n = c.take_new(&area[..], false);
        assert_eq!(n.words, [1, 2, 3, 0xa0]);
        assert_eq!(n.held_back, 1);
        area[8] = 0xb0;
        area[9..13].copy_from_slice(&[7, 8, 9, 0xc0]);
        area[0] = 3;
        let n = c.take_new(&area[..], false);
        assert_eq!(n.words, [4, 5, 6, 0xb0, 7, 8, 9, 0xc0]);
        assert!(n.overflow, "3 entries fill 13 words");
        assert_eq!(c.taken_words(), 12);
        assert_eq!(c.mode(), TraceMode::Cmp);
    }

    #[test]
    fn cursor_ignores_a_shrinking_count_and_tiny_areas() {
        let mut area = [3u64, 0x31, 0x32, 0x33, 0];
        let mut c = AreaCursor::new(TraceMode::Pc);
        assert_eq!(c.take_new(&area[..], false).words.len(), 3);
        area[0] = 1; // reset behind our back: nothing is taken twice
        assert!(c.take_new(&area[..], true).words.is_empty());
        area[0] = 4;
        area[4] = 0x34;
        assert_eq!(c.take_new(&area[..], false).words, [0x34]);
        for len in 0..3 {
            let tiny = vec![u64::MAX; len];
            let mut c = AreaCursor::new(TraceMode::Cmp);
            assert!(c.take_new(&tiny[..], true).words.is_empty());
        }
    }
}
