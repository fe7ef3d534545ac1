"""One driver operation recorded from both sides at once: the driver-side watch and the
device-side trace, compared (`piix3 trace`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.portio.access import PortAccess, PortError
from harness.portio.compare import Comparison, compare
from harness.portio.devtrace import DeviceAction

if TYPE_CHECKING:
    from harness.machine import Machine

TRACE_OPS = ("identify", "read", "write", "flush")


@dataclass
class TracedOperation:
    """An operation run under both records, and their comparison."""

    title: str
    result: str
    driver: list[PortAccess]
    device: list[PortAccess]
    actions: list[DeviceAction]
    comparison: Comparison


def trace_operation(
    machine: Machine,
    op: str,
    *,
    drive: int = 0,
    lba: int = 0,
    count: int = 1,
    data: bytes = b"",
    mode: str = "dma",
    ports: Sequence[int | range | str | tuple[int, int]] = ("ide",),
) -> TracedOperation:
    """Run one driver operation with the driver side (GDB) and the device side (QEMU trace)
    recording, and compare them on the IDE ports."""
    if op not in TRACE_OPS:
        raise PortError(f"unknown operation {op!r}; use one of {', '.join(TRACE_OPS)}")
    ranges = machine.ports.port_map().ranges(ports)
    with machine.device_trace() as dev, machine.watch_ports(*ports) as io:
        if op == "identify":
            info = machine.ata.identify(drive)
            title = f"IDENTIFY drive {drive}"
            result = f"{info.model}, serial {info.serial}, {info.sectors} sectors"
        elif op == "read":
            got = machine.ata.read(drive, lba, count, mode=mode)
            title = f"read {count} sector(s) at LBA {lba} on drive {drive} ({mode})"
            text = got.rstrip(b"\0")[:60]
            result = f"read {len(got)} bytes: {text!r}{'...' if len(got.rstrip(bytes(1))) > 60 else ''}"
        elif op == "write":
            machine.ata.write(drive, lba, data, mode=mode)
            title = f"write {len(data) // 512} sector(s) at LBA {lba} on drive {drive} ({mode})"
            result = f"wrote {len(data)} bytes"
        else:
            machine.ata.flush(drive)
            title = f"flush drive {drive}"
            result = "flushed"
    notes = [(a.index, a.short()) for a in dev.actions]
    comparison = compare(io.events, dev.events, ports=ranges, right_notes=notes)
    return TracedOperation(title, result, io.events, dev.events, dev.actions, comparison)
