"""What the harness relies on inside qemu.qmp (pyproject.toml bounds its version for this):
the library keeps every QMP event in a private history list, and QemuProcess.events() empties
it, else thousands of resets would be the harness's memory growth. A release that moves the
list fails here, not silently in a soak."""

from __future__ import annotations

import contextlib
import time

import pytest

from harness import DiskImage
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu
EVENT_WAIT = 2.0  # s, for QEMU's RESET event to arrive


def test_events_empty_the_librarys_event_history(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk])
    assert m.qemu is not None and m.qemu.qmp is not None
    history = m.qemu.qmp._qmp.events._history  # qemu.qmp's EventListener: every event it has seen
    assert isinstance(history, list)
    m.qemu.command("system_reset")  # a RESET event, left for the library to collect
    deadline = time.monotonic() + EVENT_WAIT
    while not history and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):  # nothing yet
            m.qemu.qmp.get_events(wait=0.05)  # the library's own call: it records what it reads
    assert any(e.get("event") == "RESET" for e in history), history
    m.qemu.events()
    assert m.qemu.qmp._qmp.events._history == []
    m.reset()  # back to the park point
    assert m.ata.read(0, 0, 1) == bytes(512)
