//! Splitting a drained kcov area into [`CoverageChunk`]s under the frame limits.

use crate::error::WireError;
use crate::frame::{CoverageChunk, CoverageSource, KcovMode, MAX_CHUNK_WORDS, MAX_STRING_LEN};

/// Iterator over the chunks of one drained area; see [`chunk_coverage`].
#[derive(Debug, Clone)]
pub struct CoverageChunks<'a> {
    workload: &'a str,
    source: CoverageSource,
    mode: KcovMode,
    overflow: bool,
    rest: &'a [u64],
    seq: u32,
    max_words: usize,
    emitted_any: bool,
}

/// Splits `words` (raw area words after the count word: PCs, or 4-word CMP entries) into
/// chunks of at most `max_words` words (clamped to `1..=MAX_CHUNK_WORDS` and rounded down to
/// whole entries), numbered `first_seq`, `first_seq + 1`, ... (wrapping).
///
/// Every chunk carries the same `overflow` flag (the area overflowed: coverage was lost), so a
/// collector may look at any of them. An empty `words` still yields one empty chunk, so the
/// receiver learns that the area was drained and whether it overflowed.
///
/// Fails if `workload` is longer than [`MAX_STRING_LEN`] or, in CMP mode, `words.len()` is not
/// a multiple of 4 — the same checks the encoder makes, so every chunk yielded encodes.
pub fn chunk_coverage<'a>(
    workload: &'a str,
    source: CoverageSource,
    mode: KcovMode,
    overflow: bool,
    words: &'a [u64],
    first_seq: u32,
    max_words: usize,
) -> Result<CoverageChunks<'a>, WireError> {
    if workload.len() > MAX_STRING_LEN {
        return Err(WireError::TooLong {
            frame: "CoverageChunk",
            field: "workload",
            len: workload.len(),
            max: MAX_STRING_LEN,
        });
    }
    let wpe = mode.words_per_entry();
    if !words.len().is_multiple_of(wpe) {
        return Err(WireError::MisalignedEntries {
            words: words.len(),
            words_per_entry: wpe,
        });
    }
    let max_words = (max_words.clamp(1, MAX_CHUNK_WORDS) / wpe).max(1) * wpe;
    Ok(CoverageChunks {
        workload,
        source,
        mode,
        overflow,
        rest: words,
        seq: first_seq,
        max_words,
        emitted_any: false,
    })
}

impl CoverageChunks<'_> {
    /// Sequence number the next chunk will get (after the iterator is exhausted: the first
    /// free one, to continue numbering with a later drain).
    pub fn next_seq(&self) -> u32 {
        self.seq
    }
}

impl Iterator for CoverageChunks<'_> {
    type Item = CoverageChunk;

    fn next(&mut self) -> Option<CoverageChunk> {
        if self.rest.is_empty() && self.emitted_any {
            return None;
        }
        let n = self.rest.len().min(self.max_words);
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        self.emitted_any = true;
        let chunk = CoverageChunk {
            workload: self.workload.to_owned(),
            source: self.source,
            mode: self.mode,
            seq: self.seq,
            overflow: self.overflow,
            words: head.to_vec(),
        };
        self.seq = self.seq.wrapping_add(1);
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = if self.emitted_any {
            self.rest.len().div_ceil(self.max_words)
        } else {
            self.rest.len().div_ceil(self.max_words).max(1)
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for CoverageChunks<'_> {}
