"""Recycling inference: the paper's scan of cycles × starts, batched on CPU or CUDA (PhAI; Acta A 2026).

For each structure the network runs from a zero start and from `random_starts` random-sign starts; every
start is recycled `max(cycles)` times (style lesson 10: an explicit loop, phases kept *per cycle*), so the run
"n cycles from start s" is the output of pass n of start s and the whole scan costs
starts × (max(cycles) + 1) forward passes per structure. The one extra pass is only used by the
`consistency` figure of merit (is the run a fixed point of one more cycle?); its phases are never a candidate.

Input to the network (phai-facts.md, "Reflection set and input tensors"): |F| / max |F| over the observed
reflections, 0 for unobserved and systematically absent ones, scattered on the (2m+1, m+1, m+1) grid; phases in
degrees, 0 or −180, on all reflections of the list (random starts draw each sign with probability ½).

Picking one run per structure:
  * best by r: the paper's protocol, max r over all (start, cycles); needs the true phases (ties: the zero start
    first, then fewer cycles).
  * figure of merit (FOM), no true phases:
      - ``confidence`` (default): the |F|²-weighted mean, over the observed reflections, of the network's
        probability for the sign it chose, max(softmax), at the run's last cycle. Strong reflections dominate
        the map just as they dominate r.
      - ``consistency``: the |F|²-weighted fraction of observed reflections whose sign does not change when the
        run's phases are cycled once more (1 = a fixed point of the recycling map); ties broken by confidence.
    Both are computed for every run and reported; `fom` chooses which one is the headline pick.

Checkpoints (trainer dicts and bare published PhAI state_dicts) are read, as data only, by
`training.checkpoint.load_model`; the recycling loop is `training.model.recycle`, the one the trainer uses.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from manifests.seeds import seeded_rng, stable_id
from training.model import PhAINet, logits_to_phase_deg, recycle, to_grid

__all__ = [
    "FOMS", "ScanConfig", "ScanInput", "ScanResult", "parse_cycles", "start_phases", "scan", "pick_runs",
]

FOMS = ("confidence", "consistency")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScanConfig:
    """The recycling scan (Acta A 2026: cycles 1..10 × {zero start, 4 random starts})."""

    cycles: tuple[int, ...] = tuple(range(1, 11))  # run lengths to score
    zero_start: bool = True
    random_starts: int = 4
    seed: int = 0  # root seed of the random starts (per structure: SeedSequence(seed, key(id)))
    fom: str = "confidence"  # headline figure of merit, one of FOMS
    batch_size: int = 64  # network rows (structure × start) per forward pass

    def __post_init__(self) -> None:
        if not self.cycles or any(not isinstance(c, int) or c < 1 for c in self.cycles):
            raise ValueError(f"cycles must be positive integers, got {self.cycles!r}")
        if list(self.cycles) != sorted(set(self.cycles)):
            raise ValueError(f"cycles must be increasing without repeats, got {self.cycles!r}")
        if self.random_starts < 0:
            raise ValueError(f"random_starts must be >= 0, got {self.random_starts}")
        if not self.zero_start and self.random_starts == 0:
            raise ValueError("no starts: enable the zero start or use random_starts >= 1")
        if self.fom not in FOMS:
            raise ValueError(f"unknown figure of merit {self.fom!r}; choose one of {', '.join(FOMS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def start_names(self) -> tuple[str, ...]:
        """"zero", then "random-1" … "random-k"."""
        return (("zero",) if self.zero_start else ()) + tuple(f"random-{i + 1}" for i in range(self.random_starts))

    @property
    def passes(self) -> int:
        """Forward passes per start: the longest run plus one for the consistency test."""
        return max(self.cycles) + 1


def parse_cycles(text: str) -> tuple[int, ...]:
    """"1..10" -> (1, …, 10); "1,3,5" -> (1, 3, 5); "5" -> (5,).

    Raises:
        ValueError: unparsable text or non-positive values.
    """
    s = str(text).strip()
    try:
        if ".." in s:
            lo, hi = (int(v) for v in s.split(".."))
            out = tuple(range(lo, hi + 1))
        else:
            out = tuple(sorted({int(v) for v in s.split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"cannot read cycles {text!r}: use A..B, a list like 1,3,5, or one number") from None
    if not out or out[0] < 1:
        raise ValueError(f"cycles {text!r} must name positive cycle counts")
    return out


# ----------------------------------------------------------------------------- the scan


@dataclasses.dataclass(frozen=True)
class ScanInput:
    """One structure for the scan: raw |F| on the reflection list and the observed mask."""

    id: str
    amp: np.ndarray  # (N,) |F| (any scale)
    observed: np.ndarray  # (N,) bool: observed and not systematically absent


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """All runs of one structure. Axis S = starts (`ScanConfig.start_names`), C = `ScanConfig.cycles`.

    Attributes:
        id: structure id.
        phase_deg: (S, C, N) float32 phases in degrees (0 or −180) of each run: the phases per cycle.
        confidence: (S, C) the `confidence` FOM of each run.
        consistency: (S, C) the `consistency` FOM of each run.
    """

    id: str
    phase_deg: np.ndarray
    confidence: np.ndarray
    consistency: np.ndarray


def start_phases(structure_id: str, n_reflections: int, cfg: ScanConfig) -> np.ndarray:
    """(S, N) float32 start phases in degrees: zeros, then random 0/−180 signs.

    The random starts of a structure depend only on (cfg.seed, its id): not on the batch, the order or --limit.
    """
    rng = seeded_rng(cfg.seed, 1, stable_id(structure_id))
    rand = -180.0 * rng.integers(0, 2, size=(cfg.random_starts, n_reflections))
    zero = np.zeros((1 if cfg.zero_start else 0, n_reflections))
    return np.concatenate([zero, rand]).astype(np.float32)


def _normalised(amp: np.ndarray, observed: np.ndarray) -> np.ndarray:
    a = np.where(observed, np.asarray(amp, dtype=np.float64), 0.0)
    top = a.max() if a.size else 0.0
    if not top > 0:
        raise ValueError("no observed amplitude above zero")
    return (a / top).astype(np.float32)


def _rows(inputs: Sequence[ScanInput], cfg: ScanConfig) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(structure index, start index, normalised amp (N,), start phases (N,)) for every network row."""
    for i, x in enumerate(inputs):
        amp = _normalised(x.amp, x.observed)
        for s, ph in enumerate(start_phases(x.id, len(amp), cfg)):
            yield i, s, amp, ph


def _run_batch(model: PhAINet, hkl: np.ndarray, amp: np.ndarray, start: np.ndarray, observed: np.ndarray,
               cfg: ScanConfig, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of rows through `cfg.passes` cycles: phases (R, C, N), confidence (R, C), consistency (R, C)."""
    m = model.cfg.max_index
    a = torch.from_numpy(amp).to(device)  # (R, N)
    w = a * a * torch.from_numpy(observed).to(device)  # (R, N) |F|² over observed
    w = w / w.sum(dim=1, keepdim=True)
    with torch.inference_mode():
        logits = recycle(model, to_grid(a, hkl, m), cfg.passes,
                         to_grid(torch.from_numpy(start).to(device), hkl, m))  # passes × (R, 2, N)
        phases = torch.stack([logits_to_phase_deg(lg.float()) for lg in logits], dim=1)  # (R, P, N)
        pmax = torch.stack([torch.softmax(lg.float(), dim=1).amax(dim=1) for lg in logits], dim=1)  # (R, P, N)
        conf = (pmax * w[:, None, :]).sum(dim=2)  # (R, P)
        same = (phases[:, 1:] == phases[:, :-1]).float()  # (R, P-1, N): pass n+1 agrees with pass n
        cons = (same * w[:, None, :]).sum(dim=2)  # (R, P-1)
        pick = torch.as_tensor([c - 1 for c in cfg.cycles], device=device)
        out = (phases[:, pick], conf[:, pick], cons[:, pick])
    return tuple(t.cpu().numpy() for t in out)


def scan(model: PhAINet, hkl: np.ndarray, inputs: Sequence[ScanInput], cfg: ScanConfig,
         progress: Any = None) -> Iterator[ScanResult]:
    """Run the recycling scan over structures, in batches of `cfg.batch_size` rows (structure × start).

    Args:
        model: a PhAINet in eval mode (its device is used).
        hkl: (N, 3) the model's reflection list (`builder.reflections.phai_hkl(cfg.max_index)`).
        inputs: structures; each amp/observed has N entries.
        cfg: the scan.
        progress: optional tqdm-like object; `update(1)` is called per finished structure.

    Yields:
        ScanResult per structure, in input order.

    Raises:
        ValueError: inputs whose length is not N, or without observed power.
    """
    n = len(hkl)
    if model.cfg.reflections != n:
        raise ValueError(f"model predicts {model.cfg.reflections} reflections, hkl has {n}")
    for x in inputs:
        if np.shape(x.amp) != (n,) or np.shape(x.observed) != (n,):
            raise ValueError(f"{x.id}: amp and observed must have shape ({n},)")
    device = next(model.parameters()).device
    n_starts = len(cfg.start_names)
    pending: dict[int, list] = {}
    done = 0
    rows = _rows(inputs, cfg)
    while True:
        buf = [r for _, r in zip(range(cfg.batch_size), rows)]
        if not buf:
            break
        obs = np.stack([inputs[i].observed for i, *_ in buf])
        ph, conf, cons = _run_batch(model, hkl, np.stack([r[2] for r in buf]), np.stack([r[3] for r in buf]),
                                    obs, cfg, device)
        for j, (i, s, _, _) in enumerate(buf):
            pending.setdefault(i, [None] * n_starts)[s] = (ph[j], conf[j], cons[j])
        while done in pending and all(v is not None for v in pending[done]):
            runs = pending.pop(done)
            yield ScanResult(id=inputs[done].id, phase_deg=np.stack([r[0] for r in runs]),
                             confidence=np.stack([r[1] for r in runs]).astype(np.float64),
                             consistency=np.stack([r[2] for r in runs]).astype(np.float64))
            if progress is not None:
                progress.update(1)
            done += 1


def _argmax_first(key: np.ndarray) -> tuple[int, int]:
    """(start, cycle) index of the first maximum in (S, C) order: zero start first, then fewer cycles."""
    flat = int(np.argmax(key.ravel()))
    return divmod(flat, key.shape[1])


def pick_runs(result: ScanResult, r: np.ndarray) -> dict[str, tuple[int, int]]:
    """Indices (start, cycle) of the run picked by r and by each figure of merit.

    Args:
        result: the scan of one structure.
        r: (S, C) r of every run (true phases needed only for the "best" pick).

    Returns:
        {"best": …, "confidence": …, "consistency": …}; consistency ties go to the higher confidence.
    """
    s_n, c_n = result.confidence.shape
    order = np.arange(s_n * c_n)
    # lexicographic: highest consistency (to 1e-9), then highest confidence, then the first in (S, C) order
    first = int(np.lexsort((order, -result.confidence.ravel(), -np.round(result.consistency.ravel(), 9)))[0])
    return {"best": _argmax_first(np.asarray(r).reshape(s_n, c_n)),
            "confidence": _argmax_first(result.confidence),
            "consistency": divmod(first, c_n)}
