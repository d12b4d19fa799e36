"""Fillers: put atoms into a sampled cell (paper §3.5).

`random`: uniform positions, d ≥ d_min (1.2 Å) against all atoms and images, 10 tries, then the atom is dropped.
`random-equal`: the same with every atom one element. `molecules`: artificial molecules, steps 1–7 of §3.5.
Special positions (inversion centres) are occupied with probability p each before anything else (step 1); an
occupied centre whose element does not fit gets another element of the table (as step 6 does for general atoms),
so the number of occupied centres is binomial. In `molecules` the first general atom then goes to random
coordinates (step 2), whatever the special positions hold. N′ = ⌊V / (V_atom n)⌋ non-H atoms (eq. 18),
N′_H = ⌊N′ x_H / (1 − x_H)⌋ hydrogens (eq. 19), non-H first; U_iso ~ U(0.01, 0.1) Å² per structure plus
U(−0.005, 0.005) per atom. Atoms are stored in placement order: special positions first, then general atoms.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import gemmi
import numpy as np

from builder.bounds import D_MIN_MAX, FACTOR_MAX, MAX_TRIES, U_ISO_MAX, V_ATOM_MIN, X_H_MAX, check_count, check_finite, \
    check_range
from builder.elements import atomic_number, covalent_radii_table
from builder.geometry import (RULE_MIN_DISTANCE, RULE_MOLECULE, add_atom, draw_element, first_valid, place_general,
                              stream_need)
from builder.structure import Structure
from builder.symmetry import SymOps, inversion_centres, site_multiplicity, space_group_ops

__all__ = ["FILLERS", "FillConfig", "ElementTable", "fill_atoms"]

FILLERS = ("random", "random-equal", "molecules")
STREAM_PER_ATOM = 16  # uniforms drawn per atom still to place (typical use: 5–15); more are appended if needed


@dataclasses.dataclass(frozen=True)
class ElementTable:
    """A discrete distribution over atomic numbers, sampled by inverse CDF (one uniform draw per element)."""

    z: np.ndarray  # (K,) int64
    cdf: np.ndarray  # (K,) float64, last = 1

    @classmethod
    def from_frequencies(cls, freqs: dict[str, float]) -> "ElementTable":
        return _table(tuple(sorted((str(s), float(p)) for s, p in dict(freqs).items())))

    @classmethod
    def single(cls, z: int) -> "ElementTable":
        return cls(z=np.array([int(z)], dtype=np.int64), cdf=np.ones(1))

    def draw(self, u: float, excluded: np.ndarray | None = None) -> int:
        """The element at uniform u, renormalised over the entries not `excluded` (a boolean mask)."""
        mask = np.zeros(len(self.z), dtype=np.bool_) if excluded is None else excluded
        return int(draw_element(float(u), self.z, self.cdf, mask))


@functools.lru_cache(maxsize=32)
def _table(items: tuple[tuple[str, float], ...]) -> ElementTable:
    """Built once per frequency table: symbol lookups cost more than a whole structure's placement."""
    pairs = sorted((atomic_number(s), p) for s, p in items if p > 0)
    if not pairs:
        raise ValueError("an element table is empty: give at least one element with a positive frequency")
    z = np.array([i[0] for i in pairs], dtype=np.int64)
    p = np.array([i[1] for i in pairs])
    for arr in (z, cdf := np.cumsum(p / p.sum())):
        arr.setflags(write=False)
    return ElementTable(z=z, cdf=cdf)


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
        check_finite("fill", self)
        if self.filler not in FILLERS:
            raise ValueError(f"unknown filler {self.filler!r}: choose one of {', '.join(FILLERS)}")
        check_range("fill special_p", self.special_p, 0.0, 1.0)
        for name in ("v_atom", "x_h", "u_iso", "bond", "forbidden"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"fill {name} = [{lo}, {hi}]: the lower bound exceeds the upper")
        check_range("fill v_atom[0]", self.v_atom[0], V_ATOM_MIN, math.inf, "Å³ per non-H atom", hi_open=True)
        check_range("fill x_h[0]", self.x_h[0], 0.0, X_H_MAX)
        check_range("fill x_h[1]", self.x_h[1], 0.0, X_H_MAX)
        check_range("fill u_iso_jitter", self.u_iso_jitter, 0.0, U_ISO_MAX, "Å²")
        check_range("fill u_iso[0] - u_iso_jitter", self.u_iso[0] - self.u_iso_jitter, 0.0, U_ISO_MAX, "Å²")
        check_range("fill u_iso[1] + u_iso_jitter", self.u_iso[1] + self.u_iso_jitter, 0.0, U_ISO_MAX, "Å²")
        check_range("fill d_min", self.d_min, 0.0, D_MIN_MAX, "Å", lo_open=True)
        check_count("fill random_tries", self.random_tries, 1, MAX_TRIES)
        check_count("fill molecule_tries", self.molecule_tries, 1, MAX_TRIES)
        check_range("fill bond[0]", self.bond[0], 0.0, FACTOR_MAX, "× R_Σ", lo_open=True)
        check_range("fill forbidden[1]", self.forbidden[1], 0.0, FACTOR_MAX, "× R_Σ")
        if self.bond[1] > self.forbidden[0]:
            raise ValueError(f"fill bond = {list(self.bond)} reaches into the forbidden band {list(self.forbidden)}: "
                             "bonds end where the band begins (the paper: [0.9, 1.1] and [1.1, 1.4])")
        atomic_number(self.element)
        for name in ("elements_general", "elements_special"):
            for sym, p in getattr(self, name):
                atomic_number(sym)
                check_range(f"fill {name} {sym}", p, 0.0, math.inf, hi_open=True)
        if self.filler != "random-equal" and not self.elements_general:
            raise ValueError("fill has no general-position element frequencies: set priors or elements_general")
        if self.special_p > 0 and self.filler != "random-equal" and not self.elements_special:
            raise ValueError("fill has special_p > 0 but no special-position element frequencies")
        for table in (self.elements_general, self.elements_special):
            if table:
                ElementTable.from_frequencies(dict(table))  # refuses a table without a positive frequency

    @functools.cached_property
    def tables(self) -> tuple[ElementTable, ElementTable | None]:
        """(general, special) element tables, built once per config: random-equal uses its one element for both."""
        if self.filler == "random-equal":
            equal = ElementTable.single(atomic_number(self.element))
            return equal, equal
        special = ElementTable.from_frequencies(dict(self.elements_special)) if self.elements_special else None
        return ElementTable.from_frequencies(dict(self.elements_general)), special

    def max_atoms(self, volume: float) -> float:
        """Most atoms (H included) eqs 18–19 can put in a cell of `volume`: n·N′/(1 − x_H) in the whole cell."""
        return volume / self.v_atom[0] / (1.0 - self.x_h[1])


class _Placed:
    """Atoms placed so far and all their images (fractional), as the arrays the numba kernels fill in."""

    def __init__(self, ops: SymOps, capacity: int):
        self.img = np.empty((capacity * ops.n, 3))
        self.img_r = np.empty(capacity * ops.n)
        self.frac = np.empty((capacity, 3))
        self.z = np.zeros(capacity, dtype=np.int64)
        self.occ = np.empty(capacity)
        self.anchors = np.empty(capacity, dtype=np.int64)
        self.counts = np.zeros(4, dtype=np.int64)  # atoms, images, anchors, general atoms

    @property
    def n(self) -> int:
        return int(self.counts[0])

    def state(self) -> tuple:
        return self.frac, self.z, self.occ, self.img, self.img_r, self.anchors, self.counts


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """What the kernels need of the cell and space group, from gemmi: matrices, reciprocal lengths, volume."""

    ops: SymOps
    orth: np.ndarray
    frac_m: np.ndarray
    recip: np.ndarray  # |a*|, |b*|, |c*| (Å⁻¹): the inverse spacings of the lattice planes
    volume: float

    @classmethod
    def of(cls, cell: np.ndarray, ops: SymOps) -> "_Geometry":
        uc = gemmi.UnitCell(*map(float, cell))
        rc = uc.reciprocal()
        return cls(ops, np.array(uc.orth.mat.tolist()), np.array(uc.frac.mat.tolist()), np.array([rc.a, rc.b, rc.c]),
                   uc.volume)


def fill_atoms(rng: np.random.Generator, cell: np.ndarray, space_group: str, cfg: FillConfig) -> Structure:
    """Fill `cell` with atoms in `space_group` by the configured filler; a pure function of rng."""
    ops = space_group_ops(space_group)
    geo = _Geometry.of(cell, ops)
    general, special = cfg.tables
    n_heavy = int(geo.volume // (rng.uniform(*cfg.v_atom) * ops.n))  # eq. 18
    x_h = rng.uniform(*cfg.x_h)
    n_h = int(n_heavy * x_h // (1.0 - x_h))  # eq. 19
    centres = inversion_centres(ops.name)
    placed = _Placed(ops, n_heavy + n_h + len(centres))
    rule = (RULE_MOLECULE, *cfg.bond[:1], *cfg.forbidden) if cfg.filler == "molecules" else \
        (RULE_MIN_DISTANCE, cfg.d_min, 0.0, 0.0)
    _place_special(rng, geo, centres, special, cfg.special_p, rule, placed)
    n_special = placed.n
    _place_general(rng, geo, general, cfg, rule, n_heavy, n_heavy + n_h, placed)
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


def _place_special(rng: np.random.Generator, geo: _Geometry, centres, table: ElementTable | None, p: float,
                   rule: tuple, placed: _Placed) -> None:
    """Step 1: each inversion centre independently occupied with probability p. The occupancy is the draw; an
    element that clashes (with an earlier special atom or its own images) is replaced by another of the table,
    each element tried at most once, so a centre stays empty only when no element of the table fits."""
    radii = covalent_radii_table()
    occupied = rng.random(len(centres)) < p
    for k in np.flatnonzero(occupied):
        x = np.array(centres[k])
        occ = 1.0 / site_multiplicity(geo.ops, x)
        excluded = np.zeros(len(table.z), dtype=np.bool_)
        while not excluded.all():
            z = table.draw(rng.random(), excluded)
            if first_valid(x[None], radii[z:z + 1], geo.orth, geo.recip, geo.ops.rot, geo.ops.tran, placed.img,
                           placed.img_r, placed.counts[1], *rule) == 0:
                add_atom(x[0], x[1], x[2], z, radii[z], occ, geo.ops.rot, geo.ops.tran, *placed.state())
                break
            excluded |= table.z == z


def _place_general(rng: np.random.Generator, geo: _Geometry, table: ElementTable, cfg: FillConfig, rule: tuple,
                   n_heavy: int, n_total: int, placed: _Placed) -> None:
    """General atoms (non-H first), steps 2–7 for molecules, steps 1–4 of the random procedure otherwise. The
    kernel reads one stream of uniforms; whenever it may run short, the unread rest is kept and fresh uniforms are
    appended (a block size fixed by the atoms left), so the stream, and every atom, depends only on the seed."""
    molecules = cfg.filler == "molecules"
    tries = cfg.molecule_tries if molecules else cfg.random_tries
    k = n_total if cfg.filler == "random-equal" else n_heavy  # random-equal: H is that element too
    need = stream_need(molecules, tries)
    i, q, u = 0, 0, np.empty(0)
    while i < n_total:
        u = np.concatenate([u[q:], rng.random(need + STREAM_PER_ATOM * (n_total - i))])
        i, q = place_general(i, n_total, k, molecules, tries, u, 0, table.z, table.cdf, covalent_radii_table(),
                             cfg.bond[0], cfg.bond[1], geo.orth, geo.frac_m, geo.recip, geo.ops.rot, geo.ops.tran,
                             *rule, *placed.state())
