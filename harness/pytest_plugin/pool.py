"""The snapshot pool: per worker and firmware, one machine parked at a VM snapshot that each
test gets back with loadvm instead of a boot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.ata import DEFAULT_COMPLETION
from harness.disk import DiskImage
from harness.errors import HarnessError
from harness.machine import CALL_TIMEOUT, SNAPSHOT_MEMORY_MIB, Machine
from harness.pytest_plugin.options import MACHINE_OPTIONS


class SnapshotPool:
    """Per worker, firmware and transport, one machine parked on a qcow2 disk with a VM snapshot taken at
    harness_ready; each test that may use it starts from that snapshot (RAM, CPU, devices and
    disk restored by loadvm) instead of booting."""

    def __init__(self, root: Path, machine_options: dict[str, Any] | None = None) -> None:
        self.root = root
        self.machine_options = dict(machine_options or {})  # the session's --piix3-kernel, ...
        self.machines: dict[tuple[str, str], Machine] = {}  # (firmware, transport) -> machine

    def get(self, firmware: str, transport: str = "doorbell") -> Machine:
        key = (firmware, transport)
        m = self.machines.get(key)
        if m is not None:
            try:
                m.restore_snapshot()
                m.clear_debug_state()  # loadvm leaves GDB's breakpoints alone
                m.call_timeout = CALL_TIMEOUT
                m.ata.set_completion(
                    self.machine_options.get("completion", DEFAULT_COMPLETION)
                )  # a test may change it
                m.failed = False
                m.console.clear()  # the last test's output is not this one's
                return m
            except HarnessError:  # a test broke it (killed QEMU, closed it...): build anew
                m.close(failed=True)
                del self.machines[key]
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{firmware}-{transport}"
        disk = DiskImage.create(self.root / f"{name}.qcow2", size_mib=64, format="qcow2", overwrite=True)
        m = Machine(
            disks=[disk],
            firmware=firmware,
            memory_mib=SNAPSHOT_MEMORY_MIB,
            transport=transport,
            artifacts_dir=self.root / f"{name}-artifacts",
            **self.machine_options,
        )
        m.start()
        m.save_snapshot()
        m.console.clear()  # every test's console starts at the snapshot, boot output read
        self.machines[key] = m
        return m

    def pids(self) -> set[int]:
        return {p for m in self.machines.values() for p in m.pids}

    def close(self) -> None:
        for m in self.machines.values():
            m.close()
        self.machines.clear()


POOL = pytest.StashKey[SnapshotPool]()  # per session: the worker's snapshot pool


@pytest.fixture(scope="session")
def piix3_snapshot_pool(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SnapshotPool]:
    """The worker's SnapshotPool (closed at the end of the session)."""
    pool = SnapshotPool(tmp_path_factory.mktemp("snapshot-pool"), pytestconfig.stash.get(MACHINE_OPTIONS, {}))
    pytestconfig.stash[POOL] = pool
    yield pool
    pool.close()
    del pytestconfig.stash[POOL]
