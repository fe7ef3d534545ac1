"""The plugin's fixtures: machine, machine_factory, disk, piix3_firmware, and each test's
artifact directory (where its machines' logs and, when it fails, its waveforms go)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.disk import DiskImage
from harness.machine import Machine
from harness.pytest_plugin import options, protocol, state, waveforms
from harness.pytest_plugin.hooks import firmware_choice, transport_choice
from harness.pytest_plugin.pool import SnapshotPool
from harness.transport import TRANSPORTS

MachineFactory = Callable[..., Machine]


@pytest.fixture(scope="session")
def piix3_firmware(pytestconfig: pytest.Config) -> str:
    """The firmware chosen with --piix3-firmware (or $PIIX3_FIRMWARE), default seabios."""
    return firmware_choice(pytestconfig)


@pytest.fixture(scope="session")
def piix3_transport(pytestconfig: pytest.Config) -> str:
    """The transport chosen with --piix3-transport (or $PIIX3_TRANSPORT), default doorbell;
    both and paired parametrize it (hooks.py)."""
    chosen = transport_choice(pytestconfig)
    return chosen if chosen in TRANSPORTS else "doorbell"


def _artifact_root(config: pytest.Config, factory: pytest.TempPathFactory) -> Path:
    """--piix3-artifacts DIR, else this session's pytest temp dir (pytest keeps the last
    three sessions'), so concurrent sessions never share a directory; per xdist worker."""
    opt = config.getoption("--piix3-artifacts")
    root = Path(opt).absolute() if opt else factory.getbasetemp() / "piix3-artifacts"
    return root / os.environ.get("PYTEST_XDIST_WORKER", "main")


def _test_dir(request: pytest.FixtureRequest, factory: pytest.TempPathFactory) -> Path:
    """This test's artifact directory: its name (readable) and a hash of its node id (unique)."""
    nodeid = request.node.nodeid
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    return (
        _artifact_root(request.config, factory)
        / f"{readable}-{hashlib.sha1(nodeid.encode()).hexdigest()[:8]}"
    )


@pytest.fixture(autouse=True)
def _piix3_waveforms(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test: the port watches and device traces made from here on are its own, drawn
    into its artifact directory if it fails (waveforms.py)."""
    waveforms.start(request.node, _test_dir(request, tmp_path_factory))


@pytest.fixture
def machine_factory(
    request: pytest.FixtureRequest,
    piix3_firmware: str,
    piix3_transport: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MachineFactory]:
    """Start machines for this test: `machine_factory(disks=[...], **Machine kwargs)`.

    Each gets an artifact directory named after the test; they are closed after the test and
    their logs kept if it failed (or with --piix3-keep-artifacts), and named in the report.
    """
    made: list[Machine] = []
    base = _test_dir(request, tmp_path_factory)
    dirs = request.node.stash.setdefault(state.ARTIFACT_DIRS, [])

    def make(disks: Sequence[DiskImage] | Mapping[int, DiskImage] | None = None, **kwargs: Any) -> Machine:
        out = base / f"machine{len(made)}"
        shutil.rmtree(out, ignore_errors=True)
        kwargs.setdefault("firmware", piix3_firmware)
        pinned = options.completion_marker(request.node)
        if pinned is not None:
            kwargs.setdefault("completion", pinned)
        if kwargs.get("data_path", "shm") == "shm":  # the doorbell needs shared RAM
            kwargs.setdefault("transport", piix3_transport)
        m = Machine(disks=disks, artifacts_dir=out, **options.machine_kwargs(request.config, kwargs))
        made.append(m)
        request.node.stash.setdefault(state.MACHINES, []).append(m)
        dirs.append(out)
        m.start()
        protocol.watch(request.node, m)
        return m

    yield make
    failed = state.failed(request.node)
    for m in made:
        m.close(failed=failed)
    if not failed and not request.config.getoption("--piix3-keep-artifacts"):
        shutil.rmtree(base, ignore_errors=True)
        dirs.clear()


@pytest.fixture
def disk(tmp_path: Path) -> DiskImage:
    """A fresh, zeroed 64 MiB raw image."""
    return DiskImage.create(tmp_path / "disk0.img", size_mib=64)


@pytest.fixture
def machine(
    request: pytest.FixtureRequest,
    machine_factory: MachineFactory,
    piix3_firmware: str,
    piix3_transport: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Machine]:
    """A machine with one 64 MiB disk on drive 0, stopped at harness_ready.

    The fast way where it is correct: restored from the worker's VM snapshot (qcow2 disk,
    zeroed, ~10-20 ms). A real boot on the raw `disk` fixture's image when the test asks for
    `disk` too (it asserts on the host file), has a `piix3_faults` marker (faults are
    configured at boot), or is marked `piix3_fresh`. A failing test on the pooled machine
    gets its own share of the machine's logs (what was written during the test).
    """
    marker = request.node.get_closest_marker("piix3_faults")
    faults = marker.args[0] if marker and marker.args else marker.kwargs.get("faults") if marker else None
    fresh = (
        faults is not None or request.node.get_closest_marker("piix3_fresh") or "disk" in request.fixturenames
    )
    if fresh:
        disk: DiskImage = request.getfixturevalue("disk")
        yield machine_factory(disks=[disk], faults=faults)
        return
    pool: SnapshotPool = request.getfixturevalue("piix3_snapshot_pool")
    m = pool.get(piix3_firmware, piix3_transport)
    pinned = options.completion_marker(request.node)
    if pinned is not None:
        m.ata.set_completion(pinned)
    protocol.watch(request.node, m)
    request.node.stash.setdefault(state.MACHINES, []).append(m)
    logs = m.artifacts
    marks = {f: f.stat().st_size for f in logs.iterdir() if f.is_file()} if logs else {}
    out = _test_dir(request, tmp_path_factory) / "pooled-machine"
    request.node.stash.setdefault(state.ARTIFACT_DIRS, []).append(out)
    yield m
    keep = state.failed(request.node) or request.config.getoption("--piix3-keep-artifacts")
    if logs is not None and keep:
        out.mkdir(parents=True, exist_ok=True)
        for f in logs.iterdir():
            if not f.is_file():
                continue
            start = marks.get(f, 0)
            if f.suffix == ".cmdline" or f.stat().st_size < start:  # written once, or rewritten
                start = 0
            with open(f, "rb") as src:
                src.seek(start)
                (out / f.name).write_bytes(src.read())
