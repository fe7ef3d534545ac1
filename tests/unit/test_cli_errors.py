"""`piix3` with bad arguments: one line on stderr, exit status 2, and no machine started (issue 10 C).
Also `piix3 inspect` under the disk rules (issue 10 A)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness.bench.measure
from harness import cli
from harness.abi import SECTOR
from harness.disk import DiskImage

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not on PATH")


@pytest.fixture(autouse=True)
def no_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing here may start QEMU: a bad argument is refused before any machine exists."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a machine was started for a bad argument")

    monkeypatch.setattr(cli, "Machine", refuse)
    monkeypatch.setattr(cli, "QemuProcess", refuse)
    monkeypatch.setattr(harness.bench.measure, "run", refuse)
    old = signal.getsignal(signal.SIGTERM)  # main() installs its own SIGTERM handler
    yield
    signal.signal(signal.SIGTERM, old)


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Runs `piix3 argv`, asserts exit status 2 and one `piix3 <cmd>: ...` line; returns it."""
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"piix3 {argv[0]}: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def image(tmp_path: Path) -> DiskImage:
    return DiskImage.create(tmp_path / "disk.img", size_bytes=16 * SECTOR)


@pytest.fixture
def art(tmp_path: Path) -> str:
    return str(tmp_path / "artifacts")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.img"
    os.mkfifo(path)
    return path


# --- run --------------------------------------------------------------------------------------


def test_run_image_is_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path, art: str) -> None:
    line = usage_error(capsys, ["run", "--image", str(tmp_path), "--artifacts", art])
    assert "--image" in line and "directory" in line


@pytest.mark.timeout(20)
def test_run_image_is_a_fifo(capsys: pytest.CaptureFixture[str], fifo: Path, art: str) -> None:
    line = usage_error(capsys, ["run", "--image", str(fifo), "--artifacts", art])
    assert "--image" in line and "FIFO" in line


def test_run_image_is_a_symlink_loop(capsys: pytest.CaptureFixture[str], tmp_path: Path, art: str) -> None:
    loop = tmp_path / "loop.img"
    os.symlink(loop.name, loop)
    line = usage_error(capsys, ["run", "--image", str(loop), "--artifacts", art])
    assert "--image" in line and "symbolic links" in line


def test_run_image_under_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, art: str) -> None:
    (tmp_path / "file").write_bytes(b"x")
    line = usage_error(capsys, ["run", "--image", str(tmp_path / "file" / "d.img"), "--artifacts", art])
    assert "--image" in line and "not a directory" in line


def test_run_artifacts_is_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "logs").write_bytes(b"mine")
    new_image = tmp_path / "new.img"
    line = usage_error(capsys, ["run", "--image", str(new_image), "--artifacts", str(tmp_path / "logs")])
    assert "--artifacts" in line and "not a directory" in line
    assert not new_image.exists(), "nothing is created for a refused command"
    assert (tmp_path / "logs").read_bytes() == b"mine"


def test_run_artifacts_under_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: DiskImage
) -> None:
    (tmp_path / "logs").write_bytes(b"mine")
    line = usage_error(
        capsys, ["run", "--image", str(image.path), "--artifacts", str(tmp_path / "logs" / "sub")]
    )
    assert "--artifacts" in line


def test_run_empty_message_is_refused(capsys: pytest.CaptureFixture[str], image: DiskImage, art: str) -> None:
    before = image.path.read_bytes()
    line = usage_error(capsys, ["run", "--image", str(image.path), "--artifacts", art, "--message", ""])
    assert "--message" in line and "empty" in line
    assert image.path.read_bytes() == before


def test_run_help_says_what_an_empty_message_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--help"])
    assert e.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--message" in help_text and "empty" in help_text


def test_run_message_too_long(capsys: pytest.CaptureFixture[str], image: DiskImage, art: str) -> None:
    line = usage_error(
        capsys, ["run", "--image", str(image.path), "--artifacts", art, "--message", "x" * 70000]
    )
    assert "--message" in line


@pytest.mark.parametrize("lba", ["-1", "16", "15", "1e3", "x"])
def test_run_bad_lba(capsys: pytest.CaptureFixture[str], image: DiskImage, art: str, lba: str) -> None:
    """16 sectors; a 600-byte message needs 2, so LBA 15 does not fit either."""
    argv = ["run", "--image", str(image.path), "--artifacts", art, "--lba", lba, "--message", "x" * 600]
    line = usage_error(capsys, argv)
    assert "--lba" in line


@pytest.mark.parametrize("size", ["0", "-1", "1.5", str(2**40)])
def test_run_bad_size_mib(capsys: pytest.CaptureFixture[str], tmp_path: Path, art: str, size: str) -> None:
    new_image = tmp_path / "new.img"
    line = usage_error(capsys, ["run", "--image", str(new_image), "--artifacts", art, "--size-mib", size])
    assert "--size-mib" in line
    assert not new_image.exists()


@pytest.mark.timeout(20)
def test_run_image_fifo_from_a_real_process(tmp_path: Path, fifo: Path) -> None:
    """A real process, not just main(): returns promptly with status 2."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            "--image",
            str(fifo),
            "--artifacts",
            str(tmp_path / "a"),
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("piix3 run: ") and "FIFO" in done.stderr
    assert "Traceback" not in done.stderr


# --- inspect ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--count", "0"], "--count"),
        (["--count", "-3"], "--count"),
        (["--count", "many"], "--count"),
        (["--lba", "-1"], "--lba"),
        (["--lba", "16"], "--lba"),
        (["--lba", "10", "--count", "7"], "--count"),
    ],
)
def test_inspect_bad_range(
    capsys: pytest.CaptureFixture[str], image: DiskImage, args: list[str], named: str
) -> None:
    line = usage_error(capsys, ["inspect", "--image", str(image.path), *args])
    assert named in line


def test_inspect_image_missing_or_not_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "--image" in usage_error(capsys, ["inspect", "--image", str(tmp_path / "missing.img")])
    assert "--image" in usage_error(capsys, ["inspect", "--image", str(tmp_path)])
    assert not (tmp_path / "missing.img").exists(), "inspect creates nothing"


@pytest.mark.timeout(20)
def test_inspect_fifo(capsys: pytest.CaptureFixture[str], fifo: Path) -> None:
    assert "FIFO" in usage_error(capsys, ["inspect", "--image", str(fifo)])


def test_inspect_good_range(capsys: pytest.CaptureFixture[str], image: DiskImage) -> None:
    image.write_sectors(15, b"hello".ljust(SECTOR, b"\0"))
    assert cli.main(["inspect", "--image", str(image.path), "--lba", "15"]) == 0
    assert "68 65 6c 6c 6f" in capsys.readouterr().out


@needs_qemu_img
def test_inspect_refuses_a_backing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"SECRET".ljust(SECTOR, b"!") * 4)
    child = tmp_path / "child.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(child), "2048"],
        check=True,
        timeout=30,
    )
    assert cli.main(["inspect", "--image", str(child), "--lba", "0"]) == 1
    out, err = capsys.readouterr()
    assert "backing file" in err and err.startswith("piix3 inspect: ")
    assert "SECRET" not in out and "53 45 43 52" not in out


@needs_qemu_img
def test_inspect_shows_a_guest_written_qcow2_header_as_raw_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: DiskImage
) -> None:
    header = b"QFI\xfb\x00\x00\x00\x03" + (10).to_bytes(8, "big") + (9).to_bytes(4, "big")
    image.write_sectors(0, (header + b"/etc/shadow").ljust(SECTOR, b"\0"))
    assert cli.main(["inspect", "--image", str(image.path), "--lba", "0"]) == 0
    out = capsys.readouterr().out
    assert "raw" in out and "51 46 49 fb" in out


# --- bench ------------------------------------------------------------------------------------


@pytest.mark.parametrize("repeat", ["0", "-1", "two"])
def test_bench_bad_repeat(capsys: pytest.CaptureFixture[str], repeat: str) -> None:
    assert "--repeat" in usage_error(capsys, ["bench", "--repeat", repeat])


def test_bench_image_dir_not_writable(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--image-dir" in usage_error(capsys, ["bench", "--image-dir", "/proc"])


def test_bench_image_dir_not_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    assert "--image-dir" in usage_error(capsys, ["bench", "--image-dir", str(tmp_path / "file")])
    assert "--image-dir" in usage_error(capsys, ["bench", "--image-dir", str(tmp_path / "missing")])


def test_bench_json_target(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "--json" in usage_error(capsys, ["bench", "--json", str(tmp_path)])
    assert "--json" in usage_error(capsys, ["bench", "--json", str(tmp_path / "missing" / "b.json")])


# --- the other commands' images -------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("command", ["debug", "trace"])
def test_debug_and_trace_refuse_a_fifo(capsys: pytest.CaptureFixture[str], fifo: Path, command: str) -> None:
    argv = [command, "--image", str(fifo)] + (["identify"] if command == "trace" else [])
    assert "FIFO" in usage_error(capsys, argv)


def test_parse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, ["inspect", "--bogus"])
    assert "--bogus" in line and "--help" in line
