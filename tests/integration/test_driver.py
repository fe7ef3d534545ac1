"""The complete driver: four drive positions, LBA48, PIO and DMA, write cache, soft reset,
device errors, and a model-based property test. Run under both firmwares by `make test`."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from harness import AtaCode, AtaError, DiskImage, Fault, Machine
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

SECTOR = 512
LBA28_LIMIT = 1 << 28
NAMES = ["primary master", "primary slave", "secondary master", "secondary slave"]


def pattern(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(i.to_bytes(4, "little") + rng.randbytes(SECTOR - 4) for i in range(count))


@pytest.mark.parametrize(
    "positions",
    [(0, 1, 2, 3), (1,), (3,), (0, 3), (2, 3)],
    ids=["all-four", "slave-only", "secondary-slave-only", "master-and-secondary-slave", "secondary-only"],
)
def test_drive_positions_are_detected(
    machine_factory: MachineFactory, tmp_path: Path, positions: tuple[int, ...]
) -> None:
    disks = {d: DiskImage.create(tmp_path / f"d{d}.img", size_mib=8 + d) for d in positions}
    m = machine_factory(disks=disks)
    found = m.ata.drives()
    assert sorted(found) == sorted(positions)
    for d, info in found.items():
        assert info.sectors == disks[d].sectors
        assert info.model == "QEMU HARDDISK"
    log = m.serial_text()
    assert "PIIX3 IDE at 00:01.1 (8086:7010)" in log
    for d in range(4):
        status = "QEMU HARDDISK" if d in positions else "none"
        assert f"drive {d} ({NAMES[d]}): {status}" in log
    for d in set(range(4)) - set(positions):
        with pytest.raises(AtaError) as refused:
            m.ata.read(d, 0, 1)
        assert refused.value.code is AtaCode.NODEV


def test_firmware_state_is_handled(
    machine_factory: MachineFactory, disk: DiskImage, piix3_firmware: str
) -> None:
    m = machine_factory(disks=[disk])
    log = m.serial_text()
    if piix3_firmware == "qboot":  # qboot leaves BAR4 = 0 and the command register = 0
        assert "firmware left BAR4 unset; assigned c040" in log
        assert "enabled I/O and bus mastering (command 0005)" in log
    else:
        assert "bmiba c0" in log and "assigned" not in log
    # bus mastering really works: a DMA transfer moves data
    data = pattern(1, 8)
    m.ata.write(0, 9, data, mode="dma")
    assert m.ata.read(0, 9, 8, mode="dma") == data


def test_every_position_pio_and_dma_agree(machine_factory: MachineFactory, tmp_path: Path) -> None:
    disks = {d: DiskImage.create(tmp_path / f"d{d}.img", size_mib=4) for d in range(4)}
    m = machine_factory(disks=disks)
    for d in range(4):
        a, b = pattern(10 + d, 37), pattern(20 + d, 37)
        m.ata.write(d, 100, a, mode="pio")
        assert m.ata.read(d, 100, 37, mode="dma") == a, f"drive {d}: PIO write, DMA read"
        m.ata.write(d, 200, b, mode="dma")
        assert m.ata.read(d, 200, 37, mode="pio") == b, f"drive {d}: DMA write, PIO read"
        m.ata.flush(d)
        assert disks[d].read_sectors(100, 37) == a
        assert disks[d].read_sectors(200, 37) == b
    # each drive got only its own data
    for d in range(4):
        assert disks[d].read_sectors(100, 1) == pattern(10 + d, 37)[:SECTOR]


@pytest.mark.parametrize("mode", ["pio", "dma"])
def test_lba48_beyond_128_gib(machine_factory: MachineFactory, tmp_path: Path, mode: str) -> None:
    disk = DiskImage.create(tmp_path / "big.img", size_bytes=200 << 30)  # sparse
    m = machine_factory(disks=[disk])
    info = m.ata.identify(0)
    assert info.lba48 and info.sectors == disk.sectors and info.lba28_sectors == LBA28_LIMIT - 1
    last = disk.sectors - 1
    spots = [
        (LBA28_LIMIT - 100, 1),
        (LBA28_LIMIT - 20, 40),
        (LBA28_LIMIT + 12345, 3),
        (last, 1),
        (last - 400, 300),
        (7, 300),
    ]
    for n, (lba, count) in enumerate(spots):
        data = pattern(n, count)
        m.ata.write(0, lba, data, mode=mode)
        assert m.ata.read(0, lba, count, mode=mode) == data, f"LBA {lba} x{count}"
    m.ata.flush(0)
    for n, (lba, count) in enumerate(spots):
        assert disk.read_sectors(lba, count) == pattern(n, count), f"host view of LBA {lba}"
    with pytest.raises(AtaError) as e:
        m.ata.read(0, last, 2, mode=mode)
    assert e.value.code is AtaCode.RANGE


def test_one_mib_in_one_call(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk])
    data = pattern(5, 2048)
    for mode in ("dma", "pio"):
        m.ata.write(0, 4096, data, mode=mode)
        assert m.ata.read(0, 4096, 2048, mode="pio" if mode == "dma" else "dma") == data
    assert disk.read_sectors(4096, 2048) == data


def test_write_cache_toggle_shows_in_identify(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk])
    assert m.ata.identify(0).write_cache_enabled
    m.ata.set_write_cache(0, False)
    assert not m.ata.identify(0).write_cache_enabled
    data = pattern(3, 4)
    m.ata.write(0, 50, data)
    assert disk.read_sectors(50, 4) == data
    m.ata.set_write_cache(0, True)
    assert m.ata.identify(0).write_cache_enabled
    with pytest.raises(AtaError) as e:
        m.ata.set_write_cache(1, True)
    assert e.value.code is AtaCode.NODEV


def test_soft_reset_recovers_each_channel(machine_factory: MachineFactory, tmp_path: Path) -> None:
    disks = {
        0: DiskImage.create(tmp_path / "a.img", size_mib=4),
        3: DiskImage.create(tmp_path / "b.img", size_mib=4),
    }
    m = machine_factory(disks=disks)
    for ch, d in ((0, 0), (1, 3)):
        data = pattern(40 + d, 5)
        m.ata.write(d, 60, data)
        m.ata.reset_channel(ch)
        assert f"ata: channel {ch} reset" in m.serial_text()
        assert m.ata.identify(d).sectors == disks[d].sectors
        assert m.ata.read(d, 60, 5, mode="pio") == data
        assert m.ata.read(d, 60, 5, mode="dma") == data
    with pytest.raises(AtaError) as e:
        m.ata.reset_channel(2)
    assert e.value.code is AtaCode.INVAL


@pytest.mark.parametrize("mode", ["pio", "dma"])
def test_device_errors_carry_registers(machine_factory: MachineFactory, disk: DiskImage, mode: str) -> None:
    m = machine_factory(disks=[disk], faults={0: [Fault("read", sector=500), Fault("flush")]})
    with pytest.raises(AtaError) as e:
        m.ata.read(0, 500, 1, mode=mode)
    err = e.value
    assert err.code is AtaCode.DEVICE
    assert err.status == 0x41 and err.error == 0x04
    assert err.status_bits == "ERR|DRDY" and err.error_bits == "ABRT"
    assert err.lba == 500 and err.drive == 0
    assert err.command == (0xC8 if mode == "dma" else 0xC4)
    assert "ERR|DRDY" in str(err) and "ABRT" in str(err) and "lba=500" in str(err)
    m.ata.write(0, 10, pattern(9, 1), mode=mode)  # QEMU skips a flush when nothing is dirty
    with pytest.raises(AtaError) as e:
        m.ata.flush(0)
    assert e.value.code is AtaCode.DEVICE and e.value.command == 0xEA
    # sectors before the fault still read fine
    assert m.ata.read(0, 499, 1, mode=mode) == bytes(SECTOR)


class DiskModel(RuleBasedStateMachine):
    """Random writes, reads, flushes and resets over two drives must match a Python model."""

    machine: Machine
    disks: dict[int, DiskImage]

    def __init__(self) -> None:
        super().__init__()
        self.model = {d: bytearray(img.path.read_bytes()) for d, img in self.disks.items()}
        self.seed = 0

    @initialize()
    def start(self) -> None:
        pass

    @rule(
        drive=st.sampled_from([0, 2]),
        lba=st.integers(0, 255),
        count=st.integers(1, 40),
        mode=st.sampled_from(["pio", "dma"]),
    )
    def write(self, drive: int, lba: int, count: int, mode: str) -> None:
        count = min(count, 256 - lba)
        self.seed += 1
        data = pattern(self.seed, count)
        self.machine.ata.write(drive, lba, data, mode=mode)
        self.model[drive][lba * SECTOR : (lba + count) * SECTOR] = data

    @rule(
        drive=st.sampled_from([0, 2]),
        lba=st.integers(0, 255),
        count=st.integers(1, 40),
        mode=st.sampled_from(["pio", "dma"]),
    )
    def read(self, drive: int, lba: int, count: int, mode: str) -> None:
        count = min(count, 256 - lba)
        got = self.machine.ata.read(drive, lba, count, mode=mode)
        assert got == bytes(self.model[drive][lba * SECTOR : (lba + count) * SECTOR]), "guest read != model"

    @rule(drive=st.sampled_from([0, 2]))
    def flush(self, drive: int) -> None:
        self.machine.ata.flush(drive)

    @rule()
    def warm_reset(self) -> None:
        self.machine.reset()

    @rule(channel=st.sampled_from([0, 1]))
    def soft_reset(self, channel: int) -> None:
        self.machine.ata.reset_channel(channel)

    @invariant()
    def host_view_matches(self) -> None:
        for d, img in self.disks.items():
            assert img.path.read_bytes() == bytes(self.model[d]), f"host image of drive {d} != model"


def test_random_operations_match_a_model(machine_factory: MachineFactory, tmp_path: Path) -> None:
    disks = {
        0: DiskImage.create(tmp_path / "p.img", size_bytes=256 * SECTOR),
        2: DiskImage.create(tmp_path / "s.img", size_bytes=256 * SECTOR),
    }
    m = machine_factory(disks=disks)

    class Bound(DiskModel):
        machine = m

    Bound.disks = disks
    run_state_machine_as_test(
        Bound,
        settings=settings(
            max_examples=12,
            stateful_step_count=12,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_bad_input_touches_no_port(machine: Machine) -> None:
    """The driver refuses bad arguments before any in/out: a watch on every port sees nothing."""
    m = machine
    xfer = m.symbol("xfer_buf")
    sectors = m.ata.sectors(0)
    refused: list[tuple[str, Callable[[], object], AtaCode]] = [
        ("LBA past the end", lambda: m.ata.read(0, sectors, 1), AtaCode.RANGE),
        ("LBA + count past the end", lambda: m.ata.write(0, sectors - 1, bytes(2 * SECTOR)), AtaCode.RANGE),
        ("count 0", lambda: m.ata.read(0, 0, 0), AtaCode.INVAL),
        ("no disk", lambda: m.ata.read(1, 0, 1), AtaCode.NODEV),
        ("drive 9", lambda: m.ata.flush(9), AtaCode.INVAL),
        ("channel 2", lambda: m.ata.reset_channel(2), AtaCode.INVAL),
    ]
    with m.watch_ports("all") as io:
        for name, action, code in refused:
            with pytest.raises(AtaError) as e:
                action()
            assert e.value.code is code, name
        assert m.call("ata_read", 0, 0, 1, 0, 1) == AtaCode.INVAL  # NULL buffer
        assert m.call("ata_read", 0, 0, 1, xfer + 1, 1) == AtaCode.INVAL  # odd DMA buffer
        assert m.call("ata_write", 0, 0, 1, xfer, 7) == AtaCode.INVAL  # no such mode
    assert io.events == [], f"refused calls touched ports: {io.events[:5]}"
    with m.watch_ports("primary") as io:
        m.ata.read(0, 0, 1, mode="pio")
    assert io.events, "the same watch does see a real transfer"
