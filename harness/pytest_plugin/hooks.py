"""The plugin's hooks: options, markers, reports that name each failed test's logs and
waveforms, the firmware parametrization, a leak check after every test and at the end, and
--piix3-keep-on-fail (a failed test's QEMU left paused for a person's GDB)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Generator, Iterator

import pytest

from harness import procs
from harness.errors import HarnessError, raise_terminated
from harness.machine import Machine
from harness.paths import GDBINIT
from harness.pytest_plugin import options, protocol, state, waveforms
from harness.pytest_plugin.pool import POOL
from harness.qemu import FIRMWARE
from harness.transport import TRANSPORTS


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("piix3", "piix3-harness")
    group.addoption(
        "--piix3-protocol",
        choices=["on", "off"],
        default="on",
        help="check every test's IDE/bus-master accesses against the ATA and PIIX3 protocol rules, "
        "from QEMU's device trace (default on; off for one test: @pytest.mark.piix3_protocol(False))",
    )
    group.addoption(
        "--piix3-firmware",
        choices=[*sorted(FIRMWARE), "both"],
        default=None,
        help="firmware for the fixtures' machines; both: run each such test under each "
        "(default: seabios, or $PIIX3_FIRMWARE)",
    )
    group.addoption(
        "--piix3-transport",
        choices=[*TRANSPORTS, "both", "paired"],
        default=None,
        help="how the fixtures' machines carry calls; both: run each such test on each; paired "
        "(with --piix3-firmware=both): seabios with doorbell, qboot with gdb, so each test runs "
        "on each transport and each firmware once (default: doorbell, or $PIIX3_TRANSPORT)",
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
    options.add(group)


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI job cancelled, a `timeout` expiring) unwinds like Ctrl-C, so fixtures close
    # their machines; only where nobody else has claimed the signal.
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, raise_terminated)
    options.configure(config)  # --piix3-kernel/-qemu/-qemu-args/-gdb checked before any test
    transport_choice(config)  # --piix3-transport (paired needs both firmwares) too
    config.addinivalue_line("markers", "qemu: starts real QEMU and GDB (integration test)")
    config.addinivalue_line(
        "markers",
        "piix3_protocol(enabled): piix3_protocol(False) turns the protocol checker off for a test "
        "that misbehaves on purpose",
    )
    config.addinivalue_line(
        "markers",
        "piix3_faults(faults): the `machine` fixture injects these disk errors, "
        "e.g. piix3_faults({0: [Fault('read', sector=500)]})",
    )
    config.addinivalue_line(
        "markers",
        "piix3_fresh: the `machine` fixture boots a fresh QEMU on a raw image instead of a snapshot",
    )
    config.addinivalue_line(
        "markers",
        "piix3_completion(mode): the fixtures' machines use this completion ('poll' or 'irq') "
        "whatever --piix3-completion says (a test of one mode's exact port sequence)",
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    # test modules are imported by now; one may have set SIGPIPE to kill the process (vcdvcd
    # does), which turned a dead GDB's broken pipe into a worker that vanished without a word
    procs.ignore_sigpipe()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After the test body: the protocol check of every machine it used (see protocol.py)."""
    try:
        result = yield
    except BaseException:
        protocol.discard(item)
        raise
    reports = protocol.check(item)
    if reports:
        pytest.fail("\n\n".join(reports), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(state.REPORTS, {})[report.when] = report
    if report.when == "call" and report.failed and item.config.getoption("--piix3-keep-on-fail"):
        _keep_on_fail(item)
    if report.failed:
        waveforms.on_failure(item, report)
    dirs = item.stash.get(state.ARTIFACT_DIRS, [])
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


@pytest.fixture(autouse=True)
def _piix3_no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test: each QEMU and GDB started during it must be gone (a check, not a hope);
    the snapshot pool's machines live for the session and are not counted."""
    first = len(procs.STARTED_CHILDREN)
    yield
    pool = request.config.stash.get(POOL, None)
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


def firmware_choice(config: pytest.Config) -> str:
    chosen = config.getoption("--piix3-firmware") or os.environ.get("PIIX3_FIRMWARE", "seabios")
    if chosen != "both" and chosen not in FIRMWARE:
        raise pytest.UsageError(f"PIIX3_FIRMWARE={chosen!r}: use one of {', '.join(FIRMWARE)} or both")
    return str(chosen)


def transport_choice(config: pytest.Config) -> str:
    chosen = config.getoption("--piix3-transport") or os.environ.get("PIIX3_TRANSPORT", "doorbell")
    if chosen not in (*TRANSPORTS, "both", "paired"):
        raise pytest.UsageError(
            f"PIIX3_TRANSPORT={chosen!r}: use one of {', '.join(TRANSPORTS)}, both or paired"
        )
    if chosen == "paired" and firmware_choice(config) != "both":
        raise pytest.UsageError(
            "--piix3-transport=paired pairs transports with firmwares: add --piix3-firmware=both"
        )
    return str(chosen)


# --piix3-transport=paired: each firmware with one transport (the default pair first)
PAIRED = (("seabios", "doorbell"), ("qboot", "gdb"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """With --piix3-firmware both, every test that boots machines runs under each firmware;
    with --piix3-transport both, on each transport; paired, each firmware on one transport."""
    names = metafunc.fixturenames
    firmware = "piix3_firmware" in names and firmware_choice(metafunc.config) == "both"
    transport = "piix3_transport" in names and transport_choice(metafunc.config) in ("both", "paired")
    if firmware and transport and transport_choice(metafunc.config) == "paired":
        metafunc.parametrize(
            ("piix3_firmware", "piix3_transport"), PAIRED, ids=[f"{f}-{t}" for f, t in PAIRED]
        )
        return
    if firmware:
        metafunc.parametrize("piix3_firmware", sorted(FIRMWARE))
    if transport:
        metafunc.parametrize("piix3_transport", TRANSPORTS, scope="module")  # module fixtures boot on it


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
def interactive() -> bool:
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
    gdb = shlex.quote(m.target.gdb_binary)
    return f"{gdb} -q -x {shlex.quote(str(GDBINIT))} -ex {target} {shlex.quote(str(m.config.kernel))}"


def _keep_on_fail(item: pytest.Item) -> None:
    """Detach the harness's GDB from each of the failed test's machines (QEMU stays paused where
    the test left it), print how to attach, wait for Enter, then close them; teardown goes on."""
    machines = [m for m in item.stash.get(state.MACHINES, []) if m.qemu is not None and m.gdb is not None]
    if not machines:
        return
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    try:
        if not interactive():
            print(
                f"\npiix3: --piix3-keep-on-fail: {item.nodeid} failed; not pausing (no terminal, or $CI set)"
            )
            return
        lines = [f"\npiix3: {item.nodeid} failed; its QEMU is paused where the test left it."]
        for m in machines:
            try:
                assert m.qemu is not None and m.gdb is not None
                m.target.settle()  # a guest in its doorbell loop parks first, as GDB expects
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
