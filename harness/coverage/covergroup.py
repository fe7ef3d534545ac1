"""A small covergroup, SystemVerilog style: coverpoints with named bins, crosses of coverpoints,
hit counts, merging (xdist workers), and reports (a terminal table, JSON, Markdown, HTML).

    g = Covergroup("ata", [Coverpoint("mode", ["pio", "dma"]), Coverpoint("dir", ["read", "write"])],
                   [Cross("mode_x_dir", ("mode", "dir"))])
    g.sample(mode="dma", dir="read")      # each named coverpoint's bin, then every cross it completes
    g.percent(), g.unhit()                # 50.0 of bins hit; ["mode.pio", "dir.write", ...]

A value outside a coverpoint's bins is a CoverError: a sampler that names a bin that does not
exist is a bug, not a miss. `why` explains bins that cannot be hit (they still count as unhit).
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError


class CoverError(HarnessError):
    """A sample names a bin a coverpoint does not have, or coverage documents do not match."""


@dataclass
class Coverpoint:
    name: str
    bins: Sequence[str]
    doc: str = ""
    hits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bins = tuple(self.bins)
        if len(set(self.bins)) != len(self.bins):
            raise CoverError(f"coverpoint {self.name}: duplicate bins")
        for b in self.bins:
            self.hits.setdefault(b, 0)

    def sample(self, value: str) -> None:
        if value not in self.hits:
            raise CoverError(f"coverpoint {self.name} has no bin {value!r} (bins: {', '.join(self.bins)})")
        self.hits[value] += 1


@dataclass
class Cross:
    name: str
    points: tuple[str, ...]
    doc: str = ""
    hits: dict[tuple[str, ...], int] = field(default_factory=dict)


class Covergroup:
    def __init__(
        self,
        name: str,
        points: Sequence[Coverpoint],
        crosses: Sequence[Cross] = (),
        why: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.points = {p.name: p for p in points}
        self.crosses = {c.name: c for c in crosses}
        for c in crosses:
            missing = [p for p in c.points if p not in self.points]
            if missing:
                raise CoverError(f"cross {c.name}: no coverpoint {missing[0]}")
            for combo in itertools.product(*(self.points[p].bins for p in c.points)):
                c.hits.setdefault(combo, 0)
        self.why = dict(why or {})  # "point.bin" -> why it cannot be hit here
        self.samples = 0

    # --- sampling ------------------------------------------------------------------------------
    def sample(self, **values: str | None) -> None:
        """One sample: a bin per named coverpoint (None: this sample says nothing about it);
        every cross whose coverpoints all have a value is sampled too."""
        unknown = [k for k in values if k not in self.points]
        if unknown:
            raise CoverError(f"covergroup {self.name} has no coverpoint {unknown[0]}")
        self.samples += 1
        for name, value in values.items():
            if value is not None:
                self.points[name].sample(value)
        for c in self.crosses.values():
            combo = tuple(values.get(p) for p in c.points)
            if all(v is not None for v in combo):
                c.hits[combo] += 1  # type: ignore[index]  # all str: checked above

    # --- figures -------------------------------------------------------------------------------
    def bins(self) -> list[tuple[str, int]]:
        """("point.bin" or "cross.a*b", hits) for every bin, coverpoints first."""
        out = [(f"{p.name}.{b}", n) for p in self.points.values() for b, n in p.hits.items()]
        out += [(f"{c.name}.{'*'.join(k)}", n) for c in self.crosses.values() for k, n in c.hits.items()]
        return out

    def rows(self) -> list[tuple[str, int, int]]:
        """(coverpoint or cross, bins, bins hit) per item."""
        out = [(p.name, len(p.hits), sum(1 for n in p.hits.values() if n)) for p in self.points.values()]
        out += [(c.name, len(c.hits), sum(1 for n in c.hits.values() if n)) for c in self.crosses.values()]
        return out

    def percent(self) -> float:
        bins = self.bins()
        return 100.0 * sum(1 for _, n in bins if n) / len(bins) if bins else 100.0

    def unhit(self) -> list[str]:
        return [name for name, n in self.bins() if not n]

    # --- merging and files ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "covergroup": self.name,
            "samples": self.samples,
            "coverpoints": {p.name: dict(p.hits) for p in self.points.values()},
            "crosses": {c.name: {"*".join(k): n for k, n in c.hits.items()} for c in self.crosses.values()},
        }

    def merge(self, doc: Mapping[str, Any]) -> None:
        """Add another covergroup's counts (to_json() of the same definition, e.g. a worker's)."""
        if doc.get("covergroup") != self.name:
            raise CoverError(f"cannot merge covergroup {doc.get('covergroup')!r} into {self.name!r}")
        self.samples += int(doc.get("samples", 0))
        for name, hits in doc.get("coverpoints", {}).items():
            point = self.points.get(name)
            if point is None:
                raise CoverError(f"covergroup {self.name} has no coverpoint {name}")
            for b, n in hits.items():
                if b not in point.hits:
                    raise CoverError(f"coverpoint {name} has no bin {b!r}")
                point.hits[b] += int(n)
        for name, hits in doc.get("crosses", {}).items():
            cross = self.crosses.get(name)
            if cross is None:
                raise CoverError(f"covergroup {self.name} has no cross {name}")
            for k, n in hits.items():
                combo = tuple(k.split("*"))
                if combo not in cross.hits:
                    raise CoverError(f"cross {name} has no bin {k!r}")
                cross.hits[combo] += int(n)

    # --- reports -------------------------------------------------------------------------------
    def table(self, width: int = 100) -> str:
        """The pytest-cov style block: one row per coverpoint and cross, the total, then the
        unhit bins by name (with why, where known)."""
        rows = self.rows()
        name_w = max([len("Name"), *(len(r[0]) for r in rows)])
        lines = [f"{'Name':<{name_w}}  {'Bins':>5}  {'Miss':>5}  {'Cover':>6}", "-" * (name_w + 23)]
        for name, total, hit in rows:
            pct = 100.0 * hit / total if total else 100.0
            lines.append(f"{name:<{name_w}}  {total:>5}  {total - hit:>5}  {pct:>5.0f}%")
        total = sum(r[1] for r in rows)
        hit = sum(r[2] for r in rows)
        lines.append("-" * (name_w + 23))
        lines.append(f"{'TOTAL':<{name_w}}  {total:>5}  {total - hit:>5}  {self.percent():>5.0f}%")
        unhit = self.unhit()
        if unhit:
            lines.append(f"unhit bins ({len(unhit)}):")
            for name in unhit:
                reason = self.why.get(name)
                lines.append(f"  {name}" + (f"  ({reason})" if reason else ""))
        return "\n".join(
            line[:width] if len(line) > width and not line.startswith("  ") else line for line in lines
        )

    def markdown(self) -> str:
        out = [f"# Functional coverage: {self.name}", ""]
        out.append(f"{self.percent():.1f}% of {len(self.bins())} bins hit, {self.samples} samples.")
        out.append("")
        out += ["| item | bins | hit | cover |", "|---|---:|---:|---:|"]
        for name, total, hit in self.rows():
            out.append(f"| {name} | {total} | {hit} | {100.0 * hit / total if total else 100:.0f}% |")
        for p in self.points.values():
            out += ["", f"## {p.name}", ""]
            if p.doc:
                out += [p.doc, ""]
            out += ["| bin | hits |", "|---|---:|"]
            for b, n in p.hits.items():
                out.append(f"| {b} | {n or '**0**'} |")
        for c in self.crosses.values():
            out += ["", f"## {c.name} ({' x '.join(c.points)})", ""]
            if c.doc:
                out += [c.doc, ""]
            out += _matrix_md(c, self.points)
        unhit = self.unhit()
        out += ["", f"## Unhit bins ({len(unhit)})", ""]
        out += [f"- `{u}`" + (f": {self.why[u]}" if u in self.why else "") for u in unhit] or ["none"]
        return "\n".join(out) + "\n"

    def html(self) -> str:
        esc = html.escape
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>Functional coverage: {esc(self.name)}</title><style>",
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0 1.5em}",
            "td,th{border:1px solid #bbb;padding:.2em .6em;text-align:right}td:first-child,th:first-child"
            "{text-align:left}.hit{background:#c8f0c8}.miss{background:#f6c0c0}</style></head><body>",
            f"<h1>Functional coverage: {esc(self.name)}</h1>",
            f"<p>{self.percent():.1f}% of {len(self.bins())} bins hit, {self.samples} samples.</p>",
            "<table><tr><th>item</th><th>bins</th><th>hit</th><th>cover</th></tr>",
        ]
        for name, total, hit in self.rows():
            cls = "hit" if hit == total else "miss"
            parts.append(
                f"<tr class='{cls}'><td>{esc(name)}</td><td>{total}</td><td>{hit}</td>"
                f"<td>{100.0 * hit / total if total else 100:.0f}%</td></tr>"
            )
        parts.append("</table>")
        for p in self.points.values():
            parts.append(
                f"<h2>{esc(p.name)}</h2><p>{esc(p.doc)}</p><table><tr><th>bin</th><th>hits</th></tr>"
            )
            for b, n in p.hits.items():
                title = f" title='{esc(self.why.get(f'{p.name}.{b}', ''))}'" if not n else ""
                parts.append(
                    f"<tr class='{'hit' if n else 'miss'}'{title}><td>{esc(b)}</td><td>{n}</td></tr>"
                )
            parts.append("</table>")
        for c in self.crosses.values():
            parts.append(f"<h2>{esc(c.name)} ({esc(' x '.join(c.points))})</h2><p>{esc(c.doc)}</p>")
            parts.append(_matrix_html(c, self.points))
        unhit = self.unhit()
        parts.append(f"<h2>Unhit bins ({len(unhit)})</h2><ul>")
        parts += [f"<li><code>{esc(u)}</code> {esc(self.why.get(u, ''))}</li>" for u in unhit] or [
            "<li>none</li>"
        ]
        parts.append("</ul></body></html>")
        return "\n".join(parts) + "\n"

    def dumps(self) -> str:
        doc = self.to_json()
        doc["percent"] = round(self.percent(), 2)
        doc["unhit"] = {u: self.why.get(u, "") for u in self.unhit()}
        return json.dumps(doc, indent=1)


def _split(c: Cross, points: Mapping[str, Coverpoint]) -> tuple[list[str], list[tuple[str, ...]]]:
    """A cross as a matrix: the last coverpoint's bins across, the others' combinations down."""
    columns = list(points[c.points[-1]].bins)
    rows = list(itertools.product(*(points[p].bins for p in c.points[:-1])))
    return columns, rows


def _matrix_md(c: Cross, points: Mapping[str, Coverpoint]) -> list[str]:
    columns, rows = _split(c, points)
    out = [f"| {' / '.join(c.points[:-1])} | " + " | ".join(columns) + " |"]
    out.append("|---|" + "---:|" * len(columns))
    for r in rows:
        cells = [str(c.hits[(*r, col)]) or "0" for col in columns]
        out.append(f"| {' / '.join(r)} | " + " | ".join(v if v != "0" else "**0**" for v in cells) + " |")
    return out


def _matrix_html(c: Cross, points: Mapping[str, Coverpoint]) -> str:
    esc = html.escape
    columns, rows = _split(c, points)
    parts = [f"<table><tr><th>{esc(' / '.join(c.points[:-1]))}</th>"]
    parts += [f"<th>{esc(col)}</th>" for col in columns]
    parts.append("</tr>")
    for r in rows:
        parts.append(f"<tr><td>{esc(' / '.join(r))}</td>")
        for col in columns:
            n = c.hits[(*r, col)]
            parts.append(f"<td class='{'hit' if n else 'miss'}'>{n}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    return "".join(parts)


def merged(template: Covergroup, docs: Iterable[Mapping[str, Any]]) -> Covergroup:
    """template (fresh, all zero) with every document added."""
    for doc in docs:
        template.merge(doc)
    return template
