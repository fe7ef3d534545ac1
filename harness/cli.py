"""The `piix3` command: run (the first promise), debug, trace, bench, inspect."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from harness import message
from harness.disk import DiskImage
from harness.errors import ConfigError, HarnessError, raise_terminated
from harness.machine import Machine
from harness.paths import BUILD_DIR, GDBINIT, find_kernel
from harness.qemu import FIRMWARE, QemuConfig, QemuPaths, QemuProcess

DEFAULT_IMAGE = BUILD_DIR / "disk.img"
RUN_LOGS = (
    "serial.log",
    "qemu.log",
    "qemu-trace.log",
    "gdb-mi.log",
    "qemu.cmdline",
    "gdb.cmdline",
    "hang.txt",
)
DEFAULT_LBA = 2048
DEFAULT_SIZE_MIB = 64
T = TypeVar("T")


class Steps:
    """Prints one line per step: outcome, time, and what was seen."""

    def __init__(self) -> None:
        self.failed = False

    def run(self, title: str, action: Callable[[], tuple[T, str]]) -> T | None:
        if self.failed:
            print(f"  [skip] {title}")
            return None
        t0 = time.perf_counter()
        try:
            value, detail = action()
        except (HarnessError, OSError) as exc:
            self.failed = True
            print(f"  [FAIL] {title:<34} {exc}")
            return None
        ms = (time.perf_counter() - t0) * 1e3
        print(f"  [ok]   {title:<34} {ms:7.1f} ms  {detail}")
        return value

    def check(self, title: str, ok: bool, detail: str) -> None:
        if self.failed:
            print(f"  [skip] {title}")
            return
        self.failed = not ok
        label = "[ok]  " if ok else "[FAIL]"
        print(f"  {label} {title:<34} {'':10} {detail}")


def _quote(text: str | None, limit: int = 60) -> str:
    if text is None:
        return "(none)"
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def cmd_run(args: argparse.Namespace) -> int:
    image = Path(args.image)
    created = not image.exists()
    if created:
        DiskImage.create(image, size_mib=args.size_mib)
    disk = DiskImage(image)
    text = (
        args.message
        or f"Hello from piix3-harness, written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    try:
        record = message.encode(text)
    except ValueError as exc:
        raise ConfigError(f"--message: {exc}") from None
    count = len(record) // 512
    lba = args.lba
    artifacts = Path(args.artifacts)
    for name in RUN_LOGS:  # only what an earlier run wrote here: the directory may be the user's
        with contextlib.suppress(FileNotFoundError):
            (artifacts / name).unlink()
    print(
        f"piix3 run: {'new' if created else 'existing'} image {image} ({disk.size >> 20} MiB {disk.format}), "
        f"drive 0, LBA {lba}, firmware {args.firmware}"
    )
    steps = Steps()
    m = Machine(disks=[disk], firmware=args.firmware, artifacts_dir=artifacts, keep_artifacts=True)

    def boot() -> tuple[None, str]:
        m.start()
        info = m.ata.identify(0)
        return None, f"drive 0: {info.model}, {info.sectors} sectors"

    def read_before() -> tuple[message.Decoded, str]:
        first = m.ata.read(0, lba, 1)
        n = message.sectors_needed(first)
        prev = message.decode(m.ata.read(0, lba, n) if n > 1 else first)
        return prev, f"previous message: {_quote(prev.text)}" + ("" if prev.text else f" ({prev.reason})")

    def write() -> tuple[None, str]:
        m.ata.write(0, lba, record)
        m.ata.flush(0)
        return None, f"{count} sector(s) + FLUSH CACHE: {_quote(text)}"

    def power_cycle() -> tuple[None, str]:
        old = m.qemu.pid if m.qemu else None
        m.power_cycle()
        return None, f"QEMU pid {old} quit, pid {m.qemu.pid if m.qemu else '?'} booted"

    def guest_read() -> tuple[message.Decoded, str]:
        got = message.decode(m.ata.read(0, lba, count))
        return got, f"read {_quote(got.text)}"

    try:
        steps.run("boot to harness_ready", boot)
        steps.run(f"read LBA {lba} before writing", read_before)
        steps.run("write the message, flush", write)
        steps.run("power cycle (quit, new QEMU)", power_cycle)
        got = steps.run("read back in the guest", guest_read)
        if got is not None:
            steps.check(
                "guest copy matches",
                got.text == text,
                "byte-identical" if got.text == text else f"{_quote(got.text)} ({got.reason})",
            )
    finally:
        m.close(failed=steps.failed)
    host = steps.run(
        "read back from the host's image",
        lambda: (message.decode(disk.read_sectors(lba, count)), "QEMU has exited; plain file read"),
    )
    if host is not None:
        steps.check("host copy matches", host.text == text, f"{_quote(host.text)}")
    print(f"logs: {artifacts}/serial.log (guest), qemu.log, gdb-mi.log (GDB/MI transcript), *.cmdline")
    print("result:", "FAIL" if steps.failed else "PASS (the message survived a power cycle)")
    return 1 if steps.failed else 0


def cmd_debug(args: argparse.Namespace) -> int:
    """QEMU paused with the default disk, and an interactive GDB with the gdbinit."""
    image = Path(args.image)
    if not image.exists():
        DiskImage.create(image, size_mib=args.size_mib)
    kernel = find_kernel()
    rundir = Path(tempfile.mkdtemp(prefix="piix3-debug-"))
    paths = QemuPaths.under(rundir, rundir)
    qemu = QemuProcess(QemuConfig(kernel=kernel, disks={0: DiskImage(image)}, firmware=args.firmware), paths)
    qemu.start()
    gdb_argv = [
        "gdb",
        "-q",
        "-nx",
        "-x",
        str(GDBINIT),
        "-ex",
        f"target remote {paths.gdb_socket}",
        "-ex",
        "piix3-park",
        str(kernel),
    ]
    print(f"piix3 debug: QEMU pid {qemu.pid} paused; serial log {paths.serial_log}")
    print(f"  attach another GDB with: gdb -x {GDBINIT} -ex 'target remote {paths.gdb_socket}' {kernel}")
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to GDB now
    try:
        return subprocess.call(gdb_argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    finally:
        signal.signal(signal.SIGINT, old)
        qemu.quit()
        shutil.rmtree(rundir, ignore_errors=True)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Host-side view of an image: a hexdump of sectors, and any piix3 message there."""
    disk = DiskImage(args.image)
    disk.validate()
    data = disk.read_sectors(args.lba, args.count)
    print(
        f"{disk.path}: {disk.format}, {disk.size} bytes, {disk.sectors} sectors; "
        f"LBA {args.lba}..{args.lba + args.count - 1}"
    )
    decoded = message.decode(data)
    print(
        f"piix3 message: {_quote(decoded.text, 200)}"
        if decoded.text
        else f"piix3 message: none ({decoded.reason})"
    )
    previous = b""
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        if row == previous and off:
            continue
        previous = row
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        print(f"{args.lba * 512 + off:010x}  {row.hex(' ', 1):<48}  {text}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    """One driver operation recorded from both sides, printed side by side."""
    from harness.devtrace import trace_operation
    from harness.ports import normalize

    image = Path(args.image)
    if not image.exists():
        DiskImage.create(image, size_mib=args.size_mib)
    op, rest = args.op, list(args.args)
    usage = {"identify": "[DRIVE]", "flush": "[DRIVE]", "read": "LBA [COUNT]", "write": "LBA TEXT"}
    try:
        if op in ("identify", "flush"):
            if len(rest) > 1:
                raise ValueError
            kw: dict[str, Any] = {"drive": int(rest[0], 0) if rest else args.drive}
        elif op == "read":
            if not 1 <= len(rest) <= 2:
                raise ValueError
            kw = {
                "drive": args.drive,
                "lba": int(rest[0], 0),
                "count": int(rest[1], 0) if len(rest) > 1 else 1,
            }
        else:
            if len(rest) != 2:
                raise ValueError
            text = rest[1].encode()
            kw = {
                "drive": args.drive,
                "lba": int(rest[0], 0),
                "data": text.ljust(-(-max(len(text), 1) // 512) * 512, b"\0"),
            }
    except ValueError:
        print(f"usage: piix3 trace {op} {usage[op]}", file=sys.stderr)
        return 2
    with Machine(disks=[DiskImage(image)], firmware=args.firmware) as m:
        traced = trace_operation(m, op, mode=args.mode, ports=args.ports or ("ide",), **kw)
    print(f"piix3 trace: {traced.title}, image {image}: {traced.result}")
    if args.raw:
        for side, events in (
            ("driver side (GDB)", traced.driver),
            ("device side (QEMU trace)", traced.device),
        ):
            print(f"{side}: {len(events)} accesses")
            for ev in normalize(events):
                print(f"  {ev}")
    print(traced.comparison.render(only_diff=args.only_diff))
    return 0 if traced.comparison.ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from harness import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="piix3", description="Verify the PIIX3 IDE driver in QEMU through GDB.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (command lines, timings)")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--image", default=str(DEFAULT_IMAGE), help=f"disk image (default {DEFAULT_IMAGE})")
        sp.add_argument("--size-mib", type=int, default=DEFAULT_SIZE_MIB, help="size if the image is created")
        sp.add_argument("--firmware", choices=sorted(FIRMWARE), default="seabios")

    run = sub.add_parser("run", help="write a message, power-cycle, read it back in the guest and host-side")
    common(run)
    run.add_argument("--message", help="text to write (default: a greeting with the time)")
    run.add_argument("--lba", type=int, default=DEFAULT_LBA, help=f"where to write (default {DEFAULT_LBA})")
    run.add_argument(
        "--artifacts", default=str(BUILD_DIR / "run"), help="where the logs go (default build/run)"
    )
    run.set_defaults(func=cmd_run)

    dbg = sub.add_parser("debug", help="QEMU paused on the default disk + interactive GDB with the gdbinit")
    common(dbg)
    dbg.set_defaults(func=cmd_debug)

    ins = sub.add_parser("inspect", help="hexdump sectors of an image from the host side")
    ins.add_argument("--image", default=str(DEFAULT_IMAGE))
    ins.add_argument("--lba", type=int, default=DEFAULT_LBA)
    ins.add_argument("--count", type=int, default=1)
    ins.set_defaults(func=cmd_inspect)

    tr = sub.add_parser(
        "trace",
        help="run one driver operation; print its port accesses from GDB and from QEMU side by side",
        description="e.g. piix3 trace write 5 hello | read 5 [COUNT] | identify [DRIVE] | flush [DRIVE]",
    )
    common(tr)
    tr.add_argument("op", choices=["identify", "read", "write", "flush"])
    tr.add_argument("args", nargs="*", help="write: LBA TEXT; read: LBA [COUNT]; identify/flush: [DRIVE]")
    tr.add_argument("--drive", type=int, default=0, help="drive for read/write (default 0)")
    tr.add_argument("--mode", choices=["dma", "pio"], default="dma", help="transfer mode (default dma)")
    tr.add_argument("--ports", nargs="+", help="ports or names to watch (default: every IDE port)")
    tr.add_argument("--only-diff", action="store_true", help="print only the rows where the records differ")
    tr.add_argument("--raw", action="store_true", help="also list each side on its own")
    tr.set_defaults(func=cmd_trace)

    b = sub.add_parser("bench", help="measure start, reset, calls, throughput; print a table")
    b.add_argument(
        "--repeat",
        type=int,
        help="samples per timing measurement, median reported (default 20; 5 with --quick)",
    )
    b.add_argument(
        "--quick", action="store_true", help="fewer and shorter samples (about a third of the time)"
    )
    b.add_argument(
        "--image-dir", metavar="DIR", help="where the benchmark image lives (default: the system's temp dir)"
    )
    b.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    b.add_argument("--firmware", choices=sorted(FIRMWARE), default="seabios")
    b.add_argument(
        "--suite", action="store_true", help="also time the whole test suite serial vs -n auto (minutes)"
    )
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does, so every machine is closed and its files removed.
    signal.signal(signal.SIGTERM, raise_terminated)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except HarnessError as exc:
        print(f"piix3 {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"piix3 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
