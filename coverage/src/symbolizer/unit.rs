//! The unit index: every compilation unit that can hold code, the address ranges it claims, and
//! which units to try, in which order, for an address. Also the address ranges of a DIE
//! ([`RangeAttributes`]), which the function walk shares.
//!
//! A unit's ranges are, in order of preference, its `DW_AT_ranges`, its `.debug_aranges` sets,
//! its `DW_AT_low_pc`/`DW_AT_high_pc`, the sequences of its line program; the units for an
//! address are those whose ranges contain it, tried in order of range end (then unit order), the
//! first that knows a function or a line for it answering. That is how addr2line's
//! `Context::find_frames` chooses, so the batch path reaches the same unit.

use std::sync::Arc;

use addr2line::gimli;
use gimli::AttributeValue;

pub(super) use super::lookup::{covering, max_ends, Lookup, Reader};

/// The address ranges of a DIE: `DW_AT_ranges`, else `DW_AT_low_pc` with `DW_AT_high_pc` (an
/// address, or a size when it is a constant).
#[derive(Default)]
pub(super) struct RangeAttributes {
    low_pc: Option<u64>,
    high_pc: Option<u64>,
    size: Option<u64>,
    ranges: Option<gimli::RangeListsOffset<usize>>,
}

impl RangeAttributes {
    /// Takes `attr` if it is one of the range attributes; true then.
    pub(super) fn read<'a>(
        &mut self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        attr: &gimli::Attribute<Reader<'a>>,
    ) -> Result<bool, gimli::Error> {
        let address = |value| match value {
            AttributeValue::Addr(a) => Ok(Some(a)),
            AttributeValue::DebugAddrIndex(i) => unit.address(i).map(Some),
            _ => Ok(None),
        };
        match attr.name() {
            gimli::DW_AT_low_pc => {
                if let Some(a) = address(attr.value())? {
                    self.low_pc = Some(a);
                }
            }
            gimli::DW_AT_high_pc => match attr.value() {
                AttributeValue::Udata(size) => self.size = Some(size),
                value => {
                    if let Some(a) = address(value)? {
                        self.high_pc = Some(a);
                    }
                }
            },
            gimli::DW_AT_ranges => self.ranges = unit.attr_ranges_offset(attr.value())?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Calls `f` with each non-empty range; false when there was none.
    pub(super) fn for_each_range(
        &self,
        unit: gimli::UnitRef<'_, Reader<'_>>,
        mut f: impl FnMut(gimli::Range),
    ) -> Result<bool, gimli::Error> {
        let mut any = false;
        let mut add = |r: gimli::Range| {
            if r.begin < r.end {
                f(r);
                any = true;
            }
        };
        if let Some(offset) = self.ranges {
            let mut list = unit.ranges(offset)?;
            while let Some(r) = list.next()? {
                add(r);
            }
        } else if let Some(begin) = self.low_pc {
            if let Some(end) = self.high_pc {
                add(gimli::Range { begin, end });
            } else if let Some(size) = self.size {
                add(gimli::Range {
                    begin,
                    end: begin.wrapping_add(size),
                });
            }
        }
        Ok(any)
    }
}

/// A unit that can hold code, as `gimli::Dwarf::unit` parses it but without its abbreviations
/// and line program (they take most of its memory; [`IndexedUnit::parse`] parses them again).
pub(super) struct IndexedUnit<'a> {
    offset: gimli::DebugInfoOffset<usize>,
    unit: gimli::Unit<Reader<'a>>,
    line_program: Option<gimli::DebugLineOffset<usize>>,
    /// Bytes of DIEs: the rough cost of symbolizing in it, for scheduling.
    pub(super) weight: usize,
}

struct UnitRange {
    range: gimli::Range,
    unit: usize,
}

/// Every unit that can hold code, and which address ranges map to which unit.
pub(super) struct UnitIndex<'a> {
    units: Vec<IndexedUnit<'a>>,
    /// Sorted by end, then unit.
    ranges: Vec<UnitRange>,
    /// The lowest start among `ranges[i..]`.
    min_begin: Vec<u64>,
}

/// Per unit of `.debug_info` (type units included): `DW_AT_comp_dir` and `DW_AT_name`, for
/// inferring the source roots.
pub(super) type UnitNames = Vec<(Option<String>, Option<String>)>;

impl<'a> UnitIndex<'a> {
    /// Parses every unit of `dwarf` (its root DIE; its line program only when nothing else
    /// gives its ranges).
    pub(super) fn parse(
        dwarf: &gimli::Dwarf<Reader<'a>>,
    ) -> Result<(Self, UnitNames), gimli::Error> {
        // .debug_aranges sets by the unit they describe.
        let mut aranges = Vec::new();
        let mut headers = dwarf.debug_aranges.headers();
        while let Some(header) = headers.next()? {
            aranges.push((header.debug_info_offset(), header.offset()));
        }
        aranges.sort_unstable_by_key(|a| a.0);

        let mut names = Vec::new();
        let mut units = Vec::new();
        // Abbreviations take most of a unit's memory: each is parsed again when needed.
        let no_abbreviations = Arc::new(gimli::Abbreviations::default());
        let mut ranges = Vec::new();
        let mut iter = dwarf.units();
        while let Some(header) = iter.next()? {
            let mut unit = dwarf.unit(header)?;
            names.push((
                unit.comp_dir.map(|d| d.to_string_lossy().into_owned()),
                unit.name.map(|n| n.to_string_lossy().into_owned()),
            ));
            let Some(offset) = header.debug_info_offset() else {
                continue;
            };
            let needs_ranges = match header.type_() {
                gimli::UnitType::Type { .. } | gimli::UnitType::SplitType { .. } => continue,
                // Only referred to, never holding code.
                gimli::UnitType::Partial => false,
                _ => true,
            };
            let id = units.len();
            let unit_ref = gimli::UnitRef::new(dwarf, &unit);
            let has_ranges = match needs_ranges {
                true => match unit_ranges(unit_ref, offset, &aranges, id, &mut ranges)? {
                    Some(found) => found,
                    // A unit without a root DIE is left out, as addr2line leaves it out.
                    None => continue,
                },
                false => true,
            };
            if !has_ranges {
                // Nothing else says where its code is: its line program does.
                if let Some(program) = &unit.line_program {
                    if let Ok(lines) =
                        super::line::Lines::parse(unit_ref, program.clone(), Default::default())
                    {
                        ranges.extend(lines.ranges().map(|range| UnitRange { range, unit: id }));
                    }
                }
            }
            let line_program = unit.line_program.take().map(|p| p.header().offset());
            unit.abbreviations = Arc::clone(&no_abbreviations);
            units.push(IndexedUnit {
                offset,
                unit,
                line_program,
                weight: header.length_including_self(),
            });
        }

        ranges.sort_unstable_by_key(|r| (r.range.end, r.unit));
        let mut min_begin = vec![0; ranges.len()];
        let mut min = u64::MAX;
        for (r, m) in ranges.iter().zip(&mut min_begin).rev() {
            min = min.min(r.range.begin);
            *m = min;
        }
        let index = UnitIndex {
            units,
            ranges,
            min_begin,
        };
        Ok((index, names))
    }

    /// Number of units.
    pub(super) fn len(&self) -> usize {
        self.units.len()
    }

    /// Unit `id`.
    pub(super) fn get(&self, id: usize) -> &IndexedUnit<'a> {
        &self.units[id]
    }

    /// The units whose ranges contain `probe`, in the order to try them (a unit may come more
    /// than once). `pos` is a cursor for ascending probes: start at 0.
    pub(super) fn find_sorted(
        &self,
        pos: &mut usize,
        probe: u64,
    ) -> impl Iterator<Item = usize> + '_ {
        // The ranges ending at or before `probe` are behind us for good.
        while self.ranges.get(*pos).is_some_and(|r| r.range.end <= probe) {
            *pos += 1;
        }
        let from = *pos;
        self.ranges[from..]
            .iter()
            .zip(&self.min_begin[from..])
            .take_while(move |(_, &min)| min <= probe)
            .filter(move |(r, _)| r.range.begin <= probe)
            .map(|(r, _)| r.unit)
    }

    /// The unit holding `.debug_info` offset `offset`, and the offset inside it.
    pub(super) fn find_unit(
        &self,
        offset: gimli::DebugInfoOffset<usize>,
    ) -> Result<(usize, gimli::UnitOffset<usize>), gimli::Error> {
        let missing = gimli::Error::NoEntryAtGivenOffset(offset.0 as u64);
        let id = match self.units.binary_search_by_key(&offset.0, |u| u.offset.0) {
            // No DIE at a unit's own offset, nor before the first unit.
            Ok(_) | Err(0) => return Err(missing),
            Err(i) => i - 1,
        };
        let in_unit = offset
            .to_unit_offset(&self.units[id].unit.header)
            .ok_or(missing)?;
        Ok((id, in_unit))
    }
}

impl<'a> IndexedUnit<'a> {
    /// The unit as `gimli::Dwarf::unit` gives it, its abbreviations parsed again, its line
    /// program too when `lines`.
    pub(super) fn parse(
        &self,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        lines: bool,
    ) -> Result<gimli::Unit<Reader<'a>>, gimli::Error> {
        let u = &self.unit;
        let line_program = match self.line_program {
            Some(offset) if lines => Some(dwarf.debug_line.program(
                offset,
                u.header.address_size(),
                u.comp_dir,
                u.name,
            )?),
            _ => None,
        };
        Ok(gimli::Unit {
            header: u.header,
            abbreviations: dwarf.abbreviations(&u.header)?,
            name: u.name,
            comp_dir: u.comp_dir,
            low_pc: u.low_pc,
            str_offsets_base: u.str_offsets_base,
            addr_base: u.addr_base,
            loclists_base: u.loclists_base,
            rnglists_base: u.rnglists_base,
            line_program,
            dwo_id: u.dwo_id,
        })
    }
}

/// Adds the ranges that the root DIE of unit `id` or `.debug_aranges` give it; false when
/// neither gives any, `None` when the unit has no root DIE.
fn unit_ranges(
    unit: gimli::UnitRef<'_, Reader<'_>>,
    offset: gimli::DebugInfoOffset<usize>,
    aranges: &[(
        gimli::DebugInfoOffset<usize>,
        gimli::DebugArangesOffset<usize>,
    )],
    id: usize,
    out: &mut Vec<UnitRange>,
) -> Result<Option<bool>, gimli::Error> {
    let mut entries = unit.entries_raw(None)?;
    let Some(abbrev) = entries.read_abbreviation()? else {
        return Ok(None);
    };
    let mut attrs = RangeAttributes::default();
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec)?;
        attrs.read(unit, &attr)?;
    }
    let mut found = false;
    if attrs.ranges.is_none() {
        // Sets for this unit (there should be one; there can be more).
        let first = aranges.partition_point(|a| a.0 < offset);
        for (_, set) in aranges[first..].iter().take_while(|a| a.0 == offset) {
            let mut entries = unit.dwarf.debug_aranges.header(*set)?.entries();
            while let Some(entry) = entries.next().transpose() {
                // A bad entry (address overflow) is left out; the iterator ends on errors
                // it cannot go past.
                let Ok(entry) = entry else { continue };
                if entry.length() != 0 {
                    out.push(UnitRange {
                        range: entry.range(),
                        unit: id,
                    });
                    found = true;
                }
            }
        }
    }
    if !found {
        found = attrs.for_each_range(unit, |range| out.push(UnitRange { range, unit: id }))?;
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every order of `sorted` (sorted by start) that a sort by start can leave: ranges with
    /// equal starts in any order.
    fn tie_orders(sorted: &[gimli::Range]) -> Vec<Vec<gimli::Range>> {
        let mut orders = vec![Vec::new()];
        for group in sorted.chunk_by(|a, b| a.begin == b.begin) {
            let mut perms = vec![Vec::new()];
            for r in group {
                perms = perms
                    .into_iter()
                    .flat_map(|p: Vec<gimli::Range>| {
                        (0..=p.len()).map(move |i| {
                            let mut q = p.clone();
                            q.insert(i, *r);
                            q
                        })
                    })
                    .collect();
            }
            orders = orders
                .into_iter()
                .flat_map(|o| {
                    perms.iter().map(move |p| {
                        let mut o = o.clone();
                        o.extend(p);
                        o
                    })
                })
                .collect();
        }
        orders
    }

    /// addr2line's search: a binary search for a range holding `probe`.
    fn search(order: &[gimli::Range], probe: u64) -> Option<gimli::Range> {
        order
            .binary_search_by(|r| {
                if probe < r.begin {
                    std::cmp::Ordering::Greater
                } else if probe >= r.end {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .ok()
            .map(|i| order[i])
    }

    #[test]
    fn covering_is_what_every_search_order_finds() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut decided, mut undecided) = (0, 0);
        for _ in 0..3000 {
            let disjoint = next(2) == 0;
            let mut ranges: Vec<gimli::Range> = Vec::new();
            let mut at = 0;
            for _ in 0..next(7) {
                let begin = if disjoint { at + next(3) } else { next(10) };
                let end = begin + 1 + next(4);
                at = end;
                ranges.push(gimli::Range { begin, end });
            }
            ranges.sort_by_key(|r| r.begin);
            let mut max_end = Vec::new();
            max_ends(ranges.iter().copied(), &mut max_end);
            let orders = tie_orders(&ranges);
            for probe in 0..20 {
                let below = ranges.partition_point(|r| r.begin <= probe);
                let expect = match covering(&ranges, &max_end, below, probe, |r| *r) {
                    Lookup::Found(i) => Some(ranges[i]),
                    Lookup::Missing => None,
                    Lookup::Undecided => {
                        assert!(!disjoint, "disjoint ranges are always decided");
                        undecided += 1;
                        continue;
                    }
                };
                decided += 1;
                for order in &orders {
                    assert_eq!(search(order, probe), expect, "{order:?} at {probe}");
                }
            }
        }
        assert!(decided > 10_000 && undecided > 100, "{decided} {undecided}");
    }
}
