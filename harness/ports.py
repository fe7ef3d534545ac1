"""Port-I/O observation: the PortAccess event, the PIIX3 port map that names and decodes it,
driver-side recording and port breakpoints (through GDB, see gdb_ports_agent.py), and the
side-by-side comparison of two records.

Only harness.errors and harness.regs are imported at module level, so GDB's own Python (the
gdbinit commands) can load this module too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from harness.errors import GdbError, HarnessError
from harness.regs import command_name, decode_error, decode_status

if TYPE_CHECKING:
    from harness.gdbmi import GdbMi
    from harness.stops import Stop
    from harness.target import Target

log = logging.getLogger(__name__)

AGENT_PATH = Path(__file__).with_name("gdb_ports_agent.py")
AGENT_REPLY = "piix3-ports-reply: "  # gdb_ports_agent.REPLY_PREFIX
AGENT_TIMEOUT = 30.0  # s, for one agent request (the first one disassembles the kernel)
DATA_CAPTURE_LIMIT = 1 << 20  # bytes of string-transfer data one watch keeps (then data=None)

# PIIX3 legacy (compatibility-mode) bases, guest/piix3.h
PRIMARY_CMD, PRIMARY_CTRL = 0x1F0, 0x3F6
SECONDARY_CMD, SECONDARY_CTRL = 0x170, 0x376
BMIBA_DEFAULT = 0xC040  # PIIX3_BMIBA_DEFAULT: where the driver puts BAR4 if firmware did not
BM_CHANNEL_STRIDE = 8
CHANNELS = ("primary", "secondary")

# Command block registers (cmd_base + n): name when read, name when written.
_CMD_REGS = {
    0: ("Data", "Data"),
    1: ("Error", "Features"),
    2: ("Sector Count", "Sector Count"),
    3: ("LBA Low", "LBA Low"),
    4: ("LBA Mid", "LBA Mid"),
    5: ("LBA High", "LBA High"),
    6: ("Device", "Device"),
    7: ("Status", "Command"),
}
_BM_REGS = {0: "BM Command", 1: "BM (reserved)", 2: "BM Status", 3: "BM (reserved)", 4: "BM PRD"}
_COM1_REGS = ("Data", "IER", "IIR/FCR", "LCR", "MCR", "LSR", "MSR", "SCR")
_DEVCTL_BITS = ((0x80, "HOB"), (0x04, "SRST"), (0x02, "nIEN"))
_BM_CMD_BITS = ((0x01, "START"), (0x08, "READ"))
_BM_STATUS_BITS = ((0x01, "ACTIVE"), (0x02, "ERR"), (0x04, "INTR"), (0x20, "DRV0-DMA"), (0x40, "DRV1-DMA"))


class PortError(HarnessError):
    """Port watching or tracing failed: a bad port name, a breakpoint left behind, a trace
    that could not be read."""


@dataclass(frozen=True)
class PortAccess:
    """One port access, seen by the driver side (GDB) or the device side (QEMU's trace).

    For `in`, value is what was read; for string transfers (`rep insl`/`outsl`, or a run of
    data-port accesses in QEMU's trace) value is None and count, buffer and data say what moved.
    """

    direction: str  # "in" | "out"
    port: int
    width: int  # bytes per transfer: 1, 2 or 4
    value: int | None
    count: int = 1  # transfers (the rep count for a string instruction)
    register: str = ""  # "primary Command", "secondary BM Status", ...
    decoded: str = ""  # "WRITE MULTIPLE", "DRDY|DSC", ...
    buffer: int | None = None  # guest address of a string transfer
    data: bytes | None = None  # bytes moved by a string transfer (within the watch's capture budget)
    where: str = ""  # driver side: the code that made it, "issue (ata.c:186)"
    pc: int | None = None  # driver side: the instruction's address
    repeat: int = 1  # identical consecutive reads folded into one (see squash)
    source: str = "driver"  # "driver" | "device"
    time_us: float | None = None  # device side: QEMU's log timestamp (-msg timestamp=on), in µs

    @property
    def string(self) -> bool:
        return self.value is None

    def key(self) -> tuple[Any, ...]:
        """What two records must agree on: direction, port, width, value, count, bytes."""
        return (self.direction, self.port, self.width, self.value, self.count, self.data, self.repeat)

    def brief(self) -> str:
        """'out 0x1f7 = 0xc5  primary Command: WRITE MULTIPLE'."""
        if self.value is None:
            what = f"{self.count} x {self.width * 8}-bit"
        else:
            what = f"{self.value:#0{2 + 2 * self.width}x}"
        arrow = "->" if self.direction == "in" else "<-"
        text = f"{self.direction:<3} {self.port:#06x} {arrow} {what}"
        if self.repeat > 1:
            text += f" (x{self.repeat})"
        label = self.register + (f": {self.decoded}" if self.decoded else "")
        return f"{text:<34} {label}".rstrip()

    def __str__(self) -> str:
        return self.brief() + (f"  [{self.where}]" if self.where else "")


@dataclass(frozen=True)
class PortMap:
    """Names and decodes ports: the PIIX3 IDE channels (legacy bases), its bus master at
    bm_base, PCI configuration and COM1."""

    bm_base: int = BMIBA_DEFAULT

    def named_ranges(self) -> dict[str, list[tuple[int, int]]]:
        bm = self.bm_base
        names = {
            "primary": [(PRIMARY_CMD, PRIMARY_CMD + 7)],
            "primary-ctrl": [(PRIMARY_CTRL, PRIMARY_CTRL)],
            "secondary": [(SECONDARY_CMD, SECONDARY_CMD + 7)],
            "secondary-ctrl": [(SECONDARY_CTRL, SECONDARY_CTRL)],
            "bmdma-primary": [(bm, bm + 7)],
            "bmdma-secondary": [(bm + 8, bm + 15)],
            "bmdma": [(bm, bm + 15)],
            "pci-config": [(0xCF8, 0xCFF)],
            "com1": [(0x3F8, 0x3FF)],
            "all": [(0, 0xFFFF)],
        }
        names["ide"] = names["primary"] + names["primary-ctrl"] + names["secondary"]
        names["ide"] += names["secondary-ctrl"] + names["bmdma"]
        return names

    def ranges(self, specs: Iterable[int | range | str | tuple[int, int]]) -> list[tuple[int, int]]:
        """Inclusive port ranges for ints, ranges, (lo, hi) pairs, names ("primary", "bmdma",
        "ide", ...), or strings "0x1f7" / "0x1f0-0x1f7". No specs means "ide"."""
        names = self.named_ranges()
        out: list[tuple[int, int]] = []
        for spec in list(specs) or ["ide"]:
            if isinstance(spec, bool):
                raise PortError(f"{spec!r} is not a port")
            if isinstance(spec, int):
                out.append((spec, spec))
            elif isinstance(spec, range):
                if spec.step != 1 or not spec:
                    raise PortError(f"{spec!r}: give a non-empty range with step 1")
                out.append((spec.start, spec.stop - 1))
            elif isinstance(spec, tuple):
                out.append((int(spec[0]), int(spec[1])))
            elif isinstance(spec, str):
                key = spec.strip().lower()
                if key in names:
                    out += names[key]
                    continue
                m = re.fullmatch(r"(0x[0-9a-f]+|\d+)(?:\s*-\s*(0x[0-9a-f]+|\d+))?", key)
                if not m:
                    raise PortError(
                        f"unknown port {spec!r}: use a number, LO-HI, or one of {', '.join(names)}"
                    )
                lo = int(m.group(1), 0)
                out.append((lo, int(m.group(2), 0) if m.group(2) else lo))
            else:
                raise PortError(f"{spec!r} is not a port, range or port name")
        for lo, hi in out:
            if not 0 <= lo <= hi <= 0xFFFF:
                raise PortError(f"port range {lo:#x}-{hi:#x} is outside 0..0xffff or reversed")
        return out

    def register(self, port: int, direction: str) -> str:
        """The register a port is, for this direction: 'primary Status', 'secondary BM PRD'."""
        index = 0 if direction == "in" else 1
        for channel, cmd, ctrl in ((0, PRIMARY_CMD, PRIMARY_CTRL), (1, SECONDARY_CMD, SECONDARY_CTRL)):
            if cmd <= port <= cmd + 7:
                return f"{CHANNELS[channel]} {_CMD_REGS[port - cmd][index]}"
            if port == ctrl:
                return f"{CHANNELS[channel]} {('Alt Status', 'Device Control')[index]}"
        if self.bm_base <= port < self.bm_base + 16:
            channel, offset = divmod(port - self.bm_base, BM_CHANNEL_STRIDE)
            name = _BM_REGS[offset] if offset <= 4 else f"BM PRD+{offset - 4}"
            return f"{CHANNELS[channel]} {name}"
        if port == 0xCF8:
            return "PCI Config Address"
        if 0xCFC <= port <= 0xCFF:
            return "PCI Config Data"
        if 0x3F8 <= port <= 0x3FF:
            return f"COM1 {_COM1_REGS[port - 0x3F8]}"
        return ""

    def decode(self, direction: str, port: int, width: int, value: int | None, count: int = 1) -> str:
        """What a value means in its register: command names, status and error bits, ..."""
        reg = self.register(port, direction)
        name = reg.split(" ", 1)[1] if " " in reg and reg.split(" ", 1)[0] in CHANNELS else reg
        if value is None:
            return f"{count * width} bytes" if name == "Data" else ""
        if name in ("Status", "Alt Status"):
            return decode_status(value)
        if name == "Error":
            return decode_error(value)
        if name == "Command":
            return command_name(value)
        if name == "Device":
            text = ("LBA " if value & 0x40 else "") + ("slave" if value & 0x10 else "master")
            return text + (f", LBA[27:24]={value & 0x0F:#x}" if value & 0x0F else "")
        if name == "Device Control":
            return _bits(value, _DEVCTL_BITS)
        if name == "BM Command":
            return (
                _bits(value, _BM_CMD_BITS) if value & 0x01 else "stop" + (" (READ)" if value & 0x08 else "")
            )
        if name == "BM Status":
            return _bits(value, _BM_STATUS_BITS)
        if name == "BM PRD":
            return f"table at {value:#x}"
        if name == "PCI Config Address" and value & 0x80000000:
            bus, dev, fn, off = (value >> 16) & 0xFF, (value >> 11) & 0x1F, (value >> 8) & 7, value & 0xFC
            return f"{bus:02x}:{dev:02x}.{fn} offset {off:#04x}"
        return ""

    def access(
        self,
        direction: str,
        port: int,
        width: int,
        value: int | None,
        count: int = 1,
        **extra: Any,
    ) -> PortAccess:
        """A PortAccess with its register named and value decoded."""
        return PortAccess(
            direction=direction,
            port=port,
            width=width,
            value=value,
            count=count,
            register=self.register(port, direction),
            decoded=self.decode(direction, port, width, value, count),
            **extra,
        )


def _bits(value: int, table: tuple[tuple[int, str], ...]) -> str:
    names = [name for bit, name in table if value & bit]
    return "|".join(names) if names else "-"


def _in_ranges(port: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


# --- shaping a record: folding data runs and polls, comparing two records ---------------------
def is_data_port(port: int) -> bool:
    return port in (PRIMARY_CMD, SECONDARY_CMD)


def coalesce_data(events: Sequence[PortAccess]) -> list[PortAccess]:
    """Consecutive data-port transfers of one direction and width become one string transfer
    (what `rep insl` is on the driver side and 128 `ide_data_readl` lines are in QEMU's trace)."""
    out: list[PortAccess] = []
    for ev in events:
        if not is_data_port(ev.port):
            out.append(ev)
            continue
        data = ev.data if ev.data is not None else (ev.value or 0).to_bytes(ev.width, "little")
        prev = out[-1] if out else None
        if (
            prev is not None
            and is_data_port(prev.port)
            and (prev.port, prev.direction, prev.width) == (ev.port, ev.direction, ev.width)
            and prev.data is not None
        ):
            out[-1] = dataclasses.replace(
                prev,
                value=None,
                count=prev.count + ev.count,
                data=prev.data + data,
                decoded=f"{(prev.count + ev.count) * ev.width} bytes",
            )
        else:
            out.append(dataclasses.replace(ev, value=None, data=data, decoded=f"{ev.count * ev.width} bytes"))
    return out


def squash(events: Sequence[PortAccess]) -> list[PortAccess]:
    """Identical consecutive reads (a status poll) folded into one event with `repeat` set.
    How many polls a wait takes depends on timing; this shape does not."""
    out: list[PortAccess] = []
    for ev in events:
        prev = out[-1] if out else None
        if (
            prev is not None
            and ev.direction == "in"
            and ev.value is not None
            and (prev.direction, prev.port, prev.width, prev.value) == ("in", ev.port, ev.width, ev.value)
        ):
            out[-1] = dataclasses.replace(prev, repeat=prev.repeat + ev.repeat)
        else:
            out.append(ev)
    return out


def normalize(events: Sequence[PortAccess]) -> list[PortAccess]:
    """The canonical shape two records are compared in: data runs coalesced, polls folded."""
    return squash(coalesce_data(events))


@dataclass(frozen=True)
class Comparison:
    """Two records of the same operation, normalized, and where they differ. `notes` are
    (position in `right`, text) remarks shown between the rows (the device's own actions)."""

    left: list[PortAccess]
    right: list[PortAccess]
    left_title: str = "driver side (GDB breakpoints)"
    right_title: str = "device side (QEMU trace)"
    notes: tuple[tuple[int, str], ...] = ()

    @property
    def ok(self) -> bool:
        return [e.key() for e in self.left] == [e.key() for e in self.right]

    def rows(self) -> list[tuple[str, PortAccess | None, PortAccess | None]]:
        """(mark, left, right): '=' agree, '!' differ, '<' only left, '>' only right."""
        matcher = difflib.SequenceMatcher(
            a=[e.key() for e in self.left], b=[e.key() for e in self.right], autojunk=False
        )
        rows: list[tuple[str, PortAccess | None, PortAccess | None]] = []
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                pairs = zip(range(i1, i2), range(j1, j2), strict=True)
                rows += [("=", self.left[i], self.right[j]) for i, j in pairs]
                continue
            lefts, rights = self.left[i1:i2], self.right[j1:j2]
            for k in range(max(len(lefts), len(rights))):
                a = lefts[k] if k < len(lefts) else None
                b = rights[k] if k < len(rights) else None
                rows.append(("!" if a and b else "<" if a else ">", a, b))
        return rows

    def render(self, width: int = 50, where: bool = True, only_diff: bool = False) -> str:
        """The two records side by side, one access per row, differences marked; the driver
        code that made each access in a third column."""
        head = f"  #    {self.left_title:<{width}} | {self.right_title:<{width}} |"
        lines = [head + (" driver code" if where else "")]
        notes = sorted(self.notes)
        right_seen = 0
        for n, (mark, a, b) in enumerate(self.rows(), 1):
            while notes and notes[0][0] <= right_seen:
                lines.append(f"{'':7}{'':<{width}} | ~ {notes.pop(0)[1]}")
            right_seen += b is not None
            if only_diff and mark == "=":
                continue
            left, right = _cell(a, width) if a else "", _cell(b, width) if b else ""
            tail = f" | {a.where}" if where and a is not None and a.where else ""
            lines.append(f"{n:3d} {mark}  {left:<{width}} | {right:<{width}}{tail}".rstrip())
        lines += [f"{'':7}{'':<{width}} | ~ {text}" for _, text in notes]
        verdict = "agree" if self.ok else "DIFFER (rows marked ! < >)"
        counts = f"{len(self.left)} vs {len(self.right)} accesses (data runs joined, polls folded)"
        lines.append(f"{counts}: records {verdict}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _cell(ev: PortAccess, width: int) -> str:
    """A compact one-line access for a table column: 'out 01f7 0xc5    Command: WRITE MULTIPLE'."""
    value = f"{ev.count}x{ev.width * 8}-bit" if ev.value is None else f"{ev.value:#04x}"
    if ev.repeat > 1:
        value += f" x{ev.repeat}"
    reg = ev.register
    if reg.split(" ", 1)[0] in CHANNELS:
        reg = reg.split(" ", 1)[1]
    text = f"{ev.direction:<3} {ev.port:04x} {value:<12} {reg}" + (f": {ev.decoded}" if ev.decoded else "")
    return text if len(text) <= width else text[: width - 1] + "~"


def compare(
    left: Sequence[PortAccess],
    right: Sequence[PortAccess],
    ports: Sequence[tuple[int, int]] | None = None,
    left_title: str = "driver side (GDB breakpoints)",
    right_title: str = "device side (QEMU trace)",
    right_notes: Sequence[tuple[int, str]] = (),
) -> Comparison:
    """Compare two records of one operation, restricted to `ports` if given (QEMU's trace
    covers only the IDE and bus-master ports), after normalize(). right_notes are (index into
    `right` as given, text): remarks placed where they happened."""

    def keep(events: Sequence[PortAccess]) -> list[PortAccess]:
        return normalize([e for e in events if ports is None or _in_ranges(e.port, ports)])

    notes = tuple((len(keep(right[:index])), text) for index, text in right_notes)
    return Comparison(keep(left), keep(right), left_title, right_title, notes)


def diff_text(left: Sequence[PortAccess], right: Sequence[PortAccess], **kw: Any) -> str:
    """'' when the records agree, else the side-by-side rendering of where they differ."""
    result = compare(left, right, **kw)
    return "" if result.ok else result.render()


# --- the host half of the GDB agent ----------------------------------------------------------
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


def _mi_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


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

    def _explain_if_watching(self, stop: Stop) -> Stop:
        return self.explain(stop) if self.active else stop

    @property
    def active(self) -> bool:
        return bool(self.watchers)

    def _loaded(self) -> GdbMi:
        gdb, qemu = self._m.live()
        if self._gdb is not gdb:
            gdb.command(
                f"-interpreter-exec console {_mi_quote(f'source {AGENT_PATH}')}", alive=qemu.check_alive
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
        res = gdb.command(f"-interpreter-exec console {_mi_quote(command)}", timeout, qemu.check_alive)
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


class ClosingContext:
    """`with` ends in close(); a close() failing while another exception is on its way is
    logged, not raised over it."""

    def close(self) -> None:
        raise NotImplementedError

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.close()
        except HarnessError:
            if exc is None:
                raise
            log.warning("could not end %s cleanly during an exception", type(self).__name__, exc_info=True)


class PortWatch(ClosingContext):
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
