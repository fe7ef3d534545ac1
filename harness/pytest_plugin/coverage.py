"""Coverage in pytest: the guest's gcov counters (`--piix3-gcov`) and functional coverage of the
ATA protocol (`--piix3-fcov`), collected from every machine of the session (harness/coverage/),
summed per test, merged across xdist workers, written and reported at the end.

    --piix3-gcov                  read the counters of every machine running an instrumented
                                  kernel (make coverage-guest) and write its .gcda files beside
                                  the .gcno files at the end (gcovr reads them: make coverage)
    --piix3-fcov                  sample every driver call and what the device trace shows of it;
                                  the table and the unhit bins at the end, like pytest-cov's
    --piix3-fcov-fail-under PCT   fail the session when fewer bins than PCT % are hit
    --piix3-coverage-dir DIR      where the reports go (default build/coverage under the rootdir):
                                  functional.json/.md/.html, gcov-tests.json (functions per test)

Each process (xdist worker or not) keeps its totals in DIR/.parts/, rewritten after every test,
so a worker that crashes loses at most the test it was running; the controller merges them all.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from harness.coverage import functional, gcov
from harness.coverage.covergroup import CoverError, Covergroup
from harness.coverage.observe import CallSampler, GcovCollector, install
from harness.target import Target


class SessionCoverage:
    """What one pytest process collects; the controller also holds the workers' documents."""

    def __init__(self, gcov_on: bool, fcov_on: bool, parts: Path) -> None:
        self.collector = GcovCollector() if gcov_on else None
        self.sampler = CallSampler() if fcov_on else None
        self.tests: dict[str, list[str]] = {}  # nodeid -> source:function that ran (gcov)
        name = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"
        self.parts = parts
        self.part = parts / f"{name}.json"
        self.remove = install(self.attach)

    def save(self) -> None:
        """This process's totals so far, replaced whole (a crash leaves the previous ones)."""
        self.parts.mkdir(parents=True, exist_ok=True)
        tmp = self.part.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.document()))
        os.replace(tmp, self.part)

    def attach(self, t: Target) -> None:
        if self.collector is not None:
            self.collector.attach(t)
        if self.sampler is not None:
            self.sampler.attach(t)

    def after_test(self, nodeid: str) -> None:
        if self.sampler is not None:
            self.sampler.flush()
        if self.collector is not None:
            self.collector.collect_all()
            ran = self.collector.take_current()
            if ran:
                self.tests[nodeid] = sorted(set(self.tests.get(nodeid, [])) | set(ran))
                self.parts.mkdir(parents=True, exist_ok=True)
                with open(self.part.with_suffix(".tests"), "a") as f:  # appended: grows with the run
                    f.write(json.dumps({nodeid: self.tests[nodeid]}) + "\n")
        self.save()

    def document(self) -> dict[str, Any]:
        return {
            "fcov": self.sampler.group.to_json() if self.sampler is not None else None,
            "calls": self.sampler.calls if self.sampler is not None else 0,
            "gcov": [c.to_json() for c in self.collector.totals.values()] if self.collector else [],
            "gcov_failures": self.collector.failures if self.collector else [],
            "gcov_collections": self.collector.collections if self.collector else 0,
        }


STATE = pytest.StashKey[SessionCoverage]()
RESULT = pytest.StashKey[list[str]]()  # the lines the terminal summary prints


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("piix3", "piix3-harness")
    group.addoption(
        "--piix3-gcov",
        action="store_true",
        default=False,
        help="collect the gcov counters of every machine running an instrumented kernel (make "
        "coverage-guest) and write its .gcda files at the end (make coverage renders them)",
    )
    group.addoption(
        "--piix3-fcov",
        action="store_true",
        default=False,
        help="functional coverage of the ATA protocol: sample every driver call and its device "
        "trace; report the bins at the end (JSON, Markdown, HTML in --piix3-coverage-dir)",
    )
    group.addoption(
        "--piix3-fcov-fail-under",
        type=float,
        default=None,
        metavar="PCT",
        help="with --piix3-fcov: fail the session if fewer than PCT %% of the bins are hit",
    )
    group.addoption(
        "--piix3-coverage-dir",
        default=None,
        metavar="DIR",
        help="where the coverage reports go (default: build/coverage under the rootdir)",
    )


def pytest_configure(config: pytest.Config) -> None:
    gcov_on = bool(config.getoption("--piix3-gcov"))
    fcov_on = bool(config.getoption("--piix3-fcov"))
    under = config.getoption("--piix3-fcov-fail-under")
    if under is not None and not fcov_on:
        raise pytest.UsageError("--piix3-fcov-fail-under needs --piix3-fcov")
    if under is not None and not 0 <= under <= 100:
        raise pytest.UsageError(f"--piix3-fcov-fail-under {under}: give a percentage 0..100")
    if gcov_on or fcov_on:
        parts = _report_dir(config) / ".parts"
        if not hasattr(config, "workerinput"):  # the controller (or the only process) starts afresh
            shutil.rmtree(parts, ignore_errors=True)
        config.stash[STATE] = SessionCoverage(gcov_on, fcov_on, parts)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is not None:
        state.remove()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """After the test's fixtures are gone: its calls end and its counters are read."""
    try:
        return (yield)
    finally:
        state = item.config.stash.get(STATE, None)
        if state is not None:
            state.after_test(item.nodeid)


def _report_dir(config: pytest.Config) -> Path:
    opt = config.getoption("--piix3-coverage-dir")
    return Path(opt).absolute() if opt else config.rootpath / "build" / "coverage"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(STATE, None)
    if state is None:
        return
    state.save()
    if hasattr(config, "workerinput"):  # an xdist worker: the controller reports
        return
    docs = []
    tests: dict[str, list[str]] = {}
    for part in sorted(state.parts.glob("*.json")):  # every process's, crashed workers' too
        docs.append(json.loads(part.read_text()))
        tests_file = part.with_suffix(".tests")
        if tests_file.exists():
            for line in tests_file.read_text().splitlines():
                tests.update(json.loads(line))
    out = _report_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if state.sampler is not None:
        lines += _functional(config, session, docs, out)
    if state.collector is not None:
        lines += _gcov(docs, tests, out)
    config.stash[RESULT] = lines


def _functional(
    config: pytest.Config, session: pytest.Session, docs: list[dict[str, Any]], out: Path
) -> list[str]:
    group: Covergroup = functional.new_group()
    try:
        for d in docs:
            if d.get("fcov"):
                group.merge(d["fcov"])
    except CoverError as exc:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return [f"functional coverage: the workers' documents do not merge: {exc}"]
    (out / "functional.json").write_text(group.dumps() + "\n")
    (out / "functional.md").write_text(group.markdown())
    (out / "functional.html").write_text(group.html())
    calls = sum(int(d.get("calls", 0)) for d in docs)
    lines = [
        f"functional coverage of the ATA protocol ({calls} driver calls, {group.samples} samples; "
        f"{out / 'functional.md'}, .html, .json)",
        group.table(),
    ]
    under = config.getoption("--piix3-fcov-fail-under")
    if under is not None and group.percent() + 1e-9 < under:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        lines.append(
            f"FAIL: functional coverage {group.percent():.1f}% is under --piix3-fcov-fail-under {under:g}"
        )
    return lines


def _gcov(docs: list[dict[str, Any]], tests: dict[str, list[str]], out: Path) -> list[str]:
    merged = gcov.merge_json(g for d in docs for g in d.get("gcov", []))
    failures = [f for d in docs for f in d.get("gcov_failures", [])]
    collections = sum(int(d.get("gcov_collections", 0)) for d in docs)
    (out / "gcov-tests.json").write_text(json.dumps(tests, indent=1, sort_keys=True) + "\n")
    if not merged:
        return ["gcov: no machine ran an instrumented kernel (make coverage-guest; PIIX3_KERNEL=...)"]
    lines = []
    for entry in merged.values():
        try:
            layout = gcov.GcovLayout.from_elf(entry["kernel"])
            if layout is None or layout.key() != entry["key"]:
                lines.append(
                    f"gcov: {entry['kernel']} changed during the session; its counters are not written"
                )
                continue
            written = gcov.write_gcda(layout, entry["values"])
        except (OSError, gcov.GcovError) as exc:
            lines.append(f"gcov: the counters of {entry['kernel']} could not be written: {exc}")
            continue
        lines.append(
            f"gcov: {len(written)} .gcda files for {entry['kernel']} ({collections} collections, "
            f"functions per test in {out / 'gcov-tests.json'})"
        )
    if failures:
        lines.append(f"gcov: {len(failures)} collection(s) could not read guest RAM, e.g. {failures[0]}")
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(RESULT, None)
    if not lines:
        return
    terminalreporter.section("piix3 coverage")
    for block in lines:
        for line in block.splitlines():
            terminalreporter.write_line(line)
