"""Disk images: create them, validate them, and read them from the host's side.

The rules that keep a guest inside its own disk:

- An image's format is its file *name*: `*.qcow2` is qcow2, anything else raw. It is never
  guessed from content, since a guest writes whatever it likes to sector 0 of a raw image
  (a qcow2 header naming a backing file included), and such a file stays raw. An explicit
  `format=` must agree with the name.
- Nothing that is not a regular file (or a block device, with `allow_block_device=True`) is
  ever opened: FIFOs, directories, sockets and character devices are refused after a stat.
- A qcow2 image's header is read here, in Python, before anything else (qemu-img, QEMU) sees
  it: it must carry the qcow2 magic, and a backing file is refused unless
  `allow_backing=True`. An external data file is always refused. QEMU and qemu-img are told
  the format explicitly and, unless a backing file is allowed, `"backing": null`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.abi import SECTOR
from harness.errors import HarnessError

log = logging.getLogger(__name__)

QCOW2_MAGIC = b"QFI\xfb"
QEMU_IMG_TIMEOUT = 30.0
FORMATS = ("raw", "qcow2")
MIB = 1024 * 1024
# LBA48 addresses 2^48 sectors: no ATA drive, and so no image here, is larger.
MAX_IMAGE_BYTES = (1 << 48) * SECTOR

# qcow2 header, big-endian: magic, version, backing_file_offset, backing_file_size,
# cluster_bits, size (virtual, bytes); version 3 adds incompatible_features at byte 72.
_QCOW2_HEAD = struct.Struct(">4sIQIIQ")
_QCOW2_V2_LEN = 72
_QCOW2_V3_LEN = 104
_QCOW2_INCOMPAT_OFFSET = 72
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_MAX_BACKING_NAME = 1023  # QEMU refuses longer names


class DiskImageError(HarnessError):
    """A disk image is missing, malformed, or not safe to use."""


@dataclass(frozen=True)
class Qcow2Header:
    """What the harness needs from a qcow2 header (read in Python, no qemu-img)."""

    version: int
    size: int  # virtual size in bytes
    backing_file: str | None  # the name the header gives, None if there is none
    external_data_file: bool


def format_for_name(path: str | os.PathLike[str]) -> str:
    """The format an image's name records: qcow2 for `*.qcow2`, raw for anything else."""
    return "qcow2" if Path(path).suffix.lower() == ".qcow2" else "raw"


def _as_path(path: object, what: str = "path") -> Path:
    if isinstance(path, bytes) or not isinstance(path, str | os.PathLike):
        raise DiskImageError(f"{what} must be a str or os.PathLike, not {type(path).__name__}")
    try:
        text = os.fspath(path)
    except TypeError as exc:
        raise DiskImageError(f"{what} {path!r}: {exc}") from None
    if not isinstance(text, str):
        raise DiskImageError(f"{what} must name a file as text, not {type(text).__name__}")
    if "\0" in text:
        raise DiskImageError(f"{what} {text!r} contains a NUL byte; no file can have that name")
    if not text:
        raise DiskImageError(f"{what} is empty")
    try:
        return Path(text).absolute()
    except OSError as exc:  # the working directory is gone
        raise DiskImageError(f"{what} {text!r}: {exc.strerror}") from None


def _check_format(format: object, path: Path) -> str:
    named = format_for_name(path)
    if format is None:
        return named
    if not isinstance(format, str) or format not in FORMATS:
        raise DiskImageError(f"unknown image format {format!r}; use one of {', '.join(FORMATS)}")
    if format != named:
        raise DiskImageError(
            f"format={format!r} contradicts the name of {path}, which records {named}: "
            "an image's name is the record of its format (*.qcow2 is qcow2, anything else raw), "
            f"so name it {path.stem}{'.qcow2' if format == 'qcow2' else '.img'} or leave format= out"
        )
    return format


def _check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise DiskImageError(f"{what} must be True or False, not {value!r}")
    return value


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DiskImageError(f"{what} must be an int, not {type(value).__name__} ({value!r})")
    return value


def _image_size(size_mib: object, size_bytes: object) -> int:
    if size_bytes is not None:
        what, size = "size_bytes", _check_int(size_bytes, "size_bytes")
    else:
        what, size = "size_mib", _check_int(size_mib, "size_mib") * MIB
    if size <= 0 or size % SECTOR:
        raise DiskImageError(
            f"{what}={size_bytes if size_bytes is not None else size_mib}: image size {size} is not "
            f"a positive multiple of {SECTOR} bytes"
        )
    if size > MAX_IMAGE_BYTES:
        raise DiskImageError(
            f"{what}={size_bytes if size_bytes is not None else size_mib}: {size} bytes is more "
            f"than an ATA drive can address (2^48 sectors, {MAX_IMAGE_BYTES} bytes)"
        )
    return size


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISREG, "regular file"),
    ):
        if test(mode):
            return name
    return "special file"


class DiskImage:
    """A disk image file on the host: what a Machine attaches as a drive.

    `DiskImage(path)` wraps an existing file; its format is its name's (`*.qcow2` is qcow2,
    anything else raw), and `format=`, if given, must agree. `DiskImage.create(path, size_mib=64)`
    makes a new one. A qcow2 with a backing file is refused unless `allow_backing=True` (the
    backing chain is then QEMU's to follow: only for images you made); one with an external
    data file is always refused. Block devices need `allow_block_device=True`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        allow_block_device: bool = False,
        allow_backing: bool = False,
    ) -> None:
        self.path = _as_path(path)
        self._format = _check_format(format, self.path)
        self.allow_block_device = _check_bool(allow_block_device, "allow_block_device")
        self.allow_backing = _check_bool(allow_backing, "allow_backing")

    def __repr__(self) -> str:
        return f"DiskImage({str(self.path)!r}, format={self.format!r})"

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        size_mib: int = 64,
        *,
        format: str | None = None,
        size_bytes: int | None = None,
        overwrite: bool = False,
    ) -> DiskImage:
        """Make a new, zero-filled (sparse) image of size_mib MiB, or size_bytes exactly.

        The format is the name's (`*.qcow2` is qcow2, anything else raw); `format=` must agree.
        With overwrite=True an existing regular file is replaced, nothing else is."""
        target = _as_path(path)
        format = _check_format(format, target)
        size = _image_size(size_mib, size_bytes)
        overwrite = _check_bool(overwrite, "overwrite")
        try:
            existing: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            existing = None
            if os.path.islink(target):
                raise DiskImageError(
                    f"{target} already exists (a symlink to a missing file); remove it or name another path"
                ) from None
        except OSError as exc:
            raise DiskImageError(f"cannot create {target}: {exc.strerror}") from None
        if existing is not None:
            if not overwrite:
                raise DiskImageError(
                    f"{target} already exists; pass overwrite=True or wrap it with DiskImage()"
                )
            if not stat.S_ISREG(existing.st_mode):
                raise DiskImageError(
                    f"{target} is a {_kind(existing.st_mode)}; overwrite=True replaces regular files only"
                )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiskImageError(f"cannot create {target}: {exc.strerror} ({exc.filename})") from None
        if format == "raw":
            _create_raw(target, size, existing is not None)
        else:
            try:
                _qemu_img(["create", "-q", "-f", "qcow2", str(target), str(size)])
            except DiskImageError:
                if existing is None:
                    _unlink_quietly(target)
                raise
        return cls(target, format=format)

    @property
    def format(self) -> str:
        """raw or qcow2: what the name records (nothing is read to decide it)."""
        return self._format

    def check_file(self) -> os.stat_result:
        """The path's stat, refusing (without opening anything) what is not a regular file or an
        allowed block device, and paths that cannot be resolved (missing, symlink loops)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            dangling = " (a symlink to a missing file)" if os.path.islink(self.path) else ""
            raise DiskImageError(
                f"disk image {self.path} does not exist{dangling}; make one with DiskImage.create()"
            ) from None
        except OSError as exc:
            raise DiskImageError(f"disk image {self.path}: {exc.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            return st
        if stat.S_ISBLK(st.st_mode):
            if not self.allow_block_device:
                raise DiskImageError(
                    f"{self.path} is a block device; pass allow_block_device=True if you really "
                    "mean to let the guest write to it"
                )
            return st
        raise DiskImageError(
            f"{self.path} is a {_kind(st.st_mode)}, not a regular file "
            "(or a block device with allow_block_device=True)"
        )

    def _open(self, flags: int) -> int:
        """A descriptor on the image, opened only once stat says it is a regular file (or an allowed
        block device), non-blocking as a belt, and checked again to be that same file."""
        st = self.check_file()
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise DiskImageError(f"cannot open disk image {self.path}: {exc.strerror}") from None
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode)) != (
            st.st_dev,
            st.st_ino,
            stat.S_IFMT(st.st_mode),
        ):
            os.close(fd)
            raise DiskImageError(f"disk image {self.path} was replaced while it was being opened")
        return fd

    def qcow2_header(self) -> Qcow2Header:
        """The qcow2 header, checked: the magic, a version QEMU knows, no external data file,
        and no backing file unless allow_backing. Read in Python; nothing else opens the image."""
        fd = self._open(os.O_RDONLY)
        try:
            head = os.pread(fd, _QCOW2_V3_LEN, 0)
            magic = head[:4]
            if magic != QCOW2_MAGIC:
                raise DiskImageError(
                    f"{self.path} is named *.qcow2 but does not start with the qcow2 magic "
                    f"(found {magic!r}); a raw image must not be named *.qcow2"
                )
            if len(head) < _QCOW2_HEAD.size:
                raise DiskImageError(f"{self.path}: truncated qcow2 header ({len(head)} bytes)")
            _, version, backing_offset, backing_len, _, size = _QCOW2_HEAD.unpack_from(head)
            if version not in (2, 3):
                raise DiskImageError(f"{self.path}: qcow2 version {version} is not one QEMU knows (2 or 3)")
            need = _QCOW2_V2_LEN if version == 2 else _QCOW2_V3_LEN
            if len(head) < need:
                raise DiskImageError(
                    f"{self.path}: truncated qcow2 header ({len(head)} bytes, version {version} needs {need})"
                )
            incompat = 0
            if version >= 3:
                (incompat,) = struct.unpack_from(">Q", head, _QCOW2_INCOMPAT_OFFSET)
            backing: str | None = None
            if backing_offset or backing_len:
                try:
                    name = os.pread(fd, min(backing_len, _QCOW2_MAX_BACKING_NAME), backing_offset)
                    backing = name.decode(errors="replace")
                except (OSError, OverflowError):
                    backing = f"(a name at offset {backing_offset} that cannot be read)"
        except OSError as exc:
            raise DiskImageError(f"reading the qcow2 header of {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        header = Qcow2Header(version, size, backing, bool(incompat & _QCOW2_INCOMPAT_DATA_FILE))
        if header.external_data_file:
            raise DiskImageError(
                f"{self.path} is a qcow2 with an external data file: the guest's writes would land "
                "in another host file. Such images are never used here; convert it to a plain qcow2 "
                "(qemu-img convert -O qcow2)"
            )
        if header.backing_file is not None and not self.allow_backing:
            raise DiskImageError(
                f"{self.path} is a qcow2 with a backing file ({header.backing_file!r}): the guest "
                "would read that host file. Pass DiskImage(path, allow_backing=True) if you made "
                "this image and trust its chain"
            )
        return header

    @property
    def size(self) -> int:
        """Virtual size in bytes (what the guest sees): a raw file's length, a block device's,
        or the size in a qcow2 header."""
        if self.format == "qcow2":
            return self.qcow2_header().size
        st = self.check_file()
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        fd = self._open(os.O_RDONLY)  # a block device: stat does not know its size
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        except OSError as exc:
            raise DiskImageError(f"the size of {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    @property
    def sectors(self) -> int:
        return self.size // SECTOR

    def blockdev_extra(self) -> dict[str, object]:
        """Options QEMU's -blockdev must add to this image's format node (beside driver,
        node-name and file): `{"backing": None}` for a qcow2 whose backing file is not allowed,
        so QEMU never opens the file a header names (with -blockdev it would, by default)."""
        if self.format == "qcow2" and not self.allow_backing:
            return {"backing": None}
        return {}

    def validate(self) -> None:
        """Refuse what QEMU must not be given: missing files, FIFOs and other non-files, odd
        sizes, qcow2 headers that reach other files, and images another QEMU holds."""
        self.check_file()
        size = self.size
        if size <= 0 or size % SECTOR:
            what = "disk image" if self.format == "raw" else "qcow2 virtual size of"
            raise DiskImageError(f"{what} {self.path} is {size} bytes, not a positive multiple of {SECTOR}")
        if size > MAX_IMAGE_BYTES:
            raise DiskImageError(
                f"disk image {self.path} is {size} bytes, more than an ATA drive can address "
                f"({MAX_IMAGE_BYTES})"
            )
        holder = _qemu_lock_holder(self.path)  # opens it: only after check_file
        if holder is not None:
            raise DiskImageError(
                f"disk image {self.path} is in use by another QEMU "
                f"({'it' if holder < 0 else f'pid {holder}'} holds its image lock); "
                "close that machine first, or give this one a copy"
            )

    def _check_range(self, lba: object, count: object) -> tuple[int, int]:
        lba = _check_int(lba, "lba")
        count = _check_int(count, "count")
        if count < 1:
            raise DiskImageError(f"count {count} is not a positive number of sectors")
        sectors = self.sectors
        if lba < 0 or lba + count > sectors:
            raise DiskImageError(
                f"lba {lba}, count {count}: sectors {lba}..{lba + count - 1} are outside "
                f"{self.path} ({sectors} sectors)"
            )
        return lba, count

    def read_sectors(self, lba: int, count: int = 1) -> bytes:
        """The host's view of sectors lba..lba+count-1, no QEMU involved."""
        lba, count = self._check_range(lba, count)
        want = count * SECTOR
        if self.format == "raw":
            fd = self._open(os.O_RDONLY)
            try:
                data = _pread_all(fd, want, lba * SECTOR)
            except OSError as exc:
                raise DiskImageError(f"reading LBA {lba} of {self.path}: {exc.strerror}") from None
            finally:
                os.close(fd)
        else:
            data = self._read_qcow2(lba * SECTOR, want)
        if len(data) != want:
            raise DiskImageError(f"read {len(data)} of {want} bytes at LBA {lba} of {self.path}")
        return data

    def _read_qcow2(self, offset: int, length: int) -> bytes:
        # A raw view (offset, size) over the qcow2 node: qemu-img converts just those bytes.
        # (qemu-img dd's skip/count differ between versions.) A json: name carries
        # "backing": null, which --image-opts cannot (its "backing=" is deprecated).
        qcow2: dict[str, object] = {
            "driver": "qcow2",
            "file": {"driver": "file", "filename": str(self.path)},
            **self.blockdev_extra(),
        }
        spec = {"driver": "raw", "offset": offset, "size": length, "file": qcow2}
        try:
            with tempfile.TemporaryDirectory(prefix="piix3-read-") as tmp:
                out = Path(tmp) / "range.raw"
                _qemu_img(["convert", "-U", "-f", "raw", "json:" + json.dumps(spec), "-O", "raw", str(out)])
                return out.read_bytes()
        except OSError as exc:
            raise DiskImageError(f"reading {self.path} through a temporary file: {exc}") from None

    def write_sectors(self, lba: int, data: bytes) -> None:
        """Write sectors host-side (raw images only), for setting up a test's starting state."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DiskImageError(f"data must be bytes, not {type(data).__name__}")
        buf = bytes(data)
        if not buf or len(buf) % SECTOR:
            raise DiskImageError(f"data is {len(buf)} bytes, not a positive multiple of {SECTOR}")
        if self.format != "raw":
            raise DiskImageError(f"write_sectors works on raw images only; {self.path} is qcow2")
        lba, _ = self._check_range(lba, len(buf) // SECTOR)
        fd = self._open(os.O_WRONLY)
        try:
            done = 0
            while done < len(buf):
                wrote = os.pwrite(fd, buf[done:], lba * SECTOR + done)
                if wrote <= 0:
                    raise OSError(errno.EIO, "short write")
                done += wrote
        except OSError as exc:
            raise DiskImageError(f"writing LBA {lba} of {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _create_raw(target: Path, size: int, replacing: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(target, flags if replacing else flags | os.O_EXCL, 0o666)
    except OSError as exc:
        raise DiskImageError(f"cannot create {target}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DiskImageError(f"{target} is a {_kind(st.st_mode)}; images are regular files")
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        if not replacing:
            _unlink_quietly(target)
        hint = " (the filesystem cannot hold a file that large)" if exc.errno == errno.EFBIG else ""
        raise DiskImageError(f"cannot create {target} ({size} bytes): {exc.strerror}{hint}") from None
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# QEMU's file driver takes open-file-description locks on bytes 100.. (permissions it holds)
# and 200.. (permissions it refuses to share) of every image it opens.
_QEMU_LOCK_START = 100
_QEMU_LOCK_LEN = 200
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86_64: type, whence, start, len, pid


def _qemu_lock_holder(path: Path) -> int | None:
    """The pid holding a QEMU image lock on path (-1 if unknown), or None if it is free.
    Only a regular file or block device is opened (never a FIFO, whose open would block), and
    without blocking."""

    def lockable(mode: int) -> bool:
        return stat.S_ISREG(mode) or stat.S_ISBLK(mode)

    try:
        if not lockable(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (OSError, ValueError):
        return None
    try:
        if not lockable(os.fstat(fd).st_mode):
            return None
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
