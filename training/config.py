"""The training run's configuration: `TrainConfig`, which holds the loader's `DataConfig` rather than copying it.

Defaults: the Acta A 2026 retraining of PhAI (phai-facts.md "Training as published"): AdamW, lr 5e-4, weight
decay 1e-6, batch 64, lr 5e-4 -> 5e-5 -> 1e-5 on plateaus, recycling n ~ U{1, 2, 3} per batch. `TrainConfig.data`
describes the whole run (its batch size is the global batch, its seed the run's root seed); `data_config(world)`
is one rank's share. The CLI's flat options map onto both through `TrainConfig.from_flat`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from training.data import DataConfig
from training.model import preset
from training.schedule import INITS, milestones

__all__ = ["TrainConfig", "RESUMABLE", "DATA_FIELDS", "flat_dict", "json_plain", "resolve_device"]

# DataConfig fields a user sets (max_index follows the model preset).
DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name != "max_index")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# Settings a resume may change; everything else must equal the checkpoint's. The manifests (train, val) are
# compared by content, not by the spelling of their paths.
RESUMABLE = ("steps", "val_every", "ckpt_every", "log_every", "workers", "compile", "device", "verify")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A training run. Defaults: the Acta A 2026 retraining of PhAI (AdamW, lr 5e-4, wd 1e-6, batch 64)."""

    preset: str = "paper"                       # model preset: tiny | small | paper
    train: tuple[str, ...] = ()                 # training manifests (stored resolved in checkpoints)
    weights: tuple[float, ...] = ()             # mixing weights (default: equal)
    val: str = ""                               # held-out manifest
    data: DataConfig = field(default_factory=DataConfig)  # global batch, root seed, masks, loader streams
    steps: int = 100_000                        # optimiser steps in total (a resume continues to this)
    lr: float = 5e-4
    weight_decay: float = 1e-6
    schedule: str = "plateau"                   # "plateau", or "steps:S1,S2" (drop to lr_drops[i] at step S_i)
    lr_drops: tuple[float, ...] = (5e-5, 1e-5)  # Acta A 2026: 5e-4 -> 5e-5 -> 1e-5
    patience: int = 5                           # validations without improvement before a plateau drop
    grad_clip: float = 1.0                      # max gradient norm (0: off)
    max_cycles: int = 3                         # recycling n ~ U{1..max_cycles} per batch (PhAI: 3)
    init: str = "random"                        # first-pass phases: zero | random | mixed (paper §2: random)
    val_every: int = 1000
    val_samples: int = 512
    val_cycles: int = 3                         # recycling cycles at validation (from a zero and a random start)
    ckpt_every: int = 1000
    log_every: int = 50
    workers: int = 2                            # DataLoader workers per rank (must divide its streams)
    compile: bool = False                       # torch.compile the model
    device: str = "auto"                        # auto | cpu | cuda | cuda:N
    prior_samples: int = 4096                   # training samples averaged for the loss prior

    def __post_init__(self) -> None:
        preset(self.preset)  # ValueError naming the valid presets
        for name in ("steps", "val_every", "val_samples", "val_cycles", "ckpt_every", "log_every", "max_cycles",
                     "patience", "prior_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be non-negative, got {self.workers}")
        _finite("lr", self.lr, positive=True)
        for v in self.lr_drops:
            _finite("lr_drops", v, positive=True)
        _finite("weight_decay", self.weight_decay)
        _finite("grad_clip", self.grad_clip)
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r}: choose one of {', '.join(INITS)}")
        if not _DEVICE.match(str(self.device)):
            raise ValueError(f"device {self.device!r}: choose auto, cpu, cuda or cuda:N (the trainer runs on CPUs "
                             "and CUDA GPUs)")
        if self.data.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.data.seed}")
        if self.data.max_index != preset(self.preset).max_index:
            raise ValueError(f"data.max_index {self.data.max_index} is not the {self.preset} model's "
                             f"{preset(self.preset).max_index}")
        milestones(self.schedule, len(self.lr_drops))  # ValueError on a malformed schedule

    @property
    def seed(self) -> int:
        """The run's root seed (data order, augmentation, model init, recycling counts, start phases)."""
        return self.data.seed

    @property
    def batch_size(self) -> int:
        """The global batch, split evenly over the ranks."""
        return self.data.batch_size

    def data_config(self, world: int) -> DataConfig:
        """One rank's DataConfig: the global batch divided by the number of ranks."""
        if self.batch_size % world:
            raise ValueError(f"batch size {self.batch_size} is not divisible by the {world} ranks")
        return dataclasses.replace(self.data, batch_size=self.batch_size // world)

    @classmethod
    def from_flat(cls, **kw: Any) -> "TrainConfig":
        """From the CLI's flat names: DataConfig's (batch_size, seed, d_min, ...) go into `data`."""
        data = {k: kw.pop(k) for k in DATA_FIELDS if k in kw}
        base = kw.pop("data", None) or DataConfig()
        tuples = {k: tuple(v) for k, v in {**kw, **data}.items() if isinstance(v, list)}
        data = {k: tuples.get(k, v) for k, v in data.items()}
        kw = {k: tuples.get(k, v) for k, v in kw.items()}
        return cls(**kw, data=dataclasses.replace(base, **data))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a checkpoint's config["train"]: nested (this version) or flat (checkpoints written before it;
        those trained from zero phases, so a missing `init` means "zero")."""
        d = dict(d)
        if "data" not in d:
            d.setdefault("init", "zero")
        flat = {**{k: v for k, v in d.items() if k != "data"}, **dict(d.get("data") or {})}
        flat.pop("max_index", None)
        names = {f.name for f in dataclasses.fields(cls)} | set(DATA_FIELDS)
        unknown = sorted(set(flat) - names)
        if unknown:
            raise ValueError(f"the checkpoint's training config has settings this version does not know: "
                             f"{', '.join(unknown)}")
        return cls.from_flat(**flat)


def _finite(name: str, v: float, positive: bool = False) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 if positive else v >= 0)):
        raise ValueError(f"{name} = {v}: give a finite {'positive' if positive else 'non-negative'} number")


def flat_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as one flat, JSON-plain dict (DataConfig's fields lifted), the names the CLI and RESUMABLE use."""
    d = json_plain(dataclasses.asdict(cfg))
    data = d.pop("data")
    data.pop("max_index", None)
    return {**d, **data}


def json_plain(obj: Any) -> Any:
    """Tuples -> lists, as JSON (and a checkpoint read back with weights_only) holds them."""
    if isinstance(obj, dict):
        return {k: json_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_plain(v) for v in obj]
    return obj


def resolve_device(name: str, local_rank: int) -> torch.device:
    """The torch device of --device on this rank (auto: the rank's GPU if there is one, else the CPU)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)  # TrainConfig allows only cpu, cuda, cuda:N
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev
