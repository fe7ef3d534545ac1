"""The protocol checker on every test: each machine a test uses is traced from QEMU's side
(no breakpoints, so the guest runs at full speed), and after the test body the record is
checked against the ATA/PIIX3 rules (harness/portio/protocol.py). A violation fails the test
with the rule, its source and the accesses around it. Off for one test with
`@pytest.mark.piix3_protocol(False)`, for a run with `--piix3-protocol=off`.

The record leaves out the data-port words (QEMU logs each one: a 32 MiB PIO transfer would be
a gigabyte of log), so the rules that count data words (ATA-PIO-1, -2, -4, -5) are judged only
where a test records them itself (`m.device_trace()`) or by `piix3 check-trace`."""

from __future__ import annotations

import contextlib
import warnings

import pytest

from harness.errors import HarnessError
from harness.machine import Machine
from harness.portio import protocol
from harness.portio.devtrace import DeviceTrace

TRACES = pytest.StashKey[list[tuple[Machine, DeviceTrace]]]()  # per test: machine, its trace
OPENED = pytest.StashKey[set[int]]()  # per test: the serials of the traces opened here (waveforms.py)
MARKER = "piix3_protocol"
# Reads of one status poll kept as events of their own; the rest of the poll becomes one event
# (PortAccess.repeat). No rule looks further into a poll than its first reads, its count and
# its end (tests/unit/test_protocol.py checks every recorded trace both ways).
POLL_KEPT = 4
SHOWN = 5  # violations shown in a failure (all are in the JSON next to the logs)


def enabled(item: pytest.Item) -> bool:
    """The checker runs for this test: the option says on and no marker turns it off."""
    if item.config.getoption("--piix3-protocol") == "off":
        return False
    marker = item.get_closest_marker(MARKER)
    return marker is None or bool(marker.args[0] if marker.args else marker.kwargs.get("enabled", True))


def watch(item: pytest.Item, m: Machine) -> None:
    """Trace m's IDE and bus-master accesses from now until the test body ends."""
    if not enabled(item) or m.qemu is None:
        return
    # data words: 36 MB of log per MiB of PIO; a poll's cycles past the first POLL_KEPT are folded
    trace = m.device_trace(data=False, fold=POLL_KEPT)
    trace.__enter__()
    item.stash.setdefault(TRACES, []).append((m, trace))
    item.stash.setdefault(OPENED, set()).add(trace.serial)


def _close_all(item: pytest.Item) -> list[tuple[Machine, DeviceTrace]]:
    """End every trace this test started (also when the test failed: a pooled machine must not
    keep a trace into the next test)."""
    closed = []
    for m, trace in item.stash.get(TRACES, []):
        try:
            trace.close()
        except HarnessError:
            continue  # the machine broke during the test: its failure says more than we could
        closed.append((m, trace))
    item.stash[TRACES] = []
    return closed


def check(item: pytest.Item) -> list[str]:
    """Close the test's traces and check them; one report block per machine with violations."""
    reports = []
    for m, trace in _close_all(item):
        found = protocol.check(
            trace.events,
            port_map=m.ports.port_map(),
            hardware_resets=[*protocol.hardware_resets(trace.actions), *trace.resets],
            interrupts=protocol.interrupts(trace.actions),
        )
        cut = (
            f"; the record stops after {trace.limit >> 20} MB of log, {trace.truncated >> 20} MB "
            "past it unread"
            if trace.truncated
            else ""
        )
        if not found:
            if cut:  # a stuck poll, most likely; what was read is clean, the rest went unseen
                warnings.warn(f"protocol checker: {m.config.kernel.name}{cut}", stacklevel=1)
            continue
        origin = protocol.origin_of(trace.events)
        lines = [v.line(origin) for v in found[:SHOWN]]
        if len(found) > SHOWN:
            lines.append(f"... and {len(found) - SHOWN} more")
        where = ""
        if m.artifacts is not None:
            with contextlib.suppress(OSError):
                path = m.artifacts / "protocol-violations.json"
                path.write_text(protocol.render_json(found, origin) + "\n")
                where = f" (all of them: {path}; the record: {trace.path})"
        reports.append(
            f"{len(found)} protocol violation(s) on {m.config.kernel.name}{where}{cut}:\n" + "\n".join(lines)
        )
    return reports


def discard(item: pytest.Item) -> None:
    _close_all(item)
