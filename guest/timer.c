/* timer.c: measure the TSC rate with PIT channel 2 (gated through port 0x61), once at boot. */
#include "timer.h"
#include "x86.h"

#define PIT_HZ 1193182u
#define PIT_CH2 0x42		/* channel 2 counter, out */
#define PIT_MODE 0x43		/* mode/command, out */
#define PIT_MODE_CH2_ONESHOT 0xB0	/* ch2, lobyte/hibyte, mode 0, binary */
#define PIT_CH0 0x40		/* channel 0 counter (its output is IRQ 0), out */
#define PIT_MODE_CH0_RATE 0x34	/* ch0, lobyte/hibyte, mode 2 (rate generator), binary */
#define SYS_CTRL_B 0x61		/* bit 0: ch2 gate, bit 1: speaker, bit 5: ch2 OUT (in) */
#define CALIBRATE_MS 2
#define CALIBRATE_SPIN_MAX 10000000	/* bound if the PIT never fires */
#define TSC_FALLBACK_PER_MS 1000000ull	/* 1 GHz guess if calibration fails */

uint64_t tsc_per_ms = TSC_FALLBACK_PER_MS;

void timer_calibrate(void)
{
	uint16_t count = (uint16_t)(PIT_HZ * CALIBRATE_MS / 1000);
	outb(SYS_CTRL_B, (uint8_t)((inb(SYS_CTRL_B) & ~0x02) | 0x01));
	outb(PIT_MODE, PIT_MODE_CH2_ONESHOT);
	outb(PIT_CH2, (uint8_t)count);
	outb(PIT_CH2, (uint8_t)(count >> 8));
	uint64_t t0 = rdtsc();
	for (int i = 0; i < CALIBRATE_SPIN_MAX; i++) {
		if (inb(SYS_CTRL_B) & 0x20) {
			uint64_t per_ms = (rdtsc() - t0) / CALIBRATE_MS;
			if (per_ms)
				tsc_per_ms = per_ms;
			return;
		}
	}
}

void timer_tick_start(uint32_t hz)
{
	uint16_t divisor = (uint16_t)(PIT_HZ / hz);
	outb(PIT_MODE, PIT_MODE_CH0_RATE);
	outb(PIT_CH0, (uint8_t)divisor);
	outb(PIT_CH0, (uint8_t)(divisor >> 8));
}

uint64_t deadline_after_us(uint64_t us)
{
	return rdtsc() + us * tsc_per_ms / 1000;
}

int deadline_passed(uint64_t deadline)
{
	return rdtsc() >= deadline;
}

void udelay(uint64_t us)
{
	uint64_t d = deadline_after_us(us);
	while (!deadline_passed(d))
		;
}
