"""Sampling and two-sample tests for `builder.compare`: generated structures, the database side, KS statistics.

`sample_strategy` draws structures 0..N−1 of a strategy (`generate_structure`, so exactly the samples a shard build
holds) and, for Fig. 3, each sample's cell a second time from its own cell stream with ``adjusted_s3`` flipped.
`load_database` reads a stats file (`phaseforge-build stats`). `ks_samples`, `ks_binned` and `ks_curves` are the
exact, binned and distance-curve KS tests (rules: `builder.compare.RULES`); `uniform_edges_*` is the analytic f_V of
uniform edges, eqs (1)–(5).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats as sps

from builder.cell import CellConfig, sample_cell
from builder.sample import STREAM_CELL, generate_structure
from builder.stats import monoclinic_angle, structure_stats
from builder.stats_summary import distance_summary
from builder.strategy import Strategy, canonical_json
from builder.symmetry import site_multiplicity, space_group_ops
from manifests.priors import READABLE_SCHEMAS, stats_path
from manifests.seeds import seeded_rng

__all__ = ["QUANTITIES", "CELL_KEYS", "DIST_KEYS", "SHORT_RANGE", "FV_GRID", "WIDE_EDGES", "uniform_edges_lnv_pdf",
           "uniform_edges_volume_pdf", "uniform_edges_volume_cdf", "Sampled", "cell_key", "sample_strategy",
           "Database", "load_database", "ks_samples", "ks_binned", "ks_curves", "ks_all", "wide_volume"]

FV_GRID = 2048  # cells per ln-edge range for the numerical convolution of eq. (5)

# key -> (label, unit)
QUANTITIES = {
    "volume": ("cell volume V", "Å³"),
    "largest_edge": ("largest edge a3", "Å"),
    "ratio_a2_a1": ("a2/a1", ""),
    "ratio_a3_a2": ("a3/a2", ""),
    "monoclinic_angle_adjusted": ("β, adjusted s3 bound", "°"),
    "monoclinic_angle_unadjusted": ("β, s3 ∈ [tan(90°−β_max), 0]", "°"),
    "distances_all_atoms": ("all atoms, 0–6 Å", "Å"),
    "distances_non_h": ("non-H pairs, 0–6 Å", "Å"),
    "distances_all_atoms_0_3": ("all atoms, 0–3 Å", "Å"),
    "distances_non_h_0_3": ("non-H pairs, 0–3 Å", "Å"),
}
CELL_KEYS = [k for k in QUANTITIES if not k.startswith("distances")]
DIST_KEYS = [k for k in QUANTITIES if k.startswith("distances")]
SHORT_RANGE = 3.0  # Å: the bond peak and the trough after it (§3.5), where the fillers differ


# ---------------------------------------------------------------------------------------- analytic f_V, eqs 1-5

def uniform_edges_lnv_pdf(a_min: float, a_max: float, n: int = FV_GRID) -> tuple[np.ndarray, np.ndarray, float]:
    """f_C of C = ln V = B1 + B2 + B3, B = ln A, A ~ U(a_min, a_max): (cell centres, densities, cell width h).

    B's range is cut into n cells of width h; each gets its exact mass ∫ f_B = F_B(b_{k+1}) − F_B(b_k) (eqs 3–4,
    so the masses sum to 1), and the triple convolution of the masses (eq. 5) gives C's mass on cells of width h
    centred at 3 ln a_min + (k + 3/2) h, k = 0..3n−3. Density = mass / h; error O(h).
    """
    if not 0 < a_min < a_max:
        raise ValueError(f"need 0 < a_min < a_max, got a_min = {a_min}, a_max = {a_max}")
    lo, hi = math.log(a_min), math.log(a_max)
    h = (hi - lo) / n
    p = np.diff(np.exp(lo + h * np.arange(n + 1))) / (a_max - a_min)  # F_B(b_{k+1}) - F_B(b_k)
    m = np.convolve(np.convolve(p, p), p)
    centres = 3 * lo + (np.arange(len(m)) + 1.5) * h
    return centres, m / h, h


def uniform_edges_volume_pdf(v: np.ndarray | float, a_min: float, a_max: float, n: int = FV_GRID) -> np.ndarray:
    """f_V(v) = f_C(ln v) / v for a_n ~ U(a_min, a_max) independent (zero outside [a_min³, a_max³])."""
    c, f, _ = uniform_edges_lnv_pdf(a_min, a_max, n)
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.log(np.where(v > 0, v, np.nan))
        out = np.interp(lv, c, f, left=0.0, right=0.0) / v
    return np.where(np.isfinite(out), out, 0.0)


def uniform_edges_volume_cdf(v: np.ndarray | float, a_min: float, a_max: float, n: int = FV_GRID) -> np.ndarray:
    """F_V(v), the integral of `uniform_edges_volume_pdf` (piecewise linear in ln v between cell edges)."""
    c, f, h = uniform_edges_lnv_pdf(a_min, a_max, n)
    knots = np.concatenate([[c[0] - h / 2], c + h / 2])
    cum = np.concatenate([[0.0], np.cumsum(f * h)])
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.log(np.where(v > 0, v, np.nan))
    return np.where(np.isfinite(lv), np.interp(lv, knots, cum, left=0.0, right=1.0), 0.0)






@dataclasses.dataclass
class Sampled:
    """What `compare` needs of one strategy's N generated structures."""

    name: str
    strategy: Strategy
    volume: np.ndarray  # (N,) Å³
    edges: np.ndarray  # (N, 3) sorted a1 ≤ a2 ≤ a3
    beta: dict[bool, np.ndarray]  # adjusted_s3 -> (N,) monoclinic angle (deg); empty when the cells are not monoclinic
    distances: dict  # builder.stats.distance_summary of the generated structures
    n_distance: int


def cell_key(cfg: CellConfig) -> str:
    """Strategies with equal keys draw cells from the same distribution."""
    return canonical_json(dataclasses.asdict(cfg))


def sample_strategy(strategy: Strategy, seed: int, count: int, distance_count: int | None = None,
                    progress: bool | None = None) -> Sampled:
    """Structures 0..count−1 (distances from the first `distance_count`, default all) and the redrawn cells."""
    from tqdm import tqdm

    n_dist = count if distance_count is None else min(count, distance_count)
    ops = space_group_ops(strategy.space_group)
    mono = strategy.cell.skew == "monoclinic"
    flipped = dataclasses.replace(strategy.cell, adjusted_s3=not strategy.cell.adjusted_s3)
    vol, edges, beta, beta_alt, recs = [], [], [], [], []
    quiet = None if progress is None else not progress
    for i in tqdm(range(count), desc=strategy.name, unit="structure", disable=quiet):
        s = generate_structure(strategy, seed, i)
        cell = np.asarray(s.cell, dtype=np.float64)
        a, b, c = cell[:3]
        ca, cb, cg = np.cos(np.radians(cell[3:6]))
        vol.append(a * b * c * math.sqrt(max(0.0, 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)))
        edges.append(np.sort(cell[:3]))
        if mono:
            beta.append(monoclinic_angle(cell))
            alt = sample_cell(seeded_rng(seed, strategy.strategy_id, i, STREAM_CELL), flipped)
            beta_alt.append(monoclinic_angle(alt))
        if i < n_dist:
            occ = np.array([float(o) * site_multiplicity(ops, x.astype(np.float64)) for o, x in zip(s.occ, s.frac)])
            recs.append(structure_stats(f"{strategy.name}-{i}", cell, s.space_group, s.frac, s.z, occ, s.uiso))
    bet = {strategy.cell.adjusted_s3: np.array(beta), flipped.adjusted_s3: np.array(beta_alt)} if mono else {}
    return Sampled(name=strategy.name, strategy=strategy, volume=np.array(vol), edges=np.array(edges).reshape(-1, 3),
                   beta=bet, distances=distance_summary(recs), n_distance=len(recs))


# ------------------------------------------------------------------------------------------------- database

@dataclasses.dataclass
class Database:
    path: Path
    doc: dict
    values: dict[str, np.ndarray] | None  # volume, largest_edge, ratio_a2_a1, ratio_a3_a2, monoclinic_angle
    n: int

    def hist(self, key: str) -> dict | None:
        """The database histogram of a quantity (for binned KS and the plots)."""
        cell = self.doc["cell"]
        h = {"volume": cell["volume"]["hist_ln_v"], "largest_edge": cell["largest_edge"]["hist"],
             "ratio_a2_a1": cell["edge_ratios"]["a2_a1"]["hist"], "ratio_a3_a2": cell["edge_ratios"]["a3_a2"]["hist"],
             "monoclinic_angle": cell["monoclinic_angle"]["hist"]}.get(key)
        return h


def load_database(ref: str | Path) -> Database:
    """A stats file (`phaseforge-build stats`) by path or committed name; ValueError (one line) if unusable."""
    p = stats_path(ref)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"{p}: not a stats file (schema {' or '.join(READABLE_SCHEMAS)}); make one with "
                         "`phaseforge-build stats`")
    if "cell" not in doc or "distances" not in doc or not doc.get("counts", {}).get("selected"):
        raise ValueError(f"{p}: the stats file selected no structures; nothing to compare against")
    values = None
    raw = doc.get("values")
    if isinstance(raw, dict) and raw.get("volume"):
        e = np.array(raw["edges_sorted"], dtype=np.float64).reshape(-1, 3)
        values = {"volume": np.array(raw["volume"], dtype=np.float64), "largest_edge": e[:, 2],
                  "ratio_a2_a1": e[:, 1] / e[:, 0], "ratio_a3_a2": e[:, 2] / e[:, 1],
                  "monoclinic_angle": np.array([x for x in raw["monoclinic_angle"] if x is not None], dtype=np.float64)}
    return Database(path=p, doc=doc, values=values, n=int(doc["counts"]["selected"]))


# ------------------------------------------------------------------------------------------------ KS tests

def _ks_p(d: float, n: int, m: int) -> float:
    en = max(1, int(round(n * m / (n + m))))
    return float(sps.kstwo.sf(d, en))


def ks_samples(gen: np.ndarray, db: np.ndarray) -> dict:
    """Exact two-sample KS of two value arrays."""
    gen, db = np.asarray(gen, dtype=np.float64), np.asarray(db, dtype=np.float64)
    if len(gen) == 0 or len(db) == 0:
        return {"statistic": None, "pvalue": None, "n_generated": len(gen), "n_database": len(db), "method": "none"}
    r = sps.ks_2samp(gen, db)
    return {"statistic": float(r.statistic), "pvalue": float(r.pvalue), "n_generated": len(gen),
            "n_database": len(db), "method": "exact"}


def ks_binned(gen: np.ndarray, hist: dict, transform=None) -> dict:
    """KS between samples and a stats-file histogram, on that histogram's bin edges (under/overflow included)."""
    gen = np.asarray(gen, dtype=np.float64)
    if transform is not None:
        gen = transform(gen)
    counts = np.asarray(hist["counts"], dtype=np.float64)
    edges = np.linspace(hist["lo"], hist["hi"], len(counts) + 1)
    db = np.concatenate([[hist["underflow"]], counts, [hist["overflow"]]])
    g = np.concatenate([[np.sum(gen < edges[0])], np.histogram(gen, bins=edges)[0], [np.sum(gen > edges[-1])]])
    n, m = int(db.sum()), len(gen)
    if n == 0 or m == 0:
        return {"statistic": None, "pvalue": None, "n_generated": m, "n_database": n, "method": "none"}
    d = float(np.max(np.abs(np.cumsum(g) / m - np.cumsum(db) / n)))
    return {"statistic": d, "pvalue": _ks_p(d, n, m), "n_generated": m, "n_database": n, "method": "binned"}


def ks_curves(gen: dict | None, db: dict | None, n_bins: int | None = None) -> dict:
    """Binned KS of two distance curves (`distances.all_atoms` / `.non_h` blocks: unit-area `density`), over all
    bins or the first `n_bins` (the distribution conditional on the distance lying there)."""
    if not gen or not db or gen.get("density") is None or db.get("density") is None:
        return {"statistic": None, "pvalue": None, "n_generated": 0, "n_database": 0, "method": "none"}
    a, b = np.asarray(gen["density"])[:n_bins], np.asarray(db["density"])[:n_bins]
    if not a.sum() > 0 or not b.sum() > 0:
        return {"statistic": None, "pvalue": None, "n_generated": 0, "n_database": 0, "method": "none"}
    d = float(np.max(np.abs(np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum())))
    n, m = int(db["n_structures"]), int(gen["n_structures"])
    return {"statistic": d, "pvalue": _ks_p(d, n, m), "n_generated": m, "n_database": n,
            "method": "binned (structures as n)"}


def ks_all(s: Sampled, db: Database) -> dict:
    """Every QUANTITIES key of one strategy against the database: exact KS on per-structure values when the
    stats file has them (binned on its histograms otherwise); distance curves binned, over 0-6 Å and 0-3 Å."""
    gen = {"volume": s.volume, "largest_edge": s.edges[:, 2], "ratio_a2_a1": s.edges[:, 1] / s.edges[:, 0],
           "ratio_a3_a2": s.edges[:, 2] / s.edges[:, 1]}
    for flag in (True, False):
        if flag in s.beta:
            gen[f"monoclinic_angle_{'adjusted' if flag else 'unadjusted'}"] = s.beta[flag]
    out = {}
    for key, v in gen.items():
        dbkey = "monoclinic_angle" if key.startswith("monoclinic_angle") else key
        if db.values is not None:
            out[key] = ks_samples(v, db.values[dbkey])
        else:
            out[key] = ks_binned(v, db.hist(dbkey), np.log if key == "volume" else None)
    width = float(db.doc["distances"]["width"])
    for key, sub in (("distances_all_atoms", "all_atoms"), ("distances_non_h", "non_h")):
        out[key] = ks_curves(s.distances.get(sub), db.doc["distances"].get(sub))
        out[f"{key}_0_3"] = ks_curves(s.distances.get(sub), db.doc["distances"].get(sub),
                                      int(round(SHORT_RANGE / width)))
    return out


WIDE_EDGES = (4.0, 50.0)  # Fig. 1 right: a_n ~ U(4, 50 Å) against all database structures with 4 ≤ a_n ≤ 50 Å


def wide_volume(db: Database, count: int, seed: int) -> dict:
    """Fig. 1 (right): V of a_n ~ U(4, 50 Å) cells (sampled and eqs 1–5) against the database's cells in that
    edge range, with the database's own log-normal fit; two-sample KS of the sampled volumes against it."""
    if db.values is None:
        raise ValueError(f"{db.path.name} has no per-structure values; regenerate it with `phaseforge-build stats`")
    lo, hi = WIDE_EDGES
    edges = np.array(db.doc["values"]["edges_sorted"], dtype=np.float64).reshape(-1, 3)
    keep = (edges[:, 0] >= lo) & (edges[:, 2] <= hi)
    db_v = db.values["volume"][keep]
    cfg = CellConfig(sampler="uniform-edges", a_min=lo, a_max=hi, skew="none")
    rng = seeded_rng(seed, 0x57494445)  # "WIDE": its own stream
    gen_v = np.array([float(np.prod(sample_cell(rng, cfg)[:3])) for _ in range(count)])
    ln = np.log(db_v)
    return {"a_min": lo, "a_max": hi, "n_database": int(keep.sum()), "n_generated": count,
            "database_lognormal_fit": {"mu": float(ln.mean()), "sigma": float(ln.std())},
            "ks_uniform_edges": ks_samples(gen_v, db_v),
            "ks_lognormal_fit": {"statistic": float(sps.kstest(ln, "norm", args=(ln.mean(), ln.std())).statistic)},
            "_gen": gen_v, "_db": db_v}
