/* bench.h: in-guest throughput benchmark: N driver transfers timed with the TSC. */
#ifndef BENCH_H
#define BENCH_H
#include <stdint.h>

/* harness_request.arg for HARNESS_OP_BENCH: iterations, and the direction in the top bit. */
#define BENCH_ARG_WRITE 0x80000000u
#define BENCH_ARG_ITERATIONS 0x7FFFFFFFu

/* The last run's outcome, fixed layout (read by the harness as raw memory). */
struct bench_result {
	int32_t result;		/* ATA_OK, or the code of the first transfer that failed */
	uint32_t iterations;	/* transfers that completed */
	uint64_t cycles;	/* TSC ticks spent inside the driver calls, summed */
	uint64_t bytes;		/* bytes moved by the completed transfers */
	uint64_t tsc_per_ms;	/* the boot-time calibration against the PIT */
	uint64_t min_cycles;	/* fastest single transfer */
	uint64_t max_cycles;	/* slowest single transfer */
};

extern struct bench_result bench_result;

/* Run `iterations` transfers of `count` sectors from `lba` on, each at the next LBA, wrapping
   to 0 before the end of the disk; writing != 0 writes buf, else reads into it. Stops at the
   first failure; returns ATA_OK or that failure's code (also in bench_result.result). */
int bench_run(int drive, uint64_t lba, uint32_t count, void *buf, int mode, int writing,
	      uint32_t iterations);

#endif
