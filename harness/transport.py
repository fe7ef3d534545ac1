"""How a driver request reaches the guest and its result comes back: the mailbox in guest
RAM. Two transports carry it:

- "gdb": filled while the guest is parked at harness_ready, run by continuing it there again
  through GDB (~1.9 ms a call: GDB's continue, QEMU's stop, GDB's report of it);
- "doorbell" (the default): the guest keeps running between calls and polls the mailbox in
  shared RAM; Python writes the request through its mapping of guest RAM and waits for the
  reply there (about a microsecond a round trip). After IDLE_US with no request the guest
  parks at harness_ready by itself, and the next call continues it from GDB. Whatever needs
  GDB or a stopped guest (port watches and breakpoints, inferior calls, snapshots, reboots,
  posted calls run with cont()) first brings it back to harness_ready (Target.settle).

Also the block holds (hold_io), which change how a call must be run."""

from __future__ import annotations

import contextlib
import os
import platform
import struct
import time
from collections.abc import Callable

from harness import abi, procs
from harness.abi import Mailbox, Op, Request
from harness.checks import seconds
from harness.errors import ConfigError, GdbError, HarnessError, HarnessTimeout, QemuError, UsageError
from harness.faults import ARM_FAILS_WITH, ARM_REQUEST, flush_fault_drives
from harness.gdbmi import MiRecord, is_stopped
from harness.stops import Stop
from harness.target import PARK_SYMBOL, PARK_TIMEOUT, Target

# blkdebug events. A flush fires flush_to_os on entering the drive's format node even when it
# finds nothing to write (flush_to_disk only fires when there is): so a hold catches the
# guest's FLUSH after a stop, at which QEMU has already flushed the drive.
HOLD_EVENTS = {"read": "read_aio", "write": "write_aio", "flush": "flush_to_os"}
# Holds put in place only once the guest has been stepped off the park point (_step_off_park):
# every flush QEMU makes at a VM stop fires flush_to_os too.
DEFERRED_HOLDS = ("flush",)
HOLD_POLL = 0.001  # s, between looks at the mailbox while a held call runs
EVENT_DRAIN_EVERY = 128  # requests between reads of QMP events nobody waits for
EVENT_DRAIN_WAIT = 0.001  # s
EVENT_WAIT = 0.05  # s, to let QMP events already sent by QEMU be read
LOST_STEP_RETRIES = 3  # continues again after a step off the park point that did not run (_untouched)
TRANSPORTS = ("doorbell", "gdb")
# The doorbell orders the mailbox's fields before op by writing them first: that holds where
# stores become visible in program order (x86's TSO), not on weaker hosts (Arm, POWER).
DOORBELL_HOSTS = ("x86_64", "amd64", "i386", "i686")
IDLE_US = 10_000  # the guest polls this long for a next request before it parks by itself
HOT_SPIN = 0.00005  # s, Python spins on the reply this long without giving up its core (a short call)
SPIN = 0.001  # s, then spins yielding its core this long, then naps (a long call must not burn one)
NAP_MIN = 0.00005  # s, the first nap; each one doubles up to NAP_MAX
NAP_MAX = 0.001  # s, also how often a long call checks that QEMU and GDB live
_WORD = struct.Struct("<I")


def doorbell_host() -> bool:
    """This host orders plain stores as the doorbell needs (see DOORBELL_HOSTS)."""
    return platform.machine().lower() in DOORBELL_HOSTS


class Mailboxes:
    """The request mailbox on a target. `recover` brings a hung machine back (a reset) and
    `call_timeout` bounds each call; both belong to the machine."""

    def __init__(
        self,
        target: Target,
        call_timeout: Callable[[], float],
        recover: Callable[[], None],
        transport: str = "gdb",
        needs_stops: Callable[[], bool] = lambda: False,
    ) -> None:
        self._t = target
        self._call_timeout = call_timeout
        self._recover = recover
        self.transport = transport
        self.idle_us = IDLE_US  # the guest's doorbell loop before it parks by itself
        # something that watches the guest from its stops is active (port watches, volatile
        # write caches): calls take the GDB way then, whatever the transport
        self._needs_stops = needs_stops
        self._seq = 0
        self._requests = 0
        self._held: set[tuple[int, str]] = set()  # (drive, tag) under hold_io
        self._deferred: dict[tuple[int, str], str] = {}  # holds not yet in QEMU: (drive, tag) -> event
        self._arm: set[int] = set()  # drives whose flush faults the next run arms (a FLUSH is posted)
        self._posted: Request | None = None  # the request posted last
        self._armed: set[int] = set()  # drives whose flush faults are armed in QEMU now
        self.on_post: Callable[[Request], None] | None = None  # told of each request about to run

    @property
    def call_timeout(self) -> float:
        """Seconds one call may take (the machine's call_timeout)."""
        return self._call_timeout()

    # --- the mailbox ---------------------------------------------------------------------
    def _mailbox(self) -> Mailbox:
        return Mailbox.unpack(self._t.read_memory(self._t.symbol("request"), Mailbox.STRUCT.size))

    def post(self, request: Request, payload: memoryview | bytes | None = None) -> None:
        """Fill the mailbox (and the transfer buffer with payload, if given); the next cont()
        runs it. A refused post changes nothing in the guest."""
        self._t.live()
        self._t.settle()
        if not self._t.parked:
            raise self._not_parked(request)
        self._seq = self._mailbox().seq
        self._posted = request
        if payload is not None:
            self._t.write_memory(request.buf, payload)
        self._t.write_memory(self._t.symbol("request"), request.pack(self._seq, linger=bool(self._held)))
        self._t.parked = False  # until a cont() brings the guest back to harness_ready
        if _sends_flush(request) and request.drive in flush_fault_drives(self._t.config.faults):
            self._arm.add(request.drive)
        if self.on_post is not None:
            self.on_post(request)

    def cont(self, timeout: float | None = None) -> Stop:
        """Let the guest run until it stops: at harness_ready (parked), or at a breakpoint.
        A guest that does not stop within the timeout is interrupted, its evidence kept in
        hang.txt, the machine reset, and HarnessTimeout raised."""
        self._t.live()
        limit = self._call_timeout() if timeout is None else seconds("timeout", timeout, UsageError)
        if self._arm or self._deferred:
            self._step_off_park(limit)
        if self._held:
            stop = self._cont_releasing_holds()  # a posted call (begin_*) under hold_io
        else:
            try:
                stop = self._t.run(limit)
                for _ in range(LOST_STEP_RETRIES):
                    if not (stop.parked and self._untouched()):
                        break
                    stop = self._t.run(limit)
            except HarnessTimeout:
                raise self._hung(limit) from None
        if stop.parked:
            self.disarm()
        return stop

    def _untouched(self) -> bool:
        """The posted request is still in the mailbox as posted: the guest stopped at the park
        point again without leaving it. QEMU 7.2 under TCG now and then answers GDB's step off
        the park breakpoint (the first thing of every continue from it) without executing the
        instruction, and GDB reports the breakpoint hit again (seen here about once in 300
        continues once the guest ran with interrupts enabled at the park point, never in 9000
        before; the remote log shows the step's stop with the PC unchanged). Continuing again
        runs the request."""
        box = self._mailbox()
        return self._posted is not None and box.op == self._posted.op and box.seq == self._seq

    def _not_parked(self, request: Request) -> HarnessError:
        return HarnessError(
            f"cannot post {request.op.name}: the guest is not parked at {PARK_SYMBOL} (an earlier "
            "call stopped at a breakpoint or was interrupted); finish it with m.cont() until a stop "
            "is parked, or m.reset()",
            artifacts=self._t.artifact_files(),
        )

    def _drain_events(self) -> None:
        """Each continue makes QEMU send RESUME and each stop STOP: read them now and then."""
        self._requests += 1
        qemu = self._t.qemu
        if self._requests % EVENT_DRAIN_EVERY == 0 and qemu is not None:
            qemu.events(wait=EVENT_DRAIN_WAIT)

    def fast(self, request: Request) -> bool:
        """This request goes through the doorbell (else the GDB way)."""
        return (
            self.transport == "doorbell"
            and self._t.ram is not None
            and not self._deferred  # put in place at a step off the park point
            and not (_sends_flush(request) and request.drive in flush_fault_drives(self._t.config.faults))
            and not self._needs_stops()
        )

    def request(self, request: Request, payload: memoryview | bytes | None = None) -> int:
        """Run one driver request; returns the driver's result code."""
        if self.fast(request):
            return self._ring(request, payload)
        self._drain_events()
        self.post(request, payload)
        stop = self.cont()
        if not stop.parked:
            raise self._stopped_elsewhere(request, stop)
        return self.result(request)

    def result(self, request: Request) -> int:
        """The result of the request posted last, once cont() has parked: raises if the guest
        rebooted on the way (the mailbox was lost)."""
        box = self._mailbox()
        if not box.done_after(self._seq):
            _, qemu = self._t.live()
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
                    log_path=qemu.paths.qemu_log,
                    artifacts=self._t.artifact_files(),
                )
            raise HarnessError(
                f"the guest rebooted or lost the {request.op.name} request (mailbox op={box.op} "
                f"seq={box.seq}, expected seq {self._seq + 1}); serial log tail: "
                f"{self._t.serial_text()[-300:]!r}",
                artifacts=self._t.artifact_files(),
            )
        return box.result

    # --- the doorbell -----------------------------------------------------------------------
    def _ring(self, request: Request, payload: memoryview | bytes | None) -> int:
        """Run one request through the doorbell: the mailbox written through shared RAM, `op`
        last, the guest continued from GDB only if it has parked; then wait for `op` to clear."""
        gdb, _ = self._t.live()
        ram = self._t.ram
        assert ram is not None
        if not (self._t.parked or self._t.serving):
            raise self._not_parked(request)
        if not gdb.alive():  # a serving guest needs no GDB to answer: a dead one must not pass
            raise GdbError(
                f"GDB died (exit status {gdb.proc.poll() if gdb.proc else None}) before "
                f"{request.op.name}; power_cycle() or close the machine",
                artifacts=self._t.artifact_files(),
            )
        addr = self._t.symbol("request")  # (a dead QEMU is noticed while waiting: _await)
        self._seq = _WORD.unpack_from(ram, addr + abi.SEQ_OFFSET)[0]
        self._posted = request
        for hook in self._t.doorbell_hooks:
            hook(request, self._seq, bool(self._held))
        if payload is not None:
            self._t.write_memory(request.buf, payload)
        packed = request.pack(self._seq, linger=bool(self._held))
        # Every field, then op (the doorbell): a guest that sees op sees the rest, since x86
        # makes stores visible in program order and these are two separate copies.
        ram[addr + abi.OP_OFFSET + 4 : addr + len(packed)] = packed[abi.OP_OFFSET + 4 :]
        ram[addr + abi.OP_OFFSET : addr + abi.OP_OFFSET + 4] = packed[abi.OP_OFFSET : abi.OP_OFFSET + 4]
        if not self._t.serving:
            self._wake()
        limit = self._call_timeout()
        try:
            self._await(request, addr + abi.OP_OFFSET, limit)
        except KeyboardInterrupt:
            if self._t.serving:  # (a wait for a stop has stopped it already)
                with procs.signals_deferred():
                    self._t.stop_after_ctrl_c()
            raise
        if self._held:
            self._let_holds_go()
        # op is clear: the result and seq are final (the dispatcher writes op last)
        if _WORD.unpack_from(ram, addr + abi.SEQ_OFFSET)[0] == abi.next_seq(self._seq):
            return int(abi.RESULT_FIELD.unpack_from(ram, addr + abi.RESULT_OFFSET)[0])
        if self._t.serving:
            # op cleared by a reboot (a triple fault resets the machine): the guest is on its
            # way back to harness_ready; take that stop, then say what happened
            self._t.serving = False
            rec = self._t.wait_stop(self._t.boot_timeout, f"stop at {PARK_SYMBOL} after a lost request")
            self._t.parked = self._t.stop_of(rec).parked
        return self.result(request)

    def _wake(self) -> None:
        """Continue the parked guest into its doorbell loop."""
        self._drain_events()
        self._t.serve(self.idle_us)

    def _await(self, request: Request, op_addr: int, limit: float) -> None:
        """Until the guest clears op: spin briefly, then nap, checking that QEMU and GDB live and
        whether the guest stopped (a breakpoint, QEMU pausing the VM); at most `limit` s."""
        gdb, qemu = self._t.live()
        ram = self._t.ram
        assert ram is not None
        parking = self._t.symbol("doorbell") + abi.PARKING_OFFSET
        now = time.monotonic()
        hot_end, spin_end, deadline, nap = now + HOT_SPIN, now + SPIN, now + limit, NAP_MIN
        while _WORD.unpack_from(ram, op_addr)[0] != Op.NONE:
            if _WORD.unpack_from(ram, parking)[0]:  # parked before it saw op: wake it again
                self._t.serving = False
                self._stopped(request, self._t.wait_stop(PARK_TIMEOUT, f"stop at {PARK_SYMBOL}"))
                continue
            now = time.monotonic()
            if now < hot_end:
                continue
            if now < spin_end:
                # QEMU's own threads (the block layer's workers, its main loop) must run for a
                # DMA to finish: a spin that never gives up the core starves them on a small host
                os.sched_yield()
                continue
            if now > deadline:
                if self._held:
                    self._let_holds_go()  # before any stop: QEMU would wait for the held request
                raise self._hung(limit)
            qemu.check_alive()
            rec = gdb.poll_async(is_stopped)
            if rec is not None:
                self._stopped(request, rec)
            time.sleep(nap)
            nap = min(nap * 2, NAP_MAX)

    def _stopped(self, request: Request, rec: MiRecord) -> None:
        """The serving guest stopped: parked before it saw the request (it is woken again), or
        anywhere else during it (an error, as on the GDB way)."""
        self._t.serving = False
        self._t.parked = False
        stop = self._t.stop_of(rec)  # QemuError if QEMU paused the VM (io_error="stop")
        self._t.parked = stop.parked
        if not stop.parked:
            raise self._stopped_elsewhere(request, stop)
        if self._mailbox().op != Op.NONE:
            self._wake()

    def _stopped_elsewhere(self, request: Request, stop: Stop) -> GdbError:
        return GdbError(
            f"guest stopped at {stop} during {request.op.name} instead of returning to {PARK_SYMBOL}",
            artifacts=self._t.artifact_files(),
        )

    def _hung(self, limit: float) -> HarnessTimeout:
        """Keep the evidence of a guest that did not stop, reset; the error to raise."""
        first, hang = self._t.hang_evidence(limit)
        try:
            self._recover()
            recovered = "the machine was reset to harness_ready"
        except HarnessError as exc:
            recovered = f"and could not be reset ({exc}); close it"
        return HarnessTimeout(
            f"{first}; interrupted, {recovered}", artifacts=[hang, *self._t.artifact_files()]
        )

    # --- holding the block layer (blkdebug break) ---------------------------------------
    def hold_io(self, drive: int, op: str, tag: str, *, faults: set[int], watching: bool) -> None:
        """See Machine.hold_io."""
        if not isinstance(op, str) or op not in HOLD_EVENTS:
            raise ConfigError(f"hold_io op {op!r:.40} is not one of {', '.join(HOLD_EVENTS)}")
        if not isinstance(tag, str) or not tag.isidentifier():
            raise ConfigError(f"hold_io tag {tag!r:.40} must be a name (letters, digits, _)")
        if drive not in faults:
            raise ConfigError(
                f"hold_io needs blkdebug on drive {drive}: Machine(..., faults={{{drive}: []}})"
            )
        if not self._t.shared_ram:
            raise ConfigError("hold_io needs data_path='shm': the guest is watched while it runs")
        if watching:
            raise ConfigError(
                "hold_io with port watches or port breakpoints active would stop the VM "
                "with a request held, which QEMU never survives; end them first"
            )
        if op in DEFERRED_HOLDS:
            self._deferred[(drive, tag)] = HOLD_EVENTS[op]
        else:
            self._qemu_io(drive, f"break {HOLD_EVENTS[op]} {tag}")
        self._held.add((drive, tag))

    @property
    def held(self) -> frozenset[tuple[int, str]]:
        return frozenset(self._held)

    def refuse_while_held(self, what: str) -> None:
        if self._held:
            raise ConfigError(
                f"{what} while hold_io is in place would stop the VM with a request held, which QEMU "
                "never survives; use m.ata calls, or release_io() first"
            )

    def release_io(self, drive: int, tag: str) -> None:
        """End a hold: a suspended request goes on, later ones are not held."""
        if self._deferred.pop((drive, tag), None) is None:
            self._qemu_io(drive, f"remove_break {tag}")
        self._held.discard((drive, tag))

    def release_holds(self) -> None:
        for drive, tag in sorted(self._held):
            with contextlib.suppress(HarnessError):  # already resumed: the hold had caught one
                self.release_io(drive, tag)
        self._held.clear()

    def forget_holds(self) -> None:
        """The QEMU that held them (and had flush faults armed) is gone."""
        self._held.clear()
        self._deferred.clear()
        self._arm.clear()
        self._armed.clear()

    # --- arming flush faults around the guest's own FLUSH ---------------------------------
    def _step_off_park(self, limit: float) -> None:
        """Put deferred holds and flush faults in place, once the guest is off the park point.

        GDB resumes from the park breakpoint by single-stepping over it, and that step is a VM
        stop of its own, at which QEMU flushes every image (as at every stop). Armed before the
        continue, a one-shot flush fault was spent on that flush and the guest's FLUSH went
        through (measured); a flush hold would catch it and hang the stop. So the guest is
        stepped off the park point first (one instruction: harness_ready's return) and they are
        put in place at that stop; the continue that follows needs no step of GDB's own."""
        for _ in range(LOST_STEP_RETRIES):
            if self._t.step(limit).function != PARK_SYMBOL:  # a step may not run (_untouched)
                break
        for drive in sorted(self._arm):
            self._toggle_flush_faults(drive)
            self._armed.add(drive)
        self._arm.clear()
        for (drive, tag), event in sorted(self._deferred.items()):
            self._qemu_io(drive, f"break {event} {tag}")
        self._deferred.clear()

    def disarm(self) -> None:
        """Disarm the flush faults armed for the call that has now finished (or was reset)."""
        for drive in sorted(self._armed):
            self._armed.discard(drive)
            self._toggle_flush_faults(drive)
        self._arm.clear()

    def _toggle_flush_faults(self, drive: int) -> None:
        """Arm a drive's flush faults, or disarm them (each request toggles: faults.py)."""
        self._qemu_io(drive, ARM_REQUEST, expect=ARM_FAILS_WITH)

    def _qemu_io(self, drive: int, command: str, expect: str | None = None) -> None:
        _, qemu = self._t.live()
        log_path = qemu.paths.qemu_log
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
        if expect is not None:  # a request that must fail, and fail with this
            if out or len(failed) != 1 or expect not in failed[0]:
                raise QemuError(
                    f"qemu-io {command!r} on drive {drive} should have failed with {expect!r}, and said: "
                    f"{out or '; '.join(failed) or 'nothing'}",
                    artifacts=self._t.artifact_files(),
                )
            return
        if out or failed:
            raise QemuError(
                f"qemu-io {command!r} on drive {drive}: {out or '; '.join(failed)}",
                artifacts=self._t.artifact_files(),
            )

    def _cont_releasing_holds(self) -> Stop:
        """cont() for a call made under hold_io: watch the mailbox while the guest runs; once
        the driver has returned, let the held requests go, then let the guest park."""
        self._t.resume()
        limit = self._call_timeout()
        deadline = time.monotonic() + limit
        _, qemu = self._t.live()
        gdb, _ = self._t.live()
        while not self._mailbox().done_after(self._seq):
            if time.monotonic() > deadline:
                self._let_holds_go()  # before any stop: QEMU would wait for the held request
                raise self._hung(limit)
            qemu.check_alive()
            rec = gdb.poll_async(is_stopped)
            if rec is not None:  # stopped before the driver returned
                stop = self._t.stop_of(rec)
                if stop.parked and self._untouched():
                    self._t.resume()  # the lost step off the park point (_untouched)
                    continue
                self._let_holds_go()
                self._t.parked = stop.parked
                return stop
            time.sleep(HOLD_POLL)  # the guest runs; shared memory is the only thing to watch
        self._let_holds_go()
        stop = self._t.stop_of(self._t.wait_stop(limit, "stop"))
        self._t.parked = stop.parked
        return stop

    def _let_holds_go(self) -> None:
        """Release every hold, then let the lingering guest park."""
        self.release_holds()
        self._t.write_memory(self._t.symbol("request") + abi.LINGER_OFFSET, bytes(4))


def _sends_flush(request: Request) -> bool:
    """The request makes the driver send a FLUSH CACHE, or SET FEATURES 82h (QEMU flushes on it)."""
    return request.op == Op.FLUSH or (request.op == Op.SET_WCACHE and request.arg == 0)
