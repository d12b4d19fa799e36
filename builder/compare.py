"""Generated vs database distributions: the paper's Figs 1–4 with our data, and two-sample KS tests.

`phaseforge-build compare --strategy S [--strategy S2 ...] --stats FILE --count N --seed K --out DIR` generates
structures 0..N−1 of each strategy (``generate_structure``, so exactly the samples a shard build of that strategy
and seed holds) and writes to DIR:

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
  occupancy handed over is the stored crystallographic one times the site-symmetry order.
* V, a3, a2/a1, a3/a2, β: exact two-sample KS (``scipy.stats.ks_2samp``, method ``auto``) against the database's
  per-structure ``values`` (stats files written since the ``values`` key exists). With an older stats file
  that has only histograms, D is taken between the binned CDFs on the file's bins (method ``binned``).
* Distances: the database side is a histogram, so D = max |CDF_gen − CDF_db| over the 0.02 Å bin edges of the two
  unit-area curves. The p-value uses the asymptotic two-sample distribution (``scipy.stats.kstwo`` with
  n_eff = n·m/(n+m)) with n, m the numbers of *structures*, not of pairs: pairs within a structure are not
  independent. Treat it as indicative; D is the measure.
* KS p-values test "same distribution". With thousands of generated cells even a small, harmless difference is
  "significant"; compare D between strategies rather than reading p alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
from scipy import stats as sps

from builder import stats as dbstats
from builder.cell import CellConfig, sample_cell
from builder.sample import STREAM_CELL, generate_structure
from builder.strategy import STATS_DIR, Strategy, canonical_json, load_strategy
from builder.symmetry import site_multiplicity, space_group_ops
from manifests.errors import fail
from manifests.seeds import seeded_rng

__all__ = ["SCHEMA", "QUANTITIES", "uniform_edges_lnv_pdf", "uniform_edges_volume_pdf", "uniform_edges_volume_cdf",
           "Sampled", "Database", "sample_strategy", "load_database", "monoclinic_angle", "ks_samples",
           "ks_binned", "ks_curves", "compare", "compare_command"]

SCHEMA = "phaseforge.compare/1"
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


# ------------------------------------------------------------------------------------------------- sampling

def monoclinic_angle(cell: Sequence[float]) -> float:
    """The non-90° angle of a cell, made obtuse (as `builder.stats.StructureStats.monoclinic_angle`)."""
    ang = max((float(x) for x in cell[3:6]), key=lambda x: abs(x - 90.0))
    return 180.0 - ang if ang < 90.0 else ang


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


def _cell_key(cfg: CellConfig) -> str:
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
            recs.append(dbstats.structure_stats(f"{strategy.name}-{i}", cell, s.space_group, s.frac, s.z, occ,
                                                s.uiso))
    bet = {strategy.cell.adjusted_s3: np.array(beta), flipped.adjusted_s3: np.array(beta_alt)} if mono else {}
    return Sampled(name=strategy.name, strategy=strategy, volume=np.array(vol), edges=np.array(edges).reshape(-1, 3),
                   beta=bet, distances=dbstats.distance_summary(recs), n_distance=len(recs))


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


def _stats_file(ref: str | Path) -> Path:
    p = Path(ref)
    if p.is_file():
        return p
    builtin = STATS_DIR / f"{ref}.json"
    if "/" not in str(ref) and builtin.is_file():
        return builtin
    raise ValueError(f"stats file {str(ref)!r} not found: give a path or one of "
                     f"{', '.join(sorted(x.stem for x in STATS_DIR.glob('*.json')))}")


def load_database(ref: str | Path) -> Database:
    """A stats file (`phaseforge-build stats`) by path or committed name; ValueError (one line) if unusable."""
    p = _stats_file(ref)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("schema") != dbstats.SCHEMA:
        raise ValueError(f"{p}: not a stats file (schema {dbstats.SCHEMA!r}); make one with `phaseforge-build stats`")
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


def _ks_all(s: Sampled, db: Database) -> dict:
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


# --------------------------------------------------------------------------------------------------- plots

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _groups(sampled: list[Sampled]) -> list[tuple[str, list[Sampled]]]:
    """Strategies with the same cell configuration draw cells from the same distribution: one curve per group."""
    out: dict[str, list[Sampled]] = {}
    for s in sampled:
        out.setdefault(_cell_key(s.strategy.cell), []).append(s)
    res = []
    for group in out.values():
        cfg = group[0].strategy.cell
        label = {"uniform-edges": f"uniform edges U({cfg.a_min:g}, {cfg.a_max:g}) Å",
                 "uniform-volume": f"uniform V U({cfg.v_min:g}, {cfg.v_max:g}) Å³",
                 "lognormal": f"log-normal V ({cfg.mu:g}, {cfg.sigma:g})"}[cfg.sampler]
        res.append((f"{label}: {', '.join(s.name for s in group)}", group))
    return res


def _db_hist(ax, values: np.ndarray | None, hist: dict | None, bins: np.ndarray, label: str,
             transform=None) -> None:
    if values is not None and len(values):
        ax.hist(values, bins=bins, density=True, color="0.78", edgecolor="0.6", label=label)
    elif hist is not None:  # a stats file without per-structure values: draw its own histogram
        counts = np.asarray(hist["counts"], dtype=np.float64)
        e = np.linspace(hist["lo"], hist["hi"], len(counts) + 1)
        x = transform(e) if transform is not None else e
        w = np.diff(x)
        ax.bar(x[:-1], counts / max(counts.sum(), 1) / w, width=w, align="edge", color="0.78", edgecolor="0.6",
               label=label)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, metadata={"Software": None})


def _fig1(sampled: list[Sampled], db: Database, out: Path, n_label: str) -> None:
    from matplotlib.figure import Figure

    vmax = max([float(np.max(s.volume)) for s in sampled] + ([float(np.max(db.values["volume"]))]
                                                             if db.values is not None else []))
    vmax = min(vmax, 4 * max(float(np.percentile(s.volume, 99)) for s in sampled)) * 1.05
    bins = np.linspace(0.0, vmax, 37)
    fig = Figure(figsize=(13, 6.4))
    ax, ax2 = fig.subplots(1, 2)
    _db_hist(ax, None if db.values is None else db.values["volume"], db.hist("volume"), bins,
             f"database (n = {db.n})", transform=np.exp)
    fit = db.doc["cell"]["volume"]["lognormal_fit"]
    v = np.linspace(1.0, vmax, 800)
    ax.plot(v, sps.lognorm.pdf(v, fit["sigma"], scale=math.exp(fit["mu"])), "k--", lw=1.6,
            label=f"database log-normal fit (μ = {fit['mu']:.3f}, σ = {fit['sigma']:.3f})")
    for k, (label, group) in enumerate(_groups(sampled)):
        col = _COLOURS[k % len(_COLOURS)]
        vals = np.concatenate([s.volume for s in group])
        ax.hist(vals, bins=bins, density=True, histtype="step", lw=1.6, color=col, label=f"{label} ({n_label})")
        ax2.plot(np.sort(vals), np.arange(1, len(vals) + 1) / len(vals), color=col, lw=1.6, label=label)
        cfg = group[0].strategy.cell
        if cfg.sampler == "uniform-edges":
            ax.plot(v, uniform_edges_volume_pdf(v, cfg.a_min, cfg.a_max), color=col, lw=2.0, ls=":",
                    label=f"analytic f_V, a_n ~ U({cfg.a_min:g}, {cfg.a_max:g}) Å (eqs 1–5)")
            ax2.plot(v, uniform_edges_volume_cdf(v, cfg.a_min, cfg.a_max), color=col, lw=2.0, ls=":",
                     label="analytic F_V (eqs 1–5)")
    if db.values is not None:
        dv = np.sort(db.values["volume"])
        ax2.step(dv, np.arange(1, len(dv) + 1) / len(dv), where="post", color="k", lw=1.6, label="database")
    ax.set(xlabel="cell volume V (Å³)", ylabel="probability density (Å⁻³)", xlim=(0, vmax),
           title="Fig. 1 — cell volume")
    ax2.set(xlabel="cell volume V (Å³)", ylabel="cumulative fraction", xlim=(0, vmax), ylim=(0, 1.01),
            title="cumulative distributions (KS D = largest vertical gap)")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    ax2.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    _save(fig, out)


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
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x57494445,)))  # "WIDE": its own stream
    gen_v = np.array([float(np.prod(sample_cell(rng, cfg)[:3])) for _ in range(count)])
    ln = np.log(db_v)
    return {"a_min": lo, "a_max": hi, "n_database": int(keep.sum()), "n_generated": count,
            "database_lognormal_fit": {"mu": float(ln.mean()), "sigma": float(ln.std())},
            "ks_uniform_edges": ks_samples(gen_v, db_v),
            "ks_lognormal_fit": {"statistic": float(sps.kstest(ln, "norm", args=(ln.mean(), ln.std())).statistic)},
            "_gen": gen_v, "_db": db_v}


def _fig1_wide(wide: dict, db: Database, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.6))
    ax = fig.subplots()
    bins = np.linspace(math.log(wide["a_min"] ** 3), math.log(wide["a_max"] ** 3), 61)
    ax.hist(np.log(wide["_db"]), bins=bins, density=True, color="0.78", edgecolor="0.6",
            label=f"database, {wide['a_min']:g} ≤ a_n ≤ {wide['a_max']:g} Å (n = {wide['n_database']})")
    fit = wide["database_lognormal_fit"]
    x = np.linspace(bins[0], bins[-1], 600)
    ax.plot(x, sps.norm.pdf(x, fit["mu"], fit["sigma"]), "k--", lw=1.6,
            label=f"database log-normal fit (μ = {fit['mu']:.3f}, σ = {fit['sigma']:.3f})")
    ax.hist(np.log(wide["_gen"]), bins=bins, density=True, histtype="step", lw=1.6, color=_COLOURS[2],
            label=f"a_n ~ U({wide['a_min']:g}, {wide['a_max']:g}) Å (n = {wide['n_generated']})")
    c, f, _ = uniform_edges_lnv_pdf(wide["a_min"], wide["a_max"])
    ax.plot(c, f, color=_COLOURS[2], lw=2.0, ls=":", label="analytic f_lnV (eqs 1–5)")
    ticks = [100, 1000, 10000, 100000]
    ax.set_xticks([math.log(t) for t in ticks], [f"{t:,}" for t in ticks])
    ax.set(xlabel="cell volume V (Å³, log scale)", ylabel="probability density per ln V",
           title=f"Fig. 1 (right) — edges up to {wide['a_max']:g} Å, database {db.path.stem}")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    _save(fig, out)


def _fig2(sampled: list[Sampled], db: Database, out: Path, n_label: str) -> None:
    from matplotlib.figure import Figure

    all_e = np.concatenate([s.edges for s in sampled])
    a3 = np.concatenate([all_e[:, 2], db.values["largest_edge"] if db.values is not None else []])
    lo, hi = math.floor(float(np.min(a3))), math.ceil(float(np.max(a3)))
    specs = [("largest_edge", "largest edge a3 (Å)", np.arange(lo, hi + 0.25, 0.25), lambda e: e[:, 2]),
             ("ratio_a3_a2", "a3/a2", np.arange(1.0, 2.55, 0.05), lambda e: e[:, 2] / e[:, 1]),
             ("ratio_a2_a1", "a2/a1", np.arange(1.0, 2.55, 0.05), lambda e: e[:, 1] / e[:, 0])]
    fig = Figure(figsize=(15, 5.6))
    axes = fig.subplots(1, 3)
    for ax, (key, xlabel, bins, fn) in zip(axes, specs):
        _db_hist(ax, None if db.values is None else db.values[key], db.hist(key), bins, f"database (n = {db.n})")
        for k, (label, group) in enumerate(_groups(sampled)):
            vals = np.concatenate([fn(s.edges) for s in group])
            ax.hist(vals, bins=bins, density=True, histtype="step", lw=1.6, color=_COLOURS[k % len(_COLOURS)],
                    label=f"{label} ({n_label})")
        if key.startswith("ratio"):
            fit = db.doc["cell"]["edge_ratios"]["a2_a1" if key == "ratio_a2_a1" else "a3_a2"]["exponential_fit"]
            if fit.get("scale"):
                x = np.linspace(1.0, bins[-1], 400)
                ax.plot(x, sps.expon.pdf(x - 1.0, scale=fit["scale"]), "k--", lw=1.4,
                        label="database: exponential fit of ratio − 1")
                ax.text(0.97, 0.95, f"database fit: ratio − 1 ~ Exp(scale {fit['scale']:.3f})",
                        transform=ax.transAxes, ha="right", va="top", fontsize=8)
        ax.set(xlabel=xlabel, ylabel="probability density", title=f"Fig. 2 — {xlabel}")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    _save(fig, out)


def _fig3(sampled: list[Sampled], db: Database, out: Path, n_label: str) -> None:
    from matplotlib.figure import Figure

    groups = [(label, g) for label, g in _groups(sampled) if g[0].beta]
    fig = Figure(figsize=(5.2 * max(1, len(groups)), 5.2))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(groups))))
    lo, hi = 90.0, max([s.strategy.cell.beta_max for _, g in groups for s in g] + [120.0])
    if db.values is not None and len(db.values["monoclinic_angle"]):
        hi = max(hi, float(np.max(db.values["monoclinic_angle"])))
    bins = np.arange(lo, math.ceil(hi / 2.5) * 2.5 + 1.25, 2.5)  # 2.5° bins; β_max = 125° is an edge
    for ax, (label, group) in zip(axes, groups):
        _db_hist(ax, None if db.values is None else db.values["monoclinic_angle"], db.hist("monoclinic_angle"), bins,
                 f"database (n = {db.n})")
        bmax = group[0].strategy.cell.beta_max
        for flag, col, text in ((False, "#d62728", "generated: s3 ~ U[tan(90° − β_max), 0]"),
                                (True, "#1f77b4", "generated (adjusted): s3 lower bound also −(a_max²/a3² − 1)^½, "
                                                  "eq. 15")):
            vals = np.concatenate([s.beta[flag] for s in group])
            ax.hist(vals, bins=bins, density=True, histtype="step", lw=1.7, color=col, label=f"{text} ({n_label})")
        ax.set(xlabel="monoclinic angle β (°)", ylabel="probability density",
               title=f"Fig. 3 — {label.split(':')[0]}, β_max = {bmax:g}°")
        ax.text(0.97, 0.95, "strategies: " + ", ".join(s.name for s in group), transform=ax.transAxes, ha="right",
                va="top", fontsize=8, color="0.25")
        ax.set_ylim(top=ax.get_ylim()[1] * 1.12)
    if groups:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.16, 1, 1))
    else:
        axes[0].text(0.5, 0.5, "no monoclinic strategy", ha="center", transform=axes[0].transAxes)
    _save(fig, out)


def _rebin(density: Sequence[float], x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(density, dtype=np.float64)
    n = len(d) // k * k
    return x[:n].reshape(-1, k).mean(axis=1), d[:n].reshape(-1, k).mean(axis=1)


def _fig4(sampled: list[Sampled], db: Database, out: Path) -> None:
    from matplotlib.figure import Figure

    dist = db.doc["distances"]
    w = float(dist["width"])
    k = max(1, int(round(0.06 / w)))  # drawn on 0.06 Å bins (the stored 0.02 Å bins averaged in threes)
    x = np.arange(len(dist["all_atoms"]["density"] if dist.get("all_atoms") else [])) * w + dist["lo"] + w / 2
    fig = Figure(figsize=(13, 9.4))
    axes = fig.subplots(2, 2)
    styles = {"molecules": "-", "random": "--", "random-equal": ":"}
    colour = {s.name: _COLOURS[j % len(_COLOURS)] for j, (_, g) in enumerate(_groups(sampled)) for s in g}
    for col, (sub, title) in enumerate((("all_atoms", "all atom pairs"), ("non_h", "non-H pairs"))):
        for row, xmax in enumerate((float(dist["hi"]), SHORT_RANGE + 0.2)):
            ax = axes[row, col]
            blk = dist.get(sub)
            if blk and blk.get("density"):
                xs, dens = _rebin(blk["density"], x, k)
                ax.fill_between(xs, dens, color="0.8", step="mid",
                                label=f"database (n = {blk['n_structures']} structures)")
                ax.plot(xs, dens, color="0.4", lw=0.8, drawstyle="steps-mid")
            for s in sampled:
                g = s.distances.get(sub)
                if g and g.get("density"):
                    xs, dens = _rebin(g["density"], x, k)
                    ax.plot(xs, dens, color=colour[s.name], lw=1.5,
                            ls=styles.get(s.strategy.fill.filler, "-"),
                            label=f"{s.name} ({s.strategy.fill.filler} filler, n = {g['n_structures']})")
            if row == 1:
                curves = [b for b in [blk] + [s.distances.get(sub) for s in sampled] if b and b.get("density")]
                tops = [float(np.max(d[xs < xmax])) for xs, d in (_rebin(b["density"], x, k) for b in curves)]
                if tops and max(tops) > 0:
                    ax.set_ylim(0, max(tops) * 1.15)
            ax.set(xlabel="interatomic distance (Å)", ylabel="probability density (Å⁻¹; 0–6 Å has unit area)",
                   xlim=(0, xmax), title=f"Fig. 4 — interatomic distances, {title}" + (" (0–3 Å)" if row else ""))
            ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    _save(fig, out)


# ------------------------------------------------------------------------------------------------- report

def _fmt(ks: dict | None) -> str:
    if not ks or ks.get("statistic") is None:
        return "–"
    p = ks["pvalue"]
    return f"{ks['statistic']:.3f} ({p:.1e})" if p < 1e-3 else f"{ks['statistic']:.3f} ({p:.3f})"


def _table(strategies: dict, keys: list[str]) -> list[str]:
    keys = [k for k in keys if any(k in s["ks"] for s in strategies.values())]
    lines = ["| strategy | cells | filler | " + " | ".join(QUANTITIES[k][0] for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, s in strategies.items():
        lines.append(f"| {name} | {s['cell_sampler']} | {s['filler']} | "
                     + " | ".join(_fmt(s["ks"].get(k)) for k in keys) + " |")
    return lines


def _markdown(doc: dict) -> str:
    src, strategies = doc["database"], doc["strategies"]
    lines = [
        "# Generated vs database distributions",
        "",
        f"Database: `{src['file']}` — {src['n_structures']} structures, selection `{src['selection']}` "
        f"({src['rule']}); derived from `{src['source_dir']}` ({src['n_files']} files). "
        f"Generated: structures 0–{doc['count'] - 1} of each strategy, root seed {doc['seed']}"
        f" (distances from the first {doc['distance_count']}).",
        "",
        f"Command: `{doc['command']}`",
        "",
        "Entries: two-sample Kolmogorov–Smirnov statistic D (p-value) of the generated distribution against the "
        "database; smaller D = closer. A p-value tests \"same distribution\": with thousands of generated structures "
        "a small D can still be significant, and with a small database a large D can still have a moderate p.",
        "",
        "## Cells (Figs 1–3)",
        "",
        ("Exact two-sample tests on the database's per-structure values (`values` in the stats file). "
         if src["per_structure_values"] else
         "Binned KS on the stats file's histograms (the file has no per-structure `values`). ")
        + "β adjusted / unadjusted: the same cells redrawn from each sample's cell stream with the eq. 15 s3 bound "
          "on / off (the strategies' own cells are the `adjusted_s3` ones).",
        "",
        *_table(strategies, CELL_KEYS),
        "",
        "## Interatomic distances (Fig. 4)",
        "",
        "The database side is a histogram (0.02 Å bins), so D is taken between the binned CDFs; p uses the numbers "
        "of structures as sample sizes (pairs within a structure are not independent), so it is indicative only. "
        "0–3 Å: the distances below 3 Å alone (each curve renormalised there), where the bond peak and the trough "
        "after it are; over 0–6 Å the r² growth of the pair count dominates every CDF.",
        "",
        *_table(strategies, DIST_KEYS),
        "",
        "## Closest to the database (smallest D) per quantity",
        "",
    ]
    for k in CELL_KEYS + DIST_KEYS:
        ranked = sorted(((s["ks"][k]["statistic"], n) for n, s in strategies.items()
                         if s["ks"].get(k, {}).get("statistic") is not None))
        if ranked:
            lines.append(f"* {QUANTITIES[k][0]}: " + " < ".join(f"{n} ({d:.3f})" for d, n in ranked))
    if doc.get("analytic_fv"):
        lines += ["", "## Analytic f_V (eqs 1–5) against the generated uniform-edges volumes (one-sample KS)", ""]
        for name, a in doc["analytic_fv"].items():
            lines.append(f"* {name}: a_n ~ U({a['a_min']:g}, {a['a_max']:g}) Å, ∫ f_V dV = {a['integral']:.6f}, "
                         f"D = {a['ks_statistic']:.4f}, p = {a['ks_pvalue']:.3f} (n = {a['n']})")
    if doc.get("wide_volume"):
        w = doc["wide_volume"]
        ks = w["ks_uniform_edges"]
        lines += ["", f"## Fig. 1 (right): edges up to {w['a_max']:g} Å", "",
                  f"Database `{w['database']}` cells with {w['a_min']:g} ≤ a_n ≤ {w['a_max']:g} Å: n = {w['n_database']}, "
                  f"log-normal fit μ = {w['database_lognormal_fit']['mu']:.3f}, σ = {w['database_lognormal_fit']['sigma']:.3f} "
                  f"(KS D of ln V against it {w['ks_lognormal_fit']['statistic']:.3f}); a_n ~ U({w['a_min']:g}, "
                  f"{w['a_max']:g}) Å against the database: D = {ks['statistic']:.3f} (p = {ks['pvalue']:.2g})."]
    fit = doc["database"]["lognormal_fit"]
    lines += ["", f"Database log-normal fit: μ = {fit['mu']:.4f}, σ = {fit['sigma']:.4f} "
                  f"(KS of the database against its own fit: D = {fit.get('ks_statistic', float('nan')):.3f}, "
                  f"p = {fit.get('ks_pvalue', float('nan')):.3f}, optimistic as μ, σ come from the same data). "
                  "Generated medians and ln V moments per strategy are in compare.json (`summary`).",
              "", "Figures: " + ", ".join(f"[{f}]({f})" for f in doc["figures"]), ""]
    return "\n".join(lines)


def compare(strategies: Sequence[str], stats_file: str | Path, count: int, seed: int, out: str | Path,
            distance_count: int | None = None, progress: bool | None = None, command: str | None = None,
            wide_stats: str | Path | None = None) -> dict:
    """Generate, test and plot; writes DIR/{fig1..fig4}.png, compare.json, compare.md and returns the JSON doc.
    With `wide_stats` (e.g. cod-all) also Fig. 1's right panel: edges up to 50 Å against that database."""
    if count < 2:
        raise ValueError(f"--count must be at least 2, got {count}")
    if distance_count is not None and distance_count < 1:
        raise ValueError(f"--distance-count must be at least 1, got {distance_count}")
    if not strategies:
        raise ValueError("give at least one --strategy")
    if len(set(strategies)) != len(strategies):
        raise ValueError(f"a strategy is named twice: {', '.join(strategies)}")
    strats = [load_strategy(s) for s in strategies]
    names = [s.name for s in strats]
    if len(set(names)) != len(names):
        raise ValueError(f"two strategies have the same name: {', '.join(names)}")
    db = load_database(stats_file)
    db_wide = load_database(wide_stats) if wide_stats is not None else None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    sampled = [sample_strategy(s, seed, count, distance_count, progress) for s in strats]
    n_label = f"n = {count} per strategy"
    figures = ["fig1_volume.png", "fig2_edges.png", "fig3_monoclinic.png", "fig4_distances.png"]
    _fig1(sampled, db, out / figures[0], n_label)
    _fig2(sampled, db, out / figures[1], n_label)
    _fig3(sampled, db, out / figures[2], n_label)
    _fig4(sampled, db, out / figures[3])
    wide = None
    if db_wide is not None:
        wide = wide_volume(db_wide, count, seed)
        figures.append("fig1b_volume_wide.png")
        _fig1_wide(wide, db_wide, out / figures[-1])

    der = db.doc.get("derivation", {})
    fit = db.doc["cell"]["volume"]["lognormal_fit"]
    doc = {
        "schema": SCHEMA, "count": count, "seed": seed, "rules": RULES, "figures": figures,
        "distance_count": count if distance_count is None else min(count, distance_count),
        "command": command or "",
        "database": {"file": db.path.name, "sha256": hashlib.sha256(db.path.read_bytes()).hexdigest(),
                     "n_structures": db.n, "selection": der.get("selection"), "rule": der.get("rule"),
                     "source_dir": der.get("source_dir"), "n_files": der.get("n_files"),
                     "per_structure_values": db.values is not None,
                     "lognormal_fit": {k: fit.get(k) for k in ("mu", "sigma", "ks_statistic", "ks_pvalue")}},
        "strategies": {},
        "analytic_fv": {},
    }
    if wide is not None:
        doc["wide_volume"] = {"database": db_wide.path.name, **{k: v for k, v in wide.items() if not k.startswith("_")}}
    for s in sampled:
        cfg = s.strategy.cell
        doc["strategies"][s.name] = {
            "strategy_id": str(s.strategy.strategy_id), "cell_sampler": cfg.sampler, "filler": s.strategy.fill.filler,
            "adjusted_s3": cfg.adjusted_s3, "n": count, "n_distances": s.n_distance,
            "ks": _ks_all(s, db),
            "summary": {"volume_median": float(np.median(s.volume)),
                        "largest_edge_median": float(np.median(s.edges[:, 2])),
                        "ln_v_mean": float(np.mean(np.log(s.volume))), "ln_v_std": float(np.std(np.log(s.volume)))},
        }
        if cfg.sampler == "uniform-edges":
            c, f, h = uniform_edges_lnv_pdf(cfg.a_min, cfg.a_max)
            ks = sps.kstest(s.volume, lambda v, a=cfg.a_min, b=cfg.a_max: uniform_edges_volume_cdf(v, a, b))
            doc["analytic_fv"][s.name] = {"a_min": cfg.a_min, "a_max": cfg.a_max, "integral": float(np.sum(f) * h),
                                          "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
                                          "n": len(s.volume)}
    doc = dbstats._r(doc)
    dbstats.write_json(doc, out / "compare.json")
    (out / "compare.md").write_text(_markdown(doc), encoding="utf-8")
    return doc


@click.command("compare")
@click.option("--strategy", "strategies", multiple=True, required=True,
              help="built-in strategy name or .toml path; repeat for several")
@click.option("--stats", "stats_file", required=True,
              help="stats file of the database (`phaseforge-build stats`): a path or a committed name, "
                   "e.g. cod-p21c-small")
@click.option("--count", type=int, default=1000, show_default=True, help="structures per strategy")
@click.option("--seed", type=int, default=0, show_default=True, help="root seed")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="output folder")
@click.option("--distance-count", type=int, default=None,
              help="structures per strategy for the distance curves [default: all --count]")
@click.option("--wide-stats", default=None,
              help="also Fig. 1 right: a_n ~ U(4, 50 Å) against this stats file's cells (e.g. cod-all)")
def compare_command(strategies: tuple[str, ...], stats_file: str, count: int, seed: int, out: Path,
                    distance_count: int | None, wide_stats: str | None) -> None:
    """Generated vs database distributions: the paper's Figs 1–4 as PNGs, KS tests in compare.json/.md."""
    cmd = " ".join(["phaseforge-build compare", *[f"--strategy {s}" for s in strategies], f"--stats {stats_file}",
                    f"--count {count}", f"--seed {seed}", f"--out {out}"]
                   + ([f"--distance-count {distance_count}"] if distance_count is not None else [])
                   + ([f"--wide-stats {wide_stats}"] if wide_stats is not None else []))
    try:
        doc = compare(strategies, stats_file, count, seed, out, distance_count, command=cmd, wide_stats=wide_stats)
    except ValueError as exc:
        fail(str(exc))
    for name, s in doc["strategies"].items():
        ks = s["ks"]
        click.echo(f"{name}: D volume {_fmt(ks['volume'])}, distances {_fmt(ks['distances_all_atoms'])}")
    click.echo(f"wrote {out}/compare.json, compare.md and {len(doc['figures'])} figures")
