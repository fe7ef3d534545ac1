"""Shaping and comparing records: data runs coalesced, status polls folded, and two records
of one operation side by side (the scoreboard of the two monitors)."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.portio.access import CHANNELS, PRIMARY_CMD, SECONDARY_CMD, PortAccess, in_ranges


def is_data_port(port: int) -> bool:
    return port in (PRIMARY_CMD, SECONDARY_CMD)


def coalesce_data(events: Sequence[PortAccess]) -> list[PortAccess]:
    """Consecutive data-port transfers of one direction and width become one string transfer
    (what `rep insl` is on the driver side and 128 `ide_data_readl` lines are in QEMU's trace)."""
    out: list[PortAccess] = []
    for ev in events:
        if not is_data_port(ev.port):
            out.append(ev)
            continue
        data = ev.data if ev.data is not None else (ev.value or 0).to_bytes(ev.width, "little")
        prev = out[-1] if out else None
        if (
            prev is not None
            and is_data_port(prev.port)
            and (prev.port, prev.direction, prev.width) == (ev.port, ev.direction, ev.width)
            and prev.data is not None
        ):
            out[-1] = dataclasses.replace(
                prev,
                value=None,
                count=prev.count + ev.count,
                data=prev.data + data,
                decoded=f"{(prev.count + ev.count) * ev.width} bytes",
            )
        else:
            out.append(dataclasses.replace(ev, value=None, data=data, decoded=f"{ev.count * ev.width} bytes"))
    return out


def squash(events: Sequence[PortAccess]) -> list[PortAccess]:
    """Identical consecutive reads (a status poll) folded into one event with `repeat` set.
    How many polls a wait takes depends on timing; this shape does not."""
    out: list[PortAccess] = []
    for ev in events:
        prev = out[-1] if out else None
        if (
            prev is not None
            and ev.direction == "in"
            and ev.value is not None
            and (prev.direction, prev.port, prev.width, prev.value) == ("in", ev.port, ev.width, ev.value)
        ):
            out[-1] = dataclasses.replace(prev, repeat=prev.repeat + ev.repeat)
        else:
            out.append(ev)
    return out


def normalize(events: Sequence[PortAccess]) -> list[PortAccess]:
    """The canonical shape two records are compared in: data runs coalesced, polls folded."""
    return squash(coalesce_data(events))


@dataclass(frozen=True)
class Comparison:
    """Two records of the same operation, normalized, and where they differ. `notes` are
    (position in `right`, text) remarks shown between the rows (the device's own actions)."""

    left: list[PortAccess]
    right: list[PortAccess]
    left_title: str = "driver side (GDB breakpoints)"
    right_title: str = "device side (QEMU trace)"
    notes: tuple[tuple[int, str], ...] = ()

    @property
    def ok(self) -> bool:
        return [e.key() for e in self.left] == [e.key() for e in self.right]

    def rows(self) -> list[tuple[str, PortAccess | None, PortAccess | None]]:
        """(mark, left, right): '=' agree, '!' differ, '<' only left, '>' only right."""
        matcher = difflib.SequenceMatcher(
            a=[e.key() for e in self.left], b=[e.key() for e in self.right], autojunk=False
        )
        rows: list[tuple[str, PortAccess | None, PortAccess | None]] = []
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                pairs = zip(range(i1, i2), range(j1, j2), strict=True)
                rows += [("=", self.left[i], self.right[j]) for i, j in pairs]
                continue
            lefts, rights = self.left[i1:i2], self.right[j1:j2]
            for k in range(max(len(lefts), len(rights))):
                a = lefts[k] if k < len(lefts) else None
                b = rights[k] if k < len(rights) else None
                rows.append(("!" if a and b else "<" if a else ">", a, b))
        return rows

    def render(self, width: int = 50, where: bool = True, only_diff: bool = False) -> str:
        """The two records side by side, one access per row, differences marked; the driver
        code that made each access in a third column."""
        head = f"  #    {self.left_title:<{width}} | {self.right_title:<{width}} |"
        lines = [head + (" driver code" if where else "")]
        notes = sorted(self.notes)
        right_seen = 0
        for n, (mark, a, b) in enumerate(self.rows(), 1):
            while notes and notes[0][0] <= right_seen:
                lines.append(f"{'':7}{'':<{width}} | ~ {notes.pop(0)[1]}")
            right_seen += b is not None
            if only_diff and mark == "=":
                continue
            left, right = _cell(a, width) if a else "", _cell(b, width) if b else ""
            tail = f" | {a.where}" if where and a is not None and a.where else ""
            lines.append(f"{n:3d} {mark}  {left:<{width}} | {right:<{width}}{tail}".rstrip())
        lines += [f"{'':7}{'':<{width}} | ~ {text}" for _, text in notes]
        verdict = "agree" if self.ok else "DIFFER (rows marked ! < >)"
        counts = f"{len(self.left)} vs {len(self.right)} accesses (data runs joined, polls folded)"
        lines.append(f"{counts}: records {verdict}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _cell(ev: PortAccess, width: int) -> str:
    """A compact one-line access for a table column: 'out 01f7 0xc5    Command: WRITE MULTIPLE'."""
    value = f"{ev.count}x{ev.width * 8}-bit" if ev.value is None else f"{ev.value:#04x}"
    if ev.repeat > 1:
        value += f" x{ev.repeat}"
    reg = ev.register
    if reg.split(" ", 1)[0] in CHANNELS:
        reg = reg.split(" ", 1)[1]
    text = f"{ev.direction:<3} {ev.port:04x} {value:<12} {reg}" + (f": {ev.decoded}" if ev.decoded else "")
    return text if len(text) <= width else text[: width - 1] + "~"


def compare(
    left: Sequence[PortAccess],
    right: Sequence[PortAccess],
    ports: Sequence[tuple[int, int]] | None = None,
    left_title: str = "driver side (GDB breakpoints)",
    right_title: str = "device side (QEMU trace)",
    right_notes: Sequence[tuple[int, str]] = (),
) -> Comparison:
    """Compare two records of one operation, restricted to `ports` if given (QEMU's trace
    covers only the IDE and bus-master ports), after normalize(). right_notes are (index into
    `right` as given, text): remarks placed where they happened."""

    def keep(events: Sequence[PortAccess]) -> list[PortAccess]:
        return normalize([e for e in events if ports is None or in_ranges(e.port, ports)])

    notes = tuple((len(keep(right[:index])), text) for index, text in right_notes)
    return Comparison(keep(left), keep(right), left_title, right_title, notes)


def diff_text(left: Sequence[PortAccess], right: Sequence[PortAccess], **kw: Any) -> str:
    """'' when the records agree, else the side-by-side rendering of where they differ."""
    result = compare(left, right, **kw)
    return "" if result.ok else result.render()
