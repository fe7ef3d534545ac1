"""Waveforms (harness/portio/vcd.py): real recorded records written as VCD and read back with
vcdvcd (and pyvcd's own reader for the string signals, which vcdvcd skips), the GTKWave save
file beside them, the driver markers laid on the device record, the Recorder registry the
pytest plugin reads, and `piix3 trace --vcd` refusing bad paths. No QEMU here.

Records (tests/data, see test_protocol.py): the driver side (GDB, no time) in
ports-driver-ops.json; the device side (QEMU's trace, stamped) in the qemu-trace-*.log.gz files;
a driver/device pair of the same operations in ports-driver-events.json + qemu-trace-ops.log.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from vcd.reader import TokenKind, tokenize
from vcdvcd import VCDVCD  # type: ignore[import-untyped]

from harness import cli
from harness.portio.access import PortAccess, PortError, PortMap
from harness.portio.devtrace import DeviceTrace, parse_trace
from harness.portio.recorder import RECENT_RECORDERS, Recorder, recorder_file_stem, write_recorders
from harness.portio.vcd import (
    TIME_COUNTER,
    TIME_DEVICE,
    gtkwave_name,
    timeline,
    with_driver_markers,
    write_vcd,
)
from harness.portio.watch import PortWatch, events_from_agent

DATA = Path(__file__).resolve().parents[1] / "data"
STATUS_BITS = {"BSY": 7, "DRDY": 6, "DRQ": 3, "ERR": 0}


def _driver_ops() -> dict[str, list[PortAccess]]:
    doc = json.loads((DATA / "ports-driver-ops.json").read_text())
    return {title: [PortAccess(**row) for row in rows] for title, rows in doc["operations"].items()}


DRIVER_OPS = _driver_ops()
PIO_WRITE = DRIVER_OPS["pio write 17 sectors at LBA 100, drive 0"]
DMA_READ = DRIVER_OPS["dma read 300 sectors at LBA 1000, drive 0 (LBA48)"]


def _device(name: str) -> list[PortAccess]:
    with gzip.open(DATA / name, "rt") as f:
        return parse_trace(f.read().splitlines()).events


SEABIOS_OPS = _device("qemu-trace-seabios-ops.log.gz")
ERRORS = _device("qemu-trace-qboot-errors.log.gz")


class Waves:
    """A VCD file read back: each signal's (time, value) changes, values as ints where they are
    0/1 only (None for x), strings from pyvcd's tokenizer."""

    def __init__(self, path: Path) -> None:
        self.text = path.read_text()
        parsed = VCDVCD(str(path))
        self.timescale = str(parsed.timescale["magnitude"]) + " " + str(parsed.timescale["unit"])
        self.signals: set[str] = set(parsed.signals)
        self.tv: dict[str, list[tuple[int, int | None]]] = {}
        for name in parsed.signals:
            self.tv[name] = [(t, int(v, 2) if set(v) <= {"0", "1"} else None) for t, v in parsed[name].tv]
        self.strings = self._strings(path)

    @staticmethod
    def _strings(path: Path) -> dict[str, list[tuple[int, str]]]:
        names: dict[str, str] = {}
        scope: list[str] = []
        out: dict[str, list[tuple[int, str]]] = {}
        now = 0
        with open(path, "rb") as f:
            for token in tokenize(f):
                if token.kind is TokenKind.SCOPE:
                    scope.append(token.scope.ident)
                elif token.kind is TokenKind.UPSCOPE:
                    scope.pop()
                elif token.kind is TokenKind.VAR and token.var.type_.value == "string":
                    names[token.var.id_code] = ".".join([*scope, token.var.reference])
                elif token.kind is TokenKind.CHANGE_TIME:
                    now = token.time_change
                elif token.kind is TokenKind.CHANGE_STRING:
                    out.setdefault(names[token.string_change.id_code], []).append(
                        (now, token.string_change.value)
                    )
        return out

    def changes(self, name: str) -> list[int | None]:
        """The values a signal takes, in order (the initial x included)."""
        return [v for _, v in self.tv[name]]

    def at(self, name: str, time: int) -> int | None:
        value: int | None = None
        for t, v in self.tv[name]:
            if t > time:
                break
            value = v
        return value


def _known(values: list[int | None]) -> list[int]:
    return [v for v in values if v is not None]


def _dedup(values: list[Any]) -> list[Any]:
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


# --- the driver side: an event counter, registers, data counter, markers ------------------------
def test_pio_write_reads_back_with_its_registers_status_and_data_counter(tmp_path: Path) -> None:
    wave = write_vcd(PIO_WRITE, tmp_path / "pio.vcd", title="pio write")
    w = Waves(wave.vcd)
    assert wave.time_base == TIME_COUNTER and "event counter" in w.text
    cmd_index = next(i for i, e in enumerate(PIO_WRITE) if e.register == "primary Command")
    # the written task file, at the access that wrote it (time N = access N)
    assert w.tv["piix3.primary.command"] == [(0, None), (cmd_index, 0xC5)]
    assert w.at("piix3.primary.sector_count", cmd_index) == 17
    assert w.at("piix3.primary.lba_low", cmd_index) == 100 and w.at("piix3.primary.device", cmd_index) == 0xE0
    # the data counter: bytes so far, one step per string transfer (16 sectors, then 1)
    assert w.changes("piix3.primary.data_bytes") == [0, 16 * 512, 17 * 512]
    # DRQ up after the command, down after the last block
    drq = w.tv["piix3.primary.DRQ"]
    assert PIO_WRITE[0].register == "primary Alt Status"  # so DRQ is known from time 0 on
    assert [v for _, v in drq] == [0, 1, 0] and drq[0][0] == 0
    assert drq[1][0] > cmd_index
    assert "piix3.secondary.command" not in w.signals  # only the channels the record touches
    assert w.strings["piix3.primary.command_name"][-1][1] == "WRITE_MULTIPLE"


def test_driver_markers_name_the_function_at_each_access(tmp_path: Path) -> None:
    w = Waves(write_vcd(PIO_WRITE, tmp_path / "pio.vcd").vcd)
    functions = [e.where.split(" (")[0] for e in PIO_WRITE]
    expected = [(i, f) for i, f in enumerate(functions) if i == 0 or f != functions[i - 1]]
    assert w.strings["piix3.driver.function"] == expected
    lines = [int(e.where.rsplit(":", 1)[1].rstrip(")")) for e in PIO_WRITE]
    assert w.at("piix3.driver.line", 5) == lines[5]
    assert w.tv["piix3.event"] == [(i, i) for i in range(len(PIO_WRITE))]  # time N is access N


def test_dma_read_start_and_active_follow_the_bus_master(tmp_path: Path) -> None:
    w = Waves(write_vcd(DMA_READ, tmp_path / "dma.vcd").vcd)
    writes = [e.value & 1 for e in DMA_READ if e.register == "primary BM Command" and e.value is not None]
    bm_status = [e for e in DMA_READ if e.register == "primary BM Status" and e.direction == "in"]
    reads = [(e.value or 0) & 1 for e in bm_status]
    assert _known(w.changes("piix3.primary.START")) == _dedup(writes)
    assert _known(w.changes("piix3.primary.START")) == [0, 1, 0]
    assert _known(w.changes("piix3.primary.ACTIVE")) == _dedup(reads)
    start = next(t for t, v in w.tv["piix3.primary.START"] if v == 1)
    assert w.at("piix3.primary.command", start) == 0x25  # READ DMA EXT was issued before START
    assert w.changes("piix3.primary.data_bytes") == [0]  # DMA moves nothing through the data port


# --- the device side: QEMU's time ---------------------------------------------------------------
def test_device_record_is_drawn_in_qemu_time(tmp_path: Path) -> None:
    wave = write_vcd(SEABIOS_OPS, tmp_path / "dev.vcd")
    w = Waves(wave.vcd)
    assert wave.time_base == TIME_DEVICE and w.timescale == "1 ns" and "QEMU trace timestamps" in w.text
    first = SEABIOS_OPS[0].time_us or 0.0
    times, _ = timeline(SEABIOS_OPS)
    stamps = [round(((e.time_us or 0.0) - first) * 1000) for e in SEABIOS_OPS]
    assert len(set(stamps)) < len(stamps)  # QEMU stamps in whole µs: many accesses share one
    assert all(b > a for a, b in zip(times, times[1:], strict=False))  # none is hidden behind another
    assert all(0 <= t - s < 1000 for t, s in zip(times, stamps, strict=True))  # within the µs
    drawn = [i for i, e in enumerate(SEABIOS_OPS) if not e.register.endswith(("Sector Count", "LBA Low"))]
    event_times = [t for t, v in w.tv["piix3.event"] if v is not None]
    assert len(event_times) >= len(drawn) - 20  # reads of probe registers are not drawn
    # every command the device saw, at the time of its access
    cmds = [(times[i], e.value) for i, e in enumerate(SEABIOS_OPS) if e.register == "primary Command"]
    assert [c for c in w.tv["piix3.primary.command"] if c[1] is not None] == _dedup_pairs(cmds)


def _dedup_pairs(pairs: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
    return [p for i, p in enumerate(pairs) if i == 0 or p[1] != pairs[i - 1][1]]


def test_status_bits_are_the_bits_of_each_status_read(tmp_path: Path) -> None:
    w = Waves(write_vcd(ERRORS, tmp_path / "errors.vcd").vcd)
    times, _ = timeline(ERRORS)
    seen = set()
    for i, e in enumerate(ERRORS):
        if e.register in ("primary Status", "primary Alt Status") and e.value is not None:
            assert w.at("piix3.primary.status", times[i]) == e.value
            for bit, shift in STATUS_BITS.items():
                assert w.at(f"piix3.primary.{bit}", times[i]) == (e.value >> shift) & 1, (i, bit, e)
            seen.add(e.value)
    assert {0xD0, 0x41, 0x58} <= seen  # BSY, ERR and DRQ each set somewhere in this record


def test_secondary_channel_has_its_own_signals(tmp_path: Path) -> None:
    w = Waves(write_vcd(SEABIOS_OPS, tmp_path / "dev.vcd").vcd)
    secondary = [e.value for e in SEABIOS_OPS if e.register == "secondary Command"]
    assert 0xC8 in secondary  # the DMA read on drive 2
    assert [v for v in w.changes("piix3.secondary.command") if v is not None] == _dedup(secondary)
    assert 1 in w.changes("piix3.secondary.START")
    primary = [e.value for e in SEABIOS_OPS if e.register == "primary Command"]
    assert [v for v in w.changes("piix3.primary.command") if v is not None] == _dedup(primary)


def test_a_record_not_stamped_throughout_uses_the_counter(tmp_path: Path) -> None:
    mixed = [dataclasses.replace(e, time_us=None) if i == 3 else e for i, e in enumerate(SEABIOS_OPS[:50])]
    wave = write_vcd(mixed, tmp_path / "mixed.vcd")
    assert wave.time_base == TIME_COUNTER
    assert timeline(mixed)[0] == list(range(50))


# --- the GTKWave save file ------------------------------------------------------------------
def test_gtkw_groups_per_channel_and_names_only_declared_signals(tmp_path: Path) -> None:
    wave = write_vcd(SEABIOS_OPS, tmp_path / "dev.vcd")
    assert wave.gtkw == tmp_path / "dev.gtkw"
    text = wave.gtkw.read_text()
    assert f'[dumpfile] "{wave.vcd}"' in text
    groups = re.findall(r"^-(\S+)$", text, re.M)
    assert groups == ["record", "record", "primary", "primary", "secondary", "secondary"]  # begin, end
    traces = [line for line in text.splitlines() if line.startswith("piix3.")]
    declared = set(Waves(wave.vcd).signals)
    # GTKWave 3.3.118 drops a vector wire named without its bit range, silently
    assert [t for t in traces if t not in {gtkwave_name(s) for s in declared}] == []
    assert "piix3.primary.status[7:0]" in traces and "piix3.primary.BSY" in traces
    assert "piix3.primary.bm_prd[31:0]" in traces and "piix3.event" in traces
    assert len(traces) == len(declared)


def test_gtkw_zoom_fits_the_record(tmp_path: Path) -> None:
    wave = write_vcd(PIO_WRITE, tmp_path / "pio.vcd")
    assert wave.gtkw is not None
    (zoom,) = re.findall(r"^\*(-?[\d.]+) ", wave.gtkw.read_text(), re.M)
    per_pixel = 2 ** -float(zoom) / 200  # GTKWave's units per pixel at that zoom
    assert 800 * per_pixel == pytest.approx(len(PIO_WRITE), rel=0.01)  # the last access, and one more


# --- refusals ---------------------------------------------------------------------------------
def test_nothing_to_draw_is_a_port_error(tmp_path: Path) -> None:
    with pytest.raises(PortError, match="filled in when it closes"):
        write_vcd([], tmp_path / "empty.vcd")
    com1 = PortMap().access("out", 0x3F8, 1, 0x41)
    with pytest.raises(PortError, match="none of the record's 1 accesses"):
        write_vcd([com1], tmp_path / "com1.vcd")
    with pytest.raises(PortError, match="the .gtkw file is written beside it"):
        write_vcd(PIO_WRITE, tmp_path / "x.gtkw")
    with pytest.raises(PortError, match="cannot write the waveform .*missing"):
        write_vcd(PIO_WRITE, tmp_path / "missing" / "w.vcd")
    assert list(tmp_path.iterdir()) == []


def test_other_ports_are_left_out_and_counted(tmp_path: Path) -> None:
    com1 = PortMap().access("out", 0x3F8, 1, 0x41)
    wave = write_vcd([com1, *PIO_WRITE], tmp_path / "w.vcd")
    assert (wave.drawn, wave.skipped) == (len(PIO_WRITE), 1)
    w = Waves(wave.vcd)
    assert w.tv["piix3.primary.command"][-1] == (cmd_time := w.tv["piix3.primary.command"][-1][0], 0xC5)
    assert cmd_time == 1 + next(i for i, e in enumerate(PIO_WRITE) if e.register == "primary Command")


# --- driver markers on the device record ------------------------------------------------------
def _pairs() -> list[tuple[str, list[PortAccess], list[PortAccess]]]:
    doc = json.loads((DATA / "ports-driver-events.json").read_text())
    pmap = PortMap(doc["bm_base"])
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (DATA / "qemu-trace-ops.log").read_text().splitlines():
        if line.startswith("# "):
            current = sections.setdefault(line[2:], [])
        else:
            current.append(line)
    return [
        (title, events_from_agent(rows, pmap), parse_trace(sections[title], pmap).events)
        for title, rows in doc["operations"].items()
    ]


@pytest.mark.parametrize(("title", "driver", "device"), _pairs(), ids=[p[0] for p in _pairs()])
def test_device_accesses_take_the_function_of_their_driver_access(
    title: str, driver: list[PortAccess], device: list[PortAccess]
) -> None:
    merged = with_driver_markers(device, driver)
    assert [dataclasses.replace(e, where="") for e in merged] == device  # nothing else changes
    assert all(e.where for e in merged), [str(e) for e in merged if not e.where]
    # data runs: every word of the device's run carries the function of the driver's rep ins/outs
    data_where = {e.where for e in merged if e.register.endswith(" Data")}
    assert data_where <= {e.where for e in driver if e.register.endswith(" Data")}
    command = next(e for e in merged if e.register.endswith(" Command") and e.direction == "out")
    assert command.where == next(e.where for e in driver if e.register.endswith(" Command"))


def test_an_access_only_one_side_saw_gets_no_marker() -> None:
    title, driver, device = _pairs()[0]
    dropped = next(i for i, e in enumerate(driver) if e.register.endswith(" Command"))
    merged = with_driver_markers(device, driver[:dropped] + driver[dropped + 1 :])
    unmarked = [e for e in merged if not e.where]
    assert [e.register for e in unmarked] == [driver[dropped].register], title


# --- recorders: to_vcd on both, and the registry the pytest plugin reads ------------------------
def _device_trace(events: list[PortAccess]) -> DeviceTrace:
    trace = DeviceTrace(cast(Any, None), PortMap)  # no machine: fed with a recorded record
    trace.events = events
    return trace


def _port_watch(events: list[PortAccess]) -> PortWatch:
    watch = PortWatch(cast(Any, None), [], "ide", 0)
    watch.events = events
    return watch


def test_both_records_have_to_vcd(tmp_path: Path) -> None:
    dev = _device_trace(SEABIOS_OPS).to_vcd(tmp_path / "dev.vcd")
    io = _port_watch(PIO_WRITE).to_vcd(tmp_path / "io.vcd", gtkw=False)
    assert (dev.time_base, io.time_base) == (TIME_DEVICE, TIME_COUNTER)
    assert "DeviceTrace" in dev.vcd.read_text()[:200] and io.gtkw is None
    assert not (tmp_path / "io.gtkw").exists()


def test_recorders_made_since_a_mark_are_found_and_written(tmp_path: Path) -> None:
    before = _port_watch([])
    mark = Recorder.mark()
    assert mark == before.serial
    io, dev, empty = _port_watch(PIO_WRITE), _device_trace(SEABIOS_OPS), _device_trace([])
    assert Recorder.made_since(mark) == [io, dev, empty]
    assert [r.serial for r in (io, dev, empty)] == [mark + 1, mark + 2, mark + 3]
    paths = write_recorders(Recorder.made_since(mark), tmp_path / "vcd")
    assert [p.name for p in paths] == [f"{recorder_file_stem(io)}.vcd", f"{recorder_file_stem(dev)}.vcd"]
    assert recorder_file_stem(io).endswith("-ports") and recorder_file_stem(dev).endswith("-device")
    assert all(p.with_suffix(".gtkw").exists() for p in paths)
    assert write_recorders([], tmp_path / "none") == [] and not (tmp_path / "none").exists()


def test_a_long_record_is_written_as_its_tail(tmp_path: Path) -> None:
    io = _port_watch(PIO_WRITE)
    (path,) = write_recorders([io], tmp_path, max_events=10)
    w = Waves(path)
    first = len(PIO_WRITE) - 10
    assert f"only accesses {first}..{len(PIO_WRITE) - 1} of {len(PIO_WRITE)}" in w.text
    # still access N at time N; before the tail, unknown
    assert w.tv["piix3.event"] == [(0, None)] + [(i, i) for i in range(first, len(PIO_WRITE))]
    moved = sum(e.count * e.width for e in PIO_WRITE[first:] if e.register == "primary Data")
    assert w.changes("piix3.primary.data_bytes")[-1] == moved  # counted from the tail's start
    device = _device_trace(SEABIOS_OPS[:100])
    (dev_path,) = write_recorders([device], tmp_path, max_events=40)
    times, _ = timeline(SEABIOS_OPS[60:100])
    assert Waves(dev_path).tv["piix3.event"][0] == (0, 60) and times[0] == 0


def test_a_recorder_a_helper_dropped_is_still_found() -> None:
    mark = Recorder.mark()

    def helper() -> list[PortAccess]:  # the test keeps the events, not the recorder
        return _port_watch(PIO_WRITE).events

    assert helper() == PIO_WRITE
    (found,) = Recorder.made_since(mark)
    assert found.events == PIO_WRITE and isinstance(found, PortWatch)


def test_only_the_last_recorders_are_kept() -> None:
    mark = Recorder.mark()
    made = [_port_watch([]) for _ in range(RECENT_RECORDERS + 3)]
    assert Recorder.made_since(mark) == made[3:]  # bounded: a long session does not pile them up
    del made
    assert len(Recorder.made_since(mark)) == RECENT_RECORDERS


# --- piix3 trace --vcd: bad paths refused before anything starts ------------------------------
@pytest.fixture
def no_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a machine was started for a bad argument")

    monkeypatch.setattr(cli, "Machine", refuse)
    old = signal.getsignal(signal.SIGTERM)  # main() installs its own SIGTERM handler
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.mark.usefixtures("no_machine")
@pytest.mark.parametrize(
    ("vcd", "message"),
    [
        ("w.gtkw", "name the .vcd file"),
        ("nodir/w.vcd", "does not exist"),
        (".", "is not a regular file"),
    ],
)
def test_trace_vcd_bad_paths(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    vcd: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "disk.img"
    rc = cli.main(["trace", "--image", str(image), "write", "5", "hello", "--vcd", vcd])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("piix3 trace: --vcd") and message in err, err
    assert not image.exists()  # checked before the image is created


def test_importing_vcdvcd_does_not_leave_sigpipe_deadly() -> None:
    """vcdvcd sets SIGPIPE to its default action on import (this module imports it); the
    plugin puts it back after collection, or a write to a dead GDB kills the pytest worker."""
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
