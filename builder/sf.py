"""Structure factors by direct summation over the PhAI reflection set (phai-facts.md, "Structure factors").

F(h) = Σ_j occ_j f0_j(s) exp(-8π² U_j s²) Σ_g exp(2πi h·(R_g x_j + t_g)),  s = sinθ/λ = 1/(2d),

with IT92 form factors (gemmi's coefficients), neutral atoms and no anomalous terms. Occupancies are
crystallographic (1/site multiplicity on special positions), so summing over every operation counts an atom
on an inversion centre exactly once, as gemmi does after `change_occupancies_to_crystallographic()`.
When -x,-y,-z is an operation (P2₁/c, P-1, ...), F is real: the pair {g, -g} contributes 2 cos(2π h·(R_g x + t_g)),
which halves the trigonometry and gives phases exactly 0 or π.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numba
import numpy as np

from builder.elements import it92_table
from builder.reflections import hkl_products, phai_hkl, stol2_of_products
from builder.structure import Structure
from builder.symmetry import SymOps, space_group_ops

__all__ = ["SFPlan", "sf_plan", "structure_factors", "amplitudes_phases", "reflections_of", "PHASE_ZERO_BELOW"]

PHASE_ZERO_BELOW = 0.01  # electrons: phases of |F| <= this are set to 0 (as PhAI's data generator does)
_TWO_PI = 2.0 * np.pi
_EIGHT_PI2 = 8.0 * np.pi**2


@dataclasses.dataclass(frozen=True)
class SFPlan:
    """Per (space group, reflection set) precomputation for the kernel; holds no scratch, so any thread may use it."""

    ops: SymOps
    hkl: np.ndarray  # (H, 3) int, as given
    real: bool  # F is real (inversion at the origin); then the operations summed are one per {g, -g} pair
    rot: np.ndarray  # (m, 3, 3) float64: the operations summed
    tran: np.ndarray  # (m, 3) float64
    runs: np.ndarray  # (U, 5) int64: rows r0..r1 share (h, k) and have l = l0, l0 + 1, ...; then h, k, l0 − lo
    lo: np.ndarray  # (3,) int64: lowest index per axis (≤ 0)
    span: int  # rows of the power tables: max over axes of hi − lo + 1
    products: np.ndarray  # (H, 6) float64: h², k², l², 2kl, 2hl, 2hk, for s² = products · G*/4


def sf_plan(ops: SymOps, hkl: np.ndarray) -> SFPlan:
    hkl = np.asarray(hkl)
    sel = ops.half if ops.inversion_at_origin else np.arange(ops.n)
    h = hkl.astype(np.int64).reshape(-1, 3)
    lo = np.minimum(h.min(axis=0, initial=0), 0)
    hi = np.maximum(h.max(axis=0, initial=0), 0)
    return SFPlan(ops=ops, hkl=hkl, real=bool(ops.inversion_at_origin), rot=np.ascontiguousarray(ops.rot[sel]),
                  tran=np.ascontiguousarray(ops.tran[sel]), runs=_runs(h - lo), lo=lo,
                  span=int((hi - lo).max()) + 1, products=hkl_products(h))


def _runs(index: np.ndarray) -> np.ndarray:
    """Maximal blocks of consecutive rows with equal (h, k) and l rising by one (the PhAI order: l fastest)."""
    new = np.ones(len(index), dtype=bool)
    new[1:] = (index[1:, 0] != index[:-1, 0]) | (index[1:, 1] != index[:-1, 1]) | (index[1:, 2] != index[:-1, 2] + 1)
    r0 = np.flatnonzero(new)
    r1 = np.append(r0[1:], len(index))
    return np.ascontiguousarray(np.column_stack([r0, r1, index[r0]]).astype(np.int64))


def structure_factors(plan: SFPlan, cell: np.ndarray, frac: np.ndarray, z: np.ndarray, occ: np.ndarray,
                      uiso: np.ndarray) -> np.ndarray:
    """Complex F (H,) in electrons for the asymmetric unit (frac, z, occ, uiso) in `cell` (a, b, c, α, β, γ)."""
    re, im = _f_parts(plan, cell, frac, z, occ, uiso)
    return re.astype(np.complex128) if plan.real else re + 1j * im


def _f_parts(plan: SFPlan, cell: np.ndarray, frac: np.ndarray, z: np.ndarray, occ: np.ndarray,
             uiso: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Re F, Im F) in electrons, float64; Im F is zero when the plan is real."""
    n_hkl = len(plan.hkl)
    re, im = np.zeros(n_hkl), np.zeros(n_hkl)
    if len(z) == 0:
        return re, im
    s2 = stol2_of_products(cell, plan.products).astype(np.float32)  # (H,)
    zs = np.array(sorted(set(np.asarray(z).tolist())), dtype=np.int64)  # the elements present, ascending
    a, b, c = it92_table()
    # every exponential in one float32 call (1e-7 relative, the cost that remains): exp(-b_i s²) for the IT92
    # terms of each element present, then the Debye-Waller factor exp(-8π² U_j s²) of each atom
    coef = np.concatenate([b[zs].ravel(), _EIGHT_PI2 * np.asarray(uiso, dtype=np.float64)]).astype(np.float32)
    e = np.multiply.outer(-coef, s2)
    np.exp(e, out=e)
    _sum_atoms(plan.runs, plan.lo, plan.span, plan.rot, plan.tran, np.asarray(frac, dtype=np.float64),
               np.searchsorted(zs, z), np.asarray(occ, dtype=np.float64), a[zs], c[zs], e, plan.real, re, im)
    if plan.real:
        re *= 2.0  # the pair {g, -g}: 2 cos
    return re, im


@numba.njit(cache=True)
def _power_tables(x: np.ndarray, lo: np.ndarray, t_re: np.ndarray, t_im: np.ndarray) -> None:
    """t[a, n] = E_a^(n + lo_a), E_a = exp(2πi x_a): one sin/cos per axis (argument reduced mod 1 in float64),
    then repeated multiplication (error ≈ |n|·ε)."""
    span = t_re.shape[1]
    for a in range(3):
        ang = _TWO_PI * (x[a] - np.floor(x[a]))
        c, s = math.cos(ang), math.sin(ang)
        zero = -lo[a]
        t_re[a, zero], t_im[a, zero] = 1.0, 0.0
        for n in range(zero + 1, span):  # E^n = E^(n-1) · E
            pr, pi = t_re[a, n - 1], t_im[a, n - 1]
            t_re[a, n], t_im[a, n] = pr * c - pi * s, pr * s + pi * c
        for n in range(zero - 1, -1, -1):  # E^-n = E^-(n-1) · conj(E)
            pr, pi = t_re[a, n + 1], t_im[a, n + 1]
            t_re[a, n], t_im[a, n] = pr * c + pi * s, pi * c - pr * s


@numba.njit(cache=True)
def _sum_atoms(runs: np.ndarray, lo: np.ndarray, span: int, rot: np.ndarray, tran: np.ndarray, frac: np.ndarray,
               zi: np.ndarray, occ: np.ndarray, ff_a: np.ndarray, ff_c: np.ndarray, e: np.ndarray, real: bool,
               re: np.ndarray, im: np.ndarray) -> None:
    """re (+ i·im) = Σ_j occ_j f0_j DW_j Σ_g exp(2πi h·x_jg), with exp(2πi h·x) = E_h E_k E_l (E = exp(2πi x_a)
    to the power of the index): per run of rows sharing (h, k) with consecutive l, one product E_h E_k, then one
    complex product per reflection, in place of the cosine (and sine) of a long argument."""
    n_hkl, m, n_z = e.shape[1], rot.shape[0], ff_a.shape[0]
    f0 = np.empty((n_z, n_hkl))
    for q in range(n_z):  # IT92: f0 = Σ a_i exp(-b_i s²) + c
        for r in range(n_hkl):
            f0[q, r] = (ff_a[q, 0] * e[4 * q, r] + ff_a[q, 1] * e[4 * q + 1, r] + ff_a[q, 2] * e[4 * q + 2, r]
                        + ff_a[q, 3] * e[4 * q + 3, r] + ff_c[q])
    t_re, t_im = np.empty((3, span)), np.empty((3, span))
    x, w = np.empty(3), np.empty(n_hkl)
    for j in range(frac.shape[0]):
        q, dw, o = zi[j], 4 * n_z + j, occ[j]
        for r in range(n_hkl):
            w[r] = o * f0[q, r] * e[dw, r]
        for g in range(m):
            for a in range(3):
                x[a] = rot[g, a, 0] * frac[j, 0] + rot[g, a, 1] * frac[j, 1] + rot[g, a, 2] * frac[j, 2] + tran[g, a]
            _power_tables(x, lo, t_re, t_im)
            for u in range(runs.shape[0]):
                r0, r1, ih, ik, il = runs[u, 0], runs[u, 1], runs[u, 2], runs[u, 3], runs[u, 4]
                pr = t_re[0, ih] * t_re[1, ik] - t_im[0, ih] * t_im[1, ik]
                pi = t_re[0, ih] * t_im[1, ik] + t_im[0, ih] * t_re[1, ik]
                off = il - r0  # row r has power l − lo = off + r
                for r in range(r0, r1):
                    re[r] += w[r] * (pr * t_re[2, off + r] - pi * t_im[2, off + r])
                if not real:
                    for r in range(r0, r1):
                        im[r] += w[r] * (pr * t_im[2, off + r] + pi * t_re[2, off + r])


def amplitudes_phases(f: np.ndarray, real: bool) -> tuple[np.ndarray, np.ndarray]:
    """|F| and φ (radians, float32) of complex F (or of real F when `real`). Centric (real) F gets φ ∈ {0, π};
    |F| <= 0.01 e gets φ = 0."""
    amp = np.abs(f)
    if real:
        phase = np.where((f.real < 0) & (amp > PHASE_ZERO_BELOW), np.float32(np.pi), np.float32(0.0))
        return amp.astype(np.float32), phase
    phase = np.where(amp <= PHASE_ZERO_BELOW, 0.0, np.mod(np.angle(f), 2 * np.pi))
    return amp.astype(np.float32), phase.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _phai_plan(space_group: str, max_index: int) -> SFPlan:
    return sf_plan(space_group_ops(space_group), phai_hkl(max_index))


def reflections_of(s: Structure, max_index: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """|F| and φ (float32) on the PhAI set, from the structure exactly as stored (float32 arrays)."""
    plan = _phai_plan(s.space_group, max_index)
    re, im = _f_parts(plan, s.cell, s.frac, s.z, s.occ, s.uiso)
    return amplitudes_phases(re if plan.real else re + 1j * im, plan.real)
