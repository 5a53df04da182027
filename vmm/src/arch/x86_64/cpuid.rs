//! Per-vCPU CPUID normalisation of KVM_GET_SUPPORTED_CPUID (Intel SDM vol. 2A
//! "CPUID"; KVM paravirt leaves in Documentation/virt/kvm/x86/cpuid.rst).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::ArchError;

/// Leaf 1: EBX[31:24] initial APIC id, EBX[23:16] logical processors, EBX[15:8] CLFLUSH size.
pub const LEAF_FEATURES: u32 = 0x1;
/// Leaf 4: deterministic cache parameters.
pub const LEAF_CACHE: u32 = 0x4;
/// Leaf 0xb: extended topology (x2APIC id in EDX).
pub const LEAF_TOPOLOGY: u32 = 0xb;
/// KVM signature leaf (cpuid.rst: `KVM_CPUID_SIGNATURE`).
pub const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// KVM features leaf (`KVM_CPUID_FEATURES`).
pub const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX (cpuid.rst).
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// Leaf 1 ECX bit 31: running under a hypervisor.
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT, EBX[23:16] is valid.
pub const EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
pub const CLFLUSH_SIZE: u32 = 8;

/// Rewrite the supported CPUID for vCPU `cpu_index` of `cpu_count`:
/// APIC ids (leaf 1, leaf 0xb), topology (one thread per core, `cpu_count`
/// cores in one package), the hypervisor bit and the KVM signature leaf.
pub fn normalize_cpuid(cpuid: &mut CpuId, cpu_index: u8, cpu_count: u8) -> Result<(), ArchError> {
    if cpu_count == 0 || cpu_index >= cpu_count {
        return Err(ArchError::TooManyCpus {
            requested: cpu_index,
            max: cpu_count,
        });
    }
    let mut has_hv = false;
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (u32::from(cpu_index) << 24)
                    | (u32::from(cpu_count) << 16)
                    | (CLFLUSH_SIZE << 8)
                    | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if cpu_count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1 (0).
                e.eax = (e.eax & 0x3fff) | ((u32::from(cpu_count) - 1) << 26);
            }
            LEAF_TOPOLOGY => {
                e.edx = u32::from(cpu_index);
                match e.index {
                    // SMT level: 1 thread per core, shift 0.
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    // Core level: cpu_count cores, shift covers them.
                    1 => {
                        e.eax = 32 - (u32::from(cpu_count) - 1).leading_zeros();
                        e.ebx = u32::from(cpu_count);
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i & 0xff;
                    }
                }
            }
            LEAF_HYPERVISOR => {
                has_hv = true;
                e.eax = e.eax.max(LEAF_KVM_FEATURES);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            _ => {}
        }
    }
    if !has_hv {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: LEAF_HYPERVISOR,
                index: 0,
                flags: 0,
                eax: LEAF_KVM_FEATURES,
                ebx: KVM_SIGNATURE[0],
                ecx: KVM_SIGNATURE[1],
                edx: KVM_SIGNATURE[2],
                ..Default::default()
            })
            .map_err(|_| ArchError::CpuidFull)?;
    }
    Ok(())
}

/// Look up a leaf (helper for tests and diagnostics).
pub fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| {
            e.function == function
                && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CpuId {
        let mk = |function, index, flags| kvm_cpuid_entry2 {
            function,
            index,
            flags,
            ebx: 0xdead_beef,
            ecx: 0,
            edx: 0,
            eax: 0xffff_ffff,
            ..Default::default()
        };
        CpuId::from_entries(&[
            mk(0, 0, 0),
            mk(1, 0, 0),
            mk(4, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
            mk(0xb, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
            mk(0xb, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
        ])
        .unwrap()
    }

    #[test]
    fn apic_ids_and_topology() {
        for (idx, count) in [(0u8, 1u8), (3, 4), (7, 8)] {
            let mut c = sample();
            normalize_cpuid(&mut c, idx, count).unwrap();
            let l1 = find(&c, 1, 0).unwrap();
            assert_eq!(l1.ebx >> 24, u32::from(idx));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count));
            assert_eq!((l1.ebx >> 8) & 0xff, 8);
            assert_eq!(l1.ebx & 0xff, 0xef);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_eq!(l1.edx & EDX_HTT != 0, count > 1);
            let t0 = find(&c, 0xb, 0).unwrap();
            let t1 = find(&c, 0xb, 1).unwrap();
            assert_eq!((t0.edx, t1.edx), (u32::from(idx), u32::from(idx)));
            assert_eq!(t1.ebx, u32::from(count));
            assert!(1u32 << t1.eax >= u32::from(count));
            assert_eq!(find(&c, 4, 0).unwrap().eax >> 26, u32::from(count) - 1);
        }
    }

    #[test]
    fn hypervisor_leaf_is_kvm() {
        let mut c = sample();
        normalize_cpuid(&mut c, 0, 1).unwrap();
        let hv = find(&c, LEAF_HYPERVISOR, 0).unwrap();
        let mut sig = Vec::new();
        for r in [hv.ebx, hv.ecx, hv.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig[..9], b"KVMKVMKVM");
        assert!(hv.eax >= LEAF_KVM_FEATURES);
        // Existing leaf is rewritten, not duplicated.
        normalize_cpuid(&mut c, 0, 1).unwrap();
        let n = c
            .as_slice()
            .iter()
            .filter(|e| e.function == LEAF_HYPERVISOR)
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn rejects_index_out_of_range() {
        let mut c = sample();
        assert!(normalize_cpuid(&mut c, 2, 2).is_err());
        assert!(normalize_cpuid(&mut c, 0, 0).is_err());
    }
}
