"""The `piix3` command: run (the first promise), debug, trace, bench, inspect."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from harness import check_trace, message, rundir
from harness.abi import SECTOR
from harness.disk import MAX_IMAGE_BYTES, MIB, DiskImage, DiskImageError
from harness.errors import HarnessError, raise_terminated
from harness.machine import Machine
from harness.paths import BUILD_DIR, GDBINIT, find_kernel
from harness.qemu import FIRMWARE, LOG_FILES, QemuConfig, QemuPaths, QemuProcess

DEFAULT_IMAGE = BUILD_DIR / "disk.img"
DEFAULT_LBA = 2048
POWER_LOSS_SUFFIXES = ("[not flushed]", "[flushed]")  # piix3 run --power-loss: the two messages
DEFAULT_SIZE_MIB = 64
T = TypeVar("T")


class BadArgument(Exception):  # not harness.UsageError: that one is a library HarnessError (status 1)
    """A bad command-line argument: one line `piix3 <cmd>: ...` on stderr, exit status 2."""

    def __init__(self, text: str, prog: str | None = None) -> None:
        super().__init__(text)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (and exit status 2, through main), not usage + error."""

    def error(self, message: str) -> NoReturn:
        raise BadArgument(f"{message} (see {self.prog} --help)", self.prog)


def _whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in minimum..maximum."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {value}")
        return value

    return whole_number


def _stat_or_none(path: Path, what: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadArgument(f"{what} {path}: {exc.strerror}") from None


def _check_parent(path: Path, what: str) -> None:
    """path does not exist yet: its nearest existing ancestor must be a directory."""
    for parent in path.parents:
        st = _stat_or_none(parent, what)
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise BadArgument(f"{what} {path}: {parent} is not a directory")
            return


def _image_arg(text: str, *, create: bool) -> tuple[DiskImage, bool]:
    """--image as a DiskImage (and whether the file exists), refusing directories, FIFOs,
    devices and unresolvable paths without opening anything."""
    try:
        disk = DiskImage(text)
        if os.path.lexists(disk.path):
            disk.check_file()
            return disk, True
    except DiskImageError as exc:
        raise BadArgument(f"--image: {exc}") from None
    if not create:
        raise BadArgument(f"--image: {disk.path} does not exist")
    _check_parent(disk.path, "--image")
    return disk, False


def _dir_arg(text: str, what: str, *, create: bool) -> Path:
    """A directory the command writes in: an existing one must take a new file; a missing one
    (if create) must be makeable, i.e. its nearest existing ancestor is a directory."""
    path = Path(text).absolute()
    st = _stat_or_none(path, what)
    if st is None:
        if not create:
            raise BadArgument(f"{what} {path} does not exist")
        _check_parent(path, what)
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise BadArgument(f"{what} {path} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise BadArgument(f"{what} {path}: cannot write there ({exc.strerror})") from None
    return path


def _output_file_arg(text: str, what: str) -> Path:
    """A file the command (over)writes: a regular file or nothing yet, in a writable directory."""
    path = Path(text).absolute()
    st = _stat_or_none(path, what)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise BadArgument(f"{what} {path} is not a regular file")
    _dir_arg(str(path.parent), what, create=False)
    return path


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
    # every argument is checked before anything is created or started
    if args.message == "":
        raise BadArgument(
            "--message is empty; give some text, or leave --message out for the default greeting"
        )
    text = (
        args.message
        if args.message is not None
        else f"Hello from piix3-harness, written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    texts = [f"{text} {suffix}" for suffix in POWER_LOSS_SUFFIXES] if args.power_loss else [text]
    try:
        records = [message.encode(t) for t in texts]
    except ValueError as exc:  # too long, or not encodable (lone surrogates from the command line)
        raise BadArgument(f"--message: {exc}") from None
    record = records[0]
    count = max(len(r) for r in records) // SECTOR
    lba = args.lba
    disk, exists = _image_arg(args.image, create=True)
    if args.power_loss and disk.format != "raw":
        raise BadArgument(
            f"--power-loss: {disk.path} is {disk.format}; a volatile write cache needs a raw image"
        )
    artifacts = _dir_arg(args.artifacts, "--artifacts", create=True)
    if exists:
        disk.validate()  # content and lock (DiskImageError, status 1) before anything starts
    sectors = disk.sectors if exists else args.size_mib * MIB // SECTOR
    if lba + count > sectors:
        raise BadArgument(
            f"--lba {lba}: the message needs sectors {lba}..{lba + count - 1}, "
            f"but {disk.path} has {sectors} (0..{sectors - 1})"
        )
    image = disk.path
    created = not exists
    if created:
        disk = DiskImage.create(image, size_mib=args.size_mib)
    for name in LOG_FILES:  # only what an earlier run wrote here: the directory may be the user's
        try:
            (artifacts / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BadArgument(f"--artifacts: cannot replace {artifacts / name}: {exc.strerror}") from None
    print(
        f"piix3 run: {'new' if created else 'existing'} image {image} ({disk.size >> 20} MiB {disk.format}), "
        f"drive 0, LBA {lba}, firmware {args.firmware}"
        + (", volatile write cache" if args.power_loss else "")
    )
    if args.power_loss:
        return _run_power_loss(args, disk, artifacts, texts, records)
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


def _quote_ends(text: str, limit: int = 60) -> str:
    """text quoted, its middle elided to fit: both ends stay readable."""
    if len(text) <= limit:
        return repr(text)
    half = (limit - 3) // 2
    return repr(text[:half] + "..." + text[-half:])


def _run_power_loss(
    args: argparse.Namespace, disk: DiskImage, artifacts: Path, texts: list[str], records: list[bytes]
) -> int:
    """`piix3 run --power-loss`: the same message written twice to a drive with a volatile write
    cache, the plug pulled after each: without a FLUSH it is lost, after one it survives."""
    lba = args.lba
    count = max(len(r) for r in records) // SECTOR
    steps = Steps()
    m = Machine(
        disks=[disk],
        firmware=args.firmware,
        artifacts_dir=artifacts,
        keep_artifacts=True,
        write_cache="volatile",
    )
    before: list[bytes] = []  # the sectors the messages go to, as they were
    after: list[message.Decoded | None] = [None, None]  # what each power loss left

    def boot() -> tuple[None, str]:
        m.start()
        info = m.ata.identify(0)
        return None, f"drive 0: {info.model}, {info.sectors} sectors, volatile write cache"

    def read_before() -> tuple[None, str]:
        before.append(m.ata.read(0, lba, count))
        prev = message.decode(before[0])
        return None, f"previous message: {_quote(prev.text)}" + ("" if prev.text else f" ({prev.reason})")

    def write(n: int, flush: bool) -> tuple[None, str]:
        m.ata.write(0, lba, records[n])
        if flush:
            m.ata.flush(0)
        what = "+ FLUSH CACHE" if flush else "completed, only in the drive's cache"
        return None, f"{len(records[n]) // SECTOR} sector(s) {what}: {_quote_ends(texts[n])}"

    def pull_plug() -> tuple[None, str]:
        loss = m.power_loss("drop")
        drive = loss.drives.get(0)
        lost = (
            f"{drive.lost_writes} unflushed write(s) lost"
            if drive and drive.lost_writes
            else "nothing unflushed"
        )
        return None, f"QEMU pid {loss.old_pid} killed, pid {loss.new_pid} booted; {lost}"

    def guest_read(n: int) -> tuple[bytes, str]:
        data = m.ata.read(0, lba, count)
        after[n] = got = message.decode(data)
        return data, f"read {_quote_ends(got.text) if got.text else f'(none) ({got.reason})'}"

    try:
        steps.run("boot to harness_ready", boot)
        steps.run(f"read LBA {lba} before writing", read_before)
        steps.run("write message 1, no flush", lambda: write(0, flush=False))
        steps.run("power loss (plug pulled)", pull_plug)
        data = steps.run("read back in the guest", lambda: guest_read(0))
        if data is not None:
            lost = data == before[0]
            steps.check(
                "unflushed message 1 lost",
                lost,
                "the previous content is back, byte-identical"
                if lost
                else f"the drive kept an unflushed write: {_quote(message.decode(data).text)}",
            )
        steps.run("write message 2, flush", lambda: write(1, flush=True))
        steps.run("power loss (plug pulled)", pull_plug)
        data = steps.run("read back in the guest", lambda: guest_read(1))
        if data is not None:
            kept = after[1] is not None and after[1].text == texts[1]
            detail = "byte-identical" if kept else "the flushed write is gone"
            steps.check("flushed message 2 survived", kept, detail)
    finally:
        m.close(failed=steps.failed)
    host = steps.run(
        "read back from the host's image",
        lambda: (message.decode(disk.read_sectors(lba, count)), "QEMU has exited; plain file read"),
    )
    if host is not None:
        steps.check("host copy matches", host.text == texts[1], _quote_ends(host.text or ""))
    print(f"logs: {artifacts}/serial.log (guest), qemu.log, gdb-mi.log (GDB/MI transcript), *.cmdline")
    cells = []
    for n, decoded in enumerate(after):
        if decoded is None:
            cells.append("(not reached)")
        elif decoded.text == texts[n]:
            cells.append("survived")
        else:
            cells.append(f"lost ({'the previous content is back' if n == 0 else _quote(decoded.text, 30)})")
    print(f"  {'':18} {'message 1, no flush':38} message 2, flushed")
    print(f"  {'after power loss':18} {cells[0]:38} {cells[1]}")
    print(
        "result:",
        "FAIL"
        if steps.failed
        else "PASS (the power loss lost the unflushed message; the flushed one survived)",
    )
    return 1 if steps.failed else 0


def cmd_debug(args: argparse.Namespace) -> int:
    """QEMU paused with the default disk, and an interactive GDB with the gdbinit."""
    disk, exists = _image_arg(args.image, create=True)
    image = disk.path
    if not exists:
        DiskImage.create(image, size_mib=args.size_mib)
    kernel = find_kernel()
    rundir = Path(tempfile.mkdtemp(prefix="piix3-debug-"))
    paths = QemuPaths.under(rundir, rundir).without_console()  # nobody here reads a console
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
    disk, _ = _image_arg(args.image, create=False)
    disk.validate()  # the same rules as for a machine: no backing file, no data file, ...
    sectors = disk.sectors
    if args.lba >= sectors or args.lba + args.count > sectors:
        raise BadArgument(
            f"--lba {args.lba} --count {args.count}: sectors {args.lba}..{args.lba + args.count - 1} "
            f"are outside {disk.path} ({sectors} sectors, 0..{sectors - 1})"
        )
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
    from harness.portio.compare import normalize
    from harness.portio.operation import trace_operation

    vcd = _output_file_arg(args.vcd, "--vcd") if args.vcd is not None else None
    if vcd is not None and vcd.suffix == ".gtkw":
        raise BadArgument(f"--vcd {vcd}: name the .vcd file; the .gtkw file is written beside it")
    disk, exists = _image_arg(args.image, create=True)
    image = disk.path
    if not exists:
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
    if vcd is not None:
        from harness.portio.vcd import with_driver_markers, write_vcd

        wave = write_vcd(
            with_driver_markers(traced.device, traced.driver),
            vcd,
            title=f"piix3 trace: {traced.title}",
            note="QEMU's clock ran on while GDB's port watch stopped the guest at each access (~0.6 ms "
            "each): the gaps are mostly the watch's, the order and the values are the device's",
        )
        print(f"waveform: {wave.vcd} (device side in QEMU's time, driver functions as markers)")
        print(f"  gtkwave {wave.vcd} {wave.gtkw}")
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


def cmd_clean(args: argparse.Namespace) -> int:
    """Remove the private run directories (sockets, RAM files) of harness processes that are gone."""
    removed = rundir.sweep_stale()
    for path in removed:
        print(f"removed {path}")
    print(f"piix3 clean: {len(removed)} run directories of processes that are gone removed")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import measure, report

    if args.image_dir is not None:
        args.image_dir = str(_dir_arg(args.image_dir, "--image-dir", create=False))
    if args.json is not None:
        args.json = str(_output_file_arg(args.json, "--json"))
    quick = bool(args.quick)
    repeat = args.repeat if args.repeat is not None else (5 if quick else 20)
    t0 = time.perf_counter()
    progress = report.Progress(measure.total_steps(args.suite))
    result = measure.run(repeat, args.firmware, quick, progress, args.image_dir, args.suite)
    progress.close()
    print(f"piix3 bench: medians of {repeat}+ samples, firmware {args.firmware}{', quick' if quick else ''}")
    print(f"disk: {result.image}")
    print(report.render(result.rows))
    print()
    if result.armed is not None:
        print(f"armed during timed transfers: {result.armed.describe()}")
    print(report.render_throughput(result.throughput))
    for note in result.notes:
        print(note)
    print(f"bench took {time.perf_counter() - t0:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        print(f"written {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="piix3", description="Verify the PIIX3 IDE driver in QEMU through GDB.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (command lines, timings)")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--image", default=str(DEFAULT_IMAGE), help=f"disk image (default {DEFAULT_IMAGE})")
        sp.add_argument(
            "--size-mib",
            type=_whole(1, MAX_IMAGE_BYTES // MIB),
            default=DEFAULT_SIZE_MIB,
            help=f"size if the image is created (default {DEFAULT_SIZE_MIB})",
        )
        sp.add_argument("--firmware", choices=sorted(FIRMWARE), default="seabios")

    run = sub.add_parser("run", help="write a message, power-cycle, read it back in the guest and host-side")
    common(run)
    run.add_argument(
        "--message",
        help="text to write, not empty (an empty --message is refused; leave it out for the default: "
        "a greeting with the time)",
    )
    run.add_argument(
        "--lba", type=_whole(0), default=DEFAULT_LBA, help=f"where to write (default {DEFAULT_LBA})"
    )
    run.add_argument(
        "--artifacts", default=str(BUILD_DIR / "run"), help="where the logs go (default build/run)"
    )
    run.add_argument(
        "--power-loss",
        action="store_true",
        help="give the drive a volatile write cache; write the message without a flush and pull the "
        "plug (it is lost), then write it again, flush and pull the plug (it survives)",
    )
    run.set_defaults(func=cmd_run)

    dbg = sub.add_parser("debug", help="QEMU paused on the default disk + interactive GDB with the gdbinit")
    common(dbg)
    dbg.set_defaults(func=cmd_debug)

    ins = sub.add_parser("inspect", help="hexdump sectors of an image from the host side")
    ins.add_argument("--image", default=str(DEFAULT_IMAGE))
    ins.add_argument(
        "--lba", type=_whole(0), default=DEFAULT_LBA, help=f"first sector (default {DEFAULT_LBA})"
    )
    ins.add_argument("--count", type=_whole(1), default=1, help="how many sectors (default 1)")
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
    tr.add_argument(
        "--vcd",
        metavar="FILE",
        help="also write a waveform: FILE (VCD: registers, status bits, bus master, in QEMU's "
        "time, with the driver's C function as a marker) and a GTKWave save file beside it (.gtkw)",
    )
    tr.set_defaults(func=cmd_trace)

    b = sub.add_parser("bench", help="measure start, reset, calls, throughput; print a table")
    b.add_argument(
        "--repeat",
        type=_whole(1),
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

    cl = sub.add_parser(
        "clean",
        help="remove run directories (sockets, guest RAM) left by harness processes that were killed",
    )
    cl.set_defaults(func=cmd_clean)

    ct = sub.add_parser(
        "check-trace",
        help="check a QEMU IDE trace log against the ATA and PIIX3 protocol rules",
        description="Reads a log recorded with -trace 'ide_*' -trace 'bmdma_*' -msg timestamp=on -D FILE; "
        "exit 0 clean, 1 violations, 2 unreadable input.",
    )
    check_trace.add_arguments(ct)
    ct.set_defaults(func=check_trace.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The `piix3` command. Exit status: 0 ok, 1 a failed step or harness error, 2 bad usage
    (one line on stderr, nothing started), 130 interrupted."""
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # said here, not by the top-level parser, so the line names the command
            raise BadArgument(
                f"unrecognized arguments: {' '.join(extra)} (see piix3 {args.command} --help)",
                f"piix3 {args.command}",
            )
    except BadArgument as exc:
        print(f"{exc.prog or 'piix3'}: {exc}", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C does, so every machine is closed and its files removed.
    signal.signal(signal.SIGTERM, raise_terminated)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except BadArgument as exc:
        print(f"piix3 {args.command}: {exc}", file=sys.stderr)
        return 2
    except HarnessError as exc:
        print(f"piix3 {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"piix3 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
