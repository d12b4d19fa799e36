"""Phase-agreement metric r and the |F|-weighted mean phase error (DESIGN.md, "Metrics").

For one structure, over the observed, not systematically absent reflections of the list (F000 is never in the
list), and for each of the 8 permissible origin shifts t = s/2, s ∈ {0,1}³ of P2₁/c (the inversion centres,
phasing-baselines.md §1.6):

    r(t) = Σ |F|² cos(φ_pred − φ_true + 2π h·t) / Σ |F|²,        r = max_t r(t).

Because 2π h·t = π h·s is a multiple of π, cos(Δφ + π h·s) = (−1)^(h·s) cos Δφ, so all 8 values are one
matrix product. With 0/π phases r = 1 − 2·W, W the |F|²-weighted fraction of wrong signs; by Parseval r is the
Pearson correlation of the two Fourier maps built from the same |F| (F000 excluded), each reflection weighted as
often as it occurs in the list (phai-facts.md, "Inference and the success metric").

The mean phase error (MPE) at the best shift is Σ |F|·|Δφ| / Σ |F|, with Δφ wrapped to [0°, 180°].
Each reflection in the list counts once, exactly as listed (the PhAI set holds the hk0 zone twice under 2/m;
the metric follows the list, as the network's own scoring does).
"""
from __future__ import annotations

import numpy as np

from builder.symmetry import P21C_ORIGIN_SHIFTS as ORIGIN_SHIFTS  # s ∈ {0,1}³, t = s / 2 (np.ndindex order)
from builder.symmetry import SOLVED_R, origin_shift_parity

__all__ = ["SOLVED_R", "ORIGIN_SHIFTS", "phase_r", "phase_r_batch", "phase_r_all_shifts", "summarise"]


def _check_hkl(hkl: np.ndarray) -> np.ndarray:
    h = np.asarray(hkl)
    if h.ndim != 2 or h.shape[1] != 3:
        raise ValueError(f"hkl must have shape (H, 3), got {h.shape}")
    if not np.issubdtype(h.dtype, np.integer):
        if not np.all(np.isfinite(h)) or not np.array_equal(h, np.round(h)):
            raise ValueError("hkl must hold integer Miller indices")
        h = h.astype(np.int64)
    if np.any(np.all(h == 0, axis=1)):
        raise ValueError("hkl must not contain F000 (0, 0, 0)")
    return h.astype(np.int64)


def _shift_signs(hkl: np.ndarray) -> np.ndarray:
    """(H, 8) float64: (−1)^(h·s) = cos(2π h·t) for the 8 origin shifts t = s/2."""
    return 1.0 - 2.0 * origin_shift_parity(hkl, ORIGIN_SHIFTS).T.astype(np.float64)


def _prepare(amp: np.ndarray, phase_pred: np.ndarray, phase_true: np.ndarray, hkl: np.ndarray,
             observed_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    h = _check_hkl(hkl)
    n_hkl = len(h)
    arrays = []
    for name, a in (("amp", amp), ("phase_pred", phase_pred), ("phase_true", phase_true),
                    ("observed_mask", observed_mask)):
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != n_hkl:
            raise ValueError(f"{name} must have shape (B, {n_hkl}), got {a.shape}")
        arrays.append(a)
    amp_, pred, true, mask = arrays
    if not (amp_.shape == pred.shape == true.shape == mask.shape):
        raise ValueError(f"shapes differ: amp {amp_.shape}, phase_pred {pred.shape}, phase_true {true.shape}, "
                         f"observed_mask {mask.shape}")
    mask = mask.astype(bool)
    amp64 = np.where(mask, amp_.astype(np.float64), 0.0)  # unobserved entries may be NaN/garbage
    if np.any(~np.isfinite(amp64)) or np.any(amp64 < 0):
        raise ValueError("observed amplitudes must be finite and non-negative")
    d = np.where(mask, pred.astype(np.float64) - true.astype(np.float64), 0.0)
    if np.any(~np.isfinite(d)):
        raise ValueError("observed phases must be finite")
    w = amp64 * amp64
    den = w.sum(axis=1)
    if np.any(den <= 0):
        bad = np.flatnonzero(den <= 0)
        raise ValueError(f"no observed power (Σ|F|² = 0 over the mask) in row(s) {bad[:10].tolist()}")
    return h, amp64, d, den


def phase_r_all_shifts(amp: np.ndarray, phase_pred: np.ndarray, phase_true: np.ndarray, hkl: np.ndarray,
                       observed_mask: np.ndarray) -> np.ndarray:
    """r(t) for each of the 8 origin shifts, not maximised.

    Args:
        amp: (B, H) |F| (any scale; only observed entries are read).
        phase_pred: (B, H) predicted phases in radians.
        phase_true: (B, H) true phases in radians.
        hkl: (H, 3) integer Miller indices, without (0, 0, 0).
        observed_mask: (B, H) bool, observed and not systematically absent.

    Returns:
        (B, 8) float64, column i for the shift t = ORIGIN_SHIFTS[i] / 2.

    Raises:
        ValueError: on bad shapes, non-finite observed values, or a row without observed power.
    """
    h, a, d, den = _prepare(amp, phase_pred, phase_true, hkl, observed_mask)
    return ((a * a) * np.cos(d)) @ _shift_signs(h) / den[:, None]


def phase_r_batch(amp: np.ndarray, phase_pred: np.ndarray, phase_true: np.ndarray, hkl: np.ndarray,
                  observed_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised `phase_r` over a batch of structures sharing one reflection list.

    Args:
        amp: (B, H) |F| (any scale; only observed entries are read).
        phase_pred: (B, H) predicted phases in radians.
        phase_true: (B, H) true phases in radians.
        hkl: (H, 3) integer Miller indices, without (0, 0, 0).
        observed_mask: (B, H) bool, observed and not systematically absent.

    Returns:
        (r, best_shift_index, mpe_deg): (B,) float64 r maximised over the 8 origin shifts, (B,) int64 index into
        ORIGIN_SHIFTS of the maximising shift (first one on ties), and (B,) float64 |F|-weighted mean absolute
        phase difference in degrees at that shift.

    Raises:
        ValueError: on bad shapes, non-finite observed values, or a row without observed power.
    """
    h, a, d, den = _prepare(amp, phase_pred, phase_true, hkl, observed_mask)
    signs = _shift_signs(h)  # (H, 8)
    r_all = ((a * a) * np.cos(d)) @ signs / den[:, None]  # (B, 8)
    best = np.argmax(r_all, axis=1)
    r = r_all[np.arange(len(best)), best]
    # Δφ + 2π h·t at the best shift, wrapped to [0, π].
    hs = (h @ ORIGIN_SHIFTS[best].T).T  # (B, H) integers h·s
    dt = np.abs(np.angle(np.exp(1j * (d + np.pi * (hs & 1)))))
    mpe = np.degrees((a * dt).sum(axis=1) / a.sum(axis=1))
    return r, best.astype(np.int64), mpe


def phase_r(amp: np.ndarray, phase_pred: np.ndarray, phase_true: np.ndarray, hkl: np.ndarray,
            observed_mask: np.ndarray) -> tuple[float, int, float]:
    """Phase agreement r of one structure, maximised over the 8 origin shifts of P2₁/c.

    Args:
        amp: (H,) |F| (any scale; only observed entries are read).
        phase_pred: (H,) predicted phases in radians.
        phase_true: (H,) true phases in radians.
        hkl: (H, 3) integer Miller indices, without (0, 0, 0).
        observed_mask: (H,) bool, observed and not systematically absent.

    Returns:
        (r, best_shift_index, mpe_deg): r in [−1, 1]; index into ORIGIN_SHIFTS of the best shift t = s/2;
        |F|-weighted mean phase error in degrees (in [0, 180]) at that shift.

    Raises:
        ValueError: on bad shapes, non-finite observed values, or no observed power.
    """
    arrays = [np.asarray(x) for x in (amp, phase_pred, phase_true, observed_mask)]
    for name, x in zip(("amp", "phase_pred", "phase_true", "observed_mask"), arrays):
        if x.ndim != 1:
            raise ValueError(f"{name} must be 1-D (H,), got shape {x.shape}; use phase_r_batch for batches")
    r, best, mpe = phase_r_batch(*(x[None, :] for x in arrays[:3]), hkl, arrays[3][None, :])
    return float(r[0]), int(best[0]), float(mpe[0])


def summarise(r_values: np.ndarray) -> dict:
    """Summary of per-structure r values: count, solved fraction (r ≥ SOLVED_R) and median r.

    Args:
        r_values: 1-D array-like of r values (finite).

    Returns:
        dict(n=int, f_solved=float, median_r=float); f_solved and median_r are NaN when n is 0.

    Raises:
        ValueError: if r_values is not 1-D or holds non-finite values.
    """
    r = np.asarray(r_values, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"r_values must be 1-D, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("r_values must be finite")
    if len(r) == 0:
        return {"n": 0, "f_solved": float("nan"), "median_r": float("nan")}
    return {"n": int(len(r)), "f_solved": float(np.mean(r >= SOLVED_R)), "median_r": float(np.median(r))}
