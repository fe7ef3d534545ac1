/* runtime.c: the coverage build's gcov runtime (`make coverage` links it; the plain kernel does
 * not). The counters need no runtime to count: gcc's -fprofile-update=single increments them in
 * .bss, and the harness reads them straight out of guest RAM (harness/coverage/gcov.py), so no
 * collection point needs the guest's cooperation. What is here:
 *  - __gcov_merge_add: every object's gcov_info names it (merging .gcda files at exit is the
 *    hosted runtime's job, which this kernel never does); never called.
 *  - gcov_stream(): libgcov's own encoder, __gcov_info_to_gcda, run over one object's
 *    gcov_info in the guest, so a test can check the harness's encoder against it byte for byte.
 *    abort() and mmap64() are the hosted symbols it links against; neither is reached for arc
 *    counters (only value-profile counters allocate).
 */
#include <stdint.h>
#include <gcov.h>

void __gcov_merge_add(long long *counters, unsigned n);
void abort(void);
void *mmap64(void *addr, unsigned len, int prot, int flags, int fd, long long off);

void __gcov_merge_add(long long *counters, unsigned n)
{
	(void)counters;
	(void)n;
}

void abort(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

void *mmap64(void *addr, unsigned len, int prot, int flags, int fd, long long off)
{
	(void)addr, (void)len, (void)prot, (void)flags, (void)fd, (void)off;
	return (void *)-1;	/* MAP_FAILED */
}

struct sink {
	uint8_t *out;
	uint32_t cap;
	uint32_t len;	/* bytes the stream has, also past cap */
};

static void on_filename(const char *name, void *arg)
{
	(void)name, (void)arg;
}

static void on_chunk(const void *data, unsigned n, void *arg)
{
	struct sink *s = arg;
	const uint8_t *p = data;
	for (unsigned i = 0; i < n; i++, s->len++)
		if (s->len < s->cap)
			s->out[s->len] = p[i];
}

static void *on_allocate(unsigned n, void *arg)
{
	(void)n, (void)arg;
	return 0;
}

/* The .gcda stream of one object (a pointer from the .gcov_info section) into out[0..cap);
   returns its length in bytes (more than cap: it was cut). */
uint32_t gcov_stream(const struct gcov_info *info, uint8_t *out, uint32_t cap)
{
	struct sink s = { out, cap, 0 };
	__gcov_info_to_gcda(info, on_filename, on_chunk, on_allocate, &s);
	return s.len;
}
