"""Waveforms from live records: `piix3 trace ... --vcd FILE` (through harness.cli.main) read
back with vcdvcd, and both recorders' to_vcd / the recorder registry on a real machine."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from vcd.reader import TokenKind, tokenize
from vcdvcd import VCDVCD  # type: ignore[import-untyped]

from harness import cli
from harness.disk import DiskImage
from harness.portio.recorder import Recorder, write_recorders
from harness.portio.vcd import TIME_COUNTER, TIME_DEVICE
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu
SECTOR = 512


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    old = signal.getsignal(signal.SIGTERM)  # main() installs its own SIGTERM handler
    yield
    signal.signal(signal.SIGTERM, old)


def _values(vcd: VCDVCD, name: str) -> list[int | None]:
    """A signal's values in order; None for x."""
    return [int(v, 2) if set(v) <= {"0", "1"} else None for _, v in vcd[name].tv]


def _strings(path: Path, name: str) -> list[str]:
    """The values a string signal takes (vcdvcd skips string changes; pyvcd's reader reads them)."""
    ident = None
    out: list[str] = []
    with open(path, "rb") as f:
        for token in tokenize(f):
            if token.kind is TokenKind.VAR and token.var.reference == name:
                ident = token.var.id_code
            elif token.kind is TokenKind.CHANGE_STRING and token.string_change.id_code == ident:
                out.append(token.string_change.value)
    return out


@pytest.mark.usefixtures("sigterm_restored")
@pytest.mark.parametrize(
    ("mode", "command", "function"),
    [("dma", 0xCA, "dma_xfer"), ("pio", 0xC5, "pio_xfer")],  # WRITE DMA / WRITE MULTIPLE
    ids=["dma", "pio"],
)
def test_piix3_trace_vcd(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    piix3_firmware: str,
    mode: str,
    command: int,
    function: str,
) -> None:
    image = tmp_path / "disk.img"
    DiskImage.create(image, size_mib=8)
    vcd_path = tmp_path / "w.vcd"
    argv = ["trace", "--image", str(image), "--firmware", piix3_firmware, "--mode", mode]
    rc = cli.main([*argv, "write", "5", "hello", "--vcd", str(vcd_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"waveform: {vcd_path}" in out and f"gtkwave {vcd_path} {tmp_path / 'w.gtkw'}" in out
    assert (tmp_path / "w.gtkw").is_file()
    text = vcd_path.read_text()
    assert "QEMU trace timestamps" in text and "GDB's port watch" in text  # device time, said so
    vcd = VCDVCD(str(vcd_path))
    assert str(vcd.timescale["unit"]) == "ns"
    # the command byte, and its name
    assert command in _values(vcd, "piix3.primary.command")
    assert _strings(vcd_path, "command_name")[-1] == {0xCA: "WRITE_DMA", 0xC5: "WRITE_MULTIPLE"}[command]
    # status bits: ready throughout the reads, never an error
    assert set(_values(vcd, "piix3.primary.DRDY")) - {None} == {1}
    assert set(_values(vcd, "piix3.primary.ERR")) - {None} == {0}
    # the driver's functions laid on the device's accesses
    functions = _strings(vcd_path, "function")
    assert "send_cmd" in functions and function in functions
    data = _values(vcd, "piix3.primary.data_bytes")
    start = [v for v in _values(vcd, "piix3.primary.START") if v is not None]
    if mode == "dma":
        assert start[start.index(1) :] == [1, 0]  # START set once, then cleared
        assert data == [0]
    else:
        assert set(start) <= {0}  # the bus master stays idle
        assert data[-1] == SECTOR
        assert 1 in _values(vcd, "piix3.primary.DRQ")
    times = [t for t, _ in vcd["piix3.event"].tv]
    assert times == sorted(times) and times[-1] > 1000 * len(times)  # µs apart, not a counter


def test_both_recorders_write_vcd_and_are_found_by_mark(
    tmp_path: Path, machine_factory: MachineFactory, disk: DiskImage
) -> None:
    m = machine_factory(disks=[disk])
    mark = Recorder.mark()
    with m.device_trace() as dev, m.watch_ports() as io:
        m.ata.write(0, 7, b"w" * SECTOR, mode="dma")
    assert Recorder.made_since(mark) == [dev, io]
    io_wave = io.to_vcd(tmp_path / "io.vcd")
    dev_wave = dev.to_vcd(tmp_path / "dev.vcd")
    assert (io_wave.time_base, dev_wave.time_base) == (TIME_COUNTER, TIME_DEVICE)
    for wave in (io_wave, dev_wave):
        vcd = VCDVCD(str(wave.vcd))
        assert 0xCA in _values(vcd, "piix3.primary.command")
        assert 1 in _values(vcd, "piix3.primary.START")
    assert "send_cmd" in _strings(io_wave.vcd, "function")
    assert "piix3.driver.function" not in VCDVCD(str(dev_wave.vcd)).signals  # the device knows no C
    written = write_recorders(Recorder.made_since(mark), tmp_path / "on-failure")
    assert [re.sub(r"^\d+-", "", p.name) for p in written] == ["device.vcd", "ports.vcd"]
