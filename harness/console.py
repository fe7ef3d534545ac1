"""The guest's serial console (COM1) as a stream to expect on and send to: `m.console`.

QEMU's COM1 is a `pipe` chardev on two FIFOs in the machine's private run directory (ser.in
to the guest, ser.out from it) that also logs every byte the guest sends to serial.log
(`logfile=`, appended): the log stays complete whether or not anybody reads. QEMU opens the
FIFOs before the guest runs and a FIFO keeps what is written to it, so nothing the guest
prints is missed. At every boot, while QEMU is still paused, the console opens them; a reader
thread moves what arrives into a bounded buffer (a test that does not read cannot hold up the
guest's UART), and pexpect searches it:

    m.console.expect(r"drive (\\d) \\(primary master\\): QEMU HARDDISK", timeout=5)
    m.console.expect_exact("ready (init 0)")
    m.console.send("x")

The stream spans reboots (a power cycle's new QEMU is opened before it runs): expect() sees
what the guest printed on this machine, in order, from where the last match ended. clear()
forgets what has not been matched yet (the snapshot pool does it for each test).

Input: the guest never reads COM1 (guest/serial.c only transmits), so send() works at the
chardev level: the bytes reach the 16550's receive FIFO (LSR bit 0, Data Ready, is set and
RBR gives them; `m.call("harness_inb", 0x3FD)` shows it). QEMU takes what the UART's FIFO has
room for and leaves the rest in ser.in (64 KiB) until the guest reads; what is left there when
that QEMU goes is dropped with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pexpect
from pexpect.spawnbase import SpawnBase

from harness.checks import seconds
from harness.errors import HarnessError, HarnessTimeout, QemuError, UsageError

if TYPE_CHECKING:
    from harness.target import Target

EXPECT_TIMEOUT = 10.0  # s, expect()'s default
SEND_TIMEOUT = 5.0  # s, for the FIFO to QEMU to take what send() gives it
READER_JOIN_TIMEOUT = 2.0  # s, for the reader to finish once its QEMU is gone
POLL_SLICE = 0.05  # s, how often the reader looks up from an idle FIFO
CLEAR_LIMIT = 2.0  # s, at most, for clear() to let the reader take what is in the FIFO
BUFFER_LIMIT = 1 << 20  # unread bytes kept; older ones are dropped (serial.log keeps them all)
READ_SIZE = 65536
TAIL = 300  # characters of unmatched output quoted in a timeout


class _Stream(SpawnBase):  # type: ignore[misc]  # pexpect is untyped
    """pexpect's searching (expect, before/after/match) over the console's buffer."""

    def __init__(self, console: Console) -> None:
        super().__init__(timeout=EXPECT_TIMEOUT, maxread=READ_SIZE, encoding="utf-8", codec_errors="replace")
        self._console = console

    def read_nonblocking(self, size: int = 1, timeout: float | None = None) -> str:
        data = self._console._take(size, EXPECT_TIMEOUT if timeout is None else timeout)
        text: str = self._decoder.decode(data, final=False)
        self._log(text, "read")
        return text


Pattern = str | re.Pattern[str]


class Console:
    """The guest's COM1: `expect(pattern, timeout=...)` what it prints, `send(text)` it bytes.
    Made by the Machine; opened at every boot, closed when its QEMU goes."""

    def __init__(self, target: Target) -> None:
        self._t = target
        self._cond = threading.Condition()
        self._pending = bytearray()  # received, not yet handed to pexpect
        self._out: int | None = None  # the FIFO from the guest (read end)
        self._in: int | None = None  # the FIFO to the guest (write end)
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()  # the current reader's: end now
        self.dropped = 0  # bytes dropped unread because more than BUFFER_LIMIT piled up
        self.spawn = _Stream(self)
        target.boot_hooks.append(self._open)
        target.halt_hooks.append(self._close)

    # --- the FIFOs, opened for each QEMU -----------------------------------------------------
    def _open(self) -> None:
        """A new QEMU is up and paused (it holds both FIFOs open): open our ends, start reading."""
        qemu = self._t.qemu
        fifos = qemu.paths.serial_fifos() if qemu is not None else None
        if fifos is None:
            return  # a QEMU with a file chardev (a hand-made QemuPaths) has no console
        to_guest, from_guest = fifos
        try:
            self._out = os.open(from_guest, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._in = os.open(to_guest, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self._close()
            raise QemuError(
                f"cannot open the guest's serial console {exc.filename}: {exc.strerror}",
                artifacts=self._t.artifact_files(),
            ) from None
        self._stop = threading.Event()
        self._reader = threading.Thread(
            target=self._read, args=(self._out, self._stop), name="piix3-console", daemon=True
        )
        self._reader.start()

    def _read(self, fd: int, stop: threading.Event) -> None:
        """The reader thread: everything the guest sends, into the buffer, until its QEMU (the
        FIFO's only writer) is gone, or stop is set."""
        while not stop.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], POLL_SLICE)
            except (OSError, ValueError):  # closed under us
                return
            if not ready:
                continue
            with self._cond:  # read and kept in one step: clear() sees none of it half done
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return  # QEMU is gone
                self._pending += data
                over = len(self._pending) - BUFFER_LIMIT
                if over > 0:
                    del self._pending[:over]
                    self.dropped += over
                self._cond.notify_all()

    def _close(self) -> None:
        """Its QEMU has gone: the reader takes the last bytes and meets the end of the FIFO."""
        reader, out, to_guest = self._reader, self._out, self._in
        self._reader = self._out = self._in = None
        if reader is not None:
            reader.join(READER_JOIN_TIMEOUT)
            if reader.is_alive():  # still a writer (cannot be: QEMU is reaped first): stop it
                self._stop.set()
                reader.join(READER_JOIN_TIMEOUT)
        if to_guest is not None:
            os.close(to_guest)
        if out is not None and (reader is None or not reader.is_alive()):
            os.close(out)  # never under a reader: the number could be another file's by its next read

    @property
    def connected(self) -> bool:
        """Open on a running QEMU."""
        return self._out is not None

    # --- what pexpect reads --------------------------------------------------------------------
    def _take(self, size: int, timeout: float) -> bytes:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise pexpect.TIMEOUT("no console output in time")
                self._cond.wait(left)
            data = bytes(self._pending[:size])
            del self._pending[:size]
            return data

    # --- the API -------------------------------------------------------------------------------
    def expect(self, pattern: Pattern | Sequence[Pattern], timeout: float = EXPECT_TIMEOUT) -> re.Match[str]:
        """Wait until the guest's output (from where the last match ended) matches `pattern`, a
        regular expression (str or compiled) or a list of them (the earliest match wins); the
        match, its text consumed. HarnessTimeout, quoting the unmatched output, after timeout."""
        given: list[object] = list(pattern) if isinstance(pattern, list | tuple) else [pattern]
        if not given:
            raise UsageError("expect: give a pattern")
        compiled: list[re.Pattern[str]] = []
        for p in given:
            if isinstance(p, str):
                compiled.append(re.compile(p))
            elif isinstance(p, re.Pattern) and isinstance(p.pattern, str):
                compiled.append(p)
            else:
                raise UsageError(f"expect: {p!r:.60} is not a str or a compiled str regular expression")
        return self._expect(compiled, timeout, " or ".join(repr(p.pattern) for p in compiled))

    def expect_exact(self, text: str, timeout: float = EXPECT_TIMEOUT) -> re.Match[str]:
        """expect() for a literal string."""
        if not isinstance(text, str) or not text:
            raise UsageError(f"expect_exact: {text!r:.60} is not a non-empty str")
        return self._expect([re.compile(re.escape(text))], timeout, repr(text))

    def _expect(self, patterns: list[re.Pattern[str]], timeout: float, what: str) -> re.Match[str]:
        limit = seconds("timeout", timeout, UsageError)
        try:
            self.spawn.expect(patterns, timeout=limit)
        except pexpect.TIMEOUT:
            seen = str(self.spawn.buffer)
            raise HarnessTimeout(
                f"the console did not show {what} within {limit:g} s; unmatched output "
                f"({len(seen)} chars) ends {seen[-TAIL:]!r}",
                artifacts=self._t.artifact_files()[:1],
            ) from None
        match = self.spawn.match
        assert isinstance(match, re.Match)
        return match

    @property
    def before(self) -> str:
        """The output between the previous match and the last one."""
        return str(self.spawn.before or "")

    def send(self, data: str | bytes) -> int:
        """Send bytes (a str as UTF-8) to the guest's COM1; the number sent. The guest does not
        read input: they reach the UART's receive FIFO (see the module's doc)."""
        if isinstance(data, str):
            payload = data.encode()
        elif isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
        else:
            raise UsageError(f"send: {data!r:.60} is not str or bytes")
        self._t.live()
        fd = self._in
        if fd is None:
            raise HarnessError("the console is not open (this QEMU has no console FIFOs)")
        view = memoryview(payload)
        deadline = time.monotonic() + SEND_TIMEOUT
        try:
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessTimeout(
                        f"the console took {len(payload) - len(view)} of {len(payload)} bytes within "
                        f"{SEND_TIMEOUT:g} s (the guest does not read COM1: its FIFO is full)",
                        artifacts=self._t.artifact_files()[:1],
                    )
                if select.select([], [fd], [], left)[1]:
                    with contextlib.suppress(BlockingIOError):
                        view = view[os.write(fd, view) :]
        except OSError as exc:
            raise QemuError(
                f"sending to the console failed: {exc.strerror or exc}", artifacts=self._t.artifact_files()
            ) from None
        return len(payload)

    def clear(self) -> None:
        """Forget the output not matched yet: what has arrived, and what is in the FIFO now
        (the reader is given a moment to take it)."""
        fd, reader = self._out, self._reader
        deadline = time.monotonic() + CLEAR_LIMIT
        while True:
            with self._cond:
                try:  # bytes in the FIFO, and a reader alive to take them
                    waiting = (
                        fd is not None
                        and (reader is None or reader.is_alive())
                        and bool(select.select([fd], [], [], 0)[0])
                    )
                except (OSError, ValueError):
                    waiting = False
                if not waiting or time.monotonic() > deadline:
                    self._pending.clear()
                    break
            time.sleep(POLL_SLICE / 50)  # the reader takes it
        self.spawn = _Stream(self)
