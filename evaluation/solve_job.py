"""One `phaseforge-eval solve` job: read -> reduce -> check the method -> phase -> write, in that order.

Every check that can refuse the input runs before anything is written under --out (DESIGN.md data flow: measured
.hkl + .ins | CIF with reflections -> reduce -> network / CF / both -> phases in the input's setting -> files).
An --out that already holds other results is refused unless --overwrite; one that holds the solve.json of the
same inputs and settings is left as it is (a rerun resumes: nothing to do).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gemmi

from evaluation.outputs import write_solution
from evaluation.reduce import NETWORK_D_MIN, reduce_measured
from evaluation.reflections_io import read_input
from evaluation.solve import check_method, move_solution, score_against_model, solve_reduced
from evaluation.staging import publish, stage

__all__ = ["solve_job", "default_method", "peak_count"]


def default_method(checkpoint: Path | None) -> str:
    """charge-flipping without a checkpoint, all (pick by figure of merit) with one."""
    return "charge-flipping" if checkpoint is None else "all"


def peak_count(sfac: tuple[str, ...], unit: tuple[float, ...], n_ops: int, volume: float) -> int:
    """Q peaks to list: 1.3 × the non-H atoms of the asymmetric unit (from SFAC/UNIT, else ~18 Å³ per atom)."""
    heavy = sum(u for s, u in zip(sfac, unit) if s.upper() not in ("H", "D")) if len(sfac) == len(unit) else 0
    per_asu = heavy / n_ops if heavy > 0 else volume / (18.0 * n_ops)
    return int(max(10, round(1.3 * per_asu)))


def _out_state(out: Path, inputs: list[dict], settings: dict[str, Any], overwrite: bool) -> str:
    """"new", "same" (the same job already wrote here) or "overwrite"; ValueError for occupied folders."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return "new"
    prev = out / "solve.json"
    if prev.is_file():
        try:
            old = json.loads(prev.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("inputs") == inputs and old.get("settings") == settings:
            return "same"
    if overwrite:
        return "overwrite"
    names = sorted(p.name for p in out.iterdir())
    raise ValueError(f"--out {out} already holds other results ({', '.join(names[:4])}"
                     f"{', ...' if len(names) > 4 else ''}); choose another folder or pass --overwrite")


def _load_model(checkpoint: Path, device: str) -> tuple[Any, dict]:
    from training.checkpoint import load_model

    loaded = load_model(checkpoint, device)
    return loaded.model, loaded.info


def _method_entry(res: Any, red: Any, model_cif: bytes | None) -> dict[str, Any]:
    entry = {"fom": {"name": res.fom_name, "value": round(float(res.fom), 6)},
             "skewness": None if res.skewness is None else round(float(res.skewness), 6),
             "seconds": round(res.seconds, 3), "phased": int(res.phased.sum()), **res.details}
    if model_cif is not None:
        entry["against_model"] = score_against_model(red, model_cif, res.phase)
    return entry


def solve_job(input_path: Path, out: Path, *, method: str | None = None, checkpoint: Path | None = None,
              fmt: str = "auto", hklf: int | None = None, cell: tuple[float, ...] | None = None,
              spacegroup: str | None = None, block: str | None = None, d_min: float = NETWORK_D_MIN,
              seed: int = 0, device: str = "cpu", n_peaks: int | None = None,
              overwrite: bool = False) -> tuple[dict[str, Any], str]:
    """Run one solve job; returns (solve.json dict, state: "new" | "same" | "overwrite").

    Raises:
        ValueError: any bad input (nothing has been written under `out` then).
    """
    if not d_min > 0:
        raise ValueError(f"--d-min must be > 0, got {d_min}")
    if n_peaks is not None and n_peaks < 1:
        raise ValueError(f"--peaks must be >= 1, got {n_peaks}")
    method = method or default_method(checkpoint)
    meas = read_input(input_path, fmt=fmt, hklf=hklf, block=block)
    red = reduce_measured(meas, cell=cell, spacegroup=spacegroup)
    check_method(method, red, checkpoint is not None)
    uses_net = method in ("model", "model+cf") or (method == "all" and red.spacegroup.number == 14)
    model, ck_info = (_load_model(checkpoint, device) if checkpoint is not None and uses_net else (None, None))
    settings = {"method": method, "checkpoint": None if ck_info is None else ck_info["sha256"], "seed": seed,
                "d_min": d_min, "format": fmt, "hklf": hklf, "cell": None if cell is None else list(cell),
                "spacegroup": spacegroup, "block": block, "peaks": n_peaks}
    inputs = [dict(s) for s in meas.sources]
    state = _out_state(Path(out), inputs, settings, overwrite)
    if state == "same":
        return json.loads((Path(out) / "solve.json").read_text(encoding="utf-8")), state
    from evaluation.recycle import ScanConfig

    results, picked = solve_reduced(red, method, model=model, scan_cfg=ScanConfig(seed=seed), seed=seed,
                                    d_min=d_min)
    best = next(r for r in results if r.method == picked)
    phase, origin = best.phase, "the solution's own (one of the equivalent origins" + (
        ")" if red.spacegroup.is_centrosymmetric() else "; either hand: |F| cannot tell it from its mirror image)")
    methods = {r.method: _method_entry(r, red, meas.model) for r in results}
    if meas.model is not None:
        fit = methods[picked]["against_model"]  # scored once, with the other methods
        phase = move_solution(red, phase, fit["origin_shift"], fit["inverted"])
        origin = (f"{'inverted and ' if fit['inverted'] else ''}shifted by {fit['origin_shift']} to overlay the "
                  "deposited model")
    n_ops = len(red.spacegroup.operations())
    peaks = n_peaks or peak_count(meas.sfac, meas.unit, n_ops, float(gemmi.UnitCell(*red.cell6).volume))
    summary = {"inputs": inputs, "settings": settings, "checkpoint": ck_info, "input_notes": list(meas.notes),
               "reduction": red.report, "warnings": list(red.warnings), "picked": picked,
               "pick_rule": "the only method run" if len(results) == 1 else
               "highest E-map skewness over the reflections every method phased",
               "methods": methods, "origin": origin}
    tmp = stage(out)
    summary = write_solution(tmp, red, phase, summary, method=picked, n_peaks=peaks,
                             wavelength=meas.wavelength, sfac=meas.sfac, unit=meas.unit)
    publish(tmp, out)
    return summary, state
