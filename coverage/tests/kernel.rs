//! The symbolizer on a real kernel: `TESTBED_VMLINUX=/path/to/vmlinux` (a kcov + vhost kernel
//! with DWARF, as `cargo xtask` builds it). Without it these tests skip, unless
//! `TESTBED_REQUIRE_KERNEL=1`, which turns the skip into a failure.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use coverage::symbolizer::{
    enumerate_sites, CacheOutcome, SiteScan, SymbolCache, TRACE_CMP_HOOKS, TRACE_PC_HOOK,
};
use coverage::{CoverageMap, MapOptions, PathGlob, SiteKind, SiteTable, Symbolizer, Vmlinux};

/// Our per-function decode may differ from objdump's linear sweep by this fraction of sites
/// (objdump also decodes bytes outside sized function symbols, and can desync on data).
const OBJDUMP_TOLERANCE: f64 = 0.001;

fn vmlinux_path() -> Option<PathBuf> {
    match std::env::var_os("TESTBED_VMLINUX").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            if std::env::var("TESTBED_REQUIRE_KERNEL").as_deref() == Ok("1") {
                panic!("TESTBED_REQUIRE_KERNEL=1 but TESTBED_VMLINUX is not set");
            }
            test_skip::skip(
                std::thread::current()
                    .name()
                    .unwrap_or("coverage kernel test"),
                test_skip::ARTIFACTS,
                "TESTBED_VMLINUX not set (run via cargo xtask test)",
            );
            None
        }
    }
}

struct Kernel {
    vm: Vmlinux,
    scan: SiteScan,
    table: SiteTable,
}

fn kernel() -> Option<&'static Kernel> {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    let path = vmlinux_path()?;
    Some(KERNEL.get_or_init(|| {
        let t = Instant::now();
        let vm = Vmlinux::open(&path).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("open: {:?}", t.elapsed());
        let t = Instant::now();
        let scan = enumerate_sites(&vm).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "enumerate: {:?}: {} sites ({} pc, {} cmp, {} outside symbols), {} tail calls, \
             {} functions, {} decode errors, {} gap bytes with {} decode errors",
            t.elapsed(),
            scan.sites.len(),
            scan.count(SiteKind::Pc),
            scan.count(SiteKind::Cmp),
            scan.gap_sites,
            scan.tail_calls.len(),
            scan.functions_scanned,
            scan.decode_errors,
            scan.gap_bytes_scanned,
            scan.gap_decode_errors
        );
        let t = Instant::now();
        let sym = Symbolizer::new(&vm).unwrap_or_else(|e| panic!("{e}"));
        let table = SiteTable::from_scan(scan.clone(), &sym);
        eprintln!(
            "symbolize all: {:?} (src_roots {:?}, {} dwarf errors)",
            t.elapsed(),
            table.src_roots,
            table.dwarf_errors
        );
        Kernel { vm, scan, table }
    }))
}

fn objdump_counts(path: &std::path::Path) -> (usize, usize) {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(path)
        .output()
        .expect("objdump (binutils) is needed by this test");
    assert!(out.status.success());
    let (mut pc, mut cmp) = (0, 0);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if !l.contains("call") {
            continue;
        }
        if l.contains(&format!("<{TRACE_PC_HOOK}>")) {
            pc += 1;
        } else if TRACE_CMP_HOOKS
            .iter()
            .any(|h| l.contains(&format!("<{h}>")))
        {
            cmp += 1;
        }
    }
    (pc, cmp)
}

fn within(ours: usize, theirs: usize) -> bool {
    (ours as f64 - theirs as f64).abs() <= OBJDUMP_TOLERANCE * theirs as f64
}

#[test]
fn kernel_image_basics() {
    let Some(k) = kernel() else { return };
    let id = k.vm.build_id().expect("vmlinux has a build-id");
    eprintln!("build-id {id}");
    assert!(id.0.len() >= 16);
    assert!(k.vm.has_dwarf());
    assert!(k.vm.symbols().len() > 1000);
    assert!(k.vm.symbols().by_name(TRACE_PC_HOOK).is_some());
}

#[test]
fn kernel_sites_match_objdump() {
    let Some(k) = kernel() else { return };
    let (pc, cmp) = objdump_counts(k.vm.path());
    let (ours_pc, ours_cmp) = (k.scan.count(SiteKind::Pc), k.scan.count(SiteKind::Cmp));
    eprintln!(
        "trace_pc calls: ours {ours_pc}, objdump {pc}; cmp calls: ours {ours_cmp}, objdump {cmp}"
    );
    assert!(pc > 1000, "objdump found only {pc} trace_pc calls");
    assert!(
        within(ours_pc, pc),
        "trace_pc: ours {ours_pc}, objdump {pc}"
    );
    assert!(within(ours_cmp, cmp), "cmp: ours {ours_cmp}, objdump {cmp}");
    // The return-address offset, measured on this binary.
    assert_eq!(k.scan.uniform_return_offset(), Some(5));
    for s in &k.scan.sites {
        assert_eq!(k.vm.code(s.call_addr, 1), Some(&[0xe8u8][..]));
    }
    // A tiny share of decode errors at most (functions whose st_size covers data).
    assert!(k.scan.decode_errors < (k.scan.functions_scanned as u64) / 100);
}

#[test]
fn kernel_tail_jumping_callees_credit_their_callers() {
    let Some(k) = kernel() else { return };
    // gcc turns a function's trailing hook call into `jmp __sanitizer_cov_trace_pc`; the hook
    // then records the return address of the call into that function.
    assert!(
        k.scan.tail_calls.len() > 100,
        "{} tail calls",
        k.scan.tail_calls.len()
    );
    let tails: Vec<_> = k.scan.sites.iter().filter(|s| s.tail).collect();
    assert_eq!(tails.len(), k.scan.tail_return_sites);
    assert!(tails.len() > 1000, "{} tail-return sites", tails.len());
    let syms = k.vm.symbols();
    for s in &tails {
        // A direct `call rel32` to the start of a function symbol.
        let code = k.vm.code(s.call_addr, 5).unwrap();
        assert_eq!(code[0], 0xe8);
        let rel = i32::from_le_bytes(code[1..5].try_into().unwrap());
        let target = s.ret_addr.wrapping_add(rel as i64 as u64);
        let f = syms.lookup(target).unwrap();
        assert_eq!(
            f.addr, target,
            "call at {:#x} lands inside {}",
            s.call_addr, f.name
        );
    }
    // Such calls in drivers/vhost are symbolized to the caller's line.
    let in_vhost = k
        .table
        .sites
        .iter()
        .zip(&k.table.frames)
        .filter(|(s, fr)| {
            s.tail
                && fr.iter().any(|f| {
                    f.file
                        .as_deref()
                        .is_some_and(|p| p.starts_with("drivers/vhost/"))
                })
        })
        .count();
    assert!(
        in_vhost > 10,
        "{in_vhost} tail-return sites in drivers/vhost"
    );
}

#[test]
fn kernel_build_id_is_read_from_the_notes_alone() {
    let Some(k) = kernel() else { return };
    let notes = Vmlinux::read_notes(k.vm.path()).unwrap();
    assert!(notes.build_id.is_some() && notes.has_dwarf);
    assert_eq!(notes.build_id.as_ref(), k.vm.build_id());
    // An image without DWARF says so (its table must not be used for it), same build-id.
    let stripped = tempfile::NamedTempFile::new().unwrap();
    let ok = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(k.vm.path())
        .arg(stripped.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "objcopy (binutils) is needed by this test");
    let stripped = Vmlinux::read_notes(stripped.path()).unwrap();
    assert!(!stripped.has_dwarf);
    assert_eq!(stripped.build_id.as_ref(), k.vm.build_id());
    // Not an ELF image: an error, not a panic.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), b"not an elf").unwrap();
    assert!(Vmlinux::read_notes(tmp.path()).is_err());
}

#[test]
fn kernel_decl_lines_are_declarations() {
    let Some(k) = kernel() else { return };
    let files = std::collections::BTreeSet::from(["drivers/vhost/net.c"]);
    let decl = coverage::symbolizer::decl_lines(&k.vm, &k.table.src_roots, &files).unwrap();
    let line = |name: &str| decl[&("drivers/vhost/net.c".to_string(), name.to_string())];
    // Each declaration comes before every instrumented line of the function.
    let map = CoverageMap::build(&k.table, &|_| false, MapOptions::default());
    for name in ["handle_tx_copy", "handle_tx", "vhost_net_open"] {
        let (_, f) = map
            .functions
            .iter()
            .find(|(key, _)| {
                &*key.name == name && key.file.as_deref() == Some("drivers/vhost/net.c")
            })
            .unwrap();
        let (first, _) = f.lines.unwrap();
        assert!(
            line(name) < first,
            "{name}: declared at {}, first site line {first}",
            line(name)
        );
        assert!(
            first - line(name) < 40,
            "{name}: declared far away at {}",
            line(name)
        );
    }
    // Functions of other files are not read.
    assert!(decl
        .keys()
        .all(|(f, _)| !f.starts_with("drivers/vhost/vhost.c")));
}

#[test]
fn kernel_known_function_symbolizes_to_vhost_c() {
    let Some(k) = kernel() else { return };
    let sym = Symbolizer::new(&k.vm).unwrap();
    let f =
        k.vm.symbols()
            .by_name("vhost_dev_init")
            .expect("vhost_dev_init");
    let frames = sym.symbolize(f.addr).unwrap();
    eprintln!("vhost_dev_init @ {:#x}: {frames:?}", f.addr);
    let outer = frames.last().expect("frames");
    assert_eq!(outer.function.as_deref(), Some("vhost_dev_init"));
    assert_eq!(frames[0].file.as_deref(), Some("drivers/vhost/vhost.c"));
    assert!(frames[0].line.is_some());
}

#[test]
fn kernel_sites_in_vhost_net_and_vsock() {
    let Some(k) = kernel() else { return };
    let files_of = |file: &str| {
        k.table
            .frames
            .iter()
            .filter(|f| f.first().and_then(|f| f.file.as_deref()) == Some(file))
            .count()
    };
    let net = files_of("drivers/vhost/net.c");
    let vsock = files_of("drivers/vhost/vsock.c");
    let vhost = files_of("drivers/vhost/vhost.c");
    eprintln!("sites: net.c {net}, vsock.c {vsock}, vhost.c {vhost}");
    assert!(net > 50 && vsock > 20 && vhost > 100);

    // Most sites have a file:line; functions of net.c include the TX path.
    let with_line = k
        .table
        .frames
        .iter()
        .filter(|f| {
            f.first()
                .is_some_and(|f| f.file.is_some() && f.line.is_some())
        })
        .count();
    assert!(
        with_line * 100 >= k.table.len() * 99,
        "{with_line} of {}",
        k.table.len()
    );
    let map = CoverageMap::build(&k.table, &|_| false, MapOptions::default())
        .filter(&[PathGlob::new("drivers/vhost/*")]);
    let funcs: BTreeSet<&str> = map.functions.keys().map(|k| &*k.name).collect();
    for f in [
        "handle_tx_copy",
        "vhost_get_vq_desc",
        "vhost_dev_init",
        "vhost_vsock_dev_open",
    ] {
        assert!(funcs.contains(f), "{f} missing from drivers/vhost/*");
    }
    let s = map.summary();
    eprintln!("drivers/vhost/*: {s:?}");
    assert_eq!(s.sites_hit, 0);
    assert!(map.files().iter().all(|f| f.starts_with("drivers/vhost/")));
}

/// GNU `addr2line -a -f -i`: per address, (function, line) frames, innermost first.
fn gnu_addr2line(file: &std::path::Path, addrs: &[u64]) -> Vec<Vec<(String, Option<u32>)>> {
    let out = Command::new("addr2line")
        .args(["-a", "-f", "-i", "-e"])
        .arg(file)
        .args(addrs.iter().map(|a| format!("{a:#x}")))
        .output()
        .expect("addr2line (binutils) is needed by this test");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result: Vec<Vec<(String, Option<u32>)>> = Vec::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.starts_with("0x") {
            result.push(Vec::new());
            continue;
        }
        let loc = lines.next().unwrap_or_default();
        let line = loc
            .rsplit(':')
            .next()
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .filter(|n| *n != 0);
        if let Some(r) = result.last_mut() {
            r.push((l.to_string(), line));
        }
    }
    result
}

#[test]
fn kernel_vhost_sites_agree_with_gnu_addr2line() {
    let Some(k) = kernel() else { return };
    let picked: Vec<usize> = (0..k.table.len())
        .filter(|&i| {
            k.table.frames[i].iter().any(|f| {
                f.file
                    .as_deref()
                    .is_some_and(|p| p.starts_with("drivers/vhost/"))
            })
        })
        .collect();
    assert!(picked.len() > 500);
    let addrs: Vec<u64> = picked.iter().map(|&i| k.table.sites[i].call_addr).collect();
    let gnu = gnu_addr2line(k.vm.path(), &addrs);
    assert_eq!(gnu.len(), addrs.len());
    let mut differ = Vec::new();
    for ((&i, addr), theirs) in picked.iter().zip(&addrs).zip(&gnu) {
        let ours: Vec<(String, Option<u32>)> = k.table.frames[i]
            .iter()
            .map(|f| (f.function.as_deref().unwrap_or("??").to_string(), f.line))
            .collect();
        if &ours != theirs {
            differ.push(format!("{addr:#x}: ours {ours:?} gnu {theirs:?}"));
        }
    }
    eprintln!(
        "{} vhost sites compared with GNU addr2line, {} differ",
        addrs.len(),
        differ.len()
    );
    assert!(
        differ.is_empty(),
        "{}",
        differ[..differ.len().min(10)].join("\n")
    );
}

#[test]
fn kernel_cache_roundtrip() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cache = SymbolCache::new(dir.path());
    let path = cache.store(&k.table).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let t = Instant::now();
    let (loaded, outcome) = SiteTable::load_or_build(&k.vm, Some(&cache)).unwrap();
    eprintln!("cache: {size} bytes, load {:?}", t.elapsed());
    assert_eq!(outcome, CacheOutcome::Hit { path });
    assert!(loaded == k.table);
}
