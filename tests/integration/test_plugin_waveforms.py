"""VCD on failure, as a user meets it in an inner pytest session: a failing test's port watch
and the plugin's device trace of its machine are drawn next to its logs, named in a "piix3
waveforms" report section and in JUnit XML; a passing test, or a failing one with nothing
recorded, gets none."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from vcdvcd import VCDVCD  # type: ignore[import-untyped]

pytestmark = pytest.mark.qemu
RUN_TIMEOUT = 120.0  # s, for the inner pytest run
WRITE_DMA = 0xCA

INNER = """
import pytest

from harness import DiskImage, Machine


def test_watched_fails(machine: Machine) -> None:
    with machine.watch_ports("primary") as io:
        machine.ata.write(0, 7, b"w" * 512)
    assert not io.events, "fails on purpose"


def test_watched_passes(machine: Machine) -> None:
    with machine.watch_ports("primary") as io:
        machine.ata.write(0, 8, b"p" * 512)
    assert io.events


@pytest.mark.piix3_protocol(False)
def test_unrecorded_fails(machine_factory, tmp_path) -> None:
    m = machine_factory(disks=[DiskImage.create(tmp_path / "d.img", size_mib=4)])
    m.ata.flush(0)
    assert False, "fails on purpose, with no watch and no device trace"
"""


def _values(vcd: VCDVCD, name: str) -> list[int]:
    return [int(v, 2) for _, v in vcd[name].tv if set(v) <= {"0", "1"}]


def test_failing_test_gets_its_waveforms_next_to_its_logs(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    artifacts, junit = tmp_path / "artifacts", tmp_path / "junit.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--rootdir",
            str(tmp_path),
            f"--basetemp={tmp_path / 'base'}",
            f"--piix3-artifacts={artifacts}",
            f"--junitxml={junit}",
            str(tmp_path / "test_inner.py"),
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
        timeout=RUN_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 1 and "2 failed, 1 passed" in out, out[-3000:] + done.stderr[-2000:]
    root = artifacts / "main"
    test_dir = next(root.glob("test_watched_fails-*"))
    waves = test_dir / "waveforms"
    device = next(waves.glob("*-device.vcd"))
    ports = next(waves.glob("*-ports.vcd"))
    assert device.with_suffix(".gtkw").is_file() and ports.with_suffix(".gtkw").is_file()
    assert (test_dir / "pooled-machine" / "serial.log").is_file(), "next to the test's logs"

    # named in the report, each with what it is, and in JUnit XML
    section = out.split("piix3 waveforms", 1)[1].split("piix3 artifacts", 1)[0]
    assert re.search(rf"{re.escape(str(device))}: the protocol checker's device trace .* QEMU-timed", section)
    assert f"{ports}: port watch on primary (GDB: the driver's side" in section
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    props = [(p.get("name"), p.get("value")) for p in cases["test_watched_fails"].iter("property")]
    assert ("piix3_waveforms", str(device)) in props and ("piix3_waveforms", str(ports)) in props

    # both records show the test's WRITE DMA; the device side in QEMU's time
    assert "time: QEMU trace timestamps" in device.read_text()
    assert "time: an event counter" in ports.read_text()
    for path in (device, ports):
        assert WRITE_DMA in _values(VCDVCD(str(path)), "piix3.primary.command"), path

    # nothing for a passing test, nor for a failing one that recorded nothing
    assert not list(root.glob("test_watched_passes-*")), "a passing test leaves nothing"
    unrecorded = next(root.glob("test_unrecorded_fails-*"))
    assert (unrecorded / "machine0" / "serial.log").is_file()
    assert not (unrecorded / "waveforms").exists()
    assert out.count("piix3 waveforms") == 1
    names = [p.get("name") for p in cases["test_unrecorded_fails"].iter("property")]
    assert "piix3_waveforms" not in names and "piix3_artifacts" in names
