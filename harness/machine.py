"""The Machine: what a user holds. It checks a configuration, starts and closes the target
(QEMU + GDB, harness/target.py), reboots it three ways, takes snapshots, and hands out the
driver (`m.ata`, harness/ata.py) and port observation (harness/portio/)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from harness import artifacts, locking, procs, rundir
from harness.abi import Request
from harness.ata import DEFAULT_COMPLETION, Ata, completion_problem
from harness.checks import int_problem, is_int, seconds, text
from harness.console import Console
from harness.disk import DiskImage
from harness.errors import ConfigError, HarnessError, Terminated, UsageError
from harness.faults import Fault
from harness.gdbmi import GdbMi
from harness.paths import find_kernel
from harness.powerloss import (
    DEFAULT_STATE_LIMIT,
    CacheMark,
    CrashState,
    LoggedWrite,
    PowerLoss,
    WriteCaches,
    check_unflushed,
    write_cache_map,
)
from harness.qemu import QEMU_BINARY, TRACE_LOG_NAME, QemuConfig, QemuPaths, QemuProcess
from harness.regs import IRQ_LINES
from harness.stops import Stop
from harness.target import PARK_SYMBOL, Target
from harness.transport import TRANSPORTS, Mailboxes, doorbell_host

if TYPE_CHECKING:
    from harness.portio.devtrace import DeviceTrace
    from harness.portio.watch import PortBreakpoint, PortsAgent, PortWatch

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 15.0  # s, from `continue` to the stop at harness_ready (firmware + driver init)
CALL_TIMEOUT = 60.0  # s, for one driver call (a 32 MiB PIO transfer included)
SNAPSHOT_NAME = "piix3-park"
MIN_MEMORY_MIB = 64  # the transfer buffer ends at 48 MiB; the rest is firmware and margin
MAX_MEMORY_MIB = 3072  # below the PCI hole of a 32-bit pc machine
SNAPSHOT_MEMORY_MIB = 64  # loadvm time grows with guest RAM; 64 MiB holds the 32 MiB transfer buffer
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
    `transport`: "doorbell" (the default with shared RAM) keeps the guest running between
    calls, taking them from shared RAM; "gdb" continues it from harness_ready for each call
    (harness/transport.py).
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
        transport: str | None = None,
        gdb: str = "gdb",
        qemu: str = QEMU_BINARY,
        extra_qemu_args: Sequence[str] = (),
        faults: Mapping[int, Sequence[Fault]] | None = None,
        io_error: str = "report",
        write_cache: str | Mapping[int, str] | None = None,
        completion: str = DEFAULT_COMPLETION,
    ) -> None:
        if not isinstance(data_path, str) or data_path not in DATA_PATHS:
            raise ConfigError(f"unknown data_path {data_path!r:.40}; use one of {', '.join(DATA_PATHS)}")
        if transport is None:  # the doorbell lives in shared RAM
            transport = "doorbell" if data_path == "shm" and doorbell_host() else "gdb"
        if not isinstance(transport, str) or transport not in TRANSPORTS:
            raise ConfigError(f"unknown transport {transport!r:.40}; use one of {', '.join(TRANSPORTS)}")
        if transport == "doorbell" and data_path != "shm":
            raise ConfigError("transport='doorbell' needs data_path='shm' (the guest polls shared RAM)")
        if transport == "doorbell" and not doorbell_host():
            raise ConfigError(
                f"transport='doorbell' needs an x86 host, whose stores become visible in order "
                f"(this is {platform.machine()}); use transport='gdb'"
            )
        if not is_int(memory_mib) or not MIN_MEMORY_MIB <= memory_mib <= MAX_MEMORY_MIB:
            raise ConfigError(
                f"memory_mib={memory_mib!r:.40}: give a whole number of MiB in "
                f"{MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} "
                f"(the guest's 32 MiB transfer buffer at 16 MiB needs at least {MIN_MEMORY_MIB})"
            )
        for name, value in (("firmware", firmware), ("io_error", io_error)):
            text(name, value, ConfigError)
        if completion_problem(completion):
            raise ConfigError(completion_problem(completion))
        if isinstance(extra_qemu_args, str | bytes) or not isinstance(extra_qemu_args, Sequence):
            raise ConfigError(f"extra_qemu_args must be a list of strings, not {extra_qemu_args!r:.60}")
        if keep_artifacts is not None and not isinstance(keep_artifacts, bool):
            raise ConfigError(f"keep_artifacts must be True, False or None, not {keep_artifacts!r:.40}")
        disk_map = _disk_map(disks)
        config = QemuConfig(
            kernel=find_kernel(kernel),
            disks=disk_map,
            firmware=firmware,
            memory_mib=memory_mib,
            qemu_binary=text("qemu", qemu, ConfigError),
            extra_args=tuple(extra_qemu_args),
            faults=_fault_map(faults),
            io_error=io_error,
            write_cache=write_cache_map(write_cache, sorted(disk_map)),
        )
        self._call_timeout = seconds("call_timeout", call_timeout, ConfigError)
        self.keep_artifacts = keep_artifacts
        try:
            self._artifacts_arg = Path(artifacts_dir).absolute() if artifacts_dir is not None else None
        except TypeError:
            raise ConfigError(f"artifacts_dir must be a path, not {artifacts_dir!r:.60}") from None
        if self._artifacts_arg is not None:
            text("artifacts_dir", str(self._artifacts_arg), ConfigError)
        self.target = Target(
            config,
            gdb_binary=text("gdb", gdb, ConfigError),
            data_path=data_path,
            boot_timeout=seconds("boot_timeout", boot_timeout, ConfigError),
        )
        self.mailboxes = Mailboxes(
            self.target, lambda: self._call_timeout, self.reset, transport, self._needs_stops
        )
        volatile = {d: disk_map[d] for d, mode in config.write_cache.items() if mode == "volatile"}
        # the drives' caches read what the guest did at every boundary between stretches of it
        self.write_caches = WriteCaches(self.target, volatile) if volatile else None
        if self.write_caches is not None:
            self.target.resume_hooks.append(self.write_caches.boundary)
            self.mailboxes.on_post = self.write_caches.expect
        self.ata = Ata(self.mailboxes, self.target, self.exclusive, completion)
        self.console = Console(self.target)  # the guest's COM1: expect() what it prints, send()
        self.rundir: Path | None = None
        self.artifacts: Path | None = None
        self.failed = False
        self._own_artifacts = False  # artifacts is a temp dir this machine made
        self._ports: PortsAgent | None = None  # port watching, loaded into GDB on first use
        self._lock = threading.RLock()  # one thread at a time (see exclusive())

    # --- configuration and state, as the target has them ---------------------------------
    @property
    def config(self) -> QemuConfig:
        return self.target.config

    @config.setter
    def config(self, value: QemuConfig) -> None:
        self.target.config = value

    @property
    def qemu(self) -> QemuProcess | None:
        return self.target.qemu

    @property
    def gdb(self) -> GdbMi | None:
        return self.target.gdb

    @property
    def parked(self) -> bool:
        """At harness_ready with no posted request still to run, or between calls in the
        doorbell loop (the same state to a caller: the next call can run)."""
        return self.target.parked or self.target.serving

    @property
    def transport(self) -> str:
        """How calls reach the guest: "doorbell" (shared RAM) or "gdb" (harness/transport.py)."""
        return self.mailboxes.transport

    def _needs_stops(self) -> bool:
        """Something watches the guest at its stops: port watches or breakpoints in place or
        pending, volatile write caches (read at each stop). Calls take the GDB way then."""
        ports = self._ports is not None and bool(self._ports.active or self._ports.pending)
        return ports or self.write_caches is not None

    @property
    def boots(self) -> int:
        return self.target.boots

    @property
    def boot_timeout(self) -> float:
        return self.target.boot_timeout

    @property
    def data_path(self) -> str:
        return self.target.data_path

    @property
    def pids(self) -> list[int]:
        return self.target.pids

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

    # --- start and close --------------------------------------------------------------------
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
        procs.ignore_sigpipe()  # a GDB or QEMU that dies must become an error, not kill us
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
        self.target.use(QemuPaths.under(self.rundir, self.artifacts))
        try:
            self.target.boot()
        except BaseException as exc:
            self.close(failed=not isinstance(exc, KeyboardInterrupt) or isinstance(exc, Terminated))
            raise

    def close(self, failed: bool = False) -> None:
        """Stop GDB and QEMU (bounded) and remove the private directory (sockets, RAM); the logs
        are kept when asked or when something failed, else removed if the machine made them.
        Ctrl-C waits until this is done: a half-closed machine would leave processes behind."""
        with self._lock, procs.signals_deferred():
            self.failed = self.failed or failed
            self.target.down = "the machine is closed; start a new one"
            self.mailboxes.forget_holds()
            self.target.halt(clean=True)
            if self.rundir is None:
                return
            settle_error: HarnessError | None = None
            if self.write_caches is not None:
                try:  # an orderly end: the drives keep what they cached
                    self.write_caches.settle("keep", None)
                except HarnessError as exc:
                    settle_error = exc
                    self.failed = True
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None
            keep = self.keep_artifacts if self.keep_artifacts is not None else self.failed
            if keep:  # a warning when kept because something failed; asked-for logs are no news
                if self.artifacts is not None:
                    artifacts.shrink(self.artifacts / TRACE_LOG_NAME)
                log.log(
                    logging.WARNING if self.failed else logging.INFO,
                    "machine artifacts kept in %s",
                    self.artifacts,
                )
            elif self._own_artifacts and self.artifacts is not None:
                shutil.rmtree(self.artifacts, ignore_errors=True)  # a caller-chosen directory is the caller's
            if settle_error is not None:
                raise settle_error

    # --- logs ------------------------------------------------------------------------------
    def artifact_files(self) -> list[Path]:
        """The logs that explain an error: serial, QEMU, GDB/MI transcript."""
        return self.target.artifact_files()

    def serial_text(self) -> str:
        return self.target.serial_text()

    @property
    def trace_log(self) -> Path | None:
        """QEMU's -D log file, where device_trace() events go."""
        return self.target.paths.trace_log if self.target.paths is not None else None

    # --- the three reboots -------------------------------------------------------------------
    @locking.exclusive
    def reset(self) -> None:
        """Warm reset: QMP system_reset, then run to harness_ready again (same QEMU, same RAM file).
        A drive keeps its write cache through a reset."""
        self.target.live()
        self.mailboxes.release_holds()  # the reset's own requests must not be held
        self.mailboxes.disarm()
        if self.write_caches is not None:
            self.write_caches.expect(None)  # the firmware and the driver's start run next
        self.target.system_reset()

    @locking.exclusive
    def power_cycle(self) -> None:
        """Cold: QEMU quits cleanly (flushing its caches), a new QEMU boots the same images. A
        volatile write cache is written out first, as a drive does at an orderly power-off."""
        self._reboot("power_cycle", clean=True)

    @locking.exclusive
    def crash(self) -> None:
        """SIGKILL QEMU as if the host lost it, then a new QEMU boots the same images. The
        drives keep power: a volatile write cache keeps every completed write (power_loss()
        is the one that loses them)."""
        self._reboot("crash", clean=False)

    @locking.exclusive
    def power_loss(self, unflushed: str = "drop", seed: int | None = None) -> PowerLoss:
        """Pull the plug: QEMU is killed with no clean stop, each image is set to what its drive
        would have kept, and a new QEMU boots on them. A drive with a volatile write cache keeps
        every write made durable (by a completed FLUSH CACHE, FUA, or its cache disabled), and of
        the others none ("drop"), all ("keep"), or a random subset of their 4 KiB pieces
        ("random"; `seed` replays one, and the seed used is in the result). Other drives keep
        every completed write. Works parked and at a stop inside a call (the call is lost, as
        it would be). The image files show the result: disk.read_sectors() tells the truth."""
        check_unflushed(unflushed, seed)
        if unflushed == "random" and seed is None:
            seed = random.randrange(1 << 32)
        if self.rundir is None:
            self.target.live()
        old = self.qemu.pid if self.qemu is not None else None
        if self.write_caches is not None and self.qemu is not None:
            self.write_caches.boundary()  # the FLUSHes completed since the last one count
        loss = self._reboot("power_loss", clean=False, unflushed=unflushed, seed=seed)
        if loss is None:
            loss = PowerLoss(unflushed, seed, {})
        return dataclasses.replace(loss, old_pid=old, new_pid=self.qemu.pid if self.qemu else None)

    def _reboot(
        self, what: str, clean: bool, unflushed: str = "keep", seed: int | None = None
    ) -> PowerLoss | None:
        """A new QEMU process on the same images; also the way back after a failed reboot.
        Between the two, volatile write caches are settled into the images."""
        if self.rundir is None:
            self.target.live()  # says why: never started, or closed
        self.mailboxes.forget_holds()  # holds live in the QEMU that goes
        self.target.halt(clean=clean, keep_gdb=True)
        loss = self.write_caches.settle(unflushed, seed) if self.write_caches is not None else None
        try:
            self.target.boot()
        except BaseException as exc:
            self.target.down = (
                f"the machine is down: {what}() failed ({exc}); power_cycle() to try again, or close() it"
            )
            with contextlib.suppress(HarnessError):
                self.target.halt(clean=False, keep_gdb=True)  # whatever half of the new pair started
            raise
        return loss

    # --- the volatile write cache (write_cache="volatile") ---------------------------------------
    def _caches(self) -> WriteCaches:
        if self.write_caches is None:
            raise UsageError(
                "no drive has a volatile write cache: Machine(..., write_cache='volatile') "
                "(or {drive: 'volatile'})"
            )
        self.target.live()
        return self.write_caches

    @locking.exclusive
    def crash_mark(self) -> CacheMark:
        """A point in the write stream, for crash_states(since=...)."""
        return self._caches().mark()

    @locking.exclusive
    def crash_states(
        self,
        drive: int = 0,
        *,
        since: CacheMark | None = None,
        limit: int = DEFAULT_STATE_LIMIT,
        seed: int = 0,
    ) -> list[CrashState]:
        """The distinct images a power loss could leave on a volatile drive, from `since` (a
        crash_mark(); default: this boot) to now: for every flush epoch, the durable writes
        plus each subset of the epoch's unflushed 4 KiB pieces, all of them while there are at
        most `limit`, else `limit` of them (none, all, in order, in reverse, then random ones
        from `seed`). Each state's `read_sectors(lba, count)` reads that image; `epoch` is how
        many guest FLUSHes had completed. Nothing is written to the image."""
        caches = self._caches()
        problem = int_problem("limit", limit, 1, 1 << 20) or int_problem("seed", seed, 0, (1 << 64) - 1)
        if problem:
            raise UsageError(problem)
        if since is not None and not isinstance(since, CacheMark):
            raise UsageError(f"since must be a crash_mark(), not {since!r:.60}")
        return caches.states(drive, since, limit, seed)

    @locking.exclusive
    def unflushed_writes(self, drive: int = 0) -> list[LoggedWrite]:
        """The completed writes a power loss may still lose on a volatile drive, oldest first."""
        caches = self._caches()
        caches.boundary()
        return caches.live_drive(drive, caches.boot).unflushed()

    # --- VM snapshots (qcow2 disks only) ------------------------------------------------------
    def _need_qcow2(self, verb: str) -> None:
        raw = [d for d, img in self.config.disks.items() if img.format != "qcow2"]
        if raw:
            raise ConfigError(f"{verb} needs qcow2 disks; drive(s) {raw} are raw")

    @locking.exclusive
    def save_snapshot(self, name: str = SNAPSHOT_NAME) -> None:
        """savevm at the park point: RAM, devices, CPU and every disk (qcow2 internal snapshot)."""
        self._need_qcow2("savevm")
        if not self.parked:
            raise HarnessError(f"save_snapshot: the guest is not parked at {PARK_SYMBOL}")
        self.target.snapshot("savevm", name)

    @locking.exclusive
    def restore_snapshot(self, name: str = SNAPSHOT_NAME) -> None:
        """loadvm: back to the saved state, disks included; GDB's register cache is refreshed."""
        self._need_qcow2("loadvm")
        self.target.snapshot("loadvm", name)

    @locking.exclusive
    def clear_debug_state(self) -> None:
        """Remove what a test may have left in GDB (port watches and breakpoints, any user
        breakpoint): afterwards only the park breakpoint remains, or GdbError."""
        self.target.live()
        if self._ports is not None:
            self._ports.clear()
        self.target.clear_breakpoints()

    # --- requests, calls and memory -----------------------------------------------------------
    @locking.exclusive
    def post(self, request: Request, payload: memoryview | bytes | None = None) -> None:
        """Fill the guest's request mailbox (and the transfer buffer with payload); the next
        cont() runs it. A refused post changes nothing in the guest."""
        self.mailboxes.post(request, payload)

    @locking.exclusive
    def cont(self, timeout: float | None = None) -> Stop:
        """Let the guest run until it stops: at harness_ready (parked), or at a breakpoint.

        A guest that does not stop within the timeout is interrupted; the evidence (stack,
        registers, serial tail) goes to hang.txt, the machine is reset to harness_ready, and
        HarnessTimeout is raised.
        """
        return self.mailboxes.cont(timeout)

    @locking.exclusive
    def request(self, request: Request, payload: memoryview | bytes | None = None) -> int:
        """Run one driver request through the mailbox; returns the driver's result code."""
        return self.mailboxes.request(request, payload)

    @locking.exclusive
    def result(self, request: Request) -> int:
        """The result of the request posted last, once cont() has parked."""
        return self.mailboxes.result(request)

    def symbol(self, name: str) -> int:
        """An address resolved at boot: xfer_buf, xfer_size, last_error, request."""
        return self.target.symbol(name)

    @locking.exclusive
    def evaluate_int(self, expr: str, timeout: float | None = None) -> int:
        """Evaluate a C expression in the guest (function calls included) as an integer."""
        return self.target.evaluate(expr, self.call_timeout if timeout is None else timeout)

    @locking.exclusive
    def call(self, function: str, *args: int, timeout: float | None = None) -> int | None:
        """Call a guest C function with integer arguments; returns its int result (None for a
        function returning void)."""
        self.mailboxes.refuse_while_held("a GDB inferior call")
        text("function", function, UsageError)
        if not function.isidentifier():
            raise UsageError(f"function {function!r:.60} is not a C identifier")
        bad = [a for a in args if not is_int(a)]
        if bad:
            raise UsageError(f"call {function}: argument {bad[0]!r:.40} is not an integer")
        if self._ports is not None:
            self._ports.arm_pending()  # the guest runs during the call
        if self.write_caches is not None:
            self.write_caches.expect(None)
            self.write_caches.boundary()  # the call is a stretch of its own
        expr = f"{function}({', '.join(str(a) for a in args)})"
        return self.target.call(expr, self.call_timeout if timeout is None else timeout)

    @locking.exclusive
    def read_memory(self, addr: int, length: int) -> bytes:
        """length bytes of guest RAM at addr (through the shared mapping, else GDB)."""
        return self.target.read_memory(addr, length)

    @locking.exclusive
    def write_memory(self, addr: int, data: bytes | memoryview) -> None:
        """Write data (bytes-like) into guest RAM at addr."""
        self.target.write_memory(addr, data)

    # --- interrupt lines: the 8259 pair's mask register --------------------------------------
    def _irq_line(self, line: object) -> int:
        problem = int_problem("line", line, 0, IRQ_LINES - 1)
        if problem:
            raise UsageError(f"{problem} (the 8259 pair has lines 0..{IRQ_LINES - 1}; 14, 15: IDE)")
        assert isinstance(line, int)
        return line

    @locking.exclusive
    def mask_irq(self, line: int) -> None:
        """Set the line's bit in its 8259's mask register: its interrupts stay pending in the
        controller (IRR) and the driver in irq completion waits for one in vain (TIMEOUT,
        phase irq, counted as lost). The guest masks nothing else; a reboot unmasks it."""
        self.call("irq_mask", self._irq_line(line))

    @locking.exclusive
    def unmask_irq(self, line: int) -> None:
        """Clear the line's mask bit: an interrupt pending there is taken at the guest's next
        opening (the next command in irq completion), as unclaimed."""
        self.call("irq_unmask", self._irq_line(line))

    # --- holding the block layer (blkdebug break) ---------------------------------------------
    @locking.exclusive
    def hold_io(self, drive: int, op: str = "read", tag: str = "held") -> None:
        """Suspend the drive's next `op` ("read" | "write" | "flush") request inside QEMU's
        block layer, so the drive stays BSY and the driver's bounded wait runs out. Needs
        blkdebug in the drive's chain: `Machine(..., faults={drive: []})`. The m.ata call made
        under the hold lingers in the guest after the driver returns until the harness has let
        the held request go (QEMU waits for every request whenever the VM stops); the hold ends
        with that call, with release_io(), or with reset(). Port watches and GDB inferior calls
        are refused while it is in place."""
        self.target.live()
        watching = self._ports is not None and bool(self._ports.active or self._ports.pending)
        self.mailboxes.hold_io(drive, op, tag, faults=set(self.config.faults), watching=watching)

    @property
    def held(self) -> frozenset[tuple[int, str]]:
        """The (drive, tag) holds in place: each catches the next matching request, and the
        call that was caught lets it go when the driver has returned."""
        return self.mailboxes.held

    @locking.exclusive
    def release_io(self, drive: int, tag: str = "held") -> None:
        """End a hold: a suspended request goes on, later ones are not held."""
        self.mailboxes.release_io(drive, tag)

    # --- port I/O: driver side through GDB, device side from QEMU ---------------------------
    @property
    def ports(self) -> PortsAgent:
        """The GDB-side port agent (loaded into GDB on first use)."""
        if self._ports is None:
            from harness.portio.watch import PortsAgent

            self._ports = PortsAgent(self.target)
        return self._ports

    def watch_ports(
        self, *ports: int | range | str | tuple[int, int], capture: int | None = None
    ) -> PortWatch:
        """`with m.watch_ports("primary", 0x3F6) as io:` records every in/out/ins/outs to those
        ports (ints, ranges, names: see PortMap.named_ranges; none means every IDE port) while
        active: breakpoints on each port instruction in the kernel, auto-continuing, all deleted
        on exit. `io.events` lists PortAccess events; string transfers keep their bytes, up to
        `capture` bytes in all (default 1 MiB; later ones get data=None)."""
        from harness.portio.watch import DATA_CAPTURE_LIMIT, PortWatch

        self.mailboxes.refuse_while_held("watching ports")
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
        from harness.portio.watch import PortBreakpoint

        self.mailboxes.refuse_while_held("a port breakpoint")
        agent = self.ports
        ranges = agent.port_map().ranges([port])
        return PortBreakpoint(
            agent, ranges, str(port) if not isinstance(port, int) else f"{port:#x}", direction, value
        )

    def device_trace(
        self, patterns: Sequence[str] | None = None, *, data: bool = True, fold: int | None = None
    ) -> DeviceTrace:
        """`with m.device_trace() as dev:` records what QEMU's IDE/bus-master emulation saw
        (its ide_*/bmdma_* trace events) while active; `dev.events` are PortAccess events.
        data=False leaves out the data-port words (one event per word in QEMU: bulk PIO makes
        huge records). fold=N keeps the first N cycles of a status poll (one read repeated, or
        two in turn, as the DMA wait reads BM Status and Alt Status) and folds the rest into one
        event per read with `repeat` set (a wait polls status thousands of times)."""
        from harness.portio.devtrace import DATA_EVENTS, TRACE_PATTERNS, DeviceTrace

        exclude = () if data else DATA_EVENTS
        return DeviceTrace(self.target, self.ports.port_map, patterns or TRACE_PATTERNS, exclude, fold)
