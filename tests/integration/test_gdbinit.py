"""The gdbinit as a person meets it: `piix3 debug` and its commands typed at a real GDB prompt,
and `--piix3-keep-on-fail` handing a failed test's QEMU over to a GDB."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pexpect
import pytest

from harness import DiskImage, pytest_plugin
from harness.paths import REPO_ROOT

pytestmark = pytest.mark.qemu

PROMPT = r"\(gdb\) "
TIMEOUT = 30  # s, for any one answer at the prompt
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and bracketed-paste mode switches
PIIX3 = str(REPO_ROOT / ".venv" / "bin" / "piix3")


def _processes_using(path: Path) -> list[int]:
    """pids whose command line mentions path (a QEMU left running on our image)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


class Session:
    """A GDB prompt driven the way a person types at it."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child

    def run(self, command: str) -> str:
        self.child.sendline(command)
        self.child.expect(PROMPT)
        text = ANSI.sub("", self.child.before).replace("\r", "")
        return text.split("\n", 1)[1] if "\n" in text else ""  # drop the echoed command


def test_piix3_debug_session(tmp_path: Path) -> None:
    image = tmp_path / "debug.img"
    disk = DiskImage.create(image, size_mib=16)
    disk.write_sectors(5, b"sector five says hi".ljust(512, b"\0"))
    child = pexpect.spawn(
        PIIX3,
        ["debug", "--image", str(image)],
        cwd=str(REPO_ROOT),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(60, 250),
    )
    try:
        child.expect(PROMPT)
        assert "harness_ready" in child.before, "piix3-park ran to the park point"
        gdb = Session(child)

        helptext = gdb.run("piix3-help")
        for command in (
            "ata-status",
            "ata-regs",
            "ata-identify",
            "pci-ide",
            "break-port",
            "sector",
            "irq-state",
        ):
            assert command in helptext
        user = gdb.run("help user-defined")
        assert all(f"{c} -- " in user for c in ("ata-status", "ata-identify", "pci-ide", "break-port"))

        assert "status 0x50 [DSC|DRDY]  error 0x00 [-]" in gdb.run("ata-status")
        assert "secondary channel (cmd 0x170, ctrl 0x376): status 0x00" in gdb.run("ata-status 1")
        regs = gdb.run("ata-regs")
        assert re.search(r"0x03f6 primary Alt Status\s+0x50\s+DSC\|DRDY", regs), regs
        assert re.search(r"primary BM Status\s+0x20\s+DRV0-DMA", regs), regs
        assert "primary BM PRD" in regs

        ident = gdb.run("ata-identify 0")
        assert "drive 0: QEMU HARDDISK" in ident and f"{disk.sectors} sectors" in ident
        assert "NODEV" in gdb.run("ata-identify 1")

        pci = gdb.run("pci-ide")
        assert "8086:7010" in pci and re.search(r"command 0x0\w{3} \[IO\|[A-Z|]*MASTER", pci), pci
        assert re.search(r"BAR4 0x0000\w{4}: I/O 0x\w+\s+\(bus-master IDE", pci), pci

        irq = gdb.run("irq-state")
        assert "completion: poll (ata_completion = 0)" in irq, irq
        assert re.search(r"8259 slave\s+IMR 0x3f", irq), irq  # every slave line masked but 14, 15
        assert re.search(r"\n\s+14\s+no\s+no\s+no\s+0\s+0\s+0\s+0  IDE primary", irq), irq
        gdb.run("set var ata_completion = 1")
        gdb.run("call ata_flush(0)")  # irq completion: one interrupt taken on line 14
        gdb.run("call irq_mask(15)")
        irq = gdb.run("irq-state")
        assert re.search(r"\n\s+14\s+no\s+no\s+no\s+1\s+0\s+0\s+0  IDE primary", irq), irq
        assert re.search(r"\n\s+15\s+yes\s+no\s+no\s+0\s+0\s+0\s+0  IDE secondary", irq), irq
        gdb.run("call irq_unmask(15)")
        gdb.run("set var ata_completion = 0")

        dump = gdb.run("sector 0 5")
        assert "0x73\t0x65\t0x63\t0x74\t0x6f\t0x72" in dump, dump  # "sector"

        made = gdb.run("break-port 0x1f7 out 0xea")
        assert re.search(r"port breakpoint 1: 0x1f7 out value 0xea \(\d+ instruction breakpoints\)", made)
        stopped = gdb.run("call ata_flush(0)")
        assert "port breakpoint 1: out 0x01f7 <- 0xea" in stopped and "FLUSH CACHE EXT" in stopped, stopped
        assert "at send_cmd (ata.c:" in stopped
        assert "nondata" in gdb.run("bt")
        assert "deleted 1 port breakpoint(s); 0 instruction breakpoints remain" in gdb.run("delete-port")
        gdb.run("continue")  # the flush finishes; GDB stops where the call returns
        assert "status 0x50 [DSC|DRDY]" in gdb.run("ata-status")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert _processes_using(image) == [], "piix3 debug's QEMU is gone after quit"


INNER = """
from harness import Machine

def test_fails(machine: Machine) -> None:
    machine.ata.write(0, 1, b"x" * 512)
    assert machine.ata.read(0, 1, 1) == b"y" * 512
"""


def test_keep_on_fail_hands_the_paused_qemu_to_gdb(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--rootdir", str(tmp_path)]
    argv += ["--piix3-keep-on-fail", str(tmp_path / "test_inner.py")]
    child = pexpect.spawn(sys.executable, argv, cwd=str(tmp_path), env=env, encoding="utf-8", timeout=60)
    try:
        child.expect(r"attach GDB:\s+(gdb [^\r\n]+)")
        command = ANSI.sub("", child.match.group(1)).strip()
        child.expect("Press Enter")
        words = shlex.split(command)
        assert words[:3] == ["gdb", "-q", "-x"] and words[3].endswith("gdbinit")
        attached = subprocess.run(
            [
                words[0],
                "--batch",
                "-nx",
                *words[1:],
                "-ex",
                "info symbol $pc",
                "-ex",
                "ata-status",
                "-ex",
                "detach",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert "harness_ready in section .park" in attached.stdout, attached.stdout + attached.stderr
        assert "status 0x50 [DSC|DRDY]" in attached.stdout
        child.sendline("")
        child.expect(pexpect.EOF)
        tail = ANSI.sub("", child.before)
    finally:
        child.close(force=True)
    assert "1 failed" in tail, tail
    socket = re.search(r"target remote ([^']+)'", command)
    assert socket is not None and not Path(socket.group(1)).exists(), "the machine was torn down after Enter"


@pytest.mark.parametrize(("ci", "tty", "pauses"), [("", True, True), ("1", True, False), ("", False, False)])
def test_keep_on_fail_pauses_only_for_a_person(
    monkeypatch: pytest.MonkeyPatch, ci: str, tty: bool, pauses: bool
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: tty))
    assert pytest_plugin.interactive() is pauses
