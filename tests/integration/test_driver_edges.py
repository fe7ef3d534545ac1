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
        assert (
            f"ata: drive 3 cmd {command:02x} error: status=41 err=04 lba=77 phase={rec.phase}\n"
            in m.serial_text()
        )
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


@pytest.mark.parametrize("drive", [0, 3], ids=["primary-master", "secondary-slave"])
def test_a_dma_timeout_then_a_command_that_is_no_dma(
    machine_factory: MachineFactory, tmp_path: Path, drive: int
) -> None:
    """After a DMA timeout the engine is left running; the next command on the channel, here a
    FLUSH CACHE and a PIO read with no reset in between, stops it first: a driver that forgot,
    or kept the note of it for the wrong channel, would write them with START set
    (PIIX3-BM-3)."""
    disk = DiskImage.create(tmp_path / "d.img", size_mib=4)
    m = machine_factory(disks={drive: disk}, faults={drive: []})
    bm_command = ("primary", "secondary")[drive // 2] + " BM Command"
    default = m.ata.timeout_ms
    with m.device_trace() as dev:
        m.hold_io(drive, "read")
        m.ata.timeout_ms = HELD_TIMEOUT_MS
        with pytest.raises(AtaError) as e:
            m.ata.read(drive, 5, 1, mode="dma")
        m.ata.timeout_ms = default
        assert e.value.code is AtaCode.TIMEOUT
        m.ata.flush(drive)
        assert m.ata.read(drive, 5, 1, mode="pio") == bytes(SECTOR)
    found = check(dev.events, port_map=m.ports.port_map(), hardware_resets=hardware_resets(dev.actions))
    assert found == [], render_text(found)
    starts = [i for i, e in enumerate(dev.events) if e.register == bm_command and (e.value or 0) & 1]
    stops = [i for i, e in enumerate(dev.events) if e.register == bm_command and e.value == 0]
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
    them on again (QEMU decodes the ports regardless: the register shows what the driver did),
    and leaves the PCI command register, which it set up at boot, alone."""
    m = machine
    bdf = m.evaluate_int("piix3_bdf")
    for reg in IDETIM:
        m.call("pci_write16", bdf, reg, 0)
    timing = m.call("harness_pci_read32", bdf, IDETIM[0])
    assert timing == 0, f"{timing:#x}"
    enabled = m.serial_text().count("pci: enabled I/O and bus mastering")
    assert m.call("ata_init") == 0
    # I/O and bus mastering are on since boot (both firmwares leave mastering off): not again
    assert m.serial_text().count("pci: enabled I/O and bus mastering") == enabled
    timing = m.call("harness_pci_read32", bdf, IDETIM[0])
    assert timing is not None and timing & IDETIM_DECODE and timing >> 16 & IDETIM_DECODE, f"{timing:#x}"
    assert m.ata.read(0, 0, 1) == bytes(SECTOR)


def test_calls_straight_into_the_driver_are_checked_by_it(machine: Machine) -> None:
    """The driver's own argument checks, called as any C caller would (the harness's checks out
        of the way): drive numbers just outside 0..3, a count one past 65536, a buffer that ends
        one sector past the end of RAM (and one that ends exactly there), and the command each
        refused call names in the record. Also the documented default bound on every wait, and what
    the driver leaves alone when the firmware has set the PIIX3 up."""
    m = machine
    assert m.ata.timeout_ms == 2000
    xfer = m.symbol("xfer_buf")
    for drive in (-1, 4):
        for call in (
            ("ata_read", drive, 0, 1, xfer, DMA_MODE),
            ("ata_write", drive, 0, 1, xfer, DMA_MODE),
            ("ata_identify", drive, xfer),
            ("ata_flush", drive),
            ("ata_set_write_cache", drive, 1),
        ):
            assert m.call(*call) == AtaCode.INVAL, call
    assert m.call("ata_reset_channel", -1) == AtaCode.INVAL
    for mode in (0, DMA_MODE):
        assert m.call("ata_read", 0, 0, 65537, xfer, mode) == AtaCode.INVAL
    end = m.evaluate_int("ata_ram_end")
    assert m.call("ata_read", 0, 0, 2, end - SECTOR, DMA_MODE) == AtaCode.INVAL
    assert m.call("ata_read", 0, 0, 1, end - SECTOR, DMA_MODE) == 0
    assert m.call("ata_identify", 1, xfer) == AtaCode.NODEV
    assert (record(m).code, record(m).drive, record(m).command) == (AtaCode.NODEV, 1, 0xEC)
    assert m.call("ata_set_write_cache", 2, 0) == AtaCode.NODEV
    assert (record(m).drive, record(m).command) == (2, 0xEF)
    log = m.serial_text()
    assert "prog-if 80 " in log, log[:400]


def test_without_multiple_mode_and_without_lba48(machine_factory: MachineFactory, tmp_path: Path) -> None:
    """QEMU's drives all take SET MULTIPLE MODE 16 and all have LBA48; a drive that did neither
    is set up here in the driver's table (through GDB). Without multiple mode, PIO uses READ and
    WRITE SECTORS (EXT), one sector per DRQ block, and the record of the device's side keeps the
    protocol; without LBA48, a transfer of more than 256 sectors is refused. And a device error
    at an LBA28 address with bits 27:24 = 0xD names exactly that LBA."""
    fault = 0x0DCB_A987
    disk = DiskImage.create(tmp_path / "big.img", size_bytes=(LBA28_LIMIT + (1 << 16)) * SECTOR)
    m = machine_factory(disks=[disk], faults={0: [Fault("read", sector=fault)]})
    for mode in ("pio", "dma"):
        with pytest.raises(AtaError) as e:
            m.ata.read(0, fault - (16 if mode == "pio" else 0), 32, mode=mode)
        assert e.value.lba == fault, f"{mode}: {e.value.lba:#x}"
    m.evaluate_int("ata_drives[0].multiple = 0")
    with m.device_trace() as dev:
        for n, (lba, ext) in enumerate(((1000, False), (LBA28_LIMIT + 10, True))):
            data = pattern(40 + n, 20)
            m.ata.write(0, lba, data, mode="pio")
            assert record(m).command == (0x34 if ext else 0x30)
            assert m.ata.read(0, lba, 20, mode="pio") == data
            assert record(m).command == (0x24 if ext else 0x20)
    found = check(dev.events, port_map=m.ports.port_map(), hardware_resets=hardware_resets(dev.actions))
    assert found == [], render_text(found)
    m.ata.flush(0)
    assert disk.read_sectors(1000, 20) == pattern(40, 20)
    m.evaluate_int("ata_drives[0].lba48 = 0")
    assert m.call("ata_read", 0, 0, 257, m.symbol("xfer_buf"), DMA_MODE) == AtaCode.INVAL
    assert m.call("ata_read", 0, 0, 256, m.symbol("xfer_buf"), DMA_MODE) == 0
    assert record(m).command == 0xC8
