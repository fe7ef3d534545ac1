/* ata.c: PIIX3 IDE driver: PCI discovery, drive detection, IDENTIFY, PIO (MULTIPLE) and
 * bus-master DMA transfers in LBA28 and LBA48, FLUSH CACHE (EXT), write cache, SRST.
 * Callers: one call at a time, interrupts off (IF clear).
 *
 * Completion (ata_completion), applied to a channel by its next command:
 *  - poll: nIEN set; the driver polls BSY/DRQ in Alternate Status and the bus master's ACTIVE.
 *  - irq: nIEN clear; where ATA/ATAPI-6's protocols raise INTRQ (before each PIO data-in block,
 *    after each data-out block, at the end of a non-data or DMA command) the driver sleeps in
 *    hlt (irq_wait) until ata_irq, the channel's handler, has claimed the interrupt, at most
 *    ata_timeout_ms: a missing one is TIMEOUT in phase IRQ, counted as lost on the line. The
 *    handler reads Status (the drive drops INTRQ), reads the bus master's Status and writes
 *    INTR back (write-1-to-clear), and claims the interrupt only while a command waits on the
 *    channel, the drive is not busy and, for DMA, INTR was set (QEMU shows DRQ, not BSY, while
 *    a DMA runs); anything else is counted as unclaimed. Before each
 *    command the driver lets any interrupt already pending be taken (irq_poll_pending), so a
 *    stale one cannot pass for this command's. Both drives of a channel share its line (14, 15
 *    in compatibility mode); one command at a time on the whole controller, so whatever comes
 *    on the other channel's line meanwhile is unclaimed.
 *
 * QEMU behaviours this driver relies on (QEMU 7.2, hw/ide/core.c and piix.c):
 *  - An absent drive reads status 0x00 (real hardware floats to 0xFF): both mean "none". A
 *    CD-ROM (ATAPI) reads 0x00 after SRST too; its signature in LBA Mid/High tells it apart.
 *  - qboot leaves BAR4 = 0 and the PCI command register = 0: we assign and enable them.
 *  - With nIEN set the bus-master INTR bit never sets: polled DMA completion is ACTIVE clearing.
 *  - The LBA bit (0x40) in the device register is needed even for EXT commands.
 *  - An out-of-range LBA gives ABRT: we refuse it before touching a port.
 *  - A PRD table shorter than the transfer completes silently: the bus master clears ACTIVE,
 *    the drive shows 0x50, no data moves, and no interrupt is raised. With nIEN set
 *    QEMU never sets INTR either, so in poll mode this looks like success. In irq mode it is
 *    the "Interrupt 0, Active 0" case of the Bus Master IDE programming interface (Intel,
 *    revision 1.0): the PRD table was smaller than the transfer; reported as ATA_ERR_DMA.
 *    Tables are built exact.
 *  - Clearing the bus-master START bit while a request is in flight makes QEMU wait for that
 *    request (ide_cancel_dma_sync): a DMA timeout leaves the engine running and returns; START
 *    is cleared before anything else happens on that channel (its next command, or SRST), by
 *    when the harness has let a held request go.
 */
#include <stddef.h>
#include "ata.h"
#include "ata_io.h"
#include "irq.h"
#include "pci.h"
#include "piix3.h"
#include "serial.h"
#include "timer.h"
#include "x86.h"

#define ATA_TIMEOUT_MS_DEFAULT 2000
#define ATA_DETECT_TIMEOUT_US 100000	/* an idle drive is not busy: detection waits briefly */
#define ATA_SRST_PULSE_US 5
#define ATA_SRST_SETTLE_US 2000
#define LBA28_LIMIT (1ull << 28)


struct ata_drive ata_drives[ATA_MAX_DRIVES];
struct ata_error_record ata_last_error;
uint32_t ata_timeout_ms = ATA_TIMEOUT_MS_DEFAULT;
uint32_t ata_ram_end;
uint32_t ata_completion = ATA_COMPLETION_POLL;
int32_t piix3_bdf = -1;

static struct ata_channel channels[2];
/* What a channel's interrupt handler left for the driver (irq completion). */
static volatile struct {
	uint8_t waiting;	/* a command is in flight on the channel: its interrupts are claimed */
	uint8_t dma;		/* ... a DMA command: its one interrupt comes with the bus master's INTR */
	uint8_t claimed;	/* an interrupt came with the drive not busy; consumed by wait_irq */
	uint8_t status;		/* the Status the handler read (for GDB: the driver reads again) */
	uint8_t bm_status;	/* the bus master's Status it read, before INTR went back (ditto) */
} chan_irq[2];
static uint8_t engine_left_running[2];	/* a DMA timed out with START set on this channel */
static int probing;	/* detection in progress: a missing drive is no error worth logging */
static uint32_t prd_table[ATA_PRD_ENTRIES * 2] __attribute__((aligned(4096)));
static uint16_t detect_buf[256];

/**** Registers: every access goes through ata_io.h, by the register names of piix3.h ****/

static struct ata_channel *chan_of(int drive)
{
	return &channels[drive >> 1];
}

static uint8_t alt_status(const struct ata_channel *ch)
{
	return inb((uint16_t)(ch->ctrl + ATA_CB_ASTAT));
}

/* Four alternate-status reads: the 400 ns the drive needs after a select or command. */
static void delay400(const struct ata_channel *ch)
{
	for (int i = 0; i < 4; i++)
		alt_status(ch);
}

/* LBA the drive left in the task file (after an error it names the failing sector). */
static uint64_t taskfile_lba(const struct ata_channel *ch, int lba48)
{
	uint64_t lo = cmd_in(ch, ATA_CB_SN) | (uint32_t)cmd_in(ch, ATA_CB_CL) << 8 |
		      (uint32_t)cmd_in(ch, ATA_CB_CH) << 16;
	if (!lba48)
		return lo | (uint64_t)(cmd_in(ch, ATA_CB_DH) & 0x0F) << 24;
	ctl_out(ch, ch->dc | ATA_CB_DC_HOB);
	uint64_t hi = cmd_in(ch, ATA_CB_SN) | (uint32_t)cmd_in(ch, ATA_CB_CL) << 8 |
		      (uint32_t)cmd_in(ch, ATA_CB_CH) << 16;
	ctl_out(ch, ch->dc);
	return lo | hi << 24;
}

/**** Errors: the record the harness reads, filled before anything can fail ****/

/* Start a call's error record: what is being attempted, before anything can fail. */
static void begin(int drive, uint32_t command, uint64_t lba)
{
	ata_last_error = (struct ata_error_record){0};
	ata_last_error.drive = (uint32_t)drive;
	ata_last_error.command = command;
	ata_last_error.lba = lba;
}

static int fail(int code)
{
	ata_last_error.code = code;
	return code;
}

/* Record a failure seen on the wire: registers, phase, and the drive's LBA for device errors.
   Error is valid only when the status shows ERR or DF with BSY clear; otherwise it stays 0 and
   is not read (a timeout leaves the drive busy: its Error register means nothing yet). */
static int fail_hw(int code, const struct ata_channel *ch, uint8_t status, uint32_t phase, int lba48)
{
	ata_last_error.status = status;
	if (!(status & ATA_CB_STAT_BSY) && (status & (ATA_CB_STAT_ERR | ATA_CB_STAT_DF)))
		ata_last_error.error = cmd_in(ch, ATA_CB_ERR);
	ata_last_error.phase = phase;
	if (ch->bm)
		ata_last_error.bm_status = bm_in(ch, BM_STATUS);
	if (code == ATA_ERR_DEVICE)
		ata_last_error.lba = taskfile_lba(ch, lba48);
	if (!probing)
		kprintf("ata: drive %u cmd %02x %s: status=%02x err=%02x lba=%llu phase=%u\n",
		ata_last_error.drive, ata_last_error.command,
		code == ATA_ERR_TIMEOUT ? "timeout" : "error", ata_last_error.status,
		ata_last_error.error, ata_last_error.lba, phase);
	return fail(code);
}

/**** Commands: bounded waits, selection, and one task file for every command ****/

/* Wait until (status & mask) == want, at most timeout_us; the last status goes to *st. */
static int wait_status(const struct ata_channel *ch, uint8_t mask, uint8_t want, uint64_t timeout_us,
		       uint8_t *st)
{
	uint64_t deadline = deadline_after_us(timeout_us);
	for (;;) {
		*st = alt_status(ch);
		if ((*st & mask) == want)
			return ATA_OK;
		if (deadline_passed(deadline))
			return ATA_ERR_TIMEOUT;
	}
}

static uint64_t timeout_us(void)
{
	return (uint64_t)ata_timeout_ms * 1000;
}

/* Wait for BSY to clear, then fail on ERR or DF. */
static int wait_ready(const struct ata_channel *ch, uint32_t phase, int lba48)
{
	uint8_t st;
	if (wait_status(ch, ATA_CB_STAT_BSY, 0, timeout_us(), &st))
		return fail_hw(ATA_ERR_TIMEOUT, ch, st, phase, lba48);
	if (st & (ATA_CB_STAT_ERR | ATA_CB_STAT_DF))
		return fail_hw(ATA_ERR_DEVICE, ch, st, phase, lba48);
	return ATA_OK;
}

/* Wait for the drive to ask for a PIO data block. */
static int wait_drq(const struct ata_channel *ch, int lba48)
{
	int rc = wait_ready(ch, ATA_PHASE_DRQ, lba48);
	if (rc)
		return rc;
	uint8_t st = alt_status(ch);
	if (!(st & ATA_CB_STAT_DRQ))
		return fail_hw(ATA_ERR_DEVICE, ch, st, ATA_PHASE_DRQ, lba48);
	return ATA_OK;
}

/* The interrupt line of a channel (compatibility mode). */
static uint32_t irq_line(int channel)
{
	return channel ? IRQ_IDE_SECONDARY : IRQ_IDE_PRIMARY;
}

/* Before a command: apply the completion mode to the channel's nIEN, and in irq mode let an
   interrupt already pending be taken now (unclaimed: no command waits), then wait for this
   command's. */
static void arm_irq(int channel, int dma)
{
	struct ata_channel *ch = &channels[channel];
	uint8_t dc = ata_completion == ATA_COMPLETION_IRQ ? 0 : ATA_CB_DC_NIEN;
	if (ch->dc != dc) {
		ch->dc = dc;
		ctl_out(ch, dc);
	}
	chan_irq[0].waiting = chan_irq[1].waiting = 0;
	if (dc)
		return;
	irq_poll_pending();
	chan_irq[channel].claimed = 0;
	chan_irq[channel].dma = (uint8_t)dma;
	chan_irq[channel].waiting = 1;
}

/* irq completion: sleep until the channel's handler has claimed an interrupt, at most the
   timeout (the PIT tick wakes hlt to look at the clock). The caller then reads the state the
   interrupt announced as in poll mode. For DMA, the bus master going inactive without INTR
   while the drive is not busy is an underrun (see the top): no interrupt is coming. Poll
   completion: nothing to wait for here. */
static int wait_irq(int channel, int lba48)
{
	struct ata_channel *ch = &channels[channel];
	if (ch->dc & ATA_CB_DC_NIEN)
		return ATA_OK;
	uint64_t deadline = deadline_after_us(timeout_us());
	int rc = ATA_OK;
	irq_tick(1);
	while (!chan_irq[channel].claimed) {
		if (chan_irq[channel].dma && !(bm_in(ch, BM_STATUS) & (BM_STATUS_ACTIVE | BM_STATUS_INTR)) &&
		    !(alt_status(ch) & ATA_CB_STAT_BSY)) {
			kprintf("ata: channel %d: bus master inactive without INTR: PRD table shorter "
				"than the transfer\n", channel);
			rc = fail_hw(ATA_ERR_DMA, ch, alt_status(ch), ATA_PHASE_DMA, lba48);
			break;
		}
		if (deadline_passed(deadline)) {
			irq_stats[irq_line(channel)].lost++;
			rc = fail_hw(ATA_ERR_TIMEOUT, ch, alt_status(ch), ATA_PHASE_IRQ, lba48);
			break;
		}
		irq_wait();
	}
	irq_tick(0);
	chan_irq[channel].claimed = 0;
	return rc;
}

void ata_irq(int channel)
{
	struct ata_channel *ch = &channels[channel];
	uint8_t st = cmd_in(ch, ATA_CB_STAT);	/* acknowledge: the drive drops INTRQ */
	uint8_t bms = ch->bm ? bm_in(ch, BM_STATUS) : 0;
	if (bms & BM_STATUS_INTR)
		bm_out(ch, BM_STATUS,
		       (uint8_t)((bms & (BM_STATUS_DRV0_DMA | BM_STATUS_DRV1_DMA)) | BM_STATUS_INTR));
	if (chan_irq[channel].waiting && !(st & ATA_CB_STAT_BSY) &&
	    (!chan_irq[channel].dma || (bms & BM_STATUS_INTR))) {
		chan_irq[channel].status = st;
		chan_irq[channel].bm_status = bms;
		chan_irq[channel].claimed = 1;
	} else {
		irq_stats[irq_line(channel)].unclaimed++;
	}
}

/* Select the drive (DH bits beyond the drive bit in dh_extra) and wait until it is idle. */
static int select_drive(int drive, uint8_t dh_extra)
{
	struct ata_channel *ch = chan_of(drive);
	uint8_t st;
	if (wait_status(ch, ATA_CB_STAT_BSY | ATA_CB_STAT_DRQ, 0, timeout_us(), &st))
		return fail_hw(ATA_ERR_TIMEOUT, ch, st, ATA_PHASE_SELECT, 0);
	cmd_out(ch, ATA_CB_DH,
		(uint8_t)(ATA_CB_DH_OBS | ATA_CB_DH_LBA | ((drive & 1) ? ATA_CB_DH_DEV1 : 0) | dh_extra));
	delay400(ch);
	if (wait_status(ch, ATA_CB_STAT_BSY | ATA_CB_STAT_DRQ, 0, timeout_us(), &st))
		return fail_hw(ATA_ERR_TIMEOUT, ch, st, ATA_PHASE_SELECT, 0);
	return ATA_OK;
}

/* What one command puts in the task file. */
struct ata_taskfile {
	uint8_t command;
	uint8_t feature;
	uint32_t count;		/* 0 means 256 (LBA28) or 65536 (LBA48) */
	uint64_t lba;
	int lba48;		/* an EXT command: HOB bytes first */
	int dma;		/* a DMA command (the bus master is set up) */
};

/* After a DMA timeout the engine was left running (see the top): stop it before the channel
   is used again. */
static void stop_left_engine(int channel)
{
	if (!engine_left_running[channel])
		return;
	bm_out(&channels[channel], BM_CMD, 0);
	engine_left_running[channel] = 0;
}

/* Select the drive, load the task file and write the command. */
static int send_cmd(int drive, const struct ata_taskfile *tf)
{
	struct ata_channel *ch = chan_of(drive);
	stop_left_engine(drive >> 1);
	arm_irq(drive >> 1, tf->dma);
	int rc = select_drive(drive, tf->lba48 ? 0 : (uint8_t)((tf->lba >> 24) & 0x0F));
	if (rc)
		return rc;
	if (tf->lba48) {
		cmd_out(ch, ATA_CB_FR, 0);
		cmd_out(ch, ATA_CB_SC, (uint8_t)(tf->count >> 8));
		cmd_out(ch, ATA_CB_SN, (uint8_t)(tf->lba >> 24));
		cmd_out(ch, ATA_CB_CL, (uint8_t)(tf->lba >> 32));
		cmd_out(ch, ATA_CB_CH, (uint8_t)(tf->lba >> 40));
	}
	cmd_out(ch, ATA_CB_FR, tf->feature);
	cmd_out(ch, ATA_CB_SC, (uint8_t)tf->count);
	cmd_out(ch, ATA_CB_SN, (uint8_t)tf->lba);
	cmd_out(ch, ATA_CB_CL, (uint8_t)(tf->lba >> 8));
	cmd_out(ch, ATA_CB_CH, (uint8_t)(tf->lba >> 16));
	cmd_out(ch, ATA_CB_CMD, tf->command);
	delay400(ch);
	return ATA_OK;
}

/* A command without data: send, wait for completion, check status. */
static int nondata(int drive, uint8_t command, uint8_t feature, uint32_t count)
{
	struct ata_channel *ch = chan_of(drive);
	const struct ata_taskfile tf = { .command = command, .feature = feature, .count = count };
	int rc = send_cmd(drive, &tf);
	if (rc)
		return rc;
	rc = wait_irq(drive >> 1, 0);
	if (rc)
		return rc;
	rc = wait_ready(ch, ATA_PHASE_COMPLETE, 0);
	cmd_in(ch, ATA_CB_STAT);	/* acknowledge */
	return rc;
}

/**** Argument checks: nothing touches a port before them ****/

/* Argument checks shared by every call on a drive. */
static int check_drive(int drive)
{
	if (drive < 0 || drive >= ATA_MAX_DRIVES)
		return fail(ATA_ERR_INVAL);
	if (!channels[0].cmd)
		return fail(ATA_ERR_NOCTRL);
	if (!ata_drives[drive].present)
		return fail(ATA_ERR_NODEV);
	return ATA_OK;
}

static int check_buffer(const void *buf, uint32_t bytes)
{
	uintptr_t p = (uintptr_t)buf;
	if (!buf || p + bytes < p || (ata_ram_end && p + bytes > ata_ram_end))
		return fail(ATA_ERR_INVAL);
	return ATA_OK;
}

static int check_xfer(int drive, uint64_t lba, uint32_t count, const void *buf, int mode)
{
	int rc = check_drive(drive);
	if (rc)
		return rc;
	const struct ata_drive *d = &ata_drives[drive];
	if (mode != ATA_MODE_PIO && mode != ATA_MODE_DMA)
		return fail(ATA_ERR_INVAL);
	if (count == 0 || count > (d->lba48 ? ATA_MAX_COUNT_LBA48 : ATA_MAX_COUNT_LBA28))
		return fail(ATA_ERR_INVAL);
	if (lba >= d->sectors || count > d->sectors - lba)
		return fail(ATA_ERR_RANGE);
	if (mode == ATA_MODE_DMA && (((uintptr_t)buf & 1) || !channels[drive >> 1].bm))
		return fail(ATA_ERR_INVAL);
	return check_buffer(buf, count * ATA_SECTOR_SIZE);
}

/* Does this transfer need the EXT (LBA48) commands? */
static int needs_lba48(uint64_t lba, uint32_t count)
{
	return lba + count > LBA28_LIMIT || count > ATA_MAX_COUNT_LBA28;
}

/**** PIO transfers ****/

static int pio_xfer(int drive, uint64_t lba, uint32_t count, uint8_t *buf, int writing)
{
	struct ata_channel *ch = chan_of(drive);
	const struct ata_drive *d = &ata_drives[drive];
	int lba48 = needs_lba48(lba, count);
	uint32_t block = d->multiple ? d->multiple : 1;
	uint8_t command;
	if (d->multiple)
		command = writing ? (lba48 ? ATA_CMD_WRITE_MULTIPLE_EXT : ATA_CMD_WRITE_MULTIPLE)
				  : (lba48 ? ATA_CMD_READ_MULTIPLE_EXT : ATA_CMD_READ_MULTIPLE);
	else
		command = writing ? (lba48 ? ATA_CMD_WRITE_SECTORS_EXT : ATA_CMD_WRITE_SECTORS)
				  : (lba48 ? ATA_CMD_READ_SECTORS_EXT : ATA_CMD_READ_SECTORS);
	ata_last_error.command = command;
	const struct ata_taskfile tf = { .command = command, .count = count, .lba = lba, .lba48 = lba48 };
	int rc = send_cmd(drive, &tf);
	if (rc)
		return rc;
	for (uint32_t done = 0; done < count;) {
		uint32_t n = count - done < block ? count - done : block;
		if (!writing || done) {	/* data-out: no interrupt before the first block */
			rc = wait_irq(drive >> 1, lba48);
			if (rc)
				return rc;
		}
		rc = wait_drq(ch, lba48);
		if (rc)
			return rc;
		if (writing)
			outsl((uint16_t)(ch->cmd + ATA_CB_DATA), buf, n * ATA_SECTOR_SIZE / 4);
		else
			insl((uint16_t)(ch->cmd + ATA_CB_DATA), buf, n * ATA_SECTOR_SIZE / 4);
		buf += n * ATA_SECTOR_SIZE;
		done += n;
	}
	if (writing) {	/* data-in: no interrupt after the last block */
		rc = wait_irq(drive >> 1, lba48);
		if (rc)
			return rc;
	}
	rc = wait_ready(ch, ATA_PHASE_COMPLETE, lba48);
	cmd_in(ch, ATA_CB_STAT);	/* acknowledge */
	return rc;
}

/**** Bus-master DMA transfers ****/

/* Fill the PRD table for [addr, addr+bytes): no entry crosses 64 KiB, EOT on the last. */
static int build_prd(uint32_t addr, uint32_t bytes)
{
	uint32_t n = 0;
	while (bytes) {
		if (n == ATA_PRD_ENTRIES)
			return fail(ATA_ERR_INVAL);
		uint32_t chunk = BM_PRD_MAX_BYTES - (addr & (BM_PRD_MAX_BYTES - 1));
		if (chunk > bytes)
			chunk = bytes;
		prd_table[2 * n] = addr;
		prd_table[2 * n + 1] = chunk & 0xFFFF;	/* 0 encodes 64 KiB */
		addr += chunk;
		bytes -= chunk;
		n++;
	}
	prd_table[2 * (n - 1) + 1] |= BM_PRD_EOT;
	return ATA_OK;
}

static int dma_xfer(int drive, uint64_t lba, uint32_t count, uint8_t *buf, int writing)
{
	struct ata_channel *ch = chan_of(drive);
	int lba48 = needs_lba48(lba, count);
	uint8_t command = writing ? (lba48 ? ATA_CMD_WRITE_DMA_EXT : ATA_CMD_WRITE_DMA)
				  : (lba48 ? ATA_CMD_READ_DMA_EXT : ATA_CMD_READ_DMA);
	uint8_t dir = writing ? 0 : BM_CMD_READ;
	ata_last_error.command = command;
	int rc = build_prd((uint32_t)(uintptr_t)buf, count * ATA_SECTOR_SIZE);
	if (rc)
		return rc;
	bm_out(ch, BM_CMD, 0);
	engine_left_running[drive >> 1] = 0;
	bm_out(ch, BM_STATUS, (uint8_t)(bm_in(ch, BM_STATUS) | BM_STATUS_ERR | BM_STATUS_INTR));
	outl((uint16_t)(ch->bm + BM_PRDT), (uint32_t)(uintptr_t)prd_table);
	bm_out(ch, BM_CMD, dir);
	const struct ata_taskfile tf = { .command = command, .count = count, .lba = lba, .lba48 = lba48,
					 .dma = 1 };
	rc = send_cmd(drive, &tf);
	if (rc)
		return rc;
	bm_out(ch, BM_CMD, (uint8_t)(dir | BM_CMD_START));
	uint64_t deadline = deadline_after_us(timeout_us());
	rc = wait_irq(drive >> 1, lba48);
	if (rc) {
		engine_left_running[drive >> 1] = 1;	/* as after the polled timeout below */
		return rc;
	}
	uint8_t bms, st;
	for (;;) {
		bms = bm_in(ch, BM_STATUS);
		st = alt_status(ch);
		if (!(bms & BM_STATUS_ACTIVE) && !(st & ATA_CB_STAT_BSY))
			break;
		if ((st & ATA_CB_STAT_ERR) && !(st & ATA_CB_STAT_BSY))
			break;	/* the drive aborted; the engine may still look active */
		if (deadline_passed(deadline)) {
			/* The engine is left running: in QEMU, clearing START mid-transfer
			   waits for the request, forever if it never ends. The next command
			   on the channel, or SRST, stops it. */
			engine_left_running[drive >> 1] = 1;
			return fail_hw(ATA_ERR_TIMEOUT, ch, st, ATA_PHASE_DMA, lba48);
		}
	}
	bm_out(ch, BM_CMD, dir);	/* stop the engine */
	if (st & (ATA_CB_STAT_ERR | ATA_CB_STAT_DF))
		return fail_hw(ATA_ERR_DEVICE, ch, cmd_in(ch, ATA_CB_STAT), ATA_PHASE_DMA, lba48);
	cmd_in(ch, ATA_CB_STAT);	/* acknowledge */
	if (bms & BM_STATUS_ERR)
		return fail_hw(ATA_ERR_DMA, ch, st, ATA_PHASE_DMA, lba48);
	return ATA_OK;
}

/**** The calls: read, write, identify, flush, write cache ****/

int ata_read(int drive, uint64_t lba, uint32_t count, void *buf, int mode)
{
	begin(drive, 0, lba);
	int rc = check_xfer(drive, lba, count, buf, mode);
	if (rc)
		return rc;
	return mode == ATA_MODE_DMA ? dma_xfer(drive, lba, count, buf, 0)
				    : pio_xfer(drive, lba, count, buf, 0);
}

int ata_write(int drive, uint64_t lba, uint32_t count, const void *buf, int mode)
{
	begin(drive, 0, lba);
	int rc = check_xfer(drive, lba, count, buf, mode);
	if (rc)
		return rc;
	/* The transfer routines only read from buf when writing. */
	return mode == ATA_MODE_DMA ? dma_xfer(drive, lba, count, (uint8_t *)(uintptr_t)buf, 1)
				    : pio_xfer(drive, lba, count, (uint8_t *)(uintptr_t)buf, 1);
}

/* IDENTIFY DEVICE into buf (256 words); the caller has checked the drive number. */
static int identify_into(int drive, uint16_t *buf)
{
	struct ata_channel *ch = chan_of(drive);
	const struct ata_taskfile tf = { .command = ATA_CMD_IDENTIFY };
	int rc = send_cmd(drive, &tf);
	if (rc)
		return rc;
	rc = wait_irq(drive >> 1, 0);
	if (rc)
		return rc;
	rc = wait_drq(ch, 0);
	if (rc)
		return rc;
	insl((uint16_t)(ch->cmd + ATA_CB_DATA), buf, ATA_SECTOR_SIZE / 4);
	rc = wait_ready(ch, ATA_PHASE_COMPLETE, 0);
	cmd_in(ch, ATA_CB_STAT);	/* acknowledge */
	return rc;
}

int ata_identify(int drive, void *buf)
{
	begin(drive, ATA_CMD_IDENTIFY, 0);
	int rc = check_drive(drive);
	if (rc)
		return rc;
	rc = check_buffer(buf, ATA_SECTOR_SIZE);
	if (rc)
		return rc;
	return identify_into(drive, buf);
}

int ata_flush(int drive)
{
	begin(drive, 0, 0);
	int rc = check_drive(drive);
	if (rc)
		return rc;
	uint8_t command = ata_drives[drive].flush_ext ? ATA_CMD_FLUSH_CACHE_EXT : ATA_CMD_FLUSH_CACHE;
	ata_last_error.command = command;
	return nondata(drive, command, 0, 0);
}

int ata_set_write_cache(int drive, int enabled)
{
	begin(drive, ATA_CMD_SET_FEATURES, 0);
	int rc = check_drive(drive);
	if (rc)
		return rc;
	return nondata(drive, ATA_CMD_SET_FEATURES,
		       enabled ? ATA_SF_ENABLE_WCACHE : ATA_SF_DISABLE_WCACHE, 0);
}

/**** Detection: which positions hold an ATA disk ****/

static void copy_id_string(char *dst, const uint16_t *id, int word, int words)
{
	int n = 0;
	for (int i = 0; i < words; i++) {
		dst[n++] = (char)(id[word + i] >> 8);
		dst[n++] = (char)(id[word + i] & 0xFF);
	}
	while (n > 0 && dst[n - 1] == ' ')
		n--;
	dst[n] = 0;
}

/* The signature a packet (ATAPI) device leaves in LBA Mid/High after a reset and after
   aborting IDENTIFY DEVICE. */
static int atapi_signature(const struct ata_channel *ch)
{
	uint8_t mid = cmd_in(ch, ATA_CB_CL), high = cmd_in(ch, ATA_CB_CH);
	return mid == 0x14 && high == 0xEB;
}

/* Probe one drive: is an ATA disk there? Fills ata_drives[drive] from its IDENTIFY data. */
static void detect(int drive)
{
	struct ata_channel *ch = chan_of(drive);
	struct ata_drive *d = &ata_drives[drive];
	uint8_t st;
	*d = (struct ata_drive){0};
	cmd_out(ch, ATA_CB_DH, (uint8_t)(ATA_CB_DH_OBS | ((drive & 1) ? ATA_CB_DH_DEV1 : 0)));
	delay400(ch);
	st = alt_status(ch);
	if (st == 0x00 || st == 0xFF)
		return;	/* nothing drives the bus */
	if (wait_status(ch, ATA_CB_STAT_BSY, 0, ATA_DETECT_TIMEOUT_US, &st))
		return;
	begin(drive, ATA_CMD_IDENTIFY, 0);
	probing = 1;
	int rc = identify_into(drive, detect_buf);
	probing = 0;
	if (rc) {
		if (atapi_signature(ch))
			kprintf("ata: drive %d: ATAPI device, not a disk; ignored\n", drive);
		ata_last_error = (struct ata_error_record){0};
		return;
	}
	const uint16_t *id = detect_buf;
	d->lba48 = (id[ID_WORD_CMDSET2] & ID_CMDSET2_LBA48) != 0;
	d->flush_ext = (id[ID_WORD_CMDSET2] & ID_CMDSET2_FLUSH_EXT) != 0;
	if (d->lba48)
		d->sectors = (uint64_t)id[ID_WORD_LBA48] | (uint64_t)id[ID_WORD_LBA48 + 1] << 16 |
			     (uint64_t)id[ID_WORD_LBA48 + 2] << 32 | (uint64_t)id[ID_WORD_LBA48 + 3] << 48;
	else
		d->sectors = (uint64_t)id[ID_WORD_LBA28] | (uint64_t)id[ID_WORD_LBA28 + 1] << 16;
	copy_id_string(d->model, id, ID_WORD_MODEL, 20);
	d->present = 1;
	uint8_t max_multiple = (uint8_t)(id[ID_WORD_MAX_MULTIPLE] & 0xFF);
	if (max_multiple > 1 && nondata(drive, ATA_CMD_SET_MULTIPLE, 0, max_multiple) == ATA_OK)
		d->multiple = max_multiple;
	ata_last_error = (struct ata_error_record){0};
}

static const char *const drive_names[ATA_MAX_DRIVES] = {
	"primary master", "primary slave", "secondary master", "secondary slave",
};

static void detect_channel(int channel)
{
	struct ata_channel *ch = &channels[channel];
	/* After a reset a packet (ATAPI) device reads status 0 with its signature in LBA Mid/High,
	   until the task file is written (both devices take every write): look at both first. */
	int packet[2];
	for (int unit = 0; unit < 2; unit++) {
		cmd_out(ch, ATA_CB_DH, (uint8_t)(ATA_CB_DH_OBS | (unit ? ATA_CB_DH_DEV1 : 0)));
		delay400(ch);
		packet[unit] = alt_status(ch) == 0x00 && atapi_signature(ch);
	}
	for (int drive = channel * 2; drive < channel * 2 + 2; drive++) {
		if (packet[drive & 1]) {
			ata_drives[drive] = (struct ata_drive){0};
			kprintf("ata: drive %d: ATAPI device, not a disk; ignored\n", drive);
		} else {
			detect(drive);
		}
		const struct ata_drive *d = &ata_drives[drive];
		if (d->present)
			kprintf("ata: drive %d (%s): %s, %llu sectors (%llu MiB)%s, multiple %u\n", drive,
				drive_names[drive], d->model, d->sectors, d->sectors >> 11,
				d->lba48 ? ", LBA48" : "", d->multiple);
		else
			kprintf("ata: drive %d (%s): none\n", drive, drive_names[drive]);
	}
	cmd_out(ch, ATA_CB_DH, ATA_CB_DH_OBS);	/* leave master selected */
}

/**** Soft reset ****/

int ata_reset_channel(int channel)
{
	begin(channel * 2, 0, 0);
	if (channel < 0 || channel > 1)
		return fail(ATA_ERR_INVAL);
	if (!channels[0].cmd)
		return fail(ATA_ERR_NOCTRL);
	struct ata_channel *ch = &channels[channel];
	stop_left_engine(channel);
	ctl_out(ch, ch->dc | ATA_CB_DC_SRST);
	udelay(ATA_SRST_PULSE_US);
	ctl_out(ch, ch->dc);
	udelay(ATA_SRST_SETTLE_US);
	uint8_t st = alt_status(ch);
	if (st != 0x00 && st != 0xFF && wait_status(ch, ATA_CB_STAT_BSY, 0, timeout_us(), &st))
		return fail_hw(ATA_ERR_TIMEOUT, ch, st, ATA_PHASE_RESET, 0);
	kprintf("ata: channel %d reset\n", channel);
	detect_channel(channel);
	return ATA_OK;
}

/**** Discovery: the PCI function and its channels ****/

/* Find the PIIX3 IDE function, make its I/O and bus mastering usable, set up both channels. */
static int piix3_setup(void)
{
	int32_t bdf = pci_find(PIIX3_VENDOR_ID, PIIX3_IDE_DEVICE_ID);
	if (bdf < 0) {
		kprintf("pci: no PIIX3 IDE function (%04x:%04x)\n", PIIX3_VENDOR_ID, PIIX3_IDE_DEVICE_ID);
		return ATA_ERR_NOCTRL;
	}
	piix3_bdf = bdf;
	uint32_t b = (uint32_t)bdf;
	uint8_t progif = pci_read8(b, PCI_PROG_IF);
	uint32_t bmiba = pci_read32(b, PCI_BAR4) & PCI_BAR_IO_MASK;
	uint16_t command = pci_read16(b, PCI_COMMAND);
	kprintf("pci: PIIX3 IDE at %02x:%02x.%x (%04x:%04x) prog-if %02x bmiba %04x command %04x\n",
		PCI_BDF_BUS(b), PCI_BDF_DEV(b), PCI_BDF_FN(b), PIIX3_VENDOR_ID, PIIX3_IDE_DEVICE_ID,
		progif, bmiba, command);
	if (!bmiba) {
		bmiba = PIIX3_BMIBA_DEFAULT;
		pci_write32(b, PCI_BAR4, bmiba | 1);
		bmiba = pci_read32(b, PCI_BAR4) & PCI_BAR_IO_MASK;
		kprintf("pci: firmware left BAR4 unset; assigned %04x\n", bmiba);
	}
	if ((command & (PCI_COMMAND_IO | PCI_COMMAND_MASTER)) != (PCI_COMMAND_IO | PCI_COMMAND_MASTER)) {
		pci_write16(b, PCI_COMMAND, command | PCI_COMMAND_IO | PCI_COMMAND_MASTER);
		kprintf("pci: enabled I/O and bus mastering (command %04x)\n", pci_read16(b, PCI_COMMAND));
	}
	for (int c = 0; c < 2; c++) {
		uint8_t timing_reg = c ? PIIX3_IDETIM_SEC : PIIX3_IDETIM_PRI;
		uint16_t idetim = pci_read16(b, timing_reg);
		if (!(idetim & PIIX3_IDETIM_IDE))
			pci_write16(b, timing_reg, idetim | PIIX3_IDETIM_IDE);
		int native = progif & (c ? PCI_PROG_IF_SEC_NATIVE : PCI_PROG_IF_PRI_NATIVE);
		if (native) {
			channels[c].cmd = (uint16_t)(pci_read32(b, (uint8_t)(PCI_BAR0 + 8 * c)) & PCI_BAR_IO_MASK);
			channels[c].ctrl = (uint16_t)((pci_read32(b, (uint8_t)(PCI_BAR0 + 8 * c + 4)) & PCI_BAR_IO_MASK) + 2);
		} else {
			channels[c].cmd = c ? ATA_SEC_CMD_BASE : ATA_PRI_CMD_BASE;
			channels[c].ctrl = c ? ATA_SEC_CTRL_BASE : ATA_PRI_CTRL_BASE;
		}
		channels[c].bm = (uint16_t)(bmiba + BM_CHANNEL_STRIDE * c);
		channels[c].dc = ATA_CB_DC_NIEN;	/* ata_init writes it: poll completion */
		kprintf("ata: channel %d: %s, cmd %04x ctrl %04x bm %04x\n", c, native ? "native" : "legacy",
			channels[c].cmd, channels[c].ctrl, channels[c].bm);
	}
	return ATA_OK;
}

int ata_init(void)
{
	int rc = piix3_setup();
	if (rc)
		return rc;
	for (int c = 0; c < 2; c++) {
		ctl_out(&channels[c], ATA_CB_DC_NIEN);
		detect_channel(c);
		uint8_t capable = (uint8_t)((ata_drives[2 * c].present ? BM_STATUS_DRV0_DMA : 0) |
					    (ata_drives[2 * c + 1].present ? BM_STATUS_DRV1_DMA : 0));
		bm_out(&channels[c], BM_STATUS, (uint8_t)(capable | BM_STATUS_ERR | BM_STATUS_INTR));
	}
	return ATA_OK;
}
