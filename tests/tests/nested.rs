//! Linux on our own VMM: the nested runner (QEMU TCG with emulated SVM, an L1 Linux with KVM,
//! our static `vmm` inside it booting the kcov guest kernel as L2). These are the tests that
//! need "a real Linux on our VMM"; they run on any machine with QEMU.
//!
//! Each boot costs tens of seconds of TCG, so the cases share boots where they can.

use std::path::{Path, PathBuf};
use std::process::Output;

use tests::{stream_path, text, xtask};

const NESTED: &[&str] = &["boot", "--runner", "nested"];

fn boot(extra: &[&str]) -> Option<Output> {
    let args: Vec<&str> = NESTED.iter().chain(extra).copied().collect();
    xtask(&args)
}

/// The run directory of a boot (from its "boot: ... run directory DIR" line).
fn run_dir(out: &Output) -> PathBuf {
    let all = text(out);
    let dir = all
        .lines()
        .find_map(|l| l.split_once("run directory ").map(|(_, d)| d.trim()))
        .unwrap_or_else(|| panic!("no run directory in:\n{all}"));
    PathBuf::from(dir)
}

/// Our VMM boots the kcov kernel with 2 vCPUs; the agent's vhost workloads stream their
/// coverage through our virtio-vsock device and Linux's virtio_vsock driver, relayed out of
/// L1 byte for byte; the run store is a normal one; the functions equal the goldens that the
/// qemu runner recorded for the same workloads.
#[test]
fn nested_runs_the_kcov_kernel_and_streams_coverage_through_our_vsock_device() {
    let Some(out) = boot(&[
        "--vcpus",
        "2",
        "--workload",
        "vhost-net-tx",
        "--workload",
        "vhost-vsock",
    ]) else {
        return;
    };
    let all = tests::assert_exit_with(
        &out,
        0,
        &[
            "runner: nested",
            "testbed-agent: kcov /sys/kernel/debug/kcov: present",
            "testbed-agent: vhost-net /dev/vhost-net: present",
            "testbed-agent: cpus online: 0-1",
            "@@TESTBED-EXIT@@ 0",
        ],
    );
    let dir = run_dir(&out);
    let l1 = std::fs::read_to_string(dir.join("l1-console.log")).unwrap();
    assert!(l1.contains("@@TESTBED-L1-READY@@"), "{l1}");
    // The L2 resets by triple fault (reboot=t, as under QEMU): the vmm's status 2.
    assert!(l1.contains("@@TESTBED-L1-EXIT@@ 2"), "{l1}");
    // The L2 console is the guest's serial log, without L1's lines.
    let serial = std::fs::read_to_string(dir.join("serial.log")).unwrap();
    assert!(serial.contains("@@TESTBED-READY@@"), "{serial}");
    assert!(!serial.contains("TESTBED-L1"), "{serial}");

    // The stream came over vsock (not the console) and is whole.
    let stream = stream_path(&out);
    assert_eq!(stream, dir.join("coverage.kcw"));
    assert!(std::fs::metadata(&stream).unwrap().len() > 0);
    let report = coverage::run::StreamSummary::of_run(&dir).unwrap();
    assert_eq!(report.problem, None, "{all}");
    assert_eq!(report.done, Some(0));
    for w in ["vhost-net-tx", "vhost-vsock"] {
        let s = report
            .workload(w)
            .unwrap_or_else(|| panic!("no {w} in the stream"));
        assert_eq!(s.status, Some(0), "{w}: {s:?}");
        assert!(s.unique_pcs > 100, "{w}: {s:?}");
    }
    assert!(
        !serial.contains("@@KCOV@@"),
        "the stream went over the console"
    );

    // The store reads like any run's, and the functions match the qemu runner's goldens.
    for w in ["vhost-net-tx", "vhost-vsock"] {
        let opts = xtask::golden::GoldenOpts {
            runs: 1,
            functions_only: true,
            ..Default::default()
        };
        let d = dir.clone();
        let outcome = xtask::golden::golden_workload(w, &opts, &mut |_| Ok(d.clone())).unwrap();
        match outcome {
            xtask::golden::GoldenOutcome::Passed(t) => eprintln!("{t}"),
            o => panic!("nested {w} against the qemu golden: {o:?}"),
        }
    }
    tests::assert_no_qemu_left(&dir);
}

/// Exit statuses cross both levels: a command's status, a guest kernel panic (70).
#[test]
fn nested_exit_statuses_propagate() {
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = tests::exit_program(tmp.path(), 3);
    let include = format!("{}:/bin/exit3", bin.display());
    let out = boot(&["--include", &include, "--", "/bin/exit3"]).unwrap();
    tests::assert_exit_with(&out, 3, &["testbed-agent: command exited with status 3"]);

    // No init in L2: its kernel panics; L1 and the vmm are fine.
    let out = boot(&["--append", "rdinit=/none", "--append", "init=/none"]).unwrap();
    tests::assert_exit_with(&out, 70, &["guest kernel panicked"]);
    tests::assert_no_qemu_left(&run_dir(&out));
}

/// An L2 that hangs is stopped at --timeout (124), QEMU and the vmm with it.
#[test]
fn nested_hang_times_out_and_leaves_nothing() {
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = tests::spin_program(tmp.path());
    let include = format!("{}:/bin/spin", bin.display());
    let out = boot(&["--timeout", "5", "--include", &include, "--", "/bin/spin"]).unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(124), "{all}");
    assert!(all.contains("did not finish within 5s"), "{all}");
    tests::assert_no_qemu_left(&run_dir(&out));
}

/// Faults at L1's level: a QEMU CPU without SVM, an L1 kernel without KVM, nested paging
/// left on, and an L1 kernel panic, each end in one line naming L1, with L1's console tail,
/// fast (no timeout).
#[test]
fn nested_l1_faults_are_named() {
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let out = boot(&["--no-echo", "--l1-cpu", "max,svm=off"]).unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(71), "{all}");
    assert!(all.contains("the L1 CPU has no SVM"), "{all}");

    // kvm_amd's initcall skipped: the L1 kernel has no /dev/kvm.
    let out = boot(&["--no-echo", "--l1-append", "initcall_blacklist=svm_init"]).unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(71), "{all}");
    assert!(all.contains("the L1 kernel has no /dev/kvm"), "{all}");

    let out = boot(&["--no-echo", "--l1-append", "kvm_amd.npt=1"]).unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(71), "{all}");
    assert!(all.contains("L1 (the nested Linux host"), "{all}");
    assert!(all.contains("kvm_amd.npt is Y in L1"), "{all}");
    assert!(all.contains("last console lines (L1"), "{all}");

    let out = boot(&[
        "--no-echo",
        "--l1-append",
        "rdinit=/none",
        "--l1-append",
        "init=/none",
    ])
    .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(71), "{all}");
    assert!(all.contains("the L1 kernel panicked"), "{all}");
    tests::assert_no_qemu_left(&run_dir(&out));
}

/// Compiles the L2 side of the net and vsock checks.
fn net_vsock_check(dir: &Path) -> PathBuf {
    let src = xtask::paths::workspace_root().join(xtask::bench::NESTED_CHECK_SRC);
    let bin = dir.join("nested_net_vsock");
    xtask::agent::gcc_static(&src, &bin).unwrap_or_else(|e| panic!("{e:#}"));
    bin
}

/// Linux's virtio_net and virtio_vsock drivers on our devices, in L2: each virtio-mmio
/// device unbound and bound again (device reset, driver re-probe), then 16 MiB of TCP
/// through the tap to L1's echo service and back byte-exact, with checksum and segmentation
/// offloads negotiated, and 1 MiB over vsock to L1's echo; the virtio interrupts counted
/// (irqfd: the drivers do not poll). `vhost` hands the rings to L1's vhost-net, with
/// `--host-kcov` collecting L1's vhost worker coverage.
fn nested_net(vhost: bool) {
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = net_vsock_check(tmp.path());
    let include = format!("{}:/bin/check", bin.display());
    let net = if vhost {
        "tap=tap0,vhost=on"
    } else {
        "tap=tap0"
    };
    let mut args = vec![
        "--vcpus",
        "2",
        "--net",
        net,
        // The check re-binds the vsock device: the stream goes over the console.
        "--transport",
        "console",
        "--cover",
        "off",
        "--include",
        &include,
    ];
    if vhost {
        args.push("--host-kcov");
    }
    args.extend(["--", "/bin/check"]);
    let out = boot(&args).unwrap();
    let all = tests::assert_exit_with(
        &out,
        0,
        &[
            "nested-check: re-bound virtio-mmio.",
            " (net)",
            " (vsock)",
            "nested-check: tcp echo: 16777216 bytes both ways, byte-exact",
            "nested-check: vsock echo: 1048576 bytes both ways, byte-exact",
            "nested-check: ok",
        ],
    );
    // Negotiated virtio-net features (a bit string, bit 0 first): CSUM, GUEST_CSUM,
    // GUEST_TSO4, HOST_TSO4.
    let features = all
        .lines()
        .find_map(|l| l.strip_prefix("nested-check: net features "))
        .unwrap_or_else(|| panic!("no features line in:\n{all}"));
    for (bit, name) in [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (7, "GUEST_TSO4"),
        (11, "HOST_TSO4"),
    ] {
        assert_eq!(
            features.as_bytes().get(bit),
            Some(&b'1'),
            "{name} (bit {bit}) not negotiated: {features}"
        );
    }
    // Every virtio device took interrupts.
    let irqs: Vec<&str> = all
        .lines()
        .filter_map(|l| l.strip_prefix("nested-check: irq "))
        .collect();
    assert!(irqs.len() >= 2, "{all}");
    for l in &irqs {
        let count: u64 = l
            .split_whitespace()
            .skip(1)
            .map_while(|w| w.parse::<u64>().ok())
            .sum();
        assert!(count > 0, "no interrupts on {l}");
    }
    let dir = run_dir(&out);
    if vhost {
        assert!(
            all.contains("host coverage: ") && all.contains("and the run store (source=host)"),
            "{all}"
        );
        let report = xtask(&["report", dir.to_str().unwrap()]).unwrap();
        let r = text(&report);
        assert_eq!(report.status.code(), Some(0), "{r}");
        let host = r
            .split_once("coverage: host coverage vhost-net (source=host)")
            .unwrap_or_else(|| panic!("no host section in:\n{r}"))
            .1;
        assert!(host.contains("drivers/vhost/net.c"), "{host}");
        // L1's vhost worker ran these while L2 moved traffic (function lines: name hit/all).
        for f in ["handle_tx", "handle_rx"] {
            let hit = host
                .lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some(f)).then(|| w.next()).flatten()
                })
                .and_then(|hits| hits.split_once('/')?.0.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{f} not in the host report:\n{host}"));
            assert!(hit > 0, "{f} has no line hit in L1's kernel:\n{host}");
        }
    }
    tests::assert_no_qemu_left(&dir);
}

#[test]
fn nested_linux_virtio_net_and_vsock_on_our_devices_userspace_backend() {
    nested_net(false);
}

#[test]
fn nested_linux_virtio_net_on_l1_vhost_net_with_host_kcov() {
    nested_net(true);
}
