"""Bad arguments to every driver call: a typed error that names the argument, and not one
byte of the host image changed. Each row is a call a hostile (or careless) user made."""

from __future__ import annotations

import array
import hashlib
import math
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import AtaCode, AtaError, DiskImage, HarnessError, Machine, UsageError

pytestmark = pytest.mark.qemu

SECTOR = 512
DISK_SECTORS = 16384  # 8 MiB
DATA = bytes(range(256)) * 2  # one sector


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def booted(
    tmp_path_factory: pytest.TempPathFactory, piix3_transport: str
) -> Iterator[tuple[Machine, DiskImage]]:
    """One machine for the whole table: a raw disk filled with a pattern, so that any write
    that lands anywhere shows in the file's hash."""
    root = tmp_path_factory.mktemp("hostile-calls")
    disk = DiskImage.create(root / "d.img", size_bytes=DISK_SECTORS * SECTOR)
    disk.write_sectors(0, random.Random(7).randbytes(DISK_SECTORS * SECTOR))
    with Machine(disks=[disk], artifacts_dir=root / "logs", transport=piix3_transport) as m:
        yield m, disk


@pytest.fixture
def m(booted: tuple[Machine, DiskImage]) -> Iterator[Machine]:
    machine, disk = booted
    before = _sha(disk.path)
    yield machine
    assert machine.parked, "a refused call left the machine unparked"
    assert _sha(disk.path) == before, "a refused call changed the host image"


Call = Callable[[Machine], object]
BIG = 2**64
# (call, expected code, word the message must contain)
ATA_TABLE: list[tuple[str, Call, AtaCode, str]] = [
    ("write at 2**64+5 (wraps to LBA 5)", lambda m: m.ata.write(0, BIG + 5, DATA), AtaCode.RANGE, "lba"),
    ("write at -(2**64)+6 (wraps to 6)", lambda m: m.ata.write(0, -BIG + 6, DATA), AtaCode.RANGE, "lba"),
    ("write on drive 2**32 (wraps to 0)", lambda m: m.ata.write(2**32, 7, DATA), AtaCode.INVAL, "drive"),
    ("read at 2**64 (wraps to 0)", lambda m: m.ata.read(0, BIG, 1), AtaCode.RANGE, "lba"),
    ("read past LBA48", lambda m: m.ata.read(0, 2**48, 1), AtaCode.RANGE, "lba"),
    ("read count 2**32+1 (wraps to 1)", lambda m: m.ata.read(0, 0, 2**32 + 1), AtaCode.INVAL, "count"),
    ("read count -1", lambda m: m.ata.read(0, 0, -1), AtaCode.INVAL, "count"),
    ("identify 2**32", lambda m: m.ata.identify(2**32), AtaCode.INVAL, "drive"),
    ("identify -1", lambda m: m.ata.identify(-1), AtaCode.INVAL, "drive"),
    ("flush 2**32", lambda m: m.ata.flush(2**32), AtaCode.INVAL, "drive"),
    ("reset_channel 2**32", lambda m: m.ata.reset_channel(2**32), AtaCode.INVAL, "channel"),
    ("reset_channel '0'", lambda m: m.ata.reset_channel("0"), AtaCode.INVAL, "channel"),  # type: ignore[arg-type]
    ("set_write_cache 2**32", lambda m: m.ata.set_write_cache(2**32, True), AtaCode.INVAL, "drive"),
    ("set_write_cache 'no'", lambda m: m.ata.set_write_cache(0, "no"), AtaCode.INVAL, "enabled"),  # type: ignore[arg-type]
    ("drive True", lambda m: m.ata.read(True, 0, 1), AtaCode.INVAL, "drive"),
    ("drive '0'", lambda m: m.ata.read("0", 0, 1), AtaCode.INVAL, "drive"),  # type: ignore[arg-type]
    ("drive 0.0", lambda m: m.ata.read(0.0, 0, 1), AtaCode.INVAL, "drive"),  # type: ignore[arg-type]
    ("drive None", lambda m: m.ata.flush(None), AtaCode.INVAL, "drive"),  # type: ignore[arg-type]
    ("lba '5'", lambda m: m.ata.write(0, "5", DATA), AtaCode.INVAL, "lba"),  # type: ignore[arg-type]
    ("lba 5.0", lambda m: m.ata.write(0, 5.0, DATA), AtaCode.INVAL, "lba"),  # type: ignore[arg-type]
    ("lba inf", lambda m: m.ata.read(0, math.inf, 1), AtaCode.INVAL, "lba"),  # type: ignore[arg-type]
    ("lba nan", lambda m: m.ata.read(0, math.nan, 1), AtaCode.INVAL, "lba"),  # type: ignore[arg-type]
    ("lba None", lambda m: m.ata.read(0, None, 1), AtaCode.INVAL, "lba"),  # type: ignore[arg-type]
    ("count 1.5", lambda m: m.ata.read(0, 0, 1.5), AtaCode.INVAL, "count"),  # type: ignore[arg-type]
    ("count True", lambda m: m.ata.read(0, 0, True), AtaCode.INVAL, "count"),
    ("data a str", lambda m: m.ata.write(0, 0, "x" * SECTOR), AtaCode.INVAL, "data"),
    ("data None", lambda m: m.ata.write(0, 0, None), AtaCode.INVAL, "data"),
    (
        "data 4-byte items, 128 of them",
        lambda m: m.ata.write(0, 0, array.array("I", [1] * 128)[:100]),
        AtaCode.INVAL,
        "data",
    ),
    ("mode a list", lambda m: m.ata.read(0, 0, 1, mode=["dma"]), AtaCode.INVAL, "mode"),  # type: ignore[arg-type]
    ("mode 'udma'", lambda m: m.ata.write(0, 0, DATA, mode="udma"), AtaCode.INVAL, "mode"),
    ("begin_write lba 2**64", lambda m: m.ata.begin_write(0, BIG, DATA), AtaCode.RANGE, "lba"),
    ("begin_read drive 4", lambda m: m.ata.begin_read(4, 0, 1), AtaCode.INVAL, "drive"),
    ("bench count 2**32+1", lambda m: m.ata.bench(0, count=2**32 + 1), AtaCode.INVAL, "count"),
    ("bench iterations 0", lambda m: m.ata.bench(0, iterations=0), AtaCode.INVAL, "iterations"),
    ("bench op 'erase'", lambda m: m.ata.bench(0, op="erase"), AtaCode.INVAL, "op"),
    ("present 2**32", lambda m: m.ata.present(2**32), AtaCode.INVAL, "drive"),
    ("set_completion 'IRQ'", lambda m: m.ata.set_completion("IRQ"), AtaCode.INVAL, "completion"),
    ("set_completion None", lambda m: m.ata.set_completion(None), AtaCode.INVAL, "completion"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("call", "code", "word"), [r[1:] for r in ATA_TABLE], ids=[r[0] for r in ATA_TABLE])
def test_bad_driver_arguments_are_refused(m: Machine, call: Call, code: AtaCode, word: str) -> None:
    with pytest.raises(AtaError) as e:
        call(m)
    assert e.value.code is code, e.value
    assert word in str(e.value), e.value


def _set_timeout(m: Machine, value: Any) -> None:
    m.call_timeout = value


def _set_timeout_ms(m: Machine, value: Any) -> None:
    m.ata.timeout_ms = value


USAGE_TABLE: list[tuple[str, Call, type[HarnessError], str]] = [
    ("read_memory past guest RAM", lambda m: m.read_memory(m.config.memory_mib << 20, 4), UsageError, "RAM"),
    ("read_memory at -1", lambda m: m.read_memory(-1, 4), UsageError, "RAM"),
    (
        "write_memory past guest RAM",
        lambda m: m.write_memory((m.config.memory_mib << 20) - 2, b"xyzw"),
        UsageError,
        "RAM",
    ),
    ("call_timeout 0", lambda m: _set_timeout(m, 0), UsageError, "call_timeout"),
    ("call_timeout nan", lambda m: _set_timeout(m, math.nan), UsageError, "call_timeout"),
    ("call_timeout '5'", lambda m: _set_timeout(m, "5"), UsageError, "call_timeout"),
    ("timeout_ms 0", lambda m: _set_timeout_ms(m, 0), AtaError, "timeout_ms"),
    ("timeout_ms 1.5", lambda m: _set_timeout_ms(m, 1.5), AtaError, "timeout_ms"),
    ("cont timeout -1", lambda m: m.cont(timeout=-1), UsageError, "timeout"),
    ("call a non-identifier", lambda m: m.call("ata_flush(0); ata_init"), UsageError, "function"),
    ("call with a str argument", lambda m: m.call("ata_flush", "0"), UsageError, "argument"),  # type: ignore[arg-type]
    ("mask_irq 16", lambda m: m.mask_irq(16), UsageError, "line"),
    ("mask_irq 2**32+14 (wraps to 14)", lambda m: m.mask_irq(2**32 + 14), UsageError, "line"),
    ("unmask_irq True", lambda m: m.unmask_irq(True), UsageError, "line"),
    ("unmask_irq '15'", lambda m: m.unmask_irq("15"), UsageError, "line"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("call", "kind", "word"), [r[1:] for r in USAGE_TABLE], ids=[r[0] for r in USAGE_TABLE]
)
def test_bad_machine_arguments_are_refused(
    m: Machine, call: Call, kind: type[HarnessError], word: str
) -> None:
    timeout = m.call_timeout
    with pytest.raises(kind) as e:
        call(m)
    assert word in str(e.value), e.value
    assert m.call_timeout == timeout


def test_a_refused_call_does_not_clobber_a_posted_one(booted: tuple[Machine, DiskImage]) -> None:
    m, disk = booted
    a, b = b"A" * SECTOR * 2, b"B" * SECTOR * 2
    before_200 = disk.read_sectors(200, 2)
    pending = m.ata.begin_write(0, 100, a)
    with pytest.raises(HarnessError, match="not parked"):
        m.ata.write(0, 200, b)
    pending.finish()
    assert disk.read_sectors(100, 2) == a, "the refused write's data reached the posted one"
    assert m.ata.read(0, 100, 2) == a
    assert disk.read_sectors(200, 2) == before_200


def test_buffers_count_bytes_not_items(booted: tuple[Machine, DiskImage]) -> None:
    """2048 bytes held as 512 4-byte items are 4 sectors, all written."""
    m, disk = booted
    items = array.array("I", range(512))
    m.ata.write(0, 300, memoryview(items))
    assert disk.read_sectors(300, 4) == items.tobytes()
    strided = memoryview(bytes(range(256)) * 8)[::2]  # 1024 bytes, not contiguous
    m.ata.write(0, 310, strided)
    assert disk.read_sectors(310, 2) == strided.tobytes()
    m.ata.write(0, 320, bytearray(b"\x5a" * SECTOR))
    assert m.ata.read(0, 320, 1) == b"\x5a" * SECTOR


def test_two_threads_on_one_machine_are_serialised(booted: tuple[Machine, DiskImage]) -> None:
    """Each thread's data lands where it asked, read back intact: no call mixes its transfer
    buffer with another's."""
    m, disk = booted
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(15):
                data = bytes([seed, i]) * (SECTOR // 2) * 2
                lba = 1000 + seed * 100 + i * 2
                m.ata.write(0, lba, data, mode="pio" if i % 2 else "dma")
                assert m.ata.read(0, lba, 2) == data
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for seed in (1, 2, 3):
        for i in range(15):
            assert disk.read_sectors(1000 + seed * 100 + i * 2, 2) == bytes([seed, i]) * SECTOR


def test_a_void_guest_function_returns_none(m: Machine) -> None:
    """m.call() on a function returning void runs it and gives None (it used to raise)."""
    assert m.call("udelay", 1) is None
    assert m.call("harness_inb", 0x1F7) is not None  # an int-returning one still gives its value
