"""The driver side: port accesses recorded through GDB breakpoints on every in/out in the
kernel (the GDB half is gdb_agent.py), and port breakpoints that stop the guest."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from harness.errors import GdbError, HarnessError
from harness.gdbmi import mi_quote
from harness.portio.access import BMIBA_DEFAULT, PortAccess, PortError, PortMap
from harness.portio.compare import normalize
from harness.portio.recorder import Recorder

if TYPE_CHECKING:
    from harness.gdbmi import GdbMi
    from harness.stops import Stop
    from harness.target import Target

log = logging.getLogger(__name__)

AGENT_PATH = Path(__file__).with_name("gdb_agent.py")
AGENT_REPLY = "piix3-ports-reply: "  # gdb_agent.REPLY_PREFIX
AGENT_TIMEOUT = 30.0  # s, for one agent request (the first one disassembles the kernel)
DATA_CAPTURE_LIMIT = 1 << 20  # bytes of string-transfer data one watch keeps (then data=None)


def events_from_agent(raw: Sequence[dict[str, Any]], pmap: PortMap) -> list[PortAccess]:
    """PortAccess events from the agent's JSON records, named and decoded with pmap."""
    out = []
    for e in raw:
        w = e.get("where") or {}
        where = str(w.get("function", ""))
        if w.get("file"):
            where += f" ({w['file']}:{w.get('line')})"
        out.append(
            pmap.access(
                e["direction"],
                int(e["port"]),
                int(e["width"]),
                e["value"],
                int(e["count"]),
                buffer=e.get("buffer"),
                data=bytes.fromhex(e["data"]) if e.get("data") is not None else None,
                where=where,
                pc=e.get("pc"),
            )
        )
    return out


class PortsAgent:
    """Loads gdb_ports_agent.py into the machine's GDB and talks to it; one per Machine."""

    def __init__(self, target: Target) -> None:
        self._m = target
        self._gdb: GdbMi | None = None
        self._map: PortMap | None = None
        self._map_boot = -1
        self.watchers: dict[int, str] = {}  # agent id -> what it watches, while active
        self.pending: list[PortWatch] = []  # watches entered but not armed: the guest has not run
        self._errors_seen = 0
        target.resume_hooks.append(self.arm_pending)  # watches arm when the guest next runs
        target.stop_hooks.append(self._explain_if_watching)
        target.ram_hooks.append(self._forget_in_flight)

    def _forget_in_flight(self, what: str) -> None:
        """A reset or snapshot restore: the agent drops the accesses it saw begin (an `in` that
        has not reached its next instruction, an `out` just recorded)."""
        if what in ("reset", "loadvm") and self._gdb is not None and self._gdb is self._m.gdb:
            self.call("forget", {})

    def _explain_if_watching(self, stop: Stop) -> Stop:
        return self.explain(stop) if self.active else stop

    @property
    def active(self) -> bool:
        return bool(self.watchers)

    def _loaded(self) -> GdbMi:
        gdb, qemu = self._m.live()
        if self._gdb is not gdb:
            gdb.command(
                f"-interpreter-exec console {mi_quote(f'source {AGENT_PATH}')}", alive=qemu.check_alive
            )
            self._gdb = gdb
            self.watchers.clear()
            self._errors_seen = 0
        return gdb

    def call(self, action: str, args: dict[str, Any] | None = None, timeout: float = AGENT_TIMEOUT) -> Any:
        """One request to the agent; its JSON reply."""
        gdb = self._loaded()
        _, qemu = self._m.live()
        command = f"piix3-ports {action}"
        if args is not None:
            command += " " + json.dumps(args).encode().hex()
        res = gdb.command(f"-interpreter-exec console {mi_quote(command)}", timeout, qemu.check_alive)
        text = "".join(res.console)
        for line in text.splitlines():
            if line.startswith(AGENT_REPLY):
                return json.loads(line[len(AGENT_REPLY) :])
        raise GdbError(
            f"the ports agent gave no reply to {action!r}: {text[-300:]!r}",
            artifacts=self._m.artifact_files(),
        )

    def clear(self) -> None:
        """Forget every watch and port breakpoint, armed or not (a snapshot restore between tests)."""
        self.pending.clear()
        if self._gdb is not None and self._gdb is self._m.gdb:
            self.call("clear", {})
        self.watchers.clear()

    def arm_pending(self) -> None:
        """Arm the watches entered since the guest last ran (the Machine calls this before it
        lets the guest run): an idle watch costs nothing."""
        for watch in list(self.pending):
            watch.arm()

    def port_map(self) -> PortMap:
        """The PIIX3 map with the bus-master base the driver uses (read once per boot)."""
        if self._map is None or self._map_boot != self._m.boots:
            try:
                base = self._m.evaluate("'ata.c'::channels[0].bm", AGENT_TIMEOUT) & 0xFFFC  # the driver's own
            except HarnessError:
                base = 0
            self._map = PortMap(base or BMIBA_DEFAULT)
            self._map_boot = self._m.boots
        return self._map

    def watch(
        self,
        ranges: Sequence[tuple[int, int]],
        *,
        what: str,
        direction: str | None = None,
        value: int | None = None,
        stop: bool = False,
        capture: int = DATA_CAPTURE_LIMIT,
    ) -> int:
        if direction not in (None, "in", "out"):
            raise PortError(f"direction {direction!r} is not 'in', 'out' or None")
        spec = {
            "ranges": [list(r) for r in ranges],
            "direction": direction,
            "value": value,
            "stop": stop,
            "capture": capture,
        }
        reply = self.call("watch", spec)
        ident = int(reply["id"])
        self.watchers[ident] = what
        log.debug("watching %s (agent id %d, %d breakpoints)", what, ident, reply["breakpoints"])
        return ident

    def unwatch(self, ident: int) -> tuple[list[PortAccess], int]:
        """Stop watching; the events seen and the hits (stops). With no watcher left, checks
        that no breakpoint of ours remains."""
        self.watchers.pop(ident, None)
        reply = self.call("unwatch", {"id": ident})
        if not self.watchers and reply["breakpoints"]:
            raise PortError(
                f"{reply['breakpoints']} port breakpoints remain after the last watch ended",
                artifacts=self._m.artifact_files(),
            )
        if reply.get("error_count", 0) > self._errors_seen:
            self._errors_seen = reply["error_count"]
            raise PortError(
                f"recording failed at {reply['error_count']} breakpoint hit(s), the record is incomplete: "
                + "; ".join(reply.get("errors", [])),
                artifacts=self._m.artifact_files(),
            )
        return self.events_from(reply["events"]), int(reply["hits"])

    def events(self, ident: int, clear: bool = False) -> list[PortAccess]:
        return self.events_from(self.call("events", {"id": ident, "clear": clear})["events"])

    def events_from(self, raw: Sequence[dict[str, Any]]) -> list[PortAccess]:
        return events_from_agent(raw, self.port_map())

    def explain(self, stop: Stop) -> Stop:
        """A stop caused by a port breakpoint, with the access and the driver code that made it."""
        reply = self.call("last-stop", {})
        accesses = self.events_from(reply["accesses"])
        if not accesses:
            return stop
        first = accesses[0]
        raw = reply["accesses"][0].get("where") or {}
        return dataclasses.replace(
            stop,
            function=raw.get("function") or stop.function,
            line=raw.get("line") or stop.line,
            address=int(reply.get("pc") or stop.address),
            reason="port-breakpoint",
            access=first,
        )

    def status(self) -> dict[str, Any]:
        return dict(self.call("status", {}))


class PortWatch(Recorder):
    """`with m.watch_ports(...) as io:` records every access to the ports while active;
    `io.events` holds them afterwards (`io.fetch()` reads them while still active)."""

    def __init__(self, agent: PortsAgent, ranges: Sequence[tuple[int, int]], what: str, capture: int) -> None:
        self._agent = agent
        self.ranges = list(ranges)
        self.what = what
        self.capture = capture
        self.events: list[PortAccess] = []
        self._ident: int | None = None

    def __enter__(self) -> PortWatch:
        # Breakpoints go in when the guest next runs (PortsAgent.arm_pending): until then
        # there is nothing to record, and inserting ~200 of them costs ~20 ms.
        self._agent.pending.append(self)
        return self

    def arm(self) -> None:
        if self in self._agent.pending:
            self._agent.pending.remove(self)
            self._ident = self._agent.watch(self.ranges, what=self.what, capture=self.capture)

    def close(self) -> None:
        """End the watch: its breakpoints are deleted, its events kept in `events`."""
        if self in self._agent.pending:  # never armed: the guest did not run meanwhile
            self._agent.pending.remove(self)
            return
        if self._ident is None:
            return
        ident, self._ident = self._ident, None
        if self._agent._m.gdb is None:  # the machine is gone, and its GDB with it
            return
        events, _ = self._agent.unwatch(ident)
        self.events += events

    def fetch(self) -> list[PortAccess]:
        """Events so far (the watch stays active); they are moved into `events` too."""
        if self._ident is not None:
            self.events += self._agent.events(self._ident, clear=True)
        return list(self.events)

    def squashed(self) -> list[PortAccess]:
        """The events with data runs coalesced and polls folded (see normalize)."""
        return normalize(self.events)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.squashed())


class PortBreakpoint:
    """A breakpoint on port I/O (from m.break_on_port): the guest stops when a matching access
    happens; `m.cont()` then returns a Stop whose `access` says what it was. `delete()` (or
    leaving its `with` block) removes it."""

    def __init__(
        self,
        agent: PortsAgent,
        ranges: Sequence[tuple[int, int]],
        what: str,
        direction: str | None,
        value: int | None,
    ) -> None:
        self._agent = agent
        self.ranges = list(ranges)
        self.direction = direction
        self.value = value
        self.what = what
        self.events: list[PortAccess] = []  # every matching access (filled on delete)
        self.hits = 0
        self._ident: int | None = agent.watch(ranges, what=what, direction=direction, value=value, stop=True)

    @property
    def active(self) -> bool:
        return self._ident is not None

    def delete(self) -> None:
        if self._ident is None:
            return
        ident, self._ident = self._ident, None
        if self._agent._m.gdb is None:
            return
        self.events, self.hits = self._agent.unwatch(ident)

    def __enter__(self) -> PortBreakpoint:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(HarnessError) if exc is not None else contextlib.nullcontext():
            self.delete()

    def __repr__(self) -> str:
        cond = f" {self.direction}" if self.direction else ""
        cond += f" value {self.value:#x}" if self.value is not None else ""
        return f"<PortBreakpoint {self.what}{cond} {'active' if self.active else 'deleted'}>"
