"""m.console on real QEMU: expect() follows the guest's COM1 from the first byte of a boot and
across reboots, serial.log still gets every byte, a wait is bounded and says what it saw, and
send() puts bytes into the UART's receive FIFO (the guest does not read them; the test reads
the 16550's registers itself)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import DiskImage, HarnessTimeout, Machine, UsageError
from harness.pytest_plugin import MachineFactory, SnapshotPool

pytestmark = pytest.mark.qemu
COM1_RBR = 0x3F8  # receive buffer (read)
COM1_LSR = 0x3FD  # line status
LSR_DR = 0x01  # data ready
FIFO = 16  # the 16550's receive FIFO, enabled by guest/serial.c
DRAIN_LIMIT = 5.0  # s, for the bytes of a send to pass through the FIFO


def _data_ready(m: Machine) -> bool:
    return bool((m.call("harness_inb", COM1_LSR) or 0) & LSR_DR)


def _uart_bytes(m: Machine, want: int) -> bytes:
    """Read COM1's receiver until `want` bytes came (QEMU refills the FIFO from the socket as
    it empties) or DRAIN_LIMIT passes."""
    got = bytearray()
    deadline = time.monotonic() + DRAIN_LIMIT
    while len(got) < want and time.monotonic() < deadline:
        if _data_ready(m):
            value = m.call("harness_inb", COM1_RBR)
            assert value is not None
            got.append(value)
        else:
            time.sleep(0.005)
    return bytes(got)


def test_console_sees_a_boot_from_its_first_line_and_follows_reboots(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    m = machine_factory(disks=[disk])
    m.console.expect(r"\r\npiix3-harness guest: booting\r\n", timeout=5)  # the guest's first line
    found = m.console.expect(r"ata: drive 0 \(primary master\): QEMU HARDDISK, (\d+) sectors")
    assert int(found.group(1)) == disk.sectors
    m.console.expect_exact("ready (init 0)")
    assert "drive 3 (secondary slave): none" in m.console.before  # what came in between
    m.ata.reset_channel(1)  # the driver prints while parked calls run
    m.console.expect_exact("ata: channel 1 reset", timeout=5)
    old_pid = m.qemu.pid if m.qemu else None
    for reboot in (m.power_cycle, m.crash, m.reset):
        reboot()
        m.console.expect_exact("piix3-harness guest: booting", timeout=5)
        m.console.expect_exact("ready (init 0)", timeout=5)
    assert m.qemu is not None and m.qemu.pid != old_pid
    # serial.log, appended by every QEMU, has everything the console had
    log = (m.artifacts or Path()).joinpath("serial.log").read_text()
    assert log.count("ready (init 0)") == 4 and "ata: channel 1 reset" in log


def test_a_console_read_late_loses_nothing_and_the_log_stays_exact(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """The reader held off for a whole reboot (a busy test process): the guest's output waits
    in the FIFO, the console gets all of it, and serial.log is byte for byte what the guest
    sent. (On a unix socket, QEMU meets a full buffer after ~280 one-byte writes, slows the
    guest down and logs each byte it retries twice.)"""
    m = machine_factory(disks=[disk])
    with m.console._cond:  # the reader cannot take anything meanwhile
        m.reset()
    seen = ""
    for _ in range(2):  # the first boot's output, then the reset's
        match = m.console.expect_exact("ready (init 0)\r\n", timeout=5)
        seen += m.console.before + match.group(0)
    assert m.artifacts is not None
    assert (m.artifacts / "serial.log").read_bytes().decode() == seen
    assert m.console.dropped == 0


def test_expect_is_bounded_and_says_what_it_saw(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk])
    m.console.expect_exact("ready (init 0)")
    m.ata.reset_channel(0)
    t0 = time.monotonic()
    with pytest.raises(HarnessTimeout) as late:
        m.console.expect("no such line", timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 3.0
    text = str(late.value)
    assert "'no such line' within 0.3 s" in text and "ata: channel 0 reset" in text  # the unmatched tail
    assert text.endswith(f"(see {m.artifacts}/serial.log)")
    m.console.expect_exact("ata: channel 0 reset")  # what a failed wait saw is still there to match
    for bad in (b"bytes", 7, [], ["ok", b"x"]):
        with pytest.raises(UsageError):
            m.console.expect(bad)  # type: ignore[arg-type]
    for timeout in (0, -1, float("nan"), None):
        with pytest.raises(UsageError):
            m.console.expect("x", timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        m.console.send(3)  # type: ignore[arg-type]


def test_send_reaches_the_uart(machine: Machine) -> None:
    """What send() gives arrives in order in COM1's receiver, beyond one FIFO's worth."""
    assert not _data_ready(machine), "nothing received before the test sends"
    assert machine.console.send("A") == 1
    assert _uart_bytes(machine, 1) == b"A"
    assert not _data_ready(machine), "read out: Data Ready clears"
    data = bytes(range(0x30, 0x30 + FIFO + 9))
    assert machine.console.send(data) == len(data)
    assert _uart_bytes(machine, len(data)) == data
    assert machine.ata.read(0, 0, 1) == bytes(512), "the driver is undisturbed"


def test_each_pooled_test_gets_an_empty_console(tmp_path: Path) -> None:
    """The snapshot pool clears the console: a test never matches the previous test's output."""
    pool = SnapshotPool(tmp_path)
    try:
        m = pool.get("seabios")
        with pytest.raises(HarnessTimeout):
            m.console.expect_exact("ready (init 0)", timeout=0.2)  # the pool's boot: read already
        m.ata.reset_channel(0)
        assert pool.get("seabios") is m  # the next test, on the same machine
        with pytest.raises(HarnessTimeout):
            m.console.expect_exact("ata: channel 0 reset", timeout=0.2)
        m.ata.reset_channel(1)
        m.console.expect_exact("ata: channel 1 reset", timeout=5)
    finally:
        pool.close()
