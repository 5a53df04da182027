//! Bad input gives one error line naming the problem, a non-zero exit, and
//! leaves the kernel cache as it was.

use std::collections::BTreeSet;

use tests::{error_lines, text, xtask};

fn cached_kernels() -> BTreeSet<String> {
    let dir = xtask::paths::cache_root().join("kernels");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn missing_kernel_source_dir() {
    let Some(out) = xtask(&["kernel", "--kernel-src", "/no/such/kernel-tree"]) else {
        return;
    };
    assert!(!out.status.success());
    let errors = error_lines(&out);
    assert_eq!(
        errors,
        ["error: --kernel-src /no/such/kernel-tree: no such directory"],
        "{}",
        text(&out)
    );
}

#[test]
fn missing_include_file() {
    let Some(out) = xtask(&[
        "boot",
        "--runner",
        "qemu",
        "--include",
        "/no/such/file:/bin/x",
    ]) else {
        return;
    };
    assert!(!out.status.success());
    let errors = error_lines(&out);
    assert_eq!(
        errors,
        ["error: include file not found: /no/such/file"],
        "{}",
        text(&out)
    );
}

#[test]
fn net_options_are_checked_before_any_build() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["boot", "--runner", "qemu", "--net", "tap=kt0"],
            "--net needs the kvm runner",
        ),
        (&["boot", "--runner", "kvm", "--host-kcov"], "--net"),
        (
            &["boot", "--runner", "kvm", "--net", "tap=kt0,vhost=maybe"],
            "unknown or repeated option \"vhost=maybe\"",
        ),
    ];
    for (args, want) in cases {
        let Some(out) = xtask(args) else { return };
        assert!(!out.status.success(), "{args:?}");
        let all = text(&out);
        assert!(all.contains(want), "{args:?}: {all}");
        assert!(!all.contains("panicked"), "{args:?}: {all}");
        assert!(
            !all.contains("kernel:"),
            "{args:?}: no build step may run: {all}"
        );
    }
}

/// The agent's plan, memory, timeouts, vCPUs and L1 options are refused before anything is
/// built or booted, each with one error line naming the value.
#[test]
fn boot_input_is_checked_before_any_build() {
    let cases: &[(&[&str], &str)] = &[
        (&["--workload", "bogus"], "unknown workload \"bogus\""),
        (&["--workload", "cmd"], "workload cmd needs a command"),
        (&["--area", "7"], "bad value \"7\" for testbed.area"),
        (
            &["--param", "frames=0"],
            "bad value \"0\" for testbed.frames",
        ),
        (
            &["--param", "snapshot_ms=5"],
            "bad value \"5\" for testbed.snapshot_ms: milliseconds, 0 (off) or 10..=600000",
        ),
        (
            &["--param", "nosuchkey=1"],
            "unknown plan key testbed.nosuchkey",
        ),
        (
            &["--append", "testbed.cover=maybe"],
            "bad value \"maybe\" for testbed.cover",
        ),
        (&["--mem", "0"], "--mem 0: expected 64 to"),
        (&["--mem", "99999999"], "--mem 99999999: expected 64 to"),
        (&["--timeout", "0"], "--timeout 0: expected a positive"),
        (
            &["--boot-timeout", "0"],
            "--boot-timeout 0: expected a positive",
        ),
        (&["--vcpus", "0"], "--vcpus 0: expected 1 to"),
        (&["--l1-append", "loglevel=8"], "are for the nested runner"),
        (&["--l1-cpu", "max"], "are for the nested runner"),
    ];
    for (extra, want) in cases {
        let args: Vec<&str> = ["boot", "--runner", "qemu"]
            .iter()
            .chain(*extra)
            .copied()
            .collect();
        let Some(out) = xtask(&args) else { return };
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let errors = error_lines(&out);
        assert_eq!(errors.len(), 1, "{args:?}: {}", text(&out));
        assert!(errors[0].contains(want), "{args:?}: {errors:?}");
        let all = text(&out);
        assert!(
            !all.contains("kernel:") && !all.contains("boot:"),
            "{args:?}: no build or boot step may run: {all}"
        );
    }
}

#[test]
fn unknown_fragment_option_fails_and_keeps_cache() {
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let before = cached_kernels();
    let dir = tempfile::tempdir().unwrap();
    let frag = dir.path().join("bad.config");
    std::fs::write(
        &frag,
        "# an option no kernel has\nCONFIG_TESTBED_NO_SUCH_OPTION=y\n",
    )
    .unwrap();
    let out = xtask(&["kernel", "--fragment", frag.to_str().unwrap()]).unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("bad.config:2: CONFIG_TESTBED_NO_SUCH_OPTION=y is not in the final .config"),
        "{all}"
    );
    // Other builds may publish into the shared cache meanwhile (this test can wait minutes
    // for the build lock): none of the new entries may be built from the bad fragment.
    let kernels = xtask::paths::cache_root().join("kernels");
    for key in cached_kernels().difference(&before) {
        let meta =
            std::fs::read_to_string(kernels.join(key).join("kernel.json")).unwrap_or_default();
        assert!(
            !meta.contains(dir.path().file_name().unwrap().to_str().unwrap()),
            "a kernel built from the bad fragment entered the cache: {key}"
        );
    }
}

#[test]
fn second_kernel_build_is_a_cache_hit() {
    let Some(out) = xtask(&["kernel"]) else {
        return;
    };
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("kernel: cached"), "no cache hit: {all}");
    assert!(!all.contains("kernel: build"), "make ran: {all}");
}
