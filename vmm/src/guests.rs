//! Tiny test guests, assembled from `vmm/guests/*.S` by build.rs and embedded here.
//! Each is a static x86-64 ELF loaded at 2 MiB and entered through the same
//! linux-loader ELF path and 64-bit entry as a Linux vmlinux (the PVH guest
//! through the PVH entry). `guests/abi.h` documents what each one reports.

use std::io;
use std::path::{Path, PathBuf};

/// Port receiving 32-bit reports (`out %eax`).
pub const REPORT_PORT: u16 = 0x510;
/// Port receiving text bytes (`out %al`).
pub const TEXT_PORT: u16 = 0x514;
/// Test MMIO device base (start of the MMIO gap): the boot-contract guest writes
/// a u32 at +0 and reads a u32 at +8.
pub const TESTDEV_MMIO: u64 = 0xd000_0000;
/// MMIO address no device claims (garbage guest).
pub const UNCLAIMED_MMIO: u64 = 0xd010_0000;
/// First report of most guests.
pub const BOOT_MAGIC: u32 = 0xb007_c0de;
/// Last report before the guest resets.
pub const END_MAGIC: u32 = 0xe0d0_e0d0;
/// SMP guest: reports `SMP_TAG | apic_id`.
pub const SMP_TAG: u32 = 0xa000_0000;

macro_rules! guest {
    ($name:ident, $file:literal, $doc:literal) => {
        #[doc = $doc]
        pub const $name: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/", $file));
    };
}

guest!(HELLO, "hello.elf", "Writes \"!\\n\" to COM1 and resets.");
guest!(
    CONSOLE,
    "console.elf",
    "Prints its kernel command line to COM1 ('|' = newline) and resets."
);
guest!(
    BOOT_CONTRACT,
    "boot_contract.elf",
    "Reports the zero page it was given (see boot_contract.S)."
);
guest!(
    TRIPLE_FAULT,
    "triple_fault.elf",
    "Triple-faults (empty IDT + ud2)."
);
guest!(SPIN, "spin.elf", "Reports once, then loops forever.");
guest!(
    GARBAGE,
    "garbage.elf",
    "Touches unclaimed ports and MMIO, reports the reads, resets."
);
guest!(
    SMP,
    "smp.elf",
    "Every vCPU reports its APIC id; the BSP resets when all arrived."
);
guest!(
    PVH,
    "pvh.elf",
    "PVH-note ELF: 32-bit entry reporting its hvm_start_info."
);
guest!(
    VIRTIO_ECHO,
    "virtio_echo.elf",
    "virtio-mmio driver for the echo device: handshake, two virtqueues, echo check (see virtio_echo.c)."
);
guest!(
    VSOCK_STREAM,
    "vsock_stream.elf",
    "virtio-vsock driver: a guest-initiated stream to CID 2 and/or an echoed host-initiated one, with credit flow control (see vsock_stream.c)."
);

guest!(
    NET_TAP,
    "net_tap.elf",
    "virtio-net driver: sends 8 patterned frames, receives 6 frames of ethertype 0x88b5 and reports their lengths and hashes (see net_tap.c)."
);

guest!(
    NET_BENCH,
    "net_bench.elf",
    "virtio-net throughput driver: sends or receives N frames of S bytes as fast as the rings allow, counting and checking them (see net_bench.c, benches/src/net.rs)."
);

/// The `vsock_stream` guest's pattern repeats every this many 8-byte words.
pub const STREAM_PATTERN_WORDS: u64 = 8191;

/// Byte `i` of the stream the `vsock_stream` test guest sends
/// (`guests/vsock_stream.c` `build_pattern()`): byte `i % 8` (little-endian)
/// of `((i / 8) % 8191 + 1) * 0x9e3779b97f4a7c15`.
pub fn stream_pattern(i: u64) -> u8 {
    let w = (i / 8) % STREAM_PATTERN_WORDS + 1;
    (w.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (8 * (i % 8))) as u8
}

/// The first byte of `got` that is not the `vsock_stream` guest's ([`stream_pattern`]).
pub fn first_stream_mismatch(got: &[u8]) -> Option<usize> {
    got.iter()
        .enumerate()
        .position(|(i, b)| *b != stream_pattern(i as u64))
}

/// Write guest `bytes` to `dir/name` and return the path.
pub fn write_guest(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, bytes)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust constants match guests/abi.h.
    #[test]
    fn abi_header_matches() {
        let h = include_str!("../guests/abi.h");
        let def = |name: &str| -> u64 {
            let line = h
                .lines()
                .find(|l| l.starts_with("#define") && l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("{name} not in abi.h"));
            let v = line.split_whitespace().nth(2).unwrap();
            u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
        };
        assert_eq!(def("REPORT_PORT"), u64::from(REPORT_PORT));
        assert_eq!(def("TEXT_PORT"), u64::from(TEXT_PORT));
        assert_eq!(def("TESTDEV_MMIO"), TESTDEV_MMIO);
        assert_eq!(def("UNCLAIMED_MMIO"), UNCLAIMED_MMIO);
        assert_eq!(def("BOOT_MAGIC"), u64::from(BOOT_MAGIC));
        assert_eq!(def("END_MAGIC"), u64::from(END_MAGIC));
        assert_eq!(def("SMP_TAG"), u64::from(SMP_TAG));
        assert_eq!(def("COM1_PORT"), crate::devices::serial::COM1_PORT);
    }

    #[test]
    fn guests_are_x86_64_elfs_at_2m() {
        for g in [
            HELLO,
            BOOT_CONTRACT,
            TRIPLE_FAULT,
            SPIN,
            GARBAGE,
            SMP,
            PVH,
            VIRTIO_ECHO,
            VSOCK_STREAM,
            NET_TAP,
            NET_BENCH,
        ] {
            assert_eq!(&g[..4], b"\x7fELF");
            assert_eq!(u16::from_le_bytes([g[18], g[19]]), 62);
            let entry = u64::from_le_bytes(g[24..32].try_into().unwrap());
            assert_eq!(entry, 0x20_0000);
        }
    }
}
