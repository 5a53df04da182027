//! virtio-net with a tap backend under the real /dev/kvm: the `net_tap` test
//! guest sends patterned frames that must come out of the tap byte-exact (seen
//! on an AF_PACKET socket bound to the tap), and frames the test injects into
//! the tap must reach the guest byte-exact (the guest reports length and
//! FNV-1a per frame). Plus the tap's typed errors.
//!
//! The tap is created by the test in its own namespace and is not persistent:
//! it goes away when the device (its only fd) drops, pass or fail. Tests skip
//! ("SKIP: reason") without /dev/kvm, /dev/net/tun or root.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use frontends::netif::ifreq;
use vmm::devices::virtio::net::tap::{Tap, TapError, TUN_PATH};
use vmm::devices::virtio::net::{NetDevice, DEFAULT_MAC, F_MAC, F_MRG_RXBUF, F_STATUS};
use vmm::devices::virtio::{device_type, VirtioMmioDevice};
use vmm::guests::NET_TAP;
use vmm::{run_with_devices, VmConfig};

/// Mirrors net_tap.c.
const NTX: usize = 8;
const NRX: usize = 6;
const ETHERTYPE: u16 = 0x88b5;
const STATUS_FEATURES_OK: u32 = 0xb;
const STATUS_DRIVER_OK: u32 = 0xf;

fn tx_frame(i: usize) -> Vec<u8> {
    let len = 60 + i * 190;
    let mut f = vec![0xffu8; 6];
    f.extend(DEFAULT_MAC);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend((14..len).map(|j| (i * 31 + j * 7 + 1) as u8));
    f
}

/// Frames the test injects: to the guest's MAC, deterministic payload.
fn rx_frame(i: usize) -> Vec<u8> {
    const LENS: [usize; NRX] = [60, 61, 200, 1000, 1514, 77];
    let mut f = DEFAULT_MAC.to_vec();
    f.extend([0x02, 0, 0, 0, 0, 0x02]);
    f.extend(ETHERTYPE.to_be_bytes());
    let mut x = 0x1234_5678u32 ^ i as u32;
    f.extend((14..LENS[i]).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    f
}

fn root_and_tun_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        test_skip::skip(
            test,
            test_skip::ROOT_TUN,
            "not root (creating a tap needs CAP_NET_ADMIN)",
        );
        return false;
    }
    if !std::path::Path::new(TUN_PATH).exists() {
        test_skip::skip(test, test_skip::ROOT_TUN, format!("{TUN_PATH} is missing"));
        return false;
    }
    true
}

/// A tap name unique to this process and call (at most 15 bytes).
fn tap_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vnt{}x{}",
        std::process::id() % 1_000_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// `ip link set NAME up` through SIOCSIFFLAGS, with IPv6 off on it first so
/// the host stack sends nothing of its own.
fn link_up(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    // SAFETY: plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = ifreq(name);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write one ifreq that outlives the calls.
    unsafe {
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr),
            0,
            "SIOCGIFFLAGS {name}: {}",
            std::io::Error::last_os_error()
        );
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr),
            0,
            "SIOCSIFFLAGS {name}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// An AF_PACKET socket bound to `name` for ETHERTYPE, 200 ms receive timeout.
fn packet_socket(name: &str) -> OwnedFd {
    let proto = ETHERTYPE.to_be();
    // SAFETY: plain socket call; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(ifindex, 0, "if_nametoindex({name})");
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: bind/setsockopt read the structs given, which outlive the calls.
    unsafe {
        assert_eq!(
            libc::bind(
                sock.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32
            ),
            0,
            "bind AF_PACKET: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32
            ),
            0
        );
    }
    sock
}

fn recv_frame(sock: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: buf is writable for its length.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    (n > 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn send_frame(sock: &OwnedFd, f: &[u8]) {
    // SAFETY: f is readable for its length.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            f.as_ptr() as *const libc::c_void,
            f.len(),
            0,
        )
    };
    assert_eq!(
        n,
        f.len() as isize,
        "AF_PACKET send: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn guest_frames_cross_the_tap_both_ways() {
    tap_round_trip("guest_frames_cross_the_tap_both_ways", false, false);
}

/// The same frames with the host kernel's vhost-net serving the rings
/// (`NetDevice::vhost`): needs /dev/vhost-net on the host, skipped here.
#[test]
fn guest_frames_cross_host_vhost_net_both_ways() {
    let test = "guest_frames_cross_host_vhost_net_both_ways";
    if let Err(why) = frontends::vhost_net::probe() {
        test_skip::skip(test, test_skip::HOST_VHOST_NET, why);
        return;
    }
    tap_round_trip(test, true, true);
}

/// The same with VIRTIO_NET_F_MRG_RXBUF and 512-byte RX buffers: the longer
/// injected frames arrive spread over several buffers.
#[test]
fn guest_frames_cross_the_tap_with_mergeable_rx_buffers() {
    tap_round_trip(
        "guest_frames_cross_the_tap_with_mergeable_rx_buffers",
        true,
        false,
    );
}

fn tap_round_trip(test: &str, mrg: bool, vhost: bool) {
    if !kvm_or_skip(test) || !root_and_tun_or_skip(test) {
        return;
    }
    let name = tap_name();
    let tap = Tap::open(&name).unwrap();
    assert_eq!(tap.name(), name);
    let dev = if vhost {
        NetDevice::vhost(tap, DEFAULT_MAC, None)
    } else {
        NetDevice::new(Box::new(tap), DEFAULT_MAC)
    };
    let h = dev.handle();
    link_up(&name);
    let sock = packet_socket(&name);

    let d = tempfile::tempdir().unwrap();
    let cfg = VmConfig {
        kernel: guest(&d, "net_tap.elf", NET_TAP),
        cmdline: if mrg { "vtest=mrg" } else { "" }.into(),
        mem_mib: 64,
        serial_stdout: false,
        timeout: Some(Duration::from_secs(60)),
        skip_host_check: true,
        virtio_devices: vec![VirtioMmioDevice::new(Arc::new(Mutex::new(dev)))],
        ..Default::default()
    };
    let p = Probes::new();
    let extra = p.devices();
    let start = Instant::now();
    let vm = std::thread::spawn(move || run_with_devices(&cfg, extra));

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    while got.len() < NTX && Instant::now() < deadline && !vm.is_finished() {
        if let Some(f) = recv_frame(&sock) {
            got.push(f);
        }
    }
    let tx_time = start.elapsed();
    assert_eq!(got.len(), NTX, "guest TX frames seen on the tap");
    for (i, f) in got.iter().enumerate() {
        assert!(
            f == &tx_frame(i),
            "TX frame {i} differs: got {} bytes",
            f.len()
        );
    }
    for i in 0..NRX {
        send_frame(&sock, &rx_frame(i));
    }
    let o = vm.join().unwrap().unwrap();
    eprintln!(
        "{test}: {NTX} TX frames on the tap after {tx_time:?}; VM ended {:?} after {:?}; {:?}",
        o.exit,
        o.wall,
        h.stats()
    );
    assert!(o.exit.is_clean(), "{:?}", o.exit);
    let mut r = Reports::new(p.reports());
    r.expect("boot", vmm::guests::BOOT_MAGIC);
    r.expect("device id", device_type::NET);
    let f0 = r.next("features word 0");
    let want = (F_MAC | F_STATUS | F_MRG_RXBUF) as u32;
    assert_eq!(f0 & want, want);
    r.expect("features word 1 (VERSION_1)", 1);
    r.expect("status after FEATURES_OK", STATUS_FEATURES_OK);
    let m = DEFAULT_MAC;
    r.expect("mac 0-3", u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    r.expect("mac 4-5", u32::from(m[4]) | u32::from(m[5]) << 8);
    r.expect("config status LINK_UP", 1);
    r.expect("status after DRIVER_OK", STATUS_DRIVER_OK);
    r.expect("TX used idx", NTX as u32);
    for i in 0..NRX {
        let f = rx_frame(i);
        r.expect("RX frame length", f.len() as u32);
        let buffers = if mrg { (f.len() + 12).div_ceil(512) } else { 1 };
        r.expect("RX header: num_buffers, rest 0", buffers as u32);
        r.expect("RX frame FNV-1a", fnv1a(&f));
    }
    let ignored = r.next("frames ignored");
    r.end();
    let s = h.stats();
    if vhost {
        // The host kernel moved the frames: the VMM only relayed interrupts.
        assert_eq!(
            (s.tx_frames, s.rx_frames, s.activations),
            (0, 0, 1),
            "{s:?}"
        );
        return;
    }
    assert_eq!(s.tx_frames, NTX as u64);
    assert_eq!(
        s.tx_bytes,
        (0..NTX).map(|i| tx_frame(i).len() as u64).sum::<u64>()
    );
    assert_eq!(s.rx_frames, NRX as u64 + u64::from(ignored));
    assert_eq!(
        (s.bad_chains, s.backend_errors, s.worker_panics),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.activations, 1);
}

#[test]
fn tap_errors_are_typed_and_one_line() {
    let test = "tap_errors_are_typed_and_one_line";
    // Name checks need no privilege.
    for bad in ["", "abcdefghijklmnop", "a/b"] {
        let e = Tap::open(bad).unwrap_err();
        assert!(matches!(e, TapError::InvalidName { .. }), "{bad:?}: {e}");
    }
    if !root_and_tun_or_skip(test) {
        return;
    }
    // Busy: a second open of a tap that is open already.
    let name = tap_name();
    let first = Tap::open(&name).unwrap();
    let e = Tap::open(&name).unwrap_err();
    assert!(matches!(e, TapError::Busy(ref n) if *n == name), "{e}");
    drop(first);
    // Closing the only fd removed the (non-persistent) tap; it can be made again.
    drop(Tap::open(&name).unwrap());
    // An interface that is not a tap.
    let e = Tap::open("lo").unwrap_err();
    assert!(matches!(e, TapError::NotATap(_)), "{e}");

    // The CLI prints each as one line and exits 1, before reading the kernel.
    let vmm = env!("CARGO_BIN_EXE_vmm");
    let cli = |pre: &[&str], net: &str| {
        let out = Command::new(pre.first().copied().unwrap_or(vmm))
            .args(pre.iter().skip(1))
            .args(if pre.is_empty() { vec![] } else { vec![vmm] })
            .args(["--kernel", "/nonexistent/bzImage", "--net", net])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{net}: {err}");
        assert_eq!(err.lines().count(), 1, "{net}: {err}");
        err
    };
    assert!(cli(&[], "tap=abcdefghijklmnop").contains("longer than 15"));
    assert!(cli(&[], "tap=lo").contains("not a tap"));
    let busy = Tap::open(&name).unwrap();
    assert!(cli(&[], &format!("tap={name}")).contains("busy"));
    drop(busy);
    assert!(cli(&[], "tap=x,mac=01:02:03:04:05:06").contains("bad MAC"));
    // Without CAP_NET_ADMIN (dropped from the bounding set for the child).
    let setpriv = "/usr/bin/setpriv";
    if std::path::Path::new(setpriv).exists() {
        let err = cli(
            &[
                setpriv,
                "--inh-caps=-net_admin",
                "--bounding-set=-net_admin",
                "--",
            ],
            &format!("tap={}", tap_name()),
        );
        assert!(err.contains("permission denied"), "{err}");
    } else {
        test_skip::skip(
            test,
            test_skip::SETPRIV,
            format!("EPERM case: {setpriv} missing"),
        );
    }
}

/// A persistent tap (TUNSETPERSIST) that is deleted on drop, pass or fail.
struct PersistentTap(String);

impl PersistentTap {
    fn new(name: &str) -> Self {
        set_persist(name, true).unwrap();
        PersistentTap(name.to_owned())
    }
}

impl Drop for PersistentTap {
    fn drop(&mut self) {
        if let Err(e) = set_persist(&self.0, false) {
            eprintln!("cannot delete the persistent tap {}: {e}", self.0);
        }
    }
}

fn set_persist(name: &str, on: bool) -> Result<(), String> {
    let tap = Tap::open(name).map_err(|e| e.to_string())?;
    // SAFETY: TUNSETPERSIST takes an integer argument, no memory.
    let r = unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(on),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "TUNSETPERSIST {on}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// `vmm --net tap=NAME` end to end: the binary attaches to a persistent tap
/// that is up, the guest's frames come out of it and injected frames reach
/// the guest, which then ends the VM (exit status 0).
#[test]
fn vmm_binary_net_flag_attaches_to_a_persistent_tap() {
    let test = "vmm_binary_net_flag_attaches_to_a_persistent_tap";
    if let Some(out) = binary_round_trip(test, "", &[]) {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `vmm --net tap=NAME,vhost=on --host-kcov FILE`: where the host has
/// /dev/vhost-net the host kernel moves the frames (and with host kcov the PCs
/// of its vhost worker land in FILE); where it lacks them (this CI machine),
/// the binary says so on stderr, falls back to the userspace tap backend, and
/// the same frames still cross byte-exact.
#[test]
fn vmm_binary_vhost_and_host_kcov_fall_back_where_the_host_lacks_them() {
    let test = "vmm_binary_vhost_and_host_kcov_fall_back_where_the_host_lacks_them";
    let d = tempfile::tempdir().unwrap();
    let pcs = d.path().join("host.pcs");
    let extra = ["--host-kcov".to_string(), pcs.display().to_string()];
    let Some(out) = binary_round_trip(test, ",vhost=on", &extra) else {
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    match frontends::vhost_net::probe() {
        Err(why) => {
            test_skip::skip(
                &format!("{test} (partly)"),
                test_skip::HOST_VHOST_NET,
                format!("host vhost-net data path: {why}"),
            );
            assert!(
                err.contains("/dev/vhost-net is missing")
                    && err.contains("using the userspace tap backend, without host coverage"),
                "{err}"
            );
            assert!(!pcs.exists(), "no host coverage file without vhost-net");
        }
        Ok(()) => match vmm::host_kcov::HostKcov::start() {
            Err(why) => {
                test_skip::skip(
                    &format!("{test} (partly)"),
                    test_skip::HOST_KCOV,
                    format!("host kcov: {why}"),
                );
                assert!(err.contains("going on without host coverage"), "{err}");
            }
            Ok(h) => {
                drop(h);
                let text = std::fs::read_to_string(&pcs).unwrap();
                assert!(text.lines().count() > 1, "no host PCs: {text}");
            }
        },
    }
}

/// Runs the net_tap guest under the `vmm` binary with `--net tap=NAME{net_opts}`
/// plus `extra`, checks the frames both ways, and returns the binary's output;
/// `None` when skipped.
fn binary_round_trip(test: &str, net_opts: &str, extra: &[String]) -> Option<std::process::Output> {
    if !kvm_or_skip(test) || !root_and_tun_or_skip(test) {
        return None;
    }
    let name = tap_name();
    let _tap = PersistentTap::new(&name);
    link_up(&name);
    let sock = packet_socket(&name);
    let d = tempfile::tempdir().unwrap();
    let kernel = guest(&d, "net_tap.elf", NET_TAP);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args(["--cmdline", "", "--mem", "64", "--timeout", "60", "-q"])
        .args(["--no-host-check", "--net", &format!("tap={name}{net_opts}")])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    while got.len() < NTX && Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if let Some(f) = recv_frame(&sock) {
            got.push(f);
        }
    }
    let want: Vec<Vec<u8>> = (0..NTX).map(tx_frame).collect();
    if got != want {
        // Release the tap before failing, so the guard can delete it.
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(got.len(), NTX, "guest TX frames seen on the tap");
    assert!(got == want, "TX frames differ");
    for i in 0..NRX {
        send_frame(&sock, &rx_frame(i));
    }
    Some(child.wait_with_output().unwrap())
}
