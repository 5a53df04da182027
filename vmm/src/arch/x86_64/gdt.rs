//! GDT entries and the KVM segments derived from them
//! (Intel SDM vol. 3A 3.4.5 "Segment Descriptors"; layout as in rust-vmm/vmm-reference and Firecracker).

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::BOOT_GDT_START;
use super::ArchError;

/// Flags of a 64-bit code segment: G, L, P, DPL 0, S, type execute/read accessed (0xa09b).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit flat code segment: G, D/B, P, S, type execute/read accessed (0xc09b).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a flat data segment: G, D/B, P, S, type read/write accessed (0xc093).
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of a 32/64-bit busy TSS: P, type 0xb (0x808b).
pub const TSS_FLAGS: u16 = 0x808b;

/// Build a GDT descriptor from `flags` (bits 8..15 access byte, 12..15 of the
/// high nibble: G, D/B, L, AVL), a 32-bit base and a 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn get_base(entry: u64) -> u64 {
    (((entry) & 0xff00_0000_0000_0000) >> 32)
        | (((entry) & 0x0000_00ff_0000_0000) >> 16)
        | (((entry) & 0x0000_0000_ffff_0000) >> 16)
}

fn get_limit(entry: u64) -> u32 {
    let limit =
        ((((entry) & 0x000f_0000_0000_0000) >> 32) | ((entry) & 0x0000_0000_0000_ffff)) as u32;
    // With G set the limit is in 4 KiB units.
    if get_g(entry) == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

fn bit(entry: u64, b: u32) -> u8 {
    ((entry >> b) & 1) as u8
}
fn get_g(entry: u64) -> u8 {
    bit(entry, 55)
}

/// The KVM segment register value for GDT entry `entry` at index `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: get_base(entry),
        limit: get_limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(entry, 47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: get_g(entry),
        avl: bit(entry, 52),
        padding: 0,
        unusable: if bit(entry, 47) == 0 { 1 } else { 0 },
    }
}

/// GDT for the 64-bit Linux entry: null, code (0x08), data (0x10), TSS (0x18).
pub fn long_mode_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// GDT for the 32-bit PVH entry (xen docs/misc/pvh.pandoc: flat 4 GiB segments):
/// null, code (0x08), data (0x10), TSS (0x18).
pub fn protected_mode_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(CODE32_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Write a GDT at [`BOOT_GDT_START`].
pub fn write_gdt<M: GuestMemoryBackend>(mem: &M, gdt: &[u64]) -> Result<(), ArchError> {
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(|_| ArchError::WriteMemory("GDT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_encodings() {
        // Values every x86 VMM (Firecracker, vmm-reference, crosvm) uses.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0, 0, 0), 0);
    }

    #[test]
    fn segments_from_entries() {
        let gdt = long_mode_gdt();
        let cs = kvm_segment_from_gdt(gdt[1], 1);
        assert_eq!(cs.selector, 8);
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.s, cs.dpl, cs.g),
            (1, 0, 1, 1, 0, 1)
        );
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        let ds = kvm_segment_from_gdt(gdt[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 3, 1, 0));
        let tss = kvm_segment_from_gdt(gdt[3], 3);
        assert_eq!(
            (tss.selector, tss.type_, tss.s, tss.unusable),
            (0x18, 0xb, 0, 0)
        );
        let null = kvm_segment_from_gdt(gdt[0], 0);
        assert_eq!(null.unusable, 1);
        let cs32 = kvm_segment_from_gdt(protected_mode_gdt()[1], 1);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        // Base bits are scattered over the descriptor.
        let e = gdt_entry(DATA_FLAGS, 0x1234_5678, 0xabcde);
        assert_eq!(get_base(e), 0x1234_5678);
        assert_eq!(get_limit(e), 0xabcd_efff);
    }
}
