"""The Recorder interface both monitors share (the driver-side watch, the device-side trace):
`events` once closed, `with` ending in close(), `to_vcd()`, and a registry of recent recorders
for the pytest plugin. Apart from access.py, which GDB's own Python loads and which must not
need pyvcd."""

from __future__ import annotations

import collections
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from harness.errors import HarnessError
from harness.portio.access import PortAccess
from harness.portio.vcd import Waveform, drawable, write_vcd

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger(__name__)

RECENT_RECORDERS = 16  # recorders Recorder.made_since can still return
MAX_ARTIFACT_EVENTS = 200_000  # per recorder in write_recorders: ~10 MB of VCD
_RECORDER_NAMES = {"PortWatch": "ports", "DeviceTrace": "device"}


class Recorder:
    """What the driver-side watch and the device-side trace share: `events` (PortAccess) once
    closed, and `with` ending in close(); a close() failing while another exception is on its
    way is logged, not raised over it. `to_vcd(path)` draws the events as a waveform.

    Every recorder made in this process is numbered (`serial`), and the last RECENT_RECORDERS
    are kept, so a test's recorders can be found afterwards, even one a helper made and
    dropped: `mark = Recorder.mark()` before, then `Recorder.made_since(mark)` (the pytest
    plugin writes their VCDs when a test fails). A kept recorder keeps its machine's Python
    objects, nothing more: a closed machine's processes, files and guest RAM are gone."""

    events: list[PortAccess]
    serial: int
    _made: ClassVar[Iterator[int]] = itertools.count(1)
    _last: ClassVar[int] = 0
    _recent: ClassVar[collections.deque[Recorder]] = collections.deque(maxlen=RECENT_RECORDERS)

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        self = super().__new__(cls)
        self.serial = Recorder._last = next(Recorder._made)
        Recorder._recent.append(self)
        return self

    @staticmethod
    def mark() -> int:
        """The serial of the last recorder made so far (0 before any)."""
        return Recorder._last

    @staticmethod
    def made_since(mark: int) -> list[Recorder]:
        """The recorders made after mark() returned `mark`, oldest first (at most the last
        RECENT_RECORDERS of the process)."""
        return [r for r in Recorder._recent if r.serial > mark]

    def to_vcd(self, path: str | os.PathLike[str], *, gtkw: bool = True) -> Waveform:
        """Write `events` as a VCD file at path and a GTKWave save file beside it (.gtkw); see
        harness.portio.vcd for the signals and the time base. PortError if nothing to draw."""
        return write_vcd(self.events, Path(path), title=type(self).__name__, gtkw=gtkw)

    def close(self) -> None:
        raise NotImplementedError

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.close()
        except HarnessError:
            if exc is None:
                raise
            log.warning("could not end %s cleanly during an exception", type(self).__name__, exc_info=True)


def recorder_file_stem(recorder: Recorder) -> str:
    """'03-ports' for the third recorder made (a PortWatch), '04-device' (a DeviceTrace)."""
    kind = type(recorder).__name__
    return f"{recorder.serial:02d}-{_RECORDER_NAMES.get(kind, kind.lower())}"


def write_recorders(
    recorders: Iterable[Recorder], directory: str | Path, max_events: int = MAX_ARTIFACT_EVENTS
) -> list[Path]:
    """Each recorder's events as directory/NN-ports.vcd or NN-device.vcd (and .gtkw beside
    it), at most the last max_events of each (a failure is usually at the end; the file
    says so); recorders with nothing to draw are left out. The VCD paths written. PortError
    if a file cannot be written."""
    directory = Path(directory)
    written: list[Path] = []
    for recorder in recorders:
        events = recorder.events
        first = max(0, len(events) - max_events)
        tail = events[first:]
        if not any(drawable(e) for e in tail):
            continue
        directory.mkdir(parents=True, exist_ok=True)
        note = f"only accesses {first}..{len(events) - 1} of {len(events)}: the record's end" if first else ""
        wave = write_vcd(
            tail,
            directory / f"{recorder_file_stem(recorder)}.vcd",
            title=type(recorder).__name__,
            note=note,
            first=first,
        )
        written.append(wave.vcd)
    return written
