"""pytest plugin (entry point `piix3`): fixtures for machines and disks, per-test artifacts,
and a session-end check that every QEMU and GDB the harness started is gone."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness import procs
from harness.disk import DiskImage
from harness.errors import HarnessError, raise_terminated
from harness.machine import CALL_TIMEOUT, SNAPSHOT_MEMORY_MIB, Machine
from harness.paths import GDBINIT
from harness.qemu import FIRMWARE

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_ARTIFACT_DIRS = pytest.StashKey[list[Path]]()
_POOL = pytest.StashKey["SnapshotPool"]()
_MACHINES = pytest.StashKey[list[Machine]]()  # every machine a test used, for --piix3-keep-on-fail

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
        help="where per-test artifact directories go (default: under pytest's basetemp)",
    )
    group.addoption(
        "--piix3-keep-on-fail",
        action="store_true",
        default=False,
        help="when a test fails, keep its QEMU paused, print the command that attaches GDB (with the "
        "gdbinit) and wait for Enter before tearing down; only with a terminal, never when $CI is set",
    )


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI job cancelled, a `timeout` expiring) unwinds like Ctrl-C, so fixtures close
    # their machines; only where nobody else has claimed the signal.
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, raise_terminated)
    config.addinivalue_line("markers", "qemu: starts real QEMU and GDB (integration test)")
    config.addinivalue_line(
        "markers",
        "piix3_faults(faults): the `machine` fixture injects these disk errors, "
        "e.g. piix3_faults({0: [Fault('read', sector=500)]})",
    )
    config.addinivalue_line(
        "markers",
        "piix3_fresh: the `machine` fixture boots a fresh QEMU on a raw image instead of a snapshot",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    if report.when == "call" and report.failed and item.config.getoption("--piix3-keep-on-fail"):
        _keep_on_fail(item)
    dirs = item.stash.get(_ARTIFACT_DIRS, [])
    if report.failed and dirs:
        for d in dirs:  # JUnit XML (--junitxml) carries them as <property> elements
            if ("piix3_artifacts", str(d)) not in item.user_properties:
                item.user_properties.append(("piix3_artifacts", str(d)))
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
def _piix3_no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test: each QEMU and GDB started during it must be gone (a check, not a hope);
    the snapshot pool's machines live for the session and are not counted."""
    first = len(procs.STARTED_CHILDREN)
    yield
    pool = request.config.stash.get(_POOL, None)
    pooled = pool.pids() if pool is not None else set()
    # Only children not yet reaped: a reaped pid may already belong to a stranger.
    alive = [
        pid
        for pid in procs.STARTED_CHILDREN[first:]
        if pid in procs.LIVE_CHILDREN and procs.pid_alive(pid) and pid not in pooled
    ]
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


@pytest.fixture
def machine_factory(
    request: pytest.FixtureRequest, piix3_firmware: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MachineFactory]:
    """Start machines for this test: `machine_factory(disks=[...], **Machine kwargs)`.

    Each gets an artifact directory named after the test; they are closed after the test and
    their logs kept if it failed (or with --piix3-keep-artifacts), and named in the report.
    """
    made: list[Machine] = []
    base = _test_dir(request, tmp_path_factory)
    dirs = request.node.stash.setdefault(_ARTIFACT_DIRS, [])

    def make(disks: Sequence[DiskImage] | Mapping[int, DiskImage] | None = None, **kwargs: Any) -> Machine:
        out = base / f"machine{len(made)}"
        shutil.rmtree(out, ignore_errors=True)
        kwargs.setdefault("firmware", piix3_firmware)
        m = Machine(disks=disks, artifacts_dir=out, **kwargs)
        made.append(m)
        request.node.stash.setdefault(_MACHINES, []).append(m)
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


class SnapshotPool:
    """Per worker and firmware, one machine parked on a qcow2 disk with a VM snapshot taken at
    harness_ready; each test that may use it starts from that snapshot (RAM, CPU, devices and
    disk restored by loadvm) instead of booting."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.machines: dict[str, Machine] = {}

    def get(self, firmware: str) -> Machine:
        m = self.machines.get(firmware)
        if m is not None:
            try:
                m.restore_snapshot()
                m.clear_debug_state()  # loadvm leaves GDB's breakpoints alone
                m.call_timeout = CALL_TIMEOUT
                m.failed = False
                return m
            except HarnessError:  # a test broke it (killed QEMU, closed it...): build anew
                m.close(failed=True)
                del self.machines[firmware]
        self.root.mkdir(parents=True, exist_ok=True)
        disk = DiskImage.create(self.root / f"{firmware}.qcow2", size_mib=64, format="qcow2", overwrite=True)
        m = Machine(
            disks=[disk],
            firmware=firmware,
            memory_mib=SNAPSHOT_MEMORY_MIB,
            artifacts_dir=self.root / f"{firmware}-artifacts",
        )
        m.start()
        m.save_snapshot()
        self.machines[firmware] = m
        return m

    def pids(self) -> set[int]:
        return {p for m in self.machines.values() for p in m.pids}

    def close(self) -> None:
        for m in self.machines.values():
            m.close()
        self.machines.clear()


@pytest.fixture(scope="session")
def piix3_snapshot_pool(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SnapshotPool]:
    """The worker's SnapshotPool (closed at the end of the session)."""
    pool = SnapshotPool(tmp_path_factory.mktemp("snapshot-pool"))
    pytestconfig.stash[_POOL] = pool
    yield pool
    pool.close()
    del pytestconfig.stash[_POOL]


@pytest.fixture
def machine(
    request: pytest.FixtureRequest,
    machine_factory: MachineFactory,
    piix3_firmware: str,
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
    m = pool.get(piix3_firmware)
    request.node.stash.setdefault(_MACHINES, []).append(m)
    logs = m.artifacts
    marks = {f: f.stat().st_size for f in logs.iterdir() if f.is_file()} if logs else {}
    out = _test_dir(request, tmp_path_factory) / "pooled-machine"
    request.node.stash.setdefault(_ARTIFACT_DIRS, []).append(out)
    yield m
    if logs is not None and _failed(request.node):
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if any QEMU or GDB this process started is still alive."""
    alive = [pid for pid in procs.STARTED_CHILDREN if pid in procs.LIVE_CHILDREN and procs.pid_alive(pid)]
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


# --- --piix3-keep-on-fail: a failed test's QEMU stays paused for a human's GDB ----------------
def _interactive() -> bool:
    """A person can answer: stdin is a terminal and this is not CI."""
    if os.environ.get("CI"):
        return False
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _attach_command(m: Machine) -> str:
    """The command line that attaches GDB, with the gdbinit, to m's (paused) QEMU."""
    assert m.qemu is not None
    target = shlex.quote(f"target remote {m.qemu.paths.gdb_socket}")
    return f"gdb -q -x {shlex.quote(str(GDBINIT))} -ex {target} {shlex.quote(str(m.config.kernel))}"


def _keep_on_fail(item: pytest.Item) -> None:
    """Detach the harness's GDB from each of the failed test's machines (QEMU stays paused where
    the test left it), print how to attach, wait for Enter, then close them; teardown goes on."""
    machines = [m for m in item.stash.get(_MACHINES, []) if m.qemu is not None and m.gdb is not None]
    if not machines:
        return
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    try:
        if not _interactive():
            print(
                f"\npiix3: --piix3-keep-on-fail: {item.nodeid} failed; not pausing (no terminal, or $CI set)"
            )
            return
        lines = [f"\npiix3: {item.nodeid} failed; its QEMU is paused where the test left it."]
        for m in machines:
            try:
                assert m.qemu is not None and m.gdb is not None
                m.qemu.command("stop")
                m.gdb.command("-target-disconnect")  # QEMU's gdbstub takes one GDB at a time
            except HarnessError as exc:
                lines.append(f"  (could not hand over QEMU pid {m.qemu.pid if m.qemu else '?'}: {exc})")
                continue
            lines.append(f"  attach GDB:  {_attach_command(m)}")
            lines.append(f"  logs:        {m.artifacts}")
        lines.append("  Press Enter here to tear the machine(s) down and go on.")
        print("\n".join(lines), flush=True)
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input()
    finally:
        if capman is not None:  # back to how the report phase found it: output free, stdin captured
            capman.resume_global_capture()
            capman.suspend_global_capture(in_=False)
    for m in machines:  # the harness's GDB let go: the machine is of no further use
        m.close(failed=True)
