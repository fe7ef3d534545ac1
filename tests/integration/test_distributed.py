"""Beyond one machine: a few of the suite's tests through xdist's remote-worker mechanism, the
one an ssh host uses -- `pytest -d --tx popen//chdir=DIR1 --tx popen//chdir=DIR2
--rsyncdir=harness --rsyncdir=tests` -- with the kernel given by option, as it would be to a
host with no build of its own. Each gateway gets its own copy of the code (its workers import
it), and its images, run directories (sockets) and artifacts stay its own.

xdist 3.x still has --rsyncdir, deprecated (removed in 4.0): the run says so in a warning.
A relative path after a separate `--rsyncdir` (or a relative test path) makes xdist 3.8
stop with "not relative to an rsync root": the `--rsyncdir=DIR` form and absolute test
paths work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import DEFAULT_KERNEL, REPO_ROOT

pytestmark = pytest.mark.qemu
RUN_TIMEOUT = 240.0  # s, for the inner run (two workers start, each copies the code, boots and tests)
SUBSET = REPO_ROOT / "tests" / "integration" / "test_snapshot.py"
PICK = "not gdb_sees"  # four tests: two on the snapshot pool's machine, two fresh boots on raw images
GATEWAYS = ("gw0", "gw1")


def _chardev_path(cmdline: str, ident: str) -> Path:
    found = re.search(rf"-chardev \w+,id={ident},path=([^ ,]+)", cmdline)
    assert found, (ident, cmdline)
    return Path(found.group(1))


def _images(cmdline: str) -> list[Path]:
    """The disk images a QEMU command line opens (its -blockdev JSON)."""
    out = []
    for spec in re.findall(r"-blockdev (\{.*?\}) -device", cmdline):
        node = json.loads(spec)
        while "filename" not in node:
            node = node.get("file") or node.get("image")
        out.append(Path(node["filename"]))
    return out


def test_two_gateways_each_keep_their_own_images_sockets_and_artifacts(tmp_path: Path) -> None:
    dirs = [tmp_path / "host1", tmp_path / "host2"]
    for d in dirs:
        d.mkdir()
    kernel = tmp_path / "shipped" / "kernel.elf"  # where a deployment put it, not build/
    kernel.parent.mkdir()
    shutil.copyfile(DEFAULT_KERNEL, kernel)
    artifacts, base = tmp_path / "artifacts", tmp_path / "base"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-d",
            *[f"--tx=popen//chdir={d}" for d in dirs],
            "--rsyncdir=harness",
            "--rsyncdir=tests",
            f"--piix3-kernel={kernel}",
            "--piix3-keep-artifacts",
            f"--piix3-artifacts={artifacts}",
            f"--basetemp={base}",
            "-k",
            PICK,
            str(SUBSET),
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PIIX3_"))},
        timeout=RUN_TIMEOUT,
        cwd=REPO_ROOT,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "4 passed" in done.stdout, out[-4000:]
    assert "--rsyncdir command line argument and rsyncdirs config variable are deprecated" in out

    # each gateway got the code in its own directory
    for d in dirs:
        assert (d / "harness" / "pytest_plugin" / "options.py").is_file()
        assert (d / "tests" / "integration" / SUBSET.name).is_file()

    rundirs: dict[str, set[Path]] = {}
    for gw in GATEWAYS:
        own_temp = base / f"popen-{gw}"
        cmdlines = sorted((artifacts / gw).glob("*/*/qemu.cmdline"))
        assert len(cmdlines) == 2, f"{gw} ran two of the four tests: {cmdlines}"
        rundirs[gw] = set()
        for path in cmdlines:
            cmdline = path.read_text()
            assert f" -kernel {kernel} " in cmdline, "the kernel given by option, on every worker"
            run = _chardev_path(cmdline, "gdb0").parent  # the machine's private run directory
            assert _chardev_path(cmdline, "qmp0").parent == run
            assert _chardev_path(cmdline, "ser0").parent == run, "COM1's FIFOs, in the same run dir"
            assert f"mem-path={run}/ram" in cmdline
            rundirs[gw].add(run)
            images = _images(cmdline)
            assert images and all(own_temp in image.parents for image in images), (gw, images)
            if path.parent.name == "machine0":  # a fresh boot (a pooled test's share has none)
                assert "ready (init 0)" in (path.parent / "serial.log").read_text()
        assert {p.parent.name for p in cmdlines} == {"machine0", "pooled-machine"}
    assert not rundirs["gw0"] & rundirs["gw1"], "no run directory (socket) is shared"
