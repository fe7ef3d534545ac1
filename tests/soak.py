"""Soak: many warm resets and power cycles, each with a write and a read-back; counts failures,
leaked processes and file descriptors, and the harness's memory. Run by hand, not in CI:

    .venv/bin/python tests/soak.py --resets 500 --power-cycles 100
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from harness import DiskImage, HarnessError, Machine, procs

RSS_GROWTH_LIMIT_MIB = 2.0  # "flat": allocator noise, not a per-cycle leak


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resets", type=int, default=500)
    ap.add_argument("--power-cycles", type=int, default=100)
    ap.add_argument("--firmware", default="seabios")
    args = ap.parse_args()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="piix3-soak-") as tmp:
        disk = DiskImage.create(Path(tmp) / "soak.img", size_mib=16)
        # warm-up machine so lazily imported modules and caches are in place before counting
        with Machine(disks=[disk], firmware=args.firmware) as m:
            m.ata.read(0, 0, 1)
        fds0, rss0, children0 = open_fds(), rss_mib(), len(procs.STARTED_CHILDREN)
        t0 = time.monotonic()
        with Machine(disks=[disk], firmware=args.firmware) as m:
            for kind, n, action in (
                ("reset", args.resets, m.reset),
                ("power cycle", args.power_cycles, m.power_cycle),
            ):
                for i in range(n):
                    data = (f"{kind} {i}".encode()).ljust(512, b".")
                    try:
                        m.ata.write(0, i % disk.sectors, data)
                        action()
                        if m.ata.read(0, i % disk.sectors, 1) != data:
                            failures.append(f"{kind} {i}: data differs after the reboot")
                    except HarnessError as exc:
                        failures.append(f"{kind} {i}: {exc}")
                    if (i + 1) % 50 == 0:
                        print(f"{kind}: {i + 1}/{n}, rss {rss_mib():.1f} MiB, fds {open_fds()}", flush=True)
        elapsed = time.monotonic() - t0
        alive = [p for p in procs.STARTED_CHILDREN[children0:] if procs.pid_alive(p)]
        fds1, rss1 = open_fds(), rss_mib()
    print(f"soak: {args.resets} resets + {args.power_cycles} power cycles in {elapsed:.1f} s")
    print(f"  failures: {len(failures)}")
    for f in failures[:20]:
        print(f"    {f}")
    print(f"  processes started: {len(procs.STARTED_CHILDREN) - children0}, still alive: {len(alive)}")
    print(f"  open fds: {fds0} before, {fds1} after")
    print(
        f"  harness RSS: {rss0:.1f} MiB before, {rss1:.1f} MiB after "
        f"(max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB)"
    )
    ok = not failures and not alive and fds1 <= fds0 and rss1 - rss0 < RSS_GROWTH_LIMIT_MIB
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
