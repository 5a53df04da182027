//! The nested runner: our `vmm` boots the guest ("L2") inside a QEMU TCG guest ("L1"): a
//! Linux with KVM on the SVM that QEMU emulates (`-cpu max`), booted with `kvm_amd.npt=0`
//! (with nested paging the L2 never exits). This runs the kvm path (our VMM, its
//! virtio-mmio devices, a real Linux guest's drivers on them) on any machine with QEMU,
//! at TCG speed. See `../shared/NESTED.md` and `kcov_wire::nested` for the contract with
//! the L1 init.
//!
//! The L2's vsock streams reach the host byte for byte: L2 → the vmm's in-process vsock
//! device → the vmm's hybrid Unix socket in L1 → the L1 init's relay → L1's AF_VSOCK → QEMU's
//! vhost-user vsock device → our vsock backend → `<uds>_<port>` on the host, where the same
//! receiver as for the other runners writes the run store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use images::Initramfs;
use kcov_wire::nested::{self, L1Line};

use super::qemu::{self, Machine};
use super::{BootOutcome, BootSpec, RunnerKind, VmEvent, VsockReceiver};

/// The L1 kernel command line: serial console, reset on panic, quiet, no nested paging in
/// kvm_amd (measured: with NPT on, the first KVM_RUN of the L2 never returns), and a TSC that
/// L1 trusts (see [`l1_cmdline`]).
pub const L1_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=t quiet kvm_amd.npt=0 tsc=reliable";

/// The L1 command line with the TSC rate: QEMU TCG's guest TSC is the host's TSC, and L1 has
/// no HPET or PM timer to calibrate it against, only the PIT, whose calibration fails on a
/// loaded host. L1 then marks its TSC unstable, runs on jiffies, and its KVM gives the L2 a
/// TSC that stalls the L2's early boot (measured: vcpu0 spinning for minutes before the L2's
/// first console line, in 2 of 3 parallel runs). `tsc_early_khz` skips that calibration.
pub fn l1_cmdline(append: &[String]) -> String {
    let mut c = L1_CMDLINE.to_string();
    if let Some(khz) = host_tsc_khz() {
        c.push_str(&format!(" tsc_early_khz={khz}"));
    }
    for w in append {
        c.push(' ');
        c.push_str(w);
    }
    c
}

/// The host's TSC rate in kHz, measured against the monotonic clock over 100 ms; each end is
/// bracketed by two clock reads so a preemption in between cannot skew it by more than the
/// bracket. None where there is no TSC to read (not x86_64).
pub fn host_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::time::{Duration, Instant};
        let sample = || {
            let t0 = Instant::now();
            // SAFETY: rdtsc has no preconditions on x86_64.
            let c = unsafe { core::arch::x86_64::_rdtsc() };
            let t1 = Instant::now();
            (t0 + (t1 - t0) / 2, c, t1 - t0)
        };
        let mut best = None;
        for _ in 0..3 {
            let (a, ca, wa) = sample();
            std::thread::sleep(Duration::from_millis(100));
            let (b, cb, wb) = sample();
            let span = (b - a).as_nanos();
            if span == 0 || cb <= ca {
                continue;
            }
            let khz = (u128::from(cb - ca) * 1_000_000 / span) as u64;
            let err = wa + wb;
            if best.is_none_or(|(_, e)| err < e) {
                best = Some((khz, err));
            }
        }
        best.map(|(k, _)| k).filter(|&k| k > 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}
/// L1 memory on top of the L2's: the L1 kernel, its initramfs (vmm, L2 kernel and
/// initramfs), the vmm itself.
pub const L1_EXTRA_MIB: u64 = 256;
/// L1 vCPUs at least (the L2's vCPU threads and the relays run beside each other).
pub const L1_MIN_CPUS: u8 = 2;
/// The fragment that turns the guest kernel config into the L1 host's.
pub const L1_FRAGMENT: &str = "nested-l1.config";

/// What the nested runner adds to a [`BootSpec`].
#[derive(Clone, Debug)]
pub struct NestedSpec {
    /// The L1 kernel (bzImage).
    pub l1_kernel: PathBuf,
    /// The static `vmm` binary.
    pub vmm: PathBuf,
    /// The static L1 init (`nested-l1-init`).
    pub init: PathBuf,
    /// vsock ports of the L2 to relay to the host (the agent's stream port).
    pub relay_ports: Vec<u32>,
    /// Extra L1 kernel command-line words (after [`L1_CMDLINE`], so they override it).
    pub l1_append: Vec<String>,
    /// QEMU `-cpu` model of L1 (it must emulate SVM: `max`).
    pub l1_cpu: String,
}

/// The vmm's argv inside L1 for `spec`.
pub fn vmm_argv(spec: &BootSpec) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--kernel".into(),
        nested::L2_KERNEL_FILE.into(),
        "--initrd".into(),
        nested::L2_INITRAMFS_FILE.into(),
        "--cmdline".into(),
        spec.cmdline.clone(),
        "--mem".into(),
        spec.mem_mib.to_string(),
        "--vcpus".into(),
        spec.vcpus.max(1).to_string(),
    ];
    if let Some(v) = &spec.vsock {
        a.extend([
            "--vsock-uds".into(),
            nested::L1_VSOCK_UDS.into(),
            "--guest-cid".into(),
            v.guest_cid.to_string(),
        ]);
    }
    if let Some(n) = &spec.net {
        a.extend(["--net".into(), n.to_string()]);
        if spec.host_kcov {
            a.extend(["--host-kcov".into(), nested::HOST_KCOV_FILE.into()]);
        }
    }
    a
}

/// Writes L1's initramfs for `spec` to `out`.
pub fn write_l1_initramfs(spec: &BootSpec, n: &NestedSpec, out: &Path) -> Result<()> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut img = Initramfs::with_skeleton();
    img.add_file("/init", read(&n.init)?, 0o755)?;
    img.add_dir(nested::DIR, 0o755)?;
    img.add_file(nested::VMM_FILE, read(&n.vmm)?, 0o755)?;
    img.add_file(nested::L2_KERNEL_FILE, read(&spec.bzimage)?, 0o644)?;
    img.add_file(nested::L2_INITRAMFS_FILE, read(&spec.initramfs)?, 0o644)?;
    img.add_file(
        nested::VMM_ARGV_FILE,
        kcov_wire::console::render_argv(&vmm_argv(spec)),
        0o644,
    )?;
    img.add_file(
        nested::RELAY_FILE,
        nested::render_ports(&n.relay_ports).into_bytes(),
        0o644,
    )?;
    if let Some(net) = &spec.net {
        img.add_file(
            nested::NET_FILE,
            format!("{}\n", net.tap).into_bytes(),
            0o644,
        )?;
    }
    img.write_file(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// An L1 console line as the watcher's event: L2 lines are the guest console.
fn route(line: String) -> VmEvent {
    match nested::classify(&line) {
        L1Line::L2(rest) => VmEvent::Line(rest.to_string()),
        L1Line::L1(_) => VmEvent::L1Line(line),
    }
}

pub fn boot(spec: &BootSpec) -> Result<BootOutcome> {
    let n = spec
        .nested
        .as_ref()
        .context("the nested runner needs its L1 (BootSpec::nested)")?;
    let dir = spec
        .serial_log
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let l1_initramfs = dir.join("l1-initramfs.cpio");
    write_l1_initramfs(spec, n, &l1_initramfs)?;
    let cmdline = l1_cmdline(&n.l1_append);
    let m = Machine {
        kernel: &n.l1_kernel,
        initrd: &l1_initramfs,
        cmdline: &cmdline,
        mem_mib: spec.mem_mib + L1_EXTRA_MIB,
        cpus: spec.vcpus.max(L1_MIN_CPUS),
        cpu: &n.l1_cpu,
        vsock: spec.vsock.as_ref(),
    };
    // L1 sends the vmm's host-kcov file after the vmm ended.
    let host_kcov_file = dir.join("l1-host-kcov.txt");
    let host_kcov = match (&spec.vsock, spec.host_kcov && spec.net.is_some()) {
        (Some(v), true) => Some(VsockReceiver::start(
            &v.uds,
            nested::HOST_KCOV_PORT,
            &host_kcov_file,
        )?),
        _ => None,
    };
    let outcome = qemu::boot_machine(spec, RunnerKind::Nested, &m, route);
    // The L1 initramfs is big (it carries the L2's kernel and initramfs) and rebuilt per run.
    let _ = std::fs::remove_file(&l1_initramfs);
    let mut outcome = outcome?;
    if let Some(r) = host_kcov {
        r.finish()?;
        match std::fs::read_to_string(&host_kcov_file) {
            Ok(text) => match vmm::host_kcov::HostCoverage::from_text(&text) {
                Ok(hc) => outcome.host_coverage = Some(hc),
                Err(e) => eprintln!("host-kcov: L1 sent a bad file ({e}); no host coverage"),
            },
            Err(_) => eprintln!("host-kcov: L1 sent no host coverage (see the L1 console for why)"),
        }
        let _ = std::fs::remove_file(&host_kcov_file);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Timeouts, VsockSpec};
    use std::time::Duration;

    fn spec(dir: &Path) -> BootSpec {
        BootSpec {
            bzimage: dir.join("bz"),
            initramfs: dir.join("init.cpio"),
            cmdline: "console=ttyS0 testbed.workloads=vhost-net-tx".into(),
            mem_mib: 256,
            vcpus: 2,
            serial_log: dir.join("serial.log"),
            echo: false,
            timeouts: Timeouts {
                boot: Duration::from_secs(1),
                run: Duration::from_secs(1),
            },
            vsock: Some(VsockSpec::in_dir(dir)),
            net: Some("tap=tap7,vhost=on".parse().unwrap()),
            host_kcov: true,
            nested: None,
            stop: None,
        }
    }

    #[test]
    fn vmm_argv_carries_every_kvm_option() {
        let dir = tempfile::tempdir().unwrap();
        let a = vmm_argv(&spec(dir.path())).join(" ");
        for want in [
            "--kernel /nested/bzImage",
            "--initrd /nested/initramfs.cpio",
            "--cmdline console=ttyS0 testbed.workloads=vhost-net-tx",
            "--mem 256",
            "--vcpus 2",
            "--vsock-uds /tmp/l2-vsock.sock --guest-cid 3",
            "--net tap=tap7,mac=52:54:00:12:34:56,vhost=on",
            "--host-kcov /tmp/host-kcov.pcs",
        ] {
            assert!(a.contains(want), "{want:?} not in {a}");
        }
        // The rendered --net parses back to the same spec.
        let s = spec(dir.path());
        let argv = vmm_argv(&s);
        let i = argv.iter().position(|w| w == "--net").unwrap();
        let back: vmm::devices::virtio::net::NetSpec = argv[i + 1].parse().unwrap();
        assert_eq!(&back, s.net.as_ref().unwrap());
    }

    #[test]
    fn l1_initramfs_holds_the_contract_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        for f in ["bz", "init.cpio", "vmm", "l1init"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let n = NestedSpec {
            l1_kernel: dir.path().join("bz"),
            vmm: dir.path().join("vmm"),
            init: dir.path().join("l1init"),
            relay_ports: vec![10_000],
            l1_append: Vec::new(),
            l1_cpu: "max".into(),
        };
        let out = dir.path().join("l1.cpio");
        write_l1_initramfs(&s, &n, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let has = |name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
        for name in [
            "init",
            "nested/vmm",
            "nested/bzImage",
            "nested/initramfs.cpio",
            "nested/vmm.argv",
            "nested/relay-ports",
            "nested/net",
        ] {
            assert!(has(name), "{name} missing from the L1 initramfs");
        }
        assert!(has("10000\n"));
        assert!(has("tap7\n"));
        assert!(has("--vsock-uds\0/tmp/l2-vsock.sock\0"));
    }

    #[test]
    fn host_tsc_rate_is_plausible_and_on_the_l1_cmdline() {
        let khz = host_tsc_khz().expect("an x86_64 host has a TSC");
        // 100 MHz to 10 GHz.
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
        let c = l1_cmdline(&["loglevel=8".into()]);
        assert!(c.starts_with(L1_CMDLINE), "{c}");
        assert!(c.contains(" tsc_early_khz="), "{c}");
        assert!(c.ends_with(" loglevel=8"), "{c}");
    }

    #[test]
    fn route_splits_levels() {
        match route("L2| @@TESTBED-READY@@ 6.12".into()) {
            VmEvent::Line(l) => assert_eq!(l, "@@TESTBED-READY@@ 6.12"),
            _ => panic!("an L2 line went to L1"),
        }
        match route("[    1.0] kvm_amd: Nested Virtualization enabled".into()) {
            VmEvent::L1Line(l) => assert!(l.contains("kvm_amd")),
            _ => panic!("an L1 line went to L2"),
        }
    }
}
