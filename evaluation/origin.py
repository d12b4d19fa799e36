"""Making a P1 phase set obey a space group: origin search, symmetrisation and phase restriction.

A charge-flipping map is solved in P1, where the structure sits at an arbitrary origin. `OriginPlan.search`
finds the shift that best makes it obey the group (the idea of GSAS-II `findOffset` and of the cctbx
symmetrisation step, phasing-baselines.md §1.1), `symmetrise` averages it over the group and `restrict`
projects to the allowed phases (0/π when −x,−y,−z is an operation). Any space group gemmi knows works; a group
of the identity alone (P1) needs no search.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from builder.symmetry import SymOps

__all__ = ["OriginPlan", "origin_search", "sym_terms", "symmetrise", "restrict"]

_TWO_PI = 2.0 * np.pi


def sym_terms(hkl: np.ndarray, ops: SymOps) -> tuple[np.ndarray, np.ndarray]:
    """h·R_g (n_ops, H, 3) and exp(2πi h·τ_g) (n_ops, H) for the relation F(h) = F(h R_g) exp(2πi h·τ_g)."""
    rot = np.rint(ops.rot).astype(np.int64)
    h = np.asarray(hkl, dtype=np.int64)
    hr = np.einsum("hi,gij->ghj", h, rot)
    ph = np.exp(1j * _TWO_PI * np.einsum("hi,gi->gh", h.astype(np.float64), ops.tran))
    return hr, ph


def symmetrise(grid_lookup: Callable[[np.ndarray], np.ndarray], hkl: np.ndarray, ops: SymOps,
               terms: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Space-group average F_sym(h) = (1/n) Σ_g F(h R_g) exp(2πi h·τ_g).

    A structure obeying x -> R x + τ has F(h R) = F(h) exp(−2πi h·τ) (F(h) = Σ f exp(2πi h·x)); averaging over
    the group projects any P1 set onto the symmetric ones.

    Args:
        grid_lookup: callable mapping an (M, 3) int array of indices to (..., M) complex F values.
        hkl: (H, 3) int indices at which to evaluate the average.
        ops: space-group operations.
        terms: `sym_terms(hkl, ops)`, when the same list is symmetrised many times.

    Returns:
        (..., H) complex symmetrised structure factors.
    """
    hr, ph = sym_terms(hkl, ops) if terms is None else terms
    n_ops, n_h = ph.shape
    vals = grid_lookup(hr.reshape(-1, 3))
    vals = vals.reshape(vals.shape[:-1] + (n_ops, n_h))
    return (vals * ph).mean(axis=-2)


def restrict(f: np.ndarray, ops: SymOps) -> np.ndarray:
    """Phases (radians, [0, 2π)) allowed by the group: 0/π by the sign of Re F when −x,−y,−z is an operation
    (every F is then real), else the phase of F itself."""
    if ops.inversion_at_origin:
        return np.where(np.real(f) < 0, np.pi, 0.0)
    return np.mod(np.angle(f), _TWO_PI)


def _keys(h: np.ndarray, base: int) -> np.ndarray:
    """Injective integer keys of Miller indices with |h_i| < base // 2."""
    off = base // 2
    return ((h[:, 0] + off) * base + (h[:, 1] + off)) * base + (h[:, 2] + off)


@dataclasses.dataclass(frozen=True)
class OriginPlan:
    """The pairs (h, h R_g) of a reflection set and their frequencies, computed once per structure.

    The shifted set F_t(h) = F(h) exp(2πi h·t) obeys the group when F_t(h R) = F_t(h) exp(−2πi h·τ) for every
    operation; the score

        S(t) = Σ_g Σ_h Re[F(h R_g) F*(h) exp(2πi h·τ_g) exp(2πi (h R_g − h)·t)] / Σ_g Σ_h |F(h R_g)| |F(h)|

    (non-identity operations) is 1 for a perfectly symmetric set. It is a trigonometric polynomial in t with
    integer frequencies m = h R_g − h. When every m_i is a multiple of q_i, S has period 1/q_i along axis i
    (P2₁/c: q = 2, so t is found modulo ½, exactly the 8 equivalent origins); the scan then runs over one period
    on a grid finer than twice the largest reduced frequency, which is exact (no aliasing), and the best grid
    point is refined by Newton steps.
    """

    n_h: int
    j: np.ndarray  # (C,) index of h R_g in the set, per pair
    i: np.ndarray  # (C,) index of h, per pair
    tau: np.ndarray  # (C,) exp(2πi h·τ_g)
    freq: np.ndarray  # (C, 3) int m = h R_g − h
    period: np.ndarray  # (3,) int q: S(t) has period 1/q along each axis
    scan: tuple[int, int, int]  # grid points over one period

    @classmethod
    def build(cls, hkl: np.ndarray, ops: SymOps) -> OriginPlan:
        """Pairs of `hkl` (an (H, 3) set without duplicates, closed under the Laue group and Friedel)."""
        h = np.asarray(hkl, dtype=np.int64)
        ident = np.all(np.isclose(ops.rot, np.eye(3)), axis=(1, 2)) & np.all(np.isclose(ops.tran % 1.0, 0), axis=1)
        rot = np.rint(ops.rot).astype(np.int64)
        base = 4 * int(np.abs(h).max(initial=0)) + 4  # |h R| <= 2 max|h| for crystallographic rotations
        key = _keys(h, base)
        order = np.argsort(key)
        skey = key[order]
        js, is_, taus, freqs = [], [], [], []
        for gi in np.flatnonzero(~ident):
            hr = h @ rot[gi]
            kr = _keys(hr, base)
            pos = np.minimum(np.searchsorted(skey, kr), len(skey) - 1)
            ok = np.flatnonzero(skey[pos] == kr)
            js.append(order[pos[ok]])
            is_.append(ok)
            taus.append(np.exp(1j * _TWO_PI * (h[ok] @ ops.tran[gi])))
            freqs.append(hr[ok] - h[ok])
        freq = np.concatenate(freqs) if freqs else np.zeros((0, 3), dtype=np.int64)
        period = np.array([np.gcd.reduce(np.abs(freq[:, a])) if len(freq) else 0 for a in range(3)], dtype=np.int64)
        period = np.where(period == 0, 1, period)  # an axis with no frequency: S is flat along it
        red = np.abs(freq // period) if len(freq) else np.zeros((0, 3), dtype=np.int64)
        scan = tuple(int(max(8, 2 * int(red[:, a].max(initial=0)) + 2)) for a in range(3))
        cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dtype=dt))
        return cls(n_h=len(h), j=cat(js, np.int64), i=cat(is_, np.int64), tau=cat(taus, np.complex128),
                   freq=freq, period=period, scan=scan)

    def score(self, f: np.ndarray, t: np.ndarray) -> float:
        """S(t) for structure factors f (H,) on the plan's set."""
        c = f[self.j] * np.conj(f[self.i]) * self.tau
        den = float(np.sum(np.abs(f[self.j]) * np.abs(f[self.i])))
        return float(np.real(np.sum(c * np.exp(1j * _TWO_PI * (self.freq @ t))))) / den if den > 0 else 0.0

    def search(self, f: np.ndarray, newton_steps: int = 6) -> tuple[np.ndarray, float]:
        """(t, S(t)): the best shift in [0, 1) and its score in [−1, 1] (t = 0, S = 1 for P1; S = 0 if no pairs)."""
        return self.peaks(f, 1, newton_steps)[0]

    def peaks(self, f: np.ndarray, k: int = 2, newton_steps: int = 6) -> list[tuple[np.ndarray, float]]:
        """The k best inequivalent origins (local maxima of the scan over one period), best first, refined.

        Two near-equal peaks mean a pseudo-symmetric structure whose origin the data barely fix."""
        if len(f) != self.n_h:
            raise ValueError(f"f has {len(f)} entries, the plan {self.n_h}")
        if len(self.freq) == 0:
            return [(np.zeros(3), 1.0 if self.n_h else 0.0)]
        c = f[self.j] * np.conj(f[self.i]) * self.tau
        den = float(np.sum(np.abs(f[self.j]) * np.abs(f[self.i])))
        if den <= 0:
            return [(np.zeros(3), 0.0)]
        # Scan: S(u/q) = Re Σ C exp(2πi (m/q)·u) = Re(N · ifftn(C binned at (m/q) mod grid)), u on the grid.
        red = (self.freq // self.period) % np.array(self.scan)
        flat = np.ravel_multi_index((red[:, 0], red[:, 1], red[:, 2]), self.scan)
        n = int(np.prod(self.scan))
        acc = np.bincount(flat, weights=c.real, minlength=n) + 1j * np.bincount(flat, weights=c.imag, minlength=n)
        s = np.real(np.fft.ifftn(acc.reshape(self.scan))) * n
        out = []
        for p in _local_maxima(s, k):
            t = np.array(np.unravel_index(p, s.shape), dtype=np.float64) / np.array(self.scan) / self.period
            t, cur = self._newton(c, t, newton_steps) if newton_steps else (t, float(s.reshape(-1)[p]))
            out.append((t % 1.0, cur / den))
        return sorted(out, key=lambda x: -x[1])

    def _newton(self, c: np.ndarray, t: np.ndarray, steps: int) -> tuple[np.ndarray, float]:
        """Newton refinement of the continuous maximum (S is smooth; the scan put t in the right basin)."""
        mf = self.freq.astype(np.float64)
        cur = float(np.real(np.sum(c * np.exp(1j * _TWO_PI * (mf @ t)))))
        limit = 0.5 / (np.array(self.scan) * self.period)  # half a scan step: stay in the basin
        for _ in range(steps):
            e = c * np.exp(1j * _TWO_PI * (mf @ t))
            grad = -_TWO_PI * (mf * e.imag[:, None]).sum(axis=0)
            hess = -(_TWO_PI**2) * np.einsum("m,mi,mj->ij", e.real, mf, mf)
            step = -np.linalg.lstsq(hess, grad, rcond=1e-9)[0]  # lstsq: flat directions (polar axes) stay put
            if not np.all(np.isfinite(step)):
                break
            step = np.clip(step, -limit, limit)
            val = float(np.real(np.sum(c * np.exp(1j * _TWO_PI * (mf @ (t + step))))))
            if val < cur:
                break
            t, cur = t + step, val
        return t, cur


def _local_maxima(s: np.ndarray, k: int) -> list[int]:
    """Flat indices of the k highest points of a periodic 3-d array that are >= their 26 neighbours."""
    if k == 1:
        return [int(np.argmax(s))]
    best = np.ones(s.shape, dtype=bool)
    for d in np.ndindex(3, 3, 3):
        if d != (1, 1, 1):
            best &= s >= np.roll(s, tuple(x - 1 for x in d), axis=(0, 1, 2))
    idx = np.flatnonzero(best)
    if len(idx) == 0:
        idx = np.array([int(np.argmax(s))])
    return idx[np.argsort(-s.reshape(-1)[idx], kind="stable")][:k].tolist()


def origin_search(f: np.ndarray, hkl: np.ndarray, ops: SymOps, newton_steps: int = 6) -> tuple[np.ndarray, float]:
    """The origin shift t that makes a P1 phase set best obey the space group, and its consistency score.

    Args:
        f: (H,) complex P1 structure factors of a set closed under the Laue group and Friedel (h and −h).
        hkl: (H, 3) int indices of f (no duplicates).
        ops: space-group operations.
        newton_steps: continuous refinement steps after the exact grid scan (`OriginPlan`).

    Returns:
        (t, score): (3,) fractional shift in [0, 1) and S(t) in [−1, 1].

    Raises:
        ValueError: if hkl and f do not match or newton_steps < 0.
    """
    h = np.asarray(hkl, dtype=np.int64)
    f = np.asarray(f, dtype=np.complex128)
    if h.ndim != 2 or h.shape[1] != 3 or f.shape != (len(h),):
        raise ValueError("f must be (H,) complex and hkl (H, 3)")
    if newton_steps < 0:
        raise ValueError("newton_steps must be >= 0")
    return OriginPlan.build(h, ops).search(f, newton_steps)
