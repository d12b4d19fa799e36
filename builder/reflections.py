"""The PhAI reflection set and per-reflection geometry (phai-facts.md, "Reflection set")."""
from __future__ import annotations

import functools
import hashlib

import gemmi
import numpy as np

__all__ = ["PHAI_SET", "phai_hkl", "hkl_hash", "d_spacing", "stol2", "systematic_absences"]

PHAI_SET = "phai-1205"


@functools.lru_cache(maxsize=4)
def _phai_hkl(max_index: int) -> np.ndarray:
    # h slowest, l fastest; an index sphere |hkl| <= max_index, not a resolution sphere.
    r = np.arange(-max_index, max_index + 1)
    p = np.arange(0, max_index + 1)
    h, k, l = np.meshgrid(r, p, p, indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    n2 = (hkl**2).sum(1)
    keep = (n2 > 0) & (n2 <= max_index**2)
    out = hkl[keep].astype(np.int32)
    out.setflags(write=False)
    return out


def phai_hkl(max_index: int = 10) -> np.ndarray:
    """(N, 3) int32 Miller indices of the PhAI set; 1205 rows for max_index 10, first (-10,0,0)."""
    return _phai_hkl(int(max_index))


def hkl_hash(hkl: np.ndarray) -> str:
    """sha256 of the int32 little-endian hkl table: names a reflection set in manifests and checkpoints."""
    return hashlib.sha256(np.ascontiguousarray(hkl, dtype="<i4").tobytes()).hexdigest()


def _reciprocal_metric(cell6: np.ndarray) -> np.ndarray:
    uc = gemmi.UnitCell(*map(float, cell6))
    f = np.array(uc.frac.mat.tolist())  # rows of the fractionalisation matrix = reciprocal basis (Å^-1)
    return f @ f.T


def stol2(cell6: np.ndarray, hkl: np.ndarray) -> np.ndarray:
    """(sin θ / λ)^2 = 1 / (4 d^2) for each reflection (float64)."""
    g = _reciprocal_metric(np.asarray(cell6, dtype=np.float64))
    h = np.asarray(hkl, dtype=np.float64)
    return 0.25 * ((h @ g) * h).sum(axis=1)


def d_spacing(cell6: np.ndarray, hkl: np.ndarray) -> np.ndarray:
    """Interplanar spacing d (Å) for each reflection."""
    return 0.5 / np.sqrt(stol2(cell6, hkl))


def systematic_absences(space_group: str, hkl: np.ndarray) -> np.ndarray:
    """Boolean mask of reflections systematically absent in the space group (from gemmi's operations)."""
    ops = gemmi.SpaceGroup(space_group).operations()
    return np.asarray(ops.systematic_absences(np.ascontiguousarray(hkl, dtype=np.int32)), dtype=bool)
