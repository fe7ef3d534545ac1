/* irq.c: the IDT (exceptions and the 16 lines of the 8259 pair), the PIC remap and masks, the
 * PIT tick, and the dispatch of each line to its handler.
 *
 * Interrupts stay off (IF clear) everywhere but in irq_wait() (sti; hlt; cli) and
 * irq_poll_pending(): the park loop, the harness's GDB calls and the driver's polled paths
 * never see one. A request raised meanwhile waits in the controller's IRR (edge-triggered:
 * the 8259A latches the edge even while the line is masked) and is taken at the next opening.
 *
 * Acknowledge rules (Intel 8259A datasheet): an interrupt of the slave's lines needs an EOI to
 * the slave and then to the master (whose IR2 carried it); one of the master's, to the master
 * only. A request that goes away before the CPU's acknowledge cycle is answered with IR7 of
 * that controller, with the in-service bit clear: a spurious IRQ 7 (master) or 15 (slave)
 * gets no EOI from its own controller (a spurious 15 still came through the master's IR2,
 * which is in service: the master gets its EOI).
 */
#include "irq.h"
#include "ata.h"
#include "serial.h"
#include "timer.h"
#include "x86.h"

#define IDT_ENTRIES (IRQ_VECTOR_BASE + IRQ_LINES)
#define IDT_INTERRUPT_GATE 0x8E	/* present, ring 0, 32-bit interrupt gate (IF cleared on entry) */
#define KERNEL_CS 0x08		/* boot.S's flat code segment */
#define EXCEPTIONS 32
/* The CPU's local APIC (Intel SDM vol. 3, ch. 10), in the way of the 8259 on its LINT0 pin. */
#define CPUID_1_EDX_APIC (1u << 9)
#define LAPIC_SVR ((volatile uint32_t *)0xFEE000F0u)	/* spurious vector register */
#define LAPIC_SVR_ENABLE 0x100	/* APIC software enable */
#define LAPIC_LVT_LINT0 ((volatile uint32_t *)0xFEE00350u)
#define LAPIC_LINT0_EXTINT 0x8700	/* ExtINT, level, unmasked: the 8259 is the source */

/* What isr.S pushed: pusha's registers, the vector and error code, the CPU's frame. */
struct irq_frame {
	uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;
	uint32_t vector, error;
	uint32_t eip, cs, eflags;
};

struct idt_gate {
	uint16_t offset_lo;
	uint16_t selector;
	uint8_t zero;
	uint8_t type;
	uint16_t offset_hi;
} __attribute__((packed));

struct irq_line_stats irq_stats[IRQ_LINES];
struct irq_exception_record irq_exception;

extern const uint32_t irq_stubs[IDT_ENTRIES];	/* isr.S */
static struct idt_gate idt[IDT_ENTRIES];

static const char *const exception_names[EXCEPTIONS] = {
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow",
	"#BR bound range", "#UD invalid opcode", "#NM no math coprocessor", "#DF double fault",
	"coprocessor segment overrun", "#TS invalid TSS", "#NP segment not present",
	"#SS stack fault", "#GP general protection", "#PF page fault", "reserved",
	"#MF math fault", "#AC alignment check", "#MC machine check", "#XM SIMD exception",
	"#VE virtualization", "#CP control protection",
};

static uint16_t cmd_port(uint32_t line)
{
	return line < 8 ? PIC_MASTER_CMD : PIC_SLAVE_CMD;
}

static uint16_t data_port(uint32_t line)
{
	return line < 8 ? PIC_MASTER_DATA : PIC_SLAVE_DATA;
}

void irq_mask(uint32_t line)
{
	if (line >= IRQ_LINES)
		return;
	outb(data_port(line), (uint8_t)(inb(data_port(line)) | 1u << (line & 7)));
}

void irq_unmask(uint32_t line)
{
	if (line >= IRQ_LINES)
		return;
	outb(data_port(line), (uint8_t)(inb(data_port(line)) & ~(1u << (line & 7))));
}

void irq_tick(int on)
{
	if (on)
		irq_unmask(IRQ_PIT);
	else
		irq_mask(IRQ_PIT);
}

static uint8_t pic_read(uint16_t port, uint8_t ocw3)
{
	outb(port, ocw3);
	return inb(port);
}

uint32_t irq_pic_regs(void)
{
	uint32_t v = pic_read(PIC_MASTER_CMD, PIC_OCW3_READ_IRR) |
		     (uint32_t)pic_read(PIC_SLAVE_CMD, PIC_OCW3_READ_IRR) << 8 |
		     (uint32_t)pic_read(PIC_MASTER_CMD, PIC_OCW3_READ_ISR) << 16 |
		     (uint32_t)pic_read(PIC_SLAVE_CMD, PIC_OCW3_READ_ISR) << 24;
	outb(PIC_MASTER_CMD, PIC_OCW3_READ_IRR);
	outb(PIC_SLAVE_CMD, PIC_OCW3_READ_IRR);
	return v;
}

void irq_wait(void)
{
	/* sti takes effect after the next instruction: no interrupt slips in between the check
	   the caller made and the hlt (it would then sleep until the next one). */
	__asm__ volatile("sti; hlt; cli" ::: "memory");
}

void irq_poll_pending(void)
{
	__asm__ volatile("sti; nop; cli" ::: "memory");
}

/* An unexpected exception: log it with the registers and park (a loop, interrupts off, no
   return): a bug shows as a hung call with its cause on the serial log, not as a reset. */
static __attribute__((noreturn)) void exception(const struct irq_frame *f)
{
	uint32_t cr2;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	irq_exception.count++;
	irq_exception.vector = f->vector;
	irq_exception.error = f->error;
	irq_exception.eip = f->eip;
	irq_exception.cs = f->cs;
	irq_exception.eflags = f->eflags;
	irq_exception.cr2 = cr2;
	irq_exception.esp = f->esp + 5 * 4;	/* pusha saw the stack below error, eip, cs, eflags */
	kprintf("exception %u (%s) error %08x at eip %08x cs %04x eflags %08x cr2 %08x\n",
		f->vector, exception_names[f->vector] ? exception_names[f->vector] : "reserved", f->error,
		f->eip, f->cs, f->eflags, cr2);
	kprintf("  eax %08x ebx %08x ecx %08x edx %08x esi %08x edi %08x ebp %08x esp %08x\n",
		f->eax, f->ebx, f->ecx, f->edx, f->esi, f->edi, f->ebp, irq_exception.esp);
	kprintf("exception: parked (the harness's call timeout ends the call)\n");
	for (;;)
		__asm__ volatile("cli; pause");
}

/* IR7 of a controller, with its in-service bit clear: no request stood behind it. */
static int spurious(uint32_t line)
{
	if ((line & 7) != PIC_SPURIOUS_IR)
		return 0;
	return !(pic_read(cmd_port(line), PIC_OCW3_READ_ISR) & (1u << PIC_SPURIOUS_IR));
}

static void eoi(uint32_t line)
{
	if (line >= 8)
		outb(PIC_SLAVE_CMD, PIC_OCW2_EOI);
	outb(PIC_MASTER_CMD, PIC_OCW2_EOI);
}

void irq_entry(struct irq_frame *f);	/* isr.S's only caller */

void irq_entry(struct irq_frame *f)
{
	if (f->vector < EXCEPTIONS)
		exception(f);
	uint32_t line = f->vector - IRQ_VECTOR_BASE;
	if (spurious(line)) {
		irq_stats[line].spurious++;
		if (line >= 8)
			outb(PIC_MASTER_CMD, PIC_OCW2_EOI);	/* the master's IR2 was real */
		outb(cmd_port(line), PIC_OCW3_READ_IRR);
		return;
	}
	outb(cmd_port(line), PIC_OCW3_READ_IRR);
	irq_stats[line].taken++;
	if (line == IRQ_IDE_PRIMARY || line == IRQ_IDE_SECONDARY)
		ata_irq(line == IRQ_IDE_SECONDARY);	/* reads Status before the EOI: INTRQ drops */
	eoi(line);
}

/* After a reset the local APIC is on with LINT0 masked: the 8259's output reaches nothing.
   SeaBIOS sets LINT0 to ExtINT, qboot does not; set it as SeaBIOS does (virtual wire mode). */
static void lapic_virtual_wire(void)
{
	uint32_t eax = 1, ebx, ecx, edx;
	__asm__ volatile("cpuid" : "+a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx));
	if (!(edx & CPUID_1_EDX_APIC))
		return;	/* no local APIC: the 8259 drives INTR directly */
	*LAPIC_SVR |= LAPIC_SVR_ENABLE;
	*LAPIC_LVT_LINT0 = LAPIC_LINT0_EXTINT;
}

void irq_init(void)
{
	for (int v = 0; v < IDT_ENTRIES; v++)
		idt[v] = (struct idt_gate){
			.offset_lo = (uint16_t)irq_stubs[v],
			.selector = KERNEL_CS,
			.type = IDT_INTERRUPT_GATE,
			.offset_hi = (uint16_t)(irq_stubs[v] >> 16),
		};
	struct __attribute__((packed)) {
		uint16_t limit;
		uint32_t base;
	} idtr = {sizeof(idt) - 1, (uint32_t)(uintptr_t)idt};
	__asm__ volatile("lidt %0" : : "m"(idtr));
	/* ICW1..4 to each controller: vectors from IRQ_VECTOR_BASE, the slave on IR2. */
	outb(PIC_MASTER_CMD, PIC_ICW1_INIT);
	outb(PIC_SLAVE_CMD, PIC_ICW1_INIT);
	outb(PIC_MASTER_DATA, IRQ_VECTOR_BASE);
	outb(PIC_SLAVE_DATA, IRQ_VECTOR_BASE + 8);
	outb(PIC_MASTER_DATA, 1u << PIC_CASCADE_LINE);
	outb(PIC_SLAVE_DATA, PIC_CASCADE_LINE);
	outb(PIC_MASTER_DATA, PIC_ICW4_8086);
	outb(PIC_SLAVE_DATA, PIC_ICW4_8086);
	/* Every line masked but the cascade and the two IDE channels; the tick only while the
	   driver waits (irq_tick). */
	outb(PIC_MASTER_DATA, (uint8_t)~(1u << PIC_CASCADE_LINE));
	outb(PIC_SLAVE_DATA, (uint8_t)~(1u << (IRQ_IDE_PRIMARY - 8) | 1u << (IRQ_IDE_SECONDARY - 8)));
	timer_tick_start(IRQ_TICK_HZ);
	lapic_virtual_wire();
	kprintf("irq: IDT at %08x, 8259s at vectors %02x/%02x, IRQ 14/15 unmasked, tick %u Hz\n",
		(uint32_t)(uintptr_t)idt, IRQ_VECTOR_BASE, IRQ_VECTOR_BASE + 8, IRQ_TICK_HZ);
}
