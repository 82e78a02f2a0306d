"""Energy meters: NVML through a fake library with the real pynvml shape, RAPL through a fake
powercap tree, the host model through a fake /proc/stat; figures checked by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pynvml
import pytest

from greenplace.scheduler.meters import (
    HOST_IDLE_W_PER_CPU,
    HOST_MAX_W_PER_CPU,
    HostModelMeter,
    open_meters,
    open_nvml,
    open_rapl,
)


@dataclass
class Utilization:  # the shape of pynvml.c_nvmlUtilization_t
    gpu: int
    memory: int


class FakeNvml:
    """The pynvml functions the meters call, over scripted readings per GPU.

    ``energy_mj[i]`` is None for a GPU without the total-energy counter (NOT_SUPPORTED, as
    pre-Volta GPUs answer); readings are consumed one per call.
    """

    NVMLError = pynvml.NVMLError
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED

    def __init__(self, *, names: list[str], energy_mj: list[list[int] | None],
                 power_mw: list[list[int]], util: list[list[int]], init_error: int | None = None
                 ) -> None:
        self.names, self.energy_mj, self.power_mw, self.util = names, energy_mj, power_mw, util
        self.init_error = init_error
        self.calls: list[str] = []

    def nvmlInit(self) -> None:  # noqa: N802 - the pynvml name
        self.calls.append("init")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:  # noqa: N802
        return self.names[handle].encode()  # older pynvml returns bytes

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:  # noqa: N802
        readings = self.energy_mj[handle]
        if readings is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return readings.pop(0) if len(readings) > 1 else readings[0]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:  # noqa: N802
        readings = self.power_mw[handle]
        return readings.pop(0) if len(readings) > 1 else readings[0]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Utilization:  # noqa: N802
        readings = self.util[handle]
        return Utilization(gpu=readings.pop(0) if len(readings) > 1 else readings[0], memory=0)


def test_the_fake_has_the_real_pynvml_names() -> None:
    for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                 "nvmlDeviceGetName", "nvmlDeviceGetTotalEnergyConsumption",
                 "nvmlDeviceGetPowerUsage", "nvmlDeviceGetUtilizationRates"):
        assert callable(getattr(pynvml, name)) and callable(getattr(FakeNvml, name))
    assert isinstance(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED), pynvml.NVMLError)


def test_nvml_energy_counter_and_power_integration() -> None:
    # GPU 0 has the counter: the first reading is the open check, then one per sample.
    nvml = FakeNvml(names=["NVIDIA H100", "Tesla P100"],
                    energy_mj=[[5_000_000, 5_000_000, 5_300_000, 5_750_000], None],
                    power_mw=[[0], [100_000, 100_000, 200_000, 150_000]],
                    util=[[50, 100], [20, 40]])
    meters = open_meters(nvml=nvml, powercap_root=Path("/nonexistent"),
                         proc_stat=Path("/nonexistent"))
    gpus = meters.meters[:2]
    for now_s in (10.0, 11.0, 13.0):
        meters.sample(now_s)
    counter, integrated = (m.reading() for m in gpus)
    # counter: (5,750,000 - 5,000,000) mJ = 750 J over 3 s; peaks 300 J/1 s, 450 J/2 s
    assert counter.method == "nvml-energy-counter" and counter.kind == "gpu"
    assert counter.name == "0: NVIDIA H100"
    assert counter.energy_j == pytest.approx(750.0)
    assert counter.avg_power_w == pytest.approx(250.0)
    assert counter.peak_power_w == pytest.approx(300.0)
    assert counter.utilization_pct == pytest.approx((50 + 100 + 100) / 3)
    # integration (trapezoid): (100+200)/2 W x 1 s + (200+150)/2 W x 2 s = 150 + 350 J
    assert integrated.method == "nvml-power-integration"
    assert integrated.energy_j == pytest.approx(500.0)
    assert integrated.avg_power_w == pytest.approx(500.0 / 3)
    assert integrated.peak_power_w == pytest.approx(200.0)
    assert meters.method == "nvml+host-model"  # no RAPL under the fake root
    meters.close()
    assert nvml.calls == ["init", "shutdown"]


def test_no_gpu_or_no_driver_means_no_nvml_meter_with_the_reason() -> None:
    nvml = FakeNvml(names=[], energy_mj=[], power_mw=[], util=[])
    meters, reason, library = open_nvml(nvml)
    assert meters == [] and library is None and reason is not None and "no NVIDIA GPU" in reason
    assert nvml.calls == ["init", "shutdown"]
    broken = FakeNvml(names=[], energy_mj=[], power_mw=[], util=[],
                      init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    meters, reason, _ = open_nvml(broken)
    assert meters == [] and reason is not None
    assert "NVML Shared Library Not Found" in reason


def test_the_real_pynvml_without_a_driver_gives_a_reason_not_an_error() -> None:
    meters, reason, _ = open_nvml()  # this machine: no NVIDIA driver
    if meters:
        pytest.skip("this machine has an NVIDIA GPU")
    assert reason is not None and reason.startswith("no NVML meter")


def _zone(root: Path, name: str, label: str, *, energy_uj: int, max_uj: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_package_and_dram_with_wrap_around(tmp_path: Path) -> None:
    max_uj = 262_143_328_850
    package = _zone(tmp_path, "intel-rapl:0", "package-0", energy_uj=max_uj - 1_000_000,
                    max_uj=max_uj)
    dram = _zone(tmp_path, "intel-rapl:0:1", "dram", energy_uj=10_000_000, max_uj=max_uj)
    _zone(tmp_path, "intel-rapl:0:0", "core", energy_uj=0, max_uj=max_uj)  # inside package
    _zone(tmp_path, "intel-rapl:1", "psys", energy_uj=0, max_uj=max_uj)  # the whole platform
    meters, reason = open_rapl(tmp_path)
    assert reason is None
    assert [(m.name, m.kind) for m in meters] == [("intel-rapl:0 package-0", "cpu"),
                                                  ("intel-rapl:0:1 dram", "dram")]
    for m in meters:
        m.sample(0.0)
    # the package counter wraps: 1,000,000 uJ to the top, then 4,000,000 past zero = 5 J
    (package / "energy_uj").write_text("4000000\n")
    (dram / "energy_uj").write_text("12000000\n")
    for m in meters:
        m.sample(2.0)
    (package / "energy_uj").write_text("9000000\n")  # 5 J more in 0.5 s: 10 W peak
    (dram / "energy_uj").write_text("12500000\n")
    for m in meters:
        m.sample(2.5)
    pkg, mem = (m.reading() for m in meters)
    assert pkg.method == "rapl" and pkg.energy_j == pytest.approx(10.0)
    assert pkg.avg_power_w == pytest.approx(4.0) and pkg.peak_power_w == pytest.approx(10.0)
    assert mem.energy_j == pytest.approx(2.5) and mem.avg_power_w == pytest.approx(1.0)
    assert pkg.utilization_pct is None


WRITE_ONLY_SYSFS = Path("/sys/bus/pci/rescan")


def _readable(path: Path) -> bool:
    try:
        path.read_text()
    except PermissionError:
        return False
    except OSError:
        return True  # absent or otherwise broken: not the case under test
    return True


def test_unreadable_rapl_means_the_host_model_with_the_reason(tmp_path: Path) -> None:
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", energy_uj=1, max_uj=10)
    (zone / "energy_uj").chmod(0)  # as energy_uj is for a user since Linux 5.10
    if _readable(zone / "energy_uj"):  # root reads any file but a write-only sysfs one
        (zone / "energy_uj").unlink()
        (zone / "energy_uj").symlink_to(WRITE_ONLY_SYSFS)
        if _readable(zone / "energy_uj"):
            pytest.skip(f"no unreadable file here ({WRITE_ONLY_SYSFS} is readable or absent)")
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    meters = open_meters(use_nvml=False, powercap_root=tmp_path, proc_stat=stat)
    assert meters.method == "host-model"
    assert any("energy_uj is not readable" in note for note in meters.notes)


def test_the_host_model_from_cpu_count_and_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    meter = HostModelMeter(cpus=4, proc_stat=stat)
    meter.sample(0.0)
    # +300 busy (user 200, system 100), +100 idle: 75 % busy for 2 s
    stat.write_text("cpu  300 0 200 900 0 0 0 0 0 0\n")
    meter.sample(2.0)
    reading = meter.reading()
    power_w = 4 * (HOST_IDLE_W_PER_CPU + 0.75 * (HOST_MAX_W_PER_CPU - HOST_IDLE_W_PER_CPU))
    assert reading.method == "host-model" and reading.kind == "host"
    assert reading.energy_j == pytest.approx(2 * power_w)
    assert reading.avg_power_w == pytest.approx(power_w)
    assert reading.utilization_pct == pytest.approx(75.0)


def test_a_meter_that_fails_mid_run_is_noted_not_fatal(tmp_path: Path) -> None:
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", energy_uj=0, max_uj=10**9)
    meters = open_meters(use_nvml=False, powercap_root=tmp_path)
    meters.sample(0.0)
    (zone / "energy_uj").write_text("garbage")
    meters.sample(1.0)
    (zone / "energy_uj").write_text("3000000")
    meters.sample(2.0)
    assert meters.energy_j() == pytest.approx(3.0)
    assert any("ValueError" in n for n in meters.notes)
