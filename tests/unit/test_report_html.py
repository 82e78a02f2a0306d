"""The HTML and CSV reports: self-contained, escaped, and carrying the levers."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from typing import Any

import pytest

from greenplace.scheduler.report_html import render


def job(name: str, *, measured: float | None) -> dict[str, Any]:
    return {"job_id": "0123456789abcdef", "name": name, "team": "ml", "policy": "greenest",
            "state": "SUCCEEDED", "created_at": "2026-12-01T00:00:00.000Z",
            "energy_kwh_estimated": 10.0, "co2e_kg_estimated": 0.5, "cost_usd": 12.0,
            "baseline_co2e_kg": 4.0, "savings_co2e_kg": 3.5, "energy_kwh_measured": measured,
            "co2e_kg_measured": None if measured is None else measured * 0.05,
            "levers": {"machine": {"factor": 1.0, "saved_kg": 0.0},
                       "map": {"factor": 7.0, "saved_kg": 3.6},
                       "mechanization": {"factor": 0.95, "saved_kg": -0.1}}}


RESULT = {"totals": {"jobs": 2, "jobs_measured": 1, "energy_kwh_estimated": 20.0,
                     "energy_kwh_measured": 9.0, "co2e_kg_estimated": 1.0,
                     "co2e_kg_measured": 0.45, "baseline_co2e_kg": 8.0,
                     "savings_co2e_kg": 7.0, "cost_usd": 24.0,
                     "saved_kg_by_lever": {"machine": 0.0, "map": 7.2,
                                           "mechanization": -0.2}},
          "jobs": [job("<script>alert(1)</script>", measured=9.0), job("plain", measured=None)]}


def test_one_file_no_fetch_and_every_value_escaped() -> None:
    page = render(RESULT, generated_at=dt.datetime(2026, 12, 2, tzinfo=dt.UTC), title="r")
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=", page)  # nothing to fetch
    assert "7.200 kg" in page and "-0.200 kg" in page  # the lever bars, negative one too
    assert page.count("<circle") == 1  # only the measured job is in the scatter


def test_a_measured_job_with_an_hourly_series_gets_its_intensity_chart() -> None:
    series = [{"start": "2026-12-01T10:00:00.000Z", "seconds": 1800.0, "g_per_kwh": 100.0,
               "source": "electricitymaps"},
              {"start": "2026-12-01T11:00:00.000Z", "seconds": 3600.0, "g_per_kwh": None,
               "source": None},
              {"start": "2026-12-01T12:00:00.000Z", "seconds": 900.0, "g_per_kwh": 400.0,
               "source": "electricitymaps"}]
    charted = {**job("<b>hourly</b>", measured=9.0), "intensity_g_per_kwh_estimated": 342.0,
               "run_intensity_series": series}
    page = render({**RESULT, "jobs": [*RESULT["jobs"], charted]},
                  generated_at=dt.datetime(2026, 12, 2, tzinfo=dt.UTC), title="r")
    assert "Intensity over the run window" in page
    assert page.count("<svg") == 3  # levers, scatter, and the one job with a series
    chart = page[page.index('aria-label="grid intensity over the run window'):]
    chart = chart[:chart.index("</svg>")]
    assert "&lt;b&gt;hourly&lt;/b&gt;" in chart and "<b>" not in chart
    assert chart.count("<rect class=hour") == 2 and chart.count("<rect class=gap") == 1
    assert "2026-12-01 12:00 UTC: 400 g/kWh, 900 s of the run (electricitymaps)" in chart
    heights = [float(h) for h in re.findall(r'class=hour [^>]*height="([\d.]+)"', chart)]
    assert heights[1] == pytest.approx(4 * heights[0], abs=0.5)  # in proportion to g/kWh
    assert "estimate 342 g/kWh" in chart and "stroke-dasharray" in chart
    # the reference line sits where 342 g/kWh is on the bars' scale
    bar_top, bar_h = (float(v) for v in re.search(
        r'class=hour [^>]*y="([\d.]+)" width="[\d.]+" height="([\d.]+)"', chart).groups())
    zero_y = bar_top + bar_h
    line_y = float(re.search(r'class=estimate x1="[\d.]+" y1="([\d.]+)"', chart).group(1))
    assert zero_y - line_y == pytest.approx(3.42 * bar_h, abs=0.2)


def test_without_any_series_the_report_says_why() -> None:
    page = render(RESULT, generated_at=dt.datetime(2026, 12, 2, tzinfo=dt.UTC), title="r")
    assert "No job has an hourly intensity series yet" in page


def test_the_cli_writes_csv_with_lever_columns(monkeypatch: Any, capsys: Any) -> None:
    from greenplace.scheduler.commands import report as command

    monkeypatch.setattr(command, "_local", lambda *args: RESULT)
    monkeypatch.delenv("GREENPLACE_API_URL", raising=False)
    command.report_cmd.main(["-o", "csv"], standalone_mode=False)
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == ["<script>alert(1)</script>", "plain"]
    assert rows[0]["map_factor"] == "7.0" and rows[0]["mechanization_saved_kg"] == "-0.1"
    assert rows[1]["energy_kwh_measured"] == ""
