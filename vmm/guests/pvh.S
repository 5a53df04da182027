/* PVH guest: an ELF with a XEN_ELFNOTE_PHYS32_ENTRY note (xen
 * docs/misc/pvh.pandoc). Entered in 32-bit protected mode, paging off,
 * EBX = hvm_start_info. Reports BOOT_MAGIC, EBX, start_info magic,
 * cmdline_paddr, memmap_entries, END_MAGIC; then resets. */
#include "abi.h"
	.section .note.Xen, "a", @note
	.align 4
	.long 4                         /* namesz "Xen\0" */
	.long 4                         /* descsz */
	.long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start32
	.text
	.code32
	.globl _start
_start:
pvh_start32:
	report $BOOT_MAGIC
	report %ebx
	report 0(%ebx)                  /* magic */
	report 24(%ebx)                 /* cmdline_paddr (low half) */
	report 48(%ebx)                 /* memmap_entries */
	report $END_MAGIC
	mov $I8042_RESET, %al
	out %al, $I8042_CMD
1:	jmp 1b
