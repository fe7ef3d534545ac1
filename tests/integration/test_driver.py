"""The complete driver: four drive positions, LBA48, PIO and DMA, write cache, soft reset,
device errors, and a model-based property test. Run under both firmwares by `make test`."""

from __future__ import annotations

import array
import mmap
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule, run_state_machine_as_test

from harness import AtaCode, AtaError, DiskImage, Fault, Machine
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

SECTOR = 512
LBA28_LIMIT = 1 << 28
NAMES = ["primary master", "primary slave", "secondary master", "secondary slave"]
MODES = ["pio", "dma"]


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
    m.console.expect_exact("PIIX3 IDE at 00:01.1 (8086:7010)")
    for d in range(4):  # in drive order, after the controller
        status = "QEMU HARDDISK" if d in positions else "none"
        m.console.expect_exact(f"ata: drive {d} ({NAMES[d]}): {status}")
    for d in set(range(4)) - set(positions):
        with pytest.raises(AtaError) as refused:
            m.ata.read(d, 0, 1)
        assert refused.value.code is AtaCode.NODEV


def test_firmware_state_is_handled(
    machine_factory: MachineFactory, disk: DiskImage, piix3_firmware: str
) -> None:
    m = machine_factory(disks=[disk])
    if piix3_firmware == "qboot":  # qboot leaves BAR4 = 0 and the command register = 0
        m.console.expect_exact("pci: firmware left BAR4 unset; assigned c040")
        m.console.expect_exact("pci: enabled I/O and bus mastering (command 0005)")
    else:
        m.console.expect(r"pci: PIIX3 IDE at .* bmiba c0[0-9a-f]{2} ")
        m.console.expect_exact("ready (init 0)")
        assert "assigned" not in m.console.before, "the firmware's BAR4 was kept"
    # bus mastering really works: a DMA transfer moves data
    data = pattern(1, 8)
    m.ata.write(0, 9, data, mode="dma")
    assert m.ata.read(0, 9, 8, mode="dma") == data


@pytest.mark.parametrize("present", [(0, 2), (1, 3), (0, 1, 3)], ids=["0+2", "1+3", "0+1+3"])
def test_bus_master_status_marks_the_dma_capable_drives(
    machine_factory: MachineFactory, tmp_path: Path, present: tuple[int, ...]
) -> None:
    """After init each channel's bus-master Status says which of its two drives may do DMA
    (bits 5 and 6, the PIIX3 datasheet's "Drive 0/1 DMA Capable", which firmware and other
    drivers read): exactly the drives found on that channel."""
    m = machine_factory(disks={d: DiskImage.create(tmp_path / f"d{d}.img", size_mib=1) for d in present})
    bm_base = m.ports.port_map().bm_base
    for channel in (0, 1):
        status = m.call("harness_inb", bm_base + 8 * channel + 2)
        assert status is not None
        want = {0x20 * (d % 2 + 1) for d in present if d // 2 == channel}
        assert status & 0x60 == sum(want), f"channel {channel}: BM Status {status:#04x}, drives {present}"


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


def test_read_into_and_write_take_any_buffer(machine: Machine, tmp_path: Path) -> None:
    """write() takes any buffer-protocol object; read_into() fills a caller's writable one in
    place (its length says how much), as readinto does, and refuses what it cannot fill."""
    data = pattern(9, 24)
    backing = tmp_path / "m.bin"
    backing.write_bytes(data[: 8 * SECTOR])
    with open(backing, "r+b") as f, mmap.mmap(f.fileno(), 8 * SECTOR) as mm:
        sources = [
            data[: 8 * SECTOR],
            bytearray(data[8 * SECTOR : 16 * SECTOR]),
            memoryview(data)[16 * SECTOR :],
        ]
        for n, src in enumerate(sources):
            machine.ata.write(0, 300 + n * 8, src)
        machine.ata.write(0, 400, mm)
        assert machine.ata.read(0, 300, 24) == data
        assert machine.ata.read(0, 400, 8) == data[: 8 * SECTOR]
        mm[:] = bytes(8 * SECTOR)
        for mode in MODES:
            into = bytearray(b"\xee" * (8 * SECTOR + 100))
            window = memoryview(into)[50 : 50 + 8 * SECTOR]  # a slice of a bigger buffer
            assert machine.ata.read_into(0, 308, window, mode=mode) == 8 * SECTOR
            assert into[50:-50] == data[8 * SECTOR : 16 * SECTOR], mode
            assert into[:50] == into[-50:] == b"\xee" * 50, f"{mode}: read_into wrote past the buffer"
            words = array.array("I", bytes(8 * SECTOR))  # items of 4 bytes: its length counts bytes
            assert machine.ata.read_into(0, 300, words, mode=mode) == 8 * SECTOR
            assert words.tobytes() == data[: 8 * SECTOR]
        assert machine.ata.read_into(0, 300, mm) == 8 * SECTOR
        assert mm[:] == data[: 8 * SECTOR]
    for bad in (
        bytes(SECTOR),
        bytearray(100),
        bytearray(),
        memoryview(bytearray(2 * SECTOR))[::2],
        "x" * 512,
    ):
        with pytest.raises(AtaError) as refused:
            machine.ata.read_into(0, 0, bad)
        assert refused.value.code is AtaCode.INVAL


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
        m.console.expect_exact(f"ata: channel {ch} reset", timeout=5)
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


# The state machine's disks: sparse, past the LBA28 limit, a different size on each position.
MODEL_SECTORS = {d: LBA28_LIMIT + (1 << 17) + 1000 * d for d in range(4)}
MAX_COUNT = 1 << 16  # the most one call moves (LBA48)

# Sector counts: mostly small, the LBA28/LBA48 edges (256 sectors is the most an LBA28 command
# moves), and now and then up to the 65536 of one LBA48 call.
COUNTS = st.one_of(
    st.integers(1, 300),
    st.sampled_from([1, 255, 256, 257, MAX_COUNT - 1, MAX_COUNT]),
    st.integers(1, MAX_COUNT),
)


def lbas(drive: int, count: int) -> st.SearchStrategy[int]:
    """Where a transfer of `count` sectors starts: near the start of the drive, across the LBA28
    limit (2^28, where the EXT commands begin; a transfer ending exactly there is still LBA28),
    just past it, or near the end of the drive."""
    end = MODEL_SECTORS[drive]
    return st.one_of(
        st.integers(0, 1 << 17),
        st.integers(max(LBA28_LIMIT - count, 0), LBA28_LIMIT - 1),
        st.integers(LBA28_LIMIT, LBA28_LIMIT + 4096),
        st.integers(end - max(count, 4096), end - 1),
    )


def stamp(seed: int, count: int) -> bytes:
    """count sectors, each naming the write (seed) and its own place in it: cheap for 65536."""
    return b"".join((seed << 32 | i).to_bytes(8, "little") * (SECTOR // 8) for i in range(count))


class DiskModel(RuleBasedStateMachine):
    """Random writes, reads, flushes and resets over all four drive positions must match a
    Python model (the sectors written, by LBA; the rest reads as zeros) and the host's view of
    the images. LBAs cross the LBA28/LBA48 boundary, counts reach 65536, in PIO and DMA."""

    machine: Machine
    disks: dict[int, DiskImage]
    model: dict[int, dict[int, bytes]]  # drive -> LBA -> sector, across examples (the disks keep theirs)
    seed = 0
    written = Bundle("written")  # (drive, lba, count) of writes, for reads of data that is there

    def _expected(self, drive: int, lba: int, count: int) -> bytes:
        sectors = self.model[drive]
        zero = bytes(SECTOR)
        return b"".join([sectors.get(s, zero) for s in range(lba, lba + count)])

    def _read(self, drive: int, lba: int, count: int, mode: str) -> None:
        got = self.machine.ata.read(drive, lba, count, mode=mode)
        assert got == self._expected(drive, lba, count), (
            f"drive {drive}: LBA {lba} x{count} ({mode}) != model"
        )

    @rule(
        target=written,
        data=st.data(),
        drive=st.sampled_from(range(4)),
        count=COUNTS,
        mode=st.sampled_from(MODES),
    )
    def write(self, data: st.DataObject, drive: int, count: int, mode: str) -> tuple[int, int, int]:
        lba = data.draw(lbas(drive, count), label="lba")
        count = min(count, MODEL_SECTORS[drive] - lba)
        type(self).seed += 1
        payload = stamp(type(self).seed, count)
        self.machine.ata.write(drive, lba, payload, mode=mode)
        view = memoryview(payload)
        self.model[drive].update((lba + i, bytes(view[i * SECTOR : (i + 1) * SECTOR])) for i in range(count))
        first = max(lba - 1, 0)
        around = (first, min(lba + count + 1, MODEL_SECTORS[drive]) - first)
        assert self.disks[drive].read_sectors(*around) == self._expected(drive, *around), (
            f"host view of drive {drive} after writing LBA {lba} x{count} ({mode})"
        )
        return drive, lba, count

    @rule(span=written, shift=st.integers(-2, 2), mode=st.sampled_from(MODES))
    def read_back(self, span: tuple[int, int, int], shift: int, mode: str) -> None:
        drive, lba, count = span
        lba = min(max(lba + shift, 0), MODEL_SECTORS[drive] - count)
        self._read(drive, lba, count, mode)

    @rule(data=st.data(), drive=st.sampled_from(range(4)), count=COUNTS, mode=st.sampled_from(MODES))
    def read(self, data: st.DataObject, drive: int, count: int, mode: str) -> None:
        lba = data.draw(lbas(drive, count), label="lba")
        self._read(drive, lba, min(count, MODEL_SECTORS[drive] - lba), mode)

    @rule(drive=st.sampled_from(range(4)))
    def flush(self, drive: int) -> None:
        self.machine.ata.flush(drive)

    @rule(kind=st.sampled_from(["srst0", "srst1", "srst0", "srst1", "warm"]))
    def reset(self, kind: str) -> None:
        """A soft reset of one channel (SRST, re-detection), now and then a warm reset."""
        if kind == "warm":
            self.machine.reset()
        else:
            self.machine.ata.reset_channel(int(kind[-1]))


def host_matches_model(disks: dict[int, DiskImage], model: dict[int, dict[int, bytes]]) -> None:
    """Every sector written is on the host's image (a write landing elsewhere, at an LBA cut to
    28 or 32 bits say, overwrote one of them or left its own unwritten), run by run."""
    for d, sectors in model.items():
        lbas = sorted(sectors)
        start = 0
        for i in range(1, len(lbas) + 1):
            if i == len(lbas) or lbas[i] != lbas[i - 1] + 1:
                first, count = lbas[start], i - start
                want = b"".join([sectors[s] for s in lbas[start:i]])
                assert disks[d].read_sectors(first, count) == want, (
                    f"host image of drive {d}, LBA {first} x{count}"
                )
                start = i


def test_random_operations_match_a_model(machine_factory: MachineFactory, tmp_path: Path) -> None:
    disks = {
        d: DiskImage.create(tmp_path / f"m{d}.img", size_bytes=n * SECTOR) for d, n in MODEL_SECTORS.items()
    }
    m = machine_factory(disks=disks)

    class Bound(DiskModel):
        machine = m

    Bound.disks = disks
    Bound.model = {d: {} for d in disks}
    Bound.seed = 0
    run_state_machine_as_test(
        Bound,
        settings=settings(
            max_examples=10,
            stateful_step_count=8,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
    host_matches_model(disks, Bound.model)


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
            assert e.value.command == 0, f"{name}: no command was sent, yet the error names one"
        assert m.call("ata_read", 0, 0, 1, 0, 1) == AtaCode.INVAL  # NULL buffer
        assert m.call("ata_read", 0, 0, 1, xfer + 1, 1) == AtaCode.INVAL  # odd DMA buffer
        assert m.call("ata_write", 0, 0, 1, xfer, 7) == AtaCode.INVAL  # no such mode
    assert io.events == [], f"refused calls touched ports: {io.events[:5]}"
    with m.watch_ports("primary") as io:
        m.ata.read(0, 0, 1, mode="pio")
    assert io.events, "the same watch does see a real transfer"
