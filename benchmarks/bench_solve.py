"""Seconds per structure of `phaseforge-eval solve`'s steps and methods on the shipped measured structures.

    taskset -c 0 python -m benchmarks.bench_solve [--checkpoint runs/tiny/best.pt] [--limit 15]
                                                  [--out benchmarks/results/solve.json]

For every structure of cod-p21c-measured: reading + reduction, then each method as `solve` runs it
(charge flipping on all measured reflections; the model's full scan, cycles 1..10 × 5 starts; model+cf), and the
output files (map, peaks, .fcf/.res/.ccp4/PNG). Without --checkpoint a randomly initialised `tiny` network is
timed (its phases are meaningless; only the time is measured). torch runs on one thread, so pin the process to
one core (`taskset -c 0`) for a per-core figure. Prints JSON and writes it to --out.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit
from evaluation.charge_flipping import CFConfig
from evaluation.outputs import write_solution
from evaluation.recycle import ScanConfig
from evaluation.reduce import reduce_measured
from evaluation.reflections_io import read_input
from evaluation.solve import solve_reduced
from evaluation.testset import iter_testset_cifs
from training.checkpoint import load_model
from training.model import seeded_model, tiny


def bench_one(cid: str, data: bytes, model, cfg: ScanConfig) -> dict:
    t = time.perf_counter()
    meas = read_input(f"{cid}.cif", data=data)
    red = reduce_measured(meas)
    row = {"id": cid, "reflections": int(len(meas.hkl)), "unique": int(len(red.hkl)),
           "d_min": red.report["resolution"]["d_min"], "reduce_s": round(time.perf_counter() - t, 4)}
    results, _ = solve_reduced(red, "all", model=model, scan_cfg=cfg)
    for r in results:
        row[f"{r.method}_s"] = round(r.seconds, 4)
        if "converged" in r.details:  # charge flipping and model+cf: where the convergence test stopped it
            row[f"{r.method}_cycles"], row[f"{r.method}_converged"] = r.details["cycles"], r.details["converged"]
    row["cf_grid"] = results[0].details["grid"]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_solution(Path(tmp), red, results[0].phase, {}, method="charge-flipping", n_peaks=20,
                       wavelength=meas.wavelength, sfac=meas.sfac, unit=meas.unit)
    row["outputs_s"] = round(time.perf_counter() - t, 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/solve.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = (load_model(args.checkpoint).model if args.checkpoint else seeded_model(tiny(), 0).eval())
    cfg = ScanConfig()
    rows = [bench_one(cid, data, model, cfg) for cid, data in list(iter_testset_cifs("cod-p21c-measured"))[:args.limit]]
    keys = ["reduce_s", "charge-flipping_s", "model_s", "model+cf_s", "outputs_s"]
    out = {"benchmark": "solve", "testset": "cod-p21c-measured", "n": len(rows), "threads": 1,
           "checkpoint": args.checkpoint.name if args.checkpoint else "random tiny (timing only)",
           "scan": f"cycles 1..{max(cfg.cycles)} x {len(cfg.start_names)} starts", "machine": platform.machine(),
           "median_seconds": {k: round(float(np.median([r[k] for r in rows])), 4) for k in keys},
           "mean_seconds": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys},
           "cycles": {m: {"median": float(np.median([r[f"{m}_cycles"] for r in rows])),
                          "converged": int(sum(r[f"{m}_converged"] for r in rows)),
                          "at_cap": int(sum(r[f"{m}_cycles"] >= CFConfig().max_cycles for r in rows))}
                      for m in ("charge-flipping", "model+cf")}, "structures": rows}
    emit(out, args.out)


if __name__ == "__main__":
    main()
