"""builder/setting.py: the reduced P 1 21/c 1 cell of a space-group-14 lattice, checked against brute force and
gemmi's Niggli reduction, and the index map that a measured-data reader needs."""
from __future__ import annotations

import itertools

import gemmi
import numpy as np
import pytest

from builder.setting import standardise

P21C = gemmi.SpaceGroup("P 1 21/c 1")


def _lengths(cell6) -> tuple[float, float]:
    return float(cell6[0]), float(cell6[2])


def _brute_force(cell: gemmi.UnitCell) -> tuple[float, float]:
    """Shortest c, then shortest a, over every P 1 21/c 1 cell a' = p a + q c, c' = r a + s c (r even, s odd,
    ps − qr = ±1) with coefficients up to ±6: a second, exhaustive path to the rule."""
    orth = np.array(cell.orth.mat.tolist())
    ac = orth[:, [0, 2]]
    best = None
    rng = range(-6, 7)
    for p, q, r, s in itertools.product(rng, rng, rng, rng):
        if r % 2 or not s % 2 or abs(p * s - q * r) != 1:
            continue
        key = (round(float(np.linalg.norm(ac @ (r, s))), 6), round(float(np.linalg.norm(ac @ (p, q))), 6))
        best = key if best is None or key < best else best
    return best[1], best[0]


def _oblique(rng: np.random.Generator) -> tuple[gemmi.UnitCell, gemmi.Op]:
    """A P 1 21/c 1 cell made oblique by a random unimodular map that keeps the c glide (r even, s odd)."""
    a, b, c = rng.uniform(4.0, 12.0, 3)
    beta = rng.uniform(91.0, 120.0)
    base = gemmi.UnitCell(a, b, c, 90.0, beta, 90.0)
    while True:
        p, q, r, s = (int(v) for v in rng.integers(-3, 4, 4))
        if r % 2 == 0 and s % 2 and p * s - q * r == 1:
            break
    op = gemmi.Op("x,y,z")
    inv = np.rint(np.linalg.inv(np.array([[p, 0, r], [0, 1, 0], [q, 0, s]], dtype=float)))
    op.rot = [[int(v) * gemmi.Op.DEN for v in row] for row in inv]
    return base.changed_basis_forward(op, False), op


def test_every_equivalent_cell_gives_the_same_reduced_cell() -> None:
    rng = np.random.default_rng(11)
    for _ in range(40):
        cell, _ = _oblique(rng)
        std = standardise(cell, P21C)
        assert std.cell6[4] >= 90.0 and std.cell6[3] == pytest.approx(90) and std.cell6[5] == pytest.approx(90)
        assert gemmi.UnitCell(*std.cell6).volume == pytest.approx(cell.volume, rel=1e-9)
        assert _lengths(std.cell6) == pytest.approx(_brute_force(cell), abs=1e-5)
        again = standardise(gemmi.UnitCell(*std.cell6), P21C)  # reduced already: kept as it is
        np.testing.assert_allclose(again.cell6, std.cell6, atol=1e-9)
        assert again.op.triplet() == "x,y,z"


def test_min_edge_is_the_niggli_shortest_vector_of_the_ac_net() -> None:
    """gemmi's Niggli cell of the lattice has edges {|b|, |u|, |v|} with (u, v) a reduced basis of the ac net;
    the shortest of a', c' is |u| (either u lies in the glide coset and is c', or it completes c' as a')."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        cell, _ = _oblique(rng)
        std = standardise(cell, P21C)
        gv = gemmi.GruberVector(cell, "P", True)
        gv.niggli_reduce()
        edges = sorted(gv.cell_parameters()[:3])
        edges.remove(min(edges, key=lambda e: abs(e - cell.b)))
        assert min(_lengths(std.cell6)) == pytest.approx(edges[0], rel=1e-6)


def test_p21n_takes_the_shorter_glide_diagonal() -> None:
    """P2₁/n 9.41 7.91 6.78 β 95.77 (COD 2103766): ≤ 10 Å in its own setting, but every P2₁/c cell needs the glide
    diagonal a ± c, at least 11.03 Å; a' is the old c (6.78 Å, shorter than a)."""
    cell = gemmi.UnitCell(9.4098, 7.9101, 6.7759, 90, 95.77, 90)
    std = standardise(cell, gemmi.SpaceGroup("P 1 21/n 1"))
    cb = np.cos(np.radians(95.77))
    diag = np.sqrt(9.4098**2 + 6.7759**2 + 2 * 9.4098 * 6.7759 * cb)  # |a + c|, the shorter with β > 90°
    np.testing.assert_allclose(std.cell6[[0, 1, 2]], [6.7759, 7.9101, diag], rtol=1e-6)
    assert diag == pytest.approx(11.03, abs=0.01)


def test_index_map_keeps_d_spacings_and_absences() -> None:
    """Miller indices of the input setting map to the standard cell with the same d, and the P2₁/n absences
    (h0l, h + l odd; 0k0, k odd) become the P2₁/c ones (h0l, l odd; 0k0, k odd)."""
    cell = gemmi.UnitCell(9.4098, 7.9101, 6.7759, 90, 95.77, 90)
    sg = gemmi.SpaceGroup("P 1 21/n 1")
    std = standardise(cell, sg)
    hkl = np.array([(h, k, l) for h in range(-4, 5) for k in range(-3, 4) for l in range(-4, 5) if (h, k, l) != (0, 0, 0)])
    new = std.hkl(hkl)
    d0 = np.array([cell.calculate_d(list(map(int, h))) for h in hkl])
    d1 = np.array([gemmi.UnitCell(*std.cell6).calculate_d(list(map(int, h))) for h in new])
    np.testing.assert_allclose(d0, d1, rtol=1e-10)
    absent0 = np.array([sg.operations().is_systematically_absent(list(map(int, h))) for h in hkl])
    absent1 = np.array([P21C.operations().is_systematically_absent(list(map(int, h))) for h in new])
    np.testing.assert_array_equal(absent0, absent1)
    x = np.array([[0.1, 0.2, 0.3], [0.7, 0.4, 0.9]])
    shift = new @ std.frac(x).T - hkl @ x.T  # h'·x' − h·x: whole numbers, so every phase is kept
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)


def test_other_groups_are_refused() -> None:
    with pytest.raises(ValueError, match="not P2₁/c"):
        standardise(gemmi.UnitCell(5, 6, 7, 90, 100, 90), gemmi.SpaceGroup("C 1 2/c 1"))
