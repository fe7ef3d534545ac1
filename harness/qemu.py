"""The QEMU process: its configuration, command line, QMP connection and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from harness import artifacts, procs
from harness.disk import DiskImage
from harness.errors import ConfigError, QemuError
from harness.faults import Fault, blkdebug_config

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-i386"
QMP_ACCEPT_TIMEOUT = 10.0  # s, for a fresh QEMU to connect to our QMP socket
QMP_COMMAND_TIMEOUT = 10.0  # s, for one QMP command
QEMU_QUIT_TIMEOUT = 5.0  # s, for QEMU to exit after `quit`
QEMU_EXIT_GRACE = 1.0  # s, for a QEMU that hung up on us to finish exiting
POLL_SLICE = 0.02  # s, how often a wait for QEMU checks that it is still alive
EVENT_SETTLE = 0.01  # s, a pause in QMP events long enough to say QEMU has sent them all
EVENT_DRAIN_LIMIT = 1.0  # s, at most, reading a burst of QMP events
FIRMWARE = {"seabios": None, "qboot": "/usr/share/qemu/qboot.rom"}
MAX_DRIVES = 4
TRACE_LOG_NAME = "qemu-trace.log"  # QEMU's -D log: device-side trace events (harness/devtrace.py)
IO_ERROR_POLICIES = ("report", "stop")
# How a drive's completed writes become durable. "writethrough": at once (the host file has
# them as soon as the command completes: QEMU's own behaviour). "volatile": only when the guest
# flushes (or writes FUA, or has disabled the cache); until then they live in the harness's
# cache, a qcow2 overlay and a write log in the run directory (harness/powerloss.py).
WRITE_CACHE_MODES = ("writethrough", "volatile")
WRITE_LOG_SECTOR = 512  # blklogwrites' log-sector-size: one entry header per sector, data in sectors
# Options the harness cannot allow in extra_args: each takes the process, its sockets or its
# logs out of the harness's hands (or opens a TCP port).
FORBIDDEN_ARGS = {
    "-daemonize": "QEMU would leave the harness's process tree and outlive close()",
    "-runas": "QEMU would drop to another user and lose access to the private sockets",
    "-chroot": "QEMU would lose the paths of its sockets, RAM file and logs",
    "-s": "it opens a gdbstub on TCP port 1234; the harness's gdbstub is on a private socket",
    "-gdb": "the harness owns the gdbstub (a private unix socket)",
    "-qmp": "the harness owns QMP (a private unix socket)",
    "-qmp-pretty": "the harness owns QMP (a private unix socket)",
    "-monitor": "the harness owns the monitor; use m.qemu.command() for QMP",
    "-mon": "the harness owns the monitor; use m.qemu.command() for QMP",
    "-D": "the harness owns QEMU's log file (device traces go there)",
    "-kernel": "the kernel is Machine(kernel=...)",
}


@dataclass(frozen=True)
class QemuConfig:
    """What to start: kernel, drives, firmware, memory. Kept apart from the live process."""

    kernel: Path
    disks: Mapping[int, DiskImage] = field(default_factory=dict)
    firmware: str = "seabios"
    memory_mib: int = 128
    qemu_binary: str = QEMU_BINARY
    extra_args: tuple[str, ...] = ()
    faults: Mapping[int, Sequence[Fault]] = field(default_factory=dict)
    io_error: str = "report"  # report: the guest sees an ATA error; stop: QEMU pauses (rerror/werror=stop)
    write_cache: Mapping[int, str] = field(default_factory=dict)  # drive -> mode; absent: writethrough

    def __post_init__(self) -> None:
        if self.firmware not in FIRMWARE:
            raise ConfigError(f"unknown firmware {self.firmware!r}; use one of {', '.join(FIRMWARE)}")
        if self.io_error not in IO_ERROR_POLICIES:
            raise ConfigError(f"io_error {self.io_error!r} is not one of {', '.join(IO_ERROR_POLICIES)}")
        for drive in self.faults:
            if drive not in self.disks:
                raise ConfigError(f"faults given for drive {drive}, which has no disk")
            if self.disks[drive].format != "raw":
                raise ConfigError(f"faults need a raw image; drive {drive} is {self.disks[drive].format}")
        for drive, mode in self.write_cache.items():
            if mode not in WRITE_CACHE_MODES:
                raise ConfigError(
                    f"write_cache {mode!r:.40} for drive {drive} is not one of {', '.join(WRITE_CACHE_MODES)}"
                )
            if drive not in self.disks:
                raise ConfigError(f"write_cache given for drive {drive}, which has no disk")
            if mode == "volatile" and self.disks[drive].format != "raw":
                raise ConfigError(
                    f"write_cache='volatile' needs a raw image; drive {drive} is {self.disks[drive].format}"
                )
        for arg in self.extra_args:
            if not isinstance(arg, str) or "\0" in arg:
                raise ConfigError(f"extra_qemu_args: {arg!r} is not a string without NUL bytes")
            name = arg.split("=", 1)[0]
            if name.startswith("--"):
                name = name[1:]
            if name in FORBIDDEN_ARGS:
                raise ConfigError(f"extra_qemu_args: {arg!r} is refused: {FORBIDDEN_ARGS[name]}")
        for drive in self.disks:
            if not 0 <= drive < MAX_DRIVES:
                raise ConfigError(
                    f"drive {drive} does not exist; drives are 0..3 "
                    "(primary master, primary slave, secondary master, secondary slave)"
                )


# The names of a machine's files: spelled here and nowhere else.
SERIAL_LOG = "serial.log"  # the guest's COM1
SERIAL_PIPE = "ser"  # the guest's COM1 as FIFOs ser.in, ser.out in the rundir (harness/console.py)
SERIAL_CHARDEV = "ser0"  # its chardev's id
QEMU_LOG = "qemu.log"  # QEMU's stdout and stderr
QEMU_CMDLINE = "qemu.cmdline"
GDB_LOG = "gdb-mi.log"  # the GDB/MI transcript
GDB_CMDLINE = "gdb.cmdline"
HANG_FILE = "hang.txt"  # evidence from a call that did not return
LOG_FILES = (SERIAL_LOG, QEMU_LOG, TRACE_LOG_NAME, GDB_LOG, QEMU_CMDLINE, GDB_CMDLINE, HANG_FILE)


@dataclass(frozen=True)
class QemuPaths:
    """Where one machine keeps its sockets, RAM and generated files (the private rundir) and
    its logs (the artifacts directory)."""

    qmp_socket: Path
    gdb_socket: Path
    ram_file: Path
    serial_log: Path
    qemu_log: Path
    cmdline: Path
    rundir: Path | None = None  # where generated files (blkdebug rules) go
    trace_log: Path | None = None  # QEMU's log file (-D): trace events, switched on at runtime
    gdb_log: Path | None = None
    gdb_cmdline: Path | None = None
    hang_file: Path | None = None
    serial_pipe: Path | None = None  # COM1 as FIFOs <this>.in/.out (logging to serial_log); None: a file

    @classmethod
    def under(cls, rundir: Path, logs: Path) -> QemuPaths:
        """Sockets and RAM in the private rundir, logs and the command lines in logs."""
        return cls(
            qmp_socket=rundir / "qmp.sock",
            gdb_socket=rundir / "gdb.sock",
            ram_file=rundir / "ram",
            serial_log=logs / SERIAL_LOG,
            qemu_log=logs / QEMU_LOG,
            cmdline=logs / QEMU_CMDLINE,
            rundir=rundir,
            trace_log=logs / TRACE_LOG_NAME,
            gdb_log=logs / GDB_LOG,
            gdb_cmdline=logs / GDB_CMDLINE,
            hang_file=logs / HANG_FILE,
            serial_pipe=rundir / SERIAL_PIPE,
        )

    def without_console(self) -> QemuPaths:
        """The same, with COM1 a plain file (serial.log): for a QEMU nobody reads a console of."""
        return replace(self, serial_pipe=None)

    def serial_fifos(self) -> tuple[Path, Path] | None:
        """COM1's FIFOs: (to the guest, from the guest), when it has them."""
        if self.serial_pipe is None:
            return None
        return Path(f"{self.serial_pipe}.in"), Path(f"{self.serial_pipe}.out")

    def blkdebug_rules(self, drive: int) -> Path:
        """The blkdebug rules file for one drive's faults."""
        return (self.rundir or self.ram_file.parent) / f"blkdebug{drive}.conf"

    def write_log(self, drive: int) -> Path:
        """A volatile drive's write log (blklogwrites: every completed write, with its data)."""
        return (self.rundir or self.ram_file.parent) / f"writes{drive}.log"

    def cache_overlay(self, drive: int) -> Path:
        """A volatile drive's overlay: where QEMU keeps the writes the image does not have yet."""
        return (self.rundir or self.ram_file.parent) / f"cache{drive}.qcow2"


def _opt(path: Path) -> str:
    """A path as a QEMU option value: a literal comma is written twice."""
    return str(path).replace(",", ",,")


def trace_log_arg(paths: QemuPaths) -> Path | None:
    """The name QEMU's -D is given for the trace log. QEMU reads a `%` in that name as a
    format (`%d`: its pid) and refuses any other, with no way to escape it; a log path with a
    `%` is therefore reached through a link in the private run directory."""
    if paths.trace_log is None:
        return None
    if "%" in str(paths.trace_log) and paths.rundir is not None:
        return paths.rundir / "trace-log"
    return paths.trace_log


def serial_chardev(paths: QemuPaths) -> str:
    """COM1's chardev: a pair of FIFOs (QEMU's `pipe` backend) that also logs every byte the
    guest sends to serial.log, read or not; else a plain file. FIFOs rather than a unix socket:
    a socket takes under 300 one-byte writes before the reader must catch up (each is a buffer
    of its own), a FIFO 64 KiB, and on a full one QEMU slows the guest down and logs the byte
    it could not send twice."""
    if paths.serial_pipe is None:
        return f"file,id={SERIAL_CHARDEV},path={_opt(paths.serial_log)},append=on"
    pipe = _opt(paths.serial_pipe)
    return f"pipe,id={SERIAL_CHARDEV},path={pipe},logfile={_opt(paths.serial_log)},logappend=on"


def build_command(cfg: QemuConfig, paths: QemuPaths) -> list[str]:
    """The QEMU command line: paused (-S), gdbstub and QMP on unix sockets, RAM in a shared file."""
    mem = f"{cfg.memory_mib}M"
    argv = [
        cfg.qemu_binary,
        "-M",
        "pc,memory-backend=mem",
        "-m",
        mem,
        "-object",
        f"memory-backend-file,id=mem,size={mem},mem-path={_opt(paths.ram_file)},share=on",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-msg",
        "timestamp=on",  # trace events carry µs stamps: the protocol checker times SRST with them
        "-S",
        "-kernel",
        str(cfg.kernel),
        "-chardev",
        f"socket,id=gdb0,path={_opt(paths.gdb_socket)},server=on,wait=off",
        "-gdb",
        "chardev:gdb0",
        "-chardev",
        f"socket,id=qmp0,path={_opt(paths.qmp_socket)}",
        "-mon",
        "chardev=qmp0,mode=control",
        "-chardev",
        serial_chardev(paths),
        "-serial",
        f"chardev:{SERIAL_CHARDEV}",
    ]
    trace_log = trace_log_arg(paths)
    if trace_log is not None:
        argv += ["-D", str(trace_log)]  # a plain file name, not an option string
    bios = FIRMWARE[cfg.firmware]
    if bios:
        argv += ["-bios", bios]
    for drive, disk in sorted(cfg.disks.items()):
        node = f"disk{drive}"
        file_node: dict[str, object] = {"driver": "file", "filename": str(disk.path)}
        if cfg.write_cache.get(drive) == "volatile":
            file_node = volatile_chain(file_node, paths, drive)
        if drive in cfg.faults:
            rules = paths.blkdebug_rules(drive)
            file_node = {"driver": "blkdebug", "config": str(rules), "image": file_node}
        top = {"driver": disk.format, "node-name": node, "file": file_node, **disk.blockdev_extra()}
        argv += [
            "-blockdev",
            json.dumps(top, separators=(",", ":")),
            "-device",
            f"ide-hd,id=drive{drive},drive={node},bus=ide.{drive // 2},unit={drive % 2}"
            # explicit both ways: QEMU's own default pauses the VM on ENOSPC even for "report"
            + f",rerror={cfg.io_error},werror={cfg.io_error}",
        ]
    return argv + list(cfg.extra_args)


def volatile_chain(image: dict[str, object], paths: QemuPaths, drive: int) -> dict[str, object]:
    """The nodes under a volatile drive's format node: every write is logged (blklogwrites,
    guest LBAs and data, in completion order) and kept in a qcow2 overlay whose backing is the
    image, opened read-only. The image so keeps the state of the last boot until the harness
    writes into it what the drive would have made durable (harness/powerloss.py). blkdebug, when
    the drive has faults, goes above this chain: a write it fails never reaches the log."""
    overlay: dict[str, object] = {
        "driver": "qcow2",
        "file": {"driver": "file", "filename": str(paths.cache_overlay(drive))},
        "backing": {"driver": "raw", "file": image},
    }
    return {
        "driver": "blklogwrites",
        "file": overlay,
        "log": {"driver": "file", "filename": str(paths.write_log(drive))},
        "log-sector-size": WRITE_LOG_SECTOR,
    }


def _is_listener(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


class QemuProcess:
    """A running qemu-system-i386, started paused; QMP is connected once start() returns."""

    def __init__(self, config: QemuConfig, paths: QemuPaths) -> None:
        self.config = config
        self.paths = paths
        self.argv = build_command(config, paths)
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.exit_code: int | None = None
        self._stalled = False
        self._stderr: IO[bytes] | None = None

    def _error(self, message: str, **kw: Any) -> QemuError:
        tail = self.log_tail()
        if tail:
            message = f"{message}; QEMU said: {tail}"
        return QemuError(
            message,
            command=self.argv,
            log_path=self.paths.qemu_log,
            artifacts=[self.paths.serial_log, self.paths.cmdline],
            **kw,
        )

    def start(self) -> None:
        """Validate disks, spawn QEMU, and wait (bounded, watching QEMU live) for its QMP."""
        for disk in self.config.disks.values():
            disk.validate()
        for drive, faults in self.config.faults.items():
            self.paths.blkdebug_rules(drive).write_text(blkdebug_config(faults))
        for drive, mode in self.config.write_cache.items():
            if mode == "volatile":  # a fresh cache for every QEMU: what the last one had is settled
                disk = self.config.disks[drive]
                DiskImage.create(self.paths.cache_overlay(drive), size_bytes=disk.size, overwrite=True)
                self.paths.write_log(drive).write_bytes(b"")
        artifacts.write_text(self.paths.cmdline, " ".join(self.argv) + "\n")
        for name in (self.paths.serial_log, self.paths.trace_log):  # QEMU opens these by name
            if name is not None:
                artifacts.ensure(name)
        for fifo in self.paths.serial_fifos() or ():  # made once; every QEMU of the machine opens them
            try:
                if not fifo.is_fifo():
                    os.mkfifo(fifo, 0o600)
            except OSError as exc:
                raise self._error(f"cannot make the serial console's FIFO {fifo}: {exc.strerror}") from None
        alias = trace_log_arg(self.paths)
        if alias is not None and alias != self.paths.trace_log and self.paths.trace_log is not None:
            alias.unlink(missing_ok=True)
            alias.symlink_to(self.paths.trace_log)
        log.debug("QEMU command line: %s", " ".join(self.argv))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.paths.qmp_socket))
            listener.listen(1)
            self._stderr = artifacts.open_binary_log(self.paths.qemu_log)  # QEMU's stderr while it runs
            try:
                self.proc = procs.spawn(self.argv, name="qemu", stdout=self._stderr, stderr=self._stderr)
            except FileNotFoundError:
                raise self._error(f"{self.config.qemu_binary} not found; run `make deps`") from None
            except OSError as exc:
                raise self._error(f"cannot run {self.config.qemu_binary}: {exc.strerror}") from None
            conn = self._await(listener, "connect to QMP")
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()
        try:
            self._await(conn, "send the QMP greeting")
            self.qmp = QEMUMonitorProtocol(conn)
            # qemu.qmp's connect() has no bound on the capabilities exchange: a QEMU that stalls
            # there is killed by this watchdog, and its closed socket ends connect().
            watchdog = threading.Timer(QMP_ACCEPT_TIMEOUT, self._kill_stalled)
            watchdog.start()
            try:
                self.qmp.connect()
            finally:
                watchdog.cancel()
                watchdog.join()  # a watchdog already firing finishes before _stalled is read
            if self._stalled:
                raise self._error(f"QEMU did not finish the QMP handshake within {QMP_ACCEPT_TIMEOUT:.0f} s")
        except QemuError:
            conn.close()
            self.close()
            raise
        except Exception as exc:  # qemu.qmp raises several kinds; all mean "no QMP"
            conn.close()
            self.close(timeout=QEMU_EXIT_GRACE)
            what = (
                f"QEMU did not finish the QMP handshake within {QMP_ACCEPT_TIMEOUT:.0f} s and was killed"
                if self._stalled
                else "QEMU hung up during the QMP handshake"
            )
            raise self._error(f"{what} ({exc or type(exc).__name__})", exit_code=self.exit_code) from exc
        self.qmp.settimeout(QMP_COMMAND_TIMEOUT)

    def _kill_stalled(self) -> None:
        self._stalled = True
        if self.proc is not None:
            procs.kill(self.proc)

    def _await(self, sock: socket.socket, what: str) -> socket.socket:
        """Wait until sock is readable (a listener: accept), failing fast if QEMU exits."""
        deadline = time.monotonic() + QMP_ACCEPT_TIMEOUT
        while True:
            ready, _, _ = select.select([sock], [], [], POLL_SLICE)
            if ready:
                if sock.type == socket.SOCK_STREAM and _is_listener(sock):
                    conn, _ = sock.accept()
                    return conn
                return sock
            code = self.poll()
            if code is not None:
                raise self._error(f"QEMU exited before it could {what}", exit_code=code)
            if time.monotonic() > deadline:
                raise self._error(f"QEMU did not {what} within {QMP_ACCEPT_TIMEOUT:.0f} s")

    def log_tail(self, lines: int = 3) -> str:
        """The last lines QEMU wrote to stderr (its reasons for failing)."""
        try:
            text = self.paths.qemu_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        """Exit status if QEMU has exited, else None."""
        if self.proc is None:
            return self.exit_code
        code = procs.poll(self.proc)
        if code is not None:
            self.exit_code = code
        return code

    def check_alive(self) -> None:
        code = self.poll()
        if code is not None:
            raise self._error("QEMU exited unexpectedly", exit_code=code)

    def events(self, wait: float = 0.0) -> list[dict[str, Any]]:
        """QMP events received so far (RESET, STOP, BLOCK_IO_ERROR, ...), oldest first; clears them.
        With wait, reads for up to that long first, so events QEMU already sent arrive."""
        if self.qmp is None:
            return []
        events: list[dict[str, Any]] = []
        try:
            if wait:
                # each read returns what has been parsed so far: go on while more keep coming
                deadline = time.monotonic() + EVENT_DRAIN_LIMIT
                batch_wait = wait
                while time.monotonic() < deadline:
                    batch: list[dict[str, Any]] = []
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):  # none in time
                        batch = self.qmp.get_events(wait=batch_wait)
                    if not batch:
                        break
                    events += batch
                    batch_wait = EVENT_SETTLE
            events += self.qmp.get_events(wait=False)
        except Exception:  # a dead QMP connection has no more events to give
            pass
        # qemu.qmp's EventListener also keeps every event ever seen in a history list; over
        # thousands of resets that list is the harness's only memory growth. Drop it.
        listener = getattr(getattr(self.qmp, "_qmp", None), "events", None)
        history = getattr(listener, "_history", None)
        if isinstance(history, list):
            history.clear()
        return events

    def command(self, name: str, /, **args: object) -> Any:
        """One QMP command; its result, or QemuError."""
        if self.qmp is None:
            raise self._error(f"QMP {name}: QEMU is not running")
        try:
            resp = self.qmp.cmd_raw(name, args or None)
        except Exception as exc:
            raise self._error(
                f"QMP {name} failed: {exc or type(exc).__name__}", exit_code=self.poll()
            ) from exc
        if "error" in resp:
            raise self._error(f"QMP {name} refused: {resp['error'].get('desc', resp['error'])}")
        return resp.get("return")

    def quit(self) -> int:
        """Clean shutdown: QMP quit, bounded wait, then kill. Returns the exit status."""
        if self.proc is not None and procs.poll(self.proc) is None and self.qmp is not None:
            with contextlib.suppress(Exception):  # QEMU may close the socket before answering
                self.qmp.cmd_raw("quit")
        return self.close()

    def kill(self) -> int:
        """SIGKILL, as a crash would, and reap."""
        if self.proc is not None:
            procs.kill(self.proc)
        return self.close(timeout=QEMU_QUIT_TIMEOUT)

    def close(self, timeout: float = QEMU_QUIT_TIMEOUT) -> int:
        """Reap QEMU (killing it after timeout) and release our end of everything; Ctrl-C waits
        until that is done (it is bounded)."""
        with procs.signals_deferred():
            return self._close(timeout)

    def _close(self, timeout: float) -> int:
        if self.proc is not None:
            self.exit_code = procs.reap(self.proc, timeout)
            self.proc = None
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        for sock in (self.paths.qmp_socket, self.paths.gdb_socket):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        return self.exit_code if self.exit_code is not None else -1
