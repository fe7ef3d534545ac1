"""How a driver request reaches the guest and its result comes back: the mailbox in guest
RAM, filled while the guest is parked, run by continuing to harness_ready. Also the block
holds (hold_io), which change how a call must be run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from harness import abi
from harness.abi import Mailbox, Request
from harness.checks import seconds
from harness.errors import ConfigError, GdbError, HarnessError, HarnessTimeout, QemuError, UsageError
from harness.stops import Stop
from harness.target import PARK_SYMBOL, Target

HOLD_EVENTS = {"read": "read_aio", "write": "write_aio", "flush": "flush_to_disk"}  # blkdebug events
HOLD_POLL = 0.001  # s, between looks at the mailbox while a held call runs
EVENT_DRAIN_EVERY = 128  # requests between reads of QMP events nobody waits for
EVENT_DRAIN_WAIT = 0.001  # s
EVENT_WAIT = 0.05  # s, to let QMP events already sent by QEMU be read


class Mailboxes:
    """The request mailbox on a target. `recover` brings a hung machine back (a reset) and
    `call_timeout` bounds each call; both belong to the machine."""

    def __init__(
        self, target: Target, call_timeout: Callable[[], float], recover: Callable[[], None]
    ) -> None:
        self._t = target
        self._call_timeout = call_timeout
        self._recover = recover
        self._seq = 0
        self._requests = 0
        self._held: set[tuple[int, str]] = set()  # (drive, tag) under hold_io

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
        if not self._t.parked:
            raise HarnessError(
                f"cannot post {request.op.name}: the guest is not parked at {PARK_SYMBOL} (an earlier "
                "call stopped at a breakpoint or was interrupted); finish it with m.cont() until a stop "
                "is parked, or m.reset()",
                artifacts=self._t.artifact_files(),
            )
        self._seq = self._mailbox().seq
        if payload is not None:
            self._t.write_memory(request.buf, payload)
        self._t.write_memory(self._t.symbol("request"), request.pack(self._seq, linger=bool(self._held)))
        self._t.parked = False  # until a cont() brings the guest back to harness_ready

    def cont(self, timeout: float | None = None) -> Stop:
        """Let the guest run until it stops: at harness_ready (parked), or at a breakpoint.
        A guest that does not stop within the timeout is interrupted, its evidence kept in
        hang.txt, the machine reset, and HarnessTimeout raised."""
        self._t.live()
        if self._held:
            return self._cont_releasing_holds()  # a posted call (begin_*) under hold_io
        limit = self._call_timeout() if timeout is None else seconds("timeout", timeout, UsageError)
        try:
            return self._t.run(limit)
        except HarnessTimeout:
            raise self._hung(limit) from None

    def request(self, request: Request, payload: memoryview | bytes | None = None) -> int:
        """Run one driver request; returns the driver's result code."""
        self._requests += 1
        qemu = self._t.qemu
        if self._requests % EVENT_DRAIN_EVERY == 0 and qemu is not None:
            qemu.events(wait=EVENT_DRAIN_WAIT)  # each cont() makes QEMU send STOP and RESUME
        self.post(request, payload)
        stop = self.cont()
        if not stop.parked:
            raise GdbError(
                f"guest stopped at {stop} during {request.op.name} instead of returning to {PARK_SYMBOL}",
                artifacts=self._t.artifact_files(),
            )
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
        self._qemu_io(drive, f"remove_break {tag}")
        self._held.discard((drive, tag))

    def release_holds(self) -> None:
        for drive, tag in sorted(self._held):
            with contextlib.suppress(HarnessError):  # already resumed: the hold had caught one
                self.release_io(drive, tag)
        self._held.clear()

    def forget_holds(self) -> None:
        """The QEMU that held them is gone."""
        self._held.clear()

    def _qemu_io(self, drive: int, command: str) -> None:
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
        while not self._mailbox().done_after(self._seq):
            if time.monotonic() > deadline:
                self._let_holds_go()  # before any stop: QEMU would wait for the held request
                raise self._hung(limit)
            qemu.check_alive()
            time.sleep(HOLD_POLL)  # the guest runs; shared memory is the only thing to watch
        self._let_holds_go()
        stop = self._t.stop_of(self._t.wait_stop(limit, "stop"))
        self._t.parked = stop.parked
        return stop

    def _let_holds_go(self) -> None:
        """Release every hold, then let the lingering guest park."""
        self.release_holds()
        self._t.write_memory(self._t.symbol("request") + abi.LINGER_OFFSET, bytes(4))
