"""Data reduction: symmetry from operations and its contradictions, σ-weighted 2/m merging (checked against
gemmi's own merge), R_int by hand, French–Wilson amplitudes (quadrature vs scipy, simulated data), absences,
completeness, and the transformation of a P2₁/n data set to P2₁/c."""
from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np
import pytest
from scipy import integrate

from evaluation.french_wilson import french_wilson, shell_mean
from evaluation.reduce import merge, reduce_measured, resolve_crystal
from evaluation.reflections_io import Measured, read_input, shelx_ops
from manifests.seeds import seeded_rng
from tests.test_hkl_io import measured_cif

CRYOLITE = Path(__file__).parent / "data" / "cif" / "9004097.cif"  # Na3AlF6, P 1 21/n 1
P21N_OPS = shelx_ops(1, ["0.5-X,0.5+Y,0.5-Z"])


def model_data(path: Path = CRYOLITE, d_min: float = 0.9) -> tuple[gemmi.SmallStructure, np.ndarray, np.ndarray]:
    """Every reflection (all symmetry equivalents) to d_min with |F|² of the model, by gemmi."""
    st = gemmi.read_small_structure(str(path))
    st.change_occupancies_to_crystallographic()
    hkl = np.array(gemmi.make_miller_array(st.cell, st.spacegroup, d_min, 0, False))
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    f = np.array([calc.calculate_sf_from_small_structure(st, [int(v) for v in h]) for h in hkl])
    return st, hkl, np.abs(f) ** 2


def measured(hkl, value, sigma=None, kind="intensity", cell=None, ops=P21N_OPS, name="sim") -> Measured:
    return Measured(name=name, hkl=np.asarray(hkl, dtype=np.int32), value=np.asarray(value, dtype=np.float64),
                    sigma=None if sigma is None else np.asarray(sigma, dtype=np.float64), kind=kind,
                    cell6=cell or (7.0, 8.0, 9.0, 90.0, 100.0, 90.0), symops=ops)


def test_merge_agrees_with_gemmi_merge_in_place():
    st, hkl, i = model_data()
    rng = seeded_rng(0, 1)
    sigma = 0.02 * i + 0.5
    obs = i + sigma * rng.standard_normal(len(i))
    mine = merge(np.array(st.cell.parameters), st.spacegroup, hkl, obs, sigma)
    it = gemmi.Intensities()
    it.set_data(st.cell, st.spacegroup, hkl.astype(np.int32), obs, sigma)
    it.merge_in_place(gemmi.DataType.Mean)
    order = np.lexsort(np.array(it.miller_array).T[::-1])
    assert np.array_equal(mine["hkl"], np.array(it.miller_array)[order])
    assert np.allclose(mine["value"], np.array(it.value_array)[order], rtol=1e-9)
    assert np.allclose(mine["sigma"], np.array(it.sigma_array)[order], rtol=1e-9)
    assert mine["n_unique"] == gemmi.count_reflections(st.cell, st.spacegroup, 0.9) < mine["n_in"]


def test_friedel_and_2m_equivalents_merge_with_r_int_by_hand():
    # (1 2 3) measured as itself, its Friedel mate and its two 2/m images; (2 0 1) measured once.
    hkl = [[1, 2, 3], [-1, -2, -3], [1, -2, 3], [-1, 2, -3], [2, 0, 2]]
    red = reduce_measured(measured(hkl, [10.0, 12.0, 11.0, 11.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0]))
    m = red.report["merging"]
    assert m["n_in"] == 5 and m["n_unique"] == 2 and m["n_multiple"] == 1
    assert m["r_int"] == pytest.approx((1 + 1 + 0 + 0) / 44, abs=1e-6)  # Σ|I − <I>| / Σ I over the merged one only
    assert sorted(red.value.tolist()) == [5.0, 11.0]


def test_french_wilson_against_scipy_quadrature():
    i_obs = np.array([-3.0, -0.5, 0.0, 0.7, 2.0, 9.0, 400.0])
    sigma = np.array([1.0, 1.0, 0.5, 1.0, 1.0, 1.5, 4.0])
    big = np.full(7, 6.0)
    for centric in (True, False):
        f, _ = french_wilson(i_obs, sigma, big, np.full(7, centric))
        for k in range(7):
            def post(x, m):
                prior = np.exp(-x * x / (2 * big[k])) if centric else x * np.exp(-x * x / big[k])
                return x**m * prior * np.exp(-((i_obs[k] - x * x) ** 2) / (2 * sigma[k] ** 2))
            top = np.sqrt(max(i_obs[k], 0) + 20 * sigma[k])
            ref = integrate.quad(post, 0, top, args=(1,), points=[np.sqrt(max(i_obs[k], 0))])[0] / \
                integrate.quad(post, 0, top, args=(0,), points=[np.sqrt(max(i_obs[k], 0))])[0]
            assert f[k] == pytest.approx(ref, rel=2e-3), (centric, k)
    assert f[-1] == pytest.approx(20.0, rel=5e-3)  # strong: sqrt(I)
    ramp, _ = french_wilson(np.linspace(-4, 4, 9), np.ones(9), np.full(9, 6.0), np.ones(9, dtype=bool))
    assert np.all(np.diff(ramp) > 0) and ramp[0] > 0  # monotone in I, positive for negative I


def test_french_wilson_beats_the_square_root_on_simulated_centric_data():
    rng = seeded_rng(0, 2)
    n = 20000
    f_true = np.abs(rng.standard_normal(n)) * np.sqrt(10.0)  # centric Wilson: F ~ |N(0, Σ)|, Σ = 10
    sigma = np.full(n, 3.0)
    i_obs = f_true**2 + sigma * rng.standard_normal(n)
    fw, _ = french_wilson(i_obs, sigma, shell_mean(i_obs, np.ones(n), np.ones(n)), np.ones(n, dtype=bool))
    naive = np.sqrt(np.maximum(i_obs, 0.0))
    assert np.sqrt(np.mean((fw - f_true) ** 2)) < 0.9 * np.sqrt(np.mean((naive - f_true) ** 2))
    weak = i_obs < 2 * sigma
    assert abs(np.mean(fw[weak] - f_true[weak])) < 0.1 * np.mean(f_true[weak])  # unbiased where it matters


def test_absence_violations_are_counted_and_warned():
    # P 1 21/n 1: h0l with h + l odd and 0k0 with k odd are absent.
    hkl = [[1, 0, 0], [0, 3, 0], [2, 0, 1], [0, 1, 0], [1, 1, 1], [2, 0, 2]]
    red = reduce_measured(measured(hkl, [50.0, 40.0, 0.5, 0.2, 30.0, 20.0], [1.0] * 6))
    a = red.report["absences"]
    assert a["n_absent"] == 4 and a["n_violations"] == 2
    assert sorted(tuple(np.abs(w["hkl"])) for w in a["worst"]) == [(0, 3, 0), (1, 0, 0)]
    assert any("systematically absent" in w for w in red.warnings)
    assert red.usable.sum() == 2


def test_sigma_missing_or_not_positive_gives_unit_weights_and_a_warning():
    hkl, vals = [[1, 1, 1], [-1, -1, -1], [1, 2, 3]], [10.0, 14.0, 3.0]
    for sig in (None, [0.0, 0.0, 0.0]):
        red = reduce_measured(measured(hkl, vals, sig))
        assert red.report["sigma"] == "unit weights" and red.sigma is None
        assert "unit weights" in red.warnings[0] and "sqrt" in red.report["amplitudes"]["method"]
        assert sorted(red.value.tolist()) == [3.0, 12.0]  # plain means
    part = reduce_measured(measured(hkl, vals, [1.0, 0.0, 3.0]))
    assert "median" in part.warnings[0] and part.report["sigma"] == "as given"


def test_all_intensities_not_positive_is_refused():
    with pytest.raises(ValueError, match="all 2 intensities .* are <= 0"):
        reduce_measured(measured([[1, 1, 1], [1, 2, 3]], [0.0, -1.0], [1.0, 1.0]))


@pytest.mark.parametrize("kwargs, match", [
    ({"spacegroup": "P21/c"}, "contradictory space group"),
    ({"spacegroup": "P 21/q"}, "unknown space group"),
    ({"cell": (7.0, 8.0, 9.5, 90.0, 100.0, 90.0)}, "contradictory cell"),
])
def test_contradictions_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_crystal(measured([[1, 1, 1]], [1.0], [1.0]), **kwargs)


def test_symmetry_and_cell_from_options_when_the_file_has_none():
    bare = Measured(name="bare", hkl=np.array([[1, 1, 1]], np.int32), value=np.ones(1), sigma=None, kind="amplitude")
    with pytest.raises(ValueError, match="no space group"):
        resolve_crystal(bare)
    with pytest.raises(ValueError, match="no cell"):
        resolve_crystal(bare, spacegroup="P21/c")
    cell6, sg, info = resolve_crystal(bare, cell=(5, 6, 7, 90, 95, 90), spacegroup="P 1 21/c 1")
    assert sg.xhm() == "P 1 21/c 1" and info["cell_from"] == "--cell"
    ops = measured([[1, 1, 1]], [1.0], ops=shelx_ops(1, ["-X,1/2+Y,1/2-Z"]))
    assert resolve_crystal(ops, spacegroup="P21/c")[2]["from"].startswith("the symmetry operations")


def test_complete_model_data_are_complete_and_p21n_goes_to_p21c_keeping_d_and_f():
    st, hkl, i = model_data()
    red = reduce_measured(measured(hkl, i, 0.01 * i + 0.1, cell=tuple(st.cell.parameters)))
    assert red.report["resolution"]["completeness"] == pytest.approx(1.0)
    assert red.frame.name == "P 1 21/c 1" and red.frame.transform != "x,y,z"
    frame_cell = gemmi.UnitCell(*red.frame.cell6)
    d_frame = np.array([frame_cell.calculate_d(list(map(int, h))) for h in red.hkl_frame])
    assert np.allclose(d_frame, red.d, rtol=1e-9)  # same reflections, other indices
    absent_c = np.asarray(gemmi.SpaceGroup("P 1 21/c 1").operations().systematic_absences(
        red.hkl_frame.astype(np.int32)), bool)
    assert np.array_equal(absent_c, red.absent)


def test_cod_measured_reduction_figures():
    red = reduce_measured(read_input("2021969.cif", data=measured_cif("2021969")))
    rep = red.report
    assert rep["symmetry"]["space_group"] == "P 1 21/c 1" and rep["symmetry"]["from"].startswith("the symmetry")
    assert rep["merging"]["n_in"] == 7938 and rep["merging"]["n_unique"] == 2008
    assert 0.01 < rep["merging"]["r_int"] < 0.06 and rep["amplitudes"]["n_negative"] > 0
    assert rep["resolution"]["d_min"] == pytest.approx(0.6995, abs=1e-3)
    assert rep["resolution"]["completeness_to_network_d_min"] > 0.99
    assert np.all(red.amp > 0)  # French–Wilson: no zero or negative amplitude
