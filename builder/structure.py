"""The artificial crystal structure record that fillers produce and shards store (DESIGN.md "Sample schema")."""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Structure"]


@dataclasses.dataclass(frozen=True)
class Structure:
    """An asymmetric unit in a cell. Arrays are stored as written to shards (float32, uint8)."""

    cell: np.ndarray  # (6,) float64: a, b, c (Å), α, β, γ (deg)
    frac: np.ndarray  # (N, 3) float32 fractional coordinates in [0, 1)
    z: np.ndarray  # (N,) uint8 atomic numbers
    occ: np.ndarray  # (N,) float32 crystallographic occupancy (1/site multiplicity on special positions)
    uiso: np.ndarray  # (N,) float32 U_iso, Å²
    space_group: str  # gemmi's extended H-M symbol
    n_special: int  # atoms on special positions (they come first)

    @property
    def n_atoms(self) -> int:
        return len(self.z)

    @property
    def n_hydrogen(self) -> int:
        return int((self.z == 1).sum())
