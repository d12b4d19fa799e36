"""The measured-data test set `cod-p21c-measured`: selection, manifest + archive, and its preparation for `run`.

Selection: every space-group-14 CIF of a folder that carries its measured reflections (embedded
`_shelx_hkl_file`, or a `_refln_` loop of F²_meas / intensity_meas / F_meas) and whose model ingests like any
other test-set structure (`evaluation.cif`). The CIF bytes are shipped unchanged in a byte-reproducible .tar.xz
(`evaluation.testset.write_archive`), the manifest records provenance and sha256 like the other test sets, plus
per entry what the measurements are.

Scoring (`prepare_measured`, used by `evaluation.run` when a manifest says "measured": true): the measured data
are reduced (`evaluation.reduce`; the setting change is the one CIF ingestion chose for the model), put on the
network's reflection list in P 1 21/c 1, and a reflection is observed when it was measured, is not absent and
has d ≥ d_min. The true phases are those of the deposited model at those reflections; |F| comes from the
measurements. Each structure also carries the model's calculated |F| on the same reflections (`amp_calc`), so a
run reports r from measured amplitudes beside r from calculated ones.

Build (from the repository root):  python -m evaluation.measured --cifs DIR --out manifests/testsets
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from builder.sf import sf_plan
from builder.symmetry import space_group_ops
from evaluation.cif import STANDARD_SETTING, Unusable, parse_structure, reflections
from evaluation.prepared import Prepared, prepare_each
from evaluation.reduce import reduce_measured
from evaluation.reflections_io import read_input
from evaluation.solve import network_view
from evaluation.testset import build_testset, write_archive, write_testset

__all__ = ["NAME", "ARCHIVE", "measured_reason", "build_measured_testset", "prepare_measured", "calculated_twins"]

NAME = "cod-p21c-measured"
ARCHIVE = f"{NAME}.tar.xz"


def _measured_info(data: bytes, cid: str) -> dict[str, Any]:
    meas = read_input(f"{cid}.cif", data=data)
    red = reduce_measured(meas)
    if red.spacegroup.number != 14:
        raise Unusable("another space group", red.spacegroup.xhm())
    rep = red.report
    return {"kind": meas.kind, "source": meas.notes[0] if meas.notes else "", "n_reflections": int(len(meas.hkl)),
            "n_unique": rep["merging"]["n_unique"], "r_int": rep["merging"]["r_int"],
            "d_min": rep["resolution"]["d_min"], "sigma": rep["sigma"], "wavelength": meas.wavelength,
            "completeness_1A": rep["resolution"]["completeness_to_network_d_min"],
            "absence_violations": rep["absences"]["n_violations"]}


def measured_reason(data: bytes, cid: str) -> tuple[str | None, dict[str, Any] | None]:
    """(None, measured info) for a CIF that belongs to the set, else (the reason it does not, None)."""
    text = data.decode("utf-8", errors="replace")
    if "_shelx_hkl_file" not in text and not any(t in text for t in ("_refln_F_squared_meas",
                                                                       "_refln_intensity_meas", "_refln_F_meas")):
        return "no measured reflections", None
    try:
        return None, _measured_info(data, cid)
    except Unusable as exc:
        return exc.reason, None
    except ValueError as exc:
        return f"measured data unusable: {' '.join(str(exc).split())[:120]}", None


def build_measured_testset(cif_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Select, write `cod-p21c-measured.json` and its archive into `out_dir`; returns the manifest."""
    out = Path(out_dir)

    def accept(ing: Any, data: bytes) -> tuple[str | None, dict]:
        why, info = measured_reason(data, ing.id)
        return why, ({} if info is None else {"measured": info})

    manifest = build_testset(cif_dir, "p21c-measured", archive=ARCHIVE, accept=accept)
    manifest["measured"] = True
    write_archive(cif_dir, [e["id"] for e in manifest["entries"]], out / ARCHIVE)
    write_testset(manifest, out / f"{NAME}.json")
    return manifest


def _prepare_one(sid: str, data: bytes, hkl: np.ndarray, d_min: float, plan: Any) -> Prepared:
    ing = parse_structure(data, sid)
    red = reduce_measured(read_input(f"{sid}.cif", data=data), transform=ing.transform)
    if not np.allclose(red.frame.cell6, ing.cell6, rtol=5e-3, atol=0.1):  # res CELL vs CIF cell: rounding
        raise Unusable("setting mismatch", "the data and the model give different P 1 21/c 1 cells")
    amp_meas, obs_meas = network_view(red, hkl, d_min)
    amp_calc, phase, obs_calc = reflections(ing, hkl, d_min, plan)
    observed = obs_meas & obs_calc
    if float(np.sum(amp_meas[observed] ** 2)) <= 0:
        raise Unusable("no observed reflections", f"no measured power at d_min = {d_min} A")
    return Prepared.of(ing, amp_meas, phase, observed, amp_calc=amp_calc.astype(np.float64),
                       completeness=float(observed.sum() / max(1, obs_calc.sum())))


def prepare_measured(inputs: Any, hkl: np.ndarray, d_min: float,
                     limit: int | None = None) -> tuple[list[Prepared], list[dict[str, str]]]:
    """Like `evaluation.run.prepare_all`, for a measured test set (module docstring)."""
    plan = sf_plan(space_group_ops(STANDARD_SETTING), hkl)
    return prepare_each(inputs.items, lambda sid, data: _prepare_one(sid, data, hkl, d_min, plan),
                        "measured data unusable", limit)


def calculated_twins(prepared: list[Any]) -> list[Any]:
    """The same structures with the model's calculated |F| on the same observed reflections."""
    return [dataclasses.replace(p, amp=p.amp_calc, amp_calc=None) for p in prepared]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=f"Build {NAME}.json and {ARCHIVE} from a folder of COD CIFs.")
    ap.add_argument("--cifs", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="folder for the manifest and the archive")
    args = ap.parse_args(argv)
    m = build_measured_testset(args.cifs, args.out)
    sha = hashlib.sha256((args.out / ARCHIVE).read_bytes()).hexdigest()
    print(f"{m['count']} structures -> {args.out / (NAME + '.json')}, {args.out / ARCHIVE} (sha256 {sha[:16]}…); "
          f"skipped: {m['skipped_counts']}")


if __name__ == "__main__":
    main()
