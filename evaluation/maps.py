"""Phased maps from measured amplitudes (gemmi FFT), E-values, map skewness and the peak search.

Conventions as everywhere in phaseforge and in gemmi: F(h) = Σ f exp(+2πi h·x), ρ(x) = (1/V) Σ F(h) exp(−2πi h·x).
`phased_map` puts the unique reflections of any space group into a `gemmi.Mtz` and lets gemmi expand them by
symmetry and Fourier-transform them (`Mtz.transform_f_phi_to_map`), so the map is in the input's own setting.

Peaks: grid points higher than their 26 neighbours (periodic), refined by a parabola through the neighbours on
each axis, then made unique under the space group: a peak is dropped when one of its symmetry images (with
lattice translations) lies within `PEAK_MERGE` Å of a higher peak already kept (so a peak on a special position
counts once).
"""
from __future__ import annotations

import gemmi
import numpy as np

from builder.reflections import stol2
from builder.symmetry import images, space_group_ops, wrap
from evaluation.french_wilson import shell_mean

__all__ = ["phased_map", "e_values", "skewness", "find_peaks", "PEAK_MERGE", "SAMPLE_RATE"]

PEAK_MERGE = 0.5  # Å: symmetry images of one peak closer than this are one peak
SAMPLE_RATE = 3.0  # grid spacing ≈ d_min / SAMPLE_RATE


def phased_map(cell6: np.ndarray, sg: gemmi.SpaceGroup, hkl: np.ndarray, amp: np.ndarray, phase: np.ndarray,
               sample_rate: float = SAMPLE_RATE) -> gemmi.FloatGrid:
    """The Fourier map of unique reflections (phases in radians) on a grid covering the unit cell.

    Args:
        cell6: the cell of `hkl`.
        sg: the space group in the same setting.
        hkl: (M, 3) unique reflections (no two symmetry equivalents), without 0 0 0.
        amp: (M,) amplitudes (|F| or |E|).
        phase: (M,) phases, radians.
        sample_rate: grid spacing about d_min / sample_rate.

    Returns:
        A gemmi.FloatGrid with cell and space group set (F000 = 0: the map has mean zero).
    """
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = sg
    mtz.set_cell_for_all(gemmi.UnitCell(*map(float, cell6)))
    mtz.add_dataset("phaseforge")
    mtz.add_column("F", "F")
    mtz.add_column("PHI", "P")
    data = np.column_stack([np.asarray(hkl, dtype=np.float64), amp, np.degrees(phase)]).astype(np.float32)
    mtz.set_data(data)
    return mtz.transform_f_phi_to_map("F", "PHI", sample_rate=sample_rate)


def e_values(cell6: np.ndarray, sg: gemmi.SpaceGroup, hkl: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Normalised |E| = |F| / sqrt(ε ⟨|F|²/ε⟩) in resolution shells (ε without centring, from gemmi)."""
    eps = np.asarray(sg.operations().epsilon_factor_without_centering_array(
        np.ascontiguousarray(hkl, dtype=np.int32)), dtype=np.float64)
    return np.asarray(amp) / np.sqrt(shell_mean(np.asarray(amp, dtype=np.float64) ** 2, stol2(cell6, hkl), eps))


def skewness(grid: gemmi.FloatGrid) -> float:
    """⟨(ρ − ⟨ρ⟩)³⟩ / σ(ρ)³ over the grid: the map-space form of the Σ2 triplet sum (high for atomic maps)."""
    rho = np.asarray(grid.array, dtype=np.float64)
    dev = rho - rho.mean()
    var = float((dev * dev).mean())
    return float((dev**3).mean() / var**1.5) if var > 0 else 0.0


def _local_maxima(rho: np.ndarray) -> np.ndarray:
    """(K, 3) grid indices of points above all 26 neighbours (periodic boundaries)."""
    peak = np.ones(rho.shape, dtype=bool)
    for s in np.ndindex(3, 3, 3):
        if s != (1, 1, 1):
            peak &= rho > np.roll(rho, tuple(1 - v for v in s), axis=(0, 1, 2))
    return np.argwhere(peak)


def _refine(rho: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sub-grid peak positions (fractional) by a parabola through each point and its two axis neighbours."""
    n = np.array(rho.shape)
    out = idx.astype(np.float64)
    for ax in range(3):
        up, dn = idx.copy(), idx.copy()
        up[:, ax] = (up[:, ax] + 1) % n[ax]
        dn[:, ax] = (dn[:, ax] - 1) % n[ax]
        c, p, m = rho[tuple(idx.T)], rho[tuple(up.T)], rho[tuple(dn.T)]
        den = p - 2.0 * c + m
        out[:, ax] += np.where(den < 0, 0.5 * (m - p) / np.where(den < 0, den, -1.0), 0.0)
    return wrap(out / n)


def find_peaks(grid: gemmi.FloatGrid, n_peaks: int, merge: float = PEAK_MERGE) -> list[dict]:
    """The `n_peaks` highest symmetry-unique peaks of a map.

    Returns:
        [{"x", "y", "z" (fractional, in the map's setting), "height" (map units), "sigma" (height / rms)}],
        highest first.
    """
    rho = np.asarray(grid.array, dtype=np.float64)
    rms = float(np.sqrt(np.mean((rho - rho.mean()) ** 2))) or 1.0
    idx = _local_maxima(rho)
    heights = rho[tuple(idx.T)]
    order = np.argsort(-heights, kind="stable")
    idx, heights = idx[order], heights[order]
    frac = _refine(rho, idx)
    ops = space_group_ops(grid.spacegroup.xhm())
    orth = np.array(grid.unit_cell.orth.mat.tolist())
    kept: list[int] = []
    kept_xyz = np.zeros((0, 3))
    for i in range(len(frac)):
        if len(kept) >= n_peaks or heights[i] <= 0:
            break
        img = images(ops.rot, ops.tran, frac[i:i + 1])[0]  # (G, 3)
        if len(kept):
            diff = img[:, None, :] - kept_xyz[None, :, :]
            diff -= np.round(diff)
            if np.linalg.norm(diff @ orth.T, axis=-1).min() < merge:
                continue
        kept.append(i)
        kept_xyz = np.vstack([kept_xyz, frac[i]])
    return [{"x": float(frac[i, 0]), "y": float(frac[i, 1]), "z": float(frac[i, 2]),
             "height": float(heights[i]), "sigma": float(heights[i] / rms)} for i in kept]
