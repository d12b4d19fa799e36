"""The PhAI training loop: shard streams -> recycling -> origin-invariant loss -> AdamW, with exact resume.

Follows the Acta A 2026 retraining of PhAI (phai-facts.md "Training as published"): AdamW, lr 5e-4, weight
decay 1e-6, batch 64, lr 5e-4 -> 5e-5 -> 1e-5 on plateaus; recycling n ~ U{1, 2, 3} per batch with gradients
through the last pass only; loss weight = prior (mean normalised |F| per reflection) x not absent.

One process or many under `torchrun` (DistributedDataParallel; NCCL on GPUs, gloo on CPUs). The global batch
is split evenly over the ranks, so the recipe does not change with the GPU count. Rank 0 validates, logs and
writes checkpoints; every rank stores its loader position in them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from builder.reflections import hkl_hash, phai_hkl
from manifests.schema import ManifestError, package_version, write_json_atomic
from manifests.seeds import seeded_rng
from training.data import (
    DataConfig,
    Loader,
    compute_prior,
    open_sources,
    phase_r,
    prepare_batch,
    random_sign_phases,
    validation_batches,
)
from training.loss import origin_shift_signs, phai_loss
from training.model import (
    config_dict,
    hkl_grid_index,
    logits_to_phase_deg,
    preset,
    seeded_model,
)

__all__ = ["TrainConfig", "LRSchedule", "fit", "load_checkpoint", "CHECKPOINT_FORMAT", "RESUMABLE", "n_cycles_at"]

CHECKPOINT_FORMAT = "phaseforge-checkpoint-1"
_RECYCLE = 7  # seed domain of the per-step recycling count


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A training run. Defaults: the Acta A 2026 retraining of PhAI (AdamW, lr 5e-4, wd 1e-6, batch 64)."""

    preset: str = "paper"                       # model preset: tiny | small | paper
    train: tuple[str, ...] = ()                 # training manifests
    weights: tuple[float, ...] = ()             # mixing weights (default: equal)
    val: str = ""                               # held-out manifest
    steps: int = 100_000                        # optimiser steps in total (a resume continues to this)
    batch_size: int = 64                        # global batch, split evenly over the ranks
    lr: float = 5e-4
    weight_decay: float = 1e-6
    schedule: str = "plateau"                   # "plateau", or "steps:S1,S2" (drop to lr_drops[i] at step S_i)
    lr_drops: tuple[float, ...] = (5e-5, 1e-5)  # Acta A 2026: 5e-4 -> 5e-5 -> 1e-5
    patience: int = 5                           # validations without improvement before a plateau drop
    grad_clip: float = 1.0                      # max gradient norm (0: off)
    max_cycles: int = 3                         # recycling n ~ U{1..max_cycles} per batch (PhAI: 3)
    seed: int = 0
    val_every: int = 1000
    val_samples: int = 512
    val_cycles: int = 3                         # recycling cycles at validation, from zero phases
    ckpt_every: int = 1000
    log_every: int = 50
    workers: int = 2                            # DataLoader workers per rank (must divide `streams`)
    compile: bool = False                       # torch.compile the model
    device: str = "auto"                        # auto | cpu | cuda | cuda:N
    prior_samples: int = 4096                   # training samples averaged for the loss prior
    d_min: tuple[float, float] = (1.0, 1.0)     # A; Acta A: fixed 1.0; PhAI: (0, 2)
    drop: float = 0.0                           # completeness: remove ~U(0, drop) of reflections (PhAI: 0.15)
    verify: str = "sha256"                      # shard check: none | size | sha256
    streams: int = 24                           # loader streams per rank
    window: int = 1                             # shards per shuffle window
    sf: str = "auto"                            # structures-only shards: F in the loader or on the device

    def __post_init__(self) -> None:
        preset(self.preset)  # ValueError naming the valid presets
        for name in ("steps", "batch_size", "val_every", "val_samples", "val_cycles", "ckpt_every", "log_every",
                     "max_cycles", "patience", "prior_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.workers < 0 or self.seed < 0:
            raise ValueError("workers and seed must be non-negative")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.grad_clip >= 0):
            raise ValueError("need lr > 0, weight_decay >= 0, grad_clip >= 0")
        _milestones(self)  # ValueError on a malformed schedule
        self.data_config(1)  # ValueError on bad data settings

    def data_config(self, world: int) -> DataConfig:
        if self.batch_size % world:
            raise ValueError(f"batch size {self.batch_size} is not divisible by the {world} ranks")
        return DataConfig(batch_size=self.batch_size // world, seed=self.seed, d_min=tuple(self.d_min),
                          drop=self.drop, verify=self.verify, streams=self.streams, window=self.window, sf=self.sf)


# Settings a resume may change; everything else must equal the checkpoint's.
RESUMABLE = ("steps", "val_every", "ckpt_every", "log_every", "workers", "compile", "device", "verify")


def _milestones(cfg: TrainConfig) -> list[int] | None:
    if cfg.schedule == "plateau":
        return None
    if not cfg.schedule.startswith("steps:"):
        raise ValueError(f"schedule {cfg.schedule!r}: use 'plateau' or 'steps:S1,S2,...'")
    try:
        ms = [int(x) for x in cfg.schedule[len("steps:"):].split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"schedule {cfg.schedule!r}: milestones must be integers") from None
    if len(ms) != len(cfg.lr_drops) or ms != sorted(ms) or any(m < 1 for m in ms):
        raise ValueError(f"schedule {cfg.schedule!r}: give {len(cfg.lr_drops)} increasing positive steps, "
                         f"one per lr drop {list(cfg.lr_drops)}")
    return ms


class LRSchedule:
    """Learning-rate levels [lr, *lr_drops]: the next level after `patience` validations without a new best
    validation loss ("plateau"), or at fixed steps ("steps:S1,S2")."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
        self.optimizer, self.levels = optimizer, [cfg.lr, *cfg.lr_drops]
        self.milestones, self.patience = _milestones(cfg), cfg.patience
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


# ----------------------------------------------------------------------------- helpers

def _scatter(values: torch.Tensor, index: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    flat = values.new_zeros(values.shape[0], math.prod(shape))                  # (B, H*K*L)
    return flat.index_copy(1, index, values).view(values.shape[0], *shape)     # (B, H, K, L)


def _code_version() -> dict:
    h = hashlib.sha256()
    for name in ("model.py", "loss.py", "shards.py", "data.py", "train.py", "sf_torch.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return {"package": package_version(), "training_sha256": h.hexdigest()}


def _save_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a phaseforge checkpoint (tensors and plain data only: weights_only).

    Raises:
        ManifestError: missing, unreadable, or not a phaseforge checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"no checkpoint at {p}")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ManifestError(f"{p}: unreadable checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ManifestError(f"{p}: not a {CHECKPOINT_FORMAT} file")
    return ck


def _check_resume(ck: dict, cfg: TrainConfig, sources_desc: list[dict], world: int) -> None:
    old = ck["config"]["train"]
    new = _jsonable(dataclasses.asdict(cfg))
    diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"--resume: the checkpoint was trained with other settings ({', '.join(diff)}); "
                         f"only {', '.join(RESUMABLE)} may change on resume")
    if [s["manifest_sha256"] for s in ck["config"]["sources"]] != [s["manifest_sha256"] for s in sources_desc]:
        raise ValueError("--resume: a training manifest changed since the checkpoint (manifest sha256 differs)")
    if ck["dataloader"]["world"] != world:
        raise ValueError(f"--resume: the checkpoint ran on {ck['dataloader']['world']} ranks, this run has {world}; "
                         "resume with the same number of processes")
    if ck["hkl_sha256"] != hkl_hash(phai_hkl(preset(cfg.preset).max_index)):
        raise ValueError("--resume: the checkpoint's reflection set is not this model's")
    if cfg.steps <= ck["train_state"]["step"]:
        raise ValueError(f"--resume: the checkpoint is at step {ck['train_state']['step']}; "
                         f"pass --steps larger than that to continue")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


class _Stop:
    """SIGTERM / SIGINT -> finish the current step, write last.pt, exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._prev: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._prev[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._prev.items():
            signal.signal(s, h)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


# ----------------------------------------------------------------------------- validation

@torch.no_grad()
def validate(fwd, batches: list[dict], prior: torch.Tensor, device: torch.device, cycles: int,
             autocast) -> dict:
    """Validation loss (last cycle), mean r and f(r >= 0.8) per recycling cycle from zero phases."""
    hkl = phai_hkl(10)
    signs = origin_shift_signs(hkl).to(device)
    index = hkl_grid_index(hkl).to(device)
    loss_sum, n, r_sum, solved = 0.0, 0, np.zeros(cycles), np.zeros(cycles)
    for raw in batches:
        b = prepare_batch(raw, prior, device)
        phases = torch.zeros_like(b.grid)
        for c in range(cycles):
            with autocast():
                logits = fwd(b.grid, phases)
            deg = logits_to_phase_deg(logits.float())                            # (B, N)
            r = phase_r(torch.deg2rad(deg), b.phase, b.amplitude, b.observed, signs)
            r_sum[c] += float(r.sum())
            solved[c] += float((r >= 0.8).sum())
            phases = _scatter(deg, index, tuple(b.grid.shape[1:]))
        loss_sum += float(phai_loss(logits.float(), b.phase, b.weight, hkl)) * len(r)
        n += len(r)
    return {"loss": float(loss_sum / n), "mean_r": float(r_sum[-1] / n), "f_solved": float(solved[-1] / n),
            "mean_r_by_cycle": (r_sum / n).round(6).tolist(), "n": n}


def random_sign_baseline(batches: list[dict], prior: torch.Tensor, seed: int) -> dict:
    """Mean r and f(r >= 0.8) of random 0 / pi phases on the validation set (the chance level of r)."""
    signs = origin_shift_signs(phai_hkl(10))
    rs = []
    for i, raw in enumerate(batches):
        b = prepare_batch(raw, prior, "cpu")
        rs.append(phase_r(random_sign_phases(tuple(b.phase.shape), seed + i), b.phase, b.amplitude, b.observed,
                          signs))
    r = torch.cat(rs)
    return {"mean_r": float(r.mean()), "f_solved": float((r >= 0.8).float().mean())}


# ----------------------------------------------------------------------------- the run

def fit(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool | None = None,
        log=print) -> dict:
    """Train (or continue) a run in `out`; returns the summary. All input is checked before anything is written.

    Raises:
        ValueError / ManifestError: bad input (unknown preset, missing or corrupt manifests, different
        reflection sets, an incompatible --resume, an existing run without --resume).
    """
    out = Path(out)
    rank, world, local_rank = _dist_info()
    model_cfg = preset(cfg.preset)
    data_cfg = cfg.data_config(world)
    if not cfg.val:
        raise ValueError("a validation manifest (--val) is required")
    sources = open_sources(cfg.train, cfg.weights or None, cfg.verify, model_cfg.max_index)
    val_src = open_sources([cfg.val], None, cfg.verify, model_cfg.max_index)[0]
    sources_desc = [s.describe() for s in sources]
    ck = None
    if resume:
        ck = load_checkpoint(out / "last.pt")
        _check_resume(ck, cfg, sources_desc, world)
    elif (out / "last.pt").exists() or (out / "metrics.jsonl").exists():
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    Loader(sources, data_cfg, workers=cfg.workers)  # ValueError on a bad worker count, before any write
    device = _device(cfg.device, local_rank)
    if data_cfg.sf == "auto":  # decided here, not in forked loader workers (they must not touch CUDA)
        on_device = device.type == "cuda" and all(s.structures_only for s in sources)
        data_cfg = dataclasses.replace(data_cfg, sf="device" if on_device else "loader")
    elif data_cfg.sf == "device" and not all(s.structures_only for s in sources) and any(
            s.structures_only for s in sources):
        raise ValueError("sf='device' needs every training manifest to be structures-only (a batch cannot mix "
                         "precomputed and device-computed reflections); use the default")
    if device.type == "cpu" and cfg.workers > 0 and "OMP_NUM_THREADS" not in os.environ:
        # Loader workers need cores too; oversubscribed OpenMP barriers make CPU steps 10-50x slower.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - cfg.workers))

    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _run(cfg, out, ck, sources, sources_desc, val_src, model_cfg, data_cfg, device, rank, world,
                    progress, log)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg, out, ck, sources, sources_desc, val_src, model_cfg, data_cfg, device, rank, world, progress,
         log) -> dict:
    is_main, cuda = rank == 0, device.type == "cuda"
    hkl = phai_hkl(model_cfg.max_index)
    net = seeded_model(model_cfg, cfg.seed).to(device)
    prior = (ck["prior"] if ck is not None else
             torch.from_numpy(compute_prior(sources, cfg.prior_samples, cfg.verify, model_cfg.max_index)))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = LRSchedule(opt, cfg)
    step, best = 0, {"loss": math.inf, "step": 0}
    loader_state = None
    if ck is not None:
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["lr_scheduler"])
        step, best = int(ck["train_state"]["step"]), dict(ck["train_state"]["best"])
        loader_state = ck["dataloader"]["ranks"][rank]
        torch.set_rng_state(ck["rng"]["torch"])
    ddp = (torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None,
                                                     broadcast_buffers=False) if world > 1 else net)
    fwd_train, fwd_eval = (torch.compile(ddp), torch.compile(net)) if cfg.compile else (ddp, net)
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext)
    loader = Loader(sources, data_cfg, rank, world, cfg.workers, loader_state, pin_memory=cuda)
    val_batches = validation_batches(val_src, data_cfg, cfg.val_samples) if is_main else []
    baseline = random_sign_baseline(val_batches, prior, cfg.seed) if is_main else {}

    index, grid_shape = hkl_grid_index(hkl, model_cfg.max_index).to(device), model_cfg.grid_shape
    config = {"train": _jsonable(dataclasses.asdict(cfg)), "model": config_dict(model_cfg),
              "data": _jsonable(dataclasses.asdict(data_cfg)), "sources": sources_desc,
              "val": val_src.describe(), "world": world}
    metrics = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", config)
        metrics = _open_metrics(out / "metrics.jsonl", step)
        if ck is None:
            _log_json(metrics, {"kind": "baseline", "step": 0, "random_signs": baseline})
    writer = _tensorboard(out) if is_main else None

    def checkpoint(path: Path) -> None:
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, loader.state_dict())
        else:
            states = [loader.state_dict()]
        if not is_main:
            return
        _save_atomic(path, {
            "format": CHECKPOINT_FORMAT, "model": net.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "train_state": {"step": step, "best": best},
            "dataloader": {"world": world, "ranks": states}, "config": config,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if cuda else []},
            "code_version": _code_version(), "prior": prior, "hkl_sha256": hkl_hash(hkl),
            "val": last_val})

    last_val: dict = {}
    t0, t_log, n_log, loss_log, losses = time.time(), time.time(), 0, [], []
    start_step = step
    bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True,
               disable=True if not is_main else (None if progress is None else not progress))
    it = iter(loader)
    stopped = None
    try:
        with _Stop() as stop:
            while step < cfg.steps:
                raw = next(it)
                b = prepare_batch(raw, prior, device)
                n = n_cycles_at(cfg.seed, step, cfg.max_cycles)
                sched.at_step(step)
                phases = torch.zeros_like(b.grid)
                with torch.no_grad():
                    for _ in range(n - 1):  # recycling: earlier passes feed their argmax phases forward
                        with autocast():
                            logits = fwd_train(b.grid, phases)
                        phases = _scatter(logits_to_phase_deg(logits.float()), index, grid_shape)
                with autocast():
                    logits = fwd_train(b.grid, phases)
                loss = phai_loss(logits.float(), b.phase, b.weight, hkl)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                loss_v = float(loss.detach())
                losses.append(loss_v)
                loss_log.append(loss_v)
                n_log += b.phase.shape[0] * world
                bar.update()
                if step % cfg.log_every == 0 or step == cfg.steps:
                    mean = float(np.mean(loss_log))
                    if world > 1:
                        t = torch.tensor([mean], dtype=torch.float64)
                        dist.all_reduce(t)
                        mean = float(t) / world
                    rate = n_log / max(time.time() - t_log, 1e-9)
                    rec = {"kind": "train", "step": step, "loss": mean, "lr": sched.lr, "n_cycles": n,
                           "samples_per_s": round(rate, 1)}
                    _log_json(metrics, rec)
                    _tb(writer, rec)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{sched.lr:.1e}")
                    t_log, n_log, loss_log = time.time(), 0, []
                if step % cfg.val_every == 0 or step == cfg.steps:
                    last_val = _validate_all(fwd_eval, val_batches, prior, device, cfg, autocast, is_main, world)
                    sched.on_validation(last_val["loss"])
                    improved = last_val["loss"] < best["loss"]
                    if improved:
                        best = {"loss": last_val["loss"], "step": step, "mean_r": last_val["mean_r"]}
                    rec = {"kind": "val", "step": step, "lr": sched.lr, **last_val}
                    _log_json(metrics, rec)
                    _tb(writer, rec)
                    if improved:
                        checkpoint(out / "best.pt")
                halt = stop.signum is not None
                if world > 1:
                    t = torch.tensor([1 if halt else 0])
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    halt = bool(t)
                if step % cfg.ckpt_every == 0 or step == cfg.steps or halt:
                    checkpoint(out / "last.pt")
                if halt:
                    stopped = stop.signum or signal.SIGTERM
                    break
    finally:
        bar.close()
        it.close()
        if metrics is not None:
            metrics.close()
        if writer is not None:
            writer.close()
    seconds = time.time() - t0
    summary = {"out": str(out), "preset": cfg.preset, "steps": step, "steps_this_run": step - start_step,
               "seconds": round(seconds, 1),
               "samples_per_s": round((step - start_step) * cfg.batch_size / max(seconds, 1e-9), 1),
               "final_train_loss": float(np.mean(losses[-50:])) if losses else None,
               "best": best, "last_val": last_val, "random_signs": baseline,
               "checkpoints": {"last": str(out / "last.pt"), "best": str(out / "best.pt")},
               "stopped_by_signal": int(stopped) if stopped else None, "world": world}
    return summary


def _validate_all(fwd_eval, val_batches, prior, device, cfg, autocast, is_main, world) -> dict:
    """Rank 0 validates; the loss is broadcast so every rank's lr schedule makes the same decision."""
    res = validate(fwd_eval, val_batches, prior, device, cfg.val_cycles, autocast) if is_main else {}
    if world > 1:
        box = [res]
        dist.broadcast_object_list(box, src=0)
        res = box[0]
    return res


def _open_metrics(path: Path, step: int):
    """metrics.jsonl, cut back to the checkpoint's step on resume (a killed run may have logged further)."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    return open(path, "a", encoding="utf-8")


def _log_json(fh, rec: dict) -> None:
    if fh is not None:
        fh.write(json.dumps(rec, sort_keys=True) + "\n")
        fh.flush()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))


def _tb(writer, rec: dict) -> None:
    if writer is None:
        return
    for k, v in rec.items():
        if isinstance(v, (int, float)) and k != "step":
            writer.add_scalar(f"{rec['kind']}/{k}", v, rec["step"])
