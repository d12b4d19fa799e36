"""Shard streaming for PhAI training: manifests -> seeded, split, augmented batches (DESIGN.md "Data flow").

The data order is a function of the global batch B and the seed, not of the number of processes or workers
(loader state version 2). G = `streams` global streams (default: B, one per position in the global batch) each
give a near-equal piece of every global batch: global batch j is the concatenation of piece j of stream 0, of
stream 1, ..., of stream G - 1 (stream k gives floor((k+1)B/G) - floor(kB/G) samples), and rank r of W takes the
contiguous streams r G/W .. (r+1) G/W - 1. So W must divide G and B; the DataLoader's workers take contiguous
blocks of the rank's streams (W' must divide G/W), and the main process joins their parts in stream order. A run
that checkpoints on W ranks continues the exact sample sequence on any W that divides G (`resume_state`).

Version 1 (checkpoints written before) is the same construction with K = W pieces per batch and T = `streams`
streams taking turns per piece (`Layout`): it resumes exactly on any number of processes that divides its W.

One stream is a pipeline of named stages:

  shard list from the manifest (never a glob)
  -> `stream_shard`      epoch e of a source is a permutation of its shards seeded by (seed, source, e);
                         stream g of the G streams takes positions g, g + G, g + 2G, ... of the concatenated
                         epochs: `split_by_node` + `split_by_worker` done by arithmetic
  -> `read_shard`        bytes read once, checked against the manifest (none | size | sha256), then parsed:
                         (training/shards.py) tar through webdataset or a plain-ustar fast path, HDF5 via h5py
  -> `shuffle_window`    a window of `window` shards permuted, seeded by (seed, source, g, window index)
  -> `mix_sources`       the source of each sample drawn by weight, seeded by (seed, g, piece index)
  -> `to_sample`         masks and reflections per sample, seeded per (seed, source, epoch, key)
                         (training/samples.py, with `collate` and `prepare_batch`)

A stream's position is (pieces made, window and offset per source): the checkpoint stores every stream's and a
resumed loader continues exactly, without replaying data. Each stream holds one window in memory (G x window shards
per run, split over the ranks; fewer --streams hold less but allow fewer process counts), and reads the next one
ahead at a stream-specific point, so the streams, which advance in step, do not all read in the same step.

Why not `wds.split_by_node` / `wds.split_by_worker` / `wds.shuffle` themselves: they read the rank from the
environment, tie the order to the worker count, and a reservoir shuffle cannot resume without replay
(ecosystem-notes §3 pitfalls 1-6). The arithmetic above is the same split, made explicit and resumable.
"""
from __future__ import annotations

import atexit
import functools
import json
import math
import signal
import weakref
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from manifests.seeds import seeded_rng
from training.samples import (Batch, collate, compute_prior, concat, observed_mask, prepare_batch,
                              reflections_from_structure, to_sample, validation_batches)
from training.shards import (SPACE_GROUP, VERIFY_LEVELS, ShardError, Source, check_compatible, open_source,
                             open_sources, read_shard)

__all__ = [
    "DataConfig", "Source", "ShardError", "VERIFY_LEVELS", "SPACE_GROUP", "open_source", "open_sources",
    "read_shard", "stream_shard", "Layout", "observed_mask", "to_sample", "collate", "concat", "ShardStreams",
    "Loader", "LOADER_STATE_VERSION", "resume_state", "compute_prior", "validation_batches", "prepare_batch",
    "Batch", "consumed_shards", "check_compatible", "reflections_from_structure",
]

SF_MODES = ("auto", "loader", "device")
LOADER_STATE_VERSION = 2
# Seed domains: one stream of random numbers per purpose (DESIGN.md "Determinism and seeds"); 4 is the
# augmentation's (training/samples.py), 5 was the random-sign baseline's; the trainer's: training/schedule.py.
_ORDER, _WINDOW, _MIX = 1, 2, 3


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How shards become batches. Defaults follow the Acta A 2026 retraining (d_min 1.0 A, complete data)."""

    batch_size: int = 64                  # samples per batch on this rank (the global batch / the ranks)
    seed: int = 0                         # shard order, shuffles, source mixing and augmentation
    d_min: tuple[float, float] = (1.0, 1.0)  # A; lo == hi: fixed (Acta A); (0, 2): PhAI (Larsen et al. 2024)
    drop: float = 0.0                     # remove a fraction ~U(0, drop) of the observed reflections (PhAI: 0.15)
    verify: str = "sha256"                # shard check before use: none | size | sha256
    streams: int = 0                      # global streams (0: the global batch); the ranks must divide it
    window: int = 1                       # shards per shuffle window
    sf: str = "auto"                      # structures-only shards: F in the loader (numpy) or on the device (torch)
    max_index: int = 10                   # PhAI reflection set

    def __post_init__(self) -> None:
        lo, hi = self.d_min
        if not (self.batch_size >= 1 and self.streams >= 0 and self.window >= 1):
            raise ValueError("batch_size and window must be positive, streams non-negative")
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
    """(shard, epoch) of the q-th shard of stream g among the run's n_global streams.

    The shard positions of all epochs are concatenated, epoch e being a permutation seeded by (seed, source, e);
    stream g takes positions g, g + n_global, ... So in each epoch the streams (and so the ranks) get disjoint
    shards when the shard count is a multiple of n_global, and nearly disjoint ones otherwise.
    """
    epoch, r = divmod(g + q * n_global, src.n_shards)
    return int(_epoch_order(seed, src.sid, epoch, src.n_shards)[r]), epoch


@dataclass(frozen=True)
class Layout:
    """How global batches are cut from the streams: batch j is pieces 0..K-1 concatenated, piece k (of near-equal
    size) from stream k T + j mod T. Version 2: K = the global streams, T = 1. Version 1: K = the ranks of the run
    that wrote it, T = its streams per rank. Rank r of W takes pieces r K/W .. (r+1) K/W - 1."""

    pieces: int     # K
    cycle: int      # T
    batch: int      # B, the global batch
    version: int = LOADER_STATE_VERSION

    @classmethod
    def of(cls, cfg: DataConfig, world: int, state: dict | None = None) -> "Layout":
        """A new run's layout (state None), or a loader state's (a state without a version is version 1)."""
        batch = cfg.batch_size * world
        if state is None:
            streams = cfg.streams or batch
            if streams > batch:
                raise ValueError(f"--streams {streams} exceeds the global batch {batch}: every stream gives at "
                                 "least one sample per batch")
            return cls(streams, 1, batch)
        if "version" not in state:
            return cls(world, cfg.streams, batch, 1)
        if state["version"] not in (1, LOADER_STATE_VERSION):
            raise ValueError(f"loader state version {state['version']} is newer than this code's "
                             f"{LOADER_STATE_VERSION}; resume with the phaseforge that wrote it")
        return cls(int(state["pieces"]), int(state["cycle"]), batch, int(state["version"]))

    @property
    def n_streams(self) -> int:
        return self.pieces * self.cycle

    def piece_size(self, k: int) -> int:
        return (k + 1) * self.batch // self.pieces - k * self.batch // self.pieces

    def rank_streams(self, rank: int, world: int) -> list[int]:
        """split_by_node: the stream ids of `rank`, piece-major."""
        per = self.pieces // world
        return [k * self.cycle + t for k in range(rank * per, (rank + 1) * per) for t in range(self.cycle)]

    def check(self, world: int, workers: int = 0) -> None:
        """ValueError unless `world` ranks and `workers` loader workers per rank can run this layout."""
        if self.pieces % world:
            why = (f"a version-1 loader state (written before loader-state version {LOADER_STATE_VERSION}) "
                   f"splits each batch by the {self.pieces} ranks that wrote it" if self.version == 1 else
                   f"the loader cuts each global batch of {self.batch} into {self.pieces} stream pieces (--streams)")
            raise ValueError(f"{world} process(es): {why}; use a number of processes that divides {self.pieces}")
        per_rank = self.pieces // world * self.cycle
        if workers < 0 or (workers > 0 and per_rank % workers):
            ok = [w for w in range(1, per_rank + 1) if per_rank % w == 0]
            raise ValueError(f"--workers {workers}: the worker count must divide the {per_rank} loader streams of "
                             f"each of the {world} process(es) (0 or one of {', '.join(map(str, ok))})")

    def chunks(self, rank: int, world: int, workers: int) -> tuple[list[list[tuple[int, int]]], int]:
        """split_by_worker: the rank's (stream, piece size) groups in the order they are consumed over one cycle
        of T steps, and how many groups make one step. Workers take the groups round-robin; each group is the
        contiguous block of one worker's streams in one step, so the batch does not depend on the worker count."""
        ks = range(rank * self.pieces // world, (rank + 1) * self.pieces // world)
        per_step = math.gcd(max(workers, 1), len(ks))
        m = len(ks) // per_step
        return [[(k * self.cycle + t, self.piece_size(k)) for k in ks[i * m:(i + 1) * m]]
                for t in range(self.cycle) for i in range(per_step)], per_step

    def state(self) -> dict:
        return {"version": self.version, "pieces": self.pieces, "cycle": self.cycle}


# ----------------------------------------------------------------------------- streams

class _Cursor:
    """Position of one stream in one source: shuffle window k, offset j (in its permuted order).

    Every stream advances one piece a step, so all would finish their windows in the same step and read the next
    ones at once (a stall of streams x read time). Instead stream g reads its next window ahead, once it has used
    a fraction 3/4 + u_g/4 of the current one (u_g = frac((g + 1) x golden ratio), spread for any block of
    streams): the reads spread over the last quarter of each window, for 1/8 of a window more memory on average.
    """

    def __init__(self, src: Source, cfg: DataConfig, g: int, n_global: int, k: int = 0, j: int = 0) -> None:
        self.src, self.cfg, self.g, self.n_global = src, cfg, g, n_global
        self.k, self.j = k, j
        self.items: list[tuple[dict, int]] | None = None
        self.ahead: list[tuple[dict, int]] | None = None
        self.lead = 0.75 + 0.25 * ((g + 1) * 0.6180339887498949 % 1.0)

    def _read(self, k: int) -> list[tuple[dict, int]]:
        """shuffle_window: read window k's shards and permute their samples (seeded per stream and window)."""
        cfg, items = self.cfg, []
        for q in range(k * cfg.window, (k + 1) * cfg.window):
            shard, epoch = stream_shard(self.src, cfg.seed, self.g, self.n_global, q)
            items += [(r, epoch) for r in read_shard(self.src, shard, cfg.verify, need_atoms=False)]
        perm = seeded_rng(cfg.seed, _WINDOW, self.src.sid, self.g, k).permutation(len(items))
        return [items[p] for p in perm]

    def next(self) -> tuple[dict, int]:
        if self.items is None:
            self.items = self._read(self.k)
        while self.j >= len(self.items):
            self.k, self.j = self.k + 1, 0
            self.items, self.ahead = (self.ahead if self.ahead is not None else self._read(self.k)), None
        item, self.items[self.j] = self.items[self.j], None  # used: let it go (the window's memory shrinks)
        self.j += 1
        if self.ahead is None and self.j >= self.lead * len(self.items):
            self.ahead = self._read(self.k + 1)
        return item

    def position(self) -> list[int]:
        return [self.k, self.j]


def stream_pieces(sources: Sequence[Source], cfg: DataConfig, g: int, n_global: int, size: int,
                  state: dict | None = None) -> Iterator[tuple[list[dict], dict]]:
    """Pieces of `size` samples of stream g, forever, each with the stream's position after it."""
    state = state or {}
    cursors = [_Cursor(s, cfg, g, n_global, *pos) for s, pos in
               zip(sources, state.get("cursors", [[0, 0]] * len(sources)))]
    p = np.array([s.weight for s in sources], dtype=np.float64)
    p /= p.sum()
    j = int(state.get("batches", 0))
    while True:
        # mix_sources: which source each sample of piece j comes from
        choice = (seeded_rng(cfg.seed, _MIX, g, j).choice(len(sources), size, p=p) if len(sources) > 1
                  else np.zeros(size, dtype=np.int64))
        samples = []
        for c in choice:
            rec, epoch = cursors[c].next()
            samples.append(to_sample(rec, int(c), sources[c], epoch, cfg))
        j += 1
        yield samples, {"batches": j, "cursors": [cur.position() for cur in cursors]}


class ShardStreams(IterableDataset):
    """An endless stream of batch parts for one rank (one part per worker group, see `Layout.chunks`)."""

    def __init__(self, sources: Sequence[Source], cfg: DataConfig, rank: int = 0, world: int = 1,
                 state: dict | None = None, layout: Layout | None = None) -> None:
        super().__init__()
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.sources, self.cfg, self.rank, self.world = list(sources), cfg, rank, world
        self.state = state or {"batches": 0, "streams": {}}
        self.layout = layout or Layout.of(cfg, world, state)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        lay = self.layout
        groups, per_step = lay.chunks(self.rank, self.world, n_workers)
        start = int(self.state["batches"]) % lay.cycle * per_step  # the group that comes next
        mine = (groups[start:] + groups[:start])[worker::n_workers]
        gens = {g: stream_pieces(self.sources, self.cfg, g, lay.n_streams, size, self.state["streams"].get(str(g)))
                for group in mine for g, size in group}
        while True:
            for group in mine:
                samples, states = [], {}
                for g, _ in group:
                    piece, states[str(g)] = next(gens[g])
                    samples += piece
                part = collate(samples)
                if info is not None:  # numpy: pickled through the pipe (one fd per tensor costs more)
                    part = {k: v.numpy() for k, v in part.items()}
                part["states"] = states
                yield part


def _worker_init(_: int) -> None:
    # The main process handles Ctrl-C / SIGTERM (it checkpoints between steps); a worker killed first would make
    # the DataLoader raise in the middle of a step. Workers therefore ignore both and are stopped by the
    # DataLoader's own shutdown, which `Loader` runs when its iterator closes and at interpreter exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_PREFETCH = 4  # parts queued per worker


def _as_is(part: dict) -> dict:  # the DataLoader's default would turn the worker's numpy into shared-memory tensors
    return part
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

    `state` is a state of this rank (`state_dict()`) or of all ranks (`resume_state`); only this rank's streams
    are taken. `state_dict()` is the position after the last batch handed out (not after what workers
    prefetched), so a checkpoint taken between steps resumes exactly.
    """

    def __init__(self, sources: Sequence[Source], cfg: DataConfig, rank: int = 0, world: int = 1,
                 workers: int = 0, state: dict | None = None, pin_memory: bool = False) -> None:
        self.layout = Layout.of(cfg, world, state)
        self.layout.check(world, workers)
        self.sources, self.cfg, self.rank, self.world, self.workers = list(sources), cfg, rank, world, workers
        st = state or {"batches": 0, "streams": {}}
        mine = {str(g) for g in self.layout.rank_streams(rank, world)}
        self._state = {**self.layout.state(), "batches": int(st["batches"]),
                       "streams": {str(k): v for k, v in st["streams"].items() if str(k) in mine}}
        self.pin_memory = pin_memory

    def __iter__(self) -> Iterator[dict]:
        ds = ShardStreams(self.sources, self.cfg, self.rank, self.world, json.loads(json.dumps(self._state)),
                          self.layout)
        dl = DataLoader(ds, batch_size=None, num_workers=self.workers, collate_fn=_as_is,
                        worker_init_fn=_worker_init if self.workers else None,
                        prefetch_factor=_PREFETCH if self.workers else None, persistent_workers=False)
        per_step = self.layout.chunks(self.rank, self.world, self.workers)[1]
        it = iter(dl)
        _LIVE.add(it)
        parts: list[dict] = []
        try:
            for part in it:
                self._state["streams"].update(part.pop("states"))
                parts.append(part)
                if len(parts) == per_step:
                    self._state["batches"] += 1
                    batch, parts = concat(parts), []
                    yield {k: v.pin_memory() for k, v in batch.items()} if self.pin_memory else batch
        finally:
            _shutdown(it)

    def state_dict(self) -> dict:
        return json.loads(json.dumps(self._state))


def resume_state(dataloader: dict, cfg: DataConfig, world: int, workers: int = 0) -> dict:
    """The loader state of all ranks from a checkpoint's {"world", "ranks"}, checked for `world` processes with
    `workers` loader workers each (`cfg`: one rank's DataConfig of the resumed run).

    Raises:
        ValueError: the layout cannot run on `world` processes or `workers` workers.
    """
    ranks = dataloader["ranks"]
    state = {"batches": int(ranks[0]["batches"]), "streams": {}}
    for st in ranks:
        state["streams"].update(st["streams"])
    if "version" in ranks[0]:
        state.update(Layout.of(cfg, 1, ranks[0]).state())
    else:  # version 1: as many pieces as the ranks that wrote it, its `streams` per rank taking turns
        state.update(version=1, pieces=int(dataloader["world"]), cycle=cfg.streams)
    Layout.of(cfg, world, state).check(world, workers)
    return state


def consumed_shards(sources: Sequence[Source], cfg: DataConfig, rank: int, world: int,
                    state: dict) -> set[tuple[int, int, int]]:
    """(source, epoch, shard) of every window a rank has taken samples from, from its loader state."""
    lay = Layout.of(cfg, world, state)
    mine = set(lay.rank_streams(rank, world))
    out = set()
    for g_txt, st in state["streams"].items():
        g = int(g_txt)
        if g not in mine:
            raise ValueError(f"stream {g} does not belong to rank {rank}")
        for si, (k, j) in enumerate(st["cursors"]):
            last = k if j > 0 else k - 1
            for q in range((last + 1) * cfg.window):
                shard, epoch = stream_shard(sources[si], cfg.seed, g, lay.n_streams, q)
                out.add((si, epoch, shard))
    return out
