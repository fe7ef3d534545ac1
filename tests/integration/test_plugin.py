"""The pytest plugin as a user meets it: a failing test keeps and names its artifacts (in the
terminal and in JUnit XML), a passing one leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu
RUN_TIMEOUT = 120.0  # s, for the inner pytest run

INNER = """
from harness import Machine

def test_passes(machine: Machine, disk: object) -> None:
    assert machine.ata.identify(0).model == "QEMU HARDDISK"

def test_fails(machine: Machine, disk: object) -> None:
    machine.ata.write(0, 1, b"x" * 512)
    assert machine.ata.read(0, 1, 1) == b"y" * 512

def test_pooled_passes(machine: Machine) -> None:
    machine.ata.flush(0)

def test_pooled_fails(machine: Machine) -> None:
    machine.evaluate_int("harness_inb(0x3f6)")
    assert machine.ata.read(0, 2, 1) == b"z" * 512
"""


def test_failing_test_keeps_and_names_its_artifacts(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    artifacts = tmp_path / "artifacts"
    junit = tmp_path / "junit.xml"
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
            f"--piix3-artifacts={artifacts}",
            f"--junitxml={junit}",
            str(tmp_path / "test_inner.py"),
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
        timeout=RUN_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 failed, 2 passed" in done.stdout
    root = artifacts / "main"
    kept = next(root.glob("test_fails-*")) / "machine0"
    assert f"{kept}: serial.log qemu.log gdb-mi.log" in done.stdout  # named in the failure report
    assert "ready (init 0)" in (kept / "serial.log").read_text()
    assert "-exec-continue" in (kept / "gdb-mi.log").read_text()
    assert (kept / "qemu.cmdline").read_text().startswith("qemu-system-i386 ")
    assert not list(root.glob("test_passes-*")), "a passing test's artifacts are removed"
    assert not list(root.glob("test_pooled_passes-*"))
    pooled = next(root.glob("test_pooled_fails-*")) / "pooled-machine"
    assert str(pooled) in done.stdout
    mi = (pooled / "gdb-mi.log").read_text()
    assert "harness_inb(0x3f6)" in mi, "the pooled test's own MI lines are in its share"
    assert "-break-insert harness_ready" not in mi, "not the pool's boot"
    assert (pooled / "qemu.cmdline").read_text().startswith("qemu-system-i386 "), "written once: copied whole"
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_fails"].iter("property")}
    assert props.get("piix3_artifacts") == str(kept)
