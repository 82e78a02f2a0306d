"""Measured average accelerator power during training-like work, against TDP (needs a GPU).

Usage (on a machine with an NVIDIA GPU, PyTorch and nvidia-ml-py):
    python3 -P benchmarks/gpu_power.py [--seconds 60] [--out power.json]

(``-P`` keeps benchmarks/ off the import path, where queue.py would shadow the
standard library's ``queue`` that PyTorch imports.)

Runs two workloads back to back, each for ``--seconds`` after a warm-up:
a saturating bf16 matrix product, and a small transformer language-model
training loop (bf16 autocast, AdamW). For each it reads the board's energy
counter (NVML total energy, mJ) before and after, and samples instantaneous
power at 10 Hz, then prints average power, its share of the board's power limit
(TDP), and the energy. This is how greenplace's default utilisation (average
power = TDP x 0.8 unless a job gives a measured figure) is checked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable

import pynvml
import torch


def measure(name: str, step: Callable[[], None], *, seconds: float, handle: object) -> dict:
    for _ in range(20):  # warm-up: clocks up, kernels compiled
        step()
    torch.cuda.synchronize()
    samples_w: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples_w.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    energy0_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    t0 = time.perf_counter()
    sampler.start()
    steps = 0
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
        if steps % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    elapsed_s = time.perf_counter() - t0
    energy_j = (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - energy0_mj) / 1000.0
    stop.set()
    sampler.join()
    limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
    avg_w = energy_j / elapsed_s
    return {"workload": name, "seconds": round(elapsed_s, 1), "steps": steps,
            "energy_kwh": round(energy_j / 3.6e6, 6), "average_power_w": round(avg_w, 1),
            "median_sampled_power_w": round(statistics.median(samples_w), 1),
            "power_limit_w": limit_w, "share_of_limit": round(avg_w / limit_w, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    idle_w = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
    device = torch.device("cuda")

    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)

    def matmul() -> None:
        a @ b

    layer = torch.nn.TransformerEncoderLayer(d_model=1024, nhead=16, dim_feedforward=4096,
                                             batch_first=True, norm_first=True)
    model = torch.nn.Sequential(torch.nn.Embedding(32000, 1024),
                                torch.nn.TransformerEncoder(layer, num_layers=12),
                                torch.nn.Linear(1024, 32000)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 32000, (16, 512), device=device)

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32000),
                                                     tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = {"gpu": pynvml.nvmlDeviceGetName(handle), "idle_power_w": idle_w,
               "runs": [measure("bf16 matmul 8192^3", matmul, seconds=args.seconds,
                                handle=handle),
                        measure("transformer LM training (12 x d1024, bf16)", train_step,
                                seconds=args.seconds, handle=handle)]}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
