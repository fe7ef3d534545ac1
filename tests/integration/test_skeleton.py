"""The first promise, end to end: identify, round trips, persistence, bad input, no leaks."""

from __future__ import annotations

import hashlib
import platform
import random
import subprocess
import sys
from pathlib import Path

import pytest

from harness import AtaCode, AtaError, ConfigError, DiskImage, Machine
from harness.procs import pid_alive
from harness.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

SECTOR = 512
CHILD_TIMEOUT = 120.0  # s, for a child Python that boots three machines
MODES = ["pio", "dma"]


def pattern(seed: int, count: int) -> bytes:
    """count sectors of bytes that differ per seed and per sector (never all zero)."""
    rng = random.Random(seed)
    return b"".join(
        i.to_bytes(4, "little") + seed.to_bytes(4, "little") + rng.randbytes(SECTOR - 8) for i in range(count)
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size_bytes", [16 << 20, (64 << 20) + 3 * SECTOR, 1 << 30])
def test_identify_reports_model_serial_and_exact_size(
    machine_factory: MachineFactory, tmp_path: Path, size_bytes: int
) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_bytes=size_bytes)
    m = machine_factory(disks=[disk])
    info = m.ata.identify(0)
    assert info.model == "QEMU HARDDISK"
    assert info.serial.strip() != ""
    assert info.sectors == size_bytes // SECTOR
    assert info.drive == 0


@pytest.mark.parametrize("mode", MODES)
def test_round_trips_at_first_middle_last_lba(
    machine_factory: MachineFactory, tmp_path: Path, mode: str
) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_mib=8)
    m = machine_factory(disks=[disk])
    last = disk.sectors
    expected = bytearray(disk.size)
    seed = 0
    for count in (1, 2, 255, 256):
        for lba in (0, last // 2 - count // 2, last - count):
            seed += 1
            data = pattern(seed, count)
            m.ata.write(0, lba, data, mode=mode)
            expected[lba * SECTOR : (lba + count) * SECTOR] = data
            got = m.ata.read(0, lba, count, mode=mode)
            assert got == data, f"{mode} round trip of {count} sector(s) at LBA {lba} differs"
    m.ata.flush(0)
    # Host side: the written sectors are there and every other byte is untouched.
    assert disk.path.read_bytes() == bytes(expected)


def test_sectors_outside_the_written_range_are_unchanged(
    machine_factory: MachineFactory, tmp_path: Path
) -> None:
    disk = DiskImage.create(tmp_path / "d.img", size_mib=4)
    background = pattern(999, disk.sectors)
    disk.write_sectors(0, background)
    m = machine_factory(disks=[disk])
    writes = [(1, 1), (100, 2), (3000, 256), (disk.sectors - 1, 1)]
    expected = bytearray(background)
    for n, (lba, count) in enumerate(writes):
        data = pattern(n, count)
        m.ata.write(0, lba, data)
        expected[lba * SECTOR : (lba + count) * SECTOR] = data
    m.ata.flush(0)
    image = disk.path.read_bytes()
    assert len(image) == len(expected)
    diff = [
        i // SECTOR for i in range(0, len(image), SECTOR) if image[i : i + SECTOR] != expected[i : i + SECTOR]
    ]
    assert diff == [], f"sectors differ from the expected image: {diff[:10]}"


@pytest.mark.parametrize("how", ["reset", "power_cycle", "crash"])
def test_data_survives_reboot(machine_factory: MachineFactory, disk: DiskImage, how: str) -> None:
    m = machine_factory(disks=[disk])
    data = pattern(len(how), 3)
    message = b"the first promise: " + how.encode()
    data = message + data[len(message) :]
    m.ata.write(0, 1234, data)
    if how != "crash":  # a crash gets no flush: the write must have reached the file already
        m.ata.flush(0)
    boots = m.boots
    pids = m.pids
    m.console.expect_exact("ready (init 0)")  # the first boot's, on the guest's console
    getattr(m, how)()
    if how == "reset":
        assert m.pids == pids, "a warm reset keeps the same QEMU"
    else:
        assert m.boots == boots + 1
        assert m.qemu is not None and m.qemu.pid not in pids
        assert not pid_alive(pids[0]), "the old QEMU must be gone"
    assert m.ata.read(0, 1234, 3) == data, f"guest read after {how}"
    assert m.ata.read(0, 1234, 3, mode="pio") == data
    assert disk.read_sectors(1234, 3) == data, f"host read after {how}"
    m.console.expect_exact("ready (init 0)", timeout=5)  # the reboot's: the console follows it


def test_bad_input_is_refused_with_typed_errors(machine_factory: MachineFactory, disk: DiskImage) -> None:
    m = machine_factory(disks=[disk])
    disk.write_sectors(0, pattern(7, 16))
    m.ata.flush(0)
    before = sha(disk.path)
    last = disk.sectors
    cases: list[tuple[str, AtaCode, object]] = [
        ("LBA past the end", AtaCode.RANGE, lambda: m.ata.read(0, last, 1)),
        ("LBA+count past the end", AtaCode.RANGE, lambda: m.ata.write(0, last - 1, bytes(2 * SECTOR))),
        ("far LBA, write", AtaCode.RANGE, lambda: m.ata.write(0, 1 << 40, bytes(SECTOR))),
        ("negative LBA", AtaCode.RANGE, lambda: m.ata.read(0, -1, 1)),
        ("count 0", AtaCode.INVAL, lambda: m.ata.read(0, 0, 0)),
        ("count above the LBA48 maximum", AtaCode.INVAL, lambda: m.ata.read(0, 0, 65537)),
        ("data not a multiple of 512", AtaCode.INVAL, lambda: m.ata.write(0, 0, b"x" * 700)),
        ("empty data", AtaCode.INVAL, lambda: m.ata.write(0, 0, b"")),
        ("no disk on drive 1", AtaCode.NODEV, lambda: m.ata.write(0 + 1, 0, bytes(SECTOR))),
        ("no disk on drive 3", AtaCode.NODEV, lambda: m.ata.read(3, 0, 1)),
        ("drive 4 does not exist", AtaCode.INVAL, lambda: m.ata.read(4, 0, 1)),
        ("unknown mode", AtaCode.INVAL, lambda: m.ata.read(0, 0, 1, mode="udma")),
    ]
    for name, code, action in cases:
        with pytest.raises(AtaError) as info:
            action()  # type: ignore[operator]
        assert info.value.code is code, f"{name}: got {info.value.code.name}, want {code.name}"
        assert code.name in str(info.value)
    # The driver checks its own arguments too, not only the Python side.
    xfer = m.symbol("xfer_buf")
    assert m.call("ata_read", 0, 0, 1, 0, 0) == AtaCode.INVAL, "NULL buffer"
    assert m.call("ata_read", 0, 0, 1, xfer + 1, 1) == AtaCode.INVAL, "odd DMA buffer"
    assert m.call("ata_read", 0, 0, 1 << 17, xfer, 0) == AtaCode.INVAL, "count > 65536"
    assert m.call("ata_write", 0, 0, 1, xfer, 2) == AtaCode.INVAL, "mode 2"
    assert m.call("ata_identify", 1, xfer) == AtaCode.NODEV
    m.ata.flush(0)
    assert sha(disk.path) == before, "a refused call changed the image"
    # And the machine still works afterwards.
    assert m.ata.read(0, 0, 16) == pattern(7, 16)


LEAK_CHECK = """
import os, sys
from pathlib import Path
from harness import DiskImage, Machine, procs
from harness.procs import pid_alive

tmp = Path(sys.argv[1])
disk = DiskImage(sys.argv[2])


def ours_alive(pids):
    alive = []
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] not in ("Z", "X"):
            alive.append(pid)
    return alive


with Machine(disks=[disk], artifacts_dir=tmp / "a") as m:
    first = list(m.pids)
    m.power_cycle()
    m.crash()
    all_pids = set(first) | set(m.pids)
    assert all(pid_alive(p) for p in m.pids)
assert all_pids and not any(pid_alive(p) for p in all_pids), all_pids
# A machine that fails to boot leaves nothing behind either.
bogus = tmp / "not-a-kernel"
bogus.write_bytes(os.urandom(4096))
try:
    with Machine(disks=[disk], kernel=bogus, artifacts_dir=tmp / "b"):
        raise SystemExit("a machine booted a random kernel")
except Exception as exc:
    assert "qemu.log" in str(exc), exc
assert len(procs.STARTED_CHILDREN) >= 6, "3 QEMUs, their GDB, and the failed boot's pair were recorded"
assert ours_alive(procs.STARTED_CHILDREN) == []
print("no process outlived its machine")
"""


def test_no_process_outlives_its_machine(disk: DiskImage, tmp_path: Path) -> None:
    """Run in a Python of its own: what it checks is every child of the process that made the
    machines, and a process of its own has no other children to confuse that with."""
    done = subprocess.run(
        [sys.executable, "-c", LEAK_CHECK, str(tmp_path), str(disk.path)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    assert "no process outlived its machine" in done.stdout


def test_piix3_run_twice_keeps_the_message_and_the_users_files(tmp_path: Path) -> None:
    """The main job end to end, as `make run` does it; --artifacts may be a user's directory."""
    image, logs = tmp_path / "run.img", tmp_path / "mine"
    logs.mkdir()
    (logs / "notes.txt").write_text("keep me")
    base = [sys.executable, "-m", "harness.cli", "run", "--image", str(image), "--artifacts", str(logs)]
    first = subprocess.run([*base, "--message", "first run"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "result: PASS" in first.stdout and "nothing written here yet" in first.stdout
    second = subprocess.run([*base, "--message", "second run"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "previous message: 'first run'" in second.stdout
    assert (logs / "notes.txt").read_text() == "keep me"
    assert "ready (init 0)" in (logs / "serial.log").read_text()
    assert DiskImage(image).read_sectors(2048, 1)[16:26] == b"second run"


def test_machine_options_are_checked(disk: DiskImage) -> None:
    with pytest.raises(ConfigError, match="memory_mib"):
        Machine(disks=[disk], memory_mib=32)
    with pytest.raises(ConfigError, match="data_path"):
        Machine(disks=[disk], data_path="carrier-pigeon")
    with pytest.raises(ConfigError, match="4 drive positions"):
        Machine(disks=[disk] * 5)


def test_the_doorbell_is_refused_on_a_host_with_weaker_store_order(
    disk: DiskImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its mailbox relies on x86's store order; elsewhere calls go through GDB by default."""
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(ConfigError, match="x86 host.*aarch64.*transport='gdb'"):
        Machine(disks=[disk], transport="doorbell")
    assert Machine(disks=[disk]).transport == "gdb"
