"""What each optimiser step uses besides its batch: the learning rate, the recycling count, the start phases.

All three are pure functions of the configuration, the seed and the step (and the sample's place in the global
batch), so every rank agrees without talking, and a resumed run repeats them exactly.

* Learning rate (Acta A 2026): levels [lr, *lr_drops]; the next level after `patience` validations without a new
  best validation loss ("plateau"), or at fixed steps ("steps:S1,S2").
* Recycling (PhAI, Larsen et al. 2024): n ~ U{1..max_cycles} per step, the same for the whole batch.
* Start phases of the first pass (`--init`): the paper (§2) initialises the input phases "with random values"
  (each 0 or −180° with probability ½, as the evaluation scan's random starts); PhAI's own code starts from zero;
  "mixed" draws zero or random per sample with probability ½. Seeded per (seed, step, sample).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from manifests.seeds import seeded_rng

__all__ = ["INITS", "LRSchedule", "milestones", "n_cycles_at", "random_start_deg", "start_phases_deg",
           "validation_starts_deg"]

INITS = ("zero", "random", "mixed")
# Seed domains of the trainer (the loader's: 1-3 in training/data.py, 4 in training/samples.py).
_RECYCLE, _INIT, _VAL_START = 7, 8, 9


def milestones(schedule: str, n_drops: int) -> list[int] | None:
    """The steps of a "steps:S1,S2" schedule (one per lr drop), or None for "plateau".

    Raises:
        ValueError: another schedule, non-integer or non-increasing steps, or not one step per drop.
    """
    if schedule == "plateau":
        return None
    if not schedule.startswith("steps:"):
        raise ValueError(f"schedule {schedule!r}: use 'plateau' or 'steps:S1,S2,...'")
    try:
        ms = [int(x) for x in schedule[len("steps:"):].split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"schedule {schedule!r}: milestones must be integers") from None
    if len(ms) != n_drops or ms != sorted(ms) or any(m < 1 for m in ms):
        raise ValueError(f"schedule {schedule!r}: give {n_drops} increasing positive steps, one per lr drop")
    return ms


class LRSchedule:
    """Learning-rate levels [lr, *lr_drops]: the next level after `patience` validations without a new best
    validation loss ("plateau"), or at fixed steps ("steps:S1,S2")."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg) -> None:
        self.optimizer, self.levels = optimizer, [cfg.lr, *cfg.lr_drops]
        self.milestones, self.patience = milestones(cfg.schedule, len(cfg.lr_drops)), cfg.patience
        self.level, self.best, self.bad = 0, math.inf, 0
        self._apply()

    @property
    def lr(self) -> float:
        return self.levels[self.level]

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def at_step(self, step: int) -> None:
        if self.milestones is not None:
            self.level = sum(step >= m for m in self.milestones)
            self._apply()

    def on_validation(self, loss: float) -> None:
        if self.milestones is not None:
            return
        if loss < self.best * (1 - 1e-4):
            self.best, self.bad = loss, 0
            return
        self.bad += 1
        if self.bad >= self.patience and self.level < len(self.levels) - 1:
            self.level, self.bad = self.level + 1, 0
            self._apply()

    def state_dict(self) -> dict:
        return {"level": self.level, "best": self.best, "bad": self.bad, "levels": list(self.levels)}

    def load_state_dict(self, st: dict) -> None:
        self.level, self.best, self.bad = int(st["level"]), float(st["best"]), int(st["bad"])
        self._apply()


def n_cycles_at(seed: int, step: int, max_cycles: int) -> int:
    """Recycling count of a step, n ~ U{1..max_cycles}: a pure function of (seed, step), equal on every rank."""
    return 1 + int(seeded_rng(seed, _RECYCLE, step).integers(max_cycles))


def random_start_deg(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) float32 random-sign phases in degrees: 0 or −180, each with probability ½."""
    return (-180.0 * rng.integers(0, 2, size=n)).astype(np.float32)


def start_phases_deg(init: str, seed: int, step: int, samples: Sequence[int], n: int) -> np.ndarray | None:
    """First-pass phases (B, n) in degrees for the given global sample positions of a step; None for "zero".

    Sample j of step s draws from seeded_rng(seed, _INIT, s, j): its random signs first, then (mixed) a fair coin
    that keeps them or zeroes them, so a "mixed" sample that starts random starts as it would under "random".
    """
    if init not in INITS:
        raise ValueError(f"init {init!r}: choose one of {', '.join(INITS)}")
    if init == "zero":
        return None
    out = np.zeros((len(samples), n), np.float32)
    for i, j in enumerate(samples):
        rng = seeded_rng(seed, _INIT, step, int(j))
        signs = random_start_deg(rng, n)
        if init == "random" or rng.integers(0, 2):
            out[i] = signs
    return out


def validation_starts_deg(seed: int, first: int, count: int, n: int) -> np.ndarray:
    """(count, n) random starts of validation samples first..first+count-1: the same at every validation."""
    return np.stack([random_start_deg(seeded_rng(seed, _VAL_START, i), n) for i in range(first, first + count)])
