//! What the readers of the batch path share, below all of them: the reader type, the search
//! over address ranges sorted by their start ([`covering`]) and a fast hasher for their maps.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use addr2line::gimli;

pub(super) type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

/// A lookup whose answer may depend on more than the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lookup<T> {
    Found(T),
    Missing,
    /// Ranges overlap around the address, so what a binary search finds depends on the order
    /// its sort left equal keys in: addr2line itself has to answer.
    Undecided,
}

/// Which of `items` (sorted by the start of `range(item)`; `max_end[i]` the largest end among
/// `items[..=i]`; `below` of them start at or before `probe`) contains `probe`, as every binary
/// search for "start <= probe < end" finds it whatever the order of equal starts.
///
/// That holds when the comparison is monotone in every such order: the ranges before the last
/// one that starts at or before `probe` all end at or before it, and none of them starts where
/// that last one does (else a tie could put one of them after it). Then the last one is the
/// answer if it contains `probe`, and there is none if it does not. Otherwise
/// [`Lookup::Undecided`].
pub(super) fn covering<T>(
    items: &[T],
    max_end: &[u64],
    below: usize,
    probe: u64,
    range: impl Fn(&T) -> gimli::Range,
) -> Lookup<usize> {
    let Some(last) = below.checked_sub(1) else {
        return Lookup::Missing;
    };
    let r = range(&items[last]);
    if r.end <= probe {
        return if max_end[last] <= probe {
            Lookup::Missing
        } else {
            Lookup::Undecided
        };
    }
    match last.checked_sub(1) {
        None => Lookup::Found(last),
        Some(prev) if max_end[prev] <= probe && range(&items[prev]).begin != r.begin => {
            Lookup::Found(last)
        }
        Some(_) => Lookup::Undecided,
    }
}

/// The running maximum of the ends of `ranges`.
pub(super) fn max_ends(ranges: impl Iterator<Item = gimli::Range>, out: &mut Vec<u64>) {
    out.clear();
    let mut max = 0;
    out.extend(ranges.map(|r| {
        max = max.max(r.end);
        max
    }));
}

/// A small multiply-rotate hasher for the interning maps (keys are our own DWARF strings and
/// offsets, not attacker-chosen; SipHash showed up in profiles).
#[derive(Default, Clone, Copy)]
pub(super) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
