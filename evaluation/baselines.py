"""The baselines on the same amplitudes, and their report rows: the true phases, random signs, and charge
flipping (the classical baseline, `evaluation.charge_flipping`), one row per prepared structure.

Seeds are per structure, SeedSequence(seed, spawn_key=(purpose, key(id))), so a row does not depend on the
batch, the worker count or the input order. Nothing here imports torch: charge-flipping worker processes
(`cf_rows(workers > 1)`, spawned) start in a fraction of the time a torch import takes.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from builder.setting import STANDARD_SETTING
from evaluation.charge_flipping import CFConfig, charge_flip
from evaluation.metrics import phase_r_batch
from evaluation.prepared import Prepared, short_error
from manifests.seeds import seeded_rng, stable_id

__all__ = ["true_phases", "random_signs", "score_phases", "baseline_row", "cf_row", "cf_rows"]

_RANDOM_KEY, _CF_KEY = 3, 2  # spawn_key purposes (1 = random starts of the scan, evaluation.recycle)


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


def score_phases(p: Prepared, hkl: np.ndarray, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """r and MPE of (K, N) phase sets (radians) of one structure on the list `hkl`."""
    k = len(phases)
    r, _, mpe = phase_r_batch(np.broadcast_to(p.amp, (k, len(hkl))), phases,
                              np.broadcast_to(p.phase, (k, len(hkl))), hkl,
                              np.broadcast_to(p.observed, (k, len(hkl))))
    return r, mpe


def _rng(seed: int, purpose: int, sid: str) -> np.random.Generator:
    return seeded_rng(seed, purpose, stable_id(sid))


def baseline_row(method: str, p: Prepared, hkl: np.ndarray, seed: int) -> dict[str, Any]:
    """The row of method "true" or "random" for one structure."""
    ph = true_phases(p.phase) if method == "true" else random_signs(p.amp, _rng(seed, _RANDOM_KEY, p.id))
    r, mpe = score_phases(p, hkl, ph[None])
    return {**p.descriptors(), "r": float(r[0]), "mpe": float(mpe[0])}


def cf_row(p: Prepared, hkl: np.ndarray, seed: int, cfg: CFConfig | None,
           start_phases: np.ndarray | None = None) -> dict[str, Any]:
    """Charge flipping of one structure (from random starts, or from given start phases); {"error"} on failure."""
    try:
        res = charge_flip(p.cell6, hkl, p.amp, p.observed, space_group=STANDARD_SETTING,
                          rng=_rng(seed, _CF_KEY, p.id), config=cfg, start_phases=start_phases)
    except Exception as exc:  # noqa: BLE001 (listed as skipped; the run goes on)
        return {"id": p.id, "error": short_error(exc)}
    r, mpe = score_phases(p, hkl, np.stack([res.phase_polished, res.phase_raw, res.phase_sym]))
    return {**p.descriptors(), "r": float(r[0]), "mpe": float(mpe[0]), "r_raw": float(r[1]),
            "mpe_raw": float(mpe[1]), "r_sym": float(r[2]), "converged": bool(res.converged),
            "cf_cycles": int(res.cycles), "cf_cycles_run": int(res.cycles_run), "r_cf": float(res.r_cf),
            "origin_margin": float(res.origin_margin) if np.isfinite(res.origin_margin) else None}


def _cf_task(args: tuple[Prepared, np.ndarray, int, CFConfig | None]) -> dict[str, Any]:
    """Top level, so worker processes can run it."""
    return cf_row(*args)


def cf_rows(prepared: Sequence[Prepared], hkl: np.ndarray, seed: int, workers: int, cfg: CFConfig | None,
            tick: Callable[[], None]) -> list[dict]:
    """`cf_row` for each structure, in input order, in `workers` spawned processes (1: in this one)."""
    tasks = [(p, hkl, seed, cfg) for p in prepared]
    out = []
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            out.append(_cf_task(t))
            tick()
        return out
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for row in pool.map(_cf_task, tasks, chunksize=1):
            out.append(row)
            tick()
    return out
