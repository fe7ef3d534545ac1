/* serial.h: COM1 log output and a small printf. */
#ifndef SERIAL_H
#define SERIAL_H

void serial_init(void);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
