"""Interrupt-driven completion (m.ata.set_completion("irq")): every operation on every drive
position, the interrupts each one raises counted on its channel's line; a masked line (a lost
interrupt), a pending one taken when the line is unmasked, a spurious IRQ 7/15, a request held
in QEMU, a PRD table shorter than the transfer, and an unexpected exception. Run under both
firmwares by `make test` (qboot leaves the local APIC's LINT0 masked: the guest sets it)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from harness import AtaCode, AtaError, ConfigError, DiskImage, HarnessError, Machine, UsageError
from harness.ata import IrqCounts
from harness.pytest_plugin import MachineFactory
from harness.regs import IRQ_IDE, AtaPhase

pytestmark = pytest.mark.qemu

SECTOR = 512
MULTIPLE = 16  # QEMU's drives: sectors per DRQ block of READ/WRITE MULTIPLE (set at detection)
SHORT_TIMEOUT_MS = 300
NONE = IrqCounts(0, 0, 0, 0)
TICK_LINE = 0


def pattern(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(i.to_bytes(4, "little") + rng.randbytes(SECTOR - 4) for i in range(count))


def blocks(count: int) -> int:
    return -(-count // MULTIPLE)


def delta(m: Machine, before: dict[int, IrqCounts]) -> dict[int, IrqCounts]:
    """What changed on each line since `before`, for the lines that changed; line 0 (the tick
    that bounds each wait) aside."""
    after = m.ata.irq_counts()
    out = {}
    for line, now in after.items():
        was = before[line]
        d = IrqCounts(
            now.taken - was.taken,
            now.spurious - was.spurious,
            now.lost - was.lost,
            now.unclaimed - was.unclaimed,
        )
        if d != NONE and line != TICK_LINE:
            out[line] = d
    return out


def irq_machine(
    machine_factory: MachineFactory, disks: dict[int, DiskImage] | list[DiskImage], **kw: object
) -> Machine:
    m = machine_factory(disks=disks, completion="irq", **kw)
    assert m.ata.completion == "irq"
    return m


def last(drive: int) -> bytes:
    """The first 9 sectors at LBA 64 after the operations below: the last write's (300, PIO)."""
    return pattern(drive * 1000 + 300, 300)[: 9 * SECTOR]


def test_every_operation_raises_its_interrupts_on_its_channel_line(
    machine_factory: MachineFactory, tmp_path: Path
) -> None:
    """Per drive and operation, the interrupts ATA/ATAPI-6's protocols raise, taken on the
    channel's line (both drives of a channel share it), none on the other line, none lost."""
    disks = {d: DiskImage.create(tmp_path / f"d{d}.img", size_mib=8) for d in range(4)}
    m = irq_machine(machine_factory, disks)
    for drive in range(4):
        line = IRQ_IDE[drive >> 1]

        def expect(
            interrupts: int, what: str, before: dict[int, IrqCounts], drive: int = drive, line: int = line
        ) -> None:
            got = delta(m, before)
            assert got == {line: IrqCounts(interrupts, 0, 0, 0)}, f"drive {drive}, {what}: {got}"

        for mode, count in (("dma", 9), ("pio", 20), ("dma", 300), ("pio", 300)):  # 300: LBA48
            data = pattern(drive * 1000 + count, count)
            before = m.ata.irq_counts()
            m.ata.write(drive, 64, data, mode=mode)
            expect(1 if mode == "dma" else blocks(count), f"{mode} write of {count}", before)
            before = m.ata.irq_counts()
            assert m.ata.read(drive, 64, count, mode=mode) == data, f"drive {drive} {mode} {count}"
            expect(1 if mode == "dma" else blocks(count), f"{mode} read of {count}", before)
            assert disks[drive].read_sectors(64, count) == data
        before = m.ata.irq_counts()
        m.ata.flush(drive)
        expect(1, "flush", before)
        before = m.ata.irq_counts()
        assert m.ata.identify(drive).sectors == disks[drive].sectors
        expect(1, "identify", before)
        before = m.ata.irq_counts()
        m.ata.set_write_cache(drive, False)
        m.ata.set_write_cache(drive, True)
        expect(2, "set write cache off and on", before)
    for channel in (0, 1):  # SRST, then IDENTIFY and SET MULTIPLE for each drive in irq mode
        before = m.ata.irq_counts()
        m.ata.reset_channel(channel)
        got = delta(m, before)[IRQ_IDE[channel]]
        assert (got.taken - got.unclaimed, got.lost, got.spurious) == (4, 0, 0), got
        assert m.ata.read(2 * channel + 1, 64, 9, mode="pio") == last(2 * channel + 1)
    m.ata.set_completion("poll")  # and back: nIEN set again, the driver polls, no interrupt
    before = m.ata.irq_counts()
    for drive in range(4):
        assert m.ata.read(drive, 64, 9) == last(drive)
        m.ata.flush(drive)
    assert delta(m, before) == {}


def test_the_mode_survives_reboots_and_is_checked(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = irq_machine(machine_factory, [disk])
    for reboot in (m.reset, m.power_cycle):
        reboot()  # the guest boots in poll mode; the harness puts irq back before the next call
        before = m.ata.irq_counts()
        m.ata.write(0, 1, pattern(1, 1))
        assert delta(m, before) == {14: IrqCounts(1, 0, 0, 0)}
    with pytest.raises(AtaError, match="completion 'interrupt' is not one of poll, irq"):
        m.ata.set_completion("interrupt")
    assert m.ata.completion == "irq"
    for line in (16, -1, True, "14", 14.0):
        with pytest.raises(UsageError, match="line"):
            m.mask_irq(line)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="completion 'IRQ' is not one of poll, irq"):
        Machine(disks=[disk], completion="IRQ")


def test_masked_line_times_out_then_recovers_after_unmask_and_srst(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """A lost interrupt: IRQ 14 masked in the 8259, the drive finishes but the driver never
    hears of it: a bounded TIMEOUT in phase irq, counted as lost; unmasked and SRST, it works."""
    disk.write_sectors(8, pattern(8, 4))
    m = irq_machine(machine_factory, [disk])
    m.ata.timeout_ms = SHORT_TIMEOUT_MS
    m.mask_irq(14)
    before = m.ata.irq_counts()
    t0 = time.monotonic()
    with pytest.raises(AtaError) as e:
        m.ata.read(0, 8, 4)
    took = time.monotonic() - t0
    err = e.value
    assert err.code is AtaCode.TIMEOUT and err.phase == AtaPhase.IRQ
    assert "no interrupt came" in str(err)
    assert err.status == 0x50, "the drive finished: only its interrupt went missing"
    assert SHORT_TIMEOUT_MS / 1000 <= took < 5, f"the wait was not bounded by timeout_ms: {took:.2f} s"
    assert delta(m, before) == {14: IrqCounts(0, 0, 1, 0)}
    pic = m.call("irq_pic_regs")  # IRR master | IRR slave << 8 | ISR master << 16 | ISR slave << 24
    assert pic is not None and pic >> 8 & 0xFF == 1 << 6, f"IRQ 14 pending in the slave's IRR: {pic:#x}"
    imr = [m.call("harness_inb", port) for port in (0x21, 0xA1)]  # the 8259s' mask registers
    assert imr[0] == 0xFF & ~(1 << 2), (
        "the master masks every line but the cascade (the tick: only in a wait)"
    )
    assert imr[1] == 0x3F | 1 << 6, "the slave masks every line but 15 (and 14, masked above)"
    m.call("irq_mask", 16)  # no such line: the guest changes nothing
    assert [m.call("harness_inb", port) for port in (0x21, 0xA1)] == imr
    m.unmask_irq(14)
    before = m.ata.irq_counts()
    m.ata.reset_channel(0)
    got = delta(m, before)[14]
    assert got.unclaimed == 1, "the interrupt left pending in the 8259 is taken, and claimed by nothing"
    assert m.ata.read(0, 8, 4) == pattern(8, 4)
    m.ata.write(0, 8, pattern(9, 4), mode="pio")
    assert disk.read_sectors(8, 4) == pattern(9, 4)


@pytest.mark.parametrize("mode", ["dma", "pio", "identify"])
def test_interrupt_pending_at_unmask_is_not_the_next_completion(
    machine_factory: MachineFactory, disk: DiskImage, mode: str
) -> None:
    """The interrupt a masked line kept pending is taken as soon as the line is open again:
    it is counted as unclaimed, and the next command still waits for its own interrupt (no
    SRST in between: the drive is idle, its INTRQ still asserted). IDENTIFY has its data ready
    before the driver first sleeps (QEMU answers it at the Command write): taken only in the
    wait, the old interrupt would pass for the new one, and the new one, raised while INTRQ is
    still asserted, would make no edge at the 8259 (one interrupt taken, none unclaimed)."""
    disk.write_sectors(100, pattern(100, 40))
    m = irq_machine(machine_factory, [disk])
    m.ata.timeout_ms = SHORT_TIMEOUT_MS
    m.mask_irq(14)
    with pytest.raises(AtaError) as e:
        m.ata.flush(0)
    assert e.value.phase == AtaPhase.IRQ
    m.unmask_irq(14)
    before = m.ata.irq_counts()
    if mode == "identify":
        assert m.ata.identify(0).sectors == disk.sectors
    else:
        assert m.ata.read(0, 100, 40, mode=mode) == pattern(100, 40)
    own = {"dma": 1, "pio": blocks(40), "identify": 1}[mode]
    assert delta(m, before) == {14: IrqCounts(own + 1, 0, 0, 1)}


def test_spurious_irq_7_and_15_are_counted_not_acknowledged(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """Vector 15 with the slave 8259's in-service bit clear (and 7 with the master's) is a
    spurious interrupt: counted, no Status read on the secondary channel, not taken as real.
    QEMU's 8259 never raises one by itself: the guest's selftest_spurious executes the vector."""
    m = irq_machine(machine_factory, {2: disk})
    before = m.ata.irq_counts()
    with m.device_trace(data=False) as dev:
        m.call("selftest_spurious", 15)
        m.call("selftest_spurious", 7)
    assert delta(m, before) == {7: IrqCounts(0, 1, 0, 0), 15: IrqCounts(0, 1, 0, 0)}
    reads = [e for e in dev.events if e.direction == "in"]
    assert not reads, f"a spurious interrupt touched the IDE registers: {reads[:3]}"
    m.ata.write(2, 3, pattern(3, 2))  # the controllers still deliver the real ones
    assert m.ata.read(2, 3, 2) == pattern(3, 2)
    assert delta(m, before)[15] == IrqCounts(2, 1, 0, 0)


@pytest.mark.parametrize(("op", "mode"), [("read", "dma"), ("write", "pio")])
def test_held_request_in_irq_mode(
    machine_factory: MachineFactory, disk: DiskImage, op: str, mode: str
) -> None:
    """A request held in QEMU's block layer: no interrupt comes while the drive is busy:
    TIMEOUT in phase irq with BSY still set; the channel recovers with SRST."""
    disk.write_sectors(5, pattern(5, 1))
    m = irq_machine(machine_factory, [disk], faults={0: []})
    m.ata.timeout_ms = SHORT_TIMEOUT_MS
    m.hold_io(0, op)
    before = m.ata.irq_counts()
    with pytest.raises(AtaError) as e:
        if op == "read":
            m.ata.read(0, 5, 1, mode=mode)
        else:
            m.ata.write(0, 5, pattern(6, 1), mode=mode)
    assert e.value.code is AtaCode.TIMEOUT and e.value.phase == AtaPhase.IRQ
    assert e.value.status & 0x88, "BSY or DRQ still set: the drive never finished"
    assert delta(m, before)[14].lost == 1
    m.ata.reset_channel(0)
    assert m.ata.read(0, 5, 1, mode=mode) == (pattern(5, 1) if op == "read" else pattern(6, 1))


@pytest.mark.piix3_protocol(False)  # the PRD table is cut short on purpose
@pytest.mark.parametrize("completion", ["irq", "poll"])
def test_prd_table_shorter_than_the_transfer(
    machine_factory: MachineFactory, disk: DiskImage, completion: str
) -> None:
    """QEMU completes a DMA whose PRD table runs out: ACTIVE clears, the drive shows 0x50, no
    interrupt. In irq mode that is the Bus Master IDE interface's "Interrupt 0, Active 0": an
    error. In poll mode (nIEN set, INTR never set by QEMU) it cannot be told from success."""
    disk.write_sectors(40, pattern(40, 8))
    m = machine_factory(disks=[disk], completion=completion, transport="gdb")  # a port breakpoint
    prd = m.evaluate_int("(unsigned)&prd_table")
    assert m.ata.read(0, 0, 8) == bytes(8 * SECTOR)  # the mode in place; zeros in the buffer
    with m.break_on_port("bmdma-primary", direction="out", value=0x09):  # START, device to memory
        pending = m.ata.begin_read(0, 40, 8)
        stop = m.cont()
        assert stop.access is not None
    entry = m.read_memory(prd, 8)
    assert int.from_bytes(entry[4:], "little") == 0x80000000 | 8 * SECTOR  # one entry, EOT
    m.write_memory(prd + 4, (0x80000000 | SECTOR).to_bytes(4, "little"))  # one sector of eight
    if completion == "poll":
        data = pending.finish()
        assert data == bytes(8 * SECTOR), "nothing moved, and the driver reported success"
        return
    with pytest.raises(AtaError) as e:
        pending.finish()
    assert e.value.code is AtaCode.DMA
    assert "PRD table was shorter than the transfer" in str(e.value)
    m.console.expect_exact("bus master inactive without INTR")
    assert m.ata.read(0, 40, 8) == pattern(40, 8)


def test_unexpected_exception_is_logged_and_parks(machine_factory: MachineFactory, disk: DiskImage) -> None:
    """An exception the guest does not expect (#UD here) is logged with its vector and
    registers and parks the CPU: a hung call with its cause on the console, not a reset."""
    m = irq_machine(machine_factory, [disk])
    boots = m.boots
    with pytest.raises(HarnessError) as e:
        m.call("selftest_exception", timeout=2)
    assert "did not finish" in str(e.value)
    m.console.expect_exact("exception 6 (#UD invalid opcode) error 00000000 at eip")
    m.console.expect(r"eax [0-9a-f]{8} ebx [0-9a-f]{8} .* esp [0-9a-f]{8}")
    assert m.evaluate_int("irq_exception.vector") == 6
    assert m.boots == boots and m.qemu is not None
    m.ata.write(0, 1, pattern(1, 1))  # and the machine goes on
    assert m.ata.read(0, 1, 1) == pattern(1, 1)
