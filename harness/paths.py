"""Where things are: the guest kernel built by `make guest`, the build directory."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO_ROOT / "build"
DEFAULT_KERNEL = BUILD_DIR / "guest" / "kernel.elf"
GDBINIT = REPO_ROOT / "gdbinit"


def find_kernel(kernel: str | os.PathLike[str] | None = None) -> Path:
    """The kernel given, else $PIIX3_KERNEL, else build/guest/kernel.elf from `make guest`."""
    chosen = kernel or os.environ.get("PIIX3_KERNEL") or DEFAULT_KERNEL
    path = Path(chosen).absolute()
    if not path.is_file():
        raise HarnessError(f"guest kernel {path} not found; build it with `make guest`")
    return path
