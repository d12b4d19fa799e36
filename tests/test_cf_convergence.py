"""Charge flipping reports convergence truthfully, stops converged starts, and works beyond P2₁/c and the PhAI list.

Issue 8 point 5: with the weak-reflection (π/2) rule R_CF often never drops, so the old R_CF-drop test called
23 of 34 solved COD structures "not converged" and ran them to the 300-cycle cap. The numbers it must not
lose are those of the committed report made with the old code (docs/results before this change):
p21c-small 34/34 solved, median r 0.999026.
"""
from __future__ import annotations

import dataclasses

import gemmi
import numpy as np
import pytest

from builder.reflections import d_spacing, phai_hkl, systematic_absences
from builder.sf import sf_plan, structure_factors
from builder.symmetry import space_group_ops
from evaluation.charge_flipping import ORIGIN_AMBIGUOUS, CFConfig, charge_flip
from evaluation.metrics import SOLVED_R
from evaluation.origin import OriginPlan
from evaluation.run import evaluate, open_testset, prepare_all
from tests.test_charge_flipping import make_data, random_atoms

BEFORE_SOLVED, BEFORE_MEDIAN_R = 34, 0.999026  # docs/results/cf-p21c-small, old R_CF-drop convergence test


def r_free(amp, pred, true, hkl, mask, enantiomorph: bool) -> float:
    """max over the 8 shifts t ∈ {0,½}³ (and, for a non-centrosymmetric group, the other hand) of
    Σ|F|² cos(φ_pred − φ_true + 2π h·t) / Σ|F|² over the observed reflections: written out here, independent
    of evaluation.metrics, for groups other than P2₁/c."""
    w = amp[mask] ** 2
    h = hkl[mask]
    best = -1.0
    for hand in ((1, -1) if enantiomorph else (1,)):
        for t in np.ndindex(2, 2, 2):
            d = hand * pred[mask] - true[mask] + np.pi * (h @ np.array(t))
            best = max(best, float(np.sum(w * np.cos(d)) / np.sum(w)))
    return best


@pytest.fixture(scope="module")
def small_rows():
    prepared, _ = prepare_all(open_testset("cod-p21c-small"), phai_hkl(), 1.0)
    rows, failed, _ = evaluate("charge-flipping", prepared, phai_hkl(), seed=0)
    assert not failed
    return rows


@pytest.mark.slow
def test_solved_cod_structures_report_converged_and_stop_early(small_rows):
    cap = CFConfig().max_cycles
    solved = [r for r in small_rows if r["r"] >= SOLVED_R]
    assert sum(r["converged"] for r in solved) >= 0.9 * len(solved)
    assert np.median([r["cf_cycles"] for r in small_rows]) <= cap / 5  # was 61.5, with 8 of 34 at the cap
    assert np.median([r["cf_cycles_run"] for r in small_rows]) <= cap / 5  # converged starts stopped the run


@pytest.mark.slow
def test_r_is_not_worse_on_cod_small(small_rows):
    """Same f(r >= 0.8) except where the data leave the origin open (9008962, AgO: two inequivalent origins fit
    equally; 14 of 20 seeds solved it with the old code, 11 of 20 with this one), median r within 0.002."""
    r = np.array([row["r"] for row in small_rows])
    ambiguous = {row["id"] for row in small_rows if row["origin_margin"] < ORIGIN_AMBIGUOUS}
    # Measured: 9008962 always; 9009089 (margin 0.006) since the faster F kernel moved |F| by <= 2e-6 relative,
    # which charge flipping's chaotic start amplifies. A few flagged structures, never an unflagged failure.
    assert "9008962" in ambiguous and len(ambiguous) <= 2
    assert all(row["r"] >= SOLVED_R for row in small_rows if row["id"] not in ambiguous)
    assert np.sum(r >= SOLVED_R) >= BEFORE_SOLVED - len(ambiguous)
    assert np.median(r) >= BEFORE_MEDIAN_R - 0.002


def test_a_generated_structure_converges_well_below_the_cap():
    cell6, hkl, amp, _, mask = make_data(0)
    res = charge_flip(cell6, hkl, amp, mask, rng=np.random.default_rng(100))
    assert res.converged and res.cycles < 150 and res.converged_all.sum() == CFConfig().stop_after
    assert res.cycles_run == res.cycles_all.max() and res.r_cf_history.shape[1] == res.cycles_run
    done = res.agreement_history[res.best_attempt]
    done = done[np.isfinite(done)]
    assert np.all(done[-CFConfig().stable_checks:] >= CFConfig().agree)  # the stated rule, as recorded


def test_without_the_pi_half_rule_the_same_test_converges():
    cell6, hkl, amp, _, mask = make_data(2)
    res = charge_flip(cell6, hkl, amp, mask, rng=np.random.default_rng(3), config=CFConfig(weak_fraction=0.0))
    assert res.converged and res.cycles < CFConfig().max_cycles


def _unique_list(cell6, space_group: str, d_min: float) -> np.ndarray:
    """gemmi's unique reflections to d_min (its own ASU convention, absences left out): not the PhAI list."""
    return gemmi.make_miller_array(gemmi.UnitCell(*cell6), gemmi.SpaceGroup(space_group), d_min, 0, True)


@pytest.mark.parametrize("space_group, cell6, seed", [
    ("P -1", np.array([11.6, 7.4, 6.9, 97.0, 103.0, 91.0]), 1),  # |h| up to 12: beyond the PhAI sphere
    ("P 21 21 21", np.array([7.2, 8.1, 9.3, 90.0, 90.0, 90.0]), 2),  # no inversion: continuous phases
])
def test_other_space_groups_and_reflection_lists(space_group, cell6, seed):
    rng = np.random.default_rng(seed)
    frac, z, occ, uiso = random_atoms(rng, space_group, cell6, n_light=9)
    ops = space_group_ops(space_group)
    hkl = _unique_list(cell6, space_group, 0.9)
    hkl = np.concatenate([hkl, -hkl[:40]])  # a redundant list: some Friedel mates listed again
    f = structure_factors(sf_plan(ops, hkl), cell6, frac, z, occ, uiso)
    amp, phase = np.abs(f), np.mod(np.angle(f), 2 * np.pi)
    mask = (d_spacing(cell6, hkl) >= 0.9) & ~systematic_absences(space_group, hkl)
    res = charge_flip(cell6, hkl, amp, mask, space_group=space_group, rng=np.random.default_rng(7))
    centro = ops.inversion_at_origin
    r = r_free(amp, res.phase_polished, phase, hkl, mask, enantiomorph=not centro)
    assert r >= SOLVED_R and res.converged
    n = len(hkl) - 40
    mate = np.mod(-res.phase_polished[:40], 2 * np.pi)  # φ(−h) = −φ(h)
    np.testing.assert_allclose(np.cos(res.phase_polished[n:] - mate), 1.0, atol=1e-6)
    on_axis = np.isclose(res.phase_polished % np.pi, 0.0) | np.isclose(res.phase_polished % np.pi, np.pi)
    assert on_axis.all() if centro else on_axis.mean() < 0.5


def test_p1_needs_no_origin_search():
    plan = OriginPlan.build(phai_hkl(3), space_group_ops("P 1"))
    t, score = plan.search(np.ones(len(phai_hkl(3)), dtype=complex))
    assert np.all(t == 0) and score == 1.0


def test_scan_only_origin_search_scores_its_grid_point_exactly():
    """newton_steps=0 (the convergence checks) takes the scan's value at the best grid point: S(t) itself."""
    rng = np.random.default_rng(4)
    for sg in ("P 1 21/c 1", "P 21 21 21", "P 1 21 1"):
        plan = OriginPlan.build(phai_hkl(4), space_group_ops(sg))
        f = rng.normal(size=plan.n_h) + 1j * rng.normal(size=plan.n_h)
        t, s = plan.search(f, newton_steps=0)
        assert s == pytest.approx(plan.score(f, t), abs=1e-9)
        assert s <= plan.search(f)[1] + 1e-12  # refinement only climbs


def test_origin_ambiguity_is_flagged_for_a_pseudo_symmetric_structure():
    prepared, _ = prepare_all(open_testset("cod-p21c-small"), phai_hkl(), 1.0)
    pick = {p.id: p for p in prepared}
    for sid, ambiguous in (("9008962", True), ("1000003", False), ("4110681", False)):
        p = pick[sid]
        res = charge_flip(p.cell6, phai_hkl(), p.amp, p.observed, rng=np.random.default_rng(0))
        assert (res.origin_margin < ORIGIN_AMBIGUOUS) == ambiguous, sid


@pytest.mark.parametrize("change, message", [
    (dict(max_cycles=0), "max_cycles"), (dict(n_attempts=2.5), "n_attempts"), (dict(stop_after=True), "stop_after"),
    (dict(agree=1.5), "agree"), (dict(weak_fraction=1.0), "weak_fraction"), (dict(delta_sigma=float("nan")), "delta"),
    (dict(f000="half"), "f000"), (dict(lde_cycles=-1), "lde_cycles"),
])
def test_cf_config_refuses_impossible_values(change, message):
    with pytest.raises(ValueError, match=message):
        CFConfig(**change)


def test_cf_config_is_frozen_and_resolves_delta():
    cfg = CFConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_cycles = 5
    assert cfg.delta_over_sigma == 1.0 and CFConfig(f000="zero").delta_over_sigma == 0.2
    assert dataclasses.replace(cfg, f000="zero").delta_over_sigma == 0.2


def test_starting_from_the_true_phases_converges_at_the_first_checks():
    """start_phases (as `model+cf` and `solve` pass a network's phases): from the truth CF stays there."""
    cell6, hkl, amp, phase, mask = make_data(1)
    res = charge_flip(cell6, hkl, amp, mask, rng=np.random.default_rng(0), start_phases=np.stack([phase, phase]))
    assert res.attempts == 2 and res.converged
    assert res.cycles <= (CFConfig().stable_checks + 1) * CFConfig().check_every
    assert r_free(amp, res.phase_polished, phase, hkl, mask, enantiomorph=False) > 0.99
    with pytest.raises(ValueError, match="start phases"):
        charge_flip(cell6, hkl, amp, mask, rng=np.random.default_rng(0), start_phases=phase[None, :5])
