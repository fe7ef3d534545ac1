"""DiskImage: creating, validating and reading images host-side (raw, and qcow2 via qemu-img)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.disk import SECTOR, DiskImage, DiskImageError
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


@pytest.mark.parametrize(("lba", "count"), [(64, 1), (63, 2), (0, 65), (-1, 1), (0, -1), (1 << 40, 1)])
def test_read_out_of_range(raw: DiskImage, lba: int, count: int) -> None:
    with pytest.raises(DiskImageError, match="outside"):
        raw.read_sectors(lba, count)


def test_write_out_of_range(raw: DiskImage) -> None:
    with pytest.raises(DiskImageError, match="outside"):
        raw.write_sectors(63, bytes(2 * SECTOR))
    assert raw.path.stat().st_size == 64 * SECTOR
    assert raw.read_sectors(63) == bytes(SECTOR)


def test_write_partial_sector(raw: DiskImage) -> None:
    with pytest.raises(DiskImageError, match="not a multiple of 512"):
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
