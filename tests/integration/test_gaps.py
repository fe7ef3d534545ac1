"""What the rest of the suite exercised nowhere: an ATAPI CD-ROM at a drive position, LBAs at and
beyond 2^32 on a sparse image larger than 2 TiB, device errors at LBAs whose high address
bytes are not zero, a floating bus (status FFh), and the driver's error paths checked against
the protocol rules on the wire. Run under both firmwares by `make test`."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from harness import AtaCode, AtaError, DiskImage, DiskImageError, Fault
from harness.portio.protocol import check, hardware_resets, origin_of, render_text
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

SECTOR = 512
LBA28_LIMIT = 1 << 28
LBA32 = 1 << 32
# A sparse raw image a little over 2.375 TiB: LBAs past 2^32 with room for a 2^32 + 0x23456789.
BIG_SECTORS = 0x1_3000_0000
# Fault addresses whose every address byte differs: an LBA28 one past 2^24 (bits 27:24 = 0xA,
# carried in the Device register) and LBA48 ones past 2^32 (the HOB bytes of the task file).
FAULT_LBA28 = 0x0ABC_DEF1
FAULT_LBA48 = 0x1_2345_6789
# On a QEMU null-co drive of 2^48 sectors (reads zeros, stores nothing): all six bytes non-zero.
FAULT_LBA48_FULL = 0x9ABC_DEF0_1234
NULL_DRIVE = 2
ST_ERR_DRDY, ER_ABRT = 0x41, 0x04
# A floating bus: no device decodes the tertiary IDE ports on QEMU's pc machine, so every read
# there returns FFh, what a real bus with nothing attached gives.
FLOAT_CMD, FLOAT_CTRL = 0x1E8, 0x3EE
DETECT_BOUND_MS = 100  # the driver's bounded wait for BSY in detection (ATA_DETECT_TIMEOUT_US)
HELD_TIMEOUT_MS = 5  # the driver's bound while a request is held: it runs out whatever its length


def pattern(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(i.to_bytes(4, "little") + rng.randbytes(SECTOR - 4) for i in range(count))


def big_image(path: Path) -> DiskImage:
    """A sparse raw image past 2 TiB; skipped where the filesystem cannot hold such a file."""
    try:
        return DiskImage.create(path, size_bytes=BIG_SECTORS * SECTOR)
    except DiskImageError as exc:
        pytest.skip(
            f"the filesystem of {path.parent} cannot hold a sparse {BIG_SECTORS * SECTOR} byte file: {exc}"
        )


def qemu_opt(path: Path) -> str:
    return str(path).replace(",", ",,")


# --- an ATAPI CD-ROM at a drive position ---------------------------------------------------------
def test_atapi_cdroms_are_skipped_and_the_disks_served(
    machine_factory: MachineFactory, tmp_path: Path
) -> None:
    """A CD-ROM with a disc as primary slave and an empty one as secondary master, disks at 0 and
    3: IDENTIFY DEVICE is aborted by each CD-ROM (it answers IDENTIFY PACKET DEVICE only), the
    driver recognises the ATAPI signature and says so, leaves both out, and serves the disks,
    the one behind an ATAPI master included, before and after a soft reset of each channel."""
    disks = {
        0: DiskImage.create(tmp_path / "d0.img", size_mib=4),
        3: DiskImage.create(tmp_path / "d3.img", size_mib=6),
    }
    disc = tmp_path / "disc.iso"
    disc.write_bytes(pattern(77, 4096))  # 2 MiB: any raw file is a disc
    cdroms = [
        "-drive",
        f"if=none,id=cd1,media=cdrom,format=raw,readonly=on,file={qemu_opt(disc)}",
        "-device",
        "ide-cd,drive=cd1,bus=ide.0,unit=1",
        "-drive",
        "if=none,id=cd2,media=cdrom",
        "-device",
        "ide-cd,drive=cd2,bus=ide.1,unit=0",
    ]
    m = machine_factory(disks=disks, extra_qemu_args=cdroms)
    # each detection (the boot's, then each channel's reset), once and in order on the console
    detected = [
        "ata: drive 1: ATAPI device, not a disk; ignored",
        "ata: drive 1 (primary slave): none",
        "ata: drive 2: ATAPI device, not a disk; ignored",
        "ata: drive 2 (secondary master): none",
        "ata: drive 3 (secondary slave): QEMU HARDDISK, 12288 sectors",
    ]
    lines = [re.escape(line) for line in detected]
    lines[2] = "(?:ata: channel 1 reset\r\n)?" + lines[2]  # a reset of channel 1 says so first
    for round_ in range(2):
        m.console.expect("\r\n".join(lines), timeout=5)
        assert sorted(m.ata.drives()) == [0, 3]
        for d in (1, 2):
            with pytest.raises(AtaError) as refused:
                m.ata.read(d, 0, 1)
            assert refused.value.code is AtaCode.NODEV
        for d in (0, 3):
            for n, mode in enumerate(("pio", "dma")):
                data = pattern(10 * d + n + 100 * round_, 20)
                m.ata.write(d, 40 + 20 * n, data, mode=mode)
                assert m.ata.read(d, 40 + 20 * n, 20, mode="dma" if mode == "pio" else "pio") == data
            m.ata.flush(d)
            assert disks[d].read_sectors(40, 20) == pattern(10 * d + 100 * round_, 20)
            assert disks[d].read_sectors(60, 20) == pattern(10 * d + 1 + 100 * round_, 20)
        if round_ == 0:
            m.ata.reset_channel(0)
            m.ata.reset_channel(1)


# --- LBAs at and beyond 2^32 ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["pio", "dma"])
def test_lbas_at_and_beyond_2_32(machine_factory: MachineFactory, tmp_path: Path, mode: str) -> None:
    """Transfers at, across and beyond LBA 2^32 (the fifth address byte: HOB LBA Mid) land where
    the host sees them; a driver that kept 32 bits of the LBA writes 2 TiB too low."""
    disk = big_image(tmp_path / "big.img")
    m = machine_factory(disks=[disk])
    info = m.ata.identify(0)
    assert info.lba48 and info.sectors == BIG_SECTORS
    last = BIG_SECTORS - 1
    spots = [
        (LBA32 - 1, 1),
        (LBA32, 1),
        (LBA32 - 7, 20),
        (LBA32 - 300, 700),
        (FAULT_LBA48, 3),
        (last - 299, 300),
    ]
    for n, (lba, count) in enumerate(spots):
        data = pattern(n, count)
        m.ata.write(0, lba, data, mode=mode)
        assert m.ata.read(0, lba, count, mode=mode) == data, f"LBA {lba:#x} x{count}"
    m.ata.flush(0)
    for n, (lba, count) in enumerate(spots):
        if n in (0, 1, 2):
            continue  # overwritten by the 700-sector write around 2^32
        assert disk.read_sectors(lba, count) == pattern(n, count), f"host view of LBA {lba:#x}"
    assert disk.read_sectors(0, 64) == bytes(64 * SECTOR), "nothing landed at LBA mod 2^32"
    with pytest.raises(AtaError) as e:
        m.ata.read(0, last, 2, mode=mode)
    assert e.value.code is AtaCode.RANGE


# --- device errors at high LBAs -------------------------------------------------------------------
def null_drive_with_fault(lba: int) -> list[str]:
    """QEMU arguments for a 2^48-sector null-co drive at NULL_DRIVE whose reads covering `lba`
    fail (blkdebug rules inline, under a raw format node that raises the read_aio event)."""
    node = {
        "driver": "raw",
        "node-name": "nulldisk",
        "file": {
            "driver": "blkdebug",
            "image": {"driver": "null-co", "size": (1 << 48) * SECTOR, "read-zeroes": True},
            "inject-error": [{"event": "read_aio", "iotype": "read", "errno": 5, "sector": lba}],
        },
    }
    unit = f"bus=ide.{NULL_DRIVE // 2},unit={NULL_DRIVE % 2}"
    return [
        "-blockdev",
        json.dumps(node, separators=(",", ":")),
        "-device",
        f"ide-hd,drive=nulldisk,{unit},rerror=report,werror=report",
    ]


@pytest.mark.parametrize("mode", ["pio", "dma"])
def test_device_errors_at_high_lbas_report_that_lba(
    machine_factory: MachineFactory, tmp_path: Path, mode: str
) -> None:
    """AtaError.lba is the LBA the drive put in the task file: bits 27:24 from the Device
    register for an LBA28 command, the HOB bytes for an LBA48 one. In PIO the read starts one
    DRQ block (16 sectors) before the fault, so the failing LBA is not the command's."""
    disk = big_image(tmp_path / "big.img")
    m = machine_factory(
        disks=[disk],
        faults={
            0: [
                Fault("read", sector=FAULT_LBA28),
                Fault("read", sector=FAULT_LBA48),
                Fault("write", sector=FAULT_LBA48 + 64),
            ]
        },
        extra_qemu_args=null_drive_with_fault(FAULT_LBA48_FULL),
    )
    assert m.ata.sectors(NULL_DRIVE) == 1 << 48
    lead = 16 if mode == "pio" else 0
    commands = {("pio", False): 0xC4, ("pio", True): 0x29, ("dma", False): 0xC8, ("dma", True): 0x25}
    for drive, lba in ((0, FAULT_LBA28), (0, FAULT_LBA48), (NULL_DRIVE, FAULT_LBA48_FULL)):
        with pytest.raises(AtaError) as e:
            m.ata.read(drive, lba - lead, 32, mode=mode)
        err = e.value
        assert err.code is AtaCode.DEVICE, str(err)
        assert (err.status, err.error) == (ST_ERR_DRDY, ER_ABRT)
        assert err.lba == lba, f"drive {drive}: reported LBA {err.lba:#x}, the fault is at {lba:#x}"
        assert err.command == commands[mode, lba >= LBA28_LIMIT]
        assert m.ata.read(drive, lba - 40, 32, mode=mode) == bytes(32 * SECTOR)  # before it: fine
    with pytest.raises(AtaError) as e:
        m.ata.write(0, FAULT_LBA48 + 64 - lead, pattern(3, 32), mode=mode)
    assert e.value.code is AtaCode.DEVICE and e.value.lba == FAULT_LBA48 + 64
    assert e.value.command == (0x39 if mode == "pio" else 0x35)


# --- a floating bus --------------------------------------------------------------------------------
def test_a_floating_bus_is_no_drive(machine_factory: MachineFactory, disk: DiskImage) -> None:
    """Real hardware with nothing on a channel floats the bus: status reads FFh (QEMU reads 00h
    for an absent drive, so this is never seen otherwise). The driver's secondary channel is
    pointed at ports nobody decodes, where every read is FFh: a soft reset and detection must
    take it as "no device" at once, not wait out their bounds for BSY to clear, and write no
    command there."""
    m = machine_factory(disks=[disk])
    m.evaluate_int(f"channels[1].cmd = {FLOAT_CMD}")
    m.evaluate_int(f"channels[1].ctrl = {FLOAT_CTRL}")
    per_ms = m.evaluate_int("tsc_per_ms")
    t0 = m.evaluate_int("deadline_after_us(0)")
    m.ata.reset_channel(1)  # a driver that waits out a bound here fails with TIMEOUT
    elapsed_ms = (m.evaluate_int("deadline_after_us(0)") - t0) / per_ms
    assert elapsed_ms < DETECT_BOUND_MS / 2, (
        f"reset and detection of a floating channel took {elapsed_ms:.1f} ms"
    )
    m.console.expect_exact("ata: channel 1 reset", timeout=5)
    m.console.expect_exact("ata: drive 2 (secondary master): none\r\nata: drive 3 (secondary slave): none")
    assert sorted(m.ata.drives()) == [0]
    with m.watch_ports((FLOAT_CMD, FLOAT_CMD + 7), FLOAT_CTRL) as io:
        m.ata.reset_channel(1)
    reads = [e for e in io.events if e.direction == "in"]
    assert reads and all(e.value == 0xFF for e in reads), io.events
    assert not [e for e in io.events if e.direction == "out" and e.port == FLOAT_CMD + 7], (
        "a command was written"
    )
    assert m.ata.read(0, 0, 1) == bytes(SECTOR)  # the real primary channel is untouched


# --- the error paths on the wire -------------------------------------------------------------------
def test_error_paths_keep_the_protocol(machine_factory: MachineFactory, disk: DiskImage) -> None:
    """Device errors, held requests that time out (PIO and DMA) and the recoveries after them,
    recorded from QEMU's side: no protocol rule is broken. A timeout leaves the drive busy, so
    its Error register is not read (AtaError.error is 0); a DMA timeout leaves the engine
    running, and START is cleared before the next command on the channel, SRST or not."""
    m = machine_factory(disks=[disk], faults={0: [Fault("read", sector=500), Fault("write", sector=600)]})
    disk.write_sectors(5, pattern(1, 2))
    default_timeout = m.ata.timeout_ms
    with m.device_trace() as dev:
        for mode in ("pio", "dma"):
            with pytest.raises(AtaError) as e:
                m.ata.read(0, 496, 8, mode=mode)
            assert e.value.code is AtaCode.DEVICE and e.value.error == ER_ABRT
            with pytest.raises(AtaError) as e:
                m.ata.write(0, 600, pattern(2, 1), mode=mode)
            assert e.value.code is AtaCode.DEVICE and e.value.error == ER_ABRT
            for op in ("read", "write"):
                m.hold_io(0, op)
                m.ata.timeout_ms = HELD_TIMEOUT_MS  # every poll is a trace line: keep the record short
                with pytest.raises(AtaError) as e:
                    if op == "read":
                        m.ata.read(0, 5, 1, mode=mode)
                    else:
                        m.ata.write(0, 7, pattern(3, 1), mode=mode)
                m.ata.timeout_ms = default_timeout
                err = e.value
                assert err.code is AtaCode.TIMEOUT and err.status & 0x88, str(err)
                assert err.error == 0, f"Error read while the drive was busy (status {err.status:#04x})"
                if mode == "pio":
                    m.ata.reset_channel(0)  # the drive may still hold a PIO data block
            assert m.ata.read(0, 5, 2, mode=mode) == pattern(1, 2)  # DMA: no reset needed
    found = check(dev.events, port_map=m.ports.port_map(), hardware_resets=hardware_resets(dev.actions))
    assert found == [], render_text(found, origin_of(dev.events))
    stops = [e for e in dev.events if e.register == "primary BM Command" and e.value == 0]
    assert stops, "the engine left running after the DMA timeouts was never stopped"
