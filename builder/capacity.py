"""What a build needs, checked before anything is written: a manifest of bounded length, shards that fit in
memory while they are written, and a dataset that fits on the disk.

A shard is generated whole and then written (HDF5 stacks it once more), so `--shard-size` is bounded by the
memory each worker may use. The per-sample costs are measured, not guessed: the first samples of the range are
generated and encoded with the build's container and compression (a few milliseconds).
"""
from __future__ import annotations

import errno
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.schema import Manifest
from manifests.shardio import shard_bytes

__all__ = ["MAX_SHARDS", "MEMORY_USE", "SampleCost", "sample_cost", "available_memory", "free_disk",
           "check_writable", "check_capacity", "human_bytes"]

MAX_SHARDS = 1_000_000   # a manifest of 10^6 entries is ~150 MB of JSON, read by every training process
MEMORY_USE = 0.8         # the fraction of available memory the workers' shards may take together
_PY_OVERHEAD = 2048      # bytes of Python objects per sample (dicts, array headers, meta) beside its arrays


@dataclass(frozen=True)
class SampleCost:
    memory: float   # bytes one sample holds while its shard is generated and written
    disk: float     # bytes one sample takes in its shard file (container and compression as configured)
    probed: int     # how many samples were measured


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def sample_cost(header: Manifest, samples: list[dict]) -> SampleCost:
    """Memory and disk per sample, measured on `samples` encoded as the build would store them."""
    arrays = sum(np.asarray(v).nbytes for s in samples for k, v in s.items() if k not in ("__key__", "meta"))
    per = arrays / len(samples) + _PY_OVERHEAD
    disk = len(shard_bytes(samples, header.format, header.compression)) / len(samples)
    if header.format == "hdf5":
        memory = 2 * per  # HDF5 stacks the shard's arrays before writing
    elif header.compression:
        memory = per + len(shard_bytes(samples, "tar")) / len(samples) + disk  # the plain tar, then gzip's output
    else:
        memory = per
    return SampleCost(memory=memory, disk=disk, probed=len(samples))


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, bounded by a cgroup limit (Slurm, containers)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        lim, use = _read_int(limit), _read_int(usage)
        if lim is not None and use is not None and lim < 1 << 60:
            avail = min(avail, max(lim - use, 0))
    return int(avail)


def _existing(out: Path) -> Path:
    p = Path(out).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_disk(out: Path) -> int:
    """Free bytes on the filesystem that holds `out` (or would: its nearest existing parent)."""
    return shutil.disk_usage(_existing(out)).free


def check_writable(out: Path) -> None:
    """OSError (ENOTDIR, EROFS, EACCES) naming `out` when it cannot be created or written, before anything is."""
    p = _existing(out)
    code = (errno.ENOTDIR if not p.is_dir() else errno.EROFS if os.statvfs(p).f_flag & os.ST_RDONLY
            else None if os.access(p, os.W_OK | os.X_OK) else errno.EACCES)
    if code is not None:
        raise OSError(code, os.strerror(code), str(out))


def _unbuilt_samples(header: Manifest, out: Path, a: int, b: int, entries_dir: str) -> int:
    """Samples of shards [a, b) that have no finished-shard record yet (a rerun needs room only for those)."""
    todo = len(range(a * header.shard_size, min(b * header.shard_size, header.count)))
    d = Path(out) / entries_dir
    if not d.is_dir():
        return todo
    tail = header.shard_name(0)[len("shard-000000"):] + ".json"
    for f in os.listdir(d):
        index = f[len("shard-"):-len(tail)]
        if f.startswith("shard-") and f.endswith(tail) and index.isdigit() and a <= int(index) < b:
            todo -= len(header.shard_range(int(index)))
    return todo


def check_capacity(header: Manifest, out: Path, a: int, b: int, workers: int, cost: SampleCost,
                   entries_dir: str = ".entries") -> None:
    """Refuse, with the bound in the message, a build that cannot fit (ValueError), or an `out` that cannot be
    written (OSError)."""
    check_writable(out)
    if header.n_shards > MAX_SHARDS:
        raise ValueError(f"--count {header.count:,} in shards of {header.shard_size:,} makes {header.n_shards:,} "
                         f"shards; a manifest lists at most {MAX_SHARDS:,}: use --shard-size ≥ "
                         f"{math.ceil(header.count / MAX_SHARDS):,}")
    per_shard = min(header.shard_size, header.count) * cost.memory
    avail = available_memory()
    if workers * per_shard > MEMORY_USE * avail:
        bound = int(MEMORY_USE * avail / (workers * cost.memory))
        more = " or fewer --workers" if workers > 1 else ""
        raise ValueError(f"--shard-size {header.shard_size:,}: a shard is held in memory while it is written, "
                         f"~{human_bytes(per_shard)} each ({human_bytes(cost.memory)} per sample, measured on "
                         f"{cost.probed}) × {workers} worker(s), but {human_bytes(avail)} is available: use "
                         f"--shard-size ≤ {max(bound, 0):,}{more}")
    need = _unbuilt_samples(header, out, a, b, entries_dir) * cost.disk
    free = free_disk(out)
    if need > free:
        raise ValueError(f"--out {out}: the shards need ~{human_bytes(need)} ({human_bytes(cost.disk)} per sample, "
                         f"measured on {cost.probed}), but {human_bytes(free)} is free there: free space, choose "
                         "another --out, or build part of it with --shards A:B")
