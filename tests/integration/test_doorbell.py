"""The doorbell transport on its own ground: calls made while the guest is already in its
doorbell loop (not woken from harness_ready), the guest parking by itself when idle, GDB work
between calls, and every bad day of test_faults.py met mid-stream. The suite's other
call-touching tests run on both transports through --piix3-transport."""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path

import pytest

from harness import AtaCode, AtaError, DiskImage, Fault, GdbError, HarnessTimeout, Machine, QemuError, procs
from harness.abi import PARKING_OFFSET, Op, Request
from harness.coverage.observe import CallSampler, install
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu
SECTOR = 512
LONG_IDLE_US = 5_000_000  # the guest waits this long for a next call: no stop a busy host could cause
WAIT = 10.0  # s, bound on waiting for the guest to park by itself or for a process to go


def pattern(seed: int, count: int) -> bytes:
    return b"".join(bytes([seed & 0xFF, i & 0xFF, 0xC3, 0x3C]) * (SECTOR // 4) for i in range(count))


def serving(m: Machine) -> Machine:
    """m after one call: the guest is in its doorbell loop, waiting for the next."""
    m.mailboxes.idle_us = LONG_IDLE_US
    m.ata.read(0, 0, 1)
    assert m.target.serving and not m.target.parked
    assert m.qemu is not None
    m.qemu.events(wait=0.05)  # forget the boot's STOP and the wake-up's RESUME
    return m


def vm_stops(m: Machine) -> int:
    assert m.qemu is not None
    return sum(1 for e in m.qemu.events(wait=0.05) if e.get("event") == "STOP")


def parking(m: Machine) -> int:
    return int(struct.unpack("<I", m.read_memory(m.symbol("doorbell") + PARKING_OFFSET, 4))[0])


def test_calls_in_the_loop_never_stop_the_vm(machine_factory: MachineFactory, disk: DiskImage) -> None:
    """Many calls, each with its own data, all answered without a VM stop: the doorbell, not
    GDB, carried them, and every request's fields arrived before its op (else data would land
    at the wrong LBA or mode)."""
    m = serving(machine_factory(disks=[disk], transport="doorbell"))
    for i in range(200):
        data = pattern(i, 1 + i % 8)
        mode = "pio" if i % 3 == 0 else "dma"
        m.ata.write(0, 100 + i * 8, data, mode=mode)
        assert m.ata.read(0, 100 + i * 8, 1 + i % 8, mode=mode) == data
    assert vm_stops(m) == 0
    for i in range(0, 200, 37):
        assert disk.read_sectors(100 + i * 8, 1 + i % 8) == pattern(i, 1 + i % 8)


def test_an_idle_guest_parks_and_the_next_call_wakes_it(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    m = machine_factory(disks=[disk], transport="doorbell")
    m.mailboxes.idle_us = 1000
    m.ata.write(0, 7, pattern(1, 1))
    deadline = time.monotonic() + WAIT
    while not parking(m) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert parking(m) == 1, "the guest did not park by itself"
    assert m.qemu is not None
    deadline = time.monotonic() + WAIT
    while m.qemu.command("query-status")["status"] != "debug" and time.monotonic() < deadline:
        time.sleep(0.001)
    assert m.qemu.command("query-status")["status"] == "debug", (
        "the VM still runs: an idle guest costs a core"
    )
    assert m.ata.read(0, 7, 1) == pattern(1, 1)  # woken from GDB
    assert m.target.serving
    m.mailboxes.idle_us = LONG_IDLE_US
    for i in range(20):
        m.ata.write(0, 8 + i, pattern(i, 1))
    assert m.ata.read(0, 8, 20) == b"".join(pattern(i, 1) for i in range(20))


def test_gdb_work_between_calls_parks_the_guest_first(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    """Inferior calls, expressions and port watches need a stopped guest: they get one, and the
    calls after them are on the doorbell again."""
    m = serving(machine_factory(disks=[disk], transport="doorbell"))
    assert m.ata.timeout_ms > 0  # an expression through GDB
    assert m.target.parked and not m.target.serving
    assert m.call("ata_flush", 0) == 0
    with m.watch_ports("primary") as io:
        m.ata.write(0, 3, pattern(3, 1))  # the GDB way while the watch is in place
    assert any(e.port == 0x1F7 and e.direction == "out" for e in io.events)
    assert m.ata.read(0, 3, 1) == pattern(3, 1)
    assert m.target.serving
    assert m.qemu is not None
    m.qemu.events(wait=0.05)  # the watch's breakpoints stopped the VM at every access
    for i in range(10):
        m.ata.read(0, i, 1)
    assert vm_stops(m) == 0


def test_a_hang_in_the_loop_times_out_with_evidence(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = serving(machine_factory(disks=[disk], transport="doorbell", call_timeout=0.5))
    with pytest.raises(HarnessTimeout) as e:
        m.request(Request(Op.SPIN))
    assert "hang.txt" in str(e.value) and "reset to harness_ready" in str(e.value)
    assert m.artifacts is not None
    assert "selftest_spin" in (m.artifacts / "hang.txt").read_text()
    m.failed = False  # the timeout was this test's intent
    m.ata.write(0, 3, pattern(4, 1))
    assert m.ata.read(0, 3, 1) == pattern(4, 1)


def test_a_triple_fault_in_the_loop_is_a_qemu_error(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = serving(machine_factory(disks=[disk], transport="doorbell"))
    with pytest.raises(QemuError) as e:
        m.request(Request(Op.TRIPLE_FAULT))
    assert "reset itself" in str(e.value) and "guest-reset" in str(e.value)
    assert m.target.parked
    assert m.ata.read(0, 0, 1) == bytes(SECTOR)


def test_a_vm_paused_on_io_error_in_the_loop_is_reported(
    machine_factory: MachineFactory, disk: DiskImage
) -> None:
    m = machine_factory(
        disks=[disk], faults={0: [Fault("read", sector=100)]}, io_error="stop", transport="doorbell"
    )
    serving(m)
    with pytest.raises(QemuError) as e:
        m.ata.read(0, 100, 1)
    assert "paused the VM on an I/O error" in str(e.value)
    assert m.qemu is not None and m.qemu.command("query-status")["status"] == "io-error"
    m.reset()
    assert m.ata.read(0, 99, 1) == bytes(SECTOR)


def test_a_hold_in_the_loop_times_out_in_the_driver(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk], faults={0: []}, transport="doorbell")
    m.ata.timeout_ms = 300
    disk.write_sectors(5, pattern(1, 1))
    serving(m)
    m.hold_io(0, "read")  # while the guest runs its loop
    with pytest.raises(AtaError) as e:
        m.ata.read(0, 5, 1)
    assert e.value.code is AtaCode.TIMEOUT
    assert not m.held and m.target.serving
    m.ata.reset_channel(0)
    assert m.ata.read(0, 5, 1) == pattern(1, 1)


def test_gdb_killed_in_the_loop_is_a_gdb_error(disk: DiskImage, tmp_path: Path) -> None:
    """A guest in its loop needs no GDB to answer; a call must still not pass without one."""
    m = Machine(disks=[disk], artifacts_dir=tmp_path / "a", transport="doorbell")
    m.start()
    try:
        serving(m)
        assert m.gdb is not None and m.qemu is not None
        gdb_pid, qemu_pid = m.gdb.pid, m.qemu.pid
        assert gdb_pid is not None and qemu_pid is not None
        os.kill(gdb_pid, signal.SIGKILL)
        # until the kernel can report its exit: GDB's main thread shows as a zombie in /proc
        # while its other threads are still dying, and until they have, GDB has not exited
        deadline = time.monotonic() + WAIT
        while not procs.exited(gdb_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(GdbError) as e:
            m.ata.read(0, 0, 1)
        assert "gdb-mi.log" in str(e.value)
    finally:
        m.close(failed=False)
    assert not procs.pid_alive(qemu_pid) and not procs.pid_alive(gdb_pid)


def test_functional_coverage_samples_every_call(
    disk: DiskImage, tmp_path: Path, piix3_transport: str
) -> None:
    """The call sampler sees each call on either transport (the doorbell resumes nothing)."""
    sampler = CallSampler()
    remove = install(sampler.attach)
    try:
        with Machine(disks=[disk], artifacts_dir=tmp_path / "a", transport=piix3_transport) as m:
            m.ata.write(0, 1, pattern(1, 1))
            assert m.ata.read(0, 1, 1) == pattern(1, 1)
            m.ata.flush(0)
            with pytest.raises(AtaError) as e:
                m.ata.read(0, m.ata.sectors(0), 1)
            assert e.value.code is AtaCode.RANGE
            sampler.flush()
    finally:
        remove()
    assert sampler.calls == 4
