//! End-to-end: the guest agent runs vhost workloads under kcov remote coverage (common
//! handle) inside the guest and ships the coverage to the host as a kcov-wire stream
//! (`<run>/coverage.kcw`). Checks the stream with kcov-wire and the PCs against the guest
//! kernel's symbols with the `coverage` crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use kcov_wire::{CoverageSource, Decoder, Frame};
use tests::{functions, stream_path, text, vhost_source_pcs, vmlinux, xtask};

fn boot(args: &[&str]) -> Option<Output> {
    let mut all = vec!["boot", "--runner", "qemu", "--no-echo"];
    all.extend_from_slice(args);
    xtask(&all)
}

#[derive(Default, Debug)]
struct Workload {
    remote: Vec<u64>,
    /// PCs of the driver thread's own syscalls (`testbed.local`).
    local: Vec<u64>,
    overflow: bool,
    chunks: usize,
    local_chunks: usize,
    status: Option<i32>,
    error: Option<String>,
    counters: BTreeMap<String, u64>,
}

#[derive(Default, Debug)]
struct Stream {
    handle: Option<u64>,
    workloads: BTreeMap<String, Workload>,
    errors: Vec<String>,
    done: Option<i32>,
}

fn read_stream(path: &Path) -> Stream {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut dec = Decoder::new();
    dec.feed(&bytes);
    let mut s = Stream::default();
    let mut order = 0;
    while let Some(f) = dec.next_frame().expect("stream decodes") {
        order += 1;
        match f {
            Frame::Hello(h) => {
                assert_eq!(order, 1, "Hello comes first");
                s.handle = Some(h.common_handle);
            }
            Frame::WorkloadStart(w) => {
                s.workloads.insert(w.name, Workload::default());
            }
            Frame::CoverageChunk(c) => {
                let w = s.workloads.get_mut(&c.workload).expect("chunk after start");
                let (seen, pcs) = match c.source {
                    CoverageSource::Remote => (&mut w.chunks, &mut w.remote),
                    CoverageSource::Local => (&mut w.local_chunks, &mut w.local),
                    CoverageSource::Host => panic!("a guest never sends host coverage"),
                };
                assert_eq!(c.seq as usize, *seen, "chunks of one source in sequence");
                *seen += 1;
                w.overflow |= c.overflow;
                let step = c.mode.words_per_entry();
                pcs.extend(c.words.iter().skip(step - 1).step_by(step));
            }
            Frame::WorkloadResult(r) => {
                let w = s.workloads.get_mut(&r.name).expect("result after start");
                w.status = Some(r.status);
                w.error = r.error;
                w.counters = r.counters.into_iter().collect();
            }
            Frame::Error(e) => s.errors.push(e.message),
            Frame::Done(d) => s.done = Some(d.status),
            Frame::FuzzInput(_) | Frame::FuzzStatus(_) => panic!("fuzz frames outside a campaign"),
        }
    }
    dec.finish().expect("stream ends at a frame boundary");
    s
}

#[test]
fn agent_vhost_workloads_ship_remote_coverage() {
    let Some(vmlinux) = vmlinux() else { return };
    let Some(out) = boot(&[
        "--workload",
        "vhost-net-tx",
        "--workload",
        "vhost-net-rx",
        "--workload",
        "vhost-vsock",
        "--param",
        "frames=40",
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for l in [
        "vhost-net-tx   ok;",
        "vhost-net-rx   ok;",
        "vhost-vsock    ok;",
        "done, agent status 0",
    ] {
        assert!(all.contains(l), "summary line {l:?} missing:\n{all}");
    }
    assert!(!all.contains("@@KCOV@@"), "stream lines must not be echoed");
    let s = read_stream(&stream_path(&out));
    assert_eq!(s.done, Some(0));
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let handle = s.handle.expect("Hello");
    assert!(
        handle != 0 && handle >> 32 == 0,
        "common handle {handle:#x}"
    );

    // Data integrity: every frame / message was checked byte-exact by the agent.
    let tx = &s.workloads["vhost-net-tx"];
    let rx = &s.workloads["vhost-net-rx"];
    let vs = &s.workloads["vhost-vsock"];
    for (name, w, counter) in [
        ("tx", tx, "frames_tx"),
        ("rx", rx, "frames_rx"),
        ("vsock", vs, "messages_rx"),
    ] {
        assert_eq!(w.status, Some(0), "{name}: {:?}", w.error);
        assert_eq!(
            w.counters.get(counter),
            Some(&40),
            "{name}: {:?}",
            w.counters
        );
        assert_eq!(w.counters.get("iterations"), Some(&40), "{name}");
        assert!(!w.overflow, "{name} overflowed");
        assert_eq!(w.counters.get("remote_pcs"), Some(&(w.remote.len() as u64)));
        assert_eq!(w.counters.get("local_pcs"), Some(&(w.local.len() as u64)));
        // The driver thread's own syscalls: the vhost ioctls it made, traced locally.
        let funcs = functions(&vmlinux, &w.local);
        for f in [
            "vhost_dev_set_owner",
            "vhost_vring_ioctl",
            "vhost_dev_ioctl",
        ] {
            assert!(funcs.iter().any(|g| g == f), "{name}: no local PC in {f}");
        }
    }
    assert_eq!(tx.counters["frames_verified"], 40);
    assert_eq!(rx.counters["frames_verified"], 40);
    assert_eq!(vs.counters["messages_tx"], 40);
    assert_eq!(vs.counters["bytes"], 40 * 2 * 256);

    // Coverage: the vhost worker ran each workload's handlers under our handle.
    let expect: [(&str, &Workload, &[&str]); 3] = [
        (
            "vhost-net-tx",
            tx,
            &["handle_tx_kick", "handle_tx_copy", "vhost_get_vq_desc"],
        ),
        ("vhost-net-rx", rx, &["handle_rx", "vhost_get_vq_desc"]),
        (
            "vhost-vsock",
            vs,
            &[
                "vhost_transport_send_pkt_work",
                "vhost_transport_do_send_pkt",
                "vhost_vsock_handle_tx_kick",
            ],
        ),
    ];
    for (name, w, needed) in expect {
        assert!(
            w.remote.len() > 100,
            "{name}: only {} remote PCs",
            w.remote.len()
        );
        let funcs = functions(&vmlinux, &w.remote);
        for f in needed {
            // Compilers may rename static functions (handle_rx.isra.0, ...).
            assert!(
                funcs
                    .iter()
                    .any(|g| g == f || g.starts_with(&format!("{f}."))),
                "{name}: no PC in {f}; functions hit: {funcs:?}"
            );
        }
        let in_vhost = vhost_source_pcs(&vmlinux, &w.remote);
        assert!(
            in_vhost > 20,
            "{name}: only {in_vhost} unique PCs in drivers/vhost"
        );
        eprintln!(
            "{name}: {} remote PCs, {} functions, {in_vhost} unique PCs in drivers/vhost",
            w.remote.len(),
            funcs.len()
        );
        // Report (not assert) how far the coverage reaches beyond vhost: tun, the network
        // stack run from the worker (BH disabled, still task context), softirq handlers.
        let probes = [
            "tun_sendmsg",
            "tun_get_user",
            "tun_recvmsg",
            "tun_net_xmit",
            "netif_receive_skb",
            "__netif_receive_skb_core",
            "packet_rcv",
            "net_rx_action",
            "process_backlog",
            "virtio_transport_recv_pkt",
            "virtio_transport_deliver_tap_pkt",
        ];
        let present: Vec<&str> = probes
            .iter()
            .copied()
            .filter(|p| {
                funcs
                    .iter()
                    .any(|g| g == p || g.starts_with(&format!("{p}.")))
            })
            .collect();
        eprintln!("{name}: beyond vhost: {present:?}");
    }
}

#[test]
fn agent_cover_off_is_a_negative_control() {
    let Some(out) = boot(&[
        "--workload",
        "vhost-net-tx",
        "--cover",
        "off",
        "--param",
        "frames=10",
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let s = read_stream(&stream_path(&out));
    assert_eq!(s.handle, Some(0), "no common handle without coverage");
    let w = &s.workloads["vhost-net-tx"];
    assert_eq!(
        w.status,
        Some(0),
        "the workload itself still runs: {:?}",
        w.error
    );
    assert_eq!(w.counters["frames_verified"], 10);
    assert_eq!((w.chunks, w.local_chunks), (0, 0));
    assert!(
        w.remote.is_empty() && w.local.is_empty(),
        "{} PCs without a remote enable",
        w.remote.len()
    );
    assert!(all.contains("coverage off"), "{all}");
}

#[test]
fn agent_tiny_area_reports_overflow() {
    // One page (512 words): the smallest area kcov can mmap.
    let Some(out) = boot(&[
        "--workload",
        "vhost-net-tx",
        "--area",
        "512",
        "--param",
        "frames=4",
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let s = read_stream(&stream_path(&out));
    let w = &s.workloads["vhost-net-tx"];
    assert!(
        w.overflow,
        "a 512-word area must overflow: {} PCs",
        w.remote.len()
    );
    assert_eq!(w.remote.len(), 511, "the area holds 511 PCs");
    assert_eq!(w.counters["overflow"], 1);
    assert!(all.contains("OVERFLOW"), "{all}");
}

// A bad plan (unknown workload, malformed value) is refused by xtask before anything is
// built, with the agent's own parser: tests/tests/bad_input.rs. The agent keeps its refusal
// (Error frame, Done 2) for a plan that reaches it anyway; plan.rs unit-tests the parser.

/// A static C program that is its own vhost-net owner: everything it opens reports under
/// the handle the agent enabled before starting it.
fn vhost_owner_program(dir: &Path) -> PathBuf {
    tests::static_c(
        dir,
        "owner",
        r#"#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/vhost.h>
int main(void) {
    int fd = open("/dev/vhost-net", O_RDWR);
    if (fd < 0) { perror("open"); return 10; }
    if (ioctl(fd, VHOST_SET_OWNER, 0) < 0) { perror("VHOST_SET_OWNER"); return 11; }
    /* Release flushes the worker: a flush work item runs under the owner's handle. */
    if (close(fd) < 0) { perror("close"); return 12; }
    return 5;
}
"#,
    )
}

#[test]
fn agent_cmd_workload_runs_under_the_handle() {
    let Some(vmlinux) = vmlinux() else { return };
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = vhost_owner_program(dir.path());
    let include = format!("{}:/bin/owner", bin.display());
    let out = boot(&[
        "--include",
        &include,
        "--workload",
        "cmd",
        "--",
        "/bin/owner",
    ])
    .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(5), "the command's status: {all}");
    let s = read_stream(&stream_path(&out));
    let w = &s.workloads["cmd"];
    assert_eq!(w.status, Some(5));
    assert_eq!(w.counters["exit_code"], 5);
    let funcs = functions(&vmlinux, &w.remote);
    assert!(
        funcs.iter().any(|f| f.starts_with("vhost_flush_work")),
        "flush work of the command's device under the handle: {funcs:?}"
    );
}

#[test]
fn agent_vsock_transport_ships_the_same_stream() {
    let Some(out) = boot(&[
        "--workload",
        "vhost-net-tx",
        "--workload",
        "vhost-vsock",
        "--transport",
        "vsock",
        "--param",
        "frames=10",
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let serial = stream_path(&out).with_file_name("serial.log");
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(
        !log.contains("@@KCOV@@"),
        "vsock transport: no stream on the console"
    );
    let s = read_stream(&stream_path(&out));
    assert_eq!(s.done, Some(0));
    for name in ["vhost-net-tx", "vhost-vsock"] {
        let w = &s.workloads[name];
        assert_eq!(w.status, Some(0), "{name}: {:?}", w.error);
        assert!(w.remote.len() > 100, "{name}: {} PCs", w.remote.len());
    }
}

/// Finished workloads reach the host even when a later one hangs: the agent flushes at each
/// frame boundary (Hello, WorkloadStart, WorkloadResult), so a run stopped at --timeout
/// keeps workload 1's result and coverage, and shows which workload was running.
#[test]
fn a_hanging_workload_keeps_the_finished_ones() {
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spin = tests::spin_program(tmp.path());
    let include = format!("{}:/bin/spin", spin.display());
    let out = boot(&[
        "--timeout",
        "20",
        "--workload",
        "vhost-net-tx",
        "--workload",
        "cmd",
        "--include",
        &include,
        "--",
        "/bin/spin",
    ])
    .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(124), "{all}");
    let s = read_stream(&stream_path(&out));
    let tx = &s.workloads["vhost-net-tx"];
    assert_eq!(tx.status, Some(0), "{all}");
    assert!(!tx.remote.is_empty(), "{all}");
    let cmd = s
        .workloads
        .get("cmd")
        .expect("the hanging workload's start");
    assert_eq!(cmd.status, None);
    assert_eq!(s.done, None);
}

/// A static C program that makes the guest's vhost workers run under the handle it inherited
/// from the agent (each release of a vhost-net or vhost-vsock device it owns flushes the
/// device's worker: a work item between kcov_remote_start and kcov_remote_stop), says so on
/// the console, then hangs.
fn vhost_then_hang_program(dir: &Path) -> PathBuf {
    tests::static_c(
        dir,
        "vhost-hang",
        r#"#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/vhost.h>
static int own_and_release(const char *path, int vsock) {
    int fd = open(path, O_RDWR);
    if (fd < 0) { perror(path); return -1; }
    if (ioctl(fd, VHOST_SET_OWNER, 0) < 0) { perror("VHOST_SET_OWNER"); return -1; }
    if (vsock) {
        /* Not the guest's own CID (3): vhost refuses a CID the guest itself uses. */
        unsigned long long cid = 4242;
        if (ioctl(fd, VHOST_VSOCK_SET_GUEST_CID, &cid) < 0) {
            perror("VHOST_VSOCK_SET_GUEST_CID");
            return -1;
        }
    }
    return close(fd);
}
int main(void) {
    int rounds;
    for (rounds = 0; rounds < 8; rounds++) {
        if (own_and_release("/dev/vhost-net", 0) < 0) return 10;
        if (own_and_release("/dev/vhost-vsock", 1) < 0) return 11;
    }
    printf("vhost-hang: %d rounds done, hanging\n", rounds);
    fflush(stdout);
    for (;;) { __asm__ volatile(""); }
}
"#,
    )
}

/// A workload that hangs after making vhost work keeps that coverage: the agent ships the
/// running workload's new coverage every testbed.snapshot_ms, so the run stopped at --timeout
/// still has the command's remote PCs, and the host shows them as partial (no result).
#[test]
fn a_hung_command_keeps_its_vhost_coverage_up_to_the_last_snapshot() {
    let Some(vmlinux) = vmlinux() else { return };
    if tests::artifact("TESTBED_XTASK_BIN").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = vhost_then_hang_program(tmp.path());
    let include = format!("{}:/bin/vhost-hang", bin.display());
    let out = boot(&[
        "--timeout",
        "25",
        "--param",
        "snapshot_ms=200",
        "--include",
        &include,
        "--",
        "/bin/vhost-hang",
    ])
    .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(124), "{all}");
    let stream = stream_path(&out);
    let serial = std::fs::read_to_string(stream.with_file_name("serial.log")).unwrap();
    assert!(
        serial.contains("vhost-hang: 8 rounds done, hanging"),
        "the command did its vhost work before it hung:\n{serial}"
    );
    let s = read_stream(&stream);
    assert_eq!(s.done, None, "the run ended inside the command");
    let cmd = &s.workloads["cmd"];
    assert_eq!(cmd.status, None, "no result: it never ended");
    assert!(cmd.chunks >= 1, "snapshots of the running command: {all}");
    // What arrives is the vhost workers' remote coverage (the command's own ioctls run in
    // process context without a local enable, so they are not traced).
    let funcs = functions(&vmlinux, &cmd.remote);
    assert!(
        funcs.iter().any(|f| f.starts_with("vhost_flush_work")),
        "the workers' flush work under the inherited handle: {funcs:?}"
    );
    let n = cmd.remote.len();
    assert!(
        all.contains(&format!(
            "cmd            no result (the run ended while it ran): coverage up to its last \
             snapshot, {n} remote PCs"
        )),
        "{all}"
    );

    // The store and the report: partial, and the run failed.
    let run = stream.parent().unwrap();
    let json = tmp.path().join("r.json");
    let rep = xtask(&[
        "report",
        run.to_str().unwrap(),
        "--partial",
        "--json",
        json.to_str().unwrap(),
    ])
    .unwrap();
    let rep_text = text(&rep);
    assert!(rep.status.success(), "{rep_text}");
    assert!(rep_text.contains("RUN FAILED"), "{rep_text}");
    assert!(
        rep_text.contains(&format!(
            "workload cmd: no result (the run ended while it ran: a hang, a panic or a \
             timeout); coverage up to its last snapshot, {n} PCs"
        )),
        "{rep_text}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["workloads"][0]["name"], "cmd");
    assert_eq!(v["workloads"][0]["partial"], true, "{}", v["workloads"]);
    assert!(v["workloads"][0]["result"].is_null());
    // Without --partial the incomplete store is refused, as before.
    let plain = xtask(&["report", run.to_str().unwrap()]).unwrap();
    assert!(!plain.status.success(), "{}", text(&plain));
}

/// The drivers/vhost functions `workload` covered in `run` (`source`: all, remote, local),
/// through the real report pipeline (`cargo xtask report --json`, DWARF names, so inlined
/// functions count too).
fn covered_functions(run: &Path, workload: &str, source: &str) -> BTreeSet<String> {
    let json = run.join(format!("report-{workload}-{source}.json"));
    let out = xtask(&[
        "report",
        run.to_str().unwrap(),
        "--workload",
        workload,
        "--source",
        source,
        "--json",
        json.to_str().unwrap(),
    ])
    .expect("xtask report");
    assert!(out.status.success(), "report: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut set = BTreeSet::new();
    for f in v["files"].as_array().unwrap() {
        for func in f["functions"].as_array().unwrap() {
            if func["lines_hit"].as_u64().unwrap_or(0) > 0 {
                set.insert(func["name"].as_str().unwrap().to_string());
            }
        }
    }
    set
}

fn assert_covers(have: &BTreeSet<String>, what: &str, needed: &[&str]) {
    let missing: Vec<&&str> = needed.iter().filter(|f| !have.contains(**f)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {missing:?} not covered; covered: {have:?}"
    );
}

/// The breadth workloads in one boot: each checks its own outcome (exact errno, byte-exact
/// frames, the dirty log, IOTLB messages) and fails otherwise; here their status, what they
/// counted, and that each reached the functions it is there for.
#[test]
fn agent_breadth_workloads_check_their_outcomes() {
    let Some(out) = boot(&[
        "--workload",
        "vhost-net-matrix",
        "--workload",
        "vhost-net-errors",
        "--workload",
        "vhost-net-control",
        "--workload",
        "vhost-vsock-control",
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stream = stream_path(&out);
    let s = read_stream(&stream);
    assert_eq!(s.done, Some(0));
    let run = stream.parent().unwrap();

    let m = &s.workloads["vhost-net-matrix"];
    assert_eq!(m.status, Some(0), "{:?}", m.error);
    assert!(!m.overflow, "vhost-net-matrix overflowed");
    assert_eq!(m.counters["variants"], 10, "{:?}", m.counters);
    // 16 frames each way in 8 variants, TX only in sndbuf and big-tx.
    assert_eq!(m.counters["frames_verified"], 16 * (2 * 8 + 2));
    let remote = covered_functions(run, "vhost-net-matrix", "remote");
    assert_covers(
        &remote,
        "vhost-net-matrix (workers)",
        &[
            "get_indirect",
            "vhost_net_busy_poll",
            "tx_can_batch",
            "vhost_update_avail_event",
            "vhost_attach_cgroups_work",
        ],
    );
    let local = covered_functions(run, "vhost-net-matrix", "local");
    assert_covers(
        &local,
        "vhost-net-matrix (setup)",
        &["vhost_net_set_features", "vhost_kthread_worker_create"],
    );

    let c = &s.workloads["vhost-net-control"];
    assert_eq!(c.status, Some(0), "{:?}", c.error);
    assert!(!c.overflow, "vhost-net-control overflowed");
    // Both used rings and the 8 RX buffers' pages, exactly.
    assert_eq!(c.counters["log_pages"], 10, "{:?}", c.counters);
    // The used ring's at the failed attach, one or more while the frames move, one or more
    // after the invalidation.
    assert!(c.counters["iotlb_misses"] >= 3, "{:?}", c.counters);
    // Dirty log 8 + 8, live base 4 + 16 + 4 TX and 4 RX, IOTLB 5.
    assert_eq!(c.counters["frames_verified"], 49);
    let local = covered_functions(run, "vhost-net-control", "local");
    assert_covers(
        &local,
        "vhost-net-control (ioctls, device fd)",
        &[
            "vhost_net_reset_owner",
            "vhost_dev_reset_owner",
            "vhost_chr_read_iter",
            "vhost_chr_poll",
            "vhost_process_iotlb_msg",
            "vhost_iotlb_notify_vq",
            "vhost_init_device_iotlb",
            "vhost_log_access_ok",
        ],
    );
    let remote = covered_functions(run, "vhost-net-control", "remote");
    assert_covers(
        &remote,
        "vhost-net-control (workers)",
        &[
            "vhost_log_write",
            "log_write",
            "log_used",
            "log_write_hva",
            "vhost_iotlb_miss",
            "iotlb_access_ok",
            "vhost_vq_meta_update",
        ],
    );

    let v = &s.workloads["vhost-vsock-control"];
    assert_eq!(v.status, Some(0), "{:?}", v.error);
    assert!(!v.overflow, "vhost-vsock-control overflowed");
    assert_eq!(v.counters["ioctl_errors"], 11, "{:?}", v.counters);
    assert_eq!(v.counters["transport_cases"], 4, "{:?}", v.counters);
    assert_eq!(v.counters["ring_errors"], 5, "{:?}", v.counters);
    // 600 bytes socket to device, 300 back, each record checked whole.
    assert_eq!(v.counters["seqpacket_bytes"], 900);
    let local = covered_functions(run, "vhost-vsock-control", "local");
    assert_covers(
        &local,
        "vhost-vsock-control (ioctls, sockets, release)",
        &[
            "vhost_vsock_set_cid",
            "vhost_vsock_start",
            "vhost_vsock_stop",
            "vhost_transport_send_pkt",
            "vhost_transport_cancel_pkt",
            "vhost_transport_seqpacket_allow",
            "vhost_vsock_reset_orphans",
            "vhost_vsock_chr_write_iter",
        ],
    );
    let remote = covered_functions(run, "vhost-vsock-control", "remote");
    assert_covers(
        &remote,
        "vhost-vsock-control (workers)",
        &[
            "vhost_transport_do_send_pkt",
            "vhost_vsock_alloc_skb",
            "vhost_vsock_handle_tx_kick",
        ],
    );

    let e = &s.workloads["vhost-net-errors"];
    assert_eq!(e.status, Some(0), "{:?}", e.error);
    assert!(!e.overflow, "vhost-net-errors overflowed");
    // Every case of net_errors.rs, counted as it passed.
    assert_eq!(e.counters["ioctl_errors"], 36, "{:?}", e.counters);
    assert_eq!(e.counters["ring_errors"], 15, "{:?}", e.counters);
    let local = covered_functions(run, "vhost-net-errors", "local");
    assert_covers(
        &local,
        "vhost-net-errors (ioctls)",
        &[
            "vhost_dev_ioctl",
            "vhost_vring_ioctl",
            "vhost_vring_set_num",
            "vhost_vring_set_addr",
            "vhost_set_memory",
            "vhost_net_set_backend",
            "vhost_chr_write_iter",
            "vhost_process_iotlb_msg",
        ],
    );
    let remote = covered_functions(run, "vhost-net-errors", "remote");
    assert_covers(
        &remote,
        "vhost-net-errors (rings)",
        &[
            "vhost_get_vq_desc",
            "get_indirect",
            "get_tx_bufs",
            "get_rx_bufs",
            "vhost_discard_vq_desc",
            "vhost_net_build_xdp",
        ],
    );
}

/// `vhost-net-zcopy` boots alone: its kernel parameter (vhost_net.experimental_zcopytx=1)
/// would turn every TX workload of the boot to the zero-copy handler.
#[test]
fn agent_zcopy_workload_sends_by_zero_copy() {
    let Some(out) = boot(&["--workload", "vhost-net-zcopy"]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stream = stream_path(&out);
    let run = stream.parent().unwrap();
    let record = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(
        record.contains("vhost_net.experimental_zcopytx=1"),
        "the plan put the parameter on the command line: {record}"
    );
    let s = read_stream(&stream);
    let z = &s.workloads["vhost-net-zcopy"];
    assert_eq!(z.status, Some(0), "{:?}", z.error);
    assert!(!z.overflow);
    // 32 frames in each of the three runs, every one out of the tap byte-exact; on the raw
    // device 4 before the flush, 4 after it and 4 out of the replacing tap.
    assert_eq!(z.counters["frames_verified"], 96 + 12, "{:?}", z.counters);
    let remote = covered_functions(run, "vhost-net-zcopy", "remote");
    assert_covers(
        &remote,
        "vhost-net-zcopy (worker)",
        &[
            "handle_tx_zerocopy",
            "vhost_zerocopy_signal_used",
            "vhost_zerocopy_complete",
            "vhost_net_ubuf_put",
        ],
    );
    let local = covered_functions(run, "vhost-net-zcopy", "local");
    assert_covers(&local, "vhost-net-zcopy (setup)", &["vhost_net_ubuf_alloc"]);
}

/// `vhost-scsi-workers`: the worker ioctls on the guest's /dev/vhost-scsi, every errno and
/// every worker id checked in the guest, then SCSI commands on a new worker against a
/// configfs ramdisk target (data checked in the guest); here the counts of what it checked,
/// that the kick handlers ran on new workers under a handle of the workload's own (its kcov
/// proof), and that the worker ioctls' and the command path's functions were reached.
#[test]
fn agent_scsi_workers_workload_checks_every_worker_ioctl() {
    let Some(out) = boot(&["--workload", "vhost-scsi-workers"]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stream = stream_path(&out);
    let run = stream.parent().unwrap();
    let s = read_stream(&stream);
    let w = &s.workloads["vhost-scsi-workers"];
    assert_eq!(w.status, Some(0), "{:?}", w.error);
    assert!(!w.overflow, "vhost-scsi-workers overflowed");
    // vhost_scsi.max_io_vqs (128 by default) and the control and event queues.
    let q = w.counters["queues"];
    assert_eq!(q, 130, "{:?}", w.counters);
    // Every errno case of scsi_workers.rs, counted as it passed.
    assert_eq!(w.counters["ioctl_errors"], 37, "{:?}", w.counters);
    // WRITE(10), READ(10) of it, READ(10) of an unwritten block, a bad target.
    assert_eq!(w.counters["scsi_commands"], 4, "{:?}", w.counters);
    // Ids 1, 2, 3, 5, then 0 and 4 again (the unreported one is not counted).
    assert_eq!(w.counters["workers_created"], 6, "{:?}", w.counters);
    // All queues on the default worker, round robin, again after the frees, 48 rounds of
    // three kicked queues, the kthread owner's queue twice.
    assert_eq!(w.counters["attaches_checked"], 3 * q + 48 * 3 + 2);
    assert!(w.counters["kicks"] > 0, "{:?}", w.counters);
    // The proof: kick handlers' PCs in the area of the workload's own handle.
    assert!(w.counters["kick_pcs"] >= 2, "{:?}", w.counters);
    let local = covered_functions(run, "vhost-scsi-workers", "local");
    assert_covers(
        &local,
        "vhost-scsi-workers (ioctls)",
        &[
            "vhost_worker_ioctl",
            "vhost_new_worker",
            "vhost_free_worker",
            "vhost_vq_attach_worker",
            "__vhost_vq_attach_worker",
            "vhost_worker_create",
            "vhost_task_worker_create",
            "vhost_worker_destroy",
            "vhost_scsi_ioctl",
            "vhost_scsi_set_endpoint",
            "vhost_scsi_clear_endpoint",
            "vhost_scsi_make_tport",
            "vhost_scsi_make_tpg",
            "vhost_scsi_port_link",
            "vhost_scsi_make_nexus",
            "vhost_scsi_drop_nexus",
            "vhost_scsi_setup_vq_cmds",
        ],
    );
    let remote = covered_functions(run, "vhost-scsi-workers", "remote");
    assert_covers(
        &remote,
        "vhost-scsi-workers (workers)",
        &[
            "vhost_scsi_handle_kick",
            "vhost_scsi_ctl_handle_kick",
            "vhost_scsi_evt_handle_kick",
            "vhost_flush_work",
            // The commands, on a new worker (the default one freed).
            "vhost_scsi_handle_vq",
            "vhost_scsi_get_req",
            "vhost_scsi_mapal",
            "vhost_scsi_complete_cmd_work",
            "vhost_scsi_send_bad_target",
        ],
    );
}

/// `vhost-scsi-control`: the control queue (TMF, AN), hotplug events, malformed I/O requests
/// and T10 PI on the guest's /dev/vhost-scsi against a configfs ramdisk target, every
/// response, event and `vq_err` checked in the guest; here the counts of what it checked and
/// that the paths no other workload takes were reached: the control and event work on the
/// vhost worker (remote), the hotplug and `fabric_prot_type` side in the agent's configfs
/// calls (local).
#[test]
fn agent_scsi_control_workload_checks_every_answer() {
    let Some(out) = boot(&["--workload", "vhost-scsi-control"]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stream = stream_path(&out);
    let run = stream.parent().unwrap();
    let s = read_stream(&stream);
    let w = &s.workloads["vhost-scsi-control"];
    assert_eq!(w.status, Some(0), "{:?}", w.error);
    assert!(!w.overflow, "vhost-scsi-control overflowed");
    let c = &w.counters;
    // ABORT_TASK, LUN reset of LUN 0 and of LUN 5; target 7, LUN byte 0, 8-byte request.
    assert_eq!(c["tmf"], 6, "{c:?}");
    // AN_QUERY, AN_SUBSCRIBE, AN with a bad LUN.
    assert_eq!(c["an"], 3, "{c:?}");
    // Unknown type, 2-byte type, no TMF response buffer, short AN response buffer.
    assert_eq!(c["ctl_dropped"], 4, "{c:?}");
    // Link, two NO_EVENT|EVENTS_MISSED kicks, link again, link after a lost event, unlink.
    assert_eq!(c["events"], 6, "{c:?}");
    // Five malformed headers, the stopped queue twice, three PI refusals.
    assert_eq!(c["io_rejected"], 10, "{c:?}");
    // No response buffer, a short one, data over VHOST_SCSI_PREALLOC_SGLS pages.
    assert_eq!(c["io_dropped"], 3, "{c:?}");
    assert_eq!(c["scsi_commands"], 17, "{c:?}");
    assert_eq!(c["pi"], 7, "{c:?}");
    assert_eq!(c["prot_type_values"], 5, "{c:?}");
    // Every vq_err of the paths taken, read back from the queues' error eventfds.
    assert_eq!(c["vq_errs"], 20, "{c:?}");
    let remote = covered_functions(run, "vhost-scsi-control", "remote");
    assert_covers(
        &remote,
        "vhost-scsi-control (worker)",
        &[
            "vhost_scsi_ctl_handle_vq",
            "vhost_scsi_handle_tmf",
            "vhost_scsi_tmf_resp_work",
            "vhost_scsi_send_tmf_resp",
            "vhost_scsi_send_an_resp",
            "vhost_scsi_evt_handle_kick",
            "vhost_scsi_evt_work",
            "vhost_scsi_complete_events",
            "vhost_scsi_do_evt_work",
            "vhost_scsi_free_evt",
            "vhost_scsi_chk_size",
            "vhost_scsi_get_req",
            "vhost_scsi_calc_sgls",
            "vhost_scsi_send_bad_target",
        ],
    );
    let local = covered_functions(run, "vhost-scsi-control", "local");
    assert_covers(
        &local,
        "vhost-scsi-control (configfs)",
        &[
            "vhost_scsi_port_link",
            "vhost_scsi_port_unlink",
            "vhost_scsi_do_plug",
            "vhost_scsi_send_evt",
            "vhost_scsi_allocate_evt",
            "vhost_scsi_tpg_attrib_fabric_prot_type_store",
            "vhost_scsi_tpg_attrib_fabric_prot_type_show",
        ],
    );
}

/// The vsock flow workloads in one boot: credit both ways and many connections, each checking
/// its outcome (byte-exact streams, credit fields, exact ops and errnos) and failing otherwise;
/// here their status, what they counted, and what they reached.
#[test]
fn agent_vsock_flow_workloads_check_their_outcomes() {
    let Some(out) = boot(&[
        "--workload",
        "vhost-vsock-credit",
        "--workload",
        "vhost-vsock-conns",
    ]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stream = stream_path(&out);
    let s = read_stream(&stream);
    assert_eq!(s.done, Some(0));
    let run = stream.parent().unwrap();

    let c = &s.workloads["vhost-vsock-credit"];
    assert_eq!(c.status, Some(0), "{:?}", c.error);
    assert!(!c.overflow, "vhost-vsock-credit overflowed");
    // 1000 + 3000 + 200 queued; 10000 under the small window in 4 windows; 500 read and the
    // 4096 within the socket's credit; a 3000-byte SEQPACKET message.
    assert_eq!(c.counters["queued_bytes"], 4200, "{:?}", c.counters);
    assert_eq!(c.counters["credit_bytes"], 10_000);
    assert_eq!(c.counters["credit_windows"], 4);
    assert_eq!(c.counters["overflow_bytes"], 4596);
    assert_eq!(c.counters["seqpacket_bytes"], 3000);
    let remote = covered_functions(run, "vhost-vsock-credit", "remote");
    assert_covers(
        &remote,
        "vhost-vsock-credit (workers)",
        &["vhost_transport_do_send_pkt", "vhost_vsock_handle_tx_kick"],
    );
    let local = covered_functions(run, "vhost-vsock-credit", "local");
    assert_covers(
        &local,
        "vhost-vsock-credit (sockets)",
        &["vhost_transport_send_pkt", "vhost_transport_get_local_cid"],
    );

    let n = &s.workloads["vhost-vsock-conns"];
    assert_eq!(n.status, Some(0), "{:?}", n.error);
    assert!(!n.overflow, "vhost-vsock-conns overflowed");
    assert_eq!(n.counters["connections"], 64, "{:?}", n.counters);
    // Chunk sizes as vsock_conns.rs's chunk_len: device → socket (i) and socket → device
    // (i + 7) per connection and round.
    let chunk = |i: u64, r: u64| 1 + (i * 131 + r * 977) % 1500;
    let bytes: u64 = (0..64)
        .flat_map(|i| (0..3).map(move |r| chunk(i, r) + chunk(i + 7, r)))
        .sum();
    assert_eq!(n.counters["stream_bytes"], bytes);
    // One per socket read: 64 × 3 rounds, two after half-closes, one after the CID change.
    assert_eq!(n.counters["credit_updates"], 195);
    // 65 RSTs for the port nobody listens on, two for the full backlog.
    assert_eq!(n.counters["resets"], 67);
    assert_eq!(n.counters["backlog_accepted"], 4);
    assert_eq!(n.counters["half_closes"], 4);
    let remote = covered_functions(run, "vhost-vsock-conns", "remote");
    assert_covers(
        &remote,
        "vhost-vsock-conns (workers)",
        &["vhost_transport_do_send_pkt", "vhost_vsock_handle_tx_kick"],
    );
    let local = covered_functions(run, "vhost-vsock-conns", "local");
    assert_covers(
        &local,
        "vhost-vsock-conns (ioctls, sockets)",
        &["vhost_vsock_set_cid", "vhost_transport_send_pkt"],
    );
}

/// `vhost-net-gaps`: an AF_PACKET socket as vhost-net backend (the refused sockets' errno,
/// an unbound one dropping TX, frames both ways byte-exact through a bound one), RX buffers
/// running out in the middle of a mergeable frame (the frame waits, then arrives over three
/// buffers), a blocking read of the device fd woken by an IOTLB miss, and rings mapped in
/// IOTLB pieces, the IOTLB dropped, ring/memory/kick changes under an attached backend, a
/// used ring that wraps in one batch, EVENT_IDX and a long frame under the dirty log (all
/// checked in the guest); here what it counted and that the paths it is there for were
/// reached.
#[test]
fn agent_net_gaps_workload_checks_its_outcomes() {
    let Some(out) = boot(&["--workload", "vhost-net-gaps"]) else {
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stream = stream_path(&out);
    let run = stream.parent().unwrap();
    let s = read_stream(&stream);
    let w = &s.workloads["vhost-net-gaps"];
    assert_eq!(w.status, Some(0), "{:?}", w.error);
    assert!(!w.overflow, "vhost-net-gaps overflowed");
    // SOCK_DGRAM and netlink backends, EBADFD and the short read, the empty IOTLB update;
    // the attaches under an empty and a dropped IOTLB; ring address and log address in
    // kernel space, a memory region there attached and the attach after it detached.
    assert_eq!(w.counters["errnos_checked"], 11, "{:?}", w.counters);
    // The long RX frame's three pages, the TX used ring's and its avail_event page at least.
    assert!(w.counters["log_pages"] >= 5, "{:?}", w.counters);
    // One on the packet socket, one on a tap.
    assert_eq!(w.counters["starved_frames"], 2, "{:?}", w.counters);
    // Exactly the one the blocking read returned (the rings were mapped beforehand) and the
    // one read short after an invalidation.
    assert_eq!(w.counters["iotlb_misses"], 2, "{:?}", w.counters);
    assert_eq!(w.counters["blocking_reads"], 1, "{:?}", w.counters);
    // Packet socket 8 + 8, the starved frame and the one after it, the frames after the
    // discarded VLAN-tagged one and after the lost header; on a tap the frame after the
    // failed num_buffers write; 70 in one pass; IOTLB 40 TX, 8 RX, the one whose miss was
    // read short; after the dropped IOTLB 4 + 4; under changes while attached 6; the ring of
    // 8: 6 + the wrapping one; the logged TX frame and the long RX frame.
    assert_eq!(
        w.counters["frames_verified"],
        20 + 1 + 70 + 49 + 8 + 6 + 7 + 2,
        "{:?}",
        w.counters
    );
    let local = covered_functions(run, "vhost-net-gaps", "local");
    assert_covers(
        &local,
        "vhost-net-gaps (ioctls, device fd)",
        &[
            "get_raw_socket",
            "get_socket",
            "vhost_chr_read_iter",
            "vhost_chr_write_iter",
            "vhost_clear_device_iotlb",
        ],
    );
    let remote = covered_functions(run, "vhost-net-gaps", "remote");
    assert_covers(
        &remote,
        "vhost-net-gaps (workers)",
        &[
            "peek_head_len",
            "get_rx_bufs",
            "vhost_discard_vq_desc",
            "vhost_copy_to_user",
            "vhost_copy_from_user",
            "__vhost_get_user_slow",
            "vhost_iotlb_miss",
            "vhost_net_signal_used",
            "vhost_update_avail_event",
            "log_write",
        ],
    );
}
