"""Generated vs database distributions: the paper's Figs 1–4 with our data, and two-sample KS tests.

`phaseforge-build compare --strategy S [--strategy S2 ...] --stats FILE --count N --seed K --out DIR` (builder/cli.py)
calls `compare`, which generates structures 0..N−1 of each strategy (`builder.compare_sampling`: exactly the samples
a shard build of that strategy and seed holds) and writes to DIR (`builder.compare_figures`):

* ``fig1_volume.png`` — cell volume V: the database (histogram and its log-normal fit), each cell sampler, and for
  uniform edges the analytic f_V of eqs (1)–(5) (`uniform_edges_volume_pdf`);
* ``fig2_edges.png`` — the largest edge a3 and the sorted-edge ratios a3/a2, a2/a1 (a1 ≤ a2 ≤ a3);
* ``fig3_monoclinic.png`` — the monoclinic angle with and without the adjusted s3 lower bound (eq. 15): the cells
  are drawn a second time from the same random stream with ``adjusted_s3`` flipped, so only s3's range differs;
* ``fig4_distances.png`` — interatomic distances 0–6 Å (all atoms; non-H pairs);
* ``compare.json`` (sorted keys, no timestamps) and ``compare.md``: the two-sample Kolmogorov–Smirnov statistic D
  and p-value of every generated distribution against the database.

How the numbers are made (also written into compare.json under ``rules``):

* Generated structures go through the same code as the database's CIFs (`builder.stats.structure_stats`):
  V from the cell, sorted edges, the monoclinic angle as the obtuse non-90° angle, and distances = all pairs
  0–6 Å including symmetry images and neighbouring cells, per structure divided by the atoms in the cell,
  averaged over structures (each weighs the same), 0.02 Å bins. Generated atoms are whole atoms: the chemical
  occupancy handed over is the stored crystallographic one times the site-symmetry order. The database's
  space-group-14 cells are their reduced P 1 21/c 1 cells; generated cells are taken as drawn.
* V, a3, a2/a1, a3/a2, β: exact two-sample KS (``scipy.stats.ks_2samp``, method ``auto``) against the database's
  per-structure ``values``. With a stats file that has only histograms, D is taken between the binned CDFs on the
  file's bins (method ``binned``).
* Distances: the database side is a histogram, so D = max |CDF_gen − CDF_db| over the 0.02 Å bin edges of the two
  unit-area curves. The p-value uses the asymptotic two-sample distribution (``scipy.stats.kstwo`` with
  n_eff = n·m/(n+m)) with n, m the numbers of *structures*, not of pairs: pairs within a structure are not
  independent. Treat it as indicative; D is the measure.
* KS p-values test "same distribution". With thousands of generated cells even a small, harmless difference is
  "significant"; compare D between strategies rather than reading p alone.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats as sps

from builder.compare_figures import FIGURES, WIDE_FIGURE, markdown, write_figures
from builder.compare_sampling import (FV_GRID, QUANTITIES, Database, Sampled, ks_all, load_database,
                                      sample_strategy, uniform_edges_lnv_pdf, uniform_edges_volume_cdf,
                                      wide_volume)
from builder.strategy import load_strategy
from manifests.priors import rounded, write_json

__all__ = ["SCHEMA", "RULES", "QUANTITIES", "compare"]

SCHEMA = "phaseforge.compare/1"

RULES = {
    "samples": "structures 0..count-1 of each strategy by generate_structure(strategy, seed, i); the same samples a "
               "shard build with that strategy and seed holds",
    "cell": "V from the cell; edges sorted a1 <= a2 <= a3 (after the skew, as for the database); monoclinic angle = "
            "the non-90 degree angle, made obtuse",
    "monoclinic": "monoclinic_angle_adjusted / _unadjusted: the cell of sample i redrawn from its own cell stream with "
                  "adjusted_s3 = true / false (eq. 15 with and without -(a_max^2/a3^2 - 1)^(1/2)); the one equal to "
                  "the strategy's setting is its actual cells",
    "distances": "builder.stats.structure_stats on each generated structure: all pairs 0-6 Å incl. symmetry images "
                 "and neighbouring cells, per structure / atoms in the cell, averaged over structures, 0.02 Å bins",
    "ks_exact": "scipy.stats.ks_2samp(generated, database values), method auto",
    "ks_binned": "D = max |CDF_gen - CDF_db| over the bin edges of a database histogram (under/overflow included); "
                 "p from scipy.stats.kstwo.sf(D, round(n m / (n + m)))",
    "ks_distances": "binned: D over the 0.02 Å bin edges of the two unit-area distance curves; p as ks_binned with n, "
                    "m = numbers of structures (pairs within a structure are not independent): indicative only. "
                    "The _0_3 keys test the distances below 3 Å alone (each curve renormalised there): the bond peak "
                    "and the trough after it, which the r^2 growth of the pair count hides in the 0-6 Å CDF",
    "analytic_fv": "uniform edges: f_B(b) = e^b/(a_max - a_min) on [ln a_min, ln a_max] (eq. 4) as exact masses on "
                   f"{FV_GRID} cells, f_C = f_B*f_B*f_B by discrete convolution (eq. 5), f_V(v) = f_C(ln v)/v",
}


def _check(strategies: Sequence[str], count: int, distance_count: int | None, out: Path) -> None:
    if count < 2:
        raise ValueError(f"--count must be at least 2, got {count}")
    if distance_count is not None and distance_count < 1:
        raise ValueError(f"--distance-count must be at least 1, got {distance_count}")
    if not strategies:
        raise ValueError("give at least one --strategy")
    if len(set(strategies)) != len(strategies):
        raise ValueError(f"a strategy is named twice: {', '.join(strategies)}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")


def _database_entry(db: Database) -> dict:
    der = db.doc.get("derivation", {})
    fit = db.doc["cell"]["volume"]["lognormal_fit"]
    return {"file": db.path.name, "sha256": hashlib.sha256(db.path.read_bytes()).hexdigest(),
            "n_structures": db.n, "selection": der.get("selection"), "rule": der.get("rule"),
            "source_dir": der.get("source_dir"), "n_files": der.get("n_files"),
            "per_structure_values": db.values is not None,
            "lognormal_fit": {k: fit.get(k) for k in ("mu", "sigma", "ks_statistic", "ks_pvalue")}}


def _strategy_entry(s: Sampled, db: Database, count: int) -> dict:
    cfg = s.strategy.cell
    return {
        "strategy_id": str(s.strategy.strategy_id), "cell_sampler": cfg.sampler, "filler": s.strategy.fill.filler,
        "adjusted_s3": cfg.adjusted_s3, "n": count, "n_distances": s.n_distance, "ks": ks_all(s, db),
        "summary": {"volume_median": float(np.median(s.volume)), "largest_edge_median": float(np.median(s.edges[:, 2])),
                    "ln_v_mean": float(np.mean(np.log(s.volume))), "ln_v_std": float(np.std(np.log(s.volume)))},
    }


def _analytic_fv(s: Sampled) -> dict:
    """One-sample KS of generated uniform-edges volumes against the analytic F_V (eqs 1–5)."""
    cfg = s.strategy.cell
    _, f, h = uniform_edges_lnv_pdf(cfg.a_min, cfg.a_max)
    ks = sps.kstest(s.volume, lambda v, a=cfg.a_min, b=cfg.a_max: uniform_edges_volume_cdf(v, a, b))
    return {"a_min": cfg.a_min, "a_max": cfg.a_max, "integral": float(np.sum(f) * h),
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue), "n": len(s.volume)}


def compare(strategies: Sequence[str], stats_file: str | Path, count: int, seed: int, out: str | Path,
            distance_count: int | None = None, progress: bool | None = None, command: str | None = None,
            wide_stats: str | Path | None = None) -> dict:
    """Generate, test and plot; writes DIR/{fig1..fig4}.png, compare.json, compare.md and returns the JSON doc.
    With `wide_stats` (e.g. cod-all) also Fig. 1's right panel: edges up to 50 Å against that database.
    ValueError (one line) for bad arguments, before anything is written."""
    out = Path(out)
    _check(strategies, count, distance_count, out)
    strats = [load_strategy(s) for s in strategies]
    names = [s.name for s in strats]
    if len(set(names)) != len(names):
        raise ValueError(f"two strategies have the same name: {', '.join(names)}")
    db = load_database(stats_file)
    db_wide = load_database(wide_stats) if wide_stats is not None else None
    out.mkdir(parents=True, exist_ok=True)

    sampled = [sample_strategy(s, seed, count, distance_count, progress) for s in strats]
    wide = wide_volume(db_wide, count, seed) if db_wide is not None else None
    write_figures(sampled, db, out, f"n = {count} per strategy", wide, db_wide)
    doc = {
        "schema": SCHEMA, "count": count, "seed": seed, "rules": RULES,
        "figures": FIGURES + ([WIDE_FIGURE] if wide is not None else []),
        "distance_count": count if distance_count is None else min(count, distance_count),
        "command": command or "", "database": _database_entry(db),
        "strategies": {s.name: _strategy_entry(s, db, count) for s in sampled},
        "analytic_fv": {s.name: _analytic_fv(s) for s in sampled if s.strategy.cell.sampler == "uniform-edges"},
    }
    if wide is not None:
        doc["wide_volume"] = {"database": db_wide.path.name, **{k: v for k, v in wide.items() if not k.startswith("_")}}
    doc = rounded(doc)
    write_json(doc, out / "compare.json")
    (out / "compare.md").write_text(markdown(doc), encoding="utf-8")
    return doc
