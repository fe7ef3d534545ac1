"""Driver paths that `make coverage` showed no other test reaching (build/coverage/index.html):
the driver's own argument checks (harness/ata.py refuses such calls before they get there, so
these go through the raw mailbox), calls after the controller was not found, a drive without
multiple mode or FLUSH CACHE EXT (QEMU's drives have both: the driver's record of the drive is
changed, as a drive lacking them would have left it), and a drive still busy with another
command when a call selects it. Each checks the driver's result and what reached the wire."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness import AtaCode, AtaError, Machine
from harness.abi import Op, Request
from harness.portio.access import PortAccess
from harness.regs import AtaMode

pytestmark = pytest.mark.qemu

SECTOR = 512
IDE_REGISTERS = ("primary ", "secondary ")


def ide_accesses(events: list[PortAccess]) -> list[PortAccess]:
    return [e for e in events if e.register.startswith(IDE_REGISTERS)]


def commands(events: list[PortAccess]) -> list[int]:
    return [
        e.value
        for e in events
        if e.direction == "out" and e.register.endswith(" Command") and e.value is not None
    ]


@contextmanager
def driver_state(m: Machine, expr: str, value: int) -> Iterator[None]:
    """Set a driver variable for the block (a GDB expression), then put it back."""
    old = m.evaluate_int(expr)
    m.evaluate_int(f"{expr} = {value}")
    try:
        yield
    finally:
        m.evaluate_int(f"{expr} = {old}")


def test_the_driver_refuses_bad_numbers_itself_before_any_port(machine: Machine) -> None:
    """Drive and channel numbers out of range, straight through the mailbox: INVAL from the
    driver's own checks, and not one IDE register touched (a driver that trusted them would
    index past its channel table and drive some port)."""
    m = machine
    buf = m.symbol("xfer_buf")
    bad = [
        Request(Op.FLUSH, drive=7),
        Request(Op.READ, drive=-1, lba=0, count=1, buf=buf, mode=AtaMode.DMA),
        Request(Op.IDENTIFY, drive=4, buf=buf),
        Request(Op.RESET_CHANNEL, drive=4, arg=2),
        Request(Op.RESET_CHANNEL, drive=0, arg=-1),
    ]
    with m.device_trace() as dev:
        results = [m.request(r) for r in bad]
    assert results == [AtaCode.INVAL] * len(bad)
    assert ide_accesses(dev.events) == []


def test_without_a_controller_every_call_is_noctrl_and_silent(machine: Machine) -> None:
    """What ata_init leaves when no PIIX3 IDE function is found (no channel ports): each call
    says NOCTRL and touches no port."""
    m = machine
    with driver_state(m, "'ata.c'::channels[0].cmd", 0), m.device_trace() as dev:
        with pytest.raises(AtaError) as e:
            m.ata.flush(0)
        assert e.value.code is AtaCode.NOCTRL
        assert m.request(Request(Op.RESET_CHANNEL, drive=2, arg=1)) == AtaCode.NOCTRL
    assert ide_accesses(dev.events) == []
    m.ata.flush(0)  # the channel back: the drive answers again


def test_pio_without_multiple_mode_uses_the_sector_commands_in_lba48(machine: Machine) -> None:
    """A drive on which SET MULTIPLE MODE failed: PIO moves one sector per DRQ block with READ/
    WRITE SECTORS EXT for a transfer that needs LBA48 (more than 256 sectors), and the data
    round-trips."""
    m = machine
    data = bytes(range(256)) * 2 * 300
    with driver_state(m, "ata_drives[0].multiple", 0), m.device_trace(data=False) as dev:
        m.ata.write(0, 1000, data, mode="pio")
        got = m.ata.read(0, 1000, 300, mode="pio")
    assert got == data
    assert commands(dev.events) == [0x34, 0x24]  # WRITE SECTORS EXT, READ SECTORS EXT


def test_flush_without_flush_ext_is_flush_cache(machine: Machine) -> None:
    """A drive whose IDENTIFY lacks FLUSH CACHE EXT gets FLUSH CACHE (E7h)."""
    m = machine
    with m.device_trace() as dev:
        m.ata.flush(0)
        with driver_state(m, "ata_drives[0].flush_ext", 0):
            m.ata.flush(0)
    assert commands(dev.events) == [0xEA, 0xE7]


# polled: in irq mode the call made from inside the read would take that read's pending interrupt
@pytest.mark.piix3_completion("poll")
def test_a_drive_busy_with_another_command_times_out_at_select(machine: Machine) -> None:
    """A call that finds the drive still busy (DRQ set: a PIO read waiting for its data to be
    taken) ends in TIMEOUT in the SELECT phase without writing a register; the command in
    flight then finishes normally. The busy drive is made by stopping a PIO read at the status
    read that shows DRQ (before the data moves), and the second call is a GDB inferior call
    made from that stop."""
    m = machine
    m.ata.write(0, 40, b"\x5a" * SECTOR, mode="pio")
    m.ata.timeout_ms = 50
    buf = m.symbol("xfer_buf")
    pending = m.ata.begin_read(0, 40, 1, mode="pio")
    with m.break_on_port("primary-ctrl", direction="in") as bp:
        for _ in range(200):  # to the Alt Status read that shows DRQ
            stop = m.cont()
            if stop.access is not None and stop.access.value is not None and stop.access.value & 0x08:
                break
        else:
            pytest.fail("the PIO read never showed DRQ")
        bp.delete()
        with m.device_trace() as dev:
            rc = m.call("ata_read", 0, 80, 1, buf + 0x10000, int(AtaMode.PIO))
        last = m.read_memory(m.symbol("last_error"), 32)
    assert rc == AtaCode.TIMEOUT
    assert int.from_bytes(last[24:28], "little") == 1, "phase SELECT (ata_last_error.phase)"
    assert [e for e in ide_accesses(dev.events) if e.direction == "out"] == []
    assert pending.finish() == b"\x5a" * SECTOR
