/* irq.h: the IDT, exception stubs and the 8259 pair: interrupts for the driver's irq mode.
   The guest runs with interrupts off (IF clear); only irq_wait() opens them, inside hlt. */
#ifndef IRQ_H
#define IRQ_H
#include <stdint.h>
#include "piix3.h"

#define IRQ_VECTOR_BASE 0x20	/* the master's IR0..7 -> 0x20..0x27, the slave's -> 0x28..0x2F */
#define IRQ_TICK_HZ 1000	/* the PIT tick that bounds a wait in hlt */

/* Per line, what happened to its interrupts (fixed layout, read by the harness as raw memory). */
struct irq_line_stats {
	uint32_t taken;		/* delivered and handled as real (EOI sent) */
	uint32_t spurious;	/* vector 7/15 with the in-service bit clear: no real request */
	uint32_t lost;		/* the driver waited for one in irq mode and its deadline passed */
	uint32_t unclaimed;	/* real, but no command was waiting for it (or the drive was busy) */
};

/* Where the last unexpected exception left the CPU (fixed layout, raw memory). */
struct irq_exception_record {
	uint32_t count;		/* exceptions taken since boot (the first one parks the CPU) */
	uint32_t vector;
	uint32_t error;		/* the CPU's error code, 0 for vectors without one */
	uint32_t eip;
	uint32_t cs;
	uint32_t eflags;
	uint32_t cr2;		/* the faulting address of a page fault */
	uint32_t esp;		/* the stack pointer before the exception */
};

extern struct irq_line_stats irq_stats[IRQ_LINES];
extern struct irq_exception_record irq_exception;

void irq_init(void);		/* IDT, PIC remap (every line masked but the cascade and IDE), PIT tick */
void irq_wait(void);		/* sti; hlt; cli: sleep until any interrupt has been handled */
void irq_poll_pending(void);	/* open interrupts for one instruction: what is pending is taken */
void irq_tick(int on);		/* unmask (1) or mask (0) the PIT tick's line */
void irq_mask(uint32_t line);	/* set the line's bit in its controller's mask register */
void irq_unmask(uint32_t line);
uint32_t irq_pic_regs(void);	/* for humans in GDB: master IRR | slave IRR << 8 | ISRs << 16, << 24 */

#endif
