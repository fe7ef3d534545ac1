/* harness.c: the park point and the request mailbox the Python harness drives. */
#include "harness.h"
#include "pci.h"
#include "bench.h"
#include "selftest.h"
#include "timer.h"
#include "x86.h"

#define LINGER_MAX_US 30000000ull	/* bound on waiting for the harness to clear linger */

uint8_t *const harness_xfer_buf = (uint8_t *)XFER_BUF_ADDR;
const uint32_t harness_xfer_size = XFER_BUF_SIZE;
int harness_init_status;		/* ata_init's result */
struct harness_request harness_request;
struct harness_doorbell harness_doorbell;

/* The park point: the harness breaks here and makes every call from this stopped state.
   A page of its own, so the breakpoint on it makes QEMU single-step nothing else. */
__attribute__((noinline, section(".text.park"))) void harness_ready(void)
{
	__asm__ volatile("" ::: "memory");
}

/* Run the posted request; the mailbox's op goes back to HARNESS_OP_NONE last. */
static void dispatch(struct harness_request *r)
{
	void *buf = (void *)(uintptr_t)r->buf;
	int rc;
	switch (r->op) {
	case HARNESS_OP_NONE:
		return;
	case HARNESS_OP_IDENTIFY:
		rc = ata_identify((int)r->drive, buf);
		break;
	case HARNESS_OP_READ:
		rc = ata_read((int)r->drive, r->lba, r->count, buf, (int)r->mode);
		break;
	case HARNESS_OP_WRITE:
		rc = ata_write((int)r->drive, r->lba, r->count, buf, (int)r->mode);
		break;
	case HARNESS_OP_FLUSH:
		rc = ata_flush((int)r->drive);
		break;
	case HARNESS_OP_SET_WCACHE:
		rc = ata_set_write_cache((int)r->drive, (int)r->arg);
		break;
	case HARNESS_OP_RESET_CHANNEL:
		rc = ata_reset_channel((int)r->arg);
		break;
	case HARNESS_OP_BENCH:
		rc = bench_run((int)r->drive, r->lba, r->count, buf, (int)r->mode,
			       (r->arg & BENCH_ARG_WRITE) != 0, r->arg & BENCH_ARG_ITERATIONS);
		break;
	case HARNESS_OP_SPIN:
		selftest_spin();
		rc = ATA_ERR_INVAL;	/* not reached */
		break;
	case HARNESS_OP_TRIPLE_FAULT:
		selftest_triple_fault();
		rc = ATA_ERR_INVAL;	/* not reached */
		break;
	default:
		rc = ATA_ERR_INVAL;
		break;
	}
	r->result = rc;
	r->seq++;
	/* op last: a harness that sees it cleared must see the result and seq too (x86 keeps
	   stores in order; the barrier keeps the compiler from moving them past it) */
	__asm__ volatile("" ::: "memory");
	*(volatile uint32_t *)&r->op = HARNESS_OP_NONE;
	/* QEMU waits for every block request whenever the VM stops: a request the harness holds
	   in the block layer (hold_io) must be let go while the guest still runs, here. Only the
	   harness writes linger (it clears it, and every request it posts carries it): a store
	   here could land on the next request's. */
	uint64_t deadline = deadline_after_us(LINGER_MAX_US);
	while (*(volatile uint32_t *)&r->linger && !deadline_passed(deadline))
		__asm__ volatile("pause");
}

/* kmain's park loop calls this after each harness_ready: run the posted request, if any, then
   take the next ones through the doorbell (harness.h) while they come within idle_us of each
   other; then mark the guest parking and return to harness_ready. Never unbounded: idle_us is
   re-read on every round, so the harness can end the wait at once by setting it to 0.
   Memory order: the harness writes the request's fields, then op; this loop reads op, then
   (after the compiler barrier) the fields. x86 stores become visible in program order and
   loads are not reordered with older loads, so that is enough; no fence is needed. */
void harness_dispatch(void)
{
	volatile struct harness_request *r = &harness_request;
	volatile struct harness_doorbell *d = &harness_doorbell;
	uint64_t last = rdtsc();
	for (;;) {
		if (r->op != HARNESS_OP_NONE) {
			__asm__ volatile("" ::: "memory");	/* op before the fields */
			dispatch(&harness_request);
			last = rdtsc();
			continue;
		}
		uint64_t idle = (uint64_t)d->idle_us * tsc_per_ms / 1000;
		if (rdtsc() - last >= idle)
			break;
		__asm__ volatile("pause");
	}
	d->parking = 1;
}

/* Port access for humans in GDB (gdbinit's ata-status, pci-ide): GDB cannot execute in/out. */
uint32_t harness_inb(uint32_t port)
{
	return inb((uint16_t)port);
}

uint32_t harness_inl(uint32_t port)
{
	return inl((uint16_t)port);
}

/* PCI configuration space for humans in GDB (gdbinit's pci-ide): bdf as pci_find returns it. */
uint32_t harness_pci_read32(uint32_t bdf, uint32_t off)
{
	return pci_read32(bdf, (uint8_t)off);
}
