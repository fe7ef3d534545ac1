"""Line and branch coverage of the guest: gcc's gcov counters, read out of guest RAM.

The coverage kernel (`make coverage-guest`) is built with `--coverage -fprofile-info-section
-fprofile-update=single`: every basic-block arc increments a 64-bit counter in .bss, and the
`.gcov_info` section lists one `struct gcov_info` per object (file name of its .gcda, stamp,
checksum, and per function the address and length of its counter array). Nothing in the guest
writes .gcda files: the harness is the runtime. It reads the layout once from the ELF file
(`GcovLayout`), reads the counter arrays straight out of guest RAM through the shared mapping
whenever RAM is about to be lost or rolled back (reset, power cycle, crash, loadvm, close:
`Target.ram_hooks`), sums them (`Counters`) and at the end encodes them as .gcda files exactly
as libgcov's `__gcov_info_to_gcda` does (gcc 12 format; tests/unit/test_gcov.py and
tests/integration/test_coverage.py hold the encoder to libgcov's own output, which the coverage
kernel carries for that purpose: guest/gcov/runtime.c). Reading RAM needs no guest cooperation,
so it works at every collection point: a guest stopped in the middle of a call, hung, or about
to be killed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.portio.gdb_agent import _elf_headers

SECTION = ".gcov_info"
GCOV_COUNTERS = 8  # gcc 12's counter kinds (gcov-counter.def); only arcs (0) with --coverage
GCOV_INFO = struct.Struct("<IIIII8III")  # version next stamp checksum filename merge[8] n_functions functions
GCOV_FN_INFO = struct.Struct("<IIII")  # key ident lineno_checksum cfg_checksum, then ctrs[]
GCOV_CTR_INFO = struct.Struct("<II")  # num values
DATA_MAGIC = 0x67636461  # "gcda"
TAG_FUNCTION = 0x01000000
TAG_FUNCTION_LENGTH = 12  # bytes (gcc 12 counts tag lengths in bytes)
TAG_COUNTER_BASE = 0x01A10000
COUNTER_ARCS = 0
SHT_PROGBITS, SHT_SYMTAB, SHT_NOBITS = 1, 2, 8


class GcovError(HarnessError):
    """The kernel's gcov data could not be read or does not have the expected shape."""


@dataclass(frozen=True)
class CounterArray:
    """One function's counters of one kind: `num` 64-bit values at `address` in guest RAM."""

    kind: int
    num: int
    address: int


@dataclass(frozen=True)
class FunctionInfo:
    name: str  # from the counter array's symbol (__gcov0.NAME), "" if unknown
    ident: int
    lineno_checksum: int
    cfg_checksum: int
    counters: tuple[CounterArray, ...]
    own: bool  # key == its object's gcov_info (libgcov writes an empty record otherwise)


@dataclass(frozen=True)
class ObjectInfo:
    """One object file's `struct gcov_info`."""

    address: int
    version: int
    stamp: int
    checksum: int
    filename: str  # the .gcda path the compiler chose (beside the .gcno)
    kinds: tuple[int, ...]  # counter kinds with a merge function (streamed)
    functions: tuple[FunctionInfo | None, ...]

    @property
    def source(self) -> str:
        """The source file's name, as in the object name: ata.c for .../ata.c.gcda."""
        base = os.path.basename(self.filename)
        return base[: -len(".gcda")] if base.endswith(".gcda") else base


class ElfImage:
    """The loaded sections and the symbols of a 32-bit ELF file (the kernel)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open(path, "rb") as f:
            self.data = f.read()
        try:
            headers, strtab_off = _elf_headers(self.data, path)
        except (ValueError, IndexError, struct.error) as exc:
            raise GcovError(f"{path}: not a readable 32-bit ELF file ({exc!r})") from None
        self.headers = headers
        self.sections: dict[str, tuple[int, ...]] = {}
        for h in headers:
            name = self._string(strtab_off, h[0])
            if name:
                self.sections[name] = h
        self.symbols: dict[int, list[str]] = {}
        for h in headers:
            if h[1] != SHT_SYMTAB or not h[9]:
                continue
            names_off = headers[h[6]][4]  # sh_link: the string table
            for k in range(h[5] // h[9]):
                name_off, value = struct.unpack_from("<II", self.data, h[4] + k * h[9])
                if name_off:
                    self.symbols.setdefault(value, []).append(self._string(names_off, name_off))

    def _string(self, table: int, offset: int) -> str:
        start = table + offset
        return self.data[start : self.data.index(b"\0", start)].decode(errors="replace")

    def read(self, addr: int, size: int) -> bytes:
        """Bytes at a load address, from the file (initialised sections only)."""
        for h in self.headers:
            if h[1] == SHT_PROGBITS and h[2] & 0x2 and h[3] <= addr and addr + size <= h[3] + h[5]:
                off = h[4] + addr - h[3]
                return self.data[off : off + size]
        raise GcovError(f"{self.path}: {addr:#x}..+{size} is in no initialised section")

    def string(self, addr: int, limit: int = 4096) -> str:
        for h in self.headers:
            if h[1] == SHT_PROGBITS and h[2] & 0x2 and h[3] <= addr < h[3] + h[5]:
                off = h[4] + addr - h[3]
                end = self.data.find(b"\0", off, min(off + limit, h[4] + h[5]))
                if end < 0:
                    break
                return self.data[off:end].decode(errors="replace")
        raise GcovError(f"{self.path}: no string at {addr:#x}")


@dataclass(frozen=True)
class GcovLayout:
    """Where an instrumented kernel keeps its counters, and what the .gcda files need."""

    kernel: Path
    objects: tuple[ObjectInfo, ...]

    @classmethod
    def from_elf(cls, kernel: str | os.PathLike[str]) -> GcovLayout | None:
        """The layout of an instrumented kernel; None for a plain one (no .gcov_info)."""
        elf = ElfImage(kernel)
        section = elf.sections.get(SECTION)
        if section is None:
            return None
        addr, size = section[3], section[5]
        try:
            pointers = struct.unpack(f"<{size // 4}I", elf.read(addr, size)) if size else ()
            return cls(Path(kernel).absolute(), tuple(_object(elf, p) for p in pointers))
        except (ValueError, IndexError, struct.error) as exc:
            raise GcovError(f"{kernel}: its gcov_info is not what gcc 12 writes ({exc!r})") from None

    @property
    def arrays(self) -> list[CounterArray]:
        """Every counter array, in object and function order (the order of Counters.values)."""
        return [c for o in self.objects for f in o.functions if f is not None for c in f.counters]

    @property
    def size(self) -> int:
        return sum(c.num for c in self.arrays)

    def spans(self) -> list[tuple[int, int]]:
        """(address, bytes) of the counter storage, adjacent arrays joined: few reads."""
        out: list[list[int]] = []
        for c in sorted(self.arrays, key=lambda c: c.address):
            if out and out[-1][0] + out[-1][1] == c.address:
                out[-1][1] += c.num * 8
            else:
                out.append([c.address, c.num * 8])
        return [(a, n) for a, n in out]

    def read(self, read_memory: Callable[[int, int], bytes]) -> list[int]:
        """The counters now in guest RAM, in `arrays` order."""
        memory: dict[int, int] = {}
        for addr, size in self.spans():
            raw = read_memory(addr, size)
            values = struct.unpack(f"<{size // 8}Q", raw)
            for i, v in enumerate(values):
                memory[addr + 8 * i] = v
        return [memory[c.address + 8 * i] for c in self.arrays for i in range(c.num)]

    def key(self) -> str:
        """What identifies this build's counters across processes: the objects' stamps."""
        return ",".join(f"{o.filename}:{o.stamp:08x}:{o.checksum:08x}" for o in self.objects)


def _object(elf: ElfImage, address: int) -> ObjectInfo:
    f = GCOV_INFO.unpack(elf.read(address, GCOV_INFO.size))
    version, _next, stamp, checksum, filename_at = f[:5]
    merge = f[5:13]
    n_functions, functions_at = f[13], f[14]
    if n_functions > 100_000:
        raise GcovError(f"{elf.path}: gcov_info at {address:#x} claims {n_functions} functions")
    kinds = tuple(k for k in range(GCOV_COUNTERS) if merge[k])
    pointers = (
        struct.unpack(f"<{n_functions}I", elf.read(functions_at, 4 * n_functions)) if n_functions else ()
    )
    functions: list[FunctionInfo | None] = []
    for p in pointers:
        if not p:
            functions.append(None)
            continue
        key, ident, lineno, cfg = GCOV_FN_INFO.unpack(elf.read(p, GCOV_FN_INFO.size))
        ctrs = []
        for i, kind in enumerate(kinds):
            num, values = GCOV_CTR_INFO.unpack(elf.read(p + GCOV_FN_INFO.size + 8 * i, GCOV_CTR_INFO.size))
            ctrs.append(CounterArray(kind, num, values))
        names = [s for s in elf.symbols.get(ctrs[0].address, []) if s.startswith("__gcov0.")] if ctrs else []
        name = names[0][len("__gcov0.") :] if names else ""
        functions.append(FunctionInfo(name, ident, lineno, cfg, tuple(ctrs), key == address))
    return ObjectInfo(address, version, stamp, checksum, elf.string(filename_at), kinds, tuple(functions))


# --- counting ------------------------------------------------------------------------------
class Counters:
    """Counter totals for one layout, summed from the deltas seen in guest RAM."""

    def __init__(self, layout: GcovLayout) -> None:
        self.layout = layout
        self.values = [0] * layout.size

    def add(self, values: Iterable[int]) -> None:
        for i, v in enumerate(values):
            self.values[i] += v

    def to_json(self) -> dict[str, Any]:
        return {"kernel": str(self.layout.kernel), "key": self.layout.key(), "values": list(self.values)}

    def functions_hit(self, values: Iterable[int]) -> list[str]:
        """source:function of each function with a non-zero counter in `values`."""
        out = []
        it = iter(values)
        for o in self.layout.objects:
            for f in o.functions:
                if f is None:
                    continue
                hit = False
                for c in f.counters:
                    for _ in range(c.num):
                        hit = bool(next(it)) or hit
                if hit:
                    out.append(f"{o.source}:{f.name}")
        return out


class RamCounters:
    """The counters of one guest incarnation: what has been counted already (`baseline`) and
    the delta since. RAM cleared by a boot starts at zero; RAM rolled back by loadvm starts at
    whatever the snapshot holds (counted when it first ran)."""

    def __init__(self, layout: GcovLayout) -> None:
        self.layout = layout
        self.baseline = [0] * layout.size

    def delta(self, now: list[int]) -> list[int]:
        """now - baseline, and now becomes the baseline. A counter below its baseline means
        RAM was cleared without a collection (the guest reset itself): it counts from zero."""
        out = [n - b if n >= b else n for n, b in zip(now, self.baseline, strict=True)]
        self.baseline = now
        return out

    def cleared(self) -> None:
        self.baseline = [0] * self.layout.size


# --- the .gcda encoder -----------------------------------------------------------------------
def gcda_stream(
    obj: ObjectInfo, counts: Mapping[int, list[int]] | Callable[[CounterArray], list[int]]
) -> bytes:
    """The .gcda bytes of one object, as libgcov's __gcov_info_to_gcda (gcc 12) writes them:
    magic, version, stamp, checksum; per function a FUNCTION record (empty for a function
    another object owns) and one counter record per kind, with a negative length and no values
    when all of them are zero; a 0 word at the end. `counts` gives each array's values."""
    out = bytearray()

    def word(v: int) -> None:
        out.extend(struct.pack("<I", v & 0xFFFFFFFF))

    word(DATA_MAGIC)
    word(obj.version)
    word(obj.stamp)
    word(obj.checksum)
    for f in obj.functions:
        word(TAG_FUNCTION)
        if f is None or not f.own:
            word(0)
            continue
        word(TAG_FUNCTION_LENGTH)
        word(f.ident)
        word(f.lineno_checksum)
        word(f.cfg_checksum)
        for c in f.counters:
            if c.kind != COUNTER_ARCS:
                raise GcovError(f"{obj.filename}: counter kind {c.kind} is not supported (arcs only)")
            values = counts(c) if callable(counts) else counts[c.address]
            word(TAG_COUNTER_BASE + (c.kind << 17))
            if not any(values):
                word(-c.num * 8)
                continue
            word(c.num * 8)
            for v in values:
                word(v)
                word(v >> 32)
    word(0)
    return bytes(out)


def by_array(layout: GcovLayout, values: list[int]) -> dict[int, list[int]]:
    """Counter array address -> its slice of `values` (in `layout.arrays` order)."""
    out = {}
    pos = 0
    for c in layout.arrays:
        out[c.address] = values[pos : pos + c.num]
        pos += c.num
    return out


def write_gcda(
    layout: GcovLayout, values: list[int], where: Callable[[ObjectInfo], Path] | None = None
) -> list[Path]:
    """Write every object's .gcda (where the compiler said, beside its .gcno, unless `where`
    says otherwise); returns the files written."""
    arrays = by_array(layout, values)
    written = []
    for obj in layout.objects:
        path = where(obj) if where is not None else Path(obj.filename)
        path.write_bytes(gcda_stream(obj, arrays))
        written.append(path)
    return written


def merge_json(docs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sum Counters.to_json() documents (one per worker and kernel) by layout key."""
    merged: dict[str, dict[str, Any]] = {}
    for doc in docs:
        key = str(doc["key"])
        values = [int(v) for v in doc["values"]]
        have = merged.get(key)
        if have is None:
            merged[key] = {"kernel": doc["kernel"], "key": key, "values": values}
        elif len(have["values"]) != len(values):
            raise GcovError(f"counter documents for {doc['kernel']} differ in length")
        else:
            have["values"] = [a + b for a, b in zip(have["values"], values, strict=True)]
    return merged
