/* ata_io.h: a channel's registers, reached by name: cmd_in/cmd_out (command block, ATA_CB_*),
   ctl_out (Device Control), bm_in/bm_out (bus master, BM_*). Inline helpers in a header, as
   x86.h's, so a port watch names the driver function that made the access. */
#ifndef ATA_IO_H
#define ATA_IO_H
#include <stdint.h>
#include "piix3.h"
#include "x86.h"

struct ata_channel {
	uint16_t cmd;		/* command block base */
	uint16_t ctrl;		/* control block base */
	uint16_t bm;		/* this channel's bus-master registers, 0 if none */
	uint8_t dc;		/* Device Control as the completion mode sets it (nIEN), SRST/HOB aside */
};

/* Command block register reg (ATA_CB_*) of the channel. */
static inline uint8_t cmd_in(const struct ata_channel *ch, uint16_t reg)
{
	return inb((uint16_t)(ch->cmd + reg));
}

static inline void cmd_out(const struct ata_channel *ch, uint16_t reg, uint8_t v)
{
	outb((uint16_t)(ch->cmd + reg), v);
}

/* Device Control (the control block's only write). */
static inline void ctl_out(const struct ata_channel *ch, uint8_t v)
{
	outb((uint16_t)(ch->ctrl + ATA_CB_DC), v);
}

/* Bus-master register reg (BM_*) of the channel. */
static inline uint8_t bm_in(const struct ata_channel *ch, uint16_t reg)
{
	return inb((uint16_t)(ch->bm + reg));
}

static inline void bm_out(const struct ata_channel *ch, uint16_t reg, uint8_t v)
{
	outb((uint16_t)(ch->bm + reg), v);
}

#endif
