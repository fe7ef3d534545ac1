"""Functional coverage (harness/coverage/covergroup.py, functional.py): the covergroup's
bookkeeping, and the wire decoding fed with a recorded QEMU device trace (tests/data/
qemu-trace-ops.log: IDENTIFY, PIO and DMA reads and writes, FLUSH, SRST)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.coverage import functional
from harness.coverage.covergroup import CoverError, Covergroup, Coverpoint, Cross
from harness.portio.devtrace import parse_trace

TRACE = Path(__file__).resolve().parent.parent / "data" / "qemu-trace-ops.log"


def small() -> Covergroup:
    return Covergroup(
        "g",
        [Coverpoint("mode", ["pio", "dma"]), Coverpoint("dir", ["read", "write"])],
        [Cross("mode_x_dir", ("mode", "dir"))],
        {"mode.pio": "not here"},
    )


def test_samples_fill_bins_and_crosses() -> None:
    g = small()
    g.sample(mode="dma", dir="read")
    g.sample(mode="dma")  # no dir: the cross is not sampled
    assert g.points["mode"].hits == {"pio": 0, "dma": 2}
    assert g.crosses["mode_x_dir"].hits[("dma", "read")] == 1
    assert g.unhit() == [
        "mode.pio",
        "dir.write",
        "mode_x_dir.pio*read",
        "mode_x_dir.pio*write",
        "mode_x_dir.dma*write",
    ]
    assert g.percent() == pytest.approx(100 * 3 / 8)
    table = g.table()
    assert "TOTAL" in table and "mode.pio  (not here)" in table


def test_an_unknown_bin_is_an_error_not_a_miss() -> None:
    g = small()
    with pytest.raises(CoverError, match="no bin 'udma'"):
        g.sample(mode="udma")
    with pytest.raises(CoverError):
        g.sample(speed="fast")


def test_workers_merge_and_reports_render() -> None:
    a, b = small(), small()
    a.sample(mode="pio", dir="write")
    b.sample(mode="dma", dir="read")
    total = small()
    total.merge(a.to_json())
    total.merge(b.to_json())
    assert total.samples == 2 and total.percent() == pytest.approx(100 * 6 / 8)
    md, html = total.markdown(), total.html()
    assert "| pio / write |" not in md and "| pio | **0** | 1 |" in md
    assert "<td class='miss'>0</td>" in html
    other = Covergroup("h", [Coverpoint("mode", ["pio"])])
    with pytest.raises(CoverError):
        total.merge(other.to_json())


def test_wire_decoding_of_a_recorded_trace() -> None:
    """The recorded operations (their comments in the file), command by command: drive, opcode,
    and the count and LBA decoded from the task file; the SRST of channel 1 in its place."""
    events = parse_trace(TRACE.read_text().splitlines()).events
    record = list(functional.wire_events(events))
    got = [
        ("srst", r.channel) if isinstance(r, functional.WireReset) else (r.drive, r.name, r.count, r.lba)
        for r in record
    ]
    assert got == [
        (0, "IDENTIFY", 256, 0),
        (0, "WRITE_MULTIPLE", 1, 5),
        (0, "READ_MULTIPLE", 2, 5),
        (0, "FLUSH_CACHE_EXT", 256, 0),
        (0, "WRITE_DMA", 2, 9),
        (2, "READ_DMA", 1, 9),
        (0, "SET_FEATURES", 256, 0),
        ("srst", 1),
        (2, "IDENTIFY", 256, 0),
        (2, "SET_MULTIPLE", 16, 0),
    ]
    g = functional.new_group()
    functional.sample_wire(g, record, {0: 131072, 2: 131072})
    assert g.points["drive"].hits == {"0": 9, "1": 0, "2": 4, "3": 0}  # data commands count twice
    assert g.points["mode"].hits == {"pio": 2, "dma": 2}
    assert g.crosses["drive_x_mode"].hits[("2", "dma")] == 1
    assert g.points["reset"].hits["srst"] == 1


def test_lba48_task_file_decodes_all_six_bytes() -> None:
    w = {"count": [0x01, 0x02], "low": [0x44, 0x11], "mid": [0x55, 0x22], "high": [0x66, 0x33]}
    assert functional._decode(0x25, w, 0x40) == (0x0102, 0x66_5544_332211)
    assert functional._decode(0xC8, {"count": [0], "low": [1], "mid": [2], "high": [3]}, 0xEA) == (
        256,
        0xA030201,
    )


@pytest.mark.parametrize(
    ("lba", "count", "sectors", "zones"),
    [
        (0, 1, 100, ["zero"]),
        ((1 << 28) - 8, 8, None, ["below_2^28"]),
        ((1 << 28) - 1, 2, None, ["across_2^28"]),
        (1 << 32, 1, (1 << 32) + 1, ["at_or_above_2^32", "last_sector"]),
        (5, 1, 100, []),
    ],
)
def test_lba_zones(lba: int, count: int, sectors: int | None, zones: list[str]) -> None:
    assert functional.lba_zones(lba, count, sectors) == zones


def test_count_classes() -> None:
    assert [functional.count_class(n) for n in (1, 2, 255, 256, 257, 65535, 65536, 0)] == [
        "1",
        "2-255",
        "2-255",
        "256",
        "257-65535",
        "257-65535",
        "65536",
        None,
    ]


def test_calls_bin_outcomes_faults_and_srst() -> None:
    g = functional.new_group()
    C = functional.CallSample
    functional.sample_call(g, C("read", 0, -5, frozenset({"read"}), False, False))
    functional.sample_call(g, C("write", 0, -5, frozenset({"read"}), False, False))  # no write fault
    functional.sample_call(g, C("read", 0, -4, frozenset(), True, False))
    functional.sample_call(g, C("read", 0, None, frozenset({"read"}), False, True))
    functional.sample_call(g, C("reset_channel", 0, 0, frozenset(), False, False))
    assert g.points["fault"].hits == {
        "read_eio": 1,
        "write_eio": 0,
        "flush_eio": 0,
        "held_request": 1,
        "io_error_stop": 1,
    }
    assert g.points["outcome"].hits["DEVICE"] == 2 and g.points["reset"].hits["srst"] == 1
