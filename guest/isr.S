/* isr.S: one entry stub per vector 0..47 (CPU exceptions 0..31, the 8259s' lines 32..47).
   Each pushes a dummy error code where the CPU pushes none, then its vector, and goes to
   irq_common: registers saved (pusha), irq_entry(frame) in C, registers back, iret. The
   table of stub addresses, irq_stubs, is what irq.c puts in the IDT. */

	/* The CPU pushes an error code itself for vectors 8, 10..14, 17, 21, 29 and 30
	   (Intel SDM vol. 3, table 6-1); the others get a 0. */
	.macro stub v
	.globl irq_stub_\v
irq_stub_\v:
	.if !(\v == 8 || (\v >= 10 && \v <= 14) || \v == 17 || \v == 21 || \v == 29 || \v == 30)
	pushl $0
	.endif
	pushl $\v
	jmp irq_common
	.endm

	.text
irq_common:
	pusha
	cld
	pushl %esp		/* struct irq_frame * */
	call irq_entry
	addl $4, %esp
	popa
	addl $8, %esp		/* vector, error code */
	iret

	.altmacro
	/* m applied to each number from..to (gas has no loop over a macro's argument) */
	.macro each m, from, to
	\m %from
	.if \to-\from
	each \m, %(\from+1), \to
	.endif
	.endm
	each stub, 0, 47

	.macro entry v
	.long irq_stub_\v
	.endm

	.section .rodata
	.align 4
	.globl irq_stubs
irq_stubs:
	each entry, 0, 47
