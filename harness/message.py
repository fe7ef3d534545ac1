"""The message record `piix3 run` keeps on disk: a header sector that says what follows."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from harness.abi import SECTOR

MAGIC = b"PIIX3MSG"
_HEADER = struct.Struct("<8sII")  # magic, payload length, CRC-32 of the payload
MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class Decoded:
    text: str | None  # None if no valid record is there
    reason: str  # why not, for humans


def encode(text: str) -> bytes:
    """Header + UTF-8 text, zero-padded to whole sectors."""
    payload = text.encode()
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"message is {len(payload)} bytes; at most {MAX_MESSAGE} fit")
    raw = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
    return raw + bytes(-len(raw) % SECTOR)


def sectors_needed(first_sector: bytes) -> int:
    """How many sectors the record starting in first_sector spans (1 if there is none)."""
    magic, length, _ = _HEADER.unpack_from(first_sector)
    length = int(length)
    if magic != MAGIC or length > MAX_MESSAGE:
        return 1
    return (_HEADER.size + length + SECTOR - 1) // SECTOR


def decode(data: bytes) -> Decoded:
    magic, length, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        if not any(data[:SECTOR]):
            return Decoded(None, "the sector is all zeros: nothing written here yet")
        return Decoded(None, "no piix3 message record here (other data)")
    payload = data[_HEADER.size : _HEADER.size + length]
    if len(payload) != length or zlib.crc32(payload) != crc:
        return Decoded(None, "a message record with a bad length or CRC (torn or overwritten)")
    return Decoded(payload.decode(errors="replace"), "ok")
