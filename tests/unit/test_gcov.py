"""The host-side gcov runtime (harness/coverage/gcov.py), fed with recorded real output: guest/
ata.c's gcov_info from the coverage kernel, its counters read from guest RAM after a boot, a
PIO write and a flush, and the .gcda stream libgcov's own __gcov_info_to_gcda made of them in
the guest (tests/data/gcov-ata-libgcov.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.coverage import gcov

DATA = Path(__file__).resolve().parent.parent / "data" / "gcov-ata-libgcov.json"


def recorded() -> tuple[gcov.ObjectInfo, dict[int, list[int]], bytes]:
    doc = json.loads(DATA.read_text())
    o = doc["object"]
    functions = tuple(
        None
        if f is None
        else gcov.FunctionInfo(
            f["name"],
            f["ident"],
            f["lineno_checksum"],
            f["cfg_checksum"],
            tuple(gcov.CounterArray(**c) for c in f["counters"]),
            f["own"],
        )
        for f in o["functions"]
    )
    obj = gcov.ObjectInfo(
        o["address"], o["version"], o["stamp"], o["checksum"], o["filename"], tuple(o["kinds"]), functions
    )
    counters = {int(k): v for k, v in doc["counters"].items()}
    return obj, counters, bytes.fromhex(doc["libgcov_stream"])


def test_the_encoder_writes_what_libgcov_writes() -> None:
    obj, counters, stream = recorded()
    assert any(not any(v) for v in counters.values()), "the record has all-zero arrays (the short form)"
    assert any(any(v) for v in counters.values())
    assert gcov.gcda_stream(obj, counters) == stream


def test_a_changed_count_or_checksum_changes_the_stream() -> None:
    """The comparison above has teeth: one count or one checksum off is another stream."""
    obj, counters, stream = recorded()
    addr = next(a for a, v in counters.items() if any(v))
    bumped = dict(counters)
    bumped[addr] = [v + 1 for v in counters[addr]]
    assert gcov.gcda_stream(obj, bumped) != stream
    other = gcov.ObjectInfo(
        obj.address, obj.version, obj.stamp, obj.checksum ^ 1, obj.filename, obj.kinds, obj.functions
    )
    assert gcov.gcda_stream(other, counters) != stream


def test_a_function_of_another_object_gets_an_empty_record() -> None:
    obj, counters, _ = recorded()
    f = next(f for f in obj.functions if f is not None)
    foreign = gcov.FunctionInfo(f.name, f.ident, f.lineno_checksum, f.cfg_checksum, f.counters, own=False)
    one = gcov.ObjectInfo(
        obj.address, obj.version, obj.stamp, obj.checksum, obj.filename, obj.kinds, (foreign,)
    )
    words = [int.from_bytes(gcov.gcda_stream(one, counters)[i : i + 4], "little") for i in range(0, 24, 4)]
    assert words == [gcov.DATA_MAGIC, obj.version, obj.stamp, obj.checksum, gcov.TAG_FUNCTION, 0]


def test_ram_counters_count_each_execution_once() -> None:
    """Deltas against the last read: after a boot cleared RAM (baseline zero), and after a loadvm
    rolled it back (baseline: what the snapshot holds, already counted)."""
    obj, _, _ = recorded()
    layout = gcov.GcovLayout(Path("k.elf"), (obj,))
    ram = gcov.RamCounters(layout)
    total = gcov.Counters(layout)
    n = layout.size
    total.add(ram.delta([5] * n))  # boot + a test
    total.add(ram.delta([7] * n))  # more of it
    ram.cleared()  # reset: the next boot counts from zero
    total.add(ram.delta([3] * n))
    ram.baseline = [2] * n  # loadvm: the snapshot's counters
    total.add(ram.delta([4] * n))
    total.add(ram.delta([1] * n))  # below the baseline: RAM was cleared unseen, count from zero
    assert total.values == [7 + 3 + 2 + 1] * n


def test_worker_documents_merge_by_kernel_and_refuse_a_mismatch() -> None:
    a = {"kernel": "k", "key": "x", "values": [1, 2]}
    b = {"kernel": "k", "key": "x", "values": [10, 0]}
    c = {"kernel": "k2", "key": "y", "values": [4]}
    merged = gcov.merge_json([a, b, c])
    assert merged["x"]["values"] == [11, 2] and merged["y"]["values"] == [4]
    with pytest.raises(gcov.GcovError):
        gcov.merge_json([a, {"kernel": "k", "key": "x", "values": [1]}])


def test_a_plain_kernel_has_no_layout(tmp_path: Path) -> None:
    elf = tmp_path / "plain.elf"
    elf.write_bytes(b"not an elf")
    with pytest.raises(gcov.GcovError):
        gcov.GcovLayout.from_elf(elf)


def test_a_truncated_elf_is_a_gcov_error(tmp_path: Path) -> None:
    """A stand-in kernel that is only an ELF magic (tests make such files) must not crash the
    observer that looks at every machine's kernel."""
    elf = tmp_path / "kernel.elf"
    elf.write_bytes(b"\x7fELF")
    with pytest.raises(gcov.GcovError):
        gcov.GcovLayout.from_elf(elf)
