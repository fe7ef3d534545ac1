"""The mutation runner's own parts (tests/mutate/run.py), without building or booting anything:
which mutants a piece of C yields, how one is applied, the equivalence list's format."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mutate"))
import guestbuild  # noqa: E402  (tests/mutate is no package: the runner is a script)
import run  # noqa: E402

SNIPPET = """/* a comment: a < b && c == d */
#include "x.h"
#define LIMIT 0x10u
static int table[4];

int f(int a, int b)
{
	const char *s = "a < b";
	int n = -1;
	if (a < b && !g(a))
		h(a + 2, &n);
	table[0] = a | b;
	return a == b ? -a : n;
}
"""


def changes(source: str) -> list[tuple[int, str, str, str]]:
    return [(m.line, m.operator, m.before, m.after) for m in run.mutants_of("x.c", source)]


def test_mutants_of_a_snippet() -> None:
    got = changes(SNIPPET)
    assert (3, "constant", "0x10u", "0x11u") in got and (3, "constant", "0x10u", "0x0Fu") in got
    assert (10, "operator", "<", "<=") in got
    assert (10, "operator", "&&", "||") in got
    assert (10, "negation", "!", "") in got
    assert (11, "operator", "+", "-") in got
    assert (11, "constant", "2", "3") in got and (11, "constant", "2", "1") in got
    assert (11, "delete", "h(a + 2, &n);", ";") in got
    assert (12, "operator", "|", "&") in got
    assert (12, "delete", "table[0] = a | b;", ";") in got
    assert (13, "operator", "==", "!=") in got
    # nothing from comments, strings, #include, file-scope declarations
    assert not [c for c in got if c[0] in (1, 2, 4, 8)], got
    # unary minus and address-of are not binary operators; declarations and returns stay
    assert not [c for c in got if c[0] in (9, 13) and c[2] in ("-", "&")], got
    assert (11, "operator", "&", "|") not in got
    assert not [c for c in got if c[1] == "delete" and c[0] in (8, 9, 13)], got
    assert (9, "constant", "1", "2") in got and (9, "constant", "1", "0") in got


def test_keys_are_unique_and_tab_free() -> None:
    mutants = run.mutants_of("x.c", SNIPPET) + run.all_mutants()
    keys = [m.key for m in mutants]
    assert len(keys) == len(set(keys))
    assert not [k for k in keys if "\t" in k]


def test_apply_changes_exactly_the_mutant(tmp_path: Path) -> None:
    (tmp_path / "x.c").write_text(SNIPPET)
    m = next(m for m in run.mutants_of("x.c", SNIPPET) if m.before == "&&")
    run.apply(m, tmp_path)
    text = (tmp_path / "x.c").read_text()
    assert text == SNIPPET.replace("a < b && !g(a)", "a < b || !g(a)")
    with pytest.raises(guestbuild.PatchFailed):
        run.apply(m, tmp_path)  # the source no longer holds what the mutant changes


def test_equivalence_list_format(tmp_path: Path) -> None:
    listed = tmp_path / "equivalent.txt"
    listed.write_text("# comment\n\nkey one\tbecause\nkey two\t[unobservable] because\n")
    assert run.read_equivalent(listed) == {"key one": "because", "key two": "[unobservable] because"}
    listed.write_text("a key without a reason\n")
    with pytest.raises(SystemExit, match="want `key<TAB>reason`"):
        run.read_equivalent(listed)


def test_every_listed_equivalent_is_a_mutant_with_a_reason() -> None:
    keys = {m.key for m in run.all_mutants()}
    listed = run.read_equivalent()
    assert listed and set(listed) <= keys, sorted(set(listed) - keys)[:5]


def test_failed_node_ids_keep_their_spaces() -> None:
    """The id of a failing test is re-run alone: a parameter id with a space must survive."""
    text = (
        "FAILED tests/integration/test_x.py::test_a[qboot-drives 0+2] - AssertionError: no\n"
        "ERROR tests/integration/test_x.py::test_b\n"
        "FAILED tests/integration/test_x.py::test_c[seabios] - x - y\n"
        "some other line FAILED\n"
    )
    assert run._failed_nodes(text) == [
        "tests/integration/test_x.py::test_a[qboot-drives 0+2]",
        "tests/integration/test_x.py::test_b",
        "tests/integration/test_x.py::test_c[seabios]",
    ]
