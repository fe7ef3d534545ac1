"""Seeded bugs: the protocol checker names the rule each realistic driver bug breaks.

Each case is a small textual edit of a copy of guest/ata.c, built with the project's Makefile
(tests/mutate/guestbuild.py), booted, and run through an operation while QEMU's device trace
records it; the checker (harness.portio.protocol.check) must name the case's rule. The same
operations on the unaltered driver must come out clean, so each case can fail only for its bug.
Most of these bugs are forgiven by QEMU: the data arrives all the same, and only the record
shows them. Each kernel is built once per module, recompiling only ata.c.

Not here, and why:
- dropping SET MULTIPLE MODE: QEMU's drive powers up with multiple mode on (16 sectors, and
  IDENTIFY word 59 says so), so READ/WRITE MULTIPLE without it breaks no rule against this
  drive; the case below sends SET MULTIPLE MODE with its count in the wrong register instead;
- treating a floating bus (FFh) as a device: every command path of this driver first waits for
  BSY and DRQ to clear, which FFh never shows, so no command reaches a floating bus (ATA-FLOAT-1)
  and the bug costs bounded waits instead: tests/integration/test_gaps.py's floating-bus test
  catches those;
- dropping the SRST pulse delay: QEMU 7.2 carries out the SRST write in its main loop while the
  vCPU waits for the lock, so the stamped pulse is ~100 us with or without the driver's 5 us
  (ATA-SRST-1 is shown firing on hand-made and altered real records in tests/unit);
- LBA48 HOB bytes in the wrong order: the record cannot tell which write was meant as the high
  byte; the data lands elsewhere, which the >2 TiB and boundary tests see from the host.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import AtaCode, AtaError, DiskImage, Machine
from harness.paths import find_kernel
from harness.portio.protocol import PrdTable, Violation, check, hardware_resets, interrupts, render_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mutate"))
import guestbuild  # noqa: E402  (tests/mutate is no package: the mutation runner is a script)

pytestmark = pytest.mark.qemu

SECTOR = 512
LBA28_LIMIT = 1 << 28
BIG_SECTORS = LBA28_LIMIT + (1 << 20)  # drive 0: sparse, past the LBA28 limit
HELD_TIMEOUT_MS = 5
TABLE_TIMEOUT_MS = 50  # an 8-sector DMA read takes well under 1 ms
IRQ_TIMEOUT_MS = 200
PRD_TABLE_BYTES = 8 * 16


@dataclass
class Run:
    """What a scenario did: driver errors it met (a bug may make calls fail) and the PRD table
    of its last DMA call, read from guest memory."""

    errors: list[AtaError]
    prd_tables: list[PrdTable]


def attempt(run: Run, call: Callable[[], object]) -> None:
    try:
        call()
    except AtaError as exc:
        run.errors.append(exc)


SRST_REPEATS = 8  # a loaded host can stall QEMU's vCPU between two accesses for milliseconds


def srst_twice(m: Machine, run: Run) -> None:
    """Soft resets of the primary channel (SRST, then detection of both drives). QEMU carries
    out the first one late (its code is translated then): the others show the driver's own
    timing. The timing rules read QEMU's stamps, taken on the host: a busy host can stretch any
    one gap past 2 ms, so a missing wait shows in some of several resets, not in every one."""
    for _ in range(SRST_REPEATS):
        attempt(run, lambda: m.ata.reset_channel(0))


def srst_then_pio(m: Machine, run: Run) -> None:
    """SRST (detection sets multiple mode), then a 17-sector PIO read: a 16-sector DRQ block and a
    1-sector one."""
    attempt(run, lambda: m.ata.reset_channel(0))
    attempt(run, lambda: m.ata.read(0, 100, 17, mode="pio"))


def lba48_dma(m: Machine, run: Run) -> None:
    """A DMA read, then one past the LBA28 limit (READ DMA EXT): the record holds all the writes
    since the previous command."""
    attempt(run, lambda: m.ata.read(0, 5, 1, mode="dma"))
    attempt(run, lambda: m.ata.read(0, LBA28_LIMIT + 5, 8, mode="dma"))


def lba48_bits_24_27(m: Machine, run: Run) -> None:
    """An LBA48 read (300 sectors: more than LBA28 moves) at an LBA with bits 27:24 set."""
    attempt(run, lambda: m.ata.read(0, 0x0F00_0000, 300, mode="dma"))


def two_dma(m: Machine, run: Run) -> None:
    attempt(run, lambda: m.ata.read(0, 10, 4, mode="dma"))
    attempt(run, lambda: m.ata.read(0, 20, 4, mode="dma"))


def dma_then_pio(m: Machine, run: Run) -> None:
    attempt(run, lambda: m.ata.read(0, 10, 4, mode="dma"))
    attempt(run, lambda: m.ata.read(0, 20, 4, mode="pio"))


def flush(m: Machine, run: Run) -> None:
    attempt(run, lambda: m.ata.flush(0))


def switch_drives(m: Machine, run: Run) -> None:
    """A read on the master, then one on the slave: the second selects the other device."""
    attempt(run, lambda: m.ata.read(0, 10, 1, mode="pio"))
    attempt(run, lambda: m.ata.read(1, 10, 1, mode="pio"))


def irq_pio_then_flush(m: Machine, run: Run) -> None:
    """irq completion: a 20-sector PIO read (two DRQ blocks, an interrupt before each), then
    FLUSH CACHE; poll completion again afterwards. A short bound: a bug may lose an interrupt."""
    default = m.ata.timeout_ms
    m.ata.set_completion("irq")
    m.ata.timeout_ms = IRQ_TIMEOUT_MS
    try:
        attempt(run, lambda: m.ata.read(0, 100, 20, mode="pio"))
        attempt(run, lambda: m.ata.flush(0))
    finally:
        m.ata.timeout_ms = default
        m.ata.set_completion("poll")


def held_dma_then_read(m: Machine, run: Run) -> None:
    """A DMA read held in QEMU until the driver's wait runs out (the drive stays busy), then
    the next read on the channel."""
    default = m.ata.timeout_ms
    m.hold_io(0, "read")
    m.ata.timeout_ms = HELD_TIMEOUT_MS
    attempt(run, lambda: m.ata.read(0, 5, 1, mode="dma"))
    m.ata.timeout_ms = default
    attempt(run, lambda: m.ata.read(0, 6, 1, mode="pio"))


def dma_with_table(m: Machine, run: Run) -> None:
    """One DMA read of 8 sectors, and the PRD table it left in guest memory. A short bound on
    the driver's wait: a table without EOT keeps the engine active, and every poll until the
    wait runs out is a line of the record."""
    default = m.ata.timeout_ms
    m.ata.timeout_ms = TABLE_TIMEOUT_MS
    attempt(run, lambda: m.ata.read(0, 10, 8, mode="dma"))
    m.ata.timeout_ms = default
    addr = m.evaluate_int("(unsigned int)&prd_table")
    run.prd_tables.append(PrdTable.from_bytes(addr, m.read_memory(addr, PRD_TABLE_BYTES)))


Scenario = Callable[[Machine, Run], None]


@dataclass(frozen=True)
class Bug:
    """A realistic driver bug: textual edits of ata.c (old, new), the rule the checker must
    name, and the operation that shows it."""

    name: str
    rule: str
    edits: tuple[tuple[str, str], ...]
    scenario: Scenario
    why: str  # what the bug is, as a driver writer would make it
    hold: bool = False  # the scenario holds a request in QEMU (blkdebug in the chain)


BUGS = [
    Bug(
        "set-multiple-count-in-features",
        "ATA-PIO-3",
        (
            (
                "nondata(drive, ATA_CMD_SET_MULTIPLE, 0, max_multiple)",
                "nondata(drive, ATA_CMD_SET_MULTIPLE, max_multiple, 0)",
            ),
        ),
        srst_then_pio,
        "SET MULTIPLE MODE with the block size in Features (arguments swapped): Sector Count 0 turns "
        "multiple mode off, and READ MULTIPLE follows",
    ),
    Bug(
        "srst-settle-dropped",
        "ATA-SRST-2",
        (("\tudelay(ATA_SRST_SETTLE_US);\n", ""),),
        srst_twice,
        "status trusted right after SRST is cleared: no 2 ms wait",
    ),
    Bug(
        "hob-lba-high-dropped",
        "ATA-ADDR-1",
        (("\t\tcmd_out(ch, ATA_CB_CH, (uint8_t)(tf->lba >> 40));\n", ""),),
        lba48_dma,
        "the HOB LBA High byte never written (it was zero in every test LBA)",
    ),
    Bug(
        "lba48-bits-in-device",
        "ATA-ADDR-2",
        (
            (
                "select_drive(drive, tf->lba48 ? 0 : (uint8_t)((tf->lba >> 24) & 0x0F))",
                "select_drive(drive, (uint8_t)((tf->lba >> 24) & 0x0F))",
            ),
        ),
        lba48_bits_24_27,
        "LBA bits 27:24 put in Device for LBA48 commands too, where bits 3:0 are reserved",
    ),
    Bug(
        "intr-not-cleared",
        "PIIX3-BM-1",
        (
            ("\t\tctl_out(&channels[c], ATA_CB_DC_NIEN);\n", "\t\tctl_out(&channels[c], 0);\n"),
            (
                "\tbm_out(ch, BM_STATUS, (uint8_t)(bm_in(ch, BM_STATUS) | BM_STATUS_ERR | "
                "BM_STATUS_INTR));\n",
                "",
            ),
        ),
        two_dma,
        "interrupts left on (nIEN clear) and the bus master's INTR never acknowledged before START",
    ),
    Bug(
        "start-before-command",
        "PIIX3-BM-2",
        (
            (
                "\tbm_out(ch, BM_CMD, dir);\n\tconst struct",
                "\tbm_out(ch, BM_CMD, (uint8_t)(dir | BM_CMD_START));\n\tconst struct",
            ),
            ("\tbm_out(ch, BM_CMD, (uint8_t)(dir | BM_CMD_START));\n\tuint64_t", "\tuint64_t"),
        ),
        two_dma,
        "the bus master started before the DMA command is written",
    ),
    Bug(
        "engine-not-stopped",
        "PIIX3-BM-3",
        (("\tbm_out(ch, BM_CMD, dir);\t/* stop the engine */\n", ""),),
        dma_then_pio,
        "START left set after a DMA transfer (the next DMA clears it, a PIO command does not)",
    ),
    Bug(
        "bm-direction-inverted",
        "PIIX3-BM-4",
        (("uint8_t dir = writing ? 0 : BM_CMD_READ;", "uint8_t dir = writing ? BM_CMD_READ : 0;"),),
        two_dma,
        "the bus master's Read/Write Control bit inverted (QEMU takes the direction from the command)",
    ),
    Bug(
        "eot-missing",
        "PIIX3-PRD-3",
        (("\tprd_table[2 * (n - 1) + 1] |= BM_PRD_EOT;\n", ""),),
        dma_with_table,
        "no EOT on the last PRD entry (QEMU keeps the engine active, so the driver's wait runs out)",
    ),
    Bug(
        "error-read-to-acknowledge",
        "ATA-ERR-1",
        (
            (
                "\trc = wait_ready(ch, ATA_PHASE_COMPLETE, 0);\n"
                "\tcmd_in(ch, ATA_CB_STAT);\t/* acknowledge */\n"
                "\treturn rc;\n}\n\n/**** Argument",
                "\trc = wait_ready(ch, ATA_PHASE_COMPLETE, 0);\n"
                "\tcmd_in(ch, ATA_CB_ERR);\t/* acknowledge */\n"
                "\treturn rc;\n}\n\n/**** Argument",
            ),
        ),
        flush,
        "a non-data command acknowledged by reading Error instead of Status (a register-name slip)",
    ),
    Bug(
        "pio-last-block-whole",
        "ATA-PIO-2",
        (("uint32_t n = count - done < block ? count - done : block;", "uint32_t n = block;"),),
        srst_then_pio,
        "the last, partial DRQ block of READ MULTIPLE read as a whole block",
    ),
    Bug(
        "command-without-new-device-status",
        "ATA-CMD-1",
        (
            (
                "\tdelay400(ch);\n"
                "\tif (wait_status(ch, ATA_CB_STAT_BSY | ATA_CB_STAT_DRQ, 0, timeout_us(), &st))\n"
                "\t\treturn fail_hw(ATA_ERR_TIMEOUT, ch, st, ATA_PHASE_SELECT, 0);\n\treturn ATA_OK;",
                "\treturn ATA_OK;",
            ),
        ),
        switch_drives,
        "the task file and Command written right after selecting the other device, its status never read",
    ),
    Bug(
        "irq-status-not-read",
        "IRQ-1",
        (
            (
                "\tuint8_t st = cmd_in(ch, ATA_CB_STAT);\t/* acknowledge: the drive drops INTRQ */\n",
                "\tuint8_t st = alt_status(ch);\n",
            ),
        ),
        irq_pio_then_flush,
        "the interrupt handler reads Alternate Status, not Status: INTRQ stays asserted, the next "
        "block's interrupt makes no new edge at the 8259 and is lost",
    ),
    Bug(
        "irq-intr-not-written-back",
        "IRQ-2",
        (
            (
                "\tif (bms & BM_STATUS_INTR)\n\t\tbm_out(ch, BM_STATUS,\n\t\t       (uint8_t)((bms & "
                "(BM_STATUS_DRV0_DMA | BM_STATUS_DRV1_DMA)) | BM_STATUS_INTR));\n",
                "",
            ),
        ),
        irq_pio_then_flush,
        "the interrupt handler leaves the bus master's INTR set (only a DMA's own set-up clears it)",
    ),
    Bug(
        "select-while-busy",
        "ATA-SEL-1",
        (
            (
                "\tuint8_t st;\n"
                "\tif (wait_status(ch, ATA_CB_STAT_BSY | ATA_CB_STAT_DRQ, 0, timeout_us(), &st))\n"
                "\t\treturn fail_hw(ATA_ERR_TIMEOUT, ch, st, ATA_PHASE_SELECT, 0);\n\tcmd_out(ch, ATA_CB_DH,",
                "\tuint8_t st;\n\tcmd_out(ch, ATA_CB_DH,",
            ),
        ),
        held_dma_then_read,
        "Device written without first waiting for BSY and DRQ to clear (after a timeout they are set)",
        hold=True,
    ),
]
SCENARIOS = sorted({(b.scenario.__name__, b.hold): b.scenario for b in BUGS}.items())


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Bug], Path]:
    """The seeded kernel of a bug, built on first use (a fraction of a second: only ata.c is
    recompiled) and kept for the module."""
    root = tmp_path_factory.mktemp("seeded")
    built: dict[str, Path] = {}

    def kernel(bug: Bug) -> Path:
        if bug.name not in built:
            src = guestbuild.copy_guest(root / bug.name)
            for old, new in bug.edits:
                guestbuild.replace_once(src / "ata.c", old, new)
            built[bug.name] = guestbuild.build(src)
        return built[bug.name]

    return kernel


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, DiskImage]:
    root = tmp_path_factory.mktemp("seeded-disks")
    return {
        0: DiskImage.create(root / "big.img", size_bytes=BIG_SECTORS * SECTOR),
        1: DiskImage.create(root / "small.img", size_mib=4),
    }


@pytest.fixture
def boot(tmp_path: Path, disks: dict[int, DiskImage]) -> Iterator[Callable[[Path, bool], Machine]]:
    """Boot a kernel on the two disks (blkdebug on drive 0 where a request is to be held)."""
    made: list[Machine] = []

    def start(kernel: Path, hold: bool) -> Machine:
        m = Machine(
            disks=disks,
            kernel=kernel,
            faults={0: []} if hold else None,
            artifacts_dir=tmp_path / f"machine{len(made)}",
        )
        made.append(m)
        m.start()
        return m

    yield start
    for m in made:
        m.close(failed=False)


def record(m: Machine, scenario: Scenario) -> tuple[list[Violation], Run]:
    """Run the scenario under QEMU's device trace and check the record."""
    run = Run([], [])
    with m.device_trace() as dev:
        scenario(m, run)
    found = check(
        dev.events,
        port_map=m.ports.port_map(),
        hardware_resets=hardware_resets(dev.actions),
        prd_tables=run.prd_tables,
        interrupts=interrupts(dev.actions),
    )
    return found, run


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_the_checker_names_the_seeded_bug(
    bug: Bug, kernels: Callable[[Bug], Path], boot: Callable[[Path, bool], Machine]
) -> None:
    m = boot(kernels(bug), bug.hold)
    found, _ = record(m, bug.scenario)
    named = {v.rule.id for v in found}
    assert bug.rule in named, f"{bug.why}: the checker found {sorted(named) or 'nothing'}\n" + render_text(
        found
    )


@pytest.mark.parametrize("hold", [False, True], ids=["plain", "with-blkdebug"])
def test_the_unaltered_driver_is_clean_in_each_scenario(
    hold: bool, boot: Callable[[Path, bool], Machine]
) -> None:
    """Every scenario above, one after the other on the driver as it is: no violation, no error
    (but the timeout a held request is meant to cause)."""
    m = boot(find_kernel(), hold)
    scenarios = [scenario for (_, held), scenario in SCENARIOS if held == hold]
    assert scenarios
    for scenario in scenarios:
        found, run = record(m, scenario)
        assert found == [], f"{scenario.__name__}:\n" + render_text(found)
        expected = [AtaCode.TIMEOUT] if hold else []
        assert [e.code for e in run.errors] == expected, (
            f"{scenario.__name__}: {[str(e) for e in run.errors]}"
        )
