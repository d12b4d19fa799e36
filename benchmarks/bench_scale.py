"""The cost curve: builder time per sample and peak RSS from 10³ to 10⁶ samples, `verify` time, `finalize` time
against the number of part-manifests, and loader samples/s and RSS over manifests of 10 to 1,000 shards.

    taskset -c 0 python -m benchmarks.bench_scale [--out benchmarks/results/scale.json]   # ~20 min, one core
    python -m benchmarks.bench_scale --quick                                              # a smoke run

Every measurement runs in a fresh child process (this module with --child), so its peak RSS is its own
(`os.wait4`'s ru_maxrss: the child, or its largest waited-for descendant). Builds use one worker, so times are per
core: "build" excludes the imports and the first sample (JIT caches), which "startup" reports. Beside wall times,
each child's own CPU time (`time.process_time`): on a shared machine it is the steadier figure. Full samples (with
1205 reflections) are built up to --full-max samples; structures-only at every size (the 10⁶ full build would
take ~20 min of one core on its own). `finalize` gets real part-manifests: each shard of a build is rebuilt as
its own range (`build(..., (s, s + 1))` keeps the shard, checks its sha256 and writes the part), then the whole
manifest is removed. Prints one JSON object and writes it to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import emit

ROOT = Path(__file__).resolve().parent.parent
STRATEGY = "lognormal-molecules"


# ----------------------------------------------------------------------------- children (one measurement each)

def child_build(count: int, shard_size: int, fmt: str, reflections: bool, out: str) -> dict:
    t0 = time.perf_counter()
    from builder.build import build, make_header
    from builder.sample import generate_sample
    from builder.strategy import load_strategy

    strat = load_strategy(STRATEGY)
    generate_sample(strat, 0, 0, with_reflections=reflections)  # numba, gemmi tables: warm before timing
    t1, c1 = time.perf_counter(), time.process_time()
    build(out, make_header(strat, count, shard_size, fmt, 0, reflections), workers=1, progress=False)
    return {"startup_s": round(t1 - t0, 3), "build_s": round(time.perf_counter() - t1, 3),
            "build_cpu_s": round(time.process_time() - c1, 3)}


def child_parts(directory: str) -> dict:
    """Turn a finished build into one part-manifest per shard, as range builds write them."""
    from builder.build import build
    from manifests.schema import load_manifest

    manifest, d = load_manifest(directory)
    header = manifest.with_shards(())
    t = time.perf_counter()
    for s in range(header.n_shards):
        build(d, header, (s, s + 1), progress=False)
    (d / "manifest.json").unlink()
    return {"parts_s": round(time.perf_counter() - t, 3)}


def child_finalize(directory: str) -> dict:
    t0 = time.perf_counter()
    from builder.build import finalize
    t1, c1 = time.perf_counter(), time.process_time()
    finalize(directory)
    return {"startup_s": round(t1 - t0, 3), "seconds": round(time.perf_counter() - t1, 3),
            "cpu_s": round(time.process_time() - c1, 3)}


def child_verify(directory: str) -> dict:
    t0 = time.perf_counter()
    from manifests.schema import load_manifest, verify_dir
    t1, c1 = time.perf_counter(), time.process_time()
    manifest, d = load_manifest(directory)
    problems = verify_dir(manifest, d)
    if problems:
        raise SystemExit(f"verify failed: {problems[:3]}")
    return {"startup_s": round(t1 - t0, 3), "seconds": round(time.perf_counter() - t1, 3),
            "cpu_s": round(time.process_time() - c1, 3)}


def child_loader(directory: str, batches: int) -> dict:
    t0 = time.perf_counter()
    from training.data import DataConfig, Loader, open_sources
    t1 = time.perf_counter()
    sources = open_sources([directory])
    t2 = time.perf_counter()
    it = iter(Loader(sources, DataConfig(batch_size=64, streams=4), workers=0))
    next(it)
    t3, c3 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    dt, cpu = time.perf_counter() - t3, time.process_time() - c3
    return {"startup_s": round(t1 - t0, 3), "open_s": round(t2 - t1, 4), "first_batch_s": round(t3 - t2, 3),
            "samples_per_s": round(batches * 64 / dt, 1), "samples_per_cpu_s": round(batches * 64 / cpu, 1),
            "batches": batches}


CHILDREN = {"build": child_build, "parts": child_parts, "finalize": child_finalize, "verify": child_verify,
            "loader": child_loader}


def run_child(kind: str, *args) -> dict:
    """Run one measurement in a fresh interpreter; add its wall time and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_scale", "--child", kind, *map(str, args)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    text = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"error: child {kind} {args} exited {p.returncode}")
    res = json.loads(text.strip().splitlines()[-1])
    res["wall_s"] = round(time.perf_counter() - t, 3)
    res["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    return res


# ----------------------------------------------------------------------------- the curve

def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("shard-*"))


def measure_builds(data: Path, sizes: list[int], full_max: int, formats_at: int, bar) -> tuple[list, list]:
    builds, verifies = [], []
    for n in sizes:
        for kind, refl in (("full", True), ("structures-only", False)):
            if refl and n > full_max:
                continue
            for fmt in ("tar", "hdf5") if n == formats_at else ("tar",):
                out = data / f"{kind}-{fmt}-{n}"
                shutil.rmtree(out, ignore_errors=True)
                bar.set_description(f"build {kind} {fmt} {n}")
                r = run_child("build", n, 1000, fmt, int(refl), out)
                r |= {"kind": kind, "format": fmt, "count": n, "shards": -(-n // 1000),
                      "us_per_sample": round(1e6 * r["build_s"] / n, 2),
                      "us_cpu_per_sample": round(1e6 * r["build_cpu_s"] / n, 2),
                      "bytes_per_sample": round(dir_bytes(out) / n, 1)}
                builds.append(r)
                bar.update()
                if fmt == "tar":
                    bar.set_description(f"verify {kind} {n}")
                    v = run_child("verify", out)
                    v |= {"kind": kind, "count": n, "bytes": dir_bytes(out),
                          "us_per_sample": round(1e6 * v["seconds"] / n, 3),
                          "us_cpu_per_sample": round(1e6 * v["cpu_s"] / n, 3),
                          "mb_per_s": round(dir_bytes(out) / 1e6 / max(v["seconds"], 1e-9), 1)}
                    verifies.append(v)
                    bar.update()
                shutil.rmtree(out)
    return builds, verifies


def measure_manifests(data: Path, parts: list[int], shard_size: int, loader_batches: int, bar) -> tuple[list, list]:
    finals, loads = [], []
    for k in parts:
        out = data / f"parts-{k}"
        shutil.rmtree(out, ignore_errors=True)
        bar.set_description(f"parts {k}")
        b = run_child("build", k * shard_size, shard_size, "tar", 1, out)
        p = run_child("parts", out)
        bar.set_description(f"finalize {k}")
        f = run_child("finalize", out)
        f |= {"parts": k, "samples": k * shard_size, "bytes": dir_bytes(out),
              "ms_per_part": round(1e3 * f["seconds"] / k, 3), "ms_cpu_per_part": round(1e3 * f["cpu_s"] / k, 3),
              "range_builds_s": p["parts_s"],
              "build_s": b["build_s"]}
        finals.append(f)
        bar.update()
        bar.set_description(f"loader {k} shards")
        ld = run_child("loader", out, loader_batches)
        ld |= {"shards": k, "shard_size": shard_size}
        loads.append(ld)
        bar.update()
        shutil.rmtree(out)
    return finals, loads


def spread(values: list[float]) -> float:
    return round(max(values) / min(values), 3)


def claims(builds: list, verifies: list, finals: list, loads: list) -> dict:
    """The ratios the issue asks to see: flat per sample, flat memory, linear manifest handling."""
    out = {}
    for kind in ("full", "structures-only"):
        tar = [b for b in builds if b["kind"] == kind and b["format"] == "tar"]
        if len(tar) > 1:
            out[kind] = {"sizes": [b["count"] for b in tar],
                         "us_per_sample_max_over_min": spread([b["us_per_sample"] for b in tar]),
                         "us_cpu_per_sample_max_over_min": spread([b["us_cpu_per_sample"] for b in tar]),
                         "peak_rss_max_over_min": spread([b["peak_rss_mib"] for b in tar])}
    for kind in ("full", "structures-only"):
        v = [x for x in verifies if x["kind"] == kind and x["seconds"] > 0]
        if len(v) > 1:
            out[f"verify_{kind}_us_per_sample_max_over_min"] = spread([x["us_per_sample"] for x in v])
            out[f"verify_{kind}_us_cpu_per_sample_max_over_min"] = spread([x["us_cpu_per_sample"] for x in v])
    if len(finals) > 1:
        out["finalize_ms_per_part_max_over_min"] = spread([f["ms_per_part"] for f in finals])
        out["finalize_ms_cpu_per_part_max_over_min"] = spread([f["ms_cpu_per_part"] for f in finals])
        out["finalize_rss_max_over_min"] = spread([f["peak_rss_mib"] for f in finals])
    if len(loads) > 1:
        out["loader_samples_per_s_max_over_min"] = spread([ld["samples_per_s"] for ld in loads])
        out["loader_samples_per_cpu_s_max_over_min"] = spread([ld["samples_per_cpu_s"] for ld in loads])
        out["loader_rss_max_over_min"] = spread([ld["peak_rss_mib"] for ld in loads])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--full-max", type=int, default=100000, help="largest size built with reflections")
    ap.add_argument("--formats-at", type=int, default=10000, help="size at which HDF5 is built beside tar")
    ap.add_argument("--parts", default="10,100,1000", help="part-manifest counts for finalize and the loader")
    ap.add_argument("--part-size", type=int, default=16, help="samples per shard in the finalize/loader sets")
    ap.add_argument("--loader-batches", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="sizes 100,1000; parts 4,16: checks the script")
    ap.add_argument("--data", type=Path, default=Path("/tmp/phaseforge-bench-scale"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        conv = [int(x) if x.lstrip("-").isdigit() else x for x in rest]
        print(json.dumps(CHILDREN[kind](*conv)))
        return
    if args.quick:
        args.sizes, args.full_max, args.formats_at, args.parts, args.loader_batches = "100,1000", 1000, 100, "4,16", 20
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    parts = [int(x) for x in args.parts.split(",")]
    args.data.mkdir(parents=True, exist_ok=True)
    n_builds = sum(1 + (n <= args.full_max) for n in sizes) + sum(n == args.formats_at for n in sizes) * 2
    bar = tqdm(total=n_builds + sum(1 + (n <= args.full_max) for n in sizes) + 2 * len(parts), unit="step")
    t = time.perf_counter()
    builds, verifies = measure_builds(args.data, sizes, args.full_max, args.formats_at, bar)
    finals, loads = measure_manifests(args.data, parts, args.part_size, args.loader_batches, bar)
    bar.close()
    res = {"benchmark": "bench_scale", "strategy": STRATEGY, "shard_size": 1000, "workers": 1,
           "affinity": sorted(os.sched_getaffinity(0)), "python": platform.python_version(),
           "command": " ".join(["python -m benchmarks.bench_scale", *sys.argv[1:]]),
           "seconds": round(time.perf_counter() - t, 1), "build": builds, "verify": verifies,
           "finalize": finals, "loader": loads, "claims": claims(builds, verifies, finals, loads)}
    emit(res, None if args.quick else args.out)


if __name__ == "__main__":
    main()
