"""`phaseforge-build`: shards, finalize, verify, inspect, strategies (and stats, compare)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from builder.build import build, deep_check, finalize, make_header, n_shards, parse_range
from builder.compare import compare_command
from builder.stats import stats_command
from builder.strategy import builtin_strategies, load_strategy
from builder.tasks import task_shards
from manifests.errors import bad_input_exits
from manifests.schema import FORMATS, load_manifest, verify_dir
from manifests.shardio import read_shard

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build deterministic, seed-indexed shards of artificial crystal structures (Acta Cryst. A 2026)."""


@cli.command()
@click.option("--strategy", required=True, help="Built-in strategy name or a strategy .toml path.")
@click.option("--count", type=int, required=True, help="Number of samples.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="tar", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Root seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Processes (one shard per job).")
@click.option("--shards", "shard_range", default=None, help="Build only shards A:B and write a part-manifest.")
@click.option("--task", default=None, help="Build range I of N (I/N, 0-based), or the array job's: auto, auto/N.")
@click.option("--structures-only", is_flag=True, help="Omit reflections; the loader computes them.")
@bad_input_exits
def shards(strategy, count, shard_size, fmt, seed, out, workers, shard_range, task, structures_only) -> None:
    """Build shards (resumes a killed build; refuses a directory built from another configuration)."""
    if workers < 1:
        raise ValueError(f"--workers must be ≥ 1, got {workers}")
    header = make_header(load_strategy(strategy), count, shard_size, fmt, seed, not structures_only)
    if task:  # an array task: its near-equal share of the shards, as --shards A:B (builder/tasks.py)
        shard_range, note = task_shards(task, n_shards(header), shard_range)
        click.echo(note, err=True)
    rng = parse_range(shard_range, n_shards(header)) if shard_range else None
    path = build(out, header, rng, workers=workers)
    click.echo(f"wrote {path}")


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
    manifest, d = load_manifest(directory)
    problems = verify_dir(manifest, d)
    if deep and not problems:
        problems += deep_check(d, deep)
    for p in problems:
        click.echo(f"FAIL {p}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"ok: {len(manifest['shards'])} shards, {manifest['count']} samples"
               + (f", {deep} samples regenerated identically" if deep else ""))


@cli.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--key", default=None, help="Show one sample by key (12-digit index).")
@bad_input_exits
def inspect(target, key) -> None:
    """Summarise a dataset (directory or manifest) or one shard, or show one sample."""
    if target.is_file() and target.suffix in (".tar", ".h5"):
        records = list(read_shard(target))
    else:
        manifest, d = load_manifest(target)
        s = manifest["strategy"]
        click.echo(f"{d}: {manifest['count']} samples in {len(manifest['shards'])} {manifest['format']} shards, "
                   f"strategy {s['name']} ({s['cell']['sampler']} × {s['fill']['filler']}, {s['space_group']}), "
                   f"seed {manifest['root_seed']}, reflections "
                   f"{manifest['reflections']['name'] if manifest['reflections'] else 'none (structures only)'}")
        if key is None:
            records = list(read_shard(d / manifest["shards"][0]["file"], manifest["format"]))
        else:
            i = int(key)
            e = next((e for e in manifest["shards"] if e["first_index"] <= i < e["first_index"] + e["count"]), None)
            if e is None:
                raise ValueError(f"key {key} is outside the dataset (0..{manifest['count'] - 1})")
            records = list(read_shard(d / e["file"], manifest["format"]))
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


cli.add_command(stats_command)
cli.add_command(compare_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
