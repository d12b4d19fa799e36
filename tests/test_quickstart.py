"""The README's pipeline in miniature, through the three console entry points: build -> train -> evaluate.
Keeps the quick start from drifting (style.md lesson 12)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def sh(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.slow
def test_build_train_evaluate(tmp_path: Path):
    data, val, run, rep = tmp_path / "train", tmp_path / "val", tmp_path / "run", tmp_path / "report"
    sh("builder.cli", "shards", "--strategy", "lognormal-molecules", "--count", "48", "--shard-size", "24",
       "--seed", "0", "--out", data)
    sh("builder.cli", "shards", "--strategy", "lognormal-molecules", "--count", "16", "--shard-size", "16",
       "--seed", "1", "--format", "hdf5", "--out", val)
    sh("training", "fit", "--train", data, "--val", val, "--preset", "tiny", "--steps", "2", "--batch-size", "8",
       "--val-every", "2", "--val-samples", "16", "--workers", "0", "--device", "cpu", "--out", run)
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    out = sh("evaluation", "run", "--testset", "cod-p21c-small", "--limit", "2", "--checkpoint", run / "best.pt",
             "--cycles", "1..2", "--random-starts", "1", "--device", "cpu", "--out", rep)
    assert out.strip().splitlines()[-1].startswith("f(r>=0.8) = ")
    report = json.loads((rep / "report.json").read_text())
    assert report["n"] == 2 and 0.0 <= report["median_r"] <= 1.0
