"""`piix3 check-trace FILE [--json]`: run the protocol checker (harness/protocol.py) over a QEMU
trace log recorded with `-trace 'ide_*' -trace 'bmdma_*' -msg timestamp=on -D FILE`.

Exit status: 0 clean, 1 violations, 2 the file could not be read as such a trace. One line per
violation on stdout (or one JSON document with --json); a one-line summary on stderr.

For the `piix3` command: `add_arguments(subparser)` then `run(args)`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.portio.devtrace import DeviceRecord, parse_trace
from harness.portio.protocol import check, hardware_resets, interrupts, origin_of, render_json, render_text

PROG = "piix3 check-trace"
EXIT_CLEAN, EXIT_VIOLATIONS, EXIT_UNREADABLE = 0, 1, 2
BINARY_SAMPLE = 8192  # bytes looked at to tell a text log from binary data


class TraceUnreadable(Exception):
    """The file is not a readable QEMU IDE trace; the message says why, in one line."""


def read_trace(path: Path) -> DeviceRecord:
    """The file parsed into a DeviceRecord; TraceUnreadable if it is missing, not a file,
    binary, or holds no IDE or bus-master access."""
    try:
        if path.is_dir():
            raise TraceUnreadable(f"{path}: is a directory, not a trace log")
        data = path.read_bytes()
    except FileNotFoundError:
        raise TraceUnreadable(f"{path}: no such file") from None
    except OSError as exc:
        raise TraceUnreadable(f"{path}: cannot read: {exc.strerror or exc}") from None
    if b"\0" in data[:BINARY_SAMPLE]:
        raise TraceUnreadable(f"{path}: binary data, not a QEMU trace log")
    rec = parse_trace(data.decode("utf-8", errors="replace").splitlines())
    if not rec.events:
        raise TraceUnreadable(
            f"{path}: no IDE or bus-master accesses in it (record with -trace 'ide_*' -trace 'bmdma_*' "
            "-msg timestamp=on -D FILE)"
        )
    return rec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="QEMU log (-D) with ide_*/bmdma_* trace events")
    parser.add_argument("--json", action="store_true", help="print the violations as one JSON document")
    parser.add_argument(
        "--strict-timing",
        action="store_true",
        help="also report status reads right after a Device or Command write with no other register "
        "access and under 1 us between them (400 ns rules; see harness/protocol.py)",
    )


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        rec = read_trace(path)
    except TraceUnreadable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    resets = hardware_resets(rec.actions)
    violations = check(
        rec.events,
        hardware_resets=resets,
        strict_timing=args.strict_timing,
        interrupts=interrupts(rec.actions) or None,  # none: pic_interrupt may not have been traced
    )
    origin = origin_of(rec.events)
    stamped = sum(e.time_us is not None for e in rec.events)
    if args.json:
        print(
            render_json(
                violations,
                origin,
                file=str(path),
                accesses=len(rec.events),
                stamped=stamped,
                unparsed_lines=len(rec.unparsed),
                strict_timing=bool(args.strict_timing),
            )
        )
    elif violations:
        print(render_text(violations, origin))
    note = "" if stamped else "; no timestamps (-msg timestamp=on): time rules not checked"
    print(
        f"{PROG}: {path}: {len(rec.events)} accesses, {len(violations)} violation(s){note}",
        file=sys.stderr,
    )
    return EXIT_VIOLATIONS if violations else EXIT_CLEAN


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Check a QEMU IDE/bus-master trace against the ATA and PIIX3 protocol rules."
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
