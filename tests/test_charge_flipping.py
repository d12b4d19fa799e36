"""Charge flipping (evaluation.charge_flipping) solves small generated structures at 1.0 Å with complete data."""
from __future__ import annotations

import time

import gemmi
import numpy as np
import pytest

from builder.reflections import d_spacing, phai_hkl, systematic_absences
from builder.sf import amplitudes_phases, sf_plan, structure_factors
from builder.symmetry import space_group_ops
from evaluation.baselines import random_signs, true_phases
from evaluation.charge_flipping import CFConfig, charge_flip
from evaluation.origin import origin_search, symmetrise
from evaluation.metrics import SOLVED_R, phase_r

SG = "P 1 21/c 1"
_Z = {"C": 6, "N": 7, "O": 8, "S": 16, "Cl": 17}


def random_p21c(rng: np.random.Generator, n_light: int = 10, heavy: str = "S", min_dist: float = 1.2):
    """A small random P2₁/c structure: cell ~7×8×9 Å, β ~100°, one S/Cl plus C/N/O atoms on general positions.

    Returns:
        (cell6, frac (N, 3), z (N,), occ (N,), uiso (N,)) of the asymmetric unit.
    """
    cell6 = np.array([rng.uniform(6.5, 7.5), rng.uniform(7.5, 8.5), rng.uniform(8.5, 9.5),
                      90.0, rng.uniform(95.0, 105.0), 90.0])
    return (cell6,) + random_atoms(rng, SG, cell6, n_light, heavy, min_dist)


def random_atoms(rng: np.random.Generator, space_group: str, cell6: np.ndarray, n_light: int = 10,
                 heavy: str = "S", min_dist: float = 1.2):
    """One heavy atom plus C/N/O atoms on general positions of `space_group`.

    Atoms are placed one at a time at uniform random fractional positions and rejected when closer than
    `min_dist` to any symmetry image (all operations, 27 neighbouring cells) of an atom already placed or
    to one of their own images (which also keeps them off special positions).

    Returns:
        (frac (N, 3), z (N,), occ (N,), uiso (N,)) of the asymmetric unit.
    """
    ops = space_group_ops(space_group)
    orth = np.array(gemmi.UnitCell(*cell6).orth.mat.tolist())
    lattice = np.array(list(np.ndindex(3, 3, 3))) - 1
    not_identity = ~(np.all(np.isclose(ops.rot, np.eye(3)), axis=(1, 2)) & np.all(ops.tran == 0, axis=1))
    elements = [heavy] + list(rng.choice(["C", "N", "O"], size=n_light, p=[0.6, 0.2, 0.2]))
    images = np.zeros((0, 3))
    frac = []
    for _ in elements:
        for _attempt in range(20000):
            x = rng.random(3)
            own = np.einsum("gij,j->gi", ops.rot, x) + ops.tran
            others = np.concatenate([images, own[not_identity]])
            diff = (others[:, None, :] - x + lattice[None]).reshape(-1, 3) @ orth.T
            if np.linalg.norm(diff, axis=1).min() >= min_dist:
                break
        else:
            raise RuntimeError("could not place an atom")
        frac.append(x)
        images = np.concatenate([images, own])
    z = np.array([_Z[e] for e in elements])
    return np.array(frac), z, np.ones(len(z)), rng.uniform(0.015, 0.035, len(z))


def make_data(seed: int, d_min: float = 1.0):
    """Exact |F| and 0/π phases on the PhAI set; observed = d >= d_min and not systematically absent."""
    rng = np.random.default_rng(seed)
    cell6, frac, z, occ, uiso = random_p21c(rng, heavy="S" if seed % 2 == 0 else "Cl")
    hkl = phai_hkl()
    f = structure_factors(sf_plan(space_group_ops(SG), hkl), cell6, frac, z, occ, uiso)
    amp, phase = amplitudes_phases(f, True)
    mask = (d_spacing(cell6, hkl) >= d_min) & ~systematic_absences(SG, hkl)
    return cell6, hkl, amp.astype(np.float64), phase.astype(np.float64), mask


def test_fixture_structure_is_sane():
    rng = np.random.default_rng(0)
    cell6, frac, z, occ, uiso = random_p21c(rng)
    assert len(z) == 11 and (z == 16).sum() == 1 and set(z[1:]) <= {6, 7, 8}
    ops = space_group_ops(SG)
    orth = np.array(gemmi.UnitCell(*cell6).orth.mat.tolist())
    allpos = np.concatenate([np.einsum("gij,nj->gni", ops.rot, frac) + ops.tran[:, None]]).reshape(-1, 3)
    lattice = np.array(list(np.ndindex(3, 3, 3))) - 1
    d = allpos[:, None, None, :] - allpos[None, :, None, :] + lattice[None, None]
    dist = np.linalg.norm(d @ orth.T, axis=-1)
    dist[np.arange(len(allpos)), np.arange(len(allpos)), 13] = np.inf  # self, same cell
    assert dist.min() >= 1.2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_charge_flipping_solves_small_p21c(seed):
    cell6, hkl, amp, phase, mask = make_data(seed)
    t0 = time.perf_counter()
    res = charge_flip(cell6, hkl, amp, mask, space_group=SG, rng=np.random.default_rng(100 + seed))
    elapsed = time.perf_counter() - t0
    r_raw, _, mpe_raw = phase_r(amp, res.phase_raw, phase, hkl, mask)
    r_pol, _, mpe_pol = phase_r(amp, res.phase_polished, phase, hkl, mask)
    r_rand, _, _ = phase_r(amp, random_signs(amp, np.random.default_rng(seed)), phase, hkl, mask)
    r_true, _, _ = phase_r(amp, true_phases(phase), phase, hkl, mask)
    print(f"seed {seed}: raw r {r_raw:.3f} (MPE {mpe_raw:.1f}°), polished r {r_pol:.3f} (MPE {mpe_pol:.1f}°), "
          f"random r {r_rand:.3f}, R_CF {res.r_cf:.3f}, cycles {res.cycles}, converged {res.converged}, "
          f"{elapsed:.2f} s")
    assert r_true == pytest.approx(1.0, abs=1e-12)
    assert r_pol >= SOLVED_R
    assert r_raw >= 0.6  # the unsymmetrised P1 solution, only projected to 0/π at the found origin
    assert r_rand < 0.5
    assert set(np.unique(res.phase_polished)) <= {0.0, np.pi} and set(np.unique(res.phase_raw)) <= {0.0, np.pi}
    assert res.phase_polished.shape == (len(hkl),)
    assert elapsed < 10.0


def test_charge_flipping_is_deterministic():
    cell6, hkl, amp, _, mask = make_data(3)
    cfg = CFConfig(n_attempts=2, max_cycles=60, lde_cycles=2)
    a = charge_flip(cell6, hkl, amp, mask, rng=np.random.default_rng(5), config=cfg)
    b = charge_flip(cell6, hkl, amp, mask, rng=np.random.default_rng(5), config=cfg)
    np.testing.assert_array_equal(a.phase_polished, b.phase_polished)
    np.testing.assert_array_equal(a.phase_p1, b.phase_p1)
    np.testing.assert_array_equal(a.r_cf_history, b.r_cf_history)


def test_origin_search_and_symmetrise_recover_a_shifted_solution():
    """True P2₁/c structure factors moved to a random origin: the search finds an inversion centre again."""
    cell6, hkl, amp, phase, mask = make_data(4)
    ops = space_group_ops(SG)
    rng = np.random.default_rng(6)
    # observed P1 indices: all Laue + Friedel equivalents of the observed list
    rot = np.rint(ops.rot).astype(int)
    eq = np.einsum("hi,gij->ghj", hkl[mask].astype(int), rot).reshape(-1, 3)
    p1 = np.unique(np.concatenate([eq, -eq]), axis=0)
    _, ph1 = amplitudes_phases(structure_factors(sf_plan(ops, p1), cell6, *_asu(4)), True)
    a1 = np.abs(structure_factors(sf_plan(ops, p1), cell6, *_asu(4)))
    t0 = rng.random(3)
    f_moved = a1 * np.exp(1j * (ph1 - 2 * np.pi * (p1 @ t0)))  # the map moved by +t0
    t, score = origin_search(f_moved, p1, ops)
    assert score > 0.999
    assert np.allclose(np.cos(2 * np.pi * 2 * (t - t0)), 1.0, atol=1e-6)  # t ≡ t0 (mod ½): one of the 8 origins
    lut = {tuple(h): i for i, h in enumerate(p1.tolist())}
    back = f_moved * np.exp(2j * np.pi * (p1 @ t))

    def lookup(q):
        return np.array([back[lut[tuple(v)]] if tuple(v) in lut else 0.0 for v in q.tolist()])

    f_sym = symmetrise(lookup, hkl[mask], ops)
    pred = np.zeros(len(hkl))
    pred[mask] = np.where(f_sym.real < 0, np.pi, 0.0)
    r, _, mpe = phase_r(amp, pred, phase, hkl, mask)
    assert r == pytest.approx(1.0, abs=1e-9) and mpe < 1e-4  # float32 π in amplitudes_phases


def _asu(seed: int):
    _, frac, z, occ, uiso = random_p21c(np.random.default_rng(seed), heavy="S" if seed % 2 == 0 else "Cl")
    return frac, z, occ, uiso


def test_bad_input():
    cell6, hkl, amp, _, mask = make_data(0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        charge_flip(cell6, hkl, amp, mask)  # no rng
    with pytest.raises(ValueError):
        charge_flip(cell6, hkl, amp[:-1], mask, rng=rng)
    with pytest.raises(ValueError):
        charge_flip(cell6[:5], hkl, amp, mask, rng=rng)
    with pytest.raises(ValueError):
        charge_flip(cell6, hkl, amp, mask, space_group="P 99 q", rng=rng)  # not a space group
    with pytest.raises(ValueError):
        charge_flip(cell6, hkl, amp, np.zeros_like(mask), rng=rng)
    with pytest.raises(ValueError, match="f000"):
        CFConfig(f000="half")
    with pytest.raises(ValueError):
        charge_flip(cell6, hkl, amp, mask, rng=rng, config={"max_cycles": 10})
    with pytest.raises(ValueError):
        random_signs(amp, rng=0)


def test_charge_flipping_solves_structures_from_the_generator():
    """The builder's own artificial-molecule structures (P2₁/c, ≤ 10 Å) at 1.0 Å: CF is the classical check."""
    from builder.sample import generate_structure
    from builder.sf import reflections_of
    from builder.strategy import load_strategy

    strat = load_strategy("lognormal-molecules")
    hkl = phai_hkl()
    solved = 0
    for index in range(4):
        s = generate_structure(strat, 21, index)
        amp, phase = reflections_of(s)
        mask = (d_spacing(s.cell, hkl) >= 1.0) & ~systematic_absences(s.space_group, hkl)
        res = charge_flip(s.cell, hkl, amp, mask, space_group=s.space_group, rng=np.random.default_rng(index))
        solved += phase_r(amp, res.phase_polished, phase, hkl, mask)[0] >= SOLVED_R
    assert solved >= 3
