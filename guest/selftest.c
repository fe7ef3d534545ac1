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

/* An invalid opcode (#UD): the exception handler logs it and parks the CPU (irq.c). */
void selftest_exception(void)
{
	__asm__ volatile("ud2");
}

/* What the CPU sees on a spurious interrupt: vector 7 or 15 of the 8259 pair with the
   controller's in-service bit clear (QEMU's 8259 model never produces one by itself). */
void selftest_spurious(uint32_t line)
{
	if (line == 7)
		__asm__ volatile("int $0x27");
	else if (line == 15)
		__asm__ volatile("int $0x2F");
}

/* A driver call that never returns, for the harness's call timeout: the one deliberately
   unbounded loop in the guest. */
void selftest_spin(void)
{
	for (;;)
		__asm__ volatile("pause");
}
