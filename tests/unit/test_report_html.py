"""The HTML and CSV reports: self-contained, escaped, and carrying the levers."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from typing import Any

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


def test_the_cli_writes_csv_with_lever_columns(monkeypatch: Any, capsys: Any) -> None:
    from greenplace.scheduler.commands import report as command

    monkeypatch.setattr(command, "_local", lambda *args: RESULT)
    monkeypatch.delenv("GREENPLACE_API_URL", raising=False)
    command.report_cmd.main(["-o", "csv"], standalone_mode=False)
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == ["<script>alert(1)</script>", "plain"]
    assert rows[0]["map_factor"] == "7.0" and rows[0]["mechanization_saved_kg"] == "-0.1"
    assert rows[1]["energy_kwh_measured"] == ""
