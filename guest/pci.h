/* pci.h: PCI configuration mechanism #1. */
#ifndef PCI_H
#define PCI_H
#include <stdint.h>

uint32_t pci_read32(uint32_t bdf, uint8_t off);
uint16_t pci_read16(uint32_t bdf, uint8_t off);
uint8_t pci_read8(uint32_t bdf, uint8_t off);
void pci_write32(uint32_t bdf, uint8_t off, uint32_t v);
void pci_write16(uint32_t bdf, uint8_t off, uint16_t v);
/* pci_find: first function with this vendor:device as bus<<16|dev<<11|fn<<8, or -1. */
int32_t pci_find(uint16_t vendor, uint16_t device);

#define PCI_BDF_BUS(b) (((b) >> 16) & 0xFF)
#define PCI_BDF_DEV(b) (((b) >> 11) & 0x1F)
#define PCI_BDF_FN(b)  (((b) >> 8) & 0x07)
#endif
