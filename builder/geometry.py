"""Distance checks and atom placement for the fillers, compiled with numba: the generator's hot loop.

A candidate position must keep its rule against every atom already placed, every symmetry image and every
lattice image (paper §3.5). For isometries d(g·x, y) = d(x, g⁻¹·y), so checking the candidate alone against all
images of the placed atoms, plus its own images, covers every pair. A violation needs d ≤ reach (d_min, or
max(0.9, 1.4)·R_Σ), and a lattice image at fractional offset f + n is at least |f_a + n_a|/|a*| away (1/|a*|:
the spacing of the lattice planes normal to a*), so only the offsets n inside that slab are visited: exact for
any cell, and most pairs are cleared by a comparison or three.

The kernels take no random generator: they read uniforms that NumPy drew beforehand (`fill.py`), one after the
other as the procedure needs them, so the numbers a structure uses depend only on its seed.
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["RULE_MIN_DISTANCE", "RULE_MOLECULE", "first_valid", "add_atom", "place_general", "draw_element",
           "stream_need"]

RULE_MIN_DISTANCE = 0  # d ≥ d_min (random atoms)
RULE_MOLECULE = 1  # d > lo·R_Σ and d ∉ [band_lo·R_Σ, band_hi·R_Σ] (artificial molecules)
_COINCIDENT = 1e-4  # Å: images of a special-position atom that coincide with it (counted by its occupancy)
_SLAB_MARGIN = 1.0 + 1e-9  # widen the visited slab by a hair so rounding never drops a boundary image


@numba.njit(cache=True, inline="always")
def _violates(d: float, r_sum: float, rule: int, p0: float, p1: float, p2: float) -> bool:
    if rule == RULE_MIN_DISTANCE:
        return d < p0
    return d <= p0 * r_sum or (p1 * r_sum <= d <= p2 * r_sum)


@numba.njit(cache=True)
def _pair_violates(f0: float, f1: float, f2: float, orth: np.ndarray, recip: np.ndarray, r_sum: float,
                   rule: int, p0: float, p1: float, p2: float, skip_coincident: bool) -> bool:
    """Does any lattice image of the fractional difference f break the rule? Visits only the offsets n with
    |f_a + n_a| ≤ reach·|a*| on every axis (the projection on a* bounds the distance from below)."""
    reach = (p0 if rule == RULE_MIN_DISTANCE else max(p0, p2) * r_sum) * _SLAB_MARGIN
    w0, w1, w2 = reach * recip[0], reach * recip[1], reach * recip[2]
    f0 -= np.floor(f0 + 0.5)  # |f_a| ≤ ½: with w_a < ½ only n_a = 0 can be inside the slab
    if w0 < 0.5 and abs(f0) > w0:
        return False
    f1 -= np.floor(f1 + 0.5)
    if w1 < 0.5 and abs(f1) > w1:
        return False
    f2 -= np.floor(f2 + 0.5)
    if w2 < 0.5 and abs(f2) > w2:
        return False
    lo0, hi0 = int(math.ceil(-w0 - f0)), int(math.floor(w0 - f0))
    lo1, hi1 = int(math.ceil(-w1 - f1)), int(math.floor(w1 - f1))
    lo2, hi2 = int(math.ceil(-w2 - f2)), int(math.floor(w2 - f2))
    if lo0 > hi0 or lo1 > hi1 or lo2 > hi2:
        return False
    for i in range(lo0, hi0 + 1):
        g0 = f0 + i
        for j in range(lo1, hi1 + 1):
            g1 = f1 + j
            for k in range(lo2, hi2 + 1):
                g2 = f2 + k
                x = orth[0, 0] * g0 + orth[0, 1] * g1 + orth[0, 2] * g2
                y = orth[1, 0] * g0 + orth[1, 1] * g1 + orth[1, 2] * g2
                z = orth[2, 0] * g0 + orth[2, 1] * g1 + orth[2, 2] * g2
                d = math.sqrt(x * x + y * y + z * z)
                if skip_coincident and d < _COINCIDENT:
                    continue
                if _violates(d, r_sum, rule, p0, p1, p2):
                    return True
    return False


@numba.njit(cache=True)
def _fits(c0: float, c1: float, c2: float, r: float, orth: np.ndarray, recip: np.ndarray, rot: np.ndarray,
          tran: np.ndarray, img: np.ndarray, img_r: np.ndarray, n_img: int, rule: int, p0: float, p1: float,
          p2: float) -> bool:
    """Candidate (c0, c1, c2) with radius r against every placed image, then against its own images."""
    for q in range(n_img):
        if _pair_violates(c0 - img[q, 0], c1 - img[q, 1], c2 - img[q, 2], orth, recip, r + img_r[q], rule,
                          p0, p1, p2, False):
            return False
    for g in range(rot.shape[0]):  # operation 0 is the identity: its lattice translations
        y0 = rot[g, 0, 0] * c0 + rot[g, 0, 1] * c1 + rot[g, 0, 2] * c2 + tran[g, 0]
        y1 = rot[g, 1, 0] * c0 + rot[g, 1, 1] * c1 + rot[g, 1, 2] * c2 + tran[g, 1]
        y2 = rot[g, 2, 0] * c0 + rot[g, 2, 1] * c1 + rot[g, 2, 2] * c2 + tran[g, 2]
        if _pair_violates(c0 - y0, c1 - y1, c2 - y2, orth, recip, 2.0 * r, rule, p0, p1, p2, True):
            return False
    return True


@numba.njit(cache=True)
def first_valid(cand: np.ndarray, cand_r: np.ndarray, orth: np.ndarray, recip: np.ndarray, rot: np.ndarray,
                tran: np.ndarray, img: np.ndarray, img_r: np.ndarray, n_img: int, rule: int, p0: float, p1: float,
                p2: float) -> int:
    """Index of the first candidate (fractional, rows) that keeps the rule against everything, or -1.

    img[:n_img] are the fractional images of all placed atoms, img_r their covalent radii; cand_r the
    candidates' radii. p0, p1, p2 are d_min (RULE_MIN_DISTANCE) or the factors 0.9, 1.1, 1.4 (RULE_MOLECULE).
    """
    for t in range(cand.shape[0]):
        if _fits(cand[t, 0], cand[t, 1], cand[t, 2], cand_r[t], orth, recip, rot, tran, img, img_r, n_img, rule,
                 p0, p1, p2):
            return t
    return -1


@numba.njit(cache=True)
def add_atom(x0: float, x1: float, x2: float, z: int, radius: float, occ: float, rot: np.ndarray,
             tran: np.ndarray, frac: np.ndarray, zs: np.ndarray, occs: np.ndarray, img: np.ndarray,
             img_r: np.ndarray, anchors: np.ndarray, counts: np.ndarray) -> None:
    """Append an atom and its images (wrapped into [0, 1)); counts = [atoms, images, anchors, general atoms].
    Non-H atoms are anchors: what a new atom may bond to (§3.5 step 4; H bonds once)."""
    n, m = counts[0], counts[1]
    if n == zs.shape[0]:
        raise RuntimeError("placed more atoms than the capacity allows")
    frac[n, 0], frac[n, 1], frac[n, 2] = x0, x1, x2
    zs[n], occs[n] = z, occ
    for g in range(rot.shape[0]):
        for a in range(3):
            y = rot[g, a, 0] * x0 + rot[g, a, 1] * x1 + rot[g, a, 2] * x2 + tran[g, a]
            img[m, a] = y - np.floor(y)
        img_r[m] = radius
        m += 1
    if z != 1:
        anchors[counts[2]] = n
        counts[2] += 1
    counts[0], counts[1] = n + 1, m


@numba.njit(cache=True)
def draw_element(u: float, table_z: np.ndarray, cdf: np.ndarray, excluded: np.ndarray) -> int:
    """Inverse-CDF draw from the table, renormalised over the entries not excluded (a boolean mask): "try again
    with a different element" (§3.5 step 6). With every entry excluded, the plain draw."""
    total, prev = 0.0, 0.0
    for k in range(len(cdf)):
        if not excluded[k]:
            total += cdf[k] - prev
        prev = cdf[k]
    use_mask = total > 0.0
    if not use_mask:
        total = 1.0
    target, acc, prev, last = u * total, 0.0, 0.0, len(cdf) - 1
    for k in range(len(cdf)):
        if not use_mask or not excluded[k]:
            acc += cdf[k] - prev
            last = k
            if acc > target:
                return table_z[k]
        prev = cdf[k]
    return table_z[last]


@numba.njit(cache=True)
def stream_need(molecules: bool, tries: int) -> int:
    """Most uniforms one general atom can use: an element, then 3 per random try, or two passes of 4 per bond
    try and another element. `place_general` stops before an atom when fewer than this are left."""
    return 1 + (8 * tries + 1 if molecules else 3 * tries)


@numba.njit(cache=True)
def _bond(z: int, u: np.ndarray, q: int, tries: int, radii: np.ndarray, bond_lo: float, bond_hi: float,
          orth: np.ndarray, frac_m: np.ndarray, recip: np.ndarray, rot: np.ndarray, tran: np.ndarray, rule: int,
          p0: float, p1: float, p2: float, frac: np.ndarray, zs: np.ndarray, occs: np.ndarray, img: np.ndarray,
          img_r: np.ndarray, anchors: np.ndarray, counts: np.ndarray) -> tuple[bool, int]:
    """§3.5 steps 4–6, up to `tries` candidates from the uniforms at u[q:], 4 each: anchor A (uniform over the
    anchors), d ~ U(lo, hi)·R_Σ, and a point uniform on the sphere about A (z ~ U(−1, 1), φ ~ U(0, 2π): the
    distribution of Muller's normalised Gaussian, from two uniforms). The first candidate that fits is kept."""
    n_anchor, r = counts[2], radii[z]
    for _ in range(tries):
        a = anchors[min(int(u[q] * n_anchor), n_anchor - 1)]
        length = (bond_lo + (bond_hi - bond_lo) * u[q + 1]) * (radii[zs[a]] + r)
        cz = 2.0 * u[q + 2] - 1.0
        phi = 2.0 * math.pi * u[q + 3]
        q += 4
        rxy = math.sqrt(max(0.0, 1.0 - cz * cz)) * length
        v0, v1, v2 = rxy * math.cos(phi), rxy * math.sin(phi), cz * length  # Cartesian bond vector
        c0 = frac[a, 0] + frac_m[0, 0] * v0 + frac_m[0, 1] * v1 + frac_m[0, 2] * v2
        c1 = frac[a, 1] + frac_m[1, 0] * v0 + frac_m[1, 1] * v1 + frac_m[1, 2] * v2
        c2 = frac[a, 2] + frac_m[2, 0] * v0 + frac_m[2, 1] * v1 + frac_m[2, 2] * v2
        c0, c1, c2 = c0 - np.floor(c0), c1 - np.floor(c1), c2 - np.floor(c2)
        if _fits(c0, c1, c2, r, orth, recip, rot, tran, img, img_r, counts[1], rule, p0, p1, p2):
            add_atom(c0, c1, c2, z, r, 1.0, rot, tran, frac, zs, occs, img, img_r, anchors, counts)
            return True, q
    return False, q


@numba.njit(cache=True)
def place_general(start: int, n_total: int, n_heavy: int, molecules: bool, tries: int, u: np.ndarray, q: int,
                  table_z: np.ndarray, cdf: np.ndarray, radii: np.ndarray, bond_lo: float, bond_hi: float,
                  orth: np.ndarray, frac_m: np.ndarray, recip: np.ndarray, rot: np.ndarray, tran: np.ndarray,
                  rule: int, p0: float, p1: float, p2: float, frac: np.ndarray, zs: np.ndarray, occs: np.ndarray,
                  img: np.ndarray, img_r: np.ndarray, anchors: np.ndarray, counts: np.ndarray) -> tuple[int, int]:
    """Place general atoms start..n_total − 1 (the first n_heavy drawn from the table, then H) in order, reading
    uniforms from u[q:] as needed (§3.5): uniform positions for the random fillers and for the first general atom
    of a molecule structure (step 2: special atoms do not count; counts[3] holds the general atoms placed so
    far), bonds to anchors afterwards (steps 3–6), one other element, then drop. Returns (next atom, next q):
    it stops early when u may run short, and the caller appends uniforms and calls again."""
    excluded = np.zeros(len(table_z), dtype=np.bool_)
    need = stream_need(molecules, tries)
    for i in range(start, n_total):
        if len(u) - q < need:
            return i, q
        z = 1
        if i < n_heavy:  # step 3
            z = draw_element(u[q], table_z, cdf, excluded)
            q += 1
        if not molecules or counts[3] == 0 or counts[2] == 0:
            for _ in range(tries):
                c0, c1, c2 = u[q], u[q + 1], u[q + 2]
                q += 3
                if _fits(c0, c1, c2, radii[z], orth, recip, rot, tran, img, img_r, counts[1], rule, p0, p1, p2):
                    add_atom(c0, c1, c2, z, radii[z], 1.0, rot, tran, frac, zs, occs, img, img_r, anchors, counts)
                    counts[3] += 1
                    break
            continue
        ok, q = _bond(z, u, q, tries, radii, bond_lo, bond_hi, orth, frac_m, recip, rot, tran, rule, p0, p1, p2,
                      frac, zs, occs, img, img_r, anchors, counts)
        if not ok and z != 1 and len(table_z) > 1:  # step 6: another element, then drop
            excluded[:] = table_z == z
            z = draw_element(u[q], table_z, cdf, excluded)
            excluded[:] = False
            ok, q = _bond(z, u, q + 1, tries, radii, bond_lo, bond_hi, orth, frac_m, recip, rot, tran, rule, p0, p1,
                          p2, frac, zs, occs, img, img_r, anchors, counts)
        if ok:
            counts[3] += 1
    return n_total, q
