"""Manifest schema (typed), atomic JSON writing and verification (DESIGN.md "Manifest").

A manifest (`DIR/manifest.json`, sorted keys, no timestamps, written atomically and last) holds the build
header (format, compression, resolved strategy, root seed, count, shard size, reflection set, member schema)
and one entry per shard: file, first index, count, bytes, sha256 (compressed tar shards also record the size
and sha256 of the plain tar inside, which do not depend on the zlib build). The trainer reads shard names from
it, never from a glob. `Manifest` and `ShardEntry` are the typed forms; `to_dict()` gives the JSON document.

An on-the-fly manifest has the same header, no shards, and `on_the_fly` (the keys and sha256 of a few probe
samples): the loader generates its shards through builder's one shard-generation entry point. Shard names are
data from outside: every entry must be the name its build gives that shard (`shard-NNNNNN.tar|.tar.gz|.h5`), so
a manifest cannot point a reader at another directory, a command or another scheme.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

__all__ = ["MANIFEST_VERSION", "MANIFEST_NAME", "FORMATS", "COMPRESSIONS", "MEMBERS", "REFLECTION_MEMBERS",
           "ATOM_MEMBERS", "member_dtype", "ManifestError", "ShardError", "ShardEntry", "Manifest", "dumps",
           "write_json_atomic", "host_name", "partial_name", "sha256_file", "shard_suffix", "member_schema",
           "load_manifest", "check_shards", "verify_dir", "package_version"]

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
FORMATS = ("tar", "hdf5")
# per format, the compressions a manifest may name (None: none). tar "gz": the whole shard through gzip
# (shard-NNNNNN.tar.gz); hdf5 "gz" / "lzf": h5py dataset filters (byte shuffle + gzip, or lzf), same file name.
COMPRESSIONS = {"tar": (None, "gz"), "hdf5": (None, "gz", "lzf")}
# The one member table: member -> (dtype, shape); "N" is the sample's atom count, "H" the reflection count.
MEMBERS = {
    "cell": ("float64", [6]),
    "frac": ("float32", ["N", 3]),
    "z": ("uint8", ["N"]),
    "occ": ("float32", ["N"]),
    "uiso": ("float32", ["N"]),
    "meta": ("json", []),
}
REFLECTION_MEMBERS = {"amplitude": ("float32", ["H"]), "phase": ("float32", ["H"])}
ATOM_MEMBERS = tuple(k for k, (_, shape) in MEMBERS.items() if shape and shape[0] == "N")
_ENTRY_KEYS = {"file", "first_index", "count", "bytes", "sha256"}
_RAW_KEYS = {"raw_bytes", "raw_sha256"}
_OTF_KEYS = {"probe_keys", "probe_sha256"}
_SHARD_NAME = re.compile(r"shard-[0-9]{6}(\.tar|\.tar\.gz|\.h5)")
_HEADER_KEYS = {"version", "package_version", "format", "strategy", "strategy_id", "root_seed", "count",
                "shard_size", "reflections", "schema"}


def member_dtype(name: str) -> np.dtype:
    """The numpy dtype of an array member (KeyError for `meta` or an unknown name)."""
    d = {**MEMBERS, **REFLECTION_MEMBERS}[name][0]
    if d == "json":
        raise KeyError(f"{name} is a JSON member, not an array")
    return np.dtype(d)


class ManifestError(ValueError):
    """A manifest or shard directory that cannot be used; the message names the file and the way out."""


class ShardError(ManifestError):
    """A shard that is missing, corrupt or unreadable; the message names the file."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a manifest: its file, which samples it holds, and what its bytes must hash to."""

    file: str
    first_index: int
    count: int
    bytes: int
    sha256: str
    raw_bytes: int | None = None    # compressed tar: the plain tar inside (independent of the zlib build)
    raw_sha256: str | None = None

    @property
    def stop(self) -> int:
        return self.first_index + self.count

    def holds(self, key: int) -> bool:
        return self.first_index <= key < self.stop

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict, where: object = "manifest") -> ShardEntry:
        keys = set(d) if isinstance(d, dict) else set()
        if not _ENTRY_KEYS <= keys <= _ENTRY_KEYS | _RAW_KEYS:
            raise ManifestError(f"{where}: shard entry {d} must have exactly {sorted(_ENTRY_KEYS)} "
                                f"(and optionally {sorted(_RAW_KEYS)})")
        return cls(**d)


@dataclass(frozen=True)
class Manifest:
    """A build: its header (what every sample is a function of) and its shard entries, sorted by first index.

    A manifest without shards is a build's header (what `.build.json` records and a rerun compares).
    """

    version: int
    package_version: str
    format: str
    strategy: dict
    strategy_id: str
    root_seed: int
    count: int
    shard_size: int
    reflections: dict | None
    schema: dict
    compression: str | None = None
    on_the_fly: dict | None = None  # {"probe_keys", "probe_sha256"}: no shard files, generated by the loader
    shards: tuple[ShardEntry, ...] = field(default=())

    @property
    def n_shards(self) -> int:
        return -(-self.count // self.shard_size)

    @property
    def structures_only(self) -> bool:
        return self.reflections is None

    def shard_of(self, key: int) -> int:
        """The shard index that holds sample `key` (fixed samples per shard: arithmetic, no search)."""
        return int(key) // self.shard_size

    def index_of(self, entry: ShardEntry) -> int:
        return entry.first_index // self.shard_size

    def shard_range(self, shard: int) -> range:
        first = shard * self.shard_size
        return range(first, min(first + self.shard_size, self.count))

    def shard_name(self, shard: int) -> str:
        return f"shard-{int(shard):06d}{shard_suffix(self.format, self.compression)}"

    def entry_for(self, key: int) -> ShardEntry | None:
        return next((e for e in self.shards if e.holds(key)), None)

    def header(self) -> dict:
        """The JSON header (no shards); `compression` and `on_the_fly` appear only when set, so plain builds keep
        their bytes."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "shards"}
        for optional in ("compression", "on_the_fly"):
            if d[optional] is None:
                del d[optional]
        return d

    def materialised(self) -> Manifest:
        """This build without the on-the-fly marker: the header a materialising build of it records."""
        return dataclasses.replace(self, on_the_fly=None)

    def with_shards(self, entries) -> Manifest:
        """This header with `entries` (any order): the same manifest however the shards were built."""
        return dataclasses.replace(self, shards=tuple(sorted(entries, key=lambda e: e.first_index)))

    def to_dict(self) -> dict:
        return {**self.header(), "shards": [e.to_dict() for e in self.shards]}

    @classmethod
    def from_dict(cls, d: dict, where: object = "manifest", header_only: bool = False) -> Manifest:
        """Check and type a manifest document (or a header, without `shards`); ManifestError names `where`."""
        if not isinstance(d, dict):
            raise ManifestError(f"{where} is not a JSON object: not a phaseforge manifest")
        missing = sorted(_HEADER_KEYS - set(d) | (set() if header_only else {"shards"} - set(d)))
        if missing:
            raise ManifestError(f"{where} lacks {', '.join(missing)}: not a phaseforge manifest")
        if d["version"] != MANIFEST_VERSION:
            raise ManifestError(f"{where} has manifest version {d['version']}; "
                                f"this phaseforge reads {MANIFEST_VERSION}")
        if d["format"] not in FORMATS:
            raise ManifestError(f"{where} has unknown format {d['format']!r}")
        comp = d.get("compression")
        if comp not in COMPRESSIONS[d["format"]]:
            raise ManifestError(f"{where}: compression {comp!r} is not one of "
                                f"{[c for c in COMPRESSIONS[d['format']] if c]} for {d['format']} shards")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ManifestError(f"{where} has unknown field(s) {', '.join(unknown)}: written by a newer phaseforge?")
        kw = {k: v for k, v in d.items() if k in names and k != "shards"}
        entries = tuple(ShardEntry.from_dict(e, where) for e in d.get("shards", []))
        m = cls(**kw, shards=entries)
        m._check_shards(where)
        return m

    def _check_shards(self, where: object) -> None:
        """Shard names are the build's own (never a path, a URL or `pipe:`); an on-the-fly manifest lists none."""
        if self.on_the_fly is not None:
            otf = self.on_the_fly
            if not (isinstance(otf, dict) and set(otf) == _OTF_KEYS):
                raise ManifestError(f"{where}: on_the_fly must hold exactly {sorted(_OTF_KEYS)}")
            if self.shards:
                raise ManifestError(f"{where} is marked on the fly but lists shards: not a phaseforge manifest")
        if not (isinstance(self.shard_size, int) and self.shard_size >= 1):
            raise ManifestError(f"{where}: shard_size {self.shard_size!r} is not a positive integer")
        for e in self.shards:
            ok = (isinstance(e.file, str) and _SHARD_NAME.fullmatch(e.file) and isinstance(e.first_index, int)
                  and e.first_index % self.shard_size == 0 and e.file == self.shard_name(self.index_of(e)))
            if not ok:
                raise ManifestError(f"{where}: shard entry {str(e.file)[:80]!r} (first index {e.first_index!r}) is "
                                    "not a shard name this build writes (shard-NNNNNN.tar, .tar.gz or .h5 beside the "
                                    "manifest): refused")


def dumps(obj, allow_nan: bool = True) -> str:
    """Sorted keys, no timestamps: the same object gives the same bytes. Manifests pass allow_nan=False
    (NaN and infinity are not JSON)."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=allow_nan) + "\n"


def host_name() -> str:
    """This machine's name as used in temporary-file names and lock owners (letters, digits, '.', '_')."""
    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "host"


def partial_name(path: Path) -> Path:
    """The temporary name a writer uses before renaming to `path`: `.NAME.partial-HOST-PID` in the same
    directory, so the owner of debris is known (a rerun removes only what dead owners left)."""
    return path.with_name(f".{path.name}.partial-{host_name()}-{os.getpid()}")


def write_json_atomic(path: Path, obj, allow_nan: bool = True) -> None:
    """Write to a temporary name in the same directory, fsync, then rename: never a partial file.

    Raises:
        OSError: with the final path as filename (no space left, read-only, ...); the temporary file is removed.
    """
    path = Path(path)
    tmp = partial_name(path)
    text = dumps(obj, allow_nan)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


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


def shard_suffix(fmt: str, compression: str | None = None) -> str:
    return {"tar": ".tar.gz" if compression == "gz" else ".tar", "hdf5": ".h5"}[fmt]


def member_schema(with_reflections: bool) -> dict:
    members = dict(MEMBERS)
    if with_reflections:
        members.update(REFLECTION_MEMBERS)
    return {k: {"dtype": d, "shape": s} for k, (d, s) in sorted(members.items())}


def _advice(directory: Path) -> str:
    """How to get a good manifest back: finalize a split build, otherwise rerun the build (it resumes)."""
    if any(directory.glob("manifest.part-*.json")):
        return f"rebuild it with `phaseforge-build finalize {directory}`"
    return ("rerun the `phaseforge-build shards` command that built it (same options, recorded in "
            f"{directory / '.build.json'}): finished shards are kept and the manifest is rewritten")


def load_manifest(path: str | Path) -> tuple[Manifest, Path]:
    """Read and check a manifest; accepts the file or its directory. Returns (manifest, directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ManifestError(f"no manifest at {p}: build one with `phaseforge-build shards` (or `finalize`)")
    try:
        doc = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{p} is not valid JSON ({exc}); {_advice(p.parent)}") from None
    return Manifest.from_dict(doc, p), p.parent


def check_shards(manifest: Manifest, measure, workers: int = 1) -> list[str]:
    """Every shard's size and sha256 against the manifest, and the count; the problems in shard order.

    `measure(entry)` gives (size, sha256), the sha256 None when the size already differs, or raises OSError whose
    strerror is the problem ("missing", a URL's failure). `workers` threads measure shards at once (hashlib
    releases the GIL on large blocks, so this scales with cores and disks), whatever the count the same list.
    """
    def one(e: ShardEntry):
        try:
            return measure(e)
        except OSError as exc:
            return exc.strerror or str(exc)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        measured = list(pool.map(one, manifest.shards))
    problems = []
    expected_first = 0
    for e, m in zip(manifest.shards, measured):
        if e.first_index != expected_first:
            problems.append(f"{e.file}: first index {e.first_index}, expected {expected_first}")
        expected_first = e.stop
        if isinstance(m, str):
            problems.append(f"{e.file}: {m}")
        elif m[0] != e.bytes:
            problems.append(f"{e.file}: corrupt (size {m[0]}, manifest {e.bytes})")
        elif m[1] != e.sha256:
            problems.append(f"{e.file}: corrupt (sha256 differs from the manifest)")
    if expected_first != manifest.count:
        problems.append(f"shards hold {expected_first} samples, manifest count is {manifest.count}")
    return problems


def verify_dir(manifest: Manifest, directory: Path, workers: int = 1) -> list[str]:
    """Recompute sizes and hashes (`check_shards`, `workers` threads); list every missing, corrupt or extra shard
    (empty when all is well)."""
    def measure(e: ShardEntry) -> tuple[int, str | None]:
        f = directory / e.file
        if not f.is_file():
            raise FileNotFoundError(errno.ENOENT, "missing", str(f))
        size = f.stat().st_size
        return size, sha256_file(f) if size == e.bytes else None

    problems = check_shards(manifest, measure, workers)
    names = {e.file for e in manifest.shards}
    for f in sorted(directory.glob("shard-*")):
        if f.name not in names:
            problems.append(f"{f.name}: extra shard not in the manifest")
    return problems
