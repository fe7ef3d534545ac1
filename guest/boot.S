/* boot.S: multiboot v1 header, flat GDT, stack, .bss clear, then kmain(magic, info). */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000002	/* bit 1: ask for the memory map (mem_lower/mem_upper) */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	/* The entry point has a page of its own: GDB's call-dummy breakpoint may sit at
	   the ELF entry, and QEMU single-steps every page that holds a breakpoint. */
	.section .text.boot, "ax"
	.globl _start
_start:
	cli
	lgdt gdt_desc
	ljmp $0x08, $1f
1:	movw $0x10, %cx
	movw %cx, %ds
	movw %cx, %es
	movw %cx, %fs
	movw %cx, %gs
	movw %cx, %ss
	movl $boot_stack_top, %esp
	xorl %ebp, %ebp
	/* Zero .bss; multiboot only promises the loaded image. */
	movl %eax, %esi
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	xorl %eax, %eax
	cld
	rep stosb
	pushl %ebx		/* multiboot info */
	pushl %esi		/* magic */
	call kmain
2:	cli
	hlt
	jmp 2b

	.section .rodata
	.align 8
gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF	/* 0x08: code, flat 4 GiB */
	.quad 0x00CF92000000FFFF	/* 0x10: data, flat 4 GiB */
gdt_desc:
	.word gdt_desc - gdt - 1
	.long gdt

	.section .bss
	.align 16
	.globl boot_stack_bottom
boot_stack_bottom:
	.skip 65536
boot_stack_top:
