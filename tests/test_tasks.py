"""Array-job builds: `--task I/N`, `--task auto` (Slurm) and `--task auto/N` (PBS, LSF, Kubernetes, Slurm) give
ranges that finalize into the one-machine manifest, byte for byte, for any task count."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import cli
from builder.tasks import INDEXED, array_task, parse_task, task_range, task_shards

COUNT, SIZE = 28, 4  # 7 shards: 7 tasks of one shard, 3 tasks of 2, 2 and 3
NO_ARRAY = {var: None for _, var, _ in INDEXED} | {f"SLURM_ARRAY_TASK_{k}": None
                                                   for k in ("COUNT", "MIN", "MAX", "STEP")}


def run(out: Path, *extra: str, env: dict | None = None):
    args = ["shards", "--strategy", "lognormal-molecules", "--count", COUNT, "--shard-size", SIZE, "--seed", 3,
            "--out", out, *extra]
    return CliRunner().invoke(cli, [str(a) for a in args], env=NO_ARRAY | (env or {}), catch_exceptions=False)


def digest(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*"))} | {"manifest": (d / "manifest.json").read_bytes()}


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one")
    assert run(out).exit_code == 0
    return digest(out)


def slurm(task_id: int, count: int, lo: int = 0, step: int = 1) -> dict:
    return {"SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_ARRAY_TASK_COUNT": str(count),
            "SLURM_ARRAY_TASK_MIN": str(lo), "SLURM_ARRAY_TASK_MAX": str(lo + step * (count - 1)),
            "SLURM_ARRAY_TASK_STEP": str(step)}


def test_ranges_are_contiguous_near_equal_and_cover_every_shard():
    for total in range(1, 40):
        for n in range(1, total + 1):
            spans = [task_range(i, n, total) for i in range(n)]
            assert spans[0][0] == 0 and spans[-1][1] == total
            assert all(b == a2 for (_, b), (a2, _) in zip(spans, spans[1:]))
            sizes = [b - a for a, b in spans]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n", [1, 3, 7])
def test_any_task_count_finalizes_to_the_one_machine_manifest(tmp_path, one_machine, n):
    for i in reversed(range(n)):  # in any order, as array tasks finish
        res = run(tmp_path, "--task", f"{i}/{n}")
        assert res.exit_code == 0, res.output
        assert f"task {i}/{n}" in res.output
    assert CliRunner().invoke(cli, ["finalize", str(tmp_path)]).exit_code == 0
    assert digest(tmp_path) == one_machine


@pytest.mark.parametrize("envs", [
    [slurm(t, 3, lo=1) for t in (1, 2, 3)],                        # sbatch --array=1-3, --task auto
    [slurm(t, 3, lo=2, step=5) for t in (2, 7, 12)],               # sbatch --array=2-12:5
    [{"LSB_JOBINDEX": str(t)} for t in range(1, 8)],              # bsub -J "x[1-7]", 1-based, --task auto/7
    [{"JOB_COMPLETION_INDEX": str(t)} for t in range(7)],         # Kubernetes Indexed Job, completions 7
], ids=["slurm-min1", "slurm-step5", "lsf", "kubernetes"])
def test_array_variables_build_the_same_dataset(tmp_path, one_machine, envs):
    task = "auto" if "SLURM_ARRAY_TASK_ID" in envs[0] else f"auto/{len(envs)}"
    for env in envs:
        res = run(tmp_path, "--task", task, env=env)
        assert res.exit_code == 0, res.output
    assert CliRunner().invoke(cli, ["finalize", str(tmp_path)]).exit_code == 0
    assert digest(tmp_path) == one_machine


@pytest.mark.parametrize("env, n, want", [
    (slurm(0, 4), None, (0, 4)),
    (slurm(4, 4, lo=1), None, (3, 4)),                 # --array=1-4 (honours SLURM_ARRAY_TASK_MIN)
    (slurm(8, 4, step=4), None, (2, 4)),               # --array=0-12:4 is 4 tasks: 0, 4, 8, 12
    (slurm(13, 4, lo=1, step=4), None, (3, 4)),        # --array=1-13:4
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "3"}, None, (2, 3)),
    (slurm(2, 1, lo=2), 4, (2, 4)),                    # task 2 resubmitted alone (--array=2) with auto/4
    (slurm(6, 4, lo=3), 8, (6, 8)),                    # --array=3-6 of auto/8
    ({"PBS_ARRAY_INDEX": "3"}, 4, (3, 4)),
    ({"LSB_JOBINDEX": "1"}, 4, (0, 4)),                # LSF is 1-based
    ({"LSB_JOBINDEX": "4"}, 4, (3, 4)),
    ({"JOB_COMPLETION_INDEX": "0"}, 2, (0, 2)),
    ({"LSB_JOBINDEX": "0", "PBS_ARRAY_INDEX": "1"}, 2, (1, 2)),  # LSB_JOBINDEX=0: an LSF job, not an array
])
def test_array_variables(env, n, want):
    assert array_task(n, env)[:2] == want


@pytest.mark.parametrize("env, n, message", [
    ({}, None, "not an array job"),
    ({"LSB_JOBINDEX": "0"}, None, "not an array job"),
    ({"SLURM_JOB_ID": "17"}, None, "not an array job"),               # a plain Slurm job
    ({"PBS_ARRAY_INDEX": "2"}, None, "auto/N"),                       # PBS does not export the size
    ({"LSB_JOBINDEX": "2"}, None, "auto/N"),
    ({"JOB_COMPLETION_INDEX": "2"}, None, "auto/N"),
    ({"SLURM_ARRAY_TASK_ID": "2"}, None, "SLURM_ARRAY_TASK_COUNT"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, None, "not an integer"),
    ({"SLURM_ARRAY_TASK_ID": "-1", "SLURM_ARRAY_TASK_COUNT": "4"}, None, "negative"),
    # as Slurm 22.05 sets them (benchmarks/slurm_local.sh's cluster): --array=0-3,8 is 5 tasks between 0 and 8,
    # step 1; a list --array=1,5,9 also reports step 1: neither has a position for its tasks
    ({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "5", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_MAX": "8", "SLURM_ARRAY_TASK_STEP": "1"}, None, "evenly spaced"),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_MAX": "9", "SLURM_ARRAY_TASK_STEP": "1"}, None, "evenly spaced"),
    (slurm(6, 4, step=4), None, "not an index"),                      # 6 is not in 0-12:4
    (slurm(2, 1, lo=2), None, "auto/N"),                              # --array=2 alone would build everything
    (slurm(4, 4, lo=1), 4, "outside 0..3"),                           # auto/N: the index is the task number
    (slurm(0, 8), 4, "more than the 4"),
    ({"PBS_ARRAY_INDEX": "4"}, 4, "outside 0..3"),
    ({"LSB_JOBINDEX": "5"}, 4, "outside 1..4"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "PBS_ARRAY_INDEX": "1"}, None, "several"),
])
def test_bad_array_variables(env, n, message):
    with pytest.raises(ValueError, match=message):
        array_task(n, env)


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1", "a/b", "1/0", "1/2/3", "auto/0", "auto/x", "", "1/-2",
                                  "auto/", "1 /2x"])
def test_bad_task_text(text):
    with pytest.raises(ValueError, match="--task"):
        parse_task(text, {})


def test_task_checks_against_the_build():
    with pytest.raises(ValueError, match="at most 7 tasks"):
        task_shards("0/8", 7, env={})
    with pytest.raises(ValueError, match="not both"):
        task_shards("0/2", 7, "0:3", env={})
    assert task_shards("1/3", 7, env={})[0] == "2:4"


@pytest.mark.parametrize("extra, env, message", [
    (["--task", "auto"], {}, "not an array job"),
    (["--task", "auto"], {"PBS_ARRAY_INDEX": "1"}, "auto/N"),
    (["--task", "3/2"], {}, "--task"),
    (["--task", "0/9"], {}, "at most 7 tasks"),
    (["--task", "0/2", "--shards", "0:3"], {}, "not both"),
])
def test_cli_refuses_with_one_line(tmp_path, extra, env, message):
    res = run(tmp_path / "o", *extra, env=env)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "o").exists()  # refused before anything was written
