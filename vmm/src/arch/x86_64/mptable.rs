//! Intel MultiProcessor Specification 1.4 tables (floating pointer + configuration
//! table), so a Linux guest without ACPI finds its CPUs, the IOAPIC and the ISA IRQ
//! routing. Structs mirror arch/x86/include/asm/mpspec_def.h; content as in
//! Firecracker's and vmm-reference's `mptable`.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{APIC_START, IOAPIC_START, MPTABLE_END, MPTABLE_START};
use super::ArchError;

/// "_MP_" (MP spec 4.1).
pub const SMP_MAGIC_IDENT: [u8; 4] = *b"_MP_";
/// "PCMP" (MP spec 4.2).
pub const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
/// Spec revision 1.4.
pub const MPC_SPEC: u8 = 4;
/// Local APIC version reported for every CPU and the IOAPIC (integrated APIC, 0x14).
pub const APIC_VERSION: u8 = 0x14;
/// Entry types (MP spec table 4-3).
pub const MP_PROCESSOR: u8 = 0;
/// Bus entry.
pub const MP_BUS: u8 = 1;
/// IOAPIC entry.
pub const MP_IOAPIC: u8 = 2;
/// I/O interrupt assignment entry.
pub const MP_INTSRC: u8 = 3;
/// Local interrupt assignment entry.
pub const MP_LINTSRC: u8 = 4;
/// CPU flags: enabled, bootstrap processor.
pub const CPU_ENABLED: u8 = 1;
/// Bootstrap processor flag.
pub const CPU_BOOTPROCESSOR: u8 = 2;
/// CPU signature (family 6) and feature flags (FPU, APIC) reported in processor entries.
pub const CPU_STEPPING: u32 = 0x600;
/// CPUID.1:EDX APIC bit.
pub const CPU_FEATURE_APIC: u32 = 0x200;
/// CPUID.1:EDX FPU bit.
pub const CPU_FEATURE_FPU: u32 = 0x001;
/// IOAPIC usable flag.
pub const MPC_APIC_USABLE: u8 = 1;
/// Interrupt types (MP spec table 4-9): vectored INT, NMI, ExtINT.
pub const MP_INT: u8 = 0;
/// NMI.
pub const MP_NMI: u8 = 1;
/// ExtINT (8259 passthrough).
pub const MP_EXTINT: u8 = 3;
/// ISA bus type string.
pub const BUS_TYPE_ISA: [u8; 6] = *b"ISA   ";
/// IOAPIC inputs routed 1:1 from ISA IRQs (the KVM in-kernel IOAPIC has 24 pins).
pub const IOAPIC_PINS: u8 = 24;

/// MP floating pointer structure (16 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpfIntel {
    /// "_MP_".
    pub signature: [u8; 4],
    /// Physical address of the configuration table.
    pub physptr: u32,
    /// Length in 16-byte paragraphs (1).
    pub length: u8,
    /// Spec revision.
    pub specification: u8,
    /// Makes the 16 bytes sum to 0.
    pub checksum: u8,
    /// Feature bytes (0: a configuration table is present).
    pub feature: [u8; 5],
}
// SAFETY: plain old data, every bit pattern valid, no padding (packed).
unsafe impl ByteValued for MpfIntel {}

/// MP configuration table header (44 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcTable {
    /// "PCMP".
    pub signature: [u8; 4],
    /// Length of the header and all entries.
    pub length: u16,
    /// Spec revision.
    pub spec: u8,
    /// Makes the whole table sum to 0.
    pub checksum: u8,
    /// OEM id.
    pub oem: [u8; 8],
    /// Product id.
    pub productid: [u8; 12],
    /// OEM table pointer (0: none).
    pub oemptr: u32,
    /// OEM table size.
    pub oemsize: u16,
    /// Number of entries.
    pub oemcount: u16,
    /// Local APIC address.
    pub lapic: u32,
    /// Extended table length / checksum / reserved.
    pub reserved: u32,
}
// SAFETY: as above.
unsafe impl ByteValued for MpcTable {}

/// Processor entry (20 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcCpu {
    /// MP_PROCESSOR.
    pub type_: u8,
    /// Local APIC id.
    pub apicid: u8,
    /// Local APIC version.
    pub apicver: u8,
    /// CPU_ENABLED | CPU_BOOTPROCESSOR.
    pub cpuflag: u8,
    /// CPU signature.
    pub cpufeature: u32,
    /// Feature flags.
    pub featureflag: u32,
    /// Reserved.
    pub reserved: [u32; 2],
}
// SAFETY: as above.
unsafe impl ByteValued for MpcCpu {}

/// Bus entry (8 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcBus {
    /// MP_BUS.
    pub type_: u8,
    /// Bus id.
    pub busid: u8,
    /// Bus type string.
    pub bustype: [u8; 6],
}
// SAFETY: as above.
unsafe impl ByteValued for MpcBus {}

/// IOAPIC entry (8 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcIoapic {
    /// MP_IOAPIC.
    pub type_: u8,
    /// IOAPIC id.
    pub apicid: u8,
    /// Version.
    pub apicver: u8,
    /// MPC_APIC_USABLE.
    pub flags: u8,
    /// MMIO address.
    pub apicaddr: u32,
}
// SAFETY: as above.
unsafe impl ByteValued for MpcIoapic {}

/// I/O interrupt entry (8 bytes); the same layout serves local interrupt entries.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcIntsrc {
    /// MP_INTSRC or MP_LINTSRC.
    pub type_: u8,
    /// Interrupt type.
    pub irqtype: u8,
    /// Polarity / trigger (0: bus default).
    pub irqflag: u16,
    /// Source bus.
    pub srcbus: u8,
    /// Source bus IRQ.
    pub srcbusirq: u8,
    /// Destination APIC id (0xff: all).
    pub dstapic: u8,
    /// Destination pin / LINT#.
    pub dstirq: u8,
}
// SAFETY: as above.
unsafe impl ByteValued for MpcIntsrc {}

/// Size of the whole structure (floating pointer + table) for `num_cpus`.
pub const fn mptable_size(num_cpus: u8) -> usize {
    size_of::<MpfIntel>()
        + size_of::<MpcTable>()
        + size_of::<MpcCpu>() * num_cpus as usize
        + size_of::<MpcBus>()
        + size_of::<MpcIoapic>()
        + size_of::<MpcIntsrc>() * (IOAPIC_PINS as usize + 2)
}

/// Most CPUs whose table fits in the EBDA kilobyte the spec tells the OS to search.
pub const fn max_cpus() -> u8 {
    (((MPTABLE_END - MPTABLE_START) as usize - mptable_size(0)) / size_of::<MpcCpu>()) as u8
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Build the MP floating pointer and configuration table for `num_cpus` CPUs
/// (APIC ids 0..num_cpus), placed at `base`. Returns the bytes.
pub fn build_mptable(num_cpus: u8, base: u64) -> Result<Vec<u8>, ArchError> {
    if num_cpus == 0 || num_cpus > max_cpus() {
        return Err(ArchError::TooManyCpus {
            requested: num_cpus,
            max: max_cpus(),
        });
    }
    let ioapic_id = num_cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let e = MpcCpu {
            type_: MP_PROCESSOR,
            apicid: cpu,
            apicver: APIC_VERSION,
            cpuflag: CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 },
            cpufeature: CPU_STEPPING,
            featureflag: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
            reserved: [0; 2],
        };
        entries.extend_from_slice(e.as_slice());
        count += 1;
    }
    let bus = MpcBus {
        type_: MP_BUS,
        busid: 0,
        bustype: BUS_TYPE_ISA,
    };
    entries.extend_from_slice(bus.as_slice());
    let ioapic = MpcIoapic {
        type_: MP_IOAPIC,
        apicid: ioapic_id,
        apicver: APIC_VERSION,
        flags: MPC_APIC_USABLE,
        apicaddr: IOAPIC_START as u32,
    };
    entries.extend_from_slice(ioapic.as_slice());
    count += 2;
    for irq in 0..IOAPIC_PINS {
        let e = MpcIntsrc {
            type_: MP_INTSRC,
            irqtype: MP_INT,
            irqflag: 0,
            srcbus: 0,
            srcbusirq: irq,
            dstapic: ioapic_id,
            dstirq: irq,
        };
        entries.extend_from_slice(e.as_slice());
        count += 1;
    }
    // LINT0 = ExtINT on the BSP, LINT1 = NMI on all CPUs.
    for (irqtype, dstapic, dstirq) in [(MP_EXTINT, 0, 0), (MP_NMI, 0xff, 1)] {
        let e = MpcIntsrc {
            type_: MP_LINTSRC,
            irqtype,
            irqflag: 0,
            srcbus: 0,
            srcbusirq: 0,
            dstapic,
            dstirq,
        };
        entries.extend_from_slice(e.as_slice());
        count += 1;
    }

    let table_addr = base + size_of::<MpfIntel>() as u64;
    let mut table = MpcTable {
        signature: MPC_SIGNATURE,
        length: (size_of::<MpcTable>() + entries.len()) as u16,
        spec: MPC_SPEC,
        checksum: 0,
        oem: *b"KCOVVMM ",
        productid: *b"000000000000",
        oemptr: 0,
        oemsize: 0,
        oemcount: count,
        lapic: APIC_START as u32,
        reserved: 0,
    };
    let sum = checksum(table.as_slice()).wrapping_add(checksum(&entries));
    table.checksum = 0u8.wrapping_sub(sum);

    let mut mpf = MpfIntel {
        signature: SMP_MAGIC_IDENT,
        physptr: u32::try_from(table_addr).map_err(|_| ArchError::Overflow)?,
        length: 1,
        specification: MPC_SPEC,
        checksum: 0,
        feature: [0; 5],
    };
    mpf.checksum = 0u8.wrapping_sub(checksum(mpf.as_slice()));

    let mut out = Vec::with_capacity(mptable_size(num_cpus));
    out.extend_from_slice(mpf.as_slice());
    out.extend_from_slice(table.as_slice());
    out.extend_from_slice(&entries);
    debug_assert_eq!(out.len(), mptable_size(num_cpus));
    Ok(out)
}

/// Write the MP table for `num_cpus` CPUs at [`MPTABLE_START`].
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), ArchError> {
    let bytes = build_mptable(num_cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| ArchError::WriteMemory("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn struct_sizes_match_the_spec() {
        assert_eq!(size_of::<MpfIntel>(), 16);
        assert_eq!(size_of::<MpcTable>(), 44);
        assert_eq!(size_of::<MpcCpu>(), 20);
        assert_eq!(size_of::<MpcBus>(), 8);
        assert_eq!(size_of::<MpcIoapic>(), 8);
        assert_eq!(size_of::<MpcIntsrc>(), 8);
        assert!(mptable_size(max_cpus()) as u64 <= MPTABLE_END - MPTABLE_START);
        assert!(mptable_size(max_cpus() + 1) as u64 > MPTABLE_END - MPTABLE_START);
        assert!(max_cpus() >= 32);
    }

    #[test]
    fn checksums_and_contents() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        for n in [1u8, 2, 4, max_cpus()] {
            setup_mptable(&mem, n).unwrap();
            let mpf: MpfIntel = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
            let mut raw = vec![0u8; 16];
            mem.read_slice(&mut raw, GuestAddress(MPTABLE_START))
                .unwrap();
            assert_eq!(checksum(&raw), 0, "floating pointer checksum");
            assert_eq!(mpf.signature, *b"_MP_");
            assert_eq!({ mpf.physptr } as u64, MPTABLE_START + 16);
            let table: MpcTable = mem.read_obj(GuestAddress(u64::from(mpf.physptr))).unwrap();
            assert_eq!(table.signature, *b"PCMP");
            let mut raw = vec![0u8; table.length as usize];
            mem.read_slice(&mut raw, GuestAddress(u64::from(mpf.physptr)))
                .unwrap();
            assert_eq!(checksum(&raw), 0, "table checksum");
            assert_eq!({ table.oemcount } as usize, n as usize + 2 + 24 + 2);
            assert_eq!({ table.lapic }, 0xfee0_0000);
            // Walk the processor entries.
            let mut off = u64::from(mpf.physptr) + 44;
            for cpu in 0..n {
                let c: MpcCpu = mem.read_obj(GuestAddress(off)).unwrap();
                assert_eq!((c.type_, c.apicid), (MP_PROCESSOR, cpu));
                assert_eq!(c.cpuflag & CPU_BOOTPROCESSOR != 0, cpu == 0);
                off += 20;
            }
            let bus: MpcBus = mem.read_obj(GuestAddress(off)).unwrap();
            assert_eq!((bus.type_, bus.bustype), (MP_BUS, *b"ISA   "));
            let io: MpcIoapic = mem.read_obj(GuestAddress(off + 8)).unwrap();
            assert_eq!(
                (io.type_, io.apicid, { io.apicaddr }),
                (MP_IOAPIC, n + 1, 0xfec0_0000)
            );
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(build_mptable(0, MPTABLE_START).is_err());
        assert!(build_mptable(max_cpus() + 1, MPTABLE_START).is_err());
    }
}
