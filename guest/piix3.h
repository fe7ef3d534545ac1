/* piix3.h: PIIX3 IDE (82371SB function 1) and ATA register map, named after the datasheets.
   Offsets are from the base named in each comment. */
#ifndef PIIX3_H
#define PIIX3_H

/* PCI identity and configuration space (config offset, width). */
#define PIIX3_VENDOR_ID     0x8086
#define PIIX3_IDE_DEVICE_ID 0x7010
#define PCI_CFG_ADDR        0xCF8	/* config address, out (mechanism #1) */
#define PCI_CFG_DATA        0xCFC	/* config data, in/out */
#define PCI_VENDOR          0x00	/* 16-bit */
#define PCI_DEVICE          0x02	/* 16-bit */
#define PCI_COMMAND         0x04	/* 16-bit */
#define PCI_COMMAND_IO      0x0001	/* I/O space enable */
#define PCI_COMMAND_MASTER  0x0004	/* bus master enable */
#define PCI_PROG_IF         0x09	/* 8-bit */
#define PCI_PROG_IF_PRI_NATIVE 0x01	/* primary channel in native mode */
#define PCI_PROG_IF_SEC_NATIVE 0x04	/* secondary channel in native mode */
#define PCI_BAR0            0x10	/* 32-bit; BAR0..3: native-mode task file bases */
#define PCI_BAR4            0x20	/* 32-bit; bus-master IDE (BMIBA), 16 ports */
#define PCI_BAR_IO_MASK     0xFFFFFFFCu
#define PIIX3_IDETIM_PRI    0x40	/* 16-bit primary IDE timing */
#define PIIX3_IDETIM_SEC    0x42	/* 16-bit secondary IDE timing */
#define PIIX3_IDETIM_IDE    0x8000	/* IDE decode enable */
#define PIIX3_BMIBA_DEFAULT 0xC040	/* where we place BAR4 when firmware left it 0 */

/* Legacy (compatibility mode) bases. */
#define ATA_PRI_CMD_BASE    0x1F0
#define ATA_PRI_CTRL_BASE   0x3F6
#define ATA_SEC_CMD_BASE    0x170
#define ATA_SEC_CTRL_BASE   0x376

/* Command block registers, cmd_base + n. */
#define ATA_CB_DATA   0	/* data, in/out (16/32-bit) */
#define ATA_CB_ERR    1	/* error, in */
#define ATA_CB_FR     1	/* features, out */
#define ATA_CB_SC     2	/* sector count, in/out */
#define ATA_CB_SN     3	/* LBA low, in/out */
#define ATA_CB_CL     4	/* LBA mid, in/out */
#define ATA_CB_CH     5	/* LBA high, in/out */
#define ATA_CB_DH     6	/* device/head, in/out */
#define ATA_CB_STAT   7	/* status, in */
#define ATA_CB_CMD    7	/* command, out */

/* Control block registers, ctrl_base + n. */
#define ATA_CB_ASTAT  0	/* alternate status, in */
#define ATA_CB_DC     0	/* device control, out */

/* Status bits. */
#define ATA_CB_STAT_BSY  0x80
#define ATA_CB_STAT_RDY  0x40
#define ATA_CB_STAT_DF   0x20
#define ATA_CB_STAT_DSC  0x10
#define ATA_CB_STAT_DRQ  0x08
#define ATA_CB_STAT_CORR 0x04
#define ATA_CB_STAT_IDX  0x02
#define ATA_CB_STAT_ERR  0x01

/* Error bits. */
#define ATA_CB_ER_ICRC  0x80
#define ATA_CB_ER_UNC   0x40
#define ATA_CB_ER_MC    0x20
#define ATA_CB_ER_IDNF  0x10
#define ATA_CB_ER_MCR   0x08
#define ATA_CB_ER_ABRT  0x04
#define ATA_CB_ER_NM    0x02
#define ATA_CB_ER_AMNF  0x01

/* Device/head bits. */
#define ATA_CB_DH_OBS   0xA0	/* bits 7 and 5, set by convention */
#define ATA_CB_DH_LBA   0x40
#define ATA_CB_DH_DEV1  0x10	/* select slave */

/* Device control bits. */
#define ATA_CB_DC_HOB   0x80	/* read back the previous (high-order) LBA48 bytes */
#define ATA_CB_DC_SRST  0x04	/* software reset */
#define ATA_CB_DC_NIEN  0x02	/* no interrupts */

/* ATA commands. */
#define ATA_CMD_READ_SECTORS       0x20
#define ATA_CMD_READ_SECTORS_EXT   0x24
#define ATA_CMD_READ_DMA_EXT       0x25
#define ATA_CMD_READ_MULTIPLE_EXT  0x29
#define ATA_CMD_WRITE_SECTORS      0x30
#define ATA_CMD_WRITE_SECTORS_EXT  0x34
#define ATA_CMD_WRITE_DMA_EXT      0x35
#define ATA_CMD_WRITE_MULTIPLE_EXT 0x39
#define ATA_CMD_READ_MULTIPLE      0xC4
#define ATA_CMD_WRITE_MULTIPLE     0xC5
#define ATA_CMD_SET_MULTIPLE       0xC6
#define ATA_CMD_READ_DMA           0xC8
#define ATA_CMD_WRITE_DMA          0xCA
#define ATA_CMD_FLUSH_CACHE        0xE7
#define ATA_CMD_FLUSH_CACHE_EXT    0xEA
#define ATA_CMD_IDENTIFY           0xEC
#define ATA_CMD_SET_FEATURES       0xEF

/* SET FEATURES subcommands (features register). */
#define ATA_SF_ENABLE_WCACHE  0x02
#define ATA_SF_XFER_MODE      0x03
#define ATA_SF_DISABLE_WCACHE 0x82
#define ATA_XFER_MWDMA(n)     (0x20 | (n))

/* Bus-master IDE registers, bm_base (+8 for the secondary channel) + n. */
#define BM_CMD        0	/* command, in/out */
#define BM_STATUS     2	/* status, in/out (ERR and INTR write-1-to-clear) */
#define BM_PRDT       4	/* PRD table address, in/out (32-bit, dword aligned) */
#define BM_CHANNEL_STRIDE 8
#define BM_CMD_START  0x01
#define BM_CMD_READ   0x08	/* bus master writes memory: a device-to-memory transfer */
#define BM_STATUS_ACTIVE 0x01
#define BM_STATUS_ERR    0x02
#define BM_STATUS_INTR   0x04
#define BM_STATUS_DRV0_DMA 0x20
#define BM_STATUS_DRV1_DMA 0x40
#define BM_PRD_EOT    0x80000000u	/* last entry of the table */
#define BM_PRD_MAX_BYTES 0x10000u	/* an entry moves at most 64 KiB (count 0 = 64 KiB) */

/* The PIIX3's interrupt controllers: two cascaded 8259As (82371SB datasheet; Intel 8259A
   datasheet for the command words). The slave is on the master's IR2. */
#define PIC_MASTER_CMD   0x20	/* ICW1, OCW2, OCW3 out; IRR/ISR in (as OCW3 selected) */
#define PIC_MASTER_DATA  0x21	/* ICW2..4, then OCW1 (the mask register, IMR) in/out */
#define PIC_SLAVE_CMD    0xA0
#define PIC_SLAVE_DATA   0xA1
#define PIC_ICW1_INIT    0x11	/* ICW1: initialise, edge-triggered, cascade, ICW4 follows */
#define PIC_ICW4_8086    0x01	/* ICW4: 8086 mode, normal EOI */
#define PIC_CASCADE_LINE 2	/* the master's input that carries the slave */
#define PIC_OCW2_EOI     0x20	/* non-specific end of interrupt */
#define PIC_OCW3_READ_IRR 0x0A	/* the next read of the command port returns IRR */
#define PIC_OCW3_READ_ISR 0x0B	/* ... returns ISR (in-service) */
#define PIC_SPURIOUS_IR  7	/* a controller answers an acknowledge with no request as IR7 */
#define IRQ_LINES        16
#define IRQ_PIT          0	/* the 8254's counter 0 */
#define IRQ_IDE_PRIMARY  14	/* compatibility-mode channels: fixed lines */
#define IRQ_IDE_SECONDARY 15

/* IDENTIFY DEVICE words. */
#define ID_WORD_SERIAL       10	/* 10 words */
#define ID_WORD_FIRMWARE     23	/* 4 words */
#define ID_WORD_MODEL        27	/* 20 words */
#define ID_WORD_MAX_MULTIPLE 47	/* low byte: sectors per DRQ block */
#define ID_WORD_CAPS         49	/* bit 9: LBA, bit 8: DMA */
#define ID_WORD_LBA28        60	/* 2 words */
#define ID_WORD_MWDMA        63
#define ID_WORD_CMDSET2      83	/* bit 10: LBA48, bit 13: FLUSH CACHE EXT */
#define ID_WORD_LBA48        100	/* 4 words */
#define ID_CMDSET2_LBA48     (1u << 10)
#define ID_CMDSET2_FLUSH_EXT (1u << 13)
#endif
