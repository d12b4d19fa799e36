"""Output folders that appear whole or not at all: every file is written into a staging folder beside the
final one, then renamed into it (`phaseforge-eval run`, `compare` and `solve` all write this way).

A failure before `publish` leaves any earlier contents of the final folder as they were; the staging folder
`.NAME.partial` is replaced by the next attempt.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["stage", "publish"]


def stage(out: str | os.PathLike) -> Path:
    """A fresh, empty staging folder `.NAME.partial` beside `out` (its parent is created)."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: str | os.PathLike) -> Path:
    """Move the staged files into `out` (each an atomic rename), then remove the staging folder."""
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir()):
        os.replace(f, out / f.name)
    tmp.rmdir()
    return out
