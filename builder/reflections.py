"""The PhAI reflection set and per-reflection geometry (phai-facts.md, "Reflection set")."""
from __future__ import annotations

import functools
import hashlib

import gemmi
import numpy as np

__all__ = ["PHAI_SET", "phai_hkl", "hkl_hash", "d_spacing", "stol2", "stol2_of_products", "hkl_products",
           "systematic_absences"]

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


def hkl_products(hkl: np.ndarray) -> np.ndarray:
    """(H, 6) h², k², l², 2kl, 2hl, 2hk: with the six metric elements they give h·G*·h (a plan caches them)."""
    h = np.asarray(hkl, dtype=np.float64).reshape(-1, 3)
    return np.stack([h[:, 0]**2, h[:, 1]**2, h[:, 2]**2, 2 * h[:, 1] * h[:, 2], 2 * h[:, 0] * h[:, 2],
                     2 * h[:, 0] * h[:, 1]], axis=1)


def stol2_of_products(cell6: np.ndarray, products: np.ndarray) -> np.ndarray:
    """(sin θ / λ)² = h·G*·h / 4 from `hkl_products` (float64)."""
    g = gemmi.UnitCell(*map(float, cell6)).reciprocal_metric_tensor().elements_pdb()  # G*11 22 33 12 13 23
    return 0.25 * (products @ np.array([g[0], g[1], g[2], g[5], g[4], g[3]]))


def stol2(cell6: np.ndarray, hkl: np.ndarray) -> np.ndarray:
    """(sin θ / λ)^2 = 1 / (4 d^2) for each reflection (float64)."""
    return stol2_of_products(cell6, hkl_products(hkl))


def d_spacing(cell6: np.ndarray, hkl: np.ndarray) -> np.ndarray:
    """Interplanar spacing d (Å) for each reflection."""
    return 0.5 / np.sqrt(stol2(cell6, hkl))


def systematic_absences(space_group: str, hkl: np.ndarray) -> np.ndarray:
    """Boolean mask of reflections systematically absent in the space group (from gemmi's operations)."""
    ops = gemmi.SpaceGroup(space_group).operations()
    return np.asarray(ops.systematic_absences(np.ascontiguousarray(hkl, dtype=np.int32)), dtype=bool)
