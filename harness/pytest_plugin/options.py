"""What every machine the fixtures make is started with (the snapshot pool's and
machine_factory's): the kernel, the QEMU and GDB binaries and extra QEMU arguments, each from
a command-line option or else an environment variable, checked once when the session starts
(a bad one is a usage error, before any test).

    --piix3-kernel PATH      $PIIX3_KERNEL     default build/guest/kernel.elf
    --piix3-qemu BINARY      $PIIX3_QEMU       default qemu-system-i386
    --piix3-qemu-args ARGS   $PIIX3_QEMU_ARGS  split as a shell would (shlex); some refused
    --piix3-gdb BINARY       $PIIX3_GDB        default gdb
    --piix3-completion MODE  $PIIX3_COMPLETION default poll: the driver's completion (poll, irq)

A keyword a test passes to machine_factory itself wins; extra QEMU arguments go after the
test's own. Under xdist the controller checks only what it can without the files (the split,
the refused arguments): its workers, perhaps on other hosts, look for the kernel and binaries.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.ata import completion_problem
from harness.errors import ConfigError, HarnessError
from harness.paths import find_kernel
from harness.qemu import QEMU_BINARY, QemuConfig

# option dest -> (flag, environment variable, Machine keyword)
OPTIONS = {
    "piix3_kernel": ("--piix3-kernel", "PIIX3_KERNEL", "kernel"),
    "piix3_qemu": ("--piix3-qemu", "PIIX3_QEMU", "qemu"),
    "piix3_qemu_args": ("--piix3-qemu-args", "PIIX3_QEMU_ARGS", "extra_qemu_args"),
    "piix3_gdb": ("--piix3-gdb", "PIIX3_GDB", "gdb"),
    "piix3_completion": ("--piix3-completion", "PIIX3_COMPLETION", "completion"),
}
MACHINE_OPTIONS = pytest.StashKey[dict[str, Any]]()  # per session: Machine keywords from the options


def add(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--piix3-kernel",
        default=None,
        metavar="PATH",
        help="guest kernel for every machine the fixtures make (default: $PIIX3_KERNEL, else "
        "build/guest/kernel.elf)",
    )
    group.addoption(
        "--piix3-qemu",
        default=None,
        metavar="BINARY",
        help=f"QEMU binary, a name on $PATH or a path (default: $PIIX3_QEMU, else {QEMU_BINARY})",
    )
    group.addoption(
        "--piix3-qemu-args",
        default=None,
        metavar="ARGS",
        help="extra QEMU arguments, split as a shell would: --piix3-qemu-args='-smp 2' "
        "(default: $PIIX3_QEMU_ARGS); options that take QEMU's sockets, logs or process "
        "away from the harness are refused",
    )
    group.addoption(
        "--piix3-gdb",
        default=None,
        metavar="BINARY",
        help="GDB binary, a name on $PATH or a path (default: $PIIX3_GDB, else gdb)",
    )
    group.addoption(
        "--piix3-completion",
        default=None,
        metavar="MODE",
        help="the driver's completion for every machine the fixtures make: poll (nIEN set, the "
        "driver polls) or irq (it waits for IRQ 14/15) (default: $PIIX3_COMPLETION, else poll)",
    )


def _chosen(config: pytest.Config, dest: str) -> tuple[str, str] | None:
    """(where it came from, value) for one option: the command line, else its variable."""
    flag, env, _ = OPTIONS[dest]
    value = config.getoption(dest)
    if value is not None:
        return flag, str(value)
    if os.environ.get(env):
        return f"${env}", os.environ[env]
    return None


def runs_tests_here(config: pytest.Config) -> bool:
    """False in an xdist controller (-n N, -d --tx ...): its workers run the tests, perhaps on
    other hosts, where the kernel and binaries are looked for (each worker checks its own)."""
    if hasattr(config, "workerinput"):
        return True
    return str(config.getoption("dist", "no")) == "no"


def resolve(config: pytest.Config) -> dict[str, Any]:
    """The Machine keywords the options ask for (only those given), or pytest.UsageError."""
    out: dict[str, Any] = {}
    here = runs_tests_here(config)
    kernel = _chosen(config, "piix3_kernel")
    if kernel is not None and here:
        try:
            out["kernel"] = find_kernel(kernel[1])
        except HarnessError as exc:
            raise pytest.UsageError(f"{kernel[0]}={kernel[1]}: {exc}") from None
    for dest, key in (("piix3_qemu", "qemu"), ("piix3_gdb", "gdb")):
        chosen = _chosen(config, dest)
        if chosen is None:
            continue
        where, binary = chosen
        if not binary.strip() or "\0" in binary or here and shutil.which(binary) is None:
            raise pytest.UsageError(f"{where}={binary}: no such executable (give a name on $PATH or a path)")
        out[key] = str(Path(binary).absolute()) if os.sep in binary else binary
    completion = _chosen(config, "piix3_completion")
    if completion is not None:
        if completion_problem(completion[1]):
            raise pytest.UsageError(f"{completion[0]}={completion[1]}: {completion_problem(completion[1])}")
        out["completion"] = completion[1]
    args = _chosen(config, "piix3_qemu_args")
    if args is not None:
        where, text = args
        try:
            split = shlex.split(text)
        except ValueError as exc:
            raise pytest.UsageError(f"{where}={text}: cannot split it as a shell would: {exc}") from None
        try:
            QemuConfig(kernel=Path(os.devnull), extra_args=tuple(split))  # refuses FORBIDDEN_ARGS
        except ConfigError as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None
        if split:
            out["extra_qemu_args"] = split
    return out


def configure(config: pytest.Config) -> None:
    config.stash[MACHINE_OPTIONS] = resolve(config)


def completion_marker(item: pytest.Item) -> str | None:
    """The completion a test pins with @pytest.mark.piix3_completion("poll"|"irq"), if any."""
    marker = item.get_closest_marker("piix3_completion")
    if marker is None:
        return None
    mode = marker.args[0] if marker.args else marker.kwargs.get("mode")
    problem = completion_problem(mode)
    if problem:
        raise pytest.UsageError(f"{item.nodeid}: piix3_completion marker: {problem}")
    assert isinstance(mode, str)
    return mode


def machine_kwargs(config: pytest.Config, given: Mapping[str, Any]) -> dict[str, Any]:
    """A test's Machine keywords with the session's options added: a keyword the test gives
    itself wins; extra QEMU arguments go after the test's own."""
    options = config.stash.get(MACHINE_OPTIONS, {})
    kwargs = dict(given)
    for key, value in options.items():
        if key != "extra_qemu_args":
            kwargs.setdefault(key, value)
            continue
        mine = kwargs.get("extra_qemu_args", ())
        if isinstance(mine, list | tuple):  # anything else is for Machine to refuse, unchanged
            kwargs["extra_qemu_args"] = [*mine, *value]
    return kwargs
