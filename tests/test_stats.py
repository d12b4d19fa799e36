"""builder/stats.py and stats_summary.py: hand-checkable values on three real CIFs, a synthetic lattice, the CLI,
the committed stats files and their agreement with the committed test sets."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from builder import stats
from builder.cli import cli
from builder.stats_summary import summarise
from manifests.priors import SCHEMA, load_priors

DATA = Path(__file__).parent / "data" / "stats_cif"
ROOT = Path(__file__).resolve().parents[1]
STATS_DIR = ROOT / "manifests" / "stats"


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
    # P2₁/n 5.2863 5.3603 7.5025 β 90.005 in its reduced P 1 21/c 1 cell: c' = a + c, β' = 180° − angle(a, a + c)
    a, c, cb = 5.2863, 7.5025, math.cos(math.radians(90.005))
    c2 = math.sqrt(a * a + c * c + 2 * a * c * cb)
    assert records["2013037.cif"].monoclinic_angle == pytest.approx(
        180.0 - math.degrees(math.acos((a * a + a * c * cb) / (a * c2))), rel=1e-6)


def test_agO_special_positions(records):
    r = records["9008962.cif"]  # Ag1 (0,0,0) and Ag2 (½,0,½) on inversion centres, O general
    assert r.elements_general == {"O": 1.0}
    assert r.elements_inversion == {"Ag": 2.0}
    assert r.n_inversion_occupied == 2 and r.n_special_sites == 2
    assert r.n_atoms_cell == 8.0 and r.n_h_cell == 0.0  # 2 × 2 Ag + 4 O
    assert r.x_h == 0.0 and r.v_atom == pytest.approx(V_AGO / 8)
    assert r.compound_class == "d-block" and not r.molecular  # builder.compound: Ag is a d-block element


def test_oxalic_acid_composition(records):
    r = records["4507991.cif"]  # C2H2O4, Z = 2: 4 general sites (O1, O2, C1, H2), the molecule straddles -1
    assert r.elements_general == {"O": 2.0, "C": 1.0}
    assert r.elements_inversion == {} and r.n_inversion_occupied == 0 and r.n_special_sites == 0
    assert r.n_atoms_cell == 16.0 and r.n_h_cell == 4.0
    assert r.x_h == pytest.approx(0.25)
    assert r.v_atom == pytest.approx(V_OXALIC / 12)
    assert r.molecular and r.compound_class == "organic"
    # U_eq of the U_ij wins over U_iso_or_equiv; monoclinic U_eq = [U22 + (U11 + U33 + 2 U13 cos β) / sin² β] / 3
    cb, s2 = math.cos(math.radians(115.80)), math.sin(math.radians(115.80)) ** 2
    ueq = [(u22 + (u11 + u33 + 2 * u13 * cb) / s2) / 3 for u11, u22, u33, u13 in (
        (0.0233, 0.0329, 0.0346, 0.0173), (0.0188, 0.0395, 0.0316, 0.0115), (0.0177, 0.0196, 0.0238, 0.0105))]
    assert ueq == pytest.approx([0.0286, 0.0298, 0.0199], abs=2e-4)  # the file's rounded U_iso_or_equiv
    assert r.uiso_mean == pytest.approx((sum(ueq) + 0.069) / 4, rel=1e-9)
    assert r.uiso_mean_non_h == pytest.approx(sum(ueq) / 3, rel=1e-9)


def test_p21n_setting(records):
    r = records["2013037.cif"]  # Al (0,0,0) and Li (0,0,½) on inversion centres of P2₁/n; Na, F1-3 general
    assert r.spacegroup == "P 1 21/n 1"
    # described in the reduced P 1 21/c 1 cell: c' = the shorter glide diagonal a ± c of the P2₁/n cell
    a, c, beta = 5.2863, 7.5025, math.radians(90.005)
    assert r.cell[0] == pytest.approx(a) and r.cell[1] == pytest.approx(5.3603)
    assert r.cell[2] == pytest.approx(math.sqrt(a * a + c * c - 2 * a * c * abs(math.cos(beta))), rel=1e-6)
    assert r.cell[4] > 90.0 and r.volume == pytest.approx(V_NA2LIALF6, rel=1e-9)
    assert r.elements_general == {"Na": 1.0, "F": 3.0}
    assert r.elements_inversion == {"Al": 1.0, "Li": 1.0}
    assert r.n_inversion_occupied == 2
    assert r.n_atoms_cell == 20.0  # 2 Al + 2 Li + 4 Na + 12 F


def test_summary_of_three(records):
    recs = list(records.values())
    doc = summarise(recs, {"source_dir": "stats_cif", "selection": "all"})
    lnv = [math.log(v) for v in (V_AGO, V_OXALIC, V_NA2LIALF6)]
    fit = doc["cell"]["volume"]["lognormal_fit"]
    assert fit["mu"] == pytest.approx(np.mean(lnv), rel=1e-5)
    assert fit["sigma"] == pytest.approx(np.std(lnv), rel=1e-5)
    assert doc["priors"]["lognormal_mu"] == fit["mu"]
    # general: O 1 + O 2 + C 1 + Na 1 + F 3 = 8 sites; special (inversion): Ag 2 + Al 1 + Li 1
    assert doc["priors"]["elements_general"] == {"C": 0.125, "F": 0.375, "Na": 0.125, "O": 0.375}
    assert doc["priors"]["elements_special"] == {"Ag": 0.5, "Al": 0.25, "Li": 0.25}
    assert doc["priors"]["special_tables"]["inversion-all"] == doc["priors"]["elements_special"]
    assert doc["special_positions"]["inversion_centres_occupied"]["counts"] == {"0": 1, "1": 0, ">1": 2}
    assert doc["counts"]["without_h"] == 2 and doc["composition"]["x_h"]["summary"]["n"] == 1
    assert doc["derivation"]["selection"] == "all" and doc["derivation"]["n_files"] == 3
    json.dumps(doc, allow_nan=False)  # plain JSON, no NaN
    assert summarise(recs, {"source_dir": "stats_cif", "selection": "all"}) == doc


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
    doc = summarise(recs, {"source_dir": "x", "selection": "all"})
    assert doc["counts"]["unusable"] == 1 and doc["counts"]["selected"] == 1


def test_cli_writes_and_rejects(tmp_path):
    out = tmp_path / "s" / "three.json"
    res = CliRunner().invoke(cli, ["stats", "--cifs", str(DATA), "--select", "p21c-small", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["derivation"]["source_dir"] == "stats_cif" and doc["counts"]["selected"] == 3
    assert doc["derivation"]["rule"] == stats.SELECTIONS["p21c-small"][0]
    assert list(tmp_path.joinpath("s").iterdir()) == [out]  # no temporary file left behind
    assert load_priors(out)["elements_special"] == {"Ag": 0.5, "Al": 0.25, "Li": 0.25}

    res = CliRunner().invoke(cli, ["stats", "--cifs", str(tmp_path / "missing"), "--out", str(out)])
    assert res.exit_code == 2
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["stats", "--cifs", str(tmp_path / "empty"), "--out", str(out)])
    assert res.exit_code == 2 and "error:" in res.output


@pytest.mark.parametrize("name", ["cod-molecular", "cod-all", "cod-p21c-small", "cod-p21c-large"])
def test_committed_stats_files(name):
    path = STATS_DIR / f"{name}.json"
    pri = load_priors(path)
    for t in [pri["elements_general"], pri["elements_special"], *pri["special_tables"].values()]:
        assert not t or sum(t.values()) == pytest.approx(1.0, abs=1e-9)
        assert "H" not in t
    doc = json.loads(path.read_text())
    assert doc["derivation"]["source_dir"] == "cod" and doc["derivation"]["n_files"] == 1281
    assert doc["schema"] == SCHEMA
    # the default special table pools the inversion centres of every usable structure: equal in all four files
    assert pri["special_default"] == "inversion-all"
    assert pri["elements_special"] == pri["special_tables"]["inversion-all"]
    cno = sum(pri["elements_special"].get(e, 0.0) for e in "CNO")
    assert cno == pytest.approx(doc["elements"]["inversion_centre_all"]["cno_share"], abs=1e-5)
    assert pri["elements_special"] == load_priors(STATS_DIR / "cod-all.json")["elements_special"]


def test_committed_molecular_priors_are_cno_dominated():
    pri = load_priors(STATS_DIR / "cod-molecular.json")
    g = pri["elements_general"]
    assert g["C"] + g["N"] + g["O"] > 0.8
    assert 0.0 < pri["x_h_range"][0] < pri["x_h_range"][1] < 1.0
    assert 0.0 < pri["v_atom_range"][0] < pri["v_atom_range"][1]


def test_special_tables_pool_every_usable_structure(records):
    """`inversion-all` counts the inversion centres of unselected structures too; `inversion-selected` does not."""
    recs = stats.collect(stats.cif_files(DATA), "molecular", progress=False)  # selects oxalic acid only
    doc = summarise(recs, {"source_dir": "stats_cif", "selection": "molecular"})
    tables = doc["priors"]["special_tables"]
    assert tables["inversion-all"] == {"Ag": 0.5, "Al": 0.25, "Li": 0.25} == doc["priors"]["elements_special"]
    assert tables["inversion-selected"] == {} and tables["special-selected"] == {}
    assert doc["counts"]["selected"] == 1 and doc["elements"]["inversion_centre_all"]["n_structures"] == 2


def _p21n_cif(a: float, b: float, c: float, beta: float) -> str:
    return (f"data_x\n_cell_length_a {a}\n_cell_length_b {b}\n_cell_length_c {c}\n_cell_angle_alpha 90\n"
            f"_cell_angle_beta {beta}\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1 21/n 1'\n"
            "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
            "_atom_site_fract_z\nC1 C 0.1 0.2 0.3\nH1 H 0.2 0.3 0.1\n")


def test_p21c_selections_agree_with_the_test_sets(tmp_path):
    """One meaning of p21c-small: the reduced P 1 21/c 1 cell, in the statistics and in the test sets. The first
    file is ≤ 10 Å in its own P2₁/n setting but its P2₁/c cell needs the 11.03 Å glide diagonal (COD 2103766)."""
    from evaluation.testset import build_testset

    (tmp_path / "2000001.cif").write_text(_p21n_cif(9.4098, 7.9101, 6.7759, 95.77))
    (tmp_path / "2000002.cif").write_text(_p21n_cif(5.40, 5.60, 7.76, 90.28))
    (tmp_path / "2000003.cif").write_text(_p21n_cif(12.0, 7.0, 6.0, 93.0))
    for sel, stats_sel in (("p21c-small", "p21c-small"), ("p21c-large", "p21c-large-only")):
        ts = [e["id"] for e in build_testset(tmp_path, sel)["entries"]]
        st = [r.name[:-4] for r in stats.collect(stats.cif_files(tmp_path), stats_sel, progress=False) if r.selected]
        assert st == ts, sel
    assert ts == ["2000001", "2000003"]


def test_committed_stats_and_test_sets_select_the_same_structures():
    def ids(name):
        return {e["id"] for e in json.loads((ROOT / "manifests" / "testsets" / f"{name}.json").read_text())["entries"]}

    def names(name):
        return {n.removesuffix(".cif") for n in json.loads((STATS_DIR / f"{name}.json").read_text())["values"]["names"]}

    assert names("cod-p21c-small") == ids("cod-p21c-small")
    assert names("cod-p21c-large") == ids("cod-p21c-small") | ids("cod-p21c-large")  # p21c-large-range
