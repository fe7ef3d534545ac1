"""A GDB/MI session: commands matched to replies by token, every wait bounded.

pygdbmi parses the records; reading and matching are ours (pygdbmi's own reader waits
0.2 s for "more output" on every command).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pygdbmi import gdbmiparser

from harness import artifacts, procs
from harness.errors import GdbError, HarnessError, HarnessTimeout

log = logging.getLogger(__name__)

GDB_START_TIMEOUT = 10.0  # s, for GDB to load the kernel's symbols and answer
MI_TIMEOUT = 5.0  # s, for a plain MI command
GDB_EXIT_TIMEOUT = 3.0  # s, for GDB to exit after -gdb-exit
POLL_SLICE = 0.05  # s, how often a long wait also checks the `alive` callback
MEMORY_CHUNK = 64 * 1024  # bytes per -data-read/write-memory-bytes: ~20 ms each at GDB's ~4 MB/s
SHOWN_COMMAND = 120  # characters of a command quoted in an error message


def shown(cmd: str) -> str:
    """A command as quoted in messages: bounded (a memory write carries its data as hex)."""
    if len(cmd) <= SHOWN_COMMAND:
        return repr(cmd)
    return f"{cmd[:SHOWN_COMMAND]!r}... ({len(cmd)} characters)"


@dataclass(frozen=True)
class MiRecord:
    """One parsed MI output record."""

    kind: str  # result, notify, console, log, target, output
    message: str | None  # done/error/running/connected for results; stopped/running/... for notify
    payload: Any
    token: int | None

    @classmethod
    def parse(cls, line: str) -> MiRecord:
        r = gdbmiparser.parse_response(line)
        return cls(kind=r["type"], message=r.get("message"), payload=r.get("payload"), token=r.get("token"))


@dataclass
class MiResult:
    """The result record answering one command, with the stream output that preceded it."""

    message: str
    payload: dict[str, Any]
    console: list[str] = field(default_factory=list)


class GdbMi:
    """One GDB process speaking MI3 over pipes."""

    def __init__(
        self,
        gdb: str,
        kernel: Path,
        log_path: Path,
        cmdline_path: Path | None = None,
        artifacts: Sequence[Path] = (),
    ) -> None:
        self.argv = [gdb, "--nx", "--quiet", "--interpreter=mi3", str(kernel)]
        self.log_path = log_path
        self.cmdline_path = cmdline_path
        self.artifacts = tuple(artifacts) or (log_path,)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None
        self._buf = b""
        self._token = 0
        self._async: collections.deque[MiRecord] = collections.deque()
        self._lines: collections.deque[str] = collections.deque()  # read, not yet parsed
        self._t0 = time.monotonic()
        self._killed = ""  # why the harness killed GDB, once it has
        # called before every command: a target whose guest runs on the doorbell stops it first
        # (GDB refuses most commands while the target runs)
        self.before_command: Callable[[], None] | None = None

    # --- lifecycle -------------------------------------------------------------------
    def spawn(self) -> None:
        """Spawn GDB without waiting: it loads symbols while QEMU starts."""
        self._log = artifacts.open_text_log(self.log_path)  # lives as long as GDB
        if self.cmdline_path is not None:
            artifacts.write_text(self.cmdline_path, " ".join(self.argv) + "\n")
        try:
            self.proc = procs.spawn(
                self.argv, name="gdb", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except FileNotFoundError:
            raise GdbError(f"{self.argv[0]} not found; run `make deps` (package gdb)") from None
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise GdbError(f"cannot run GDB {self.argv[0]!r}: {why}; pass gdb= a GDB binary") from None
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        assert self.proc.stdin is not None
        os.set_blocking(self.proc.stdin.fileno(), False)

    def wait_ready(self) -> None:
        """A tokened no-op answered proves GDB has loaded the kernel and listens."""
        self.command("-gdb-version", timeout=GDB_START_TIMEOUT)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """GDB has not exited: one waitid that reaps nothing (asked before every doorbell call)."""
        proc = self.proc
        return proc is not None and proc.returncode is None and not procs.exited(proc.pid)

    def close(self) -> None:
        """Ask GDB to exit, wait a bounded time, then kill it. Safe to call twice."""
        proc = self.proc
        if proc is not None:
            if procs.poll(proc) is None:
                with contextlib.suppress(OSError, ValueError, HarnessError):
                    self._send("-gdb-exit", timeout=GDB_EXIT_TIMEOUT)
            procs.reap(proc, GDB_EXIT_TIMEOUT)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        if self.proc is not None:
            procs.kill(self.proc)

    def interrupt(self) -> None:
        """SIGINT to GDB: stops the target, and aborts an inferior call (unwindonsignal)."""
        if self.proc is not None and procs.poll(self.proc) is None:
            os.kill(self.proc.pid, signal.SIGINT)

    # --- I/O ---------------------------------------------------------------------------
    def _note(self, direction: str, text: str) -> None:
        if self._log is not None:
            self._log.write(f"{time.monotonic() - self._t0:10.6f} {direction} {text}\n")

    def _send(self, line: str, timeout: float = MI_TIMEOUT) -> None:
        """Write one command line, bounded: a GDB that stops reading cannot hang us. What GDB
        prints meanwhile is buffered, so neither side can block on a full pipe."""
        if self.proc is None or self.proc.stdin is None or self.proc.stdout is None:
            raise GdbError("GDB is not running", artifacts=self.artifacts)
        if self._killed:
            raise GdbError(
                f"GDB was killed ({self._killed}); power_cycle() or close the machine",
                artifacts=self.artifacts,
            )
        self._note(">>", line)
        data = memoryview(line.encode() + b"\n")
        out_fd, in_fd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        deadline = time.monotonic() + timeout
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # half a command is in GDB's input now: nothing after it would be understood
                self.kill()
                self._killed = f"it took no input for {timeout:g} s"
                raise HarnessTimeout(
                    f"GDB took no input for {timeout:g} s ({shown(line)}); GDB was killed",
                    artifacts=self.artifacts,
                )
            readable, writable, _ = select.select([out_fd], [in_fd], [], remaining)
            if readable:
                with contextlib.suppress(BlockingIOError):
                    self._buf += os.read(out_fd, 1 << 20)
            if writable:
                try:
                    data = data[os.write(in_fd, data) :]
                except BlockingIOError:
                    continue
                except OSError:  # EPIPE: GDB is gone
                    raise GdbError(
                        f"GDB died (exit status {procs.poll(self.proc)}) before taking {shown(line)}",
                        artifacts=self.artifacts,
                    ) from None

    def _read_lines(self, timeout: float) -> list[str]:
        """Whatever complete lines arrive within timeout (possibly none)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if b"\n" in self._buf:  # lines read while sending come first, without waiting
            timeout = 0.0
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        if ready:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:  # a spurious wake-up: no data is not end of file
                return []
            if not chunk:
                try:
                    code: int | None = self.proc.wait(timeout=GDB_EXIT_TIMEOUT)
                    procs.LIVE_CHILDREN.pop(self.proc.pid, None)
                except subprocess.TimeoutExpired:
                    code = None
                raise GdbError(f"GDB closed its output (exit status {code})", artifacts=self.artifacts)
            self._buf += chunk
        if b"\n" not in self._buf:
            return []
        *lines, self._buf = self._buf.split(b"\n")
        out = []
        for raw in lines:
            text = raw.decode(errors="replace").rstrip("\r")
            if text and text != "(gdb) ":
                self._note("<<", text)
                out.append(text)
        return out

    def _pump(
        self,
        until: Callable[[MiRecord], bool],
        timeout: float,
        what: str,
        alive: Callable[[], None] | None = None,
    ) -> tuple[MiRecord, list[str]]:
        """Read records until `until` accepts one; others are queued (async) or collected."""
        deadline = time.monotonic() + timeout
        console: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessTimeout(f"GDB gave no {what} within {timeout:g} s", artifacts=self.artifacts)
            if not self._lines:
                self._lines.extend(self._read_lines(min(remaining, POLL_SLICE) if alive else remaining))
            found = self._take(until, console)
            if found is not None:
                return found, console
            if alive is not None:
                alive()

    def _take(self, until: Callable[[MiRecord], bool], console: list[str]) -> MiRecord | None:
        """Parse the lines read so far up to the first record `until` accepts (the lines after
        it stay queued for the next reader); others are queued (async) or collected."""
        while self._lines:
            rec = MiRecord.parse(self._lines.popleft())
            if until(rec):
                return rec
            if rec.kind in ("console", "log", "target") and isinstance(rec.payload, str):
                console.append(rec.payload)
            elif rec.kind == "notify" or (rec.kind == "result" and rec.token is None):
                self._async.append(rec)
        return None

    def poll_async(self, match: Callable[[MiRecord], bool]) -> MiRecord | None:
        """An async record match accepts that has already arrived, without waiting (None if
        none has); GdbError if GDB has closed its output."""
        for rec in self._async:
            if match(rec):
                self._async.remove(rec)
                return rec
        if not self._lines:
            self._lines.extend(self._read_lines(0.0))
        return self._take(match, [])

    def command(
        self,
        cmd: str,
        timeout: float = MI_TIMEOUT,
        alive: Callable[[], None] | None = None,
        interrupt_on_timeout: bool = False,
    ) -> MiResult:
        """Send one MI (or CLI) command and wait for its own result record.

        With interrupt_on_timeout, a command still running at the deadline (a guest call that
        never returns) is interrupted with SIGINT; GDB unwinds the call and we raise HarnessTimeout.
        """
        if self.before_command is not None:
            self.before_command()
        self._token += 1
        token = self._token
        self._send(f"{token}{cmd}", timeout)

        def mine(r: MiRecord) -> bool:
            return r.kind == "result" and r.token == token

        try:
            rec, console = self._pump(mine, timeout, f"answer to {shown(cmd)}", alive)
        except KeyboardInterrupt:
            if interrupt_on_timeout:  # a guest call in flight: unwind it before passing Ctrl-C on
                with procs.signals_deferred(), contextlib.suppress(HarnessError):
                    self.interrupt()
                    self._pump(mine, MI_TIMEOUT, f"answer to {shown(cmd)} after SIGINT", alive)
            raise
        except HarnessTimeout:
            if not interrupt_on_timeout:
                raise
            self.interrupt()
            try:
                rec, _ = self._pump(mine, MI_TIMEOUT, f"answer to {shown(cmd)} after SIGINT", alive)
                said = rec.payload.get("msg", rec.message) if isinstance(rec.payload, dict) else rec.message
            except HarnessTimeout:
                said = "no answer: GDB did not recover"
            raise HarnessTimeout(
                f"{shown(cmd)} did not finish within {timeout:g} s; interrupted ({said})",
                artifacts=self.artifacts,
            ) from None
        payload = rec.payload if isinstance(rec.payload, dict) else {}
        if rec.message == "error":
            msg = payload.get("msg", "unknown error")
            raise GdbError(f"GDB refused {shown(cmd)}: {msg}", artifacts=self.artifacts)
        return MiResult(message=rec.message or "", payload=payload, console=console)

    def wait_async(
        self,
        match: Callable[[MiRecord], bool],
        timeout: float,
        what: str,
        alive: Callable[[], None] | None = None,
    ) -> MiRecord:
        """Wait for an async record (e.g. *stopped) that match accepts; earlier ones are dropped."""
        while self._async:
            rec = self._async.popleft()
            if match(rec):
                return rec
        rec, _ = self._pump(match, timeout, what, alive)
        return rec

    def discard_async(self) -> None:
        self._async.clear()

    def evaluate(
        self,
        expr: str,
        timeout: float = MI_TIMEOUT,
        alive: Callable[[], None] | None = None,
        interrupt_on_timeout: bool = False,
    ) -> str:
        """-data-evaluate-expression; returns GDB's printed value."""
        command = f"-data-evaluate-expression {mi_quote(expr)}"
        res = self.command(command, timeout, alive, interrupt_on_timeout)
        return str(res.payload.get("value", ""))

    def read_memory(self, addr: int, length: int, timeout: float = MI_TIMEOUT) -> bytes:
        """Guest memory, in chunks (each bounded by timeout)."""
        out = bytearray()
        for off in range(0, length, MEMORY_CHUNK):
            n = min(MEMORY_CHUNK, length - off)
            res = self.command(f"-data-read-memory-bytes {addr + off:#x} {n}", timeout)
            blocks = res.payload.get("memory") or []
            data = b"".join(bytes.fromhex(b["contents"]) for b in blocks)
            if len(data) != n:
                raise GdbError(
                    f"GDB returned {len(data)} of {n} bytes at {addr + off:#x}", artifacts=self.artifacts
                )
            out += data
        return bytes(out)

    def write_memory(self, addr: int, data: bytes | memoryview, timeout: float = MI_TIMEOUT) -> None:
        """Write guest memory, in chunks (each bounded by timeout)."""
        view = memoryview(data).cast("B")
        for off in range(0, len(view), MEMORY_CHUNK):
            chunk = view[off : off + MEMORY_CHUNK]
            self.command(f"-data-write-memory-bytes {addr + off:#x} {chunk.hex()}", timeout)


def mi_quote(text: str) -> str:
    """text as one MI c-string argument: quoted, with backslashes and quotes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_stopped(rec: MiRecord) -> bool:
    return rec.kind == "notify" and rec.message == "stopped"
