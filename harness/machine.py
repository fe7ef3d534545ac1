"""The Machine: one QEMU and one GDB joined, parked at harness_ready, ready for calls."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from harness import artifacts, locking, procs, rundir
from harness.ata import Ata
from harness.checks import is_int, seconds, text
from harness.disk import DiskImage
from harness.errors import (
    ConfigError,
    GdbError,
    HarnessError,
    HarnessTimeout,
    QemuError,
    Terminated,
    UsageError,
)
from harness.faults import Fault
from harness.gdbmi import GdbMi, MiRecord, is_stopped
from harness.paths import find_kernel
from harness.qemu import TRACE_LOG_NAME, QemuConfig, QemuPaths, QemuProcess
from harness.stops import LINGER_OFFSET, REQUEST, Op, Request, Stop

if TYPE_CHECKING:
    from harness.devtrace import DeviceTrace
    from harness.ports import PortBreakpoint, PortsAgent, PortWatch

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 15.0  # s, from `continue` to the stop at harness_ready (firmware + driver init)
CALL_TIMEOUT = 60.0  # s, for one driver call (a 32 MiB PIO transfer included)
HOLD_EVENTS = {"read": "read_aio", "write": "write_aio", "flush": "flush_to_disk"}  # blkdebug events
HOLD_POLL = 0.001  # s, between looks at the mailbox while a held call runs
EVENT_DRAIN_EVERY = 128  # requests between reads of QMP events nobody waits for
EVENT_DRAIN_WAIT = 0.001  # s
EVENT_WAIT = 0.05  # s, to let QMP events already sent by QEMU be read
HANG_INTERRUPT_TIMEOUT = 5.0  # s, for a hung guest to stop after -exec-interrupt
PARK_SYMBOL = "harness_ready"
SNAPSHOT_NAME = "piix3-park"
MIN_MEMORY_MIB = 64  # the transfer buffer ends at 48 MiB; the rest is firmware and margin
MAX_MEMORY_MIB = 3072  # below the PCI hole of a 32-bit pc machine
SNAPSHOT_MEMORY_MIB = 64  # loadvm time grows with guest RAM; 64 MiB holds the 32 MiB transfer buffer
ERROR_RECORD_SIZE = 40  # sizeof(struct ata_error_record), checked against the kernel at boot
DATA_PATHS = ("shm", "gdb")


def _disk_map(disks: object) -> dict[int, DiskImage]:
    if disks is None:
        return {}
    if isinstance(disks, Mapping):
        found = dict(disks)
    elif isinstance(disks, Sequence) and not isinstance(disks, str | bytes):
        if len(disks) > 4:
            raise ConfigError(f"disks: {len(disks)} given; the PIIX3 has 4 drive positions (0..3)")
        found = dict(enumerate(disks))
    else:
        raise ConfigError(
            f"disks must be a list of DiskImage or a {{drive: DiskImage}} dict, not {disks!r:.60}"
        )
    for drive, disk in found.items():
        if not is_int(drive):
            raise ConfigError(f"disks: drive {drive!r:.20} must be an int 0..3")
        if not isinstance(disk, DiskImage):
            raise ConfigError(
                f"disks: drive {drive} is {disk!r:.60}, not a DiskImage (wrap paths in DiskImage())"
            )
    return found


def _fault_map(faults: object) -> dict[int, tuple[Fault, ...]]:
    if faults is None:
        return {}
    if not isinstance(faults, Mapping):
        raise ConfigError(f"faults must be a {{drive: [Fault, ...]}} dict, not {faults!r:.60}")
    out = {}
    for drive, rules in faults.items():
        if not is_int(drive):
            raise ConfigError(f"faults: drive {drive!r:.20} must be an int 0..3")
        if isinstance(rules, str | bytes) or not isinstance(rules, Sequence):
            raise ConfigError(f"faults: drive {drive} needs a list of Fault, not {rules!r:.60}")
        bad = [r for r in rules if not isinstance(r, Fault)]
        if bad:
            raise ConfigError(f"faults: drive {drive}: {bad[0]!r:.60} is not a Fault")
        out[drive] = tuple(rules)
    return out


class Machine:
    """QEMU (pc, PIIX3 IDE) running the guest kernel, with GDB stopped at harness_ready.

    `with Machine(disks=[disk]) as m:` boots; `m.ata` calls the driver; `m.reset()`,
    `m.power_cycle()` and `m.crash()` reboot in three ways. Logs go to `m.artifacts`.
    """

    def __init__(
        self,
        disks: Sequence[DiskImage] | Mapping[int, DiskImage] | None = None,
        *,
        firmware: str = "seabios",
        kernel: str | os.PathLike[str] | None = None,
        memory_mib: int = 128,
        artifacts_dir: str | os.PathLike[str] | None = None,
        keep_artifacts: bool | None = None,
        call_timeout: float = CALL_TIMEOUT,
        boot_timeout: float = BOOT_TIMEOUT,
        data_path: str = "shm",
        gdb: str = "gdb",
        extra_qemu_args: Sequence[str] = (),
        faults: Mapping[int, Sequence[Fault]] | None = None,
        io_error: str = "report",
    ) -> None:
        if not isinstance(data_path, str) or data_path not in DATA_PATHS:
            raise ConfigError(f"unknown data_path {data_path!r:.40}; use one of {', '.join(DATA_PATHS)}")
        if not is_int(memory_mib) or not MIN_MEMORY_MIB <= memory_mib <= MAX_MEMORY_MIB:
            raise ConfigError(
                f"memory_mib={memory_mib!r:.40}: give a whole number of MiB in "
                f"{MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} "
                f"(the guest's 32 MiB transfer buffer at 16 MiB needs at least {MIN_MEMORY_MIB})"
            )
        for name, value in (("firmware", firmware), ("io_error", io_error)):
            text(name, value, ConfigError)
        if isinstance(extra_qemu_args, str | bytes) or not isinstance(extra_qemu_args, Sequence):
            raise ConfigError(f"extra_qemu_args must be a list of strings, not {extra_qemu_args!r:.60}")
        if keep_artifacts is not None and not isinstance(keep_artifacts, bool):
            raise ConfigError(f"keep_artifacts must be True, False or None, not {keep_artifacts!r:.40}")
        self.config = QemuConfig(
            kernel=find_kernel(kernel),
            disks=_disk_map(disks),
            firmware=firmware,
            memory_mib=memory_mib,
            extra_args=tuple(extra_qemu_args),
            faults=_fault_map(faults),
            io_error=io_error,
        )
        self._call_timeout = seconds("call_timeout", call_timeout, ConfigError)
        self.boot_timeout = seconds("boot_timeout", boot_timeout, ConfigError)
        self.data_path = data_path
        self.keep_artifacts = keep_artifacts
        self._gdb_binary = text("gdb", gdb, ConfigError)
        try:
            self._artifacts_arg = Path(artifacts_dir).absolute() if artifacts_dir is not None else None
        except TypeError:
            raise ConfigError(f"artifacts_dir must be a path, not {artifacts_dir!r:.60}") from None
        if self._artifacts_arg is not None:
            text("artifacts_dir", str(self._artifacts_arg), ConfigError)
        self.rundir: Path | None = None
        self.artifacts: Path | None = None
        self.qemu: QemuProcess | None = None
        self.gdb: GdbMi | None = None
        self.ata = Ata(self)
        self.boots = 0
        self.failed = False
        self._ram: mmap.mmap | None = None
        self._symbols: dict[str, int] = {}
        self._seq = 0
        self._requests = 0
        self._held: set[tuple[int, str]] = set()  # (drive, tag) under hold_io
        self.parked = False  # at harness_ready with no posted request still to run
        self._park_bp = "1"  # GDB's number for the park breakpoint
        self._own_artifacts = False  # artifacts is a temp dir this machine made
        self._ports: PortsAgent | None = None  # port watching, loaded into GDB on first use
        self._device_traces = 0  # active device_trace() contexts
        self._lock = threading.RLock()  # one thread at a time (see exclusive())
        self._down = ""  # why the machine cannot take calls (closed, a reboot failed), if so
        self._ram_dir: Path | None = None  # where the RAM file went when rundir had no room

    @property
    def call_timeout(self) -> float:
        """Seconds one driver call may take before it counts as hung (positive, finite)."""
        return self._call_timeout

    @call_timeout.setter
    def call_timeout(self, value: float) -> None:
        self._call_timeout = seconds("call_timeout", value, UsageError)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the machine for a sequence of calls: another thread's calls wait until the
        block ends. Every public call holds it already; this is for a sequence that must not
        interleave with another thread's (it is reentrant)."""
        with self._lock:
            yield

    # --- context management ----------------------------------------------------------
    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Ctrl-C is the user's choice, not a failure worth keeping logs for
        self.close(
            failed=exc is not None and (not isinstance(exc, KeyboardInterrupt) or isinstance(exc, Terminated))
        )

    @locking.exclusive
    def start(self) -> None:
        """Boot to the park point; on any failure everything started is torn down."""
        if self.rundir is not None:
            raise UsageError("this machine is already started; close() it first, or use another Machine")
        for disk in self.config.disks.values():
            disk.validate()  # before any process starts
        if self._artifacts_arg is not None:
            artifacts.prepare_dir(self._artifacts_arg)
            self.artifacts = self._artifacts_arg
        else:  # on disk, not in /dev/shm: logs kept after a failure must not cost RAM
            self.artifacts = Path(tempfile.mkdtemp(prefix="piix3-logs-"))
            self._own_artifacts = True
        rundir.sweep_stale()  # what killed harness processes left behind
        self.rundir = rundir.make()
        self._down = ""
        try:
            self._boot()
        except BaseException as exc:
            self.close(failed=not isinstance(exc, KeyboardInterrupt) or isinstance(exc, Terminated))
            raise

    def close(self, failed: bool = False) -> None:
        """Stop GDB and QEMU (bounded) and remove the private directory (sockets, RAM); the logs
        are kept when asked or when something failed, else removed if the machine made them.
        Ctrl-C waits until this is done: a half-closed machine would leave processes behind."""
        with self._lock, procs.signals_deferred():
            self._close(failed)

    def _close(self, failed: bool) -> None:
        self.failed = self.failed or failed
        self._down = "the machine is closed; start a new one"
        self._halt(clean=True)
        if self.rundir is None:
            return
        shutil.rmtree(self.rundir, ignore_errors=True)
        self.rundir = None
        keep = self.keep_artifacts if self.keep_artifacts is not None else self.failed
        if keep:  # a warning when kept because something failed; asked-for logs are no news
            log.log(
                logging.WARNING if self.failed else logging.INFO,
                "machine artifacts kept in %s",
                self.artifacts,
            )
        elif self._own_artifacts and self.artifacts is not None:
            shutil.rmtree(self.artifacts, ignore_errors=True)  # a caller-chosen directory is the caller's

    # --- artifacts -------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        assert self.artifacts is not None, "machine not started"
        return self.artifacts / name

    def artifact_files(self) -> list[Path]:
        return [self._path(n) for n in ("serial.log", "qemu.log", "gdb-mi.log")]

    def serial_text(self) -> str:
        with contextlib.suppress(OSError):
            return self._path("serial.log").read_text(errors="replace")
        return ""

    # --- boot ------------------------------------------------------------------------
    def _qemu_paths(self) -> QemuPaths:
        assert self.rundir is not None and self.artifacts is not None
        return QemuPaths.under(self.rundir, self.artifacts)

    def _boot(self) -> None:
        """Start a fresh QEMU (paused), attach GDB (kept across reboots), run to harness_ready."""
        paths = self._qemu_paths()
        with contextlib.suppress(FileNotFoundError):
            paths.ram_file.unlink()  # a cold boot starts from fresh RAM
        assert self.rundir is not None
        ram = rundir.reserve_ram(self.rundir, self.config.memory_mib << 20)
        if ram.parent != self.rundir:
            self._ram_dir = ram.parent
        paths = dataclasses.replace(paths, ram_file=ram)
        t0 = time.perf_counter()
        new_gdb = self.gdb is None
        if self.gdb is None:
            self.gdb = GdbMi(
                self._gdb_binary,
                self.config.kernel,
                self._path("gdb-mi.log"),
                self._path("gdb.cmdline"),
                artifacts=self.artifact_files(),
            )
            self.gdb.spawn()  # loads symbols while QEMU starts
        self.qemu = QemuProcess(self.config, paths)
        self.qemu.start()
        gdb = self.gdb
        if new_gdb:
            gdb.wait_ready()
            for setting in (
                "mi-async on",
                "confirm off",
                "pagination off",
                "width 0",
                "unwindonsignal on",
                "breakpoint always-inserted on",
            ):
                gdb.command(f"-gdb-set {setting}")
            # QEMU reports a VM paused on an I/O error (rerror/werror=stop) as SIGIO; GDB's
            # default (nostop, pass) resumes it at once, forever.
            gdb.command("handle SIGIO stop print")
        gdb.discard_async()
        gdb.command(f"-target-select remote {paths.gdb_socket}", alive=self.qemu.check_alive)
        # The first stop after connecting is QEMU's reset vector: not ours to report.
        gdb.wait_async(is_stopped, self.boot_timeout, "stop after connecting", self.qemu.check_alive)
        if new_gdb:
            bp = gdb.command(f"-break-insert {PARK_SYMBOL}").payload.get("bkpt", {})
            self._park_bp = str(bp.get("number", "1"))
        self._continue_to_park()
        if self.data_path == "shm":
            fd = os.open(paths.ram_file, os.O_RDWR)
            try:
                self._ram = mmap.mmap(fd, self.config.memory_mib << 20, mmap.MAP_SHARED)
            finally:
                os.close(fd)
        # QEMU and our mapping hold the RAM file open: its name is not needed any more, and
        # without one nothing is left in /dev/shm however this process ends.
        with contextlib.suppress(FileNotFoundError):
            paths.ram_file.unlink()
        self._resolve_symbols()
        self.boots += 1
        log.debug("booted to %s in %.1f ms", PARK_SYMBOL, (time.perf_counter() - t0) * 1e3)

    def _continue_to_park(self) -> None:
        assert self.gdb is not None and self.qemu is not None
        self.parked = False
        if self._ports is not None:
            self._ports.arm_pending()  # a watch entered before a reset sees the boot's accesses
        self.gdb.discard_async()
        self.gdb.command("-exec-continue", alive=self.qemu.check_alive)
        rec = self.gdb.wait_async(
            is_stopped, self.boot_timeout, f"stop at {PARK_SYMBOL}", self.qemu.check_alive
        )
        self._check_parked(rec)
        self.parked = True

    def _check_parked(self, rec: MiRecord) -> None:
        payload = rec.payload if isinstance(rec.payload, dict) else {}
        frame = payload.get("frame") or {}
        if payload.get("reason") != "breakpoint-hit" or frame.get("func") != PARK_SYMBOL:
            where = f"{frame.get('func', '?')} at {frame.get('addr', '?')}"
            raise GdbError(
                f"guest stopped in {where} ({payload.get('reason', 'no reason')}) instead of "
                f"{PARK_SYMBOL}; serial log tail: {self.serial_text()[-300:]!r}",
                artifacts=self.artifact_files(),
            )

    def _resolve_symbols(self) -> None:
        if self._symbols:
            return
        for name, expr in (
            ("xfer_buf", "(unsigned)harness_xfer_buf"),
            ("xfer_size", "harness_xfer_size"),
            ("last_error", "(unsigned)&ata_last_error"),
            ("last_error_size", "sizeof(ata_last_error)"),
            ("init", "harness_init_status"),
            ("request", "(unsigned)&harness_request"),
            ("request_size", "sizeof(harness_request)"),
        ):
            self._symbols[name] = self.evaluate_int(expr)
        if self._symbols["request_size"] != REQUEST.size:
            raise GdbError(
                f"struct harness_request is {self._symbols['request_size']} bytes in the kernel, "
                f"the harness expects {REQUEST.size}: rebuild with `make guest`"
            )
        if self._symbols["last_error_size"] != ERROR_RECORD_SIZE:
            raise GdbError(
                f"struct ata_error_record is {self._symbols['last_error_size']} bytes in the kernel, "
                f"the harness expects {ERROR_RECORD_SIZE}: rebuild with `make guest`"
            )

    def symbol(self, name: str) -> int:
        return self._symbols[name]

    # --- calls and memory ------------------------------------------------------------
    def _live(self) -> tuple[GdbMi, QemuProcess]:
        if self._down or self.gdb is None or self.qemu is None:
            raise HarnessError(
                self._down or "the machine is not running (use it inside `with Machine(...)`, or start())",
                artifacts=self.artifact_files() if self.artifacts is not None else (),
            )
        return self.gdb, self.qemu

    # --- the mailbox: post a request, continue, stop at harness_ready ---------------------
    @locking.exclusive
    def post(self, request: Request, payload: memoryview | bytes | None = None) -> None:
        """Fill the guest's request mailbox (and the transfer buffer with payload, if given);
        the next cont() runs it. A refused post changes nothing in the guest."""
        self._live()
        if not self.parked:
            raise HarnessError(
                f"cannot post {request.op.name}: the guest is not parked at {PARK_SYMBOL} (an earlier "
                "call stopped at a breakpoint or was interrupted); finish it with m.cont() until a stop "
                "is parked, or m.reset()",
                artifacts=self.artifact_files(),
            )
        self._seq = self._read_request()[8]
        if payload is not None:
            self.write_memory(request.buf, payload)
        self.write_memory(self.symbol("request"), request.pack(self._seq, linger=bool(self._held)))
        self.parked = False  # until a cont() brings the guest back to harness_ready

    def _read_request(self) -> tuple[int, ...]:
        return REQUEST.unpack(self.read_memory(self.symbol("request"), REQUEST.size))

    @locking.exclusive
    def cont(self, timeout: float | None = None) -> Stop:
        """Let the guest run until it stops: at harness_ready (parked), or at a breakpoint.

        A guest that does not stop within the timeout is interrupted; the evidence (stack,
        registers, serial tail) goes to hang.txt, the machine is reset to harness_ready, and
        HarnessTimeout is raised.
        """
        gdb, qemu = self._live()
        if self._held:
            return self._cont_releasing_holds()  # a posted call (begin_*) under hold_io
        limit = self.call_timeout if timeout is None else seconds("timeout", timeout, UsageError)
        if self._ports is not None:
            self._ports.arm_pending()
        gdb.discard_async()
        gdb.command("-exec-continue", alive=qemu.check_alive)
        try:
            rec = self._wait_stop(limit, "stop")
        except HarnessTimeout:
            raise self._hung(limit) from None
        payload = rec.payload if isinstance(rec.payload, dict) else {}
        stop = Stop.from_mi(payload, PARK_SYMBOL)
        if payload.get("reason") == "signal-received":
            self._check_paused(stop)
        if not stop.parked and self._ports is not None and self._ports.active:
            stop = self._ports.explain(stop)  # a port breakpoint: what the access was
        self.parked = stop.parked
        return stop

    def _wait_stop(self, limit: float, what: str) -> MiRecord:
        """The guest's next *stop within limit. Ctrl-C meanwhile stops the guest before it is
        passed on, so that cont() and reset() work afterwards, as the errors advise."""
        gdb, qemu = self._live()
        try:
            return gdb.wait_async(is_stopped, limit, what, qemu.check_alive)
        except KeyboardInterrupt:
            with procs.signals_deferred():
                self._interrupt_after_ctrl_c()
            raise

    def _interrupt_after_ctrl_c(self) -> None:
        """Stop the running guest (bounded) and say where it is; a call in flight finishes on
        the next cont(), or is dropped by reset()."""
        self.parked = False
        try:
            gdb, qemu = self._live()
            gdb.command("-exec-interrupt", alive=qemu.check_alive)
            rec = gdb.wait_async(is_stopped, HANG_INTERRUPT_TIMEOUT, "stop after Ctrl-C", qemu.check_alive)
        except HarnessError as exc:
            log.warning("interrupted; the guest could not be stopped (%s): power_cycle() or close()", exc)
            return
        stop = Stop.from_mi(rec.payload if isinstance(rec.payload, dict) else {}, PARK_SYMBOL)
        self.parked = stop.parked
        log.warning(
            "interrupted; the guest is stopped at %s: m.cont() finishes the call, m.reset() drops it", stop
        )

    def _check_paused(self, stop: Stop) -> None:
        """A signal stop may be QEMU pausing the VM (io-error); say so instead of hanging."""
        _, qemu = self._live()
        status = qemu.command("query-status")
        events = [e for e in qemu.events() if e.get("event") in ("BLOCK_IO_ERROR", "STOP")]
        if status.get("status") == "io-error":
            detail = "; ".join(
                f"{e['data'].get('device') or e['data'].get('node-name')}: {e['data'].get('operation')} "
                f"{e['data'].get('reason', '')}"
                for e in events
                if e.get("event") == "BLOCK_IO_ERROR"
            )
            raise QemuError(
                f"QEMU paused the VM on an I/O error (io_error={self.config.io_error!r}): "
                f"{detail or 'no event detail'}; "
                f"the guest stopped at {stop}. reset() or power_cycle() to go on",
                log_path=self._path("qemu.log"),
                artifacts=self.artifact_files(),
            )

    @locking.exclusive
    def request(self, request: Request, payload: memoryview | bytes | None = None) -> int:
        """Run one driver request through the mailbox; returns the driver's result code."""
        self._requests += 1
        if self._requests % EVENT_DRAIN_EVERY == 0 and self.qemu is not None:
            self.qemu.events(wait=EVENT_DRAIN_WAIT)  # each cont() makes QEMU send STOP and RESUME
        self.post(request, payload)
        stop = self.cont()
        if not stop.parked:
            raise GdbError(
                f"guest stopped at {stop} during {request.op.name} instead of returning to {PARK_SYMBOL}",
                artifacts=self.artifact_files(),
            )
        return self.result(request)

    # --- holding the block layer (blkdebug break) ------------------------------------------
    @locking.exclusive
    def hold_io(self, drive: int, op: str = "read", tag: str = "held") -> None:
        """Suspend the drive's next `op` ("read" | "write" | "flush") request inside QEMU's
        block layer, so the drive stays BSY and the driver's bounded wait runs out. Needs
        blkdebug in the drive's chain: `Machine(..., faults={drive: []})`. The m.ata call made
        under the hold lingers in the guest after the driver returns until the harness has let
        the held request go (QEMU waits for every request whenever the VM stops); the hold ends
        with that call, with release_io(), or with reset(). Port watches and GDB inferior calls
        are refused while it is in place."""
        if op not in HOLD_EVENTS:
            raise ConfigError(f"hold_io op {op!r} is not one of {', '.join(HOLD_EVENTS)}")
        if drive not in self.config.faults:
            raise ConfigError(
                f"hold_io needs blkdebug on drive {drive}: Machine(..., faults={{{drive}: []}})"
            )
        if self._ram is None:
            raise ConfigError("hold_io needs data_path='shm': the guest is watched while it runs")
        if self._ports is not None and (self._ports.active or self._ports.pending):
            raise ConfigError(
                "hold_io with port watches or port breakpoints active would stop the VM "
                "with a request held, which QEMU never survives; end them first"
            )
        self._qemu_io(drive, f"break {HOLD_EVENTS[op]} {tag}")
        self._held.add((drive, tag))

    @property
    def held(self) -> frozenset[tuple[int, str]]:
        """The (drive, tag) holds in place: each catches the next matching request, and the
        call that was caught lets it go when the driver has returned."""
        return frozenset(self._held)

    def _refuse_while_held(self, what: str) -> None:
        if self._held:
            raise ConfigError(
                f"{what} while hold_io is in place would stop the VM with a request held, which QEMU "
                "never survives; use m.ata calls, or release_io() first"
            )

    @locking.exclusive
    def release_io(self, drive: int, tag: str = "held") -> None:
        """End a hold: a suspended request goes on, later ones are not held."""
        self._qemu_io(drive, f"remove_break {tag}")
        self._held.discard((drive, tag))

    def _qemu_io(self, drive: int, command: str) -> None:
        _, qemu = self._live()
        log_path = self._path("qemu.log")
        before = log_path.stat().st_size if log_path.exists() else 0
        # -d: through the drive's own BlockBackend; naming the node would make HMP attach (and,
        # on detaching, drain) a new one.
        line = f'qemu-io -d drive{drive} "{command}"'
        out = str(qemu.command("human-monitor-command", **{"command-line": line})).strip()
        # qemu-io reports its own failures on QEMU's stdout (qemu.log), not through the monitor
        with open(log_path, "rb") as f:
            f.seek(before)
            said = f.read().decode(errors="replace").strip()
        failed = [ln for ln in said.splitlines() if "failed" in ln or "Could not" in ln or "not found" in ln]
        if out or failed:
            raise QemuError(
                f"qemu-io {command!r} on drive {drive}: {out or '; '.join(failed)}",
                artifacts=self.artifact_files(),
            )

    def _cont_releasing_holds(self) -> Stop:
        """cont() for a call made under hold_io: watch the mailbox while the guest runs; once
        the driver has returned, let the held requests go, then let the guest park."""
        gdb, qemu = self._live()
        assert self._ram is not None
        gdb.discard_async()
        gdb.command("-exec-continue", alive=qemu.check_alive)
        deadline = time.monotonic() + self.call_timeout
        while not self._done(self._read_request()):
            if time.monotonic() > deadline:
                self._let_holds_go()  # before any stop: QEMU would wait for the held request
                raise self._hung(self.call_timeout)
            qemu.check_alive()
            time.sleep(HOLD_POLL)  # the guest runs; shared memory is the only thing to watch
        self._let_holds_go()
        rec = self._wait_stop(self.call_timeout, "stop")
        stop = Stop.from_mi(rec.payload if isinstance(rec.payload, dict) else {}, PARK_SYMBOL)
        self.parked = stop.parked
        return stop

    def _release_holds(self) -> None:
        for drive, tag in sorted(self._held):
            with contextlib.suppress(HarnessError):  # already resumed: the hold had caught one
                self.release_io(drive, tag)
        self._held.clear()

    def _let_holds_go(self) -> None:
        """Release every hold, then let the lingering guest park."""
        self._release_holds()
        self.write_memory(self.symbol("request") + LINGER_OFFSET, bytes(4))

    def _done(self, fields: tuple[int, ...]) -> bool:
        """The mailbox says the posted request has run (op cleared, seq advanced by one)."""
        return fields[0] == Op.NONE and fields[8] == (self._seq + 1) & 0xFFFFFFFF

    def result(self, request: Request) -> int:
        """The result of the request posted last, once cont() has parked: raises if the guest
        rebooted on the way (the mailbox was lost)."""
        fields = self._read_request()
        op, result, seq = fields[0], fields[1], fields[8]
        if not self._done(fields):
            _, qemu = self._live()
            resets = [
                e
                for e in qemu.events(wait=EVENT_WAIT)
                if e.get("event") == "RESET" and e["data"].get("guest")
            ]
            if resets:
                raise QemuError(
                    f"the guest reset itself during {request.op.name} "
                    f"(QEMU: {resets[-1]['data'].get('reason')}; a triple fault resets a pc machine) "
                    f"and booted again to {PARK_SYMBOL}",
                    log_path=self._path("qemu.log"),
                    artifacts=self.artifact_files(),
                )
            raise HarnessError(
                f"the guest rebooted or lost the {request.op.name} request (mailbox op={op} seq={seq}, "
                f"expected seq {self._seq + 1}); serial log tail: {self.serial_text()[-300:]!r}",
                artifacts=self.artifact_files(),
            )
        return int(result)

    def _hung(self, limit: float) -> HarnessTimeout:
        """Interrupt a guest that did not stop, keep the evidence, reset; the error to raise."""
        gdb, qemu = self._live()
        evidence = [f"the guest did not return to {PARK_SYMBOL} within {limit:g} s"]
        try:
            gdb.command("-exec-interrupt", alive=qemu.check_alive)
            rec = gdb.wait_async(is_stopped, HANG_INTERRUPT_TIMEOUT, "stop after interrupt", qemu.check_alive)
            evidence.append(f"interrupted at: {rec.payload}")
            frames = gdb.command("-stack-list-frames", alive=qemu.check_alive).payload.get("stack", [])
            evidence.append("backtrace:")
            evidence += [f"  {f}" for f in frames]
            regs = gdb.command("-data-list-register-values x", alive=qemu.check_alive)
            evidence.append(f"registers: {regs.payload.get('register-values')}")
        except HarnessError as exc:
            evidence.append(f"could not collect more: {exc}")
        evidence.append("serial tail:\n" + self.serial_text()[-2000:])
        hang = self._path("hang.txt")
        try:
            artifacts.write_text(hang, "\n".join(evidence) + "\n")
        except HarnessError as exc:
            log.warning("hang evidence not written: %s", exc)
        self.failed = True
        try:
            self.reset()
            recovered = "the machine was reset to harness_ready"
        except HarnessError as exc:
            recovered = f"and could not be reset ({exc}); close it"
        return HarnessTimeout(
            f"{evidence[0]}; interrupted, {recovered}",
            artifacts=[hang, *self.artifact_files()],
        )

    @locking.exclusive
    def evaluate_int(self, expr: str, timeout: float | None = None) -> int:
        """Evaluate a C expression in the guest (function calls included) as an integer."""
        value = self._evaluate(expr, timeout, void_ok=False)
        assert value is not None
        return value

    def _evaluate(self, expr: str, timeout: float | None, void_ok: bool) -> int | None:
        gdb, qemu = self._live()
        limit = self.call_timeout if timeout is None else seconds("timeout", timeout, UsageError)
        value = gdb.evaluate(expr, limit, qemu.check_alive, interrupt_on_timeout=True)
        if void_ok and value == "void":
            return None
        try:
            return int(value.split()[0], 0)
        except (ValueError, IndexError):
            raise GdbError(
                f"{expr!r} gave {value!r}, not an integer", artifacts=self.artifact_files()
            ) from None

    @locking.exclusive
    def call(self, function: str, *args: int, timeout: float | None = None) -> int | None:
        """Call a guest C function with integer arguments; returns its int result (None for a
        function returning void)."""
        self._refuse_while_held("a GDB inferior call")
        text("function", function, UsageError)
        if not function.isidentifier():
            raise UsageError(f"function {function!r:.60} is not a C identifier")
        bad = [a for a in args if not is_int(a)]
        if bad:
            raise UsageError(f"call {function}: argument {bad[0]!r:.40} is not an integer")
        if self._ports is not None:
            self._ports.arm_pending()  # the guest runs during the call
        return self._evaluate(f"{function}({', '.join(str(a) for a in args)})", timeout, void_ok=True)

    def _check_span(self, addr: object, length: int) -> int:
        ram = self.config.memory_mib << 20
        if not is_int(addr) or not 0 <= addr <= ram - length:  # type: ignore[operator]
            raise UsageError(
                f"guest memory {addr!r:.24}..+{length} is outside guest RAM (0..{ram:#x}); "
                "give an address inside it"
            )
        assert isinstance(addr, int)
        return addr

    def read_memory(self, addr: int, length: int) -> bytes:
        """length bytes of guest RAM at addr (through the shared mapping, else GDB)."""
        if not is_int(length) or length < 0:
            raise UsageError(f"read_memory length {length!r:.24} must be a non-negative integer")
        addr = self._check_span(addr, length)
        if self._ram is not None:
            return self._ram[addr : addr + length]
        gdb, _ = self._live()
        return gdb.read_memory(addr, length)

    def write_memory(self, addr: int, data: bytes | memoryview) -> None:
        """Write data (bytes-like) into guest RAM at addr."""
        view = memoryview(data).cast("B")
        addr = self._check_span(addr, view.nbytes)
        if self._ram is not None:
            self._ram[addr : addr + view.nbytes] = view
            return
        gdb, _ = self._live()
        gdb.write_memory(addr, view)

    # --- the three reboots -------------------------------------------------------------
    # --- VM snapshots (qcow2 disks only) -------------------------------------------------
    @locking.exclusive
    def save_snapshot(self, name: str = SNAPSHOT_NAME) -> None:
        """savevm at the park point: RAM, devices, CPU and every disk (qcow2 internal snapshot)."""
        if not self.parked:
            raise HarnessError(f"save_snapshot: the guest is not parked at {PARK_SYMBOL}")
        self._hmp_snapshot("savevm", name)

    @locking.exclusive
    def clear_debug_state(self) -> None:
        """Remove what a test may have left in GDB (port watches and breakpoints, any user
        breakpoint): afterwards only the park breakpoint remains, or GdbError."""
        gdb, _ = self._live()
        if self._ports is not None:
            self._ports.clear()
        body = gdb.command("-break-list").payload.get("BreakpointTable", {}).get("body", [])
        extra = [b.get("number") for b in body if b.get("number") != self._park_bp]
        for number in extra:
            gdb.command(f"-break-delete {number}")
        park = [b for b in body if b.get("number") == self._park_bp]
        if not park:
            raise GdbError(f"the park breakpoint on {PARK_SYMBOL} is gone", artifacts=self.artifact_files())
        if park[0].get("enabled") != "y":
            gdb.command(f"-break-enable {self._park_bp}")

    @locking.exclusive
    def restore_snapshot(self, name: str = SNAPSHOT_NAME) -> None:
        """loadvm: back to the saved state, disks included; GDB's register cache is refreshed."""
        gdb, qemu = self._live()
        was_parked = self.parked
        self._hmp_snapshot("loadvm", name)
        gdb.command("maint flush register-cache")
        if not was_parked:
            # GDB steps over a breakpoint only at the PC where it last saw the guest stop; back
            # at harness_ready from elsewhere it would resume straight onto the park breakpoint
            # and skip the next request. One stepi (harness_ready's `ret`, back into the park
            # loop just before the dispatch) gives GDB a stop to go on from.
            gdb.discard_async()
            gdb.command("-exec-step-instruction", alive=qemu.check_alive)
            rec = gdb.wait_async(is_stopped, self.boot_timeout, "stop after stepi", qemu.check_alive)
            func = (rec.payload.get("frame") or {}).get("func") if isinstance(rec.payload, dict) else None
            if func not in (PARK_SYMBOL, "kmain"):
                raise GdbError(
                    f"after loadvm and one step the guest is in {func}, not the park loop",
                    artifacts=self.artifact_files(),
                )
            # and on round the (empty) park loop: GDB's last stop is harness_ready again, which
            # is what `parked` promises to the next restore and the next call
            self._continue_to_park()
        self.parked = True  # snapshots are taken parked, with no request pending

    def _hmp_snapshot(self, verb: str, name: str) -> None:
        _, qemu = self._live()
        not_qcow2 = [d for d, img in self.config.disks.items() if img.format != "qcow2"]
        if not_qcow2:
            raise ConfigError(f"{verb} needs qcow2 disks; drive(s) {not_qcow2} are raw")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"snapshot name {name!r}: use letters, digits, - and _")
        out = str(qemu.command("human-monitor-command", **{"command-line": f"{verb} {name}"})).strip()
        qemu.events()
        if out:  # HMP prints nothing on success
            raise QemuError(f"{verb} {name}: {out}", artifacts=self.artifact_files())

    @locking.exclusive
    def reset(self) -> None:
        """Warm reset: QMP system_reset, then run to harness_ready again (same QEMU, same RAM file)."""
        gdb, qemu = self._live()
        self._release_holds()  # the reset's own requests must not be held
        qemu.command("system_reset")
        qemu.events()  # RESET, STOP, RESUME...: nobody asked; do not let them pile up
        gdb.command("maint flush register-cache")
        self._continue_to_park()

    @locking.exclusive
    def power_cycle(self) -> None:
        """Cold: QEMU quits cleanly (flushing its caches), a new QEMU boots the same images."""
        self._reboot("power_cycle", clean=True)

    @locking.exclusive
    def crash(self) -> None:
        """SIGKILL QEMU as if the host lost it, then a new QEMU boots the same images."""
        self._reboot("crash", clean=False)

    def _reboot(self, what: str, clean: bool) -> None:
        """A new QEMU process on the same images; also the way back after a failed reboot."""
        if self.rundir is None:
            self._live()  # says why: never started, or closed
        self._halt(clean=clean, keep_gdb=True)
        try:
            self._boot()
        except BaseException as exc:
            self._down = (
                f"the machine is down: {what}() failed ({exc}); power_cycle() to try again, or close() it"
            )
            with contextlib.suppress(HarnessError):
                self._halt(clean=False, keep_gdb=True)  # whatever half of the new pair started
            raise
        self._down = ""

    def _halt(self, clean: bool, keep_gdb: bool = False) -> None:
        """Stop QEMU (quit or SIGKILL); stop GDB too unless it is to attach to the next QEMU."""
        self._held.clear()  # holds live in the QEMU that goes
        self.parked = False
        if self._ram is not None:
            self._ram.close()
            self._ram = None
        if self.qemu is not None:
            if clean:
                self.qemu.quit()
            else:
                self.qemu.kill()
            self.qemu = None
        if self.gdb is not None:
            if keep_gdb and self.gdb.alive():
                with contextlib.suppress(GdbError, HarnessTimeout):
                    self.gdb.command("-target-disconnect")
            else:
                self.gdb.close()
                self.gdb = None
        if self.rundir is not None:
            with contextlib.suppress(FileNotFoundError):
                self._qemu_paths().ram_file.unlink()
        if self._ram_dir is not None:
            shutil.rmtree(self._ram_dir, ignore_errors=True)
            self._ram_dir = None

    @property
    def pids(self) -> list[int]:
        return [p for p in (self.qemu and self.qemu.pid, self.gdb and self.gdb.pid) if p]

    # --- port I/O: driver side through GDB (harness/ports.py), device side from QEMU -----------
    @property
    def ports(self) -> PortsAgent:
        """The GDB-side port agent (loaded into GDB on first use)."""
        if self._ports is None:
            from harness.ports import PortsAgent

            self._ports = PortsAgent(self)
        return self._ports

    @property
    def trace_log(self) -> Path | None:
        """QEMU's -D log file, where device_trace() events go."""
        return self._path(TRACE_LOG_NAME) if self.artifacts is not None else None

    def watch_ports(
        self, *ports: int | range | str | tuple[int, int], capture: int | None = None
    ) -> PortWatch:
        """`with m.watch_ports("primary", 0x3F6) as io:` records every in/out/ins/outs to those
        ports (ints, ranges, names: see PortMap.named_ranges; none means every IDE port) while
        active: breakpoints on each port instruction in the kernel, auto-continuing, all deleted
        on exit. `io.events` lists PortAccess events; string transfers keep their bytes, up to
        `capture` bytes in all (default 1 MiB; later ones get data=None)."""
        from harness.ports import DATA_CAPTURE_LIMIT, PortWatch

        self._refuse_while_held("watching ports")
        agent = self.ports
        ranges = agent.port_map().ranges(ports)
        what = ", ".join(str(p) for p in ports) or "ide"
        return PortWatch(agent, ranges, what, DATA_CAPTURE_LIMIT if capture is None else capture)

    def break_on_port(
        self,
        port: int | range | str | tuple[int, int],
        direction: str | None = None,
        value: int | None = None,
    ) -> PortBreakpoint:
        """Stop the guest when it accesses `port` (optionally only `direction` "in"/"out", only
        `value`). Use with post() + cont(): cont() returns a Stop whose `access` is the
        PortAccess. An `out` stops before the device sees the value; an `in` stops right after
        it, with the value read. `bp.delete()` (or a `with` block) removes it."""
        from harness.ports import PortBreakpoint

        self._refuse_while_held("a port breakpoint")
        agent = self.ports
        ranges = agent.port_map().ranges([port])
        return PortBreakpoint(
            agent, ranges, str(port) if not isinstance(port, int) else f"{port:#x}", direction, value
        )

    def device_trace(self, patterns: Sequence[str] | None = None) -> DeviceTrace:
        """`with m.device_trace() as dev:` records what QEMU's IDE/bus-master emulation saw
        (its ide_*/bmdma_* trace events) while active; `dev.events` are PortAccess events."""
        from harness.devtrace import TRACE_PATTERNS, DeviceTrace

        return DeviceTrace(self, patterns or TRACE_PATTERNS)
