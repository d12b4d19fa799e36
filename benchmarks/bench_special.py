"""Special positions and the first general atom in `lognormal-molecules` samples (issue 8 points 1 and 4).

    python -m benchmarks.bench_special [--n 4000] [--seed 0] [--baseline-commit REV] \\
        [--out benchmarks/results/special_positions.json]

Reports the share of samples with 0 / 1 / >1 occupied inversion centres beside the binomial for p = 0.05 and
four centres (81.45 / 17.15 / 1.40 %), and, among samples with special and general atoms, how often the first
general atom is bonded (0.9–1.1 R_Σ) to a special atom beside what random placement gives (Monte Carlo in the
same cells with the same element, tests/test_fill.py's second path). With `--baseline-commit`, that commit's
generator is measured too (`git archive`, run in its own process).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # a baseline's run imports `builder` from that tree, the rest here


def binomial(p: float, centres: int) -> list[float]:
    """P(0), P(1), P(>1) occupied of `centres` inversion centres, each occupied with probability p (§3.5)."""
    p0, p1 = (1 - p) ** centres, centres * p * (1 - p) ** (centres - 1)
    return [p0, p1, 1 - p0 - p1]


def _checks():
    """The second-path helpers of tests/test_fill.py, loaded from this tree whatever `builder` is imported."""
    spec = importlib.util.spec_from_file_location("fill_checks", ROOT / "tests" / "test_fill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def redraws(n: int, seed: int) -> dict | None:
    """How often an occupied centre needed another element, and the mean covalent radius drawn first vs placed
    (this tree's fill only: its special positions are the only callers of `first_valid`)."""
    import builder.fill as fill
    from builder.sample import generate_structure
    from builder.strategy import load_strategy

    if not hasattr(fill, "_place_special"):
        return None
    strat, log, original = load_strategy("lognormal-molecules"), [], fill.first_valid
    fill.first_valid = lambda *a: (r := original(*a), log.append((float(a[1][0]), r == 0)))[0]
    first, placed, redrawn = [], [], 0
    try:
        for i in range(n):
            log.clear()
            generate_structure(strat, seed, i)
            tried = []
            for radius, ok in log:  # a success closes one occupied centre
                tried.append(radius)
                if ok:
                    first.append(tried[0])
                    placed.append(radius)
                    redrawn += len(tried) > 1
                    tried = []
    finally:
        fill.first_valid = original
    return {"occupied_centres": len(placed), "needed_another_element": redrawn,
            "share": round(redrawn / max(1, len(placed)), 4), "mean_radius_first_draw_A": round(float(np.mean(first)), 3),
            "mean_radius_placed_A": round(float(np.mean(placed)), 3)}


def measure(n: int, seed: int, mc: int) -> dict:
    from builder.sample import generate_structure
    from builder.strategy import load_strategy

    from builder.symmetry import inversion_centres

    checks, strat, rng = _checks(), load_strategy("lognormal-molecules"), np.random.default_rng(123)
    p, centres = strat.fill.special_p, len(inversion_centres(strat.space_group))
    expect = binomial(p, centres)
    counts, observed, expected = [], [], []
    for i in range(n):
        s = generate_structure(strat, seed, i)
        counts.append(s.n_special)
        if s.n_special == 0 or s.n_atoms == s.n_special:
            continue
        special, z = np.arange(s.n_special), int(s.z[s.n_special])
        first = checks._ratios_to(s, s.frac[s.n_special:s.n_special + 1].astype(np.float64), z, special)
        observed.append(bool(((first >= 0.9) & (first <= 1.1)).any()))
        pts = rng.random((mc, 3))
        r = checks._ratios_to(s, pts, z, special)
        ok = ((r > 0.9) & ~((r >= 1.1) & (r <= 1.4))).all(axis=1) & checks._own_images_allow(s, pts, z)
        if ok.any():
            expected.append(float(((r >= 0.9) & (r <= 1.1)).any(axis=1)[ok].mean()))
    c = np.array(counts)
    return {"samples": n, "seed": seed,
            "occupied_centres_percent": {"0": round(100 * float(np.mean(c == 0)), 2),
                                         "1": round(100 * float(np.mean(c == 1)), 2),
                                         ">1": round(100 * float(np.mean(c > 1)), 2)},
            "binomial_percent": {"0": round(100 * expect[0], 2), "1": round(100 * expect[1], 2),
                                 ">1": round(100 * expect[2], 2)},
            "mean_occupied": round(float(c.mean()), 4), "binomial_mean": round(centres * p, 4),
            "samples_with_special_and_general": len(observed),
            "first_general_bonded_to_special": round(float(np.mean(observed)), 4),
            "random_placement_expectation": round(float(np.mean(expected)), 4), "element_redraws": redraws(n, seed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mc", type=int, default=300, help="Monte Carlo points per sample")
    ap.add_argument("--baseline-commit", default=None)
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.n, args.seed, args.mc)))
        return
    from benchmarks.common import emit, unpack_commit

    result = {"current": measure(args.n, args.seed, args.mc)}
    if args.baseline_commit:
        with tempfile.TemporaryDirectory() as d:
            unpack_commit(args.baseline_commit, Path(d))
            res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure-only", "--n", str(args.n),
                                  "--seed", str(args.seed), "--mc", str(args.mc)], cwd=d, capture_output=True,
                                 text=True, check=True, env={**os.environ, "PYTHONPATH": d})
        result["baseline"] = {"commit": args.baseline_commit, **json.loads(res.stdout)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
