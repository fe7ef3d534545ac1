/* selftest.c: deliberate failures the harness's own tests provoke; never called otherwise. */
#include <stdint.h>
#include "selftest.h"

/* Load an empty IDT and raise #BP: no handler, no #DF handler, so the CPU shuts down
   (a triple fault), which QEMU turns into a reset. */
void selftest_triple_fault(void)
{
	struct __attribute__((packed)) {
		uint16_t limit;
		uint32_t base;
	} idtr = {0, 0};
	__asm__ volatile("lidt %0; int3" : : "m"(idtr));
	__builtin_unreachable();
}

/* A driver call that never returns, for the harness's call timeout: the one deliberately
   unbounded loop in the guest. */
void selftest_spin(void)
{
	for (;;)
		__asm__ volatile("pause");
}
