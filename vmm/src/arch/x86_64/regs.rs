//! Initial register state for the two boot protocols (plain kvm-bindings data;
//! the VM applies it with KVM_SET_REGS / KVM_SET_SREGS / KVM_SET_FPU).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt::{kvm_segment_from_gdt, long_mode_gdt, protected_mode_gdt};
use super::layout::{
    BOOT_GDT_MAX, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PVH_INFO_START,
    ZERO_PAGE_START,
};

/// CR0.PE: protected mode (Intel SDM vol. 3A 2.5).
pub const X86_CR0_PE: u64 = 0x1;
/// CR0.ET: extension type, hard-wired to 1 on modern CPUs.
pub const X86_CR0_ET: u64 = 0x10;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 0x8000_0000;
/// CR4.PAE: physical address extension, required for long mode.
pub const X86_CR4_PAE: u64 = 0x20;
/// EFER.LME: long mode enable (AMD APM vol. 2 3.1.7; Intel SDM 2.2.1).
pub const EFER_LME: u64 = 0x100;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 0x400;
/// RFLAGS bit 1 is reserved and always 1.
pub const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word after FNINIT (Intel SDM vol. 1 8.1.5).
pub const FPU_FCW: u16 = 0x37f;
/// MXCSR reset value (Intel SDM vol. 1 10.2.3).
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// General registers for the 64-bit Linux entry: RIP = entry, RSI = zero page
/// (boot.rst "64-bit BOOT PROTOCOL"), a small stack, interrupts off.
pub fn linux64_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// General registers for the PVH entry: EBX = `hvm_start_info` (xen docs/misc/pvh.pandoc).
pub fn pvh_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rbx: PVH_INFO_START,
        ..Default::default()
    }
}

fn set_segments(sregs: &mut kvm_sregs, gdt: &[u64; BOOT_GDT_MAX]) {
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of::<u64>() * BOOT_GDT_MAX) as u16 - 1;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = std::mem::size_of::<u64>() as u16 - 1;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
}

/// Special registers for the 64-bit entry: long mode with paging on through the
/// identity map at `cr3`, flat segments from [`long_mode_gdt`].
pub fn long_mode_sregs(sregs: &mut kvm_sregs, cr3: u64) {
    set_segments(sregs, &long_mode_gdt());
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// Special registers for the PVH entry: 32-bit protected mode, paging off, flat
/// segments from [`protected_mode_gdt`] (xen docs/misc/pvh.pandoc).
pub fn protected_mode_sregs(sregs: &mut kvm_sregs) {
    set_segments(sregs, &protected_mode_gdt());
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// FPU state after FNINIT with SSE enabled.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux64_state() {
        let r = linux64_regs(0x100_0200);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0200, 0x7000, 0x8ff0, 2)
        );
        let mut s = kvm_sregs::default();
        long_mode_sregs(&mut s, 0x9000);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (s.cs.selector, s.cs.l, s.ds.selector, s.tr.selector),
            (8, 1, 0x10, 0x18)
        );
        assert_eq!(
            (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit),
            (0x500, 31, 0x520, 7)
        );
    }

    #[test]
    fn pvh_state() {
        let r = pvh_regs(0x100_0000);
        assert_eq!((r.rip, r.rbx), (0x100_0000, PVH_INFO_START));
        let mut s = kvm_sregs {
            efer: EFER_LME,
            cr0: X86_CR0_PG,
            ..Default::default()
        };
        protected_mode_sregs(&mut s);
        assert_eq!((s.cr0, s.cr4, s.efer), (X86_CR0_PE | X86_CR0_ET, 0, 0));
        assert_eq!((s.cs.db, s.cs.l), (1, 0));
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }
}
