"""Where the guest stopped: a `cont()` ends in a Stop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.portio.access import PortAccess


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
