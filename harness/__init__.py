"""piix3-harness: verify a PIIX3 IDE driver running in QEMU, driven from Python through GDB/MI."""

from harness.disk import DiskImage, DiskImageError
from harness.errors import AtaError, GdbError, HarnessError, HarnessTimeout, QemuError
from harness.identify import DriveInfo
from harness.machine import Machine
from harness.regs import AtaCode

__all__ = [
    "AtaCode",
    "AtaError",
    "DiskImage",
    "DiskImageError",
    "DriveInfo",
    "GdbError",
    "HarnessError",
    "HarnessTimeout",
    "Machine",
    "QemuError",
]
