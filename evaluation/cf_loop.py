"""The charge-flipping iteration for all random starts at once, with its convergence test (`charge_flipping`).

One cycle (Oszlányi & Sütő 2004; π/2 rule of 2005): ρ = FFT⁻¹(F); g = −ρ where ρ < δ else ρ; G = FFT(g);
F = |E| exp(iφ_G) for the strong observed reflections, |G| exp(i(φ_G ± π/2)) for the weak ones, F000 = G000
(the total flipped charge, cctbx) or 0 (GSAS-II). The starts run as one batched FFT; a start that has
converged drops out of the batch. The convergence test is described in `evaluation.charge_flipping`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from builder.symmetry import SymOps
from evaluation.origin import OriginPlan, restrict, sym_terms, symmetrise
from evaluation.p1grid import P1Data

__all__ = ["CFConfig", "FlipRun", "run_flips"]

_TWO_PI = 2.0 * np.pi


@dataclasses.dataclass(frozen=True, kw_only=True)
class CFConfig:
    """Settings of `charge_flip` (defaults: phasing-baselines.md §1.5 and the measurements in charge_flipping).

    Attributes:
        n_attempts: random starts.
        max_cycles: CF cycle limit per start.
        delta_sigma: δ / σ(ρ); None picks 1.0 for f000="flipped" and 0.2 for f000="zero".
        delta_cycles: cycles during which δ is re-estimated from σ(ρ), then held (cctbx "sigma" method).
        weak_fraction: fraction of observed reflections treated by the π/2 rule (0 disables it).
        f000: "flipped" (F000 = G000) or "zero".
        normalise: flip on quasi-normalised |E| (True) or on |F|.
        check_every: cycles between convergence checks (even: the π/2 rule alternates with period 2).
        agree: phase-set agreement between two checks that counts as unchanged.
        stable_checks: agreements in a row that make a start converged.
        min_cycles: cycles before a convergence can be declared.
        stop_after: stop every start once this many have converged.
        smooth: R_CF is averaged over a start's last `smooth` cycles for the choice between starts.
        lde_cycles: polishing cycles (0 disables polishing: phase_polished = phase_sym).
        grid_step: grid spacing ≤ d_min / grid_step (cctbx and GSAS-II use 2).
        per_bin: reflections per resolution shell for the normalisation.
    """

    n_attempts: int = 6
    max_cycles: int = 300
    delta_sigma: float | None = None
    delta_cycles: int = 10
    weak_fraction: float = 0.2
    f000: str = "flipped"
    normalise: bool = True
    check_every: int = 4
    agree: float = 0.95
    stable_checks: int = 3
    min_cycles: int = 0
    stop_after: int = 2
    smooth: int = 10
    lde_cycles: int = 10
    grid_step: float = 2.0
    per_bin: int = 200

    def __post_init__(self) -> None:
        for name in ("n_attempts", "max_cycles", "delta_cycles", "check_every", "stable_checks", "stop_after",
                     "smooth", "per_bin", "lde_cycles", "min_cycles"):
            v = getattr(self, name)
            low = 0 if name in ("lde_cycles", "min_cycles") else 1
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"CFConfig.{name} must be an integer >= {low}, got {v!r}")
        if self.f000 not in ("flipped", "zero"):
            raise ValueError(f"CFConfig.f000 must be 'flipped' or 'zero', got {self.f000!r}")
        checks = {"delta_sigma": self.delta_sigma is None or self.delta_sigma > 0, "grid_step": self.grid_step > 0,
                  "weak_fraction": 0.0 <= self.weak_fraction < 1.0, "agree": 0.0 < self.agree <= 1.0}
        for name, ok in checks.items():
            v = getattr(self, name)
            if not (ok and (v is None or np.isfinite(v))):
                raise ValueError(f"CFConfig.{name} out of range: {v!r}")

    @property
    def delta_over_sigma(self) -> float:
        """δ / σ(ρ) in use: `delta_sigma`, or the measured default for the F000 rule."""
        if self.delta_sigma is not None:
            return float(self.delta_sigma)
        return 1.0 if self.f000 == "flipped" else 0.2


@dataclasses.dataclass(frozen=True)
class FlipRun:
    """What the iteration leaves for the choice between starts (one row per start)."""

    g: np.ndarray  # (A, n_half) G of the last cycle each start ran
    delta: np.ndarray  # (A,) flip threshold
    cycles: np.ndarray  # (A,) cycles run
    converged: np.ndarray  # (A,) bool
    r_cf: np.ndarray  # (A,) mean R_CF over the last `smooth` cycles run
    r_cf_history: np.ndarray  # (A, C)
    skew_history: np.ndarray  # (A, C)
    agreement_history: np.ndarray  # (A, checks)


@dataclasses.dataclass
class _State:
    """Mutable per-start state of the iteration."""

    f: np.ndarray  # (A, n_half) current F on the half grid
    g: np.ndarray  # (A, n_half) last G
    g_prev: np.ndarray  # (A, n_half) G of the cycle before
    v_check: np.ndarray  # (A, n_ops·L) the previous check's map at the h R_g of the observed list
    g_sum: np.ndarray | None  # (A, n_half) sum of G since the previous check (continuous phases only)
    delta: np.ndarray  # (A,)
    cycles: np.ndarray  # (A,) int
    active: np.ndarray  # (A,) bool
    converged: np.ndarray  # (A,) bool
    streak: np.ndarray  # (A,) int: agreements in a row
    hist: np.ndarray  # (A, max_cycles) R_CF
    skew: np.ndarray  # (A, max_cycles)
    agree: np.ndarray  # (A, max checks)


def _start(p1: P1Data, rng: np.random.Generator, cfg: CFConfig, phi0: np.ndarray | None,
           continuous: bool) -> _State:
    """Random starting phases (or phi0, (A, M) on the observed grid points), F000 = 0. In the l = 0 plane a
    reflection and its mate are both stored; irfftn keeps only the Hermitian part, so inconsistent starts there
    are simply averaged."""
    a_n = cfg.n_attempts if phi0 is None else len(phi0)
    n_half = p1.grid.n_half
    phi = rng.uniform(0.0, _TWO_PI, size=(a_n, len(p1.obs))) if phi0 is None else phi0
    f = np.zeros((a_n, n_half), dtype=np.complex128)
    f[:, p1.obs] = p1.e_obs * np.exp(1j * phi)
    n_checks = cfg.max_cycles // cfg.check_every + 1
    return _State(f=f, g=np.zeros_like(f), g_prev=np.zeros_like(f), v_check=np.zeros((a_n, 0), complex),
                  g_sum=np.zeros_like(f) if continuous else None, delta=np.zeros(a_n),
                  cycles=np.zeros(a_n, dtype=np.int64), active=np.ones(a_n, dtype=bool),
                  converged=np.zeros(a_n, dtype=bool), streak=np.zeros(a_n, dtype=np.int64),
                  hist=np.full((a_n, cfg.max_cycles), np.nan), skew=np.full((a_n, cfg.max_cycles), np.nan),
                  agree=np.full((a_n, n_checks), np.nan))


def _cycle(p1: P1Data, st: _State, idx: np.ndarray, cyc: int, cfg: CFConfig) -> None:
    """One CF cycle for the starts `idx`."""
    obs, e_obs, weak = p1.obs, p1.e_obs, p1.weak
    strong = ~weak
    e_strong = e_obs[strong]
    rho = p1.grid.to_map(st.f[idx])
    dev = rho - rho.mean(axis=1, keepdims=True)
    d2 = dev * dev
    var = d2.mean(axis=1)
    st.skew[idx, cyc] = (d2 * dev).mean(axis=1) / np.maximum(var, 1e-300) ** 1.5
    if cyc < cfg.delta_cycles:  # δ = k·σ(ρ) while guessing, then held (cctbx "sigma" method)
        st.delta[idx] = cfg.delta_over_sigma * np.sqrt(var)
    np.negative(rho, out=rho, where=rho < st.delta[idx, None])  # the flip (Oszlányi & Sütő 2004)
    gg = p1.grid.to_half(rho)
    st.g_prev[idx] = st.g[idx]
    st.g[idx] = gg
    if st.g_sum is not None:
        st.g_sum[idx] += gg
    gobs = gg[:, obs]
    ag = np.abs(gobs[:, strong])
    scale = (e_strong * ag).sum(axis=1) / np.maximum((ag * ag).sum(axis=1), 1e-300)
    st.hist[idx, cyc] = np.abs(e_strong - scale[:, None] * ag).sum(axis=1) / e_strong.sum()
    new = np.empty_like(gobs)
    new[:, strong] = e_strong * gobs[:, strong] / np.maximum(ag, 1e-300)
    new[:, weak] = gobs[:, weak] * (1j * p1.half_sign[weak])  # |G| exp(i(φ_G ± π/2)) = ±i G (OS 2005)
    fg = st.f[idx]
    fg[:, obs] = new
    fg[:, 0] = gg[:, 0].real if cfg.f000 == "flipped" else 0.0
    st.f[idx] = fg
    st.cycles[idx] = cyc + 1


def _restricted_at(values: np.ndarray, t: np.ndarray, h_list: np.ndarray, ops: SymOps,
                   terms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Phases on the observed list of a map shifted by t, symmetrised and restricted, from the map's values at
    the h R_g of the list (`terms`): F_t(q) = F(q) exp(2πi q·t), as `Grid.lookup_shifted`."""
    q = terms[0].reshape(-1, 3)
    return restrict(symmetrise(lambda _: values * np.exp(2j * np.pi * (q @ t)), h_list, ops, terms), ops)


def _check(p1: P1Data, ops: SymOps, plan: OriginPlan, st: _State, idx: np.ndarray, k: int,
           terms: tuple[np.ndarray, np.ndarray]) -> None:
    """Convergence check k: agreement of each start's restricted phase set with the previous check's map,
    both at the origin found now (so an origin that flips between equivalent choices does not matter).

    The map compared is the mean of the two states the π/2 rule alternates between; for continuous phases (no
    inversion at the origin) the mean of every cycle since the last check, since their phases keep a jitter of
    ~20° after convergence that 0/π signs do not see (measured β-glycine, P3₂: agreement stayed at 0.93-0.95
    for 300 cycles with the 2-cycle mean, reached 0.95 by cycle 76-136 with the 4-cycle mean)."""
    w = p1.w_list
    if st.v_check.shape[1] == 0:
        st.v_check = np.zeros((len(st.g), terms[0][..., 0].size), dtype=np.complex128)
    for a in idx:
        g = st.g[a] + st.g_prev[a] if st.g_sum is None else st.g_sum[a]
        t, _ = plan.search(p1.grid.lookup(p1.solution(g), p1.h_p1), newton_steps=0)  # one t for both: no refining
        now = p1.grid.lookup(g, terms[0].reshape(-1, 3))
        if k > 0:
            d = _restricted_at(now, t, p1.h_list, ops, terms) - _restricted_at(st.v_check[a], t, p1.h_list, ops, terms)
            st.agree[a, k] = float(np.sum(w * np.cos(d)) / np.sum(w))
        st.v_check[a] = now
    if st.g_sum is not None:
        st.g_sum[idx] = 0.0


def run_flips(p1: P1Data, ops: SymOps, plan: OriginPlan, rng: np.random.Generator, cfg: CFConfig,
              phi0: np.ndarray | None = None) -> FlipRun:
    """Run all starts until `stop_after` have converged or `max_cycles` (module docstring of charge_flipping).

    phi0: (A, M) starting phases on the observed grid points instead of `cfg.n_attempts` random ones."""
    st = _start(p1, rng, cfg, phi0, continuous=not ops.inversion_at_origin)
    terms = sym_terms(p1.h_list, ops)  # the convergence checks symmetrise this list every time
    for cyc in range(cfg.max_cycles):
        idx = np.flatnonzero(st.active)
        if len(idx) == 0:
            break
        _cycle(p1, st, idx, cyc, cfg)
        if (cyc + 1) % cfg.check_every:
            continue
        k = (cyc + 1) // cfg.check_every - 1
        _check(p1, ops, plan, st, idx, k, terms)
        if k > 0:
            st.streak[idx] = np.where(st.agree[idx, k] >= cfg.agree, st.streak[idx] + 1, 0)
        done = idx[(st.streak[idx] >= cfg.stable_checks) & (cyc + 1 >= cfg.min_cycles)]
        st.converged[done] = True
        st.active[done] = False  # a converged start stops; the others go on
        if st.converged.sum() >= cfg.stop_after:
            st.active[:] = False
    last = int(st.cycles.max())
    r_cf = np.array([np.nanmean(st.hist[a, max(0, c - cfg.smooth):c]) for a, c in enumerate(st.cycles)])
    n_checks = last // cfg.check_every
    return FlipRun(g=st.g, delta=st.delta, cycles=st.cycles, converged=st.converged, r_cf=r_cf,
                   r_cf_history=st.hist[:, :last], skew_history=st.skew[:, :last],
                   agreement_history=st.agree[:, :n_checks])
