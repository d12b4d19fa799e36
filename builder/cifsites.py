"""The one CIF site reader: cell, space group and asymmetric-unit sites of a small-molecule CIF (gemmi).

Used by the database statistics (`builder.stats`) and by evaluation's CIF ingestion (`evaluation.cif`), so both
see the same structure. A file that cannot be used raises `Unusable` with a short reason; what can be used with
a repair is repaired and said in `notes`. One rule per question:

* **Block**: the first data block with `_atom_site_fract_x` (COD files have one block).
* **Space group**: gemmi's, from the symmetry operators when the file lists them, else the Hall or H-M symbol.
  A symbol that names another group than the operators is noted (the operators are used: they are what the
  refinement ran with). Only `_symmetry_Int_Tables_number` / `_space_group_IT_number` is *ambiguous* (it does not
  say the setting) and skipped.
* **Cell**: lengths must be numbers in (0, `MAX_EDGE`] Å and the angles give a positive volume, else "bad cell";
  no lengths is "no cell". Angles a file leaves out but the crystal system fixes (orthorhombic and higher,
  hexagonal axes) are filled in (``cell_repaired``).
* **Sites**: dummy sites (`_atom_site_calc_flag dum`; older COD/ICSD entries put unlocated H there as one site
  at -1,-1,-1 with the H count as its occupancy) and sites of occupancy 0 (ring centroids) are left out with a
  note. A negative occupancy, or one above 1 + `OCC_TOL`, makes the file unusable; up to that it is clipped to 1.
  Coordinates written as fractions ("1/4") are read; a coordinate beyond ±`COORD_MAX` is unusable. Sites with an
  unknown element or without coordinates are listed in `skipped` (statistics drop them, evaluation refuses the
  file: its |F| would be wrong).
* **Displacement** (U, Å²): the equivalent isotropic U_eq of the anisotropic U_ij (gemmi's
  `UnitCell.calculate_u_eq`, a third of the trace of U_cart) when the site has them, else the CIF's U_iso (gemmi
  converts B). U_ij are the refined model and U_iso_or_equiv only its rounded summary (they agree to 7e-5 Å²
  in the median on the shipped COD files; in one file U_iso is 713 Å² off). A site whose U is absent, zero
  (some COD files write 0 for "not refined"), negative or not finite gets `DEFAULT_UISO`, is counted in
  `n_u_fallback` and noted; ``u_given`` marks the sites whose own U was used.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import gemmi
import numpy as np

from builder.elements import atomic_number

__all__ = ["MAX_EDGE", "COORD_MAX", "OCC_TOL", "DEFAULT_UISO", "Unusable", "CifSites", "read_cif_sites",
           "load_cif_sites"]

MAX_EDGE = 1000.0  # Å: beyond the largest small-molecule (and most macromolecular) cells; larger is a unit slip
COORD_MAX = 10.0  # fractional: the shipped COD files reach 2.4; 1e30 is not a position
OCC_TOL = 0.01  # occupancies up to 1.01 are rounding and clipped to 1
DEFAULT_UISO = 0.05  # Å², for sites without a usable displacement parameter

_FIXED_ANGLES = {"orthorhombic": (90.0, 90.0, 90.0), "tetragonal": (90.0, 90.0, 90.0), "cubic": (90.0, 90.0, 90.0),
                 "hexagonal": (90.0, 90.0, 120.0), "trigonal": (90.0, 90.0, 120.0)}
_NUMBER_TAGS = ("_space_group_IT_number", "_symmetry_Int_Tables_number")


class Unusable(ValueError):
    """A CIF that cannot be used; `reason` is a short category, `detail` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across process pools
        return (Unusable, (self.reason, self.detail))


@dataclasses.dataclass(frozen=True, eq=False)
class CifSites:
    """The asymmetric unit of a CIF as given (the file's setting), after the rules of the module docstring."""

    name: str
    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    labels: tuple[str, ...]
    frac: np.ndarray  # float64 (N, 3), as in the file (not wrapped)
    z: np.ndarray  # int64 (N,), D -> 1
    occ: np.ndarray  # float64 (N,), chemical (CIF) occupancy in (0, 1]
    group: np.ndarray  # int64 (N,), disorder group (0 = none)
    uiso: np.ndarray  # float64 (N,), Å²; DEFAULT_UISO where the file gives no usable U
    u_given: np.ndarray  # bool (N,): the file's own U was used
    skipped: tuple[tuple[str, str], ...] = ()  # (label, "unknown element" | "missing coordinates")
    notes: tuple[str, ...] = ()
    cell_repaired: bool = False

    @property
    def n_u_fallback(self) -> int:
        """Sites whose U was absent, zero, negative or not finite and set to DEFAULT_UISO."""
        return int((~self.u_given).sum())


def load_cif_sites(path: str | os.PathLike) -> CifSites:
    """`read_cif_sites` of a file; its stem is the name. Unusable("unreadable") when it cannot be read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise Unusable("unreadable", str(exc)) from None
    return read_cif_sites(data, p.stem)


def read_cif_sites(data: bytes, name: str) -> CifSites:
    """The cell, space group and sites of the CIF bytes `data` (module docstring: the rules); raises Unusable."""
    block = _atom_block(data)
    lengths, angles = _cell_numbers(block)  # before gemmi sees them: it refuses some impossible angles itself
    try:
        st = gemmi.make_small_structure_from_block(block)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise Unusable("unparsable", _short(exc)) from None
    notes: list[str] = []
    sg = _spacegroup(block, st, notes)
    repaired = not all(math.isfinite(v) for v in angles)
    st.cell = gemmi.UnitCell(*lengths, *(_fixed_angles(sg, angles) if repaired else angles))
    return _sites(name, block, st, sg, notes, repaired)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _atom_block(data: bytes) -> gemmi.cif.Block:
    try:
        doc = gemmi.cif.read_string(data.decode("utf-8", errors="replace"))
    except (RuntimeError, ValueError) as exc:
        raise Unusable("unparsable", _short(exc)) from None
    if len(doc) == 0:
        raise Unusable("unparsable", "no data block")
    for block in doc:
        if len(block.find_values("_atom_site_fract_x")) > 0:
            return block
    if any(len(b.find_values("_atom_site_label")) > 0 for b in doc):
        raise Unusable("missing coordinates", "no _atom_site_fract_x")
    raise Unusable("no atoms")


def _number(block: gemmi.cif.Block, tag: str) -> float:
    v = block.find_value(tag)
    return float("nan") if v is None else gemmi.cif.as_number(v)


def _spacegroup(block: gemmi.cif.Block, st: gemmi.SmallStructure, notes: list[str]) -> gemmi.SpaceGroup:
    sg = st.spacegroup
    if sg is None:
        if st.symops:
            raise Unusable("no space group", f"the {len(st.symops)} operators form no group gemmi knows")
        numbers = [block.find_value(t) for t in _NUMBER_TAGS if block.find_value(t) is not None]
        if numbers and not st.spacegroup_hm and not st.spacegroup_hall:
            raise Unusable("ambiguous space group", f"only the number {gemmi.cif.as_string(numbers[0])} is given, "
                                                    "not the setting (H-M or Hall symbol, or operators)")
        raise Unusable("no space group", st.spacegroup_hm or st.spacegroup_hall or "")
    if st.symops:
        named = _named_group(st)
        if named is not None and named.hm != sg.hm:
            notes.append(f"space-group symbol {named.xhm()!r} contradicts the operators ({sg.xhm()}); "
                         "the operators are used")
    return sg


def _named_group(st: gemmi.SmallStructure) -> gemmi.SpaceGroup | None:
    if st.spacegroup_hall:
        try:
            return gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(st.spacegroup_hall))
        except (RuntimeError, ValueError):
            return None
    return gemmi.find_spacegroup_by_name(st.spacegroup_hm) if st.spacegroup_hm else None


def _cell_numbers(block: gemmi.cif.Block) -> tuple[list[float], list[float]]:
    """Cell lengths and angles, checked; angles may be NaN (not given) for `_fixed_angles` to fill in."""
    lengths = [_number(block, f"_cell_length_{x}") for x in "abc"]
    angles = [_number(block, f"_cell_angle_{x}") for x in ("alpha", "beta", "gamma")]
    if not all(math.isfinite(v) for v in lengths):
        raise Unusable("no cell", "cell lengths a, b, c are not all given as numbers")
    for axis, v in zip("abc", lengths):
        if not 0.0 < v <= MAX_EDGE:
            raise Unusable("bad cell", f"{axis} = {v:g} A outside (0, {MAX_EDGE:g}] A")
    given = [v for v in angles if math.isfinite(v)]
    if not all(0.0 < v < 180.0 for v in given):
        raise Unusable("bad cell", f"angles {', '.join(f'{v:g}' for v in angles)} outside (0, 180) deg")
    if len(given) == 3:
        ca, cb, cg = (math.cos(math.radians(v)) for v in angles)
        if not 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg > 1e-6:  # (V / abc)²
            raise Unusable("bad cell", f"angles {', '.join(f'{v:g}' for v in angles)} give no volume")
    return lengths, angles


def _fixed_angles(sg: gemmi.SpaceGroup, angles: list[float]) -> list[float]:
    """Angles the file leaves out, from a crystal system that fixes them; Unusable otherwise."""
    fixed = _FIXED_ANGLES.get(sg.crystal_system_str())
    if fixed is None or sg.xhm().endswith(":R"):
        raise Unusable("no cell", f"cell angles not given for a {sg.crystal_system_str()} group")
    if any(math.isfinite(g) and abs(g - f) > 0.01 for g, f in zip(angles, fixed)):
        raise Unusable("bad cell", "cell angles disagree with the crystal system")
    return list(fixed)


def _fraction(text: str) -> float:
    """A coordinate written as a fraction ("1/4", "-3/4"), which gemmi reads as NaN; NaN if not one."""
    t = text.split("(")[0].strip()
    try:
        num, den = t.split("/")
        return float(num) / float(den)
    except (ValueError, ZeroDivisionError):
        return float("nan")


def _loop_columns(block: gemmi.cif.Block) -> dict[str, tuple[str, list[float]]]:
    """label -> (calc flag, raw coordinates read as fractions) from the atom-site loop."""
    table = block.find("_atom_site_", ["label", "fract_x", "fract_y", "fract_z", "?calc_flag"])
    out = {}
    for row in table:
        flag = row.str(4).lower() if row.has(4) else ""
        out[row.str(0)] = (flag, [_fraction(row[k]) for k in (1, 2, 3)])
    return out


def _site_coordinates(s: gemmi.SmallStructure.Site, raw: tuple[str, list[float]] | None) -> list[float]:
    x = s.fract.tolist()
    if raw is not None and not all(math.isfinite(v) for v in x):
        x = [v if math.isfinite(v) else w for v, w in zip(x, raw[1])]
    return x


def _sites(name: str, block: gemmi.cif.Block, st: gemmi.SmallStructure, sg: gemmi.SpaceGroup, notes: list[str],
           repaired: bool) -> CifSites:
    cols = _loop_columns(block)
    keep: list[tuple[gemmi.SmallStructure.Site, list[float], int]] = []
    skipped: list[tuple[str, str]] = []
    dummy = zero = 0
    for s in st.sites:
        raw = cols.get(s.label)
        if raw is not None and raw[0] == "dum":
            dummy += 1
            continue
        if not s.occ >= 0.0 or s.occ > 1.0 + OCC_TOL:
            kind = "negative occupancy" if s.occ < 0 else "occupancy out of range"
            raise Unusable(kind, f"{s.label} has occupancy {s.occ:g} (allowed: 0 to 1)")
        if s.occ == 0.0:
            zero += 1
            continue
        x = _site_coordinates(s, raw)
        try:
            z = atomic_number(s.element.name)
        except ValueError:
            skipped.append((s.label, "unknown element"))
            continue
        if not all(math.isfinite(v) for v in x):
            skipped.append((s.label, "missing coordinates"))
            continue
        if max(abs(v) for v in x) > COORD_MAX:
            raise Unusable("coordinates out of range", f"{s.label} at {', '.join(f'{v:g}' for v in x)} "
                                                       f"(allowed: within +-{COORD_MAX:g})")
        keep.append((s, x, z))
    if dummy:
        notes.append(f"{dummy} dummy site(s) (_atom_site_calc_flag dum) left out")
    if zero:
        notes.append(f"{zero} site(s) with zero occupancy left out")
    if not keep:  # say why the last sites went, if any did
        raise Unusable(skipped[0][1], ", ".join(lab for lab, _ in skipped[:5])) if skipped else Unusable("no atoms")
    uiso, given = _displacements(st.cell, [k[0] for k in keep], notes)
    return CifSites(
        name=name, cell=st.cell, spacegroup=sg, labels=tuple(k[0].label for k in keep),
        frac=np.array([k[1] for k in keep], dtype=np.float64).reshape(-1, 3),
        z=np.array([k[2] for k in keep], dtype=np.int64),
        occ=np.array([min(float(k[0].occ), 1.0) for k in keep]),
        group=np.array([int(k[0].disorder_group) for k in keep], dtype=np.int64),
        uiso=uiso, u_given=given, skipped=tuple(skipped), notes=tuple(notes), cell_repaired=repaired)


def _displacements(cell: gemmi.UnitCell, sites: list, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """U_eq from U_ij where present, else U_iso; DEFAULT_UISO (with a note) where absent, zero, < 0 or not finite."""
    u = np.array([cell.calculate_u_eq(s.aniso) if s.aniso.nonzero() else s.u_iso for s in sites], dtype=np.float64)
    given = np.isfinite(u) & (u > 0)
    missing = int((u == 0).sum())
    bad = [s.label for s, ok, v in zip(sites, given, u) if not ok and v != 0]
    if missing:
        notes.append(f"U absent or zero for {missing} site(s); U_iso = {DEFAULT_UISO} A^2 assumed")
    if bad:
        notes.append(f"U negative or not finite for {len(bad)} site(s) ({', '.join(bad[:5])}); "
                     f"U_iso = {DEFAULT_UISO} A^2 assumed")
    return np.where(given, u, DEFAULT_UISO), given
