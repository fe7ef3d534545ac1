"""The driver's edges that a transfer's data alone does not show: which command set a transfer
gets at the LBA28 limit, what the error record holds, PRD tables for buffers that are not 64 KiB
aligned, the engine a DMA timeout leaves running, what detection leaves behind, and the IDE
decode enable the driver turns on. Each test names the driver bug it catches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from harness import AtaCode, AtaError, DiskImage, Fault, Machine
from harness.abi import ErrorRecord
from harness.portio.protocol import PrdTable, check, hardware_resets, render_text
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

SECTOR = 512
LBA28_LIMIT = 1 << 28
PRD_LIMIT = 0x10000  # a PRD region may not cross a 64 KiB boundary
IDETIM = (0x40, 0x42)  # primary, secondary IDE timing registers
IDETIM_DECODE = 0x8000
DMA_MODE = 1
HELD_TIMEOUT_MS = 5
COMMANDS = {  # (mode, writing, lba48) -> the command the driver must choose
    ("pio", False, False): 0xC4,
    ("pio", False, True): 0x29,
    ("pio", True, False): 0xC5,
    ("pio", True, True): 0x39,
    ("dma", False, False): 0xC8,
    ("dma", False, True): 0x25,
    ("dma", True, False): 0xCA,
    ("dma", True, True): 0x35,
}


def pattern(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(i.to_bytes(4, "little") + rng.randbytes(SECTOR - 4) for i in range(count))


def record(m: Machine) -> ErrorRecord:
    """The driver's error record as it is in guest memory (not through the harness's AtaError)."""
    return ErrorRecord.unpack(m.read_memory(m.symbol("last_error"), ErrorRecord.STRUCT.size))


@pytest.mark.parametrize("mode", ["pio", "dma"])
def test_the_command_set_follows_where_the_transfer_ends(
    machine_factory: MachineFactory, tmp_path: Path, mode: str
) -> None:
    """LBA28 commands move up to 256 sectors ending at or below 2^28; anything else takes the
    EXT ones. A boundary off by one either way (`>=` for `>`, 255 or 257 for 256, 2^27 or 2^29)
    chooses the other set: QEMU would serve both, the record of the command shows it."""
    disk = DiskImage.create(tmp_path / "big.img", size_bytes=(LBA28_LIMIT + (1 << 16)) * SECTOR)
    m = machine_factory(disks=[disk])
    spots = [
        (LBA28_LIMIT - 1, 1, False),
        (LBA28_LIMIT - 256, 256, False),
        (0, 256, False),
        (LBA28_LIMIT - 1, 2, True),
        (LBA28_LIMIT, 1, True),
        (0, 257, True),
        ((1 << 27) - 1, 2, False),
        (LBA28_LIMIT + 100, 1, True),
    ]
    for n, (lba, count, ext) in enumerate(spots):
        data = pattern(n, count)
        m.ata.write(0, lba, data, mode=mode)
        assert record(m).command == COMMANDS[mode, True, ext], f"write LBA {lba:#x} x{count}"
        assert m.ata.read(0, lba, count, mode=mode) == data
        assert record(m).command == COMMANDS[mode, False, ext], f"read LBA {lba:#x} x{count}"


def test_the_error_record_names_drive_bus_master_and_lba(
    machine_factory: MachineFactory, tmp_path: Path
) -> None:
    """A device error on the secondary slave: the record (guest memory, as any caller of the
    driver would read it) names drive 3, the secondary bus master's status (drive 1 DMA capable,
    0x40; not the primary's), the failing LBA and command; the next good call starts a fresh
    record (code 0, its own LBA and command)."""
    disks = {d: DiskImage.create(tmp_path / f"d{d}.img", size_mib=4) for d in (0, 3)}
    m = machine_factory(disks=disks, faults={3: [Fault("read", sector=77)]})
    for mode, command in (("dma", 0xC8), ("pio", 0xC4)):
        with pytest.raises(AtaError):
            m.ata.read(3, 77, 1, mode=mode)
        rec = record(m)
        assert (rec.code, rec.drive, rec.command, rec.lba) == (AtaCode.DEVICE, 3, command, 77), rec
        assert (rec.status, rec.error, rec.bm_status) == (0x41, 0x04, 0x40), rec
        assert rec.phase == (4 if mode == "dma" else 2)
        m.ata.read(0, 9, 1, mode=mode)
        assert record(m) == ErrorRecord(0, 0, command, 0, 0, 0, 0, 0, 9)


def test_dma_into_buffers_not_aligned_to_64_kib(machine: Machine) -> None:
    """The PRD table splits a transfer at every 64 KiB boundary of the buffer, EOT on the last
    entry only, and its regions add up to the transfer; a buffer whose 32 MiB would need 513
    entries is refused (INVAL) before any port is touched. QEMU itself would take regions that
    cross 64 KiB: the table read back from guest memory shows the driver's own."""
    m = machine
    data = pattern(5, 300)
    m.ata.write(0, 100, data)
    buf = m.symbol("xfer_buf") + 0xFF00
    assert m.call("ata_read", 0, 100, 300, buf, DMA_MODE) == 0
    assert m.read_memory(buf, len(data)) == data
    table_at = m.evaluate_int("(unsigned int)&prd_table")
    table = PrdTable.from_bytes(table_at, m.read_memory(table_at, 8 * 8))
    regions = [(e.base, e.size) for e in table.entries]
    assert regions == [
        (buf, 0x100),
        (buf + 0x100, PRD_LIMIT),
        (buf + 0x10100, PRD_LIMIT),
        (buf + 0x20100, 0x5700),
    ]
    assert [e.eot for e in table.entries] == [False, False, False, True]
    assert all((base & 0xFFFF) + size <= PRD_LIMIT for base, size in regions)
    with m.watch_ports("all") as io:
        assert m.call("ata_read", 0, 0, 65536, m.symbol("xfer_buf") + 0x100, DMA_MODE) == AtaCode.INVAL
    assert io.events == []


def test_a_dma_timeout_then_a_command_that_is_no_dma(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """After a DMA timeout the engine is left running; the next command on the channel, here a
    FLUSH CACHE and a PIO read with no reset in between, stops it first: a driver that forgot
    would write them with START set (PIIX3-BM-3)."""
    m = machine_factory(disks=[disk], faults={0: []})
    default = m.ata.timeout_ms
    with m.device_trace() as dev:
        m.hold_io(0, "read")
        m.ata.timeout_ms = HELD_TIMEOUT_MS
        with pytest.raises(AtaError) as e:
            m.ata.read(0, 5, 1, mode="dma")
        m.ata.timeout_ms = default
        assert e.value.code is AtaCode.TIMEOUT
        m.ata.flush(0)
        assert m.ata.read(0, 5, 1, mode="pio") == bytes(SECTOR)
    found = check(dev.events, port_map=m.ports.port_map(), hardware_resets=hardware_resets(dev.actions))
    assert found == [], render_text(found)
    starts = [
        i for i, e in enumerate(dev.events) if e.register == "primary BM Command" and (e.value or 0) & 1
    ]
    stops = [i for i, e in enumerate(dev.events) if e.register == "primary BM Command" and e.value == 0]
    assert starts and any(i > starts[-1] for i in stops), "START was never cleared after the timeout"


def test_detection_leaves_a_clean_record_and_a_quiet_log(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """Detection probes absent drives and a CD-ROM whose IDENTIFY DEVICE aborts: none of that is
    an error of any call, so the error record is all zero after boot and after a soft reset,
    and the log has no error lines (only the summary of each position, exactly)."""
    cdrom = ["-drive", "if=none,id=cd,media=cdrom", "-device", "ide-cd,drive=cd,bus=ide.1,unit=0"]
    m = machine_factory(disks=[disk], extra_qemu_args=cdrom)
    for reset in (False, True):
        if reset:
            m.ata.reset_channel(1)  # the call's own record names the channel's first drive
        assert record(m) == ErrorRecord(0, 2 if reset else 0, 0, 0, 0, 0, 0, 0, 0)
        log = m.serial_text()
        assert "error:" not in log and "timeout:" not in log, log
    assert (
        "ata: drive 0 (primary master): QEMU HARDDISK, 131072 sectors (64 MiB), LBA48, multiple 16\n" in log
    )
    assert log.endswith(
        "ata: channel 1 reset\nata: drive 2: ATAPI device, not a disk; ignored\n"
        "ata: drive 2 (secondary master): none\nata: drive 3 (secondary slave): none\n"
    ), log[-400:]


def test_ide_decode_is_turned_on_when_off(machine: Machine) -> None:
    """Both firmwares (and QEMU's reset) leave IDE decode enabled in IDETIM; a firmware that did
    not would leave the channels off on a real PIIX3. With both bits cleared, ata_init() turns
    them on again (QEMU decodes the ports regardless: the register shows what the driver did)."""
    m = machine
    bdf = m.evaluate_int("piix3_bdf")
    for reg in IDETIM:
        m.call("pci_write16", bdf, reg, 0)
    timing = m.call("harness_pci_read32", bdf, IDETIM[0])
    assert timing == 0, f"{timing:#x}"
    assert m.call("ata_init") == 0
    timing = m.call("harness_pci_read32", bdf, IDETIM[0])
    assert timing is not None and timing & IDETIM_DECODE and timing >> 16 & IDETIM_DECODE, f"{timing:#x}"
    assert m.ata.read(0, 0, 1) == bytes(SECTOR)
