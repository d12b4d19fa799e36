"""examples/slurm: the array task and finalize scripts, run as Slurm runs them (bash, with Slurm's variables), build
what a one-process build writes. benchmarks/slurm_local.sh runs them under a real Slurm."""
from __future__ import annotations

import pytest

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from builder.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "examples" / "slurm"
OPTS = ["--strategy", "lognormal-random", "--count", "12", "--shard-size", "4", "--seed", "2"]


def shim(tmp: Path) -> dict:
    """PATH with a `phaseforge-build` that runs this checkout's code (the examples call the console script)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "phaseforge-build"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m builder.cli "$@"\n')
    exe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_", "LSB_", "JOB_COMPLETION"))}
    return env | {"PATH": f"{bin_dir}:{env['PATH']}", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_array_scripts_build_the_one_process_dataset(tmp_path):
    env = shim(tmp_path)
    out = tmp_path / "array"
    for task in (1, 0):  # sbatch --array=0-1 build.sbatch 2 OUT ...
        r = subprocess.run(["bash", SLURM / "build.sbatch", "2", out, *OPTS], env=env | {
            "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_CPUS_PER_TASK": "1"},
            capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f"task {task}/2 (SLURM_ARRAY_TASK_ID={task}): shards" in r.stderr
    r = subprocess.run(["bash", SLURM / "finalize.sbatch", out], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    one = tmp_path / "one"
    assert CliRunner().invoke(cli, ["shards", *OPTS, "--out", str(one)]).exit_code == 0
    assert (out / "manifest.json").read_bytes() == (one / "manifest.json").read_bytes()
    assert [p.read_bytes() for p in sorted(out.glob("shard-*"))] == [p.read_bytes() for p in sorted(one.glob("shard-*"))]


def test_scripts_refuse_bad_usage(tmp_path):
    env = shim(tmp_path)
    for script, args in (("submit.sh", []), ("submit.sh", ["0", "x"]), ("build.sbatch", ["4"]),
                         ("finalize.sbatch", [])):
        r = subprocess.run(["bash", SLURM / script, *args], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "usage:" in r.stderr
    # outside an array, the task script fails with the builder's one line, before writing anything
    r = subprocess.run(["bash", SLURM / "build.sbatch", "4", tmp_path / "o", *OPTS], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --task auto: this is not an array job")
    assert not (tmp_path / "o").exists()
    for script in [*SLURM.glob("*.sh"), *SLURM.glob("*.sbatch"), ROOT / "benchmarks" / "slurm_local.sh"]:
        assert subprocess.run(["bash", "-n", script]).returncode == 0, script
