"""Shard streaming for PhAI training: manifests -> seeded, split, augmented batches (DESIGN.md "Data flow").

Each rank runs `streams` virtual streams (default 24); the DataLoader's workers take them round-robin, so the
batch sequence of a rank does not depend on the worker count as long as the worker count divides `streams`.
One virtual stream is a pipeline of named stages:

  shard list from the manifest (never a glob)
  -> `stream_shard`      epoch e of a source is a permutation of its shards seeded by (seed, source, e);
                         global stream g of G = world x streams takes positions g, g + G, g + 2G, ... of the
                         concatenated epochs: `split_by_node` + `split_by_worker` done by arithmetic
  -> `read_shard`        bytes read once, checked against the manifest (none | size | sha256), then parsed:
                         (training/shards.py) tar through webdataset or a plain-ustar fast path, HDF5 via h5py
  -> `shuffle_window`    a window of `window` shards permuted, seeded by (seed, source, g, window index)
  -> `mix_sources`       the source of each sample drawn by weight, seeded by (seed, g, batch index)
  -> `to_sample`         |F| and phases (computed from the structure for structures-only shards), the
                         observed mask: d >= d_min, minus a random fraction, minus systematic absences;
                         seeded per (seed, source, epoch, key)
  -> `collate`           a batch of raw |F|, phases, observed masks (and padded structures when F is made on
                         the device by `training.sf_torch`)

`prepare_batch` then max-normalises |F| over the observed set, scatters it onto the PhAI grid and builds the
loss weight prior x not-absent. A stream's position is (batches made, window and offset per source): the
checkpoint stores it and a resumed loader continues exactly, without replaying data.

Why not `wds.split_by_node` / `wds.split_by_worker` / `wds.shuffle` themselves: they read the rank from the
environment, tie the order to the worker count, and a reservoir shuffle cannot resume without replay
(ecosystem-notes §3 pitfalls 1-6). The arithmetic above is the same split, made explicit and resumable.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import signal
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from builder.reflections import d_spacing, phai_hkl, systematic_absences
from builder.sf import SFPlan, amplitudes_phases, sf_plan, structure_factors
from builder.symmetry import space_group_ops
from manifests.schema import ManifestError
from manifests.seeds import seeded_rng
from training.shards import (SPACE_GROUP, VERIFY_LEVELS, ShardError, Source, check_compatible, open_source,
                             open_sources, read_shard)

__all__ = [
    "DataConfig", "Source", "ShardError", "VERIFY_LEVELS", "SPACE_GROUP", "open_source", "open_sources",
    "read_shard", "stream_shard", "node_streams", "worker_streams", "observed_mask", "to_sample", "collate",
    "ShardStreams", "Loader", "compute_prior", "validation_batches", "prepare_batch", "Batch",
    "consumed_shards", "check_compatible", "reflections_from_structure",
]

SF_MODES = ("auto", "loader", "device")
# Seed domains: one stream of random numbers per purpose (DESIGN.md "Determinism and seeds").
_ORDER, _WINDOW, _MIX, _AUG = 1, 2, 3, 4  # (5 was the random-sign baseline's; the trainer's: training/schedule.py)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How shards become batches. Defaults follow the Acta A 2026 retraining (d_min 1.0 A, complete data)."""

    batch_size: int = 64                  # samples per batch on this rank
    seed: int = 0                         # shard order, shuffles, source mixing and augmentation
    d_min: tuple[float, float] = (1.0, 1.0)  # A; lo == hi: fixed (Acta A); (0, 2): PhAI (Larsen et al. 2024)
    drop: float = 0.0                     # remove a fraction ~U(0, drop) of the observed reflections (PhAI: 0.15)
    verify: str = "sha256"                # shard check before use: none | size | sha256
    streams: int = 24                     # virtual streams per rank; the worker count must divide it
    window: int = 1                       # shards per shuffle window
    sf: str = "auto"                      # structures-only shards: F in the loader (numpy) or on the device (torch)
    max_index: int = 10                   # PhAI reflection set

    def __post_init__(self) -> None:
        lo, hi = self.d_min
        if not (self.batch_size >= 1 and self.streams >= 1 and self.window >= 1):
            raise ValueError("batch_size, streams and window must be positive")
        if not 0.0 <= lo <= hi:
            raise ValueError(f"d_min range ({lo}, {hi}) must satisfy 0 <= lo <= hi")
        if not 0.0 <= self.drop < 1.0:
            raise ValueError(f"drop = {self.drop} must lie in [0, 1)")
        if self.verify not in VERIFY_LEVELS:
            raise ValueError(f"verify = {self.verify!r}: choose one of {', '.join(VERIFY_LEVELS)}")
        if self.sf not in SF_MODES:
            raise ValueError(f"sf = {self.sf!r}: choose one of {', '.join(SF_MODES)}")


# ----------------------------------------------------------------------------- order: split and shuffle

@functools.lru_cache(maxsize=256)
def _epoch_order(seed: int, sid: int, epoch: int, n: int) -> np.ndarray:
    return seeded_rng(seed, _ORDER, sid, epoch).permutation(n)


def stream_shard(src: Source, seed: int, g: int, n_global: int, q: int) -> tuple[int, int]:
    """(shard, epoch) of the q-th shard of global stream g among n_global = world x streams.

    The shard positions of all epochs are concatenated, epoch e being a permutation seeded by (seed, source, e);
    stream g takes positions g, g + n_global, ... So in each epoch the ranks (and streams) get disjoint shards
    when the shard count is a multiple of n_global, and nearly disjoint ones otherwise.
    """
    epoch, r = divmod(g + q * n_global, src.n_shards)
    return int(_epoch_order(seed, src.sid, epoch, src.n_shards)[r]), epoch


def node_streams(rank: int, world: int, streams: int) -> list[int]:
    """split_by_node: the global stream ids of `rank`."""
    return [rank * streams + v for v in range(streams)]


def worker_streams(mine: list[int], start: int, worker: int, n_workers: int) -> list[int]:
    """split_by_worker: round-robin order rotated to `start`, then every n_workers-th stream for `worker`.

    The DataLoader interleaves workers one batch each, so the rank's batch sequence is the round-robin over
    all its streams whatever the worker count (given the worker count divides the stream count).
    """
    order = mine[start:] + mine[:start]
    return order[worker::n_workers]


# ----------------------------------------------------------------------------- per-sample stage

@functools.lru_cache(maxsize=4)
def _reflection_context(max_index: int) -> tuple[np.ndarray, np.ndarray]:
    hkl = phai_hkl(max_index)
    absent = systematic_absences(SPACE_GROUP, hkl)
    absent.setflags(write=False)
    return hkl, absent


@functools.lru_cache(maxsize=4)
def _plan(max_index: int) -> SFPlan:
    return sf_plan(space_group_ops(SPACE_GROUP), phai_hkl(max_index))  # one per process (it has scratch buffers)


def reflections_from_structure(rec: dict, max_index: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """|F| and phases (float32) of a structures-only record, by the builder's own numpy structure factors."""
    n = len(_reflection_context(max_index)[0])
    if len(rec["z"]) == 0:  # an empty structure scatters nothing (builder.sf cannot take N = 0)
        return np.zeros(n, np.float32), np.zeros(n, np.float32)
    plan = _plan(max_index)
    f = structure_factors(plan, np.asarray(rec["cell"], np.float64), rec["frac"], rec["z"], rec["occ"], rec["uiso"])
    return amplitudes_phases(f, plan.real)


def observed_mask(cell: np.ndarray, rng: np.random.Generator, cfg: DataConfig) -> tuple[np.ndarray, float]:
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


def _sf_in_loader(cfg: DataConfig) -> bool:
    if cfg.sf == "auto":  # the trainer resolves "auto" in the main process; this is for direct users
        return not torch.cuda.is_available()
    return cfg.sf == "loader"


def to_sample(rec: dict, src_index: int, src: Source, epoch: int, cfg: DataConfig) -> dict:
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
        raise ValueError("a batch mixes samples with and without reflections; use sf='loader' to mix such sources")
    n = max(len(s["z"]) for s in samples)
    pad = np.zeros((len(samples), n, 3), np.float32), np.zeros((len(samples), n), np.int64)
    occ, uiso = np.zeros((len(samples), n), np.float32), np.zeros((len(samples), n), np.float32)
    for i, s in enumerate(samples):
        m = len(s["z"])
        pad[0][i, :m], pad[1][i, :m], occ[i, :m], uiso[i, :m] = s["frac"], s["z"], s["occ"], s["uiso"]
    b.update(cell=torch.from_numpy(np.stack([s["cell"] for s in samples])), frac=torch.from_numpy(pad[0]),
             z=torch.from_numpy(pad[1]), occ=torch.from_numpy(occ), uiso=torch.from_numpy(uiso))
    return b


# ----------------------------------------------------------------------------- streams

class _Cursor:
    """Position of one global stream in one source: shuffle window k, offset j (in its permuted order)."""

    def __init__(self, src: Source, cfg: DataConfig, g: int, n_global: int, k: int = 0, j: int = 0) -> None:
        self.src, self.cfg, self.g, self.n_global = src, cfg, g, n_global
        self.k, self.j = k, j
        self.items: list[tuple[dict, int]] | None = None

    def _load(self) -> None:
        """shuffle_window: read the window's shards and permute their samples (seeded per stream and window)."""
        cfg, items = self.cfg, []
        for q in range(self.k * cfg.window, (self.k + 1) * cfg.window):
            shard, epoch = stream_shard(self.src, cfg.seed, self.g, self.n_global, q)
            items += [(r, epoch) for r in read_shard(self.src, shard, cfg.verify, need_atoms=False)]
        perm = seeded_rng(cfg.seed, _WINDOW, self.src.sid, self.g, self.k).permutation(len(items))
        self.items = [items[p] for p in perm]

    def next(self) -> tuple[dict, int]:
        if self.items is None:
            self._load()
        while self.j >= len(self.items):
            self.k, self.j = self.k + 1, 0
            self._load()
        item = self.items[self.j]
        self.j += 1
        return item

    def position(self) -> list[int]:
        return [self.k, self.j]


def stream_batches(sources: Sequence[Source], cfg: DataConfig, g: int, n_global: int,
                   state: dict | None = None) -> Iterator[dict]:
    """Batches of global stream g, forever; each carries the stream's position after it (`state`)."""
    state = state or {}
    cursors = [_Cursor(s, cfg, g, n_global, *pos) for s, pos in
               zip(sources, state.get("cursors", [[0, 0]] * len(sources)))]
    p = np.array([s.weight for s in sources], dtype=np.float64)
    p /= p.sum()
    j = int(state.get("batches", 0))
    while True:
        # mix_sources: which source each sample of batch j comes from
        choice = (seeded_rng(cfg.seed, _MIX, g, j).choice(len(sources), cfg.batch_size, p=p) if len(sources) > 1
                  else np.zeros(cfg.batch_size, dtype=np.int64))
        samples = []
        for c in choice:
            rec, epoch = cursors[c].next()
            samples.append(to_sample(rec, int(c), sources[c], epoch, cfg))
        j += 1
        batch = collate(samples)
        batch["stream"] = g
        batch["state"] = {"batches": j, "cursors": [cur.position() for cur in cursors]}
        yield batch


class ShardStreams(IterableDataset):
    """An endless stream of batches for one rank; shards split by node and by worker (see module docstring)."""

    def __init__(self, sources: Sequence[Source], cfg: DataConfig, rank: int = 0, world: int = 1,
                 state: dict | None = None) -> None:
        super().__init__()
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.sources, self.cfg, self.rank, self.world = list(sources), cfg, rank, world
        self.state = state or {"batches": 0, "streams": {}}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = node_streams(self.rank, self.world, self.cfg.streams)
        start = int(self.state["batches"]) % self.cfg.streams
        gens = [stream_batches(self.sources, self.cfg, g, self.world * self.cfg.streams,
                               self.state["streams"].get(str(g)))
                for g in worker_streams(mine, start, worker, n_workers)]
        while True:
            for gen in gens:
                yield next(gen)


def _worker_init(_: int) -> None:
    # The main process handles Ctrl-C / SIGTERM (it checkpoints between steps); a worker killed first would make
    # the DataLoader raise in the middle of a step. Workers therefore ignore both and are stopped by the
    # DataLoader's own shutdown, which `Loader` runs when its iterator closes and at interpreter exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_LIVE: "weakref.WeakSet" = weakref.WeakSet()


def _shutdown(it) -> None:
    stop = getattr(it, "_shutdown_workers", None)
    if stop is not None:
        stop()


@atexit.register
def _shutdown_all() -> None:  # runs before multiprocessing's exit handler (atexit is LIFO)
    for it in list(_LIVE):
        _shutdown(it)


class Loader:
    """The rank's batch iterator (a DataLoader over `ShardStreams`) that remembers the position consumed.

    `state_dict()` is the position after the last batch handed out (not after what workers prefetched), so a
    checkpoint taken between steps resumes exactly.
    """

    def __init__(self, sources: Sequence[Source], cfg: DataConfig, rank: int = 0, world: int = 1,
                 workers: int = 0, state: dict | None = None, pin_memory: bool = False) -> None:
        if workers < 0 or (workers > 0 and cfg.streams % workers):
            ok = [w for w in range(1, cfg.streams + 1) if cfg.streams % w == 0]
            raise ValueError(f"--workers {workers}: the worker count must divide the {cfg.streams} loader streams "
                             f"(0 or one of {', '.join(map(str, ok))})")
        self.sources, self.cfg, self.rank, self.world, self.workers = list(sources), cfg, rank, world, workers
        st = state or {"batches": 0, "streams": {}}
        self._state = {"batches": int(st["batches"]), "streams": {str(k): v for k, v in st["streams"].items()}}
        self.pin_memory = pin_memory

    def __iter__(self) -> Iterator[dict]:
        ds = ShardStreams(self.sources, self.cfg, self.rank, self.world,
                          json.loads(json.dumps(self._state)))
        dl = DataLoader(ds, batch_size=None, num_workers=self.workers, pin_memory=self.pin_memory,
                        worker_init_fn=_worker_init if self.workers else None,
                        prefetch_factor=4 if self.workers else None, persistent_workers=False)
        it = iter(dl)
        _LIVE.add(it)
        try:
            for batch in it:
                self._state["batches"] += 1
                self._state["streams"][str(int(batch["stream"]))] = batch["state"]
                yield batch
        finally:
            _shutdown(it)

    def state_dict(self) -> dict:
        return json.loads(json.dumps(self._state))


def consumed_shards(sources: Sequence[Source], cfg: DataConfig, rank: int, world: int,
                    state: dict) -> set[tuple[int, int, int]]:
    """(source, epoch, shard) of every window a rank has started reading, from its loader state."""
    out = set()
    for g_txt, st in state["streams"].items():
        g = int(g_txt)
        if not rank * cfg.streams <= g < (rank + 1) * cfg.streams:
            raise ValueError(f"stream {g} does not belong to rank {rank}")
        for si, (k, j) in enumerate(st["cursors"]):
            last = k if j > 0 else k - 1
            for q in range((last + 1) * cfg.window):
                shard, epoch = stream_shard(sources[si], cfg.seed, g, world * cfg.streams, q)
                out.add((si, epoch, shard))
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


def validation_batches(src: Source, cfg: DataConfig, n_samples: int) -> list[dict]:
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
