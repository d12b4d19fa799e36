"""Storage per sample for every shard format (tar, tar.gz, HDF5 with and without filters), full samples and
structures only, with the time to encode and to decode one shard; plus the size a more compact member layout
would reach (one signed-amplitude array instead of |F| and the 0/π phase), to judge whether it is worth a new
schema version, and the gzip level trade-off. Shards are encoded exactly as `build` writes them
(`manifests.shardio.shard_bytes`).

    python -m benchmarks.bench_storage [--count 2000 --shard-size 1000 --out benchmarks/results/storage.json]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from builder.build import make_header, samples_of
from manifests.shardio import read_samples, shard_bytes, unpack

try:
    from benchmarks.train_tiny_cpu import strategy
    from benchmarks.common import emit
except ImportError:  # run as a script
    from train_tiny_cpu import strategy  # type: ignore
    from common import emit  # type: ignore

CONTAINERS = [("tar", None), ("tar", "gz"), ("hdf5", None), ("hdf5", "gz"), ("hdf5", "lzf")]


def _decode_s(data: bytes, fmt: str, compression: str | None, tmp: Path) -> float:
    """Seconds to read one shard back with the plain reader (decompression included)."""
    suffix = {"tar": ".tar.gz" if compression else ".tar", "hdf5": ".h5"}[fmt]
    path = tmp / f"bench-storage{suffix}"
    path.write_bytes(data)
    t = time.perf_counter()
    read_samples(path, fmt, compression)
    dt = time.perf_counter() - t
    path.unlink()
    return dt


def measure(shards: list[list[dict]], fmt: str, compression: str | None, tmp: Path) -> dict:
    n = sum(len(s) for s in shards)
    t = time.perf_counter()
    blobs = [shard_bytes(s, fmt, compression) for s in shards]
    enc = time.perf_counter() - t
    dec = sum(_decode_s(b, fmt, compression, tmp) for b in blobs)
    out = {"format": fmt, "compression": compression, "bytes_per_sample": round(sum(map(len, blobs)) / n, 1),
           "encode_us_per_sample": round(enc / n * 1e6, 1), "plain_read_us_per_sample": round(dec / n * 1e6, 1)}
    if fmt == "tar" and compression == "gz":
        t = time.perf_counter()
        for b in blobs:
            unpack(b, fmt, compression)
        out["gunzip_us_per_sample"] = round((time.perf_counter() - t) / n * 1e6, 1)
    return out


def signed_layout(shards: list[list[dict]]) -> dict:
    """The candidate layout: amplitude·cos(phase) as one float32 array (P2₁/c phases are 0 or π), in tar.gz."""
    lossless = all(np.isin(r["phase"], np.float32([0.0, np.pi])).all() for s in shards for r in s)
    packed = [[{k: v for k, v in r.items() if k not in ("amplitude", "phase")}
               | {"amplitude": (r["amplitude"] * np.where(r["phase"] > 1.0, -1.0, 1.0)).astype(np.float32)}
               for r in s] for s in shards]
    n = sum(len(s) for s in shards)
    size = sum(len(shard_bytes(s, "tar", "gz")) for s in packed)
    return {"layout": "signed amplitude (one float32 array), tar.gz", "lossless_for_these_phases": bool(lossless),
            "bytes_per_sample": round(size / n, 1)}


def gzip_levels(shards: list[list[dict]]) -> list[dict]:
    """Size and write time of the plain tar through gzip at levels 1, 6 and 9 (the level is fixed in the code)."""
    import gzip
    tars = [shard_bytes(s, "tar", None) for s in shards]
    n = sum(len(s) for s in shards)
    out = []
    for level in (1, 6, 9):
        t = time.perf_counter()
        size = sum(len(gzip.compress(b, compresslevel=level, mtime=0)) for b in tars)
        out.append({"level": level, "bytes_per_sample": round(size / n, 1),
                    "gzip_us_per_sample": round((time.perf_counter() - t) / n * 1e6, 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--strategy", default="lognormal-molecules")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp"))
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    res = {"benchmark": "bench_storage", "strategy": args.strategy, "count": args.count,
           "shard_size": args.shard_size, "cores": len(os.sched_getaffinity(0)), "results": {}}
    for kind, refl in (("full", True), ("structures_only", False)):
        header = make_header(strategy(args.strategy), args.count, args.shard_size, "tar", 1, refl)
        shards = [samples_of(header, header.shard_range(s)) for s in range(header.n_shards)]
        for fmt, comp in CONTAINERS:  # warm up (first calls of tarfile, h5py and zlib)
            measure([shards[0][:50]], fmt, comp, args.tmp)
        res["results"][kind] = [measure(shards, fmt, comp, args.tmp) for fmt, comp in CONTAINERS]
        if refl:
            res["results"]["candidate_layout"] = signed_layout(shards)
            res["results"]["tar_gzip_levels"] = gzip_levels(shards)
    emit(res, args.out)


if __name__ == "__main__":
    main()
