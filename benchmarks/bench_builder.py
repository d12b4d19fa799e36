"""Builder speed on one core: structure generation per filler, structure factors (ours vs gemmi's direct
summation on the same structures, measured in one run), and whole-build throughput per worker.

    python -m benchmarks.bench_builder [--n 300] [--out benchmarks/results/builder.json]

Prints JSON. Run pinned to one core for per-core figures: `taskset -c 0 python -m benchmarks.bench_builder`.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit
from builder.build import build, make_header
from builder.reflections import phai_hkl
from builder.sample import generate_structure
from builder.sf import sf_plan, structure_factors
from builder.strategy import load_strategy
from builder.symmetry import site_multiplicity, space_group_ops


def _per_item(fn, items) -> float:
    t = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - t) / len(items)


def bench_generation(n: int) -> dict:
    out = {}
    for name in ("lognormal-molecules", "lognormal-random", "uniform-edges-molecules", "uniform-edges-random"):
        strat = load_strategy(name)
        generate_structure(strat, 0, 0)  # compile / warm caches
        sec = _per_item(lambda i: generate_structure(strat, 0, i), range(1, n + 1))
        atoms = np.mean([generate_structure(strat, 0, i).n_atoms for i in range(1, 51)])
        out[name] = {"ms_per_structure": round(sec * 1e3, 4), "mean_atoms_asu": round(float(atoms), 1)}
    return out


def bench_sf(n: int) -> dict:
    from tests.conftest import gemmi_sf  # the reference path used by the tests

    strat = load_strategy("lognormal-molecules")
    hkl = phai_hkl()
    structs = [generate_structure(strat, 1, i) for i in range(n)]
    plan = sf_plan(space_group_ops(structs[0].space_group), hkl)
    ours = _per_item(lambda s: structure_factors(plan, s.cell, s.frac, s.z, s.occ, s.uiso), structs)
    sub = structs[: max(5, n // 10)]

    def ref(s):
        mult = np.array([site_multiplicity(plan.ops, x.astype(float)) for x in s.frac])
        gemmi_sf(s.cell, s.space_group, s.frac, s.z, s.occ * mult, s.uiso, hkl)

    gem = _per_item(ref, sub)
    return {"reflections": len(hkl), "ours_ms": round(ours * 1e3, 4), "gemmi_direct_ms": round(gem * 1e3, 4),
            "speedup": round(gem / ours, 1), "structures": n, "gemmi_structures": len(sub)}


def bench_build(count: int) -> dict:
    out = {}
    for fmt in ("tar", "hdf5"):
        header = make_header(load_strategy("lognormal-molecules"), count, 250, fmt, 0)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            build(Path(d), header, workers=1, progress=False)
            sec = time.perf_counter() - t
        out[fmt] = {"samples": count, "seconds": round(sec, 3), "samples_per_s_per_worker": round(count / sec, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--build-count", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "generation": bench_generation(args.n), "structure_factors": bench_sf(args.n),
              "build": bench_build(args.build_count)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
