"""Snapshot isolation: the `machine` fixture's fast path restores a VM snapshot per test."""

from __future__ import annotations

import pytest

from harness import DiskImage, Machine
from harness.pytest_plugin import SnapshotPool

pytestmark = pytest.mark.qemu
SECTOR = 512


def test_machine_fixture_is_restored_from_the_snapshot(
    machine: Machine, piix3_snapshot_pool: SnapshotPool
) -> None:
    assert machine in piix3_snapshot_pool.machines.values()
    disk = machine.config.disks[0]
    assert disk.format == "qcow2"
    # Whatever earlier tests on this worker wrote, this one starts from zeros.
    assert machine.ata.read(0, 0, 64) == bytes(64 * SECTOR)
    machine.ata.write(0, 10, b"dirty".ljust(SECTOR, b"!"))
    machine.ata.timeout_ms = 1234  # guest RAM state
    machine.restore_snapshot()
    assert machine.ata.read(0, 10, 1) == bytes(SECTOR), "the disk came back with the snapshot"
    assert disk.read_sectors(10, 1) == bytes(SECTOR), "host view of the qcow2 too"
    assert machine.ata.timeout_ms == 2000, "guest RAM came back with the snapshot"


def test_gdb_sees_the_restored_registers(machine: Machine) -> None:
    """Restore while the guest is stopped mid-call: GDB must report the snapshot's registers
    (the park point), not the ones it cached at the stop."""
    m = machine
    park = m.evaluate_int("(unsigned)&harness_ready")
    with m.break_on_port(0x1F7, direction="out"):
        m.ata.begin_read(0, 0, 1, mode="pio")
        stop = m.cont()
        mid = m.evaluate_int("(unsigned)$pc")
        assert not stop.parked and mid != park
        m.restore_snapshot()
        assert m.gdb is not None
        frame = m.gdb.command("-stack-info-frame").payload["frame"]
        assert frame["func"] in ("harness_ready", "kmain"), "GDB sees the park loop, not the cached stop"
        assert m.evaluate_int("(unsigned)$pc") != mid
    assert m.parked
    m.restore_snapshot()  # again, from parked: the next call must still run, not be skipped
    assert m.ata.read(0, 0, 1) == bytes(SECTOR)
    data = b"after restore".ljust(SECTOR, b".")
    m.ata.write(0, 3, data, mode="pio")
    assert m.ata.read(0, 3, 1, mode="dma") == data


def test_asking_for_the_disk_gets_a_fresh_raw_boot(machine: Machine, disk: DiskImage) -> None:
    assert machine.config.disks[0] is disk and disk.format == "raw"
    machine.ata.write(0, 7, b"r".ljust(SECTOR, b"r"))
    machine.ata.flush(0)
    assert disk.read_sectors(7, 1) == b"r" * SECTOR


@pytest.mark.piix3_fresh
def test_fresh_marker_boots_for_real(machine: Machine) -> None:
    assert machine.boots == 1 and machine.config.disks[0].format == "raw"


def test_restore_clears_what_a_test_left_in_gdb(machine: Machine) -> None:
    """What the pool does between tests: a forgotten port breakpoint does not trip the next one."""
    m = machine
    m.break_on_port(0x1F7, direction="out")  # never deleted
    assert m.gdb is not None
    m.gdb.command("-break-insert ata_flush")  # a user breakpoint too
    m.restore_snapshot()
    m.clear_debug_state()
    body = m.gdb.command("-break-list").payload["BreakpointTable"]["body"]
    assert [b["func"] for b in body] == ["harness_ready"]
    m.ata.flush(0)
    assert m.parked
