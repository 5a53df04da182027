// The hand-written decoders, beside the gimli-only batch path for measuring (#13 item 6).
#![allow(dead_code)]
//! Batch symbolization: many addresses at once, one pass over each compilation unit, units in
//! parallel.
//!
//! The per-address path ([`addr2line::Context::find_frames`]) parses a unit's functions once
//! and then walks the DIE subtree of every function it lands in a second time, behind lazy cells
//! that make the context unusable from more than one thread. Here each unit that any address
//! falls in is read once (line program, then one DIE walk that collects functions together with
//! their inline trees), all of its addresses are looked up, and the parsed data is dropped;
//! units are spread over threads.
//!
//! The answers are addr2line's, by construction: the unit index, line sequences, function
//! ranges and inline ranges are built and searched exactly as addr2line 0.27 builds and
//! searches them (same element types, same unstable sorts, same searches or, where the data
//! makes them equivalent, walks over sorted addresses; same name resolution), so ties and
//! overlapping ranges resolve the same way. The raw DWARF is read by fast paths (a line
//! program interpreter, an abbreviation table and attribute decoder, DIE skipping by
//! precomputed sizes) that each decide exactly as gimli's readers do, and step aside for gimli
//! wherever they meet anything unusual. A unit whose DWARF makes even gimli's walk fail is not
//! interpreted at all: its addresses are handed back in [`Batch::fallback`] for the caller to
//! look up with addr2line itself, which also reproduces addr2line's errors exactly.
//! `batch_tests.rs` checks each fast path against gimli on the fixture and on the kernel.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use gimli::{AttributeValue, ReaderOffset};

use super::frame::{normalize_path, Frame};
use super::vmlinux::SymbolTable;

pub(super) type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

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

// ---------------------------------------------------------------------------------------------
// Address ranges of an entry (addr2line's `RangeAttributes`).

#[derive(Default)]
struct RangeAttributes {
    low_pc: Option<u64>,
    high_pc: Option<u64>,
    size: Option<u64>,
    ranges_offset: Option<gimli::RangeListsOffset<usize>>,
}

impl RangeAttributes {
    /// Handles `attr` if it is a range attribute; true when it was one.
    #[inline]
    fn read<'a>(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        attr: &gimli::Attribute<Reader<'a>>,
    ) -> Result<bool, gimli::Error> {
        match attr.name() {
            gimli::DW_AT_low_pc | gimli::DW_AT_high_pc | gimli::DW_AT_ranges => {
                self.read_value(unit, attr.name(), attr.value())
            }
            _ => Ok(false),
        }
    }

    /// [`RangeAttributes::read`] for an attribute `name` whose `gimli::Attribute::value` is
    /// `value`.
    #[inline]
    fn read_value<'a>(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        name: gimli::DwAt,
        value: AttributeValue<Reader<'a>>,
    ) -> Result<bool, gimli::Error> {
        match name {
            gimli::DW_AT_low_pc => match value {
                AttributeValue::Addr(val) => self.low_pc = Some(val),
                AttributeValue::DebugAddrIndex(index) => self.low_pc = Some(unit.address(index)?),
                _ => {}
            },
            gimli::DW_AT_high_pc => match value {
                AttributeValue::Addr(val) => self.high_pc = Some(val),
                AttributeValue::DebugAddrIndex(index) => self.high_pc = Some(unit.address(index)?),
                AttributeValue::Udata(val) => self.size = Some(val),
                _ => {}
            },
            gimli::DW_AT_ranges => {
                self.ranges_offset = unit.attr_ranges_offset(value)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn for_each_range(
        &self,
        unit: gimli::UnitRef<'_, Reader<'_>>,
        mut f: impl FnMut(gimli::Range),
    ) -> Result<bool, gimli::Error> {
        let mut added_any = false;
        let mut add_range = |range: gimli::Range| {
            if range.begin < range.end {
                f(range);
                added_any = true
            }
        };
        if let Some(ranges_offset) = self.ranges_offset {
            let mut range_list = unit.ranges(ranges_offset)?;
            while let Some(range) = range_list.next()? {
                add_range(range);
            }
        } else if let (Some(begin), Some(end)) = (self.low_pc, self.high_pc) {
            add_range(gimli::Range { begin, end });
        } else if let (Some(begin), Some(size)) = (self.low_pc, self.size) {
            add_range(gimli::Range {
                begin,
                end: begin.wrapping_add(size),
            });
        }
        Ok(added_any)
    }
}

// ---------------------------------------------------------------------------------------------
// The unit index (addr2line's `ResUnits`).

/// Element type and layout as addr2line's, so the unstable sort orders ties alike.
struct UnitRange {
    unit_id: usize,
    min_begin: u64,
    range: gimli::Range,
}

/// A unit that can hold code: its `gimli::Unit` without the line program and (mostly) without
/// the abbreviations, which take most of the memory; where they are needed they are parsed
/// again and dropped after, so that memory is reused rather than all held at once (fresh
/// memory is expensive: page faults).
pub(super) struct IndexedUnit<'a> {
    offset: gimli::DebugInfoOffset<usize>,
    unit: gimli::Unit<Reader<'a>>,
    /// `DW_AT_stmt_list`.
    line_program: Option<gimli::DebugLineOffset<usize>>,
    /// Rough cost of symbolizing in this unit (bytes of DIEs), for scheduling.
    weight: usize,
}

/// Every unit that can hold code, and which address ranges map to which unit.
pub(super) struct UnitIndex<'a> {
    units: Vec<IndexedUnit<'a>>,
    ranges: Box<[UnitRange]>,
}

/// Per unit of `.debug_info` (type units included): `DW_AT_comp_dir` (cleaned later) and
/// `DW_AT_name`, for inferring the source roots.
pub(super) type UnitNames = Vec<(Option<String>, Option<String>)>;

impl<'a> UnitIndex<'a> {
    /// Parses every unit header of `dwarf` once. Fails where addr2line's `Context::from_dwarf`
    /// or a plain walk over all units fails.
    pub(super) fn parse(
        dwarf: &gimli::Dwarf<Reader<'a>>,
    ) -> Result<(Self, UnitNames), gimli::Error> {
        let mut aranges = Vec::new();
        let mut headers = dwarf.debug_aranges.headers();
        while let Some(header) = headers.next()? {
            aranges.push((header.debug_info_offset(), header.offset()));
        }
        aranges.sort_unstable_by_key(|i| i.0);

        let mut names = Vec::new();
        let mut unit_ranges = Vec::new();
        let mut units: Vec<IndexedUnit<'a>> = Vec::new();
        let mut iter = dwarf.units();
        while let Some(header) = iter.next()? {
            let (mut unit, line_program) = match index_unit(dwarf, header) {
                Some(unit) => unit,
                None => {
                    let unit = dwarf.unit(header)?;
                    let offset = unit.line_program.as_ref().map(|p| p.header().offset());
                    (unit, offset)
                }
            };
            names.push((
                unit.comp_dir.map(|d| d.to_string_lossy().into_owned()),
                unit.name.map(|n| n.to_string_lossy().into_owned()),
            ));
            let unit_id = units.len();
            let Some(offset) = header.debug_info_offset() else {
                continue;
            };
            let mut need_unit_range = match header.type_() {
                gimli::UnitType::Type { .. } | gimli::UnitType::SplitType { .. } => continue,
                gimli::UnitType::Partial => false,
                _ => true,
            };
            let unit_ref = gimli::UnitRef::new(dwarf, &unit);
            if need_unit_range {
                let mut entries = unit_ref.entries_raw(None)?;
                let Some(abbrev) = entries.read_abbreviation()? else {
                    continue;
                };
                let mut ranges = RangeAttributes::default();
                for spec in abbrev.attributes() {
                    let attr = entries.read_attribute(*spec)?;
                    ranges.read(unit_ref, &attr)?;
                }
                let i = match ranges.ranges_offset {
                    Some(_) => None,
                    None => aranges.binary_search_by_key(&offset, |x| x.0).ok(),
                };
                if let Some(mut i) = i {
                    while i > 0 && aranges[i - 1].0 == offset {
                        i -= 1;
                    }
                    for (_, aranges_offset) in aranges[i..].iter().take_while(|x| x.0 == offset) {
                        let aranges_header = dwarf.debug_aranges.header(*aranges_offset)?;
                        let mut entries = aranges_header.entries();
                        while let Some(arange) = entries.next().transpose() {
                            let Ok(arange) = arange else {
                                continue;
                            };
                            if arange.length() != 0 {
                                unit_ranges.push(UnitRange {
                                    range: arange.range(),
                                    unit_id,
                                    min_begin: 0,
                                });
                                need_unit_range = false;
                            }
                        }
                    }
                }
                if need_unit_range {
                    need_unit_range = !ranges.for_each_range(unit_ref, |range| {
                        unit_ranges.push(UnitRange {
                            range,
                            unit_id,
                            min_begin: 0,
                        });
                    })?;
                }
            }
            if need_unit_range {
                // The line program: only here does the index need it.
                let unit = dwarf.unit(header)?;
                let unit_ref = gimli::UnitRef::new(dwarf, &unit);
                if let Some(ilnp) = &unit.line_program {
                    if let Ok(lines) = Lines::parse(unit_ref, ilnp, Default::default()) {
                        for range in lines.ranges() {
                            unit_ranges.push(UnitRange {
                                range,
                                unit_id,
                                min_begin: 0,
                            });
                        }
                    }
                }
            }
            unit.line_program = None;
            units.push(IndexedUnit {
                offset,
                unit,
                line_program,
                weight: header.length_including_self(),
            });
        }

        unit_ranges.sort_unstable_by_key(|i| (i.range.end, i.unit_id));
        let mut min = !0;
        for i in unit_ranges.iter_mut().rev() {
            min = min.min(i.range.begin);
            i.min_begin = min;
        }
        Ok((
            UnitIndex {
                units,
                ranges: unit_ranges.into_boxed_slice(),
            },
            names,
        ))
    }

    /// The units whose ranges contain `probe`, in the order addr2line tries them. `pos` is a
    /// cursor for ascending probes: the first range that ends after the previous probe (start
    /// at 0). addr2line binary-searches for that range; the ranges before it end at or below
    /// the probe, so they hold none of its units either way.
    fn find_sorted(&self, pos: &mut usize, probe: u64) -> impl Iterator<Item = usize> + '_ {
        let (probe_low, probe_high) = (probe, probe.wrapping_add(1));
        while self
            .ranges
            .get(*pos)
            .is_some_and(|r| r.range.end <= probe_low)
        {
            *pos += 1;
        }
        self.ranges[*pos..]
            .iter()
            .take_while(move |i| probe_high > i.min_begin)
            .filter_map(move |i| {
                if probe_low >= i.range.end || probe_high <= i.range.begin {
                    return None;
                }
                Some(i.unit_id)
            })
    }

    /// Unit `id` as `gimli::Dwarf::unit` gives it.
    fn unit(
        &self,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        id: usize,
    ) -> Result<gimli::Unit<Reader<'a>>, gimli::Error> {
        dwarf.unit(self.units[id].unit.header)
    }

    /// Unit `id` with its line program but not all of its abbreviations (for reading DIEs
    /// with [`Abbrevs`]).
    fn unit_with_lines(
        &self,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        id: usize,
    ) -> Result<gimli::Unit<Reader<'a>>, gimli::Error> {
        let u = &self.units[id];
        let l = &u.unit;
        let line_program = match u.line_program {
            Some(offset) => Some(dwarf.debug_line.program(
                offset,
                l.header.address_size(),
                l.comp_dir,
                l.name,
            )?),
            None => None,
        };
        Ok(gimli::Unit {
            header: l.header,
            abbreviations: l.abbreviations.clone(),
            name: l.name,
            comp_dir: l.comp_dir,
            low_pc: l.low_pc,
            str_offsets_base: l.str_offsets_base,
            addr_base: l.addr_base,
            loclists_base: l.loclists_base,
            rnglists_base: l.rnglists_base,
            line_program,
            dwo_id: l.dwo_id,
        })
    }

    /// The unit holding `.debug_info` offset `offset` and the offset inside it.
    fn find_unit(
        &self,
        offset: gimli::DebugInfoOffset<usize>,
    ) -> Result<(usize, gimli::UnitOffset<usize>), gimli::Error> {
        let id = match self.units.binary_search_by_key(&offset.0, |u| u.offset.0) {
            Ok(_) | Err(0) => return Err(gimli::Error::NoEntryAtGivenOffset(offset.0 as u64)),
            Err(i) => i - 1,
        };
        let unit_offset = offset
            .to_unit_offset(&self.units[id].unit.header)
            .ok_or(gimli::Error::NoEntryAtGivenOffset(offset.0 as u64))?;
        Ok((id, unit_offset))
    }
}

/// The unit as gimli's `Unit::new` makes it, except that of its abbreviations only the one of
/// the root DIE is parsed and that the line program is not (the index needs neither). `None`
/// where anything is odd; the caller then parses the whole unit.
fn index_unit<'a>(
    dwarf: &gimli::Dwarf<Reader<'a>>,
    header: gimli::UnitHeader<Reader<'a>>,
) -> Option<(
    gimli::Unit<Reader<'a>>,
    Option<gimli::DebugLineOffset<usize>>,
)> {
    let entries = header.range_from(header.root_offset()..).ok()?;
    let code = uleb(entries.slice(), &mut 0)?;
    if code == 0 {
        return None;
    }
    let section = gimli::Section::reader(&dwarf.debug_abbrev);
    let table = section.slice().get(header.debug_abbrev_offset().0..)?;
    let (start, end) = find_abbreviation(table, code)?;
    let one = gimli::DebugAbbrev::new(table.get(start..end)?, gimli::Reader::endian(section));
    let abbreviations = Arc::new(one.abbreviations(gimli::DebugAbbrevOffset(0)).ok()?);
    abbreviations.get(code)?;

    // As `gimli::Unit::new_with_abbreviations`.
    let encoding = header.encoding();
    let mut unit = gimli::Unit {
        header,
        abbreviations: abbreviations.clone(),
        name: None,
        comp_dir: None,
        low_pc: 0,
        str_offsets_base: gimli::DebugStrOffsetsBase::default_for_encoding_and_file(
            encoding,
            dwarf.file_type,
        ),
        addr_base: gimli::DebugAddrBase(0),
        loclists_base: gimli::DebugLocListsBase::default_for_encoding_and_file(
            encoding,
            dwarf.file_type,
        ),
        rnglists_base: gimli::DebugRngListsBase::default_for_encoding_and_file(
            encoding,
            dwarf.file_type,
        ),
        line_program: None,
        dwo_id: match header.type_() {
            gimli::UnitType::Skeleton(id) | gimli::UnitType::SplitCompilation(id) => Some(id),
            _ => None,
        },
    };
    let mut entries = header.entries_raw(&abbreviations, None).ok()?;
    let abbrev = entries.read_abbreviation().ok()??;
    let (mut name, mut comp_dir, mut low_pc, mut line_program) = (None, None, None, None);
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec).ok()?;
        match (attr.name(), attr.value()) {
            (gimli::DW_AT_name, v) => name = Some(v),
            (gimli::DW_AT_comp_dir, v) => comp_dir = Some(v),
            (gimli::DW_AT_low_pc, v) => low_pc = Some(v),
            (gimli::DW_AT_stmt_list, AttributeValue::DebugLineRef(offset)) => {
                line_program = Some(offset)
            }
            (gimli::DW_AT_str_offsets_base, AttributeValue::DebugStrOffsetsBase(base)) => {
                unit.str_offsets_base = base
            }
            (
                gimli::DW_AT_addr_base | gimli::DW_AT_GNU_addr_base,
                AttributeValue::DebugAddrBase(base),
            ) => unit.addr_base = base,
            (gimli::DW_AT_loclists_base, AttributeValue::DebugLocListsBase(base)) => {
                unit.loclists_base = base
            }
            (
                gimli::DW_AT_rnglists_base | gimli::DW_AT_GNU_ranges_base,
                AttributeValue::DebugRngListsBase(base),
            ) => unit.rnglists_base = base,
            (gimli::DW_AT_GNU_dwo_id, AttributeValue::DwoId(id)) if unit.dwo_id.is_none() => {
                unit.dwo_id = Some(id)
            }
            _ => {}
        }
    }
    unit.name = name.and_then(|v| dwarf.attr_string(&unit, v).ok());
    unit.comp_dir = comp_dir.and_then(|v| dwarf.attr_string(&unit, v).ok());
    if let Some(v) = low_pc {
        if let Some(addr) = dwarf.attr_address(&unit, v).ok()? {
            unit.low_pc = addr;
        }
    }
    Some((unit, line_program))
}

/// Where the declaration of abbreviation `code` lies in the abbreviation table `table`, read as
/// gimli reads it; `None` if it is not there or anything is odd.
fn find_abbreviation(table: &[u8], code: u64) -> Option<(usize, usize)> {
    let mut pos = 0;
    loop {
        let start = pos;
        let c = uleb(table, &mut pos)?;
        if c == 0 {
            return None;
        }
        let tag = uleb_u16(table, &mut pos)?;
        let children = *table.get(pos)?;
        pos += 1;
        if tag == 0 || children > 1 {
            return None;
        }
        loop {
            let name = uleb_u16(table, &mut pos)?;
            let form = uleb_u16(table, &mut pos)?;
            match (name, form) {
                (0, 0) => break,
                (0, _) | (_, 0) => return None,
                _ => {}
            }
            if gimli::DwForm(form) == gimli::DW_FORM_implicit_const {
                sleb(table, &mut pos)?;
            }
        }
        if c == code {
            return Some((start, pos));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Line tables (addr2line's `Lines`).

#[derive(Clone, Copy)]
struct LineRow {
    address: u64,
    file_index: u64,
    line: u32,
}

/// addr2line's `LineSequence`, with the rows kept in one buffer per unit. Same size, same
/// auto traits and not `Copy`, so the unstable sort orders ties exactly as addr2line's does.
struct LineSequence {
    start: u64,
    end: u64,
    rows_start: usize,
    rows_end: usize,
}

struct Lines<'h, 'a> {
    sequences: Vec<LineSequence>,
    rows: Vec<LineRow>,
    /// The finished program's header (it holds the file table).
    header: std::borrow::Cow<'h, gimli::LineProgramHeader<Reader<'a>>>,
    /// Number of entries in addr2line's file table (index 0 included).
    files: u64,
    /// The sequences are disjoint and each one's row addresses strictly ascend.
    ordered: bool,
}

/// Builds addr2line's sequences from the rows of a line program, fed in order.
struct SequenceBuilder<'b> {
    sequences: &'b mut Vec<LineSequence>,
    rows: &'b mut Vec<LineRow>,
    /// Start of the current sequence's rows in `rows`.
    current: usize,
}

impl SequenceBuilder<'_> {
    #[inline]
    fn row(&mut self, address: u64, file_index: u64, line: u64, end_sequence: bool) {
        if end_sequence {
            if let Some(start) = self.rows.get(self.current).map(|r| r.address) {
                if start < address {
                    self.sequences.push(LineSequence {
                        start,
                        end: address,
                        rows_start: self.current,
                        rows_end: self.rows.len(),
                    });
                    self.current = self.rows.len();
                } else {
                    self.rows.truncate(self.current);
                }
            }
            return;
        }
        // addr2line keeps the line as u32.
        let line = line as u32;
        if self.rows.len() > self.current {
            if let Some(last) = self.rows.last_mut() {
                if last.address == address {
                    last.file_index = file_index;
                    last.line = line;
                    return;
                }
            }
        }
        self.rows.push(LineRow {
            address,
            file_index,
            line,
        });
    }

    /// Drops the rows of an unfinished last sequence.
    fn finish(self) {
        self.rows.truncate(self.current);
    }
}

impl<'h, 'a> Lines<'h, 'a> {
    /// Runs the line program (with [`run_line_program`], else gimli's row iterator), reusing
    /// the buffers `spare` (see [`Lines::into_buffers`]).
    fn parse(
        unit: gimli::UnitRef<'_, Reader<'a>>,
        ilnp: &'h gimli::IncompleteLineProgram<Reader<'a>>,
        spare: (Vec<LineSequence>, Vec<LineRow>),
    ) -> Result<Self, gimli::Error> {
        let (mut sequences, mut rows) = spare;
        sequences.clear();
        rows.clear();
        let header = ilnp.header();
        let mut builder = SequenceBuilder {
            sequences: &mut sequences,
            rows: &mut rows,
            current: 0,
        };
        let header = if run_line_program(header, &mut builder).is_some() {
            builder.finish();
            std::borrow::Cow::Borrowed(header)
        } else {
            // Something the fast interpreter does not handle (or an error): gimli's rows.
            sequences.clear();
            rows.clear();
            let mut builder = SequenceBuilder {
                sequences: &mut sequences,
                rows: &mut rows,
                current: 0,
            };
            let mut program = ilnp.clone().rows();
            while let Some((_, row)) = program.next_row()? {
                builder.row(
                    row.address(),
                    row.file_index(),
                    row.line().map_or(0, NonZeroU64::get),
                    row.end_sequence(),
                );
            }
            builder.finish();
            std::borrow::Cow::Owned(program.header().clone())
        };
        sequences.sort_unstable_by_key(|x| x.start);
        let ordered = sequences.windows(2).all(|w| w[0].end <= w[1].start)
            && sequences.iter().all(|s| {
                rows[s.rows_start..s.rows_end]
                    .windows(2)
                    .all(|w| w[0].address < w[1].address)
            });

        // addr2line renders every file name up front and fails the unit if one cannot be read;
        // check the same here, render only those used.
        if let Some(file) = header.file(0) {
            check_file(unit, file, &header)?;
        }
        let mut files = 1;
        while let Some(file) = header.file(files) {
            check_file(unit, file, &header)?;
            files += 1;
        }
        Ok(Lines {
            sequences,
            rows,
            header,
            files,
            ordered,
        })
    }

    fn into_buffers(self) -> (Vec<LineSequence>, Vec<LineRow>) {
        (self.sequences, self.rows)
    }

    /// The address ranges of the sequences.
    fn ranges(&self) -> impl Iterator<Item = gimli::Range> + '_ {
        self.sequences.iter().map(|s| gimli::Range {
            begin: s.start,
            end: s.end,
        })
    }

    /// [`Lines::find_location`] for ascending probes, `cursor` (start: default) carried from
    /// one to the next. Where the sequences are disjoint and each one's rows ascend (line
    /// programs make them so), the binary searches have one answer, found here by walking.
    fn find_location_sorted(&self, probe: u64, cursor: &mut (usize, usize)) -> Option<(u64, u32)> {
        if !self.ordered {
            return self.find_location(probe);
        }
        let (seq, row) = cursor;
        while self.sequences.get(*seq).is_some_and(|s| s.end <= probe) {
            *seq += 1;
            *row = 0;
        }
        let sequence = self.sequences.get(*seq)?;
        if probe < sequence.start {
            return None;
        }
        let rows = &self.rows[sequence.rows_start..sequence.rows_end];
        while rows.get(*row + 1).is_some_and(|r| r.address <= probe) {
            *row += 1;
        }
        let row = rows.get(*row).filter(|r| r.address <= probe)?;
        Some((row.file_index, row.line))
    }

    /// (file index, line) of the row covering `probe`.
    fn find_location(&self, probe: u64) -> Option<(u64, u32)> {
        let seq_idx = self
            .sequences
            .binary_search_by(|sequence| {
                if probe < sequence.start {
                    Ordering::Greater
                } else if probe >= sequence.end {
                    Ordering::Less
                } else {
                    Ordering::Equal
                }
            })
            .ok()?;
        let sequence = &self.sequences[seq_idx];
        let rows = &self.rows[sequence.rows_start..sequence.rows_end];
        let idx = match rows.binary_search_by(|row| row.address.cmp(&probe)) {
            Ok(x) => x,
            Err(0) => return None,
            Err(x) => x - 1,
        };
        let row = &rows[idx];
        Some((row.file_index, row.line))
    }

    /// addr2line's rendering of file `index` (comp_dir, include directory, name).
    fn render(&self, unit: gimli::UnitRef<'_, Reader<'a>>, index: u64) -> Option<String> {
        if index >= self.files {
            return None;
        }
        let header = &*self.header;
        match header.file(index) {
            Some(file) => render_file(unit, file, header).ok(),
            None => Some(String::new()),
        }
    }
}

/// Reads a ULEB128 the way gimli accepts it; `None` for anything longer than 9 bytes (gimli's
/// own parser then decides) or past the end.
#[inline(always)]
fn uleb(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    if first & 0x80 == 0 {
        *pos += 1;
        return Some(u64::from(first));
    }
    uleb_long(buf, pos)
}

#[inline(never)]
fn uleb_long(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut result = 0u64;
    let mut shift = 0;
    loop {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        result |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(result);
        }
        shift += 7;
        if shift >= 63 {
            return None;
        }
    }
}

/// Reads a SLEB128 like [`uleb`].
#[inline]
fn sleb(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut result = 0i64;
    let mut shift = 0;
    loop {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        result |= i64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            if shift < 64 && byte & 0x40 != 0 {
                result |= !0 << shift;
            }
            return Some(result);
        }
        if shift >= 63 {
            return None;
        }
    }
}

/// Executes a line program the way gimli's `LineRows` does (same registers, tombstones, address
/// overflow checks), feeding the rows that matter here (address, file, line, end of sequence)
/// to `out`. Returns `None`, having fed some rows perhaps, for anything outside the common
/// subset: VLIW op indexes, `DW_LNE_define_file`, unknown standard opcodes, non-8-byte or
/// big-endian addresses, overlong LEB128s, truncated or overflowing input. The caller then
/// runs gimli's interpreter instead, which also reports errors exactly as addr2line sees them.
fn run_line_program(
    header: &gimli::LineProgramHeader<Reader<'_>>,
    out: &mut SequenceBuilder<'_>,
) -> Option<()> {
    let encoding = header.line_encoding();
    if header.address_size() != 8
        || encoding.maximum_operations_per_instruction != 1
        || encoding.line_range == 0
        || gimli::Reader::endian(&header.raw_program_buf()) != gimli::RunTimeEndian::Little
    {
        return None;
    }
    let version = header.version();
    let opcode_base = header.opcode_base();
    let line_base = i64::from(encoding.line_base);
    let line_range = encoding.line_range;
    let min_len = u64::from(encoding.minimum_instruction_length);
    let const_add_pc = u64::from(255u8.wrapping_sub(opcode_base) / line_range);
    // u64::min_tombstone(8).
    const MIN_TOMBSTONE: u64 = u64::MAX - 1;

    let buf = header.raw_program_buf().slice();
    let mut pos = 0;
    let (mut address, mut file, mut line, mut tombstone) = (0u64, 1u64, 1u64, false);
    let advance_line = |line: &mut u64, inc: i64| {
        if inc < 0 {
            let dec = inc.wrapping_neg() as u64;
            *line = line.checked_sub(dec).unwrap_or(0);
        } else {
            *line = line.wrapping_add(inc as u64);
        }
    };
    while pos < buf.len() {
        let opcode = buf[pos];
        pos += 1;
        // Whether this instruction appends a row; end of sequence is `Some(true)`.
        let mut row: Option<bool> = None;
        if opcode == 0 {
            let len = usize::try_from(uleb(buf, &mut pos)?).ok()?;
            let end = pos.checked_add(len).filter(|e| *e <= buf.len())?;
            let rest = &buf[pos..end];
            pos = end;
            match *rest.first()? {
                1 => row = Some(true),
                2 => {
                    let bytes: [u8; 8] = rest.get(1..9)?.try_into().ok()?;
                    let new = u64::from_le_bytes(bytes);
                    tombstone = new < address || new >= MIN_TOMBSTONE;
                    if !tombstone {
                        address = new;
                    }
                }
                3 if version <= 4 => return None,
                4 => {
                    uleb(rest, &mut 1)?;
                }
                _ => {}
            }
        } else if opcode >= opcode_base {
            let adjusted = opcode - opcode_base;
            advance_line(&mut line, line_base + i64::from(adjusted % line_range));
            if !tombstone {
                let advance = min_len.wrapping_mul(u64::from(adjusted / line_range));
                address = address.checked_add(advance)?;
            }
            row = Some(false);
        } else {
            match opcode {
                1 => row = Some(false),
                2 => {
                    let adv = uleb(buf, &mut pos)?;
                    if !tombstone {
                        address = address.checked_add(min_len.wrapping_mul(adv))?;
                    }
                }
                3 => advance_line(&mut line, sleb(buf, &mut pos)?),
                4 => file = uleb(buf, &mut pos)?,
                5 | 12 => {
                    uleb(buf, &mut pos)?;
                }
                6 | 7 | 10 | 11 => {}
                8 => {
                    if !tombstone {
                        address = address.checked_add(min_len.wrapping_mul(const_add_pc))?;
                    }
                }
                9 => {
                    let bytes: [u8; 2] = buf.get(pos..pos + 2)?.try_into().ok()?;
                    pos += 2;
                    if !tombstone {
                        address = address.checked_add(u64::from(u16::from_le_bytes(bytes)))?;
                    }
                }
                _ => return None,
            }
        }
        if let Some(end_sequence) = row {
            if !tombstone {
                out.row(address, file, line, end_sequence);
            }
            if end_sequence {
                (address, file, line, tombstone) = (0, 1, 1, false);
            }
        }
    }
    Some(())
}

fn check_file<'a>(
    unit: gimli::UnitRef<'_, Reader<'a>>,
    file: &gimli::FileEntry<Reader<'a>>,
    header: &gimli::LineProgramHeader<Reader<'a>>,
) -> Result<(), gimli::Error> {
    if file.directory_index() != 0 {
        if let Some(directory) = file.directory(header) {
            check_string(unit, directory)?;
        }
    }
    check_string(unit, file.path_name())
}

/// `unit.attr_string(value)` succeeds. For `.debug_line_str` offsets (what DWARF 5 file
/// tables use) that is: the offset is before the section's last NUL, checked without reading
/// the string.
#[inline]
fn check_string<'a>(
    unit: gimli::UnitRef<'_, Reader<'a>>,
    value: AttributeValue<Reader<'a>>,
) -> Result<(), gimli::Error> {
    if let AttributeValue::DebugLineStrRef(offset) = value {
        let section = gimli::Section::reader(&unit.dwarf.debug_line_str).slice();
        if section
            .iter()
            .rposition(|b| *b == 0)
            .is_some_and(|nul| offset.0 <= nul)
        {
            return Ok(());
        }
    }
    unit.attr_string(value).map(drop)
}

pub(super) fn render_file<'a>(
    unit: gimli::UnitRef<'_, Reader<'a>>,
    file: &gimli::FileEntry<Reader<'a>>,
    header: &gimli::LineProgramHeader<Reader<'a>>,
) -> Result<String, gimli::Error> {
    let mut path = match unit.comp_dir {
        Some(comp_dir) => comp_dir.to_string_lossy().into_owned(),
        None => String::new(),
    };
    if file.directory_index() != 0 {
        if let Some(directory) = file.directory(header) {
            path_push(&mut path, &unit.attr_string(directory)?.to_string_lossy());
        }
    }
    path_push(
        &mut path,
        &unit.attr_string(file.path_name())?.to_string_lossy(),
    );
    Ok(path)
}

fn path_push(path: &mut String, p: &str) {
    if has_forward_slash_root(p) || has_backward_slash_root(p) {
        *path = p.to_string();
    } else {
        let dir_separator = if has_backward_slash_root(path.as_str()) {
            '\\'
        } else {
            '/'
        };
        if !path.is_empty() && !path.ends_with(dir_separator) {
            path.push(dir_separator);
        }
        *path += p;
    }
}

fn has_forward_slash_root(p: &str) -> bool {
    p.starts_with('/') || p.get(1..3) == Some(":/")
}

fn has_backward_slash_root(p: &str) -> bool {
    p.starts_with('\\') || p.get(1..3) == Some(":\\")
}

// ---------------------------------------------------------------------------------------------
// Functions and their inline trees (addr2line's `Functions` and `Function`).

/// Element type and layout as addr2line's, so the unstable sort orders ties alike.
struct FunctionAddress {
    range: gimli::Range,
    function: usize,
}

/// Element type and layout as addr2line's, so the unstable sort orders ties alike.
struct InlinedFunctionAddress {
    range: gimli::Range,
    call_depth: usize,
    /// Index among the inlined functions of the same function.
    function: usize,
}

struct InlinedFunction {
    name: Option<Arc<str>>,
    call_file: Option<u64>,
    call_line: u32,
}

struct Function {
    name: Option<Arc<str>>,
    /// Inlined functions seen so far (while walking), then: its inlined functions are
    /// `Functions::inlined[inlined..inlined + count]`.
    inlined: usize,
    count: usize,
    /// Its inlined ranges: `Functions::inlined_addresses[addresses.0..addresses.1]`.
    addresses: (usize, usize),
}

/// One unit's subprograms with code and their inline trees, as addr2line's `Functions` and
/// `Function`s hold them, but in flat buffers reused from unit to unit.
#[derive(Default)]
struct Functions {
    functions: Vec<Function>,
    addresses: Vec<FunctionAddress>,
    inlined: Vec<InlinedFunction>,
    inlined_addresses: Vec<InlinedFunctionAddress>,
    /// The function each `inlined` / `inlined_addresses` entry belongs to, in walk order.
    inlined_owner: Vec<u32>,
    address_owner: Vec<u32>,
}

impl Functions {
    fn clear(&mut self) {
        self.functions.clear();
        self.addresses.clear();
        self.inlined.clear();
        self.inlined_addresses.clear();
        self.inlined_owner.clear();
        self.address_owner.clear();
    }

    /// After the walk: groups the inline entries by function (keeping walk order within each,
    /// which is the order addr2line pushes them in) and sorts like addr2line.
    fn finish(&mut self) {
        let grouped = self.inlined_owner.is_sorted() && self.address_owner.is_sorted();
        if !grouped {
            // Only with a subprogram with code nested in another: stable counting sort.
            let n = self.functions.len();
            let order = |owner: &[u32]| -> Vec<usize> {
                let mut start = vec![0usize; n + 1];
                for &o in owner {
                    start[o as usize + 1] += 1;
                }
                for i in 0..n {
                    start[i + 1] += start[i];
                }
                let mut order = vec![0; owner.len()];
                for (i, &o) in owner.iter().enumerate() {
                    order[start[o as usize]] = i;
                    start[o as usize] += 1;
                }
                order
            };
            let o = order(&self.inlined_owner);
            let mut old: Vec<Option<InlinedFunction>> = self.inlined.drain(..).map(Some).collect();
            self.inlined = o.iter().filter_map(|&i| old[i].take()).collect();
            self.inlined_owner = o.iter().map(|&i| self.inlined_owner[i]).collect();
            let o = order(&self.address_owner);
            let mut old: Vec<Option<InlinedFunctionAddress>> =
                self.inlined_addresses.drain(..).map(Some).collect();
            self.inlined_addresses = o.iter().filter_map(|&i| old[i].take()).collect();
            self.address_owner = o.iter().map(|&i| self.address_owner[i]).collect();
        }
        let (mut i, mut a) = (0, 0);
        for (f, function) in self.functions.iter_mut().enumerate() {
            function.inlined = i;
            while self.inlined_owner.get(i) == Some(&(f as u32)) {
                i += 1;
            }
            debug_assert_eq!(i - function.inlined, function.count);
            let start = a;
            while self.address_owner.get(a) == Some(&(f as u32)) {
                a += 1;
            }
            function.addresses = (start, a);
            self.inlined_addresses[start..a].sort_unstable_by(|r1, r2| {
                r1.call_depth
                    .cmp(&r2.call_depth)
                    .then(r1.range.begin.cmp(&r2.range.begin))
            });
        }
        self.addresses.sort_unstable_by_key(|x| x.range.begin);
    }

    fn find_address(&self, probe: u64) -> Option<usize> {
        self.addresses
            .binary_search_by(|address| {
                if probe < address.range.begin {
                    Ordering::Greater
                } else if probe >= address.range.end {
                    Ordering::Less
                } else {
                    Ordering::Equal
                }
            })
            .ok()
    }

    /// The inlined functions of `function` containing `probe`, outermost first, as indexes
    /// into `inlined`.
    fn find_inlined_functions(&self, function: &Function, probe: u64, out: &mut Vec<usize>) {
        out.clear();
        let mut inlined_addresses =
            &self.inlined_addresses[function.addresses.0..function.addresses.1];
        loop {
            let current_depth = out.len();
            let search = inlined_addresses.binary_search_by(|range| {
                if range.call_depth > current_depth {
                    Ordering::Greater
                } else if range.call_depth < current_depth {
                    Ordering::Less
                } else if range.range.begin > probe {
                    Ordering::Greater
                } else if range.range.end <= probe {
                    Ordering::Less
                } else {
                    Ordering::Equal
                }
            });
            let Ok(index) = search else { break };
            out.push(function.inlined + inlined_addresses[index].function);
            inlined_addresses = &inlined_addresses[index + 1..];
        }
    }
}

fn has_range_attributes(abbrev: &gimli::Abbreviation) -> bool {
    abbrev
        .attributes()
        .iter()
        .any(|a| matches!(a.name(), gimli::DW_AT_low_pc | gimli::DW_AT_ranges))
}

/// What the walk does with a DIE of some abbreviation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PlanKind {
    /// Skip it.
    Other,
    /// A subprogram with range attributes: read it.
    Subprogram,
    /// A subprogram without: skip it and what is below.
    Codeless,
    /// An inlined subroutine: read it inside a function, else skip it.
    Inlined,
}

/// A variable-size attribute form, as gimli's `skip_attributes` skips it.
#[derive(Clone, Copy, Debug)]
enum VarForm {
    Leb,
    Block1,
    Block2,
    Block4,
    BlockLeb,
    String,
}

/// One abbreviation: its attributes are `Abbrevs::specs[specs.0..specs.1]`; to skip a DIE of
/// it, `Abbrevs::ops[ops.0..ops.1]` (each a run of fixed bytes, then a variable-size form) and
/// `tail` fixed bytes (`skippable` false: a form gimli cannot skip).
#[derive(Clone, Copy, Debug)]
struct Decl {
    kind: PlanKind,
    children: bool,
    skippable: bool,
    specs: (u32, u32),
    ops: (u32, u32),
    tail: u32,
}

/// One unit's abbreviation table, parsed from `.debug_abbrev` the way gimli parses it (for
/// what is read here; anything unusual and the table is not used).
#[derive(Default)]
struct Abbrevs {
    /// By code: index into `decls` + 1 (0: no such code).
    by_code: Vec<u32>,
    decls: Vec<Decl>,
    specs: Vec<gimli::AttributeSpecification>,
    ops: Vec<(u32, VarForm)>,
}

/// A ULEB128 as gimli's `read_uleb128_u16` reads it.
fn uleb_u16(buf: &[u8], pos: &mut usize) -> Option<u16> {
    let b0 = *buf.get(*pos)?;
    *pos += 1;
    if b0 & 0x80 == 0 {
        return Some(u16::from(b0));
    }
    let b1 = *buf.get(*pos)?;
    *pos += 1;
    let v = u16::from(b0 & 0x7f) | (u16::from(b1 & 0x7f) << 7);
    if b1 & 0x80 == 0 {
        return Some(v);
    }
    let b2 = *buf.get(*pos)?;
    *pos += 1;
    if b2 > 3 {
        return None;
    }
    Some(v + (u16::from(b2) << 14))
}

impl Abbrevs {
    /// Parses the table `table` (from the unit's offset to the end of the section); false
    /// where gimli would fail or where anything is unusual (codes of 2^16 and more).
    fn parse(&mut self, table: &[u8], encoding: gimli::Encoding) -> bool {
        self.by_code.clear();
        self.decls.clear();
        self.specs.clear();
        self.ops.clear();
        let mut pos = 0;
        // As gimli: the table ends at a null code, or (tolerated) at the end of the section.
        while pos < table.len() {
            let Some(code) = uleb(table, &mut pos) else {
                return false;
            };
            if code == 0 {
                break;
            }
            let Ok(code) = usize::try_from(code) else {
                return false;
            };
            if code >= 1 << 16 {
                return false;
            }
            let Some(tag) = uleb_u16(table, &mut pos) else {
                return false;
            };
            let Some(&children) = table.get(pos) else {
                return false;
            };
            pos += 1;
            if tag == 0 || children > 1 {
                return false;
            }
            let first = self.specs.len();
            loop {
                let (Some(name), Some(form)) =
                    (uleb_u16(table, &mut pos), uleb_u16(table, &mut pos))
                else {
                    return false;
                };
                match (name, form) {
                    (0, 0) => break,
                    (0, _) | (_, 0) => return false,
                    _ => {}
                }
                let form = gimli::DwForm(form);
                let implicit = if form == gimli::DW_FORM_implicit_const {
                    match sleb(table, &mut pos) {
                        Some(v) => Some(v),
                        None => return false,
                    }
                } else {
                    None
                };
                self.specs.push(gimli::AttributeSpecification::new(
                    gimli::DwAt(name),
                    form,
                    implicit,
                ));
            }
            if self.by_code.len() <= code {
                self.by_code.resize(code + 1, 0);
            }
            if self.by_code[code] != 0 {
                return false; // gimli: duplicate abbreviation code
            }
            let decl = self.plan(gimli::DwTag(tag), children == 1, first, encoding);
            self.decls.push(decl);
            self.by_code[code] = self.decls.len() as u32;
        }
        true
    }

    fn plan(
        &mut self,
        tag: gimli::DwTag,
        children: bool,
        first: usize,
        encoding: gimli::Encoding,
    ) -> Decl {
        let specs = &self.specs[first..];
        let ranged = specs
            .iter()
            .any(|a| matches!(a.name(), gimli::DW_AT_low_pc | gimli::DW_AT_ranges));
        let kind = match tag {
            gimli::DW_TAG_subprogram if ranged => PlanKind::Subprogram,
            gimli::DW_TAG_subprogram => PlanKind::Codeless,
            gimli::DW_TAG_inlined_subroutine => PlanKind::Inlined,
            _ => PlanKind::Other,
        };
        let start = self.ops.len() as u32;
        let mut fixed = 0u32;
        let mut skippable = true;
        let word = u32::from(encoding.format.word_size());
        for spec in &self.specs[first..] {
            let size = match spec.form() {
                gimli::DW_FORM_addr => u32::from(encoding.address_size),
                gimli::DW_FORM_implicit_const | gimli::DW_FORM_flag_present => 0,
                gimli::DW_FORM_data1
                | gimli::DW_FORM_flag
                | gimli::DW_FORM_strx1
                | gimli::DW_FORM_ref1
                | gimli::DW_FORM_addrx1 => 1,
                gimli::DW_FORM_data2
                | gimli::DW_FORM_ref2
                | gimli::DW_FORM_addrx2
                | gimli::DW_FORM_strx2 => 2,
                gimli::DW_FORM_addrx3 | gimli::DW_FORM_strx3 => 3,
                gimli::DW_FORM_data4
                | gimli::DW_FORM_ref_sup4
                | gimli::DW_FORM_ref4
                | gimli::DW_FORM_strx4
                | gimli::DW_FORM_addrx4 => 4,
                gimli::DW_FORM_data8
                | gimli::DW_FORM_ref8
                | gimli::DW_FORM_ref_sig8
                | gimli::DW_FORM_ref_sup8 => 8,
                gimli::DW_FORM_data16 => 16,
                gimli::DW_FORM_sec_offset
                | gimli::DW_FORM_GNU_ref_alt
                | gimli::DW_FORM_strp
                | gimli::DW_FORM_strp_sup
                | gimli::DW_FORM_GNU_strp_alt
                | gimli::DW_FORM_line_strp => word,
                gimli::DW_FORM_ref_addr if encoding.version == 2 => {
                    u32::from(encoding.address_size)
                }
                gimli::DW_FORM_ref_addr => word,
                form => {
                    let var = match form {
                        gimli::DW_FORM_block1 => VarForm::Block1,
                        gimli::DW_FORM_block2 => VarForm::Block2,
                        gimli::DW_FORM_block4 => VarForm::Block4,
                        gimli::DW_FORM_block | gimli::DW_FORM_exprloc => VarForm::BlockLeb,
                        gimli::DW_FORM_string => VarForm::String,
                        gimli::DW_FORM_udata
                        | gimli::DW_FORM_sdata
                        | gimli::DW_FORM_ref_udata
                        | gimli::DW_FORM_strx
                        | gimli::DW_FORM_GNU_str_index
                        | gimli::DW_FORM_addrx
                        | gimli::DW_FORM_GNU_addr_index
                        | gimli::DW_FORM_loclistx
                        | gimli::DW_FORM_rnglistx => VarForm::Leb,
                        // DW_FORM_indirect and unknown forms: gimli decides.
                        _ => {
                            skippable = false;
                            continue;
                        }
                    };
                    self.ops.push((fixed, var));
                    fixed = 0;
                    continue;
                }
            };
            fixed += size;
        }
        Decl {
            kind,
            children,
            skippable,
            specs: (first as u32, self.specs.len() as u32),
            ops: (start, self.ops.len() as u32),
            tail: fixed,
        }
    }

    #[inline]
    fn get(&self, code: u64) -> Option<Decl> {
        let i = *self.by_code.get(usize::try_from(code).ok()?)?;
        (i != 0).then(|| self.decls[i as usize - 1])
    }

    /// Moves `pos` past the attributes of a DIE of `decl` as gimli's `skip_attributes` would;
    /// false where it would fail (or might: `decl` not skippable).
    #[inline]
    fn skip(&self, decl: Decl, buf: &[u8], pos: &mut usize) -> bool {
        if !decl.skippable {
            return false;
        }
        let mut p = *pos;
        for &(fixed, form) in &self.ops[decl.ops.0 as usize..decl.ops.1 as usize] {
            p += fixed as usize;
            let len = match form {
                VarForm::Leb => {
                    loop {
                        let Some(&b) = buf.get(p) else { return false };
                        p += 1;
                        if b & 0x80 == 0 {
                            break;
                        }
                    }
                    0
                }
                VarForm::Block1 => {
                    let Some(&b) = buf.get(p) else { return false };
                    p += 1;
                    usize::from(b)
                }
                VarForm::Block2 => {
                    let Some(b) = buf.get(p..p + 2) else {
                        return false;
                    };
                    p += 2;
                    usize::from(u16::from_le_bytes([b[0], b[1]]))
                }
                VarForm::Block4 => {
                    let Some(b) = buf.get(p..p + 4) else {
                        return false;
                    };
                    p += 4;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                }
                VarForm::BlockLeb => {
                    match uleb(buf, &mut p).and_then(|l| usize::try_from(l).ok()) {
                        Some(l) => l,
                        None => return false,
                    }
                }
                VarForm::String => {
                    match buf.get(p..).and_then(|b| b.iter().position(|c| *c == 0)) {
                        Some(nul) => nul + 1,
                        None => return false,
                    }
                }
            };
            p = match p.checked_add(len) {
                Some(p) => p,
                None => return false,
            };
        }
        p = match p.checked_add(decl.tail as usize) {
            Some(p) => p,
            None => return false,
        };
        if p > buf.len() {
            return false;
        }
        *pos = p;
        true
    }
}

/// gimli's rule for which attributes a `DW_FORM_data4`/`data8` is a section offset of.
fn allow_section_offset(name: gimli::DwAt, version: u16) -> bool {
    match name {
        gimli::DW_AT_location
        | gimli::DW_AT_stmt_list
        | gimli::DW_AT_string_length
        | gimli::DW_AT_return_addr
        | gimli::DW_AT_start_scope
        | gimli::DW_AT_frame_base
        | gimli::DW_AT_macro_info
        | gimli::DW_AT_macros
        | gimli::DW_AT_segment
        | gimli::DW_AT_static_link
        | gimli::DW_AT_use_location
        | gimli::DW_AT_vtable_elem_location
        | gimli::DW_AT_ranges => true,
        gimli::DW_AT_data_member_location => version == 2 || version == 3,
        _ => false,
    }
}

/// Reads one attribute at `pos` of `buf` (a unit's DIEs, little-endian) into the value gimli's
/// `EntriesRaw::read_attribute` gives; `None` where gimli would fail, or for
/// `DW_FORM_indirect` (left to gimli).
fn read_value<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    spec: gimli::AttributeSpecification,
    encoding: gimli::Encoding,
) -> Option<AttributeValue<Reader<'a>>> {
    let endian = gimli::RunTimeEndian::Little;
    let take = |pos: &mut usize, n: usize| -> Option<&'a [u8]> {
        let s = buf.get(*pos..pos.checked_add(n)?)?;
        *pos += n;
        Some(s)
    };
    let uint = |pos: &mut usize, n: usize| -> Option<u64> {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(take(pos, n)?);
        Some(u64::from_le_bytes(w))
    };
    let word = |pos: &mut usize| -> Option<usize> {
        let n = usize::from(encoding.format.word_size());
        usize::try_from(uint(pos, n)?).ok()
    };
    let slice = |s: &'a [u8]| gimli::EndianSlice::new(s, endian);
    let leb = |pos: &mut usize| -> Option<usize> { usize::try_from(uleb(buf, pos)?).ok() };
    use gimli::AttributeValue as V;
    Some(match spec.form() {
        gimli::DW_FORM_addr => match encoding.address_size {
            n @ (1 | 2 | 4 | 8) => V::Addr(uint(pos, usize::from(n))?),
            _ => return None,
        },
        gimli::DW_FORM_block1 => {
            let n = uint(pos, 1)? as usize;
            V::Block(slice(take(pos, n)?))
        }
        gimli::DW_FORM_block2 => {
            let n = uint(pos, 2)? as usize;
            V::Block(slice(take(pos, n)?))
        }
        gimli::DW_FORM_block4 => {
            let n = uint(pos, 4)? as usize;
            V::Block(slice(take(pos, n)?))
        }
        gimli::DW_FORM_block => {
            let n = leb(pos)?;
            V::Block(slice(take(pos, n)?))
        }
        gimli::DW_FORM_data1 => V::Data1(uint(pos, 1)? as u8),
        gimli::DW_FORM_data2 => V::Data2(uint(pos, 2)? as u16),
        gimli::DW_FORM_data4 => {
            if encoding.format == gimli::Format::Dwarf32
                && allow_section_offset(spec.name(), encoding.version)
            {
                V::SecOffset(uint(pos, 4)? as usize)
            } else {
                V::Data4(uint(pos, 4)? as u32)
            }
        }
        gimli::DW_FORM_data8 => {
            if encoding.format == gimli::Format::Dwarf64
                && allow_section_offset(spec.name(), encoding.version)
            {
                V::SecOffset(usize::try_from(uint(pos, 8)?).ok()?)
            } else {
                V::Data8(uint(pos, 8)?)
            }
        }
        gimli::DW_FORM_data16 => {
            let lo = uint(pos, 8)?;
            let hi = uint(pos, 8)?;
            V::Data16(u128::from(lo) | (u128::from(hi) << 64))
        }
        gimli::DW_FORM_udata => V::Udata(uleb(buf, pos)?),
        gimli::DW_FORM_sdata => V::Sdata(sleb(buf, pos)?),
        gimli::DW_FORM_exprloc => {
            let n = leb(pos)?;
            V::Exprloc(gimli::Expression(slice(take(pos, n)?)))
        }
        gimli::DW_FORM_flag => V::Flag(uint(pos, 1)? != 0),
        gimli::DW_FORM_flag_present => V::Flag(true),
        gimli::DW_FORM_sec_offset => V::SecOffset(word(pos)?),
        gimli::DW_FORM_ref1 => V::UnitRef(gimli::UnitOffset(uint(pos, 1)? as usize)),
        gimli::DW_FORM_ref2 => V::UnitRef(gimli::UnitOffset(uint(pos, 2)? as usize)),
        gimli::DW_FORM_ref4 => V::UnitRef(gimli::UnitOffset(uint(pos, 4)? as usize)),
        gimli::DW_FORM_ref8 => V::UnitRef(gimli::UnitOffset(usize::try_from(uint(pos, 8)?).ok()?)),
        gimli::DW_FORM_ref_udata => V::UnitRef(gimli::UnitOffset(leb(pos)?)),
        gimli::DW_FORM_ref_addr => {
            let offset = if encoding.version == 2 {
                match encoding.address_size {
                    n @ (1 | 2 | 4 | 8) => usize::try_from(uint(pos, usize::from(n))?).ok()?,
                    _ => return None,
                }
            } else {
                word(pos)?
            };
            V::DebugInfoRef(gimli::DebugInfoOffset(offset))
        }
        gimli::DW_FORM_ref_sig8 => V::DebugTypesRef(gimli::DebugTypeSignature(uint(pos, 8)?)),
        gimli::DW_FORM_ref_sup4 => {
            V::DebugInfoRefSup(gimli::DebugInfoOffset(uint(pos, 4)? as usize))
        }
        gimli::DW_FORM_ref_sup8 => {
            V::DebugInfoRefSup(gimli::DebugInfoOffset(usize::try_from(uint(pos, 8)?).ok()?))
        }
        gimli::DW_FORM_GNU_ref_alt => V::DebugInfoRefSup(gimli::DebugInfoOffset(word(pos)?)),
        gimli::DW_FORM_string => {
            let rest = buf.get(*pos..)?;
            let nul = rest.iter().position(|c| *c == 0)?;
            *pos += nul + 1;
            V::String(slice(&rest[..nul]))
        }
        gimli::DW_FORM_strp => V::DebugStrRef(gimli::DebugStrOffset(word(pos)?)),
        gimli::DW_FORM_strp_sup | gimli::DW_FORM_GNU_strp_alt => {
            V::DebugStrRefSup(gimli::DebugStrOffset(word(pos)?))
        }
        gimli::DW_FORM_line_strp => V::DebugLineStrRef(gimli::DebugLineStrOffset(word(pos)?)),
        gimli::DW_FORM_implicit_const => V::Sdata(spec.implicit_const_value()?),
        gimli::DW_FORM_strx | gimli::DW_FORM_GNU_str_index => {
            V::DebugStrOffsetsIndex(gimli::DebugStrOffsetsIndex(leb(pos)?))
        }
        gimli::DW_FORM_strx1 => {
            V::DebugStrOffsetsIndex(gimli::DebugStrOffsetsIndex(uint(pos, 1)? as usize))
        }
        gimli::DW_FORM_strx2 => {
            V::DebugStrOffsetsIndex(gimli::DebugStrOffsetsIndex(uint(pos, 2)? as usize))
        }
        gimli::DW_FORM_strx3 => {
            V::DebugStrOffsetsIndex(gimli::DebugStrOffsetsIndex(uint(pos, 3)? as usize))
        }
        gimli::DW_FORM_strx4 => {
            V::DebugStrOffsetsIndex(gimli::DebugStrOffsetsIndex(uint(pos, 4)? as usize))
        }
        gimli::DW_FORM_addrx | gimli::DW_FORM_GNU_addr_index => {
            V::DebugAddrIndex(gimli::DebugAddrIndex(leb(pos)?))
        }
        gimli::DW_FORM_addrx1 => V::DebugAddrIndex(gimli::DebugAddrIndex(uint(pos, 1)? as usize)),
        gimli::DW_FORM_addrx2 => V::DebugAddrIndex(gimli::DebugAddrIndex(uint(pos, 2)? as usize)),
        gimli::DW_FORM_addrx3 => V::DebugAddrIndex(gimli::DebugAddrIndex(uint(pos, 3)? as usize)),
        gimli::DW_FORM_addrx4 => V::DebugAddrIndex(gimli::DebugAddrIndex(uint(pos, 4)? as usize)),
        gimli::DW_FORM_loclistx => V::DebugLocListsIndex(gimli::DebugLocListsIndex(leb(pos)?)),
        gimli::DW_FORM_rnglistx => V::DebugRngListsIndex(gimli::DebugRngListsIndex(leb(pos)?)),
        _ => return None,
    })
}

/// `gimli::Attribute::value` for the attributes read here (the others are not looked at).
fn normalize<'a>(
    name: gimli::DwAt,
    value: AttributeValue<Reader<'a>>,
) -> AttributeValue<Reader<'a>> {
    match name {
        gimli::DW_AT_high_pc | gimli::DW_AT_call_line | gimli::DW_AT_call_column => {
            match value.udata_value() {
                Some(v) => AttributeValue::Udata(v),
                None => value,
            }
        }
        gimli::DW_AT_call_file => match value.udata_value() {
            Some(v) => AttributeValue::FileIndex(v),
            None => value,
        },
        gimli::DW_AT_ranges => match value.offset_value() {
            Some(o) => AttributeValue::RangeListsRef(gimli::RawRangeListsOffset(o)),
            None => value,
        },
        _ => value,
    }
}

/// A function name while a DIE's attributes are read.
enum Name<'a> {
    Raw(Reader<'a>),
    Interned(Arc<str>),
}

/// Where DIEs below the current one belong.
#[derive(Clone, Copy)]
enum Scope {
    /// Outside every subprogram that has code: inlined subroutines here are nobody's.
    Inactive,
    /// Inside `functions[function]`, below `depth` inlined subroutines.
    Function { function: usize, depth: usize },
}

/// A file of a line table, by where its parts lie in the image (comp_dir, directory, name):
/// the same strings give the same path.
type FileKey = [usize; 6];

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

/// Per-thread state: the index, caches, reused buffers.
struct Worker<'a, 'i> {
    dwarf: &'i gimli::Dwarf<Reader<'a>>,
    index: &'i UnitIndex<'a>,
    roots: &'i [String],
    symbols: &'i SymbolTable,
    /// The unit being read.
    current: usize,
    /// Its abbreviations, when `abbrevs_ok`.
    abbrevs: Abbrevs,
    abbrevs_ok: bool,
    /// It as gimli parses it (all abbreviations), made when gimli has to read it.
    full: Option<Arc<gimli::Unit<Reader<'a>>>>,
    /// DIE offset of an abstract origin/specification in the current unit → its name.
    names: FastMap<usize, Option<Arc<str>>>,
    /// The same for DIEs in other units (`DW_FORM_ref_addr`), by `(unit, offset)`.
    other_names: FastMap<(usize, usize), Option<Arc<str>>>,
    /// Name bytes (by address in the image) → interned string.
    name_strings: FastMap<(usize, usize), Arc<str>>,
    /// Rendered, normalised file paths.
    paths: FastMap<FileKey, Arc<str>>,
    interner: Interner,
    chain: Vec<usize>,
    scopes: Vec<(isize, Scope)>,
    functions: Functions,
    /// Per file index of the current unit: its path, once looked up.
    files: Vec<Option<Option<Arc<str>>>>,
    /// Line table buffers, reused from unit to unit.
    line_buffers: (Vec<LineSequence>, Vec<LineRow>),
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
            current: usize::MAX,
            abbrevs: Abbrevs::default(),
            abbrevs_ok: false,
            full: None,
            names: FastMap::with_capacity_and_hasher(1 << 10, Default::default()),
            other_names: FastMap::default(),
            name_strings: FastMap::with_capacity_and_hasher(1 << 14, Default::default()),
            paths: FastMap::with_capacity_and_hasher(1 << 12, Default::default()),
            interner: Interner::default(),
            chain: Vec::new(),
            scopes: Vec::new(),
            functions: Functions::default(),
            files: Vec::new(),
            line_buffers: Default::default(),
        }
    }

    /// The current unit with all its abbreviations (parsed on first use).
    fn full_unit(&mut self) -> Result<Arc<gimli::Unit<Reader<'a>>>, gimli::Error> {
        if let Some(unit) = &self.full {
            return Ok(unit.clone());
        }
        let unit = Arc::new(self.index.unit(self.dwarf, self.current)?);
        self.full = Some(unit.clone());
        Ok(unit)
    }

    /// addr2line's `name_attr` (the name interned), cached; `unit` is the current unit.
    fn name_attr(
        &mut self,
        attr: AttributeValue<Reader<'a>>,
        unit: gimli::UnitRef<'_, Reader<'a>>,
    ) -> Result<Option<Arc<str>>, gimli::Error> {
        let (id, offset) = match attr {
            AttributeValue::UnitRef(offset) => (self.current, offset),
            AttributeValue::DebugInfoRef(dr) => self.index.find_unit(dr)?,
            // No supplementary object file is loaded, so addr2line finds no name either.
            _ => return Ok(None),
        };
        let here = id == self.current;
        let cached = if here {
            self.names.get(&offset.0)
        } else {
            self.other_names.get(&(id, offset.0))
        };
        if let Some(name) = cached {
            return Ok(name.clone());
        }
        let name = if here {
            match self.name_entry_fast(unit, offset, 16) {
                Some(name) => name?,
                None => {
                    let full = self.full_unit()?;
                    self.name_entry(gimli::UnitRef::new(self.dwarf, &full), id, offset, 16)?
                }
            }
        } else {
            let other = self.index.unit(self.dwarf, id)?;
            self.name_entry(gimli::UnitRef::new(self.dwarf, &other), id, offset, 16)?
        };
        let name = self.intern_name(name);
        if here {
            self.names.insert(offset.0, name.clone());
        } else {
            self.other_names.insert((id, offset.0), name.clone());
        }
        Ok(name)
    }

    /// addr2line's `name_entry` for a DIE of the current unit, read with [`Abbrevs`]; `None`
    /// where that does not work out (gimli then reads it).
    fn name_entry_fast(
        &self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        offset: gimli::UnitOffset<usize>,
        recursion_limit: usize,
    ) -> Option<Result<Option<Reader<'a>>, gimli::Error>> {
        if !self.abbrevs_ok {
            return None;
        }
        let header = &unit.header;
        let encoding = header.encoding();
        let buf = header.range_from(header.root_offset()..).ok()?.slice();
        let mut pos = offset.0.checked_sub(header.root_offset().0)?;
        let decl = self.abbrevs.get(uleb(buf, &mut pos)?)?;
        let mut name = None;
        let mut next = None;
        for &spec in &self.abbrevs.specs[decl.specs.0 as usize..decl.specs.1 as usize] {
            let value = read_value(buf, &mut pos, spec, encoding)?;
            match spec.name() {
                gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                    if let Ok(val) = unit.attr_string(value) {
                        return Some(Ok(Some(val)));
                    }
                }
                gimli::DW_AT_name => {
                    if let Ok(val) = unit.attr_string(value) {
                        name = Some(val);
                    }
                }
                gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => next = Some(value),
                _ => {}
            }
        }
        if name.is_some() {
            return Some(Ok(name));
        }
        match next {
            None => Some(Ok(None)),
            Some(_) if recursion_limit == 1 => Some(Ok(None)),
            Some(AttributeValue::UnitRef(o)) => self.name_entry_fast(unit, o, recursion_limit - 1),
            // Another unit: gimli's walk.
            Some(AttributeValue::DebugInfoRef(_)) => None,
            Some(_) => Some(Ok(None)),
        }
    }

    fn name_attr_uncached(
        &self,
        attr: AttributeValue<Reader<'a>>,
        unit_id: usize,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        recursion_limit: usize,
    ) -> Result<Option<Reader<'a>>, gimli::Error> {
        if recursion_limit == 0 {
            return Ok(None);
        }
        match attr {
            AttributeValue::UnitRef(offset) => {
                self.name_entry(unit, unit_id, offset, recursion_limit)
            }
            AttributeValue::DebugInfoRef(dr) => {
                let (id, offset) = self.index.find_unit(dr)?;
                if id == unit_id {
                    return self.name_entry(unit, id, offset, recursion_limit);
                }
                let other = self.index.unit(self.dwarf, id)?;
                self.name_entry(
                    gimli::UnitRef::new(self.dwarf, &other),
                    id,
                    offset,
                    recursion_limit,
                )
            }
            _ => Ok(None),
        }
    }

    /// addr2line's `name_entry`: the name of the DIE at `offset` in `unit` (unit `unit_id`,
    /// with all its abbreviations).
    fn name_entry(
        &self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        unit_id: usize,
        offset: gimli::UnitOffset<usize>,
        recursion_limit: usize,
    ) -> Result<Option<Reader<'a>>, gimli::Error> {
        let mut entries = unit.entries_raw(Some(offset))?;
        let Some(abbrev) = entries.read_abbreviation()? else {
            return Err(gimli::Error::NoEntryAtGivenOffset(offset.0.into_u64()));
        };
        let mut name = None;
        let mut next = None;
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec)?;
            match attr.name() {
                gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                    if let Ok(val) = unit.attr_string(attr.value()) {
                        return Ok(Some(val));
                    }
                }
                gimli::DW_AT_name => {
                    if let Ok(val) = unit.attr_string(attr.value()) {
                        name = Some(val);
                    }
                }
                gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => {
                    next = Some(attr.value());
                }
                _ => {}
            }
        }
        if name.is_some() {
            return Ok(name);
        }
        if let Some(next) = next {
            return self.name_attr_uncached(next, unit_id, unit, recursion_limit - 1);
        }
        Ok(None)
    }

    /// Applies one attribute (`name`, its value `value`) to a function name the way
    /// addr2line's `Function::parse` and `InlinedFunction::parse` do (in attribute order).
    #[inline]
    fn name_from(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        name: gimli::DwAt,
        value: AttributeValue<Reader<'a>>,
        slot: &mut Option<Name<'a>>,
    ) -> Result<(), gimli::Error> {
        match name {
            gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                if let Ok(val) = unit.attr_string(value) {
                    *slot = Some(Name::Raw(val));
                }
            }
            gimli::DW_AT_name if slot.is_none() => {
                *slot = unit.attr_string(value).ok().map(Name::Raw);
            }
            gimli::DW_AT_abstract_origin | gimli::DW_AT_specification if slot.is_none() => {
                *slot = self.name_attr(value, unit)?.map(Name::Interned);
            }
            _ => {}
        }
        Ok(())
    }

    fn finish_name(&mut self, name: Option<Name<'a>>) -> Option<Arc<str>> {
        match name? {
            Name::Raw(r) => self.intern_name(Some(r)),
            Name::Interned(s) => Some(s),
        }
    }

    /// One walk over the unit's DIEs: every subprogram with code, and for each the inlined
    /// subroutines below it (not below a nested subprogram), with their call depth. Fills
    /// `self.functions`. The fast walk is tried first; where it gives up, gimli's walk
    /// decides.
    fn parse_functions(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
    ) -> Result<(), gimli::Error> {
        let mut f = std::mem::take(&mut self.functions);
        let mut scopes = std::mem::take(&mut self.scopes);
        f.clear();
        scopes.clear();
        self.names.clear();
        let fast = self.abbrevs_ok && matches!(self.walk_fast(&mut f, &mut scopes, unit), Ok(true));
        let result = if fast {
            Ok(())
        } else {
            f.clear();
            scopes.clear();
            match self.full_unit() {
                Ok(full) => {
                    self.walk_gimli(&mut f, &mut scopes, gimli::UnitRef::new(self.dwarf, &full))
                }
                Err(e) => Err(e),
            }
        };
        f.finish();
        self.functions = f;
        self.scopes = scopes;
        result
    }

    /// The DIE walk with gimli's cursor (what addr2line's `Functions::parse` and
    /// `Function::parse` read, in one pass); `unit` has all its abbreviations.
    fn walk_gimli(
        &mut self,
        f: &mut Functions,
        scopes: &mut Vec<(isize, Scope)>,
        unit: gimli::UnitRef<'_, Reader<'a>>,
    ) -> Result<(), gimli::Error> {
        // With an address size gimli can read, reading and skipping attributes fail alike, so a
        // subprogram without range attributes can be skipped as addr2line's walk does.
        let skip_codeless = matches!(unit.header.address_size(), 1 | 2 | 4 | 8);
        let mut entries = unit.entries_raw(None)?;
        while !entries.is_empty() {
            let depth = entries.next_depth();
            let Some(abbrev) = entries.read_abbreviation()? else {
                continue;
            };
            while scopes.last().is_some_and(|s| s.0 >= depth) {
                scopes.pop();
            }
            let scope = scopes.last().map_or(Scope::Inactive, |s| s.1);
            let tag = abbrev.tag();
            if tag == gimli::DW_TAG_subprogram {
                let inner = if skip_codeless && !has_range_attributes(abbrev) {
                    entries.skip_attributes(abbrev.attributes())?;
                    Scope::Inactive
                } else {
                    self.subprogram(f, unit, &mut entries, abbrev)?
                };
                if abbrev.has_children() {
                    scopes.push((depth, inner));
                }
            } else if let (
                gimli::DW_TAG_inlined_subroutine,
                Scope::Function { function, depth: d },
            ) = (tag, scope)
            {
                self.inlined(f, unit, &mut entries, abbrev, function, d)?;
                if abbrev.has_children() {
                    scopes.push((
                        depth,
                        Scope::Function {
                            function,
                            depth: d + 1,
                        },
                    ));
                }
            } else {
                entries.skip_attributes(abbrev.attributes())?;
            }
        }
        Ok(())
    }

    /// The same walk as [`Worker::walk_gimli`] with the unit's [`Abbrevs`]: DIEs it does not
    /// read are skipped as gimli's `skip_attributes` would, the others decoded as gimli's
    /// `read_attribute` would (or, for a DIE with an unusual form, read by gimli).
    /// `Ok(false)` where it gives up; the caller then runs gimli's walk.
    fn walk_fast(
        &mut self,
        f: &mut Functions,
        scopes: &mut Vec<(isize, Scope)>,
        unit: gimli::UnitRef<'_, Reader<'a>>,
    ) -> Result<bool, gimli::Error> {
        let header = &unit.header;
        let encoding = header.encoding();
        if !matches!(encoding.address_size, 1 | 2 | 4 | 8) {
            return Ok(false);
        }
        let root = header.root_offset().0;
        let buf = header.range_from(header.root_offset()..)?.slice();
        let mut pos = 0usize;
        let mut depth: isize = 0;
        while pos < buf.len() {
            let die = pos;
            let Some(code) = uleb(buf, &mut pos) else {
                return Ok(false);
            };
            if code == 0 {
                depth -= 1;
                continue;
            }
            let Some(decl) = self.abbrevs.get(code) else {
                return Ok(false);
            };
            let die_depth = depth;
            if decl.children {
                depth += 1;
            }
            while scopes.last().is_some_and(|s| s.0 >= die_depth) {
                scopes.pop();
            }
            let scope = scopes.last().map_or(Scope::Inactive, |s| s.1);
            let inner = match (decl.kind, scope) {
                (PlanKind::Subprogram, _) => {
                    match self.subprogram_fast(f, unit, decl, buf, &mut pos) {
                        Some(inner) => inner?,
                        None => {
                            let full = self.full_unit()?;
                            let full = gimli::UnitRef::new(self.dwarf, &full);
                            let mut entries =
                                full.entries_raw(Some(gimli::UnitOffset(root + die)))?;
                            let Some(abbrev) = entries.read_abbreviation()? else {
                                return Ok(false);
                            };
                            let inner = self.subprogram(f, full, &mut entries, abbrev)?;
                            pos = entries.next_offset().0 - root;
                            inner
                        }
                    }
                }
                (PlanKind::Inlined, Scope::Function { function, depth: d }) => {
                    match self.inlined_fast(f, unit, decl, buf, &mut pos, function, d) {
                        Some(done) => done?,
                        None => {
                            let full = self.full_unit()?;
                            let full = gimli::UnitRef::new(self.dwarf, &full);
                            let mut entries =
                                full.entries_raw(Some(gimli::UnitOffset(root + die)))?;
                            let Some(abbrev) = entries.read_abbreviation()? else {
                                return Ok(false);
                            };
                            self.inlined(f, full, &mut entries, abbrev, function, d)?;
                            pos = entries.next_offset().0 - root;
                        }
                    }
                    Scope::Function {
                        function,
                        depth: d + 1,
                    }
                }
                (PlanKind::Codeless, _) => {
                    if !self.abbrevs.skip(decl, buf, &mut pos) {
                        return Ok(false);
                    }
                    Scope::Inactive
                }
                _ => {
                    if !self.abbrevs.skip(decl, buf, &mut pos) {
                        return Ok(false);
                    }
                    continue;
                }
            };
            if decl.children {
                scopes.push((die_depth, inner));
            }
        }
        Ok(true)
    }

    /// [`Worker::subprogram`] for a DIE of `decl` whose attributes start at `pos`, decoded
    /// with [`read_value`]; `None` (nothing done) where that does not work out.
    fn subprogram_fast(
        &mut self,
        f: &mut Functions,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        decl: Decl,
        buf: &'a [u8],
        pos: &mut usize,
    ) -> Option<Result<Scope, gimli::Error>> {
        let encoding = unit.header.encoding();
        let mut p = *pos;
        let mut ranges = RangeAttributes::default();
        let mut name = None;
        for i in decl.specs.0..decl.specs.1 {
            let spec = self.abbrevs.specs[i as usize];
            let value = read_value(buf, &mut p, spec, encoding)?;
            let attr = spec.name();
            let r = match ranges.read_value(unit, attr, normalize(attr, value)) {
                Ok(true) => Ok(()),
                Ok(false) => self.name_from(unit, attr, value, &mut name),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                return Some(Err(e));
            }
        }
        *pos = p;
        Some(self.add_subprogram(f, unit, ranges, name))
    }

    /// [`Worker::inlined`] for a DIE of `decl` whose attributes start at `pos`, decoded with
    /// [`read_value`]; `None` (nothing done) where that does not work out.
    #[allow(clippy::too_many_arguments)]
    fn inlined_fast(
        &mut self,
        f: &mut Functions,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        decl: Decl,
        buf: &'a [u8],
        pos: &mut usize,
        function: usize,
        depth: usize,
    ) -> Option<Result<(), gimli::Error>> {
        let encoding = unit.header.encoding();
        let mut p = *pos;
        let mut ranges = RangeAttributes::default();
        let mut name = None;
        let mut call_file = None;
        let mut call_line = 0;
        for i in decl.specs.0..decl.specs.1 {
            let spec = self.abbrevs.specs[i as usize];
            let value = read_value(buf, &mut p, spec, encoding)?;
            let attr = spec.name();
            let r = match attr {
                gimli::DW_AT_low_pc | gimli::DW_AT_high_pc | gimli::DW_AT_ranges => ranges
                    .read_value(unit, attr, normalize(attr, value))
                    .map(|_| ()),
                gimli::DW_AT_call_file => {
                    if let AttributeValue::FileIndex(fi) = normalize(attr, value) {
                        if fi > 0 || encoding.version >= 5 {
                            call_file = Some(fi);
                        }
                    }
                    Ok(())
                }
                gimli::DW_AT_call_line => {
                    call_line = value.udata_value().unwrap_or(0) as u32;
                    Ok(())
                }
                _ => self.name_from(unit, attr, value, &mut name),
            };
            if let Err(e) = r {
                return Some(Err(e));
            }
        }
        *pos = p;
        Some(self.add_inlined(f, unit, ranges, name, call_file, call_line, function, depth))
    }

    /// Reads a subprogram DIE (abbreviation already read) like addr2line's `Functions::parse`
    /// and `Function::parse`; the scope for its children.
    fn subprogram(
        &mut self,
        f: &mut Functions,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        entries: &mut gimli::EntriesRaw<'_, Reader<'a>>,
        abbrev: &gimli::Abbreviation,
    ) -> Result<Scope, gimli::Error> {
        let mut ranges = RangeAttributes::default();
        let mut name = None;
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec)?;
            if !ranges.read(unit, &attr)? {
                self.name_from(unit, attr.name(), attr.value(), &mut name)?;
            }
        }
        self.add_subprogram(f, unit, ranges, name)
    }

    fn add_subprogram(
        &mut self,
        f: &mut Functions,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        ranges: RangeAttributes,
        name: Option<Name<'a>>,
    ) -> Result<Scope, gimli::Error> {
        let function = f.functions.len();
        let addresses = &mut f.addresses;
        let has_address = ranges.for_each_range(unit, |range| {
            addresses.push(FunctionAddress { range, function });
        })?;
        if !has_address {
            return Ok(Scope::Inactive);
        }
        let name = self.finish_name(name);
        f.functions.push(Function {
            name,
            inlined: 0,
            count: 0,
            addresses: (0, 0),
        });
        Ok(Scope::Function { function, depth: 0 })
    }

    /// Reads an inlined subroutine DIE of `function` at inline depth `depth` (abbreviation
    /// already read) like addr2line's `InlinedFunction::parse`.
    fn inlined(
        &mut self,
        f: &mut Functions,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        entries: &mut gimli::EntriesRaw<'_, Reader<'a>>,
        abbrev: &gimli::Abbreviation,
        function: usize,
        depth: usize,
    ) -> Result<(), gimli::Error> {
        let version = unit.header.version();
        let mut ranges = RangeAttributes::default();
        let mut name = None;
        let mut call_file = None;
        let mut call_line = 0;
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec)?;
            if ranges.read(unit, &attr)? {
                continue;
            }
            match attr.name() {
                gimli::DW_AT_call_file => {
                    if let AttributeValue::FileIndex(fi) = attr.value() {
                        if fi > 0 || version >= 5 {
                            call_file = Some(fi);
                        }
                    }
                }
                gimli::DW_AT_call_line => {
                    call_line = attr.udata_value().unwrap_or(0) as u32;
                }
                _ => self.name_from(unit, attr.name(), attr.value(), &mut name)?,
            }
        }
        self.add_inlined(f, unit, ranges, name, call_file, call_line, function, depth)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_inlined(
        &mut self,
        f: &mut Functions,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        ranges: RangeAttributes,
        name: Option<Name<'a>>,
        call_file: Option<u64>,
        call_line: u32,
        function: usize,
        depth: usize,
    ) -> Result<(), gimli::Error> {
        let name = self.finish_name(name);
        let owner = &mut f.functions[function];
        let index = owner.count;
        owner.count += 1;
        f.inlined.push(InlinedFunction {
            name,
            call_file,
            call_line,
        });
        f.inlined_owner.push(function as u32);
        let (inlined_addresses, address_owner) = (&mut f.inlined_addresses, &mut f.address_owner);
        ranges.for_each_range(unit, |range| {
            inlined_addresses.push(InlinedFunctionAddress {
                range,
                call_depth: depth,
                function: index,
            });
            address_owner.push(function as u32);
        })?;
        Ok(())
    }

    /// The name as a shared string. Strings are shared by where they lie in the image: the
    /// linker merges equal strings in `.debug_str`, so that is nearly sharing by content.
    fn intern_name(&mut self, name: Option<Reader<'a>>) -> Option<Arc<str>> {
        let bytes = name?.slice();
        let key = (bytes.as_ptr() as usize, bytes.len());
        if let Some(s) = self.name_strings.get(&key) {
            return Some(s.clone());
        }
        let s: Arc<str> = Arc::from(String::from_utf8_lossy(bytes));
        self.name_strings.insert(key, s.clone());
        Some(s)
    }

    /// The path of file `index` of the unit's line table (cached per unit in `self.files`).
    fn file(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        lines: Option<&Lines<'_, 'a>>,
        index: u64,
    ) -> Option<Arc<str>> {
        let lines = lines?;
        let slot = usize::try_from(index).ok();
        if let Some(Some(cached)) = slot.and_then(|i| self.files.get(i)) {
            return cached.clone();
        }
        let path = self.render(unit, lines, index);
        if let Some(cached) = slot.and_then(|i| self.files.get_mut(i)) {
            *cached = Some(path.clone());
        }
        path
    }

    fn render(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        lines: &Lines<'_, 'a>,
        index: u64,
    ) -> Option<Arc<str>> {
        if index >= lines.files {
            return None;
        }
        let header = &*lines.header;
        let key = match header.file(index) {
            Some(file) => {
                let at = |r: Option<Reader<'_>>| {
                    r.map_or((0, usize::MAX), |r| (r.slice().as_ptr() as usize, r.len()))
                };
                let dir = match file.directory_index() {
                    0 => None,
                    _ => match file.directory(header) {
                        Some(d) => Some(unit.attr_string(d).ok()?),
                        None => None,
                    },
                };
                let name = unit.attr_string(file.path_name()).ok()?;
                let (c, d, n) = (at(unit.comp_dir), at(dir), at(Some(name)));
                [c.0, c.1, d.0, d.1, n.0, n.1]
            }
            None => [0; 6],
        };
        if let Some(path) = self.paths.get(&key) {
            return Some(path.clone());
        }
        let raw = lines.render(unit, index)?;
        let path = self.interner.path(&raw, self.roots);
        self.paths.insert(key, path.clone());
        Some(path)
    }

    /// Looks up `probes` (sorted) in unit `unit_id`, appending for each its frames, or `None`
    /// where the unit has neither a function nor a line for it; false when the unit cannot be
    /// read here.
    fn unit_outcomes(
        &mut self,
        unit_id: usize,
        probes: &[u64],
        out: &mut Vec<Option<Vec<Frame>>>,
    ) -> bool {
        self.current = unit_id;
        self.full = None;
        let Ok(unit) = self.index.unit_with_lines(self.dwarf, unit_id) else {
            return false;
        };
        let unit = gimli::UnitRef::new(self.dwarf, &unit);
        let lines = match &unit.line_program {
            Some(ilnp) => match Lines::parse(unit, ilnp, std::mem::take(&mut self.line_buffers)) {
                Ok(lines) => Some(lines),
                Err(_) => return false,
            },
            None => None,
        };
        let section = gimli::Section::reader(&self.dwarf.debug_abbrev);
        self.abbrevs_ok = gimli::Reader::endian(section) == gimli::RunTimeEndian::Little
            && section
                .slice()
                .get(unit.header.debug_abbrev_offset().0..)
                .is_some_and(|table| self.abbrevs.parse(table, unit.header.encoding()));
        if self.parse_functions(unit).is_err() {
            return false;
        }
        self.files.clear();
        if let Some(l) = &lines {
            self.files.resize(l.files.min(1 << 16) as usize, None);
        }
        let mut chain = std::mem::take(&mut self.chain);
        let mut cursor = (0, 0);
        for &probe in probes {
            let function = self
                .functions
                .find_address(probe)
                .map(|a| self.functions.addresses[a].function);
            let location = lines
                .as_ref()
                .and_then(|l| l.find_location_sorted(probe, &mut cursor));
            let mut loc = match location {
                Some((file_index, line)) => (
                    self.file(unit, lines.as_ref(), file_index),
                    (line != 0).then_some(line),
                ),
                None => (None, None),
            };
            let Some(function) = function else {
                out.push(location.map(|_| {
                    let mut frames = vec![Frame {
                        function: None,
                        file: loc.0,
                        line: loc.1,
                    }];
                    symtab_fallback(self.symbols, &mut self.interner, probe, &mut frames);
                    frames
                }));
                continue;
            };
            let f = &self.functions;
            f.find_inlined_functions(&f.functions[function], probe, &mut chain);
            let mut frames = Vec::with_capacity(chain.len() + 1);
            for &i in chain.iter().rev() {
                let (call_file, call_line) = {
                    let inlined = &self.functions.inlined[i];
                    (inlined.call_file, inlined.call_line)
                };
                frames.push(Frame {
                    function: self.functions.inlined[i].name.clone(),
                    file: loc.0,
                    line: loc.1,
                });
                loc = (
                    call_file.and_then(|f| self.file(unit, lines.as_ref(), f)),
                    (call_line != 0).then_some(call_line),
                );
            }
            frames.push(Frame {
                function: self.functions.functions[function].name.clone(),
                file: loc.0,
                line: loc.1,
            });
            symtab_fallback(self.symbols, &mut self.interner, probe, &mut frames);
            out.push(Some(frames));
        }
        self.chain = chain;
        if let Some(lines) = lines {
            self.line_buffers = lines.into_buffers();
        }
        true
    }
}

/// A unit's answers, in the order of its probes (`None` for "neither function nor line
/// here"), or `None` when the unit cannot be read here.
type UnitResults = Option<Vec<Option<Vec<Frame>>>>;

/// What [`symbolize`] found.
pub(super) struct Batch {
    /// Per probe, the frames addr2line gives, innermost first, with [`symtab_fallback`]
    /// applied; empty where no unit has a function or line for it (no fallback applied).
    pub frames: Vec<Vec<Frame>>,
    /// Probes (indexes) that reach a unit that could not be read here: look them up with
    /// addr2line (their `frames` are empty).
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
    // Candidate units of each probe, in addr2line's order: (unit, slot in that unit's list).
    let mut cand_start: Vec<u32> = Vec::with_capacity(probes.len() + 1);
    let mut cands: Vec<(u32, u32)> = Vec::with_capacity(probes.len());
    let mut count = vec![0u32; index.units.len()];
    let mut pos = 0;
    for &probe in probes {
        let first = cands.len();
        cand_start.push(first as u32);
        for unit in index.find_sorted(&mut pos, probe) {
            if cands[first..].iter().any(|c| c.0 as usize == unit) {
                continue; // A unit listed twice: the first answer stands.
            }
            cands.push((unit as u32, count[unit]));
            count[unit] += 1;
        }
    }
    cand_start.push(cands.len() as u32);
    // Each unit's probes: `unit_probes[unit_start[u]..unit_start[u + 1]]`, ascending.
    let mut unit_start = Vec::with_capacity(count.len() + 1);
    let mut total = 0usize;
    for &c in &count {
        unit_start.push(total);
        total += c as usize;
    }
    unit_start.push(total);
    let mut unit_probes = vec![0u64; total];
    for (p, &probe) in probes.iter().enumerate() {
        for &(unit, slot) in &cands[cand_start[p] as usize..cand_start[p + 1] as usize] {
            unit_probes[unit_start[unit as usize] + slot as usize] = probe;
        }
    }
    let per_unit = |u: usize| &unit_probes[unit_start[u]..unit_start[u + 1]];

    // Work: units with probes, biggest first.
    let mut jobs: Vec<usize> = (0..index.units.len()).filter(|&u| count[u] > 0).collect();
    jobs.sort_by_key(|&u| std::cmp::Reverse(index.units[u].weight));
    let next = AtomicUsize::new(0);
    let run = || {
        let mut worker = Worker::new(dwarf, index, roots, symbols);
        let mut done: Vec<(usize, UnitResults)> = Vec::new();
        loop {
            let j = next.fetch_add(1, AtomicOrdering::Relaxed);
            let Some(&unit) = jobs.get(j) else { break };
            let probes = per_unit(unit);
            let mut out = Vec::with_capacity(probes.len());
            let readable = worker.unit_outcomes(unit, probes, &mut out);
            done.push((unit, readable.then_some(out)));
        }
        done
    };
    let threads = threads.clamp(1, jobs.len().max(1));
    let mut results: Vec<UnitResults> = (0..index.units.len()).map(|_| None).collect();
    let mut readable = vec![false; index.units.len()];
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(run)).collect();
        let mine = run();
        let all = others
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .chain(std::iter::once(mine));
        for done in all {
            for (unit, outcomes) in done {
                readable[unit] = outcomes.is_some();
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
        for &(unit, slot) in &cands[cand_start[p] as usize..cand_start[p + 1] as usize] {
            let unit = unit as usize;
            if !readable[unit] {
                batch.fallback.push(p);
                break;
            }
            let Some(unit_results) = results[unit].as_mut() else {
                continue;
            };
            if let Some(found) = unit_results[slot as usize].take() {
                frames = found;
                break;
            }
        }
        batch.frames.push(frames);
    }
    batch
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
