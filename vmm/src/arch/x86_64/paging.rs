//! Identity page tables for the 64-bit entry (Intel SDM vol. 3A 4.5, "4-level paging").
//!
//! boot.rst, "64-bit BOOT PROTOCOL": the kernel must be entered with paging on
//! and the ranges holding the kernel, zero page and command line identity-mapped.
//! We map the whole first 4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..4] ->
//! four page directories of 512 2 MiB pages each.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{BOOT_PD_COUNT, PAGE_SIZE, PDE_START, PDPTE_START, PML4_START};
use super::ArchError;

/// Page-table entry bit 0: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Bit 1: read/write.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Bit 7 in a PD entry: the entry maps a 2 MiB page (PS).
pub const PTE_PAGE_SIZE: u64 = 1 << 7;
/// 2 MiB.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// The page-table pages and their contents: (guest address, 512 entries).
pub fn identity_page_tables() -> Vec<(u64, Vec<u64>)> {
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPTE_START | PTE_PRESENT | PTE_WRITABLE;
    let mut pdpt = vec![0u64; 512];
    let mut out = Vec::new();
    for gib in 0..BOOT_PD_COUNT {
        let pd_addr = PDE_START + gib * PAGE_SIZE;
        pdpt[gib as usize] = pd_addr | PTE_PRESENT | PTE_WRITABLE;
        let pd: Vec<u64> = (0..512u64)
            .map(|i| {
                ((gib * 512 + i) * LARGE_PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE
            })
            .collect();
        out.push((pd_addr, pd));
    }
    out.insert(0, (PDPTE_START, pdpt));
    out.insert(0, (PML4_START, pml4));
    out
}

/// Write the identity map into guest memory; returns the CR3 value.
pub fn write_identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<u64, ArchError> {
    for (addr, entries) in identity_page_tables() {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|_| ArchError::WriteMemory("page tables"))?;
    }
    Ok(PML4_START)
}

/// Walk the tables like the MMU does and return the physical address `va` maps to.
/// Used by tests.
pub fn translate<M: GuestMemoryBackend>(mem: &M, cr3: u64, va: u64) -> Option<u64> {
    let idx = |shift: u32| (va >> shift) & 0x1ff;
    let read = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).ok();
    let mask = 0x000f_ffff_ffff_f000u64;
    let pml4e = read((cr3 & mask) + idx(39) * 8)?;
    if pml4e & PTE_PRESENT == 0 {
        return None;
    }
    let pdpte = read((pml4e & mask) + idx(30) * 8)?;
    if pdpte & PTE_PRESENT == 0 {
        return None;
    }
    let pde = read((pdpte & mask) + idx(21) * 8)?;
    if pde & PTE_PRESENT == 0 || pde & PTE_PAGE_SIZE == 0 {
        return None;
    }
    Some((pde & !(LARGE_PAGE_SIZE - 1) & mask) | (va & (LARGE_PAGE_SIZE - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn first_4g_identity_mapped_with_2m_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = write_identity_page_tables(&mem).unwrap();
        assert_eq!(cr3, 0x9000);
        for va in [
            0u64,
            0x7000,
            0x20_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xd000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
        let pd0 = mem.read_obj::<u64>(GuestAddress(0xb000)).unwrap();
        assert_eq!(pd0, 0x83);
        let pml4 = mem.read_obj::<u64>(GuestAddress(0x9000)).unwrap();
        assert_eq!(pml4, 0xa003);
    }

    #[test]
    fn fails_cleanly_without_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        assert!(write_identity_page_tables(&mem).is_err());
    }
}
