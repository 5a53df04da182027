/* Boot-contract guest: reads the zero page at RSI like Linux's startup_64 does and
 * reports what it finds, in this order, as 32-bit values on REPORT_PORT:
 *   BOOT_MAGIC, RSI, boot_flag (0x1fe), header (0x202), type_of_loader (0x210),
 *   e820_entries (0x1e8), then per entry: addr lo, addr hi, size lo, size hi, type,
 *   cmd_line_ptr (0x228), cmdline length, FNV-1a of the cmdline bytes,
 *   ramdisk_image (0x218), ramdisk_size (0x21c), FNV-1a of the initrd bytes,
 *   the value read from TESTDEV_MMIO+8 (after writing the initrd FNV to TESTDEV_MMIO+0),
 *   END_MAGIC.
 * The cmdline text itself goes byte by byte to TEXT_PORT. Then it resets the VM.
 */
#include "abi.h"
#define FNV_OFFSET 0x811c9dc5
#define FNV_PRIME  0x01000193
	.code64
	.text
	.globl _start
_start:
	mov %rsi, %rbx                  /* zero page */
	report $BOOT_MAGIC
	report %ebx
	movzwl 0x1fe(%rbx), %ecx
	report %ecx
	report 0x202(%rbx)
	movzbl 0x210(%rbx), %ecx
	report %ecx
	movzbl 0x1e8(%rbx), %r12d       /* e820_entries */
	report %r12d
	lea 0x2d0(%rbx), %r13           /* e820_table */
1:	test %r12d, %r12d
	jz 2f
	report 0(%r13)
	report 4(%r13)
	report 8(%r13)
	report 12(%r13)
	report 16(%r13)
	add $20, %r13
	dec %r12d
	jmp 1b
2:	mov 0x228(%rbx), %esi           /* cmd_line_ptr */
	report %esi
	xor %r10d, %r10d                /* length */
	mov $FNV_OFFSET, %r9d
	mov $TEXT_PORT, %dx
3:	movzbl (%rsi), %eax
	test %al, %al
	jz 4f
	out %al, %dx
	xor %eax, %r9d
	imul $FNV_PRIME, %r9d, %r9d
	inc %rsi
	inc %r10d
	jmp 3b
4:	report %r10d
	report %r9d
	mov 0x218(%rbx), %esi           /* ramdisk_image */
	mov 0x21c(%rbx), %ecx           /* ramdisk_size */
	report %esi
	report %ecx
	mov $FNV_OFFSET, %r9d
5:	test %ecx, %ecx
	jz 6f
	movzbl (%rsi), %eax
	xor %eax, %r9d
	imul $FNV_PRIME, %r9d, %r9d
	inc %rsi
	dec %ecx
	jmp 5b
6:	report %r9d
	mov $TESTDEV_MMIO, %edi
	mov %r9d, (%rdi)                /* MMIO write */
	mov 8(%rdi), %ecx               /* MMIO read */
	report %ecx
	report $END_MAGIC
	reset_vm
