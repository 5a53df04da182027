/* Touches ports and MMIO nobody claims, reports what the reads returned, then
 * resets. Reports: BOOT_MAGIC, inb 0x1234, inl 0x4320, MMIO readl UNCLAIMED_MMIO,
 * MMIO readq UNCLAIMED_MMIO+8 (low, high), END_MAGIC. */
#include "abi.h"
	.code64
	.text
	.globl _start
_start:
	report $BOOT_MAGIC
	mov $0x1234, %dx
	mov $0x5a, %al
	out %al, %dx                    /* unclaimed byte write */
	mov $0x2f8, %dx
	out %al, %dx                    /* COM2: not emulated */
	mov $0x4320, %dx
	mov $0xdeadbeef, %eax
	out %eax, %dx                   /* unclaimed dword write */
	mov $0x1234, %dx
	xor %eax, %eax
	in %dx, %al                     /* unclaimed byte read */
	report %eax
	mov $0x4320, %dx
	xor %eax, %eax
	in %dx, %eax                    /* unclaimed dword read */
	report %eax
	mov $UNCLAIMED_MMIO, %edi
	movl $0x12345678, (%rdi)        /* unclaimed MMIO write */
	movq $-1, 16(%rdi)
	mov (%rdi), %ecx                /* unclaimed MMIO read */
	report %ecx
	mov 8(%rdi), %r8
	report %r8d
	shr $32, %r8
	report %r8d
	report $END_MAGIC
	reset_vm
