"""Shard builds: one shard = one pure job; resumable; concurrent builders cooperate; ranges merged by `finalize`.

Layout of an output directory:
  shard-000000.tar ...              final shards (.tar, .tar.gz or .h5; written to a temporary name, then renamed)
  .entries/shard-000000.tar.json    each finished shard's manifest entry (size, sha256): how a rerun resumes
  .build.json                       the build header: a build of another configuration is refused
  .locks/                           claims: the directory (header check) and each shard while it is written
  manifest.part-A-B.json            a range build's part-manifest (`--shards A:B`)
  manifest.json                     written last: the full manifest

`--on-the-fly` writes only `manifest.json`, with the header a build of the same options records, no shards, and
the on-the-fly marker (probe samples' hash): the loader generates shard i through `builder.shardgen`, the same
entry point `build_shard` writes from. The same command without `--on-the-fly` materialises that directory.

Any number of processes, on one host or on hosts that share the filesystem, may run the same command (or
ranges of it) into one directory at once: each shard is written by whoever claims it first, the others skip
it and, before writing their manifest, wait for that claim and take the finished entry (or build the shard
themselves when its writer died). Every process ends with the manifest a single build writes.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from builder.capacity import check_capacity, sample_cost
from builder.reflections import PHAI_SET, hkl_hash, phai_hkl
from builder.shardgen import generate_shard, probe, samples_of
from builder.strategy import Strategy
from builder.verify import DeepCheck, deep_check  # noqa: F401 - re-exported (they lived here)
from manifests.locks import Claim, remove_debris
from manifests.schema import (
    COMPRESSIONS,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    Manifest,
    ShardEntry,
    member_schema,
    package_version,
    sha256_file,
    verify_dir,
    write_json_atomic,
)
from manifests.shardio import write_shard

__all__ = ["make_header", "parse_range", "samples_of", "build", "build_shard", "write_on_the_fly", "BuildReport",
           "finalize", "deep_check", "DeepCheck"]

_HEADER_FILE = ".build.json"
_ENTRIES = ".entries"
_PROBE = 8  # samples generated up front to measure memory and disk per sample


def make_header(strategy: Strategy, count: int, shard_size: int, fmt: str, seed: int,
                with_reflections: bool = True, compression: str | None = None) -> Manifest:
    """The manifest header (no shards yet) of a build; ValueError for values that cannot make one."""
    for name, value, low in (("--count", count, 1), ("--shard-size", shard_size, 1), ("--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if compression not in COMPRESSIONS.get(fmt, (None,)):
        raise ValueError(f"--compress {compression} is not available for --format {fmt} "
                         f"(choose from {', '.join(c for c in COMPRESSIONS[fmt] if c)})")
    hkl = phai_hkl()
    refl = {"name": PHAI_SET, "max_index": 10, "count": int(len(hkl)), "hkl_sha256": hkl_hash(hkl)}
    header = Manifest(
        version=MANIFEST_VERSION, package_version=package_version(), format=fmt, strategy=strategy.to_dict(),
        strategy_id=f"{strategy.strategy_id:016x}", root_seed=int(seed), count=int(count),
        shard_size=int(shard_size), reflections=refl if with_reflections else None,
        schema=member_schema(with_reflections), compression=compression)
    return header


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


def build_shard(header: Manifest, shard: int, out: Path) -> ShardEntry:
    """Generate and write shard `shard`; return its manifest entry. A pure function of (header, shard)."""
    samples = generate_shard(header, shard)
    name = header.shard_name(shard)
    raw = write_shard(out / name, samples, header.format, header.compression) or (None, None)
    entry = ShardEntry(file=name, first_index=header.shard_range(shard).start, count=len(samples),
                       bytes=(out / name).stat().st_size, sha256=sha256_file(out / name),
                       raw_bytes=raw[0], raw_sha256=raw[1])
    write_json_atomic(out / _ENTRIES / f"{name}.json", entry.to_dict(), allow_nan=False)
    return entry


def _kept_entry(out: Path, header: Manifest, shard: int) -> ShardEntry | None:
    """The recorded entry of a finished shard whose file still checks; None means (re)build it."""
    name = header.shard_name(shard)
    rec, f = out / _ENTRIES / f"{name}.json", out / name
    if not (rec.is_file() and f.is_file()):
        return None
    try:
        entry = ShardEntry.from_dict(json.loads(rec.read_text()), rec)
    except (ValueError, TypeError):
        return None
    if entry.file == name and f.stat().st_size == entry.bytes and sha256_file(f) == entry.sha256:
        return entry
    return None


def _build_claimed(header: Manifest, shard: int, out: Path) -> tuple[int, ShardEntry, str]:
    """With the shard's claim held: keep it if it checks, else clear dead writers' debris and build it."""
    entry = _kept_entry(out, header, shard)  # another process may have finished it since we looked
    if entry is not None:
        return shard, entry, "kept"
    name = header.shard_name(shard)
    remove_debris(out, f".{name}.partial-*", claimed=True)
    remove_debris(out / _ENTRIES, f".{name}.json.partial-*", claimed=True)
    return shard, build_shard(header, shard, out), "built"


def _job(args: tuple[Manifest, int, str]) -> tuple[int, ShardEntry | None, str]:
    """Keep, build, or (claimed by another process) report "busy"."""
    header, shard, out = args
    out = Path(out)
    entry = _kept_entry(out, header, shard)
    if entry is not None:
        return shard, entry, "kept"
    claim = Claim(out, header.shard_name(shard))
    if not claim.try_acquire():
        return shard, None, "busy"
    try:
        return _build_claimed(header, shard, out)
    finally:
        claim.release()


def _wait_for(header: Manifest, shard: int, out: Path, bar) -> tuple[int, ShardEntry, str]:
    """A shard another process claimed: wait for its claim, then take its entry (or build it if it died)."""
    claim = Claim(out, header.shard_name(shard))
    if not claim.try_acquire():
        bar.set_postfix_str(f"waiting for shard {shard} ({claim.holder()})")
        claim.acquire()
    try:
        s, entry, status = _build_claimed(header, shard, out)
        return s, entry, "waited" if status == "kept" else status
    finally:
        claim.release()


def _claim_directory(out: Path, header: Manifest) -> None:
    """Record the build header, or refuse when `out` holds a build of another configuration. Under the
    directory's claim, so two builds started together cannot both record theirs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / _ENTRIES).mkdir(exist_ok=True)
    with Claim(out, "directory"):
        remove_debris(out, ".*.partial-*")  # temporary files of dead writers on this host
        existing = _recorded_header(out)
        _refuse_another(out, existing, header.header())
        if existing is None:
            write_json_atomic(out / _HEADER_FILE, header.header(), allow_nan=False)


def _refuse_another(out: Path, existing: dict | None, want: dict) -> None:
    if existing is not None and existing != want:
        diff = sorted(k for k in set(existing) | set(want) if existing.get(k) != want.get(k))
        raise ValueError(f"{out} holds a build of another configuration (differs in {', '.join(diff)}); "
                         "choose another --out, or delete that directory to rebuild it")


def _recorded_header(out: Path) -> dict | None:
    """The header recorded in `out` (`.build.json`, else `manifest.json`), without the on-the-fly marker: an
    on-the-fly manifest and its materialised build are one configuration."""
    for f in (out / _HEADER_FILE, out / MANIFEST_NAME):
        if f.is_file():
            try:
                m = Manifest.from_dict(json.loads(f.read_text()), f, header_only=True)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{f} is unreadable ({exc}); choose another --out, or delete that directory "
                                 "to rebuild it") from None
            return m.materialised().header()
    if any(out.glob("shard-*")):
        raise ValueError(f"{out} holds shards of an unknown build; choose another --out or empty it")
    return None


def write_on_the_fly(out: str | Path, header: Manifest) -> tuple[Path, str]:
    """Write only `out/manifest.json`, marked on the fly; returns (path, "written" | "unchanged" | "materialised").

    A directory that already holds this build materialised is kept as it is; one that a materialising build is
    filling, or that holds another configuration, is refused (ValueError)."""
    out = Path(out)
    cost = sample_cost(header, samples_of(header, header.shard_range(0)[:_PROBE]))
    check_capacity(header, out, 0, header.n_shards, 1, dataclasses.replace(cost, disk=0.0))  # a loader worker
    _refuse_another(out, _recorded_header(out), header.header())             # holds a shard while it is read
    path = out / MANIFEST_NAME
    old = json.loads(path.read_text()) if path.is_file() else None  # checked by _recorded_header
    if old is not None and "on_the_fly" not in old:
        return path, "materialised"
    if (out / _HEADER_FILE).is_file():
        raise ValueError(f"{out}: a materialising build of it is under way or was interrupted; rerun that "
                         "command without --on-the-fly to finish it, or choose another --out")
    doc = dataclasses.replace(header, on_the_fly=probe(header)).to_dict()
    if old == doc:
        return path, "unchanged"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc, allow_nan=False)
    return path, "written"


@dataclass(frozen=True)
class BuildReport:
    path: Path     # the manifest written: manifest.json, or manifest.part-A-B.json for a range
    built: int     # shards this process wrote
    kept: int      # shards found finished (a resumed build)
    waited: int    # shards another process was writing, taken when it finished

    def summary(self) -> str:
        by_others = f", {self.waited} written by another process" if self.waited else ""
        return f"wrote {self.path} ({self.built} shards built, {self.kept} kept{by_others})"


def _run_jobs(jobs: list, workers: int):
    """Results of `_job` over `jobs`, in a pool when workers > 1. After a failure (a full disk, say) no new
    shard starts; the shards in flight finish or fail by themselves (so their writers remove their temporary
    files), the pool closes normally, and the first error is raised. (Terminating a pool mid-task leaves
    debris and, measured on CPython 3.11, can deadlock.)"""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_job, jobs)
        return
    n = min(workers, len(jobs))
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    pool = ctx.Pool(n)
    pending, todo, failure, clean = deque(), iter(jobs), None, False
    try:
        while True:
            while failure is None and len(pending) < 2 * n and (job := next(todo, None)) is not None:
                pending.append(pool.apply_async(_job, (job,)))
            if not pending:
                break
            try:
                result = pending.popleft().get()
            except Exception as exc:  # noqa: BLE001 - re-raised below, once the pool is idle
                failure = failure or exc
                continue
            if failure is None:
                yield result
        clean = True
    finally:
        if clean:
            pool.close()
            pool.join()
        else:  # the consumer stopped (an interrupt): nothing more to wait for
            pool.terminate()
    if failure is not None:
        raise failure


def _clean_debris(out: Path) -> None:
    """Remove the temporary files of shards nobody holds: at the end of a build (debris beside shards that were
    kept), and after an error or an interrupt (pool workers terminated mid-write cannot remove their own)."""
    for debris in sorted(out.glob(".shard-*.partial-*")):
        name = debris.name[1:].rsplit(".partial-", 1)[0]
        claim = Claim(out, name)
        if claim.try_acquire():
            try:
                remove_debris(out, f".{name}.partial-*", claimed=True)
                remove_debris(out / _ENTRIES, f".{name}.json.partial-*", claimed=True)
            finally:
                claim.release()


def build(out: str | Path, header: Manifest, shard_range: tuple[int, int] | None = None, workers: int = 1,
          progress: bool = True) -> BuildReport:
    """Build shards [A, B) (all by default) into `out`; resume what a killed run left; cooperate with other
    processes building into `out`. Refuses (ValueError) what cannot fit before anything is written."""
    out = Path(out)
    a, b = shard_range or (0, header.n_shards)
    if workers < 1:
        raise ValueError(f"--workers must be ≥ 1, got {workers}")
    first = header.shard_range(a)
    check_capacity(header, out, a, b, workers, sample_cost(header, samples_of(header, first[:_PROBE])),
                   _ENTRIES)
    _claim_directory(out, header)
    entries: dict[int, ShardEntry] = {}
    counts = {"built": 0, "kept": 0, "waited": 0}
    n_samples = len(range(first.start, min(b * header.shard_size, header.count)))
    bar = tqdm(total=n_samples, unit="sample", unit_scale=n_samples >= 100_000, disable=not progress,
               desc=f"{header.strategy['name']} {a}:{b}")
    try:
        busy = []
        for s, e, status in _run_jobs([(header, s, str(out)) for s in range(a, b)], workers):
            if status == "busy":
                busy.append(s)
                continue
            entries[s], counts[status] = e, counts[status] + 1
            bar.update(e.count)
        for s in sorted(busy):
            _, e, status = _wait_for(header, s, out, bar)
            entries[s], counts[status] = e, counts[status] + 1
            bar.update(e.count)
    except BaseException:
        _clean_debris(out)
        raise
    finally:
        bar.close()
    _clean_debris(out)
    path = out / (MANIFEST_NAME if (a, b) == (0, header.n_shards) else f"manifest.part-{a:06d}-{b:06d}.json")
    write_json_atomic(path, header.with_shards(entries.values()).to_dict(), allow_nan=False)
    return BuildReport(path=path, **counts)


def finalize(out: str | Path, workers: int = 1) -> Path:
    """Merge part-manifests into the manifest a one-machine build would have written (byte-identical).

    Every shard is checked against its part's size and sha256 first, hashed by `workers` threads."""
    out = Path(out)
    parts = sorted(out.glob("manifest.part-*.json"))
    whole = [out / MANIFEST_NAME] if not parts and (out / MANIFEST_NAME).is_file() else []  # one task (--task 0/1)
    if not parts and not whole:
        raise ValueError(f"{out} has no manifest.part-*.json: build ranges with `phaseforge-build shards --shards A:B`")
    docs = []
    for p in parts + whole:
        try:
            docs.append(Manifest.from_dict(json.loads(p.read_text()), p))
        except ValueError as exc:
            raise ValueError(f"{p.name} is unreadable ({exc}); rerun the range build that wrote it") from None
    header = docs[0].with_shards(())
    for p, d in zip(parts, docs):
        if d.header() != header.header():
            raise ValueError(f"{p.name} comes from another configuration than {parts[0].name}; remove the stray part")
    by_shard = {header.index_of(e): e for d in docs for e in d.shards}
    missing = [s for s in range(header.n_shards) if s not in by_shard]
    if missing:
        raise ValueError(f"{out}: shards {_ranges(missing)} are not built yet; run them (their --task or "
                         "--shards A:B), then finalize")
    manifest = header.with_shards(by_shard.values())
    problems = verify_dir(manifest, out, workers)
    if problems:
        raise ValueError(f"{out}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    write_json_atomic(out / MANIFEST_NAME, manifest.to_dict(), allow_nan=False)
    return out / MANIFEST_NAME


def _ranges(ids: list[int]) -> str:
    spans, start = [], ids[0]
    for x, y in zip(ids, ids[1:] + [None]):
        if y != x + 1:
            spans.append(f"{start}:{x + 1}")
            start = y
    return ", ".join(spans)
