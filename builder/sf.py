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

import numpy as np

from builder.elements import form_factors
from builder.reflections import phai_hkl, stol2
from builder.structure import Structure
from builder.symmetry import SymOps, space_group_ops

__all__ = ["SFPlan", "sf_plan", "structure_factors", "amplitudes_phases", "reflections_of", "PHASE_ZERO_BELOW"]

PHASE_ZERO_BELOW = 0.01  # electrons: phases of |F| <= this are set to 0 (as PhAI's data generator does)
_TWO_PI = 2.0 * np.pi


@dataclasses.dataclass(frozen=True)
class SFPlan:
    """Per (space group, reflection set) precomputation: h·R_g and h·t_g for the operations summed.

    Holds a scratch workspace so the hot path allocates no large temporaries (fresh multi-100 kB arrays cost
    page faults that tripled the time); a plan is therefore for one thread at a time.
    """

    ops: SymOps
    hkl: np.ndarray  # (H, 3) int
    hr_t: np.ndarray  # (3, m*H) float64: columns h·R_g, operation-major
    ht: np.ndarray  # (1, m*H) float64: h·t_g
    real: bool  # F is real (inversion at the origin); then the m operations are one per {g, -g} pair
    _work: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, m*H) float64 and float32 scratch arrays, grown on demand."""
        buf = self._work.get("f64")
        if buf is None or len(buf) < n:
            size = max(n, 2 * (0 if buf is None else len(buf)), 64)
            self._work["f64"] = np.empty((size, self.hr_t.shape[1]))
            self._work["f32"] = np.empty((size, self.hr_t.shape[1]), dtype=np.float32)
        return self._work["f64"][:n], self._work["f32"][:n]


def sf_plan(ops: SymOps, hkl: np.ndarray) -> SFPlan:
    hkl = np.asarray(hkl)
    sel = ops.half if ops.inversion_at_origin else np.arange(ops.n)
    h = hkl.astype(np.float64)
    hr_t = np.ascontiguousarray(np.einsum("hi,mij->mhj", h, ops.rot[sel]).reshape(-1, 3).T)
    ht = np.einsum("hi,mi->mh", h, ops.tran[sel]).reshape(1, -1)
    return SFPlan(ops=ops, hkl=hkl, hr_t=hr_t, ht=ht, real=bool(ops.inversion_at_origin))


def structure_factors(plan: SFPlan, cell: np.ndarray, frac: np.ndarray, z: np.ndarray, occ: np.ndarray,
                      uiso: np.ndarray) -> np.ndarray:
    """Complex F (H,) in electrons for the asymmetric unit (frac, z, occ, uiso) in `cell` (a, b, c, α, β, γ)."""
    n_hkl = len(plan.hkl)
    if len(z) == 0:
        return np.zeros(n_hkl, dtype=np.complex128)
    s2 = stol2(cell, plan.hkl)  # (H,)
    zs, inv = np.unique(np.asarray(z, dtype=np.int64), return_inverse=True)
    f0 = form_factors(zs, s2).astype(np.float32)[inv]  # (N, H)
    u = np.asarray(uiso, dtype=np.float32)[:, None]
    w = f0 * np.exp(np.float32(-8.0 * np.pi**2) * u * s2.astype(np.float32)[None, :])  # Debye-Waller, (N, H)
    w *= np.asarray(occ, dtype=np.float32)[:, None]
    x = np.asarray(frac, dtype=np.float64)
    arg, arg32 = plan.buffers(len(x))
    np.matmul(x, plan.hr_t, out=arg)  # (N, m*H), in cycles
    arg += plan.ht
    arg -= np.floor(arg)  # reduce before float32 trigonometry: keeps ~1e-7 cycle precision
    arg *= _TWO_PI
    arg32[...] = arg
    c = np.cos(arg32, out=arg32).reshape(len(x), -1, n_hkl).sum(axis=1)  # (N, H)
    if plan.real:
        return (2.0 * (c * w).sum(axis=0, dtype=np.float64)).astype(np.complex128)
    arg32[...] = arg
    s = np.sin(arg32, out=arg32).reshape(len(x), -1, n_hkl).sum(axis=1)
    return (c * w).sum(axis=0, dtype=np.float64) + 1j * (s * w).sum(axis=0, dtype=np.float64)


def amplitudes_phases(f: np.ndarray, real: bool) -> tuple[np.ndarray, np.ndarray]:
    """|F| and φ (radians, float32). Centric (real) F gets φ ∈ {0, π}; |F| <= 0.01 e gets φ = 0."""
    amp = np.abs(f)
    if real:
        phase = np.where(f.real < 0, np.pi, 0.0)
    else:
        phase = np.mod(np.angle(f), 2 * np.pi)
    phase = np.where(amp <= PHASE_ZERO_BELOW, 0.0, phase)
    return amp.astype(np.float32), phase.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _phai_plan(space_group: str, max_index: int) -> SFPlan:
    return sf_plan(space_group_ops(space_group), phai_hkl(max_index))


def reflections_of(s: Structure, max_index: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """|F| and φ (float32) on the PhAI set, from the structure exactly as stored (float32 arrays)."""
    plan = _phai_plan(s.space_group, max_index)
    return amplitudes_phases(structure_factors(plan, s.cell, s.frac, s.z, s.occ, s.uiso), plan.real)
