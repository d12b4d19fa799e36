"""Seed addresses (DESIGN.md "Determinism and seeds"): every random choice draws from a generator addressed by
a root seed and a key, never from a global RNG.

`seeded_rng(seed, *key)` is `default_rng(SeedSequence(seed, spawn_key=key))`: the stream that spawning children
along `key` would give, without spawning the siblings, so one sample, one shard order or one augmentation can be
rebuilt alone. `stable_id(text)` turns a string (a resolved strategy, a structure id) into such a key: the first
8 bytes of its sha256, little-endian, never Python's `hash()` (which changes from process to process).
"""
from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["seeded_rng", "stable_id"]


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator addressed by (seed, key...): SeedSequence(entropy=seed, spawn_key=key)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in key)))


def stable_id(text: str | bytes) -> int:
    """A stable unsigned 64-bit integer of `text`: sha256, first 8 bytes, little-endian."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
