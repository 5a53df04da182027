//! Bad input gives one clear error each, never a panic. These fail before KVM is
//! touched, so they run everywhere.

mod common;

use std::process::Command;

use common::guest;
use vmm::guests::{BOOT_CONTRACT, HELLO};
use vmm::kernel::KernelError;
use vmm::{run, Error, VmConfig};

fn cfg(kernel: std::path::PathBuf) -> VmConfig {
    VmConfig {
        kernel,
        mem_mib: 64,
        serial_stdout: false,
        skip_host_check: true,
        ..Default::default()
    }
}

fn one_line(e: &Error) -> String {
    let m = e.to_string();
    assert!(!m.contains('\n'), "{m}");
    m
}

#[test]
fn truncated_kernel() {
    let d = tempfile::tempdir().unwrap();
    for cut in [100, 4097] {
        let k = guest(&d, &format!("cut{cut}"), &HELLO[..cut]);
        let e = run(&cfg(k)).unwrap_err();
        assert!(
            matches!(e, Error::Kernel(KernelError::Truncated { .. })),
            "{cut}: {e}"
        );
        assert!(one_line(&e).contains("truncated"));
    }
}

#[test]
fn not_a_kernel() {
    let d = tempfile::tempdir().unwrap();
    let k = guest(&d, "script", b"#!/bin/sh\necho hello\n");
    let e = run(&cfg(k)).unwrap_err();
    assert!(
        matches!(e, Error::Kernel(KernelError::NotAKernel { .. })),
        "{e}"
    );
    assert!(one_line(&e).contains("not a bootable x86-64 Linux kernel"));
    let e = run(&cfg(d.path().join("missing"))).unwrap_err();
    assert!(matches!(e, Error::Kernel(KernelError::Io { .. })), "{e}");
    one_line(&e);
}

#[test]
fn memory_too_small_for_kernel_or_initrd() {
    let d = tempfile::tempdir().unwrap();
    let k = guest(&d, "hello", HELLO);
    let mut c = cfg(k);
    c.mem_mib = 2;
    let e = run(&c).unwrap_err();
    // The kernel does not fit: the kernel loader's error.
    assert!(
        matches!(
            e,
            Error::Kernel(KernelError::MemTooSmall { need_mib: 3, .. })
        ),
        "{e}"
    );
    assert!(one_line(&e).contains("--mem 2 MiB is too small"));

    let initrd = d.path().join("initrd");
    std::fs::write(&initrd, vec![0u8; 7 << 20]).unwrap();
    let mut c = cfg(guest(&d, "bc", BOOT_CONTRACT));
    c.mem_mib = 8;
    c.initrd = Some(initrd);
    let e = run(&c).unwrap_err();
    assert!(matches!(e, Error::MemTooSmall { .. }), "{e}");
    assert!(one_line(&e).contains("initrd"));

    c.mem_mib = 0;
    assert!(matches!(run(&c).unwrap_err(), Error::MemTooSmall { .. }));
    c.mem_mib = u64::MAX;
    assert!(matches!(run(&c).unwrap_err(), Error::MemTooLarge { .. }));
}

#[test]
fn vcpu_count_out_of_range() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(guest(&d, "hello", HELLO));
    c.vcpus = 0;
    let e = run(&c).unwrap_err();
    assert!(matches!(e, Error::NoVcpus));
    one_line(&e);
    c.vcpus = 255;
    let e = run(&c).unwrap_err();
    assert!(
        matches!(e, Error::TooManyVcpus { requested: 255, .. }),
        "{e}"
    );
    assert!(one_line(&e).contains("--vcpus 255 is above the maximum"));
}

#[test]
fn bad_cmdline_and_initrd() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(guest(&d, "hello", HELLO));
    c.cmdline = "x".repeat(5000);
    let e = run(&c).unwrap_err();
    assert!(matches!(e, Error::Cmdline(_)), "{e}");
    one_line(&e);
    c.cmdline = String::new();
    c.initrd = Some(d.path().join("no-initrd"));
    let e = run(&c).unwrap_err();
    assert!(matches!(e, Error::InitrdIo { .. }), "{e}");
    one_line(&e);
}

/// The binary: exit status 1 and one line on stderr per bad input, no panic.
#[test]
fn binary_reports_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let k = guest(&d, "hello", HELLO);
    let junk = guest(&d, "junk", b"junk");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--vcpus".into(),
                "0".into(),
                "--no-host-check".into(),
            ],
            "--vcpus 0",
        ),
        (
            vec![
                "--kernel".into(),
                junk.display().to_string(),
                "--no-host-check".into(),
            ],
            "not a bootable",
        ),
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--mem".into(),
                "2".into(),
                "--no-host-check".into(),
            ],
            "too small",
        ),
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--timeout=-1".into(),
            ],
            "--timeout",
        ),
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--vcpus".into(),
                "300".into(),
            ],
            "--vcpus 300 is above",
        ),
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--mem".into(),
                "lots".into(),
            ],
            "invalid value",
        ),
        (vec!["--mem".into(), "64".into()], "--kernel"),
        // With the host check on: a file that is no kernel is said to be one first (not what
        // its version string lacks), a missing one is named once.
        (
            vec!["--kernel".into(), junk.display().to_string()],
            "is not a bootable x86-64 Linux kernel",
        ),
        (
            vec!["--kernel".into(), "/bin/ls".into()],
            "/bin/ls is not a bootable x86-64 Linux kernel",
        ),
        (
            vec!["--kernel".into(), "/no/such/kernel".into()],
            "cannot read kernel /no/such/kernel: No such file",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"));
        // Each cause once ("cannot read kernel X: cannot read kernel X: ..." was seen).
        assert!(err.matches("/no/such/kernel").count() <= 1, "{err}");
    }
    if common::is_pvm() {
        // PVM host, test guest is not a PVM-aware Linux: refused at once.
        let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .arg("--kernel")
            .arg(&k)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("PVM") && err.contains("--runner qemu"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--help")
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&help.stdout);
    for want in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--mem",
        "--vcpus",
        "--serial-log",
        "--timeout",
        "Exit status",
        "--runner qemu",
    ] {
        assert!(h.contains(want), "--help lacks {want}");
    }
}
