//! The zero page (`struct boot_params`) for the Linux 64-bit boot protocol, its
//! E820 map, and where the command line and the initrd go.
//!
//! The structs are linux-loader's bindgen of arch/x86/include/uapi/asm/bootparam.h;
//! writing them to guest memory is linux-loader's `LinuxBootConfigurator`.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::layout::*;
use super::ArchError;

/// E820 type of usable RAM (ACPI spec "Address Range Types", `E820_TYPE_RAM`).
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory (`E820_TYPE_RESERVED`).
pub const E820_RESERVED: u32 = 2;

/// `boot_flag` magic at 0x1fe (boot.rst).
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` magic "HdrS" at 0x202 (boot.rst).
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` 0xff: "undefined" boot loader (boot.rst, `type_of_loader`).
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `kernel_alignment` for an ELF vmlinux that has no header (boot.rst field
/// `kernel_alignment`); 16 MiB as in Firecracker and linux-loader's examples.
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// `loadflags` bit 0, LOADED_HIGH: protected-mode code is loaded at 0x100000 (boot.rst).
pub const LOADED_HIGH: u8 = 0x01;
/// `loadflags` bit 7, CAN_USE_HEAP (boot.rst).
pub const CAN_USE_HEAP: u8 = 0x80;

/// The E820 map for `mem_size` bytes of RAM: conventional memory up to the EBDA,
/// then RAM from 1 MiB to the MMIO gap, then (if any) the rest above 4 GiB.
pub fn e820_entries(mem_size: u64) -> Result<Vec<boot_e820_entry>, ArchError> {
    if mem_size < HIMEM_START {
        return Err(ArchError::MemoryTooSmall {
            need: HIMEM_START,
            have: mem_size,
        });
    }
    let mut v = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        r#type: E820_RAM,
    }];
    for (start, len) in ram_ranges(mem_size) {
        let (start, len) = if start == 0 {
            (HIMEM_START, len - HIMEM_START)
        } else {
            (start, len)
        };
        if len > 0 {
            v.push(boot_e820_entry {
                addr: start,
                size: len,
                r#type: E820_RAM,
            });
        }
    }
    Ok(v)
}

/// Capacity (bytes including the NUL) of the command line the kernel accepts.
///
/// boot.rst: `cmdline_size` (protocol 2.06+) is the maximum length without the
/// NUL; older kernels take 255 characters. Capped at [`CMDLINE_MAX_SIZE`], the
/// space the layout reserves.
pub fn cmdline_capacity(hdr: Option<&setup_header>) -> usize {
    match hdr {
        Some(h) if h.version >= 0x0206 && h.cmdline_size > 0 => (h.cmdline_size as usize)
            .saturating_add(1)
            .min(CMDLINE_MAX_SIZE),
        Some(_) => 256,
        None => CMDLINE_MAX_SIZE,
    }
}

/// The highest address (inclusive) the initrd may end at, from the kernel's header.
pub fn initrd_addr_max(hdr: Option<&setup_header>) -> u64 {
    match hdr {
        // initrd_addr_max is valid from protocol 2.03 (boot.rst).
        Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        _ => DEFAULT_INITRD_ADDR_MAX,
    }
}

/// Place an initrd of `size` bytes at the top of low memory: page-aligned, ending
/// below the MMIO gap, below the kernel's `initrd_addr_max` and above `kernel_end`.
pub fn initrd_placement(
    size: u64,
    mem_size: u64,
    addr_max: u64,
    kernel_end: u64,
) -> Result<u64, ArchError> {
    // One past the last byte we may use.
    let top = low_ram_end(mem_size).min(addr_max.saturating_add(1));
    let need = kernel_end
        .checked_add(size)
        .and_then(|n| n.checked_add(PAGE_SIZE))
        .ok_or(ArchError::Overflow)?;
    let start = top
        .checked_sub(size)
        .map(|s| s & !(PAGE_SIZE - 1))
        .filter(|s| *s >= kernel_end && *s >= HIMEM_START)
        .ok_or(ArchError::MemoryTooSmall {
            need,
            have: mem_size,
        })?;
    Ok(start)
}

/// What goes into the zero page besides the kernel's own header.
#[derive(Debug, Clone)]
pub struct ZeroPageSpec<'a> {
    /// The setup header copied from a bzImage (offset 0x1f1); `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Length of the command line without the NUL.
    pub cmdline_len: usize,
    /// (address, size) of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub e820: &'a [boot_e820_entry],
}

/// Build `struct boot_params` for the 64-bit boot protocol.
pub fn build_boot_params(spec: &ZeroPageSpec<'_>) -> Result<boot_params, ArchError> {
    let mut params = boot_params::default();
    if let Some(hdr) = spec.setup_header {
        params.hdr = hdr;
    } else {
        // ELF vmlinux: no header in the image; fill what the kernel checks.
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        params.hdr.cmdline_size = (CMDLINE_MAX_SIZE - 1) as u32;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = u32::try_from(spec.cmdline_addr).map_err(|_| ArchError::Overflow)?;
    params.ext_cmd_line_ptr = 0;
    if spec.cmdline_len >= CMDLINE_MAX_SIZE {
        return Err(ArchError::CmdlineTooLong {
            len: spec.cmdline_len,
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    if let Some((addr, size)) = spec.initrd {
        params.hdr.ramdisk_image = u32::try_from(addr).map_err(|_| ArchError::Overflow)?;
        params.hdr.ramdisk_size = u32::try_from(size).map_err(|_| ArchError::Overflow)?;
    }
    if spec.e820.len() > params.e820_table.len() {
        return Err(ArchError::TooManyE820Entries);
    }
    for (slot, e) in params.e820_table.iter_mut().zip(spec.e820) {
        *slot = *e;
    }
    params.e820_entries = spec.e820.len() as u8;
    Ok(params)
}

/// Write the zero page at [`ZERO_PAGE_START`] with linux-loader's configurator.
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    params: &boot_params,
) -> Result<(), ArchError> {
    let bp = BootParams::new::<boot_params>(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<M>(&bp, mem)
        .map_err(|e| ArchError::BootConfigurator(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{ByteValued, Bytes, GuestMemoryMmap};

    #[test]
    fn e820_small_memory() {
        let e = e820_entries(512 << 20).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            ({ e[0].addr }, { e[0].size }, { e[0].r#type }),
            (0, 0x9fc00, E820_RAM)
        );
        assert_eq!(
            ({ e[1].addr }, { e[1].size }, { e[1].r#type }),
            (0x10_0000, (512 << 20) - 0x10_0000, E820_RAM)
        );
    }

    #[test]
    fn e820_splits_around_mmio_gap() {
        let e = e820_entries(4 << 30).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!({ e[1].addr } + { e[1].size }, MMIO_GAP_START);
        assert_eq!({ e[2].addr }, 1 << 32);
        assert_eq!({ e[2].size }, (4 << 30) - MMIO_GAP_START);
        let total: u64 = e.iter().map(|e| e.size).sum();
        // All RAM except 0x9fc00..0x100000 (EBDA, VGA, BIOS) is reported.
        assert_eq!(total, (4 << 30) - (HIMEM_START - EBDA_START));
        // Exactly at the gap: no high entry.
        assert_eq!(e820_entries(MMIO_GAP_START).unwrap().len(), 2);
        assert!(e820_entries(0x8_0000).is_err());
    }

    #[test]
    fn initrd_at_top_of_low_memory() {
        let mem = 512u64 << 20;
        let a = initrd_placement(0x1234, mem, DEFAULT_INITRD_ADDR_MAX, 0x40_0000).unwrap();
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(a + 0x1234 <= mem);
        assert!(mem - (a + 0x1234) < PAGE_SIZE);
        // Large memory: below the gap and below initrd_addr_max.
        let a = initrd_placement(0x10_0000, 8 << 30, 0x7fff_ffff, 0x40_0000).unwrap();
        assert_eq!(a, 0x8000_0000 - 0x10_0000);
        let a = initrd_placement(0x10_0000, 8 << 30, 0xffff_ffff, 0x40_0000).unwrap();
        assert_eq!(a, MMIO_GAP_START - 0x10_0000);
        // Too big: does not fit above the kernel.
        let err = initrd_placement(
            500 << 20,
            mem,
            DEFAULT_INITRD_ADDR_MAX,
            0x100_0000 + (20 << 20),
        );
        assert!(matches!(err, Err(ArchError::MemoryTooSmall { .. })));
        assert!(initrd_placement(u64::MAX, mem, DEFAULT_INITRD_ADDR_MAX, 0).is_err());
    }

    #[test]
    fn header_limits() {
        assert_eq!(initrd_addr_max(None), DEFAULT_INITRD_ADDR_MAX);
        let mut h = setup_header {
            version: 0x020f,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 4095,
            ..Default::default()
        };
        assert_eq!(initrd_addr_max(Some(&h)), 0x7fff_ffff);
        assert_eq!(cmdline_capacity(Some(&h)), CMDLINE_MAX_SIZE);
        h.cmdline_size = 100;
        assert_eq!(cmdline_capacity(Some(&h)), 101);
        h.version = 0x0202;
        assert_eq!(initrd_addr_max(Some(&h)), DEFAULT_INITRD_ADDR_MAX);
        assert_eq!(cmdline_capacity(Some(&h)), 256);
        assert_eq!(cmdline_capacity(None), CMDLINE_MAX_SIZE);
    }

    #[test]
    fn zero_page_fields_at_documented_offsets() {
        let e820 = e820_entries(256 << 20).unwrap();
        let spec = ZeroPageSpec {
            setup_header: None,
            cmdline_addr: CMDLINE_START,
            cmdline_len: 10,
            initrd: Some((0x0ff0_0000, 0x1234)),
            e820: &e820,
        };
        let p = build_boot_params(&spec).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_params(&mem, &p).unwrap();
        let z = ZERO_PAGE_START;
        let r16 = |o: u64| mem.read_obj::<u16>(GuestAddress(z + o)).unwrap();
        let r32 = |o: u64| mem.read_obj::<u32>(GuestAddress(z + o)).unwrap();
        let r8 = |o: u64| mem.read_obj::<u8>(GuestAddress(z + o)).unwrap();
        let r64 = |o: u64| mem.read_obj::<u64>(GuestAddress(z + o)).unwrap();
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(r16(0x1fe), KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(r32(0x202), KERNEL_HDR_MAGIC);
        assert_eq!(r8(0x210), 0xff);
        assert_eq!(r32(0x218), 0x0ff0_0000);
        assert_eq!(r32(0x21c), 0x1234);
        assert_eq!(r32(0x228), CMDLINE_START as u32);
        assert_eq!(r8(0x1e8), 2);
        assert_eq!(r64(0x2d0), 0);
        assert_eq!(r64(0x2d8), EBDA_START);
        assert_eq!(r32(0x2e0), E820_RAM);
        assert_eq!(r64(0x2d0 + 20), HIMEM_START);
        assert_eq!(p.as_slice().len(), 4096);
    }

    #[test]
    fn zero_page_keeps_bzimage_header_and_rejects_bad_input() {
        let hdr = setup_header {
            header: KERNEL_HDR_MAGIC,
            version: 0x020f,
            setup_sects: 27,
            ..Default::default()
        };
        let e820 = e820_entries(256 << 20).unwrap();
        let mut spec = ZeroPageSpec {
            setup_header: Some(hdr),
            cmdline_addr: CMDLINE_START,
            cmdline_len: 0,
            initrd: None,
            e820: &e820,
        };
        let p = build_boot_params(&spec).unwrap();
        assert_eq!({ p.hdr.setup_sects }, 27);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        spec.initrd = Some((1 << 33, 1));
        assert!(matches!(build_boot_params(&spec), Err(ArchError::Overflow)));
        spec.initrd = None;
        spec.cmdline_len = CMDLINE_MAX_SIZE;
        assert!(build_boot_params(&spec).is_err());
        let many = vec![e820[0]; 200];
        spec.cmdline_len = 1;
        spec.e820 = &many;
        assert!(matches!(
            build_boot_params(&spec),
            Err(ArchError::TooManyE820Entries)
        ));
    }
}
