"""Coverage collection on real QEMU: the instrumented kernel (`make coverage-guest`, built here
into this session's temp directory) keeps its gcov counters in guest RAM, and the harness must
read them before every way that RAM is lost or rolled back (loadvm, reset, power cycle, crash,
close), count each execution once, and encode them as libgcov does."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import DiskImage, Machine
from harness.coverage import gcov
from harness.coverage.observe import GcovCollector, install

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 300.0  # s, the instrumented kernel on a loaded machine


@pytest.fixture(scope="session")
def coverage_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = tmp_path_factory.mktemp("coverage-build")
    done = subprocess.run(
        ["make", "-s", "-C", str(REPO), "coverage-guest", f"BUILD={build}"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    kernel = build / "coverage-kernel" / "guest" / "kernel.elf"
    assert done.returncode == 0 and kernel.is_file(), done.stdout + done.stderr
    return kernel


@pytest.fixture
def collector() -> Iterator[GcovCollector]:
    c = GcovCollector()
    remove = install(c.attach)
    yield c
    remove()


def function_counts(layout: gcov.GcovLayout, values: list[int], name: str) -> list[int]:
    arrays = gcov.by_array(layout, values)
    f = next(f for o in layout.objects for f in o.functions if f is not None and f.name == name)
    return [v for c in f.counters for v in arrays[c.address]]


def test_every_execution_is_counted_once_across_every_way_ram_goes(
    coverage_kernel: Path, collector: GcovCollector, tmp_path: Path
) -> None:
    """Five flushes, with a loadvm, a warm reset, a power cycle and a crash between them, and a
    close at the end: ata_flush's counters come out five times one flush's, and ata_init's
    (the boot's detection) four times one boot's (the loadvm rolls back to a snapshot taken
    after the first boot, which was counted then). A collection point that is missed loses a
    flush; one that double-counts the snapshot adds one."""
    layout = gcov.GcovLayout.from_elf(coverage_kernel)
    assert layout is not None
    disk = DiskImage.create(tmp_path / "d.qcow2", size_mib=64, format="qcow2")
    with Machine(disks=[disk], kernel=coverage_kernel, memory_mib=64, artifacts_dir=tmp_path / "logs") as m:
        boot = function_counts(layout, layout.read(m.read_memory), "ata_init")
        m.save_snapshot()
        m.ata.flush(0)
        one = function_counts(layout, layout.read(m.read_memory), "ata_flush")
        m.restore_snapshot()
        m.ata.flush(0)
        m.reset()
        m.ata.flush(0)
        m.power_cycle()
        m.ata.flush(0)
        m.crash()
        m.ata.flush(0)
    assert any(one) and any(boot)
    total = collector.totals[layout.key()].values
    assert function_counts(layout, total, "ata_flush") == [5 * v for v in one]
    assert function_counts(layout, total, "ata_init") == [4 * v for v in boot]
    assert collector.failures == []


def test_the_harness_encodes_gcda_as_libgcov_does(coverage_kernel: Path, tmp_path: Path) -> None:
    """Every object's .gcda from the counters in RAM, byte for byte what libgcov's own encoder
    (__gcov_info_to_gcda, linked into the coverage kernel: guest/gcov/runtime.c) makes of the
    same counters in the guest."""
    layout = gcov.GcovLayout.from_elf(coverage_kernel)
    assert layout is not None and {o.source for o in layout.objects} >= {"ata.c", "harness.c", "pci.c"}
    disk = DiskImage.create(tmp_path / "d.img", size_mib=64)
    # the gdb transport: the guest stays parked between the counters' two readings (in the
    # doorbell loop, harness.c's counters would move on between them)
    with Machine(disks=[disk], kernel=coverage_kernel, artifacts_dir=tmp_path / "logs", transport="gdb") as m:
        m.ata.write(0, 9, b"\xa5" * 1024, mode="dma")
        arrays = gcov.by_array(layout, layout.read(m.read_memory))
        buf = m.symbol("xfer_buf")
        for obj in layout.objects:
            n = m.call("gcov_stream", obj.address, buf, 1 << 20)
            assert n is not None and 0 < n < 1 << 20
            assert gcov.gcda_stream(obj, arrays) == m.read_memory(buf, n), obj.source
