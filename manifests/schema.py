"""Manifest schema, atomic JSON writing and verification (DESIGN.md "Manifest").

A manifest (`DIR/manifest.json`, sorted keys, no timestamps, written atomically and last) holds the build
header (format, resolved strategy, root seed, count, shard size, reflection set, member schema) and one entry
per shard: file, first index, count, bytes, sha256. The trainer reads shard names from it, never from a glob.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["MANIFEST_VERSION", "MANIFEST_NAME", "FORMATS", "SHARD_SUFFIX", "MEMBERS", "REFLECTION_MEMBERS",
           "ManifestError", "dumps", "write_json_atomic", "sha256_file", "shard_name", "member_schema",
           "assemble", "load_manifest", "verify_dir", "header_of", "package_version"]

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
FORMATS = ("tar", "hdf5")
SHARD_SUFFIX = {"tar": ".tar", "hdf5": ".h5"}
# member -> (dtype, shape); "N" is the sample's atom count, "H" the reflection count.
MEMBERS = {
    "cell": ("float64", [6]),
    "frac": ("float32", ["N", 3]),
    "z": ("uint8", ["N"]),
    "occ": ("float32", ["N"]),
    "uiso": ("float32", ["N"]),
    "meta": ("json", []),
}
REFLECTION_MEMBERS = {"amplitude": ("float32", ["H"]), "phase": ("float32", ["H"])}
_ENTRY_KEYS = {"file", "first_index", "count", "bytes", "sha256"}
_HEADER_KEYS = {"version", "package_version", "format", "strategy", "strategy_id", "root_seed", "count",
                "shard_size", "reflections", "schema"}


class ManifestError(ValueError):
    """A manifest or shard directory that cannot be used; the message names the file and the way out."""


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary name in the same directory, fsync, then rename: never a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(dumps(obj))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def package_version() -> str:
    """The installed phaseforge version, recorded in manifests, checkpoints and stats files."""
    try:
        return version("phaseforge")
    except PackageNotFoundError:
        return "0+unknown"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def shard_name(index: int, fmt: str) -> str:
    return f"shard-{int(index):06d}{SHARD_SUFFIX[fmt]}"


def member_schema(with_reflections: bool) -> dict:
    members = dict(MEMBERS)
    if with_reflections:
        members.update(REFLECTION_MEMBERS)
    return {k: {"dtype": d, "shape": s} for k, (d, s) in sorted(members.items())}


def header_of(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "shards"}


def assemble(header: dict, entries: list[dict]) -> dict:
    """The manifest for `header` and shard entries (any order): the same bytes however the shards were built."""
    return {**header, "shards": sorted(entries, key=lambda e: e["first_index"])}


def load_manifest(path: str | Path) -> tuple[dict, Path]:
    """Read and check a manifest; accepts the file or its directory. Returns (manifest, directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ManifestError(f"no manifest at {p}: build one with `phaseforge-build shards` (or `finalize`)")
    try:
        m = json.loads(p.read_text())
    except ValueError as exc:
        raise ManifestError(f"{p} is not valid JSON ({exc}); rebuild it with `phaseforge-build finalize`") from None
    missing = sorted((_HEADER_KEYS | {"shards"}) - set(m))
    if missing:
        raise ManifestError(f"{p} lacks {', '.join(missing)}: not a phaseforge manifest")
    if m["version"] != MANIFEST_VERSION:
        raise ManifestError(f"{p} has manifest version {m['version']}; this phaseforge reads {MANIFEST_VERSION}")
    if m["format"] not in FORMATS:
        raise ManifestError(f"{p} has unknown format {m['format']!r}")
    for e in m["shards"]:
        if set(e) != _ENTRY_KEYS:
            raise ManifestError(f"{p}: shard entry {e} must have exactly {sorted(_ENTRY_KEYS)}")
    return m, p.parent


def verify_dir(manifest: dict, directory: Path) -> list[str]:
    """Recompute sizes and hashes; list every missing, corrupt or extra shard (empty when all is well)."""
    problems = []
    names = set()
    expected_first = 0
    for e in manifest["shards"]:
        names.add(e["file"])
        if e["first_index"] != expected_first:
            problems.append(f"{e['file']}: first index {e['first_index']}, expected {expected_first}")
        expected_first = e["first_index"] + e["count"]
        f = directory / e["file"]
        if not f.is_file():
            problems.append(f"{e['file']}: missing")
        elif f.stat().st_size != e["bytes"]:
            problems.append(f"{e['file']}: corrupt (size {f.stat().st_size}, manifest {e['bytes']})")
        elif sha256_file(f) != e["sha256"]:
            problems.append(f"{e['file']}: corrupt (sha256 differs from the manifest)")
    if expected_first != manifest["count"]:
        problems.append(f"shards hold {expected_first} samples, manifest count is {manifest['count']}")
    suffix = SHARD_SUFFIX[manifest["format"]]
    for f in sorted(directory.glob(f"shard-*{suffix}")):
        if f.name not in names:
            problems.append(f"{f.name}: extra shard not in the manifest")
    return problems
