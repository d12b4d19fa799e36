"""The per-sample stage of the loader: a shard record -> a training sample -> a batch -> the network's input.

  `to_sample`      |F| and phases (computed from the structure for structures-only shards), the observed mask:
                   d >= d_min, minus a random fraction, minus systematic absences; seeded per (seed, source,
                   epoch, key), so a sample's mask never depends on where it lands in a batch or on which rank
  `collate`        a batch of raw |F|, phases, observed masks (and zero-padded structures when F is made on the
                   device by `training.sf_torch`); `concat` joins collated parts as one `collate` would
  `prepare_batch`  max-normalises |F| over the observed set, scatters it onto the PhAI grid and builds the loss
                   weight prior x not-absent (on the device)

Also the two fixed reads in manifest order: the loss prior (`compute_prior`) and the validation set
(`validation_batches`). The streams that feed `to_sample` are training/data.py's.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from builder.reflections import d_spacing, phai_hkl, systematic_absences
from builder.sf import SFPlan, amplitudes_phases, sf_plan, structure_factors
from builder.symmetry import space_group_ops
from manifests.schema import ManifestError
from manifests.seeds import seeded_rng
from training.shards import SPACE_GROUP, Source, read_shard

if TYPE_CHECKING:
    from training.data import DataConfig

__all__ = ["reflections_from_structure", "observed_mask", "to_sample", "collate", "concat", "compute_prior",
           "validation_batches", "Batch", "prepare_batch"]

# Seed domain of the augmentation (1-3: the loader's shard order, windows and mixing, training/data.py).
_AUG = 4
_ATOMS = ("frac", "z", "occ", "uiso")  # zero-padded to the batch's largest structure (Z = 0 scatters nothing)


@functools.lru_cache(maxsize=4)
def _reflection_context(max_index: int) -> tuple[np.ndarray, np.ndarray]:
    hkl = phai_hkl(max_index)
    absent = systematic_absences(SPACE_GROUP, hkl)
    absent.setflags(write=False)
    return hkl, absent


@functools.lru_cache(maxsize=4)
def _plan(max_index: int) -> SFPlan:
    return sf_plan(space_group_ops(SPACE_GROUP), phai_hkl(max_index))  # built once per process; threads may share it


def reflections_from_structure(rec: dict, max_index: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """|F| and phases (float32) of a structures-only record, by the builder's own structure-factor kernel (builder/sf.py)."""
    n = len(_reflection_context(max_index)[0])
    if len(rec["z"]) == 0:  # an empty structure scatters nothing (builder.sf cannot take N = 0)
        return np.zeros(n, np.float32), np.zeros(n, np.float32)
    plan = _plan(max_index)
    f = structure_factors(plan, np.asarray(rec["cell"], np.float64), rec["frac"], rec["z"], rec["occ"], rec["uiso"])
    return amplitudes_phases(f, plan.real)


def observed_mask(cell: np.ndarray, rng: np.random.Generator, cfg: "DataConfig") -> tuple[np.ndarray, float]:
    """Observed reflections: d >= d_min (fixed or ~U(lo, hi)), minus a fraction ~U(0, drop) of those, minus
    systematic absences. Returns (mask (N,) bool, d_min)."""
    hkl, absent = _reflection_context(cfg.max_index)
    lo, hi = cfg.d_min
    d_min = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    obs = (d_spacing(cell, hkl) >= d_min) & ~absent
    if cfg.drop > 0:
        idx = np.flatnonzero(obs)
        n_drop = int(round(rng.uniform(0.0, cfg.drop) * len(idx)))
        if n_drop:
            obs[rng.choice(idx, n_drop, replace=False)] = False
    return obs, d_min


def _sf_in_loader(cfg: "DataConfig") -> bool:
    if cfg.sf == "auto":  # the trainer resolves "auto" in the main process; this is for direct users
        return not torch.cuda.is_available()
    return cfg.sf == "loader"


def to_sample(rec: dict, src_index: int, src: Source, epoch: int, cfg: "DataConfig") -> dict:
    """A shard record -> a training sample; the augmentation is seeded by (seed, source, epoch, key)."""
    key = int(rec["__key__"])
    cell = np.asarray(rec["cell"], dtype=np.float64)
    out: dict[str, Any] = {"key": key, "source": src_index}
    if "amplitude" in rec:
        out["amplitude"] = np.asarray(rec["amplitude"], np.float32)
        out["phase"] = np.asarray(rec["phase"], np.float32)
    elif _sf_in_loader(cfg):
        out["amplitude"], out["phase"] = reflections_from_structure(rec, cfg.max_index)
    else:
        out.update(cell=cell, frac=rec["frac"], z=rec["z"], occ=rec["occ"], uiso=rec["uiso"])
    out["observed"], out["d_min"] = observed_mask(cell, seeded_rng(cfg.seed, _AUG, src.sid, epoch, key), cfg)
    return out


_MIXED = "a batch mixes samples with and without reflections; use sf='loader' to mix such sources"


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch of tensors; structures are zero-padded (Z = 0 scatters nothing)."""
    b: dict[str, Any] = {
        "key": torch.tensor([s["key"] for s in samples], dtype=torch.int64),
        "source": torch.tensor([s["source"] for s in samples], dtype=torch.int64),
        "observed": torch.from_numpy(np.stack([s["observed"] for s in samples])),
        "d_min": torch.tensor([s["d_min"] for s in samples], dtype=torch.float32),
    }
    with_f = [s for s in samples if "amplitude" in s]
    if len(with_f) == len(samples):
        b["amplitude"] = torch.from_numpy(np.stack([s["amplitude"] for s in samples]))
        b["phase"] = torch.from_numpy(np.stack([s["phase"] for s in samples]))
        return b
    if with_f:
        raise ValueError(_MIXED)
    n = max(len(s["z"]) for s in samples)
    pad = np.zeros((len(samples), n, 3), np.float32), np.zeros((len(samples), n), np.int64)
    occ, uiso = np.zeros((len(samples), n), np.float32), np.zeros((len(samples), n), np.float32)
    for i, s in enumerate(samples):
        m = len(s["z"])
        pad[0][i, :m], pad[1][i, :m], occ[i, :m], uiso[i, :m] = s["frac"], s["z"], s["occ"], s["uiso"]
    b.update(cell=torch.from_numpy(np.stack([s["cell"] for s in samples])), frac=torch.from_numpy(pad[0]),
             z=torch.from_numpy(pad[1]), occ=torch.from_numpy(occ), uiso=torch.from_numpy(uiso))
    return b


def concat(parts: list[dict]) -> dict:
    """Collated parts (tensors or the numpy arrays loader workers send) -> one batch of tensors, equal to `collate`
    of all their samples (structures re-padded). Joined by numpy: a memory copy, never torch's thread pool."""
    if any(p.keys() != parts[0].keys() for p in parts):
        raise ValueError(_MIXED)
    arrays = [{k: np.asarray(v) for k, v in p.items()} for p in parts]
    n = max(p["z"].shape[1] for p in arrays) if "z" in arrays[0] else 0
    out = {}
    for k in arrays[0]:
        vs = [p[k] for p in arrays]
        if k in _ATOMS:  # (b, atoms) or (b, atoms, 3): pad the atom axis with zeros
            vs = [np.pad(v, [(0, 0), (0, n - v.shape[1])] + [(0, 0)] * (v.ndim - 2)) for v in vs]
        out[k] = torch.from_numpy(np.concatenate(vs) if len(vs) > 1 else vs[0])
    return out


# ----------------------------------------------------------------------------- prior, validation, batches

def _records_in_order(src: Source, verify: str, need_atoms: bool = False) -> Iterator[dict]:
    for shard in range(src.n_shards):
        yield from read_shard(src, shard, verify, need_atoms)


def _amplitudes(rec: dict, max_index: int) -> np.ndarray:
    if "amplitude" in rec:
        return np.asarray(rec["amplitude"], np.float64)
    return reflections_from_structure(rec, max_index)[0].astype(np.float64)


def compute_prior(sources: Sequence[Source], n_samples: int = 4096, verify: str = "sha256",
                  max_index: int = 10) -> np.ndarray:
    """PhAI's loss prior: the mean normalised |F| per reflection over (a sample of) the training manifests.

    |F| is divided by its maximum over the non-absent reflections of the whole set (no resolution or
    completeness mask), then averaged over the first samples of each manifest (in manifest order, n_samples
    split by the mixing weights), and the per-source means are mixed by weight. Absent reflections get 0.

    Returns:
        (N,) float32.
    """
    _, absent = _reflection_context(max_index)
    w = np.array([s.weight for s in sources], np.float64)
    w /= w.sum()
    prior = np.zeros(len(absent), np.float64)
    for s, ws in zip(sources, w):
        want = max(1, int(round(n_samples * ws)))
        acc, n = np.zeros(len(absent), np.float64), 0
        for rec in _records_in_order(s, verify):
            amp = np.where(absent, 0.0, _amplitudes(rec, max_index))
            top = amp.max()
            if top > 0:
                acc += amp / top
                n += 1
            if n >= want:
                break
        if n == 0:
            raise ManifestError(f"{s.manifest}: no sample with non-zero amplitudes to compute the prior from")
        prior += ws * acc / n
    return prior.astype(np.float32)


def validation_batches(src: Source, cfg: "DataConfig", n_samples: int) -> list[dict]:
    """The first n_samples of a held-out manifest in manifest order, masked as epoch 0: the same every time."""
    cfg_val = dataclasses.replace(cfg, sf="loader")
    samples = []
    for rec in _records_in_order(src, cfg.verify):
        samples.append(to_sample(rec, 0, src, 0, cfg_val))
        if len(samples) >= n_samples:
            break
    return [collate(samples[i:i + cfg.batch_size]) for i in range(0, len(samples), cfg.batch_size)]


@dataclass
class Batch:
    """What the model and loss take: see `prepare_batch`."""

    amplitude: torch.Tensor   # (B, N) |F| / max observed |F|, 0 where not observed
    grid: torch.Tensor        # (B, 2m+1, m+1, m+1) amplitude grid (PhAI input)
    phase: torch.Tensor       # (B, N) true phases, radians
    observed: torch.Tensor    # (B, N) bool
    weight: torch.Tensor      # (B, N) prior x not absent


def prepare_batch(batch: dict, prior: torch.Tensor, device: torch.device | str = "cpu",
                  max_index: int = 10) -> Batch:
    """Normalise and grid a loader batch on `device`; compute F there first for structures-only batches."""
    from training.model import to_grid  # local: model imports nothing from here, keep it that way

    hkl, absent = _reflection_context(max_index)
    observed = batch["observed"].to(device, non_blocking=True)
    if "amplitude" in batch:
        amp = batch["amplitude"].to(device, non_blocking=True)
        phase = batch["phase"].to(device, non_blocking=True)
    else:
        from training.sf_torch import structure_factors_torch
        amp, phase = structure_factors_torch(*(batch[k].to(device) for k in ("cell", "frac", "z", "occ", "uiso")),
                                             hkl=hkl, space_group=SPACE_GROUP)
    amp = amp * observed                                                  # (B, N)
    amp = amp / amp.amax(dim=1, keepdim=True).clamp_min(torch.finfo(amp.dtype).tiny)
    not_absent = torch.from_numpy(~absent).to(device)
    weight = (prior.to(device) * not_absent).expand_as(amp)              # (N,) -> (B, N)
    return Batch(amplitude=amp, grid=to_grid(amp, hkl, max_index), phase=phase, observed=observed, weight=weight)
