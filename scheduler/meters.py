"""Energy meters of the machine a job runs on: NVIDIA GPUs (NVML), CPU packages and DRAM
(Linux powercap / RAPL), else a labelled host model. Used by ``scheduler/agent.py``.

Each meter is sampled about once a second (``sample(now_s)``, ``now_s`` from a monotonic
clock) and keeps its energy since the first sample, its average and peak power and, for
GPUs, the mean utilisation. Every figure carries its method:

- ``nvml-energy-counter``: NVML's total-energy counter (mJ since the driver loaded;
  Volta and newer): the energy is the counter's difference, exact up to the counter's own
  accuracy; the peak is the highest average power between two samples.
- ``nvml-power-integration``: where the counter is NOT_SUPPORTED, NVML's power reading (mW)
  integrated over time with the trapezoid rule; the peak is the highest reading.
- ``rapl``: ``/sys/class/powercap/intel-rapl:*/energy_uj`` (package zones, and their
  ``dram`` subzones; ``core``/``uncore`` are inside the package and ``psys`` spans the
  whole platform, so they are left out to count nothing twice). The counter wraps at
  ``max_energy_range_uj``.
- ``host-model``: an estimate, not a measurement: vCPUs x (idle + utilisation x (max -
  idle)) watts per vCPU, utilisation from ``/proc/stat``; coefficients are Cloud Carbon
  Footprint's published averages (0.74 W idle, 3.5 W at 100 % per vCPU).

Design choice: nvidia-ml-py (module ``pynvml``) is imported lazily and is optional; an
absent library, a missing driver or no GPU means no NVML meter, and the reason is kept in
``Meters.notes`` for the summary. The NVML library object is a parameter (``nvml=``) so a
test can pass a fake with the real pynvml names (``nvmlInit``, ``nvmlDeviceGetCount``,
``nvmlDeviceGetHandleByIndex``, ``nvmlDeviceGetName``,
``nvmlDeviceGetTotalEnergyConsumption``, ``nvmlDeviceGetPowerUsage``,
``nvmlDeviceGetUtilizationRates``, ``nvmlShutdown``, ``NVMLError``,
``NVML_ERROR_NOT_SUPPORTED``). Only the standard library is imported here: the agent must
stay light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

POWERCAP_ROOT = Path("/sys/class/powercap")
PROC_STAT = Path("/proc/stat")
# Cloud Carbon Footprint's coefficients (average over cloud CPUs), watts per vCPU.
HOST_IDLE_W_PER_CPU = 0.74
HOST_MAX_W_PER_CPU = 3.5
_RAPL_NAMES = ("package", "dram")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEnergy:
    """What one meter measured since its first sample (the summary's ``devices`` entry)."""

    name: str
    kind: str  # "gpu" | "cpu" | "dram" | "host"
    method: str  # "nvml-energy-counter" | "nvml-power-integration" | "rapl" | "host-model"
    energy_j: float
    avg_power_w: float | None
    peak_power_w: float | None
    utilization_pct: float | None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name[:128], "kind": self.kind, "method": self.method,
                "energy_j": round(self.energy_j, 3),
                "avg_power_w": None if self.avg_power_w is None else round(self.avg_power_w, 3),
                "peak_power_w": (None if self.peak_power_w is None
                                 else round(self.peak_power_w, 3)),
                "utilization_pct": (None if self.utilization_pct is None
                                    else round(self.utilization_pct, 2))}


class Meter(Protocol):
    """One device's energy; ``sample`` reads it once (``now_s``: a monotonic clock)."""

    def sample(self, now_s: float) -> None: ...

    def reading(self) -> DeviceEnergy: ...


@dataclass(slots=True)
class _Tally:
    """Energy, time span, peak power and utilisation readings accumulated by a meter."""

    energy_j: float = 0.0
    first_s: float | None = None
    last_s: float | None = None
    peak_power_w: float | None = None
    utilization: list[float] = field(default_factory=list)

    def add(self, now_s: float, energy_j: float, power_w: float | None) -> None:
        """Add ``energy_j`` used since the previous sample; ``power_w`` may set the peak."""
        if self.first_s is None:
            self.first_s = now_s
        self.last_s = now_s
        self.energy_j += energy_j
        if power_w is not None:
            self.peak_power_w = max(power_w, self.peak_power_w or 0.0)

    def reading(self, *, name: str, kind: str, method: str) -> DeviceEnergy:
        span_s = (self.last_s or 0.0) - (self.first_s or 0.0)
        util = sum(self.utilization) / len(self.utilization) if self.utilization else None
        return DeviceEnergy(name=name, kind=kind, method=method, energy_j=self.energy_j,
                            avg_power_w=self.energy_j / span_s if span_s > 0 else None,
                            peak_power_w=self.peak_power_w, utilization_pct=util)


class NvmlMeter:
    """One NVIDIA GPU through NVML: the energy counter when supported, else power x time."""

    def __init__(self, nvml: Any, handle: Any, *, name: str, counter: bool) -> None:
        self._nvml, self._handle, self.name, self.counter = nvml, handle, name, counter
        self._tally = _Tally()
        self._prev: tuple[float, float] | None = None  # (now_s, counter mJ or power W)

    @property
    def method(self) -> str:
        return "nvml-energy-counter" if self.counter else "nvml-power-integration"

    def sample(self, now_s: float) -> None:
        nvml = self._nvml
        if self.counter:
            value = float(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))  # mJ
        else:
            value = nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0  # mW -> W
        try:
            self._tally.utilization.append(
                float(nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
        except nvml.NVMLError:
            pass  # utilisation is optional (some vGPUs refuse it)
        if self._prev is None:
            self._tally.add(now_s, 0.0, None if self.counter else value)
        else:
            prev_s, prev = self._prev
            dt_s = now_s - prev_s
            if self.counter:
                energy_j = max(value - prev, 0.0) / 1000.0
                self._tally.add(now_s, energy_j, energy_j / dt_s if dt_s > 0 else None)
            else:
                self._tally.add(now_s, (prev + value) / 2.0 * dt_s, value)
        self._prev = (now_s, value)

    def reading(self) -> DeviceEnergy:
        return self._tally.reading(name=self.name, kind="gpu", method=self.method)


def _counter_supported(nvml: Any, handle: Any) -> bool:
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_SUPPORTED:
            return False
        raise
    return True


def open_nvml(nvml: Any | None = None) -> tuple[list[NvmlMeter], str | None, Any]:
    """A meter per NVIDIA GPU, the reason when there is none, and the library to shut down.

    ``nvml``: a pynvml-shaped object (default: ``import pynvml``, nvidia-ml-py).
    """
    if nvml is None:
        try:
            import pynvml  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            return [], ("no NVML meter: nvidia-ml-py is not installed (pip install "
                        "'greenplace[gpu]')"), None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return [], f"no NVML meter: NVML did not start ({exc}); no NVIDIA driver or GPU", None
    meters: list[NvmlMeter] = []
    skipped: list[str] = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            raw = nvml.nvmlDeviceGetName(handle)
            name = f"{index}: {raw.decode() if isinstance(raw, bytes) else raw}"
            try:
                counter = _counter_supported(nvml, handle)
                if not counter:
                    nvml.nvmlDeviceGetPowerUsage(handle)
            except nvml.NVMLError as exc:
                skipped.append(f"GPU {name}: neither energy counter nor power reading ({exc})")
                continue
            meters.append(NvmlMeter(nvml, handle, name=name, counter=counter))
    except nvml.NVMLError as exc:
        skipped.append(f"NVML failed while listing GPUs ({exc})")
    if not meters:
        nvml.nvmlShutdown()
        reasons = "; ".join(skipped) or "no NVIDIA GPU"
        return [], f"no NVML meter: {reasons}", None
    return meters, ("; ".join(skipped) or None), nvml


class RaplMeter:
    """One powercap zone (a CPU package or its DRAM): ``energy_uj``, wrapping at its range."""

    def __init__(self, zone: Path, *, name: str, kind: str) -> None:
        self.zone, self.name, self.kind = zone, name, kind
        self.max_range_uj = int((zone / "max_energy_range_uj").read_text())
        self._tally = _Tally()
        self._prev: tuple[float, int] | None = None

    def read_uj(self) -> int:
        return int((self.zone / "energy_uj").read_text())

    def sample(self, now_s: float) -> None:
        value = self.read_uj()
        if self._prev is None:
            self._tally.add(now_s, 0.0, None)
        else:
            prev_s, prev = self._prev
            delta_uj = value - prev
            if delta_uj < 0:  # the counter wrapped: it counts 0 .. max_energy_range_uj
                delta_uj += self.max_range_uj
            energy_j = delta_uj / 1e6
            dt_s = now_s - prev_s
            self._tally.add(now_s, energy_j, energy_j / dt_s if dt_s > 0 else None)
        self._prev = (now_s, value)

    def reading(self) -> DeviceEnergy:
        return self._tally.reading(name=self.name, kind=self.kind, method="rapl")


def open_rapl(root: Path = POWERCAP_ROOT) -> tuple[list[RaplMeter], str | None]:
    """A meter per CPU package and DRAM zone under ``root``, or none and the reason."""
    zones = sorted(root.glob("intel-rapl:*")) if root.is_dir() else []
    meters: list[RaplMeter] = []
    try:
        for zone in zones:
            name = (zone / "name").read_text().strip()
            if not name.startswith(_RAPL_NAMES):
                continue
            meter = RaplMeter(zone, name=f"{zone.name} {name}",
                              kind="dram" if name.startswith("dram") else "cpu")
            meter.read_uj()
            meters.append(meter)
    except PermissionError as exc:
        return [], (f"no RAPL meter: {exc.filename} is not readable (since Linux 5.10 only "
                    "root reads energy_uj; run the agent as root or grant read access)")
    except (OSError, ValueError) as exc:
        return [], f"no RAPL meter: {root} could not be read ({exc})"
    if not meters:
        return [], f"no RAPL meter: no package or dram zone under {root}"
    return meters, None


def _cpu_times(proc_stat: Path) -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from the ``cpu`` line of /proc/stat."""
    fields = [float(v) for v in proc_stat.read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


class HostModelMeter:
    """An estimate of the host's CPU power from its vCPU count and utilisation (labelled)."""

    def __init__(self, *, cpus: int | None = None, proc_stat: Path = PROC_STAT) -> None:
        self.cpus = cpus or os.cpu_count() or 1
        self.proc_stat = proc_stat
        self._tally = _Tally()
        self._prev: tuple[float, tuple[float, float] | None] | None = None

    def _times(self) -> tuple[float, float] | None:
        try:
            return _cpu_times(self.proc_stat)
        except (OSError, ValueError, IndexError):
            return None

    def power_w(self, utilization: float) -> float:
        per_cpu = HOST_IDLE_W_PER_CPU + utilization * (HOST_MAX_W_PER_CPU - HOST_IDLE_W_PER_CPU)
        return self.cpus * per_cpu

    def sample(self, now_s: float) -> None:
        times = self._times()
        if self._prev is None:
            self._tally.add(now_s, 0.0, None)
        else:
            prev_s, prev_times = self._prev
            utilization = 1.0  # unknown utilisation: the model's upper bound
            if times is not None and prev_times is not None and times[1] > prev_times[1]:
                utilization = (times[0] - prev_times[0]) / (times[1] - prev_times[1])
            utilization = min(max(utilization, 0.0), 1.0)
            self._tally.utilization.append(utilization * 100.0)
            power_w = self.power_w(utilization)
            self._tally.add(now_s, power_w * (now_s - prev_s), power_w)
        self._prev = (now_s, times)

    def reading(self) -> DeviceEnergy:
        return self._tally.reading(name=f"host ({self.cpus} vCPUs)", kind="host",
                                   method="host-model")


@dataclass(slots=True)
class Meters:
    """Every meter of this machine, why any kind is missing, and the combined method."""

    meters: list[Meter]
    notes: list[str]
    nvml: Any = None  # the library to shut down, when NVML meters are open

    @property
    def method(self) -> str:
        """``nvml+rapl``, ``nvml+host-model``, ``rapl``, ``host-model``, ..."""
        families: list[str] = []
        for meter in self.meters:
            family = meter.reading().method.split("-")[0]
            family = "host-model" if family == "host" else family
            if family not in families:
                families.append(family)
        return "+".join(families) or "none"

    def sample(self, now_s: float) -> None:
        """Read every meter once; a meter that fails is noted and read again next time."""
        for meter in self.meters:
            try:
                meter.sample(now_s)
            except Exception as exc:  # noqa: BLE001 - measuring must never stop the job
                note = f"a meter failed to read ({type(exc).__name__}: {exc})"
                if note not in self.notes:
                    self.notes.append(note)

    def readings(self) -> list[DeviceEnergy]:
        return [meter.reading() for meter in self.meters]

    def energy_j(self) -> float:
        return sum(r.energy_j for r in self.readings())

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass
            self.nvml = None


def open_meters(*, nvml: Any | None = None, powercap_root: Path = POWERCAP_ROOT,
                proc_stat: Path = PROC_STAT, use_nvml: bool = True) -> Meters:
    """The GPUs through NVML, the CPUs and DRAM through RAPL, else the host model."""
    notes: list[str] = []
    gpu_meters: list[NvmlMeter] = []
    library = None
    if use_nvml:
        gpu_meters, note, library = open_nvml(nvml)
        if note:
            notes.append(note)
    rapl_meters, note = open_rapl(powercap_root)
    meters: list[Meter] = [*gpu_meters, *rapl_meters]
    if note:
        notes.append(note)
        meters.append(HostModelMeter(proc_stat=proc_stat))
    return Meters(meters=meters, notes=notes, nvml=library)
