"""Bad days: injected disk errors, a paused VM, hung calls, dying QEMU and GDB, Ctrl-C,
and disk paths that must be refused before anything starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import (
    AtaCode,
    AtaError,
    ConfigError,
    DiskImage,
    DiskImageError,
    Fault,
    GdbError,
    HarnessError,
    HarnessTimeout,
    Machine,
    QemuError,
    procs,
)
from harness.abi import Op, Request
from harness.pytest_plugin import MachineFactory
from harness.regs import AtaPhase

pytestmark = pytest.mark.qemu
SECTOR = 512
EXIT_WAIT = 10.0  # s, for a child process to go away


def pattern(seed: int, count: int) -> bytes:
    return b"".join(bytes([seed & 0xFF, i & 0xFF, 0x5A, 0xA5]) * (SECTOR // 4) for i in range(count))


@pytest.mark.parametrize("mode", ["pio", "dma"])
@pytest.mark.parametrize("op", ["read", "write"])
def test_once_fault_fails_then_retry_succeeds(
    machine_factory: MachineFactory, disk: DiskImage, op: str, mode: str
) -> None:
    m = machine_factory(disks=[disk], faults={0: [Fault(op, sector=777, once=True)]})
    data = pattern(3, 2)
    disk.write_sectors(776, pattern(1, 2))

    def attempt() -> bytes | None:
        if op == "read":
            return m.ata.read(0, 776, 2, mode=mode)
        m.ata.write(0, 776, data, mode=mode)
        return None

    with pytest.raises(AtaError) as e:
        attempt()
    assert e.value.code is AtaCode.DEVICE
    assert (e.value.status, e.value.error) == (0x41, 0x04)
    assert 776 <= e.value.lba <= 777
    got = attempt()  # the fault was `once`: the retry goes through
    if op == "read":
        assert got == pattern(1, 2)
    else:
        assert disk.read_sectors(776, 2) == data


@pytest.mark.piix3_faults({0: [Fault("write", sector=300)]})
def test_failing_writes_touch_nothing_outside_their_sectors(machine: Machine, disk: DiskImage) -> None:
    background = pattern(9, disk.sectors)
    disk.write_sectors(0, background)
    writes = [(280, 40, "pio"), (295, 10, "dma"), (290, 1, "pio"), (301, 3, "dma")]
    outcomes = []
    for n, (lba, count, mode) in enumerate(writes):
        try:
            machine.ata.write(0, lba, pattern(100 + n, count), mode=mode)
            outcomes.append(True)
        except AtaError as e:
            assert e.code is AtaCode.DEVICE and lba <= e.lba < lba + count
            outcomes.append(False)
    assert outcomes == [False, False, True, True]
    image = disk.path.read_bytes()
    touched = set()
    for lba, count, _ in writes:
        for s in range(lba, lba + count):
            touched.add(s)
    for s in range(disk.sectors):
        sector = image[s * SECTOR : (s + 1) * SECTOR]
        if s not in touched:
            assert sector == background[s * SECTOR : (s + 1) * SECTOR], f"sector {s} changed"
    # the successful writes are there, whole
    assert disk.read_sectors(290, 1) == pattern(102, 1)
    assert disk.read_sectors(301, 3) == pattern(103, 3)


def test_flush_fault_reports_the_flush_command(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk], faults={0: [Fault("flush")]})
    m.ata.write(0, 1, pattern(1, 1))  # QEMU only flushes what is dirty
    with pytest.raises(AtaError) as e:
        m.ata.flush(0)
    assert e.value.code is AtaCode.DEVICE and e.value.command == 0xEA
    assert "FLUSH CACHE EXT" in str(e.value)


def test_vm_paused_on_io_error_is_reported_not_livelocked(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    m = machine_factory(disks=[disk], faults={0: [Fault("read", sector=100)]}, io_error="stop")
    with pytest.raises(QemuError) as e:
        m.ata.read(0, 100, 1)
    assert "paused the VM on an I/O error" in str(e.value)
    assert m.qemu is not None and m.qemu.command("query-status")["status"] == "io-error"
    m.reset()
    assert m.ata.read(0, 99, 1) == bytes(SECTOR)


def test_a_call_that_never_returns_times_out_and_recovers(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    m = machine_factory(disks=[disk], call_timeout=0.5)
    with pytest.raises(HarnessTimeout) as e:
        m.request(Request(Op.SPIN))
    assert "hang.txt" in str(e.value) and "reset to harness_ready" in str(e.value)
    assert m.artifacts is not None
    hang = (m.artifacts / "hang.txt").read_text()
    assert "selftest_spin" in hang and "backtrace" in hang and "registers" in hang
    m.failed = False  # the timeout was this test's intent
    data = pattern(4, 1)
    m.ata.write(0, 3, data)
    assert m.ata.read(0, 3, 1) == data


def test_triple_fault_is_a_qemu_error(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk])
    with pytest.raises(QemuError) as e:
        m.request(Request(Op.TRIPLE_FAULT))
    assert "reset itself" in str(e.value) and "guest-reset" in str(e.value)
    assert m.ata.read(0, 0, 1) == bytes(SECTOR)  # the rebooted guest is parked and usable


def test_qemu_killed_mid_call(disk: DiskImage, tmp_path: Path, piix3_transport: str) -> None:
    m = Machine(disks=[disk], artifacts_dir=tmp_path / "a", transport=piix3_transport)
    m.start()
    try:
        assert m.qemu is not None and m.qemu.pid is not None
        qemu_pid, gdb_pid = m.qemu.pid, m.gdb.pid if m.gdb else None
        killer = threading.Timer(0.2, os.kill, (qemu_pid, signal.SIGKILL))
        killer.start()
        t0 = time.monotonic()
        with pytest.raises(QemuError) as e:
            for _ in range(20):  # ~0.7 s each: QEMU dies during one of them
                m.ata.write(0, 0, bytes(32 << 20), mode="pio")
        killer.join()
        assert time.monotonic() - t0 < 30
        assert "exit status -9" in str(e.value) and "qemu.log" in str(e.value)
    finally:
        m.close(failed=False)
    assert not procs.pid_alive(qemu_pid)
    assert gdb_pid is not None and not procs.pid_alive(gdb_pid)


def test_gdb_killed_is_a_gdb_error_and_qemu_is_reaped(
    disk: DiskImage, tmp_path: Path, piix3_transport: str
) -> None:
    m = Machine(disks=[disk], artifacts_dir=tmp_path / "a", transport=piix3_transport)
    m.start()
    try:
        assert m.gdb is not None and m.qemu is not None
        gdb_pid, qemu_pid = m.gdb.pid, m.qemu.pid
        assert gdb_pid is not None and qemu_pid is not None
        os.kill(gdb_pid, signal.SIGKILL)
        with pytest.raises(GdbError) as e:
            m.ata.read(0, 0, 1)
        assert "gdb-mi.log" in str(e.value)
    finally:
        m.close(failed=False)
    assert not procs.pid_alive(qemu_pid) and not procs.pid_alive(gdb_pid)


SIGPIPE_CHILD = """
import os, signal, sys, time
from harness import DiskImage, GdbError, Machine
signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # what importing vcdvcd does
with Machine(disks=[DiskImage(sys.argv[1])]) as m:
    os.kill(m.gdb.pid, signal.SIGKILL)   # behind the harness's back
    time.sleep(0.5)   # gone: the next call writes into a pipe nobody reads
    try:
        m.ata.read(0, 0, 1)
    except GdbError:
        print("a typed error", flush=True)
"""


def test_a_dead_gdb_is_an_error_even_if_a_library_reset_sigpipe(disk: DiskImage) -> None:
    """With SIGPIPE at its default action, writing to a dead GDB's stdin killed the whole
    Python without a word (seen as xdist workers that vanished); the harness ignores it again."""
    done = subprocess.run(
        [sys.executable, "-c", SIGPIPE_CHILD, str(disk.path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    assert "a typed error" in done.stdout


CHILD = """
import sys
from harness import DiskImage, Machine
with Machine(disks=[DiskImage(sys.argv[1])]) as m:
    print(*m.pids, flush=True)
    sys.stdin.readline()   # wait here until interrupted
"""


def test_ctrl_c_leaves_no_process_behind(disk: DiskImage) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(disk.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) == 2 and all(procs.pid_alive(p) for p in pids)
        child.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C delivers to Python
        child.wait(timeout=EXIT_WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "KeyboardInterrupt" in (child.stderr.read() if child.stderr else "")
    deadline = time.monotonic() + EXIT_WAIT
    while any(procs.pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(procs.pid_alive(p) for p in pids), "QEMU or GDB outlived the interrupted harness"


def test_bad_disk_paths_are_refused_before_anything_starts(tmp_path: Path, disk: DiskImage) -> None:
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"\0" * 1000)
    cases = {
        "does not exist": DiskImage(tmp_path / "missing.img", format="raw"),
        "not a positive multiple of 512": DiskImage(odd),
        "not a regular file": DiskImage(tmp_path, format="raw"),
        "character device": DiskImage(os.devnull, format="raw"),
    }
    started = len(procs.STARTED_CHILDREN)
    for why, bad in cases.items():
        with pytest.raises(DiskImageError) as e:
            Machine(disks=[bad]).start()
        assert str(bad.path) in str(e.value), why
    with Machine(disks=[disk]) as m, pytest.raises(DiskImageError) as e:
        assert m.pids
        Machine(disks=[disk]).start()
    assert "in use by another QEMU" in str(e.value)
    assert len(procs.STARTED_CHILDREN) - started == 2, "only the first machine's QEMU and GDB may start"


@pytest.mark.parametrize("mode", ["pio", "dma"])
@pytest.mark.parametrize("op", ["read", "write"])
def test_a_request_that_never_completes_times_out_within_the_bound(
    machine_factory: MachineFactory, disk: DiskImage, op: str, mode: str
) -> None:
    """blkdebug holds the request inside QEMU, so the drive stays busy: the driver's bounded
    wait ends in ATA_ERR_TIMEOUT, and a soft reset (or reset()) brings the drive back."""
    m = machine_factory(disks=[disk], faults={0: []})
    m.ata.timeout_ms = 300
    disk.write_sectors(5, pattern(1, 1))
    m.hold_io(0, op)
    with pytest.raises(AtaError) as e:
        if op == "read":
            m.ata.read(0, 5, 1, mode=mode)
        else:
            m.ata.write(0, 5, pattern(2, 1), mode=mode)
    err = e.value
    assert err.code is AtaCode.TIMEOUT
    polled = {"pio": AtaPhase.DRQ if op == "read" else AtaPhase.COMPLETE, "dma": AtaPhase.DMA}[mode]
    assert err.phase == (AtaPhase.IRQ if m.ata.completion == "irq" else polled)  # irq: none came
    assert err.status & 0x88, "BSY or DRQ still set: the drive never finished"
    assert "TIMEOUT" in str(err)
    assert not m.held, "the call that was caught let its hold go"
    m.ata.reset_channel(0)
    expected = pattern(1, 1) if op == "read" else pattern(2, 1)  # a held write lands once let go
    assert m.ata.read(0, 5, 1, mode=mode) == expected
    m.hold_io(0, op)
    m.reset()  # a hold that caught nothing is removed by reset(): the next call is not held
    assert not m.held
    assert m.ata.read(0, 6, 1, mode=mode) == bytes(SECTOR)
    m.ata.write(0, 6, pattern(4, 1), mode=mode)
    with pytest.raises(HarnessError, match="hold_io"):
        m.hold_io(0, op)
        m.call("ata_flush", 0)  # a GDB inferior call would stop the VM with the request held


def test_hold_io_needs_blkdebug(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk])
    with pytest.raises(ConfigError, match="faults="):
        m.hold_io(0, "read")
