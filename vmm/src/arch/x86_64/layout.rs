//! Guest physical memory layout.
//!
//! Firecracker-style layout: every fixed address the VMM writes to, named, with
//! the document it comes from. The low 1 MiB follows the PC conventions the
//! Linux boot protocol assumes (Documentation/arch/x86/boot.rst, "Memory
//! layout"); the MMIO gap below 4 GiB holds the IOAPIC, the local APIC, KVM's
//! TSS pages and our MMIO devices.

/// Boot GDT. Any free low address works; Firecracker uses 0x500, the first byte
/// after the BIOS data area (0x400..0x500, IBM PC/AT technical reference).
pub const BOOT_GDT_START: u64 = 0x500;
/// Maximum number of GDT entries we write (null, code, data, TSS).
pub const BOOT_GDT_MAX: usize = 4;
/// Boot IDT (empty, limit 7): right after the 4-entry GDT (Firecracker `BOOT_IDT_OFFSET`).
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH: `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h),
/// Firecracker's `PVH_INFO_START`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH: module list (`hvm_modlist_entry`, one entry for the initrd), after `hvm_start_info`.
pub const MODLIST_START: u64 = 0x6040;
/// PVH: memory map (`hvm_memmap_table_entry[]`). Shares the zero-page page: the
/// two boot protocols are exclusive.
pub const MEMMAP_START: u64 = 0x7000;

/// The zero page (`struct boot_params`, Documentation/arch/x86/zero-page.rst);
/// its address is passed in RSI for the 64-bit entry (boot.rst, "64-bit BOOT PROTOCOL").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU (Firecracker `BOOT_STACK_POINTER`):
/// top of the page 0x8000..0x9000, 16-byte aligned.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// PML4 of the boot identity map (Firecracker `PML4_START`); CR3 points here.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the boot identity map (Firecracker `PDPTE_START`).
pub const PDPTE_START: u64 = 0xa000;
/// First page directory (Firecracker `PDE_START`); we use [`BOOT_PD_COUNT`]
/// consecutive pages from here (0xb000..0xf000), one per GiB mapped.
pub const PDE_START: u64 = 0xb000;
/// Number of page directories: 4 x 1 GiB of 2 MiB pages = the whole 32-bit
/// space, so the boot CPU can reach the MMIO gap without building its own tables.
pub const BOOT_PD_COUNT: u64 = 4;

/// Kernel command line (Firecracker `CMDLINE_START`); below the EBDA, above the page tables.
pub const CMDLINE_START: u64 = 0x20000;
/// `COMMAND_LINE_SIZE` on x86 (arch/x86/include/asm/setup.h), including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the Extended BIOS Data Area: RAM in E820 ends here (the classic
/// 639 KiB conventional memory limit; Firecracker `EBDA_START`).
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer and table live in the EBDA, where the MultiProcessor
/// Specification 1.4 section 4 tells the OS to search ("first kilobyte of the EBDA").
pub const MPTABLE_START: u64 = EBDA_START;
/// End of the area the MP table may use (the EBDA's first KiB, up to the VGA hole at 0xa0000).
pub const MPTABLE_END: u64 = 0xa0000;

/// Start of high memory: the protected-mode kernel is loaded at 0x100000
/// (boot.rst, "LOADING THE REST OF THE KERNEL"); E820 RAM resumes here.
pub const HIMEM_START: u64 = 0x10_0000;

/// Default `initrd_addr_max` for kernels that do not say (boot protocol < 2.03,
/// or an ELF vmlinux with no setup header): boot.rst field `initrd_addr_max`.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// 4 GiB: first address above the 32-bit space.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// Size of the MMIO gap below 4 GiB (Firecracker `MEM_32BIT_GAP_SIZE`, 768 MiB).
pub const MMIO_GAP_SIZE: u64 = 768 << 20;
/// Start of the MMIO gap (0xd000_0000). Guest RAM above this address is moved above 4 GiB.
pub const MMIO_GAP_START: u64 = FIRST_ADDR_PAST_32BITS - MMIO_GAP_SIZE;
/// MMIO devices (virtio-mmio, test devices) are allocated from the start of the gap.
pub const MMIO_DEVICES_START: u64 = MMIO_GAP_START;
/// Size of one MMIO device window (one page; virtio-mmio spec 4.2.2 uses 0x200 bytes of registers).
pub const MMIO_DEVICE_WINDOW: u64 = 0x1000;

/// IOAPIC base address (Intel 82093AA datasheet; MP spec 1.4 default configuration).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address (Intel SDM vol. 3A 10.4.1, `IA32_APIC_BASE` default).
pub const APIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the real-mode TSS on Intel (KVM_SET_TSS_ADDR,
/// Documentation/virt/kvm/api.rst); inside the gap, so never guest RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// Entry offset of the 64-bit kernel: `startup_64` is at the load address + 0x200
/// (boot.rst, "64-bit BOOT PROTOCOL").
pub const LINUX64_ENTRY_OFFSET: u64 = 0x200;

/// Page size used for alignment of the initrd and the page tables.
pub const PAGE_SIZE: u64 = 0x1000;

/// Guest RAM ranges for `mem_size` bytes of RAM: everything below the MMIO gap,
/// and what does not fit there continues at 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MMIO_GAP_START),
        ]
    }
}

/// End (exclusive) of RAM below 4 GiB.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_areas_do_not_overlap() {
        // (start, end) of every fixed area the VMM writes.
        let mut areas = [
            (BOOT_GDT_START, BOOT_GDT_START + 8 * BOOT_GDT_MAX as u64),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (ZERO_PAGE_START, ZERO_PAGE_START + PAGE_SIZE),
            (BOOT_STACK_POINTER - 0xff0, BOOT_STACK_POINTER + 0x10),
            (PML4_START, PML4_START + PAGE_SIZE),
            (PDPTE_START, PDPTE_START + PAGE_SIZE),
            (PDE_START, PDE_START + BOOT_PD_COUNT * PAGE_SIZE),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, MPTABLE_END),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(w[0].1 <= w[1].0, "{:x?} overlaps {:x?}", w[0], w[1]);
        }
        const { assert!(MPTABLE_END <= HIMEM_START) };
        // The PVH areas overlap only the zero page, which is never used together with them.
        const { assert!(MODLIST_START + 0x20 <= MEMMAP_START) };
    }

    #[test]
    fn gap_is_below_4g_and_holds_apics_and_tss() {
        assert_eq!(MMIO_GAP_START, 0xd000_0000);
        for a in [
            IOAPIC_START,
            APIC_START,
            KVM_TSS_ADDRESS + 3 * PAGE_SIZE - 1,
        ] {
            assert!((MMIO_GAP_START..FIRST_ADDR_PAST_32BITS).contains(&a));
        }
    }

    #[test]
    fn ram_is_split_around_the_gap() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (1 << 32, (4 << 30) - MMIO_GAP_START)]
        );
        assert_eq!(low_ram_end(8 << 30), MMIO_GAP_START);
        assert_eq!(low_ram_end(64 << 20), 64 << 20);
    }
}
