"""builder/stats.py: hand-checkable values on three real CIFs, a synthetic lattice, the CLI and the committed priors."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from builder import stats

DATA = Path(__file__).parent / "data" / "stats_cif"
STATS_DIR = Path(__file__).resolve().parents[1] / "manifests" / "stats"


def _vol(a: float, b: float, c: float, beta: float) -> float:
    return a * b * c * math.sin(math.radians(beta))


# volumes from the CIFs' monoclinic cells: V = a b c sin β
V_AGO = _vol(5.852, 3.478, 5.495, 107.50)
V_OXALIC = _vol(5.3266, 6.0126, 5.4456, 115.80)
V_NA2LIALF6 = 5.2863 * 5.3603 * 7.5025 * math.sin(math.radians(90.005))


@pytest.fixture(scope="module")
def records() -> dict[str, stats.StructureStats]:
    recs = stats.collect(stats.cif_files(DATA), "all", progress=False)
    return {r.name: r for r in recs}


def test_cells_and_volumes(records):
    assert [n for n in records] == ["2013037.cif", "4507991.cif", "9008962.cif"]  # sorted file order
    assert records["9008962.cif"].volume == pytest.approx(V_AGO, rel=1e-9)
    assert records["4507991.cif"].volume == pytest.approx(V_OXALIC, rel=1e-9)
    assert records["2013037.cif"].volume == pytest.approx(V_NA2LIALF6, rel=1e-9)
    assert all(r.spacegroup_number == 14 and r.error is None and r.selected for r in records.values())
    assert records["4507991.cif"].monoclinic_angle == pytest.approx(115.80)
    assert records["2013037.cif"].monoclinic_angle == pytest.approx(90.005)


def test_agO_special_positions(records):
    r = records["9008962.cif"]  # Ag1 (0,0,0) and Ag2 (½,0,½) on inversion centres, O general
    assert r.elements_general == {"O": 1.0}
    assert r.elements_inversion == {"Ag": 2.0}
    assert r.n_inversion_occupied == 2 and r.n_special_sites == 2
    assert r.n_atoms_cell == 8.0 and r.n_h_cell == 0.0  # 2 × 2 Ag + 4 O
    assert r.x_h == 0.0 and r.v_atom == pytest.approx(V_AGO / 8)
    assert r.compound_class == "inorganic" and not r.molecular


def test_oxalic_acid_composition(records):
    r = records["4507991.cif"]  # C2H2O4, Z = 2: 4 general sites (O1, O2, C1, H2), the molecule straddles -1
    assert r.elements_general == {"O": 2.0, "C": 1.0}
    assert r.elements_inversion == {} and r.n_inversion_occupied == 0 and r.n_special_sites == 0
    assert r.n_atoms_cell == 16.0 and r.n_h_cell == 4.0
    assert r.x_h == pytest.approx(0.25)
    assert r.v_atom == pytest.approx(V_OXALIC / 12)
    assert r.molecular and r.compound_class == "organic"
    assert r.uiso_mean == pytest.approx((0.0286 + 0.0298 + 0.0199 + 0.069) / 4)
    assert r.uiso_mean_non_h == pytest.approx((0.0286 + 0.0298 + 0.0199) / 3)


def test_p21n_setting(records):
    r = records["2013037.cif"]  # Al (0,0,0) and Li (0,0,½) on inversion centres of P2₁/n; Na, F1-3 general
    assert r.spacegroup == "P 1 21/n 1"
    assert r.elements_general == {"Na": 1.0, "F": 3.0}
    assert r.elements_inversion == {"Al": 1.0, "Li": 1.0}
    assert r.n_inversion_occupied == 2
    assert r.n_atoms_cell == 20.0  # 2 Al + 2 Li + 4 Na + 12 F


def test_summary_of_three(records):
    recs = list(records.values())
    doc = stats.summarise(recs, {"source_dir": "stats_cif", "selection": "all"})
    lnv = [math.log(v) for v in (V_AGO, V_OXALIC, V_NA2LIALF6)]
    fit = doc["cell"]["volume"]["lognormal_fit"]
    assert fit["mu"] == pytest.approx(np.mean(lnv), rel=1e-5)
    assert fit["sigma"] == pytest.approx(np.std(lnv), rel=1e-5)
    assert doc["priors"]["lognormal_mu"] == fit["mu"]
    # general: O 1 + O 2 + C 1 + Na 1 + F 3 = 8 sites; special (inversion): Ag 2 + Al 1 + Li 1
    assert doc["priors"]["elements_general"] == {"C": 0.125, "F": 0.375, "Na": 0.125, "O": 0.375}
    assert doc["priors"]["elements_special"] == {"Ag": 0.5, "Al": 0.25, "Li": 0.25}
    assert doc["special_positions"]["inversion_centres_occupied"]["counts"] == {"0": 1, "1": 0, ">1": 2}
    assert doc["counts"]["without_h"] == 2 and doc["composition"]["x_h"]["summary"]["n"] == 1
    assert doc["derivation"]["selection"] == "all" and doc["derivation"]["n_files"] == 3
    json.dumps(doc, allow_nan=False)  # plain JSON, no NaN
    assert stats.summarise(recs, {"source_dir": "stats_cif", "selection": "all"}) == doc


def test_selections(records):
    recs = list(records.values())
    assert [r.name for r in stats.collect(stats.cif_files(DATA), "molecular", progress=False) if r.selected] \
        == ["4507991.cif"]
    assert all(stats.selection("p21c-small")(r) for r in recs)
    assert all(stats.selection("p21c-large-range")(r) for r in recs)
    assert not any(stats.selection("p21c-large-only")(r) for r in recs)
    with pytest.raises(ValueError, match="unknown selection"):
        stats.selection("nope")
    assert pickle.loads(pickle.dumps(recs))[0].name == recs[0].name


CUBIC = """data_cubic
_cell_length_a 3.05
_cell_length_b 3.05
_cell_length_c 3.05
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
C1 C 0.1 0.2 0.3
"""


def test_distance_histogram_simple_cubic(tmp_path):
    (tmp_path / "cubic.cif").write_text(CUBIC)
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a 3\nloop_\n_atom_site_label\n")
    recs = stats.collect(stats.cif_files(tmp_path), "all", progress=False)
    assert recs[0].error and not recs[0].selected  # broken.cif: counted, not fatal
    h = recs[1].dist_hist / recs[1].n_atoms_cell
    centres = (np.arange(len(h)) + 0.5) * stats.DIST_BIN
    shells = {round(c, 2): v for c, v in zip(centres, h) if v}
    # simple cubic a = 3.05 Å: 6 neighbours at a, 12 at a√2, 8 at a√3; 2a = 6.1 Å is past the 6 Å end
    expect = {3.05: 6, 3.05 * math.sqrt(2): 12, 3.05 * math.sqrt(3): 8}
    assert len(shells) == 3 and sum(shells.values()) == 26
    for d, n in expect.items():
        assert h[int(d // stats.DIST_BIN)] == n
    doc = stats.summarise(recs, {"source_dir": "x", "selection": "all"})
    assert doc["counts"]["unusable"] == 1 and doc["counts"]["selected"] == 1


def test_cli_writes_and_rejects(tmp_path):
    out = tmp_path / "s" / "three.json"
    res = CliRunner().invoke(stats.stats_command, ["--cifs", str(DATA), "--select", "p21c-small", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["derivation"]["source_dir"] == "stats_cif" and doc["counts"]["selected"] == 3
    assert doc["derivation"]["rule"] == stats.SELECTIONS["p21c-small"][0]
    assert list(tmp_path.joinpath("s").iterdir()) == [out]  # no temporary file left behind
    assert stats.load_priors(out)["elements_special"] == {"Ag": 0.5, "Al": 0.25, "Li": 0.25}

    res = CliRunner().invoke(stats.stats_command, ["--cifs", str(tmp_path / "missing"), "--out", str(out)])
    assert res.exit_code == 2
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(stats.stats_command, ["--cifs", str(tmp_path / "empty"), "--out", str(out)])
    assert res.exit_code == 2 and "error:" in res.output


def test_load_priors_rejects_bad(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"priors": {"elements_general": {"C": 0.5}, "elements_special": {}}}))
    with pytest.raises(ValueError, match="sums to"):
        stats.load_priors(bad)
    bad.write_text("{}")
    with pytest.raises(ValueError, match="priors"):
        stats.load_priors(bad)


@pytest.mark.parametrize("name", ["cod-molecular", "cod-all", "cod-p21c-small", "cod-p21c-large"])
def test_committed_stats_files(name):
    path = STATS_DIR / f"{name}.json"
    pri = stats.load_priors(path)
    for key in ("elements_general", "elements_special"):
        assert sum(pri[key].values()) == pytest.approx(1.0, abs=1e-9)
        assert "H" not in pri[key]
    doc = json.loads(path.read_text())
    assert doc["derivation"]["source_dir"] == "cod" and doc["derivation"]["n_files"] == 1281
    assert doc["schema"] == stats.SCHEMA


def test_committed_molecular_priors_are_cno_dominated():
    pri = stats.load_priors(STATS_DIR / "cod-molecular.json")
    g = pri["elements_general"]
    assert g["C"] + g["N"] + g["O"] > 0.8
    assert 0.0 < pri["x_h_range"][0] < pri["x_h_range"][1] < 1.0
    assert 0.0 < pri["v_atom_range"][0] < pri["v_atom_range"][1]
