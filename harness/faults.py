"""Injected disk errors: Fault rules turned into a QEMU blkdebug configuration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import ConfigError

SECTOR = 512
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
        if self.op not in _EVENTS:
            raise ConfigError(f"Fault op {self.op!r} is not one of {', '.join(_EVENTS)}")
        if self.sector is not None and (self.op == "flush" or self.sector < 0):
            raise ConfigError("Fault sector must be a non-negative LBA, and flush faults take none")
        if self.errno <= 0:
            raise ConfigError(f"Fault errno {self.errno} must be a positive errno value (5 = EIO)")


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
