//! The VMM's host vhost-net backend and `--host-kcov`, proven where a kernel has vhost-net and
//! kcov: inside the testbed guest under the qemu runner (our CI hosts have neither).
//!
//! `vhost_net_selftest` (a `vmm` example, built static) runs as the agent's `cmd`: it
//! activates the VMM's `NetDevice::vhost` over its own memory with the guest agent's ring
//! driver, with `VHOST_SET_OWNER` on the VMM's `HostKcov` owner thread; frames must cross
//! byte-exact both ways, and the PCs host kcov collected (printed as `@@HOSTPC@@` lines)
//! must be vhost-net's TX and RX paths in the guest kernel's DWARF.

use tests::{functions, stream_path, text, vhost_source_pcs, vmlinux, xtask};

#[test]
fn vmm_vhost_backend_and_host_kcov_run_in_the_guest() {
    let Some(selftest) = tests::artifact("TESTBED_VHOST_SELFTEST") else {
        return;
    };
    let Some(vmlinux) = vmlinux() else { return };
    let include = format!("{}:/bin/vhost_net_selftest", selftest.display());
    let Some(out) = xtask(&[
        "boot",
        "--runner",
        "qemu",
        "--no-echo",
        "--include",
        &include,
        "--workload",
        "cmd",
        "--",
        "/bin/vhost_net_selftest",
        "48",
        "1000",
    ]) else {
        return;
    };
    let all = text(&out);
    let log = std::fs::read_to_string(stream_path(&out).with_file_name("serial.log")).unwrap();
    assert_eq!(out.status.code(), Some(0), "{all}\n--- serial ---\n{log}");
    let summary = log
        .lines()
        .find(|l| l.contains("vhost-selftest: "))
        .unwrap_or_else(|| panic!("no self-test summary:\n{log}"));
    assert!(
        summary.contains("48 TX and 48 RX frames of 1000 bytes byte-exact"),
        "{summary}"
    );
    let mut pcs = Vec::new();
    for l in log.lines() {
        if let Some(rest) = l.split("@@HOSTPC@@ ").nth(1) {
            for w in rest.split_whitespace() {
                let pc = u64::from_str_radix(w.trim_start_matches("0x"), 16)
                    .unwrap_or_else(|e| panic!("bad PC {w:?} in {l:?}: {e}"));
                pcs.push(pc);
            }
        }
    }
    assert!(pcs.len() > 50, "{} host-kcov PCs:\n{summary}", pcs.len());
    let funcs = functions(&vmlinux, &pcs);
    for want in ["handle_tx", "handle_rx"] {
        assert!(
            funcs.iter().any(|f| f.starts_with(want)),
            "{want} missing from the vhost worker's coverage: {funcs:?}"
        );
    }
    let in_vhost = vhost_source_pcs(&vmlinux, &pcs);
    assert!(
        in_vhost * 4 >= pcs.len(),
        "only {in_vhost} of {} PCs are in drivers/vhost/",
        pcs.len()
    );
    eprintln!(
        "{summary}\n{} distinct host-kcov PCs, {in_vhost} in drivers/vhost/, {} functions",
        pcs.len(),
        funcs.len()
    );
}
