"""GCP regional GPU quotas as capacity pools, read through google-cloud-compute (REST) from the
local Compute Engine fake (tests/fakes/gce_server.py: regions.get with the project's quotas).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenplace.providers import credentials
from greenplace.scheduler.catalog.loader import load_embedded_catalog
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.refresh import gcp as refresh_gcp
from greenplace.scheduler.exceptions import AuthError, InvalidRequestError, TransientError
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.quotas import QuotaAnswer
from greenplace.scheduler.planning.quotas import gcp as quotas_gcp
from tests.fakes.gce_server import FakeComputeEngine, http_error

ZONES = {
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c"],
    "europe-west4": ["europe-west4-a", "europe-west4-b"],
    "europe-north1": ["europe-north1-a"],
}
REGIONS = tuple(ZONES)


@pytest.fixture
def gce() -> Iterator[FakeComputeEngine]:
    """A project whose regions hold CPU and disk quotas and a few GPU quotas."""
    with FakeComputeEngine(zones=ZONES) as fake:
        for region in REGIONS:
            fake.set_quota(region, "CPUS", limit=2400, usage=96)
            fake.set_quota(region, "DISKS_TOTAL_GB", limit=102400, usage=500)
        fake.set_quota("us-central1", "NVIDIA_L4_GPUS", limit=16, usage=3)
        fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_L4_GPUS", limit=32, usage=0)
        fake.set_quota("us-central1", "NVIDIA_H100_GPUS", limit=16, usage=8)
        fake.set_quota("us-central1", "NVIDIA_H100_MEGA_GPUS", limit=8, usage=0)
        fake.set_quota("us-central1", "NVIDIA_T4_GPUS", limit=4, usage=6)  # quota lowered
        fake.set_quota("europe-west4", "NVIDIA_A100_80GB_GPUS", limit=8, usage=0)
        fake.set_quota("europe-west4", "PREEMPTIBLE_NVIDIA_A100_80GB_GPUS", limit=0, usage=0)
        fake.set_quota("europe-west4", "NVIDIA_A100_GPUS", limit=16, usage=0)
        fake.set_quota("europe-west4", "NVIDIA_B200_GPUS", limit=8, usage=0)
        fake.set_quota("europe-west4", "NVIDIA_T4_VWS_GPUS", limit=4, usage=0)
        fake.set_quota("europe-west4", "COMMITTED_NVIDIA_A100_GPUS", limit=8, usage=0)
        yield fake


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in hundredths of a second, bounded at half a second per call."""
    monkeypatch.setattr(refresh_gcp, "RETRY_INITIAL_S", 0.01)
    monkeypatch.setattr(refresh_gcp, "RETRY_MAXIMUM_S", 0.05)
    monkeypatch.setattr(refresh_gcp, "RETRY_DEADLINE_S", 0.5)


def environ(gce: FakeComputeEngine) -> dict[str, str]:
    return {"GREENPLACE_GCP_PROJECT": gce.project, "GREENPLACE_GCP_API_ENDPOINT": gce.base_url,
            "GREENPLACE_GCP_CREDENTIALS": "anonymous"}


def by_metric(answer: QuotaAnswer) -> dict[tuple[str, str], CapacityPool]:
    return {(p.region, p.source.split()[2]): p for p in answer.pools}


def offer(instance_type: str, region: str) -> Offer:
    found = [o for o in load_embedded_catalog().offers
             if o.cloud == "gcp" and o.instance_type == instance_type]
    assert found, instance_type
    return dataclasses.replace(found[0], region=region)


def regions_gets(gce: FakeComputeEngine) -> int:
    return sum("/regions/" in r.path for r in gce.requests)


def test_reads_the_gpu_quotas_left_in_several_regions(gce: FakeComputeEngine) -> None:
    answer = quotas_gcp.read_quotas(REGIONS, environ(gce))
    pools = by_metric(answer)
    assert set(pools) == {
        ("us-central1", "NVIDIA_L4_GPUS"), ("us-central1", "PREEMPTIBLE_NVIDIA_L4_GPUS"),
        ("us-central1", "NVIDIA_H100_GPUS"), ("us-central1", "NVIDIA_H100_MEGA_GPUS"),
        ("us-central1", "NVIDIA_T4_GPUS"), ("europe-west4", "NVIDIA_A100_80GB_GPUS"),
        ("europe-west4", "PREEMPTIBLE_NVIDIA_A100_80GB_GPUS"),
        ("europe-west4", "NVIDIA_A100_GPUS")}
    assert all(p.unit is Unit.ACCELERATORS and p.cloud == "gcp" for p in pools.values())
    assert pools[("us-central1", "NVIDIA_L4_GPUS")].limit == 16 - 3  # usage subtracted
    assert pools[("us-central1", "NVIDIA_H100_GPUS")].limit == 8
    assert pools[("us-central1", "NVIDIA_T4_GPUS")].limit == 0  # usage above a lowered limit
    assert regions_gets(gce) == len(REGIONS)
    assert answer.source == quotas_gcp.SOURCE


def test_spot_vms_use_the_preemptible_quota_when_the_region_has_one(
        gce: FakeComputeEngine) -> None:
    pools = by_metric(quotas_gcp.read_quotas(REGIONS, environ(gce)))
    l4 = offer("g2-standard-4", "us-central1")
    standard = pools[("us-central1", "NVIDIA_L4_GPUS")]
    preemptible = pools[("us-central1", "PREEMPTIBLE_NVIDIA_L4_GPUS")]
    assert standard.spot is False and preemptible.spot is True
    assert standard.matches(l4, spot=False) and not standard.matches(l4, spot=True)
    assert preemptible.units_per_instance(l4, spot=True) == 1
    # A preemptible quota of 0 is none: Spot VMs then draw on the standard quota.
    a100 = offer("a2-ultragpu-8g", "europe-west4")
    shared = pools[("europe-west4", "NVIDIA_A100_80GB_GPUS")]
    assert shared.spot is None
    assert shared.units_per_instance(a100, spot=True) == 8
    assert shared.units_per_instance(a100, spot=False) == 8


def test_each_metric_matches_only_its_own_catalog_offers(gce: FakeComputeEngine) -> None:
    pools = by_metric(quotas_gcp.read_quotas(REGIONS, environ(gce)))
    high, mega = offer("a3-highgpu-8g", "us-central1"), offer("a3-megagpu-8g", "us-central1")
    h100, h100_mega = (pools[("us-central1", "NVIDIA_H100_GPUS")],
                       pools[("us-central1", "NVIDIA_H100_MEGA_GPUS")])
    assert h100.units_per_instance(high, spot=False) == 8 and not h100.matches(mega, spot=False)
    assert h100_mega.units_per_instance(mega, spot=False) == 8
    assert not h100_mega.matches(high, spot=False)
    a100_40, a100_80 = offer("a2-highgpu-8g", "europe-west4"), offer("a2-ultragpu-1g",
                                                                     "europe-west4")
    assert pools[("europe-west4", "NVIDIA_A100_GPUS")].matches(a100_40, spot=False)
    assert not pools[("europe-west4", "NVIDIA_A100_GPUS")].matches(a100_80, spot=False)
    assert not pools[("europe-west4", "NVIDIA_A100_GPUS")].matches(
        offer("a2-highgpu-8g", "us-central1"), spot=False)  # another region's offer
    for instance_type, region in (("n1-standard-4", "us-central1"),
                                  ("g2-standard-4", "us-central1")):
        drawn = [key[1] for key, p in pools.items()
                 if p.matches(offer(instance_type, region), spot=False)]
        assert len(drawn) == 1, (instance_type, drawn)


def test_unknown_gpu_metrics_are_skipped_with_the_reason(gce: FakeComputeEngine) -> None:
    answer = quotas_gcp.read_quotas(("europe-west4",), environ(gce))
    skipped = {s.quota: s.reason for s in answer.skipped}
    assert set(skipped) == {"NVIDIA_B200_GPUS", "NVIDIA_T4_VWS_GPUS",
                            "COMMITTED_NVIDIA_A100_GPUS"}  # not CPUS nor DISKS_TOTAL_GB
    assert all("with certainty" in reason for reason in skipped.values())


def test_a_region_compute_engine_does_not_know_is_skipped(gce: FakeComputeEngine) -> None:
    answer = quotas_gcp.read_quotas(("us-central1", "mars-north1"), environ(gce))
    assert {p.region for p in answer.pools} == {"us-central1"}
    assert [s.region for s in answer.skipped] == ["mars-north1"]
    assert "404" in answer.skipped[0].reason


def test_throttling_that_passes_is_retried(gce: FakeComputeEngine) -> None:
    gce.throttle("GET", r"/regions/us-central1$", times=2)
    gce.throttle("GET", r"/regions/europe-west4$", times=1, status=403)  # user rate limit
    pools = by_metric(quotas_gcp.read_quotas(REGIONS, environ(gce)))
    assert pools[("us-central1", "NVIDIA_L4_GPUS")].limit == 13
    assert ("europe-west4", "NVIDIA_A100_GPUS") in pools
    assert regions_gets(gce) == len(REGIONS) + 3


def test_throttling_that_never_stops_is_a_bounded_clear_error(gce: FakeComputeEngine) -> None:
    gce.throttle("GET", r"/regions/", times=10**9)
    with pytest.raises(TransientError) as caught:
        quotas_gcp.read_quotas(REGIONS, environ(gce))
    message = str(caught.value)
    assert caught.value.code == "retries_exhausted"
    assert "compute regions.get (us-central1)" in message and "To fix: plan again" in message
    assert 1 < regions_gets(gce) < 1000


def test_refused_credentials_are_an_auth_error_naming_the_permission(
        gce: FakeComputeEngine) -> None:
    gce.fail_calls("GET", r"/regions/", http_error(
        403, "forbidden", "Required 'compute.regions.get' permission for "
        "'projects/test-project/regions/us-central1'"))
    with pytest.raises(AuthError) as caught:
        quotas_gcp.read_quotas(REGIONS, environ(gce))
    assert "roles/compute.viewer" in str(caught.value)
    assert regions_gets(gce) == 1  # refused: not retried, and the read stops


def test_bad_settings_are_an_invalid_request(gce: FakeComputeEngine) -> None:
    with pytest.raises(InvalidRequestError, match="Did you mean 'project'"):
        quotas_gcp.read_quotas(REGIONS, {**environ(gce),
                                         "GREENPLACE_GCP_SETTINGS": '{"projetc": "x"}'})
    assert gce.requests == []


def test_credentials_found_reads_only_local_files(
        gce: FakeComputeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    product = tmp_path / "product_name"
    product.write_text("Standard PC (Q35 + ICH9, 2009)\n")
    monkeypatch.setattr(credentials, "GCE_PRODUCT_FILE", product)
    assert quotas_gcp.credentials_found(environ(gce))  # no Cloud Billing endpoint needed
    assert not quotas_gcp.credentials_found({"HOME": str(tmp_path)})
    adc = tmp_path / "adc.json"
    adc.write_text("{}")
    assert quotas_gcp.credentials_found({"GOOGLE_APPLICATION_CREDENTIALS": str(adc)})
    assert not quotas_gcp.credentials_found({"GREENPLACE_GCP_SETTINGS": "{not json"})
    assert gce.requests == []
