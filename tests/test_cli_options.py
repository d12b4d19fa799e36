"""The option list of every command of the three CLIs is frozen (style lesson 6, torchtitan's
test_no_new_cli_options): a new option is a deliberate change made here, beside the code that adds it."""
from __future__ import annotations

import click
import pytest

from builder.cli import cli as build_cli
from evaluation.cli import cli as eval_cli
from training.cli import cli as train_cli

FROZEN = {
    "phaseforge-build": {
        "shards": ["compress", "count", "fmt", "on_the_fly", "out", "seed", "shard_range", "shard_size", "strategy",
                   "structures_only", "task", "workers"],
        "finalize": ["directory", "workers"],
        "verify": ["deep", "directory"],
        "inspect": ["key", "target"],
        "strategies": [],
        "stats": ["cifs", "out", "select"],
        "compare": ["count", "distance_count", "out", "seed", "stats_file", "strategies", "wide_stats"],
    },
    "phaseforge-train": {
        "fit": ["batch_size", "ckpt_every", "compile_", "d_min", "device", "drop", "init", "log_every", "lr", "out",
                "preset", "progress", "resume", "schedule", "seed", "steps", "streams", "train", "val",
                "val_every", "val_samples", "verify", "weights", "workers"],
    },
    "phaseforge-eval": {
        "run": ["batch_size", "checkpoint", "cifs", "cycles", "d_min", "device", "fom", "limit", "method",
                "no_plots", "out", "random_starts", "seed", "select", "testset", "workers", "zero_start"],
        "compare": ["no_plots", "out", "reports"],
        "testset": ["archive", "cifs", "out", "select"],
        "fetch": ["base_url", "max_bytes", "out", "testset", "timeout"],
        "solve": sorted(["input_path", "out", "checkpoint", "method", "fmt", "hklf", "cell", "spacegroup", "block",
                         "d_min", "peaks", "seed", "device", "overwrite"]),
    },
}
CLIS = {"phaseforge-build": build_cli, "phaseforge-train": train_cli, "phaseforge-eval": eval_cli}


def options(group: click.Group) -> dict[str, list[str]]:
    return {name: sorted(p.name for p in cmd.params) for name, cmd in group.commands.items()}


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_no_new_cli_options(prog):
    got = options(CLIS[prog])
    assert sorted(got) == sorted(FROZEN[prog]), f"{prog}: commands changed: {sorted(got)}"
    for name, frozen in FROZEN[prog].items():
        assert got[name] == frozen, f"{prog} {name}: options changed: {got[name]}"
