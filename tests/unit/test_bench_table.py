"""The throughput table: irq-mode lines beside the polled ones, the targets the polled driver's."""

from __future__ import annotations

from harness.bench.report import MIB, Report, Throughput, render_throughput


def _cell(where: str, completion: str, mb_s: float) -> Throughput:
    return Throughput(where, "dma", "read", MIB, mb_s, MIB / mb_s, 5, 10, completion)


def test_irq_lines_follow_their_polled_line_without_targets() -> None:
    cells = [_cell("guest", "irq", 1200.0), _cell("guest", "poll", 1400.0), _cell("end to end", "irq", 900.0)]
    lines = render_throughput(cells).splitlines()
    polled = next(i for i, line in enumerate(lines) if line.startswith("DMA read   "))
    irq = lines[polled + 1]
    assert irq.startswith("DMA read irq") and "1200.0" in irq and "900.0" in irq
    assert "guest >= 1300 ok" in lines[polled] and ">=" not in irq  # targets: the polled driver's
    assert cells[0].target is None and cells[1].meets_target is True


def test_the_json_says_which_completion() -> None:
    report = Report(firmware="seabios", repeat=1, quick=True, throughput=[_cell("guest", "irq", 1.0)])
    assert report.as_dict()["throughput"][0]["completion"] == "irq"
