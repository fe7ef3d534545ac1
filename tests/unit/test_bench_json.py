"""`piix3 bench --json` says which harness made the numbers: the installed package's version,
the one pyproject.toml declares (measure.run stubbed: the JSON, not the timing, is tested)."""

from __future__ import annotations

import json
import signal
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness.bench.measure
from harness import cli
from harness.bench.report import Progress, Report
from harness.paths import REPO_ROOT


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    old = signal.getsignal(signal.SIGTERM)  # main() installs its own SIGTERM handler
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.mark.usefixtures("sigterm_restored")
def test_bench_json_carries_the_package_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(repeat: int, firmware: str, quick: bool, progress: Progress, *rest: object) -> Report:
        return Report(firmware=firmware, repeat=repeat, quick=quick, image="stub.img")

    monkeypatch.setattr(harness.bench.measure, "run", run)
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--json", str(out)]) == 0
    capsys.readouterr()
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = json.loads(out.read_text())
    assert result["version"] == declared
    assert list(result)[0] == "version" and result["image"] == "stub.img"


def test_bench_suite_runs_the_checkouts_suite_as_make_test_does() -> None:
    """`piix3 bench --suite` times the tests make test runs (it once pointed inside harness/)."""
    argv = harness.bench.measure.suite_command("auto", "off")
    assert Path(argv[-1]) == REPO_ROOT / "tests" and (REPO_ROOT / "tests" / "integration").is_dir()
    recipe = (REPO_ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    for option in ("--piix3-firmware=both", "--piix3-transport=paired"):
        assert option in argv and option in recipe
    assert argv[argv.index("-n") + 1] == "auto" and "--piix3-protocol=off" in argv
