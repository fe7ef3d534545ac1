"""An assertion monitor for the ATA register protocol and the PIIX3 bus master, run over a record
of port accesses: the driver side (GDB, harness/ports.py) or the device side (QEMU's trace,
harness/devtrace.py). `check(events)` returns one Violation per broken rule, each naming the
rule, its source in the standards, the channel and drive, the time and the accesses involved.

Soundness first: a rule only fires on what the record shows. The monitor keeps, per channel,
the last status read it can trust and why it cannot when it cannot ("no status read since the
Command", "since the other device was selected", "since the reset"); a record that starts
mid-operation starts unknown, and nothing is judged on unknown state. Time rules need QEMU's
`-msg timestamp=on` stamps, which are gettimeofday truncated to whole microseconds: a gap of d
stamped µs is a real gap in (d - 1, d + 1), so "shorter than X" is reported only when d + 1 <= X
(`stamp_resolution_us`). That proves 5 µs (SRST pulse) and 2 ms (after SRST), never 400 ns: the
two 400 ns rules report only with finer stamps, or under `strict_timing`, where a status read
counts as settled only after another register access on the channel in between (an alternate
status read, say) or a stamped gap of at least 1 µs.

Left unjudged on purpose, because correct code does it: register writes right after selecting
the other device without a status read (Linux and SeaBIOS probe that way; only a Command needs
the new device's status); register writes after the last block of a PIO data-in command (the
host is idle then); READ/WRITE MULTIPLE with no SET MULTIPLE MODE in the record (the power-on
default is vendor specific, and after SRST it depends on SET FEATURES 66h/CCh), so only a failed
or zero SET MULTIPLE MODE disables it and only a successful one gives the DRQ block size; a
status read showing INTR/ERR clear counts as cleared; stopping the bus master early (an abort is
allowed, at the price of the data); leaving START set after a transfer that timed out, as long as
it is cleared before the next command on the channel (PIIX3-BM-3 asks no more: the PIIX3 driver
does this on purpose, since in QEMU clearing START while a request is in flight waits for that
request; a software reset with START still set is not judged either).

What a record cannot show: the LBA the driver meant (so a 28-bit command's LBA bits 27:24 in
Device cannot be checked), and the PRD table in guest memory (pass `prd_tables`, one per START).
Bus-master accesses in QEMU's trace carry no channel; parse_trace gives them the channel of the
next IDE register access, and the bus-master rules trust that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.portio.access import (
    BM_CHANNEL_STRIDE,
    CHANNELS,
    PRIMARY_CMD,
    PRIMARY_CTRL,
    SECONDARY_CMD,
    SECONDARY_CTRL,
    PortAccess,
    PortMap,
)
from harness.portio.devtrace import INTERRUPT_EVENT, DeviceAction
from harness.regs import BM_ACTIVE, BM_ERR, BM_INTR, IRQ_IDE, command_name, decode_status

# --- the rules ----------------------------------------------------------------------------------
ATA6 = "ATA/ATAPI-6"
PIIX3 = "Intel 82371FB/82371SB (PIIX/PIIX3) datasheet"


@dataclass(frozen=True)
class Rule:
    """One checked requirement: an id, a one-line statement, where it comes from, and what the
    record must carry for it to be checked at all."""

    id: str
    statement: str
    source: str
    needs: str = ""  # "", "timestamps", "prd tables"


_RULES = (
    Rule(
        "ATA-SEL-1",
        "Device is written only while BSY=0 and DRQ=0 (last status read; a floating bus excepted)",
        f"{ATA6} clause 7, Device register access restrictions; clause 9, device selection protocol",
    ),
    Rule(
        "ATA-SEL-2",
        "after selecting the other device, status is trusted only 400 ns after the Device write",
        f"{ATA6} clause 9, device selection protocol; ATA8-APT device selection protocol",
        "timestamps finer than 1 us, or strict_timing",
    ),
    Rule(
        "ATA-REG-1",
        "Features, Sector Count and LBA registers are written only while BSY=0 and DRQ=0",
        f"{ATA6} clause 7, register access restrictions (Features, Sector Count, LBA Low/Mid/High)",
    ),
    Rule(
        "ATA-CMD-1",
        "Command is written only after a status read of the selected device shows BSY=0 and DRQ=0",
        f"{ATA6} clause 7, Command register access restrictions; clause 9, bus idle protocol",
    ),
    Rule(
        "ATA-CMD-2",
        "a command that requires it is written only while DRDY=1",
        f"{ATA6} clause 8, command prerequisites (DRDY set to one)",
    ),
    Rule(
        "ATA-CMD-3",
        "after writing Command, status is trusted only 400 ns later",
        f"{ATA6} clause 9, command protocols (host waits 400 ns before reading Status)",
        "timestamps finer than 1 us, or strict_timing",
    ),
    Rule(
        "ATA-ADDR-1",
        "a 48-bit command writes Features, Sector Count and LBA Low/Mid/High twice (previous content first)",
        f"{ATA6} clause 6, 48-bit Address feature set",
    ),
    Rule(
        "ATA-ADDR-2",
        "a 48-bit command is written with the LBA bit (40h) set and bits 3:0 clear in Device",
        f"{ATA6} clause 8, READ/WRITE SECTORS/DMA/MULTIPLE EXT inputs (Device: LBA set, bits 3:0 reserved)",
    ),
    Rule(
        "ATA-PIO-1",
        "the data port is accessed only while a status read shows DRQ=1, never during a DMA command",
        f"{ATA6} clause 9, PIO data-in and PIO data-out command protocols",
    ),
    Rule(
        "ATA-PIO-2",
        "each DRQ assertion moves exactly one DRQ data block (a sector; READ/WRITE MULTIPLE: the "
        "multiple count)",
        f"{ATA6} clause 9, PIO protocols; clause 8, READ/WRITE MULTIPLE (DRQ data block)",
    ),
    Rule(
        "ATA-PIO-3",
        "READ/WRITE MULTIPLE is issued only while multiple mode is on (not after a failed or zero "
        "SET MULTIPLE MODE)",
        f"{ATA6} clause 8, SET MULTIPLE MODE and READ/WRITE MULTIPLE; ATA8-ACS SET MULTIPLE MODE",
    ),
    Rule(
        "ATA-PIO-4",
        "after the last block of a PIO data-out command, status is polled until BSY=0 before anything else",
        f"{ATA6} clause 9, PIO data-out command protocol",
    ),
    Rule(
        "ATA-PIO-5",
        "data moves in the command's direction (in for data-in commands, out for data-out)",
        f"{ATA6} clause 9, PIO data-in and PIO data-out command protocols",
    ),
    Rule(
        "ATA-ERR-1",
        "Error is read only when valid: ERR or DF in the last status read with BSY=0, or after a "
        "reset or diagnostics",
        f"{ATA6} clause 7, Error register (when its contents are valid)",
    ),
    Rule(
        "ATA-SRST-1",
        "SRST is held for at least 5 us",
        f"{ATA6} 9.2, software reset protocol",
        "timestamps",
    ),
    Rule(
        "ATA-SRST-2",
        "after SRST is cleared, status is trusted only 2 ms later",
        f"{ATA6} 9.2, software reset protocol",
        "timestamps",
    ),
    Rule(
        "ATA-SRST-3",
        "after a software reset, status is polled until BSY=0 before registers are written",
        f"{ATA6} 9.2, software reset protocol",
    ),
    Rule(
        "ATA-FLOAT-1",
        "status FFh/7Fh means no device answers: no command is issued to that drive",
        f"{ATA6} clause 5, DD7 host pull-down (an absent device floats the bus); clause 7, Status",
    ),
    Rule(
        "PIIX3-BM-1",
        "the bus-master INTR and ERR bits are cleared (written 1) before START is set",
        f"{PIIX3}, Bus Master IDE Operation (step 2) and BMISX register",
    ),
    Rule(
        "PIIX3-BM-2",
        "START is set after the DMA command is written, once per command",
        f"{PIIX3}, Bus Master IDE Operation (steps 3 and 4)",
    ),
    Rule(
        "PIIX3-BM-3",
        "START is cleared after a transfer, before the next command on the channel",
        f"{PIIX3}, BMICX register, Start/Stop Bus Master",
    ),
    Rule(
        "PIIX3-BM-4",
        "the Read/Write Control bit at START matches the command (1 for reads: the bus master writes memory)",
        f"{PIIX3}, BMICX register, Bus Master Read/Write Control",
    ),
    Rule(
        "PIIX3-BM-5",
        "the PRD table address is dword aligned",
        f"{PIIX3}, BMIDTPX register (Descriptor Table Base Address [31:2])",
    ),
    Rule(
        "IRQ-1",
        "after the device's interrupt is taken, the channel's Status register is read (which clears "
        "INTRQ) before the data port is used or a register is written",
        f"{ATA6} clause 7, Status register (reading it clears a pending interrupt); clause 5, INTRQ",
        "interrupts (pic_interrupt)",
    ),
    Rule(
        "IRQ-2",
        "after an interrupt on a channel, the bus master's INTR bit is cleared (written 1) before "
        "the channel's next command",
        f"{PIIX3}, BMISX register (Interrupt: set when the IDE device asserts its line; cleared by "
        "writing 1); Bus Master IDE Operation",
        "interrupts (pic_interrupt)",
    ),
    Rule(
        "IRQ-3",
        "a command written with nIEN clear (interrupts on) has its interrupt taken before the next "
        "command on the channel (or a software reset): a host that enables INTRQ waits for it",
        f"{ATA6} clause 7, Device Control register (nIEN); clause 9, the protocols' INTRQ steps",
        "interrupts (pic_interrupt)",
    ),
    Rule(
        "PIIX3-PRD-1",
        "the PRD table does not cross a 64 KiB boundary",
        f"{PIIX3}, BMIDTPX register; Physical Region Descriptor Format",
        "prd tables",
    ),
    Rule(
        "PIIX3-PRD-2",
        "each PRD region has an even base and byte count and does not cross a 64 KiB boundary",
        f"{PIIX3}, Physical Region Descriptor Format",
        "prd tables",
    ),
    Rule(
        "PIIX3-PRD-3",
        "EOT is set on the last PRD entry and on no other",
        f"{PIIX3}, Physical Region Descriptor Format (EOT)",
        "prd tables",
    ),
    Rule(
        "PIIX3-PRD-4",
        "the PRD byte counts add up to at least the transfer the command asks for",
        f"{PIIX3}, Physical Region Descriptor Format (sum of the byte counts)",
        "prd tables",
    ),
)
RULES: dict[str, Rule] = {r.id: r for r in _RULES}


def rules_text() -> str:
    """The rules, one per line: id, statement, source (and what checking it needs)."""
    return "\n".join(
        f"{r.id:<12} {r.statement} [{r.source}]" + (f" (needs {r.needs})" if r.needs else "") for r in _RULES
    )


# --- registers, bits, commands ------------------------------------------------------------------
BSY, DRDY, DF, DRQ, ERR = 0x80, 0x40, 0x20, 0x08, 0x01
FLOATING = (0xFF, 0x7F)  # no device drives the bus (DD7 floating high, or pulled down)
DC_SRST, DC_NIEN = 0x04, 0x02
DEV_LBA, DEV_DEV1 = 0x40, 0x10
BM_START, BM_READ = 0x01, 0x08
SECTOR = 512
PRD_REGION_LIMIT = 0x10000

CMD_DEVICE_RESET, CMD_DIAGNOSTIC, CMD_SET_MULTIPLE = 0x08, 0x90, 0xC6
_TASKFILE = {1: "features", 2: "count", 3: "lba_low", 4: "lba_mid", 5: "lba_high"}
_LBA48_REGS = ("features", "count", "lba_low", "lba_mid", "lba_high")

DMA_IN = frozenset({0xC8, 0xC9, 0x25, 0x47})  # READ DMA (EXT), READ LOG DMA EXT
DMA_OUT = frozenset({0xCA, 0xCB, 0x35, 0x3D, 0x57})  # WRITE DMA (EXT, FUA EXT), WRITE LOG DMA EXT
PIO_IN = frozenset({0x20, 0x21, 0x24, 0x29, 0xC4, 0xEC, 0xA1, 0x2F, 0xE4})
PIO_OUT = frozenset({0x30, 0x31, 0x34, 0x39, 0xC5, 0xCE, 0x3F, 0xE8})
NON_DATA = frozenset(
    {0x00, 0x08, 0x10, 0x27, 0x37, 0x40, 0x41, 0x42, 0x70, 0x90, 0x91, 0xC6, 0xE0, 0xE1, 0xE2, 0xE3}
    | {0xE5, 0xE6, 0xE7, 0xEA, 0xEF, 0xF8, 0xF9}
)
MULTIPLE = frozenset({0xC4, 0xC5, 0x29, 0x39, 0xCE})
SECTOR_BLOCKS = frozenset({0x20, 0x21, 0x24, 0x30, 0x31, 0x34})  # one sector per DRQ block
ONE_BLOCK = frozenset({0xEC, 0xA1, 0xE4, 0xE8})  # a single 512-byte block
LBA48 = frozenset({0x24, 0x25, 0x29, 0x34, 0x35, 0x39, 0x3D, 0xCE, 0x42})  # LBA and count inputs
# Commands whose prerequisites include DRDY=1 (DEVICE RESET, EXECUTE DEVICE DIAGNOSTIC, the
# PACKET commands and INITIALIZE DEVICE PARAMETERS do not): judged only for these.
NEEDS_DRDY = frozenset(
    (DMA_IN | DMA_OUT | PIO_IN | PIO_OUT | NON_DATA) - {0x00, 0x08, 0x90, 0x91, 0xA1, 0xE4, 0xE8}
)

# Why the last status read no longer tells the device's state.
STALE_COMMAND = "no status read since the Command was written"
STALE_SELECT = "no status read since the other device was selected"
STALE_RESET = "no status read since the reset"
STALE_BLOCK = "no status read since the last data block"
STALE_DATA_OUT = "no status read since the last data-out block"


# --- PRD tables (optional input) ----------------------------------------------------------------
@dataclass(frozen=True)
class PrdEntry:
    """One physical region descriptor: base address, the 16-bit byte count field (0 means
    64 KiB) and EOT."""

    base: int
    count_field: int
    eot: bool = False

    @property
    def size(self) -> int:
        return self.count_field or PRD_REGION_LIMIT


@dataclass(frozen=True)
class PrdTable:
    """A PRD table as it was in guest memory when START was set: its address and its entries
    (up to and including the first with EOT). From a live machine, e.g. after each DMA call (or
    at a port breakpoint on the BM Command write with START), with `addr` the value the driver
    wrote to BM PRD: `PrdTable.from_bytes(addr, m.read_memory(addr, 8 * 16))`."""

    address: int
    entries: tuple[PrdEntry, ...]

    @classmethod
    def from_bytes(cls, address: int, data: bytes) -> PrdTable:
        """Entries from raw table bytes (8 per entry, little-endian), up to the first EOT."""
        entries = []
        for off in range(0, len(data) - len(data) % 8, 8):
            base = int.from_bytes(data[off : off + 4], "little")
            word = int.from_bytes(data[off + 4 : off + 8], "little")
            entries.append(PrdEntry(base, word & 0xFFFF, bool(word & 0x80000000)))
            if word & 0x80000000:
                break
        return cls(address, tuple(entries))


# --- the findings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Violation:
    """A broken rule at one access: `index` is the offending event's position in the events
    checked, `context` the accesses up to and including it (`context_start` is the first one's
    index), `detail` what the record showed."""

    rule: Rule
    index: int
    channel: int | None
    drive: int | None
    time_us: float | None
    detail: str
    context: tuple[PortAccess, ...] = ()
    context_start: int = 0

    @property
    def where(self) -> str:
        """'primary drive 0', 'secondary', '-'."""
        if self.channel is None:
            return "-"
        text = CHANNELS[self.channel]
        return text + (f" drive {self.drive}" if self.drive is not None else "")

    def time_text(self, origin_us: float | None = None) -> str:
        if self.time_us is None:
            return "t=?"
        if origin_us is None:
            return f"t={self.time_us / 1e6:.6f}s"
        return f"t=+{(self.time_us - origin_us) / 1e6:.6f}s"

    def accesses_text(self) -> str:
        parts = []
        for n, ev in enumerate(self.context, self.context_start):
            mark = "*" if n == self.index else ""
            parts.append(f"{mark}#{n} " + " ".join(ev.brief().split()))
        return "; ".join(parts)

    def line(self, origin_us: float | None = None) -> str:
        """One line: time, channel/drive, rule, statement, source, what was seen, accesses."""
        return (
            f"{self.time_text(origin_us)} {self.where} {self.rule.id}: {self.rule.statement} "
            f"[{self.rule.source}]: {self.detail} | {self.accesses_text()}"
        )

    def to_dict(self, origin_us: float | None = None) -> dict[str, Any]:
        return {
            "rule": self.rule.id,
            "statement": self.rule.statement,
            "source": self.rule.source,
            "needs": self.rule.needs,
            "channel": CHANNELS[self.channel] if self.channel is not None else None,
            "drive": self.drive,
            "time_us": self.time_us,
            "time_s": (
                (self.time_us - origin_us) / 1e6
                if self.time_us is not None and origin_us is not None
                else None
            ),
            "index": self.index,
            "detail": self.detail,
            "accesses": [
                {
                    "index": n,
                    "direction": ev.direction,
                    "port": ev.port,
                    "width": ev.width,
                    "value": ev.value,
                    "count": ev.count,
                    "register": ev.register,
                    "decoded": ev.decoded,
                    "time_us": ev.time_us,
                    "where": ev.where,
                }
                for n, ev in enumerate(self.context, self.context_start)
            ],
        }

    def __str__(self) -> str:
        return self.line()


def origin_of(events: Sequence[PortAccess]) -> float | None:
    """The first timestamp in a record: violation times are shown relative to it."""
    return next((e.time_us for e in events if e.time_us is not None), None)


def render_text(violations: Sequence[Violation], origin_us: float | None = None) -> str:
    """One line per violation."""
    return "\n".join(v.line(origin_us) for v in violations)


def render_json(violations: Sequence[Violation], origin_us: float | None = None, **extra: Any) -> str:
    """A JSON document: {"violations": [...], **extra}."""
    return json.dumps({**extra, "violations": [v.to_dict(origin_us) for v in violations]}, indent=2)


_INTERRUPT = re.compile(r"irq (\d+) intno (\d+)")


def interrupts(actions: Iterable[DeviceAction]) -> list[tuple[int, int]]:
    """(event index, line) of every interrupt the CPU took from the 8259 pair (QEMU's
    pic_interrupt lines; a spurious one is reported as line 7 or 15 too, but the guest's are
    software interrupts that QEMU never sees)."""
    out = []
    for a in actions:
        m = _INTERRUPT.fullmatch(a.detail) if a.event == INTERRUPT_EVENT else None
        if m:
            out.append((a.index, int(m.group(1))))
    return out


def hardware_resets(actions: Iterable[DeviceAction]) -> list[int]:
    """Event indices where QEMU reset the controller (power-on or system_reset: its bmdma_reset
    lines; SRST resets only the drives, with ide_reset alone)."""
    return sorted({a.index for a in actions if a.event == "bmdma_reset"})


# Command block registers a host writes to start the next step (IRQ-1: not before Status is read).
_TASKFILE_OUT = frozenset({"device", "features", "count", "lba_low", "lba_mid", "lba_high", "command"})


# --- the monitor --------------------------------------------------------------------------------
@dataclass
class _Command:
    opcode: int
    index: int
    drive: int | None
    kind: str  # "pio-in" | "pio-out" | "dma-in" | "dma-out" | "non-data" | "unknown"
    sectors: int | None  # the transfer, for commands that move sectors
    per_block: int | None  # sectors per DRQ block, when known
    count: int | None = None  # Sector Count as written for it (SET MULTIPLE MODE's block size)
    done: int = 0  # sectors moved
    completed: bool = False

    def moving(self) -> bool:
        """Still between data blocks: more sectors to move than moved."""
        return not self.completed and self.sectors is not None and self.done < self.sectors

    @property
    def dma(self) -> bool:
        return self.kind.startswith("dma")

    def block_bytes(self) -> int | None:
        if self.opcode in ONE_BLOCK:
            return SECTOR
        if self.per_block is None:
            return None
        if self.sectors is None:
            return self.per_block * SECTOR
        return min(self.per_block, max(self.sectors - self.done, 0)) * SECTOR


@dataclass
class _Settle:
    """A write after which status needs time to be trusted (Device change, Command, SRST clear)."""

    kind: str  # "select" | "command" | "reset"
    index: int
    time_us: float | None
    accesses: int  # the channel's register access count at the write


@dataclass
class _Channel:
    number: int
    status: int | None = None  # the last status read that can be trusted
    stale: str | None = None  # why status is None and must be read again; None: not yet seen
    early: list[int] = field(default_factory=list)  # status reads taken before the settle time
    settle: _Settle | None = None
    dev: int | None = None  # DEV bit of the last Device write
    device_value: int | None = None
    writes: dict[str, list[int]] = field(default_factory=dict)  # since the last Command or reset
    writes_known: bool = False  # the writes since the last Command are all in the record
    command: _Command | None = None
    block_open: bool = False
    block_size: int | None = None  # bytes in the open DRQ block, when known
    block_left: int | None = None  # bytes left in it
    block_moved: int = 0
    data_fault: bool = False  # a data-port violation reported for the current run
    srst_at: tuple[int, float | None] | None = None  # SRST set and not yet cleared
    reset_pending: bool = False  # SRST cleared, no status read since
    error_valid: bool = False  # Error holds a diagnostic code (after reset or diagnostics)
    nien: bool | None = None
    accesses: int = 0  # ATA register accesses so far (time evidence)
    # bus master
    bm_started: bool | None = None
    bm_left_set: bool = False  # PIIX3-BM-3 already reported for this START
    bm_dirty: dict[int, bool | None] = field(default_factory=lambda: {BM_INTR: None, BM_ERR: None})
    pending_dma: _Command | None = None  # a DMA command written and not yet started
    seen_command: bool = False  # a Command or reset has been seen: BM-2 can be judged
    # interrupts (event indices)
    irq_status_due: int | None = None  # an interrupt taken, no Status read since
    irq_intr_due: int | None = None  # an interrupt taken, the bus master's INTR not cleared since
    irq_expected: int | None = None  # a Command written with nIEN clear, its interrupt not yet taken

    def drive(self) -> int | None:
        return None if self.dev is None else self.number * 2 + self.dev

    def unknown(self) -> bool:
        """Nothing known about the status: the record started here, nothing is judged."""
        return self.status is None and self.stale is None

    def make_stale(self, why: str) -> None:
        self.status, self.stale, self.early = None, why, []

    def busy(self) -> bool:
        return self.status is not None and self.status not in FLOATING and bool(self.status & (BSY | DRQ))


class Checker:
    """The protocol monitor: feed() events in order, then `violations`. check() is the usual
    entry."""

    def __init__(
        self,
        *,
        port_map: PortMap | None = None,
        prd_tables: Sequence[PrdTable | None] | Mapping[int, PrdTable] = (),
        strict_timing: bool = False,
        stamp_resolution_us: float = 1.0,
        context: int = 3,
    ) -> None:
        self.port_map = port_map or PortMap()
        self.prd_tables = prd_tables
        self.strict_timing = strict_timing
        self.resolution = stamp_resolution_us
        self.context = context
        self.channels = [_Channel(0), _Channel(1)]
        self.multiple: dict[int, int | None] = {}  # drive -> sectors per block (0: off), None unknown
        self.violations: list[Violation] = []
        self.events: list[PortAccess] = []
        self.starts = 0
        self.irq_known = False  # the record shows every interrupt taken (IRQ-3 can be judged)
        self._handlers: dict[str, Callable[[int, PortAccess, _Channel], None]] = {
            "status": self._on_status,
            "altstatus": self._on_altstatus,
            "error": self._on_error,
            "device": self._on_device,
            "features": self._on_features,
            "count": self._on_count,
            "lba_low": self._on_lba_low,
            "lba_mid": self._on_lba_mid,
            "lba_high": self._on_lba_high,
            "command": self._on_command,
            "data": self._on_data,
            "devctl": self._on_devctl,
            "bmcommand": self._on_bmcommand,
            "bmstatus": self._on_bmstatus,
            "bmprd": self._on_bmprd,
        }

    # --- bookkeeping ---------------------------------------------------------------------------
    def _report(
        self, rule_id: str, index: int, ch: _Channel | None, detail: str, drive: int | None = None
    ) -> None:
        start = max(0, index - self.context)
        ev = self.events[index]
        self.violations.append(
            Violation(
                rule=RULES[rule_id],
                index=index,
                channel=ch.number if ch is not None else None,
                drive=drive if drive is not None else (ch.drive() if ch is not None else None),
                time_us=ev.time_us,
                detail=detail,
                context=tuple(self.events[start : index + 1]),
                context_start=start,
            )
        )

    def hardware_reset(self) -> None:
        """The controller and both drives were reset (power-on, system_reset)."""
        for n, ch in enumerate(self.channels):
            fresh = _Channel(n, accesses=ch.accesses)
            fresh.stale, fresh.writes_known, fresh.error_valid = STALE_RESET, True, True
            fresh.bm_started, fresh.bm_dirty, fresh.seen_command = (
                False,
                {BM_INTR: False, BM_ERR: False},
                True,
            )
            self.channels[n] = fresh
        self.multiple.clear()

    def _classify(self, ev: PortAccess) -> tuple[int, str] | None:
        """(channel, register) of an access, or None outside the IDE function."""
        port = ev.port
        inbound = ev.direction == "in"
        for n, cmd, ctrl in ((0, PRIMARY_CMD, PRIMARY_CTRL), (1, SECONDARY_CMD, SECONDARY_CTRL)):
            if cmd <= port <= cmd + 7:
                off = port - cmd
                if off == 0:
                    return n, "data"
                if off == 1:
                    return n, "error" if inbound else "features"
                if off == 6:
                    return n, "device"
                if off == 7:
                    return n, "status" if inbound else "command"
                return n, _TASKFILE[off]
            if port == ctrl:
                return n, "altstatus" if inbound else "devctl"
        m = re.fullmatch(r"(primary|secondary) BM (Command|Status|PRD)", ev.register)
        if m:
            return CHANNELS.index(m.group(1)), "bm" + m.group(2).lower()
        if not ev.register:
            base = self.port_map.bm_base
            if base <= port < base + 2 * BM_CHANNEL_STRIDE:
                n, off = divmod(port - base, BM_CHANNEL_STRIDE)
                name = {0: "bmcommand", 2: "bmstatus", 4: "bmprd"}.get(off)
                if name:
                    return n, name
        return None

    def _early(self, settle: _Settle, ch: _Channel, ev: PortAccess) -> bool:
        """Is a status read too soon after `settle` to be trusted?"""
        gap = None
        if settle.time_us is not None and ev.time_us is not None:
            gap = ev.time_us - settle.time_us
        if settle.kind == "reset":
            return gap is not None and gap + self.resolution <= 2000.0
        if gap is not None and gap + self.resolution <= 0.4:
            return True
        if not self.strict_timing:
            return False
        between = ch.accesses - settle.accesses - 1
        if between > 0:
            return False
        return gap is None or gap < 1.0

    # --- the event loop ------------------------------------------------------------------------
    def feed(self, ev: PortAccess) -> None:
        index = len(self.events)
        self.events.append(ev)
        where = self._classify(ev)
        if where is None:
            return
        n, reg = where
        ch = self.channels[n]
        if not reg.startswith("bm"):
            ch.accesses += max(ev.repeat, 1)
        if reg != "data":
            ch.data_fault = False
        if ch.irq_status_due is not None and (
            reg == "data" or ev.direction == "out" and reg in _TASKFILE_OUT
        ):
            due, ch.irq_status_due = ch.irq_status_due, None
            self._report(
                "IRQ-1", index, ch, f"{reg} accessed, no Status read since the interrupt before #{due}"
            )
        self._handlers[reg](index, ev, ch)

    def _on_status(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        ch.irq_status_due = None  # the device drops INTRQ on a read of Status
        self._on_altstatus(index, ev, ch)

    def _on_altstatus(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        """A status read (Alternate Status leaves INTRQ alone; the rest is the same)."""
        if ev.value is None:
            return
        value = ev.value & 0xFF
        if ch.srst_at is not None:  # the devices are held in reset
            ch.early.append(index)
            return
        if ch.settle is not None and self._early(ch.settle, ch, ev):
            ch.early.append(index)
            return
        ch.settle, ch.reset_pending = None, False
        ch.status, ch.stale, ch.early = value, None, []
        cmd = ch.command
        if value in FLOATING or value & BSY:
            return
        if cmd is not None and not cmd.completed:
            if value & DRQ and not cmd.dma and cmd.kind != "non-data":
                if not ch.block_open:
                    self._open_block(ch, cmd.block_bytes())
            elif not value & DRQ:
                self._complete(ch, cmd, value)
        elif cmd is None and value & DRQ and not ch.block_open:
            self._open_block(ch, None)  # a record begun mid-command
        if not value & DRQ:
            ch.block_open = False

    @staticmethod
    def _open_block(ch: _Channel, size: int | None) -> None:
        ch.block_open, ch.block_moved, ch.block_size, ch.block_left = True, 0, size, size

    def _complete(self, ch: _Channel, cmd: _Command, value: int) -> None:
        cmd.completed = True
        ch.block_open = False
        if ch.pending_dma is cmd:  # done (aborted, or run by a START set before it): none pending
            ch.pending_dma = None
        if cmd.opcode == CMD_SET_MULTIPLE and cmd.drive is not None:
            self.multiple[cmd.drive] = 0 if value & ERR else cmd.count
        if cmd.opcode in (CMD_DIAGNOSTIC, CMD_DEVICE_RESET):
            ch.error_valid = True

    def _on_error(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        if ch.error_valid or ch.unknown():
            return
        if ch.status is not None and not ch.status & BSY and ch.status & (ERR | DF):
            return
        seen = f"last status {_status(ch.status)}" if ch.status is not None else ch.stale or ""
        self._report("ATA-ERR-1", index, ch, seen)

    def _judge_write(self, index: int, ch: _Channel, what: str, rule: str) -> bool:
        """The checks every register write (but Device Control) shares; True if one fired."""
        if ch.srst_at is not None:
            self._report("ATA-SRST-3", index, ch, f"{what} written while SRST is still set")
            return True
        if ch.reset_pending:
            self._after_reset(index, ch, what)
            return True
        if ch.stale == STALE_DATA_OUT:
            self._report("ATA-PIO-4", index, ch, f"{what} written after the last data-out block")
            return True
        if ch.block_open and ch.block_left is not None and ch.block_moved:
            self._report(
                "ATA-PIO-2", index, ch, f"{what} written with {ch.block_left} bytes of the block left"
            )
            return True
        if ch.busy():
            self._report(rule, index, ch, f"{what} written, last status {_status(ch.status)}")
            return True
        cmd = ch.command
        if ch.stale == STALE_BLOCK and cmd is not None and cmd.moving():
            self._report(rule, index, ch, f"{what} written between data blocks ({cmd.done} of {cmd.sectors})")
            return True
        if ch.stale == STALE_COMMAND:
            if ch.early:
                self._early_report(index, ch, f"{what} written")
            else:
                self._report(rule, index, ch, f"{what} written with {STALE_COMMAND}")
            return True
        return False

    def _after_reset(self, index: int, ch: _Channel, what: str) -> None:
        if ch.early:
            self._report(
                "ATA-SRST-2",
                index,
                ch,
                f"{what} written after status read {len(ch.early)} time(s), all under 2 ms after SRST "
                f"was cleared (first at #{ch.early[0]})",
            )
        else:
            self._report("ATA-SRST-3", index, ch, f"{what} written with {STALE_RESET}")

    def _early_report(self, index: int, ch: _Channel, action: str) -> None:
        """`action` ("Command 0xec ... written", "data port read") taken on status reads all
        made too soon after the Device change or Command to be trusted."""
        rule = "ATA-SEL-2" if ch.stale == STALE_SELECT else "ATA-CMD-3"
        after = "the Device write" if rule == "ATA-SEL-2" else "the Command"
        reads = ", ".join(f"#{i}" for i in ch.early)
        self._report(rule, index, ch, f"{action} with only status reads too soon after {after} ({reads})")

    def _on_device(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        if ev.direction != "out" or ev.value is None:
            return
        value = ev.value & 0xFF
        self._judge_write(index, ch, "Device", "ATA-SEL-1")
        ch.block_open = False
        dev = 1 if value & DEV_DEV1 else 0
        if ch.dev is None:
            if ch.status is not None:
                ch.status = None  # perhaps the other device now: not known, not judged
        elif dev != ch.dev:
            ch.make_stale(STALE_SELECT)
            ch.settle = _Settle("select", index, ev.time_us, ch.accesses)
        ch.dev, ch.device_value = dev, value

    def _taskfile_write(self, index: int, ev: PortAccess, ch: _Channel, reg: str) -> None:
        if ev.direction != "out" or ev.value is None:
            return
        label = {"features": "Features", "count": "Sector Count"}.get(
            reg, reg.replace("lba_", "LBA ").title()
        )
        self._judge_write(index, ch, label, "ATA-REG-1")
        ch.block_open = False
        ch.writes.setdefault(reg, []).append(ev.value & 0xFF)

    def _on_features(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        self._taskfile_write(index, ev, ch, "features")

    def _on_count(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        self._taskfile_write(index, ev, ch, "count")

    def _on_lba_low(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        self._taskfile_write(index, ev, ch, "lba_low")

    def _on_lba_mid(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        self._taskfile_write(index, ev, ch, "lba_mid")

    def _on_lba_high(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        self._taskfile_write(index, ev, ch, "lba_high")

    def _on_command(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        if ev.value is None:
            return
        op = ev.value & 0xFF
        name = f"{op:#04x} {command_name(op)}"
        drive = ch.drive()
        if ch.bm_started and not ch.bm_left_set:
            ch.bm_left_set = True
            self._report("PIIX3-BM-3", index, ch, f"Command {name} written while START is still set")
        self._judge_interrupts(index, ch, name)
        self._judge_command(index, ch, op, name)
        if op in LBA48 and ch.writes_known:
            short = [r.replace("_", " ") for r in _LBA48_REGS if len(ch.writes.get(r, [])) < 2]
            if short:
                self._report(
                    "ATA-ADDR-1",
                    index,
                    ch,
                    f"{name}: written fewer than twice since the last command: " + ", ".join(short),
                )
        if op in LBA48 and ch.device_value is not None:
            dv = ch.device_value
            if not dv & DEV_LBA or dv & 0x0F:
                self._report("ATA-ADDR-2", index, ch, f"{name} with Device {dv:#04x}")
        if op in MULTIPLE and drive is not None and self.multiple.get(drive) == 0:
            self._report("ATA-PIO-3", index, ch, f"{name} after SET MULTIPLE MODE failed or set 0")
        # the new command
        ch.command = cmd = self._new_command(ch, op, index, drive)
        ch.make_stale(STALE_COMMAND)
        ch.settle = _Settle("command", index, ev.time_us, ch.accesses)
        ch.block_open, ch.block_left, ch.reset_pending = False, None, False
        ch.writes, ch.writes_known, ch.error_valid, ch.seen_command = {}, True, False, True
        ch.pending_dma = cmd if cmd.dma else None
        if not cmd.dma and ch.nien is not True:
            ch.bm_dirty[BM_INTR] = True  # its interrupt may set the bus-master INTR bit
        if self.irq_known and ch.nien is False and cmd.kind != "unknown":
            ch.irq_expected = index

    # --- interrupts ----------------------------------------------------------------------------
    def interrupt(self, line: int) -> None:
        """The CPU took an interrupt of the 8259 pair on `line` before the next event (QEMU's
        pic_interrupt); the IDE channels' lines (14, 15) start obligations."""
        channel = {line: ch for ch, line in IRQ_IDE.items()}.get(line)
        if channel is None:
            return
        ch = self.channels[channel]
        index = len(self.events)
        ch.irq_status_due = ch.irq_intr_due = index
        ch.irq_expected = None

    def _judge_interrupts(self, index: int, ch: _Channel, name: str) -> None:
        what = f"Command {name} written"
        if ch.irq_intr_due is not None:
            self._report(
                "IRQ-2", index, ch, f"{what}, INTR not cleared since the interrupt before #{ch.irq_intr_due}"
            )
        if ch.irq_expected is not None:
            self._report(
                "IRQ-3",
                index,
                ch,
                f"{what}; the command at #{ch.irq_expected} (nIEN clear) had no interrupt taken",
            )
        ch.irq_intr_due = ch.irq_expected = None

    def _judge_command(self, index: int, ch: _Channel, op: int, name: str) -> None:
        what = f"Command {name}"
        if ch.srst_at is not None:
            self._report("ATA-SRST-3", index, ch, f"{what} written while SRST is still set")
            return
        if ch.reset_pending:
            self._after_reset(index, ch, what)
            return
        if ch.stale == STALE_DATA_OUT:
            self._report("ATA-PIO-4", index, ch, f"{what} written after the last data-out block")
            return
        if ch.block_open and ch.block_left is not None and ch.block_moved:
            self._report(
                "ATA-PIO-2", index, ch, f"{what} written with {ch.block_left} bytes of the block left"
            )
            return
        if op == CMD_DEVICE_RESET:
            return
        if ch.status in FLOATING:
            self._report("ATA-FLOAT-1", index, ch, f"{what} written, last status {_status(ch.status)}")
            return
        if ch.status is not None:
            if ch.status & (BSY | DRQ):
                self._report("ATA-CMD-1", index, ch, f"{what} written, last status {_status(ch.status)}")
            elif op in NEEDS_DRDY and not ch.status & DRDY:
                self._report("ATA-CMD-2", index, ch, f"{what} written, last status {_status(ch.status)}")
            return
        if ch.stale is None:
            return
        if ch.early and ch.stale in (STALE_SELECT, STALE_COMMAND):
            self._early_report(index, ch, f"{what} written")
        else:
            self._report("ATA-CMD-1", index, ch, f"{what} written with {ch.stale}")

    def _new_command(self, ch: _Channel, op: int, index: int, drive: int | None) -> _Command:
        if op in DMA_IN:
            kind = "dma-in"
        elif op in DMA_OUT:
            kind = "dma-out"
        elif op in PIO_IN:
            kind = "pio-in"
        elif op in PIO_OUT:
            kind = "pio-out"
        elif op in NON_DATA:
            kind = "non-data"
        else:
            kind = "unknown"
        sectors = None
        counts = ch.writes.get("count", [])
        if op in ONE_BLOCK:
            sectors = 1
        elif counts and (op in MULTIPLE or op in SECTOR_BLOCKS or kind.startswith("dma")):
            if op in LBA48:
                if len(counts) >= 2:
                    sectors = (counts[-2] << 8 | counts[-1]) or 0x10000
            else:
                sectors = counts[-1] or 0x100
        per_block: int | None = None
        if op in SECTOR_BLOCKS or op in ONE_BLOCK:
            per_block = 1
        elif op in MULTIPLE and drive is not None:
            per_block = self.multiple.get(drive) or None
        count = counts[-1] if counts else None
        return _Command(op, index, drive, kind, sectors, per_block, count)

    def _on_data(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        nbytes = ev.width * ev.count * max(ev.repeat, 1)
        cmd = ch.command
        if ch.data_fault:
            return
        if ch.srst_at is not None or ch.reset_pending:
            ch.data_fault = True
            self._report("ATA-SRST-3", index, ch, "data port accessed during or right after a reset")
            return
        if cmd is not None and not cmd.completed:
            if cmd.dma:
                ch.data_fault = True
                self._report(
                    "ATA-PIO-1", index, ch, f"data port accessed during DMA command {cmd.opcode:#04x}"
                )
                return
            wrong = (cmd.kind == "pio-in" and ev.direction == "out") or (
                cmd.kind == "pio-out" and ev.direction == "in"
            )
            if wrong:
                ch.data_fault = True
                self._report(
                    "ATA-PIO-5", index, ch, f"data {ev.direction} during {cmd.kind} command {cmd.opcode:#04x}"
                )
                return
        if not ch.block_open:
            if ch.unknown():
                return
            ch.data_fault = True
            if ch.early and ch.stale in (STALE_SELECT, STALE_COMMAND):
                self._early_report(index, ch, f"data port {'read' if ev.direction == 'in' else 'written'}")
                return
            if ch.status is not None:
                seen = f"last status {_status(ch.status)}"
            elif ch.stale == STALE_BLOCK and ch.block_left == 0:
                self._report("ATA-PIO-2", index, ch, "data beyond the DRQ block without a new DRQ")
                return
            else:
                seen = ch.stale or ""
            self._report("ATA-PIO-1", index, ch, f"data port accessed, {seen}")
            return
        ch.status = None
        ch.stale = STALE_BLOCK
        ch.block_moved += nbytes
        if ch.block_left is None:
            return
        if nbytes > ch.block_left:
            ch.data_fault = True
            self._report(
                "ATA-PIO-2",
                index,
                ch,
                f"{nbytes} bytes moved with {ch.block_left} left of the {ch.block_size}-byte DRQ block",
            )
            ch.block_left = 0
        else:
            ch.block_left -= nbytes
        if ch.block_left == 0:
            ch.block_open = False
            if cmd is not None:
                cmd.done += ch.block_moved // SECTOR
                if cmd.kind == "pio-out" and cmd.sectors is not None and cmd.done >= cmd.sectors:
                    ch.stale = STALE_DATA_OUT

    def _on_devctl(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        if ev.value is None:
            return
        value = ev.value & 0xFF
        ch.nien = bool(value & DC_NIEN)
        if value & DC_SRST:
            ch.irq_status_due = ch.irq_expected = None  # the reset deasserts INTRQ
            if ch.srst_at is None:
                ch.srst_at = (index, ev.time_us)
                ch.make_stale(STALE_RESET)
                ch.command, ch.pending_dma, ch.block_open = None, None, False
            return
        if ch.srst_at is None:
            return
        set_index, set_time = ch.srst_at
        ch.srst_at = None
        if set_time is not None and ev.time_us is not None:
            held = ev.time_us - set_time
            if held + self.resolution <= 5.0:
                self._report("ATA-SRST-1", index, ch, f"SRST held {held:.0f} us (set at #{set_index})")
        ch.make_stale(STALE_RESET)
        ch.reset_pending = True
        ch.settle = _Settle("reset", index, ev.time_us, ch.accesses)
        ch.dev = ch.device_value = None
        ch.writes, ch.writes_known, ch.error_valid, ch.seen_command = {}, True, True, True
        for d in (ch.number * 2, ch.number * 2 + 1):
            self.multiple.pop(d, None)

    # --- bus master ----------------------------------------------------------------------------
    def _on_bmcommand(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        if ev.direction != "out" or ev.value is None:
            return
        value = ev.value & 0xFF
        if not value & BM_START:
            ch.bm_started = False
            return
        if ch.bm_started:
            return  # already running: rewriting START=1 starts nothing
        cmd = ch.pending_dma
        if cmd is None:
            if ch.seen_command:
                last = ch.command
                what = (
                    f"last command {last.opcode:#04x} {command_name(last.opcode)}" if last else "no command"
                )
                self._report("PIIX3-BM-2", index, ch, f"START set with no DMA command pending ({what})")
        else:
            want = BM_READ if cmd.kind == "dma-in" else 0
            if value & BM_READ != want:
                self._report(
                    "PIIX3-BM-4",
                    index,
                    ch,
                    f"START with Read/Write Control {int(bool(value & BM_READ))} for {cmd.kind} command "
                    f"{cmd.opcode:#04x} {command_name(cmd.opcode)}",
                    cmd.drive,
                )
        dirty = [name for bit, name in ((BM_INTR, "INTR"), (BM_ERR, "ERR")) if ch.bm_dirty[bit]]
        if dirty:
            self._report(
                "PIIX3-BM-1", index, ch, f"START set with {'/'.join(dirty)} not cleared since it may have set"
            )
        self._check_prd(index, ch, cmd)
        self.starts += 1
        ch.bm_started, ch.bm_left_set = True, False
        ch.pending_dma = None
        ch.bm_dirty[BM_ERR] = True
        ch.bm_dirty[BM_INTR] = ch.nien is not True or ch.bm_dirty[BM_INTR]

    def _on_bmstatus(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        if ev.value is None:
            return
        value = ev.value & 0xFF
        running = bool(ch.bm_started and value & BM_ACTIVE)  # a clear bit may still be set later
        if ev.direction == "out" and value & BM_INTR or ev.direction == "in" and not value & BM_INTR:
            # bus-master accesses carry no channel in QEMU's trace (see devtrace): either channel's
            for other in self.channels:
                other.irq_intr_due = None
        for bit in (BM_INTR, BM_ERR):
            if ev.direction == "out":
                if value & bit:  # write 1 to clear
                    ch.bm_dirty[bit] = False
            elif value & bit:
                ch.bm_dirty[bit] = True
            elif not running:
                ch.bm_dirty[bit] = False

    def _on_bmprd(self, index: int, ev: PortAccess, ch: _Channel) -> None:
        if ev.direction != "out" or ev.value is None or ev.width != 4:
            return
        if ev.value & 3:
            self._report("PIIX3-BM-5", index, ch, f"PRD table pointer {ev.value:#x}")

    def _table_for(self, start: int) -> PrdTable | None:
        tables = self.prd_tables
        if isinstance(tables, Mapping):
            return tables.get(start)
        return tables[start] if start < len(tables) else None

    def _check_prd(self, index: int, ch: _Channel, cmd: _Command | None) -> None:
        table = self._table_for(self.starts)
        if table is None:
            return
        drive = cmd.drive if cmd else None
        addr, entries = table.address, table.entries
        if entries:
            end = addr + 8 * len(entries) - 1
            if addr >> 16 != end >> 16:
                self._report("PIIX3-PRD-1", index, ch, f"table {addr:#x}-{end:#x} crosses 64 KiB", drive)
        for k, e in enumerate(entries):
            if e.base & 1 or e.count_field & 1 or (e.base & 0xFFFF) + e.size > PRD_REGION_LIMIT:
                self._report("PIIX3-PRD-2", index, ch, f"entry {k}: base {e.base:#x}, {e.size} bytes", drive)
        eots = [k for k, e in enumerate(entries) if e.eot]
        if not entries or eots != [len(entries) - 1]:
            self._report("PIIX3-PRD-3", index, ch, f"{len(entries)} entries, EOT on {eots or 'none'}", drive)
        if cmd is not None and cmd.sectors is not None:
            total = sum(e.size for e in entries)
            if total < cmd.sectors * SECTOR:
                self._report(
                    "PIIX3-PRD-4",
                    index,
                    ch,
                    f"{total} bytes in the table for {cmd.sectors} sectors ({cmd.sectors * SECTOR} bytes)",
                    drive,
                )


def _status(value: int | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:#04x} ({decode_status(value)})"


def check(
    events: Sequence[PortAccess],
    *,
    port_map: PortMap | None = None,
    hardware_resets: Iterable[int] = (),
    prd_tables: Sequence[PrdTable | None] | Mapping[int, PrdTable] = (),
    strict_timing: bool = False,
    stamp_resolution_us: float = 1.0,
    context: int = 3,
    interrupts: Iterable[tuple[int, int]] | None = None,
) -> list[Violation]:
    """Check a record of port accesses (either side, raw or normalized) against the rules.
    The record must hold every access to the IDE ports (a driver-side watch of all of them, as
    `m.watch_ports()` does by default, or a QEMU trace of ide_* and bmdma_*): the rules rely on
    seeing each status read, and a watch of some ports only would make them fire wrongly.

    hardware_resets: event indices where the controller was reset before that event (see
    hardware_resets() for a parsed QEMU trace). prd_tables: the PRD table of each START, in
    order (None where unknown), or a mapping from START number (0, 1, ...) to table.
    strict_timing: a status read right after a Device or Command write, with no other register
    access and under 1 µs between them, is not trusted (see the module doc).
    stamp_resolution_us: how coarse the timestamps are. context: accesses shown before the
    offending one. interrupts: (event index, line) of each interrupt the CPU took before that
    event (see interrupts() for a parsed QEMU trace), from a record that shows every interrupt
    taken; None (the record cannot show them): the IRQ rules judge nothing."""
    checker = Checker(
        port_map=port_map,
        prd_tables=prd_tables,
        strict_timing=strict_timing,
        stamp_resolution_us=stamp_resolution_us,
        context=context,
    )
    resets = sorted(set(hardware_resets))
    checker.irq_known = interrupts is not None
    taken = sorted(interrupts or ())
    for index, ev in enumerate(events):
        while resets and resets[0] <= index:
            resets.pop(0)
            checker.hardware_reset()
        while taken and taken[0][0] <= index:
            checker.interrupt(taken.pop(0)[1])
        checker.feed(ev)
    return checker.violations
