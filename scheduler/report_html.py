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


MAX_INTENSITY_CHARTS = 50  # the newest measured jobs with a series; the rest are counted


def _intensity_chart(job: dict[str, Any]) -> str:
    """One job's grid intensity hour by hour over its run window (a bar per hour that a
    source answered, its width the hour), with the estimate's intensity as a dashed line."""
    hours = job["run_intensity_series"]
    starts = [dt.datetime.fromisoformat(h["start"]) for h in hours]
    first, last = starts[0], starts[-1] + dt.timedelta(hours=1)
    span_s = (last - first).total_seconds()
    estimate = job.get("intensity_g_per_kwh_estimated")
    values = [h["g_per_kwh"] for h in hours if h["g_per_kwh"] is not None]
    top = max(values + ([estimate] if estimate is not None else []) + [1.0]) * 1.15
    width, height, left, bottom = 420, 130, 44, 22
    plot_w, plot_h = width - left - 8, height - bottom - 8

    def x(moment: dt.datetime) -> float:
        return left + (moment - first).total_seconds() / span_s * plot_w

    def y(g: float) -> float:
        return 8 + plot_h - g / top * plot_h

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="grid intensity '
             f'over the run window of {html.escape(str(job["name"]))}">',
             f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - 8}" y2="{y(0):.1f}" '
             'stroke="#333"/>',
             f'<text x="0" y="14">{top / 1.15:,.0f}</text><text x="0" y="{y(0):.1f}">0</text>']
    for hour, start in zip(hours, starts, strict=True):
        g = hour["g_per_kwh"]
        x0, x1 = x(start), x(start + dt.timedelta(hours=1))
        if g is None:
            parts.append(f'<rect class=gap x="{x0:.1f}" y="{y(0) - 3:.1f}" '
                         f'width="{max(x1 - x0 - 1, 1):.1f}" height="3" fill="#bbb"/>')
            continue
        parts.append(f'<rect class=hour x="{x0:.1f}" y="{y(g):.1f}" '
                     f'width="{max(x1 - x0 - 1, 1):.1f}" height="{y(0) - y(g):.1f}" '
                     f'fill="#2e8b57"><title>{start:%Y-%m-%d %H:00} UTC: {g:,.0f} g/kWh, '
                     f'{hour["seconds"]:,.0f} s of the run '
                     f'({html.escape(str(hour["source"]))})</title></rect>')
    if estimate is not None:
        parts.append(f'<line class=estimate x1="{left}" y1="{y(estimate):.1f}" '
                     f'x2="{width - 8}" y2="{y(estimate):.1f}" stroke="#c0504d" '
                     f'stroke-dasharray="4"/><text x="{left + 4}" y="{y(estimate) - 4:.1f}">'
                     f'estimate {estimate:,.0f} g/kWh</text>')
    parts.append(f'<text x="{left}" y="{height - 6}">{first:%Y-%m-%d %H:00}</text>'
                 f'<text x="{width - 8}" y="{height - 6}" text-anchor="end">'
                 f'{last:%H:00} UTC</text></svg>')
    return "".join(parts)


def _intensity_charts(jobs: Sequence[dict[str, Any]]) -> str:
    """Each measured job's run window, newest first (at most ``MAX_INTENSITY_CHARTS``)."""
    with_series = [j for j in reversed(jobs) if j.get("run_intensity_series")]
    if not with_series:
        return ("<p class=note>No job has an hourly intensity series yet: a measured run is "
                "charged hour by hour only with live signals (GREENPLACE_SIGNALS=live).</p>")
    shown_jobs = with_series[:MAX_INTENSITY_CHARTS]
    more = len(with_series) - len(shown_jobs)
    return ("<p class=note>The grid's average intensity in each hour each measured job ran "
            "(g/kWh), which its measured CO2e is charged at, against the intensity its "
            "estimate used (dashed)" + (f"; the newest {len(shown_jobs)} of "
                                         f"{len(with_series)} jobs" if more else "") + ".</p>"
            + "".join(f"<figure><figcaption>{html.escape(str(j['name']))} "
                      f"<code>{html.escape(str(j['job_id']))}</code></figcaption>"
                      f"{_intensity_chart(j)}</figure>" for j in shown_jobs))


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
        "<h2>Estimate against measurement</h2>", _scatter(jobs),
        "<h2>Intensity over the run window</h2>", _intensity_charts(jobs), groups,
        "<h2>Jobs</h2>", _table([h for h, _ in _JOB_COLUMNS], job_rows, 4),
        "</body></html>\n"])
