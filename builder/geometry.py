"""Distance checks for the fillers, compiled with numba: the generator's hot loop.

A candidate position must keep its rule against every atom already placed, every symmetry image and every
neighbouring-cell image (paper §3.5). For isometries d(g·x, y) = d(x, g⁻¹·y), so checking the candidate alone
against all images of the placed atoms, plus its own images, covers every pair.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["RULE_MIN_DISTANCE", "RULE_MOLECULE", "first_valid", "images_of"]

RULE_MIN_DISTANCE = 0  # d ≥ d_min (random atoms)
RULE_MOLECULE = 1  # d > lo·R_Σ and d ∉ [band_lo·R_Σ, band_hi·R_Σ] (artificial molecules)
_COINCIDENT = 1e-4  # Å: images of a special-position atom that coincide with it (counted by its occupancy)


@numba.njit(cache=True, inline="always")
def _violates(d: float, r_sum: float, rule: int, p0: float, p1: float, p2: float) -> bool:
    if rule == RULE_MIN_DISTANCE:
        return d < p0
    return d <= p0 * r_sum or (p1 * r_sum <= d <= p2 * r_sum)


@numba.njit(cache=True)
def _min_image_violates(dfrac: np.ndarray, orth: np.ndarray, r_sum: float, rule: int, p0: float, p1: float,
                        p2: float, skip_coincident: bool) -> bool:
    # Nearest image by rounding, then the 26 neighbouring cells around it: exact for oblique cells too.
    f0 = dfrac[0] - np.round(dfrac[0])
    f1 = dfrac[1] - np.round(dfrac[1])
    f2 = dfrac[2] - np.round(dfrac[2])
    for i in range(-1, 2):
        for j in range(-1, 2):
            for k in range(-1, 2):
                g0, g1, g2 = f0 + i, f1 + j, f2 + k
                x = orth[0, 0] * g0 + orth[0, 1] * g1 + orth[0, 2] * g2
                y = orth[1, 0] * g0 + orth[1, 1] * g1 + orth[1, 2] * g2
                z = orth[2, 0] * g0 + orth[2, 1] * g1 + orth[2, 2] * g2
                d = np.sqrt(x * x + y * y + z * z)
                if skip_coincident and d < _COINCIDENT:
                    continue
                if _violates(d, r_sum, rule, p0, p1, p2):
                    return True
    return False


@numba.njit(cache=True)
def first_valid(cand: np.ndarray, cand_r: np.ndarray, orth: np.ndarray, rot: np.ndarray, tran: np.ndarray,
                img: np.ndarray, img_r: np.ndarray, n_img: int, rule: int, p0: float, p1: float, p2: float) -> int:
    """Index of the first candidate (fractional, rows) that keeps the rule against everything, or -1.

    img[:n_img] are the fractional images of all placed atoms, img_r their covalent radii; cand_r the
    candidates' radii. p0, p1, p2 are d_min (RULE_MIN_DISTANCE) or the factors 0.9, 1.1, 1.4 (RULE_MOLECULE).
    """
    d = np.empty(3)
    for t in range(cand.shape[0]):
        ok = True
        for q in range(n_img):
            for a in range(3):
                d[a] = cand[t, a] - img[q, a]
            if _min_image_violates(d, orth, cand_r[t] + img_r[q], rule, p0, p1, p2, False):
                ok = False
                break
        if ok:
            for g in range(1, rot.shape[0]):  # the candidate's own images (operation 0 is the identity)
                for a in range(3):
                    d[a] = cand[t, a] - (rot[g, a, 0] * cand[t, 0] + rot[g, a, 1] * cand[t, 1]
                                         + rot[g, a, 2] * cand[t, 2] + tran[g, a])
                if _min_image_violates(d, orth, 2.0 * cand_r[t], rule, p0, p1, p2, True):
                    ok = False
                    break
            if ok:
                # translations of the candidate itself (identity operation, neighbouring cells)
                d[0] = d[1] = d[2] = 0.0
                if _min_image_violates(d, orth, 2.0 * cand_r[t], rule, p0, p1, p2, True):
                    ok = False
        if ok:
            return t
    return -1


def images_of(x: np.ndarray, rot: np.ndarray, tran: np.ndarray) -> np.ndarray:
    """(n, 3) fractional images g·x of one point, wrapped into [0, 1)."""
    y = rot @ x + tran
    return y - np.floor(y)
