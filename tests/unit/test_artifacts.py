"""artifacts.shrink: a kept log past its bound keeps its beginning and its end."""

from __future__ import annotations

import os
from pathlib import Path

from harness import artifacts


def test_a_large_log_keeps_its_head_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "qemu-trace.log"
    body = bytes(range(256)) * 40  # 10240 bytes
    log.write_bytes(body)
    assert artifacts.shrink(log, keep=1000) == len(body) - 1000
    text = log.read_bytes()
    assert text.startswith(body[:500]) and text.endswith(body[-500:])
    assert b"9240 bytes of this log cut here" in text
    assert not (tmp_path / "qemu-trace.log.part").exists()


def test_a_log_within_bounds_or_missing_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "small.log"
    log.write_bytes(b"x" * 1000)
    assert artifacts.shrink(log, keep=1000) == 0 and log.read_bytes() == b"x" * 1000
    assert artifacts.shrink(tmp_path / "missing.log", keep=10) == 0


def test_a_planted_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"y" * 5000)
    link = tmp_path / "qemu-trace.log"
    os.symlink(target, link)
    assert artifacts.shrink(link, keep=100) == 0
    assert target.read_bytes() == b"y" * 5000 and link.is_symlink()
