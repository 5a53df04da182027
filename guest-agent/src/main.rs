//! The testbed guest agent: runs as /init in the guest's initramfs.
//!
//! It mounts the pseudo file systems, reports what the kernel offers
//! (kernel release, kcov, vhost devices), runs the plan the host gave it and
//! powers the VM off with an exit status the host reads from the console.
//!
//! Console protocol (read by the host runners): [`kcov_wire::console`].

use std::ffi::CString;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use kcov_wire::console::{CMD_FILE, EXIT_MARKER, READY_MARKER};
const KCOV_PATH: &str = "/sys/kernel/debug/kcov";
const VHOST_NET_PATH: &str = "/dev/vhost-net";
const VHOST_VSOCK_PATH: &str = "/dev/vhost-vsock";

fn main() {
    let status = match std::panic::catch_unwind(run) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            println!("testbed-agent: error: {e}");
            1
        }
        Err(_) => {
            println!("testbed-agent: error: the agent panicked");
            101
        }
    };
    finish(status)
}

fn run() -> Result<i32, String> {
    mount_all()?;
    let release = kernel_release();
    println!("{READY_MARKER} {release}");
    println!(
        "testbed-agent {}: kernel {release}",
        env!("CARGO_PKG_VERSION")
    );
    for (what, path) in [
        ("kcov", KCOV_PATH),
        ("vhost-net", VHOST_NET_PATH),
        ("vhost-vsock", VHOST_VSOCK_PATH),
    ] {
        let state = if Path::new(path).exists() {
            "present"
        } else {
            "missing"
        };
        println!("testbed-agent: {what} {path}: {state}");
    }
    match read_command()? {
        Some(argv) => run_command(&argv),
        None => Ok(0),
    }
}

/// Mounts proc, sysfs, devtmpfs, debugfs and a tmpfs; an already mounted
/// file system is fine (the agent may also run outside a fresh initramfs).
fn mount_all() -> Result<(), String> {
    let mounts = [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("debugfs", "/sys/kernel/debug", "debugfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ];
    for (source, target, fstype) in mounts {
        let _ = std::fs::create_dir_all(target);
        let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
        let (src, tgt, fst) = (c(source)?, c(target)?, c(fstype)?);
        // SAFETY: all pointers are valid NUL-terminated strings; data is null.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fst.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(format!("mount {fstype} on {target}: {err}"));
            }
        }
    }
    Ok(())
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_string();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn read_command() -> Result<Option<Vec<String>>, String> {
    let raw = match std::fs::read(CMD_FILE) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("read {CMD_FILE}: {e}")),
    };
    let argv: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Ok(if argv.is_empty() { None } else { Some(argv) })
}

/// Runs the user command with the console as its stdio; returns its status
/// (128 + signal number when it was killed, like a shell).
fn run_command(argv: &[String]) -> Result<i32, String> {
    println!("testbed-agent: running {}", argv.join(" "));
    let _ = std::io::stdout().flush();
    let status = match Command::new(&argv[0])
        .args(&argv[1..])
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .status()
    {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("testbed-agent: error: command not found: {}", argv[0]);
            return Ok(127);
        }
        Err(e) => {
            println!("testbed-agent: error: cannot run {}: {e}", argv[0]);
            return Ok(126);
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    println!("testbed-agent: command exited with status {code}");
    Ok(code)
}

/// Prints the exit marker and ends the VM. As PID 1 the agent must not exit
/// (that panics the kernel), so it reboots; the runners treat a guest reset as
/// the end of the VM (`reboot=t` on the cmdline makes it a triple fault, QEMU
/// runs with -no-reboot).
fn finish(status: i32) -> ! {
    println!("{EXIT_MARKER} {status}");
    let _ = std::io::stdout().flush();
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        // SAFETY: sync and reboot have no memory-safety preconditions.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_AUTOBOOT);
        }
        // reboot only returns on error; never return from init.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    std::process::exit(status)
}
