"""PortAccess events drawn as a waveform: a VCD file (pyvcd) and a GTKWave save file beside it.

Signals, in scope `piix3` (each channel's only if the record touches that channel):

  piix3.event                    index of the access in the record (io.events[N])
  piix3.driver.function          string: the C function that made the access (driver side)
  piix3.driver.line              its source line
  piix3.<ch>.device, features, sector_count, lba_low, lba_mid, lba_high, devctl
                                 8 bits: the value last written to that register
  piix3.<ch>.command             8 bits: the command byte written; command_name: its name
  piix3.<ch>.status              8 bits: status as read (Status or Alt Status)
  piix3.<ch>.BSY DRDY DRQ ERR    1 bit each, from that read
  piix3.<ch>.error               8 bits: the Error register as read
  piix3.<ch>.data_bytes          32 bits: bytes moved through the data port so far (a
                                 counter: one step per access or string transfer, not per word)
  piix3.<ch>.bm_command, START   BM Command as written, and its START bit
  piix3.<ch>.bm_status, ACTIVE   BM Status as read, and its ACTIVE bit
  piix3.<ch>.bm_status_write     BM Status as written (write 1 to clear INTR/ERR)
  piix3.<ch>.bm_prd              32 bits: the PRD table address written

Time: a record whose every access has QEMU's `-msg timestamp=on` stamp (the device trace) is
drawn in real time, timescale 1 ns, from the first access at 0; QEMU stamps in whole µs and
several accesses often share one, so an access is put 1 ns after the one before it when its
own stamp is not later (nothing is hidden, the order is kept, and the drift is a few ns). A
record without time (the driver side, GDB) is drawn against an event counter: access N of the
record at time N. The file's $comment says which.
"""

from __future__ import annotations

import datetime
import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from vcd import VCDWriter
from vcd.gtkw import GTKWSave
from vcd.writer import Variable

from harness.portio.access import CHANNELS, PortAccess, PortError
from harness.regs import command_name

TIME_DEVICE = "qemu-timestamps"
TIME_COUNTER = "event-counter"

# register name (PortMap.register's, after the channel) -> signal: for writes, then for reads
_WRITTEN = {
    "Features": "features",
    "Sector Count": "sector_count",
    "LBA Low": "lba_low",
    "LBA Mid": "lba_mid",
    "LBA High": "lba_high",
    "Device": "device",
    "Device Control": "devctl",
    "Command": "command",
    "BM Command": "bm_command",
    "BM Status": "bm_status_write",
    "BM PRD": "bm_prd",
}
_READ = {"Status": "status", "Alt Status": "status", "Error": "error", "BM Status": "bm_status"}
_STATUS_BITS = (("BSY", 7), ("DRDY", 6), ("DRQ", 3), ("ERR", 0))
_WIDE = {"bm_prd": 32, "data_bytes": 32}
# What GTKWave shows per channel, in this order (every signal of the channel's group).
_CHANNEL_SIGNALS = (
    "device",
    "features",
    "sector_count",
    "lba_low",
    "lba_mid",
    "lba_high",
    "command",
    "command_name",
    "devctl",
    "status",
    "BSY",
    "DRDY",
    "DRQ",
    "ERR",
    "error",
    "data_bytes",
    "bm_command",
    "START",
    "bm_status",
    "ACTIVE",
    "bm_status_write",
    "bm_prd",
)
_BITS = {"BSY", "DRDY", "DRQ", "ERR", "START", "ACTIVE"}
_STRINGS = {"command_name"}
GTKW_SIZE = (1400, 900)  # GTKWave window, pixels
GTKW_WAVE_PIXELS = 800  # of it, the wave pane's width to fit the record into


@dataclass(frozen=True)
class Waveform:
    """What write_vcd wrote: the files, the time base (TIME_DEVICE or TIME_COUNTER), how many
    accesses were drawn and how many not (reads of the task-file registers, which a driver
    makes only to probe, and ports outside the IDE controller), and the signals declared."""

    vcd: Path
    gtkw: Path | None
    time_base: str
    drawn: int
    skipped: int
    signals: tuple[str, ...]


def split_register(register: str) -> tuple[str, str] | None:
    """'primary BM Status' -> ('primary', 'BM Status'); None for non-IDE registers."""
    channel, _, name = register.partition(" ")
    return (channel, name) if channel in CHANNELS and name else None


def _signal(access: PortAccess) -> tuple[str, str] | None:
    """(channel, signal) an access changes, or None when it is no IDE register we draw."""
    parts = split_register(access.register)
    if parts is None:
        return None
    channel, name = parts
    if name == "Data":
        return channel, "data_bytes"
    table = _READ if access.direction == "in" else _WRITTEN
    return (channel, table[name]) if name in table else None


def timeline(events: Sequence[PortAccess], first: int = 0) -> tuple[list[int], str]:
    """Each event's VCD time and the time base: ns since the first event when every event
    is stamped (each at least 1 ns after the one before), else the event's index in the
    record (`first` + its index here, when events are a record's tail)."""
    if events and all(e.time_us is not None for e in events):
        start = events[0].time_us or 0.0
        times: list[int] = []
        previous = -1
        for e in events:
            t = max(round(((e.time_us or 0.0) - start) * 1000), previous + 1)
            times.append(t)
            previous = t
        return times, TIME_DEVICE
    return list(range(first, first + len(events))), TIME_COUNTER


def _function_and_line(where: str) -> tuple[str, int | None]:
    """'send_cmd (ata.c:188)' -> ('send_cmd', 188)."""
    function, _, rest = where.partition(" (")
    line: int | None = None
    if rest.endswith(")") and ":" in rest:
        text = rest[:-1].rsplit(":", 1)[1]
        line = int(text) if text.isdigit() else None
    return function.strip(), line


def _token(text: str) -> str:
    """A VCD string value without blanks (GTKWave shows escapes literally)."""
    return "_".join(text.split())


def _comment(title: str, events: Sequence[PortAccess], time_base: str, drawn: int) -> str:
    sources = sorted({e.source for e in events})
    lines = [f"piix3-harness: {title}" if title else "piix3-harness port accesses"]
    lines.append(
        f"record: {'/'.join(sources)} side, {len(events)} accesses, {drawn} drawn "
        f"({len(events) - drawn} not: reads of task-file registers, or no IDE register)"
    )
    if time_base == TIME_DEVICE:
        start = events[0].time_us or 0.0
        when = datetime.datetime.fromtimestamp(start / 1e6, datetime.UTC).isoformat()
        lines.append(
            f"time: QEMU trace timestamps (-msg timestamp=on, whole us), ns since the first access "
            f"at {when}; an access sharing a stamp is put 1 ns after the one before it"
        )
    else:
        lines.append(
            "time: an event counter, not real time (this record has no timestamps): "
            "time N is access N of the record; the timescale unit means nothing here"
        )
    return "\n".join(lines)


class _Signals:
    """The VCD variables of one record, registered before the first change."""

    def __init__(self, writer: VCDWriter, channels: Iterable[str], markers: bool) -> None:
        self.vars: dict[str, Variable[Any]] = {}
        self.names: list[str] = []
        self._add(writer, "piix3", "event", "integer", 32, None)
        if markers:
            self._add(writer, "piix3.driver", "function", "string", None, "")
            self._add(writer, "piix3.driver", "line", "integer", 32, None)
        for ch in channels:
            for name in _CHANNEL_SIGNALS:
                if name in _BITS:
                    self._add(writer, f"piix3.{ch}", name, "wire", 1, None)
                elif name in _STRINGS:
                    self._add(writer, f"piix3.{ch}", name, "string", None, "")
                else:
                    init = 0 if name == "data_bytes" else None
                    self._add(writer, f"piix3.{ch}", name, "wire", _WIDE.get(name, 8), init)

    def _add(self, writer: VCDWriter, scope: str, name: str, kind: str, size: int | None, init: Any) -> None:
        full = f"{scope}.{name}"
        self.vars[full] = writer.register_var(scope, name, kind, size=size, init=init)
        self.names.append(full)


def write_vcd(
    events: Sequence[PortAccess],
    path: str | Path,
    *,
    title: str = "",
    note: str = "",
    gtkw: bool = True,
    first: int = 0,
) -> Waveform:
    """Draw a record (driver or device side, raw or normalized) as a VCD file at path, and a
    GTKWave save file beside it (path with suffix .gtkw) unless gtkw is False. title and note
    go into the file's $comment; `first` is the index in the record of events[0] (when
    drawing a record's tail), which piix3.event shows. Raises PortError when nothing in the
    record is an IDE register, or a file cannot be written."""
    path = Path(path)
    if path.suffix == ".gtkw":
        raise PortError(f"{path}: give the VCD file's name (the .gtkw file is written beside it)")
    events = list(events)
    drawable = [(i, e, s) for i, e in enumerate(events) if (s := _signal(e)) is not None]
    if not drawable:
        raise PortError(
            f"nothing to draw in {path.name}: none of the record's {len(events)} accesses is one of the "
            "IDE registers drawn" + (" (a watch's events are filled in when it closes)" if not events else "")
        )
    times, time_base = timeline(events, first)
    channels = [ch for ch in CHANNELS if any(s[0] == ch for _, _, s in drawable)]
    markers = any(e.where for e in events)
    comment = _comment(title, events, time_base, len(drawable)) + (f"\n{note}" if note else "")
    try:
        with open(path, "w", encoding="utf-8") as f:
            signals, end = _draw(f, drawable, times, time_base, channels, markers, comment, first)
        save = path.with_suffix(".gtkw") if gtkw else None
        if save is not None:
            with open(save, "w", encoding="utf-8") as f:
                _gtkw(f, path, channels, markers, comment, end)
    except OSError as exc:
        raise PortError(f"cannot write the waveform {exc.filename or path}: {exc.strerror}") from None
    return Waveform(path, save, time_base, len(drawable), len(events) - len(drawable), signals)


def _draw(
    f: IO[str],
    drawable: Sequence[tuple[int, PortAccess, tuple[str, str]]],
    times: Sequence[int],
    time_base: str,
    channels: Sequence[str],
    markers: bool,
    comment: str,
    first: int,
) -> tuple[tuple[str, ...], int]:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with VCDWriter(f, timescale="1 ns", date=now, comment=comment, version="piix3-harness") as writer:
        sig = _Signals(writer, channels, markers)
        v = sig.vars
        moved = dict.fromkeys(channels, 0)
        for index, e, (ch, name) in drawable:
            t = times[index]
            writer.change(v["piix3.event"], t, first + index)
            if markers and e.where:
                function, line = _function_and_line(e.where)
                writer.change(v["piix3.driver.function"], t, _token(function))
                if line is not None:
                    writer.change(v["piix3.driver.line"], t, line)
            scope = f"piix3.{ch}"
            if name == "data_bytes":
                moved[ch] += e.count * e.width * e.repeat
                writer.change(v[f"{scope}.data_bytes"], t, moved[ch] & 0xFFFFFFFF)
                continue
            if e.value is None:  # a string transfer to a register other than Data: nothing to draw
                continue
            value = e.value & ((1 << _WIDE.get(name, 8)) - 1)
            writer.change(v[f"{scope}.{name}"], t, value)
            if name == "status":
                for bit, shift in _STATUS_BITS:
                    writer.change(v[f"{scope}.{bit}"], t, (value >> shift) & 1)
            elif name == "command":
                writer.change(v[f"{scope}.command_name"], t, _token(command_name(value)))
            elif name == "bm_command":
                writer.change(v[f"{scope}.START"], t, value & 1)
            elif name == "bm_status":
                writer.change(v[f"{scope}.ACTIVE"], t, value & 1)
        end = times[drawable[-1][0]] + (1000 if time_base == TIME_DEVICE else 1)
        writer.close(end)
    return tuple(sig.names), end


def _gtkw(f: IO[str], vcd_path: Path, channels: Sequence[str], markers: bool, comment: str, end: int) -> None:
    """A GTKWave save file: the record's own signals first, then one group per channel; the
    window sized and zoomed so that the whole record fits."""
    save = GTKWSave(f)
    save.comment(*comment.splitlines())
    save.dumpfile(str(vcd_path.absolute()), abspath=False)
    save.savefile(str(vcd_path.with_suffix(".gtkw").absolute()), abspath=False)
    save.size(GTKW_SIZE[0], GTKW_SIZE[1])
    # GTKWave 3.3.118 draws 2**-zoom / 200 time units per pixel (measured: zoom -15 and -20
    # on a 1 ns VCD); the wave pane is what the tree and the names leave of the window.
    save.zoom_markers(-math.log2(max(end, 1) / GTKW_WAVE_PIXELS * 200))
    save.treeopen("piix3.")
    save.signals_width(240)
    save.sst_expanded(True)
    with save.group("record"):
        save.trace("piix3.event", datafmt="dec")
        if markers:
            save.trace("piix3.driver.function")
            save.trace("piix3.driver.line", datafmt="dec")
    for ch in channels:
        with save.group(ch):
            for name in _CHANNEL_SIGNALS:
                save.trace(
                    gtkwave_name(f"piix3.{ch}.{name}"), datafmt="dec" if name == "data_bytes" else "hex"
                )


def gtkwave_name(signal: str) -> str:
    """The name GTKWave (3.3.118, Debian 12's) knows a signal by in a save file: a vector
    `wire` carries its bit range ('piix3.primary.status[7:0]'; without it the trace is
    dropped silently), integers and strings and 1-bit wires do not."""
    name = signal.rsplit(".", 1)[1]
    if name in _BITS or name in _STRINGS or signal in ("piix3.event", "piix3.driver.line"):
        return signal
    if name in _CHANNEL_SIGNALS:
        return f"{signal}[{_WIDE.get(name, 8) - 1}:0]"
    return signal


def with_driver_markers(device: Sequence[PortAccess], driver: Sequence[PortAccess]) -> list[PortAccess]:
    """The device record (which has time) with each access's `where` taken from the driver
    record's matching access (which has the C function): the two are matched access by
    access, a data run on one side against the string transfer or run on the other; accesses
    with no match keep where=''."""

    def groups(events: Sequence[PortAccess]) -> tuple[list[tuple[Any, ...]], list[list[int]]]:
        keys: list[tuple[Any, ...]] = []
        members: list[list[int]] = []
        for i, e in enumerate(events):
            parts = split_register(e.register)
            if parts is None:
                continue
            data = parts[1] == "Data"
            key = (e.direction, e.port, e.width, None if data else e.value)
            if data and keys and keys[-1][:4] == key and members[-1][-1] == i - 1:
                keys[-1] = (*key, keys[-1][4] + e.count * e.width)
                members[-1].append(i)
                continue
            keys.append((*key, e.count * e.width * e.repeat))
            members.append([i])
        return keys, members

    dev_keys, dev_members = groups(device)
    drv_keys, drv_members = groups(driver)
    out = list(device)
    matcher = difflib.SequenceMatcher(a=dev_keys, b=drv_keys, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            where = driver[drv_members[block.b + k][0]].where
            for i in dev_members[block.a + k]:
                out[i] = replace(out[i], where=where)
    return out


def drawable(access: PortAccess) -> bool:
    """The access has a signal in a waveform (task file, status, bus master, data)."""
    return _signal(access) is not None
