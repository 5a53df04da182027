//! Boot MSRs (Intel SDM vol. 4 "Model-Specific Registers"); the set Firecracker
//! and vmm-reference program before the first KVM_RUN.

use kvm_bindings::{kvm_msr_entry, Msrs};

use super::ArchError;

/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_STAR (syscall segments).
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR (64-bit syscall entry).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR (compat syscall entry).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK (syscall RFLAGS mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// IA32_KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast string operations.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRR default type: enable bit (11) | write-back (6).
pub const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The boot MSR values.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// The boot MSRs as the fam wrapper KVM_SET_MSRS takes.
pub fn boot_msrs() -> Result<Msrs, ArchError> {
    Msrs::from_entries(&boot_msr_entries()).map_err(|_| ArchError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_contents() {
        let m = boot_msrs().unwrap();
        assert_eq!(m.as_slice().len(), 11);
        let get = |i| m.as_slice().iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_LSTAR), Some(0));
        let mut idx: Vec<u32> = m.as_slice().iter().map(|e| e.index).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), 11, "no duplicate MSRs");
    }
}
