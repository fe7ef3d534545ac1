"""What the plugin's parts share: the keys under which pytest stashes its state."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.machine import Machine

REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()  # per test: its reports by phase
ARTIFACT_DIRS = pytest.StashKey[list[Path]]()  # per test: the log directories of its machines
MACHINES = pytest.StashKey[list[Machine]]()  # per test: every machine it used (--piix3-keep-on-fail)


def failed(item: pytest.Item) -> bool:
    """The test failed in any phase so far."""
    return any(r.failed for r in item.stash.get(REPORTS, {}).values())
