"""The guest ABI: the fixed-layout records the harness reads and writes in guest memory.

Each record mirrors one C struct (guest/harness.h, guest/ata.h, guest/bench.h) and is packed
and unpacked here by name, never by tuple index elsewhere. `check_layout()` compares every
size with the kernel's own `sizeof` at boot, so a kernel built from other headers is refused
before a single byte is misread. Number names (result codes, register bits) live in regs.py.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, TypeVar

from harness.errors import GdbError
from harness.regs import IRQ_LINES

SECTOR = 512  # bytes per sector, everywhere
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF


R = TypeVar("R", bound="Record")


class Record:
    """A C struct read from guest memory: its fields in order, and STRUCT, their layout."""

    STRUCT: ClassVar[struct.Struct]

    @classmethod
    def unpack(cls: type[R], data: bytes) -> R:
        return cls(*cls.STRUCT.unpack(data))


class Op(IntEnum):
    """enum harness_op in guest/harness.h."""

    NONE = 0
    IDENTIFY = 1
    READ = 2
    WRITE = 3
    FLUSH = 4
    SET_WCACHE = 5
    RESET_CHANNEL = 6
    BENCH = 7
    TRIPLE_FAULT = 90  # test-only: the guest triple-faults
    SPIN = 91  # test-only: the call never returns


@dataclass(frozen=True)
class Mailbox(Record):
    """struct harness_request in guest/harness.h, as read back from the guest."""

    op: int  # enum harness_op; the dispatcher clears it when done
    result: int  # the driver call's return value
    drive: int
    count: int
    mode: int
    buf: int
    lba: int
    arg: int
    seq: int  # incremented by every dispatch
    linger: int  # set: after the call, the guest waits (bounded) until the harness clears it
    reserved: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IiIIIIQIIII")

    def done_after(self, seq: int) -> bool:
        """The request posted when the mailbox's seq was `seq` has run."""
        return self.op == Op.NONE and self.seq == next_seq(seq)


def next_seq(seq: int) -> int:
    """The mailbox's seq once one more request has been dispatched (it wraps at 32 bits)."""
    return (seq + 1) & U32


def _field_codes(record: type[Record], name: str) -> tuple[str, int]:
    """The record's format characters and the index of the field's: the records' formats are
    little-endian with standard sizes (no padding), one character per field, in field order."""
    names = [f.name for f in dataclasses.fields(record)]  # type: ignore[arg-type]
    return record.STRUCT.format.lstrip("<"), names.index(name)


def offset_of(record: type[Record], name: str) -> int:
    """A field's byte offset in its C struct."""
    codes, index = _field_codes(record, name)
    return struct.calcsize("<" + codes[:index])


def field_struct(record: type[Record], name: str) -> struct.Struct:
    """One field's own format, to read it alone from guest RAM."""
    codes, index = _field_codes(record, name)
    return struct.Struct("<" + codes[index])


LINGER_OFFSET = offset_of(Mailbox, "linger")
OP_OFFSET = offset_of(Mailbox, "op")  # the doorbell: written after every other field
SEQ_OFFSET = offset_of(Mailbox, "seq")
RESULT_OFFSET = offset_of(Mailbox, "result")
RESULT_FIELD = field_struct(Mailbox, "result")


@dataclass(frozen=True)
class Doorbell(Record):
    """struct harness_doorbell in guest/harness.h: how the running guest polls the mailbox."""

    idle_us: int  # the harness's: how long the guest polls for a next request before parking
    parking: int  # the guest's: set just before it parks; the harness clears it to continue
    reserved0: int
    reserved1: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIII")


IDLE_US_OFFSET = offset_of(Doorbell, "idle_us")
PARKING_OFFSET = offset_of(Doorbell, "parking")


@dataclass(frozen=True)
class Request:
    """One driver call for the mailbox. Arguments are checked by the caller (harness/ata.py)
    before they get here; packing masks to the C field widths only as C itself would."""

    op: Op
    drive: int = 0
    count: int = 0
    mode: int = 0
    buf: int = 0
    lba: int = 0
    arg: int = 0

    def pack(self, seq: int, linger: bool = False) -> bytes:
        packed: bytes = Mailbox.STRUCT.pack(
            self.op,
            0,
            self.drive & U32,
            self.count & U32,
            self.mode & U32,
            self.buf & U32,
            self.lba & U64,
            self.arg & U32,
            seq & U32,
            int(linger),
            0,
        )
        return packed


@dataclass(frozen=True)
class ErrorRecord(Record):
    """struct ata_error_record in guest/ata.h: the driver's last failure."""

    code: int
    drive: int
    command: int  # ATA command byte, 0 if none was issued
    status: int
    error: int
    bm_status: int
    phase: int  # enum ata_phase
    reserved: int
    lba: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<iIIIIIIIQ")


@dataclass(frozen=True)
class BenchRecord(Record):
    """struct bench_result in guest/bench.h: one in-guest benchmark run."""

    result: int
    iterations: int
    cycles: int
    bytes: int
    tsc_per_ms: int
    min_cycles: int
    max_cycles: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<iIQQQQQ")


@dataclass(frozen=True)
class IrqLineStats(Record):
    """struct irq_line_stats in guest/irq.h: one interrupt line's counts since boot."""

    taken: int  # delivered and handled as real (EOI sent)
    spurious: int  # vector 7/15 with the in-service bit clear
    lost: int  # irq completion waited for one and its deadline passed
    unclaimed: int  # real, but no command was waiting for it (or the drive was busy)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIII")


BENCH_ARG_WRITE = 0x80000000  # guest/bench.h: harness_request.arg's direction bit
BENCH_MAX_ITERATIONS = 0x7FFFFFFF

# symbol -> (its record's size here, the header that defines it)
LAYOUTS: dict[str, tuple[int, str]] = {
    "harness_request": (Mailbox.STRUCT.size, "guest/harness.h"),
    "harness_doorbell": (Doorbell.STRUCT.size, "guest/harness.h"),
    "ata_last_error": (ErrorRecord.STRUCT.size, "guest/ata.h"),
    "bench_result": (BenchRecord.STRUCT.size, "guest/bench.h"),
    "irq_stats": (IrqLineStats.STRUCT.size * IRQ_LINES, "guest/irq.h"),
}


def check_layout(sizeof: Callable[[str], int]) -> None:
    """Compare each record with the kernel's sizeof(symbol); GdbError on the first mismatch."""
    for symbol, (size, header) in LAYOUTS.items():
        theirs = sizeof(symbol)
        if theirs != size:
            raise GdbError(
                f"{symbol} is {theirs} bytes in the kernel, the harness expects {size} ({header}): "
                "rebuild the kernel with `make guest`"
            )
