"""Space-group operations, inversion-centre special positions and permissible origin shifts, from gemmi's tables.

Nothing here is typed in by hand: the operations come from `gemmi.SpaceGroup(...).operations()`; the special
positions of a centrosymmetric group are solved from its operations (paper §3.5: "In the space group P2₁/c, there
are four distinct special positions corresponding to centers of inversion"), and so are the origin shifts that
the phase-agreement metric r and the PhAI loss maximise (minimise) over (phasing-baselines.md §1.6).
"""
from __future__ import annotations

import dataclasses
import functools

import gemmi
import numpy as np

__all__ = ["SymOps", "space_group_ops", "inversion_centres", "site_multiplicity", "wrap", "SPECIAL_TOL",
           "images", "near_multiplicity", "distinct_positions", "origin_shifts", "origin_shift_parity",
           "P21C", "P21C_ORIGIN_SHIFTS", "SOLVED_R"]

SPECIAL_TOL = 0.1  # Å: images of one atom closer than this are one atom on a special position (real CIFs)
P21C = "P 1 21/c 1"  # the space group of PhAI's training data, loss and metric
SOLVED_R = 0.8  # a structure is "solved" when r, maximised over the origin shifts, is >= this (PhAI; Acta A 2026)


@dataclasses.dataclass(frozen=True)
class SymOps:
    """All operations of a space group (centring included) as arrays: x' = rot @ x + tran."""

    name: str  # gemmi's extended H-M symbol, e.g. "P 1 21/c 1"
    number: int
    crystal_system: str
    rot: np.ndarray  # (n, 3, 3) float64
    tran: np.ndarray  # (n, 3) float64, fractional
    centrosymmetric: bool
    inversion_at_origin: bool  # -x,-y,-z is an operation: every phase is 0 or π
    half: np.ndarray  # indices of one operation per {g, inversion∘g} pair (valid when inversion_at_origin)

    @property
    def n(self) -> int:
        return len(self.rot)


def wrap(x: np.ndarray) -> np.ndarray:
    """Fractional coordinates into [0, 1)."""
    y = x - np.floor(x)
    return np.where(y >= 1.0, 0.0, y)


@functools.lru_cache(maxsize=64)
def space_group_ops(name: str) -> SymOps:
    """Operations of the space group `name` (any symbol gemmi knows: "P21/c", "P 1 21/n 1", "14", Hall)."""
    sg = _find(name)
    ops = list(sg.operations())
    rot = np.array([np.array(op.rot, dtype=np.float64) / gemmi.Op.DEN for op in ops])
    tran = np.array([np.array(op.tran, dtype=np.float64) / gemmi.Op.DEN for op in ops])
    inv = [i for i, (r, t) in enumerate(zip(rot, tran)) if np.allclose(r, -np.eye(3)) and np.allclose(wrap(t), 0)]
    half: list[int] = []
    if inv:
        seen: set[int] = set()
        for i, (r, t) in enumerate(zip(rot, tran)):
            if i in seen:
                continue
            j = _index_of(rot, tran, -r, -t)
            seen.update({i, j})
            half.append(i)
    return SymOps(
        name=sg.xhm(), number=sg.number, crystal_system=sg.crystal_system_str(), rot=rot, tran=tran,
        centrosymmetric=sg.is_centrosymmetric(), inversion_at_origin=bool(inv), half=np.array(half, dtype=np.int64),
    )


def _find(name: str) -> gemmi.SpaceGroup:
    sg = gemmi.find_spacegroup_by_name(str(name))
    if sg is None:
        raise ValueError(f"unknown space group {name!r}: use a Hermann-Mauguin symbol such as 'P 1 21/c 1'")
    return sg


def _index_of(rot: np.ndarray, tran: np.ndarray, r: np.ndarray, t: np.ndarray) -> int:
    for j, (rj, tj) in enumerate(zip(rot, tran)):
        if np.allclose(rj, r) and np.allclose(wrap(tj - t + 1e-9), 0, atol=1e-6):
            return j
    raise ValueError("space-group operations are not closed under inversion")


def _frac_dist_zero(d: np.ndarray) -> np.ndarray:
    d = d - np.round(d)
    return np.all(np.abs(d) < 1e-6, axis=-1)


def site_multiplicity(ops: SymOps, x: np.ndarray) -> int:
    """Order of the site-symmetry group of fractional point x: how many operations map x onto itself (mod 1)."""
    images = np.einsum("nij,j->ni", ops.rot, x) + ops.tran
    return int(_frac_dist_zero(images - x).sum())


@functools.lru_cache(maxsize=64)
def inversion_centres(name: str) -> tuple[tuple[float, float, float], ...]:
    """One representative of each orbit of inversion centres in the unit cell (P2₁/c: four).

    An operation with rot = -I and translation t fixes every x with 2x ≡ t (mod 1), i.e. x = t/2 + n/2 with
    n ∈ {0, 1}³; these candidates are grouped into orbits under the group and one per orbit is kept.
    """
    ops = space_group_ops(name)
    cands = []
    for r, t in zip(ops.rot, ops.tran):
        if not np.allclose(r, -np.eye(3)):
            continue
        for n in np.ndindex(2, 2, 2):
            cands.append(wrap(t / 2 + np.array(n) / 2))
    reps: list[np.ndarray] = []
    for c in sorted(cands, key=lambda v: tuple(np.round(v, 6))):
        images = np.einsum("nij,j->ni", ops.rot, c) + ops.tran
        if not any(_frac_dist_zero(images - r).any() for r in reps):
            reps.append(c)
    return tuple(tuple(float(v) for v in r) for r in reps)


def images(rot: np.ndarray, tran: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """(N, G, 3) images g·x of each point (not wrapped)."""
    return np.einsum("gij,nj->ngi", rot, frac) + tran[None]


def _cart_mod1(orth: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.linalg.norm((d - np.round(d)) @ orth.T, axis=-1)


def near_multiplicity(rot: np.ndarray, tran: np.ndarray, orth: np.ndarray, frac: np.ndarray,
                      tol: float = SPECIAL_TOL) -> np.ndarray:
    """Site-symmetry order of each point within `tol` Å: how many operations map it that close to itself.

    The tolerant counterpart of `site_multiplicity`, for measured coordinates in real CIFs."""
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    return (_cart_mod1(orth, images(rot, tran, frac) - frac[:, None, :]) < tol).sum(axis=1).astype(np.int64)


def distinct_positions(rot: np.ndarray, tran: np.ndarray, orth: np.ndarray, frac: np.ndarray,
                       tol: float = SPECIAL_TOL) -> int:
    """How many symmetry-distinct positions the points occupy (points within `tol` Å of an orbit count once)."""
    reps: list[np.ndarray] = []
    for x in np.asarray(frac, dtype=np.float64).reshape(-1, 3):
        orbit = images(rot, tran, x[None])[0]  # (G, 3)
        if not any((_cart_mod1(orth, orbit - r) < tol).any() for r in reps):
            reps.append(x)
    return len(reps)


@functools.lru_cache(maxsize=64)
def origin_shifts(name: str) -> np.ndarray:
    """The permissible origin shifts t = s/2, s ∈ {0,1}³, of a space group: (S, 3) int64 s, read-only.

    Moving the origin by t maps each operation (R, τ) to (R, τ + (R − I)t); t is permissible when the shifted
    operations are the group's own (mod lattice), so phases change by 2π h·t = π h·s and |F| not at all. Rows come
    in np.ndindex order (row i ↔ s = (i >> 2 & 1, i >> 1 & 1, i & 1)), row 0 the identity. For P2₁/c these are all
    8 inversion centres; only half-integer shifts are searched (continuous shifts of polar groups are not listed).
    """
    ops = space_group_ops(name)
    keep = []
    for s in np.ndindex(2, 2, 2):
        t = np.array(s, dtype=np.float64) / 2
        shifted = ops.tran + np.einsum("nij,j->ni", ops.rot - np.eye(3), t)
        if all(_has_op(ops, r, tr) for r, tr in zip(ops.rot, shifted)):
            keep.append(s)
    out = np.array(keep, dtype=np.int64).reshape(-1, 3)
    out.setflags(write=False)
    return out


def _has_op(ops: SymOps, r: np.ndarray, t: np.ndarray) -> bool:
    return any(np.allclose(rj, r) and _frac_dist_zero(tj - t) for rj, tj in zip(ops.rot, ops.tran))


def origin_shift_parity(hkl: np.ndarray, shifts: np.ndarray | None = None) -> np.ndarray:
    """(S, N) int64 h·s mod 2 per origin shift s (default: P2₁/c's) and reflection: 1 where the 0/π class flips.

    The sign of a centric phase difference under shift t = s/2 is cos(π h·s) = 1 − 2 (h·s mod 2).
    """
    h = np.asarray(hkl)
    if h.ndim != 2 or h.shape[1] != 3:
        raise ValueError(f"hkl must have shape (N, 3), got {h.shape}")
    s = P21C_ORIGIN_SHIFTS if shifts is None else np.asarray(shifts, dtype=np.int64)
    return (s @ h.astype(np.int64).T) & 1


P21C_ORIGIN_SHIFTS: np.ndarray = origin_shifts(P21C)
