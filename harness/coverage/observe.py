"""Observers on every Target (target.TARGET_HOOKS): the gcov counters in guest RAM and the
driver calls with what the device trace shows of each, for harness/pytest_plugin/coverage.py.

Gcov: a machine's counters are read (through the shared RAM mapping, no guest cooperation)
whenever its RAM is about to be lost or rolled back (Target.ram_hooks: reset, halt, kill,
loadvm) and when the plugin asks (after each test); each read adds the delta since the last one.

Calls: before every resume the mailbox in guest RAM is read; a request with a new sequence
number is a new driver call, and the device trace file's size there marks where its stretch
of the trace begins. The call ends at the next resume, the next RAM event, or when the plugin
asks: its result is read from the mailbox (none if it never finished) and the stretch is
parsed for the commands it issued."""

from __future__ import annotations

import contextlib
import logging
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import abi, target
from harness.abi import ErrorRecord, Mailbox, Op
from harness.coverage import functional, gcov
from harness.coverage.covergroup import Covergroup
from harness.errors import HarnessError
from harness.portio.access import PortMap
from harness.portio.devtrace import DeviceRecord, parse_trace
from harness.portio.protocol import interrupts
from harness.regs import IRQ_IDE
from harness.target import Target

log = logging.getLogger(__name__)

# Errors a read of a machine that is going away may meet: they cost a collection, not the test.
READ_ERRORS = (HarnessError, OSError, ValueError, struct.error)
OPS = {
    Op.IDENTIFY: "identify",
    Op.READ: "read",
    Op.WRITE: "write",
    Op.FLUSH: "flush",
    Op.SET_WCACHE: "set_wcache",
    Op.RESET_CHANNEL: "reset_channel",
    Op.BENCH: "bench",
}
MAX_SEGMENT = 64 << 20  # bytes of device trace read for one call (data words make it huge)


class GcovCollector:
    """Sums the counter deltas of every machine that runs an instrumented kernel."""

    def __init__(self) -> None:
        self.totals: dict[str, gcov.Counters] = {}  # layout key -> counters
        self.current: dict[str, list[int]] = {}  # layout key -> deltas since take_current()
        self.failures: list[str] = []  # collections that could not read RAM
        self.collections = 0
        self._layouts: dict[Path, gcov.GcovLayout | None] = {}
        self._live: weakref.WeakKeyDictionary[Target, gcov.RamCounters] = weakref.WeakKeyDictionary()

    def layout(self, kernel: Path) -> gcov.GcovLayout | None:
        if kernel not in self._layouts:
            try:
                self._layouts[kernel] = gcov.GcovLayout.from_elf(kernel)
            except (OSError, gcov.GcovError) as exc:
                self.failures.append(f"{kernel}: {exc}")
                self._layouts[kernel] = None
        return self._layouts[kernel]

    def attach(self, t: Target) -> None:
        layout = self.layout(t.config.kernel)
        if layout is None:
            return
        ram = gcov.RamCounters(layout)
        self._live[t] = ram
        self.totals.setdefault(layout.key(), gcov.Counters(layout))
        t.ram_hooks.append(lambda what: self._on_ram(t, ram, what))

    def _on_ram(self, t: Target, ram: gcov.RamCounters, what: str) -> None:
        if what == "loaded":  # RAM rolled back to a snapshot: counted when it first ran
            now = self._read(t, ram.layout, what)
            if now is not None:
                ram.baseline = now
            return
        self.collect(t, ram, what)
        if what != "loadvm":
            ram.cleared()  # a boot clears .bss (reset) or the RAM is new (halt, kill)

    def _read(self, t: Target, layout: gcov.GcovLayout, what: str) -> list[int] | None:
        gdb = t.gdb
        try:
            if t.shared_ram or gdb is None:
                return layout.read(t.read_memory)
            return layout.read(gdb.read_memory)  # data_path="gdb": close() has refused calls already
        except READ_ERRORS as exc:
            self.failures.append(f"{what}: {exc}")
            return None

    def collect(self, t: Target, ram: gcov.RamCounters, what: str = "collect") -> None:
        now = self._read(t, ram.layout, what)
        if now is None:
            return
        delta = ram.delta(now)
        key = ram.layout.key()
        self.totals[key].add(delta)
        cur = self.current.setdefault(key, [0] * ram.layout.size)
        for i, v in enumerate(delta):
            if v:
                cur[i] += v
        self.collections += 1

    def collect_all(self) -> None:
        """Read every running machine's counters now (the plugin, after each test)."""
        for t, ram in list(self._live.items()):
            if t.qemu is not None:
                self.collect(t, ram)

    def take_current(self) -> list[str]:
        """source:function of every function that ran since the last call (one test's)."""
        out = []
        for key, values in self.current.items():
            out += self.totals[key].functions_hit(values)
        self.current = {}
        return out


@dataclass
class _Pending:
    op: str
    drive: int
    seq: int
    held: bool
    trace_from: int | None  # device trace file offset where the call began


class CallSampler:
    """Samples every driver call of every machine into a functional covergroup."""

    def __init__(self, group: Covergroup | None = None) -> None:
        self.group = group or functional.new_group()
        self.calls = 0
        self._live: weakref.WeakKeyDictionary[Target, _Machine] = weakref.WeakKeyDictionary()

    def attach(self, t: Target) -> None:
        m = _Machine(t, self)
        self._live[t] = m
        t.resume_hooks.append(m.on_resume)
        t.doorbell_hooks.append(m.on_doorbell)
        t.ram_hooks.append(m.on_ram)

    def flush(self) -> None:
        """End every machine's open call now (the plugin, after each test)."""
        for m in list(self._live.values()):
            m.end_call()


class _Machine:
    """One target's calls."""

    def __init__(self, t: Target, sampler: CallSampler) -> None:
        self._t = weakref.ref(t)
        self.sampler = sampler
        self.pending: _Pending | None = None
        self.last_seq: int | None = None
        self._sectors: dict[int, int] = {}
        self._port_map: PortMap | None = None

    def _target(self) -> Target | None:
        return self._t()

    def _mailbox(self, t: Target) -> Mailbox | None:
        try:
            return Mailbox.unpack(t.read_memory(t.symbol("request"), Mailbox.STRUCT.size))
        except READ_ERRORS:
            return None  # not booted yet (no symbols), or gone

    def _last_code(self, t: Target) -> int | None:
        try:
            return ErrorRecord.unpack(t.read_memory(t.symbol("last_error"), ErrorRecord.STRUCT.size)).code
        except READ_ERRORS:
            return None

    def _trace_size(self, t: Target) -> int | None:
        path = t.paths.trace_log if t.paths is not None else None
        if path is None or not t.device_traces:
            return None
        try:
            return path.stat().st_size
        except OSError:
            return None

    def on_resume(self) -> None:
        t = self._target()
        if t is None or t.qemu is None:
            return
        box = self._mailbox(t)
        if box is None:
            return
        if self.pending is not None and box.seq == self.pending.seq and box.op != Op.NONE:
            return  # the same call goes on (after a breakpoint stop inside it)
        self.end_call(box)
        if box.op == Op.NONE or box.op not in OPS:
            return
        self.pending = _Pending(OPS[Op(box.op)], box.drive, box.seq, bool(box.linger), self._trace_size(t))

    def on_doorbell(self, request: abi.Request, seq: int, held: bool) -> None:
        """A call about to go through the doorbell (the guest is not resumed for it): the one
        before it has ended, this one begins."""
        t = self._target()
        if t is None or t.qemu is None:
            return
        self.end_call()
        if request.op in OPS:
            self.pending = _Pending(OPS[request.op], request.drive, seq, held, self._trace_size(t))

    def on_ram(self, what: str) -> None:
        if what == "loaded":
            return
        self.end_call()
        t = self._target()
        if t is None or t.down:  # close() and failed reboots are no reboot worth a bin
            return
        kind = {"reset": "warm", "halt": "cold", "kill": "crash"}.get(what)
        if kind is not None:
            functional.sample_reboot(self.sampler.group, kind)

    def end_call(self, box: Mailbox | None = None) -> None:
        p, self.pending = self.pending, None
        t = self._target()
        if p is None or t is None:
            return
        if box is None and t.qemu is not None:
            box = self._mailbox(t)
        result = None
        if box is not None and box.seq == (p.seq + 1) & abi.U32:  # it ran to the end
            # the next call's post has replaced the mailbox's result; the driver's error record
            # (its code: 0 for ATA_OK) stays until that call begins
            result = box.result if box.op == Op.NONE else self._last_code(t)
        faults = frozenset(f.op for f in t.config.faults.get(p.drive, ()))
        call = functional.CallSample(p.op, p.drive, result, faults, p.held, t.config.io_error == "stop")
        group = self.sampler.group
        functional.sample_call(group, call)
        self.sampler.calls += 1
        if p.trace_from is not None:
            with contextlib.suppress(*READ_ERRORS):
                segment = self._segment(t, p.trace_from)
                record = list(functional.wire_events(segment.events))
                taken = {line for _, line in interrupts(segment.actions)}
                completion = "irq" if taken & set(IRQ_IDE.values()) else "poll"
                functional.sample_wire(group, record, self._drive_sectors(t), completion)

    def _segment(self, t: Target, start: int) -> DeviceRecord:
        """The call's stretch of the device trace, read line by line: data-port words (a test's
        own device_trace(data=True): 36 MB per MiB of PIO) are dropped before they are kept,
        and at most MAX_SEGMENT bytes are read, so memory stays bounded."""
        path = t.paths.trace_log if t.paths is not None else None
        if path is None:
            return DeviceRecord()
        lines: list[str] = []
        read = 0
        with open(path, "rb") as f:
            f.seek(start)
            for raw in f:
                read += len(raw)
                if read > MAX_SEGMENT:
                    break
                if b"ide_data_" not in raw[:48]:
                    lines.append(raw.decode(errors="replace"))
        if self._port_map is None:
            self._port_map = PortMap()
        return parse_trace(lines, self._port_map, fold=1)  # only writes and interrupts are sampled

    def _drive_sectors(self, t: Target) -> dict[int, int]:
        for drive, disk in t.config.disks.items():
            if drive not in self._sectors:
                with contextlib.suppress(*READ_ERRORS):
                    self._sectors[drive] = disk.sectors
        return self._sectors


def install(hook: Callable[[Target], None]) -> Callable[[], None]:
    """Attach `hook` to every Target made from now on; returns what removes it."""
    target.TARGET_HOOKS.append(hook)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            target.TARGET_HOOKS.remove(hook)

    return remove
