"""On-the-fly input pipeline speed per worker: generation + structure factors, no container (issue 10 point 4).

    taskset -c 0 python -m benchmarks.bench_generator [--n 1500] [--repeats 5] [--baseline-commit REV] \\
        [--out benchmarks/results/generator.json]

Per strategy: structures-only samples/s (`generate_sample(..., with_reflections=False)`, what a loader does when
F is computed on the GPU), full samples/s (with |F| and φ on the PhAI set), and their parts. With
`--baseline-commit`, that commit is unpacked (`git archive`) and measured in the same session, alternating
baseline and current runs (each in its own process, same core), so the ratios come from one noisy machine at one
time: medians of the runs and the median of the per-pair ratios are reported. Also times the largest structure
the strategy bounds allow (builder/bounds.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # a baseline's run imports `builder` from that tree, the rest here
STRATEGIES = ("lognormal-molecules", "uniform-edges-molecules", "lognormal-random")
STAGES = ("seeded_streams", "cell", "atoms", "reflections")
WORST_TOML = """name = "largest-allowed"
[cell]
sampler = "uniform-edges"
a_min = 23.0
a_max = 23.2
[fill]
filler = "molecules"
v_atom = [7.0, 7.0]
x_h = [0.6, 0.6]
molecule_tries = 100
[priors]
stats = "cod-molecular"
"""


def _per_sample_us(fn, n: int) -> float:
    t = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return (time.perf_counter() - t) / n * 1e6


def measure(names: list[str], n: int) -> dict:
    """One run in this process, with whatever `builder` it imports (the current tree or a baseline)."""
    from builder.sample import generate_sample, generate_structure
    from builder.sf import reflections_of
    from builder.strategy import load_strategy

    out = {}
    for name in names:
        strat = load_strategy(name)
        generate_sample(strat, 0, 0)  # compile / warm caches
        structs = [generate_structure(strat, 0, i) for i in range(1, n + 1)]
        only = _per_sample_us(lambda i: generate_sample(strat, 0, i, with_reflections=False), n)
        full = _per_sample_us(lambda i: generate_sample(strat, 0, i), n)
        refl = _per_sample_us(lambda i: reflections_of(structs[i - 1]), n)
        out[name] = {"structures_only_us": round(only, 2), "full_us": round(full, 2), "reflections_us": round(refl, 2),
                     "structures_only_per_s": round(1e6 / only, 1), "full_per_s": round(1e6 / full, 1),
                     "mean_atoms_asu": round(sum(s.n_atoms for s in structs) / n, 2), "stages_us": stages(strat, n)}
    return out


def stages(strat, n: int) -> dict:
    """Where a sample's time goes: the two seeded streams, the cell, the atoms (given the cell), then F."""
    from builder.cell import sample_cell
    from builder.fill import fill_atoms
    from builder.sample import STREAM_ATOMS, STREAM_CELL, generate_structure
    from builder.sf import reflections_of
    from manifests.seeds import seeded_rng

    sid = strat.strategy_id
    cells = [sample_cell(seeded_rng(0, sid, i, STREAM_CELL), strat.cell) for i in range(1, n + 1)]
    structs = [generate_structure(strat, 0, i) for i in range(1, n + 1)]
    rng = _per_sample_us(lambda i: (seeded_rng(0, sid, i, STREAM_CELL), seeded_rng(0, sid, i, STREAM_ATOMS)), n)
    cell = _per_sample_us(lambda i: sample_cell(seeded_rng(0, sid, i, STREAM_CELL), strat.cell), n)
    fill = _per_sample_us(lambda i: fill_atoms(seeded_rng(0, sid, i, STREAM_ATOMS), cells[i - 1], strat.space_group,
                                               strat.fill), n)
    refl = _per_sample_us(lambda i: reflections_of(structs[i - 1]), n)
    half = rng / 2  # each of cell and fill above includes one stream's construction
    return {"seeded_streams": round(rng, 2), "cell": round(cell - half, 2), "atoms": round(fill - half, 2),
            "reflections": round(refl, 2)}


def largest_allowed(k: int = 3) -> dict:
    """Seconds for the largest cells the bounds allow (4,460 atoms per cell at most, 100 tries)."""
    from builder.sample import generate_sample
    from builder.strategy import load_strategy

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "largest.toml"
        path.write_text(WORST_TOML)
        strat = load_strategy(path)
    secs, atoms = [], []
    for i in range(k):
        t = time.perf_counter()
        rec = generate_sample(strat, 0, i)
        secs.append(time.perf_counter() - t)
        atoms.append(rec["meta"]["n_atoms"])
    return {"cell_edges_A": [23.0, 23.2], "v_atom": 7.0, "x_h": 0.6, "molecule_tries": 100,
            "atoms_asu": atoms, "seconds_full_sample": [round(s, 3) for s in secs]}


def _run_tree(tree: Path, names: list[str], n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure-only", "--n", str(n),
                          "--strategy", *names], cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def _get(row: dict, key: str) -> float:
    return row["stages_us"][key.split(".", 1)[1]] if key.startswith("stages_us.") else row[key]


def compare(rev: str, names: list[str], n: int, repeats: int) -> dict:
    """Alternate baseline and current runs; medians and median per-pair ratios (current / baseline speed)."""
    from benchmarks.common import unpack_commit

    with tempfile.TemporaryDirectory() as d:
        base = unpack_commit(rev, Path(d))
        runs = {"baseline": [], "current": []}
        for _ in range(repeats):
            runs["baseline"].append(_run_tree(base, names, n))
            runs["current"].append(_run_tree(ROOT, names, n))
    out = {}
    for name in names:
        row = {}
        for key in ("structures_only_per_s", "full_per_s", "reflections_us", *(f"stages_us.{k}" for k in STAGES)):
            b = [_get(r[name], key) for r in runs["baseline"]]
            c = [_get(r[name], key) for r in runs["current"]]
            ratio = [cc / bb if key.endswith("_per_s") else bb / cc for bb, cc in zip(b, c)]
            row[key] = {"baseline_median": statistics.median(b), "current_median": statistics.median(c),
                        "speedup_median_of_pairs": round(statistics.median(ratio), 2),
                        "baseline_runs": b, "current_runs": c}
        row["mean_atoms_asu"] = {"baseline": runs["baseline"][0][name]["mean_atoms_asu"],
                                 "current": runs["current"][0][name]["mean_atoms_asu"]}
        out[name] = row
    return {"baseline_commit": rev, "repeats": repeats, "samples_per_run": n, "strategies": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1500, help="samples per strategy and run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--strategy", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--baseline-commit", default=None, help="also measure this commit, alternating runs")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.strategy, args.n)))
        return
    result = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "affinity_cpus": len(os.sched_getaffinity(0)), "largest_allowed_structure": largest_allowed()}
    if args.baseline_commit:
        result["comparison"] = compare(args.baseline_commit, args.strategy, args.n, args.repeats)
    else:
        runs = [_run_tree(ROOT, args.strategy, args.n) for _ in range(args.repeats)]
        result["current"] = {name: {key: statistics.median(r[name][key] for r in runs) for key in runs[0][name]}
                             for name in args.strategy}
    from benchmarks.common import emit

    emit(result, args.out)


if __name__ == "__main__":
    main()
