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
    park = machine.evaluate_int("(unsigned)&harness_ready")
    machine.ata.read(0, 0, 1)
    machine.restore_snapshot()
    assert machine.evaluate_int("(unsigned)$pc") == park
    assert machine.evaluate_int("(unsigned)$esp") == machine.evaluate_int("(unsigned)$sp")
    data = b"after restore".ljust(SECTOR, b".")
    machine.ata.write(0, 3, data, mode="pio")
    assert machine.ata.read(0, 3, 1, mode="dma") == data


def test_asking_for_the_disk_gets_a_fresh_raw_boot(machine: Machine, disk: DiskImage) -> None:
    assert machine.config.disks[0] is disk and disk.format == "raw"
    machine.ata.write(0, 7, b"r".ljust(SECTOR, b"r"))
    machine.ata.flush(0)
    assert disk.read_sectors(7, 1) == b"r" * SECTOR


@pytest.mark.piix3_fresh
def test_fresh_marker_boots_for_real(machine: Machine) -> None:
    assert machine.boots == 1 and machine.config.disks[0].format == "raw"
