//! PVH boot (xen docs/misc/pvh.pandoc; Linux arch/x86/platform/pvh): the kernel's
//! XEN_ELFNOTE_PHYS32_ENTRY is entered in 32-bit protected mode with EBX pointing to
//! `struct hvm_start_info`. Written with linux-loader's `PvhBootConfigurator`.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_e820_entry;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::layout::{MEMMAP_START, MODLIST_START, PVH_INFO_START};
use super::ArchError;

/// `XEN_HVM_START_MAGIC_VALUE` (xen/include/public/arch-x86/hvm/start_info.h).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Build the start info, memory map and module list (initrd) for a PVH boot.
pub fn build_pvh(
    cmdline_addr: u64,
    e820: &[boot_e820_entry],
    initrd: Option<(u64, u64)>,
) -> BootParams {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.r#type,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: cmdline_addr,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = MODLIST_START;
    }
    let mut bp = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
    bp.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(MEMMAP_START));
    if !modules.is_empty() {
        bp.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(MODLIST_START));
    }
    bp
}

/// Write the PVH structures into guest memory.
pub fn write_pvh<M: GuestMemoryBackend>(mem: &M, bp: &BootParams) -> Result<(), ArchError> {
    PvhBootConfigurator::write_bootparams::<M>(bp, mem)
        .map_err(|e| ArchError::BootConfigurator(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::bootparams::e820_entries;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn start_info_layout() {
        let e820 = e820_entries(128 << 20).unwrap();
        let bp = build_pvh(0x20000, &e820, Some((0x700_0000, 0x4321)));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_pvh(&mem, &bp).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.cmdline_paddr, info.memmap_entries), (0x20000, 2));
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, MODLIST_START));
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x700_0000, 0x4321));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(MEMMAP_START + 24)).unwrap();
        assert_eq!(
            (e.addr, e.size, e.type_),
            (0x10_0000, (128 << 20) - 0x10_0000, 1)
        );
        let no_initrd = build_pvh(0x20000, &e820, None);
        assert!(no_initrd.modules.is_none());
    }
}
