"""builder/cifsites.py, the one CIF site reader: its rules, hostile inputs (issue 13 §6) and bad U (issue 8 §6).

Every case is a small hand-made CIF string. Each must be skipped with the right reason, or read with a note,
by both consumers (database statistics and evaluation), and never raise a RuntimeWarning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from builder import stats
from builder.cifsites import DEFAULT_UISO, Unusable, load_cif_sites, read_cif_sites
from evaluation.cif import load_structure, parse_structure

CIF_DIR = Path(__file__).parent / "data" / "cif"
pytestmark = pytest.mark.filterwarnings("error")  # a RuntimeWarning anywhere fails the test


def _cif(cell=("5", "6", "7", "90", "100", "90"), sym="_symmetry_space_group_name_H-M 'P 21/c'\n", extra="",
         cols="", rows=("C1 C 0.1 0.2 0.3", "O1 O 0.3 0.1 0.2")) -> bytes:
    a, b, c, al, be, ga = cell
    head = (f"data_t\n_cell_length_a {a}\n_cell_length_b {b}\n_cell_length_c {c}\n_cell_angle_alpha {al}\n"
            f"_cell_angle_beta {be}\n_cell_angle_gamma {ga}\n{sym}{extra}")
    loop = ("loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
            "_atom_site_fract_z\n" + cols)
    return (head + loop + "\n".join(rows) + "\n").encode()


_OCC = "_atom_site_occupancy\n"
_UISO = "_atom_site_U_iso_or_equiv\n"
_P21N_OPS = ("loop_\n_symmetry_equiv_pos_as_xyz\nx,y,z\n-x+1/2,y+1/2,-z+1/2\n-x,-y,-z\nx+1/2,-y+1/2,z+1/2\n")
_P1BAR_OPS = "loop_\n_symmetry_equiv_pos_as_xyz\nx,y,z\n-x,-y,-z\n"


@pytest.mark.parametrize("data,reason,detail", [
    (_cif(cell=("-5", "6", "7", "90", "100", "90")), "bad cell", "a = -5"),
    (_cif(cell=("5", "0", "7", "90", "100", "90")), "bad cell", "b = 0"),
    (_cif(cell=("5", "6", "1e6", "90", "100", "90")), "bad cell", "c = 1e+06"),
    (_cif(cell=("nan", "6", "7", "90", "100", "90")), "no cell", "not all given"),
    (_cif(cell=("?", "6", "7", "90", "100", "90")), "no cell", "not all given"),
    (_cif(cell=("5", "6", "7", "90", "0", "90")), "bad cell", "outside (0, 180)"),
    (_cif(cell=("5", "6", "7", "120", "120", "120")), "bad cell", "give no volume"),
    (_cif(cols=_OCC, rows=("C1 C 0.1 0.2 0.3 1e30",)), "occupancy out of range", "C1 has occupancy 1e+30"),
    (_cif(cols=_OCC, rows=("C1 C 0.1 0.2 0.3 -0.5", "O1 O 0.3 0.1 0.2 1")), "negative occupancy", "C1"),
    (_cif(rows=("C1 C 0.1 0.2 1e30",)), "coordinates out of range", "C1"),
    (_cif(sym="_symmetry_Int_Tables_number 14\n"), "ambiguous space group", "only the number 14"),
    (_cif(sym="_space_group_IT_number 14\n"), "ambiguous space group", "only the number 14"),
    (_cif(sym=""), "no space group", ""),
    (_cif(rows=("C1 C ? 0.2 0.3",)), "missing coordinates", "C1"),
    (_cif(rows=("Q1 Q 0.1 0.2 0.3",)), "unknown element", "Q1"),
    (_cif(cols=_OCC, rows=("C1 C 0.1 0.2 0.3 0",)), "no atoms", ""),
])
def test_hostile_cifs_are_skipped_with_the_right_reason(data: bytes, reason: str, detail: str, tmp_path) -> None:
    with pytest.raises(Unusable) as exc:
        read_cif_sites(data, "t")
    assert exc.value.reason == reason and detail in exc.value.detail
    with pytest.raises(Unusable) as exc:  # evaluation sees the same reason
        parse_structure(data, "t")
    assert exc.value.reason == reason
    (tmp_path / "t.cif").write_bytes(data)  # and so do the database statistics, without failing
    rec = stats.collect([tmp_path / "t.cif"], "all", progress=False)[0]
    assert rec.error is not None and rec.error.split(":")[0] == reason and not rec.selected


def test_symbol_contradicting_the_operators_is_noted_and_the_operators_win() -> None:
    cs = read_cif_sites(_cif(extra=_P21N_OPS), "t")  # H-M says P 21/c, the operators are P 1 21/n 1
    assert cs.spacegroup.xhm() == "P 1 21/n 1"
    assert any("contradicts the operators" in n and "P 1 21/c 1" in n for n in cs.notes)
    ing = parse_structure(_cif(extra=_P21N_OPS), "t")
    assert ing.original_setting == "P 1 21/n 1" and any("contradicts" in n for n in ing.notes)
    with pytest.raises(Unusable) as exc:  # operators of P -1 under a P 21/c symbol: not space group 14
        parse_structure(_cif(extra=_P1BAR_OPS), "t")
    assert exc.value.reason == "another space group" and "P -1" in exc.value.detail
    assert not any("contradicts" in n for n in read_cif_sites(_cif(), "t").notes)  # no operators: nothing to note


def test_negative_and_missing_u_get_the_fallback_and_are_counted() -> None:
    rows = ("C1 C 0.1 0.2 0.3 -0.01", "O1 O 0.3 0.1 0.2 0.02", "N1 N 0.2 0.3 0.1 0", "C2 C 0.4 0.3 0.2 .")
    data = _cif(cols=_UISO, rows=rows)
    cs = read_cif_sites(data, "t")
    assert cs.uiso.tolist() == [DEFAULT_UISO, 0.02, DEFAULT_UISO, DEFAULT_UISO]
    assert cs.u_given.tolist() == [False, True, False, False] and cs.n_u_fallback == 3
    assert any("negative" in n and "C1" in n for n in cs.notes) and any("absent or zero for 2" in n for n in cs.notes)
    ing = parse_structure(data, "t")
    assert ing.n_u_fallback == 3 and ing.uiso.tolist() == cs.uiso.tolist()
    # U = -0.01 Å² would inflate f by exp(8π² 0.01 / 4) = 1.22 at 1 Å (sin θ/λ = 0.5): the fallback damps it
    assert ing.uiso.min() > 0


def test_non_positive_u_eq_gets_the_fallback() -> None:
    aniso = ("loop_\n_atom_site_aniso_label\n_atom_site_aniso_U_11\n_atom_site_aniso_U_22\n_atom_site_aniso_U_33\n"
             "_atom_site_aniso_U_23\n_atom_site_aniso_U_13\n_atom_site_aniso_U_12\n"
             "C1 -0.02 -0.01 -0.03 0 0 0\nO1 0.02 0.03 0.04 0 0 0\n")
    data = _cif(cols=_UISO, rows=("C1 C 0.1 0.2 0.3 0.02", "O1 O 0.3 0.1 0.2 0.5")) + aniso.encode()
    cs = read_cif_sites(data, "t")
    assert cs.uiso[0] == DEFAULT_UISO and not cs.u_given[0]  # U_eq < 0 wins over U_iso 0.02, and is replaced
    # monoclinic U_eq = [U22 + (U11 + U33 + 2 U13 cos β) / sin² β] / 3 (Fischer & Tillmanns 1988), not U_iso 0.5
    assert cs.uiso[1] == pytest.approx((0.03 + (0.02 + 0.04) / np.sin(np.radians(100)) ** 2) / 3, rel=1e-9)
    assert cs.u_given.tolist() == [False, True] and cs.n_u_fallback == 1


def test_dummy_sites_are_left_out() -> None:
    """Old COD/ICSD entries park unlocated H as one `dum` site at -1,-1,-1 with the H count as occupancy
    (COD 1000128: 'H1 H1+ 4 e -1. -1. -1. 12. 0 dum'); on an inversion centre it would count as an atom there."""
    cols = "_atom_site_occupancy\n_atom_site_calc_flag\n"
    data = _cif(cols=cols, rows=("C1 C 0.1 0.2 0.3 1. d", "O1 O 0.3 0.1 0.2 1. d", "H1 H -1. -1. -1. 12. dum"))
    cs = read_cif_sites(data, "t")
    assert cs.labels == ("C1", "O1") and any("dummy" in n for n in cs.notes)
    ing = parse_structure(data, "t")
    assert ing.n_special == 0 and ing.n_h == 0


def test_fractions_and_clipped_occupancy() -> None:
    cs = read_cif_sites(_cif(cols=_OCC, rows=("C1 C 1/4 0.2 -3/4 1.005", "O1 O 0.3 0.1 0.2 0.5")), "t")
    np.testing.assert_allclose(cs.frac[0], [0.25, 0.2, -0.75])
    assert cs.occ.tolist() == [1.0, 0.5]


def test_stats_and_evaluation_read_the_same_sites() -> None:
    """One reader: the statistics record and the ingested structure agree on every fixture of space group 14."""
    for cod_id in ("9004097", "2101932", "1209222"):
        path = CIF_DIR / f"{cod_id}.cif"
        cs, ing = load_cif_sites(path), load_structure(path)
        rec = stats.collect([path], "all", progress=False)[0]
        assert cs.labels == ing.labels and rec.n_sites == ing.n_atoms == len(cs.z)
        assert rec.compound_class == ing.compound_class and rec.n_u_fallback == ing.n_u_fallback
        np.testing.assert_allclose(rec.cell, ing.cell6, atol=1e-9)  # the reduced P 1 21/c 1 cell in both
        assert rec.n_inversion_occupied == ing.n_special
