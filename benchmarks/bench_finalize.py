"""`finalize`'s shard check (size + sha256 of every shard) with 1, 2, 4 ... hashing threads.

    python -m benchmarks.bench_finalize [--count 20000] [--shard-size 500] [--threads 1,2,4] \\
        [--out benchmarks/results/finalize.json]

Builds one full-sample tar dataset (lognormal-molecules), then times `manifests.schema.verify_dir` with each
thread count, best of --repeats, the files in the page cache (so it measures hashing, not the disk; a cold
parallel file system adds its own read rate). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from benchmarks.bench_loader import ensure
from benchmarks.common import emit
from manifests.schema import load_manifest, verify_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("/tmp/phaseforge-bench-finalize"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    shutil.rmtree(args.data, ignore_errors=True)
    manifest, d = load_manifest(ensure(args.data, "tar", args.count, args.shard_size))
    total = sum(e.bytes for e in manifest.shards)
    verify_dir(manifest, d)  # into the page cache
    res = {"benchmark": "bench_finalize", "cores": os.cpu_count(), "shards": len(manifest.shards),
           "bytes": total, "results": []}
    for w in map(int, args.threads.split(",")):
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            assert verify_dir(manifest, d, workers=w) == []
            best = min(best, time.perf_counter() - t)
        res["results"].append({"threads": w, "seconds": round(best, 3), "mb_per_s": round(total / best / 1e6, 1)})
    one = res["results"][0]["seconds"]
    for r in res["results"]:
        r["speedup_vs_first"] = round(one / r["seconds"], 2)
    shutil.rmtree(args.data, ignore_errors=True)
    emit(res, args.out)


if __name__ == "__main__":
    main()
