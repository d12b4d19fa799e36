"""One-shot CUDA measurement of PhAI training: paper-preset samples/s in bf16 with recycling, peak memory, and
whether the shard loader keeps up. Prints one JSON object (also written to --out, or $OUT/gpu_train.json).

    python -m benchmarks.gpu_train                      # on a CUDA machine, ~3-5 minutes
    python -m benchmarks.gpu_train --dry-run            # tiny preset on CPU: checks that the script runs
    python -m benchmarks.gpu_train --train DIR --measure loader,e2e --sf device    # one pipeline, e.g. structures-only

Measurements (--measure, default all), each with its own wall-clock cap:
  model   synthetic batches already on the GPU; recycling n ~ U{1,2,3} per step (seeded as in the trainer),
          bf16 autocast, AdamW, grad clipping: the most the model can take (samples/s, step ms, peak memory);
  loader  the real shard loader over --train (sha256 checks, d_min mask) with W workers, plus the host-to-device
          copy and `prepare_batch` on the GPU (which computes F there for structures-only shards with --sf device);
  e2e     both together, as `phaseforge-train` runs them: `keeps_up` = e2e >= 0.9 x model (when model ran);
  sf      structure factors of one structures-only batch (--structures) on the GPU (training/sf_torch.py).
benchmarks/gpu_check.sh runs this for the materialised, structures-only and on-the-fly pipelines.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import time
from pathlib import Path

import torch

from builder.reflections import phai_hkl
from training.data import DataConfig, Loader, open_sources, prepare_batch, read_shard, collate, to_sample
from training.model import seeded_model, hkl_grid_index, preset, to_grid
from training.train import n_cycles_at

try:
    from benchmarks.bench_loader import ensure
    from benchmarks.bench_train_step import step_fn
    from benchmarks.common import emit
except ImportError:  # run as a script
    from bench_loader import ensure  # type: ignore
    from bench_train_step import step_fn  # type: ignore
    from common import emit  # type: ignore

MEASURES = ("model", "loader", "e2e", "sf")
H200_BF16_FLOPS = 790e12  # dense bf16 peak measured on this workplace's H200 (device KINDS notes)
ASSUMED_MFU = 0.4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def memory(device: torch.device, res: dict) -> None:
    if device.type == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        res["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)


def measure_model(step, cfg, hkl, args, device) -> dict:
    """Synthetic batches already on the device: the model's own ceiling."""
    gen = torch.Generator().manual_seed(0)
    amp = torch.rand(args.batch_size, len(hkl), generator=gen)
    grid = to_grid(amp / amp.amax(1, keepdim=True), hkl).to(device)
    phase = ((torch.rand(args.batch_size, len(hkl), generator=gen) < 0.5).float() * math.pi).to(device)

    def synthetic():
        while True:
            yield grid, phase

    res = timed_steps(step, synthetic(), device, 0, args.warmup, args.steps, args.cap_s)
    memory(device, res)
    for n in (1, 3):  # fixed recycling counts, for the record
        r = timed_steps(lambda g, p, _, n=n: step(g, p, n), synthetic(), device, 0, 2, max(4, args.steps // 4),
                        args.cap_s / 4)
        res[f"samples_per_s_n{n}"] = r["samples_per_s"]
    return res


def measure_pipeline(step, hkl, args, device, measures) -> dict:
    """The real loader over --train (and, with e2e, the model fed by it)."""
    sources = open_sources([args.train])
    streams = max(args.workers, 1) * 3
    dcfg = DataConfig(batch_size=args.batch_size, streams=streams, sf=args.sf)
    prior = torch.full((len(hkl),), 0.074)
    loader = Loader(sources, dcfg, workers=args.workers, pin_memory=device.type == "cuda")

    def prepared():
        for raw in loader:
            b = prepare_batch(raw, prior, device)
            yield b.grid, b.phase

    it = prepared()
    out = {"manifest": str(args.train), "structures_only": sources[0].structures_only, "sf": args.sf,
           "streams": streams, "workers": args.workers}
    t = time.perf_counter()
    for _ in range(streams + 2):  # warm-up: the first window read of every stream
        next(it)
    out["warmup_s"] = round(time.perf_counter() - t, 1)
    if "loader" in measures:
        sync(device)
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < min(args.cap_s, 30.0) and n < 400 * args.batch_size:
            g, _ = next(it)
            n += g.shape[0]
        sync(device)
        out["loader_samples_per_s"] = round(n / (time.perf_counter() - t), 1)
    if "e2e" in measures:  # the loader keeps running: its workers are warm
        out["e2e"] = timed_steps(step, it, device, 1, 2, args.steps, args.cap_s)
        memory(device, out["e2e"])
    it.close()
    return out


def measure_sf(hkl, args, device) -> dict:
    src = open_sources([args.structures])[0]
    dev_cfg = DataConfig(batch_size=64, sf="device")
    batch = collate([to_sample(r, 0, src, 0, dev_cfg) for r in read_shard(src, 0)][:64])
    prior = torch.full((len(hkl),), 0.074)
    for _ in range(2):
        prepare_batch(batch, prior, device)
    sync(device)
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        prepare_batch(batch, prior, device)
    sync(device)
    dt = (time.perf_counter() - t) / reps
    return {"batch": len(batch["key"]), "ms_per_batch": round(1e3 * dt, 2),
            "structures_per_s": round(len(batch["key"]) / dt, 1), "max_atoms": int(batch["z"].shape[1])}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny preset on CPU, a few steps")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--count", type=int, default=24000, help="training structures to build when --train is unset")
    ap.add_argument("--cap-s", type=float, default=60.0, help="wall-clock cap per measurement")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--measure", default=",".join(MEASURES), help=f"comma-separated subset of {','.join(MEASURES)}")
    ap.add_argument("--train", type=Path, default=None, help="manifest directory for loader and e2e")
    ap.add_argument("--structures", type=Path, default=None, help="structures-only manifest directory for sf")
    ap.add_argument("--sf", default="device", choices=("loader", "device"),
                    help="where a structures-only --train gets its F")
    ap.add_argument("--data", type=Path, default=Path("/tmp/phaseforge-gpu-bench"))
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    bad = set(args.measure.split(",")) - set(MEASURES)
    if bad:
        ap.error(f"--measure: unknown {', '.join(sorted(bad))}")
    if args.dry_run:
        args.preset, args.batch_size, args.steps, args.warmup, args.workers = "tiny", 8, 4, 1, min(args.workers, 2)
        args.count, args.cap_s = min(args.count, 400), min(args.cap_s, 3.0)  # proves each step runs; no more
    return args


def main() -> None:
    args = parse_args()
    measures = args.measure.split(",")
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # a check, not a measurement: steady on a busy machine
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device (use --dry-run to check the script on CPU)")
        device = torch.device("cuda:0")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res: dict = {"benchmark": "gpu_train", "dry_run": args.dry_run, "preset": args.preset,
                 "batch_size": args.batch_size, "workers": args.workers, "compile": args.compile,
                 "measure": measures, "torch": torch.__version__, "python": platform.python_version(),
                 "cpus": len(os.sched_getaffinity(0)),
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if "model" in measures:
        res["flops_estimate"] = flops_estimate(preset(args.preset))
    t_all = time.perf_counter()

    t = time.perf_counter()
    if args.train is None and ("loader" in measures or "e2e" in measures):
        args.train = ensure(args.data / "train", "tar", args.count, 1000 if args.count >= 8000 else 100)
    if args.structures is None and "sf" in measures:
        args.structures = ensure(args.data / "structures", "tar", 256, 64, reflections=False)
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
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    if "model" in measures:
        res["model"] = measure_model(step, cfg, hkl, args, device)
    if "loader" in measures or "e2e" in measures:
        res["pipeline"] = measure_pipeline(step, hkl, args, device, measures)
        if "model" in measures and "e2e" in measures:
            e2e, model = res["pipeline"]["e2e"]["samples_per_s"], res["model"]["samples_per_s"]
            res["keeps_up"] = e2e >= 0.9 * model
            res["e2e_over_model"] = round(e2e / max(model, 1e-9), 3)
    if "sf" in measures:
        res["sf_on_device"] = measure_sf(hkl, args, device)
    res["host_peak_rss_mib"] = round(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                         resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024, 1)
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    emit(res, args.out or (Path(os.environ["OUT"], "gpu_train.json") if os.environ.get("OUT") else None))


if __name__ == "__main__":
    main()
