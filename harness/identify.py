"""IDENTIFY DEVICE data (512 bytes from the drive) parsed into a DriveInfo."""

from __future__ import annotations

import struct
from dataclasses import dataclass

IDENTIFY_BYTES = 512


@dataclass(frozen=True)
class DriveInfo:
    """What a drive says about itself in IDENTIFY DEVICE."""

    drive: int
    model: str
    serial: str
    firmware: str
    sectors: int  # the addressable capacity: LBA48 words 100-103 when supported, else 60-61
    lba28_sectors: int
    lba48_sectors: int
    lba48: bool
    multiple_max: int  # sectors per DRQ block for READ/WRITE MULTIPLE, 0 if unsupported
    mwdma_modes: tuple[int, ...]  # multiword DMA modes supported (word 63)
    udma_modes: tuple[int, ...]  # Ultra DMA modes supported (word 88), if word 53 says it is valid
    write_cache_supported: bool
    write_cache_enabled: bool
    flush_cache_ext: bool

    @property
    def size_bytes(self) -> int:
        return self.sectors * 512


def _string(words: tuple[int, ...], first: int, count: int) -> str:
    raw = b"".join(struct.pack(">H", w) for w in words[first : first + count])
    return raw.decode("ascii", errors="replace").strip(" \x00")


def _modes(word: int) -> tuple[int, ...]:
    return tuple(n for n in range(8) if word & (1 << n))


def parse_identify(drive: int, data: bytes) -> DriveInfo:
    """Parse the 256 little-endian words of IDENTIFY DEVICE; strings are byte-swapped."""
    if len(data) != IDENTIFY_BYTES:
        raise ValueError(f"IDENTIFY data is {len(data)} bytes, expected {IDENTIFY_BYTES}")
    w = struct.unpack("<256H", data)
    lba28 = w[60] | w[61] << 16
    lba48_supported = bool(w[83] & (1 << 10))
    lba48 = w[100] | w[101] << 16 | w[102] << 32 | w[103] << 48
    multiple = w[47] & 0xFF
    return DriveInfo(
        drive=drive,
        model=_string(w, 27, 20),
        serial=_string(w, 10, 10),
        firmware=_string(w, 23, 4),
        sectors=lba48 if lba48_supported and lba48 else lba28,
        lba28_sectors=lba28,
        lba48_sectors=lba48 if lba48_supported else 0,
        lba48=lba48_supported,
        multiple_max=multiple,
        mwdma_modes=_modes(w[63] & 0x07),
        udma_modes=_modes(w[88] & 0x7F) if w[53] & (1 << 2) else (),
        write_cache_supported=bool(w[82] & (1 << 5)),
        write_cache_enabled=bool(w[85] & (1 << 5)),
        flush_cache_ext=bool(w[83] & (1 << 13)),
    )
