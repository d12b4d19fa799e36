"""The paper's experiment in miniature on CPU: train the `tiny` PhAI on two generation strategies with the same
budget, then evaluate both on the shipped COD test sets. A toy scale (minutes, 0.34 M parameters) next to the
paper's 100 M structures on GPUs: it shows the pipeline end to end, not the paper's numbers.

    python -m benchmarks.strategies_cpu --strategies lognormal-molecules,lognormal-random --steps 3000 \
        --count 50000 --work /tmp/pf-strategies --out benchmarks/results/strategies_cpu.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import emit


def sh(*args) -> str:
    res = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"error: {' '.join(map(str, args))} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default="lognormal-molecules,lognormal-random")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--count", type=int, default=50000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pf-strategies"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result: dict = {"steps": args.steps, "count": args.count, "preset": "tiny", "runs": {}}
    for name in args.strategies.split(","):
        data, val, run = args.work / name, args.work / f"{name}-val", args.work / f"run-{name}"
        t = time.perf_counter()
        sh("builder.cli", "shards", "--strategy", name, "--count", args.count, "--seed", 0,
           "--workers", args.workers, "--out", data)
        sh("builder.cli", "shards", "--strategy", name, "--count", 512, "--shard-size", 256, "--seed", 1, "--out", val)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        train = sh("training", "fit", "--train", data, "--val", val, "--preset", "tiny", "--steps", args.steps,
                   "--val-every", max(args.steps // 4, 1), "--ckpt-every", max(args.steps // 4, 1),
                   "--workers", 1, "--seed", 0, "--out", run, *(["--resume"] if (run / "last.pt").exists() else []))
        summary = json.loads(train.strip().splitlines()[-1])
        entry = {"build_s": round(build_s, 1), "train_s": round(time.perf_counter() - t, 1),
                 "val_mean_r": summary["last_val"]["mean_r"], "val_f_solved": summary["last_val"]["f_solved"],
                 "val_random_mean_r": summary["random_signs"]["mean_r"], "cod": {}}
        for testset in ("cod-p21c-small", "cod-p21c-large"):
            rep = args.work / f"report-{name}-{testset}"
            sh("evaluation", "run", "--testset", testset, "--checkpoint", run / "best.pt", "--device", "cpu",
               "--out", rep)
            r = json.loads((rep / "report.json").read_text())
            entry["cod"][testset] = {"n": r["n"], "f_solved": r["f_solved"], "median_r": r["median_r"]}
        result["runs"][name] = entry
        print(json.dumps({name: entry}), flush=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
