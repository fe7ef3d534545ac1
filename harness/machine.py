"""The Machine: one QEMU and one GDB joined, parked at harness_ready, ready for calls."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from harness.ata import Ata
from harness.disk import DiskImage
from harness.errors import ConfigError, GdbError, HarnessError, HarnessTimeout, QemuError, Terminated
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
SNAPSHOT_MEMORY_MIB = 64  # loadvm time grows with guest RAM; 64 MiB holds the 32 MiB transfer buffer
ERROR_RECORD_SIZE = 40  # sizeof(struct ata_error_record), checked against the kernel at boot
SHM_ROOT = Path("/dev/shm")
DATA_PATHS = ("shm", "gdb")


def _private_dir() -> Path:
    """A fresh 0700 directory for sockets and guest RAM; on tmpfs where there is one."""
    root = SHM_ROOT if SHM_ROOT.is_dir() and os.access(SHM_ROOT, os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="piix3-", dir=root))
    path.chmod(0o700)
    return path


def _disk_map(disks: Sequence[DiskImage] | Mapping[int, DiskImage] | None) -> dict[int, DiskImage]:
    if disks is None:
        return {}
    if isinstance(disks, Mapping):
        return dict(disks)
    if len(disks) > 4:
        raise ConfigError(f"{len(disks)} disks given; the PIIX3 has 4 drive positions (0..3)")
    return dict(enumerate(disks))


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
        if data_path not in DATA_PATHS:
            raise ConfigError(f"unknown data_path {data_path!r}; use one of {', '.join(DATA_PATHS)}")
        if memory_mib < MIN_MEMORY_MIB:
            raise ConfigError(
                f"memory_mib={memory_mib}: the guest's 32 MiB transfer buffer at 16 MiB needs at least "
                f"{MIN_MEMORY_MIB} MiB"
            )
        self.config = QemuConfig(
            kernel=find_kernel(kernel),
            disks=_disk_map(disks),
            firmware=firmware,
            memory_mib=memory_mib,
            extra_args=tuple(extra_qemu_args),
            faults={d: tuple(f) for d, f in (faults or {}).items()},
            io_error=io_error,
        )
        self.call_timeout = call_timeout
        self.boot_timeout = boot_timeout
        self.data_path = data_path
        self.keep_artifacts = keep_artifacts
        self._gdb_binary = gdb
        self._artifacts_arg = Path(artifacts_dir).absolute() if artifacts_dir is not None else None
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

    def start(self) -> None:
        """Boot to the park point; on any failure everything started is torn down."""
        for disk in self.config.disks.values():
            disk.validate()  # before any process starts
        self.rundir = _private_dir()
        if self._artifacts_arg is not None:
            self.artifacts = self._artifacts_arg
        else:  # on disk, not in /dev/shm: logs kept after a failure must not cost RAM
            self.artifacts = Path(tempfile.mkdtemp(prefix="piix3-logs-"))
            self._own_artifacts = True
        self.artifacts.mkdir(parents=True, exist_ok=True)
        try:
            self._boot()
        except BaseException as exc:
            self.close(failed=not isinstance(exc, KeyboardInterrupt) or isinstance(exc, Terminated))
            raise

    def close(self, failed: bool = False) -> None:
        """Stop GDB and QEMU (bounded) and remove the private directory (sockets, RAM); the logs
        are kept when asked or when something failed, else removed if the machine made them."""
        self.failed = self.failed or failed
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
        with contextlib.suppress(FileNotFoundError):
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
        if self.gdb is None or self.qemu is None:
            raise HarnessError("the machine is not running (use it inside `with Machine(...)`)")
        return self.gdb, self.qemu

    # --- the mailbox: post a request, continue, stop at harness_ready ---------------------
    def post(self, request: Request) -> None:
        """Fill the guest's request mailbox; the next cont() runs it."""
        if not self.parked:
            raise HarnessError(
                f"cannot post {request.op.name}: the guest is not parked at {PARK_SYMBOL} (an earlier "
                "call stopped at a breakpoint or was interrupted); finish it with m.cont() until a stop "
                "is parked, or m.reset()",
                artifacts=self.artifact_files(),
            )
        self._seq = self._read_request()[8]
        self.write_memory(self.symbol("request"), request.pack(self._seq, linger=bool(self._held)))
        self.parked = False  # until a cont() brings the guest back to harness_ready

    def _read_request(self) -> tuple[int, ...]:
        return REQUEST.unpack(self.read_memory(self.symbol("request"), REQUEST.size))

    def cont(self, timeout: float | None = None) -> Stop:
        """Let the guest run until it stops: at harness_ready (parked), or at a breakpoint.

        A guest that does not stop within the timeout is interrupted; the evidence (stack,
        registers, serial tail) goes to hang.txt, the machine is reset to harness_ready, and
        HarnessTimeout is raised.
        """
        gdb, qemu = self._live()
        if self._held:
            return self._cont_releasing_holds()  # a posted call (begin_*) under hold_io
        limit = timeout or self.call_timeout
        if self._ports is not None:
            self._ports.arm_pending()
        gdb.discard_async()
        gdb.command("-exec-continue", alive=qemu.check_alive)
        try:
            rec = gdb.wait_async(is_stopped, limit, "stop", qemu.check_alive)
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
                f"QEMU paused the VM on an I/O error (io_error='stop'): {detail or 'no event detail'}; "
                f"the guest stopped at {stop}. reset() or power_cycle() to go on",
                log_path=self._path("qemu.log"),
                artifacts=self.artifact_files(),
            )

    def request(self, request: Request) -> int:
        """Run one driver request through the mailbox; returns the driver's result code."""
        self._requests += 1
        if self._requests % EVENT_DRAIN_EVERY == 0 and self.qemu is not None:
            self.qemu.events(wait=EVENT_DRAIN_WAIT)  # each cont() makes QEMU send STOP and RESUME
        self.post(request)
        stop = self.cont()
        if not stop.parked:
            raise GdbError(
                f"guest stopped at {stop} during {request.op.name} instead of returning to {PARK_SYMBOL}",
                artifacts=self.artifact_files(),
            )
        return self.result(request)

    # --- holding the block layer (blkdebug break) ------------------------------------------
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
        rec = gdb.wait_async(is_stopped, self.call_timeout, "stop", qemu.check_alive)
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
        hang.write_text("\n".join(evidence) + "\n")
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

    def evaluate_int(self, expr: str, timeout: float | None = None) -> int:
        """Evaluate a C expression in the guest (function calls included) as an integer."""
        gdb, qemu = self._live()
        value = gdb.evaluate(expr, timeout or self.call_timeout, qemu.check_alive, interrupt_on_timeout=True)
        try:
            return int(value.split()[0], 0)
        except (ValueError, IndexError):
            raise GdbError(
                f"{expr!r} gave {value!r}, not an integer", artifacts=self.artifact_files()
            ) from None

    def call(self, function: str, *args: int, timeout: float | None = None) -> int:
        """Call a guest C function with integer arguments; returns its int result."""
        self._refuse_while_held("a GDB inferior call")
        if self._ports is not None:
            self._ports.arm_pending()  # the guest runs during the call
        return self.evaluate_int(f"{function}({', '.join(str(a) for a in args)})", timeout)

    def read_memory(self, addr: int, length: int) -> bytes:
        if self._ram is not None:
            return self._ram[addr : addr + length]
        gdb, _ = self._live()
        return gdb.read_memory(addr, length)

    def write_memory(self, addr: int, data: bytes) -> None:
        if self._ram is not None:
            self._ram[addr : addr + len(data)] = data
            return
        gdb, _ = self._live()
        gdb.write_memory(addr, data)

    # --- the three reboots -------------------------------------------------------------
    # --- VM snapshots (qcow2 disks only) -------------------------------------------------
    def save_snapshot(self, name: str = SNAPSHOT_NAME) -> None:
        """savevm at the park point: RAM, devices, CPU and every disk (qcow2 internal snapshot)."""
        if not self.parked:
            raise HarnessError(f"save_snapshot: the guest is not parked at {PARK_SYMBOL}")
        self._hmp_snapshot("savevm", name)

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

    def reset(self) -> None:
        """Warm reset: QMP system_reset, then run to harness_ready again (same QEMU, same RAM file)."""
        gdb, qemu = self._live()
        self._release_holds()  # the reset's own requests must not be held
        qemu.command("system_reset")
        qemu.events()  # RESET, STOP, RESUME...: nobody asked; do not let them pile up
        gdb.command("maint flush register-cache")
        self._continue_to_park()

    def power_cycle(self) -> None:
        """Cold: QEMU quits cleanly (flushing its caches), a new QEMU boots the same images."""
        self._live()
        self._halt(clean=True, keep_gdb=True)
        self._boot()

    def crash(self) -> None:
        """SIGKILL QEMU as if the host lost it, then a new QEMU boots the same images."""
        self._live()
        self._halt(clean=False, keep_gdb=True)
        self._boot()

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
                (self.rundir / "ram").unlink()

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
