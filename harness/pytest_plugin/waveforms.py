"""Waveforms of a failing test: every port watch and device trace made during the test --
the plugin's own device trace of each machine (the protocol checker's record, QEMU-timed)
included -- drawn as VCD files with GTKWave save files beside them, in the test's artifact
directory (`<test dir>/waveforms/NN-ports.vcd`, `NN-device.vcd`), named in a "piix3
waveforms" report section and, in JUnit XML, as `piix3_waveforms` properties.

Bounded: at most the last RECENT_RECORDERS recorders of the process (harness.portio.access)
and, of each, the last MAX_ARTIFACT_EVENTS accesses (harness.portio.vcd: about 10 MB of VCD);
the plugin's trace leaves out the data-port words. Nothing is written for a passing test.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.portio.devtrace import DeviceTrace
from harness.portio.recorder import Recorder, recorder_file_stem, write_recorders
from harness.portio.watch import PortWatch
from harness.pytest_plugin import protocol

MARK = pytest.StashKey[int]()  # per test: Recorder.mark() when it started
TEST_DIR = pytest.StashKey[Path]()  # per test: its artifact directory
DONE = pytest.StashKey[bool]()  # per test: its waveforms are written (once, at its first failure)
SUBDIR = "waveforms"
PROPERTY = "piix3_waveforms"


def start(item: pytest.Item, test_dir: Path) -> None:
    """The test begins: recorders made from now on are its own."""
    item.stash[MARK] = Recorder.mark()
    item.stash[TEST_DIR] = test_dir


def _label(recorder: Recorder, plugin_traces: set[int]) -> str:
    count = f"{len(recorder.events)} accesses"
    if isinstance(recorder, DeviceTrace):
        try:
            where = f" of {recorder.path.parent}"
        except HarnessError:
            where = ""
        whose = "the protocol checker's device trace" if recorder.serial in plugin_traces else "device trace"
        return f"{whose}{where} (QEMU's side, QEMU-timed), {count}"
    if isinstance(recorder, PortWatch):
        return f"port watch on {recorder.what} (GDB: the driver's side, event-counted), {count}"
    return f"{type(recorder).__name__}, {count}"


def on_failure(item: pytest.Item, report: pytest.TestReport) -> None:
    """Draw the failed test's records and name them in its report (once per test)."""
    if MARK not in item.stash or item.stash.get(DONE, False):
        return
    item.stash[DONE] = True
    recorders = Recorder.made_since(item.stash[MARK])
    if not recorders:
        return
    directory = item.stash[TEST_DIR] / SUBDIR
    try:
        written = write_recorders(recorders, directory)
    except HarnessError as exc:
        report.sections.append(("piix3 waveforms", f"could not be written: {exc}"))
        return
    if not written:
        return
    by_stem = {recorder_file_stem(r): r for r in recorders}
    plugin_traces = item.stash.get(protocol.OPENED, set())
    lines = []
    for vcd in written:
        lines.append(f"{vcd}: {_label(by_stem[vcd.stem], plugin_traces)}")
        if (PROPERTY, str(vcd)) not in item.user_properties:  # JUnit XML <property> elements
            item.user_properties.append((PROPERTY, str(vcd)))
    first = written[-1]
    lines.append(f"view: gtkwave {shlex.quote(str(first))} {shlex.quote(str(first.with_suffix('.gtkw')))}")
    report.sections.append(("piix3 waveforms", "\n".join(lines)))
