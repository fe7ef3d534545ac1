"""MiRecord parsing over a recorded GDB/MI session, and GdbMi's matching over a fake GDB pipe."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import pytest

from harness.errors import GdbError, HarnessTimeout, QemuError
from harness.gdbmi import GdbMi, MiRecord, is_stopped

DATA = Path(__file__).resolve().parents[1] / "data"
SESSION_LOG = DATA / "gdb-mi-session.log"
LOG_LINE = re.compile(r"^\s*(\d+\.\d+) (>>|<<) (.*)$")
TOKEN = re.compile(r"^(\d+)")


def session() -> list[tuple[str, str]]:
    """(direction, text) for every line of the recorded session."""
    out: list[tuple[str, str]] = []
    for n, raw in enumerate(SESSION_LOG.read_text().splitlines(), 1):
        m = LOG_LINE.match(raw)
        assert m is not None, f"{SESSION_LOG.name}:{n}: not '<seconds> >>|<< <line>': {raw!r}"
        out.append((m.group(2), m.group(3)))
    return out


def recorded(prefix: str) -> str:
    """The first line GDB sent that starts with prefix."""
    for direction, text in session():
        if direction == "<<" and text.startswith(prefix):
            return text
    raise AssertionError(f"no '<<' line starting with {prefix!r} in {SESSION_LOG.name}")


def dig(payload: Any, path: str) -> Any:
    """payload["a"]["b"] for path "a.b"; the payload itself for ""."""
    for key in filter(None, path.split(".")):
        assert isinstance(payload, dict), (path, payload)
        payload = payload[key]
    return payload


# --- MiRecord.parse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "kind", "message", "token", "checks"),
    [
        pytest.param(
            "8^done,bkpt=",
            "result",
            "done",
            8,
            {
                "bkpt.func": "harness_ready",
                "bkpt.number": "1",
                "bkpt.line": "31",
                "bkpt.thread-groups": ["i1"],
            },
            id="break-insert-done",
        ),
        pytest.param("7^connected", "result", "connected", 7, {"": None}, id="connected"),
        pytest.param("9^running", "result", "running", 9, {"": None}, id="result-running"),
        pytest.param(
            "*stopped,reason=",
            "notify",
            "stopped",
            None,
            {
                "reason": "breakpoint-hit",
                "bkptno": "1",
                "frame.func": "harness_ready",
                "frame.file": "guest/kmain.c",
                "frame.args": [],
                "thread-id": "1",
            },
            id="stopped-breakpoint",
        ),
        pytest.param(
            "*stopped,frame=",
            "notify",
            "stopped",
            None,
            {"frame.addr": "0x0000fff0", "frame.func": "??", "stopped-threads": "all"},
            id="stopped-at-reset",
        ),
        pytest.param("*running", "notify", "running", None, {"thread-id": "all"}, id="async-running"),
        pytest.param(
            "=breakpoint-modified",
            "notify",
            "breakpoint-modified",
            None,
            {"bkpt.times": "1", "bkpt.func": "harness_ready", "bkpt.original-location": "harness_ready"},
            id="breakpoint-modified",
        ),
        pytest.param(
            "=thread-group-added", "notify", "thread-group-added", None, {"id": "i1"}, id="thread-group"
        ),
        pytest.param(
            '~"Breakpoint 1,',
            "console",
            None,
            None,
            {"": "Breakpoint 1, harness_ready () at guest/kmain.c:31\n"},
            id="console",
        ),
        pytest.param(
            '~"31\\t',
            "console",
            None,
            None,
            {"": '31\t\t__asm__ volatile("" ::: "memory");\n'},
            id="console-escapes",
        ),
        pytest.param('&"maint flush', "log", None, None, {"": "maint flush register-cache\n"}, id="log"),
        pytest.param("10^done,value=", "result", "done", 10, {"value": "16777216"}, id="evaluate"),
        pytest.param("17^done,value=", "result", "done", 17, {"value": "-3"}, id="evaluate-negative"),
    ],
)
def test_parse_recorded(
    prefix: str, kind: str, message: str | None, token: int | None, checks: dict[str, object]
) -> None:
    rec = MiRecord.parse(recorded(prefix))
    assert rec.kind == kind
    assert rec.message == message
    assert rec.token == token
    for path, expected in checks.items():
        assert dig(rec.payload, path) == expected, path


def test_is_stopped() -> None:
    assert is_stopped(MiRecord.parse(recorded("*stopped,reason=")))
    assert not is_stopped(MiRecord.parse(recorded("*running")))
    assert not is_stopped(MiRecord.parse(recorded("9^running")))


def test_whole_session_parses() -> None:
    lines = session()
    sent: dict[int, str] = {}
    answered: set[int] = set()
    kinds: set[str] = set()
    for direction, text in lines:
        if direction == ">>":
            m = TOKEN.match(text)
            if m:
                token = int(m.group(1))
                assert token not in sent, f"token {token} sent twice"
                sent[token] = text
            continue
        rec = MiRecord.parse(text)
        kinds.add(rec.kind)
        assert rec.kind in ("result", "notify", "console", "log", "target"), text
        if rec.kind in ("console", "log", "target"):
            assert isinstance(rec.payload, str), text
        else:
            assert rec.message, text
            assert rec.payload is None or isinstance(rec.payload, dict), text
        if rec.kind == "result":
            assert rec.token is not None, f"untokened result {text!r}"
            assert rec.token in sent, f"{text!r} answers no command sent before it"
            assert rec.token not in answered, f"second answer for token {rec.token}: {text!r}"
            answered.add(rec.token)
    assert kinds == {"result", "notify", "console", "log"}
    assert answered == set(sent), "a tokened command got no answer"


# --- GdbMi over a fake pipe ----------------------------------------------------------------------

NO_SUCH_PID = 1 << 30  # above Linux's PID_MAX_LIMIT: signalling it can reach no process


class StdinPipe:
    """GDB's stdin: a real pipe (GdbMi writes to its fd); what was written stays readable after
    GdbMi closes its end."""

    def __init__(self) -> None:
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._writer = os.fdopen(write_fd, "wb", buffering=0)
        self._seen = b""

    def fileno(self) -> int:
        return self._writer.fileno()

    def write(self, data: bytes) -> int:
        return self._writer.write(data) or 0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._collect()
        self._writer.close()

    @property
    def closed(self) -> bool:
        return self._writer.closed

    def _collect(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self._read_fd, 1 << 16):
                self._seen += chunk

    def lines(self) -> list[str]:
        self._collect()
        return self._seen.decode().splitlines()

    def dispose(self) -> None:
        self._writer.close()
        os.close(self._read_fd)


class FakeProc:
    """What GdbMi uses of a subprocess.Popen: stdin, stdout, pid, poll(), wait()."""

    def __init__(self, stdout: IO[bytes]) -> None:
        self.stdin = StdinPipe()
        self.stdout = stdout
        self.pid = NO_SUCH_PID
        self.exit_code: int | None = None

    def poll(self) -> int | None:
        return self.exit_code

    def wait(self, timeout: float | None = None) -> int:
        self.exit_code = 1 if self.exit_code is None else self.exit_code
        return self.exit_code


@dataclass
class FakeGdb:
    gdb: GdbMi
    proc: FakeProc
    write_fd: int
    interrupts: list[float]

    def feed(self, *lines: str) -> None:
        """GDB output, all in one write (so one read sees all of it)."""
        os.write(self.write_fd, "".join(f"{line}\n" for line in lines).encode())

    def sent(self) -> list[str]:
        return self.proc.stdin.lines()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGdb]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)  # as GdbMi.spawn leaves GDB's stdout
    stdout = os.fdopen(read_fd, "rb", buffering=0)
    proc = FakeProc(stdout)
    os.set_blocking(proc.stdin.fileno(), False)  # as GdbMi.spawn leaves GDB's stdin
    gdb = GdbMi("gdb", tmp_path / "kernel.elf", tmp_path / "gdb.log")
    gdb.proc = cast("subprocess.Popen[bytes]", proc)
    interrupts: list[float] = []
    # never signal anything from a test: record the SIGINT instead
    monkeypatch.setattr(gdb, "interrupt", lambda: interrupts.append(time.monotonic()))
    yield FakeGdb(gdb, proc, write_fd, interrupts)
    stdout.close()
    os.close(write_fd)
    proc.stdin.dispose()


def test_reply_matched_by_token_behind_async_records(fake: FakeGdb) -> None:
    stopped = recorded("*stopped,reason=")
    modified = recorded("=breakpoint-modified")
    fake.feed(
        stopped,
        modified,
        '~"Breakpoint 1, harness_ready () at guest/kmain.c:31\\n"',
        '7^done,value="from an older command"',
        '=thread-group-added,id="i2"',
        '1^done,value="16777216"',
    )
    res = fake.gdb.command('-data-evaluate-expression "(unsigned)harness_xfer_buf"', timeout=1.0)
    assert fake.sent() == ['1-data-evaluate-expression "(unsigned)harness_xfer_buf"']
    assert res.message == "done"
    assert res.payload == {"value": "16777216"}
    assert res.console == ["Breakpoint 1, harness_ready () at guest/kmain.c:31\n"]
    # the async records were kept, in order, and come back without reading GDB again
    got = fake.gdb.wait_async(is_stopped, timeout=0.05, what="*stopped")
    assert got == MiRecord.parse(stopped)
    assert got.payload["frame"]["func"] == "harness_ready"
    got = fake.gdb.wait_async(lambda r: r.message == "breakpoint-modified", timeout=0.05, what="=bkpt")
    assert got.payload["bkpt"]["times"] == "1"


def test_late_reply_of_timed_out_command_is_not_taken(fake: FakeGdb) -> None:
    with pytest.raises(HarnessTimeout):
        fake.gdb.command("-exec-interrupt", timeout=0.05)
    fake.feed('1^done,value="late"', '2^done,value="fresh"')
    assert fake.gdb.command('-data-evaluate-expression "x"', timeout=1.0).payload == {"value": "fresh"}
    assert [line[:1] for line in fake.sent()] == ["1", "2"]


def test_reply_split_across_reads(fake: FakeGdb) -> None:
    line = recorded("8^done,bkpt=").replace("8^", "1^", 1)
    os.write(fake.write_fd, line[:40].encode())
    with pytest.raises(HarnessTimeout):  # half a line is no answer
        fake.gdb.command("-break-insert harness_ready", timeout=0.05)
    os.write(fake.write_fd, line[40:].encode() + b"\n")
    rec = fake.gdb.wait_async(lambda r: r.kind == "result" and r.token == 1, timeout=1.0, what="reply")
    assert rec.payload["bkpt"]["func"] == "harness_ready"


def test_wait_async_reads_gdb(fake: FakeGdb) -> None:
    fake.feed(recorded("*running"), recorded("=breakpoint-modified"), recorded("*stopped,reason="))
    rec = fake.gdb.wait_async(is_stopped, timeout=1.0, what="*stopped")
    assert rec.payload["reason"] == "breakpoint-hit"


def test_wait_async_drops_what_it_skips(fake: FakeGdb) -> None:
    fake.feed(recorded("*running"), recorded("*stopped,frame="), "1^done")
    fake.gdb.command("-gdb-set confirm off", timeout=1.0)
    rec = fake.gdb.wait_async(is_stopped, timeout=0.05, what="*stopped")
    assert rec.payload["frame"]["addr"] == "0x0000fff0"
    with pytest.raises(HarnessTimeout):  # *running was skipped on the way, not kept
        fake.gdb.wait_async(lambda r: r.message == "running", timeout=0.05, what="*running")


def test_discard_async(fake: FakeGdb) -> None:
    fake.feed(recorded("*stopped,reason="), "1^done")
    fake.gdb.command("-gdb-set confirm off", timeout=1.0)
    fake.gdb.discard_async()
    with pytest.raises(HarnessTimeout):
        fake.gdb.wait_async(is_stopped, timeout=0.05, what="*stopped")


def test_error_reply_raises_gdb_error(fake: FakeGdb) -> None:
    fake.feed('1^error,msg="No symbol \\"nosuch\\" in current context."')
    with pytest.raises(GdbError) as info:
        fake.gdb.command('-data-evaluate-expression "nosuch"', timeout=1.0)
    text = str(info.value)
    assert 'No symbol "nosuch" in current context.' in text
    assert "-data-evaluate-expression" in text
    assert info.value.artifacts == (fake.gdb.log_path,)


def test_no_reply_times_out(fake: FakeGdb) -> None:
    fake.feed(recorded("*running"), '~"still going\\n"')
    start = time.monotonic()
    with pytest.raises(HarnessTimeout) as info:
        fake.gdb.command("-exec-continue", timeout=0.05)
    assert time.monotonic() - start < 1.0
    assert "-exec-continue" in str(info.value)
    assert not fake.interrupts


def test_alive_callback_is_polled(fake: FakeGdb) -> None:
    calls: list[float] = []

    def alive() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 2:
            raise QemuError("QEMU exited unexpectedly", exit_code=1)

    with pytest.raises(QemuError, match="exit status 1"):
        fake.gdb.command("-exec-continue", timeout=5.0, alive=alive)
    assert len(calls) == 2
    assert calls[-1] - calls[0] < 1.0  # polled every POLL_SLICE, not once at the deadline


def test_interrupt_on_timeout(fake: FakeGdb, monkeypatch: pytest.MonkeyPatch) -> None:
    said = "The program being debugged was signaled while in a function called from GDB."

    def interrupt() -> None:
        fake.interrupts.append(time.monotonic())
        fake.feed(f'1^error,msg="{said}"')

    monkeypatch.setattr(fake.gdb, "interrupt", interrupt)
    with pytest.raises(HarnessTimeout) as info:
        fake.gdb.command('-data-evaluate-expression "ata_flush(0)"', timeout=0.05, interrupt_on_timeout=True)
    assert len(fake.interrupts) == 1
    assert f"interrupted ({said})" in str(info.value)


def test_gdb_exit_raises_gdb_error(fake: FakeGdb) -> None:
    fake.feed('~"unfinished business\\n"')
    os.close(fake.write_fd)
    fake.write_fd = os.open(os.devnull, os.O_WRONLY)  # for the fixture to close
    with pytest.raises(GdbError, match=r"GDB closed its output \(exit status 1\)"):
        fake.gdb.command("-exec-continue", timeout=1.0)


def test_evaluate_quotes_expression(fake: FakeGdb) -> None:
    fake.feed('1^done,value="0x101000 \\"ok\\""')
    assert fake.gdb.evaluate('puts("a\\b")', timeout=1.0) == '0x101000 "ok"'
    assert fake.sent() == ['1-data-evaluate-expression "puts(\\"a\\\\b\\")"']


def test_read_memory(fake: FakeGdb) -> None:
    fake.feed('1^done,memory=[{begin="0x1000",offset="0x0",end="0x1004",contents="deadbeef"}]')
    assert fake.gdb.read_memory(0x1000, 4, timeout=1.0) == b"\xde\xad\xbe\xef"
    assert fake.sent() == ["1-data-read-memory-bytes 0x1000 4"]
    fake.feed('2^done,memory=[{begin="0x1000",offset="0x0",end="0x1002",contents="dead"}]')
    with pytest.raises(GdbError, match="2 of 4 bytes"):
        fake.gdb.read_memory(0x1000, 4, timeout=1.0)


def test_close_sends_gdb_exit(fake: FakeGdb) -> None:
    fake.feed("1^done")
    fake.gdb.command("-gdb-set confirm off", timeout=1.0)
    fake.gdb.close()
    assert fake.gdb.proc is None
    assert fake.proc.stdin.closed and fake.proc.stdout.closed
    assert fake.sent() == ["1-gdb-set confirm off", "-gdb-exit"]
    fake.gdb.close()  # twice is fine
    with pytest.raises(GdbError, match="not running"):
        fake.gdb.command("-gdb-version", timeout=0.05)


# --- known bugs (see the report); strict, so a fix shows up as XPASS -> failure to remove the mark ---


def test_async_record_after_reply_in_same_read_is_kept(fake: FakeGdb) -> None:
    # 9^running and *running arrived 8 us apart in the recorded session: one read gets both
    fake.feed("1^running", recorded("*running"), recorded("*stopped,reason="))
    assert fake.gdb.command("-exec-continue", timeout=1.0).message == "running"
    rec = fake.gdb.wait_async(is_stopped, timeout=0.05, what="*stopped")
    assert rec.payload["reason"] == "breakpoint-hit"


def test_spurious_wakeup_is_not_eof(fake: FakeGdb, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = fake.proc.stdout.fileno()
    real_read = os.read
    spurious = [True]

    def read(f: int, n: int) -> bytes:
        if f == fd and spurious:
            spurious.pop()
            raise BlockingIOError
        return real_read(f, n)

    monkeypatch.setattr(os, "read", read)
    fake.feed("1^done")
    assert fake.gdb.command("-gdb-version", timeout=1.0).message == "done"


def test_a_gdb_that_stops_reading_cannot_hang_a_write(fake: FakeGdb) -> None:
    """More than a pipe's worth of input to a GDB that reads nothing: a bounded HarnessTimeout."""
    with pytest.raises(HarnessTimeout, match="took no input"):
        fake.gdb.write_memory(0x1000, bytes(100_000), timeout=0.2)
