//! Batch symbolization: many addresses at once, one pass over each compilation unit, units in
//! parallel.
//!
//! The per-address path ([`addr2line::Context::find_frames`]) parses a unit's functions once
//! and then walks the DIE subtree of every function it lands in a second time, behind lazy cells
//! that make the context unusable from more than one thread. Here each unit that any address
//! falls in is read once (`line`: its line program; `function`: one DIE walk that collects
//! functions together with their inline trees), all of its addresses are looked up, and the
//! parsed data is dropped; units are spread over threads. gimli reads all the DWARF.
//!
//! The answers are addr2line's: the same units are tried in the same order (`unit`), and
//! functions, inline chains and line rows are the ranges that contain the address. Where ranges
//! overlap so that which one addr2line's binary search lands on depends on how its sort ordered
//! equal keys, the address is `Lookup::Undecided` here and handed back in [`Batch::fallback`]
//! for the caller to look up with addr2line itself; so is every address of a unit whose DWARF
//! gimli cannot read, which also reproduces addr2line's errors exactly.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use addr2line::gimli;

use super::frame::{normalize_path, Frame};
use super::function::{Functions, Names};
use super::line::{LineBuffers, LineCursor, Lines};
use super::lookup::{FastHasher, FastMap};
use super::unit::{Lookup, Reader, UnitIndex};
use super::vmlinux::SymbolTable;

/// Strings shared by the frames one thread produces.
#[derive(Default)]
pub(super) struct Interner {
    strings: std::collections::HashSet<Arc<str>, BuildHasherDefault<FastHasher>>,
    /// Raw DWARF path → normalised, interned path.
    paths: FastMap<Box<str>, Arc<str>>,
}

impl Interner {
    pub(super) fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }

    pub(super) fn path(&mut self, raw: &str, roots: &[String]) -> Arc<str> {
        if let Some(a) = self.paths.get(raw) {
            return a.clone();
        }
        let a = self.intern(&normalize_path(raw, roots));
        self.paths.insert(raw.into(), a.clone());
        a
    }

    pub(super) fn clear_paths(&mut self) {
        self.paths.clear();
    }
}

/// Names a function by the ELF symbol where DWARF does not: the outermost frame's function, or
/// a frame of its own when there are none.
pub(super) fn symtab_fallback(
    symbols: &SymbolTable,
    interner: &mut Interner,
    addr: u64,
    frames: &mut Vec<Frame>,
) {
    let needs_name = frames.last().is_none_or(|f| f.function.is_none());
    if !needs_name {
        return;
    }
    let Some(sym) = symbols.lookup(addr) else {
        return;
    };
    let name = interner.intern(&sym.name);
    match frames.last_mut() {
        Some(last) => last.function = Some(name),
        None => frames.push(Frame {
            function: Some(name),
            file: None,
            line: None,
        }),
    }
}

/// What one unit says about one address.
enum Outcome {
    /// Neither a function nor a line: the next unit may know.
    Nothing,
    /// The frames, innermost first, [`symtab_fallback`] applied.
    Frames(Vec<Frame>),
    /// addr2line has to answer.
    Undecided,
}

/// Per-thread state: caches and buffers reused from unit to unit.
struct Worker<'a, 'i> {
    dwarf: &'i gimli::Dwarf<Reader<'a>>,
    index: &'i UnitIndex<'a>,
    roots: &'i [String],
    symbols: &'i SymbolTable,
    names: Names,
    interner: Interner,
    functions: Functions,
    line_buffers: LineBuffers,
    /// Per file index of the current unit: its path, once looked up.
    files: Vec<Option<Option<Arc<str>>>>,
    chain: Vec<usize>,
}

impl<'a, 'i> Worker<'a, 'i> {
    fn new(
        dwarf: &'i gimli::Dwarf<Reader<'a>>,
        index: &'i UnitIndex<'a>,
        roots: &'i [String],
        symbols: &'i SymbolTable,
    ) -> Self {
        Worker {
            dwarf,
            index,
            roots,
            symbols,
            names: Names::default(),
            interner: Interner::default(),
            functions: Functions::default(),
            line_buffers: LineBuffers::default(),
            files: Vec::new(),
            chain: Vec::new(),
        }
    }

    /// Looks up `probes` (ascending) in unit `id`, one outcome each; `None` when the unit
    /// cannot be read.
    fn unit(&mut self, id: usize, probes: &[u64]) -> Option<Vec<Outcome>> {
        let mut unit = self.index.get(id).parse(self.dwarf, true).ok()?;
        let program = unit.line_program.take();
        let unit = gimli::UnitRef::new(self.dwarf, &unit);
        let lines = match program {
            Some(p) => Some(Lines::parse(unit, p, std::mem::take(&mut self.line_buffers)).ok()?),
            None => None,
        };
        let outcomes = self.lookup(unit, id, lines.as_ref(), probes);
        if let Some(lines) = lines {
            self.line_buffers = lines.into_buffers();
        }
        outcomes
    }

    fn lookup(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        id: usize,
        lines: Option<&Lines<'a>>,
        probes: &[u64],
    ) -> Option<Vec<Outcome>> {
        self.functions
            .parse(unit, id, self.index, &mut self.names)
            .ok()?;
        self.files.clear();
        let mut out = Vec::with_capacity(probes.len());
        let (mut function_cursor, mut line_cursor) = (0, LineCursor::default());
        for &probe in probes {
            let function = self.functions.find(probe, &mut function_cursor);
            let row = match lines {
                Some(l) => l.find_row(probe, &mut line_cursor),
                None => Lookup::Missing,
            };
            let (function, row) = match (function, row) {
                (Lookup::Undecided, _) | (_, Lookup::Undecided) => {
                    out.push(Outcome::Undecided);
                    continue;
                }
                (Lookup::Missing, Lookup::Missing) => {
                    out.push(Outcome::Nothing);
                    continue;
                }
                (f, r) => (f, r),
            };
            let mut location = match row {
                Lookup::Found(r) => (
                    self.file(unit, lines, r.file),
                    (r.line != 0).then_some(r.line),
                ),
                _ => (None, None),
            };
            let mut frames = Vec::new();
            if let Lookup::Found(function) = function {
                let mut chain = std::mem::take(&mut self.chain);
                if self.functions.find_inlined(function, probe, &mut chain) == Lookup::Undecided {
                    self.chain = chain;
                    out.push(Outcome::Undecided);
                    continue;
                }
                frames.reserve(chain.len() + 1);
                for &i in chain.iter().rev() {
                    let inlined = &self.functions.inlined[i];
                    let (name, call_file, call_line) =
                        (inlined.name.clone(), inlined.call_file, inlined.call_line);
                    frames.push(Frame {
                        function: name,
                        file: location.0,
                        line: location.1,
                    });
                    location = (
                        call_file.and_then(|f| self.file(unit, lines, f)),
                        (call_line != 0).then_some(call_line),
                    );
                }
                self.chain = chain;
                frames.push(Frame {
                    function: self.functions.functions[function].name.clone(),
                    file: location.0,
                    line: location.1,
                });
            } else {
                frames.push(Frame {
                    function: None,
                    file: location.0,
                    line: location.1,
                });
            }
            symtab_fallback(self.symbols, &mut self.interner, probe, &mut frames);
            out.push(Outcome::Frames(frames));
        }
        Some(out)
    }

    /// The normalised path of file `index` of the unit's line table (cached per unit).
    fn file(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        lines: Option<&Lines<'a>>,
        index: u64,
    ) -> Option<Arc<str>> {
        let slot = usize::try_from(index).ok().filter(|i| *i < 1 << 16);
        if let Some(cached) = slot.and_then(|i| self.files.get(i).cloned().flatten()) {
            return cached;
        }
        let path = match lines?.file(unit, index)? {
            Ok(raw) => Some(self.interner.path(&raw, self.roots)),
            // Checked when the table was read.
            Err(_) => None,
        };
        if let Some(i) = slot {
            if self.files.len() <= i {
                self.files.resize(i + 1, None);
            }
            self.files[i] = Some(path.clone());
        }
        path
    }
}

/// What [`symbolize`] found.
pub(super) struct Batch {
    /// Per probe, the frames addr2line gives, innermost first, with [`symtab_fallback`]
    /// applied; empty where no unit has a function or line for it (no fallback applied).
    pub frames: Vec<Vec<Frame>>,
    /// Probes (indexes) to look up with addr2line: a unit they reach cannot be read here, or
    /// their answer there depends on addr2line's search order (their `frames` are empty).
    pub fallback: Vec<usize>,
}

/// Symbolizes `probes` (sorted, distinct) on up to `threads` threads.
pub(super) fn symbolize<'a>(
    dwarf: &gimli::Dwarf<Reader<'a>>,
    index: &UnitIndex<'a>,
    roots: &[String],
    symbols: &SymbolTable,
    probes: &[u64],
    threads: usize,
) -> Batch {
    // The units of each probe in the order to try them: `units[unit_start[p]..unit_start[p + 1]]`,
    // each with the probe's slot in that unit's list.
    let mut unit_start: Vec<usize> = Vec::with_capacity(probes.len() + 1);
    let mut units: Vec<(usize, usize)> = Vec::with_capacity(probes.len());
    let mut count = vec![0usize; index.len()];
    let mut pos = 0;
    for &probe in probes {
        let first = units.len();
        unit_start.push(first);
        for unit in index.find_sorted(&mut pos, probe) {
            // A unit listed twice answers the same the second time.
            if !units[first..].iter().any(|u| u.0 == unit) {
                units.push((unit, count[unit]));
                count[unit] += 1;
            }
        }
    }
    unit_start.push(units.len());
    // Each unit's probes, ascending: `unit_probes[probe_start[u]..probe_start[u + 1]]`.
    let mut probe_start = Vec::with_capacity(count.len() + 1);
    let mut total = 0;
    for &c in &count {
        probe_start.push(total);
        total += c;
    }
    probe_start.push(total);
    let mut unit_probes = vec![0u64; total];
    for (p, &probe) in probes.iter().enumerate() {
        for &(unit, slot) in &units[unit_start[p]..unit_start[p + 1]] {
            unit_probes[probe_start[unit] + slot] = probe;
        }
    }

    // Work: units with probes, biggest first.
    let mut jobs: Vec<usize> = (0..index.len()).filter(|&u| count[u] > 0).collect();
    jobs.sort_by_key(|&u| std::cmp::Reverse(index.get(u).weight));
    let next = AtomicUsize::new(0);
    let run = || {
        let mut worker = Worker::new(dwarf, index, roots, symbols);
        let mut done = Vec::new();
        while let Some(&unit) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
            let probes = &unit_probes[probe_start[unit]..probe_start[unit + 1]];
            done.push((unit, worker.unit(unit, probes)));
        }
        done
    };
    let threads = threads.clamp(1, jobs.len().max(1));
    let mut results: Vec<Option<Vec<Outcome>>> = (0..index.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(run)).collect();
        let mine = run();
        for done in others
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .chain([mine])
        {
            for (unit, outcomes) in done {
                results[unit] = outcomes;
            }
        }
    });

    // Per probe: the first unit with an answer, as addr2line's `find_frames` loops.
    let mut batch = Batch {
        frames: Vec::with_capacity(probes.len()),
        fallback: Vec::new(),
    };
    for p in 0..probes.len() {
        let mut frames = Vec::new();
        for &(unit, slot) in &units[unit_start[p]..unit_start[p + 1]] {
            let outcome = results[unit].as_mut().map(|o| &mut o[slot]);
            match outcome {
                Some(Outcome::Nothing) => continue,
                Some(Outcome::Frames(f)) => frames = std::mem::take(f),
                None | Some(Outcome::Undecided) => batch.fallback.push(p),
            }
            break;
        }
        batch.frames.push(frames);
    }
    batch
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
