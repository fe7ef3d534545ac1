"""The console's buffer without QEMU: a pipe stands for the FIFO from QEMU's COM1. What
arrives is searched in order, text split anywhere (a UTF-8 character across two reads
included) still matches, and a console nobody reads keeps only the newest BUFFER_LIMIT bytes
while reading on: the guest is never held up."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import HarnessTimeout
from harness.console import BUFFER_LIMIT, Console


class _Target:
    """What Console needs of a Target when nothing connects it."""

    def __init__(self) -> None:
        self.boot_hooks: list[Callable[[], None]] = []
        self.halt_hooks: list[Callable[[], None]] = []
        self.qemu = None

    def artifact_files(self) -> list[Path]:
        return [Path("/nonexistent/serial.log")]


Fed = tuple[Console, Callable[[bytes], None]]


@pytest.fixture
def fed() -> Iterator[Fed]:
    """A console whose reader drains a pipe (as it does the FIFO from QEMU); the test writes."""
    target = _Target()
    console = Console(target)  # type: ignore[arg-type]
    assert console._open in target.boot_hooks and console._close in target.halt_hooks
    r, w = os.pipe()
    os.set_blocking(r, False)
    console._out = r  # as _open() leaves it
    reader = threading.Thread(target=console._read, args=(r, threading.Event()), daemon=True)
    reader.start()

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:  # blocking: waits for the reader when the pipe is full
            view = view[os.write(w, view) :]

    yield console, write
    os.close(w)
    reader.join(2.0)
    assert not reader.is_alive(), "the reader ends when the writer is gone"
    os.close(r)


def test_output_split_anywhere_is_matched_in_order(fed: Fed) -> None:
    console, qemu = fed
    text = "ata: drive 0 (primary master): QEMU HARDDISK\r\nµs ready (init 0)\r\n".encode()
    cut = text.index("µ".encode()) + 1  # inside the two bytes of µ
    for piece in (text[:5], text[5:cut], text[cut:]):
        qemu(piece)
    assert console.expect(r"drive (\d) \(primary master\)", timeout=2).group(1) == "0"
    assert console.expect_exact("µs ready", timeout=2).group(0) == "µs ready"
    assert console.before.startswith(": QEMU HARDDISK")
    with pytest.raises(HarnessTimeout, match=r"show 'drive 0' within 0.1 s; unmatched output \(11 chars\)"):
        console.expect_exact("drive 0", timeout=0.1)  # consumed: a match is not found twice


def test_an_unread_console_keeps_the_newest_output_and_reads_on(fed: Fed) -> None:
    console, qemu = fed
    chunk = b"x" * 65536
    sent = 0
    while sent < BUFFER_LIMIT + 3 * len(chunk):  # far more than the pipe holds
        qemu(chunk)
        sent += len(chunk)
    qemu(b"THE END\r\n")
    total = sent + len(b"THE END\r\n")
    deadline = time.monotonic() + 5.0
    while console.dropped < total - BUFFER_LIMIT and time.monotonic() < deadline:
        time.sleep(0.01)  # the reader takes all of it, with nobody reading the console
    console.expect_exact("THE END", timeout=5)
    assert console.dropped == total - BUFFER_LIMIT
    assert len(console.before) == BUFFER_LIMIT - len(b"THE END\r\n")


def test_clear_forgets_what_arrived(fed: Fed) -> None:
    console, qemu = fed
    qemu(b"old line\r\n")
    console.expect_exact("old", timeout=2)
    qemu(b"stale\r\n")
    console.clear()
    qemu(b"new line\r\n")
    console.expect_exact("new line", timeout=2)
    assert "stale" not in console.before
