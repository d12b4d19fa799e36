"""Loader throughput: batches/s and samples/s for tar, tar.gz and HDF5 shards with 0, 1 and 2 DataLoader workers.

Timed from the first batch over 4 full rounds of window reads (each stream reads 4 shards), so shard reading,
sha256 checks, decompression, parsing, augmentation (d_min mask) and collation all count in their true proportion; only
the worker start-up is left out. workers = 0 means the main process (then samples per CPU second is also
reported: the per-core rate, steadier than wall time on a shared machine). Prints one JSON object.

    python -m benchmarks.bench_loader [--count 8000 --shard-size 1000 --data /tmp/phaseforge-bench-loader]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from builder.build import build, make_header
from training.data import DataConfig, Loader, open_sources

try:
    from benchmarks.train_tiny_cpu import strategy
    from benchmarks.common import emit
except ImportError:  # run as a script
    from train_tiny_cpu import strategy  # type: ignore
    from common import emit  # type: ignore


def ensure(out: Path, fmt: str, count: int, shard_size: int, reflections: bool = True,
           compression: str | None = None) -> Path:
    if not (out / "manifest.json").is_file():
        build(out, make_header(strategy("lognormal-molecules"), count, shard_size, fmt, 1, reflections, compression),
              workers=max(1, len(os.sched_getaffinity(0))), progress=False)
    return out


def rate(path: Path, workers: int, streams: int, shard_size: int, batch: int, verify: str = "sha256",
         sf: str = "loader", rounds: int = 4) -> dict:
    """Samples/s over `rounds` full rounds of window reads (each stream reads `rounds` shards), timed from the
    first batch (worker start-up excluded, everything else included)."""
    cfg = DataConfig(batch_size=batch, streams=streams, verify=verify, sf=sf)
    t_start = time.perf_counter()
    it = iter(Loader(open_sources([path], verify=verify), cfg, workers=workers))
    next(it)
    t_first = time.perf_counter() - t_start
    n = rounds * streams * shard_size // batch - 1
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        next(it)
    dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
    it.close()
    sps = n * batch / dt
    # with workers = 0 all the work is this process's: samples per CPU second is the per-core rate, and it
    # moves far less than wall time on a shared machine
    per_cpu = {"samples_per_cpu_s": round(n * batch / dcpu, 1)} if workers == 0 else {}
    return {"workers": workers, "samples_per_s": round(sps, 1), **per_cpu,
            "samples_per_s_per_worker": round(sps / max(workers, 1), 1), "batches": n + 1,
            "first_batch_s": round(t_first, 2), "verify": verify}


def loader_parser(doc: str, count: int = 8000, shard_size: int = 1000) -> argparse.ArgumentParser:
    """The options every loader benchmark shares (bench_loader, bench_http, bench_onthefly)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--count", type=int, default=count)
    ap.add_argument("--shard-size", type=int, default=shard_size)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--streams", type=int, default=4, help="loader streams (divisible by 1 and 2)")
    return ap


def main() -> None:
    ap = loader_parser(__doc__)
    ap.add_argument("--data", type=Path, default=Path("/tmp/phaseforge-bench-loader"))
    args = ap.parse_args()
    res = {"benchmark": "bench_loader", "cores": len(os.sched_getaffinity(0)), "batch_size": args.batch_size,
           "streams": args.streams, "shard_size": args.shard_size, "results": {}}
    for fmt in ("tar", "hdf5"):
        path = ensure(args.data / fmt, fmt, args.count, args.shard_size)
        res["results"][fmt] = [rate(path, w, args.streams, args.shard_size, args.batch_size) for w in (0, 1, 2)]
    tar_gz = ensure(args.data / "tar-gz", "tar", args.count, args.shard_size, compression="gz")
    res["results"]["tar_gz"] = [rate(tar_gz, w, args.streams, args.shard_size, args.batch_size) for w in (0, 1, 2)]
    # the compressed-tar goal (>= 5,000 samples/s per worker, gunzip included), tar beside it in alternation,
    # best of three on this core: the figure least disturbed by other users of the machine
    best = {"tar": 0.0, "tar_gz": 0.0}
    for _ in range(3):
        for name in best:
            r = rate(args.data / name.replace("_", "-"), 0, args.streams, args.shard_size, args.batch_size)
            best[name] = max(best[name], r["samples_per_cpu_s"])
    res["results"]["per_core_best_of_3"] = {f"{k}_samples_per_cpu_s": v for k, v in best.items()}
    tar = args.data / "tar"
    res["results"]["tar_verify_size"] = [rate(tar, 1, args.streams, args.shard_size, args.batch_size, "size")]
    s_only = ensure(args.data / "tar-structures", "tar", min(args.count, 2000), 250, reflections=False)
    res["results"]["tar_structures_only_F_in_loader"] = [
        rate(s_only, w, args.streams, 250, args.batch_size) for w in (1, 2)]
    emit(res, None)


if __name__ == "__main__":
    main()
