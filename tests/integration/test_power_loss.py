"""Power loss with a volatile write cache: what a drive promises, what the model keeps, on the
host image and through the driver after the reboot; the crash states a power loss could leave;
and flush faults and holds acting on the guest's own FLUSH command."""

from __future__ import annotations

import pytest

from harness import AtaCode, AtaError, DiskImage, Fault, HarnessError, Machine, UsageError, message
from harness.abi import Op, Request
from harness.powerloss import CrashState
from harness.pytest_plugin import MachineFactory
from harness.regs import AtaMode, AtaPhase

pytestmark = pytest.mark.qemu
SECTOR = 512
PIECE = 8  # sectors in a 4 KiB piece


def pattern(seed: int, count: int) -> bytes:
    """count sectors, each one different and none all-zero."""
    return b"".join(bytes([seed & 0xFF, i & 0xFF, 0x5A, 0xA5]) * (SECTOR // 4) for i in range(count))


def sectors(data: bytes) -> list[bytes]:
    return [data[i : i + SECTOR] for i in range(0, len(data), SECTOR)]


# --- what survives a power loss ---------------------------------------------------------------
@pytest.mark.parametrize("unflushed", ["drop", "keep"])
def test_only_flushed_writes_survive_drop_and_keep_keeps_all(
    machine_factory: MachineFactory, disk: DiskImage, unflushed: str
) -> None:
    """Write A, flush, write B (over A's first sector and beside it), pull the plug.

    Catches: writes reaching the image without a flush (B there after "drop"); a model that
    forgets the flush (A gone); one that restores zeros instead of the durable A where B
    overwrote it; a power loss that changes the host image but not what the driver reads
    after the reboot, or the other way round; "keep" losing anything."""
    m = machine_factory(disks=[disk], write_cache="volatile")
    a, b = pattern(1, 2), pattern(2, 2)
    m.ata.write(0, 100, a)
    m.ata.flush(0)
    m.ata.write(0, 101, b)  # sector 101 over A's second sector, 102 beside it
    assert disk.read_sectors(100, 3) == bytes(3 * SECTOR), "the image changed before any power loss"
    loss = m.power_loss(unflushed)
    drive = loss.drives[0]
    assert (drive.writes, drive.durable) == (2, 1)
    want = a[:SECTOR] + b if unflushed == "keep" else a + bytes(SECTOR)
    assert disk.read_sectors(100, 3) == want, "host image"
    assert m.ata.read(0, 100, 3) == want, "through the driver after the reboot"
    assert loss.old_pid != loss.new_pid and m.qemu is not None and m.qemu.pid == loss.new_pid


def test_a_disabled_write_cache_makes_every_write_durable(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """With the cache disabled (SET FEATURES 82h) QEMU writes FUA: B survives "drop". Enabled
    again, C does not. Catches a model that ignores the cache setting, or keeps treating the
    cache as off once it has been."""
    m = machine_factory(disks=[disk], write_cache="volatile")
    a, b, c = pattern(1, 1), pattern(2, 1), pattern(3, 1)
    m.ata.write(0, 10, a)  # cached until the disable flushes it
    m.ata.set_write_cache(0, False)
    m.ata.write(0, 11, b)
    m.ata.set_write_cache(0, True)
    m.ata.write(0, 12, c)
    assert [w.lba for w in m.unflushed_writes(0)] == [12]
    m.power_loss("drop")
    assert disk.read_sectors(10, 3) == a + b + bytes(SECTOR)
    assert m.ata.read(0, 10, 3) == a + b + bytes(SECTOR)


def test_a_flush_from_guest_code_counts_too(machine_factory: MachineFactory, disk: DiskImage) -> None:
    """A FLUSH the guest sends outside the mailbox (a GDB inferior call into the driver) is seen
    by the device's own count. Catches a model that only believes m.ata.flush()."""
    m = machine_factory(disks=[disk], write_cache="volatile")
    m.ata.write(0, 7, pattern(7, 1))
    assert m.call("ata_flush", 0) == 0
    assert m.unflushed_writes(0) == []
    m.power_loss("drop")
    assert disk.read_sectors(7, 1) == pattern(7, 1)


def test_reset_crash_power_cycle_and_close_keep_the_cache(tmp_path: object, disk: DiskImage) -> None:
    """Only power_loss() loses anything: a reset keeps the drive powered, a crash of QEMU
    leaves the drive its cache, power_cycle() and close() are orderly power-offs. Catches a
    settle that drops on those paths, or a new QEMU that truncates the log before it is settled."""
    m = Machine(disks=[disk], write_cache="volatile")
    with m:
        m.ata.write(0, 1, pattern(1, 1))
        m.reset()
        assert m.ata.read(0, 1, 1) == pattern(1, 1)
        m.crash()
        assert disk.read_sectors(1, 1) == pattern(1, 1)
        m.ata.write(0, 2, pattern(2, 1))
        m.power_cycle()
        assert disk.read_sectors(2, 1) == pattern(2, 1)
        m.ata.write(0, 3, pattern(3, 1))
        assert disk.read_sectors(3, 1) == bytes(SECTOR)  # still only in the cache
    assert disk.read_sectors(1, 3) == pattern(1, 1) + pattern(2, 1) + pattern(3, 1)


@pytest.mark.piix3_protocol(False)  # the plug is pulled in the middle of a command
@pytest.mark.parametrize("mode", ["dma", "pio"])
def test_power_loss_inside_a_multi_sector_write_leaves_pieces_of_it(
    machine_factory: MachineFactory, disk: DiskImage, mode: str
) -> None:
    """Stopped at a port breakpoint inside a 40-sector write (5 pieces; WRITE MULTIPLE moves
    16-sector blocks), the plug is pulled. Every sector of the image is then the old data or
    the new, never anything else; whole 4 KiB pieces go together; the pieces that survived are
    the ones the power loss reports; with "keep" what QEMU had written is there, in PIO a
    prefix of whole blocks. Catches data taken from the wrong place in the log, pieces cut
    wrong, a dropped piece applied anyway."""
    lba, count = 64, 40
    old = pattern(0xE0, count)
    disk.write_sectors(lba, old)
    m = machine_factory(disks=[disk], write_cache="volatile")
    at = AtaMode.DMA if mode == "dma" else AtaMode.PIO
    rounds = [("keep", None), *(("random", seed) for seed in (1, 2, 3))]
    for n, (unflushed, seed) in enumerate(rounds):
        new = pattern(n + 1, count)
        m.post(Request(Op.WRITE, drive=0, lba=lba, count=count, buf=m.symbol("xfer_buf"), mode=at), new)
        if mode == "dma":  # at START (before the device sees it), then the next bus-master read
            with m.break_on_port("bmdma-primary", direction="out", value=0x01):
                stop = m.cont()
            with m.break_on_port("bmdma-primary", direction="in"):
                stop = m.cont()
        else:  # before the third 16-sector block goes out: two are written
            with m.break_on_port(0x1F0, direction="out"):
                for _ in range(3):
                    stop = m.cont()
        assert not stop.parked and stop.access is not None, f"the write finished first ({stop})"
        before = disk.read_sectors(lba, count)
        loss = m.power_loss(unflushed, seed=seed)
        got = disk.read_sectors(lba, count)
        kept = {p.lba for p in loss.drives[0].kept}
        for i, (g, o, w) in enumerate(zip(sectors(got), sectors(before), sectors(new), strict=True)):
            piece = (lba + i) // PIECE * PIECE
            assert g in (o, w), f"round {n}: sector {lba + i} holds bytes from nowhere"
            assert (g == w) == (max(piece, lba) in kept), f"round {n}: sector {lba + i} vs its piece"
        if unflushed == "keep":
            written = sum(1 for g, w in zip(sectors(got), sectors(new), strict=True) if g == w)
            assert written, "QEMU had written part of the command: keep keeps it"
            assert got[: written * SECTOR] == new[: written * SECTOR], "a prefix"
            if mode == "pio":
                assert written % 16 == 0 and written < count, "whole WRITE MULTIPLE blocks, not all"
        assert m.ata.read(0, lba, count) == got, f"round {n}: the driver reads the host image's state"


# --- crash states -------------------------------------------------------------------------------
def _record_violations(
    states: list[CrashState], lba: int, messages: list[str], base: int, final: int
) -> list[str]:
    """piix3 run's promise over crash states: the record is always whole and one of the records
    written; during flush epoch base + i it is messages[i] (flushed by then) or messages[i + 1]
    (written, not yet flushed); once the workload's last FLUSH has completed (epoch `final`),
    only the last one."""
    out = []
    for state in states:
        got = message.decode(state.read_sectors(lba, 1))
        i = state.epoch - base
        allowed = messages[-1:] if state.epoch == final else messages[i : i + 2]
        if got.text not in allowed:
            out.append(f"{state}: {got.text!r} ({got.reason}); allowed {allowed}")
    return out


def _workload(m: Machine, lba: int, texts: list[str], flush: bool) -> None:
    """piix3 run's write step, once per text: the record, then FLUSH CACHE (unless the seeded
    bug has dropped it)."""
    for text in texts:
        m.ata.write(0, lba, message.encode(text))
        if flush:
            m.ata.flush(0)


@pytest.mark.parametrize("flush", [True, False], ids=["correct", "flush-dropped"])
def test_crash_states_hold_piix3_runs_promise_unless_the_flush_is_dropped(
    machine_factory: MachineFactory, disk: DiskImage, flush: bool
) -> None:
    """piix3 run's record is one sector, inside one 4 KiB piece: a power loss leaves it old or
    new, never torn, and once a FLUSH has completed never older. Over every crash state of a
    workload writing it three times with a FLUSH after each, that holds; with the FLUSHes
    dropped (the seeded bug) there are states, after the workload has returned, that hold an
    older record. Catches an enumerator that misses epochs or subsets, and a model that counts
    a FLUSH that was never sent."""
    lba = 2048
    m = machine_factory(disks=[disk], write_cache="volatile")
    m.ata.write(0, lba, message.encode("the record before"))
    m.ata.flush(0)
    mark = m.crash_mark()
    texts = ["first", "second", "third"]
    _workload(m, lba, texts, flush)
    final = m.crash_mark().epochs[0]
    states = m.crash_states(0, since=mark)
    base = mark.epochs[0]
    messages = ["the record before", *texts]
    violations = _record_violations(states, lba, messages, base, final)
    seen = {message.decode(s.read_sectors(lba, 1)).text for s in states}
    assert seen == set(messages), "every record is reachable at some point"
    if flush:
        assert {s.epoch for s in states} == {base, base + 1, base + 2, final}
        assert violations == []
    else:
        assert {s.epoch for s in states} == {base}, "no FLUSH, one epoch"
        assert any("'the record before'" in v for v in violations), violations


def test_crash_states_find_a_torn_record_across_pieces(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """A record spanning two 4 KiB pieces can be torn by a power loss: some crash state holds
    a record whose CRC fails. Catches an enumerator that treats a write as all-or-nothing."""
    lba = 2048
    m = machine_factory(disks=[disk], write_cache="volatile")
    text = "x" * 5000  # 10 sectors: pieces 2048..2055 and 2056..2057
    record = message.encode(text)
    m.ata.write(0, lba, record)
    states = m.crash_states(0)
    reasons = {message.decode(s.read_sectors(lba, 10)).reason for s in states}
    assert "ok" in reasons and any("torn" in r for r in reasons)
    assert len(states) == 4  # none, first piece, second piece, both
    image = states[-1].write_image(disk.path.with_name("state.img"))
    assert image.read_sectors(lba, 10) == record
    m.power_loss("drop")
    with pytest.raises(UsageError, match="before the last power_loss"):
        states[0].read_sectors(lba, 1)


def test_power_loss_and_crash_states_refuse_bad_arguments(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    m = machine_factory(disks=[disk])
    with pytest.raises(UsageError, match="volatile"):
        m.crash_states(0)
    with pytest.raises(UsageError, match="unflushed"):
        m.power_loss("some")
    with pytest.raises(UsageError, match="seed"):
        m.power_loss("random", seed=1.5)  # type: ignore[arg-type]
    loss = m.power_loss()  # no volatile drive: every completed write is kept
    assert not loss.drives and "no drive has a volatile write cache" in str(loss)


# --- flush faults and holds act on the guest's FLUSH ---------------------------------------------
@pytest.mark.parametrize("write_cache", ["writethrough", "volatile"])
def test_a_one_shot_flush_fault_fails_the_guests_flush(
    machine_factory: MachineFactory, disk: DiskImage, write_cache: str
) -> None:
    """Fault("flush", once=True): the guest's FLUSH after a write fails with the drive's error,
    the retry succeeds. Before, QEMU's own flush at the stop after the write spent the fault.
    A failed FLUSH makes nothing durable; the one that succeeds does."""
    m = machine_factory(disks=[disk], faults={0: [Fault("flush", once=True)]}, write_cache=write_cache)
    m.ata.write(0, 5, pattern(5, 1))
    with pytest.raises(AtaError) as e:
        m.ata.flush(0)
    assert e.value.code is AtaCode.DEVICE and e.value.command == 0xEA
    assert (e.value.status, e.value.error) == (0x41, 0x04)
    if write_cache == "volatile":
        assert [w.lba for w in m.unflushed_writes(0)] == [5], "a failed FLUSH made the write durable"
    m.ata.flush(0)  # once: the retry goes through
    m.ata.flush(0)
    if write_cache == "volatile":
        assert m.unflushed_writes(0) == []
        m.power_loss("drop")
        assert disk.read_sectors(5, 1) == pattern(5, 1)


def test_a_flush_fault_fails_a_flush_with_nothing_written(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """The guest's FLUSH fails even when nothing was written since the last stop (QEMU had
    nothing left to flush, so before it never reached the fault); the fault sits on the FLUSH
    only, and the data path is untouched."""
    m = machine_factory(disks=[disk], faults={0: [Fault("flush", errno=28)]})
    for _ in range(2):
        with pytest.raises(AtaError) as e:
            m.ata.flush(0)
        assert e.value.code is AtaCode.DEVICE
    m.ata.write(0, 9, pattern(9, 1))
    assert m.ata.read(0, 9, 1) == pattern(9, 1)
    assert disk.read_sectors(0, 1) == bytes(SECTOR), "arming the fault wrote nothing"


def test_a_flush_hold_times_out_the_guests_flush(machine_factory: MachineFactory, disk: DiskImage) -> None:
    """hold_io(0, "flush") holds the guest's own FLUSH (before, it waited for a flush with data
    to write, which QEMU's stop-time flush had already done): the driver's bounded wait ends in
    TIMEOUT while the command is in progress, and a hold that caught nothing (a write under
    it) goes with its call."""
    m = machine_factory(disks=[disk], faults={0: []})
    m.ata.timeout_ms = 300
    m.ata.write(0, 4, pattern(4, 1))
    m.hold_io(0, "flush")
    with pytest.raises(AtaError) as e:
        m.ata.flush(0)
    polled = AtaPhase.COMPLETE  # BSY never cleared; in irq completion, no interrupt came
    assert e.value.code is AtaCode.TIMEOUT
    assert e.value.phase == (AtaPhase.IRQ if m.ata.completion == "irq" else polled)
    assert e.value.status & 0x80, "BSY: the drive was still flushing"
    assert not m.held
    m.ata.reset_channel(0)
    m.ata.flush(0)
    m.hold_io(0, "flush")
    m.ata.write(0, 5, pattern(5, 1))  # no FLUSH in this call: the hold ends with it
    assert not m.held
    m.ata.flush(0)
    m.hold_io(0, "flush")
    m.power_cycle()  # a hold not yet in place must not catch QEMU's flush as it quits
    assert disk.read_sectors(4, 2) == pattern(4, 1) + pattern(5, 1)


def test_volatile_needs_a_raw_image(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    qcow = DiskImage.create(tmp_path / "d.qcow2", size_mib=1)
    with pytest.raises(HarnessError, match="raw image"):
        Machine(disks=[qcow], write_cache="volatile")
