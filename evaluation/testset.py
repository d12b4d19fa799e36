"""Evaluation test sets: selection rules, test-set manifests (JSON) and the shipped CIF archive.

A test set is a JSON manifest (sorted keys, no timestamps) naming CIF files by id and sha256, with each
structure's standardised cell, volume, compound class and number of occupied special positions (paper Figs. 5
and 6), and a "skipped" list saying why each other file was left out. The CIFs of the committed COD test sets
ship inside the package as one deterministic `manifests/testsets/cod-p21c.tar.xz`; `iter_testset_cifs` reads
them back and checks every hash.

Selection rules (applied to the reduced P 1 21/c 1 cell, `builder.setting.standardise`; the same size classes
select the database statistics `p21c-small` / `p21c-large-only`, `builder.setting.size_class`):
  * `p21c-small`: all three edges ≤ 10 Å (the paper's 3086-structure test set uses 4 Å ≤ a_n ≤ 10 Å);
  * `p21c-large`: all edges < 20 Å and at least one > 10 Å (the paper's N = 5000 set, a_n < 20 Å).
"""
from __future__ import annotations

import csv
import hashlib
import importlib.resources
import io
import json
import lzma
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from importlib.resources.abc import Traversable
from typing import Any

from builder.setting import EDGE_TOL, SIZE_CLASSES, size_class
from evaluation.cif import Ingested, Unusable, parse_structure
from manifests.schema import write_json_atomic

__all__ = [
    "SELECTIONS", "EDGE_TOL", "TESTSET_VERSION", "id_key", "selection_reason", "build_testset", "write_testset",
    "load_testset", "shipped_testset", "write_archive", "iter_testset_cifs",
]

TESTSET_VERSION = 1
SELECTIONS: dict[str, str] = {f"p21c-{k}": f"space group 14 in its reduced P 1 21/c 1 cell (beta >= 90); {v}"
                              for k, v in SIZE_CLASSES.items()}
SELECTIONS["p21c-measured"] = "space group 14 (any cell) with measured reflections in the file (evaluation.measured)"
COD_URL = "https://www.crystallography.net/cod/{id}.cif"
_PACKAGE_DIR = ("manifests", "testsets")


def selection_reason(cell6: Sequence[float], select: str) -> str | None:
    """None when a standardised cell passes the selection rule `select`, else the reason it does not.

    Args:
        cell6: a, b, c (Å), α, β, γ (deg) in the standard setting.
        select: a key of `SELECTIONS`; its size class is `builder.setting.size_class`.

    Raises:
        ValueError: unknown selection.
    """
    if select not in SELECTIONS:
        raise ValueError(f"unknown selection {select!r}: choose one of {sorted(SELECTIONS)}")
    if select == "p21c-measured" or size_class(cell6) == select.removeprefix("p21c-"):
        return None  # p21c-measured has no cell rule: build_testset's `accept` hook selects (evaluation.measured)
    return f"longest edge {float(max(cell6[:3])):.3f} A outside {select}"


def id_key(name: str) -> tuple[int, str]:
    """Sort key of structure ids: numeric order for COD ids (all digits), stable for anything else."""
    return (len(name), name)


def _provenance(cif_dir: Path) -> dict[str, dict[str, str]]:
    """Source repository, commit and path per id from an `index.csv` beside the CIFs (COD collection format)."""
    index = cif_dir / "index.csv"
    if not index.is_file():
        return {}
    out = {}
    with index.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            key = row.get("cod_id") or row.get("id")
            if key:
                out[key] = {k: row[k] for k in ("source_repo", "source_commit", "source_path") if row.get(k)}
                if row.get("renamed_or_test_variant") == "1":  # a test variant or a renamed copy of the entry
                    out[key]["renamed_or_test_variant"] = True
    return out


def _entry(ing: Ingested, data: bytes, source: dict[str, str]) -> dict[str, Any]:
    return {
        "id": ing.id,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "cell": [round(float(v), 5) for v in ing.cell6],
        "volume": round(ing.volume, 3),
        "class": ing.compound_class,
        "n_special": ing.n_special,
        "n_atoms": ing.n_atoms,
        "n_h": ing.n_h,
        "setting": ing.original_setting,
        "transform": ing.transform,
        "notes": list(ing.notes),
        "n_u_fallback": ing.n_u_fallback,
        "source": source,
    }


def build_testset(cif_dir: str | os.PathLike, select: str, *, archive: str | None = None,
                  database: str = "COD", licence: str = "public domain (COD, CC0)",
                  accept: Callable[[Ingested, bytes], tuple[str | None, dict]] | None = None) -> dict[str, Any]:
    """Select the structures of a CIF directory into a test-set manifest.

    Args:
        cif_dir: a folder of `<id>.cif` files; an `index.csv` there (columns cod_id, source_repo,
            source_commit, source_path, renamed_or_test_variant) adds provenance to each entry.
        select: a key of `SELECTIONS`, applied after standardisation.
        archive: file name of the archive that ships these CIFs (recorded for `iter_testset_cifs`).
        database: where the CIFs come from; "COD" adds the COD download URL to each entry.
        licence: the licence of the CIF files.
        accept: optional further rule after the cell rule: (structure, CIF bytes) -> (reason to skip or None,
            extra entry fields).

    Returns:
        The manifest dict: entries (sorted by id) and skipped files with reasons. Deterministic: no timestamps,
        no absolute paths.
    """
    selection_reason((1.0, 1.0, 1.0, 90.0, 90.0, 90.0), select)  # validates `select`
    root = Path(cif_dir)
    prov = _provenance(root)
    entries, skipped = [], []
    for path in sorted(root.glob("*.cif"), key=lambda p: id_key(p.stem)):
        data = path.read_bytes()
        try:
            ing = parse_structure(data, path.stem)
        except Unusable as exc:
            skipped.append({"id": path.stem, "reason": exc.reason, "detail": exc.detail})
            continue
        why = selection_reason(ing.cell6, select)
        if why is not None:
            skipped.append({"id": path.stem, "reason": "cell out of the selected range", "detail": why})
            continue
        why, extra = accept(ing, data) if accept is not None else (None, {})
        if why is not None:
            skipped.append({"id": path.stem, "reason": why, "detail": ""})
            continue
        source = {"database": database, **prov.get(path.stem, {})}
        if database == "COD":
            source["url"] = COD_URL.format(id=path.stem)
        entries.append({**_entry(ing, data, source), **extra})
    out: dict[str, Any] = {
        "version": TESTSET_VERSION,
        "select": select,
        "rule": SELECTIONS[select],
        "space_group": "P 1 21/c 1",
        "licence": licence,
        "count": len(entries),
        "classes": dict(sorted(Counter(e["class"] for e in entries).items())),
        "n_special": {str(k): v for k, v in sorted(Counter(e["n_special"] for e in entries).items())},
        "entries": entries,
        "skipped": skipped,
        "skipped_counts": dict(sorted(Counter(s["reason"] for s in skipped).items())),
    }
    if archive is not None:
        out["archive"] = archive
    return out


def write_testset(testset: Mapping[str, Any], out: str | os.PathLike) -> Path:
    """Write a manifest as JSON atomically (`manifests.schema.write_json_atomic`: sorted keys, indent 1,
    trailing newline, no NaN); returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, dict(testset), allow_nan=False)
    return path


def shipped_testset(name: str) -> Traversable:
    """The committed test-set manifest `name` (e.g. "cod-p21c-small") inside the installed package."""
    res = importlib.resources.files(_PACKAGE_DIR[0]).joinpath(_PACKAGE_DIR[1], f"{name}.json")
    if not res.is_file():
        raise FileNotFoundError(f"no shipped test set {name!r} (looked for {res})")
    return res


def load_testset(testset_json: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A manifest from a dict, a JSON file path, or the name of a shipped test set."""
    if isinstance(testset_json, Mapping):
        return dict(testset_json)
    path = Path(testset_json)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return json.loads(shipped_testset(str(testset_json)).read_text(encoding="utf-8"))


def write_archive(cif_dir: str | os.PathLike, ids: Sequence[str], out: str | os.PathLike) -> Path:
    """Pack `<id>.cif` files into a byte-reproducible .tar.xz.

    Plain ustar (no pax headers, so no timestamps), members sorted by id, mtime 0, uid/gid 0, empty owner
    names, mode 0644; the tar stream is then xz-compressed (preset 9e; the xz format carries no timestamp).
    """
    root = Path(cif_dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for cid in sorted(set(ids), key=id_key):
            data = (root / f"{cid}.cif").read_bytes()
            info = tarfile.TarInfo(f"{cid}.cif")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    packed = lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                           preset=9 | lzma.PRESET_EXTREME)
    path = Path(out)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(packed)
    os.replace(tmp, path)
    return path


def _archive_bytes(testset_json: Any, archive_name: str, archive: str | os.PathLike | None) -> bytes:
    if archive is not None:
        return Path(archive).read_bytes()
    if not isinstance(testset_json, Mapping):
        beside = Path(testset_json).parent / archive_name
        if Path(testset_json).is_file() and beside.is_file():
            return beside.read_bytes()
    return importlib.resources.files(_PACKAGE_DIR[0]).joinpath(_PACKAGE_DIR[1], archive_name).read_bytes()


def iter_testset_cifs(testset_json: str | os.PathLike | Mapping[str, Any],
                      archive: str | os.PathLike | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (id, CIF bytes) for every entry of a test set, in manifest order, checking each sha256.

    Args:
        testset_json: a manifest dict, a JSON path, or a shipped test-set name ("cod-p21c-small").
        archive: the .tar.xz to read; by default the manifest's "archive" found beside the JSON file, else the
            one shipped in the `manifests` package.

    Raises:
        ValueError: the manifest names no archive, or a file is missing from it or has another sha256.
    """
    ts = load_testset(testset_json)
    name = ts.get("archive")
    if name is None and archive is None:
        raise ValueError("the test set names no archive; pass archive=")
    raw = lzma.decompress(_archive_bytes(testset_json, name, archive))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for entry in ts["entries"]:
            member = members.get(f"{entry['id']}.cif")
            if member is None:
                raise ValueError(f"{entry['id']}.cif is not in the archive")
            data = tar.extractfile(member).read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry["sha256"]:
                raise ValueError(f"sha256 mismatch for {entry['id']}: archive {digest}, manifest {entry['sha256']}")
            yield entry["id"], data

