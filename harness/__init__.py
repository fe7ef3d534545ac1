"""piix3-harness: verify a PIIX3 IDE driver running in QEMU, driven from Python through GDB/MI."""

from harness.disk import DiskImage, DiskImageError
from harness.errors import (
    AtaError,
    ConfigError,
    GdbError,
    HarnessError,
    HarnessTimeout,
    QemuError,
    UsageError,
)
from harness.faults import Fault
from harness.identify import DriveInfo
from harness.machine import Machine
from harness.portio.access import PortAccess, PortError
from harness.regs import AtaCode

__all__ = [
    "AtaCode",
    "AtaError",
    "ConfigError",
    "DiskImage",
    "DiskImageError",
    "DriveInfo",
    "Fault",
    "GdbError",
    "HarnessError",
    "HarnessTimeout",
    "Machine",
    "PortAccess",
    "PortError",
    "QemuError",
    "UsageError",
]
