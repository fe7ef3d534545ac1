"""Disk images: create them, validate them, and read them from the host's side."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

from harness.errors import HarnessError

log = logging.getLogger(__name__)

SECTOR = 512
QCOW2_MAGIC = b"QFI\xfb"
QEMU_IMG_TIMEOUT = 30.0
FORMATS = ("raw", "qcow2")


class DiskImageError(HarnessError):
    """A disk image is missing, malformed, or not safe to use."""


class DiskImage:
    """A disk image file on the host: what a Machine attaches as a drive.

    `DiskImage(path)` wraps an existing file (raw or qcow2, detected by its header);
    `DiskImage.create(path, size_mib=64)` makes a new one.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, format: str | None = None, allow_block_device: bool = False
    ) -> None:
        self.path = Path(path).absolute()
        self.allow_block_device = allow_block_device
        if format is not None and format not in FORMATS:
            raise DiskImageError(f"unknown image format {format!r}; use one of {', '.join(FORMATS)}")
        self._format = format

    def __repr__(self) -> str:
        return f"DiskImage({str(self.path)!r}, format={self.format!r})"

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        size_mib: int = 64,
        *,
        format: str = "raw",
        size_bytes: int | None = None,
        overwrite: bool = False,
    ) -> DiskImage:
        """Make a new, zero-filled (sparse) image of size_mib MiB, or size_bytes exactly."""
        size = size_bytes if size_bytes is not None else size_mib * 1024 * 1024
        target = Path(path)
        if format not in FORMATS:
            raise DiskImageError(f"unknown image format {format!r}; use one of {', '.join(FORMATS)}")
        if size <= 0 or size % SECTOR:
            raise DiskImageError(f"image size {size} is not a positive multiple of {SECTOR} bytes")
        if target.exists() and not overwrite:
            raise DiskImageError(f"{target} already exists; pass overwrite=True or wrap it with DiskImage()")
        target.parent.mkdir(parents=True, exist_ok=True)
        if format == "raw":
            with open(target, "wb") as f:
                f.truncate(size)
        else:
            _qemu_img(["create", "-q", "-f", "qcow2", str(target), str(size)])
        return cls(target, format=format)

    @property
    def format(self) -> str:
        """raw or qcow2. Without an explicit format the file's header and its name must agree:
        a raw image whose guest wrote a qcow2 header to sector 0 is never taken for qcow2."""
        if self._format is None:
            try:
                with open(self.path, "rb") as f:
                    header_qcow2 = f.read(4) == QCOW2_MAGIC
            except FileNotFoundError:
                raise DiskImageError(
                    f"disk image {self.path} does not exist; make one with DiskImage.create()"
                ) from None
            named_qcow2 = self.path.suffix == ".qcow2"
            if header_qcow2 != named_qcow2:
                raise DiskImageError(
                    f"{self.path} {'has' if header_qcow2 else 'lacks'} a qcow2 header but is "
                    f"{'not ' if header_qcow2 else ''}named *.qcow2; say which it is: "
                    "DiskImage(path, format='raw' or 'qcow2')"
                )
            self._format = "qcow2" if header_qcow2 else "raw"
        return self._format

    @property
    def size(self) -> int:
        """Virtual size in bytes (what the guest sees)."""
        if self.format == "raw":
            return self.path.stat().st_size
        info = json.loads(_qemu_img(["info", "--output=json", "-U", "-f", "qcow2", str(self.path)]))
        return int(info["virtual-size"])

    @property
    def sectors(self) -> int:
        return self.size // SECTOR

    def validate(self) -> None:
        """Refuse what QEMU must not be given: missing files, devices, odd sizes."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise DiskImageError(
                f"disk image {self.path} does not exist; make one with DiskImage.create()"
            ) from None
        if stat.S_ISBLK(st.st_mode):
            if not self.allow_block_device:
                raise DiskImageError(
                    f"{self.path} is a block device; pass allow_block_device=True if you really "
                    "mean to let the guest write to it"
                )
        elif not stat.S_ISREG(st.st_mode):
            raise DiskImageError(f"{self.path} is not a regular file or block device")
        if self.format == "raw" and stat.S_ISREG(st.st_mode) and (st.st_size == 0 or st.st_size % SECTOR):
            raise DiskImageError(
                f"disk image {self.path} is {st.st_size} bytes, not a positive multiple of {SECTOR}"
            )
        holder = _qemu_lock_holder(self.path)
        if holder is not None:
            raise DiskImageError(
                f"disk image {self.path} is in use by another QEMU "
                f"({'it' if holder < 0 else f'pid {holder}'} holds its image lock); "
                "close that machine first, or give this one a copy"
            )

    def _check_range(self, lba: int, count: int) -> None:
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise DiskImageError(
                f"sectors {lba}..{lba + count - 1} are outside {self.path} ({self.sectors} sectors)"
            )

    def read_sectors(self, lba: int, count: int = 1) -> bytes:
        """The host's view of sectors lba..lba+count-1, no QEMU involved."""
        self._check_range(lba, count)
        if self.format == "raw":
            with open(self.path, "rb") as f:
                f.seek(lba * SECTOR)
                return f.read(count * SECTOR)
        # A raw view (offset, size) over the qcow2 node: qemu-img converts just those bytes.
        # (qemu-img dd's skip/count differ between versions.) Paths with commas are doubled.
        opts = (
            f"driver=raw,offset={lba * SECTOR},size={count * SECTOR},file.driver=qcow2,"
            f"file.file.filename={str(self.path).replace(',', ',,')}"
        )
        with tempfile.TemporaryDirectory(prefix="piix3-read-") as tmp:
            out = Path(tmp) / "range.raw"
            _qemu_img(["convert", "-U", "--image-opts", opts, "-O", "raw", str(out)])
            data = out.read_bytes()
        if len(data) != count * SECTOR:
            raise DiskImageError(f"read {len(data)} of {count * SECTOR} bytes at LBA {lba} of {self.path}")
        return data

    def write_sectors(self, lba: int, data: bytes) -> None:
        """Write sectors host-side (raw images only), for setting up a test's starting state."""
        if len(data) % SECTOR:
            raise DiskImageError(f"data is {len(data)} bytes, not a multiple of {SECTOR}")
        if self.format != "raw":
            raise DiskImageError("write_sectors works on raw images only")
        self._check_range(lba, len(data) // SECTOR)
        with open(self.path, "r+b") as f:
            f.seek(lba * SECTOR)
            f.write(data)


# QEMU's file driver takes open-file-description locks on bytes 100.. (permissions it holds)
# and 200.. (permissions it refuses to share) of every image it opens.
_QEMU_LOCK_START = 100
_QEMU_LOCK_LEN = 200
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86_64: type, whence, start, len, pid


def _qemu_lock_holder(path: Path) -> int | None:
    """The pid holding a QEMU image lock on path (-1 if unknown), or None if it is free."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _QEMU_LOCK_START, _QEMU_LOCK_LEN, 0)
        lock_type, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if lock_type == fcntl.F_UNLCK else pid


def _qemu_img(args: list[str]) -> str:
    cmd = ["qemu-img", *args]
    log.debug("running %s", cmd)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT, check=False)
    except FileNotFoundError:
        raise DiskImageError("qemu-img not found; run `make deps` (package qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise DiskImageError(f"{' '.join(cmd)} took longer than {QEMU_IMG_TIMEOUT} s") from None
    if done.returncode:
        raise DiskImageError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout
