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

Any space group (`phase_r_any_group`, for phases from charge flipping in other groups): the same r, maximised
over every transformation that leaves |F| and the group's phase relations unchanged, i.e. that turns one valid
solution into another. The prediction is compared after x -> s·x + t (φ -> s·φ + 2π h·t) with
  * t a permissible origin shift: (I − R) t is a lattice (or centring) translation for every operation (R, τ).
    That is {0, ½}³ in P2₁/c; in a polar group a whole line or plane (P2₁: any t_y), where r is maximised
    continuously; in P1 every t;
  * s = −1 (the other hand, the enantiomorph) when the inverted structure obeys the group again after a
    shift: (I − R) t − 2τ a lattice translation for every operation. |F| alone (Friedel's law, no anomalous
    signal) cannot tell the two hands apart, so a charge-flipping solution in P2₁ or P2₁2₁2₁ is right when it
    matches the model or its mirror image. In the 11 pairs of enantiomorphic groups (P3₁/P3₂, P4₁/P4₃, …) the
    inverted structure belongs to the other group of the pair, so it is not credited: such a solution is wrong
    for the group the data were phased in.
Maximising over more transformations raises r for unrelated phases: the more freedom (a polar axis, two hands),
the higher the r of random phases, so the random-phase level of each group is quoted beside results.
Not included: the normalizer's other elements (axis permutations, e.g. the indexing choice of P4 or P3),
which relabel reflections rather than shift phases.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from builder.symmetry import P21C_ORIGIN_SHIFTS as ORIGIN_SHIFTS  # s ∈ {0,1}³, t = s / 2 (np.ndindex order)
from builder.symmetry import SOLVED_R, SymOps, origin_shift_parity, space_group_ops

__all__ = ["SOLVED_R", "ORIGIN_SHIFTS", "phase_r", "phase_r_batch", "phase_r_all_shifts", "summarise",
           "GroupR", "phase_r_any_group", "permissible_origins", "free_origin_directions"]

_GRID_BASE = 24  # t grid points per axis: every discrete permissible shift (½, ⅓, ¼, ⅙ and combinations) is on it


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


# ----------------------------------------------------------------------------- any space group


@dataclasses.dataclass(frozen=True)
class GroupR:
    """`phase_r_any_group`'s answer: r and MPE at the best transformation x -> s·x + t of the prediction."""

    r: float
    mpe: float  # degrees, |F|-weighted
    shift: np.ndarray  # (3,) t, fractional
    inverted: bool  # s = −1: the prediction matches the other hand (enantiomorph) of the truth
    n_free: int  # continuous origin directions of the group (1 for P2₁, 3 for P1)
    hands: int  # 2 when the inverted structure obeys the group (it was tried), 1 in enantiomorphic groups


@functools.lru_cache(maxsize=64)
def free_origin_directions(space_group: str) -> np.ndarray:
    """(3, k) orthonormal basis of the shifts t with (I − R) t = 0 for every operation: the polar directions
    along which the origin is free (k = 0 with a centre of symmetry or two non-parallel axes, 3 in P1)."""
    ops = space_group_ops(space_group)
    a = np.concatenate([np.eye(3) - r for r in ops.rot])
    _, sv, vt = np.linalg.svd(a)
    out = vt[int(np.sum(sv > 1e-9)):].T.copy()
    out.setflags(write=False)
    return out


def _is_lattice(v: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """(P,) whether each row of v (P, 3) is a lattice translation plus one of the centring vectors cent (C, 3)."""
    d = v[:, None, :] - cent[None, :, :]
    return np.any(np.all(np.abs(d - np.round(d)) < 1e-6, axis=2), axis=1)


def permissible_origins(ops: SymOps, n: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grid points u (t = u / n) that map a structure of the group to another one of the group.

    Returns:
        (same hand (P, 3), other hand (Q, 3)) int64: x -> x + t with (I − R) t ∈ L for every operation (R, τ),
        and x -> −x + t with (I − R) t − 2τ ∈ L (L: lattice and centring translations). Q = 0 in the
        enantiomorphic groups.
    """
    u = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), axis=-1).reshape(-1, 3)
    t = u / np.asarray(n, dtype=np.float64)
    cent = ops.tran[np.all(np.isclose(ops.rot, np.eye(3)), axis=(1, 2))]
    out = []
    for hand in (1, -1):
        ok = np.ones(len(u), dtype=bool)
        for rot, tau in zip(ops.rot, ops.tran):
            ok &= _is_lattice(t @ (np.eye(3) - rot).T - (1 - hand) * tau, cent)
        out.append(u[ok])
    return out[0], out[1]


def _refine_free(c: np.ndarray, h: np.ndarray, t: np.ndarray, free: np.ndarray, step: float,
                 iters: int = 8) -> tuple[np.ndarray, float]:
    """Newton steps on Re Σ c exp(2πi h·t) along the free directions only (t stays permissible)."""
    q = h.astype(np.float64) @ free  # (H, k)

    def value(tt: np.ndarray) -> np.ndarray:
        return c * np.exp(2j * np.pi * (h @ tt))

    cur = float(np.real(value(t).sum()))
    for _ in range(iters):
        e = value(t)
        grad = -2.0 * np.pi * (q * e.imag[:, None]).sum(axis=0)
        hess = -4.0 * np.pi**2 * np.einsum("m,mi,mj->ij", e.real, q, q)
        dy = np.clip(-np.linalg.lstsq(hess, grad, rcond=1e-9)[0], -step, step)
        new = t + free @ dy
        val = float(np.real(value(new).sum()))
        if not np.all(np.isfinite(dy)) or val <= cur:
            break
        t, cur = new, val
    return t, cur


def _best_shift(c: np.ndarray, h: np.ndarray, pts: np.ndarray, n: tuple[int, int, int],
                free: np.ndarray) -> tuple[np.ndarray, float]:
    """(t, Σ w cos) at the best permissible point of the exact t grid (an FFT), refined along free directions."""
    acc = np.zeros(n, dtype=np.complex128)
    np.add.at(acc, tuple((h % np.asarray(n)).T), c)
    vals = np.real(np.fft.ifftn(acc)) * acc.size  # Σ c exp(2πi h·u/n) at every grid point u, exactly
    v = vals[tuple(pts.T)]
    top = pts[np.argsort(-v, kind="stable")[: 3 if free.shape[1] else 1]]
    best_t, best = top[0] / np.asarray(n), float(v.max())
    for u in top if free.shape[1] else ():
        t, val = _refine_free(c, h, u / np.asarray(n), free, 0.5 / max(n))
        if val > best:
            best_t, best = t, val
    return best_t, best


def phase_r_any_group(amp: np.ndarray, phase_pred: np.ndarray, phase_true: np.ndarray, hkl: np.ndarray,
                      space_group: str, observed_mask: np.ndarray | None = None) -> GroupR:
    """r of one structure in any space group, free of origin and hand (module docstring).

    Args:
        amp: (H,) |F|; phase_pred, phase_true: (H,) radians; hkl: (H, 3) without (0, 0, 0), unique reflections
            in the setting of `space_group` (any symbol gemmi knows); observed_mask: (H,) bool (default all).

    Returns:
        GroupR; in P2₁/c r equals `phase_r` (the 8 shifts {0, ½}³, the other hand adds nothing to 0/π phases).

    Raises:
        ValueError: on bad shapes, non-finite observed values, or no observed power.
    """
    mask = np.ones(len(np.asarray(hkl)), dtype=bool) if observed_mask is None else observed_mask
    h, a, d, den = _prepare(*(np.asarray(x)[None] for x in (amp, phase_pred, phase_true)), hkl,
                            np.asarray(mask)[None])
    sel = np.flatnonzero(np.asarray(mask, dtype=bool))
    h, a = h[sel], a[0, sel]
    pred, true = np.asarray(phase_pred, dtype=np.float64)[sel], np.asarray(phase_true, dtype=np.float64)[sel]
    ops = space_group_ops(space_group)
    free = free_origin_directions(space_group)
    on_free = np.any(np.abs(free) > 1e-9, axis=1)
    hmax = np.abs(h).max(axis=0)
    n = tuple(int(_GRID_BASE * max(1, -(-(2 * int(m) + 2) // _GRID_BASE))) if f else _GRID_BASE
              for m, f in zip(hmax, on_free))  # along a free axis: >= 2 points per period of the highest h
    best, allowed = None, permissible_origins(ops, n)
    for hand, pts in zip((1, -1), allowed):
        if len(pts):
            t, val = _best_shift(a * a * np.exp(1j * (hand * pred - true)), h, pts, n, free)
            if best is None or val > best[2] + 1e-12:
                best = (hand, t, val)
    hand, t, val = best
    dt = np.abs(np.angle(np.exp(1j * (hand * pred + 2 * np.pi * (h @ t) - true))))
    t = np.mod(t, 1.0)
    t[t > 1.0 - 1e-6] -= 1.0  # just below 1 is the origin: report it as (almost) 0
    return GroupR(r=float(val / den[0]), mpe=float(np.degrees((a * dt).sum() / a.sum())), shift=t,
                  inverted=hand < 0, n_free=int(free.shape[1]), hands=1 + int(len(allowed[1]) > 0))
