"""`solve --method charge-flipping` outside the centrosymmetric groups: continuous phases in the .fcf, a map whose
peaks sit on the atoms after the origin/hand found against the model, SHELX cards gemmi reads back, and r free
of origin and hand. Fixtures (tests/data/noncentro/README.md): measured β-glycine in P3₂ (COD 4037663), and |F|
calculated with gemmi from the COD models 2000583 (P2₁2₁2₁) and 2100147 (P2₁)."""
from __future__ import annotations

import json
from pathlib import Path

import gemmi
import numpy as np
import pytest
from click.testing import CliRunner

from builder.symmetry import images, space_group_ops
from evaluation.cli import cli
from evaluation.maps import find_peaks
from evaluation.outputs import solution_map, write_solution
from evaluation.reduce import reduce_measured
from evaluation.reflections_io import parse_ins, read_input, shelx_ops
from evaluation.solve import move_solution, score_against_model, solve_reduced

DATA = Path(__file__).parent / "data" / "noncentro"
INS = {  # LATT -n: no inversion; SYMM lists every operation but the identity (SHELX's convention)
    "2000583": "LATT -1\nSYMM 1/2-X, -Y, 1/2+Z\nSYMM -X, 1/2+Y, 1/2-Z\nSYMM 1/2+X, 1/2-Y, -Z\nSFAC I O H\n"
               "UNIT 4 12 4\n",
    "2100147": "LATT -1\nSYMM -X, 1/2+Y, -Z\nSFAC C H F O\nUNIT 12 10 2 2\n",
}


def model(cid: str) -> gemmi.SmallStructure:
    st = gemmi.read_small_structure(str(DATA / f"{cid}.cif"))
    st.change_occupancies_to_crystallographic()
    return st


def model_f(st: gemmi.SmallStructure, hkl: np.ndarray) -> np.ndarray:
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    return np.array([calc.calculate_sf_from_small_structure(st, [int(v) for v in h]) for h in hkl])


def write_hkl(cid: str, folder: Path, d_min: float = 0.9) -> Path:
    """HKLF 4 intensities calculated from the model (unique reflections, σ = 1 % + 0.5) and its .ins."""
    st = model(cid)
    hkl = np.array(gemmi.make_miller_array(st.cell, st.spacegroup, d_min, 0, True))
    hkl = hkl[np.any(hkl != 0, axis=1)]
    i = np.abs(model_f(st, hkl)) ** 2
    i *= 9000.0 / i.max()
    path = folder / f"{cid}.hkl"
    path.write_text("\n".join(f"{h:4d}{k:4d}{l:4d}{v:8.2f}{0.01 * v + 0.5:8.2f}" for (h, k, l), v in zip(hkl, i))
                    + "\n   0   0   0    0.00    0.00\n")
    cell = " ".join(f"{v:.4f}" for v in st.cell.parameters)
    path.with_suffix(".ins").write_text(f"TITL {cid}\nCELL 0.71073 {cell}\n{INS[cid]}HKLF 4\nEND\n")
    return path


def peaks_on_atoms(peaks: list[dict], st: gemmi.SmallStructure, n: int, tol: float = 0.3) -> int:
    """How many of the n highest peaks lie within tol Å of a non-H atom of the model (any symmetry image)."""
    ops = space_group_ops(st.spacegroup.xhm())
    atoms = np.array([s.fract.tolist() for s in st.sites if s.element.name not in ("H", "D")])
    img = images(ops.rot, ops.tran, atoms).reshape(-1, 3)
    orth = np.array(st.cell.orth.mat.tolist())
    hits = 0
    for p in peaks[:n]:
        d = np.array([p["x"], p["y"], p["z"]]) - img
        hits += np.linalg.norm((d - np.round(d)) @ orth.T, axis=1).min() < tol
    return hits


@pytest.fixture(scope="module")
def glycine() -> tuple:
    """Measured P3₂ data phased by charge flipping on every reflection (seed 1: its chosen P1 map comes out in
    P3₁'s hand, r = 0.57, unless charge flipping picks the hand that obeys the group)."""
    meas = read_input("4037663.cif", data=(DATA / "4037663.cif").read_bytes())
    red = reduce_measured(meas)
    (res,), _ = solve_reduced(red, "charge-flipping", seed=1)
    return meas, red, res


def test_measured_p32_is_solved_in_its_own_hand(glycine):
    """P3₂ is enantiomorphic: the inverted structure is in P3₁, so only one hand is right (and r does not credit
    the other); charge flipping must take the P1 map in the hand that obeys P3₂."""
    meas, red, res = glycine
    assert red.spacegroup.xhm() == "P 32" and res.details["converged"] and res.details["cycles"] < 150
    fit = score_against_model(red, meas.model, res.phase)
    assert fit["r"] > 0.95 and fit["inverted"] is False and "both hands" not in fit["note"]
    acentric = ~np.asarray(red.spacegroup.operations().centric_flag_array(red.hkl.astype(np.int32)), bool)
    deg = np.degrees(res.phase[acentric]) % 90.0
    assert np.mean(np.minimum(deg, 90.0 - deg) > 1.0) > 0.9  # continuous phases, not 0/π


def test_measured_p32_outputs_overlay_the_model(glycine, tmp_path: Path):
    meas, red, res = glycine
    fit = score_against_model(red, meas.model, res.phase)
    phase = move_solution(red, res.phase, fit["origin_shift"], fit["inverted"])
    left = np.array(score_against_model(red, meas.model, phase)["origin_shift"])
    assert np.allclose(left - np.round(left), 0, atol=1e-4)  # moved: no shift left to find
    write_solution(tmp_path, red, phase, {}, method="charge-flipping", n_peaks=8, wavelength=meas.wavelength,
                   sfac=meas.sfac, unit=meas.unit)
    block = gemmi.cif.read(str(tmp_path / "4037663.fcf")).sole_block()
    tab = block.find("_refln_", ["index_h", "index_k", "index_l", "phase_calc"])
    hkl = np.array([[int(tab[r][c]) for c in range(3)] for r in range(len(tab))])
    deg = np.array([float(tab[r][3]) for r in range(len(tab))])
    assert np.array_equal(hkl, red.hkl[red.usable]) and np.all((deg >= 0) & (deg < 360))
    assert np.allclose(np.cos(np.radians(deg) - phase[red.usable]), 1.0, atol=2e-4)  # degrees, 0.1° written
    ins = parse_ins((tmp_path / "4037663.res").read_text())
    assert ins["latt"] == -1
    assert gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(o) for o in shelx_ops(-1, ins["symm"])])).xhm() \
        == "P 32"
    st = gemmi.read_small_structure(str(DATA / "4037663.cif"))
    peaks = find_peaks(gemmi.read_ccp4_map(str(tmp_path / "4037663.ccp4")).grid, 8)
    assert peaks_on_atoms(peaks, st, 5) == 5  # C2 N O2: the five highest peaks are the five non-H atoms


def test_solve_cli_phases_p212121_with_continuous_phases(tmp_path: Path):
    hkl_file = write_hkl("2000583", tmp_path)
    res = CliRunner().invoke(cli, ["solve", str(hkl_file), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "solve.json").read_text())
    assert summary["reduction"]["symmetry"]["space_group"] == "P 21 21 21" and summary["picked"] == "charge-flipping"
    assert "either hand" in summary["origin"]
    block = gemmi.cif.read(str(tmp_path / "out" / "2000583.fcf")).sole_block()
    tab = block.find("_refln_", ["index_h", "index_k", "index_l", "phase_calc"])
    hkl = np.array([[int(tab[r][c]) for c in range(3)] for r in range(len(tab))])
    phi = np.radians([float(tab[r][3]) for r in range(len(tab))])
    f = model_f(model("2000583"), hkl)
    w, best = np.abs(f) ** 2, -1.0
    for hand in (1, -1):  # written out: the 8 origins {0, ½}³ of P2₁2₁2₁ and both hands
        for t in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
            best = max(best, float(np.sum(w * np.cos(hand * phi + np.pi * hkl @ t - np.angle(f))) / w.sum()))
    assert best > 0.95
    dev = np.degrees(phi) % 90.0
    off = np.minimum(dev, 90.0 - dev)  # distance from the nearest multiple of 90°
    centric = np.any(hkl == 0, axis=1)  # hk0, h0l, 0kl: 0, 90, 180 or 270° at the standard origin
    assert np.all(off[centric] < 0.11) and np.mean(off[~centric] > 1.0) > 0.9  # the others: continuous
    ins = parse_ins((tmp_path / "out" / "2000583.res").read_text())
    assert gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(o) for o in shelx_ops(ins["latt"], ins["symm"])
                                                        ])).xhm() == "P 21 21 21"


def test_polar_p21_solution_moves_onto_the_model(tmp_path: Path):
    """P2₁: the origin is free along b and either hand fits |F|; the shift and hand that r finds put the map's
    peaks on the model's atoms."""
    meas = read_input(str(write_hkl("2100147", tmp_path)))
    red = reduce_measured(meas)
    (res,), _ = solve_reduced(red, "charge-flipping", seed=0)
    fit = score_against_model(red, (DATA / "2100147.cif").read_bytes(), res.phase)
    assert fit["r"] > 0.95 and "both hands" in fit["note"]
    phase = move_solution(red, res.phase, fit["origin_shift"], fit["inverted"])
    peaks = find_peaks(solution_map(red, phase), 12)
    assert peaks_on_atoms(peaks, model("2100147"), 8) >= 7  # C6 F O: 8 non-H atoms
