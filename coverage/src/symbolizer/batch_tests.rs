//! The batch symbolizer against addr2line's `find_frames` on every byte of the fixture ELFs
//! (built here), and on a unit whose DWARF it cannot read (addr2line's answers and errors).

use addr2line::gimli;

use crate::fixture::{Fixture, Variant};
use crate::symbolizer::dwarf::load_dwarf;
use crate::symbolizer::unit::Reader;
use crate::symbolizer::{enumerate_sites, Symbolizer, Vmlinux};

fn units<'a>(dwarf: &gimli::Dwarf<Reader<'a>>) -> Vec<gimli::Unit<Reader<'a>>> {
    let mut units = Vec::new();
    let mut iter = dwarf.units();
    while let Some(header) = iter.next().unwrap() {
        units.push(dwarf.unit(header).unwrap());
    }
    units
}

/// Replaces the abbreviation code of one DIE inside a subprogram with a code the unit does not
/// have: gimli (and so addr2line) fails that unit's function walk.
fn corrupt_one_die(vm: &Vmlinux) -> Vec<u8> {
    use object::{Object, ObjectSection};
    let mut data = vm.data().to_vec();
    let info = {
        let file = object::File::parse(&*data).unwrap();
        let s = file.section_by_name(".debug_info").unwrap();
        s.file_range().unwrap().0 as usize
    };
    let dwarf = load_dwarf(vm);
    for unit in units(&dwarf) {
        let Some(unused) = (1..0x80u64).find(|c| unit.abbreviations.get(*c).is_none()) else {
            continue;
        };
        let mut entries = unit.entries_raw(None).unwrap();
        let mut in_subprogram = false;
        while !entries.is_empty() {
            let offset = entries.next_offset();
            let Some(abbrev) = entries.read_abbreviation().unwrap() else {
                continue;
            };
            if in_subprogram && abbrev.code() < 0x80 {
                let unit_start = unit.header.debug_info_offset().unwrap().0;
                data[info + unit_start + offset.0] = unused as u8;
                return data;
            }
            in_subprogram |= abbrev.tag() == gimli::DW_TAG_subprogram && abbrev.has_children();
            entries.skip_attributes(abbrev.attributes()).unwrap();
        }
    }
    panic!("no DIE to corrupt");
}

#[test]
fn unreadable_unit_gets_addr2lines_answer() {
    let fx = Fixture::build(Variant::TracePc);
    let good = Vmlinux::open(fx.path()).unwrap();
    let bad = Vmlinux::parse(fx.path().to_path_buf(), corrupt_one_die(&good)).unwrap();
    let addrs: Vec<u64> = enumerate_sites(&bad)
        .unwrap()
        .sites
        .iter()
        .map(|s| s.call_addr)
        .collect();
    let reference = Symbolizer::new(&bad).unwrap();
    let expected = reference.symbolize_each(&addrs);
    assert!(
        reference.dwarf_errors() > 0,
        "the corruption must break addr2line"
    );
    let batch = Symbolizer::new(&bad).unwrap();
    assert_eq!(batch.symbolize_sorted(&addrs), expected);
    assert_eq!(batch.dwarf_errors(), reference.dwarf_errors());
    // The sites still get the symbol-table name.
    assert!(expected
        .iter()
        .all(|f| f.last().is_some_and(|f| f.function.is_some())));
}

#[test]
fn batch_matches_find_frames_on_every_fixture_byte() {
    for variant in [Variant::TracePc, Variant::TraceCmp] {
        let fx = Fixture::build(variant);
        let vm = Vmlinux::open(fx.path()).unwrap();
        // Every address of every executable section, and some outside.
        let mut addrs: Vec<u64> = vm
            .exec_sections()
            .iter()
            .flat_map(|s| s.addr_range())
            .collect();
        addrs.extend([0, 1, u64::MAX - 1]);
        addrs.sort_unstable();
        let reference = Symbolizer::new(&vm).unwrap();
        let expected = reference.symbolize_each(&addrs);
        for threads in [1, 2, 3] {
            let batch = Symbolizer::new(&vm).unwrap().with_threads(threads);
            assert_eq!(
                batch.symbolize_sorted(&addrs),
                expected,
                "{threads} threads"
            );
            assert_eq!(batch.dwarf_errors(), reference.dwarf_errors());
        }
        assert!(expected.iter().any(|f| f.len() > 1), "inlined frames");
        assert!(
            expected.iter().any(Vec::is_empty),
            "addresses nothing knows"
        );
    }
}
