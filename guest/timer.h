/* timer.h: TSC time base calibrated against the PIT; deadlines for bounded waits; the tick. */
#ifndef TIMER_H
#define TIMER_H
#include <stdint.h>

extern uint64_t tsc_per_ms;	/* TSC ticks per millisecond, set by timer_calibrate() */

void timer_calibrate(void);
void timer_tick_start(uint32_t hz);	/* PIT channel 0: a periodic IRQ 0 at hz (masked by irq.c) */
uint64_t deadline_after_us(uint64_t us);
int deadline_passed(uint64_t deadline);
void udelay(uint64_t us);

#endif
