"""PIIX3/ATA names for numbers: driver result codes, status and error bits, commands.

Mirrors guest/ata.h and guest/piix3.h; tests/unit/test_regs.py checks they agree.
"""

from __future__ import annotations

from enum import IntEnum


class AtaCode(IntEnum):
    """The driver's result codes (enum ata_err in guest/ata.h)."""

    OK = 0
    NODEV = -1
    INVAL = -2
    RANGE = -3
    TIMEOUT = -4
    DEVICE = -5
    DMA = -6
    NOTSUP = -7
    NOCTRL = -8

    @property
    def meaning(self) -> str:
        return _CODE_MEANING[self]


_CODE_MEANING = {
    AtaCode.OK: "success",
    AtaCode.NODEV: "no ATA disk at that drive number",
    AtaCode.INVAL: "invalid argument",
    AtaCode.RANGE: "LBA or LBA + count past the end of the disk",
    AtaCode.TIMEOUT: "the drive did not answer in time",
    AtaCode.DEVICE: "the drive reported an error",
    AtaCode.DMA: "the bus master reported an error",
    AtaCode.NOTSUP: "the drive lacks the feature",
    AtaCode.NOCTRL: "no PIIX3 IDE controller found",
}


class AtaMode(IntEnum):
    """Transfer mode argument of ata_read/ata_write (enum ata_mode)."""

    PIO = 0
    DMA = 1


class AtaPhase(IntEnum):
    """What a failed wait was waiting for (enum ata_phase in guest/ata.h)."""

    NONE = 0
    SELECT = 1  # BSY/DRQ to clear before selecting
    DRQ = 2  # data request for a PIO block
    COMPLETE = 3  # BSY to clear after the command
    DMA = 4  # the bus master to go inactive
    RESET = 5  # BSY to clear after SRST
    IRQ = 6  # the channel's interrupt (irq completion): none came


class Completion(IntEnum):
    """How the driver learns a command is done (enum ata_completion in guest/ata.h)."""

    POLL = 0  # nIEN set: poll BSY/DRQ and the bus master's ACTIVE
    IRQ = 1  # nIEN clear: wait in hlt for IRQ 14/15


IRQ_LINES = 16  # the 8259 pair
IRQ_IDE = {0: 14, 1: 15}  # channel -> its interrupt line (compatibility mode; guest/piix3.h)
BM_ACTIVE, BM_ERR, BM_INTR = 0x01, 0x02, 0x04  # bus-master Status bits (guest/piix3.h)


STATUS_BITS: tuple[tuple[int, str], ...] = (
    (0x01, "ERR"),
    (0x02, "IDX"),
    (0x04, "CORR"),
    (0x08, "DRQ"),
    (0x10, "DSC"),
    (0x20, "DF"),
    (0x40, "DRDY"),
    (0x80, "BSY"),
)

ERROR_BITS: tuple[tuple[int, str], ...] = (
    (0x01, "AMNF"),
    (0x02, "NM"),
    (0x04, "ABRT"),
    (0x08, "MCR"),
    (0x10, "IDNF"),
    (0x20, "MC"),
    (0x40, "UNC"),
    (0x80, "ICRC"),
)

COMMANDS: dict[int, str] = {
    0x20: "READ SECTORS",
    0x24: "READ SECTORS EXT",
    0x25: "READ DMA EXT",
    0x29: "READ MULTIPLE EXT",
    0x30: "WRITE SECTORS",
    0x34: "WRITE SECTORS EXT",
    0x35: "WRITE DMA EXT",
    0x39: "WRITE MULTIPLE EXT",
    0xC4: "READ MULTIPLE",
    0xC5: "WRITE MULTIPLE",
    0xC6: "SET MULTIPLE MODE",
    0xC8: "READ DMA",
    0xCA: "WRITE DMA",
    0xE7: "FLUSH CACHE",
    0xEA: "FLUSH CACHE EXT",
    0xEC: "IDENTIFY DEVICE",
    0xEF: "SET FEATURES",
}


def bits(value: int, table: tuple[tuple[int, str], ...]) -> str:
    """The names of the bits set in value, lowest first, joined by |; - when none."""
    names = [name for bit, name in table if value & bit]
    return "|".join(names) if names else "-"


def decode_status(value: int) -> str:
    """Status register bits, lowest first: 0x41 -> 'ERR|DRDY'."""
    return bits(value, STATUS_BITS)


def decode_error(value: int) -> str:
    """Error register bits, lowest first: 0x04 -> 'ABRT'."""
    return bits(value, ERROR_BITS)


def command_name(value: int) -> str:
    return COMMANDS.get(value, f"command {value:#04x}")
