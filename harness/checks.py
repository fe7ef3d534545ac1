"""Argument checks shared by the public calls: exact types, finite numbers, bounded ranges.

Python's ints are unbounded and the guest's are not: a value is checked here, before it is
packed into a fixed-width field, so that nothing wraps silently into another drive or LBA.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Problem = Callable[[str], Exception]


def is_int(value: object) -> bool:
    """An exact integer: int, not bool (True is 1 to Python, never a drive or LBA to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_problem(name: str, value: object, lo: int, hi: int) -> str | None:
    """Why value is not an integer in lo..hi (None if it is)."""
    if not is_int(value):
        return f"{name} must be an integer in {lo}..{hi}, not {type(value).__name__} {value!r:.40}"
    assert isinstance(value, int)
    if not lo <= value <= hi:
        return f"{name} {value} is out of range {lo}..{hi}"
    return None


def seconds(name: str, value: object, error: Problem) -> float:
    """A positive, finite number of seconds, or error(message)."""
    if is_int(value) or isinstance(value, float):
        number = float(value)  # type: ignore[arg-type]
        if math.isfinite(number) and number > 0:
            return number
    raise error(f"{name} must be a positive, finite number of seconds, not {value!r:.40}")


def text(name: str, value: object, error: Problem) -> str:
    """A str without NUL bytes (it may end up in a command line or a file name)."""
    if not isinstance(value, str) or "\0" in value:
        raise error(f"{name} must be a string without NUL bytes, not {value!r:.40}")
    return value
