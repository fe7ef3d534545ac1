"""build_command and QemuConfig: the QEMU command line, checked without starting QEMU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.disk import DiskImage
from harness.errors import ConfigError
from harness.faults import Fault
from harness.qemu import QemuConfig, QemuPaths, build_command


@pytest.fixture
def paths(tmp_path: Path) -> QemuPaths:
    run = tmp_path / "run"
    return QemuPaths.under(run, run)


@pytest.fixture
def disks(tmp_path: Path) -> dict[int, DiskImage]:
    return {
        3: DiskImage.create(tmp_path / "disk3.img", size_mib=2),
        0: DiskImage.create(tmp_path / "disk0.img", size_mib=1),
    }


def _values(argv: list[str], flag: str) -> list[str]:
    """Every argument that follows flag."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def _chardev(argv: list[str], ident: str) -> dict[str, str]:
    """The -chardev with id=ident, as {"backend": ..., option: value}."""
    for spec in _values(argv, "-chardev"):
        backend, *options = spec.split(",")
        opts = dict(option.split("=", 1) for option in options)
        if opts.get("id") == ident:
            return {"backend": backend, **opts}
    raise AssertionError(f"no -chardev id={ident} in {argv}")


def _blockdevs(argv: list[str]) -> dict[str, dict[str, Any]]:
    """Every -blockdev (JSON), by node-name."""
    nodes: dict[str, dict[str, Any]] = {}
    for spec in _values(argv, "-blockdev"):
        node = json.loads(spec)
        assert isinstance(node, dict)
        nodes[node["node-name"]] = node
    return nodes


def test_qboot_two_disks(tmp_path: Path, paths: QemuPaths, disks: dict[int, DiskImage]) -> None:
    kernel = tmp_path / "kernel.elf"
    argv = build_command(QemuConfig(kernel=kernel, disks=disks, firmware="qboot"), paths)

    assert argv[0] == "qemu-system-i386"
    assert "-S" in argv  # paused until the harness has GDB attached
    assert "-nodefaults" in argv
    assert _values(argv, "-kernel") == [str(kernel)]
    assert _values(argv, "-bios") == ["/usr/share/qemu/qboot.rom"]
    assert " ".join(argv).count("-bios /usr/share/qemu/qboot.rom") == 1

    # gdbstub and QMP on our unix sockets, never on TCP
    assert not any("tcp" in arg for arg in argv)
    assert _values(argv, "-gdb") == ["chardev:gdb0"]
    gdb = _chardev(argv, "gdb0")
    assert gdb["backend"] == "socket"
    assert gdb["path"] == str(paths.gdb_socket)
    assert gdb["server"] == "on" and gdb["wait"] == "off"
    assert _values(argv, "-mon") == ["chardev=qmp0,mode=control"]
    qmp = _chardev(argv, "qmp0")
    assert qmp["backend"] == "socket"
    assert qmp["path"] == str(paths.qmp_socket)
    assert "server" not in qmp  # QEMU connects to the harness's listening socket
    # COM1: FIFOs ser.in/ser.out in the run directory for m.console, logging everything to serial.log
    serial = _chardev(argv, "ser0")
    assert serial["backend"] == "pipe" and serial["path"] == str(paths.serial_pipe)
    assert serial["logfile"] == str(paths.serial_log) and serial["logappend"] == "on"
    assert paths.rundir is not None
    assert paths.serial_fifos() == (paths.rundir / "ser.in", paths.rundir / "ser.out")
    assert _values(argv, "-serial") == ["chardev:ser0"]
    assert f"mem-path={paths.ram_file}" in _values(argv, "-object")[0]

    # drive 0 is the primary master, drive 3 the secondary slave
    assert _values(argv, "-device") == [
        "ide-hd,id=drive0,drive=disk0,bus=ide.0,unit=0,rerror=report,werror=report",
        "ide-hd,id=drive3,drive=disk3,bus=ide.1,unit=1,rerror=report,werror=report",
    ]
    nodes = _blockdevs(argv)
    assert set(nodes) == {"disk0", "disk3"}
    for drive, disk in disks.items():
        assert nodes[f"disk{drive}"] == {
            "driver": "raw",
            "node-name": f"disk{drive}",
            "file": {"driver": "file", "filename": str(disk.path)},
        }
    assert str(tmp_path / "disk3.img") in " ".join(_values(argv, "-blockdev"))


def test_seabios_has_no_bios_flag(tmp_path: Path, paths: QemuPaths) -> None:
    argv = build_command(QemuConfig(kernel=tmp_path / "kernel.elf"), paths)
    assert "-bios" not in argv
    assert "-blockdev" not in argv and "-device" not in argv  # no disks, no drives
    assert "-S" in argv and "-nodefaults" in argv


@pytest.mark.parametrize(("drive", "bus", "unit"), [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)])
def test_drive_placement(tmp_path: Path, paths: QemuPaths, drive: int, bus: int, unit: int) -> None:
    disk = DiskImage(tmp_path / "d.qcow2", format="qcow2")  # format given: the file need not exist
    argv = build_command(QemuConfig(kernel=tmp_path / "k", disks={drive: disk}), paths)
    assert _values(argv, "-device") == [
        f"ide-hd,id=drive{drive},drive=disk{drive},bus=ide.{bus},unit={unit},rerror=report,werror=report"
    ]
    assert _blockdevs(argv)[f"disk{drive}"]["driver"] == "qcow2"


def test_memory_and_extra_args(tmp_path: Path, paths: QemuPaths) -> None:
    cfg = QemuConfig(
        kernel=tmp_path / "k",
        memory_mib=256,
        qemu_binary="/opt/qemu/bin/qemu-system-i386",
        extra_args=("-d", "guest_errors"),
    )
    argv = build_command(cfg, paths)
    assert argv[0] == "/opt/qemu/bin/qemu-system-i386"
    assert _values(argv, "-m") == ["256M"]
    assert "size=256M" in _values(argv, "-object")[0]
    assert argv[-2:] == ["-d", "guest_errors"]


@pytest.mark.parametrize("drive", [4, -1, 7])
def test_no_such_drive(tmp_path: Path, drive: int) -> None:
    disk = DiskImage(tmp_path / "d.img", format="raw")
    with pytest.raises(ValueError, match=f"drive {drive} does not exist"):
        QemuConfig(kernel=tmp_path / "k", disks={drive: disk})


@pytest.mark.parametrize("firmware", ["ovmf", "", "QBOOT"])
def test_unknown_firmware(tmp_path: Path, firmware: str) -> None:
    with pytest.raises(ValueError, match="unknown firmware"):
        QemuConfig(kernel=tmp_path / "k", firmware=firmware)


def test_comma_in_socket_path_is_escaped(tmp_path: Path) -> None:
    run = tmp_path / "a,b"
    paths = QemuPaths(
        run / "qmp.sock", run / "gdb.sock", run / "ram", run / "serial.log", run / "qemu.log", run / "cmdline"
    )
    argv = build_command(QemuConfig(kernel=tmp_path / "k"), paths)
    assert f"path={str(paths.gdb_socket).replace(',', ',,')}," in " ".join(_values(argv, "-chardev"))
    assert f"file,id=ser0,path={str(paths.serial_log).replace(',', ',,')}," in _values(argv, "-chardev")[-1]
    under = QemuPaths.under(run, run)
    chardevs = " ".join(_values(build_command(QemuConfig(kernel=tmp_path / "k"), under), "-chardev"))
    assert f"logfile={str(under.serial_log).replace(',', ',,')}," in chardevs


def test_volatile_drive_logs_writes_over_an_overlay_of_the_image(tmp_path: Path, paths: QemuPaths) -> None:
    """write_cache="volatile": format node, then (with faults) blkdebug, so a write it fails is
    never logged, then blklogwrites (log in the run directory, 512-byte log sectors = LBAs),
    then a qcow2 overlay in the run directory whose backing is the image: QEMU never writes
    the image itself. Other drives are as before."""
    disks = {0: DiskImage(tmp_path / "a.img", format="raw"), 1: DiskImage(tmp_path / "b.img", format="raw")}
    cfg = QemuConfig(kernel=tmp_path / "k", disks=disks, write_cache={0: "volatile", 1: "writethrough"})
    nodes = _blockdevs(build_command(cfg, paths))
    image = {"driver": "file", "filename": str(disks[0].path)}
    logged = {
        "driver": "blklogwrites",
        "file": {
            "driver": "qcow2",
            "file": {"driver": "file", "filename": str(paths.cache_overlay(0))},
            "backing": {"driver": "raw", "file": image},
        },
        "log": {"driver": "file", "filename": str(paths.write_log(0))},
        "log-sector-size": 512,
    }
    assert nodes["disk0"] == {"driver": "raw", "node-name": "disk0", "file": logged}
    assert nodes["disk1"]["file"] == {"driver": "file", "filename": str(disks[1].path)}
    assert (
        paths.rundir is not None
        and paths.write_log(0).parent == paths.rundir == paths.cache_overlay(0).parent
    )

    faulty = QemuConfig(
        kernel=tmp_path / "k", disks=disks, write_cache={0: "volatile"}, faults={0: [Fault("read")]}
    )
    top = _blockdevs(build_command(faulty, paths))["disk0"]["file"]
    assert top["driver"] == "blkdebug" and top["image"] == logged


@pytest.mark.parametrize(
    ("write_cache", "fmt", "message"),
    [
        ({0: "volatile"}, "qcow2", "needs a raw image"),
        ({0: "fast"}, "raw", "not one of writethrough, volatile"),
        ({2: "volatile"}, "raw", "drive 2, which has no disk"),
    ],
)
def test_write_cache_config_is_checked(
    tmp_path: Path, write_cache: dict[int, str], fmt: str, message: str
) -> None:
    disk = DiskImage(tmp_path / f"d.{'qcow2' if fmt == 'qcow2' else 'img'}", format=fmt)
    with pytest.raises(ConfigError, match=message):
        QemuConfig(kernel=tmp_path / "k", disks={0: disk}, write_cache=write_cache)
