"""Database statistics from a folder of CIFs: the priors the generator reads (paper §3.2–3.5, Figs 1–4, Table S1).

`phaseforge-build stats --cifs DIR [--select NAME] [--out FILE]` reads every `*.cif` in DIR (sorted by name) with
gemmi, keeps the structures a *selection* admits, and writes one JSON file (sorted keys, no timestamps) with

* the log-normal fit of the cell volume V (maximum likelihood: μ = mean ln V, σ = std ln V with ddof 0) and a
  Kolmogorov–Smirnov test against that fit (the p-value is optimistic, as μ and σ come from the same data);
* the largest edge a3 and the sorted-edge ratios a2/a1, a3/a2 (a1 ≤ a2 ≤ a3), with an exponential fit of
  ratio − 1 (maximum likelihood: scale = mean(ratio − 1)) and its KS test (Fig. 2); the monoclinic angle (Fig. 3);
* element frequencies of non-H atoms in general positions, on inversion centres and on other special positions
  (Table S1); the hydrogen mole fraction, the volume per non-H atom (Fig. S1), the mean U_iso (Fig. S2);
* how many structures occupy 0, 1 or >1 inversion centres (§3.5), and the interatomic-distance histogram (Fig. 4);
* the raw per-structure values (``values``: volume, sorted edges, monoclinic angle) for exact two-sample tests;
* a ``priors`` block, the contract with the generator (``builder/strategy.py``)::

      "priors": {"elements_general": {"C": f, ...}, "elements_special": {...}, "lognormal_mu": μ,
                 "lognormal_sigma": σ, "v_atom_range": [p5, p95], "x_h_range": [p5, p95]}

Counting rules (also written into every output file):

* Occupancies are CIF (chemical) occupancies. A site is *special* when symmetry images of it lie within
  ``SPECIAL_TOL`` = 0.1 Å of it (images closer than that are one atom); its orbit then has fewer than n atoms.
  It lies *on an inversion centre* when an operation with rotation −1 maps it within ``SPECIAL_TOL`` of itself.
* Element tables count asymmetric-unit sites weighted by occupancy (the generator draws one element per
  asymmetric-unit site). General = site multiplicity 1 (orbit of n atoms); special = inversion-centre sites of
  centrosymmetric groups. Sites on other special positions (mirrors, axes) are tabulated apart.
  H and D are excluded; fractions are of non-H atoms and sum to 1.
* Cell contents are occupancy-weighted atoms in the unit cell: x_H = (H + D) / all atoms;
  V_atom = V / non-H atoms. ``x_h_range`` is the 5th–95th percentile of x_H over structures that contain H;
  ``v_atom_range`` the 5th–95th percentile of V_atom.
* Compound class from the atoms alone: *molecular* = contains C and H (or D); organic = molecular without
  metals (gemmi's ``Element.is_metal``), metal-organic = molecular with a metal, inorganic = everything else.
* Distances: every pair of atoms 0–``DIST_MAX`` Å apart in the crystal (symmetry images and neighbouring cells
  included), each unordered pair counted from both ends, weighted by the product of occupancies; pairs of
  alternative disorder parts (different non-zero disorder groups, or one negative group across symmetry
  images) are left out. Bin width ``DIST_BIN`` = 0.02 Å. The database curve averages over structures the
  neighbour count per atom and bin (every structure weighs the same), and is also given as a unit-area density.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import click
import gemmi
import numpy as np
from scipy import stats as sps

from builder.elements import symbol
from builder.symmetry import SPECIAL_TOL, distinct_positions
from manifests.errors import fail
from manifests.schema import package_version

__all__ = [
    "SCHEMA", "SPECIAL_TOL", "DIST_MAX", "DIST_BIN", "SELECTIONS", "StructureStats", "selection", "cif_files",
    "read_structure", "structure_stats", "collect", "summarise", "distance_summary", "load_priors", "files_sha256",
    "write_json", "stats_command",
]

SCHEMA = "phaseforge.stats/1"
DIST_MAX = 6.0  # Å, upper end of the distance histogram
DIST_BIN = 0.02  # Å, its bin width
_N_DIST = int(round(DIST_MAX / DIST_BIN))
_CHUNK = 2_000_000  # (site, atom, translation) triples per vectorised distance block (~50 MB of float64)

# name -> (rule text, predicate). The rule text is written into every output file.
SELECTIONS: dict[str, tuple[str, Callable[["StructureStats"], bool]]] = {
    "all": ("every readable structure", lambda r: True),
    "molecular": ("molecular structures: the atoms include C and H (D counts as H); any space group",
                  lambda r: r.molecular),
    "p21c-small": ("space group 14 (P2₁/c, P2₁/n, P2₁/a, any setting) with all cell edges ≤ 10 Å",
                   lambda r: r.spacegroup_number == 14 and max(r.cell[:3]) <= 10.0),
    "p21c-large-range": ("space group 14 (any setting) with all cell edges < 20 Å (the small cells included)",
                         lambda r: r.spacegroup_number == 14 and max(r.cell[:3]) < 20.0),
    "p21c-large-only": ("space group 14 (any setting), all cell edges < 20 Å and at least one > 10 Å "
                        "(the paper's Table 2 test range)",
                        lambda r: r.spacegroup_number == 14 and 10.0 < max(r.cell[:3]) < 20.0),
}


@dataclasses.dataclass(frozen=True, eq=False)
class StructureStats:
    """What one CIF contributes. `error` is set (and the numbers left empty) when the file is unusable."""

    name: str  # file name
    error: str | None = None
    selected: bool = False
    spacegroup_number: int = 0
    spacegroup: str = ""  # gemmi's extended H-M symbol of the setting in the file
    crystal_system: str = ""
    centrosymmetric: bool = False
    n_ops: int = 0  # operations in the unit cell (centring included)
    cell: tuple[float, ...] = ()  # a, b, c (Å), α, β, γ (deg)
    volume: float = 0.0  # Å³
    compound_class: str = ""  # organic | metal-organic | inorganic
    molecular: bool = False
    n_sites: int = 0  # asymmetric-unit sites used
    n_sites_skipped: int = 0  # sites without a known element or with occupancy ≤ 0
    cell_repaired: bool = False  # angles the CIF left out were set from the crystal system
    n_atoms_cell: float = 0.0  # occupancy-weighted, H included
    n_h_cell: float = 0.0
    elements_general: dict[str, float] = dataclasses.field(default_factory=dict)  # non-H, per site, occ-weighted
    elements_inversion: dict[str, float] = dataclasses.field(default_factory=dict)
    elements_special_other: dict[str, float] = dataclasses.field(default_factory=dict)
    n_inversion_occupied: int = 0  # distinct inversion-centre positions (orbits) holding an atom
    n_special_sites: int = 0  # asymmetric-unit sites with multiplicity > 1
    uiso_mean: float | None = None  # mean U_iso (Å²) over sites that give one (U_eq from U_ij where only that)
    uiso_mean_non_h: float | None = None
    dist_hist: np.ndarray | None = None  # (_N_DIST,) neighbour counts per unit cell, all atoms
    dist_hist_non_h: np.ndarray | None = None  # the same for non-H pairs only

    @property
    def n_non_h_cell(self) -> float:
        return self.n_atoms_cell - self.n_h_cell

    @property
    def x_h(self) -> float:
        """Hydrogen mole fraction (H + D over all atoms in the cell)."""
        return self.n_h_cell / self.n_atoms_cell if self.n_atoms_cell > 0 else float("nan")

    @property
    def v_atom(self) -> float:
        """Cell volume per non-H atom, Å³."""
        return self.volume / self.n_non_h_cell if self.n_non_h_cell > 0 else float("nan")

    @property
    def edges_sorted(self) -> tuple[float, float, float]:
        a1, a2, a3 = sorted(self.cell[:3])
        return a1, a2, a3

    @property
    def monoclinic_angle(self) -> float | None:
        """The non-90° angle of a monoclinic cell, made obtuse; None for other crystal systems."""
        if self.crystal_system != "monoclinic":
            return None
        ang = max(self.cell[3:], key=lambda x: abs(x - 90.0))
        return 180.0 - ang if ang < 90.0 else ang


def selection(name: str) -> Callable[[StructureStats], bool]:
    """The predicate of a named selection (see SELECTIONS); ValueError for an unknown name."""
    if name not in SELECTIONS:
        raise ValueError(f"unknown selection {name!r}: use one of {', '.join(SELECTIONS)}")
    return SELECTIONS[name][1]


def cif_files(directory: str | Path) -> list[Path]:
    """The `*.cif` files directly in `directory` (any case of the suffix), sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"{directory}: not a directory")
    return sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".cif"), key=lambda p: p.name)


# ---------------------------------------------------------------------------------------------- per structure

@dataclasses.dataclass
class _Sites:
    frac: np.ndarray  # (n, 3) asymmetric-unit sites
    z: np.ndarray  # (n,) atomic numbers (D -> 1)
    occ: np.ndarray
    group: np.ndarray  # disorder group
    uiso: np.ndarray  # nan where not given


def read_structure(path: str | Path) -> gemmi.SmallStructure:
    """gemmi's SmallStructure of a CIF; ValueError with a short reason when it cannot be used.

    Cell angles that the CIF leaves out but the crystal system fixes (orthorhombic and higher) are filled in.
    """
    return _read(path)[0]


def _read(path: str | Path) -> tuple[gemmi.SmallStructure, bool]:
    try:
        st = gemmi.read_small_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError/IndexError on malformed input
        raise ValueError(f"unreadable: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}") from None
    if st.spacegroup is None:
        raise ValueError("no space group")
    repaired = not st.cell.is_crystal() or not st.cell.volume > 0
    if repaired:
        _repair_cell(path, st)
    if len(st.sites) == 0:
        raise ValueError("no atom sites")
    return st, repaired


_FIXED_ANGLES = {"orthorhombic": (90.0, 90.0, 90.0), "tetragonal": (90.0, 90.0, 90.0), "cubic": (90.0, 90.0, 90.0),
                 "hexagonal": (90.0, 90.0, 120.0), "trigonal": (90.0, 90.0, 120.0)}


def _repair_cell(path: str | Path, st: gemmi.SmallStructure) -> None:
    """Some CIFs leave out cell angles that the crystal system fixes (gemmi then gives no cell): fill them in.

    Only for orthorhombic, tetragonal, cubic and hexagonal-axes trigonal/hexagonal groups; ValueError otherwise.
    """
    sg = st.spacegroup
    fixed = _FIXED_ANGLES.get(sg.crystal_system_str())
    if fixed is None or sg.xhm().endswith(":R"):
        raise ValueError("no unit cell")
    block = gemmi.cif.read(str(path)).sole_block()

    def num(tag: str) -> float:
        v = block.find_value(tag)
        return gemmi.cif.as_number(v) if v is not None else float("nan")

    lengths = [num(f"_cell_length_{x}") for x in "abc"]
    angles = [num(f"_cell_angle_{x}") for x in ("alpha", "beta", "gamma")]
    if not all(math.isfinite(v) and v > 0 for v in lengths):
        raise ValueError("no unit cell")
    if any(math.isfinite(g) and abs(g - f) > 0.01 for g, f in zip(angles, fixed)):
        raise ValueError("cell angles disagree with the crystal system")
    st.cell = gemmi.UnitCell(*lengths, *fixed)
    st.setup_cell_images()


def _fraction(text: str) -> float:
    """A coordinate written as a fraction ("1/4", "-3/4"), which gemmi reads as NaN; NaN if not one."""
    t = text.split("(")[0].strip()
    try:
        num, den = t.split("/")
        return float(num) / float(den)
    except ValueError:
        return float("nan")


def _raw_coordinates(path: str | Path) -> dict[str, list[float]]:
    block = gemmi.cif.read(str(path)).sole_block()
    table = block.find("_atom_site_", ["label", "fract_x", "fract_y", "fract_z"])
    return {row.str(0): [_fraction(row[k]) for k in (1, 2, 3)] for row in table}


def _sites(st: gemmi.SmallStructure, path: str | Path) -> tuple[_Sites, int]:
    frac, z, occ, group, uiso, skipped = [], [], [], [], [], 0
    raw: dict[str, list[float]] | None = None
    for s in st.sites:
        zi = s.element.atomic_number
        x = s.fract.tolist()
        if not all(math.isfinite(v) for v in x):
            raw = raw if raw is not None else _raw_coordinates(path)
            x = [v if math.isfinite(v) else w for v, w in zip(x, raw.get(s.label, [float("nan")] * 3))]
        if zi == 0 or not s.occ > 0 or not all(math.isfinite(v) for v in x):
            skipped += 1
            continue
        frac.append(x)
        z.append(zi)
        occ.append(min(float(s.occ), 1.0))
        group.append(int(s.disorder_group))
        if s.u_iso > 0:
            uiso.append(float(s.u_iso))
        elif s.aniso.nonzero():
            uiso.append(float(st.cell.calculate_u_eq(s.aniso)))
        else:
            uiso.append(float("nan"))
    arr = _Sites(np.array(frac, dtype=np.float64).reshape(-1, 3), np.array(z, dtype=np.int64),
                 np.array(occ), np.array(group, dtype=np.int64), np.array(uiso))
    return arr, skipped


def _ops(sg: gemmi.SpaceGroup) -> tuple[np.ndarray, np.ndarray]:
    ops = list(sg.operations())
    rot = np.array([np.array(op.rot, dtype=np.float64) / gemmi.Op.DEN for op in ops])
    tran = np.array([np.array(op.tran, dtype=np.float64) / gemmi.Op.DEN for op in ops])
    return rot, tran


def _min_image(d: np.ndarray) -> np.ndarray:
    return d - np.round(d)


def _orbits(sites: _Sites, rot: np.ndarray, tran: np.ndarray, orth: np.ndarray
            ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per site: its distinct images in [0, 1)³, the operation index of each, and whether it is on -1."""
    inv = np.all(np.isclose(rot, -np.eye(3)), axis=(1, 2))
    images, op_idx, on_inv = [], [], np.zeros(len(sites.z), dtype=bool)
    for i, x in enumerate(sites.frac):
        y = np.einsum("nij,j->ni", rot, x) + tran
        near = np.linalg.norm(_min_image(y - x) @ orth.T, axis=1) < SPECIAL_TOL
        on_inv[i] = bool(np.any(near & inv))
        keep: list[int] = []
        for k in range(len(y)):
            if not keep or np.all(np.linalg.norm(_min_image(y[keep] - y[k]) @ orth.T, axis=1) >= SPECIAL_TOL):
                keep.append(k)
        images.append(y[keep] - np.floor(y[keep]))
        op_idx.append(np.array(keep, dtype=np.int64))
    return images, op_idx, on_inv


def _distance_hists(sites: _Sites, images: list[np.ndarray], op_idx: list[np.ndarray], cell: gemmi.UnitCell,
                    orth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour-count histograms per unit cell (all atoms; non-H only) over 0..DIST_MAX Å."""
    site_of = np.concatenate([np.full(len(im), i) for i, im in enumerate(images)])
    op_of = np.concatenate(op_idx)
    xyz = np.concatenate(images)
    rec = np.array(cell.reciprocal().parameters[:3])  # |a*|, |b*|, |c*|
    n = np.floor(DIST_MAX * rec + 0.5).astype(int)
    trans = np.array(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij")).reshape(3, -1).T
    edges = np.linspace(0.0, DIST_MAX, _N_DIST + 1)
    h_all, h_heavy = np.zeros(_N_DIST), np.zeros(_N_DIST)
    mult = np.array([len(im) for im in images], dtype=np.float64)
    occ_q, grp_q, z_q = sites.occ[site_of], sites.group[site_of], sites.z[site_of]
    step = max(1, _CHUNK // max(1, len(xyz) * len(trans)))
    for start in range(0, len(images), step):
        idx = np.arange(start, min(start + step, len(images)))
        x = sites.frac[idx]  # the identity image of each site in this block
        d = _min_image(xyz[None, :, :] - x[:, None, :])  # (s, N, 3)
        r = np.linalg.norm((d[:, :, None, :] + trans[None, None, :, :]) @ orth.T, axis=-1)  # (s, N, T)
        gi, gq = sites.group[idx][:, None], grp_q[None, :]
        alt = ((gi != 0) & (gq != 0) & (gi != gq)) | ((gi < 0) & (gi == gq) & (op_of[None, :] != 0))
        w = (mult[idx] * sites.occ[idx])[:, None] * occ_q[None, :] * ~alt  # (s, N)
        ok = (r >= SPECIAL_TOL) & (r < DIST_MAX)
        s_i, q_i, _ = np.nonzero(ok)
        ww = w[s_i, q_i]
        h_all += np.histogram(r[ok], bins=edges, weights=ww)[0]
        heavy = (sites.z[idx][s_i] != 1) & (z_q[q_i] != 1)
        h_heavy += np.histogram(r[ok][heavy], bins=edges, weights=ww[heavy])[0]
    return h_all, h_heavy


def _element_counts(z: np.ndarray, occ: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for zi, oi in zip(z[mask], occ[mask]):
        if zi != 1:
            out[symbol(zi)] = out.get(symbol(zi), 0.0) + float(oi)
    return out


def _mean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def _record(path: Path, predicate: Callable[[StructureStats], bool]) -> StructureStats:
    st, repaired = _read(path)
    sites, skipped = _sites(st, path)
    return _analyse(path.name, st.cell, st.spacegroup, sites, predicate, skipped=skipped, repaired=repaired)


def structure_stats(name: str, cell: Sequence[float], spacegroup: str | gemmi.SpaceGroup, frac: np.ndarray,
                    z: np.ndarray, occ: np.ndarray, uiso: np.ndarray | None = None) -> StructureStats:
    """The record of a structure given as arrays (e.g. a generated one), computed by the same code as a CIF's.

    `occ` is the chemical (CIF) occupancy of each asymmetric-unit site (1 for a whole atom, also on a special
    position); no disorder groups. ValueError when no site is usable.
    """
    sg = spacegroup if isinstance(spacegroup, gemmi.SpaceGroup) else gemmi.SpaceGroup(spacegroup)
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    z = np.asarray(z, dtype=np.int64)
    occ = np.minimum(np.asarray(occ, dtype=np.float64), 1.0)
    u = np.full(len(z), np.nan) if uiso is None else np.asarray(uiso, dtype=np.float64)
    keep = (z > 0) & (occ > 0) & np.all(np.isfinite(frac), axis=1)
    sites = _Sites(frac[keep], z[keep], occ[keep], np.zeros(int(keep.sum()), dtype=np.int64), u[keep])
    return _analyse(name, gemmi.UnitCell(*map(float, cell)), sg, sites, lambda r: True,
                    skipped=int((~keep).sum()))


def _analyse(name: str, c: gemmi.UnitCell, sg: gemmi.SpaceGroup, sites: _Sites,
             predicate: Callable[[StructureStats], bool], skipped: int = 0, repaired: bool = False
             ) -> StructureStats:
    if len(sites.z) == 0:
        raise ValueError("no usable atom sites (unknown elements or zero occupancy)")
    present = {int(v) for v in sites.z}
    has_metal = any(gemmi.Element(int(v)).is_metal for v in present)
    molecular = 6 in present and 1 in present
    rec = StructureStats(
        name=name, spacegroup_number=sg.number, spacegroup=sg.xhm(), crystal_system=sg.crystal_system_str(),
        centrosymmetric=sg.is_centrosymmetric(), n_ops=len(sg.operations()),
        cell=(c.a, c.b, c.c, c.alpha, c.beta, c.gamma), volume=c.volume, molecular=molecular,
        compound_class=("metal-organic" if has_metal else "organic") if molecular else "inorganic",
        n_sites=len(sites.z), n_sites_skipped=skipped, cell_repaired=repaired,
    )
    if not predicate(rec):
        return rec
    orth = np.array(c.orth.mat.tolist())
    rot, tran = _ops(sg)
    images, op_idx, on_inv = _orbits(sites, rot, tran, orth)
    k = np.array([len(im) for im in images], dtype=np.float64)
    general = k == len(rot)
    inversion = on_inv & sg.is_centrosymmetric()
    h_all, h_heavy = _distance_hists(sites, images, op_idx, c, orth)
    heavy = sites.z != 1
    return dataclasses.replace(
        rec, selected=True,
        n_atoms_cell=float((k * sites.occ).sum()), n_h_cell=float((k * sites.occ)[~heavy].sum()),
        elements_general=_element_counts(sites.z, sites.occ, general),
        elements_inversion=_element_counts(sites.z, sites.occ, inversion),
        elements_special_other=_element_counts(sites.z, sites.occ, ~general & ~inversion),
        n_inversion_occupied=distinct_positions(rot, tran, orth, sites.frac[np.flatnonzero(inversion)]),
        n_special_sites=int((~general).sum()),
        uiso_mean=_mean(sites.uiso), uiso_mean_non_h=_mean(sites.uiso[heavy]),
        dist_hist=h_all, dist_hist_non_h=h_heavy,
    )


def collect(cif_paths: Iterable[str | Path], select: str | Callable[[StructureStats], bool] = "all",
            progress: bool | None = None) -> list[StructureStats]:
    """One record per CIF, in the order given. Unusable files get a record with `error` set (never fatal);
    files the selection rejects get `selected=False` and only their cheap fields (cell, group, class)."""
    predicate = selection(select) if isinstance(select, str) else select
    paths = [Path(p) for p in cif_paths]
    out = []
    from tqdm import tqdm  # imported here: only the CLI path needs it
    for p in tqdm(paths, desc="stats", unit="cif", disable=None if progress is None else not progress):
        try:
            out.append(_record(p, predicate))
        except ValueError as exc:
            out.append(StructureStats(name=p.name, error=str(exc)))
        except (RuntimeError, IndexError, MemoryError) as exc:  # gemmi/numpy trouble with one file
            out.append(StructureStats(name=p.name, error=f"failed: {type(exc).__name__}: {exc}"[:160]))
    return out


# ------------------------------------------------------------------------------------------------- summary

def _r(x: object) -> object:
    """Round floats to 6 significant digits, recursively; NaN/inf become None."""
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, dict):
        return {str(k): _r(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_r(v) for v in x]
    return x


def _summary(v: Sequence[float]) -> dict:
    a = np.asarray([x for x in v if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(a) == 0:
        return {"n": 0}
    p = np.percentile(a, [5, 25, 50, 75, 95])
    return {"n": len(a), "mean": a.mean(), "std": a.std(), "min": a.min(), "p5": p[0], "p25": p[1],
            "median": p[2], "p75": p[3], "p95": p[4], "max": a.max()}


def _hist(v: Sequence[float], lo: float, hi: float, width: float) -> dict:
    a = np.asarray([x for x in v if x is not None and math.isfinite(x)], dtype=np.float64)
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
    return {"summary": _summary(v), "hist": _hist(v, 1.0, 4.0, 0.02), "exponential_fit": fit,
            "fraction_le_1_8": float((v <= 1.8).mean()) if len(v) else None}


def _element_table(dicts: Iterable[dict[str, float]]) -> dict:
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


def _prior_fractions(frac: dict[str, float]) -> dict[str, float]:
    """Rounded to 6 decimals, then the largest entry set so that the rounded values sum to 1."""
    out = {k: round(v, 6) for k, v in frac.items() if round(v, 6) > 0}
    if out:
        top = max(out, key=out.get)
        out[top] = round(1.0 - sum(v for k, v in out.items() if k != top), 6)
    return dict(sorted(out.items()))


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
    return _r(_distances([r for r in records if r.dist_hist is not None]))


def _code_version() -> str:
    return f"phaseforge {package_version()}, {SCHEMA}"


def summarise(records: Sequence[StructureStats], meta: dict) -> dict:
    """The JSON document for `records` (from `collect`). `meta` names the source: keys `source_dir`,
    `selection` (a SELECTIONS name) and optionally `files_sha256`, `command`; they go into `derivation`."""
    sel_name = str(meta.get("selection", "all"))
    bad = [r for r in records if r.error]
    recs = [r for r in records if not r.error and r.selected]
    reasons: dict[str, int] = {}
    for r in bad:
        key = r.error.split(":")[0] if r.error.startswith(("unreadable", "failed")) else r.error
        reasons[key] = reasons.get(key, 0) + 1
    derivation = {
        "source_dir": meta.get("source_dir"), "files_sha256": meta.get("files_sha256"), "command": meta.get("command"),
        "n_files": len(records), "selection": sel_name, "rule": SELECTIONS.get(sel_name, (str(meta.get("rule")),))[0],
        "code_version": _code_version(), "special_tolerance_A": SPECIAL_TOL,
        "counting": ("element tables: asymmetric-unit sites weighted by CIF occupancy, non-H only; general = site "
                     "multiplicity 1; special = on an inversion centre of a centrosymmetric group (images within "
                     f"{SPECIAL_TOL} Å); molecular = atoms include C and H/D; x_H = (H+D)/all atoms in the cell; "
                     "V_atom = V / non-H atoms in the cell; ranges are 5th-95th percentiles (x_H over structures "
                     "with H)"),
    }
    doc: dict = {"schema": SCHEMA, "derivation": {k: v for k, v in derivation.items() if v is not None}}
    doc["counts"] = {
        "files": len(records), "unusable": len(bad), "unusable_reasons": dict(sorted(reasons.items())),
        "usable": len(records) - len(bad), "selected": len(recs),
        "centrosymmetric": sum(r.centrosymmetric for r in recs), "without_h": sum(r.n_h_cell == 0 for r in recs),
        "sites_skipped": sum(r.n_sites_skipped for r in recs),
        "cells_repaired": sum(r.cell_repaired for r in recs),
        "compound_classes": {c: sum(r.compound_class == c for r in recs)
                             for c in ("inorganic", "metal-organic", "organic")},
        "crystal_systems": dict(sorted({s: sum(r.crystal_system == s for r in recs)
                                        for s in {r.crystal_system for r in recs}}.items())),
    }
    if not recs:
        doc["priors"] = None
        return _r(doc)
    vol = np.array([r.volume for r in recs])
    edges = np.array([r.edges_sorted for r in recs])
    mono = [r.monoclinic_angle for r in recs if r.monoclinic_angle is not None]
    lognormal = _lognormal(vol)
    doc["cell"] = {
        "volume": {"lognormal_fit": lognormal, "summary": _summary(vol), "hist_ln_v": _hist(np.log(vol), 3.0, 12.5, 0.05)},
        "largest_edge": {"summary": _summary(edges[:, 2]), "hist": _hist(edges[:, 2], 0.0, 50.0, 0.25)},
        "edge_ratios": {"a2_a1": _ratio(edges[:, 1] / edges[:, 0]), "a3_a2": _ratio(edges[:, 2] / edges[:, 1])},
        "monoclinic_angle": {"rule": "monoclinic cells: the non-90° angle, as the obtuse one (180° - x if acute)",
                             "summary": _summary(mono), "hist": _hist(mono, 90.0, 150.0, 0.5)},
    }
    general = _element_table(r.elements_general for r in recs)
    special = _element_table(r.elements_inversion for r in recs if r.centrosymmetric)
    doc["elements"] = {
        "general": general, "inversion_centre": special,
        "other_special": _element_table(r.elements_special_other for r in recs),
        "special_any": _element_table(_merge(r.elements_inversion, r.elements_special_other) for r in recs),
        "rule": "general: multiplicity 1; inversion_centre: on an inversion centre of a centrosymmetric group (the "
                "priors' elements_special); other_special: multiplicity > 1, not on an inversion centre; "
                "special_any: all multiplicity > 1 sites. Per asymmetric-unit site, occupancy-weighted, non-H",
    }
    x_h = [r.x_h for r in recs if r.n_h_cell > 0]
    v_atom = [r.v_atom for r in recs]
    doc["composition"] = {
        "x_h": {"summary": _summary(x_h), "hist": _hist(x_h, 0.0, 1.0, 0.01), "n_without_h": doc["counts"]["without_h"]},
        "v_atom": {"summary": _summary(v_atom), "hist": _hist(v_atom, 0.0, 60.0, 0.5)},
    }
    u_all, u_heavy = [r.uiso_mean for r in recs], [r.uiso_mean_non_h for r in recs]
    doc["uiso"] = {"rule": "per structure: mean U_iso (Å²) over sites giving one (B converted, U_eq from U_ij)",
                   "all_atoms": {"summary": _summary(u_all), "hist": _hist(u_all, 0.0, 0.2, 0.0025)},
                   "non_h": {"summary": _summary(u_heavy), "hist": _hist(u_heavy, 0.0, 0.2, 0.0025)}}
    doc["special_positions"] = {
        "inversion_centres_occupied": _buckets([r.n_inversion_occupied for r in recs if r.centrosymmetric]),
        "special_sites_any": _buckets([r.n_special_sites for r in recs]),
        "rule": "inversion_centres_occupied: centrosymmetric structures, distinct inversion-centre positions holding "
                "an atom; special_sites_any: all structures, asymmetric-unit sites with multiplicity > 1",
    }
    doc["distances"] = _distances(recs)
    doc["values"] = {
        "rule": "per selected structure, in file-name order: file name, cell volume (Å³), sorted edges a1 ≤ a2 ≤ a3 "
                "(Å), monoclinic angle (obtuse; null when not monoclinic); rounded to 6 significant digits. For "
                "exact two-sample tests against generated structures (`phaseforge-build compare`)",
        "names": [r.name for r in recs], "volume": vol, "edges_sorted": edges,
        "monoclinic_angle": [r.monoclinic_angle for r in recs],
    }
    v_s, x_s = doc["composition"]["v_atom"]["summary"], doc["composition"]["x_h"]["summary"]
    doc["priors"] = {
        "elements_general": _prior_fractions(general["fractions"]),
        "elements_special": _prior_fractions(special["fractions"]),
        "lognormal_mu": lognormal["mu"], "lognormal_sigma": lognormal["sigma"],
        "v_atom_range": [v_s.get("p5"), v_s.get("p95")], "x_h_range": [x_s.get("p5"), x_s.get("p95")],
    }
    return _r(doc)


# ------------------------------------------------------------------------------------------------ files, CLI

def files_sha256(paths: Sequence[Path]) -> str:
    """One sha256 over the sorted (file name, content sha256) pairs: names the exact input set."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(f"{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def _dumps(obj: object, indent: int = 0) -> str:
    """Sorted-key JSON, one key per line, lists of plain values kept on one line (histograms stay readable)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dumps(obj[k], indent + 1)}" for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + _dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def write_json(doc: dict, out: str | Path) -> None:
    """Write `doc` as sorted, indented JSON, atomically (temporary file in the same folder, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_dumps(doc) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a manifest is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_priors(path: str | Path) -> dict:
    """The `priors` block of a stats file, checked; ValueError (one line) when it is missing or malformed."""
    p = Path(path)
    try:
        pri = json.loads(p.read_text(encoding="utf-8"))["priors"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: not a stats file with a 'priors' block ({type(exc).__name__}: {exc}); "
                         "make one with `phaseforge-build stats`") from None
    if not isinstance(pri, dict):
        raise ValueError(f"{p}: 'priors' is empty (no structures were selected)")
    for key in ("elements_general", "elements_special"):
        t = pri.get(key)
        if not isinstance(t, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in t.values()):
            raise ValueError(f"{p}: priors.{key} must map element symbols to fractions ≥ 0")
        if t and abs(sum(t.values()) - 1.0) > 1e-4:
            raise ValueError(f"{p}: priors.{key} sums to {sum(t.values()):.6f}, not 1")
        if "H" in t or "D" in t:
            raise ValueError(f"{p}: priors.{key} must exclude hydrogen")
    for key in ("lognormal_mu", "lognormal_sigma"):
        if not isinstance(pri.get(key), (int, float)):
            raise ValueError(f"{p}: priors.{key} must be a number")
    for key in ("v_atom_range", "x_h_range"):
        v = pri.get(key)
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] <= v[1]):
            raise ValueError(f"{p}: priors.{key} must be [lo, hi] with lo ≤ hi")
    return pri


@click.command("stats")
@click.option("--cifs", "cifs", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="folder of CIF files (read in sorted order; not recursive)")
@click.option("--select", "select", default="all", show_default=True, type=click.Choice(list(SELECTIONS)),
              help="which structures to use (rules: builder.stats.SELECTIONS, manifests/stats/README.md)")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="output JSON [default: manifests/stats/<DIR name>-<select>.json]")
def stats_command(cifs: Path, select: str, out: Path | None) -> None:
    """Database statistics and generator priors from a folder of CIFs."""
    try:
        paths = cif_files(cifs)
    except ValueError as exc:
        fail(str(exc))
    if not paths:
        fail(f"{cifs}: no *.cif files")
    out = out or Path("manifests/stats") / f"{cifs.resolve().name}-{select}.json"
    records = collect(paths, select)
    doc = summarise(records, {"source_dir": cifs.resolve().name, "selection": select,
                              "files_sha256": files_sha256(paths),
                              "command": f"phaseforge-build stats --cifs .../{cifs.resolve().name} --select {select} "
                                         f"--out {out.name}"})
    if not doc["counts"]["selected"]:
        fail(f"{cifs}: no usable structure matches --select {select} "
              f"({doc['counts']['unusable']} of {len(paths)} files unusable)")
    write_json(doc, out)
    n, bad = doc["counts"]["selected"], doc["counts"]["unusable"]
    pri = doc["priors"]
    click.echo(f"{out}: {n} of {len(paths)} structures ({bad} unusable); lognormal mu={pri['lognormal_mu']} "
               f"sigma={pri['lognormal_sigma']}; C+N+O general {doc['elements']['general']['cno_share']:.3f}, "
               f"special {doc['elements']['inversion_centre']['cno_share']:.3f}")
