"""Reports: report.json, results.csv, report.md (+ plots) of one run, and `compare` of several runs.

report.json is deterministic: sorted keys, floats rounded to 6 decimals, no timestamps, no absolute paths, no
timings (those go to timing.json, the one file that differs between two identical runs). Summaries follow
DESIGN.md "Metrics": n, f(r ≥ 0.8), median r, split by compound class, by occupied special positions and by
cell-volume bins; a model run adds the figure-of-merit pick and r per cycle count, a charge-flipping run the
raw (unsymmetrised) r.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.charge_flipping import ORIGIN_AMBIGUOUS
from evaluation.cif import DEFAULT_UISO
from evaluation.metrics import SOLVED_R, summarise
from evaluation.staging import publish, stage
from manifests.schema import dumps

__all__ = ["REPORT_VERSION", "VOLUME_BINS", "block", "build_report", "write_run", "last_line", "load_report",
           "read_results", "compare_reports", "write_compare"]

REPORT_VERSION = 1
VOLUME_BINS = (0.0, 400.0, 600.0, 800.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 6000.0, math.inf)  # Å³
CLASS_ORDER = ("organic", "s-block", "d-block", "other")
_COMMON = ["id", "volume", "class", "n_special", "n_atoms", "n_u_fallback", "r", "mpe"]
COLUMNS = {
    "model": _COMMON + ["best_cycles", "best_start", "fom_cycles", "fom_start", "fom_value", "fom_r", "fom_mpe",
                        "confidence_r", "consistency_r"],
    "charge-flipping": _COMMON + ["r_raw", "mpe_raw", "r_sym", "converged", "cf_cycles", "cf_cycles_run", "r_cf",
                                  "origin_margin"],
    "random": _COMMON,
    "true": _COMMON,
}
COLUMNS["model+cf"] = COLUMNS["charge-flipping"]
MEASURED_COLUMNS = ["r_calc", "mpe_calc", "completeness"]  # measured-data test sets (evaluation.measured)


def _f(x: Any, nd: int = 6) -> Any:
    """JSON-safe rounded float (NaN/inf -> None)."""
    if x is None:
        return None
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


def _summary(r: Sequence[float]) -> dict[str, Any]:
    s = summarise(np.asarray(r, dtype=np.float64))
    return {"n": s["n"], "n_solved": int(np.sum(np.asarray(r) >= SOLVED_R)), "f_solved": _f(s["f_solved"]),
            "median_r": _f(s["median_r"])}


def _bin_label(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}"


def block(rows: Sequence[Mapping[str, Any]], key: str = "r") -> dict[str, Any]:
    """Overall summary of `key` and its splits by class, special positions and volume bins."""
    r = [row[key] for row in rows]
    out = _summary(r)
    classes = [c for c in CLASS_ORDER if any(row["class"] == c for row in rows)]
    out["by_class"] = {c: _summary([row[key] for row in rows if row["class"] == c]) for c in classes}
    specials = sorted({int(row["n_special"]) for row in rows})
    out["by_special"] = {str(k): _summary([row[key] for row in rows if int(row["n_special"]) == k])
                         for k in specials}
    bins = []
    for lo, hi in zip(VOLUME_BINS[:-1], VOLUME_BINS[1:]):
        sel = [row[key] for row in rows if lo <= row["volume"] < hi]
        if sel:
            bins.append({"bin": _bin_label(lo, hi), "lo": lo, "hi": None if math.isinf(hi) else hi,
                         **_summary(sel)})
    out["by_volume"] = bins
    return out


def _by_cycles(rows: Sequence[Mapping[str, Any]], cycles: Sequence[int]) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(cycles):
        best = _summary([row["_r_by_cycle"][i] for row in rows])
        item = {"cycles": c, "best_start": best}
        if rows and rows[0].get("_r_zero_by_cycle") is not None:
            item["zero_start"] = _summary([row["_r_zero_by_cycle"][i] for row in rows])
        out.append(item)
    return out


def build_report(method: str, rows: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, str]],
                 inputs: Mapping[str, Any], settings: Mapping[str, Any],
                 checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report.json dict of a run (headline numbers at the top level, the rest under named keys)."""
    main = block(rows, "r")
    rep: dict[str, Any] = {
        "version": REPORT_VERSION, "method": method, "checkpoint": checkpoint, "inputs": inputs,
        "settings": dict(settings), "solved_threshold": SOLVED_R,
        "n_inputs": len(rows) + len(skipped), "n": main["n"], "n_skipped": len(skipped),
        "skipped_counts": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped": [dict(s) for s in skipped],
        **{k: main[k] for k in ("n_solved", "f_solved", "median_r", "by_class", "by_special", "by_volume")},
        "median_mpe": _f(np.median([row["mpe"] for row in rows])) if rows else None,
        "u_fallback": _u_fallback(rows),
    }
    if method == "model":
        rep["selection"] = "best run by r over all (start, cycles) (paper protocol; uses the true phases)"
        rep["fom"] = {"name": settings.get("fom"), **block(rows, "fom_r"),
                      "alternatives": {k: _summary([row[f"{k}_r"] for row in rows])
                                       for k in ("confidence", "consistency")}}
        rep["by_cycles"] = _by_cycles(rows, settings["cycles"])
    elif method in ("charge-flipping", "model+cf"):
        rep["selection"] = "polished: symmetrised to P 1 21/c 1, then low-density elimination"
        rep["raw"] = block(rows, "r_raw")
        rep["symmetrised"] = _summary([row["r_sym"] for row in rows])
        rep["converged"] = int(sum(bool(row["converged"]) for row in rows))
        rep["convergence"] = _convergence(rows, settings)
    if rows and rows[0].get("r_calc") is not None:
        rep["calculated"] = _measured_block(rows)
    return rep


def _u_fallback(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sites whose CIF gave no usable U (absent, zero, negative: evaluation.cif.DEFAULT_UISO used instead)."""
    hit = [row for row in rows if row.get("n_u_fallback", 0) > 0]
    return {"structures": len(hit), "sites": int(sum(row["n_u_fallback"] for row in hit)),
            "ids": [row["id"] for row in hit], "u_iso": DEFAULT_UISO}


def _convergence(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """How charge flipping ended: converged counts (overall and among the solved), cycles used, and the
    structures whose origin the data barely fix (evaluation.charge_flipping.ORIGIN_AMBIGUOUS)."""
    solved = [row for row in rows if row["r"] >= SOLVED_R]
    cycles = [int(row["cf_cycles"]) for row in rows]
    run = [int(row["cf_cycles_run"]) for row in rows]
    return {
        "converged": int(sum(bool(row["converged"]) for row in rows)), "n": len(rows), "n_solved": len(solved),
        "converged_solved": int(sum(bool(row["converged"]) for row in solved)),
        "cycles_median": _f(np.median(cycles)) if rows else None, "cycles_max": max(cycles, default=None),
        "cycles_run_median": _f(np.median(run)) if rows else None,
        "max_cycles": settings.get("cf", {}).get("max_cycles"),
        "origin_ambiguous": sorted((row["id"] for row in rows if row.get("origin_margin") is not None
                                    and row["origin_margin"] < ORIGIN_AMBIGUOUS), key=lambda i: (len(i), i)),
    }


def _measured_block(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Hook: the same method on the model's calculated |F| at the same reflections, and the cost of real data."""
    calc = _summary([row["r_calc"] for row in rows])
    return {**calc, "amplitudes": "calculated from the deposited model at the measured reflections",
            "median_r_measured_minus_calculated": _f(np.median([row["r"] - row["r_calc"] for row in rows])),
            "median_completeness": _f(np.median([row["completeness"] for row in rows]))}


def _csv_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6f}"
    return "" if v is None else str(v)


def results_csv(method: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """results.csv text: one row per structure, the columns of COLUMNS[method]."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = COLUMNS[method] + [c for c in MEASURED_COLUMNS if rows and rows[0].get(c) is not None]
    w.writerow(cols)
    for row in rows:
        w.writerow([_csv_value(row.get(c)) for c in cols])
    return buf.getvalue()


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _num(x: Any) -> str:
    return "—" if x is None else f"{x:.6f}"


def _md_table(title: str, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    lines = [f"| {title} | n | solved | f(r ≥ 0.8) | median r |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['n']} | {v['n_solved']} | {_pct(v['f_solved'])} | {_num(v['median_r'])} |"
              for k, v in items]
    return lines + [""]


def _md_splits(b: Mapping[str, Any]) -> list[str]:
    out = _md_table("compound class", list(b["by_class"].items()))
    out += _md_table("occupied special positions", list(b["by_special"].items()))
    out += _md_table("volume (Å³)", [(v["bin"], v) for v in b["by_volume"]])
    return out


def report_md(rep: Mapping[str, Any]) -> str:
    """report.md text (deterministic; no timings)."""
    ck = rep.get("checkpoint")
    src = rep["inputs"]
    lines = [f"# Evaluation: {rep['method']}" + (f" ({ck['name']})" if ck else "") + f" on {src['name']}", "",
             f"- inputs: {src['kind']} `{src['name']}` (sha256 `{src['sha256'][:16]}…`)"
             + (f", selection {src['select']}" if src.get("select") else "")]
    if ck:
        lines.append(f"- checkpoint: `{ck['name']}` ({ck['format']}, sha256 `{ck['sha256'][:16]}…`)")
    lines.append("- settings: " + ", ".join(f"{k} = {v}" for k, v in sorted(rep["settings"].items())))
    u = rep["u_fallback"]
    lines += [f"- structures: {rep['n']} evaluated, {rep['n_skipped']} skipped of {rep['n_inputs']}",
              f"- displacement parameters: {u['sites']} sites in {u['structures']} structures had no usable U "
              f"(absent, zero or negative) and were given U = {u['u_iso']} Å²"
              + (f" ({', '.join(u['ids'][:10])}{', …' if len(u['ids']) > 10 else ''})" if u["ids"] else ""),
              f"- selection: {rep.get('selection', 'one phase set per structure')}", "",
              "## Headline", ""]
    head = [("r", rep)]
    if rep["method"] == "model":
        head = [("best by r", rep), (f"FOM pick ({rep['fom']['name']})", rep["fom"])]
        head += [(f"{k} pick", v) for k, v in rep["fom"]["alternatives"].items() if k != rep["fom"]["name"]]
    elif rep["method"] == "charge-flipping":
        head = [("polished", rep), ("symmetrised", rep["symmetrised"]), ("raw", rep["raw"])]
    lines += _md_table("selection", head)
    lines += ["## Splits" + (" (best by r)" if rep["method"] == "model" else ""), ""] + _md_splits(rep)
    if rep["method"] == "model":
        lines += [f"## Splits (FOM pick: {rep['fom']['name']})", ""] + _md_splits(rep["fom"])
        lines += ["## r per number of cycles", "", "| cycles | f(r ≥ 0.8) best start | median r best start | "
                  "f(r ≥ 0.8) zero start | median r zero start |", "|---:|---:|---:|---:|---:|"]
        for c in rep["by_cycles"]:
            z = c.get("zero_start") or {"f_solved": None, "median_r": None}
            lines.append(f"| {c['cycles']} | {_pct(c['best_start']['f_solved'])} | "
                         f"{_num(c['best_start']['median_r'])} | {_pct(z['f_solved'])} | {_num(z['median_r'])} |")
        lines.append("")
    if rep["method"] == "charge-flipping":
        lines += _md_convergence(rep["convergence"])
    lines += ["## Skipped inputs", ""]
    if rep["skipped"]:
        lines += ["| id | reason | detail |", "|---|---|---|"]
        lines += [f"| {s['id']} | {s['reason']} | {s.get('detail', '')} |" for s in rep["skipped"]]
    else:
        lines.append("None.")
    lines += ["", "## Plots", "", "![r vs V by class](r_vs_volume_class.png)",
              "![r vs V by special positions](r_vs_volume_special.png)", "![histogram of r](r_hist.png)", ""]
    return "\n".join(lines)


def _md_convergence(c: Mapping[str, Any]) -> list[str]:
    amb = c["origin_ambiguous"]
    return [f"Charge flipping converged (phase set stable between checks) for {c['converged']} of {c['n']} "
            f"structures ({c['converged_solved']} of the {c['n_solved']} solved). Cycles used by the chosen start: "
            f"median {c['cycles_median']:g}, max {c['cycles_max']} (cap {c['max_cycles']}); longest start per "
            f"structure: median {c['cycles_run_median']:g}." if c["n"] else "No structures.",
            "", "Origin ambiguous (pseudo-symmetry: two inequivalent origins fit equally): "
            + (", ".join(amb) if amb else "none") + ".", ""]


def last_line(rep: Mapping[str, Any]) -> str:
    """The final line a run prints: f(r ≥ 0.8) and median r."""
    f, m = rep["f_solved"], rep["median_r"]
    fs = "nan" if f is None else f"{f:.4f}"
    ms = "nan" if m is None else f"{m:.6f}"
    return f"f(r>=0.8) = {fs} ({rep.get('n_solved', 0)}/{rep['n']})  median r = {ms}"


def write_run(out: str | os.PathLike, rep: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
              timing: Mapping[str, Any] | None = None, plots: bool = True) -> Path:
    """Write report.json, results.csv, report.md, the PNG plots (and timing.json) into `out`.

    Everything is staged in a sibling folder first and then renamed into place, so a failure leaves any
    earlier report in `out` as it was.
    """
    tmp = stage(out)
    (tmp / "report.json").write_text(dumps(rep, allow_nan=False), encoding="utf-8")
    (tmp / "results.csv").write_text(results_csv(rep["method"], rows), encoding="utf-8")
    (tmp / "report.md").write_text(report_md(rep), encoding="utf-8")
    if timing is not None:
        (tmp / "timing.json").write_text(dumps(dict(timing), allow_nan=False), encoding="utf-8")
    if plots:
        from evaluation.plots import plot_run

        plot_run(rows, tmp, title=f"{rep['method']} on {rep['inputs']['name']}")
    return publish(tmp, out)


# ----------------------------------------------------------------------------- compare


def load_report(report_dir: str | os.PathLike) -> dict[str, Any]:
    """report.json of a run folder.

    Raises:
        ValueError: no report.json there, or not a phaseforge report.
    """
    p = Path(report_dir) / "report.json"
    if not p.is_file():
        raise ValueError(f"{report_dir} holds no report.json (run `phaseforge-eval run --out {report_dir}` first)")
    try:
        rep = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from None
    if not isinstance(rep, dict) or "method" not in rep or "f_solved" not in rep:
        raise ValueError(f"{p} is not a phaseforge-eval report")
    return rep


def read_results(report_dir: str | os.PathLike) -> list[dict[str, str]]:
    """results.csv rows of a run folder (strings); [] when absent."""
    p = Path(report_dir) / "results.csv"
    if not p.is_file():
        return []
    with p.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _label(rep: Mapping[str, Any], path: Path) -> str:
    ck = rep.get("checkpoint")
    return f"{path.name} ({rep['method']}" + (f", {ck['name']})" if ck else ")")


def compare_reports(report_dirs: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Side-by-side summary of several runs (deterministic dict)."""
    if not report_dirs:
        raise ValueError("compare needs at least one report folder")
    runs = []
    for d in report_dirs:
        rep = load_report(d)
        item = {"label": _label(rep, Path(d)), "method": rep["method"], "inputs": rep["inputs"],
                "checkpoint": rep.get("checkpoint"), "n": rep["n"], "n_skipped": rep["n_skipped"],
                "f_solved": rep["f_solved"], "median_r": rep["median_r"],
                "by_class": {k: {"n": v["n"], "f_solved": v["f_solved"], "median_r": v["median_r"]}
                             for k, v in rep["by_class"].items()}}
        if rep["method"] == "model":
            item["fom"] = {"name": rep["fom"]["name"], "f_solved": rep["fom"]["f_solved"],
                           "median_r": rep["fom"]["median_r"]}
        if rep["method"] == "charge-flipping":
            item["raw"] = {"f_solved": rep["raw"]["f_solved"], "median_r": rep["raw"]["median_r"]}
        runs.append(item)
    same = len({(r["inputs"]["sha256"]) for r in runs}) == 1
    return {"version": REPORT_VERSION, "same_inputs": same, "runs": runs}


def compare_md(cmp: Mapping[str, Any]) -> str:
    """compare.md text."""
    lines = ["# Comparison", ""]
    if not cmp["same_inputs"]:
        lines += ["**Note: the runs were made on different inputs (test-set hashes differ).**", ""]
    lines += ["| run | inputs | n | skipped | f(r ≥ 0.8) | median r | FOM / raw f(r ≥ 0.8) | FOM / raw median r |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in cmp["runs"]:
        alt = r.get("fom") or r.get("raw") or {"f_solved": None, "median_r": None}
        lines.append(f"| {r['label']} | {r['inputs']['name']} | {r['n']} | {r['n_skipped']} | "
                     f"{_pct(r['f_solved'])} | {_num(r['median_r'])} | {_pct(alt['f_solved'])} | "
                     f"{_num(alt['median_r'])} |")
    classes = [c for c in CLASS_ORDER if any(c in r["by_class"] for r in cmp["runs"])]
    lines += ["", "## f(r ≥ 0.8) by compound class", "",
              "| run | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for r in cmp["runs"]:
        cells = [(f"{_pct(r['by_class'][c]['f_solved'])} (n={r['by_class'][c]['n']})" if c in r["by_class"]
                  else "—") for c in classes]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines += ["", "![fraction of structures with r above a threshold](compare_r.png)", ""]
    return "\n".join(lines)


def write_compare(out: str | os.PathLike, report_dirs: Sequence[str | os.PathLike], plots: bool = True) -> dict:
    """Write compare.json, compare.md and compare_r.png into `out`; returns the comparison dict."""
    cmp = compare_reports(report_dirs)
    tmp = stage(out)
    (tmp / "compare.json").write_text(dumps(cmp, allow_nan=False), encoding="utf-8")
    (tmp / "compare.md").write_text(compare_md(cmp), encoding="utf-8")
    if plots:
        from evaluation.plots import plot_compare

        curves = []
        for d, run in zip(report_dirs, cmp["runs"]):
            r = [float(row["r"]) for row in read_results(d) if row.get("r")]
            curves.append((run["label"], r))
        plot_compare(curves, tmp / "compare_r.png")
    publish(tmp, out)
    return cmp
