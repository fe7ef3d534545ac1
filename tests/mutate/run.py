"""`make mutate`: the project's own mutation run over the driver (guest/ata.c, guest/pci.c).

Each mutant is one change: a relational operator flipped (== !=, < <=, > >=), && and || swapped,
+ and -, | and &, << and >> swapped, a ! dropped, an integer constant moved by one, or a
one-line statement deleted (a port write, a delay, an assignment, a call). Each is built with
the project's Makefile into a directory of its own (tests/mutate/guestbuild.py); one that does
not compile, or compiles to the same code as the driver (the kernel's sections, symbols and
debug information stripped), is skipped, and so are the known equivalent ones listed in
tests/mutate/equivalent.txt (with the reason each one cannot be told apart). The suite then runs
against each remaining mutant through $PIIX3_KERNEL, stopping at its first failure (-x): a
failure kills the mutant once the failing test fails again when run alone (a test that fails
now and then by itself kills nothing: the mutant is run for again, and called flaky if that
happens twice); a clean run means it survived. A baseline run on the unaltered driver comes
first; a test failing there (twice) is left out of the mutant runs, and named.

    .venv/bin/python tests/mutate/run.py --sample 100 --seed 1    # or: make mutate ARGS='...'
    .venv/bin/python tests/mutate/run.py --list                   # every mutant and its key
    .venv/bin/python tests/mutate/run.py --only 'KEY' [--only ...] # just these

Prints killed/total over the non-equivalent mutants run, and every survivor; --report writes
the whole result as JSON. Every core is used (--jobs): one mutant per job, each pytest on one
core. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guestbuild  # noqa: E402  (a script beside this one)

REPO = guestbuild.REPO
SOURCES = ("ata.c", "pci.c")
EQUIVALENT = Path(__file__).resolve().parent / "equivalent.txt"
# The suite against a mutant: the tests that run the driver, fastest killers first (pytest drops
# the duplicates the directories add). Unit tests and the disk-image tests never boot the kernel.
TESTS = (
    "tests/integration/test_driver.py",
    "tests/integration/test_gaps.py",
    "tests/integration/test_driver_edges.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_seeded_bugs.py",
    "tests/integration/test_skeleton.py",
    "tests/integration/test_ports.py",
    "tests/integration",
    "tests/hostile",
)
# Never against a mutant: these build their own kernels from guest/ and test the checker.
ALWAYS_DESELECTED = (
    "tests/integration/test_seeded_bugs.py::test_the_checker_names_the_seeded_bug",
    "tests/hostile/test_disk_hostile.py",
)
# A reason starting so: the mutant differs, but only where no machine the suite can make shows
# it (timing under QEMU's 1 us stamps, a drive QEMU cannot present); counted apart.
UNOBSERVABLE = "[unobservable]"
MUTANT_TIMEOUT = 1800.0  # s, for one mutant's whole suite (a hung guest costs the harness's own bounds)
KILL_GRACE = 10.0
OUTPUT_KEPT = 4000  # characters of pytest's output kept in the report for each kill


# --- mutants ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mutant:
    """One change to one source file: `before` at byte offset `start` becomes `after`."""

    file: str
    line: int
    start: int
    before: str
    after: str
    operator: str
    key: str  # stable across unrelated edits: file, the line's text, the change, its occurrence

    def describe(self) -> str:
        return f"{self.file}:{self.line} [{self.operator}] {self.before!r} -> {self.after!r}"


_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      |(?P<comment>/\*.*?\*/|//[^\n]*)
      |(?P<string>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
      |(?P<number>0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*)
      |(?P<ident>[A-Za-z_]\w*)
      |(?P<op><<=|>>=|->|\+\+|--|&&|\|\||==|!=|<=|>=|<<|>>|\+=|-=|\|=|&=|[-+*/%<>=!&|^~?:;,.(){}\[\]])
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_SWAPS = {
    "==": ["!="],
    "!=": ["=="],
    "<": ["<="],
    "<=": ["<"],
    ">": [">="],
    ">=": [">"],
    "&&": ["||"],
    "||": ["&&"],
    "<<": [">>"],
    ">>": ["<<"],
    "+=": ["-="],
    "-=": ["+="],
    "|=": ["&="],
    "&=": ["|="],
}
_BINARY = {"+": ["-"], "-": ["+"], "|": ["&"], "&": ["|"]}
_KEYWORDS = {"return", "case", "sizeof", "else", "do"}
# A one-line statement that can go: a call or an assignment, not a declaration or a return.
_STATEMENT = re.compile(
    r"^(?P<indent>[ \t]+)(?P<stmt>(?!return\b|if\b|for\b|while\b|else\b|switch\b|case\b|break\b)"
    r"(?:[A-Za-z_][\w.\->\[\]* ]*\s*(?:=|\|=|&=|\+=|-=)\s*[^;]*|[A-Za-z_]\w*\s*\([^;]*\))\s*;)"
    r"[ \t]*(?:/\*.*\*/)?[ \t]*$"
)
_DECLARATION = re.compile(r"^(?:const\s+)?(?:struct\s+\w+|u?int\d+_t|int|uint8_t|char|uintptr_t)\b[\s*]")


def _ends_operand(kind: str, text: str) -> bool:
    """Does a token of this kind end an operand (so that + - | & after it are binary)?"""
    if kind == "ident":
        return text not in _KEYWORDS
    return kind == "number" or text in (")", "]")


def _number_mutations(text: str) -> list[str]:
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|\d+)([uUlL]*)", text)
    if not m:
        return []
    digits, suffix = m.groups()
    value = int(digits, 0)
    out = []
    for v in (value + 1, value - 1):
        if v < 0:
            continue
        if digits[:2] in ("0x", "0X"):
            out.append(f"{digits[:2]}{v:0{len(digits) - 2}X}{suffix}")
        else:
            out.append(f"{v}{suffix}")
    return out


def mutants_of(name: str, source: str) -> list[Mutant]:
    """Every mutant of one source file."""
    found: list[tuple[int, str, str, str]] = []  # (offset, before, after, operator)
    depth = 0
    prev_kind, prev_text = "", ""
    line_start = True
    in_define = False
    for m in _TOKEN.finditer(source):
        kind, text, pos = m.lastgroup or "", m.group(), m.start()
        if kind == "ws":
            if "\n" in text:
                line_start, in_define = True, False
            continue
        if line_start and text == "#":
            rest = source[pos : source.find("\n", pos)]
            in_define = rest.startswith("#define")
            # the directive's name and, for #include, its file are no code
            prev_kind, prev_text, line_start = "op", "#", False
            continue
        line_start = False
        if kind in ("comment", "string", "other"):
            prev_kind, prev_text = kind, text
            continue
        if in_define:
            if kind == "number":
                found += [(pos, text, alt, "constant") for alt in _number_mutations(text)]
            prev_kind, prev_text = kind, text
            continue
        if text == "{":
            depth += 1
        elif text == "}":
            depth -= 1
        elif depth > 0:
            if kind == "number":
                found += [(pos, text, alt, "constant") for alt in _number_mutations(text)]
            elif kind == "op" and text in _SWAPS:
                found += [(pos, text, alt, "operator") for alt in _SWAPS[text]]
            elif kind == "op" and text in _BINARY and _ends_operand(prev_kind, prev_text):
                found += [(pos, text, alt, "operator") for alt in _BINARY[text]]
            elif text == "!":
                found.append((pos, "!", "", "negation"))
        prev_kind, prev_text = kind, text
    # one-line statements inside functions (lines indented by a tab)
    offset = 0
    for line in source.splitlines(keepends=True):
        st = _STATEMENT.match(line.rstrip("\n"))
        if st and line.startswith("\t") and not _DECLARATION.match(st.group("stmt")):
            stmt = st.group("stmt")
            found.append((offset + st.start("stmt"), stmt, ";", "delete"))
        offset += len(line)
    out = []
    seen: dict[str, int] = {}
    for pos, before, after, op in sorted(found):
        line_no = source.count("\n", 0, pos) + 1
        line_text = " ".join(source.splitlines()[line_no - 1].split())  # no tabs in a key
        base = f"{name} | {line_text} | {before} -> {after or '(nothing)'}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(Mutant(name, line_no, pos, before, after, op, f"{base} | #{n}"))
    return out


def all_mutants() -> list[Mutant]:
    out: list[Mutant] = []
    for name in SOURCES:
        out += mutants_of(name, (guestbuild.GUEST / name).read_text())
    return out


def apply(mutant: Mutant, src_dir: Path) -> None:
    path = src_dir / mutant.file
    text = path.read_text()
    if text[mutant.start : mutant.start + len(mutant.before)] != mutant.before:
        raise guestbuild.PatchFailed(f"{mutant.describe()}: source changed under the runner")
    path.write_text(text[: mutant.start] + mutant.after + text[mutant.start + len(mutant.before) :])


def read_equivalent(path: Path = EQUIVALENT) -> dict[str, str]:
    """Known-equivalent mutants: `key<TAB>reason` lines (# comments, blank lines ignored)."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, reason = raw.partition("\t")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{n}: want `key<TAB>reason`, got {raw!r}")
        out[key.strip()] = reason.strip()
    return out


# --- running ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    key: str
    where: str
    status: str  # killed | survived | flaky | no-compile | identical | equivalent | timeout | error
    seconds: float = 0.0
    detail: str = ""  # the killing test, the compiler's complaint, the reason
    output: str = ""  # the end of pytest's output, for a killed mutant


@dataclass
class Runner:
    work: Path
    jobs: int
    firmware: str
    deselect: list[str] = field(default_factory=list)
    timeout: float = MUTANT_TIMEOUT
    groups: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False

    def pytest_argv(self, basetemp: Path, stop_first: bool, nodes: Sequence[str] = ()) -> list[str]:
        """pytest on the suite (TESTS, less the deselected), or on just `nodes`."""
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}"]
        argv += [f"--piix3-firmware={self.firmware}", "-o", "console_output_style=classic"]
        if stop_first:
            argv.append("-x")
        if nodes:
            return argv + list(nodes)
        for node in (*ALWAYS_DESELECTED, *self.deselect):
            argv.append(f"--deselect={node}")
        return argv + list(TESTS)

    def run_suite(
        self, kernel: Path, basetemp: Path, stop_first: bool, nodes: Sequence[str] = ()
    ) -> tuple[int | None, str]:
        """The suite (or `nodes`) against a kernel: (pytest's exit status or None on timeout, its
        output)."""
        env = dict(os.environ, PIIX3_KERNEL=str(kernel))
        env.pop("PYTEST_ADDOPTS", None)
        with self.lock:
            if self.stopping:
                return 2, "interrupted"
        proc = subprocess.Popen(
            self.pytest_argv(basetemp, stop_first, nodes),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        with self.lock:
            self.groups.add(proc.pid)
            if self.stopping:  # stop_all ran between the check above and this start
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=self.timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            self._kill(proc)
            return None, ""
        finally:
            with self.lock:
                self.groups.discard(proc.pid)

    def _kill(self, proc: subprocess.Popen[str]) -> None:
        """End a suite run: SIGTERM to its group (pytest tears its machines down), then SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            groups = list(self.groups)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)

    def build(self, name: str, mutant: Mutant | None) -> Path:
        src = guestbuild.copy_guest(self.work / name)
        if mutant is not None:
            apply(mutant, src)
        return guestbuild.build(src)

    def one(self, mutant: Mutant, reference: str, n: int) -> Outcome:
        t0 = time.monotonic()
        where = mutant.describe()
        out = Outcome(mutant.key, where, "error")
        if self.stopping:
            out.detail = "interrupted"
            return out
        name = f"m{n:04d}"
        try:
            try:
                kernel = self.build(name, mutant)
            except guestbuild.BuildFailed as exc:
                out.status, out.detail = "no-compile", _first_error(str(exc))
                return out
            if guestbuild.code_digest(kernel) == reference:
                out.status = "identical"
                return out
            out.status, out.detail, out.output = self.judge(kernel, self.work / name)
            return out
        finally:
            out.seconds = time.monotonic() - t0
            shutil.rmtree(self.work / name, ignore_errors=True)

    def judge(self, kernel: Path, base: Path) -> tuple[str, str, str]:
        """Run the suite against a mutant: (status, detail, output kept). A failure counts once
        the failing test fails again when run alone; one that does not is run for again, and
        a second such is "flaky" (the suite has a test that fails now and then by itself). A run
        that pytest itself did not finish is run again once."""
        unconfirmed: list[str] = []
        for attempt in range(2):
            rc, text = self.run_suite(kernel, base / f"suite{attempt}", stop_first=True)
            if self.stopping:
                return "error", "interrupted", ""
            if rc is None:
                return "timeout", f"the suite ran over {self.timeout:.0f} s", ""
            if rc == 0:
                why = f"; not reproduced alone: {', '.join(unconfirmed)}" if unconfirmed else ""
                return "survived", why.lstrip("; "), ""
            if rc != 1:  # not a test failure: pytest itself stopped (a signal, an internal error)
                if attempt == 0:
                    unconfirmed.append(f"(pytest exit status {rc})")
                    continue
                return "error", f"pytest exit status {rc} twice: {text.strip()[-400:]}", ""
            failed = _failed_nodes(text)
            if not failed:
                return "killed", _failure(text), text[-OUTPUT_KEPT:]
            again, _ = self.run_suite(kernel, base / f"confirm{attempt}", stop_first=True, nodes=failed[:1])
            if again == 1:
                return "killed", _failure(text), text[-OUTPUT_KEPT:]
            unconfirmed.append(failed[0])
        return "flaky", "failed in the suite, passed alone: " + ", ".join(unconfirmed), ""


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "error" in line:
            return line.strip()[:200]
    return text.strip()[:200]


def _failure(text: str) -> str:
    """The first failing test named in pytest's summary."""
    for line in text.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:300]
    return "(a failure; no summary line)"


def _failed_nodes(text: str) -> list[str]:
    """The node ids of pytest's short summary lines (`FAILED id - message`; an id's
    parameters may hold spaces)."""
    nodes = []
    for line in text.splitlines():
        m = re.match(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", line)
        if m:
            nodes.append(m.group(1))
    return nodes


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does (the suites under way are ended first)."""
    raise KeyboardInterrupt


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="piix3-mutate-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/mutate/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=None, metavar="N", help="run N mutants drawn at random")
    parser.add_argument("--seed", type=int, default=1, help="seed for --sample (default 1)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="KEY", help="run the mutant with this key"
    )
    parser.add_argument("--list", action="store_true", help="list every mutant (key and place) and exit")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="mutants at once (default: cores)"
    )
    parser.add_argument("--firmware", default="both", help="--piix3-firmware for the suite (default both)")
    parser.add_argument(
        "--timeout", type=float, default=MUTANT_TIMEOUT, help="seconds for one mutant's suite"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unaltered driver")
    parser.add_argument("--report", type=Path, default=REPO / "build" / "mutate" / "report.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep builds here (default: a temp dir)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)

    mutants = all_mutants()
    if args.list:
        for m in mutants:
            print(f"{m.describe()}\n    {m.key}")
        print(f"{len(mutants)} mutants", file=sys.stderr)
        return 0
    equivalent = read_equivalent()
    unobservable = {k for k, why in equivalent.items() if why.startswith(UNOBSERVABLE)}
    unknown = sorted(set(equivalent) - {m.key for m in mutants})
    if unknown:
        print(f"mutate: {EQUIVALENT.name} lists keys no mutant has (stale?):", file=sys.stderr)
        for key in unknown:
            print(f"  {key}", file=sys.stderr)
    chosen = mutants
    if args.only:
        by_key = {m.key: m for m in mutants}
        missing = [k for k in args.only if k not in by_key]
        if missing:
            print(f"mutate: no mutant has the key(s): {missing}", file=sys.stderr)
            return 2
        chosen = [by_key[k] for k in args.only]
    elif args.sample is not None:
        chosen = sorted(
            random.Random(args.seed).sample(mutants, min(args.sample, len(mutants))),
            key=lambda m: (m.file, m.start),
        )
    what = f"{len(chosen)} of {len(mutants)} mutants" + (
        f" (sample, seed {args.seed})" if args.sample else ""
    )
    print(f"mutate: {what} from {', '.join('guest/' + s for s in SOURCES)}; {args.jobs} job(s)", flush=True)

    t0 = time.monotonic()
    with _workdir(args.workdir) as work:
        runner = Runner(work, max(1, args.jobs), args.firmware, timeout=args.timeout)
        reference = guestbuild.code_digest(runner.build("reference", None))
        if not args.no_baseline:
            print("mutate: baseline: the suite on the unaltered driver ...", flush=True)
            kernel = work / "reference" / "build" / "guest" / "kernel.elf"
            rc, text = runner.run_suite(kernel, work / "reference" / "pytest", stop_first=False)
            if rc == 1:  # a test failing now and then by itself is no reason to leave it out
                again, _ = runner.run_suite(kernel, work / "reference" / "again", False, _failed_nodes(text))
                if again == 0:
                    rc, text = 0, ""
            if rc is None:
                print("mutate: the baseline run timed out", file=sys.stderr)
                return 2
            failing = _failed_nodes(text)
            if rc not in (0, 1) or (rc == 1 and not failing):
                print(
                    f"mutate: the baseline run did not complete (pytest exit {rc}):\n{text[-2000:]}",
                    file=sys.stderr,
                )
                return 2
            runner.deselect = failing
            for node in failing:
                print(f"mutate: baseline: {node} fails on the unaltered driver: left out", flush=True)
            print(f"mutate: baseline: {_clock(time.monotonic() - t0)}", flush=True)
        outcomes: list[Outcome] = []
        todo = []
        for m in chosen:
            if m.key in equivalent:
                outcomes.append(Outcome(m.key, m.describe(), "equivalent", detail=equivalent[m.key]))
            else:
                todo.append(m)
        pool = ThreadPoolExecutor(max_workers=runner.jobs)
        try:
            futures = [pool.submit(runner.one, m, reference, n) for n, m in enumerate(todo)]
            for done, fut in enumerate(futures, 1):
                o = fut.result()
                outcomes.append(o)
                print(f"  [{done}/{len(todo)}] {o.status:<10} {o.seconds:6.1f}s  {o.where}", flush=True)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: end the suites under way, start no more
            runner.stop_all()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
    elapsed = time.monotonic() - t0
    count = {
        s: sum(o.status == s for o in outcomes) for s in ("killed", "timeout", "survived", "flaky", "error")
    }
    skipped = {s: sum(o.status == s for o in outcomes) for s in ("no-compile", "identical", "equivalent")}
    judged = count["killed"] + count["timeout"] + count["survived"] + count["flaky"]
    killed = count["killed"] + count["timeout"]
    share = 100.0 * killed / judged if judged else 0.0
    hidden = sum(o.status == "equivalent" and o.key in unobservable for o in outcomes)
    print(
        f"mutate: {len(chosen)} mutants: {skipped['no-compile']} did not compile, "
        f"{skipped['identical']} compiled to identical code, {skipped['equivalent']} known equivalent "
        f"({hidden} of them {UNOBSERVABLE}: see {EQUIVALENT.name}), {count['error']} could not be judged"
    )
    print(
        f"mutate: killed {killed}/{judged} non-equivalent ({share:.1f}%; {count['timeout']} by a timeout), "
        f"{count['survived']} survived, {count['flaky']} flaky (not counted as killed); "
        f"{_clock(elapsed)} on {runner.jobs} job(s)"
    )
    for o in outcomes:
        if o.status in ("survived", "flaky", "error"):
            print(f"  {o.status}: {o.where}\n      {o.key}" + (f"\n      {o.detail}" if o.detail else ""))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        json.dumps(
            {
                "mutants": len(mutants),
                "chosen": len(chosen),
                "seed": args.seed if args.sample else None,
                "killed": killed,
                "judged": judged,
                "seconds": round(elapsed, 1),
                "jobs": runner.jobs,
                "deselected": runner.deselect,
                "outcomes": [asdict(o) for o in outcomes],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"mutate: report: {args.report}")
    return 0 if count["survived"] + count["flaky"] + count["error"] == 0 else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("mutate: interrupted; the suites under way were ended", file=sys.stderr)
        raise SystemExit(130) from None
