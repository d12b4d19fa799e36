"""The PhAI training loop: shard streams -> recycling -> origin-invariant loss -> AdamW, with exact resume.

Follows the Acta A 2026 retraining of PhAI (phai-facts.md "Training as published"; settings in
`training/config.py`): recycling n ~ U{1, 2, 3} per batch from `--init` start phases, gradients through the last
pass only (`training.model.recycle`); loss weight = prior (mean normalised |F| per reflection) x not absent.

One process or many under `torchrun` (DistributedDataParallel; NCCL on GPUs, gloo on CPUs). The global batch
is split evenly over the ranks, so the recipe does not change with the GPU count, nor does the data order: a run
resumes on any process count that divides its loader streams (training/data.py). Rank 0 locks the run directory,
validates, logs and writes checkpoints; every rank stores its loader position in them. A rank that fails is named,
with its error, in every node's log (training/distributed.py). A non-finite loss or
gradient stops the run before the step is applied, keeping the last checkpoint (one line, exit 2).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from builder.reflections import hkl_hash, phai_hkl
from manifests.schema import ManifestError, write_json_atomic
from manifests.seeds import seeded_rng
from training.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, check_resume, code_version, save_checkpoint,
                                 training_checkpoint)
from training.config import TrainConfig, json_plain, resolve_device
from training.data import Loader, compute_prior, open_sources, prepare_batch, resume_state, validation_batches
from training.distributed import dist_info, process_group
from training.loss import phai_loss
from training.model import PhAINet, config_dict, preset, recycle, seeded_model, to_grid
from training.rundir import RunLock, log_json, open_metrics, tb_log, tensorboard
from training.schedule import LRSchedule, n_cycles_at, start_phases_deg
from training.validation import random_sign_baseline, validate

__all__ = ["TrainConfig", "RunState", "TrainingDiverged", "fit", "train_step", "n_cycles_at"]

_TORCH = 10  # seed domain of torch's global generator (training/schedule.py: 7-9, the loader's: 1-4, 5 retired)


class TrainingDiverged(ManifestError):
    """A non-finite loss or gradient: the step was not applied and the last checkpoint is kept."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class RunState:
    """Everything one training run holds: fixed parts (network, optimiser, loader, data) and its position."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    net: PhAINet                    # the parameters (unwrapped)
    fwd_train: torch.nn.Module      # what training calls: DDP and/or torch.compile around `net`
    fwd_eval: torch.nn.Module       # what validation calls (no DDP)
    opt: torch.optim.Optimizer
    sched: LRSchedule
    loader: Loader
    prior: torch.Tensor
    config: dict                    # recorded in config.json and every checkpoint
    autocast: Callable
    val_batches: list = field(default_factory=list)
    baseline: dict = field(default_factory=dict)
    step: int = 0
    best: dict = field(default_factory=lambda: {"loss": math.inf, "step": 0})
    last_val: dict = field(default_factory=dict)
    last_ckpt_step: int | None = None
    metrics: Any = None             # metrics.jsonl (rank 0)
    writer: Any = None              # tensorboard (rank 0, optional)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def hkl(self) -> np.ndarray:
        return phai_hkl(self.net.cfg.max_index)


# ----------------------------------------------------------------------------- one step

def _start_grid(st: RunState, b: int) -> torch.Tensor | None:
    """The first pass's phases for this rank's part of the global batch (None: zeros)."""
    first = st.rank * b
    deg = start_phases_deg(st.cfg.init, st.cfg.seed, st.step, range(first, first + b), st.net.cfg.reflections)
    return None if deg is None else to_grid(torch.from_numpy(deg).to(st.device), st.hkl, st.net.cfg.max_index)


def train_step(st: RunState, raw: dict, stop_requested: bool = False) -> tuple[float, int, bool]:
    """One optimiser step: recycle n ~ U{1..max_cycles} times (gradients through the last pass), loss, AdamW.

    Returns:
        (loss, n_cycles, halt): halt is True when any rank was asked to stop (SIGTERM / SIGINT).

    Raises:
        TrainingDiverged: the loss or the gradient norm is not finite (on any rank); nothing is applied.
    """
    cfg, b = st.cfg, prepare_batch(raw, st.prior, st.device)
    n = n_cycles_at(cfg.seed, st.step, cfg.max_cycles)
    st.sched.at_step(st.step)
    with st.autocast():
        logits = recycle(st.fwd_train, b.grid, n, _start_grid(st, len(b.phase)))[-1]
    loss = phai_loss(logits.float(), b.phase, b.weight, st.hkl)
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    loss_v = float(loss.detach())
    finite = math.isfinite(loss_v)
    if cfg.grad_clip > 0:
        finite &= bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(st.net.parameters(), cfg.grad_clip)))
    flags = [0 if finite else 1, 1 if stop_requested else 0]
    if st.world > 1:  # every rank takes the same decision
        t = torch.tensor(flags)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flags = t.tolist()
    if flags[0]:
        raise TrainingDiverged(_diverged_message(st, loss_v))
    st.opt.step()
    st.step += 1
    return loss_v, n, bool(flags[1])


def _diverged_message(st: RunState, loss: float) -> str:
    kept = (f"{st.out / 'last.pt'} (step {st.last_ckpt_step}) is the last good checkpoint"
            if st.last_ckpt_step is not None else "no checkpoint was written before it")
    return (f"non-finite training loss or gradient (loss {loss}) at step {st.step + 1} with lr {st.sched.lr:g}: "
            f"stopped without applying it; {kept}; start a new run with a lower --lr")


# ----------------------------------------------------------------------------- checkpoints, logs, validation

def _checkpoint(st: RunState, path: Path) -> None:
    """Every rank's loader position is gathered (a collective: all ranks call this); rank 0 writes."""
    states = [None] * st.world
    if st.world > 1:
        dist.all_gather_object(states, st.loader.state_dict())
    else:
        states = [st.loader.state_dict()]
    if not st.is_main:
        return
    cuda = st.device.type == "cuda"
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "model": st.net.state_dict(), "optimizer": st.opt.state_dict(),
        "lr_scheduler": st.sched.state_dict(), "train_state": {"step": st.step, "best": st.best},
        "dataloader": {"world": st.world, "ranks": states}, "config": st.config,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
        "code_version": code_version(), "prior": st.prior, "hkl_sha256": hkl_hash(st.hkl), "val": st.last_val})
    if path.name == "last.pt":
        st.last_ckpt_step = st.step


class _TrainLog:
    """Mean loss and throughput since the last train record."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t, self.samples, self.losses = time.time(), 0, []

    def add(self, loss: float, samples: int) -> None:
        self.losses.append(loss)
        self.samples += samples

    def record(self, st: RunState, n_cycles: int) -> dict:
        mean = float(np.mean(self.losses))
        if st.world > 1:
            t = torch.tensor([mean], dtype=torch.float64)
            dist.all_reduce(t)
            mean = float(t) / st.world
        rate = self.samples / max(time.time() - self.t, 1e-9)
        self.reset()
        return {"kind": "train", "step": st.step, "loss": mean, "lr": st.sched.lr, "n_cycles": n_cycles,
                "samples_per_s": round(rate, 1)}


def _validation(st: RunState) -> None:
    """Rank 0 validates; the result is broadcast so every rank's lr schedule takes the same decision."""
    cfg = st.cfg
    res = (validate(st.fwd_eval, st.val_batches, st.prior, st.device, cfg.val_cycles, st.autocast, cfg.seed)
           if st.is_main else {})
    if st.world > 1:
        box = [res]
        dist.broadcast_object_list(box, src=0)
        res = box[0]
    st.last_val = res
    st.sched.on_validation(res["loss"])
    improved = res["loss"] < st.best["loss"]
    if improved:
        st.best = {"loss": res["loss"], "step": st.step, "mean_r": res["mean_r"]}
    rec = {"kind": "val", "step": st.step, "lr": st.sched.lr, **res}
    log_json(st.metrics, rec)
    tb_log(st.writer, rec)
    if improved:
        _checkpoint(st, st.out / "best.pt")


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


# ----------------------------------------------------------------------------- the loop

def _loop(st: RunState, progress: bool | None) -> dict:
    cfg, t0, start_step = st.cfg, time.time(), st.step
    recent, window, stopped = deque(maxlen=50), _TrainLog(), None
    bar = tqdm(total=cfg.steps, initial=st.step, unit="step", dynamic_ncols=True,
               disable=True if not st.is_main else (None if progress is None else not progress))
    it = iter(st.loader)
    try:
        with _Stop() as stop:
            while st.step < cfg.steps:
                raw = next(it)
                loss, n, halt = train_step(st, raw, stop.signum is not None)
                recent.append(loss)
                window.add(loss, len(raw["key"]) * st.world)
                bar.update()
                if st.step % cfg.log_every == 0 or st.step == cfg.steps:
                    rec = window.record(st, n)
                    log_json(st.metrics, rec)
                    tb_log(st.writer, rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{st.sched.lr:.1e}")
                if st.step % cfg.val_every == 0 or st.step == cfg.steps:
                    _validation(st)
                if st.step % cfg.ckpt_every == 0 or st.step == cfg.steps or halt:
                    _checkpoint(st, st.out / "last.pt")
                if halt:
                    stopped = stop.signum or signal.SIGTERM
                    break
    finally:
        bar.close()
        it.close()
    seconds = time.time() - t0
    return {"out": str(st.out), "preset": cfg.preset, "init": cfg.init, "steps": st.step,
            "steps_this_run": st.step - start_step, "seconds": round(seconds, 1),
            "samples_per_s": round((st.step - start_step) * cfg.batch_size / max(seconds, 1e-9), 1),
            "final_train_loss": float(np.mean(recent)) if recent else None,
            "best": st.best, "last_val": st.last_val, "random_signs": st.baseline,
            "checkpoints": {"last": str(st.out / "last.pt"), "best": str(st.out / "best.pt")},
            "stopped_by_signal": int(stopped) if stopped else None, "world": st.world}


# ----------------------------------------------------------------------------- setting up

def _resolve_sf(data_cfg, sources, device: torch.device):
    """sf='auto' is decided here, not in forked loader workers (they must not touch CUDA)."""
    if data_cfg.sf == "auto":
        on_device = device.type == "cuda" and all(s.structures_only for s in sources)
        return dataclasses.replace(data_cfg, sf="device" if on_device else "loader")
    if data_cfg.sf == "device" and not all(s.structures_only for s in sources) and any(
            s.structures_only for s in sources):
        raise ValueError("sf='device' needs every training manifest to be structures-only (a batch cannot mix "
                         "precomputed and device-computed reflections); use the default")
    return data_cfg


def _warn_if_val_is_train(sources_desc: list[dict], val_desc: dict, warn: Callable[[str], None]) -> None:
    same = [s["manifest"] for s in sources_desc if s["manifest_sha256"] == val_desc["manifest_sha256"]]
    if same:
        warn(f"warning: --val {val_desc['manifest']} is the same data as --train {same[0]} (identical manifest): "
             "validation then measures training data, not held-out structures")


def _existing_run(out: Path, resume: bool) -> dict | None:
    """The checkpoint to resume (under the run lock), or None for a new run in an unused directory."""
    if resume:
        return training_checkpoint(out / "last.pt")
    if (out / "last.pt").exists() or (out / "metrics.jsonl").exists():
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    return None


def _setup(cfg: TrainConfig, out: Path, ck: dict | None, sources, val_src, data_cfg, device, rank: int,
           world: int, prior: torch.Tensor, val_batches: list, log: Callable[[str], None]) -> RunState:
    cuda, model_cfg = device.type == "cuda", preset(cfg.preset)
    net = seeded_model(model_cfg, cfg.seed).to(device)
    prior = ck["prior"] if ck is not None else prior
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = LRSchedule(opt, cfg)
    loader_state = None
    if ck is None:  # torch's generator starts randomly; no training choice draws from it, but it is saved
        torch.manual_seed(int(seeded_rng(cfg.seed, _TORCH).integers(2**62)))
    else:
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["lr_scheduler"])
        loader_state = resume_state(ck["dataloader"], data_cfg, world, cfg.workers)  # all ranks' streams
        torch.set_rng_state(ck["rng"]["torch"])
    ddp = (torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
           if world > 1 else net)  # PhAI has no buffers (GroupNorm / LayerNorm): nothing to broadcast
    fwd_train, fwd_eval = (torch.compile(ddp), torch.compile(net)) if cfg.compile else (ddp, net)
    config = {"train": json_plain(dataclasses.asdict(cfg)), "model": config_dict(model_cfg),
              "data": json_plain(dataclasses.asdict(data_cfg)), "sources": [s.describe() for s in sources],
              "val": val_src.describe(), "world": world}
    st = RunState(cfg=cfg, out=out, device=device, rank=rank, world=world, net=net, fwd_train=fwd_train,
                  fwd_eval=fwd_eval, opt=opt, sched=sched, prior=prior, config=config,
                  loader=Loader(sources, data_cfg, rank, world, cfg.workers, loader_state, pin_memory=cuda),
                  autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext)
    if ck is not None:
        st.step, st.best = int(ck["train_state"]["step"]), dict(ck["train_state"]["best"])
        st.last_ckpt_step = st.step
    if st.is_main:
        st.val_batches = val_batches
        st.baseline = random_sign_baseline(st.val_batches, prior, cfg.seed)
        write_json_atomic(out / "config.json", config)
        st.metrics = open_metrics(out / "metrics.jsonl", st.step, log)
        if ck is None:
            log_json(st.metrics, {"kind": "baseline", "step": 0, "random_signs": st.baseline})
        st.writer = tensorboard(out)
    return st


def fit(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool | None = None,
        log: Callable[[str], None] = _stderr) -> dict:
    """Train (or continue) a run in `out`; returns the summary. All input is checked before anything is written.

    Raises:
        ValueError / ManifestError: bad input (unknown preset, missing or corrupt manifests, different
        reflection sets, an incompatible --resume, an existing run without --resume, a directory in use);
        TrainingDiverged: a non-finite loss; CheckpointError: a checkpoint could not be written.
    """
    out = Path(out)
    rank, world, local_rank = dist_info()
    model_cfg = preset(cfg.preset)
    data_cfg = cfg.data_config(world)
    if not cfg.val:
        raise ValueError("a validation manifest (--val) is required")
    sources = open_sources(cfg.train, cfg.weights or None, cfg.data.verify, model_cfg.max_index)
    val_src = open_sources([cfg.val], None, cfg.data.verify, model_cfg.max_index)[0]
    if rank == 0:
        _warn_if_val_is_train([s.describe() for s in sources], val_src.describe(), log)
    # Resolved locations: a resume from another working directory finds the same files.
    cfg = dataclasses.replace(cfg, train=tuple(s.manifest for s in sources), val=val_src.manifest)
    if not resume:  # ValueError on a bad worker or process count, before any write (a resume: check_resume)
        Loader(sources, data_cfg, rank, world, workers=cfg.workers)
    device = resolve_device(cfg.device, local_rank)
    data_cfg = _resolve_sf(data_cfg, sources, device)
    if resume and not (out / "last.pt").is_file():
        raise CheckpointError(f"--resume: no checkpoint at {out / 'last.pt'}")
    # Read what the run needs before anything is written (a corrupt validation shard is named here).
    prior = None if resume else torch.from_numpy(compute_prior(sources, cfg.prior_samples, cfg.data.verify,
                                                               model_cfg.max_index))
    val_batches = validation_batches(val_src, data_cfg, cfg.val_samples) if rank == 0 else []
    if device.type == "cpu" and cfg.workers > 0 and "OMP_NUM_THREADS" not in os.environ:
        # Loader workers need cores too; oversubscribed OpenMP barriers make CPU steps 10-50x slower.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - cfg.workers))
    with RunLock(out, log) if rank == 0 else contextlib.nullcontext():
        ck = _existing_run(out, resume)
        if ck is not None:
            check_resume(ck, cfg, [s.describe() for s in sources], val_src.describe(), world)
        st = None
        with process_group(world, device):
            try:
                st = _setup(cfg, out, ck, sources, val_src, data_cfg, device, rank, world, prior, val_batches, log)
                return _loop(st, progress)
            finally:
                if st is not None and st.metrics is not None:
                    st.metrics.close()
                if st is not None and st.writer is not None:
                    st.writer.close()
