"""What `phaseforge-eval solve` hands back, in the input's own setting and indices (so it overlays the model):

  * NAME.fcf        the phased reflections as a SHELXL LIST 6 CIF (h k l, F²_meas, σ(F²), F_calc = the |F|
                    estimate used for the map, phase in degrees; cell and symmetry), read by Olex2 and gemmi;
  * NAME.ccp4       the phased map (gemmi `Ccp4Map`), F000 = 0;
  * NAME.res        CELL, ZERR, LATT, SYMM, SFAC, UNIT and the strongest map peaks as Q atoms, to open and refine;
  * NAME.peaks.csv  the same peaks (fractional x y z, height, height / rms);
  * NAME_map.png    the map projected along the shortest cell axis, peaks marked (Acta A 2026 Fig. 7 style);
  * solve.json      inputs with sha256, every reduction figure, per method FOM, cycles and time, the pick.

Everything is written to a staging folder beside --out and renamed into place at the end (`evaluation.staging`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from evaluation.maps import find_peaks, phased_map
from evaluation.plots import plot_map
from evaluation.reduce import Reduced
from manifests.schema import dumps

__all__ = ["write_fcf", "write_ccp4", "write_res", "write_peaks_csv", "solution_map", "write_solution",
           "shelx_symmetry", "SOLVE_VERSION"]

SOLVE_VERSION = 1
_LATT = " PIRFABC"


def _fmt(x: float, nd: int = 4) -> str:
    return f"{x:.{nd}f}"


def _cell_pairs(block: gemmi.cif.Block, cell6: np.ndarray) -> None:
    for tag, v in zip(("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"), cell6):
        block.set_pair(f"_cell_{tag}", _fmt(float(v)))


def write_fcf(path: Path, red: Reduced, phase: np.ndarray, title: str) -> int:
    """NAME.fcf (LIST 6); only phased, not absent reflections. Returns the number of reflections written."""
    doc = gemmi.cif.Document()
    block = doc.add_new_block(red.name.replace(" ", "_") or "phaseforge")
    sel = np.flatnonzero(np.isfinite(phase) & red.usable)
    block.set_pair("_shelx_title", gemmi.cif.quote(title))
    block.set_pair("_shelx_refln_list_code", "6")
    block.set_pair("_shelx_F_calc_maximum", _fmt(float(red.amp[sel].max()) if len(sel) else 0.0, 2))
    block.set_pair("_reflns_d_resolution_high", _fmt(float(red.d[sel].min()) if len(sel) else 0.0))
    block.set_pair("_space_group_name_H-M_alt", gemmi.cif.quote(red.spacegroup.xhm()))
    block.set_pair("_space_group_IT_number", str(red.spacegroup.number))
    ops = block.init_loop("_space_group_symop_", ["operation_xyz"])
    for op in red.spacegroup.operations():
        ops.add_row([gemmi.cif.quote(op.triplet())])
    _cell_pairs(block, red.cell6)
    f2, s2 = (red.value, red.sigma) if red.kind == "intensity" else (
        red.value**2, None if red.sigma is None else 2.0 * np.abs(red.value) * red.sigma)
    loop = block.init_loop("_refln_", ["index_h", "index_k", "index_l", "F_squared_meas", "F_squared_sigma",
                                       "F_calc", "phase_calc"])
    for i in sel:
        h, k, l = (str(int(v)) for v in red.hkl[i])
        loop.add_row([h, k, l, _fmt(float(f2[i]), 2), "?" if s2 is None else _fmt(float(s2[i]), 2),
                      _fmt(float(red.amp[i]), 2), _fmt(float(np.degrees(phase[i]) % 360.0), 1)])
    doc.write_file(str(path))
    return int(len(sel))


def solution_map(red: Reduced, phase: np.ndarray) -> gemmi.FloatGrid:
    """The map of the phased, not absent reflections with the measured |F| (F000 = 0)."""
    sel = np.isfinite(phase) & red.usable
    return phased_map(red.cell6, red.spacegroup, red.hkl[sel], red.amp[sel], phase[sel])


def write_ccp4(path: Path, grid: gemmi.FloatGrid) -> None:
    ccp4 = gemmi.Ccp4Map()
    ccp4.grid = grid
    ccp4.update_ccp4_header()
    ccp4.write_ccp4_map(str(path))


def shelx_symmetry(sg: gemmi.SpaceGroup) -> tuple[int, list[str]]:
    """LATT n and the SYMM cards of a group (SHELX: identity, inversion and centring are implied by LATT)."""
    gops = sg.operations()
    letter = gops.find_centering()
    sym = list(gops.sym_ops)
    centro_at_origin = any(op.triplet() == "-x,-y,-z" for op in sym)
    cards = []
    for op in sym:
        det = round(np.linalg.det(np.array(op.rot, dtype=np.float64) / gemmi.Op.DEN))
        if op.triplet() == "x,y,z" or (centro_at_origin and det < 0):
            continue  # with LATT > 0 SHELX adds the inverse of every card itself
        cards.append(op.triplet().upper())
    latt = _LATT.index(letter) if letter in _LATT else 1
    return (latt if centro_at_origin else -latt), cards


def write_res(path: Path, red: Reduced, peaks: list[dict], title: str, wavelength: float | None,
              sfac: tuple[str, ...], unit: tuple[float, ...]) -> list[str]:
    """NAME.res; returns notes (e.g. a composition that had to be guessed)."""
    notes = []
    if not sfac or len(unit) != len(sfac):
        n_c = max(1, round(gemmi.UnitCell(*red.cell6).volume / 18.0))  # ~18 Å³ per non-H atom
        sfac, unit = ("C",), (float(n_c),)
        notes.append(f"no composition in the input: SFAC C, UNIT {n_c} (18 A^3 per atom) written; edit before "
                     "refining")
    latt, cards = shelx_symmetry(red.spacegroup)
    lines = [f"TITL {title}", f"CELL {wavelength or 0.71073:.5f} " + " ".join(_fmt(float(v)) for v in red.cell6),
             f"ZERR {len(red.spacegroup.operations())} 0 0 0 0 0 0", f"LATT {latt}"]
    lines += [f"SYMM {c}" for c in cards]
    lines += ["SFAC " + " ".join(sfac), "UNIT " + " ".join(f"{u:g}" for u in unit), "L.S. 4", "LIST 6",
              "FMAP 2", f"PLAN {max(20, len(peaks))}", "FVAR 1.00000"]
    for i, p in enumerate(peaks, start=1):
        lines.append(f"Q{i:<4d} 1 {p['x']:9.5f} {p['y']:9.5f} {p['z']:9.5f} 11.00000 0.05 {p['height']:8.2f}")
    lines += ["HKLF 4", "END", ""]
    path.write_text("\n".join(lines), encoding="ascii")
    return notes


def write_peaks_csv(path: Path, peaks: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "x", "y", "z", "height", "height_over_rms"])
    for i, p in enumerate(peaks, start=1):
        w.writerow([f"Q{i}", f"{p['x']:.5f}", f"{p['y']:.5f}", f"{p['z']:.5f}", f"{p['height']:.4f}",
                    f"{p['sigma']:.3f}"])
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_solution(tmp: Path, red: Reduced, phase: np.ndarray, summary: dict[str, Any], *, method: str,
                   n_peaks: int, wavelength: float | None, sfac: tuple, unit: tuple) -> dict[str, Any]:
    """Write every output file of the picked phases into the staging folder `tmp`; returns solve.json."""
    name = red.name
    title = f"{name} phased by phaseforge ({method})"
    n_fcf = write_fcf(tmp / f"{name}.fcf", red, phase, title)
    grid = solution_map(red, phase)
    write_ccp4(tmp / f"{name}.ccp4", grid)
    peaks = find_peaks(grid, n_peaks)
    notes = write_res(tmp / f"{name}.res", red, peaks, title, wavelength, sfac, unit)
    write_peaks_csv(tmp / f"{name}.peaks.csv", peaks)
    plot_map(tmp / f"{name}_map.png", grid, peaks, title)
    summary = dict(summary)
    summary["outputs"] = {"fcf": {"file": f"{name}.fcf", "reflections": n_fcf},
                          "map": {"file": f"{name}.ccp4", "grid": [grid.nu, grid.nv, grid.nw]},
                          "res": {"file": f"{name}.res", "q_peaks": len(peaks), "notes": notes},
                          "peaks": f"{name}.peaks.csv", "picture": f"{name}_map.png"}
    summary["version"] = SOLVE_VERSION
    (tmp / "solve.json").write_text(dumps(summary, allow_nan=False), encoding="utf-8")
    return summary
