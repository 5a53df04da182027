//! The batch symbolizer (`Symbolizer::symbolize_sorted`: one pass per compilation unit, units
//! in parallel) against the per-address reference (`Symbolizer::symbolize_each`: addr2line's
//! `find_frames` for each address) on every instrumented site of a real kernel, frame by frame.
//!
//! The kernel is `TESTBED_VMLINUX`, else the newest `kernels/*/vmlinux` in the kcov-testbed
//! cache (`KCOV_TESTBED_CACHE`, `$XDG_CACHE_HOME/kcov-testbed`, `~/.cache/kcov-testbed`);
//! without either the tests skip, unless `TESTBED_REQUIRE_KERNEL=1`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use coverage::symbolizer::enumerate_sites;
use coverage::{Frame, Symbolizer, Vmlinux};

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KCOV_TESTBED_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kcov-testbed");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("kcov-testbed")
}

fn vmlinux_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TESTBED_VMLINUX").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cached = std::fs::read_dir(cache_root().join("kernels"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    if let Some((_, p)) = cached {
        return Some(p);
    }
    if std::env::var("TESTBED_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("TESTBED_REQUIRE_KERNEL=1 but TESTBED_VMLINUX is not set");
    }
    test_skip::skip(
        std::thread::current().name().unwrap_or("symbolize_batch"),
        test_skip::ARTIFACTS,
        "no kernel: TESTBED_VMLINUX is not set and the kcov-testbed cache has none",
    );
    None
}

fn vmlinux() -> Option<&'static Vmlinux> {
    static VM: OnceLock<Vmlinux> = OnceLock::new();
    let path = vmlinux_path()?;
    Some(VM.get_or_init(|| Vmlinux::open(&path).unwrap_or_else(|e| panic!("{e}"))))
}

fn show(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| {
            format!(
                "{} at {}:{}",
                f.function.as_deref().unwrap_or("??"),
                f.file.as_deref().unwrap_or("??"),
                f.line.map_or("?".to_string(), |l| l.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// Asserts that `ours[i]` and `reference[i]` are the same frames (function, file, line, in the
/// same inline order) for every address.
fn assert_same(what: &str, addrs: &[u64], ours: &[Vec<Frame>], reference: &[Vec<Frame>]) {
    assert_eq!(ours.len(), addrs.len(), "{what}: one answer per address");
    assert_eq!(reference.len(), addrs.len());
    let mut differ = Vec::new();
    for ((addr, a), b) in addrs.iter().zip(ours).zip(reference) {
        if a != b {
            differ.push(format!(
                "{addr:#x}:\n  batch     {}\n  reference {}",
                show(a),
                show(b)
            ));
        }
    }
    eprintln!(
        "{what}: {} addresses, {} frames, {} differ",
        addrs.len(),
        ours.iter().map(Vec::len).sum::<usize>(),
        differ.len()
    );
    assert!(
        differ.is_empty(),
        "{what}: {} of {} addresses differ, e.g.\n{}",
        differ.len(),
        addrs.len(),
        differ[..differ.len().min(10)].join("\n")
    );
}

#[test]
fn batch_matches_find_frames_on_every_kernel_site() {
    let Some(vm) = vmlinux() else { return };
    let scan = enumerate_sites(vm).unwrap_or_else(|e| panic!("{e}"));
    let addrs: Vec<u64> = scan.sites.iter().map(|s| s.call_addr).collect();
    assert!(addrs.len() > 10_000, "{} sites", addrs.len());

    let reference_sym = Symbolizer::new(vm).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let reference = reference_sym.symbolize_each(&addrs);
    eprintln!("reference (find_frames per address): {:?}", t.elapsed());

    let sym = Symbolizer::new(vm).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let batch = sym.symbolize_sorted(&addrs);
    eprintln!("batch: {:?}", t.elapsed());
    assert_same("call sites", &addrs, &batch, &reference);
    assert_eq!(sym.dwarf_errors(), reference_sym.dwarf_errors());
    // Inlining is exercised: many sites have several frames.
    let inlined = batch.iter().filter(|f| f.len() > 1).count();
    assert!(inlined > addrs.len() / 10, "{inlined} inlined sites");
    assert!(batch.iter().filter(|f| f.len() > 3).count() > 100);

    // One thread gives the same frames as many.
    let one = Symbolizer::new(vm)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_threads(1)
        .symbolize_sorted(&addrs);
    assert_same("call sites, one thread", &addrs, &one, &reference);
}

#[test]
fn batch_matches_find_frames_on_other_addresses() {
    let Some(vm) = vmlinux() else { return };
    // Return addresses - 1 (what the tests crate looks up), every function entry and end, the
    // last byte of each function, and addresses outside any code.
    let scan = enumerate_sites(vm).unwrap_or_else(|e| panic!("{e}"));
    let mut addrs: Vec<u64> = scan.sites.iter().map(|s| s.ret_addr - 1).collect();
    for f in vm.symbols().functions() {
        addrs.push(f.addr);
        addrs.push(f.addr + f.size);
        addrs.push((f.addr + f.size).saturating_sub(1));
    }
    addrs.extend([0, 1, 0x1000, 0xffff_ffff_8000_0000, u64::MAX - 1]);
    addrs.sort_unstable();
    addrs.dedup();

    let reference_sym = Symbolizer::new(vm).unwrap_or_else(|e| panic!("{e}"));
    let reference = reference_sym.symbolize_each(&addrs);
    let sym = Symbolizer::new(vm).unwrap_or_else(|e| panic!("{e}"));
    let batch = sym.symbolize_sorted(&addrs);
    assert_same("other addresses", &addrs, &batch, &reference);
    assert_eq!(sym.dwarf_errors(), reference_sym.dwarf_errors());

    // Unsorted input with repeats gets the answers in its own order.
    let mut shuffled: Vec<u64> = addrs.iter().rev().step_by(7).copied().collect();
    shuffled.extend(addrs.iter().step_by(11).copied());
    shuffled.push(shuffled[0]);
    let ours = sym.symbolize_sorted(&shuffled);
    let reference = reference_sym.symbolize_each(&shuffled);
    assert_same("unsorted, repeated", &shuffled, &ours, &reference);
}
