/* selftest.h: deliberate failures, for testing that the harness reports them. */
#ifndef SELFTEST_H
#define SELFTEST_H
#include <stdint.h>

void selftest_triple_fault(void) __attribute__((noreturn));
void selftest_spin(void) __attribute__((noreturn));
void selftest_exception(void);
void selftest_spurious(uint32_t line);	/* line 7 or 15; others do nothing */

#endif
