"""Shard builds: one shard = one pure job; resumable; cluster ranges merged by `finalize`.

Layout of an output directory:
  shard-000000.tar ...           final shards (written to a temporary name, then renamed)
  .entries/shard-000000.json     each finished shard's manifest entry (size, sha256): how a rerun resumes
  .build.json                    the build header: a rerun with another configuration is refused
  manifest.part-A-B.json         a range build's part-manifest (`--shards A:B`)
  manifest.json                  written last: the full manifest
"""
from __future__ import annotations

import functools
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
from tqdm import tqdm

from builder.reflections import PHAI_SET, hkl_hash, phai_hkl
from builder.sample import generate_sample
from builder.strategy import Strategy, canonical_json
from manifests.schema import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    assemble,
    header_of,
    load_manifest,
    member_schema,
    package_version,
    sha256_file,
    shard_name,
    verify_dir,
    write_json_atomic,
)
from manifests.shardio import read_shard, write_shard

__all__ = ["make_header", "n_shards", "parse_range", "build", "build_shard", "finalize", "deep_check",
           "package_version"]

_HEADER_FILE = ".build.json"
_ENTRIES = ".entries"


def make_header(strategy: Strategy, count: int, shard_size: int, fmt: str, seed: int,
                with_reflections: bool = True) -> dict:
    if count <= 0:
        raise ValueError(f"--count must be positive, got {count}")
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")
    hkl = phai_hkl()
    refl = {"name": PHAI_SET, "max_index": 10, "count": int(len(hkl)), "hkl_sha256": hkl_hash(hkl)}
    return {
        "version": MANIFEST_VERSION,
        "package_version": package_version(),
        "format": fmt,
        "strategy": strategy.to_dict(),
        "strategy_id": f"{strategy.strategy_id:016x}",
        "root_seed": int(seed),
        "count": int(count),
        "shard_size": int(shard_size),
        "reflections": refl if with_reflections else None,
        "schema": member_schema(with_reflections),
    }


def n_shards(header: dict) -> int:
    return -(-header["count"] // header["shard_size"])


def parse_range(text: str | None, total: int) -> tuple[int, int]:
    """'A:B' → shards [A, B) (B defaults to the end); None → all."""
    if not text:
        return 0, total
    try:
        a_txt, b_txt = text.split(":")
        a, b = int(a_txt or 0), int(b_txt) if b_txt else total
    except ValueError:
        raise ValueError(f"--shards {text!r}: expected A:B with integers, e.g. 0:10") from None
    if not 0 <= a < b <= total:
        raise ValueError(f"--shards {text!r}: need 0 ≤ A < B ≤ {total} (the build has {total} shards)")
    return a, b


@functools.lru_cache(maxsize=4)
def _strategy(strategy_json: str) -> Strategy:
    return Strategy.from_dict(json.loads(strategy_json))


def shard_samples(header: dict, shard: int) -> list[dict]:
    strat = _strategy(canonical_json(header["strategy"]))
    first = shard * header["shard_size"]
    last = min(first + header["shard_size"], header["count"])
    refl = header["reflections"] is not None
    return [generate_sample(strat, header["root_seed"], i, with_reflections=refl) for i in range(first, last)]


def build_shard(header: dict, shard: int, out: Path) -> dict:
    """Generate and write shard `shard`; return its manifest entry. A pure function of (header, shard)."""
    samples = shard_samples(header, shard)
    name = shard_name(shard, header["format"])
    write_shard(out / name, samples, header["format"])
    entry = {"file": name, "first_index": shard * header["shard_size"], "count": len(samples),
             "bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
    write_json_atomic(out / _ENTRIES / f"{name}.json", entry)
    return entry


def _job(args: tuple[dict, int, str]) -> dict:
    header, shard, out = args
    return build_shard(header, shard, Path(out))


def _kept_entry(out: Path, header: dict, shard: int) -> dict | None:
    """The recorded entry of a finished shard whose file still checks; None means rebuild it."""
    name = shard_name(shard, header["format"])
    rec, f = out / _ENTRIES / f"{name}.json", out / name
    if not (rec.is_file() and f.is_file()):
        return None
    try:
        entry = json.loads(rec.read_text())
    except ValueError:
        return None
    if f.stat().st_size == entry.get("bytes") and sha256_file(f) == entry.get("sha256"):
        return entry
    return None


def _remove_debris(out: Path, name: str) -> None:
    """Temporary files a killed writer of this shard left; only this range's shards, so concurrent range builds
    into one directory never touch each other's files."""
    for debris in [*out.glob(f".{name}.partial-*"), *(out / _ENTRIES).glob(f".{name}.json.partial-*")]:
        debris.unlink(missing_ok=True)


def _claim(out: Path, header: dict) -> None:
    """Record the build header, or refuse when DIR holds a build of another configuration."""
    out.mkdir(parents=True, exist_ok=True)
    (out / _ENTRIES).mkdir(exist_ok=True)
    hf = out / _HEADER_FILE
    existing = None
    if hf.is_file():
        existing = json.loads(hf.read_text())
    elif (out / MANIFEST_NAME).is_file():
        existing = header_of(json.loads((out / MANIFEST_NAME).read_text()))
    elif any(out.glob("shard-*")):
        raise ValueError(f"{out} holds shards of an unknown build; choose another --out or empty it")
    if existing is not None and existing != header:
        diff = sorted(k for k in set(existing) | set(header) if existing.get(k) != header.get(k))
        raise ValueError(f"{out} holds a build of another configuration (differs in {', '.join(diff)}); "
                         "choose another --out, or delete that directory to rebuild it")
    if existing is None:
        write_json_atomic(hf, header)


def build(out: str | Path, header: dict, shard_range: tuple[int, int] | None = None, workers: int = 1,
          progress: bool = True) -> Path:
    """Build shards [A, B) (all by default) into `out`; resume what a killed run left. Returns the manifest
    path written: manifest.json for a whole build, manifest.part-A-B.json for a range."""
    out = Path(out)
    total = n_shards(header)
    a, b = shard_range or (0, total)
    _claim(out, header)
    entries, todo = {}, []
    for s in range(a, b):
        _remove_debris(out, shard_name(s, header["format"]))
        e = _kept_entry(out, header, s)
        if e is None:
            todo.append(s)
        else:
            entries[s] = e
    bar = tqdm(total=b - a, initial=len(entries), unit="shard", disable=not progress,
               desc=f"{header['strategy']['name']} {a}:{b}")
    jobs = [(header, s, str(out)) for s in todo]
    if workers > 1 and len(jobs) > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for e in pool.imap_unordered(_job, jobs):
                entries[e["first_index"] // header["shard_size"]] = e
                bar.update()
    else:
        for job in jobs:
            e = _job(job)
            entries[e["first_index"] // header["shard_size"]] = e
            bar.update()
    bar.close()
    manifest = assemble(header, list(entries.values()))
    if (a, b) == (0, total):
        path = out / MANIFEST_NAME
    else:
        path = out / f"manifest.part-{a:06d}-{b:06d}.json"
    write_json_atomic(path, manifest)
    return path


def finalize(out: str | Path) -> Path:
    """Merge part-manifests into the manifest a one-machine build would have written (byte-identical)."""
    out = Path(out)
    parts = sorted(out.glob("manifest.part-*.json"))
    whole = [out / MANIFEST_NAME] if not parts and (out / MANIFEST_NAME).is_file() else []  # one task (--task 0/1)
    if not parts and not whole:
        raise ValueError(f"{out} has no manifest.part-*.json: build ranges with `phaseforge-build shards --shards A:B`")
    docs = [json.loads(p.read_text()) for p in parts + whole]
    header = header_of(docs[0])
    for p, d in zip(parts, docs):
        if header_of(d) != header:
            raise ValueError(f"{p.name} comes from another configuration than {parts[0].name}; remove the stray part")
    by_shard: dict[int, dict] = {}
    for d in docs:
        for e in d["shards"]:
            by_shard[e["first_index"] // header["shard_size"]] = e
    missing = [s for s in range(n_shards(header)) if s not in by_shard]
    if missing:
        raise ValueError(f"{out}: shards {_ranges(missing)} are not built yet; run them (their --task or "
                         "--shards A:B), then finalize")
    manifest = assemble(header, list(by_shard.values()))
    problems = verify_dir(manifest, out)
    if problems:
        raise ValueError(f"{out}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return out / MANIFEST_NAME


def _ranges(ids: list[int]) -> str:
    spans, start = [], ids[0]
    for x, y in zip(ids, ids[1:] + [None]):
        if y != x + 1:
            spans.append(f"{start}:{x + 1}")
            start = y
    return ", ".join(spans)


def deep_check(path: str | Path, n_samples: int = 8) -> list[str]:
    """Regenerate `n_samples` keys spread over the dataset and compare them bit for bit with the shards."""
    manifest, directory = load_manifest(path)
    strat = Strategy.from_dict(manifest["strategy"])
    if f"{strat.strategy_id:016x}" != manifest["strategy_id"]:
        return [f"strategy id {manifest['strategy_id']} does not match the resolved strategy (other code version?)"]
    picks = sorted(set(np.linspace(0, manifest["count"] - 1, num=min(n_samples, manifest["count"])).astype(int)))
    problems = []
    refl = manifest["reflections"] is not None
    for e in manifest["shards"]:
        want = [i for i in picks if e["first_index"] <= i < e["first_index"] + e["count"]]
        if not want or not (directory / e["file"]).is_file():
            continue
        stored = {int(r["__key__"]): r for r in read_shard(directory / e["file"], manifest["format"])}
        for i in want:
            fresh = generate_sample(strat, manifest["root_seed"], i, with_reflections=refl)
            if i not in stored:
                problems.append(f"{e['file']}: key {i:012d} missing")
                continue
            for k, v in fresh.items():
                a = stored[i].get(k)
                same = a == v if k in ("meta", "__key__") else (
                    a is not None and np.asarray(v).dtype == a.dtype and np.asarray(v).tobytes() == a.tobytes())
                if not same:
                    problems.append(f"{e['file']}: key {i:012d} member {k} differs from a fresh generation")
    return problems
