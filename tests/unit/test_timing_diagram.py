"""Timing diagrams (harness/portio/timing_diagram.py): real driver-side records (tests/data/
ports-driver-ops.json) as WaveDrom documents, and the README's pictures
(tests/data/waveforms/) drawn from their checked-in sources. No QEMU here."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.portio.access import PortAccess, PortError
from harness.portio.compare import normalize
from harness.portio.timing_diagram import diagram, render_svg, write

DATA = Path(__file__).resolve().parents[1] / "data"
PICTURES = DATA / "waveforms"
OPS = {
    title: [PortAccess(**row) for row in rows]
    for title, rows in json.loads((DATA / "ports-driver-ops.json").read_text())["operations"].items()
}
PIO_WRITE = OPS["pio write 17 sectors at LBA 100, drive 0"]
DMA_WRITE = OPS["dma write 8 sectors at LBA 200, drive 0"]


def _lanes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every lane of a document by name, groups flattened."""
    out: dict[str, dict[str, Any]] = {}
    for item in doc["signal"]:
        for lane in item[1:] if isinstance(item, list) else [item]:
            if lane:
                out[lane["name"]] = lane
    return out


def _columns(lane: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(wave char, label or None) per column: '=' and '2'..'9' take the next data label."""
    labels = iter(lane.get("data", []))
    return [(c, next(labels) if c == "=" or c.isdigit() and c not in "01" else None) for c in lane["wave"]]


def test_pio_write_diagram() -> None:
    doc = diagram(PIO_WRITE, "PIO write")
    lanes = _lanes(doc)
    columns = normalize(PIO_WRITE)
    assert all(len(lane["wave"]) == len(columns) for lane in lanes.values())  # one column per access
    access = [label for _, label in _columns(lanes["access"])]
    assert access[:2] == ["rd AltSt", "wr Dev"] and "rd AltSt x5" in access  # polls folded, counted
    cmd = access.index("wr Cmd")
    assert _columns(lanes["Command"])[cmd] == ("3", "C5 WRITE MULTIPLE")
    assert _columns(lanes["Sector Count"])[access.index("wr Count")] == ("=", "11")
    # DRQ rises after the command and falls after the last block; data moves only while it is up
    drq = lanes["DRQ"]["wave"]
    assert drq.index("1") > cmd and drq.rindex("0") > drq.index("1")
    data = _columns(lanes["Data port"])
    assert [label for c, label in data if label] == ["8192 B out", "512 B out"]
    assert all(drq[: i + 1].rstrip(".")[-1] == "1" for i, (c, _) in enumerate(data) if c == "5")
    assert {c for c, _ in data} <= {"z", ".", "5"}  # idle between transfers
    functions = [label for _, label in _columns(lanes["function"]) if label]
    assert functions[:4] == ["alt_status", "select_drive", "alt_status", "issue"]
    assert "BM START" not in lanes  # PIO: no bus-master lanes


def test_dma_write_diagram() -> None:
    lanes = _lanes(diagram(DMA_WRITE, "DMA write", "foot"))
    access = [label for _, label in _columns(lanes["access"])]
    start = lanes["BM START"]["wave"]
    assert start.count("1") == 1 and access[start.index("1")] == "wr BMCmd"
    assert start.index("1") > access.index("wr Cmd")  # START after the command
    assert _columns(lanes["Command"])[access.index("wr Cmd")] == ("3", "CA WRITE DMA")
    assert "Data port" not in lanes  # the bus master moves the data, not the port


def test_a_diagram_draws_one_channel_of_ide_registers() -> None:
    with pytest.raises(PortError, match="no IDE register"):
        diagram([], "nothing")
    secondary = OPS["dma read 1 sector at LBA 9, drive 2"]
    with pytest.raises(PortError, match="one channel"):
        diagram(PIO_WRITE + secondary, "both")


@pytest.mark.parametrize("stem", ["pio-write", "dma-read"])
def test_readme_pictures_are_drawn_from_their_sources(stem: str, tmp_path: Path) -> None:
    """The checked-in SVG is what the checked-in WaveDrom source draws (not stale), and shows
    what the README says it shows."""
    doc = json.loads((PICTURES / f"{stem}.json").read_text())
    svg = (PICTURES / f"{stem}.svg").read_text()
    assert svg == render_svg(doc) + "\n"
    text = " ".join("".join(t.itertext()) for t in ET.fromstring(svg).iter() if t.tag.endswith("}text"))
    lanes = _lanes(doc)
    if stem == "pio-write":
        assert "C5 WRITE MULTIPLE" in text and "512 B out" in text and "pio_xfer" in text
    else:
        assert "C8 READ DMA" in text and "dma_xfer" in text
        assert lanes["BM START"]["wave"].count("1") == 1
    source, picture = write(doc, tmp_path / stem)
    assert picture.read_text() == svg and json.loads(source.read_text()) == doc
