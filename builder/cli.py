"""`phaseforge-build`: shards, finalize, verify, inspect, strategies (and stats, compare)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from builder.build import build, deep_check, finalize, make_header, parse_range
from builder.compare import compare as run_compare
from builder.compare_figures import fmt_ks
from builder.stats import SELECTIONS, cif_files, collect
from builder.stats_summary import files_sha256, summarise
from builder.strategy import builtin_strategies, load_strategy
from manifests.errors import bad_input_exits
from manifests.priors import write_json
from manifests.schema import FORMATS, load_manifest, verify_dir
from manifests.shardio import read_samples

__all__ = ["main", "cli"]


class _WholeNumber(click.ParamType):
    """An integer, also written as 1e6 or 100_000 (so `--count 1e12` reaches the capacity check)."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            x = float(text)
        except ValueError:
            x = float("nan")
        if not (x == x and abs(x) != float("inf") and x.is_integer()):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return int(x)


WHOLE = _WholeNumber()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build deterministic, seed-indexed shards of artificial crystal structures (Acta Cryst. A 2026)."""


@cli.command()
@click.option("--strategy", required=True, help="Built-in strategy name or a strategy .toml path.")
@click.option("--count", type=WHOLE, required=True, help="Number of samples (1e6 is accepted).")
@click.option("--shard-size", type=WHOLE, default=1000, show_default=True, help="Samples per shard.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="tar", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Root seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Processes (one shard per job).")
@click.option("--shards", "shard_range", default=None, help="Build only shards A:B and write a part-manifest.")
@click.option("--structures-only", is_flag=True, help="Omit reflections; the loader computes them.")
@click.option("--compress", type=click.Choice(["none", "gz", "lzf"]), default="none", show_default=True,
              help="tar: gz writes shard-NNNNNN.tar.gz (deterministic gzip); hdf5: gz or lzf dataset filters.")
@bad_input_exits
def shards(strategy, count, shard_size, fmt, seed, out, workers, shard_range, structures_only, compress) -> None:
    """Build shards (resumes a killed build; refuses a directory built from another configuration; several
    processes may build into one directory at once)."""
    if workers < 1:
        raise ValueError(f"--workers must be ≥ 1, got {workers}")
    header = make_header(load_strategy(strategy), count, shard_size, fmt, seed, not structures_only,
                         None if compress == "none" else compress)
    rng = parse_range(shard_range, header.n_shards) if shard_range else None
    report = build(out, header, rng, workers=workers)
    click.echo(report.summary())


@cli.command("finalize")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@bad_input_exits
def finalize_cmd(directory) -> None:
    """Merge part-manifests of range builds into manifest.json."""
    click.echo(f"wrote {finalize(directory)}")


@cli.command()
@click.argument("directory", type=click.Path(exists=True, path_type=Path))
@click.option("--deep", type=int, default=0, help="Also regenerate this many samples and compare bit for bit.")
@bad_input_exits
def verify(directory, deep) -> None:
    """Recompute sizes, hashes and counts; exit 1 naming every corrupt, missing or extra shard."""
    if deep < 0:
        raise ValueError(f"--deep must be ≥ 0, got {deep}")
    manifest, d = load_manifest(directory)
    problems = verify_dir(manifest, d)
    checked = 0
    if deep and not problems:
        report = deep_check(d, deep)
        problems, checked = report.problems, report.checked
    for p in problems:
        click.echo(f"FAIL {p}", err=True)
    if problems:
        sys.exit(1)
    asked = f" (of {deep} asked; the dataset has {manifest.count})" if deep > checked else ""
    click.echo(f"ok: {len(manifest.shards)} shards, {manifest.count} samples"
               + (f", {checked} samples regenerated identically{asked}" if deep else ""))


@cli.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--key", default=None, help="Show one sample by key (12-digit index).")
@bad_input_exits
def inspect(target, key) -> None:
    """Summarise a dataset (directory or manifest) or one shard, or show one sample."""
    if key is not None and not key.isdigit():
        raise ValueError(f"--key {key!r}: expected a sample index (digits), e.g. 42 or 000000000042")
    if target.is_file() and target.name.endswith((".tar", ".tar.gz", ".h5")):
        records = read_samples(target)
    else:
        manifest, d = load_manifest(target)
        s = manifest.strategy
        packed = f" {manifest.compression}-compressed" if manifest.compression else ""
        click.echo(f"{d}: {manifest.count} samples in {len(manifest.shards)}{packed} {manifest.format} shards, "
                   f"strategy {s['name']} ({s['cell']['sampler']} × {s['fill']['filler']}, {s['space_group']}), "
                   f"seed {manifest.root_seed}, reflections "
                   f"{manifest.reflections['name'] if manifest.reflections else 'none (structures only)'}")
        e = manifest.shards[0] if key is None else manifest.entry_for(int(key))
        if e is None:
            raise ValueError(f"key {key} is outside the dataset (0..{manifest.count - 1})")
        records = read_samples(d / e.file, manifest.format, manifest.compression)
    if key is not None:
        rec = next((r for r in records if int(r["__key__"]) == int(key)), None)
        if rec is None:
            raise ValueError(f"key {key} not found")
        _show(rec)
        return
    n = np.array([len(r["z"]) for r in records])
    vol = np.array([r["meta"]["volume"] for r in records])
    spec = np.array([r["meta"]["n_special"] for r in records])
    click.echo(f"first shard: {len(records)} samples; atoms/ASU mean {n.mean():.1f} (min {n.min()}, max {n.max()}); "
               f"V mean {vol.mean():.0f} Å³ (min {vol.min():.0f}, max {vol.max():.0f}); "
               f"with special positions {np.mean(spec > 0):.1%}")


def _show(rec: dict) -> None:
    a, b, c, al, be, ga = rec["cell"]
    click.echo(f"key {rec['__key__']}: cell {a:.3f} {b:.3f} {c:.3f} {al:.2f} {be:.2f} {ga:.2f}")
    click.echo(f"meta {json.dumps(rec['meta'], sort_keys=True)}")
    from builder.elements import symbol
    for x, z, o, u in zip(rec["frac"], rec["z"], rec["occ"], rec["uiso"]):
        click.echo(f"  {symbol(z):<2} {x[0]:8.5f} {x[1]:8.5f} {x[2]:8.5f}  occ {o:.3f}  U {u:.4f}")
    if "amplitude" in rec:
        amp = rec["amplitude"]
        click.echo(f"reflections: {len(amp)}, |F| max {amp.max():.2f}, mean {amp.mean():.2f}; "
                   f"phases π: {np.mean(np.isclose(rec['phase'], np.pi)):.1%}")


@cli.command()
def strategies() -> None:
    """List the built-in strategies with their parameters."""
    for name in builtin_strategies():
        s = load_strategy(name)
        c, f = s.cell, s.fill
        cell = {"lognormal": f"V~Lognormal({c.mu}, {c.sigma})", "uniform-volume": f"V~U({c.v_min}, {c.v_max})",
                "uniform-edges": f"a~U({c.a_min}, {c.a_max})"}[c.sampler]
        fill = {"molecules": f"molecules (bond {f.bond}, forbidden {f.forbidden})",
                "random": f"random (d_min {f.d_min})", "random-equal": f"random-equal ({f.element}, d_min {f.d_min})"
                }[f.filler]
        click.echo(f"{name:<30} {s.space_group}  {cell}, edges [{c.a_min}, {c.a_max}] r={c.ratio} "
                   f"β≤{c.beta_max}; {fill}; special p={f.special_p}; V_atom {f.v_atom}, x_H {f.x_h}")


@cli.command("stats")
@click.option("--cifs", "cifs", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="folder of CIF files (read in sorted order; not recursive)")
@click.option("--select", "select", default="all", show_default=True,
              type=click.Choice(list(SELECTIONS)),
              help="which structures to use (rules: builder.stats.SELECTIONS, manifests/stats/README.md)")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="output JSON [default: manifests/stats/<DIR name>-<select>.json]")
@bad_input_exits
def stats(cifs: Path, select: str, out: Path | None) -> None:
    """Database statistics and generator priors from a folder of CIFs."""
    paths = cif_files(cifs)
    if not paths:
        raise ValueError(f"{cifs}: no *.cif files")
    out = out or Path("manifests/stats") / f"{cifs.resolve().name}-{select}.json"
    doc = summarise(collect(paths, select), {
        "source_dir": cifs.resolve().name, "selection": select, "files_sha256": files_sha256(paths),
        "command": f"phaseforge-build stats --cifs .../{cifs.resolve().name} --select {select} --out {out.name}"})
    c = doc["counts"]
    if not c["selected"]:
        raise ValueError(f"{cifs}: no usable structure matches --select {select} "
                         f"({c['unusable']} of {len(paths)} files unusable)")
    write_json(doc, out)
    pri, el = doc["priors"], doc["elements"]
    click.echo(f"{out}: {c['selected']} of {len(paths)} structures ({c['unusable']} unusable); lognormal "
               f"mu={pri['lognormal_mu']} sigma={pri['lognormal_sigma']}; C+N+O general {el['general']['cno_share']:.3f}, "
               f"on inversion centres {el['inversion_centre']['cno_share']:.3f} (selected), "
               f"{el['inversion_centre_all']['cno_share']:.3f} (all, the default special table)")


@cli.command("compare")
@click.option("--strategy", "strategies", multiple=True, required=True,
              help="built-in strategy name or .toml path; repeat for several")
@click.option("--stats", "stats_file", required=True,
              help="stats file of the database (`phaseforge-build stats`): a path or a committed name, "
                   "e.g. cod-p21c-small")
@click.option("--count", type=int, default=1000, show_default=True, help="structures per strategy")
@click.option("--seed", type=int, default=0, show_default=True, help="root seed")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="output folder")
@click.option("--distance-count", type=int, default=None,
              help="structures per strategy for the distance curves [default: all --count]")
@click.option("--wide-stats", default=None,
              help="also Fig. 1 right: a_n ~ U(4, 50 Å) against this stats file's cells (e.g. cod-all)")
@bad_input_exits
def compare(strategies: tuple[str, ...], stats_file: str, count: int, seed: int, out: Path,
            distance_count: int | None, wide_stats: str | None) -> None:
    """Generated vs database distributions: the paper's Figs 1–4 as PNGs, KS tests in compare.json/.md."""
    cmd = " ".join(["phaseforge-build compare", *[f"--strategy {s}" for s in strategies], f"--stats {stats_file}",
                    f"--count {count}", f"--seed {seed}", f"--out {out}"]
                   + ([f"--distance-count {distance_count}"] if distance_count is not None else [])
                   + ([f"--wide-stats {wide_stats}"] if wide_stats is not None else []))
    doc = run_compare(strategies, stats_file, count, seed, out, distance_count, command=cmd, wide_stats=wide_stats)
    for name, s in doc["strategies"].items():
        click.echo(f"{name}: D volume {fmt_ks(s['ks']['volume'])}, distances {fmt_ks(s['ks']['distances_all_atoms'])}")
    click.echo(f"wrote {out}/compare.json, compare.md and {len(doc['figures'])} figures")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
