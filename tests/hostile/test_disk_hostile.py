"""Bad arguments to DiskImage's public calls (create, DiskImage(), read_sectors, write_sectors,
size): each row is one call a hostile (or careless) user made. Every row must raise
DiskImageError (a HarnessError) whose message names the bad argument, and leave every existing
file in the directory byte-identical, with no file created or removed. No QEMU is started."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import HarnessError
from harness.abi import SECTOR
from harness.disk import DiskImage, DiskImageError

pytestmark = pytest.mark.timeout(20)  # a row that opens the FIFO would block forever

SECTORS = 64
HAVE_QEMU_IMG = shutil.which("qemu-img") is not None


def bad(value: object) -> Any:
    """A value of the wrong type, passed on purpose."""
    return value


@dataclass(frozen=True)
class Env:
    tmp: Path
    raw: DiskImage  # 64 sectors of a pattern
    qcow2: DiskImage  # 64 sectors (a raw image if qemu-img is missing; qcow2 rows then skip)
    fifo: Path
    loop: Path  # a symlink to itself
    fake_qcow2: Path  # named *.qcow2, all zeros
    guest_qcow2_header: Path  # named *.img, a qcow2 header with a backing file at sector 0


@pytest.fixture
def env(tmp_path: Path) -> Env:
    raw = DiskImage.create(tmp_path / "raw.img", size_bytes=SECTORS * SECTOR)
    raw.write_sectors(0, b"".join(bytes([n]) * SECTOR for n in range(SECTORS)))
    qcow2 = raw  # without qemu-img the qcow2 rows skip
    if HAVE_QEMU_IMG:
        qcow2 = DiskImage.create(tmp_path / "disk.qcow2", size_bytes=SECTORS * SECTOR)
    fifo = tmp_path / "pipe.img"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.img"
    os.symlink(loop.name, loop)
    fake = tmp_path / "fake.qcow2"
    fake.write_bytes(bytes(SECTORS * SECTOR))
    guest = tmp_path / "guest.img"
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + (512).to_bytes(8, "big") + (11).to_bytes(4, "big")
    guest.write_bytes(header.ljust(SECTOR, b"\0") + b"/etc/passwd".ljust(SECTOR, b"\0"))
    return Env(tmp_path, raw, qcow2, fifo, loop, fake, guest)


@dataclass(frozen=True)
class Row:
    id: str
    call: Callable[[Env], object]
    names: str  # what the message must contain: the bad argument (or the bad path)
    qcow2: bool = False  # needs a real qcow2 image (qemu-img)


def _size(disk: DiskImage) -> int:
    return disk.size


ROWS = [
    # --- create ---------------------------------------------------------------------------
    Row("create-size_mib-float", lambda e: DiskImage.create(e.tmp / "n.img", size_mib=bad(1.5)), "size_mib"),
    Row("create-size_mib-None", lambda e: DiskImage.create(e.tmp / "n.img", size_mib=bad(None)), "size_mib"),
    Row("create-size_mib-True", lambda e: DiskImage.create(e.tmp / "n.img", size_mib=True), "size_mib"),
    Row("create-size_mib-str", lambda e: DiskImage.create(e.tmp / "n.img", size_mib=bad("8")), "size_mib"),
    Row("create-size_mib-zero", lambda e: DiskImage.create(e.tmp / "n.img", size_mib=0), "size_mib"),
    Row("create-size_mib-negative", lambda e: DiskImage.create(e.tmp / "n.img", size_mib=-1), "size_mib"),
    Row("create-size_mib-2**64", lambda e: DiskImage.create(e.tmp / "n.img", size_mib=2**64), "size_mib"),
    Row("create-size_bytes-odd", lambda e: DiskImage.create(e.tmp / "n.img", size_bytes=1000), "size_bytes"),
    Row(
        "create-size_bytes-float",
        lambda e: DiskImage.create(e.tmp / "n.img", size_bytes=bad(512.0)),
        "size_bytes",
    ),
    Row(
        "create-size_bytes-huge",
        lambda e: DiskImage.create(e.tmp / "n.img", size_bytes=2**63),
        "size_bytes",
    ),
    Row("create-format-vmdk", lambda e: DiskImage.create(e.tmp / "n.img", format="vmdk"), "format"),
    Row("create-format-not-str", lambda e: DiskImage.create(e.tmp / "n.img", format=bad(["raw"])), "format"),
    Row("create-raw-named-qcow2", lambda e: DiskImage.create(e.tmp / "n.qcow2", format="raw"), "format"),
    Row("create-qcow2-named-img", lambda e: DiskImage.create(e.tmp / "n.img", format="qcow2"), "format"),
    Row("create-path-None", lambda e: DiskImage.create(bad(None)), "path"),
    Row("create-path-bytes", lambda e: DiskImage.create(bad(b"n.img")), "path"),
    Row("create-path-NUL", lambda e: DiskImage.create("n\0.img"), "path"),
    Row("create-path-empty", lambda e: DiskImage.create(""), "path"),
    Row(
        "create-overwrite-str", lambda e: DiskImage.create(e.tmp / "n.img", overwrite=bad("yes")), "overwrite"
    ),
    Row("create-existing", lambda e: DiskImage.create(e.raw.path, size_mib=1), "overwrite"),
    Row(
        "create-existing-overwrite-bad-size",
        lambda e: DiskImage.create(e.raw.path, size_mib=bad(1.5), overwrite=True),
        "size_mib",
    ),
    Row(
        "create-existing-overwrite-wrong-format",
        lambda e: DiskImage.create(e.raw.path, size_mib=1, format="qcow2", overwrite=True),
        "format",
    ),
    Row("create-over-fifo", lambda e: DiskImage.create(e.fifo, size_mib=1, overwrite=True), "FIFO"),
    Row("create-over-dir", lambda e: DiskImage.create(e.tmp, size_mib=1, overwrite=True), "directory"),
    Row("create-over-loop", lambda e: DiskImage.create(e.loop, size_mib=1, overwrite=True), "loop.img"),
    Row("create-under-file", lambda e: DiskImage.create(e.raw.path / "n.img", size_mib=1), "raw.img"),
    # --- DiskImage() ----------------------------------------------------------------------
    Row("init-path-None", lambda e: DiskImage(bad(None)), "path"),
    Row("init-path-int", lambda e: DiskImage(bad(3)), "path"),
    Row("init-path-bytes", lambda e: DiskImage(bad(b"raw.img")), "path"),
    Row("init-path-NUL", lambda e: DiskImage(str(e.raw.path) + "\0"), "path"),
    Row("init-path-empty", lambda e: DiskImage(""), "path"),
    Row("init-format-vmdk", lambda e: DiskImage(e.raw.path, format="vmdk"), "format"),
    Row("init-format-not-str", lambda e: DiskImage(e.raw.path, format=bad(7)), "format"),
    Row("init-format-contradicts-name", lambda e: DiskImage(e.raw.path, format="qcow2"), "format"),
    Row("init-raw-named-qcow2", lambda e: DiskImage(e.qcow2.path, format="raw"), "format", qcow2=True),
    Row(
        "init-allow_block_device-str",
        lambda e: DiskImage(e.raw.path, allow_block_device=bad("yes")),
        "allow_block_device",
    ),
    Row("init-allow_backing-int", lambda e: DiskImage(e.raw.path, allow_backing=bad(1)), "allow_backing"),
    # --- read_sectors ---------------------------------------------------------------------
    Row("read-lba-negative", lambda e: e.raw.read_sectors(-1), "lba"),
    Row("read-lba-float", lambda e: e.raw.read_sectors(bad(1.5)), "lba"),
    Row("read-lba-None", lambda e: e.raw.read_sectors(bad(None)), "lba"),
    Row("read-lba-True", lambda e: e.raw.read_sectors(True), "lba"),
    Row("read-lba-str", lambda e: e.raw.read_sectors(bad("0")), "lba"),
    Row("read-lba-past-end", lambda e: e.raw.read_sectors(SECTORS), "lba"),
    Row("read-lba-2**64", lambda e: e.raw.read_sectors(2**64), "lba"),
    Row("read-count-zero", lambda e: e.raw.read_sectors(0, 0), "count"),
    Row("read-count-negative", lambda e: e.raw.read_sectors(0, -1), "count"),
    Row("read-count-float", lambda e: e.raw.read_sectors(0, bad(1.0)), "count"),
    Row("read-count-None", lambda e: e.raw.read_sectors(0, bad(None)), "count"),
    Row("read-count-past-end", lambda e: e.raw.read_sectors(1, SECTORS), "count"),
    Row("read-qcow2-lba-negative", lambda e: e.qcow2.read_sectors(-1), "lba", qcow2=True),
    Row("read-qcow2-count-zero", lambda e: e.qcow2.read_sectors(0, 0), "count", qcow2=True),
    Row("read-qcow2-past-end", lambda e: e.qcow2.read_sectors(SECTORS - 1, 2), "lba", qcow2=True),
    Row("read-fifo", lambda e: DiskImage(e.fifo).read_sectors(0), "pipe.img"),
    Row("read-loop", lambda e: DiskImage(e.loop).read_sectors(0), "loop.img"),
    Row("read-fake-qcow2", lambda e: DiskImage(e.fake_qcow2).read_sectors(0), "fake.qcow2"),
    # --- write_sectors --------------------------------------------------------------------
    Row("write-data-str", lambda e: e.raw.write_sectors(0, bad("x" * SECTOR)), "data"),
    Row("write-data-None", lambda e: e.raw.write_sectors(0, bad(None)), "data"),
    Row("write-data-list", lambda e: e.raw.write_sectors(0, bad([0] * SECTOR)), "data"),
    Row("write-data-empty", lambda e: e.raw.write_sectors(0, b""), "data"),
    Row("write-data-partial", lambda e: e.raw.write_sectors(0, b"x" * 100), "data"),
    Row("write-lba-negative", lambda e: e.raw.write_sectors(-1, bytes(SECTOR)), "lba"),
    Row("write-lba-float", lambda e: e.raw.write_sectors(bad(0.0), bytes(SECTOR)), "lba"),
    Row("write-lba-str", lambda e: e.raw.write_sectors(bad("0"), bytes(SECTOR)), "lba"),
    Row("write-lba-past-end", lambda e: e.raw.write_sectors(SECTORS, bytes(SECTOR)), "lba"),
    Row("write-straddles-end", lambda e: e.raw.write_sectors(SECTORS - 1, b"\xff" * 2 * SECTOR), "lba"),
    Row("write-qcow2", lambda e: e.qcow2.write_sectors(0, b"\xff" * SECTOR), "qcow2", qcow2=True),
    Row("write-fifo", lambda e: DiskImage(e.fifo).write_sectors(0, bytes(SECTOR)), "pipe.img"),
    Row("write-dir", lambda e: DiskImage(e.tmp).write_sectors(0, bytes(SECTOR)), "directory"),
    # --- size -----------------------------------------------------------------------------
    Row("size-missing", lambda e: _size(DiskImage(e.tmp / "missing.img")), "missing.img"),
    Row("size-fifo", lambda e: _size(DiskImage(e.fifo)), "pipe.img"),
    Row("size-dir", lambda e: _size(DiskImage(e.tmp)), "directory"),
    Row("size-loop", lambda e: _size(DiskImage(e.loop)), "loop.img"),
    Row("size-devnull", lambda e: _size(DiskImage(os.devnull)), "/dev/null"),
    Row("size-fake-qcow2", lambda e: _size(DiskImage(e.fake_qcow2)), "fake.qcow2"),
    Row("size-guest-header-named-qcow2", lambda e: _size(_renamed_guest_header(e)), "backing file"),
]


def _renamed_guest_header(e: Env) -> DiskImage:
    """The issue's attack: a raw image the guest wrote a qcow2 header to, later named *.qcow2
    (a hard link, so the directory listing is unchanged apart from this name)."""
    link = e.tmp / "guest-linked.qcow2"
    if not link.exists():
        os.link(e.guest_qcow2_header, link)
    return DiskImage(link)


def _snapshot(tmp: Path) -> dict[str, str | None]:
    """Every entry under tmp: regular files by content hash, others (FIFO, links) by kind only:
    a FIFO is never opened."""
    seen: dict[str, str | None] = {}
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            path = Path(root) / name
            st = os.lstat(path)
            key = str(path.relative_to(tmp))
            if name == "guest-linked.qcow2":
                continue  # made by the row itself
            if stat.S_ISREG(st.st_mode):
                seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[key] = stat.filemode(st.st_mode)[0]
    return seen


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_call_is_refused_and_changes_nothing(env: Env, row: Row) -> None:
    if row.qcow2 and not HAVE_QEMU_IMG:
        pytest.skip("qemu-img is not on PATH")
    before = _snapshot(env.tmp)
    with pytest.raises(DiskImageError) as e:
        row.call(env)
    assert isinstance(e.value, HarnessError)
    assert row.names in str(e.value), f"{row.id}: {e.value}"
    assert _snapshot(env.tmp) == before, f"{row.id} changed a file"


def test_the_guest_header_image_itself_is_plain_raw(env: Env) -> None:
    """The same bytes under a raw name are data: no refusal, and no host file reached."""
    disk = DiskImage(env.guest_qcow2_header)
    assert disk.format == "raw"
    disk.validate()
    assert disk.read_sectors(1)[:11] == b"/etc/passwd"


@pytest.mark.skipif(not HAVE_QEMU_IMG, reason="qemu-img is not on PATH")
def test_rows_cover_a_real_qcow2(env: Env) -> None:
    """The qcow2 rows above ran on a real qcow2: the fixture is what it claims."""
    assert env.qcow2.format == "qcow2"
    assert env.qcow2.size == SECTORS * SECTOR
    out = subprocess.run(
        ["qemu-img", "info", "-f", "qcow2", "-U", str(env.qcow2.path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
