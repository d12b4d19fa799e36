"""Unit-cell samplers (paper §3.2–3.4).

`uniform-edges` draws a_n ~ U(a_min, a_max) independently (§3.2); `uniform-volume` and `lognormal` draw V and
then edges within [a_min, a_max] with ratio bound r (eqs 6–13), permuted at random (§3.3). The orthogonal cell is
then skewed: monoclinic b-unique (eq. 14) with s3 ∈ [max{tan(90° − β_max), −(a_max²/a3² − 1)^½}, 0] (eq. 15, the
"adjusted" bound) or triclinic (eq. 17). det S = 1, so the skew keeps V.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from builder.bounds import EDGE, check_finite, check_range

__all__ = ["CellConfig", "SAMPLERS", "SKEWS", "sample_cell", "sample_volume", "edges_from_volume", "skew_cell",
           "volume_bounds", "cell_from_vectors"]

SAMPLERS = ("uniform-edges", "uniform-volume", "lognormal")
SKEWS = ("monoclinic", "triclinic", "none")
MAX_RESAMPLE = 10_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class CellConfig:
    sampler: str = "lognormal"
    a_min: float = 4.0  # Å
    a_max: float = 10.0  # Å
    v_min: float = 160.0  # Å³, uniform-volume
    v_max: float = 1000.0  # Å³, uniform-volume
    mu: float = 6.04  # ln Å³, lognormal (fit to P2₁/c, a_n ≤ 10 Å; Table 1)
    sigma: float = 0.394
    ratio: float = 1.8  # r: a2/a1 ≤ r, a3/a2 ≤ r (§3.3)
    skew: str = "monoclinic"
    beta_max: float = 125.0  # degrees
    adjusted_s3: bool = True  # include −(a_max²/a3² − 1)^½ in the s3 lower bound (eq. 15)

    def validate(self) -> None:
        check_finite("cell", self)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown cell sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if self.skew not in SKEWS:
            raise ValueError(f"unknown skew {self.skew!r}: choose one of {', '.join(SKEWS)}")
        check_range("cell a_min", self.a_min, *EDGE, "Å")
        check_range("cell a_max", self.a_max, *EDGE, "Å")
        if self.a_min > self.a_max:
            raise ValueError(f"cell a_min = {self.a_min} must be ≤ a_max = {self.a_max}")
        check_range("cell ratio", self.ratio, 1.0, math.inf, hi_open=True)
        check_range("cell beta_max", self.beta_max, 90.0, 180.0, "degrees", lo_open=True, hi_open=True)
        if self.sampler == "uniform-volume":
            check_range("cell v_min", self.v_min, 0.0, EDGE[1] ** 3, "Å³", lo_open=True)
            check_range("cell v_max", self.v_max, self.v_min, EDGE[1] ** 3, "Å³")
            lo, hi = volume_bounds(self)
            if self.v_max < lo or self.v_min > hi:
                raise ValueError(f"volume range [{self.v_min}, {self.v_max}] Å³ cannot be realised with edges in "
                                 f"[{self.a_min}, {self.a_max}] Å (possible: [{lo:.1f}, {hi:.1f}]); widen the edges")
        if self.sampler == "lognormal":
            check_range("cell sigma", self.sigma, 0.0, math.inf, "(ln Å³)", lo_open=True, hi_open=True)
            lo, hi = volume_bounds(self)
            z_lo, z_hi = (math.log(lo) - self.mu) / self.sigma, (math.log(hi) - self.mu) / self.sigma
            mass = 0.5 * (math.erf(z_hi / math.sqrt(2)) - math.erf(z_lo / math.sqrt(2)))
            if mass < 1e-3:
                raise ValueError(f"Lognormal({self.mu}, {self.sigma}) puts {mass:.1e} of its mass in the realisable "
                                 f"volumes [{lo:.1f}, {hi:.1f}] Å³; adjust mu/sigma or the edge bounds")

    def max_volume(self) -> float:
        """The largest cell volume the sampler can give (the skew keeps V): what bounds the atoms per cell."""
        hi = volume_bounds(self)[1]
        return min(hi, self.v_max) if self.sampler == "uniform-volume" else hi


def volume_bounds(cfg: CellConfig) -> tuple[float, float]:
    """Volumes that eqs (6)–(13) can realise: a1,max ≥ a1,min ⇔ a_min³ ≤ V ≤ a_max³."""
    return cfg.a_min**3, cfg.a_max**3


def sample_volume(rng: np.random.Generator, cfg: CellConfig) -> float:
    """V from the configured distribution, resampled (never clipped) until the edge bounds can realise it."""
    lo, hi = volume_bounds(cfg)
    for _ in range(MAX_RESAMPLE):
        if cfg.sampler == "lognormal":
            v = float(rng.lognormal(cfg.mu, cfg.sigma))
        else:
            v = float(rng.uniform(cfg.v_min, cfg.v_max))
        if lo <= v <= hi:
            return v
    raise RuntimeError("could not draw a realisable cell volume")  # excluded by CellConfig.validate


def edges_from_volume(rng: np.random.Generator, v: float, cfg: CellConfig) -> np.ndarray:
    """Ascending a1 ≤ a2 ≤ a3 with a1·a2·a3 = V, edges in [a_min, a_max], ratios ≤ r (eqs 6–13)."""
    r, amin, amax = cfg.ratio, cfg.a_min, cfg.a_max
    a1_max = v ** (1 / 3)  # eq. 6
    a1_min = max(amin, v / amax**2, v ** (1 / 3) / r, math.sqrt(v / (r * amax)))  # eq. 11
    a1 = rng.uniform(a1_min, max(a1_min, a1_max))
    a2_min = max(a1, v / (a1 * amax), math.sqrt(v / (r * a1)))  # eq. 12
    # eq. 13, plus a2 ≤ (V/a1)^½ so that a3 ≥ a2 keeps the ascending order the bounds assume
    a2_max = min(amax, r * a1, math.sqrt(v / a1))
    a2 = rng.uniform(a2_min, max(a2_min, a2_max))
    return np.array([a1, a2, v / (a1 * a2)])


def _s_lower(angle_max: float, a: float, amax: float, adjusted: bool) -> float:
    lo = math.tan(math.radians(90.0 - angle_max))
    if adjusted:
        lo = max(lo, -math.sqrt(max(amax**2 / a**2 - 1.0, 0.0)))  # eq. 15
    return lo


def skew_cell(rng: np.random.Generator, edges: np.ndarray, cfg: CellConfig) -> np.ndarray:
    """Orthogonal edges (a, b, c) → (a, b, c, α, β, γ) by S_m (eq. 14) or S_t (eq. 17); volume unchanged."""
    a, b, c = edges
    s2 = s3 = 0.0
    if cfg.skew in ("monoclinic", "triclinic"):
        s3 = rng.uniform(_s_lower(cfg.beta_max, c, cfg.a_max, cfg.adjusted_s3), 0.0)
    if cfg.skew == "triclinic":
        s2 = rng.uniform(_s_lower(cfg.beta_max, b, cfg.a_max, cfg.adjusted_s3), 0.0)
    return cell_from_vectors(((a, 0.0, 0.0), (s2 * b, b, 0.0), (s3 * c, 0.0, c)))  # rows: S·a_n


def cell_from_vectors(vecs) -> np.ndarray:
    """(a, b, c, α, β, γ) in Å and degrees from three lattice vectors (rows); scalar math, no small arrays."""
    v = [[float(x) for x in row] for row in vecs]
    lengths = [math.sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]) for r in v]

    def angle(i: int, j: int) -> float:
        dot = v[i][0] * v[j][0] + v[i][1] * v[j][1] + v[i][2] * v[j][2]
        return math.degrees(math.acos(max(-1.0, min(1.0, dot / (lengths[i] * lengths[j])))))

    return np.array([*lengths, angle(1, 2), angle(0, 2), angle(0, 1)])


def sample_cell(rng: np.random.Generator, cfg: CellConfig) -> np.ndarray:
    """One cell (a, b, c, α, β, γ) for the configured sampler and skew."""
    if cfg.sampler == "uniform-edges":
        edges = rng.uniform(cfg.a_min, cfg.a_max, size=3)  # §3.2: independent, no ratio bound
    else:
        edges = rng.permutation(edges_from_volume(rng, sample_volume(rng, cfg), cfg))  # §3.3: random order
    return skew_cell(rng, edges, cfg)
