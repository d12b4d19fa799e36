"""Observed amplitudes expanded to P1 on an FFT grid: the data side of charge flipping (phasing-baselines.md §1.1).

Conventions: F(h) = Σ_j f_j exp(+2πi h·x_j) (as `builder.sf`); ρ(x) = (1/V) Σ_h F(h) exp(−2πi h·x). On the grid
F(h) is stored at the rfftn index g = −h (mod n), so `np.fft.rfftn(ρ)[g] = F(h)` and `np.fft.irfftn` of that
half grid is ρ. Reflections with h_l > 0 are represented by their Friedel mates (F(h) = conj F(−h)).

Works for any reflection list (any index range, duplicates and symmetry equivalents allowed: they are averaged)
and any space group gemmi knows: the list is expanded with the Laue group and Friedel's law.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from builder.reflections import stol2
from builder.symmetry import SymOps

__all__ = ["Grid", "P1Data", "nice_size", "p1_data", "phases_on_grid"]


def nice_size(n: int) -> int:
    """Smallest even m >= n whose prime factors are 2, 3, 5 (fast FFT; even so that ½ translations are on grid)."""
    m = max(2, int(n) + (int(n) & 1))
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


@dataclasses.dataclass(frozen=True)
class Grid:
    """A P1 FFT grid with the rfftn half-grid storage of F(h) described in the module docstring."""

    n: tuple[int, int, int]

    @property
    def half_shape(self) -> tuple[int, int, int]:
        return (self.n[0], self.n[1], self.n[2] // 2 + 1)

    @property
    def n_half(self) -> int:
        return int(np.prod(self.half_shape))

    def locate(self, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat half-grid index holding F(h) or its Friedel mate, and whether to conjugate (mate stored)."""
        h = np.asarray(hkl, dtype=np.int64)
        conj = h[:, 2] > 0
        g = np.where(conj[:, None], h, -h) % np.array(self.n)
        flat = np.ravel_multi_index((g[:, 0], g[:, 1], g[:, 2]), self.half_shape)
        return flat, conj

    def hkl_of_half(self) -> np.ndarray:
        """(n_half, 3) signed Miller index h = −g of every half-grid point (l ≤ 0)."""
        axes = [np.arange(m) for m in self.half_shape]
        g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        n = np.array(self.n)
        signed = np.where(g > n // 2, g - n, g)
        return -signed

    def lookup(self, half: np.ndarray, hkl: np.ndarray) -> np.ndarray:
        """F(h) for each row of hkl from flat or 3-d half grids (..., n_half) or (..., n0, n1, n2/2+1) -> (..., H)."""
        flat, conj = self.locate(hkl)
        if half.shape[-3:] == self.half_shape:
            half = half.reshape(half.shape[:-3] + (-1,))
        v = half[..., flat]
        return np.where(conj, np.conj(v), v)

    def lookup_shifted(self, half: np.ndarray, hkl: np.ndarray, t: np.ndarray) -> np.ndarray:
        """F_t(h) = F(h) exp(2πi h·t): the structure factors of the map moved by −t (origin shifted to t)."""
        return self.lookup(half, hkl) * np.exp(2j * np.pi * (np.asarray(hkl) @ t))

    def to_map(self, half: np.ndarray) -> np.ndarray:
        """ρ on the grid from flat half grids (k, n_half) -> (k, n0·n1·n2)."""
        k = half.shape[0]
        return np.fft.irfftn(half.reshape((k,) + self.half_shape), s=self.n, axes=(1, 2, 3)).reshape(k, -1)

    def to_half(self, rho: np.ndarray) -> np.ndarray:
        """Flat half grids (k, n_half) of maps (k, n0·n1·n2)."""
        k = rho.shape[0]
        return np.fft.rfftn(rho.reshape((k,) + self.n), axes=(1, 2, 3)).reshape(k, -1)


@dataclasses.dataclass(frozen=True)
class P1Data:
    """Observed data expanded to P1 on the half grid, plus the unique observed list they came from."""

    grid: Grid
    obs: np.ndarray  # (M,) flat half-grid indices of observed reflections (never F000)
    h_obs: np.ndarray  # (M, 3) the index h whose F(h) is stored there (l <= 0)
    e_obs: np.ndarray  # (M,) |E| (or |F| when not normalising): the amplitudes flipped on
    f_obs: np.ndarray  # (M,) |F|
    weak: np.ndarray  # (M,) bool, the π/2 set
    half_sign: np.ndarray  # (M,) +1 / −1: direction of the π/2 shift (keeps the map real)
    h_p1: np.ndarray  # (P, 3) observed P1 indices closed under Friedel (for the origin search)
    h_list: np.ndarray  # (L, 3) the observed rows of the input list (for convergence checks)
    w_list: np.ndarray  # (L,) their |F|² (the weights of r, evaluation.metrics)

    def solution(self, g: np.ndarray) -> np.ndarray:
        """Half grid of |E| with the phases of G on the observed reflections (what the origin search scores)."""
        sol = np.zeros(len(g), dtype=np.complex128)
        go = g[self.obs]
        sol[self.obs] = self.e_obs * go / np.maximum(np.abs(go), 1e-300)
        return sol


def _expand(hkl: np.ndarray, ops: SymOps) -> np.ndarray:
    """(2·n_ops, H, 3) Laue + Friedel equivalents ±h·R_g of each reflection (row vector times rotation)."""
    rot = np.rint(ops.rot).astype(np.int64)
    eq = np.einsum("hi,gij->ghj", np.asarray(hkl, dtype=np.int64), rot)
    return np.concatenate([eq, -eq], axis=0)


def _epsilon(hkl: np.ndarray, ops: SymOps) -> np.ndarray:
    """Statistical weight ε(h): number of operations whose rotation part leaves h unchanged."""
    rot = np.rint(ops.rot).astype(np.int64)
    eq = np.einsum("hi,gij->ghj", np.asarray(hkl, dtype=np.int64), rot)
    return np.all(eq == np.asarray(hkl)[None], axis=2).sum(axis=0)


def _quasi_normalise(amp: np.ndarray, s2: np.ndarray, eps: np.ndarray, per_bin: int) -> np.ndarray:
    """Quasi-normalised |E| = |F| / sqrt(ε <|F|²/ε>) in resolution shells of ~per_bin reflections."""
    order = np.argsort(s2, kind="stable")
    n_bins = max(1, len(amp) // per_bin)
    e = np.empty_like(amp)
    for idx in np.array_split(order, n_bins):
        mean = np.mean(amp[idx] ** 2 / eps[idx])
        e[idx] = amp[idx] / np.sqrt(eps[idx] * mean) if mean > 0 else 0.0
    return e


def _grid_for(cell: np.ndarray, eq_all: np.ndarray, s2_obs: np.ndarray, grid_step: float) -> Grid:
    """n > 2·h_max (no aliasing of the listed indices) and a spacing <= d_min / grid_step on each axis."""
    hmax = np.abs(eq_all).reshape(-1, 3).max(axis=0)
    d_min = 0.5 / np.sqrt(s2_obs.max())
    return Grid(tuple(nice_size(max(2 * int(hm) + 2, int(np.ceil(a * grid_step / d_min))))
                      for hm, a in zip(hmax, cell[:3])))


def p1_data(cell: np.ndarray, h: np.ndarray, amp: np.ndarray, mask: np.ndarray, ops: SymOps, normalise: bool,
            per_bin: int, grid_step: float, weak_fraction: float) -> P1Data:
    """Expand the observed amplitudes to P1 (Laue group + Friedel) on an FFT grid; quasi-normalise."""
    eq_all = _expand(h, ops)  # (2m, H, 3): every index the grid must hold
    s2_obs = stol2(cell, h[mask])
    grid = _grid_for(cell, eq_all, s2_obs, grid_step)
    amp_m = amp[mask]
    eps = _epsilon(h[mask], ops).astype(np.float64)
    e_m = _quasi_normalise(amp_m, s2_obs, eps, per_bin) if normalise else amp_m.copy()
    eq_obs = eq_all[:, mask, :]
    flat, _ = grid.locate(eq_obs.reshape(-1, 3))
    cnt = np.bincount(flat, minlength=grid.n_half).astype(np.float64)
    sum_e = np.bincount(flat, weights=np.tile(e_m, eq_obs.shape[0]), minlength=grid.n_half)
    sum_f = np.bincount(flat, weights=np.tile(amp_m, eq_obs.shape[0]), minlength=grid.n_half)
    obs = np.flatnonzero(cnt > 0)
    obs = obs[obs != 0]
    h_obs = grid.hkl_of_half()[obs]
    e_obs = sum_e[obs] / cnt[obs]  # listed duplicates (e.g. the hk0 zone under 2/m) are averaged
    f_obs = sum_f[obs] / cnt[obs]
    # The π/2 shift goes to h in a fixed half space (l < 0; l = 0, k < 0; l = k = 0, h < 0) and −π/2 to the
    # Friedel mates that the l = 0 plane of the half grid also stores, so that the map stays real.
    hh, kk, ll = h_obs.T
    canon = (ll < 0) | ((ll == 0) & ((kk < 0) | ((kk == 0) & (hh < 0))))
    weak = np.zeros(len(obs), dtype=bool)
    n_weak = int(round(weak_fraction * len(obs)))
    if n_weak > 0:
        weak[np.argsort(e_obs, kind="stable")[:n_weak]] = True
    h_p1 = np.concatenate([h_obs, -h_obs[h_obs[:, 2] < 0]])
    return P1Data(grid=grid, obs=obs, h_obs=h_obs, e_obs=e_obs, f_obs=f_obs, weak=weak,
                  half_sign=np.where(canon, 1.0, -1.0), h_p1=h_p1, h_list=h[mask], w_list=amp_m**2)


def phases_on_grid(p1: P1Data, h: np.ndarray, phases: np.ndarray, ops: SymOps) -> np.ndarray:
    """(A, M) phases at the observed half-grid points from (A, H) phases on the list `h`, expanded to P1 by
    F(h R) = F(h) exp(−2πi h·τ) and Friedel; several listed reflections on one point are averaged as phasors.

    For starting charge flipping from given phases (a network's, in the spirit of AI-PhaSeed)."""
    phases = np.asarray(phases, dtype=np.float64)
    if phases.ndim != 2 or phases.shape[1] != len(h) or not np.all(np.isfinite(phases)):
        raise ValueError(f"start phases must be finite with shape (A, {len(h)})")
    eq = _expand(h, ops)  # (2G, H, 3): +h R_g, then −h R_g
    ph = phases[:, None, :] - 2.0 * np.pi * (ops.tran @ h.astype(np.float64).T)[None]  # (A, G, H): φ(h R_g)
    ph = np.concatenate([ph, -ph], axis=1)  # F(−h R_g) = conj F(h R_g)
    flat, conj = p1.grid.locate(eq.reshape(-1, 3))
    ph = np.where(conj, -1.0, 1.0) * ph.reshape(len(phases), -1)  # a stored Friedel mate holds the conjugate
    out = np.empty((len(phases), len(p1.obs)))
    for a in range(len(phases)):
        z = np.bincount(flat, weights=np.cos(ph[a]), minlength=p1.grid.n_half) + 1j * np.bincount(
            flat, weights=np.sin(ph[a]), minlength=p1.grid.n_half)
        out[a] = np.angle(z[p1.obs])
    return out
