"""On-the-fly loader throughput: samples/s per loader worker when the loader generates the shards, beside the same
samples read from materialised tar shards, and how many CPU workers one GPU therefore needs.

Modes (lognormal-molecules, the paper's best strategy):
  full                          the loader generates structure + 1205 reflections per sample (`--on-the-fly`)
  structures_F_in_loader        `--structures-only --on-the-fly`, F computed in the loader (numpy; sf=loader)
  structures_F_in_trainer       `--structures-only --on-the-fly`, the loader only generates structures; F is
                                computed by the trainer on its device (sf=device; not timed here: on a GPU it is
                                a batched kernel, see benchmarks/gpu_train.py)
  materialised_tar              the same full samples read from tar shards (sha256 checked), for comparison
The per-core rate is the loader run in this process (no workers), samples per CPU second of this process, best of
`--repeats` runs with the modes alternated (steadier than wall time on a shared machine). Then DataLoader workers
1 and 2 give wall-clock samples/s per worker (do not pin those to one core). `workers_per_gpu` =
ceil(GPU samples/s / per-core rate): the loader workers one GPU needs at that rate.
The generator's own speed (builder/fill.py, sf.py, geometry.py) is what this measures: rerun after it changes.

    python -m benchmarks.bench_onthefly --out benchmarks/results/onthefly.json
    python -m benchmarks.bench_onthefly --gpu-samples-per-s 3000 --count 4096 --shard-size 256 --repeats 3
"""
from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

from builder.build import build, make_header, write_on_the_fly
from manifests.schema import package_version

try:
    from benchmarks.bench_loader import loader_parser, rate
    from benchmarks.train_tiny_cpu import strategy
    from benchmarks.common import emit
except ImportError:  # run as a script
    from bench_loader import loader_parser, rate  # type: ignore
    from train_tiny_cpu import strategy  # type: ignore
    from common import emit  # type: ignore



def paper_h200_samples_per_s() -> float:
    """What one H200 trains of the paper preset per second, from its counted FLOPs (benchmarks/gpu_train.py)."""
    try:
        from benchmarks.gpu_train import flops_estimate
    except ImportError:  # run as a script
        from gpu_train import flops_estimate  # type: ignore
    from training.model import preset
    return flops_estimate(preset("paper"))["h200_samples_per_s"]


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def datasets(root: Path, count: int, shard_size: int) -> dict[str, tuple[Path, str]]:
    """{mode: (manifest directory, sf)}; the materialised set is built once (all cores) and kept."""
    strat = strategy("lognormal-molecules")
    full, s_only = (make_header(strat, count, shard_size, "tar", 1, refl) for refl in (True, False))
    write_on_the_fly(root / "otf-full", full)
    write_on_the_fly(root / "otf-structures", s_only)
    if not (root / "tar" / "manifest.json").is_file():
        build(root / "tar", full, workers=max(1, len(os.sched_getaffinity(0))), progress=False)
    return {"full": (root / "otf-full", "loader"),
            "structures_F_in_loader": (root / "otf-structures", "loader"),
            "structures_F_in_trainer": (root / "otf-structures", "device"),
            "materialised_tar": (root / "tar", "loader")}


def main() -> None:
    ap = loader_parser(__doc__, count=4096, shard_size=256)
    ap.add_argument("--rounds", type=int, default=2, help="shards read (generated) per stream, after the first batch")
    ap.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts (wall clock)")
    ap.add_argument("--repeats", type=int, default=3, help="per-core rate: best of this many alternated runs")
    ap.add_argument("--gpu-samples-per-s", type=float, default=None,
                    help="the GPU's training rate to feed (default: the paper preset's FLOP estimate on an H200)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/phaseforge-bench-onthefly"))
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.gpu_samples_per_s is None:
        args.gpu_samples_per_s = paper_h200_samples_per_s()
    workers = [int(w) for w in args.workers.split(",") if int(w) > 0]
    res = {"benchmark": "bench_onthefly", "cores": len(os.sched_getaffinity(0)), "batch_size": args.batch_size,
           "streams": args.streams, "shard_size": args.shard_size, "package_version": package_version(),
           "commit": _commit(), "gpu_samples_per_s": args.gpu_samples_per_s, "repeats": args.repeats,
           "results": {}, "workers_per_gpu": {}}
    sets = datasets(args.data, args.count, args.shard_size)
    best = {mode: 0.0 for mode in sets}
    for _ in range(args.repeats):  # modes alternated, best of N: the figure least disturbed by other users
        for mode, (path, sf) in sets.items():
            r = rate(path, 0, args.streams, args.shard_size, args.batch_size, sf=sf, rounds=args.rounds)
            best[mode] = max(best[mode], r["samples_per_cpu_s"])
    for mode, (path, sf) in sets.items():
        res["results"][mode] = {"per_core_samples_per_cpu_s": best[mode], "with_workers": [
            rate(path, w, args.streams, args.shard_size, args.batch_size, sf=sf, rounds=args.rounds)
            for w in workers]}
        res["workers_per_gpu"][mode] = math.ceil(args.gpu_samples_per_s / best[mode])
    emit(res, args.out)


if __name__ == "__main__":
    main()
