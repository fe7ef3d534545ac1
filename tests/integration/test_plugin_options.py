"""The plugin's machine options as a user meets them, each in an inner pytest session:
--piix3-kernel, --piix3-qemu, --piix3-qemu-args, --piix3-gdb (and PIIX3_KERNEL, PIIX3_QEMU,
PIIX3_QEMU_ARGS, PIIX3_GDB) reach every machine the fixtures make -- the snapshot pool's
and machine_factory's -- and a bad one stops the session before any test runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.paths import DEFAULT_KERNEL

pytestmark = pytest.mark.qemu
RUN_TIMEOUT = 120.0  # s, for one inner pytest run
FACTS = "PIIX3_TEST_FACTS"  # where the inner test writes what its machines were started with
UUID = "8b5d6a5e-0c9f-4e1a-9a35-3f1f2c3d4e5f"  # the inner fresh machine's own QEMU argument

INNER = f"""
import json
import os

from harness import DiskImage, Machine


def _facts(m: Machine) -> dict[str, object]:
    assert m.qemu is not None and m.gdb is not None
    return {{
        "argv": m.qemu.argv,
        "qemu_pid": m.qemu.pid,
        "kernel": str(m.config.kernel),
        "gdb": m.target.gdb_binary,
        "gdb_pid": m.gdb.pid,
        "cpus": len(m.qemu.command("query-cpus-fast")),
        "name": m.qemu.command("query-name").get("name"),
        "uuid": m.qemu.command("query-uuid").get("UUID"),
        "model": m.ata.identify(0).model,
        "transport": m.transport,
        "firmware": m.config.firmware,
    }}


def test_machines(machine, machine_factory, tmp_path):
    fresh = machine_factory(  # a test's own QEMU arguments, and the session's after them
        disks=[DiskImage.create(tmp_path / "d.img", size_mib=4)], extra_qemu_args=["-uuid", {UUID!r}]
    )
    with open(os.environ[{FACTS!r}], "w") as f:
        json.dump({{"pooled": _facts(machine), "fresh": _facts(fresh)}}, f)
"""


def _wrapper(path: Path, real: str, marker: Path) -> Path:
    """An executable that notes its pid and arguments in marker, then becomes `real`."""
    target = shutil.which(real)
    assert target is not None, f"{real} is not installed"
    path.write_text(f'#!/bin/sh\necho "$$ $*" >> "{marker}"\nexec "{target}" "$@"\n')
    path.chmod(0o755)
    return path


def _inner(
    tmp_path: Path, args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run INNER with args (and extra environment); the facts its two machines recorded."""
    (tmp_path / "test_inner.py").write_text(INNER)
    facts = tmp_path / "facts.json"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PIIX3_"))}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--rootdir",
            str(tmp_path),
            f"--basetemp={tmp_path / 'base'}",
            *args,
            str(tmp_path / "test_inner.py"),
        ],
        capture_output=True,
        text=True,
        env={**base, FACTS: str(facts), **(env or {})},
        timeout=RUN_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )
    found = json.loads(facts.read_text()) if facts.exists() else {}
    return done, found


def _passed(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def test_piix3_kernel_boots_every_machine_from_that_kernel(tmp_path: Path) -> None:
    """A copy of the kernel, given by option while $PIIX3_KERNEL names a file that does not
    exist: the option wins, and both machines boot the copy (the symbols GDB loaded are its)."""
    copy = tmp_path / "copied kernel.elf"
    shutil.copyfile(DEFAULT_KERNEL, copy)
    done, facts = _inner(tmp_path, [f"--piix3-kernel={copy}"], {"PIIX3_KERNEL": str(tmp_path / "none.elf")})
    _passed(done)
    for m in ("pooled", "fresh"):
        assert facts[m]["kernel"] == str(copy)
        argv = facts[m]["argv"]
        assert argv[argv.index("-kernel") + 1] == str(copy)
    missing = tmp_path / "missing.elf"
    done, _ = _inner(tmp_path, [f"--piix3-kernel={missing}"])
    assert done.returncode == 4 and f"--piix3-kernel={missing}" in done.stderr, done.stderr


def test_piix3_qemu_runs_every_machine_through_that_binary(tmp_path: Path) -> None:
    marker = tmp_path / "qemu-runs.txt"
    wrapper = _wrapper(tmp_path / "my-qemu", "qemu-system-i386", marker)
    done, facts = _inner(tmp_path, [f"--piix3-qemu={wrapper}"])
    _passed(done)
    runs = marker.read_text().splitlines()
    for m in ("pooled", "fresh"):
        assert facts[m]["argv"][0] == str(wrapper)
        assert any(line.startswith(f"{facts[m]['qemu_pid']} -M pc") for line in runs), runs
    assert len(runs) == 2, runs
    done, _ = _inner(tmp_path, ["--piix3-qemu=no-such-qemu-here"])
    assert done.returncode == 4 and "no-such-qemu-here: no such executable" in done.stderr, done.stderr


def test_piix3_qemu_args_are_split_like_a_shell_and_reach_every_machine(tmp_path: Path) -> None:
    """Two CPUs and a name with a space in it (shell quoting), as QEMU itself reports them."""
    done, facts = _inner(tmp_path, ["--piix3-qemu-args=-smp 2 -name 'piix3 inner'"])
    _passed(done)
    for m in ("pooled", "fresh"):
        assert facts[m]["cpus"] == 2 and facts[m]["name"] == "piix3 inner"
        assert facts[m]["argv"][-4:] == ["-smp", "2", "-name", "piix3 inner"]
        assert facts[m]["model"] == "QEMU HARDDISK"  # the driver works on the machine so made
    assert facts["fresh"]["uuid"] == UUID, "the test's own arguments are kept"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("-daemonize", "would leave the harness's process tree"),
        ("-gdb tcp::1234", "the harness owns the gdbstub"),
        ("-name 'unbalanced", "cannot split it as a shell would"),
    ],
)
def test_piix3_qemu_args_refused_before_any_test(tmp_path: Path, value: str, says: str) -> None:
    done, facts = _inner(tmp_path, [f"--piix3-qemu-args={value}"])
    assert done.returncode == 4 and says in done.stderr, done.stdout + done.stderr
    assert not facts, "no test ran"


@pytest.mark.parametrize("transport", ["gdb", "doorbell"])
def test_piix3_transport_reaches_every_machine(tmp_path: Path, transport: str) -> None:
    done, facts = _inner(tmp_path, [f"--piix3-transport={transport}"])
    _passed(done)
    assert facts["pooled"]["transport"] == facts["fresh"]["transport"] == transport


def test_piix3_transport_paired_runs_each_firmware_on_its_own(tmp_path: Path) -> None:
    done, facts = _inner(tmp_path, ["--piix3-firmware=both", "--piix3-transport=paired", "-rA"])
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
    assert "test_machines[seabios-doorbell]" in done.stdout and "test_machines[qboot-gdb]" in done.stdout
    assert facts["fresh"]["firmware"] == "qboot" and facts["fresh"]["transport"] == "gdb"  # the last run
    (tmp_path / "facts.json").unlink()
    done, facts = _inner(tmp_path, ["--piix3-transport=paired"])  # one firmware: nothing to pair
    assert done.returncode == 4 and "--piix3-firmware=both" in done.stderr, done.stdout + done.stderr
    assert not facts, "no test ran"


def test_piix3_gdb_attaches_every_machine_through_that_binary(tmp_path: Path) -> None:
    marker = tmp_path / "gdb-runs.txt"
    wrapper = _wrapper(tmp_path / "my-gdb", "gdb", marker)
    done, facts = _inner(tmp_path, [f"--piix3-gdb={wrapper}"])
    _passed(done)
    runs = marker.read_text().splitlines()
    for m in ("pooled", "fresh"):
        assert facts[m]["gdb"] == str(wrapper)
        assert any(line.startswith(f"{facts[m]['gdb_pid']} ") for line in runs), runs
    assert len(runs) == 2, runs


def test_environment_variables_stand_for_the_options(tmp_path: Path) -> None:
    """PIIX3_KERNEL, PIIX3_QEMU, PIIX3_QEMU_ARGS and PIIX3_GDB, no options."""
    copy = tmp_path / "env.elf"
    shutil.copyfile(DEFAULT_KERNEL, copy)
    qemu_marker, gdb_marker = tmp_path / "qemu-runs.txt", tmp_path / "gdb-runs.txt"
    env = {
        "PIIX3_KERNEL": str(copy),
        "PIIX3_QEMU": str(_wrapper(tmp_path / "env-qemu", "qemu-system-i386", qemu_marker)),
        "PIIX3_QEMU_ARGS": "-name from-env",
        "PIIX3_GDB": str(_wrapper(tmp_path / "env-gdb", "gdb", gdb_marker)),
    }
    done, facts = _inner(tmp_path, [], env)
    _passed(done)
    for m in ("pooled", "fresh"):
        assert facts[m]["kernel"] == str(copy) and facts[m]["name"] == "from-env"
        assert facts[m]["argv"][0] == env["PIIX3_QEMU"] and facts[m]["gdb"] == env["PIIX3_GDB"]
    assert len(qemu_marker.read_text().splitlines()) == 2
    assert len(gdb_marker.read_text().splitlines()) == 2
    done, _ = _inner(tmp_path, [], {"PIIX3_QEMU_ARGS": "-qmp unix:/tmp/x"})
    assert done.returncode == 4, done.stderr
    assert "$PIIX3_QEMU_ARGS" in done.stderr and "the harness owns QMP" in done.stderr
