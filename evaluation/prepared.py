"""A structure ready for a method: its descriptors and its data on the reflection list (evaluation.run and the
measured-data path, evaluation.measured, both make them)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Prepared"]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A usable structure: its descriptors and its data on the reflection list."""

    id: str
    cell6: np.ndarray
    volume: float
    compound_class: str
    n_special: int
    n_atoms: int
    amp: np.ndarray  # (N,) |F|
    phase: np.ndarray  # (N,) true phases, radians
    observed: np.ndarray  # (N,) bool
    amp_calc: np.ndarray | None = None  # (N,) the model's |F| when `amp` is measured (evaluation.measured)
    completeness: float | None = None  # measured share of the observable list reflections

    def descriptors(self) -> dict[str, Any]:
        return {"id": self.id, "volume": self.volume, "class": self.compound_class,
                "n_special": self.n_special, "n_atoms": self.n_atoms}
