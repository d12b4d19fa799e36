"""Shard containers: byte-reproducible webdataset tar (plain or gzip) and HDF5, one opener, one plain reader.

Tar: one member per array (`KEY.NAME.npy`) plus `KEY.meta.json`, members sorted per sample, mtime 0, uid/gid 0,
mode 0444, ustar format — no timestamps, so the same samples give the same sha256. `.tar.gz`: that plain tar
through gzip with no file name, mtime 0 and a fixed level (never tarfile's `w|gz`, which stamps the time).
HDF5: the same arrays per shard with atoms flat + offsets (vlen datasets neither compress nor read fast),
datasets without timestamps, optionally through h5py's shuffle + gzip or lzf filters.

Every reader gets shard bytes from `open_shard` (a local path, or a URL through `manifests.urls`) and container
bytes from `unpack`; `stored` casts a generated sample to the schema's dtypes, i.e. to what reading it back gives. `read_samples` is the plain reader (tarfile / h5py) for tools and tests; the trainer's checked fast
path is `training.shards.read_shard`.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np

from manifests.schema import ATOM_MEMBERS, ShardError, member_dtype, partial_name
from manifests.urls import is_url, read_url

__all__ = ["GZIP_LEVEL", "HDF5_GZIP_LEVEL", "write_tar", "write_hdf5", "write_shard", "shard_bytes", "open_shard",
           "unpack", "stored", "guess_container", "read_samples", "npy_bytes", "meta_bytes"]

GZIP_LEVEL = 6        # fixed: the level is part of the bytes (benchmarks/results/storage.json: 6 is 2% larger than 9
                      # at 1/7 of its time, and 8% smaller than 1)
HDF5_GZIP_LEVEL = 4   # h5py's default gzip level, after the byte-shuffle filter
_ROOM_MARGIN = 1 << 16  # bytes beyond an HDF5 shard's in-memory image (file-system blocks, HDF5's own layout)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def _stored_value(name: str, value):
    return value if name in ("__key__", "meta") else np.ascontiguousarray(value, dtype=member_dtype(name))


def stored(sample: dict) -> dict:
    """A generated sample as a shard stores it (and a reader gets it back): arrays in the schema's dtypes."""
    return {k: _stored_value(k, v) for k, v in sample.items()}


def _member_bytes(name: str, value) -> bytes:
    value = _stored_value(name, value)
    return meta_bytes(value) if name == "meta" else npy_bytes(value)


def write_tar(fileobj, samples: Iterable[dict]) -> None:
    """Write samples as a plain ustar stream to an open binary file object."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for name in sorted(k for k in s if k != "__key__"):
                ext = "json" if name == "meta" else "npy"
                data = _member_bytes(name, s[name])
                info = tarfile.TarInfo(f"{s['__key__']}.{name}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def _write_tar_stream(raw, samples: Iterable[dict], compression: str | None) -> tuple[int, str] | None:
    """Plain or gzip tar into the binary file object `raw`; for gzip, return (bytes, sha256) of the plain tar.
    The tar is built in memory and handed to gzip in one write (many small writes cost 3x more time)."""
    if compression is None:
        write_tar(raw, samples)
        return None
    buf = io.BytesIO()
    write_tar(buf, samples)
    tar = buf.getbuffer()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=GZIP_LEVEL) as gz:
        gz.write(tar)
    return len(tar), hashlib.sha256(tar).hexdigest()


def _hdf5_filters(compression: str | None) -> dict:
    if compression == "gz":
        return {"compression": "gzip", "compression_opts": HDF5_GZIP_LEVEL, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    return {}


def write_hdf5(target, samples: list[dict], compression: str | None = None) -> None:
    """HDF5 shard at `target` (a path, or a binary file object such as BytesIO)."""
    counts = np.array([len(s["z"]) for s in samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    kw = {"track_times": False}
    filt = {**kw, **_hdf5_filters(compression)}
    with h5py.File(target, "w", libver="v110", track_order=False) as f:
        f.create_dataset("key", data=np.array([s["__key__"] for s in samples], dtype="S12"), **kw)
        f.create_dataset("cell", data=np.stack([s["cell"] for s in samples]).astype(member_dtype("cell")), **filt)
        f.create_dataset("atom_offsets", data=offsets, **filt)
        for name in ATOM_MEMBERS:
            dt = member_dtype(name)
            parts = [np.asarray(s[name], dtype=dt) for s in samples]
            data = np.concatenate(parts) if parts else np.zeros(0, dt)
            f.create_dataset(name, data=data, **(filt if data.size else kw))
        for name in ("amplitude", "phase"):
            if name in samples[0]:
                f.create_dataset(name, data=np.stack([s[name] for s in samples]).astype(member_dtype(name)), **filt)
        meta = [meta_bytes(s["meta"]).decode() for s in samples]
        f.create_dataset("meta", data=np.array(meta, dtype=h5py.string_dtype()), **kw)


def write_shard(path: Path, samples: list[dict], fmt: str, compression: str | None = None) -> tuple[int, str] | None:
    """Write to `.NAME.partial-HOST-PID`, fsync, rename: a killed build never leaves a partial file under NAME.

    Returns (bytes, sha256) of the plain tar inside a `.tar.gz`, else None.

    Raises:
        OSError: with `path` as filename (no space left, read-only, ...); the temporary file is removed.
    """
    path = Path(path)
    tmp = partial_name(path)
    try:
        if fmt == "tar":
            with open(tmp, "wb") as fh:
                raw = _write_tar_stream(fh, samples, compression)
        else:
            _check_room(path, len(shard_bytes(samples, fmt, compression)))
            raw = write_hdf5(tmp, samples, compression)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return raw
    except OSError as exc:  # a failed write() names no file: name the shard
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except RuntimeError as exc:  # h5py reports some failed writes so, with the errno in its text
        code = re.search(r"errno = (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_room(path: Path, size: int) -> None:
    """The HDF5 library can crash the process when a write fails on a full disk (measured with h5py 3.16:
    segmentation fault after "file write failed ... errno = 28"), so check the room before it writes.
    (A disk that another process fills during the write can still crash it; the rerun then resumes.)"""
    if shutil.disk_usage(path.parent).free < size + _ROOM_MARGIN:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def shard_bytes(samples: list[dict], fmt: str, compression: str | None = None) -> bytes:
    """The bytes `write_shard` would store for `samples`, in memory (for size estimates)."""
    buf = io.BytesIO()
    if fmt == "tar":
        _write_tar_stream(buf, samples, compression)
    else:
        write_hdf5(buf, samples, compression)
    return buf.getvalue()


def open_shard(location: str | Path) -> bytes:
    """The bytes of one shard, as stored, from a local path or a URL (the single place shards are opened).

    Raises:
        OSError: naming the location (missing, unreadable, a URL that stayed unreachable after its retries).
    """
    if is_url(location):
        return read_url(str(location), "shard")
    return Path(location).read_bytes()


def unpack(data: bytes, fmt: str, compression: str | None) -> bytes:
    """Container bytes from stored bytes: gunzip a `.tar.gz`; HDF5 filters are undone by h5py itself."""
    if fmt == "tar" and compression == "gz":
        return zlib.decompress(data, wbits=31)  # one gzip member, as write_shard writes it
    return data


def guess_container(name: str) -> tuple[str, str | None]:
    """(format, compression) from a shard's file name, for a shard given without its manifest."""
    if name.endswith(".tar.gz"):
        return "tar", "gz"
    if name.endswith(".h5"):
        return "hdf5", None  # h5py reads its filters from the file
    if name.endswith(".tar"):
        return "tar", None
    raise ShardError(f"{name}: not a shard (expected .tar, .tar.gz or .h5)")


def _tar_samples(data: bytes) -> Iterator[dict]:
    cur: dict = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            key, name, ext = info.name.split(".", 2)
            if cur and cur["__key__"] != key:
                yield cur
                cur = {}
            member = tar.extractfile(info).read()
            cur["__key__"] = key
            cur[name] = json.loads(member) if ext == "json" else np.load(io.BytesIO(member), allow_pickle=False)
    if cur:
        yield cur


def _hdf5_samples(data: bytes) -> Iterator[dict]:
    with h5py.File(io.BytesIO(data), "r") as f:
        off = f["atom_offsets"][:]
        arrays = {name: f[name][:] for name in f.keys() if name not in ("key", "atom_offsets", "meta")}
        keys, meta = f["key"][:], f["meta"][:]
    for i, key in enumerate(keys):
        rec = {"__key__": key.decode()}
        for name, a in arrays.items():
            rec[name] = a[off[i]:off[i + 1]] if name in ATOM_MEMBERS else a[i]
        rec["meta"] = json.loads(meta[i])
        yield rec


def read_samples(path: str | Path, fmt: str | None = None, compression: str | None = None) -> list[dict]:
    """All samples of one shard (a path or a URL) as dicts of numpy arrays (plus `meta` dict), in key order (the
    plain reader).

    Raises:
        ShardError: the shard is missing, unreadable, truncated or not a shard (the message names it).
    """
    path = str(path) if is_url(path) else Path(path)
    if fmt is None:
        fmt, compression = guess_container(str(path).rsplit("/", 1)[-1])
    try:
        data = unpack(open_shard(path), fmt, compression)
        return list(_tar_samples(data) if fmt == "tar" else _hdf5_samples(data))
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the container library raises, it is this shard's fault
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise ShardError(f"{path}: unreadable shard ({what}); `phaseforge-build verify` checks the whole "
                         "directory, and rerunning the build replaces bad shards") from None
