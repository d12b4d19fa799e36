"""Charge flipping (CF): ab initio phases from |F| alone, the classical baseline (phasing-baselines.md §1.1–1.5).

Oszlányi & Sütő 2004 (Acta A60, 134) with the weak-reflection "π/2" variant of Oszlányi & Sütő 2005 (Acta A61,
147), solved in P1 on a numpy FFT grid (`evaluation.p1grid`), made to obey the space group by an origin search
and symmetrisation (`evaluation.origin`), and polished by low-density elimination (Shiono & Woolfson 1992,
Acta A48, 451). Any reflection list and any space group gemmi knows: phases come out 0/π when −x,−y,−z is an
operation, continuous otherwise. Without a centre of symmetry the P1 map may come out in either hand; the hand
that obeys the group better is kept (`_hand`: in the enantiomorphic groups, P3₁/P3₂ and the like, only one does).

Convergence. R_CF and the map statistics need not move at the CF phase transition with the π/2 rule (COD
1000003: R_CF ≈ 0.65 from cycle 2 on, solved), and the P1 phases never settle: under the π/2 rule the strong
reflections' phases alternate with period 2 and keep changing by ~60° a cycle even after convergence, so a
plain phase-change test never fires. What does settle is the phase set CF returns. Every `check_every` cycles
(even, so that the period-2 alternation drops out) each running start's map (the mean of its last two cycles;
of all cycles since the last check when phases are continuous, `evaluation.cf_loop._check`) is shifted to its
best origin, symmetrised and restricted; the |F|²-weighted agreement Σ w cos(φ_now − φ_before) / Σ w with the
previous check's map at the same origin is computed. A start has converged when `stable_checks` agreements in
a row reach `agree` (the same idea as Superflip's change of the phase set between cycles, made to work with the
π/2 rule); it then stops, and all stop once `stop_after` starts have converged.

F000 and δ. With f000="flipped" (default) F000 is set each cycle to G000, the total charge of the flipped map
(cctbx); with f000="zero" it stays 0 (GSAS-II). The two need different thresholds: measured on random P2₁/c
structures (11 atoms/asu, one S or Cl, exact complete data; 16 structures, 6 starts; polished r >= 0.8 counts):

    setting                 1.0 Å    1.2 Å    1.4 Å    1.6 Å
    flipped, δ = 1.0 σ      16/16    16/16     9/16     3/16     (the default)
    flipped, δ = 1.1 σ      16/16    15/16     6/16     2/16     (cctbx's delta_over_sigma)
    zero,    δ = 0.2 σ      16/16    16/16     8/16     1/16     (default when f000="zero")
    zero,    δ = 1.1 σ       0/16     0/16       —        —
"""
from __future__ import annotations

import dataclasses

import numpy as np

from builder.symmetry import SymOps, space_group_ops
from evaluation.cf_loop import CFConfig, FlipRun, run_flips
from evaluation.origin import OriginPlan, restrict, symmetrise
from evaluation.p1grid import P1Data, p1_data, phases_on_grid

__all__ = ["CFConfig", "CFResult", "charge_flip", "ORIGIN_AMBIGUOUS"]

# Origin-search margin S(best) − S(second inequivalent peak) below which the origin is called ambiguous. On the
# 34 COD p21c-small structures the margin was 0.0003 for 9008962 (AgO: Ag on two inversion centres related by the
# pseudo-translation (½, 0, ½); both origins fit the data equally, by S, R_CF and map skewness) and >= 0.034 for
# all others.
ORIGIN_AMBIGUOUS = 0.01
_HAND_MARGIN = 1e-3  # the inverted P1 map must obey the group better than this to be taken (ties keep the map)


@dataclasses.dataclass(frozen=True)
class CFResult:
    """Outcome of `charge_flip`. Phases are on the input reflection list, in radians.

    Attributes:
        phase_raw: (H,) the P1 phases of the chosen start after the origin shift, restricted (0/π by the sign of
            Re F_t(h) in a group with −x,−y,−z); no symmetry averaging.
        phase_sym: (H,) the space-group average of the shifted P1 set, restricted, before polishing.
        phase_polished: (H,) phase_sym after the low-density-elimination cycles.
        phase_p1: (H,) the continuous P1 phases after the origin shift (not restricted), in [0, 2π).
        converged: whether the chosen start's phase set became stable (module docstring).
        cycles: CF cycles the chosen start ran (where it converged, or where the run stopped).
        cycles_run: CF cycles of the longest-running start (the batched iterations done).
        attempts: number of random starts run.
        best_attempt: index of the chosen start.
        r_cf: R_CF of the chosen start (mean over its last `smooth` cycles): the selection figure of merit,
            lowest wins among the converged starts (no true phases are used).
        sym_consistency: origin-search score S(t) of the chosen solution, in [−1, 1] (1 = its P1 phases obey the
            group exactly). Diagnostic only: failed CF maps are often just as centrosymmetric.
        origin_margin: S(t) minus the score of the best inequivalent other origin (NaN when there is none);
            below ORIGIN_AMBIGUOUS the data barely fix the origin (pseudo-symmetry), and the phases can be
            those of the wrong one of two equally good origins.
        r_cf_all, converged_all, cycles_all: (attempts,) the same per start.
        origin_shift: (3,) fractional shift t applied to the chosen P1 solution.
        delta: flip threshold δ of the chosen start (on the map scale of the flipped amplitudes).
        grid: P1 grid points per axis.
        r_cf_history: (attempts, cycles) R_CF per cycle (NaN after a start stopped).
        skew_history: (attempts, cycles) skewness of ρ (before the flip) per cycle.
        agreement_history: (attempts, checks) phase-set agreement at each convergence check (NaN: none).
    """

    phase_raw: np.ndarray
    phase_sym: np.ndarray
    phase_polished: np.ndarray
    phase_p1: np.ndarray
    converged: bool
    cycles: int
    cycles_run: int
    attempts: int
    best_attempt: int
    r_cf: float
    sym_consistency: float
    origin_margin: float
    r_cf_all: np.ndarray
    converged_all: np.ndarray
    cycles_all: np.ndarray
    origin_shift: np.ndarray
    delta: float
    grid: tuple[int, int, int]
    r_cf_history: np.ndarray
    skew_history: np.ndarray
    agreement_history: np.ndarray


def _validate(cell6: np.ndarray, hkl: np.ndarray, amp_obs: np.ndarray,
              observed_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked float64 cell, int64 hkl, float64 amplitudes and bool mask; ValueError otherwise."""
    cell = np.asarray(cell6, dtype=np.float64)
    if cell.shape != (6,) or not np.all(np.isfinite(cell)) or np.any(cell <= 0):
        raise ValueError(f"cell6 must be 6 positive numbers (a, b, c, alpha, beta, gamma), got {cell6!r}")
    h = np.asarray(hkl)
    if h.ndim != 2 or h.shape[1] != 3 or not np.issubdtype(h.dtype, np.integer):
        raise ValueError("hkl must be an (H, 3) integer array")
    h = h.astype(np.int64)
    if np.any(np.all(h == 0, axis=1)):
        raise ValueError("hkl must not contain (0, 0, 0)")
    amp = np.asarray(amp_obs, dtype=np.float64)
    mask = np.asarray(observed_mask)
    if amp.shape != (len(h),) or mask.shape != (len(h),):
        raise ValueError(f"amp_obs and observed_mask must have shape ({len(h)},)")
    mask = mask.astype(bool)
    if np.any(~np.isfinite(amp[mask])) or np.any(amp[mask] < 0):
        raise ValueError("observed amplitudes must be finite and non-negative")
    if mask.sum() < 10:
        raise ValueError("charge flipping needs at least 10 observed reflections")
    return cell, h, amp, mask


def charge_flip(cell6: np.ndarray, hkl: np.ndarray, amp_obs: np.ndarray, observed_mask: np.ndarray, *,
                space_group: str = "P 1 21/c 1", rng: np.random.Generator | None = None,
                config: CFConfig | None = None, start_phases: np.ndarray | None = None) -> CFResult:
    """Solve phases by charge flipping in P1, then shift to the group's origin, symmetrise and polish.

    Steps (Oszlányi & Sütő 2004, 2005; phasing-baselines.md §1.1, §1.5):

    1. Expand the observed |F| of the listed reflections to the full P1 sphere with the Laue group and Friedel;
       quasi-normalise to |E| in resolution shells (ε-corrected). Unobserved reflections (and systematic
       absences) are 0 throughout. Grid: ≥ 2·h_max + 2 points per axis and spacing ≤ d_min/grid_step.
    2. `config.n_attempts` random starts, F000 = 0, run together as one batched FFT (`evaluation.cf_loop`):
       ρ = FFT⁻¹(F); g = −ρ where ρ < δ else ρ; G = FFT(g); F = |E_obs| exp(iφ_G) except for the weakest
       `weak_fraction`, which keep |G| and get φ_G + π/2; until converged (module docstring) or max_cycles.
    3. Keep the converged start with the lowest R_CF (any start if none converged; R_CF ranked the starts' true r
       with Spearman ρ ≈ 0.6 on random P2₁/c structures at 1.2 Å, the map skewness and S(t) did not).
    4. Origin search on its P1 solution (|E| with the phases of G), shift; raw phases = restricted P1 phases;
       symmetrise and restrict.
    5. Polish with `lde_cycles` of low-density elimination on the symmetrised map with the observed |F| and
       ρ_c = δ (cctbx's polishing choice), each cycle re-symmetrised and restricted.

    Unobserved reflections of the list get the phases of the final map's structure factors (CF's own
    extrapolation); the metric ignores them.

    Args:
        cell6: (a, b, c, α, β, γ) in Å and degrees (resolution shells and grid).
        hkl: (H, 3) int indices: any list (e.g. `phai_hkl()`, or every measured reflection of a data set).
        amp_obs: (H,) observed |F| (entries outside the mask are ignored).
        observed_mask: (H,) bool, observed and not systematically absent.
        space_group: any symbol gemmi knows, in the setting of hkl.
        rng: seeded numpy Generator for the random starts (required).
        config: `CFConfig` (defaults when None).
        start_phases: (A, H) phases (radians) on `hkl` to start A attempts from instead of random phases
            (e.g. a network's phases, in the spirit of AI-PhaSeed); `config.n_attempts` is then A.

    Returns:
        CFResult.

    Raises:
        ValueError: on bad input, an unknown space group or a missing rng.
    """
    cell, h, amp, mask = _validate(cell6, hkl, amp_obs, observed_mask)
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy Generator, e.g. np.random.default_rng(seed)")
    cfg = CFConfig() if config is None else config
    if not isinstance(cfg, CFConfig):
        raise ValueError(f"config must be a CFConfig, got {type(cfg).__name__}")
    ops = space_group_ops(space_group)
    p1 = p1_data(cell, h, amp, mask, ops, cfg.normalise, cfg.per_bin, cfg.grid_step, cfg.weak_fraction)
    plan = OriginPlan.build(p1.h_p1, ops)
    phi0 = None if start_phases is None else phases_on_grid(p1, h, start_phases, ops)
    run = run_flips(p1, ops, plan, rng, cfg, phi0)
    return _finish(p1, ops, plan, run, h, cfg)


def _finish(p1: P1Data, ops: SymOps, plan: OriginPlan, run: FlipRun, h: np.ndarray, cfg: CFConfig) -> CFResult:
    """Steps 3–5: choose a start, shift it to the group's origin, symmetrise and polish."""
    cand = np.flatnonzero(run.converged) if run.converged.any() else np.arange(len(run.r_cf))
    best = int(cand[np.argmin(run.r_cf[cand])])
    g_best, peaks = _hand(p1, ops, plan, run.g[best])
    (t, score), margin = peaks[0], (peaks[0][1] - peaks[1][1] if len(peaks) > 1 else float("nan"))
    def lookup_t(q: np.ndarray) -> np.ndarray:
        return p1.grid.lookup_shifted(g_best, q, t)

    f_t = lookup_t(h)
    phase_sym = restrict(symmetrise(lookup_t, h, ops), ops)
    phase_pol = phase_sym
    if cfg.lde_cycles > 0:
        phase_pol = _polish(p1, ops, h, lookup_t, g_best[0].real, float(run.delta[best]), cfg)
    return CFResult(
        phase_raw=restrict(f_t, ops), phase_sym=phase_sym, phase_polished=phase_pol,
        phase_p1=np.mod(np.angle(f_t), 2 * np.pi), converged=bool(run.converged[best]),
        cycles=int(run.cycles[best]), cycles_run=int(run.cycles.max()), attempts=len(run.cycles),
        best_attempt=best, r_cf=float(run.r_cf[best]), sym_consistency=float(score),
        origin_margin=float(margin), r_cf_all=run.r_cf,
        converged_all=run.converged, cycles_all=run.cycles, origin_shift=np.asarray(t),
        delta=float(run.delta[best]), grid=tuple(p1.grid.n), r_cf_history=run.r_cf_history,
        skew_history=run.skew_history, agreement_history=run.agreement_history,
    )


def _hand(p1: P1Data, ops: SymOps, plan: OriginPlan, g: np.ndarray) -> tuple[np.ndarray, list]:
    """The P1 map or its inverse ρ(−x) (G -> conj G), whichever obeys the group better, and its origin peaks.

    A P1 solution comes out in either hand. In most non-centrosymmetric groups both hands obey the group (at
    different origins) and score the same; in the enantiomorphic ones (P3₁/P3₂, P4₁/P4₃, ...) the inverted
    structure belongs to the other group, so only one hand fits."""
    peaks = plan.peaks(p1.grid.lookup(p1.solution(g), p1.h_p1), 2)
    if ops.centrosymmetric:
        return g, peaks
    inv = plan.peaks(p1.grid.lookup(p1.solution(np.conj(g)), p1.h_p1), 2)
    return (np.conj(g), inv) if inv[0][1] > peaks[0][1] + _HAND_MARGIN else (g, peaks)


def _polish(p1: P1Data, ops: SymOps, h: np.ndarray, lookup_t, g000: float, delta: float,
            cfg: CFConfig) -> np.ndarray:
    """Low-density elimination (Shiono & Woolfson 1992; ρ_c = δ as cctbx) on the symmetrised |F| map."""
    grid, obs = p1.grid, p1.obs
    # δ was set on the map of the flipped amplitudes; carry it to the |F| map by the rms ratio.
    f_scale = np.sqrt((p1.f_obs**2).sum() / max((p1.e_obs**2).sum(), 1e-300))
    rho_c = max(delta * f_scale, 1e-12)
    cur = np.zeros((1, grid.n_half), dtype=np.complex128)
    cur[0, obs] = p1.f_obs * np.exp(1j * restrict(symmetrise(lookup_t, p1.h_obs, ops), ops))
    cur[0, 0] = g000 * f_scale if cfg.f000 == "flipped" else 0.0
    for _ in range(cfg.lde_cycles):
        gl = grid.to_half(_lde(grid.to_map(cur), rho_c))[0]
        sym = symmetrise(lambda q: grid.lookup(gl, q), p1.h_obs, ops)
        cur[0, obs] = p1.f_obs * np.exp(1j * restrict(sym, ops))
        cur[0, 0] = gl[0].real
    return restrict(symmetrise(lambda q: grid.lookup(gl, q), h, ops), ops)


def _lde(rho: np.ndarray, rho_c: float) -> np.ndarray:
    """Low-density elimination (Shiono & Woolfson 1992): 0 for ρ ≤ 0, else ρ (1 − exp(−½ (ρ/ρ_c)²))."""
    pos = np.maximum(rho, 0.0)
    return pos * (1.0 - np.exp(-0.5 * (pos / rho_c) ** 2))
