"""The stats file from per-structure records (`builder.stats`): fits, histograms, element tables and priors.

`summarise(records, meta)` gives the JSON document that `phaseforge-build stats` writes (format and priors
contract: `manifests.priors`; rules: manifests/stats/README.md):

* the log-normal fit of the cell volume V (maximum likelihood: μ = mean ln V, σ = std ln V with ddof 0) and a
  Kolmogorov–Smirnov test against that fit (the p-value is optimistic, as μ and σ come from the same data);
* the largest edge a3 and the sorted-edge ratios a2/a1, a3/a2 (a1 ≤ a2 ≤ a3), with an exponential fit of
  ratio − 1 (maximum likelihood: scale = mean(ratio − 1)) and its KS test (Fig. 2); the monoclinic angle (Fig. 3);
* element frequencies of non-H atoms in general positions, on inversion centres and on other special positions
  (Table S1), and the special-position tables a strategy can choose (`manifests.priors.SPECIAL_TABLES`);
* the hydrogen mole fraction, the volume per non-H atom (Fig. S1), the mean U_iso (Fig. S2);
* how many structures occupy 0, 1 or >1 inversion centres (§3.5), and the interatomic-distance histogram (Fig. 4);
* the raw per-structure values (``values``: volume, sorted edges, monoclinic angle) for exact two-sample tests.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import stats as sps

from builder.compound import CLASSES
from builder.stats import DIST_BIN, DIST_MAX, SELECTIONS, SPECIAL_TOL, StructureStats
from manifests.priors import DEFAULT_SPECIAL, SCHEMA, SPECIAL_TABLES, prior_fractions, rounded
from manifests.schema import package_version

__all__ = ["summary_stats", "histogram", "element_table", "distance_summary", "summarise", "files_sha256"]

COUNTING = ("element tables: asymmetric-unit sites weighted by CIF occupancy, non-H only; general = site "
            "multiplicity 1; inversion = on an inversion centre of a centrosymmetric group (images within "
            f"{SPECIAL_TOL} Å); molecular = atoms include C and H/D; x_H = (H+D)/all atoms in the cell; "
            "V_atom = V / non-H atoms in the cell; ranges are 5th-95th percentiles (x_H over structures "
            "with H); space group 14 in its reduced P 1 21/c 1 cell")


def _finite(v: Iterable) -> np.ndarray:
    return np.asarray([x for x in v if x is not None and math.isfinite(x)], dtype=np.float64)


def summary_stats(v: Sequence[float]) -> dict:
    """n, mean, std, min, 5/25/50/75/95th percentiles and max of the finite values."""
    a = _finite(v)
    if len(a) == 0:
        return {"n": 0}
    p = np.percentile(a, [5, 25, 50, 75, 95])
    return {"n": len(a), "mean": a.mean(), "std": a.std(), "min": a.min(), "p5": p[0], "p25": p[1],
            "median": p[2], "p75": p[3], "p95": p[4], "max": a.max()}


def histogram(v: Sequence[float], lo: float, hi: float, width: float) -> dict:
    """Counts of the finite values on bins of `width` over [lo, hi], with under- and overflow counts."""
    a = _finite(v)
    nb = int(round((hi - lo) / width))
    counts = np.histogram(a, bins=np.linspace(lo, hi, nb + 1))[0]
    return {"lo": lo, "hi": hi, "width": width, "counts": counts.tolist(),
            "underflow": int((a < lo).sum()), "overflow": int((a > hi).sum())}


def _lognormal(volumes: np.ndarray) -> dict:
    ln = np.log(volumes)
    mu, sigma = float(ln.mean()), float(ln.std())
    out = {"rule": "MLE: mu = mean(ln V), sigma = std(ln V), ddof 0; KS against Lognormal(mu, sigma) "
                   "(p-value optimistic: parameters fitted on the same data)", "n": len(ln), "mu": mu, "sigma": sigma}
    if len(ln) >= 2 and sigma > 0:
        ks = sps.kstest(volumes, "lognorm", args=(sigma, 0.0, math.exp(mu)))
        out.update(ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue))
    return out


def _ratio(v: np.ndarray) -> dict:
    x = v - 1.0
    scale = float(x.mean()) if len(x) else float("nan")
    fit: dict = {"rule": "ratio - 1 ~ Exponential(scale); MLE scale = mean(ratio - 1); KS against that fit",
                 "scale": scale, "rate": 1.0 / scale if scale > 0 else None}
    if len(x) >= 2 and scale > 0:
        ks = sps.kstest(x, "expon", args=(0.0, scale))
        fit.update(ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue))
    return {"summary": summary_stats(v), "hist": histogram(v, 1.0, 4.0, 0.02), "exponential_fit": fit,
            "fraction_le_1_8": float((v <= 1.8).mean()) if len(v) else None}


def element_table(dicts: Iterable[dict[str, float]]) -> dict:
    """Pooled element counts: total weight, structures contributing, counts, fractions, C+N+O share."""
    tot: dict[str, float] = {}
    n_struct = 0
    for d in dicts:
        n_struct += bool(d)
        for k, v in d.items():
            tot[k] = tot.get(k, 0.0) + v
    s = sum(tot.values())
    frac = {k: v / s for k, v in sorted(tot.items())} if s > 0 else {}
    return {"weight": s, "n_structures": n_struct, "counts": dict(sorted(tot.items())), "fractions": frac,
            "cno_share": sum(frac.get(e, 0.0) for e in ("C", "N", "O"))}


def _merge(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def _buckets(counts: Sequence[int]) -> dict:
    n = len(counts)
    b = {"0": sum(c == 0 for c in counts), "1": sum(c == 1 for c in counts), ">1": sum(c > 1 for c in counts)}
    return {"n_structures": n, "counts": b, "fractions": {k: (v / n if n else None) for k, v in b.items()}}


def _distances(recs: list[StructureStats]) -> dict:
    per_atom = [r.dist_hist / r.n_atoms_cell for r in recs if r.n_atoms_cell > 0]
    heavy = [r.dist_hist_non_h / r.n_non_h_cell for r in recs if r.n_non_h_cell > 0]
    out = {"rule": "all atom pairs 0-6 Å in the crystal (symmetry images and neighbouring cells), both ends "
                   "counted, weighted by occupancy products, alternative disorder parts excluded; per structure "
                   "divided by the atoms in the cell, then averaged over structures",
           "lo": 0.0, "hi": DIST_MAX, "width": DIST_BIN}
    for key, arrs in (("all_atoms", per_atom), ("non_h", heavy)):
        if arrs:
            m = np.mean(arrs, axis=0)
            area = m.sum() * DIST_BIN
            out[key] = {"n_structures": len(arrs), "mean_neighbours_per_atom": m.tolist(),
                        "density": (m / area).tolist() if area > 0 else None}
    return out


def distance_summary(records: Sequence[StructureStats]) -> dict:
    """The interatomic-distance block of a stats file (``distances``) for these records (Fig. 4's curve)."""
    return rounded(_distances([r for r in records if r.dist_hist is not None]))


def _counts(records: Sequence[StructureStats], recs: list[StructureStats]) -> dict:
    bad = [r for r in records if r.error]
    reasons: dict[str, int] = {}
    for r in bad:
        key = r.error.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    return {
        "files": len(records), "unusable": len(bad), "unusable_reasons": dict(sorted(reasons.items())),
        "usable": len(records) - len(bad), "selected": len(recs),
        "centrosymmetric": sum(r.centrosymmetric for r in recs), "without_h": sum(r.n_h_cell == 0 for r in recs),
        "sites_skipped": sum(r.n_sites_skipped for r in recs), "u_fallback_sites": sum(r.n_u_fallback for r in recs),
        "cells_repaired": sum(r.cell_repaired for r in recs),
        "compound_classes": {c: sum(r.compound_class == c for r in recs) for c in CLASSES},
        "crystal_systems": dict(sorted({s: sum(r.crystal_system == s for r in recs)
                                        for s in {r.crystal_system for r in recs}}.items())),
    }


def _elements(usable: list[StructureStats], recs: list[StructureStats]) -> dict:
    return {
        "general": element_table(r.elements_general for r in recs),
        "inversion_centre": element_table(r.elements_inversion for r in recs if r.centrosymmetric),
        "inversion_centre_all": element_table(r.elements_inversion for r in usable if r.centrosymmetric),
        "other_special": element_table(r.elements_special_other for r in recs),
        "special_any": element_table(_merge(r.elements_inversion, r.elements_special_other) for r in recs),
        "rule": "general: multiplicity 1; inversion_centre: on an inversion centre of a centrosymmetric group; "
                "inversion_centre_all: the same over every usable structure of the folder, selected or not; "
                "other_special: multiplicity > 1, not on an inversion centre; special_any: all multiplicity > 1 "
                "sites. Per asymmetric-unit site, occupancy-weighted, non-H",
    }


def _cell_block(recs: list[StructureStats]) -> dict:
    vol = np.array([r.volume for r in recs])
    edges = np.array([r.edges_sorted for r in recs])
    mono = [r.monoclinic_angle for r in recs if r.monoclinic_angle is not None]
    return {
        "volume": {"lognormal_fit": _lognormal(vol), "summary": summary_stats(vol),
                   "hist_ln_v": histogram(np.log(vol), 3.0, 12.5, 0.05)},
        "largest_edge": {"summary": summary_stats(edges[:, 2]), "hist": histogram(edges[:, 2], 0.0, 50.0, 0.25)},
        "edge_ratios": {"a2_a1": _ratio(edges[:, 1] / edges[:, 0]), "a3_a2": _ratio(edges[:, 2] / edges[:, 1])},
        "monoclinic_angle": {"rule": "monoclinic cells: the non-90° angle, as the obtuse one (180° - x if acute)",
                             "summary": summary_stats(mono), "hist": histogram(mono, 90.0, 150.0, 0.5)},
    }


def _values(recs: list[StructureStats]) -> dict:
    return {
        "rule": "per selected structure, in file-name order: file name, cell volume (Å³), sorted edges a1 ≤ a2 ≤ a3 "
                "(Å), monoclinic angle (obtuse; null when not monoclinic); rounded to 6 significant digits. For "
                "exact two-sample tests against generated structures (`phaseforge-build compare`)",
        "names": [r.name for r in recs], "volume": np.array([r.volume for r in recs]),
        "edges_sorted": np.array([r.edges_sorted for r in recs]), "monoclinic_angle": [r.monoclinic_angle for r in recs],
    }


def _priors(doc: dict) -> dict:
    el = doc["elements"]
    tables = {"inversion-all": el["inversion_centre_all"], "inversion-selected": el["inversion_centre"],
              "special-selected": el["special_any"]}
    special = {k: prior_fractions(t["fractions"]) for k, t in tables.items()}
    v_s, x_s = doc["composition"]["v_atom"]["summary"], doc["composition"]["x_h"]["summary"]
    fit = doc["cell"]["volume"]["lognormal_fit"]
    return {
        "elements_general": prior_fractions(el["general"]["fractions"]),
        "elements_special": special[DEFAULT_SPECIAL], "special_default": DEFAULT_SPECIAL, "special_tables": special,
        "lognormal_mu": fit["mu"], "lognormal_sigma": fit["sigma"],
        "v_atom_range": [v_s.get("p5"), v_s.get("p95")], "x_h_range": [x_s.get("p5"), x_s.get("p95")],
    }


def summarise(records: Sequence[StructureStats], meta: dict) -> dict:
    """The JSON document for `records` (from `collect`). `meta` names the source: keys `source_dir`,
    `selection` (a SELECTIONS name) and optionally `files_sha256`, `command`; they go into `derivation`."""
    sel_name = str(meta.get("selection", "all"))
    usable = [r for r in records if not r.error]
    recs = [r for r in usable if r.selected]
    derivation = {
        "source_dir": meta.get("source_dir"), "files_sha256": meta.get("files_sha256"), "command": meta.get("command"),
        "n_files": len(records), "selection": sel_name, "rule": SELECTIONS.get(sel_name, (str(meta.get("rule")),))[0],
        "code_version": f"phaseforge {package_version()}, {SCHEMA}", "special_tolerance_A": SPECIAL_TOL,
        "counting": COUNTING, "special_tables": SPECIAL_TABLES,
    }
    doc: dict = {"schema": SCHEMA, "derivation": {k: v for k, v in derivation.items() if v is not None},
                 "counts": _counts(records, recs)}
    if not recs:
        doc["priors"] = None
        return rounded(doc)
    x_h = [r.x_h for r in recs if r.n_h_cell > 0]
    v_atom = [r.v_atom for r in recs]
    u_all, u_heavy = [r.uiso_mean for r in recs], [r.uiso_mean_non_h for r in recs]
    doc.update(
        cell=_cell_block(recs), elements=_elements(usable, recs),
        composition={"x_h": {"summary": summary_stats(x_h), "hist": histogram(x_h, 0.0, 1.0, 0.01),
                             "n_without_h": doc["counts"]["without_h"]},
                     "v_atom": {"summary": summary_stats(v_atom), "hist": histogram(v_atom, 0.0, 60.0, 0.5)}},
        uiso={"rule": "per structure: mean U (Å²) over sites whose file gives one (U_eq from U_ij first, else U_iso; "
                      "B converted)",
              "all_atoms": {"summary": summary_stats(u_all), "hist": histogram(u_all, 0.0, 0.2, 0.0025)},
              "non_h": {"summary": summary_stats(u_heavy), "hist": histogram(u_heavy, 0.0, 0.2, 0.0025)}},
        special_positions={
            "inversion_centres_occupied": _buckets([r.n_inversion_occupied for r in recs if r.centrosymmetric]),
            "special_sites_any": _buckets([r.n_special_sites for r in recs]),
            "rule": "inversion_centres_occupied: centrosymmetric structures, distinct inversion-centre positions "
                    "holding an atom; special_sites_any: all structures, asymmetric-unit sites with multiplicity > 1"},
        distances=_distances(recs), values=_values(recs),
    )
    doc["priors"] = _priors(doc)
    return rounded(doc)


def files_sha256(paths: Sequence[Path]) -> str:
    """One sha256 over the sorted (file name, content sha256) pairs: names the exact input set."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(f"{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()
