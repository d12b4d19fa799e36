"""CIF ingestion for evaluation: a real P2₁/c structure in the standard setting, as builder's arrays.

`load_structure` reads a small-molecule CIF with the project's one CIF site reader (`builder.cifsites`: block,
space group, cell, sites, occupancy and displacement rules are documented there), accepts space group 14 in any
of its settings, transforms it to its reduced P 1 21/c 1 cell (`builder.setting.standardise`: shortest c along
the glide, shortest a, β obtuse) and returns the asymmetric unit as the arrays that `builder.sf.structure_factors`
takes. A file that cannot be used raises `Unusable` with a short reason instead of crashing. `reflections`
computes |F|, φ and the observed mask.

Conventions on top of the reader's:
  * A site with an unknown element or without coordinates makes the file unusable (its |F| would be wrong).
  * The crystallographic occupancy is the site occupancy divided by the site-symmetry order, counted from the
    P 1 21/c 1 operations, as gemmi's `SmallStructure.change_occupancies_to_crystallographic` does (an image
    closer than `SPECIAL_TOL` Å to the atom itself makes the site special).
  * Sites without a usable U (absent, zero, negative, non-positive U_eq) get `DEFAULT_UISO`; `n_u_fallback`
    counts them, for the evaluation rows.
  * Compound class (paper Fig. 5): `builder.compound.classify` (organic, s-block, d-block, other).
  * n_special (paper Fig. 6): the number of distinct special positions (in P2₁/c: inversion centres) occupied by
    at least one atom; two disordered atoms on the same centre count once.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import gemmi
import numpy as np

from builder.cifsites import DEFAULT_UISO, CifSites, Unusable, load_cif_sites, read_cif_sites
from builder.compound import classify
from builder.reflections import d_spacing, systematic_absences
from builder.setting import STANDARD_SETTING, Standardised, standardise
from builder.sf import SFPlan, amplitudes_phases, sf_plan, structure_factors
from builder.symmetry import SPECIAL_TOL, distinct_positions, images, near_multiplicity, space_group_ops

__all__ = ["STANDARD_SETTING", "SPECIAL_TOL", "DEFAULT_UISO", "Unusable", "Ingested", "load_structure",
           "parse_structure", "reflections"]

# SPECIAL_TOL (builder.symmetry) = 0.1 Å: an atom this close to one of its own images sits on a special position.
# gemmi uses 0.4 Å, which would also halve atoms disordered 0.2-0.4 Å off an inversion centre whose CIF occupancy
# already counts the split; in the 250 COD space-group-14 files 0.01, 0.1 and 0.4 Å find the same special sites.


@dataclasses.dataclass(frozen=True, eq=False)
class Ingested:
    """One structure in the standard P 1 21/c 1 setting (β ≥ 90°): the asymmetric unit as arrays."""

    id: str  # file stem (the COD id for COD files)
    cell6: np.ndarray  # float64 (6,): a, b, c (Å), α, β, γ (deg)
    volume: float  # Å³
    frac: np.ndarray  # float64 (N, 3) fractional coordinates in [0, 1)
    z: np.ndarray  # uint8 (N,) atomic numbers (D -> 1)
    occ: np.ndarray  # float64 (N,) crystallographic occupancy = site occupancy / multiplicity
    uiso: np.ndarray  # float64 (N,) Å²
    site_occ: np.ndarray  # float64 (N,) occupancy as given in the CIF
    multiplicity: np.ndarray  # int64 (N,) site-symmetry order (2 on an inversion centre)
    labels: tuple[str, ...]
    original_setting: str  # gemmi's extended H-M symbol of the file's setting
    transform: str  # x' = transform(x) took the file's coordinates to the standard setting
    compound_class: str  # one of builder.compound.CLASSES
    n_special: int  # distinct special positions occupied
    notes: tuple[str, ...] = ()
    n_u_fallback: int = 0  # sites whose U was absent, zero, negative or not finite (DEFAULT_UISO used)
    space_group: str = STANDARD_SETTING

    @property
    def n_atoms(self) -> int:
        """Sites in the asymmetric unit."""
        return int(len(self.z))

    @property
    def n_h(self) -> int:
        """Hydrogen (and deuterium) sites in the asymmetric unit."""
        return int((self.z == 1).sum())


def load_structure(path: str | os.PathLike) -> Ingested:
    """Read a CIF file and return its structure in the standard P 1 21/c 1 setting.

    Args:
        path: a CIF file; its stem becomes the structure id.

    Returns:
        The ingested structure.

    Raises:
        Unusable: the file is unparsable, has no or a bad cell, no space group or another one than 14, no atoms,
            missing coordinates, unknown elements or occupancies outside 0..1 (reasons: `builder.cifsites`).
    """
    p = Path(path)
    return _ingest(load_cif_sites(p), p.stem)


def parse_structure(data: bytes, name: str) -> Ingested:
    """Like `load_structure`, for the bytes of a CIF (e.g. read from the shipped test-set archive)."""
    return _ingest(read_cif_sites(data, name), name)


def _ingest(cs: CifSites, name: str) -> Ingested:
    sg = cs.spacegroup
    if sg.number != 14:
        raise Unusable("another space group", f"{sg.number} ({sg.xhm()})")
    for reason in ("missing coordinates", "unknown element"):
        bad = [label for label, why in cs.skipped if why == reason]
        if bad:
            raise Unusable(reason, ", ".join(bad[:5]))
    try:
        std = standardise(cs.cell, sg)
    except ValueError as exc:
        raise Unusable("setting transformation failed", str(exc)) from None
    frac = std.frac(cs.frac)
    cell6 = std.cell6
    mult = _multiplicity(cell6, frac)
    _check_expansion(cs, std, frac)
    return Ingested(
        id=name, cell6=cell6, volume=float(gemmi.UnitCell(*cell6).volume), frac=frac, z=cs.z.astype(np.uint8),
        occ=cs.occ / mult, uiso=cs.uiso, site_occ=cs.occ, multiplicity=mult, labels=cs.labels,
        original_setting=sg.xhm(), transform=std.op.triplet(), compound_class=classify(cs.z),
        n_special=_n_special(cell6, frac, mult, cs.occ), notes=cs.notes, n_u_fallback=cs.n_u_fallback,
    )


def _orth(cell6: np.ndarray) -> np.ndarray:
    return np.array(gemmi.UnitCell(*cell6).orth.mat.tolist())


def _cart_dist_mod1(orth: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.linalg.norm((d - np.round(d)) @ orth.T, axis=-1)


def _multiplicity(cell6: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Site-symmetry order: operations of P 1 21/c 1 that map each atom within SPECIAL_TOL Å of itself."""
    ops = space_group_ops(STANDARD_SETTING)
    return near_multiplicity(ops.rot, ops.tran, _orth(cell6), frac, SPECIAL_TOL)


def _n_special(cell6: np.ndarray, frac: np.ndarray, mult: np.ndarray, occ: np.ndarray) -> int:
    """Distinct special positions (orbits) holding at least one atom of non-zero occupancy."""
    ops = space_group_ops(STANDARD_SETTING)
    return distinct_positions(ops.rot, ops.tran, _orth(cell6), frac[(mult > 1) & (occ > 0)], SPECIAL_TOL)


def _check_expansion(cs: CifSites, std: Standardised, frac: np.ndarray) -> None:
    """The transformed P1 expansion of the file must equal the P 1 21/c 1 expansion of the new arrays."""
    m = np.array(std.op.float_seitz())
    ops = space_group_ops(STANDARD_SETTING)
    orth = _orth(std.cell6)
    new_img = images(ops.rot, ops.tran, frac)  # (N, G, 3)
    for g in cs.spacegroup.operations():
        s = np.array(g.float_seitz())
        y = (cs.frac @ s[:3, :3].T + s[:3, 3]) @ m[:3, :3].T + m[:3, 3]  # (N, 3): op(g(x)) for every site
        hit = (_cart_dist_mod1(orth, new_img - y[:, None, :]) <= 1e-3).any(axis=1)
        if not hit.all():
            raise Unusable("setting transformation failed",
                           f"image mismatch for site {int(np.flatnonzero(~hit)[0])} from {cs.spacegroup.xhm()}")


def reflections(ingested: Ingested, hkl: np.ndarray, d_min: float = 1.0,
                plan: SFPlan | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|F| (electrons), φ (radians) and the observed mask of a structure over a reflection set.

    Args:
        ingested: a structure from `load_structure`.
        hkl: (H, 3) Miller indices, e.g. `builder.reflections.phai_hkl()`.
        d_min: resolution limit (Å); reflections with d < d_min are not observed.
        plan: an `sf_plan` for P 1 21/c 1 and `hkl`, to reuse across structures (any thread).

    Returns:
        amp float32 (H,), phase float32 (H,) (0 or π), observed bool (H,): d ≥ d_min, not systematically absent
        and not (000). amp and phase are computed for every row; callers mask them.
    """
    hkl = np.asarray(hkl)
    if plan is None:
        plan = sf_plan(space_group_ops(STANDARD_SETTING), hkl)
    elif plan.ops.name != gemmi.SpaceGroup(STANDARD_SETTING).xhm() or plan.hkl.shape != hkl.shape:
        raise ValueError("plan must be built for P 1 21/c 1 and the same hkl")
    f = structure_factors(plan, ingested.cell6, ingested.frac, ingested.z, ingested.occ, ingested.uiso)
    amp, phase = amplitudes_phases(f, plan.real)
    nonzero = np.any(hkl != 0, axis=1)
    d = np.full(len(hkl), np.inf)
    d[nonzero] = d_spacing(ingested.cell6, hkl[nonzero])
    observed = nonzero & (d >= d_min) & ~systematic_absences(STANDARD_SETTING, hkl)
    return amp, phase, observed
