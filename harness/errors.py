"""The harness's exception tree: one root, data on every exception, artifacts named."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.regs import AtaCode, command_name, decode_error, decode_status


class HarnessError(Exception):
    """Root of every error the harness raises; `artifacts` are the files that explain it."""

    def __init__(self, message: str, *, artifacts: Sequence[Path] = ()) -> None:
        self.message = message
        self.artifacts: tuple[Path, ...] = tuple(artifacts)
        super().__init__(message)

    def __str__(self) -> str:
        if not self.artifacts:
            return self.message
        return f"{self.message} (see {', '.join(str(p) for p in self.artifacts)})"


class ConfigError(HarnessError, ValueError):
    """A Machine, disk or fault was configured in a way that cannot work; nothing was started."""


class UsageError(HarnessError, ValueError):
    """A call was given an argument it cannot take (wrong type, out of range); nothing was done."""


class HarnessTimeout(HarnessError):
    """A bounded wait ran out: booting, a GDB reply, a driver call, QEMU quitting."""


class QemuError(HarnessError):
    """QEMU failed to start, died, or reported an error."""

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] = (),
        exit_code: int | None = None,
        log_path: Path | None = None,
        artifacts: Sequence[Path] = (),
    ) -> None:
        self.command = tuple(command)
        self.exit_code = exit_code
        self.log_path = log_path
        if exit_code is not None:
            message = f"{message} [exit status {exit_code}]"
        extra = [log_path] if log_path is not None and log_path not in artifacts else []
        super().__init__(message, artifacts=[*extra, *artifacts])


class GdbError(HarnessError):
    """GDB failed, died, or answered a command with an error."""


class AtaError(HarnessError):
    """A driver call failed: the driver's code and the registers it recorded."""

    def __init__(
        self,
        code: int,
        *,
        drive: int,
        operation: str,
        status: int = 0,
        error: int = 0,
        lba: int = 0,
        command: int = 0,
        bm_status: int = 0,
        phase: int = 0,
        detail: str = "",
        artifacts: Sequence[Path] = (),
    ) -> None:
        self.code = AtaCode(code)
        self.drive = drive
        self.operation = operation
        self.status = status
        self.error = error
        self.lba = lba
        self.command = command
        self.bm_status = bm_status
        self.phase = phase
        self.detail = detail
        super().__init__(self._describe(), artifacts=artifacts)

    @property
    def status_bits(self) -> str:
        return decode_status(self.status)

    @property
    def error_bits(self) -> str:
        return decode_error(self.error)

    def _describe(self) -> str:
        text = f"{self.operation} on drive {self.drive} failed: {self.code.name} ({self.code.meaning})"
        if self.detail:
            text += f": {self.detail}"
        if self.code in (AtaCode.DEVICE, AtaCode.TIMEOUT, AtaCode.DMA):
            text += (
                f"; status={self.status:#04x} [{self.status_bits}] error={self.error:#04x}"
                f" [{self.error_bits}] lba={self.lba}"
            )
            if self.command:
                text += f" command={self.command:#04x} ({command_name(self.command)})"
            if self.code is AtaCode.DMA:
                text += f" bm_status={self.bm_status:#04x}"
        return text


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised so that cleanup runs as for Ctrl-C; unlike Ctrl-C it counts as a
    failure, so the logs that explain why the run was killed are kept."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler (`signal.signal(signal.SIGTERM, raise_terminated)`): unwind as for Ctrl-C."""
    raise Terminated(f"signal {signum}")
