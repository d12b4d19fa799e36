"""`phaseforge-eval`: run (a checkpoint or a baseline on a test set or CIF folder), compare, testset, fetch.

    phaseforge-eval run --testset manifests/testsets/cod-p21c-small.json --checkpoint runs/x/best.pt --out reports/x
    phaseforge-eval run --cifs my_cifs/ --method charge-flipping --out reports/cf
    phaseforge-eval compare reports/x reports/cf --out reports/x-vs-cf

Bad input (unknown test set, unreadable checkpoint, wrong option values) prints one line `error: …` on stderr
and exits 2 before anything is written. The last line `run` prints is f(r ≥ 0.8) and median r.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from manifests.errors import bad_input_exits, fail

__all__ = ["main", "cli"]


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Evaluate phasing on real CIF test sets: f(r ≥ 0.8) and median r (Acta Cryst. A 2026; PhAI)."""


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown --device {device!r} (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here")
    return str(dev)


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="structure", file=sys.stderr, disable=None, leave=False)


@cli.command()
@click.option("--testset", default=None,
              help="Test-set manifest .json or shipped name (cod-p21c-small, cod-p21c-large).")
@click.option("--cifs", type=click.Path(path_type=Path), default=None, help="A folder of .cif files instead.")
@click.option("--select", type=click.Choice(["p21c-small", "p21c-large"]), default=None,
              help="With --cifs: apply a test-set cell rule (others are listed as skipped).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Trainer checkpoint or bare PhAI state_dict (implies --method model).")
@click.option("--method", type=click.Choice(["model", "model+cf", "charge-flipping", "random", "true"]), default=None)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Report folder.")
@click.option("--d-min", type=float, default=1.0, show_default=True, help="Resolution limit (Å).")
@click.option("--cycles", default="1..10", show_default=True, help="Cycle counts to scan: A..B, 1,3,5 or N.")
@click.option("--random-starts", type=int, default=4, show_default=True)
@click.option("--zero-start/--no-zero-start", default=True, show_default=True)
@click.option("--fom", type=click.Choice(["confidence", "consistency"]), default="confidence", show_default=True,
              help="Figure of merit for the pick that does not look at the true phases.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Network rows (structure × start).")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes for charge flipping.")
@click.option("--limit", type=int, default=None, help="Only the first N inputs.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@bad_input_exits
def run(testset, cifs, select, checkpoint, method, out, d_min, cycles, random_starts, zero_start, fom, seed,
        device, batch_size, workers, limit, no_plots) -> None:
    """Evaluate a checkpoint or a baseline; write report.json, results.csv, report.md and plots into --out."""
    from evaluation.config import EvalConfig

    cfg = EvalConfig(testset=testset, cifs=cifs, select=select, checkpoint=checkpoint, method=method, out=out,
                     d_min=d_min, cycles=cycles, random_starts=random_starts, zero_start=zero_start, fom=fom,
                     seed=seed, device=device, batch_size=batch_size, workers=workers, limit=limit,
                     plots=not no_plots)
    _run(cfg)


def _run(cfg: Any) -> None:
    """The body of `run` for a validated `EvalConfig`."""
    from builder.reflections import phai_hkl
    from evaluation import report as rpt
    from evaluation.run import MODEL_METHODS, evaluate, open_cif_dir, open_testset, prepare_all, reflection_meta

    settings = cfg.settings()
    model = ck_info = None
    hkl = phai_hkl()
    if cfg.method in MODEL_METHODS:
        from training.checkpoint import load_model

        dev = _resolve_device(cfg.device)
        loaded = load_model(cfg.checkpoint, dev)
        model, ck_info = loaded.model, loaded.info
        hkl = phai_hkl(loaded.config.max_index)
        settings["device"] = dev
    settings.update(reflection_meta(hkl))
    inputs = open_testset(cfg.testset) if cfg.testset is not None else open_cif_dir(cfg.cifs, cfg.select)
    prepared, skipped = prepare_all(inputs, hkl, cfg.d_min, select=cfg.select, limit=cfg.limit)
    bar = _progress(len(prepared), cfg.method)
    try:
        rows, failed, seconds = evaluate(cfg.method, prepared, hkl, seed=cfg.seed, workers=cfg.workers,
                                         model=model, scan_cfg=cfg.scan, cf_config=cfg.cf, progress=bar)
    finally:
        bar.close()
    skipped = skipped + failed
    rep = rpt.build_report(cfg.method, rows, skipped, inputs.meta, settings, ck_info)
    timing = {"method_seconds": round(seconds, 3), "n": len(rows), "workers": cfg.workers,
              "seconds_per_structure": round(seconds / len(rows), 4) if rows else None}
    rpt.write_run(cfg.out, rep, rows, timing=timing, plots=cfg.plots)
    _summary(cfg, rep, skipped, seconds, timing)


def _summary(cfg: Any, rep: dict, skipped: list, seconds: float, timing: dict) -> None:
    from evaluation.report import last_line

    for s in skipped:
        click.echo(f"skipped {s['id']}: {s['reason']}" + (f" ({s['detail']})" if s.get("detail") else ""))
    click.echo(f"wrote {cfg.out}/report.json, results.csv, report.md" + (", plots" if cfg.plots else ""))
    click.echo(f"{rep['n']} structures in {seconds:.1f} s ({timing['seconds_per_structure']} s/structure), "
               f"{len(skipped)} skipped")
    if cfg.method == "model":
        f = rep["fom"]
        click.echo(f"FOM pick ({f['name']}): f(r>=0.8) = {f['f_solved']}, median r = {f['median_r']}")
    elif cfg.method in ("charge-flipping", "model+cf"):
        c = rep["convergence"]
        click.echo(f"raw (unsymmetrised): f(r>=0.8) = {rep['raw']['f_solved']}, median r = {rep['raw']['median_r']}")
        click.echo(f"converged {c['converged']}/{c['n']} ({c['converged_solved']}/{c['n_solved']} solved), "
                   f"median cycles {c['cycles_median']}")
    if "calculated" in rep:
        c = rep["calculated"]
        click.echo(f"same method on calculated |F|: f(r>=0.8) = {c['f_solved']}, median r = {c['median_r']}")
    click.echo(last_line(rep))


@cli.command()
@click.argument("reports", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--no-plots", is_flag=True)
@bad_input_exits
def compare(reports, out, no_plots) -> None:
    """Put several report folders side by side: compare.md, compare.json and compare_r.png in --out."""
    from evaluation.report import compare_reports, write_compare

    if not reports:
        raise ValueError("give one or more report folders")
    _check_out_dir(out)
    compare_reports(reports)  # validates every folder before anything is written
    cmp = write_compare(out, reports, plots=not no_plots)
    for r in cmp["runs"]:
        click.echo(f"{r['label']}: n = {r['n']}, f(r>=0.8) = {r['f_solved']}, median r = {r['median_r']}")
    click.echo(f"wrote {out}/compare.md, compare.json" + ("" if no_plots else ", compare_r.png"))


@cli.command()
@click.option("--cifs", type=click.Path(path_type=Path), required=True, help="Folder of <id>.cif files.")
@click.option("--select", type=click.Choice(["p21c-small", "p21c-large"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Manifest .json to write.")
@click.option("--archive", default=None, help="File name of the .tar.xz that ships these CIFs (recorded).")
@bad_input_exits
def testset(cifs, select, out, archive) -> None:
    """Select a test set from a CIF folder into a manifest (ids, sha256, cell, volume, class, special positions)."""
    from evaluation.testset import build_testset, write_testset

    if not cifs.is_dir():
        raise ValueError(f"--cifs {cifs} is not a directory")
    if not any(cifs.glob("*.cif")):
        raise ValueError(f"no .cif files in {cifs}")
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a .json file name")
    ts = build_testset(cifs, select, archive=archive)
    write_testset(ts, out)
    click.echo(f"wrote {out}: {ts['count']} structures, {len(ts['skipped'])} skipped "
               f"({', '.join(f'{k}: {v}' for k, v in ts['skipped_counts'].items()) or 'none'})")


@cli.command()
@click.option("--testset", required=True, help="Test-set manifest .json or shipped name.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the <id>.cif files.")
@click.option("--base-url", default=None, help="Mirror serving <id>.cif (default: the COD).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Overall seconds per file (a slow or trickling server is cut off).")
@click.option("--max-bytes", type=int, default=64 * 1024 * 1024, show_default=True,
              help="Size cap per file (raise it for CIFs that carry large reflection lists).")
@bad_input_exits
def fetch(testset, out, base_url, timeout, max_bytes) -> None:
    """Download the CIFs of a test set by id and check their sha256 (mismatches are not written)."""
    import json

    from evaluation.fetch import COD_BASE_URL, FetchError, fetch_testset
    from evaluation.testset import load_testset

    try:
        ts = load_testset(testset)
    except FileNotFoundError:
        raise ValueError(f"no test set {testset!r}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"test set {testset} is not valid JSON: {exc}") from None
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    try:
        rep = fetch_testset(ts, out, base_url=base_url or COD_BASE_URL, timeout=timeout, max_bytes=max_bytes)
    except FetchError as exc:
        fail(str(exc), code=1)
    for m in rep.mismatched:
        click.echo(f"sha256 mismatch for {m['id']} (not written): got {m['got']}")
    for f in rep.failed:
        click.echo(f"failed {f['id']}: {f['error']}")
    click.echo(f"{len(rep.downloaded)} downloaded, {len(rep.present)} already present, "
               f"{len(rep.mismatched)} mismatched, {len(rep.failed)} failed -> {out}")
    if not rep.ok:
        sys.exit(1)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the results.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Network for model methods.")
@click.option("--method", type=click.Choice(["charge-flipping", "model", "model+cf", "all"]), default=None,
              help="Default: charge-flipping without --checkpoint, all with one.")
@click.option("--format", "fmt", type=click.Choice(["auto", "shelx", "cif", "free"]), default="auto",
              show_default=True, help="auto: .cif/.fcf CIF, .hkl SHELX, else free format (h k l F sigma).")
@click.option("--hklf", type=click.Choice(["3", "4"]), default=None,
              help="4: F^2 sigma(F^2) (SHELX default), 3: F sigma(F) (free-format default).")
@click.option("--cell", type=float, nargs=6, default=None, help="a b c alpha beta gamma (A, deg).")
@click.option("--spacegroup", default=None, help="Space-group symbol, e.g. P21/c (checked against the file).")
@click.option("--block", default=None, help="CIF data block to read when there are several.")
@click.option("--d-min", type=float, default=1.0, show_default=True, help="Network resolution limit (A).")
@click.option("--peaks", type=int, default=None, help="Q peaks to list (default from the composition).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--overwrite", is_flag=True, help="Replace the results of another job in --out.")
@bad_input_exits
def solve(input_path, out, checkpoint, method, fmt, hklf, cell, spacegroup, block, d_min, peaks, seed, device,
          overwrite) -> None:
    """Phase measured reflections (.hkl + .ins/.res, CIF/.fcf, free format): .fcf, .ccp4, .res, peaks, solve.json."""
    from evaluation.solve_job import solve_job

    summary, state = solve_job(input_path, out, method=method, checkpoint=checkpoint, fmt=fmt,
                               hklf=None if hklf is None else int(hklf), cell=cell, spacegroup=spacegroup,
                               block=block, d_min=d_min, seed=seed, device=_resolve_device(device),
                               n_peaks=peaks, overwrite=overwrite)
    if state == "same":
        click.echo(f"{out}/solve.json already holds this job (same inputs and settings): nothing to do")
    for w in summary["warnings"]:
        click.echo(f"warning: {w}")
    for name, m in summary["methods"].items():
        score = m.get("against_model") or {}
        click.echo(f"{name}: {m['fom']['name']} = {m['fom']['value']}, skewness = {m['skewness']}, "
                   f"{m['seconds']} s" + (f", r vs deposited model = {score['r']}" if score else ""))
    red = summary["reduction"]
    click.echo(f"{red['symmetry']['space_group']}: {red['merging']['n_in']} reflections -> "
               f"{red['merging']['n_unique']} unique, R_int = {red['merging']['r_int']}, "
               f"d_min = {red['resolution']['d_min']} A; picked {summary['picked']} -> {out}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
