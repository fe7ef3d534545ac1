"""harness.regs and AtaError against real register values and the guest's own headers."""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path

import pytest

from harness.errors import AtaError, HarnessError
from harness.regs import (
    BM_ACTIVE,
    BM_ERR,
    BM_INTR,
    COMMANDS,
    ERROR_BITS,
    IRQ_IDE,
    IRQ_LINES,
    STATUS_BITS,
    AtaCode,
    AtaMode,
    AtaPhase,
    Completion,
    command_name,
    decode_error,
    decode_status,
)

GUEST = Path(__file__).resolve().parents[2] / "guest"


def _header(name: str) -> str:
    """A guest header with its /* comments */ removed."""
    return re.sub(r"/\*.*?\*/", "", (GUEST / name).read_text(), flags=re.DOTALL)


def _enum(header: str, name: str) -> dict[str, int]:
    """The enumerators of `enum name { ... };` in a header, as written (explicit values only)."""
    body = re.search(rf"enum\s+{name}\s*\{{(.*?)\}};", _header(header), flags=re.DOTALL)
    assert body is not None, f"enum {name} not found in guest/{header}"
    entries = [e.strip() for e in body.group(1).split(",") if e.strip()]
    out: dict[str, int] = {}
    for entry in entries:
        m = re.fullmatch(r"(\w+)\s*=\s*(-?(?:0x[0-9A-Fa-f]+|\d+))", entry)
        assert m is not None, f"enum {name}: cannot read {entry!r} (give every enumerator a value)"
        out[m.group(1)] = int(m.group(2), 0)
    return out


def _defines(header: str, prefix: str) -> dict[str, int]:
    """#define PREFIXname 0x.. in a header, as {name: value}."""
    pattern = rf"^#define\s+{prefix}(\w+)\s+(0x[0-9A-Fa-f]+|\d+)u?\s*$"
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(pattern, _header(header), flags=re.MULTILINE)}


# --- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0x41, "ERR|DRDY"),  # a failed command: DRDY with ERR
        (0x50, "DSC|DRDY"),  # an idle drive
        (0x58, "DRQ|DSC|DRDY"),  # PIO data ready
        (0x80, "BSY"),
        (0x51, "ERR|DSC|DRDY"),
        (0x00, "-"),
        (0xFF, "ERR|IDX|CORR|DRQ|DSC|DF|DRDY|BSY"),
    ],
)
def test_decode_status(value: int, expected: str) -> None:
    assert decode_status(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0x04, "ABRT"),  # command aborted: unsupported command or feature
        (0x10, "IDNF"),  # LBA not found
        (0x40, "UNC"),
        (0x84, "ABRT|ICRC"),
        (0x00, "-"),
    ],
)
def test_decode_error(value: int, expected: str) -> None:
    assert decode_error(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0xC8, "READ DMA"),
        (0xCA, "WRITE DMA"),
        (0x25, "READ DMA EXT"),
        (0xEC, "IDENTIFY DEVICE"),
        (0xEF, "SET FEATURES"),
        (0xEA, "FLUSH CACHE EXT"),
        (0x00, "command 0x00"),
        (0x91, "command 0x91"),
    ],
)
def test_command_name(value: int, expected: str) -> None:
    assert command_name(value) == expected


def test_every_code_has_a_meaning() -> None:
    for code in AtaCode:
        assert code.meaning, code


# --- agreement with the guest's headers -----------------------------------------------------


def test_ata_err_matches_guest_header() -> None:
    enum = _enum("ata.h", "ata_err")
    assert enum, "enum ata_err is empty"
    names: dict[str, int] = {}
    for cname, value in enum.items():
        assert cname == "ATA_OK" or cname.startswith("ATA_ERR_"), cname
        names["OK" if cname == "ATA_OK" else cname.removeprefix("ATA_ERR_")] = value
    assert names == {member.name: member.value for member in AtaCode}


def test_ata_mode_matches_guest_header() -> None:
    enum = _enum("ata.h", "ata_mode")
    assert enum, "enum ata_mode is empty"
    assert all(name.startswith("ATA_MODE_") for name in enum)
    assert {name.removeprefix("ATA_MODE_"): value for name, value in enum.items()} == {
        member.name: member.value for member in AtaMode
    }


@pytest.mark.parametrize(
    ("enum_name", "prefix", "mirror"),
    [("ata_phase", "ATA_PHASE_", AtaPhase), ("ata_completion", "ATA_COMPLETION_", Completion)],
)
def test_phase_and_completion_match_guest_header(enum_name: str, prefix: str, mirror: type[IntEnum]) -> None:
    enum = _enum("ata.h", enum_name)
    assert enum and all(name.startswith(prefix) for name in enum), enum
    assert {name.removeprefix(prefix): value for name, value in enum.items()} == {
        member.name: member.value for member in mirror
    }


def test_interrupt_lines_and_bus_master_bits_match_guest_header() -> None:
    lines = _defines("piix3.h", "IRQ_")
    assert {0: lines["IDE_PRIMARY"], 1: lines["IDE_SECONDARY"]} == IRQ_IDE
    assert lines["LINES"] == IRQ_LINES
    bm = _defines("piix3.h", "BM_STATUS_")
    assert (bm["ACTIVE"], bm["ERR"], bm["INTR"]) == (BM_ACTIVE, BM_ERR, BM_INTR)


def test_every_guest_command_is_named() -> None:
    commands = _defines("piix3.h", "ATA_CMD_")
    assert len(commands) >= 10, f"found only {sorted(commands)} in guest/piix3.h"
    for cname, code in commands.items():
        assert code in COMMANDS, f"ATA_CMD_{cname} ({code:#04x}) missing from harness.regs.COMMANDS"
        # same command, not just the same number: READ_DMA -> "READ DMA", IDENTIFY -> "IDENTIFY DEVICE"
        assert COMMANDS[code].replace(" ", "_").startswith(cname), (cname, COMMANDS[code])


def test_status_bits_match_guest_header() -> None:
    header = _defines("piix3.h", "ATA_CB_STAT_")
    aliases = {"RDY": "DRDY"}  # the guest's name for DRDY
    assert {aliases.get(name, name): value for name, value in header.items()} == {
        name: bit for bit, name in STATUS_BITS
    }


def test_error_bits_match_guest_header() -> None:
    assert _defines("piix3.h", "ATA_CB_ER_") == {name: bit for bit, name in ERROR_BITS}


# --- AtaError ----------------------------------------------------------------------------------


def test_ata_error_describes_device_error() -> None:
    err = AtaError(-5, drive=0, operation="read", status=0x41, error=0x04, lba=500, command=0xC8)
    text = str(err)
    assert isinstance(err, HarnessError)
    assert err.code is AtaCode.DEVICE
    assert err.status_bits == "ERR|DRDY"
    assert err.error_bits == "ABRT"
    for part in ("read on drive 0", "DEVICE", "ERR|DRDY", "ABRT", "lba=500", "0xc8", "READ DMA"):
        assert part in text, (part, text)
    assert "bm_status" not in text


def test_ata_error_dma_names_bus_master_status() -> None:
    err = AtaError(
        -6, drive=2, operation="write", status=0x51, error=0x84, lba=7, command=0xCA, bm_status=0x06
    )
    text = str(err)
    for part in ("write on drive 2", "DMA", "ERR|DSC|DRDY", "ABRT|ICRC", "WRITE DMA", "bm_status=0x06"):
        assert part in text, (part, text)


def test_ata_error_without_registers() -> None:
    err = AtaError(-1, drive=3, operation="identify", detail="nothing answered")
    text = str(err)
    assert err.code is AtaCode.NODEV
    assert "NODEV" in text and AtaCode.NODEV.meaning in text and "nothing answered" in text
    assert "status=" not in text  # registers mean nothing when no command reached a drive


def test_ata_error_lists_artifacts() -> None:
    err = AtaError(-4, drive=1, operation="flush", status=0x80, artifacts=[Path("/tmp/serial.log")])
    assert "BSY" in str(err)
    assert str(err).endswith("(see /tmp/serial.log)")
