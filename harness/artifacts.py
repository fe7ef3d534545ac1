"""A machine's artifacts directory and the log files in it, opened without following links.

The directory may be the user's (`Machine(artifacts_dir=...)`); a link planted there under a
log file's name must never make the harness, QEMU or GDB write through it to another file.
Every log file is opened here with O_NOFOLLOW and must be a regular file; the files QEMU
opens itself are created (or checked) here just before QEMU starts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from harness.errors import ConfigError


def prepare_dir(path: Path) -> None:
    """Make the artifacts directory (parents too) and check it is a writable directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"artifacts_dir {path} exists and is not a directory; give a directory") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"artifacts_dir {path}: cannot create it ({_why(exc)})") from None
    if not path.is_dir():
        raise ConfigError(f"artifacts_dir {path} is not a directory; give a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"artifacts_dir {path} is not writable; give a directory you can write to")


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _open_fd(path: Path, append: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    flags |= os.O_APPEND if append else os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        what = "is a symbolic link" if os.path.islink(path) else _why(exc)
        raise ConfigError(f"log file {path} {what}; refusing to write through it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"log file {path} is not a regular file; refusing to write to it")
    os.set_blocking(fd, True)
    return fd


def open_text_log(path: Path, *, append: bool = True) -> IO[str]:
    """A text log for writing (line-buffered), never through a link, only a regular file."""
    fd = _open_fd(path, append)
    return os.fdopen(fd, "a" if append else "w", buffering=1)


def open_binary_log(path: Path, *, append: bool = True) -> IO[bytes]:
    """A binary log for writing (a child's stderr), never through a link, only a regular file."""
    fd = _open_fd(path, append)
    return os.fdopen(fd, "ab" if append else "wb")


def write_text(path: Path, text: str) -> None:
    """Replace a small artifact file's contents (a command line, hang evidence)."""
    with open_text_log(path, append=False) as f:
        f.write(text)


def ensure(path: Path) -> None:
    """Create the file if missing, refuse it if it is a link or not a regular file: for files
    another process (QEMU) will open by name."""
    os.close(_open_fd(path, append=True))


KEPT_LOG_BYTES = 256 << 20  # a kept log larger than this keeps its beginning and its end


def shrink(path: Path, keep: int = KEPT_LOG_BYTES) -> int:
    """Cut a kept log larger than `keep` bytes to its first and last keep/2 bytes, with a line
    between saying how much went; returns the bytes cut. QEMU's trace of a driver stuck
    polling until its call times out reaches gigabytes, and a failed test keeps its logs."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return 0
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size <= keep:
            return 0
        half = keep // 2
        head = f.read(half)
        f.seek(st.st_size - half)
        tail = f.read(half)
    cut = st.st_size - len(head) - len(tail)
    part = path.with_name(path.name + ".part")
    with open_binary_log(part, append=False) as out:
        out.write(head)
        out.write(f"\n[piix3-harness: {cut} bytes of this log cut here, to keep its size bounded]\n".encode())
        out.write(tail)
    os.replace(part, path)
    return cut
