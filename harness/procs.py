"""Starting and reaping the processes the harness owns (QEMU, GDB).

Every child runs in a session of its own, so a terminal's Ctrl-C reaches only Python, which
then tears the children down; and it gets SIGKILL from the kernel if the harness dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc: Any = None
# pids this Python process started and has not yet reaped (for leak checks)
LIVE_CHILDREN: dict[int, str] = {}
STARTED_CHILDREN: list[int] = []


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str],
    *,
    name: str,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv in its own session, to die with us; remember it until reaped."""
    global _libc
    if _libc is None:
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)
    log.debug("starting %s: %s", name, " ".join(argv))
    proc = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_die_with_parent,
        close_fds=True,
    )
    LIVE_CHILDREN[proc.pid] = name
    STARTED_CHILDREN.append(proc.pid)
    return proc


def reap(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait up to timeout for proc to exit by itself, then SIGKILL it; returns its exit status."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not exit within %.1f s; killing it", proc.pid, timeout)
        kill(proc)
        code = proc.wait()
    LIVE_CHILDREN.pop(proc.pid, None)
    return code


def poll(proc: subprocess.Popen[bytes]) -> int | None:
    """proc's exit status if it has exited (it is then reaped and forgotten), else None."""
    code = proc.poll()
    if code is not None:
        LIVE_CHILDREN.pop(proc.pid, None)
    return code


def exited(pid: int) -> bool:
    """pid, a child of ours, has exited (a zombie, or already reaped by someone), without
    reaping it: what Popen.poll() cannot say once another waiter took the status."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL proc (by pid, never by name); a process already gone is fine."""
    if poll(proc) is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def ignore_sigpipe() -> None:
    """Put SIGPIPE back to Python's own setting (ignored), if something set it to the default.

    The harness writes to pipes and sockets whose far end can die (GDB's stdin, QMP, a console
    FIFO); with SIGPIPE ignored such a write fails with BrokenPipeError, which becomes a typed
    error. With the default action the process would die at once and without a word. Libraries
    do reset it on import (vcdvcd, for one, sets SIG_DFL), so this runs at every start.
    Only the main thread may change a signal's handling; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL:
        log.warning("SIGPIPE was set to kill the process (by an imported library?); ignoring it again")
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them: for teardown, which
    is bounded, and which a second Ctrl-C must not leave half done (a GDB still running, a
    directory left behind). Outside the main thread, signals cannot arrive here anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, frame: object) -> None:
        caught.append(signum)

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            handler = old[signal.Signals(signum)]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signum)
