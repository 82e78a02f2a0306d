"""Filters, scores, normalisation, tie-break and baseline of the placement pipeline."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import pytest

from greenplace.policies.model import Policy, load_policy
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.jobs import Job, JobSpec, resolve_job
from greenplace.scheduler.placement import Placer
from greenplace.scheduler.placement.arrays import RegionSignals
from greenplace.scheduler.placement.filters import FILTERS
from tests.conftest import NOW

# The fixture's 8-GPU offers: 64 vCPUs and 512 GiB. Host power (estimate.host_power_w) is the
# vCPUs at half way between the cloud's idle and full watts plus 0.392 W per GB of memory;
# energy: 10 h x (8 x 320 W + host) x PUE (1.1 on the GCP regions, 1.15 on aws:us-east-1).
MEMORY_W = 512 * 1.073741824 * 0.392
GCP_KWH = 10 * (8 * 320 + 64 * (0.71 + 4.26) / 2 + MEMORY_W) * 1.1 / 1000
AWS_KWH = 10 * (8 * 320 + 64 * (0.74 + 3.5) / 2 + MEMORY_W) * 1.15 / 1000
AZURE_KWH = 10 * (8 * 320 + 64 * (0.78 + 3.76) / 2 + MEMORY_W) * 1.2 / 1000

def job(catalog: Catalog, policy: dict[str, Any] | str = "balanced", **spec: Any) -> Job:
    raw: dict[str, Any] = {"name": "j", "run": "python train.py",
                           "resources": {"accelerators": {"A100": 8}}, "work": {"hours": 10}}
    raw.update(spec)
    pol = load_policy(policy) if isinstance(policy, str) else Policy.model_validate(
        {"name": "t", **policy})
    return resolve_job(JobSpec.model_validate(raw), catalog, policy=pol, where="test")


def by_region(decision: Any) -> dict[str, dict[str, Any]]:
    rows = decision.summary(explain=True)["candidates"]
    return {f"{r['cloud']}:{r['region']}:{r['instance_type']}": r for r in rows}


def test_greenest_ranks_on_grid_cfe_but_reports_location_based_co2e(
        small_catalog: Catalog) -> None:
    d = Placer(small_catalog).place(job(small_catalog, "greenest"), now=NOW)
    s = d.summary()
    # greenest ranks on cfe: energy not covered by the grid's CFE. Both gcp regions use
    # GCP_KWH (accelerators 28.16 kWh + host): us-central1 leaves 5 % of it uncovered,
    # europe-north1 10 %, so us-central1 ranks first.
    assert (s["cloud"], s["region"]) == ("gcp", "us-central1")
    assert s["ranked_by"] == {"signal": "cfe", "quantity": "uncovered_energy_kwh",
                              "unit": "kWh"}
    assert s["ranked_carbon"] == pytest.approx(GCP_KWH * 0.05)
    assert s["energy_kwh"] == pytest.approx(GCP_KWH)
    assert s["accelerator_energy_kwh"] == pytest.approx(28.16)
    assert s["host_energy_kwh"] == pytest.approx(GCP_KWH - 28.16, abs=1e-4)
    assert "Cloud Carbon Footprint" in s["host_power_basis"]
    # ... but the reported co2e_kg is location-based: GCP_KWH x 400 g grid average
    assert s["intensity_g_per_kwh"] == 400.0
    assert s["co2e_kg"] == pytest.approx(GCP_KWH * 0.4)
    assert s["cost_usd"] == pytest.approx(290.0)
    # baseline = cheapest total price = aws p4d at 22 USD/h -> 220 USD;
    # AWS_KWH x 380 g; its grid CFE is 0 %: all of AWS_KWH ranked
    assert s["baseline"]["region"] == "us-east-1"
    assert s["baseline"]["cost_usd"] == pytest.approx(220.0)
    assert s["baseline"]["co2e_kg"] == pytest.approx(AWS_KWH * 0.38, abs=1e-4)
    assert s["baseline"]["ranked_carbon"] == pytest.approx(AWS_KWH)
    # savings stay in location-based kg CO2e: here the cfe choice emits more than the baseline
    assert s["savings_co2e_kg"] == pytest.approx(AWS_KWH * 0.38 - GCP_KWH * 0.4, abs=1e-4)
    assert s["savings_pct"] < 0


def test_average_signal_ranks_the_reported_co2e(small_catalog: Catalog) -> None:
    d = Placer(small_catalog).place(job(small_catalog, {
        "weights": {"carbon": 1, "cost": 0}, "carbon_signal": "average"}), now=NOW)
    s = d.summary()
    # europe-north1: GCP_KWH x 100 g, the lowest grid-average emissions
    assert s["region"] == "europe-north1"
    assert s["co2e_kg"] == s["ranked_carbon"] == pytest.approx(GCP_KWH * 0.1, abs=1e-4)
    assert s["ranked_by"] == {"signal": "average", "quantity": "co2e_kg", "unit": "kg CO2e"}
    assert s["savings_co2e_kg"] == pytest.approx(AWS_KWH * 0.38 - GCP_KWH * 0.1, abs=1e-4)


def test_provider_cfe_places_only_where_the_provider_publishes_cfe(
        small_catalog: Catalog) -> None:
    d = Placer(small_catalog).place(job(small_catalog, {
        "weights": {"carbon": 1, "cost": 0}, "carbon_signal": "provider_cfe"}), now=NOW)
    got = reasons(d)
    assert got["aws:us-east-1:p4d.24xlarge"] == "carbon_signal"
    assert got["azure:westeurope:Standard_ND96asr_v4"] == "carbon_signal"
    assert got["gcp:europe-north1:a2-highgpu-8g"] is None
    assert got["gcp:us-central1:a2-highgpu-8g"] is None
    reason = by_region(d)["aws:us-east-1:p4d.24xlarge"]["rejected_by"]["reason"]
    assert "aws publishes no hourly-matched CFE" in reason and "provider_cfe" in reason
    s = d.summary()
    # europe-north1 leaves GCP_KWH x (1 - 0.98) uncovered by Google's CFE,
    # us-central1 GCP_KWH x (1 - 0.87)
    assert s["region"] == "europe-north1"
    assert s["ranked_by"]["quantity"] == "provider_uncovered_energy_kwh"
    assert s["ranked_carbon"] == pytest.approx(GCP_KWH * 0.02)
    assert s["co2e_kg"] == pytest.approx(GCP_KWH * 0.1)  # still the 100 g grid average
    rows = by_region(d)
    assert rows["gcp:us-central1:a2-highgpu-8g"]["ranked_carbon"] == pytest.approx(GCP_KWH * 0.13)
    assert rows["gcp:us-central1:a2-highgpu-8g"]["co2e_kg"] == pytest.approx(GCP_KWH * 0.4)
    # the baseline is the cheapest among the same feasible set: us-central1 at 29 USD/h
    assert s["baseline"]["region"] == "us-central1"
    assert s["savings_co2e_kg"] == pytest.approx(GCP_KWH * 0.4 - GCP_KWH * 0.1)


def test_provider_cfe_with_only_clouds_that_publish_none_is_unschedulable(
        small_catalog: Catalog) -> None:
    d = Placer(small_catalog).place(job(small_catalog, {
        "carbon_signal": "provider_cfe", "constraints": {"clouds": ["aws", "azure"]}}), now=NOW)
    s = d.summary()
    assert s["status"] == "unschedulable"
    assert {r["filter"] for r in s["reasons"]} >= {"carbon_signal"}


def test_cheapest_matches_baseline(small_catalog: Catalog) -> None:
    s = Placer(small_catalog).place(job(small_catalog, "cheapest"), now=NOW).summary()
    assert (s["cloud"], s["region"], s["instance_type"]) == (
        s["baseline"]["cloud"], s["baseline"]["region"], s["baseline"]["instance_type"])
    assert s["savings_co2e_kg"] == 0.0


def test_normalised_scores_span_zero_to_one(small_catalog: Catalog) -> None:
    d = Placer(small_catalog).place(job(small_catalog, {"weights": {"carbon": 1, "cost": 1}}),
                                    now=NOW)
    feasible = d.rejected_by == 0
    for column in (d.norm_carbon, d.norm_cost, d.norm_time):
        assert np.nanmin(column[feasible]) >= 0.0 and np.nanmax(column[feasible]) <= 1.0
    assert np.nanmax(d.norm_carbon) == 1.0 and np.nanmin(d.norm_carbon) == 0.0
    rows = by_region(d)
    # the cheapest (aws) is best on cost; on the cfe signal (uncovered kWh) gcp us-central1
    # (5 % of GCP_KWH) is best and azure (all of AZURE_KWH at 0 % CFE) worst
    assert rows["aws:us-east-1:p4d.24xlarge"]["norm_cost"] == 1.0
    assert rows["gcp:us-central1:a2-highgpu-8g"]["norm_carbon"] == 1.0
    assert rows["azure:westeurope:Standard_ND96asr_v4"]["norm_carbon"] == 0.0
    assert rows["gcp:europe-north1:a2-highgpu-8g"]["norm_carbon"] == pytest.approx(
        (AZURE_KWH - GCP_KWH * 0.1) / (AZURE_KWH - GCP_KWH * 0.05), abs=1e-4)
    # total = (1 x carbon + 1 x cost + 0 x time) / 2
    r = rows["gcp:us-central1:a2-highgpu-8g"]
    assert r["score"] == pytest.approx((r["norm_carbon"] + r["norm_cost"]) / 2, abs=1e-4)


@pytest.mark.parametrize("signal", ["cfe", "average", "marginal", "provider_cfe"])
def test_same_inputs_same_decision(small_catalog: Catalog, signal: str) -> None:
    j = job(small_catalog, {"carbon_signal": signal})
    a = Placer(small_catalog).place(j, now=NOW).summary(explain=True)
    b = Placer(small_catalog).place(j, now=NOW).summary(explain=True)
    assert a == b


@pytest.mark.parametrize(("signal", "region"), [
    # cfe: us-central1 leaves 1.408 kWh uncovered, europe-north1 2.816 kWh
    ("cfe", "us-central1"),
    # average: europe-north1 2.816 kg, us-central1 11.264 kg
    ("average", "europe-north1"),
])
def test_tie_break_prefers_lower_ranked_carbon(small_catalog: Catalog, signal: str,
                                               region: str) -> None:
    # With only the time weight every A100x8 candidate ties on score (same runtime);
    # the tie-break then takes the lowest ranked carbon of the policy's signal.
    d = Placer(small_catalog).place(job(small_catalog, {
        "weights": {"carbon": 0, "cost": 0, "time": 1}, "carbon_signal": signal}), now=NOW)
    assert d.summary()["region"] == region
    scores = d.score[d.ranking]
    assert np.all(scores == scores[0])


def test_alternatives_scale_runtime_and_h100_wins_on_time(small_catalog: Catalog) -> None:
    j = job(small_catalog, {"weights": {"carbon": 0, "cost": 0, "time": 1}},
            resources={"accelerators": [{"A100": 8}, {"H100": 8}]})
    s = Placer(small_catalog).place(j, now=NOW).summary()
    assert s["accelerator"] == "H100"
    assert s["runtime_h"] == pytest.approx(10 * 312 / 989, rel=1e-4)


def reasons(decision: Any) -> dict[str, str | None]:
    return {k: (v["rejected_by"] or {}).get("filter") for k, v in by_region(decision).items()}


@pytest.mark.parametrize(("constraints", "rejected", "filter_name"), [
    ({"clouds": ["gcp"]}, "aws:us-east-1:p4d.24xlarge", "cloud"),
    ({"regions": {"include": ["gcp:*"], "exclude": ["us-*"]}}, "gcp:us-central1:a2-highgpu-8g",
     "region"),
    ({"countries": ["FI", "NL"]}, "gcp:us-central1:a2-highgpu-8g", "country"),
    ({"continents": ["europe"]}, "aws:us-east-1:p4d.24xlarge", "continent"),
    ({"max_price_usd_per_hour": 30}, "gcp:europe-north1:a2-highgpu-8g", "max_price"),
    ({"min_cfe_pct": 92}, "gcp:europe-north1:a2-highgpu-8g", "min_cfe"),
    ({"min_cfe_pct": 50}, "azure:westeurope:Standard_ND96asr_v4", "min_cfe"),
    ({"spot": "require"}, "azure:westeurope:Standard_ND96asr_v4", "pricing"),
])
def test_each_filter_rejects_with_its_reason(small_catalog: Catalog, constraints: dict[str, Any],
                                             rejected: str, filter_name: str) -> None:
    d = Placer(small_catalog).place(job(small_catalog, {"constraints": constraints}), now=NOW)
    got = reasons(d)
    assert got[rejected] == filter_name
    row = by_region(d)[rejected]
    assert row["rejected_by"]["reason"]
    assert row["score"] is None
    assert d.chosen is not None and d.offers[d.chosen].region != rejected.split(":")[1]


def test_accelerator_count_filter(small_catalog: Catalog) -> None:
    d = Placer(small_catalog).place(job(small_catalog), now=NOW)
    row = by_region(d)["gcp:us-central1:a2-highgpu-1g"]
    assert row["rejected_by"]["filter"] == "accelerator_count"
    assert "carries 1 x A100, the job asks for 8" in row["rejected_by"]["reason"]


def test_marginal_signal_rejects_regions_without_marginal(small_catalog: Catalog) -> None:
    d = Placer(small_catalog).place(job(small_catalog, {"carbon_signal": "marginal"}), now=NOW)
    got = reasons(d)
    assert got["aws:us-east-1:p4d.24xlarge"] is None
    assert got["gcp:europe-north1:a2-highgpu-8g"] == "carbon_signal"
    s = d.summary()
    # ranked at the marginal 600 g, reported at the 380 g grid average (AWS_KWH)
    assert s["region"] == "us-east-1" and s["intensity_g_per_kwh"] == 380.0
    assert s["ranked_carbon"] == pytest.approx(AWS_KWH * 0.6, abs=1e-4)
    assert s["co2e_kg"] == pytest.approx(AWS_KWH * 0.38, abs=1e-4)
    assert s["ranked_by"]["quantity"] == "marginal_co2e_kg"


def test_deadline_filter(small_catalog: Catalog) -> None:
    deadline = (NOW + dt.timedelta(hours=5)).isoformat()
    j = job(small_catalog, resources={"accelerators": [{"A100": 8}, {"H100": 8}]},
            deadline=deadline)
    d = Placer(small_catalog).place(j, now=NOW)
    got = reasons(d)
    assert got["gcp:europe-north1:a2-highgpu-8g"] == "deadline"  # 10 h > 5 h
    assert got["aws:us-east-1:p5.48xlarge"] is None  # 3.2 h on H100
    assert d.summary()["accelerator"] == "H100"


def test_unschedulable_lists_every_reason(small_catalog: Catalog) -> None:
    j = job(small_catalog, {"constraints": {"continents": ["europe"], "min_cfe_pct": 99}})
    s = Placer(small_catalog).place(j, now=NOW).summary()
    assert s["status"] == "unschedulable"
    pairs = {(r["region"], r["filter"]) for r in s["reasons"]}
    assert pairs == {("gcp:europe-north1", "min_cfe"), ("gcp:us-central1", "continent"),
                     ("gcp:us-central1", "accelerator_count"), ("aws:us-east-1", "continent"),
                     ("azure:westeurope", "min_cfe")}


def test_every_catalog_region_has_a_grid_cfe(small_catalog: Catalog) -> None:
    d = Placer(small_catalog).place(job(small_catalog, "greenest"), now=NOW)
    assert not any("not published" in n for n in d.summary(explain=True)["notes"])
    assert by_region(d)["azure:westeurope:Standard_ND96asr_v4"]["cfe_pct"] == 0.0


def test_missing_cfe_is_noted_and_scored_as_full_grid(small_catalog: Catalog) -> None:
    # A live source can lack a region's CFE; the catalog always has one.
    static = RegionSignals.from_catalog(small_catalog)
    keys = [r.key for r in small_catalog.regions]
    cfe = static.cfe_pct.copy()
    cfe[keys.index("azure:westeurope")] = np.nan
    signals = dataclasses.replace(static, cfe_pct=cfe)
    d = Placer(small_catalog, signals=signals).place(job(small_catalog, "greenest"), now=NOW)
    s = d.summary(explain=True)
    assert any("not published" in n and "azure:westeurope" in n for n in s["notes"])
    az = by_region(d)["azure:westeurope:Standard_ND96asr_v4"]
    assert az["cfe_pct"] is None and az["intensity_g_per_kwh"] == 300.0


def test_spot_job_uses_spot_prices(small_catalog: Catalog) -> None:
    s = Placer(small_catalog).place(
        job(small_catalog, "cheapest", resources={"accelerators": {"A100": 8}, "spot": True}),
        now=NOW).summary()
    assert s["spot"] is True and s["price_usd_per_hour"] == 9.0


def test_every_filter_name_is_documented() -> None:
    assert set(FILTERS[1:]) == {"accelerator_count", "cloud", "region", "country", "continent",
                                "pricing", "max_price", "min_cfe", "carbon_signal", "deadline",
                                "provider", "region_not_enabled"}


def test_regions_the_account_has_not_enabled_are_rejected_with_a_reason() -> None:
    from greenplace.scheduler.catalog import load_catalog

    catalog = load_catalog()
    h100 = job(catalog, "cheapest", resources={"accelerators": {"H100": 8}})
    open_placer = Placer(catalog)
    best = open_placer.place(h100, now=NOW).placements()[0]
    closed = frozenset({f"{best.cloud}:{best.region}", "aws:eu-south-2"})
    asked: list[int] = []

    def gate() -> frozenset[str]:
        asked.append(1)
        return closed

    decision = Placer(catalog, region_gate=gate).place(h100, now=NOW)
    assert asked, "the gate is asked at placement time"
    assert all(f"{p.cloud}:{p.region}" not in closed for p in decision.placements())
    key = f"{best.cloud}:{best.region}"
    found = [r for r in decision.rejections()
             if r["region"] == key and r["filter"] == "region_not_enabled"]
    assert found and "opt-in region" in found[0]["reason"]
    assert "not enabled" in found[0]["reason"]


def test_jobs_of_one_shape_ranked_together_decide_exactly_as_one_by_one() -> None:
    """Batch placement (a matrix per shape, chunked) equals placing each job alone, figure
    for figure: choice, ranking, baseline, savings, every candidate's scores and reasons;
    calibrated power per accelerator and per calibration label included."""
    import dataclasses
    import random

    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.placement.pipeline import CalibratedPower

    calibrated = {"H100": CalibratedPower(power_w=610.0, runs=7),
                  "A100": CalibratedPower(power_w=330.0, runs=4),
                  "H100:eval": CalibratedPower(power_w=240.0, runs=3),
                  "A100:pretrain": CalibratedPower(power_w=395.0, runs=12)}
    label_rng = random.Random(12)  # apart from rng: the other draws stay as they were

    def placer() -> Placer:
        p = Placer(catalog)
        p.calibrate(calibrated)
        return p

    catalog = load_catalog()
    policies = [load_policy(name) for name in ("balanced", "greenest", "cheapest",
                                                 "eu-sovereign")]
    policies += [Policy.model_validate({"name": "capped", "weights": {"carbon": 1, "cost": 1,
                                        "time": 1}, "constraints": {"max_price_usd_per_hour": 30}}),
                 Policy.model_validate({"name": "marginal", "carbon_signal": "marginal"})]
    shapes = [{"A100": 8}, [{"L4": 1}, {"T4": 1}, {"A100": 1}], [{"H100": 8}, {"A100": 8}],
              {"TPU-v5p": 8}, [{"T4": 4}, {"V100": 4}]]
    rng = random.Random(11)
    jobs = []
    for i in range(700):
        policy = rng.choice(policies)
        work: dict[str, Any] = {"hours": rng.choice([0.1, 1.0, 2.5, 7.3, 99_999.0,
                                                     round(rng.uniform(0.2, 500), 2)])}
        if rng.random() < 0.2:
            work["utilization"] = rng.choice([0.3, 0.55])
        if rng.random() < 0.1:
            work["avg_power_w"] = 250.0
        accelerators = rng.choice(shapes)
        if isinstance(accelerators, list) and rng.random() < 0.3:
            work["reference"] = next(iter(accelerators[-1]))
        raw: dict[str, Any] = {"name": f"j{i}", "run": "x", "work": work, "resources": {
            "accelerators": accelerators,
            "spot": rng.choice([None, True]) if policy.name != "eu-sovereign" else None}}
        if rng.random() < 0.05:
            raw["deadline"] = (NOW + dt.timedelta(hours=rng.choice([1, 30]))).isoformat()
        if rng.random() < 0.05:
            raw["max_delay_hours"] = 6
        raw["calibration_label"] = label_rng.choice([None, None, "eval", "pretrain", "new"])
        jobs.append(resolve_job(JobSpec.model_validate(raw), catalog, policy=policy, where="t"))

    alone = [placer().place(j, now=NOW) for j in jobs]
    for chunk_jobs in (64, 4096):
        together = list(placer().place_each(jobs, now=NOW, chunk_jobs=chunk_jobs))
        assert [d.job for d in together] == [j.name for j in jobs]
        for a, b in zip(alone, together, strict=True):
            for f in dataclasses.fields(a):
                x, y = getattr(a, f.name), getattr(b, f.name)
                if isinstance(x, np.ndarray):
                    assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (a.job, f.name)
            assert a.summary(explain=True) == b.summary(explain=True)
    assert {d.placed for d in alone} == {True, False}
    assert len({(d.chosen, d.baseline) for d in alone if d.placed}) > 5
    assert any(d.chosen != d.baseline for d in alone if d.placed)
    bases = {d.power_basis for d in alone}
    assert any("of label eval (240 W" in b for b in bases)
    assert any("of label pretrain (395 W" in b for b in bases)
    assert any("too few runs of label new" in b for b in bases)


def test_offers_the_routed_adapter_cannot_launch_are_rejected_by_provider() -> None:
    from greenplace.scheduler.catalog import load_catalog

    catalog = load_catalog()
    tpu_job = job(catalog, resources={"accelerators": {"TPU-v5e": 8}})
    # Routed to the GCP adapter (Compute Engine only), no TPU slice is ever placed.
    refused = Placer(catalog, routes={"gcp": "gcp"}).place(tpu_job, now=NOW)
    rows = refused.summary(explain=True)["candidates"]
    assert rows and refused.summary()["status"] == "unschedulable"
    assert {r["rejected_by"]["filter"] for r in rows} == {"provider"}
    assert "cannot launch TPU-v5e" in rows[0]["rejected_by"]["reason"]
    # The simulator (the default route) launches anything; GPU jobs on GCP are unaffected.
    assert Placer(catalog).place(tpu_job, now=NOW).summary()["status"] == "placed"
    gpu = Placer(catalog, routes={"gcp": "gcp"}).place(
        job(catalog, resources={"accelerators": {"A100": 8}}, policy={"constraints": {
            "clouds": ["gcp"]}}), now=NOW)
    assert gpu.summary()["cloud"] == "gcp"


def test_bare_a100_80gb_is_the_sxm_part_and_alternatives_add_pcie() -> None:
    from greenplace.scheduler.catalog import load_catalog

    catalog = load_catalog()
    assert catalog.accelerator("A100-80GB").form_factor == "SXM"
    assert catalog.accelerator("A100-80GB-SXM").name == "A100-80GB"

    def accelerators_placed(accelerators: Any) -> set[str]:
        d = Placer(catalog).place(job(catalog, resources={"accelerators": accelerators}),
                                  now=NOW)
        return {r["accelerator"] for r in d.summary(explain=True)["candidates"]}

    assert accelerators_placed({"A100-80GB": 1}) == {"A100-80GB"}
    assert accelerators_placed([{"A100-80GB": 1}, {"A100-80GB-PCIe": 1}]) == {
        "A100-80GB", "A100-80GB-PCIe"}
