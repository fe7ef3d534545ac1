"""Bad days for the machine itself: killed owners, Ctrl-C mid-call, full tmpfs, full disks,
slow GDB transfers, and what the errors say afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import AtaCode, AtaError, ConfigError, DiskImage, HarnessError, Machine, cli, procs, rundir
from harness.gdbmi import GdbMi
from harness.paths import find_kernel
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

SECTOR = 512
CHILD_TIMEOUT = 60.0  # s, for a child Python that boots one machine


def _mount_tmpfs(where: Path, size: str) -> None:
    """A small tmpfs of our own: the only honest way to run out of /dev/shm or disk space.
    CI runs as root, where this works; elsewhere the test cannot be run at all."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(where)], check=True)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    _mount_tmpfs(where, size)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_run_directories_of_killed_owners_are_swept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL cannot be cleaned up after by the process it kills: the next Machine does it."""
    img = DiskImage.create(tmp_path / "d.img", size_mib=8)
    script = (
        "import sys, time\n"
        "from harness import DiskImage, Machine\n"
        f"m = Machine(disks=[DiskImage({str(img.path)!r})], artifacts_dir={str(tmp_path / 'logs')!r})\n"
        "m.start()\n"
        "print(m.rundir, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        left = Path(child.stdout.readline().strip())
        assert left.is_dir() and left.name.startswith(f"{rundir.PREFIX}{child.pid}.")
    finally:
        child.kill()
        child.wait(timeout=CHILD_TIMEOUT)
    assert left.is_dir(), "SIGKILL left nothing behind: this test shows nothing"
    deadline = time.monotonic() + 5
    while left.is_dir() and time.monotonic() < deadline:  # the child's QEMU/GDB die with it
        assert cli.main(["clean"]) == 0
        time.sleep(0.05)
    assert not left.exists()
    assert f"removed {left}" in capsys.readouterr().out


def test_sweep_keeps_live_owners_directories() -> None:
    mine = rundir.make()
    try:
        assert mine not in rundir.sweep_stale()
        assert mine.is_dir()
    finally:
        mine.rmdir()


def test_signals_are_held_until_teardown_ends() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("signal tests must run in the main thread")
    reached = False
    with pytest.raises(KeyboardInterrupt), procs.signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a real Ctrl-C would have struck by now
        reached = True
    assert reached


def _ctrl_c_after(seconds: float) -> threading.Timer:
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("Ctrl-C tests must run in the main thread")
    timer = threading.Timer(seconds, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


BIG = 65536  # sectors: a 32 MiB PIO read takes about a second under TCG


@pytest.mark.parametrize("then", ["cont", "reset"])
def test_ctrl_c_during_a_long_call_leaves_a_usable_machine(
    machine_factory: MachineFactory, tmp_path: Path, then: str
) -> None:
    """The advice after Ctrl-C (m.cont() or m.reset()) must work, and the machine too."""
    disk = DiskImage.create(tmp_path / "d.img", size_mib=64)
    disk.write_sectors(BIG - 1, b"\x77" * SECTOR)
    m = machine_factory(disks=[disk])
    timer = _ctrl_c_after(0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            m.ata.read(0, 0, BIG, mode="pio")
    finally:
        timer.cancel()
    assert not m.parked
    with pytest.raises(HarnessError, match=r"m\.cont\(\)"):
        m.ata.read(0, 0, 1)
    if then == "cont":
        assert m.cont().parked
        assert m.read_memory(m.symbol("xfer_buf") + (BIG - 1) * SECTOR, SECTOR) == b"\x77" * SECTOR
    else:
        m.reset()
    assert m.ata.read(0, BIG - 1, 1) == b"\x77" * SECTOR


def test_gdb_data_path_moves_a_megabyte(machine_factory: MachineFactory, tmp_path: Path) -> None:
    """1 MiB through GDB's memory commands is chunked; one huge command used to time out and
    leave GDB killed, with the whole payload in the message."""
    disk = DiskImage.create(tmp_path / "d.img", size_mib=8)
    m = machine_factory(disks=[disk], data_path="gdb")
    data = os.urandom(2048 * SECTOR)
    m.ata.write(0, 10, data)
    assert disk.read_sectors(10, 2048) == data
    assert m.ata.read(0, 10, 2048) == data


def test_error_messages_quote_commands_briefly(tmp_path: Path) -> None:
    gdb = GdbMi("gdb", find_kernel(), tmp_path / "mi.log")
    gdb.spawn()
    try:
        gdb.wait_ready()
        with pytest.raises(HarnessError) as e:
            gdb.command("-no-such-command " + "ab" * 500_000)
        assert len(str(e.value)) < 1000, len(str(e.value))
    finally:
        gdb.close()


def test_a_full_dev_shm_falls_back_and_then_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine_factory: MachineFactory
) -> None:
    """Two 32 MiB guests on a 48 MiB tmpfs once killed Python with SIGBUS. Guest RAM is
    reserved before QEMU starts: it goes where there is room, or fails with a typed error."""
    disk = DiskImage.create(tmp_path / "d.img", size_mib=8)
    other = DiskImage.create(tmp_path / "e.img", size_mib=8)
    base = Path(tempfile.mkdtemp(prefix="p3-", dir="/tmp"))  # short: sockets go in there
    with small_tmpfs(base / "shm", "48m") as shm, small_tmpfs(base / "tmp", "80m") as tmp:
        monkeypatch.setattr(rundir, "SHM_ROOT", shm)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        m = machine_factory(disks=[disk], memory_mib=64)  # 64 MiB cannot fit in 48: falls back
        m.write_memory((64 << 20) - SECTOR, b"\x01" * SECTOR)  # the top of guest RAM is real
        assert m.ata.read(0, 0, 1) == bytes(SECTOR)
        with pytest.raises(ConfigError, match="no room"):  # 16 MiB left in either
            machine_factory(disks=[other], memory_mib=64)
        assert m.read_memory((64 << 20) - SECTOR, SECTOR) == b"\x01" * SECTOR
        m.close()
        assert not list(shm.iterdir()) and not list(tmp.iterdir()), "files left behind"
    shutil.rmtree(base)


def test_enospc_is_reported_to_the_guest(machine_factory: MachineFactory, tmp_path: Path) -> None:
    """io_error='report' means the guest sees an error, even for a full host disk (QEMU's own
    default pauses the VM on ENOSPC)."""
    with small_tmpfs(tmp_path / "full", "1m") as full:
        disk = DiskImage.create(full / "d.img", size_mib=64)  # sparse: 64 MiB on 1 MiB
        m = machine_factory(disks=[disk], io_error="report")
        with pytest.raises(AtaError) as e:
            for i in range(8):
                m.ata.write(0, i * 2048, os.urandom(2048 * SECTOR))
        assert e.value.code in (AtaCode.DEVICE, AtaCode.DMA), e.value
        m.close()


@pytest.mark.timeout(20)
def test_fifo_image_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "d.img"
    os.mkfifo(fifo)
    with pytest.raises(HarnessError, match="regular"):
        Machine(disks=[DiskImage(fifo)], faults={0: []}).start()


def test_messages_after_close_and_after_a_failed_power_cycle(
    machine_factory: MachineFactory, tmp_path: Path
) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_mib=8)
    m = machine_factory(disks=[disk])
    good = m.config
    m.config = dataclasses.replace(good, qemu_binary=str(tmp_path / "no-such-qemu"))
    with pytest.raises(HarnessError):
        m.power_cycle()
    with pytest.raises(HarnessError, match=r"power_cycle\(\) failed") as e:
        m.ata.read(0, 0, 1)
    assert "not parked" not in str(e.value)
    m.config = good
    m.power_cycle()  # the way back the message names
    assert m.ata.read(0, 0, 1) == bytes(SECTOR)
    m.close()
    with pytest.raises(HarnessError, match="closed") as e:
        m.ata.read(0, 0, 1)
    assert "not parked" not in str(e.value)
