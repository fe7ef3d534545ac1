/* pci.c: configuration space access through 0xCF8/0xCFC and a bus scan. */
#include "pci.h"
#include "piix3.h"
#include "x86.h"

static void pci_select(uint32_t bdf, uint8_t off)
{
	outl(PCI_CFG_ADDR, 0x80000000u | bdf | (off & 0xFC));
}

uint32_t pci_read32(uint32_t bdf, uint8_t off)
{
	pci_select(bdf, off);
	return inl(PCI_CFG_DATA);
}

uint16_t pci_read16(uint32_t bdf, uint8_t off)
{
	pci_select(bdf, off);
	return inw((uint16_t)(PCI_CFG_DATA + (off & 2)));
}

uint8_t pci_read8(uint32_t bdf, uint8_t off)
{
	pci_select(bdf, off);
	return inb((uint16_t)(PCI_CFG_DATA + (off & 3)));
}

void pci_write32(uint32_t bdf, uint8_t off, uint32_t v)
{
	pci_select(bdf, off);
	outl(PCI_CFG_DATA, v);
}

void pci_write16(uint32_t bdf, uint8_t off, uint16_t v)
{
	pci_select(bdf, off);
	outw((uint16_t)(PCI_CFG_DATA + (off & 2)), v);
}

int32_t pci_find(uint16_t vendor, uint16_t device)
{
	for (uint32_t bus = 0; bus < 256; bus++)
		for (uint32_t dev = 0; dev < 32; dev++)
			for (uint32_t fn = 0; fn < 8; fn++) {
				uint32_t bdf = bus << 16 | dev << 11 | fn << 8;
				uint32_t id = pci_read32(bdf, PCI_VENDOR);
				if ((id & 0xFFFF) == 0xFFFF) {
					if (fn == 0)
						break;	/* no device in this slot */
					continue;
				}
				if ((id & 0xFFFF) == vendor && id >> 16 == device)
					return (int32_t)bdf;
				/* single-function device: skip fn 1..7 */
				if (fn == 0 && !(pci_read8(bdf, 0x0E) & 0x80))
					break;
			}
	return -1;
}
