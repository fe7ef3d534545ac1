"""pytest plugin (entry point `piix3`): fixtures for machines and disks, per-test artifacts,
and a session-end check that every QEMU and GDB the harness started is gone."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness import procs
from harness.disk import DiskImage
from harness.machine import Machine
from harness.qemu import FIRMWARE

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_ARTIFACT_DIRS = pytest.StashKey[list[Path]]()

MachineFactory = Callable[..., Machine]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("piix3", "piix3-harness")
    group.addoption(
        "--piix3-firmware",
        choices=[*sorted(FIRMWARE), "both"],
        default=None,
        help="firmware for the fixtures' machines; both: run each such test under each "
        "(default: seabios, or $PIIX3_FIRMWARE)",
    )
    group.addoption(
        "--piix3-keep-artifacts",
        action="store_true",
        default=False,
        help="keep every test's serial/QEMU/GDB logs, not only the failing tests'",
    )
    group.addoption(
        "--piix3-artifacts",
        default=None,
        metavar="DIR",
        help="where per-test artifact directories go (default: build/test-artifacts)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qemu: starts real QEMU and GDB (integration test)")
    config.addinivalue_line(
        "markers",
        "piix3_faults(faults): the `machine` fixture injects these disk errors, "
        "e.g. piix3_faults({0: [Fault('read', sector=500)]})",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    dirs = item.stash.get(_ARTIFACT_DIRS, [])
    if report.when == "call" and dirs and isinstance(item, pytest.Function):
        for d in dirs:
            if ("piix3_artifacts", str(d)) not in item.user_properties:
                item.user_properties.append(("piix3_artifacts", str(d)))
    if report.failed and dirs:
        report.sections.append(
            (
                "piix3 artifacts",
                "\n".join(f"{d}: serial.log qemu.log gdb-mi.log qemu.cmdline gdb.cmdline" for d in dirs),
            )
        )
    return report


def _failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(_REPORTS, {}).values())


@pytest.fixture(autouse=True)
def _piix3_no_leaked_processes() -> Iterator[None]:
    """After every test: each QEMU and GDB started during it must be gone (a check, not a hope)."""
    first = len(procs.STARTED_CHILDREN)
    yield
    alive = [pid for pid in procs.STARTED_CHILDREN[first:] if procs.pid_alive(pid)]
    if alive:
        names = ", ".join(f"{procs.LIVE_CHILDREN.get(p, '?')} pid {p}" for p in alive)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"processes left running by this test (now killed): {names}")


def _firmware_choice(config: pytest.Config) -> str:
    chosen = config.getoption("--piix3-firmware") or os.environ.get("PIIX3_FIRMWARE", "seabios")
    if chosen != "both" and chosen not in FIRMWARE:
        raise pytest.UsageError(f"PIIX3_FIRMWARE={chosen!r}: use one of {', '.join(FIRMWARE)} or both")
    return str(chosen)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """With --piix3-firmware both, every test that boots machines runs under each firmware."""
    if "piix3_firmware" in metafunc.fixturenames and _firmware_choice(metafunc.config) == "both":
        metafunc.parametrize("piix3_firmware", sorted(FIRMWARE))


@pytest.fixture(scope="session")
def piix3_firmware(pytestconfig: pytest.Config) -> str:
    """The firmware chosen with --piix3-firmware (or $PIIX3_FIRMWARE), default seabios."""
    return _firmware_choice(pytestconfig)


def _artifact_root(config: pytest.Config) -> Path:
    opt = config.getoption("--piix3-artifacts")
    root = Path(opt) if opt else Path(str(config.rootpath)) / "build" / "test-artifacts"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return root.absolute() / worker


@pytest.fixture
def machine_factory(request: pytest.FixtureRequest, piix3_firmware: str) -> Iterator[MachineFactory]:
    """Start machines for this test: `machine_factory(disks=[...], **Machine kwargs)`.

    Each gets an artifact directory named after the test; they are closed after the test and
    their logs kept if it failed (or with --piix3-keep-artifacts), and named in the report.
    """
    made: list[Machine] = []
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    base = _artifact_root(request.config) / safe
    dirs = request.node.stash.setdefault(_ARTIFACT_DIRS, [])

    def make(disks: Sequence[DiskImage] | Mapping[int, DiskImage] | None = None, **kwargs: Any) -> Machine:
        out = base / f"machine{len(made)}"
        shutil.rmtree(out, ignore_errors=True)
        kwargs.setdefault("firmware", piix3_firmware)
        m = Machine(disks=disks, artifacts_dir=out, **kwargs)
        made.append(m)
        dirs.append(out)
        m.start()
        return m

    yield make
    failed = _failed(request.node)
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
def machine(request: pytest.FixtureRequest, machine_factory: MachineFactory, disk: DiskImage) -> Machine:
    """A machine with `disk` as drive 0 (primary master), stopped at harness_ready; a
    `piix3_faults` marker on the test injects disk errors."""
    marker = request.node.get_closest_marker("piix3_faults")
    faults = marker.args[0] if marker and marker.args else marker.kwargs.get("faults") if marker else None
    return machine_factory(disks=[disk], faults=faults)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if any QEMU or GDB this process started is still alive."""
    alive = [pid for pid in procs.STARTED_CHILDREN if procs.pid_alive(pid)]
    if not alive:
        return
    names = ", ".join(f"{procs.LIVE_CHILDREN.get(p, '?')} pid {p}" for p in alive)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"piix3: processes left running by the suite: {names}; killing them", red=True)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
