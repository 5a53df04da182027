//! Shared by the coverage_* tests: the real vmlinux's site table, synthetic runs (kcov-wire
//! streams made of return addresses of real call sites), and expected coverage computed
//! straight from the site frames (independently of the report code).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use coverage::golden::Item;
use coverage::{PathGlob, SiteKind, SiteTable, SymbolCache, Vmlinux};
use kcov_wire::{
    chunk_coverage, encode_into, CoverageSource, Done, ErrorReport, Frame, Hello, KcovMode,
    WorkloadResult, WorkloadStart,
};

/// The real vmlinux (`TESTBED_VMLINUX`), or None after printing why the test skips.
pub fn vmlinux() -> Option<PathBuf> {
    tests::artifact("TESTBED_VMLINUX")
}

/// The site table of `TESTBED_VMLINUX`, through the same per-build-id cache `cargo xtask
/// report` uses.
pub fn table() -> Option<&'static SiteTable> {
    static TABLE: OnceLock<SiteTable> = OnceLock::new();
    let path = vmlinux()?;
    Some(TABLE.get_or_init(|| {
        let vm = Vmlinux::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let cache = SymbolCache::new(xtask::paths::cache_root().join("symbols"));
        SiteTable::load_or_build(&vm, Some(&cache))
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }))
}

/// Build-id of the vmlinux (hex).
pub fn build_id() -> Option<String> {
    table()?.build_id.as_ref().map(|b| b.to_hex())
}

/// Indices of the PC sites whose outermost frame is function `name` (code of `name`,
/// including what was inlined into it).
pub fn sites_of(t: &SiteTable, name: &str) -> Vec<usize> {
    let v: Vec<usize> = (0..t.len())
        .filter(|&i| {
            t.sites[i].kind == SiteKind::Pc
                && t.frames[i]
                    .last()
                    .and_then(|f| f.function.as_deref())
                    .is_some_and(|f| f == name)
        })
        .collect();
    assert!(!v.is_empty(), "no sites in {name}");
    v
}

/// The kcov PCs (return addresses) of sites.
pub fn pcs_of(t: &SiteTable, sites: &[usize]) -> Vec<u64> {
    sites.iter().map(|&i| t.sites[i].ret_addr).collect()
}

/// Expected covered items of hit `sites` under `filter`: every frame's (file, line) and
/// (file, function), as the report's all-frames attribution defines them.
pub fn expected_items(t: &SiteTable, sites: &[usize], filter: &str) -> BTreeSet<Item> {
    let g = PathGlob::new(filter);
    let mut out = BTreeSet::new();
    for &i in sites {
        for f in &t.frames[i] {
            let Some(file) = f.file.as_deref().filter(|p| g.matches(p)) else {
                continue;
            };
            if let Some(line) = f.line {
                out.insert(Item::Line {
                    file: file.into(),
                    line,
                });
            }
            if let Some(name) = &f.function {
                out.insert(Item::Function {
                    file: file.into(),
                    name: name.to_string(),
                });
            }
        }
    }
    out
}

/// Lines of `file` that have PC sites (any frame).
pub fn instrumented_lines(t: &SiteTable, file: &str) -> BTreeMap<u32, Vec<usize>> {
    let mut out: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for i in 0..t.len() {
        if t.sites[i].kind != SiteKind::Pc {
            continue;
        }
        for f in &t.frames[i] {
            if f.file.as_deref() == Some(file) {
                if let Some(l) = f.line {
                    out.entry(l).or_default().push(i);
                }
            }
        }
    }
    out
}

/// One workload of a synthetic stream.
pub struct Workload<'a> {
    pub name: &'a str,
    pub pcs: Vec<u64>,
    pub status: i32,
}

/// The release of the kernel the synthetic runs name (the cached kernel of TESTBED_VMLINUX).
pub fn kernel_release() -> String {
    vmlinux()
        .and_then(|v| std::fs::read(v.with_file_name("kernel.json")).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|j| j["release"].as_str().map(str::to_string))
        .unwrap_or_else(|| "6.12.117".into())
}

/// A kcov-wire stream: Hello (the run's kernel release), per workload Start/Chunks/Result,
/// optional Error frames, Done.
pub fn stream(workloads: &[Workload], errors: &[&str], done: bool) -> Vec<u8> {
    stream_on(&kernel_release(), workloads, errors, done)
}

/// [`stream`] whose Hello says the agent ran on kernel `release`.
pub fn stream_on(release: &str, workloads: &[Workload], errors: &[&str], done: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let put = |f: Frame, out: &mut Vec<u8>| {
        encode_into(&f, out).unwrap();
    };
    put(
        Frame::Hello(Hello {
            agent_version: "synthetic".into(),
            kernel_release: release.into(),
            kcov_mode: KcovMode::Pc,
            area_words: 1 << 18,
            common_handle: 0x0100_0000_0000_0001,
        }),
        &mut out,
    );
    for e in errors {
        put(
            Frame::Error(ErrorReport {
                message: e.to_string(),
            }),
            &mut out,
        );
    }
    for w in workloads {
        put(
            Frame::WorkloadStart(WorkloadStart {
                name: w.name.into(),
            }),
            &mut out,
        );
        // Every PC twice, in small chunks, to exercise counting and chunking.
        let mut words = w.pcs.clone();
        words.extend(w.pcs.iter().rev());
        for c in chunk_coverage(
            w.name,
            CoverageSource::Remote,
            KcovMode::Pc,
            false,
            &words,
            0,
            64,
        )
        .unwrap()
        {
            put(Frame::CoverageChunk(c), &mut out);
        }
        put(
            Frame::WorkloadResult(WorkloadResult {
                name: w.name.into(),
                status: w.status,
                duration_us: 1000,
                counters: vec![("pcs".into(), w.pcs.len() as u64)],
                error: (w.status != 0).then(|| "synthetic failure".into()),
            }),
            &mut out,
        );
    }
    if done {
        put(Frame::Done(Done { status: 0 }), &mut out);
    }
    out
}

/// A run directory like `cargo xtask boot` leaves: `coverage.kcw` + `run.json` naming the
/// kernel key of `TESTBED_VMLINUX` (its cache directory name).
pub fn write_run(dir: &Path, stream: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("coverage.kcw"), stream).unwrap();
    let key = vmlinux()
        .and_then(|v| {
            v.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    std::fs::write(
        dir.join("run.json"),
        format!("{{\"kernel_key\": \"{key}\", \"runner\": \"synthetic\"}}"),
    )
    .unwrap();
}

/// Every file under `dir` with its bytes (to prove a command modified nothing).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `target/testbed/artifacts/` (kept after the test for people to look at).
pub fn artifacts_dir() -> PathBuf {
    let d = xtask::paths::workspace_root().join("target/testbed/artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the xtask binary; returns (success, stdout, stderr, error lines).
pub fn xtask_run(args: &[&str]) -> Option<(bool, String, String, Vec<String>)> {
    let out = tests::xtask(args)?;
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        tests::error_lines(&out),
    ))
}

/// A tool's path, or None after printing why (a failure under `TESTBED_REQUIRE_KERNEL=1`,
/// where `cargo xtask test` has installed it).
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("TESTBED_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("{name} is missing although `cargo xtask test` installs it (deps::REPORT_CHECK_PACKAGES)");
        }
        test_skip::skip(
            &tests::current_test(),
            test_skip::ARTIFACTS,
            format!("{name} not installed (`cargo xtask test` installs it)"),
        );
    }
    found
}
