"""The write-cache model without QEMU: the write log's format (a log QEMU 7.2's blklogwrites
wrote, and hand-made ones), pieces, where FLUSHes are placed, the moments a power loss may
happen at, and the choice of subsets."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import pytest

from harness.disk import DiskImage
from harness.faults import Fault, blkdebug_config, flush_fault_drives
from harness.powerloss import (
    FLAG_DISCARD,
    FLAG_FLUSH,
    DriveCache,
    LoggedWrite,
    Piece,
    WriteLogError,
    _subsets,
    read_entries,
    read_super,
)

DATA = Path(__file__).parent.parent / "data"
SECTOR = 512
_ENTRY = struct.Struct("<QQQQ")


def make_log(path: Path, entries: list[tuple[int, int, int, bytes]]) -> Path:
    """A dm-log-writes log: super block, then (sector, count, flags, data) entries."""
    out = bytearray(struct.pack("<QQQI", 0x6A736677736872, 1, len(entries), SECTOR).ljust(SECTOR, b"\0"))
    for sector, count, flags, data in entries:
        out += _ENTRY.pack(sector, count, flags, 0).ljust(SECTOR, b"\0") + data
    path.write_bytes(bytes(out))
    return path


def sector_data(seed: int, count: int) -> bytes:
    return bytes([seed]) * (SECTOR * count)


def test_a_log_qemu_wrote(tmp_path: Path) -> None:
    """qemu-io on blklogwrites: write 1 sector at 5, a FUA write of 16 at 20, flush, write 2 at
    8, close. QEMU turned the FUA into a write and a flush, and added a flush at close."""
    log = tmp_path / "rec.log"
    log.write_bytes(gzip.decompress((DATA / "blklogwrites-qemu72.log.gz").read_bytes()))
    assert read_super(log) == (6, SECTOR)
    entries, end = read_entries(log)
    assert end == log.stat().st_size
    shape = [(e.sector, e.count, e.flags) for e in entries]
    assert shape == [(5, 1, 0), (20, 16, 0), (0, 0, 1), (0, 0, 1), (8, 2, 0), (0, 0, 1)]
    assert [e.is_write for e in entries] == [True, True, False, False, True, False]
    raw = log.read_bytes()
    for e, fill in zip([entries[0], entries[1], entries[4]], (0x11, 0x22, 0x33), strict=True):
        assert raw[e.data_offset : e.data_offset + e.count * SECTOR] == bytes([fill]) * (e.count * SECTOR)


def test_reading_resumes_and_stops_at_the_end(tmp_path: Path) -> None:
    log = make_log(tmp_path / "a.log", [(1, 1, 0, sector_data(1, 1)), (0, 0, FLAG_FLUSH, b"")])
    first, offset = read_entries(log)
    assert [e.sector for e in first] == [1, 0]
    with open(log, "ab") as f:  # QEMU appends; a zero header (sparse tail) is the end
        f.write(_ENTRY.pack(7, 2, FLAG_DISCARD, 0).ljust(SECTOR, b"\0") + bytes(SECTOR))
    more, end = read_entries(log, offset)
    assert [(e.sector, e.count, e.is_write) for e in more] == [(7, 2, False)]
    assert read_entries(log, end) == ([], end)
    assert read_entries(tmp_path / "missing.log") == ([], SECTOR)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (_ENTRY.pack(1, 1, 0x40, 0).ljust(SECTOR, b"\0"), "flags 0x40"),
        (_ENTRY.pack(1, 4, 0, 0).ljust(SECTOR, b"\0") + bytes(SECTOR), "runs past the end"),
    ],
)
def test_a_damaged_log_is_an_error(tmp_path: Path, entry: bytes, why: str) -> None:
    log = make_log(tmp_path / "bad.log", [])
    with open(log, "ab") as f:
        f.write(entry)
    with pytest.raises(WriteLogError, match=why):
        read_entries(log)
    (tmp_path / "nolog").write_bytes(b"PIIX3MSG".ljust(64, b"\0"))
    with pytest.raises(WriteLogError, match="not a dm-log-writes log"):
        read_super(tmp_path / "nolog")


@pytest.mark.parametrize(
    ("lba", "count", "pieces"),
    [
        (0, 1, [(0, 1)]),
        (5, 8, [(5, 3), (8, 5)]),
        (8, 16, [(8, 8), (16, 8)]),
        (2048, 10, [(2048, 8), (2056, 2)]),
        (7, 1, [(7, 1)]),
    ],
)
def test_pieces_are_4kib_aligned(lba: int, count: int, pieces: list[tuple[int, int]]) -> None:
    w = LoggedWrite(0, 3, lba, count, 0, False, 0)
    assert [(p.lba, p.count) for p in w.pieces()] == pieces
    assert all(p.write == 3 for p in w.pieces())


class Drive:
    """A DriveCache fed by hand: writes appended to its log, boundaries with a FLUSH count."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = make_log(tmp_path / "w.log", [])
        self.cache = DriveCache(0, DiskImage(tmp_path / "disk.img"), self.log)
        self.flushes = 0

    def write(self, lba: int, count: int = 1, seed: int = 1) -> None:
        with open(self.log, "ab") as f:
            f.write(_ENTRY.pack(lba, count, 0, 0).ljust(SECTOR, b"\0") + sector_data(seed, count))

    def boundary(self, flushes: int = 0, cache_on: bool | None = True) -> None:
        self.flushes += flushes
        self.cache.absorb(self.flushes, cache_on)

    def durable(self) -> list[int]:
        return [w.lba for w in self.cache.writes if self.cache.durable(w)]


def test_a_flush_in_its_own_stretch_covers_every_write_before_it(tmp_path: Path) -> None:
    d = Drive(tmp_path)
    d.write(1)
    d.boundary()
    d.write(2)
    d.boundary()
    d.boundary(flushes=1)  # a FLUSH call
    d.write(3)
    d.boundary()
    assert d.durable() == [1, 2]
    assert d.cache.flush_points == [2]
    assert [w.epoch for w in d.cache.writes] == [0, 0, 1]
    assert [w.lba for w in d.cache.unflushed()] == [3]


def test_a_stretch_that_writes_and_flushes_keeps_its_writes_unflushed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Which of its writes came before its FLUSH is unknown: the earlier ones are durable, its
    own are not (a possible loss is never hidden), and a warning says so."""
    d = Drive(tmp_path)
    d.write(1)
    d.boundary()
    d.write(2)
    d.write(3)
    d.boundary(flushes=1)
    assert d.durable() == [1]
    assert d.cache.unplaced == 1
    assert "placed before those writes" in caplog.text


def test_a_disabled_cache_makes_writes_fua(tmp_path: Path) -> None:
    d = Drive(tmp_path)
    d.write(1)
    d.boundary()
    d.write(2)  # SET FEATURES 82h in the same stretch: it flushed 1, and 2 came after
    d.boundary(flushes=1, cache_on=False)
    d.write(3)
    d.boundary(cache_on=False)
    d.write(4)  # re-enabled in this stretch: 4 may have come after
    d.boundary(cache_on=True)
    d.write(5)
    d.boundary()
    assert d.durable() == [1, 2, 3]
    assert [w.fua for w in d.cache.writes] == [False, True, True, False, False]


def test_a_disable_whose_flush_failed_makes_nothing_durable(tmp_path: Path) -> None:
    d = Drive(tmp_path)
    d.write(1)
    d.boundary()
    d.write(2)
    d.boundary(flushes=0, cache_on=False)  # the cache went off, but no FLUSH completed
    assert d.durable() == []


def test_unknown_device_state_counts_nothing_as_flushed(tmp_path: Path) -> None:
    d = Drive(tmp_path)
    d.write(1)
    d.cache.absorb(None, None)  # QEMU could not be asked
    assert d.durable() == []


def test_moments_per_epoch_and_fua(tmp_path: Path) -> None:
    """Epoch 0: writes 0,1 may or may not be there. Epoch 1: 0,1 are, and of 2 (FUA), 3: while 2
    is in flight, it may be partly there; once done, it is, and 3 may be."""
    d = Drive(tmp_path)
    d.write(10)
    d.write(11)
    d.boundary()
    d.boundary(flushes=1)
    d.boundary(flushes=1, cache_on=False)  # SET FEATURES 82h: it flushes (nothing new here)
    d.write(12)
    d.boundary(cache_on=False)
    d.boundary(cache_on=True)
    d.write(13)
    d.boundary()
    got = [
        (epoch, [w.lba for w in settled], [w.lba for w in maybe])
        for epoch, settled, maybe in d.cache.moments()
    ]
    assert got == [(0, [], [10, 11]), (1, [10, 11], [12]), (1, [10, 11, 12], [13])]
    assert list(d.cache.moments(1))[0][0] == 1


def test_subsets_all_when_few_bounded_when_many() -> None:
    rng = random.Random(0)
    assert len(list(_subsets(3, 8, rng))) == 8
    many = list(_subsets(40, 100, rng))
    assert len(many) == len(set(many)) == 100
    assert (False,) * 40 in many and (True,) * 40 in many
    prefixes = [tuple(i < k for i in range(40)) for k in range(1, 40)]
    suffixes = [tuple(i >= k for i in range(40)) for k in range(1, 40)]
    assert sum(c in prefixes for c in many) >= 20, "prefixes: a drive that destaged in order"
    assert sum(c in suffixes for c in many) >= 20, "suffixes: in reverse"
    huge = list(_subsets(8192, 16, rng))  # a 32 MiB write: bounded, lengths spread over the write
    assert len(huge) == 16 and sum(huge[2]) not in (0, 8192)
    assert list(_subsets(40, 100, random.Random(5))) == list(_subsets(40, 100, random.Random(5)))


def test_piece_order_is_write_order() -> None:
    assert sorted([Piece(2, 0, 1), Piece(0, 8, 8), Piece(0, 0, 8)]) == [
        Piece(0, 0, 8),
        Piece(0, 8, 8),
        Piece(2, 0, 1),
    ]


def test_flush_faults_live_only_when_armed() -> None:
    """A flush fault's rule is in state 2; the write-zeroes request that arms and disarms
    switches states, and is failed itself. Read and write faults have no state."""
    text = blkdebug_config([Fault("flush", once=True), Fault("read", sector=9)])
    sections = [s.strip().splitlines() for s in text.split("\n\n") if s.strip()]
    flush = next(s for s in sections if 'iotype = "flush"' in s)
    assert 'state = "2"' in flush and 'once = "on"' in flush
    read = next(s for s in sections if 'iotype = "read"' in s)
    assert not any(line.startswith("state") for line in read)
    toggles = [s for s in sections if s[0] == "[set-state]"]
    assert sorted((s[1], s[3]) for s in toggles) == [
        ('state = "1"', 'new_state = "2"'),
        ('state = "2"', 'new_state = "1"'),
    ]
    arm = next(s for s in sections if 'iotype = "write-zeroes"' in s)
    assert 'event = "pwritev_zero"' in arm
    assert "write-zeroes" not in blkdebug_config([Fault("write")]), "no machinery without flush faults"
    assert flush_fault_drives({0: [Fault("read")], 2: [Fault("flush")], 3: []}) == {2}


def test_piix3_run_power_loss_needs_a_raw_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness import cli

    image = DiskImage.create(tmp_path / "d.qcow2", size_mib=1)
    argv = ["run", "--power-loss", "--image", str(image.path), "--artifacts", str(tmp_path / "a")]
    assert cli.main(argv) == 2
    assert "a volatile write cache needs a raw image" in capsys.readouterr().err
    assert not (tmp_path / "a").exists(), "refused before anything was made"
