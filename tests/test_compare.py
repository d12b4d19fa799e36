"""builder/compare*.py: the analytic f_V of uniform edges (eqs 1–5), the KS tests, and `phaseforge-build compare`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import gemmi
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps

from builder import compare, stats
from builder import compare_sampling as cs
from builder.stats_summary import histogram
from builder.cell import CellConfig, sample_cell
from builder.cli import cli
from builder.strategy import load_strategy

STATS_DIR = Path(__file__).resolve().parents[1] / "manifests" / "stats"
SMALL = STATS_DIR / "cod-p21c-small.json"
CIF_DIR = Path(__file__).parent / "data" / "stats_cif"


# ------------------------------------------------------------------------------------------- analytic f_V

@pytest.mark.parametrize("a_min,a_max", [(4.0, 10.0), (4.0, 50.0), (2.0, 3.0)])
def test_analytic_fv_integrates_to_one(a_min, a_max):
    c, f, h = cs.uniform_edges_lnv_pdf(a_min, a_max)
    assert np.sum(f) * h == pytest.approx(1.0, abs=1e-12)  # exact masses of f_B (eq. 4), convolved (eq. 5)
    v = np.geomspace(a_min**3, a_max**3, 200_001)
    fv = cs.uniform_edges_volume_pdf(v, a_min, a_max)
    assert np.trapezoid(fv, v) == pytest.approx(1.0, abs=2e-3)
    # E[V] = E[A]³ for independent edges: hand-checkable, e.g. 7³ = 343 Å³ for U(4, 10)
    assert np.trapezoid(v * fv, v) == pytest.approx(((a_min + a_max) / 2) ** 3, rel=2e-3)
    assert cs.uniform_edges_volume_pdf(np.array([0.5 * a_min**3, 2 * a_max**3]), a_min, a_max).tolist() == [0, 0]
    cdf = cs.uniform_edges_volume_cdf(v, a_min, a_max)
    assert cdf[0] == pytest.approx(0.0, abs=1e-3) and cdf[-1] == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.diff(cdf) >= 0)


def test_analytic_fv_is_the_density_of_a_product_of_uniforms():
    """Against the closed form of ln V for a_n ~ U(4, 10), derived independently: the CDF of the product of
    three uniforms at one point, by direct triple integration on a grid (midpoint rule)."""
    a = np.linspace(4.0, 10.0, 601)
    m = (a[1:] + a[:-1]) / 2
    v0 = 343.0
    # P(A1 A2 A3 ≤ v0) = E over (A1, A2) of clip((v0/(A1 A2) − 4)/6, 0, 1)
    p = np.clip((v0 / (m[:, None] * m[None, :]) - 4.0) / 6.0, 0.0, 1.0).mean()
    assert cs.uniform_edges_volume_cdf(v0, 4.0, 10.0) == pytest.approx(p, abs=1e-3)


def test_analytic_fv_matches_sampled_cells():
    """The generator's uniform-edges cells (skewed; det S = 1 keeps V) follow f_V: KS and histogram L1."""
    cfg = CellConfig(sampler="uniform-edges", a_min=4.0, a_max=10.0)
    rng = np.random.default_rng(5)
    cells = np.array([sample_cell(rng, cfg) for _ in range(4000)])
    vol = np.array([gemmi.UnitCell(*c).volume for c in cells])
    ks = sps.kstest(vol, lambda x: cs.uniform_edges_volume_cdf(x, 4.0, 10.0))
    assert ks.statistic < 0.03 and ks.pvalue > 0.01
    counts, edges = np.histogram(vol, bins=40, range=(64.0, 1000.0), density=True)
    mid = (edges[1:] + edges[:-1]) / 2
    l1 = np.sum(np.abs(counts - cs.uniform_edges_volume_pdf(mid, 4.0, 10.0))) * (edges[1] - edges[0])
    assert l1 < 0.1
    # and not the log-normal: the same test tells them apart
    ln = sps.kstest(vol, "lognorm", args=(0.394, 0.0, math.exp(6.04)))
    assert ln.statistic > 0.1


def test_bad_analytic_bounds():
    with pytest.raises(ValueError, match="a_min < a_max"):
        cs.uniform_edges_lnv_pdf(10.0, 4.0)


# ------------------------------------------------------------------------------------------------ KS tests

@pytest.fixture(scope="module")
def two_seeds():
    strat = load_strategy("lognormal-molecules")
    return (cs.sample_strategy(strat, 1, 250, progress=False),
            cs.sample_strategy(strat, 2, 250, progress=False))


def test_ks_of_a_strategy_against_itself_is_small(two_seeds):
    a, b = two_seeds
    pairs = {"volume": (a.volume, b.volume), "largest_edge": (a.edges[:, 2], b.edges[:, 2]),
             "ratio_a2_a1": (a.edges[:, 1] / a.edges[:, 0], b.edges[:, 1] / b.edges[:, 0]),
             "beta": (a.beta[True], b.beta[True])}
    for key, (x, y) in pairs.items():
        ks = cs.ks_samples(x, y)
        assert ks["statistic"] < 0.15 and ks["pvalue"] > 0.001, (key, ks)
    for sub in ("all_atoms", "non_h"):
        ks = cs.ks_curves(a.distances[sub], b.distances[sub])
        assert ks["statistic"] < 0.03 and ks["pvalue"] > 0.5, (sub, ks)
        assert cs.ks_curves(a.distances[sub], a.distances[sub])["statistic"] == 0.0
    # the unadjusted s3 bound is a different distribution (Fig. 3): the test sees it at this size
    assert cs.ks_samples(a.beta[False], b.beta[True])["statistic"] > cs.ks_samples(
        a.beta[True], b.beta[True])["statistic"]


def test_sampled_structures_are_the_shard_samples(two_seeds):
    from builder.sample import generate_structure
    a, _ = two_seeds
    s = generate_structure(load_strategy("lognormal-molecules"), 1, 7)
    assert a.volume[7] == pytest.approx(gemmi.UnitCell(*s.cell).volume, rel=1e-12)
    assert a.beta[True][7] == pytest.approx(s.cell[4])  # adjusted_s3 = true: the strategy's own cells


def test_binned_ks_is_exact_ks_on_the_bin_edges():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.0, 1.0, 3000), rng.normal(0.1, 1.0, 500)
    hist = histogram(y, -3.0, 3.0, 0.05)  # the stats file's histogram format (with under/overflow)
    b = cs.ks_binned(x, hist)
    e = cs.ks_samples(x, y)
    assert b["n_database"] == 500 and b["method"] == "binned"
    assert b["statistic"] <= e["statistic"] + 1e-12  # the binned CDFs are the exact ones sampled at the bin edges
    assert b["statistic"] == pytest.approx(e["statistic"], abs=0.02)


def test_structure_stats_is_the_cif_path():
    """A structure given as arrays gives the same record as its CIF through `collect` (distances included)."""
    path = CIF_DIR / "4507991.cif"
    rec = stats.collect([path], "all", progress=False)[0]
    st = gemmi.read_small_structure(str(path))
    sites = [s for s in st.sites]
    c = st.cell
    arr = stats.structure_stats("x", (c.a, c.b, c.c, c.alpha, c.beta, c.gamma), st.spacegroup,
                                np.array([s.fract.tolist() for s in sites]),
                                np.array([s.element.atomic_number for s in sites]),
                                np.array([s.occ for s in sites]))
    assert arr.volume == pytest.approx(rec.volume)
    assert arr.n_atoms_cell == rec.n_atoms_cell and arr.elements_general == rec.elements_general
    np.testing.assert_allclose(arr.dist_hist, rec.dist_hist)
    np.testing.assert_allclose(arr.dist_hist_non_h, rec.dist_hist_non_h)


def test_committed_stats_hold_per_structure_values():
    doc = json.loads(SMALL.read_text())
    v = doc["values"]
    n = doc["counts"]["selected"]
    assert len(v["names"]) == len(v["volume"]) == len(v["edges_sorted"]) == len(v["monoclinic_angle"]) == n
    e = np.array(v["edges_sorted"])
    assert np.all(np.diff(e, axis=1) >= 0) and e.max() <= 10.0
    h = doc["cell"]["volume"]["hist_ln_v"]  # the stored values rebuild the stored histogram
    assert histogram(np.log(v["volume"]), h["lo"], h["hi"], h["width"])["counts"] == h["counts"]
    db = cs.load_database(SMALL)
    assert db.values is not None and len(db.values["monoclinic_angle"]) == n  # all P2₁/c: monoclinic


# --------------------------------------------------------------------------------------------------- CLI

def _run(args: list[str]):
    return CliRunner().invoke(cli, ["compare", *args])


def test_compare_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    args = ["--strategy", "lognormal-molecules", "--strategy", "uniform-edges-random", "--stats", str(SMALL),
            "--count", "24", "--seed", "3", "--out", str(out)]
    res = _run(args)
    assert res.exit_code == 0, res.output
    for name in ("fig1_volume.png", "fig2_edges.png", "fig3_monoclinic.png", "fig4_distances.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    text = (out / "compare.json").read_text()
    doc = json.loads(text)
    assert list(doc) == sorted(doc) and doc["schema"] == compare.SCHEMA
    assert set(doc["strategies"]) == {"lognormal-molecules", "uniform-edges-random"}
    stats = json.loads(SMALL.read_text())
    n_db = len(stats["values"]["volume"])  # the per-structure records, not the count the loader copies
    assert n_db == stats["counts"]["selected"] == json.loads(
        (STATS_DIR.parent / "testsets" / "cod-p21c-small.json").read_text())["count"]  # the same 34, two paths
    assert doc["database"]["n_structures"] == n_db and doc["database"]["per_structure_values"]
    for s in doc["strategies"].values():
        assert set(s["ks"]) == set(compare.QUANTITIES)
        for key, ks in s["ks"].items():
            assert 0.0 <= ks["statistic"] <= 1.0 and 0.0 <= ks["pvalue"] <= 1.0, key
        assert s["ks"]["volume"]["method"] == "exact" and s["ks"]["volume"]["n_database"] == n_db
    assert doc["analytic_fv"]["uniform-edges-random"]["integral"] == pytest.approx(1.0, abs=1e-9)
    md = (out / "compare.md").read_text()
    assert "| lognormal-molecules |" in md and "fig4_distances.png" in md
    # deterministic: the same command gives the same compare.json
    assert _run(args).exit_code == 0 and (out / "compare.json").read_text() == text


def test_compare_without_per_structure_values_uses_binned_ks(tmp_path):
    doc = json.loads(SMALL.read_text())
    del doc["values"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    res = _run(["--strategy", "uniform-edges-random", "--stats", str(old), "--count", "12", "--out",
                str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    ks = json.loads((tmp_path / "o" / "compare.json").read_text())["strategies"]["uniform-edges-random"]["ks"]
    assert ks["volume"]["method"] == "binned" and ks["volume"]["n_database"] == doc["counts"]["selected"]


@pytest.mark.parametrize("args,needle", [
    (["--strategy", "no-such-strategy", "--stats", "cod-p21c-small"], "unknown strategy"),
    (["--strategy", "lognormal-random", "--stats", "missing.json"], "not found"),
    (["--strategy", "lognormal-random", "--stats", "cod-p21c-small", "--count", "1"], "--count"),
    (["--strategy", "lognormal-random", "--strategy", "lognormal-random", "--stats", "cod-p21c-small"], "twice"),
    (["--strategy", "lognormal-random", "--stats", "cod-p21c-small", "--distance-count", "0"], "--distance-count"),
])
def test_bad_input_exits_2(tmp_path, args, needle):
    res = _run([*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_bad_stats_file_and_out(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text('{"schema": "something else"}')
    res = _run(["--strategy", "lognormal-random", "--stats", str(junk), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.startswith("error:") and "not a stats file" in res.output
    (tmp_path / "file").write_text("x")
    res = _run(["--strategy", "lognormal-random", "--stats", "cod-p21c-small", "--out", str(tmp_path / "file")])
    assert res.exit_code == 2 and "not a directory" in res.output


def test_wide_range_panel_fig1_right(tmp_path):
    """Fig. 1 (right): uniform edges up to 50 Å put V near 10⁴ Å³, far from the database's cells."""
    doc = compare.compare(["lognormal-molecules"], "cod-p21c-small", 200, 0, tmp_path, distance_count=5, progress=False,
                  wide_stats="cod-all")
    w = doc["wide_volume"]
    assert (tmp_path / "fig1b_volume_wide.png").stat().st_size > 10_000
    assert w["n_database"] > 500 and w["n_generated"] == 200
    assert w["ks_uniform_edges"]["statistic"] > 0.5  # measured 0.74 with 300 cells
    assert 6.0 < w["database_lognormal_fit"]["mu"] < 7.5
    again = compare.compare(["lognormal-molecules"], "cod-p21c-small", 200, 0, tmp_path / "b", distance_count=5,
                    progress=False, wide_stats="cod-all")
    assert again["wide_volume"] == w
