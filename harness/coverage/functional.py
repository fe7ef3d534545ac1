"""Functional coverage of the ATA protocol: what the suite made the driver do, in bins.

Two records feed it (harness/coverage/observe.py takes them from every machine):
- each driver call through the mailbox (`CallSample`: operation, drive, its outcome code, the
  faults the machine had in place for it, whether a block hold caught it), and
- what QEMU's device trace shows the driver did during that call (`wire_commands()`: every
  Command register write with the drive selected and the task file written for it; SRST).
Machine-level events add the reboots (warm reset, cold power cycle, crash).

Bins (`new_group()` lists them; `WHY` says which cannot be hit under QEMU and why):
command opcodes, PIO/DMA, LBA28/LBA48, sector-count classes, LBA zones, drive positions,
outcomes, injected faults, resets; crosses mode x addressing x direction and drive x mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from harness.ata import COMPLETIONS
from harness.coverage.covergroup import Covergroup, Coverpoint, Cross
from harness.portio.access import CHANNELS, PortAccess
from harness.regs import command_name

LBA28_LIMIT = 1 << 28
LBA32_LIMIT = 1 << 32

# The commands guest/ata.c can issue, by opcode (piix3.h's ATA_CMD_*).
COMMANDS: dict[int, tuple[str, str | None, str | None, str | None]] = {
    # opcode: (bin, mode, addressing, direction); None where it does not apply
    0x20: ("READ_SECTORS", "pio", "lba28", "read"),
    0x24: ("READ_SECTORS_EXT", "pio", "lba48", "read"),
    0x30: ("WRITE_SECTORS", "pio", "lba28", "write"),
    0x34: ("WRITE_SECTORS_EXT", "pio", "lba48", "write"),
    0xC4: ("READ_MULTIPLE", "pio", "lba28", "read"),
    0x29: ("READ_MULTIPLE_EXT", "pio", "lba48", "read"),
    0xC5: ("WRITE_MULTIPLE", "pio", "lba28", "write"),
    0x39: ("WRITE_MULTIPLE_EXT", "pio", "lba48", "write"),
    0xC8: ("READ_DMA", "dma", "lba28", "read"),
    0x25: ("READ_DMA_EXT", "dma", "lba48", "read"),
    0xCA: ("WRITE_DMA", "dma", "lba28", "write"),
    0x35: ("WRITE_DMA_EXT", "dma", "lba48", "write"),
    0xEC: ("IDENTIFY", None, None, None),
    0xE7: ("FLUSH_CACHE", None, None, None),
    0xEA: ("FLUSH_CACHE_EXT", None, None, None),
    0xEF: ("SET_FEATURES", None, None, None),
    0xC6: ("SET_MULTIPLE", None, None, None),
}
OTHER_COMMAND = "other"
OUTCOMES = {
    0: "OK",
    -1: "NODEV",
    -2: "INVAL",
    -3: "RANGE",
    -4: "TIMEOUT",
    -5: "DEVICE",
    -6: "DMA",
    -7: "NOTSUP",
    -8: "NOCTRL",
}
COUNT_CLASSES = ("1", "2-255", "256", "257-65535", "65536")
LBA_ZONES = ("zero", "below_2^28", "across_2^28", "at_or_above_2^32", "last_sector")
FAULTS = ("read_eio", "write_eio", "flush_eio", "held_request", "io_error_stop")
RESETS = ("srst", "warm", "cold", "crash")

# Bins that cannot be hit against QEMU 7.2's PIIX3 and its drives, and why (shown with them).
WHY = {
    "command.READ_SECTORS": "the driver uses READ MULTIPLE whenever SET MULTIPLE MODE succeeded, "
    "which it always does on QEMU's drives (max multiple 16)",
    "command.READ_SECTORS_EXT": "as READ_SECTORS: QEMU drives always take SET MULTIPLE MODE",
    "command.WRITE_SECTORS": "as READ_SECTORS: QEMU drives always take SET MULTIPLE MODE",
    "command.WRITE_SECTORS_EXT": "as READ_SECTORS: QEMU drives always take SET MULTIPLE MODE",
    "command.other": "a command the driver does not have (a driver bug if hit)",
    "outcome.NOTSUP": "guest/ata.c never returns ATA_ERR_NOTSUP (QEMU drives all have LBA48)",
    "outcome.NOCTRL": "the pc machine always has the PIIX3 IDE function",
    "outcome.DMA": "QEMU 7.2 never sets the bus-master ERR bit (a failed request aborts the "
    "command instead: DEVICE)",
}


def new_group() -> Covergroup:
    """The ATA covergroup, all bins at zero."""
    commands = [b for b, *_ in COMMANDS.values()] + [OTHER_COMMAND]
    return Covergroup(
        "piix3-ata",
        [
            Coverpoint("command", commands, "opcodes written to the Command register during driver calls"),
            Coverpoint("mode", ["pio", "dma"], "data commands by transfer mode"),
            Coverpoint("addressing", ["lba28", "lba48"], "data commands by address size"),
            Coverpoint("direction", ["read", "write"], "data commands by direction"),
            Coverpoint("count", COUNT_CLASSES, "sectors per data command, from the task file"),
            Coverpoint(
                "lba_zone",
                LBA_ZONES,
                "where a data command lands: LBA 0; ending within 256 sectors below 2^28; "
                "crossing 2^28; its last sector at or above 2^32; ending at the disk's last sector",
            ),
            Coverpoint("drive", ["0", "1", "2", "3"], "drive positions a command was sent to"),
            Coverpoint("outcome", list(OUTCOMES.values()), "driver call results (ATA_OK, ATA_ERR_*)"),
            Coverpoint(
                "fault",
                FAULTS,
                "injected faults the driver met: a read/write/flush EIO reported as DEVICE, a "
                "held request ending in TIMEOUT, a VM paused by io_error='stop' during a call",
            ),
            Coverpoint(
                "reset", RESETS, "SRST (ata_reset_channel), warm (system_reset), cold (power cycle), crash"
            ),
            Coverpoint(
                "completion",
                list(COMPLETIONS),
                "commands by how the driver learnt they were done: irq when the call's stretch of the "
                "device trace shows IRQ 14/15 taken, else poll",
            ),
        ],
        [
            Cross("mode_x_addressing_x_direction", ("mode", "addressing", "direction")),
            Cross("drive_x_mode", ("drive", "mode")),
            Cross("completion_x_mode", ("completion", "mode")),
        ],
        WHY,
    )


# --- what the device trace shows ---------------------------------------------------------------
@dataclass(frozen=True)
class WireCommand:
    """A Command register write, with the drive selected and the task file written for it."""

    channel: int
    drive: int | None  # None: no Device write seen since the record began
    opcode: int
    count: int | None  # sectors (0 in the register means 256, or 65536 for EXT), if written
    lba: int | None

    @property
    def name(self) -> str:
        return COMMANDS.get(self.opcode, (OTHER_COMMAND,))[0]

    def __str__(self) -> str:
        return (
            f"{CHANNELS[self.channel]} drive {self.drive} {self.opcode:#04x} {command_name(self.opcode)} "
            f"count {self.count} lba {self.lba}"
        )


@dataclass(frozen=True)
class WireReset:
    """SRST set on a channel's Device Control register."""

    channel: int


_TASKFILE = {
    "Features": "features",
    "Sector Count": "count",
    "LBA Low": "low",
    "LBA Mid": "mid",
    "LBA High": "high",
}


def wire_events(events: Iterable[PortAccess]) -> Iterator[WireCommand | WireReset]:
    """Commands and soft resets in a device-side (or driver-side) record, in order."""
    dev: dict[int, int | None] = {0: None, 1: None}
    device_value: dict[int, int] = {0: 0, 1: 0}
    writes: dict[int, dict[str, list[int]]] = {0: {}, 1: {}}
    srst = {0: False, 1: False}
    for ev in events:
        if ev.direction != "out" or ev.value is None or " " not in ev.register:
            continue
        chan_name, reg = ev.register.split(" ", 1)
        if chan_name not in CHANNELS:
            continue
        ch = CHANNELS.index(chan_name)
        value = ev.value & 0xFF
        if reg == "Device":
            dev[ch] = 1 if value & 0x10 else 0
            device_value[ch] = value
        elif reg in _TASKFILE:
            writes[ch].setdefault(_TASKFILE[reg], []).append(value)
        elif reg == "Device Control":
            if value & 0x04 and not srst[ch]:
                yield WireReset(ch)
            srst[ch] = bool(value & 0x04)
            if srst[ch]:
                dev[ch], writes[ch] = None, {}
        elif reg == "Command":
            d = dev[ch]
            yield WireCommand(
                ch, None if d is None else ch * 2 + d, value, *_decode(value, writes[ch], device_value[ch])
            )
            writes[ch] = {}


def _decode(opcode: int, w: Mapping[str, list[int]], device: int) -> tuple[int | None, int | None]:
    """(count, lba) from the task file writes for a command."""
    lba48 = COMMANDS.get(opcode, ("", None, None, None))[2] == "lba48"
    counts, low, mid, high = (w.get(k, []) for k in ("count", "low", "mid", "high"))
    count: int | None = None
    lba: int | None = None
    if lba48:
        if len(counts) >= 2:
            count = (counts[-2] << 8 | counts[-1]) or 0x10000
        if len(low) >= 2 and len(mid) >= 2 and len(high) >= 2:
            lba = low[-1] | mid[-1] << 8 | high[-1] << 16 | low[-2] << 24 | mid[-2] << 32 | high[-2] << 40
    else:
        if counts:
            count = counts[-1] or 0x100
        if low and mid and high:
            lba = low[-1] | mid[-1] << 8 | high[-1] << 16 | (device & 0x0F) << 24
    return count, lba


def count_class(count: int) -> str | None:
    if count == 1:
        return "1"
    if 2 <= count <= 255:
        return "2-255"
    if count == 256:
        return "256"
    if 257 <= count <= 65535:
        return "257-65535"
    if count == 65536:
        return "65536"
    return None


def lba_zones(lba: int, count: int, sectors: int | None) -> list[str]:
    """The zones a transfer of `count` sectors at `lba` falls in (a disk of `sectors`, if known)."""
    end = lba + count  # one past the last sector
    zones = []
    if lba == 0:
        zones.append("zero")
    if LBA28_LIMIT - 256 < end <= LBA28_LIMIT:
        zones.append("below_2^28")
    if lba < LBA28_LIMIT < end:
        zones.append("across_2^28")
    if end - 1 >= LBA32_LIMIT:
        zones.append("at_or_above_2^32")
    if sectors is not None and end == sectors:
        zones.append("last_sector")
    return zones


def sample_wire(
    group: Covergroup,
    record: Sequence[WireCommand | WireReset],
    sectors: Mapping[int, int],
    completion: str | None = None,
) -> None:
    """Sample the commands and resets of one driver call's stretch of the device trace;
    `sectors` gives each drive's size where known, `completion` how the call's commands ended."""
    for item in record:
        if isinstance(item, WireReset):
            group.sample(reset="srst")
            continue
        name, mode, addressing, direction = COMMANDS.get(item.opcode, (OTHER_COMMAND, None, None, None))
        drive = None if item.drive is None else str(item.drive)
        group.sample(command=name, drive=drive)
        if mode is None:
            group.sample(completion=completion)
            continue
        group.sample(
            completion=completion,
            mode=mode,
            addressing=addressing,
            direction=direction,
            drive=drive,
            count=count_class(item.count) if item.count is not None else None,
        )
        if item.lba is not None and item.count is not None and item.drive is not None:
            for zone in lba_zones(item.lba, item.count, sectors.get(item.drive)):
                group.sample(lba_zone=zone)


# --- driver calls --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallSample:
    """One driver call through the mailbox, as it ended."""

    op: str  # "read" | "write" | "flush" | "identify" | "set_wcache" | "reset_channel" | "bench" | ...
    drive: int
    result: int | None  # the driver's code; None: the call never finished (reset, crash, VM paused)
    faults: frozenset[str]  # fault ops ("read", "write", "flush") configured on that drive
    held: bool  # a block hold was in place (the mailbox's linger flag)
    io_error_stop: bool  # the machine runs with io_error="stop"


_FAULT_OF_OP = {"read": "read", "write": "write", "flush": "flush", "set_wcache": "flush"}


def sample_call(group: Covergroup, call: CallSample) -> None:
    if call.result is None:
        if call.io_error_stop:
            group.sample(fault="io_error_stop")
        return
    outcome = OUTCOMES.get(call.result)
    if outcome is None:
        return  # not an ATA_ERR_* code: the harness raises on it; nothing to bin
    group.sample(outcome=outcome)
    kind = _FAULT_OF_OP.get(call.op)
    if outcome == "DEVICE" and kind is not None and kind in call.faults:
        group.sample(fault=f"{kind}_eio")
    if outcome == "TIMEOUT" and call.held:
        group.sample(fault="held_request")
    if call.op == "reset_channel" and outcome == "OK":
        group.sample(reset="srst")


def sample_reboot(group: Covergroup, kind: str) -> None:
    """A machine rebooted: "warm" (system_reset), "cold" (power cycle), "crash" (SIGKILL)."""
    group.sample(reset=kind)
