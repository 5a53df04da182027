//! The fast paths of the batch symbolizer against gimli's own readers, piece by piece, on the
//! fixture ELF (built here) and on the kernel in `TESTBED_VMLINUX` when set: line programs,
//! abbreviation tables, attribute decoding, DIE skipping, the DIE walk; and addr2line's error
//! behaviour on a unit the batch cannot read.

use super::*;
use crate::fixture::{Fixture, Variant};
use crate::symbolizer::dwarf::load_dwarf;
use crate::symbolizer::{enumerate_sites, Symbolizer, Vmlinux};

/// The fixtures (kept alive by the returned `Fixture`s) and the kernel if there is one.
fn images() -> (Vec<Fixture>, Vec<Vmlinux>) {
    let fixtures = vec![
        Fixture::build(Variant::TracePc),
        Fixture::build(Variant::TraceCmp),
    ];
    let mut images: Vec<Vmlinux> = fixtures
        .iter()
        .map(|f| Vmlinux::open(f.path()).unwrap())
        .collect();
    match std::env::var_os("TESTBED_VMLINUX").filter(|v| !v.is_empty()) {
        Some(p) => images.push(Vmlinux::open(p).unwrap()),
        None => eprintln!("note: TESTBED_VMLINUX not set: checking the fixtures only"),
    }
    (fixtures, images)
}

fn units<'a>(dwarf: &gimli::Dwarf<Reader<'a>>) -> Vec<gimli::Unit<Reader<'a>>> {
    let mut units = Vec::new();
    let mut iter = dwarf.units();
    while let Some(header) = iter.next().unwrap() {
        units.push(dwarf.unit(header).unwrap());
    }
    units
}

type Sequences = (Vec<(u64, u64)>, Vec<Vec<(u64, u64, u32)>>);

fn sequences(s: &[LineSequence], rows: &[LineRow]) -> Sequences {
    (
        s.iter().map(|s| (s.start, s.end)).collect(),
        s.iter()
            .map(|s| {
                rows[s.rows_start..s.rows_end]
                    .iter()
                    .map(|r| (r.address, r.file_index, r.line))
                    .collect()
            })
            .collect(),
    )
}

#[test]
fn line_interpreter_matches_gimli_rows() {
    let (_fixtures, images) = images();
    for vm in &images {
        let dwarf = load_dwarf(vm);
        let mut programs = 0;
        for unit in units(&dwarf) {
            let Some(ilnp) = &unit.line_program else {
                continue;
            };
            let (mut fast_seqs, mut fast_rows) = (Vec::new(), Vec::new());
            let mut b = SequenceBuilder {
                sequences: &mut fast_seqs,
                rows: &mut fast_rows,
                current: 0,
            };
            // gcc's line programs stay inside what the fast interpreter handles.
            assert!(run_line_program(ilnp.header(), &mut b).is_some());
            b.finish();
            let (mut seqs, mut rows) = (Vec::new(), Vec::new());
            let mut b = SequenceBuilder {
                sequences: &mut seqs,
                rows: &mut rows,
                current: 0,
            };
            let mut program = ilnp.clone().rows();
            while let Some((_, row)) = program.next_row().unwrap() {
                b.row(
                    row.address(),
                    row.file_index(),
                    row.line().map_or(0, NonZeroU64::get),
                    row.end_sequence(),
                );
            }
            b.finish();
            assert_eq!(
                sequences(&fast_seqs, &fast_rows),
                sequences(&seqs, &rows),
                "{}: unit at {:?}",
                vm.path().display(),
                unit.header.offset()
            );
            programs += 1;
        }
        assert!(programs > 0);
        eprintln!("{}: {programs} line programs agree", vm.path().display());
    }
}

#[test]
fn abbreviations_attributes_and_skips_match_gimli() {
    let (_fixtures, images) = images();
    for vm in &images {
        let dwarf = load_dwarf(vm);
        let table = gimli::Section::reader(&dwarf.debug_abbrev).slice();
        let (mut dies, mut attrs) = (0usize, 0usize);
        for unit in units(&dwarf) {
            let header = &unit.header;
            let encoding = header.encoding();
            let mut abbrevs = Abbrevs::default();
            assert!(abbrevs.parse(&table[header.debug_abbrev_offset().0..], encoding));
            let root = header.root_offset().0;
            let buf = header.range_from(header.root_offset()..).unwrap().slice();
            let mut entries = unit.entries_raw(None).unwrap();
            while !entries.is_empty() {
                let start = entries.next_offset().0 - root;
                let mut pos = start;
                let code = uleb(buf, &mut pos).unwrap();
                let Some(abbrev) = entries.read_abbreviation().unwrap() else {
                    assert_eq!(code, 0);
                    continue;
                };
                dies += 1;
                let decl = abbrevs.get(code).expect("code in the table");
                let specs = &abbrevs.specs[decl.specs.0 as usize..decl.specs.1 as usize];
                assert_eq!(specs, abbrev.attributes());
                assert_eq!(decl.children, abbrev.has_children());
                let attrs_start = pos;
                let mut skipped = attrs_start;
                assert!(abbrevs.skip(decl, buf, &mut skipped));
                for spec in specs {
                    let ours = read_value(buf, &mut pos, *spec, encoding).expect("decodable");
                    let theirs = entries.read_attribute(*spec).unwrap();
                    assert_eq!(ours, theirs.raw_value(), "{spec:?} at {start:#x}");
                    if matches!(
                        spec.name(),
                        gimli::DW_AT_low_pc
                            | gimli::DW_AT_high_pc
                            | gimli::DW_AT_ranges
                            | gimli::DW_AT_call_file
                            | gimli::DW_AT_call_line
                            | gimli::DW_AT_name
                            | gimli::DW_AT_linkage_name
                            | gimli::DW_AT_abstract_origin
                            | gimli::DW_AT_specification
                    ) {
                        // The attributes whose normalised value is used.
                        assert_eq!(
                            normalize(spec.name(), ours),
                            theirs.value(),
                            "{spec:?} at {start:#x}"
                        );
                    }
                    assert_eq!(pos, entries.next_offset().0 - root);
                    attrs += 1;
                }
                assert_eq!(skipped, pos, "skip of the DIE at {start:#x}");
            }
        }
        assert!(dies > 0);
        eprintln!(
            "{}: {dies} DIEs, {attrs} attributes agree",
            vm.path().display()
        );
    }
}

/// What a unit's [`Functions`] hold, comparable.
type FunctionsSummary = (
    Vec<(Option<String>, usize, usize, (usize, usize))>,
    Vec<(u64, u64, usize)>,
    Vec<(Option<String>, Option<u64>, u32)>,
    Vec<(u64, u64, usize, usize)>,
);

fn summary(f: &Functions) -> FunctionsSummary {
    let name = |n: &Option<Arc<str>>| n.as_deref().map(str::to_string);
    (
        f.functions
            .iter()
            .map(|x| (name(&x.name), x.inlined, x.count, x.addresses))
            .collect(),
        f.addresses
            .iter()
            .map(|a| (a.range.begin, a.range.end, a.function))
            .collect(),
        f.inlined
            .iter()
            .map(|i| (name(&i.name), i.call_file, i.call_line))
            .collect(),
        f.inlined_addresses
            .iter()
            .map(|a| (a.range.begin, a.range.end, a.call_depth, a.function))
            .collect(),
    )
}

#[test]
fn fast_die_walk_matches_gimli_walk() {
    let (_fixtures, images) = images();
    for vm in &images {
        let dwarf = load_dwarf(vm);
        let (index, _) = UnitIndex::parse(&dwarf).unwrap();
        let mut worker = Worker::new(&dwarf, &index, &[], vm.symbols());
        let table = gimli::Section::reader(&dwarf.debug_abbrev).slice();
        let mut functions = 0;
        for id in 0..index.units.len() {
            worker.current = id;
            worker.full = None;
            let unit = index.unit_with_lines(&dwarf, id).unwrap();
            let unit = gimli::UnitRef::new(&dwarf, &unit);
            worker.abbrevs_ok = worker.abbrevs.parse(
                &table[unit.header.debug_abbrev_offset().0..],
                unit.encoding(),
            );
            assert!(worker.abbrevs_ok);

            let (mut fast, mut scopes) = (Functions::default(), Vec::new());
            worker.names.clear();
            assert!(worker.walk_fast(&mut fast, &mut scopes, unit).unwrap());
            fast.finish();
            assert!(worker.full.is_none(), "the fast walk read every DIE itself");

            let (mut slow, mut scopes) = (Functions::default(), Vec::new());
            worker.names.clear();
            let full = worker.full_unit().unwrap();
            worker
                .walk_gimli(&mut slow, &mut scopes, gimli::UnitRef::new(&dwarf, &full))
                .unwrap();
            slow.finish();
            assert_eq!(summary(&fast), summary(&slow), "unit {id}");
            functions += fast.functions.len();
        }
        assert!(functions > 0);
        eprintln!(
            "{}: {functions} functions with their inline trees agree",
            vm.path().display()
        );
    }
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
