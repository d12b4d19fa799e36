"""`phaseforge-train` (also `python -m training`): train PhAI on shard manifests.

    phaseforge-train fit --train data/lognormal-molecules --val data/val --preset paper --out runs/lm
    torchrun --nproc_per_node 8 -m training fit ...           # the same options, one process per GPU
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 -m training fit ...

Bad input (unknown preset, missing or corrupt manifests, different reflection sets, an incompatible --resume,
an existing run without --resume, a run directory another `fit` holds) prints one `error: ...` line on stderr and
exits with status 2 before anything is written. So do a non-finite loss (the last good checkpoint is kept) and a
failed write (no space left, read-only: the path and the reason; no partial file is left). Under torchrun every
line starts with the rank, node and host; a rank that stops because another failed names that rank and its error
(exit status 1).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from manifests.errors import fail, one_line, os_error_line
from manifests.schema import ManifestError, write_json_atomic
from training.checkpoint import training_checkpoint
from training.config import TrainConfig, flat_dict
from training.data import VERIFY_LEVELS
from training.distributed import RankFailed, error_prefix
from training.model import PRESETS
from training.schedule import INITS
from training.train import fit

__all__ = ["main", "cli"]


def _d_min(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        parts = [float(x) for x in text.split(":")]
    except ValueError:
        raise ValueError(f"--d-min {text!r}: give a number (fixed, e.g. 1.0) or a range LO:HI (e.g. 0:2)") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"--d-min {text!r}: give a number or LO:HI")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Train the PhAI network on artificial-structure shards (Acta Cryst. A 2026 recipe)."""


@cli.command("fit")
@click.option("--train", "train", multiple=True, help="Training manifest (file or directory); repeat to mix.")
@click.option("--weight", "weights", type=float, multiple=True, help="Mixing weight per --train (default equal).")
@click.option("--val", default=None, help="Held-out manifest for validation (loss, mean r, f(r >= 0.8)).")
@click.option("--preset", default=None, help=f"Model preset: {', '.join(PRESETS)} [default: paper].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--steps", type=int, default=None, help="Total optimiser steps [default: 100000].")
@click.option("--batch-size", type=int, default=None, help="Global batch size [default: 64].")
@click.option("--lr", type=float, default=None, help="Initial learning rate [default: 5e-4].")
@click.option("--schedule", default=None, help="'plateau' (5e-5, then 1e-5) or 'steps:S1,S2' [default: plateau].")
@click.option("--seed", type=int, default=None, help="Seed of data order, augmentation, init [default: 0].")
@click.option("--d-min", "d_min", default=None, help="Resolution mask: fixed '1.0' or range 'LO:HI' [default: 1.0].")
@click.option("--drop", type=float, default=None, help="Remove a fraction ~U(0, DROP) of reflections [default: 0].")
@click.option("--val-every", type=int, default=None, help="Validate every N steps [default: 1000].")
@click.option("--val-samples", type=int, default=None, help="Validation samples [default: 512].")
@click.option("--ckpt-every", type=int, default=None, help="Write last.pt every N steps [default: 1000].")
@click.option("--log-every", type=int, default=None, help="Log train metrics every N steps [default: 50].")
@click.option("--workers", type=int, default=None, help="Loader workers per process [default: 2].")
@click.option("--streams", type=int, default=None,
              help="Loader streams in all: each gives a piece of every global batch; the process count must divide "
                   "it and --workers its share per process [default: the global batch size].")
@click.option("--verify", type=click.Choice(VERIFY_LEVELS), default=None, help="Shard check [default: sha256].")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N [default: auto].")
@click.option("--init", "init", type=click.Choice(INITS), default=None,
              help="First-pass phases: random signs (paper §2), zero (PhAI's code) or mixed [default: random].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt (omitted options: as saved).")
@click.option("--progress/--no-progress", default=None, help="tqdm progress bar [default: on a terminal].")
def fit_command(train, weights, val, preset, out, steps, batch_size, lr, schedule, seed, d_min, drop, val_every,
                val_samples, ckpt_every, log_every, workers, streams, verify, compile_, device, init, resume,
                progress) -> None:
    """Train PhAI: stream the manifests, recycle, checkpoint; summary on stdout, metrics in OUT/metrics.jsonl."""
    given = {"train": tuple(train) or None, "weights": tuple(weights) or None, "val": val, "preset": preset,
             "steps": steps, "batch_size": batch_size, "lr": lr, "schedule": schedule, "seed": seed,
             "d_min": _d_min(d_min), "drop": drop, "val_every": val_every, "val_samples": val_samples,
             "ckpt_every": ckpt_every, "log_every": log_every, "workers": workers, "streams": streams,
             "verify": verify, "compile": compile_, "device": device, "init": init}
    given = {k: v for k, v in given.items() if v is not None}
    if resume:
        saved = flat_dict(TrainConfig.from_dict(training_checkpoint(out / "last.pt")["config"]["train"]))
        cfg = TrainConfig.from_flat(**{**saved, **given})
    else:
        if "train" not in given:
            raise ValueError("give at least one --train manifest")
        cfg = TrainConfig.from_flat(**given)
    summary = fit(cfg, out, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json_atomic(out / "summary.json", summary)
        _print_summary(summary)
    if summary["stopped_by_signal"]:
        sys.exit(128 + summary["stopped_by_signal"])


def _print_summary(s: dict) -> None:
    v, b, rs = s["last_val"], s["best"], s["random_signs"]
    stop = (f" (stopped by {signal.Signals(s['stopped_by_signal']).name}; resume with --resume)"
            if s["stopped_by_signal"] else "")
    click.echo(f"trained {s['preset']} to step {s['steps']} ({s['steps_this_run']} this run, {s['seconds']} s, "
               f"{s['samples_per_s']} samples/s on {s['world']} process(es)){stop}")
    if s["final_train_loss"] is not None:
        click.echo(f"  train loss (last 50 steps): {s['final_train_loss']:.4f}")
    if v:
        click.echo(f"  validation at step {s['steps']} over {v['n']} structures, {s['init']} init "
                   f"(zero start / random start): loss {v['loss_zero']:.4f} / {v['loss_random']:.4f}, "
                   f"mean r {v['mean_r_zero']:.4f} / {v['mean_r_random']:.4f}, "
                   f"f(r>=0.8) {v['f_solved_zero']:.3f} / {v['f_solved_random']:.3f}; "
                   f"r by cycle {v['mean_r_by_cycle_zero']} / {v['mean_r_by_cycle_random']}")
    if rs:
        click.echo(f"  random-sign baseline: mean r {rs['mean_r']:.4f}, f(r>=0.8) {rs['f_solved']:.3f}")
    click.echo(f"  best validation loss {b['loss']:.4f} at step {b['step']}")
    click.echo(f"  checkpoints: {s['checkpoints']['last']}, {s['checkpoints']['best']}")
    click.echo(json.dumps(s, sort_keys=True))


def _fail(message: object, code: int = 2) -> None:
    fail(f"{error_prefix()}{one_line(message)}", code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `phaseforge-train`: every usage or input error is one `error:` line, exit status 2."""
    try:
        rv = cli.main(args=argv, prog_name="phaseforge-train", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `phaseforge-train`: show the help
        click.echo(exc.format_message(), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        _fail(exc.format_message())
    except RankFailed as exc:  # another rank failed: its own line (exit 2 for bad input) names the cause
        _fail(exc, code=1)
    except (ValueError, ManifestError) as exc:
        _fail(str(exc))
    except OSError as exc:  # a full disk, a read-only or unwritable --out, an --out below a file
        _fail(os_error_line(exc))
    sys.exit(rv if isinstance(rv, int) else 0)
