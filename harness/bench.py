"""`piix3 bench`: medians of start, reset, MI round trips, driver calls and throughput, each
beside the floor measured in the same run (the same thing done raw, without the harness)."""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.disk import DiskImage
from harness.machine import Machine

MIB = 1 << 20
THROUGHPUT_BYTES = 16 * MIB
RAW_TIMEOUT = 5.0  # s, for one raw MI reply


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
        return self.value / self.floor if self.unit == "ms" else self.floor / self.value


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // self.total
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            sys.stderr.write(f"\r{line:<78}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 78 + "\r")


def _samples(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of fn in ms."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _raw_mi(m: Machine, command: bytes) -> None:
    """One MI command written straight to GDB's stdin, reply read straight from its stdout."""
    assert m.gdb is not None and m.gdb.proc is not None
    proc = m.gdb.proc
    assert proc.stdin is not None and proc.stdout is not None
    fd = proc.stdout.fileno()
    os.write(proc.stdin.fileno(), b"999" + command + b"\n")
    buf = b""
    deadline = time.monotonic() + RAW_TIMEOUT
    while b"999^" not in buf or not buf.endswith(b"\n"):
        if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            raise TimeoutError("no raw MI reply")
        buf += os.read(fd, 65536)
    if b"999^error" in buf:
        raise RuntimeError(f"raw MI command failed: {buf.decode(errors='replace')}")


def run(repeat: int, firmware: str, progress: Progress) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="piix3-bench-") as tmp:
        disk = DiskImage.create(Path(tmp) / "bench.img", size_mib=64)

        def fresh() -> None:
            with Machine(disks=[disk], firmware=firmware):
                pass

        rows.append(
            Row(
                "fresh Machine start to park point (+close)",
                _samples(fresh, repeat),
                "ms",
                target="<= 150 ms",
            )
        )
        progress.step("fresh start")
        with Machine(disks=[disk], firmware=firmware) as m:
            rows.append(Row("reset() back to park point", _samples(m.reset, repeat), "ms", target="<= 70 ms"))
            progress.step("reset")
            raw = _samples(lambda: _raw_mi(m, b"-data-evaluate-expression 1"), repeat * 10)
            gdb = m.gdb
            assert gdb is not None
            ours = _samples(lambda: gdb.command("-data-evaluate-expression 1"), repeat * 10)
            rows.append(
                Row(
                    "MI round trip (-data-evaluate-expression 1)",
                    ours,
                    "ms",
                    "raw pipe write/read",
                    raw,
                    "<= 0.5 ms, <= 2x raw",
                )
            )
            progress.step("MI round trip")
            xfer = m.symbol("xfer_buf")
            raw_call = _samples(
                lambda: _raw_mi(
                    m,
                    f'-data-evaluate-expression "ata_read(0, (unsigned long long)5, 1, {xfer}, 1)"'.encode(),
                ),
                repeat * 5,
            )
            ours = _samples(lambda: m.ata.read(0, 5, 1), repeat * 5)
            rows.append(
                Row(
                    "m.ata.read(0, lba, 1) round trip",
                    ours,
                    "ms",
                    "raw inferior call",
                    raw_call,
                    "<= 3 ms, <= 1.5x raw",
                )
            )
            progress.step("driver call")
            data = os.urandom(THROUGHPUT_BYTES)
            count = THROUGHPUT_BYTES // 512
            for mode in ("pio", "dma"):

                def wr(mode: str = mode) -> None:
                    m.ata.write(0, 0, data, mode=mode)

                def rd(mode: str = mode) -> None:
                    m.ata.read(0, 0, count, mode=mode)

                for name, fn in (("write", wr), ("read", rd)):
                    ms = _samples(fn, max(3, repeat // 4))
                    rows.append(
                        Row(
                            f"{mode.upper()} {name} 16 MiB, end to end",
                            THROUGHPUT_BYTES / MIB / (ms / 1e3),
                            "MiB/s",
                        )
                    )
                    progress.step(f"{mode} {name}")
    return rows


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


def main(args: argparse.Namespace) -> int:
    progress = Progress(total=2 + 2 + 4)
    rows = run(args.repeat, args.firmware, progress)
    progress.close()
    print(f"piix3 bench: medians of {args.repeat}+ samples, firmware {args.firmware}")
    print(render(rows))
    if args.json:
        Path(args.json).write_text(
            json.dumps([asdict(r) | {"ratio": r.ratio} for r in rows], indent=2) + "\n"
        )
        print(f"written {args.json}")
    return 0
