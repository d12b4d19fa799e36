"""One-shot CUDA measurement of PhAI training: paper-preset samples/s in bf16 with recycling, peak memory, and
whether the shard loader keeps up. Prints one JSON object (and writes it to $OUT/gpu_train.json if $OUT is set).

    python -m benchmarks.gpu_train                      # on a CUDA machine, ~3-5 minutes
    python -m benchmarks.gpu_train --dry-run            # tiny preset on CPU: checks that the script runs

Four measurements, each with its own wall-clock cap:
  model   synthetic batches already on the GPU; recycling n ~ U{1,2,3} per step (seeded as in the trainer),
          bf16 autocast, AdamW, grad clipping: the most the model can take (samples/s, step ms, peak memory);
  loader  the real shard loader (tar, sha256 checks, d_min mask) with W workers, plus the host-to-device copy and
          `prepare_batch` on the GPU: the most the input pipeline can give;
  e2e     both together, as `phaseforge-train` runs them: `keeps_up` = e2e >= 0.9 x model;
  sf      structure factors of a structures-only batch computed on the GPU (training/sf_torch.py).
The estimate from FLOPs for the paper preset on an H200 is ~3,000 samples/s (issue 3).

Needs the project's dependencies (gemmi, webdataset, ase, click, tqdm, h5py) on the GPU machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from builder.build import build, make_header
from builder.reflections import phai_hkl
from training.data import DataConfig, Loader, open_sources, prepare_batch, read_shard, collate, to_sample
from training.model import seeded_model, hkl_grid_index, preset, to_grid
from training.train import n_cycles_at

try:
    from benchmarks.bench_train_step import step_fn
    from benchmarks.train_tiny_cpu import strategy
except ImportError:  # run as a script
    from bench_train_step import step_fn  # type: ignore
    from train_tiny_cpu import strategy  # type: ignore


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ensure(out: Path, count: int, shard_size: int, reflections: bool = True) -> Path:
    if not (out / "manifest.json").is_file():
        build(out, make_header(strategy("lognormal-molecules"), count, shard_size, "tar", 1, reflections),
              workers=max(1, len(os.sched_getaffinity(0))), progress=False)
    return out


def timed_steps(step, batches, device, seed: int, warmup: int, steps: int, cap_s: float) -> dict:
    """Run warmup + steps (stopping at cap_s); `batches` yields prepared (grid, phase) pairs."""
    for i in range(warmup):
        grid, phase = next(batches)
        step(grid, phase, n_cycles_at(seed, i, 3))
    sync(device)
    t0, n_samples, done = time.perf_counter(), 0, 0
    for i in range(warmup, warmup + steps):
        grid, phase = next(batches)
        step(grid, phase, n_cycles_at(seed, i, 3))
        n_samples += grid.shape[0]
        done += 1
        if time.perf_counter() - t0 > cap_s:
            break
    sync(device)
    dt = time.perf_counter() - t0
    return {"steps": done, "seconds": round(dt, 2), "samples_per_s": round(n_samples / dt, 1),
            "step_ms": round(1e3 * dt / max(done, 1), 2)}


H200_BF16_FLOPS = 790e12  # dense bf16 peak measured on this workplace's H200 (device KINDS notes)
ASSUMED_MFU = 0.4


def flops_estimate(cfg) -> dict:
    """Training FLOPs per sample from a counted forward pass: with n ~ U{1,2,3} recycling, E[n] − 1 = 1 forward
    without gradients plus one forward + backward (≈ 3 forwards) → 4 forwards per sample."""
    from torch.utils.flop_counter import FlopCounterMode

    net = seeded_model(cfg, 0)
    x = torch.zeros(1, *cfg.grid_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, x)
    fwd = counter.get_total_flops()
    per_sample = 4 * fwd
    return {"forward_flops_per_sample": fwd, "train_flops_per_sample": per_sample,
            "assumed_mfu": ASSUMED_MFU,
            "h200_samples_per_s": round(ASSUMED_MFU * H200_BF16_FLOPS / per_sample, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny preset on CPU, a few steps")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--count", type=int, default=24000, help="training structures to build for the loader")
    ap.add_argument("--cap-s", type=float, default=60.0, help="wall-clock cap per measurement")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--data", type=Path, default=Path("/tmp/phaseforge-gpu-bench"))
    args = ap.parse_args()
    if args.dry_run:
        args.preset, args.batch_size, args.steps, args.warmup, args.workers = "tiny", 8, 4, 1, 2
        args.count, args.cap_s = min(args.count, 400), min(args.cap_s, 20.0)
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device (use --dry-run to check the script on CPU)")
        device = torch.device("cuda:0")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res: dict = {"benchmark": "gpu_train", "dry_run": args.dry_run, "preset": args.preset,
                 "batch_size": args.batch_size, "workers": args.workers, "compile": args.compile,
                 "torch": torch.__version__, "python": platform.python_version(),
                 "cpus": len(os.sched_getaffinity(0)),
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    res["flops_estimate"] = flops_estimate(preset(args.preset))
    t_all = time.perf_counter()

    t = time.perf_counter()
    train = ensure(args.data / "train", args.count, 1000 if args.count >= 8000 else 100)
    s_only = ensure(args.data / "structures", 256, 64, reflections=False)
    res["build_seconds"] = round(time.perf_counter() - t, 1)

    cfg = preset(args.preset)
    hkl = phai_hkl(cfg.max_index)
    net = seeded_model(cfg, 0).to(device)
    res["params"] = sum(p.numel() for p in net.parameters())
    fwd = torch.compile(net) if args.compile else net
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=1e-6)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    step = step_fn(fwd, opt, hkl, hkl_grid_index(hkl).to(device), cfg.grid_shape, autocast)

    # 1. model only
    gen = torch.Generator().manual_seed(0)
    amp = torch.rand(args.batch_size, len(hkl), generator=gen)
    grid = to_grid(amp / amp.amax(1, keepdim=True), hkl).to(device)
    phase = ((torch.rand(args.batch_size, len(hkl), generator=gen) < 0.5).float() * math.pi).to(device)

    def synthetic():
        while True:
            yield grid, phase

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    res["model"] = timed_steps(step, synthetic(), device, 0, args.warmup, args.steps, args.cap_s)
    if cuda:
        res["model"]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        res["model"]["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    for n in (1, 3):  # fixed recycling counts, for the record
        def fixed(n=n):
            def s(g, p, _):
                return step(g, p, n)
            return s
        r = timed_steps(fixed(), synthetic(), device, 0, 2, max(4, args.steps // 4), args.cap_s / 4)
        res["model"][f"samples_per_s_n{n}"] = r["samples_per_s"]

    # 2. loader only (+ H2D copy and prepare_batch on the device)
    sources = open_sources([train])
    streams = max(args.workers, 1) * 3
    dcfg = DataConfig(batch_size=args.batch_size, streams=streams)
    prior = torch.full((len(hkl),), 0.074)
    loader = Loader(sources, dcfg, workers=args.workers, pin_memory=cuda)

    def prepared():
        for raw in loader:
            b = prepare_batch(raw, prior, device)
            yield b.grid, b.phase

    it = prepared()
    for _ in range(streams + 2):  # warm-up: the first window read of every stream
        next(it)
    sync(device)
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < min(args.cap_s, 30.0) and n < 400 * args.batch_size:
        g, _ = next(it)
        n += g.shape[0]
    sync(device)
    res["loader"] = {"samples_per_s": round(n / (time.perf_counter() - t), 1), "streams": streams}

    # 3. end to end (the loader keeps running: its workers are warm)
    res["e2e"] = timed_steps(step, it, device, 1, 2, args.steps, args.cap_s)
    it.close()
    res["keeps_up"] = res["e2e"]["samples_per_s"] >= 0.9 * res["model"]["samples_per_s"]
    res["loader_headroom"] = round(res["loader"]["samples_per_s"] / max(res["model"]["samples_per_s"], 1e-9), 2)

    # 4. structure factors on the device for a structures-only batch
    src = open_sources([s_only])[0]
    dev_cfg = DataConfig(batch_size=64, sf="device")
    batch = collate([to_sample(r, 0, src, 0, dev_cfg) for r in read_shard(src, 0)])
    for _ in range(2):
        prepare_batch(batch, prior, device)
    sync(device)
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        prepare_batch(batch, prior, device)
    sync(device)
    dt = (time.perf_counter() - t) / reps
    res["sf_on_device"] = {"batch": len(batch["key"]), "ms_per_batch": round(1e3 * dt, 2),
                           "structures_per_s": round(len(batch["key"]) / dt, 1),
                           "max_atoms": int(batch["z"].shape[1])}
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    text = json.dumps(res, sort_keys=True)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_train.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
