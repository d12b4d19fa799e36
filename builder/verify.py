"""What `phaseforge-build verify` checks beyond the manifest: shard bytes (local or at a URL) and regeneration.

Materialised builds: every shard's size and sha256 (over a URL too, streamed; only a local directory can also
be searched for extra shards), and with `--deep N` N samples spread over the dataset regenerated and compared
bit for bit with the shards. On-the-fly manifests have no bytes to hash: what can be checked is that this code
regenerates them (strategy id, probe samples), and with `--deep N` that N samples regenerate identically twice
(in forward and in reverse order, so no hidden state carries from one sample to the next).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from builder.shardgen import check_regenerates, samples_of
from manifests.schema import Manifest, ManifestError, ShardError, check_shards, verify_dir
from manifests.shardio import open_shard, read_samples, shard_bytes
from manifests.urls import Located, open_manifest

__all__ = ["DeepCheck", "verify_shards", "deep_check", "check_on_the_fly"]


@dataclass(frozen=True)
class DeepCheck:
    problems: list[str]
    checked: int      # samples really regenerated and compared (at most the dataset's count)


def verify_shards(loc: Located, workers: int = 1) -> list[str]:
    """Every missing or corrupt shard (and, in a local directory, every extra one); empty when all is well.
    `workers` threads measure the shards (`check_shards`): hashed in place, or fetched from a URL."""
    if not loc.remote:
        return verify_dir(loc.manifest, Path(loc.base), workers)

    def measure(e) -> tuple[int, str | None]:
        data = open_shard(loc.shard(e.file))  # OSError naming the URL's failure
        return len(data), hashlib.sha256(data).hexdigest() if len(data) == e.bytes else None

    return check_shards(loc.manifest, measure, workers)


def _picks(manifest: Manifest, n: int) -> list[int]:
    return sorted(set(np.linspace(0, manifest.count - 1, num=min(n, manifest.count)).astype(int).tolist()))


def _same(fresh: dict, stored: dict) -> list[str]:
    bad = []
    for k, v in fresh.items():
        a = stored.get(k)
        same = a == v if k in ("meta", "__key__") else (
            a is not None and np.asarray(v).dtype == a.dtype and np.asarray(v).tobytes() == a.tobytes())
        if not same:
            bad.append(k)
    return bad


def deep_check(path: str | Path, n_samples: int = 8) -> DeepCheck:
    """Regenerate up to `n_samples` keys spread over the dataset and compare them bit for bit with the shards."""
    loc = open_manifest(path)
    manifest = loc.manifest
    try:
        check_regenerates(manifest, "the manifest")
    except ManifestError as exc:
        return DeepCheck([str(exc)], 0)
    picks = _picks(manifest, n_samples)
    problems, checked = [], 0
    for e in manifest.shards:
        want = [i for i in picks if e.holds(i)]
        if not want:
            continue
        try:
            stored = {int(r["__key__"]): r for r in read_samples(loc.shard(e.file), manifest.format,
                                                                 manifest.compression)}
        except ShardError as exc:
            problems.append(str(exc))
            continue
        for i, fresh in zip(want, samples_of(manifest, want)):
            checked += 1
            if i not in stored:
                problems.append(f"{e.file}: key {i:012d} missing")
                continue
            problems += [f"{e.file}: key {i:012d} member {k} differs from a fresh generation"
                         for k in _same(fresh, stored[i])]
    return DeepCheck(problems, checked)


def check_on_the_fly(manifest: Manifest, n_samples: int = 0) -> DeepCheck:
    """Strategy id and probe samples; then `n_samples` keys generated forwards and backwards, compared."""
    try:
        check_regenerates(manifest, "the manifest")
    except ManifestError as exc:
        return DeepCheck([str(exc)], 0)
    picks = _picks(manifest, n_samples) if n_samples else []
    forward = samples_of(manifest, picks)
    backward = samples_of(manifest, picks[::-1])[::-1]
    problems = [f"key {i:012d} generates other bytes the second time (hidden state in the generator)"
                for i, a, b in zip(picks, forward, backward)
                if shard_bytes([a], "tar") != shard_bytes([b], "tar")]
    return DeepCheck(problems, len(picks))
