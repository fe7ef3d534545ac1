"""The target: one QEMU and one GDB joined. Boot and halt, run and stop, guest memory and
symbols, inferior calls, and the evidence a hung guest leaves."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

from harness import abi, artifacts, procs, rundir
from harness.checks import is_int, seconds
from harness.errors import GdbError, HarnessError, HarnessTimeout, QemuError, UsageError
from harness.gdbmi import GdbMi, MiRecord, is_stopped
from harness.qemu import QemuConfig, QemuPaths, QemuProcess
from harness.stops import Stop

log = logging.getLogger(__name__)

PARK_SYMBOL = "harness_ready"
HANG_INTERRUPT_TIMEOUT = 5.0  # s, for a running guest to stop after -exec-interrupt
PARK_TIMEOUT = 5.0  # s, for a guest in its doorbell loop to park once asked (idle_us = 0)
GDB_SETTINGS = (
    "mi-async on",  # else -exec-interrupt is ignored while the guest runs
    "confirm off",
    "pagination off",
    "width 0",
    "unwindonsignal on",  # a SIGINT aborts a hung inferior call
    "breakpoint always-inserted on",
)
# name -> the expression GDB evaluates once per kernel
SYMBOLS = {
    "xfer_buf": "(unsigned)harness_xfer_buf",
    "xfer_size": "harness_xfer_size",
    "last_error": "(unsigned)&ata_last_error",
    "request": "(unsigned)&harness_request",
    "doorbell": "(unsigned)&harness_doorbell",
}
# Called with every new Target: observers that watch every machine (harness/coverage/).
TARGET_HOOKS: list[Callable[[Target], None]] = []


class Target:
    """QEMU (started paused) and GDB attached to it, stopped at harness_ready once booted.

    GDB is kept across reboots (its symbols load once); QEMU is new on every cold boot. Code
    that must run whenever the guest resumes, or that explains a stop, registers a hook.
    """

    def __init__(self, config: QemuConfig, *, gdb_binary: str, data_path: str, boot_timeout: float) -> None:
        self.config = config
        self.gdb_binary = gdb_binary
        self.data_path = data_path
        self.boot_timeout = boot_timeout
        self.paths: QemuPaths | None = None
        self.qemu: QemuProcess | None = None
        self.gdb: GdbMi | None = None
        self.parked = False  # at harness_ready with no posted request still to run
        # continued into the doorbell loop (serve()), its stop at harness_ready not yet taken:
        # the guest takes requests from shared RAM, or has parked by itself after idling
        self.serving = False
        self.boots = 0
        self.down = ""  # why the target cannot take calls (closed, a reboot failed), if so
        self.resume_hooks: list[Callable[[], None]] = []  # before every resume (port watches arm)
        # before a request goes through the doorbell, where nothing resumes: (request, its seq,
        # held); the mailbox still holds the call before it, finished
        self.doorbell_hooks: list[Callable[[abi.Request, int, bool], None]] = []
        self.stop_hooks: list[Callable[[Stop], Stop]] = []  # explain a stop that is not the park
        self.device_traces = 0  # device_trace() contexts active (harness/portio/devtrace.py)
        self.boot_hooks: list[Callable[[], None]] = []  # a new QEMU is up (paused), before it runs
        self.halt_hooks: list[Callable[[], None]] = []  # a QEMU has gone (its logs are complete)
        # Guest RAM is about to be lost or rolled back ("reset", "halt", "kill", "loadvm"; still
        # readable), or has just been rolled back ("loaded"): gcov counters live there.
        self.ram_hooks: list[Callable[[str], None]] = []
        self._ram: mmap.mmap | None = None
        self._ram_dir: Path | None = None  # where the RAM file went when rundir had no room
        self._symbols: dict[str, int] = {}
        self._park_bp = "1"  # GDB's number for the park breakpoint
        for hook in TARGET_HOOKS:
            hook(self)

    # --- files -----------------------------------------------------------------------
    def use(self, paths: QemuPaths) -> None:
        """Where this target's sockets, RAM and logs go (before boot())."""
        self.paths = paths

    def _paths(self) -> QemuPaths:
        assert self.paths is not None, "target has no paths: use() first"
        return self.paths

    def artifact_files(self) -> list[Path]:
        """The logs that explain an error: serial, QEMU, GDB/MI transcript."""
        if self.paths is None:
            return []
        p = self.paths
        return [f for f in (p.serial_log, p.qemu_log, p.gdb_log) if f is not None]

    def serial_text(self) -> str:
        with contextlib.suppress(OSError, AssertionError):
            return self._paths().serial_log.read_text(errors="replace")
        return ""

    # --- boot and halt ---------------------------------------------------------------
    def boot(self) -> None:
        """Start a fresh QEMU (paused), attach GDB (kept across reboots), run to harness_ready."""
        paths = self._paths()
        gdb_log = paths.gdb_log
        assert paths.rundir is not None and gdb_log is not None
        ram = rundir.reserve_ram(paths.rundir, self.config.memory_mib << 20)  # a cold boot: fresh RAM
        if ram.parent != paths.rundir:
            self._ram_dir = ram.parent
        paths = dataclasses.replace(paths, ram_file=ram)
        t0 = time.perf_counter()
        new_gdb = self.gdb is None
        if self.gdb is None:
            self.gdb = GdbMi(
                self.gdb_binary,
                self.config.kernel,
                gdb_log,
                paths.gdb_cmdline,
                artifacts=self.artifact_files(),
            )
            self.gdb.spawn()  # loads symbols while QEMU starts
            self.gdb.before_command = self.settle
        self.serving = False
        self.qemu = QemuProcess(self.config, paths)
        self.qemu.start()
        for hook in self.boot_hooks:
            hook()
        gdb = self.gdb
        if new_gdb:
            gdb.wait_ready()
            for setting in GDB_SETTINGS:
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
        self.continue_to_park()
        if self.data_path == "shm":
            fd = os.open(ram, os.O_RDWR)
            try:
                self._ram = mmap.mmap(fd, self.config.memory_mib << 20, mmap.MAP_SHARED)
            finally:
                os.close(fd)
        # QEMU and our mapping hold the RAM file open: its name is not needed any more, and
        # without one nothing is left in /dev/shm however this process ends.
        ram.unlink(missing_ok=True)
        self._resolve_symbols()
        self.boots += 1
        self.down = ""
        log.debug("booted to %s in %.1f ms", PARK_SYMBOL, (time.perf_counter() - t0) * 1e3)

    def halt(self, clean: bool, keep_gdb: bool = False) -> None:
        """Stop QEMU (quit or SIGKILL); stop GDB too unless it is to attach to the next QEMU."""
        if self.serving and self.qemu is not None and self.qemu.poll() is None:
            # GDB goes on from a stopped target, as after a call on its own path
            with contextlib.suppress(HarnessError):
                self.settle()
        self.serving = False
        self.parked = False
        if self.qemu is not None:
            self._ram_event("halt" if clean else "kill")
        if self._ram is not None:
            self._ram.close()
            self._ram = None
        if self.qemu is not None:
            if clean:
                self.qemu.quit()
            else:
                self.qemu.kill()
            self.qemu = None
            for hook in self.halt_hooks:
                hook()
        if self.gdb is not None:
            if keep_gdb and self.gdb.alive():
                with contextlib.suppress(GdbError, HarnessTimeout):
                    self.gdb.command("-target-disconnect")
            else:
                self.gdb.close()
                self.gdb = None
        if self.paths is not None:
            self.paths.ram_file.unlink(missing_ok=True)
        if self._ram_dir is not None:
            shutil.rmtree(self._ram_dir, ignore_errors=True)
            self._ram_dir = None

    def _ram_event(self, what: str) -> None:
        for hook in self.ram_hooks:
            hook(what)

    def live(self) -> tuple[GdbMi, QemuProcess]:
        """GDB and QEMU, or HarnessError saying why there are none."""
        if self.down or self.gdb is None or self.qemu is None:
            raise HarnessError(
                self.down or "the machine is not running (use it inside `with Machine(...)`, or start())",
                artifacts=self.artifact_files(),
            )
        return self.gdb, self.qemu

    @property
    def pids(self) -> list[int]:
        return [p for p in (self.qemu and self.qemu.pid, self.gdb and self.gdb.pid) if p]

    # --- run and stop ------------------------------------------------------------------
    def resume(self, idle_us: int = 0) -> None:
        """Let the guest run (the hooks first: port watches arm their breakpoints). idle_us:
        how long the guest polls the doorbell for a next request before it parks."""
        gdb, qemu = self.live()
        self.settle()
        for hook in self.resume_hooks:
            hook()
        self._doorbell(abi.PARKING_OFFSET, 0)
        self._doorbell(abi.IDLE_US_OFFSET, idle_us)
        gdb.discard_async()
        gdb.command("-exec-continue", alive=qemu.check_alive)

    def serve(self, idle_us: int) -> None:
        """Continue the parked guest into its doorbell loop: it takes requests from shared RAM
        until idle_us pass without one, then parks by itself (GDB reports that stop, taken by
        the next settle())."""
        self.resume(idle_us)
        self.parked = False
        self.serving = True

    def settle(self) -> None:
        """A guest serving the doorbell goes back to harness_ready, stopped, for whatever needs
        GDB or a stopped VM next (every GDB command comes here first); else nothing."""
        if not self.serving:
            return
        self.serving = False  # first: the GDB commands below must not come back here
        gdb, qemu = self.live()
        self._doorbell(abi.IDLE_US_OFFSET, 0)  # re-read on every round of the guest's loop
        stop = self.stop_of(self.wait_stop(PARK_TIMEOUT, f"stop at {PARK_SYMBOL} (doorbell loop ended)"))
        self.parked = stop.parked
        if not stop.parked:
            raise GdbError(
                f"the guest stopped at {stop} on its way from the doorbell loop to {PARK_SYMBOL}",
                artifacts=self.artifact_files(),
            )

    def _doorbell(self, offset: int, value: int) -> None:
        """Set a harness-owned word of the doorbell (shared RAM only; nothing before the
        symbols are known: the boot's guest RAM holds zeros, the settings for a parked guest)."""
        addr = self._symbols.get("doorbell")
        if self._ram is not None and addr is not None:
            struct.pack_into("<I", self._ram, addr + offset, value)

    @property
    def ram(self) -> mmap.mmap | None:
        """Guest RAM, mapped here (data_path="shm"), else None."""
        return self._ram

    def wait_stop(self, limit: float, what: str) -> MiRecord:
        """The guest's next stop within limit. Ctrl-C meanwhile stops the guest before it is
        passed on, so that cont() and reset() work afterwards, as the errors advise."""
        gdb, qemu = self.live()
        try:
            return gdb.wait_async(is_stopped, limit, what, qemu.check_alive)
        except KeyboardInterrupt:
            with procs.signals_deferred():
                self.stop_after_ctrl_c()
            raise

    def stop_after_ctrl_c(self) -> None:
        self.parked = False
        self.serving = False  # interrupted wherever it is, not asked to park
        try:
            gdb, qemu = self.live()
            gdb.command("-exec-interrupt", alive=qemu.check_alive)
            rec = gdb.wait_async(is_stopped, HANG_INTERRUPT_TIMEOUT, "stop after Ctrl-C", qemu.check_alive)
        except HarnessError as exc:
            log.warning("interrupted; the guest could not be stopped (%s): power_cycle() or close()", exc)
            return
        stop = self.stop_of(rec)
        self.parked = stop.parked
        log.warning(
            "interrupted; the guest is stopped at %s: m.cont() finishes the call, m.reset() drops it", stop
        )

    def stop_of(self, rec: MiRecord) -> Stop:
        """A *stopped record as a Stop, explained by the stop hooks when it is not the park."""
        payload = rec.payload if isinstance(rec.payload, dict) else {}
        stop = Stop.from_mi(payload, PARK_SYMBOL)
        if payload.get("reason") == "signal-received":
            self._check_paused(stop)
        if not stop.parked:
            for hook in self.stop_hooks:
                stop = hook(stop)
        return stop

    def run(self, limit: float) -> Stop:
        """Resume and wait for the next stop; HarnessTimeout (the guest still running) after limit."""
        self.resume()
        stop = self.stop_of(self.wait_stop(limit, "stop"))
        self.parked = stop.parked
        return stop

    def step(self, limit: float) -> Stop:
        """Run the guest for one instruction (a VM stop of its own, like any other)."""
        gdb, qemu = self.live()
        gdb.discard_async()
        gdb.command("-exec-step-instruction", alive=qemu.check_alive)
        stop = self.stop_of(self.wait_stop(limit, "stop after one instruction"))
        self.parked = False  # off the park point, or back at it with the posted request still to run
        return stop

    def continue_to_park(self) -> None:
        """Run to harness_ready (after a boot or reset); anything else is a GdbError."""
        gdb, qemu = self.gdb, self.qemu  # during boot(): not live() yet
        assert gdb is not None and qemu is not None
        self.parked = False
        for hook in self.resume_hooks:
            hook()  # a watch entered before a reset sees the boot's accesses
        self._doorbell(abi.IDLE_US_OFFSET, 0)  # a snapshot's RAM may hold a serving one
        gdb.discard_async()
        gdb.command("-exec-continue", alive=qemu.check_alive)
        rec = gdb.wait_async(is_stopped, self.boot_timeout, f"stop at {PARK_SYMBOL}", qemu.check_alive)
        payload = rec.payload if isinstance(rec.payload, dict) else {}
        frame = payload.get("frame") or {}
        if payload.get("reason") != "breakpoint-hit" or frame.get("func") != PARK_SYMBOL:
            where = f"{frame.get('func', '?')} at {frame.get('addr', '?')}"
            raise GdbError(
                f"guest stopped in {where} ({payload.get('reason', 'no reason')}) instead of "
                f"{PARK_SYMBOL}; serial log tail: {self.serial_text()[-300:]!r}",
                artifacts=self.artifact_files(),
            )
        self.parked = True

    def _check_paused(self, stop: Stop) -> None:
        """A signal stop may be QEMU pausing the VM (io-error); say so instead of hanging."""
        _, qemu = self.live()
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
                f"{detail or 'no event detail'}; the guest stopped at {stop}. "
                "reset() or power_cycle() to go on",
                log_path=self._paths().qemu_log,
                artifacts=self.artifact_files(),
            )

    def system_reset(self) -> None:
        """QMP system_reset, then run to harness_ready again (same QEMU, same RAM file)."""
        gdb, qemu = self.live()
        self.settle()
        self._ram_event("reset")
        qemu.command("system_reset")
        qemu.events()  # RESET, STOP, RESUME...: nobody asked; do not let them pile up
        gdb.command("maint flush register-cache")
        self.continue_to_park()

    def hang_evidence(self, limit: float) -> tuple[str, Path]:
        """Interrupt a guest that did not stop and write what it was doing to hang.txt;
        returns the first line (for the error) and the file."""
        gdb, qemu = self.live()
        evidence = [f"the guest did not return to {PARK_SYMBOL} within {limit:g} s"]
        self.serving = False  # interrupted where it hangs, not asked to park
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
        hang = self._paths().hang_file
        assert hang is not None
        try:
            artifacts.write_text(hang, "\n".join(evidence) + "\n")
        except HarnessError as exc:
            log.warning("hang evidence not written: %s", exc)
        return evidence[0], hang

    # --- symbols, expressions, calls -------------------------------------------------------
    def _resolve_symbols(self) -> None:
        if self._symbols:
            return
        for name, expr in SYMBOLS.items():
            self._symbols[name] = self.evaluate(expr, self.boot_timeout)
        abi.check_layout(lambda symbol: self.evaluate(f"sizeof({symbol})", self.boot_timeout))

    def symbol(self, name: str) -> int:
        """An address or value resolved at boot: one of SYMBOLS' names."""
        if name not in self._symbols:
            raise UsageError(f"symbol {name!r:.40} is not one of {', '.join(SYMBOLS)}")
        return self._symbols[name]

    def evaluate(self, expr: str, timeout: float) -> int:
        """A C expression (function calls included) evaluated in the guest, as an integer."""
        value = self.call(expr, timeout)
        if value is None:
            raise GdbError(f"{expr[:200]!r} has no value (void)", artifacts=self.artifact_files())
        return value

    def call(self, expr: str, timeout: float) -> int | None:
        """Like evaluate(), but a void function's call gives None."""
        gdb, qemu = self.live()
        value = gdb.evaluate(expr, seconds("timeout", timeout, UsageError), qemu.check_alive, True)
        if value == "void":
            return None
        try:
            return int(value.split()[0], 0)
        except (ValueError, IndexError):
            raise GdbError(
                f"{expr[:200]!r} gave {value[:200]!r}, not an integer", artifacts=self.artifact_files()
            ) from None

    # --- memory ----------------------------------------------------------------------------
    def _span(self, addr: object, length: int) -> int:
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
        addr = self._span(addr, length)
        if self._ram is not None:
            return self._ram[addr : addr + length]
        gdb, _ = self.live()
        return gdb.read_memory(addr, length)

    def read_into(self, addr: int, view: memoryview) -> None:
        """Fill a writable byte view from guest RAM at addr: one copy from the shared mapping
        (else through GDB)."""
        addr = self._span(addr, view.nbytes)
        if self._ram is None:
            gdb, _ = self.live()
            view[:] = gdb.read_memory(addr, view.nbytes)
            return
        with memoryview(self._ram) as ram:  # released at once: an exported mapping cannot close
            view[:] = ram[addr : addr + view.nbytes]

    def write_memory(self, addr: int, data: bytes | memoryview) -> None:
        """Write data (bytes-like) into guest RAM at addr."""
        view = memoryview(data).cast("B")
        addr = self._span(addr, view.nbytes)
        if self._ram is not None:
            self._ram[addr : addr + view.nbytes] = view
            return
        gdb, _ = self.live()
        gdb.write_memory(addr, view)

    @property
    def shared_ram(self) -> bool:
        """Guest RAM is mapped here (data_path='shm'): it can be watched while the guest runs."""
        return self._ram is not None

    # --- breakpoints and snapshots ----------------------------------------------------------
    def clear_breakpoints(self) -> None:
        """Delete every GDB breakpoint but the park one (and make sure that one is enabled)."""
        gdb, _ = self.live()
        body = gdb.command("-break-list").payload.get("BreakpointTable", {}).get("body", [])
        for number in [b.get("number") for b in body if b.get("number") != self._park_bp]:
            gdb.command(f"-break-delete {number}")
        park = [b for b in body if b.get("number") == self._park_bp]
        if not park:
            raise GdbError(f"the park breakpoint on {PARK_SYMBOL} is gone", artifacts=self.artifact_files())
        if park[0].get("enabled") != "y":
            gdb.command(f"-break-enable {self._park_bp}")

    def snapshot(self, verb: str, name: str) -> None:
        """savevm or loadvm through HMP (QEMU's internal qcow2 snapshots). After loadvm the
        guest is parked again, and GDB knows it."""
        gdb, qemu = self.live()
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise UsageError(f"snapshot name {name!r:.40}: use letters, digits, - and _")
        self.settle()  # savevm and loadvm at the park point, as GDB last saw the guest
        was_parked = self.parked
        if verb == "loadvm":
            self._ram_event("loadvm")
        out = str(qemu.command("human-monitor-command", **{"command-line": f"{verb} {name}"})).strip()
        qemu.events()
        if out:  # HMP prints nothing on success
            raise QemuError(f"{verb} {name}: {out}", artifacts=self.artifact_files())
        if verb != "loadvm":
            return
        self._ram_event("loaded")
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
            self.continue_to_park()
        self.parked = True  # snapshots are taken parked, with no request pending
