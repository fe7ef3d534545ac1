"""pytest plugin (entry point `piix3`): fixtures for machines and disks, per-test artifacts,
and a check that every QEMU and GDB the harness started is gone.

hooks.py     options, markers, reports naming the logs, leak checks, --piix3-keep-on-fail
options.py   --piix3-kernel, --piix3-qemu, --piix3-qemu-args, --piix3-gdb (and their variables)
fixtures.py  machine, machine_factory, disk, piix3_firmware, piix3_transport
pool.py      the snapshot pool behind the fast `machine` fixture
protocol.py  the protocol checker on every test (QEMU's device trace, checked after the body)
waveforms.py a failing test's port watches and device traces drawn as VCD next to its logs
state.py     what they share (pytest stash keys)
coverage.py  --piix3-gcov, --piix3-fcov: gcov counters and functional coverage (own plugin)
"""

from harness.pytest_plugin.fixtures import (
    MachineFactory,
    _piix3_waveforms,
    disk,
    machine,
    machine_factory,
    piix3_firmware,
    piix3_transport,
)
from harness.pytest_plugin.hooks import (
    _piix3_no_leaked_processes,
    interactive,
    pytest_addoption,
    pytest_collection_finish,
    pytest_configure,
    pytest_generate_tests,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_sessionfinish,
)
from harness.pytest_plugin.pool import SnapshotPool, piix3_snapshot_pool

# coverage.py is a plugin of its own (it has hooks these have too), loaded with this one
pytest_plugins = ["harness.pytest_plugin.coverage"]

__all__ = [
    "MachineFactory",
    "SnapshotPool",
    "_piix3_no_leaked_processes",
    "_piix3_waveforms",
    "disk",
    "interactive",
    "machine",
    "machine_factory",
    "piix3_firmware",
    "piix3_transport",
    "piix3_snapshot_pool",
    "pytest_addoption",
    "pytest_collection_finish",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_sessionfinish",
]
