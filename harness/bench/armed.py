"""What is armed while the guest runs a timed transfer: GDB's breakpoint locations and QEMU's
trace events. QEMU single-steps any 4 KiB page holding a breakpoint, so a benchmark refuses to
time anything with one in the driver's pages (the tests check this too)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.machine import Machine
from harness.portio.gdb_agent import elf_sections

PAGE = 4096


@dataclass
class ArmedCheck:
    """What the harness leaves armed while the guest runs a timed transfer: every breakpoint
    location GDB has (its internal ones included) and every QEMU trace event enabled. QEMU
    single-steps any 4 KiB page holding a breakpoint, so none may share a page with .text."""

    text: tuple[int, int]  # the kernel's .text [start, end): the driver and everything it calls
    breakpoints: list[tuple[int, str]] = field(default_factory=list)  # (address, GDB's description)
    trace_events: list[str] = field(default_factory=list)

    @property
    def text_pages(self) -> tuple[int, int]:
        start, end = self.text
        return start & ~(PAGE - 1), (end + PAGE - 1) & ~(PAGE - 1)

    @property
    def in_text(self) -> list[tuple[int, str]]:
        lo, hi = self.text_pages
        return [(a, w) for a, w in self.breakpoints if lo <= a < hi]

    @property
    def ok(self) -> bool:
        return not self.in_text and not self.trace_events

    def describe(self) -> str:
        lo, hi = self.text_pages
        armed = ", ".join(f"{a:#x} {w}" for a, w in self.breakpoints) or "none"
        verdict = "no breakpoint" if not self.in_text else f"{len(self.in_text)} breakpoint(s)"
        events = f"; trace events on: {', '.join(self.trace_events)}" if self.trace_events else ""
        return f"{verdict} in the driver's text pages {lo:#x}..{hi - 1:#x} (armed: {armed}){events}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "text": list(self.text),
            "text_pages": list(self.text_pages),
            "breakpoints": [{"address": a, "what": w} for a, w in self.breakpoints],
            "in_text": [a for a, _ in self.in_text],
            "trace_events": self.trace_events,
        }


_ADDRESS = re.compile(r"\s(0x[0-9a-fA-F]+)\s+(.*)")


def armed_check(m: Machine) -> ArmedCheck:
    """Every breakpoint location GDB has armed (`maint info breakpoints` lists its internal ones
    too, such as an inferior call's return breakpoint) and every QEMU trace event enabled."""
    gdb, qemu = m.gdb, m.qemu
    if gdb is None or qemu is None or qemu.qmp is None:
        raise HarnessError("the machine is not running")
    addr, size = elf_sections(m.config.kernel)[".text"]
    check = ArmedCheck(text=(addr, addr + size))
    listing = gdb.command('-interpreter-exec console "maint info breakpoints"').console
    for line in "".join(listing).splitlines():
        found = _ADDRESS.search(line)
        if found and not line.startswith("\t"):
            check.breakpoints.append((int(found.group(1), 16), " ".join(found.group(2).split()[:2])))
    check.breakpoints = sorted(set(check.breakpoints))
    events = qemu.qmp.cmd_raw("trace-event-get-state", {"name": "*"}).get("return", [])
    check.trace_events = sorted(e["name"] for e in events if e.get("state") == "enabled")
    return check
