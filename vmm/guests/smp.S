/* SMP guest, run with ApStart::AtEntry: every vCPU enters here. Each reports
 * SMP_TAG | its initial APIC id (CPUID.1:EBX[31:24]) and counts itself in
 * `arrived`; the CPU with APIC id 0 waits until all CPUID.1:EBX[23:16] CPUs
 * arrived, reports END_MAGIC and resets. Others park. No stack is used. */
#include "abi.h"
	.code64
	.text
	.globl _start
_start:
	mov $1, %eax
	cpuid
	mov %ebx, %r8d
	shr $24, %r8d                   /* APIC id */
	mov %ebx, %r9d
	shr $16, %r9d
	and $0xff, %r9d                 /* logical CPU count */
	mov %r8d, %ecx
	or $SMP_TAG, %ecx
	report %ecx
	lock incl arrived(%rip)
	test %r8d, %r8d
	jnz park
1:	pause
	mov arrived(%rip), %eax
	cmp %r9d, %eax
	jb 1b
	report $END_MAGIC
	reset_vm
park:
	pause
	jmp park
	.data
	.align 8
arrived:
	.long 0
