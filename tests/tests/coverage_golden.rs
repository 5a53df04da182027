//! Reproducible coverage tests.
//!
//! `coverage_golden_machinery`: the golden runner on synthetic runs (real vmlinux, PCs of real
//! call sites): `--update` writes the stable items, a check passes with flaky items reported,
//! fails with a readable diff when a golden line is missing, skips when the agent does not know
//! the workload, and compares only functions with a golden of another kernel.
//!
//! `coverage_golden_<workload>`: the real workloads, K=3 boots each through the xtask boot
//! library, checked against `goldens/<workload>.txt`; they skip with the printed reason while
//! the guest agent does not run the workload.

mod coverage_support;

use std::cell::Cell;
use std::collections::BTreeSet;

use coverage::golden::{Golden, Item};
use coverage_support::*;
use xtask::golden::{golden_workload, GoldenOpts, GoldenOutcome};

#[test]
fn coverage_golden_machinery() {
    let Some(t) = table() else { return };
    let vm = vmlinux().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let init = sites_of(t, "vhost_dev_init");
    let open = sites_of(t, "vhost_vsock_dev_open");
    let cleanup = sites_of(t, "vhost_dev_cleanup");
    // Runs 1..3 all cover vhost_dev_init and vhost_vsock_dev_open; run 2 also covers
    // vhost_dev_cleanup (flaky).
    let run_sites = |k: usize| -> Vec<usize> {
        let mut s = init.clone();
        s.extend(&open);
        if k == 1 {
            s.extend(&cleanup);
        }
        s
    };
    let counter = Cell::new(0usize);
    let boot_with = |sites_for: &dyn Fn(usize) -> Vec<usize>, errors: &[&str], known: bool| {
        let k = counter.get();
        counter.set(k + 1);
        let dir = tmp.path().join(format!("run{k}"));
        let workloads = if known {
            vec![Workload {
                name: "synthetic-wl",
                pcs: pcs_of(t, &sites_for(k % 3)),
                status: 0,
            }]
        } else {
            vec![]
        };
        write_run(&dir, &stream(&workloads, errors, true));
        dir
    };
    let goldens = tmp.path().join("goldens");
    let opts = |update: bool| GoldenOpts {
        runs: 3,
        update,
        dir: goldens.clone(),
        vmlinux: Some(vm.clone()),
        ..GoldenOpts::default()
    };

    // No golden yet: a failure that says how to create it.
    let out = golden_workload("synthetic-wl", &opts(false), &mut |_| {
        Ok(boot_with(&run_sites, &[], true))
    })
    .unwrap();
    match out {
        GoldenOutcome::Failed(t) => assert!(t.contains("cargo xtask golden --update"), "{t}"),
        o => panic!("{o:?}"),
    }

    // --update: the golden holds exactly the stable items.
    let out = golden_workload("synthetic-wl", &opts(true), &mut |_| {
        Ok(boot_with(&run_sites, &[], true))
    })
    .unwrap();
    assert!(matches!(out, GoldenOutcome::Updated(..)), "{out:?}");
    let path = goldens.join("synthetic-wl.txt");
    let golden = Golden::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let stable = expected_items(t, &run_sites(0), "drivers/vhost/*");
    let flaky: BTreeSet<Item> = expected_items(t, &run_sites(1), "drivers/vhost/*")
        .difference(&stable)
        .cloned()
        .collect();
    assert!(!flaky.is_empty());
    assert_eq!(golden.items, stable);
    assert_eq!(golden.build_id, build_id());
    assert!(golden.items.contains(&Item::Function {
        file: "drivers/vhost/vsock.c".into(),
        name: "vhost_vsock_dev_open".into()
    }));

    // Check: passes, flaky items reported.
    let out = golden_workload("synthetic-wl", &opts(false), &mut |_| {
        Ok(boot_with(&run_sites, &[], true))
    })
    .unwrap();
    match out {
        GoldenOutcome::Passed(text) => {
            eprintln!("{text}");
            for i in &flaky {
                assert!(
                    text.contains(&format!("~ {i}    (covered in 1 of 3 runs: flaky)")),
                    "{text}"
                );
            }
        }
        o => panic!("{o:?}"),
    }

    // vhost_vsock_dev_open no longer covered: fails with a readable diff of the missing lines.
    let only_init = |_k: usize| init.clone();
    let out = golden_workload("synthetic-wl", &opts(false), &mut |_| {
        Ok(boot_with(&only_init, &[], true))
    })
    .unwrap();
    let missing: BTreeSet<Item> = stable
        .difference(&expected_items(t, &init, "drivers/vhost/*"))
        .cloned()
        .collect();
    match out {
        GoldenOutcome::Failed(text) => {
            eprintln!("{text}");
            for i in &missing {
                assert!(
                    text.contains(&format!("- {i}    (golden; covered in 0 of 3 runs)")),
                    "{text}"
                );
            }
            assert!(text.contains(&format!("{} golden items missing", missing.len())));
        }
        o => panic!("{o:?}"),
    }

    // The agent does not know the workload: skip with its error message.
    let out = golden_workload("synthetic-wl", &opts(false), &mut |_| {
        Ok(boot_with(
            &run_sites,
            &["unknown workload \"synthetic-wl\""],
            false,
        ))
    })
    .unwrap();
    match out {
        GoldenOutcome::Skipped(r) => assert!(r.contains("unknown workload"), "{r}"),
        o => panic!("{o:?}"),
    }

    // A golden recorded on another kernel (other key and build-id): functions only.
    let mut other = golden.clone();
    other.build_id = Some("11".repeat(20));
    other.kernel_key = Some("22".repeat(12));
    std::fs::write(&path, other.render()).unwrap();
    let out = golden_workload("synthetic-wl", &opts(false), &mut |_| {
        Ok(boot_with(&run_sites, &[], true))
    })
    .unwrap();
    match out {
        GoldenOutcome::Passed(r) => {
            assert!(r.contains("recorded on kernel key"), "{r}");
            assert!(r.contains("compared functions only"), "{r}");
        }
        o => panic!("{o:?}"),
    }
    // ... and a function the runs no longer cover still fails there.
    let mut gone = other.clone();
    gone.items.insert(coverage::golden::Item::Function {
        file: "drivers/vhost/net.c".into(),
        name: "no_such_function".into(),
    });
    std::fs::write(&path, gone.render()).unwrap();
    let out = golden_workload("synthetic-wl", &opts(false), &mut |_| {
        Ok(boot_with(&run_sites, &[], true))
    })
    .unwrap();
    match out {
        GoldenOutcome::Failed(r) => assert!(r.contains("no_such_function"), "{r}"),
        o => panic!("{o:?}"),
    }
}

fn real_golden(workload: &str) {
    if tests::artifact("TESTBED_BZIMAGE").is_none() || tests::artifact("TESTBED_AGENT").is_none() {
        return;
    }
    let out = golden_workload(workload, &GoldenOpts::default(), &mut |w| {
        xtask::golden::boot_workload(w)
    })
    .unwrap_or_else(|e| panic!("golden {workload}: {e:#}"));
    match out {
        // The agent runs every shipped workload: a golden it cannot run is a failure under
        // `cargo xtask test` (ARTIFACTS is always there).
        GoldenOutcome::Skipped(reason) => test_skip::skip(
            &tests::current_test(),
            test_skip::ARTIFACTS,
            format!("golden {workload}: {reason}"),
        ),
        GoldenOutcome::Passed(text) => eprintln!("{text}"),
        GoldenOutcome::Failed(text) => panic!("golden {workload} failed:\n{text}"),
        GoldenOutcome::Updated(..) => unreachable!("not updating"),
    }
}

#[test]
fn coverage_golden_vhost_net_tx() {
    real_golden("vhost-net-tx");
}

#[test]
fn coverage_golden_vhost_net_rx() {
    real_golden("vhost-net-rx");
}

#[test]
fn coverage_golden_vhost_vsock() {
    real_golden("vhost-vsock");
}

#[test]
fn coverage_golden_vhost_net_matrix() {
    real_golden("vhost-net-matrix");
}

#[test]
fn coverage_golden_vhost_net_errors() {
    real_golden("vhost-net-errors");
}

#[test]
fn coverage_golden_vhost_net_control() {
    real_golden("vhost-net-control");
}

#[test]
fn coverage_golden_vhost_vsock_control() {
    real_golden("vhost-vsock-control");
}

#[test]
fn coverage_golden_vhost_net_zcopy() {
    real_golden("vhost-net-zcopy");
}

#[test]
fn coverage_golden_vhost_scsi_workers() {
    real_golden("vhost-scsi-workers");
}

#[test]
fn coverage_golden_vhost_scsi_control() {
    real_golden("vhost-scsi-control");
}

#[test]
fn coverage_golden_vhost_vsock_credit() {
    real_golden("vhost-vsock-credit");
}

#[test]
fn coverage_golden_vhost_vsock_conns() {
    real_golden("vhost-vsock-conns");
}

#[test]
fn coverage_golden_vhost_net_gaps() {
    real_golden("vhost-net-gaps");
}
