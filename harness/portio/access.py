"""Port accesses and their names: the PortAccess event both records produce, and the PIIX3
port map that names and decodes it.

Only harness.errors and harness.regs are imported here, so GDB's own Python (the gdbinit
commands) can load this module too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.regs import bits, command_name, decode_error, decode_status

log = logging.getLogger(__name__)

# PIIX3 legacy (compatibility-mode) bases, guest/piix3.h
PRIMARY_CMD, PRIMARY_CTRL = 0x1F0, 0x3F6
SECONDARY_CMD, SECONDARY_CTRL = 0x170, 0x376
BMIBA_DEFAULT = 0xC040  # PIIX3_BMIBA_DEFAULT: where the driver puts BAR4 if firmware did not
BM_CHANNEL_STRIDE = 8
CHANNELS = ("primary", "secondary")

# Command block registers (cmd_base + n): name when read, name when written.
_CMD_REGS = {
    0: ("Data", "Data"),
    1: ("Error", "Features"),
    2: ("Sector Count", "Sector Count"),
    3: ("LBA Low", "LBA Low"),
    4: ("LBA Mid", "LBA Mid"),
    5: ("LBA High", "LBA High"),
    6: ("Device", "Device"),
    7: ("Status", "Command"),
}
_BM_REGS = {0: "BM Command", 1: "BM (reserved)", 2: "BM Status", 3: "BM (reserved)", 4: "BM PRD"}
_COM1_REGS = ("Data", "IER", "IIR/FCR", "LCR", "MCR", "LSR", "MSR", "SCR")
_DEVCTL_BITS = ((0x80, "HOB"), (0x04, "SRST"), (0x02, "nIEN"))
_BM_CMD_BITS = ((0x01, "START"), (0x08, "READ"))
_BM_STATUS_BITS = ((0x01, "ACTIVE"), (0x02, "ERR"), (0x04, "INTR"), (0x20, "DRV0-DMA"), (0x40, "DRV1-DMA"))


class PortError(HarnessError):
    """Port watching or tracing failed: a bad port name, a breakpoint left behind, a trace
    that could not be read."""


@dataclass(frozen=True)
class PortAccess:
    """One port access, seen by the driver side (GDB) or the device side (QEMU's trace).

    For `in`, value is what was read; for string transfers (`rep insl`/`outsl`, or a run of
    data-port accesses in QEMU's trace) value is None and count, buffer and data say what moved.
    """

    direction: str  # "in" | "out"
    port: int
    width: int  # bytes per transfer: 1, 2 or 4
    value: int | None
    count: int = 1  # transfers (the rep count for a string instruction)
    register: str = ""  # "primary Command", "secondary BM Status", ...
    decoded: str = ""  # "WRITE MULTIPLE", "DRDY|DSC", ...
    buffer: int | None = None  # guest address of a string transfer
    data: bytes | None = None  # bytes moved by a string transfer (within the watch's capture budget)
    where: str = ""  # driver side: the code that made it, "issue (ata.c:186)"
    pc: int | None = None  # driver side: the instruction's address
    repeat: int = 1  # identical consecutive reads folded into one (see squash)
    source: str = "driver"  # "driver" | "device"
    time_us: float | None = None  # device side: QEMU's log timestamp (-msg timestamp=on), in µs

    @property
    def string(self) -> bool:
        return self.value is None

    def key(self) -> tuple[Any, ...]:
        """What two records must agree on: direction, port, width, value, count, bytes."""
        return (self.direction, self.port, self.width, self.value, self.count, self.data, self.repeat)

    def brief(self) -> str:
        """'out 0x1f7 = 0xc5  primary Command: WRITE MULTIPLE'."""
        if self.value is None:
            what = f"{self.count} x {self.width * 8}-bit"
        else:
            what = f"{self.value:#0{2 + 2 * self.width}x}"
        arrow = "->" if self.direction == "in" else "<-"
        text = f"{self.direction:<3} {self.port:#06x} {arrow} {what}"
        if self.repeat > 1:
            text += f" (x{self.repeat})"
        label = self.register + (f": {self.decoded}" if self.decoded else "")
        return f"{text:<34} {label}".rstrip()

    def __str__(self) -> str:
        return self.brief() + (f"  [{self.where}]" if self.where else "")


NAME_CACHE = 4096  # distinct accesses a PortMap remembers the names of


@dataclass(frozen=True)
class PortMap:
    """Names and decodes ports: the PIIX3 IDE channels (legacy bases), its bus master at
    bm_base, PCI configuration and COM1."""

    bm_base: int = BMIBA_DEFAULT
    # (direction, port, width, value, count) -> (register, decoded), filled by access()
    _names: dict[tuple[str, int, int, int | None, int], tuple[str, str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def named_ranges(self) -> dict[str, list[tuple[int, int]]]:
        bm = self.bm_base
        names = {
            "primary": [(PRIMARY_CMD, PRIMARY_CMD + 7)],
            "primary-ctrl": [(PRIMARY_CTRL, PRIMARY_CTRL)],
            "secondary": [(SECONDARY_CMD, SECONDARY_CMD + 7)],
            "secondary-ctrl": [(SECONDARY_CTRL, SECONDARY_CTRL)],
            "bmdma-primary": [(bm, bm + 7)],
            "bmdma-secondary": [(bm + 8, bm + 15)],
            "bmdma": [(bm, bm + 15)],
            "pci-config": [(0xCF8, 0xCFF)],
            "com1": [(0x3F8, 0x3FF)],
            "all": [(0, 0xFFFF)],
        }
        names["ide"] = names["primary"] + names["primary-ctrl"] + names["secondary"]
        names["ide"] += names["secondary-ctrl"] + names["bmdma"]
        return names

    def ranges(self, specs: Iterable[int | range | str | tuple[int, int]]) -> list[tuple[int, int]]:
        """Inclusive port ranges for ints, ranges, (lo, hi) pairs, names ("primary", "bmdma",
        "ide", ...), or strings "0x1f7" / "0x1f0-0x1f7". No specs means "ide"."""
        names = self.named_ranges()
        out: list[tuple[int, int]] = []
        for spec in list(specs) or ["ide"]:
            if isinstance(spec, bool):
                raise PortError(f"{spec!r} is not a port")
            if isinstance(spec, int):
                out.append((spec, spec))
            elif isinstance(spec, range):
                if spec.step != 1 or not spec:
                    raise PortError(f"{spec!r}: give a non-empty range with step 1")
                out.append((spec.start, spec.stop - 1))
            elif isinstance(spec, tuple):
                out.append((int(spec[0]), int(spec[1])))
            elif isinstance(spec, str):
                key = spec.strip().lower()
                if key in names:
                    out += names[key]
                    continue
                m = re.fullmatch(r"(0x[0-9a-f]+|\d+)(?:\s*-\s*(0x[0-9a-f]+|\d+))?", key)
                if not m:
                    raise PortError(
                        f"unknown port {spec!r}: use a number, LO-HI, or one of {', '.join(names)}"
                    )
                lo = int(m.group(1), 0)
                out.append((lo, int(m.group(2), 0) if m.group(2) else lo))
            else:
                raise PortError(f"{spec!r} is not a port, range or port name")
        for lo, hi in out:
            if not 0 <= lo <= hi <= 0xFFFF:
                raise PortError(f"port range {lo:#x}-{hi:#x} is outside 0..0xffff or reversed")
        return out

    def register(self, port: int, direction: str) -> str:
        """The register a port is, for this direction: 'primary Status', 'secondary BM PRD'."""
        index = 0 if direction == "in" else 1
        for channel, cmd, ctrl in ((0, PRIMARY_CMD, PRIMARY_CTRL), (1, SECONDARY_CMD, SECONDARY_CTRL)):
            if cmd <= port <= cmd + 7:
                return f"{CHANNELS[channel]} {_CMD_REGS[port - cmd][index]}"
            if port == ctrl:
                return f"{CHANNELS[channel]} {('Alt Status', 'Device Control')[index]}"
        if self.bm_base <= port < self.bm_base + 16:
            channel, offset = divmod(port - self.bm_base, BM_CHANNEL_STRIDE)
            name = _BM_REGS[offset] if offset <= 4 else f"BM PRD+{offset - 4}"
            return f"{CHANNELS[channel]} {name}"
        if port == 0xCF8:
            return "PCI Config Address"
        if 0xCFC <= port <= 0xCFF:
            return "PCI Config Data"
        if 0x3F8 <= port <= 0x3FF:
            return f"COM1 {_COM1_REGS[port - 0x3F8]}"
        return ""

    def decode(self, direction: str, port: int, width: int, value: int | None, count: int = 1) -> str:
        """What a value means in its register: command names, status and error bits, ..."""
        reg = self.register(port, direction)
        name = reg.split(" ", 1)[1] if " " in reg and reg.split(" ", 1)[0] in CHANNELS else reg
        if value is None:
            return f"{count * width} bytes" if name == "Data" else ""
        if name in ("Status", "Alt Status"):
            return decode_status(value)
        if name == "Error":
            return decode_error(value)
        if name == "Command":
            return command_name(value)
        if name == "Device":
            text = ("LBA " if value & 0x40 else "") + ("slave" if value & 0x10 else "master")
            return text + (f", LBA[27:24]={value & 0x0F:#x}" if value & 0x0F else "")
        if name == "Device Control":
            return bits(value, _DEVCTL_BITS)
        if name == "BM Command":
            return bits(value, _BM_CMD_BITS) if value & 0x01 else "stop" + (" (READ)" if value & 0x08 else "")
        if name == "BM Status":
            return bits(value, _BM_STATUS_BITS)
        if name == "BM PRD":
            return f"table at {value:#x}"
        if name == "PCI Config Address" and value & 0x80000000:
            bus, dev, fn, off = (value >> 16) & 0xFF, (value >> 11) & 0x1F, (value >> 8) & 7, value & 0xFC
            return f"{bus:02x}:{dev:02x}.{fn} offset {off:#04x}"
        return ""

    def access(
        self,
        direction: str,
        port: int,
        width: int,
        value: int | None,
        count: int = 1,
        **extra: Any,
    ) -> PortAccess:
        """A PortAccess with its register named and value decoded."""
        key = (direction, port, width, value, count)
        names = self._names.get(key)
        if names is None:  # a record repeats itself (status polls): name each access once
            names = (self.register(port, direction), self.decode(direction, port, width, value, count))
            if len(self._names) < NAME_CACHE:
                self._names[key] = names
        return PortAccess(
            direction=direction,
            port=port,
            width=width,
            value=value,
            count=count,
            register=names[0],
            decoded=names[1],
            **extra,
        )


def in_ranges(port: int, ranges: Sequence[tuple[int, int]]) -> bool:
    """port lies in one of the inclusive (lo, hi) ranges."""
    return any(lo <= port <= hi for lo, hi in ranges)
