/* bench.c: in-guest throughput benchmark: the driver timed apart from the harness. */
#include "bench.h"
#include "ata.h"
#include "timer.h"
#include "x86.h"

struct bench_result bench_result;

int bench_run(int drive, uint64_t lba, uint32_t count, void *buf, int mode, int writing,
	      uint32_t iterations)
{
	struct bench_result *r = &bench_result;
	*r = (struct bench_result){.tsc_per_ms = tsc_per_ms, .min_cycles = UINT64_MAX};
	uint64_t sectors = drive >= 0 && drive < ATA_MAX_DRIVES ? ata_drives[drive].sectors : 0;
	for (uint32_t i = 0; i < iterations; i++) {
		if (i && (lba >= sectors || count > sectors - lba))
			lba = 0;	/* wrap within the disk; the first call gets the LBA as given */
		uint64_t t0 = rdtsc();
		int rc = writing ? ata_write(drive, lba, count, buf, mode)
				 : ata_read(drive, lba, count, buf, mode);
		uint64_t t = rdtsc() - t0;
		if (rc) {
			r->result = rc;
			break;
		}
		r->cycles += t;
		r->bytes += (uint64_t)count * ATA_SECTOR_SIZE;
		r->iterations++;
		if (t < r->min_cycles)
			r->min_cycles = t;
		if (t > r->max_cycles)
			r->max_cycles = t;
		lba += count;
	}
	if (!r->iterations)
		r->min_cycles = 0;
	return r->result;
}
