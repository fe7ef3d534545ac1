"""parse_identify over IDENTIFY DEVICE blocks recorded from QEMU's IDE disks."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest

from harness.identify import IDENTIFY_BYTES, DriveInfo, parse_identify

DATA = Path(__file__).resolve().parents[1] / "data"


def _block(name: str) -> bytes:
    data = (DATA / f"identify-{name}.bin").read_bytes()
    assert len(data) == IDENTIFY_BYTES
    return data


def _words(data: bytes) -> tuple[int, ...]:
    return struct.unpack("<256H", data)


@pytest.fixture(scope="module")
def drive0() -> DriveInfo:
    return parse_identify(0, _block("drive0"))


@pytest.fixture(scope="module")
def drive3() -> DriveInfo:
    return parse_identify(3, _block("drive3"))


def test_drive0_64mib(drive0: DriveInfo) -> None:
    assert drive0.drive == 0
    assert drive0.model == "QEMU HARDDISK"
    assert drive0.serial == "QM00001"
    assert drive0.firmware == "2.5+"
    assert drive0.sectors == 131072
    assert drive0.size_bytes == 64 * 1024 * 1024
    assert drive0.lba28_sectors == 131072
    assert drive0.lba48_sectors == 131072
    assert drive0.lba48 is True
    assert drive0.multiple_max == 16
    assert drive0.write_cache_supported is True
    assert drive0.write_cache_enabled is True
    assert drive0.flush_cache_ext is True
    assert drive0.mwdma_modes == (0, 1, 2)
    assert drive0.udma_modes == (0, 1, 2, 3, 4, 5)


def test_drive0_words() -> None:
    """The raw words behind the parsed fields, read independently of the parser."""
    data = _block("drive0")
    w = _words(data)
    assert w[83] & (1 << 10)  # LBA48 supported
    assert w[83] & (1 << 13)  # FLUSH CACHE EXT supported
    assert w[83] >> 14 == 0b01  # word 83 is valid
    assert w[82] & (1 << 5) and w[85] & (1 << 5)  # write cache supported and enabled
    assert w[47] & 0xFF == 16
    assert w[60] | w[61] << 16 == 131072
    assert struct.unpack_from("<Q", data, 200)[0] == 131072  # words 100-103
    # ATA strings are big-endian within each word: "QEMU" is stored as "EQUM"
    assert data[54:62] == b"EQUMH RA"
    swapped = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(54, 94, 2))
    assert swapped.rstrip(b" ") == b"QEMU HARDDISK"


def test_drive3_beyond_lba28(drive3: DriveInfo) -> None:
    w = _words(_block("drive3"))
    lba28 = w[60] | w[61] << 16
    lba48 = w[100] | w[101] << 16 | w[102] << 32 | w[103] << 48
    assert lba28 == 0x0FFFFFFF  # words 60-61 saturate for a disk past 2^28 sectors
    assert lba48 == 419430400 > 2**28
    assert drive3.drive == 3
    assert drive3.serial == "QM00004"
    assert drive3.model == "QEMU HARDDISK"
    assert drive3.lba48 is True
    assert drive3.lba28_sectors == lba28
    assert drive3.lba48_sectors == lba48
    assert drive3.sectors == lba48  # the capacity comes from words 100-103
    assert drive3.sectors > drive3.lba28_sectors
    assert drive3.size_bytes == 200 * 1024**3


def test_write_cache_off(drive0: DriveInfo) -> None:
    data = _block("wcache-off")
    w = _words(data)
    assert w[82] & (1 << 5)  # still supported
    assert not w[85] & (1 << 5)  # no longer enabled
    info = parse_identify(0, data)
    assert info.write_cache_supported is True
    assert info.write_cache_enabled is False
    # SET FEATURES 0x82 changed nothing else
    assert info == dataclasses.replace(drive0, write_cache_enabled=False)


def test_lba28_only_drive() -> None:
    """A drive without LBA48 (word 83 bit 10 cleared): capacity from words 60-61."""
    w = list(_words(_block("drive0")))
    w[83] &= ~((1 << 10) | (1 << 13))
    w[100:104] = [0, 0, 0, 0]
    info = parse_identify(1, struct.pack("<256H", *w))
    assert info.lba48 is False
    assert info.flush_cache_ext is False
    assert info.lba48_sectors == 0
    assert info.sectors == info.lba28_sectors == 131072


def test_no_udma_when_word_88_not_valid() -> None:
    w = list(_words(_block("drive0")))
    w[53] &= ~(1 << 2)
    assert parse_identify(0, struct.pack("<256H", *w)).udma_modes == ()


@pytest.mark.parametrize("length", [0, 256, 511, 513, 1024])
def test_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match=f"{length} bytes"):
        parse_identify(0, bytes(length))
