"""DiskImage: creating, validating and reading images host-side (raw, and qcow2 via qemu-img)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

import harness.disk
from harness.abi import SECTOR
from harness.disk import DiskImage, DiskImageError
from harness.errors import HarnessError

MIB = 1024 * 1024
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not on PATH")


@pytest.fixture
def raw(tmp_path: Path) -> DiskImage:
    return DiskImage.create(tmp_path / "raw.img", size_bytes=64 * SECTOR)


# --- create -------------------------------------------------------------------------------------


def test_create_raw_is_sparse_and_exact(tmp_path: Path) -> None:
    disk = DiskImage.create(tmp_path / "sub" / "disk.img", size_mib=8)
    st = os.stat(disk.path)
    assert st.st_size == 8 * MIB
    assert st.st_blocks * 512 < st.st_size  # sparse: truncate, no zeros written
    assert disk.path.is_absolute()
    assert disk.format == "raw"
    assert disk.size == 8 * MIB
    assert disk.sectors == 8 * MIB // SECTOR
    disk.validate()


@pytest.mark.parametrize("size_bytes", [SECTOR, 3 * SECTOR, 1000 * SECTOR])
def test_create_exact_size_bytes(tmp_path: Path, size_bytes: int) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_bytes=size_bytes)
    assert disk.path.stat().st_size == size_bytes
    assert disk.read_sectors(0, size_bytes // SECTOR) == bytes(size_bytes)


def test_create_refuses_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    path.write_bytes(b"precious" * 64)
    with pytest.raises(DiskImageError, match="already exists"):
        DiskImage.create(path, size_mib=1)
    assert path.read_bytes() == b"precious" * 64
    disk = DiskImage.create(path, size_mib=1, overwrite=True)
    assert disk.size == MIB
    assert disk.read_sectors(0) == bytes(SECTOR)


@pytest.mark.parametrize("size_bytes", [1, 511, 513, 1000, 0, -512])
def test_create_refuses_bad_size(tmp_path: Path, size_bytes: int) -> None:
    path = tmp_path / "d.img"
    with pytest.raises(DiskImageError, match="multiple of 512"):
        DiskImage.create(path, size_bytes=size_bytes)
    assert not path.exists()


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DiskImageError, match="unknown image format"):
        DiskImage.create(tmp_path / "d.vmdk", format="vmdk")
    with pytest.raises(DiskImageError, match="unknown image format"):
        DiskImage(tmp_path / "d.vmdk", format="vmdk")
    assert not (tmp_path / "d.vmdk").exists()


def test_disk_image_error_is_harness_error() -> None:
    assert issubclass(DiskImageError, HarnessError)


# --- validate -----------------------------------------------------------------------------------


def test_validate_missing(tmp_path: Path) -> None:
    with pytest.raises(DiskImageError, match="does not exist"):
        DiskImage(tmp_path / "nope.img").validate()


@pytest.mark.parametrize("size", [0, 1, 511, 1000, 64 * SECTOR + 1])
def test_validate_odd_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(b"\x01" * size)
    with pytest.raises(DiskImageError, match="not a positive multiple of 512"):
        DiskImage(path).validate()


def test_validate_directory(tmp_path: Path) -> None:
    with pytest.raises(DiskImageError, match="not a regular file"):
        DiskImage(tmp_path).validate()


def test_validate_char_device() -> None:
    with pytest.raises(DiskImageError, match="not a regular file"):
        DiskImage(os.devnull).validate()
    with pytest.raises(DiskImageError, match="not a regular file"):
        DiskImage(os.devnull, allow_block_device=True).validate()


def test_validate_good_image(raw: DiskImage) -> None:
    raw.validate()
    DiskImage(raw.path).validate()  # wrapped, format detected


# --- reading and writing ----------------------------------------------------------------------


def test_round_trip(raw: DiskImage) -> None:
    data = bytes(range(256)) * 2 * 3  # three sectors
    raw.write_sectors(5, data)
    assert raw.read_sectors(5, 3) == data
    assert raw.read_sectors(6) == data[SECTOR : 2 * SECTOR]
    assert raw.read_sectors(4) == bytes(SECTOR)
    assert raw.read_sectors(8) == bytes(SECTOR)
    # a fresh wrapper over the same file sees the same bytes
    assert DiskImage(raw.path).read_sectors(5, 3) == data
    assert raw.path.stat().st_size == 64 * SECTOR  # writing did not grow the file


def test_last_sector(raw: DiskImage) -> None:
    last = raw.sectors - 1
    raw.write_sectors(last, b"\xaa" * SECTOR)
    assert raw.read_sectors(last) == b"\xaa" * SECTOR
    assert raw.read_sectors(0, raw.sectors)[-SECTOR:] == b"\xaa" * SECTOR


@pytest.mark.parametrize(("lba", "count"), [(64, 1), (63, 2), (0, 65), (-1, 1), (1 << 40, 1)])
def test_read_out_of_range(raw: DiskImage, lba: int, count: int) -> None:
    with pytest.raises(DiskImageError, match="outside"):
        raw.read_sectors(lba, count)


@pytest.mark.parametrize("count", [0, -1])
def test_read_needs_a_positive_count(raw: DiskImage, count: int) -> None:
    with pytest.raises(DiskImageError, match=f"count {count} is not a positive"):
        raw.read_sectors(0, count)


def test_write_out_of_range(raw: DiskImage) -> None:
    with pytest.raises(DiskImageError, match="outside"):
        raw.write_sectors(63, bytes(2 * SECTOR))
    assert raw.path.stat().st_size == 64 * SECTOR
    assert raw.read_sectors(63) == bytes(SECTOR)


def test_write_partial_sector(raw: DiskImage) -> None:
    with pytest.raises(DiskImageError, match="not a positive multiple of 512"):
        raw.write_sectors(0, b"x" * 100)
    assert raw.read_sectors(0) == bytes(SECTOR)


# --- qcow2 ----------------------------------------------------------------------------------------


@pytest.fixture
def qcow2(tmp_path: Path) -> DiskImage:
    return DiskImage.create(tmp_path / "disk.qcow2", size_mib=4, format="qcow2")


@needs_qemu_img
def test_qcow2_create_and_detect(qcow2: DiskImage) -> None:
    assert qcow2.path.read_bytes()[:4] == b"QFI\xfb"
    assert qcow2.path.stat().st_size < 4 * MIB  # only metadata is allocated
    wrapped = DiskImage(qcow2.path)
    assert wrapped.format == "qcow2"
    assert wrapped.size == 4 * MIB  # the virtual size, from qemu-img info
    assert wrapped.sectors == 4 * MIB // SECTOR
    wrapped.validate()
    assert "qcow2" in repr(wrapped)


@needs_qemu_img
def test_qcow2_reads_zeros(qcow2: DiskImage) -> None:
    assert qcow2.read_sectors(0) == bytes(SECTOR)
    assert qcow2.read_sectors(0, 16) == bytes(16 * SECTOR)
    with pytest.raises(DiskImageError, match="outside"):
        qcow2.read_sectors(qcow2.sectors, 1)


@pytest.fixture
def qcow2_pattern(tmp_path: Path) -> DiskImage:
    """A 16-sector qcow2 image whose sector n is filled with the byte n, converted from raw."""
    src = DiskImage.create(tmp_path / "pattern.raw", size_bytes=16 * SECTOR)
    src.write_sectors(0, b"".join(bytes([n]) * SECTOR for n in range(16)))
    out = tmp_path / "pattern.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(src.path), str(out)],
        check=True,
        timeout=30,
    )
    return DiskImage(out)


@needs_qemu_img
def test_qcow2_reads_data(qcow2_pattern: DiskImage) -> None:
    assert qcow2_pattern.format == "qcow2"
    assert qcow2_pattern.sectors == 16
    assert qcow2_pattern.read_sectors(0, 3) == b"\x00" * SECTOR + b"\x01" * SECTOR + b"\x02" * SECTOR


@needs_qemu_img
def test_qcow2_is_read_only_host_side(qcow2: DiskImage) -> None:
    with pytest.raises(DiskImageError, match="raw images only"):
        qcow2.write_sectors(0, bytes(SECTOR))


@needs_qemu_img
def test_qcow2_refuses_bad_size(tmp_path: Path) -> None:
    with pytest.raises(DiskImageError, match="multiple of 512"):
        DiskImage.create(tmp_path / "d.qcow2", size_bytes=1000, format="qcow2")


@needs_qemu_img
def test_qcow2_reads_away_from_sector_zero(qcow2: DiskImage, qcow2_pattern: DiskImage) -> None:
    # qemu-img 7.2 gives 2 sectors (2 and 3) here, and none at all for lba >= count
    assert qcow2_pattern.read_sectors(2, 4) == b"".join(bytes([n]) * SECTOR for n in range(2, 6))
    assert qcow2.read_sectors(100, 4) == bytes(4 * SECTOR)


# --- hostile input (issue 10) -----------------------------------------------------------------
# A: the format is the file's name, never its content; qcow2 images may not reach other files.


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, timeout=30, capture_output=True)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file the guest must never see or change."""
    path = tmp_path / "secret.raw"
    path.write_bytes(b"SECRET HOST DATA".ljust(SECTOR, b"!") * 8)
    return path


@pytest.fixture
def with_backing(tmp_path: Path, secret: Path) -> Path:
    """A qcow2 whose header names a backing file: reading it reads the secret."""
    path = tmp_path / "child.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(path), str(8 * SECTOR))
    return path


@pytest.fixture
def with_data_file(tmp_path: Path, secret: Path) -> Path:
    """A qcow2 whose header sets the external data file bit: the guest's writes land in secret."""
    path = tmp_path / "data.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={secret}", str(path), str(8 * SECTOR))
    return path


@pytest.mark.parametrize(("name", "fmt"), [("x.qcow2", "raw"), ("x.img", "qcow2"), ("x", "qcow2")])
def test_create_refuses_name_format_mismatch(tmp_path: Path, name: str, fmt: str) -> None:
    with pytest.raises(DiskImageError, match=r"name.*format|format.*name") as e:
        DiskImage.create(tmp_path / name, size_mib=1, format=fmt)
    assert name in str(e.value)
    assert not (tmp_path / name).exists()


@needs_qemu_img
def test_create_format_follows_name(tmp_path: Path) -> None:
    assert DiskImage.create(tmp_path / "a.qcow2", size_mib=1).path.read_bytes()[:4] == b"QFI\xfb"
    assert DiskImage.create(tmp_path / "a.qcow2", size_mib=1, overwrite=True).format == "qcow2"
    assert DiskImage.create(tmp_path / "a.img", size_mib=1).format == "raw"


@needs_qemu_img
@pytest.mark.parametrize(("name", "fmt"), [("x.qcow2", "raw"), ("x.img", "qcow2")])
def test_explicit_format_contradicting_name_is_refused(tmp_path: Path, name: str, fmt: str) -> None:
    with pytest.raises(DiskImageError, match="format") as e:
        DiskImage(tmp_path / name, format=fmt)
    assert name in str(e.value)


@needs_qemu_img
def test_guest_written_qcow2_header_in_a_raw_image_stays_raw(with_backing: Path, tmp_path: Path) -> None:
    """What a guest writes to LBA 0 of a raw image is data: never a format, never a backing file."""
    header = with_backing.read_bytes()[: 4 * SECTOR]
    disk = DiskImage.create(tmp_path / "guest.img", size_bytes=8 * SECTOR)
    disk.write_sectors(0, header)
    wrapped = DiskImage(disk.path)
    assert wrapped.format == "raw"
    wrapped.validate()
    assert wrapped.size == 8 * SECTOR
    assert wrapped.read_sectors(0, 4) == header  # the bytes the guest wrote, not the secret
    assert wrapped.blockdev_extra() == {}


@needs_qemu_img
def test_qcow2_backing_file_is_refused(with_backing: Path, secret: Path) -> None:
    before = secret.read_bytes()
    disk = DiskImage(with_backing)
    for use in (disk.validate, lambda: disk.size, lambda: disk.read_sectors(0, 1)):
        with pytest.raises(DiskImageError, match="backing file") as e:
            use()
        assert str(with_backing) in str(e.value)
        assert "allow_backing" in str(e.value)
    assert secret.read_bytes() == before


@needs_qemu_img
def test_qcow2_backing_file_when_allowed(with_backing: Path, secret: Path) -> None:
    disk = DiskImage(with_backing, allow_backing=True)
    disk.validate()
    assert disk.size == 8 * SECTOR
    assert disk.read_sectors(0, 1) == secret.read_bytes()[:SECTOR]
    assert disk.blockdev_extra() == {}


@needs_qemu_img
def test_qcow2_external_data_file_is_always_refused(with_data_file: Path, secret: Path) -> None:
    before = secret.read_bytes()
    for allow in (False, True):
        disk = DiskImage(with_data_file, allow_backing=allow)
        for use in (disk.validate, lambda d=disk: d.size, lambda d=disk: d.read_sectors(0, 1)):
            with pytest.raises(DiskImageError, match="external data file") as e:
                use()
            assert str(with_data_file) in str(e.value)
    assert secret.read_bytes() == before


@needs_qemu_img
def test_qcow2_blockdev_extra_keeps_qemu_off_the_backing_chain(qcow2: DiskImage, raw: DiskImage) -> None:
    assert qcow2.blockdev_extra() == {"backing": None}
    assert raw.blockdev_extra() == {}


def test_qcow2_name_needs_qcow2_magic(tmp_path: Path) -> None:
    path = tmp_path / "fake.qcow2"
    path.write_bytes(bytes(8 * SECTOR))
    disk = DiskImage(path)
    assert disk.format == "qcow2"  # the name says so ...
    for use in (disk.validate, lambda: disk.size, lambda: disk.read_sectors(0)):
        with pytest.raises(DiskImageError, match="magic"):  # ... and the content must agree
            use()


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"QFI\xfb", "truncated"),
        (b"QFI\xfb" + struct.pack(">I", 1) + bytes(96), "version 1"),
        (b"QFI\xfb" + struct.pack(">I", 3) + bytes(40), "truncated"),
        (b"QFI\xfb" + struct.pack(">IQIIQ", 2, 0, 0, 16, 1000) + bytes(40), "1000 bytes"),
        (b"QFI\xfb" + struct.pack(">IQIIQ", 2, 0, 0, 16, 1 << 62) + bytes(40), "more than an ATA drive"),
    ],
    ids=["magic-only", "version-1", "short-v3", "odd-size", "huge-size"],
)
def test_qcow2_malformed_headers(tmp_path: Path, header: bytes, why: str) -> None:
    path = tmp_path / "bad.qcow2"
    path.write_bytes(header)
    with pytest.raises(DiskImageError, match=why):
        DiskImage(path).validate()


@needs_qemu_img
def test_qcow2_size_from_the_header_no_subprocess(qcow2: DiskImage, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("size ran a subprocess")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert qcow2.size == 4 * MIB
    qcow2.validate()


@needs_qemu_img
def test_qcow2_host_reads_name_the_format_and_no_backing(
    qcow2: DiskImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    real = harness.disk._qemu_img

    def spy(args: list[str]) -> str:
        seen.append(args)
        return real(args)

    monkeypatch.setattr(harness.disk, "_qemu_img", spy)
    assert qcow2.read_sectors(3, 2) == bytes(2 * SECTOR)
    (args,) = seen
    assert args[args.index("-f") + 1] == "raw"
    spec = next(a for a in args if a.startswith("json:"))
    node = json.loads(spec[len("json:") :])
    assert node["file"]["driver"] == "qcow2"
    assert node["file"]["backing"] is None
    assert node["file"]["file"] == {"driver": "file", "filename": str(qcow2.path)}


@needs_qemu_img
def test_qcow2_path_with_comma_and_colon(tmp_path: Path) -> None:
    disk = DiskImage.create(tmp_path / "a,b:c.qcow2", size_mib=1)
    assert disk.read_sectors(0) == bytes(SECTOR)


# B: nothing that is not a regular file is opened; bad paths and sizes are DiskImageErrors.


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.img"
    os.mkfifo(path)
    return path


@pytest.mark.timeout(20)
def test_fifo_is_refused_without_blocking(fifo: Path) -> None:
    disk = DiskImage(fifo)
    assert disk.format == "raw"  # from the name: nothing opened
    for use in (
        disk.validate,
        lambda: disk.size,
        lambda: disk.read_sectors(0),
        lambda: disk.write_sectors(0, bytes(SECTOR)),
    ):
        with pytest.raises(DiskImageError, match="FIFO") as e:
            use()
        assert str(fifo) in str(e.value)
    qfifo = fifo.with_suffix(".qcow2")
    os.mkfifo(qfifo)
    with pytest.raises(DiskImageError, match="FIFO"):
        _ = DiskImage(qfifo).size


@pytest.mark.timeout(20)
def test_lock_probe_never_opens_a_fifo(fifo: Path) -> None:
    assert harness.disk._qemu_lock_holder(fifo) is None


@pytest.mark.timeout(20)
def test_machine_with_a_fifo_and_faults_is_refused_before_anything_starts(tmp_path: Path, fifo: Path) -> None:
    from harness import procs
    from harness.machine import Machine

    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(b"\x7fELF")
    started = len(procs.STARTED_CHILDREN)
    m = Machine(disks=[DiskImage(fifo)], faults={0: []}, kernel=kernel)
    with pytest.raises(DiskImageError, match="FIFO"):
        m.start()
    assert len(procs.STARTED_CHILDREN) == started


@pytest.mark.timeout(20)
def test_create_refuses_to_overwrite_a_fifo(fifo: Path) -> None:
    with pytest.raises(DiskImageError, match="FIFO"):
        DiskImage.create(fifo, size_mib=1, overwrite=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_symlink_loop(tmp_path: Path) -> None:
    loop = tmp_path / "loop.img"
    os.symlink(loop.name, loop)
    disk = DiskImage(loop)
    for use in (disk.validate, lambda: disk.size, lambda: disk.read_sectors(0)):
        with pytest.raises(DiskImageError, match="symbolic links") as e:
            use()
        assert str(loop) in str(e.value)
    with pytest.raises(DiskImageError, match=str(loop)):
        DiskImage.create(loop, size_mib=1, overwrite=True)


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "dangling.img"
    os.symlink("missing.img", link)
    with pytest.raises(DiskImageError, match="does not exist"):
        DiskImage(link).validate()
    with pytest.raises(DiskImageError, match="already exists"):
        DiskImage.create(link, size_mib=1)
    assert not (tmp_path / "missing.img").exists()


def test_nul_in_path() -> None:
    with pytest.raises(DiskImageError, match="NUL"):
        DiskImage("a\0b.img")
    with pytest.raises(DiskImageError, match="NUL"):
        DiskImage.create("a\0b.img", size_mib=1)


@pytest.mark.parametrize("size_mib", [1.5, None, True, False, 0, -1, 2**64, "64", 64.0])
def test_create_refuses_bad_size_mib(tmp_path: Path, size_mib: object) -> None:
    path = tmp_path / "d.img"
    with pytest.raises(DiskImageError, match="size_mib"):
        DiskImage.create(path, size_mib=size_mib)  # type: ignore[arg-type]
    assert not path.exists()


@pytest.mark.parametrize("size_bytes", [512.0, True, 2**64, (1 << 48) * SECTOR + SECTOR])
def test_create_refuses_bad_size_bytes(tmp_path: Path, size_bytes: object) -> None:
    path = tmp_path / "d.img"
    with pytest.raises(DiskImageError, match="size_bytes"):
        DiskImage.create(path, size_bytes=size_bytes)  # type: ignore[arg-type]
    assert not path.exists()


def test_create_enospc_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "ftruncate", full)
    path = tmp_path / "d.img"
    with pytest.raises(DiskImageError, match="No space left") as e:
        DiskImage.create(path, size_mib=1)
    assert str(path) in str(e.value)
    assert not path.exists(), "a half-made image is removed"


def test_create_under_a_file_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DiskImageError) as e:
        DiskImage.create(tmp_path / "file" / "d.img", size_mib=1)
    assert str(tmp_path / "file") in str(e.value)


def test_read_and_write_io_errors_name_the_path(raw: DiskImage, monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(*args: object) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", eio)
    monkeypatch.setattr(os, "pwrite", eio)
    for use in (lambda: raw.read_sectors(0), lambda: raw.write_sectors(0, bytes(SECTOR))):
        with pytest.raises(DiskImageError, match="Input/output error") as e:
            use()
        assert str(raw.path) in str(e.value)
