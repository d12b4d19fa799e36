"""Reflection set and structure factors: our kernel against gemmi's direct summation (the reference path)."""
from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np
import pytest

from builder.reflections import d_spacing, phai_hkl, systematic_absences
from builder.sample import generate_structure
from builder.sf import amplitudes_phases, sf_plan, structure_factors
from builder.symmetry import inversion_centres, site_multiplicity, space_group_ops
from tests.conftest import gemmi_sf

CIFS = Path(__file__).parent / "data" / "sf_cif"


def _max_rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    strong = np.abs(ref) > 0.1 * np.abs(ref).mean()  # the criterion: reflections > 10 % of the mean
    return float((np.abs(np.abs(ours[strong]) - np.abs(ref[strong])) / np.abs(ref[strong])).max())


def test_phai_set_is_the_published_one():
    hkl = phai_hkl()
    assert hkl.shape == (1205, 3)
    assert tuple(hkl[0]) == (-10, 0, 0) and tuple(hkl[-1]) == (10, 0, 0)
    assert len({tuple(h) for h in hkl}) == 1205
    assert (hkl[:, 1:] >= 0).all() and ((hkl**2).sum(1) <= 100).all()
    absent = systematic_absences("P 1 21/c 1", hkl)
    assert absent.sum() == 84  # h0l l odd, 0k0 k odd, 00l l odd
    h, k, l = hkl.T
    assert np.array_equal(absent, ((k == 0) & (l % 2 == 1)) | ((h == 0) & (l == 0) & (k % 2 == 1)))


def test_d_spacing_matches_gemmi():
    cell = np.array([7.1, 8.3, 9.6, 90.0, 107.5, 90.0])
    uc = gemmi.UnitCell(*cell)
    hkl = phai_hkl()[::37]
    assert np.allclose(d_spacing(cell, hkl), [uc.calculate_d([int(v) for v in h]) for h in hkl], rtol=1e-12)


def test_inversion_centres_of_p21c_are_solved_from_operations():
    centres = inversion_centres("P 1 21/c 1")
    assert sorted(centres) == [(0.0, 0.0, 0.0), (0.0, 0.0, 0.5), (0.5, 0.0, 0.0), (0.5, 0.0, 0.5)]
    ops = space_group_ops("P 1 21/c 1")
    assert all(site_multiplicity(ops, np.array(c)) == 2 for c in centres)
    assert inversion_centres("P 21 21 21") == ()
    assert len(inversion_centres("P -1")) == 8


@pytest.mark.parametrize("name", ["lognormal-molecules", "lognormal-random", "lognormal-random-equal",
                                  "uniform-edges-molecules"])
def test_generated_structures_agree_with_gemmi(strategies, name):
    hkl = phai_hkl()
    for index in range(3):
        s = generate_structure(strategies[name], 11, index)
        plan = sf_plan(space_group_ops(s.space_group), hkl)
        ours = structure_factors(plan, s.cell, s.frac, s.z, s.occ, s.uiso)
        mult = np.array([site_multiplicity(plan.ops, x.astype(np.float64)) for x in s.frac])
        ref = gemmi_sf(s.cell, s.space_group, s.frac, s.z, s.occ * mult, s.uiso, hkl)
        assert _max_rel_error(ours, ref) <= 1e-4
        assert np.abs(ref.imag).max() < 1e-6 * np.abs(ref).max()  # centrosymmetric: real F
        amp, phase = amplitudes_phases(ours, plan.real)
        assert set(np.unique(phase)) <= {0.0, np.float32(np.pi)}
        strong = amp > 1.0
        assert np.array_equal(phase[strong] > 1, ref.real[strong] < 0)


@pytest.mark.parametrize("cif", sorted(p.name for p in CIFS.glob("*.cif")))
def test_real_cod_structures_agree_with_gemmi(cif):
    st = gemmi.read_small_structure(str(CIFS / cif))
    ops = space_group_ops(st.spacegroup.xhm())
    frac = np.array([s.fract.tolist() for s in st.sites])
    z = np.array([s.element.atomic_number for s in st.sites])
    occ = np.array([s.occ for s in st.sites])
    uiso = np.array([s.u_iso if s.u_iso > 0 else 0.03 for s in st.sites])
    mult = np.array([site_multiplicity(ops, x) for x in frac])
    hkl = phai_hkl()
    ours = structure_factors(sf_plan(ops, hkl), np.array(st.cell.parameters), frac, z, occ / mult, uiso)
    ref = gemmi_sf(st.cell.parameters, ops.name, frac, z, occ, uiso, hkl)
    assert _max_rel_error(ours, ref) <= 1e-4
    if not ops.inversion_at_origin:  # non-centrosymmetric: phases must agree too
        strong = np.abs(ref) > np.abs(ref).mean()
        dphi = np.angle(ours[strong] * np.conj(ref[strong]))
        assert np.abs(dphi).max() < 1e-3


def test_friedel_and_origin_shift():
    """A shift of origin by an inversion centre t multiplies F(h) by exp(2πi h·t) = ±1."""
    ops = space_group_ops("P 1 21/c 1")
    hkl = phai_hkl()
    plan = sf_plan(ops, hkl)
    rng = np.random.default_rng(3)
    cell = np.array([6.5, 7.5, 8.5, 90, 101, 90])
    frac, z = rng.random((6, 3)), np.array([6, 6, 7, 8, 16, 1])
    occ, u = np.ones(6), np.full(6, 0.03)
    f0 = structure_factors(plan, cell, frac, z, occ, u)
    t = np.array([0.5, 0.0, 0.5])
    f1 = structure_factors(plan, cell, frac + t, z, occ, u)
    assert np.allclose(f1, f0 * np.exp(2j * np.pi * hkl @ t), atol=1e-4)
    p1 = sf_plan(space_group_ops("P 1"), hkl)
    fp, fm = structure_factors(p1, cell, frac, z, occ, u), structure_factors(p1, cell, -frac, z, occ, u)
    assert np.allclose(fm, np.conj(fp), atol=1e-4)  # inverted structure ↔ Friedel mate


@pytest.mark.parametrize("space_group, skew, filler", [("P 21 21 21", "none", "random"),
                                                      ("P -1", "triclinic", "molecules"),
                                                      ("C 1 2/c 1", "monoclinic", "molecules")])
def test_other_space_groups_generate_and_agree_with_gemmi(tmp_path, space_group, skew, filler):
    from builder.strategy import load_strategy

    path = tmp_path / "s.toml"
    path.write_text(f'name = "x"\nspace_group = "{space_group}"\n[cell]\nskew = "{skew}"\n'
                    f'[fill]\nfiller = "{filler}"\nspecial_p = {0.3 if filler == "molecules" else 0.0}\n'
                    '[priors]\nstats = "cod-molecular"\n')
    strat = load_strategy(path)
    hkl = phai_hkl()
    special = 0
    for index in range(4):
        s = generate_structure(strat, 0, index)
        special += s.n_special
        plan = sf_plan(space_group_ops(s.space_group), hkl)
        ours = structure_factors(plan, s.cell, s.frac, s.z, s.occ, s.uiso)
        mult = np.array([site_multiplicity(plan.ops, x.astype(np.float64)) for x in s.frac])
        ref = gemmi_sf(s.cell, s.space_group, s.frac, s.z, s.occ * mult, s.uiso, hkl)
        assert _max_rel_error(ours, ref) <= 1e-4
    assert (special > 0) == (filler == "molecules")


def test_any_reflection_list_order_duplicates_and_signs():
    """The kernel sums over a box of indices: a list in any order, with negative k and l, (000) and a
    reflection listed twice gives, row for row, what the PhAI list gives, and F(−h) = conj F(h) in P1."""
    rng = np.random.default_rng(5)
    hkl = phai_hkl()
    pick = rng.permutation(len(hkl))[:300]
    odd = np.concatenate([hkl[pick], -hkl[pick[:50]], [[0, 0, 0]], hkl[pick[:3]]]).astype(np.int32)
    cell = np.array([6.5, 7.5, 8.5, 90, 101, 90])
    frac, z = rng.random((7, 3)), np.array([6, 6, 7, 8, 16, 1, 26])
    occ, u = np.ones(7), np.full(7, 0.03)
    for sg in ("P 1 21/c 1", "P 1"):
        ops = space_group_ops(sg)
        full = structure_factors(sf_plan(ops, hkl), cell, frac, z, occ, u)
        mixed = structure_factors(sf_plan(ops, odd), cell, frac, z, occ, u)
        assert np.allclose(mixed[:300], full[pick], rtol=1e-9, atol=1e-9)
        assert np.allclose(mixed[300:350], np.conj(full[pick[:50]]), rtol=1e-9, atol=1e-9)
        assert np.allclose(mixed[-3:], full[pick[:3]], rtol=1e-9, atol=1e-9)
        assert abs(mixed[350].imag) < 1e-9 and mixed[350].real > 0  # F(000): the electrons, all in phase
