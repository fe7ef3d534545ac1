"""Port watching without QEMU: finding port instructions in recorded GDB disassembly, naming and
decoding accesses, parsing recorded QEMU trace lines, and comparing two records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.portio.access import PortAccess, PortError, PortMap
from harness.portio.compare import coalesce_data, compare, diff_text, normalize, squash
from harness.portio.devtrace import DeviceAction, parse_trace
from harness.portio.gdb_agent import Site, classify, find_sites
from harness.portio.watch import events_from_agent
from harness.stops import Stop

DATA = Path(__file__).resolve().parents[1] / "data"
BM = 0xC000  # where SeaBIOS put BAR4 in the recordings
PMAP = PortMap(BM)
IDE = PMAP.ranges(["ide"])


def _disasm(name: str) -> list[tuple[int, int, str]]:
    rows = []
    for line in (DATA / name).read_text().splitlines():
        addr, length, asm = line.split("\t")
        rows.append((int(addr, 16), int(length), asm))
    return rows


def _trace_sections() -> dict[str, list[str]]:
    """qemu-trace-ops.log: real trace lines of one operation after each '# title' line."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (DATA / "qemu-trace-ops.log").read_text().splitlines():
        if line.startswith("# "):
            current = sections.setdefault(line[2:], [])
        else:
            current.append(line)
    return sections


TRACES = _trace_sections()
DRIVER: dict[str, Any] = json.loads((DATA / "ports-driver-events.json").read_text())


# --- finding port instructions ------------------------------------------------------------------
VARIANTS = {  # GDB's own disassembly of guest-style instructions (tests/data, from `as --32`)
    "in     $0x60,%al": ("in", 1, 0x60, False, False),
    "in     $0x60,%ax": ("in", 2, 0x60, False, False),
    "in     $0x60,%eax": ("in", 4, 0x60, False, False),
    "in     (%dx),%al": ("in", 1, None, False, False),
    "in     (%dx),%ax": ("in", 2, None, False, False),
    "in     (%dx),%eax": ("in", 4, None, False, False),
    "out    %al,$0x80": ("out", 1, 0x80, False, False),
    "out    %ax,$0x80": ("out", 2, 0x80, False, False),
    "out    %eax,$0x80": ("out", 4, 0x80, False, False),
    "out    %al,(%dx)": ("out", 1, None, False, False),
    "out    %ax,(%dx)": ("out", 2, None, False, False),
    "out    %eax,(%dx)": ("out", 4, None, False, False),
    "insb   (%dx),%es:(%edi)": ("in", 1, None, True, False),
    "insw   (%dx),%es:(%edi)": ("in", 2, None, True, False),
    "insl   (%dx),%es:(%edi)": ("in", 4, None, True, False),
    "outsb  %ds:(%esi),(%dx)": ("out", 1, None, True, False),
    "outsw  %ds:(%esi),(%dx)": ("out", 2, None, True, False),
    "outsl  %ds:(%esi),(%dx)": ("out", 4, None, True, False),
    "rep insw (%dx),%es:(%edi)": ("in", 2, None, True, True),
    "rep outsb %ds:(%esi),(%dx)": ("out", 1, None, True, True),
    "rep insl (%dx),%es:(%edi)": ("in", 4, None, True, True),
    "rep outsl %ds:(%esi),(%dx)": ("out", 4, None, True, True),
}
NOT_PORT_IO = ["cld", "std", "int    $0x80", "int3", "inc    %eax", "inc    %ecx", "rep stos %al,%es:(%edi)"]


@pytest.mark.parametrize("row", _disasm("gdb-disasm-port-variants.txt"), ids=lambda r: r[2])
def test_classify_recorded_disassembly(row: tuple[int, int, str]) -> None:
    addr, length, asm = row
    site = classify(addr, length, asm)
    if asm in NOT_PORT_IO:
        assert site is None
        return
    assert asm in VARIANTS, f"recorded instruction {asm!r} has no expectation"
    assert site is not None
    assert (site.direction, site.width, site.port, site.string, site.rep) == VARIANTS[asm]
    assert site.after == addr + length


def test_every_recorded_variant_is_expected() -> None:
    recorded = {asm for _, _, asm in _disasm("gdb-disasm-port-variants.txt")}
    assert set(VARIANTS) | set(NOT_PORT_IO) == recorded


def test_rep_string_after_cld_is_entered_at_the_cld() -> None:
    sites = {s.addr: s for s in find_sites(_disasm("gdb-disasm-port-variants.txt"))}
    rep_insw, rep_outsb, rep_insl, rep_outsl = (sites[a] for a in (0x101F, 0x1023, 0x1026, 0x1028))
    assert (rep_insw.entry, rep_insw.df_known) == (0x101E, True)  # cld right before
    assert (rep_outsb.entry, rep_outsb.df_known) == (0x1022, True)
    assert (rep_insl.entry, rep_insl.df_known) == (0x1026, False)  # after std: caught at itself
    assert (rep_outsl.entry, rep_outsl.df_known) == (0x1028, False)  # after another rep
    assert all(s.entry == s.addr for s in sites.values() if not s.rep)
    assert len(sites) == len(VARIANTS)


def test_site_json_round_trip() -> None:
    site = Site(0x1000, 2, "in", 1, 0x60, string=False, rep=False, entry=0x1000)
    assert site.to_json()["port"] == 0x60 and site.after == 0x1002


# --- naming and decoding ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("direction", "port", "value", "register", "decoded"),
    [
        ("out", 0x1F7, 0xC5, "primary Command", "WRITE MULTIPLE"),
        ("out", 0x177, 0x30, "secondary Command", "WRITE SECTORS"),
        ("out", 0x1F7, 0xEA, "primary Command", "FLUSH CACHE EXT"),
        ("in", 0x1F7, 0x58, "primary Status", "DRQ|DSC|DRDY"),
        ("in", 0x3F6, 0x41, "primary Alt Status", "ERR|DRDY"),
        ("in", 0x1F1, 0x04, "primary Error", "ABRT"),
        ("out", 0x1F1, 0x82, "primary Features", ""),
        ("out", 0x1F6, 0xF0, "primary Device", "LBA slave"),
        ("out", 0x176, 0xE3, "secondary Device", "LBA master, LBA[27:24]=0x3"),
        ("out", 0x376, 0x06, "secondary Device Control", "SRST|nIEN"),
        ("out", 0x3F6, 0x82, "primary Device Control", "HOB|nIEN"),
        ("out", BM, 0x09, "primary BM Command", "START|READ"),
        ("out", BM + 8, 0x08, "secondary BM Command", "stop (READ)"),
        ("in", BM + 2, 0x25, "primary BM Status", "ACTIVE|INTR|DRV0-DMA"),
        ("in", BM + 10, 0x40, "secondary BM Status", "DRV1-DMA"),
        ("out", BM + 4, 0x108000, "primary BM PRD", "table at 0x108000"),
        ("out", 0xCF8, 0x80000920, "PCI Config Address", "00:01.1 offset 0x20"),
        ("in", 0x3FD, 0x60, "COM1 LSR", ""),
        ("in", 0x1234, 0x00, "", ""),
    ],
)
def test_register_names_and_decoding(
    direction: str, port: int, value: int, register: str, decoded: str
) -> None:
    width = 4 if port in (BM + 4, 0xCF8) else 1
    ev = PMAP.access(direction, port, width, value)
    assert (ev.register, ev.decoded) == (register, decoded)


def test_string_transfer_decoding() -> None:
    ev = PMAP.access("in", 0x1F0, 4, None, 128, data=bytes(512))
    assert (ev.register, ev.decoded, ev.string) == ("primary Data", "512 bytes", True)
    assert "128 x 32-bit" in ev.brief()


@pytest.mark.parametrize(
    ("specs", "ranges"),
    [
        ((), IDE),
        (("primary",), [(0x1F0, 0x1F7)]),
        (("primary", 0x3F6), [(0x1F0, 0x1F7), (0x3F6, 0x3F6)]),
        (("bmdma",), [(BM, BM + 15)]),
        (("bmdma-secondary",), [(BM + 8, BM + 15)]),
        ((range(0x170, 0x178),), [(0x170, 0x177)]),
        (((0x80, 0x81),), [(0x80, 0x81)]),
        (("0x1f7",), [(0x1F7, 0x1F7)]),
        (("0x1F0-0x1F7", "PRIMARY-CTRL"), [(0x1F0, 0x1F7), (0x3F6, 0x3F6)]),
    ],
)
def test_port_specs(specs: tuple[Any, ...], ranges: list[tuple[int, int]]) -> None:
    assert PMAP.ranges(specs) == ranges


@pytest.mark.parametrize("bad", ["tertiary", "0x1f7-0x1f0", 0x10000, range(5, 5), range(0, 10, 2), 1.5, True])
def test_bad_port_specs_are_refused(bad: Any) -> None:
    with pytest.raises(PortError):
        PMAP.ranges([bad])


def test_ide_covers_both_channels_and_the_bus_master() -> None:
    covered = {p for lo, hi in IDE for p in range(lo, hi + 1)}
    assert {0x1F0, 0x1F7, 0x3F6, 0x170, 0x177, 0x376, BM, BM + 2, BM + 4, BM + 10, BM + 12} <= covered
    assert 0x3F8 not in covered and 0xCF8 not in covered


# --- the device side: recorded QEMU trace lines ---------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "ide_ioport_write IDE PIO wr @ 0x1f7 (Command); val 0xc5"
            "; bus 0x55b01a7daba0 IDEState 0x55b01a7dac28",
            ("out", 0x1F7, 1, 0xC5, "primary Command", "WRITE MULTIPLE"),
        ),
        (
            "ide_ioport_read IDE PIO rd @ 0x177 (Status); val 0x50"
            "; bus 0x55b01a7db4a0 IDEState 0x55b01a7db528",
            ("in", 0x177, 1, 0x50, "secondary Status", "DSC|DRDY"),
        ),
        (
            "ide_status_read IDE PIO rd @ 0x3f6 (Alt Status); val 0x58"
            "; bus 0x55b01a7daba0; IDEState 0x55b01a7dac28",
            ("in", 0x3F6, 1, 0x58, "primary Alt Status", "DRQ|DSC|DRDY"),
        ),
        (
            "ide_ctrl_write IDE PIO wr @ 0x376 (Device Control); val 0x06; bus 0x55b01a7db4a0",
            ("out", 0x376, 1, 0x06, "secondary Device Control", "SRST|nIEN"),
        ),
        (
            "ide_data_readl IDE PIO rd @ 0x1f0 (Data: Long); val 0x3030514d; bus 0x5621; IDEState 0x5621",
            ("in", 0x1F0, 4, 0x3030514D, "primary Data", ""),
        ),
        (
            "ide_data_writew IDE PIO wr @ 0x170 (Data: Word); val 0x6568; bus 0x5621; IDEState 0x5621",
            ("out", 0x170, 2, 0x6568, "secondary Data", ""),
        ),
        (
            "1234@1700000000.123456:ide_ioport_write IDE PIO wr @ 0x1f6 (Device/Head); val 0xe0"
            "; bus 0x1 IDEState 0x2",
            ("out", 0x1F6, 1, 0xE0, "primary Device", "LBA master"),
        ),
        (
            "bmdma_write bmdma: writeb 0x2 : 0x26",
            ("out", BM + 2, 1, 0x26, "primary BM Status", "ERR|INTR|DRV0-DMA"),
        ),
        ("bmdma_read bmdma: readb 0x2 : 0x20", ("in", BM + 2, 1, 0x20, "primary BM Status", "DRV0-DMA")),
        (
            "bmdma_addr_write data: 0x0000000000108000",
            ("out", BM + 4, 4, 0x108000, "primary BM PRD", "table at 0x108000"),
        ),
    ],
)
def test_trace_line(line: str, expected: tuple[Any, ...]) -> None:
    rec = parse_trace([line], PMAP)
    assert rec.unparsed == [] and rec.actions == []
    (ev,) = rec.events
    assert (ev.direction, ev.port, ev.width, ev.value, ev.register, ev.decoded) == expected
    assert ev.source == "device"


def test_trace_actions_and_duplicates() -> None:
    rec = parse_trace(
        [
            "bmdma_write bmdma: writeb 0x0 : 0x09",
            "bmdma_cmd_writeb val: 0x00000009",  # the same access, traced twice by QEMU
            "ide_exec_cmd IDE exec cmd: bus 0x55b0; state 0x55b0; cmd 0xc8",
            "ide_dma_cb IDEState 0x55b01a7db528; sector_num=9 n=1 cmd=DMA READ",
            "ide_sector_write sector=5 nsectors=1",
            "ide_reset IDEstate 0x55b01a7db528",
            "something_else entirely",
        ],
        PMAP,
    )
    assert [(e.port, e.value) for e in rec.events] == [(BM, 0x09)]
    assert [a.short() for a in rec.actions] == [
        "exec cmd 0xc8 (READ DMA)",
        "dma dma read LBA 9 +1",
        "sector write LBA 5 +1",
        "ide reset",
    ]
    assert all(isinstance(a, DeviceAction) and a.index == 1 for a in rec.actions)
    assert rec.unparsed == ["something_else entirely"]


def test_bus_master_lines_take_the_channel_of_the_next_ide_access() -> None:
    rec = parse_trace(TRACES["dma read 1 sector at LBA 9, drive 2"], PMAP)
    bm = [e for e in rec.events if e.register.split(" ", 1)[1].startswith("BM")]
    assert bm and all(e.register.startswith("secondary") for e in bm)
    assert bm[0].port == BM + 8 and bm[0].value == 0x00
    assert [e.port for e in bm if e.register.endswith("PRD")] == [BM + 12]
    rec0 = parse_trace(TRACES["dma write 2 sectors at LBA 9, drive 0"], PMAP)
    assert all(e.register.startswith("primary") for e in rec0.events)


def test_pio_write_trace_shape() -> None:
    """Command, data and status of a recorded 1-sector PIO write, as QEMU saw them."""
    rec = parse_trace(TRACES["pio write 1 sector at LBA 5, drive 0"], PMAP)
    shape = normalize(rec.events)
    writes = [(e.port, e.value) for e in shape if e.direction == "out" and e.value is not None]
    assert writes == [
        (0x1F6, 0xE0),
        (0x1F1, 0),
        (0x1F2, 1),
        (0x1F3, 5),
        (0x1F4, 0),
        (0x1F5, 0),
        (0x1F7, 0xC5),
    ]
    (data,) = [e for e in shape if e.port == 0x1F0]
    assert (data.direction, data.width, data.count) == ("out", 4, 128)
    assert data.data is not None and data.data.startswith(b"hello\0") and len(data.data) == 512
    before = shape[shape.index(data) - 1]
    assert (before.port, before.value) == (0x3F6, 0x58), "the data goes out only once DRQ is set"
    assert (shape[-1].port, shape[-1].value) == (0x1F7, 0x50), "the command ends with status read, no error"
    assert [a.short() for a in rec.actions] == ["exec cmd 0xc5 (WRITE MULTIPLE)", "sector write LBA 5 +1"]


# --- shaping and comparing records ----------------------------------------------------------------
def _poll(value: int, port: int = 0x3F6) -> PortAccess:
    return PMAP.access("in", port, 1, value)


def test_squash_folds_identical_consecutive_reads_only() -> None:
    events = [
        _poll(0xD0),
        _poll(0xD0),
        _poll(0x50),
        _poll(0x50),
        _poll(0x50),
        PMAP.access("out", 0x1F7, 1, 0xE7),
    ]
    events.append(PMAP.access("out", 0x1F7, 1, 0xE7))
    shape = squash(events)
    assert [(e.value, e.repeat) for e in shape] == [(0xD0, 2), (0x50, 3), (0xE7, 1), (0xE7, 1)]


def test_coalesce_joins_data_words_into_one_transfer() -> None:
    words = [PMAP.access("in", 0x1F0, 4, v) for v in (0x64636261, 0x68676665)]
    (joined,) = coalesce_data(words)
    assert (joined.count, joined.data, joined.value) == (2, b"abcdefgh", None)
    rep = PMAP.access("in", 0x1F0, 4, None, 2, data=b"abcdefgh")
    assert [e.key() for e in coalesce_data([rep])] == [joined.key()]


@pytest.mark.parametrize("title", list(DRIVER["operations"]))
def test_recorded_driver_and_device_sides_agree(title: str) -> None:
    pmap = PortMap(DRIVER["bm_base"])
    driver = events_from_agent(DRIVER["operations"][title], pmap)
    device = parse_trace(TRACES[title], pmap).events
    result = compare(driver, device, ports=pmap.ranges(["ide"]))
    assert result.ok, result.render()
    assert result.left and diff_text(driver, device, ports=pmap.ranges(["ide"])) == ""


def test_a_mismatch_is_shown_side_by_side() -> None:
    title = "pio write 1 sector at LBA 5, drive 0"
    pmap = PortMap(DRIVER["bm_base"])
    driver = events_from_agent(DRIVER["operations"][title], pmap)
    device = parse_trace(TRACES[title], pmap).events
    i = next(k for k, e in enumerate(device) if e.port == 0x1F7 and e.direction == "out")
    device[i] = dataclasses.replace(device[i], value=0x30, decoded="WRITE SECTORS")
    del device[0]  # the first status poll never reached the device
    text = diff_text(driver, device, ports=pmap.ranges(["ide"]))
    assert "DIFFER" in text
    (changed,) = [line for line in text.splitlines() if line[4:5] == "!"]
    assert (
        "0xc5" in changed and "WRITE MULTIPLE" in changed and "0x30" in changed and "WRITE SECTORS" in changed
    )
    (only_driver,) = [line for line in text.splitlines() if line[4:5] == "<"]
    left, right = only_driver[7:57], only_driver[60:110]  # Comparison.render: 2 columns of 50
    assert "Alt Status" in left and right.strip() == ""


def test_stop_names_the_access() -> None:
    access = PMAP.access("out", 0x1F7, 1, 0xC5, where="issue (ata.c:188)")
    stop = Stop("issue", 188, 0x1024FB, "port-breakpoint", parked=False, access=access)
    assert "issue:188" in str(stop) and "WRITE MULTIPLE" in str(stop)


def test_qemu_writes_its_trace_to_the_file_given() -> None:
    from harness.qemu import QemuConfig, QemuPaths, build_command

    paths = QemuPaths.under(Path("/run/m"), Path("/logs/m"))
    cfg = QemuConfig(kernel=Path("/k.elf"))
    assert build_command(cfg, paths)[build_command(cfg, paths).index("-D") + 1] == "/logs/m/qemu-trace.log"
    assert "-D" not in build_command(cfg, dataclasses.replace(paths, trace_log=None)), "none unless asked"
    argv = build_command(cfg, dataclasses.replace(paths, trace_log=Path("/logs/m/qemu-trace,1.log")))
    assert argv[argv.index("-D") + 1] == "/logs/m/qemu-trace,1.log", "-D takes a plain file name"


# --- the agent's hit logic, on the recorded instructions, with GDB faked -------------------------
class _FakeFrame:
    def __init__(self, pc: int, regs: dict[str, int]) -> None:
        self._pc, self._regs = pc, regs

    def read_register(self, name: str) -> int:
        return self._regs.get(name, 0)

    def pc(self) -> int:
        return self._pc

    def type(self) -> int:
        return 0

    def find_sal(self) -> Any:
        return SimpleNamespace(symtab=SimpleNamespace(filename="guest/ata.c"), line=self._pc & 0xFF)

    def name(self) -> str:
        return "driver_fn"

    def older(self) -> None:
        return None


class _FakeGdb:
    """Just what Agent.hit touches: the newest frame's registers and inferior memory."""

    INLINE_FRAME = 5
    error = RuntimeError

    def __init__(self, memory: bytearray) -> None:
        self.memory = memory
        self.frame = _FakeFrame(0, {})

    def newest_frame(self) -> _FakeFrame:
        return self.frame

    def selected_inferior(self) -> Any:
        return SimpleNamespace(read_memory=lambda addr, n: bytes(self.memory[addr : addr + n]))


def test_agent_records_each_kind_of_instruction_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replays executions of the recorded variants: plain in/out (an `in` completes at the next
    instruction, itself an `in`), rep string instructions entered at their cld, and reps caught
    at themselves, which QEMU re-enters once per iteration."""
    from harness.portio import gdb_agent as agent_mod

    memory = bytearray(0x10000)
    memory[0x5000:0x5006] = b"abcdef"
    memory[0x6000:0x6002] = b"XY"
    memory[0x6FFC:0x7004] = b"cdef0123"
    memory[0x8000:0x8008] = b"ABCDEFGH"
    fake = _FakeGdb(memory)
    monkeypatch.setattr(agent_mod, "gdb", fake, raising=False)
    agent = agent_mod.Agent()
    agent.sites = find_sites(_disasm("gdb-disasm-port-variants.txt"))
    agent.watchers = {
        1: agent_mod.Watcher(1, [(0, 0xFFFF)]),
        2: agent_mod.Watcher(2, [(0x1F7, 0x1F7)], direction="out", value=0xC5, stop=True),
    }
    agent.entries, agent.completions = agent.plan()

    def step(pc: int, **regs: int) -> bool:
        fake.frame = _FakeFrame(pc, regs)
        return agent.hit(pc)

    assert step(0x1012, edx=0x1F7, eax=0xC5) is True  # out %al,(%dx): the stopping watcher matches
    assert [e["value"] for e in agent.last_stop] == [0xC5]
    assert step(0x1007, edx=0x3F6) is False  # in (%dx),%al: pending until the next instruction
    assert step(0x1008, edx=0x1F2, eax=0x1258) is False  # completes it (al=0x58); itself in %ax
    assert step(0x100A, edx=0x1F0, eax=0xABCD1234) is False  # completes in %ax; itself in %eax
    assert step(0x100B, eax=0xABCD1277) is False  # completes in %eax; out %al,$0x80 sends its al
    assert step(0x101E, edx=0x1F0, ecx=3, edi=0x5000) is False  # cld before rep insw
    assert step(0x1022, edx=0x170, ecx=2, esi=0x6000) is False  # after it; cld before rep outsb
    for left in (2, 1):  # std; rep insl: caught at itself, once per iteration, DF set
        assert step(0x1026, edx=0x1F0, ecx=left, edi=0x7000 - 4 * (2 - left), eflags=1 << 10) is False
    assert step(0x1028, edx=0x1F0, ecx=2, esi=0x8000) is False  # done; rep outsl caught at itself
    assert step(0x1028, edx=0x1F0, ecx=1, esi=0x8004) is False  # its second iteration
    assert step(0x102A) is False  # after it
    got = [
        (
            e["direction"],
            e["port"],
            e["width"],
            e["value"],
            e["count"],
            e["data"] and bytes.fromhex(e["data"]),
        )
        for e in agent.watchers[1].events
    ]
    assert got == [
        ("out", 0x1F7, 1, 0xC5, 1, None),
        ("in", 0x3F6, 1, 0x58, 1, None),
        ("in", 0x1F2, 2, 0x1234, 1, None),
        ("in", 0x1F0, 4, 0xABCD1277, 1, None),
        ("out", 0x80, 1, 0x77, 1, None),
        ("in", 0x1F0, 2, None, 3, b"abcdef"),
        ("out", 0x170, 1, None, 2, b"XY"),
        ("in", 0x1F0, 4, None, 2, b"cdef0123"),  # stored downwards from 0x7000: memory order
        ("out", 0x1F0, 4, None, 2, b"ABCDEFGH"),
    ]
    assert [e["seq"] for e in agent.watchers[1].events] == list(range(1, 10))
    assert agent.watchers[2].hits == 1 and len(agent.watchers[2].events) == 1
    assert agent.rep_active == set() and agent.pending is None


def test_agent_counts_a_lost_step_off_a_breakpoint_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU sometimes answers GDB's step off a breakpoint without running the instruction, and
    the breakpoint is reported again: the access happened once. The same `out` run again after
    its next instruction was reached (a loop), or after a reset, is a second access."""
    from harness.portio import gdb_agent as agent_mod

    memory = bytearray(0x10000)
    memory[0x6000:0x6002] = b"XY"
    fake = _FakeGdb(memory)
    monkeypatch.setattr(agent_mod, "gdb", fake, raising=False)
    agent = agent_mod.Agent()
    agent.sites = find_sites(_disasm("gdb-disasm-port-variants.txt"))
    agent.watchers = {1: agent_mod.Watcher(1, [(0, 0xFFFF)])}
    agent.entries, agent.completions = agent.plan()
    assert {0x1013, 0x1025} <= set(agent.completions), "an out's next instruction is watched too"

    def hit(pc: int, times: int = 2, **regs: int) -> None:
        fake.frame = _FakeFrame(pc, regs)
        for _ in range(times):  # the second: the lost step, all registers unchanged
            assert agent.hit(pc) is False

    hit(0x1012, edx=0x1F2, eax=0x01)  # out %al,(%dx)
    hit(0x1013, edx=0x1F2, eax=0x02)  # its next instruction, itself out %ax,(%dx)
    hit(0x1015, edx=0x1F2, eax=0x03)  # out %eax,(%dx)
    hit(0x1012, times=1, edx=0x1F2, eax=0x01)  # a loop back: the same out again, for real
    hit(0x1013, times=1, edx=0x1F2, eax=0x02)
    hit(0x1007, edx=0x3F6)  # in (%dx),%al: recorded at its next instruction anyway
    hit(0x1008, times=1, edx=0x1F2, eax=0x50)
    hit(0x1022, edx=0x170, ecx=2, esi=0x6000)  # cld; rep outsb
    hit(0x1025, times=1)
    hit(0x1012, times=1, edx=0x1F2, eax=0x01)
    agent.forget()  # the guest was reset before the out ran to its end, and runs to it again
    hit(0x1012, times=1, edx=0x1F2, eax=0x01)
    got = [(e["direction"], e["port"], e["value"], e["data"]) for e in agent.watchers[1].events]
    assert got == [
        ("out", 0x1F2, 0x01, None),
        ("out", 0x1F2, 0x0002, None),
        ("out", 0x1F2, 0x03, None),
        ("out", 0x1F2, 0x01, None),
        ("out", 0x1F2, 0x0002, None),
        ("in", 0x3F6, 0x50, None),
        ("out", 0x170, None, "5859"),
        ("out", 0x1F2, 0x01, None),
        ("out", 0x1F2, 0x01, None),
    ]
