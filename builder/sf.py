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
    """Per (space group, reflection set) precomputation for the kernel; holds no scratch, so any thread may use it.

    The kernel sums each atom image over the box of indices spanned by the set, laid out [k][l][h] (h fastest),
    visiting in each (k, l) row only the h that the set holds, then reads each reflection from its box cell."""

    ops: SymOps
    hkl: np.ndarray  # (H, 3) int, as given
    real: bool  # F is real (inversion at the origin); then the operations summed are one per {g, -g} pair
    rot: np.ndarray  # (m, 3, 3) float64: the operations summed
    tran: np.ndarray  # (m, 3) float64
    lo: np.ndarray  # (3,) int64: lowest index per axis (≤ 0)
    spans: np.ndarray  # (3,) int64: indices per axis, hi − lo + 1 (0 always inside)
    rows: np.ndarray  # (spans_k · spans_l, 2) int64: the h range (box columns) each (k, l) row needs, [a, b)
    cell_of: np.ndarray  # (H,) int64: each reflection's box cell
    products: np.ndarray  # (H, 6) float64: h², k², l², 2kl, 2hl, 2hk, for s² = products · G*/4


def sf_plan(ops: SymOps, hkl: np.ndarray) -> SFPlan:
    hkl = np.asarray(hkl)
    sel = ops.half if ops.inversion_at_origin else np.arange(ops.n)
    h = hkl.astype(np.int64).reshape(-1, 3)
    lo = np.minimum(h.min(axis=0, initial=0), 0)
    spans = np.maximum(h.max(axis=0, initial=0), 0) - lo + 1
    idx = h - lo
    row = idx[:, 1] * spans[2] + idx[:, 2]
    rows = np.zeros((spans[1] * spans[2], 2), dtype=np.int64)
    if len(h):
        rows[:, 0] = spans[0]
        np.minimum.at(rows[:, 0], row, idx[:, 0])
        np.maximum.at(rows[:, 1], row, idx[:, 0] + 1)
        rows[rows[:, 0] >= rows[:, 1]] = 0  # rows the set does not touch
    return SFPlan(ops=ops, hkl=hkl, real=bool(ops.inversion_at_origin), rot=np.ascontiguousarray(ops.rot[sel]),
                  tran=np.ascontiguousarray(ops.tran[sel]), lo=lo, spans=spans, rows=rows,
                  cell_of=np.ascontiguousarray(row * spans[0] + idx[:, 0]), products=hkl_products(h))


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
    _sum_atoms(plan.cell_of, plan.rows, plan.lo, plan.spans, plan.rot, plan.tran, np.asarray(frac, dtype=np.float64),
               np.searchsorted(zs, z), np.asarray(occ, dtype=np.float64), a[zs], c[zs], e, plan.real, re, im)
    if plan.real:
        re *= 2.0  # the pair {g, -g}: 2 cos
    return re, im


@numba.njit(cache=True)
def _power_tables(x: np.ndarray, lo: np.ndarray, spans: np.ndarray, t_re: np.ndarray, t_im: np.ndarray) -> None:
    """t[a, n] = E_a^(n + lo_a), E_a = exp(2πi x_a): one sin/cos per axis (argument reduced mod 1 in float64),
    then repeated multiplication (error ≈ |n|·ε)."""
    for a in range(3):
        ang = _TWO_PI * (x[a] - np.floor(x[a]))
        c, s = math.cos(ang), math.sin(ang)
        zero = -lo[a]
        t_re[a, zero], t_im[a, zero] = 1.0, 0.0
        for n in range(zero + 1, spans[a]):  # E^n = E^(n-1) · E
            pr, pi = t_re[a, n - 1], t_im[a, n - 1]
            t_re[a, n], t_im[a, n] = pr * c - pi * s, pr * s + pi * c
        for n in range(zero - 1, -1, -1):  # E^-n = E^-(n-1) · conj(E)
            pr, pi = t_re[a, n + 1], t_im[a, n + 1]
            t_re[a, n], t_im[a, n] = pr * c + pi * s, pi * c - pr * s


@numba.njit(cache=True)
def _image_into_box(t_re: np.ndarray, t_im: np.ndarray, spans: np.ndarray, rows: np.ndarray, real: bool,
                    box_re: np.ndarray, box_im: np.ndarray) -> None:
    """box[k, l, h] += E_h E_k E_l for one atom image: one complex product E_k E_l per (k, l) row, then a
    contiguous pass over the row's h (the loop the compiler vectorises)."""
    s0, s2 = spans[0], spans[2]
    for ik in range(spans[1]):
        for il in range(s2):
            row = ik * s2 + il
            h0, h1 = rows[row, 0], rows[row, 1]
            if h0 == h1:
                continue
            yr = t_re[1, ik] * t_re[2, il] - t_im[1, ik] * t_im[2, il]
            yi = t_re[1, ik] * t_im[2, il] + t_im[1, ik] * t_re[2, il]
            xr, xi = t_re[0, h0:h1], t_im[0, h0:h1]  # slices from 0: no index wrap-around in the loop
            out = box_re[row * s0 + h0:row * s0 + h1]
            for t in range(h1 - h0):
                out[t] += yr * xr[t] - yi * xi[t]
            if not real:
                out = box_im[row * s0 + h0:row * s0 + h1]
                for t in range(h1 - h0):
                    out[t] += yr * xi[t] + yi * xr[t]


@numba.njit(cache=True)
def _sum_atoms(cell_of: np.ndarray, rows: np.ndarray, lo: np.ndarray, spans: np.ndarray, rot: np.ndarray,
               tran: np.ndarray, frac: np.ndarray, zi: np.ndarray, occ: np.ndarray, ff_a: np.ndarray,
               ff_c: np.ndarray, e: np.ndarray, real: bool, re: np.ndarray, im: np.ndarray) -> None:
    """re (+ i·im) = Σ_j occ_j f0_j DW_j Σ_g exp(2πi h·x_jg), with exp(2πi h·x) = E_h E_k E_l (E = exp(2πi x_a)
    to the power of the index): per atom, its images summed over the box of indices, then one weighted read
    per reflection, in place of the cosine (and sine) of a long argument per image and reflection."""
    n_hkl, m, n_z = e.shape[1], rot.shape[0], ff_a.shape[0]
    f0 = np.empty((n_z, n_hkl))
    for q in range(n_z):  # IT92: f0 = Σ a_i exp(-b_i s²) + c
        fq, e0, e1, e2, e3 = f0[q], e[4 * q], e[4 * q + 1], e[4 * q + 2], e[4 * q + 3]
        a0, a1, a2, a3, c = ff_a[q, 0], ff_a[q, 1], ff_a[q, 2], ff_a[q, 3], ff_c[q]
        for r in range(n_hkl):
            fq[r] = a0 * e0[r] + a1 * e1[r] + a2 * e2[r] + a3 * e3[r] + c
    smax = max(spans[0], max(spans[1], spans[2]))
    t_re, t_im = np.empty((3, smax)), np.empty((3, smax))
    # cells outside the set may collect sums across atoms: they are never read, so only read cells are reset
    box_re, box_im = np.zeros(spans[0] * spans[1] * spans[2]), np.zeros(spans[0] * spans[1] * spans[2])
    x = np.empty(3)
    for j in range(frac.shape[0]):
        for g in range(m):
            for a in range(3):
                x[a] = rot[g, a, 0] * frac[j, 0] + rot[g, a, 1] * frac[j, 1] + rot[g, a, 2] * frac[j, 2] + tran[g, a]
            _power_tables(x, lo, spans, t_re, t_im)
            _image_into_box(t_re, t_im, spans, rows, real, box_re, box_im)
        fq, dw, o = f0[zi[j]], e[4 * n_z + j], occ[j]  # row views: no index wrap-around in the loops
        for r in range(n_hkl):
            re[r] += o * fq[r] * dw[r] * box_re[cell_of[r]]
        if not real:
            for r in range(n_hkl):
                im[r] += o * fq[r] * dw[r] * box_im[cell_of[r]]
        for r in range(n_hkl):  # after all reads: a reflection listed twice reads its cell twice
            box_re[cell_of[r]] = 0.0
            box_im[cell_of[r]] = 0.0


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
