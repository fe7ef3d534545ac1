/* x86.h: port I/O, TSC and halt as static inline helpers. Argument order: port first. */
#ifndef X86_H
#define X86_H
#include <stdint.h>

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint16_t inw(uint16_t port)
{
	uint16_t v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t v)
{
	__asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

/* insl/outsl move n 32-bit words between a port and memory (rep ins/outs). */
static inline void insl(uint16_t port, void *buf, uint32_t n)
{
	__asm__ volatile("cld; rep insl" : "+D"(buf), "+c"(n) : "d"(port) : "memory");
}

static inline void outsl(uint16_t port, const void *buf, uint32_t n)
{
	__asm__ volatile("cld; rep outsl" : "+S"(buf), "+c"(n) : "d"(port) : "memory");
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void halt(void)
{
	__asm__ volatile("hlt");
}

#endif
