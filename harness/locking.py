"""One thread at a time per machine: the decorator its public calls share."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Concatenate, ParamSpec, Protocol, TypeVar


class Exclusive(Protocol):
    def exclusive(self) -> AbstractContextManager[None]: ...


S = TypeVar("S", bound=Exclusive)
P = ParamSpec("P")
R = TypeVar("R")


def exclusive(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run the method holding its object's exclusive(): a second thread waits for the first
    call to end (its data in the shared transfer buffer included)."""

    def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.exclusive():
            return method(self, *args, **kwargs)

    run.__name__ = method.__name__
    run.__qualname__ = method.__qualname__
    run.__doc__ = method.__doc__
    return run
