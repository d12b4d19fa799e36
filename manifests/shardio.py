"""Shard containers: byte-reproducible webdataset tar and HDF5, and plain readers for both.

Tar: one member per array (`KEY.NAME.npy`) plus `KEY.meta.json`, members sorted per sample, mtime 0, uid/gid 0,
mode 0444, ustar format — no timestamps, so the same samples give the same sha256. HDF5: the same arrays per
shard with atoms flat + offsets (vlen datasets neither compress nor read fast), datasets without timestamps.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

__all__ = ["write_tar", "write_hdf5", "write_shard", "read_shard", "npy_bytes"]

_ATOM_ARRAYS = ("frac", "z", "occ", "uiso")
_DTYPES = {"cell": np.float64, "frac": np.float32, "z": np.uint8, "occ": np.float32, "uiso": np.float32,
           "amplitude": np.float32, "phase": np.float32}


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _member_bytes(name: str, value) -> bytes:
    if name == "meta":
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return npy_bytes(np.asarray(value, dtype=_DTYPES[name]))


def write_tar(path: Path, samples: list[dict]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for name in sorted(k for k in s if k != "__key__"):
                ext = "json" if name == "meta" else "npy"
                data = _member_bytes(name, s[name])
                info = tarfile.TarInfo(f"{s['__key__']}.{name}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def write_hdf5(path: Path, samples: list[dict]) -> None:
    counts = np.array([len(s["z"]) for s in samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    kw = {"track_times": False}
    with h5py.File(path, "w", libver="v110", track_order=False) as f:
        f.create_dataset("key", data=np.array([s["__key__"] for s in samples], dtype="S12"), **kw)
        f.create_dataset("cell", data=np.stack([s["cell"] for s in samples]).astype(np.float64), **kw)
        f.create_dataset("atom_offsets", data=offsets, **kw)
        for name in _ATOM_ARRAYS:
            parts = [np.asarray(s[name], dtype=_DTYPES[name]) for s in samples]
            f.create_dataset(name, data=np.concatenate(parts) if parts else np.zeros(0, _DTYPES[name]), **kw)
        for name in ("amplitude", "phase"):
            if name in samples[0]:
                f.create_dataset(name, data=np.stack([s[name] for s in samples]).astype(np.float32), **kw)
        meta = [json.dumps(s["meta"], sort_keys=True, separators=(",", ":")) for s in samples]
        f.create_dataset("meta", data=np.array(meta, dtype=h5py.string_dtype()), **kw)


def write_shard(path: Path, samples: list[dict], fmt: str) -> None:
    """Write to `.NAME.partial-PID`, fsync, rename: a killed build never leaves a partial file under NAME."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        (write_tar if fmt == "tar" else write_hdf5)(tmp, samples)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_tar(path: Path) -> Iterator[dict]:
    cur: dict = {}
    with tarfile.open(path, "r") as tar:
        for info in tar:
            key, name, ext = info.name.split(".", 2)
            if cur and cur["__key__"] != key:
                yield cur
                cur = {}
            data = tar.extractfile(info).read()
            cur["__key__"] = key
            cur[name] = json.loads(data) if ext == "json" else np.load(io.BytesIO(data), allow_pickle=False)
    if cur:
        yield cur


def _read_hdf5(path: Path) -> Iterator[dict]:
    with h5py.File(path, "r") as f:
        off = f["atom_offsets"][:]
        arrays = {name: f[name][:] for name in f.keys() if name not in ("key", "atom_offsets", "meta")}
        keys, meta = f["key"][:], f["meta"][:]
    for i, key in enumerate(keys):
        rec = {"__key__": key.decode()}
        for name, a in arrays.items():
            rec[name] = a[off[i]:off[i + 1]] if name in _ATOM_ARRAYS else a[i]
        rec["meta"] = json.loads(meta[i])
        yield rec


def read_shard(path: str | Path, fmt: str | None = None) -> Iterator[dict]:
    """Samples of one shard as dicts of numpy arrays (plus `meta` dict), in key order."""
    path = Path(path)
    fmt = fmt or ("hdf5" if path.suffix == ".h5" else "tar")
    return _read_tar(path) if fmt == "tar" else _read_hdf5(path)
