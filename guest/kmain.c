/* kmain.c: boot sequence (serial, timer, interrupts, PIIX3 driver), then the park loop. */
#include <stdint.h>
#include "ata.h"
#include "harness.h"
#include "irq.h"
#include "serial.h"
#include "timer.h"
#include "x86.h"

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MB_INFO_MEMORY 0x1	/* mem_lower/mem_upper valid */

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower;	/* KiB below 1 MiB */
	uint32_t mem_upper;	/* KiB above 1 MiB */
};

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	serial_init();
	kprintf("\npiix3-harness guest: booting\n");
	if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MB_INFO_MEMORY))
		ata_ram_end = 0x100000u + mbi->mem_upper * 1024u;
	timer_calibrate();
	kprintf("timer: %llu TSC ticks per ms; RAM ends at %08x\n", tsc_per_ms, ata_ram_end);
	irq_init();
	if (ata_ram_end && ata_ram_end < XFER_BUF_ADDR + XFER_BUF_SIZE)
		kprintf("warning: RAM ends before the transfer buffer's end (%08x)\n",
			XFER_BUF_ADDR + XFER_BUF_SIZE);
	harness_init_status = ata_init();
	kprintf("piix3-harness guest: ready (init %d)\n", harness_init_status);
	for (;;) {
		harness_ready();	/* the harness stops here, posts a request, continues */
		harness_dispatch();
	}
}

