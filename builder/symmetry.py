"""Space-group operations and inversion-centre special positions, derived from gemmi's tables.

Nothing here is typed in by hand: the operations come from `gemmi.SpaceGroup(...).operations()` and the
special positions of a centrosymmetric group are solved from its operations (paper §3.5: "In the space group
P2₁/c, there are four distinct special positions corresponding to centers of inversion").
"""
from __future__ import annotations

import dataclasses
import functools

import gemmi
import numpy as np

__all__ = ["SymOps", "space_group_ops", "inversion_centres", "site_multiplicity", "wrap", "SPECIAL_TOL",
           "images", "near_multiplicity", "distinct_positions"]

SPECIAL_TOL = 0.1  # Å: images of one atom closer than this are one atom on a special position (real CIFs)


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
