"""Evidence run: the `tiny` PhAI preset trained for at most N minutes on CPU beats the random-sign baseline.

Builds (or reuses) small-cell lognormal-molecules data, trains `tiny` with the real trainer (`training.train.fit`)
for a wall-clock budget (a SIGTERM at the budget stops it at a step boundary and checkpoints, exactly as a
cluster pre-emption would), then validates best.pt on the held-out set. Prints one JSON object.

    python -m benchmarks.train_tiny_cpu --minutes 10 --count 20000 --data /tmp/pf-bench --out /tmp/pf-bench/run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch

from builder.build import build, make_header
from builder.cell import CellConfig
from builder.fill import FillConfig
from builder.strategy import Strategy, load_strategy
from training.data import DataConfig, open_source, validation_batches
from training.model import PhAINet, ModelConfig
from training.checkpoint import training_checkpoint
from training.config import TrainConfig
from training.train import fit
from training.validation import random_sign_baseline, validate


def strategy(name: str) -> Strategy:
    """The named strategy; without the committed element statistics, the same sampler with a fixed table."""
    try:
        return load_strategy(name)
    except ValueError:
        base = Strategy(name=f"{name}-fixed-elements", cell=CellConfig(), fill=FillConfig(
            filler="molecules", elements_general=(("C", 0.62), ("N", 0.12), ("O", 0.18), ("S", 0.03), ("Cl", 0.03),
                                                  ("Br", 0.02)),
            elements_special=(("C", 0.3), ("Fe", 0.2), ("Cu", 0.2), ("Ni", 0.2), ("O", 0.1))))
        base.validate()
        return base


def ensure(out: Path, strat: Strategy, count: int, seed: int, workers: int) -> float:
    """Build the set unless a finished one is there; returns seconds spent building."""
    if (out / "manifest.json").is_file():
        return 0.0
    t = time.time()
    build(out, make_header(strat, count, 1000 if count >= 4000 else 250, "tar", seed, True), workers=workers,
          progress=False)
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    ap.add_argument("--count", type=int, default=20000, help="training structures")
    ap.add_argument("--val-count", type=int, default=512)
    ap.add_argument("--strategy", default="lognormal-molecules")
    ap.add_argument("--data", type=Path, default=Path("/tmp/phaseforge-bench-data"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/phaseforge-bench-data/run-tiny"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--workers", type=int, default=1, help="loader workers (one core left for compute)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (order, augmentation, init)")
    # Root seeds of the data. Seed 4 (first 20,512 samples) and seed 3 (first 7,129) avoid the builder's rare
    # zero-atom structures, on which builder.sf.structure_factors fails (reported; not a training issue).
    ap.add_argument("--train-seed", type=int, default=4)
    ap.add_argument("--val-seed", type=int, default=3)
    args = ap.parse_args()

    strat = strategy(args.strategy)
    build_s = ensure(args.data / "train", strat, args.count, args.train_seed, max(1, len(os.sched_getaffinity(0))))
    build_s += ensure(args.data / "val", strat, args.val_count, args.val_seed, 1)
    if args.out.exists():
        shutil.rmtree(args.out)
    cfg = TrainConfig.from_flat(preset="tiny", train=(str(args.data / "train"),), val=str(args.data / "val"),
                      steps=10**7, batch_size=args.batch_size, lr=args.lr, seed=args.seed, val_every=250,
                      val_samples=args.val_count, ckpt_every=500, log_every=50, workers=args.workers, device="cpu",
                      patience=4)
    budget = args.minutes * 60
    timer = threading.Timer(budget, os.kill, (os.getpid(), signal.SIGTERM))
    t0 = time.time()
    timer.start()
    try:
        summary = fit(cfg, args.out, progress=False)
    finally:
        timer.cancel()
    train_s = time.time() - t0

    # Final word on the model at the end of the budget (last.pt): loss, mean r, f(r >= 0.8) after 1..5 cycles.
    ck = training_checkpoint(args.out / "last.pt")
    net = PhAINet(ModelConfig(**ck["config"]["model"]))
    net.load_state_dict(ck["model"])
    net.eval()
    val = validation_batches(open_source(args.data / "val"), DataConfig(batch_size=64, seed=args.seed),
                             args.val_count)
    import contextlib
    final = validate(net, val, ck["prior"], torch.device("cpu"), 5, contextlib.nullcontext)
    base = random_sign_baseline(val, ck["prior"], args.seed)
    print(json.dumps({
        "benchmark": "train_tiny_cpu", "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
        "strategy": strat.name, "train_structures": args.count, "val_structures": args.val_count,
        "build_seconds": round(build_s, 1), "train_seconds": round(train_s, 1), "steps": summary["steps"],
        "samples_seen": summary["steps"] * args.batch_size, "samples_per_s": summary["samples_per_s"],
        "best_during_training": summary["best"], "val_loss": round(final["loss"], 4),
        "val_mean_r_by_cycle": final["mean_r_by_cycle"], "val_mean_r": round(final["mean_r"], 4),
        "val_f_solved": round(final["f_solved"], 4), "random_signs_mean_r": round(base["mean_r"], 4),
        "random_signs_f_solved": round(base["f_solved"], 4), "d_min": 1.0, "lr": args.lr,
        "batch_size": args.batch_size}, sort_keys=True))


if __name__ == "__main__":
    main()
