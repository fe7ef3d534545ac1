"""Where the guest stopped, and the mailbox request the harness posts before continuing."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.ports import PortAccess

# struct harness_request in guest/harness.h
REQUEST = struct.Struct("<IiIIIIQIIII")  # ..., arg, seq, linger, reserved
LINGER_OFFSET = 40  # offset of `linger` in the mailbox


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
class Request:
    op: Op
    drive: int = 0
    count: int = 0
    mode: int = 0
    buf: int = 0
    lba: int = 0
    arg: int = 0

    def pack(self, seq: int, linger: bool = False) -> bytes:
        """The mailbox bytes; out-of-range numbers wrap as C would, for the driver to refuse."""
        u32 = 0xFFFFFFFF
        return REQUEST.pack(
            self.op,
            0,
            self.drive & u32,
            self.count & u32,
            self.mode & u32,
            self.buf & u32,
            self.lba & 0xFFFFFFFFFFFFFFFF,
            self.arg & u32,
            seq & u32,
            int(linger),
            0,
        )


@dataclass(frozen=True)
class Stop:
    """Where a `cont()` ended: the function and source line, why, and (for a port
    breakpoint) the access that triggered it."""

    function: str
    line: int | None
    address: int
    reason: str
    parked: bool  # stopped at harness_ready: the posted request (if any) is done
    access: PortAccess | None = None  # the port access that stopped it (m.break_on_port)

    @classmethod
    def from_mi(cls, payload: dict[str, Any], park_symbol: str) -> Stop:
        frame = payload.get("frame") or {}
        func = str(frame.get("func", "??"))
        line = frame.get("line")
        addr = frame.get("addr", "0")
        reason = str(payload.get("reason", payload.get("signal-name", "unknown")))
        return cls(
            function=func,
            line=int(line) if line else None,
            address=int(addr, 16),
            reason=reason,
            parked=func == park_symbol and reason == "breakpoint-hit",
        )

    def __str__(self) -> str:
        where = f"{self.function}" + (f":{self.line}" if self.line else "") + f" ({self.address:#x})"
        return f"{where}, {self.reason}" + (f": {self.access}" if self.access is not None else "")
