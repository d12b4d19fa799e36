"""What the benchmarks share: JSON out (printed, and written where asked) and a baseline commit unpacked."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "emit", "unpack_commit"]


def emit(result: dict, out: Path | None) -> None:
    text = json.dumps(result, indent=1, sort_keys=True)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def unpack_commit(rev: str, dest: Path) -> Path:
    """The tree of commit `rev` of this repository, unpacked into `dest` (git archive): a baseline to measure."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest
