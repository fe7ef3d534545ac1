"""A recorded operation as a timing diagram: PortAccess events -> WaveDrom JSON -> SVG.

One column per access of the driver-side record, normalized (a data run is one column, a
status poll repeated N times is one column marked xN), in the driver's order: WaveDrom
draws cycles, not time. Lanes: the C function that made the access, the access itself, the
task-file registers as written, the command, status as read with BSY/DRDY/DRQ/ERR, the data
port, and the bus master's START and ACTIVE; only lanes the record touches are drawn.

    python -m harness.portio.timing_diagram OUT_DIR

boots a machine on a scratch image, records a PIO write and a DMA read of one sector, and
writes OUT_DIR/pio-write.{json,svg} and OUT_DIR/dma-read.{json,svg} (the README's pictures,
tests/data/waveforms/).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.portio.access import PortAccess, PortError
from harness.portio.compare import normalize
from harness.portio.vcd import split_register
from harness.regs import command_name

# (register, direction) -> lane label; task file lanes in this order
_WRITTEN_LANES = (
    ("Device", "Device"),
    ("Features", "Features"),
    ("Sector Count", "Sector Count"),
    ("LBA Low", "LBA Low"),
    ("LBA Mid", "LBA Mid"),
    ("LBA High", "LBA High"),
    ("Device Control", "Device Control"),
    ("Command", "Command"),
)
_SHORT = {
    "Data": "Data",
    "Error": "Err",
    "Features": "Feat",
    "Sector Count": "Count",
    "LBA Low": "LBA0",
    "LBA Mid": "LBA1",
    "LBA High": "LBA2",
    "Device": "Dev",
    "Status": "Stat",
    "Command": "Cmd",
    "Alt Status": "AltSt",
    "Device Control": "DevCtl",
    "BM Command": "BMCmd",
    "BM Status": "BMSt",
    "BM PRD": "PRD",
}
_STATUS_BITS = (("BSY", 7), ("DRDY", 6), ("DRQ", 3), ("ERR", 0))
HSCALE = 3  # WaveDrom cell width, in its units: room for 'select_drive'-long labels


class _Lane:
    """One WaveDrom signal built column by column: a value lane ('=' with labels) or a bit."""

    def __init__(self, name: str, bit: bool = False, color: str = "=", idle: str = "") -> None:
        self.name = name
        self.bit = bit
        self.color = color
        self.idle = idle  # drawn between pulses ('z': a bus nobody drives), else the value holds
        self.wave: list[str] = []
        self.data: list[str] = []
        self.current: object = None
        self.used = False

    def step(self, value: object = None, label: str | None = None, pulse: bool = False) -> None:
        """The next column: a new value (drawn only if it changed, or always with pulse), or
        None for 'unchanged'."""
        if value is None and self.idle:
            self.wave.append("." if self.wave and self.wave[-1] == self.idle else self.idle)
            self.current = None
            return
        if value is None or (value == self.current and not pulse):
            self.wave.append("." if self.wave else "x")
            return
        self.used = True
        self.current = value
        if self.bit:
            self.wave.append("1" if value else "0")
        else:
            self.wave.append(self.color)
            self.data.append(label if label is not None else str(value))

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "wave": "".join(self.wave)}
        if self.data:
            out["data"] = self.data
        return out


def _column_label(e: PortAccess, name: str) -> str:
    label = ("wr " if e.direction == "out" else "rd ") + _SHORT.get(name, name)
    return label + (f" x{e.repeat}" if e.repeat > 1 else "")


def diagram(events: Sequence[PortAccess], title: str, foot: str = "") -> dict[str, Any]:
    """The WaveDrom document for one channel's record (normalized here)."""
    record = [e for e in normalize(events) if split_register(e.register) is not None]
    if not record:
        raise PortError(f"{title}: no IDE register access to draw")
    channels = {e.register.split(" ", 1)[0] for e in record}
    if len(channels) > 1:
        raise PortError(f"{title}: a diagram draws one channel; this record has {sorted(channels)}")
    function = _Lane("function", color="2")
    access = _Lane("access")
    written = {reg: _Lane(label, color="3" if reg == "Command" else "=") for reg, label in _WRITTEN_LANES}
    status = _Lane("Status (read)", color="4")
    bits = {b: _Lane(b, bit=True) for b, _ in _STATUS_BITS}
    data = _Lane("Data port", color="5", idle="z")
    start = _Lane("BM START", bit=True)
    bm_status = _Lane("BM Status (read)", color="4")
    active = _Lane("BM ACTIVE", bit=True)
    lanes = [function, access, *written.values(), status, *bits.values(), data, start, bm_status, active]
    for e in record:
        _, name = split_register(e.register) or ("", "")
        changed: dict[_Lane, tuple[object, str | None, bool]] = {}
        function_name = e.where.split(" (", 1)[0]
        changed[function] = (function_name or None, None, False)
        changed[access] = (object(), _column_label(e, name), True)
        if e.direction == "out" and name in written and e.value is not None:
            text = f"{e.value:02X}" + (f" {command_name(e.value)}" if name == "Command" else "")
            changed[written[name]] = (e.value, text, True)
        if e.direction == "in" and name in ("Status", "Alt Status") and e.value is not None:
            changed[status] = (e.value, f"{e.value:02X}", False)
            for b, shift in _STATUS_BITS:
                changed[bits[b]] = ((e.value >> shift) & 1, None, False)
        if name == "Data":
            changed[data] = (object(), f"{e.count * e.width} B {e.direction}", True)
        if e.direction == "out" and name == "BM Command" and e.value is not None:
            changed[start] = (e.value & 1, None, False)
        if e.direction == "in" and name == "BM Status" and e.value is not None:
            flags = [f for f in e.decoded.split("|") if f in ("ACTIVE", "ERR", "INTR")]  # not DRVn-DMA
            changed[bm_status] = (e.value, " ".join([f"{e.value:02X}", *flags]), False)
            changed[active] = (e.value & 1, None, False)
        for lane in lanes:
            value, label, pulse = changed.get(lane, (None, None, False))
            lane.step(value, label, pulse)
    groups: list[Any] = [function.json(), access.json(), {}]
    task = [written[reg].json() for reg, _ in _WRITTEN_LANES if written[reg].used]
    if task:
        groups.append(["task file (written)", *task])
    if status.used:
        groups.append(["status (read)", status.json(), *(bits[b].json() for b, _ in _STATUS_BITS)])
    if data.used:
        groups.append(data.json())
    bm = [lane.json() for lane in (start, bm_status, active) if lane.used]
    if bm:
        groups.append(["bus master", *bm])
    doc: dict[str, Any] = {
        "signal": groups,
        "head": {"text": title},
        "config": {"hscale": HSCALE},
    }
    if foot:
        doc["foot"] = {"text": foot}
    return doc


def render_svg(doc: dict[str, Any]) -> str:
    """The WaveDrom document drawn as SVG text (the wavedrom package)."""
    try:
        import wavedrom  # type: ignore[import-untyped]
    except ImportError:
        raise PortError("drawing needs the wavedrom package: pip install -e '.[dev]'") from None
    drawing = wavedrom.render(json.dumps(doc))
    return str(drawing.tostring())


def write(doc: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """stem.json (the WaveDrom source) and stem.svg (drawn)."""
    source, picture = stem.with_suffix(".json"), stem.with_suffix(".svg")
    try:
        source.write_text(json.dumps(doc, indent=1) + "\n")
        picture.write_text(render_svg(doc) + "\n")
    except OSError as exc:
        raise PortError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return source, picture


FOOT = "one column per access, in the driver's order (status polls folded: xN); recorded by GDB"


def record_readme_pictures(out_dir: Path, firmware: str = "seabios") -> list[Path]:
    """Boot a machine on a scratch image, record a PIO write and a DMA read of one sector
    (both sides, which must agree), and draw the driver side of each."""
    from harness.disk import DiskImage
    from harness.machine import Machine
    from harness.portio.operation import trace_operation

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="piix3-timing-") as scratch:
        disk = DiskImage.create(Path(scratch) / "disk.img", size_mib=8)
        data = b"hello".ljust(512, b"\0")
        with Machine(disks=[disk], firmware=firmware) as m:
            runs = [
                ("pio-write", trace_operation(m, "write", lba=5, data=data, mode="pio")),
                ("dma-read", trace_operation(m, "read", lba=5, count=1, mode="dma")),
            ]
    for stem, traced in runs:
        if not traced.comparison.ok:
            raise PortError(f"{traced.title}: the driver and device records differ:\n{traced.comparison}")
        title = f"{traced.title[0].upper()}{traced.title[1:]}"
        written += write(diagram(traced.driver, title, FOOT), out_dir / stem)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.portio.timing_diagram",
        description="Record a PIO write and a DMA read and draw them as WaveDrom timing diagrams "
        "(OUT_DIR/pio-write.svg, dma-read.svg, and their .json sources).",
    )
    parser.add_argument("out_dir", type=Path, help="where the files go, e.g. tests/data/waveforms")
    parser.add_argument("--firmware", default="seabios", choices=["seabios", "qboot"])
    args = parser.parse_args(argv)
    try:
        for path in record_readme_pictures(args.out_dir, args.firmware):
            print(path)
    except HarnessError as exc:
        print(f"timing_diagram: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
