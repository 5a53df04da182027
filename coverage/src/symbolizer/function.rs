//! A unit's functions and their inline trees, read in one walk over its DIEs with gimli's
//! `EntriesRaw`.
//!
//! A function is a `DW_TAG_subprogram` with code (address ranges), wherever it is in the tree.
//! Its inlined subroutines are the `DW_TAG_inlined_subroutine`s below it, not below a nested
//! subprogram, each at a call depth (0: called by the function itself). For an address, the
//! inline chain is the inlined subroutine at depth 0 whose ranges contain it, then the one at
//! depth 1, and so on while there is one: the search addr2line's `find_frames` makes, whose
//! answers are kept here. A function's name is its linkage name, else its name, else the name
//! of its abstract origin or specification (followed up to 16 times); attributes are read in
//! order, as addr2line reads them.

use std::sync::Arc;

use addr2line::gimli;
use gimli::AttributeValue;

use super::lookup::FastMap;
use super::unit::{covering, max_ends, Lookup, RangeAttributes, Reader, UnitIndex};

/// How many abstract origins or specifications a name is followed through.
const NAME_DEPTH: usize = 16;

pub(super) struct Function {
    pub(super) name: Option<Arc<str>>,
    /// Its inlined ranges: `Functions::inlined_ranges[inlined.0..inlined.1]`.
    inlined: (usize, usize),
}

pub(super) struct Inlined {
    pub(super) name: Option<Arc<str>>,
    /// File index of the call (index 0 only from DWARF 5 on: before, 0 is "none").
    pub(super) call_file: Option<u64>,
    /// 0: none.
    pub(super) call_line: u32,
}

struct FunctionRange {
    range: gimli::Range,
    function: usize,
}

struct InlinedRange {
    function: usize,
    depth: usize,
    range: gimli::Range,
    /// Index into `Functions::inlined`.
    inlined: usize,
}

/// Where the DIEs below one belong.
#[derive(Clone, Copy)]
enum Scope {
    /// Outside any function with code: inlined subroutines here are nobody's.
    Outside,
    /// Inside `function`, below `depth` inlined subroutines.
    Function { function: usize, depth: usize },
}

/// One unit's functions, in buffers reused from unit to unit.
#[derive(Default)]
pub(super) struct Functions {
    pub(super) functions: Vec<Function>,
    pub(super) inlined: Vec<Inlined>,
    /// Sorted by start.
    ranges: Vec<FunctionRange>,
    max_end: Vec<u64>,
    /// Sorted by function, depth, start.
    inlined_ranges: Vec<InlinedRange>,
    /// Running maximum of the ends within each (function, depth) group.
    inlined_max_end: Vec<u64>,
    scopes: Vec<(isize, Scope)>,
}

impl Functions {
    /// Reads the functions of `unit` (unit `id` of `index`), names through `names`.
    pub(super) fn parse<'a>(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        id: usize,
        index: &UnitIndex<'a>,
        names: &mut Names,
    ) -> Result<(), gimli::Error> {
        self.functions.clear();
        self.inlined.clear();
        self.ranges.clear();
        self.inlined_ranges.clear();
        self.scopes.clear();
        names.enter_unit();
        let mut naming = Vec::new();
        let mut entries = unit.entries_raw(None)?;
        while !entries.is_empty() {
            let depth = entries.next_depth();
            let Some(abbrev) = entries.read_abbreviation()? else {
                continue;
            };
            while self.scopes.last().is_some_and(|s| s.0 >= depth) {
                self.scopes.pop();
            }
            let scope = self.scopes.last().map_or(Scope::Outside, |s| s.1);
            let inner = match (abbrev.tag(), scope) {
                (gimli::DW_TAG_subprogram, _) => {
                    // The range attributes now, the ones naming it (in order) once it has code.
                    let mut ranges = RangeAttributes::default();
                    naming.clear();
                    for spec in abbrev.attributes() {
                        let attr = entries.read_attribute_inline(*spec)?;
                        if !ranges.read(unit, &attr)? && names_function(attr.name()) {
                            naming.push((attr.name(), attr.value()));
                        }
                    }
                    self.subprogram(unit, id, index, names, ranges, &naming)?
                }
                (gimli::DW_TAG_inlined_subroutine, Scope::Function { function, depth }) => {
                    let mut ranges = RangeAttributes::default();
                    let mut name = None;
                    let (mut call_file, mut call_line) = (None, 0);
                    for spec in abbrev.attributes() {
                        let attr = entries.read_attribute_inline(*spec)?;
                        if ranges.read(unit, &attr)? {
                            continue;
                        }
                        match (attr.name(), attr.value()) {
                            (gimli::DW_AT_call_file, AttributeValue::FileIndex(f)) => {
                                if f > 0 || unit.header.version() >= 5 {
                                    call_file = Some(f);
                                }
                            }
                            (gimli::DW_AT_call_line, v) => {
                                call_line = v.udata_value().unwrap_or(0) as u32;
                            }
                            (n, v) => name_from(unit, id, index, names, n, v, &mut name)?,
                        }
                    }
                    let inlined = self.inlined.len();
                    self.inlined.push(Inlined {
                        name: name.and_then(|n| n.interned(names)),
                        call_file,
                        call_line,
                    });
                    let out = &mut self.inlined_ranges;
                    ranges.for_each_range(unit, |range| {
                        out.push(InlinedRange {
                            function,
                            depth,
                            range,
                            inlined,
                        })
                    })?;
                    Scope::Function {
                        function,
                        depth: depth + 1,
                    }
                }
                _ => {
                    entries.skip_attributes(abbrev.attributes())?;
                    continue;
                }
            };
            if abbrev.has_children() {
                self.scopes.push((depth, inner));
            }
        }
        self.finish();
        Ok(())
    }

    /// A subprogram with range attributes `ranges` and attributes `naming` that name it: a
    /// function if it has code. The scope of the DIEs below it.
    fn subprogram<'a>(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        id: usize,
        index: &UnitIndex<'a>,
        names: &mut Names,
        ranges: RangeAttributes,
        naming: &[(gimli::DwAt, AttributeValue<Reader<'a>>)],
    ) -> Result<Scope, gimli::Error> {
        let function = self.functions.len();
        let out = &mut self.ranges;
        if !ranges.for_each_range(unit, |range| out.push(FunctionRange { range, function }))? {
            return Ok(Scope::Outside);
        }
        let mut name = None;
        for &(attr, value) in naming {
            name_from(unit, id, index, names, attr, value, &mut name)?;
        }
        self.functions.push(Function {
            name: name.and_then(|n| n.interned(names)),
            inlined: (0, 0),
        });
        Ok(Scope::Function { function, depth: 0 })
    }

    /// Sorts the ranges for the lookups.
    fn finish(&mut self) {
        self.ranges.sort_unstable_by_key(|r| r.range.begin);
        max_ends(self.ranges.iter().map(|r| r.range), &mut self.max_end);
        self.inlined_ranges
            .sort_unstable_by_key(|r| (r.function, r.depth, r.range.begin));
        self.inlined_max_end.clear();
        let mut max = 0;
        let mut group = None;
        for r in &self.inlined_ranges {
            if group != Some((r.function, r.depth)) {
                group = Some((r.function, r.depth));
                max = 0;
            }
            max = max.max(r.range.end);
            self.inlined_max_end.push(max);
        }
        let mut start = 0;
        for (i, f) in self.functions.iter_mut().enumerate() {
            let end = start + self.inlined_ranges[start..].partition_point(|r| r.function == i);
            f.inlined = (start, end);
            start = end;
        }
    }

    /// The function whose ranges contain `probe`. `cursor` carries from one probe to the next,
    /// which must ascend (start at 0).
    pub(super) fn find(&self, probe: u64, cursor: &mut usize) -> Lookup<usize> {
        while self
            .ranges
            .get(*cursor)
            .is_some_and(|r| r.range.begin <= probe)
        {
            *cursor += 1;
        }
        match covering(&self.ranges, &self.max_end, *cursor, probe, |r| r.range) {
            Lookup::Found(i) => Lookup::Found(self.ranges[i].function),
            Lookup::Missing => Lookup::Missing,
            Lookup::Undecided => Lookup::Undecided,
        }
    }

    /// The inline chain of `function` at `probe` into `out`, outermost first, as indexes into
    /// [`Functions::inlined`].
    pub(super) fn find_inlined(
        &self,
        function: usize,
        probe: u64,
        out: &mut Vec<usize>,
    ) -> Lookup<()> {
        out.clear();
        let (start, end) = self.functions[function].inlined;
        let mut ranges = &self.inlined_ranges[start..end];
        let mut max_end = &self.inlined_max_end[start..end];
        loop {
            let depth = out.len();
            let n = ranges.partition_point(|r| r.depth == depth);
            let group = &ranges[..n];
            let below = group.partition_point(|r| r.range.begin <= probe);
            match covering(group, &max_end[..n], below, probe, |r| r.range) {
                Lookup::Found(i) => out.push(group[i].inlined),
                Lookup::Missing => return Lookup::Found(()),
                Lookup::Undecided => return Lookup::Undecided,
            }
            (ranges, max_end) = (&ranges[n..], &max_end[n..]);
        }
    }
}

/// A function name while its DIE's attributes are read.
enum Name<'a> {
    Raw(Reader<'a>),
    Interned(Arc<str>),
}

impl Name<'_> {
    fn interned(self, names: &mut Names) -> Option<Arc<str>> {
        match self {
            Name::Raw(r) => Some(names.intern(r)),
            Name::Interned(s) => Some(s),
        }
    }
}

/// Whether attribute `name` can give a function its name.
fn names_function(name: gimli::DwAt) -> bool {
    matches!(
        name,
        gimli::DW_AT_linkage_name
            | gimli::DW_AT_MIPS_linkage_name
            | gimli::DW_AT_name
            | gimli::DW_AT_abstract_origin
            | gimli::DW_AT_specification
    )
}

/// Applies attribute `name` with `value` to the function name `slot`: a linkage name wins, a
/// name or a referenced DIE's name counts while there is none yet.
#[allow(clippy::too_many_arguments)]
fn name_from<'a>(
    unit: gimli::UnitRef<'_, Reader<'a>>,
    id: usize,
    index: &UnitIndex<'a>,
    names: &mut Names,
    name: gimli::DwAt,
    value: AttributeValue<Reader<'a>>,
    slot: &mut Option<Name<'a>>,
) -> Result<(), gimli::Error> {
    match name {
        gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
            if let Ok(s) = unit.attr_string(value) {
                *slot = Some(Name::Raw(s));
            }
        }
        gimli::DW_AT_name if slot.is_none() => {
            *slot = unit.attr_string(value).ok().map(Name::Raw);
        }
        gimli::DW_AT_abstract_origin | gimli::DW_AT_specification if slot.is_none() => {
            *slot = names
                .referenced(unit, id, index, value)?
                .map(Name::Interned);
        }
        _ => {}
    }
    Ok(())
}

/// Names of referenced DIEs, and name strings, shared by the functions a worker reads.
pub(super) struct Names {
    /// By DIE offset in the current unit.
    here: FastMap<usize, Option<Arc<str>>>,
    /// By unit and DIE offset, for DIEs in other units.
    other: FastMap<(usize, usize), Option<Arc<str>>>,
    /// Name bytes, by where they lie in the image (equal strings mostly lie in one place: the
    /// linker merges `.debug_str`).
    strings: FastMap<(usize, usize), Arc<str>>,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            here: FastMap::with_capacity_and_hasher(1 << 10, Default::default()),
            other: FastMap::default(),
            strings: FastMap::with_capacity_and_hasher(1 << 14, Default::default()),
        }
    }
}

impl Names {
    fn enter_unit(&mut self) {
        self.here.clear();
    }

    fn intern(&mut self, name: Reader<'_>) -> Arc<str> {
        let bytes = name.slice();
        self.strings
            .entry((bytes.as_ptr() as usize, bytes.len()))
            .or_insert_with(|| Arc::from(String::from_utf8_lossy(bytes)))
            .clone()
    }

    /// The name of the DIE that `value` (an abstract origin or specification of a DIE in
    /// `unit`, unit `id`) refers to.
    fn referenced<'a>(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        id: usize,
        index: &UnitIndex<'a>,
        value: AttributeValue<Reader<'a>>,
    ) -> Result<Option<Arc<str>>, gimli::Error> {
        let (target, offset) = match value {
            AttributeValue::UnitRef(offset) => (id, offset),
            AttributeValue::DebugInfoRef(offset) => index.find_unit(offset)?,
            // No supplementary object file is loaded: no name.
            _ => return Ok(None),
        };
        let cached = match target == id {
            true => self.here.get(&offset.0),
            false => self.other.get(&(target, offset.0)),
        };
        if let Some(name) = cached {
            return Ok(name.clone());
        }
        let name = match target == id {
            true => entry_name(unit, index, offset, NAME_DEPTH)?,
            false => {
                let other = index.get(target).parse(unit.dwarf, false)?;
                entry_name(
                    gimli::UnitRef::new(unit.dwarf, &other),
                    index,
                    offset,
                    NAME_DEPTH,
                )?
            }
        };
        let name = name.map(|n| self.intern(n));
        match target == id {
            true => self.here.insert(offset.0, name.clone()),
            false => self.other.insert((target, offset.0), name.clone()),
        };
        Ok(name)
    }
}

/// The name of the DIE at `offset` of `unit`: its linkage name, else its name,
/// else that of the DIE its abstract origin or specification refers to, `depth` levels at most.
fn entry_name<'a>(
    unit: gimli::UnitRef<'_, Reader<'a>>,
    index: &UnitIndex<'a>,
    offset: gimli::UnitOffset<usize>,
    depth: usize,
) -> Result<Option<Reader<'a>>, gimli::Error> {
    let mut entries = unit.entries_raw(Some(offset))?;
    let Some(abbrev) = entries.read_abbreviation()? else {
        return Err(gimli::Error::NoEntryAtGivenOffset(offset.0 as u64));
    };
    let mut name = None;
    let mut next = None;
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec)?;
        match attr.name() {
            gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                if let Ok(s) = unit.attr_string(attr.value()) {
                    return Ok(Some(s));
                }
            }
            gimli::DW_AT_name => {
                if let Ok(s) = unit.attr_string(attr.value()) {
                    name = Some(s);
                }
            }
            gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => next = Some(attr.value()),
            _ => {}
        }
    }
    if name.is_some() || depth <= 1 {
        return Ok(name);
    }
    match next {
        Some(AttributeValue::UnitRef(o)) => entry_name(unit, index, o, depth - 1),
        Some(AttributeValue::DebugInfoRef(o)) => {
            let (target, o) = index.find_unit(o)?;
            let other = index.get(target).parse(unit.dwarf, false)?;
            entry_name(gimli::UnitRef::new(unit.dwarf, &other), index, o, depth - 1)
        }
        _ => Ok(None),
    }
}
