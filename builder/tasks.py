"""Array-job tasks → shard ranges for `phaseforge-build shards --task`.

Task I of N (0-based) builds shards [⌊I·S/N⌋, ⌊(I+1)·S/N⌋) of the S shards: N contiguous ranges whose sizes differ
by at most one, covering every shard once, so the part-manifests of any N merge (`finalize`) into the manifest a
one-machine build writes. The task comes from the user (`I/N`) or from the batch system's own variables:

  --task auto     Slurm: the task's position in the array as submitted, from SLURM_ARRAY_TASK_ID, _COUNT, _MIN,
                  _MAX and _STEP: `--array=0-3`, `--array=1-4` and `--array=0-12:4` are each 4 tasks, I = (ID −
                  MIN) / STEP. An array that is not evenly spaced (`--array=0-3,8`) has no such position: refused.
  --task auto/N   the array index itself is I, for the batch systems that do not export the array size: PBS
                  (PBS_ARRAY_INDEX, `qsub -J 0-N-1`), LSF (LSB_JOBINDEX, 1-based: I = index − 1, `bsub -J x[1-N]`),
                  Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX); with Slurm, SLURM_ARRAY_TASK_ID, so a failed task
                  can be resubmitted alone (`sbatch --array=2 ...` builds task 2 of N again).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = ["task_range", "parse_task", "array_task", "task_shards"]

# (batch system, its array-index variable, the index of the first task)
INDEXED = (("Slurm", "SLURM_ARRAY_TASK_ID", 0), ("PBS", "PBS_ARRAY_INDEX", 0), ("LSF", "LSB_JOBINDEX", 1),
           ("Kubernetes", "JOB_COMPLETION_INDEX", 0))
_WAY_OUT = "submit it as an array job, or give the range explicitly with --task I/N"


def task_range(i: int, n: int, total: int) -> tuple[int, int]:
    """Shards [A, B) of task i of n over `total` shards (contiguous, near-equal, together exactly 0..total)."""
    if not (1 <= n <= total and 0 <= i < n):
        raise ValueError(f"task {i}/{n} over {total} shards: need 0 ≤ I < N ≤ {total}")
    return i * total // n, (i + 1) * total // n


def _int(name: str, value: str) -> int:
    try:
        v = int(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if v < 0:
        raise ValueError(f"{name}={value!r} is negative")
    return v


def _present(env: Mapping[str, str]) -> list[tuple[str, str, int]]:
    """The batch systems whose array index is set; LSF sets LSB_JOBINDEX=0 in a job that is not an array."""
    return [(who, var, base) for who, var, base in INDEXED
            if env.get(var, "").strip() and not (var == "LSB_JOBINDEX" and env[var].strip() == "0")]


def _slurm_position(env: Mapping[str, str]) -> tuple[int, int, str]:
    """(I, N) of this Slurm array task within the array as submitted (`--task auto`)."""
    task_id = _int("SLURM_ARRAY_TASK_ID", env["SLURM_ARRAY_TASK_ID"])
    if not env.get("SLURM_ARRAY_TASK_COUNT"):
        raise ValueError("SLURM_ARRAY_TASK_COUNT is not set, so the array size is unknown: use --task auto/N")
    count = _int("SLURM_ARRAY_TASK_COUNT", env["SLURM_ARRAY_TASK_COUNT"])
    lo = _int("SLURM_ARRAY_TASK_MIN", env.get("SLURM_ARRAY_TASK_MIN") or "0")
    step = _int("SLURM_ARRAY_TASK_STEP", env.get("SLURM_ARRAY_TASK_STEP") or "1")
    hi = _int("SLURM_ARRAY_TASK_MAX", env.get("SLURM_ARRAY_TASK_MAX") or str(lo + step * max(count - 1, 0)))
    shape = f"{lo}-{hi}" + (f":{step}" if step != 1 else "")
    if count < 1 or step < 1 or hi != lo + step * (count - 1):
        raise ValueError(f"the Slurm array ({count} tasks between {lo} and {hi}, step {step}) is not an evenly "
                         "spaced range like --array=A-B or A-B:S, so a task has no position in it: submit such "
                         "an array, or use --task auto/N (the array index is then the task number)")
    if not lo <= task_id <= hi or (task_id - lo) % step:
        raise ValueError(f"SLURM_ARRAY_TASK_ID={task_id} is not an index of the array {shape}")
    if count == 1 and task_id != 0:
        raise ValueError(f"a one-task array with index {task_id} (--array={task_id}) would build everything as "
                         f"task 0/1; to rerun task {task_id} of a larger array of N, use --task auto/N")
    return (task_id - lo) // step, count, f"SLURM_ARRAY_TASK_ID={task_id} in --array={shape}"


def array_task(n: int | None, env: Mapping[str, str] | None = None) -> tuple[int, int, str]:
    """(I, N, where it came from) from the batch system's variables: `--task auto` (n None) or `auto/N`."""
    env = os.environ if env is None else env
    found = _present(env)
    if not found:
        names = ", ".join(var for _, var, _ in INDEXED)
        raise ValueError(f"--task auto: this is not an array job (none of {names} is set); {_WAY_OUT}")
    if len(found) > 1:
        raise ValueError("--task auto: array indices of several batch systems are set ("
                         + ", ".join(f"{var}={env[var]}" for _, var, _ in found) + f"); {_WAY_OUT}")
    who, var, base = found[0]
    if n is None:
        if who != "Slurm":
            raise ValueError(f"{var}={env[var]} is set, but {who} does not export the array size: "
                             "use --task auto/N with N the number of tasks")
        return _slurm_position(env)
    index = _int(var, env[var])
    if not base <= index < n + base:
        raise ValueError(f"{var}={index} is outside {base}..{n - 1 + base}, the indices of --task auto/{n} "
                         f"({who} array indices {'start at 1' if base else 'start at 0'})")
    if who == "Slurm" and env.get("SLURM_ARRAY_TASK_COUNT") and _int(
            "SLURM_ARRAY_TASK_COUNT", env["SLURM_ARRAY_TASK_COUNT"]) > n:
        raise ValueError(f"the Slurm array has {env['SLURM_ARRAY_TASK_COUNT']} tasks, more than the {n} of "
                         f"--task auto/{n}: submit --array=0-{n - 1} or fewer")
    return index - base, n, f"{var}={index}"


def parse_task(text: str, env: Mapping[str, str] | None = None) -> tuple[int, int, str]:
    """'I/N', 'auto' or 'auto/N' → (I, N, where it came from)."""
    m = re.fullmatch(r"(auto|[0-9]+)(?:/([0-9]+))?", text.strip())
    if m is None or (m[1] != "auto" and m[2] is None) or (m[2] is not None and int(m[2]) < 1):
        raise ValueError(f"--task {text!r}: expected I/N with 0 ≤ I < N (e.g. 2/8), auto, or auto/N")
    n = None if m[2] is None else int(m[2])
    if m[1] == "auto":
        return array_task(n, env)
    i = int(m[1])
    if i >= n:
        raise ValueError(f"--task {text!r}: need 0 ≤ I < N (tasks are numbered from 0)")
    return i, n, f"--task {i}/{n}"


def task_shards(text: str, total: int, shards: str | None = None,
                env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The `--shards A:B` text of task `text` over `total` shards, and a line saying which task this is."""
    if shards:
        raise ValueError(f"give --task or --shards, not both (--task {text}, --shards {shards})")
    i, n, where = parse_task(text, env)
    if n > total:
        raise ValueError(f"--task {text} ({where}): {n} tasks for {total} shards; use at most {total} tasks "
                         "or a smaller --shard-size")
    a, b = task_range(i, n, total)
    return f"{a}:{b}", f"task {i}/{n} ({where}): shards {a}:{b} of {total}"
