"""The simple baseline phase sets on the same amplitudes: the true phases and random signs.

Charge flipping, the classical baseline, is `evaluation.charge_flipping`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["true_phases", "random_signs"]


def true_phases(phase_true: np.ndarray) -> np.ndarray:
    """The true phases themselves (float64 copy): the upper baseline, which must score r = 1.

    Args:
        phase_true: (H,) or (B, H) phases in radians.

    Returns:
        A float64 copy of the input.

    Raises:
        ValueError: on non-finite phases.
    """
    p = np.array(phase_true, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("phase_true must be finite")
    return p


def random_signs(amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random centrosymmetric phases 0 or π (each with probability ½), one per entry of `amp`.

    Args:
        amp: (H,) or (B, H) amplitudes; only the shape is used.
        rng: a seeded `np.random.Generator` (no global RNG).

    Returns:
        float64 array of the shape of `amp`, values in {0, π}.

    Raises:
        ValueError: if rng is not a numpy Generator.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy Generator, e.g. np.random.default_rng(seed)")
    shape = np.shape(amp)
    return np.pi * rng.integers(0, 2, size=shape).astype(np.float64)
