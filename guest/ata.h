/* ata.h: the PIIX3 IDE driver's interface; the harness calls these functions by name. */
#ifndef ATA_H
#define ATA_H
#include <stdint.h>

#define ATA_MAX_DRIVES 4	/* 0: primary master, 1: primary slave, 2: secondary master, 3: secondary slave */
#define ATA_SECTOR_SIZE 512
#define ATA_MAX_COUNT_LBA28 256
#define ATA_MAX_COUNT_LBA48 65536
#define ATA_PRD_ENTRIES 512	/* one 4 KiB table: 32 MiB in 64 KiB pieces */

/* Every driver call returns ATA_OK or one of these. */
enum ata_err {
	ATA_OK = 0,
	ATA_ERR_NODEV = -1,	/* no ATA disk at that drive number */
	ATA_ERR_INVAL = -2,	/* bad argument: drive, count, mode, buffer */
	ATA_ERR_RANGE = -3,	/* LBA or LBA + count past the end of the disk */
	ATA_ERR_TIMEOUT = -4,	/* a bounded wait ran out; see ata_last_error.phase */
	ATA_ERR_DEVICE = -5,	/* the drive reported ERR or DF; see ata_last_error */
	ATA_ERR_DMA = -6,	/* the bus master reported an error */
	ATA_ERR_NOTSUP = -7,	/* the drive lacks the feature (e.g. LBA48) */
	ATA_ERR_NOCTRL = -8,	/* no PIIX3 IDE function was found */
};

enum ata_mode { ATA_MODE_PIO = 0, ATA_MODE_DMA = 1 };

/* What a wait was waiting for when it failed (ata_last_error.phase). */
enum ata_phase {
	ATA_PHASE_NONE = 0,
	ATA_PHASE_SELECT = 1,	/* BSY/DRQ to clear before selecting */
	ATA_PHASE_DRQ = 2,	/* data request for a PIO block */
	ATA_PHASE_COMPLETE = 3,	/* BSY to clear after the command */
	ATA_PHASE_DMA = 4,	/* bus master to go inactive */
	ATA_PHASE_RESET = 5,	/* BSY to clear after SRST */
	ATA_PHASE_IRQ = 6,	/* the channel's interrupt (irq completion): none came */
};

/* How the driver learns that the drive is done (ata_completion). */
enum ata_completion {
	ATA_COMPLETION_POLL = 0,	/* nIEN set; poll BSY, DRQ and the bus master's ACTIVE */
	ATA_COMPLETION_IRQ = 1,		/* nIEN clear; wait in hlt for IRQ 14/15 (irq.c) */
};

/* The last failure, fixed layout (read by the harness as raw memory). */
struct ata_error_record {
	int32_t code;		/* enum ata_err */
	uint32_t drive;
	uint32_t command;	/* ATA command byte, 0 if none was issued */
	uint32_t status;	/* status register at the failure */
	uint32_t error;		/* error register at the failure */
	uint32_t bm_status;	/* bus-master status at the failure (DMA) */
	uint32_t phase;		/* enum ata_phase */
	uint32_t reserved;
	uint64_t lba;		/* LBA the drive reported (task file), else the command's */
};

struct ata_drive {
	uint8_t present;	/* ATA disk answered IDENTIFY */
	uint8_t lba48;
	uint8_t flush_ext;
	uint8_t multiple;	/* sectors per DRQ block set by SET MULTIPLE, 0 if off */
	uint64_t sectors;	/* capacity in 512-byte sectors */
	char model[41];
};

extern struct ata_drive ata_drives[ATA_MAX_DRIVES];
extern struct ata_error_record ata_last_error;
extern uint32_t ata_timeout_ms;	/* bound for every wait on the drive */
extern uint32_t ata_ram_end;	/* first byte past usable RAM, for buffer checks */
extern uint32_t ata_completion;	/* enum ata_completion; each command applies it to its channel */

int ata_init(void);
int ata_identify(int drive, void *buf);
int ata_read(int drive, uint64_t lba, uint32_t count, void *buf, int mode);
int ata_write(int drive, uint64_t lba, uint32_t count, const void *buf, int mode);
int ata_flush(int drive);
int ata_set_write_cache(int drive, int enabled);
int ata_reset_channel(int channel);
void ata_irq(int channel);	/* the channel's interrupt handler (irq.c calls it before the EOI) */

#endif
