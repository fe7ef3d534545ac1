"""The benchmark's measurements: medians of start, reset, MI round trips and driver calls,
each beside the floor measured in the same run (the same thing done raw, without the harness);
then driver throughput, timed inside the guest and end to end from Python.

Adding rows: write a function `(ctx: BenchContext) -> list[Row]` and list it, with the number of
progress steps it reports, in TIMING_SECTIONS. It may use `ctx.machine()` (one machine shared by
all sections, booted on first use) or start machines of its own on `ctx.disk`."""

from __future__ import annotations

import itertools
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import procs
from harness.abi import PARKING_OFFSET, SECTOR
from harness.ata import BenchResult
from harness.bench.armed import PAGE, armed_check
from harness.bench.report import (
    COMPLETIONS,
    DISK_MIB,
    KIB,
    MIB,
    MODES,
    OPS,
    SIZES,
    SUITE_STEPS,
    Progress,
    Report,
    Row,
    Throughput,
    size_text,
)
from harness.disk import DiskImage
from harness.errors import HarnessError
from harness.machine import SNAPSHOT_MEMORY_MIB, Machine
from harness.paths import REPO_ROOT, find_kernel
from harness.qemu import QemuConfig, QemuPaths, build_command

RAW_TIMEOUT = 5.0  # s, for one raw MI reply or raw start step
IDLE_SECONDS = 10.0  # s, an idle parked machine is watched this long (a fifth with --quick)
SUITE_TIMEOUT = 1800.0  # s, for one whole-suite run (--suite)
GDB = "gdb"
# Functions never run by a read or write: a breakpoint on one of them in the page the transfer
# code runs in shows what a forgotten breakpoint costs (QEMU single-steps that whole page).
IDLE_FUNCTIONS = ("nondata", "identify_into", "ata_flush", "ata_set_write_cache", "ata_reset_channel")
TRANSFER_FUNCTIONS = ("pio_xfer", "dma_xfer", "ata_read")


@dataclass
class BenchContext:
    """What the sections share: settings, a preconditioned disk, one lazily booted machine."""

    repeat: int
    firmware: str
    quick: bool
    disk: DiskImage
    progress: Progress
    report: Report
    suite: bool = False
    _machine: Machine | None = None

    def machine(self, transport: str = "doorbell") -> Machine:
        """The shared machine on this transport (the other one's is closed first: one QEMU at a
        time holds the image)."""
        if self._machine is not None and self._machine.transport != transport:
            self.close()
        if self._machine is None:
            self._machine = Machine(disks=[self.disk], firmware=self.firmware, transport=transport)
            self._machine.start()
        return self._machine

    def close(self) -> None:
        if self._machine is not None:
            self._machine.close()
            self._machine = None


# --- measuring -----------------------------------------------------------------------------
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


# --- timing sections ---------------------------------------------------------------------------
def _raw_start(ctx: BenchContext) -> None:
    """The floor for a fresh start: the same QEMU command line and a plain `gdb -batch` that
    connects, runs to harness_ready and kills QEMU; no harness in between."""
    with tempfile.TemporaryDirectory(
        prefix="piix3-raw-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    ) as d:
        paths = QemuPaths.under(Path(d), Path(d)).without_console()  # COM1 to the log: no FIFOs to make
        cfg = QemuConfig(kernel=find_kernel(), disks={0: ctx.disk}, firmware=ctx.firmware)
        argv = [a for a in build_command(cfg, paths) if a != "-S"]
        # the raw floor needs no QMP: drop the monitor (its socket would have no listener)
        i = argv.index("-mon")
        del argv[i - 2 : i + 2]
        argv.insert(argv.index("-kernel"), "-S")
        with open(paths.qemu_log, "wb") as log:
            qemu = procs.spawn(argv, name="qemu", stdout=log, stderr=log)
            try:
                deadline = time.monotonic() + RAW_TIMEOUT
                while not paths.gdb_socket.exists():  # the floor may poll; the harness waits on QMP
                    if time.monotonic() > deadline or qemu.poll() is not None:
                        raise HarnessError(f"raw QEMU did not create its gdb socket; see {paths.qemu_log}")
                    time.sleep(0.0005)
                gdb = [
                    GDB,
                    "-nx",
                    "-q",
                    "-batch",
                    "-ex",
                    f"target remote {paths.gdb_socket}",
                    "-ex",
                    "break harness_ready",
                    "-ex",
                    "continue",
                    "-ex",
                    "kill",
                    str(cfg.kernel),
                ]
                # `kill` ends QEMU, and GDB may then exit 1 on the broken pipe: the stop is what counts
                done = subprocess.run(gdb, capture_output=True, timeout=RAW_TIMEOUT * 4, check=False)
                if b"Breakpoint 1, harness_ready" not in done.stdout:
                    raise HarnessError(f"raw gdb did not reach harness_ready: {done.stderr[-300:]!r}")
            finally:
                procs.kill(qemu)
                procs.reap(qemu, RAW_TIMEOUT)


def _startup_rows(ctx: BenchContext) -> list[Row]:
    def fresh() -> None:
        with Machine(disks=[ctx.disk], firmware=ctx.firmware):
            pass

    ours = _samples(fresh, ctx.repeat)
    ctx.progress.step("fresh start")
    raw = _samples(lambda: _raw_start(ctx), ctx.repeat)
    ctx.progress.step("raw start")
    return [
        Row(
            "fresh Machine start to park point (+close)",
            ours,
            "ms",
            "raw QEMU + gdb -batch to harness_ready + kill",
            raw,
            "<= 150 ms, <= 1.3x raw",
        )
    ]


def _snapshot_rows(ctx: BenchContext) -> list[Row]:
    """loadvm of the park-point snapshot, as the `machine` fixture does per test."""
    with tempfile.TemporaryDirectory(prefix="piix3-snap-") as d:
        disk = DiskImage.create(Path(d) / "snap.qcow2", size_mib=64, format="qcow2")
        with Machine(disks=[disk], firmware=ctx.firmware, memory_mib=SNAPSHOT_MEMORY_MIB) as m:
            m.save_snapshot()
            value = _samples(m.restore_snapshot, ctx.repeat)
    ctx.progress.step("snapshot restore")
    return [
        Row(
            f"snapshot restore (loadvm, {SNAPSHOT_MEMORY_MIB} MiB guest)",
            value,
            "ms",
            "",
            None,
            "<= 15 ms",
        )
    ]


def suite_command(workers: str, protocol: str) -> list[str]:
    """The whole suite as make test runs it (both firmwares, paired transports), on `workers`
    xdist workers ("0": serial), with the protocol checker on or off; run it in REPO_ROOT."""
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers]
    like_make_test = ["--piix3-firmware=both", "--piix3-transport=paired"]
    return [*pytest, *like_make_test, f"--piix3-protocol={protocol}", str(REPO_ROOT / "tests")]


def _suite_rows(ctx: BenchContext) -> list[Row]:
    """The whole test suite, serial and on every core (only with --suite: it takes minutes)."""
    if not ctx.suite:
        return []
    times = {}
    for workers, protocol in (("0", "on"), ("auto", "on"), ("auto", "off")):
        t0 = time.perf_counter()
        done = subprocess.run(
            suite_command(workers, protocol),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT,
            check=False,
        )
        times[workers + protocol] = time.perf_counter() - t0
        if done.returncode:
            raise HarnessError(
                f"the suite failed with -n {workers} (exit status {done.returncode}): "
                f"{done.stdout[-500:]}{done.stderr[-500:]}"
            )
        ctx.progress.step(f"suite -n {workers}, protocol checker {protocol}")
    return [
        Row(
            f"suite speed-up: serial {times['0on']:.1f} s / -n auto "
            f"({os.cpu_count()} cores) {times['autoon']:.1f} s",
            times["0on"] / times["autoon"],
            "x",
            target=">= 1.6x",
        ),
        Row(
            "suite, -n auto, protocol checker on",
            times["autoon"],
            "s",
            "the same, checker off",
            times["autooff"],
            "<= 1.25x",
        ),
    ]


def _harness_rows(ctx: BenchContext) -> list[Row]:
    m = ctx.machine("gdb")  # raw MI commands need a guest GDB has stopped
    rows = [Row("reset() back to park point", _samples(m.reset, ctx.repeat), "ms", target="<= 70 ms")]
    ctx.progress.step("reset")
    raw = _samples(lambda: _raw_mi(m, b"-data-evaluate-expression 1"), ctx.repeat * 10)
    gdb = m.gdb
    assert gdb is not None
    ours = _samples(lambda: gdb.command("-data-evaluate-expression 1"), ctx.repeat * 10)
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
    ctx.progress.step("MI round trip")
    xfer = m.symbol("xfer_buf")
    raw_call = _samples(
        lambda: _raw_mi(
            m, f'-data-evaluate-expression "ata_read(0, (unsigned long long)5, 1, {xfer}, 1)"'.encode()
        ),
        ctx.repeat * 5,
    )
    gdb_way = _samples(lambda: m.ata.read(0, 5, 1), ctx.repeat * 5)
    m = ctx.machine("doorbell")
    m.ata.read(0, 5, 1)  # into the doorbell loop
    ours = _samples(lambda: m.ata.read(0, 5, 1), ctx.repeat * 50)
    rows += [
        Row(
            "m.ata.read(0, lba, 1), doorbell",
            ours,
            "ms",
            "the same call, gdb transport",
            gdb_way,
            "<= 0.1 ms",
        ),
        Row(
            "m.ata.read(0, lba, 1), gdb transport",
            gdb_way,
            "ms",
            "raw inferior call",
            raw_call,
            "<= 3 ms, <= 1.5x raw",
        ),
    ]
    ctx.progress.step("driver call")
    return rows


def _idle_rows(ctx: BenchContext) -> list[Row]:
    """A machine parked after its last call costs no host CPU: QEMU's, GDB's and this process's
    CPU time over IDLE_SECONDS, as a share of one core."""
    m = ctx.machine()
    m.ata.read(0, 0, 1)
    deadline = time.monotonic() + RAW_TIMEOUT
    parking = m.symbol("doorbell") + PARKING_OFFSET
    while m.read_memory(parking, 4) == bytes(4) and time.monotonic() < deadline:
        time.sleep(0.001)  # the guest's idle window, then it parks by itself
    seconds = IDLE_SECONDS / (5 if ctx.quick else 1)
    before = _cpu_seconds(m.pids)
    t0 = time.perf_counter()
    time.sleep(seconds)
    share = (_cpu_seconds(m.pids) - before) / (time.perf_counter() - t0) * 100
    ctx.progress.step("idle machine")
    return [
        Row(f"idle parked machine over {seconds:g} s: CPU, QEMU+GDB+Python", share, "% core", target="<= 2%")
    ]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and this one, in seconds (/proc/PID/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in [*pids, os.getpid()]:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


# (function, progress steps it reports). Append new sections here.
def _power_loss_rows(ctx: BenchContext) -> list[Row]:
    """What a volatile write cache costs: a write call, a flush and the call after it (the
    harness reads the IDE device's flush count), and a power loss, each beside the same on a
    writethrough drive (a crash() for the power loss: both are a reboot)."""
    medians: dict[str, dict[str, float]] = {}
    data = bytes(SECTOR)
    with tempfile.TemporaryDirectory(prefix="piix3-powerloss-", dir=ctx.disk.path.parent) as d:
        for mode in ("writethrough", "volatile"):
            disk = DiskImage.create(Path(d) / f"{mode}.img", size_mib=16)
            with Machine(disks=[disk], firmware=ctx.firmware, write_cache=mode) as m:

                def flush_then_read(m: Machine = m) -> None:
                    m.ata.flush(0)
                    m.ata.read(0, 0, 1)

                def unflushed_then_lost(m: Machine = m, mode: str = mode) -> None:
                    m.ata.write(0, 8, data)
                    if mode == "volatile":
                        m.power_loss("drop")
                    else:
                        m.crash()

                medians[mode] = {
                    "write": _samples(lambda m=m: m.ata.write(0, 0, data), ctx.repeat),  # type: ignore[misc]
                    "flush": _samples(flush_then_read, ctx.repeat),
                    "loss": _samples(unflushed_then_lost, max(3, ctx.repeat // 4)),
                }
            ctx.progress.step(f"power loss ({mode})")
    wt, vol = medians["writethrough"], medians["volatile"]
    return [
        Row("volatile cache: 1-sector write call", vol["write"], "ms", "the same, writethrough", wt["write"]),
        Row("volatile cache: flush + next call", vol["flush"], "ms", "the same, writethrough", wt["flush"]),
        Row("power_loss('drop') after one write", vol["loss"], "ms", "crash() after one write", wt["loss"]),
    ]


TIMING_SECTIONS: list[tuple[Callable[[BenchContext], list[Row]], int]] = [
    (_startup_rows, 2),
    (_harness_rows, 3),
    (_snapshot_rows, 1),
    (_idle_rows, 1),
    (_power_loss_rows, 2),
    (_suite_rows, SUITE_STEPS),
]


def _check_section(ctx: BenchContext) -> None:
    """The armed check, enforced: timed transfers run only with nothing in the driver's pages."""
    m = ctx.machine()
    check = armed_check(m)
    ctx.report.armed = check
    ctx.progress.step("armed check")
    if not check.ok:
        raise HarnessError(f"refusing to time transfers: {check.describe()}", artifacts=m.artifact_files())


def _breakpoint_cost(ctx: BenchContext) -> None:
    """What the check guards against: the same in-guest run with one never-hit breakpoint placed
    in the page the transfer code runs in."""
    m = ctx.machine()
    pages = {}
    for name in (*TRANSFER_FUNCTIONS, *IDLE_FUNCTIONS):
        try:
            pages[name] = m.evaluate_int(f"(unsigned)&{name}") & ~(PAGE - 1)
        except HarnessError:
            continue  # inlined or renamed; the demonstration picks another
    hot = {pages[f] for f in TRANSFER_FUNCTIONS if f in pages}
    idle = next((f for f in IDLE_FUNCTIONS if pages.get(f) in hot), None)
    if idle is None:
        ctx.report.notes.append("breakpoint cost: no idle function shares a page with the transfer code")
        return
    gdb = m.gdb
    assert gdb is not None
    for mode, size, iterations in (("dma", 4 * KIB, 200), ("pio", MIB, 2)):
        clean: list[float] = []
        slowed: list[float] = []
        caught = True
        for _ in range(5):  # alternated, so host noise hits both alike
            clean.append(m.ata.bench(0, "read", mode, size // SECTOR, iterations).us_per_command)
            number = gdb.command(f"-break-insert {idle}").payload["bkpt"]["number"]
            try:
                caught = caught and bool(armed_check(m).in_text)
                slowed.append(m.ata.bench(0, "read", mode, size // SECTOR, iterations).us_per_command)
            finally:
                gdb.command(f"-break-delete {number}")
        ok, slow = statistics.median(clean), statistics.median(slowed)
        ctx.report.notes.append(
            f"breakpoint cost: {mode.upper()} read {size_text(size)} in the guest {ok:.0f} us/command clean, "
            f"{slow:.0f} us with a never-hit breakpoint on {idle} (page {pages[idle]:#x}; the check "
            f"{'caught it' if caught else 'MISSED it'}): {slow / ok:.1f}x"
        )
    if not armed_check(m).ok:
        raise HarnessError("a breakpoint was left armed after the demonstration")
    ctx.progress.step("breakpoint cost")


# --- throughput ------------------------------------------------------------------------------------
def _plan(quick: bool) -> tuple[int, float]:
    """(samples per cell, seconds per in-guest sample)."""
    return (3, 0.03) if quick else (5, 0.1)


def _guest_cell(
    m: Machine, mode: str, op: str, size: int, samples: int, seconds: float, completion: str = "poll"
) -> Throughput:
    count = size // SECTOR
    probe = m.ata.bench(0, op, mode, count, iterations=1)  # warm up; sizes the samples
    iterations = max(1, min(4096, int(seconds / max(probe.seconds, 1e-6))))
    runs: list[BenchResult] = [m.ata.bench(0, op, mode, count, iterations) for _ in range(samples)]
    return Throughput(
        "guest",
        mode,
        op,
        size,
        statistics.median(r.mb_per_s for r in runs),
        statistics.median(r.us_per_command for r in runs),
        samples,
        iterations,
        completion,
    )


def _end_to_end_cell(
    m: Machine, where: str, mode: str, op: str, size: int, samples: int, completion: str = "poll"
) -> Throughput:
    """Python's view: a read into one reused buffer (read_into), a write from one bytes object,
    at sequential LBAs wrapping at the end of the disk, as the in-guest cells walk them."""
    data = os.urandom(size)
    into = bytearray(size)
    count, sectors = size // SECTOR, DISK_MIB * MIB // SECTOR
    lbas = itertools.cycle(range(0, sectors - count + 1, count))

    def once() -> None:
        if op == "read":
            m.ata.read_into(0, next(lbas), into, mode=mode)
        else:
            m.ata.write(0, next(lbas), data, mode=mode)

    once()  # warm up (the buffer's pages too)
    n = samples if size >= MIB else samples * 20
    ms = [_samples(once, 1) for _ in range(n)]
    med = statistics.median(ms)
    return Throughput(where, mode, op, size, size / (med / 1e3) / 1e6, med * 1e3, n, 1, completion)


# (where, transport, modes) of the end-to-end columns: the gdb transport's for DMA only (PIO's
# time is the guest's on either)
END_TO_END = (("end to end", "doorbell", MODES), ("end to end (gdb)", "gdb", ("dma",)))
IRQ_END_TO_END = "doorbell"  # the transport whose end-to-end cells are measured in irq mode too


def _throughput(ctx: BenchContext) -> None:
    samples, seconds = _plan(ctx.quick)
    for completion in COMPLETIONS:
        m = ctx.machine()
        m.ata.set_completion(completion)
        for mode in MODES:
            for op in OPS:
                for size in SIZES:
                    ctx.report.throughput.append(_guest_cell(m, mode, op, size, samples, seconds, completion))
                ctx.progress.step(f"guest {mode} {op} {completion}")
        m.ata.set_completion("poll")
    copy_ms = None
    for where, transport, modes in END_TO_END:
        m = ctx.machine(transport)
        for completion in COMPLETIONS if transport == IRQ_END_TO_END else ("poll",):
            m.ata.set_completion(completion)
            for mode in modes:
                for op in OPS:
                    for size in SIZES:
                        ctx.report.throughput.append(
                            _end_to_end_cell(m, where, mode, op, size, samples, completion)
                        )
                    ctx.progress.step(f"{where} {mode} {op} {completion}")
            m.ata.set_completion("poll")
        if transport == "doorbell":
            copy_ms = _copy_out_ms(m, max(SIZES), samples)
        ctx.report.rows += _overhead_rows(m, transport, samples)
    ctx.report.rows += _read_into_floor_rows(ctx.report.throughput, copy_ms)


def _copy_out_ms(m: Machine, size: int, samples: int) -> float:
    """The one copy read_into makes: size bytes out of the transfer buffer in guest RAM into a
    reused buffer (the host's memory bandwidth, which varies from run to run), median ms."""
    view = memoryview(bytearray(size))
    buf = m.target.symbol("xfer_buf")
    m.target.read_into(buf, view)  # warm up
    return _samples(lambda: m.target.read_into(buf, view), max(samples, 5))


def _read_into_floor_rows(cells: list[Throughput], copy_ms: float | None) -> list[Row]:
    """The largest read_into against what it cannot beat, measured in this run: the guest's own
    DMA of it plus one copy out of guest RAM."""
    size = max(SIZES)
    by_key = {
        (c.where, c.op): c
        for c in cells
        if c.completion == "poll" and c.mode == "dma" and c.bytes_per_command == size
    }
    guest, e2e = by_key.get(("guest", "read")), by_key.get(("end to end", "read"))
    if guest is None or e2e is None or copy_ms is None:
        return []
    return [
        Row(
            f"m.ata.read_into {size_text(size)}, DMA, doorbell",
            e2e.us_per_command / 1e3,
            "ms",
            f"the guest's DMA {guest.us_per_command / 1e3:.1f} ms + one copy out {copy_ms:.1f} ms",
            guest.us_per_command / 1e3 + copy_ms,
            "<= 1.3x",
        )
    ]


OVERHEAD_CALLS = (("read", 4 * KIB, 200), ("read", MIB, 40), ("write", MIB, 40))  # (op, size, calls)


def _overhead_rows(m: Machine, transport: str, samples: int) -> list[Row]:
    """Per-call overhead on a transport: each call's wall time in Python minus the guest's own
    TSC time of the driver call inside it (m.ata.bench with one iteration), median over many
    calls. Taking both from the same call leaves out what varies between calls (QEMU's I/O
    thread, the host's other work), which a difference of two medians taken apart does not."""
    rows = []
    for op, size, calls in OVERHEAD_CALLS:
        count = size // SECTOR
        lbas = itertools.cycle(range(0, DISK_MIB * MIB // SECTOR - count + 1, count))
        m.ata.bench(0, op, "dma", count, iterations=1)  # warm up
        overhead = []
        for _ in range(calls if samples >= 5 else calls // 4):
            t0 = time.perf_counter()
            done = m.ata.bench(0, op, "dma", count, iterations=1, lba=next(lbas))
            overhead.append((time.perf_counter() - t0 - done.seconds) * 1e6)
        rows.append(
            Row(
                f"per-call overhead, DMA {op} {size_text(size)}, {transport}",
                statistics.median(overhead),
                "us",
                target="<= 20 us" if transport == "doorbell" else "",
            )
        )
    return rows


THROUGHPUT_STEPS = (
    1
    + 1
    + len(COMPLETIONS) * len(MODES) * len(OPS)
    + sum(len(m) * len(OPS) * (len(COMPLETIONS) if t == IRQ_END_TO_END else 1) for _, t, m in END_TO_END)
)


# --- the run -------------------------------------------------------------------------------------------
def _precondition(disk: DiskImage) -> None:
    """Fill the image so every timed transfer hits allocated, cached blocks (a sparse image's
    first write of a block allocates it on the host: measured 5-15x slower than a rewrite)."""
    chunk = os.urandom(MIB)
    with open(disk.path, "r+b") as f:
        for _ in range(disk.size // MIB):
            f.write(chunk)


def total_steps(suite: bool) -> int:
    return sum(steps for _, steps in TIMING_SECTIONS) + THROUGHPUT_STEPS - (0 if suite else SUITE_STEPS)


def run(
    repeat: int,
    firmware: str,
    quick: bool = False,
    progress: Progress | None = None,
    image_dir: str | None = None,
    suite: bool = False,
) -> Report:
    """Every section in order, on a fresh preconditioned image in image_dir (default: the
    system's temporary directory, where the tests keep theirs)."""
    progress = progress or Progress(total_steps(suite))
    report = Report(firmware=firmware, repeat=repeat, quick=quick)
    with tempfile.TemporaryDirectory(prefix="piix3-bench-", dir=image_dir) as tmp:
        disk = DiskImage.create(Path(tmp) / "bench.img", size_mib=DISK_MIB)
        _precondition(disk)
        report.image = f"{DISK_MIB} MiB raw image in {tmp}, filled before timing"
        ctx = BenchContext(repeat, firmware, quick, disk, progress, report, suite)
        try:
            for section, _steps in TIMING_SECTIONS:
                report.rows += section(ctx)
            _check_section(ctx)
            _throughput(ctx)
            _breakpoint_cost(ctx)
        finally:
            ctx.close()
    return report
