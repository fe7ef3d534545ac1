"""The fast paths, checked on bytes: shared-memory vs GDB data paths, 32 MiB commands, PRD tables
of 1 and 512 entries (and 513 refused), PIO MULTIPLE with partial blocks, the in-guest bench."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from harness import AtaCode, AtaError, DiskImage, Machine
from harness.bench.armed import armed_check
from harness.portio.gdb_agent import elf_sections
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

SECTOR = 512
KIB = 1 << 10
MIB = 1 << 20
MAX_COUNT = 65536  # sectors in one LBA48 command: 32 MiB, the whole transfer buffer
PRD_ENTRIES = 512
PRD_EOT = 0x80000000
PRD_CHUNK = 64 * KIB
DMA = 1  # enum ata_mode


def pattern(seed: int, count: int) -> bytes:
    """count sectors that differ per seed and per sector."""
    rng = random.Random(seed)
    return b"".join(
        i.to_bytes(4, "little") + seed.to_bytes(4, "little") + rng.randbytes(SECTOR - 8) for i in range(count)
    )


def prd_entries(m: Machine) -> list[tuple[int, int]]:
    """The driver's PRD table up to its EOT entry: (address, bytes) pairs."""
    raw = m.read_memory(m.evaluate_int("(unsigned)&prd_table"), PRD_ENTRIES * 8)
    entries = []
    for addr, flags in struct.iter_unpack("<II", raw):
        entries.append((addr, (flags & 0xFFFF) or PRD_CHUNK))
        if flags & PRD_EOT:
            return entries
    raise AssertionError("no EOT entry in the PRD table")


def port_snapshot(m: Machine) -> dict[str, int]:
    """Task-file and bus-master registers of channel 0, as the drive and controller hold them."""
    cmd, ctrl, bm = (m.evaluate_int(f"channels[0].{f}") for f in ("cmd", "ctrl", "bm"))
    ports = {f"cmd+{i}": cmd + i for i in range(1, 7)} | {"altstatus": ctrl}
    ports |= {f"bm+{i}": bm + i for i in (0, 2, 4, 5, 6, 7)}
    return {name: m.evaluate_int(f"harness_inb({port})") for name, port in ports.items()}


def test_shared_memory_and_gdb_paths_see_the_same_bytes(
    machine_factory: MachineFactory, tmp_path: Path
) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_mib=8)
    first, second = pattern(1, 96), pattern(2, 80)
    m = machine_factory(disks=[disk])
    assert m.data_path == "shm"
    buf, gdb = m.symbol("xfer_buf"), m.gdb
    assert gdb is not None
    # Into the guest by GDB, out by the mapping, onto the disk by DMA: one and the same RAM.
    gdb.write_memory(buf, first)
    assert m.read_memory(buf, len(first)) == first
    assert m.call("ata_write", 0, 100, len(first) // SECTOR, buf, DMA) == AtaCode.OK
    assert m.ata.read(0, 100, 96, mode="pio") == first
    assert gdb.read_memory(buf, len(first)) == first
    m.ata.write(0, 300, second)  # by the mapping
    m.ata.flush(0)
    m.close()
    assert disk.read_sectors(100, 96) == first and disk.read_sectors(300, 80) == second
    # The GDB data path moves the same bytes, both ways.
    g = machine_factory(disks=[disk], data_path="gdb")
    assert g.data_path == "gdb"
    for mode in ("dma", "pio"):
        assert g.ata.read(0, 100, 96, mode=mode) == first
        assert g.ata.read(0, 300, 80, mode=mode) == second
    third = pattern(3, 64)
    g.ata.write(0, 500, third, mode="pio")
    g.ata.write(0, 600, third[::-1], mode="dma")
    assert g.ata.read(0, 500, 64) == third
    assert g.ata.read(0, 600, 64, mode="pio") == third[::-1]
    g.ata.flush(0)
    assert disk.read_sectors(500, 64) == third and disk.read_sectors(600, 64) == third[::-1]


@pytest.mark.parametrize("mode", ["dma", "pio"])
def test_32_mib_round_trip_matches_the_host_image(
    machine_factory: MachineFactory, tmp_path: Path, mode: str
) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_mib=40)
    lba = 12345  # not aligned to anything
    data = os.urandom(MAX_COUNT * SECTOR)
    m = machine_factory(disks=[disk])
    m.ata.write(0, lba, data, mode=mode)
    m.ata.flush(0)
    assert disk.read_sectors(lba, MAX_COUNT) == data, f"{mode}: host image differs after a 32 MiB write"
    assert disk.read_sectors(lba - 1, 1) == bytes(SECTOR) and disk.read_sectors(lba + MAX_COUNT, 1) == bytes(
        SECTOR
    ), "a 32 MiB write spilled outside its sectors"
    m.write_memory(m.symbol("xfer_buf"), bytes(len(data)))  # a read must fill the whole buffer
    assert m.ata.read(0, lba, MAX_COUNT, mode=mode) == data, f"{mode}: 32 MiB read differs"


# It reads every task-file and bus-master register itself (harness_inb from GDB) to show the
# device state around a transfer: probing, not a driver's protocol.
@pytest.mark.piix3_protocol(False)
def test_prd_tables_of_one_and_512_entries(machine_factory: MachineFactory, tmp_path: Path) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_mib=40)
    image = os.urandom(MAX_COUNT * SECTOR)
    disk.write_sectors(0, image)
    m = machine_factory(disks=[disk])
    buf = m.symbol("xfer_buf")
    assert buf % PRD_CHUNK == 0, "the transfer buffer is 64 KiB aligned"

    # 64 KiB aligned: a single entry, whose count field 0 means 64 KiB.
    assert m.ata.read(0, 0, 128) == image[: 64 * KIB]
    assert prd_entries(m) == [(buf, PRD_CHUNK)]
    # 32 MiB aligned: exactly 512 entries of 64 KiB, the whole table.
    assert m.ata.read(0, 0, MAX_COUNT) == image
    assert prd_entries(m) == [(buf + i * PRD_CHUNK, PRD_CHUNK) for i in range(PRD_ENTRIES)]

    # Even but unaligned: split at the 64 KiB boundary.
    odd = buf + SECTOR
    m.write_memory(odd, bytes(64 * KIB))
    assert m.call("ata_read", 0, 7, 128, odd, DMA) == AtaCode.OK
    assert prd_entries(m) == [(odd, PRD_CHUNK - SECTOR), (buf + PRD_CHUNK, SECTOR)]
    assert m.read_memory(odd, 64 * KIB) == image[7 * SECTOR : 7 * SECTOR + 64 * KIB]
    # 32 MiB from there needs 513 entries: refused before any port I/O.
    # A DMA write leaves the task file and the bus master in a known state.
    m.ata.write(0, 77, image[77 * SECTOR : 82 * SECTOR])
    before = port_snapshot(m)
    sentinel = pattern(9, 8)
    m.write_memory(odd, sentinel)
    assert m.call("ata_read", 0, 0, MAX_COUNT, odd, DMA) == AtaCode.INVAL
    assert m.evaluate_int("ata_last_error.code") == AtaCode.INVAL
    assert port_snapshot(m) == before, "a refused transfer touched the controller"
    assert m.read_memory(odd, len(sentinel)) == sentinel
    assert m.ata.read(0, 0, MAX_COUNT - 1) == image[: (MAX_COUNT - 1) * SECTOR]  # still works


def test_pio_multiple_with_partial_blocks(machine_factory: MachineFactory, tmp_path: Path) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_mib=4)
    m = machine_factory(disks=[disk])
    block = m.evaluate_int("ata_drives[0].multiple")
    assert block == 16, "QEMU's drive takes SET MULTIPLE 16"
    counts = [1, block - 1, block, block + 1, 2 * block + 1, 255, 256, 257]
    lba = 1
    expected = bytearray(disk.size)
    for seed, count in enumerate(counts):
        data = pattern(100 + seed, count)
        m.ata.write(0, lba, data, mode="pio")
        expected[lba * SECTOR : (lba + count) * SECTOR] = data
        assert m.ata.read(0, lba, count, mode="pio") == data, f"PIO round trip of {count} sectors"
        assert m.ata.read(0, lba, count, mode="dma") == data, f"DMA read of {count} PIO-written sectors"
        lba += count + 3
    m.ata.flush(0)
    assert disk.path.read_bytes() == bytes(expected), "the image differs outside or inside the writes"


def test_guest_bench_counts_bytes_and_writes_where_it_says(
    machine_factory: MachineFactory, tmp_path: Path
) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_mib=4)
    m = machine_factory(disks=[disk])
    for mode in ("dma", "pio"):
        r = m.ata.bench(0, op="read", mode=mode, count=128, iterations=10)
        assert (r.drive, r.op, r.mode, r.count, r.iterations) == (0, "read", mode, 128, 10)
        assert r.bytes == 10 * 128 * SECTOR
        assert r.tsc_per_ms > 0 and 0 < r.min_cycles <= r.max_cycles
        assert r.min_cycles * 10 <= r.cycles <= r.max_cycles * 10
        assert r.mb_per_s > 0 and r.us_per_command > 0
    # A write bench writes the buffer at sequential LBAs, wrapping to 0 before the end.
    count = 64
    data = pattern(5, count)
    m.write_memory(m.symbol("xfer_buf"), data)
    start = disk.sectors - count
    r = m.ata.bench(0, op="write", mode="dma", count=count, iterations=3, lba=start)
    assert (r.iterations, r.bytes) == (3, 3 * count * SECTOR)
    m.ata.flush(0)
    for lba in (start, 0, count):
        assert disk.read_sectors(lba, count) == data, f"bench write at LBA {lba}"
    assert disk.read_sectors(2 * count, 1) == bytes(SECTOR)
    # Bad arguments: the first transfer is refused by the driver, the rest by Python.
    with pytest.raises(AtaError) as info:
        m.ata.bench(0, count=1, iterations=2, lba=disk.sectors)
    assert info.value.code is AtaCode.RANGE
    with pytest.raises(AtaError) as info:
        m.ata.bench(0, count=8, iterations=2, mode="pio", lba=disk.sectors - 4)
    assert info.value.code is AtaCode.RANGE
    for bad in ({"op": "verify"}, {"iterations": 0}, {"mode": "udma"}, {"count": MAX_COUNT + 1}):
        with pytest.raises(AtaError) as info:
            m.ata.bench(0, **bad)
        assert info.value.code is AtaCode.INVAL, bad
    with pytest.raises(AtaError) as info:
        m.ata.bench(1, iterations=1)
    assert info.value.code is AtaCode.NODEV


# It asserts that nothing is armed while the guest runs, the checker's trace events included.
@pytest.mark.piix3_protocol(False)
def test_armed_check_sees_breakpoints_in_the_driver_pages(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    m = machine_factory(disks=[disk])
    sections = elf_sections(m.config.kernel)
    check = armed_check(m)
    park = m.evaluate_int("(unsigned)&harness_ready")
    assert check.ok, check.describe()
    assert check.text == (sections[".text"][0], sum(sections[".text"]))
    assert [a for a, _ in check.breakpoints] == [park]
    lo, hi = check.text_pages
    assert not lo <= park < hi, "the park point shares a page with the driver"
    m.ata.read(0, 0, 1)  # calls leave nothing behind either
    m.call("ata_flush", 0)
    assert armed_check(m).breakpoints == check.breakpoints
    gdb = m.gdb
    assert gdb is not None
    bkpt = gdb.command("-break-insert ata_flush").payload["bkpt"]
    number = bkpt["number"]
    flagged = armed_check(m)
    assert not flagged.ok and [a for a, _ in flagged.in_text] == [int(bkpt["addr"], 16)]
    assert "1 breakpoint(s) in the driver's text pages" in flagged.describe()
    gdb.command(f"-break-delete {number}")
    assert armed_check(m).ok
