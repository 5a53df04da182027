//! Boots the guest kernel + initramfs under the qemu runner through the
//! `cargo xtask` binary and checks the agent's report and exit statuses.

use tests::{text, xtask};

const BOOT: &[&str] = &["boot", "--runner", "qemu"];

fn boot(extra: &[&str]) -> Option<std::process::Output> {
    let args: Vec<&str> = BOOT.iter().chain(extra).copied().collect();
    xtask(&args)
}

#[test]
fn agent_reports_kcov_and_vhost_and_succeeds() {
    let Some(out) = boot(&[]) else { return };
    let all = tests::assert_exit_with(
        &out,
        0,
        &[
            "testbed-agent: kcov /sys/kernel/debug/kcov: present",
            "testbed-agent: vhost-net /dev/vhost-net: present",
            "testbed-agent: vhost-vsock /dev/vhost-vsock: present",
            "@@TESTBED-EXIT@@ 0",
        ],
    );
    let release = all
        .lines()
        .find_map(|l| l.strip_prefix("@@TESTBED-READY@@ "))
        .unwrap_or_else(|| panic!("no ready marker in:\n{all}"));
    assert!(release.starts_with("6.12"), "kernel release {release}");
    assert!(all.contains("runner: qemu"), "{all}");
}

#[test]
fn failing_guest_command_gives_its_status() {
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = tests::exit_program(dir.path(), 3);
    let include = format!("{}:/bin/exit3", bin.display());
    let out = boot(&["--include", &include, "--", "/bin/exit3"]).unwrap();
    tests::assert_exit_with(&out, 3, &["testbed-agent: command exited with status 3"]);
}

#[test]
fn missing_guest_command_fails() {
    let Some(out) = boot(&["--", "/no/such/command"]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(127), "{all}");
    assert!(all.contains("command not found: /no/such/command"), "{all}");
}

#[test]
fn kernel_panic_is_a_failure() {
    // No init to run: the kernel panics ("No working init found").
    let Some(out) = boot(&["--append", "rdinit=/none", "--append", "init=/none"]) else {
        return;
    };
    tests::assert_exit_with(&out, 70, &["guest kernel panicked"]);
}

/// Killing `xtask boot` (SIGKILL or SIGTERM to it alone, as a CI runner's timeout does) takes
/// QEMU with it, and run.json, written before the VM started, names the kernel.
#[test]
fn killing_xtask_takes_qemu_with_it() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let Some(bin) = tests::artifact("TESTBED_XTASK_BIN") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let spin = tests::spin_program(tmp.path());
    let include = format!("{}:/bin/spin", spin.display());
    for sig in [libc::SIGKILL, libc::SIGTERM] {
        let mut child = Command::new(&bin)
            .args([
                "boot",
                "--runner",
                "qemu",
                "--include",
                &include,
                "--",
                "/bin/spin",
            ])
            .current_dir(xtask::paths::workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let dir = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| {
                    l.split_once("run directory ")
                        .map(|(_, d)| d.trim().to_string())
                })
        });
        let ready = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("testbed-agent: running /bin/spin"));
        assert!(ready, "the guest never ran the command");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let _ = child.wait();
        let dir = std::path::PathBuf::from(dir.join().unwrap().expect("no run directory line"));
        tests::assert_no_qemu_left(&dir);
        let run: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
        assert!(
            run["kernel_key"].as_str().is_some_and(|k| !k.is_empty()),
            "{run}"
        );
        assert_eq!(run["exit_code"], serde_json::Value::Null, "{run}");
    }
}
