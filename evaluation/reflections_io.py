"""Readers for a crystallographer's measured reflections: SHELX .hkl (+ .ins/.res), CIF/.fcf, free format.

Each reader returns a `Measured`: the reflections exactly as the file lists them (unmerged or merged, any
setting), and what the file says about the crystal (cell, symmetry operations or symbol, composition).
Nothing is reduced here; `evaluation.reduce` decides the space group, merges and converts intensities.

Formats (SHELX details in `evaluation.shelx_io`):
  * SHELX `.hkl` (HKLF 4: F², σ(F²); HKLF 3: F, σ(F)) with the `.ins` or `.res` of the same stem beside it
    (CELL, LATT, SYMM, SFAC/UNIT, HKLF with its index matrix and scale);
  * CIF (gemmi.cif): a block with embedded `_shelx_hkl_file` and `_shelx_res_file` (COD deposits), or with a
    `_refln_index_h/k/l` loop of `_refln_F_squared_meas` (or `_refln_intensity_meas`, or `_refln_F_meas`) and
    its σ; cell from `_cell_length_*`/`_cell_angle_*`, symmetry from `_space_group_symop_operation_xyz` (or
    `_symmetry_equiv_pos_as_xyz`) and the H-M/Hall symbol. SHELXL `.fcf` files are CIFs of this kind;
  * free format (the PhAI notebook's input): `h k l F [σ]` separated by blanks.

Bad input raises ValueError with one line naming the problem (and the line number for a malformed line).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import gemmi
import numpy as np

from evaluation.shelx_io import parse_free, parse_hkl, parse_ins, shelx_ops, shelx_reflections

__all__ = ["Measured", "read_input", "parse_hkl", "parse_ins", "parse_free", "parse_cif", "shelx_ops",
           "INPUT_FORMATS"]

INPUT_FORMATS = ("auto", "shelx", "cif", "free")
_CIF_VALUES = (  # (value tag, sigma tag, kind), in order of preference
    ("_refln_F_squared_meas", "_refln_F_squared_sigma", "intensity"),
    ("_refln_intensity_meas", "_refln_intensity_sigma", "intensity"),
    ("_refln_F_meas", "_refln_F_sigma", "amplitude"),
)
_SYMOP_TAGS = ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz")
_HM_TAGS = ("_space_group_name_H-M_alt", "_symmetry_space_group_name_H-M")
_HALL_TAGS = ("_space_group_name_Hall", "_symmetry_space_group_name_Hall")


@dataclasses.dataclass(frozen=True)
class Measured:
    """Reflections as listed in the input, and what the input says about the crystal."""

    name: str  # output stem
    hkl: np.ndarray  # (N, 3) int32, as listed (after an HKLF index matrix)
    value: np.ndarray  # (N,) float64: F² when kind == "intensity", F when "amplitude"
    sigma: np.ndarray | None  # (N,) float64, None when the input has no σ column
    kind: str  # "intensity" | "amplitude"
    cell6: tuple[float, ...] | None = None
    wavelength: float | None = None
    symops: tuple[str, ...] | None = None  # every operation the file lists or implies (triplets)
    symbol: str | None = None  # H-M or Hall symbol as the file gives it
    sfac: tuple[str, ...] = ()
    unit: tuple[float, ...] = ()
    model: bytes | None = None  # a CIF block with atoms (the deposited model), for scoring only
    sources: tuple[dict, ...] = ()  # {role, name, sha256} of every file read
    notes: tuple[str, ...] = ()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cif_text(block: gemmi.cif.Block, tag: str) -> str | None:
    v = block.find_value(tag)
    if v is None:
        return None
    s = gemmi.cif.as_string(v)
    return s if s.strip() and s not in ("?", ".") else None


def _cif_crystal(block: gemmi.cif.Block) -> dict:
    """Cell, symmetry and composition written in the CIF block itself."""
    out: dict = {}
    nums = [block.find_value(f"_cell_{t}") for t in ("length_a", "length_b", "length_c", "angle_alpha",
                                                      "angle_beta", "angle_gamma")]
    if all(v is not None for v in nums):
        cell = [gemmi.cif.as_number(v) for v in nums]
        if all(np.isfinite(cell)):
            out["cell6"] = tuple(cell)
    lam = block.find_value("_diffrn_radiation_wavelength")
    if lam is not None and np.isfinite(gemmi.cif.as_number(lam)):
        out["wavelength"] = gemmi.cif.as_number(lam)
    for tag in _SYMOP_TAGS:
        ops = [gemmi.cif.as_string(v) for v in block.find_values(tag)]
        if ops:
            out["symops"] = tuple(ops)
            break
    out["symbol"] = next((s for s in map(lambda t: _cif_text(block, t), _HM_TAGS + _HALL_TAGS) if s), None)
    formula, z = _cif_text(block, "_chemical_formula_sum"), block.find_value("_cell_formula_units_Z")
    if formula and z is not None and np.isfinite(gemmi.cif.as_number(z)):
        pairs = re.findall(r"([A-Z][a-z]?)([0-9.]*)", formula)
        out["sfac"] = tuple(e for e, _ in pairs)
        out["unit"] = tuple(float(n or 1) * gemmi.cif.as_number(z) for _, n in pairs)
    return out


def _refln_loop(block: gemmi.cif.Block) -> dict | None:
    """Measured values of a `_refln_` loop (first of F²_meas, intensity_meas, F_meas present), else None."""
    for value_tag, sigma_tag, kind in _CIF_VALUES:
        tab = block.find("_refln_", ["index_h", "index_k", "index_l", value_tag[7:], "?" + sigma_tag[7:]])
        if len(tab) == 0:
            continue
        cols = [np.array([gemmi.cif.as_number(v) for v in tab.column(i)]) for i in range(4 + tab.has_column(4))]
        hkl = np.stack(cols[:3], axis=1)
        if not np.all(np.isfinite(hkl)) or not np.array_equal(hkl, np.rint(hkl)):
            raise ValueError(f"block {block.name}: _refln_index_h/k/l must be integers")
        keep = np.isfinite(cols[3])  # '?' or '.' values are unmeasured
        sigma = cols[4][keep] if len(cols) > 4 else None
        return {"hkl": hkl[keep].astype(np.int32), "value": cols[3][keep], "kind": kind,
                "sigma": None if sigma is None or np.isnan(sigma).all() else np.nan_to_num(sigma, nan=0.0),
                "notes": [f"{value_tag} loop of block {block.name}"]}
    return None


def _has_reflections(block: gemmi.cif.Block) -> bool:
    return block.find_value("_shelx_hkl_file") is not None or any(
        len(block.find_values(v)) > 0 for v, _, _ in _CIF_VALUES)


def parse_cif(data: bytes, name: str, block: str | None = None, hklf: int | None = None) -> dict:
    """Reflections and crystal of a CIF/.fcf: embedded SHELX files first, else a `_refln_` loop.

    Raises:
        ValueError: unreadable CIF, no block with measured reflections, several and no `block` to choose, or
            an unknown `block` name.
    """
    try:
        doc = gemmi.cif.read_string(data.decode("utf-8", errors="replace"))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{name}: not a readable CIF ({' '.join(str(exc).split())[:160]})") from None
    names = [b.name for b in doc]
    if block is not None:
        if block not in names:
            raise ValueError(f"{name} has no data block {block!r} (blocks: {', '.join(names) or 'none'})")
        chosen = doc.find_block(block)
    else:
        cands = [b for b in doc if _has_reflections(b)]
        if not cands:
            raise ValueError(f"{name} has no measured reflections (no _shelx_hkl_file, no _refln_F_squared_meas, "
                             "_refln_intensity_meas or _refln_F_meas loop)")
        if len(cands) > 1:
            raise ValueError(f"{name} has {len(cands)} data blocks with reflections "
                             f"({', '.join(b.name for b in cands)}); choose one with --block NAME")
        chosen = cands[0]
    out = _cif_crystal(chosen)
    hkl_text = _cif_text(chosen, "_shelx_hkl_file")
    if hkl_text is not None:
        res_text = _cif_text(chosen, "_shelx_res_file")
        out.update(shelx_reflections(name, hkl_text, res_text, f"{name} _shelx_res_file", hklf))
        out["notes"].insert(0, f"_shelx_hkl_file of block {chosen.name}"
                            + (" with its _shelx_res_file" if res_text else ""))
    else:
        loop = _refln_loop(chosen)
        if loop is None:
            raise ValueError(f"{name}: block {chosen.name} has no measured reflections")
        if hklf is not None:
            raise ValueError("--hklf applies to SHELX .hkl data; a CIF loop names its own quantity")
        out.update(loop)
    if len(chosen.find_values("_atom_site_fract_x")) > 0:
        out["model"] = data
    return out


def _read(path: Path, role: str) -> tuple[bytes, dict]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data, {"role": role, "name": path.name, "sha256": _sha(data)}


def _format_of(path: Path, fmt: str) -> str:
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"unknown --format {fmt!r}; choose one of {', '.join(INPUT_FORMATS)}")
    if fmt != "auto":
        return fmt
    ext = path.suffix.lower()
    return "cif" if ext in (".cif", ".fcf") else "shelx" if ext == ".hkl" else "free"


def read_input(path: str | Path, fmt: str = "auto", hklf: int | None = None, block: str | None = None,
               data: bytes | None = None) -> Measured:
    """Read a reflection file (and, for SHELX .hkl, the .ins or .res of the same stem beside it).

    Args:
        path: the input file (its stem names the outputs).
        fmt: "auto" (by extension: .cif/.fcf -> cif, .hkl -> shelx, else free), "shelx", "cif" or "free".
        hklf: 4 (F², σ(F²)) or 3 (F, σ(F)); None: the .ins HKLF card, else 4 (SHELX), 3 (free format: F).
        block: the CIF data block to read when there are several.
        data: the file's bytes, when already in memory (e.g. from a test-set archive).

    Raises:
        ValueError: unreadable or malformed input (one line, with the line number where there is one).
    """
    p = Path(path)
    kind = _format_of(p, fmt)
    if hklf not in (None, 3, 4):
        raise ValueError(f"--hklf must be 3 or 4, got {hklf}")
    raw, src = (data, {"role": "reflections", "name": p.name, "sha256": _sha(data)}) if data is not None \
        else _read(p, "reflections")
    sources = [src]
    text = raw.decode("utf-8", errors="replace")
    if kind == "cif":
        fields = parse_cif(raw, p.name, block, hklf)
    elif kind == "shelx":
        ins_path = next((q for q in (p.with_suffix(".ins"), p.with_suffix(".res")) if q.is_file()), None)
        ins_text = None
        if ins_path is not None:
            ins_raw, ins_src = _read(ins_path, "instructions")
            ins_text, _ = ins_raw.decode("utf-8", errors="replace"), sources.append(ins_src)
        fields = _with_line_context(lambda: shelx_reflections(p.stem, text, ins_text, ins_path.name if ins_path else "",
                                                   hklf), p.name)
    else:
        hkl, value, sigma = _with_line_context(lambda: parse_free(text), p.name)
        fields = {"hkl": hkl, "value": value, "sigma": sigma, "kind": "intensity" if hklf == 4 else "amplitude",
                  "notes": ["free format h k l F sigma"]}
    notes = fields.pop("notes", [])
    return Measured(name=p.stem, sources=tuple(sources), notes=tuple(notes), **fields)


def _with_line_context(fn, name: str):
    """Run a parser; its ValueError gets the file name in front ('x.hkl line 7: ...')."""
    try:
        return fn()
    except ValueError as exc:
        raise ValueError(f"{name} {exc}" if str(exc).startswith("line ") else str(exc)) from None
