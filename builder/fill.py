"""Fillers: put atoms into a sampled cell (paper §3.5).

`random`: uniform positions, d ≥ d_min (1.2 Å) against all atoms and images, 10 tries, then the atom is dropped.
`random-equal`: the same with every atom one element. `molecules`: artificial molecules, steps 1–7 of §3.5.
Special positions (inversion centres) are occupied with probability p each before anything else (step 1).
N′ = ⌊V / (V_atom n)⌋ non-H atoms (eq. 18), N′_H = ⌊N′ x_H / (1 − x_H)⌋ hydrogens (eq. 19), non-H first;
U_iso ~ U(0.01, 0.1) Å² per structure plus U(−0.005, 0.005) per atom.
"""
from __future__ import annotations

import dataclasses

import gemmi
import numpy as np

from builder.elements import atomic_number, covalent_radii_table
from builder.geometry import RULE_MIN_DISTANCE, RULE_MOLECULE, first_valid, images_of
from builder.structure import Structure
from builder.symmetry import SymOps, inversion_centres, site_multiplicity, space_group_ops

__all__ = ["FILLERS", "FillConfig", "ElementTable", "fill_atoms"]

FILLERS = ("random", "random-equal", "molecules")


@dataclasses.dataclass(frozen=True)
class ElementTable:
    """A discrete distribution over atomic numbers, sampled by inverse CDF (one uniform draw per element)."""

    z: np.ndarray  # (K,) int
    cdf: np.ndarray  # (K,) float64, last = 1

    @classmethod
    def from_frequencies(cls, freqs: dict[str, float]) -> "ElementTable":
        items = sorted((atomic_number(s), float(p)) for s, p in freqs.items() if float(p) > 0)
        if not items:
            raise ValueError("an element table is empty: give at least one element with a positive frequency")
        z = np.array([i[0] for i in items])
        p = np.array([i[1] for i in items])
        return cls(z=z, cdf=np.cumsum(p / p.sum()))

    def draw(self, rng: np.random.Generator, exclude: int = 0) -> int:
        cdf = self.cdf
        if exclude and len(self.z) > 1:  # "try again with a different element" (§3.5 step 6)
            p = np.diff(cdf, prepend=0.0) * (self.z != exclude)
            cdf = np.cumsum(p / p.sum())
        return int(self.z[min(int(np.searchsorted(cdf, rng.random(), side="right")), len(cdf) - 1)])


@dataclasses.dataclass(frozen=True, kw_only=True)
class FillConfig:
    filler: str = "molecules"
    special_p: float = 0.05  # probability of each inversion centre being occupied (§3.5)
    v_atom: tuple[float, float] = (7.0, 22.0)  # Å³ per non-H atom, uniform (eq. 18)
    x_h: tuple[float, float] = (0.3, 0.6)  # hydrogen mole fraction, uniform (eq. 19)
    u_iso: tuple[float, float] = (0.01, 0.1)  # Å², per structure
    u_iso_jitter: float = 0.005  # Å², per atom, uniform ±
    d_min: float = 1.2  # Å, random fillers
    random_tries: int = 10
    bond: tuple[float, float] = (0.9, 1.1)  # bond length / R_Σ (molecules)
    forbidden: tuple[float, float] = (1.1, 1.4)  # forbidden band / R_Σ (molecules)
    molecule_tries: int = 20
    element: str = "C"  # random-equal: the one element of every atom
    elements_general: tuple[tuple[str, float], ...] = ()
    elements_special: tuple[tuple[str, float], ...] = ()

    def validate(self) -> None:
        if self.filler not in FILLERS:
            raise ValueError(f"unknown filler {self.filler!r}: choose one of {', '.join(FILLERS)}")
        if not 0.0 <= self.special_p <= 1.0:
            raise ValueError(f"fill special_p = {self.special_p} must lie in [0, 1]")
        for name in ("v_atom", "x_h", "u_iso", "bond", "forbidden"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"fill {name} = [{lo}, {hi}]: the lower bound exceeds the upper")
        if self.v_atom[0] <= 0 or self.x_h[0] < 0 or self.x_h[1] >= 1 or self.u_iso[0] - self.u_iso_jitter < 0:
            raise ValueError("fill ranges out of bounds: need v_atom > 0, 0 ≤ x_h < 1, u_iso − jitter ≥ 0")
        if self.d_min <= 0 or self.random_tries < 1 or self.molecule_tries < 1:
            raise ValueError("fill d_min, random_tries and molecule_tries must be positive")
        atomic_number(self.element)
        if self.filler != "random-equal" and not self.elements_general:
            raise ValueError("fill has no general-position element frequencies: set priors or elements_general")
        if self.special_p > 0 and self.filler != "random-equal" and not self.elements_special:
            raise ValueError("fill has special_p > 0 but no special-position element frequencies")


class _Placed:
    """Atoms placed so far, with all their images (fractional) for the distance kernel."""

    def __init__(self, ops: SymOps, capacity: int):
        self.ops = ops
        self.img = np.empty((capacity * ops.n, 3))
        self.img_r = np.empty(capacity * ops.n)
        self.n_img = 0
        self.frac = np.empty((capacity, 3))
        self.z = np.empty(capacity, dtype=np.int64)
        self.occ = np.empty(capacity)
        self.n = 0
        self.anchors: list[int] = []  # non-H atoms: what a new atom may bond to

    def add(self, x: np.ndarray, z: int, radius: float, occ: float) -> None:
        n = self.ops.n
        if self.n == len(self.z):
            raise RuntimeError("placed more atoms than the capacity allows")
        self.img[self.n_img:self.n_img + n] = images_of(x, self.ops.rot, self.ops.tran)
        self.img_r[self.n_img:self.n_img + n] = radius
        self.n_img += n
        self.frac[self.n], self.z[self.n], self.occ[self.n] = x, z, occ
        if z != 1:
            self.anchors.append(self.n)
        self.n += 1


def fill_atoms(rng: np.random.Generator, cell: np.ndarray, space_group: str, cfg: FillConfig) -> Structure:
    """Fill `cell` with atoms in `space_group` by the configured filler; a pure function of rng."""
    ops = space_group_ops(space_group)
    uc = gemmi.UnitCell(*map(float, cell))
    orth = np.array(uc.orth.mat.tolist())
    frac_m = np.array(uc.frac.mat.tolist())
    radii = covalent_radii_table()
    general = ElementTable.from_frequencies(dict(cfg.elements_general)) if cfg.elements_general else None
    special = ElementTable.from_frequencies(dict(cfg.elements_special)) if cfg.elements_special else None
    equal_z = atomic_number(cfg.element) if cfg.filler == "random-equal" else 0

    n_heavy = int(uc.volume // (rng.uniform(*cfg.v_atom) * ops.n))  # eq. 18
    x_h = rng.uniform(*cfg.x_h)
    n_h = int(n_heavy * x_h // (1.0 - x_h))  # eq. 19
    placed = _Placed(ops, n_heavy + n_h + 8)
    rule = (RULE_MOLECULE, *cfg.bond[:1], *cfg.forbidden) if cfg.filler == "molecules" else \
        (RULE_MIN_DISTANCE, cfg.d_min, 0.0, 0.0)

    def try_place(cands: np.ndarray, z: int) -> bool:
        i = first_valid(cands, np.full(len(cands), radii[z]), orth, ops.rot, ops.tran, placed.img, placed.img_r,
                        placed.n_img, *rule)
        if i >= 0:
            placed.add(cands[i], z, radii[z], 1.0)
        return i >= 0

    # Step 1: each inversion centre independently occupied with probability p, before anything else.
    for centre in inversion_centres(ops.name):
        if rng.random() < cfg.special_p:
            z = equal_z or special.draw(rng)
            x = np.array(centre)
            if first_valid(x[None], np.array([radii[z]]), orth, ops.rot, ops.tran, placed.img, placed.img_r,
                           placed.n_img, *rule) == 0:
                placed.add(x, z, radii[z], 1.0 / site_multiplicity(ops, x))
    n_special = placed.n

    elements = [equal_z or general.draw(rng) for _ in range(n_heavy)] + [equal_z or 1] * n_h  # non-H first
    for z in elements:
        if cfg.filler != "molecules" or not placed.anchors:
            # random atoms (§3.5 steps 1–4), or the first atom of a molecule (step 2): uniform positions
            tries = cfg.random_tries if cfg.filler != "molecules" else cfg.molecule_tries
            try_place(rng.random((tries, 3)), z)
            continue
        if _bond_to_anchor(rng, placed, z, orth, frac_m, cfg, try_place):
            continue
        if z != 1 and general is not None:  # step 6: another element, then drop
            _bond_to_anchor(rng, placed, general.draw(rng, exclude=z), orth, frac_m, cfg, try_place)

    n = placed.n
    u0 = rng.uniform(*cfg.u_iso)
    uiso = u0 + rng.uniform(-cfg.u_iso_jitter, cfg.u_iso_jitter, size=n)
    return Structure(
        cell=np.asarray(cell, dtype=np.float64),
        frac=placed.frac[:n].astype(np.float32) % np.float32(1.0),
        z=placed.z[:n].astype(np.uint8),
        occ=placed.occ[:n].astype(np.float32),
        uiso=uiso.astype(np.float32),
        space_group=ops.name,
        n_special=n_special,
    )


def _bond_to_anchor(rng: np.random.Generator, placed: _Placed, z: int, orth: np.ndarray, frac_m: np.ndarray,
                    cfg: FillConfig, try_place) -> bool:
    """§3.5 steps 4–5, all tries drawn at once: anchor A (a non-H atom: H bonds once), d ~ U(0.9, 1.1)·R_Σ,
    a point uniform on the sphere about A (Muller 1959); the first candidate that keeps step 6's rule wins."""
    radii = covalent_radii_table()
    t = cfg.molecule_tries
    pick = np.asarray(placed.anchors)[rng.integers(0, len(placed.anchors), size=t)]
    length = rng.uniform(cfg.bond[0], cfg.bond[1], size=t) * (radii[placed.z[pick]] + radii[z])
    u = rng.standard_normal((t, 3))
    u *= (length / np.sqrt((u * u).sum(axis=1)))[:, None]
    cands = placed.frac[pick] + u @ frac_m.T  # bond vector to fractional
    return try_place(cands - np.floor(cands), z)
