"""benchmarks/gpu_check.sh --dry-run: every step of the first GPU run, on CPU with the tiny preset, with the
packages the GPU machine lacks made unimportable, writing one JSON."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_dry_run_runs_every_step_without_what_the_gpu_machine_lacks(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OUT": str(out)}
    r = subprocess.run(["bash", ROOT / "benchmarks" / "gpu_check.sh", "--dry-run", "--python", sys.executable],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert [p.name for p in out.iterdir()] == ["gpu_check.json"]
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["dry_run"] and rep["summary"]["failed_steps"] == []
    assert {"env", "build_full", "build_structures", "train", "structures"} <= rep["steps"].keys()
    # the guard was on: installed here, absent there, so unimportable in every step; the wheels' packages are not
    assert "matplotlib" in rep["absent_in_dry_run"] and "PIL" in rep["absent_in_dry_run"]
    assert not {"torch", "gemmi", "webdataset", "ase", "yaml", "numba"} & set(rep["absent_in_dry_run"])
    imports = rep["env"]["imports"]
    assert "ModuleNotFoundError" in imports["matplotlib"]["error"]
    assert all("error" not in v for k, v in imports.items() if k != "matplotlib")
    t = rep["train"]
    assert t["preset"] == "tiny" and t["device"] == "cpu" and t["model"]["samples_per_s"] > 0
    assert t["pipeline"]["e2e"]["steps"] > 0 and t["pipeline"]["loader_samples_per_s"] > 0
    assert t["sf_on_device"]["structures_per_s"] > 0
    s = rep["structures"]["pipeline"]
    assert s["structures_only"] and s["sf"] == "device" and s["e2e"]["steps"] > 0
    for name in ("build_full", "build_structures"):
        assert rep["steps"][name]["samples_per_s_all_cores"] > 0
    assert rep["on_the_fly_offered"]  # the builder offers --on-the-fly: its steps must have run
    assert rep["otf"]["pipeline"]["e2e"]["steps"] > 0 and rep["otf_structures"]["pipeline"]["structures_only"]


def test_the_wheel_list_is_what_the_check_expects():
    wheels = (ROOT / "benchmarks" / "gpu_wheels.sh").read_text()
    downloaded = {n.lower() for n in re.findall(r"([A-Za-z0-9_.-]+)==[0-9.]+", re.search(
        r"WHEELS=\(([^)]*)\)", wheels)[1])}
    check = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    expected = set(re.search(r'WHEEL_PKGS="([^"]*)"', check)[1].split())
    assert downloaded == expected == {"gemmi", "ase", "webdataset", "braceexpand", "pyyaml"}
    assert "/.whl/" in (ROOT / ".gitignore").read_text().split()
