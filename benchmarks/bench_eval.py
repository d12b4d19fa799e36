"""Evaluation throughput (structures/s) on the committed COD test sets.

    python -m benchmarks.bench_eval [--preset tiny] [--testset cod-p21c-small] [--device auto] [--batch-size 64]
                                    [--cf-limit 34] [--workers 1] [--threads N] [--out benchmarks/results/eval.json]

Measures, after ingestion (CIF -> |F| on the PhAI set, timed separately):
  * the model: a randomly initialised preset through the full paper scan (cycles 1..10 × {zero, 4 random}:
    5 × 11 forward passes per structure), scoring included;
  * charge flipping (6 seeded starts, symmetrisation, LDE polishing), scoring included.
Prints JSON. Weights are random, so r is meaningless here; only the time is measured. On a shared 2-core
machine pass --threads 1: torch's OpenMP pool slows down several-fold when another process holds a core.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks.common import emit
from builder.reflections import phai_hkl
from evaluation.recycle import ScanConfig
from evaluation.run import evaluate, open_testset, prepare_all
from training.model import seeded_model, preset


def bench_ingest(testset: str) -> tuple[list, dict]:
    t = time.perf_counter()
    inputs = open_testset(testset)
    prepared, skipped = prepare_all(inputs, phai_hkl(), 1.0)
    sec = time.perf_counter() - t
    return prepared, {"n": len(prepared), "skipped": len(skipped), "seconds": round(sec, 3),
                      "structures_per_s": round(len(prepared) / sec, 2)}


def bench_model(prepared: list, name: str, device: str, batch_size: int) -> dict:
    model = seeded_model(preset(name), 0).to(device).eval()
    cfg = ScanConfig(batch_size=batch_size)
    hkl = phai_hkl(model.cfg.max_index)
    evaluate("model", prepared[:1], hkl, model=model, scan_cfg=cfg)  # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    _, _, sec = evaluate("model", prepared, hkl, model=model, scan_cfg=cfg)
    passes = len(prepared) * len(cfg.start_names) * cfg.passes
    return {"preset": name, "params": sum(p.numel() for p in model.parameters()), "device": device,
            "batch_size": batch_size, "scan": f"cycles 1..{max(cfg.cycles)} x {len(cfg.start_names)} starts",
            "forward_passes_per_structure": len(cfg.start_names) * cfg.passes, "n": len(prepared),
            "seconds": round(sec, 3), "structures_per_s": round(len(prepared) / sec, 3),
            "forward_rows_per_s": round(passes / sec, 1)}


def bench_cf(prepared: list, workers: int) -> dict:
    _, _, sec = evaluate("charge-flipping", prepared, phai_hkl(), seed=0, workers=workers)
    return {"n": len(prepared), "workers": workers, "seconds": round(sec, 3),
            "structures_per_s": round(len(prepared) / sec, 3), "seconds_per_structure": round(sec / len(prepared), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--testset", default="cod-p21c-small")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model-limit", type=int, default=None, help="structures for the model scan (default all)")
    ap.add_argument("--cf-limit", type=int, default=None, help="structures for charge flipping (default all)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    prepared, ingest = bench_ingest(a.testset)
    result = {
        "benchmark": "evaluation", "testset": a.testset, "python": platform.python_version(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "ingest": ingest,
        "model": bench_model(prepared[:a.model_limit], a.preset, device, a.batch_size),
        "charge_flipping": bench_cf(prepared[:a.cf_limit], a.workers),
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
