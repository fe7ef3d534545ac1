"""A drive's volatile write cache, and what a power loss leaves on the disk.

A drive with a volatile write cache reports a write complete before the data is on the
medium. What it promises: a write that completed before a completed FLUSH CACHE (EXT) is
durable; so is a write with FUA, and every write made while its write cache is disabled. Any
other completed write may or may not be there after the power goes, and the cache is
destaged in no particular order, so any subset of those writes may survive, in whole 4 KiB
pieces (a write of 16 sectors is 2 pieces that survive or not independently). That is the
model here; `Machine(write_cache="volatile")` turns it on per drive.

How the harness knows what the drive would have kept:

- The data and the order: a volatile drive's chain in QEMU (harness/qemu.py) logs every
  completed write with QEMU's blklogwrites driver (dm-log-writes' format: guest LBA, count,
  data) and keeps it in a qcow2 overlay in the run directory. The image file is the overlay's
  read-only backing: it keeps the state of the last boot, and the harness writes into it what
  the drive would have made durable, at a power loss, or everything at an orderly end.
- The guest's flushes: not from the log. QEMU flushes every image whenever the VM stops
  (bdrv_flush_all at vm_stop), the harness stops it after every call (and GDB's step over the
  park breakpoint is a stop of its own), and such a flush enters the drive's nodes by the same
  function as the guest's FLUSH. Measured: write, FLUSH, write, FLUSH (four calls) log
  "write, flush, write, flush", and both flush marks are the stops' (the guest's FLUSHes found
  nothing left to write and left no mark). A layer that absorbs the stops' flushes absorbs the
  guest's too: with `cache.no-flush` on the logging node the same calls log "write, write".
  So the harness tells them apart instead: the IDE device counts the FLUSH commands it
  completed (query-blockstats `flush_operations`, the device's own accounting, which QEMU's
  internal flushes bypass: 2 in both runs above), and the harness reads that count and the new
  log entries at every boundary between stretches of guest execution (before each resume and
  each GDB inferior call). A driver call is one stretch, so a FLUSH is placed exactly after
  every write logged before it. A stretch that both writes and completes a FLUSH (guest code of
  your own called through m.call()) cannot be split: its FLUSH is placed before its writes,
  which keeps them unflushed (a possible loss is never hidden), and a warning says so.
- FUA and a disabled cache: QEMU turns every write into FUA while the device's cache is
  disabled (query-block `cache.writeback`); SET FEATURES 82h flushes first. QEMU's IDE drive
  offers no FUA write command (IDENTIFY word 84 bit 6 is clear), so those are the FUA writes
  there are; a driver that grows one needs the model to learn it (the log does not mark FUA).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
import shutil
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.abi import Op, Request
from harness.disk import DiskImage
from harness.errors import ConfigError, HarnessError, UsageError
from harness.qemu import WRITE_CACHE_MODES, WRITE_LOG_SECTOR

if TYPE_CHECKING:
    from harness.target import Target

log = logging.getLogger(__name__)

SECTOR = 512
PIECE_SECTORS = 8  # 4 KiB: the unit a drive persists or loses whole
UNFLUSHED = ("drop", "keep", "random")
# What a stretch running one driver call can do to a drive, so that its boundary asks QEMU
# only what may have changed (query-blockstats ~0.8 ms, query-block ~0.3 ms; the log alone
# ~0.01 ms). These calls send neither FLUSH nor SET FEATURES:
QUIET_OPS = (Op.READ, Op.WRITE, Op.IDENTIFY, Op.BENCH)
FLUSH_OPS = (Op.FLUSH,)  # may complete a FLUSH; cannot change the cache setting
DEFAULT_STATE_LIMIT = 256  # crash states per flush epoch before sampling

# dm-log-writes' format, as QEMU's blklogwrites writes it; every field little-endian. Sector 0
# holds the super block (updated only at flushes, so entries past its count are read too);
# each entry is one log sector of header, then its data in whole log sectors.
LOG_MAGIC = 0x6A736677736872
LOG_VERSION = 1
FLAG_FLUSH = 1 << 0
FLAG_FUA = 1 << 1
FLAG_DISCARD = 1 << 2
FLAG_MARK = 1 << 3
_SUPER = struct.Struct("<QQQI")  # magic, version, entries, sector size
_ENTRY = struct.Struct("<QQQQ")  # sector, sectors, flags, data length (0 in QEMU 7.2)


class WriteLogError(HarnessError):
    """A write log that cannot be read as dm-log-writes' format."""


@dataclass(frozen=True)
class LogEntry:
    """One entry of a write log: a write (with its data at `data_offset` in the log file), a
    flush mark, a discard or a mark."""

    sector: int
    count: int
    flags: int
    data_offset: int

    @property
    def is_write(self) -> bool:
        return not self.flags & (FLAG_FLUSH | FLAG_DISCARD | FLAG_MARK) and self.count > 0


def read_super(path: Path) -> tuple[int, int]:
    """(entries counted at the last flush, sector size) from a log's super block."""
    with open(path, "rb") as f:
        head = f.read(_SUPER.size)
    if len(head) < _SUPER.size:
        raise WriteLogError(f"write log {path}: no super block ({len(head)} bytes)")
    magic, version, entries, sector_size = _SUPER.unpack(head)
    if magic != LOG_MAGIC or version != LOG_VERSION:
        raise WriteLogError(
            f"write log {path}: not a dm-log-writes log (magic {magic:#x}, version {version})"
        )
    return entries, sector_size


def read_entries(
    path: Path, offset: int = WRITE_LOG_SECTOR, sector_size: int = WRITE_LOG_SECTOR
) -> tuple[list[LogEntry], int]:
    """The entries from byte `offset` (an entry boundary) to the end of what is written, and
    the offset after the last one. The log is read while QEMU is stopped (it drains every
    request first), so the last entry is whole; an all-zero header is where the log ends."""
    out: list[LogEntry] = []
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            while offset + _ENTRY.size <= size:
                f.seek(offset)
                sector, count, flags, _ = _ENTRY.unpack(f.read(_ENTRY.size))
                if sector == count == flags == 0:
                    break
                if flags & ~(FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK):
                    raise WriteLogError(f"write log {path}: entry at byte {offset} has flags {flags:#x}")
                data = offset + sector_size
                length = 0 if flags & (FLAG_DISCARD | FLAG_FLUSH | FLAG_MARK) else count * sector_size
                if data + length > size:
                    raise WriteLogError(f"write log {path}: entry at byte {offset} runs past the end")
                out.append(
                    LogEntry(sector * sector_size // SECTOR, count * sector_size // SECTOR, flags, data)
                )
                offset = data + length
    except FileNotFoundError:
        return [], offset
    except OSError as exc:
        raise WriteLogError(f"reading write log {path}: {exc.strerror}") from None
    return out, offset


@dataclass(frozen=True, order=True)
class Piece:
    """A 4 KiB-aligned part of one write (fewer sectors at a write's ends): what survives or not."""

    write: int  # the write's index
    lba: int
    count: int


@dataclass(frozen=True)
class LoggedWrite:
    """A completed write, as the drive's cache holds it."""

    drive: int
    index: int  # the n-th write since this QEMU booted
    lba: int
    count: int
    epoch: int  # completed guest FLUSHes before it
    fua: bool  # durable once complete: written while the cache was disabled (QEMU adds FUA)
    data_offset: int  # where its data is in the write log

    def pieces(self) -> list[Piece]:
        out = []
        lba, end = self.lba, self.lba + self.count
        while lba < end:
            stop = min(end, (lba // PIECE_SECTORS + 1) * PIECE_SECTORS)
            out.append(Piece(self.index, lba, stop - lba))
            lba = stop
        return out


@dataclass(frozen=True)
class CacheMark:
    """A point in the write stream (crash_mark()): per drive, how many writes had completed and
    how many guest FLUSHes had been placed among them."""

    boot: int
    writes: Mapping[int, int]
    epochs: Mapping[int, int]


class DriveCache:
    """One volatile drive's cache since its QEMU booted: the completed writes in order, and
    where the completed guest FLUSHes fall among them."""

    def __init__(self, drive: int, disk: DiskImage, log_path: Path) -> None:
        self.drive = drive
        self.disk = disk
        self.log_path = log_path
        self.writes: list[LoggedWrite] = []
        self.flush_points: list[int] = []  # writes before each completed guest FLUSH, ascending
        self.flushes = 0  # the device's completed FLUSH count at the last boundary
        self.cache_on = True  # the device's write cache, as last seen
        self.unplaced = 0  # stretches whose FLUSH could not be placed among their writes
        self._offset = WRITE_LOG_SECTOR

    @property
    def flushed(self) -> int:
        """How many of the writes (a prefix) a completed FLUSH has made durable."""
        return self.flush_points[-1] if self.flush_points else 0

    def durable(self, w: LoggedWrite) -> bool:
        return w.index < self.flushed or w.fua

    def unflushed(self) -> list[LoggedWrite]:
        return [w for w in self.writes if not self.durable(w)]

    def _flush_at(self, point: int) -> None:
        if not self.flush_points or self.flush_points[-1] != point:
            self.flush_points.append(point)

    def absorb(self, flushes: int | None, cache_on: bool | None) -> None:
        """One boundary: the writes logged since the last, and the device's FLUSH count and
        cache setting now (None: QEMU could not be asked; nothing is assumed flushed)."""
        entries, self._offset = read_entries(self.log_path, self._offset)
        new = [e for e in entries if e.is_write]
        completed = 0 if flushes is None else max(0, flushes - self.flushes)
        if flushes is not None:
            self.flushes = flushes
        before = self.cache_on
        after = before if cache_on is None else cache_on
        # Disabled all along: every write was FUA. Disabled during the stretch: SET FEATURES 82h
        # flushed what came before it (if that flush completed), and what came after was FUA.
        # Re-enabled during it: which writes came before is unknown, so none counts as FUA.
        fua = not after and (not before or completed > 0)
        start = len(self.writes)
        if completed and not (new and fua):
            if new:
                self.unplaced += 1
                log.warning(
                    "drive %d: %d write(s) and %d completed FLUSH between the same two stops (guest "
                    "code that does both in one call): the FLUSH is placed before those writes, which "
                    "stay unflushed in the model; flush through m.ata.flush() to place it exactly",
                    self.drive,
                    len(new),
                    completed,
                )
            self._flush_at(start)
        epoch = len(self.flush_points)
        for n, e in enumerate(new):
            self.writes.append(
                LoggedWrite(self.drive, start + n, e.sector, e.count, epoch, fua, e.data_offset)
            )
        if completed and new and fua:
            self._flush_at(start + len(new))
        self.cache_on = after

    def data(self, w: LoggedWrite) -> bytes:
        """The bytes of a write, from the log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(w.data_offset)
                data = f.read(w.count * SECTOR)
        except OSError as exc:
            raise WriteLogError(f"reading write log {self.log_path}: {exc.strerror}") from None
        if len(data) != w.count * SECTOR:
            raise WriteLogError(f"write log {self.log_path}: write {w.index} is cut short")
        return data

    # --- what a power loss may leave ---------------------------------------------------------
    def moments(self, first: int = 0) -> Iterator[tuple[int, list[LoggedWrite], list[LoggedWrite]]]:
        """For each point where the power may go (from flush epoch `first` on): (completed guest
        FLUSHes by then, writes certainly on the disk, writes that may or may not be).

        Inside a flush epoch: everything before the epoch's start is durable; of the epoch's
        writes, the FUA ones that had completed are, the rest may be; a write in flight (a FUA
        one included) may be partly there."""
        bounds = [0, *self.flush_points, len(self.writes)]
        for epoch in range(first, len(bounds) - 1):
            start, end = bounds[epoch], bounds[epoch + 1]
            if epoch < len(bounds) - 2 and start == end:
                continue  # two FLUSHes with nothing between: one point
            settled = self.writes[:start]
            done: list[LoggedWrite] = []
            pending: list[LoggedWrite] = []
            for w in self.writes[start:end]:
                if w.fua:
                    yield epoch, settled + done, [*pending, w]
                    done.append(w)
                else:
                    pending.append(w)
            yield epoch, settled + done, pending


@dataclass(frozen=True)
class DriveLoss:
    """What one drive kept and lost in a power loss."""

    drive: int
    writes: int  # completed writes since the boot
    durable: int  # of them, made durable (flushed, FUA)
    kept: tuple[Piece, ...]  # pieces of the unflushed writes that survived
    lost: tuple[Piece, ...]  # pieces of the unflushed writes that did not

    @property
    def lost_sectors(self) -> int:
        return sum(p.count for p in self.lost)

    @property
    def lost_writes(self) -> int:
        """Unflushed writes none of whose pieces survived."""
        kept = {p.write for p in self.kept}
        return len({p.write for p in self.lost} - kept)

    def __str__(self) -> str:
        unflushed = len({p.write for p in (*self.kept, *self.lost)})
        return (
            f"drive {self.drive}: {self.writes} write(s), {self.durable} durable, {unflushed} unflushed "
            f"({len(self.kept)} piece(s) kept, {len(self.lost)} lost: {self.lost_sectors} sector(s))"
        )


@dataclass(frozen=True)
class PowerLoss:
    """What m.power_loss() did: the QEMU that went, the one that booted, and per drive what the
    image kept. `seed` replays a random choice: power_loss("random", seed=...)."""

    unflushed: str
    seed: int | None
    drives: Mapping[int, DriveLoss]
    old_pid: int | None = None
    new_pid: int | None = None

    def __str__(self) -> str:
        head = f"power loss (unflushed={self.unflushed}" + (
            f", seed={self.seed})" if self.seed is not None else ")"
        )
        if not self.drives:
            return f"{head}: no drive has a volatile write cache; every completed write was kept"
        return f"{head}: " + "; ".join(str(d) for d in self.drives.values())


class CrashState:
    """One image a power loss could leave on a drive: the image as it was at boot, plus the
    durable writes, plus `kept`, a subset of the unflushed pieces. Valid until the next
    power_loss(), power_cycle(), crash() or close() (they settle the cache it reads from)."""

    def __init__(
        self,
        cache: WriteCaches,
        drive: int,
        epoch: int,
        pieces: tuple[Piece, ...],
        optional: tuple[Piece, ...],
        kept: tuple[Piece, ...],
    ) -> None:
        self._caches = cache
        self._boot = cache.boot
        self.drive = drive
        self.epoch = epoch  # completed guest FLUSHes before the power went
        self.pieces = pieces  # every piece on the disk, in write order
        self.optional = optional  # the unflushed pieces this state chose from
        self.kept = kept  # those it kept

    def __repr__(self) -> str:
        kept = ", ".join(f"w{p.write}@{p.lba}+{p.count}" for p in self.kept)
        return (
            f"CrashState(drive={self.drive}, epoch={self.epoch}, kept {len(self.kept)} of "
            f"{len(self.optional)} unflushed piece(s): {kept or 'none'})"
        )

    @property
    def lost(self) -> tuple[Piece, ...]:
        kept = set(self.kept)
        return tuple(p for p in self.optional if p not in kept)

    def read_sectors(self, lba: int, count: int = 1) -> bytes:
        """Sectors lba..lba+count-1 of this image."""
        cache = self._caches.live_drive(self.drive, self._boot)
        buf = bytearray(cache.disk.read_sectors(lba, count))
        data = self._caches.write_data(cache)
        for p in self.pieces:
            lo, hi = max(lba, p.lba), min(lba + count, p.lba + p.count)
            if lo < hi:
                w = cache.writes[p.write]
                src = data[p.write]
                buf[(lo - lba) * SECTOR : (hi - lba) * SECTOR] = src[
                    (lo - w.lba) * SECTOR : (hi - w.lba) * SECTOR
                ]
        return bytes(buf)

    def write_image(self, path: str | os.PathLike[str]) -> DiskImage:
        """This state as a new raw image file at path (a copy of the drive's image at boot with
        the pieces applied), e.g. to boot a Machine on it."""
        cache = self._caches.live_drive(self.drive, self._boot)
        out = DiskImage(path)
        if out.format != "raw":
            raise UsageError(f"write_image writes a raw image; {out.path} is named as {out.format}")
        if out.path.exists():
            raise UsageError(f"{out.path} exists; write_image makes a new file")
        try:
            shutil.copyfile(cache.disk.path, out.path)
        except OSError as exc:
            raise HarnessError(f"copying {cache.disk.path} to {out.path}: {exc.strerror}") from None
        _apply(out, cache, self.pieces, self._caches.write_data(cache))
        return out


def _apply(disk: DiskImage, cache: DriveCache, pieces: Sequence[Piece], data: Mapping[int, bytes]) -> None:
    """Write pieces into a raw image, in order (a later write wins)."""
    try:
        fd = os.open(disk.path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HarnessError(f"cannot open {disk.path} to write what the drive kept: {exc.strerror}") from None
    try:
        for p in pieces:
            w = cache.writes[p.write]
            chunk = data[p.write][(p.lba - w.lba) * SECTOR : (p.lba - w.lba + p.count) * SECTOR]
            done = 0
            while done < len(chunk):
                done += os.pwrite(fd, chunk[done:], p.lba * SECTOR + done)
    except OSError as exc:
        raise HarnessError(
            f"writing what drive {cache.drive} kept into {disk.path}: {exc.strerror}"
        ) from None
    finally:
        os.close(fd)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _content_key(cache: DriveCache, pieces: Sequence[Piece], digests: Mapping[int, list[bytes]]) -> str:
    """A digest of the sectors these pieces leave (later pieces win): equal digests, equal images."""
    final: dict[int, bytes] = {}
    for p in pieces:
        first = cache.writes[p.write].lba
        per_sector = digests[p.write]
        for s in range(p.lba, p.lba + p.count):
            final[s] = per_sector[s - first]
    h = hashlib.blake2b(digest_size=16)
    for s in sorted(final):
        h.update(s.to_bytes(8, "little"))
        h.update(final[s])
    return h.hexdigest()


def _spread(n: int, count: int) -> list[int]:
    """Up to count values spread evenly over 0..n, both ends included."""
    if n + 1 <= count:
        return list(range(n + 1))
    return sorted({round(i * n / (count - 1)) for i in range(count)}) if count > 1 else [0]


def _subsets(n: int, limit: int, rng: random.Random) -> Iterator[tuple[bool, ...]]:
    """Choices of which of n pieces survive: all 2^n when that is at most limit; else none and
    all, prefixes (a drive that destaged in order up to a point) and suffixes (in reverse), a
    quarter of the limit each, spread over the lengths, then random ones, up to limit in all."""
    if n < 20 and 1 << n <= limit:
        yield from itertools.product((False, True), repeat=n)
        return
    seen: set[tuple[bool, ...]] = set()
    lengths = _spread(n, max(2, limit // 4))
    candidates = itertools.chain(
        (tuple(i < k for i in range(n)) for k in lengths),
        (tuple(i >= k for i in range(n)) for k in lengths),
    )
    for choice in candidates:
        if len(seen) >= limit:
            return
        if choice not in seen:
            seen.add(choice)
            yield choice
    tries = 0
    while len(seen) < limit and tries < limit * 8:
        tries += 1
        choice = tuple(rng.random() < 0.5 for _ in range(n))
        if choice not in seen:
            seen.add(choice)
            yield choice


class WriteCaches:
    """The volatile drives of one machine: boundaries, power loss, crash states."""

    def __init__(self, target: Target, drives: Mapping[int, DiskImage]) -> None:
        self._t = target
        self._disks = dict(drives)
        self.boot = 0  # which QEMU the caches belong to (power losses and reboots change it)
        self._drives: dict[int, DriveCache] = {}
        self._qemu: object = None
        self._data: dict[tuple[int, int], dict[int, bytes]] = {}  # (boot, drive) -> write data, read once
        self._digests: dict[tuple[int, int], dict[int, list[bytes]]] = {}  # (boot, drive) -> per sector
        self._next_kind = "any"  # what the stretch about to start may do: quiet, flush or any
        self._kind = "any"  # what the stretch since the last boundary may have done

    @property
    def drives(self) -> Mapping[int, DriveCache]:
        return self._drives

    def _fresh(self) -> None:
        paths = self._t.paths
        assert paths is not None
        self._drives = {d: DriveCache(d, disk, paths.write_log(d)) for d, disk in self._disks.items()}
        self._data.clear()
        self._digests.clear()
        self._qemu = self._t.qemu

    def expect(self, request: Request | None) -> None:
        """The next stretch runs this driver call (the transport posts it; None: something else)."""
        op = None if request is None else request.op
        self._next_kind = "quiet" if op in QUIET_OPS else "flush" if op in FLUSH_OPS else "any"

    def boundary(self) -> None:
        """Read what the guest did since the last boundary (a resume hook: the VM is stopped and
        QEMU has drained every request)."""
        if self._t.paths is None:
            return
        if self._qemu is not self._t.qemu or not self._drives:
            if self._drives and any(c.writes for c in self._drives.values()):
                raise HarnessError("a new QEMU booted before the last one's writes were settled")  # a bug
            self._fresh()
            self._kind = self._next_kind = "any"  # the boot ran firmware and the driver's start
        kind, self._kind, self._next_kind = self._kind, self._next_kind, "any"
        if kind == "quiet":  # the log alone: no FLUSH completed, the cache setting did not change
            for cache in self._drives.values():
                cache.absorb(cache.flushes, cache.cache_on)
            return
        flushes, cache_on = self._device_state(ask_cache=kind != "flush")
        for d, cache in self._drives.items():
            cache.absorb(flushes.get(d), cache_on.get(d))

    def _device_state(self, ask_cache: bool = True) -> tuple[dict[int, int], dict[int, bool]]:
        """The IDE devices' completed FLUSH counts, and (when it may have changed) their cache
        setting; empty when QEMU cannot be asked (it died: nothing more counts as flushed)."""
        qemu = self._t.qemu
        if qemu is None or qemu.poll() is not None:
            return {}, {}
        node = {f"disk{d}": d for d in self._drives}
        flushes: dict[int, int] = {}
        try:
            for entry in qemu.command("query-blockstats"):
                d = node.get(entry.get("node-name", ""))
                if d is not None:
                    flushes[d] = int(entry["stats"]["flush_operations"])
            # SET FEATURES 82h (disable) always flushes, 02h (enable) only matters once disabled
            ask = [
                d
                for d, c in self._drives.items()
                if ask_cache and (not c.cache_on or flushes.get(d, 0) != c.flushes)
            ]
            cache_on: dict[int, bool] = {}
            if ask:
                for dev in qemu.command("query-block"):
                    qdev = str(dev.get("qdev", ""))
                    d = next((d for d in ask if qdev == f"drive{d}" or qdev.endswith(f"/drive{d}")), None)
                    if d is not None and dev.get("inserted"):
                        cache_on[d] = bool(dev["inserted"]["cache"]["writeback"])
        except HarnessError:
            return {}, {}
        return flushes, cache_on

    def live_drive(self, drive: int, boot: int) -> DriveCache:
        if boot != self.boot:
            raise UsageError(
                "this crash state or mark is from before the last power_loss()/power_cycle()/crash(); "
                "take it again"
            )
        if drive not in self._drives:
            raise UsageError(
                f"drive {drive} has no volatile write cache (Machine(write_cache='volatile') or "
                f"{{{drive}: 'volatile'}})"
            )
        return self._drives[drive]

    def write_data(self, cache: DriveCache) -> dict[int, bytes]:
        """Every write's bytes (read from the log once per boot, added to as the log grows)."""
        data = self._data.setdefault((self.boot, cache.drive), {})
        for w in cache.writes[len(data) :]:
            data[w.index] = cache.data(w)
        return data

    def sector_digests(self, cache: DriveCache) -> dict[int, list[bytes]]:
        """Every write's per-sector digests (to tell images apart without comparing data)."""
        digests = self._digests.setdefault((self.boot, cache.drive), {})
        data = self.write_data(cache)
        for w in cache.writes[len(digests) :]:
            src = data[w.index]
            digests[w.index] = [_digest(src[i * SECTOR : (i + 1) * SECTOR]) for i in range(w.count)]
        return digests

    def mark(self) -> CacheMark:
        self.boundary()
        return CacheMark(
            self.boot,
            {d: len(c.writes) for d, c in self._drives.items()},
            {d: len(c.flush_points) for d, c in self._drives.items()},
        )

    def states(self, drive: int, since: CacheMark | None, limit: int, seed: int) -> list[CrashState]:
        self.boundary()
        cache = self.live_drive(drive, self.boot if since is None else since.boot)
        first = 0 if since is None else since.epochs.get(drive, 0)
        rng = random.Random(seed)
        digests = self.sector_digests(cache)
        out: list[CrashState] = []
        seen: set[tuple[int, str]] = set()
        for epoch, settled, maybe in cache.moments(first):
            base = tuple(p for w in settled for p in w.pieces())
            optional = tuple(p for w in maybe for p in w.pieces())
            for choice in _subsets(len(optional), limit, rng):
                kept = tuple(p for p, keep in zip(optional, choice, strict=True) if keep)
                pieces = tuple(sorted((*base, *kept)))
                key = (epoch, _content_key(cache, pieces, digests))
                if key not in seen:
                    seen.add(key)
                    out.append(CrashState(self, drive, epoch, pieces, optional, kept))
        return out

    # --- settling: what goes into the image files when a QEMU goes -----------------------------
    def settle(self, unflushed: str, seed: int | None) -> PowerLoss:
        """Write into each image what its drive kept (the QEMU is gone); the caches start afresh."""
        if self._drives:
            for cache in self._drives.values():
                cache.absorb(None, None)  # writes logged after the last boundary: never flushed
        rng = random.Random(seed)
        report: dict[int, DriveLoss] = {}
        try:
            for d, cache in sorted(self._drives.items()):
                data = self.write_data(cache)
                kept: list[Piece] = []
                lost: list[Piece] = []
                onto: list[Piece] = []
                for w in cache.writes:
                    durable = cache.durable(w)
                    for p in w.pieces():
                        if durable:
                            onto.append(p)
                        elif unflushed == "keep" or (unflushed == "random" and rng.random() < 0.5):
                            onto.append(p)
                            kept.append(p)
                        else:
                            lost.append(p)
                _apply(cache.disk, cache, onto, data)
                settled = sum(1 for w in cache.writes if cache.durable(w))
                report[d] = DriveLoss(d, len(cache.writes), settled, tuple(kept), tuple(lost))
        finally:
            self._drives = {}
            self._data.clear()
            self._digests.clear()
            self.boot += 1
        return PowerLoss(unflushed, seed, report)


def check_unflushed(unflushed: object, seed: object) -> None:
    """power_loss()'s arguments, refused before anything happens."""
    if not isinstance(unflushed, str) or unflushed not in UNFLUSHED:
        raise UsageError(f"unflushed={unflushed!r:.40} is not one of {', '.join(UNFLUSHED)}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UsageError(f"seed must be an int or None, not {seed!r:.40}")


def write_cache_map(write_cache: object, drives: Sequence[int]) -> dict[int, str]:
    """Machine(write_cache=...) as {drive: mode}: one mode for every drive, or a dict (drives
    not in it: writethrough). Modes and drives are checked by QemuConfig."""
    if write_cache is None:
        return {}
    if isinstance(write_cache, str):
        if write_cache not in WRITE_CACHE_MODES:
            raise ConfigError(f"write_cache {write_cache!r:.40} is not one of {', '.join(WRITE_CACHE_MODES)}")
        return {d: write_cache for d in drives}
    if isinstance(write_cache, Mapping):
        return dict(write_cache)
    raise ConfigError(f"write_cache must be a mode or a {{drive: mode}} dict, not {write_cache!r:.60}")
