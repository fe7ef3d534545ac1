/* kmain.c: boot sequence (serial, timer, PIIX3 driver) and the harness's park point. */
#include <stdint.h>
#include "ata.h"
#include "serial.h"
#include "timer.h"
#include "x86.h"

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MB_INFO_MEMORY 0x1	/* mem_lower/mem_upper valid */

/* The transfer buffer lives outside the kernel image (multiboot would copy a huge .bss on
   every boot); it is 64 KiB aligned so DMA needs the fewest PRD entries. */
#define XFER_BUF_ADDR 0x01000000u
#define XFER_BUF_SIZE (ATA_MAX_COUNT_LBA48 * ATA_SECTOR_SIZE)

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower;	/* KiB below 1 MiB */
	uint32_t mem_upper;	/* KiB above 1 MiB */
};

/* Named memory the harness reads once: where the transfer buffer is and how big. */
uint8_t *const harness_xfer_buf = (uint8_t *)XFER_BUF_ADDR;
const uint32_t harness_xfer_size = XFER_BUF_SIZE;
int harness_init_status;		/* ata_init's result */

/* The park point: the harness breaks here and makes every call from this stopped state.
   A page of its own, so the breakpoint on it makes QEMU single-step nothing else. */
__attribute__((noinline, section(".text.park"))) void harness_ready(void)
{
	__asm__ volatile("" ::: "memory");
}

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	serial_init();
	kprintf("\npiix3-harness guest: booting\n");
	if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MB_INFO_MEMORY))
		ata_ram_end = 0x100000u + mbi->mem_upper * 1024u;
	timer_calibrate();
	kprintf("timer: %llu TSC ticks per ms; RAM ends at %08x\n", tsc_per_ms, ata_ram_end);
	if (ata_ram_end && ata_ram_end < XFER_BUF_ADDR + XFER_BUF_SIZE)
		kprintf("warning: RAM ends before the transfer buffer's end (%08x)\n",
			XFER_BUF_ADDR + XFER_BUF_SIZE);
	harness_init_status = ata_init();
	kprintf("piix3-harness guest: ready (init %d)\n", harness_init_status);
	harness_ready();
	for (;;)
		halt();
}

/* Port access for humans in GDB (gdbinit's ata-status, pci-ide): GDB cannot execute in/out. */
uint32_t harness_inb(uint32_t port)
{
	return inb((uint16_t)port);
}

void harness_outb(uint32_t port, uint32_t value)
{
	outb((uint16_t)port, (uint8_t)value);
}
