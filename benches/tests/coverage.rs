//! The coverage benchmarks by hand (release build, quiet machine):
//! `TESTBED_BENCH=1 TESTBED_VMLINUX=/path/to/vmlinux cargo test --release -p testbed-bench --test coverage -- --nocapture`.
//! `cargo xtask bench symbolize` prints the same figures (`xtask::report::bench`).

use std::time::Duration;

#[test]
fn bench_symbolize_and_report() {
    if std::env::var("TESTBED_BENCH").as_deref() != Ok("1") {
        test_skip::skip(
            std::thread::current().name().unwrap_or("coverage bench"),
            test_skip::OPT_IN,
            "set TESTBED_BENCH=1 (and TESTBED_VMLINUX) to run the coverage benchmarks",
        );
        return;
    }
    let vm =
        std::path::PathBuf::from(std::env::var_os("TESTBED_VMLINUX").expect("TESTBED_VMLINUX"));
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let cache = tempfile::tempdir().unwrap();
    let s = testbed_bench::coverage::symbolize_vs_addr2line(&vm, cache.path()).unwrap();
    println!(
        "symbolize-all: ours {} sites -> {} frames in {} (symbolize {}); addr2line {} ({} lines); \
         ratio {:.1}x; from the build-id cache {} (ratio {:.1}x)",
        s.sites,
        s.frames,
        ms(s.ours),
        ms(s.ours_symbolize),
        ms(s.addr2line),
        s.addr2line_lines,
        s.ratio(),
        ms(s.cached.unwrap()),
        s.cached_ratio().unwrap()
    );
    let v = coverage::Vmlinux::open(&vm).unwrap();
    let table = coverage::SiteTable::build(&v).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = std::env::var_os("TESTBED_SOURCE_ROOT").map(std::path::PathBuf::from);
    let r = testbed_bench::coverage::report_generation(&table, 100_000, src.as_deref(), dir.path())
        .unwrap();
    println!("report ({} PCs, {} distinct):", r.entries, r.distinct);
    for (name, d) in &r.stages {
        println!("  {name}: {}", ms(*d));
    }
    println!("  total: {}", ms(r.total()));
}
