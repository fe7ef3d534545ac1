/* harness.h: what the Python harness reaches by name: the park point, the request mailbox,
   the transfer buffer, and port helpers for humans in GDB. */
#ifndef HARNESS_H
#define HARNESS_H
#include <stdint.h>
#include "ata.h"

/* The transfer buffer lives outside the kernel image (multiboot would copy a huge .bss on
   every boot); it is 64 KiB aligned so DMA needs the fewest PRD entries. */
#define XFER_BUF_ADDR 0x01000000u
#define XFER_BUF_SIZE (ATA_MAX_COUNT_LBA48 * ATA_SECTOR_SIZE)

enum harness_op {
	HARNESS_OP_NONE = 0,
	HARNESS_OP_IDENTIFY = 1,	/* ata_identify(drive, buf) */
	HARNESS_OP_READ = 2,		/* ata_read(drive, lba, count, buf, mode) */
	HARNESS_OP_WRITE = 3,		/* ata_write(drive, lba, count, buf, mode) */
	HARNESS_OP_FLUSH = 4,		/* ata_flush(drive) */
	HARNESS_OP_SET_WCACHE = 5,	/* ata_set_write_cache(drive, arg) */
	HARNESS_OP_RESET_CHANNEL = 6,	/* ata_reset_channel(arg) */
	HARNESS_OP_BENCH = 7,		/* bench_run(drive, lba, count, buf, mode, arg: see bench.h) */
	HARNESS_OP_TRIPLE_FAULT = 90,	/* test-only: selftest_triple_fault(), the CPU resets */
	HARNESS_OP_SPIN = 91,		/* test-only: selftest_spin(), never returns */
};

/* The mailbox: the harness fills it while the guest is parked, continues, and reads
   `result` at the next stop in harness_ready. Fixed layout (read as raw memory). */
struct harness_request {
	uint32_t op;		/* enum harness_op; the dispatcher clears it when done */
	int32_t result;		/* the driver call's return value */
	uint32_t drive;
	uint32_t count;
	uint32_t mode;
	uint32_t buf;
	uint64_t lba;
	uint32_t arg;
	uint32_t seq;		/* incremented by every dispatch */
	uint32_t linger;	/* set: after the call, wait (bounded) until the harness clears it */
	uint32_t reserved;
};

/* The doorbell: how a running guest takes requests without GDB. After a request (or when
   continued with none), harness_dispatch polls harness_request.op for the next one until
   `idle_us` pass with none, then returns to the park point. The harness fills every field
   but `op`, then `op` (the doorbell), and waits for `op` to go back to HARNESS_OP_NONE, which
   the dispatcher writes last. Fixed layout (read as raw memory). */
struct harness_doorbell {
	uint32_t idle_us;	/* the harness's: poll this long for a next request; 0: park now */
	uint32_t parking;	/* the guest's: set just before it parks; the harness clears it
				   before it continues the guest */
	uint32_t reserved[2];
};

extern struct harness_request harness_request;
extern struct harness_doorbell harness_doorbell;
extern uint8_t *const harness_xfer_buf;
extern const uint32_t harness_xfer_size;
extern int harness_init_status;

void harness_ready(void);
void harness_dispatch(void);
uint32_t harness_inb(uint32_t port);
uint32_t harness_inl(uint32_t port);
uint32_t harness_pci_read32(uint32_t bdf, uint32_t off);

#endif
