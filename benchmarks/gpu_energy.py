"""The agent's GPU energy against NVML's counter read directly around the run (issue 12, part 6).

Usage (on a machine with an NVIDIA GPU and nvidia-ml-py; PyTorch for the training loop):
    python3 -P benchmarks/gpu_energy.py [--seconds 60] [--out energy.json]

(``-P`` keeps benchmarks/ off the import path, where queue.py would shadow the standard
library's ``queue``.)

What it does:

1. reads every GPU's NVML total-energy counter (mJ) directly;
2. runs a short real training loop under ``greenplace agent --interval-s 1`` (a small
   transformer, bf16 autocast, AdamW, with PyTorch on CUDA; without PyTorch a NumPy matmul
   loop on the CPU, which leaves the GPUs idle: the comparison then covers idle power only);
3. reads the counters again, and compares: the agent's GPU energy (summary ``devices`` of
   kind gpu) with the counters' difference (target: within 2 %; the agent's window is a
   little shorter, interpreter start and imports, so it reads a little low);
4. meanwhile samples each GPU's power at 1 Hz in this process and integrates it with the
   trapezoid rule (the agent's ``nvml-power-integration`` method, used where a GPU has no
   counter), and reports its error against the counter;
5. reports the estimate's error: greenplace's default estimate (power limit x 0.8 x wall
   time per GPU, ``scheduler/jobs.py`` ``DEFAULT_UTILIZATION``) against the measurement.

Exit codes: 0 the agent is within the target; 1 it is not; 3 no NVIDIA GPU / NVML here
(nothing measured: the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TARGET_PCT = 2.0
DEFAULT_UTILIZATION = 0.8  # scheduler/jobs.py: greenplace's estimate without a measurement
EXIT_NO_GPU = 3

TRAIN = """\
import sys, time
seconds = float(sys.argv[1])
try:
    import torch
except ImportError:
    torch = None
if torch is not None and torch.cuda.is_available():
    dev = torch.device("cuda")
    layer = torch.nn.TransformerEncoderLayer(d_model=1024, nhead=16, dim_feedforward=4096,
                                             batch_first=True, norm_first=True)
    model = torch.nn.Sequential(torch.nn.Embedding(32000, 1024),
                                torch.nn.TransformerEncoder(layer, num_layers=8),
                                torch.nn.Linear(1024, 32000)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 32000, (16, 512), device=dev)
    t0, steps = time.time(), 0
    while time.time() - t0 < seconds:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32000),
                                                     tokens[:, 1:].reshape(-1))
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        steps += 1
        if steps % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    print(f"workload: torch transformer training, {steps} steps", flush=True)
else:
    import numpy as np
    a = np.random.rand(1024, 1024)
    t0, steps = time.time(), 0
    while time.time() - t0 < seconds:
        a = (a @ a) / 1024.0
        steps += 1
    print(f"workload: numpy matmul loop (CPU), {steps} steps", flush=True)
"""


def _open_nvml() -> tuple[Any, list[Any], str | None]:
    try:
        import pynvml
    except ImportError:
        return None, [], "nvidia-ml-py is not installed (pip install 'greenplace[gpu]')"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, [], f"NVML did not start ({exc})"
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    if not handles:
        pynvml.nvmlShutdown()
        return None, [], "NVML found no GPU"
    return pynvml, handles, None


def _counters_mj(nvml: Any, handles: list[Any]) -> list[int]:
    return [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]


def _pct(value: float, reference: float) -> float | None:
    return None if reference <= 0 else round(100.0 * (value - reference) / reference, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    nvml, handles, reason = _open_nvml()
    if nvml is None:
        print(f"gpu_energy: no NVIDIA GPU/NVML here: {reason}. Nothing measured; run this on "
              "a machine with an NVIDIA GPU (Volta or newer for the energy counter).",
              file=sys.stderr)
        return EXIT_NO_GPU
    try:
        _counters_mj(nvml, handles)
    except nvml.NVMLError as exc:
        print(f"gpu_energy: this GPU has no NVML energy counter ({exc}): the direct reference "
              "is missing, so nothing is compared.", file=sys.stderr)
        return EXIT_NO_GPU

    samples: list[tuple[float, list[float]]] = []
    stop = threading.Event()

    def sample_power() -> None:  # the agent's fallback method, at the agent's 1 Hz
        while not stop.is_set():
            samples.append((time.monotonic(),
                            [nvml.nvmlDeviceGetPowerUsage(h) / 1000.0 for h in handles]))
            stop.wait(1.0)

    with tempfile.TemporaryDirectory() as tmp:
        script, summary_file = Path(tmp) / "train.py", Path(tmp) / "summary.json"
        script.write_text(TRAIN)
        env = {k: v for k, v in os.environ.items()
               if k not in ("GREENPLACE_API_URL", "GREENPLACE_AGENT_TOKEN")}
        sampler = threading.Thread(target=sample_power, daemon=True)
        before_mj, t0 = _counters_mj(nvml, handles), time.monotonic()
        sampler.start()
        done = subprocess.run(
            [sys.executable, "-m", "greenplace", "agent", "--interval-s", "1",
             "--summary-file", str(summary_file), "--", sys.executable, str(script),
             str(args.seconds)], env=env, capture_output=True, text=True)
        after_mj, wall_s = _counters_mj(nvml, handles), time.monotonic() - t0
        stop.set()
        sampler.join()
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 1
        summary = json.loads(summary_file.read_text())
    limits_w = [nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0 for h in handles]
    names = [nvml.nvmlDeviceGetName(h) for h in handles]
    nvml.nvmlShutdown()

    direct_j = sum(a - b for a, b in zip(after_mj, before_mj, strict=True)) / 1000.0
    gpus = [d for d in summary["devices"] if d["kind"] == "gpu"]
    agent_j = sum(d["energy_j"] for d in gpus)
    integrated_j = sum(
        (p0 + p1) / 2.0 * (t1 - t0_)
        for (t0_, w0), (t1, w1) in zip(samples, samples[1:], strict=False)
        for p0, p1 in zip(w0, w1, strict=True))
    estimate_j = sum(limits_w) * DEFAULT_UTILIZATION * summary["wall_s"]
    agent_err = _pct(agent_j, direct_j)
    result = {
        "gpus": [n.decode() if isinstance(n, bytes) else n for n in names],
        "workload": done.stdout.strip().splitlines()[-1:] or [""],
        "wall_s_direct": round(wall_s, 2), "wall_s_agent": summary["wall_s"],
        "energy_j_direct_counter": round(direct_j, 1),
        "energy_j_agent_gpus": round(agent_j, 1),
        "agent_methods": sorted({d["method"] for d in gpus}),
        "agent_error_pct": agent_err,
        "energy_j_power_integration_1hz": round(integrated_j, 1),
        "power_integration_error_pct": _pct(integrated_j, direct_j),
        "energy_j_estimate_limit_x_0.8": round(estimate_j, 1),
        "estimate_error_pct": _pct(estimate_j, agent_j),
        "agent_overhead_cpu_s": summary["overhead_cpu_s"],
        "target_pct": TARGET_PCT,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if agent_err is not None and abs(agent_err) <= TARGET_PCT else 1


if __name__ == "__main__":
    sys.exit(main())
