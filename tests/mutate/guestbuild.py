"""Build altered copies of the guest kernel with the project's own Makefile, so the compile and
link commands stay spelled once (there): a copy of guest/ in a directory of its own, built with
`make guest GUEST_SRC=<copy>/guest BUILD=<copy>/build`. Used by the seeded-bug tests
(tests/integration/test_seeded_bugs.py) and the mutation run (tests/mutate/run.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"
PREBUILT = REPO / "build" / "guest"  # `make guest`'s objects
BUILD_TIMEOUT = 120.0  # s, for one kernel (about 1 s on an idle machine)
OBJCOPY_TIMEOUT = 30.0


class BuildFailed(Exception):
    """The altered guest did not compile or link; the message carries the compiler's words."""


class PatchFailed(Exception):
    """A textual edit did not apply: the text to replace is not in the file exactly once."""


def copy_guest(dest: Path) -> Path:
    """A copy of guest/ at dest/guest (dest is created), and the main build's objects at
    dest/build/guest when there are any. Times are kept, so a build of the copy recompiles only
    the files edited since (an object older than its sources is rebuilt, as always); returns the
    copy's directory."""
    dest.mkdir(parents=True, exist_ok=True)
    copy = dest / "guest"
    shutil.copytree(GUEST, copy)
    objects = dest / "build" / "guest"
    objects.mkdir(parents=True, exist_ok=True)
    for obj in PREBUILT.glob("*.o"):
        shutil.copy2(obj, objects / obj.name)
    return copy


def replace_once(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in the file by `new`."""
    text = path.read_text()
    found = text.count(old)
    if found != 1:
        raise PatchFailed(f"{path.name}: {old!r:.80} occurs {found} times, not once")
    path.write_text(text.replace(old, new))


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a build tool in its own process group; on timeout the whole group is killed (by its
    id) and reaped."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BuildFailed(f"{argv[0]} took more than {timeout:.0f} s") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def build(src: Path, build_dir: Path | None = None, timeout: float = BUILD_TIMEOUT) -> Path:
    """Build the guest sources in `src` into `build_dir` (default: the `build` beside `src`,
    where copy_guest put the objects); returns the kernel's path."""
    build_dir = build_dir or src.parent / "build"
    done = _run(["make", "-s", "-C", str(REPO), "guest", f"GUEST_SRC={src}", f"BUILD={build_dir}"], timeout)
    kernel = build_dir / "guest" / "kernel.elf"
    if done.returncode != 0 or not kernel.is_file():
        raise BuildFailed(done.stdout.strip()[-2000:] or f"make exited with {done.returncode}")
    return kernel


def code_digest(kernel: Path) -> str:
    """A digest of what the kernel loads and runs: its sections with symbols and debug
    information stripped (they name the source directory, which differs between copies)."""
    stripped = kernel.with_suffix(".stripped")
    done = _run(["objcopy", "--strip-all", str(kernel), str(stripped)], OBJCOPY_TIMEOUT)
    if done.returncode != 0:
        raise BuildFailed(f"objcopy: {done.stdout.strip()}")
    try:
        return hashlib.sha256(stripped.read_bytes()).hexdigest()
    finally:
        stripped.unlink(missing_ok=True)
