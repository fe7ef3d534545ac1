"""Injected disk errors: Fault rules turned into a QEMU blkdebug configuration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.checks import int_problem
from harness.errors import ConfigError

MAX_SECTOR = (1 << 48) - 1  # the last LBA48 address
MAX_ERRNO = 4095  # the kernel's errno range
# blkdebug event that arms the rule, and the request type it fails
_EVENTS = {"read": ("read_aio", "read"), "write": ("write_aio", "write"), "flush": ("flush_to_disk", "flush")}


@dataclass(frozen=True)
class Fault:
    """Fail the drive's `op` ("read" | "write" | "flush") at `sector` (None: any), with errno
    (5 = EIO), on every matching request or only the first (`once`)."""

    op: str
    sector: int | None = None
    once: bool = False
    errno: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.op, str) or self.op not in _EVENTS:
            raise ConfigError(f"Fault op {self.op!r:.40} is not one of {', '.join(_EVENTS)}")
        if self.sector is not None:
            problem = int_problem("Fault sector", self.sector, 0, MAX_SECTOR)
            if problem or self.op == "flush":
                raise ConfigError(problem or "Fault sector: flush faults take none (flushes have no LBA)")
        if not isinstance(self.once, bool):
            raise ConfigError(f"Fault once must be True or False, not {self.once!r:.40}")
        problem = int_problem("Fault errno", self.errno, 1, MAX_ERRNO)
        if problem:
            raise ConfigError(f"{problem} (a positive errno value: 5 = EIO, 28 = ENOSPC)")


def blkdebug_config(faults: Sequence[Fault]) -> str:
    """The blkdebug rules file for one drive's faults."""
    out = []
    for f in faults:
        event, iotype = _EVENTS[f.op]
        out += [
            "[inject-error]",
            f'event = "{event}"',
            f'iotype = "{iotype}"',
            f'errno = "{f.errno}"',
            f'once = "{"on" if f.once else "off"}"',
            'immediately = "off"',
        ]
        if f.sector is not None:
            out.append(f'sector = "{f.sector}"')
        out.append("")
    return "\n".join(out)
