//! Remote handles: common and USB handle arithmetic, the kernel's handle checks, fresh
//! instances per run, and the `KCOV_REMOTE_ENABLE` argument built from them.

use std::mem::{offset_of, size_of};

use super::error::KcovError;
use super::uapi::{
    KcovRemoteArg, TraceMode, KCOV_INSTANCE_MASK, KCOV_REMOTE_MAX_HANDLES, KCOV_SUBSYSTEM_COMMON,
    KCOV_SUBSYSTEM_MASK, KCOV_SUBSYSTEM_USB,
};

/// The common handle for `instance`: subsystem 0 (top byte zero), bytes 4..7 zero, instance in
/// the low 4 bytes. Instance 0 is refused (the kernel reads it as "no common handle").
pub fn common_handle(instance: u32) -> Result<u64, KcovError> {
    if instance == 0 {
        return Err(KcovError::ZeroInstance);
    }
    Ok(KCOV_SUBSYSTEM_COMMON | u64::from(instance))
}

/// A USB (global) handle for `bus` (`kcov_remote_handle(KCOV_SUBSYSTEM_USB, bus)`).
pub fn usb_handle(bus: u32) -> u64 {
    KCOV_SUBSYSTEM_USB | u64::from(bus)
}

/// Subsystem byte of a handle (0 = common, 1 = USB).
pub fn handle_subsystem(handle: u64) -> u8 {
    (handle >> 56) as u8
}

/// Instance part of a handle.
pub fn handle_instance(handle: u64) -> u32 {
    (handle & KCOV_INSTANCE_MASK) as u32
}

/// Mirror of the kernel's `kcov_check_handle()`: bytes 4..7 must be zero, the subsystem known;
/// a common handle is valid if `common_valid` (instance non-zero) or `zero_valid` (instance
/// zero), a USB handle if `uncommon_valid`.
pub fn check_handle(
    handle: u64,
    common_valid: bool,
    uncommon_valid: bool,
    zero_valid: bool,
) -> bool {
    if handle & !(KCOV_SUBSYSTEM_MASK | KCOV_INSTANCE_MASK) != 0 {
        return false;
    }
    match handle & KCOV_SUBSYSTEM_MASK {
        KCOV_SUBSYSTEM_COMMON => {
            if handle & KCOV_INSTANCE_MASK != 0 {
                common_valid
            } else {
                zero_valid
            }
        }
        KCOV_SUBSYSTEM_USB => uncommon_valid,
        _ => false,
    }
}

fn validate_handles(common: u64, global: &[u64]) -> Result<(), KcovError> {
    if !check_handle(common, true, false, true) {
        return Err(KcovError::InvalidHandle {
            handle: common,
            why: "a common handle needs subsystem 0 and bytes 4..7 zero",
        });
    }
    if global.len() > KCOV_REMOTE_MAX_HANDLES {
        return Err(KcovError::TooManyHandles {
            count: global.len(),
        });
    }
    for &h in global {
        if !check_handle(h, false, true, false) {
            return Err(KcovError::InvalidHandle {
                handle: h,
                why: "a global handle needs a non-common subsystem (USB) and bytes 4..7 zero",
            });
        }
    }
    Ok(())
}

/// Mixes a 64-bit seed into a non-zero u32 instance (splitmix64 finaliser).
pub fn instance_from_seed(seed: u64) -> u32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    match (z ^ (z >> 32)) as u32 {
        0 => 1,
        v => v,
    }
}

/// A fresh non-zero instance for [`common_handle`], different for each call: getrandom(2)
/// without blocking (early boot may lack entropy), else time, pid and a per-process counter.
pub fn fresh_instance() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut seed = os_random().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    seed ^= now ^ (u64::from(std::process::id()) << 32);
    seed ^= n.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    instance_from_seed(seed)
}

#[cfg(target_os = "linux")]
fn os_random() -> Option<u64> {
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    (n == buf.len() as isize).then(|| u64::from_ne_bytes(buf))
}

#[cfg(not(target_os = "linux"))]
fn os_random() -> Option<u64> {
    None
}

/// Builds the `KCOV_REMOTE_ENABLE` argument: header plus handles, as u64 words so the buffer
/// is 8-byte aligned. Validates the handles as the kernel would.
pub fn remote_arg(
    mode: TraceMode,
    area_words: u32,
    common_handle: u64,
    global_handles: &[u64],
) -> Result<Vec<u64>, KcovError> {
    validate_handles(common_handle, global_handles)?;
    let hdr = KcovRemoteArg {
        trace_mode: mode as u32,
        area_size: area_words,
        num_handles: global_handles.len() as u32,
        pad: 0,
        common_handle,
    };
    let mut bytes = [0u8; size_of::<KcovRemoteArg>()];
    let mut put = |off: usize, b: &[u8]| bytes[off..off + b.len()].copy_from_slice(b);
    put(
        offset_of!(KcovRemoteArg, trace_mode),
        &hdr.trace_mode.to_ne_bytes(),
    );
    put(
        offset_of!(KcovRemoteArg, area_size),
        &hdr.area_size.to_ne_bytes(),
    );
    put(
        offset_of!(KcovRemoteArg, num_handles),
        &hdr.num_handles.to_ne_bytes(),
    );
    put(offset_of!(KcovRemoteArg, pad), &hdr.pad.to_ne_bytes());
    put(
        offset_of!(KcovRemoteArg, common_handle),
        &hdr.common_handle.to_ne_bytes(),
    );
    let mut words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_ne_bytes(a)
        })
        .collect();
    words.extend_from_slice(global_handles);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::kcov::uapi::{KCOV_REMOTE_MAX_HANDLES, KCOV_TRACE_CMP};

    #[test]
    fn remote_arg_layout() {
        assert_eq!(size_of::<KcovRemoteArg>(), 24);
        assert_eq!(std::mem::align_of::<KcovRemoteArg>(), 8);
        assert_eq!(offset_of!(KcovRemoteArg, trace_mode), 0);
        assert_eq!(offset_of!(KcovRemoteArg, area_size), 4);
        assert_eq!(offset_of!(KcovRemoteArg, num_handles), 8);
        assert_eq!(offset_of!(KcovRemoteArg, common_handle), 16);

        let h = common_handle(0xdead_beef).unwrap();
        let arg = remote_arg(TraceMode::Cmp, 1 << 20, h, &[usb_handle(3), usb_handle(7)]).unwrap();
        assert_eq!(arg.len(), 5);
        let bytes: Vec<u8> = arg.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0), KCOV_TRACE_CMP);
        assert_eq!(u32_at(4), 1 << 20);
        assert_eq!(u32_at(8), 2);
        assert_eq!(u32_at(12), 0, "padding is zero");
        assert_eq!(u64_at(16), 0xdead_beef);
        assert_eq!(u64_at(24), 0x0100_0000_0000_0003);
        assert_eq!(u64_at(32), 0x0100_0000_0000_0007);
        assert_eq!(arg.as_ptr() as usize % 8, 0);

        let plain = remote_arg(TraceMode::Pc, 64, 1, &[]).unwrap();
        assert_eq!(plain.len(), 3);
        // Little-endian targets: the exact bytes.
        #[cfg(target_endian = "little")]
        assert_eq!(plain, [64 << 32, 0, 1]);
    }

    #[test]
    fn remote_arg_validates_handles() {
        assert!(
            remote_arg(TraceMode::Pc, 64, 0, &[]).is_ok(),
            "no common handle is fine"
        );
        for bad in [
            1u64 << 32,
            0x00ff_0000_0000_0001,
            usb_handle(1),
            0x0200_0000_0000_0001,
        ] {
            assert!(
                matches!(
                    remote_arg(TraceMode::Pc, 64, bad, &[]),
                    Err(KcovError::InvalidHandle { .. })
                ),
                "{bad:#x}"
            );
        }
        for bad in [1u64, 0, 0x0100_0001_0000_0000, 0x0200_0000_0000_0000] {
            assert!(matches!(
                remote_arg(TraceMode::Pc, 64, 1, &[bad]),
                Err(KcovError::InvalidHandle { .. })
            ));
        }
        let many = vec![usb_handle(1); KCOV_REMOTE_MAX_HANDLES + 1];
        assert!(matches!(
            remote_arg(TraceMode::Pc, 64, 1, &many),
            Err(KcovError::TooManyHandles { count: 257 })
        ));
        assert!(remote_arg(TraceMode::Pc, 64, 1, &many[1..]).is_ok());
    }

    #[test]
    fn handle_construction() {
        assert!(matches!(common_handle(0), Err(KcovError::ZeroInstance)));
        for inst in [1u32, 0x42, 0xdead_beef, u32::MAX] {
            let h = common_handle(inst).unwrap();
            assert_eq!(h, u64::from(inst));
            assert_eq!(handle_subsystem(h), 0);
            assert_eq!(handle_instance(h), inst);
            assert_eq!(h >> 32, 0, "bytes 4..7 and the subsystem byte are zero");
            assert!(check_handle(h, true, false, false));
        }
        assert_eq!(usb_handle(5), 0x0100_0000_0000_0005);
        assert_eq!(handle_subsystem(usb_handle(5)), 1);
        // kcov_check_handle semantics.
        assert!(check_handle(0, false, false, true));
        assert!(!check_handle(0, true, true, false));
        assert!(!check_handle(1, false, true, true));
        assert!(check_handle(usb_handle(0), false, true, false));
        assert!(!check_handle(usb_handle(0), true, false, true));
        assert!(
            !check_handle(1 << 40, true, true, true),
            "bytes 4..7 must be zero"
        );
        assert!(
            !check_handle(0x0200_0000_0000_0001, true, true, true),
            "unknown subsystem"
        );
    }

    #[test]
    fn fresh_instances_are_nonzero_and_vary() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let i = fresh_instance();
            assert_ne!(i, 0);
            assert!(common_handle(i).is_ok());
            seen.insert(i);
        }
        assert!(seen.len() > 990, "only {} distinct instances", seen.len());
        for s in 0..10_000u64 {
            assert_ne!(instance_from_seed(s), 0);
        }
    }
}
