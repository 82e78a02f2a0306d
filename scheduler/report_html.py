"""A report as one self-contained HTML file: totals, savings by lever, estimate against
measurement, and every job; charts are inline SVG, nothing is fetched when it is opened.

Every value a user wrote (job names, teams, policies) goes through ``html.escape``.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from typing import Any

from greenplace.scheduler.levers import LEVERS

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1b2b24}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd}
th{text-align:left;background:#eef3f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
svg text{font-size:11px;fill:#1b2b24}.note{color:#555;max-width:60em}
"""
_JOB_COLUMNS = (("job", "name"), ("team", "team"), ("policy", "policy"), ("state", "state"),
                ("est. kWh", "energy_kwh_estimated"), ("meas. kWh", "energy_kwh_measured"),
                ("est. kg", "co2e_kg_estimated"), ("meas. kg", "co2e_kg_measured"),
                ("baseline kg", "baseline_co2e_kg"), ("saved kg", "savings_co2e_kg"),
                ("cost USD", "cost_usd"))


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    out = ["<table><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td{" class=n" if i >= numeric_from else ""}>{html.escape(cell)}</td>'
            for i, cell in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _lever_bars(saved_kg: dict[str, float]) -> str:
    """Horizontal bars, one per lever (negative shares drawn to the left of zero)."""
    width, row_h, label_w = 520, 26, 110
    span = max([abs(v) for v in saved_kg.values()] + [1e-9])
    zero = label_w + (width - label_w) / 2 if min(saved_kg.values()) < 0 else label_w
    scale = (width - zero - 60) / span
    parts = [f'<svg width="{width}" height="{row_h * len(LEVERS) + 10}" role="img" '
             'aria-label="savings by lever">']
    for i, lever in enumerate(LEVERS):
        kg = saved_kg.get(lever, 0.0)
        y = 5 + i * row_h
        x, w = (zero, kg * scale) if kg >= 0 else (zero + kg * scale, -kg * scale)
        parts.append(f'<text x="0" y="{y + 15}">{lever}</text>'
                     f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="18" '
                     f'fill="{"#2e8b57" if kg >= 0 else "#c0504d"}"/>'
                     f'<text x="{x + max(w, 1) + 4:.1f}" y="{y + 15}">{kg:,.3f} kg</text>')
    parts.append("</svg>")
    return "".join(parts)


def _scatter(jobs: Sequence[dict[str, Any]]) -> str:
    """Estimated against measured CO2e per job, with the line where they agree."""
    points = [(j["co2e_kg_estimated"], j["co2e_kg_measured"]) for j in jobs
              if j["co2e_kg_estimated"] is not None and j["co2e_kg_measured"] is not None]
    if not points:
        return "<p class=note>No job has a measurement yet: nothing to compare.</p>"
    size, pad = 320, 40
    top = max(max(x, y) for x, y in points) or 1.0
    scale = (size - 2 * pad) / top

    def at(v: float) -> float:
        return pad + v * scale

    dots = "".join(f'<circle cx="{at(x):.1f}" cy="{size - at(y):.1f}" r="4" fill="#2e8b57"/>'
                   for x, y in points)
    return (f'<svg width="{size}" height="{size}" role="img" aria-label="estimated against '
            f'measured CO2e"><line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" '
            f'stroke="#999" stroke-dasharray="4"/><line x1="{pad}" y1="{size - pad}" '
            f'x2="{size - pad}" y2="{size - pad}" stroke="#333"/><line x1="{pad}" y1="{pad}" '
            f'x2="{pad}" y2="{size - pad}" stroke="#333"/>{dots}'
            f'<text x="{size / 2 - 50}" y="{size - 8}">estimated kg</text>'
            f'<text x="4" y="{pad - 10}">measured kg (top {top:,.3g})</text></svg>')


def render(result: dict[str, Any], *, generated_at: dt.datetime, title: str) -> str:
    """The report ``report.report`` returned, as one HTML document."""
    totals, jobs = result["totals"], result["jobs"]
    totals_rows = [[label, _num(totals[key])] for label, key in (
        ("estimated energy (kWh)", "energy_kwh_estimated"),
        ("measured energy (kWh)", "energy_kwh_measured"),
        ("estimated CO2e (kg)", "co2e_kg_estimated"), ("measured CO2e (kg)", "co2e_kg_measured"),
        ("baseline CO2e (kg)", "baseline_co2e_kg"), ("saved CO2e (kg)", "savings_co2e_kg"),
        ("cost (USD)", "cost_usd"))]
    job_rows = [[str(j[key]) if i < 4 else _num(j[key]) for i, (_, key) in
                 enumerate(_JOB_COLUMNS)] for j in jobs]
    groups = ""
    if result.get("groups") is not None:
        groups = (f"<h2>By {html.escape(result['group_by'])}</h2>" + _table(
            ["key", "jobs", "est. kg", "meas. kg", "baseline kg", "saved kg"],
            [[str(g["key"]), str(g["jobs"]), _num(g["co2e_kg_estimated"]),
              _num(g["co2e_kg_measured"]), _num(g["baseline_co2e_kg"]),
              _num(g["savings_co2e_kg"])] for g in result["groups"]], 1))
    return "".join([
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class=note>{totals['jobs']} launched job(s), {totals['jobs_measured']} measured "
        f"by their agent; generated {generated_at:%Y-%m-%d %H:%M} UTC. Estimates: Patterson "
        "et al. 2021 (TDP x utilisation or calibrated power, PUE, grid average).</p>",
        _table(["", "total"], totals_rows, 1),
        "<h2>Savings by lever</h2><p class=note>Each job's savings against its price-only "
        "baseline, split into the hardware and run time (machine), the grid (map) and the "
        "data centre's PUE (mechanization) by the logarithmic mean Divisia index: the shares "
        "add up to the savings.</p>", _lever_bars(totals["saved_kg_by_lever"]),
        "<h2>Estimate against measurement</h2>", _scatter(jobs), groups,
        "<h2>Jobs</h2>", _table([h for h, _ in _JOB_COLUMNS], job_rows, 4),
        "</body></html>\n"])
