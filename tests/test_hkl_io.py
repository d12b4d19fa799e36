"""Readers of measured reflections: SHELX .hkl + .ins/.res, CIF/.fcf (_refln loops, embedded SHELX files), free
format; on small hand-made files and on COD structures shipped in the cod-p21c-measured archive."""
from __future__ import annotations

import functools
from pathlib import Path

import gemmi
import numpy as np
import pytest

from evaluation.reflections_io import parse_hkl, parse_ins, read_input, shelx_ops
from evaluation.testset import iter_testset_cifs

# A P2₁/n crystal as SHELXL writes it (LATT 1: centrosymmetric P; SYMM lists only the 2₁ with the n glide).
INS = """TITL test in P2(1)/n
CELL 0.71073   9.9388   5.0999  10.6755  90.000  94.136  90.000
ZERR    4.00   0.0013   0.0006   0.0014   0.000   0.004   0.000
LATT 1
SYMM 0.5-X, 0.5+Y, 0.5-Z
SFAC C  H  N  O  S
UNIT 12 24 8 8 4
REM a comment line
L.S. 4
FVAR 1.0
HKLF 4
END
"""
HKL = ("   1   0   1   12.34    0.56\n"
       "  -1   0  -1   12.80    0.60\n"
       "   0   2   0  100.00    2.00   1\n"
       "   2   1  -3   -0.45    0.30\n"
       "   0   0   0    0.00    0.00\n"
       "   9   9   9  999.99    9.99\n")  # after the terminator: ignored, as by SHELXL


@functools.cache
def _archive() -> dict[str, bytes]:
    return dict(iter_testset_cifs("cod-p21c-measured"))


def measured_cif(cid: str) -> bytes:
    """A COD CIF with measured reflections from the shipped cod-p21c-measured archive."""
    return _archive()[cid]


def test_hkl_fixed_columns_stop_at_000_and_keep_signs():
    hkl, value, sigma = parse_hkl(HKL)
    assert hkl.tolist() == [[1, 0, 1], [-1, 0, -1], [0, 2, 0], [2, 1, -3]]
    assert value.tolist() == [12.34, 12.80, 100.0, -0.45] and sigma.tolist() == [0.56, 0.60, 2.0, 0.30]


def test_hkl_blank_record_ends_the_data_like_fortran():
    hkl, *_ = parse_hkl("\n" + HKL.splitlines()[0] + "\n\n_computing_structure_solution 'SHELXT'\n")
    assert hkl.tolist() == [[1, 0, 1]]


def test_hkl_columns_without_blanks_are_read_by_position():
    # 3I4 leaves no blank between large indices: "-10-11 12" is h=-10, k=-11, l=12
    hkl, value, _ = parse_hkl(" -10 -11  12 1234.56   12.34\n")
    assert hkl.tolist() == [[-10, -11, 12]] and value.tolist() == [1234.56]


@pytest.mark.parametrize("line, where", [("   1   0   x   12.34    0.56", "line 2"),
                                         ("   1   0   1   12.3a    0.56", "line 2"),
                                         ("   1   0   1", "line 2")])
def test_hkl_malformed_line_names_its_number(line: str, where: str):
    with pytest.raises(ValueError, match=where):
        parse_hkl(HKL.splitlines()[0] + "\n" + line + "\n")


def test_ins_cards_and_symmetry_from_latt_symm():
    ins = parse_ins(INS)
    assert ins["cell6"] == (9.9388, 5.0999, 10.6755, 90.0, 94.136, 90.0) and ins["wavelength"] == 0.71073
    assert ins["sfac"] == ["C", "H", "N", "O", "S"] and ins["unit"] == [12, 24, 8, 8, 4] and ins["hklf"] == 4
    ops = shelx_ops(ins["latt"], ins["symm"])
    assert len(ops) == 4 and gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(o) for o in ops])).xhm() \
        == "P 1 21/n 1"


def test_ins_long_sfac_continuation_and_centring():
    text = ("CELL 1.54 5 9 18 90 100 90\nLATT 7\nSYMM -X, Y, 1/2-Z\n"
            "SFAC C 2.31 20.84 1.02 10.21 1.59 0.57 0.87 =\n   51.65 0.22 0.00 0.00 11.5 0.68 12.01\nSFAC O\n"
            "UNIT 32 16\nHKLF 4 1 0 0 1 0 -1 0 1 0 0\n")
    ins = parse_ins(text)
    assert ins["sfac"] == ["C", "O"] and ins["hklf_matrix"].tolist() == [[0, 0, 1], [0, -1, 0], [1, 0, 0]]
    ops = shelx_ops(ins["latt"], ins["symm"])
    assert gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(o) for o in ops])).xhm() == "C 1 2/c 1"


def test_ins_without_cell_is_refused():
    with pytest.raises(ValueError, match="no CELL"):
        parse_ins("TITL x\nLATT 1\nSYMM -X, 1/2+Y, 1/2-Z\nHKLF 4\n")


def test_hkl_with_ins_beside_and_hklf3(tmp_path: Path):
    (tmp_path / "x.hkl").write_text(HKL)
    (tmp_path / "x.ins").write_text(INS)
    m = read_input(tmp_path / "x.hkl")
    assert m.kind == "intensity" and m.cell6[0] == 9.9388 and len(m.symops) == 4 and m.sfac[-1] == "S"
    assert [s["role"] for s in m.sources] == ["reflections", "instructions"]
    assert read_input(tmp_path / "x.hkl", hklf=3).kind == "amplitude"
    alone = tmp_path / "alone.hkl"
    alone.write_text(HKL)
    assert read_input(alone).cell6 is None and read_input(alone).symops is None


def test_hklf_matrix_applies_to_indices(tmp_path: Path):
    (tmp_path / "y.hkl").write_text(HKL)
    (tmp_path / "y.ins").write_text(INS.replace("HKLF 4", "HKLF 4 1  0 0 1  0 1 0  -1 0 0"))
    m = read_input(tmp_path / "y.hkl")
    assert m.hkl[0].tolist() == [1, 0, -1] and m.hkl[2].tolist() == [0, 2, 0]  # new h = r11 h + r12 k + r13 l


def test_free_format_phai_style_sigma_zero(tmp_path: Path):
    p = tmp_path / "phai.txt"
    p.write_text("  -6   0   2    0.00    0.00\n  -6   1   1    0.03    0.00\n# comment\n 1 2 3 0.5\n"
                 "   0   0   0    0.00    0.00\n")
    m = read_input(p)
    assert m.kind == "amplitude" and m.hkl.tolist() == [[-6, 0, 2], [-6, 1, 1], [1, 2, 3]]
    assert m.sigma.tolist() == [0.0, 0.0, 0.0]
    p.write_text("1 2 3 4.5 0.1\n1 2\n")
    with pytest.raises(ValueError, match="phai.txt line 2"):
        read_input(p)


REFLN_CIF = """data_handmade
_cell_length_a 7.2359(5)
_cell_length_b 7.3713(5)
_cell_length_c 9.4768(7)
_cell_angle_alpha 90
_cell_angle_beta 98.403(10)
_cell_angle_gamma 90
_space_group_name_H-M_alt 'P 1 21/c 1'
loop_
_space_group_symop_operation_xyz
'x, y, z'
'-x, y+1/2, -z+1/2'
'-x, -y, -z'
'x, -y+1/2, z+1/2'
loop_
_refln_index_h
_refln_index_k
_refln_index_l
_refln_F_meas
_refln_F_sigma
1 0 0 10.5 0.2
0 1 1 3.25 0.1
2 1 -1 ? ?
"""


def test_cif_refln_loop_of_amplitudes(tmp_path: Path):
    p = tmp_path / "loop.fcf"
    p.write_text(REFLN_CIF)
    m = read_input(p)
    assert m.kind == "amplitude" and m.hkl.tolist() == [[1, 0, 0], [0, 1, 1]]  # '?' rows are unmeasured
    assert m.value.tolist() == [10.5, 3.25] and m.cell6[1] == 7.3713 and m.symbol == "P 1 21/c 1"
    assert len(m.symops) == 4 and m.model is None


def test_cif_two_blocks_need_block(tmp_path: Path):
    p = tmp_path / "two.cif"
    p.write_text(REFLN_CIF + "\n" + REFLN_CIF.replace("data_handmade", "data_second"))
    with pytest.raises(ValueError, match="2 data blocks with reflections .*--block"):
        read_input(p)
    assert read_input(p, block="second").hkl.shape == (2, 3)
    with pytest.raises(ValueError, match="no data block 'third'"):
        read_input(p, block="third")


def test_cod_embedded_shelx_files_match_the_deposit():
    data = measured_cif("2242302")
    m = read_input("2242302.cif", data=data)
    block = gemmi.cif.read_string(data.decode()).sole_block()
    assert m.kind == "intensity" and m.model is not None
    assert len(m.hkl) == 5755  # every line of the embedded .hkl before its 0 0 0 line
    assert np.allclose(m.cell6, [gemmi.cif.as_number(block.find_value(f"_cell_length_{x}")) for x in "abc"] +
                       [90.0, 94.82, 90.0], atol=1e-3)
    assert m.sfac == ("C", "H", "O", "S") and m.wavelength == 0.71073


def test_cod_refln_loop_with_and_without_sigma():
    with_sigma = read_input("2022026.cif", data=measured_cif("2022026"))
    assert with_sigma.kind == "intensity" and len(with_sigma.hkl) == 5136 and with_sigma.sigma is not None
    powder = read_input("1518592.cif", data=measured_cif("1518592"))  # Rietveld-extracted F², no σ column
    assert powder.sigma is None and len(powder.hkl) == 538
