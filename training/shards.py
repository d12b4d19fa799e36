"""Training-side shard access: manifests -> Sources, shard bytes checked against the manifest, then parsed.

A `Source` is one manifest's shard list (never a glob), from a local directory or a URL (`manifests.urls`).
`read_shard` reads a shard's bytes once (through `manifests.shardio.open_shard`, the one opener; over a URL
into memory, retried on a dropped connection), checks them (none | size | sha256), decompresses a `.tar.gz` and
parses them: tar through a plain-ustar fast path or webdataset's expander, HDF5 through h5py (which undoes its
own filters). For an on-the-fly manifest it generates the shard instead, through builder's one entry point
(`builder.shardgen.generate_shard`, what a build writes), so the samples equal the materialised shards bit for
bit. Errors name the shard (`ShardError`); nothing is skipped. The plain reader for tools is
`manifests.shardio.read_samples`; a test checks that both give identical samples.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import webdataset as wds

from builder.reflections import hkl_hash, phai_hkl
from builder.shardgen import check_regenerates, generate_shard
from builder.symmetry import space_group_ops
from manifests.schema import ATOM_MEMBERS, REFLECTION_MEMBERS, Manifest, ManifestError, ShardError
from manifests.shardio import open_shard, unpack
from manifests.urls import Located, join, open_manifest, url_size

__all__ = ["VERIFY_LEVELS", "SPACE_GROUP", "ShardError", "Source", "open_source", "open_sources",
           "check_compatible", "read_shard"]

VERIFY_LEVELS = ("none", "size", "sha256")
SPACE_GROUP = "P 1 21/c 1"  # the loss's 8 origin shifts and the 0/pi phases are P2_1/c's


# ----------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """One manifest's shard list (never a glob) and what the loader needs to know about it."""

    manifest: str                  # the manifest's location: resolved path, or URL
    directory: str                 # where its shard names resolve: a directory, or the URL beside the manifest
    fmt: str                       # tar | hdf5
    files: tuple[str, ...]
    counts: tuple[int, ...]
    sizes: tuple[int, ...]
    sha256: tuple[str, ...]
    weight: float
    sid: int                       # strategy id: separates the random streams of different sources
    name: str
    root_seed: int
    count: int
    structures_only: bool
    space_group: str
    reflections: dict | None
    compression: str | None = None  # tar: "gz" (.tar.gz); hdf5: h5py filters, undone by h5py
    manifest_sha256: str = ""
    generate: Manifest | None = None  # on the fly: the build header whose shards the loader generates

    @property
    def n_shards(self) -> int:
        return len(self.files)

    @property
    def on_the_fly(self) -> bool:
        return self.generate is not None

    def describe(self) -> dict:
        """What a checkpoint records about this source (and a resume compares)."""
        return {"manifest": self.manifest, "strategy": self.name, "strategy_id": f"{self.sid:016x}",
                "root_seed": self.root_seed, "count": self.count, "format": self.fmt, "weight": self.weight,
                "manifest_sha256": self.manifest_sha256}


def _source(loc: Located, weight: float) -> Source:
    m = loc.manifest
    if m.on_the_fly is not None:
        shards = range(m.n_shards)
        files, counts = tuple(m.shard_name(i) for i in shards), tuple(len(m.shard_range(i)) for i in shards)
        sizes, sha = (0,) * len(files), ("",) * len(files)
    else:
        files, counts = tuple(e.file for e in m.shards), tuple(int(e.count) for e in m.shards)
        sizes, sha = tuple(int(e.bytes) for e in m.shards), tuple(e.sha256 for e in m.shards)
    return Source(
        manifest=loc.location, directory=loc.base, fmt=m.format, files=files, counts=counts, sizes=sizes,
        sha256=sha, weight=float(weight), sid=int(m.strategy_id, 16), name=m.strategy.get("name", "?"),
        root_seed=int(m.root_seed), count=int(m.count), structures_only=m.structures_only,
        space_group=m.strategy.get("space_group", SPACE_GROUP), reflections=m.reflections,
        compression=m.compression, manifest_sha256=loc.sha256,
        generate=m.materialised() if m.on_the_fly is not None else None)


def open_source(path: str | Path, weight: float = 1.0, verify: str = "sha256") -> Source:
    """Load a manifest (a path or a URL) and check that its shards can be had: local shards exist (with the
    recorded size unless verify is 'none'), a URL's first shard answers, an on-the-fly manifest regenerates here.

    Raises:
        ManifestError: missing, unreachable or malformed manifest, or one this code cannot regenerate;
        ShardError: a missing or wrongly sized shard.
    """
    loc = open_manifest(path)
    m = loc.manifest
    if not m.shards and m.on_the_fly is None:
        raise ManifestError(f"{loc.location} lists no shards")
    if not (isinstance(weight, (int, float)) and weight > 0 and math.isfinite(weight)):
        raise ValueError(f"mixing weight {weight!r} for {path} must be a positive number")
    src = _source(loc, weight)
    if src.on_the_fly:
        check_regenerates(m, loc.location)
    elif loc.remote:
        _check_first_shard(src, verify)
    else:
        for f, size in zip(src.files, src.sizes):
            p = Path(src.directory) / f
            if not p.is_file():
                raise ShardError(f"{p}: missing shard (listed in {src.manifest})")
            if verify != "none" and p.stat().st_size != size:
                raise ShardError(f"{p}: corrupt shard (size {p.stat().st_size}, manifest says {size})")
    return src


def _check_first_shard(src: Source, verify: str) -> None:
    """Over a URL only the first shard is asked for (its size), before training: the others are checked as read."""
    url = join(src.directory, src.files[0])
    try:
        size = url_size(url, "shard")
    except OSError as exc:
        raise ShardError(f"{url}: {exc.strerror} (listed in {src.manifest})") from None
    if verify != "none" and size != src.sizes[0]:
        raise ShardError(f"{url}: corrupt shard (size {size}, manifest says {src.sizes[0]})")


def open_sources(paths: Sequence[str | Path], weights: Sequence[float] | None = None, verify: str = "sha256",
                 max_index: int = 10) -> list[Source]:
    """Open several manifests to be mixed; they must share the model's reflection set and P2_1/c.

    Raises:
        ValueError / ManifestError: bad weights, another space group, or different reflection sets.
    """
    if not paths:
        raise ValueError("no training manifest given")
    weights = list(weights) if weights else [1.0] * len(paths)
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} manifests: give one --weight per --train")
    sources = [open_source(p, w, verify) for p, w in zip(paths, weights)]
    check_compatible(sources, max_index)
    return sources


def check_compatible(sources: Sequence[Source], max_index: int = 10) -> None:
    """The reflection sets must all be the model's, and the space group P2_1/c (ManifestError otherwise)."""
    hkl = phai_hkl(max_index)
    want = hkl_hash(hkl)
    want_sg = space_group_ops(SPACE_GROUP).name
    for s in sources:
        if space_group_ops(s.space_group).name != want_sg:
            raise ManifestError(f"{s.manifest}: space group {s.space_group}, but training is for {SPACE_GROUP} only")
        r = s.reflections
        if r is not None and (r.get("hkl_sha256") != want or int(r.get("count", -1)) != len(hkl)):
            other = [t for t in sources if t.reflections is not None and t.reflections != r]
            with_ = f" (and {other[0].manifest} uses {other[0].reflections.get('name')})" if other else ""
            raise ManifestError(f"{s.manifest}: reflection set {r.get('name')!r} ({r.get('count')} reflections, "
                                f"hkl sha256 {str(r.get('hkl_sha256'))[:12]}) is not the model's "
                                f"phai-{len(hkl)} set (max index {max_index}){with_}: manifests with different "
                                "reflection sets cannot be mixed")


# ----------------------------------------------------------------------------- reading shards

_DTYPE_CACHE: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def _npy(buf: bytes) -> np.ndarray:
    """Decode a .npy member without np.load's per-call overhead (headers are cached; v1 format only)."""
    if buf[:6] != b"\x93NUMPY" or buf[6] != 1:
        return np.load(io.BytesIO(buf), allow_pickle=False)
    n = int.from_bytes(buf[8:10], "little")
    header = buf[10:10 + n]
    spec = _DTYPE_CACHE.get(header)
    if spec is None:
        d = np.lib.format.read_array_header_1_0(io.BytesIO(buf[8:]))
        spec = _DTYPE_CACHE[header] = (np.dtype(d[2]), tuple(d[0]), bool(d[1]))
    dtype, shape, fortran = spec
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in shards")
    a = np.frombuffer(buf, dtype=dtype, offset=10 + n, count=math.prod(shape))
    return a.reshape(shape, order="F" if fortran else "C")


def _decode_member(key: str, value: bytes):
    if key.endswith(".npy"):
        return _npy(value)
    if key.endswith(".json"):
        return json.loads(value)
    return value


def _decode(sample: dict) -> dict:
    """webdataset sample {'__key__', 'amplitude.npy': bytes, ...} -> {'__key__', 'amplitude': array, ...}."""
    return {k.split(".", 1)[0] if not k.startswith("__") else k: (_decode_member(k, v) if not k.startswith("__")
                                                                  else v) for k, v in sample.items()}


_SKIP_IF_REFLECTIONS = tuple(f"{n}.npy" for n in ATOM_MEMBERS) + ("meta.json",)
_ATOMS_AND_META = frozenset(ATOM_MEMBERS) | {"meta"}  # the same members, as sample keys


class _NotPlainUstar(Exception):
    pass


def _ustar_members(data: bytes, url: str, select, checksum: bool = True) -> Iterator[dict]:
    """Members of an in-memory plain ustar archive as webdataset file samples {fname, data, __url__}.

    Python's tarfile spends ~60 us per member header; this reads the fixed ustar fields directly (checksum
    included unless the caller already checked the bytes' sha256). Anything else (pax/GNU headers, links, a bad checksum) raises _NotPlainUstar and the caller
    falls back to webdataset's own tarfile-based expander.
    """
    off, n = 0, len(data)
    while off + 512 <= n:
        hdr = data[off:off + 512]
        if hdr.count(0) == 512:
            return
        if hdr[257:262] != b"ustar" or hdr[156:157] not in (b"0", b"\0"):
            raise _NotPlainUstar(hdr[156:157])
        if checksum and int(hdr[148:156].strip(b"\0 ") or b"0", 8) != sum(hdr) - sum(hdr[148:156]) + 256:
            raise _NotPlainUstar("checksum")
        name = hdr[0:100].split(b"\0", 1)[0].decode()
        prefix = hdr[345:500].split(b"\0", 1)[0].decode()
        if prefix:
            name = f"{prefix}/{name}"
        size = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
        start = off + 512
        if start + size > n:
            raise _NotPlainUstar("truncated")
        if select(name):
            yield {"fname": name, "data": data[start:start + size], "__url__": url}
        off = start + (size + 511) // 512 * 512
    if off < n and data[off:].count(0) != n - off:
        raise _NotPlainUstar("trailing bytes")


def _parse_tar(data: bytes, url: str, need_atoms: bool, checksum: bool = True) -> list[dict]:
    """Tar bytes -> samples: a webdataset pipeline (member iteration -> group_by_keys -> decode)."""
    def select(name: str) -> bool:
        return need_atoms or not name.endswith(_SKIP_IF_REFLECTIONS)

    def members(_=None):
        return _ustar_members(data, url, select, checksum)

    try:
        return list(wds.DataPipeline(members, wds.tariterators.group_by_keys, wds.map(_decode)))
    except _NotPlainUstar:
        pass
    pipe = wds.DataPipeline(
        lambda: iter([{"url": url, "stream": io.BytesIO(data)}]),
        functools.partial(wds.tariterators.tar_file_expander, select_files=select),
        wds.tariterators.group_by_keys,
        wds.map(_decode),
    )
    return list(pipe)


def _parse_hdf5(data: bytes, need_atoms: bool) -> list[dict]:
    """HDF5 shard bytes -> samples (the file is opened here, inside the worker that reads it)."""
    with h5py.File(io.BytesIO(data), "r") as f:
        keys = f["key"][:]
        cell = f["cell"][:]
        refl = {n: f[n][:] for n in REFLECTION_MEMBERS if n in f}
        atoms = {}
        if need_atoms or not refl:
            off = f["atom_offsets"][:]
            atoms = {n: f[n][:] for n in ATOM_MEMBERS}
    out = []
    for i, k in enumerate(keys):
        rec = {"__key__": k.decode(), "cell": cell[i]}
        for n, a in refl.items():
            rec[n] = a[i]
        for n, a in atoms.items():
            rec[n] = a[off[i]:off[i + 1]]
        out.append(rec)
    return out


def _generated(src: Source, shard: int, need_atoms: bool) -> list[dict]:
    """Shard `shard` of an on-the-fly source, generated as the build would write it (the members a tar shard
    gives for these `need_atoms`)."""
    try:
        recs = generate_shard(src.generate, shard)
    except Exception as exc:  # noqa: BLE001 - a generator failure is this shard's, named
        raise ShardError(f"{src.manifest}: shard {shard} could not be generated on the fly "
                         f"({type(exc).__name__}: {exc})") from None
    if need_atoms or src.structures_only:
        return recs
    return [{k: v for k, v in r.items() if k not in _ATOMS_AND_META} for r in recs]


def read_shard(src: Source, shard: int, verify: str = "sha256", need_atoms: bool = False) -> list[dict]:
    """Read shard `shard` of `src`, check it against the manifest, and parse it into sample dicts (or, for an
    on-the-fly source, generate it).

    Raises:
        ShardError: the shard is missing, unreachable, its size or sha256 differs from the manifest, or it cannot
        be parsed (or generated).
    """
    if src.on_the_fly:
        return _generated(src, shard, need_atoms)
    path = join(src.directory, src.files[shard])
    try:
        data = open_shard(path)
    except OSError as exc:
        raise ShardError(f"{path}: missing or unreadable shard ({exc.strerror}; listed in {src.manifest})") from None
    if verify != "none" and len(data) != src.sizes[shard]:
        raise ShardError(f"{path}: corrupt shard (size {len(data)}, manifest says {src.sizes[shard]})")
    if verify == "sha256" and hashlib.sha256(data).hexdigest() != src.sha256[shard]:
        raise ShardError(f"{path}: corrupt shard (sha256 differs from {src.manifest})")
    need_atoms = need_atoms or src.structures_only
    try:
        data = unpack(data, src.fmt, src.compression)
        recs = (_parse_tar(data, path, need_atoms, checksum=verify != "sha256") if src.fmt == "tar"
                else _parse_hdf5(data, need_atoms))
    except Exception as exc:  # noqa: BLE001 - any parse failure is this shard's fault
        raise ShardError(f"{path}: unreadable shard ({type(exc).__name__}: {exc})") from None
    if len(recs) != src.counts[shard]:
        raise ShardError(f"{path}: holds {len(recs)} samples, manifest says {src.counts[shard]}")
    return recs
