"""Injected disk errors: Fault rules turned into a QEMU blkdebug configuration.

Read and write faults are plain blkdebug rules. Flush faults need more: QEMU flushes every image
at every VM stop, by the same path as the guest's FLUSH, so a rule live all the time is spent
on (or fails) QEMU's own flushes, and a guest FLUSH after a stop finds nothing to write, which
never reaches the rule at all. So flush rules live only in blkdebug's state 2 ("armed"), and the
harness arms a drive just before running a call that sends FLUSH (transport.py) and disarms it
when the call is done. Arming and disarming is one request, ARM_REQUEST through the drive: a
write-zeroes, which the guest never sends, and which a rule of its own fails before it reaches
the image. It switches the state (1 <-> 2), and, failed, still leaves the drive's nodes with
a write not yet flushed, so the guest's FLUSH that follows reaches the flush rule even when the
guest wrote nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.checks import int_problem
from harness.errors import ConfigError

MAX_SECTOR = (1 << 48) - 1  # the last LBA48 address
MAX_ERRNO = 4095  # the kernel's errno range
# blkdebug event that arms the rule, and the request type it fails
_EVENTS = {"read": ("read_aio", "read"), "write": ("write_aio", "write"), "flush": ("flush_to_disk", "flush")}
ARM_EVENT = "pwritev_zero"  # blkdebug's event for a write-zeroes reaching it
DISARMED, ARMED = 1, 2  # blkdebug states (1 is where it starts)
ARM_REQUEST = "write -z 0 512"  # qemu-io, on the drive: the request that toggles the state
ARM_ERRNO = 5
ARM_FAILS_WITH = "Input/output error"  # what qemu-io says when the rule fails it (EIO)


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


def flush_fault_drives(faults: Mapping[int, Sequence[Fault]]) -> set[int]:
    """The drives with flush faults: the ones the harness arms around the guest's FLUSH."""
    return {d for d, rules in faults.items() if any(f.op == "flush" for f in rules)}


def blkdebug_config(faults: Sequence[Fault]) -> str:
    """The blkdebug rules file for one drive's faults."""
    out = []
    if any(f.op == "flush" for f in faults):
        for old, new in ((DISARMED, ARMED), (ARMED, DISARMED)):
            out += ["[set-state]", f'state = "{old}"', f'event = "{ARM_EVENT}"', f'new_state = "{new}"', ""]
        out += [
            "[inject-error]",
            f'event = "{ARM_EVENT}"',
            'iotype = "write-zeroes"',
            f'errno = "{ARM_ERRNO}"',
            'once = "off"',
            'immediately = "off"',
            "",
        ]
    for f in faults:
        event, iotype = _EVENTS[f.op]
        if f.op == "flush":
            out += ["[inject-error]", f'state = "{ARMED}"']
        else:
            out += ["[inject-error]"]
        out += [
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
