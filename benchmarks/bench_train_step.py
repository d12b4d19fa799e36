"""Training-step time per model preset on this machine's CPU (or GPU with --device cuda).

A step here is what the trainer does per batch for a given recycling count n: n - 1 forward passes without
gradients, one with, the origin-invariant loss, backward, gradient clipping and AdamW. Batches are synthetic
(random normalised amplitudes, random 0/pi phases) so only the model is timed. Prints one JSON object.

    python -m benchmarks.bench_train_step [--presets tiny,small,paper --batch tiny=64,small=64,paper=4]
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import time

import torch

from builder.reflections import phai_hkl, systematic_absences
from training.loss import phai_loss
from training.model import seeded_model, hkl_grid_index, logits_to_phase_deg, preset, to_grid

try:
    from benchmarks.common import emit
except ImportError:  # run as a script
    from common import emit  # type: ignore


def step_fn(net, opt, hkl, index, grid_shape, autocast):
    weight = torch.from_numpy(~systematic_absences("P 1 21/c 1", hkl)).float()

    def step(amp_grid, phase, n):
        ph = torch.zeros_like(amp_grid)
        with torch.no_grad():
            for _ in range(n - 1):
                with autocast():
                    logits = net(amp_grid, ph)
                deg = logits_to_phase_deg(logits.float())
                ph = deg.new_zeros(deg.shape[0], math.prod(grid_shape)).index_copy(1, index, deg).view(
                    deg.shape[0], *grid_shape)
        with autocast():
            logits = net(amp_grid, ph)
        loss = phai_loss(logits.float(), phase, weight.to(amp_grid.device), hkl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return float(loss.detach())
    return step


def bench(name: str, batch: int, device: torch.device, repeats: int) -> dict:
    cfg = preset(name)
    net = seeded_model(cfg, 0).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=1e-6)
    hkl = phai_hkl(cfg.max_index)
    gen = torch.Generator().manual_seed(0)
    amp = torch.rand(batch, len(hkl), generator=gen)
    amp = amp / amp.amax(1, keepdim=True)
    phase = (torch.rand(batch, len(hkl), generator=gen) < 0.5).float() * math.pi
    grid = to_grid(amp, hkl).to(device)
    phase = phase.to(device)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    step = step_fn(net, opt, hkl, hkl_grid_index(hkl).to(device), cfg.grid_shape, autocast)
    out = {"preset": name, "params": sum(p.numel() for p in net.parameters()), "batch": batch}
    step(grid, phase, 1)  # warm-up (allocations, kernel selection)
    for n in (1, 3):
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            step(grid, phase, n)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        best = min(times)
        out[f"step_ms_n{n}"] = round(1e3 * best, 1)
        out[f"samples_per_s_n{n}"] = round(batch / best, 2)
    # recycling n ~ U{1,2,3}: the mean cost is that of n = 2, i.e. (t1 + t3) / 2
    mean = (out["step_ms_n1"] + out["step_ms_n3"]) / 2
    out["step_ms_recycling_mean"] = round(mean, 1)
    out["samples_per_s_recycling_mean"] = round(1e3 * batch / mean, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small,paper")
    ap.add_argument("--batch", default="tiny=64,small=64,paper=4", help="batch size per preset")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = dict(kv.split("=") for kv in args.batch.split(","))
    device = torch.device(args.device)
    res = {"benchmark": "bench_train_step", "device": str(device), "cores": len(os.sched_getaffinity(0)),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "results": [bench(p, int(batches.get(p, 64)), device, args.repeats if p != "paper" else 1)
                       for p in args.presets.split(",")]}
    emit(res, None)


if __name__ == "__main__":
    main()
