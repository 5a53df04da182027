//! The symbolizer against a real ELF compiled here (see `crate::fixture`).

use super::*;
use crate::fixture::{
    gnu_addr2line, objdump_call_count, Fixture, Variant, BRANCHY_DECL_LINE, BRANCHY_ENTRY_LINE,
    HELPER_CALL_LINE, HELPER_FIRST_LINE,
};
use crate::map::{CoverageMap, LineKey, MapOptions};
use crate::PathGlob;

fn name(f: &Frame) -> &str {
    f.function.as_deref().unwrap_or("?")
}

#[test]
fn opens_fixture() {
    let fx = Fixture::build(Variant::TracePc);
    let vm = Vmlinux::open(fx.path()).unwrap();
    assert!(vm.has_dwarf());
    vm.require_dwarf().unwrap();
    let id = vm.build_id().expect("linked with --build-id");
    assert_eq!(id.0.len(), 20, "sha1 build-id");
    assert_eq!(id.to_hex().len(), 40);
    assert!(vm.exec_sections().iter().any(|s| s.name == ".text"));
    let syms = vm.symbols();
    assert!(syms.functions().windows(2).all(|w| w[0].addr < w[1].addr));
    let branchy = syms.by_name("branchy").expect("branchy symbol");
    assert!(branchy.size > 0);
    assert_eq!(syms.lookup(branchy.addr + 1).unwrap().name, "branchy");
    assert_eq!(
        syms.lookup(branchy.addr + branchy.size - 1).unwrap().name,
        "branchy"
    );
    assert_ne!(
        syms.lookup(branchy.addr + branchy.size)
            .map(|f| f.name.as_str()),
        Some("branchy")
    );
}

#[test]
fn sites_match_objdump_and_return_offset_is_call_length() {
    let fx = Fixture::build(Variant::TracePc);
    let vm = Vmlinux::open(fx.path()).unwrap();
    let scan = enumerate_sites(&vm).unwrap();
    let expected = objdump_call_count(fx.path(), &[TRACE_PC_HOOK]);
    assert!(
        expected > 5,
        "fixture should have several sites, got {expected}"
    );
    assert_eq!(scan.count(SiteKind::Pc), expected);
    assert_eq!(scan.count(SiteKind::Cmp), 0);
    assert_eq!(scan.decode_errors, 0);
    assert!(scan
        .sites
        .windows(2)
        .all(|w| w[0].call_addr < w[1].call_addr));
    // The x86_64 offset, measured: every kcov PC is call address + call length, and that is
    // `call rel32` (E8 + 4 bytes).
    assert_eq!(scan.uniform_return_offset(), Some(5));
    for s in &scan.sites {
        assert_eq!(s.ret_addr - s.call_addr, u64::from(s.call_len));
        assert_eq!(vm.code(s.call_addr, 1), Some(&[0xe8u8][..]));
    }
    // Every site is inside a known function.
    for s in &scan.sites {
        assert!(vm.symbols().lookup(s.call_addr).is_some());
    }
}

#[test]
fn cmp_sites_match_objdump() {
    let fx = Fixture::build(Variant::TraceCmp);
    let vm = Vmlinux::open(fx.path()).unwrap();
    let scan = enumerate_sites(&vm).unwrap();
    assert_eq!(
        scan.count(SiteKind::Pc),
        objdump_call_count(fx.path(), &[TRACE_PC_HOOK])
    );
    let cmp = objdump_call_count(fx.path(), &TRACE_CMP_HOOKS);
    assert!(cmp >= 3, "switch + compares, got {cmp}");
    assert_eq!(scan.count(SiteKind::Cmp), cmp);
}

#[test]
fn symbolizes_function_entry_and_inline_frames() {
    let fx = Fixture::build(Variant::TracePc);
    let vm = Vmlinux::open(fx.path()).unwrap();
    let sym = Symbolizer::new(&vm).unwrap();
    // The compile ran in the fixture directory: that is the source root.
    let root = std::fs::canonicalize(fx.dir.path()).unwrap();
    let root_str = root.to_str().unwrap();
    assert!(
        sym.src_roots() == [root_str] || sym.src_roots() == [fx.dir.path().to_str().unwrap()],
        "src_roots {:?}",
        sym.src_roots()
    );

    let branchy = vm.symbols().by_name("branchy").unwrap().addr;
    let frames = sym.symbolize(branchy).unwrap();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(name(&frames[0]), "branchy");
    assert_eq!(frames[0].file.as_deref(), Some("fixture.c"));
    assert_eq!(frames[0].line, Some(BRANCHY_ENTRY_LINE));

    // Some site of branchy lies in the inlined helper: innermost helper, then branchy at the
    // call line.
    let scan = enumerate_sites(&vm).unwrap();
    let inlined: Vec<Vec<Frame>> = scan
        .sites
        .iter()
        .map(|s| sym.symbolize(s.call_addr).unwrap())
        .filter(|f| f.len() == 2)
        .collect();
    assert!(!inlined.is_empty(), "no inlined site found");
    for f in &inlined {
        assert_eq!(name(&f[0]), "helper");
        assert!(f[0].line.unwrap() >= HELPER_FIRST_LINE && f[0].line.unwrap() < BRANCHY_DECL_LINE);
        assert_eq!(name(&f[1]), "branchy");
        assert_eq!(f[1].file.as_deref(), Some("fixture.c"));
        assert_eq!(f[1].line, Some(HELPER_CALL_LINE));
    }

    // The bulk path gives the same answers.
    let addrs: Vec<u64> = scan.sites.iter().map(|s| s.call_addr).collect();
    let bulk = sym.symbolize_sorted(&addrs);
    for (a, f) in addrs.iter().zip(&bulk) {
        assert_eq!(&sym.symbolize(*a).unwrap(), f);
        assert!(f[0].file.is_some() && f[0].line.is_some(), "{a:#x}: {f:?}");
    }
    assert_eq!(sym.dwarf_errors(), 0);

    // Without roots the absolute path stays.
    let sym = Symbolizer::new(&vm).unwrap().with_src_roots(&[]);
    let f = sym.symbolize(branchy).unwrap();
    assert!(f[0].file.as_deref().unwrap().ends_with("/fixture.c"));
    assert!(f[0].file.as_deref().unwrap().starts_with('/'));
}

#[test]
fn agrees_with_gnu_addr2line() {
    let fx = Fixture::build(Variant::TraceCmp);
    let vm = Vmlinux::open(fx.path()).unwrap();
    let table = SiteTable::build(&vm).unwrap();
    let addrs: Vec<u64> = table.sites.iter().map(|s| s.call_addr).collect();
    let gnu = gnu_addr2line(fx.path(), &addrs);
    assert_eq!(gnu.len(), addrs.len());
    for ((addr, ours), theirs) in addrs.iter().zip(&table.frames).zip(&gnu) {
        let ours: Vec<(String, Option<u32>)> =
            ours.iter().map(|f| (name(f).to_string(), f.line)).collect();
        assert_eq!(&ours, theirs, "at {addr:#x}");
    }
}

#[test]
fn no_dwarf_is_one_clear_error() {
    let fx = Fixture::build(Variant::NoDebug);
    let vm = Vmlinux::open(fx.path()).unwrap();
    assert!(!vm.has_dwarf());
    // Sites still work without DWARF.
    assert!(!enumerate_sites(&vm).unwrap().sites.is_empty());
    let err = Symbolizer::new(&vm).err().expect("must fail");
    assert!(matches!(err, Error::NoDwarf { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(
            "vmlinux has no DWARF line info: rebuild with kernel-config/debug-info.config"
        ),
        "{msg}"
    );
    assert!(matches!(
        SiteTable::build(&vm).unwrap_err(),
        Error::NoDwarf { .. }
    ));
}

#[test]
fn not_instrumented_and_not_elf() {
    let fx = Fixture::build(Variant::NotInstrumented);
    let vm = Vmlinux::open(fx.path()).unwrap();
    let err = enumerate_sites(&vm).unwrap_err();
    assert!(matches!(err, Error::NotInstrumented { .. }), "{err:?}");
    assert!(err.to_string().contains("CONFIG_KCOV"));

    let junk = fx.dir.path().join("junk");
    std::fs::write(&junk, b"not an elf").unwrap();
    assert!(matches!(
        Vmlinux::open(&junk).unwrap_err(),
        Error::Parse { .. }
    ));
    assert!(matches!(
        Vmlinux::open(fx.dir.path().join("missing")).unwrap_err(),
        Error::Io { .. }
    ));
}

#[test]
fn cache_second_run_hits() {
    let fx = Fixture::build(Variant::TracePc);
    let vm = Vmlinux::open(fx.path()).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SymbolCache::new(cache_dir.path());
    let (first, outcome) = SiteTable::load_or_build(&vm, Some(&cache)).unwrap();
    let path = cache.path_for(vm.build_id().unwrap());
    assert_eq!(
        outcome,
        CacheOutcome::Stored {
            path: path.clone(),
            stale: None
        }
    );
    let (second, outcome) = SiteTable::load_or_build(&vm, Some(&cache)).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit { path: path.clone() });
    assert_eq!(first, second);
    assert_eq!(first, SiteTable::build(&vm).unwrap());

    // A corrupt file is replaced, and says why.
    std::fs::write(&path, b"KCOVSYM\0junk").unwrap();
    let (third, outcome) = SiteTable::load_or_build(&vm, Some(&cache)).unwrap();
    assert!(
        matches!(&outcome, CacheOutcome::Stored { stale: Some(_), .. }),
        "{outcome:?}"
    );
    assert_eq!(third, first);

    let (_, outcome) = SiteTable::load_or_build(&vm, None).unwrap();
    assert!(matches!(outcome, CacheOutcome::NotCached { .. }));
}

#[test]
fn pcs_to_coverage_map() {
    let fx = Fixture::build(Variant::TracePc);
    let vm = Vmlinux::open(fx.path()).unwrap();
    let table = SiteTable::build(&vm).unwrap();
    let branchy = vm.symbols().by_name("branchy").unwrap().range();
    // kcov would record the return addresses of the sites in branchy.
    let pcs: Vec<u64> = table
        .sites
        .iter()
        .filter(|s| branchy.contains(&s.call_addr))
        .map(|s| s.ret_addr)
        .chain([branchy.start]) // not a return address
        .collect();
    let (map, mapping) = CoverageMap::from_pcs(&table, pcs, MapOptions::default());
    assert_eq!(mapping.unmatched.len(), 1);
    assert_eq!(mapping.hits.len(), mapping.matched_pcs() as usize);

    let funcs: Vec<(&str, usize, usize)> = map
        .functions
        .iter()
        .map(|(k, v)| (&*k.name, v.sites.instrumented(), v.sites.hit_count()))
        .collect();
    let get = |n: &str| funcs.iter().find(|f| f.0 == n).copied().unwrap();
    let (_, b_sites, b_hit) = get("branchy");
    assert_eq!(b_sites, b_hit, "every branchy site was hit");
    let (_, _, c_hit) = get("compare");
    assert_eq!(c_hit, 0);
    assert!(get("helper").2 > 0, "inlined helper credited");
    // The call line of the inlined helper counts as executed.
    let call_line = &map.lines[&LineKey {
        file: "fixture.c".into(),
        line: HELPER_CALL_LINE,
    }];
    assert!(call_line.is_hit());

    let filtered = map.filter(&[PathGlob::new("*.c")]);
    assert_eq!(filtered.files().len(), 1);
    assert_eq!(filtered.summary().lines, map.summary().lines);
    assert!(map
        .filter(&[PathGlob::new("drivers/vhost/*")])
        .lines
        .is_empty());
}

#[test]
fn bench_entry_point() {
    let fx = Fixture::build(Variant::TracePc);
    let vm = Vmlinux::open(fx.path()).unwrap();
    let stats = symbolize_all_sites(&vm).unwrap();
    assert_eq!(stats.sites, objdump_call_count(fx.path(), &[TRACE_PC_HOOK]));
    assert!(stats.frames >= stats.sites);
    assert!(stats.total >= stats.symbolize);
}
