"""Per-structure records of the database statistics (paper §3.2–3.5, Figs 1–4, Table S1).

`collect(paths, select)` reads each CIF with the one CIF site reader (`builder.cifsites`) and returns one
`StructureStats` per file; `structure_stats` makes the same record from arrays (a generated structure), by the
same code. `builder.stats_summary.summarise` turns records into the stats file; `phaseforge-build stats` is the
command (builder/cli.py). Rules (also written into every stats file, see manifests/stats/README.md):

* Cells: a space-group-14 structure is described in its reduced P 1 21/c 1 cell (`builder.setting.standardise`,
  the cell the network sees in evaluation); every other structure in the file's cell. The P2₁/c selections
  use that cell, with the same size classes as the test sets (`builder.setting.size_class`).
* A site is *special* when symmetry images of it lie within ``SPECIAL_TOL`` = 0.1 Å of it (images closer than
  that are one atom); its orbit then has fewer than n atoms. It lies *on an inversion centre* when an operation
  with rotation −1 maps it within ``SPECIAL_TOL`` of itself.
* Element counts are per asymmetric-unit site, weighted by the CIF occupancy, non-H; general = multiplicity 1,
  inversion = on an inversion centre of a centrosymmetric group, other special = the remaining special sites.
  They are made for every usable structure (the `inversion-all` special table pools all of them); the rest
  (distances, cell contents) only for the selected ones.
* Cell contents are occupancy-weighted atoms in the unit cell; compound class from `builder.compound`.
* Distances: every pair 0–``DIST_MAX`` Å in the crystal (images and neighbouring cells), both ends counted,
  weighted by occupancy products; pairs of alternative disorder parts (different non-zero groups, or one
  negative group across symmetry images) are left out; ``DIST_BIN`` = 0.02 Å bins.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import gemmi
import numpy as np

from builder.cifsites import CifSites, Unusable, load_cif_sites
from builder.compound import classify, is_molecular
from builder.elements import symbol
from builder.setting import size_class, standardise
from builder.symmetry import SPECIAL_TOL, distinct_positions

__all__ = ["SPECIAL_TOL", "DIST_MAX", "DIST_BIN", "SELECTIONS", "StructureStats", "selection", "cif_files",
           "structure_stats", "collect"]

DIST_MAX = 6.0  # Å, upper end of the distance histogram
DIST_BIN = 0.02  # Å, its bin width
N_DIST = int(round(DIST_MAX / DIST_BIN))
_CHUNK = 2_000_000  # (site, atom, translation) triples per vectorised distance block (~50 MB of float64)


def _p21c(*classes: str) -> Callable[["StructureStats"], bool]:
    return lambda r: r.spacegroup_number == 14 and size_class(r.cell) in classes


# name -> (rule text, predicate). The rule text is written into every output file.
SELECTIONS: dict[str, tuple[str, Callable[["StructureStats"], bool]]] = {
    "all": ("every readable structure", lambda r: True),
    "molecular": ("molecular structures: the atoms include C and H (D counts as H); any space group",
                  lambda r: r.molecular),
    "p21c-small": ("space group 14 (any setting) with all edges <= 10 A in the reduced P 1 21/c 1 cell "
                   "(the test set cod-p21c-small)", _p21c("small")),
    "p21c-large-range": ("space group 14 (any setting) with all edges < 20 A in the reduced P 1 21/c 1 cell "
                         "(the small cells included)", _p21c("small", "large")),
    "p21c-large-only": ("space group 14 (any setting), all edges < 20 A and at least one > 10 A in the reduced "
                        "P 1 21/c 1 cell (the paper's Table 2 range; the test set cod-p21c-large)", _p21c("large")),
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
    cell: tuple[float, ...] = ()  # a, b, c (Å), α, β, γ (deg); space group 14: the reduced P 1 21/c 1 cell
    volume: float = 0.0  # Å³
    compound_class: str = ""  # builder.compound.CLASSES
    molecular: bool = False
    n_sites: int = 0  # asymmetric-unit sites used
    n_sites_skipped: int = 0  # sites with an unknown element or without coordinates
    n_u_fallback: int = 0  # sites without a usable U
    cell_repaired: bool = False  # angles the CIF left out were set from the crystal system
    n_atoms_cell: float = 0.0  # occupancy-weighted, H included
    n_h_cell: float = 0.0
    elements_general: dict[str, float] = dataclasses.field(default_factory=dict)  # non-H, per site, occ-weighted
    elements_inversion: dict[str, float] = dataclasses.field(default_factory=dict)
    elements_special_other: dict[str, float] = dataclasses.field(default_factory=dict)
    n_inversion_occupied: int = 0  # distinct inversion-centre positions (orbits) holding an atom
    n_special_sites: int = 0  # asymmetric-unit sites with multiplicity > 1
    uiso_mean: float | None = None  # mean U (Å²) over sites whose file gives one (U_eq from U_ij first)
    uiso_mean_non_h: float | None = None
    dist_hist: np.ndarray | None = None  # (N_DIST,) neighbour counts per unit cell, all atoms
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
        return monoclinic_angle(self.cell) if self.crystal_system == "monoclinic" else None


def monoclinic_angle(cell: Sequence[float]) -> float:
    """The angle of a cell furthest from 90°, made obtuse (the monoclinic angle of a monoclinic cell)."""
    ang = max((float(x) for x in cell[3:6]), key=lambda x: abs(x - 90.0))
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
    edges = np.linspace(0.0, DIST_MAX, N_DIST + 1)
    h_all, h_heavy = np.zeros(N_DIST), np.zeros(N_DIST)
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
    cs: CifSites = load_cif_sites(path)
    sites = _Sites(cs.frac, cs.z, cs.occ, cs.group, np.where(cs.u_given, cs.uiso, np.nan))
    cell = cs.cell
    if cs.spacegroup.number == 14:
        try:
            cell = gemmi.UnitCell(*standardise(cs.cell, cs.spacegroup).cell6)
        except ValueError as exc:
            raise Unusable("setting transformation failed", str(exc)) from None
    return _analyse(path.name, cs.cell, cell, cs.spacegroup, sites, predicate, skipped=len(cs.skipped),
                    repaired=cs.cell_repaired, n_u_fallback=cs.n_u_fallback)


def structure_stats(name: str, cell: Sequence[float], spacegroup: str | gemmi.SpaceGroup, frac: np.ndarray,
                    z: np.ndarray, occ: np.ndarray, uiso: np.ndarray | None = None) -> StructureStats:
    """The record of a structure given as arrays (e.g. a generated one), computed by the same code as a CIF's.

    `occ` is the chemical (CIF) occupancy of each asymmetric-unit site (1 for a whole atom, also on a special
    position); no disorder groups; the cell is used as given. ValueError when no site is usable.
    """
    sg = spacegroup if isinstance(spacegroup, gemmi.SpaceGroup) else gemmi.SpaceGroup(spacegroup)
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    z = np.asarray(z, dtype=np.int64)
    occ = np.minimum(np.asarray(occ, dtype=np.float64), 1.0)
    u = np.full(len(z), np.nan) if uiso is None else np.asarray(uiso, dtype=np.float64)
    keep = (z > 0) & (occ > 0) & np.all(np.isfinite(frac), axis=1)
    sites = _Sites(frac[keep], z[keep], occ[keep], np.zeros(int(keep.sum()), dtype=np.int64), u[keep])
    c = gemmi.UnitCell(*map(float, cell))
    return _analyse(name, c, c, sg, sites, lambda r: True, skipped=int((~keep).sum()))


def _analyse(name: str, c: gemmi.UnitCell, shown: gemmi.UnitCell, sg: gemmi.SpaceGroup, sites: _Sites,
             predicate: Callable[[StructureStats], bool], skipped: int = 0, repaired: bool = False,
             n_u_fallback: int = 0) -> StructureStats:
    """The record: sites are analysed in their own cell `c`; `shown` is the cell reported (same lattice)."""
    if len(sites.z) == 0:
        raise ValueError("no usable atom sites (unknown elements or zero occupancy)")
    orth = np.array(c.orth.mat.tolist())
    rot, tran = _ops(sg)
    images, op_idx, on_inv = _orbits(sites, rot, tran, orth)
    k = np.array([len(im) for im in images], dtype=np.float64)
    general = k == len(rot)
    inversion = on_inv & sg.is_centrosymmetric()
    rec = StructureStats(
        name=name, spacegroup_number=sg.number, spacegroup=sg.xhm(), crystal_system=sg.crystal_system_str(),
        centrosymmetric=sg.is_centrosymmetric(), n_ops=len(sg.operations()),
        cell=tuple(float(v) for v in shown.parameters), volume=c.volume, molecular=is_molecular(sites.z),
        compound_class=classify(sites.z), n_sites=len(sites.z), n_sites_skipped=skipped, cell_repaired=repaired,
        n_u_fallback=n_u_fallback,
        elements_general=_element_counts(sites.z, sites.occ, general),
        elements_inversion=_element_counts(sites.z, sites.occ, inversion),
        elements_special_other=_element_counts(sites.z, sites.occ, ~general & ~inversion),
        n_inversion_occupied=distinct_positions(rot, tran, orth, sites.frac[np.flatnonzero(inversion)]),
        n_special_sites=int((~general).sum()),
    )
    if not predicate(rec):
        return rec
    h_all, h_heavy = _distance_hists(sites, images, op_idx, c, orth)
    heavy = sites.z != 1
    return dataclasses.replace(
        rec, selected=True,
        n_atoms_cell=float((k * sites.occ).sum()), n_h_cell=float((k * sites.occ)[~heavy].sum()),
        uiso_mean=_mean(sites.uiso), uiso_mean_non_h=_mean(sites.uiso[heavy]),
        dist_hist=h_all, dist_hist_non_h=h_heavy,
    )


def collect(cif_paths: Iterable[str | Path], select: str | Callable[[StructureStats], bool] = "all",
            progress: bool | None = None) -> list[StructureStats]:
    """One record per CIF, in the order given. Unusable files get a record with `error` set (never fatal);
    files the selection rejects get `selected=False`: cell, group, class and element counts, no distances."""
    predicate = selection(select) if isinstance(select, str) else select
    paths = [Path(p) for p in cif_paths]
    out = []
    from tqdm import tqdm  # imported here: only the CLI path needs it
    for p in tqdm(paths, desc="stats", unit="cif", disable=None if progress is None else not progress):
        try:
            out.append(_record(p, predicate))
        except Unusable as exc:
            out.append(StructureStats(name=p.name, error=str(exc)))
        except (ValueError, RuntimeError, IndexError, MemoryError) as exc:  # gemmi/numpy trouble with one file
            out.append(StructureStats(name=p.name, error=f"failed: {type(exc).__name__}: {exc}"[:160]))
    return out
