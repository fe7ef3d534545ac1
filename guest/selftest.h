/* selftest.h: deliberate failures, for testing that the harness reports them. */
#ifndef SELFTEST_H
#define SELFTEST_H

void selftest_triple_fault(void) __attribute__((noreturn));
void selftest_spin(void) __attribute__((noreturn));

#endif
