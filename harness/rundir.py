"""Private run directories (sockets, guest RAM): made per machine, reserved up front, swept
when their owner is gone.

A run directory is named `piix3-<pid>.<start>-<random>` after the process that made it (its
pid and its start time, so a recycled pid is not mistaken for the owner). A process killed
with SIGKILL cannot clean up after itself; the next Machine, or `piix3 clean`, removes the
directories whose owner no longer exists.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from harness.errors import ConfigError

log = logging.getLogger(__name__)

SHM_ROOT = Path("/dev/shm")
PREFIX = "piix3-"
SOCKET_PATH_MAX = 107  # bytes in a unix socket's path (sun_path holds 108 with the NUL)
LONGEST_NAME = "qmp.sock"  # the longest name placed in a run directory
_NAME = re.compile(r"^piix3-(\d+)\.(\d+)-[A-Za-z0-9_]+$")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def roots() -> list[Path]:
    """Where run directories go: tmpfs (/dev/shm) where usable, and the temp dir as fallback."""
    out = []
    if SHM_ROOT.is_dir() and os.access(SHM_ROOT, os.W_OK | os.X_OK):
        out.append(SHM_ROOT)
    tmp = Path(tempfile.gettempdir())
    if tmp not in out:
        out.append(tmp)
    return out


def make(root: Path | None = None) -> Path:
    """A fresh 0700 directory owned by this process, on tmpfs where there is one."""
    base = root or roots()[0]
    pid = os.getpid()
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{pid}.{_start_time(pid) or 0}-", dir=base))
    except OSError as exc:
        raise ConfigError(f"cannot make a private run directory in {base}: {exc.strerror}") from None
    path.chmod(0o700)
    if len(os.fsencode(path / LONGEST_NAME)) > SOCKET_PATH_MAX:
        path.rmdir()
        raise ConfigError(
            f"run directories under {base} would give socket paths longer than {SOCKET_PATH_MAX} bytes; "
            "set TMPDIR to a shorter directory"
        )
    return path


def reserve(path: Path, size: int) -> None:
    """Create `path` (a guest RAM file) with all `size` bytes allocated now.

    On tmpfs, pages of a shared file that cannot be allocated later kill whoever touches them
    (QEMU, or Python through its mapping) with SIGBUS; reserving them up front turns a full
    /dev/shm into a clean ENOSPC here. Raises OSError; the file is removed on failure.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def reserve_ram(rundir: Path, size: int) -> Path:
    """A reserved RAM file for one QEMU: in rundir, or, where that file system is too full, in
    a private directory under the next root that has room. Returns its path."""
    tried = []
    candidates = [rundir, *[r for r in roots() if r != rundir.parent]]
    for where in candidates:
        target = where if where == rundir else make(where)
        ram = target / "ram"
        try:
            reserve(ram, size)
        except OSError as exc:
            if target != rundir:
                shutil.rmtree(target, ignore_errors=True)
            if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise ConfigError(f"cannot create the guest RAM file {ram}: {exc.strerror}") from None
            root = rundir.parent if target == rundir else where
            tried.append(f"{root} ({shutil.disk_usage(root).free >> 20} MiB free)")
            continue
        if target != rundir:
            log.warning("not enough room for %d MiB of guest RAM in %s; using %s", size >> 20, rundir, ram)
        return ram
    raise ConfigError(
        f"no room for {size >> 20} MiB of guest RAM: tried {', '.join(tried)}; free some space, "
        "or give the machine less memory (memory_mib)"
    )


def sweep_stale() -> list[Path]:
    """Remove run directories whose owner process is gone; returns what was removed."""
    removed = []
    uid = os.getuid()
    for root in roots():
        try:
            entries = list(root.iterdir())
        except OSError:
            continue
        for entry in entries:
            match = _NAME.match(entry.name)
            if match is None:
                continue
            pid, start = int(match.group(1)), int(match.group(2))
            try:
                st = entry.lstat()
            except OSError:
                continue
            if st.st_uid != uid or not entry.is_dir() or entry.is_symlink():
                continue
            if _start_time(pid) == start or (start == 0 and _start_time(pid) is not None):
                continue  # its owner is alive
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                log.info("removed %s, left by pid %d", entry, pid)
                removed.append(entry)
    return removed
