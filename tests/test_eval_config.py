"""EvalConfig: the `phaseforge-eval run` options, checked up front with one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.config import EvalConfig
from evaluation.run import open_cif_dir


def test_method_follows_the_checkpoint_and_settings_name_the_cf_config(tmp_path: Path):
    cf = EvalConfig(out=tmp_path / "o", testset="cod-p21c-small", method="charge-flipping")
    assert cf.method == "charge-flipping" and cf.settings()["cf"]["max_cycles"] == cf.cf.max_cycles
    assert EvalConfig(out=tmp_path / "o", testset="x", method="true").settings() == {
        "d_min": 1.0, "seed": 0, "limit": None, "space_group": "P 1 21/c 1"}


@pytest.mark.parametrize("kw, message", [
    (dict(method="true", d_min=float("nan")), "--d-min must be > 0"),
    (dict(method="true", limit=0), "--limit must be >= 1"),
    (dict(method="true", workers=0), "--workers must be >= 1"),
    (dict(method="model"), "--method model needs --checkpoint"),
    (dict(method="magic"), "unknown --method"),
    (dict(method="true", cifs=Path("."), select="p21c-huge", testset=None), "unknown --select"),
    (dict(method="true", select="p21c-small"), "--select applies to --cifs only"),
])
def test_impossible_options_are_one_line_errors(tmp_path: Path, kw, message):
    args = {"out": tmp_path / "o", "testset": "cod-p21c-small", **kw}
    with pytest.raises(ValueError, match=message) as err:
        EvalConfig(**args)
    assert "\n" not in str(err.value)


def test_selection_names_are_checked_without_a_dummy_cell(tmp_path: Path):
    (tmp_path / "1.cif").write_text("data_x\n")
    with pytest.raises(ValueError, match="unknown selection 'p21c-huge'"):
        open_cif_dir(tmp_path, "p21c-huge")
    assert open_cif_dir(tmp_path, "p21c-small").meta["select"] == "p21c-small"
