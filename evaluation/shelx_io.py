"""SHELX files: .hkl reflections (FORMAT 3I4, 2F8.2, I4), .ins/.res instructions, and the free format.

  * `.hkl`: h k l, F² σ(F²) (HKLF 4) or F σ(F) (HKLF 3), optional batch, ended by a line with h = k = l = 0 (or a
    blank line, which Fortran reads as zeros); anything after the end is ignored, as by SHELXL.
  * `.ins`/`.res`: CELL (λ a b c α β γ), LATT (sign: centrosymmetric; |n|: P I R F A B C), SYMM (every operation
    but the identity, the inversion and centring), SFAC (short or long form), UNIT and HKLF (n, scale s, and a
    3×3 matrix: the new h is r11 h + r12 k + r13 l, etc.; s multiplies F² and σ). `=` continues a card, `!`
    starts a comment, REM lines are skipped.
  * Free format (the PhAI notebook's input): `h k l F [σ]` separated by blanks, up to a 0 0 0 line.

A malformed line raises ValueError naming its line number.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import gemmi
import numpy as np

__all__ = ["parse_hkl", "parse_ins", "parse_free", "shelx_ops", "shelx_reflections"]

_LATT_LETTERS = " PIRFABC"  # SHELX LATT |n| -> lattice letter
_HKL_FIELDS = ((0, 4, "h"), (4, 8, "k"), (8, 12, "l"), (12, 20, "F^2 or F"), (20, 28, "sigma"), (28, 32, "batch"))


def _field(line: str, lo: int, hi: int, name: str, lineno: int, cast: type) -> float | int | None:
    text = line[lo:hi].strip()
    if not text:
        return None
    try:
        return cast(text)
    except ValueError:
        raise ValueError(f"line {lineno}: cannot read {text!r} as {name} (columns {lo + 1}-{hi}; SHELX .hkl is "
                         "FORMAT(3I4,2F8.2,I4); use --format free for blank-separated columns)") from None


def parse_hkl(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read SHELX .hkl text (fixed columns 3I4, 2F8.2, I4), up to the h = k = l = 0 (or a blank) line.

    Returns:
        (hkl (N, 3) int32, value (N,), sigma (N,) or None when no line has a σ field).

    Raises:
        ValueError: a malformed line (its number in the message) or no reflections.
    """
    rows, sig = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if rows:  # Fortran reads a blank record as h = k = l = 0: the end of the data, as in SHELX
                break
            continue
        h, k, l = (_field(line, lo, hi, nm, lineno, int) for lo, hi, nm in _HKL_FIELDS[:3])
        if h is None or k is None or l is None:
            raise ValueError(f"line {lineno}: h, k and l must fill columns 1-12 (FORMAT 3I4): {line.strip()!r}")
        if h == k == l == 0:
            break
        f = _field(line, 12, 20, "F^2 or F", lineno, float)
        if f is None:
            raise ValueError(f"line {lineno}: no intensity in columns 13-20: {line.strip()!r}")
        s = _field(line, 20, 28, "sigma", lineno, float)
        _field(line, 28, 32, "batch", lineno, int)
        if len(line.rstrip()) > 32 and line[32:].strip():
            raise ValueError(f"line {lineno}: unexpected text after column 32: {line[32:].strip()!r}")
        rows.append((h, k, l, f))
        sig.append(np.nan if s is None else s)
    if not rows:
        raise ValueError("no reflections before the end or the 0 0 0 line")
    a = np.array(rows, dtype=np.float64)
    s = np.array(sig, dtype=np.float64)
    return a[:, :3].astype(np.int32), a[:, 3], (None if np.isnan(s).all() else np.nan_to_num(s, nan=0.0))


def parse_free(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read `h k l F [σ]` per line (blank-separated; `#` starts a comment), up to a 0 0 0 line.

    Raises:
        ValueError: a malformed line (its number in the message) or no reflections.
    """
    rows, sig = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) not in (4, 5):
            raise ValueError(f"line {lineno}: expected 'h k l F [sigma]', got {len(parts)} fields: {line.strip()!r}")
        try:
            h, k, l = (int(p) for p in parts[:3])
            vals = [float(p) for p in parts[3:]]
        except ValueError:
            raise ValueError(f"line {lineno}: cannot read {line.strip()!r} as 'h k l F [sigma]'") from None
        if h == k == l == 0:
            break
        rows.append((h, k, l, vals[0]))
        sig.append(vals[1] if len(vals) > 1 else np.nan)
    if not rows:
        raise ValueError("no reflections in the free-format file")
    a = np.array(rows, dtype=np.float64)
    s = np.array(sig, dtype=np.float64)
    return a[:, :3].astype(np.int32), a[:, 3], (None if np.isnan(s).all() else np.nan_to_num(s, nan=0.0))


def _ins_cards(text: str) -> list[tuple[str, list[str]]]:
    """(KEYWORD, arguments) per instruction: `=` continues a line, `!` starts a comment, REM lines skipped."""
    cards: list[tuple[str, list[str]]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.split("!", 1)[0].rstrip()
        line = pending + " " + line if pending else line
        if line.endswith("="):
            pending = line[:-1]
            continue
        pending = ""
        parts = line.split()
        if not parts or parts[0].upper().startswith("REM"):
            continue
        cards.append((parts[0][:4].upper(), parts[1:]))
    return cards


def _numbers(args: Sequence[str], what: str) -> list[float]:
    try:
        return [float(a) for a in args]
    except ValueError:
        raise ValueError(f"cannot read {' '.join(args)!r} as numbers in {what}") from None


def parse_ins(text: str, source: str = ".ins") -> dict:
    """CELL, LATT, SYMM, SFAC, UNIT and HKLF of a SHELX .ins/.res (everything before HKLF/END).

    Returns:
        dict(cell6, wavelength, latt, symm (triplets), sfac (element symbols), unit, hklf, hklf_matrix (3×3) or
        None for the identity, hklf_scale).

    Raises:
        ValueError: no CELL, or a CELL/LATT/SYMM/HKLF card that cannot be read.
    """
    out: dict = {"cell6": None, "wavelength": None, "latt": 1, "symm": [], "sfac": [], "unit": [], "hklf": None,
                 "hklf_matrix": None, "hklf_scale": 1.0}
    for key, args in _ins_cards(text):
        if key == "CELL":
            v = _numbers(args, f"CELL of {source}")
            if len(v) != 7:
                raise ValueError(f"CELL of {source} needs 7 numbers (lambda a b c alpha beta gamma), got {len(v)}")
            out["wavelength"], out["cell6"] = v[0], tuple(v[1:])
        elif key == "LATT":
            v = _numbers(args[:1], f"LATT of {source}")
            if not v or int(v[0]) == 0 or abs(int(v[0])) > 7:
                raise ValueError(f"LATT of {source} must be ±1..7, got {' '.join(args)!r}")
            out["latt"] = int(v[0])
        elif key == "SYMM":
            out["symm"].append("".join(args))
        elif key == "SFAC":
            long_form = len(args) > 1 and re.fullmatch(r"[-+.0-9eE]+", args[1]) is not None
            out["sfac"] += args[:1] if long_form else args  # long form: one element, then its coefficients
        elif key == "UNIT":
            out["unit"] = _numbers(args, f"UNIT of {source}")
        elif key == "HKLF":
            v = _numbers(args, f"HKLF of {source}")
            out["hklf"] = int(v[0]) if v else 4
            out["hklf_scale"] = v[1] if len(v) > 1 else 1.0
            if len(v) >= 11:
                m = np.array(v[2:11]).reshape(3, 3)
                out["hklf_matrix"] = None if np.allclose(m, np.eye(3)) else m
            break
        elif key == "END":
            break
    if out["cell6"] is None:
        raise ValueError(f"{source} has no CELL card (CELL lambda a b c alpha beta gamma)")
    if out["sfac"] and out["unit"] and len(out["unit"]) != len(out["sfac"]):
        raise ValueError(f"{source}: UNIT has {len(out['unit'])} numbers for {len(out['sfac'])} SFAC elements")
    return out


def shelx_ops(latt: int, symm: Sequence[str]) -> tuple[str, ...]:
    """All operations implied by LATT and SYMM: identity + SYMM, × inversion when LATT > 0, × centring.

    The centring vectors of each lattice letter come from gemmi (Hall symbol "<letter> 1").

    Raises:
        ValueError: a SYMM card gemmi cannot read.
    """
    ops = [gemmi.Op("x,y,z")]
    for s in symm:
        try:
            ops.append(gemmi.Op(s.lower().replace(" ", "")))
        except (RuntimeError, ValueError):
            raise ValueError(f"cannot read SYMM {s!r} as a symmetry operation") from None
    if latt > 0:
        ops += [gemmi.Op("-x,-y,-z") * op for op in ops]
    cen = gemmi.symops_from_hall(f"{_LATT_LETTERS[abs(latt)]} 1").cen_ops
    out = []
    for c in cen:
        shift = gemmi.Op("x,y,z")
        shift.tran = list(c)
        out += [(shift * op).wrap().triplet() for op in ops]
    return tuple(dict.fromkeys(out))


def _hklf_apply(hkl: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """SHELXL's HKLF matrix: the new h is r11 h + r12 k + r13 l, etc. (the SHELXL manual, HKLF)."""
    if matrix is None:
        return hkl
    new = hkl.astype(np.float64) @ matrix.T
    if not np.allclose(new, np.rint(new), atol=1e-6):
        raise ValueError("the HKLF matrix gives non-integer indices")
    return np.rint(new).astype(np.int32)


def _ins_fields(ins: dict) -> dict:
    return {"cell6": ins["cell6"], "wavelength": ins["wavelength"], "symops": shelx_ops(ins["latt"], ins["symm"]),
            "sfac": tuple(ins["sfac"]), "unit": tuple(ins["unit"])}


def shelx_reflections(name: str, hkl_text: str, ins_text: str | None, ins_name: str, hklf: int | None) -> dict:
    """Reflections of HKLF text plus the crystal of its .ins/.res (if any)."""
    ins = parse_ins(ins_text, ins_name) if ins_text is not None else None
    n = hklf if hklf is not None else (ins["hklf"] if ins and ins["hklf"] in (3, 4) else 4)
    hkl, value, sigma = parse_hkl(hkl_text)
    scale = ins["hklf_scale"] if ins else 1.0  # s multiplies F² and σ (or F and σ for HKLF 3)
    value, sigma = value * scale, None if sigma is None else sigma * scale
    out = {"hkl": _hklf_apply(hkl, ins["hklf_matrix"] if ins else None), "value": value, "sigma": sigma,
           "kind": "intensity" if n == 4 else "amplitude", "notes": []}
    if ins:
        out.update(_ins_fields(ins))
        if ins["hklf_matrix"] is not None:
            out["notes"].append(f"HKLF matrix {ins['hklf_matrix'].ravel().tolist()} applied to the indices")
    return out
