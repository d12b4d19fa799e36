"""One evaluation run: inputs (test set or CIF folder) -> usable structures -> a method -> one row per structure.

Data flow (DESIGN.md): CIF bytes -> `cif.parse_structure` (standard P 1 21/c 1) -> `cif.reflections` on the
PhAI list (|F|, true phases, observed = d ≥ d_min and not absent) -> the method -> r per run, best per structure.
An input that cannot be used becomes a `skipped` entry with a reason; it never stops the run.

Methods: "model" (the recycling scan of `evaluation.recycle`), "charge-flipping", "random" (seeded signs) and
"true" (the true phases, r = 1). Seeds are per structure, SeedSequence(seed, spawn_key=(purpose, key(id))), so a
structure's result does not depend on the batch, the worker count, the input order or --limit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from builder.reflections import hkl_hash
from builder.sf import sf_plan
from builder.symmetry import space_group_ops
from evaluation.baselines import baseline_row, cf_row, cf_rows, score_phases
from evaluation.charge_flipping import CFConfig
from evaluation.cif import STANDARD_SETTING, Unusable, parse_structure, reflections
from evaluation.measured import calculated_twins, prepare_measured
from evaluation.prepared import Prepared, prepare_each
from evaluation.recycle import ScanInput, pick_runs, scan
from evaluation.testset import (SELECTIONS, id_key, iter_testset_cifs, load_testset, selection_reason,
                                shipped_testset)

__all__ = ["METHODS", "Inputs", "Prepared", "open_testset", "open_cif_dir", "prepare_all", "evaluate",
           "reflection_meta"]

METHODS = ("model", "charge-flipping", "random", "true", "model+cf")
MODEL_METHODS = ("model", "model+cf")  # the methods that run the network (need --checkpoint)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Where the structures come from: (id, bytes or an error) pairs and what the report says about them."""

    items: list[tuple[str, bytes | Unusable]]
    meta: dict[str, Any]  # kind, name, sha256 (and select)


def open_testset(testset: str | os.PathLike) -> Inputs:
    """A committed or user test-set manifest (path or shipped name such as "cod-p21c-small").

    Raises:
        ValueError: unknown test set, unreadable manifest, or an archive that lacks a file or has a wrong hash.
    """
    path = Path(testset)
    try:
        raw = path.read_bytes() if path.is_file() else shipped_testset(str(testset)).read_bytes()
        ts = load_testset(testset)
    except FileNotFoundError:
        raise ValueError(f"no test set {str(testset)!r}: give a manifest .json or a shipped name "
                         "(cod-p21c-small, cod-p21c-large)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"test set {testset} is not valid JSON: {exc}") from None
    if not isinstance(ts, dict) or not isinstance(ts.get("entries"), list):
        raise ValueError(f"test set {testset} has no entries list")
    try:
        items: list[tuple[str, bytes | Unusable]] = list(iter_testset_cifs(testset))
    except (OSError, KeyError, EOFError, lzma.LZMAError, tarfile.TarError) as exc:
        raise ValueError(f"cannot read the CIF archive of {testset}: {exc}") from None
    name = path.stem if path.is_file() else str(testset)
    return Inputs(items, {"kind": "testset", "name": name, "select": ts.get("select"),
                          "sha256": hashlib.sha256(raw).hexdigest(), **_measured_flag(ts)})


def _measured_flag(ts: dict) -> dict[str, bool]:
    """Hook: a measured-data test set (evaluation.measured) is prepared from its reflections."""
    return {"measured": True} if ts.get("measured") else {}


def open_cif_dir(cif_dir: str | os.PathLike, select: str | None = None) -> Inputs:
    """Every `*.cif` of a folder (numeric id order); an unreadable file becomes an `Unusable` item.

    Raises:
        ValueError: not a folder, no .cif files in it, or an unknown selection.
    """
    root = Path(cif_dir)
    if not root.is_dir():
        raise ValueError(f"--cifs {root} is not a directory")
    if select is not None and select not in SELECTIONS:
        raise ValueError(f"unknown selection {select!r}: choose one of {', '.join(sorted(SELECTIONS))}")
    paths = sorted(root.glob("*.cif"), key=lambda p: id_key(p.stem))
    if not paths:
        raise ValueError(f"no .cif files in {root}")
    items: list[tuple[str, bytes | Unusable]] = []
    digest = hashlib.sha256()
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as exc:
            items.append((p.stem, Unusable("unreadable", " ".join(str(exc).split())[:200])))
            digest.update(f"{p.name} unreadable\n".encode())
            continue
        items.append((p.stem, data))
        digest.update(f"{p.name} {hashlib.sha256(data).hexdigest()}\n".encode())
    return Inputs(items, {"kind": "cifs", "name": root.name, "select": select, "sha256": digest.hexdigest()})


def prepare_all(inputs: Inputs, hkl: np.ndarray, d_min: float, select: str | None = None,
                limit: int | None = None) -> tuple[list[Prepared], list[dict[str, str]]]:
    """Ingest the inputs: usable structures, and skipped ones as {id, reason, detail}.

    Args:
        inputs: from `open_testset` / `open_cif_dir`.
        hkl: the reflection list.
        d_min: resolution limit (Å).
        select: apply a test-set cell rule (reason "cell out of the selected range").
        limit: only the first `limit` inputs.
    """
    if inputs.meta.get("measured"):
        return prepare_measured(inputs, hkl, d_min, limit)
    plan = sf_plan(space_group_ops(STANDARD_SETTING), hkl)

    def one(sid: str, data: bytes) -> Prepared:
        ing = parse_structure(data, sid)
        if select is not None and (why := selection_reason(ing.cell6, select)) is not None:
            raise Unusable("cell out of the selected range", why)
        amp, phase, obs = reflections(ing, hkl, d_min, plan)
        if not np.all(np.isfinite(amp[obs])) or float(np.sum(amp[obs].astype(np.float64) ** 2)) <= 0.0:
            raise Unusable("no observed reflections", f"no observed power at d_min = {d_min} A")
        return Prepared.of(ing, amp, phase, obs)

    return prepare_each(inputs.items, one, "ingestion failed", limit)


def _model_cf_rows(prepared: list[Prepared], hkl: np.ndarray, model: Any, scan_cfg: Any, seed: int,
                   cf_config: CFConfig | None, tick: Callable[[], None]) -> list[dict]:
    """Charge flipping started from the network: one attempt per scan start, from its best run by the FOM."""
    rows = []
    inputs = [ScanInput(p.id, p.amp, p.observed) for p in prepared]
    for p, res in zip(prepared, scan(model, hkl, inputs, scan_cfg)):
        fom = getattr(res, scan_cfg.fom)
        starts = np.radians(res.phase_deg[np.arange(len(fom)), np.argmax(fom, axis=1)].astype(np.float64))
        rows.append(cf_row(p, hkl, seed, cf_config, start_phases=starts))
        tick()
    return rows


def _model_rows(prepared: list[Prepared], hkl: np.ndarray, model: Any, scan_cfg: Any,
                tick: Callable[[], None]) -> list[dict]:
    class _Tick:
        def update(self, _n: int) -> None:
            tick()

    inputs = [ScanInput(p.id, p.amp, p.observed) for p in prepared]
    rows = []
    starts, cycles = scan_cfg.start_names, scan_cfg.cycles
    for p, res in zip(prepared, scan(model, hkl, inputs, scan_cfg, progress=_Tick())):
        s_n, c_n, n = res.phase_deg.shape
        r, mpe = score_phases(p, hkl, np.radians(res.phase_deg.reshape(-1, n).astype(np.float64)))
        r, mpe = r.reshape(s_n, c_n), mpe.reshape(s_n, c_n)
        picks = pick_runs(res, r)
        row = {**p.descriptors()}
        b, f = picks["best"], picks[scan_cfg.fom]
        row.update(r=float(r[b]), mpe=float(mpe[b]), best_cycles=cycles[b[1]], best_start=starts[b[0]],
                   fom_cycles=cycles[f[1]], fom_start=starts[f[0]],
                   fom_value=float(getattr(res, scan_cfg.fom)[f]), fom_r=float(r[f]), fom_mpe=float(mpe[f]),
                   confidence_r=float(r[picks["confidence"]]), consistency_r=float(r[picks["consistency"]]))
        row["_r_by_cycle"] = r.max(axis=0)  # (C,) best over starts at each cycle count
        row["_r_zero_by_cycle"] = r[0] if scan_cfg.zero_start else None
        rows.append(row)
    return rows


def evaluate(method: str, prepared: Sequence[Prepared], hkl: np.ndarray, *, seed: int = 0, workers: int = 1,
             model: Any = None, scan_cfg: Any = None, cf_config: CFConfig | None = None,
             progress: Any = None) -> tuple[list[dict], list[dict[str, str]], float]:
    """`_evaluate`; on measured amplitudes (`Prepared.amp_calc` set) also on the calculated ones, as r_calc."""
    prepared = list(prepared)
    rows, failed, seconds = _evaluate(method, prepared, hkl, seed=seed, workers=workers, model=model,
                                      scan_cfg=scan_cfg, cf_config=cf_config, progress=progress)
    if not prepared or prepared[0].amp_calc is None:
        return rows, failed, seconds
    calc, _, _ = _evaluate(method, calculated_twins(prepared), hkl, seed=seed, workers=workers, model=model,
                           scan_cfg=scan_cfg, cf_config=cf_config)
    by_id, extra = {r["id"]: r for r in calc}, {p.id: p.completeness for p in prepared}
    for row in rows:
        c = by_id.get(row["id"], {})
        row.update(r_calc=c.get("r"), mpe_calc=c.get("mpe"), completeness=extra[row["id"]])
    return rows, failed, seconds


def _evaluate(method: str, prepared: Sequence[Prepared], hkl: np.ndarray, *, seed: int = 0, workers: int = 1,
              model: Any = None, scan_cfg: Any = None, cf_config: CFConfig | None = None,
              progress: Any = None) -> tuple[list[dict], list[dict[str, str]], float]:
    """Run a method over prepared structures.

    Args:
        method: one of METHODS.
        prepared: from `prepare_all` on the same `hkl`.
        hkl: the reflection list.
        seed: root seed (random signs, charge-flipping starts; the scan takes `scan_cfg.seed`).
        workers: processes for charge flipping.
        model: a PhAINet in eval mode (method "model").
        scan_cfg: `evaluation.recycle.ScanConfig` (method "model").
        cf_config: `CFConfig` for charge flipping (None: its defaults).
        progress: optional tqdm-like object, `update(1)` per structure.

    Returns:
        (rows in input order, failed structures as {id, reason, detail}, wall seconds of the method).

    Raises:
        ValueError: unknown method, or a model method without model / scan config.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")

    def tick() -> None:
        if progress is not None:
            progress.update(1)

    t0 = time.perf_counter()
    prepared = list(prepared)
    if method == "model":
        if model is None or scan_cfg is None:
            raise ValueError("method 'model' needs a model and a scan config")
        rows = _model_rows(prepared, hkl, model, scan_cfg, tick)
    elif method == "model+cf":
        if model is None or scan_cfg is None:
            raise ValueError("method 'model+cf' needs a model and a scan config")
        rows = _model_cf_rows(prepared, hkl, model, scan_cfg, seed, cf_config, tick)
    elif method == "charge-flipping":
        rows = cf_rows(prepared, hkl, seed, workers, cf_config, tick)
    else:
        rows = []
        for p in prepared:
            rows.append(baseline_row(method, p, hkl, seed))
            tick()
    failed = [{"id": r["id"], "reason": f"{method} failed", "detail": r["error"]} for r in rows if "error" in r]
    return [r for r in rows if "error" not in r], failed, time.perf_counter() - t0


def reflection_meta(hkl: np.ndarray) -> dict[str, Any]:
    """How the report names its reflection list."""
    return {"reflections": len(hkl), "hkl_sha256": hkl_hash(hkl)}
