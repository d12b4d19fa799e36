"""Issue 8.2 measured: the first-pass phases of training (--init zero | random | mixed) at equal steps of `tiny`.

Builds lognormal-molecules data with the builder API (a training set, a validation set for the trainer, and a
held-out set for the scan), trains `tiny` once per --init setting with the same seed, steps and data, then runs
the evaluation scan (evaluation.recycle: cycles 1..10 x {zero start, 4 random starts}) on the held-out structures
with each run's last.pt. Reports f(r >= 0.8) and median r of the paper's pick (best run by r), of the
figure-of-merit pick, and of the zero start alone and the random starts alone. One JSON object:

    python -m benchmarks.init_cpu --steps 1000 --out benchmarks/results/init_cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit
from builder.build import build, make_header
from builder.reflections import phai_hkl
from builder.strategy import load_strategy
from evaluation.metrics import SOLVED_R, phase_r_batch, summarise
from evaluation.recycle import ScanConfig, ScanInput, pick_runs, scan
from training.checkpoint import load_model
from training.config import TrainConfig
from training.data import DataConfig, open_source, validation_batches
from training.schedule import INITS
from training.train import fit


def held_out(path: Path, n: int) -> list[tuple[ScanInput, np.ndarray]]:
    """The first n structures of a manifest with the trainer's mask at d_min 1.0 A (observed, not absent)."""
    batches = validation_batches(open_source(path), DataConfig(batch_size=64), n)
    out = []
    for b in batches:
        for key, amp, phase, obs in zip(b["key"], b["amplitude"], b["phase"], b["observed"]):
            out.append((ScanInput(str(int(key)), amp.numpy(), obs.numpy()), phase.numpy()))
    return out


def _summary(r: np.ndarray) -> dict:
    s = summarise(r)
    se = math.sqrt(s["f_solved"] * (1 - s["f_solved"]) / s["n"])  # binomial standard error of f
    return {"f_solved": round(s["f_solved"], 4), "f_solved_se": round(se, 4), "median_r": round(s["median_r"], 4),
            "n_solved": int(np.sum(r >= SOLVED_R))}


def evaluate(ckpt: Path, items: list[tuple[ScanInput, np.ndarray]], cfg: ScanConfig) -> dict:
    """The scan on held-out structures: r of every (start, cycles) run, then the picks."""
    loaded = load_model(ckpt)
    hkl = phai_hkl(loaded.config.max_index)
    picks: dict[str, list[float]] = {"best": [], "fom": [], "zero_start": [], "random_starts": [], "zero_3": []}
    for (x, phase), res in zip(items, scan(loaded.model, hkl, [x for x, _ in items], cfg)):
        s_n, c_n = res.confidence.shape
        rows = np.deg2rad(res.phase_deg.reshape(s_n * c_n, -1))
        r = phase_r_batch(np.broadcast_to(x.amp, rows.shape), rows, np.broadcast_to(phase, rows.shape), hkl,
                          np.broadcast_to(x.observed, rows.shape))[0].reshape(s_n, c_n)
        pick = pick_runs(res, r)
        picks["best"].append(r[pick["best"]])
        picks["fom"].append(r[pick[cfg.fom]])
        picks["zero_start"].append(r[0].max())
        picks["random_starts"].append(r[1:].max())
        picks["zero_3"].append(r[0, cfg.cycles.index(3)])
    return {k: _summary(np.array(v)) for k, v in picks.items()}


def train(init: str, work: Path, args) -> tuple[Path, dict, float]:
    out = work / f"run-{init}"
    cfg = TrainConfig.from_flat(preset="tiny", train=(str(work / "train"),), val=str(work / "val"), init=init,
                                steps=args.steps, batch_size=64, lr=args.lr, seed=args.seed,
                                val_every=max(1, args.steps // 4), val_samples=args.val_count,
                                ckpt_every=args.steps, log_every=50, workers=1, device="cpu")
    t = time.perf_counter()
    summary = fit(cfg, out, progress=False)
    return out / "last.pt", summary, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="optimiser steps per setting (batch 64)")
    ap.add_argument("--count", type=int, default=20000, help="training structures")
    ap.add_argument("--val-count", type=int, default=512, help="validation structures (trainer)")
    ap.add_argument("--test-count", type=int, default=300, help="held-out structures for the scan")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inits", default=",".join(INITS))
    ap.add_argument("--work", type=Path, default=None, help="data and runs (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="pf-init-")
    work = args.work or Path(tmp.name)
    strat = load_strategy("lognormal-molecules")
    t = time.perf_counter()
    # Root seeds 4 / 3 / 5: disjoint structures (the root seed enters every sample's seed address).
    for name, count, seed in (("train", args.count, 4), ("val", args.val_count, 3), ("test", args.test_count, 5)):
        if not (work / name / "manifest.json").is_file():
            build(work / name, make_header(strat, count, 1000 if count >= 4000 else 256, "tar", seed, True),
                  workers=max(1, len(os.sched_getaffinity(0))), progress=False)
    build_s = time.perf_counter() - t
    items, scan_cfg = held_out(work / "test", args.test_count), ScanConfig()
    result = {"benchmark": "init_cpu", "preset": "tiny", "steps": args.steps, "batch_size": 64, "lr": args.lr,
              "seed": args.seed, "strategy": strat.name, "train_structures": args.count,
              "held_out_structures": len(items), "scan": {"cycles": "1..10", "starts": list(scan_cfg.start_names)},
              "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__, "build_s": round(build_s, 1),
              "runs": {}}
    for init in args.inits.split(","):
        ckpt, summary, train_s = train(init, work, args)
        v = summary["last_val"]
        entry = {"train_s": round(train_s, 1), "final_train_loss": round(summary["final_train_loss"], 4),
                 "val": {k: round(v[k], 4) for k in ("mean_r_zero", "mean_r_random", "f_solved_zero",
                                                      "f_solved_random", "loss_zero", "loss_random")},
                 "val_random_signs_mean_r": round(summary["random_signs"]["mean_r"], 4),
                 "scan": evaluate(ckpt, items, scan_cfg)}
        result["runs"][init] = entry
        print(json.dumps({init: entry}), flush=True)
    emit(result, args.out)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
