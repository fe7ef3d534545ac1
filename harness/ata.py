"""The driver's Python face: m.ata.identify/read/write/flush/... as typed calls into the guest."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import locking
from harness.abi import (
    BENCH_ARG_WRITE,
    BENCH_MAX_ITERATIONS,
    SECTOR,
    BenchRecord,
    ErrorRecord,
    IrqLineStats,
    Op,
    Request,
)
from harness.checks import int_problem, is_int
from harness.errors import AtaError, GdbError
from harness.identify import IDENTIFY_BYTES, DriveInfo, parse_identify
from harness.regs import BM_ACTIVE, BM_ERR, BM_INTR, IRQ_LINES, AtaCode, AtaMode, AtaPhase, Completion

if TYPE_CHECKING:
    from harness.target import Target
    from harness.transport import Mailboxes

DEFAULT_MODE = "dma"  # what Linux uses on a PIIX3, and ~10x faster than PIO under QEMU
MODES = {"pio": AtaMode.PIO, "dma": AtaMode.DMA}
COMPLETIONS = {"poll": Completion.POLL, "irq": Completion.IRQ}
DEFAULT_COMPLETION = "poll"
BENCH_OPS = ("read", "write")
MAX_DRIVE = 3
MAX_CHANNEL = 1
MAX_COUNT = 65536  # sectors: LBA48's count 0
MAX_LBA = (1 << 48) - 1  # the last address LBA48 can name


def as_bytes(data: object) -> memoryview | None:
    """Any buffer-protocol object as a flat view of its bytes (its length counts bytes, not
    items), or None if data is no buffer. str is text, not data: None."""
    if isinstance(data, str):
        return None
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        return None
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B")


@dataclass(frozen=True)
class BenchResult:
    """One in-guest benchmark run (guest/bench.c): `iterations` driver calls of `count`
    sectors each, timed with the guest's TSC around each call, nothing of the harness inside."""

    drive: int
    op: str  # "read" | "write"
    mode: str  # "pio" | "dma"
    count: int  # sectors per command
    iterations: int
    cycles: int  # TSC ticks inside the driver calls, summed
    bytes: int
    tsc_per_ms: int  # the guest's calibration against the PIT at boot
    min_cycles: int
    max_cycles: int

    @property
    def seconds(self) -> float:
        return self.cycles / (self.tsc_per_ms * 1000) if self.tsc_per_ms else 0.0

    @property
    def mb_per_s(self) -> float:
        """Decimal megabytes per second (the unit of the Linux figures)."""
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def us_per_command(self) -> float:
        return self.seconds * 1e6 / self.iterations if self.iterations else 0.0


def completion_problem(mode: object) -> str:
    """Why mode is no completion mode ("" if it is one)."""
    if isinstance(mode, str) and mode in COMPLETIONS:
        return ""
    return f"completion {mode!r:.40} is not one of {', '.join(COMPLETIONS)}"


@dataclass(frozen=True)
class IrqCounts:
    """One interrupt line's counts since the guest booted (struct irq_line_stats)."""

    taken: int  # delivered and handled as real: Status read, EOI sent
    spurious: int  # IRQ 7/15 with the controller's in-service bit clear: counted, no EOI of its own
    lost: int  # irq completion waited for one and its deadline passed (TIMEOUT, phase IRQ)
    unclaimed: int  # taken with no command waiting on the channel, or with the drive still busy


class Ata:
    """Calls the guest's PIIX3 driver (guest/ata.h) through GDB; data moves through the
    transfer buffer. Drives are 0..3: primary master/slave, secondary master/slave."""

    def __init__(
        self,
        transport: Mailboxes,
        target: Target,
        exclusive: Callable[[], AbstractContextManager[None]],
        completion: str = DEFAULT_COMPLETION,
    ) -> None:
        self._io = transport
        self._t = target
        self._exclusive = exclusive
        self._bench_result: int | None = None  # &bench_result, resolved on first use
        self._addrs: dict[str, int] = {}  # guest symbols resolved on first use
        self._completion = completion
        self._completion_chosen = completion != DEFAULT_COMPLETION  # else the guest's default stands

    def exclusive(self) -> AbstractContextManager[None]:
        """The machine's: one thread's calls at a time."""
        return self._exclusive()

    def _evaluate(self, expr: str) -> int:
        return self._t.evaluate(expr, self._io.call_timeout)

    # --- helpers -----------------------------------------------------------------------
    def _fail(self, code: int, drive: int, operation: str, detail: str = "") -> AtaError:
        rec = ErrorRecord.unpack(self._t.read_memory(self._t.symbol("last_error"), ErrorRecord.STRUCT.size))
        if not detail and code == AtaCode.RANGE:
            detail = f"the disk has {self.sectors(drive)} sectors"
        if not detail and code == AtaCode.TIMEOUT and rec.phase == AtaPhase.IRQ:
            detail = "no interrupt came (irq completion): its line masked, lost, or the drive still busy"
        if not detail and code == AtaCode.DMA and not rec.bm_status & (BM_ACTIVE | BM_INTR | BM_ERR):
            detail = (
                "the bus master went inactive without an interrupt: "
                "the PRD table was shorter than the transfer"
            )
        return AtaError(
            code,
            drive=drive,
            operation=operation,
            status=rec.status,
            error=rec.error,
            lba=rec.lba,
            command=rec.command,
            bm_status=rec.bm_status,
            phase=rec.phase,
            detail=detail,
            artifacts=self._t.artifact_files(),
        )

    def _run(self, operation: str, request: Request) -> None:
        self._apply_completion()
        self._check(operation, request, self._io.request(request))

    def _check(self, operation: str, request: Request, rc: int) -> None:
        if rc != AtaCode.OK:
            if rc not in AtaCode._value2member_map_:
                raise self._invalid(
                    request.drive, operation, f"the driver returned {rc}, not an ATA_ERR_* code"
                )
            raise self._fail(rc, request.drive, operation)

    def _invalid(self, drive: int, operation: str, detail: str) -> AtaError:
        return AtaError(
            AtaCode.INVAL, drive=drive, operation=operation, detail=detail, artifacts=self._t.artifact_files()
        )

    def _mode(self, mode: str, drive: int, operation: str) -> AtaMode:
        if not isinstance(mode, str) or mode not in MODES:
            raise self._invalid(drive, operation, f"mode {mode!r:.40} is not one of {', '.join(MODES)}")
        return MODES[mode]

    def _drive(self, drive: object, operation: str) -> int:
        """drive, checked to be an int 0..3 before it is packed into the guest's 32 bits."""
        problem = int_problem("drive", drive, 0, MAX_DRIVE)
        if problem:
            raise self._invalid(0, operation, problem)
        assert isinstance(drive, int)
        return drive

    def _lba_count(self, drive: int, lba: object, count: object, operation: str) -> tuple[int, int]:
        """lba and count, checked before packing: an LBA out of 0..2**48-1 is RANGE (no disk
        reaches it), anything not an int or a count out of 1..65536 is INVAL."""
        if not is_int(lba):
            raise self._invalid(drive, operation, int_problem("lba", lba, 0, MAX_LBA) or "")
        assert isinstance(lba, int)
        if not 0 <= lba <= MAX_LBA:
            raise AtaError(
                AtaCode.RANGE,
                drive=drive,
                operation=operation,
                lba=lba if 0 <= lba < 1 << 64 else 0,
                detail=f"lba {lba} is out of range 0..{MAX_LBA} (the last LBA48 address)",
                artifacts=self._t.artifact_files(),
            )
        problem = int_problem("count", count, 1, MAX_COUNT)
        if problem:
            raise self._invalid(drive, operation, problem)
        assert isinstance(count, int)
        return lba, count

    def _buffer(self, nbytes: int, drive: int, operation: str) -> int:
        size = self._t.symbol("xfer_size")
        if nbytes > size:
            raise self._invalid(
                drive,
                operation,
                f"{nbytes} bytes exceed the {size}-byte transfer buffer ({size // SECTOR} sectors per call)",
            )
        return self._t.symbol("xfer_buf")

    # --- the driver's calls --------------------------------------------------------------
    @locking.exclusive
    def identify(self, drive: int) -> DriveInfo:
        """IDENTIFY DEVICE, freshly issued to the drive, parsed."""
        drive = self._drive(drive, "identify")
        buf = self._buffer(IDENTIFY_BYTES, drive, "identify")
        self._run("identify", Request(Op.IDENTIFY, drive=drive, buf=buf))
        return parse_identify(drive, self._t.read_memory(buf, IDENTIFY_BYTES))

    def _read_request(self, drive: int, lba: int, count: int, mode: str) -> tuple[str, Request]:
        op = f"read {count!r:.24} sector(s) at LBA {lba!r:.24} ({mode!r:.12})"
        drive = self._drive(drive, op)
        lba, count = self._lba_count(drive, lba, count, op)
        m = self._mode(mode, drive, op)
        buf = self._buffer(count * SECTOR, drive, op)
        return op, Request(Op.READ, drive=drive, lba=lba, count=count, buf=buf, mode=m)

    def _write_request(self, drive: int, lba: int, data: Any, mode: str) -> tuple[str, Request, memoryview]:
        """The checked request and the bytes to place in the transfer buffer; nothing is
        written to the guest until the machine has accepted the request."""
        view = as_bytes(data)
        nbytes = view.nbytes if view is not None else 0
        count = nbytes // SECTOR
        op = f"write {count} sector(s) at LBA {lba!r:.24} ({mode!r:.12})"
        drive = self._drive(drive, op)
        if view is None:
            raise self._invalid(drive, op, f"data must be a bytes-like object, not {type(data).__name__}")
        if not nbytes or nbytes % SECTOR:
            raise self._invalid(drive, op, f"data is {nbytes} bytes, not a positive multiple of {SECTOR}")
        lba, count = self._lba_count(drive, lba, count, op)
        m = self._mode(mode, drive, op)
        buf = self._buffer(nbytes, drive, op)
        return op, Request(Op.WRITE, drive=drive, lba=lba, count=count, buf=buf, mode=m), view

    @locking.exclusive
    def read(self, drive: int, lba: int, count: int, mode: str = DEFAULT_MODE) -> bytes:
        """Read count sectors from lba; bad arguments are refused before anything is sent."""
        op, req = self._read_request(drive, lba, count, mode)
        self._run(op, req)
        return self._t.read_memory(req.buf, req.count * SECTOR)

    @locking.exclusive
    def read_into(self, drive: int, lba: int, buffer: Any, mode: str = DEFAULT_MODE) -> int:
        """Read len(buffer) bytes (a non-empty multiple of 512) from lba straight into a
        writable buffer-protocol object (bytearray, memoryview, mmap, array...), like
        io.RawIOBase.readinto: one copy from guest RAM, nothing allocated. Returns the bytes read."""
        view = as_bytes(buffer)  # a read-only copy if buffer is not contiguous
        nbytes = view.nbytes if view is not None else 0
        op = f"read {nbytes // SECTOR} sector(s) into a buffer at LBA {lba!r:.24} ({mode!r:.12})"
        if view is None or view.readonly:
            problem = f"buffer must be a writable, contiguous buffer, not {type(buffer).__name__}"
            raise self._invalid(self._drive(drive, op), op, problem)
        if not nbytes or nbytes % SECTOR:
            problem = f"buffer is {nbytes} bytes, not a positive multiple of {SECTOR}"
            raise self._invalid(self._drive(drive, op), op, problem)
        op, req = self._read_request(drive, lba, nbytes // SECTOR, mode)
        self._run(op, req)
        self._t.read_into(req.buf, view)
        return nbytes

    @locking.exclusive
    def write(self, drive: int, lba: int, data: Any, mode: str = DEFAULT_MODE) -> None:
        """Write data (any bytes-like object: a non-empty multiple of 512 bytes) at lba."""
        op, req, view = self._write_request(drive, lba, data, mode)
        self._apply_completion()
        self._check(op, req, self._io.request(req, payload=view))

    @locking.exclusive
    def begin_read(self, drive: int, lba: int, count: int, mode: str = DEFAULT_MODE) -> Pending:
        """Post a read without running it: `m.cont()` stops at port breakpoints inside it,
        `.finish()` runs it to harness_ready and returns the data."""
        op, req = self._read_request(drive, lba, count, mode)
        self._apply_completion()
        self._io.post(req)
        return Pending(self, op, req, req.count * SECTOR)

    @locking.exclusive
    def begin_write(self, drive: int, lba: int, data: Any, mode: str = DEFAULT_MODE) -> Pending:
        """Post a write without running it (see begin_read); `.finish()` returns None."""
        op, req, view = self._write_request(drive, lba, data, mode)
        self._apply_completion()
        self._io.post(req, payload=view)
        return Pending(self, op, req, 0)

    @locking.exclusive
    def flush(self, drive: int) -> None:
        """FLUSH CACHE (EXT where the drive supports it)."""
        self._run("flush", Request(Op.FLUSH, drive=self._drive(drive, "flush")))

    @locking.exclusive
    def set_write_cache(self, drive: int, enabled: bool) -> None:
        """SET FEATURES 0x02 (enable) / 0x82 (disable) the drive's volatile write cache."""
        drive = self._drive(drive, "set write cache")
        if not isinstance(enabled, bool):
            problem = f"enabled must be True or False, not {enabled!r:.40}"
            raise self._invalid(drive, "set write cache", problem)
        self._run("set write cache", Request(Op.SET_WCACHE, drive=drive, arg=int(enabled)))

    @locking.exclusive
    def reset_channel(self, channel: int) -> None:
        """Soft reset (SRST) of channel 0 or 1, then drive detection again."""
        op = f"reset channel {channel!r:.24}"
        problem = int_problem("channel", channel, 0, MAX_CHANNEL)
        if problem:
            raise self._invalid(0, op, problem)
        self._run(op, Request(Op.RESET_CHANNEL, drive=channel * 2, arg=channel))

    @locking.exclusive
    def bench(
        self,
        drive: int,
        op: str = "read",
        mode: str = DEFAULT_MODE,
        count: int = 2048,
        iterations: int = 16,
        lba: int = 0,
    ) -> BenchResult:
        """Time `iterations` transfers of `count` sectors inside the guest (TSC around each
        driver call), at sequential LBAs from `lba`, wrapping to 0 at the end of the disk.
        A write benchmark writes whatever the transfer buffer holds over those sectors."""
        name = (
            f"bench {op!r:.12} {iterations!r:.12} x {count!r:.12} sector(s) at LBA {lba!r:.24} ({mode!r:.12})"
        )
        drive = self._drive(drive, name)
        if not isinstance(op, str) or op not in BENCH_OPS:
            raise self._invalid(drive, name, f"op {op!r:.40} is not one of {', '.join(BENCH_OPS)}")
        problem = int_problem("iterations", iterations, 1, BENCH_MAX_ITERATIONS)
        if problem:
            raise self._invalid(drive, name, problem)
        lba, count = self._lba_count(drive, lba, count, name)
        m = self._mode(mode, drive, name)
        buf = self._buffer(count * SECTOR, drive, name)
        arg = iterations | (BENCH_ARG_WRITE if op == "write" else 0)
        request = Request(Op.BENCH, drive=drive, lba=lba, count=count, buf=buf, mode=m, arg=arg)
        self._run(name, request)
        rec = BenchRecord.unpack(self._t.read_memory(self._bench_addr(), BenchRecord.STRUCT.size))
        return BenchResult(
            drive,
            op,
            mode,
            count,
            rec.iterations,
            rec.cycles,
            rec.bytes,
            rec.tsc_per_ms,
            rec.min_cycles,
            rec.max_cycles,
        )

    def _bench_addr(self) -> int:
        if self._bench_result is None:  # sizeof(bench_result) is checked at boot (abi.LAYOUTS)
            self._bench_result = self._evaluate("(unsigned)&bench_result")
        return self._bench_result

    def _finish(self, pending: Pending) -> bytes | None:
        if not self._t.parked:
            stop = self._io.cont()
            if not stop.parked:
                raise GdbError(
                    f"{pending.operation}: the guest stopped at {stop} before finishing; "
                    "remove the breakpoint or call m.cont() until it parks",
                    artifacts=self._t.artifact_files(),
                )
        self._check(pending.operation, pending.request, self._io.result(pending.request))
        return self._t.read_memory(pending.request.buf, pending._nbytes) if pending._nbytes else None

    # --- completion: polling or interrupts --------------------------------------------------
    def _addr(self, symbol: str) -> int:
        if symbol not in self._addrs:  # the kernel, and so its addresses, is the machine's for good
            self._addrs[symbol] = self._evaluate(f"(unsigned)&{symbol}")
        return self._addrs[symbol]

    def _apply_completion(self) -> None:
        """Put the chosen completion mode in the guest before a request: the driver applies it
        to the channel at the command. Boots and snapshot restores bring back the guest's
        default (poll), so it is written before every request once a mode was chosen."""
        if self._completion_chosen:
            self._t.write_memory(
                self._addr("ata_completion"), COMPLETIONS[self._completion].to_bytes(4, "little")
            )

    @locking.exclusive
    def set_completion(self, mode: str) -> None:
        """How the driver learns that the drive is done: "poll" (nIEN set; it polls BSY, DRQ
        and the bus master's ACTIVE; the default) or "irq" (nIEN clear; it sleeps in hlt
        until IRQ 14/15 comes, at most timeout_ms). Kept across reboots of the machine."""
        problem = completion_problem(mode)
        if problem:
            raise self._invalid(0, "set completion", problem)
        self._completion = mode
        self._completion_chosen = True
        self._apply_completion()

    @property
    def completion(self) -> str:
        """The completion mode in force: "poll" or "irq"."""
        return self._completion

    @locking.exclusive
    def irq_counts(self) -> dict[int, IrqCounts]:
        """Per interrupt line 0..15 (14: primary channel, 15: secondary), the counts since the
        guest booted: taken, spurious, lost (irq-mode timeouts) and unclaimed."""
        size = IrqLineStats.STRUCT.size
        raw = self._t.read_memory(self._addr("irq_stats"), size * IRQ_LINES)
        return {
            line: IrqCounts(*dataclasses.astuple(IrqLineStats.unpack(raw[line * size : (line + 1) * size])))
            for line in range(IRQ_LINES)
        }

    @property
    def timeout_ms(self) -> int:
        """The driver's bound on every wait for the drive (ata_timeout_ms), in ms."""
        return self._evaluate("ata_timeout_ms")

    @timeout_ms.setter
    def timeout_ms(self, value: int) -> None:
        problem = int_problem("timeout_ms", value, 1, 600_000)
        if problem:
            raise self._invalid(0, "set timeout_ms", problem)
        self._evaluate(f"ata_timeout_ms = {value}")

    def present(self, drive: int) -> bool:
        """The driver found an ATA disk at drive (0..3) at its last detection."""
        drive = self._drive(drive, "present")
        return self._evaluate(f"ata_drives[{drive}].present") != 0

    def sectors(self, drive: int) -> int:
        drive = self._drive(drive, "sectors")
        return self._evaluate(f"ata_drives[{drive}].sectors")

    @locking.exclusive
    def drives(self) -> dict[int, DriveInfo]:
        """Every drive the driver found, by drive number, with fresh IDENTIFY data."""
        return {d: self.identify(d) for d in range(4) if self.present(d)}


class Pending:
    """A driver call posted to the guest's mailbox and not yet finished (m.ata.begin_*)."""

    def __init__(self, ata: Ata, operation: str, request: Request, nbytes: int) -> None:
        self._ata = ata
        self.operation = operation
        self.request = request
        self._nbytes = nbytes

    def finish(self) -> bytes | None:
        """Run on to harness_ready (unless m.cont() got there already); the read's data, or
        None for a write; AtaError if the driver failed."""
        with self._ata.exclusive():
            return self._ata._finish(self)
