"""The one shard-generation entry point: shard i of a build, as the build stores it (DESIGN.md "Dependencies").

`generate_shard(header, i)` is what `build_shard` writes and what the training loader serves for an on-the-fly
manifest, so both give the same samples bit for bit. Training imports this module and nothing else of the
generator. Before a loader generates anything, `check_regenerates` makes sure this code can rebuild the
manifest's data: the resolved strategy must parse and hash to the manifest's strategy id, and a few probe
samples must hash as they did where the manifest was written (another code version, or a machine whose
floating point gives other samples, is refused rather than silently producing other data).
"""
from __future__ import annotations

import functools
import hashlib
import json

from builder.sample import generate_sample
from builder.strategy import Strategy, canonical_json
from manifests.schema import Manifest, ManifestError
from manifests.shardio import shard_bytes, stored

__all__ = ["generate_shard", "samples_of", "probe", "check_regenerates"]


@functools.lru_cache(maxsize=4)
def _strategy(strategy_json: str) -> Strategy:
    return Strategy.from_dict(json.loads(strategy_json))


def samples_of(header: Manifest, indices) -> list[dict]:
    """Samples `indices` of the build `header` describes, in the schema's dtypes (as a shard gives them back)."""
    strat = _strategy(canonical_json(header.strategy))
    refl = not header.structures_only
    return [stored(generate_sample(strat, header.root_seed, i, with_reflections=refl)) for i in indices]


def generate_shard(header: Manifest, shard: int) -> list[dict]:
    """The samples of shard `shard`: a pure function of (header, shard)."""
    if not 0 <= shard < header.n_shards:
        raise ValueError(f"shard {shard} outside the build's {header.n_shards} shards")
    return samples_of(header, header.shard_range(shard))


def probe(header: Manifest) -> dict:
    """The on-the-fly marker: the first and last keys and the sha256 of their plain-tar bytes (every member)."""
    keys = sorted({0, header.count - 1})
    data = shard_bytes(samples_of(header, keys), "tar")
    return {"probe_keys": keys, "probe_sha256": hashlib.sha256(data).hexdigest()}


def check_regenerates(header: Manifest, where: object) -> None:
    """ManifestError (one line) unless this code regenerates the manifest's samples: strategy id, then probes."""
    try:
        strat = _strategy(canonical_json(header.strategy))
        sid = f"{strat.strategy_id:016x}"
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: its strategy cannot be resolved by this phaseforge "
                            f"({header.package_version} wrote it; {type(exc).__name__}: {exc}): install that "
                            "version, or build the data with it") from None
    if sid != header.strategy_id:
        raise ManifestError(f"{where}: strategy {header.strategy.get('name')!r} resolves to id {sid} here, but the "
                            f"manifest records {header.strategy_id} (written by phaseforge {header.package_version}, "
                            "this is another code version): it cannot be regenerated here; install that version, "
                            "or build the data with it")
    if header.on_the_fly is not None:
        got = probe(header)
        if got != header.on_the_fly:
            raise ManifestError(f"{where}: samples {header.on_the_fly.get('probe_keys')} generate other bytes here "
                                f"than where the manifest was written (phaseforge {header.package_version}): this "
                                "machine or code version cannot regenerate the data; rerun the `shards ... "
                                "--on-the-fly` command here, or materialise the data where it was written")
