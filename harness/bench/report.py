"""The benchmark's results and how they are shown: timing rows beside their floors, the
throughput table beside Linux's figures, and the report as JSON."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from harness import ata
from harness.bench.armed import ArmedCheck

PACKAGE = "piix3-harness"  # the distribution whose version a report carries
KIB = 1 << 10
MIB = 1 << 20
SUITE_STEPS = 3  # serial, -n auto, -n auto without the protocol checker
DISK_MIB = 96  # room for two 32 MiB commands and more: sequential LBAs wrap within it
SIZES = (4 * KIB, 64 * KIB, MIB, 32 * MIB)  # bytes per command in the throughput table
MODES = ("dma", "pio")
COMPLETIONS = tuple(ata.COMPLETIONS)  # each line of the table twice: the driver polling, then on IRQ 14
OPS = ("read", "write")
# Linux 6.1's ata_piix (Debian 12's kernel) measured on this same QEMU 7.2 under TCG, decimal
# MB/s: bus-master DMA (MWDMA2) with O_DIRECT reads of 4 KiB, 24 MB/s (~165 us a command, whatever
# its size), and with 1 MiB per command, 1300 MB/s read / 830 MB/s write; PIO4 with a 32-bit data
# port and READ/WRITE MULTIPLE of 16 sectors, 49 MB/s. (mode, op, bytes per command or None for
# any size) -> MB/s; a size Linux was not measured at has no figure (shown n/a).
LINUX_MB_S: dict[tuple[str, str, int | None], float] = {
    ("dma", "read", 4 * KIB): 24.0,
    ("dma", "read", MIB): 1300.0,
    ("dma", "write", MIB): 830.0,
    ("pio", "read", None): 49.0,
    ("pio", "write", None): 49.0,
}
# The targets the driver meets: (where, mode, op, bytes per command) -> MB/s at least.
TARGETS = {
    ("guest", "dma", "read", MIB): 1300.0,
    ("guest", "dma", "write", MIB): 830.0,
    ("guest", "pio", "read", MIB): 49.0,
    ("guest", "pio", "write", MIB): 49.0,
    ("guest", "pio", "read", 32 * MIB): 49.0,
    ("guest", "pio", "write", 32 * MIB): 49.0,
    # end to end on the doorbell, reads with read_into: at least Linux at every size it was
    # measured at, and a 32 MiB read at about memcpy speed
    ("end to end", "dma", "read", 4 * KIB): 24.0,
    ("end to end", "dma", "read", MIB): 1300.0,
    ("end to end", "dma", "write", MIB): 830.0,
    ("end to end", "dma", "read", 32 * MIB): 3000.0,
}
WHERE = ("guest", "end to end", "end to end (gdb)")  # in-guest; from Python on each transport


@dataclass
class Row:
    name: str
    value: float
    unit: str
    floor_name: str = ""
    floor: float | None = None
    target: str = ""

    @property
    def ratio(self) -> float | None:
        if self.floor is None or not self.floor or not self.value:
            return None
        return self.value / self.floor if self.unit in ("ms", "s") else self.floor / self.value


@dataclass
class Throughput:
    """One cell of the throughput table: MB/s (decimal) for a mode, direction and command size."""

    where: str  # WHERE: "guest" (TSC inside the guest, guest/bench.c), "end to end" (Python, doorbell;
    # reads with m.ata.read_into into one reused buffer), "end to end (gdb)" (the GDB transport)
    mode: str
    op: str
    bytes_per_command: int
    mb_s: float  # median over samples
    us_per_command: float  # median
    samples: int
    commands: int  # per sample
    completion: str = "poll"  # the driver's: "poll" (nIEN set) or "irq" (it waits for IRQ 14)

    @property
    def linux_mb_s(self) -> float | None:
        any_size = LINUX_MB_S.get((self.mode, self.op, None))
        return LINUX_MB_S.get((self.mode, self.op, self.bytes_per_command), any_size)

    @property
    def ratio(self) -> float | None:
        return self.mb_s / self.linux_mb_s if self.linux_mb_s else None

    @property
    def target(self) -> float | None:
        if self.completion != "poll":
            return None  # the targets are the polled driver's; irq rows are shown beside them
        return TARGETS.get((self.where, self.mode, self.op, self.bytes_per_command))

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.mb_s >= self.target

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "linux_mb_s": self.linux_mb_s,
            "ratio_to_linux": self.ratio,
            "target_mb_s": self.target,
            "meets_target": self.meets_target,
        }


@dataclass
class Report:
    firmware: str
    repeat: int
    quick: bool
    image: str = ""  # where the benchmark disk lived
    rows: list[Row] = field(default_factory=list)
    throughput: list[Throughput] = field(default_factory=list)
    armed: ArmedCheck | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": harness_version(),
            "firmware": self.firmware,
            "repeat": self.repeat,
            "quick": self.quick,
            "image": self.image,
            "timings": [asdict(r) | {"ratio": r.ratio} for r in self.rows],
            "throughput": [t.as_dict() for t in self.throughput],
            "armed_check": self.armed.as_dict() if self.armed else None,
            "notes": self.notes,
        }


def harness_version() -> str:
    """The installed piix3-harness's version (pyproject.toml's), or "unknown" when the package
    is not installed (the tree used from a checkout without `pip install`)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = width * min(self.done, self.total) // self.total
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            sys.stderr.write(f"\r{line:<78}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 78 + "\r")


# --- output ------------------------------------------------------------------------------------------
def size_text(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def render(rows: list[Row]) -> str:
    out = [f"{'measurement':<46} {'median':>10} {'unit':<6} {'floor':>10}  {'ratio':>6}  target"]
    for r in rows:
        floor = f"{r.floor:10.3f}" if r.floor is not None else " " * 10
        ratio = f"{r.ratio:5.2f}x" if r.ratio is not None else " " * 6
        out.append(
            f"{r.name:<46} {r.value:10.3f} {r.unit:<6} {floor}  {ratio}  {r.target}"
            + (f"  (floor: {r.floor_name})" if r.floor_name else "")
        )
    return "\n".join(out)


def render_throughput(cells: list[Throughput]) -> str:
    """One line per mode, direction and size: MB/s in the guest and end to end on each transport,
    each x Linux at that size (n/a where Linux was not measured at it), with time per command."""
    by_key = {(c.where, c.mode, c.op, c.bytes_per_command, c.completion): c for c in cells}
    out = [
        "throughput, MB/s (10^6 B/s), medians; x Linux = ratio to Linux 6.1 ata_piix on this QEMU at "
        f"that size (DMA read {LINUX_MB_S['dma', 'read', 4 * KIB]:.0f} at 4 KiB, "
        f"{LINUX_MB_S['dma', 'read', MIB]:.0f} read / {LINUX_MB_S['dma', 'write', MIB]:.0f} write at "
        f"1 MiB per command; PIO {LINUX_MB_S['pio', 'read', None]:.0f}); end to end: m.ata.read_into / "
        "m.ata.write from Python, on the doorbell and on the gdb transport; irq: the driver waits in hlt "
        "for IRQ 14 instead of polling",
        f"{'':<14} {'per cmd':>8}  {'in guest':>9} {'x Linux':>8} {'us/cmd':>9}  "
        f"{'doorbell':>9} {'x Linux':>8} {'us/call':>9}  {'gdb':>9} {'x Linux':>8} {'us/call':>9}  target",
    ]

    def cell(c: Throughput | None) -> str:
        if c is None:
            return " " * 28
        ratio = f"{c.ratio:7.2f}x" if c.ratio is not None else f"{'n/a':>8}"
        return f"{c.mb_s:9.1f} {ratio} {c.us_per_command:9.1f}"

    for mode in MODES:
        for op in OPS:
            for size, completion in ((s, c) for s in SIZES for c in COMPLETIONS):
                row = [by_key.get((where, mode, op, size, completion)) for where in WHERE]
                if not any(row):
                    continue
                targets = [
                    f"{c.where} >= {c.target:.0f} {'ok' if c.meets_target else 'MISS'}"
                    for c in row
                    if c is not None and c.target is not None
                ]
                g, small = row[0], by_key.get(("guest", mode, op, MIB, completion))
                if mode == "dma" and size == 32 * MIB and g is not None and small is not None:
                    targets.append(f"guest > 1 MiB's {'ok' if g.mb_s > small.mb_s else 'MISS'}")
                label = f"{mode.upper()} {op}" + (" irq" if completion == "irq" else "")
                out.append(
                    f"{label:<14} {size_text(size):>8}  "
                    + "  ".join(cell(c) for c in row)
                    + "  "
                    + "; ".join(targets)
                )
    return "\n".join(out)
