"""Bad configurations: refused with a typed error naming what was wrong, before anything
starts, leaving nothing behind; and the artifacts directory as a hostile place."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import ConfigError, DiskImage, Fault, GdbError, HarnessError, Machine, rundir
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu


def _my_rundirs() -> set[Path]:
    pid = os.getpid()
    return {p for root in rundir.roots() for p in root.glob(f"{rundir.PREFIX}{pid}.*")}


@pytest.fixture
def img(tmp_path: Path) -> DiskImage:
    return DiskImage.create(tmp_path / "d.img", size_mib=8)


Make = Callable[[DiskImage, Path], Machine]
MACHINE_TABLE: list[tuple[str, Make, str]] = [
    ("disks keyed by str", lambda d, t: Machine(disks={"0": d}), "drive"),  # type: ignore[dict-item]
    ("disks of str", lambda d, t: Machine(disks=[str(d.path)]), "DiskImage"),  # type: ignore[list-item]
    ("disks a str", lambda d, t: Machine(disks=str(d.path)), "disks"),  # type: ignore[arg-type]
    ("five disks", lambda d, t: Machine(disks=[d] * 5), "disks"),
    ("drive 4", lambda d, t: Machine(disks={4: d}), "drive 4"),
    ("memory_mib 64.5", lambda d, t: Machine(disks=[d], memory_mib=64.5), "memory_mib"),  # type: ignore[arg-type]
    ("memory_mib True", lambda d, t: Machine(disks=[d], memory_mib=True), "memory_mib"),
    ("memory_mib 2**40", lambda d, t: Machine(disks=[d], memory_mib=2**40), "memory_mib"),
    ("call_timeout 0", lambda d, t: Machine(disks=[d], call_timeout=0), "call_timeout"),
    ("call_timeout inf", lambda d, t: Machine(disks=[d], call_timeout=math.inf), "call_timeout"),
    ("call_timeout nan", lambda d, t: Machine(disks=[d], call_timeout=math.nan), "call_timeout"),
    ("call_timeout None", lambda d, t: Machine(disks=[d], call_timeout=None), "call_timeout"),  # type: ignore[arg-type]
    ("boot_timeout -1", lambda d, t: Machine(disks=[d], boot_timeout=-1), "boot_timeout"),
    ("faults a str", lambda d, t: Machine(disks=[d], faults={0: "read"}), "Fault"),  # type: ignore[dict-item]
    ("faults of str", lambda d, t: Machine(disks=[d], faults={0: ["read"]}), "Fault"),  # type: ignore[list-item]
    ("faults a list", lambda d, t: Machine(disks=[d], faults=[Fault("read")]), "faults"),  # type: ignore[arg-type]
    ("faults on a drive without disk", lambda d, t: Machine(disks=[d], faults={1: []}), "drive 1"),
    ("firmware None", lambda d, t: Machine(disks=[d], firmware=None), "firmware"),  # type: ignore[arg-type]
    ("firmware 'ovmf'", lambda d, t: Machine(disks=[d], firmware="ovmf"), "firmware"),
    ("io_error 'ignore'", lambda d, t: Machine(disks=[d], io_error="ignore"), "io_error"),
    ("data_path 'dma'", lambda d, t: Machine(disks=[d], data_path="dma"), "data_path"),
    ("transport 'shm'", lambda d, t: Machine(disks=[d], transport="shm"), "transport"),
    ("transport 5", lambda d, t: Machine(disks=[d], transport=5), "transport"),  # type: ignore[arg-type]
    (
        "doorbell without shared RAM",
        lambda d, t: Machine(disks=[d], transport="doorbell", data_path="gdb"),
        "data_path='shm'",
    ),
    ("gdb with NUL", lambda d, t: Machine(disks=[d], gdb="g\0db"), "gdb"),
    ("qemu with NUL", lambda d, t: Machine(disks=[d], qemu="qemu\0"), "qemu"),
    ("qemu an int", lambda d, t: Machine(disks=[d], qemu=5), "qemu"),  # type: ignore[arg-type]
    ("kernel with NUL", lambda d, t: Machine(disks=[d], kernel="/tmp/k\0x"), "kernel"),
    ("artifacts_dir with NUL", lambda d, t: Machine(disks=[d], artifacts_dir="/tmp/a\0b"), "artifacts_dir"),
    ("artifacts_dir an int", lambda d, t: Machine(disks=[d], artifacts_dir=5), "artifacts_dir"),  # type: ignore[arg-type]
    ("keep_artifacts 'yes'", lambda d, t: Machine(disks=[d], keep_artifacts="yes"), "keep_artifacts"),  # type: ignore[arg-type]
    ("extra_qemu_args a str", lambda d, t: Machine(disks=[d], extra_qemu_args="-s"), "extra_qemu_args"),
    ("-daemonize", lambda d, t: Machine(disks=[d], extra_qemu_args=["-daemonize"]), "-daemonize"),
    ("--daemonize", lambda d, t: Machine(disks=[d], extra_qemu_args=["--daemonize"]), "daemonize"),
    ("-s (TCP gdbstub)", lambda d, t: Machine(disks=[d], extra_qemu_args=["-s"]), "TCP"),
    ("-runas", lambda d, t: Machine(disks=[d], extra_qemu_args=["-runas", "nobody"]), "-runas"),
    ("-qmp", lambda d, t: Machine(disks=[d], extra_qemu_args=["-qmp", "tcp::4444,server"]), "-qmp"),
]


@pytest.mark.parametrize(("make", "word"), [r[1:] for r in MACHINE_TABLE], ids=[r[0] for r in MACHINE_TABLE])
def test_bad_machine_configuration(img: DiskImage, tmp_path: Path, make: Make, word: str) -> None:
    before = img.path.read_bytes()
    dirs = _my_rundirs()
    with pytest.raises(HarnessError) as e:
        make(img, tmp_path).start()
    assert word in str(e.value), e.value
    assert img.path.read_bytes() == before
    assert _my_rundirs() == dirs, "a refused configuration left a run directory behind"


FAULT_TABLE: list[tuple[str, dict[str, Any], str]] = [
    ("sector '5'", {"op": "read", "sector": "5"}, "sector"),
    ("sector -1", {"op": "read", "sector": -1}, "sector"),
    ("sector 2**64", {"op": "write", "sector": 2**64}, "sector"),
    ("sector True", {"op": "write", "sector": True}, "sector"),
    ("flush with a sector", {"op": "flush", "sector": 5}, "flush"),
    ("op 1", {"op": 1}, "op"),
    ("op 'erase'", {"op": "erase"}, "op"),
    ("once 'yes'", {"op": "read", "once": "yes"}, "once"),
    ("errno 0", {"op": "read", "errno": 0}, "errno"),
    ("errno 5.0", {"op": "read", "errno": 5.0}, "errno"),
    ("errno 2**40", {"op": "read", "errno": 2**40}, "errno"),
]


@pytest.mark.parametrize(("kwargs", "word"), [r[1:] for r in FAULT_TABLE], ids=[r[0] for r in FAULT_TABLE])
def test_bad_fault(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ConfigError) as e:
        Fault(**kwargs)
    assert word in str(e.value), e.value


def test_gdb_that_is_not_a_program(img: DiskImage, tmp_path: Path) -> None:
    dirs = _my_rundirs()
    with pytest.raises(GdbError, match="cannot run GDB"):
        Machine(disks=[img], gdb="/etc/passwd", artifacts_dir=tmp_path / "a").start()
    assert _my_rundirs() == dirs


def test_kernel_symlink_loop(img: DiskImage, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(HarnessError, match="kernel"):
        Machine(disks=[img], kernel=loop)


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_bad_artifacts_dir(img: DiskImage, tmp_path: Path, kind: str) -> None:
    if kind == "file":
        target = tmp_path / "a-file"
        target.write_text("mine\n")
    else:
        target = Path("/proc/piix3-artifacts")  # nobody, root included, can make this
    dirs = _my_rundirs()
    with pytest.raises(ConfigError, match="artifacts_dir"):
        Machine(disks=[img], artifacts_dir=target).start()
    assert _my_rundirs() == dirs, "a refused artifacts_dir left a run directory in /dev/shm"
    if kind == "file":
        assert target.read_text() == "mine\n"


LOG_NAMES = ["qemu.cmdline", "gdb.cmdline", "qemu-trace.log", "serial.log", "gdb-mi.log", "qemu.log"]


@pytest.mark.parametrize("name", LOG_NAMES)
def test_planted_links_are_not_followed(img: DiskImage, tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / name).symlink_to(victim)
    with pytest.raises(ConfigError, match="link"):
        Machine(disks=[img], artifacts_dir=logs).start()
    assert victim.read_text() == "precious\n"


def test_start_twice_is_refused(machine_factory: MachineFactory, img: DiskImage) -> None:
    m = machine_factory(disks=[img])
    dirs = _my_rundirs()
    with pytest.raises(HarnessError, match="already started"):
        m.start()
    assert _my_rundirs() == dirs
    assert m.ata.identify(0).sectors == img.sectors


def test_percent_in_the_artifacts_path(tmp_path: Path, img: DiskImage) -> None:
    """QEMU's -D reads `%d` as its pid and refuses other `%`s; the trace still lands here."""
    logs = tmp_path / "100%d-%s"
    m = Machine(disks=[img], artifacts_dir=logs, keep_artifacts=True)
    with m, m.device_trace() as dev:
        m.ata.read(0, 0, 1)
    assert dev.events, "no device events recorded"
    assert (logs / "qemu-trace.log").stat().st_size > 0
    assert "%" in str(m.trace_log)
