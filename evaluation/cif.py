"""CIF ingestion for evaluation: a real P2₁/c structure in the standard setting, as builder's arrays.

`load_structure` reads a small-molecule CIF with gemmi, accepts space group 14 in any of its settings
(P 1 21/c 1, P 1 21/n 1, P 1 21/a 1, the unique-axis-a and -c settings), transforms it to P 1 21/c 1 with an
obtuse β (gemmi's `basisop`, then `-x,-y,z` when β comes out acute; ecosystem notes §1.2), and returns the
asymmetric unit as the arrays that `builder.sf.structure_factors` takes. A file that cannot be used raises
`Unusable` with a short reason instead of crashing. `reflections` computes |F|, φ and the observed mask.

Conventions:
  * Occupancies are taken as given, H and D included (D counts as H); sites of occupancy 0 (dummy atoms such as
    ring centroids) are left out with a note. The crystallographic occupancy is the
    site occupancy divided by the site-symmetry order, counted from the P 1 21/c 1 operations, as gemmi's
    `SmallStructure.change_occupancies_to_crystallographic` does (an image closer than `SPECIAL_TOL` Å to the
    atom itself makes the site special).
  * U_iso: the equivalent isotropic U of anisotropic parameters (gemmi's `UnitCell.calculate_u_eq`, one third of
    the trace of the Cartesian U) when the site has them, else the CIF's U_iso (gemmi converts B); a site with
    neither (or U_iso = 0, which some COD files write for "not refined") gets `DEFAULT_UISO` and a note.
  * Compound class (paper Fig. 5), by precedence: 'd-block' if any element of groups 3-12 is present (Sc-Zn,
    Y-Cd, Hf-Hg, Rf-Cn; La and Ac count as f-block); else 's-block' if any s-block metal (Li, Na, K, Rb, Cs, Fr,
    Be, Mg, Ca, Sr, Ba, Ra); else 'organic' if carbon is present and every element is in `ORGANIC_ELEMENTS`
    (H, B, C, N, O, F, Si, P, S, Cl, As, Se, Br, Te, I); else 'other': p-block metals and semimetals outside that
    list (Al, Ga, Ge, In, Sn, Sb, Tl, Pb, Bi, Po, At), f-block elements (La-Lu, Ac-Lr) without a d- or s-block
    element, noble gases, and carbon-free compounds of non-metals. The paper reports the three classes only.
  * n_special (paper Fig. 6): the number of distinct special positions (in P2₁/c: inversion centres) occupied by
    at least one atom; two disordered atoms on the same centre count once.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import gemmi
import numpy as np

from builder.elements import atomic_number
from builder.reflections import d_spacing, systematic_absences
from builder.sf import SFPlan, amplitudes_phases, sf_plan, structure_factors
from builder.symmetry import (SPECIAL_TOL, distinct_positions, images, near_multiplicity, space_group_ops,
                              wrap)

__all__ = [
    "STANDARD_SETTING", "SPECIAL_TOL", "DEFAULT_UISO", "ORGANIC_ELEMENTS", "S_BLOCK", "D_BLOCK", "F_BLOCK",
    "CLASSES", "Unusable", "Ingested", "load_structure", "parse_structure", "standardise", "classify",
    "reflections",
]

STANDARD_SETTING = "P 1 21/c 1"
# SPECIAL_TOL (builder.symmetry) = 0.1 Å: an atom this close to one of its own images sits on a special position. gemmi uses
# 0.4 Å, which would also halve atoms disordered 0.2-0.4 Å off an inversion centre whose CIF occupancy already
# counts the split; in the 250 COD space-group-14 files 0.01, 0.1 and 0.4 Å find the same 26 special sites.
DEFAULT_UISO = 0.05  # Å², for sites whose CIF gives no displacement parameter
ORGANIC_ELEMENTS = frozenset({1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 33, 34, 35, 52, 53})
S_BLOCK = frozenset({3, 4, 11, 12, 19, 20, 37, 38, 55, 56, 87, 88})
D_BLOCK = frozenset([*range(21, 31), *range(39, 49), *range(72, 81), *range(104, 113)])
F_BLOCK = frozenset([*range(57, 72), *range(89, 104)])
CLASSES = ("organic", "s-block", "d-block", "other")

_FLIP_BETA = gemmi.Op("-x,-y,z")  # a -> -a, b -> -b: β -> 180° - β, same handedness, group stays P 1 21/c 1


class Unusable(ValueError):
    """A CIF that cannot enter the test set; `reason` is a short category, `detail` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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
    compound_class: str  # one of CLASSES
    n_special: int  # distinct special positions occupied
    notes: tuple[str, ...] = ()
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
        Unusable: the file is unparsable, has no cell, no space group or another one than 14, no atoms, missing
            coordinates or unknown elements.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise Unusable("unreadable", str(exc)) from exc
    return parse_structure(data, p.stem)


def parse_structure(data: bytes, name: str) -> Ingested:
    """Like `load_structure`, for the bytes of a CIF (e.g. read from the shipped test-set archive)."""
    block = _atom_block(data)
    try:
        st = gemmi.make_small_structure_from_block(block)
    except (RuntimeError, ValueError) as exc:
        raise Unusable("unparsable", _short(exc)) from exc
    if block.find_value("_cell_length_a") is None or not st.cell.is_crystal():
        raise Unusable("no cell")
    sg = st.spacegroup
    if sg is None:
        raise Unusable("no space group", st.spacegroup_hm or st.spacegroup_hall or "")
    if sg.number != 14:
        raise Unusable("another space group", f"{sg.number} ({sg.xhm()})")
    sites = [s for s in st.sites if s.occ > 0]  # occupancy 0: dummy sites such as ring centroids
    dropped = len(st.sites) - len(sites)
    if not sites:
        raise Unusable("no atoms")
    frac0 = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites], dtype=np.float64)
    if not np.isfinite(frac0).all():
        bad = [s.label for s, ok in zip(sites, np.isfinite(frac0).all(1)) if not ok]
        raise Unusable("missing coordinates", ", ".join(bad[:5]))
    z = np.array([_z_of(s) for s in sites], dtype=np.uint8)
    uiso, notes = _uiso(st.cell, sites)
    if dropped:
        notes.append(f"{dropped} site(s) with zero occupancy left out")
    site_occ = np.array([s.occ for s in sites], dtype=np.float64)
    cell6, frac, op = standardise(st.cell, sg, frac0)
    mult = _multiplicity(cell6, frac)
    _check_expansion(st.cell, sg, frac0, cell6, frac, op)
    return Ingested(
        id=name, cell6=cell6, volume=float(gemmi.UnitCell(*cell6).volume), frac=frac, z=z, occ=site_occ / mult,
        uiso=uiso, site_occ=site_occ, multiplicity=mult, labels=tuple(s.label for s in sites),
        original_setting=sg.xhm(), transform=op.triplet(), compound_class=classify(z),
        n_special=_n_special(cell6, frac, mult, site_occ), notes=tuple(notes),
    )


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _atom_block(data: bytes) -> gemmi.cif.Block:
    """The first data block that has fractional coordinates (COD files have exactly one block)."""
    try:
        doc = gemmi.cif.read_string(data.decode("utf-8", errors="replace"))
    except (RuntimeError, ValueError) as exc:
        raise Unusable("unparsable", _short(exc)) from exc
    if len(doc) == 0:
        raise Unusable("unparsable", "no data block")
    for block in doc:
        if len(block.find_values("_atom_site_fract_x")) > 0:
            return block
    if any(len(b.find_values("_atom_site_label")) > 0 for b in doc):
        raise Unusable("missing coordinates", "no _atom_site_fract_x")
    raise Unusable("no atoms")


def _z_of(site: gemmi.SmallStructure.Site) -> int:
    try:
        return atomic_number(site.element.name)
    except ValueError as exc:
        raise Unusable("unknown element", f"{site.label} ({site.type_symbol})") from exc


def _uiso(cell: gemmi.UnitCell, sites: list) -> tuple[np.ndarray, list[str]]:
    """U_eq from aniso U where present, else U_iso, else DEFAULT_UISO (with a note)."""
    out = np.empty(len(sites), dtype=np.float64)
    missing = []
    for i, s in enumerate(sites):
        if s.aniso.nonzero():
            out[i] = cell.calculate_u_eq(s.aniso)
        elif s.u_iso != 0.0:  # as given, negative values included
            out[i] = s.u_iso
        else:
            out[i] = DEFAULT_UISO
            missing.append(s.label)
    notes = []
    if missing:
        notes.append(f"U absent or zero for {len(missing)} site(s); U_iso = {DEFAULT_UISO} A^2 assumed")
    return out, notes


def standardise(cell: gemmi.UnitCell, sg: gemmi.SpaceGroup,
                frac: np.ndarray) -> tuple[np.ndarray, np.ndarray, gemmi.Op]:
    """Transform a space-group-14 structure to P 1 21/c 1 with β ≥ 90°.

    gemmi's `sg.basisop` B relates the reference setting to `sg` (x_setting = B x_ref), so x' = B⁻¹ x always
    gives P 1 21/c 1. For the unique-axis-b settings x' = B x does too (ecosystem notes §1.2): P2₁/n has two
    glide diagonals, a + c and a - c. Both candidates are tried, each made obtuse with `-x,-y,z` when β comes
    out acute, those whose conjugated operations are P 1 21/c 1 are kept, and the least oblique cell (β closest
    to 90°, hence the shortest c) wins; on a tie B itself, the notes' verified choice.

    Args:
        cell: the cell in the file's setting.
        sg: the file's space group (number 14, any setting gemmi knows).
        frac: (N, 3) fractional coordinates in the file's setting.

    Returns:
        (cell6 float64 (6,), frac (N, 3) wrapped into [0, 1), op) with x' = op(x).

    Raises:
        Unusable: the group is not 14, or no candidate gives P 1 21/c 1 (a gemmi table surprise).
    """
    if sg.number != 14:
        raise Unusable("another space group", f"{sg.number} ({sg.xhm()})")
    target = gemmi.SpaceGroup(STANDARD_SETTING).xhm()
    best: tuple[float, int, gemmi.Op, gemmi.UnitCell] | None = None
    for rank, op in enumerate((sg.basisop, sg.basisop.inverse())):
        new = cell.changed_basis_forward(op, False)  # the cell of coordinates x' = op(x)
        if new.beta < 90.0:
            op = _FLIP_BETA * op
            new = cell.changed_basis_forward(op, False)
        if _conjugated_group(sg, op) != target or new.beta < 90.0 - 1e-9:
            continue
        key = (round(abs(new.beta - 90.0), 9), rank)
        if best is None or key < best[:2]:
            best = (*key, op, new)
    if best is None:
        raise Unusable("setting transformation failed", f"{sg.xhm()} via {sg.basisop.triplet()}")
    op, new = best[2], best[3]
    m = np.array(op.float_seitz())
    x = wrap(np.asarray(frac, dtype=np.float64) @ m[:3, :3].T + m[:3, 3])
    return np.array(new.parameters, dtype=np.float64), x, op


def _conjugated_group(sg: gemmi.SpaceGroup, op: gemmi.Op) -> str | None:
    """Extended H-M symbol of the group {op g op⁻¹}: the operations seen in coordinates x' = op(x)."""
    ops = [(op * g * op.inverse()).wrap() for g in sg.operations()]
    try:
        found = gemmi.find_spacegroup_by_ops(gemmi.GroupOps(ops))
    except (RuntimeError, ValueError):
        return None
    return None if found is None else found.xhm()


def _cart_dist_mod1(cell6: np.ndarray, d: np.ndarray) -> np.ndarray:
    orth = np.array(gemmi.UnitCell(*cell6).orth.mat.tolist())
    d = d - np.round(d)
    return np.linalg.norm(d @ orth.T, axis=-1)


def _orth(cell6: np.ndarray) -> np.ndarray:
    return np.array(gemmi.UnitCell(*cell6).orth.mat.tolist())


def _multiplicity(cell6: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Site-symmetry order: operations of P 1 21/c 1 that map each atom within SPECIAL_TOL Å of itself."""
    ops = space_group_ops(STANDARD_SETTING)
    return near_multiplicity(ops.rot, ops.tran, _orth(cell6), frac, SPECIAL_TOL)


def _n_special(cell6: np.ndarray, frac: np.ndarray, mult: np.ndarray, occ: np.ndarray) -> int:
    """Distinct special positions (orbits) holding at least one atom of non-zero occupancy."""
    ops = space_group_ops(STANDARD_SETTING)
    return distinct_positions(ops.rot, ops.tran, _orth(cell6), frac[(mult > 1) & (occ > 0)], SPECIAL_TOL)


def _check_expansion(cell0: gemmi.UnitCell, sg: gemmi.SpaceGroup, frac0: np.ndarray, cell6: np.ndarray,
                     frac: np.ndarray, op: gemmi.Op) -> None:
    """The transformed P1 expansion of the file must equal the P 1 21/c 1 expansion of the new arrays."""
    g0 = [np.array(o.float_seitz()) for o in sg.operations()]
    m = np.array(op.float_seitz())
    ops = space_group_ops(STANDARD_SETTING)
    new_img = images(ops.rot, ops.tran, frac)  # (N, G, 3)
    for i, x in enumerate(frac0):
        for g in g0:
            y = m[:3, :3] @ (g[:3, :3] @ x + g[:3, 3]) + m[:3, 3]
            if (_cart_dist_mod1(cell6, new_img[i] - y) > 1e-3).all():
                raise Unusable("setting transformation failed", f"image mismatch for site {i} from {sg.xhm()}")


def classify(z: np.ndarray) -> str:
    """Compound class of a structure from its atomic numbers (module docstring: d-block > s-block > organic)."""
    present = {int(v) for v in np.asarray(z).ravel()}
    if present & D_BLOCK:
        return "d-block"
    if present & S_BLOCK:
        return "s-block"
    if 6 in present and present <= ORGANIC_ELEMENTS:
        return "organic"
    return "other"


def reflections(ingested: Ingested, hkl: np.ndarray, d_min: float = 1.0,
                plan: SFPlan | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|F| (electrons), φ (radians) and the observed mask of a structure over a reflection set.

    Args:
        ingested: a structure from `load_structure`.
        hkl: (H, 3) Miller indices, e.g. `builder.reflections.phai_hkl()`.
        d_min: resolution limit (Å); reflections with d < d_min are not observed.
        plan: an `sf_plan` for P 1 21/c 1 and `hkl`, to reuse across structures (one thread at a time).

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

