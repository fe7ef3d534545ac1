"""The device side: what QEMU's IDE and bus-master emulation saw, from its own trace events.

Debian's QEMU has the "log" trace backend: the harness starts QEMU with `-D qemu-trace.log`,
and `m.device_trace()` switches the ide_* and bmdma_* events on (QMP trace-event-set-state)
for as long as it is active, then parses the new lines into PortAccess events, the type the
driver side (harness/ports.py) records, plus DeviceAction notes (command executed, sectors
read or written, DMA callbacks, resets).

QEMU 7.2's bmdma_read/bmdma_write lines give the register offset within a channel but not the
channel, and bmdma_addr_* not even the offset: a bus-master access is given the channel of
the next IDE register access in the trace (else the previous one), which is right for a driver
that sets up the bus master, issues the command, polls and stops on one channel at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.portio.access import (
    BM_CHANNEL_STRIDE,
    PRIMARY_CMD,
    PRIMARY_CTRL,
    SECONDARY_CMD,
    SECONDARY_CTRL,
    PortAccess,
    PortError,
    PortMap,
)
from harness.portio.compare import normalize
from harness.portio.recorder import Recorder
from harness.regs import command_name

if TYPE_CHECKING:
    from harness.qemu import QemuProcess
    from harness.target import Target

log = logging.getLogger(__name__)

# The CPU taking an interrupt from the 8259 pair ("interrupt 0xe intno 0x2e": line, vector): the
# driver's irq completion, seen from QEMU. Only taken interrupts: one masked or never let in
# (IF clear) leaves no line.
INTERRUPT_EVENT = "pic_interrupt"
TRACE_PATTERNS = ("ide_*", "bmdma_*", INTERRUPT_EVENT)  # QMP trace-event-set-state names (globs allowed)
# Bytes of log a record reads per QEMU: ordinary tests log kilobytes to a few MB; a driver stuck
# polling logs hundreds of MB a second until its call times out (a mutant once took 23 GB).
RECORD_LIMIT = 256 << 20
# QEMU logs every data-port word as its own event (2048 lines per 8 KiB PIO block, 36 MB per MiB):
# a record kept all the time leaves them out, and with them the rules that count data words.
DATA_EVENTS = ("ide_data_*",)

# QEMU's log backend line: "[pid@seconds.micros:]event text"; the stamp is there with
# `-msg timestamp=on` (gettimeofday, truncated to whole microseconds).
_PREFIX = re.compile(r"^(?:\d+@(?P<sec>\d+)\.(?P<frac>\d+):)?(?P<event>[a-z0-9_]+) (?P<text>.*)$")
_PIO = re.compile(
    r"IDE PIO (?P<rw>rd|wr) @ 0x(?P<port>[0-9a-f]+) \((?P<reg>[^)]*)\); val 0x(?P<val>[0-9a-f]+)"
    r"(?:; bus (?P<bus>\S+?);?(?: IDEState (?P<state>\S+))?)?$"
)
_BMDMA = re.compile(r"bmdma: (?P<rw>read|write)b 0x(?P<off>[0-9a-f]+) : 0x(?P<val>[0-9a-f]+)$")
_BMDMA_ADDR = re.compile(r"data: 0x(?P<val>[0-9a-f]+)$")
_PIO_EVENTS = {
    "ide_ioport_read": 1,
    "ide_ioport_write": 1,
    "ide_status_read": 1,
    "ide_ctrl_write": 1,
    "ide_cmd_write": 1,  # the older name of ide_ctrl_write
    "ide_data_readw": 2,
    "ide_data_writew": 2,
    "ide_data_readl": 4,
    "ide_data_writel": 4,
}
_SKIP = {"bmdma_cmd_writeb"}  # a second line for the bmdma_write to offset 0 just before it


@dataclass(frozen=True)
class DeviceAction:
    """Something the device did rather than a register access: `ide_exec_cmd`,
    `ide_sector_write`, `ide_dma_cb`, `ide_reset`, ... `index` is how many port events came
    before it in the same trace."""

    event: str
    detail: str
    index: int

    def __str__(self) -> str:
        return f"{self.event}: {self.detail}".rstrip(": ")

    def short(self) -> str:
        """'exec cmd 0xca (WRITE DMA)', 'sector write 5+1', ... for tables."""
        if self.event == "ide_exec_cmd":
            m = re.search(r"cmd 0x([0-9a-f]+)", self.detail)
            if m:
                return f"exec cmd {int(m.group(1), 16):#04x} ({command_name(int(m.group(1), 16))})"
        m = re.fullmatch(r"sector=(\d+) nsectors=(\d+)", self.detail)
        if m and self.event in ("ide_sector_read", "ide_sector_write"):
            return f"{self.event[4:].replace('_', ' ')} LBA {m.group(1)} +{m.group(2)}"
        m = re.search(r"sector_num=(\d+) n=(\d+) cmd=(.*)$", self.detail)
        if m and self.event == "ide_dma_cb":
            return f"dma {m.group(3).lower()} LBA {m.group(1)} +{m.group(2)}"
        return self.event.replace("_", " ")


@dataclass
class DeviceRecord:
    """A parsed trace: port events in order, and the device's own actions between them."""

    events: list[PortAccess] = field(default_factory=list)
    actions: list[DeviceAction] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)


def _channel_of(port: int) -> int | None:
    if PRIMARY_CMD <= port <= PRIMARY_CMD + 7 or port == PRIMARY_CTRL:
        return 0
    if SECONDARY_CMD <= port <= SECONDARY_CMD + 7 or port == SECONDARY_CTRL:
        return 1
    return None


def _stamp_us(m: re.Match[str]) -> float | None:
    """The line's `-msg timestamp=on` stamp in µs since the epoch, or None without one."""
    sec: str | None = m.group("sec")
    frac: str | None = m.group("frac")
    if sec is None or frac is None:
        return None
    return float(int(sec) * 1_000_000) + int(frac) / 10.0 ** (len(frac) - 6)


class _PollFolder:
    """parse_trace's fold, line by line: a line's text but for its stamp (its body) is
    compared with the poll under way before anything is parsed, so a folded read costs a
    string comparison."""

    def __init__(self, parse: Callable[[str], bool], raw: list[list[Any]], kept: int) -> None:
        self.parse, self.raw, self.kept = parse, raw, kept
        self.recent: list[str] = []  # bodies of the last reads in a row (at most two), newest last
        self.cycle: tuple[str, ...] = ()  # the poll under way: the bodies it repeats
        self.seen = 0  # its lines so far
        self.held: list[str] = []  # its lines past the kept cycles, of a cycle not yet whole
        self.tails: list[str] = []  # per cycle position, the last line folded into its event
        self.first = 0  # index in raw of the poll's first folded event

    def feed(self, line: str) -> None:
        body = line[line.find(":") + 1 :] if line[:1].isdigit() else line
        if not self.cycle and self.recent:
            if body == self.recent[-1]:
                self.cycle, self.seen = (body,), 1
            elif len(self.recent) == 2 and body == self.recent[0]:
                self.cycle, self.seen = tuple(self.recent), 2
        if self.cycle:
            if body == self.cycle[self.seen % len(self.cycle)]:
                self.seen += 1
                if self.seen <= self.kept * len(self.cycle):
                    self.parse(line)
                    return
                self.held.append(line)
                if len(self.held) == len(self.cycle):
                    self._fold_held()
                return
            self.end()
        if self.parse(line):
            self.recent = [*self.recent[-1:], body]
        else:
            self.recent = []

    def _fold_held(self) -> None:
        """One more whole cycle past the kept ones: its reads count into the folded events."""
        raw, period = self.raw, len(self.cycle)
        if not self.tails:
            self.first = len(raw)
            raw.extend([*r[:6], 0] for r in raw[-period:])
        for j in range(period):
            raw[self.first + j][6] += 1
        self.tails, self.held = self.held, []

    def end(self) -> None:
        """The poll under way is over: its folded events take their last stamps, and a cycle
        cut short stands as read. The next poll begins after it."""
        for j, tail in enumerate(self.tails):
            m = _PREFIX.match(tail)
            self.raw[self.first + j][5] = _stamp_us(m) if m else None
        for line in self.held:
            self.parse(line)
        self.cycle, self.seen, self.held, self.tails, self.recent = (), 0, [], [], []


def parse_trace(
    lines: Iterable[str], port_map: PortMap | None = None, fold: int | None = None
) -> DeviceRecord:
    """Parse QEMU log-backend trace lines (ide_*, bmdma_*) into a DeviceRecord. Lines stamped
    by `-msg timestamp=on` give each access its time (PortAccess.time_us); unstamped lines
    give None.

    fold=N: a status poll, a run of reads that repeats one read (the same line but for its
    stamp) or a cycle of two (the DMA wait reads BM Status, then Alt Status, and again), keeps
    its first N cycles as events of their own; each of its reads then becomes one more event
    for its later repeats, with `repeat` set to how many it stands for and the time of the
    last of them. A cycle cut short at the end stays as read. What a poll saw, when it began
    and ended, and how many accesses it made are all kept; a wait otherwise makes thousands
    of events. Anything else (a write, something the device did) ends a poll."""
    if fold is not None and fold < 1:
        raise ValueError(f"fold must be at least 1, not {fold}")
    pmap = port_map or PortMap()
    rec = DeviceRecord()
    # First pass, per access: [direction, port or bus-master offset, width, value, is bus
    # master, time, repeat].
    raw: list[list[Any]] = []

    def parse(line: str) -> bool:
        """One line into raw, actions or unparsed; True for a read access."""
        if not line.strip():
            return False
        m = _PREFIX.match(line)
        if not m:
            rec.unparsed.append(line)
            return False
        event, text = m.group("event"), m.group("text")
        stamp = _stamp_us(m)
        if event in _SKIP:
            return False
        if event in _PIO_EVENTS:
            p = _PIO.match(text)
            if not p:
                rec.unparsed.append(line)
                return False
            direction = "in" if p.group("rw") == "rd" else "out"
            port, val = int(p.group("port"), 16), int(p.group("val"), 16)
            raw.append([direction, port, _PIO_EVENTS[event], val, False, stamp, 1])
        elif event in ("bmdma_read", "bmdma_write"):
            b = _BMDMA.match(text)
            if not b:
                rec.unparsed.append(line)
                return False
            direction = "in" if b.group("rw") == "read" else "out"
            raw.append([direction, int(b.group("off"), 16) & 3, 1, int(b.group("val"), 16), True, stamp, 1])
        elif event in ("bmdma_addr_read", "bmdma_addr_write"):
            a = _BMDMA_ADDR.match(text)
            if not a:
                rec.unparsed.append(line)
                return False
            direction = "in" if event.endswith("read") else "out"
            raw.append([direction, 4, 4, int(a.group("val"), 16) & 0xFFFFFFFF, True, stamp, 1])
        elif event.startswith(("ide_", "bmdma_")) or event == INTERRUPT_EVENT:
            rec.actions.append(DeviceAction(event, text.strip(), len(raw)))
            return False
        else:
            rec.unparsed.append(line)
            return False
        return direction == "in"

    if fold is None:
        for line in lines:
            parse(line.rstrip("\n"))
    else:
        folder = _PollFolder(parse, raw, fold)
        for line in lines:
            folder.feed(line.rstrip("\n"))
        folder.end()
    # Second pass: bus-master accesses take the channel of the next IDE access, else the previous.
    channels: list[int | None] = [None if r[4] else _channel_of(r[1]) for r in raw]
    following: list[int | None] = [None] * len(raw)
    nxt: int | None = None
    for i in range(len(raw) - 1, -1, -1):
        following[i] = nxt
        if channels[i] is not None:
            nxt = channels[i]
    prev: int | None = None
    for i, (direction, port, width, value, is_bm, stamp, repeat) in enumerate(raw):
        if is_bm:
            channel = following[i]
            if channel is None:
                channel = prev if prev is not None else 0
            port = pmap.bm_base + BM_CHANNEL_STRIDE * channel + port
        else:
            prev = channels[i] if channels[i] is not None else prev
        ev = pmap.access(direction, port, width, value, source="device", time_us=stamp)
        rec.events.append(ev if repeat == 1 else dataclasses.replace(ev, repeat=repeat))
    return rec


class DeviceTrace(Recorder):
    """`with m.device_trace() as dev:` records what QEMU's IDE emulation saw while active;
    afterwards `dev.events` (PortAccess, like the driver side) and `dev.actions`.

    A trace spans reboots: when a QEMU goes (power_cycle, crash), what it logged is kept, and
    the next QEMU logs from its first instruction (firmware included); `dev.resets` lists the
    event indices where a new QEMU (a hardware reset of the controller) began."""

    def __init__(
        self,
        target: Target,
        port_map: Callable[[], PortMap],
        patterns: Sequence[str] = TRACE_PATTERNS,
        exclude: Sequence[str] = (),
        fold: int | None = None,
    ) -> None:
        self._m = target
        self.fold = fold  # status polls folded (parse_trace's fold): None keeps every read
        self._port_map = port_map
        self.patterns = tuple(patterns)
        self.exclude = tuple(exclude)  # events left off (e.g. DATA_EVENTS), though patterns match them
        self.events: list[PortAccess] = []
        self.actions: list[DeviceAction] = []
        self.unparsed: list[str] = []
        self.resets: list[int] = []  # event indices where a new QEMU process began
        self.limit = RECORD_LIMIT  # bytes of log read per QEMU; past it the record is cut
        self.truncated = 0  # bytes of log left unread because of the limit (0: none)
        self._segments: list[DeviceRecord] = []  # what each QEMU that has gone logged
        self._offset: int | None = None

    @property
    def path(self) -> Path:
        path = self._m.paths.trace_log if self._m.paths is not None else None
        if path is None:
            raise PortError("this machine was started without a QEMU trace file (-D)")
        return path

    def _set(self, enable: bool) -> None:
        _, qemu = self._m.live()
        if qemu.qmp is None:
            raise PortError("QEMU's QMP is not connected", artifacts=self._m.artifact_files())
        self._enable(qemu, enable)

    def _enable(self, qemu: QemuProcess, enable: bool) -> None:
        for pattern in self.patterns:
            qemu.command("trace-event-set-state", name=pattern, enable=enable)
        if enable:
            for pattern in self.exclude:
                qemu.command("trace-event-set-state", name=pattern, enable=False)

    def _parse_from(self, offset: int) -> DeviceRecord:
        """The log from offset on, parsed as it is read, line by line: a driver stuck in a loop
        logs hundreds of MB a second until the call's timeout, and reading that whole would
        take more memory than the machine has. At most `limit` bytes are read; what lies
        beyond is counted in `truncated` (and a warning says so)."""
        pmap = self._port_map()
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (read by the generator below, closed after)
        except FileNotFoundError:
            return DeviceRecord()
        with f:
            f.seek(offset)
            end = os.fstat(f.fileno()).st_size
            budget = self.limit

            def lines() -> Iterator[str]:
                nonlocal budget
                for raw in f:
                    budget -= len(raw)
                    if budget < 0:
                        return
                    yield raw.decode(errors="replace")

            rec = parse_trace(lines(), pmap, self.fold)
            if budget < 0:
                cut = max(end - offset - self.limit, 0)
                self.truncated += cut
                log.warning(
                    "device trace %s: %d MB of log past the first %d MB left unread (a driver "
                    "stuck polling?); the record ends there",
                    self.path,
                    cut >> 20,
                    self.limit >> 20,
                )
        return rec

    def _qemu_gone(self) -> None:
        """Keep what the QEMU that went logged: the next one starts the log afresh."""
        if self._offset is not None:
            self._segments.append(self._parse_from(self._offset))
            self._offset = 0

    def _qemu_up(self) -> None:
        """A new QEMU, still paused: trace it from its first instruction."""
        if self._offset is not None:
            self._offset = self.path.stat().st_size if self.path.exists() else 0
            qemu = self._m.qemu
            assert qemu is not None
            self._enable(qemu, True)

    def __enter__(self) -> DeviceTrace:
        path = self.path
        self._offset = path.stat().st_size if path.exists() else 0
        self._m.device_traces += 1
        try:
            self._set(True)
        except BaseException:
            self._m.device_traces -= 1
            self._offset = None
            raise
        self._m.halt_hooks.append(self._qemu_gone)
        self._m.boot_hooks.append(self._qemu_up)
        return self

    def close(self) -> None:
        """Switch the events off (when no other device trace is active) and parse the record."""
        if self._offset is None:
            return
        offset, self._offset = self._offset, None
        self._m.device_traces -= 1
        self._m.halt_hooks.remove(self._qemu_gone)
        self._m.boot_hooks.remove(self._qemu_up)
        segments = self._segments
        if self._m.qemu is not None:
            if self._m.device_traces == 0:
                with contextlib.suppress(HarnessError):  # a QEMU that died logged what it could
                    self._set(False)
            segments = [*segments, self._parse_from(offset)]
        self._segments = []
        self.events, self.actions, self.unparsed, self.resets = [], [], [], []
        for number, rec in enumerate(segments):
            if number:
                self.resets.append(len(self.events))
            base = len(self.events)
            self.events += rec.events
            self.actions += [dataclasses.replace(a, index=a.index + base) for a in rec.actions]
            self.unparsed += rec.unparsed

    def __str__(self) -> str:
        return "\n".join(str(e) for e in normalize(self.events))
