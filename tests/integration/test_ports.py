"""Every port access, seen twice: GDB breakpoints on the driver's in/out instructions and QEMU's
own IDE trace. Expected sequences per operation, port breakpoints, and no trace left behind."""

from __future__ import annotations

import functools
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import AtaCode, AtaError, DiskImage, GdbError, HarnessError, Machine
from harness.abi import Op, Request
from harness.portio.access import PortAccess, PortError
from harness.portio.compare import compare, normalize
from harness.portio.devtrace import DeviceAction
from harness.pytest_plugin import MachineFactory
from harness.regs import AtaMode

pytestmark = pytest.mark.qemu

SECTOR = 512
STATUS_PORTS = (0x1F7, 0x3F6)
PORT_INSN = re.compile(r"\s(?:rep[a-z]*\s+)?(?:in|out)[bwl]?\s|\s(?:rep[a-z]*\s+)?(?:ins|outs)[bwld]\s")


def pattern(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(i.to_bytes(4, "little") + rng.randbytes(SECTOR - 4) for i in range(count))


def recorded(m: Machine, action: Callable[[], Any]) -> tuple[list[PortAccess], list[DeviceAction]]:
    """Run action with both records on; they must agree. The driver side, normalized, and the
    device's own actions."""
    ide = m.ports.port_map().ranges(["ide"])
    with m.device_trace() as dev, m.watch_ports() as io:
        action()
    result = compare(io.events, dev.events, ports=ide)
    assert result.ok, f"driver and device records differ:\n{result.render()}"
    assert io.events, "nothing was recorded"
    return normalize(io.events), dev.actions


def task_file(events: list[PortAccess]) -> list[tuple[int, int]]:
    """(port, value) of every register write but the bus master's and device control's."""
    return [
        (e.port, e.value)
        for e in events
        if e.direction == "out" and e.value is not None and 0x1F1 <= e.port <= 0x1F7
    ]


def check_status_flow(events: list[PortAccess], data_index: int | None) -> None:
    """Before a PIO data block the last status says DRQ; the command ends with Status 0x50."""
    if data_index is not None:
        before = events[data_index - 1]
        assert before.port in STATUS_PORTS and before.value is not None and before.value & 0x08, before
    last = events[-1]
    assert (last.direction, last.port, last.value, last.decoded) == ("in", 0x1F7, 0x50, "DSC|DRDY")


def sectors_moved(actions: list[DeviceAction], op: str) -> list[int]:
    """The LBAs QEMU read or wrote (ide_sector_read/write), in order."""
    lbas: list[int] = []
    for a in actions:
        if a.event == f"ide_sector_{op}":
            m = re.fullmatch(r"sector=(\d+) nsectors=(\d+)", a.detail)
            assert m is not None, a
            lbas += range(int(m.group(1)), int(m.group(1)) + int(m.group(2)))
    return lbas


def multiple(m: Machine, drive: int = 0) -> int:
    return m.evaluate_int(f"ata_drives[{drive}].multiple")


def test_every_port_instruction_in_the_kernel_is_found(machine: Machine) -> None:
    """GDB's disassembly (the agent) finds what objdump finds, in every executable section."""
    sites = machine.ports.call("scan")["sites"]
    dump = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(machine.config.kernel)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    expected = {int(line.split(":")[0], 16) for line in dump.splitlines() if PORT_INSN.search(line)}
    assert {s["addr"] for s in sites} == expected
    assert len(expected) > 50, "the driver's port helpers are inlined all over"
    reps = [s for s in sites if s["rep"]]
    assert reps and all(s["entry"] == s["addr"] - 1 for s in reps), "rep ins/outs are entered at their cld"


@pytest.mark.piix3_completion("poll")  # the polled driver's exact port sequence
def test_identify_sequence(machine: Machine) -> None:
    m = machine
    events, actions = recorded(m, lambda: m.ata.identify(0))
    assert task_file(events) == [
        (0x1F6, 0xE0),
        (0x1F1, 0),
        (0x1F2, 0),
        (0x1F3, 0),
        (0x1F4, 0),
        (0x1F5, 0),
        (0x1F7, 0xEC),
    ]
    assert [e.decoded for e in events if e.port == 0x1F7 and e.direction == "out"] == ["IDENTIFY DEVICE"]
    (data,) = [(i, e) for i, e in enumerate(events) if e.port == 0x1F0]
    index, block = data
    assert (block.direction, block.width, block.count) == ("in", 4, 128)
    assert block.data == m.read_memory(m.symbol("xfer_buf"), SECTOR), "the words read are the IDENTIFY data"
    assert "identify_into" in block.where
    check_status_flow(events, index)
    assert [a.short() for a in actions] == ["exec cmd 0xec (IDENTIFY DEVICE)"]


def test_pio_read_and_write_sequences(machine: Machine, disk: DiskImage) -> None:
    """READ/WRITE MULTIPLE (0xC4/0xC5, one DRQ block per 16 sectors), then, with the driver's
    multiple mode turned off, READ/WRITE SECTORS (0x20/0x30, one block per sector)."""
    m = machine
    block = multiple(m)
    assert block > 1, "QEMU's disk offers READ/WRITE MULTIPLE; the driver turns it on"
    for multiple_mode, (read_cmd, write_cmd) in ((True, (0xC4, 0xC5)), (False, (0x20, 0x30))):
        if not multiple_mode:
            m.evaluate_int("ata_drives[0].multiple = 0")
            block = 1
        count = 2 * block + 1 if multiple_mode else 3
        lba = 300 if multiple_mode else 600
        data = pattern(lba, count)
        disk.write_sectors(lba, data)
        for op, command in (("read", read_cmd), ("write", write_cmd)):
            new = pattern(lba + 1, count)
            action: Callable[[], Any]
            if op == "read":
                action = functools.partial(m.ata.read, 0, lba, count, mode="pio")
            else:
                action = functools.partial(m.ata.write, 0, lba, new, mode="pio")
            events, actions = recorded(m, action)
            what = f"PIO {op}, multiple mode {'on' if multiple_mode else 'off'}"
            assert task_file(events) == [
                (0x1F6, 0xE0),
                (0x1F1, 0),
                (0x1F2, count),
                (0x1F3, lba & 0xFF),
                (0x1F4, lba >> 8),
                (0x1F5, 0),
                (0x1F7, command),
            ], what
            blocks = [(i, e) for i, e in enumerate(events) if e.port == 0x1F0]
            assert [e.direction for _, e in blocks] == ["in" if op == "read" else "out"] * len(blocks), what
            assert [e.count for _, e in blocks] == [
                min(block, count - k) * 128 for k in range(0, count, block)
            ]
            assert b"".join(e.data or b"" for _, e in blocks) == (data if op == "read" else new), what
            for index, _ in blocks:
                check_status_flow(events[: index + 1] + events[-1:], index)
            assert actions[0].short().startswith(f"exec cmd {command:#04x}"), what
            assert sectors_moved(actions, op) == list(range(lba, lba + count)), what
        assert disk.read_sectors(lba, count) == pattern(lba + 1, count)


@pytest.mark.piix3_completion("poll")  # the polled driver's exact port sequence
def test_flush_sequence(machine: Machine) -> None:
    m = machine
    command = 0xEA if m.ata.identify(0).flush_cache_ext else 0xE7
    events, actions = recorded(m, lambda: m.ata.flush(0))
    assert task_file(events)[-1] == (0x1F7, command)
    assert [e for e in events if e.port == 0x1F0] == [], "FLUSH moves no data"
    check_status_flow(events, None)
    assert [a.short() for a in actions] == [
        f"exec cmd {command:#04x} (FLUSH CACHE{' EXT' if command == 0xEA else ''})"
    ]


@pytest.mark.piix3_completion("poll")  # the polled driver's exact port sequence
@pytest.mark.parametrize("direction", ["write", "read"])
def test_dma_sequence(machine: Machine, disk: DiskImage, direction: str) -> None:
    """The bus master: stop, clear ERR|INTR, PRD table address, direction; then the command,
    START, poll until ACTIVE clears, stop; and the PRD table describes the buffer."""
    m = machine
    data = pattern(3 if direction == "write" else 33, 2)
    if direction == "write":
        events, actions = recorded(m, lambda: m.ata.write(0, 40, data, mode="dma"))
    else:
        disk.write_sectors(40, data)
        events, actions = recorded(m, lambda: m.ata.read(0, 40, 2, mode="dma"))
    bm = m.ports.port_map().bm_base
    read_bit = 0x08 if direction == "read" else 0x00
    command = 0xC8 if direction == "read" else 0xCA
    bm_writes = [(e.port - bm, e.value) for e in events if e.direction == "out" and bm <= e.port < bm + 8]
    prd = next(v for off, v in bm_writes if off == 4)
    assert bm_writes == [
        (0, 0x00),
        (2, bm_writes[1][1]),
        (4, prd),
        (0, read_bit),
        (0, read_bit | 0x01),
        (0, read_bit),
    ]
    assert bm_writes[1][1] is not None and bm_writes[1][1] & 0x06 == 0x06, (
        "ERR and INTR written 1 to clear them"
    )
    assert [e.width for e in events if e.port == bm + 4] == [4]
    assert prd is not None
    entry = m.read_memory(prd, 8)
    assert int.from_bytes(entry[:4], "little") == m.symbol("xfer_buf")
    assert int.from_bytes(entry[4:], "little") == 0x80000000 | 2 * SECTOR, "one entry, EOT, 1 KiB"
    assert task_file(events)[-1] == (0x1F7, command)
    order = [e.register.split(" ", 1)[1] for e in events if e.direction == "out"]
    assert order.index("Command") < order.index("BM Command", order.index("BM PRD") + 2), (
        "START after the command"
    )
    start = next(i for i, e in enumerate(events) if e.port == bm and e.value == read_bit | 0x01)
    polls = [e for e in events[start:] if e.port == bm + 2]
    assert polls and polls[-1].value is not None and not polls[-1].value & 0x01, "polled until ACTIVE cleared"
    check_status_flow(events, None)
    assert [e for e in events if e.port == 0x1F0] == [], "DMA moves no data through the data port"
    assert any(a.event == "ide_dma_cb" for a in actions)
    if direction == "read":
        assert m.read_memory(m.symbol("xfer_buf"), 2 * SECTOR) == data
    else:
        assert disk.read_sectors(40, 2) == data


def test_port_breakpoint_stops_once_per_pio_write(machine: Machine) -> None:
    """A breakpoint on 0x1F7 out WRITE command stops exactly once per PIO write, however many
    DRQ blocks it has. With multiple mode the driver writes 0xC5; with it off, 0x30."""
    m = machine
    buf = m.symbol("xfer_buf")
    block = multiple(m)
    assert block > 1, "QEMU's disk offers READ/WRITE MULTIPLE; the driver turns it on"

    def pio_write(lba: int, count: int, seed: int) -> bytes:
        data = pattern(seed, count)
        m.write_memory(buf, data)
        m.post(Request(Op.WRITE, drive=0, lba=lba, count=count, buf=buf, mode=AtaMode.PIO))
        return data

    for command, name in ((0xC5, "WRITE MULTIPLE"), (0x30, "WRITE SECTORS")):
        if command == 0x30:
            m.evaluate_int("ata_drives[0].multiple = 0")
        with m.break_on_port(0x1F7, direction="out", value=command) as bp:
            written = {}
            for lba, count in ((10, 1), (20, 2 * block + 1 if command == 0xC5 else 3)):
                written[lba] = pio_write(lba, count, lba)
                stop = m.cont()
                assert not stop.parked and stop.access is not None, stop
                assert (stop.access.port, stop.access.value, stop.access.decoded) == (0x1F7, command, name)
                assert (
                    stop.function == "send_cmd" and stop.line is not None and stop.reason == "port-breakpoint"
                )
                assert m.cont().parked, "one stop per write: the next continue finishes it"
            m.ata.write(0, 200, pattern(9, 2), mode="dma")  # 0xCA: no stop
            m.ata.read(0, 10, 1, mode="pio")  # a read: no stop
        assert bp.hits == 2 and len(bp.events) == 2
        assert not bp.active
        for lba, data in written.items():
            assert m.ata.read(0, lba, len(data) // SECTOR) == data


@pytest.mark.piix3_completion("poll")  # one Status read per FLUSH (irq: the handler's too)
def test_port_breakpoint_on_a_read_reports_the_value(machine: Machine) -> None:
    m = machine
    with m.break_on_port("primary", direction="in") as bp:
        m.post(Request(Op.FLUSH, drive=0))
        stop = m.cont()
        assert stop.access is not None and stop.access.direction == "in"
        assert stop.access.port == 0x1F7 and stop.access.value == 0x50 and stop.access.decoded == "DSC|DRDY"
        assert m.evaluate_int("$eax & 0xff") == 0x50, "an `in` stops right after it, the value in al"
        assert m.cont().parked
    assert bp.hits == 1


def test_recording_does_not_change_the_bytes(machine: Machine, disk: DiskImage) -> None:
    m = machine
    plain = {"pio": pattern(4, 17), "dma": pattern(5, 17)}
    watched = {"pio": pattern(6, 17), "dma": pattern(7, 17)}
    for mode in ("pio", "dma"):
        m.ata.write(0, 100 if mode == "pio" else 200, plain[mode], mode=mode)
        with m.watch_ports() as io:
            m.ata.write(0, 300 if mode == "pio" else 400, watched[mode], mode=mode)
            seen = m.ata.read(0, 100 if mode == "pio" else 200, 17, mode=mode)
        assert seen == plain[mode], f"{mode} read under watch"
        if mode == "pio":
            moved = [e for e in io.events if e.port == 0x1F0]
            assert b"".join(e.data or b"" for e in moved if e.direction == "out") == watched[mode]
            assert b"".join(e.data or b"" for e in moved if e.direction == "in") == plain[mode]
    m.ata.flush(0)
    for mode in ("pio", "dma"):
        assert m.ata.read(0, 300 if mode == "pio" else 400, 17, mode=mode) == watched[mode]
        assert disk.read_sectors(100 if mode == "pio" else 200, 17) == plain[mode]
        assert disk.read_sectors(300 if mode == "pio" else 400, 17) == watched[mode]


def _breakpoints(m: Machine) -> tuple[list[str], int]:
    """The user-visible breakpoint numbers (-break-list) and the count of internal ones."""
    assert m.gdb is not None
    body = m.gdb.command("-break-list").payload["BreakpointTable"]["body"]
    maint = "".join(m.gdb.command('-interpreter-exec console "maint info breakpoints"').console)
    internal = len(re.findall(r"^-\d+\s", maint, flags=re.MULTILINE))
    return [b["number"] for b in body], internal


def test_no_breakpoint_remains_after_the_watch(machine: Machine) -> None:
    m = machine
    assert _breakpoints(m) == (["1"], 0)
    with m.watch_ports("primary", 0x3F6):
        idle = _breakpoints(m)
        m.ata.flush(0)  # the guest runs: now the watch is armed
        during = _breakpoints(m)
    assert idle == (["1"], 0), "an idle watch inserts nothing until the guest runs"
    assert during[0] == ["1"] and during[1] > 50, (
        "while active: internal breakpoints on the port instructions"
    )
    assert _breakpoints(m) == (["1"], 0)
    with pytest.raises(RuntimeError), m.watch_ports():
        m.ata.identify(0)
        raise RuntimeError("a test failing inside the watch")
    assert _breakpoints(m) == (["1"], 0), "an exception inside the watch leaves nothing behind"
    bp = m.break_on_port(0x1F7)
    assert _breakpoints(m)[1] > 50
    bp.delete()
    bp.delete()  # twice is fine
    assert _breakpoints(m) == (["1"], 0)
    assert m.ports.status()["breakpoints"] == 0
    m.ata.write(0, 1, pattern(8, 1), mode="pio")  # and the guest runs as before


@pytest.mark.piix3_completion("poll")  # the polled driver's exact port sequence
def test_watch_filters_ports_and_nests(machine: Machine) -> None:
    m = machine
    with m.watch_ports("primary-ctrl") as ctrl, m.watch_ports(0x1F7) as cmd:
        m.ata.flush(0)
        live = cmd.fetch()
    assert ctrl.events and {e.port for e in ctrl.events} == {0x3F6}
    assert {e.port for e in cmd.events} == {0x1F7} and cmd.events == live
    assert [e.direction for e in cmd.events] == ["out", "in"]
    with pytest.raises(PortError, match="unknown port"):
        m.watch_ports("tertiary")
    with m.watch_ports("primary", capture=600) as small:  # a budget for the bytes kept
        m.ata.write(0, 50, pattern(10, 2), mode="pio")
        m.ata.read(0, 50, 2, mode="pio")
    moved = [e for e in small.events if e.port == 0x1F0]
    assert [(e.direction, e.count) for e in moved] == [("out", 256), ("in", 256)]
    assert moved[0].data == pattern(10, 2)[:600] and moved[1].data is None


def test_piix3_trace_prints_both_sides(tmp_path: Path) -> None:
    image = tmp_path / "trace.img"
    DiskImage.create(image, size_mib=8)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "trace",
            "--image",
            str(image),
            "--mode",
            "pio",
            "write",
            "5",
            "hello",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "driver side (GDB breakpoints)" in text and "device side (QEMU trace)" in text
    (command,) = [line for line in text.splitlines() if "Command: WRITE MULTIPLE" in line]
    assert command.count("Command: WRITE MULTIPLE") == 2 and "send_cmd (ata.c:" in command
    assert "records agree" in text and "~ sector write LBA 5 +1" in text
    assert DiskImage(image).read_sectors(5, 1) == b"hello".ljust(SECTOR, b"\0")


@pytest.mark.parametrize("reboot", ["power_cycle", "crash"])
def test_device_trace_spans_reboots(machine_factory: MachineFactory, disk: DiskImage, reboot: str) -> None:
    """What the first QEMU logged is kept; the next one is traced from its first instruction
    (firmware and driver init included); `resets` says where the new process began."""
    m = machine_factory(disks=[disk])
    with m.device_trace() as dev:
        m.ata.flush(0)
        getattr(m, reboot)()
        m.ata.flush(0)
    assert dev.unparsed == []
    assert len(dev.resets) == 1
    before, after = dev.events[: dev.resets[0]], dev.events[dev.resets[0] :]
    flushes = [e for e in dev.events if "FLUSH CACHE" in e.decoded]
    assert len(flushes) == 2 and flushes[0] in before and flushes[1] in after
    assert any("IDENTIFY DEVICE" in e.decoded for e in after), "the boot's detection is in the trace"
    with m.device_trace() as dev2:
        m.ata.flush(0)
    assert dev2.resets == [] and sum("FLUSH CACHE" in e.decoded for e in dev2.events) == 1


def test_a_device_record_reads_at_most_its_limit(
    machine_factory: MachineFactory, disk: DiskImage, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver stuck polling logs hundreds of MB a second until its call times out: a record
    reads at most `limit` bytes of each QEMU's log (the one that went at a power cycle, and the
    one running) and says how much it left, instead of reading it all (a mutant's stuck loop
    once made a pytest worker take 23 GB and be killed)."""
    m = machine_factory(disks=[disk])
    m.ata.read(0, 0, 16, mode="pio")  # the first command sets the channel's nIEN for its mode
    with m.device_trace() as whole:
        m.ata.read(0, 0, 16, mode="pio")
    with m.device_trace() as cut:
        cut.limit = 2048
        m.ata.read(0, 0, 16, mode="pio")
        m.power_cycle()
        m.ata.read(0, 0, 16, mode="pio")
    assert whole.truncated == 0
    assert cut.truncated > 2 * 16 * 256 * 60, "both logs were cut (16 sectors of data words each)"
    assert len(cut.resets) == 1 and 0 < cut.resets[0] < len(cut.events) < len(whole.events)
    assert cut.events[0].key() == whole.events[0].key(), "the record is the log's beginning"
    assert caplog.text.count("left unread") == 2


@pytest.mark.piix3_completion("poll")  # the polled driver's exact port sequence
def test_a_recording_failure_is_reported_not_hidden(machine: Machine) -> None:
    """A breakpoint hit the agent could not record lets the guest go on, and the watch says
    the record is incomplete instead of returning a silently short one."""
    m = machine
    assert m.gdb is not None
    m.ports.status()  # the agent is loaded
    broken = "python PIIX3_PORTS_AGENT.where_cache.clear(); PIIX3_PORTS_AGENT._where = lambda pc: 1 // 0"
    try:
        with pytest.raises(PortError, match="record is incomplete.*ZeroDivisionError"), m.watch_ports(0x1F7):
            m.gdb.command(f'-interpreter-exec console "{broken}"')
            m.ata.flush(0)  # still completes
    finally:
        m.gdb.command('-interpreter-exec console "python del PIIX3_PORTS_AGENT._where"')
    assert _breakpoints(m) == (["1"], 0)
    with m.watch_ports(0x1F7) as io:
        m.ata.flush(0)
    assert [e.direction for e in io.events] == ["out", "in"]


def test_begin_write_steps_through_a_port_breakpoint(machine: Machine) -> None:
    """The user-level flow: begin a call, stop inside it at a port access, finish it."""
    m = machine
    data = pattern(11, 3)
    with m.break_on_port(0x1F7, direction="out", value=0xCA):  # WRITE DMA
        call = m.ata.begin_write(0, 70, data, mode="dma")
        stop = m.cont()
        assert not stop.parked and stop.access is not None and stop.access.decoded == "WRITE DMA"
        assert call.finish() is None
    assert m.parked
    pending = m.ata.begin_read(0, 70, 3, mode="pio")
    assert pending.finish() == data
    bad = m.ata.begin_read(0, 1 << 40, 1)
    with pytest.raises(AtaError) as e:
        bad.finish()
    assert e.value.code is AtaCode.RANGE


def test_no_new_call_while_one_is_stopped_midway(machine: Machine) -> None:
    """A call stopped at a breakpoint must be finished before another is posted: otherwise the
    guest would finish the old one and the new one would read its stale result."""
    m = machine
    bp = m.break_on_port(0x1F7, direction="out", value=0xEA)  # FLUSH CACHE EXT
    m.ata.write(0, 5, pattern(12, 1))
    with pytest.raises(GdbError):
        m.ata.flush(0)  # stops at the breakpoint, not at harness_ready
    bp.delete()
    with pytest.raises(HarnessError, match="not parked"):
        m.ata.read(0, 5, 1)
    assert m.cont().parked
    assert m.ata.read(0, 5, 1) == pattern(12, 1)


def test_a_watch_entered_before_a_reset_sees_the_boot(machine: Machine) -> None:
    with machine.watch_ports("primary") as io:
        machine.reset()
    commands = [e.value for e in io.events if e.port == 0x1F7 and e.direction == "out"]
    assert 0xEC in commands, "the driver's IDENTIFY at boot was recorded"
