"""`phaseforge-eval solve` end to end: each bad input of the issue gives one `error:` line, exit 2 and nothing
under --out; occupied --out folders are refused, reruns resume; σ = 0 warns; charge flipping in another space
group (C2/c); `run --testset cod-p21c-measured` puts r from measured |F| beside r from calculated |F|."""
from __future__ import annotations

import json
from pathlib import Path

import gemmi
import numpy as np
import pytest
from click.testing import CliRunner

from evaluation.cli import cli
from evaluation.testset import load_testset
from tests.test_hkl_io import HKL, INS, REFLN_CIF, measured_cif

TALC = Path(__file__).parent / "data" / "cif" / "9008040.cif"  # Mg3Si4O10(OH)2, C 1 2/c 1


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def errors(res) -> list[str]:
    return [ln for ln in res.output.splitlines() if ln.startswith("error:")]


def write_model_hkl(cif: Path, out: Path, d_min: float = 0.8) -> gemmi.SmallStructure:
    """HKLF 4 intensities of a CIF model (all equivalents, σ = 1 % + 0.5), and its .ins: synthetic data."""
    st = gemmi.read_small_structure(str(cif))
    st.change_occupancies_to_crystallographic()
    hkl = np.array(gemmi.make_miller_array(st.cell, st.spacegroup, d_min, 0, False))
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    i = np.abs([calc.calculate_sf_from_small_structure(st, [int(v) for v in h]) for h in hkl]) ** 2
    i *= 9000.0 / i.max()
    lines = [f"{h:4d}{k:4d}{l:4d}{v:8.2f}{0.01 * v + 0.5:8.2f}" for (h, k, l), v in zip(hkl, i)]
    out.write_text("\n".join(lines + ["   0   0   0    0.00    0.00", ""]))
    latt = "7" if st.spacegroup.hm.startswith("C") else "1"
    ops = [op.triplet() for op in st.spacegroup.operations().sym_ops if op.triplet() != "x,y,z"
           and round(np.linalg.det(np.array(op.rot) / 24)) > 0]
    cell = " ".join(f"{v:.4f}" for v in st.cell.parameters)
    out.with_suffix(".ins").write_text(f"TITL model\nCELL 0.71073 {cell}\nLATT {latt}\n"
                                       + "".join(f"SYMM {o}\n" for o in ops) + "SFAC O Mg Si H\nUNIT 48 12 16 8\n"
                                       "HKLF 4\nEND\n")
    return st


@pytest.fixture()
def shelx(tmp_path: Path) -> Path:
    (tmp_path / "x.hkl").write_text(HKL)
    (tmp_path / "x.ins").write_text(INS)
    return tmp_path


BAD = {
    "malformed hkl line": (lambda d: (d / "x.hkl").write_text(HKL.replace("   2   1  -3", "   2   1  -z")),
                           ["x.hkl"], "x.hkl line 4"),
    "no cell": (lambda d: (d / "x.ins").unlink(), ["x.hkl", "--spacegroup", "P21/n"], "no cell"),
    "unknown space group": (lambda d: (d / "x.ins").unlink(),
                            ["x.hkl", "--cell", 9.9, 5.1, 10.7, 90, 94, 90, "--spacegroup", "P 21/q"],
                            "unknown space group"),
    "contradictory space group": (lambda d: None, ["x.hkl", "--spacegroup", "P21/c"], "contradictory space group"),
    "model outside P2_1/c": (lambda d: (d / "x.ins").write_text(INS.replace("SYMM 0.5-X, 0.5+Y, 0.5-Z", "SYMM -X, Y, 1/2-Z").replace(
        "LATT 1", "LATT 7")), ["x.hkl", "--method", "model", "--checkpoint", "none.pt"],
        "network is P2_1/c-only .* charge flipping works in any group"),
    "model in P2_1 (no centre of symmetry)": (lambda d: (d / "x.ins").write_text(INS.replace(
        "SYMM 0.5-X, 0.5+Y, 0.5-Z", "SYMM -X, 1/2+Y, -Z").replace("LATT 1", "LATT -1")),
        ["x.hkl", "--method", "model+cf", "--checkpoint", "none.pt"],
        "network is P2_1/c-only and this is P 1 21 1 .* charge flipping works in any group"),
    "all intensities <= 0": (lambda d: (d / "x.hkl").write_text("   1   0   1   -1.00    0.50\n   0   2   0    0.00    1.00\n"),
                             ["x.hkl"], "all 2 intensities .* <= 0"),
    "ins without CELL": (lambda d: (d / "x.ins").write_text(INS.replace("CELL", "REM CELL")), ["x.hkl"], "no CELL"),
    "two data blocks": (lambda d: (d / "two.cif").write_text(REFLN_CIF + REFLN_CIF.replace("data_handmade", "data_b")),
                        ["two.cif"], "2 data blocks with reflections .* --block"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_error_line_exit_2_nothing_written(shelx: Path, case: str):
    prepare, args, match = BAD[case]
    prepare(shelx)
    out = shelx / "out"
    res = invoke("solve", *[shelx / a if str(a).endswith((".hkl", ".cif")) else a for a in args], "--out", out)
    assert res.exit_code == 2, res.output
    assert len(errors(res)) == 1 and __import__("re").search(match, errors(res)[0]), res.output
    assert not out.exists() and not any(p.name.startswith(".out") for p in shelx.iterdir())


def test_occupied_out_is_refused_and_a_rerun_resumes(tmp_path: Path):
    cif = tmp_path / "2242302.cif"
    cif.write_bytes(measured_cif("2242302"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    res = invoke("solve", cif, "--out", busy)
    assert res.exit_code == 2 and "already holds other results" in errors(res)[0]
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    out = tmp_path / "out"
    assert invoke("solve", cif, "--out", out).exit_code == 0
    first = (out / "solve.json").read_bytes()
    again = invoke("solve", cif, "--out", out)
    assert again.exit_code == 0 and "nothing to do" in again.output and (out / "solve.json").read_bytes() == first
    other = invoke("solve", cif, "--out", out, "--seed", "1")
    assert other.exit_code == 2 and "--overwrite" in errors(other)[0]
    summary = json.loads(first)
    assert summary["picked"] == "charge-flipping" and summary["methods"]["charge-flipping"]["against_model"]["r"] > 0.99
    assert {s["sha256"] for s in summary["inputs"]} == {__import__("hashlib").sha256(cif.read_bytes()).hexdigest()}
    assert sorted(p.name for p in out.iterdir()) == sorted(["2242302.fcf", "2242302.ccp4", "2242302.res",
                                                            "2242302.peaks.csv", "2242302_map.png", "solve.json"])


def test_free_format_sigma_zero_warns_and_charge_flipping_solves_c2c(tmp_path: Path):
    st = write_model_hkl(TALC, tmp_path / "talc.hkl")
    res = invoke("solve", tmp_path / "talc.hkl", "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "t" / "solve.json").read_text())
    assert summary["reduction"]["symmetry"]["space_group"] == "C 1 2/c 1" and summary["picked"] == "charge-flipping"
    block = gemmi.cif.read(str(tmp_path / "t" / "talc.fcf")).sole_block()
    tab = block.find("_refln_", ["index_h", "index_k", "index_l", "F_calc", "phase_calc"])
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    hkl = [[int(tab[r][c]) for c in range(3)] for r in range(len(tab))]
    f = np.array([calc.calculate_sf_from_small_structure(st, h) for h in hkl])
    cos = np.cos(np.radians([float(tab[r][4]) for r in range(len(tab))]) - np.angle(f))
    w = np.abs(f) ** 2
    assert max(np.sum(w * cos * s) for s in (1, -1)) / w.sum() > 0.9  # right up to the origin choice
    # the PhAI notebook's own format: h k l F sigma with sigma = 0.00 on every line
    free = tmp_path / "talc.txt"
    free.write_text("\n".join(f"{h} {k} {l} {np.sqrt(v):.2f} 0.00" for (h, k, l), v in
                              zip(hkl, np.abs(f) ** 2)) + "\n")
    cell = [f"{v:.4f}" for v in st.cell.parameters]
    res = invoke("solve", free, "--cell", *cell, "--spacegroup", "C2/c", "--out", tmp_path / "f")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "f" / "solve.json").read_text())
    assert any("unit weights" in w for w in summary["warnings"]) and summary["reduction"]["sigma"] == "unit weights"


def test_run_on_the_measured_test_set_reports_r_beside_r_calc(tmp_path: Path):
    res = invoke("run", "--testset", "cod-p21c-measured", "--method", "true", "--out", tmp_path / "t", "--no-plots")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "t" / "report.json").read_text())
    n = load_testset("cod-p21c-measured")["count"]  # every structure of the set, none skipped
    assert rep["n"] == n and rep["median_r"] == 1.0 and rep["calculated"]["median_r"] == 1.0
    rows = (tmp_path / "t" / "results.csv").read_text().splitlines()
    assert rows[0].endswith("r_calc,mpe_calc,completeness") and len(rows) == n + 1
    res = invoke("run", "--testset", "cod-p21c-measured", "--method", "random", "--limit", "5", "--out", tmp_path / "r",
                 "--no-plots")
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["n"] == 5 and rep["f_solved"] == 0.0 and abs(rep["median_r"]) < 0.3 and abs(rep["calculated"]["median_r"]) < 0.3
