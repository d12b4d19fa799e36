"""The standard P2₁/c cell of a space-group-14 structure, and the P2₁/c size classes of the test sets.

`standardise(cell, sg)` takes a cell in any setting of space group 14 (P 1 21/c 1, P 1 21/n 1, P 1 21/a 1, the
unique-axis-a and -c settings) and returns the **reduced P 1 21/c 1 cell** of its lattice, with the
transformation x' = op(x) of fractional coordinates (and so of Miller indices, h' = h M⁻¹).

Rule. Every P 1 21/c 1 cell of the lattice keeps b (the 2₁ axis) and takes a, c from the net perpendicular to it.
The c-glide translation g (half a lattice vector, fixed by the structure) must equal c/2 modulo the lattice, so c
runs over one coset 2g + 2L of the net; a is any net vector completing a basis with c. Among all of them the
standard cell has

1. the shortest c of that coset, then 2. the shortest a completing it (that a also gives β closest to 90°,
   since a + kc is shortest when its projection on c is smallest), 3. β made obtuse by a, b → −a, −b (same
   handedness), 4. on ties (equal lengths within 1e-6 Å) β closest to 90°, then the file's own axes.

Candidates are enumerated on the Lagrange-reduced basis of the net (coefficients −3..3, which contains the
shortest vector of every coset and the shortest completion of each), each is checked by conjugating the file's
operations and asking gemmi which group they form (`find_spacegroup_by_ops` must give P 1 21/c 1).
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import gemmi
import numpy as np

from builder.symmetry import wrap

__all__ = ["STANDARD_SETTING", "EDGE_TOL", "SIZE_CLASSES", "Standardised", "standardise", "size_class"]

STANDARD_SETTING = "P 1 21/c 1"
EDGE_TOL = 1e-6  # Å: slack for edge comparisons, so that 10.0 stays 10.0 after a basis change
# P2₁/c test-set size classes on the standardised cell (paper: a_n ≤ 10 Å small set; a_n < 20 Å large set)
SIZE_CLASSES = {"small": "all edges <= 10 A", "large": "all edges < 20 A, at least one > 10 A"}
_LEN_TOL = 1e-6  # Å, ties between candidate lengths
_RANGE = range(-3, 4)


@dataclasses.dataclass(frozen=True)
class Standardised:
    """The reduced P 1 21/c 1 cell and the map from the input setting: x' = op(x)."""

    cell6: np.ndarray  # float64 (6,): a, b, c (Å), α, β, γ (deg), β ≥ 90°
    op: gemmi.Op  # fractional coordinates of the input setting -> the standard cell (no origin shift)

    @property
    def matrix(self) -> np.ndarray:
        """M (3, 3) with x' = M x."""
        return np.array(self.op.float_seitz())[:3, :3]

    def frac(self, frac: np.ndarray) -> np.ndarray:
        """(N, 3) fractional coordinates of the input setting in the standard cell, wrapped into [0, 1)."""
        m = np.array(self.op.float_seitz())
        return wrap(np.asarray(frac, dtype=np.float64).reshape(-1, 3) @ m[:3, :3].T + m[:3, 3])

    def hkl(self, hkl: np.ndarray) -> np.ndarray:
        """(N, 3) Miller indices of the input setting in the standard cell: h' = h M⁻¹ (h·x = h'·x')."""
        m_inv = np.rint(np.linalg.inv(self.matrix)).astype(np.int64)
        return np.asarray(hkl, dtype=np.int64).reshape(-1, 3) @ m_inv


def _op_of(m: np.ndarray) -> gemmi.Op:
    op = gemmi.Op("x,y,z")
    op.rot = [[int(round(v * gemmi.Op.DEN)) for v in row] for row in m]
    return op


def _group_in(sg: gemmi.SpaceGroup, op: gemmi.Op) -> str | None:
    """Extended H-M symbol of {op g op⁻¹}: the group seen in coordinates x' = op(x)."""
    ops = [(op * g * op.inverse()).wrap() for g in sg.operations()]
    try:
        found = gemmi.find_spacegroup_by_ops(gemmi.GroupOps(ops))
    except (RuntimeError, ValueError):
        return None
    return None if found is None else found.xhm()


def _reference(sg: gemmi.SpaceGroup) -> gemmi.Op:
    """An op taking the setting of `sg` to P 1 21/c 1 (gemmi's basisop B has x_setting = B x_ref)."""
    target = gemmi.SpaceGroup(STANDARD_SETTING).xhm()
    for op in (sg.basisop.inverse(), sg.basisop):
        if _group_in(sg, op) == target:
            return op
    raise ValueError(f"no transformation of {sg.xhm()} to {STANDARD_SETTING} found (via {sg.basisop.triplet()})")


def _lagrange(g: np.ndarray) -> np.ndarray:
    """U (2, 2) integer with the columns of B U a Lagrange-reduced basis of the net with Gram matrix g = BᵀB."""
    u = np.eye(2, dtype=np.int64)
    for _ in range(200):  # converges in O(log(condition)) steps; the bound only guards against NaN input
        gr = u.T @ g @ u
        if gr[0, 0] > gr[1, 1]:
            u = u[:, ::-1].copy()
            continue
        k = int(np.rint(gr[0, 1] / gr[0, 0]))
        if k == 0:
            return u
        u[:, 1] -= k * u[:, 0]
    raise ValueError("cell reduction did not converge (degenerate cell)")


def _candidates(cell0: gemmi.UnitCell) -> list[tuple[tuple, np.ndarray]]:
    """(sort key, P) for every valid cell: new axes (a', b', c') = (a, b, c) P with a' = p a + q c, b' = ±b,
    c' = r a + s c, r even and s odd (c'/2 ≡ c/2: the glide stays c), det P = +1, β' ≥ 90°."""
    orth = np.array(cell0.orth.mat.tolist())
    ac = orth[:, [0, 2]]  # Cartesian a, c of the reference cell
    red = _lagrange(ac.T @ ac)
    vecs = [red @ np.array(mn) for mn in itertools.product(_RANGE, _RANGE) if any(mn)]
    out = []
    for (p, q), (r, s) in itertools.product(vecs, vecs):
        det = p * s - q * r
        if r % 2 or not s % 2 or abs(det) != 1:
            continue
        a_vec, c_vec = ac @ (p, q), ac @ (r, s)
        cosb = float(a_vec @ c_vec / (np.linalg.norm(a_vec) * np.linalg.norm(c_vec)))
        e = det  # b' = det·b keeps det P = +1
        if cosb > 0:  # acute: a, b -> -a, -b
            p, q, e, cosb = -p, -q, -e, -cosb
        m = np.array([[p, 0, r], [0, e, 0], [q, 0, s]], dtype=np.float64)
        key = (round(float(np.linalg.norm(c_vec)) / _LEN_TOL), round(float(np.linalg.norm(a_vec)) / _LEN_TOL),
               round(abs(cosb), 9), tuple(int(v) for v in (np.abs(m - np.eye(3)).sum(), *m.ravel())))
        out.append((key, m))
    return sorted(out, key=lambda km: km[0])


def standardise(cell: gemmi.UnitCell, sg: gemmi.SpaceGroup) -> Standardised:
    """The reduced P 1 21/c 1 cell of a space-group-14 structure (module docstring: the rule).

    Args:
        cell: the cell in the input's setting.
        sg: its space group (number 14, any setting gemmi knows).

    Returns:
        The standard cell and the op x' = op(x) from the input's fractional coordinates (Miller indices map
        by `Standardised.hkl`).

    Raises:
        ValueError: the group is not 14, the cell is degenerate, or no candidate gives P 1 21/c 1.
    """
    if sg.number != 14:
        raise ValueError(f"space group {sg.number} ({sg.xhm()}) is not P2₁/c (14)")
    op0 = _reference(sg)
    cell0 = cell.changed_basis_forward(op0, False)
    target = gemmi.SpaceGroup(STANDARD_SETTING).xhm()
    for _, p in _candidates(cell0):
        op = _op_of(np.rint(np.linalg.inv(p))) * op0  # coordinates: x' = P⁻¹ x_ref
        new = cell.changed_basis_forward(op, False)
        if new.beta >= 90.0 - 1e-9 and _group_in(sg, op) == target:
            return Standardised(cell6=np.array(new.parameters, dtype=np.float64), op=op)
    raise ValueError(f"no P 1 21/c 1 cell found for {sg.xhm()} (a gemmi table surprise)")


def size_class(cell6: Sequence[float]) -> str | None:
    """'small' (all edges ≤ 10 Å), 'large' (all < 20 Å, one > 10 Å) or None, on the standardised cell."""
    edge = float(max(cell6[:3]))
    if edge <= 10.0 + EDGE_TOL:
        return "small"
    if edge < 20.0 - EDGE_TOL:
        return "large"
    return None
