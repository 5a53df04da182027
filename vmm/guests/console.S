/* Console guest: prints its kernel command line to COM1 the way Linux would
 * print text, with '|' turned into a newline, then resets. Lets a host-side
 * runner test a whole console protocol (markers, statuses) through the VMM. */
#include "abi.h"
	.code64
	.text
	.globl _start
_start:
	/* RSI = zero page; setup_header.cmd_line_ptr is at offset 0x228. */
	mov 0x228(%rsi), %ebx
	mov $COM1_PORT, %dx
1:	movzbl (%rbx), %eax
	test %al, %al
	jz 3f
	cmp $'|', %al
	jne 2f
	mov $'\n', %al
2:	out %al, %dx
	inc %rbx
	jmp 1b
3:	mov $'\n', %al
	out %al, %dx
	reset_vm
