"""Element tables taken from libraries, never typed in: IT92 form factors (gemmi) and Cordero radii (ase).

gemmi's `covalent_r` is not Cordero et al. (2008) for carbon (0.73 Å there, 0.76 Å sp³ in Cordero); the paper
uses Cordero, which `ase.data.covalent_radii` carries (C 0.76 sp³; Mn, Fe, Co low-spin values).
"""
from __future__ import annotations

import functools

import gemmi
import numpy as np
from ase.data import chemical_symbols, covalent_radii

__all__ = ["MAX_Z", "symbol", "atomic_number", "covalent_radius", "covalent_radii_table", "it92_table", "form_factors"]

MAX_Z = 98  # IT92 (gemmi) and Cordero (ase) both cover H..Cf


def symbol(z: int) -> str:
    return chemical_symbols[int(z)]


def atomic_number(sym: str) -> int:
    """Atomic number of an element symbol; deuterium counts as hydrogen."""
    s = sym.strip().capitalize()
    if s == "D":
        return 1
    el = gemmi.Element(s)
    if el.atomic_number == 0 or el.atomic_number > MAX_Z:
        raise ValueError(f"unknown or unsupported element {sym!r}: use a symbol from H to Cf")
    return el.atomic_number


@functools.lru_cache(maxsize=1)
def covalent_radii_table() -> np.ndarray:
    """(MAX_Z + 1,) Cordero 2008 covalent radii in Å, indexed by Z."""
    t = np.array(covalent_radii[: MAX_Z + 1], dtype=np.float64)
    t.setflags(write=False)
    return t


def covalent_radius(z: int) -> float:
    return float(covalent_radii_table()[int(z)])


@functools.lru_cache(maxsize=1)
def it92_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IT92 coefficients from gemmi: a (Z, 4), b (Z, 4), c (Z,) for Z = 0..MAX_Z (row 0 unused, zeros)."""
    a = np.zeros((MAX_Z + 1, 4))
    b = np.zeros((MAX_Z + 1, 4))
    c = np.zeros(MAX_Z + 1)
    for z in range(1, MAX_Z + 1):
        it = gemmi.Element(z).it92
        a[z], b[z], c[z] = it.a, it.b, it.c
    for arr in (a, b, c):
        arr.setflags(write=False)
    return a, b, c


def form_factors(z: np.ndarray, stol2: np.ndarray) -> np.ndarray:
    """f0(Z, s) = Σ a_i exp(-b_i s²) + c for each Z (rows) and s² = (sinθ/λ)² (columns), neutral atoms."""
    a, b, c = it92_table()
    z = np.asarray(z, dtype=np.int64)
    s2 = np.asarray(stol2, dtype=np.float32)  # float32 exp: 1e-7 relative, 3x faster than float64
    e = np.exp(-b[z].astype(np.float32)[:, :, None] * s2[None, None, :])  # (Z, 4, H)
    return (a[z][:, :, None] * e).sum(axis=1) + c[z][:, None]
