"""Strategy values that are not physical are refused before any work: one `error:` line, exit 2 (issue 13 §2).

Each case once ended in a manifest holding NaN, a value read as its opposite ("no" as true), a traceback, or a
build that tried to allocate terabytes or ran on for hours.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.build import make_header
from builder.cli import cli
from builder.strategy import Strategy, canonical_json, load_strategy

ROOT = Path(__file__).resolve().parent.parent
BASE = {"cell": {}, "fill": {}}
PRIORS = '[priors]\nstats = "cod-molecular"\n'


def toml_of(cell: str = "", fill: str = "filler = \"molecules\"\n") -> str:
    return f'name = "hostile"\n[cell]\n{cell}[fill]\n{fill}{PRIORS}'


CASES = [  # (id, [cell] lines, [fill] lines, what the one line must name)
    ("ratio-nan", "ratio = nan\n", "", "ratio = nan must be a finite number"),
    ("d_min-nan", "", "filler = \"random\"\nd_min = nan\n", "d_min = nan must be a finite number"),
    ("adjusted_s3-no", "adjusted_s3 = \"no\"\n", "", "adjusted_s3 = 'no' must be true or false"),
    ("count-as-bool", "", "molecule_tries = true\n", "molecule_tries = True must be an integer"),
    ("bond-negative", "", "bond = [-1.1, -0.9]\n", "bond[0] = -1.1 must be a finite number in (0, 3]"),
    ("band-negative", "", "forbidden = [-1.4, -1.1]\n", "forbidden[1] = -1.1 must be a finite number in [0, 3]"),
    ("band-below-bonds", "", "forbidden = [-1.4, 1.4]\n", "reaches into the forbidden band"),
    ("band-too-wide", "", "forbidden = [1.1, 40.0]\n", "forbidden[1] = 40.0 must be a finite number in [0, 3]"),
    ("sigma-nan", "sigma = nan\n", "", "sigma = nan must be a finite number"),
    ("mu-nan", "mu = nan\n", "", "mu = nan must be a finite number"),
    ("u_iso_jitter-nan", "", "u_iso_jitter = nan\n", "u_iso_jitter = nan must be a finite number"),
    ("u_iso-huge", "", "u_iso = [0.01, 5.0]\n", "u_iso[1] + u_iso_jitter = 5.005 must be a finite number in [0, 1]"),
    ("a_max-inf", "a_max = inf\n", "", "a_max = inf must be a finite number"),
    ("v_max-inf", "sampler = \"uniform-volume\"\nv_max = inf\n", "", "v_max = inf must be a finite number"),
    ("tries-fraction", "", "molecule_tries = 2.5\n", "molecule_tries = 2.5 must be an integer"),
    ("tries-1e12-float", "", "molecule_tries = 1e12\n", "molecule_tries = 1000000000000.0 must be an integer"),
    ("tries-1e12-int", "", "molecule_tries = 1000000000000\n", "molecule_tries = 1000000000000 must be an integer in [1, 100]"),
    ("random-tries-zero", "", "filler = \"random\"\nrandom_tries = 0\n", "random_tries = 0 must be an integer in [1, 100]"),
    ("v_atom-tiny", "", "v_atom = [1e-9, 1e-9]\n", "v_atom[0] = 1e-09 must be a finite number in [5, inf)"),
    ("v_atom-empty-cells", "", "v_atom = [400.0, 500.0]\n", "every structure would be empty"),
    ("x_h-all-hydrogen", "", "x_h = [0.3, 0.99999]\n", "x_h[1] = 0.99999 must be a finite number in [0, 0.9]"),
    ("special_p-nan", "", "special_p = nan\n", "special_p = nan must be a finite number"),
    ("edges-1e6", "sampler = \"uniform-edges\"\na_max = 1e6\n", "", "a_max = 1000000.0 must be a finite number in [2, 100]"),
    ("edges-200", "sampler = \"uniform-edges\"\na_max = 200.0\n", "", "a_max = 200.0 must be a finite number in [2, 100]"),
    ("edges-60-atoms", "sampler = \"uniform-edges\"\na_max = 60.0\n", "", "the bound is 5000 atoms per cell"),
    ("a_min-sub-angstrom", "a_min = 0.5\n", "", "a_min = 0.5 must be a finite number in [2, 100]"),
    ("element-freq-nan", "", "filler = \"random\"\nelements_general = { C = nan }\n", "must be a table of element symbol"),
    ("element-freq-negative", "", "filler = \"random\"\nelements_general = { C = -1.0 }\n",
     "elements_general C = -1.0 must be a finite number in [0, inf)"),
    ("name-not-string", "", "", "name = 5 must be a string"),
]


def _strategy_file(tmp_path: Path, cell: str, fill: str, case: str) -> Path:
    path = tmp_path / "s.toml"
    text = toml_of(cell, fill if "filler" in fill else 'filler = "molecules"\n' + fill)
    if case == "name-not-string":
        text = text.replace('name = "hostile"', "name = 5")
    if "elements_general" in fill:
        text = text.replace(PRIORS, "")  # the table comes from the file, not from priors
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, cell, fill, message", CASES, ids=[c[0] for c in CASES])
def test_impossible_values_are_refused_with_one_line(tmp_path, case, cell, fill, message):
    path = _strategy_file(tmp_path, cell, fill, case)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["shards", "--strategy", str(path), "--count", "4", "--shard-size", "2",
                                   "--out", str(out)], catch_exceptions=False)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert message in lines[0], lines[0]
    assert not out.exists()  # refused before any work: nothing written


def test_the_command_line_itself_refuses_with_exit_2(tmp_path):
    """The same path through `python -m builder.cli` (a real process): one line on stderr, exit 2."""
    path = _strategy_file(tmp_path, "", "molecule_tries = 1e12\n", "tries-1e12-float")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "builder.cli", "shards", "--strategy", str(path), "--count", "4",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: s.toml [fill] molecule_tries = 1000000000000.0 must be an "
                                               "integer"]


def test_every_builtin_strategy_passes_and_round_trips():
    """The nine paper strategies lie inside every bound, and a manifest's copy is checked the same way."""
    for name in ("lognormal-molecules", "uniform-edges-molecules", "uniform-volume-random", "lognormal-random-equal"):
        s = load_strategy(name)
        assert Strategy.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("section, key, value, message", [
    ("fill", "molecule_tries", 1e12, "must be an integer"),
    ("cell", "ratio", float("nan"), "must be a finite number"),
    ("cell", "adjusted_s3", "no", "must be true or false"),
])
def test_a_manifest_strategy_is_checked_like_a_file(section, key, value, message):
    d = json.loads(canonical_json(load_strategy("lognormal-molecules").to_dict()))
    d[section][key] = value
    with pytest.raises(ValueError, match=message):
        Strategy.from_dict(d)


def test_non_finite_numbers_never_reach_json():
    with pytest.raises(ValueError):
        canonical_json({"ratio": float("nan")})


def test_a_non_finite_value_that_skipped_validation_is_named_before_a_manifest():
    """A Strategy built in code (no validate) with μ = NaN: make_header names the strategy, not the JSON encoder."""
    s = load_strategy("lognormal-molecules")
    bad = dataclasses.replace(s, cell=dataclasses.replace(s.cell, mu=float("nan")))
    with pytest.raises(ValueError, match="strategy lognormal-molecules holds NaN or infinity"):
        make_header(bad, 10, 5, "tar", 0)
