//! What every static /init of ours needs: pseudo file systems, the kernel release, and an
//! end that never returns (PID 1 must not exit: that panics the kernel).

use std::ffi::CString;

/// Mounts proc, sysfs, devtmpfs, debugfs and a tmpfs; an already mounted
/// file system is fine (the agent may also run outside a fresh initramfs).
pub fn mount_all() -> Result<(), String> {
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

pub fn kernel_release() -> String {
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

/// Ends an init: as PID 1, syncs and reboots (the runners treat a guest reset as the end of
/// the VM: `reboot=t` makes it a triple fault, QEMU runs with -no-reboot); else exits with
/// `status`.
pub fn end_init(status: i32) -> ! {
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
